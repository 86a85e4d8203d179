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
import { pyroToolDefinitions, type PyroToolDefinition, type PyroToolsOptions, type TaskTools, type VmRunTools } from "./tools.js";

export type { PyroToolsOptions, VmRunInput, TaskCreateInput, TaskExecInput, TaskSyncPushInput, TaskIdInput, TaskLogsInput } from "./tools.js";

/** The same tools as tools.ts lists them, each as an AI SDK `Tool` (one list of tool types, not two). */
type AsAiTools<T> = { [K in keyof T]: T[K] extends PyroToolDefinition<infer I, infer O> ? Tool<I, O> : never };
export type PyroVmRunToolSet = AsAiTools<VmRunTools>;
export type PyroTaskToolSet = AsAiTools<TaskTools>;

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
