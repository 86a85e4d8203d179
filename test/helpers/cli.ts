import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

/** The package root: tests spawn the CLI from here. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/**
 * How a test runs `pyro`: the built executable users run (`npm test` builds
 * first). Tests run it without the daemon (PYRO_DAEMON=0) unless they pass
 * PYRO_DAEMON themselves: a daemon outlives the test that started it, and
 * test/e2e/daemon.test.ts covers it with its own cleanup.
 */
export const CLI_ARGV: readonly string[] = ["dist/pyro.cjs"];
const NO_DAEMON = { PYRO_DAEMON: "0" };

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Starts `pyro ARGS` (node + CLI_ARGV) with extra environment variables; the caller owns the process. */
export function spawnCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(process.execPath, [...CLI_ARGV, ...args], { cwd: ROOT, env: { ...process.env, ...NO_DAEMON, ...env }, stdio: ["ignore", "pipe", "pipe"] });
}

/** Collects a spawned CLI's output until it exits. */
export function collect(child: ChildProcess): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Runs `pyro ARGS` to completion. */
export function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return collect(spawnCli(args, env));
}

/** Resolves when a line of the child's stderr matches (or rejects after timeoutMs). */
export function waitForStderr(child: ChildProcess, pattern: RegExp, timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    const timer = setTimeout(() => {
      child.stderr?.off("data", onData);
      reject(new Error(`timed out waiting for ${pattern} on stderr; got:\n${buffer.slice(-2000)}`));
    }, timeoutMs);
    const onData = (d: Buffer) => {
      buffer += d.toString("utf8");
      const line = buffer.split("\n").find((l) => pattern.test(l));
      if (line !== undefined) {
        clearTimeout(timer);
        child.stderr?.off("data", onData);
        resolve(line);
      }
    };
    child.stderr?.on("data", onData);
  });
}

/** Runs `pyro ARGS` to completion synchronously, with stdin input (for tests of stdin passthrough). */
export function runCliSync(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {},
): import("node:child_process").SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [...CLI_ARGV, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...NO_DAEMON, ...options.env },
    input: options.input,
    encoding: "utf8",
    timeout: options.timeoutMs ?? 120_000,
  });
}

/** Starts `pyro ARGS` with stdin, stdout and stderr piped. */
export function spawnCliPiped(args: readonly string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(process.execPath, [...CLI_ARGV, ...args], { cwd: ROOT, env: { ...process.env, ...NO_DAEMON, ...env }, stdio: ["pipe", "pipe", "pipe"] });
}
