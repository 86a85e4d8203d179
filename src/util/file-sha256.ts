import { createHash } from "node:crypto";
import { closeSync, openSync, readSync, statSync, type BigIntStats } from "node:fs";

/**
 * A file's sha256, and the one in-memory record of digests already taken:
 * the guest agent's (util/agent-binary.ts), the VM artifacts'
 * (environments/vm/store.ts) and a snapshot key's (drivers/qemu/snapshot.ts)
 * all come from here, so a long-lived process hashes each file once, and
 * again only when the file may have changed.
 */

/** `sha256:<hex>` of the file's content, read in 1 MiB pieces (a root image is hundreds of MiB). */
export function fileSha256(path: string): string {
  return `sha256:${fileSha256Hex(path)}`;
}

/** The bare hex digest; `buf` is the read buffer, for a caller that hashes many files (a rootfs tree's digest). */
export function fileSha256Hex(path: string, buf: Buffer = Buffer.allocUnsafe(1 << 20)): string {
  const h = createHash("sha256");
  const fd = openSync(path, "r");
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest("hex");
}

/**
 * What stat says of a file's content: device, inode, size, mtime and ctime.
 * Any write to the file (damage, truncation, a copy over it) changes its
 * ctime, which no one but the kernel sets.
 */
export function contentStamp(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The file's stamp, or null when it is missing or not a regular file. */
export function fileStamp(path: string): string | null {
  try {
    const st = statSync(path, { bigint: true });
    return st.isFile() ? contentStamp(st) : null;
  } catch {
    return null;
  }
}

const remembered = new Map<string, { key: string; sha256: string }>();

/** The digest this process took of `path` while it had this stamp, if any. */
export function recalledSha256(path: string, stamp: string): string | undefined {
  const known = remembered.get(path);
  return known?.key === stamp ? known.sha256 : undefined;
}

/** Remembers a digest of `path` as of `stamp` (taken here, or read from a record the caller trusts). */
export function rememberSha256InMemory(path: string, stamp: string, sha256: string): void {
  remembered.set(path, { key: stamp, sha256 });
}

/**
 * The sha256 of a file, hashed once per process for as long as its stamp
 * stays the same; nothing is written anywhere (the file's directory may be
 * read-only: an installed package). Null when it is not a regular file.
 */
export function rememberedFileSha256(path: string): string | null {
  const stamp = fileStamp(path);
  if (stamp === null) return null;
  const known = recalledSha256(path, stamp);
  if (known) return known;
  const sha256 = fileSha256(path);
  rememberSha256InMemory(path, stamp, sha256);
  return sha256;
}
