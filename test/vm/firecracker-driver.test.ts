// The firecracker driver on a real Firecracker under KVM, through the SDK
// and the CLI, with the real artifacts (Debian's cloud kernel, our
// initramfs, the environment's root image). It runs wherever the driver is
// available (KVM not ruled out, a firecracker binary of v1.8 or newer on
// PATH or in $PYRO_FIRECRACKER); elsewhere every test is skipped with the
// reason naming what is missing. On this project's CI machines that is both:
// no firecracker binary, and a PVM /dev/kvm. The driver's requests, its
// supervisor and its cleanup are proven there by test/unit/firecracker-api
// and test/integration/firecracker-standin.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { readlinkSync, statSync } from "node:fs";
import { release } from "node:os";
import { firecrackerNetworkCheck, firecrackerSupport } from "../../src/drivers/availability.js";
import { sandboxOwner } from "../../src/util/sandbox-user.js";
import { assertOutsideOnly, hostAddress, ncProbes, outsideAndLoopback } from "../helpers/outside.js";
import { hostProcesses } from "../helpers/crash.js";
import { runCli } from "../helpers/cli.js";
import { testPyro } from "../helpers/sandbox.js";

const support = firecrackerSupport();
const skip = !support.available && `the firecracker driver cannot run here: ${support.reason}`;
const network = firecrackerNetworkCheck(sandboxOwner());
const networkSkip = skip || (!network.ok && `firecracker VMs cannot have a network here: ${network.detail}`);
const ENV = "busybox";
const VM = { driver: "firecracker" as const };

/** Every process of the host whose argv names a path under `dir`: a supervisor or a firecracker left behind. */
function vmProcessesUnder(dir: string): string[] {
  return hostProcesses()
    .filter((p) => p.argv.some((a) => a.includes(`${dir}/`)))
    .map((p) => `${p.pid} ${p.argv.join(" ").slice(0, 160)}`);
}

test("a one-shot run on firecracker runs in the guest's own kernel under KVM; nothing outlives it", { skip, timeout: 180_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const r = await pyro.runInVm({ environment: ENV, command: ["sh", "-c", "uname -r; cat /proc/1/cmdline | tr '\\0' ' '; echo; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"], timeout_seconds: 60 });
  assert.equal(r.exit_code, 0, r.stderr);
  const [kernel, init, random] = r.stdout.trim().split("\n");
  assert.match(kernel!, /cloud-(amd64|arm64)$/, "Debian's cloud kernel");
  assert.notEqual(kernel, release(), "not the host's kernel");
  assert.match(init!, /^\/init/, "PID 1 of the guest is our agent");
  assert.match(random!, /^[0-9a-f]{32}$/);
  assert.deepEqual(r.isolation, { driver: "firecracker", kind: "microvm", accel: "kvm" });
  assert.equal(r.limits?.mechanism, "vm");
  assert.deepEqual(vmProcessesUnder(stateDir), [], "no supervisor or firecracker outlives its run");
});

test("a task on firecracker: seed, exec, its workspace on its own disk survives a kill -9 of firecracker", { skip, timeout: 300_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const task = await pyro.createTask({ environment: ENV });
  try {
    const w = await pyro.execTask({ task_id: task.task_id, command: "echo kept > /workspace/f && sync" });
    assert.equal(w.exit_code, 0, w.stderr);
    const status = await pyro.statusTask({ task_id: task.task_id });
    assert.equal(status.isolation?.driver, "firecracker");
    for (const p of hostProcesses().filter((p) => p.argv.some((a) => a.includes(`${stateDir}/`)) && p.argv[0]?.endsWith("firecracker"))) process.kill(p.pid, "SIGKILL");
    const r = await pyro.execTask({ task_id: task.task_id, command: "cat /workspace/f" });
    assert.equal(r.stdout, "kept\n");
  } finally {
    await pyro.deleteTask({ task_id: task.task_id });
  }
  assert.deepEqual(vmProcessesUnder(stateDir), []);
});

test("pyro run --driver firecracker prints the guest's kernel", { skip, timeout: 180_000 }, async () => {
  const r = await runCli(["run", "--driver", "firecracker", ENV, "--", "uname", "-r"], { PYRO_DAEMON: "0" });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /cloud-(amd64|arm64)\n$/);
  assert.notEqual(r.stdout.trim(), release());
});

/** Processes whose root directory is under `dir`: a jailed firecracker (its argv names no sandbox directory; its chroot does). */
function chrootedUnder(dir: string): number[] {
  return hostProcesses()
    .filter((p) => {
      try {
        return readlinkSync(`/proc/${p.pid}/root`).startsWith(`${dir}/`);
      } catch {
        return false;
      }
    })
    .map((p) => p.pid);
}

const jailerSkip = skip || (!support.jailer && `Firecracker's jailer is not in use here (${support.checks.find((c) => c.name === "jailer")?.detail ?? "no jailer check"}): set PYRO_JAILER to a jailer of firecracker's release, as root`);

test("under Firecracker's jailer: firecracker runs chrooted as the sandbox uid, in pid and network namespaces of its own; a task's disk persists through the chroot's link; nothing outlives it", { skip: jailerSkip, timeout: 300_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const task = await pyro.createTask({ environment: ENV });
  try {
    const w = await pyro.execTask({ task_id: task.task_id, command: "echo kept > /workspace/f && sync" });
    assert.equal(w.exit_code, 0, w.stderr);
    const [fc, ...more] = chrootedUnder(stateDir);
    assert.ok(fc && !more.length, "one firecracker, chrooted under the task's directory");
    assert.equal(statSync(`/proc/${fc}`).uid, sandboxOwner()!.uid, "as the sandbox uid");
    for (const ns of ["pid", "net", "mnt"]) assert.notEqual(readlinkSync(`/proc/${fc}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), `${ns} namespace of its own`);
    process.kill(fc!, "SIGKILL");
    const r = await pyro.execTask({ task_id: task.task_id, command: "cat /workspace/f" });
    assert.equal(r.stdout, "kept\n", "the disk the guest wrote through the chroot's hard link is the task's");
  } finally {
    await pyro.deleteTask({ task_id: task.task_id });
  }
  assert.deepEqual(chrootedUnder(stateDir), []);
  assert.deepEqual(vmProcessesUnder(stateDir), []);
});

test("pyro run --driver firecracker --network: the guest reaches the host's own address through its TAP and pasta, has its DNS, and not the host's loopback; nothing outlives it", { skip: networkSkip, timeout: 180_000 }, async (t: TestContext) => {
  const addr = hostAddress();
  if (!addr) return t.skip("this host has no non-loopback IPv4 address to stand in for the outside");
  const { stateDir } = testPyro(t, VM);
  const { outside, loopback } = await outsideAndLoopback(t, addr);
  const script = [...ncProbes(addr, outside.port, loopback.port), "cat /etc/resolv.conf"].join("; ");
  const r = await runCli(["run", "--driver", "firecracker", "--network", ENV, "--", "sh", "-c", script], { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" });
  assert.equal(r.code, 0, r.stderr);
  assertOutsideOnly(r.stdout);
  assert.match(r.stdout, /^nameserver 10\.0\.2\.3$/m);
  assert.deepEqual(vmProcessesUnder(stateDir), [], "no pasta, supervisor or firecracker outlives its run");
});
