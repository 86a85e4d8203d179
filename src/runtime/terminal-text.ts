/**
 * Terminal output as a model should read it: escape sequences (colours,
 * cursor moves, titles, bracketed paste), carriage-return overwrites
 * (progress bars) and backspaces applied, CRLF as LF, other control
 * characters dropped. Pure and linear in its input.
 */

// CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC (ESC P|X|^|_ ... ST),
// charset designations (ESC ( B), and the two-byte escapes (ESC =, ESC 7, ...).
// Every alternative is a bounded character class run: no backtracking blow-up.
const ESCAPES =
  /\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[()*+][ -~]|\x1b[ -/]*[0-~]/g;

export function stripTerminal(text: string): string {
  const noEsc = text.replace(ESCAPES, "");
  const lines = noEsc.replace(/\r+\n/g, "\n").split("\n");
  return lines.map(renderLine).join("\n");
}

/** One line as a terminal would show it: \r returns to column 0 and overwrites, \b steps back. */
function renderLine(line: string): string {
  if (!/[\r\b\x00-\x08\x0b-\x1f\x7f]/.test(line)) return line;
  const cells: string[] = [];
  let col = 0;
  for (const ch of line) {
    if (ch === "\r") col = 0;
    else if (ch === "\b") col = Math.max(0, col - 1);
    else if (ch === "\t") {
      cells[col++] = ch;
    } else if (ch < " " || ch === "\x7f") continue;
    else cells[col++] = ch;
  }
  // A \r followed by a shorter text leaves the longer tail, as on a screen.
  return cells.join("");
}
