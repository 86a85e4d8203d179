import { closeSync, constants, createReadStream, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, type Stats } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { Parser, type ReadEntry } from "tar";
import { PyroError } from "../../sdk/errors.js";
import type { CheckedEntry, ImportChecker } from "./checker.js";

/** One checked entry and, for a regular file, its content. */
export interface SourceEntry {
  entry: CheckedEntry;
  /** File content: a node stream or node-tar's entry stream; both iterate as Buffers. */
  body?: AsyncIterable<Buffer> | Iterable<Buffer>;
}

function kindOf(st: Stats): string {
  if (st.isFile()) return "file";
  if (st.isDirectory()) return "dir";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isCharacterDevice()) return "char-device";
  if (st.isBlockDevice()) return "block-device";
  if (st.isFIFO()) return "fifo";
  if (st.isSocket()) return "socket";
  return "unknown";
}

/**
 * Walks a host directory without following symlinks, in sorted order (so the
 * same tree always packs to the same bytes and digest). Files are opened with
 * O_NOFOLLOW|O_NONBLOCK and checked again on the open descriptor, so a file
 * swapped for a symlink or fifo between the walk and the read is refused
 * instead of followed or blocked on.
 */
export async function* directoryEntries(root: string, checker: ImportChecker): AsyncGenerator<SourceEntry> {
  const stack: string[] = [""];
  while (stack.length) {
    const rel = stack.pop()!;
    let names: string[];
    try {
      names = readdirSync(join(root, rel)).sort();
    } catch (error) {
      throw new PyroError("source_not_allowed", `Cannot read directory "${rel || "."}" of the source: ${(error as Error).message}.`);
    }
    const subdirs: string[] = [];
    for (const name of names) {
      const relPath = rel ? `${rel}/${name}` : name;
      const abs = join(root, relPath);
      const st = lstatSync(abs);
      const kind = kindOf(st);
      const linkpath = kind === "symlink" ? readlinkSync(abs) : undefined;
      const entry = checker.check({ path: relPath, type: kind, mode: st.mode, mtime: st.mtime, size: st.size, linkpath });
      if (!entry) continue;
      if (entry.type === "dir") {
        yield { entry };
        subdirs.push(relPath);
      } else if (entry.type === "file") {
        yield { entry, body: openRegular(abs, relPath, entry.size) };
      } else yield { entry };
    }
    // Depth-first, in sorted order: push in reverse so the first name is walked first.
    for (const d of subdirs.reverse()) stack.push(d);
  }
}

/** Files up to this size are read in one synchronous call: a stream per small file costs more than the read. */
const SMALL_FILE = 256 * 1024;

function openRegular(abs: string, rel: string, size: number): AsyncIterable<Buffer> | Iterable<Buffer> {
  let fd: number;
  try {
    fd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    throw new PyroError("unsafe_archive", `Refused to import "${rel}": it changed while being read (${(error as NodeJS.ErrnoException).code}).`, {
      details: { entry: rel },
    });
  }
  const st = fstatSync(fd);
  if (!st.isFile()) {
    closeSync(fd);
    throw new PyroError("unsafe_archive", `Refused to import "${rel}": it stopped being a regular file while being read.`, { details: { entry: rel } });
  }
  if (size <= SMALL_FILE) {
    try {
      const buf = Buffer.allocUnsafe(size);
      let got = 0;
      while (got < size) {
        const n = readSync(fd, buf, got, size - got, got);
        if (n === 0) break; // shrank since the walk: the packer pads
        got += n;
      }
      return [buf.subarray(0, got)];
    } finally {
      closeSync(fd);
    }
  }
  // Read exactly the size recorded in the header; a file that grew is cut, one that shrank is padded by the packer.
  return createReadStream("", { fd, start: 0, end: size - 1, autoClose: true, highWaterMark: 256 * 1024 });
}

/**
 * Reads a .tar, .tar.gz or .tgz with node-tar's parser (gzip is detected from
 * the bytes), checking each entry as it arrives. Bodies stream through with
 * backpressure: the archive is never held in memory.
 */
export async function* tarEntries(input: Readable, checker: ImportChecker): AsyncGenerator<SourceEntry> {
  const parser = new Parser({ strict: true });
  const queue: Array<{ entry?: ReadEntry; error?: Error; end?: true }> = [];
  let wake: (() => void) | null = null;
  const notify = () => {
    wake?.();
    wake = null;
  };
  parser.on("entry", (e: ReadEntry) => {
    queue.push({ entry: e });
    // Hold the parser until this entry is consumed, so at most one body is in flight.
    e.pause();
    notify();
  });
  parser.on("error", (error: Error) => {
    queue.push({ error });
    notify();
  });
  parser.on("warn", (code: string, message: string) => {
    // node-tar reports damaged archives as warnings; for us a damaged archive is an error.
    if (code !== "TAR_ENTRY_INFO") queue.push({ error: new Error(`${code}: ${message}`) });
    notify();
  });
  parser.on("end", () => {
    queue.push({ end: true });
    notify();
  });
  input.on("error", (error) => {
    queue.push({ error });
    notify();
  });
  input.pipe(parser);
  try {
    for (;;) {
      while (!queue.length) await new Promise<void>((r) => (wake = r));
      const item = queue.shift()!;
      if (item.end) return;
      if (item.error) {
        throw item.error instanceof PyroError
          ? item.error
          : new PyroError("unsafe_archive", `The archive is damaged or not a tar archive: ${item.error.message}.`, {
              hint: "Pass a .tar, .tar.gz or .tgz file, or a directory.",
            });
      }
      const e = item.entry!;
      let checked: CheckedEntry | null;
      try {
        checked = checker.check({
          path: e.path,
          type: e.type,
          mode: e.mode ?? 0o644,
          mtime: e.mtime ?? new Date(0),
          size: e.size,
          linkpath: e.linkpath,
        });
      } catch (error) {
        e.resume();
        throw error;
      }
      if (!checked) {
        e.resume();
        continue;
      }
      if (checked.type === "file") {
        yield { entry: checked, body: e as unknown as AsyncIterable<Buffer> };
      } else {
        e.resume();
        yield { entry: checked };
      }
    }
  } finally {
    input.unpipe(parser);
    input.destroy();
  }
}
