import { closeSync, constants, createReadStream, fstatSync, openSync } from "node:fs";
import { PyroError } from "../../core/errors.js";
import { ImportChecker, type CheckedEntry, type ImportLimits, DEFAULT_IMPORT_LIMITS } from "./checker.js";
import { packTar, type PackStats } from "./pack.js";
import { directoryEntries, tarEntries } from "./sources.js";

export { ImportChecker, DEFAULT_IMPORT_LIMITS, type ImportLimits, type CheckedEntry } from "./checker.js";
export { packTar, type PackStats } from "./pack.js";
export { directoryEntries, tarEntries, printableName, MAX_DEPTH, type WalkOptions } from "./sources.js";
export { Glob, compileExcludes, MAX_EXCLUDES, MAX_GLOB_BYTES } from "./glob.js";

export { resolveSource, protectedDirs, type ResolvedSource, type SourceKind, type ProtectedDir } from "./source-path.js";
import type { ResolvedSource } from "./source-path.js";

/** Opens a checked archive without following a symlink, and insists it is still the file that was checked. */
function openArchive(source: ResolvedSource) {
  let fd: number;
  try {
    fd = openSync(source.path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    throw new PyroError("source_not_allowed", `Cannot open the archive "${source.path}" (${(error as NodeJS.ErrnoException).code}).`, {
      hint: "Check that it exists and is a readable regular file (not a symlink), then try again.",
    });
  }
  const st = fstatSync(fd);
  if (!st.isFile() || (source.ino !== undefined && (st.dev !== source.dev || st.ino !== source.ino))) {
    closeSync(fd);
    throw new PyroError("unsafe_archive", `Refused to import "${source.path}": the archive was replaced after it was checked.`, {
      hint: "Nothing was changed. Push again once nothing is modifying the archive.",
      details: { entry: source.path },
    });
  }
  return createReadStream("", { fd, autoClose: true });
}

/** A checked, re-packed tar stream of a source, with its stats filled in when the stream ends. */
export function sanitizedTar(
  source: ResolvedSource,
  limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
  exclude?: (relPath: Buffer | string) => boolean,
  onEntry?: (entry: CheckedEntry) => void,
): { stream: AsyncGenerator<Buffer>; stats: PackStats; checker: ImportChecker } {
  const checker = new ImportChecker(limits, exclude);
  const stats: PackStats = { files: 0, bytes: 0, digest: "" };
  const entries =
    source.kind === "directory"
      ? directoryEntries(source.path, checker, { expect: { dev: source.dev, ino: source.ino }, protected: source.protected })
      : (async function* () {
          yield* tarEntries(openArchive(source), checker);
        })();
  const tapped = onEntry
    ? (async function* () {
        for await (const e of entries) {
          onEntry(e.entry);
          yield e;
        }
      })()
    : entries;
  return { stream: packTar(tapped, stats), stats, checker };
}
