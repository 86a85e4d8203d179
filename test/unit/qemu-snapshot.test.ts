import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, closeSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, writeFileSync, writeSync, mkdirSync, truncateSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { readSnapshot, snapshotPlan, commitSnapshot, tempPath, sweepTemps, openSnapshot } from "../../src/drivers/qemu/snapshot.js";
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
  for (const other of [plan({ mem_mib: 512 }), plan({ vcpu_count: 2 }), plan({ pids_max: 100 }), plan({}, 128), plan({}, 64, "kvm"), plan({ network: true })]) assert.notEqual(other.key, k);
  // The network is part of the shape (its device and addresses are in the saved state); its passt is each VM's own.
  assert.equal(plan({ network: true, id: "b", hostname: "b", dir: join(dir, "b") }).key, plan({ network: true }).key);
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

test("the agent's digest is written nowhere: an agent in a read-only directory (a root-installed package run by another user) gets the same key", () => {
  const ro = mkdtempSync(join(tmpdir(), "pyro-snapro-"));
  try {
    chmodSync(ro, 0o755);
    const agentDir = join(ro, "agent");
    mkdirSync(agentDir, { mode: 0o755 });
    const agent = join(agentDir, "pyro-agent");
    writeFileSync(agent, "agent", { mode: 0o755 });
    const envDir = join(ro, "env");
    mkdirSync(envDir, { mode: 0o755 });
    for (const f of ["vmlinux", "initrd.img", "rootfs.ext4"]) writeFileSync(join(envDir, f), f);
    const spec: SandboxSpec = { ...base, vm: { kernel: join(envDir, "vmlinux"), initramfs: join(envDir, "initrd.img"), root_image: join(envDir, "rootfs.ext4") } };
    const key = snapshotPlan(spec, { kind: "ram", mib: 64 }, "tcg", "/nonexistent/qemu", agent)!.key;
    // The artifacts are the same bytes as the shared ones and so is the agent: the same key, wherever they are.
    assert.equal(key, plan({}).key);
    assert.deepEqual(readdirSync(agentDir), ["pyro-agent"], "nothing is written beside the agent");
    let other: string;
    if (process.getuid?.() === 0) {
      // As another uid, the root-owned agent directory is read-only for real (root would write through a mode).
      const uid = 2_000_000_322;
      spawnSync("chown", ["-R", `${uid}:${uid}`, envDir]);
      const script = join(ro, "plan.mts");
      writeFileSync(
        script,
        `import { writeFileSync } from "node:fs";
import { snapshotPlan } from ${JSON.stringify(resolve("src/drivers/qemu/snapshot.ts"))};
let writable = true;
try { writeFileSync(${JSON.stringify(join(agentDir, "probe"))}, ""); } catch { writable = false; }
const spec = ${JSON.stringify(spec)};
const keys = [1, 2].map(() => snapshotPlan(spec, { kind: "ram", mib: 64 }, "tcg", "/nonexistent/qemu", ${JSON.stringify(agent)})?.key);
console.log(JSON.stringify({ writable, keys }));
`,
      );
      const r = spawnSync("setpriv", ["--reuid", String(uid), "--regid", String(uid), "--clear-groups", process.execPath, "--import", "tsx", script], { encoding: "utf8", env: { ...process.env, HOME: ro } });
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { writable: boolean; keys: string[] };
      assert.equal(out.writable, false, "the agent's directory is not writable by that uid");
      assert.equal(out.keys[0], out.keys[1]);
      other = out.keys[0]!;
    } else {
      chmodSync(agentDir, 0o555);
      other = snapshotPlan(spec, { kind: "ram", mib: 64 }, "tcg", "/nonexistent/qemu", agent)!.key;
      chmodSync(agentDir, 0o755);
    }
    assert.equal(other, key);
    assert.deepEqual(readdirSync(agentDir), ["pyro-agent"]);
  } finally {
    rmSync(ro, { recursive: true, force: true });
  }
});

test("a restore's fd: the content checked against the record's sha256 once, remembered with the file's identity; damage in place (same size) is refused, the fd closed", async () => {
  const p = plan({ mem_mib: 384 });
  const content = Buffer.alloc(3 << 20, 0);
  for (let i = 0; i < content.length; i += 4096) content[i] = i & 0xff;
  const sha256 = createHash("sha256").update(content).digest("hex");
  const temp = tempPath(p);
  writeFileSync(temp, content);
  const meta = commitSnapshot(p, temp, { bytes: content.length, sha256 }, "/nonexistent/qemu");
  assert.match(meta.stamp ?? "", /^\d+:\d+:\d+:\d+:\d+$/, "the maker, which hashed it as it was written, records its identity");
  const fd = await openSnapshot(p, readSnapshot(p)!);
  const head = Buffer.alloc(16);
  assert.equal(readSync(fd, head, 0, 16, null), 16, "qemu reads from the start of the file");
  assert.deepEqual(head, content.subarray(0, 16));
  closeSync(fd);

  // The stamp is what spares the hash: with the file's identity recorded, a record whose digest is wrong is not caught...
  closeSync(await openSnapshot(p, { ...meta, sha256: "0".repeat(64) }));
  // ...and without it, the content is hashed: a wrong digest is refused, the right one accepted and its identity remembered.
  await assert.rejects(openSnapshot(p, { ...meta, sha256: "0".repeat(64), stamp: undefined }), /damaged/);
  writeFileSync(p.meta, JSON.stringify({ ...meta, stamp: undefined }));
  const unstamped = readSnapshot(p)!;
  assert.equal(unstamped.stamp, undefined);
  closeSync(await openSnapshot(p, unstamped));
  assert.equal(readSnapshot(p)!.stamp, meta.stamp, "remembered after a good check");

  // Same size, other bytes: the write changed the file's ctime, so it is hashed again and refused.
  const w = openSync(p.bin, "r+");
  writeSync(w, Buffer.alloc(4096, 0xa5), 0, 4096, 1 << 20);
  closeSync(w);
  const damaged = readSnapshot(p)!;
  assert.ok(damaged, "the size check alone cannot tell");
  const fdsBefore = readdirSync("/proc/self/fd").length;
  await assert.rejects(openSnapshot(p, damaged), /damaged/);
  assert.equal(readdirSync("/proc/self/fd").length, fdsBefore, "no fd left open");
  assert.equal(readSnapshot(p)!.stamp, meta.stamp, "a refused file's identity is not remembered");
});
