/**
 * pyro tools for the Vercel AI SDK (`ai`, v5 or v6): `pyro-mcp/ai-sdk`.
 *
 * ```ts
 * import { generateText, stepCountIs } from "ai";
 * import { pyroTools } from "pyro-mcp/ai-sdk";
 *
 * const { text } = await generateText({
 *   model,
 *   tools: pyroTools(),                 // { vm_run }
 *   stopWhen: stepCountIs(5),
 *   prompt: "Which git version does Debian 12 ship?",
 * });
 * ```
 *
 * A thin adapter: each tool is the MCP tool of the same name (description,
 * input schema, checks, 64 KiB output cap), its result the same structured
 * result. `vm_run` alone by default; `pyroTools({ tasks: true })` adds the
 * task tools for agents that need one persistent workspace across calls.
 */
import { tool, type Tool } from "ai";
import type { ExecResult, PushResult, TaskLogs, TaskStatus } from "../sdk/pyro.js";
import {
  pyroToolDefinitions,
  type NoInput,
  type PyroToolDefinition,
  type PyroToolsOptions,
  type TaskCreateInput,
  type TaskExecInput,
  type TaskIdInput,
  type TaskLogsInput,
  type TaskSyncPushInput,
  type VmRunInput,
} from "./tools.js";

export type { PyroToolsOptions, VmRunInput, TaskCreateInput, TaskExecInput, TaskSyncPushInput, TaskIdInput, TaskLogsInput } from "./tools.js";

export type PyroVmRunToolSet = {
  vm_run: Tool<VmRunInput, ExecResult>;
};

export type PyroTaskToolSet = {
  task_create: Tool<TaskCreateInput, TaskStatus>;
  task_sync_push: Tool<TaskSyncPushInput, PushResult>;
  task_exec: Tool<TaskExecInput, ExecResult>;
  task_status: Tool<TaskIdInput, TaskStatus>;
  task_logs: Tool<TaskLogsInput, TaskLogs>;
  task_list: Tool<NoInput, { tasks: TaskStatus[] }>;
  task_delete: Tool<TaskIdInput, { task_id: string; deleted: true }>;
};

function aiTool<I, O>(def: PyroToolDefinition<I, O>): Tool<I, O> {
  const t: Tool<any, any> = tool<any, any>({
    description: def.description,
    inputSchema: def.inputSchema,
    execute: (input: I, options: { abortSignal?: AbortSignal }) => def.execute(input, { signal: options?.abortSignal }),
  });
  return t as Tool<I, O>;
}

/**
 * The pyro tools as AI SDK tools, keyed by tool name (pass the object as
 * `tools`). A failure of pyro (a missing task, a path outside the allowed
 * roots, ...) throws a PyroError, which the AI SDK hands the model as a tool
 * error; a command that exits non-zero is a normal result.
 */
export function pyroTools(options: PyroToolsOptions & { tasks: true }): PyroVmRunToolSet & PyroTaskToolSet;
export function pyroTools(options?: PyroToolsOptions & { tasks?: false }): PyroVmRunToolSet;
export function pyroTools(options?: PyroToolsOptions): PyroVmRunToolSet & { [name: string]: Tool<any, any> };
export function pyroTools(options: PyroToolsOptions = {}): Record<string, Tool> {
  const defs = pyroToolDefinitions(options);
  const out: Record<string, Tool> = {};
  for (const [name, def] of Object.entries(defs)) if (def) out[name] = aiTool(def as PyroToolDefinition);
  return out;
}
