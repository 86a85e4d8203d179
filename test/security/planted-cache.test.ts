/**
 * A cache directory another user owns or may write (a predictable path in
 * /tmp that they made first, a directory left mode 777): they can plant an
 * environment there, which a root pyro boots and hands to the sandbox uid,
 * set-id bits kept. docs/security.md, "Who the sandbox's root is on the host".
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, copyFileSync, lstatSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PyroError } from "../../src/index.js";
import { testPyro } from "../helpers/sandbox.js";
import { TEST_USER } from "../helpers/unprivileged.js";

const isRoot = process.getuid?.() === 0;

function withCache(t: { after(fn: () => void): void }, dir: string): void {
  const saved = process.env.PYRO_CACHE_DIR;
  process.env.PYRO_CACHE_DIR = dir;
  t.after(() => {
    if (saved === undefined) delete process.env.PYRO_CACHE_DIR;
    else process.env.PYRO_CACHE_DIR = saved;
  });
}

async function refusal(p: Promise<unknown>): Promise<PyroError | null> {
  try {
    await p;
    return null;
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected a PyroError, got ${e}`);
    return e;
  }
}

test("a root pyro never uses an environment another user planted in a cache of theirs", { skip: isRoot ? false : "needs root: the victim is root, the planter another uid", timeout: 120_000 }, async (t) => {
  const built = process.env.PYRO_CACHE_DIR;
  assert.ok(built, "the test run's cache (scripts/test.mjs) holds busybox");
  if (spawnSync("id", ["-u", TEST_USER]).status !== 0) spawnSync("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER]);
  const uid = Number(spawnSync("id", ["-u", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", TEST_USER], { encoding: "utf8" }).stdout.trim());
  // The other user's cache at the path root will use, with a copy of a real entry and a set-uid file of theirs in it.
  const cache = mkdtempSync(join(tmpdir(), "pyro-planted-cache-"));
  t.after(() => rmSync(cache, { recursive: true, force: true }));
  mkdirSync(join(cache, "environments"), { mode: 0o755 });
  assert.equal(spawnSync("cp", ["-a", join(built, "environments", "busybox"), join(cache, "environments", "busybox")]).status, 0);
  const planted = join(cache, "environments", "busybox", "rootfs", "bin", "planted");
  copyFileSync("/bin/true", planted);
  assert.equal(spawnSync("chown", ["-R", `${uid}:${gid}`, cache]).status, 0);
  chmodSync(cache, 0o755);
  chmodSync(planted, 0o4755);
  withCache(t, cache);
  const { pyro } = testPyro(t, { driver: "namespace" });
  const error = await refusal(pyro.runInVm({ environment: "busybox", command: "true" }));
  const st = lstatSync(planted);
  assert.equal(st.uid, uid, `the planted set-uid file was handed to uid ${st.uid} (mode ${(st.mode & 0o7777).toString(8)})`);
  assert.ok(error, "the run used the other user's cache");
  assert.equal(error.code, "invalid_state", error.message);
  assert.match(error.message, new RegExp(`Refusing the cache directory ${cache}: it is owned by uid ${uid}, not 0`));
});

test("a cache or environments directory of one's own that others may write is refused, not used", { timeout: 60_000 }, async (t) => {
  const cache = mkdtempSync(join(tmpdir(), "pyro-open-cache-"));
  t.after(() => rmSync(cache, { recursive: true, force: true }));
  withCache(t, cache);
  const { pyro } = testPyro(t, { driver: "namespace" });
  chmodSync(cache, 0o777);
  const open = await refusal(pyro.runInVm({ environment: "busybox", command: "true" }));
  assert.equal(open?.code, "invalid_state", String(open));
  assert.match(open!.message, /Refusing the cache directory .*: its mode is 777: others may write it/);
  chmodSync(cache, 0o700);
  mkdirSync(join(cache, "environments"), { recursive: true });
  chmodSync(join(cache, "environments"), 0o777);
  // One's own environments directory is made private again (as before); only then checked.
  const r = await pyro.runInVm({ environment: "busybox", command: "true" });
  assert.equal(r.exit_code, 0);
  assert.equal(lstatSync(join(cache, "environments")).mode & 0o777, 0o700);
});
