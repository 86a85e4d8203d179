import { posix } from "node:path";
import { PyroError } from "../../core/errors.js";

/**
 * The safety rules every tree or archive must pass before it reaches a
 * sandbox (docs/security.md, "Imports"). The checker sees entries in order
 * and decides each one; the first bad entry stops the import with an error
 * that names it.
 */
export type EntryType = "file" | "dir" | "symlink" | "hardlink";

export interface ImportLimits {
  /** Most entries an import may hold. */
  max_files: number;
  /** Most bytes of file content an import may hold (what a compressed bomb runs into). */
  max_bytes: number;
}

export const DEFAULT_IMPORT_LIMITS: ImportLimits = { max_files: 100_000, max_bytes: 4 * 1024 ** 3 };

export interface CheckedEntry {
  /** Relative POSIX path inside the tree, normalized, without `./`. */
  path: string;
  type: EntryType;
  /** Permission bits with set-uid and set-gid dropped (the sticky bit is kept). */
  mode: number;
  mtime: Date;
  size: number;
  /** Symlink target (relative, staying inside the tree) or hard-link target (an earlier entry). */
  linkpath?: string;
}

const MAX_PATH = 4096;

function reject(path: string, why: string, hint = "Nothing was changed. Remove or fix that entry in the source and try again."): never {
  throw new PyroError("unsafe_archive", `Refused to import "${path}": ${why}.`, { hint, details: { entry: path } });
}

/** Past a size or count limit the named entry is only where the count ran out: removing it would not help. */
const TOO_LARGE = "Nothing was changed. Import less: a subdirectory, or leave out what the sandbox does not need with exclude (e.g. node_modules, build outputs).";

/**
 * The refusal past max_files or max_bytes. `details.limit` names the limit and `details.max` its value, so a
 * caller that is not an import (an export checks its stream with the same checker) words its own message from
 * them instead of reading this one's text.
 */
function rejectLimit(path: string, limit: "max_files" | "max_bytes", max: number): never {
  const why = limit === "max_files" ? `the import has more than ${max} entries` : `the import holds more than ${max} bytes`;
  throw new PyroError("unsafe_archive", `Refused to import "${path}": ${why}.`, { hint: TOO_LARGE, details: { entry: path, limit, max } });
}

export class ImportChecker {
  private files = 0;
  private bytes = 0;
  private readonly symlinks = new Set<string>();
  private readonly regular = new Set<string>();
  readonly setidDropped: string[] = [];

  private readonly excludedDirs = new Set<string>();

  /** `exclude` leaves matching paths (and everything under a matching directory) out of the import. */
  constructor(
    readonly limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
    private readonly exclude?: (relPath: Buffer | string) => boolean,
  ) {}

  /** Whether a normalized relative path is left out (it matches a pattern, or lies under an excluded directory). */
  isExcluded(path: string | Buffer): boolean {
    if (!this.exclude) return false;
    const text = typeof path === "string" ? path : path.toString("latin1");
    for (let i = text.indexOf("/"); i >= 0; i = text.indexOf("/", i + 1)) {
      if (this.excludedDirs.has(text.slice(0, i))) return true;
    }
    return this.exclude(path);
  }

  /** Normalizes an entry path, refusing absolute paths, `..` and oddities. */
  normalize(raw: string): string {
    if (raw.includes("\0")) reject(raw, "the path contains a NUL byte");
    if (raw.length > MAX_PATH) reject(raw.slice(0, 80) + "...", `the path is longer than ${MAX_PATH} bytes`);
    if (raw.startsWith("/")) reject(raw, "absolute paths are not allowed");
    const parts = raw.split("/").filter((p) => p !== "" && p !== ".");
    if (parts.includes("..")) reject(raw, "`..` path components are not allowed");
    return parts.join("/");
  }

  /** Checks one entry. Returns null for the tree's root itself (`.`) and for excluded paths. */
  check(entry: { path: string; type: string; mode: number; mtime: Date; size: number; linkpath?: string }): CheckedEntry | null {
    const path = this.normalize(entry.path);
    if (path === "") return null;
    if (this.isExcluded(path)) {
      if (entry.type === "dir" || entry.type === "Directory") this.excludedDirs.add(path);
      return null;
    }
    // Writing anything below a symlink of this import would write wherever the link points.
    for (let i = path.indexOf("/"); i >= 0; i = path.indexOf("/", i + 1)) {
      if (this.symlinks.has(path.slice(0, i))) reject(path, `it would be written through the symlink "${path.slice(0, i)}"`);
    }
    let type: EntryType;
    switch (entry.type) {
      case "file":
      case "File":
      case "OldFile":
      case "ContiguousFile":
        type = "file";
        break;
      case "dir":
      case "Directory":
        type = "dir";
        break;
      case "symlink":
      case "SymbolicLink":
        type = "symlink";
        break;
      case "hardlink":
      case "Link":
        type = "hardlink";
        break;
      case "CharacterDevice":
      case "BlockDevice":
      case "char-device":
      case "block-device":
        reject(path, "device nodes are not allowed");
      case "FIFO":
      case "fifo":
        reject(path, "fifos are not allowed");
      case "socket":
        reject(path, "sockets are not allowed");
      default:
        reject(path, `entries of type ${entry.type} are not allowed`);
    }
    if (++this.files > this.limits.max_files) rejectLimit(path, "max_files", this.limits.max_files);
    const size = type === "file" ? entry.size : 0;
    this.bytes += size;
    if (this.bytes > this.limits.max_bytes) rejectLimit(path, "max_bytes", this.limits.max_bytes);

    let mode = entry.mode & 0o7777;
    if (mode & 0o6000) {
      this.setidDropped.push(path);
      mode &= ~0o6000;
    }
    const checked: CheckedEntry = { path, type, mode, mtime: entry.mtime, size };
    if (type === "symlink") {
      const target = entry.linkpath ?? "";
      if (!target) reject(path, "the symlink has no target");
      if (target.startsWith("/")) reject(path, `the symlink points to the absolute path "${target}"; only links that stay inside the tree are allowed`);
      const resolved = posix.normalize(posix.join(posix.dirname(path), target));
      if (resolved === ".." || resolved.startsWith("../")) reject(path, `the symlink points outside the tree ("${target}")`);
      checked.linkpath = target;
      this.symlinks.add(path);
    } else if (type === "hardlink") {
      const target = this.normalize(entry.linkpath ?? "");
      if (!this.regular.has(target)) reject(path, `the hard link points to "${entry.linkpath}", which is not an earlier file of this import`);
      checked.linkpath = target;
    } else {
      // A later entry of the same path replaces an earlier symlink: it is no longer a way through.
      this.symlinks.delete(path);
    }
    if (type === "file") this.regular.add(path);
    return checked;
  }

  get stats(): { files: number; bytes: number } {
    return { files: this.files, bytes: this.bytes };
  }
}
