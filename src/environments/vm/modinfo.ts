import { bufferSource, readElfHeader, readSection, ElfError } from "./elf.js";

/**
 * A kernel module's own metadata: the `.modinfo` ELF section, a run of
 * NUL-terminated "key=value" strings (name=, depends=, vermagic=, alias=...).
 * `depends=` is what modprobe would follow (depmod builds modules.dep from
 * it at install time, and the package ships no modules.dep), so it is the
 * one source of the load order.
 */
export interface ModInfo {
  /** Every value of every key, in file order (alias= and the like repeat). */
  fields: Map<string, string[]>;
  /** The module's name (name=, else from the file name), normalized. */
  name: string | null;
  /** Normalized names of the modules this one needs loaded first. */
  depends: string[];
}

/** The kernel treats "-" and "_" in module names alike; file names use either. */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, "_");
}

/** The module name of a path like kernel/drivers/virtio/virtio_mmio.ko(.xz|.zst|.gz). */
export function moduleNameOfPath(path: string): string | null {
  const base = path.split("/").pop() ?? "";
  const m = /^(.+)\.ko(?:\.(?:xz|zst|gz))?$/.exec(base);
  return m ? normalizeModuleName(m[1]!) : null;
}

/** Parses the bytes of a .modinfo section. */
export function parseModinfoSection(section: Buffer): ModInfo {
  const fields = new Map<string, string[]>();
  for (const entry of section.toString("latin1").split("\0")) {
    const eq = entry.indexOf("=");
    if (eq <= 0) continue; // padding between entries, or junk without a key
    const key = entry.slice(0, eq);
    const list = fields.get(key) ?? [];
    list.push(entry.slice(eq + 1));
    fields.set(key, list);
  }
  const name = fields.get("name")?.[0];
  const depends = (fields.get("depends") ?? [])
    .flatMap((v) => v.split(","))
    .map((d) => d.trim())
    .filter(Boolean)
    .map(normalizeModuleName);
  return { fields, name: name ? normalizeModuleName(name) : null, depends: [...new Set(depends)] };
}

/** The .modinfo of a module file's bytes (uncompressed .ko); throws ElfError when it is not a module. */
export function readModinfo(ko: Buffer): ModInfo {
  const src = bufferSource(ko);
  const section = readSection(src, ".modinfo", readElfHeader(src));
  if (!section) throw new ElfError("no .modinfo section: not a kernel module");
  return parseModinfoSection(section);
}
