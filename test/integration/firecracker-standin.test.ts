/**
 * The firecracker driver run end to end around a stand-in for the
 * `firecracker` binary (test/helpers/firecracker-standin.mjs): the real
 * Firecracker cannot run here (no binary; /dev/kvm is PVM), so a program
 * that plays its documented host-side interfaces, the API socket and the
 * vsock's CONNECT/OK socket, takes its place, with the real agent (serve
 * mode) as its "guest". Everything else is real: the bubblewrap jail, the
 * sandbox uid as root (`pyro-agent launch`), the cgroups and notes, the
 * supervisor (`pyro-agent vmm --guest vsock:`), the driver's API client,
 * an AgentClient exec through the handle's socket, kill and cleanup. Every
 * request the stand-in got is validated against Firecracker's published
 * API description. A real boot is test/vm/firecracker-driver.test.ts.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../../src/agent/client.js";
import { findExecutable } from "../../src/drivers/availability.js";
import { FirecrackerDriver, firecrackerPaths } from "../../src/drivers/firecracker/driver.js";
import { FIRECRACKER_TAP, JAIL_BRIDGE, PASTA_TAP } from "../../src/drivers/firecracker/network.js";
import { GUEST_MAC, SANDBOX_NET } from "../../src/drivers/network.js";
import { standinDriver as makeStandinDriver } from "../helpers/firecracker-standin.js";
import type { SandboxHandle, SandboxSpec } from "../../src/drivers/types.js";
import { identityOf, isAlive, waitForExit } from "../../src/util/proc.js";
import { cgroupsOf, processesMentioning } from "../helpers/sandbox.js";
import { sandboxOwner } from "../../src/util/sandbox-user.js";
import { loadSwagger, validateRequest } from "../helpers/swagger.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const AGENT = join(ROOT, "guest", "build", "pyro-agent");
const doc = loadSwagger(join(ROOT, "test", "fixtures", "firecracker", "firecracker-api.json"));

let work = "";
let seq = 0;
const handles: Array<{ driver: FirecrackerDriver; handle: SandboxHandle }> = [];

function standinDriver(refuse = "", tun?: string): { driver: FirecrackerDriver; binary: string } {
  return makeStandinDriver(join(work, `bin${++seq}`), refuse, tun);
}

/**
 * A tun device node of the test's own (char 10:200, as /dev/net/tun), of
 * `mode`: the host's /dev/net/tun is root's alone here (0600), and a test
 * must not change the host's devices; Debian's udev makes it 0666.
 */
function tunNode(mode: number): string {
  const p = join(work, `tun${++seq}`);
  const r = spawnSync("mknod", [p, "c", "10", "200"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  chmodSync(p, mode);
  return p;
}

/** Why a VM with network cannot be stood in for here, or false. */
function networkSkip(): string | false {
  if (process.getuid?.() !== 0) return "needs root: to make a tun device node the VM's uid may open (mknod) and to look into the jail's network namespace (nsenter)";
  if (!findExecutable("pasta")) return "pasta is not installed (apt-get install passt)";
  if (!existsSync("/usr/bin/python3")) return "the stand-in opens the TAP as Firecracker does with python3's ioctl, and /usr/bin/python3 is missing";
  if (!findExecutable("nsenter") || !findExecutable("ip")) return "the test looks into the jail's network namespace with nsenter and ip (util-linux, iproute2)";
  return false;
}

/** The jail's network namespaces of the processes naming `dir` (not the host's own). */
function jailNetns(dir: string): string[] {
  const host = readlinkSync("/proc/self/ns/net");
  const found = new Set<string>();
  // The notes name the jail's PID 1 before its network is plumbed (its argv is still bwrap's then, which may not name `dir` yet).
  const noted = (JSON.parse(readFileSync(join(dir, "resources.json"), "utf8")) as { processes: Array<{ pid: number }> }).processes;
  for (const p of [...noted, ...processesMentioning(dir)]) {
    try {
      const ns = readlinkSync(`/proc/${p.pid}/ns/net`);
      if (ns !== host) found.add(ns);
    } catch {
      /* gone */
    }
  }
  return [...found];
}

/** Every process of the host in one of the namespaces `nets` (a namespace nobody holds is gone, its devices with it). */
function processesInNetns(nets: string[]): string[] {
  const out: string[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (nets.includes(readlinkSync(`/proc/${name}/ns/net`))) out.push(`${name} ${readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ")}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

interface Link {
  ifname: string;
  flags: string[];
  master?: string;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; pi?: boolean; persist?: boolean; user?: number | string } };
}

/** `ip` in the network namespace of `pid`, as JSON. */
function ipIn<T>(pid: number, args: string[]): T {
  const r = spawnSync("nsenter", [`--net=/proc/${pid}/ns/net`, "ip", "-j", "-d", ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

/** Boot files the stand-in opens (it boots nothing, so their content does not matter; the qemu tests boot the real ones). */
function bootFiles(): { kernel: string; initramfs: string; root_image: string } {
  const dir = join(work, `boot${++seq}`);
  mkdirSync(dir, { mode: 0o755 });
  const files = { kernel: join(dir, "vmlinux"), initramfs: join(dir, "initrd.img"), root_image: join(dir, "rootfs.ext4") };
  for (const p of Object.values(files)) writeFileSync(p, "x", { mode: 0o644 });
  return files;
}

function sandboxSpec(more: Partial<SandboxSpec> = {}): SandboxSpec {
  const n = (++seq).toString(16).padStart(12, "0");
  const dir = join(work, "state", `vm_${n}`, "sandbox");
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  return {
    id: `vm_${n}`,
    dir,
    rootfs: "/nonexistent",
    vcpu_count: 1,
    mem_mib: 256,
    disk_mib: 64,
    pids_max: 1024,
    network: false,
    deadline: null,
    die_with_parent: true,
    keep_layer: false,
    hostname: `vm-${n}`,
    vm: bootFiles(),
    ...more,
  };
}

/**
 * One OPEN through the handle's socket, answered by the agent behind the vsock. The stand-in's guest is the
 * agent in serve mode inside the capability-less jail, where it cannot drop capabilities for a command (in a
 * real VM it is PID 1 with all of them): its refusal, in its own words, is the proof the OPEN reached it.
 */
async function openThroughVsock(socket: string): Promise<string> {
  const c = await AgentClient.connect(socket);
  try {
    await c.ping();
    const h = c.exec({ argv: ["/bin/sh", "-c", "true"], env: { PATH: "/usr/bin:/bin" }, cwd: "", timeoutMs: 0 });
    return JSON.stringify(await h.result);
  } finally {
    c.close();
  }
}

function requestsOf(dir: string): Array<{ method: string; path: string; content_type: string | null; body: unknown }> {
  const log = join(firecrackerPaths(dir).runDir, "requests.jsonl");
  return readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l));
}

before(() => {
  assert.ok(existsSync(AGENT), `${AGENT} is not built (npm run build)`);
  // Under TMPDIR: the test run's own (its parents are traversable by the sandbox uid a root pyro runs the jail as).
  work = mkdtempSync(join(tmpdir(), "fc-"));
  chmodSync(work, 0o755);
});

after(async () => {
  for (const { driver, handle } of handles) {
    await driver.kill(handle);
    driver.cleanup(handle);
  }
  if (work) rmSync(work, { recursive: true, force: true });
});

test("a sandbox boots around the stand-in: valid API requests in order, the agent over the vsock handshake, kill, nothing left", async () => {
  const { driver, binary } = standinDriver();
  const spec = sandboxSpec({ keep_layer: true, die_with_parent: false, vcpu_count: 2, mem_mib: 384 });
  const handle = await driver.start(spec);
  handles.push({ driver, handle });
  assert.equal(handle.driver, "firecracker");
  assert.deepEqual(handle.isolation, { driver: "firecracker", kind: "microvm", accel: "kvm" });
  assert.equal(handle.limits.mechanism, "vm");
  assert.equal(handle.limits.enforced_by.disk, "ext4-image");
  assert.ok(driver.isRunning(handle));

  const got = requestsOf(spec.dir);
  assert.deepEqual(got.map((r) => `${r.method} ${r.path}`), ["PUT /machine-config", "PUT /boot-source", "PUT /drives/root", "PUT /drives/data", "PUT /vsock", "PUT /actions"]);
  for (const r of got) {
    assert.deepEqual(validateRequest(doc, r.method, r.path, r.body), [], `${r.method} ${r.path}`);
    assert.equal(r.content_type, "application/json");
  }
  const paths = firecrackerPaths(spec.dir);
  assert.deepEqual(got[0]!.body, { vcpu_count: 2, mem_size_mib: 384, smt: false });
  assert.equal((got[3]!.body as { path_on_host: string }).path_on_host, paths.disk, "the task's disk, made by the driver");
  assert.ok(existsSync(paths.disk));
  assert.equal((got[4]!.body as { uds_path: string }).uds_path, paths.vsock);

  // The agent answers through the supervisor's socket: the vsock's CONNECT 52 / OK handshake was done.
  assert.match(await openThroughVsock(handle.socket), /"kind":"open_failed".*cannot drop capabilities for '\/bin\/sh'/);
  assert.match(readFileSync(paths.console, "utf8"), /firecracker stand-in vm-[0-9a-f]+: InstanceStart/);

  // The stand-in is jailed with the supervisor: its pid namespace is not the host's.
  const fcPid = processesMentioning(paths.api).find((p) => p.cmd.startsWith(`/usr/bin/node ${binary} --api-sock`))?.pid;
  assert.ok(fcPid, "the stand-in runs");
  assert.notEqual(readFileSync(`/proc/${fcPid}/status`, "utf8").match(/^NSpid:\s+(.*)$/m)?.[1]?.split(/\s+/).length, 1, "firecracker runs in a pid namespace of its own");
  const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${fcPid}/status`, "utf8"))?.[1]);
  const owner = sandboxOwner();
  assert.equal(uid, owner ? owner.uid : process.getuid!(), "as root, firecracker runs as the sandbox uid, never as root");

  await driver.kill(handle);
  assert.ok(!driver.isRunning(handle));
  driver.cleanup(handle);
  handles.pop();
  assert.deepEqual(processesMentioning(spec.dir), []);
  assert.deepEqual(cgroupsOf(spec.id), []);
  for (const p of [paths.socket, paths.api, paths.vsock]) assert.ok(!existsSync(p), `${p} removed`);
  assert.ok(existsSync(paths.disk), "a task's disk outlives its VM");
});

test("kill -9 of the supervisor takes firecracker and its guest with it; cleanupDir leaves nothing", async () => {
  const { driver } = standinDriver();
  const spec = sandboxSpec();
  const handle = await driver.start(spec);
  handles.push({ driver, handle });
  const before = processesMentioning(spec.dir).length;
  assert.ok(before >= 2, "the supervisor and firecracker name the sandbox directory");
  process.kill(handle.process.pid, "SIGKILL");
  await waitForExit(handle.process, 5_000);
  await driver.cleanupDir(spec.dir);
  assert.deepEqual(processesMentioning(spec.dir), []);
  assert.deepEqual(cgroupsOf(spec.id), []);
  assert.ok(!existsSync(join(spec.dir, "resources.json")), "the notes are released");
  driver.cleanup(handle);
  handles.pop();
});

test("Firecracker refusing a request: a clear error naming it and its fault_message, and nothing left (no process, cgroup, socket)", async () => {
  const { driver } = standinDriver("/drives/root");
  const spec = sandboxSpec();
  await assert.rejects(driver.start(spec), (e: Error & { code?: string }) => {
    assert.equal(e.code, "sandbox_failed");
    assert.match(e.message, /Firecracker refused to attach the root image \(PUT \/drives\/root: HTTP 400: stand-in told to refuse \/drives\/root\)/);
    return true;
  });
  assert.deepEqual(processesMentioning(spec.dir), []);
  assert.deepEqual(cgroupsOf(spec.id), []);
  // No InstanceStart of a half-configured VM.
  assert.deepEqual(requestsOf(spec.dir).map((r) => r.path), ["/machine-config", "/boot-source", "/drives/root"]);
});

test("a boot file firecracker cannot open, and a firecracker that dies at once: clear errors, nothing left", async () => {
  const { driver } = standinDriver();
  const spec = sandboxSpec();
  spec.vm = { ...spec.vm!, root_image: join(work, "no-such-image.ext4") };
  await assert.rejects(driver.start(spec), (e: Error & { code?: string }) => {
    assert.equal(e.code, "sandbox_failed");
    assert.match(e.message, /The environment's VM root image .*no-such-image\.ext4 is missing/);
    return true;
  });
  assert.ok(!existsSync(join(spec.dir, "vm")), "refused before anything was made");
  assert.deepEqual(processesMentioning(spec.dir), []);
  assert.deepEqual(cgroupsOf(spec.id), []);

  const dead = join(work, "dead-firecracker");
  writeFileSync(dead, "#!/bin/sh\necho 'firecracker: cannot create the API socket' >&2\nexit 1\n", { mode: 0o755 });
  const dying = new FirecrackerDriver({ support: () => ({ available: true, reason: null, binary: dead, proven: false, checks: [] }) });
  const spec2 = sandboxSpec();
  const t0 = Date.now();
  await assert.rejects(dying.start(spec2), (e: Error & { code?: string }) => {
    assert.equal(e.code, "sandbox_failed");
    assert.match(e.message, /Firecracker exited before its API socket answered|the VMM exited with status 1/);
    return true;
  });
  assert.ok(Date.now() - t0 < 15_000, "a dead firecracker is seen at once, not at the boot timeout");
  assert.deepEqual(processesMentioning(spec2.dir), []);
  assert.deepEqual(cgroupsOf(spec2.id), []);
});

test("what the driver refuses before it makes anything", async () => {
  const { driver, binary } = standinDriver();
  const cases: Array<[Partial<SandboxSpec>, RegExp]> = [
    [{ mem_mib: 64 }, /at least 128 MiB/],
    [{ vcpu_count: 33 }, /at most 32 vCPUs/],
  ];
  for (const [more, why] of cases) {
    const spec = sandboxSpec(more);
    await assert.rejects(driver.start(spec), (e: Error & { code?: string }) => {
      assert.equal(e.code, "invalid_argument");
      assert.match(e.message, why);
      return true;
    });
    assert.ok(!existsSync(join(spec.dir, "vm")), "nothing made");
    assert.deepEqual(cgroupsOf(spec.id), []);
  }
  // Under Firecracker's jailer a VM with network is refused (its firecracker would sit in a network namespace away from the TAP).
  const jailered = new FirecrackerDriver({ support: () => ({ available: true, reason: null, binary, proven: false, checks: [], jailer: "/usr/bin/true" }) });
  const netSpec = sandboxSpec({ network: true });
  await assert.rejects(jailered.start(netSpec), (e: Error & { code?: string; hint?: string }) => {
    assert.match(e.message, sandboxOwner() ? /jailer \(PYRO_JAILER\) does not give VMs a network/ : /jailer \(PYRO_JAILER\) runs only when pyro is root/);
    assert.match(String(e.hint), /unset PYRO_JAILER/);
    return true;
  });
  assert.ok(!existsSync(join(netSpec.dir, "vm")), "nothing made");
  assert.deepEqual(cgroupsOf(netSpec.id), []);
  // A host where the driver cannot run: one error naming what is missing, before anything is built.
  const unavailable = new FirecrackerDriver({ support: () => ({ available: false, reason: "no firecracker binary on PATH", binary: null, proven: false, checks: [] }) });
  const spec = sandboxSpec();
  await assert.rejects(unavailable.start(spec), /driver_unavailable|cannot run here: no firecracker binary on PATH/);
  await assert.rejects(unavailable.prepare({ name: "busybox", rootfs: "/nonexistent" }), /cannot run here: no firecracker binary on PATH/);
  assert.ok(!existsSync(join(spec.dir, "vm")));
  // isAlive is what records use: a pid of this test is alive, the identity of a dead one is not.
  assert.ok(isAlive(identityOf(process.pid)));
});

/** A pyro process starting `spec` around the stand-in, stopped dead at `point` (PYRO_TEST_PAUSE_AT); kill9() ends it. */
async function pausedStart(spec: SandboxSpec, point: string, tun?: string): Promise<{ kill9: () => Promise<void> }> {
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test", "helpers", "firecracker-standin-child.ts"), join(work, `bin${++seq}`), JSON.stringify(spec), ...(tun ? [tun] : [])], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PYRO_TEST_PAUSE_AT: point },
  });
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const exited = new Promise((r) => child.once("exit", r));
  const end = Date.now() + 30_000;
  while (!err.includes(`paused at ${point}`)) {
    if (Date.now() > end || child.exitCode !== null) assert.fail(`the child did not pause at ${point}: ${err}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    kill9: async () => {
      child.kill("SIGKILL");
      await exited;
    },
  };
}

for (const [point, dieWithParent] of [["boot:spawned", true], ["boot:spawned", false], ["boot:info", false]] as const) {
  test(`kill -9 of the pyro process at ${point} (${dieWithParent ? "a one-shot VM" : "a task's VM"}): cleanupDir of its directory leaves nothing`, async () => {
    const spec = sandboxSpec({ die_with_parent: dieWithParent, keep_layer: !dieWithParent });
    await (await pausedStart(spec, point)).kill9();
    // A task's VM outlives the process that started it (by design); a one-shot VM dies with it.
    if (!dieWithParent) assert.ok(processesMentioning(spec.dir).length > 0, "the half-started VM is still there to clean up");
    // What the reaper does for a directory no record's sandbox names: the driver's cleanupDir, from another process.
    const { driver } = standinDriver();
    await driver.cleanupDir(spec.dir);
    const left = processesMentioning(spec.dir);
    assert.deepEqual(left, [], JSON.stringify(left));
    assert.deepEqual(cgroupsOf(spec.id), []);
    assert.ok(!existsSync(join(spec.dir, "resources.json")));
    const paths = firecrackerPaths(spec.dir);
    for (const p of [paths.socket, paths.api, paths.vsock]) assert.ok(!existsSync(p), `${p} removed`);
  });
}

test("another local user cannot reach a VM's Firecracker API, its vsock socket (CONNECT 52 would bypass the supervisor) or the supervisor's socket", async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root to act as another local user (uid 65534)");
  const { driver } = standinDriver();
  const spec = sandboxSpec();
  const handle = await driver.start(spec);
  handles.push({ driver, handle });
  const paths = firecrackerPaths(spec.dir);
  const st = statSync(paths.runDir);
  assert.equal(st.mode & 0o777, 0o700, "run/ is the VM's alone");
  // A hostile local user tries each socket: the API (it could PATCH a drive or send actions), the vsock (CONNECT 52 reaches the agent).
  const probe = `const net=require("node:net");let left=${3};for(const p of ${JSON.stringify([paths.api, paths.vsock, paths.socket])}){const s=net.createConnection(p);s.on("connect",()=>{console.log(p+" CONNECTED");s.destroy();if(!--left)process.exit(0)});s.on("error",(e)=>{console.log(p+" "+e.code);if(!--left)process.exit(0)})}`;
  const r = spawnSync(process.execPath, ["-e", probe], { uid: 65534, gid: 65534, encoding: "utf8", cwd: "/", timeout: 10_000 });
  assert.equal(r.status, 0, r.stderr);
  for (const p of [paths.api, paths.vsock, paths.socket]) assert.match(r.stdout, new RegExp(`${p.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")} EACCES`), r.stdout);
  assert.doesNotMatch(r.stdout, /CONNECTED/);
  await driver.kill(handle);
  driver.cleanup(handle);
  handles.pop();
});

test("a VM with network: pasta and Firecracker's TAP, owned by the VM's uid, bridged in the jail's own network namespace (no address, no IPv6 there); the handle says so; kill leaves nothing", { skip: networkSkip() }, async () => {
  const { driver, binary } = standinDriver("", tunNode(0o666));
  const spec = sandboxSpec({ network: true, keep_layer: true, die_with_parent: false });
  const handle = await driver.start(spec);
  handles.push({ driver, handle });
  assert.deepEqual(handle.network, { enabled: true, backend: "pasta", interface: "eth0", guest_ip: SANDBOX_NET.guest_ip, gateway: SANDBOX_NET.gateway, dns: [SANDBOX_NET.dns], host_loopback_reachable: false });
  assert.equal(handle.dns_configured, true, "the VM's agent writes resolv.conf from pyro.dns");

  const got = requestsOf(spec.dir);
  assert.deepEqual(got.map((r) => r.path), ["/machine-config", "/boot-source", "/drives/root", "/drives/data", "/vsock", "/network-interfaces/eth0", "/actions"]);
  for (const r of got) assert.deepEqual(validateRequest(doc, r.method, r.path, r.body), [], `${r.method} ${r.path}`);
  assert.deepEqual(got[5]!.body, { iface_id: "eth0", host_dev_name: FIRECRACKER_TAP, guest_mac: GUEST_MAC });
  assert.match((got[1]!.body as { boot_args: string }).boot_args, new RegExp(` pyro\\.ip=${SANDBOX_NET.guest_ip.replace(/\./g, "\\.")}/24 pyro\\.gw=10\\.0\\.2\\.2 pyro\\.dns=10\\.0\\.2\\.3`));

  // From outside, as root: the TAP the request names is in the jail's network namespace, not the host's.
  const jail = handle.process.pid;
  assert.notEqual(readlinkSync(`/proc/${jail}/ns/net`), readlinkSync("/proc/self/ns/net"));
  for (const name of [FIRECRACKER_TAP, PASTA_TAP, JAIL_BRIDGE]) assert.ok(!existsSync(`/sys/class/net/${name}`), `no ${name} on the host`);
  const links = ipIn<Link[]>(jail, ["link", "show"]);
  const by = (n: string) => links.find((l) => l.ifname === n);
  const tap = by(FIRECRACKER_TAP);
  assert.ok(tap, JSON.stringify(links));
  assert.equal(tap.linkinfo?.info_kind, "tun");
  assert.equal(tap.linkinfo?.info_data?.type, "tap");
  assert.equal(tap.linkinfo?.info_data?.persist, true);
  const owner = sandboxOwner();
  assert.equal(Number(tap.linkinfo?.info_data?.user), owner ? owner.uid : process.getuid!(), "owned by the VM's uid, which opens it without CAP_NET_ADMIN");
  assert.equal(tap.master, JAIL_BRIDGE);
  assert.ok(tap.flags.includes("LOWER_UP"), "Firecracker (the stand-in, as the VM's uid) holds it open");
  const pastaTap = by(PASTA_TAP);
  assert.equal(pastaTap?.master, JAIL_BRIDGE, "linked to pasta's tap");
  assert.ok(pastaTap?.flags.includes("LOWER_UP"), "pasta holds its tap");
  assert.equal(by(JAIL_BRIDGE)?.linkinfo?.info_kind, "bridge");
  assert.deepEqual(links.map((l) => l.ifname).sort(), [JAIL_BRIDGE, FIRECRACKER_TAP, "lo", PASTA_TAP].sort(), "nothing else in the jail's network");
  const addrs = ipIn<Array<{ ifname: string; addr_info: Array<{ family: string; local: string }> }>>(jail, ["addr", "show"]);
  const assigned = addrs.flatMap((a) => a.addr_info.map((i) => `${a.ifname} ${i.family} ${i.local}`));
  assert.deepEqual(assigned.filter((a) => !a.startsWith("lo ")), [], "the namespace has no address of its own");
  for (const dev of ["all", "default", FIRECRACKER_TAP, PASTA_TAP, JAIL_BRIDGE]) {
    const r = spawnSync("nsenter", [`--net=/proc/${jail}/ns/net`, "cat", `/proc/sys/net/ipv6/conf/${dev}/disable_ipv6`], { encoding: "utf8" });
    assert.equal(r.stdout.trim(), "1", `IPv6 off on ${dev}`);
  }
  // pasta is the sandbox's: a helper of the handle, in its notes, its pid file in the sandbox's directory.
  const pasta = handle.helpers.find((h) => readFileSync(`/proc/${h.pid}/cmdline`, "utf8").includes(`-I\0${PASTA_TAP}\0`));
  assert.ok(pasta, "pasta is among the handle's helpers");
  assert.ok((JSON.parse(readFileSync(join(spec.dir, "resources.json"), "utf8")) as { processes: Array<{ pid: number }> }).processes.some((p) => p.pid === pasta.pid));
  assert.doesNotMatch(readFileSync(`/proc/${pasta.pid}/cmdline`, "utf8"), /--config-net/);
  // The stand-in got through the jail to the tun device: it is Firecracker's uid that opened it.
  assert.ok(processesMentioning(binary).length > 0);

  // From Firecracker's place (the stand-in: its namespaces, its uid, the jail's /dev/net/tun), the VM's uid opens only its
  // own TAP: it can make no other device, take pasta's tap, or take the bridge down (no CAP_NET_ADMIN over that network).
  assert.match(readFileSync(join(firecrackerPaths(spec.dir).runDir, "tap-abuse.txt"), "utf8"), /^new EPERM pasta (EPERM|EBUSY) bridge EPERM$/m);
  assert.deepEqual(ipIn<Link[]>(jail, ["link", "show"]).map((l) => l.ifname).sort(), [JAIL_BRIDGE, FIRECRACKER_TAP, "lo", PASTA_TAP].sort(), "nothing was made or taken");

  const nets = jailNetns(spec.dir);
  assert.equal(nets.length, 1);
  await driver.kill(handle);
  driver.cleanup(handle);
  handles.pop();
  assert.deepEqual(processesMentioning(spec.dir), [], "no pasta, supervisor or firecracker");
  assert.deepEqual(processesInNetns(nets), [], "nothing holds the jail's network namespace: its TAP and bridge are gone with it");
  assert.deepEqual(cgroupsOf(spec.id), []);
});

test("a VM with network where the VM's uid cannot open the tun device, or it is not one: the refusal says what and what to do; nothing is made", async (t) => {
  const notTun = join(work, `not-tun${++seq}`);
  writeFileSync(notTun, "", { mode: 0o666 });
  const cases: Array<[string, RegExp]> = [[notTun, /is not the tun device \(char 10:200\)/]];
  if (process.getuid?.() === 0) cases.push([tunNode(0o600), /is mode 0600 \(owner 0:0\), so the sandbox uid \d+, which Firecracker runs as, cannot open it/]);
  else t.diagnostic("the mode-0600 case needs root (mknod); the not-a-tun case runs");
  for (const [tun, why] of cases) {
    const { driver } = standinDriver("", tun);
    const spec = sandboxSpec({ network: true });
    await assert.rejects(driver.start(spec), (e: Error & { code?: string; hint?: string }) => {
      assert.equal(e.code, "driver_unavailable");
      assert.match(e.message, /The firecracker driver cannot give this VM a network: /);
      assert.match(e.message, why);
      assert.match(e.hint ?? "", /mode 0666 \(as Debian's udev does.*run without --network, or use --driver qemu/);
      return true;
    });
    assert.ok(!existsSync(join(spec.dir, "vm")), "nothing made");
    assert.ok(!existsSync(join(spec.dir, "resources.json")));
    assert.deepEqual(processesMentioning(spec.dir), []);
    assert.deepEqual(cgroupsOf(spec.id), []);
  }
});

for (const point of ["pasta:forked", "tap:pasta", "tap:made", "boot:info"] as const) {
  test(`kill -9 of the pyro process at ${point} of a VM with network: cleanupDir leaves no pasta and nothing holding the jail's network namespace`, { skip: networkSkip() }, async () => {
    const spec = sandboxSpec({ network: true, die_with_parent: false, keep_layer: true });
    const paused = await pausedStart(spec, point, tunNode(0o666));
    const nets = jailNetns(spec.dir);
    assert.equal(nets.length, 1, "the jail has its network namespace");
    await paused.kill9();
    assert.ok(processesMentioning(`${spec.dir}/pasta.pid`).length > 0, "pasta outlives the pyro that started it (it holds the namespace): the reap must find it");
    const { driver } = standinDriver();
    await driver.cleanupDir(spec.dir);
    assert.deepEqual(processesMentioning(spec.dir), []);
    assert.deepEqual(processesInNetns(nets), [], "the jail's network namespace is gone, its TAP and bridge with it");
    assert.deepEqual(cgroupsOf(spec.id), []);
    assert.ok(!existsSync(join(spec.dir, "resources.json")));
  });
}

test("pyro-agent tapnet never plumbs the host's network: its own network namespace is refused, and bad names or missing fds are refused before anything is made", () => {
  const host = readlinkSync("/proc/self/ns/net");
  const run = (args: string[], withNetns = true) => {
    const fd = withNetns ? openSync("/proc/self/ns/net", "r") : -1;
    try {
      return spawnSync(AGENT, ["tapnet", ...args], { stdio: ["ignore", "ignore", "pipe", withNetns ? fd : "ignore"], encoding: "utf8" });
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  };
  const plumb = ["--netns-fd", "3", "--tap", "fc0", "--owner", "1000", "--bridge", "br0", "--attach", "pasta0"];
  const own = run(plumb);
  assert.equal(own.status, 125);
  assert.match(own.stderr, /refused: --netns-fd is this process's own network namespace \(the host's\), not a jail's/);
  const exec = run(["--netns-fd", "3", "--owner-userns-fd", "4", "--", "/bin/true"]);
  assert.equal(exec.status, 125, "nor does it run pasta against the host's network");
  assert.match(exec.stderr, /refused: --netns-fd is this process's own network namespace/);
  assert.match(run(["--netns-fd", "3", "--tap", "../x", "--owner", "1000", "--bridge", "br0", "--attach", "pasta0"]).stderr, /an interface name is 1 to 15 of \[a-z0-9\], got \.\.\/x/);
  assert.match(run(["--netns-fd", "3", "--tap", "br0", "--owner", "1000", "--bridge", "br0", "--attach", "pasta0"]).stderr, /three different interfaces|own network namespace/);
  assert.match(run(plumb, false).stderr, /tapnet: /);
  // A device that is not the tun device is refused before anything is made in any namespace.
  const fake = join(work, `fake-tun${++seq}`);
  writeFileSync(fake, "", { mode: 0o666 });
  assert.match(run(["--tun", fake, ...plumb]).stderr, /own network namespace|not the tun device/);
  assert.equal(readlinkSync("/proc/self/ns/net"), host);
  for (const name of ["fc0", "br0"]) assert.ok(!existsSync(`/sys/class/net/${name}`), `no ${name} on the host`);
});
