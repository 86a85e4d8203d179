import { test } from "node:test";
import assert from "node:assert/strict";
import { PyroError } from "../../src/index.js";
import { diffLines, splitLines, unifiedDiff } from "../../src/runtime/diff.js";
import { applyFilePatch, parsePatch } from "../../src/runtime/patch.js";
import { workspaceRel } from "../../src/runtime/files.js";
import { compare, type Baseline } from "../../src/runtime/baseline.js";
import { PROFILES } from "../../src/mcp/profiles.js";

function code(f: () => unknown): string {
  try {
    f();
    return "ok";
  } catch (e) {
    assert.ok(e instanceof PyroError, String(e));
    return e.code;
  }
}

test("workspace paths: absolute under /workspace or relative to it; `..`, other absolute paths and NUL refused", () => {
  assert.equal(workspaceRel("/workspace"), "");
  assert.equal(workspaceRel("/workspace/"), "");
  assert.equal(workspaceRel("src/a.c"), "src/a.c");
  assert.equal(workspaceRel("/workspace/src//a.c"), "src/a.c");
  assert.equal(workspaceRel("./src/./a.c"), "src/a.c");
  assert.equal(code(() => workspaceRel("/etc/passwd")), "invalid_argument");
  assert.equal(code(() => workspaceRel("../etc/passwd")), "invalid_argument");
  assert.equal(code(() => workspaceRel("/workspace/../etc")), "invalid_argument");
  assert.equal(code(() => workspaceRel("src/../../x")), "invalid_argument");
  assert.equal(code(() => workspaceRel("src/../a")), "invalid_argument", "`..` is refused even when it stays inside");
  assert.equal(code(() => workspaceRel("/workspacex/a")), "invalid_argument");
  assert.equal(code(() => workspaceRel("a\0b")), "invalid_argument");
});

/** A deterministic PRNG, so a failure is reproducible. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test("unified diffs apply back: diff(old, new) patched onto old gives new (400 random edits, with and without final newlines)", () => {
  const rand = rng(14);
  const words = ["alpha", "beta", "gamma", "", "delta", "  indented", "x"];
  for (let round = 0; round < 400; round++) {
    const n = Math.floor(rand() * 40);
    const old: string[] = Array.from({ length: n }, () => words[Math.floor(rand() * words.length)]!);
    const next = [...old];
    const edits = Math.floor(rand() * 6);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(rand() * (next.length + 1));
      const r = rand();
      if (r < 0.4) next.splice(at, 0, `new${round}.${e}`);
      else if (r < 0.7 && next.length) next.splice(Math.min(at, next.length - 1), 1);
      else if (next.length) next[Math.min(at, next.length - 1)] = `changed${e}`;
    }
    const oldText = old.join("\n") + (old.length && rand() < 0.8 ? "\n" : "");
    const newText = next.join("\n") + (next.length && rand() < 0.8 ? "\n" : "");
    const d = unifiedDiff("f.txt", oldText, newText);
    if (oldText === newText) {
      assert.equal(d, "");
      continue;
    }
    const [file] = parsePatch(d);
    assert.equal(applyFilePatch("f.txt", oldText, file!), newText, `round ${round}:\n${d}`);
  }
});

test("diffLines keeps every line of both sides in order and is minimal on a small case", () => {
  const ops = diffLines(splitLines("a\nb\nc\nd\n"), splitLines("a\nc\nd\ne\n"));
  assert.deepEqual(ops.map((o) => o.kind + o.line.trim()), [" a", "-b", " c", " d", "+e"]);
});

test("a new file, a deleted file and a file without a final newline, as git writes them", () => {
  const created = parsePatch("diff --git a/n.txt b/n.txt\nnew file mode 100644\n--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1,2 @@\n+one\n+two\n\\ No newline at end of file\n");
  assert.equal(created[0]!.oldPath, null);
  assert.equal(applyFilePatch("n.txt", null, created[0]!), "one\ntwo");
  const deleted = parsePatch("--- a/d.txt\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-gone\n");
  assert.equal(applyFilePatch("d.txt", "gone\n", deleted[0]!), null);
});

test("a hunk applies where its context is, even when lines moved; the nearest match wins", () => {
  const patch = parsePatch("--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n b\n-c\n+C\n d\n");
  assert.equal(applyFilePatch("f", "x\ny\na\nb\nc\nd\n", patch[0]!), "x\ny\na\nb\nC\nd\n");
});

test("a hunk that does not match is refused with the hunk in the error; nothing is returned", () => {
  const patch = parsePatch("--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n");
  let error: unknown;
  try {
    applyFilePatch("/workspace/f", "one\nthree\n", patch[0]!);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PyroError);
  assert.equal(error.code, "patch_failed");
  assert.match(error.message, /\/workspace\/f: hunk "@@ -1,2 \+1,2 @@" does not match/);
  assert.match(error.message, /^-two$/m, "the failing hunk's lines are in the message");
  assert.match(error.message, /nothing was changed/);
});

test("malformed patches are refused with what is wrong", () => {
  assert.equal(code(() => parsePatch("just some text\n")), "invalid_argument");
  assert.equal(code(() => parsePatch("--- a/f\nno plus line\n")), "invalid_argument");
  assert.equal(code(() => parsePatch("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n")), "invalid_argument", "a hunk shorter than its header");
  assert.equal(code(() => parsePatch("--- a/f\n+++ b/f\n@@ bad @@\n")), "invalid_argument");
  assert.equal(code(() => parsePatch("--- a/f\n+++ b/f\n@@ -1 +1 @@\n*x\n")), "invalid_argument");
  assert.equal(code(() => parsePatch("--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+x\n")), "invalid_argument");
  assert.equal(parsePatch("--- x/y/f\n+++ x/y/f\n@@ -1 +1 @@\n-a\n+b\n", 2)[0]!.newPath, "f", "strip like patch -p2");
});

test("compare: added, modified (content, mode, kind, link target) and deleted, directories not changes of their own", () => {
  const base: Baseline = {
    schema: 1,
    recorded_at: "t",
    updated_at: "t",
    entries: {
      src: { kind: "dir", mode: 0o755, size: 0 },
      "src/a": { kind: "file", mode: 0o644, size: 1, sha256: "aa" },
      "src/b": { kind: "file", mode: 0o644, size: 1, sha256: "bb" },
      "src/c": { kind: "file", mode: 0o644, size: 1, sha256: "cc" },
      link: { kind: "symlink", mode: 0o777, size: 0, target: "src/a" },
      gone: { kind: "file", mode: 0o644, size: 1, sha256: "dd" },
      olddir: { kind: "dir", mode: 0o755, size: 0 },
    },
  };
  const r = compare(
    base,
    [
      { path: "src", kind: "dir", mode: 0o755, size: 0 },
      { path: "src/a", kind: "file", mode: 0o644, size: 1, sha256: "aa" },
      { path: "src/b", kind: "file", mode: 0o755, size: 1, sha256: "bb" },
      { path: "src/c", kind: "file", mode: 0o644, size: 2, sha256: "c2" },
      { path: "link", kind: "symlink", mode: 0o777, size: 0, target: "/etc" },
      { path: "newdir", kind: "dir", mode: 0o755, size: 0 },
      { path: "newdir/n", kind: "file", mode: 0o644, size: 1, sha256: "nn" },
    ],
    "",
  );
  assert.deepEqual(r.added.map((e) => e.path), ["newdir/n"]);
  assert.deepEqual(r.modified.map((m) => m.now.path), ["link", "src/b", "src/c"]);
  assert.deepEqual(r.deleted.map((e) => e.path), ["gone"]);
  const scoped = compare(base, [{ path: "src", kind: "dir", mode: 0o755, size: 0 }], "src");
  assert.deepEqual(scoped.deleted.map((e) => e.path), ["src/a", "src/b", "src/c"], "a subtree's diff sees only the subtree");
});

test("profiles: the file tools are in task-full and full, not in task-core or vm-run", () => {
  const fileTools = ["task_file_list", "task_file_read", "task_file_write", "task_patch_apply", "task_diff", "task_export"];
  for (const t of fileTools) {
    assert.ok((PROFILES["task-full"] as readonly string[]).includes(t), t);
    assert.ok((PROFILES.full as readonly string[]).includes(t), t);
    assert.ok(!(PROFILES["task-core"] as readonly string[]).includes(t), t);
  }
  for (const t of PROFILES["task-core"]) assert.ok((PROFILES["task-full"] as readonly string[]).includes(t), `task-full keeps ${t}`);
});
