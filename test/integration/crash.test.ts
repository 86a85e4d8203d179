import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { Pyro } from "../../src/index.js";
import { cleanupState } from "../helpers/sandbox.js";
import { agentsOf, cgroupParents, killPid, pausedPid, reapAndCheck, spawnPyro } from "../helpers/crash.js";

/**
 * kill -9 of a pyro process at the points where it used to leave something
 * broken (each stopped there by PYRO_TEST_PAUSE_AT, src/util/testhook.ts),
 * then a reap: nothing is left but whole tasks, and they work.
 */

const ENV = "busybox";

function state(t: TestContext): { stateDir: string; env: NodeJS.ProcessEnv } {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-crash-"));
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir }), stateDir).catch(() => undefined);
  });
  return { stateDir, env: { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" } };
}

/** Runs pyro ARGS until it pauses at `point`, kills it there, and returns what it said. */
async function killAt(args: string[], env: NodeJS.ProcessEnv, point: string): Promise<void> {
  const s = spawnPyro(args, { ...env, PYRO_TEST_PAUSE_AT: point });
  const pid = await pausedPid(s);
  assert.ok(pid, `pyro ${args.join(" ")} ended before ${point}: ${s.stderr()}`);
  killPid(pid);
  await s.exited;
}

async function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const s = spawnPyro(args, env);
  const r = await s.exited;
  return { code: r.code, stdout: s.stdout(), stderr: s.stderr() };
}

for (const point of ["task-create:record", "boot:spawned", "boot:info", "boot:held", "boot:ready", "task-create:booted"]) {
  test(`a task create killed at ${point} leaves no task and nothing else, once reaped`, async (t) => {
    const { stateDir, env } = state(t);
    await killAt(["task", "create", ENV, "--id-only"], env, point);
    const { problems, tasks } = await reapAndCheck(stateDir);
    assert.deepEqual(problems, []);
    assert.deepEqual(tasks, [], "the killed create's task is gone: its caller never got the id");
    const listed = await run(["task", "list", "--json"], env);
    assert.deepEqual(JSON.parse(listed.stdout).tasks, []);
  });
}

test("a half-made task is invisible while its creator lives: not listed, not usable by id", async (t) => {
  const { stateDir, env } = state(t);
  const s = spawnPyro(["task", "create", ENV, "--id-only"], { ...env, PYRO_TEST_PAUSE_AT: "task-create:booted" });
  const pid = await pausedPid(s);
  assert.ok(pid);
  try {
    const id = readdirSync(join(stateDir, "tasks")).find((n) => n.startsWith("task_"));
    assert.ok(id, "the record exists while the create runs");
    const pyro = new Pyro({ stateDir });
    assert.deepEqual((await pyro.listTasks()).tasks, []);
    await assert.rejects(pyro.execTask({ task_id: id, command: "true" }), { code: "unknown_task" });
    // The reaper leaves a live creator's task alone.
    await pyro.reapExpired();
    assert.ok(JSON.parse(readFileSync(join(stateDir, "tasks", id, "record.json"), "utf8")).creating, "still being created");
    assert.equal(agentsOf(id).length, 1, "its sandbox still runs");
  } finally {
    killPid(pid);
    await s.exited;
  }
  assert.deepEqual((await reapAndCheck(stateDir)).problems, []);
});

test("a seeded task create killed after the push leaves no task", async (t) => {
  const { stateDir, env } = state(t);
  const src = mkdtempSync(join(tmpdir(), "pyro-crash-src-"));
  t.after(() => rmSync(src, { recursive: true, force: true }));
  writeFileSync(join(src, "a.txt"), "a\n");
  await killAt(["task", "create", ENV, "--source-path", src, "--id-only"], env, "task-create:seeded");
  const { problems, tasks } = await reapAndCheck(stateDir);
  assert.deepEqual(problems, []);
  assert.deepEqual(tasks, []);
});

for (const point of ["boot:spawned", "boot:info"]) {
  test(`a run killed at ${point} (bwrap spawned, not yet noted or not yet in its groups) leaves no sandbox once reaped`, async (t) => {
    const { stateDir, env } = state(t);
    await killAt(["run", ENV, "--", "true"], env, point);
    assert.deepEqual((await reapAndCheck(stateDir)).problems, []);
  });
}

for (const args of [["run", "--network", ENV, "--", "true"], ["task", "create", "--network", ENV, "--id-only"]]) {
  test(`pyro ${args[0]} --network killed with pasta started but not yet noted leaves no pasta`, async (t) => {
    const { stateDir, env } = state(t);
    await killAt(args, env, "pasta:forked");
    assert.deepEqual((await reapAndCheck(stateDir)).problems, []);
  });
}

for (const point of ["task-delete:marked", "task-delete:released", "task-delete:renamed"]) {
  test(`a task delete killed at ${point} completes on the next reap: no task, no cgroups, no lock`, async (t) => {
    const { stateDir, env } = state(t);
    const created = await run(["task", "create", ENV, "--id-only"], env);
    assert.equal(created.code, 0, created.stderr);
    const id = created.stdout.trim();
    await killAt(["task", "delete", id], env, point);
    const { problems, tasks } = await reapAndCheck(stateDir, [id]);
    assert.deepEqual(problems, []);
    assert.deepEqual(tasks, []);
    assert.deepEqual(agentsOf(id), []);
  });
}

for (const point of ["vm-delete:marked", "vm-delete:released"]) {
  test(`a vm delete killed at ${point} completes on the next reap`, async (t) => {
    const { stateDir, env } = state(t);
    const created = await run(["vm", "create", ENV, "--json"], env);
    assert.equal(created.code, 0, created.stderr);
    const id = JSON.parse(created.stdout).vm_id as string;
    const started = await run(["vm", "start", id], env);
    assert.equal(started.code, 0, started.stderr);
    await killAt(["vm", "delete", id], env, point);
    assert.deepEqual((await reapAndCheck(stateDir, [id])).problems, []);
  });
}

test("`vm reap` releases the cgroups and helpers of a task sandbox that died; the task stays and works", async (t) => {
  const { stateDir, env } = state(t);
  const created = await run(["task", "create", "--network", ENV, "--id-only"], env);
  assert.equal(created.code, 0, created.stderr);
  const id = created.stdout.trim();
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", id, "record.json"), "utf8"));
  process.kill(record.sandbox.process.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 100));
  const reaped = await run(["vm", "reap"], env);
  assert.equal(reaped.code, 0, reaped.stderr);
  for (const parent of cgroupParents()) assert.ok(!readdirSync(parent).includes(id), `cgroup ${parent}/${id} released`);
  const { problems, tasks } = await reapAndCheck(stateDir);
  assert.deepEqual(problems, []);
  assert.deepEqual(tasks, [id]);
  const r = await run(["task", "exec", id, "--", "echo", "alive"], env);
  assert.equal(r.stdout, "alive\n", r.stderr);
});

test("an exec killed after booting the sandbox but before recording it: the next exec kills that one and boots exactly one", async (t) => {
  const { stateDir, env } = state(t);
  const created = await run(["task", "create", ENV, "--id-only"], env);
  const id = created.stdout.trim();
  assert.equal((await run(["task", "exec", id, "--", "sh", "-c", "echo kept > /workspace/f"], env)).code, 0);
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", id, "record.json"), "utf8"));
  process.kill(record.sandbox.process.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 100));
  await killAt(["task", "exec", id, "--", "true"], env, "boot:ready");
  assert.equal(agentsOf(id).length, 1, "the killed exec's sandbox runs, unrecorded");
  // The next exec (no reap in between: it goes straight to the task) boots over the same layer.
  const { Pyro: P } = await import("../../src/index.js");
  const pyro = new P({ stateDir });
  const r = await pyro.execTask({ task_id: id, command: "cat /workspace/f" });
  assert.equal(r.stdout, "kept\n");
  assert.equal(agentsOf(id).length, 1, "one sandbox over the layer, not two");
  const latest = JSON.parse(readFileSync(join(stateDir, "tasks", id, "record.json"), "utf8"));
  assert.deepEqual(agentsOf(id), [latest.sandbox.process.pid]);
  await pyro.deleteTask({ task_id: id });
  assert.deepEqual((await reapAndCheck(stateDir, [id])).problems, []);
});

test("a lock file left by a process killed while holding it is swept by the reaper", async (t) => {
  const { stateDir } = state(t);
  mkdirSync(join(stateDir, "locks"), { recursive: true });
  // A holder that is certainly dead: pid 2^22+1 is above pid_max's default, start time 1.
  writeFileSync(join(stateDir, "locks", "task_0123456789ab.lock"), JSON.stringify({ pid: 4194305, start_time: 1 }));
  assert.deepEqual((await reapAndCheck(stateDir)).problems, []);
});

test("an exec killed after its boot made the groups, before bwrap: `vm reap` frees the groups of the stopped task", async (t) => {
  const { stateDir, env } = state(t);
  const id = (await run(["task", "create", ENV, "--id-only"], env)).stdout.trim();
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", id, "record.json"), "utf8"));
  process.kill(record.sandbox.process.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 100));
  await killAt(["task", "exec", id, "--", "true"], env, "boot:groups");
  const { problems, tasks } = await reapAndCheck(stateDir, [id]);
  assert.deepEqual(problems, []);
  assert.deepEqual(tasks, [id]);
});

test("a task whose agent refuses connections while its init still shows (a kill its killer did not see through) boots anew on the next exec", async (t) => {
  const { stateDir } = state(t);
  const pyro = new Pyro({ stateDir });
  const task = await pyro.createTask({ environment: ENV });
  assert.equal((await pyro.execTask({ task_id: task.task_id, command: "echo one > /workspace/f" })).exit_code, 0);
  const before = agentsOf(task.task_id);
  assert.equal(before.length >= 1, true, "its sandbox runs");
  // What a sandbox tearing down its namespaces looks like from the host: the
  // init is still in /proc, nothing answers on its socket (closing the
  // server also unlinks the path: refused and missing are handled alike).
  const socket = join(stateDir, "tasks", task.task_id, "sandbox", "sock", "agent.sock");
  rmSync(socket);
  const { createServer } = await import("node:net");
  const dead = createServer();
  await new Promise<void>((r) => dead.listen(socket, () => r()));
  await new Promise<void>((r) => dead.close(() => r()));
  const r = await pyro.execTask({ task_id: task.task_id, command: "cat /workspace/f" });
  assert.equal(r.exit_code, 0, r.stderr);
  assert.equal(r.stdout, "one\n", "the same workspace, in a new sandbox");
  assert.ok(before.every((pid) => !agentsOf(task.task_id).includes(pid)), "the old sandbox was ended");
  await pyro.deleteTask({ task_id: task.task_id });
  assert.deepEqual((await reapAndCheck(stateDir)).problems, []);
  await pyro.close();
});

test("a started VM whose agent no longer answers is a crashed one: exec says so, and nothing of its sandbox is left", async (t) => {
  const { stateDir } = state(t);
  const pyro = new Pyro({ stateDir });
  const vm = await pyro.createVm({ environment: ENV });
  await pyro.startVm({ vm_id: vm.vm_id });
  const before = agentsOf(vm.vm_id);
  assert.ok(before.length >= 1, "its sandbox runs");
  rmSync(join(stateDir, "vms", vm.vm_id, "sandbox", "sock", "agent.sock"));
  // vm_exec deletes the VM after its command in every case.
  await assert.rejects(pyro.execVm({ vm_id: vm.vm_id, command: "true" }), (e: { code?: string }) => e.code === "invalid_state");
  assert.ok(before.every((pid) => !agentsOf(vm.vm_id).includes(pid)), "the old sandbox was ended");
  assert.deepEqual((await reapAndCheck(stateDir)).problems, []);
  await pyro.close();
});
