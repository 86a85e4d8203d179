import { readdirSync, readFileSync } from "node:fs";

/**
 * A process named by pid AND its start time (clock ticks since boot, field 22
 * of /proc/PID/stat), so that a pid the kernel has reused for another process
 * is never mistaken for the one we recorded.
 */
export interface ProcessIdentity {
  pid: number;
  start_time: number;
}

export function processStartTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const state = rest[0];
    if (state === "Z" || state === "X") return null; // a zombie is dead for our purposes
    const start = Number(rest[19]);
    return Number.isFinite(start) ? start : null;
  } catch {
    return null;
  }
}

export function identityOf(pid: number): ProcessIdentity | null {
  const start_time = processStartTime(pid);
  return start_time === null ? null : { pid, start_time };
}

export function selfIdentity(): ProcessIdentity {
  const id = identityOf(process.pid);
  if (!id) throw new Error("cannot read /proc/self/stat");
  return id;
}

/** Whether any process has this pid (by pid alone: for records that keep no start time, such as temporary file names). */
export function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export function isAlive(identity: ProcessIdentity | null | undefined): boolean {
  if (!identity) return false;
  return processStartTime(identity.pid) === identity.start_time;
}

/** Sends a signal to a recorded process only if it is still that process. */
export function signalIfAlive(identity: ProcessIdentity | null | undefined, signal: NodeJS.Signals): boolean {
  if (!isAlive(identity)) return false;
  try {
    process.kill(identity!.pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * Waits until the process is gone, polling /proc every half millisecond for
 * the first 20 ms (a killed sandbox is usually gone within one or two), then
 * backing off. Resolves false on timeout.
 */
export async function waitForExit(identity: ProcessIdentity, timeoutMs: number): Promise<boolean> {
  const started = Date.now();
  let delay = 0.5;
  while (isAlive(identity)) {
    const waited = Date.now() - started;
    if (waited >= timeoutMs) return false;
    await new Promise((r) => setTimeout(r, delay));
    if (waited > 20) delay = Math.min(delay * 2, 20);
  }
  return true;
}

/** One host process as /proc shows it: identity, parent and argv. */
export interface ProcessEntry {
  identity: ProcessIdentity;
  ppid: number;
  argv: string[];
}

function entryOf(pid: number): ProcessEntry | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (rest[0] === "Z" || rest[0] === "X") return null;
    const start_time = Number(rest[19]);
    const ppid = Number(rest[1]);
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    if (argv.length && argv[argv.length - 1] === "") argv.pop();
    return { identity: { pid, start_time }, ppid, argv };
  } catch {
    return null; // gone, or not ours to read
  }
}

/**
 * Every live process one of whose arguments contains `needle` (a sandbox
 * directory, or a state directory). A marker that needs no record: bwrap
 * carries its sandbox directory in its argv from the moment it is exec'd (and
 * so does the sandbox child it forks, until that execs the agent), pasta
 * carries its pid file's path, so a sandbox whose creator died before writing
 * anything down is still found. About 1-2 ms per 100 processes.
 */
export function processesNaming(needle: string): ProcessEntry[] {
  const out: ProcessEntry[] = [];
  let names: string[];
  try {
    names = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    } catch {
      continue;
    }
    if (!cmdline.includes(needle)) continue;
    const entry = entryOf(pid);
    if (entry && entry.argv.some((a) => a.includes(needle))) out.push(entry);
  }
  return out;
}

/** The argv of a live process (by identity), or null when it is gone. */
export function argvOf(identity: ProcessIdentity): string[] | null {
  const entry = entryOf(identity.pid);
  return entry && entry.identity.start_time === identity.start_time ? entry.argv : null;
}

/** A process's parent pid (0 when it has none here, or is gone). */
export function parentPid(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) || 0;
  } catch {
    return 0;
  }
}

/** Whether a process descends from one of `ancestors` (a sandbox's own children: a VM supervisor's qemu). */
export function descendsFrom(pid: number, ancestors: readonly ProcessIdentity[]): boolean {
  const live = ancestors.filter((a) => isAlive(a)).map((a) => a.pid);
  for (let p = parentPid(pid), hops = 0; p > 1 && hops < 64; p = parentPid(p), hops++) {
    if (live.includes(p)) return true;
  }
  return false;
}

/** The live children of a process (from /proc/PID/task/TID/children), as identities. */
export function childrenOf(identity: ProcessIdentity): ProcessIdentity[] {
  if (!isAlive(identity)) return [];
  const out: ProcessIdentity[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${identity.pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    let text = "";
    try {
      text = readFileSync(`/proc/${identity.pid}/task/${tid}/children`, "utf8");
    } catch {
      continue;
    }
    for (const p of text.trim().split(/\s+/).filter(Boolean)) {
      const child = identityOf(Number(p));
      if (child) out.push(child);
    }
  }
  return out;
}

/**
 * SIGKILLs processes and their children, all at once, then waits until every
 * one is gone. Children are collected first: a bwrap monitor's child is the
 * sandbox's init, which outlives its monitor when the monitor alone is killed.
 * (The init's own descendants die with its pid namespace.) Identities keep a
 * reused pid safe. Resolves false if one survived the timeout.
 */
export async function killTrees(roots: ProcessIdentity[], timeoutMs = 5_000): Promise<boolean> {
  const all = new Map<string, ProcessIdentity>();
  for (const root of roots) {
    if (!isAlive(root)) continue;
    all.set(`${root.pid}:${root.start_time}`, root);
    for (const child of childrenOf(root)) all.set(`${child.pid}:${child.start_time}`, child);
  }
  const targets = [...all.values()];
  for (const p of targets) signalIfAlive(p, "SIGKILL");
  const gone = await Promise.all(targets.map((p) => waitForExit(p, timeoutMs)));
  return gone.every(Boolean);
}
