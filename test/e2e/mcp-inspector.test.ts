import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { BUILT_CLI, ROOT, mcpFixture } from "../helpers/mcp.js";

/**
 * A second, independent MCP client: the official inspector in CLI mode
 * (`npx @modelcontextprotocol/inspector --cli <server command> --method ...`)
 * spawning the built `pyro mcp serve` over stdio.
 */
function inspector(args: string[], env: NodeJS.ProcessEnv, cwd: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("npx", ["--no-install", "@modelcontextprotocol/inspector", "--cli", process.execPath, BUILT_CLI, "mcp", "serve", "--allow-source-root", cwd, ...args], {
    cwd: ROOT,
    env,
    encoding: "utf8",
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("the MCP inspector lists pyro's tools and calls vm_run", async (t) => {
  const fx = mcpFixture(t);
  const list = inspector(["--method", "tools/list"], fx.env, fx.root);
  assert.equal(list.status, 0, list.stderr);
  const tools = JSON.parse(list.stdout).tools as Array<{ name: string; annotations: Record<string, boolean>; outputSchema?: object }>;
  assert.deepEqual(tools.map((x) => x.name), ["vm_run", "task_create", "task_sync_push", "task_exec", "task_status", "task_logs", "task_list", "task_delete"]);
  assert.ok(tools.every((x) => x.outputSchema && typeof x.annotations.readOnlyHint === "boolean"));

  const call = inspector(
    ["--profile", "vm-run", "--method", "tools/call", "--tool-name", "vm_run", "--tool-arg", "environment=busybox", "--tool-arg", "command=echo from-inspector; uname -n", "--tool-arg", "timeout_seconds=10"],
    fx.env,
    fx.root,
  );
  assert.equal(call.status, 0, call.stderr);
  const result = JSON.parse(call.stdout);
  assert.equal(result.isError, undefined);
  assert.equal(result.structuredContent.exit_code, 0);
  assert.match(result.structuredContent.stdout, /^from-inspector\nvm-[0-9a-f]+\n$/);
  assert.equal(result.structuredContent.isolation.driver, "namespace");
  assert.match(result.content[0].text, /^exit 0 in \d+ ms \(namespace sandbox/);

  const bad = inspector(["--method", "tools/call", "--tool-name", "task_status", "--tool-arg", "task_id=task_0123456789ab"], fx.env, fx.root);
  assert.equal(bad.status, 0, bad.stderr);
  const err = JSON.parse(bad.stdout);
  assert.equal(err.isError, true);
  assert.match(err.content[0].text, /unknown_task/);
  assert.deepEqual(readdirSync(join(fx.stateDir)).filter((d) => d === "vms" && readdirSync(join(fx.stateDir, d)).length), []);
});
