// What an unprivileged sandbox can make of its writable layer on the host's
// disk, against the walk that measures it for the disk quota and the removal
// that frees it (src/util/layer-tree.ts): directories of mode 000, trees
// nested past any walk and past PATH_MAX, symlinks to host files.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_MEASURE_DEPTH, MIN_ENTRY_BYTES, measureLayer, removeLayerTree } from "../../src/util/layer-tree.js";

const MIB = 1024 * 1024;

function base(t: import("node:test").TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "pyro-layer-"));
  t.after(async () => {
    await removeLayerTree(dir).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** A file of `mib` MiB of real (allocated) bytes. */
function bigFile(path: string, mib: number): void {
  const fd = openSync(path, "w");
  const chunk = Buffer.alloc(MIB, 1);
  for (let i = 0; i < mib; i++) writeSync(fd, chunk);
  closeSync(fd);
}

/** Nests `depth` directories named `name` under dir, through held descriptors' paths (the whole path may pass PATH_MAX). */
function nest(dir: string, depth: number, name: string): string {
  // mkdir by relative steps from a chdir'd child process would be slower; /proc/self/fd keeps every path short.
  let fd = openSync(dir, "r");
  for (let i = 0; i < depth; i++) {
    mkdirSync(`/proc/self/fd/${fd}/${name}`);
    const next = openSync(`/proc/self/fd/${fd}/${name}`, "r");
    closeSync(fd);
    fd = next;
  }
  return `/proc/self/fd/${fd}`;
}

test("a directory of mode 000 is measured (its bytes count) and keeps its mode", async (t) => {
  const root = join(base(t), "upper");
  mkdirSync(join(root, "workspace", "hide"), { recursive: true });
  bigFile(join(root, "workspace", "hide", "big"), 8);
  chmodSync(join(root, "workspace", "hide"), 0o000);
  chmodSync(root, 0o000); // `chmod 000 /` inside lands on the layer's top
  const u = await measureLayer(root);
  assert.equal(u.unmeasured, null);
  assert.ok(u.allocated >= 8 * MIB, `counted ${u.allocated} bytes`);
  assert.equal(statSync(join(root)).mode & 0o777, 0, "the top's mode is put back");
  chmodSync(root, 0o755);
  assert.equal(statSync(join(root, "workspace", "hide")).mode & 0o777, 0, "the hidden directory's mode is put back");
});

test("a tree nested past the walk's depth is named as unmeasured, never counted as nothing", async (t) => {
  const root = join(base(t), "upper");
  mkdirSync(root);
  const bottom = nest(root, MAX_MEASURE_DEPTH + 5, "d");
  writeFileSync(join(bottom, "hidden"), "x");
  const u = await measureLayer(root);
  assert.ok(u.unmeasured !== null && u.unmeasured.split("/").length === MAX_MEASURE_DEPTH + 1, `unmeasured: ${u.unmeasured?.slice(0, 40)}`);
});

test("every entry costs at least one block: empty files cannot fill the host's inodes for free", async (t) => {
  const root = join(base(t), "upper");
  mkdirSync(root);
  for (let i = 0; i < 100; i++) writeFileSync(join(root, `e${i}`), "");
  const u = await measureLayer(root);
  assert.equal(u.files, 100);
  assert.ok(u.allocated >= 100 * MIN_ENTRY_BYTES, `counted ${u.allocated}`);
});

test("a large layer is measured without holding up the event loop: others are served meanwhile", async (t) => {
  const root = join(base(t), "upper");
  mkdirSync(root);
  for (let d = 0; d < 20; d++) {
    mkdirSync(join(root, `d${d}`));
    for (let i = 0; i < 1000; i++) writeFileSync(join(root, `d${d}`, `f${i}`), "");
  }
  // A timer due at once fires only when the walk gives the loop a turn: a walk that never yields fires it 0 times.
  let turns = 0;
  const timer = setInterval(() => turns++, 0);
  const u = await measureLayer(root).finally(() => clearInterval(timer));
  assert.equal(u.files, 20_000);
  assert.ok(turns >= 5, `the loop got ${turns} turns while 20020 entries were measured`);
});

test("measuring follows no symlink and changes no host file's mode", async (t) => {
  const dir = base(t);
  const secret = join(dir, "host-secret");
  writeFileSync(secret, "s", { mode: 0o000 });
  mkdirSync(join(dir, "host-dir"), { mode: 0o000 });
  const root = join(dir, "upper");
  mkdirSync(root);
  symlinkSync(secret, join(root, "link-file"));
  symlinkSync(join(dir, "host-dir"), join(root, "link-dir"));
  bigFile(join(dir, "outside"), 4);
  symlinkSync(dir, join(root, "link-up"));
  const u = await measureLayer(root);
  assert.equal(u.unmeasured, null);
  assert.ok(u.allocated < 1 * MIB, `counted only the links (${u.allocated})`);
  assert.equal(statSync(secret).mode & 0o777, 0);
  assert.equal(statSync(join(dir, "host-dir")).mode & 0o777, 0);
});

test("removal frees a tree with directories of mode 000 and paths past PATH_MAX, and nothing through its symlinks", async (t) => {
  const dir = base(t);
  const keep = join(dir, "keep");
  mkdirSync(keep, { mode: 0o000 });
  const trash = join(dir, "trash");
  mkdirSync(join(trash, "a", "b"), { recursive: true });
  writeFileSync(join(trash, "a", "b", "f"), "x");
  chmodSync(join(trash, "a", "b"), 0o000);
  chmodSync(join(trash, "a"), 0o000);
  symlinkSync(keep, join(trash, "to-keep"));
  // 200 levels of 60 bytes: 12000 bytes of path, three times PATH_MAX.
  const bottom = nest(trash, 200, "x".repeat(60));
  writeFileSync(join(bottom, "deep"), "x");
  chmodSync(bottom, 0o000);
  chmodSync(trash, 0o500);
  await removeLayerTree(trash);
  assert.equal(existsSync(trash), false, "the whole tree is gone");
  assert.ok(existsSync(keep), "the symlink's target is untouched");
  assert.equal(statSync(keep).mode & 0o777, 0, "and keeps its mode");
});
