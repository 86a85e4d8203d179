import type { Enforcement, LimitsInfo } from "./types.js";

/**
 * One place that turns what a driver could enforce into a LimitsInfo and its
 * one-line note, so that status, results, the CLI and doctor all say the
 * same thing: per limit, its value and what keeps it (or that nothing does).
 */
export interface LimitsInput {
  /** The cgroup flavor the sandbox's groups were made in, or "none". */
  cgroups: "cgroup-v1" | "cgroup-v2" | "none";
  /** Why there are no cgroups (shown when cgroups is "none"). */
  reason: string | null;
  /** Which of the group's limits hold, when not all do (a systemd user scope without every controller). */
  holds?: CgroupHolds;
  /** The group is a systemd user scope (systemd-run --user --scope), said in the note. */
  via_scope?: boolean;
  mem_mib: number;
  vcpu_count: number;
  pids_max: number;
  /** Whether the agent set RLIMIT_NPROC to pids_max (it always does in the namespace driver). */
  nproc_rlimit: boolean;
  disk_mib: number;
  disk: Extract<Enforcement, "tmpfs" | "ext4-image" | "checked" | "none">;
  /** Size of /dev/shm and /run each (a sized tmpfs), or null when unsized. */
  shm_mib: number | null;
}

export interface CgroupHolds {
  memory: boolean;
  pids: boolean;
  cpu: boolean;
}

export function buildLimits(i: LimitsInput): LimitsInfo {
  const cg: Enforcement = i.cgroups;
  const by = (what: keyof CgroupHolds): Enforcement => (i.holds && !i.holds[what] ? "none" : cg);
  const enforced_by = {
    memory: by("memory"),
    cpu: by("cpu"),
    pids: by("pids") !== "none" ? cg : i.nproc_rlimit ? ("rlimit" as const) : ("none" as const),
    disk: i.disk,
    shm: i.shm_mib !== null ? ("tmpfs" as const) : ("none" as const),
  };
  const limits: Omit<LimitsInfo, "note"> = {
    mechanism: i.cgroups,
    mem_mib: enforced_by.memory === "none" ? null : i.mem_mib,
    vcpu_count: enforced_by.cpu === "none" ? null : i.vcpu_count,
    pids_max: enforced_by.pids === "none" ? null : i.pids_max,
    disk_mib: enforced_by.disk === "none" ? null : i.disk_mib,
    shm_mib: i.shm_mib,
    enforced_by,
  };
  const note = describeLimits(limits, i.reason);
  return { ...limits, note: i.via_scope ? `${note}; the group is a systemd user scope (systemd-run --user --scope)` : note };
}

const BY: Record<Enforcement, string> = {
  "cgroup-v1": "cgroup v1",
  "cgroup-v2": "cgroup v2",
  rlimit: "RLIMIT_NPROC",
  tmpfs: "a tmpfs of that size",
  "ext4-image": "an ext4 image of that size",
  vm: "the VM's own size",
  checked: "pyro's check before each exec and push (not the kernel: one command can go past it; the next exec or push is then refused)",
  none: "nothing",
};

/** The note: what holds each limit, in the order a reader cares about. */
export function describeLimits(l: Omit<LimitsInfo, "note">, reason: string | null = null): string {
  const parts: string[] = [];
  const e = l.enforced_by;
  if (e.memory === "none" && e.cpu === "none") parts.push(`memory and CPU not limited${reason ? ` (${reason})` : ""}`);
  else if (e.memory === e.cpu) parts.push(`memory ${l.mem_mib} MiB and ${l.vcpu_count} vCPU by ${BY[e.memory]}`);
  else parts.push(e.memory === "none" ? `memory not limited; ${l.vcpu_count} vCPU by ${BY[e.cpu]}` : `memory ${l.mem_mib} MiB by ${BY[e.memory]}; CPU not limited`);
  if (e.pids === "none") parts.push("processes not limited");
  else parts.push(`${l.pids_max} processes by ${e.pids === "rlimit" ? "RLIMIT_NPROC" : e.pids === "vm" ? "the guest kernel's pids cgroup" : `${BY[e.pids]} and RLIMIT_NPROC`}`);
  if (e.disk === "none") parts.push("disk not limited");
  else {
    const ram = e.disk === "tmpfs" ? (e.memory === "vm" ? "; in the VM's RAM" : e.memory === "none" ? "; in RAM, which no memory limit caps here" : "; in RAM, counted in the memory limit") : "";
    parts.push(`disk ${l.disk_mib} MiB by ${BY[e.disk]}${e.disk === "checked" ? "" : ` (ENOSPC inside${ram})`}`);
  }
  if (l.shm_mib !== null) parts.push(`/dev/shm and /run ${l.shm_mib} MiB each by tmpfs size`);
  return parts.join("; ");
}

/**
 * A VM's limits: the VM is the boundary (its RAM, its vCPUs, the guest
 * kernel's pids cgroup, its disk or RAM layer), whatever the host's cgroups
 * add around qemu itself.
 */
export function vmLimits(i: { mem_mib: number; vcpu_count: number; pids_max: number; disk_mib: number; disk: "ext4-image" | "tmpfs"; shm_mib: number }): LimitsInfo {
  const limits: Omit<LimitsInfo, "note"> = {
    mechanism: "vm",
    mem_mib: i.mem_mib,
    vcpu_count: i.vcpu_count,
    pids_max: i.pids_max,
    disk_mib: i.disk_mib,
    shm_mib: i.shm_mib,
    enforced_by: { memory: "vm", cpu: "vm", pids: "vm", disk: i.disk, shm: "tmpfs" },
  };
  return { ...limits, note: describeLimits(limits) };
}
