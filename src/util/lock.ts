import { openSync, writeSync, closeSync, readFileSync, readdirSync, rmSync, renameSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { ensureDir } from "./fsutil.js";
import { isAlive, selfIdentity, type ProcessIdentity } from "./proc.js";
import { PyroError } from "../core/errors.js";

/**
 * A cross-process lock as a file holding its owner's pid and start time.
 * Created with O_EXCL; a lock whose owner is dead (kill -9, crash) is stale
 * and is broken by the next taker, so a killed process never wedges others.
 * Within one process, holders are queued in memory (O_EXCL alone would let a
 * second caller in the same process spin against itself).
 */
export interface Lock {
  release(): void;
}

const inProcess = new Map<string, Promise<void>>();

function tryCreate(path: string, owner: ProcessIdentity): boolean {
  try {
    const fd = openSync(path, "wx", 0o644);
    try {
      writeSync(fd, JSON.stringify(owner));
    } finally {
      closeSync(fd);
    }
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  }
}

function ownerOf(path: string): ProcessIdentity | null | "missing" {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as ProcessIdentity;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return "missing";
    return null; // torn or foreign content: treat as stale
  }
}

/** Removes a stale lock atomically: rename it aside first so two breakers cannot both succeed on a fresh lock. */
function breakStale(path: string): void {
  const aside = join(dirname(path), `.stale-${randomBytes(6).toString("hex")}`);
  try {
    renameSync(path, aside);
  } catch {
    return;
  }
  const owner = ownerOf(aside);
  if (owner !== "missing" && owner !== null && isAlive(owner)) {
    // We raced with a live owner that re-took the lock: put it back.
    try {
      renameSync(aside, path);
    } catch {
      /* the path was re-taken meanwhile; the live owner's file is lost but its process still thinks it holds it */
    }
    return;
  }
  rmSync(aside, { force: true });
}

export async function acquireLock(path: string, options: { timeoutMs?: number; what?: string; signal?: AbortSignal } = {}): Promise<Lock> {
  const timeoutMs = options.timeoutMs ?? 30 * 60_000;
  const previous = inProcess.get(path) ?? Promise.resolve();
  let releaseLocal!: () => void;
  const mine = new Promise<void>((r) => (releaseLocal = r));
  const chained = previous.then(() => mine);
  inProcess.set(path, chained);
  await previous;

  ensureDir(dirname(path));
  const me = selfIdentity();
  const deadline = Date.now() + timeoutMs;
  let delay = 2;
  try {
    for (;;) {
      if (tryCreate(path, me)) break;
      const owner = ownerOf(path);
      if (owner === null || (owner !== "missing" && !isAlive(owner))) breakStale(path);
      else {
        if (options.signal?.aborted) throw new PyroError("cancelled", `Cancelled while waiting for ${options.what ?? path}.`);
        if (Date.now() > deadline) {
          throw new PyroError("busy", `Timed out waiting for ${options.what ?? "a lock"} held by pid ${owner === "missing" ? "?" : owner.pid}.`, {
            hint: "Another pyro process is working on the same thing; wait for it to finish or stop it.",
          });
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 100);
      }
    }
  } catch (error) {
    releaseLocal();
    if (inProcess.get(path) === chained) inProcess.delete(path);
    throw error;
  }
  return heldLock(path, releaseLocal, chained);
}

/** The handle of a lock file this process holds: release removes it once and wakes the next in-process waiter. */
function heldLock(path: string, releaseLocal: () => void, marker: Promise<void>): Lock {
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      rmSync(path, { force: true });
      releaseLocal();
      if (inProcess.get(path) === marker) inProcess.delete(path);
    },
  };
}

export async function withLock<T>(path: string, fn: () => Promise<T>, options?: Parameters<typeof acquireLock>[1]): Promise<T> {
  const lock = await acquireLock(path, options);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

/**
 * Takes the lock only if nobody holds it (a dead holder's lock is broken):
 * for the reaper, which must never wait behind a live exec or delete, and
 * leaves a held record to the next reap. Resolves null when it is held.
 */
export async function tryAcquireLock(path: string): Promise<Lock | null> {
  if (inProcess.has(path)) return null;
  ensureDir(dirname(path));
  const me = selfIdentity();
  for (let attempt = 0; attempt < 2; attempt++) {
    if (tryCreate(path, me)) {
      let releaseLocal!: () => void;
      const mine = new Promise<void>((r) => (releaseLocal = r));
      inProcess.set(path, mine);
      return heldLock(path, releaseLocal, mine);
    }
    const owner = ownerOf(path);
    if (owner === null || (owner !== "missing" && !isAlive(owner))) breakStale(path);
    else if (owner !== "missing") return null;
  }
  return null;
}

/**
 * Removes lock files whose holder is dead (a process killed while holding
 * one, e.g. mid-delete, when nobody will ever take that id again) and the
 * aside copies a breaker killed mid-break left. A live holder's lock stays.
 */
export function sweepStaleLocks(dir: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    const path = join(dir, name);
    if (inProcess.has(path)) continue;
    if (name.endsWith(".lock")) {
      const owner = ownerOf(path);
      if (owner === "missing" || (owner !== null && isAlive(owner))) continue;
      breakStale(path);
      removed.push(name);
    } else if (name.startsWith(".stale-")) {
      const owner = ownerOf(path);
      if (owner !== "missing" && owner !== null && isAlive(owner)) continue; // a breaker is about to put it back
      rmSync(path, { force: true });
      removed.push(name);
    }
  }
  return removed;
}
