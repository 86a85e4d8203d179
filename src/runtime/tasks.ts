import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { driverNamed, resolveDriver } from "../drivers/index.js";
import type { Driver, DriverName, Isolation, LimitsInfo, SandboxHandle } from "../drivers/types.js";
import { ensureEnvironment } from "../environments/index.js";
import { DEFAULTS } from "../core/defaults.js";
import { PyroError } from "../core/errors.js";
import { readJsonOrNull, treeUsage, writeJsonAtomic } from "../util/fsutil.js";
import { checkDiskQuota } from "./quota.js";
import { checkMemoryRoom } from "../drivers/memory-room.js";
import { checkCpuRoom } from "../drivers/cpu-room.js";
import { isAlive, selfIdentity, type ProcessIdentity } from "../util/proc.js";
import { pauseAt } from "../util/testhook.js";
import type { ProgressListener } from "../util/progress.js";
import { resolveSource, type ResolvedSource } from "./archive/source-path.js";
import type { ImportLimits } from "./archive/checker.js";
import { checkId, newId } from "./ids.js";
import type { PushOptions, PushResult } from "./push.js";
import { WORKSPACE } from "./workspace.js";
import { execLogsBytes, LogFile, pruneExecLogs, readExecLog, TASK_LOGS_CAP_BYTES } from "./exec-logs.js";
import { execInSandbox, type ExecOutcome } from "./sandbox-exec.js";
import { RecordStore } from "./store.js";
import { agentListens, bootSandbox, reapStraySandboxes, releaseOrphanDir } from "./boot.js";

/**
 * Tasks: persistent workspaces. A task's sandbox keeps its writable layer in
 * the task's directory, so /workspace survives every pyro process and every
 * crash of the sandbox: a dead sandbox shows as `stopped` and the next exec
 * boots a new one over the same layer.
 *
 * Operations on one task are serialized by its lock (execs, pushes, restarts),
 * so a push can never interleave with an exec; deletion kills the sandbox
 * first so it never waits behind a long exec.
 */
export type TaskState = "running" | "stopped";

/** The push path (tar parsing and packing) loads only when content moves, not for every exec. */
async function pushToSandbox(driver: Driver, handle: SandboxHandle, source: ResolvedSource, options: PushOptions): Promise<PushResult> {
  const push = await import("./push.js");
  return push.pushToSandbox(driver, handle, source, options);
}

export interface SeedInfo {
  kind: "empty" | "directory" | "tar";
  source: string | null;
  file_count: number;
  bytes: number;
  digest: string | null;
}

export interface TaskRecord {
  schema: 1;
  task_id: string;
  name: string | null;
  environment: string;
  rootfs: string;
  vcpu_count: number;
  mem_mib: number;
  /** The writable layer's size, fixed at create (records older than disk_mib lack it: DEFAULTS.disk_mib). */
  disk_mib: number;
  network: boolean;
  ttl_seconds: number | null;
  created_at: string;
  expires_at: string | null;
  last_activity_at: string;
  exec_count: number;
  /** What the exec logs hold on the host (runtime/exec-logs.ts caps it); absent in older records. */
  log_bytes?: number;
  push_count: number;
  driver: DriverName;
  isolation: Isolation;
  seed: SeedInfo;
  sandbox: SandboxHandle | null;
  /**
   * Set while `create` runs, to the creating process: the task does not exist
   * for anyone yet (get, list, exec refuse it) and, if that process dies, the
   * reaper removes it. Cleared by the record write that completes the create.
   */
  creating?: ProcessIdentity;
  /** Set (under the lock) before a delete releases anything: a delete cut short is finished by the reaper. */
  deleting?: true;
}

export interface TaskStatus {
  task_id: string;
  name: string | null;
  state: TaskState;
  environment: string;
  created_at: string;
  last_activity_at: string;
  expires_at: string | null;
  exec_count: number;
  push_count: number;
  vcpu_count: number;
  mem_mib: number;
  disk_mib: number;
  network: boolean;
  seed: SeedInfo;
  workspace: { path: string; bytes: number | null; files: number | null };
  isolation: Isolation;
  limits: LimitsInfo | null;
}

export interface JournalEntry {
  sequence: number;
  command: string | string[];
  cwd: string;
  exit_code: number;
  signal: string | null;
  timed_out: boolean;
  oom_killed: boolean;
  /** Absent in entries written before it existed. */
  exec_error?: string | null;
  started_at: string;
  finished_at: string;
  duration_ms: number;
  stdout_bytes: number;
  stderr_bytes: number;
}

export interface TaskManagerOptions {
  stateDir: string;
  driver?: string;
  onProgress?: ProgressListener;
  /** Directories source_path must lie under (undefined: anywhere the caller can read). */
  allowedSourceRoots?: readonly string[];
  importLimits?: ImportLimits;
}


export class TaskManager {
  readonly store: RecordStore<TaskRecord>;

  /** The state directory this manager keeps its tasks in (exports never write into it). */
  get stateDir(): string {
    return this.options.stateDir;
  }

  constructor(private readonly options: TaskManagerOptions) {
    this.store = new RecordStore<TaskRecord>(options.stateDir, "task");
  }

  private driverFor(record: TaskRecord): Driver {
    return driverNamed(record.driver);
  }

  get(taskId: string): TaskRecord {
    const id = checkId("task", taskId);
    const record = this.store.read(id);
    if (!record || !visible(record)) throw new PyroError("unknown_task", `No task with id ${id}.`, { hint: "List tasks with `pyro task list`." });
    return record;
  }

  private sandboxDir(id: string): string {
    return join(this.store.dir(id), "sandbox");
  }

  /** A record that says running while its sandbox is dead becomes stopped; what the sandbox left is released. */
  private refresh(record: TaskRecord): TaskRecord {
    return this.settleDead(record).record;
  }

  /**
   * refresh(), and a promise that settles once the dead sandbox's helpers are
   * gone and its disk image's loop device is detached: the reaper waits for
   * it, so a reap leaves nothing behind; a status read does not.
   */
  private settleDead(record: TaskRecord): { record: TaskRecord; released: Promise<void> } {
    if (!record.sandbox || this.driverFor(record).isRunning(record.sandbox)) return { record, released: Promise.resolve() };
    const driver = this.driverFor(record);
    const released = driver.kill(record.sandbox).catch(() => undefined);
    try {
      driver.cleanup(record.sandbox);
    } catch {
      /* a helper still leaving its group: the next refresh or reap retries */
      return { record, released };
    }
    record.sandbox = null;
    this.store.write(record.task_id, record);
    return { record, released };
  }

  /** Exists while a push into the task may be half-applied (see PushOptions.pending_marker). */
  private pushMarker(id: string): string {
    return join(this.store.dir(id), "push.pending");
  }

  /** A push that a killed process left half-applied is rolled back (or forward) before anything else uses the task. */
  private async settlePush(record: TaskRecord, handle: SandboxHandle): Promise<void> {
    const marker = this.pushMarker(record.task_id);
    if (!existsSync(marker)) return;
    const push = await import("./push.js");
    await push.recoverPush(this.driverFor(record), handle);
    rmSync(marker, { force: true });
  }

  private async boot(record: TaskRecord, signal?: AbortSignal): Promise<SandboxHandle> {
    const refreshed = this.refresh(record);
    if (refreshed.sandbox) {
      if (await agentListens(refreshed.sandbox.socket)) return refreshed.sandbox;
      // Its agent refuses connections while its init still shows in /proc: a sandbox that was
      // killed and is still tearing down its namespaces (its killer may itself have been killed).
      // It ends now and the task boots anew over the same layer.
      const driver = this.driverFor(record);
      await driver.kill(refreshed.sandbox);
      driver.cleanup(refreshed.sandbox);
      record.sandbox = null;
      this.store.write(record.task_id, record);
    }
    record.sandbox = await bootSandbox(this.driverFor(record), { ...record, disk_mib: diskOf(record), id: record.task_id }, this.sandboxDir(record.task_id), { ephemeral: false, signal, onProgress: this.options.onProgress });
    record.isolation = record.sandbox.isolation ?? record.isolation;
    this.store.write(record.task_id, record);
    return record.sandbox;
  }

  /**
   * The task's sandbox, running, for work that outlives one call (shells):
   * booted if it was stopped, a push a killed process cut short settled
   * first, under the task's lock like an exec's start. `dir` is the task's
   * directory (its record's, never inside the sandbox's layer).
   */
  /**
   * The task's running sandbox, booted if need be. `writes` names what the
   * caller starts (a shell, a service): like an exec, it is refused while the
   * layer is past a disk quota pyro checks (quota.ts), or a task refused its
   * next exec could go on writing through a shell or a service.
   */
  async running(taskId: string, signal?: AbortSignal, writes?: string): Promise<{ driver: Driver; handle: SandboxHandle; dir: string }> {
    const current = this.get(taskId);
    const id = current.task_id;
    // A sandbox that runs and answers, with no push to settle, needs no lock: a shell, a
    // service's probe or a published port's connection never waits behind a long exec.
    if (current.sandbox && !existsSync(this.pushMarker(id)) && this.driverFor(current).isRunning(current.sandbox) && (await agentListens(current.sandbox.socket))) {
      if (writes) await checkDiskQuota(this.driverFor(current), this.sandboxDir(id), current.sandbox, writes);
      return { driver: this.driverFor(current), handle: current.sandbox, dir: this.store.dir(id) };
    }
    return this.store.withLock(id, async () => {
      const record = this.get(id);
      const handle = await this.boot(record, signal);
      await this.settlePush(record, handle);
      if (writes) await checkDiskQuota(this.driverFor(record), this.sandboxDir(id), handle, writes);
      return { driver: this.driverFor(record), handle, dir: this.store.dir(id) };
    }, signal);
  }

  /**
   * The task's sandbox when it runs now, else null; never boots one (a
   * status read asks its agent what it keeps, and a stopped sandbox keeps
   * nothing).
   */
  async runningNow(taskId: string): Promise<{ driver: Driver; handle: SandboxHandle; dir: string } | null> {
    const current = this.get(taskId);
    if (!current.sandbox || !this.driverFor(current).isRunning(current.sandbox) || !(await agentListens(current.sandbox.socket))) return null;
    return { driver: this.driverFor(current), handle: current.sandbox, dir: this.store.dir(current.task_id) };
  }

  async create(
    args: { environment?: string; source_path?: string; name?: string; vcpu_count?: number; mem_mib?: number; disk_mib?: number; network?: boolean; ttl_seconds?: number; driver?: string },
    signal?: AbortSignal,
  ): Promise<TaskStatus> {
    // Check the source before anything is made, so a bad path leaves nothing behind.
    const source = args.source_path !== undefined ? resolveSource(args.source_path, this.options.allowedSourceRoots, [this.options.stateDir]) : null;
    const driver = resolveDriver(args.driver ?? this.options.driver);
    checkMemoryRoom({ mem_mib: args.mem_mib ?? DEFAULTS.mem_mib, ram_layer_mib: null });
    checkCpuRoom(args.vcpu_count ?? DEFAULTS.vcpu_count);
    const env = await ensureEnvironment(args.environment ?? DEFAULTS.environment, { onProgress: this.options.onProgress, signal });
    const now = new Date();
    const record: TaskRecord = {
      schema: 1,
      task_id: newId("task"),
      name: args.name ?? null,
      environment: env.name,
      rootfs: env.rootfs,
      vcpu_count: args.vcpu_count ?? DEFAULTS.vcpu_count,
      mem_mib: args.mem_mib ?? DEFAULTS.mem_mib,
      disk_mib: args.disk_mib ?? DEFAULTS.disk_mib,
      network: args.network ?? DEFAULTS.network,
      ttl_seconds: args.ttl_seconds ?? null,
      created_at: now.toISOString(),
      expires_at: args.ttl_seconds ? new Date(now.getTime() + args.ttl_seconds * 1000).toISOString() : null,
      last_activity_at: now.toISOString(),
      exec_count: 0,
      push_count: 0,
      driver: driver.name,
      isolation: driver.isolation(),
      seed: { kind: "empty", source: null, file_count: 0, bytes: 0, digest: null },
      sandbox: null,
      creating: selfIdentity(),
    };
    // Wholly created or not at all: until the last write clears `creating`,
    // the task is invisible and belongs to this process; if it dies, the
    // reaper removes the task with whatever its sandbox holds.
    this.store.create(record.task_id, record);
    pauseAt("task-create:record");
    try {
      await this.store.withLock(record.task_id, async () => {
        const handle = await this.boot(record, signal);
        pauseAt("task-create:booted");
        // Every environment gets a /workspace, even one imported without it.
        const mk = await execInSandbox(driver, handle, { command: ["/bin/mkdir", "-p", WORKSPACE], timeout_seconds: 30, max_output_bytes: 4096 });
        if (mk.exit_code !== 0) throw new PyroError("sandbox_failed", `Cannot create ${WORKSPACE} in the sandbox: ${mk.stderr.trim()}`);
        if (source) {
          const pushed = await pushToSandbox(driver, handle, source, { dest: WORKSPACE, limits: this.options.importLimits, signal });
          record.seed = { kind: source.kind, source: source.path, file_count: pushed.files, bytes: pushed.bytes, digest: pushed.digest };
          pauseAt("task-create:seeded");
        }
        // The seed's manifest, kept on the host: what task_diff compares with (runtime/baseline.ts).
        const baseline = await import("./baseline.js");
        await baseline.recordBaseline(driver, handle, this.store.dir(record.task_id), signal);
        record.last_activity_at = new Date().toISOString();
        delete record.creating;
        this.store.write(record.task_id, record);
      }, signal);
    } catch (error) {
      // No half-made task: a failed seed removes the task entirely.
      await this.destroy(record.task_id).catch(() => undefined);
      throw error;
    }
    return this.status(record.task_id);
  }

  async push(
    taskId: string,
    args: { source_path: string; dest?: string; delete?: boolean; exclude?: string[] },
    options: { signal?: AbortSignal; env?: Record<string, string> } = {},
  ): Promise<PushResult & { task_id: string }> {
    const id = this.get(taskId).task_id;
    const source = resolveSource(args.source_path, this.options.allowedSourceRoots, [this.options.stateDir]);
    return this.store.withLock(id, async () => {
      const record = this.get(id);
      const handle = await this.boot(record, options.signal);
      await this.settlePush(record, handle);
      await checkDiskQuota(this.driverFor(record), this.sandboxDir(id), handle, `push into task ${id}`);
      const pushed: string[] = [];
      const result = await pushToSandbox(this.driverFor(record), handle, source, {
        onEntry: (e) => {
          if (e.type !== "dir") pushed.push(e.path);
        },
        pending_marker: this.pushMarker(id),
        dest: args.dest,
        delete: args.delete,
        exclude: args.exclude,
        limits: this.options.importLimits,
        signal: options.signal,
        env: options.env,
      });
      // The pushed state becomes the baseline of the paths the push carried (runtime/baseline.ts).
      const baseline = await import("./baseline.js");
      const { workspaceRel } = await import("./files.js");
      // The push has applied: a baseline that cannot be updated now (the sandbox died, the call was
      // cancelled) must not turn it into an error; its files then show as modified in task_diff.
      await baseline
        .updateBaselineAfterPush(this.driverFor(record), handle, this.store.dir(id), { destRel: workspaceRel(result.dest, "dest"), pushed, delete: args.delete, exclude: args.exclude }, options.signal)
        .catch(() => undefined);
      const latest = this.get(id);
      latest.push_count++;
      latest.last_activity_at = new Date().toISOString();
      this.store.write(id, latest);
      return { task_id: id, ...result };
    }, options.signal);
  }

  /**
   * Runs fn with the task's sandbox booted and its lock held, after any
   * half-applied push was settled: the file API (runtime/task-files.ts) works
   * through this, so it never interleaves with an exec or a push.
   */
  async withSandbox<T>(
    taskId: string,
    fn: (ctx: { task_id: string; driver: Driver; handle: SandboxHandle; dir: string; sandboxDir: string }) => Promise<T>,
    options: { signal?: AbortSignal; writes?: string } = {},
  ): Promise<T> {
    const id = this.get(taskId).task_id;
    return this.store.withLock(id, async () => {
      const record = this.get(id);
      const handle = await this.boot(record, options.signal);
      await this.settlePush(record, handle);
      if (options.writes) await checkDiskQuota(this.driverFor(record), this.sandboxDir(id), handle, options.writes);
      const result = await fn({ task_id: id, driver: this.driverFor(record), handle, dir: this.store.dir(id), sandboxDir: this.sandboxDir(id) });
      const latest = this.get(id);
      latest.last_activity_at = new Date().toISOString();
      this.store.write(id, latest);
      return result;
    }, options.signal);
  }

  async exec(
    taskId: string,
    args: { command: string | string[]; cwd?: string; timeout_seconds?: number; env?: Record<string, string>; max_output_bytes?: number },
    stream: { onStdout?: (c: Buffer) => void; onStderr?: (c: Buffer) => void; stdin?: import("node:stream").Readable | null; signal?: AbortSignal } = {},
  ): Promise<ExecOutcome & { task_id: string; sequence: number }> {
    const id = this.get(taskId).task_id;
    return this.store.withLock(id, async () => {
      const record = this.get(id);
      const handle = await this.boot(record, stream.signal);
      await this.settlePush(record, handle);
      await checkDiskQuota(this.driverFor(record), this.sandboxDir(id), handle, `run a command in task ${id}`);
      const sequence = record.exec_count + 1;
      const logs = join(this.store.dir(id), "logs");
      mkdirSync(logs, { recursive: true });
      const out = new LogFile(join(logs, `${sequence}.stdout`));
      const err = new LogFile(join(logs, `${sequence}.stderr`));
      const cwd = args.cwd ?? WORKSPACE;
      const started = new Date();
      let outcome: ExecOutcome;
      try {
        outcome = await execInSandbox(this.driverFor(record), handle, {
          command: args.command,
          cwd,
          env: args.env,
          timeout_seconds: args.timeout_seconds ?? DEFAULTS.timeout_seconds,
          max_output_bytes: args.max_output_bytes ?? DEFAULTS.max_output_bytes,
          stdin: stream.stdin ?? null,
          onStdout: (c) => {
            out.write(c);
            stream.onStdout?.(c);
          },
          onStderr: (c) => {
            err.write(c);
            stream.onStderr?.(c);
          },
          signal: stream.signal,
        });
      } finally {
        await Promise.all([out.close(), err.close()]);
      }
      const finished = new Date();
      const entry: JournalEntry = {
        sequence,
        command: args.command,
        cwd,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        timed_out: outcome.timed_out,
        oom_killed: outcome.oom_killed,
        exec_error: outcome.exec_error,
        started_at: started.toISOString(),
        finished_at: finished.toISOString(),
        duration_ms: outcome.duration_ms,
        stdout_bytes: out.total,
        stderr_bytes: err.total,
      };
      appendFileSync(join(this.store.dir(id), "journal.jsonl"), JSON.stringify(entry) + "\n");
      const latest = this.get(id);
      // The task's logs stay under their cap: measured once (records older than log_bytes lack it), then counted.
      latest.log_bytes = record.log_bytes === undefined ? execLogsBytes(logs) : record.log_bytes + out.stored + err.stored;
      if (latest.log_bytes > TASK_LOGS_CAP_BYTES) latest.log_bytes = pruneExecLogs(logs, sequence);
      latest.exec_count = sequence;
      latest.last_activity_at = finished.toISOString();
      this.store.write(id, latest);
      return { task_id: id, sequence, ...outcome };
    }, stream.signal);
  }

  status(taskId: string): TaskStatus {
    const record = this.refresh(this.get(taskId));
    const usage = this.workspaceUsage(record);
    return {
      task_id: record.task_id,
      name: record.name,
      state: record.sandbox ? "running" : "stopped",
      environment: record.environment,
      created_at: record.created_at,
      last_activity_at: record.last_activity_at,
      expires_at: record.expires_at,
      exec_count: record.exec_count,
      push_count: record.push_count,
      vcpu_count: record.vcpu_count,
      mem_mib: record.mem_mib,
      disk_mib: diskOf(record),
      network: record.network,
      seed: record.seed,
      workspace: { path: WORKSPACE, bytes: usage.bytes, files: usage.files },
      isolation: record.isolation,
      limits: record.sandbox?.limits ?? null,
    };
  }

  /**
   * /workspace's size as the host sees it, walked without following
   * anything: in the layer's directory, or, for a layer on a disk image
   * (mounted only in the sandbox's namespaces), through the running
   * sandbox's root. A stopped task on an image shows what was last seen,
   * kept in a file of its own so that status never races a record write.
   */
  private workspaceUsage(record: TaskRecord): { bytes: number | null; files: number | null } {
    const seenFile = join(this.store.dir(record.task_id), "workspace-usage.json");
    const view = this.driverFor(record).filesView(this.sandboxDir(record.task_id), record.sandbox);
    if (!view) {
      const seen = readJsonOrNull<{ bytes?: unknown; files?: unknown }>(seenFile);
      // Unknown is said as unknown: a VM's disk is the guest kernel's, never walked by the host.
      return { bytes: Number.isSafeInteger(seen?.bytes) ? (seen!.bytes as number) : null, files: Number.isSafeInteger(seen?.files) ? (seen!.files as number) : null };
    }
    const { bytes, files } = treeUsage(join(view.root, WORKSPACE.slice(1)));
    if (view.kind === "root") {
      try {
        writeJsonAtomic(seenFile, { bytes, files }, { durable: false });
      } catch {
        /* deleted meanwhile */
      }
    }
    return { bytes, files };
  }

  list(): TaskStatus[] {
    const out: TaskStatus[] = [];
    for (const id of this.store.ids()) {
      const record = this.store.read(id);
      if (!record || !visible(record)) continue;
      try {
        out.push(this.status(id));
      } catch (error) {
        if (!(error instanceof PyroError && error.code === "unknown_task")) throw error; // deleted meanwhile
      }
    }
    return out;
  }

  /** The journal, newest last; `tail` keeps the last N entries. Output is read back from the logs, capped per entry. */
  logs(taskId: string, options: { tail?: number; max_output_bytes?: number } = {}): { task_id: string; entries: Array<JournalEntry & { stdout: string; stderr: string; stdout_truncated: boolean; stderr_truncated: boolean }> } {
    const record = this.get(taskId);
    const dir = this.store.dir(record.task_id);
    let lines: JournalEntry[] = [];
    const path = join(dir, "journal.jsonl");
    if (existsSync(path)) {
      lines = readFileSync(path, "utf8")
        .split("\n")
        .filter(Boolean)
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as JournalEntry];
          } catch {
            return []; // a line torn by a crash mid-append
          }
        });
    }
    if (options.tail !== undefined) lines = lines.slice(Math.max(0, lines.length - options.tail));
    const cap = options.max_output_bytes ?? DEFAULTS.max_output_bytes;
    return {
      task_id: record.task_id,
      entries: lines.map((e) => {
        const o = readExecLog(join(dir, "logs", `${e.sequence}.stdout`), cap, e.stdout_bytes);
        const r = readExecLog(join(dir, "logs", `${e.sequence}.stderr`), cap, e.stderr_bytes);
        return { ...e, stdout: o.text, stderr: r.text, stdout_truncated: o.truncated, stderr_truncated: r.truncated };
      }),
    };
  }

  async delete(taskId: string): Promise<{ task_id: string; deleted: true }> {
    const id = this.get(taskId).task_id;
    await this.destroy(id);
    return { task_id: id, deleted: true };
  }

  /** Kills the sandbox first (so a running exec ends now), then removes everything under the lock. */
  private async destroy(id: string): Promise<void> {
    const record = this.store.read(id);
    if (record?.sandbox) await this.driverFor(record).kill(record.sandbox);
    await this.store.withLock(id, () => this.destroyLocked(id));
  }

  /**
   * Deletes a task, its lock held. Kill -9 at any line leaves either the
   * task marked `deleting` (the reaper finishes the delete) or a trash
   * directory with nothing live in it (the next sweep frees its bytes): the
   * sandbox and its groups are gone before the directory is renamed away.
   */
  private async destroyLocked(id: string): Promise<void> {
    const latest = this.store.read(id);
    if (!latest) return;
    if (!latest.deleting) {
      latest.deleting = true;
      this.store.write(id, latest);
    }
    pauseAt("task-delete:marked");
    const driver = this.driverFor(latest);
    if (latest.sandbox) {
      await driver.kill(latest.sandbox);
      driver.cleanup(latest.sandbox);
    }
    await driver.cleanupDir(this.sandboxDir(id));
    pauseAt("task-delete:released");
    this.store.remove(id);
    pauseAt("task-delete:renamed");
  }

  /**
   * What the reaper does about tasks: deletes those past their TTL, those
   * whose creator died before the create completed, and those whose delete
   * was cut short; releases the groups and helpers of sandboxes that died
   * (the task stays, stopped); kills sandbox processes no record names (a
   * boot whose creator was killed before the record named them). A task whose
   * lock a live process holds is left to the next reap.
   */
  async reap(): Promise<Array<{ id: string; kind: "task"; reason: string }>> {
    const reaped: Array<{ id: string; kind: "task"; reason: string }> = [];
    await this.store.sweepTrash(releaseOrphanDir);
    for (const id of this.store.ids()) {
      const record = this.store.read(id);
      if (!record) continue;
      let reason: string | null = null;
      if (record.creating && !isAlive(record.creating)) reason = "creation cut short (its process is gone)";
      else if (record.deleting) reason = "deletion cut short";
      else if (record.expires_at && Date.parse(record.expires_at) <= Date.now()) reason = "ttl expired";
      const stale = !reason && record.sandbox !== null && !this.driverFor(record).isRunning(record.sandbox);
      // A stopped task whose last start was cut short (groups made, no sandbox recorded): its notes say what to free.
      const unrecorded = !reason && record.sandbox === null && existsSync(this.sandboxDir(id));
      if (!reason && !stale && !unrecorded) continue;
      await this.store.underTryLock(id, async () => {
        const latest = this.store.read(id);
        if (!latest) return;
        if (reason) {
          if (latest.sandbox) await this.driverFor(latest).kill(latest.sandbox);
          await this.destroyLocked(id);
          reaped.push({ id, kind: "task", reason });
        } else if (latest.sandbox) await this.settleDead(latest).released;
        else await this.driverFor(latest).cleanupDir(this.sandboxDir(id));
      });
    }
    // Sandbox processes no record names: a start whose process was killed right after spawning bwrap.
    for (const id of await reapStraySandboxes(this.store, (id) => this.sandboxDir(id))) reaped.push({ id, kind: "task", reason: "sandbox process no record names" });
    return reaped;
  }

}

function diskOf(record: { disk_mib?: number }): number {
  return record.disk_mib ?? DEFAULTS.disk_mib;
}

/** A task exists for callers once its create completed and until its delete starts. */
function visible(record: TaskRecord): boolean {
  return !record.creating && !record.deleting;
}

