import * as z from "zod";
import type { Readable } from "node:stream";
import type { TaskManager } from "../runtime/tasks.js";
import { parseArgs } from "./vm.js";
import { shellInfo } from "./task-shell.js";
import { serviceInfo } from "./task-service.js";
import { command, DEFAULTS, envVars, environmentName, execResult, isolation, limitsInfo, LIMITS, memMib, diskMib, network, timeoutSeconds, ttlSeconds, vcpuCount, driverChoice } from "./schemas.js";

/** The task operations: persistent workspaces seeded from host content. */

const taskId = z.string().describe("The task id returned by task_create, e.g. task_0123456789ab.");
const maxOutputBytes = z.number().int().min(LIMITS.max_output_bytes.min).max(LIMITS.max_output_bytes.max);

export const createTaskArgs = z
  .object({
    environment: environmentName.optional(),
    source_path: z
      .string()
      .min(1)
      .optional()
      .describe("A host directory or .tar/.tar.gz/.tgz whose content seeds /workspace (modes, symlinks inside the tree, empty dirs and mtimes kept)."),
    name: z.string().min(1).max(128).optional().describe("A label for people."),
    vcpu_count: vcpuCount.optional(),
    mem_mib: memMib.optional(),
    disk_mib: diskMib.optional(),
    network: network.optional(),
    ttl_seconds: ttlSeconds.optional().describe("Delete the task automatically after this many seconds (default: never)."),
    driver: driverChoice.optional(),
  })
  .strict();
export type CreateTaskArgs = z.infer<typeof createTaskArgs>;

export const pushTaskSyncArgs = z
  .object({
    task_id: taskId,
    source_path: z.string().min(1).describe("A host directory or .tar/.tar.gz/.tgz to import into the live workspace."),
    dest: z.string().optional().describe("Destination directory under /workspace (default /workspace)."),
    delete: z.boolean().optional().describe("Also remove files under dest that the source does not have (default false: merge)."),
    exclude: z.array(z.string().min(1)).max(256).optional().describe("Glob patterns to leave out (matched against relative paths and base names), e.g. node_modules, *.log."),
  })
  .strict();
export type PushTaskSyncArgs = z.infer<typeof pushTaskSyncArgs>;

export const execTaskArgs = z
  .object({
    task_id: taskId,
    command,
    cwd: z.string().optional().describe("Working directory (default /workspace)."),
    timeout_seconds: timeoutSeconds.optional(),
    env: envVars.optional(),
    max_output_bytes: maxOutputBytes.optional(),
  })
  .strict();
export type ExecTaskArgs = z.infer<typeof execTaskArgs>;

export const taskIdArgs = z.object({ task_id: taskId }).strict();
export const logsTaskArgs = z
  .object({
    task_id: taskId,
    tail: z.number().int().min(1).max(10_000).optional().describe("Only the last N journal entries."),
    max_output_bytes: maxOutputBytes.optional(),
  })
  .strict();

export const seedInfo = z.object({
  kind: z.enum(["empty", "directory", "tar"]),
  source: z.string().nullable(),
  file_count: z.number().int(),
  bytes: z.number().int(),
  digest: z.string().nullable(),
});

export const taskStatus = z.object({
  task_id: z.string(),
  name: z.string().nullable(),
  state: z.enum(["running", "stopped"]),
  environment: z.string(),
  created_at: z.string(),
  last_activity_at: z.string(),
  expires_at: z.string().nullable(),
  exec_count: z.number().int(),
  push_count: z.number().int(),
  vcpu_count: z.number().int(),
  mem_mib: z.number().int(),
  disk_mib: z.number().int(),
  network: z.boolean(),
  seed: seedInfo,
  workspace: z.object({
    path: z.string(),
    bytes: z.number().int().nullable().describe("null: the host cannot see it (a VM's own disk, or an image not seen since it stopped)"),
    files: z.number().int().nullable(),
  }),
  isolation,
  limits: limitsInfo.nullable(),
  shells: z.array(shellInfo).optional().describe("The shells open in the task (task_status only)."),
  services: z.array(serviceInfo).optional().describe("The services this pyro process runs in the task (task_status only)."),
});

export const pushResult = z.object({
  task_id: z.string(),
  dest: z.string(),
  files: z.number().int(),
  bytes: z.number().int(),
  digest: z.string(),
  added: z.number().int(),
  replaced: z.number().int(),
  deleted: z.number().int(),
  setid_dropped: z.array(z.string()),
  duration_ms: z.number().int(),
});

export const journalEntry = z.object({
  sequence: z.number().int(),
  command: z.union([z.string(), z.array(z.string())]),
  cwd: z.string(),
  exit_code: z.number().int(),
  signal: z.string().nullable(),
  timed_out: z.boolean(),
  oom_killed: z.boolean(),
  exec_error: z.string().nullable().optional().describe("pyro's report that the command could not be started (absent in entries of older releases)."),
  started_at: z.string(),
  finished_at: z.string(),
  duration_ms: z.number().int(),
  stdout_bytes: z.number().int(),
  stderr_bytes: z.number().int(),
  stdout: z.string(),
  stderr: z.string(),
  stdout_truncated: z.boolean(),
  stderr_truncated: z.boolean(),
});
export const taskLogs = z.object({ task_id: z.string(), entries: z.array(journalEntry) });
export const taskList = z.object({ tasks: z.array(taskStatus) });
export const taskDeleted = z.object({ task_id: z.string(), deleted: z.literal(true) });
export { execResult };

export interface TaskStreamOptions {
  stdin?: Readable | null;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  signal?: AbortSignal;
}

export async function createTask(tasks: TaskManager, raw: CreateTaskArgs, signal?: AbortSignal): Promise<z.infer<typeof taskStatus>> {
  return tasks.create(parseArgs(createTaskArgs, raw), signal);
}

export async function pushTaskSync(tasks: TaskManager, raw: PushTaskSyncArgs, signal?: AbortSignal): Promise<z.infer<typeof pushResult>> {
  const args = parseArgs(pushTaskSyncArgs, raw);
  const { task_id, ...rest } = args;
  return tasks.push(task_id, rest, { signal });
}

export async function execTask(tasks: TaskManager, raw: ExecTaskArgs, stream: TaskStreamOptions = {}): Promise<z.infer<typeof execResult>> {
  const { task_id, ...args } = parseArgs(execTaskArgs, raw);
  const { cancelled: _c, ...result } = await tasks.exec(task_id, { ...args, max_output_bytes: args.max_output_bytes ?? DEFAULTS.max_output_bytes }, stream);
  return result;
}
