import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { PyroError } from "../../src/index.js";
import { driverNamed } from "../../src/drivers/index.js";
import { removalsDone } from "../../src/runtime/store.js";
import { leftovers, settledLeftovers, testPyro } from "../helpers/sandbox.js";
import { hostAddress, outsideAndLoopback } from "../helpers/outside.js";

/** The parity run (test/vm/parity.test.ts) runs this file on qemu; tests of the namespace driver itself, or of what VMs lack, are skipped there. */
const onlyNamespace = process.env.PYRO_DRIVER === "qemu" && "tests the namespace driver itself, or what VMs do not have in this release";

const ENV = "busybox";

async function expectCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof PyroError, `expected PyroError, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    return true;
  });
}

test("runInVm runs a command in a namespace sandbox and leaves nothing behind", { skip: onlyNamespace }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, command: "echo hello; echo oops >&2; exit 3" });
  assert.equal(r.stdout, "hello\n");
  assert.equal(r.stderr, "oops\n");
  assert.equal(r.exit_code, 3);
  assert.equal(r.timed_out, false);
  assert.equal(r.signal, null);
  assert.deepEqual(r.isolation, { driver: "namespace", kind: "namespace", accel: null });
  assert.ok(r.duration_ms >= 0);
  assert.deepEqual(await settledLeftovers(stateDir, r.vm_id ? [r.vm_id] : []), { processes: [], dirs: [], cgroups: [] });
});

test("argv commands run without a shell; string commands run through /bin/sh -lc", async (t) => {
  const { pyro } = testPyro(t);
  const argv = await pyro.runInVm({ environment: ENV, command: ["echo", "$HOME", "a b"] });
  assert.equal(argv.stdout, "$HOME a b\n");
  const shell = await pyro.runInVm({ environment: ENV, command: "echo $HOME" });
  assert.equal(shell.stdout, "/root\n");
  const missing = await pyro.runInVm({ environment: ENV, command: ["/no/such/program"] });
  assert.equal(missing.exit_code, 127);
  assert.equal(missing.exec_error, "cannot execute '/no/such/program': No such file or directory");
  assert.equal(missing.stderr, "", "pyro's report is not the command's output");
});

test("a signal death is reported as 128+n with the signal's name", async (t) => {
  const { pyro } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, command: "kill -TERM $$" });
  assert.equal(r.exit_code, 143);
  assert.equal(r.signal, "SIGTERM");
});

test("a timeout kills the whole tree, setsid daemons included, with exit code 124", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const started = Date.now();
  const r = await pyro.runInVm({
    environment: ENV,
    command: "setsid sh -c 'sleep 1000' & (sleep 1000 &) ; echo started; sleep 1000",
    timeout_seconds: 1,
  });
  assert.equal(r.exit_code, 124);
  assert.equal(r.timed_out, true);
  assert.equal(r.stdout, "started\n");
  assert.ok(Date.now() - started < 8000, `took ${Date.now() - started} ms`);
  assert.deepEqual((await settledLeftovers(stateDir)).processes, []);
});

test("output is capped keeping head and tail; non-UTF-8 bytes come back safely", async (t) => {
  const { pyro } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, command: "seq 1 100000", max_output_bytes: 2048 });
  assert.equal(r.stdout_truncated, true);
  assert.ok(r.stdout.startsWith("1\n2\n3\n"));
  assert.ok(r.stdout.endsWith("99999\n100000\n"));
  assert.match(r.stdout, /\[\.\.\. pyro: \d+ bytes omitted \.\.\.\]/);
  assert.ok(Buffer.byteLength(r.stdout) < 2200);
  const bytes = await pyro.runInVm({ environment: ENV, command: "printf 'a\\377\\376b'" });
  assert.equal(bytes.stdout, "a\uFFFD\uFFFDb");
});

test("stdin is passed through to the command", async (t) => {
  const { pyro } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, command: "cat; echo done" }, { stdin: Buffer.from("from host\n") });
  assert.equal(r.stdout, "from host\ndone\n");
});

test("the memory limit kills a process that allocates past it, and the result says so", { skip: onlyNamespace }, async (t) => {
  const { pyro } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, mem_mib: 64, command: "dd if=/dev/zero of=/dev/null bs=256M count=1" });
  assert.equal(r.oom_killed, true, JSON.stringify(r));
  assert.equal(r.exit_code, 137);
  assert.equal(r.signal, "SIGKILL");
  const ok = await pyro.runInVm({ environment: ENV, mem_mib: 256, command: "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo ok" });
  assert.equal(ok.stdout, "ok\n");
  assert.equal(ok.oom_killed, false);
});

test("the pids limit caps the processes of a sandbox, and a fork bomb leaves the host unharmed", async (t) => {
  const { pyro } = testPyro(t);
  // 1100 sleepers against a limit of 1024: the inner shell dies when a fork fails. What follows uses
  // builtins only (no pid is left for anything else); the sleepers die with the exec.
  const capped = await pyro.runInVm({
    environment: ENV,
    command:
      "sh -c 'i=0; while [ $i -lt 1100 ]; do sleep 30 & i=$((i+1)); done' 2>/tmp/err; " +
      "n=0; for d in /proc/[0-9]*; do n=$((n+1)); done; echo \"$n\"; read -r first < /tmp/err; echo \"$first\"",
    timeout_seconds: 60,
  });
  const [running, firstError] = capped.stdout.trim().split("\n");
  assert.ok(Number(running) <= 1024 && Number(running) > 900, `${running} processes ran`);
  assert.match(firstError!, /can.t fork|Resource temporarily unavailable/);
  // A real fork bomb: it ends (by itself or at its timeout) and the next sandbox is fine.
  const bomb = await pyro.runInVm({ environment: ENV, command: "b() { b | b & }; b; sleep 2; echo survived", timeout_seconds: 5 });
  assert.ok(bomb.exit_code === 0 || bomb.timed_out, JSON.stringify({ exit: bomb.exit_code, err: bomb.stderr.slice(0, 200) }));
  const after = await pyro.runInVm({ environment: ENV, command: "echo fine" });
  assert.equal(after.stdout, "fine\n");
});

test("vcpu_count limits CPU time", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  // Two busy loops for 1.5 s of wall time: with 1 vCPU they cannot get more than ~1.5 s of CPU between them.
  const spin = "while :; do :; done";
  const r = await pyro.runInVm({
    environment: ENV,
    vcpu_count: 1,
    command: `(${spin}) & p1=$!; (${spin}) & p2=$!; sleep 1.5; t=0; for p in $p1 $p2; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t+$1+$2)); done; kill $p1 $p2; echo $t`,
    timeout_seconds: 20,
  });
  const seconds = Number(r.stdout.trim()) / 100; // clock ticks
  assert.ok(seconds > 0 && seconds < 2.0, `two loops used ${seconds}s of CPU in 1.5 s with 1 vCPU`);
  // And the quota the kernel enforces is the one asked for.
  const vm = await pyro.createVm({ environment: ENV, vcpu_count: 2 });
  await pyro.startVm({ vm_id: vm.vm_id });
  const record = JSON.parse(readFileSync(join(stateDir, "vms", vm.vm_id, "record.json"), "utf8"));
  const cpu = (record.sandbox.cgroups as string[]).find((d) => d.includes("/cpu/"));
  if (cpu) assert.equal(readFileSync(join(cpu, "cpu.cfs_quota_us"), "utf8").trim(), "200000");
  else assert.match(readFileSync(join(record.sandbox.cgroups[0], "cpu.max"), "utf8"), /^200000 100000/);
});

test("the sandbox sees its own root, processes and hostname, not the host's", { skip: onlyNamespace }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  writeFileSync(join(stateDir, "host-secret"), "secret");
  const r = await pyro.runInVm({
    environment: ENV,
    command: `cat /etc/os-release | head -1; ls /root | wc -l; ls /proc | grep -c '^[0-9]'; hostname; cat ${stateDir}/host-secret 2>&1; cat /proc/1/cmdline | tr '\\0' ' '`,
  });
  const lines = r.stdout.split("\n");
  assert.match(lines[0]!, /pyro busybox|busybox/i);
  assert.equal(lines[1], "0");
  assert.ok(Number(lines[2]) < 10, `sandbox sees ${lines[2]} processes`);
  assert.match(lines[3]!, /^vm-[0-9a-f]{12}$/);
  assert.match(lines[4]!, /No such file or directory/);
  assert.match(lines[5]!, /agent/);
});

test("network off leaves only loopback", async (t) => {
  const { pyro } = testPyro(t);
  const r = await pyro.runInVm({ environment: ENV, command: "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '" });
  assert.equal(r.stdout.trim(), "lo");
});

test("network on reaches the outside (a server on the host's own address) but not the host's loopback", async (t) => {
  const addr = hostAddress();
  if (!addr) return t.skip("this host has no non-loopback IPv4 address to stand in for the outside");
  const { pyro } = testPyro(t);
  const { outside, loopback } = await outsideAndLoopback(t, addr);
  const r = await pyro.runInVm({
    environment: ENV,
    network: true,
    // head ends each read after the first line, whatever the user-mode network does with the half-closed connection.
    // The host's loopback by every name the sandbox has for it: its own 127.0.0.1, the gateway, the DNS forwarder.
    command: `echo "outside=$(timeout 5 nc ${addr} ${outside.port} </dev/null | head -n 1)"; timeout 5 nc 127.0.0.1 ${loopback.port} </dev/null; echo "loopback=$?"; for ip in 10.0.2.2 10.0.2.3; do echo "via $ip=$(timeout 5 nc $ip ${loopback.port} </dev/null | head -n 1)"; done; ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; cat /etc/resolv.conf`,
    timeout_seconds: 20,
  });
  assert.match(r.stdout, /^outside=from-outside$/m, r.stdout + r.stderr);
  assert.doesNotMatch(r.stdout, /from-host-loopback/);
  assert.match(r.stdout, /^loopback=[1-9]/m);
  assert.match(r.stdout, /^via 10\.0\.2\.2=$/m, "the gateway address does not map to the host's loopback");
  assert.match(r.stdout, /^via 10\.0\.2\.3=$/m);
  assert.match(r.stdout, /inet 10\.0\.2\.15/);
  assert.match(r.stdout, /nameserver 10\.0\.2\.3/);
});

test("the VM lifecycle: create, start, status, network info, stop, exec (auto-start, then auto-delete)", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const created = await pyro.createVm({ environment: ENV, mem_mib: 128, ttl_seconds: 60 });
  assert.equal(created.state, "created");
  assert.match(created.vm_id, /^vm_[0-9a-f]{12}$/);
  const started = await pyro.startVm({ vm_id: created.vm_id });
  assert.equal(started.state, "started");
  assert.equal(started.running, true);
  assert.equal(started.limits?.mem_mib, 128);
  const status = await pyro.statusVm({ vm_id: created.vm_id });
  assert.equal(status.state, "started");
  const net = await pyro.networkInfoVm({ vm_id: created.vm_id });
  assert.equal(net.network.enabled, false);
  const stopped = await pyro.stopVm({ vm_id: created.vm_id });
  assert.equal(stopped.state, "stopped");
  assert.equal(leftovers(stateDir).processes.length, 0);
  const r = await pyro.execVm({ vm_id: created.vm_id, command: "echo again" });
  assert.equal(r.stdout, "again\n");
  assert.equal(r.vm_id, created.vm_id);
  await expectCode(pyro.statusVm({ vm_id: created.vm_id }), "unknown_vm");
  assert.deepEqual(await settledLeftovers(stateDir, [created.vm_id]), { processes: [], dirs: [], cgroups: [] });
});

test("a started VM is reachable from a second Pyro (another process's view of the records)", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const { Pyro } = await import("../../src/index.js");
  const vm = await pyro.createVm({ environment: ENV });
  await pyro.startVm({ vm_id: vm.vm_id });
  const other = new Pyro({ stateDir });
  assert.equal((await other.statusVm({ vm_id: vm.vm_id })).running, true);
  const r = await other.execVm({ vm_id: vm.vm_id, command: "echo shared" });
  assert.equal(r.stdout, "shared\n");
});

test("expired VMs are reaped; a sandbox killed from outside shows as stopped", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const a = await pyro.createVm({ environment: ENV });
  await pyro.startVm({ vm_id: a.vm_id });
  const recordPath = join(stateDir, "vms", a.vm_id, "record.json");
  const record = JSON.parse(readFileSync(recordPath, "utf8"));
  process.kill(record.sandbox.process.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 100));
  assert.equal((await pyro.statusVm({ vm_id: a.vm_id })).state, "stopped");
  const fresh = JSON.parse(readFileSync(recordPath, "utf8"));
  fresh.expires_at = new Date(Date.now() - 1000).toISOString();
  writeFileSync(recordPath, JSON.stringify(fresh));
  const reaped = await pyro.reapExpired();
  assert.deepEqual(reaped.reaped, [{ id: a.vm_id, kind: "vm", reason: "ttl expired" }]);
  assert.deepEqual(await settledLeftovers(stateDir, [a.vm_id]), { processes: [], dirs: [], cgroups: [] });
});

test("a VM's TTL ends its sandbox even with no pyro process acting, and the reaper removes it", { timeout: 60_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const vm = await pyro.createVm({ environment: ENV, ttl_seconds: 10 });
  await pyro.startVm({ vm_id: vm.vm_id });
  const record = JSON.parse(readFileSync(join(stateDir, "vms", vm.vm_id, "record.json"), "utf8"));
  // The agent itself holds the deadline: the sandbox process goes away on its own.
  const deadline = Date.parse(vm.expires_at) + 20_000;
  while (Date.now() < deadline && existsSync(`/proc/${record.sandbox.process.pid}`)) await new Promise((r) => setTimeout(r, 200));
  assert.equal(existsSync(`/proc/${record.sandbox.process.pid}`), false, "the sandbox outlived its TTL");
  assert.ok(Date.now() >= Date.parse(vm.expires_at), "the sandbox ended before its TTL");
  const reaped = await pyro.reapExpired();
  assert.deepEqual(reaped.reaped.map((r) => r.id), [vm.vm_id]);
  assert.deepEqual(await settledLeftovers(stateDir, [vm.vm_id]), { processes: [], dirs: [], cgroups: [] });
});

test("bad input gets a PyroError with a stable code and a hint", async (t) => {
  const { pyro } = testPyro(t);
  await expectCode(pyro.runInVm({ environment: "debian:99", command: "true" }), "unknown_environment", /busybox/);
  await expectCode(pyro.runInVm({ environment: ENV, command: "" }), "invalid_argument", /command/);
  await expectCode(pyro.runInVm({ environment: ENV, command: [] }), "invalid_argument");
  await expectCode(pyro.runInVm({ environment: ENV, command: "true", mem_mib: 1 }), "invalid_argument", /mem_mib/);
  await expectCode(pyro.runInVm({ environment: ENV, command: "true", vcpu_count: 0 }), "invalid_argument", /vcpu_count/);
  await expectCode(pyro.runInVm({ environment: ENV, command: "true", timeout_seconds: -1 }), "invalid_argument", /timeout_seconds/);
  await expectCode(pyro.runInVm({ environment: ENV, command: "true", bogus: 1 } as never), "invalid_argument", /bogus|unrecognized/i);
  await expectCode(pyro.statusVm({ vm_id: "../../etc" }), "unknown_vm");
  await expectCode(pyro.statusVm({ vm_id: "vm_000000000000" }), "unknown_vm");
  await expectCode(pyro.runInVm({ environment: ENV, command: "true", driver: "firecracker" }), "driver_unavailable");
});

test("32 concurrent runInVm calls all succeed", { skip: onlyNamespace }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const results = await Promise.all(Array.from({ length: 32 }, (_, i) => pyro.runInVm({ environment: ENV, command: `echo ${i}` })));
  results.forEach((r, i) => {
    assert.equal(r.exit_code, 0);
    assert.equal(r.stdout, `${i}\n`);
  });
  assert.deepEqual((await settledLeftovers(stateDir)).dirs, []);
});

test("the SDK's environment methods: list, pull (idempotent), inspect with verify, prune, bad names", async (t) => {
  const { pyro } = testPyro(t);
  const list = await pyro.listEnvironments();
  const busybox = list.environments.find((e) => e.name === ENV);
  assert.ok(busybox, JSON.stringify(list));
  assert.deepEqual(
    list.environments.filter((e) => e.kind === "catalog").map((e) => e.name).sort(),
    ["busybox", "debian:12", "debian:12-base", "debian:12-build"],
  );
  const pulled = await pyro.pullEnvironment({ environment: ENV });
  assert.equal(pulled.name, ENV);
  assert.equal(pulled.built, false);
  const inspected = await pyro.inspectEnvironment({ environment: ENV, verify: true });
  assert.equal(inspected.state, "ready");
  const pruned = await pyro.pruneEnvironments();
  assert.ok(Array.isArray(pruned.removed));
  await expectCode(pyro.inspectEnvironment({ environment: "nope:0" }), "unknown_environment");
  await expectCode(pyro.pullEnvironment({ environment: ENV, bogus: true } as never), "invalid_argument");
});

test("a deleted VM's directory goes at once; what a killed process left half-removed is swept by the next reap", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const vm = await pyro.createVm({ environment: "busybox" });
  await pyro.startVm({ vm_id: vm.vm_id });
  await pyro.deleteVm({ vm_id: vm.vm_id });
  // The id is gone at once (renamed away); its bytes are freed in the background.
  assert.equal(existsSync(join(stateDir, "vms", vm.vm_id)), false);
  assert.deepEqual(await settledLeftovers(stateDir, [vm.vm_id]), { processes: [], dirs: [], cgroups: [] });

  // A removal cut short by kill -9 (its process, here a dead pid, is gone) is finished by any reap;
  // a live process's removal in progress is left to it, unless it is over a minute old.
  const dead = spawnSync("true").pid!;
  const trash = (pid: number, at: number) => {
    const dir = join(stateDir, "vms", `.trash-vm_0123456789ab.${pid}.${at}.0`);
    mkdirSync(join(dir, "sandbox", "rw", "upper"), { recursive: true });
    writeFileSync(join(dir, "sandbox", "rw", "upper", "big"), Buffer.alloc(1 << 20));
    return dir;
  };
  const orphan = trash(dead, Date.now());
  const othersFresh = trash(1, Date.now());
  const othersStale = trash(1, Date.now() - 120_000);
  await pyro.reapExpired();
  await removalsDone();
  assert.equal(existsSync(orphan), false);
  assert.equal(existsSync(othersFresh), true);
  assert.equal(existsSync(othersStale), false);
});

test("a run cancelled at any moment of its sandbox's start leaves no process behind", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  await pyro.runInVm({ environment: ENV, command: ["true"] }); // warm: the environment is ready
  for (let delay = 0; delay <= 30; delay += 2) {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), delay);
    await pyro.runInVm({ environment: ENV, command: ["sleep", "30"] }, { signal: controller.signal }).catch(() => undefined);
  }
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(await settledLeftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

test("a run's own onProgress hears a VM driver's first-use artifact build, not only the Pyro's (the daemon's runs have no Pyro-wide listener)", { skip: onlyNamespace }, async (t) => {
  const { pyro } = testPyro(t);
  const qemu = driverNamed("qemu");
  const prepare = qemu.prepare;
  t.after(() => {
    qemu.prepare = prepare;
  });
  qemu.prepare = async (_environment, options = {}) => {
    options.onProgress?.({ phase: "kernel", message: "fetching the kernel" });
    throw new PyroError("driver_unavailable", "stubbed: no boot in this test");
  };
  const heard: string[] = [];
  await expectCode(pyro.runInVm({ environment: ENV, driver: "qemu", command: "true" }, { onProgress: (e) => heard.push(e.phase) }), "driver_unavailable");
  assert.deepEqual(heard, ["kernel"]);
});
