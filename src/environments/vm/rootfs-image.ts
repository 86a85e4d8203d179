import { spawn } from "node:child_process";
import { chownSync, closeSync, constants, lstatSync, openSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { checkDisk } from "../builders/common.js";
import { PyroError } from "../../core/errors.js";
import { findExecutable } from "../../drivers/availability.js";

/**
 * The VM's read-only root disk: an ext4 image of the environment's rootfs,
 * made by `mkfs.ext4 -d` (no root, no loop mount).
 *
 * Ownership: mkfs.ext4 copies the owners it sees. On the host the tree
 * belongs to the uid sandboxes run as (the sandbox uid as root, the user
 * otherwise), which a namespace sandbox sees as its root; in the VM root
 * must own it too. So mkfs.ext4 runs in a user namespace that maps the
 * tree's owner to 0 (`unshare --user --map-root-user`, as that owner: the
 * mapping a process may write for itself, with no newuidmap). As root, the
 * tree's owner cannot enter the private environments directory, so the
 * rootfs and the image are handed to mkfs.ext4 as open descriptors
 * (/proc/self/fd/N) opened by us beforehand. Modes are copied as they are:
 * the tree's set-id bits are already stripped.
 */

export interface ImageSize {
  size_mib: number;
  inodes: number;
}

/** Content rounded to 4 KiB blocks, plus 25% and 64 MiB of headroom; inodes for every entry plus 25%. */
export function imageSizeFor(root: string): ImageSize {
  let bytes = 0;
  let entries = 1;
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      const st = lstatSync(p);
      entries++;
      bytes += Math.ceil(st.size / 4096) * 4096 + (st.isDirectory() ? 4096 : 0);
      if (st.isDirectory()) stack.push(p);
    }
  }
  const MiB = 1024 * 1024;
  return { size_mib: Math.ceil((bytes * 1.25 + 64 * MiB) / MiB), inodes: Math.ceil(entries * 1.25) + 1024 };
}

export interface ImageBuild extends ImageSize {
  /** The host uid:gid that became 0:0 in the image. */
  mapped_from: { uid: number; gid: number };
}

/** Builds `image` (a new file in a directory of ours) from `rootfs`. */
export async function buildRootfsImage(rootfs: string, image: string, options: { signal?: AbortSignal; /** Where mkfs.ext4 is (default: found on PATH and in the sbin directories). */ mkfs?: string } = {}): Promise<ImageBuild> {
  const mkfs = findExecutable(options.mkfs ?? "mkfs.ext4");
  if (!mkfs) {
    throw new PyroError("driver_unavailable", "mkfs.ext4 is not installed: VM drivers need it to make the root disk image.", { hint: "Install e2fsprogs (apt-get install e2fsprogs)." });
  }
  const owner = lstatSync(rootfs);
  const me = process.getuid?.() ?? 0;
  const size = imageSizeFor(rootfs);
  // setpriv sets the parent-death signal after it changes uid (a uid change clears it): mkfs.ext4 dies with us, even on kill -9.
  let wrap: string[];
  if (owner.uid === me && me === 0) wrap = ["setpriv", "--pdeathsig", "KILL", "--"];
  else if (owner.uid === me) wrap = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--user", "--map-root-user", "--"];
  else if (me === 0) wrap = ["setpriv", "--pdeathsig", "KILL", "--reuid", String(owner.uid), "--regid", String(owner.gid), "--clear-groups", "--", "unshare", "--user", "--map-root-user", "--"];
  else {
    throw new PyroError("invalid_state", `The rootfs ${rootfs} belongs to uid ${owner.uid}, not to this user (${me}): its image would not map it to root.`, {
      hint: "Run pyro as the user that pulled the environment, or remove it (pyro env prune --all) and pull it again.",
    });
  }
  for (const tool of new Set(wrap.filter((w) => w === "unshare" || w === "setpriv"))) {
    if (!findExecutable(tool)) throw new PyroError("driver_unavailable", `${tool} is not installed: it is needed to give the root disk image root-owned files.`, { hint: "Install util-linux." });
  }

  checkDisk(dirname(image), size.size_mib * 1024 * 1024, `the root image of ${rootfs}`);
  const imgFd = openSync(image, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
  let dirFd: number | null = null;
  try {
    dirFd = openSync(rootfs, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    // The owner must be able to write the image it is handed through /proc/self/fd; it is given back afterwards.
    if (owner.uid !== me) chownSync(image, owner.uid, owner.gid);
    const args = ["-q", "-F", "-b", "4096", "-N", String(size.inodes), "-L", "pyro-root", "-d", "/proc/self/fd/4", "/proc/self/fd/3", `${size.size_mib}M`];
    await run([...wrap, mkfs, ...args], [imgFd, dirFd], options.signal);
    if (me === 0) chownSync(image, 0, 0);
  } finally {
    closeSync(imgFd);
    if (dirFd !== null) closeSync(dirFd);
  }
  return { ...size, mapped_from: { uid: owner.uid, gid: owner.gid } };
}

/** Runs argv with `fds` as its descriptors 3, 4, ...; killed on abort; its output kept for the error. */
function run(argv: string[], fds: number[], signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new PyroError("cancelled", "The root image build was cancelled."));
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe", ...fds] });
    let output = "";
    const keep = (d: Buffer) => (output = (output + d.toString("utf8")).slice(-4000));
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    const onAbort = () => child.kill("SIGKILL");
    signal?.addEventListener("abort", onAbort, { once: true });
    child.on("error", (error) => {
      signal?.removeEventListener("abort", onAbort);
      reject(new PyroError("environment_build_failed", `Could not run ${argv[0]}: ${error.message}`, { hint: "Install e2fsprogs and util-linux." }));
    });
    child.on("close", (code, sig) => {
      signal?.removeEventListener("abort", onAbort);
      if (signal?.aborted) return reject(new PyroError("cancelled", "The root image build was cancelled."));
      if (code === 0) return resolve();
      const last = output.trim().split("\n").slice(-3).join(" | ");
      const hint = /No space left/i.test(output)
        ? "Free disk space in the cache directory and try again."
        : /unshare|uid_map|Operation not permitted/i.test(output)
          ? "User namespaces are needed to build the image (sysctl kernel.unprivileged_userns_clone=1, or run as root)."
          : "Run the same mkfs.ext4 by hand to see why; PYRO_DEBUG=1 shows more.";
      reject(new PyroError("environment_build_failed", `mkfs.ext4 failed (${code !== null ? `exit ${code}` : `signal ${sig}`}): ${last}`, { hint, details: { argv, output } }));
    });
  });
}
