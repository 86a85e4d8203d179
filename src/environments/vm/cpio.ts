/**
 * A writer of cpio "newc" archives (the format the kernel unpacks as an
 * initramfs; Documentation/driver-api/early-userspace/buffer-format.rst):
 *
 *   header: "070701" then 13 fields of 8 hex digits: ino, mode, uid, gid,
 *           nlink, mtime, filesize, devmajor, devminor, rdevmajor,
 *           rdevminor, namesize (with its NUL), check (0)
 *   name:   namesize bytes, NUL included, padded so header+name is a multiple of 4
 *   data:   filesize bytes, padded to a multiple of 4
 *   ...     and a last entry named "TRAILER!!!"
 *
 * Owners are 0:0 and times 0 on purpose: the archive is the same bytes for
 * the same inputs, and /init runs as root anyway. Device nodes are plain
 * entries, so no root is needed to make /dev/console.
 */
export type CpioEntry =
  | { type: "dir"; path: string; mode?: number }
  | { type: "file"; path: string; data: Buffer; mode?: number }
  | { type: "char"; path: string; major: number; minor: number; mode?: number }
  | { type: "symlink"; path: string; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;
const S_IFLNK = 0o120000;
const MAX_U32 = 0xffffffff;

export class CpioError extends Error {
  override readonly name = "CpioError";
}

function hex8(n: number, what: string): string {
  if (!Number.isInteger(n) || n < 0 || n > MAX_U32) throw new CpioError(`${what} ${n} does not fit a newc field`);
  return n.toString(16).toUpperCase().padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Archive paths are relative ("init", "dev/console"), as the kernel and GNU cpio expect. */
function normalizePath(path: string): string {
  const parts = path.split("/").filter((p) => p && p !== ".");
  if (parts.some((p) => p === "..")) throw new CpioError(`path ${path} has a ".." component`);
  if (!parts.length) throw new CpioError(`path "${path}" names the archive root`);
  return parts.join("/");
}

function header(fields: { ino: number; mode: number; nlink: number; filesize: number; rdevmajor: number; rdevminor: number; namesize: number }): Buffer {
  const values = [fields.ino, fields.mode, 0, 0, fields.nlink, 0, fields.filesize, 0, 0, fields.rdevmajor, fields.rdevminor, fields.namesize, 0];
  const names = ["ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check"];
  return Buffer.from("070701" + values.map((v, i) => hex8(v, names[i]!)).join(""), "latin1");
}

/** The archive of `entries`, in the order given (a directory must come before what it holds: the kernel creates entries as it reads them). */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const chunks: Buffer[] = [];
  const seen = new Set<string>();
  let ino = 1;
  const push = (b: Buffer) => chunks.push(b);
  const add = (name: string, mode: number, data: Buffer, nlink: number, rdev: [number, number]) => {
    const nameBytes = Buffer.from(name + "\0", "utf8");
    push(header({ ino: name === "TRAILER!!!" ? 0 : ino++, mode, nlink, filesize: data.length, rdevmajor: rdev[0], rdevminor: rdev[1], namesize: nameBytes.length }));
    push(nameBytes);
    push(Buffer.alloc(pad4(110 + nameBytes.length)));
    if (data.length) {
      push(data);
      push(Buffer.alloc(pad4(data.length)));
    }
  };
  for (const e of entries) {
    const path = normalizePath(e.path);
    if (seen.has(path)) throw new CpioError(`${path} is in the archive twice`);
    seen.add(path);
    const perm = (e.type === "symlink" ? 0o777 : (e.mode ?? (e.type === "dir" ? 0o755 : 0o644))) & 0o7777;
    switch (e.type) {
      case "dir":
        add(path, S_IFDIR | perm, Buffer.alloc(0), 2, [0, 0]);
        break;
      case "file":
        add(path, S_IFREG | perm, e.data, 1, [0, 0]);
        break;
      case "char":
        add(path, S_IFCHR | perm, Buffer.alloc(0), 1, [e.major, e.minor]);
        break;
      case "symlink":
        add(path, S_IFLNK | perm, Buffer.from(e.target, "utf8"), 1, [0, 0]);
        break;
    }
  }
  add("TRAILER!!!", 0, Buffer.alloc(0), 1, [0, 0]);
  return Buffer.concat(chunks);
}

export interface CpioListing {
  path: string;
  mode: number;
  rdevmajor: number;
  rdevminor: number;
  data: Buffer;
}

/** Reads a newc archive back (for tests and for checking a cached initramfs), bounds-checked. */
export function readCpio(buf: Buffer): CpioListing[] {
  const out: CpioListing[] = [];
  let o = 0;
  for (;;) {
    if (o + 110 > buf.length) throw new CpioError(`truncated header at ${o}`);
    const magic = buf.toString("latin1", o, o + 6);
    if (magic !== "070701") throw new CpioError(`bad magic ${JSON.stringify(magic)} at ${o}`);
    const field = (i: number) => {
      const s = buf.toString("latin1", o + 6 + i * 8, o + 14 + i * 8);
      if (!/^[0-9A-Fa-f]{8}$/.test(s)) throw new CpioError(`bad header field at ${o}`);
      return parseInt(s, 16);
    };
    const mode = field(1);
    const filesize = field(6);
    const rdevmajor = field(9);
    const rdevminor = field(10);
    const namesize = field(11);
    const nameStart = o + 110;
    if (namesize < 1 || nameStart + namesize > buf.length) throw new CpioError(`name runs past the archive at ${o}`);
    const path = buf.toString("utf8", nameStart, nameStart + namesize - 1);
    const dataStart = nameStart + namesize + pad4(110 + namesize);
    if (dataStart + filesize > buf.length) throw new CpioError(`data of ${path} runs past the archive`);
    if (path === "TRAILER!!!") return out;
    out.push({ path, mode, rdevmajor, rdevminor, data: buf.subarray(dataStart, dataStart + filesize) });
    o = dataStart + filesize + pad4(filesize);
  }
}
