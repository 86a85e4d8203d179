import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync, accessSync, constants } from "node:fs";
import { totalmem } from "node:os";
import { join } from "node:path";
import { PyroError } from "../core/errors.js";
import { identityOf, killTrees, type ProcessIdentity } from "../util/proc.js";

/**
 * Resource limits through cgroups, v1 (one hierarchy per controller, as on
 * this project's CI hosts) or v2 (the unified hierarchy of most desktops).
 * A sandbox's groups are made under the cgroup the calling process is in, so
 * limits nest inside whatever already limits pyro itself.
 */
export type CgroupFlavor = "v1" | "v2" | "none";

const ROOT = "/sys/fs/cgroup";
const CONTROLLERS = ["memory", "pids", "cpu"] as const;

export interface ControllerState {
  name: (typeof CONTROLLERS)[number];
  /** The controller exists where we would make groups. */
  available: boolean;
  /** We may make groups there. */
  writable: boolean;
}

/** Where sandbox groups go on this host; `pyro doctor` reports exactly this, so what it says is what runs. */
export interface Layout {
  flavor: CgroupFlavor;
  /** A cgroup2 tree is also mounted next to v1 controllers (hybrid hosts). */
  hybrid: boolean;
  /** v1: controller -> directory of our own cgroup in it; v2: "unified" -> our cgroup dir. */
  parents: Record<string, string>;
  controllers: ControllerState[];
  /** Why limits cannot be enforced (null when they can). */
  reason: string | null;
}

let cached: Layout | null = null;

function ownCgroupPaths(): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    for (const ctrl of (m[1] || "").split(",")) map.set(ctrl === "" ? "" : ctrl, m[2]!);
  }
  return map;
}

function writable(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds which cgroup hierarchy this host has and whether we may create groups in it. */
export function cgroupLayout(): Layout {
  if (cached) return cached;
  const own = ownCgroupPaths();
  const hybrid = existsSync(join(ROOT, "unified", "cgroup.procs"));
  if (CONTROLLERS.some((c) => existsSync(join(ROOT, c, "cgroup.procs")))) {
    const parents: Record<string, string> = {};
    const controllers = CONTROLLERS.map((name) => {
      const dir = join(ROOT, name, own.get(name) ?? "/");
      parents[name] = dir;
      const available = existsSync(join(dir, "cgroup.procs"));
      return { name, available, writable: available && writable(dir) };
    });
    const blocked = controllers.filter((c) => !c.writable).map((c) => c.name);
    cached = {
      flavor: blocked.length ? "none" : "v1",
      hybrid,
      parents: blocked.length ? {} : parents,
      controllers,
      reason: blocked.length ? `cgroup v1 controllers missing or not writable by this user: ${blocked.join(", ")}` : null,
    };
  } else if (existsSync(join(ROOT, "cgroup.controllers"))) {
    const dir = join(ROOT, own.get("") ?? "/");
    let enabled: string[] = [];
    try {
      enabled = readFileSync(join(dir, "cgroup.controllers"), "utf8").split(/\s+/);
    } catch {
      /* our group vanished: nothing is available */
    }
    const canWrite = writable(dir);
    const controllers = CONTROLLERS.map((name) => ({ name, available: enabled.includes(name), writable: canWrite && enabled.includes(name) }));
    const missing = controllers.filter((c) => !c.available).map((c) => c.name);
    const reason = missing.length ? `cgroup v2 controllers not delegated here: ${missing.join(", ")}` : canWrite ? null : `cgroup v2 group ${dir} is not writable by this user`;
    cached = { flavor: reason ? "none" : "v2", hybrid: false, parents: reason ? {} : { unified: dir }, controllers, reason };
  } else {
    cached = {
      flavor: "none",
      hybrid,
      parents: {},
      controllers: CONTROLLERS.map((name) => ({ name, available: false, writable: false })),
      reason: "no cgroup filesystem mounted at /sys/fs/cgroup",
    };
  }
  return cached;
}

export interface SandboxCgroups {
  dirs: string[];
  /** Where the limits live ("none": no group could be made, see reason). */
  flavor: "cgroup-v1" | "cgroup-v2" | "none";
  reason: string | null;
}

function write(dir: string, file: string, value: string, optional = false): void {
  try {
    writeFileSync(join(dir, file), value);
  } catch (error) {
    if (!optional) throw error;
  }
}

/**
 * The most processes all sandboxes may hold together: half of what the host
 * can number (the smaller of kernel.pid_max and kernel.threads-max; every
 * thread takes a pid of the host's, whatever namespace it is in). Each
 * sandbox's own cap is 1024, but a model may make as many sandboxes as it
 * likes: on a host whose pid_max is 32768 (the kernel's default), 32 of them
 * running a fork bomb each took every pid, and no process on the host
 * (root's included) could fork. Null when the host's numbers are unreadable.
 */
export function sharedPidsMax(): number | null {
  const read = (name: string) => {
    try {
      const v = Number(readFileSync(`/proc/sys/kernel/${name}`, "utf8").trim());
      return Number.isInteger(v) && v > 0 ? v : null;
    } catch {
      return null;
    }
  };
  const limits = [read("pid_max"), read("threads-max")].filter((v): v is number => v !== null);
  return limits.length ? Math.floor(Math.min(...limits) / 2) : null;
}

/**
 * Caps the group that holds every sandbox's (`pyro-mcp`) at sharedPidsMax,
 * unless something already set it lower. The kernel then refuses a fork
 * once the sandboxes together hold that many processes, in whichever
 * sandbox forks: the host keeps the other half.
 */
function capSharedPids(base: string): void {
  const cap = sharedPidsMax();
  if (cap === null) return;
  let current = "max";
  try {
    current = readFileSync(join(base, "pids.max"), "utf8").trim();
  } catch {
    return;
  }
  if (current === "max" || Number(current) > cap) write(base, "pids.max", String(cap), true);
}

const MIB = 1024 * 1024;

/**
 * The most memory all sandboxes may hold together, in bytes: the host's RAM
 * (MemTotal) less a reserve for the host itself, max(1 GiB, MemTotal / 8).
 * Each sandbox has its own limit (mem_mib, at most the host's RAM,
 * memory-room.ts), but a model may make as many sandboxes as it likes, each
 * under its limit and together past the host's RAM: the kernel's OOM killer
 * then picks among the host's processes (pyro's own, the user's, sshd).
 * With this cap on the group that holds every sandbox's, the kernel reclaims
 * and, failing that, OOM-kills inside that group only. The reserve: an idle
 * Debian host with pyro's node processes (a CLI, a daemon, an MCP server,
 * about 100-200 MiB each) takes some hundreds of MiB, and the kernel needs
 * room for its page tables, slab and page cache (the environments' rootfs
 * and images are read through it) so that the host does not thrash before the
 * cap is reached: 1 GiB at least, an eighth of a big host (3 GiB of 24). On a host
 * of 2 GiB or less the cap is at least 1 GiB (one default sandbox).
 * Null when MemTotal is unreadable.
 *
 * PYRO_TEST_SHARED_MEM_MIB (test only: test/integration/shared-memory.test.ts)
 * sets the cap in MiB instead, so a test can pass it with two small sandboxes.
 */
export function sharedMemoryMax(): number | null {
  const test = process.env.PYRO_TEST_SHARED_MEM_MIB;
  if (test && /^[1-9]\d{0,6}$/.test(test)) return Number(test) * MIB;
  const total = totalmem(); // MemTotal, as memory-room.ts reads it (0: unreadable)
  if (!total) return null;
  const reserve = Math.max(1024 * MIB, total / 8);
  // Whole MiB: the kernel keeps whole pages of what is written, and a figure it rounds would not read back as written.
  return Math.floor(Math.max(1024 * MIB, total - reserve) / MIB) * MIB;
}

/** A limit file's value in bytes (v1's "no limit" is a number near 2^63, v2's is "max"). */
function limitOf(dir: string, file: string): number | null {
  try {
    const v = readFileSync(join(dir, file), "utf8").trim();
    return v === "max" ? Infinity : Number(v);
  } catch {
    return null;
  }
}

/**
 * Caps the memory of the group that holds every sandbox's (`pyro-mcp`) at
 * sharedMemoryMax, unless something already set it lower (a limit of the
 * host's, or of whoever delegated the group, is never raised). v1: the
 * memory limit, then memory+swap where swap is accounted (not lower than the
 * memory limit, so first memory); v2: memory.max. Best effort, like the pids
 * cap: a write the kernel refuses (a group already using more, EBUSY) leaves
 * the sandboxes their own limits only.
 */
function capSharedMemory(base: string, flavor: "v1" | "v2"): void {
  const cap = sharedMemoryMax();
  if (cap === null) return;
  const files = flavor === "v1" ? ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] : ["memory.max"];
  for (const file of files) {
    const current = limitOf(base, file);
    if (current !== null && current > cap) write(base, file, String(cap), true);
  }
}

/**
 * Makes the groups for one sandbox with its limits set. Processes are added
 * with `addProcess` before the sandbox's init runs, so every process in the
 * sandbox is born inside the limits.
 */
export function createSandboxCgroups(id: string, limits: { mem_mib: number; vcpu_count: number; pids_max: number }): SandboxCgroups {
  const layout = cgroupLayout();
  const memBytes = String(limits.mem_mib * 1024 * 1024);
  const quota = String(limits.vcpu_count * 100_000);
  if (layout.flavor === "v1") {
    const dirs: string[] = [];
    try {
      for (const c of CONTROLLERS) {
        const dir = join(layout.parents[c]!, "pyro-mcp", id);
        mkdirSync(dir, { recursive: true });
        dirs.push(dir);
        if (c === "pids") capSharedPids(join(layout.parents[c]!, "pyro-mcp"));
        if (c === "memory") capSharedMemory(join(layout.parents[c]!, "pyro-mcp"), "v1");
        if (c === "memory") {
          write(dir, "memory.limit_in_bytes", memBytes);
          // With swap accounting, also cap memory+swap so the limit cannot be dodged by swapping.
          write(dir, "memory.memsw.limit_in_bytes", memBytes, true);
        } else if (c === "pids") write(dir, "pids.max", String(limits.pids_max));
        else {
          write(dir, "cpu.cfs_period_us", "100000");
          write(dir, "cpu.cfs_quota_us", quota);
        }
      }
    } catch (error) {
      removeSandboxCgroups(dirs);
      throw error;
    }
    return { dirs, flavor: "cgroup-v1", reason: null };
  }
  if (layout.flavor === "v2") {
    const base = join(layout.parents.unified!, "pyro-mcp");
    mkdirSync(base, { recursive: true });
    // Controllers must be enabled for children at each level we create.
    write(layout.parents.unified!, "cgroup.subtree_control", "+memory +pids +cpu", true);
    write(base, "cgroup.subtree_control", "+memory +pids +cpu", true);
    capSharedPids(base);
    capSharedMemory(base, "v2");
    const dir = join(base, id);
    mkdirSync(dir, { recursive: true });
    try {
      write(dir, "memory.max", memBytes);
      write(dir, "memory.swap.max", "0", true);
      write(dir, "pids.max", String(limits.pids_max));
      write(dir, "cpu.max", `${quota} 100000`);
    } catch (error) {
      removeSandboxCgroups([dir]);
      throw error;
    }
    return { dirs: [dir], flavor: "cgroup-v2", reason: null };
  }
  // The agent caps processes with RLIMIT_NPROC and sizes /dev/shm whatever the cgroups (guest/main.c, nsinit.c): the driver says so (limits.ts).
  return { dirs: [], flavor: "none", reason: layout.reason };
}

/**
 * The groups createSandboxCgroups(id) makes, without making them: a sandbox's
 * notes name them before they exist, so a creator killed between the mkdir
 * and its next step still leaves a note of what to remove.
 */
export function plannedCgroupDirs(id: string): string[] {
  const layout = cgroupLayout();
  if (layout.flavor === "v1") return CONTROLLERS.map((c) => join(layout.parents[c]!, "pyro-mcp", id));
  if (layout.flavor === "v2") return [join(layout.parents.unified!, "pyro-mcp", id)];
  return [];
}

/** The pids in the groups (processes that would keep rmdir failing with EBUSY). */
export function cgroupMembers(dirs: string[]): number[] {
  const pids = new Set<number>();
  for (const dir of dirs) {
    try {
      for (const p of readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n")) if (p.trim()) pids.add(Number(p));
    } catch {
      /* gone */
    }
  }
  return [...pids];
}

export function addProcess(dirs: string[], pid: number): void {
  for (const dir of dirs) writeFileSync(join(dir, "cgroup.procs"), String(pid));
}

/** Counts OOM kills in the sandbox's memory group (v1 memory.oom_control, v2 memory.events). */
export function oomKillCount(dirs: string[]): number {
  for (const dir of dirs) {
    for (const file of ["memory.events", "memory.oom_control"]) {
      try {
        const m = /^oom_kill (\d+)$/m.exec(readFileSync(join(dir, file), "utf8"));
        if (m) return Number(m[1]);
      } catch {
        /* not this flavor's file */
      }
    }
  }
  return 0;
}

/**
 * What a driver's cleanupDir does last with the groups its notes name: kills
 * whatever is still in them (a process that escaped every other search),
 * then removes them. Idempotent.
 */
export async function releaseSandboxCgroups(dirs: string[], waitMs = RELEASE_WAIT_MS): Promise<void> {
  const members = cgroupMembers(dirs).map(identityOf).filter((p): p is ProcessIdentity => p !== null);
  const exited = members.length ? await killTrees(members) : true;
  // Waited for here, asynchronously: a killed process that takes long to exit (blocked in the kernel, frozen)
  // holds its groups, and once the notes naming them are gone nothing would ever remove them. Members that
  // outlived killTrees' own 5 s wait are not waited for again (the reaper runs before every CLI command).
  const deadline = Date.now() + (exited ? waitMs : 0);
  for (;;) {
    removeSandboxCgroups(dirs);
    const left = dirs.filter((d) => existsSync(d));
    if (!left.length) return;
    if (Date.now() >= deadline) {
      throw new PyroError("busy", `The sandbox's cgroups are still in use by ${cgroupMembers(left).length} process(es) that did not exit after SIGKILL: ${left.join(", ")}.`, {
        hint: "They are removed once those processes end: the reaper (any pyro command, or `pyro vm reap`) tries again. A process stuck in the kernel (ps shows state D) is waiting on a device or mount.",
      });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** How long releaseSandboxCgroups waits for killed processes to leave their groups before it says they are busy. */
const RELEASE_WAIT_MS = 5_000;

/**
 * Removes the groups (they must be empty: the sandbox is dead). Idempotent.
 * A group still busy after about half a second is left in place, silently:
 * the callers are synchronous paths (a start's failure, a stop) whose
 * sandbox directory's notes still name the groups, and releaseSandboxCgroups
 * (every cleanupDir) removes them or says they are busy.
 */
export function removeSandboxCgroups(dirs: string[]): void {
  for (const dir of dirs) {
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        rmdirSync(dir);
        break;
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOENT") break;
        if (code !== "EBUSY") throw error;
        // Killed processes can take a moment to leave the group.
        const t = Date.now();
        while (Date.now() - t < 10) {
          /* brief spin: rmdir is retried synchronously so cleanup stays usable from exit handlers */
        }
      }
    }
  }
}
