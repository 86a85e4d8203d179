// Crafted kernel files for the VM artifact tests: ELF objects with chosen
// sections and notes, and bzImage-shaped files around a payload.

export interface Sec {
  name: string;
  type: number;
  data: Buffer;
}
/** A little-endian ELF64 with the given sections (plus a null section and .shstrtab) and optional PT_NOTE data. */
export function elf64(sections: Sec[], notes?: Buffer): Buffer {
  const names = ["", ...sections.map((s) => s.name), ".shstrtab"];
  const nameOff: number[] = [];
  let strtab = Buffer.alloc(0);
  for (const n of names) {
    nameOff.push(strtab.length);
    strtab = Buffer.concat([strtab, Buffer.from(n + "\0", "latin1")]);
  }
  const phnum = notes ? 1 : 0;
  let off = 64 + phnum * 56;
  const blobs: Buffer[] = [];
  const place = (b: Buffer) => {
    const at = off;
    blobs.push(b);
    off += b.length;
    return at;
  };
  const noteAt = notes ? place(notes) : 0;
  const secAt = sections.map((s) => place(s.data));
  const strAt = place(strtab);
  const shoff = off;
  const all = [{ type: 0, at: 0, size: 0 }, ...sections.map((s, i) => ({ type: s.type, at: secAt[i]!, size: s.data.length })), { type: 3, at: strAt, size: strtab.length }];
  const h = Buffer.alloc(64);
  h.writeUInt32BE(0x7f454c46, 0);
  h[4] = 2;
  h[5] = 1;
  h[6] = 1;
  h.writeUInt16LE(1, 16); // ET_REL, like a .ko
  h.writeUInt16LE(62, 18);
  h.writeBigUInt64LE(BigInt(notes ? 64 : 0), 32);
  h.writeBigUInt64LE(BigInt(shoff), 40);
  h.writeUInt16LE(56, 54);
  h.writeUInt16LE(phnum, 56);
  h.writeUInt16LE(64, 58);
  h.writeUInt16LE(all.length, 60);
  h.writeUInt16LE(all.length - 1, 62);
  const ph = Buffer.alloc(phnum * 56);
  if (notes) {
    ph.writeUInt32LE(4, 0);
    ph.writeBigUInt64LE(BigInt(noteAt), 8);
    ph.writeBigUInt64LE(BigInt(notes.length), 32);
  }
  const sh = Buffer.alloc(all.length * 64);
  all.forEach((s, i) => {
    sh.writeUInt32LE(nameOff[i]!, i * 64);
    sh.writeUInt32LE(s.type, i * 64 + 4);
    sh.writeBigUInt64LE(BigInt(s.at), i * 64 + 24);
    sh.writeBigUInt64LE(BigInt(s.size), i * 64 + 32);
  });
  return Buffer.concat([h, ph, ...blobs, sh]);
}
export function note(name: string, type: number, desc: Buffer): Buffer {
  const n = Buffer.from(name + "\0", "latin1");
  const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]);
  const head = Buffer.alloc(12);
  head.writeUInt32LE(n.length, 0);
  head.writeUInt32LE(desc.length, 4);
  head.writeUInt32LE(type, 8);
  return Buffer.concat([head, pad(n), pad(desc)]);
}
export const modinfo = (...kv: string[]) => Buffer.from(kv.map((s) => s + "\0").join(""), "latin1");

/** A bzImage-shaped file: setup sectors, the boot header, then a payload at payload_offset. */
export function bzImage(payload: Buffer, options: { setupSects?: number; version?: number; lieLength?: number; magic?: number; offset?: number } = {}): Buffer {
  const setupSects = options.setupSects ?? 4;
  const pm = (setupSects + 1) * 512;
  const offset = options.offset ?? 0x100;
  const file = Buffer.alloc(pm + offset + payload.length + 64);
  file[0x1f1] = setupSects;
  file.writeUInt32LE(options.magic ?? 0x53726448, 0x202);
  file.writeUInt16LE(options.version ?? 0x20f, 0x206);
  file.writeUInt32LE(offset, 0x248);
  file.writeUInt32LE(options.lieLength ?? payload.length, 0x24c);
  payload.copy(file, pm + offset);
  return file;
}
export function withSize(compressed: Buffer, size: number): Buffer {
  const t = Buffer.alloc(4);
  t.writeUInt32LE(size, 0);
  return Buffer.concat([compressed, t]);
}

