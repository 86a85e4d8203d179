/**
 * mem_mib, and a one-shot run's RAM-backed layer, against the host's own
 * memory: the schemas allow up to 256 GiB, and a limit larger than the
 * host's RAM keeps nothing (docs/security.md, "Resources"). These ask for
 * more than this host has and check that nothing is made.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { totalmem } from "node:os";
import { PyroError } from "../../src/index.js";
import { LIMITS } from "../../src/core/defaults.js";
import { recordsIn, refusal, testPyro } from "../helpers/sandbox.js";

const ENV = "busybox";
const hostMib = Math.floor(totalmem() / (1024 * 1024));
const past = hostMib + 1024;
const tooBig = past > LIMITS.mem_mib.max ? `this host has more than ${LIMITS.mem_mib.max} MiB of memory: no mem_mib is past it` : false;

function assertRefused(e: PyroError, limit: "mem_mib" | "disk_mib", mib: number): void {
  assert.equal(e.code, "limit_exceeded", e.message);
  assert.match(e.message, new RegExp(`^${limit} ${mib} is more than this host's ${hostMib} MiB of memory`));
  assert.equal(e.details?.limit, limit);
  assert.equal(e.details?.host_memory_mib, hostMib);
}

// A 24 GiB host accepted mem_mib 262144 (and a 1 TiB tmpfs layer) for a run; its limits said "memory 262144 MiB by cgroup v1".
test("a mem_mib larger than the host's memory is refused for a run, a VM and a task; nothing is made", { skip: tooBig, timeout: 60_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  assertRefused(await refusal(pyro.runInVm({ environment: ENV, command: "true", mem_mib: past })), "mem_mib", past);
  assertRefused(await refusal(pyro.createVm({ environment: ENV, mem_mib: past })), "mem_mib", past);
  assertRefused(await refusal(pyro.createTask({ environment: ENV, mem_mib: past })), "mem_mib", past);
  assert.deepEqual((await pyro.listVms()).vms, []);
  assert.deepEqual((await pyro.listTasks()).tasks, []);
  assert.deepEqual(recordsIn(stateDir), [], "no record left behind");
});

test("a one-shot namespace run's tmpfs layer larger than the host's memory is refused", { skip: tooBig, timeout: 60_000 }, async (t) => {
  const { pyro } = testPyro(t, { driver: "namespace" });
  assertRefused(await refusal(pyro.runInVm({ environment: ENV, command: "true", disk_mib: past })), "disk_mib", past);
  assert.deepEqual((await pyro.listVms()).vms, []);
});

test("limits up to the host's memory still run, and say what they are", { timeout: 60_000 }, async (t) => {
  const { pyro } = testPyro(t, { driver: "namespace" });
  const mem_mib = Math.min(hostMib, LIMITS.mem_mib.max);
  const r = await pyro.runInVm({ environment: ENV, command: "true", mem_mib, disk_mib: Math.max(LIMITS.disk_mib.min, Math.min(hostMib, 4096)) });
  assert.equal(r.exit_code, 0, r.stderr);
  if (r.limits?.mem_mib !== null) assert.equal(r.limits?.mem_mib, mem_mib);
});
