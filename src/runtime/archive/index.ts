import { createReadStream } from "node:fs";
import { ImportChecker, type ImportLimits, DEFAULT_IMPORT_LIMITS } from "./checker.js";
import { packTar, type PackStats } from "./pack.js";
import { directoryEntries, tarEntries } from "./sources.js";

export { ImportChecker, DEFAULT_IMPORT_LIMITS, type ImportLimits, type CheckedEntry } from "./checker.js";
export { packTar, type PackStats } from "./pack.js";
export { directoryEntries, tarEntries } from "./sources.js";

export { resolveSource, type ResolvedSource, type SourceKind } from "./source-path.js";
import type { ResolvedSource } from "./source-path.js";

/** A checked, re-packed tar stream of a source, with its stats filled in when the stream ends. */
export function sanitizedTar(
  source: ResolvedSource,
  limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
  exclude?: (relPath: string) => boolean,
): { stream: AsyncGenerator<Buffer>; stats: PackStats; checker: ImportChecker } {
  const checker = new ImportChecker(limits, exclude);
  const stats: PackStats = { files: 0, bytes: 0, digest: "" };
  const entries = source.kind === "directory" ? directoryEntries(source.path, checker) : tarEntries(createReadStream(source.path), checker);
  return { stream: packTar(entries, stats), stats, checker };
}
