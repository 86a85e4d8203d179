import { constants as osConstants } from "node:os";
import type { Readable } from "node:stream";
import { AgentClient } from "../agent/client.js";
import type { Driver, Isolation, LimitsInfo, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { CappedOutput } from "./output.js";

/** Default environment of every command: a predictable PATH and locale, HOME for root. */
export const BASE_ENV: Record<string, string> = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: "/root",
  LANG: "C.UTF-8",
  TERM: "dumb",
};

export interface ExecRequest {
  command: string | string[];
  env?: Record<string, string>;
  cwd?: string;
  timeout_seconds: number;
  max_output_bytes: number;
  stdin?: Readable | Buffer | null;
  /** Live output for a terminal; the result still carries the capped copy. */
  /** Returning a Promise holds the command's output until it settles (a slow reader slows the command, not our memory). */
  onStdout?: (chunk: Buffer) => void | Promise<void>;
  onStderr?: (chunk: Buffer) => void | Promise<void>;
  signal?: AbortSignal;
}

export interface ExecOutcome {
  exit_code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  timed_out: boolean;
  oom_killed: boolean;
  /** The agent's report that the command could not be started (it never ran); null when it started. */
  exec_error: string | null;
  cancelled: boolean;
  duration_ms: number;
  isolation: Isolation;
  limits: LimitsInfo | null;
}

/** A string command runs through a login shell; an argv runs as given. */
export function toArgv(command: string | string[]): string[] {
  if (typeof command === "string") {
    if (!command.trim()) throw new PyroError("invalid_argument", "The command is empty.", { hint: "Pass a command to run, e.g. `echo hello`." });
    return ["/bin/sh", "-lc", command];
  }
  if (!command.length || !command[0]) throw new PyroError("invalid_argument", "The command is empty.", { hint: "Pass a command to run, e.g. [\"echo\", \"hello\"]." });
  for (const arg of command) {
    if (arg.includes("\0")) throw new PyroError("invalid_argument", "A command argument contains a NUL byte.");
  }
  return command;
}

/**
 * The agent's failure text, fit to print: control characters (a terminal's
 * escape sequences) replaced, length capped. It arrives in a protocol frame,
 * not in the command's output, but a VM's guest kernel is not the host's to
 * trust either.
 */
export function agentText(message: string): string {
  const clean = message.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, "?");
  return clean.length > 240 ? `${clean.slice(0, 240)}...` : clean;
}

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, n]) => [n as number, name]));

export function signalName(n: number): string {
  return SIGNAL_NAMES.get(n) ?? `SIG${n}`;
}

/** Seconds the host waits past the command's own timeout before declaring the agent hung. */
const HOST_GRACE_MS = 10_000;

/**
 * Runs one command in a running sandbox through its agent and shapes the
 * outcome as the contract's exec result. Non-zero exits are data, not errors.
 */
export async function execInSandbox(driver: Driver, handle: SandboxHandle, request: ExecRequest): Promise<ExecOutcome> {
  const argv = toArgv(request.command);
  const env = { ...BASE_ENV, ...(request.env ?? {}) };
  const stdout = new CappedOutput(request.max_output_bytes);
  const stderr = new CappedOutput(request.max_output_bytes);
  const oomBefore = driver.oomKills(handle);
  const started = performance.now();
  const client = await AgentClient.connect(handle.socket, { timeoutMs: 10_000, signal: request.signal });
  // The agent enforces the timeout. If it cannot (a sandbox so overloaded that
  // its agent is starved of CPU), the host kills the whole sandbox at its own
  // deadline and reports a timeout: a timeout always ends in 124, never a hang.
  let killedByHost = false;
  const hostTimer = setTimeout(() => {
    killedByHost = true;
    void driver.kill(handle);
  }, request.timeout_seconds * 1000 + HOST_GRACE_MS);
  try {
    const run = client.exec({
      argv,
      env,
      cwd: request.cwd ?? "/",
      timeoutMs: request.timeout_seconds * 1000,
      hostDeadlineMs: request.timeout_seconds * 1000 + 2 * HOST_GRACE_MS,
      stdin: request.stdin ?? null,
      onStdout: (chunk) => {
        stdout.push(chunk);
        return request.onStdout?.(chunk);
      },
      onStderr: (chunk) => {
        stderr.push(chunk);
        return request.onStderr?.(chunk);
      },
      signal: request.signal,
    });
    const result = await run.result.catch((error: unknown) => {
      if (killedByHost) return { kind: "signaled" as const, value: 9, timed_out: true, killed: true };
      throw error;
    });
    if (killedByHost) stderr.push(Buffer.from("\npyro: the command did not end at its timeout; the whole sandbox was killed\n"));
    const duration_ms = Math.round(performance.now() - started);
    let exit_code: number;
    let sig: string | null = null;
    let timed_out = false;
    let cancelled = false;
    let guestOom = false;
    let exec_error: string | null = null;
    if (result.kind === "open_failed") {
      // Like a shell: 127 when the program does not exist, 126 when it cannot be run.
      exit_code = result.errno === 2 ? 127 : 126;
      // Reported beside the output, not in it: a command can print anything on its stderr, this field only pyro fills.
      exec_error = agentText(result.message || `cannot execute '${argv[0]}' (errno ${result.errno})`);
    } else {
      timed_out = result.timed_out;
      cancelled = result.killed && !result.timed_out;
      // A VM's own OOM killer, which the host's cgroups cannot see (the agent counts the guest's OOM kills).
      guestOom = "oom" in result && result.oom === true;
      if (result.kind === "signaled") {
        sig = signalName(result.value);
        exit_code = 128 + result.value;
      } else exit_code = result.value;
      if (timed_out) exit_code = 124;
    }
    const oom_killed = guestOom || driver.oomKills(handle) > oomBefore;
    return {
      exit_code,
      signal: sig,
      stdout: stdout.text(),
      stderr: stderr.text(),
      stdout_truncated: stdout.truncated,
      stderr_truncated: stderr.truncated,
      timed_out,
      oom_killed,
      exec_error,
      cancelled,
      duration_ms,
      isolation: driver.isolation(),
      limits: handle.limits ?? null,
    };
  } finally {
    clearTimeout(hostTimer);
    client.close();
  }
}
