import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { waitFor } from "../helpers/sandbox.js";
import { cliArgs, exited, httpServer, mcpFixture, sandboxProcesses, textOf } from "../helpers/mcp.js";
import { HEADERS_TIMEOUT_MS, MAX_CONNECTIONS } from "../../src/mcp/http.js";

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
    assert.equal((await client.listTools()).tools.length, 34);
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

/** `pyro mcp serve ARGS` run to its end (for the refusals, which happen before listening). */
function serveOnce(args: string[], env: NodeJS.ProcessEnv): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, cliArgs(["mcp", "serve", ...args]), { encoding: "utf8", env, timeout: 20_000 });
  return { status: r.status, stderr: r.stderr };
}

/** A token file with `content` and `mode` in a private directory of the fixture. */
function tokenFile(fx: { stateDir: string }, name: string, content: string, mode: number): string {
  const dir = join(dirname(fx.stateDir), "secrets");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, name);
  writeFileSync(path, content, { mode });
  chmodSync(path, mode); // the umask must not decide what the test checks
  return path;
}

function cmdlineOf(pid: number): string {
  return readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
}

test("Streamable HTTP: no token on the command line, and no public address without a token", async (t) => {
  const fx = mcpFixture(t);
  const refused = serveOnce(["--http", "0.0.0.0:0"], fx.env);
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /Refusing to serve MCP on the non-loopback address 0\.0\.0\.0 without an explicit token[\s\S]*--token-file PATH[\s\S]*PYRO_MCP_TOKEN/);

  // --token is refused with the reason and what to use instead, and its value is not echoed.
  const secret = "argv-secret-0123456789abcdef";
  for (const args of [["--http", "127.0.0.1:0", "--token", secret], [`--token=${secret}`, "--http", "127.0.0.1:0"], ["--token", secret]]) {
    const r = serveOnce(args, fx.env);
    assert.equal(r.status, 2, args.join(" "));
    assert.match(r.stderr, /^pyro: --token was removed: a token on the command line is visible to every local user \(ps, \/proc\/PID\/cmdline\)/, args.join(" "));
    assert.match(r.stderr, /hint: .*--token-file PATH.*PYRO_MCP_TOKEN/);
    assert.ok(!r.stderr.includes(secret), "the refused token is not echoed");
  }
  // Not accepted next to a good token file either.
  const good = tokenFile(fx, "good", "a-token-file-token-0123456789\n", 0o600);
  assert.equal(serveOnce(["--http", "127.0.0.1:0", "--token-file", good, "--token", secret], fx.env).status, 2);
  // --help no longer offers it.
  const help = spawnSync(process.execPath, cliArgs(["mcp", "serve", "--help"]), { encoding: "utf8" });
  assert.match(help.stdout, /--token-file <path>/);
  assert.doesNotMatch(help.stdout, /--token </);
});

test("Streamable HTTP: --token-file must be a private regular file of the user, with a token in it", async (t) => {
  const fx = mcpFixture(t);
  const serve = (path: string) => serveOnce(["--http", "127.0.0.1:0", "--token-file", path], fx.env);
  const groupReadable = tokenFile(fx, "group-readable", "group-readable-token-0123456789\n", 0o640);
  let r = serve(groupReadable);
  assert.equal(r.status, 2);
  assert.ok(r.stderr.includes(`pyro: --token-file ${groupReadable} is readable by group or others (mode 0640); the token must be private to you.`), r.stderr);
  assert.ok(r.stderr.includes(`hint: Run \`chmod 600 ${groupReadable}\``), r.stderr);
  assert.ok(!r.stderr.includes("group-readable-token"), "the token is not echoed");
  const othersWritable = tokenFile(fx, "others-writable", "others-writable-token-0123456789\n", 0o602);
  r = serve(othersWritable);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /is writable by group or others \(mode 0602\)[\s\S]*chmod 600/);
  r = serve(tokenFile(fx, "empty", "", 0o600));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--token-file \S+ is empty\.[\s\S]*hint: Write a long random token into it/);
  r = serve(tokenFile(fx, "newline-only", "\n", 0o600));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /is empty/);
  r = serve(tokenFile(fx, "short", "short\n", 0o600));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /The token in --token-file \S+ is too short/);
  r = serve(tokenFile(fx, "two-lines", "first-line-0123456789\nsecond-line-0123456789\n", 0o600));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /holds more than one line/);
  r = serve(join(fx.root, "missing"));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--token-file \S+missing does not exist\.[\s\S]*umask 077/);
  r = serve(fx.root);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /is a directory; it must be a regular file/);
  if (process.getuid?.() === 0) {
    const foreign = tokenFile(fx, "foreign", "someone-elses-token-0123456789\n", 0o600);
    chownSync(foreign, 65534, 65534);
    r = serve(foreign);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /is owned by uid 65534, not by the user running pyro \(uid 0\)/);
  }
  r = serveOnce(["--token-file", tokenFile(fx, "stdio", "a-token-for-nothing-0123456789\n", 0o600)], fx.env);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--token-file only applies to --http/);
});

test("Streamable HTTP: a token from --token-file works, a wrong one is 401, and it is not on the command line", async (t) => {
  const fx = mcpFixture(t);
  const token = "e2e-file-token-0123456789abcdef";
  const file = tokenFile(fx, "token", `${token}\r\n`, 0o600);
  const server = await httpServer(t, fx, ["--http", "127.0.0.1:0", "--token-file", file, "--profile", "vm-run"], { token });
  assert.ok(server.stderr().includes(`bearer token: read from ${file}`), server.stderr());
  assert.ok(!server.stderr().includes(token), "the token is not logged");
  const cmdline = cmdlineOf(server.child.pid!);
  assert.ok(cmdline.includes(`--token-file ${file}`), cmdline);
  assert.ok(!cmdline.includes(token), "the token is not in the server's argv");

  assert.equal((await post(server.url, { authorization: `Bearer ${token}x` })).status, 401);
  assert.equal((await post(server.url, { authorization: `Bearer ${token.slice(0, -1)}` })).status, 401);
  await assert.rejects(httpClient(t, server.url, "wrong-token-0123456789abcdef"), /401|Unauthorized/);
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

test("Streamable HTTP: a token from PYRO_MCP_TOKEN works, and no process the server starts inherits it", async (t) => {
  const fx = mcpFixture(t);
  const token = "e2e-env-token-0123456789abcdef";
  const server = await httpServer(t, fx, ["--http", "127.0.0.1:0", "--profile", "full"], { token, env: { ...fx.env, PYRO_MCP_TOKEN: token } });
  assert.match(server.stderr(), /bearer token: from \$PYRO_MCP_TOKEN/);
  assert.ok(!server.stderr().includes(token), "the token is not logged");
  assert.ok(!cmdlineOf(server.child.pid!).includes(token), "the token is not in the server's argv");
  assert.equal((await post(server.url, { authorization: `Bearer ${token}x` })).status, 401);
  assert.equal((await post(server.url, {})).status, 401);
  const client = await httpClient(t, server.url, token);

  // A sandbox with networking: bwrap and pasta are the server's children, the agent is the sandbox's init.
  const vm = structured(await client.callTool({ name: "vm_create", arguments: { environment: ENV, network: true } }));
  structured(await client.callTool({ name: "vm_start", arguments: { vm_id: vm.vm_id } }));
  const children = sandboxProcesses(fx.stateDir);
  assert.ok(children.some((c) => /\bbwrap\b/.test(c)) && children.some((c) => /\bpasta\b/.test(c)), `bwrap and pasta run: ${children.join("; ")}`);
  for (const child of children) {
    const pid = Number(child.split(" ")[0]);
    const environ = readFileSync(`/proc/${pid}/environ`, "utf8");
    // Readable to the test (root or the same user); bwrap and the agent get an empty environment, pasta a PATH.
    if (/\bbwrap\b/.test(child)) assert.equal(environ, "", `${child} runs with an empty environment`);
    assert.ok(!environ.includes(token) && !environ.includes("PYRO_MCP_TOKEN="), `${child} does not inherit the token`);
  }
  // What a command in the sandbox could try: its pid 1's environment (refused: not dumpable) and its own.
  const seen = structured(await client.callTool({ name: "vm_exec", arguments: { vm_id: vm.vm_id, command: "tr '\\0' '\\n' < /proc/1/environ; env" } }));
  assert.match(seen.stderr, /Permission denied/, "pid 1's environment is out of reach");
  assert.match(seen.stdout, /^PATH=/m, "the command's own environment was read");
  assert.ok(!seen.stdout.includes(token) && !seen.stdout.includes("PYRO_MCP_TOKEN"), "no token inside the sandbox");
  server.child.kill("SIGTERM");
  assert.equal((await exited(server.child)).code, 143);
  await waitFor(() => sandboxProcesses(fx.stateDir).length === 0, 5_000, "no sandbox left");
});

test("Streamable HTTP: a flood of idle connections is capped and timed out; a call already running finishes, a new session works after", { timeout: 120_000 }, async (t) => {
  const fx = mcpFixture(t);
  const server = await httpServer(t, fx);
  const client = await httpClient(t, server.url, server.token);
  const fds = () => readdirSync(`/proc/${server.child.pid}/fd`).length;
  const before = fds();
  // A call that runs through the flood: it needs fds of the server (its sandbox's pipes and sockets) while it lasts.
  let said = "";
  const running = client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo started; sleep 2; echo done" } }, undefined, { onprogress: (p) => void (said += p.message ?? "") });
  // Flood only once the call is on its connection (its output streams back on it).
  await waitFor(() => said.includes("started"), 30_000, "the call's first output");
  // Connections that never send a byte, twice the cap, from a client that has no token.
  const port = Number(new URL(server.url).port);
  const flood: Socket[] = [];
  const closed: Array<Promise<number>> = [];
  for (let i = 0; i < 2 * MAX_CONNECTIONS; i++) {
    const s = connect(port, "127.0.0.1");
    s.on("error", () => undefined);
    s.resume(); // read what the server sends (its 408), or the server's close is never seen here
    const start = Date.now();
    closed.push(new Promise((r) => s.once("close", () => r(Date.now() - start))));
    flood.push(s);
  }
  t.after(() => flood.forEach((s) => s.destroy()));
  await new Promise((r) => setTimeout(r, 1000));
  const during = fds();
  assert.ok(during - before <= MAX_CONNECTIONS + 16, `the server holds at most ${MAX_CONNECTIONS} connections (${before} fds before the flood, ${during} during)`);
  const r = structured(await running);
  assert.deepEqual([r.exit_code, r.stdout], [0, "started\ndone\n"], "the call that was running finished");
  // Every idle connection is closed by the server: past the cap at once, the others after the headers timeout.
  const lifetimes = await Promise.all(closed);
  assert.ok(Math.max(...lifetimes) <= HEADERS_TIMEOUT_MS + 5_000, `every idle connection was closed within the headers timeout (longest ${Math.max(...lifetimes)} ms)`);
  assert.ok(lifetimes.filter((ms) => ms < 2_000).length >= MAX_CONNECTIONS - 16, "those past the cap were closed at once");
  const fresh = await httpClient(t, server.url, server.token);
  assert.deepEqual([structured(await fresh.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo again" } })).stdout], ["again\n"]);
});
