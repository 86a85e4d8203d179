import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

/**
 * Limits for an unprivileged user whose own cgroup is not writable (no
 * delegation to pyro's process), through the one thing such a user usually
 * has: their systemd user manager. Each sandbox starts inside a transient
 * scope (`systemd-run --user --scope`) whose MemoryMax, TasksMax and
 * CPUQuota systemd writes into a cgroup v2 group of its own, and which it
 * collects once the sandbox's last process is gone (kill -9 of pyro leaves
 * no unit: the kernel kills the sandbox's processes with its init, then the
 * scope is empty). Used only where a probe proved, on this host, that a scope
 * can be made, that it is a cgroup v2 group, and that the file descriptors
 * bwrap reads are passed through; which controllers the scope has decides
 * which limits it holds, and the status says exactly those.
 */
export interface ScopeSupport {
  usable: boolean;
  /** Controllers the user manager can apply in a scope (memory, pids, cpu), when usable. */
  controllers: string[];
  /** Why scopes are not used (null when they are). */
  reason: string | null;
}

const CGROUP_ROOT = "/sys/fs/cgroup";
let cached: ScopeSupport | null = null;

/** PYRO_SYSTEMD_SCOPE=0 turns scopes off (a host whose user manager misbehaves). */
function disabled(): boolean {
  return process.env.PYRO_SYSTEMD_SCOPE === "0";
}

/** The probe's script: inside a scope, says whether fd 3 arrived, its cgroup, and that cgroup's controllers. */
const PROBE = 'if [ -e /proc/self/fd/3 ]; then echo fd3; fi; c=$(sed -n "s/^0:://p" /proc/self/cgroup); echo "cgroup $c"; echo "controllers $(cat /sys/fs/cgroup$c/cgroup.controllers 2>/dev/null)"';

/** Reads what the probe printed: usable only with fd 3 passed and a scope's own v2 group. */
export function parseProbe(out: string): ScopeSupport {
  const cgroup = /^cgroup (.*)$/m.exec(out)?.[1] ?? "";
  if (!/^fd3$/m.test(out)) return { usable: false, controllers: [], reason: "systemd-run --user --scope does not pass file descriptors through here" };
  if (!/\.scope$/.test(cgroup)) return { usable: false, controllers: [], reason: `a systemd user scope did not get a cgroup v2 group of its own (it ran in "${cgroup}")` };
  const controllers = (/^controllers (.*)$/m.exec(out)?.[1] ?? "").split(/\s+/).filter((c) => ["memory", "pids", "cpu"].includes(c));
  if (!controllers.length) return { usable: false, controllers: [], reason: "the systemd user manager has no memory, pids or cpu controller delegated to it" };
  return { usable: true, controllers, reason: null };
}

/** Whether sandboxes can get their limits from a systemd user scope here (probed once per process). */
export function userScopeSupport(): ScopeSupport {
  if (cached) return cached;
  if (disabled()) return (cached = { usable: false, controllers: [], reason: "systemd user scopes are turned off (PYRO_SYSTEMD_SCOPE=0)" });
  if (process.getuid?.() === 0) return (cached = { usable: false, controllers: [], reason: "not used as root (root makes its own groups)" });
  if (!existsSync(join(CGROUP_ROOT, "cgroup.controllers"))) return (cached = { usable: false, controllers: [], reason: "no cgroup v2 hierarchy (systemd user scopes need one)" });
  const r = spawnSync("systemd-run", ["--user", "--scope", "--quiet", "--collect", "-p", "TasksMax=64", "--", "/bin/sh", "-c", PROBE], {
    encoding: "utf8",
    timeout: 10_000,
    stdio: ["ignore", "pipe", "pipe", "pipe"],
  });
  if (r.error || r.status !== 0) {
    const why = r.error ? (r.error as NodeJS.ErrnoException).code === "ENOENT" ? "systemd-run is not installed" : r.error.message : (r.stderr || "").trim().split("\n")[0] || `exit ${r.status}`;
    return (cached = { usable: false, controllers: [], reason: `no systemd user manager to make scopes (${why})` });
  }
  return (cached = parseProbe(r.stdout));
}

/** systemd's words for a sandbox's limits, for the controllers the scope has. */
export function scopeProperties(limits: { mem_mib: number; vcpu_count: number; pids_max: number }, controllers: string[]): string[] {
  const props: string[] = [];
  if (controllers.includes("memory")) props.push(`MemoryMax=${limits.mem_mib}M`, "MemorySwapMax=0");
  if (controllers.includes("pids")) props.push(`TasksMax=${limits.pids_max}`);
  if (controllers.includes("cpu")) props.push(`CPUQuota=${limits.vcpu_count * 100}%`);
  return props.flatMap((p) => ["-p", p]);
}

/**
 * The command that starts FILE ARGS inside a new scope named after the
 * sandbox. systemd-run registers the scope with its own pid and then execs
 * FILE, so the spawned pid is FILE's and its fds are FILE's.
 */
export function scopeCommand(id: string, limits: { mem_mib: number; vcpu_count: number; pids_max: number }, controllers: string[], file: string, args: string[]): { file: string; args: string[] } {
  // Unit names must be unique: the pid and time keep a retry's scope apart from a dying one of the same sandbox.
  const unit = `pyro-${id.replace(/_/g, "-")}-${process.pid}-${Date.now().toString(36)}.scope`;
  return { file: "systemd-run", args: ["--user", "--scope", "--quiet", "--collect", `--unit=${unit}`, ...scopeProperties(limits, controllers), "--", file, ...args] };
}

/** The cgroup v2 directory a process runs in, when that is a scope (null otherwise, or when it is gone). */
export function scopeDirOf(pid: number): string | null {
  try {
    const path = /^0::(.*)$/m.exec(readFileSync(`/proc/${pid}/cgroup`, "utf8"))?.[1];
    return path && path.endsWith(".scope") ? join(CGROUP_ROOT, path) : null;
  } catch {
    return null;
  }
}

/** Which limits a scope's group really holds, read back from its files (a property systemd could not apply leaves "max"). */
export function scopeHolds(dir: string): { memory: boolean; pids: boolean; cpu: boolean } {
  const read = (f: string) => {
    try {
      return readFileSync(join(dir, f), "utf8").trim();
    } catch {
      return "max";
    }
  };
  return { memory: read("memory.max") !== "max", pids: read("pids.max") !== "max", cpu: !read("cpu.max").startsWith("max") };
}
