import { PyroClient } from "./client.js";

export { PyroClient } from "./client.js";
export type { PyroOptions, ExecResult, VmStatus, TaskStatus, PushResult, TaskLogs } from "./client.js";
export type { StreamOptions } from "../operations/vm.js";

/**
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
export class Pyro extends PyroClient {
  /**
   * An MCP server whose tools call this Pyro (same as the standalone
   * `createServer({ pyro })`). Async so that SDK users who never serve MCP
   * never load the MCP SDK.
   */
  async createServer(options: { profile?: string; allowedSourceRoots?: string[] } = {}): Promise<import("../mcp/server.js").PyroMcpServer> {
    const { createServer } = await import("../mcp/server.js");
    return createServer({ ...options, pyro: this });
  }
}
