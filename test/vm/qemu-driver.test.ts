// The qemu driver through the runtime, the SDK and the CLI, on real QEMU
// under TCG with the real artifacts (Debian's cloud kernel, our initramfs):
// what a user gets from `--driver qemu`, and that nothing outlives it.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { chownSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync, existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { release, tmpdir } from "node:os";
import { lookup } from "node:dns/promises";
import { join } from "node:path";
import { findExecutable, qemuBinaryName } from "../../src/drivers/availability.js";
import { PyroError } from "../../src/index.js";
import { processesMentioning, testPyro } from "../helpers/sandbox.js";
import { hostProcesses, killPid, pausedPid, reapAndCheck, spawnPyro } from "../helpers/crash.js";
import { runCli } from "../helpers/cli.js";
import { hostAddress, outsideAndLoopback, serveLine } from "../helpers/outside.js";
import { startPasst } from "../../src/drivers/qemu/passt.js";
import { QemuDriver } from "../../src/drivers/qemu/driver.js";
import { sandboxOwner } from "../../src/util/sandbox-user.js";
import { agentBinaryPath } from "../../src/util/agent-binary.js";

const qemu = findExecutable(qemuBinaryName());
const skip = !qemu && `${qemuBinaryName()} is not installed (apt-get install qemu-system-x86)`;
const ENV = "busybox";
const VM = { driver: "qemu" as const };

/** Every process of the host whose argv names a path under `dir`: a VM supervisor or a qemu left behind. */
function vmProcessesUnder(dir: string): string[] {
  return hostProcesses()
    .filter((p) => p.argv.some((a) => a.includes(`${dir}/`)) && p.argv.some((a) => /qemu-system|pyro-agent$/.test(a) || a === "vmm"))
    .map((p) => `${p.pid} ${p.argv.join(" ").slice(0, 160)}`);
}

test("a one-shot run on qemu runs in the guest's own kernel and says so; nothing outlives it", { skip, timeout: 180_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const r = await pyro.runInVm({ environment: ENV, command: ["sh", "-c", "uname -r; cat /proc/1/cmdline | tr '\\0' ' '; echo; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"], timeout_seconds: 60 });
  assert.equal(r.exit_code, 0, r.stderr);
  const [kernel, init, random] = r.stdout.trim().split("\n");
  assert.match(kernel!, /cloud-(amd64|arm64)$/, "Debian's cloud kernel");
  assert.notEqual(kernel, release(), "not the host's kernel");
  assert.match(init!, /^\/init/, "PID 1 of the guest is our agent, the initramfs's /init");
  assert.match(random!, /^[0-9a-f]{32}$/);
  assert.deepEqual(r.isolation, { driver: "qemu", kind: "emulated-vm", accel: "tcg" }, "this host's KVM is unusable or absent: TCG, said honestly");
  assert.equal(r.limits?.mechanism, "vm");
  assert.equal(r.limits?.enforced_by.memory, "vm");
  // A second run is a different VM: its randomness is its own.
  const again = await pyro.runInVm({ environment: ENV, command: ["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"], timeout_seconds: 60 });
  assert.notEqual(again.stdout.trim(), random);
  assert.deepEqual(vmProcessesUnder(stateDir), [], "no supervisor or qemu outlives its run");
  assert.deepEqual((await pyro.listVms()).vms, []);
});

test("limits hold inside the VM: its RAM, its disk layer, its process cap", { skip, timeout: 180_000 }, async (t: TestContext) => {
  const { pyro } = testPyro(t, VM);
  const r = await pyro.runInVm({
    environment: ENV,
    mem_mib: 256,
    disk_mib: 64,
    command: ["sh", "-c", "grep MemTotal /proc/meminfo; df -m / | tail -1; dd if=/dev/zero of=/big bs=1M count=100 2>&1 | grep -o 'No space left on device'; ls -l /big"],
    timeout_seconds: 60,
  });
  assert.equal(r.exit_code, 0, r.stderr);
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(r.stdout)?.[1]);
  assert.ok(memKb > 150_000 && memKb <= 256 * 1024, `the guest has ~256 MiB (${memKb} kB)`);
  assert.match(r.stdout, /No space left on device/, "the 64 MiB RAM layer fills to ENOSPC");
  assert.equal(r.limits?.disk_mib, 64);
});

test("a task on qemu: seeded, exec, push, its workspace survives a kill -9 of qemu; delete leaves nothing", { skip, timeout: 300_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const src = mkdtempSync(join(tmpdir(), "pyro-qemu-src-"));
  t.after(() => rmSync(src, { recursive: true, force: true }));
  writeFileSync(join(src, "a.txt"), "from the host\n");
  const task = await pyro.createTask({ environment: ENV, source_path: src });
  assert.deepEqual(task.isolation, { driver: "qemu", kind: "emulated-vm", accel: "tcg" });
  let r = await pyro.execTask({ task_id: task.task_id, command: "cat a.txt && echo made > b.txt && uname -r" });
  assert.equal(r.exit_code, 0, r.stderr);
  assert.match(r.stdout, /^from the host\n.*cloud/s);

  writeFileSync(join(src, "a.txt"), "pushed\n");
  const pushed = await pyro.pushTaskSync({ task_id: task.task_id, source_path: src });
  assert.equal(pushed.task_id, task.task_id);
  r = await pyro.execTask({ task_id: task.task_id, command: "cat a.txt b.txt" });
  assert.equal(r.stdout, "pushed\nmade\n");

  const status = await pyro.statusTask({ task_id: task.task_id });
  assert.equal(status.workspace.bytes, null, "the host never walks a VM's own disk");
  assert.equal(status.limits?.enforced_by.disk, "ext4-image");

  // qemu dies under it: the next exec boots the task's VM again over the same disk.
  const qemus = hostProcesses().filter((p) => p.argv[0]?.includes("qemu-system") && p.argv.some((a) => a.includes(task.task_id)));
  assert.equal(qemus.length, 1, "one qemu runs the task");
  killPid(qemus[0]!.pid);
  // Its supervisor notices and exits (a user who execs in that instant gets a clear "the VMM was killed" error instead).
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", task.task_id, "record.json"), "utf8")) as { sandbox: { process: { pid: number } } };
  for (let i = 0; i < 100 && existsSync(`/proc/${record.sandbox.process.pid}`); i++) await new Promise((r) => setTimeout(r, 50));
  r = await pyro.execTask({ task_id: task.task_id, command: "cat a.txt b.txt" });
  assert.equal(r.exit_code, 0, r.stderr);
  assert.equal(r.stdout, "pushed\nmade\n", "the workspace is on the task's disk, not in the dead VM");

  await pyro.deleteTask({ task_id: task.task_id });
  assert.deepEqual(vmProcessesUnder(stateDir), []);
  assert.equal(existsSync(join(stateDir, "tasks", task.task_id)), false, "the task's directory (its disk with it) is gone");
});

function passtsUnder(dir: string): string[] {
  return hostProcesses().filter((p) => /(^|\/)passt(\.avx2)?$/.test(p.argv[0] ?? "") && p.argv.some((a) => a.includes(`${dir}/`))).map((p) => `${p.pid} ${p.argv.join(" ").slice(0, 200)}`);
}

test("the CLI: pyro run --driver qemu --network debian:12 reaches the host's own address through passt, has its DNS set, and not the host's loopback, booted cold and restored from a snapshot alike", { skip, timeout: 600_000 }, async (t: TestContext) => {
  const addr = hostAddress();
  if (!addr) return t.skip("this host has no non-loopback IPv4 address to stand in for the outside");
  if (!findExecutable("passt")) return t.skip("passt is not installed (apt-get install passt)");
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-qemu-net-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  const env = { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" };
  const pulled = await runCli(["env", "pull", "debian:12"], env);
  assert.equal(pulled.code, 0, pulled.stderr.slice(-2000));
  const { outside, loopback } = await outsideAndLoopback(t, addr);
  // The host's own resolver answers for deb.debian.org here (its archive is reachable): then so must the guest's, through passt's forwarder.
  const hostResolves = await lookup("deb.debian.org").then(() => true, () => false);
  const script = [
    // The test's servers answer a line, no HTTP: --http0.9 lets curl print it.
    `echo "outside=$(curl -s --http0.9 --max-time 10 http://${addr}:${outside.port}/ 2>/dev/null | head -n 1)"`,
    // The host's loopback, by every name a guest could use for it: its own 127.0.0.1 (the guest's), the gateway, the DNS forwarder.
    ...["127.0.0.1", "10.0.2.2", "10.0.2.3"].map((ip) => `echo "via ${ip}=$(curl -s --http0.9 --max-time 5 http://${ip}:${loopback.port}/ 2>/dev/null | head -n 1)"`),
    // debian:12 has no iproute2: the kernel's own tables say the address and the default route (gateway 10.0.2.2 is 0202000A).
    "grep -q '10.0.2.15' /proc/net/fib_trie && echo 'inet 10.0.2.15'",
    "awk '$2 == \"00000000\" { print \"default via \" $3 \" dev \" $1 }' /proc/net/route",
    "cat /etc/resolv.conf",
    `getent hosts deb.debian.org >/dev/null && echo resolved || echo unresolved`,
    // A restored VM has its template's hostname (the kernel command line is in the saved state); a cold one its id.
    `echo "hostname=$(hostname)"`,
  ].join("; ");
  // Cold, then through a snapshot: the first restoring run makes it and restores what it made.
  for (const snapshots of ["off", "on"]) {
    const r = await runCli(["run", "--driver", "qemu", "--network", "--timeout-seconds", "60", "debian:12", "--", "sh", "-c", script], { ...env, PYRO_QEMU_SNAPSHOTS: snapshots });
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    if (snapshots === "on") assert.match(r.stdout, /^hostname=pyro$/m, "restored from a snapshot (the template's hostname)");
    else assert.match(r.stdout, /^hostname=vm-[0-9a-f]+$/m, "booted cold (its own id)");
    assert.match(r.stdout, /^outside=from-outside$/m, r.stdout);
    assert.doesNotMatch(r.stdout, /from-host-loopback/, "the host's loopback is unreachable from the guest");
    for (const ip of ["127.0.0.1", "10.0.2.2", "10.0.2.3"]) assert.match(r.stdout, new RegExp(`^via ${ip.replace(/\./g, "\\.")}=$`, "m"));
    assert.match(r.stdout, /^inet 10\.0\.2\.15$/m);
    assert.match(r.stdout, /^default via 0202000A dev eth0$/m, "the default route is via 10.0.2.2");
    assert.match(r.stdout, /^nameserver 10\.0\.2\.3$/m, "resolv.conf names passt's DNS forwarder");
    if (hostResolves) assert.match(r.stdout, /^resolved$/m, "a name resolves through the forwarder");
    assert.match(r.stderr, /qemu VM, software-emulated \(tcg\)/);
    assert.deepEqual(passtsUnder(stateDir), [], "passt ended with its VM");
    assert.deepEqual(vmProcessesUnder(stateDir), []);
  }
});

test("a task with network on qemu: passt is the VM's, ends with each boot of it, and a delete leaves none", { skip, timeout: 300_000 }, async (t: TestContext) => {
  const addr = hostAddress();
  if (!addr) return t.skip("this host has no non-loopback IPv4 address to stand in for the outside");
  if (!findExecutable("passt")) return t.skip("passt is not installed (apt-get install passt)");
  const { pyro, stateDir } = testPyro(t, VM);
  const outside = await serveLine(addr, "from-outside\n");
  t.after(() => outside.close());
  const task = await pyro.createTask({ environment: ENV, network: true });
  t.after(() => pyro.deleteTask({ task_id: task.task_id }).catch(() => undefined));
  assert.equal((await pyro.statusTask({ task_id: task.task_id })).network, true);
  const reach = `timeout 10 nc ${addr} ${outside.port} </dev/null | head -n 1; cat /etc/resolv.conf`;
  let r = await pyro.execTask({ task_id: task.task_id, command: reach, timeout_seconds: 60 });
  assert.equal(r.exit_code, 0, r.stderr);
  assert.equal(r.stdout, "from-outside\nnameserver 10.0.2.3\n");
  assert.equal(passtsUnder(stateDir).length, 1, "one passt serves the task's VM");

  // qemu dies under it: its passt goes with it (one client, --one-off), and the next exec boots the VM with a new one.
  const qemus = hostProcesses().filter((p) => p.argv[0]?.includes("qemu-system") && p.argv.some((a) => a.includes(task.task_id)));
  assert.equal(qemus.length, 1);
  const before = passtsUnder(stateDir);
  killPid(qemus[0]!.pid);
  for (let i = 0; i < 100 && passtsUnder(stateDir).length; i++) await new Promise((res) => setTimeout(res, 50));
  assert.deepEqual(passtsUnder(stateDir), [], "passt exits when its qemu does");
  r = await pyro.execTask({ task_id: task.task_id, command: reach, timeout_seconds: 60 });
  assert.equal(r.exit_code, 0, r.stderr);
  assert.equal(r.stdout, "from-outside\nnameserver 10.0.2.3\n", "the rebooted VM has its network again");
  assert.notDeepEqual(passtsUnder(stateDir), before, "a new passt for the new boot");

  await pyro.deleteTask({ task_id: task.task_id });
  assert.deepEqual(passtsUnder(stateDir), []);
  assert.deepEqual(vmProcessesUnder(stateDir), []);
});

test("a passt no note names (pyro killed between its spawn and the note) is found by its argv and ended by cleanupDir", { skip: !findExecutable("passt") && "passt is not installed (apt-get install passt)", timeout: 60_000 }, async (t: TestContext) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-passt-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const runDir = join(dir, "vm", "run");
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const owner = sandboxOwner();
  if (owner) chownSync(runDir, owner.uid, owner.gid);
  const { identity, peer } = startPasst(runDir, join(dir, "passt.log"), owner ? { agent: agentBinaryPath(), owner } : null, () => undefined);
  t.after(() => {
    peer.destroy();
    try {
      process.kill(identity.pid, "SIGKILL");
    } catch {
      /* gone */
    }
  });
  for (let i = 0; i < 100 && !existsSync(join(runDir, "passt.pid")); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(existsSync(`/proc/${identity.pid}`), `passt runs: ${readFileSync(join(dir, "passt.log"), "utf8").slice(-300)}`);
  assert.ok(hostProcesses().some((p) => p.pid === identity.pid && p.argv.some((a) => a.includes(`${dir}/`))), "its argv names the sandbox's directory");
  await new QemuDriver().cleanupDir(dir);
  for (let i = 0; i < 100 && existsSync(`/proc/${identity.pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${identity.pid}/status`, "utf8")); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(!existsSync(`/proc/${identity.pid}`) || /^State:\s+Z/m.test(readFileSync(`/proc/${identity.pid}/status`, "utf8")), "cleanupDir killed it");
});

test("a command that exhausts the guest's memory is reported as killed by the OOM killer, and the VM goes on", { skip, timeout: 240_000 }, async (t: TestContext) => {
  const { pyro } = testPyro(t, VM);
  const task = await pyro.createTask({ environment: ENV, mem_mib: 128 });
  t.after(() => pyro.deleteTask({ task_id: task.task_id }).catch(() => undefined));
  const calm = await pyro.execTask({ task_id: task.task_id, command: "echo calm", timeout_seconds: 60 });
  assert.equal(calm.oom_killed, false, "an ordinary command is not an OOM kill");
  // Three dd each hold a 45 MiB buffer they filled (blocked writing it to a pipe nobody reads): past what a
  // 128 MiB guest has free, so the guest kernel's OOM killer ends one. (One big allocation would just fail:
  // the kernel's overcommit heuristic refuses a malloc larger than the RAM, and the command sees ENOMEM.)
  const hog = await pyro.execTask({ task_id: task.task_id, command: "for i in 1 2 3; do dd if=/dev/zero bs=45M count=1 2>/dev/null | sleep 4 & done; wait", timeout_seconds: 120 });
  assert.equal(hog.oom_killed, true, `the guest's OOM kill is reported: ${JSON.stringify(hog).slice(0, 400)}`);
  const after = await pyro.execTask({ task_id: task.task_id, command: "echo alive", timeout_seconds: 60 });
  assert.equal(after.exit_code, 0, after.stderr);
  assert.equal(after.stdout, "alive\n");
  assert.equal(after.oom_killed, false, "the next command is not blamed for the last one's OOM");
});

test("kill -9 of the CLI while its VM boots: a reap leaves no supervisor, qemu, cgroup or record", { skip, timeout: 180_000 }, async (t: TestContext) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-qemu-crash-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  for (const point of ["boot:spawned", "boot:info"]) {
    const s = spawnPyro(["run", "--driver", "qemu", ENV, "--", "true"], { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0", PYRO_TEST_PAUSE_AT: point });
    const pid = await pausedPid(s, 120_000);
    assert.ok(pid, `the run paused at ${point}: ${s.stderr().slice(-500)}`);
    killPid(pid);
    await s.exited;
    const { problems } = await reapAndCheck(stateDir);
    assert.deepEqual(problems, [], `after a kill at ${point}`);
    // The supervisor dies with its parent (one-shot runs): the reap need not even find it.
    assert.deepEqual(vmProcessesUnder(stateDir), [], `after a kill at ${point}`);
  }
});

test("kill -9 of the CLI while a VM with network restores (its passt spawned, the restore's jail spawned, the VM ready): a reap leaves no passt, supervisor, qemu, cgroup or record", { skip: skip || (!findExecutable("passt") && "passt is not installed (apt-get install passt)"), timeout: 300_000 }, async (t: TestContext) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-qemu-netcrash-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  // Makes (or finds) the snapshot of this shape, so each killed run below is a restore: the maker restores what it made.
  const warm = await runCli(["run", "--driver", "qemu", "--network", ENV, "--", "hostname"], { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" });
  assert.equal(warm.code, 0, warm.stderr.slice(-1000));
  assert.equal(warm.stdout.trim(), "pyro", "a restored VM (the template's hostname)");
  for (const point of ["passt:spawned", "boot:spawned", "boot:info"]) {
    const s = spawnPyro(["run", "--driver", "qemu", "--network", ENV, "--", "true"], { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0", PYRO_TEST_PAUSE_AT: point });
    const pid = await pausedPid(s, 120_000);
    assert.ok(pid, `the run paused at ${point}: ${s.stderr().slice(-500)}`);
    if (point === "boot:info") assert.equal(passtsUnder(stateDir).length, 1, "its passt runs beside the VM");
    killPid(pid);
    await s.exited;
    const { problems } = await reapAndCheck(stateDir);
    assert.deepEqual(problems, [], `after a kill at ${point}`);
    // The supervisor dies with its parent; passt, which does not, is ended by the reap (its notes or its argv).
    for (let i = 0; i < 100 && passtsUnder(stateDir).length; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(passtsUnder(stateDir), [], `no passt after a kill at ${point}`);
    assert.deepEqual(vmProcessesUnder(stateDir), [], `after a kill at ${point}`);
  }
});

test("the CLI: pyro run --driver qemu busybox -- uname -r prints the guest's kernel", { skip, timeout: 180_000 }, async (t: TestContext) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-qemu-cli-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  const r = await runCli(["run", "--driver", "qemu", ENV, "--", "uname", "-r"], { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /cloud-(amd64|arm64)\n$/);
  assert.notEqual(r.stdout.trim(), release());
  assert.match(r.stderr, /qemu VM, software-emulated \(tcg\)/);
});

test("what a guest has of the host: no network device, qemu as the sandbox uid under its own seccomp filter", { skip, timeout: 180_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const vm = await pyro.createTask({ environment: ENV });
  t.after(() => pyro.deleteTask({ task_id: vm.task_id }).catch(() => undefined));
  const r = await pyro.execTask({
    task_id: vm.task_id,
    // Only loopback. (The console's cap is tried by test/vm/vmm-qemu.test.ts, with a guest that floods it.)
    command: ["sh", "-c", "ls /sys/class/net; echo done"],
    timeout_seconds: 120,
  });
  assert.equal(r.exit_code, 0, r.stderr);
  assert.equal(r.stdout, "lo\ndone\n", "the guest has no network device but loopback");
  const qemus = hostProcesses().filter((p) => p.argv[0]?.includes("qemu-system") && p.argv.some((a) => a.includes(vm.task_id)));
  assert.equal(qemus.length, 1, `one qemu for ${vm.task_id}: ${hostProcesses().filter((p) => p.argv[0]?.includes("qemu")).map((p) => p.argv.join(" ").slice(0, 300)).join("\n")}`);
  const status = readFileSync(`/proc/${qemus[0]!.pid}/status`, "utf8");
  const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
  if (process.getuid?.() === 0) assert.ok(uid > 0, `qemu runs as the sandbox uid, not root (uid ${uid})`);
  else assert.equal(uid, process.getuid?.());
  assert.equal(/^Seccomp:\s+(\d)/m.exec(status)?.[1], "2", "qemu runs under its seccomp filter");
  assert.equal(/^NoNewPrivs:\s+(\d)/m.exec(status)?.[1], "1");
  assert.ok(statSync(join(stateDir, "tasks", vm.task_id, "sandbox", "vm", "console.log")).size > 0, "the console is captured");
});

test("each qemu is jailed: its own pid, network, mount and user namespaces; its uid owns only its sockets' directory", { skip, timeout: 240_000 }, async (t: TestContext) => {
  const { pyro, stateDir } = testPyro(t, VM);
  const a = await pyro.createTask({ environment: ENV });
  const b = await pyro.createTask({ environment: ENV });
  t.after(async () => {
    for (const x of [a, b]) await pyro.deleteTask({ task_id: x.task_id }).catch(() => undefined);
  });
  const qemuOf = (id: string) => {
    const found = hostProcesses().filter((p) => p.argv[0]?.includes("qemu-system") && p.argv.some((x) => x.includes(id)));
    assert.equal(found.length, 1, `one qemu for ${id}`);
    return found[0]!.pid;
  };
  const ns = (pid: number, kind: string) => readlinkSync(`/proc/${pid}/ns/${kind}`);
  const [qa, qb] = [qemuOf(a.task_id), qemuOf(b.task_id)];
  for (const kind of ["pid", "net", "mnt", "user", "ipc"]) {
    assert.notEqual(ns(qa, kind), ns(process.pid, kind), `qemu is not in the host's ${kind} namespace`);
    assert.notEqual(ns(qa, kind), ns(qb, kind), `two VMs do not share a ${kind} namespace`);
  }
  // In its pid namespace qemu sees its supervisor (PID 1) and itself: no other VM, no host process to ptrace or signal.
  const nspid = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${qa}/status`, "utf8"))![1]!.trim().split(/\s+/);
  assert.equal(nspid.length, 2, "one level of pid namespace below the host's");
  assert.equal(nspid[1], "2", "qemu is PID 2 of its jail, under the supervisor");

  // What the VM's uid may write on the host: its sockets' directory, its disk and its console by descriptor; no name in vm/.
  const vmDir = join(stateDir, "tasks", a.task_id, "sandbox", "vm");
  const st = statSync(vmDir);
  assert.equal(st.uid, process.getuid?.(), "vm/ is pyro's");
  assert.equal(st.mode & 0o022, 0, "and nobody else may write it");
  if (process.getuid?.() === 0) {
    const vmUid = statSync(join(vmDir, "run")).uid;
    assert.ok(vmUid > 0);
    for (const f of ["disk.img", "console.log"]) assert.equal(statSync(join(vmDir, f)).uid, vmUid);
    const plant = spawnSync("setpriv", [`--reuid=${vmUid}`, `--regid=${vmUid}`, "--clear-groups", "--", "sh", "-c", `ln -s /etc/passwd ${vmDir}/disk.img.tmp-1 || mkdir ${vmDir}/disk.img.tmp-2; mv ${vmDir}/disk.img ${vmDir}/x`], { encoding: "utf8" });
    assert.notEqual(plant.status, 0, "the VM's uid can plant no link or directory in vm/, nor move its disk");
    assert.match(plant.stderr, /Permission denied/);
    assert.equal(existsSync(join(vmDir, "disk.img.tmp-1")) || existsSync(join(vmDir, "disk.img.tmp-2")), false);
  }
});

test("a guest with network cannot reach the host's loopback with frames it writes itself (passt connects to what a frame names)", { skip, timeout: 300_000 }, async (t: TestContext) => {
  if (!findExecutable("passt")) return t.skip("passt is not installed (apt-get install passt)");
  const dir = mkdtempSync(join(tmpdir(), "pyro-rawnet-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const root = new URL("../..", import.meta.url).pathname;
  const cc = spawnSync("gcc", ["-static", "-O1", "-o", join(dir, "attack"), join(root, "test/security/attack.c")], { encoding: "utf8" });
  if (cc.status !== 0) return t.skip(`cannot build the static attack helper (gcc, libc6-dev): ${cc.stderr || cc.error?.message}`);
  const { pyro } = testPyro(t, VM);
  const loopback = await serveLine("127.0.0.1", "from-host-loopback\n");
  t.after(() => loopback.close());
  let reached = 0;
  loopback.on("connection", (s) => (reached++, s.on("error", () => undefined)));
  const task = await pyro.createTask({ environment: ENV, network: true, source_path: dir });
  t.after(() => pyro.deleteTask({ task_id: task.task_id }).catch(() => undefined));
  const A = "/workspace/attack";
  const r = await pyro.execTask({ task_id: task.task_id, command: `${A} raw-loopback 127.0.0.1 ${loopback.port}; ${A} raw-loopback 0.0.0.0 ${loopback.port}; ${A} raw-ip`, timeout_seconds: 90 });
  assert.doesNotMatch(r.stdout, /ESCAPED/, r.stdout + r.stderr);
  assert.equal(r.stdout.match(/^blocked:/gm)?.length, 3, r.stdout + r.stderr);
  assert.equal(reached, 0, "no connection reached the host's loopback service");
});
