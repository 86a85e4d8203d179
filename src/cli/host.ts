import type { Command } from "commander";
import { action } from "./common.js";

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

interface PrintConfigOptions {
  profile?: string;
  allowSourceRoot: string[];
  name: string;
  json?: boolean;
}

const HOST_LIST = "claude-code, codex, claude-desktop, cursor, opencode";

export function registerHost(program: Command): void {
  const host = program
    .command("host")
    .summary("connect pyro's MCP server to an agent host (Claude Code, Codex, ...)")
    .description(
      "Configuration for MCP hosts that start `pyro mcp serve` over stdio.\n" +
        `Hosts: ${HOST_LIST}.`,
    );

  host
    .command("print-config")
    .summary("print the config snippet HOST reads to start pyro's MCP server")
    .description(
      "Print the config snippet a host reads to start pyro's MCP server.\n\n" +
        "stdout is exactly the file content (JSON, or TOML for Codex), so it can be\n" +
        "redirected into the file; where it goes, and the host's own add command\n" +
        "when it has one, are printed on stderr. The server is started as the\n" +
        "absolute path of this node and of this pyro's dist/cli.js, so the snippet\n" +
        "works from a clone without a global install.",
    )
    .argument("<host>", HOST_LIST)
    .option("--profile <profile>", "tool set passed to `pyro mcp serve`: vm-run, task-core, task-full or full (default: the server's, task-core)")
    .option("--allow-source-root <dir>", "a directory source_path may point into (repeatable; default: the current directory)", collect, [])
    .option("--name <name>", "the server's name in the host", "pyro")
    .option("--json", "print the command, args, file locations and snippet as one JSON object")
    .addHelpText(
      "after",
      "\nExamples:\n" +
        "  pyro host print-config claude-code > .mcp.json\n" +
        "  pyro host print-config codex --allow-source-root ~/src >> ~/.codex/config.toml\n" +
        "  pyro host print-config cursor --profile vm-run\n" +
        "  pyro host print-config opencode --json",
    )
    .action(
      action(async (hostName: string, opts: PrintConfigOptions) => {
        const { existsSync, statSync } = await import("node:fs");
        const { join, resolve } = await import("node:path");
        const { PyroError } = await import("../core/errors.js");
        const { packageRoot } = await import("../util/paths.js");
        const { parseProfile } = await import("../mcp/profiles.js");
        const { hostConfig, isHostName } = await import("../integrations/hosts.js");

        if (!isHostName(hostName)) {
          throw new PyroError("invalid_argument", `Unknown host "${hostName}".`, { hint: `Use one of: ${HOST_LIST}.` });
        }
        if (opts.profile !== undefined) parseProfile(opts.profile);
        const roots = (opts.allowSourceRoot.length ? opts.allowSourceRoot : [process.cwd()]).map((r) => resolve(r));
        for (const root of roots) {
          if (!existsSync(root) || !statSync(root).isDirectory()) {
            throw new PyroError("invalid_argument", `--allow-source-root ${root} is not an existing directory.`, { hint: "Pass a directory that exists on this host." });
          }
        }
        const cli = join(packageRoot(), "dist", "cli.js");
        if (!existsSync(cli)) {
          throw new PyroError("invalid_argument", `${cli} does not exist.`, { hint: "Build pyro first: npm run build (or ./scripts/setup.sh)." });
        }
        const config = hostConfig(hostName, {
          node: process.execPath,
          cli,
          name: opts.name,
          ...(opts.profile !== undefined ? { profile: opts.profile } : {}),
          allowSourceRoots: roots,
        });

        if (opts.json) {
          process.stdout.write(JSON.stringify(config, null, 2) + "\n");
          return;
        }
        const guide = [
          `${config.title}: put this in ${config.files.map((f) => `${f.path} (${f.scope})`).join(", or ")}.`,
          `If the file exists, merge the "${config.name}" entry into it.`,
          ...(config.add_command ? ["Or let the host's CLI add it:", `  ${config.add_command}`] : []),
          ...config.notes,
        ];
        process.stderr.write(guide.map((l) => `# ${l}`).join("\n") + "\n");
        process.stdout.write(config.text);
      }),
    );
}
