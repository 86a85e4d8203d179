import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readSync, renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { AgentClient, type ExecHandle } from "../agent/client.js";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { BASE_ENV, execInSandbox, toArgv } from "./sandbox-exec.js";
import { PublishedPort, type Published } from "./ports.js";
import type { TaskManager } from "./tasks.js";
import { WORKSPACE } from "./workspace.js";

/**
 * Services: named long-running processes in a task (a dev server, a
 * database) with a readiness probe.
 *
 * Like a shell (runtime/shells.ts), a service is a channel on the
 * connection of the pyro process that started it (an MCP server, an SDK
 * program): it runs between execs for as long as that process lives and
 * ends with it, a kill -9 included, because the agent ends a closed
 * connection's processes. Its output goes to a log in the task's directory
 * on the host, capped (one rotation). `restart: "on-failure"` starts it
 * again, up to max_restarts times, when it exits non-zero or its sandbox
 * died (the task's sandbox is booted again).
 */

/** A service's log is rotated once past this; at most twice this is kept. */
export const SERVICE_LOG_BYTES = 4 * 1024 * 1024;
export const SERVICE_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const SERVICES_PER_TASK = 16;
export const SERVICE_RESTARTS_MAX = 10;
/** How often the probe runs while a service starts. */
const PROBE_INTERVAL_MS = 250;
/** The last log lines an error about a service quotes. */
const TAIL_LINES = 20;

export type ReadyProbe = { file: string } | { tcp_port: number } | { http: { port: number; path?: string } } | { command: string | string[] };

export interface ServiceStartArgs {
  name: string;
  command: string | string[];
  cwd?: string;
  env?: Record<string, string>;
  ready?: ReadyProbe;
  ready_timeout_seconds?: number;
  restart?: "no" | "on-failure";
  max_restarts?: number;
  /** Publish this TCP port of the sandbox on the host's 127.0.0.1 (host_port, else a free one) once ready. */
  publish?: { port: number; host_port?: number };
}

export interface ServiceInfo {
  task_id: string;
  name: string;
  state: "starting" | "running" | "exited" | "stopped" | "failed";
  ready: boolean;
  pid: number | null;
  command: string | string[];
  started_at: string;
  ready_at: string | null;
  exit_code: number | null;
  restarts: number;
  restart: "no" | "on-failure";
  log_bytes: number;
  /** Where the host reaches it: always 127.0.0.1; null when not published (or no longer). */
  published: Published | null;
}

class Service {
  state: ServiceInfo["state"] = "starting";
  ready = false;
  readyAt: string | null = null;
  exitCode: number | null = null;
  restarts = 0;
  handle: ExecHandle | null = null;
  client: AgentClient | null = null;
  stopping = false;
  logBytes = 0;
  port: PublishedPort | null = null;
  private logFd: number | null = null;
  waiters = new Set<() => void>();

  constructor(
    readonly taskId: string,
    readonly args: ServiceStartArgs,
    readonly logPath: string,
    readonly startedAt: string,
  ) {}

  readonly listeners = new Set<(chunk: Buffer) => void>();

  log(chunk: Buffer): void {
    for (const l of this.listeners) l(chunk);
    if (this.logFd === null) this.logFd = openSync(this.logPath, "a", 0o600);
    if (this.logBytes + chunk.length > SERVICE_LOG_BYTES) {
      // One rotation: the previous log is kept as .1, older output is gone.
      closeSync(this.logFd);
      renameSync(this.logPath, `${this.logPath}.1`);
      this.logFd = openSync(this.logPath, "w", 0o600);
      this.logBytes = 0;
    }
    writeSync(this.logFd, chunk);
    this.logBytes += chunk.length;
  }

  closeLog(): void {
    if (this.logFd !== null) closeSync(this.logFd);
    this.logFd = null;
  }

  wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

export class ServiceManager {
  private readonly services = new Map<string, Service>();

  constructor(private readonly tasks: TaskManager) {}

  /**
   * Starts a service and returns once its probe passed (or at once, without
   * a probe). A service that exits first, or whose probe does not pass by
   * the deadline, is stopped and the error quotes the last lines of its log.
   */
  async start(taskId: string, args: ServiceStartArgs, signal?: AbortSignal, onOutput?: (chunk: Buffer) => void): Promise<ServiceInfo> {
    const id = this.tasks.get(taskId).task_id;
    if (!SERVICE_NAME.test(args.name)) throw new PyroError("invalid_argument", `Service name ${JSON.stringify(args.name)} is not valid: use 1-63 of a-z, 0-9, - and _, starting with a letter or digit.`);
    const key = `${id}/${args.name}`;
    const existing = this.services.get(key);
    if (existing && (existing.state === "starting" || existing.state === "running")) {
      throw new PyroError("invalid_state", `Service ${args.name} already runs in task ${id}.`, { hint: "Stop it with task_service_stop first, or pick another name." });
    }
    if ([...this.services.values()].filter((s) => s.taskId === id && (s.state === "starting" || s.state === "running")).length >= SERVICES_PER_TASK) {
      throw new PyroError("limit_exceeded", `Task ${id} already runs ${SERVICES_PER_TASK} services in this process.`, { hint: "Stop one with task_service_stop." });
    }
    toArgv(args.command); // an empty command fails here, before anything starts
    const { dir } = await this.tasks.running(id, signal, `start a service in task ${id}`);
    const logs = join(dir, "services");
    mkdirSync(logs, { recursive: true, mode: 0o700 });
    const logPath = join(logs, `${args.name}.log`);
    rmSync(logPath, { force: true });
    rmSync(`${logPath}.1`, { force: true });
    const svc = new Service(id, args, logPath, new Date().toISOString());
    if (onOutput) svc.listeners.add(onOutput);
    this.services.set(key, svc);
    try {
      await this.launch(svc, signal);
      await this.waitReady(svc, signal);
      if (args.publish) svc.port = await PublishedPort.open(this.tasks, id, args.publish.port, args.publish.host_port);
    } catch (error) {
      await this.halt(svc, "failed");
      throw error;
    }
    return this.info(svc);
  }

  /** Resolves once the service is no longer starting or running (stopped, exited or failed for good). */
  async ended(taskId: string, name: string): Promise<ServiceInfo> {
    const svc = this.find(taskId, name);
    while (svc.state === "starting" || svc.state === "running") {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          svc.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, 1000);
        svc.waiters.add(done);
      });
    }
    return this.info(svc);
  }

  status(taskId: string, name: string): ServiceInfo {
    return this.info(this.find(taskId, name));
  }

  list(taskId: string): ServiceInfo[] {
    const id = this.tasks.get(taskId).task_id;
    return [...this.services.values()].filter((s) => s.taskId === id).map((s) => this.info(s));
  }

  /** The end of a service's log (its rotated part included when asked for more than the current file holds). */
  logs(taskId: string, name: string, tail = 200): { task_id: string; name: string; lines: string[]; log_bytes: number } {
    const svc = this.find(taskId, name);
    return { task_id: svc.taskId, name: svc.args.name, lines: tailLines(svc.logPath, tail), log_bytes: svc.logBytes };
  }

  async stop(taskId: string, name: string): Promise<ServiceInfo> {
    const svc = this.find(taskId, name);
    await this.halt(svc, "stopped");
    return this.info(svc);
  }

  /** Stops every service this process runs (a server shutting down); with taskId, that task's. */
  async stopAll(taskId?: string): Promise<void> {
    await Promise.all([...this.services.values()].filter((s) => taskId === undefined || s.taskId === taskId).map((s) => this.halt(s, "stopped")));
    if (taskId !== undefined) for (const [k, s] of this.services) if (s.taskId === taskId) this.services.delete(k);
  }

  private async launch(svc: Service, signal?: AbortSignal): Promise<void> {
    const { handle } = await this.tasks.running(svc.taskId, signal);
    const client = await AgentClient.connect(handle.socket, { timeoutMs: 10_000, signal });
    svc.client = client;
    svc.state = "starting";
    svc.exitCode = null;
    const exec = client.exec({
      argv: toArgv(svc.args.command),
      env: { ...BASE_ENV, ...(svc.args.env ?? {}) },
      cwd: svc.args.cwd ?? WORKSPACE,
      timeoutMs: 0,
      onStdout: (c) => svc.log(c),
      onStderr: (c) => svc.log(c),
    });
    svc.handle = exec;
    exec.result.then(
      (r) => this.exited(svc, exec, r.kind === "open_failed" ? 127 : r.kind === "signaled" ? 128 + r.value : r.value, r.kind === "open_failed" ? r.message : null),
      () => this.exited(svc, exec, null, "the sandbox connection was lost"),
    );
    const pid = await exec.opened;
    if (pid === null) {
      const r = await exec.result.catch(() => null);
      throw new PyroError("sandbox_failed", `Service ${svc.args.name} could not start: ${r && r.kind === "open_failed" ? r.message : "its process did not start"}.`, {
        hint: "Check the command and cwd.",
      });
    }
  }

  private exited(svc: Service, exec: ExecHandle, code: number | null, why: string | null): void {
    if (svc.handle !== exec) return; // an earlier run of a restarted service
    svc.client?.close();
    svc.exitCode = code;
    if (why) svc.log(Buffer.from(`\npyro: ${why}\n`));
    svc.wake();
    if (svc.stopping) return;
    const failed = code === null || code !== 0;
    if (svc.ready && failed && svc.args.restart === "on-failure" && svc.restarts < (svc.args.max_restarts ?? 3)) {
      svc.restarts++;
      svc.log(Buffer.from(`\npyro: restart ${svc.restarts} of ${svc.args.max_restarts ?? 3} (exit ${code ?? "unknown"})\n`));
      svc.ready = false;
      void this.launch(svc)
        .then(() => this.waitReady(svc))
        .catch((e: unknown) => {
          svc.log(Buffer.from(`\npyro: restart failed: ${(e as Error).message}\n`));
          void this.halt(svc, "failed");
        });
      return;
    }
    svc.state = failed ? "failed" : "exited";
    svc.closeLog();
    void svc.port?.close();
    svc.port = null;
    svc.wake();
  }

  private async waitReady(svc: Service, signal?: AbortSignal): Promise<void> {
    const probe = svc.args.ready;
    const timeoutS = svc.args.ready_timeout_seconds ?? 30;
    const deadline = Date.now() + timeoutS * 1000;
    const exec = svc.handle;
    if (probe) {
      for (;;) {
        if (signal?.aborted) throw new PyroError("cancelled", "The operation was cancelled.");
        if (svc.handle !== exec || svc.exitCode !== null || svc.state === "stopped") {
          throw new PyroError("invalid_state", `Service ${svc.args.name} exited (${svc.exitCode === null ? "its sandbox connection was lost" : `exit code ${svc.exitCode}`}) before it was ready.`, {
            hint: `Its last log lines:\n${tailLines(svc.logPath, TAIL_LINES).join("\n") || "(no output)"}`,
            details: { exit_code: svc.exitCode },
          });
        }
        const probeError = await this.probeOnce(svc, probe);
        if (probeError === null) break;
        if (Date.now() >= deadline) {
          throw new PyroError("invalid_state", `Service ${svc.args.name} was not ready within ${timeoutS} s (${describeProbe(probe)}: ${probeError}); it was stopped.`, {
            hint: `Its last log lines:\n${tailLines(svc.logPath, TAIL_LINES).join("\n") || "(no output)"}\nFix the command or the probe, or give a longer ready_timeout_seconds.`,
          });
        }
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            svc.waiters.delete(done);
            resolve();
          };
          const timer = setTimeout(done, PROBE_INTERVAL_MS);
          svc.waiters.add(done);
        });
      }
    }
    svc.ready = true;
    svc.readyAt = new Date().toISOString();
    svc.state = "running";
  }

  /** Runs the probe once in the sandbox: null when it passed, else why not. */
  private async probeOnce(svc: Service, probe: ReadyProbe): Promise<string | null> {
    let command: string[];
    if ("file" in probe) command = ["/bin/sh", "-c", 'test -e "$1"', "probe", probe.file];
    else if ("tcp_port" in probe) command = ["/run/pyro-agent", "probe", "tcp", String(probe.tcp_port)];
    else if ("http" in probe) command = ["/run/pyro-agent", "probe", "http", String(probe.http.port), probe.http.path ?? "/"];
    else command = toArgv(probe.command);
    let sandbox: { driver: Driver; handle: SandboxHandle };
    try {
      sandbox = await this.tasks.running(svc.taskId);
    } catch (e) {
      return (e as Error).message;
    }
    const r = await execInSandbox(sandbox.driver, sandbox.handle, { command, cwd: svc.args.cwd ?? WORKSPACE, env: svc.args.env, timeout_seconds: 10, max_output_bytes: 4096 }).catch((e: unknown) => ({ exit_code: -1, stderr: (e as Error).message }));
    if (r.exit_code === 0) return null;
    return r.stderr.trim().split("\n").pop() || `exit code ${r.exit_code}`;
  }

  private async halt(svc: Service, state: "stopped" | "failed"): Promise<void> {
    svc.stopping = true;
    const exec = svc.handle;
    if (exec && svc.exitCode === null) {
      exec.kill();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exec.result.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
    }
    await svc.port?.close();
    svc.port = null;
    svc.client?.close();
    if (svc.state === "starting" || svc.state === "running" || state === "failed") svc.state = state;
    svc.ready = false;
    svc.closeLog();
    svc.wake();
  }

  private find(taskId: string, name: string): Service {
    const id = this.tasks.get(taskId).task_id;
    const svc = typeof name === "string" ? this.services.get(`${id}/${name}`) : undefined;
    if (!svc) {
      throw new PyroError("unknown_service", `No service ${JSON.stringify(name)} in task ${id} (in this pyro process).`, {
        hint: "task_service_list shows the services; a service lives in the pyro process that started it.",
      });
    }
    return svc;
  }

  private info(s: Service): ServiceInfo {
    return {
      task_id: s.taskId,
      name: s.args.name,
      state: s.state,
      ready: s.ready,
      pid: s.state === "running" || s.state === "starting" ? (s.handle?.pid ?? null) : null,
      command: s.args.command,
      started_at: s.startedAt,
      ready_at: s.readyAt,
      exit_code: s.exitCode,
      restarts: s.restarts,
      restart: s.args.restart ?? "no",
      log_bytes: s.logBytes,
      published: s.port?.info ?? null,
    };
  }
}

function describeProbe(p: ReadyProbe): string {
  if ("file" in p) return `file ${p.file} did not appear`;
  if ("tcp_port" in p) return `127.0.0.1:${p.tcp_port} did not accept`;
  if ("http" in p) return `GET ${p.http.path ?? "/"} on port ${p.http.port} did not answer 2xx`;
  return "the probe command did not exit 0";
}

/** The last n lines of a log and, when it has fewer, of its rotated part before it; read at most 256 KiB. */
function tailLines(path: string, n: number): string[] {
  const read = (p: string): string => {
    if (!existsSync(p)) return "";
    const fd = openSync(p, "r");
    try {
      const size = fstatSync(fd).size;
      const len = Math.min(size, 256 * 1024);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, size - len);
      return buf.toString("utf8");
    } finally {
      closeSync(fd);
    }
  };
  let lines = read(path).split("\n");
  if (lines.length - 1 < n) lines = [...read(`${path}.1`).split("\n").slice(0, -1), ...lines];
  if (lines[lines.length - 1] === "") lines.pop();
  return lines.slice(-n);
}
