/**
 * vcpu_count against the CPUs this host gives pyro: the schemas allow up to
 * 64, and a count past the host's bounds nothing (docs/security.md,
 * "Resources"). These ask for more than this host has and check that nothing
 * is made, then that the host's own count still runs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { PyroError } from "../../src/index.js";
import { LIMITS } from "../../src/core/defaults.js";
import { recordsIn, refusal, testPyro } from "../helpers/sandbox.js";

const ENV = "busybox";
const host = availableParallelism();
const past = host + 1;
const tooBig = past > LIMITS.vcpu_count.max ? `this host gives pyro ${host} CPUs, the schemas' maximum: no vcpu_count is past it` : false;

function assertRefused(e: PyroError): void {
  assert.equal(e.code, "limit_exceeded", e.message);
  assert.match(e.message, new RegExp(`^vcpu_count ${past} is more than the ${host} CPUs? this host gives pyro`));
  assert.equal(e.hint, `Ask for a vcpu_count of at most ${host}.`);
  assert.deepEqual([e.details?.limit, e.details?.requested, e.details?.host_cpus], ["vcpu_count", past, host]);
}

// A 2-core host accepted vcpu_count 64; the result's limits said "cpu 64 vCPUs by cgroup v1".
test("a vcpu_count past the host's CPUs is refused for a run, a VM and a task; nothing is made", { skip: tooBig, timeout: 60_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  assertRefused(await refusal(pyro.runInVm({ environment: ENV, command: "true", vcpu_count: past })));
  assertRefused(await refusal(pyro.createVm({ environment: ENV, vcpu_count: past })));
  assertRefused(await refusal(pyro.createTask({ environment: ENV, vcpu_count: past })));
  assert.deepEqual((await pyro.listVms()).vms, []);
  assert.deepEqual((await pyro.listTasks()).tasks, []);
  assert.deepEqual(recordsIn(stateDir), [], "no record left behind");
});

test("a vcpu_count of the host's CPUs still runs, and its limits say so", { timeout: 60_000 }, async (t) => {
  const { pyro } = testPyro(t, { driver: "namespace" });
  const vcpu_count = Math.min(host, LIMITS.vcpu_count.max);
  const r = await pyro.runInVm({ environment: ENV, command: "true", vcpu_count });
  assert.equal(r.exit_code, 0, r.stderr);
  if (r.limits?.vcpu_count !== null) assert.equal(r.limits?.vcpu_count, vcpu_count);
});
