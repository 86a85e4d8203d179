import { statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { contentStamp, fileSha256, fileStamp, recalledSha256, rememberSha256InMemory } from "../../util/file-sha256.js";
import { readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { cacheDir } from "../../util/paths.js";

/**
 * Where VM kernels live: shared by every environment (one kernel package
 * serves them all), each in its own directory that appears complete or not
 * at all (built under .tmp, renamed into place, kernel.json written last):
 *
 *   <cacheDir>/kernels/<package>_<version>/{vmlinux, modules/*.ko, kernel.json}
 *   <cacheDir>/kernels/.tmp/<random>/   builds in progress or left by a killed one
 *   <cacheDir>/kernels/.lock            one lock for building and pruning kernels
 */
export function kernelsDir(): string {
  return join(cacheDir(), "kernels");
}
export function kernelsTmp(): string {
  return join(kernelsDir(), ".tmp");
}
export function kernelsLock(): string {
  return join(kernelsDir(), ".lock");
}

/** A directory name from a package name and version (epochs have ":"): only characters safe in any path. */
export function kernelDirName(pkg: string, version: string): string {
  return `${pkg}_${version}`.replace(/[^A-Za-z0-9.+~_-]/g, "_");
}

/** Per directory: file name → the stat identity it had when hashed, and its sha256. */
const STAMPS = ".digests.json";
type Stamps = Record<string, { key: string; sha256: string }>;

/**
 * The sha256 of a file, hashed only when it may have changed since it was
 * last hashed: the digest is remembered with the file's device, inode, size,
 * mtime and ctime (util/file-sha256.ts), in this process and in a
 * `.digests.json` beside the file (for the cache's own files: a file in a
 * directory pyro may not write, the agent's, is util/file-sha256.ts's alone),
 * so a fresh `pyro run` checks a 400 MiB root image with one stat instead of
 * a second of hashing. Any write to the file (damage, truncation, a copy
 * over it) changes its ctime, which no one but the kernel sets, and makes it
 * hashed again. Null when the file is missing.
 */
export function sha256FileCached(path: string): string | null {
  const key = fileStamp(path);
  if (key === null) return null;
  const known = recalledSha256(path, key);
  if (known) return known;
  const stampsPath = join(dirname(path), STAMPS);
  const stamps = readJsonOrNull<Stamps>(stampsPath) ?? {};
  const stamp = stamps[basename(path)];
  if (stamp && stamp.key === key && /^sha256:[0-9a-f]{64}$/.test(stamp.sha256)) {
    rememberSha256InMemory(path, key, stamp.sha256);
    return stamp.sha256;
  }
  const sha256 = fileSha256(path);
  remember(path, key, sha256, stamps);
  return sha256;
}

function remember(path: string, key: string, sha256: string, stamps: Stamps = readJsonOrNull<Stamps>(join(dirname(path), STAMPS)) ?? {}): void {
  rememberSha256InMemory(path, key, sha256);
  try {
    // Not under a lock: two writers at once lose one stamp, which costs one more hash later.
    writeJsonAtomic(join(dirname(path), STAMPS), { ...stamps, [basename(path)]: { key, sha256 } }, { durable: false });
  } catch {
    /* a cache we may read but not write: hashing every time is still correct */
  }
}

/**
 * Records the digest of a file just built and moved into place (a rename
 * changes its ctime), so its first check does not hash it again. Only for
 * files the caller wrote and still holds the lock of.
 */
export function rememberSha256(path: string, sha256: string): void {
  remember(path, contentStamp(statSync(path, { bigint: true })), sha256);
}
