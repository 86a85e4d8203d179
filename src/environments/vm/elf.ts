import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/**
 * A minimal ELF reader: the header, the section table (for a module's
 * .modinfo) and the notes (for vmlinux's PVH entry). Only what those two
 * need; everything read is bounds-checked against the file's size, because
 * the bytes come from a downloaded package and a crafted file must produce
 * an error, never an out-of-range read or a huge allocation.
 *
 * Reads go through a `read(offset, length)` callback so that a 50 MB vmlinux
 * is never loaded whole: only its header, program headers and notes are.
 */
export class ElfError extends Error {
  override readonly name = "ElfError";
}

export interface ElfSource {
  size: number;
  /** Exactly `length` bytes at `offset`; callers check the range first. */
  read(offset: number, length: number): Buffer;
}

export function bufferSource(buf: Buffer): ElfSource {
  return { size: buf.length, read: (offset, length) => buf.subarray(offset, offset + length) };
}

/** Runs `fn` over a file opened for reading, closing it afterwards. */
export function withFileSource<T>(path: string, fn: (src: ElfSource) => T): T {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    return fn({
      size,
      read(offset, length) {
        const b = Buffer.alloc(length);
        let got = 0;
        while (got < length) {
          const n = readSync(fd, b, got, length - got, offset + got);
          if (n <= 0) throw new ElfError(`short read at ${offset + got}`);
          got += n;
        }
        return b;
      },
    });
  } finally {
    closeSync(fd);
  }
}

export interface ElfHeader {
  is64: boolean;
  littleEndian: boolean;
  type: number;
  machine: number;
  phoff: number;
  phentsize: number;
  phnum: number;
  shoff: number;
  shentsize: number;
  shnum: number;
  shstrndx: number;
}

export interface ElfSection {
  name: string;
  type: number;
  offset: number;
  size: number;
}

export interface ElfNote {
  name: string;
  type: number;
  desc: Buffer;
}

/** No real module or kernel has more; a larger count is a crafted file asking for a huge table. */
const MAX_TABLE_ENTRIES = 65_280;
/** Sections and notes we read whole (.modinfo, .shstrtab, PT_NOTE) are small; anything larger is refused. */
const MAX_READ = 16 * 1024 * 1024;

function reader(h: { littleEndian: boolean }) {
  const le = h.littleEndian;
  return {
    u16: (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o)),
    u32: (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o)),
    u64: (b: Buffer, o: number) => {
      const v = le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o);
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError("a 64-bit offset or size is out of range");
      return Number(v);
    },
  };
}

function checkedRead(src: ElfSource, offset: number, length: number, what: string): Buffer {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > src.size) {
    throw new ElfError(`${what} (${length} bytes at ${offset}) lies outside the file (${src.size} bytes)`);
  }
  if (length > MAX_READ) throw new ElfError(`${what} is ${length} bytes, more than the ${MAX_READ} this reader accepts`);
  return src.read(offset, length);
}

export function readElfHeader(src: ElfSource): ElfHeader {
  if (src.size < 52) throw new ElfError(`not an ELF file: ${src.size} bytes is shorter than an ELF header`);
  const id = src.read(0, Math.min(64, src.size));
  if (id.readUInt32BE(0) !== 0x7f454c46) throw new ElfError("not an ELF file (no \\x7fELF magic)");
  const cls = id[4];
  const data = id[5];
  if (cls !== 1 && cls !== 2) throw new ElfError(`unknown ELF class ${cls}`);
  if (data !== 1 && data !== 2) throw new ElfError(`unknown ELF data encoding ${data}`);
  const is64 = cls === 2;
  if (is64 && id.length < 64) throw new ElfError("truncated ELF64 header");
  const r = reader({ littleEndian: data === 1 });
  const h: ElfHeader = {
    is64,
    littleEndian: data === 1,
    type: r.u16(id, 16),
    machine: r.u16(id, 18),
    phoff: is64 ? r.u64(id, 32) : r.u32(id, 28),
    shoff: is64 ? r.u64(id, 40) : r.u32(id, 32),
    phentsize: r.u16(id, is64 ? 54 : 42),
    phnum: r.u16(id, is64 ? 56 : 44),
    shentsize: r.u16(id, is64 ? 58 : 46),
    shnum: r.u16(id, is64 ? 60 : 48),
    shstrndx: r.u16(id, is64 ? 62 : 50),
  };
  return h;
}

/** The section table with names resolved through .shstrtab. */
export function readSections(src: ElfSource, h: ElfHeader = readElfHeader(src)): ElfSection[] {
  if (h.shnum === 0) {
    if (h.shoff !== 0) throw new ElfError("the section count is in section 0 (over 65280 sections): not supported");
    return [];
  }
  const min = h.is64 ? 64 : 40;
  if (h.shentsize < min) throw new ElfError(`section header size ${h.shentsize} is smaller than ${min}`);
  if (h.shnum > MAX_TABLE_ENTRIES) throw new ElfError(`${h.shnum} sections is too many`);
  if (h.shstrndx >= h.shnum) throw new ElfError(`the section name table index ${h.shstrndx} is not below the section count ${h.shnum}`);
  const r = reader(h);
  const table = checkedRead(src, h.shoff, h.shentsize * h.shnum, "the section header table");
  const raw = [];
  for (let i = 0; i < h.shnum; i++) {
    const o = i * h.shentsize;
    raw.push({
      nameOff: r.u32(table, o),
      type: r.u32(table, o + 4),
      offset: h.is64 ? r.u64(table, o + 24) : r.u32(table, o + 16),
      size: h.is64 ? r.u64(table, o + 32) : r.u32(table, o + 20),
    });
  }
  const strs = raw[h.shstrndx]!;
  const SHT_NOBITS = 8;
  const names = strs.type === SHT_NOBITS ? Buffer.alloc(0) : checkedRead(src, strs.offset, strs.size, "the section name table");
  return raw.map((s) => ({ name: cString(names, s.nameOff), type: s.type, offset: s.offset, size: s.size }));
}

/** A NUL-terminated string at `off` (empty when out of range or unterminated: a name we then never match). */
function cString(buf: Buffer, off: number): string {
  if (off >= buf.length) return "";
  const end = buf.indexOf(0, off);
  if (end < 0) return "";
  return buf.toString("latin1", off, end);
}

/** The bytes of the named section, or null when there is none (SHT_NOBITS sections have no bytes in the file). */
export function readSection(src: ElfSource, name: string, h: ElfHeader = readElfHeader(src)): Buffer | null {
  const s = readSections(src, h).find((x) => x.name === name);
  if (!s || s.type === 8) return null;
  return checkedRead(src, s.offset, s.size, `section ${name}`);
}

/** Notes of every PT_NOTE segment (a vmlinux carries its ELF notes there). */
export function readNotes(src: ElfSource, h: ElfHeader = readElfHeader(src)): ElfNote[] {
  const PT_NOTE = 4;
  if (h.phnum === 0) return [];
  const min = h.is64 ? 56 : 32;
  if (h.phentsize < min) throw new ElfError(`program header size ${h.phentsize} is smaller than ${min}`);
  if (h.phnum > MAX_TABLE_ENTRIES) throw new ElfError(`${h.phnum} program headers is too many`);
  const r = reader(h);
  const table = checkedRead(src, h.phoff, h.phentsize * h.phnum, "the program header table");
  const notes: ElfNote[] = [];
  for (let i = 0; i < h.phnum; i++) {
    const o = i * h.phentsize;
    if (r.u32(table, o) !== PT_NOTE) continue;
    const offset = h.is64 ? r.u64(table, o + 8) : r.u32(table, o + 4);
    const size = h.is64 ? r.u64(table, o + 32) : r.u32(table, o + 16);
    notes.push(...parseNotes(checkedRead(src, offset, size, `note segment ${i}`), h));
  }
  return notes;
}

/** Parses a note area: namesz, descsz, type, name (padded to 4), desc (padded to 4), repeated. */
export function parseNotes(buf: Buffer, h: { littleEndian: boolean }): ElfNote[] {
  const r = reader(h);
  const out: ElfNote[] = [];
  let o = 0;
  const pad = (n: number) => (n + 3) & ~3;
  while (o + 12 <= buf.length) {
    const namesz = r.u32(buf, o);
    const descsz = r.u32(buf, o + 4);
    const type = r.u32(buf, o + 8);
    const nameStart = o + 12;
    const descStart = nameStart + pad(namesz);
    const end = descStart + pad(descsz);
    if (descStart + descsz > buf.length || namesz > buf.length || descsz > buf.length) throw new ElfError(`a note at ${o} runs past its segment`);
    const nameBytes = buf.subarray(nameStart, nameStart + namesz);
    const nul = nameBytes.indexOf(0);
    out.push({ name: nameBytes.toString("latin1", 0, nul < 0 ? nameBytes.length : nul), type, desc: buf.subarray(descStart, descStart + descsz) });
    o = end;
  }
  return out;
}

/** XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point QEMU (and Firecracker) jump to when given an ELF kernel. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** The PVH entry address of a vmlinux, or null when it has no such note (a kernel built without CONFIG_PVH). */
export function pvhEntry(src: ElfSource): number | null {
  const h = readElfHeader(src);
  for (const n of readNotes(src, h)) {
    if (n.name === "Xen" && n.type === XEN_ELFNOTE_PHYS32_ENTRY && n.desc.length >= 4) return h.littleEndian ? n.desc.readUInt32LE(0) : n.desc.readUInt32BE(0);
  }
  return null;
}
