// `pyro host install|uninstall HOST` on real config files in a temporary HOME,
// through the built CLI, each file read back with its format's own parser.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { parse as parseJsonc, type ParseError } from "jsonc-parser";
import { BUILT_CLI, cliArgs, ROOT } from "../helpers/mcp.js";
import { HOSTS, installPath, type HostName } from "../../src/integrations/hosts.js";

interface World {
  home: string;
  project: string;
  root: string;
  env: NodeJS.ProcessEnv;
}

function world(t: TestContext): World {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "pyro-hostinst-")));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const home = join(base, "home");
  const project = join(base, "project");
  const root = join(base, "src");
  for (const d of [home, project, root]) mkdirSync(d);
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home };
  for (const k of ["XDG_CONFIG_HOME", "CODEX_HOME", "PYRO_CACHE_DIR", "PYRO_STATE_DIR"]) delete env[k];
  return { home, project, root, env };
}

function pyro(w: World, args: string[], extraEnv: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, cliArgs(["host", ...args]), { cwd: w.project, env: { ...w.env, ...extraEnv }, encoding: "utf8" });
}

function userFile(w: World, host: HostName): string {
  return installPath(host, "user", w.env, w.project)!;
}

const FORMAT: Record<HostName, "json" | "jsonc" | "toml"> = {
  "claude-code": "json",
  codex: "toml",
  "claude-desktop": "json",
  cursor: "json",
  opencode: "jsonc",
  vscode: "jsonc",
  windsurf: "json",
  gemini: "jsonc",
};

/** The file parsed by its format's own parser (strict JSON for JSON hosts). */
function parseFile(host: HostName, path: string): any {
  const text = readFileSync(path, "utf8");
  if (FORMAT[host] === "toml") return JSON.parse(JSON.stringify(parseToml(text)));
  if (FORMAT[host] === "json") return JSON.parse(text);
  const errors: ParseError[] = [];
  const value = parseJsonc(text, errors, { allowTrailingComma: true });
  assert.deepEqual(errors, [], `${path} parses as JSONC`);
  return value;
}

/** The servers object of a parsed file. */
function serversOf(host: HostName, doc: any): Record<string, any> {
  return host === "codex" ? doc.mcp_servers : host === "opencode" ? doc.mcp : host === "vscode" ? doc.servers : doc.mcpServers;
}

/** command + args + env of pyro's entry, whatever the host's shape. */
function serverOf(host: HostName, entry: any): { command: string; args: string[]; env: Record<string, string> | undefined } {
  if (host === "opencode") {
    assert.equal(entry.type, "local");
    assert.equal(entry.enabled, true);
    const [command, ...args] = entry.command;
    return { command, args, env: entry.environment };
  }
  if (host === "claude-code" || host === "vscode") assert.equal(entry.type, "stdio", host);
  if (host === "codex") assert.equal(entry.tool_timeout_sec, 300);
  return { command: entry.command, args: entry.args, env: entry.env };
}

/** Files in the directory of `path` other than the config itself (temporaries left behind would show here). */
function siblings(path: string): string[] {
  return readdirSync(dirname(path)).filter((n) => n.startsWith(".") && n.includes("pyro-") && n.endsWith(".tmp"));
}

test("install writes each host's own file where the host reads it; a second run changes nothing; uninstall removes it", (t) => {
  const w = world(t);
  for (const host of HOSTS) {
    const path = userFile(w, host);
    const r = pyro(w, ["install", host, "--allow-source-root", w.root]);
    assert.equal(r.status, 0, `${host}: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`"pyro" added to ${path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\n$`), host);
    const server = serverOf(host, serversOf(host, parseFile(host, path)).pyro);
    assert.equal(server.command, process.execPath, host);
    assert.deepEqual(server.args, [BUILT_CLI, "mcp", "serve", "--allow-source-root", w.root], host);
    assert.equal(server.env, undefined, `${host}: no env when PYRO_CACHE_DIR and PYRO_STATE_DIR are unset`);

    // Idempotent: the same bytes, not even rewritten.
    const before = { text: readFileSync(path, "utf8"), mtime: statSync(path).mtimeMs, ino: statSync(path).ino };
    const again = pyro(w, ["install", host, "--allow-source-root", w.root]);
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /already in, unchanged/);
    assert.equal(readFileSync(path, "utf8"), before.text, host);
    assert.equal(statSync(path).mtimeMs, before.mtime, `${host}: not rewritten`);
    assert.equal(statSync(path).ino, before.ino, `${host}: not replaced`);

    const json = JSON.parse(pyro(w, ["install", host, "--allow-source-root", w.root, "--json"]).stdout);
    assert.deepEqual(json, { host, name: "pyro", path, change: "unchanged" });

    const un = pyro(w, ["uninstall", host]);
    assert.equal(un.status, 0, un.stderr);
    assert.match(un.stdout, /"pyro" removed from/);
    assert.equal(serversOf(host, parseFile(host, path))?.pyro, undefined, host);
    const un2 = pyro(w, ["uninstall", host]);
    assert.equal(un2.status, 0);
    assert.match(un2.stdout, /no "pyro" entry .* nothing to do/);
    assert.deepEqual(siblings(path), [], `${host}: no temporary file left`);
  }
});

/** A config each host might already have: other servers, other settings, and (where the format has them) comments. */
const EXISTING: Record<HostName, string> = {
  "claude-code": `{\n  "numStartups": 12,\n  "oauthAccount": { "emailAddress": "me@example.com" },\n  "mcpServers": {\n    "other": { "type": "stdio", "command": "other-server", "args": [] }\n  },\n  "projects": { "/home/me/x": { "mcpServers": {} } }\n}\n`,
  codex: `# my settings\nmodel = "o3"\napproval_policy = "on-request"\n\n[mcp_servers.other]\ncommand = "other-server" # keep this comment\nargs = ["--flag"]\n\n[mcp_servers.other.env]\nTOKEN = "x"\n\n[profiles.fast]\nmodel = "o4-mini"\n`,
  "claude-desktop": `{\n    "globalShortcut": "Ctrl+Space",\n    "mcpServers": {\n        "other": { "command": "other-server", "args": ["a"] }\n    }\n}\n`,
  cursor: `{"mcpServers":{"other":{"command":"other-server","args":[]}}}`,
  opencode: `{\n  // my OpenCode settings\n  "$schema": "https://opencode.ai/config.json",\n  "theme": "tokyonight",\n  "mcp": {\n    "other": { "type": "local", "command": ["other-server"], "enabled": true }, // trailing comma next\n  },\n}\n`,
  vscode: `{\n\t// Workspace servers\n\t"inputs": [],\n\t"servers": {\n\t\t/* the team's */\n\t\t"other": { "type": "stdio", "command": "other-server" }\n\t}\n}\n`,
  windsurf: `{\n  "mcpServers": {\n    "other": { "serverUrl": "https://example.com/mcp" }\n  }\n}\n`,
  gemini: `{\n  // Gemini reads comments too\n  "ui": { "theme": "GitHub" },\n  "mcpServers": { "other": { "httpUrl": "https://example.com/mcp" } }\n}\n`,
};

test("install keeps every other server, setting and comment; uninstall gives back the very same file", (t) => {
  const w = world(t);
  for (const host of HOSTS) {
    const path = userFile(w, host);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, EXISTING[host]);
    chmodSync(path, 0o600); // ~/.claude.json holds tokens: its mode is kept
    const original = parseFile(host, path);
    const r = pyro(w, ["install", host, "--allow-source-root", w.root], { PYRO_CACHE_DIR: "rel-cache", PYRO_STATE_DIR: join(w.home, "state") });
    assert.equal(r.status, 0, `${host}: ${r.stderr}`);
    const after = parseFile(host, path);
    const servers = serversOf(host, after);
    assert.deepEqual(Object.keys(servers).sort(), ["other", "pyro"], host);
    // Everything but pyro's entry is exactly as it was.
    delete servers.pyro;
    assert.deepEqual(after, original, host);
    // Comments survive in the formats that have them.
    for (const comment of EXISTING[host].match(/(?<=^|\s)(#|\/\/|\/\*)[^\n]*/gm) ?? []) {
      if (host !== "claude-code" && host !== "claude-desktop" && host !== "cursor" && host !== "windsurf") assert.ok(readFileSync(path, "utf8").includes(comment.trim()), `${host} keeps ${comment}`);
    }
    // The carried variables, made absolute.
    const server = serverOf(host, serversOf(host, parseFile(host, path)).pyro);
    assert.deepEqual(server.env, { PYRO_CACHE_DIR: join(w.project, "rel-cache"), PYRO_STATE_DIR: join(w.home, "state") }, host);
    assert.equal(statSync(path).mode & 0o777, 0o600, `${host}: mode kept`);

    // Without the variables, the entry is refreshed (updated), not duplicated.
    const refreshed = pyro(w, ["install", host, "--allow-source-root", w.root]);
    assert.match(refreshed.stdout, /"pyro" updated in/, host);
    assert.equal(serverOf(host, serversOf(host, parseFile(host, path)).pyro).env, undefined);

    const un = pyro(w, ["uninstall", host]);
    assert.equal(un.status, 0, un.stderr);
    if (host === "cursor") assert.deepEqual(parseFile(host, path), original, host);
    else assert.equal(readFileSync(path, "utf8"), EXISTING[host], `${host}: byte for byte`);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(siblings(path), []);
  }
});

test("a file that does not parse, or has no room for servers, is left exactly as it is with a clear error", (t) => {
  const w = world(t);
  const broken: Record<HostName, string> = {
    "claude-code": `{"mcpServers": {}, }`, // trailing comma: not JSON
    codex: `[mcp_servers.other\ncommand = "x"\n`,
    "claude-desktop": `{"mcpServers": { /* comment */ }}`, // comments: not JSON
    cursor: ``.padEnd(0) + `{"mcpServers": `,
    opencode: `{ "mcp": { "a": 1 } `,
    vscode: `{ "servers": [ ] }`, // servers is not an object
    windsurf: `[]`, // top level is not an object
    gemini: `{ "mcpServers": "none" }`,
  };
  for (const host of HOSTS) {
    const path = userFile(w, host);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, broken[host]);
    const mtime = statSync(path).mtimeMs;
    for (const verb of ["install", "uninstall"]) {
      const r = pyro(w, [verb, host]);
      assert.equal(r.status, 2, `${host} ${verb}: ${r.stdout}${r.stderr}`);
      assert.equal(r.stdout, "");
      assert.ok(r.stderr.includes(path), `${host}: the error names the file`);
      assert.match(r.stderr, /does not parse|is not an object/, host);
      assert.match(r.stderr, /pyro left (it|the file) as it is/, host);
      assert.match(r.stderr, /hint: /);
      assert.equal(readFileSync(path, "utf8"), broken[host], `${host}: untouched`);
      assert.equal(statSync(path).mtimeMs, mtime);
      assert.deepEqual(siblings(path), []);
    }
  }
  // Where the parse fails, said in the file's own terms.
  assert.match(pyro(w, ["install", "codex"]).stderr, /does not parse as TOML \(line \d+, column \d+/);
  assert.match(pyro(w, ["install", "claude-code"]).stderr, /does not parse as JSON \(line 1, column \d+/);
});

test("an entry Codex holds as an inline table is not rewritten behind the user's back", (t) => {
  const w = world(t);
  const path = userFile(w, "codex");
  mkdirSync(dirname(path), { recursive: true });
  const text = `mcp_servers = { pyro = { command = "old", args = [] }, other = { command = "x" } }\n`;
  writeFileSync(path, text);
  for (const verb of ["install", "uninstall"]) {
    const r = pyro(w, [verb, "codex"]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /written in a form pyro cannot edit without changing something else/);
    assert.equal(readFileSync(path, "utf8"), text);
  }
});

test("install goes through a symlinked config to its target and keeps the link", (t) => {
  const w = world(t);
  const dotfiles = join(w.home, "dotfiles");
  mkdirSync(dotfiles);
  const real = join(dotfiles, "cursor-mcp.json");
  writeFileSync(real, EXISTING.cursor);
  mkdirSync(join(w.home, ".cursor"));
  symlinkSync(real, join(w.home, ".cursor", "mcp.json"));
  assert.equal(pyro(w, ["install", "cursor"]).status, 0);
  assert.ok(lstatSync(join(w.home, ".cursor", "mcp.json")).isSymbolicLink());
  assert.ok(JSON.parse(readFileSync(real, "utf8")).mcpServers.pyro);
});

test("--scope project writes the project's file; hosts without one say so; --print writes nothing", (t) => {
  const w = world(t);
  const r = pyro(w, ["install", "vscode", "--scope", "project"]);
  assert.equal(r.status, 0, r.stderr);
  const file = join(w.project, ".vscode", "mcp.json");
  const entry = parseFile("vscode", file).servers.pyro;
  assert.deepEqual(entry.args.slice(-2), ["--allow-source-root", w.project], "the default root is the current directory");
  for (const [host, rel] of [["claude-code", ".mcp.json"], ["codex", ".codex/config.toml"], ["cursor", ".cursor/mcp.json"], ["opencode", "opencode.json"], ["gemini", ".gemini/settings.json"]] as const) {
    assert.equal(pyro(w, ["install", host, "--scope", "project"]).status, 0, host);
    assert.ok(serversOf(host, parseFile(host, join(w.project, rel))).pyro, host);
  }
  for (const host of ["windsurf", "claude-desktop"]) {
    const none = pyro(w, ["install", host, "--scope", "project"]);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /has no project config file/);
  }
  const bad = pyro(w, ["install", "cursor", "--scope", "global"]);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--scope must be user or project/);

  // --print is print-config: the snippet on stdout, where it goes on stderr, no file written.
  const printed = pyro(w, ["install", "gemini", "--print"]);
  const printConfig = pyro(w, ["print-config", "gemini"]);
  assert.equal(printed.status, 0);
  assert.equal(printed.stdout, printConfig.stdout);
  assert.equal(printed.stderr, printConfig.stderr);
  assert.throws(() => statSync(userFile(w, "gemini")), /ENOENT/);
});

test("XDG_CONFIG_HOME and CODEX_HOME move the files the way the hosts move them", (t) => {
  const w = world(t);
  const xdg = join(w.home, "xdg");
  const codexHome = join(w.home, "codex-home");
  const env = { XDG_CONFIG_HOME: xdg, CODEX_HOME: codexHome };
  for (const host of ["opencode", "vscode", "claude-desktop", "codex"] as const) assert.equal(pyro(w, ["install", host], env).status, 0);
  assert.ok(parseFile("opencode", join(xdg, "opencode", "opencode.json")).mcp.pyro);
  assert.ok(parseFile("vscode", join(xdg, "Code", "User", "mcp.json")).servers.pyro);
  assert.ok(parseFile("claude-desktop", join(xdg, "Claude", "claude_desktop_config.json")).mcpServers.pyro);
  assert.ok(parseFile("codex", join(codexHome, "config.toml")).mcp_servers.pyro);
});

test("names that could reach another key, and unknown hosts, are refused before any file is touched", (t) => {
  const w = world(t);
  for (const name of ["__proto__", "constructor", "", "a\nb", "x".repeat(200)]) {
    const r = pyro(w, ["install", "cursor", "--name", name]);
    assert.equal(r.status, 2, JSON.stringify(name));
    assert.match(r.stderr, /--name/);
  }
  const unknown = pyro(w, ["install", "vscodium"]);
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /Unknown host "vscodium"[\s\S]*claude-code, codex, claude-desktop, cursor, opencode, vscode, windsurf, gemini/);
  assert.deepEqual(readdirSync(w.home), [], "nothing was written");
  // A name with a dot or a space still lands as one key (TOML quotes it).
  assert.equal(pyro(w, ["install", "codex", "--name", "my.pyro box"]).status, 0);
  assert.deepEqual(Object.keys(parseFile("codex", userFile(w, "codex")).mcp_servers), ["my.pyro box"]);
  assert.equal(pyro(w, ["install", "codex", "--name", "my.pyro box"]).stdout.includes("unchanged"), true);
  assert.equal(pyro(w, ["uninstall", "codex", "--name", "my.pyro box"]).status, 0);
  assert.deepEqual(parseFile("codex", userFile(w, "codex")).mcp_servers, undefined);
  void ROOT;
});
