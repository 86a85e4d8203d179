/**
 * The guest side of the VM drivers, on the real thing: pyro-agent as /init
 * of Debian's cloud kernel under QEMU (TCG), with virtio-blk disks and a
 * virtio-serial port, driven by the real AgentClient on qemu's socket
 * (test/helpers/vm-fixture.ts builds kernel, initramfs and disks).
 * docs/protocol.md, "VM boot" and "SYNC".
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createConnection } from "node:net";
import { mkdirSync, rmSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import type { AgentClient } from "../../src/agent/client.js";
import { FIXTURE_DIR, VM_MODULES, bootVm, buildFixture, buildInitramfs, connectVm, makeDataDisk, missingForVm, resumeVm, sh, snapshotVm, waitExit, type Fixture, type Vm } from "../helpers/vm-fixture.js";

const missing = missingForVm();
const skip = missing ? `cannot boot a VM here: ${missing}` : false;

let fx: Fixture;
const vms: Vm[] = [];
const clients: AgentClient[] = [];

before(() => {
  if (skip) return;
  fx = buildFixture(join(FIXTURE_DIR, `run-${process.pid}`));
});

after(async () => {
  for (const c of clients) c.close();
  for (const vm of vms) await vm.kill();
  if (fx) rmSync(fx.dir, { recursive: true, force: true });
});

function boot(opts: Parameters<typeof bootVm>[1]): Vm {
  const vm = bootVm(fx, opts);
  vms.push(vm);
  return vm;
}

async function connect(vm: Vm): Promise<AgentClient> {
  const c = await connectVm(vm);
  clients.push(c);
  return c;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

test("boots to HELLO_ACK and runs commands on the guest's kernel, with the namespace driver's view", { skip }, async () => {
  const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:64 pyro.hostname=guest-test pyro.shm_mib=16" });
  const c = await connect(vm);
  const uname = await sh(c, "uname -r");
  assert.equal(uname.code, 0);
  assert.equal(uname.out.trim(), fx.kernel.release, "the guest's kernel");
  assert.notEqual(uname.out.trim(), release(), "not the host's");
  assert.equal((await sh(c, "hostname")).out.trim(), "guest-test");

  // What a command gets is what it gets under the namespace driver: the
  // same capability list (guest/supervisor.c kept_caps), no_new_privs,
  // the seccomp filter, its own pid namespace, masked /proc.
  const status = (await sh(c, "cat /proc/self/status")).out;
  assert.match(status, /^CapEff:\s+00000000a80405fb$/m);
  assert.match(status, /^CapBnd:\s+00000000a80405fb$/m);
  assert.match(status, /^NoNewPrivs:\s+1$/m);
  assert.match(status, /^Seccomp:\s+2$/m);
  const view = await sh(c, "echo $$; ls /proc | grep -c '^[0-9]'; wc -c < /proc/kcore; echo x > /proc/sys/kernel/hostname && echo wrote-sysctl; mount -t tmpfs t /tmp && echo mounted; ls /sys/firmware | wc -l");
  const [pid, nprocs, kcore, ...rest] = view.out.trim().split("\n");
  assert.ok(Number(pid) <= 3, `the command is near PID 1 of its own namespace (pid ${pid})`);
  assert.ok(Number(nprocs) <= 4, `it sees only its own processes (${nprocs})`);
  assert.equal(kcore, "0", "/proc/kcore is masked");
  assert.deepEqual(rest, ["0"], `no sysctl write, no mount, empty /sys/firmware: ${view.out} ${view.err}`);
  // The layout: /workspace, a 1777 /tmp, the agent read-only at /run/pyro-agent, sized /dev/shm.
  const layout = await sh(c, "stat -c '%a %n' /tmp /workspace; /run/pyro-agent --version; echo > /run/pyro-agent || echo ro; df -k /dev/shm | tail -1");
  assert.match(layout.out, /^1777 \/tmp$/m);
  assert.match(layout.out, /^755 \/workspace$/m);
  assert.match(layout.out, /^pyro-agent /m);
  assert.match(layout.out, /^ro$/m);
  assert.match(layout.out, /\s16384\s/, "/dev/shm is 16 MiB (pyro.shm_mib)");
  assert.equal((await sh(c, "cat /proc/1/environ")).code !== 0, true, "the supervisor is not readable");
  // uid 0 of a VM holds a real CAP_MKNOD: a console or disk node it makes must not open
  // (the console is the host's log), while /dev's own nodes work.
  const nodes = await sh(c, "for p in /tmp/con /workspace/vda /dev/con2; do case $p in */vda) mknod $p b 254 0;; *) mknod $p c 5 1;; esac || echo no-mknod; ( : > $p ) 2>/dev/null && echo opened-$p; done; echo x > /dev/null && head -c 4 /dev/zero | wc -c");
  assert.doesNotMatch(nodes.out, /opened|no-mknod/, nodes.out + nodes.err);
  assert.equal(nodes.out.trim(), "4");
  await c.shutdown();
  assert.equal(await waitExit(vm, 20_000), 0, "SHUTDOWN powers the VM off and qemu exits 0");
  assert.match(vm.console(), /pyro-agent: powering off/);
});

test("SYNC sets a wrong clock right and reseeds the RNG; two VMs given different seeds differ", { skip }, async () => {
  // An RTC in 2001: the guest boots believing it.
  const a = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16", qemuArgs: ["-rtc", "base=2001-01-01T00:00:00"] });
  const b = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16", qemuArgs: ["-rtc", "base=2001-01-01T00:00:00"] });
  const [ca, cb] = await Promise.all([connect(a), connect(b)]);
  const before = Number((await sh(ca, "date +%s")).out);
  assert.ok(before < 1_100_000_000, `the guest starts in 2001 (${before})`);
  assert.deepEqual(await ca.sync({ seed: Buffer.alloc(32, 0xa5) }), { clock: true, rng: true });
  assert.deepEqual(await cb.sync({ seed: Buffer.alloc(32, 0x5a) }), { clock: true, rng: true });
  const after = Number((await sh(ca, "date +%s")).out);
  assert.ok(Math.abs(after - Date.now() / 1000) < 10, `the guest's clock is the host's after SYNC (${after} vs ${Date.now() / 1000})`);
  const ra = (await sh(ca, "head -c 16 /dev/urandom | od -An -tx1")).out.replace(/\s/g, "");
  const rb = (await sh(cb, "head -c 16 /dev/urandom | od -An -tx1")).out.replace(/\s/g, "");
  assert.equal(ra.length, 32);
  assert.notEqual(ra, rb);
  await Promise.all([ca.shutdown(), cb.shutdown()]);
  await Promise.all([waitExit(a, 20_000), waitExit(b, 20_000)]);
});

test("two VMs restored from one snapshot: a new host connects, SYNC reseeds each (their RNGs differ) and sets the stale clock right", { skip }, async () => {
  // The relay disconnects before a snapshot: the agent is waiting for a host.
  const src = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16", qmp: true, name: "snap-src" });
  const c = await connect(src);
  assert.equal((await sh(c, "echo warm")).out, "warm\n");
  c.close();
  await new Promise((r) => setTimeout(r, 300));
  const state = join(fx.dir, "snap.bin");
  await snapshotVm(src, state);
  // Time passes between the snapshot and its restores.
  await new Promise((r) => setTimeout(r, 3000));
  const restored: Vm[] = [];
  const clientsR: AgentClient[] = [];
  const helloMs: number[] = [];
  for (const name of ["snap-a", "snap-b"]) {
    const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16", qmp: true, name, incoming: state });
    await resumeVm(vm);
    clientsR.push(await connect(vm));
    helloMs.push(performance.now() - vm.startedAt);
    restored.push(vm);
  }
  console.log(`# restore to HELLO_ACK: ${helloMs.map((m) => m.toFixed(0)).join(", ")} ms`);
  const urandom = "head -c 16 /dev/urandom | od -An -tx1";
  const clockSkew = async (cl: AgentClient) => Number((await sh(cl, "date +%s")).out) - Date.now() / 1000;
  const before = await Promise.all(clientsR.map((cl) => sh(cl, urandom)));
  const skewBefore = await clockSkew(clientsR[0]!);
  // Informational: interrupt timing usually makes them differ already; what SYNC
  // guarantees is that they differ whatever the timing.
  console.log(`# before SYNC: the restored VMs' urandom ${before[0]!.out === before[1]!.out ? "was the same" : "differed"}; the clock was ${skewBefore.toFixed(1)} s off`);
  assert.ok(skewBefore < -2, `a restored VM's clock is stale before SYNC (${skewBefore.toFixed(1)} s)`);
  const seeds = [Buffer.alloc(32, 1), Buffer.alloc(32, 2)];
  assert.deepEqual(await clientsR[0]!.sync({ seed: seeds[0] }), { clock: true, rng: true });
  assert.deepEqual(await clientsR[1]!.sync({ seed: seeds[1] }), { clock: true, rng: true });
  const after = await Promise.all(clientsR.map((cl) => sh(cl, urandom)));
  assert.notEqual(after[0]!.out, after[1]!.out, "after SYNC the two restored VMs' RNGs differ");
  assert.ok(Math.abs(await clockSkew(clientsR[0]!)) < 3, "after SYNC the restored VM's clock is the host's");
  for (const cl of clientsR) await cl.shutdown();
  for (const vm of restored) assert.equal(await waitExit(vm, 20_000), 0);
});

test("a file under /workspace on the data disk survives SHUTDOWN, a second boot and a kill -9 of qemu; SHUTDOWN leaves the disk clean", { skip }, async () => {
  const disk = join(fx.dir, "data-persist.img");
  makeDataDisk(disk, 64);
  const first = boot({ append: "pyro.root=/dev/vda pyro.data=/dev/vdb", dataDisk: disk });
  const c1 = await connect(first);
  assert.equal((await sh(c1, "echo kept-$((6*7)) > /workspace/keep && mkdir -p /workspace/d && echo two > /workspace/d/f && sync")).code, 0);
  await c1.shutdown();
  assert.equal(await waitExit(first, 20_000), 0);
  assert.match(first.console(), /the data disk is clean/);
  const fsck = spawnSync("e2fsck", ["-fn", disk], { encoding: "utf8" });
  assert.equal(fsck.status, 0, `e2fsck says the disk is clean: ${fsck.stdout}${fsck.stderr}`);

  const second = boot({ append: "pyro.root=/dev/vda pyro.data=/dev/vdb", dataDisk: disk });
  const c2 = await connect(second);
  assert.equal((await sh(c2, "cat /workspace/keep /workspace/d/f")).out, "kept-42\ntwo\n");
  // A crash of qemu after the guest synced: ext4's journal brings the file back.
  assert.equal((await sh(c2, "echo after-crash > /workspace/crash && sync")).code, 0);
  second.proc.kill("SIGKILL");
  await second.exited;
  c2.close();
  const third = boot({ append: "pyro.root=/dev/vda pyro.data=/dev/vdb", dataDisk: disk });
  const c3 = await connect(third);
  assert.equal((await sh(c3, "cat /workspace/keep /workspace/crash")).out, "kept-42\nafter-crash\n");
  await c3.shutdown();
  assert.equal(await waitExit(third, 20_000), 0);
});

test("pyro.data=ram: gives a tmpfs layer of that size; pyro.pids_max caps the processes", { skip }, async () => {
  const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:8 pyro.pids_max=40" });
  const c = await connect(vm);
  assert.equal((await sh(c, "echo hi > /workspace/x && cat /workspace/x")).out, "hi\n");
  // 8 MiB: a 12 MiB file does not fit.
  const full = await sh(c, "dd if=/dev/zero of=/workspace/big bs=1M count=12 2>&1; echo rc=$?");
  assert.match(full.out, /No space left on device/);
  await sh(c, "rm /workspace/big");
  // A fork loop: the shell notes each attempt before it forks (echo is a
  // builtin) and dies at the first fork the pids cgroup refuses.
  await sh(c, "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo $i > /tmp/n; sleep 30 & done");
  const reached = Number((await sh(c, "cat /tmp/n; cat /proc/self/cgroup >&2")).out);
  assert.ok(reached > 10 && reached < 40, `pids.max 40 stopped the fork loop at attempt ${reached}`);
  await c.shutdown();
  await waitExit(vm, 20_000);
});

test("the host can disconnect and reconnect: the old connection's processes die, a fresh HELLO works", { skip }, async () => {
  // The idle port's backstop poll at 60 s: every host after a pause is brought in by the port's edge-triggered
  // wakeup alone (a restored VM's agent sees its new host the same way), within the 2 s asserted below.
  const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16 pyro.port_poll_ms=60000" });
  const c1 = await connect(vm);
  // A process that keeps writing a heartbeat while it lives.
  const beat = c1.exec({ argv: ["/bin/sh", "-c", "while :; do date +%s%N > /tmp/hb; sleep 0.05; done"], env: { PATH: "/bin" }, cwd: "/", timeoutMs: 0 });
  await beat.opened;
  await new Promise((r) => setTimeout(r, 300));
  c1.close(); // the host side hangs up (a relay restarting)
  void beat.result.catch(() => undefined);
  // Back at once (faster than the agent can see the hang-up) and after a pause, in turn.
  for (let round = 0; round < 6; round++) {
    if (round % 2 === 1) await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    const c2 = await connect(vm);
    const reconnectMs = performance.now() - t0;
    assert.ok(reconnectMs < 2000, `reconnected in ${reconnectMs.toFixed(0)} ms`);
    const hb = await sh(c2, "a=$(cat /tmp/hb); sleep 0.5; b=$(cat /tmp/hb); [ \"$a\" = \"$b\" ] && echo stopped || echo running");
    assert.equal(hb.out.trim(), "stopped", "the heartbeat of the dropped connection's process stopped");
    c2.close();
  }
  // A host that connects and sends nothing (as qemu's end is after a restore, before the vmm's HELLO lands): the
  // port turns writable, not readable, and that edge alone must bring it in (the backstop is 60 s away).
  await new Promise((r) => setTimeout(r, 300)); // the last host's hang-up seen
  const connected = () => (vm.console().match(/host connected on the serial port/g) ?? []).length;
  const seenBefore = connected();
  const silent = createConnection({ path: vm.socket });
  await new Promise((resolve, reject) => {
    silent.once("connect", resolve);
    silent.once("error", reject);
  });
  const t1 = performance.now();
  while (connected() === seenBefore && performance.now() - t1 < 5000) await new Promise((r) => setTimeout(r, 10));
  const silentMs = performance.now() - t1;
  assert.ok(connected() > seenBefore && silentMs < 2000, `a host that sent nothing was seen in ${silentMs.toFixed(0)} ms`);
  silent.destroy();
  // Its hang-up seen before the next host: one that never said HELLO leaves no connection a HELLO would be seen ending.
  await new Promise((r) => setTimeout(r, 300));
  const c3 = await connect(vm);
  assert.equal((await sh(c3, "echo still-here")).out, "still-here\n");
  await c3.shutdown();
  assert.equal(await waitExit(vm, 20_000), 0);
  // Each of the 9 hosts was seen either as a new connection after a hang-up or,
  // when it came back faster than the agent could see the hang-up, by its HELLO.
  const seen = vm.console().match(/host connected on the serial port|a new host said HELLO/g)?.length;
  assert.equal(seen, 9, vm.console());
});

test("a bad pyro.* value ends with one console line and qemu exiting", { skip }, async () => {
  const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16 pyro.pids_max=lots" });
  const t0 = performance.now();
  await waitExit(vm, 30_000);
  const ms = performance.now() - t0;
  assert.match(vm.console(), /pyro-agent: cannot start the VM: bad kernel command line: pyro\.pids_max must be an integer in 16\.\.4194304; powering off/);
  assert.doesNotMatch(vm.console(), /Kernel panic/);
  console.log(`# bad setting: qemu exited ${ms.toFixed(0)} ms after start`);
});

test("a missing root disk ends with a console line naming it, and qemu exiting", { skip }, async () => {
  const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16", noRootDisk: true });
  await waitExit(vm, 40_000);
  assert.match(vm.console(), /pyro-agent: cannot start the VM: the root disk \(pyro\.root\) \/dev\/vda did not appear within 5000 ms/);
});

test("a data disk that is not ext4 ends with a console line saying so, and qemu exiting", { skip }, async () => {
  const blank = join(fx.dir, "blank.img");
  spawnSync("truncate", ["-s", "16M", blank]);
  const vm = boot({ append: "pyro.root=/dev/vda pyro.data=/dev/vdb", dataDisk: blank });
  await waitExit(vm, 40_000);
  assert.match(vm.console(), /pyro-agent: cannot start the VM: mount the data disk \(must be ext4, made by the host with mkfs\.ext4, and writable\) \(\/dev\/vdb on \/mnt\/rw\): Invalid argument; powering off/);
});

test("pyro.vsock: the agent listens on vsock instead of the serial port", { skip }, async () => {
  // Connecting needs a vsock device, which this host cannot give a guest
  // (no vhost-vsock; Firecracker's vsock is tested with the firecracker
  // driver): this proves the modules load and the listener comes up.
  const initramfs = join(fx.dir, "initramfs-vsock.cpio");
  buildInitramfs(initramfs, fx.kernel, { modules: [...VM_MODULES, "vmw_vsock_virtio_transport"] });
  const vm = bootVm({ ...fx, initramfs }, { append: "pyro.root=/dev/vda pyro.data=ram:8 pyro.vsock=52" });
  vms.push(vm);
  const deadline = Date.now() + 30_000;
  while (!/pyro-agent: ready: serving on vsock port 52/.test(vm.console())) {
    assert.ok(Date.now() < deadline && vm.proc.exitCode === null, `no vsock listener; console:\n${vm.console()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.doesNotMatch(vm.console(), /virtio-serial/);
  await vm.kill();
});

test("measure: boot to HELLO_ACK (median of 5) and an `exec true` round trip", { skip }, async () => {
  const boots: number[] = [];
  for (let i = 0; i < 5; i++) {
    const vm = boot({ append: "pyro.root=/dev/vda pyro.data=ram:16" });
    const c = await connect(vm);
    boots.push(performance.now() - vm.startedAt);
    if (i === 4) {
      const rtts: number[] = [];
      for (let j = 0; j < 20; j++) {
        const t0 = performance.now();
        const r = await c.exec({ argv: ["true"], env: {}, cwd: "/", timeoutMs: 10_000 }).result;
        rtts.push(performance.now() - t0);
        assert.equal(r.kind, "exited");
      }
      console.log(`# exec true round trip: median ${median(rtts).toFixed(1)} ms, min ${Math.min(...rtts).toFixed(1)} ms (20 runs)`);
    }
    await c.shutdown();
    await waitExit(vm, 20_000);
  }
  console.log(`# boot to HELLO_ACK: median ${median(boots).toFixed(0)} ms of ${boots.map((b) => b.toFixed(0)).join(", ")}`);
});

// Keep the fixture dir's parent around (the kernel cache); only this run's dir goes.
mkdirSync(FIXTURE_DIR, { recursive: true });
