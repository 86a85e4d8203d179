import { closeSync, constants, fstatSync, fsyncSync, openSync, writeSync, renameSync, readFileSync, rmSync, mkdirSync, lstatSync, readdirSync } from "node:fs";
import { dirname, join, basename } from "node:path";
import { randomBytes } from "node:crypto";
import { pidExists } from "./proc.js";

/**
 * Writes a file so that readers see either the old or the new content, never
 * a torn one: write a temporary sibling, fsync it, rename over the target,
 * fsync the directory. `durable: false` skips the fsyncs for records that die
 * with the process anyway (ephemeral VMs), where the cost matters.
 */
export function writeFileAtomic(path: string, data: string | Buffer, options: { durable?: boolean; mode?: number } = {}): void {
  const durable = options.durable ?? true;
  // Named with the writer's pid: one killed mid-write leaves a file the next sweep knows is dead (sweepTempFiles).
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, "wx", options.mode ?? 0o644);
  try {
    if (typeof data === "string") writeSync(fd, data);
    else writeSync(fd, data);
    if (durable) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (error) {
    rmSync(tmp, { force: true });
    throw error;
  }
  if (durable) {
    const dfd = openSync(dirname(path), "r");
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }
}

export function writeJsonAtomic(path: string, value: unknown, options: { durable?: boolean } = {}): void {
  writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n", options);
}

/** Reads JSON, returning null when the file is missing or not valid JSON (a torn or foreign file). */
export function readJsonOrNull<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return null;
  }
}

export function ensureDir(path: string, mode = 0o755): string {
  mkdirSync(path, { recursive: true, mode });
  return path;
}

export function removeTree(path: string): void {
  rmSync(path, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * Bytes and files under a directory, never following a symlink, for trees
 * that something else may be changing (a sandbox's writable layer): each
 * directory is opened with O_NOFOLLOW relative to its held parent
 * (/proc/self/fd/N/name), checked to be the entry just listed, and listed
 * through its descriptor, so swapping a directory for a symlink mid-walk
 * leads nowhere outside the tree. A root that is itself a symlink (or not
 * a directory) counts as nothing.
 */
export function treeUsage(root: string): { bytes: number; files: number; allocated: number } {
  const DIR = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  let bytes = 0;
  let files = 0;
  // What the tree takes on its disk (blocks, directories included): a sparse file counts for what it holds, not its size.
  let allocated = 0;
  const walk = (fd: number, depth: number) => {
    let names: string[];
    try {
      names = readdirSync(`/proc/self/fd/${fd}`);
    } catch {
      return;
    }
    for (const name of names) {
      const p = `/proc/self/fd/${fd}/${name}`;
      let st;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      allocated += st.blocks * 512;
      if (!st.isDirectory()) {
        files++;
        bytes += st.size;
        continue;
      }
      if (depth >= 512) continue;
      let child: number;
      try {
        child = openSync(p, DIR);
      } catch {
        continue; // swapped for a symlink or removed since the listing
      }
      try {
        const opened = fstatSync(child);
        if (opened.dev === st.dev && opened.ino === st.ino) walk(child, depth + 1);
      } finally {
        closeSync(child);
      }
    }
  };
  let top: number;
  try {
    top = openSync(root, DIR);
  } catch {
    return { bytes, files, allocated };
  }
  try {
    walk(top, 0);
  } finally {
    closeSync(top);
  }
  return { bytes, files, allocated };
}

const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$/;

/** Removes what writeFileAtomic calls cut short by kill -9 left in a directory (temporaries of dead writers). */
export function sweepTempFiles(dir: string): number {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names) {
    const m = TEMP_NAME.exec(name);
    if (!m || Number(m[1]) === process.pid || pidExists(Number(m[1]))) continue;
    rmSync(join(dir, name), { force: true });
    removed++;
  }
  return removed;
}
