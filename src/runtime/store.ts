import { mkdirSync, readdirSync, renameSync } from "node:fs";
import { join } from "node:path";
import { PyroError } from "../core/errors.js";
import { readJsonOrNull, removeTree, sweepTempFiles, writeJsonAtomic } from "../util/fsutil.js";
import { sweepStaleLocks, tryAcquireLock, withLock, type Lock } from "../util/lock.js";
import { pidExists, processesNaming, type ProcessEntry } from "../util/proc.js";
import { removeLayerTree } from "../util/layer-tree.js";
import { refuseSharedDir } from "../util/private-dir.js";

const TRASH_PREFIX = ".trash-";
/** A record directory being made: renamed to its id once its record is in it, so an id's directory always holds a record. */
const NEW_PREFIX = ".new-";
let trashCounter = 0;
const pendingRemovals = new Set<Promise<void>>();
const pendingPaths = new Set<string>();

/** Resolves when every directory removal this process started has finished (tests, orderly shutdowns). */
export async function removalsDone(): Promise<void> {
  while (pendingRemovals.size) await Promise.all([...pendingRemovals]);
}

/** Deletes a directory tree without blocking the event loop; never throws (the next sweep retries). */
function removeInBackground(path: string): void {
  if (pendingPaths.has(path)) return;
  pendingPaths.add(path);
  // removeLayerTree, not rm: a sandbox's layer may hold directories of mode 000 or paths past PATH_MAX, which rm gives up on.
  const removal = removeLayerTree(path)
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

  constructor(
    private readonly stateDir: string,
    readonly kind: "vm" | "task",
  ) {
    this.root = join(stateDir, `${kind}s`);
    this.locks = join(stateDir, "locks");
  }

  /**
   * Refuses a state directory another user owns or may write, before any
   * record is read or made: they could plant a record whose sandbox names
   * any host process (its pid and start time are in /proc), and the reaper
   * of the next `pyro vm list` killed it (as root: any process). A stat of
   * three directories per call.
   */
  private guard(): void {
    const hint = "Use a state directory only you can write: remove this one, or set PYRO_STATE_DIR to a directory of your own (mode 700).";
    refuseSharedDir(this.stateDir, "state directory", { rootSticky: true, hint });
    refuseSharedDir(this.root, "record directory", { hint });
    refuseSharedDir(this.locks, "lock directory", { hint });
  }

  dir(id: string): string {
    return join(this.root, id);
  }

  recordPath(id: string): string {
    return join(this.dir(id), "record.json");
  }

  read(id: string): R | null {
    this.guard();
    return readJsonOrNull<R>(this.recordPath(id));
  }

  /**
   * Makes a new record: its directory is built under a temporary name with
   * the record in it and renamed into place, so a process killed at any point
   * leaves either a whole record or a temporary directory the next sweep
   * removes, never an id without a record.
   */
  create(id: string, record: R, options: { durable?: boolean } = {}): void {
    this.guard();
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    const staging = join(this.root, `${NEW_PREFIX}${id}.${process.pid}.${Date.now()}.${trashCounter++}`);
    mkdirSync(staging, { mode: 0o700 });
    writeJsonAtomic(join(staging, "record.json"), record, options);
    renameSync(staging, this.dir(id));
  }

  /** Rewrites an existing record; one deleted meanwhile stays deleted (its directory is never made again). */
  write(id: string, record: R, options: { durable?: boolean } = {}): void {
    try {
      writeJsonAtomic(this.recordPath(id), record, options);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      throw new PyroError(this.kind === "vm" ? "unknown_vm" : "unknown_task", `No ${this.kind === "vm" ? "VM" : "task"} with id ${id}: it was deleted.`);
    }
  }

  ids(): string[] {
    this.guard();
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

  /**
   * Deletes what removals and creations cut short left (directories whose
   * remover or creator is gone), after `release` has freed whatever a
   * sandbox of theirs still holds (its notes are in the directory). Also
   * removes temporaries of killed writers in the records' directories.
   */
  async sweepTrash(release?: (sandboxDir: string) => Promise<void>): Promise<void> {
    let names: string[] = [];
    try {
      names = readdirSync(this.root);
    } catch {
      return;
    }
    for (const name of names) {
      if (!name.startsWith(TRASH_PREFIX) && !name.startsWith(NEW_PREFIX)) {
        if (!name.startsWith(".")) {
          sweepTempFiles(this.dir(name));
          sweepTempFiles(join(this.dir(name), "sandbox"));
        }
        continue;
      }
      const [pid, at] = name.split(".").slice(-3, -1).map(Number) as [number, number];
      // A removal still in progress in a live process is its own; one older than a minute was cut short.
      if (pid === process.pid || (pidExists(pid) && Date.now() - at < 60_000)) continue;
      const path = join(this.root, name);
      if (pendingPaths.has(path)) continue;
      if (release) {
        try {
          await release(join(path, "sandbox"));
        } catch (error) {
          // Its cgroups are still held by killed processes that have not exited: the notes naming them stay for the next sweep.
          if (error instanceof PyroError && error.code === "busy") continue;
        }
      }
      removeInBackground(path);
    }
  }

  /** Lock files of dead holders (killed mid-operation); shared by both stores. */
  sweepLocks(): string[] {
    return sweepStaleLocks(this.locks);
  }

  /**
   * Host processes whose argv names a sandbox directory of this store, by id
   * (bwrap and the not-yet-exec'd sandbox child name it in their bind
   * mounts, pasta in its pid file): found even when no record or note names
   * them, e.g. when their creator was killed right after spawning them.
   */
  sandboxProcesses(): Map<string, ProcessEntry[]> {
    this.guard();
    const byId = new Map<string, ProcessEntry[]>();
    const prefix = `${this.root}/`;
    for (const entry of processesNaming(prefix)) {
      const arg = entry.argv.find((a) => a.includes(prefix))!;
      const id = arg.slice(arg.indexOf(prefix) + prefix.length).split("/")[0]!;
      if (!id || id.startsWith(".")) continue;
      byId.set(id, [...(byId.get(id) ?? []), entry]);
    }
    return byId;
  }

  /** The id's lock if nobody holds it (a dead holder's is broken), else null: for the reaper, which never waits. */
  tryLock(id: string): Promise<Lock | null> {
    return tryAcquireLock(join(this.locks, `${id}.lock`));
  }

  /** Runs fn holding the id's lock, or not at all when a live process holds it (the next reap sees what is left). */
  async underTryLock(id: string, fn: () => Promise<void>): Promise<void> {
    let lock: Lock | null = null;
    try {
      lock = await this.tryLock(id);
      if (lock) await fn();
    } catch {
      /* another process got there first; the next reap sees what is left */
    } finally {
      lock?.release();
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
