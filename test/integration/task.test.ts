import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PyroError } from "../../src/index.js";
import { leftovers, settledLeftovers, testPyro } from "../helpers/sandbox.js";
import { rawTar } from "../helpers/tarfix.js";
import { runCliSync } from "../helpers/cli.js";

/** The parity run (test/vm/parity.test.ts) runs this file on qemu; tests of the namespace driver itself, or of what VMs lack, are skipped there. */
const onlyNamespace = process.env.PYRO_DRIVER === "qemu" && "tests the namespace driver itself, or what VMs do not have in this release";

const ENV = "busybox";

function tempDir(t: import("node:test").TestContext, prefix = "pyro-src-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A small repository-like tree: an executable, a symlink inside, an empty dir, a known mtime. */
function makeRepo(t: import("node:test").TestContext): string {
  const repo = tempDir(t);
  mkdirSync(join(repo, "src"));
  mkdirSync(join(repo, "empty"));
  writeFileSync(join(repo, "README.md"), "version 1\n");
  writeFileSync(join(repo, "src", "build.sh"), "#!/bin/sh\necho built\n");
  chmodSync(join(repo, "src", "build.sh"), 0o755);
  symlinkSync("../README.md", join(repo, "src", "readme"));
  utimesSync(join(repo, "README.md"), new Date(1_600_000_000_000), new Date(1_600_000_000_000));
  return repo;
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

const LISTING = "cd /workspace && find . | sort | while read f; do stat -c '%n %s %a %F' \"$f\"; done; cat README.md";

test("the seed's loop through the SDK: create from a directory, push a change, exec sees it, delete leaves nothing", { skip: onlyNamespace }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const repo = makeRepo(t);
  const task = await pyro.createTask({ environment: ENV, source_path: repo, name: "loop" });
  assert.equal(task.state, "running");
  assert.equal(task.seed.kind, "directory");
  assert.equal(task.seed.file_count, 3); // README.md, src/build.sh, src/readme
  assert.match(task.seed.digest!, /^sha256:/);
  assert.equal(task.isolation.driver, "namespace");

  const first = await pyro.execTask({ task_id: task.task_id, command: "./src/build.sh; cat src/readme; stat -c '%Y' README.md; ls -d empty; pwd" });
  assert.equal(first.stdout, "built\nversion 1\n1600000000\nempty\n/workspace\n", first.stderr);
  assert.equal(first.sequence, 1);

  writeFileSync(join(repo, "README.md"), "version 2\n");
  writeFileSync(join(repo, "src", "new.txt"), "new\n");
  const pushed = await pyro.pushTaskSync({ task_id: task.task_id, source_path: repo });
  assert.equal(pushed.dest, "/workspace");
  assert.ok(pushed.replaced >= 1 && pushed.added >= 1, JSON.stringify(pushed));

  const second = await pyro.execTask({ task_id: task.task_id, command: "cat README.md src/new.txt" });
  assert.equal(second.stdout, "version 2\nnew\n");
  assert.equal(second.sequence, 2);

  const status = await pyro.statusTask({ task_id: task.task_id });
  assert.equal(status.exec_count, 2);
  assert.equal(status.push_count, 1);
  assert.ok((status.workspace.bytes ?? 0) > 0);
  const logs = await pyro.logsTask({ task_id: task.task_id, tail: 1 });
  assert.equal(logs.entries.length, 1);
  assert.equal(logs.entries[0]!.sequence, 2);
  assert.equal(logs.entries[0]!.stdout, "version 2\nnew\n");

  await pyro.deleteTask({ task_id: task.task_id });
  assert.deepEqual(await settledLeftovers(stateDir, [task.task_id]), { processes: [], dirs: [], cgroups: [] });
  assert.equal(await code(pyro.statusTask({ task_id: task.task_id })), "unknown_task");
});

test("a task seeds from a .tar.gz; exec takes cwd and env; sync push takes dest, delete and exclude", async (t) => {
  const { pyro } = testPyro(t);
  const dir = tempDir(t);
  const tgz = join(dir, "seed.tgz");
  writeFileSync(tgz, rawTar([{ path: "app/", type: "Directory", mode: 0o755 }, { path: "app/main.txt", body: "seeded\n" }], { gzip: true }));
  const task = await pyro.createTask({ environment: ENV, source_path: tgz });
  assert.equal(task.seed.kind, "tar");
  const r = await pyro.execTask({ task_id: task.task_id, command: "cat main.txt; echo $GREETING", cwd: "/workspace/app", env: { GREETING: "hi" } });
  assert.equal(r.stdout, "seeded\nhi\n");

  const src = tempDir(t);
  writeFileSync(join(src, "keep.txt"), "keep\n");
  writeFileSync(join(src, "debug.log"), "noise\n");
  await pyro.pushTaskSync({ task_id: task.task_id, source_path: src, dest: "/workspace/app", delete: true, exclude: ["*.log"] });
  const after = await pyro.execTask({ task_id: task.task_id, command: "ls /workspace/app" });
  assert.equal(after.stdout, "keep.txt\n");
});

test("destinations outside /workspace are refused and nothing changes", async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const task = await pyro.createTask({ environment: ENV, source_path: repo });
  await pyro.execTask({ task_id: task.task_id, command: "ln -s /etc /workspace/etc-link" });
  const before = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  for (const dest of ["/etc", "/workspace/../etc", "relative/path", "/workspacex"]) {
    assert.equal(await code(pyro.pushTaskSync({ task_id: task.task_id, source_path: repo, dest })), "invalid_argument", dest);
  }
  // A symlink inside the workspace that points out is refused by the guest step.
  assert.equal(await code(pyro.pushTaskSync({ task_id: task.task_id, source_path: repo, dest: "/workspace/etc-link" })), "sandbox_failed");
  const etc = await pyro.execTask({ task_id: task.task_id, command: "ls /etc/README.md 2>&1; ls -d /.pyro-stage 2>&1" });
  assert.match(etc.stdout, /No such file/);
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, before);
});

test("hostile archives are refused, naming the entry, and /workspace is unchanged", async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const task = await pyro.createTask({ environment: ENV, source_path: repo });
  const before = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  const dir = tempDir(t);
  const corpus: Array<[string, Parameters<typeof rawTar>[0]]> = [
    ["dotdot", [{ path: "ok.txt", body: "fine" }, { path: "../escape.txt", body: "x" }]],
    ["absolute", [{ path: "/etc/evil", body: "x" }]],
    ["through-symlink", [{ path: "l", type: "SymbolicLink", linkpath: "." }, { path: "l/x", body: "x" }]],
    ["hardlink-out", [{ path: "h", type: "Link", linkpath: "/etc/shadow" }]],
    ["device", [{ path: "null", type: "CharacterDevice" }]],
    ["fifo", [{ path: "p", type: "FIFO" }]],
  ];
  for (const [name, entries] of corpus) {
    const file = join(dir, `${name}.tar`);
    writeFileSync(file, rawTar([{ path: "first.txt", body: "written before the bad entry" }, ...entries]));
    await assert.rejects(pyro.pushTaskSync({ task_id: task.task_id, source_path: file }), (e: unknown) => {
      assert.ok(e instanceof PyroError);
      assert.equal(e.code, "unsafe_archive", `${name}: ${e.message}`);
      assert.ok(typeof e.details?.entry === "string");
      return true;
    });
  }
  // set-id bits are dropped, not refused.
  const suid = join(dir, "suid.tar");
  writeFileSync(suid, rawTar([{ path: "tool", body: "#!/bin/sh\n", mode: 0o4755 }]));
  const pushed = await pyro.pushTaskSync({ task_id: task.task_id, source_path: suid, dest: "/workspace/bin" });
  assert.deepEqual(pushed.setid_dropped, ["tool"]);
  const mode = await pyro.execTask({ task_id: task.task_id, command: "stat -c %a /workspace/bin/tool; rm -r /workspace/bin" });
  assert.equal(mode.stdout, "755\n");
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, before);
});

test("a push that fails while applying is rolled back completely", async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const task = await pyro.createTask({ environment: ENV, source_path: repo });
  const before = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  writeFileSync(join(repo, "README.md"), "changed\n");
  mkdirSync(join(repo, "more/deep"), { recursive: true });
  writeFileSync(join(repo, "more/deep/file"), "x");
  for (const failAfter of ["0", "1", "2"]) {
    await assert.rejects(pyro.tasks.push(task.task_id, { source_path: repo }, { env: { PYRO_APPLY_FAIL_AFTER: failAfter } }), /injected failure/);
    assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, before, `after failing at ${failAfter}`);
  }
});

test("source_path errors: missing, a socket-like non-tar file, outside the allowed roots", async (t) => {
  const root = tempDir(t);
  const { pyro, stateDir } = testPyro(t, { allowedSourceRoots: [root] });
  writeFileSync(join(root, "notes.txt"), "x");
  assert.equal(await code(pyro.createTask({ environment: ENV, source_path: join(root, "missing") })), "source_not_found");
  assert.equal(await code(pyro.createTask({ environment: ENV, source_path: "/nonexistent-outside-the-roots" })), "source_not_allowed");
  assert.equal(await code(pyro.createTask({ environment: ENV, source_path: join(root, "notes.txt") })), "source_not_allowed");
  assert.equal(await code(pyro.createTask({ environment: ENV, source_path: "/etc" })), "source_not_allowed");
  assert.deepEqual((await settledLeftovers(stateDir)).dirs, [], "a refused create leaves no task behind");
  // A seed that turns out unsafe midway also leaves no task behind.
  writeFileSync(join(root, "bad.tar"), rawTar([{ path: "a", body: "x" }, { path: "../b", body: "y" }]));
  assert.equal(await code(pyro.createTask({ environment: ENV, source_path: join(root, "bad.tar") })), "unsafe_archive");
  assert.deepEqual(await settledLeftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

test("a task whose sandbox is killed shows as stopped; the next exec restarts it with /workspace intact", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task = await pyro.createTask({ environment: ENV, source_path: makeRepo(t) });
  await pyro.execTask({ task_id: task.task_id, command: "echo made-inside > /workspace/inside.txt" });
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", task.task_id, "record.json"), "utf8"));
  process.kill(record.sandbox.process.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal((await pyro.statusTask({ task_id: task.task_id })).state, "stopped");
  const r = await pyro.execTask({ task_id: task.task_id, command: "cat inside.txt README.md" });
  assert.equal(r.stdout, "made-inside\nversion 1\n");
  assert.equal((await pyro.statusTask({ task_id: task.task_id })).state, "running");
});

test("two execs at once both complete; a push during an exec waits its turn", async (t) => {
  const { pyro } = testPyro(t);
  const repo = makeRepo(t);
  const task = await pyro.createTask({ environment: ENV, source_path: repo });
  writeFileSync(join(repo, "README.md"), "pushed\n");
  const [a, b, pushed] = await Promise.all([
    pyro.execTask({ task_id: task.task_id, command: "cat README.md; sleep 0.5; cat README.md" }),
    pyro.execTask({ task_id: task.task_id, command: "echo b" }),
    pyro.pushTaskSync({ task_id: task.task_id, source_path: repo }),
  ]);
  // The first exec never sees the file change under it.
  const [l1, l2] = a.stdout.trim().split("\n");
  assert.equal(l1, l2);
  assert.equal(b.stdout, "b\n");
  assert.equal(pushed.replaced >= 1, true);
  const seqs = [a.sequence, b.sequence].sort();
  assert.deepEqual(seqs, [1, 2]);
});

test("tasks survive processes: create, push and exec from three CLI calls", async (t) => {
  const { stateDir } = testPyro(t);
  const repo = makeRepo(t);
  const cli = (args: string[]) => {
    const r = runCliSync(args, { env: { PYRO_STATE_DIR: stateDir } });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  const id = cli(["task", "create", ENV, "--source-path", repo, "--id-only"]).trim();
  assert.match(id, /^task_[0-9a-f]{12}$/);
  writeFileSync(join(repo, "README.md"), "from the second call\n");
  assert.match(cli(["task", "sync", "push", id, repo]), /pushed/);
  assert.equal(cli(["task", "exec", id, "--", "cat", "README.md"]), "from the second call\n");
  cli(["task", "delete", id]);
  assert.deepEqual(await settledLeftovers(stateDir, [id]), { processes: [], dirs: [], cgroups: [] });
});

test("a push of 10,000 files / 200 MB streams in bounded memory", { timeout: 180_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const src = tempDir(t, "pyro-big-");
  const block = Buffer.alloc(1 << 20, 7);
  for (let d = 0; d < 100; d++) {
    mkdirSync(join(src, `d${d}`));
    for (let f = 0; f < 100; f++) {
      if (d === 0 && f < 10) writeFileSync(join(src, `d${d}`, `big${f}`), Buffer.concat(Array.from({ length: 19 }, () => block)));
      else writeFileSync(join(src, `d${d}`, `f${f}`), block.subarray(0, 1024));
    }
  }
  const task = await pyro.createTask({ environment: ENV });
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
  const pushed = await pyro.pushTaskSync({ task_id: task.task_id, source_path: src });
  clearInterval(sampler);
  assert.equal(pushed.files, 10_000);
  assert.equal(pushed.bytes, 10 * 19 * 2 ** 20 + 9_990 * 1024);
  assert.ok(peak - before < 100 * 2 ** 20, `memory grew by ${((peak - before) / 2 ** 20).toFixed(0)} MiB during a 200 MB push`);
  const check = await pyro.execTask({ task_id: task.task_id, command: "find /workspace -type f | wc -l; cat /workspace/d0/big3 | wc -c" });
  assert.equal(check.stdout, `10000\n${19 * 2 ** 20}\n`);
});

test("a forced re-pull of an environment in use by a task is refused", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const { pullEnvironment } = await import("../../src/environments/index.js");
  const previous = process.env.PYRO_STATE_DIR;
  process.env.PYRO_STATE_DIR = stateDir;
  t.after(() => {
    if (previous === undefined) delete process.env.PYRO_STATE_DIR;
    else process.env.PYRO_STATE_DIR = previous;
  });
  const task = await pyro.createTask({ environment: ENV });
  assert.equal(await code(pullEnvironment(ENV, { force: true })), "invalid_state");
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: "echo still-here" })).stdout, "still-here\n");
});

test("a task's exec logs stay under their cap on the host: the oldest execs' output goes first, their journal entries stay", { skip: onlyNamespace, timeout: 300_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV });
  const logs = join(stateDir, "tasks", task_id, "logs");
  const bytes = () => readdirSync(logs).reduce((n, f) => n + statSync(join(logs, f)).size, 0);
  // 128 MiB kept per exec (64 MiB of each stream): three of them are past the task's 256 MiB.
  const flood = "head -c 70000000 /dev/zero; head -c 70000000 /dev/zero >&2; echo done";
  for (let i = 1; i <= 3; i++) {
    const r = await pyro.execTask({ task_id, command: flood, timeout_seconds: 120 });
    assert.equal(r.exit_code, 0, r.stderr.slice(-300));
    assert.ok(bytes() <= 256 * 1024 * 1024, `after exec ${i}: ${bytes()} bytes of logs`);
  }
  assert.deepEqual(readdirSync(logs).sort(), ["2.stderr", "2.stdout", "3.stderr", "3.stdout"]);
  const { entries } = await pyro.logsTask({ task_id, max_output_bytes: 1024 });
  assert.deepEqual(entries.map((e) => e.sequence), [1, 2, 3], "every journal entry stays");
  assert.match(entries[0]!.stdout, /output were removed to keep the task's logs under 256 MiB/);
  assert.equal(entries[0]!.stdout_truncated, true);
  assert.equal(entries[0]!.stdout_bytes, 70000005);
  assert.equal(entries[2]!.stdout_truncated, true);
  assert.match(entries[2]!.stdout, /bytes omitted/);
  // What the record counts is what the disk holds.
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", task_id, "record.json"), "utf8"));
  assert.equal(record.log_bytes, bytes());
});
