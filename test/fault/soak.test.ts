/**
 * The soak: 500 one-shot runs (runInVm) while 20 tasks take 25 execs each,
 * all at once on one Pyro, as a busy MCP server would. What must stay flat:
 * this process's open fds, host processes of the state directory, cgroups,
 * and the state directory's size once everything is deleted. The latencies
 * are printed (docs/reliability.md quotes them).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { Pyro } from "../../src/index.js";
import { removalsDone } from "../../src/runtime/store.js";
import { treeUsage } from "../../src/util/fsutil.js";
import { cgroupLayout } from "../../src/drivers/cgroups.js";
import { cgroupParents } from "../helpers/crash.js";
import { processesMentioning, tempStateDir } from "../helpers/sandbox.js";

const RUNS = Number(process.env.PYRO_SOAK_RUNS ?? 500);
const TASKS = Number(process.env.PYRO_SOAK_TASKS ?? 20);
const EXECS = Number(process.env.PYRO_SOAK_EXECS ?? 25);
/** One-shot runs in flight at once (the tasks' execs run beside them). */
const RUN_CONCURRENCY = 4;
const haveBwrap = spawnSync("bwrap", ["--version"]).status === 0;

const openFds = () => readdirSync("/proc/self/fd").length;
/** Sandboxes of this soak that have cgroups (one per controller on v1; other tests may run beside it). */
const ids = new Set<string>();
const cgroups = () => {
  const seen = new Set<string>();
  for (const parent of cgroupParents()) {
    try {
      for (const name of readdirSync(parent)) if (ids.has(name)) seen.add(name);
    } catch {
      /* no such hierarchy */
    }
  }
  return seen.size;
};

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

test(`soak: ${RUNS} runInVm beside ${TASKS} tasks x ${EXECS} execs stays flat`, { skip: !haveBwrap && "bubblewrap is not installed", timeout: 900_000 }, async (t) => {
  // Removed through pyro: a soak that fails midway leaves no running task's cgroups behind.
  const stateDir = tempStateDir(t, "pyro-soak-");
  const pyro = new Pyro({ stateDir });
  await pyro.pullEnvironment({ environment: "busybox" });
  // Warm the module and environment caches so the baseline holds what a running server holds.
  await pyro.runInVm({ environment: "busybox", command: "true" });
  await removalsDone();
  const before = { fds: openFds(), cgroups: cgroups(), processes: processesMentioning(stateDir).length };
  const samples: Array<{ fds: number; cgroups: number }> = [];

  const runLatency: number[] = [];
  const execLatency: number[] = [];
  let failures = 0;
  let next = 0;
  const runner = async () => {
    while (next < RUNS) {
      const i = next++;
      const t0 = performance.now();
      const r = await pyro.runInVm({ environment: "busybox", command: `echo run-${i}` });
      runLatency.push(performance.now() - t0);
      if (r.vm_id) ids.add(r.vm_id);
      if (r.exit_code !== 0 || r.stdout !== `run-${i}\n`) failures++;
      if (i % 50 === 0) samples.push({ fds: openFds(), cgroups: cgroups() });
    }
  };
  const tasker = async (k: number) => {
    const task = await pyro.createTask({ environment: "busybox" });
    ids.add(task.task_id);
    for (let e = 0; e < EXECS; e++) {
      const t0 = performance.now();
      const r = await pyro.execTask({ task_id: task.task_id, command: `echo ${k}-${e} >> /workspace/log; wc -l < /workspace/log` });
      execLatency.push(performance.now() - t0);
      if (r.exit_code !== 0 || Number(r.stdout.trim()) !== e + 1) failures++;
      // Sampled here too, while this task's sandbox is up: a run's id is known only once it is gone.
      if (e % 10 === 0) samples.push({ fds: openFds(), cgroups: cgroups() });
    }
    await pyro.deleteTask({ task_id: task.task_id });
  };
  const t0 = performance.now();
  await Promise.all([...Array.from({ length: RUN_CONCURRENCY }, runner), ...Array.from({ length: TASKS }, (_, k) => tasker(k))]);
  const seconds = (performance.now() - t0) / 1000;
  await pyro.close();
  await removalsDone();
  await pyro.reapExpired();
  await removalsDone();

  const after = { fds: openFds(), cgroups: cgroups(), processes: processesMentioning(stateDir).length, bytes: treeUsage(stateDir).bytes };
  const fmt = (xs: number[]) => `p50 ${percentile(xs, 50).toFixed(0)} ms, p95 ${percentile(xs, 95).toFixed(0)} ms, p99 ${percentile(xs, 99).toFixed(0)} ms, max ${Math.max(...xs).toFixed(0)} ms`;
  console.log(`# soak: ${RUNS} runs and ${TASKS * EXECS} execs in ${seconds.toFixed(1)} s, ${failures} failures`);
  console.log(`# soak: runInVm ${fmt(runLatency)}`);
  console.log(`# soak: execTask ${fmt(execLatency)}`);
  console.log(`# soak: fds ${before.fds} -> max ${Math.max(...samples.map((s) => s.fds))} -> ${after.fds}; cgroups ${before.cgroups} -> max ${Math.max(...samples.map((s) => s.cgroups))} -> ${after.cgroups}; state dir ${after.bytes} bytes after`);

  assert.equal(failures, 0, "every run and exec gave its own output");
  assert.equal(runLatency.length, RUNS);
  assert.equal(execLatency.length, TASKS * EXECS);
  // Flat: what is open while it runs is bounded by what is in flight, and all of it is gone after.
  assert.ok(after.fds <= before.fds + 2, `fds back to where they were (${before.fds} -> ${after.fds})`);
  assert.ok(Math.max(...samples.map((s) => s.fds)) <= before.fds + 20 * (RUN_CONCURRENCY + TASKS), "fds bounded by the work in flight");
  assert.equal(after.cgroups, 0, "no cgroup of the soak's sandboxes left");
  assert.ok(Math.max(...samples.map((s) => s.cgroups)) <= RUN_CONCURRENCY + TASKS + 1, "cgroups bounded by the sandboxes in flight");
  // The count sees a live task's groups where pyro makes groups at all (else the two checks above hold vacuously).
  if (cgroupLayout().flavor !== "none") assert.ok(Math.max(...samples.map((s) => s.cgroups)) >= 1, "the cgroup count saw the tasks' groups while they ran");
  assert.equal(after.processes, 0, "no process of the state directory left");
  assert.deepEqual(readdirSync(join(stateDir, "vms")).filter((n) => !n.startsWith(".")), [], "no VM record left");
  assert.ok(after.bytes < 64 * 1024, `the state directory holds nothing but its skeleton (${after.bytes} bytes)`);
});
