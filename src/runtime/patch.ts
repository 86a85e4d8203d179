import { PyroError } from "../core/errors.js";
import { splitLines } from "./diff.js";

/**
 * Unified diffs (pure): parsing `diff -u` / `git diff` output and applying
 * its hunks to file contents in memory. A hunk must match its context and
 * removed lines exactly; it may sit at another line than its header says
 * (the nearest match wins, as with patch(1)'s offset), never fuzzily. The
 * caller writes the results only when every hunk of every file applied.
 */

export interface Hunk {
  oldStart: number;
  oldCount: number;
  newStart: number;
  newCount: number;
  /** Lines with their marker (" ", "-", "+"), endings kept; a line without "\n" ends its file. */
  lines: string[];
  header: string;
}

export interface FilePatch {
  /** Path relative to the workspace; null for /dev/null. */
  oldPath: string | null;
  newPath: string | null;
  hunks: Hunk[];
}

function bad(message: string): never {
  throw new PyroError("invalid_argument", `The patch is not a unified diff: ${message}.`, {
    hint: "Pass the output of `diff -u` or `git diff` (--- a/PATH, +++ b/PATH, @@ -l,n +l,n @@ hunks).",
  });
}

/** Strips `a/` / `b/` (git's prefixes) and a timestamp after a tab; /dev/null is null. */
function headerPath(raw: string, strip: number | "auto"): string | null {
  let p = raw.split("\t")[0]!.trim();
  if (p === "/dev/null") return null;
  if (p.startsWith('"') && p.endsWith('"')) p = JSON.parse(p) as string;
  if (strip === "auto") {
    if (/^[ab]\//.test(p)) p = p.slice(2);
  } else {
    for (let i = 0; i < strip; i++) {
      const at = p.indexOf("/");
      if (at < 0) bad(`cannot strip ${strip} leading component(s) from "${raw}"`);
      p = p.slice(at + 1);
    }
  }
  return p;
}

export function parsePatch(text: string, strip: number | "auto" = "auto"): FilePatch[] {
  const lines = splitLines(text);
  const files: FilePatch[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (!line.startsWith("--- ")) {
      i++;
      continue; // diff --git, index, mode lines and prose between files
    }
    const next = lines[i + 1];
    if (!next?.startsWith("+++ ")) bad(`"${line.trimEnd()}" is not followed by a +++ line`);
    const file: FilePatch = { oldPath: headerPath(line.slice(4).replace(/\n$/, ""), strip), newPath: headerPath(next.slice(4).replace(/\n$/, ""), strip), hunks: [] };
    if (file.oldPath === null && file.newPath === null) bad("a file goes from /dev/null to /dev/null");
    i += 2;
    while (i < lines.length && lines[i]!.startsWith("@@")) {
      const header = lines[i]!.replace(/\n$/, "");
      const m = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@/.exec(header);
      if (!m) bad(`the hunk header "${header}" is malformed`);
      const hunk: Hunk = { oldStart: Number(m[1]), oldCount: m[2] === undefined ? 1 : Number(m[2]), newStart: Number(m[3]), newCount: m[4] === undefined ? 1 : Number(m[4]), lines: [], header };
      i++;
      let seenOld = 0;
      let seenNew = 0;
      while (i < lines.length && (seenOld < hunk.oldCount || seenNew < hunk.newCount || lines[i]!.startsWith("\\"))) {
        const l = lines[i]!;
        if (l.startsWith("\\")) {
          // "\ No newline at end of file": the previous line has no ending.
          const prev = hunk.lines.length - 1;
          if (prev < 0) bad(`"${l.trimEnd()}" before any line`);
          hunk.lines[prev] = hunk.lines[prev]!.replace(/\n$/, "");
          i++;
          continue;
        }
        const kind = l === "\n" ? " " : l[0];
        const body = l === "\n" ? "\n" : l.slice(1);
        if (kind === " ") {
          seenOld++;
          seenNew++;
        } else if (kind === "-") seenOld++;
        else if (kind === "+") seenNew++;
        else bad(`the line "${l.trimEnd().slice(0, 80)}" in hunk "${header}" does not start with " ", "-" or "+"`);
        hunk.lines.push(kind + (body.endsWith("\n") || i + 1 < lines.length ? body : `${body}\n`));
        i++;
      }
      if (seenOld !== hunk.oldCount || seenNew !== hunk.newCount) bad(`the hunk "${header}" has ${seenOld} old and ${seenNew} new line(s), its header says ${hunk.oldCount} and ${hunk.newCount}`);
      file.hunks.push(hunk);
    }
    if (!file.hunks.length) bad(`"${file.newPath ?? file.oldPath}" has no hunks`);
    files.push(file);
  }
  if (!files.length) bad("it has no file sections (no --- / +++ lines)");
  return files;
}

function doesNotApply(path: string, hunk: Hunk, why: string): never {
  throw new PyroError("patch_failed", `The patch does not apply to ${path}: hunk "${hunk.header}" ${why}; nothing was changed.\n${hunk.lines.map((l) => (l.endsWith("\n") ? l : `${l}\n\\ No newline at end of file\n`)).join("")}`, {
    hint: "Read the file again (task_file_read) and make the patch against its current content.",
    details: { path, hunk: hunk.header },
  });
}

/** Applies one file's hunks to its content (null: the file does not exist); returns the new content (null: deleted). */
export function applyFilePatch(path: string, old: string | null, patch: FilePatch): string | null {
  const src = splitLines(old ?? "");
  const out: string[] = [];
  let at = 0; // next source line not yet copied
  let shift = 0; // how far hunks have sat from their headers so far
  for (const hunk of patch.hunks) {
    const want = hunk.lines.filter((l) => l[0] !== "+").map((l) => l.slice(1));
    const expected = Math.max(0, hunk.oldStart - 1 + shift - (hunk.oldCount === 0 ? -1 : 0));
    const matches = (pos: number) => pos >= at && pos + want.length <= src.length && want.every((l, j) => src[pos + j] === l);
    let found = -1;
    for (let d = 0; d <= src.length; d++) {
      if (matches(expected - d)) {
        found = expected - d;
        break;
      }
      if (matches(expected + d)) {
        found = expected + d;
        break;
      }
      if (expected - d < at && expected + d + want.length > src.length) break;
    }
    if (found < 0) doesNotApply(path, hunk, old === null && want.length ? "expects lines in a file that does not exist" : "does not match the file's lines");
    shift = found - (hunk.oldStart - 1 - (hunk.oldCount === 0 ? -1 : 0));
    out.push(...src.slice(at, found));
    for (const l of hunk.lines) if (l[0] !== "-") out.push(l.slice(1));
    at = found + want.length;
  }
  out.push(...src.slice(at));
  if (patch.newPath === null) {
    if (out.length) doesNotApply(path, patch.hunks[patch.hunks.length - 1]!, "deletes the file but leaves lines in it");
    return null;
  }
  return out.join("");
}
