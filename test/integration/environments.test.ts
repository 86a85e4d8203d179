import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, existsSync, readdirSync, unlinkSync, writeFileSync, readFileSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync, spawnSync } from "node:child_process";

const scratch = mkdtempSync(join(tmpdir(), "pyro-int-env-"));
const env = { PYRO_CACHE_DIR: join(scratch, "cache"), PYRO_STATE_DIR: join(scratch, "state") };
Object.assign(process.env, env);

import { pullEnvironment, listEnvironments, ensureEnvironment } from "../../src/environments/index.js";
import { entryPaths, tmpRoot } from "../../src/environments/cache.js";
import { findStaticBusybox } from "../../src/environments/builders/busybox.js";
import { findExecutable } from "../../src/drivers/availability.js";
import { agentBinaryPath, locateAgent } from "../../src/util/agent-binary.js";

/** Whether a usable agent is there (locateAgent throws, saying why, when not). */
function agentFound(): boolean {
  try {
    return Boolean(locateAgent());
  } catch {
    return false;
  }
}
import { runCli, spawnCli, collect, waitForStderr } from "../helpers/cli.js";

after(() => rmSync(scratch, { recursive: true, force: true }));

const bwrap = findExecutable("bwrap");

function stateOf(name: string): string | undefined {
  return listEnvironments().find((e) => e.name === name)?.state;
}

function runInRootfs(rootfs: string, script: string): string {
  return execFileSync(bwrap!, ["--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/sh", "-c", script], { encoding: "utf8" });
}

describe("busybox environment", () => {
  test("builds in under 3 s and its rootfs runs a shell in a sandbox", { skip: bwrap ? false : "bwrap is not installed" }, async () => {
    const t0 = performance.now();
    const r = await pullEnvironment("busybox");
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(r.built, true);
    assert.ok(seconds < 3, `busybox took ${seconds.toFixed(2)} s`);
    assert.equal(stateOf("busybox"), "ready");
    assert.equal(runInRootfs(r.rootfs, "echo ok"), "ok\n");
    assert.match(runInRootfs(r.rootfs, "cat /etc/os-release; ls -d /workspace /tmp /proc"), /pyro busybox[\s\S]*\/workspace/);

    const again = performance.now();
    const noop = await pullEnvironment("busybox");
    assert.equal(noop.built, false);
    assert.ok(performance.now() - again < 1000, "a ready pull is a no-op");
    const ensured = await ensureEnvironment("busybox");
    assert.equal(ensured.rootfs, r.rootfs);
  });

  test("a damaged entry shows broken and the next pull rebuilds it", async () => {
    await pullEnvironment("busybox");
    const { rootfs, manifest } = entryPaths("busybox");
    unlinkSync(join(rootfs, "bin/busybox"));
    assert.equal(stateOf("busybox"), "broken");
    const r1 = await pullEnvironment("busybox");
    assert.equal(r1.built, true);
    assert.equal(stateOf("busybox"), "ready");

    writeFileSync(manifest, readFileSync(manifest, "utf8").slice(0, 100)); // torn
    assert.equal(stateOf("busybox"), "broken");
    const cli = await runCli(["env", "list", "--json"], env);
    assert.equal(JSON.parse(cli.stdout).environments.find((e: { name: string }) => e.name === "busybox").state, "broken");
    const r2 = await runCli(["env", "pull", "busybox", "--json"], env);
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(JSON.parse(r2.stdout).built, true);
    assert.equal(stateOf("busybox"), "ready");
  });

  test("a pull killed with SIGKILL midway leaves nothing ready; the next pull succeeds", async () => {
    rmSync(entryPaths("busybox").dir, { recursive: true, force: true });
    const child = spawnCli(["env", "pull", "busybox", "--json"], { ...env, PYRO_TEST_BUILD_DELAY_MS: "20000" });
    const done = collect(child);
    await waitForStderr(child, /PYRO_TEST_BUILD_DELAY_MS/);
    assert.ok(readdirSync(tmpRoot()).some((n) => n.startsWith("busybox.")), "the build is under .tmp");
    child.kill("SIGKILL");
    await done;

    assert.equal(stateOf("busybox"), "not_pulled");
    const listed = await runCli(["env", "list", "--json"], env);
    assert.notEqual(JSON.parse(listed.stdout).environments.find((e: { name: string }) => e.name === "busybox").state, "ready");

    const t0 = performance.now();
    const r = await runCli(["env", "pull", "busybox", "--json"], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).built, true);
    assert.ok(performance.now() - t0 < 10_000, "the stale lock of the killed pull did not make us wait");
    assert.equal(stateOf("busybox"), "ready");
    assert.deepEqual(readdirSync(tmpRoot()).filter((n) => n.startsWith("busybox.")), [], "the killed build's debris was removed");
  });

  test("Ctrl-C (SIGINT) cancels a pull cleanly: exit 130, no debris", async () => {
    rmSync(entryPaths("busybox").dir, { recursive: true, force: true });
    const child = spawnCli(["env", "pull", "busybox"], { ...env, PYRO_TEST_BUILD_DELAY_MS: "20000" });
    const done = collect(child);
    await waitForStderr(child, /PYRO_TEST_BUILD_DELAY_MS/);
    child.kill("SIGINT");
    const r = await done;
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /interrupted/);
    assert.equal(stateOf("busybox"), "not_pulled");
    assert.deepEqual(readdirSync(tmpRoot()).filter((n) => n.startsWith("busybox.")), []);
    assert.ok(!existsSync(entryPaths("busybox").lock), "the lock was released");
  });

  test("two concurrent pulls: one builds, the other waits and reuses the result", async () => {
    rmSync(entryPaths("busybox").dir, { recursive: true, force: true });
    const slow = { ...env, PYRO_TEST_BUILD_DELAY_MS: "5000" };
    const a = spawnCli(["env", "pull", "busybox", "--json"], slow);
    const aDone = collect(a);
    await waitForStderr(a, /PYRO_TEST_BUILD_DELAY_MS/);
    const b = spawnCli(["env", "pull", "busybox", "--json"], slow);
    const [ra, rb] = await Promise.all([aDone, collect(b)]);
    assert.equal(ra.code, 0, ra.stderr);
    assert.equal(rb.code, 0, rb.stderr);
    const ja = JSON.parse(ra.stdout);
    const jb = JSON.parse(rb.stdout);
    assert.deepEqual([ja.built, jb.built], [true, false], "exactly one built");
    assert.equal(ja.built_at, jb.built_at, "both see the one build");
    assert.equal(ja.digest, jb.digest);
    assert.match(rb.stderr, /"phase":"wait"/, "the second reported that it waited");
    assert.doesNotMatch(rb.stderr, /"phase":"install"/, "the second never built");
    assert.equal(stateOf("busybox"), "ready");
  });

  test("busybox-static can be fetched with apt-get download when the host has none", async (t) => {
    const work = mkdtempSync(join(scratch, "dl-"));
    try {
      const r = await findStaticBusybox(work, { onProgress: () => {} }, []);
      assert.match(r.origin, /busybox-static/);
    } catch (error) {
      t.skip(`apt-get download busybox-static is not possible here: ${(error as Error).message.slice(0, 200)}`);
    }
  });
});

describe("env import from the CLI", () => {
  test("a rootfs directory becomes a ready environment of kind import that runs", { skip: bwrap ? false : "bwrap is not installed" }, async () => {
    const r = await pullEnvironment("busybox");
    const src = join(scratch, "myroot");
    cpSync(r.rootfs, src, { recursive: true, verbatimSymlinks: true });
    const out = await runCli(["env", "import", "mybox", src, "--json"], env);
    assert.equal(out.code, 0, out.stderr);
    const j = JSON.parse(out.stdout);
    assert.equal(j.kind, "import");
    assert.equal(j.state, "ready");
    const list = JSON.parse((await runCli(["env", "list", "--json"], env)).stdout);
    assert.equal(list.environments.find((e: { name: string }) => e.name === "mybox").kind, "import");
    assert.equal(runInRootfs(j.rootfs, "echo ok"), "ok\n");
    const insp = await runCli(["env", "inspect", "mybox", "--verify", "--json"], env);
    assert.equal(JSON.parse(insp.stdout).verify.ok, true);
    const bad = await runCli(["env", "import", "debian:12", src], env);
    assert.equal(bad.code, 2, "a catalog name is a usage error");
    assert.match(bad.stderr, /catalog/);
  });

  test("an unknown environment is a usage error listing the valid names", async () => {
    const r = await runCli(["env", "pull", "debian:13", "--json"], env);
    assert.equal(r.code, 2);
    const j = JSON.parse(r.stdout);
    assert.equal(j.error.code, "unknown_environment");
    for (const n of ["debian:12-base", "debian:12", "debian:12-build", "busybox"]) assert.ok(j.error.details.valid.includes(n));
  });

  test("an unreachable mirror says so with the URL and suggests --mirror", async () => {
    const r = await runCli(["env", "pull", "debian:12-base", "--mirror", "http://127.0.0.1:9/debian", "--json"], env);
    assert.equal(r.code, 125, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.error.code, "mirror_unreachable");
    assert.match(j.error.message, /127\.0\.0\.1:9/);
    assert.match(j.error.hint, /--mirror/);
    assert.equal(stateOf("debian:12-base"), "not_pulled");
  });

  test("too little disk says how much is needed, before anything is written", async (t) => {
    // A 1 MiB tmpfs can hold neither debian nor busybox's 8 MiB estimate.
    const mnt = mkdtempSync(join(scratch, "small-"));
    const m = spawnSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt]);
    if (m.status !== 0) {
      t.skip("cannot mount a 1 MiB tmpfs to fill (needs root)");
      return;
    }
    try {
      const r = await runCli(["env", "pull", "busybox", "--json"], { ...env, PYRO_CACHE_DIR: mnt });
      assert.equal(r.code, 125, r.stderr);
      const j = JSON.parse(r.stdout);
      assert.equal(j.error.code, "insufficient_disk");
      assert.match(j.error.message, /needs about 8\.0 MiB .* only .* is free/);
      assert.deepEqual(readdirSync(mnt).filter((n) => n !== "environments"), []);
      assert.ok(!existsSync(join(mnt, "environments", ".tmp")) || readdirSync(join(mnt, "environments", ".tmp")).length === 0);
    } finally {
      spawnSync("umount", [mnt]);
    }
  });
});

describe("doctor", () => {
  test("--json tells the truth here: namespace available, KVM and firecracker missing with reasons", async () => {
    const r = await runCli(["doctor", "--json"], env);
    const j = JSON.parse(r.stdout);
    const { DoctorResultSchema } = await import("../../src/operations/doctor.js");
    const parsed = DoctorResultSchema.safeParse(j);
    assert.ok(parsed.success, JSON.stringify(parsed.error?.issues));
    const by = (d: string) => j.drivers.find((x: { driver: string }) => x.driver === d);
    const kvm = existsSync("/dev/kvm");
    if (bwrap && !kvm && !agentFound()) {
      // Run without `npm run build`: the only thing missing is the agent, and doctor says how to build it.
      assert.equal(by("namespace").available, false);
      assert.match(by("namespace").reason, /make -C guest/);
    } else if (bwrap && !kvm) {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(by("namespace").available, true, JSON.stringify(by("namespace")));
      assert.deepEqual(by("namespace").isolation, { driver: "namespace", kind: "namespace", accel: null });
      assert.equal(by("firecracker").available, false);
      assert.match(by("firecracker").reason, /\/dev\/kvm/);
      assert.deepEqual(j.auto, { driver: "namespace", isolation: { driver: "namespace", kind: "namespace", accel: null } });
      if (by("qemu").available) assert.equal(by("qemu").isolation.accel, "tcg", "qemu without KVM is TCG, and auto did not pick it");
    }
    assert.equal(j.platform.os, "linux");
    assert.ok(["v1", "v2", "none"].includes(j.cgroups.version));
    assert.equal(j.cache.dir, env.PYRO_CACHE_DIR);
    if (j.missing_packages.length) assert.equal(j.install_command.replace(/^sudo /, ""), `apt-get install -y ${j.missing_packages.join(" ")}`);
  });
});
