import { realpathSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { PyroError } from "../../core/errors.js";
import { cacheDir, stateDir } from "../../util/paths.js";
import { homeDirs } from "./homes.js";

export type SourceKind = "directory" | "tar";

/** A directory the import must never read from (pyro's own state or cache: sandboxes write there). */
export interface ProtectedDir {
  label: string;
  path: string;
  dev: number;
  ino: number;
}

export interface ResolvedSource {
  kind: SourceKind;
  /** The real path (symlinks of the path itself resolved). */
  path: string;
  /** Identity of what was checked: the walk refuses a root that is no longer this (swapped since). */
  dev?: number;
  ino?: number;
  /** pyro's state and cache directories, by identity: a walk that meets one refuses to go in. */
  protected?: ProtectedDir[];
}

const TAR_SUFFIXES = [".tar", ".tar.gz", ".tgz"];

function realOrResolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}

/** The real path of the deepest ancestor of `path` that exists (symlinks resolved). */
function existingAncestor(path: string): string {
  for (let p = path; ; p = dirname(p)) {
    try {
      return realpathSync(p);
    } catch {
      if (dirname(p) === p) return p;
    }
  }
}

function withinRoots(real: string, roots: readonly string[]): boolean {
  return roots.some((root) => {
    try {
      return inside(real, realpathSync(root));
    } catch {
      return false;
    }
  });
}

/** Whether path is dir or lies below it (both absolute, normalized). */
export function inside(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

/**
 * pyro's state directory (every sandbox's writable layer lives under it, so a
 * sandbox can change files there while they are read) and its environment
 * cache; `extraStateDirs` adds the state directory a Pyro was configured with.
 */
export function protectedDirs(extraStateDirs: readonly string[] = []): ProtectedDir[] {
  const candidates: Array<[string, string]> = [
    ...extraStateDirs.map((d): [string, string] => ["state directory", d]),
    ["state directory", stateDir()],
    ["cache directory", cacheDir()],
    // The user's default ones too: a server configured with other directories must not reach the CLI's tasks.
    ["state directory", stateDir({ ...process.env, PYRO_STATE_DIR: undefined })],
    ["cache directory", cacheDir({ ...process.env, PYRO_CACHE_DIR: undefined })],
    ["state directory", stateDir({})],
    ["cache directory", cacheDir({})],
  ];
  const out: ProtectedDir[] = [];
  for (const [label, raw] of candidates) {
    const path = realOrResolved(raw);
    if (out.some((d) => d.path === path)) continue;
    let dev = -1;
    let ino = -1;
    try {
      const st = statSync(path);
      dev = st.dev;
      ino = st.ino;
    } catch {
      /* not made yet: only the path check applies */
    }
    out.push({ label, path, dev, ino });
  }
  return out;
}

/**
 * The protected directory (pyro's state or cache) that a host path written
 * by an export would touch: one it lies in, or one that lies in it (a merge
 * into a parent of the state directory writes below it). `real` has its
 * existing ancestors' symlinks resolved. Every task's record, notes and
 * writable layer live there: a file a sandbox sent that landed in it could
 * forge a record (say, a rootfs naming a host directory, mounted into the
 * next sandbox), so nothing leaving a sandbox is ever written there.
 */
export function protectedOverlap(real: string, extraStateDirs: readonly string[] = []): ProtectedDir | null {
  return protectedDirs(extraStateDirs).find((dir) => inside(real, dir.path) || inside(dir.path, real)) ?? null;
}

/**
 * Where the host keeps its own secrets, root's: /etc (shadow, ssh host keys,
 * TLS private keys), /run (a container's /run/secrets, Docker's and
 * Compose's; a pod's /var/run/secrets/kubernetes.io/serviceaccount/token,
 * its credential for the cluster's API) and /var/lib (services' keys and
 * data: k3s's server token, a database's files).
 */
const SYSTEM_SECRETS: ReadonlyArray<readonly [string, string]> = [
  ["/etc", "the host's own keys and configuration"],
  ["/run", "the host's runtime secrets (a container's /run/secrets, a pod's service account token)"],
  ["/var/lib", "services' keys and data"],
];

/**
 * Why an import through allowed roots (a model picks the path: the MCP
 * server, the agent-framework tools) may not read `real`, or null. A
 * server's default root is the directory it started in, often the user's
 * home (or /, in a container): the home itself or a directory above one
 * carries every key and credential it holds, and its dot-entries
 * (`~/.ssh`, `~/.aws`, `~/.gnupg`, `~/.config`), /etc, /run and /var/lib are where those
 * live. An operator who allowed such a
 * directory by name (the source lies under a root that is it or inside it)
 * meant it. `roots` are the allowed roots' real paths.
 */
function homeSecrets(real: string, roots: readonly string[]): string | null {
  // The host's own keys are root's, in /etc, /run and /var/lib: a root server started in / (a
  // container's default) would otherwise hand them to any model.
  for (const [path, what] of SYSTEM_SECRETS) {
    const dir = realOrResolved(path);
    if ((inside(real, dir) || inside(dir, real)) && !roots.some((r) => inside(r, dir) && inside(real, r))) return `${dir} holds ${what}, which an import reads only where an allowed root names it (or a directory inside it)`;
  }
  for (const home of homeDirs()) {
    if (inside(home, real)) return `it is ${real === home ? "" : "above "}the home directory ${home}, whose keys and credentials it would carry into the sandbox`;
    if (!inside(real, home)) continue;
    const first = relative(home, real).split(sep)[0]!;
    const dot = join(home, first);
    if (first.startsWith(".") && !roots.some((r) => inside(r, dot) && inside(real, r))) return `${dot} holds a user's keys or configuration, which an import reads only where an allowed root names it (or a directory inside it)`;
  }
  return null;
}

/**
 * Checks a host path an agent asked to import: it must exist, be readable, be
 * a directory or a .tar/.tar.gz/.tgz file, lie outside pyro's own state and
 * cache directories, and (when roots are given) lie under one of the allowed
 * roots after symlinks are resolved.
 */
export function resolveSource(raw: string, allowedRoots?: readonly string[], extraStateDirs: readonly string[] = []): ResolvedSource {
  if (typeof raw !== "string" || !raw) throw new PyroError("invalid_argument", "source_path is empty.");
  if (raw.includes("\0")) throw new PyroError("invalid_argument", "source_path contains a NUL byte.");
  if (!isAbsolute(raw) && allowedRoots?.length) raw = resolve(allowedRoots[0]!, raw);
  let real: string;
  try {
    real = realpathSync(resolve(raw));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // "Does not exist" only where the caller may look: outside the roots a missing path is
    // refused like any other, so that the error is no oracle for what exists there.
    if (allowedRoots?.length && !withinRoots(existingAncestor(resolve(raw)), allowedRoots)) {
      throw new PyroError("source_not_allowed", `source_path "${raw}" is outside the allowed roots (${allowedRoots.join(", ")}).`, {
        hint: "Use a path under an allowed root, or start the server with --allow-source-root for that directory.",
      });
    }
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new PyroError("source_not_found", `source_path "${raw}" does not exist.`, { hint: "Pass an existing directory or a .tar, .tar.gz or .tgz file (a relative path is taken from the first allowed root, or the current directory)." });
    }
    throw new PyroError("source_not_allowed", `source_path "${raw}" cannot be read (${code}).`, {
      hint: "Pass an existing directory or a .tar, .tar.gz or .tgz file.",
    });
  }
  const guarded = protectedDirs(extraStateDirs);
  for (const dir of guarded) {
    if (inside(real, dir.path) || inside(resolve(raw), dir.path)) {
      throw new PyroError(
        "invalid_argument",
        `source_path "${raw}" lies inside pyro's own ${dir.label} (${dir.path}). Sandboxes write there (their writable layers live under the state directory), so its files can change while they are read and cannot be imported safely.`,
        { hint: "Import the original host directory or archive instead; to move files between tasks, copy them out of the sandbox to a normal directory first.", details: { protected_dir: dir.path } },
      );
    }
  }
  if (allowedRoots?.length) {
    // Each root's real path, once: a root that does not resolve allows nothing.
    const roots = allowedRoots.flatMap((root) => {
      try {
        return [realpathSync(root)];
      } catch {
        return [];
      }
    });
    if (!roots.some((r) => inside(real, r))) {
      throw new PyroError("source_not_allowed", `source_path "${raw}" is outside the allowed roots (${allowedRoots.join(", ")}).`, {
        hint: "Use a path under an allowed root, or start the server with --allow-source-root for that directory.",
      });
    }
    const secret = homeSecrets(real, roots);
    if (secret) {
      throw new PyroError("source_not_allowed", `source_path "${raw}" is refused: ${secret}.`, {
        hint: "Import a project directory instead. A dot-entry of a home imports only where the server was started with --allow-source-root naming it (or a directory inside it).",
      });
    }
  }
  const st = statSync(real);
  const identity = { dev: st.dev, ino: st.ino, protected: guarded };
  if (st.isDirectory()) return { kind: "directory", path: real, ...identity };
  if (st.isFile() && TAR_SUFFIXES.some((s) => real.endsWith(s))) return { kind: "tar", path: real, ...identity };
  const what = st.isSocket() ? "a socket" : st.isFIFO() ? "a fifo" : st.isFile() ? "a file that is not .tar, .tar.gz or .tgz" : "not a regular file or directory";
  throw new PyroError("source_not_allowed", `source_path "${raw}" is ${what}.`, { hint: "Pass a directory or a .tar, .tar.gz or .tgz file." });
}
