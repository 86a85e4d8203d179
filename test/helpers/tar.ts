import { gzipSync } from "node:zlib";

/**
 * Writes tar archives byte by byte, so tests can build the hostile ones that
 * archiving libraries refuse to make (absolute paths, "..", links out, device
 * nodes). Plain ustar; names up to 100 bytes.
 */
export interface TarEntry {
  path: string;
  type?: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";
  mode?: number;
  content?: string | Buffer;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
}

const TYPEFLAG = { file: "0", hardlink: "1", symlink: "2", char: "3", block: "4", dir: "5", fifo: "6" } as const;

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(e: TarEntry, size: number): Buffer {
  const h = Buffer.alloc(512);
  const type = e.type ?? "file";
  h.write(e.path, 0, 100, "utf8");
  h.write(octal(e.mode ?? (type === "dir" ? 0o755 : 0o644), 8), 100, "latin1");
  h.write(octal(0, 8), 108, "latin1");
  h.write(octal(0, 8), 116, "latin1");
  h.write(octal(size, 12), 124, "latin1");
  h.write(octal(1_700_000_000, 12), 136, "latin1");
  h.write("        ", 148, "latin1");
  h.write(TYPEFLAG[type], 156, "latin1");
  if (e.linkpath) h.write(e.linkpath, 157, 100, "utf8");
  h.write("ustar\0", 257, "latin1");
  h.write("00", 263, "latin1");
  h.write(octal(e.devmajor ?? 0, 8), 329, "latin1");
  h.write(octal(e.devminor ?? 0, 8), 337, "latin1");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + " ", 148, "latin1");
  return h;
}

export function tarball(entries: readonly TarEntry[], options: { gzip?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = (e.type ?? "file") === "file" ? Buffer.from(e.content ?? "") : Buffer.alloc(0);
    parts.push(header(e, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  const tar = Buffer.concat(parts);
  return options.gzip ? gzipSync(tar) : tar;
}
