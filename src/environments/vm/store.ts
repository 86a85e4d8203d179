import { createHash } from "node:crypto";
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
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

export function sha256File(path: string): string {
  const h = createHash("sha256");
  const fd = openSync(path, "r");
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return `sha256:${h.digest("hex")}`;
}

const digestMemory = new Map<string, { key: string; sha256: string }>();

/**
 * The sha256 of a file, hashed once per process for as long as its inode,
 * size and times are unchanged: a long-lived server checks each artifact on
 * first use and then pays a stat, while a damaged or replaced file (new
 * times or inode) is hashed again. Null when the file is missing.
 */
export function sha256FileCached(path: string): string | null {
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch {
    return null;
  }
  if (!st.isFile()) return null;
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  const known = digestMemory.get(path);
  if (known && known.key === key) return known.sha256;
  const sha256 = sha256File(path);
  digestMemory.set(path, { key, sha256 });
  return sha256;
}
