import { createHash, type Hash } from "node:crypto";
import { Header, Pax } from "tar";
import type { SourceEntry } from "./sources.js";

const BLOCK = 512;
const TYPE = { file: "File", dir: "Directory", symlink: "SymbolicLink", hardlink: "Link" } as const;

export interface PackStats {
  /** Entries that are not directories: regular files, symlinks, hard links. */
  files: number;
  bytes: number;
  /** sha256 of the packed stream: the same tree always gives the same digest. */
  digest: string;
}

/**
 * Writes checked entries as a fresh tar stream (ustar headers, pax records for
 * long names), owned by root, with set-id bits already dropped. Only what the
 * checker let through is in it, so whatever unpacks it in the guest sees a
 * clean archive. A file whose length changed since its header was written is
 * cut or zero-padded to the header's size, as GNU tar does.
 */
export async function* packTar(entries: AsyncIterable<SourceEntry>, stats: PackStats = { files: 0, bytes: 0, digest: "" }): AsyncGenerator<Buffer> {
  for await (const batch of batched(tarBlocks(entries, stats))) yield batch;
}

/** Stream pieces are coalesced up to this size: a tree of small files would otherwise travel as thousands of tiny writes. */
const BATCH = 64 * 1024;

async function* batched(pieces: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let size = 0;
  for await (const piece of pieces) {
    if (piece.length >= BATCH) {
      if (size) yield Buffer.concat(parts, size);
      parts = [];
      size = 0;
      yield piece;
      continue;
    }
    parts.push(piece);
    size += piece.length;
    if (size >= BATCH) {
      yield Buffer.concat(parts, size);
      parts = [];
      size = 0;
    }
  }
  if (size) yield Buffer.concat(parts, size);
}

async function* tarBlocks(entries: AsyncIterable<SourceEntry>, stats: PackStats): AsyncGenerator<Buffer> {
  const hash: Hash = createHash("sha256");
  const out = (buf: Buffer): Buffer => {
    hash.update(buf);
    return buf;
  };
  for await (const { entry, body } of entries) {
    const header = new Header({
      path: entry.type === "dir" ? `${entry.path}/` : entry.path,
      mode: entry.mode,
      uid: 0,
      gid: 0,
      uname: "root",
      gname: "root",
      size: entry.type === "file" ? entry.size : 0,
      mtime: entry.mtime,
      type: TYPE[entry.type],
      linkpath: entry.linkpath,
    });
    const block = Buffer.alloc(BLOCK);
    if (header.encode(block, 0)) {
      yield out(new Pax({ path: header.path, linkpath: entry.linkpath, mtime: entry.mtime, size: header.size }).encode());
    }
    yield out(block);
    if (entry.type !== "dir") stats.files++;
    if (entry.type !== "file") continue;
    let written = 0;
    if (body) {
      for await (const raw of body) {
        const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
        const take = Math.min(chunk.length, entry.size - written);
        if (take <= 0) continue;
        yield out(take === chunk.length ? chunk : chunk.subarray(0, take));
        written += take;
      }
    }
    if (written < entry.size) {
      yield out(Buffer.alloc(entry.size - written));
      written = entry.size;
    }
    stats.bytes += written;
    const pad = (BLOCK - (written % BLOCK)) % BLOCK;
    if (pad) yield out(Buffer.alloc(pad));
  }
  yield out(Buffer.alloc(BLOCK * 2));
  stats.digest = `sha256:${hash.digest("hex")}`;
}
