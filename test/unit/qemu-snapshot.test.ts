import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readSnapshot, snapshotPlan, commitSnapshot, tempPath, sweepTemps } from "../../src/drivers/qemu/snapshot.js";
import type { SandboxSpec } from "../../src/drivers/types.js";

const dir = mkdtempSync(join(tmpdir(), "pyro-snapunit-"));
test.after(() => rmSync(dir, { recursive: true, force: true }));
const env = join(dir, "environments", "busybox");
mkdirSync(env, { recursive: true });
for (const f of ["vmlinux", "initrd.img", "rootfs.ext4", "agent"]) writeFileSync(join(env, f), f);
const vm = { kernel: join(env, "vmlinux"), initramfs: join(env, "initrd.img"), root_image: join(env, "rootfs.ext4") };
const base: SandboxSpec = { id: "a", dir: join(dir, "a"), rootfs: "/r", vcpu_count: 1, mem_mib: 256, pids_max: 512, disk_mib: 64, keep_layer: false, network: false, deadline: null, die_with_parent: true, hostname: "a", vm };
const plan = (s: Partial<SandboxSpec>, mib = 64, accel: "tcg" | "kvm" = "tcg") => snapshotPlan({ ...base, ...s }, { kind: "ram", mib }, accel, "/nonexistent/qemu", join(env, "agent"))!;

test("the snapshot key is the VM's shape and build, never a sandbox's own id, hostname, directory or deadline", () => {
  const k = plan({}).key;
  assert.equal(plan({ id: "b", hostname: "b", dir: join(dir, "b"), deadline: 123 }).key, k);
  for (const other of [plan({ mem_mib: 512 }), plan({ vcpu_count: 2 }), plan({ pids_max: 100 }), plan({}, 128), plan({}, 64, "kvm")]) assert.notEqual(other.key, k);
  assert.equal(plan({}).dir, join(env, "snapshots"));
});

test("the key changes with any artifact's content; a missing artifact gives no plan", () => {
  const k = plan({}).key;
  writeFileSync(join(env, "initrd.img"), "another initramfs");
  assert.notEqual(plan({}).key, k);
  writeFileSync(join(env, "initrd.img"), "initrd.img");
  assert.equal(plan({}).key, k);
  writeFileSync(join(env, "agent"), "another agent");
  assert.notEqual(plan({}).key, k);
  writeFileSync(join(env, "agent"), "agent");
  assert.equal(snapshotPlan({ ...base, vm: { ...vm, root_image: join(env, "missing") } }, { kind: "ram", mib: 64 }, "tcg", "/nonexistent/qemu", join(env, "agent")), null);
});

test("a snapshot is whole only with its record, its key and its recorded size; temps are swept", () => {
  const p = plan({});
  assert.equal(readSnapshot(p), null);
  const temp = tempPath(p);
  writeFileSync(temp, Buffer.alloc(1000, 7));
  writeFileSync(`${p.bin}.tmp-999999`, "old");
  const meta = commitSnapshot(p, temp, { bytes: 1000, sha256: "a".repeat(64) }, "/nonexistent/qemu");
  assert.deepEqual(readSnapshot(p), meta);
  truncateSync(p.bin, 999);
  assert.equal(readSnapshot(p), null, "a truncated snapshot is none");
  writeFileSync(p.meta, "{ torn");
  assert.equal(readSnapshot(p), null);
  sweepTemps(p);
  assert.equal(readSnapshot(p), null);
  assert.throws(() => truncateSync(`${p.bin}.tmp-999999`, 0), /ENOENT/);
});
