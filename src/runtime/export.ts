import { closeSync, constants, fsyncSync, linkSync, lstatSync, mkdtempSync, openSync, readdirSync, realpathSync, renameSync, rmSync, writeSync, type Stats } from "node:fs";
import { basename, dirname, join, posix, resolve } from "node:path";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { isAlive, selfIdentity } from "../util/proc.js";
import { pauseAt } from "../util/testhook.js";
import { SafeTreeWriter } from "../environments/builders/safe-extract.js";
import { ImportChecker, type ImportLimits, DEFAULT_IMPORT_LIMITS } from "./archive/checker.js";
import { packTar, type PackStats } from "./archive/pack.js";
import { tarEntries, type SourceEntry } from "./archive/sources.js";
import { absPath, guestError, tarOut } from "./files.js";
import { protectedOverlap } from "./archive/source-path.js";

/**
 * Export: the dangerous direction. The sandbox sends a tar stream
 * (guest/files.c `tar`, which itself never follows a symlink); the host
 * treats every byte of it as hostile and writes only what passes the same
 * checks as an import (runtime/archive/checker.ts: no absolute paths, no
 * `..`, nothing below a symlink of the stream, hard links only to earlier
 * files, limits on entries and bytes, set-id bits dropped), plus the export's
 * own: entries outside the requested subtree are refused, devices, fifos,
 * sockets and symlinks that point out of the exported tree are left out and
 * named. A directory export is built in a fresh staging directory beside the
 * target with O_EXCL|O_NOFOLLOW creates (SafeTreeWriter) and renamed into
 * place only when the whole stream passed; a tar export is re-packed from
 * the checked entries into a temporary file linked to the target (a
 * process killed meanwhile leaves only its staging directory, which the
 * next export beside it removes). An
 * existing target is refused unless `merge` (directories only), and a merge
 * never writes through a symlink of the host's target.
 */

export interface ExportOptions {
  /** Workspace-relative directory to export ("" for /workspace). */
  rel: string;
  /** Exactly these workspace-relative paths (the changed files), or every path under rel. */
  list: string[] | null;
  target: string;
  format: "dir" | "tar";
  merge: boolean;
  limits?: ImportLimits;
  signal?: AbortSignal;
  /** State directories besides the environment's one (the Pyro's own): no export lands in or above them. */
  stateDirs?: readonly string[];
}

export interface ExportResult {
  target: string;
  format: "dir" | "tar";
  files: number;
  bytes: number;
  skipped: Array<{ path: string; reason: string }>;
  setid_dropped: string[];
}

/** The import checks, for entries coming back out of a sandbox, relative to the exported directory. */
class ExportChecker extends ImportChecker {
  readonly skipped: Array<{ path: string; reason: string }> = [];

  constructor(
    private readonly prefix: string,
    limits: ImportLimits,
  ) {
    super(limits);
  }

  override check(entry: { path: string; type: string; mode: number; mtime: Date; size: number; linkpath?: string }) {
    const path = this.normalize(entry.path);
    let rel: string;
    if (!this.prefix) rel = path;
    else if (path === this.prefix) return null; // the exported directory itself
    else if (path.startsWith(`${this.prefix}/`)) rel = path.slice(this.prefix.length + 1);
    else {
      throw new PyroError("unsafe_archive", `Refused to export "${entry.path}": the sandbox sent an entry outside ${absPath(this.prefix)}, which was not asked for.`, {
        hint: "Nothing was written. The sandbox is misbehaving: inspect or delete the task.",
        details: { entry: entry.path },
      });
    }
    const special = { CharacterDevice: "device", BlockDevice: "device", FIFO: "fifo", Socket: "socket" }[entry.type];
    if (special) {
      this.skipped.push({ path: rel, reason: `a ${special} (never exported)` });
      return null;
    }
    if (entry.type === "SymbolicLink") {
      const target = entry.linkpath ?? "";
      const resolved = posix.normalize(posix.join(posix.dirname(rel), target));
      if (!target || target.startsWith("/") || resolved === ".." || resolved.startsWith("../")) {
        this.skipped.push({ path: rel, reason: `a symlink to ${JSON.stringify(target)}, outside the exported tree` });
        return null;
      }
    }
    return super.check({ ...entry, path: rel });
  }
}

function exportError(error: unknown): unknown {
  if (error instanceof PyroError && error.code === "unsafe_archive" && error.message.startsWith("Refused to import")) {
    return new PyroError("unsafe_archive", error.message.replace("Refused to import", "Refused to export"), {
      hint: "Nothing was written to the target. The entry came from the sandbox; remove it there (or export a subtree without it).",
      details: error.details,
    });
  }
  return error;
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** Checks the target before anything moves: where it goes, and what is there. */
function checkTarget(raw: string, format: "dir" | "tar", merge: boolean, stateDirs: readonly string[]): { target: string; exists: boolean } {
  if (!raw || raw.includes("\0")) throw new PyroError("invalid_argument", "The export target is empty or contains a NUL byte.");
  const target = resolve(raw);
  const parent = lstatOrNull(dirname(target));
  if (!parent?.isDirectory()) {
    throw new PyroError("invalid_argument", `The export target's parent ${dirname(target)} is not an existing directory${parent?.isSymbolicLink() ? " (it is a symlink)" : ""}.`, {
      hint: "Create the parent directory first, or export somewhere else.",
    });
  }
  // By its real path too: a parent reached through a symlink into the state directory is the state directory.
  const guarded = protectedOverlap(join(realpathSync(dirname(target)), basename(target)), stateDirs) ?? protectedOverlap(target, stateDirs);
  if (guarded) {
    throw new PyroError("invalid_argument", `The export target ${target} would write into pyro's own ${guarded.label} (${guarded.path}), where task records and sandboxes' layers live; nothing that leaves a sandbox is written there.`, {
      hint: "Export to a directory outside pyro's state and cache directories.",
      details: { protected_dir: guarded.path },
    });
  }
  const st = lstatOrNull(target);
  if (!st) return { target, exists: false };
  if (st.isSymbolicLink()) {
    throw new PyroError("target_exists", `The export target ${target} is a symlink; an export never writes through one.`, { hint: "Export to a real directory, or remove the symlink." });
  }
  if (format === "tar") throw new PyroError("target_exists", `The export target ${target} already exists.`, { hint: "Export to a new file name (a tar is never merged into)." });
  if (!st.isDirectory()) throw new PyroError("target_exists", `The export target ${target} exists and is not a directory.`, { hint: "Export to a new directory, or to a .tar file." });
  if (!merge) throw new PyroError("target_exists", `The export target ${target} already exists.`, { hint: "Pass merge: true (--merge) to write into it, replacing files of the same name, or export to a new directory." });
  return { target, exists: true };
}

/** Writes checked entries; returns the files (everything but directories) and bytes written. */
async function writeTree(entries: AsyncIterable<SourceEntry>, writer: SafeTreeWriter): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for await (const { entry, body } of entries) {
    if (entry.type !== "dir") files++;
    bytes += entry.type === "file" ? entry.size : 0;
    if (entry.type === "dir") writer.dir(entry.path, entry.mode);
    else if (entry.type === "symlink") writer.symlink(entry.path, entry.linkpath!);
    else if (entry.type === "hardlink") writer.hardlink(entry.path, entry.linkpath!);
    else {
      const { fd } = writer.openFile(entry.path, entry.size);
      let closed = false;
      try {
        let written = 0;
        for await (const chunk of body ?? []) {
          written += chunk.length;
          if (written > entry.size) throw new PyroError("unsafe_archive", `Refused to export "${entry.path}": more bytes than its header said.`);
          let off = 0;
          while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
        }
        closed = true;
        writer.closeFile(fd, entry.path, entry.mode, entry.mtime);
      } finally {
        if (!closed) closeSync(fd);
      }
    }
  }
  writer.finish();
  return { files, bytes };
}

/** What the guest left out itself ("skipped: KIND PATH" lines on its stderr), relative to the exported directory. */
function guestSkips(stderr: string, prefix: string): Array<{ path: string; reason: string }> {
  return stderr
    .split("\n")
    .map((l) => /^skipped: (\w+) (.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ path: prefix && m[2]!.startsWith(`${prefix}/`) ? m[2]!.slice(prefix.length + 1) : m[2]!, reason: `a ${m[1]} (never exported)` }));
}

/** Merges a staged tree into an existing directory: every conflict is found before anything moves; host symlinks are never written through. */
function mergeInto(stage: string, target: string): void {
  const moves: Array<[string, string]> = [];
  const plan = (rel: string) => {
    for (const name of readdirSync(join(stage, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      const src = lstatSync(join(stage, r));
      const dst = lstatOrNull(join(target, r));
      if (!dst) moves.push([r, "new"]);
      else if (dst.isSymbolicLink()) throw new PyroError("target_exists", `Cannot merge "${r}": it is a symlink in ${target}, and an export never writes through one.`, { hint: "Nothing was written. Remove that symlink, or export to a new directory." });
      else if (src.isDirectory() && dst.isDirectory()) plan(r);
      else if (src.isDirectory() || dst.isDirectory()) throw new PyroError("target_exists", `Cannot merge "${r}": a ${src.isDirectory() ? "directory" : "file"} would replace a ${dst.isDirectory() ? "directory" : "file"} in ${target}.`, { hint: "Nothing was written. Move it away, or export to a new directory." });
      else moves.push([r, "replace"]);
    }
  };
  plan("");
  for (const [r] of moves) renameSync(join(stage, r), join(target, r));
}

/** Staging directories are named `.pyro-export-<pid>.<start time>-...` by the process that made them. */
const STAGE_NAME = /^\.pyro-export-(\d+)\.(\d+)-/;

/** Removes what exports of processes that died (kill -9) left beside their targets: nothing else is ever there. */
function sweepStages(parent: string): void {
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return;
  }
  for (const name of names) {
    const m = STAGE_NAME.exec(name);
    if (m && !isAlive({ pid: Number(m[1]), start_time: Number(m[2]) })) rmSync(join(parent, name), { recursive: true, force: true });
  }
}

export async function exportWorkspace(driver: Driver, handle: SandboxHandle, options: ExportOptions): Promise<ExportResult> {
  const { target, exists } = checkTarget(options.target, options.format, options.merge, options.stateDirs ?? []);
  const checker = new ExportChecker(options.rel, options.limits ?? DEFAULT_IMPORT_LIMITS);
  sweepStages(dirname(target));
  const me = selfIdentity();
  const stage = mkdtempSync(join(dirname(target), `.pyro-export-${me.pid}.${me.start_time}-${basename(target).slice(0, 32)}-`));
  // A refused entry stops the sandbox's side at once, not after the rest of a large tree.
  const abort = new AbortController();
  const onOuter = () => abort.abort();
  options.signal?.addEventListener("abort", onOuter, { once: true });
  const { stream, done } = tarOut(driver, handle, options.rel, options.list, abort.signal);
  try {
    const entries = tarEntries(stream, checker);
    let result: { files: number; bytes: number };
    if (options.format === "dir") {
      const tree = join(stage, "tree");
      const writer = new SafeTreeWriter(tree, { maxFiles: checker.limits.max_files, maxBytes: checker.limits.max_bytes });
      const written = await writeTree(entries, writer);
      pauseAt("task-export:staged");
      const r = await done;
      if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, `Cannot export ${absPath(options.rel)}`);
      checker.skipped.push(...guestSkips(r.stderr, options.rel));
      if (exists) mergeInto(tree, target);
      else {
        if (lstatOrNull(target)) throw new PyroError("target_exists", `The export target ${target} appeared while exporting.`, { hint: "Nothing was written. Export again." });
        renameSync(tree, target);
      }
      result = written;
    } else {
      const tmp = join(stage, "out.tar");
      const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
      const stats: PackStats = { files: 0, bytes: 0, digest: "" };
      try {
        for await (const piece of packTar(entries, stats)) {
          let off = 0;
          while (off < piece.length) off += writeSync(fd, piece, off, piece.length - off);
        }
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      const r = await done;
      if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, `Cannot export ${absPath(options.rel)}`);
      checker.skipped.push(...guestSkips(r.stderr, options.rel));
      linkSync(tmp, target); // fails if the target appeared meanwhile: never replaced
      result = { files: stats.files, bytes: stats.bytes };
    }
    return { target, format: options.format, ...result, skipped: checker.skipped, setid_dropped: checker.setidDropped };
  } catch (error) {
    // A stream that ended before any tar (the guest refused the path: a symlink, a file, nothing there)
    // says why on the guest's stderr; its exit comes with that end, before any abort could cut it.
    const early = error instanceof PyroError && error.code === "unsafe_archive" && /not a tar archive/.test(error.message);
    if (!early) abort.abort();
    stream.destroy();
    // Not waited on for long: a guest that sent junk and kept running is cut off.
    const grace = early ? setTimeout(() => abort.abort(), 2000) : undefined;
    const r = await done.catch(() => null);
    clearTimeout(grace);
    abort.abort();
    if (early && r && r.exit_code !== 0 && r.stderr.trim()) throw guestError(r.stderr, r.exit_code, `Cannot export ${absPath(options.rel)}`);
    throw exportError(error);
  } finally {
    options.signal?.removeEventListener("abort", onOuter);
    rmSync(stage, { recursive: true, force: true });
  }
}
