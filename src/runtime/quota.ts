import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { MAX_MEASURE_DEPTH } from "../util/layer-tree.js";

const MIB = 1024 * 1024;

/**
 * The disk quota where the kernel cannot keep it (an unprivileged host, no
 * loop mount: limits.enforced_by.disk is "checked"): the writable layer's
 * blocks on the host disk, measured before each exec and push (and so after
 * the previous one), and the operation refused once they pass disk_mib. A
 * single command can still go past it; the next one is refused. A quota the
 * kernel keeps (tmpfs, ext4 image) costs nothing here.
 */
export async function checkDiskQuota(driver: Driver, dir: string, handle: SandboxHandle, what: string): Promise<void> {
  if (handle.limits.enforced_by?.disk !== "checked" || !handle.limits.disk_mib) return;
  const measured = await driver.checkedLayerBytes(dir);
  if (measured === null) return;
  if (measured.unmeasured !== null) {
    // Whatever it holds is out of the count: taken as over the quota, never as nothing.
    throw new PyroError(
      "limit_exceeded",
      `Cannot ${what}: the sandbox's writable layer holds a directory pyro cannot measure for its disk_mib (/${measured.unmeasured.slice(0, 200)}: nested more than ${MAX_MEASURE_DEPTH} directories deep, or unreadable), so its size is unknown (on this host the quota is checked by pyro before each exec and push, not kept by the kernel).`,
      {
        hint: "Delete the task and create a new one, or run pyro as root, where the kernel keeps the quota (an ext4 image: writes past it fail with ENOSPC).",
        details: { limit: "disk_mib", disk_mib: handle.limits.disk_mib, unmeasured: `/${measured.unmeasured}` },
      },
    );
  }
  const used = measured.bytes;
  if (used <= handle.limits.disk_mib * MIB) return;
  const usedMib = Math.ceil(used / MIB);
  throw new PyroError(
    "limit_exceeded",
    `Cannot ${what}: the sandbox's writable layer holds ${usedMib} MiB, over its disk_mib of ${handle.limits.disk_mib} MiB (on this host the quota is checked by pyro before each exec and push, not kept by the kernel).`,
    {
      hint: "Delete it and create a new one with a larger disk_mib, or run pyro as root, where the kernel keeps the quota (an ext4 image: writes past it fail with ENOSPC).",
      details: { limit: "disk_mib", disk_mib: handle.limits.disk_mib, used_bytes: used },
    },
  );
}
