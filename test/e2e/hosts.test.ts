import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { BUILT_CLI, cliArgs, mcpFixture, ROOT, textOf } from "../helpers/mcp.js";
import { hostConfig, HOSTS, type HostName } from "../../src/integrations/hosts.js";

/** `pyro host print-config HOST` and docs/hosts.md, followed literally. */

/** Without the variables an entry carries (test/e2e/host-install.test.ts covers them): the snippets as docs/hosts.md shows them. */
const bareEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== "PYRO_CACHE_DIR" && k !== "PYRO_STATE_DIR"));

function printConfig(args: string[], cwd = ROOT) {
  return spawnSync(process.execPath, cliArgs(["host", "print-config", ...args]), { cwd, encoding: "utf8", env: bareEnv });
}

function tempDir(t: import("node:test").TestContext, prefix: string): string {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), prefix)));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The server entry of each host's snippet, normalized to command + args. */
function serverOf(host: HostName, parsed: any, name = "pyro"): { command: string; args: string[] } {
  switch (host) {
    case "claude-code":
      assert.deepEqual(Object.keys(parsed), ["mcpServers"]);
      assert.equal(parsed.mcpServers[name].type, "stdio");
      return parsed.mcpServers[name];
    case "vscode":
      assert.deepEqual(Object.keys(parsed), ["servers"]);
      assert.equal(parsed.servers[name].type, "stdio");
      return parsed.servers[name];
    case "claude-desktop":
    case "cursor":
    case "windsurf":
    case "gemini":
      assert.deepEqual(Object.keys(parsed), ["mcpServers"]);
      assert.deepEqual(Object.keys(parsed.mcpServers[name]), ["command", "args"]);
      return parsed.mcpServers[name];
    case "codex": {
      const server = parsed.mcp_servers[name];
      assert.deepEqual(Object.keys(server).sort(), ["args", "command", "tool_timeout_sec"]);
      assert.equal(server.tool_timeout_sec, 300);
      return server;
    }
    case "opencode": {
      assert.equal(parsed.$schema, "https://opencode.ai/config.json");
      const server = parsed.mcp[name];
      assert.equal(server.type, "local");
      assert.equal(server.enabled, true);
      const [command, ...args] = server.command as string[];
      return { command: command!, args };
    }
  }
}

const parse = (host: HostName, text: string) => (host === "codex" ? parseToml(text) : JSON.parse(text));

test("print-config prints, for every host, a snippet that parses and starts this node and this CLI", (t) => {
  const root = tempDir(t, "pyro-hosts-root-");
  for (const host of HOSTS) {
    const r = printConfig([host, "--allow-source-root", root]);
    assert.equal(r.status, 0, `${host}: ${r.stderr}`);
    const server = serverOf(host, parse(host, r.stdout));
    assert.equal(server.command, process.execPath, host);
    assert.deepEqual(server.args, [BUILT_CLI, "mcp", "serve", "--allow-source-root", root], host);
    // Where it goes, on stderr, as comments.
    assert.match(r.stderr, /^# \S/, host);
    const expectFile = {
      "claude-code": ".mcp.json",
      codex: "~/.codex/config.toml",
      "claude-desktop": "claude_desktop_config.json",
      cursor: ".cursor/mcp.json",
      opencode: "opencode.json",
      vscode: ".vscode/mcp.json",
      windsurf: "~/.codeium/windsurf/mcp_config.json",
      gemini: "~/.gemini/settings.json",
    }[host];
    assert.ok(r.stderr.includes(expectFile), `${host} names ${expectFile}`);

    // --json: the same snippet, plus command, args, files.
    const j = printConfig([host, "--allow-source-root", root, "--json"]);
    assert.equal(j.status, 0);
    assert.equal(j.stderr, "");
    const obj = JSON.parse(j.stdout);
    assert.equal(obj.host, host);
    assert.equal(obj.command, process.execPath);
    assert.deepEqual(obj.args, server.args);
    assert.equal(obj.text, r.stdout);
    assert.deepEqual(host === "codex" ? parseToml(obj.content) : obj.content, parse(host, r.stdout));
  }
  // The host CLIs' own add commands, for the hosts that have one.
  const cc = printConfig(["claude-code", "--allow-source-root", root]);
  assert.ok(cc.stderr.includes(`claude mcp add pyro -- ${process.execPath} ${BUILT_CLI} mcp serve --allow-source-root ${root}`), cc.stderr);
  const codex = printConfig(["codex", "--allow-source-root", root]);
  assert.ok(codex.stderr.includes(`codex mcp add pyro -- ${process.execPath} ${BUILT_CLI} mcp serve --allow-source-root ${root}`), codex.stderr);
});

test("print-config: the current directory is the default root; --profile, repeated roots and --name pass through", (t) => {
  const a = tempDir(t, "pyro-hosts-a-");
  const b = tempDir(t, "pyro-hosts-b-");
  const dflt = printConfig(["cursor"], a);
  assert.deepEqual(serverOf("cursor", JSON.parse(dflt.stdout)).args.slice(1), ["mcp", "serve", "--allow-source-root", a]);
  const r = printConfig(["opencode", "--profile", "vm-run", "--allow-source-root", a, "--allow-source-root", b, "--name", "sandbox"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(serverOf("opencode", JSON.parse(r.stdout), "sandbox").args.slice(1), ["mcp", "serve", "--profile", "vm-run", "--allow-source-root", a, "--allow-source-root", b]);
  const spaced = join(a, "with space");
  mkdirSync(spaced);
  const q = printConfig(["claude-code", "--allow-source-root", spaced]);
  assert.ok(q.stderr.includes(`--allow-source-root '${spaced}'`), "the add command quotes for the shell");
  const codex = parseToml(printConfig(["codex", "--allow-source-root", spaced, "--name", "my pyro"]).stdout) as any;
  assert.deepEqual(codex.mcp_servers["my pyro"].args.slice(-1), [spaced]);
});

test("print-config: bad input exits 2 with one clear line", (t) => {
  const unknown = printConfig(["vscodium"]);
  assert.equal(unknown.status, 2);
  assert.equal(unknown.stdout, "");
  assert.match(unknown.stderr, /Unknown host "vscodium"[\s\S]*claude-code, codex, claude-desktop, cursor, opencode, vscode, windsurf, gemini/);
  const missing = printConfig([]);
  assert.equal(missing.status, 2);
  const profile = printConfig(["cursor", "--profile", "everything"]);
  assert.equal(profile.status, 2);
  assert.match(profile.stderr, /Unknown MCP profile "everything"/);
  const root = printConfig(["cursor", "--allow-source-root", join(tempDir(t, "pyro-hosts-x-"), "nope")]);
  assert.equal(root.status, 2);
  assert.match(root.stderr, /is not an existing directory/);
});

// ---------------------------------------------------------------- docs/hosts.md

const DOC = readFileSync(join(ROOT, "docs", "hosts.md"), "utf8");
const DOC_INPUT = { node: "/usr/bin/node", cli: "/home/me/src/pyro-mcp/dist/cli.js", allowSourceRoots: ["/home/me/src/myproject"] };
const TITLES: Record<HostName, string> = {
  "claude-code": "Claude Code",
  codex: "Codex",
  "claude-desktop": "Claude Desktop",
  cursor: "Cursor",
  opencode: "OpenCode",
  vscode: "VS Code",
  windsurf: "Windsurf",
  gemini: "Gemini CLI",
};

function section(title: string): string {
  const start = DOC.indexOf(`\n## ${title}\n`);
  assert.ok(start >= 0, `docs/hosts.md has a "## ${title}" section`);
  const end = DOC.indexOf("\n## ", start + 1);
  return DOC.slice(start, end < 0 ? undefined : end);
}

function blocks(text: string, lang: string): string[] {
  return [...text.matchAll(new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g"))].map((m) => m[1]!);
}

test("docs/hosts.md shows, for every host, exactly what print-config generates", () => {
  for (const host of HOSTS) {
    const body = section(TITLES[host]);
    const config = hostConfig(host, DOC_INPUT);
    const [snippet] = blocks(body, config.format);
    assert.equal(snippet, config.text, `${host}: the snippet in docs/hosts.md is print-config's output`);
    if (config.add_command) assert.ok(blocks(body, "sh").some((b) => b.trim() === config.add_command), `${host}: the add command`);
    assert.ok(blocks(body, "sh").some((b) => b.includes(`pyro host install ${host}`)), `${host}: the install command`);
  }
  // No recipe appends to a config file by hand any more: install merges.
  assert.doesNotMatch(DOC, />>/);
});

test("docs/hosts.md, Claude Code, followed literally: the printed command and args serve vm_run and tasks", async (t) => {
  const fx = mcpFixture(t);
  // A project directory, as in the docs (`cd ~/src/myproject`), with something to seed a task from.
  const project = realpathSync(fx.root);
  writeFileSync(join(project, "hello.txt"), "from the project\n");

  // The documented command, with the clone's path for ~/src/pyro-mcp.
  const [commands] = blocks(section("Claude Code"), "sh");
  const line = commands!.split("\n").find((l) => l.includes("host install claude-code"))!;
  assert.equal(line, "~/src/pyro-mcp/bin/pyro host install claude-code --scope project");
  const run = spawnSync("sh", ["-c", line.replace(/^~\/src\/pyro-mcp\//, `${ROOT}/`)], { cwd: project, encoding: "utf8", env: { ...process.env, HOME: homedir() } });
  assert.equal(run.status, 0, run.stderr);
  const mcpJson = JSON.parse(readFileSync(join(project, ".mcp.json"), "utf8"));
  // The run's cache and state travel with the entry (a host gives its servers a minimal environment).
  assert.deepEqual(mcpJson.mcpServers.pyro.env, { PYRO_CACHE_DIR: process.env.PYRO_CACHE_DIR, PYRO_STATE_DIR: process.env.PYRO_STATE_DIR });
  delete mcpJson.mcpServers.pyro.env;

  // Same shape as the page's example, with this machine's paths.
  const [docJson] = blocks(section("Claude Code"), "json");
  const expected = JSON.parse(
    docJson!.replaceAll("/home/me/src/pyro-mcp", ROOT.replace(/\/$/, "")).replaceAll("/home/me/src/myproject", project).replaceAll("/usr/bin/node", process.execPath),
  );
  assert.deepEqual(mcpJson, expected);

  // What Claude Code does with it: start `command args` and speak MCP over stdio.
  const { command, args } = mcpJson.mcpServers.pyro;
  const transport = new StdioClientTransport({ command, args, env: fx.env as Record<string, string>, cwd: tmpdir(), stderr: "pipe" });
  const client = new Client({ name: "claude-code-stand-in", version: "0" });
  await client.connect(transport);
  t.after(() => client.close().catch(() => undefined));

  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((x) => x.name).sort(), ["task_create", "task_delete", "task_exec", "task_list", "task_logs", "task_status", "task_sync_push", "vm_run"]);
  const r = (await client.callTool({ name: "vm_run", arguments: { environment: "busybox", command: "echo claude-code-ok; id -u" } })) as CallToolResult;
  assert.ok(!r.isError, textOf(r));
  assert.equal((r.structuredContent as any).stdout, "claude-code-ok\n0\n");
  assert.match(textOf(r), /^exit 0 in \d+ ms \(namespace sandbox, vm_/);

  // The allowed root is the project the command ran in, whatever directory the host starts the server in.
  const created = (await client.callTool({ name: "task_create", arguments: { environment: "busybox", source_path: project } })) as CallToolResult;
  assert.ok(!created.isError, textOf(created));
  const taskId = (created.structuredContent as any).task_id as string;
  const cat = (await client.callTool({ name: "task_exec", arguments: { task_id: taskId, command: "cat hello.txt" } })) as CallToolResult;
  assert.equal((cat.structuredContent as any).stdout, "from the project\n");
  const outside = (await client.callTool({ name: "task_create", arguments: { environment: "busybox", source_path: "/etc" } })) as CallToolResult;
  assert.equal(outside.isError, true);
  assert.match(textOf(outside), /source_not_allowed/);
  await client.callTool({ name: "task_delete", arguments: { task_id: taskId } });
});
