import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, closeSync, constants, existsSync, fchmodSync, fchownSync, fstatSync, lstatSync, mkdirSync, openSync, readSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { PyroError } from "../../core/errors.js";
import { ensureDir } from "../../util/fsutil.js";
import type { SandboxOwner } from "../../util/sandbox-user.js";
import { findExecutable } from "../availability.js";
import { checkDiskRoom } from "../disk-room.js";

/**
 * The host-side files every VM driver (qemu, firecracker) makes for a VM,
 * and how: the VM's directory is pyro's (root's as root), the files the
 * VMM writes (its console log, a task's disk) are made by pyro and handed
 * to the VM's uid by descriptor, and only the sockets' directory is the
 * VM's. A root pyro that made files where the VM's uid could plant a link
 * would write where that uid chose (found by an attack on the qemu driver:
 * mkfs through a planted symlink overwrote and chowned a root file).
 */

export interface VmDirPaths {
  /** The VM's directory, pyro's own. */
  vmDir: string;
  /** The VM's sockets (the agent's, the VMM's control socket): the only directory the VM's uid owns. */
  runDir: string;
  /** The console log the supervisor appends to (capped). */
  console: string;
}

/**
 * The paths every VM of a sandbox directory has: `vm/` (pyro's), `vm/run/`
 * (the VM's), the supervisor's socket, the console log and a task's disk
 * (not the namespace driver's disk.img: what a guest kernel wrote raw is
 * never mounted by the host's). Each driver adds its own sockets.
 */
export function vmDirPaths(dir: string): VmDirPaths & { socket: string; disk: string } {
  const vmDir = join(dir, "vm");
  const runDir = join(vmDir, "run");
  return { vmDir, runDir, socket: join(runDir, "agent.sock"), console: join(vmDir, "console.log"), disk: join(vmDir, "disk.img") };
}

/** Unix socket paths are limited to 108 bytes (sun_path, its NUL included). */
const MAX_SOCKET_PATH = 107;

/** Refuses a VM whose sockets (the supervisor's, the VMM's control sockets) would not fit in a sun_path. */
export function checkSocketPaths(paths: string[]): void {
  for (const p of paths) {
    if (p.length > MAX_SOCKET_PATH) {
      throw new PyroError("invalid_argument", `The state directory path is too long for a unix socket (${p.length} bytes).`, { hint: "Set PYRO_STATE_DIR to a shorter directory." });
    }
  }
}

/** Hands a file pyro made to the VM's uid, by descriptor (never following a name). */
export function giveTo(path: string, owner: SandboxOwner | null): void {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) throw new PyroError("sandbox_failed", `${path} is not a regular file.`, { hint: "Delete the VM or task and create it again." });
    if (owner) fchownSync(fd, owner.uid, owner.gid);
    fchmodSync(fd, 0o600);
  } finally {
    closeSync(fd);
  }
}

/** The VM's directory, pyro's own (a leftover one the VM's uid owned, from an older release, is taken back). */
export function prepareVmDir(paths: VmDirPaths, owner: SandboxOwner | null): void {
  ensureDir(paths.vmDir, 0o755);
  const st = lstatSync(paths.vmDir);
  if (!st.isDirectory()) throw new PyroError("sandbox_failed", `${paths.vmDir} is not a directory.`, { hint: "Delete the VM or task and create it again." });
  if (st.uid !== (process.getuid?.() ?? st.uid)) chownSync(paths.vmDir, process.getuid!(), process.getgid!());
  chmodSync(paths.vmDir, 0o755);
  // The sockets' directory is the VM's: made afresh on every boot.
  rmSync(paths.runDir, { recursive: true, force: true });
  mkdirSync(paths.runDir, { mode: 0o700 });
  if (owner) chownSync(paths.runDir, owner.uid, owner.gid);
  // The console log: appended to across boots (the supervisor caps it); made here, handed over by descriptor.
  if (!existsSync(paths.console)) closeSync(openSync(paths.console, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
  giveTo(paths.console, owner);
}

/**
 * A sandbox's writable disk: an empty ext4 file system, sparse, made once
 * and kept across reboots (the agent makes upper/ and work/ on it at first
 * boot). Made as a temp file and renamed, so a kill never leaves a
 * half-made disk that a later boot would take for a real one.
 */
export function ensureDataDisk(path: string, mib: number, owner: SandboxOwner | null): void {
  if (existsSync(path)) return;
  checkDiskRoom(path, mib);
  const mkfs = findExecutable("mkfs.ext4");
  if (!mkfs) throw new PyroError("driver_unavailable", "mkfs.ext4 is not installed: the VM drivers make each task's disk with it.", { hint: "apt-get install -y e2fsprogs" });
  const tmp = `${path}.tmp-${process.pid}`;
  const r = spawnSync(mkfs, ["-q", "-F", "-m", "0", "-L", "pyro-data", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp, `${mib}M`], { encoding: "utf8", env: { PATH: process.env.PATH } });
  if (r.status !== 0) {
    rmSync(tmp, { force: true });
    throw new PyroError("sandbox_failed", `Cannot make the VM's disk (${path}): ${(r.stderr || r.error?.message || "").trim()}`, { hint: "Check the free space of the state directory's file system." });
  }
  giveTo(tmp, owner);
  renameSync(tmp, path);
}

/** The last lines of a VM's console log, for an error message. */
export function consoleTail(consolePath: string, lines = 5): string {
  // The directory is the VM's own: never follow a link it put there, never read more than the tail.
  let fd = -1;
  try {
    fd = openSync(consolePath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) return "";
    const buf = Buffer.alloc(Math.min(4096, st.size));
    const n = readSync(fd, buf, 0, buf.length, Math.max(0, st.size - buf.length));
    return buf.subarray(0, n).toString("utf8").replace(/[^\x20-\x7e\n]/g, "").trim().split("\n").slice(-lines).join(" | ");
  } catch {
    return "";
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
