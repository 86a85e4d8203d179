import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync, existsSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

// Kernel packages made here with dpkg-deb -b: the whole of buildKernel runs offline on them,
// and every way a package can be wrong ends in a clear error with nothing left in the cache.
const scratch = mkdtempSync(join(tmpdir(), "pyro-vm-kpkg-"));
process.env.PYRO_CACHE_DIR = join(scratch, "cache");
process.env.PYRO_STATE_DIR = join(scratch, "state");

import { buildKernel, checkKernel } from "../../src/environments/vm/kernel.js";
import { kernelsDir, kernelsTmp } from "../../src/environments/vm/store.js";
import { PyroError } from "../../src/core/errors.js";
import { XEN_ELFNOTE_PHYS32_ENTRY } from "../../src/environments/vm/elf.js";
import { elf64, note, modinfo, bzImage, withSize } from "../helpers/vm-fixtures.js";

after(() => rmSync(scratch, { recursive: true, force: true }));

const have = (t: string) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0;
const skip = have("dpkg-deb") && have("lz4") ? false : "needs dpkg-deb and lz4";
const RELEASE = "6.1.0-99-cloud-amd64";
let n = 0;

function pvhVmlinux(withNote = true): Buffer {
  const entry = Buffer.alloc(4);
  entry.writeUInt32LE(0x1000000, 0);
  return Buffer.concat([elf64([], note("Xen", withNote ? XEN_ELFNOTE_PHYS32_ENTRY : 5, entry)), Buffer.alloc(4096, 0x90)]);
}
function lz4Bz(payloadOf: Buffer, options: { corrupt?: boolean } = {}): Buffer {
  const c = spawnSync("lz4", ["-l", "-c"], { input: payloadOf }).stdout;
  if (options.corrupt) c.fill(0xaa, 8);
  return bzImage(withSize(c, payloadOf.length));
}
function ko(name: string, depends: string): Buffer {
  return elf64([{ name: ".modinfo", type: 1, data: modinfo(`depends=${depends}`, `name=${name}`, `vermagic=${RELEASE} SMP`) }]);
}

/** A kernel image package: files by path below the package root. */
function makeDeb(files: Record<string, Buffer>): string {
  const root = join(scratch, `pkg-${n++}`);
  mkdirSync(join(root, "DEBIAN"), { recursive: true });
  writeFileSync(join(root, "DEBIAN/control"), `Package: linux-image-${RELEASE}\nVersion: 6.1.999-1\nArchitecture: amd64\nMaintainer: test <t@example.org>\nDescription: crafted kernel\n`);
  for (const [p, data] of Object.entries(files)) {
    mkdirSync(join(root, p, ".."), { recursive: true });
    writeFileSync(join(root, p), data);
  }
  const deb = `${root}.deb`;
  const r = spawnSync("dpkg-deb", ["--root-owner-group", "-Zgzip", "-b", root, deb], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return deb;
}

const mods = `lib/modules/${RELEASE}`;
const good = () => ({
  [`boot/vmlinuz-${RELEASE}`]: lz4Bz(pvhVmlinux()),
  [`${mods}/kernel/drivers/virtio/virtio_mmio.ko`]: ko("virtio_mmio", "virtio,virtio_ring"),
  [`${mods}/kernel/drivers/virtio/virtio.ko`]: ko("virtio", ""),
  [`${mods}/kernel/drivers/virtio/virtio_ring.ko`]: ko("virtio_ring", ""),
  [`${mods}/kernel/fs/overlayfs/overlay.ko`]: ko("overlay", ""),
  [`${mods}/modules.builtin`]: Buffer.from("kernel/fs/ext4/ext4.ko\nkernel/drivers/block/virtio_blk.ko\n"),
});
const build = (deb: string, modules = ["virtio_mmio", "virtio_blk", "overlay"]) => buildKernel({ deb, modules, onProgress: () => {} });

function assertNothingLeft(): void {
  const left = existsSync(kernelsDir()) ? readdirSync(kernelsDir()).filter((x) => x !== ".tmp") : [];
  assert.deepEqual(left, [], "no kernel entry");
  assert.deepEqual(existsSync(kernelsTmp()) ? readdirSync(kernelsTmp()) : [], [], "no build directory");
}

describe("kernel packages", { skip, concurrency: false }, () => {
  test("a well-formed package becomes a kernel entry: vmlinux, modules in order, built-ins skipped", async () => {
    const k = await build(makeDeb(good()));
    assert.equal(k.record.release, RELEASE);
    assert.equal(k.record.package_version, "6.1.999-1");
    assert.equal(k.record.compression, "lz4");
    assert.deepEqual(readFileSync(join(k.dir, "vmlinux")), pvhVmlinux());
    assert.deepEqual(k.record.modules.map((m) => m.name), ["virtio", "virtio_ring", "virtio_mmio", "overlay"]);
    assert.deepEqual(k.record.builtin, ["virtio_blk"]);
    assert.equal(checkKernel(k.dir).problem, null);
    rmSync(kernelsDir(), { recursive: true, force: true });
  });

  const bad: [string, () => Record<string, Buffer>, RegExp, string[]?][] = [
    ["a package with no vmlinuz", () => ({ [`${mods}/modules.builtin`]: Buffer.from("") }), /no \/boot\/vmlinuz/],
    ["a payload that does not decompress", () => ({ ...good(), [`boot/vmlinuz-${RELEASE}`]: lz4Bz(pvhVmlinux(), { corrupt: true }) }), /cannot be turned into a bootable vmlinux.*lz4/],
    ["a bzImage that lies about its payload's size", () => ({ ...good(), [`boot/vmlinuz-${RELEASE}`]: bzImage(Buffer.alloc(64), { lieLength: 1 << 28 }) }), /runs past the end/],
    ["a file that is no bzImage", () => ({ ...good(), [`boot/vmlinuz-${RELEASE}`]: Buffer.alloc(4096, 1) }), /not an x86 bzImage/],
    ["a vmlinux without the PVH note", () => ({ ...good(), [`boot/vmlinuz-${RELEASE}`]: lz4Bz(pvhVmlinux(false)) }), /no PVH entry note/],
    ["a payload that is no ELF", () => ({ ...good(), [`boot/vmlinuz-${RELEASE}`]: lz4Bz(Buffer.alloc(8192, 0x42)) }), /not an ELF file/],
    ["a needed module the package lacks", () => ({ ...good() }), /vsock, which vmw_vsock_virtio_transport depends on/, ["vmw_vsock_virtio_transport"]],
    ["modules that depend on each other in a cycle", () => ({ ...good(), [`${mods}/kernel/drivers/virtio/virtio.ko`]: ko("virtio", "virtio_mmio") }), /cycle: virtio_mmio -> virtio -> virtio_mmio/],
    ["a .ko that is no module", () => ({ ...good(), [`${mods}/kernel/fs/overlayfs/overlay.ko`]: Buffer.from("not elf at all, just text") }), /overlay\.ko is not a readable kernel module/],
  ];
  for (const [what, files, message, modules] of bad) {
    test(`${what}: environment_build_failed with a hint, nothing left`, async () => {
      const extra = modules ? { ...files(), [`${mods}/kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko`]: ko("vmw_vsock_virtio_transport", "vsock") } : files();
      await assert.rejects(build(makeDeb(extra), modules), (e: unknown) => {
        assert.ok(e instanceof PyroError, String(e));
        assert.equal(e.code, "environment_build_failed");
        assert.match(e.message, message);
        assert.ok(e.hint && e.hint.length > 10, "a hint says what to do");
        return true;
      });
      assertNothingLeft();
    });
  }
});
