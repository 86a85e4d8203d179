/**
 * pyro tools for LangChain.js (`@langchain/core` v1): `pyro-mcp/langchain`.
 *
 * ```ts
 * import { pyroTools } from "pyro-mcp/langchain";
 *
 * const tools = pyroTools();                       // [vm_run]
 * const agent = createAgent({ model, tools });     // or model.bindTools(tools)
 * await tools[0].invoke({ environment: "debian:12", command: "git --version" });
 * ```
 *
 * A thin adapter: each tool is the MCP tool of the same name (description,
 * zod input schema, checks, 64 KiB output cap). Its content, what the model
 * reads, is the MCP server's text summary (exit code, isolation, stdout,
 * stderr); its artifact (on the ToolMessage when invoked with a tool call) is
 * the structured result. `vm_run` alone by default; `pyroTools({ tasks: true })`
 * adds the task tools.
 */
import { tool, type StructuredToolInterface } from "@langchain/core/tools";
import { pyroToolDefinitions, type PyroToolDefinition, type PyroToolsOptions } from "./tools.js";

export type { PyroToolsOptions, VmRunInput, TaskCreateInput, TaskExecInput, TaskSyncPushInput, TaskIdInput, TaskLogsInput } from "./tools.js";

function langchainTool(def: PyroToolDefinition): StructuredToolInterface {
  return tool(
    async (input: unknown, config?: { signal?: AbortSignal }) => {
      const { result, text } = await def.executeWithText(input, { signal: config?.signal });
      return [text, result] as [string, unknown];
    },
    {
      name: def.name,
      description: def.description,
      schema: def.inputSchema as never,
      responseFormat: "content_and_artifact",
    },
  ) as unknown as StructuredToolInterface;
}

/**
 * The pyro tools as LangChain structured tools: `[vm_run]`, or with
 * `{ tasks: true }` also task_create, task_sync_push, task_exec, task_status,
 * task_logs, task_list and task_delete. A failure of pyro throws a PyroError
 * (an agent's tool node hands its message, with a hint, to the model).
 */
export function pyroTools(options: PyroToolsOptions = {}): StructuredToolInterface[] {
  return Object.values(pyroToolDefinitions(options))
    .filter((d): d is PyroToolDefinition<any, any> => Boolean(d))
    .map((d) => langchainTool(d as PyroToolDefinition));
}

/** One pyro tool by name, e.g. `pyroTool("vm_run")`. */
export function pyroTool(name: string, options: PyroToolsOptions = {}): StructuredToolInterface {
  const defs = pyroToolDefinitions({ ...options, tasks: options.tasks ?? name !== "vm_run" }) as unknown as Record<string, PyroToolDefinition | undefined>;
  const def = defs[name];
  if (!def) throw new TypeError(`Unknown pyro tool "${name}"; the tools are ${Object.keys(defs).join(", ")}.`);
  return langchainTool(def);
}
