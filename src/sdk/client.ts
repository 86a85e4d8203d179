import type * as z from "zod";
import { VmManager } from "../runtime/vms.js";
import type { SpareEvent } from "../runtime/pool.js";
import { stateDir as defaultStateDir } from "../util/paths.js";
import type { ProgressListener } from "../util/progress.js";
import * as vmOps from "../operations/vm.js";
import * as taskOps from "../operations/task.js";
import * as shellOps from "../operations/task-shell.js";
import * as serviceOps from "../operations/task-service.js";
import { ShellManager } from "../runtime/shells.js";
import { ServiceManager } from "../runtime/services.js";
import * as envOps from "../operations/env.js";
import * as fileOps from "../operations/task-files.js";
import { TaskManager } from "../runtime/tasks.js";
import type { DriverChoice } from "../drivers/index.js";
import { PyroError } from "../core/errors.js";
import { withHintFor } from "../core/hints.js";

export interface PyroOptions {
  /** Where VM and task records live (default $PYRO_STATE_DIR or ~/.local/state/pyro-mcp). */
  stateDir?: string;
  /** Default driver for new sandboxes (default $PYRO_DRIVER or auto). */
  driver?: DriverChoice;
  /** Progress of long work, e.g. an environment being pulled on first use. */
  onProgress?: ProgressListener;
  /** Directories `source_path` must lie under (default: anywhere this process can read). */
  allowedSourceRoots?: string[];
  /**
   * Keep a warm spare sandbox for each shape of runInVm seen, so that the next
   * run only has to exec (default false). For long-lived processes; call
   * `close()` to delete the spares.
   */
  warmPool?: boolean;
  /** With `warmPool`: told when a spare is ready and when a run is served by one. */
  onSpare?: (event: SpareEvent) => void;
  /**
   * @internal Whose words the hints of thrown errors use: "sdk" (the default:
   * SDK methods and arguments, e.g. `listTasks()`) or "cli" (the runtime's own,
   * for the CLI, and for the MCP server and tool wrappers, which say them in
   * their tools' names).
   */
  errorHints?: "sdk" | "cli";
}

export type ExecResult = z.infer<typeof vmOps.execResult>;
export type VmStatus = z.infer<typeof vmOps.vmStatus>;
export type TaskStatus = z.infer<typeof taskOps.taskStatus>;
export type PushResult = z.infer<typeof taskOps.pushResult>;
export type TaskLogs = z.infer<typeof taskOps.taskLogs>;
export type ShellInfo = z.infer<typeof shellOps.shellInfo>;
export type ShellReadResult = z.infer<typeof shellOps.shellRead>;
export type ServiceInfo = z.infer<typeof serviceOps.serviceInfo>;
export type { StreamOptions } from "../operations/vm.js";

/**
 * Every method of this object (its class's and its subclasses', present and
 * future) rethrows a PyroError with its hint in SDK words: an SDK caller reads
 * `listTasks()`, not `pyro task list`.
 */
function sdkHints(client: object): void {
  const seen = new Set<string>();
  for (let proto = Object.getPrototypeOf(client); proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      const fn = (proto as Record<string, unknown>)[name];
      if (name === "constructor" || seen.has(name) || typeof fn !== "function") continue;
      seen.add(name);
      Object.defineProperty(client, name, {
        configurable: true,
        writable: true,
        value: function (this: unknown, ...args: unknown[]) {
          const sdk = (error: unknown) => (error instanceof PyroError ? withHintFor(error, { kind: "sdk" }) : error);
          try {
            const out = (fn as (...a: unknown[]) => unknown).apply(this, args);
            return out instanceof Promise ? out.catch((error: unknown) => Promise.reject(sdk(error))) : out;
          } catch (error) {
            throw sdk(error);
          }
        },
      });
    }
  }
}

/**
 * The SDK without its MCP door: what `Pyro` is, less `createServer` (sdk/pyro.ts),
 * so that the MCP server, which is built on it, imports nothing that imports it back.
 *
 * The SDK entry point. Arguments and results use the same snake_case fields
 * as the MCP tools; method names are camelCase. A guest command that exits
 * non-zero is a result, not an exception; failures of pyro itself throw
 * PyroError with a stable `code`.
 *
 * ```ts
 * const pyro = new Pyro();
 * const r = await pyro.runInVm({ environment: "debian:12", command: "git --version" });
 * console.log(r.exit_code, r.stdout, r.isolation);
 * ```
 */
export class PyroClient {
  /** @internal */
  readonly vms: VmManager;
  /** @internal */
  readonly tasks: TaskManager;
  /** @internal */
  readonly shells: ShellManager;
  /** @internal */
  readonly services: ServiceManager;

  private readonly onProgress: ProgressListener | undefined;

  constructor(options: PyroOptions = {}) {
    this.onProgress = options.onProgress;
    const stateDir = options.stateDir ?? defaultStateDir();
    this.vms = new VmManager({ stateDir, driver: options.driver, onProgress: options.onProgress, warmPool: options.warmPool, onSpare: options.onSpare });
    this.tasks = new TaskManager({ stateDir, driver: options.driver, onProgress: options.onProgress, allowedSourceRoots: options.allowedSourceRoots });
    if ((options.errorHints ?? "sdk") === "sdk") sdkHints(this);
    this.shells = new ShellManager(this.tasks);
    this.services = new ServiceManager(this.tasks);
  }

  /** Deletes the warm spares (with `warmPool`); a no-op otherwise. Runs still work afterwards, without spares. */
  async close(): Promise<void> {
    // Shells and services belong to their tasks: they run on, for the next process to attach.
    await this.shells.releaseAll();
    await this.services.releaseAll();
    await this.vms.pool?.close();
  }

  /** One command, one ephemeral sandbox, automatic cleanup. */
  runInVm(args: vmOps.RunInVmArgs, stream?: vmOps.StreamOptions): Promise<ExecResult> {
    return vmOps.runInVm(this.vms, args, stream);
  }

  /** Creates a VM record (no sandbox runs until it is started or exec'd). */
  async createVm(args: vmOps.CreateVmArgsT = {}): Promise<VmStatus> {
    const parsed = vmOps.parseArgs(vmOps.createVmArgs, args);
    const record = await this.vms.create(parsed);
    return this.vms.status(record.vm_id);
  }

  async startVm(args: { vm_id: string }): Promise<VmStatus> {
    const { vm_id } = vmOps.parseArgs(vmOps.vmIdArgs, args);
    await this.vms.start(vm_id);
    return this.vms.status(vm_id);
  }

  /** Runs one command in the VM, then deletes the VM. */
  execVm(args: vmOps.ExecVmArgs, stream?: vmOps.StreamOptions): Promise<ExecResult> {
    return vmOps.execVm(this.vms, args, stream);
  }

  async statusVm(args: { vm_id: string }): Promise<VmStatus> {
    const { vm_id } = vmOps.parseArgs(vmOps.vmIdArgs, args);
    return this.vms.status(vm_id);
  }

  async listVms(): Promise<{ vms: VmStatus[] }> {
    return { vms: this.vms.list() };
  }

  async stopVm(args: { vm_id: string }): Promise<VmStatus> {
    const { vm_id } = vmOps.parseArgs(vmOps.vmIdArgs, args);
    return this.vms.stop(vm_id);
  }

  async deleteVm(args: { vm_id: string }): Promise<{ vm_id: string; deleted: true }> {
    const { vm_id } = vmOps.parseArgs(vmOps.vmIdArgs, args);
    return this.vms.delete(vm_id);
  }

  async networkInfoVm(args: { vm_id: string }): Promise<z.infer<typeof vmOps.vmNetworkInfo>> {
    const { vm_id } = vmOps.parseArgs(vmOps.vmIdArgs, args);
    return this.vms.networkInfo(vm_id);
  }

  /** Deletes expired VMs and tasks, and whatever crashed pyro processes left behind. */
  async reapExpired(): Promise<z.infer<typeof vmOps.reapResult>> {
    return { reaped: [...(await this.vms.reap()), ...(await this.tasks.reap())] };
  }

  /** The environment catalog and imports, with each one's state (not_pulled, ready, broken), size and build time. */
  listEnvironments(): Promise<envOps.EnvListResult> {
    return envOps.envList({});
  }

  /** Builds an environment into the cache (a no-op when ready; `force` rebuilds). */
  pullEnvironment(args: envOps.EnvPullArgs, options: { signal?: AbortSignal; onProgress?: ProgressListener } = {}): Promise<envOps.EnvPullResult> {
    return envOps.envPull(args, { signal: options.signal, onProgress: options.onProgress ?? this.onProgress });
  }

  /** One environment's manifest and state; `verify` recomputes its rootfs digest. */
  inspectEnvironment(args: envOps.EnvInspectArgs, options: { signal?: AbortSignal } = {}): Promise<envOps.EnvInspectResult> {
    return envOps.envInspect(args, { signal: options.signal, onProgress: this.onProgress });
  }

  /** Removes partial builds, broken entries and stale locks; `all` also unused ready environments. */
  pruneEnvironments(args: envOps.EnvPruneArgs = {}): Promise<envOps.EnvPruneResult> {
    return envOps.envPrune(args);
  }

  /** Imports a rootfs directory or tarball as a named environment, checked like any archive that enters pyro. */
  importEnvironment(args: envOps.EnvImportArgs, options: { signal?: AbortSignal } = {}): Promise<envOps.EnvImportResult> {
    return envOps.envImport(args, { signal: options.signal, onProgress: this.onProgress });
  }

  /** Creates a task: a persistent /workspace, seeded from `source_path` when given. */
  createTask(args: taskOps.CreateTaskArgs = {}, options: { signal?: AbortSignal } = {}): Promise<TaskStatus> {
    return taskOps.createTask(this.tasks, args, options.signal);
  }

  /** Imports later host changes into the live workspace; all or nothing. */
  pushTaskSync(args: taskOps.PushTaskSyncArgs, options: { signal?: AbortSignal } = {}): Promise<PushResult> {
    return taskOps.pushTaskSync(this.tasks, args, options.signal);
  }

  /** Runs a command in the task's workspace (cwd /workspace by default); journaled. */
  execTask(args: taskOps.ExecTaskArgs, stream?: taskOps.TaskStreamOptions): Promise<ExecResult> {
    return taskOps.execTask(this.tasks, args, stream);
  }

  /** The task's state, with the shells open in it (this process's and other processes'). */
  async statusTask(args: { task_id: string }): Promise<TaskStatus> {
    const { task_id } = vmOps.parseArgs(taskOps.taskIdArgs, args);
    return { ...this.tasks.status(task_id), shells: await this.shells.list(task_id), services: await this.services.list(task_id) };
  }

  async logsTask(args: { task_id: string; tail?: number; max_output_bytes?: number }): Promise<TaskLogs> {
    const { task_id, ...rest } = vmOps.parseArgs(taskOps.logsTaskArgs, args);
    return this.tasks.logs(task_id, rest);
  }

  async listTasks(): Promise<{ tasks: TaskStatus[] }> {
    return { tasks: this.tasks.list() };
  }

  /** Lists a directory of the task's /workspace (names, kinds, sizes, modes; symlinks shown, never followed). */
  listTaskFiles(args: fileOps.FileListArgs, options: { signal?: AbortSignal } = {}): Promise<z.infer<typeof fileOps.fileListResult>> {
    return fileOps.listTaskFiles(this.tasks, args, options.signal);
  }

  /** Reads a file of the task's /workspace: text or base64, a byte range, at most `length` bytes. */
  readTaskFile(args: fileOps.FileReadArgs, options: { signal?: AbortSignal } = {}): Promise<z.infer<typeof fileOps.fileReadResult>> {
    return fileOps.readTaskFile(this.tasks, args, options.signal);
  }

  /** Writes a file of the task's /workspace atomically (parents created, mode set). */
  writeTaskFile(args: fileOps.FileWriteArgs, options: { signal?: AbortSignal } = {}): Promise<z.infer<typeof fileOps.fileWriteResult>> {
    return fileOps.writeTaskFile(this.tasks, args, options.signal);
  }

  /** Applies a unified diff to the task's /workspace, all or nothing. */
  applyTaskPatch(args: fileOps.PatchApplyArgs, options: { signal?: AbortSignal } = {}): Promise<z.infer<typeof fileOps.patchApplyResult>> {
    return fileOps.applyTaskPatch(this.tasks, args, options.signal);
  }

  /** What changed in /workspace since the baseline (the seed, or the last push): added, modified, deleted, unified diffs of text files. */
  diffTask(args: fileOps.DiffArgs, options: { signal?: AbortSignal } = {}): Promise<z.infer<typeof fileOps.diffResult>> {
    return fileOps.diffTask(this.tasks, args, options.signal);
  }

  /** Exports the workspace (a subtree, or only changed files) to a new host directory or .tar, every entry re-validated on the host. */
  exportTask(args: fileOps.ExportArgs, options: { signal?: AbortSignal } = {}): Promise<z.infer<typeof fileOps.exportResult>> {
    return fileOps.exportTask(this.tasks, args, options.signal);
  }

  async deleteTask(args: { task_id: string }): Promise<{ task_id: string; deleted: true }> {
    const { task_id } = vmOps.parseArgs(taskOps.taskIdArgs, args);
    await this.shells.closeAll(task_id);
    await this.services.stopAll(task_id);
    return this.tasks.delete(task_id);
  }

  /**
   * Opens a shell (a PTY running bash, else sh) in the task's workspace. It
   * keeps its cwd, variables and background jobs between calls, and belongs
   * to the task: it runs until closeTaskShell or deleteTask, also after this
   * process ends (any pyro process's next call on it attaches it, with what
   * it printed meanwhile). With `onOutput`, raw output also streams there as
   * it arrives.
   */
  openTaskShell(args: shellOps.OpenShellArgs, options: { signal?: AbortSignal; onOutput?: (chunk: Buffer) => void } = {}): Promise<ShellInfo> {
    return shellOps.openShell(this.shells, args, options);
  }

  /** Types into the shell's terminal ("\n" runs a command). */
  writeTaskShell(args: shellOps.WriteShellArgs): Promise<z.infer<typeof shellOps.shellWritten>> {
    return shellOps.writeShell(this.shells, args);
  }

  /** What the shell printed since the last read, optionally waiting for a text or for output to go idle. */
  readTaskShell(args: shellOps.ReadShellArgs, options: { signal?: AbortSignal } = {}): Promise<ShellReadResult> {
    return shellOps.readShell(this.shells, args, options.signal);
  }

  /** SIGINT/SIGQUIT/SIGTSTP to the foreground job (through the terminal); others to the shell. */
  signalTaskShell(args: shellOps.SignalShellArgs): Promise<z.infer<typeof shellOps.shellSignalled>> {
    return shellOps.signalShell(this.shells, args);
  }

  resizeTaskShell(args: shellOps.ResizeShellArgs): Promise<ShellInfo> {
    return shellOps.resizeShell(this.shells, args);
  }

  /**
   * Starts a named long-running process in the task and returns once its
   * `ready` probe passed (a file appears, a TCP port accepts, an HTTP GET
   * answers 2xx, a command exits 0), or fails with its last log lines. Like
   * a shell it belongs to the task: stopTaskService or deleteTask end it;
   * close() and the end of this process leave it running (the next process
   * that asks about it holds it: its log, its published port).
   */
  startTaskService(args: serviceOps.StartServiceArgs, options: { signal?: AbortSignal; onOutput?: (chunk: Buffer) => void } = {}): Promise<ServiceInfo> {
    return serviceOps.startService(this.services, args, options);
  }

  statusTaskService(args: serviceOps.ServiceArgs): Promise<ServiceInfo> {
    return serviceOps.statusService(this.services, args);
  }

  /** The last lines of a service's log (kept on disk, capped). */
  logsTaskService(args: serviceOps.ServiceLogsArgs): Promise<z.infer<typeof serviceOps.serviceLogs>> {
    return serviceOps.logsService(this.services, args);
  }

  stopTaskService(args: serviceOps.ServiceArgs): Promise<ServiceInfo> {
    return serviceOps.stopService(this.services, args);
  }

  listTaskServices(args: { task_id: string }): Promise<z.infer<typeof serviceOps.serviceList>> {
    return serviceOps.listServices(this.services, args);
  }

  /** Ends the shell and every process it started. */
  closeTaskShell(args: shellOps.ShellIdArgs): Promise<z.infer<typeof shellOps.shellClosed>> {
    return shellOps.closeShell(this.shells, args);
  }
}
