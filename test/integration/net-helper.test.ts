/**
 * A sandbox's network helper (pasta) ends with its sandbox, with no pyro
 * process alive to end it (docs/reliability.md, "Network helpers"): a task
 * whose init is killed from outside (kill -9, as the OOM killer would) after
 * the CLI call that made it has exited, and a CLI killed right after pasta
 * started (before any note names it), both leave no process naming the
 * sandbox's directory within a bound, no reap run. Before guest/netwatch.c,
 * Debian 12's pasta, handed the namespaces as fds, ran on until a later
 * command's reaper found it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { Pyro } from "../../src/index.js";
import { cleanupState, processesMentioning } from "../helpers/sandbox.js";
import { killPid, pausedPid, spawnPyro } from "../helpers/crash.js";
import { agentBinaryPath } from "../../src/util/agent-binary.js";
import { identityOf } from "../../src/util/proc.js";

const ENV = "busybox";
/** pasta opens /dev/net/tun in the sandbox's namespace: as a user, that needs the device open to users (Debian's udev makes it 0666). */
const skip = ((): string | false => {
  if (process.getuid?.() === 0) return false;
  try {
    accessSync("/dev/net/tun", constants.R_OK | constants.W_OK);
    return false;
  } catch {
    return "/dev/net/tun is not open to this user: pasta cannot make a sandbox's network here";
  }
})();
/** How long a helper may outlive its sandbox: the watcher's poll wakes at once; the rest is this 2-core host's scheduling. */
const BOUND_MS = 2_000;

function state(t: TestContext): { stateDir: string; env: NodeJS.ProcessEnv } {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-nethelper-"));
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir }), stateDir).catch(() => undefined);
  });
  return { stateDir, env: { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" } };
}

/** Live pyro processes (the CLI, a daemon, an MCP server) working on this state directory, found by their environment. */
function pyroProcessesOf(stateDir: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      // Every pyro process is node with the state directory in its environment; the helpers pyro starts get none of it.
      if (readFileSync(`/proc/${name}/environ`, "utf8").split("\0").includes(`PYRO_STATE_DIR=${stateDir}`)) out.push(Number(name));
    } catch {
      /* gone, or not ours to read */
    }
  }
  return out;
}

/** Waits up to BOUND_MS for no process to name `dir`; returns how long that took and what was left. */
async function settled(dir: string): Promise<{ ms: number; left: string[] }> {
  const t0 = Date.now();
  let left = processesMentioning(dir).map((p) => `${p.pid} ${p.cmd}`);
  while (left.length && Date.now() - t0 < BOUND_MS) {
    await new Promise((r) => setTimeout(r, 20));
    left = processesMentioning(dir).map((p) => `${p.pid} ${p.cmd}`);
  }
  return { ms: Date.now() - t0, left };
}

test("a task's pasta ends within 2 s of its sandbox's init killed from outside, with no pyro process alive", { skip }, async (t) => {
  const { stateDir, env } = state(t);
  const created = spawnPyro(["task", "create", "--network", ENV, "--id-only"], env);
  const r = await created.exited;
  assert.equal(r.code, 0, created.stderr());
  const id = created.stdout().trim();
  const dir = join(stateDir, "tasks", id, "sandbox");
  const record = JSON.parse(readFileSync(join(stateDir, "tasks", id, "record.json"), "utf8"));
  const pastaPid = Number(readFileSync(join(dir, "pasta.pid"), "utf8").trim());
  assert.match(readFileSync(`/proc/${pastaPid}/cmdline`, "utf8"), /pasta/, "the task's pasta runs");
  assert.deepEqual(pyroProcessesOf(stateDir), [], "no pyro process is there to see the sandbox die");

  process.kill(record.sandbox.process.pid, "SIGKILL");
  const { ms, left } = await settled(`${dir}/`);
  t.diagnostic(`${left.length} processes named the sandbox directory ${ms} ms after its init was killed`);
  assert.deepEqual(left, [], `within ${BOUND_MS} ms of the init's kill -9, pasta (and its watcher) are gone`);
  assert.deepEqual(pyroProcessesOf(stateDir), [], "and no pyro process ran meanwhile");

  // The task notices its dead sandbox and boots another, with a network, on its next exec.
  const exec = spawnPyro(["task", "exec", id, "--", "sh", "-c", "grep -q eth0: /proc/net/dev && echo eth0"], env);
  const e = await exec.exited;
  assert.equal(e.code, 0, exec.stderr());
  assert.equal(exec.stdout().trim(), "eth0", "the new sandbox has its network");
});

for (const args of [["run", "--network", ENV, "--", "true"], ["task", "create", "--network", ENV, "--id-only"]]) {
  test(`pyro ${args[0]} --network killed right after pasta started leaves no process within 2 s, with no reap`, { skip }, async (t) => {
    const { stateDir, env } = state(t);
    const s = spawnPyro(args, { ...env, PYRO_TEST_PAUSE_AT: "pasta:forked" });
    const pid = await pausedPid(s);
    assert.ok(pid, `pyro ended before pasta:forked: ${s.stderr()}`);
    assert.ok(processesMentioning(stateDir).some((p) => p.cmd.includes("pasta")), "pasta runs while pyro is paused");
    killPid(pid);
    await s.exited;
    const { ms, left } = await settled(stateDir);
    t.diagnostic(`${left.length} processes named the state directory ${ms} ms after pyro was killed`);
    assert.deepEqual(left, [], "the sandbox ended (its agent read EOF on its go pipe) and took pasta with it");
  });
}

test("the watcher refuses a target whose pid is another process's (its start time differs) and runs nothing", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-netwatch-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const other = spawn("sleep", ["60"], { stdio: "ignore" });
  t.after(() => other.kill("SIGKILL"));
  const id = identityOf(other.pid!);
  assert.ok(id);
  const marker = join(dir, "ran");
  const r = spawnSync(agentBinaryPath(), ["netwatch", "--target", `${id.pid}:${id.start_time + 1}`, "--pid-file", join(dir, "pasta.pid"), "--", "touch", marker], { encoding: "utf8" });
  assert.equal(r.status, 125, r.stderr);
  assert.match(r.stderr, /netwatch: the sandbox's init is gone \(its pid is another process's now\)/);
  assert.ok(!existsSync(marker), "the helper was never started");
});
