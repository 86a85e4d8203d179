import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { cleanupState, processesMentioning, waitFor } from "./sandbox.js";
import { Pyro } from "../../src/index.js";

/** The package root, and the built, bundled CLI that users run (`npm run build` first). */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const BUILT_CLI = join(ROOT, "dist", "cli.js");

/** node's argv for `pyro ARGS` through the built CLI; a missing build is a loud failure. */
export function cliArgs(args: readonly string[]): string[] {
  if (!existsSync(BUILT_CLI)) throw new Error(`${BUILT_CLI} is missing: run \`npm run build\` first`);
  return [BUILT_CLI, ...args];
}

/** Spawns `pyro ARGS` (built) with pipes on all three streams. */
export function spawnBuiltCli(args: readonly string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): ChildProcess {
  return spawn(process.execPath, cliArgs(args), { env: options.env ?? process.env, cwd: options.cwd ?? ROOT, stdio: ["pipe", "pipe", "pipe"] });
}

/**
 * A state directory and an allowed source root for one test file, both
 * deleted (with every VM and task left in the state) when the file ends.
 * PYRO_CACHE_DIR is the test run's (scripts/test.mjs), where busybox is built once.
 */
export function mcpFixture(t: TestContext): { stateDir: string; root: string; env: NodeJS.ProcessEnv } {
  const base = mkdtempSync(join(tmpdir(), "pyro-mcp-e2e-"));
  const stateDir = join(base, "state");
  const root = join(base, "root");
  mkdirSync(stateDir);
  mkdirSync(root);
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir }), stateDir).catch(() => undefined);
    rmSync(base, { recursive: true, force: true });
  });
  const env: Record<string, string> = { ...(process.env as Record<string, string>), PYRO_STATE_DIR: stateDir };
  delete env.PYRO_MCP_TOKEN; // a token of the caller's shell would change what the HTTP tests see
  // These tests count the server's sandboxes (each vm_run's gone after it): no warm spare beside them.
  // test/vm/mcp-spares.test.ts turns spares back on.
  env.PYRO_MCP_SPARES = "0";
  return { stateDir, root, env };
}

/** An official MCP client talking to `pyro mcp serve` (the built CLI) over stdio. */
export async function stdioClient(
  t: TestContext,
  fixture: { root: string; env: NodeJS.ProcessEnv },
  serveArgs: string[] = [],
): Promise<{ client: Client; transport: StdioClientTransport; stderr: () => string }> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: cliArgs(["mcp", "serve", "--allow-source-root", fixture.root, ...serveArgs]),
    env: fixture.env as Record<string, string>,
    cwd: fixture.root,
    stderr: "pipe",
  });
  let stderr = "";
  transport.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  const client = new Client({ name: "pyro-e2e", version: "0" });
  await client.connect(transport);
  t.after(() => client.close().catch(() => undefined));
  return { client, transport, stderr: () => stderr };
}

/**
 * `pyro mcp serve --http ...` as a child process, with the URL it printed and
 * the token: `options.token` when the test gave one (through --token-file or
 * PYRO_MCP_TOKEN in `options.env`), else the one the server generated and printed.
 */
export async function httpServer(
  t: TestContext,
  fixture: { root: string; env: NodeJS.ProcessEnv },
  serveArgs: string[] = ["--http", "127.0.0.1:0"],
  options: { token?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ child: ChildProcess; url: string; token: string; stderr: () => string }> {
  const child = spawn(process.execPath, cliArgs(["mcp", "serve", "--allow-source-root", fixture.root, ...serveArgs]), {
    env: options.env ?? fixture.env,
    cwd: fixture.root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const url = await waitFor(() => /on (http:\/\/\S+\/mcp)/.exec(stderr)?.[1], 15_000, `the server's URL (stderr: ${stderr})`);
  const token = options.token ?? (await waitFor(() => /bearer token \(generated for this run\): (\S+)/.exec(stderr)?.[1], 5_000, "the token"));
  return { child, url, token, stderr: () => stderr };
}

export function textOf(result: unknown): string {
  return ((result as CallToolResult).content ?? []).map((c) => (c.type === "text" ? c.text : "")).join("\n");
}

/** Sandbox processes still alive for a state directory. */
export function sandboxProcesses(stateDir: string): string[] {
  return processesMentioning(stateDir).map((p) => `${p.pid} ${p.cmd}`);
}

export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}
