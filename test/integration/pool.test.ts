import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { leftovers, settledLeftovers, testPyro, waitFor } from "../helpers/sandbox.js";
import type { Pyro } from "../../src/index.js";

const vmDirs = (stateDir: string) => {
  try {
    return readdirSync(join(stateDir, "vms"))
      .filter((n) => !n.startsWith(".")) // a deleted VM's directory on its way out (runtime/store.ts)
      .sort();
  } catch {
    return [];
  }
};
/** The one spare of the pool, once it has booted. */
const spareReady = (pyro: Pyro) => waitFor(() => pyro.vms.pool!.size() === 1, 15_000, "a warm spare");

test("a warm pool: the next run execs in the spare, which is used once and never carries state", async (t) => {
  const { pyro, stateDir } = testPyro(t, { warmPool: true });
  const first = await pyro.runInVm({ environment: "busybox", command: "touch /marker; echo first" });
  assert.equal(first.stdout, "first\n");
  await spareReady(pyro);
  await waitFor(() => vmDirs(stateDir).length === 1, 5_000, "the first run's sandbox to be deleted");
  const [spare] = vmDirs(stateDir);

  // The second run takes the spare: its VM is gone afterwards, and a new spare replaces it.
  const second = await pyro.runInVm({ environment: "busybox", command: "test -e /marker && echo leaked || echo clean" });
  assert.equal(second.stdout, "clean\n");
  assert.equal(second.exit_code, 0);
  await spareReady(pyro);
  await waitFor(() => vmDirs(stateDir).length === 1 && vmDirs(stateDir)[0] !== spare, 5_000, "the used spare to be replaced");

  await pyro.close();
  assert.deepEqual(await settledLeftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

test("a spare is taken only by a run of its shape, with its timeout inside the spare's lifetime", async (t) => {
  const { pyro, stateDir } = testPyro(t, { warmPool: true });
  await pyro.runInVm({ environment: "busybox", command: ["true"] });
  await spareReady(pyro);
  await waitFor(() => vmDirs(stateDir).length === 1, 5_000, "one spare");
  const [spare] = vmDirs(stateDir);

  // Other limits: a sandbox of its own (the spare stays).
  const small = await pyro.runInVm({ environment: "busybox", mem_mib: 256, command: ["true"] });
  assert.equal(small.exit_code, 0);
  assert.ok(vmDirs(stateDir).includes(spare!), "a run with other limits must not take the spare");

  // A timeout longer than the spare has left: a sandbox of its own, whose TTL covers the timeout.
  const long = pyro.runInVm({ environment: "busybox", timeout_seconds: 7200, command: "sleep 1" });
  // Its VM lives at least the command's timeout plus a margin (the default TTL, 600 s, would cut it short).
  await waitFor(
    () => vmDirs(stateDir).some((id) => (pyro.vms.store.read(id)?.ttl_seconds ?? 0) >= 7260),
    10_000,
    "the long run's VM, with a TTL that covers its timeout",
  );
  assert.equal((await long).exit_code, 0);
  assert.ok(vmDirs(stateDir).includes(spare!), "a run whose timeout outlasts the spare must not take it");
});

test("a spare that died is not used: the run boots its own sandbox and succeeds", async (t) => {
  const { pyro, stateDir } = testPyro(t, { warmPool: true });
  await pyro.runInVm({ environment: "busybox", command: ["true"] });
  await spareReady(pyro);
  await waitFor(() => vmDirs(stateDir).length === 1, 5_000, "one spare");
  const record = pyro.vms.store.read(vmDirs(stateDir)[0]!)!;
  process.kill(record.sandbox!.process.pid, "SIGKILL");
  await waitFor(() => !pyro.vms.isSandboxRunning(record), 5_000, "the spare to die");
  const r = await pyro.runInVm({ environment: "busybox", command: ["echo", "ok"] });
  assert.equal(r.stdout, "ok\n");
  await pyro.close();
  assert.deepEqual(await settledLeftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

test("a spare over an environment that was rebuilt since (even to the same digest) is not used", async (t) => {
  // A cache of this test's own: rebuilding busybox must not touch other tests' environment.
  const cache = mkdtempSync(join(tmpdir(), "pyro-pool-cache-"));
  const saved = process.env.PYRO_CACHE_DIR;
  process.env.PYRO_CACHE_DIR = cache;
  t.after(() => {
    if (saved === undefined) delete process.env.PYRO_CACHE_DIR;
    else process.env.PYRO_CACHE_DIR = saved;
    rmSync(cache, { recursive: true, force: true });
  });
  const { pyro, stateDir } = testPyro(t, { warmPool: true });
  await pyro.runInVm({ environment: "busybox", command: ["true"] });
  await spareReady(pyro);
  const digest = async () => (await pyro.inspectEnvironment({ environment: "busybox" })).manifest!.artifacts.rootfs.digest;
  const before = await digest();
  await pyro.pullEnvironment({ environment: "busybox", force: true });
  assert.equal(await digest(), before, "busybox builds reproducibly");
  await new Promise((r) => setTimeout(r, 5_100)); // past the per-process memory of a ready environment
  const r = await pyro.runInVm({ environment: "busybox", command: "echo ok" });
  assert.equal(r.stdout, "ok\n");
  assert.equal(r.exit_code, 0);
  await pyro.close();
  assert.deepEqual(await settledLeftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});
