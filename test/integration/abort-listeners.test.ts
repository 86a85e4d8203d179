import { test } from "node:test";
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PyroError } from "../../src/index.js";
import { testPyro } from "../helpers/sandbox.js";

/**
 * A caller may pass one long-lived AbortSignal to many SDK calls (the MCP
 * server's calls each get their own, but an embedder's may not). Every abort
 * listener the runtime, the driver and the agent client add to it must be
 * gone when the call ends, whichever way it ends, or they pile up for the
 * signal's lifetime.
 */

const ENV = "busybox";

test("SDK calls sharing one long-lived signal leave no abort listener on it", async (t) => {
  const source = mkdtempSync(join(tmpdir(), "pyro-src-"));
  t.after(() => rmSync(source, { recursive: true, force: true }));
  mkdirSync(join(source, "d"));
  writeFileSync(join(source, "d", "a.txt"), "A\n");
  const { pyro } = testPyro(t, { allowedSourceRoots: [source] });
  const signal = new AbortController().signal;
  const listeners = () => getEventListeners(signal, "abort").length;

  for (let i = 0; i < 12; i++) assert.equal((await pyro.runInVm({ environment: ENV, command: `echo ${i}` }, { signal, onStdout: () => undefined })).exit_code, 0);
  assert.equal(listeners(), 0, "after 12 runs one after another");
  await Promise.all(Array.from({ length: 8 }, () => pyro.runInVm({ environment: ENV, command: "true" }, { signal })));
  assert.equal(listeners(), 0, "after 8 concurrent runs");

  // Runs that end badly: a timeout, a command that cannot start.
  assert.equal((await pyro.runInVm({ environment: ENV, command: "sleep 5", timeout_seconds: 1 }, { signal })).timed_out, true);
  assert.equal((await pyro.runInVm({ environment: ENV, command: ["/nonexistent"] }, { signal })).exit_code, 127);
  assert.equal(listeners(), 0, "after a timeout and a missing command");

  const task = await pyro.createTask({ environment: ENV, source_path: source }, { signal });
  assert.equal(listeners(), 0, "after a seeded task_create");
  for (let i = 0; i < 4; i++) await pyro.execTask({ task_id: task.task_id, command: "cat d/a.txt" }, { signal });
  await pyro.pushTaskSync({ task_id: task.task_id, source_path: source }, { signal });
  await assert.rejects(pyro.pushTaskSync({ task_id: task.task_id, source_path: source, dest: "/etc" }, { signal }), PyroError);
  assert.equal(listeners(), 0, "after task execs and pushes, one refused");

  const vm = await pyro.createVm({ environment: ENV });
  await pyro.execVm({ vm_id: vm.vm_id, command: "true" }, { signal });
  assert.equal(listeners(), 0, "after vm exec");
});
