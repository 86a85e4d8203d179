import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import type { ChildProcess } from "node:child_process";
import { cliArgs, exited, mcpFixture, ROOT } from "../helpers/mcp.js";
import { processesMentioning } from "../helpers/sandbox.js";
import { spawn } from "node:child_process";

/** `pyro demo`, run to the end, interrupted with Ctrl-C, and cut off by a reader that went away. */

function startDemo(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; stdout: () => string; stderr: () => string } {
  const child = spawn(process.execPath, cliArgs(["demo", ...args]), { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d));
  child.stderr!.on("data", (d: Buffer) => (stderr += d));
  return { child, stdout: () => stdout, stderr: () => stderr };
}

/** No task, VM or sandbox process left in the state directory, and the demo's host directory removed. */
function assertCleanedUp(stateDir: string, stdout: string): void {
  for (const kind of ["vms", "tasks"]) {
    const entries = existsSync(`${stateDir}/${kind}`) ? readdirSync(`${stateDir}/${kind}`) : [];
    assert.deepEqual(entries, [], `${kind} left`);
  }
  assert.deepEqual(processesMentioning(stateDir), []);
  const workdir = /(\/\S*pyro-demo-[^/\s]+)\/app/.exec(stdout)?.[1];
  if (workdir) assert.ok(!existsSync(workdir), `${workdir} removed`);
}

test("pyro demo runs to completion on busybox: a one-shot run with its isolation, then the task loop", async (t) => {
  const fx = mcpFixture(t);
  const demo = startDemo([], fx.env);
  const { code } = await exited(demo.child);
  const out = demo.stdout();
  assert.equal(code, 0, demo.stderr());
  const steps = [
    /^pyro demo: disposable sandboxes for AI agents, on busybox\n/,
    /\$ pyro run busybox -- 'echo "hello from \$\(hostname\), uid \$\(id -u\), shell pid \$\$"; echo "\/:" \$\(ls \/\)'\nhello from vm-[0-9a-f]+, uid 0, shell pid \d+\n\/: bin .*\n\[pyro\] exit 0 in \d+ ms; isolation: namespace sandbox \(bubblewrap/,
    /\$ pyro task create busybox --source-path \S+\/app --id-only\n(task_[0-9a-f]+)\n\[pyro\] seeded \/workspace with 2 files/,
    /\$ pyro task exec task_[0-9a-f]+ -- 'sh greet\.sh \| tee -a greetings\.log'\nhello, version 1\n/,
    /\$ echo 'echo "hello, version 2"' > \S+\/app\/greet\.sh\n\$ pyro task sync push task_[0-9a-f]+ \S+\/app\npushed 2 entries \(\d+ B\) to \/workspace: 0 added, 2 replaced, 0 deleted/,
    /\nhello, version 2\n---\nhello, version 1\nhello, version 2\n/,
    /\$ pyro task delete (task_[0-9a-f]+)\ndeleted task_[0-9a-f]+\n/,
    /Done in \d+\.\d s\. Next:\n  pyro mcp serve/,
  ];
  let at = 0;
  for (const step of steps) {
    const m = step.exec(out.slice(at));
    assert.ok(m, `step ${step} after:\n${out.slice(at)}`);
    at += m.index + m[0].length;
  }
  assert.equal(out.includes("\x1b["), false, "no colors when stdout is not a terminal");
  assertCleanedUp(fx.stateDir, out);
});

test("pyro demo: Ctrl-C stops it and removes the task and the host directory", async (t) => {
  const fx = mcpFixture(t);
  // --pace leaves time to interrupt between steps, as a person reading along would.
  const demo = startDemo(["--pace", "400"], fx.env);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no task created; stdout:\n${demo.stdout()}`)), 20_000);
    demo.child.stdout!.on("data", () => {
      if (/\ntask_[0-9a-f]+\n/.test(demo.stdout())) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  assert.ok(readdirSync(`${fx.stateDir}/tasks`).length === 1, "the task exists while the demo runs");
  demo.child.kill("SIGINT");
  const { code } = await exited(demo.child);
  assert.equal(code, 130, demo.stderr());
  assert.match(demo.stderr(), /pyro demo: interrupted; cleaning up/);
  assert.ok(!demo.stdout().includes("Done in"));
  assertCleanedUp(fx.stateDir, demo.stdout());
});

test("pyro demo | head: a reader that goes away ends the demo, which cleans up", async (t) => {
  const fx = mcpFixture(t);
  const demo = startDemo([], fx.env);
  demo.child.stdout!.once("data", () => demo.child.stdout!.destroy());
  const { code } = await exited(demo.child);
  assert.equal(code, 141, demo.stderr());
  assert.equal(demo.stderr(), "");
  assertCleanedUp(fx.stateDir, demo.stdout());
});
