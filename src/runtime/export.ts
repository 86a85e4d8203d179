import { closeSync, constants, fstatSync, fsyncSync, linkSync, lstatSync, mkdtempSync, openSync, readdirSync, readlinkSync, realpathSync, renameSync, rmSync, writeSync, type Stats } from "node:fs";
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
import { hostRunsFrom, isRepoMetadata } from "./archive/host-runs.js";

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
  /** Repository-metadata tops already listed: a lookup per entry (a scan of `skipped` per entry made 100,000 `.git` directories cost the host 27 s of CPU). */
  private readonly listedMeta = new Set<string>();

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
    // A repository's metadata never leaves: its hooks and config would run in the host's git (host-runs.ts).
    const linkedInto = entry.type === "Link" ? this.normalize(entry.linkpath ?? "") : "";
    if (isRepoMetadata(path) || (linkedInto && isRepoMetadata(linkedInto))) {
      const parts = rel.split("/");
      const at = parts.findIndex((p) => isRepoMetadata(p));
      const top = at >= 0 ? parts.slice(0, at + 1).join("/") : rel;
      if (!this.listedMeta.has(top)) {
        this.listedMeta.add(top);
        this.skip(top, isRepoMetadata(path) ? "repository metadata: its hooks and config would run in the host's git or hg (never exported)" : "a hard link into repository metadata (never exported)");
      }
      return null;
    }
    const special = { CharacterDevice: "device", BlockDevice: "device", FIFO: "fifo", Socket: "socket" }[entry.type];
    if (special) return this.skip(rel, `a ${special} (never exported)`);
    if (entry.type === "SymbolicLink") {
      const target = entry.linkpath ?? "";
      const resolved = posix.normalize(posix.join(posix.dirname(rel), target));
      if (!target || target.startsWith("/") || resolved === ".." || resolved.startsWith("../")) return this.skip(rel, `a symlink to ${JSON.stringify(target)}, outside the exported tree`);
    }
    return super.check({ ...entry, path: rel });
  }

  /**
   * Lists an entry left out. The list is bounded like the entries written
   * (max_files): a sandbox's inodes are cheap, and each listed entry costs
   * the host memory and a line of the answer the model reads.
   */
  private skip(path: string, reason: string): null {
    if (this.skipped.length >= this.limits.max_files) {
      throw new PyroError("unsafe_archive", `Refused to export "${path}": the export leaves out more than ${this.limits.max_files} entries (devices, fifos, sockets, symlinks out of the tree, repository metadata).`, {
        hint: "Nothing was written to the target. Remove those entries in the sandbox, or export a subtree without them.",
        details: { entry: path },
      });
    }
    this.skipped.push({ path, reason });
    return null;
  }
}

function exportError(error: unknown): unknown {
  if (!(error instanceof PyroError) || error.code !== "unsafe_archive" || !error.message.startsWith("Refused to import")) return error;
  const { entry, limit, max } = (error.details ?? {}) as { entry?: string; limit?: string; max?: number };
  if (limit === "max_files" || limit === "max_bytes") {
    // Past max_files or max_bytes the entry named is only where the count ran out.
    const why = limit === "max_files" ? `the export has more than ${max} entries` : `the export holds more than ${max} bytes`;
    return new PyroError("unsafe_archive", `Refused to export "${entry}": ${why}.`, {
      hint: "Nothing was written to the target. Export less: a subtree (path), only the changed files (only_changed), or raise max_files or max_bytes.",
      details: error.details,
    });
  }
  return new PyroError("unsafe_archive", error.message.replace("Refused to import", "Refused to export"), {
    hint: "Nothing was written to the target. The entry came from the sandbox; remove it there (or export a subtree without it).",
    details: error.details,
  });
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** O_PATH-free flags for a directory we hold: never a symlink in its place. */
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/** A held directory's path: every name below it is looked up in that very directory, whatever its own path becomes. */
const held = (fd: number, name?: string) => (name === undefined ? `/proc/self/fd/${fd}` : `/proc/self/fd/${fd}/${name}`);

interface Target {
  target: string;
  exists: boolean;
  /** The target's parent, opened once it was checked: the staging directory, the rename and the link happen in it. */
  parentFd: number;
  name: string;
}

/**
 * Checks the target before anything moves: where it goes, and what is there.
 * The parent is then held by descriptor: its path may lie in a directory
 * another local user can write (a root pyro exporting into a user's home),
 * who could swap a name on it for a symlink between our check and our write.
 */
function checkTarget(raw: string, format: "dir" | "tar", merge: boolean, stateDirs: readonly string[]): Target {
  if (!raw || raw.includes("\0")) throw new PyroError("invalid_argument", "The export target is empty or contains a NUL byte.");
  const target = resolve(raw);
  const parent = lstatOrNull(dirname(target));
  if (!parent?.isDirectory()) {
    throw new PyroError("invalid_argument", `The export target's parent ${dirname(target)} is not an existing directory${parent?.isSymbolicLink() ? " (it is a symlink)" : ""}.`, {
      hint: "Create the parent directory first, or export somewhere else.",
    });
  }
  // By its real path too: a parent reached through a symlink into the state directory is the state directory.
  const realParent = realpathSync(dirname(target));
  const guarded = protectedOverlap(join(realParent, basename(target)), stateDirs) ?? protectedOverlap(target, stateDirs);
  if (guarded) {
    throw new PyroError("invalid_argument", `The export target ${target} would write into pyro's own ${guarded.label} (${guarded.path}), where task records and sandboxes' layers live; nothing that leaves a sandbox is written there.`, {
      hint: "Export to a directory outside pyro's state and cache directories.",
      details: { protected_dir: guarded.path },
    });
  }
  const runs = hostRunsFrom(join(realParent, basename(target)));
  if (runs) {
    throw new PyroError("invalid_argument", `The export target ${target} is where the host runs what it finds: ${runs}. Nothing that leaves a sandbox is written there.`, {
      hint: "Export to a project directory or a new directory (not a home directory itself, a dot-entry of one, a directory of PATH or a .git directory), and move what you reviewed from there.",
    });
  }
  const parentFd = openSync(realParent, DIR_FLAGS);
  try {
    // What was opened is what was checked: no component of its path was swapped meanwhile.
    if (readlinkSync(held(parentFd)) !== realParent) throw new PyroError("target_exists", `The export target's parent ${realParent} changed while it was checked.`, { hint: "Nothing was written. Export again." });
    const name = basename(target);
    const st = lstatOrNull(held(parentFd, name));
    if (!st) return { target, exists: false, parentFd, name };
    if (st.isSymbolicLink()) {
      throw new PyroError("target_exists", `The export target ${target} is a symlink; an export never writes through one.`, { hint: "Export to a real directory, or remove the symlink." });
    }
    if (format === "tar") throw new PyroError("target_exists", `The export target ${target} already exists.`, { hint: "Export to a new file name (a tar is never merged into)." });
    if (!st.isDirectory()) throw new PyroError("target_exists", `The export target ${target} exists and is not a directory.`, { hint: "Export to a new directory, or to a .tar file." });
    if (!merge) throw new PyroError("target_exists", `The export target ${target} already exists.`, { hint: "Pass merge: true (--merge) to write into it, replacing files of the same name, or export to a new directory." });
    return { target, exists: true, parentFd, name };
  } catch (error) {
    closeSync(parentFd);
    throw error;
  }
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

/**
 * What the guest left out itself (`skipped: KIND "PATH"` lines on its stderr, the path a JSON string so a
 * name with a newline in it stays one line), relative to the exported directory.
 */
function guestSkips(stderr: string, prefix: string): Array<{ path: string; reason: string }> {
  const out: Array<{ path: string; reason: string }> = [];
  for (const line of stderr.split("\n")) {
    const m = /^skipped: (\w+) ("(?:[^"\\]|\\.)*")$/.exec(line);
    if (!m) continue;
    let path: unknown;
    try {
      path = JSON.parse(m[2]!);
    } catch {
      continue;
    }
    if (typeof path !== "string") continue;
    out.push({ path: prefix && path.startsWith(`${prefix}/`) ? path.slice(prefix.length + 1) : path, reason: `a ${m[1]} (never exported)` });
  }
  return out;
}

/** Opens `rel` (a directory of the merge's target, seen by the plan as `id`) by walking from `top` with O_NOFOLLOW at every step. */
function openPlanned(top: number, rel: string, id: { dev: number; ino: number }, target: string): number {
  let fd = openSync(held(top), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    for (const part of rel ? rel.split("/") : []) {
      const next = openSync(held(fd, part), DIR_FLAGS);
      closeSync(fd);
      fd = next;
    }
    const st = fstatSync(fd);
    if (st.dev !== id.dev || st.ino !== id.ino) throw new Error("swapped");
    return fd;
  } catch {
    closeSync(fd);
    throw new PyroError("target_exists", `Cannot merge into "${rel || "."}" of ${target}: it changed since the merge was planned (a symlink or another directory in its place), and an export never writes through one.`, { hint: "The merge stopped there. Check the target, then export again (or to a new directory)." });
  }
}

/**
 * Merges a staged tree into an existing directory: every conflict is found
 * before anything moves; host symlinks are never written through. The
 * target's directories belong to whoever owns them (another user may swap
 * one for a symlink while we merge), so every destination directory is
 * reached from the held target by O_NOFOLLOW steps and must still be the
 * one the plan saw.
 */
function mergeInto(stage: string, targetFd: number, target: string): void {
  const top = openSync(held(targetFd), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    const topId = fstatSync(top);
    const moves: Array<{ r: string; dir: string; name: string; id: { dev: number; ino: number } }> = [];
    const plan = (rel: string, dstFd: number, id: { dev: number; ino: number }) => {
      for (const name of readdirSync(join(stage, rel))) {
        const r = rel ? `${rel}/${name}` : name;
        const src = lstatSync(join(stage, r));
        const dst = lstatOrNull(held(dstFd, name));
        if (!dst) moves.push({ r, dir: rel, name, id });
        else if (dst.isSymbolicLink()) throw new PyroError("target_exists", `Cannot merge "${r}": it is a symlink in ${target}, and an export never writes through one.`, { hint: "Nothing was written. Remove that symlink, or export to a new directory." });
        else if (src.isDirectory() && dst.isDirectory()) {
          const child = openSync(held(dstFd, name), DIR_FLAGS);
          try {
            const cid = fstatSync(child);
            if (cid.dev !== dst.dev || cid.ino !== dst.ino) throw new PyroError("target_exists", `Cannot merge "${r}": it changed while the merge was planned.`, { hint: "Nothing was written. Export again." });
            plan(r, child, { dev: cid.dev, ino: cid.ino });
          } finally {
            closeSync(child);
          }
        } else if (src.isDirectory() || dst.isDirectory()) throw new PyroError("target_exists", `Cannot merge "${r}": a ${src.isDirectory() ? "directory" : "file"} would replace a ${dst.isDirectory() ? "directory" : "file"} in ${target}.`, { hint: "Nothing was written. Move it away, or export to a new directory." });
        else moves.push({ r, dir: rel, name, id });
      }
    };
    plan("", top, { dev: topId.dev, ino: topId.ino });
    let dirFd = -1;
    let dirRel: string | null = null;
    try {
      for (const m of moves) {
        if (m.dir !== dirRel) {
          if (dirFd >= 0) closeSync(dirFd);
          dirFd = -1;
          dirFd = openPlanned(top, m.dir, m.id, target);
          dirRel = m.dir;
        }
        renameSync(join(stage, m.r), held(dirFd, m.name));
      }
    } finally {
      if (dirFd >= 0) closeSync(dirFd);
    }
  } finally {
    closeSync(top);
  }
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
  const me = process.geteuid?.() ?? -1;
  for (const name of names) {
    const m = STAGE_NAME.exec(name);
    if (!m || isAlive({ pid: Number(m[1]), start_time: Number(m[2]) })) continue;
    // Only a directory of ours (mode 700: nothing in it is anyone else's to swap); one another user made
    // under that name is theirs, and removing it recursively could be raced into following their links.
    const st = lstatOrNull(join(parent, name));
    if (st?.isDirectory() && st.uid === me) rmSync(join(parent, name), { recursive: true, force: true });
  }
}

export async function exportWorkspace(driver: Driver, handle: SandboxHandle, options: ExportOptions): Promise<ExportResult> {
  if (isRepoMetadata(options.rel)) {
    throw new PyroError("invalid_argument", `${absPath(options.rel)} is repository metadata, which is never exported: its hooks and config would run in the host's git or hg.`, {
      hint: "Export the files you want (their commits can be made on the host after you reviewed task_diff), not .git.",
    });
  }
  const { target, exists, parentFd, name } = checkTarget(options.target, options.format, options.merge, options.stateDirs ?? []);
  try {
    return await exportHeld(driver, handle, options, { target, exists, parentFd, name });
  } finally {
    closeSync(parentFd);
  }
}

/**
 * The staging directory, made in the held parent and then held itself
 * (mode 700, ours: no other user can put a name in it), so that every
 * entry written, the final rename and the tar's link resolve from
 * descriptors: renaming it away or planting a link under its name changes
 * nothing we write.
 */
function holdStage(parentFd: number, name: string): { fd: number; name: string } {
  const me = selfIdentity();
  const stageName = basename(mkdtempSync(held(parentFd, `.pyro-export-${me.pid}.${me.start_time}-${name.slice(0, 32)}-`)));
  const fd = openSync(held(parentFd, stageName), DIR_FLAGS);
  const st = fstatSync(fd);
  if (st.uid !== (process.geteuid?.() ?? st.uid) || (st.mode & 0o777) !== 0o700) {
    closeSync(fd);
    throw new PyroError("target_exists", `The export's staging directory ${stageName} was replaced while it was made.`, { hint: "Nothing was written. Export again." });
  }
  return { fd, name: stageName };
}

async function* noEntries(): AsyncGenerator<SourceEntry> {}

async function exportHeld(driver: Driver, handle: SandboxHandle, options: ExportOptions, t: Target): Promise<ExportResult> {
  const { target, exists, parentFd, name } = t;
  const checker = new ExportChecker(options.rel, options.limits ?? DEFAULT_IMPORT_LIMITS);
  sweepStages(held(parentFd));
  const staged = holdStage(parentFd, name);
  const stage = held(staged.fd);
  // A refused entry stops the sandbox's side at once, not after the rest of a large tree.
  const abort = new AbortController();
  const onOuter = () => abort.abort();
  options.signal?.addEventListener("abort", onOuter, { once: true });
  const { stream, done } = tarOut(driver, handle, options.rel, options.list, abort.signal);
  try {
    // An empty list (only_changed, nothing changed) has the guest send just the end-of-archive blocks, which
    // node-tar's strict parser calls "not a tar archive": the export is then an empty directory or tar.
    const entries = options.list?.length === 0 ? (stream.resume(), noEntries()) : tarEntries(stream, checker);
    let result: { files: number; bytes: number };
    if (options.format === "dir") {
      const tree = join(stage, "tree");
      const writer = new SafeTreeWriter(tree, { maxFiles: checker.limits.max_files, maxBytes: checker.limits.max_bytes });
      const written = await writeTree(entries, writer);
      pauseAt("task-export:staged");
      const r = await done;
      if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, `Cannot export ${absPath(options.rel)}`);
      checker.skipped.push(...guestSkips(r.stderr, options.rel));
      if (exists) {
        const into = openSync(held(parentFd, name), DIR_FLAGS);
        try {
          mergeInto(tree, into, target);
        } finally {
          closeSync(into);
        }
      } else {
        if (lstatOrNull(held(parentFd, name))) throw new PyroError("target_exists", `The export target ${target} appeared while exporting.`, { hint: "Nothing was written. Export again." });
        renameSync(tree, held(parentFd, name));
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
      linkSync(tmp, held(parentFd, name)); // fails if the target appeared meanwhile: never replaced
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
    for (const n of ["tree", "out.tar"]) rmSync(`${stage}/${n}`, { recursive: true, force: true });
    // Its name, if still ours (another user may have moved it: then only its contents were ours to remove).
    const st = lstatOrNull(held(parentFd, staged.name));
    const mine = fstatSync(staged.fd);
    if (st?.isDirectory() && st.dev === mine.dev && st.ino === mine.ino) rmSync(held(parentFd, staged.name), { recursive: true, force: true });
    closeSync(staged.fd);
  }
}
