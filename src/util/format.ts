/** "1.2 GiB": sizes for people, in messages and CLI output. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/**
 * A path the sandbox named, for a line of the CLI's human output or of an
 * MCP tool's text answer (read by a model): as it is when it is plain, else
 * JSON-quoted, so a name with a newline cannot forge another line (a made-up
 * `skipped:` entry, an instruction) and one with escape sequences cannot
 * drive the terminal.
 */
export function shownPath(path: string): string {
  return /[\u0000-\u001f\u007f-\u009f"\\]/.test(path) ? JSON.stringify(path) : path;
}
