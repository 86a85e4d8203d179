import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { createHash } from "node:crypto";
import { constants } from "node:os";
import { join } from "node:path";
import { isDetachedError, type AgentClient, type ExecHandle } from "../agent/client.js";
import { readJsonOrNull, writeJsonAtomic } from "../util/fsutil.js";
import { selfIdentity, type ProcessIdentity } from "../util/proc.js";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { BASE_ENV, execInSandbox, toArgv } from "./sandbox-exec.js";
import { PublishedPort, type Published } from "./ports.js";
import { releaseChannel } from "./shells.js";
import { SharedAgents, keptOf } from "./shared-agents.js";
import type { TaskManager } from "./tasks.js";
import { WORKSPACE } from "./workspace.js";

/**
 * Services: named long-running processes in a task (a dev server, a
 * database) with a readiness probe.
 *
 * Like a shell (runtime/shells.ts), a service belongs to the task: it is a
 * kept channel of the sandbox's agent (key svc_<name>), held by one pyro
 * process at a time, whose connection carries its output into a log in
 * the task's directory on the host, capped (one rotation). When the holder
 * ends (a kill -9 included) the service runs on and the agent buffers its
 * output (256 KiB, the oldest dropped); the next process that asks about
 * it (status, logs, stop) attaches it, appends what the agent held to the
 * log, and holds it from then on, re-publishing its port on the same
 * 127.0.0.1 port. A note per service (services/<name>.json) carries what
 * another process needs: the arguments, times, restarts, the last state.
 * `restart: "on-failure"` starts it again, up to max_restarts times, when
 * it exits non-zero or its sandbox died: the process that holds it then
 * does that (one that holds nothing cannot see it end).
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
const { EEXIST, ENOENT, EMFILE } = constants.errno;
/** How long an attach waits for the old holder's listener to go before it re-publishes the port. */
const REPUBLISH_WAIT_MS = 3000;

/** The kept channel's key of a service: svc_<name>, or for names too long for a key (64) a digest of it. */
export function serviceKey(name: string): string {
  const key = `svc_${name}`;
  return key.length <= 64 ? key : `svc_h${createHash("sha256").update(name).digest("hex").slice(0, 40)}`;
}

/** What another process needs to take a service over (services/<name>.json). */
interface ServiceNote {
  task_id: string;
  name: string;
  key: string;
  args: ServiceStartArgs;
  started_at: string;
  ready_at: string | null;
  ready: boolean;
  restarts: number;
  state: ServiceInfo["state"];
  exit_code: number | null;
  /** The host port it was published on, to publish it on again. */
  host_port: number | null;
  holder: ProcessIdentity;
}

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
  /** Why its port is not published again after this process took it over (the port was taken), else null. */
  publish_error: string | null;
  /** This process holds it (its output flows into the log through this process). */
  held_here: boolean;
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
  publishError: string | null = null;
  /** Another process attached it: this process no longer holds it. */
  takenOver = false;
  /** This process let go of it (the SDK closed): it runs on in the task. */
  released = false;
  private logFd: number | null = null;
  waiters = new Set<() => void>();

  constructor(
    readonly taskId: string,
    readonly args: ServiceStartArgs,
    readonly logPath: string,
    readonly startedAt: string,
    readonly notePath: string,
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
  private readonly attaching = new Map<string, Promise<Service | null>>();
  private readonly agents = new SharedAgents();

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
    // Another process's service of that name: attached (its output to the log) and refused if it runs.
    const other = existing ? null : await this.holdOrNull(id, args.name, signal);
    if (other && (other.state === "starting" || other.state === "running")) {
      throw new PyroError("invalid_state", `Service ${args.name} already runs in task ${id}.`, { hint: "Stop it with task_service_stop first, or pick another name." });
    }
    const logs = join(dir, "services");
    mkdirSync(logs, { recursive: true, mode: 0o700 });
    const logPath = join(logs, `${args.name}.log`);
    rmSync(logPath, { force: true });
    rmSync(`${logPath}.1`, { force: true });
    const svc = new Service(id, args, logPath, new Date().toISOString(), join(logs, `${args.name}.json`));
    if (onOutput) svc.listeners.add(onOutput);
    this.services.set(key, svc);
    try {
      await this.launch(svc, signal);
      this.writeNote(svc); // from now on another process can find it, even if this one dies while it starts
      await this.waitReady(svc, signal);
      if (args.publish) svc.port = await PublishedPort.open(this.tasks, id, args.publish.port, args.publish.host_port);
    } catch (error) {
      await this.halt(svc, "failed");
      throw error;
    }
    this.writeNote(svc);
    return this.info(svc);
  }

  /** Resolves once the service is no longer starting or running (stopped, exited or failed for good), or another process took it over. */
  async ended(taskId: string, name: string): Promise<ServiceInfo> {
    const svc = await this.find(taskId, name);
    while ((svc.state === "starting" || svc.state === "running") && !svc.takenOver) {
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

  async status(taskId: string, name: string): Promise<ServiceInfo> {
    return this.info(await this.find(taskId, name));
  }

  /**
   * The task's services: this process's, and the others from their notes
   * joined with what the sandbox's agent keeps (the truth for whether one
   * runs). Listing does not take a service over; status, logs and stop do.
   */
  async list(taskId: string): Promise<ServiceInfo[]> {
    const id = this.tasks.get(taskId).task_id;
    const out = [...this.services.values()].filter((s) => s.taskId === id && !s.takenOver).map((s) => this.info(s));
    const dir = join(this.tasks.store.dir(id), "services");
    let names: string[] = [];
    try {
      names = readdirSync(dir).filter((n) => n.endsWith(".json"));
    } catch {
      return out;
    }
    const kept = await keptOf(this.tasks, id);
    for (const file of names) {
      const note = readJsonOrNull<ServiceNote>(join(dir, file));
      if (!note || note.task_id !== id || !SERVICE_NAME.test(note.name) || out.some((s) => s.name === note.name)) continue;
      const entry = kept?.find((e) => e.key === note.key);
      const live = note.state === "starting" || note.state === "running";
      // A note that says it runs, of a service the agent no longer keeps: it ended with no process to see it.
      const state = !live ? note.state : kept === undefined || (entry && entry.state !== "exited") ? note.state : "exited";
      out.push({
        task_id: id,
        name: note.name,
        state,
        ready: state === "running" && note.ready,
        pid: entry && entry.state !== "exited" ? entry.pid : null,
        command: note.args.command,
        started_at: note.started_at,
        ready_at: note.ready_at,
        exit_code: note.exit_code,
        restarts: note.restarts,
        restart: note.args.restart ?? "no",
        log_bytes: fileSize(join(dir, `${note.name}.log`)),
        published: null,
        publish_error: null,
        held_here: false,
      });
    }
    return out;
  }

  /** The end of a service's log (its rotated part included when asked for more than the current file holds). */
  async logs(taskId: string, name: string, tail = 200): Promise<{ task_id: string; name: string; lines: string[]; log_bytes: number }> {
    const svc = await this.find(taskId, name);
    return { task_id: svc.taskId, name: svc.args.name, lines: tailLines(svc.logPath, tail), log_bytes: svc.logBytes };
  }

  async stop(taskId: string, name: string): Promise<ServiceInfo> {
    const svc = await this.find(taskId, name);
    await this.halt(svc, "stopped");
    return this.info(svc);
  }

  /**
   * Lets go of every service this process holds (the SDK closing): each
   * runs on in its task; its published port closes with this process and is
   * published again by the next process that attaches it.
   */
  async releaseAll(): Promise<void> {
    const all = [...this.services.values()];
    this.services.clear();
    await Promise.all(
      all.map(async (svc) => {
        svc.released = true;
        await svc.port?.close();
        svc.port = null;
        await releaseChannel(svc, svc.exitCode === null ? svc.handle : null, svc.client);
        this.dropClient(svc);
        svc.closeLog();
        svc.wake();
      }),
    );
  }

  /** Stops every service this process runs (a server shutting down); with taskId, that task's. */
  async stopAll(taskId?: string): Promise<void> {
    // A task being deleted: its services in the sandbox end with it; these are this process's.
    await Promise.all([...this.services.values()].filter((s) => taskId === undefined || s.taskId === taskId).map((s) => this.halt(s, "stopped")));
    if (taskId !== undefined) for (const [k, s] of this.services) if (s.taskId === taskId) this.services.delete(k);
  }

  private async launch(svc: Service, signal?: AbortSignal): Promise<void> {
    const { handle } = await this.tasks.running(svc.taskId, signal);
    this.dropClient(svc); // an earlier run's, if any
    const client = await this.agents.acquire(handle.socket, signal);
    svc.client = client;
    svc.state = "starting";
    svc.exitCode = null;
    const exec = client.exec({
      argv: toArgv(svc.args.command),
      env: { ...BASE_ENV, ...(svc.args.env ?? {}) },
      cwd: svc.args.cwd ?? WORKSPACE,
      timeoutMs: 0,
      keep: serviceKey(svc.args.name),
      onStdout: (c) => svc.log(c),
      onStderr: (c) => svc.log(c),
    });
    svc.handle = exec;
    this.watch(svc, exec);
    const pid = await exec.opened;
    if (pid === null) {
      const r = await exec.result.catch(() => null);
      const errno = r && r.kind === "open_failed" ? r.errno : 0;
      throw new PyroError(errno === EMFILE ? "limit_exceeded" : errno === EEXIST ? "invalid_state" : "sandbox_failed", `Service ${svc.args.name} could not start: ${r && r.kind === "open_failed" ? r.message : "its process did not start"}.`, {
        hint: errno === EMFILE ? "The task's sandbox keeps at most 32 shells and services; stop a service or close a shell." : errno === EEXIST ? "It runs already (another pyro process started it): stop it first." : "Check the command and cwd.",
      });
    }
  }

  /** Follows a run of the service: its exit, a takeover by another process, or a lost connection. */
  private watch(svc: Service, exec: ExecHandle): void {
    exec.result.then(
      (r) => this.exited(svc, exec, r.kind === "open_failed" ? 127 : r.kind === "signaled" ? 128 + r.value : r.value, r.kind === "open_failed" ? r.message : null),
      (e: unknown) => {
        if (svc.released || svc.handle !== exec) return;
        if (isDetachedError(e)) {
          // Another process holds it now: it writes the log and serves the port from here on.
          svc.takenOver = true;
          void svc.port?.close();
          svc.port = null;
          this.dropClient(svc);
          svc.closeLog();
          svc.wake();
          return;
        }
        this.exited(svc, exec, null, "the sandbox connection was lost");
      },
    );
  }

  /** Gives back the service's use of the shared connection (once per run). */
  private dropClient(svc: Service): void {
    if (!svc.client) return;
    this.agents.release(svc.client);
    svc.client = null;
  }

  private writeNote(svc: Service): void {
    const note: ServiceNote = {
      task_id: svc.taskId,
      name: svc.args.name,
      key: serviceKey(svc.args.name),
      args: svc.args,
      started_at: svc.startedAt,
      ready_at: svc.readyAt,
      ready: svc.ready,
      restarts: svc.restarts,
      state: svc.state,
      exit_code: svc.exitCode,
      host_port: svc.port?.hostPort ?? (svc.args.publish ? this.lastHostPort(svc) : null),
      holder: selfIdentity(),
    };
    try {
      writeJsonAtomic(svc.notePath, note, { durable: false });
    } catch {
      /* the task was deleted meanwhile */
    }
  }

  private lastHostPort(svc: Service): number | null {
    return readJsonOrNull<ServiceNote>(svc.notePath)?.host_port ?? svc.args.publish?.host_port ?? null;
  }


  /**
   * A service of another process (or of none, after its holder died),
   * from its note: attached from the task's agent when it keeps it (its
   * buffered output appended to the log, its port published again), else
   * as the note last said. null when there is no note.
   */
  private async holdOrNull(id: string, name: string, signal?: AbortSignal): Promise<Service | null> {
    const k = `${id}/${name}`;
    const pending = this.attaching.get(k);
    if (pending) return pending;
    const p = this.attach(id, name, signal).finally(() => this.attaching.delete(k));
    this.attaching.set(k, p);
    return p;
  }

  private async attach(id: string, name: string, signal?: AbortSignal): Promise<Service | null> {
    const dir = join(this.tasks.store.dir(id), "services");
    const notePath = join(dir, `${name}.json`);
    const note = readJsonOrNull<ServiceNote>(notePath);
    if (!note || note.task_id !== id || note.name !== name) return null;
    const logPath = join(dir, `${name}.log`);
    const svc = new Service(id, note.args, logPath, note.started_at, notePath);
    svc.logBytes = fileSize(logPath);
    svc.readyAt = note.ready_at;
    svc.restarts = note.restarts;
    svc.state = note.state;
    svc.exitCode = note.exit_code;
    const k = `${id}/${name}`;
    const live = note.state === "starting" || note.state === "running";
    const sandbox = live ? await this.tasks.runningNow(id) : null;
    if (!live || !sandbox) {
      if (live) {
        svc.state = "exited"; // it ended with its sandbox, with no process to see it
        this.writeNote(svc);
      }
      this.services.set(k, svc);
      return svc;
    }
    const client = await this.agents.acquire(sandbox.handle.socket, signal);
    svc.client = client;
    const exec = client.attach(note.key, { onStdout: (c) => svc.log(c), onStderr: (c) => svc.log(c) });
    svc.handle = exec;
    this.services.set(k, svc);
    const pid = await exec.opened;
    if (pid === null) {
      const r = await exec.result.catch(() => null);
      this.dropClient(svc);
      svc.handle = null;
      if (r && r.kind === "open_failed" && r.errno !== ENOENT) throw new PyroError("sandbox_failed", `Cannot attach service ${name} of task ${id}: ${r.message}.`);
      svc.state = "exited"; // its end was read by a process that died before it noted it
      this.writeNote(svc);
      return svc;
    }
    svc.ready = note.ready;
    this.watch(svc, exec);
    if (exec.droppedBytes > 0) svc.log(Buffer.from(`\npyro: ${exec.droppedBytes} bytes of output were dropped while no pyro process held this service\n`));
    if (note.args.publish && !exec.exitedBeforeAttach) await this.republish(svc, note);
    this.writeNote(svc);
    return svc;
  }

  /** The same 127.0.0.1 port as before (the old holder's listener may take a moment to go); if it stays taken, the result says so. */
  private async republish(svc: Service, note: ServiceNote): Promise<void> {
    const publish = note.args.publish!;
    const deadline = Date.now() + REPUBLISH_WAIT_MS;
    for (;;) {
      try {
        svc.port = await PublishedPort.open(this.tasks, svc.taskId, publish.port, note.host_port ?? publish.host_port ?? 0);
        svc.publishError = null;
        return;
      } catch (e) {
        if (Date.now() >= deadline) {
          svc.publishError = `127.0.0.1:${note.host_port} could not be published again: ${(e as Error).message}`;
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private exited(svc: Service, exec: ExecHandle, code: number | null, why: string | null): void {
    if (svc.handle !== exec) return; // an earlier run of a restarted service
    this.dropClient(svc);
    svc.exitCode = code;
    if (why) svc.log(Buffer.from(`\npyro: ${why}\n`));
    svc.wake();
    if (svc.stopping) return;
    const failed = code === null || code !== 0;
    if (svc.ready && failed && svc.args.restart === "on-failure" && svc.restarts < (svc.args.max_restarts ?? 3)) {
      svc.restarts++;
      svc.log(Buffer.from(`\npyro: restart ${svc.restarts} of ${svc.args.max_restarts ?? 3} (exit ${code ?? "unknown"})\n`));
      svc.ready = false;
      // Counted in the note at once: a process that takes over after this one died mid-restart must not
      // restart past max_restarts, and every other process sees the restart as soon as it is decided.
      this.writeNote(svc);
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
    this.writeNote(svc);
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
    if (svc.restarts > 0) this.writeNote(svc);
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
    this.dropClient(svc);
    if (svc.state === "starting" || svc.state === "running" || state === "failed") svc.state = state;
    svc.ready = false;
    svc.closeLog();
    if (!svc.takenOver) this.writeNote(svc);
    svc.wake();
  }

  /** The service, held by this process: its own, else taken over from the note and the agent. */
  private async find(taskId: string, name: string): Promise<Service> {
    const id = this.tasks.get(taskId).task_id;
    const k = `${id}/${name}`;
    let svc = typeof name === "string" ? this.services.get(k) : undefined;
    if (svc?.takenOver) {
      this.services.delete(k);
      throw new PyroError("invalid_state", `Service ${name} of task ${id} was taken over by another pyro process, which holds it now (its log and published port).`, {
        hint: "Use it from that process, or call again to take it back.",
      });
    }
    if (!svc && typeof name === "string" && SERVICE_NAME.test(name)) svc = (await this.holdOrNull(id, name)) ?? undefined;
    if (!svc) {
      throw new PyroError("unknown_service", `No service ${JSON.stringify(name)} in task ${id}.`, {
        hint: "task_service_list shows the task's services; start one with task_service_start.",
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
      publish_error: s.publishError,
      held_here: !s.takenOver,
    };
  }
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
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
