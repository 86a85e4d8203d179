import { Option, type Command } from "commander";
import { action } from "./common.js";

/** Logged at start by a server whose default source root (its working directory) is /. */
export const WIDE_OPEN_WARNING =
  "warning: source_path and task_export may name any host directory: this server started in / and was given no --allow-source-root " +
  "(homes and their dot-entries, /etc, /run, /var/lib, the system directories and the PATH are refused, docs/security.md); pass --allow-source-root DIR to narrow it";

interface ServeOptions {
  profile?: string;
  http?: string;
  tokenFile?: string;
  /** The removed --token: only parsed to be refused with a reason. */
  token?: string | boolean;
  allowSourceRoot: string[];
  /** --no-spares: false. */
  spares: boolean;
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

export function registerMcp(program: Command): void {
  const mcp = program
    .command("mcp")
    .summary("serve pyro's tools to an AI agent host over MCP")
    .description("The Model Context Protocol server: vm_run and the task tools for any MCP host (stdio by default, or Streamable HTTP).");

  mcp
    .command("serve")
    .description(
      "Serve pyro's MCP tools on stdio (the default) or on Streamable HTTP.\n\n" +
        "Profiles: vm-run (vm_run only), task-core (vm_run + task_*; the default),\n" +
        "task-full (task-core + the workspace file tools: task_file_*, task_patch_apply,\n" +
        "task_diff, task_export; and task_shell_*: shells that keep their state, and\n" +
        "task_service_*: services with readiness probes and published ports), full\n" +
        "(every tool, with the VM lifecycle and vm_list_environments). task_export\n" +
        "writes only under an allowed root.\n\n" +
        "source_path arguments are paths on THIS host and must lie under an allowed\n" +
        "root (--allow-source-root, repeatable; default: the directory the server\n" +
        "starts in). On stdin close or SIGTERM the server aborts running calls,\n" +
        "deletes the VMs it created and leaves tasks intact.\n\n" +
        "With --http a bearer token is required on every request. It is read from\n" +
        "--token-file PATH (a regular file of yours that group and others cannot read\n" +
        "or write: chmod 600), else from $PYRO_MCP_TOKEN, else one is generated and\n" +
        "printed on stderr. It is never taken on the command line, where every local\n" +
        "user could read it (ps). A non-loopback address is refused without an\n" +
        "explicit token.",
    )
    .option("--profile <profile>", "tool set: vm-run, task-core, task-full or full", "task-core")
    .option("--http <host:port>", "serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio (port 0: a free port)")
    .option("--token-file <path>", "read the bearer token HTTP clients must send from this file (mode 600; default $PYRO_MCP_TOKEN, else generated)")
    // Removed: refused with the reason, not as an unknown option.
    .addOption(new Option("--token [token]").hideHelp())
    .option("--no-spares", "keep no warm spare sandbox per shape of vm_run (default: keep one, deleted when the server exits; also $PYRO_MCP_SPARES=0)")
    .option("--allow-source-root <dir>", "a directory source_path may point into (repeatable; default: the current directory)", collect, [])
    .addHelpText(
      "after",
      "\nExamples:\n" +
        "  pyro mcp serve\n" +
        "  pyro mcp serve --profile vm-run\n" +
        "  pyro mcp serve --allow-source-root ~/src --allow-source-root /tmp/scratch\n" +
        "  pyro mcp serve --http 127.0.0.1:8765\n" +
        "  (umask 077; openssl rand -hex 32 > ~/.config/pyro-mcp-token)\n" +
        "  pyro mcp serve --http 127.0.0.1:8765 --token-file ~/.config/pyro-mcp-token\n\n" +
        "A host config (Claude Desktop, Cursor, ...: mcpServers in its JSON config):\n" +
        '  { "mcpServers": { "pyro": { "command": "pyro", "args": ["mcp", "serve", "--allow-source-root", "/home/me/src"] } } }\n\n' +
        "Over HTTP:\n" +
        '  { "mcpServers": { "pyro": { "type": "http", "url": "http://127.0.0.1:8765/mcp",\n' +
        '                              "headers": { "Authorization": "Bearer <token>" } } } }\n\n' +
        "Try it with the MCP inspector:\n" +
        "  npx @modelcontextprotocol/inspector --cli pyro mcp serve --method tools/list",
    )
    .action(
      action(async (opts: ServeOptions) => {
        const { existsSync, statSync } = await import("node:fs");
        const { resolve } = await import("node:path");
        const { PyroError } = await import("../core/errors.js");
        const { checkToken, readTokenFile, takeEnvToken, TOKEN_ENV } = await import("../mcp/token.js");
        if (opts.token !== undefined) {
          // The value is not echoed: it is a secret, already exposed enough.
          throw new PyroError("invalid_argument", "--token was removed: a token on the command line is visible to every local user (ps, /proc/PID/cmdline) and stays in shell history.", {
            hint: `Put the token in a file only you can read and pass --token-file PATH, e.g. (umask 077; openssl rand -hex 32 > PATH), or set ${TOKEN_ENV}. Replace the token you passed: consider it exposed.`,
          });
        }
        // Out of the environment before anything is spawned: bwrap (and the
        // sandbox's init, whose environment a sandboxed command can read),
        // pasta and environment builders all inherit this process's environment.
        const envToken = takeEnvToken();
        const { parseProfile, toolsOf } = await import("../mcp/profiles.js");
        const profile = parseProfile(opts.profile);
        const roots = (opts.allowSourceRoot.length ? opts.allowSourceRoot : [process.cwd()]).map((r) => resolve(r));
        for (const root of roots) {
          if (!existsSync(root) || !statSync(root).isDirectory()) {
            throw new PyroError("invalid_argument", `--allow-source-root ${root} is not an existing directory.`, { hint: "Pass a directory that exists on this host." });
          }
        }
        const log = (line: string) => process.stderr.write(`pyro-mcp: ${line}\n`);
        // A server's default root is where it started; started in / (a container's default, some hosts'),
        // that is the whole host, less what source-path.ts refuses (homes, their dot-entries, /etc). Said, not guessed away.
        const wideOpen = !opts.allowSourceRoot.length && roots.length === 1 && roots[0] === "/";
        // A fault in one call must not take every other call down with it: log it and keep serving.
        process.on("uncaughtException", (error) => log(`internal error (still serving): ${error?.stack ?? error}`));
        process.on("unhandledRejection", (error) => log(`internal error (still serving): ${(error as Error)?.stack ?? error}`));
        const tools = toolsOf(profile).length;
        // Said at start (here and in the server's instructions), not only by every call failing.
        const unavailable = await noSandboxReason(log);
        // A server lives as long as its client: worth a booted (or restored) spare per shape of vm_run.
        const warmPool = opts.spares !== false && process.env.PYRO_MCP_SPARES !== "0";
        const onSpare = (e: import("../runtime/pool.js").SpareEvent) =>
          log(e.kind === "ready" ? `spare ${e.vm_id} ready for ${e.shape.environment} (${e.shape.driver ?? "default driver"}) in ${e.boot_ms} ms` : `vm_run served by spare ${e.vm_id}`);

        if (opts.http !== undefined) {
          const { parseHttpAddress, serveHttp } = await import("../mcp/http.js");
          const address = parseHttpAddress(opts.http);
          let token = envToken;
          if (opts.tokenFile !== undefined) token = readTokenFile(opts.tokenFile);
          else if (envToken !== undefined) checkToken(envToken, `$${TOKEN_ENV}`);
          const serving = await serveHttp({ address, token, profile, allowedSourceRoots: roots, warmPool, onSpare, unavailable });
          // Where the token came from first: the "Streamable HTTP on" line is the one that says it serves.
          if (serving.generatedToken) log(`bearer token (generated for this run): ${serving.token}`);
          else if (opts.tokenFile !== undefined) log(`bearer token: read from ${opts.tokenFile}${envToken ? ` ($${TOKEN_ENV} is ignored)` : ""}`);
          else log(`bearer token: from $${TOKEN_ENV}`);
          if (wideOpen) log(WIDE_OPEN_WARNING);
          log(`Streamable HTTP on ${serving.url} (profile ${profile}, ${tools} tool${tools === 1 ? "" : "s"}; source roots: ${roots.join(", ")})`);
          const signal = await waitForSignal();
          log(`${signal}: shutting down`);
          await serving.close();
          await (await import("../runtime/store.js")).removalsDone();
          process.exit(SIGNAL_EXIT[signal] ?? 0);
        }

        if (opts.tokenFile !== undefined) throw new PyroError("invalid_argument", "--token-file only applies to --http.", { hint: "Drop --token-file, or add --http HOST:PORT." });
        const { createServer } = await import("../mcp/server.js");
        const { LineStdioTransport } = await import("../mcp/stdio.js");
        const server = createServer({ profile, allowedSourceRoots: roots, warmPool, onSpare, unavailable });
        server.server.onerror = (error) => log(error.message);
        const transport = new LineStdioTransport(process.stdin, process.stdout);
        await server.connect(transport);
        if (wideOpen) log(WIDE_OPEN_WARNING);
        log(`serving ${tools} tool${tools === 1 ? "" : "s"} on stdio (profile ${profile}; source roots: ${roots.join(", ")})`);
        const reason = await new Promise<string>((resolveReason) => {
          process.stdin.once("end", () => resolveReason("eof"));
          process.stdin.once("close", () => resolveReason("eof"));
          void waitForSignal().then(resolveReason);
        });
        await server.shutdown();
        // Deleted VMs' directories finish going, then handles a runtime may have
        // left (sockets of killed sandboxes) must not keep a finished server alive.
        await (await import("../runtime/store.js")).removalsDone();
        process.exit(SIGNAL_EXIT[reason] ?? 0);
      }),
    );
}

/** Why no sandbox can start here (logged as a warning), or null when one can. */
async function noSandboxReason(log: (line: string) => void): Promise<string | null> {
  const { sandboxReadiness } = await import("../drivers/readiness.js");
  const ready = await sandboxReadiness();
  if (ready.ok) return null;
  log(`WARNING: no sandbox can start on this host${ready.driver ? ` (driver ${ready.driver})` : ""}, so every tool call will fail: ${ready.reason}${/pyro doctor/.test(ready.reason ?? "") ? "" : " Run `pyro doctor` to see what to install."}`);
  return ready.reason;
}

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.once(sig, () => resolve(sig));
  });
}
