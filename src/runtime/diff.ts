/**
 * Line diffs and unified diff text (pure). Myers' O(ND) algorithm on lines;
 * past `maxEdits` edits (two very different files) the whole file is shown
 * as replaced rather than spending quadratic time on it.
 */

/** Lines with their endings kept, so a missing final newline survives. */
export function splitLines(text: string): string[] {
  if (!text) return [];
  const lines = text.split("\n").map((l, i, all) => (i < all.length - 1 ? `${l}\n` : l));
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

type Op = { kind: " " | "-" | "+"; line: string };

/** The edit script from a to b (Myers, greedy forward, with its trace for the backtrack). */
export function diffLines(a: string[], b: string[], maxEdits = 1000): Op[] {
  // Common head and tail first: most edits are small changes in long files.
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const A = a.slice(head, a.length - tail);
  const B = b.slice(head, b.length - tail);
  const mid = middle(A, B, maxEdits);
  return [...a.slice(0, head).map((line) => ({ kind: " " as const, line })), ...mid, ...a.slice(a.length - tail).map((line) => ({ kind: " " as const, line }))];
}

function middle(a: string[], b: string[], maxEdits: number): Op[] {
  const n = a.length;
  const m = b.length;
  if (n === 0) return b.map((line) => ({ kind: "+", line }));
  if (m === 0) return a.map((line) => ({ kind: "-", line }));
  const max = Math.min(n + m, maxEdits);
  const off = max + 1;
  let v: Int32Array = new Int32Array(2 * max + 3);
  const trace: Int32Array[] = [];
  let found = -1;
  for (let d = 0; d <= max && found < 0; d++) {
    trace.push(v.slice());
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[off + k - 1]! < v[off + k + 1]!) ? v[off + k + 1]! : v[off + k - 1]! + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[off + k] = x;
      if (x >= n && y >= m) {
        found = d;
        break;
      }
    }
  }
  if (found < 0) return [...a.map((line) => ({ kind: "-" as const, line })), ...b.map((line) => ({ kind: "+" as const, line }))];
  // Backtrack through the saved frontiers.
  const ops: Op[] = [];
  let x = n;
  let y = m;
  for (let d = found; d > 0; d--) {
    v = trace[d]!;
    const k = x - y;
    const prevK = k === -d || (k !== d && v[off + k - 1]! < v[off + k + 1]!) ? k + 1 : k - 1;
    const prevX = v[off + prevK]!;
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) ops.push({ kind: " ", line: a[--x]! }), y--;
    if (x === prevX) ops.push({ kind: "+", line: b[--y]! });
    else ops.push({ kind: "-", line: a[--x]! });
  }
  while (x > 0 && y > 0) ops.push({ kind: " ", line: a[--x]! }), y--;
  return ops.reverse();
}

const NO_EOL = "\\ No newline at end of file\n";

function emit(kind: string, line: string): string {
  return line.endsWith("\n") ? `${kind}${line}` : `${kind}${line}\n${NO_EOL}`;
}

/**
 * A unified diff of one file (`git diff` style headers; /dev/null for an
 * added or deleted file), or "" when the contents are equal.
 */
export function unifiedDiff(path: string, oldText: string | null, newText: string | null, context = 3): string {
  const a = splitLines(oldText ?? "");
  const b = splitLines(newText ?? "");
  const ops = diffLines(a, b);
  if (!ops.some((o) => o.kind !== " ")) return "";
  let out = `--- ${oldText === null ? "/dev/null" : `a/${path}`}\n+++ ${newText === null ? "/dev/null" : `b/${path}`}\n`;
  // Group changes with up to 2*context unchanged lines between them into one hunk.
  let i = 0;
  let aLine = 0;
  let bLine = 0;
  const pos: Array<{ a: number; b: number }> = [];
  for (const o of ops) {
    pos.push({ a: aLine, b: bLine });
    if (o.kind !== "+") aLine++;
    if (o.kind !== "-") bLine++;
  }
  while (i < ops.length) {
    while (i < ops.length && ops[i]!.kind === " ") i++;
    if (i >= ops.length) break;
    const start = Math.max(0, i - context);
    let end = i;
    let lastChange = i;
    while (end < ops.length) {
      if (ops[end]!.kind !== " ") lastChange = end;
      else if (end - lastChange > 2 * context) break;
      end++;
    }
    end = Math.min(ops.length, lastChange + context + 1);
    const hunk = ops.slice(start, end);
    const aStart = pos[start]!.a;
    const bStart = pos[start]!.b;
    const aCount = hunk.filter((o) => o.kind !== "+").length;
    const bCount = hunk.filter((o) => o.kind !== "-").length;
    out += `@@ -${aCount ? aStart + 1 : aStart},${aCount} +${bCount ? bStart + 1 : bStart},${bCount} @@\n`;
    for (const o of hunk) out += emit(o.kind, o.line);
    i = end;
  }
  return out;
}
