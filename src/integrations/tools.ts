import * as z from "zod";
import { resolve } from "node:path";
import { Pyro, type ExecResult, type PushResult, type TaskLogs, type TaskStatus } from "../sdk/pyro.js";
import { asPyroError, PyroError } from "../core/errors.js";
import { hintFor } from "../core/hints.js";
import { parseArgs } from "../operations/parse.js";
import type { ProgressListener } from "../util/progress.js";
import type { RunInVmArgs } from "../operations/vm.js";
import type { CreateTaskArgs, ExecTaskArgs, PushTaskSyncArgs } from "../operations/task.js";
import { CallProgress } from "../mcp/progress.js";
import { PROFILES } from "../mcp/profiles.js";
import { errorText, toolSpecs, type ServerContext, type ToolSpec } from "../mcp/tools.js";

/**
 * The model-facing tools, framework-neutral: the same names, descriptions,
 * input schemas, checks and results as the MCP server's tools (they are built
 * from the very same specs), for integrations that call pyro in-process
 * instead of over MCP: an OpenAI tool loop, the Vercel AI SDK, LangChain.
 *
 * `vm_run` is always there; the task tools (`task_create`, `task_sync_push`,
 * `task_exec`, `task_status`, `task_logs`, `task_list`, `task_delete`, the
 * MCP `task-core` profile) only when asked for.
 */

/** What the model may pass to each tool (the SDK's arguments minus what the operator decides: driver, output cap). */
export type VmRunInput = Omit<RunInVmArgs, "driver" | "max_output_bytes">;
export type TaskCreateInput = Omit<CreateTaskArgs, "driver">;
export type TaskSyncPushInput = PushTaskSyncArgs;
export type TaskExecInput = Omit<ExecTaskArgs, "max_output_bytes">;
export type TaskIdInput = { task_id: string };
export type TaskLogsInput = { task_id: string; tail?: number };
export type NoInput = Record<string, never>;

export interface PyroToolDefinition<I = unknown, O = unknown> {
  name: string;
  title: string;
  /** The description a model reads: the MCP tool's own. */
  description: string;
  /** The input schema (zod 4), as the MCP tool has it. */
  inputSchema: z.ZodType<I>;
  /** The same schema as JSON Schema, for APIs that take one (OpenAI function tools). */
  parameters: Record<string, unknown>;
  /**
   * Runs the tool: checks the input, enforces the allowed source roots, caps
   * output at 64 KiB per stream, and returns the structured result. Failures
   * of pyro throw PyroError, whose message (what failed, then a hint) is
   * written for a model to act on.
   */
  execute(input: I, options?: { signal?: AbortSignal }): Promise<O>;
  /** Like execute, with the short text summary the MCP server sends along. */
  executeWithText(input: I, options?: { signal?: AbortSignal }): Promise<{ result: O; text: string }>;
}

export interface VmRunTools {
  vm_run: PyroToolDefinition<VmRunInput, ExecResult>;
}

export interface TaskTools {
  task_create: PyroToolDefinition<TaskCreateInput, TaskStatus>;
  task_sync_push: PyroToolDefinition<TaskSyncPushInput, PushResult>;
  task_exec: PyroToolDefinition<TaskExecInput, ExecResult>;
  task_status: PyroToolDefinition<TaskIdInput, TaskStatus>;
  task_logs: PyroToolDefinition<TaskLogsInput, TaskLogs>;
  task_list: PyroToolDefinition<NoInput, { tasks: TaskStatus[] }>;
  task_delete: PyroToolDefinition<TaskIdInput, { task_id: string; deleted: true }>;
}

export interface PyroToolsOptions {
  /** The Pyro the tools call (default: a new one limited to `allowedSourceRoots`). */
  pyro?: Pyro;
  /** Also the task tools (default false: `vm_run` alone, the narrow default). */
  tasks?: boolean;
  /**
   * Directories `source_path` must lie under (default: the current
   * directory). The task tools' descriptions name them, so a model knows.
   */
  allowedSourceRoots?: string[];
  /** Progress of long work (an environment built on first use) for the default Pyro. */
  onProgress?: ProgressListener;
}

export const VM_RUN_TOOL_NAMES = PROFILES["vm-run"];
export const TASK_TOOL_NAMES = PROFILES["task-core"].filter((n) => n !== "vm_run");

/** JSON Schema of a zod schema, as function-calling APIs take it (no `$schema` key). */
export function jsonSchemaOf(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _drop, ...rest } = z.toJSONSchema(schema, { io: "input" }) as Record<string, unknown>;
  return rest;
}

/** The model-facing error: the MCP server's text (what failed, a hint in the tools' vocabulary), keeping the code. */
function modelError(raw: unknown, tools: ReadonlySet<string>): PyroError {
  const e = asPyroError(raw);
  const hint = hintFor(e, { kind: "tools", tools });
  return new PyroError(e.code, errorText(e, tools), { ...(hint ? { hint } : {}), cause: e, ...(e.details ? { details: e.details } : {}) });
}

export function pyroToolDefinitions(options: PyroToolsOptions & { tasks: true }): VmRunTools & TaskTools;
export function pyroToolDefinitions(options?: PyroToolsOptions): VmRunTools & Partial<TaskTools>;
export function pyroToolDefinitions(options: PyroToolsOptions = {}): VmRunTools & Partial<TaskTools> {
  const roots = (options.allowedSourceRoots?.length ? options.allowedSourceRoots : [process.cwd()]).map((r) => resolve(r));
  const pyro = options.pyro ?? new Pyro({ errorHints: "cli", allowedSourceRoots: roots, ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
  const context: ServerContext = { pyro, allowedSourceRoots: roots, ownedVms: new Set() };
  const wanted = new Set<string>([...VM_RUN_TOOL_NAMES, ...(options.tasks ? TASK_TOOL_NAMES : [])]);
  const out: Record<string, PyroToolDefinition> = {};
  for (const spec of toolSpecs({ allowedSourceRoots: roots })) {
    if (wanted.has(spec.name)) out[spec.name] = definition(spec, context, wanted);
  }
  return out as unknown as VmRunTools & Partial<TaskTools>;
}

function definition(spec: ToolSpec, context: ServerContext, tools: ReadonlySet<string>): PyroToolDefinition {
  const executeWithText = async (input: unknown, options: { signal?: AbortSignal } = {}) => {
    try {
      // The same check, and the same words, as the MCP server's.
      const args = parseArgs(spec.inputSchema, input, spec.name);
      const outcome = await spec.run(args as never, context, { signal: options.signal ?? new AbortController().signal, progress: new CallProgress(null) });
      return { result: outcome.structured, text: outcome.text };
    } catch (error) {
      throw modelError(error, tools);
    }
  };
  return {
    name: spec.name,
    title: spec.title,
    description: spec.description,
    inputSchema: spec.inputSchema,
    parameters: jsonSchemaOf(spec.inputSchema),
    executeWithText,
    execute: async (input, options) => (await executeWithText(input, options)).result,
  };
}
