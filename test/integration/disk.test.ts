/**
 * disk_mib, the size of a sandbox's writable layer, on the ordinary paths:
 * a one-shot run's tmpfs, a task's ext4 image as root (loop-mounted in the
 * launcher's namespace: kill -9 and delete leave no loop device and no
 * mount), the quota pyro checks where the kernel cannot keep it, and the
 * cap on the sandbox's log on the host. The attacks on it (fill the disk,
 * a neighbour unaffected) are in test/security/suite.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PyroError } from "../../src/index.js";
import { LIMITS } from "../../src/core/defaults.js";
import { ensureDataDisk } from "../../src/drivers/vm/files.js";
import { identityOf, waitForExit } from "../../src/util/proc.js";
import { loopDevicesUnder, mountsUnder, settledLeftovers, testPyro } from "../helpers/sandbox.js";

const ENV = "busybox";
const isRoot = process.getuid?.() === 0;
const rootOnly = isRoot ? false : "needs root: the ext4 image layer is loop-mounted by pyro-agent launch, which runs as root";

/** The size `df -k` reports for a path inside the sandbox, in MiB. */
function dfMib(stdout: string): number {
  const fields = stdout.trim().split("\n").pop()!.trim().split(/\s+/);
  return Number(fields[1]) / 1024;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected a PyroError, got ${e}`);
    return e.code;
  }
}

test("disk_mib out of bounds is refused, naming the argument", async (t) => {
  const { pyro } = testPyro(t);
  for (const disk_mib of [63, 0, 1.5, 2_000_000]) {
    assert.equal(await codeOf(pyro.createTask({ environment: ENV, disk_mib })), "invalid_argument", `task disk_mib ${disk_mib}`);
    assert.equal(await codeOf(pyro.runInVm({ environment: ENV, command: "true", disk_mib })), "invalid_argument", `run disk_mib ${disk_mib}`);
  }
  try {
    await pyro.createTask({ environment: ENV, disk_mib: 10 });
    assert.fail("created");
  } catch (e) {
    assert.match((e as Error).message, /disk_mib/);
  }
});

test("a one-shot run's layer is a tmpfs of disk_mib: df shows it, a write past it is ENOSPC, the result says so", async (t) => {
  const { pyro } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, disk_mib: 96, command: "df -k / | tail -1; dd if=/dev/zero of=/fill bs=1M count=200 2>&1", timeout_seconds: 60 });
  const size = dfMib(r.stdout.split("\n")[0]!);
  assert.ok(size > 90 && size <= 96, `df / shows ${size} MiB: ${r.stdout}`);
  assert.match(r.stdout, /No space left/);
  assert.equal(r.limits?.disk_mib, 96);
  assert.equal(r.limits?.enforced_by.disk, "tmpfs");
  assert.match(r.limits?.note ?? "", /disk 96 MiB by a tmpfs/);
  // The default, for a run.
  const d = await pyro.runInVm({ environment: ENV, command: "df -k / | tail -1" });
  assert.equal(d.limits?.disk_mib, 2048);
  const dsize = dfMib(d.stdout);
  assert.ok(dsize > 2000 && dsize <= 2048, `df / shows ${dsize} MiB by default`);
});

test("a task's layer is an ext4 image of disk_mib: status says so, files survive a kill -9 of the sandbox, delete leaves no image, loop device or mount", { skip: rootOnly, timeout: 120_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task = await pyro.createTask({ environment: ENV, disk_mib: 128 });
  assert.equal(task.disk_mib, 128);
  assert.equal(task.limits?.disk_mib, 128);
  assert.equal(task.limits?.enforced_by.disk, "ext4-image");
  assert.match(task.limits?.note ?? "", /disk 128 MiB by an ext4 image/);
  const dir = join(stateDir, "tasks", task.task_id, "sandbox");
  const image = join(dir, "disk.img");
  assert.equal(statSync(image).size, 128 * 1024 * 1024);
  assert.equal(statSync(image).mode & 0o777, 0o600, "the image is root's alone");
  assert.ok(statSync(image).blocks * 512 < 16 * 1024 * 1024, `the image is sparse (${statSync(image).blocks * 512} bytes on disk)`);
  assert.equal(loopDevicesUnder(stateDir).length, 1, "one loop device while the sandbox runs");
  assert.deepEqual(mountsUnder(stateDir), [], "the image is mounted in the sandbox's namespaces only");

  const df = await pyro.execTask({ task_id: task.task_id, command: "df -k /workspace | tail -1; echo kept > /workspace/file" });
  const size = dfMib(df.stdout);
  assert.ok(size > 100 && size <= 128, `df /workspace shows ${size} MiB, not the host's disk: ${df.stdout}`);
  const status = await pyro.statusTask({ task_id: task.task_id });
  assert.equal(status.workspace.files, 1, "status walks the workspace through the running sandbox");
  assert.equal(status.workspace.bytes, 5);

  // kill -9 of the sandbox: its mount and loop device go with it; the next exec boots over the same image.
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", task.task_id, "record.json"), "utf8"));
  process.kill(record.sandbox.process.pid, "SIGKILL");
  await waitForExit(identityOf(record.sandbox.process.pid) ?? record.sandbox.process, 5_000);
  const until = Date.now() + 5_000;
  while (loopDevicesUnder(stateDir).length && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(loopDevicesUnder(stateDir), [], "kill -9 of the sandbox leaves no loop device");
  const stopped = await pyro.statusTask({ task_id: task.task_id });
  assert.equal(stopped.state, "stopped");
  assert.equal(stopped.workspace.files, 1, "a stopped task shows what was last seen");
  const again = await pyro.execTask({ task_id: task.task_id, command: "cat /workspace/file" });
  assert.equal(again.stdout, "kept\n");

  await pyro.deleteTask({ task_id: task.task_id });
  assert.deepEqual(loopDevicesUnder(stateDir), [], "delete returns with the loop device gone");
  assert.deepEqual(mountsUnder(stateDir), []);
  const left = await settledLeftovers(stateDir);
  assert.deepEqual(left, { processes: [], dirs: [], cgroups: [] });
  assert.ok(!existsSync(image));
});

test("a persistent VM's layer is an ext4 image too; the default disk_mib is 8192 for tasks and VMs", { skip: rootOnly, timeout: 60_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const vm = await pyro.createVm({ environment: ENV });
  assert.equal(vm.disk_mib, 8192);
  const started = await pyro.startVm({ vm_id: vm.vm_id });
  assert.equal(started.limits?.enforced_by.disk, "ext4-image");
  assert.equal(started.limits?.disk_mib, 8192);
  const image = join(stateDir, "vms", vm.vm_id, "sandbox", "disk.img");
  assert.ok(statSync(image).blocks * 512 < 32 * 1024 * 1024, "an 8 GiB image takes a few MiB of the host's disk");
  await pyro.deleteVm({ vm_id: vm.vm_id });
  assert.deepEqual(loopDevicesUnder(stateDir), []);
});

/** MiB free for pyro on the file system holding dir. */
function freeMib(dir: string): number {
  const st = statfsSync(dir);
  return Math.floor((Number(st.bavail) * Number(st.bsize)) / (1024 * 1024));
}

// The image is sparse: a disk_mib past the host's free space let the sandbox fill the host's disk before its own.
test("a task's disk image larger than the host's free space is refused at create, saying how much is free; nothing is left", { skip: rootOnly, timeout: 60_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const disk_mib = freeMib(stateDir) + 1024;
  if (disk_mib > LIMITS.disk_mib.max) return t.skip(`this host has more than ${LIMITS.disk_mib.max} MiB free: no disk_mib is past it`);
  let error: unknown = null;
  try {
    const task = await pyro.createTask({ environment: ENV, disk_mib });
    const df = await pyro.execTask({ task_id: task.task_id, command: "df -m /workspace | tail -1" });
    await pyro.deleteTask({ task_id: task.task_id });
    assert.fail(`a ${disk_mib} MiB task was made where ${disk_mib - 1024} MiB are free: ${df.stdout.trim()}`);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PyroError, String(error));
  assert.equal(error.code, "insufficient_disk", error.message);
  assert.match(error.message, new RegExp(`disk_mib ${disk_mib} is more than the \\d+ MiB free`));
  assert.deepEqual((await pyro.listTasks()).tasks, []);
  assert.deepEqual(loopDevicesUnder(stateDir), []);
});

test("a VM's data disk larger than the host's free space is refused before mkfs makes it", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-disk-room-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const disk_mib = freeMib(dir) + 1024;
  if (disk_mib > LIMITS.disk_mib.max) return t.skip(`this host has more than ${LIMITS.disk_mib.max} MiB free: no disk_mib is past it`);
  const disk = join(dir, "disk.img");
  assert.throws(() => ensureDataDisk(disk, disk_mib, null), (e: unknown) => e instanceof PyroError && e.code === "insufficient_disk");
  assert.ok(!existsSync(disk), "no disk was made");
  ensureDataDisk(disk, 64, null);
  assert.ok(existsSync(disk), "a disk that fits is made");
});

test("the sandbox's log on the host is capped: RLIMIT_FSIZE of 1 MiB on its init, and a full log is rotated on the next boot", { timeout: 60_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task = await pyro.createTask({ environment: ENV });
  const recordPath = join(stateDir, "tasks", task.task_id, "record.json");
  const pid = JSON.parse(readFileSync(recordPath, "utf8")).sandbox.process.pid as number;
  const limits = readFileSync(`/proc/${pid}/limits`, "utf8");
  assert.match(limits, /^Max file size\s+1048576\s+\S+\s+bytes/m, limits);
  // A log that reached the cap is kept as sandbox.log.1 when the sandbox boots again, and a new one begins.
  const log = join(stateDir, "tasks", task.task_id, "sandbox", "sandbox.log");
  writeFileSync(log, Buffer.alloc(1024 * 1024, "x"));
  process.kill(pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 200));
  await pyro.execTask({ task_id: task.task_id, command: "true" });
  assert.equal(statSync(`${log}.1`).size, 1024 * 1024);
  assert.ok(statSync(log).size < 4096, "the new log starts empty");
});
