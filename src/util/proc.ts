import { readFileSync } from "node:fs";

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
