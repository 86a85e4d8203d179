/**
 * The parts of the firecracker driver's jailer path (src/drivers/firecracker/jailer.ts)
 * that run without a jailer, for real: the chroot made (hard links, copies,
 * the disk's link, nothing chowned) and removed, the gate that holds the
 * jailer until it is in the sandbox's cgroups (run here around `sh`, not
 * around a jailer: no jailer binary exists on this host, and nothing here
 * plays one), and the cleanup of a sandbox directory whose only live process
 * is one no argv names, as firecracker is once the jailer has exec'd it and
 * pyro was killed. A boot under a real jailer is test/vm/firecracker-driver.test.ts.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, renameSync, linkSync, lstatSync, symlinkSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import type { Readable } from "node:stream";
import { cgroupLayout, createSandboxCgroups, plannedCgroupDirs, removeSandboxCgroups } from "../../src/drivers/cgroups.js";
import { findExecutable } from "../../src/drivers/availability.js";
import { FirecrackerDriver, firecrackerPaths } from "../../src/drivers/firecracker/driver.js";
import { gatedJailerCommand, jailLayout, prepareChroot, removeJailRoot, spawnGate, supervisorWritable } from "../../src/drivers/firecracker/jailer.js";
import { launchStaged } from "../../src/drivers/launch.js";
import { giveTo, prepareVmDir } from "../../src/drivers/vm/files.js";
import { jailArgs, jailCommand } from "../../src/drivers/vm/jail.js";
import { isAlive, type ProcessIdentity } from "../../src/util/proc.js";
import { sandboxOwner } from "../../src/util/sandbox-user.js";

const root = process.getuid?.() === 0;
const skip = !root ? "the jailer path runs only as root (it makes cgroups and hard links for the sandbox uid)" : cgroupLayout().flavor === "none" ? `no cgroups to make here: ${cgroupLayout().reason}` : false;
const work = mkdtempSync(join(tmpdir(), "fc-jail-it-"));
const shm = existsSync("/dev/shm") ? mkdtempSync("/dev/shm/fc-jail-it-") : null;
after(() => {
  rmSync(work, { recursive: true, force: true });
  if (shm) rmSync(shm, { recursive: true, force: true });
});
let seq = 0;

function bootFiles(dir: string): { kernel: string; initramfs: string; root_image: string } {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const files = { kernel: join(dir, "vmlinux"), initramfs: join(dir, "initrd.img"), root_image: join(dir, "rootfs.ext4") };
  for (const p of Object.values(files)) writeFileSync(p, `content of ${p}`, { mode: 0o644 });
  return files;
}

function sandboxDir(): { dir: string; vmDir: string; id: string } {
  const id = `vm_${(++seq).toString(16).padStart(12, "0")}`;
  const dir = join(work, "state", id, "sandbox");
  const vmDir = join(dir, "vm");
  mkdirSync(vmDir, { recursive: true, mode: 0o755 });
  return { dir, vmDir, id };
}

const same = (a: string, b: string) => statSync(a).ino === statSync(b).ino && statSync(a).dev === statSync(b).dev;

test("the chroot: artifacts hard-linked and never chowned, copied where a link would let the sandbox uid write or cannot be made, the disk linked", { skip }, () => {
  const owner = sandboxOwner()!;
  const { vmDir, id } = sandboxDir();
  const boot = bootFiles(join(work, `cache${++seq}`));
  const disk = join(vmDir, "disk.img");
  writeFileSync(disk, "disk");
  giveTo(disk, owner);
  const layout = jailLayout(vmDir, "firecracker", id, boot, disk);
  prepareChroot(layout, owner);
  const inside = (p: string) => join(layout.chroot, p);
  for (const [src, jailed] of [[boot.kernel, "/vmlinux"], [boot.initramfs, "/initrd.img"], [boot.root_image, "/rootfs.ext4"]] as const) {
    assert.ok(same(src, inside(jailed)), `${jailed} is a hard link`);
    const st = statSync(src);
    assert.deepEqual([st.uid, st.mode & 0o777], [0, 0o644], "the cache's file is not chowned or chmodded through its link");
  }
  assert.ok(same(disk, inside("/disk.img")), "the disk is a hard link: the guest's writes reach it");
  assert.equal(statSync(inside("/disk.img")).uid, owner.uid);
  for (let d = join(layout.chroot, ".."); d.startsWith(layout.base); d = join(d, "..")) {
    const st = lstatSync(d);
    assert.deepEqual([st.isDirectory(), st.uid, st.mode & 0o777], [true, 0, 0o755], `${d} above root/ is pyro's`);
  }
  for (const d of ["", "dev", "dev/net", "run"]) {
    const st = lstatSync(join(layout.chroot, d));
    assert.deepEqual([st.isDirectory(), st.uid, st.gid, st.mode & 0o777], [true, owner.uid, owner.gid, 0o700], `root/${d} is already what the jailer makes it`);
  }

  // A file the sandbox uid could write is copied, not linked: a link would let firecracker write the cache's file.
  const theirs = bootFiles(join(work, `cache${++seq}`));
  giveTo(theirs.kernel, owner);
  const layout2 = jailLayout(vmDir, "firecracker", id, theirs, null);
  writeFileSync(join(layout.chroot, "stray"), "from an earlier boot");
  prepareChroot(layout2, owner);
  assert.ok(!existsSync(join(layout.chroot, "stray")), "the chroot is made afresh");
  assert.ok(!same(theirs.kernel, join(layout2.chroot, "vmlinux")), "copied");
  const copy = statSync(join(layout2.chroot, "vmlinux"));
  assert.deepEqual([copy.uid, copy.mode & 0o777], [0, 0o444]);
  assert.equal(readFileSync(join(layout2.chroot, "vmlinux"), "utf8"), `content of ${theirs.kernel}`);
  assert.ok(same(theirs.initramfs, join(layout2.chroot, "initrd.img")));
});

test("across file systems the artifacts are copied; the disk cannot be, and says so", { skip: skip || (!shm && "no /dev/shm to put files on another file system") }, () => {
  const owner = sandboxOwner()!;
  const { vmDir, id } = sandboxDir();
  assert.notEqual(statSync(shm!).dev, statSync(vmDir).dev, "/dev/shm is another file system");
  const boot = bootFiles(join(shm!, `cache${++seq}`));
  const layout = jailLayout(vmDir, "firecracker", id, boot, null);
  prepareChroot(layout, owner);
  for (const jailed of ["vmlinux", "initrd.img", "rootfs.ext4"]) {
    const st = statSync(join(layout.chroot, jailed));
    assert.notEqual(st.dev, statSync(shm!).dev);
    assert.deepEqual([st.uid, st.mode & 0o777], [0, 0o444]);
  }
  const disk = join(shm!, `disk${++seq}.img`);
  writeFileSync(disk, "disk");
  assert.throws(() => prepareChroot(jailLayout(vmDir, "firecracker", id, bootFiles(join(work, `cache${++seq}`)), disk), owner), (e: Error & { code?: string; hint?: string }) => {
    assert.equal(e.code, "sandbox_failed");
    assert.match(e.message, /Cannot hard-link the VM's disk .* \(EXDEV\): its writes must reach the disk itself/);
    assert.match(String(e.hint), /unset PYRO_JAILER/);
    return true;
  });
});

function readAll(stream: Readable): { text: () => string } {
  let text = "";
  stream.on("data", (d: Buffer) => (text += d.toString("utf8")));
  return { text: () => text };
}

test("the gate: nothing runs before its line, it is in the sandbox's cgroups from its first instruction, in a network namespace of its own, stderr on the console", { skip }, async () => {
  const { id } = sandboxDir();
  const cgroups = createSandboxCgroups(id, { mem_mib: 256, vcpu_count: 1, pids_max: 64 });
  try {
    const marker = join(work, `ran${++seq}`);
    const sh = "/bin/sh";
    const command = gatedJailerCommand(sh, "/usr/bin/unshare", [sh, "-c", `touch ${marker}; readlink /proc/self/ns/net; cat /proc/self/cgroup; echo on-stderr >&2`]);
    const noted: ProcessIdentity[] = [];
    const gate = spawnGate(command, cgroups.dirs, (p) => noted.push(p));
    assert.equal(noted.length, 1, "noted before anything else");
    const out = readAll(gate.console);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(!existsSync(marker), "held at the gate");
    assert.ok(isAlive(gate.identity));
    gate.go();
    assert.equal(await gate.exit, 0);
    await new Promise((r) => setTimeout(r, 50));
    const [ns, ...rest] = out.text().trim().split("\n");
    assert.match(ns!, /^net:\[\d+\]$/);
    assert.notEqual(ns, readlinkSync("/proc/self/ns/net"), "not the host's network namespace");
    for (const dir of cgroups.dirs) assert.ok(rest.some((l) => dir.endsWith(l.split(":").pop()!) && l.includes(`pyro-mcp/${id}`)), `in ${dir}: ${rest.join(" | ")}`);
    assert.ok(rest.includes("on-stderr"), "stderr goes where stdout goes (the console relay)");

    // Its creator dies before the line (kill -9 of pyro closes its end of fd 3): nothing starts.
    const marker2 = join(work, `ran${++seq}`);
    const held = spawnGate(gatedJailerCommand(sh, "/usr/bin/unshare", ["/usr/bin/touch", marker2]), cgroups.dirs, () => undefined);
    (held.child.stdio[3] as unknown as { destroy: () => void }).destroy();
    assert.equal(await held.exit, 125);
    assert.ok(!existsSync(marker2), "the gated command never ran");
  } finally {
    removeSandboxCgroups(cgroups.dirs);
  }
});

test("kill -9 of pyro once firecracker runs: a process no argv names, in the noted cgroups, in the chroot; the next cleanup kills it and removes the chroot and groups", { skip }, async () => {
  const owner = sandboxOwner()!;
  const { dir, vmDir, id } = sandboxDir();
  const layout = jailLayout(vmDir, "firecracker", id, bootFiles(join(work, `cache${++seq}`)), null);
  prepareChroot(layout, owner);
  // What a start writes before it spawns the jailer's gate: the cgroups it is about to make.
  writeFileSync(join(dir, "resources.json"), JSON.stringify({ cgroups: plannedCgroupDirs(id), processes: [] }));
  const cgroups = createSandboxCgroups(id, { mem_mib: 256, vcpu_count: 1, pids_max: 64 });
  // The jailer execs firecracker as /firecracker in the chroot: here a sleep through the same gate stands for whatever runs there.
  const gate = spawnGate(gatedJailerCommand("/bin/sh", "/usr/bin/unshare", ["/bin/sh", "-c", `cd ${layout.chroot} && exec sleep 600`]), cgroups.dirs, () => undefined);
  gate.go();
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(isAlive(gate.identity));
  assert.ok(!readFileSync(`/proc/${gate.identity.pid}/cmdline`, "utf8").includes(dir), "its argv names no sandbox directory");
  assert.equal(removeJailRoot(vmDir, cgroups.dirs), false, "a chroot with a live process in the sandbox's groups stays");
  assert.ok(existsSync(layout.chroot));

  await new FirecrackerDriver().cleanupDir(dir);
  assert.equal(await Promise.race([gate.exit.then(() => "exited"), new Promise((r) => setTimeout(() => r("alive"), 5_000))]), "exited");
  assert.ok(!existsSync(join(vmDir, "jail")), "the chroot is gone");
  for (const d of cgroups.dirs) assert.ok(!existsSync(d), `${d} is gone`);
  assert.ok(!existsSync(join(dir, "resources.json")));
});

test("a chroot the sandbox uid filled with links to host files: removing it follows none of them", { skip }, () => {
  const owner = sandboxOwner()!;
  const { vmDir, id } = sandboxDir();
  const layout = jailLayout(vmDir, "firecracker", id, bootFiles(join(work, `cache${++seq}`)), null);
  prepareChroot(layout, owner);
  // root/ is the sandbox uid's: what a hostile firecracker could leave there.
  rmSync(join(layout.chroot, "run"), { recursive: true });
  const outside = join(work, `host${++seq}`);
  mkdirSync(outside);
  writeFileSync(join(outside, "precious"), "host data");
  // Made here by root (the test's tmpdir is not the sandbox uid's to reach); who owns a link does not change what removing it follows.
  symlinkSync(outside, join(layout.chroot, "run"));
  symlinkSync(join(outside, "precious"), join(layout.chroot, "file"));
  mkdirSync(join(layout.chroot, "d"));
  symlinkSync(outside, join(layout.chroot, "d", "deeper"));
  linkSync(join(outside, "precious"), join(layout.chroot, "d", "hard"));
  assert.equal(removeJailRoot(vmDir, []), true);
  assert.ok(!existsSync(join(vmDir, "jail")));
  assert.equal(readFileSync(join(outside, "precious"), "utf8"), "host data", "nothing outside the chroot was touched");
});

test("the supervisor's jail on the jailer path: its sockets, the console and the chroot's run/, writable; nothing of root/; vm/run/v.sock reaches run/v.sock", { skip }, async () => {
  const owner = sandboxOwner()!;
  const { dir, vmDir, id } = sandboxDir();
  const paths = firecrackerPaths(dir);
  prepareVmDir(paths, owner);
  const layout = jailLayout(vmDir, "firecracker", id, bootFiles(join(work, `cache${++seq}`)), null);
  prepareChroot(layout, owner);
  symlinkSync(relative(paths.runDir, layout.vsock.host), paths.vsock);
  // The vsock socket as firecracker (the sandbox uid) would make it in its run/.
  const server = createServer((s) => s.end("from run/v.sock\n"));
  // Its path is past sun_path's 107 bytes here (as it may be for firecracker, which binds it relative to its chroot): bound short, then moved there.
  const short = join("/tmp", `fcj-${process.pid}-${++seq}.sock`);
  await new Promise<void>((r) => server.listen(short, r));
  renameSync(short, layout.vsock.host);
  try {
    const agent = join(new URL("../../", import.meta.url).pathname, "guest", "build", "pyro-agent");
    const writable = supervisorWritable(paths, layout);
    const probe = [
      `test -e ${layout.chroot}/vmlinux && echo SEES-ROOT`,
      `touch ${layout.runDir}/w && echo RUN-WRITABLE`,
      `echo x >> ${paths.console} && echo CONSOLE-WRITABLE`,
      `ls ${layout.chroot} | tr '\\n' ' '; echo`,
      `test -S ${paths.vsock} && echo VSOCK-LINK-RESOLVES`,
      `id -u`,
    ].join("; ");
    const jailed = jailArgs({ readOnly: [agent], writable, source: launchStaged }, { dieWithParent: true, kvm: false }, ["/bin/sh", "-c", probe]);
    const command = jailCommand(findExecutable("bwrap")!, jailed, { agent, owner, binds: [agent, ...writable], kvm: false });
    const child = spawn(command.file, command.args, { stdio: ["ignore", "pipe", "pipe", "pipe", "pipe", "pipe"] });
    for (const s of child.stdio as unknown as Array<{ on: (e: string, f: () => void) => void } | null>) s?.on("error", () => undefined);
    (child.stdio as unknown as Array<{ end: (s: string) => void }>)[5]!.end("go");
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
    await new Promise((r) => child.once("exit", r));
    const lines = out.trim().split("\n");
    assert.ok(!lines.includes("SEES-ROOT"), `root/'s files are not in the supervisor's jail: ${out} ${err}`);
    assert.ok(lines.includes("RUN-WRITABLE") && lines.includes("CONSOLE-WRITABLE"), `${out} ${err}`);
    assert.equal(lines[lines.length - 3]!.trim(), "run", "of the chroot, only run/");
    assert.ok(lines.includes("VSOCK-LINK-RESOLVES"), "vm/run/v.sock resolves, in the jail and as the sandbox uid, to the socket in the chroot's run/");
    assert.equal(lines[lines.length - 1], String(owner.uid));
  } finally {
    server.close();
  }
});
