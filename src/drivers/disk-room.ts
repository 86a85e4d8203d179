import { statfsSync } from "node:fs";
import { dirname } from "node:path";
import { PyroError } from "../core/errors.js";

const MIB = 1024 * 1024;

/**
 * Refuses a sandbox disk image that the host's disk cannot hold. The image
 * is sparse, so disk_mib bounds what the sandbox writes only while the file
 * system under the image has that much room: a 1 TiB image on a disk with
 * 70 GiB free let a sandbox fill the host's disk (the state directory's,
 * often / or /home) long before its own ENOSPC. Checked when the image is
 * made, by every driver that makes one (the namespace driver's layer as
 * root, the VMs' data disk). Several images can still add up to more than
 * the free space together (docs/security.md, Known limits).
 */
export function checkDiskRoom(image: string, mib: number): void {
  const dir = dirname(image);
  const st = statfsSync(dir);
  const free = Number(st.bavail) * Number(st.bsize);
  if (mib * MIB <= free) return;
  const freeMib = Math.floor(free / MIB);
  throw new PyroError("insufficient_disk", `disk_mib ${mib} is more than the ${freeMib} MiB free on the file system of ${dir}: the sandbox's disk is a sparse file there, and filling it would fill the host's disk first.`, {
    hint: `Ask for a disk_mib of at most ${freeMib}, or free space there (or set PYRO_STATE_DIR to a directory on a larger disk).`,
    details: { disk_mib: mib, free_mib: freeMib, path: dir },
  });
}
