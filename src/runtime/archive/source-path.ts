import { realpathSync, statSync } from "node:fs";
import { isAbsolute, resolve, sep } from "node:path";
import { PyroError } from "../../sdk/errors.js";

export type SourceKind = "directory" | "tar";

export interface ResolvedSource {
  kind: SourceKind;
  /** The real path (symlinks of the path itself resolved). */
  path: string;
}

const TAR_SUFFIXES = [".tar", ".tar.gz", ".tgz"];

/**
 * Checks a host path an agent asked to import: it must exist, be readable, be
 * a directory or a .tar/.tar.gz/.tgz file, and (when roots are given) lie
 * under one of the allowed roots after symlinks are resolved.
 */
export function resolveSource(raw: string, allowedRoots?: readonly string[]): ResolvedSource {
  if (typeof raw !== "string" || !raw) throw new PyroError("invalid_argument", "source_path is empty.");
  if (!isAbsolute(raw) && allowedRoots?.length) raw = resolve(allowedRoots[0]!, raw);
  let real: string;
  try {
    real = realpathSync(resolve(raw));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new PyroError("source_not_allowed", `source_path "${raw}" ${code === "ENOENT" ? "does not exist" : `cannot be read (${code})`}.`, {
      hint: "Pass an existing directory or a .tar, .tar.gz or .tgz file.",
    });
  }
  if (allowedRoots?.length) {
    const inside = allowedRoots.some((root) => {
      let r: string;
      try {
        r = realpathSync(root);
      } catch {
        return false;
      }
      return real === r || real.startsWith(r.endsWith(sep) ? r : r + sep);
    });
    if (!inside) {
      throw new PyroError("source_not_allowed", `source_path "${raw}" is outside the allowed roots (${allowedRoots.join(", ")}).`, {
        hint: "Use a path under an allowed root, or start the server with --allow-source-root for that directory.",
      });
    }
  }
  const st = statSync(real);
  if (st.isDirectory()) return { kind: "directory", path: real };
  if (st.isFile() && TAR_SUFFIXES.some((s) => real.endsWith(s))) return { kind: "tar", path: real };
  const what = st.isSocket() ? "a socket" : st.isFIFO() ? "a fifo" : st.isFile() ? "a file that is not .tar, .tar.gz or .tgz" : "not a regular file or directory";
  throw new PyroError("source_not_allowed", `source_path "${raw}" is ${what}.`, { hint: "Pass a directory or a .tar, .tar.gz or .tgz file." });
}
