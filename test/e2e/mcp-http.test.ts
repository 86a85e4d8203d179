import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { request } from "node:http";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { waitFor } from "../helpers/sandbox.js";
import { cliArgs, exited, httpServer, mcpFixture, sandboxProcesses, textOf } from "../helpers/mcp.js";

/** The MCP server over Streamable HTTP (`pyro mcp serve --http`), driven by the official client SDK. */

const ENV = "busybox";

function structured<T = Record<string, any>>(r: unknown): T {
  const result = r as CallToolResult;
  assert.ok(!result.isError, `tool error: ${textOf(result)}`);
  return result.structuredContent as T;
}

async function httpClient(t: import("node:test").TestContext, url: string, token: string): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
  const client = new Client({ name: "pyro-e2e-http", version: "0" });
  await client.connect(transport);
  t.after(() => client.close().catch(() => undefined));
  return client;
}

const INIT = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "0" } } });

/** A raw POST with chosen headers (node:http lets a test set Host, which fetch does not). */
function post(url: string, headers: Record<string, string>, body = INIT): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers } }, (res) => {
      let data = "";
      res.on("data", (c: Buffer) => (data += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: data, headers: res.headers }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("Streamable HTTP: token, DNS-rebinding checks, tools, the task loop, progress, and shutdown", async (t) => {
  const fx = mcpFixture(t);
  const server = await httpServer(t, fx, ["--http", "127.0.0.1:0", "--profile", "full"]);
  assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
  assert.ok(server.token.length >= 32, "a generated token is long");

  await t.test("a missing or wrong token is 401", async () => {
    const none = await post(server.url, {});
    assert.equal(none.status, 401);
    assert.match(String(none.headers["www-authenticate"]), /^Bearer/);
    assert.equal((await post(server.url, { authorization: `Bearer ${server.token}x` })).status, 401);
    assert.equal((await post(server.url, { authorization: server.token })).status, 401);
    const ok = await post(server.url, { authorization: `Bearer ${server.token}` });
    assert.equal(ok.status, 200, ok.body);
  });

  await t.test("a foreign Origin or Host is 403, even with the token", async () => {
    const auth = { authorization: `Bearer ${server.token}` };
    assert.equal((await post(server.url, { ...auth, origin: "http://evil.example" })).status, 403);
    assert.equal((await post(server.url, { ...auth, origin: "null" })).status, 403);
    assert.equal((await post(server.url, { ...auth, host: "evil.example" })).status, 403);
    assert.equal((await post(server.url, { ...auth, origin: "http://localhost:3000" })).status, 200);
    assert.equal((await post(server.url.replace(/\/mcp$/, "/other"), auth)).status, 404);
    const bad = await post(server.url, auth, "{nope");
    assert.equal(bad.status, 400);
    assert.equal(JSON.parse(bad.body).error.code, -32700);
    const big = await post(server.url, auth, JSON.stringify({ jsonrpc: "2.0", id: 1, method: "x", params: { pad: "x".repeat(5 * 1024 * 1024) } }));
    assert.equal(big.status, 413);
  });

  const client = await httpClient(t, server.url, server.token);

  await t.test("tools and vm_run", async () => {
    assert.equal((await client.listTools()).tools.length, 17);
    const updates: string[] = [];
    const r = await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo one; sleep 0.8; echo two" } }, undefined, { onprogress: (p) => updates.push(p.message ?? "") });
    const s = structured(r);
    assert.equal(s.exit_code, 0);
    assert.equal(s.stdout, "one\ntwo\n");
    assert.equal(s.isolation.driver, "namespace");
    assert.match(updates.join(""), /\[stdout\] one/);
  });

  await t.test("the task loop", async () => {
    const repo = join(fx.root, "repo");
    mkdirSync(repo);
    writeFileSync(join(repo, "a.txt"), "A1\n");
    const { task_id } = structured(await client.callTool({ name: "task_create", arguments: { environment: ENV, source_path: repo } }));
    writeFileSync(join(repo, "a.txt"), "A2\n");
    structured(await client.callTool({ name: "task_sync_push", arguments: { task_id, source_path: repo } }));
    assert.equal(structured(await client.callTool({ name: "task_exec", arguments: { task_id, command: ["cat", "a.txt"] } })).stdout, "A2\n");
    assert.equal(structured(await client.callTool({ name: "task_logs", arguments: { task_id } })).entries.length, 1);
    structured(await client.callTool({ name: "task_delete", arguments: { task_id } }));
    const err = await client.callTool({ name: "task_status", arguments: { task_id } });
    assert.equal(err.isError, true);
    assert.match(textOf(err), /unknown_task/);
  });

  await t.test("SIGTERM closes every session and deletes their VMs", async () => {
    const vm = structured(await client.callTool({ name: "vm_create", arguments: { environment: ENV } }));
    await client.callTool({ name: "vm_start", arguments: { vm_id: vm.vm_id } });
    assert.deepEqual(readdirSync(join(fx.stateDir, "vms")), [vm.vm_id]);
    server.child.kill("SIGTERM");
    const { code } = await exited(server.child);
    assert.equal(code, 143);
    assert.deepEqual(readdirSync(join(fx.stateDir, "vms")), []);
    await waitFor(() => sandboxProcesses(fx.stateDir).length === 0, 5_000, "no sandbox left");
  });
});

test("Streamable HTTP: an explicit token, and no public address without one", async (t) => {
  const fx = mcpFixture(t);
  const refused = spawnSync(process.execPath, cliArgs(["mcp", "serve", "--http", "0.0.0.0:0"]), { encoding: "utf8", env: { ...fx.env, PYRO_MCP_TOKEN: "" }, timeout: 20_000 });
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /Refusing to serve MCP on the non-loopback address 0\.0\.0\.0 without an explicit token[\s\S]*--token/);
  const short = spawnSync(process.execPath, cliArgs(["mcp", "serve", "--http", "127.0.0.1:0", "--token", "abc"]), { encoding: "utf8", env: fx.env, timeout: 20_000 });
  assert.equal(short.status, 2);
  assert.match(short.stderr, /too short/);

  const token = "e2e-token-0123456789abcdef";
  const server = await httpServer(t, fx, ["--http", "127.0.0.1:0", "--token", token, "--profile", "vm-run"]);
  assert.ok(!server.stderr().includes(token), "an explicit token is not echoed");
  const client = await httpClient(t, server.url, token);
  assert.deepEqual((await client.listTools()).tools.map((x) => x.name), ["vm_run"]);
  assert.equal(structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo via-http" } })).stdout, "via-http\n");
  // A second, concurrent session gets its own server.
  const second = await httpClient(t, server.url, token);
  const [a, b] = await Promise.all([
    second.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo s2" } }),
    client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo s1" } }),
  ]);
  assert.equal(structured(a).stdout, "s2\n");
  assert.equal(structured(b).stdout, "s1\n");
  server.child.kill("SIGINT");
  assert.equal((await exited(server.child)).code, 130);
});
