import { closeSync, createWriteStream, fstatSync, openSync, readdirSync, readSync, rmSync, statSync, type WriteStream } from "node:fs";
import { join } from "node:path";

/**
 * A task's exec logs on the host (`<task>/logs/<sequence>.stdout|stderr`):
 * each stream kept up to EXEC_LOG_CAP_BYTES, and all of a task's logs
 * together up to TASK_LOGS_CAP_BYTES, the oldest execs' output removed
 * first (their journal entries stay). Without the second cap a model could
 * fill the host's disk 128 MiB at a time, one exec after another.
 */

/** Full output kept per exec stream; past this the log says it was cut. */
export const EXEC_LOG_CAP_BYTES = 64 * 1024 * 1024;
/** All exec logs of one task, together. */
export const TASK_LOGS_CAP_BYTES = 256 * 1024 * 1024;

/** Writes one stream of an exec to disk, up to EXEC_LOG_CAP_BYTES, counting everything. */
export class LogFile {
  total = 0;
  private readonly stream: WriteStream;

  constructor(path: string) {
    this.stream = createWriteStream(path, { mode: 0o600 });
  }

  /** The bytes that reached the file. */
  get stored(): number {
    return Math.min(this.total, EXEC_LOG_CAP_BYTES);
  }

  write(chunk: Buffer): void {
    const room = EXEC_LOG_CAP_BYTES - this.total;
    this.total += chunk.length;
    if (room > 0) this.stream.write(room >= chunk.length ? chunk : chunk.subarray(0, room));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.stream.end(resolve));
  }
}

const LOG_NAME = /^(\d+)\.(stdout|stderr)$/;

/** The bytes of every exec log in the directory. */
export function execLogsBytes(dir: string): number {
  return logFiles(dir).reduce((n, f) => n + f.size, 0);
}

/**
 * Removes the oldest execs' logs (both streams of a sequence together, never
 * `keep`'s) until the rest fit in `cap`. Returns the bytes left.
 */
export function pruneExecLogs(dir: string, keep: number, cap = TASK_LOGS_CAP_BYTES): number {
  const files = logFiles(dir).sort((a, b) => a.sequence - b.sequence);
  let total = files.reduce((n, f) => n + f.size, 0);
  for (const f of files) {
    if (total <= cap) break;
    if (f.sequence === keep) continue;
    rmSync(join(dir, f.name), { force: true });
    total -= f.size;
  }
  return total;
}

function logFiles(dir: string): Array<{ name: string; sequence: number; size: number }> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: Array<{ name: string; sequence: number; size: number }> = [];
  for (const name of names) {
    const m = LOG_NAME.exec(name);
    if (!m) continue;
    try {
      out.push({ name, sequence: Number(m[1]), size: statSync(join(dir, name)).size });
    } catch {
      /* removed meanwhile */
    }
  }
  return out;
}

/**
 * Reads a log back, head and tail past `cap`. A log that is gone while its
 * exec wrote output was removed by the task's cap: it says so.
 */
export function readExecLog(path: string, cap: number, bytesWritten: number): { text: string; truncated: boolean } {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    if (bytesWritten > 0) return { text: `[pyro: this exec's ${bytesWritten} bytes of output were removed to keep the task's logs under ${TASK_LOGS_CAP_BYTES / 1024 / 1024} MiB]`, truncated: true };
    return { text: "", truncated: false };
  }
  try {
    const size = fstatSync(fd).size;
    if (size <= cap) {
      const buf = Buffer.alloc(size);
      readSync(fd, buf, 0, size, 0);
      return { text: buf.toString("utf8"), truncated: false };
    }
    // Head and tail, as in exec results.
    const half = Math.floor(cap / 2);
    const head = Buffer.alloc(half);
    const tail = Buffer.alloc(cap - half);
    readSync(fd, head, 0, head.length, 0);
    readSync(fd, tail, 0, tail.length, size - tail.length);
    return { text: `${head.toString("utf8")}\n[... pyro: ${size - cap} bytes omitted ...]\n${tail.toString("utf8")}`, truncated: true };
  } finally {
    closeSync(fd);
  }
}
