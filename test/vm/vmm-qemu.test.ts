/**
 * `pyro-agent vmm` over a real qemu (TCG) booting Debian's cloud kernel.
 * The VM guest agent does not exist yet, so the guest here is a stand-in
 * initramfs: busybox loads the virtio modules and runs the real agent in
 * serve mode on the virtio-serial port (`serve --fd 3 3<>/dev/vportNpM`).
 * That is enough to prove the host side: qemu 7.2 under the vmm, its
 * console captured and capped, both ways of reaching the port (qemu's
 * chardev socket path, and a socketpair inherited as `-chardev
 * socket,fd=N`), the boot timeout and a panicking kernel reported cleanly,
 * kill -9 leaving no qemu.
 *
 * The kernel is fetched once with `apt-get download` (host-facts.md's
 * recipe) into a scratch cache; the test is skipped, with the reason, where
 * qemu, apt-get, lz4, cpio or busybox are missing.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync, chmodSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../../src/agent/client.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const AGENT = join(ROOT, "guest", "build", "pyro-agent");
const QEMU = "qemu-system-x86_64";
const CACHE = join(tmpdir(), "pyro-vmm-qemu-kernel");
const has = (cmd: string, arg = "--version") => spawnSync(cmd, [arg], { stdio: "ignore" }).error === undefined;
const missing = [QEMU, "apt-get", "lz4", "cpio", "dpkg-deb"].filter((c) => !has(c, c === "cpio" ? "--version" : "--help"));
if (!existsSync("/bin/busybox")) missing.push("busybox-static");
const skip = missing.length ? `needs ${missing.join(", ")}` : false;

let work = "";
let vmlinux = "";
let initrd = "";
const vmms: ChildProcess[] = [];

function sh(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8" });
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Debian's cloud kernel as an ELF vmlinux (its LZ4 payload), plus its virtio modules. */
function fetchKernel(): void {
  if (existsSync(join(CACHE, "vmlinux"))) return;
  const dl = mkdtempSync(join(tmpdir(), "pyro-vmm-kdl-"));
  try {
    sh("apt-get", ["download", "linux-image-cloud-amd64"], dl);
    const meta = readdirSync(dl).find((f) => f.endsWith(".deb"))!;
    const dep = /linux-image-[^\s,]+/.exec(sh("dpkg-deb", ["-f", meta, "Depends"], dl))![0];
    sh("apt-get", ["download", dep], dl);
    const deb = readdirSync(dl).find((f) => f.startsWith(dep + "_"))!;
    sh("dpkg-deb", ["-x", deb, "x"], dl);
    const boot = join(dl, "x", "boot");
    const vmlinuz = readFileSync(join(boot, readdirSync(boot).find((f) => f.startsWith("vmlinuz-"))!));
    const at = vmlinuz.indexOf(Buffer.from([0x02, 0x21, 0x4c, 0x18])); // LZ4 legacy frame
    assert.ok(at > 0, "no LZ4 payload in the bzImage");
    writeFileSync(join(dl, "payload.lz4"), vmlinuz.subarray(at));
    // lz4 stops at the end of the frame and complains about the trailing bytes.
    spawnSync("lz4", ["-dqf", "payload.lz4", "vmlinux"], { cwd: dl });
    assert.equal(readFileSync(join(dl, "vmlinux")).subarray(0, 4).toString("latin1"), "\x7fELF");
    const mods = join(dl, "x", "lib", "modules");
    const kdir = join(mods, readdirSync(mods)[0]!, "kernel", "drivers");
    mkdirSync(join(dl, "out", "mod"), { recursive: true });
    for (const m of ["virtio/virtio_ring", "virtio/virtio", "virtio/virtio_mmio", "char/virtio_console"])
      copyFileSync(join(kdir, `${m}.ko`), join(dl, "out", "mod", `${m.split("/")[1]}.ko`));
    renameSync(join(dl, "vmlinux"), join(dl, "out", "vmlinux"));
    rmSync(CACHE, { recursive: true, force: true });
    renameSync(join(dl, "out"), CACHE);
  } finally {
    rmSync(dl, { recursive: true, force: true });
  }
}

const INIT = `#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_console; do insmod /mod/$m.ko; done
echo "stand-in init: modules loaded"
case "$(cat /proc/cmdline)" in *silent*) echo "stand-in init: staying silent"; exec sleep 100000;; esac
case "$(cat /proc/cmdline)" in *flood*) head -c 300000 /dev/zero | tr '\\0' x;; esac
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = org.pyro.agent ] && dev=/dev/\${p##*/}; done
echo "stand-in init: agent port $dev"
exec /bin/pyro-agent serve --fd 3 3<>$dev
`;

function makeInitrd(dir: string): string {
  const root = join(dir, "ird");
  for (const d of ["bin", "dev", "proc", "sys", "mod"]) mkdirSync(join(root, d), { recursive: true });
  copyFileSync("/bin/busybox", join(root, "bin", "busybox"));
  copyFileSync(AGENT, join(root, "bin", "pyro-agent"));
  chmodSync(join(root, "bin", "pyro-agent"), 0o755);
  for (const t of ["sh", "mount", "insmod", "sleep", "cat", "head", "tr", "uname", "true"]) symlinkSync("busybox", join(root, "bin", t));
  for (const m of readdirSync(join(CACHE, "mod"))) copyFileSync(join(CACHE, "mod", m), join(root, "mod", m));
  writeFileSync(join(root, "init"), INIT, { mode: 0o755 });
  const out = join(dir, "init.cpio");
  const r = spawnSync("sh", ["-c", `cd ${root} && find . | cpio -o -H newc --quiet > ${out}`]);
  assert.equal(r.status, 0);
  return out;
}

/** tsc_early_khz from /proc/cpuinfo (os.cpus() reads 0 MHz on this kind of VM): without it TCG boots hang. */
function khz(): number {
  const m = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync("/proc/cpuinfo", "utf8"));
  return Math.round(Number(m?.[1] ?? "2000") * 1000);
}

interface Run {
  child: ChildProcess;
  sock: string;
  consolePath: string;
  ready: Promise<string>;
  exit: Promise<number | null>;
  stderr: () => string;
}

let seq = 0;
function boot(o: { fd?: boolean; append?: string; noInitrd?: boolean; extra?: string[]; bootTimeoutMs?: number } = {}): Run {
  const dir = join(work, `q${++seq}`);
  mkdirSync(dir);
  const sock = join(dir, "vmm.sock");
  const gsock = join(dir, "guest.sock");
  const consolePath = join(dir, "console.log");
  const qemu = [
    QEMU, "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config",
    "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", vmlinux,
    ...(o.noInitrd ? [] : ["-initrd", initrd]),
    "-append", `console=ttyS0 quiet reboot=t panic=-1 tsc_early_khz=${khz()} tsc=reliable ${o.append ?? ""}`,
    "-device", "virtio-serial-device",
    "-chardev", o.fd ? "socket,id=agent,fd=4" : `socket,id=agent,path=${gsock},server=on,wait=off`,
    "-device", "virtserialport,chardev=agent,name=org.pyro.agent",
  ];
  const child = spawn(
    AGENT,
    ["vmm", "--listen", sock, "--guest", o.fd ? "fd:4" : `unix:${gsock}`, "--ready-fd", "3", "--console", consolePath,
      "--boot-timeout-ms", String(o.bootTimeoutMs ?? 60000), "--die-with-parent", ...(o.extra ?? []), "--", ...qemu],
    { stdio: ["ignore", "ignore", "pipe", "pipe"] },
  );
  vmms.push(child);
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const ready = new Promise<string>((resolve) => {
    let text = "";
    const s = child.stdio[3] as NodeJS.ReadableStream;
    s.on("data", (b: Buffer) => (text += b.toString()));
    s.on("end", () => resolve(text));
  });
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, sock, consolePath, ready, exit, stderr: () => err };
}

async function qemuChild(vmmPid: number): Promise<number> {
  let kids: number[] = [];
  for (let i = 0; i < 100 && kids.length === 0; i++) {
    kids = readFileSync(`/proc/${vmmPid}/task/${vmmPid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
    if (kids.length === 0) await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(kids.length, 1);
  // The vmm execs qemu right after the fork.
  for (let i = 0; i < 100 && !readFileSync(`/proc/${kids[0]}/cmdline`, "utf8").startsWith("qemu"); i++)
    await new Promise((r) => setTimeout(r, 20));
  assert.match(readFileSync(`/proc/${kids[0]}/cmdline`, "utf8"), /^qemu-system-x86_64\0/);
  return kids[0]!;
}

const gone = (pid: number) => !existsSync(`/proc/${pid}`) || /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));

before(() => {
  if (skip) return;
  const r = spawnSync("make", ["-C", join(ROOT, "guest")], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  fetchKernel();
  vmlinux = join(CACHE, "vmlinux");
  work = mkdtempSync(join(tmpdir(), "pyro-vmm-qemu-"));
  initrd = makeInitrd(work);
});

after(async () => {
  for (const c of vmms) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await Promise.all(vmms.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.on("exit", r)) : null)));
  if (work) rmSync(work, { recursive: true, force: true });
});

for (const fd of [false, true]) {
  test(`qemu through the vmm (${fd ? "socketpair as -chardev socket,fd=N" : "qemu's chardev socket path"}): ready, guest kernel, concurrent clients, SHUTDOWN`, { skip, timeout: 120_000 }, async () => {
    const t0 = Date.now();
    const r = boot({ fd });
    assert.equal(await r.ready, "R", r.stderr());
    const bootMs = Date.now() - t0;
    const q = await qemuChild(r.child.pid!);
    const log = readFileSync(r.consolePath, "utf8");
    assert.match(log, /stand-in init: modules loaded/);
    assert.match(log, /agent port \/dev\/vport\d+p\d+/);
    const cs = await Promise.all([0, 1, 2].map(() => AgentClient.connect(r.sock)));
    const outs = await Promise.all(
      cs.map(async (c) => {
        let out = "";
        const res = await c.exec({ argv: ["uname", "-r"], env: {}, cwd: "", timeoutMs: 0, onStdout: (b) => void (out += b.toString()) }).result;
        assert.deepEqual(res, { kind: "exited", value: 0, timed_out: false, killed: false });
        return out.trim();
      }),
    );
    const host = spawnSync("uname", ["-r"], { encoding: "utf8" }).stdout.trim();
    for (const o of outs) {
      assert.match(o, /-cloud-amd64$/);
      assert.notEqual(o, host, "the guest's kernel, not the host's");
    }
    await Promise.all(cs.map((c) => c.ping()));
    await cs[0]!.shutdown();
    for (const c of cs) c.close();
    // The agent (PID 1 here) exits, the kernel panics, qemu -no-reboot exits 0.
    assert.equal(await r.exit, 0, r.stderr());
    assert.ok(gone(q), "qemu is gone");
    assert.ok(!existsSync(r.sock));
    console.log(`# boot to ready through the vmm: ${bootMs} ms`);
  });
}

test("qemu: the console is capped while the guest floods it", { skip, timeout: 120_000 }, async () => {
  const r = boot({ append: "flood", extra: ["--console-max", "65536"] });
  assert.equal(await r.ready, "R", r.stderr());
  const log = readFileSync(r.consolePath, "utf8");
  assert.ok(log.length <= 65536 + 100, `console log ${log.length} bytes`);
  assert.match(log, /console output past 65536 bytes is not kept/);
  const q = await qemuChild(r.child.pid!);
  r.child.kill("SIGKILL");
  await r.exit;
  for (let i = 0; i < 100 && !gone(q); i++) await new Promise((res) => setTimeout(res, 50));
  assert.ok(gone(q), "kill -9 of the vmm leaves no qemu");
});

test("qemu: a guest that never opens the agent port: the boot timeout fires, qemu is killed", { skip, timeout: 120_000 }, async () => {
  const r = boot({ append: "silent", bootTimeoutMs: 8000 });
  const q = await qemuChild(r.child.pid!);
  const line = await r.ready;
  assert.match(line, /^Ethe guest agent did not answer within 8000 ms \(no HELLO_ACK\)/);
  assert.match(line, /staying silent/, "the console's last lines are in the error");
  assert.equal(await r.exit, 1);
  assert.ok(gone(q) && !existsSync(r.sock));
});

test("qemu: a kernel that panics (no initramfs): 'E' with the panic from the console", { skip, timeout: 120_000 }, async () => {
  const r = boot({ noInitrd: true });
  const line = await r.ready;
  assert.match(line, /^Ethe VMM exited with status 0 during boot/);
  assert.match(line, /Kernel panic - not syncing: VFS: Unable to mount root fs/);
  assert.equal(await r.exit, 1);
});
