import { Header } from "tar";
import { gzipSync } from "node:zlib";

/** Builds raw tar bytes by hand, so tests can make archives that normal tools refuse to create. */
export interface RawEntry {
  path: string;
  type?: "File" | "Directory" | "SymbolicLink" | "Link" | "CharacterDevice" | "BlockDevice" | "FIFO";
  body?: Buffer | string;
  size?: number;
  mode?: number;
  linkpath?: string;
}

export function rawTar(entries: RawEntry[], options: { gzip?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = e.body === undefined ? Buffer.alloc(0) : Buffer.from(e.body);
    const size = e.size ?? (e.type && e.type !== "File" ? 0 : body.length);
    const h = new Header({ path: e.path, type: e.type ?? "File", size, mode: e.mode ?? 0o644, mtime: new Date(1_700_000_000_000), linkpath: e.linkpath, uid: 0, gid: 0 });
    const block = Buffer.alloc(512);
    h.encode(block, 0);
    parts.push(block);
    if (size) {
      const data = body.length >= size ? body.subarray(0, size) : Buffer.concat([body, Buffer.alloc(size - body.length)]);
      parts.push(data, Buffer.alloc((512 - (size % 512)) % 512));
    }
  }
  parts.push(Buffer.alloc(1024));
  const tar = Buffer.concat(parts);
  return options.gzip ? gzipSync(tar) : tar;
}
