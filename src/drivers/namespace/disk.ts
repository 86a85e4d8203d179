import { execFile } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { PyroError } from "../../core/errors.js";
import type { SandboxOwner } from "../../util/sandbox-user.js";
import { findExecutable } from "../availability.js";
import { checkDiskRoom } from "../disk-room.js";

/**
 * The writable layer of a namespace sandbox, and what keeps its size
 * (disk_mib):
 * - "tmpfs": an ephemeral sandbox's layer is a tmpfs of disk_mib that the
 *   agent mounts inside (guest/nsinit.c); it dies with the sandbox.
 * - "ext4-image": a task's or persistent VM's, when pyro runs as root: a
 *   sparse ext4 image `disk.img` in the sandbox directory, made once, that
 *   `pyro-agent launch` loop-mounts in its private mount namespace
 *   (guest/launch.c). The qemu driver attaches the same file as the VM's
 *   writable disk: at its root, `upper/` and `work/`, owned by the sandbox
 *   uid.
 * - "checked": unprivileged, no loop mount: the directory `rw/` on the host
 *   disk, which pyro measures before and after each exec and push.
 */
export type LayerKind = "tmpfs" | "ext4-image" | "checked";

export const DISK_IMAGE = "disk.img";

export function layerKind(dir: string, ephemeral: boolean, owner: SandboxOwner | null): LayerKind {
  if (ephemeral) return "tmpfs";
  if (!owner) return "checked";
  // A layer an older release made as a directory keeps its content there (checked, like an unprivileged one).
  if (!existsSync(join(dir, DISK_IMAGE)) && layerHasContent(join(dir, "rw", "upper"))) return "checked";
  return "ext4-image";
}

function layerHasContent(upper: string): boolean {
  try {
    return readdirSync(upper).length > 0;
  } catch {
    return false;
  }
}

/**
 * Makes `dir`/disk.img once: a sparse ext4 file of `mib` MiB, no blocks
 * reserved for root (the sandbox uid gets all of it), inode tables and
 * journal left to read back as the zeros a sparse file holds (so an 8 GiB
 * image takes about 4 MiB of the host's disk), with `upper/` and `work/`
 * owned by the sandbox uid. Written under a temporary name and renamed, so
 * a kill mid-mkfs never leaves a half-made image under the real name.
 */
export async function ensureDiskImage(dir: string, mib: number, owner: SandboxOwner): Promise<void> {
  const image = join(dir, DISK_IMAGE);
  if (existsSync(image)) return;
  checkDiskRoom(image, mib);
  const mkfs = findExecutable("mkfs.ext4") ?? ["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"].find((p) => existsSync(p));
  if (!mkfs) {
    throw new PyroError("driver_unavailable", "Cannot find mkfs.ext4, which makes a task's disk image (disk_mib) when pyro runs as root.", {
      hint: "Install e2fsprogs (apt-get install -y e2fsprogs).",
    });
  }
  const tmp = join(dir, `${DISK_IMAGE}.tmp`);
  const seed = join(dir, "disk.seed");
  rmSync(tmp, { force: true });
  rmSync(seed, { recursive: true, force: true });
  try {
    for (const sub of ["", "upper", "work"]) {
      mkdirSync(join(seed, sub), { recursive: true, mode: 0o755 });
      chownSync(join(seed, sub), owner.uid, owner.gid);
    }
    const options = `root_owner=${owner.uid}:${owner.gid},lazy_itable_init=1,lazy_journal_init=1`;
    await new Promise<void>((done, fail) =>
      execFile(mkfs, ["-q", "-F", "-m", "0", "-E", options, "-d", seed, tmp, `${mib}M`], { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" }, timeout: 120_000 }, (error, _out, stderr) =>
        error
          ? fail(new PyroError("sandbox_failed", `Cannot make the task's ${mib} MiB disk image: ${String(stderr).trim() || error.message}`, { hint: "Check free space and that e2fsprogs works (`mkfs.ext4 -V`)." }))
          : done(),
      ),
    );
    // The task's files are in it: root's alone on the host, like the state directory (launch refuses anything looser).
    chmodSync(tmp, 0o600);
    renameSync(tmp, image);
  } finally {
    rmSync(tmp, { force: true });
    rmSync(seed, { recursive: true, force: true });
  }
}

/**
 * The loop devices whose backing file is this image (a sandbox's mount of
 * it, or one still being torn down). The kernel shows the backing file's
 * current path, so a directory renamed to trash is found under its new name.
 */
export function loopDevicesBacking(image: string): string[] {
  const want = resolve(image);
  const found: string[] = [];
  let names: string[];
  try {
    names = readdirSync("/sys/block").filter((n) => n.startsWith("loop"));
  } catch {
    return found;
  }
  for (const name of names) {
    try {
      const backing = readFileSync(`/sys/block/${name}/loop/backing_file`, "utf8").trim().replace(/ \(deleted\)$/, "");
      if (backing === want) found.push(`/dev/${name}`);
    } catch {
      /* not attached */
    }
  }
  return found;
}

/**
 * Waits until no loop device holds the image: after its sandbox's last
 * process is gone, the kernel unmounts the namespace's copy and the device
 * detaches itself (LO_FLAGS_AUTOCLEAR), a moment later. Two sandboxes must
 * never mount one image, so a start waits for this; so does a delete, so
 * that it returns with nothing left. False when one still holds it.
 */
export async function waitLoopReleased(image: string, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (!loopDevicesBacking(image).length) return true;
    if (Date.now() >= until) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}
