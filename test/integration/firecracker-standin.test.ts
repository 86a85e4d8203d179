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
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../../src/agent/client.js";
import { FirecrackerDriver, firecrackerPaths } from "../../src/drivers/firecracker/driver.js";
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

function standinDriver(refuse = ""): { driver: FirecrackerDriver; binary: string } {
  return makeStandinDriver(join(work, `bin${++seq}`), refuse);
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
  const { driver } = standinDriver();
  const cases: Array<[Partial<SandboxSpec>, RegExp]> = [
    [{ network: true }, /does not give VMs a network .* TAP device/],
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
  // A host where the driver cannot run: one error naming what is missing, before anything is built.
  const unavailable = new FirecrackerDriver({ support: () => ({ available: false, reason: "no firecracker binary on PATH", binary: null, proven: false, checks: [] }) });
  const spec = sandboxSpec();
  await assert.rejects(unavailable.start(spec), /driver_unavailable|cannot run here: no firecracker binary on PATH/);
  await assert.rejects(unavailable.prepare({ name: "busybox", rootfs: "/nonexistent" }), /cannot run here: no firecracker binary on PATH/);
  assert.ok(!existsSync(join(spec.dir, "vm")));
  // isAlive is what records use: a pid of this test is alive, the identity of a dead one is not.
  assert.ok(isAlive(identityOf(process.pid)));
});

for (const [point, dieWithParent] of [["boot:spawned", true], ["boot:spawned", false], ["boot:info", false]] as const) {
  test(`kill -9 of the pyro process at ${point} (${dieWithParent ? "a one-shot VM" : "a task's VM"}): cleanupDir of its directory leaves nothing`, async () => {
    const spec = sandboxSpec({ die_with_parent: dieWithParent, keep_layer: !dieWithParent });
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test", "helpers", "firecracker-standin-child.ts"), join(work, `bin${++seq}`), JSON.stringify(spec)], {
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
    child.kill("SIGKILL");
    await exited;
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
