import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { gzipSync } from "node:zlib";

import { writeCpio, readCpio, CpioError } from "../../src/environments/vm/cpio.js";
import { initramfsEntries } from "../../src/environments/vm/initramfs.js";
import { parseBzImageHeader, detectCompression, extractVmlinux, BzImageError } from "../../src/environments/vm/bzimage.js";
import { bufferSource, readElfHeader, readSection, readSections, pvhEntry, ElfError, XEN_ELFNOTE_PHYS32_ENTRY } from "../../src/environments/vm/elf.js";
import { readModinfo, parseModinfoSection, moduleNameOfPath, normalizeModuleName } from "../../src/environments/vm/modinfo.js";
import { resolveModuleOrder, parseModulesBuiltin, ModuleOrderError } from "../../src/environments/vm/module-order.js";
import { kernelDependency, kernelPackageFor } from "../../src/environments/vm/kernel.js";
import { kernelDirName } from "../../src/environments/vm/store.js";
import { elf64, note, modinfo, bzImage, withSize } from "../helpers/vm-fixtures.js";

const scratch = mkdtempSync(join(tmpdir(), "pyro-unit-vm-"));
after(() => rmSync(scratch, { recursive: true, force: true }));
const hasTool = (t: string) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0;

describe("ELF and .modinfo", () => {
  test("reads depends and name from a crafted module", () => {
    const ko = elf64([
      { name: ".text", type: 1, data: Buffer.alloc(16) },
      { name: ".modinfo", type: 1, data: Buffer.concat([modinfo("license=GPL", "depends=virtio,virtio-ring"), Buffer.alloc(3), modinfo("name=virtio_mmio", "alias=of:N*", "alias=acpi*:LNRO0005:*")]) },
    ]);
    const info = readModinfo(ko);
    assert.equal(info.name, "virtio_mmio");
    assert.deepEqual(info.depends, ["virtio", "virtio_ring"]);
    assert.deepEqual(info.fields.get("alias"), ["of:N*", "acpi*:LNRO0005:*"]);
  });

  test("an empty depends= means no dependencies", () => {
    assert.deepEqual(parseModinfoSection(modinfo("depends=", "name=virtio_ring")).depends, []);
  });

  test("a file without .modinfo, without ELF magic, or with tables past its end is refused", () => {
    assert.throws(() => readModinfo(elf64([{ name: ".text", type: 1, data: Buffer.alloc(8) }])), /no \.modinfo/);
    assert.throws(() => readModinfo(Buffer.alloc(100)), ElfError);
    const ko = elf64([{ name: ".modinfo", type: 1, data: modinfo("depends=") }]);
    const bad = Buffer.from(ko);
    bad.writeBigUInt64LE(BigInt(ko.length - 10), 40); // section table starts 10 bytes before the end
    assert.throws(() => readSections(bufferSource(bad)), /outside the file/);
    const huge = Buffer.from(ko);
    const shoff = Number(ko.readBigUInt64LE(40));
    huge.writeBigUInt64LE(BigInt(0xffffffff), shoff + 64 + 32); // .modinfo claims 4 GiB
    assert.throws(() => readSection(bufferSource(huge), ".modinfo"), /outside the file/);
    const idx = Buffer.from(ko);
    idx.writeUInt16LE(200, 62);
    assert.throws(() => readSections(bufferSource(idx)), /name table index/);
    assert.throws(() => readElfHeader(bufferSource(Buffer.alloc(20))), /shorter than an ELF header/);
  });

  test("finds the PVH entry note, and reports its absence", () => {
    const entry = Buffer.alloc(4);
    entry.writeUInt32LE(0x1000a0, 0);
    const withNote = elf64([], Buffer.concat([note("GNU", 3, Buffer.alloc(20)), note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, entry)]));
    assert.equal(pvhEntry(bufferSource(withNote)), 0x1000a0);
    assert.equal(pvhEntry(bufferSource(elf64([], note("Xen", 17, entry)))), null);
    assert.equal(pvhEntry(bufferSource(elf64([]))), null);
    // A note whose descsz runs past its segment.
    const phSeg = elf64([], Buffer.concat([note("GNU", 3, Buffer.alloc(20))]));
    phSeg.writeUInt32LE(0x10000, 64 + 56 + 4);
    assert.throws(() => pvhEntry(bufferSource(phSeg)), /runs past its segment/);
  });

  test("module names from paths", () => {
    assert.equal(moduleNameOfPath("kernel/drivers/virtio/virtio_mmio.ko"), "virtio_mmio");
    assert.equal(moduleNameOfPath("kernel/drivers/char/hw_random/virtio-rng.ko.xz"), "virtio_rng");
    assert.equal(moduleNameOfPath("modules.builtin"), null);
    assert.equal(normalizeModuleName("a-b_c"), "a_b_c");
  });
});

describe("module order", () => {
  const graph = (g: Record<string, string[]>) => (n: string) => g[n];
  test("dependencies first, in the order asked, each once", () => {
    const r = resolveModuleOrder({
      wanted: ["virtio_mmio", "virtio_blk", "overlay"],
      dependsOf: graph({ virtio_mmio: ["virtio", "virtio_ring"], virtio: [], virtio_ring: [], virtio_blk: ["virtio", "virtio_ring"], overlay: [] }),
      builtin: new Set(),
    });
    assert.deepEqual(r.order, ["virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "overlay"]);
  });
  test("built-in modules are skipped, even when asked for", () => {
    const r = resolveModuleOrder({ wanted: ["virtio_blk", "ext4"], dependsOf: graph({ virtio_blk: ["virtio"] }), builtin: new Set(["virtio", "ext4"]) });
    assert.deepEqual(r.order, ["virtio_blk"]);
    assert.deepEqual(r.builtin.sort(), ["ext4", "virtio"]);
  });
  test("a cycle is an error naming it", () => {
    assert.throws(() => resolveModuleOrder({ wanted: ["a"], dependsOf: graph({ a: ["b"], b: ["c"], c: ["a"] }), builtin: new Set() }), (e: Error) => e instanceof ModuleOrderError && /a -> b -> c -> a/.test(e.message));
  });
  test("a missing module, asked for or depended on, is an error naming who needs it", () => {
    assert.throws(() => resolveModuleOrder({ wanted: ["nope"], dependsOf: graph({}), builtin: new Set() }), /module nope is neither/);
    assert.throws(() => resolveModuleOrder({ wanted: ["a"], dependsOf: graph({ a: ["gone"] }), builtin: new Set() }), /gone, which a depends on/);
  });
  test("modules.builtin lines become names", () => {
    assert.deepEqual([...parseModulesBuiltin("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n\nkernel/lib/x-y.ko\n")], ["ext4", "crc32c_generic", "x_y"]);
  });
});

// ---- bzImage -------------------------------------------------------------------------------------

describe("bzImage", () => {
  test("parses payload offset and length relative to the protected-mode code", () => {
    const p = Buffer.from([0x02, 0x21, 0x4c, 0x18, 1, 2, 3]);
    const f = bzImage(p, { setupSects: 39 });
    const h = parseBzImageHeader(f, f.length, p);
    assert.equal(h.payloadStart, 40 * 512 + 0x100);
    assert.equal(h.payloadLength, p.length);
    assert.equal(h.compression, "lz4");
    assert.equal(parseBzImageHeader(bzImage(p, { setupSects: 0 }), 5000).setupSects, 4, "0 setup sectors means 4");
  });
  test("refuses a non-bzImage, an old protocol, and a payload that runs past the file", () => {
    const p = Buffer.alloc(16);
    assert.throws(() => parseBzImageHeader(Buffer.alloc(0x300), 0x300), /HdrS/);
    assert.throws(() => parseBzImageHeader(bzImage(p, { version: 0x206 }), 5000), /2\.08 or later/);
    const lying = bzImage(p, { lieLength: 1 << 30 });
    assert.throws(() => parseBzImageHeader(lying, lying.length), /runs past the end/);
    assert.throws(() => parseBzImageHeader(Buffer.alloc(100), 100), /too short/);
  });
  test("knows the kernel's compressors by their magic", () => {
    assert.equal(detectCompression(Buffer.from("fd377a585a00", "hex")), "xz");
    assert.equal(detectCompression(Buffer.from("28b52ffd", "hex")), "zstd");
    assert.equal(detectCompression(Buffer.from("1f8b08", "hex")), "gzip");
    assert.equal(detectCompression(Buffer.from("00000000", "hex")), null);
  });
  test("extracts a gzip payload and refuses one that does not decompress", async () => {
    const elf = elf64([]);
    const good = join(scratch, "bz-gzip");
    writeFileSync(good, bzImage(gzipSync(elf)));
    const out = join(scratch, "vmlinux-gzip");
    assert.deepEqual(await extractVmlinux(good, out), { compression: "gzip", bytes: elf.length });
    assert.deepEqual(readFileSync(out), elf);
    const bad = join(scratch, "bz-gzip-bad");
    const broken = gzipSync(elf);
    broken.fill(0x55, 12, 40);
    writeFileSync(bad, bzImage(broken));
    await assert.rejects(extractVmlinux(bad, join(scratch, "v2")), BzImageError);
  });
  for (const [tool, args] of [
    ["xz", ["-c", "--check=crc32"]],
    ["lz4", ["-l", "-c"]],
    ["zstd", ["-c", "-q"]],
  ] as const) {
    test(`extracts a ${tool} payload with its size appended, and catches one that lies about its size`, { skip: hasTool(tool) ? false : `${tool} is not installed` }, async () => {
      const data = Buffer.concat([elf64([]), Buffer.alloc(5000, 7)]);
      const c = spawnSync(tool, args, { input: data }).stdout;
      const good = join(scratch, `bz-${tool}`);
      writeFileSync(good, bzImage(withSize(c, data.length)));
      const out = join(scratch, `vmlinux-${tool}`);
      assert.deepEqual(await extractVmlinux(good, out), { compression: tool, bytes: data.length });
      assert.deepEqual(readFileSync(out), data);
      const lie = join(scratch, `bz-${tool}-lie`);
      writeFileSync(lie, bzImage(withSize(c, data.length + 1)));
      await assert.rejects(extractVmlinux(lie, join(scratch, `v-${tool}-lie`)), /records/);
      const garbage = join(scratch, `bz-${tool}-garbage`);
      const g = Buffer.from(c);
      g.fill(0xaa, Math.min(12, g.length - 8), g.length);
      writeFileSync(garbage, bzImage(withSize(g, data.length)));
      await assert.rejects(extractVmlinux(garbage, join(scratch, `v-${tool}-g`)), BzImageError);
    });
  }
});

// ---- cpio ----------------------------------------------------------------------------------------

describe("cpio newc writer", () => {
  const entries = initramfsEntries(Buffer.from("\x7fELF agent"), [
    { name: "virtio_ring", data: Buffer.from("ring") },
    { name: "virtio", data: Buffer.from("virtio module!") },
  ]);
  const archive = writeCpio(entries);

  test("round-trips through our reader with the exact initramfs layout", () => {
    const listed = readCpio(archive);
    assert.deepEqual(
      listed.map((e) => e.path),
      ["dev", "dev/console", "proc", "sys", "mnt", "tmp", "modules", "modules/order", "modules/virtio_ring.ko", "modules/virtio.ko", "init"],
    );
    const byPath = new Map(listed.map((e) => [e.path, e]));
    assert.equal(byPath.get("init")!.mode, 0o100755);
    assert.equal(byPath.get("dev/console")!.mode & 0o170000, 0o020000);
    assert.deepEqual([byPath.get("dev/console")!.rdevmajor, byPath.get("dev/console")!.rdevminor], [5, 1]);
    assert.equal(byPath.get("modules/order")!.data.toString(), "virtio_ring.ko\nvirtio.ko\n");
    assert.equal(byPath.get("modules/virtio.ko")!.data.toString(), "virtio module!");
    assert.equal(archive.length % 4, 0);
    assert.equal(archive.toString("latin1", 0, 6), "070701");
  });

  test("is the same bytes every time (owners 0, times 0)", () => {
    assert.deepEqual(writeCpio(entries), archive);
  });

  test("GNU cpio reads it: names, types, modes, device numbers and contents", { skip: hasTool("cpio") ? false : "cpio is not installed (apt-get install cpio)" }, () => {
    const list = spawnSync("cpio", ["-itv", "--quiet"], { input: archive, encoding: "utf8" });
    assert.equal(list.status, 0, list.stderr);
    const lines = list.stdout.trim().split("\n");
    assert.equal(lines.length, 11);
    assert.match(lines.find((l) => / dev\/console$/.test(l))!, /^crw------- .* 5,\s+1 /);
    assert.match(lines.find((l) => / init$/.test(l))!, /^-rwxr-xr-x /);
    assert.match(lines.find((l) => / tmp$/.test(l))!, /^drwxrwxrwt /);
    const dir = mkdtempSync(join(scratch, "cpio-x-"));
    const x = spawnSync("cpio", ["-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"], { input: archive, cwd: dir });
    assert.equal(x.status, 0, x.stderr?.toString());
    assert.equal(readFileSync(join(dir, "modules/order"), "utf8"), "virtio_ring.ko\nvirtio.ko\n");
    assert.equal(readFileSync(join(dir, "init"), "latin1"), "\x7fELF agent");
    assert.ok(existsSync(join(dir, "proc")));
  });

  test("refuses paths that escape, repeat, or name the root, and fields that do not fit", () => {
    assert.throws(() => writeCpio([{ type: "dir", path: "../x" }]), CpioError);
    assert.throws(() => writeCpio([{ type: "dir", path: "/" }]), CpioError);
    assert.throws(() => writeCpio([{ type: "dir", path: "a" }, { type: "dir", path: "/a/" }]), /twice/);
    assert.throws(() => writeCpio([{ type: "char", path: "c", major: 2 ** 33, minor: 0 }]), /does not fit/);
  });

  test("the reader refuses a truncated archive", () => {
    assert.throws(() => readCpio(archive.subarray(0, 200)), CpioError);
    assert.throws(() => readCpio(Buffer.from("070702" + "0".repeat(104))), /bad magic/);
  });
});

describe("kernel package names", () => {
  test("the real package behind the meta package", () => {
    assert.deepEqual(kernelDependency("linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"), { name: "linux-image-6.1.0-57-cloud-amd64", version: "6.1.192-3" });
    assert.deepEqual(kernelDependency("linux-image-6.12.9+bpo-cloud-amd64"), { name: "linux-image-6.12.9+bpo-cloud-amd64", version: null });
    assert.equal(kernelDependency("initramfs-tools"), null);
  });
  test("by host architecture", () => {
    assert.equal(kernelPackageFor("x64").metaPackage, "linux-image-cloud-amd64");
    assert.equal(kernelPackageFor("arm64").metaPackage, "linux-image-cloud-arm64");
    assert.throws(() => kernelPackageFor("riscv64"), /x86_64 and aarch64/);
  });
  test("directory names stay path-safe", () => {
    assert.equal(kernelDirName("linux-image-x", "1:6.1-3"), "linux-image-x_1_6.1-3");
  });
});

test("a cached kernel extracted for fewer modules than the guest needs now is not used (virtio_net came later, then virtio_balloon)", async () => {
  const { coversGuestModules, GUEST_MODULES } = await import("../../src/environments/vm/kernel.js");
  assert.ok(GUEST_MODULES.includes("virtio_net"), "the guest loads virtio_net for network: true");
  assert.ok(GUEST_MODULES.includes("virtio_balloon"), "the guest loads virtio_balloon for free page reporting");
  const mod = (name: string) => ({ name, path: `modules/${name}.ko`, sha256: `sha256:${"0".repeat(64)}`, bytes: 1, depends: [] });
  const before = { modules: ["virtio_mmio", "virtio_blk", "virtio_console", "overlay", "vmw_vsock_virtio_transport", "virtio_balloon"].map(mod), builtin: ["crc32c"] };
  assert.equal(coversGuestModules(before), false);
  assert.equal(coversGuestModules({ ...before, modules: [...before.modules, mod("virtio_net")] }), true);
  assert.equal(coversGuestModules({ ...before, builtin: ["virtio-net"] }), true, "built in counts, '-' and '_' alike");
  const lastRelease = { ...before, modules: [...before.modules.filter((m) => m.name !== "virtio_balloon"), mod("virtio_net")] };
  assert.equal(coversGuestModules(lastRelease), false, "a kernel extracted before virtio_balloon is extracted again");
});
