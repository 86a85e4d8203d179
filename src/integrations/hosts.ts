/**
 * MCP host configuration for `pyro mcp serve`: the exact snippet each host
 * reads (`pyro host print-config HOST`). The server is started as the
 * absolute path of node plus the absolute path of pyro's CLI, so a snippet
 * works from a clone without a global install and whatever PATH the host
 * gives its servers.
 */

export const HOSTS = ["claude-code", "codex", "claude-desktop", "cursor", "opencode"] as const;
export type HostName = (typeof HOSTS)[number];

export function isHostName(value: string): value is HostName {
  return (HOSTS as readonly string[]).includes(value);
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
}

export interface HostConfig {
  host: HostName;
  title: string;
  name: string;
  /** What the host starts: command + args. */
  command: string;
  args: string[];
  /** The file the snippet belongs in, per scope/platform. */
  files: Array<{ path: string; scope: string }>;
  format: "json" | "toml";
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

/** A TOML basic string (JSON's escapes are valid TOML escapes). */
function tomlString(s: string): string {
  return JSON.stringify(s).replace(/\x7f/g, "\\u007f");
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

export function hostConfig(host: HostName, input: HostConfigInput): HostConfig {
  const name = input.name ?? "pyro";
  const command = input.node;
  const args = serveArgs(input);
  const argv = [command, ...args].map(shellQuote).join(" ");
  const json = (value: unknown) => JSON.stringify(value, null, 2) + "\n";
  const base = { host, name, command, args };
  switch (host) {
    case "claude-code": {
      const content = { mcpServers: { [name]: { type: "stdio", command, args } } };
      return {
        ...base,
        title: "Claude Code",
        files: [{ path: ".mcp.json", scope: "project: the root of your project, shared with everyone who checks it out" }],
        format: "json",
        text: json(content),
        content,
        add_command: `claude mcp add ${shellQuote(name)} -- ${argv}`,
        notes: [
          "The claude command adds the server for you in the current project only (local scope); add --scope user before the name for every project.",
          "In Claude Code, /mcp lists the server and its tools.",
        ],
      };
    }
    case "codex": {
      const text =
        `[mcp_servers.${/^[A-Za-z0-9_-]+$/.test(name) ? name : tomlString(name)}]\n` +
        `command = ${tomlString(command)}\n` +
        `args = [${args.map(tomlString).join(", ")}]\n` +
        `tool_timeout_sec = ${CODEX_TOOL_TIMEOUT_SEC}\n`;
      return {
        ...base,
        title: "Codex",
        files: [
          { path: "~/.codex/config.toml", scope: "user: every project" },
          { path: ".codex/config.toml", scope: "project: a trusted project only" },
        ],
        format: "toml",
        text,
        content: text,
        add_command: `codex mcp add ${shellQuote(name)} -- ${argv}`,
        notes: [
          `tool_timeout_sec is ${CODEX_TOOL_TIMEOUT_SEC} because the first use of an environment builds it (debian:12: about a minute; Codex's default is 60 s).`,
          "In Codex, /mcp lists the server and its tools.",
        ],
      };
    }
    case "claude-desktop": {
      const content = { mcpServers: { [name]: { command, args } } };
      return {
        ...base,
        title: "Claude Desktop",
        files: [
          { path: "~/.config/Claude/claude_desktop_config.json", scope: "Linux (community builds: Claude Desktop itself ships for macOS and Windows)" },
          { path: "~/Library/Application Support/Claude/claude_desktop_config.json", scope: "macOS" },
          { path: "%APPDATA%\\Claude\\claude_desktop_config.json", scope: "Windows" },
        ],
        format: "json",
        text: json(content),
        content,
        add_command: null,
        notes: [
          "Settings > Developer > Edit Config opens the file; restart Claude Desktop after saving.",
          "pyro's sandboxes need Linux: on macOS or Windows, run pyro on a Linux machine and start it over ssh (command \"ssh\", args [\"-T\", \"HOST\", ...the command and args above]).",
        ],
      };
    }
    case "cursor": {
      const content = { mcpServers: { [name]: { command, args } } };
      return {
        ...base,
        title: "Cursor",
        files: [
          { path: ".cursor/mcp.json", scope: "project" },
          { path: "~/.cursor/mcp.json", scope: "user: every project" },
        ],
        format: "json",
        text: json(content),
        content,
        add_command: null,
        notes: ["Cursor Settings > MCP shows the server, its tools, and its log when it does not start."],
      };
    }
    case "opencode": {
      const content = { $schema: "https://opencode.ai/config.json", mcp: { [name]: { type: "local", command: [command, ...args], enabled: true } } };
      return {
        ...base,
        title: "OpenCode",
        files: [
          { path: "opencode.json", scope: "project: its root" },
          { path: "~/.config/opencode/opencode.json", scope: "user: every project" },
        ],
        format: "json",
        text: json(content),
        content,
        add_command: null,
        notes: ["OpenCode's command is one array: the program, then its arguments."],
      };
    }
  }
}
