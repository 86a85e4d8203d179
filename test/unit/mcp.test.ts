import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { Pyro, PyroError } from "../../src/index.js";
import { createServer, type PyroMcpServer } from "../../src/mcp/server.js";
import { PROFILES, TOOL_NAMES, parseProfile } from "../../src/mcp/profiles.js";
import { CallProgress, mcpProgressListener, progressScope, type ProgressUpdate } from "../../src/mcp/progress.js";
import { LineStdioTransport } from "../../src/mcp/stdio.js";
import { isLoopbackHost, parseHttpAddress, serveHttp } from "../../src/mcp/http.js";
import { checkToken, readTokenFile, takeEnvToken } from "../../src/mcp/token.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { execText } from "../../src/mcp/tools.js";

/** A server over an in-memory pair, on a state directory of its own; no sandbox is started by these tests. */
async function connect(t: import("node:test").TestContext, options: { profile?: string; roots?: string[] } = {}): Promise<{ client: Client; server: PyroMcpServer; root: string }> {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-mcp-unit-"));
  const root = join(stateDir, "root");
  mkdirSync(root);
  const server = createServer({ profile: options.profile ?? "full", pyro: new Pyro({ stateDir }), allowedSourceRoots: options.roots ?? [root], reaper: false });
  const [a, b] = InMemoryTransport.createLinkedPair();
  await server.connect(a);
  const client = new Client({ name: "unit", version: "0" });
  await client.connect(b);
  t.after(async () => {
    await client.close();
    await server.shutdown();
    rmSync(stateDir, { recursive: true, force: true });
  });
  return { client, server, root };
}

function text(result: unknown): string {
  const content = (result as { content: Array<{ type: string; text?: string }> }).content;
  return content.map((c) => c.text ?? "").join("\n");
}

test("profiles list the contract's tools", async (t) => {
  assert.deepEqual([...PROFILES["vm-run"]], ["vm_run"]);
  assert.deepEqual([...PROFILES["task-core"]], ["vm_run", "task_create", "task_sync_push", "task_exec", "task_status", "task_logs", "task_list", "task_delete"]);
  assert.deepEqual([...PROFILES["task-full"]], [
    ...PROFILES["task-core"],
    "task_file_list",
    "task_file_read",
    "task_file_write",
    "task_patch_apply",
    "task_diff",
    "task_export",
    "task_shell_open",
    "task_shell_write",
    "task_shell_read",
    "task_shell_signal",
    "task_shell_resize",
    "task_shell_close",
    "task_service_start",
    "task_service_status",
    "task_service_logs",
    "task_service_stop",
    "task_service_list",
  ]);
  assert.equal(PROFILES.full.length, 34);
  assert.equal(parseProfile(undefined), "task-core");
  assert.throws(() => parseProfile("everything"), /Unknown MCP profile "everything"[\s\S]*/);
  for (const profile of Object.keys(PROFILES)) {
    const { client } = await connect(t, { profile });
    const names = (await client.listTools()).tools.map((x) => x.name).sort();
    assert.deepEqual(names, [...PROFILES[profile as keyof typeof PROFILES]].sort(), profile);
  }
});

test("every tool has a title, a model-facing description, strict input and output schemas and explicit annotations", async (t) => {
  const { client, root } = await connect(t);
  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((x) => x.name).sort(), [...TOOL_NAMES].sort());
  for (const tool of tools) {
    assert.ok(tool.title, `${tool.name} title`);
    assert.ok((tool.description ?? "").length > 60, `${tool.name} description`);
    assert.equal(tool.inputSchema.type, "object");
    assert.equal((tool.inputSchema as { additionalProperties?: unknown }).additionalProperties, false, `${tool.name} refuses unknown fields`);
    assert.ok(tool.outputSchema, `${tool.name} output schema`);
    const a = tool.annotations!;
    for (const key of ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"] as const) assert.equal(typeof a[key], "boolean", `${tool.name}.${key}`);
    const props = Object.keys((tool.inputSchema.properties ?? {}) as object);
    assert.ok(!props.includes("driver") && !props.includes("max_output_bytes"), `${tool.name} hides driver and max_output_bytes`);
  }
  const byName = Object.fromEntries(tools.map((x) => [x.name, x]));
  for (const n of ["vm_status", "task_logs", "task_list", "task_status", "vm_network_info", "vm_list_environments"]) assert.equal(byName[n]!.annotations!.readOnlyHint, true, n);
  for (const n of ["vm_delete", "vm_stop", "vm_reap_expired", "task_delete", "task_sync_push"]) assert.equal(byName[n]!.annotations!.destructiveHint, true, n);
  for (const n of ["vm_run", "task_exec", "vm_exec"]) assert.equal(byName[n]!.annotations!.openWorldHint, true, n);
  assert.equal(byName.vm_run!.annotations!.destructiveHint, false);
  // The model is told to start with vm_run, and where source_path is read.
  assert.match(byName.vm_run!.description!, /Use this first/);
  assert.match(byName.vm_run!.description!, /64 KiB/);
  assert.match(byName.task_create!.description!, /only when several commands must share state/);
  // The model is told when a shell beats task_exec, and that reads can wait instead of polling.
  assert.match(byName.task_shell_open!.description!, /instead of task_exec when state must carry/);
  assert.match(byName.task_shell_read!.description!, /wait_for[\s\S]*wait_idle_ms/);
  assert.ok(byName.task_create!.description!.includes(root), "task_create lists the allowed roots");
  assert.ok(byName.task_sync_push!.description!.includes(root), "task_sync_push lists the allowed roots");
  // Bounds come from the operation schemas.
  const timeout = (byName.vm_run!.inputSchema.properties as Record<string, { minimum?: number; maximum?: number }>).timeout_seconds!;
  assert.equal(timeout.minimum, 1);
  assert.equal(timeout.maximum, 86_400);
});

test("wrong calls are tool errors a model can act on, and the server keeps answering", async (t) => {
  const { client, root } = await connect(t);
  const unknownTool = await client.callTool({ name: "vm_launch", arguments: {} });
  // The v1 SDK reports an unknown tool as a tool error (isError) carrying the InvalidParams code.
  assert.equal(unknownTool.isError, true);
  assert.match(text(unknownTool), /-32602.*Tool vm_launch not found/);

  const badArgs = await client.callTool({ name: "vm_run", arguments: { command: "true", timeout_seconds: 0, driver: "namespace" } });
  assert.equal(badArgs.isError, true);
  // In pyro's error format (code, the argument's range, a hint), not the SDK's "-32602 Input validation error".
  assert.match(text(badArgs), /^Error \(invalid_argument\): vm_run: Invalid arguments: /);
  assert.match(text(badArgs), /timeout_seconds must be between 1 and 86400, got 0/);
  assert.match(text(badArgs), /unknown argument "driver"/);
  assert.doesNotMatch(text(badArgs), /-32602|Input validation error/);

  const noTask = await client.callTool({ name: "task_status", arguments: { task_id: "task_000000000000" } });
  assert.equal(noTask.isError, true);
  assert.match(text(noTask), /^Error \(unknown_task\): No task with id task_000000000000\.\nHint: /);

  const badId = await client.callTool({ name: "task_exec", arguments: { task_id: "../../etc", command: "true" } });
  assert.equal(badId.isError, true);
  assert.match(text(badId), /invalid_argument|unknown_task/);

  const outside = await client.callTool({ name: "task_create", arguments: { environment: "busybox", source_path: "/etc" } });
  assert.equal(outside.isError, true);
  assert.match(text(outside), /source_not_allowed.*outside the allowed roots/);
  assert.ok(text(outside).includes(root));
  assert.match(text(outside), /Hint: .*--allow-source-root/);
  assert.equal((await client.callTool({ name: "task_list", arguments: {} })).isError, undefined, "nothing was created");

  const missing = await client.callTool({ name: "task_sync_push", arguments: { task_id: "task_000000000000", source_path: join(root, "nope") } });
  assert.equal(missing.isError, true);
  assert.match(text(missing), /does not exist/);

  const unknownEnv = await client.callTool({ name: "vm_create", arguments: { environment: "nope:1" } });
  assert.equal(unknownEnv.isError, true);
  assert.match(text(unknownEnv), /nope:1/);

  const list = await client.callTool({ name: "task_list", arguments: {} });
  assert.deepEqual(list.structuredContent, { tasks: [] });
  assert.equal(text(list), "no tasks");
});

test("read-only tools answer without a sandbox", async (t) => {
  const { client } = await connect(t);
  const envs = await client.callTool({ name: "vm_list_environments", arguments: {} });
  assert.equal(envs.isError, undefined, text(envs));
  const names = (envs.structuredContent as { environments: Array<{ name: string }> }).environments.map((e) => e.name);
  for (const n of ["debian:12-base", "debian:12", "debian:12-build", "busybox"]) assert.ok(names.includes(n), n);
  const reap = await client.callTool({ name: "vm_reap_expired", arguments: {} });
  assert.deepEqual(reap.structuredContent, { reaped: [] });
});

test("concurrent calls on one server add no listener that piles up: no MaxListenersExceededWarning", async (t) => {
  // Each call used to hang a listener on the server's own shutdown signal for
  // as long as it ran: 11 calls at once made Node warn of an EventTarget leak.
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
  process.on("warning", onWarning);
  t.after(() => void process.off("warning", onWarning));
  const { client, server } = await connect(t);
  for (let round = 0; round < 3; round++) {
    const results = await Promise.all(
      Array.from({ length: 32 }, (_, i) => client.callTool({ name: i % 2 ? "task_list" : "vm_list_environments", arguments: {} }, undefined, { onprogress: () => undefined })),
    );
    for (const r of results) assert.equal(r.isError, undefined, text(r));
  }
  for (let i = 0; i < 20; i++) assert.deepEqual((await client.callTool({ name: "task_list", arguments: {} })).structuredContent, { tasks: [] });
  await new Promise((r) => setImmediate(r)); // process warnings are emitted on a later tick
  assert.deepEqual(warnings.filter((w) => /MaxListeners|memory leak/.test(w)), []);
  assert.equal(server.runningCalls, 0);
});

test("progress: values increase, at most one notification per interval, nothing after close", async () => {
  const sent: Array<ProgressUpdate & { at: number }> = [];
  // A long interval, so that a loaded machine's stalls between the writes below stay inside it.
  const p = new CallProgress((u) => sent.push({ ...u, at: Date.now() }), 600);
  p.phase("environment: building");
  for (let i = 0; i < 50; i++) p.output("stdout", Buffer.from(`line ${i}\n`));
  p.output("stderr", Buffer.from([0xe2, 0x82])); // half a UTF-8 character...
  p.output("stderr", Buffer.from([0xac, 0x0a])); // ...completed by the next chunk
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(sent.length, 1, "the first batch goes out at once");
  assert.match(sent[0]!.message!, /^environment: building\n\[stdout\] line 0\n[\s\S]*line 49\n\[stderr\] €\n$/);
  p.output("stdout", Buffer.from("a"));
  await new Promise((r) => setTimeout(r, 10));
  p.output("stdout", Buffer.from("b"));
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(sent.length, 2);
  assert.equal(sent[1]!.message, "[stdout] ab");
  assert.ok(sent[1]!.progress > sent[0]!.progress);
  assert.ok(sent[1]!.at - sent[0]!.at >= 595, "rate-limited");
  p.output("stdout", Buffer.from("late\n"));
  p.close();
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(sent.length, 2, "nothing after close");
  const off = new CallProgress(null);
  assert.equal(off.enabled, false);
  off.output("stdout", Buffer.from("x"));
});

test("runtime progress (an environment pull) reaches the tool call that caused it, and only that one", async () => {
  const a: ProgressUpdate[] = [];
  const b: ProgressUpdate[] = [];
  const pa = new CallProgress((u) => a.push(u), 10);
  const pb = new CallProgress((u) => b.push(u), 10);
  await Promise.all([
    progressScope.run(pa, async () => {
      await new Promise((r) => setTimeout(r, 5));
      mcpProgressListener({ phase: "download", message: "fetching packages", current: 3, total: 10 });
    }),
    progressScope.run(pb, async () => {
      mcpProgressListener({ phase: "extract", message: "unpacking" });
    }),
  ]);
  mcpProgressListener({ phase: "stray", message: "outside any call" });
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(a.map((u) => u.message), ["download: fetching packages (3/10)"]);
  assert.deepEqual(b.map((u) => u.message), ["extract: unpacking"]);
  pa.close();
  pb.close();
});

test("stdio: malformed lines get JSON-RPC errors and the next message is still served", async () => {
  const stdin = new PassThrough();
  const stdout = new PassThrough();
  const transport = new LineStdioTransport(stdin, stdout);
  const got: unknown[] = [];
  transport.onmessage = (m) => got.push(m);
  await transport.start();
  const lines: string[] = [];
  stdout.on("data", (c: Buffer) => lines.push(...c.toString().split("\n").filter(Boolean)));
  stdin.write("{not json\n");
  stdin.write('{"jsonrpc":"2.0","id":7,"method":5}\n');
  stdin.write('{"jsonrpc":"2.0","id":8,"me');
  stdin.write('thod":"ping"}\r\n\n');
  await new Promise((r) => setImmediate(r));
  const replies = lines.map((l) => JSON.parse(l));
  assert.equal(replies[0].error.code, -32700);
  assert.equal(replies[0].id, null);
  assert.equal(replies[1].error.code, -32600);
  assert.equal(replies[1].id, 7);
  assert.deepEqual(got, [{ jsonrpc: "2.0", id: 8, method: "ping" }]);
  await transport.close();
});

test("http: addresses and loopback detection", () => {
  assert.deepEqual(parseHttpAddress("127.0.0.1:8765"), { host: "127.0.0.1", port: 8765 });
  assert.deepEqual(parseHttpAddress(":0"), { host: "127.0.0.1", port: 0 });
  assert.deepEqual(parseHttpAddress("8080"), { host: "127.0.0.1", port: 8080 });
  assert.deepEqual(parseHttpAddress("[::1]:9"), { host: "::1", port: 9 });
  assert.deepEqual(parseHttpAddress("0.0.0.0:80"), { host: "0.0.0.0", port: 80 });
  assert.throws(() => parseHttpAddress("host:99999"), /HOST:PORT/);
  assert.throws(() => parseHttpAddress("nope"), /HOST:PORT/);
  for (const h of ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "a.localhost"]) assert.equal(isLoopbackHost(h), true, h);
  for (const h of ["0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com", "::"]) assert.equal(isLoopbackHost(h), false, h);
});

test("http token: read from a private file (one trailing newline dropped) or taken out of the environment", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-token-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, content: string, mode: number) => {
    const path = join(dir, name);
    writeFileSync(path, content);
    chmodSync(path, mode);
    return path;
  };
  assert.equal(readTokenFile(file("lf", "token-0123456789abcdef\n", 0o600)), "token-0123456789abcdef");
  assert.equal(readTokenFile(file("crlf", "token-0123456789abcdef\r\n", 0o400)), "token-0123456789abcdef");
  assert.equal(readTokenFile(file("bare", "token-0123456789abcdef", 0o600)), "token-0123456789abcdef");
  // Execute bits alone reveal nothing; read or write for group or others does.
  assert.equal(readTokenFile(file("x", "token-0123456789abcdef\n", 0o711)), "token-0123456789abcdef");
  for (const mode of [0o640, 0o604, 0o620, 0o602, 0o660, 0o666]) {
    const path = file(`m${mode.toString(8)}`, "token-0123456789abcdef\n", mode);
    assert.throws(() => readTokenFile(path), (e: unknown) => e instanceof PyroError && e.code === "invalid_argument" && /group or others/.test(e.message) && e.hint === `Run \`chmod 600 ${path}\`${mode & 0o044 ? ", and replace the token if someone else may have read it" : ""}.`, mode.toString(8));
  }
  // The checks apply to what a symlink points at.
  const open = file("open", "token-0123456789abcdef\n", 0o644);
  symlinkSync(open, join(dir, "link"));
  assert.throws(() => readTokenFile(join(dir, "link")), /mode 0644/);
  // A fifo is refused at once, not waited on.
  const fifo = join(dir, "fifo");
  assert.equal(spawnSync("mkfifo", ["-m", "600", fifo]).status, 0);
  assert.throws(() => readTokenFile(fifo), /is a fifo; it must be a regular file/);
  assert.throws(() => readTokenFile(file("big", "x".repeat(5000), 0o600)), /5000 bytes; a token file holds one line/);
  assert.throws(() => readTokenFile(file("blank", "\n", 0o600)), /is empty/);

  const env: NodeJS.ProcessEnv = { PYRO_MCP_TOKEN: "env-token-0123456789abcdef", OTHER: "kept" };
  assert.equal(takeEnvToken(env), "env-token-0123456789abcdef");
  assert.deepEqual(env, { OTHER: "kept" }, "the token left the environment");
  assert.equal(takeEnvToken(env), undefined);
  const empty: NodeJS.ProcessEnv = { PYRO_MCP_TOKEN: "" };
  assert.equal(takeEnvToken(empty), undefined, "an empty variable is no token");
  assert.deepEqual(empty, {});
  assert.throws(() => checkToken("short", "$PYRO_MCP_TOKEN"), /^PyroError: \$PYRO_MCP_TOKEN is too short/);
  await assert.rejects(serveHttp({ address: { host: "127.0.0.1", port: 0 }, token: "short" }), /too short/);
  await assert.rejects(serveHttp({ address: { host: "0.0.0.0", port: 0 } }), /without an explicit token/);
});

test("http: sessions are separate servers, idle ones are closed, close() ends everything", async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-mcp-http-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  const token = "unit-test-token-0123456789";
  const serving = await serveHttp({ address: { host: "127.0.0.1", port: 0 }, token, pyro: new Pyro({ stateDir }), allowedSourceRoots: [stateDir], sessionIdleMs: 300 });
  t.after(() => serving.close());
  assert.equal(serving.generatedToken, false);
  const connectOne = async () => {
    const client = new Client({ name: "unit-http", version: "0" });
    await client.connect(new StreamableHTTPClientTransport(new URL(serving.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    return client;
  };
  const a = await connectOne();
  const b = await connectOne();
  assert.equal(serving.sessions(), 2);
  assert.deepEqual((await a.callTool({ name: "task_list", arguments: {} })).structuredContent, { tasks: [] });
  await new Promise((r) => setTimeout(r, 1_000));
  assert.equal(serving.sessions(), 0, "idle sessions were closed");
  await assert.rejects(b.callTool({ name: "task_list", arguments: {} }), /Session not found|404/);
  await a.close().catch(() => undefined);
  await b.close().catch(() => undefined);
  await serving.close();
  assert.equal(serving.server.listening, false);
});

test("exec summaries say exit code, time, isolation, and carry the output", () => {
  const base = {
    exit_code: 0,
    signal: null,
    stdout: "hi\n",
    stderr: "",
    stdout_truncated: false,
    stderr_truncated: false,
    timed_out: false,
    oom_killed: false,
    exec_error: null as string | null,
    duration_ms: 120,
    isolation: { driver: "namespace" as const, kind: "namespace" as const, accel: null },
    limits: null,
  };
  assert.equal(execText(base), "exit 0 in 120 ms (namespace sandbox)\n--- stdout ---\nhi\n");
  const t = execText({ ...base, exit_code: 124, timed_out: true, signal: "SIGKILL", stdout: "", stderr: "", task_id: "task_x", sequence: 3, stdout_truncated: true });
  assert.match(t, /^exit 124 in 120 ms \(namespace sandbox, task_x #3\)\ntimed out: the whole process tree was killed; stdout truncated/);
  assert.match(t, /\(no output\)$/);
  // A command that never started: pyro's report, marked as pyro's, before any output.
  const failed = execText({ ...base, exit_code: 127, stdout: "", exec_error: "cannot execute 'x': No such file or directory" });
  assert.equal(failed, "exit 127 in 120 ms (namespace sandbox)\nthe command did not start: cannot execute 'x': No such file or directory (reported by pyro, not the command)\n(no output)");
});
