// The import path against real sandboxes (busybox, offline): sources pyro's
// own directories hold, a racing renamer, crafted and invalid globs, names
// that are not UTF-8, streams cut between tar members, a zero bomb, a
// stalled guest, and pushes killed at every step of their apply.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { Worker } from "node:worker_threads";
import { createGzip } from "node:zlib";
import { Header } from "tar";
import { Pyro, PyroError } from "../../src/index.js";
import { resolveDriver } from "../../src/drivers/index.js";
import { execInSandbox } from "../../src/runtime/sandbox-exec.js";
import { TaskManager } from "../../src/runtime/tasks.js";
import { rawTar } from "../helpers/tarfix.js";
import { cleanupState, taskFilesRoot, testPyro, waitFor } from "../helpers/sandbox.js";

const ENV = "busybox";
const ROOT = new URL("../..", import.meta.url).pathname;

function tempDir(t: TestContext, prefix = "pyro-src-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function failure(p: Promise<unknown>): Promise<PyroError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected a PyroError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

const LISTING = "cd /workspace && find . | sort | while read f; do if [ -f \"$f\" ]; then echo \"$f $(cat \"$f\")\"; else echo \"$f\"; fi; done; ls -d /.pyro-stage 2>/dev/null; true";

function record(stateDir: string, taskId: string): { sandbox: { socket: string; process: { pid: number } } } {
  return JSON.parse(readFileSync(join(stateDir, "tasks", taskId, "record.json"), "utf8"));
}

test("sources inside pyro's state or cache directories are refused, naming why", async (t) => {
  // One hook, in this order: node:test runs after-hooks in the order they were added, and a tempDir(outer) added
  // first removed the state directory under the running task, so cleanupState found nothing and its groups stayed.
  const outer = mkdtempSync(join(tmpdir(), "pyro-outer-"));
  const stateDir = join(outer, "state");
  const pyro = new Pyro({ stateDir });
  t.after(async () => {
    await cleanupState(pyro, stateDir);
    rmSync(outer, { recursive: true, force: true });
  });
  const task = await pyro.createTask({ environment: ENV });
  await pyro.execTask({ task_id: task.task_id, command: "echo from-inside > /workspace/inner.txt" });
  // The sandbox's own writable layer, where it is a directory (unprivileged): the sandbox can rename things there
  // while the host reads them. As root the layer is a disk image mounted only inside; the task's directory stands in.
  const layer = join(stateDir, "tasks", task.task_id, "sandbox", "rw", "upper", "workspace");
  const image = existsSync(join(stateDir, "tasks", task.task_id, "sandbox", "disk.img"));
  const upper = image ? join(stateDir, "tasks", task.task_id) : layer;
  assert.ok(image || existsSync(join(upper, "inner.txt")), "the test reaches the writable layer");
  const e = await failure(pyro.pushTaskSync({ task_id: task.task_id, source_path: upper }));
  assert.equal(e.code, "invalid_argument");
  assert.match(e.message, /inside pyro's own state directory/);
  assert.match(e.hint ?? "", /original host directory/);
  // A source that contains the state directory is refused at that entry, unless it is excluded.
  writeFileSync(join(outer, "mine.txt"), "mine\n");
  const e2 = await failure(pyro.pushTaskSync({ task_id: task.task_id, source_path: outer }));
  assert.equal(e2.code, "invalid_argument");
  assert.match(e2.message, /contains pyro's own state directory at "state"/);
  const ok = await pyro.pushTaskSync({ task_id: task.task_id, source_path: outer, exclude: ["state"] });
  assert.equal(ok.files, 1);
  // The cache directory too (environments live there).
  const cache = tempDir(t, "pyro-cache-");
  mkdirSync(join(cache, "environments"));
  const previous = process.env.PYRO_CACHE_DIR;
  process.env.PYRO_CACHE_DIR = cache;
  try {
    const e3 = await failure(pyro.pushTaskSync({ task_id: task.task_id, source_path: join(cache, "environments") }));
    assert.equal(e3.code, "invalid_argument");
    assert.match(e3.message, /cache directory/);
  } finally {
    if (previous === undefined) delete process.env.PYRO_CACHE_DIR;
    else process.env.PYRO_CACHE_DIR = previous;
  }
});

test("a directory swapped for a symlink to /etc while pushing never imports a file from outside", async (t) => {
  const { pyro } = testPyro(t);
  const src = tempDir(t);
  mkdirSync(join(src, "sub"));
  writeFileSync(join(src, "sub", "inner.txt"), "inner\n");
  writeFileSync(join(src, "top.txt"), "top\n");
  const task = await pyro.createTask({ environment: ENV });
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const swapper = new Worker(
    `const { renameSync, symlinkSync } = require("node:fs");
     const { workerData } = require("node:worker_threads");
     const { dir, stop } = workerData;
     symlinkSync("/etc", dir + "/link");
     let swaps = 0;
     while (Atomics.load(stop, 0) === 0) {
       renameSync(dir + "/sub", dir + "/real");
       renameSync(dir + "/link", dir + "/sub");
       renameSync(dir + "/sub", dir + "/link");
       renameSync(dir + "/real", dir + "/sub");
       swaps++;
     }
     require("node:worker_threads").parentPort.postMessage(swaps);`,
    { eval: true, workerData: { dir: src, stop } },
  );
  const swaps = new Promise<number>((resolve) => swapper.once("message", resolve));
  let applied = 0;
  const refusals = new Map<string, number>();
  try {
    for (let i = 0; i < 40; i++) {
      try {
        await pyro.pushTaskSync({ task_id: task.task_id, source_path: src, delete: true });
        applied++;
      } catch (e) {
        // Refusals are fine (the tree changed under the walk); following the link never is.
        assert.ok(e instanceof PyroError, String(e));
        assert.ok(["unsafe_archive", "source_not_allowed"].includes(e.code), `${e.code}: ${e.message}`);
        const kind = e.message.replace(/"[^"]*"/g, "X");
        refusals.set(kind, (refusals.get(kind) ?? 0) + 1);
      }
      const files = (await pyro.execTask({ task_id: task.task_id, command: "cd /workspace && find . -type f | sort" })).stdout;
      for (const f of files.trim().split("\n").filter(Boolean)) {
        assert.ok(["./top.txt", "./sub/inner.txt", "./real/inner.txt"].includes(f), `a file from outside the tree landed in /workspace: ${f}`);
      }
    }
  } finally {
    Atomics.store(stop, 0, 1);
  }
  const n = await swaps;
  await swapper.terminate();
  assert.ok(n > 100, `the renamer swapped ${n} times`);
  t.diagnostic(`${applied} pushes applied, refusals: ${JSON.stringify([...refusals])}, ${n} swaps`);
});

test("a crafted exclude glob against long names costs milliseconds, host and guest side", async (t) => {
  const { pyro } = testPyro(t);
  const src = tempDir(t);
  for (let i = 0; i < 30; i++) writeFileSync(join(src, "a".repeat(240) + i), "x");
  mkdirSync(join(src, "a".repeat(200)));
  writeFileSync(join(src, "a".repeat(200), "a".repeat(250)), "y");
  const task = await pyro.createTask({ environment: ENV, source_path: src });
  // The guest side matches excludes against every workspace path when deleting.
  await pyro.execTask({ task_id: task.task_id, command: `for i in 1 2 3 4 5 6 7 8 9; do echo > /workspace/${"a".repeat(240)}x$i; done` });
  const crafted = "*a*a*a*a*a*a*a*a*a*b";
  const started = performance.now();
  const r = await pyro.pushTaskSync({ task_id: task.task_id, source_path: src, exclude: [crafted, "*a*a*a*a*a*a*a*a*a*a*a*a*c"], delete: true });
  const ms = performance.now() - started;
  assert.equal(r.files, 31);
  assert.equal(r.deleted, 9);
  // The RegExp this replaced needed about 5 minutes for a single 60-character name.
  assert.ok(ms < 5000, `the push took ${ms.toFixed(0)} ms`);
  t.diagnostic(`push with crafted globs: ${ms.toFixed(0)} ms`);
});

test("invalid exclude globs and non-UTF-8 names are invalid_argument / unsafe_archive, not internal", async (t) => {
  const { pyro } = testPyro(t);
  const src = tempDir(t);
  writeFileSync(join(src, "good.txt"), "good\n");
  const task = await pyro.createTask({ environment: ENV, source_path: src });
  const before = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  for (const [exclude, why] of [
    [["[abc"], /never closed/],
    [["[z-a]"], /reversed/],
    [["trailing\\"], /lone backslash/],
    [["x".repeat(300)], /most is 256/],
    [Array.from({ length: 65 }, (_, i) => `p${i}`), /most is 64/],
  ] as Array<[string[], RegExp]>) {
    const e = await failure(pyro.pushTaskSync({ task_id: task.task_id, source_path: src, exclude }));
    assert.equal(e.code, "invalid_argument", e.message);
    assert.match(e.message, why);
  }
  // A file name with a Latin-1 byte.
  writeFileSync(Buffer.concat([Buffer.from(`${src}/caf`), Buffer.from([0xe9]), Buffer.from(".txt")]), "latin-1 name\n");
  const e = await failure(pyro.pushTaskSync({ task_id: task.task_id, source_path: src }));
  assert.equal(e.code, "unsafe_archive");
  assert.equal(e.message, 'Refused to import "caf\\xe9.txt": its name is not valid UTF-8.');
  assert.equal(e.details?.entry, "caf\\xe9.txt");
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, before);
  // An exclude pattern can match it (? is the odd byte), and the rest is pushed.
  const ok = await pyro.pushTaskSync({ task_id: task.task_id, source_path: src, exclude: ["caf?.txt"] });
  assert.equal(ok.files, 1);
  // The same name inside a tar archive.
  const tarPath = join(tempDir(t), "latin1.tar");
  const tar = rawTar([{ path: "ok.txt", body: "ok\n" }, { path: "cafX.txt", body: "x\n" }]);
  tar[512 * 2 + 3] = 0xe9;
  let sum = 0;
  for (let i = 512 * 2; i < 512 * 3; i++) sum += i >= 512 * 2 + 148 && i < 512 * 2 + 156 ? 32 : tar[i]!;
  tar.write(sum.toString(8).padStart(6, "0") + "\0 ", 512 * 2 + 148, "latin1");
  writeFileSync(tarPath, tar);
  const e2 = await failure(pyro.pushTaskSync({ task_id: task.task_id, source_path: tarPath }));
  assert.equal(e2.code, "unsafe_archive", e2.message);
  assert.match(e2.message, /not valid UTF-8/);
});

/** The framing the guest's `apply --receive` expects (src/runtime/push.ts). */
function frames(tar: Buffer, options: { end?: boolean; digest?: Buffer } = {}): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; off < tar.length; off += 700) {
    const part = tar.subarray(off, Math.min(tar.length, off + 700));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(part.length);
    parts.push(head, part);
  }
  if (options.end) {
    const trailer = Buffer.alloc(44);
    (options.digest ?? createHash("sha256").update(tar).digest()).copy(trailer, 4);
    trailer.writeBigUInt64LE(BigInt(tar.length), 36);
    parts.push(trailer);
  }
  return Buffer.concat(parts);
}

test("a stream cut between two tar members applies nothing; only the host's end marker and digest let a stage apply", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task = await pyro.createTask({ environment: ENV });
  const handle = record(stateDir, task.task_id).sandbox as never;
  const driver = resolveDriver("namespace");
  const tar = rawTar([{ path: "first.txt", body: "first\n" }, { path: "second.txt", body: "second\n" }]);
  const cut = tar.subarray(0, 1024); // the first member whole, then nothing: no second member, no end blocks
  // The premise: tar itself accepts a stream that ends between members.
  const plain = await execInSandbox(driver, handle, { command: ["/bin/sh", "-c", "mkdir -p /tmp/p && tar -x -f - -C /tmp/p && cat /tmp/p/first.txt"], timeout_seconds: 30, max_output_bytes: 4096, stdin: cut });
  assert.equal(plain.exit_code, 0, plain.stderr);
  assert.equal(plain.stdout, "first\n");
  const apply = (stdin: Buffer) =>
    execInSandbox(driver, handle, {
      command: ["/run/pyro-agent", "apply", "--receive", "--journal", "/.pyro-stage/journal", "--stage", "/.pyro-stage/t", "--dest", "/workspace", "--backup", "/.pyro-stage/t.backup", "--root", "/workspace"],
      timeout_seconds: 30,
      max_output_bytes: 4096,
      stdin,
    });
  const before = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  const truncated = await apply(frames(cut));
  assert.equal(truncated.exit_code, 3, truncated.stderr);
  assert.match(truncated.stderr, /the pushed stream ended after 1024 bytes, before the host's end marker; nothing was applied/);
  const lying = await apply(frames(cut, { end: true, digest: createHash("sha256").update(tar).digest() }));
  assert.equal(lying.exit_code, 3);
  assert.match(lying.stderr, /does not match the length and digest/);
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, before);
  const whole = await apply(frames(tar, { end: true }));
  assert.equal(whole.exit_code, 0, whole.stderr);
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: "cat /workspace/first.txt /workspace/second.txt" })).stdout, "first\nsecond\n");
});

async function zeroBomb(path: string, size: number): Promise<void> {
  async function* body() {
    const h = new Header({ path: "zeros", type: "File", size, mode: 0o644, mtime: new Date(1_700_000_000_000), uid: 0, gid: 0 });
    const block = Buffer.alloc(512);
    h.encode(block, 0);
    yield block;
    const mib = Buffer.alloc(1 << 20);
    for (let i = 0; i < size / mib.length; i++) yield mib;
    yield Buffer.alloc(1024);
  }
  await pipeline(Readable.from(body()), createGzip({ level: 9 }), createWriteStream(path));
}

test("a gzip bomb of zeros pushes in seconds, or stops at the content-byte limit with unsafe_archive", { timeout: 120_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const dir = tempDir(t);
  const bomb = join(dir, "zeros.tgz");
  const size = 256 * 2 ** 20;
  await zeroBomb(bomb, size);
  const task = await pyro.createTask({ environment: ENV });
  // This used to write 64 MB and then wait forever at no CPU (node-tar aborted at 1000:1 inflation
  // and the body being read never ended).
  const started = performance.now();
  const pushed = await pyro.pushTaskSync({ task_id: task.task_id, source_path: bomb });
  const ms = performance.now() - started;
  assert.equal(pushed.bytes, size);
  assert.ok(ms < 60_000, `the zero bomb took ${ms.toFixed(0)} ms`);
  t.diagnostic(`256 MiB of zeros from a ${readFileSync(bomb).length}-byte .tgz: ${ms.toFixed(0)} ms`);
  const check = await pyro.execTask({ task_id: task.task_id, command: "wc -c < /workspace/zeros; rm /workspace/zeros" });
  assert.equal(check.stdout.trim(), String(size));
  // Below the limit of a manager configured lower, the same archive is refused at its header, fast.
  const limited = new TaskManager({ stateDir, importLimits: { max_files: 100, max_bytes: 32 * 2 ** 20 } });
  const t0 = performance.now();
  const e = await failure(limited.push(task.task_id, { source_path: bomb }));
  assert.equal(e.code, "unsafe_archive");
  assert.match(e.message, /more than 33554432 bytes/);
  assert.ok(performance.now() - t0 < 10_000);
});

test("a push whose stream stops moving is stopped by the watchdog with a clear error, and nothing is applied", async (t) => {
  const { pyro } = testPyro(t);
  const src = tempDir(t);
  writeFileSync(join(src, "small.txt"), "small\n");
  const task = await pyro.createTask({ environment: ENV, source_path: src });
  writeFileSync(join(src, "big.bin"), randomBytes(4 * 2 ** 20));
  const before = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  const previous = process.env.PYRO_PUSH_STALL_SECONDS;
  process.env.PYRO_PUSH_STALL_SECONDS = "2";
  t.after(() => {
    if (previous === undefined) delete process.env.PYRO_PUSH_STALL_SECONDS;
    else process.env.PYRO_PUSH_STALL_SECONDS = previous;
  });
  const started = performance.now();
  // The guest stops reading its stdin after 100 kB (a wedged sandbox).
  const e = await failure(pyro.tasks.push(task.task_id, { source_path: src }, { env: { PYRO_RECEIVE_STALL_AFTER: "100000" } }));
  const ms = performance.now() - started;
  assert.equal(e.code, "sandbox_failed");
  assert.match(e.message, /made no progress for 2 s .*nothing was applied/);
  assert.ok(ms < 15_000, `the stall was noticed after ${ms.toFixed(0)} ms`);
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, before);
});

/** A task holding an old tree, a copy of that tree, and a new one that changes, adds, deletes and replaces a file with a directory. */
async function oldAndNew(t: TestContext, pyro: Pyro) {
  const oldSrc = tempDir(t);
  writeFileSync(join(oldSrc, "README"), "old\n");
  mkdirSync(join(oldSrc, "lib"));
  writeFileSync(join(oldSrc, "lib", "a"), "old-a\n");
  writeFileSync(join(oldSrc, "gone"), "old-gone\n");
  writeFileSync(join(oldSrc, "kind"), "old-file\n");
  const task = await pyro.createTask({ environment: ENV, source_path: oldSrc });
  const old = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
  const src = tempDir(t);
  writeFileSync(join(src, "README"), "new\n");
  mkdirSync(join(src, "lib"));
  writeFileSync(join(src, "lib", "a"), "new-a\n");
  writeFileSync(join(src, "lib", "b"), "new-b\n");
  mkdirSync(join(src, "kind"));
  writeFileSync(join(src, "kind", "inside"), "new-inside\n");
  mkdirSync(join(src, "fresh"));
  writeFileSync(join(src, "fresh", "f"), "new-f\n");
  return { task, src, oldSrc, old };
}

test("a push killed at any step of its apply leaves /workspace wholly old or wholly new", { timeout: 120_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const { task, src, oldSrc, old } = await oldAndNew(t, pyro);
  const ref = await oldAndNew(t, pyro);
  await pyro.pushTaskSync({ task_id: ref.task.task_id, source_path: ref.src, delete: true });
  const fresh = (await pyro.execTask({ task_id: ref.task.task_id, command: LISTING })).stdout;
  assert.notEqual(fresh, old);
  const seen: string[] = [];
  for (let step = 0; ; step++) {
    assert.ok(step < 60, "the apply never finished");
    try {
      await pyro.tasks.push(task.task_id, { source_path: src, delete: true }, { env: { PYRO_APPLY_EXIT_AFTER: String(step) } });
    } catch (e) {
      assert.ok(e instanceof PyroError);
      assert.match(e.message, new RegExp(`exiting at step ${step}`));
      const now = (await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout;
      assert.ok(now === old || now === fresh, `after a kill at step ${step} the workspace is mixed:\n${now}`);
      seen.push(now === old ? "old" : "new");
      // Back to the old tree for the next step.
      if (now === fresh) await pyro.pushTaskSync({ task_id: task.task_id, source_path: oldSrc, delete: true });
      assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, old);
      continue;
    }
    // No kill point left: the push went through.
    assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, fresh);
    break;
  }
  t.diagnostic(`kill points: ${seen.join(" ")}`);
  assert.ok(seen.includes("old") && seen.includes("new"), "kills both before and after the commit were tried");
  assert.equal(seen.indexOf("new"), seen.lastIndexOf("old") + 1, "every kill before the commit rolls back, every kill after it rolls forward");
});

test("a push killed with its host process, or with its sandbox, mid-apply is rolled back before the next operation", { timeout: 120_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const { task, src, old } = await oldAndNew(t, pyro);
  const journal = join(taskFilesRoot(stateDir, task.task_id), ".pyro-stage", "journal");
  const marker = join(stateDir, "tasks", task.task_id, "push.pending");

  // 1. The host process (another pyro) is killed -9 while its apply is halfway through.
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/push-child.ts"), stateDir, task.task_id, src, JSON.stringify({ PYRO_APPLY_PAUSE_AFTER: "3" })], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let childErr = "";
  child.stderr!.on("data", (c) => (childErr += c));
  await waitFor(() => existsSync(journal), 30_000, "the child's apply to write its journal");
  await new Promise((r) => setTimeout(r, 300));
  const mixed = (await execInSandbox(resolveDriver("namespace"), record(stateDir, task.task_id).sandbox as never, { command: ["/bin/sh", "-c", "cat /workspace/README"], timeout_seconds: 10, max_output_bytes: 4096 })).stdout;
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  assert.ok(existsSync(marker), `the killed push left its marker (${childErr})`);
  t.diagnostic(`README while the apply was held: ${mixed.trim()}`);
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, old);
  assert.ok(!existsSync(marker), "the next operation recovered and cleared the marker");

  // 2. The sandbox dies (kill -9 of its PID 1, the agent) while this process's apply is halfway through.
  const pushing = pyro.tasks.push(task.task_id, { source_path: src, delete: true }, { env: { PYRO_APPLY_PAUSE_AFTER: "4" } });
  await waitFor(() => existsSync(journal), 30_000, "the apply to write its journal");
  await new Promise((r) => setTimeout(r, 300));
  process.kill(record(stateDir, task.task_id).sandbox.process.pid, "SIGKILL");
  const e = await failure(pushing);
  assert.ok(["sandbox_failed", "cancelled"].includes(e.code), `${e.code}: ${e.message}`);
  assert.ok(existsSync(marker), "a push whose sandbox died cannot recover at once: the marker stays");
  for (let i = 0; i < 100 && (await pyro.statusTask({ task_id: task.task_id })).state !== "stopped"; i++) await new Promise((r) => setTimeout(r, 50));
  // The next exec boots a new sandbox over the same writable layer and rolls the push back first.
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: LISTING })).stdout, old);
  assert.ok(!existsSync(marker));
  await pyro.pushTaskSync({ task_id: task.task_id, source_path: src, delete: true });
  assert.match((await pyro.execTask({ task_id: task.task_id, command: "cat /workspace/README /workspace/kind/inside" })).stdout, /^new\nnew-inside\n$/);
});
