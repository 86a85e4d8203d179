import { readdirSync } from "node:fs";
import { join } from "node:path";
import { ensureDir, readJsonOrNull, removeTree, writeJsonAtomic } from "../util/fsutil.js";
import { withLock } from "../util/lock.js";

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

  remove(id: string): void {
    removeTree(this.dir(id));
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
