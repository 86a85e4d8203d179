import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { cgroupLayout } from "../../src/drivers/cgroups.js";
import { removalsDone } from "../../src/runtime/store.js";
import { ROOT } from "./cli.js";
import { loopDevicesUnder } from "./sandbox.js";

/**
 * What the crash tests (test/integration/crash.test.ts) and the fault tier
 * (test/fault/) share: starting pyro so that it stops at a named point
 * (PYRO_TEST_PAUSE_AT, src/util/testhook.ts), killing it there with SIGKILL,
 * and checking, after a reap, that nothing of the state directory is left
 * but whole records and the sandboxes they name.
 */

export const PAUSED = /pyro-test: paused at (\S+) pid (\d+)/;

export interface Spawned {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Whether the test killed it for outliving its limit (a hang: a failure of whatever waited on it). */
  hung: () => boolean;
}

/** What a spawned pyro may live at most: a fault round's daemon or server lives for seconds; more is a hang. */
const SPAWN_LIMIT_MS = 180_000;
/** How long a process's output may stay open after it exited (a child of it holding its pipes) before `exited` resolves anyway. */
const DRAIN_MS = 2_000;
/** Every spawned pyro still running: killed when the test file's process exits, so none outlives it (and holds the runner). */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) killPid(child.pid ?? 0);
});

/**
 * Starts the built `pyro ARGS` with its own stdio pipes. `exited` always
 * settles: a process alive past `limitMs` is killed (and `hung()` says so),
 * and one whose pipes a child of it still holds counts as exited soon after
 * its own exit.
 */
export function spawnPyro(args: readonly string[], env: NodeJS.ProcessEnv, stdin: "ignore" | "pipe" = "ignore", limitMs = SPAWN_LIMIT_MS): Spawned {
  const child = spawn(process.execPath, ["dist/pyro.cjs", ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: [stdin, "pipe", "pipe"] });
  running.add(child);
  let out = "";
  let err = "";
  let hung = false;
  child.stdout!.on("data", (d: Buffer) => (out += d.toString("utf8")));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
  const limit = setTimeout(() => {
    hung = true;
    killPid(child.pid ?? 0);
  }, limitMs);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("close", (code, signal) => resolve({ code, signal }));
    child.once("exit", (code, signal) => {
      running.delete(child);
      clearTimeout(limit);
      setTimeout(() => resolve({ code, signal }), DRAIN_MS).unref();
    });
  });
  return { child, stdout: () => out, stderr: () => err, exited, hung: () => hung };
}

/** Resolves with the pid that said it paused (the process itself, or a daemon), or null if the process ended first. */
export function pausedPid(s: Spawned, timeoutMs = 30_000, from: () => string = s.stderr): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const timer = setInterval(check, 5);
    const deadline = Date.now() + timeoutMs;
    let ended = false;
    void s.exited.then(() => (ended = true));
    function check() {
      const m = PAUSED.exec(from());
      if (m) {
        clearInterval(timer);
        resolve(Number(m[2]));
      } else if (ended) {
        clearInterval(timer);
        resolve(null);
      } else if (Date.now() > deadline) {
        clearInterval(timer);
        reject(new Error(`never paused; stderr:\n${from().slice(-2000)}`));
      }
    }
  });
}

export function killPid(pid: number): void {
  // 0 and negative pids name process groups (our own, for 0): never those.
  if (!(pid > 0)) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* gone already */
  }
}

/** Every id the state directory mentions (records, half-made and trashed directories), to look for their leftovers. */
export function idsIn(stateDir: string): Set<string> {
  const ids = new Set<string>();
  for (const kind of ["vms", "tasks"]) {
    for (const n of safeList(join(stateDir, kind))) {
      const m = /((?:vm|task)_[0-9a-f]{12})/.exec(n);
      if (m) ids.add(m[1]!);
    }
  }
  try {
    for (const n of readdirSync(join(stateDir, "locks"))) {
      const m = /^((?:vm|task)_[0-9a-f]{12})\.lock$/.exec(n);
      if (m) ids.add(m[1]!);
    }
  } catch {
    /* none */
  }
  return ids;
}

export interface HostProcess {
  pid: number;
  ppid: number;
  start: number;
  argv: string[];
}

/** The host's live processes (zombies and this process left out), with parent, start time and argv. */
export function hostProcesses(): HostProcess[] {
  const out: HostProcess[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0").filter(Boolean);
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (rest[0] === "Z") continue;
      out.push({ pid: Number(name), ppid: Number(rest[1]), start: Number(rest[19]), argv });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The pyro-mcp cgroup directories (one per controller, or the unified one) under which sandbox groups are made. */
export function cgroupParents(): string[] {
  const layout = cgroupLayout();
  return Object.values(layout.parents).map((p) => join(p, "pyro-mcp"));
}

export interface Leftovers {
  problems: string[];
  /** Tasks that remain, each whole. */
  tasks: string[];
}

/**
 * Reaps the state directory (as `pyro vm reap` does, in this process), then
 * lists everything wrong: processes (bwrap, pasta, pyro-agent) of the state
 * directory not named by a remaining record, cgroup directories of its ids
 * not named by one, lock files, stray directories or files, records that do
 * not parse. `ids` adds ids known from before the reap.
 */
export async function reapAndCheck(stateDir: string, extraIds: Iterable<string> = [], options: { liveOwners?: number[] } = {}): Promise<Leftovers> {
  const ids = idsIn(stateDir);
  for (const id of extraIds) ids.add(id);
  const pyro = new Pyro({ stateDir });
  await pyro.reapExpired();
  await removalsDone();
  for (const id of idsIn(stateDir)) ids.add(id);
  const problems: string[] = [];
  const legit = new Set<string>();
  const legitCgroups = new Set<string>();
  /** Disk images of sandboxes a record names as running (their loop devices are theirs). */
  const legitImages = new Set<string>();
  const ownedIds = new Set<string>();
  const tasks: string[] = [];
  for (const kind of ["vms", "tasks"]) {
    for (const n of safeList(join(stateDir, kind))) {
      const dir = join(stateDir, kind, n);
      if (!/^(vm|task)_[0-9a-f]{12}$/.test(n)) {
        // A live owner's removal in the background (.trash-<id>.<pid>.<ms>.<n>) is still being freed.
        const remover = Number(/^\.trash-[a-z]+_[0-9a-f]{12}\.(\d+)\./.exec(n)?.[1]);
        if (!options.liveOwners?.includes(remover)) problems.push(`stray entry ${kind}/${n}`);
        continue;
      }
      let record: any;
      try {
        record = JSON.parse(readFileSync(join(dir, "record.json"), "utf8"));
      } catch (error) {
        problems.push(`record ${kind}/${n} does not parse: ${(error as Error).message}`);
        continue;
      }
      if (record.creating || record.deleting) problems.push(`record ${kind}/${n} is half-made or half-deleted after a reap: ${JSON.stringify({ creating: record.creating, deleting: record.deleting })}`);
      for (const f of readdirSync(dir)) if (f.endsWith(".tmp")) problems.push(`temporary ${kind}/${n}/${f}`);
      if (existsSync(join(dir, "sandbox"))) for (const f of readdirSync(join(dir, "sandbox"))) if (f.endsWith(".tmp")) problems.push(`temporary ${kind}/${n}/sandbox/${f}`);
      if (kind === "tasks") tasks.push(n);
      if (record.sandbox) {
        for (const p of [record.sandbox.process, ...record.sandbox.helpers]) legit.add(`${p.pid}:${p.start_time}`);
        for (const c of record.sandbox.cgroups) legitCgroups.add(c);
        if (record.sandbox.disk_image) legitImages.add(record.sandbox.disk_image);
      }
      // A live daemon's or server's own ephemeral VMs (warm spares, runs in progress) are theirs.
      const owned = kind === "vms" && record.ephemeral && options.liveOwners?.includes(record.owner?.pid);
      // ... and so is everything of theirs that may be mid-boot or mid-delete right now.
      if (owned) ownedIds.add(n);
      // A persistent VM stays (created, started or stopped) when the process working on it was killed: only whole and without strays.
      if (kind === "vms" && record.ephemeral && !owned) problems.push(`VM ${n} remains (${record.state}${record.ephemeral ? ", ephemeral" : ""}; owner ${describeProcess(record.owner?.pid)})`);
    }
  }
  const hostnames = new Set([...ids].map((id) => id.replace(/_/g, "-")));
  const table = hostProcesses();
  const byPid = new Map(table.map((p) => [p.pid, p]));
  // The agent forks a supervisor per command (same argv): legit when an ancestor is a recorded init.
  const legitByAncestry = (p: HostProcess) => {
    for (let q: HostProcess | undefined = p, depth = 0; q && depth < 6; q = byPid.get(q.ppid), depth++) if (legit.has(`${q.pid}:${q.start}`)) return true;
    return false;
  };
  for (const p of table) {
    const names = p.argv.some((a) => a.includes(stateDir));
    const agent = p.argv[0] === "/.pyro/agent" && hostnames.has(p.argv[p.argv.indexOf("--hostname") + 1] ?? "");
    const ownedHost = (p.argv[p.argv.indexOf("--hostname") + 1] ?? "").replace("-", "_");
    const ofOwned = [...ownedIds].some((id) => p.argv.some((a) => a.includes(`${stateDir}/vms/${id}/`))) || (agent && ownedIds.has(ownedHost));
    if ((names || agent) && !ofOwned && !legitByAncestry(p)) {
      const host = p.argv[p.argv.indexOf("--hostname") + 1] ?? "";
      const id = host.replace("-", "_");
      let said = "";
      for (const kind of ["vms", "tasks"]) {
        try {
          const r = JSON.parse(readFileSync(join(stateDir, kind, id, "record.json"), "utf8"));
          said = ` (record: sandbox ${r.sandbox ? `${r.sandbox.process.pid}` : "null"}${r.creating ? ", creating" : ""}${r.deleting ? ", deleting" : ""})`;
        } catch {
          /* none */
        }
      }
      problems.push(`process ${p.pid} left (${processState(p.pid)}): ${p.argv.join(" ").slice(0, 200)}${said}`);
    }
  }
  for (const parent of cgroupParents()) {
    for (const n of safeList(parent)) if (ids.has(n) && !ownedIds.has(n) && !legitCgroups.has(join(parent, n))) problems.push(`cgroup ${join(parent, n)} left`);
  }
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) if (line.includes(stateDir)) problems.push(`mount left: ${line}`);
  // A task's disk image is attached to a loop device only while its recorded sandbox runs (or a live owner's is mid-boot).
  for (const l of loopDevicesUnder(stateDir)) {
    const backing = l.slice(l.indexOf(": ") + 2).replace(/ \(deleted\)$/, "");
    const owner = /\/(vms|tasks)\/([a-z]+_[0-9a-f]{12})\//.exec(backing)?.[2];
    if (!legitImages.has(backing) && !(owner && ownedIds.has(owner))) problems.push(`loop device left: ${l}`);
  }
  try {
    for (const n of readdirSync(join(stateDir, "locks"))) if (!ownedIds.has(n.replace(/\.lock$/, ""))) problems.push(`lock file left: locks/${n}`);
  } catch {
    /* no locks dir */
  }
  for (const n of safeList(stateDir)) if (!["vms", "tasks", "locks"].includes(n)) problems.push(`stray entry ${n}`);
  return { problems, tasks };
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** The running sandbox processes (agents) of an id. */
export function agentsOf(id: string): number[] {
  const host = id.replace(/_/g, "-");
  return hostProcesses()
    .filter((p) => p.argv[0] === "/.pyro/agent" && p.argv[p.argv.indexOf("--hostname") + 1] === host)
    .map((p) => p.pid);
}

/** Live `pyro daemon serve` processes of a state directory (the test's own, and any a client started after it killed one). */
export function liveDaemonsOf(stateDir: string): number[] {
  return hostProcesses()
    .filter((p) => p.argv.includes("daemon") && p.argv.includes("serve"))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p.pid}/environ`, "utf8").split("\0").includes(`PYRO_STATE_DIR=${stateDir}`);
      } catch {
        return false;
      }
    })
    .map((p) => p.pid);
}

/** What a pid is now, for failure messages: its state and command line, or "gone". */
function describeProcess(pid: number | undefined): string {
  if (!pid) return "none";
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return `${pid} state ${state}: ${readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ").slice(0, 160)}`;
  } catch {
    return `${pid} gone`;
  }
}

/** A leftover's state, parent and kernel wait channel: what tells a process dying in a syscall (D) from one nobody killed. */
function processState(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    let wchan = "";
    try {
      wchan = readFileSync(`/proc/${pid}/wchan`, "utf8");
    } catch {
      /* not readable */
    }
    const sig = /SigPnd:\s*(\S+)[\s\S]*ShdPnd:\s*(\S+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return `state ${fields[0]}, ppid ${fields[1]}, wchan ${wchan || "?"}, pending ${sig?.[1]}/${sig?.[2]}`;
  } catch {
    return "gone";
  }
}
