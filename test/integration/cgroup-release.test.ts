/**
 * A sandbox whose processes do not exit at once when killed (blocked in the
 * kernel: a hung mount, a device; here frozen by the cgroup v1 freezer, which
 * holds a SIGKILL until the thaw, as state D does) keeps its cgroups busy.
 * The delete used to give up on them silently after half a second, remove
 * the notes that named them and the task's directory: once the processes
 * ended, their empty groups stayed under pyro-mcp with nothing to name them.
 * Now the delete says the groups are busy and keeps the task (marked
 * deleting) for the reaper, which removes the groups once the processes
 * are gone. Real bubblewrap, real cgroups; root with cgroup v1 only.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PyroError } from "../../src/index.js";
import { cgroupsOf, testPyro } from "../helpers/sandbox.js";

const FREEZER = "/sys/fs/cgroup/freezer";
const skip = process.getuid?.() !== 0 ? "needs root (the freezer cgroup)" : !existsSync(join(FREEZER, "cgroup.procs")) ? "no cgroup v1 freezer here" : false;

test("a task whose killed processes hold its cgroups: the delete says busy, and the reaper removes the groups once they exit", { skip, timeout: 180_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task = await pyro.createTask({ environment: "busybox" });
  const id = task.task_id;
  const groups = cgroupsOf(id);
  if (!groups.length) return t.skip("this host gave the sandbox no cgroups of its own");
  const pidsGroup = groups.find((g) => g.includes("/pids/"))!;
  const members = readFileSync(join(pidsGroup, "cgroup.procs"), "utf8").split("\n").filter(Boolean);
  assert.ok(members.length >= 1, `the sandbox's init is in ${pidsGroup}`);

  const freezer = join(FREEZER, `pyro-test-${id}`);
  mkdirSync(freezer);
  const thaw = () => {
    try {
      writeFileSync(join(freezer, "freezer.state"), "THAWED");
    } catch {
      /* gone */
    }
  };
  try {
    for (const pid of members) writeFileSync(join(freezer, "cgroup.procs"), pid);
    writeFileSync(join(freezer, "freezer.state"), "FROZEN");
    let error: unknown = null;
    try {
      await pyro.deleteTask({ task_id: id });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof PyroError, `the delete of a task whose processes cannot exit fails (got ${String(error)})`);
    assert.equal(error.code, "busy");
    assert.match(error.message, /cgroups are still in use/);
    assert.match(error.message, new RegExp(id));
    assert.ok(cgroupsOf(id).length > 0, "the groups are still there (their processes are)");
    assert.ok(existsSync(join(stateDir, "tasks", id, "record.json")), "the task's record stays for the reaper");
    assert.deepEqual((await pyro.listTasks()).tasks.map((x) => x.task_id), [], "and is not listed (its delete started)");
  } finally {
    thaw();
  }
  // The SIGKILLs land at the thaw; the next reap finishes the delete, groups included.
  const reaped = await pyro.reapExpired();
  assert.ok(reaped.reaped.some((r) => r.id === id), `the reap finished the delete (${JSON.stringify(reaped.reaped)})`);
  assert.deepEqual(cgroupsOf(id), [], "no group of the task is left");
  assert.equal(existsSync(join(stateDir, "tasks", id)), false);
  rmdirSync(freezer);
});
