import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { list as tarList } from "tar";
import { PyroError } from "../../src/index.js";
import { resolveDriver } from "../../src/drivers/index.js";
import { execInSandbox } from "../../src/runtime/sandbox-exec.js";
import { tempStateDir, testPyro } from "../helpers/sandbox.js";
import { ROOT, runCliSync } from "../helpers/cli.js";

/** Runs on the namespace driver here and on qemu in test/vm/files-qemu.test.ts (PYRO_DRIVER=qemu). */
const ENV = "busybox";

function tempDir(t: import("node:test").TestContext, prefix = "pyro-files-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected PyroError, got ${e}`);
    return e.code;
  }
}

async function message(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "";
  } catch (e) {
    return (e as Error).message;
  }
}

function makeRepo(t: import("node:test").TestContext): string {
  const repo = tempDir(t, "pyro-files-src-");
  mkdirSync(join(repo, "src"));
  writeFileSync(join(repo, "README.md"), "# demo\nversion 1\n");
  writeFileSync(join(repo, "src", "main.c"), "int main(void) {\n  return 1;\n}\n");
  writeFileSync(join(repo, "src", "old.txt"), "to be deleted\n");
  writeFileSync(join(repo, "logo.bin"), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 3]));
  writeFileSync(join(repo, "run.sh"), "#!/bin/sh\necho run\n");
  chmodSync(join(repo, "run.sh"), 0o755);
  symlinkSync("README.md", join(repo, "readme-link"));
  return repo;
}

test("list, read, write, patch, diff and export: the loop an agent runs, checked byte for byte", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const task = await pyro.createTask({ environment: ENV, source_path: repo });
  const id = task.task_id;

  const root = await pyro.listTaskFiles({ task_id: id });
  const byName = Object.fromEntries(root.entries.map((e) => [e.name, e]));
  assert.deepEqual(root.entries.map((e) => e.name), ["README.md", "logo.bin", "readme-link", "run.sh", "src"]);
  assert.equal(byName["run.sh"]!.kind, "file");
  assert.equal(byName["run.sh"]!.mode, 0o755);
  assert.equal(byName["README.md"]!.size, 17);
  assert.equal(byName.src!.kind, "dir");
  assert.equal(byName["readme-link"]!.kind, "symlink");
  assert.equal(byName["readme-link"]!.target, "README.md");

  const readme = await pyro.readTaskFile({ task_id: id, path: "/workspace/README.md" });
  assert.deepEqual([readme.encoding, readme.content, readme.size, readme.eof, readme.next_offset], ["text", "# demo\nversion 1\n", 17, true, null]);
  const part = await pyro.readTaskFile({ task_id: id, path: "README.md", offset: 2, length: 4 });
  assert.deepEqual([part.content, part.offset, part.length, part.eof, part.next_offset], ["demo", 2, 4, false, 6]);
  const logo = await pyro.readTaskFile({ task_id: id, path: "logo.bin" });
  assert.equal(logo.encoding, "base64");
  assert.deepEqual(Buffer.from(logo.content, "base64"), readFileSync(join(repo, "logo.bin")));
  assert.equal(await code(pyro.readTaskFile({ task_id: id, path: "logo.bin", encoding: "text" })), "invalid_argument");

  // A range that cuts a UTF-8 character ends before it; next_offset resumes at it.
  await pyro.writeTaskFile({ task_id: id, path: "utf8.txt", content: "aé" });
  const cut = await pyro.readTaskFile({ task_id: id, path: "utf8.txt", length: 2 });
  assert.deepEqual([cut.encoding, cut.content, cut.next_offset], ["text", "a", 1]);

  const w = await pyro.writeTaskFile({ task_id: id, path: "gen/deep/tool.sh", content: "#!/bin/sh\necho tool\n", mode: 0o750 });
  assert.deepEqual(w, { task_id: id, path: "/workspace/gen/deep/tool.sh", bytes: 20, mode: 0o750 });
  const ran = await pyro.execTask({ task_id: id, command: "./gen/deep/tool.sh && stat -c '%a' gen/deep/tool.sh && ls -a gen/deep" });
  assert.equal(ran.stdout, "tool\n750\n.\n..\ntool.sh\n", "written with its mode, no temporary left");
  const bin = Buffer.from([0, 255, 1, 254, 10]);
  await pyro.writeTaskFile({ task_id: id, path: "blob.dat", content: bin.toString("base64"), encoding: "base64" });
  assert.deepEqual(Buffer.from((await pyro.readTaskFile({ task_id: id, path: "blob.dat", encoding: "base64" })).content, "base64"), bin);

  // One patch: a change, a new file, a deletion.
  const patch = [
    "diff --git a/src/main.c b/src/main.c",
    "--- a/src/main.c",
    "+++ b/src/main.c",
    "@@ -1,3 +1,4 @@",
    " int main(void) {",
    "-  return 1;",
    "+  /* fixed */",
    "+  return 0;",
    " }",
    "--- /dev/null",
    "+++ b/src/new.h",
    "@@ -0,0 +1 @@",
    "+#define NEW 1",
    "--- a/src/old.txt",
    "+++ /dev/null",
    "@@ -1 +0,0 @@",
    "-to be deleted",
    "",
  ].join("\n");
  const applied = await pyro.applyTaskPatch({ task_id: id, patch });
  assert.deepEqual([applied.modified, applied.added, applied.deleted], [1, 1, 1]);
  const after = await pyro.execTask({ task_id: id, command: "cat src/main.c src/new.h; ls src" });
  assert.equal(after.stdout, "int main(void) {\n  /* fixed */\n  return 0;\n}\n#define NEW 1\nmain.c\nnew.h\n");

  // A patch whose second file does not apply changes nothing, and names the hunk.
  const bad = "--- a/README.md\n+++ b/README.md\n@@ -1,2 +1,2 @@\n # demo\n-version 1\n+version 2\n--- a/src/main.c\n+++ b/src/main.c\n@@ -1,2 +1,2 @@\n int main(void) {\n-  return 1;\n+  return 2;\n";
  const why = await message(pyro.applyTaskPatch({ task_id: id, patch: bad }));
  assert.match(why, /does not apply to \/workspace\/src\/main\.c: hunk "@@ -1,2 \+1,2 @@"/);
  assert.match(why, /^-  return 1;$/m);
  assert.equal((await pyro.readTaskFile({ task_id: id, path: "README.md" })).content, "# demo\nversion 1\n", "the first file is untouched");
  assert.equal(await code(pyro.applyTaskPatch({ task_id: id, patch: "--- a/nope.txt\n+++ b/nope.txt\n@@ -1 +1 @@\n-a\n+b\n" })), "patch_failed");
  assert.equal(await code(pyro.applyTaskPatch({ task_id: id, patch: "--- /dev/null\n+++ b/README.md\n@@ -0,0 +1 @@\n+x\n" })), "patch_failed", "creating a file that exists");
  assert.equal(await code(pyro.applyTaskPatch({ task_id: id, patch: "--- a/logo.bin\n+++ b/logo.bin\n@@ -1 +1 @@\n-a\n+b\n" })), "patch_failed", "a binary file");
  assert.equal(await code(pyro.applyTaskPatch({ task_id: id, patch: "not a patch" })), "invalid_argument");

  // The diff against the seed.
  await pyro.execTask({ task_id: id, command: "printf '\\000\\001' > logo.bin; rm utf8.txt blob.dat" });
  const diff = await pyro.diffTask({ task_id: id });
  assert.deepEqual(diff.added, ["/workspace/gen/deep/tool.sh", "/workspace/src/new.h"]);
  assert.deepEqual(diff.modified, ["/workspace/logo.bin", "/workspace/src/main.c"]);
  assert.deepEqual(diff.deleted, ["/workspace/src/old.txt"]);
  const main = diff.changes.find((c) => c.path === "/workspace/src/main.c")!;
  assert.equal(main.diff, "--- a/src/main.c\n+++ b/src/main.c\n@@ -1,3 +1,4 @@\n int main(void) {\n-  return 1;\n+  /* fixed */\n+  return 0;\n }\n");
  const logoChange = diff.changes.find((c) => c.path === "/workspace/logo.bin")!;
  assert.deepEqual([logoChange.binary, logoChange.diff, logoChange.note], [true, null, "binary file"]);
  assert.match(diff.patch, /^--- a\/src\/old\.txt\n\+\+\+ \/dev\/null\n@@ -1,1 \+0,0 @@\n-to be deleted$/m);
  // The diff is a patch: applied to a copy of the seed on the host, it gives the workspace's text files.
  const copy = tempDir(t);
  spawnSync("cp", ["-a", `${repo}/.`, copy]);
  const textOnly = diff.patch;
  const gitApply = spawnSync("patch", ["-p1", "-s", "-d", copy], { input: textOnly, encoding: "utf8" });
  if (gitApply.error) t.diagnostic("patch(1) is not installed: the host-side apply of the diff is not checked");
  else {
    assert.equal(gitApply.status, 0, gitApply.stderr + gitApply.stdout);
    assert.equal(readFileSync(join(copy, "src/main.c"), "utf8"), "int main(void) {\n  /* fixed */\n  return 0;\n}\n");
  }
  const capped = await pyro.diffTask({ task_id: id, max_diff_bytes: 1024, path: "src" });
  assert.deepEqual(capped.added, ["/workspace/src/new.h"], "a subtree's diff");

  // Export only what changed, then check it byte for byte against the sandbox.
  const out = tempDir(t);
  const changed = await pyro.exportTask({ task_id: id, target: join(out, "changed"), only_changed: true });
  assert.deepEqual(changed.not_exported_deleted, ["/workspace/src/old.txt"]);
  const files = readdirSync(join(out, "changed"), { recursive: true }).map(String).sort();
  assert.deepEqual(files, ["gen", "gen/deep", "gen/deep/tool.sh", "logo.bin", "src", "src/main.c", "src/new.h"]);
  for (const f of ["gen/deep/tool.sh", "logo.bin", "src/main.c", "src/new.h"]) {
    const inside = Buffer.from((await pyro.readTaskFile({ task_id: id, path: f, encoding: "base64" })).content, "base64");
    assert.deepEqual(readFileSync(join(out, "changed", f)), inside, f);
  }
  assert.equal(lstatSync(join(out, "changed/gen/deep/tool.sh")).mode & 0o777, 0o750);

  // The whole workspace as a tar; a subtree as a directory; an existing target is refused, merge writes into it.
  const tarPath = join(out, "all.tar");
  const all = await pyro.exportTask({ task_id: id, target: tarPath });
  assert.equal(all.format, "tar");
  const names: string[] = [];
  await tarList({ file: tarPath, onReadEntry: (e) => void names.push(e.path) });
  assert.ok(names.includes("readme-link") && names.includes("src/main.c") && names.includes("gen/deep/tool.sh"), names.join(" "));
  const sub = await pyro.exportTask({ task_id: id, target: join(out, "src"), path: "/workspace/src" });
  assert.deepEqual(readdirSync(join(out, "src")).sort(), ["main.c", "new.h"]);
  assert.equal(sub.files, 2);
  assert.equal(await code(pyro.exportTask({ task_id: id, target: join(out, "src") })), "target_exists");
  assert.equal(await code(pyro.exportTask({ task_id: id, target: tarPath })), "target_exists");
  writeFileSync(join(out, "src", "host-only.txt"), "mine\n");
  await pyro.exportTask({ task_id: id, target: join(out, "src"), path: "gen", merge: true });
  assert.deepEqual(readdirSync(join(out, "src")).sort(), ["deep", "host-only.txt", "main.c", "new.h"], "merge keeps what the host had");
  assert.deepEqual(readdirSync(out).filter((n) => n.startsWith(".pyro-export")), [], "no staging directory left");
});

test("an export of only the changed files when nothing changed is an empty directory or tar, not a damaged archive; past max_files it says to export less", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const repo = tempDir(t);
  writeFileSync(join(repo, "a.txt"), "a\n");
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: repo });
  const out = tempDir(t);
  const dir = await pyro.exportTask({ task_id, target: join(out, "none"), only_changed: true });
  assert.deepEqual([dir.files, dir.bytes, readdirSync(join(out, "none"))], [0, 0, []]);
  const tar = await pyro.exportTask({ task_id, target: join(out, "none.tar"), only_changed: true });
  assert.deepEqual([tar.files, tar.format], [0, "tar"]);
  const names: string[] = [];
  await tarList({ file: join(out, "none.tar"), onReadEntry: (e) => void names.push(e.path) });
  assert.deepEqual(names, []);
  // Past max_files the hint is to export less, not to remove the entry where the count ran out.
  await pyro.execTask({ task_id, command: "touch b c d" });
  const past = await message(pyro.exportTask({ task_id, target: join(out, "past"), max_files: 2 }));
  assert.match(past, /^Refused to export ".*": the export has more than 2 entries\.$/);
  await assert.rejects(pyro.exportTask({ task_id, target: join(out, "past"), max_files: 2 }), (e: unknown) => e instanceof PyroError && /^Nothing was written to the target\. Export less/.test(e.hint ?? ""));
  // And past max_bytes, with the limit named in the details for a program to read.
  await pyro.execTask({ task_id, command: "head -c 5000 /dev/zero > big" });
  await assert.rejects(pyro.exportTask({ task_id, target: join(out, "past"), max_bytes: 4096 }), (e: unknown) => {
    assert.ok(e instanceof PyroError);
    assert.match(e.message, /^Refused to export ".*": the export holds more than 4096 bytes\.$/);
    assert.match(e.hint ?? "", /^Nothing was written to the target\. Export less/);
    assert.deepEqual([e.details?.limit, e.details?.max], ["max_bytes", 4096]);
    return true;
  });
  assert.deepEqual(readdirSync(out).sort(), ["none", "none.tar"], "no refused export left a target or its staging");
  await pyro.deleteTask({ task_id });
});

test("paths never leave /workspace nor follow a symlink: planted links, `..`, absolute paths, symlinked parents, fifos", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV });
  const planted = await pyro.execTask({
    task_id,
    command: "cd /workspace && ln -s / rootlink && ln -s /etc/passwd passwd && mkdir real && ln -s real alias && mkfifo pipe && echo ok > real/f && echo secret > /outside.txt",
  });
  assert.equal(planted.exit_code, 0, planted.stderr);
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "rootlink/etc/passwd" })), "path_not_allowed");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "passwd" })), "path_not_allowed");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "alias/f" })), "path_not_allowed", "a symlink inside the tree is not followed either");
  assert.equal(await code(pyro.listTaskFiles({ task_id, path: "rootlink" })), "path_not_allowed");
  assert.equal(await code(pyro.listTaskFiles({ task_id, path: "alias" })), "path_not_allowed");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "/outside.txt" })), "invalid_argument");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "../outside.txt" })), "invalid_argument");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "real/../../outside.txt" })), "invalid_argument");
  assert.equal(await code(pyro.writeTaskFile({ task_id, path: "rootlink/pwned", content: "x" })), "path_not_allowed");
  assert.equal(await code(pyro.writeTaskFile({ task_id, path: "alias/pwned", content: "x" })), "path_not_allowed");
  assert.equal(await code(pyro.applyTaskPatch({ task_id, patch: "--- /dev/null\n+++ b/rootlink/pwned\n@@ -0,0 +1 @@\n+x\n" })), "path_not_allowed");
  assert.equal(await code(pyro.applyTaskPatch({ task_id, patch: "--- a/passwd\n+++ b/passwd\n@@ -1 +1 @@\n-root\n+pwned\n" })), "patch_failed", "a symlink is not a file to patch");
  // A read of a fifo is refused at once (no writer would ever come: a blocking open would hang).
  const started = Date.now();
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "pipe" })), "invalid_argument");
  assert.ok(Date.now() - started < 20_000);
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "real" })), "invalid_argument", "a directory");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "missing.txt" })), "file_not_found");
  assert.equal(await code(pyro.listTaskFiles({ task_id, path: "missing" })), "file_not_found");
  // Writing over a symlink replaces the link, never what it points to.
  await pyro.writeTaskFile({ task_id, path: "passwd", content: "mine\n" });
  const check = await pyro.execTask({ task_id, command: "head -c 5 /etc/passwd; echo; [ -L /workspace/passwd ] && echo link || cat /workspace/passwd; ls / | grep -c pwned; ls -a /workspace/real" });
  assert.equal(check.stdout, "root:\nmine\n0\n.\n..\nf\n");
  // A write whose parent is a file fails with nothing left behind.
  assert.equal(await code(pyro.writeTaskFile({ task_id, path: "real/f/child", content: "x" })), "invalid_argument");
  assert.equal((await pyro.execTask({ task_id, command: "ls -a /workspace/real" })).stdout, ".\n..\nf\n");
  // A patch whose second file cannot be placed leaves neither the first file nor the directories made for it.
  assert.equal(await code(pyro.applyTaskPatch({ task_id, patch: "--- /dev/null\n+++ b/p1/p2/new.txt\n@@ -0,0 +1 @@\n+x\n--- /dev/null\n+++ b/real/f/child\n@@ -0,0 +1 @@\n+y\n" })), "invalid_argument");
  assert.equal((await pyro.execTask({ task_id, command: "ls /workspace" })).stdout, "alias\npasswd\npipe\nreal\nrootlink\n");
  assert.equal(await code(pyro.writeTaskFile({ task_id, path: "/workspace", content: "x" })), "invalid_argument");
  assert.equal(await code(pyro.writeTaskFile({ task_id, path: "big.txt", content: "x".repeat(16 * 1024 * 1024 + 1) })), "limit_exceeded", "one write carries at most 16 MiB");
  assert.equal(await code(pyro.writeTaskFile({ task_id, path: "b.bin", content: "!!!", encoding: "base64" })), "invalid_argument");
  assert.equal(await code(pyro.listTaskFiles({ task_id: "task_000000000000" })), "unknown_task");
  assert.equal(await code(pyro.readTaskFile({ task_id, path: "x", length: 0 })), "invalid_argument");
});

test("a push makes the pushed files the baseline; changes the agent made elsewhere stay in the diff", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: repo });
  assert.deepEqual((await pyro.diffTask({ task_id })).changes, [], "nothing changed right after create");
  await pyro.writeTaskFile({ task_id, path: "run.sh", content: "#!/bin/sh\necho agent\n", mode: 0o755 });
  await pyro.writeTaskFile({ task_id, path: "README.md", content: "agent's readme\n" });
  writeFileSync(join(repo, "README.md"), "# demo\nversion 2 from the host\n");
  writeFileSync(join(repo, "src", "host-new.c"), "/* host */\n");
  await pyro.pushTaskSync({ task_id, source_path: repo });
  const d = await pyro.diffTask({ task_id });
  assert.deepEqual(d.modified, [], "README.md, run.sh and src/* were carried by the push: they are the baseline now");
  await pyro.execTask({ task_id, command: "echo more >> src/host-new.c && rm src/old.txt" });
  const d2 = await pyro.diffTask({ task_id });
  assert.deepEqual([d2.modified, d2.deleted], [["/workspace/src/host-new.c"], ["/workspace/src/old.txt"]]);
  // With delete, what the push removed leaves the baseline (it is not "deleted by the agent").
  rmSync(join(repo, "src", "main.c"));
  await pyro.pushTaskSync({ task_id, source_path: join(repo, "src"), dest: "/workspace/src", delete: true });
  const d3 = await pyro.diffTask({ task_id });
  assert.deepEqual([d3.added, d3.modified, d3.deleted], [[], [], []], JSON.stringify(d3.changes));
});

test("the baseline store cannot forge a diff: an altered copy is refused, the change still shows", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: repo });
  // The agent rewrites the baseline's copy of README.md (by its hash) to hide its change.
  const forged = await pyro.execTask({ task_id, command: "for f in /.pyro-baseline/*; do grep -q 'version 1' $f && echo '# demo' > $f && echo 'version 2' >> $f; done; echo '# demo' > README.md; echo 'version 2' >> README.md" });
  assert.equal(forged.exit_code, 0, forged.stderr);
  const d = await pyro.diffTask({ task_id });
  assert.deepEqual(d.modified, ["/workspace/README.md"], "the host's manifest still says it changed");
  const c = d.changes[0]!;
  assert.equal(c.diff, null);
  assert.match(c.note!, /baseline's copy in the sandbox was altered/);
  // The store replaced by a symlink: pushes still apply and diffs are still made, only without old sides.
  await pyro.execTask({ task_id, command: "rm -rf /.pyro-baseline && ln -s /workspace/trap /.pyro-baseline" });
  writeFileSync(join(repo, "src", "main.c"), "int main(void) { return 0; }\n");
  await pyro.pushTaskSync({ task_id, source_path: repo });
  await pyro.execTask({ task_id, command: "echo edit >> /workspace/src/main.c" });
  const d2 = await pyro.diffTask({ task_id });
  assert.ok(d2.modified.includes("/workspace/src/main.c"), JSON.stringify(d2.modified));
  assert.equal((await pyro.execTask({ task_id, command: "ls /workspace/trap 2>&1 | wc -l; [ -e /workspace/trap ] && echo exists || echo absent" })).stdout.split("\n")[1], "absent");
});

test("an export killed -9 mid-way leaves no target; its staging directory goes with the next export beside it", { timeout: 300_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: makeRepo(t) });
  const out = tempDir(t);
  const target = join(out, "result");
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/export-child.ts"), stateDir, task_id, target], {
    cwd: ROOT,
    env: { ...process.env, PYRO_TEST_PAUSE_AT: "task-export:staged" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the export never paused: ${stderr}`)), 120_000);
    child.stderr!.on("data", (c: Buffer) => {
      stderr += c.toString();
      if (stderr.includes("paused at task-export:staged")) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  assert.equal(existsSync(target), false, "no half-made target");
  assert.equal(readdirSync(out).filter((n) => n.startsWith(".pyro-export-")).length, 1, "the killed process's staging directory");
  const again = await pyro.exportTask({ task_id, target });
  assert.ok(again.files > 0);
  assert.deepEqual(readdirSync(out), ["result"], "the next export beside it removed the dead one's staging directory");
});

test("a diff of many changed files comes in bounded batches and stops at its cap", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV });
  const made = await pyro.execTask({ task_id, command: "mkdir many && cd many && for i in $(seq 1 150); do yes line$i | head -c 102400 > f$i.txt; done; ls | wc -l", timeout_seconds: 120 });
  assert.equal(made.stdout.trim(), "150", made.stderr);
  const small = await pyro.diffTask({ task_id });
  assert.equal(small.added.length, 150);
  assert.equal(small.truncated, true);
  assert.ok(small.patch.length <= 256 * 1024, `the default cap holds (${small.patch.length})`);
  assert.ok(small.changes.filter((c) => c.diff !== null).length >= 1);
  assert.ok(small.changes.every((c) => c.diff !== null || /diff cap/.test(c.note ?? "")), "every file is named, with its diff or why not");
  // Past one fetch batch (16 MiB at the per-file cap): several batches, same answers.
  const big = await pyro.diffTask({ task_id, max_diff_bytes: 16 * 1024 * 1024, max_file_bytes: 1024 * 1024 });
  const withDiff = big.changes.filter((c) => c.diff !== null);
  assert.ok(withDiff.length >= 100, `most files diffed (${withDiff.length})`);
  assert.ok(big.patch.length <= 16 * 1024 * 1024);
  assert.match(withDiff[0]!.diff!, /^--- \/dev\/null\n\+\+\+ b\/many\/f\d+\.txt\n@@ -0,0 \+1,\d+ @@\n\+line\d+\n/);
});

/** The guest binary itself, outside any sandbox: a parent swapped for a symlink while it writes never leads it out. */
test("pyro-agent files under a race: a directory swapped for a symlink mid-write never lets a write out", { timeout: 120_000 }, async (t) => {
  const agent = join(ROOT, "guest/build/pyro-agent");
  if (!existsSync(agent)) return t.skip("guest/build/pyro-agent is not built (make -C guest)");
  const base = tempDir(t);
  const ws = join(base, "ws");
  const outside = join(base, "outside");
  mkdirSync(join(ws, "d"), { recursive: true });
  mkdirSync(outside);
  // Its own process group: the loop's mv, ln and rm are processes of their own, and one left running after the
  // shell was killed would rename inside ws while the cleanup removes it (ENOTEMPTY).
  const racer = spawn("/bin/sh", ["-c", `cd ${ws} && while :; do mv d d.real 2>/dev/null; ln -s ${outside} d 2>/dev/null; rm -f d; mv d.real d 2>/dev/null; done`], { stdio: "ignore", detached: true });
  const stopRacer = async () => {
    try {
      process.kill(-racer.pid!, "SIGKILL");
    } catch {
      return; // already gone
    }
    for (let i = 0; i < 200; i++) {
      try {
        process.kill(-racer.pid!, 0);
      } catch {
        return;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  t.after(stopRacer);
  let ok = 0;
  let refused = 0;
  for (let i = 0; i < 300; i++) {
    const r = spawnSync(agent, ["files", "commit", ws], { input: Buffer.concat([Buffer.from("W 644 1 d/f\0x"), Buffer.from("E\0")]) });
    if (r.status === 0) ok++;
    else refused++;
  }
  await stopRacer();
  assert.deepEqual(readdirSync(outside), [], `nothing was written through the symlink (${ok} writes landed, ${refused} refused)`);
  t.diagnostic(`${ok} writes landed in the real directory, ${refused} refused while it was a symlink or missing`);
});

test("the CLI: pyro task file ls/cat/write, patch, diff, export, with exit codes and one-line errors", { timeout: 300_000 }, async (t) => {
  // The task is deleted, through pyro, before its state directory goes (tempStateDir).
  const stateDir = tempStateDir(t, "pyro-files-cli-");
  const env = { PYRO_STATE_DIR: stateDir };
  const cli = (args: string[], input?: string | Buffer) => runCliSync(args, { env, input });
  const created = cli(["task", "create", ENV, "--id-only"]);
  assert.equal(created.status, 0, created.stderr);
  const id = created.stdout.trim();
  const bin = Buffer.from([0, 1, 2, 255]);
  assert.equal(cli(["task", "file", "write", id, "data/blob.bin"], bin).status, 0);
  const w = cli(["task", "file", "write", id, "run.sh", "--mode", "0755"], "#!/bin/sh\necho hi\n");
  assert.equal(w.stdout, "wrote 18 B to /workspace/run.sh (mode 0755)\n", w.stderr);
  const cat = spawnSync(process.execPath, ["dist/pyro.cjs", "task", "file", "cat", id, "data/blob.bin"], { cwd: ROOT, env: { ...process.env, PYRO_DAEMON: "0", ...env } });
  assert.deepEqual(cat.stdout, bin, "cat prints the bytes as they are");
  const ls = cli(["task", "file", "ls", id]);
  assert.equal(ls.stdout, "d 0755       4096  data\n- 0755         18  run.sh\n");
  const patch = cli(["task", "patch", id], "--- a/run.sh\n+++ b/run.sh\n@@ -1,2 +1,2 @@\n #!/bin/sh\n-echo hi\n+echo hello\n");
  assert.equal(patch.stdout, "modified /workspace/run.sh (1 hunk)\n", patch.stderr);
  const stale = cli(["task", "patch", id], "--- a/run.sh\n+++ b/run.sh\n@@ -1,2 +1,2 @@\n #!/bin/sh\n-echo hi\n+echo bye\n");
  assert.equal(stale.status, 125);
  assert.match(stale.stderr, /^pyro: The patch does not apply to \/workspace\/run\.sh/);
  const stat = cli(["task", "diff", id, "--stat"]);
  assert.equal(stat.stdout, "A /workspace/data/blob.bin  (binary file)\nA /workspace/run.sh\n", stat.stderr);
  const out = tempDir(t);
  const exp = cli(["task", "export", id, join(out, "x.tar"), "--json"]);
  assert.equal(exp.status, 0, exp.stderr);
  assert.equal(JSON.parse(exp.stdout).format, "tar");
  const outside = cli(["task", "file", "cat", id, "/etc/passwd"]);
  assert.equal(outside.status, 2);
  assert.match(outside.stderr, /^pyro: The path "\/etc\/passwd" is outside \/workspace/);
  const exists = cli(["task", "export", id, join(out, "x.tar")]);
  assert.equal(exists.status, 2);
  assert.match(exists.stderr, /already exists/);
  assert.equal(cli(["task", "file", "ls", "task_000000000000"]).status, 2);
  const zip = cli(["task", "export", id, join(out, "x.zip"), "--format", "zip"]);
  assert.equal(zip.status, 2, "a bad --format is a usage error, not a bug of pyro's");
  assert.match(zip.stderr, /argument 'zip' is invalid\. --format is dir or tar\./);
  assert.doesNotMatch(zip.stderr, /bug/);

  // Names the sandbox chose reach the human's terminal quoted when they hold a newline or an escape sequence:
  // no forged line, no terminal control.
  const odd = cli(["task", "exec", id, "--", "sh", "-c", "mkdir q && cd q && touch \"$(printf 'a\\nA forged')\" \"$(printf '\\033]0;pwned\\007')\" plain"]);
  assert.equal(odd.status, 0, odd.stderr);
  assert.equal(cli(["task", "file", "ls", id, "q"]).stdout, ['- 0644          0  "\\u001b]0;pwned\\u0007"', '- 0644          0  "a\\nA forged"', "- 0644          0  plain", ""].join("\n"));
  const oddStat = cli(["task", "diff", id, "--stat"]).stdout.split("\n").filter((l) => l.includes("/q/"));
  assert.deepEqual(oddStat, ['A "/workspace/q/\\u001b]0;pwned\\u0007"', 'A "/workspace/q/a\\nA forged"', "A /workspace/q/plain"]);
});

// ------------------------------------------------------------------ crash-safe commits

const STATE = 'cd /workspace && find . | sort | while read f; do if [ -f "$f" ]; then echo "$f $(cat "$f")"; else echo "$f"; fi; done; ls -a / | grep -e "^.pyro-files.journal" ; true';
const PATCH = [
  "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-old-a\n+new-a\n",
  "--- a/d/b.txt\n+++ b/d/b.txt\n@@ -1 +1 @@\n-old-b\n+new-b\n",
  "--- /dev/null\n+++ b/n/e/c.txt\n@@ -0,0 +1 @@\n+new-c\n",
  "--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-old-g\n",
].join("");
const RESET = "cd /workspace && rm -rf n && echo old-a > a.txt && echo old-b > d/b.txt && echo old-g > gone.txt";

function sandboxOf(stateDir: string, taskId: string): { process: { pid: number } } {
  return (JSON.parse(readFileSync(join(stateDir, "tasks", taskId, "record.json"), "utf8")) as { sandbox: { process: { pid: number } } }).sandbox;
}

/**
 * The host pid of the guest's paused files process (namespace driver: its processes are the host's).
 * Every exec has its own pid namespace, so a command in the sandbox cannot signal it: the host does.
 */
function pausedFilesProcess(point: string, sandboxPid: number): number | null {
  const parent = (pid: string) => /^\d+ \(.*\) \S+ (\d+)/s.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1] ?? "0";
  const under = (pid: string) => {
    for (let p = pid, i = 0; p !== "0" && p !== "1" && i < 64; p = parent(p), i++) if (p === String(sandboxPid)) return true;
    return false;
  };
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      // Only this task's sandbox: another run's paused commit (or a test's) is not ours to kill.
      if (!under(name)) continue;
      const argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0");
      if (argv[1] !== "files" || argv[2] !== "commit" || !argv[0]!.endsWith("pyro-agent")) continue;
      if (readFileSync(`/proc/${name}/environ`, "utf8").split("\0").includes(`PYRO_FILES_PAUSE_AT=${point}`)) return Number(name);
    } catch {
      /* gone meanwhile */
    }
  }
  return null;
}

/** A command in the task's sandbox past the task's lock (which the paused commit's process holds). */
async function inSandbox(stateDir: string, taskId: string, command: string): Promise<string> {
  const r = await execInSandbox(resolveDriver((process.env.PYRO_DRIVER as "namespace") || "namespace"), sandboxOf(stateDir, taskId) as never, { command: ["/bin/sh", "-c", command], timeout_seconds: 30, max_output_bytes: 65536 });
  return r.stdout;
}

test("a commit killed -9 at any step (its process, its host, its sandbox) is undone or finished by the next files command", { timeout: 600_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const repo = tempDir(t, "pyro-files-src-");
  mkdirSync(join(repo, "d"));
  writeFileSync(join(repo, "a.txt"), "old-a\n");
  writeFileSync(join(repo, "d", "b.txt"), "old-b\n");
  writeFileSync(join(repo, "gone.txt"), "old-g\n");
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: repo });
  const state = async () => (await pyro.execTask({ task_id, command: STATE })).stdout;
  const old = await state();
  await pyro.applyTaskPatch({ task_id, patch: PATCH });
  const fresh = await state();
  assert.match(fresh, /\.\/a\.txt new-a\n\.\/d\n\.\/d\/b\.txt new-b\n\.\/n\n\.\/n\/e\n\.\/n\/e\/c\.txt new-c\n$/);
  await pyro.execTask({ task_id, command: RESET });
  assert.equal(await state(), old);

  // The files process alone can be killed from the host only where its processes are the host's.
  const kills = (process.env.PYRO_DRIVER ?? "namespace") === "namespace" ? (["files", "host", "sandbox"] as const) : (["host", "sandbox"] as const);
  const points = ["commit-writing", "commit-written", "commit-renaming", "commit-renamed", "commit-placed", "commit-committed", "commit-cleaned"];
  const seen: string[] = [];
  let k = 0;
  for (const point of points) {
    for (const kill of point === "commit-renamed" ? kills : [kills[k++ % kills.length]!]) {
      const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/patch-child.ts"), stateDir, task_id, PATCH], {
        cwd: ROOT,
        env: { ...process.env, PYRO_TEST_PAUSE_AT: `files:${point}` },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const exited = new Promise((r) => child.once("exit", r));
      // A failed check must not leave the child (and this file) waiting forever.
      t.after(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      });
      let stderr = "";
      await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the commit never paused at ${point}: ${stderr}`)), 120_000);
        child.stderr!.on("data", (c: Buffer) => {
          stderr += c.toString();
          const m = new RegExp(`paused at ${point} pid (\\d+)`).exec(stderr);
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        });
      });
      // While it is held, the workspace shows what the commit has done so far (for the record).
      const during = await inSandbox(stateDir, task_id, STATE);
      // Another files command beside the live commit leaves it alone: the commit holds the journal's lock. It waits
      // for the lock a while first (the holder may be the commit of a host that was just killed), then goes on.
      const beside = Date.now();
      await inSandbox(stateDir, task_id, "/run/pyro-agent files ls /workspace '' >/dev/null");
      assert.ok(Date.now() - beside >= 1900, `${point}: the files command beside the live commit waited for its lock (${Date.now() - beside} ms)`);
      assert.equal(await inSandbox(stateDir, task_id, STATE), during, `${point}: a files command beside the live commit changed nothing`);
      assert.match(during, /^\.pyro-files\.journal$/m, `${point}: the live commit's journal`);
      if (kill === "host") child.kill("SIGKILL");
      else if (kill === "files") {
        const pid = pausedFilesProcess(point, sandboxOf(stateDir, task_id).process.pid);
        assert.ok(pid, `the paused files process of ${point} is found`);
        process.kill(pid, "SIGKILL");
      }
      else process.kill(sandboxOf(stateDir, task_id).process.pid, "SIGKILL");
      await Promise.race([exited, new Promise((_, reject) => setTimeout(() => reject(new Error(`the child did not end after the ${kill} kill at ${point}`)), 60_000).unref())]);
      if (kill === "sandbox") for (let i = 0; i < 100 && (await pyro.statusTask({ task_id })).state !== "stopped"; i++) await new Promise((r) => setTimeout(r, 50));
      // The next files command (any: a listing here) recovers first.
      const listed = await pyro.listTaskFiles({ task_id });
      assert.deepEqual(listed.entries.map((e) => e.name).filter((n) => n.startsWith(".pyro-")), [], `${point}/${kill}: the listing shows a temporary`);
      const now = await state();
      assert.ok(now === old || now === fresh, `after a kill (${kill}) at ${point} the workspace is mixed:\n${now}\n(while held:\n${during})`);
      const want = point === "commit-committed" || point === "commit-cleaned" ? fresh : old;
      assert.equal(now, want, `${point}/${kill}: ${want === old ? "rolled back" : "rolled forward"}`);
      seen.push(`${point}/${kill}:${now === old ? "old" : "new"}`);
      if (now === fresh) await pyro.execTask({ task_id, command: RESET });
      assert.equal(await state(), old);
    }
  }
  t.diagnostic(seen.join(" "));
  // And the patch still goes through whole afterwards.
  await pyro.applyTaskPatch({ task_id, patch: PATCH });
  assert.equal(await state(), fresh);
});

test("a files command that starts while a killed commit is still dying waits for it, then rolls it back", { timeout: 120_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: makeRepo(t) });
  // The window a host's kill -9 leaves: the host is gone, its commit not yet (the agent's SIGKILL lags by a few ms).
  // Here it is 300 ms wide, made in the sandbox: a commit paused after its temporary is written, killed 300 ms after
  // a listing started beside it.
  const r = await pyro.execTask({
    task_id,
    command: [
      "cd /tmp",
      "printf 'W 644 4 late.txt\\000new\\nE\\000' | PYRO_FILES_PAUSE_AT=commit-written /run/pyro-agent files commit /workspace 2>commit.err & pid=$!",
      "until grep -q paused commit.err; do sleep 0.01; done",
      "ls -a /workspace | grep -c '^.pyro-new' ",
      "(sleep 0.3; kill -9 $pid) &",
      // Milliseconds from /proc/uptime (busybox's date has no %N).
      "ms() { read u _ < /proc/uptime; echo $(( ${u%.*}${u#*.} * 10 )); }",
      "start=$(ms); /run/pyro-agent files ls /workspace '' > ls.out; echo \"waited $(( $(ms) - start )) ms\"",
      "grep -c pyro- ls.out; ls -a /workspace | grep -c pyro-; ls -a / | grep -c pyro-files.journal; true",
    ].join("\n"),
  });
  assert.equal(r.exit_code, 0, r.stderr);
  const [temps, waited, listed, left, journal] = r.stdout.trim().split("\n");
  assert.equal(temps, "1", "the paused commit wrote its temporary");
  const ms = Number(/^waited (\d+) ms$/.exec(waited ?? "")?.[1]);
  assert.ok(ms >= 250 && ms < 1900, `the listing waited for the dying commit, not for its whole bound (${waited})`);
  assert.deepEqual([listed, left, journal], ["0", "0", "0"], "no temporary listed or left, no journal");
  assert.match(r.stderr, /pyro-agent files: rolled back an interrupted commit \(1 change\)/);
  assert.equal((await pyro.listTaskFiles({ task_id })).entries.some((e) => e.name === "late.txt"), false, "the killed commit's file is not there");
});

test("a forged commit journal touches nothing outside /workspace and is removed", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV, source_path: makeRepo(t) });
  // Outside the workspace: files of the exact temporary/aside patterns, which a forged record aims at.
  await pyro.execTask({
    task_id,
    command: "mkdir -p /outside && echo precious > /outside/x && echo aside > /outside/.pyro-old.1.1 && echo temp > /outside/.pyro-new.1.1 && mkdir /outside/empty && ln -s /outside /workspace/link && echo victim > /workspace/victim",
  });
  const OUTSIDE = "cd /outside && for f in x .pyro-old.1.1 .pyro-new.1.1; do echo \"$f $(cat $f)\"; done; ls -a /outside | tr '\\n' ' '; echo; cat /workspace/victim; ls -la /workspace/link";
  const before = (await pyro.execTask({ task_id, command: OUTSIDE })).stdout;
  const records = [
    "PYROF1",
    "F1W .pyro-new.1.1 .pyro-old.1.1 ../outside/x", // `..`
    "F1W .pyro-new.1.1 .pyro-old.1.1 /outside/x", // absolute
    "F1W .pyro-new.1.1 .pyro-old.1.1 link/x", // through a symlink, to real pattern names outside
    "F1D - .pyro-old.1.1 link/x",
    "F1W ../x .pyro-old.1.1 victim", // a temp name not of the pattern
    "F1W .pyro-new.1.1 ../outside/x victim", // an aside pointing outside
    "F1W .pyro-new.1.1 .pyro-old.2.2 victim", // names of two different commits
    "F0W .pyro-new.1.1 .pyro-old.1.1 link", // the symlink itself as a new file
    "M../outside/empty",
    "Mlink/empty",
    "M/outside/empty",
    "P",
    "garbage",
  ];
  const octal = records.map((r) => r.replace(/'/g, "") + "\\000").join("");
  const forge = async (how: string) => {
    await pyro.execTask({ task_id, command: how.replace("JOURNAL", `printf '${octal}'`) });
    // The agent's own files command, run as the host runs it, to see what it says on stderr.
    const r = await pyro.execTask({ task_id, command: ["/run/pyro-agent", "files", "ls", "/workspace", ""] });
    assert.equal(r.exit_code, 0, r.stderr);
    assert.equal((await pyro.execTask({ task_id, command: OUTSIDE })).stdout, before, `${how}: something outside /workspace changed`);
    assert.equal((await pyro.execTask({ task_id, command: "ls -a / | grep -c pyro-files.journal; true" })).stdout.trim(), "0", "the journal is gone");
    return r.stderr;
  };
  const said = await forge("JOURNAL > /.pyro-files.journal");
  assert.match(said, /^pyro-agent files: rolled back an interrupted commit \(\d+ changes?\); records that name no path inside the workspace or are malformed were ignored\n$/);
  // A journal that is a symlink (to a journal-looking file outside): the link goes, never its target.
  await forge("mkdir -p /elsewhere && JOURNAL > /elsewhere/j && ln -s /elsewhere/j /.pyro-files.journal");
  const size = records.reduce((n, r) => n + Buffer.byteLength(r) + 1, 0);
  assert.equal((await pyro.execTask({ task_id, command: "head -c 6 /elsewhere/j; wc -c < /elsewhere/j" })).stdout.replace(/ /g, ""), `PYROF1${size}\n`, "the link's target is untouched");
  // Not a journal at all: a directory, a fifo, random bytes.
  await forge("mkdir /.pyro-files.journal");
  await forge("mkfifo /.pyro-files.journal");
  await forge("head -c 4096 /dev/urandom > /.pyro-files.journal");
  // The workspace's own files still work after all of it.
  await pyro.writeTaskFile({ task_id, path: "after.txt", content: "ok\n" });
  assert.equal((await pyro.readTaskFile({ task_id, path: "after.txt" })).content, "ok\n");
});
