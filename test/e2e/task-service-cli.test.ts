/** `pyro task service run` (the built CLI): a service in the foreground, published, stopped by Ctrl-C. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { cleanupState, waitFor } from "../helpers/sandbox.js";
import { collect, spawnCli } from "../helpers/cli.js";

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

test("pyro task service run: ready, published on 127.0.0.1, its log streamed, Ctrl-C stops it (130); a probe that never passes exits 125 with the log", async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-svc-cli-"));
  const pyro = new Pyro({ stateDir });
  t.after(() => cleanupState(pyro, stateDir));
  const task = await pyro.createTask({ environment: "busybox" });
  await pyro.execTask({ task_id: task.task_id, command: "echo cli-served > /workspace/index.html" });
  const env = { PYRO_STATE_DIR: stateDir };
  const child = spawnCli(["task", "service", "run", task.task_id, "web", "--ready-http", "8090/index.html", "--publish", "8090", "--", "echo booting; exec busybox httpd -f -v -p 127.0.0.1:8090 -h /workspace"], env);
  const done = collect(child);
  let err = "";
  let out = "";
  child.stderr!.on("data", (c: Buffer) => (err += c));
  child.stdout!.on("data", (c: Buffer) => (out += c));
  const port = Number(await waitFor(() => /published on http:\/\/127\.0\.0\.1:(\d+)/.exec(err)?.[1], 30_000, "the published URL"));
  const res = await fetch(`http://127.0.0.1:${port}/index.html`);
  assert.equal(await res.text(), "cli-served\n");
  await waitFor(() => out.includes("booting"), 10_000, "the log streamed on stdout");
  child.kill("SIGINT");
  const r = await done;
  assert.equal(r.code, 130, r.stderr);
  assert.equal(await accepts(port), false, "closed when the command ended");

  const bad = await collect(spawnCli(["task", "service", "run", task.task_id, "never", "--ready-tcp", "9", "--ready-timeout-seconds", "1", "--", "echo waiting-forever; exec sleep 600"], env));
  assert.equal(bad.code, 125, bad.stderr);
  assert.match(bad.stderr, /was not ready within 1 s[\s\S]*waiting-forever/);
  const usage = await collect(spawnCli(["task", "service", "run", task.task_id, "x", "--ready-tcp", "1", "--ready-file", "/a", "--", "true"], env));
  assert.equal(usage.code, 2, usage.stderr);
  assert.match(usage.stderr, /at most one of --ready-file/);
});
