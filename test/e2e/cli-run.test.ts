import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCliSync as runCli, spawnCliPiped as spawnCli } from "../helpers/cli.js";
import { leftovers, waitFor } from "../helpers/sandbox.js";

function stateEnv(t: import("node:test").TestContext): { env: NodeJS.ProcessEnv; stateDir: string } {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-cli-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  return { stateDir, env: { PYRO_STATE_DIR: stateDir } };
}

test("pyro run streams output, says which isolation ran it, and exits with the guest's code", async (t) => {
  const { env } = stateEnv(t);
  const r = runCli(["run", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 7"], { env });
  assert.equal(r.status, 7, r.stderr);
  assert.equal(r.stdout, "out\n");
  assert.match(r.stderr, /^err\n/);
  assert.match(r.stderr, /\[pyro\] exit 7 .*isolation: namespace sandbox/);
});

test("pyro run passes stdin through and runs one word through the shell", async (t) => {
  const { env } = stateEnv(t);
  const r = runCli(["run", "busybox", "-q", "--", "tr a-z A-Z | rev"], { env, input: "hello\n" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "OLLEH\n");
  assert.equal(r.stderr, "");
});

test("pyro run --json prints the exec result; timeouts exit 124", async (t) => {
  const { env } = stateEnv(t);
  const r = runCli(["run", "busybox", "--json", "--timeout-seconds", "1", "--", "sleep", "30"], { env });
  assert.equal(r.status, 124);
  const result = JSON.parse(r.stdout);
  assert.equal(result.timed_out, true);
  assert.equal(result.exit_code, 124);
  assert.equal(result.isolation.driver, "namespace");
});

test("pyro's own failures exit 2 (usage) or 125 (runtime) with one clear line", async (t) => {
  const { env } = stateEnv(t);
  const noCmd = runCli(["run", "busybox"], { env });
  assert.equal(noCmd.status, 2);
  assert.match(noCmd.stderr, /No command given/);
  assert.match(noCmd.stderr, /hint: Put the command after --/);
  const badEnv = runCli(["run", "nope:1", "--", "true"], { env });
  assert.equal(badEnv.status, 2);
  assert.match(badEnv.stderr, /nope:1/);
  const badDriver = runCli(["run", "busybox", "--driver", "firecracker", "--", "true"], { env });
  assert.equal(badDriver.status, 125);
  assert.match(badDriver.stderr, /firecracker/);
  const json = runCli(["vm", "status", "vm_000000000000", "--json"], { env });
  assert.equal(json.status, 2);
  assert.equal(JSON.parse(json.stdout).error.code, "unknown_vm");
});

test("Ctrl-C kills the sandbox, cleans up and exits 130", async (t) => {
  const { env, stateDir } = stateEnv(t);
  const child = spawnCli(["run", "busybox", "--", "sleep", "60"], env);
  await waitFor(() => leftovers(stateDir).processes.length > 0, 15_000, "the sandbox to start");
  child.kill("SIGINT");
  const code = await new Promise<number | null>((r) => child.on("exit", r));
  assert.equal(code, 130);
  assert.deepEqual(leftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

test("kill -9 of the CLI mid-run: the sandbox dies with it and the next pyro command leaves nothing behind", async (t) => {
  const { env, stateDir } = stateEnv(t);
  // Mid-run: once the command runs (it printed), not mid-start. A start cut short by kill -9 before bwrap
  // armed --die-with-parent is the reaper's to clean (test/fault/cli.test.ts kills at every step of a start).
  const child = spawnCli(["run", "busybox", "--", "sh", "-c", "echo running; exec sleep 60"], env);
  await new Promise<void>((resolve, reject) => {
    let seen = "";
    child.stdout!.on("data", (d: Buffer) => (seen += d.toString()).includes("running") && resolve());
    setTimeout(() => reject(new Error(`the command did not start in 15 s (stdout: ${JSON.stringify(seen)})`)), 15_000).unref();
  });
  const ids = readdirSync(join(stateDir, "vms"));
  child.kill("SIGKILL");
  await new Promise((r) => child.on("exit", r));
  await waitFor(() => leftovers(stateDir).processes.length === 0, 5_000, "the sandbox to die with its parent");
  const reap = runCli(["vm", "reap", "--json"], { env });
  assert.equal(reap.status, 0, reap.stderr);
  assert.deepEqual(JSON.parse(reap.stdout).reaped.map((r: { id: string }) => r.id), ids);
  assert.deepEqual(leftovers(stateDir, ids), { processes: [], dirs: [], cgroups: [] });
});

test("a reader that goes away (pyro run ... | head) stops the run and removes its sandbox", async (t) => {
  const { env, stateDir } = stateEnv(t);
  const child = spawnCli(["run", "busybox", "--", "sh", "-c", "while :; do echo line; done"], env);
  await new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
  child.stdout!.destroy();
  const code = await new Promise<number | null>((r) => child.on("exit", r));
  assert.equal(code, 143);
  assert.deepEqual(leftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});
