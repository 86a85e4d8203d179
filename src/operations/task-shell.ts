import * as z from "zod";
import type { ShellManager } from "../runtime/shells.js";
import { SHELL_READ_DEFAULT, SHELL_READ_MAX, SHELL_SIGNALS, SHELL_WAIT_MAX_MS, SHELL_WRITE_MAX } from "../runtime/shells.js";
import { envVars } from "./schemas.js";
import { parseArgs } from "./parse.js";

/** The shell operations: a PTY in a task's workspace that keeps its state between calls. */

const taskId = z.string().describe("The task id returned by task_create, e.g. task_0123456789ab.");
const shellId = z.string().describe("The shell id returned by task_shell_open, e.g. shell_0123456789ab.");
const rows = z.number().int().min(1).max(1000).describe("Terminal rows (default 24).");
const cols = z.number().int().min(1).max(1000).describe("Terminal columns (default 80).");

export const openShellArgs = z
  .object({
    task_id: taskId,
    rows: rows.optional(),
    cols: cols.optional(),
    cwd: z.string().min(1).max(4096).optional().describe("Starting directory (default /workspace)."),
    env: envVars.optional(),
  })
  .strict();
export type OpenShellArgs = z.infer<typeof openShellArgs>;

export const writeShellArgs = z
  .object({
    task_id: taskId,
    shell_id: shellId,
    input: z.string().min(1).max(SHELL_WRITE_MAX).describe('Text typed into the terminal, as keystrokes: end a command with "\\n" to run it.'),
  })
  .strict();
export type WriteShellArgs = z.infer<typeof writeShellArgs>;

export const readShellArgs = z
  .object({
    task_id: taskId,
    shell_id: shellId,
    max_bytes: z.number().int().min(1).max(SHELL_READ_MAX).optional().describe(`At most this many bytes (default ${SHELL_READ_DEFAULT}); the rest stays for the next read.`),
    plain: z.boolean().optional().describe("Strip terminal escapes (colours, cursor moves) and apply carriage returns and backspaces, as a screen would show it."),
    wait_for: z.string().min(1).max(256).optional().describe("Wait until this literal text (not a regex) appears in unread output, e.g. a prompt or 'Listening on'."),
    wait_idle_ms: z.number().int().min(1).max(SHELL_WAIT_MAX_MS).optional().describe("Wait until no output arrived for this many ms (e.g. 500), so a running command can finish printing."),
    timeout_ms: z.number().int().min(0).max(SHELL_WAIT_MAX_MS).optional().describe("Longest wait for wait_for / wait_idle_ms (default 30000)."),
  })
  .strict();
export type ReadShellArgs = z.infer<typeof readShellArgs>;

export const signalShellArgs = z
  .object({
    task_id: taskId,
    shell_id: shellId,
    signal: z.enum(SHELL_SIGNALS).describe("SIGINT, SIGQUIT and SIGTSTP go through the terminal to the foreground job (like Ctrl-C, Ctrl-\\, Ctrl-Z); the others to the shell process."),
  })
  .strict();
export type SignalShellArgs = z.infer<typeof signalShellArgs>;

export const resizeShellArgs = z.object({ task_id: taskId, shell_id: shellId, rows, cols }).strict();
export type ResizeShellArgs = z.infer<typeof resizeShellArgs>;

export const shellIdArgs = z.object({ task_id: taskId, shell_id: shellId }).strict();
export type ShellIdArgs = z.infer<typeof shellIdArgs>;

export const shellInfo = z.object({
  shell_id: z.string(),
  task_id: z.string(),
  state: z.enum(["running", "exited"]),
  pid: z.number().int().nullable().describe("The shell's pid in its sandbox namespace."),
  rows: z.number().int(),
  cols: z.number().int(),
  cwd: z.string().describe("Where it started (it may have cd'd since)."),
  opened_at: z.string(),
  exit_code: z.number().int().nullable(),
  unread_bytes: z.number().int(),
  dropped_bytes: z.number().int().describe("Unread output dropped because more than 1 MiB waited unread."),
  holder_pid: z.number().int().nullable().describe("The pyro process that holds the shell now (null: none; the task's agent buffers its output). The shell belongs to the task and outlives its holder."),
  held_here: z.boolean().describe("false: another pyro process holds it, or none does; using it from here takes it over."),
});
export const shellClosed = shellInfo.extend({ closed: z.literal(true) });
export const shellWritten = z.object({ shell_id: z.string(), bytes: z.number().int() });
export const shellSignalled = z.object({ shell_id: z.string(), signal: z.enum(SHELL_SIGNALS), via: z.enum(["terminal", "process"]) });
export const shellRead = z.object({
  shell_id: z.string(),
  output: z.string(),
  bytes: z.number().int().describe("Raw bytes consumed by this read."),
  dropped_bytes: z.number().int().describe("Unread bytes lost before this output (more than 1 MiB waited unread)."),
  remaining_bytes: z.number().int().describe("Unread bytes left for the next read (this one hit max_bytes)."),
  reason: z.enum(["pattern", "idle", "timeout", "exited", "immediate"]),
  state: z.enum(["running", "exited"]),
  exit_code: z.number().int().nullable(),
});
export const shellList = z.object({ task_id: z.string(), shells: z.array(shellInfo) });

export async function openShell(shells: ShellManager, raw: OpenShellArgs, options: { signal?: AbortSignal; onOutput?: (chunk: Buffer) => void } = {}): Promise<z.infer<typeof shellInfo>> {
  const { task_id, ...args } = parseArgs(openShellArgs, raw);
  return shells.open(task_id, args, options);
}

export async function writeShell(shells: ShellManager, raw: WriteShellArgs): Promise<z.infer<typeof shellWritten>> {
  const args = parseArgs(writeShellArgs, raw);
  return shells.write(args.task_id, args.shell_id, args.input);
}

export async function readShell(shells: ShellManager, raw: ReadShellArgs, signal?: AbortSignal): Promise<z.infer<typeof shellRead>> {
  const { task_id, shell_id, ...args } = parseArgs(readShellArgs, raw);
  return shells.read(task_id, shell_id, args, signal);
}

export async function signalShell(shells: ShellManager, raw: SignalShellArgs): Promise<z.infer<typeof shellSignalled>> {
  const args = parseArgs(signalShellArgs, raw);
  return shells.signal(args.task_id, args.shell_id, args.signal);
}

export async function resizeShell(shells: ShellManager, raw: ResizeShellArgs): Promise<z.infer<typeof shellInfo>> {
  const args = parseArgs(resizeShellArgs, raw);
  return shells.resize(args.task_id, args.shell_id, args.rows, args.cols);
}

export async function closeShell(shells: ShellManager, raw: ShellIdArgs): Promise<z.infer<typeof shellClosed>> {
  const args = parseArgs(shellIdArgs, raw);
  return shells.close(args.task_id, args.shell_id);
}

export async function listShells(shells: ShellManager, raw: { task_id: string }): Promise<z.infer<typeof shellList>> {
  const { task_id } = parseArgs(z.object({ task_id: taskId }).strict(), raw);
  return { task_id, shells: await shells.list(task_id) };
}
