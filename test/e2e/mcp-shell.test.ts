/**
 * Shells through the official MCP client over stdio, as a model drives them
 * (`pyro mcp serve --profile task-full`, the built CLI, debian:12 with bash).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { waitFor } from "../helpers/sandbox.js";
import { mcpFixture, stdioClient, textOf } from "../helpers/mcp.js";

const ENV = "debian:12";

function structured<T = Record<string, any>>(r: unknown): T {
  const result = r as CallToolResult;
  assert.ok(!result.isError, `tool error: ${textOf(result)}`);
  return result.structuredContent as T;
}

function hostProcessesRunning(argv: string): number {
  let n = 0;
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ").trim() === argv) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

test("a model-like loop: open a shell, cd, set a variable, start a background job, read with wait-for-idle", async (t) => {
  const fx = mcpFixture(t);
  const { client, transport } = await stdioClient(t, fx, ["--profile", "task-full"]);
  const call = (name: string, args: Record<string, unknown>) => client.callTool({ name, arguments: args });

  const task = structured(await call("task_create", { environment: ENV }));
  const sh = structured(await call("task_shell_open", { task_id: task.task_id, rows: 40, cols: 120 }));
  const id = { task_id: task.task_id, shell_id: sh.shell_id };
  const hello = await call("task_shell_read", { ...id, wait_idle_ms: 500 });
  assert.match(structured(hello).output, /root@.*:\/workspace#/, "bash's prompt, plain by default over MCP");
  assert.doesNotMatch(structured(hello).output, /\x1b/, "no escapes in plain output");

  structured(await call("task_shell_write", { ...id, input: "mkdir -p /workspace/app && cd /workspace/app && export STAGE=two\n" }));
  structured(await call("task_shell_write", { ...id, input: "(sleep 1; echo background-$((40+2))) & sleep 4343 &\n" }));
  const r1 = structured(await call("task_shell_read", { ...id, wait_idle_ms: 300 }));
  assert.equal(r1.reason, "idle");

  // A later call: the state is there, and the background job's output arrives by itself.
  structured(await call("task_shell_write", { ...id, input: "echo \"$PWD:$STAGE\"\n" }));
  const r2 = structured(await call("task_shell_read", { ...id, wait_for: "background-42", timeout_ms: 20_000 }));
  assert.equal(r2.reason, "pattern", JSON.stringify(r2));
  assert.match(r2.output, /^\/workspace\/app:two$/m);
  const text = textOf(await call("task_shell_read", { ...id, wait_idle_ms: 200 }));
  assert.match(text, /byte\(s\), output went idle/);

  // task_status shows the shell; task_exec sees what the shell made.
  const st = structured(await call("task_status", { task_id: task.task_id }));
  assert.deepEqual(st.shells.map((s: any) => s.shell_id), [sh.shell_id]);
  assert.match(textOf(await call("task_status", { task_id: task.task_id })), new RegExp(`shells: ${sh.shell_id} running`));
  assert.equal(structured(await call("task_exec", { task_id: task.task_id, command: "test -d /workspace/app && echo yes" })).stdout, "yes\n");

  // Errors a model can act on.
  const unknown = await call("task_shell_write", { ...id, shell_id: "shell_000000000000", input: "ls\n" });
  assert.equal(unknown.isError, true);
  assert.match(textOf(unknown), /^Error \(unknown_shell\): No shell shell_000000000000 is open[\s\S]*Hint: .*task_shell_open/);
  const badSignal = await call("task_shell_signal", { ...id, signal: "SIGSEGV" });
  assert.equal(badSignal.isError, true);
  assert.match(textOf(badSignal), /signal/);

  // Ctrl-C by name reaches the foreground job, through the terminal.
  structured(await call("task_shell_write", { ...id, input: "sleep 120\n" }));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(structured(await call("task_shell_signal", { ...id, signal: "SIGINT" })).via, "terminal");
  structured(await call("task_shell_write", { ...id, input: "echo rc=$?\n" }));
  assert.equal(structured(await call("task_shell_read", { ...id, wait_for: "rc=130", timeout_ms: 10_000 })).reason, "pattern");

  // The shell belongs to the task: a kill -9 of the server that held it leaves it running.
  assert.equal(hostProcessesRunning("sleep 4343"), 1);
  const pid = transport.pid;
  assert.ok(pid, "the server's pid");
  process.kill(pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(hostProcessesRunning("sleep 4343"), 1, "the shell's job outlives the killed server");

  // A new server: the task is intact, and it reads and writes the old shell, state and all.
  const { client: c2 } = await stdioClient(t, fx, ["--profile", "task-full"]);
  const st2 = structured(await c2.callTool({ name: "task_status", arguments: { task_id: task.task_id } }));
  assert.deepEqual(st2.shells.map((s: any) => [s.shell_id, s.state, s.held_here, s.holder_pid]), [[sh.shell_id, "running", false, null]]);
  assert.match(textOf(await c2.callTool({ name: "task_status", arguments: { task_id: task.task_id } })), new RegExp(`shells: ${sh.shell_id} running \\(held by no process\\)`));
  await c2.callTool({ name: "task_shell_write", arguments: { ...id, input: "echo \"again:$PWD:$STAGE\"\n" } });
  const back = structured(await c2.callTool({ name: "task_shell_read", arguments: { ...id, wait_for: "again:/workspace/app:two", timeout_ms: 20_000 } }));
  assert.equal(back.reason, "pattern", JSON.stringify(back));
  structured(await c2.callTool({ name: "task_shell_close", arguments: id }));
  await waitFor(() => hostProcessesRunning("sleep 4343") === 0, 15_000, "the shell's job to end with its close");
  const gone = await c2.callTool({ name: "task_shell_read", arguments: id });
  assert.equal(gone.isError, true);
  assert.match(textOf(gone), /unknown_shell/);
  const sh2 = structured(await c2.callTool({ name: "task_shell_open", arguments: { task_id: task.task_id, cwd: "/workspace/app" } }));
  await c2.callTool({ name: "task_shell_write", arguments: { task_id: task.task_id, shell_id: sh2.shell_id, input: "pwd; echo E$((1))ND\n" } });
  assert.match(structured(await c2.callTool({ name: "task_shell_read", arguments: { task_id: task.task_id, shell_id: sh2.shell_id, wait_for: "E1ND" } })).output, /^\/workspace\/app$/m);
  const closed = structured(await c2.callTool({ name: "task_shell_close", arguments: { task_id: task.task_id, shell_id: sh2.shell_id } }));
  assert.equal(closed.closed, true);
  structured(await c2.callTool({ name: "task_delete", arguments: { task_id: task.task_id } }));
});

test("a model starts a Python HTTP server as a service with an HTTP probe, publishes it and the host fetches it", async (t) => {
  const fx = mcpFixture(t);
  const { client } = await stdioClient(t, fx, ["--profile", "task-full"]);
  const call = (name: string, args: Record<string, unknown>) => client.callTool({ name, arguments: args });
  const task = structured(await call("task_create", { environment: ENV }));
  structured(await call("task_exec", { task_id: task.task_id, command: "mkdir -p site && printf 'from python in the task\\n' > site/hello.txt" }));
  const started = await call("task_service_start", {
    task_id: task.task_id,
    name: "web",
    command: "cd site && exec python3 -m http.server 8000 --bind 127.0.0.1",
    ready: { http: { port: 8000, path: "/hello.txt" } },
    ready_timeout_seconds: 60,
    publish: { port: 8000 },
  });
  const s = structured(started);
  assert.equal(s.state, "running");
  assert.equal(s.published.host, "127.0.0.1");
  assert.match(textOf(started), new RegExp(`published on 127\\.0\\.0\\.1:${s.published.port}`));
  const res = await fetch(`http://127.0.0.1:${s.published.port}/hello.txt`);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "from python in the task\n");
  const logs = structured(await call("task_service_logs", { task_id: task.task_id, name: "web" }));
  assert.ok(logs.lines.some((l: string) => /GET \/hello\.txt HTTP\/1\.1" 200/.test(l)), logs.lines.join("\n"));
  assert.deepEqual(structured(await call("task_service_list", { task_id: task.task_id })).services.map((x: any) => x.name), ["web"]);
  const bad = await call("task_service_start", { task_id: task.task_id, name: "never", command: "sleep 600", ready: { tcp_port: 9 }, ready_timeout_seconds: 1 });
  assert.equal(bad.isError, true);
  assert.match(textOf(bad), /^Error \(invalid_state\): Service never was not ready within 1 s/);
  assert.equal(structured(await call("task_service_stop", { task_id: task.task_id, name: "web" })).state, "stopped");
  await assert.rejects(fetch(`http://127.0.0.1:${s.published.port}/hello.txt`), "closed with the service");
  structured(await call("task_delete", { task_id: task.task_id }));
});
