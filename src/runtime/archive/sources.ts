import { isUtf8 } from "node:buffer";
import { closeSync, constants, createReadStream, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, type Stats } from "node:fs";
import type { Readable } from "node:stream";
import { Parser, type ReadEntry } from "tar";
import { PyroError } from "../../core/errors.js";
import type { CheckedEntry, ImportChecker } from "./checker.js";
import { decodeUnit } from "./glob.js";

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

/** O_PATH (Linux, x86-64 and arm64): a handle on a name that opens nothing (a fifo is not blocked on, a device not touched). */
const O_PATH = 0o10000000;
/** Deepest directory nesting a walk descends (it holds one descriptor per level). */
export const MAX_DEPTH = 512;

/** `/proc/self/fd/<dirfd>/<name>`: resolves `name` in the directory the descriptor holds, like openat(dirfd, name). */
function at(dirfd: number, name?: Buffer): Buffer {
  const base = Buffer.from(`/proc/self/fd/${dirfd}${name ? "/" : ""}`);
  return name ? Buffer.concat([base, name]) : base;
}

/** A name for messages: valid UTF-8 as is, other bytes as \xNN. */
export function printableName(name: Buffer): string {
  let out = "";
  for (let i = 0; i < name.length; ) {
    const [unit, len] = decodeUnit(name, i);
    out += unit >= 0x110000 ? `\\x${name[i]!.toString(16).padStart(2, "0")}` : String.fromCodePoint(unit);
    i += len;
  }
  return out;
}

function changed(rel: string, what: string): never {
  throw new PyroError("unsafe_archive", `Refused to import "${rel}": ${what} while the source was being read.`, {
    hint: "Nothing was changed. Something is modifying the source; let it finish (or stop it) and push again.",
    details: { entry: rel },
  });
}

function errnoOf(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? String(error);
}

export interface WalkOptions {
  /** The root's identity when it was checked: a root swapped since is refused. */
  expect?: { dev?: number; ino?: number };
  /** Directories never to enter (pyro's state and cache directories). */
  protected?: ReadonlyArray<{ label: string; path: string; dev: number; ino: number }>;
}

/**
 * Walks a host directory in sorted order (so the same tree always packs to
 * the same bytes and digest), never following a symlink and never resolving
 * a path twice: every name is looked up in a directory descriptor the walk
 * holds (`/proc/self/fd/<fd>/<name>` with O_NOFOLLOW, the openat() that node
 * lacks), every directory entered is opened O_DIRECTORY|O_NOFOLLOW and must be
 * the very directory listed (same dev/ino), and every file is opened as an
 * O_PATH handle, checked (a regular file, the one listed), then reopened for
 * reading. A directory swapped for a symlink mid-walk, or a file swapped for a
 * fifo or a link, is refused instead of followed, read or blocked on.
 *
 * Names are read as bytes. A name that is not valid UTF-8 is refused (unless
 * an exclude pattern matches it): results and errors name entries as text,
 * and a name changed on the way would be a different file.
 */
export async function* directoryEntries(root: string, checker: ImportChecker, options: WalkOptions = {}): AsyncGenerator<SourceEntry> {
  let rootFd: number;
  try {
    rootFd = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (error) {
    throw new PyroError("source_not_allowed", `Cannot open the source directory "${root}" (${errnoOf(error)}).`, {
      hint: "Check that it exists and is a readable directory (not a symlink), then try again.",
    });
  }
  try {
    const st = fstatSync(rootFd);
    if (options.expect?.ino !== undefined && (st.dev !== options.expect.dev || st.ino !== options.expect.ino)) {
      changed(".", "the source directory was replaced");
    }
    yield* walkDir(rootFd, "", Buffer.alloc(0), checker, options, 0);
  } finally {
    closeSync(rootFd);
  }
}

async function* walkDir(fd: number, rel: string, relBuf: Buffer, checker: ImportChecker, options: WalkOptions, depth: number): AsyncGenerator<SourceEntry> {
  let names: Buffer[];
  try {
    names = readdirSync(at(fd), { encoding: "buffer" }).sort(Buffer.compare);
  } catch (error) {
    throw new PyroError("source_not_allowed", `Cannot read directory "${rel || "."}" of the source (${errnoOf(error)}).`, {
      hint: "Make it readable, or leave it out with exclude, and try again.",
    });
  }
  const subdirs: Array<{ name: Buffer; rel: string; relBuf: Buffer; dev: number; ino: number }> = [];
  for (const name of names) {
    const childBuf = relBuf.length ? Buffer.concat([relBuf, Buffer.from("/"), name]) : name;
    if (!isUtf8(name)) {
      if (checker.isExcluded(childBuf)) continue;
      const shown = printableName(childBuf);
      throw new PyroError("unsafe_archive", `Refused to import "${shown}": its name is not valid UTF-8.`, {
        hint: "Nothing was changed. Rename it to a UTF-8 name (e.g. with convmv), or leave it out with an exclude pattern that matches it (? matches the odd byte).",
        details: { entry: shown },
      });
    }
    const relPath = rel ? `${rel}/${name.toString("utf8")}` : name.toString("utf8");
    let st: Stats;
    try {
      st = lstatSync(at(fd, name));
    } catch (error) {
      changed(relPath, `it vanished (${errnoOf(error)})`);
    }
    const kind = kindOf(st);
    let linkpath: string | undefined;
    if (kind === "symlink") {
      let target: Buffer;
      try {
        target = readlinkSync(at(fd, name), { encoding: "buffer" });
      } catch (error) {
        changed(relPath, `it stopped being a symlink (${errnoOf(error)})`);
      }
      if (!isUtf8(target)) {
        throw new PyroError("unsafe_archive", `Refused to import "${relPath}": the symlink's target "${printableName(target)}" is not valid UTF-8.`, {
          hint: "Nothing was changed. Point the link at a UTF-8 name, or leave it out with exclude.",
          details: { entry: relPath },
        });
      }
      linkpath = target.toString("utf8");
    }
    if (kind === "dir") {
      const hit = options.protected?.find((p) => p.ino >= 0 && p.dev === st.dev && p.ino === st.ino);
      if (hit && !checker.isExcluded(relPath)) {
        throw new PyroError("invalid_argument", `The source contains pyro's own ${hit.label} at "${relPath}" (${hit.path}). Sandboxes write there, so its files can change while they are read and cannot be imported.`, {
          hint: `Leave it out with exclude (e.g. exclude: ["${relPath}"]) or import a directory that does not contain it.`,
          details: { entry: relPath, protected_dir: hit.path },
        });
      }
    }
    const entry = checker.check({ path: relPath, type: kind, mode: st.mode, mtime: st.mtime, size: st.size, linkpath });
    if (!entry) continue;
    if (entry.type === "dir") {
      yield { entry };
      subdirs.push({ name, rel: relPath, relBuf: childBuf, dev: st.dev, ino: st.ino });
    } else if (entry.type === "file") {
      yield { entry, body: openRegularAt(fd, name, relPath, entry.size, st) };
    } else yield { entry };
  }
  for (const d of subdirs) {
    if (depth + 1 > MAX_DEPTH) {
      throw new PyroError("limit_exceeded", `Refused to import "${d.rel}": the source nests directories more than ${MAX_DEPTH} deep.`, {
        hint: "Nothing was changed. Leave the deep part out with exclude, or push a shallower directory.",
        details: { entry: d.rel },
      });
    }
    let child: number;
    try {
      child = openSync(at(fd, d.name), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    } catch (error) {
      changed(d.rel, `it stopped being a directory (${errnoOf(error)}: replaced by a symlink or another file, or removed)`);
    }
    try {
      const st = fstatSync(child);
      if (st.dev !== d.dev || st.ino !== d.ino) changed(d.rel, "it was replaced by another directory");
      yield* walkDir(child, d.rel, d.relBuf, checker, options, depth + 1);
    } finally {
      closeSync(child);
    }
  }
}

/** Files up to this size are read in one synchronous call: a stream per small file costs more than the read. */
const SMALL_FILE = 256 * 1024;

function openRegularAt(dirfd: number, name: Buffer, rel: string, size: number, listed: Stats): AsyncIterable<Buffer> | Iterable<Buffer> {
  let handle: number;
  try {
    handle = openSync(at(dirfd, name), O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    changed(rel, `it vanished (${errnoOf(error)})`);
  }
  let fd: number;
  try {
    const st = fstatSync(handle);
    if (!st.isFile()) changed(rel, "it stopped being a regular file");
    if (st.dev !== listed.dev || st.ino !== listed.ino) changed(rel, "it was replaced by another file");
    fd = openSync(at(handle), constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    if (error instanceof PyroError) throw error;
    changed(rel, `it could not be opened (${errnoOf(error)})`);
  } finally {
    closeSync(handle);
  }
  const st = fstatSync(fd);
  if (!st.isFile() || st.ino !== listed.ino || st.dev !== listed.dev) {
    closeSync(fd);
    changed(rel, "it was replaced by another file");
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
  // node-tar aborts past 1000:1 inflation; content bytes are bounded by our own max_bytes instead (a
  // file of zeros is legitimate content, and the limit is what stops a bomb), so that check is off.
  const parser = new Parser({ strict: true, maxDecompressionRatio: Infinity });
  const queue: Array<{ entry?: ReadEntry; error?: Error; end?: true }> = [];
  let wake: (() => void) | null = null;
  const notify = () => {
    wake?.();
    wake = null;
  };
  // The first failure of the parse. A body being read when the parser fails must fail too: an aborted
  // parser never ends its current entry, and waiting for that entry would wait forever.
  let failure: PyroError | null = null;
  let failNow: ((e: PyroError) => void) | null = null;
  const failed = new Promise<never>((_, reject) => (failNow = reject));
  failed.catch(() => undefined);
  const damaged = (error: Error): PyroError =>
    error instanceof PyroError
      ? error
      : new PyroError("unsafe_archive", `The archive is damaged or not a tar archive: ${error.message}.`, {
          hint: "Pass a .tar, .tar.gz or .tgz file, or a directory.",
        });
  const onFailure = (error: Error) => {
    if (!failure) {
      failure = damaged(error);
      failNow!(failure);
    }
    queue.push({ error });
    notify();
  };
  parser.on("entry", (e: ReadEntry) => {
    queue.push({ entry: e });
    // Hold the parser until this entry is consumed, so at most one body is in flight.
    e.pause();
    notify();
  });
  parser.on("error", (error: Error) => onFailure(error));
  parser.on("warn", (code: string, message: string) => {
    // node-tar reports damaged archives as warnings; for us a damaged archive is an error.
    if (code !== "TAR_ENTRY_INFO") onFailure(new Error(`${code}: ${message}`));
    else notify();
  });
  parser.on("end", () => {
    queue.push({ end: true });
    notify();
  });
  input.on("error", (error) => onFailure(error));
  input.pipe(parser);
  async function* bodyOf(e: ReadEntry): AsyncGenerator<Buffer> {
    const it = (e as unknown as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    for (;;) {
      if (failure) throw failure;
      const r = await Promise.race([it.next(), failed]);
      if (r.done) return;
      yield r.value;
    }
  }
  try {
    for (;;) {
      while (!queue.length) await new Promise<void>((r) => (wake = r));
      const item = queue.shift()!;
      if (item.end) return;
      if (item.error) throw damaged(item.error);
      const e = item.entry!;
      let checked: CheckedEntry | null;
      try {
        if ((e.path.includes("\uFFFD") || e.linkpath?.includes("\uFFFD")) && !checker.isExcluded(checker.normalize(e.path))) {
          throw new PyroError("unsafe_archive", `Refused to import "${e.path}": its name (or link target) is not valid UTF-8.`, {
            hint: "Nothing was changed. Rename the entry to a UTF-8 name, or leave it out with an exclude pattern (? matches the odd character).",
            details: { entry: e.path },
          });
        }
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
        yield { entry: checked, body: bodyOf(e) };
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
