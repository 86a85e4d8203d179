import { availableParallelism } from "node:os";
import { PyroError } from "../core/errors.js";
import { DEFAULTS } from "../core/defaults.js";

/** The CPUs this process may run on (its affinity mask, not only the host's count). */
export function hostCpus(): number {
  return availableParallelism();
}

/**
 * Refuses a vcpu_count larger than the CPUs pyro may run on. The schemas
 * allow up to 64 (a big host's), so on a 2-core host `vcpu_count: 64` was
 * accepted and the result's limits said "cpu 64 vCPUs by cgroup v1": a
 * quota of 64 CPUs bounds nothing on 2, and a VM of 64 vCPUs on 2 cores is
 * slower than one of 2 (its vCPUs take turns, and a guest kernel spinning on
 * a lock held by a descheduled vCPU burns what the others get). The default
 * is never refused. Checked at create, before anything is made, on every
 * driver, like the memory limit (memory-room.ts).
 */
export function checkCpuRoom(vcpu_count: number): void {
  const host = hostCpus();
  if (vcpu_count <= Math.max(host, DEFAULTS.vcpu_count)) return;
  throw new PyroError("limit_exceeded", `vcpu_count ${vcpu_count} is more than the ${host} CPU${host === 1 ? "" : "s"} this host gives pyro: a limit of ${vcpu_count} CPUs would bound nothing, and a VM's extra vCPUs would only take turns on the same cores.`, {
    hint: `Ask for a vcpu_count of at most ${host}.`,
    details: { limit: "vcpu_count", requested: vcpu_count, host_cpus: host },
  });
}
