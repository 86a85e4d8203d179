import { totalmem } from "node:os";
import { PyroError } from "../core/errors.js";
import { DEFAULTS } from "../core/defaults.js";

const MIB = 1024 * 1024;

/** The host's RAM in MiB (MemTotal). */
export function hostMemoryMib(): number {
  return Math.floor(totalmem() / MIB);
}

/**
 * Refuses a sandbox whose memory limit, or whose RAM-backed writable layer,
 * is larger than the host's memory: such a limit keeps nothing. The schemas
 * allow up to 256 GiB (a big host's), so on a 24 GiB host a model's
 * `mem_mib: 262144` (with a one-shot run's tmpfs layer of `disk_mib`, RAM
 * too) was accepted, its limits said "memory 262144 MiB by cgroup v1", and
 * what it filled was the host's RAM: the kernel's OOM killer then picks a
 * host process, and a tmpfs's pages belong to no process it can kill.
 * The defaults are never refused (on a host smaller than them they mean what
 * they always did). Checked at create, before anything is made, on every
 * driver (a VM's guest RAM is mem_mib of the host's).
 */
export function checkMemoryRoom(shape: { mem_mib: number; ram_layer_mib: number | null }): void {
  const host = hostMemoryMib();
  const check = (what: "mem_mib" | "disk_mib", mib: number, fallback: number, why: string) => {
    if (mib <= Math.max(host, fallback)) return;
    throw new PyroError("limit_exceeded", `${what} ${mib} is more than this host's ${host} MiB of memory: ${why}, so it would bound nothing before the host's own memory ran out.`, {
      hint: `Ask for a ${what} of at most ${host}.`,
      details: { limit: what, requested_mib: mib, host_memory_mib: host },
    });
  };
  check("mem_mib", shape.mem_mib, DEFAULTS.mem_mib, "the sandbox's memory limit is in the host's RAM");
  if (shape.ram_layer_mib !== null) check("disk_mib", shape.ram_layer_mib, DEFAULTS.run_disk_mib, "a one-shot run's writable layer is a tmpfs, in the host's RAM");
}
