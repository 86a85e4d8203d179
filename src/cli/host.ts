import type { Command } from "commander";
import { action } from "./common.js";

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

interface ConfigOptions {
  profile?: string;
  allowSourceRoot?: string[];
  name: string;
  json?: boolean;
  scope?: string;
  print?: boolean;
}

const HOST_LIST = "claude-code, codex, claude-desktop, cursor, opencode, vscode, windsurf, gemini";

/** The host's entry for this pyro, from the command's options (shared by print-config, install and uninstall). */
async function configFor(hostName: string, opts: ConfigOptions) {
  const { existsSync, statSync } = await import("node:fs");
  const { join, resolve } = await import("node:path");
  const { PyroError } = await import("../core/errors.js");
  const { packageRoot } = await import("../util/paths.js");
  const { parseProfile } = await import("../mcp/profiles.js");
  const { carriedEnv, hostConfig, isHostName } = await import("../integrations/hosts.js");

  if (!isHostName(hostName)) {
    throw new PyroError("invalid_argument", `Unknown host "${hostName}".`, { hint: `Use one of: ${HOST_LIST}.` });
  }
  // The name becomes a key in the host's file: one that could mean something else to a parser is refused.
  if (!opts.name || opts.name.length > 64 || /[\x00-\x1f\x7f]/.test(opts.name) || ["__proto__", "constructor", "prototype"].includes(opts.name)) {
    throw new PyroError("invalid_argument", `--name ${JSON.stringify(opts.name)} cannot name a server.`, { hint: "Use 1 to 64 printable characters, e.g. --name pyro (the default)." });
  }
  if (opts.profile !== undefined) parseProfile(opts.profile);
  const roots = (opts.allowSourceRoot?.length ? opts.allowSourceRoot : [process.cwd()]).map((r) => resolve(r));
  for (const root of roots) {
    if (!existsSync(root) || !statSync(root).isDirectory()) {
      throw new PyroError("invalid_argument", `--allow-source-root ${root} is not an existing directory.`, { hint: "Pass a directory that exists on this host." });
    }
  }
  const cli = join(packageRoot(), "dist", "cli.js");
  if (!existsSync(cli)) {
    throw new PyroError("invalid_argument", `${cli} does not exist.`, { hint: "Build pyro first: npm run build (or ./scripts/setup.sh)." });
  }
  return hostConfig(hostName, {
    node: process.execPath,
    cli,
    name: opts.name,
    ...(opts.profile !== undefined ? { profile: opts.profile } : {}),
    allowSourceRoots: roots,
    env: carriedEnv(),
  });
}

type Config = Awaited<ReturnType<typeof configFor>>;

function printConfig(config: Config, json: boolean | undefined): void {
  if (json) {
    process.stdout.write(JSON.stringify(config, null, 2) + "\n");
    return;
  }
  const guide = [
    `${config.title}: put this in ${config.files.map((f) => `${f.path} (${f.scope})`).join(", or ")}.`,
    `If the file exists, merge the "${config.name}" entry into it, or let pyro do it: pyro host install ${config.host}.`,
    ...(config.add_command ? ["Or let the host's CLI add it:", `  ${config.add_command}`] : []),
    ...config.notes,
  ];
  process.stderr.write(guide.map((l) => `# ${l}`).join("\n") + "\n");
  process.stdout.write(config.text);
}

/** The file install/uninstall edits: the host's user file, or its project file with --scope project. */
async function targetFile(config: Config, scope: string | undefined): Promise<string> {
  const { PyroError } = await import("../core/errors.js");
  const { installPath } = await import("../integrations/hosts.js");
  if (scope !== undefined && scope !== "user" && scope !== "project") {
    throw new PyroError("invalid_argument", `--scope must be user or project, not "${scope}".`, { hint: "user: the host's file for every project (the default); project: the one in the current directory." });
  }
  const path = installPath(config.host, (scope ?? "user") as "user" | "project");
  if (!path) {
    throw new PyroError("invalid_argument", `${config.title} has no project config file; it reads only ${config.files[0]!.path}.`, { hint: `Run \`pyro host install ${config.host}\` without --scope project.` });
  }
  return path;
}

function withConfigOptions(cmd: Command): Command {
  return cmd
    .argument("<host>", HOST_LIST)
    .option("--profile <profile>", "tool set passed to `pyro mcp serve`: vm-run, task-core, task-full or full (default: the server's, task-core)")
    // No default value given to commander: it would print "(default: [])" after the description's own.
    .option("--allow-source-root <dir>", "a directory source_path may point into (repeatable; default: the current directory)", collect)
    .option("--name <name>", "the server's name in the host", "pyro");
}

export function registerHost(program: Command): void {
  const host = program
    .command("host")
    .summary("connect pyro's MCP server to an agent host (Claude Code, Codex, ...)")
    .description(
      "Configuration for MCP hosts that start `pyro mcp serve` over stdio.\n" +
        "install adds pyro's entry to the host's own config file, uninstall takes it out,\n" +
        `print-config prints it. Hosts: ${HOST_LIST}.`,
    );

  withConfigOptions(
    host
      .command("install")
      .summary("add pyro's MCP server to HOST's config file (idempotent; nothing else changes)")
      .description(
        "Add pyro's MCP server to the host's own config file, keeping every other server,\n" +
          "setting and comment. Running it again changes nothing; after moving the clone or\n" +
          "changing node it refreshes the entry. A file that does not parse is left alone.\n" +
          "PYRO_CACHE_DIR and PYRO_STATE_DIR, when set, go into the entry's environment.\n" +
          "--print prints the entry instead of writing it (what print-config prints).",
      ),
  )
    .option("--scope <scope>", "user: the host's file for every project (default); project: the current directory's")
    .option("--print", "print the snippet and where it goes instead of writing the file")
    .option("--json", "print the outcome (or with --print the whole config) as JSON")
    .addHelpText(
      "after",
      "\nExamples:\n" +
        "  pyro host install claude-code\n" +
        "  pyro host install codex --allow-source-root ~/src\n" +
        "  pyro host install vscode --scope project\n" +
        "  pyro host install cursor --print",
    )
    .action(
      action(async (hostName: string, opts: ConfigOptions) => {
        const config = await configFor(hostName, opts);
        if (opts.print) return printConfig(config, opts.json);
        const path = await targetFile(config, opts.scope);
        const { installEntry } = await import("../integrations/host-files.js");
        const r = installEntry(config, path);
        if (opts.json) process.stdout.write(JSON.stringify({ host: config.host, name: config.name, ...r }, null, 2) + "\n");
        else {
          const what = { added: "added to", updated: "updated in", unchanged: "already in, unchanged:", removed: "", absent: "" }[r.change];
          process.stdout.write(`${config.title}: "${config.name}" ${what} ${r.path}\n`);
          if (r.change !== "unchanged") process.stderr.write(`# ${config.notes[config.notes.length - 1]}\n`);
        }
      }),
    );

  host
    .command("uninstall")
    .summary("take pyro's MCP server out of HOST's config file (only its entry)")
    .description("Remove pyro's entry (by --name, default pyro) from the host's config file; every other server and setting stays.")
    .argument("<host>", HOST_LIST)
    .option("--name <name>", "the server's name in the host", "pyro")
    .option("--scope <scope>", "user (default) or project, as given to install")
    .option("--json", "print the outcome as JSON")
    .action(
      action(async (hostName: string, opts: ConfigOptions) => {
        const config = await configFor(hostName, { ...opts, allowSourceRoot: [] });
        const path = await targetFile(config, opts.scope);
        const { uninstallEntry } = await import("../integrations/host-files.js");
        const r = uninstallEntry(config, path);
        if (opts.json) process.stdout.write(JSON.stringify({ host: config.host, name: config.name, ...r }, null, 2) + "\n");
        else process.stdout.write(r.change === "removed" ? `${config.title}: "${config.name}" removed from ${r.path}\n` : `${config.title}: no "${config.name}" entry in ${r.path}; nothing to do\n`);
      }),
    );

  withConfigOptions(
    host
      .command("print-config")
      .summary("print the config snippet HOST reads to start pyro's MCP server")
      .description(
        "Print the config snippet a host reads to start pyro's MCP server (the same as\n" +
          "`pyro host install HOST --print`).\n\n" +
          "stdout is exactly the file content (JSON, or TOML for Codex); where it goes, and the\n" +
          "host's own add command when it has one, are printed on stderr. The server is started\n" +
          "as the absolute path of this node and of this pyro's dist/cli.js, so the snippet works\n" +
          "from a clone without a global install.",
      ),
  )
    .option("--json", "print the command, args, file locations and snippet as one JSON object")
    .addHelpText(
      "after",
      "\nExamples:\n" +
        "  pyro host print-config claude-code > .mcp.json\n" +
        "  pyro host print-config cursor --profile vm-run\n" +
        "  pyro host print-config opencode --json",
    )
    .action(action(async (hostName: string, opts: ConfigOptions) => printConfig(await configFor(hostName, opts), opts.json)));
}
