import {
  chmodSync,
  closeSync,
  constants,
  createReadStream,
  fchmodSync,
  fstatSync,
  futimesSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { once } from "node:events";
import { join } from "node:path";
import { PyroError } from "../../core/errors.js";
import type { ProgressListener } from "../../util/progress.js";

/**
 * Brings an untrusted tree onto the host: a tarball or a directory becomes a
 * fresh directory, with the rules of every archive that enters the product:
 *
 * - no absolute paths, no `..` components (the entry is rejected);
 * - nothing is ever written through a symlink: an entry under a path that an
 *   earlier entry made a symlink is rejected, and since every directory on
 *   the way was made by us (never a pre-existing host path), no write can
 *   leave the destination; files are created with O_EXCL|O_NOFOLLOW;
 * - symlinks themselves may point anywhere (the sandbox resolves them, the
 *   host never follows them here);
 * - hard links only to earlier regular files of the same archive;
 * - device nodes, fifos and sockets are skipped and reported (sandboxes
 *   mount their own /dev);
 * - set-id bits are dropped (and reported); the sticky bit is kept (/tmp);
 * - limits on entry count and total bytes.
 *
 * The first bad entry stops the import with unsafe_archive (limit_exceeded
 * for limits) naming the entry; the caller removes the partial destination.
 */

export interface ImportLimits {
  maxFiles: number;
  maxBytes: number;
}

/** Generous defaults (a Debian rootfs has ~10-30k entries, a few hundred MB); PYRO_IMPORT_MAX_FILES / PYRO_IMPORT_MAX_BYTES override. */
export function defaultLimits(env: NodeJS.ProcessEnv = process.env): ImportLimits {
  const num = (v: string | undefined, d: number) => (v && /^\d+$/.test(v) ? Number(v) : d);
  return { maxFiles: num(env.PYRO_IMPORT_MAX_FILES, 500_000), maxBytes: num(env.PYRO_IMPORT_MAX_BYTES, 20 * 1024 ** 3) };
}

export interface ExtractReport {
  /** Entries written (files, dirs, symlinks, hard links). */
  entries: number;
  /** Bytes of regular file content. */
  bytes: number;
  skipped: { path: string; type: string }[];
  setid_dropped: string[];
}

export interface ExtractOptions {
  limits?: Partial<ImportLimits>;
  signal?: AbortSignal;
  onProgress?: ProgressListener;
}

function unsafe(entry: string, why: string): PyroError {
  return new PyroError("unsafe_archive", `Refusing to import "${entry}": ${why}.`, {
    hint: "Fix or rebuild the archive/tree without that entry, then import again.",
    details: { entry, reason: why },
  });
}

/** Splits an entry path into components, rejecting absolute paths and `..`. "" for the root itself. */
export function entryComponents(raw: string): string[] {
  if (raw.startsWith("/")) throw unsafe(raw, "absolute path");
  if (raw.includes("\0")) throw unsafe(raw, "NUL in the path");
  const parts = raw.split("/").filter((c) => c !== "" && c !== ".");
  if (parts.includes("..")) throw unsafe(raw, "path with a '..' component");
  return parts;
}

type Kind = "dir" | "file" | "symlink";

/** The writing side, shared by tarballs and directory copies: every path goes through its checks. */
export class SafeTreeWriter {
  private readonly kinds = new Map<string, Kind>();
  private readonly dirModes = new Map<string, number>();
  private readonly limits: ImportLimits;
  readonly report: ExtractReport = { entries: 0, bytes: 0, skipped: [], setid_dropped: [] };

  constructor(
    readonly dest: string,
    limits: Partial<ImportLimits> = {},
  ) {
    this.limits = { ...defaultLimits(), ...limits };
    mkdirSync(dest, { mode: 0o755 }); // must not exist: we never extract into a tree we did not make
  }

  private count(raw: string, bytes = 0): void {
    this.report.entries++;
    this.report.bytes += bytes;
    if (this.report.entries > this.limits.maxFiles) {
      throw new PyroError("limit_exceeded", `Refusing to import "${raw}": more than ${this.limits.maxFiles} entries.`, {
        hint: "Import a smaller tree, or raise the limit with PYRO_IMPORT_MAX_FILES.",
        details: { entry: raw, reason: "too many entries", limit: this.limits.maxFiles },
      });
    }
    if (this.report.bytes > this.limits.maxBytes) {
      throw new PyroError("limit_exceeded", `Refusing to import "${raw}": more than ${this.limits.maxBytes} bytes in total.`, {
        hint: "Import a smaller tree, or raise the limit with PYRO_IMPORT_MAX_BYTES.",
        details: { entry: raw, reason: "too many bytes", limit: this.limits.maxBytes },
      });
    }
  }

  /** Checks and makes the parents of an entry: each is either a directory we made, or made now. */
  private parents(parts: string[], raw: string): void {
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      const kind = this.kinds.get(prefix);
      if (kind === "symlink") throw unsafe(raw, `it would be written through the symlink "${prefix}"`);
      if (kind === "file") throw unsafe(raw, `its parent "${prefix}" is not a directory`);
      if (kind === undefined) {
        mkdirSync(join(this.dest, prefix), { mode: 0o700 });
        this.kinds.set(prefix, "dir");
        this.dirModes.set(prefix, 0o755);
      }
    }
  }

  /** Makes room for a new entry at `rel`: a later entry of the same path replaces an earlier one (tar semantics), except a directory. */
  private replace(rel: string, raw: string, next: Kind): "keep" | "new" {
    const existing = this.kinds.get(rel);
    if (existing === undefined) return "new";
    if (existing === "dir") {
      if (next === "dir") return "keep";
      throw unsafe(raw, "it would replace a directory");
    }
    unlinkSync(join(this.dest, rel));
    this.kinds.delete(rel);
    return "new";
  }

  private mode(raw: string, mode: number): number {
    if (mode & 0o6000) this.report.setid_dropped.push(raw);
    return mode & 0o1777;
  }

  dir(raw: string, mode: number): void {
    const parts = entryComponents(raw);
    this.count(raw);
    if (parts.length === 0) return; // the archive's "./": keep our own root
    this.parents(parts, raw);
    const rel = parts.join("/");
    if (this.replace(rel, raw, "dir") === "new") {
      mkdirSync(join(this.dest, rel), { mode: 0o700 });
      this.kinds.set(rel, "dir");
    }
    this.dirModes.set(rel, this.mode(raw, mode));
  }

  /** Opens a new regular file for writing; the caller writes the data and calls closeFile. */
  openFile(raw: string, size: number): { fd: number; rel: string } {
    const parts = entryComponents(raw);
    if (parts.length === 0) throw unsafe(raw, "a file cannot be the root");
    this.count(raw, size);
    this.parents(parts, raw);
    const rel = parts.join("/");
    this.replace(rel, raw, "file");
    const fd = openSync(join(this.dest, rel), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    this.kinds.set(rel, "file");
    return { fd, rel };
  }

  closeFile(fd: number, raw: string, mode: number, mtime?: Date): void {
    try {
      if (mtime) futimesSync(fd, mtime, mtime);
      // fchmod through the fd: the path is never looked up again.
      fchmodSync(fd, this.mode(raw, mode));
    } finally {
      closeSync(fd);
    }
  }

  symlink(raw: string, target: string): void {
    const parts = entryComponents(raw);
    if (parts.length === 0) throw unsafe(raw, "a symlink cannot be the root");
    if (!target) throw unsafe(raw, "symlink with an empty target");
    this.count(raw);
    this.parents(parts, raw);
    const rel = parts.join("/");
    this.replace(rel, raw, "symlink");
    symlinkSync(target, join(this.dest, rel));
    this.kinds.set(rel, "symlink");
  }

  hardlink(raw: string, linkRaw: string): void {
    const parts = entryComponents(raw);
    if (parts.length === 0) throw unsafe(raw, "a hard link cannot be the root");
    let target: string;
    try {
      target = entryComponents(linkRaw).join("/");
    } catch {
      throw unsafe(raw, `hard link to "${linkRaw}", outside the archive`);
    }
    if (this.kinds.get(target) !== "file") throw unsafe(raw, `hard link to "${linkRaw}", which is not an earlier file of the archive`);
    this.count(raw);
    this.parents(parts, raw);
    const rel = parts.join("/");
    if (rel === target) return;
    this.replace(rel, raw, "file");
    linkSync(join(this.dest, target), join(this.dest, rel));
    this.kinds.set(rel, "file");
  }

  skip(raw: string, type: string): void {
    entryComponents(raw);
    this.report.skipped.push({ path: raw, type });
  }

  /** Applies directory modes last (deepest first), so a read-only directory did not block its own contents. */
  finish(): ExtractReport {
    const dirs = [...this.dirModes.entries()].sort((a, b) => b[0].split("/").length - a[0].split("/").length);
    for (const [rel, mode] of dirs) chmodSync(join(this.dest, rel), mode);
    return this.report;
  }
}

function writeAll(fd: number, chunk: Buffer): void {
  let off = 0;
  while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
}

/** Extracts a .tar, .tar.gz or .tgz (compression detected from content) into `dest`, which must not exist. */
export async function extractArchive(archive: string, dest: string, options: ExtractOptions = {}): Promise<ExtractReport> {
  const { Parser } = await import("tar");
  const writer = new SafeTreeWriter(dest, options.limits);
  let failure: unknown = null;
  let lastReport = 0;
  const fail = (error: unknown) => {
    if (failure === null) failure = error;
  };
  const parser = new Parser({
    strict: true,
    onReadEntry: (entry) => {
      if (failure !== null) {
        entry.resume();
        return;
      }
      const raw = entry.path;
      try {
        switch (entry.type) {
          case "Directory":
          case "GNUDumpDir":
            writer.dir(raw, entry.mode ?? 0o755);
            entry.resume();
            break;
          case "File":
          case "OldFile":
          case "ContiguousFile": {
            const { fd } = writer.openFile(raw, entry.size);
            let closed = false;
            const close = () => {
              if (closed) return;
              closed = true;
              try {
                writer.closeFile(fd, raw, entry.mode ?? 0o644, entry.mtime);
              } catch (error) {
                fail(error);
              }
            };
            entry.on("data", (chunk: Buffer) => {
              if (failure !== null) return;
              try {
                writeAll(fd, chunk);
              } catch (error) {
                fail(error);
              }
            });
            entry.on("end", close);
            break;
          }
          case "SymbolicLink":
            writer.symlink(raw, entry.linkpath ?? "");
            entry.resume();
            break;
          case "Link":
            writer.hardlink(raw, entry.linkpath ?? "");
            entry.resume();
            break;
          case "CharacterDevice":
          case "BlockDevice":
          case "FIFO":
            writer.skip(raw, entry.type);
            entry.resume();
            break;
          default:
            throw unsafe(raw, `unsupported entry type ${entry.type}`);
        }
      } catch (error) {
        fail(error);
        entry.resume();
      }
      if (options.onProgress && writer.report.entries - lastReport >= 1000) {
        lastReport = writer.report.entries;
        options.onProgress({ phase: "extract", message: `${writer.report.entries} entries`, current: writer.report.entries });
      }
    },
  });
  parser.on("error", (error: Error) => fail(new PyroError("unsafe_archive", `${archive} is not a valid tar archive: ${error.message}.`, { cause: error, hint: "Pass a .tar, .tar.gz or .tgz file, or a directory." })));
  const done = new Promise<void>((resolve) => {
    parser.on("end", () => resolve());
    parser.on("abort", () => resolve());
    parser.on("close", () => resolve());
  });
  const input = createReadStream(archive, { highWaterMark: 1 << 20 });
  try {
    for await (const chunk of input) {
      if (failure !== null) break;
      if (options.signal?.aborted) throw new PyroError("cancelled", "The import was cancelled.");
      if (!parser.write(chunk as Buffer)) await Promise.race([once(parser, "drain"), done]);
    }
    if (failure === null) {
      parser.end();
      await done;
    }
  } finally {
    input.destroy();
  }
  if (failure !== null) throw failure;
  return writer.finish();
}

/**
 * Copies a directory tree into `dest` (which must not exist) with the same
 * rules, never following a symlink of the source: entries are lstat'ed, files
 * opened with O_NOFOLLOW and checked to be the file that was listed. Hard
 * links within the source stay hard links.
 */
export async function copyTree(src: string, dest: string, options: ExtractOptions = {}): Promise<ExtractReport> {
  if (!statSync(src).isDirectory()) throw new PyroError("invalid_argument", `${src} is not a directory.`);
  const writer = new SafeTreeWriter(dest, options.limits);
  const seen = new Map<string, string>();
  const buffer = Buffer.allocUnsafe(1 << 20);
  let lastYield = Date.now();
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const name of readdirSync(dir).sort()) {
      const abs = join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(abs);
      if (st.isDirectory()) {
        writer.dir(r, st.mode & 0o7777);
        await walk(abs, r);
      } else if (st.isSymbolicLink()) {
        writer.symlink(r, readlinkSync(abs));
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? seen.get(key) : undefined;
        if (first !== undefined) {
          writer.hardlink(r, first);
          continue;
        }
        const inFd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW);
        try {
          const fst = fstatSync(inFd);
          if (!fst.isFile() || fst.ino !== st.ino) throw unsafe(r, "the file changed while it was being copied");
          const { fd } = writer.openFile(r, fst.size);
          try {
            // Copy at most the size that was counted against the limits, even if the file grows meanwhile.
            let left = fst.size;
            while (left > 0) {
              const n = readSync(inFd, buffer, 0, Math.min(buffer.length, left), null);
              if (n <= 0) break;
              writeAll(fd, buffer.subarray(0, n));
              left -= n;
            }
          } finally {
            writer.closeFile(fd, r, fst.mode & 0o7777, fst.mtime);
          }
        } finally {
          closeSync(inFd);
        }
        if (st.nlink > 1) seen.set(key, r);
      } else {
        writer.skip(r, st.isCharacterDevice() ? "CharacterDevice" : st.isBlockDevice() ? "BlockDevice" : st.isFIFO() ? "FIFO" : "Socket");
      }
      if (Date.now() - lastYield > 50) {
        await new Promise((res) => setImmediate(res));
        lastYield = Date.now();
        if (options.signal?.aborted) throw new PyroError("cancelled", "The import was cancelled.");
        options.onProgress?.({ phase: "extract", message: `${writer.report.entries} entries`, current: writer.report.entries });
      }
    }
  };
  await walk(src, "");
  return writer.finish();
}

/** Removes a partial destination after a failed import. */
export function discard(dest: string): void {
  rmSync(dest, { recursive: true, force: true });
}
