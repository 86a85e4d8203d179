import { readdirSync, renameSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { ensureDir, readJsonOrNull, removeTree, writeJsonAtomic } from "../util/fsutil.js";
import { withLock } from "../util/lock.js";

const TRASH_PREFIX = ".trash-";
let trashCounter = 0;
const pendingRemovals = new Set<Promise<void>>();
const pendingPaths = new Set<string>();

/** Resolves when every directory removal this process started has finished (tests, orderly shutdowns). */
export async function removalsDone(): Promise<void> {
  while (pendingRemovals.size) await Promise.all([...pendingRemovals]);
}

function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Deletes a directory tree without blocking the event loop; never throws (the next sweep retries). */
function removeInBackground(path: string): void {
  if (pendingPaths.has(path)) return;
  pendingPaths.add(path);
  const removal = rm(path, { recursive: true, force: true, maxRetries: 3 })
    .catch(() => undefined)
    .finally(() => {
      pendingRemovals.delete(removal);
      pendingPaths.delete(path);
    });
  pendingRemovals.add(removal);
}

/**
 * Records on disk, one directory per VM or task under the state directory:
 * `<state>/<kind>s/<id>/record.json`, written atomically. Any pyro process
 * can read and act on any record; writers serialize on a lock file per id
 * (kept outside the record's directory so deleting the directory never
 * races with the lock).
 */
export class RecordStore<R extends object> {
  readonly root: string;
  private readonly locks: string;

  constructor(stateDir: string, readonly kind: "vm" | "task") {
    this.root = join(stateDir, `${kind}s`);
    this.locks = join(stateDir, "locks");
  }

  dir(id: string): string {
    return join(this.root, id);
  }

  recordPath(id: string): string {
    return join(this.dir(id), "record.json");
  }

  read(id: string): R | null {
    return readJsonOrNull<R>(this.recordPath(id));
  }

  write(id: string, record: R, options: { durable?: boolean } = {}): void {
    ensureDir(this.dir(id), 0o700);
    writeJsonAtomic(this.recordPath(id), record, options);
  }

  ids(): string[] {
    try {
      return readdirSync(this.root).filter((n) => !n.startsWith("."));
    } catch {
      return [];
    }
  }

  /**
   * Removes a record and everything under its directory. The directory is
   * renamed out of the way at once (the id is gone from this moment, for
   * every process) and its contents are deleted in the background: a large
   * writable layer never blocks the event loop, and a run does not wait for
   * the bytes to be freed. A pending removal keeps this process alive until
   * it is done; one cut short (kill -9) is finished by the next reap
   * (`sweepTrash`).
   */
  remove(id: string): void {
    // Named with the remover's pid and the time: a rename keeps the directory's mtime.
    const trash = join(this.root, `${TRASH_PREFIX}${id}.${process.pid}.${Date.now()}.${trashCounter++}`);
    try {
      renameSync(this.dir(id), trash);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      removeTree(this.dir(id)); // cannot rename (e.g. EBUSY): remove in place
      return;
    }
    removeInBackground(trash);
  }

  /** Deletes what removals cut short left (directories whose remover is gone). */
  sweepTrash(): void {
    let names: string[] = [];
    try {
      names = readdirSync(this.root).filter((n) => n.startsWith(TRASH_PREFIX));
    } catch {
      return;
    }
    for (const name of names) {
      const [pid, at] = name.split(".").slice(-3, -1).map(Number) as [number, number];
      // A removal still in progress in a live process is its own; one older than a minute was cut short.
      if (pid === process.pid || (pidExists(pid) && Date.now() - at < 60_000)) continue;
      removeInBackground(join(this.root, name));
    }
  }

  /**
   * Serializes work on one record across processes. Waiters queue for as long
   * as the holder works (an exec may legitimately run for hours); a crashed
   * holder's lock is broken at once, and the signal cancels the wait.
   */
  withLock<T>(id: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return withLock(join(this.locks, `${id}.lock`), fn, { what: `${this.kind} ${id}`, timeoutMs: 25 * 3600_000, signal });
  }
}
