/**
 * MCP host configuration for `pyro mcp serve`: what each host reads to start
 * pyro's server (`pyro host print-config HOST`) and where it reads it from
 * (`pyro host install HOST`). The server is started as the absolute path of
 * node plus the absolute path of pyro's CLI, so an entry works from a clone
 * without a global install and whatever PATH the host gives its servers.
 *
 * Formats and locations follow each host's own documentation (docs/hosts.md
 * names the page each one was checked against).
 */
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { stringify as tomlStringify } from "smol-toml";

export const HOSTS = ["claude-code", "codex", "claude-desktop", "cursor", "opencode", "vscode", "windsurf", "gemini"] as const;
export type HostName = (typeof HOSTS)[number];
export const HOST_LIST = HOSTS.join(", ");

export function isHostName(value: string): value is HostName {
  return (HOSTS as readonly string[]).includes(value);
}

/** The variables a server entry carries when they are set: several hosts start servers with a minimal environment. */
export const CARRIED_ENV = ["PYRO_CACHE_DIR", "PYRO_STATE_DIR"] as const;

/** CARRIED_ENV as set in `env`, made absolute (a host starts the server in a directory of its own choosing). */
export function carriedEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of CARRIED_ENV) {
    const value = env[name];
    if (value) out[name] = resolve(value);
  }
  return out;
}

export interface HostConfigInput {
  /** Absolute path of the node binary. */
  node: string;
  /** Absolute path of pyro's dist/cli.js. */
  cli: string;
  /** The server's name in the host (default "pyro"). */
  name?: string;
  /** `--profile` for `pyro mcp serve` (omitted: the server's default, task-core). */
  profile?: string;
  /** `--allow-source-root` directories (absolute). */
  allowSourceRoots: string[];
  /** Environment the host gives the server (carriedEnv()); omitted from the entry when empty. */
  env?: Record<string, string>;
}

export type HostFormat = "json" | "jsonc" | "toml";
export type HostScope = "user" | "project";

export interface HostConfig {
  host: HostName;
  title: string;
  name: string;
  /** What the host starts: command + args. */
  command: string;
  args: string[];
  env: Record<string, string>;
  /** The file the snippet belongs in, per scope/platform. */
  files: Array<{ path: string; scope: string }>;
  /** json: strict JSON; jsonc: JSON with comments and trailing commas (the host accepts them); toml. */
  format: HostFormat;
  /** Where the entry lives in the file: the key of the object holding servers (its name is the next key). */
  key: string[];
  /** The server's entry under key[...]/name. */
  entry: Record<string, unknown>;
  /** Keys a new file starts with besides the entry (OpenCode's $schema). */
  preamble: Record<string, unknown>;
  /** The snippet: a whole file's content (merge it into an existing file). */
  text: string;
  /** The parsed snippet for JSON hosts; the TOML text for Codex. */
  content: unknown;
  /** The host's own CLI command that adds the same server, when it has one. */
  add_command: string | null;
  notes: string[];
}

/** Quotes an argument for a POSIX shell only when it needs it. */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function serveArgs(input: HostConfigInput): string[] {
  return [
    input.cli,
    "mcp",
    "serve",
    ...(input.profile ? ["--profile", input.profile] : []),
    ...input.allowSourceRoots.flatMap((root) => ["--allow-source-root", root]),
  ];
}

/** Seconds Codex waits for one tool call (its default, 60 s, is shorter than building debian:12 on first use). */
export const CODEX_TOOL_TIMEOUT_SEC = 300;

/** The whole file a snippet is: the preamble, then the entry at its key. */
function snippetObject(key: string[], name: string, entry: unknown, preamble: Record<string, unknown>): Record<string, unknown> {
  let value: Record<string, unknown> = { [name]: entry };
  for (const k of [...key].reverse()) value = { [k]: value };
  return { ...preamble, ...value };
}

export function hostConfig(host: HostName, input: HostConfigInput): HostConfig {
  const name = input.name ?? "pyro";
  const command = input.node;
  const args = serveArgs(input);
  const env = input.env ?? {};
  const withEnv = Object.keys(env).length ? { env } : {};
  const argv = [command, ...args].map(shellQuote).join(" ");
  const envFlags = Object.entries(env).map(([k, v]) => `--env ${shellQuote(`${k}=${v}`)} `).join("");
  const make = (
    rest: Omit<HostConfig, "host" | "name" | "command" | "args" | "env" | "text" | "content" | "preamble"> & { preamble?: Record<string, unknown> },
  ): HostConfig => {
    const preamble = rest.preamble ?? {};
    const whole = snippetObject(rest.key, name, rest.entry, preamble);
    const text = rest.format === "toml" ? tomlStringify(whole).replace(/\n*$/, "\n") : JSON.stringify(whole, null, 2) + "\n";
    return { host, name, command, args, env, ...rest, preamble, text, content: rest.format === "toml" ? text : whole };
  };
  const stdioEntry = { command, args, ...withEnv };
  switch (host) {
    case "claude-code":
      return make({
        title: "Claude Code",
        files: [
          { path: "~/.claude.json", scope: "user: every project (top-level mcpServers)" },
          { path: ".mcp.json", scope: "project: the root of your project, shared with everyone who checks it out" },
        ],
        format: "json",
        key: ["mcpServers"],
        entry: { type: "stdio", ...stdioEntry },
        // The name before --env: claude's --env takes several values and would take the name as one.
        add_command: `claude mcp add ${shellQuote(name)} ${envFlags}-- ${argv}`,
        notes: [
          "The claude command adds the server in the current project only (local scope); add --scope user before the name for every project.",
          "In Claude Code, /mcp lists the server and its tools.",
        ],
      });
    case "codex":
      return make({
        title: "Codex",
        files: [
          { path: "~/.codex/config.toml", scope: "user: every project ($CODEX_HOME/config.toml when CODEX_HOME is set)" },
          { path: ".codex/config.toml", scope: "project: a trusted project only" },
        ],
        format: "toml",
        key: ["mcp_servers"],
        entry: { command, args, tool_timeout_sec: CODEX_TOOL_TIMEOUT_SEC, ...withEnv },
        add_command: `codex mcp add ${shellQuote(name)} ${envFlags}-- ${argv}`,
        notes: [
          `tool_timeout_sec is ${CODEX_TOOL_TIMEOUT_SEC} because the first use of an environment builds it (debian:12: about a minute; Codex's default is 60 s).`,
          "In Codex, /mcp lists the server and its tools.",
        ],
      });
    case "claude-desktop":
      return make({
        title: "Claude Desktop",
        files: [
          { path: "~/.config/Claude/claude_desktop_config.json", scope: "Linux (community builds: Claude Desktop itself ships for macOS and Windows)" },
          { path: "~/Library/Application Support/Claude/claude_desktop_config.json", scope: "macOS" },
          { path: "%APPDATA%\\Claude\\claude_desktop_config.json", scope: "Windows" },
        ],
        format: "json",
        key: ["mcpServers"],
        entry: stdioEntry,
        add_command: null,
        notes: [
          "Settings > Developer > Edit Config opens the file; restart Claude Desktop after saving.",
          "pyro's sandboxes need Linux: on macOS or Windows, run pyro on a Linux machine and start it over ssh (command \"ssh\", args [\"-T\", \"HOST\", ...the command and args above]).",
        ],
      });
    case "cursor":
      return make({
        title: "Cursor",
        files: [
          { path: "~/.cursor/mcp.json", scope: "user: every project" },
          { path: ".cursor/mcp.json", scope: "project" },
        ],
        format: "json",
        key: ["mcpServers"],
        entry: stdioEntry,
        add_command: null,
        notes: ["Cursor Settings > MCP shows the server, its tools, and its log when it does not start."],
      });
    case "opencode":
      return make({
        title: "OpenCode",
        files: [
          { path: "~/.config/opencode/opencode.json", scope: "user: every project" },
          { path: "opencode.json", scope: "project: its root" },
        ],
        format: "jsonc",
        key: ["mcp"],
        preamble: { $schema: "https://opencode.ai/config.json" },
        entry: { type: "local", command: [command, ...args], enabled: true, ...(Object.keys(env).length ? { environment: env } : {}) },
        add_command: null,
        notes: ["OpenCode's command is one array: the program, then its arguments; its variables are `environment`."],
      });
    case "vscode":
      return make({
        title: "VS Code",
        files: [
          { path: "~/.config/Code/User/mcp.json", scope: "user: every workspace (MCP: Open User Configuration)" },
          { path: ".vscode/mcp.json", scope: "project: the workspace" },
        ],
        format: "jsonc",
        key: ["servers"],
        entry: { type: "stdio", ...stdioEntry },
        add_command: `code --add-mcp ${shellQuote(JSON.stringify({ name, type: "stdio", ...stdioEntry }))}`,
        notes: ["VS Code's key is `servers` (not mcpServers); MCP: List Servers shows it, and its output when it does not start."],
      });
    case "windsurf":
      return make({
        title: "Windsurf",
        files: [{ path: "~/.codeium/windsurf/mcp_config.json", scope: "user: every project" }],
        format: "json",
        key: ["mcpServers"],
        entry: stdioEntry,
        add_command: null,
        notes: ["Press refresh in Cascade's MCP panel after the file changes."],
      });
    case "gemini":
      return make({
        title: "Gemini CLI",
        files: [
          { path: "~/.gemini/settings.json", scope: "user: every project" },
          { path: ".gemini/settings.json", scope: "project: its root" },
        ],
        format: "jsonc",
        key: ["mcpServers"],
        entry: stdioEntry,
        // gemini mcp add would read the server's own --flags as its options: `pyro host install gemini` instead.
        add_command: null,
        notes: ["In Gemini CLI, /mcp lists the server and its tools."],
      });
  }
}

/**
 * The file `pyro host install` edits for a host and scope, resolved for this
 * user (HOME, XDG_CONFIG_HOME, CODEX_HOME) and, for project scope, this
 * directory. null: the host has no file for that scope.
 */
export function installPath(host: HostName, scope: HostScope, env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string | null {
  const home = env.HOME || homedir();
  const xdgConfig = env.XDG_CONFIG_HOME ? resolve(env.XDG_CONFIG_HOME) : join(home, ".config");
  if (scope === "project") {
    const project: Partial<Record<HostName, string>> = {
      "claude-code": ".mcp.json",
      codex: join(".codex", "config.toml"),
      cursor: join(".cursor", "mcp.json"),
      opencode: "opencode.json",
      vscode: join(".vscode", "mcp.json"),
      gemini: join(".gemini", "settings.json"),
    };
    const rel = project[host];
    return rel ? join(cwd, rel) : null;
  }
  switch (host) {
    case "claude-code":
      return join(home, ".claude.json");
    case "codex":
      return join(env.CODEX_HOME ? resolve(env.CODEX_HOME) : join(home, ".codex"), "config.toml");
    case "claude-desktop":
      return join(xdgConfig, "Claude", "claude_desktop_config.json");
    case "cursor":
      return join(home, ".cursor", "mcp.json");
    case "opencode":
      return join(xdgConfig, "opencode", "opencode.json");
    case "vscode":
      return join(xdgConfig, "Code", "User", "mcp.json");
    case "windsurf":
      return join(home, ".codeium", "windsurf", "mcp_config.json");
    case "gemini":
      return join(home, ".gemini", "settings.json");
  }
}
