import * as z from "zod";
import type { TaskManager } from "../runtime/tasks.js";
import * as files from "../runtime/task-files.js";
import { parseArgs } from "./vm.js";

/** The file operations of a task: list, read, write, patch, diff, export (runtime/task-files.ts). */

const taskId = z.string().describe("The task id returned by task_create, e.g. task_0123456789ab.");
const wsPath = z
  .string()
  .min(1)
  .max(4096)
  .describe("A path under /workspace: absolute (/workspace/app/main.c) or relative to /workspace (app/main.c). `..` and symlinks are never followed.");

export const fileListArgs = z.object({ task_id: taskId, path: wsPath.optional().describe("The directory to list (default /workspace).") }).strict();
export const fileEntry = z.object({
  name: z.string(),
  kind: z.enum(["file", "dir", "symlink", "fifo", "socket", "device", "other"]),
  size: z.number().int(),
  mode: z.number().int().describe("Permission bits, e.g. 420 (0644)."),
  mtime: z.number().int().describe("Modification time, seconds since the epoch."),
  target: z.string().optional().describe("A symlink's target (never followed)."),
});
export const fileListResult = z.object({ task_id: z.string(), path: z.string(), entries: z.array(fileEntry), truncated: z.boolean() });

export const fileReadArgs = z
  .object({
    task_id: taskId,
    path: wsPath,
    offset: z.number().int().min(0).optional().describe("First byte to read (default 0)."),
    length: z.number().int().min(1).max(files.MAX_READ_BYTES).optional().describe(`Most bytes to return (default ${files.DEFAULT_READ_BYTES}); next_offset says where the rest starts.`),
    encoding: z.enum(["auto", "text", "base64"]).optional().describe('"auto" (default): text for UTF-8 files, base64 for binary ones; "text" refuses a binary file; "base64" always.'),
  })
  .strict();
export const fileReadResult = z.object({
  task_id: z.string(),
  path: z.string(),
  size: z.number().int().describe("The whole file's size."),
  mode: z.number().int(),
  offset: z.number().int(),
  length: z.number().int().describe("Bytes in content (before base64)."),
  encoding: z.enum(["text", "base64"]),
  content: z.string(),
  eof: z.boolean(),
  next_offset: z.number().int().nullable().describe("Where to read on to get the rest; null at the end of the file."),
});

export const fileWriteArgs = z
  .object({
    task_id: taskId,
    path: wsPath,
    content: z.string().max(files.MAX_WRITE_BYTES * 2).describe("The whole new content."),
    encoding: z.enum(["text", "base64"]).optional().describe('"text" (default, UTF-8) or "base64" for binary content.'),
    mode: z.number().int().min(0).max(0o1777).optional().describe("Permission bits (default 420 = 0644; 493 = 0755 for scripts)."),
  })
  .strict();
export const fileWriteResult = z.object({ task_id: z.string(), path: z.string(), bytes: z.number().int(), mode: z.number().int() });

export const patchApplyArgs = z
  .object({
    task_id: taskId,
    patch: z.string().min(1).max(files.MAX_WRITE_BYTES).describe("A unified diff (diff -u or git diff); paths relative to /workspace, a/ and b/ prefixes stripped. New files come from /dev/null, deleted ones go to it."),
    strip: z.number().int().min(0).max(32).optional().describe("Leading path components to strip, like patch -p (default: strip git's a/ and b/)."),
  })
  .strict();
export const patchApplyResult = z.object({
  task_id: z.string(),
  files: z.array(z.object({ path: z.string(), status: z.enum(["added", "modified", "deleted"]), hunks: z.number().int() })),
  added: z.number().int(),
  modified: z.number().int(),
  deleted: z.number().int(),
});

export const DIFF_DEFAULTS = { max_diff_bytes: 256 * 1024, max_file_bytes: 256 * 1024 } as const;
export const diffArgs = z
  .object({
    task_id: taskId,
    path: wsPath.optional().describe("Only changes under this directory (default all of /workspace)."),
    max_diff_bytes: z.number().int().min(1024).max(16 * 1024 * 1024).optional().describe(`Most bytes of diff text (default ${DIFF_DEFAULTS.max_diff_bytes}); past it files are named without their diff and truncated is true.`),
    max_file_bytes: z.number().int().min(1024).max(1024 * 1024).optional().describe(`Files larger than this are named, not diffed (default ${DIFF_DEFAULTS.max_file_bytes}).`),
  })
  .strict();
const change = z.object({
  path: z.string(),
  status: z.enum(["added", "modified", "deleted"]),
  kind: z.string(),
  old_kind: z.string().nullable(),
  mode: z.number().int().nullable(),
  old_mode: z.number().int().nullable(),
  size: z.number().int().nullable(),
  old_size: z.number().int().nullable(),
  binary: z.boolean().nullable(),
  diff: z.string().nullable(),
  note: z.string().nullable(),
});
export const diffResult = z.object({
  task_id: z.string(),
  baseline_at: z.string().describe("When the baseline was last set: the task's create, or its last push."),
  added: z.array(z.string()),
  modified: z.array(z.string()),
  deleted: z.array(z.string()),
  changes: z.array(change),
  patch: z.string().describe("Every text diff, concatenated (git apply takes it)."),
  truncated: z.boolean(),
});

export const exportArgs = z
  .object({
    task_id: taskId,
    target: z.string().min(1).describe("A host path: a new directory, or a new .tar file. An existing target is refused unless merge."),
    path: wsPath.optional().describe("Export only this directory of the workspace (default /workspace); paths in the target are relative to it."),
    only_changed: z.boolean().optional().describe("Only files added or modified since the baseline (default false: everything)."),
    format: z.enum(["dir", "tar"]).optional().describe("dir or tar (default: tar when target ends in .tar, else dir)."),
    merge: z.boolean().optional().describe("Write into an existing target directory, replacing files of the same name (never through a symlink)."),
    max_bytes: z.number().int().min(1).optional().describe("Most bytes of file content (default 4 GiB): an export past it fails and writes nothing."),
    max_files: z.number().int().min(1).optional().describe("Most entries (default 100000)."),
  })
  .strict();
export const exportResult = z.object({
  task_id: z.string(),
  path: z.string(),
  target: z.string(),
  format: z.enum(["dir", "tar"]),
  files: z.number().int(),
  bytes: z.number().int(),
  skipped: z.array(z.object({ path: z.string(), reason: z.string() })).describe("Entries left out: devices, fifos, sockets, symlinks pointing out of the exported tree."),
  setid_dropped: z.array(z.string()),
  not_exported_deleted: z.array(z.string()).describe("With only_changed: files deleted since the baseline (an export cannot carry a deletion)."),
});

export type FileListArgs = z.input<typeof fileListArgs>;
export type FileReadArgs = z.input<typeof fileReadArgs>;
export type FileWriteArgs = z.input<typeof fileWriteArgs>;
export type PatchApplyArgs = z.input<typeof patchApplyArgs>;
export type DiffArgs = z.input<typeof diffArgs>;
export type ExportArgs = z.input<typeof exportArgs>;

export async function listTaskFiles(tasks: TaskManager, raw: FileListArgs, signal?: AbortSignal): Promise<z.infer<typeof fileListResult>> {
  const a = parseArgs(fileListArgs, raw);
  return files.fileList(tasks, a.task_id, a.path, signal);
}

export async function readTaskFile(tasks: TaskManager, raw: FileReadArgs, signal?: AbortSignal): Promise<z.infer<typeof fileReadResult>> {
  const { task_id, ...rest } = parseArgs(fileReadArgs, raw);
  return files.fileRead(tasks, task_id, rest, signal);
}

export async function writeTaskFile(tasks: TaskManager, raw: FileWriteArgs, signal?: AbortSignal): Promise<z.infer<typeof fileWriteResult>> {
  const { task_id, ...rest } = parseArgs(fileWriteArgs, raw);
  return files.fileWrite(tasks, task_id, rest, signal);
}

export async function applyTaskPatch(tasks: TaskManager, raw: PatchApplyArgs, signal?: AbortSignal): Promise<z.infer<typeof patchApplyResult>> {
  const { task_id, ...rest } = parseArgs(patchApplyArgs, raw);
  return files.patchApply(tasks, task_id, rest, signal);
}

export async function diffTask(tasks: TaskManager, raw: DiffArgs, signal?: AbortSignal): Promise<z.infer<typeof diffResult>> {
  const a = parseArgs(diffArgs, raw);
  return files.taskDiff(tasks, a.task_id, { path: a.path, max_diff_bytes: a.max_diff_bytes ?? DIFF_DEFAULTS.max_diff_bytes, max_file_bytes: a.max_file_bytes ?? DIFF_DEFAULTS.max_file_bytes }, signal);
}

export async function exportTask(tasks: TaskManager, raw: ExportArgs, signal?: AbortSignal): Promise<z.infer<typeof exportResult>> {
  const { task_id, ...rest } = parseArgs(exportArgs, raw);
  return files.taskExport(tasks, task_id, rest, signal);
}
