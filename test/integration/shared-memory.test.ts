/**
 * The memory cap on the group that holds every sandbox's (docs/security.md,
 * "All sandboxes together"; src/drivers/cgroups.ts, sharedMemoryMax): two
 * sandboxes, each well under its own limit, that together pass the shared cap
 * are stopped by the kernel inside pyro's group, and the one killed says so
 * (oom_killed); nothing outside the group is touched.
 *
 * The cap is made small for this test only (PYRO_TEST_SHARED_MEM_MIB, which
 * the runtime reads), and the CLI runs in a memory group of the test's own
 * making, so the `pyro-mcp` group it caps is this test's, not the host's:
 * a cap is never raised once set, and the host's must not keep a test's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { cgroupLayout, sharedMemoryMax } from "../../src/drivers/cgroups.js";
import { cleanupState } from "../helpers/sandbox.js";
import { ROOT } from "../helpers/cli.js";

const CAP_MIB = 240;
const OWN_MIB = 256;
/** Each sandbox's allocation: dd's one buffer of this size, filled and held until the pipe is read. */
const HOLD_MIB = 150;

const layout = cgroupLayout();
const skip = layout.flavor !== "v1" ? `needs a writable cgroup v1 memory controller (here: ${layout.flavor}${layout.reason ? `, ${layout.reason}` : ""}); the v2 path is the same code with memory.max` : false;

/** A memory group of the test's own under the test process's; `remove` (once its processes are gone) removes it and the pyro-mcp group pyro made in it. */
function testGroup(name: string): { group: string; remove: () => Promise<void> } {
  const group = join(layout.parents.memory!, `pyro-test-${name}-${process.pid}`);
  mkdirSync(group);
  const remove = async () => {
    for (let i = 0; i < 100; i++) {
      try {
        if (existsSync(join(group, "pyro-mcp"))) rmdirSync(join(group, "pyro-mcp"));
        rmdirSync(group);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  return { group, remove };
}

function run(args: string[], env: NodeJS.ProcessEnv, group: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  // The CLI moves itself into the test's group before it execs pyro: its sandboxes' groups are made under it.
  const child = spawn("sh", ["-c", 'echo 0 > "$0/cgroup.procs" && exec "$@"', group, process.execPath, join(ROOT, "dist/pyro.cjs"), ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

test(`two sandboxes of ${OWN_MIB} MiB each, ${HOLD_MIB} MiB used each, under a shared cap of ${CAP_MIB} MiB: the kernel kills one inside pyro's group and it reports oom_killed`, { skip, timeout: 120_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-sharedmem-"));
  const { group, remove } = testGroup("sharedmem");
  // A process of the host's, in the test's group but outside pyro's: it must outlive whatever the kernel does there.
  const sentinel = spawn("sh", ["-c", 'echo 0 > "$0/cgroup.procs" && exec sleep 120', group], { stdio: "ignore" });
  t.after(async () => {
    sentinel.kill("SIGKILL");
    await new Promise((r) => (sentinel.exitCode === null && sentinel.signalCode === null ? sentinel.once("exit", r) : r(null)));
    await cleanupState(new Pyro({ stateDir }), stateDir).catch(() => undefined);
    await remove();
  });
  const env = { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0", PYRO_TEST_SHARED_MEM_MIB: String(CAP_MIB) };
  // dd fills one buffer of HOLD_MIB and holds it, blocked on the pipe, until the reader wakes; pipefail: a killed dd fails the command.
  const hold = (sleep: number) => `set -o pipefail; dd if=/dev/zero bs=${HOLD_MIB}M count=1 2>/dev/null | { sleep ${sleep}; cat >/dev/null; }`;
  const args = (sleep: number) => ["run", "--mem-mib", String(OWN_MIB), "--json", "busybox", "--", "sh", "-c", hold(sleep)];

  // Each alone fits in its own limit and under the cap.
  const alone = JSON.parse((await run(args(1), env, group)).stdout);
  assert.equal(alone.exit_code, 0, JSON.stringify(alone));
  assert.equal(alone.oom_killed, false);
  const cap = Number(readFileSync(join(group, "pyro-mcp", "memory.limit_in_bytes"), "utf8"));
  assert.equal(cap, CAP_MIB * 1024 * 1024, "pyro capped its group at the shared cap");

  // Together they pass it: the second starts once the first holds its memory.
  const first = run(args(8), env, group);
  await new Promise((r) => setTimeout(r, 3_000));
  const second = run(args(2), env, group);
  const results = (await Promise.all([first, second])).map((r) => {
    assert.ok(r.stdout.trim().startsWith("{"), `pyro run printed its result: ${r.stderr}`);
    return JSON.parse(r.stdout);
  });
  t.diagnostic(`results: ${results.map((r) => `exit ${r.exit_code}, oom_killed ${r.oom_killed}`).join("; ")}`);
  const killed = results.filter((r) => r.oom_killed);
  assert.equal(killed.length, 1, `exactly one sandbox was OOM-killed: ${JSON.stringify(results.map((r) => ({ exit: r.exit_code, oom: r.oom_killed, err: r.stderr })))}`);
  assert.notEqual(killed[0].exit_code, 0, "the killed one's command failed (its dd was killed)");
  const survivor = results.find((r) => !r.oom_killed);
  assert.equal(survivor.exit_code, 0, "the other one ran to its end");
  const peak = Number(readFileSync(join(group, "pyro-mcp", "memory.max_usage_in_bytes"), "utf8"));
  assert.ok(peak <= cap, `pyro's group never held more than its cap (${peak} > ${cap})`);
  assert.equal(sentinel.exitCode, null, "the host's process outside pyro's group is alive");
  assert.equal(sentinel.signalCode, null);
});

test("the shared cap is the host's RAM less max(1 GiB, an eighth), memory and memory+swap; a lower limit set before is kept", { skip, timeout: 60_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-sharedmem-"));
  const { group, remove } = testGroup("sharedcap");
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir }), stateDir).catch(() => undefined);
    await remove();
  });
  const total = Number(/^MemTotal:\s+(\d+) kB$/m.exec(readFileSync("/proc/meminfo", "utf8"))![1]) * 1024;
  const MIB = 2 ** 20;
  const expected = Math.floor(Math.max(2 ** 30, total - Math.max(2 ** 30, total / 8)) / MIB) * MIB;
  assert.equal(sharedMemoryMax(), expected);
  const env = { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" };
  const r = await run(["run", "busybox", "--", "true"], env, group);
  assert.equal(r.code, 0, r.stderr);
  const base = join(group, "pyro-mcp");
  const read = (file: string) => Number(readFileSync(join(base, file), "utf8"));
  assert.equal(read("memory.limit_in_bytes"), expected, `${base} is capped at MemTotal less the reserve`);
  if (existsSync(join(base, "memory.memsw.limit_in_bytes"))) assert.equal(read("memory.memsw.limit_in_bytes"), expected, "and so is memory+swap: swapping does not pass it");

  // Someone (the host's admin, a delegating manager) set it lower: pyro keeps that.
  const lower = 2 ** 30 + 4096 * 7;
  writeFileSync(join(base, "memory.limit_in_bytes"), String(lower));
  const again = await run(["run", "busybox", "--", "true"], env, group);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(read("memory.limit_in_bytes"), lower, "a lower limit is never raised");
});
