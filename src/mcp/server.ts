import { resolve } from "node:path";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import { ErrorCode, McpError, type CallToolResult, type ServerNotification, type ServerRequest } from "@modelcontextprotocol/sdk/types.js";
import { parseArgs } from "../operations/parse.js";
import { PyroClient } from "../sdk/client.js";
import { asPyroError, PyroError } from "../core/errors.js";
import { VERSION } from "../version.js";
import { parseProfile, toolsOf, type ProfileName } from "./profiles.js";
import { CallProgress, mcpProgressListener, progressScope } from "./progress.js";
import { errorText, toolSpecs, type ServerContext, type ToolSpec } from "./tools.js";
import type { SpareEvent } from "../runtime/pool.js";

export interface CreateServerOptions {
  /** Which tools to expose: `vm-run`, `task-core` (default) or `full`. */
  profile?: ProfileName | string;
  /**
   * The SDK object the tools call. Default: a new Pyro that routes environment
   * pull progress to the calling tool (pass `onProgress: mcpProgressListener`
   * to a Pyro of your own for the same).
   */
  pyro?: PyroClient;
  /** Directories `source_path` must lie under (default: the current directory). */
  allowedSourceRoots?: string[];
  /** Run `reapExpired` every `reapIntervalMs` (default true; the HTTP front door runs one reaper for all sessions). */
  reaper?: boolean;
  reapIntervalMs?: number;
  /** Least time between two progress notifications of one call (default 500 ms). */
  progressIntervalMs?: number;
  /**
   * With the default Pyro (no `pyro` given): keep a warm spare per shape of
   * vm_run (runtime/pool.ts), deleted by shutdown(); a long-lived server's
   * second vm_run of a shape then only execs. Default false.
   */
  warmPool?: boolean;
  /** With `warmPool`: told when a spare is ready and when a vm_run is served by one. */
  onSpare?: (event: SpareEvent) => void;
  /**
   * Why no sandbox can start on this host, when none can (`pyro mcp serve`
   * finds out at start: drivers/readiness.ts). Said in the server's
   * instructions, so the model tells its user instead of retrying calls that
   * all fail.
   */
  unavailable?: string | null;
}

type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/** Marks arguments the SDK's own check refused: the call then answers in pyro's error format (see the constructor). */
const REFUSED = Symbol("pyro.refusedArguments");
type Refused = { [REFUSED]: { args: unknown; error: unknown } };

const INSTRUCTIONS =
  "pyro runs commands in disposable, isolated sandboxes. Use vm_run for any one-shot command: it starts a fresh sandbox, runs the command and deletes the sandbox. " +
  "Use task_create (optionally seeded from a host directory with source_path) + task_exec only when several commands must share files in a persistent /workspace; push later host changes with task_sync_push, and task_delete the task when done. " +
  "A non-zero exit code is a normal result; tool errors say what failed and what to do.";

/** The instructions, with why nothing can run here when that is so. */
export function serverInstructions(unavailable?: string | null): string {
  if (!unavailable) return INSTRUCTIONS;
  return `${INSTRUCTIONS} NOTE: no sandbox can start on this host right now, so every tool call fails until the host is fixed. Why: ${unavailable} Tell the user this (\`pyro doctor\` on the host says what to install) instead of retrying.`;
}

/**
 * The pyro MCP server: an `McpServer` (so it connects to any transport) with
 * pyro's tools registered for a profile, a reaper, and a shutdown that cleans
 * up what the server made.
 */
export class PyroMcpServer extends McpServer {
  readonly profile: ProfileName;
  readonly pyro: PyroClient;
  readonly allowedSourceRoots: readonly string[];
  /** VMs made with vm_create through this server that may still exist. */
  readonly ownedVms = new Set<string>();
  /** Set by shutdown(): no call starts after it. */
  private closingReason: PyroError | null = null;
  /**
   * One controller per running call, aborted by shutdown(). The server keeps
   * no signal of its own that calls would listen on: a listener per call on a
   * server-lifetime signal piles up with concurrent calls (Node warns past 10).
   */
  private readonly calls = new Set<AbortController>();
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly progressIntervalMs: number;
  private reaperTimer: NodeJS.Timeout | null = null;
  private shutdownPromise: Promise<void> | null = null;
  /** A Pyro this server made (its spares are this server's to delete); one passed in is its owner's. */
  private readonly ownsPyro: boolean;
  /** The tools of this server's profile: the only ones its hints may name. */
  private enabledTools: ReadonlySet<string> = new Set();

  constructor(options: CreateServerOptions = {}) {
    super({ name: "pyro-mcp", title: "pyro: disposable sandboxes", version: VERSION }, { instructions: serverInstructions(options.unavailable), maxToolInputElements: 20_000 });
    this.profile = parseProfile(options.profile);
    this.allowedSourceRoots = (options.allowedSourceRoots?.length ? options.allowedSourceRoots : [process.cwd()]).map((r) => resolve(r));
    this.ownsPyro = !options.pyro;
    this.pyro = options.pyro ?? new PyroClient({ errorHints: "cli", allowedSourceRoots: [...this.allowedSourceRoots], onProgress: mcpProgressListener, warmPool: options.warmPool, onSpare: options.onSpare });
    this.progressIntervalMs = options.progressIntervalMs ?? 500;

    const context: ServerContext = { pyro: this.pyro, allowedSourceRoots: this.allowedSourceRoots, ownedVms: this.ownedVms };
    const enabled = new Set<string>(toolsOf(this.profile));
    this.enabledTools = enabled;
    // The SDK checks arguments against the input schema before a handler runs and answers a
    // failure in its own words ("MCP error -32602: Input validation error: ..."). Its check
    // (schema and element count) still runs; a refusal reaches the handler, which answers it
    // as every other pyro error: code, what was wrong in the argument's name, a hint.
    const sdk = this as unknown as { validateToolInput(tool: unknown, args: unknown, name: string): Promise<unknown> };
    const validate = sdk.validateToolInput.bind(this);
    sdk.validateToolInput = async (tool, args, name) => {
      try {
        return await validate(tool, args, name);
      } catch (error) {
        if (!(error instanceof McpError) || error.code !== ErrorCode.InvalidParams) throw error;
        return { [REFUSED]: { args, error } } satisfies Refused;
      }
    };
    for (const spec of toolSpecs({ allowedSourceRoots: this.allowedSourceRoots })) {
      if (!enabled.has(spec.name)) continue;
      this.registerTool(
        spec.name,
        { title: spec.title, description: spec.description, inputSchema: spec.inputSchema, outputSchema: spec.outputSchema, annotations: spec.annotations },
        ((args: unknown, extra: Extra) => this.call(spec, args, extra, context)) as never,
      );
    }

    if (options.reaper ?? true) {
      const reap = () => {
        void this.pyro
          .reapExpired()
          .then((r) => r.reaped.forEach((x) => this.ownedVms.delete(x.id)))
          .catch(() => undefined);
      };
      reap();
      this.reaperTimer = setInterval(reap, options.reapIntervalMs ?? 60_000);
      this.reaperTimer.unref();
    }
  }

  /** Runs one tool call: progress routed to the caller, cancellation wired, every failure a tool error. */
  private async call(spec: ToolSpec, args: unknown, extra: Extra, context: ServerContext): Promise<CallToolResult> {
    if (this.closingReason) {
      return this.toolError(new PyroError("cancelled", "The server is shutting down.", { hint: "Reconnect to a running pyro MCP server and retry." }));
    }
    if (typeof args === "object" && args !== null && REFUSED in args) {
      const { args: raw, error } = (args as Refused)[REFUSED];
      try {
        parseArgs(spec.inputSchema, raw, spec.name);
      } catch (refusal) {
        return this.toolError(refusal);
      }
      // The schema passed: the SDK refused the call for its size.
      return this.toolError(new PyroError("limit_exceeded", (error as Error).message.replace(/^MCP error -?\d+: /, ""), { hint: "Send fewer elements (a shorter command array or fewer env entries)." }));
    }
    const token = extra._meta?.progressToken;
    const progress = new CallProgress(
      token === undefined
        ? null
        : (update) => {
            extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, ...update } }).catch(() => undefined);
          },
      this.progressIntervalMs,
    );
    // The call's signal: aborted by the client's cancellation (extra.signal,
    // one per request) or by shutdown(); both links are dropped when the call ends.
    const call = new AbortController();
    const onCancel = () => call.abort(extra.signal.reason);
    if (extra.signal.aborted) onCancel();
    else extra.signal.addEventListener("abort", onCancel, { once: true });
    this.calls.add(call);
    const signal = call.signal;
    let running: Promise<{ text: string; structured: unknown }> | undefined;
    try {
      running = progressScope.run(progress, () => spec.run(args as never, context, { signal, progress }));
      this.inflight.add(running);
      const outcome = await running;
      return { content: [{ type: "text", text: outcome.text }], structuredContent: outcome.structured as Record<string, unknown> };
    } catch (error) {
      return this.toolError(error);
    } finally {
      progress.close();
      extra.signal.removeEventListener("abort", onCancel);
      this.calls.delete(call);
      if (running) this.inflight.delete(running);
    }
  }

  /**
   * Stops the server: no new calls, running calls aborted (their commands are
   * killed; vm_run's ephemeral VMs are deleted by the SDK), the VMs this server
   * made with vm_create deleted, the transport closed. Tasks are left intact.
   */
  shutdown(options: { graceMs?: number } = {}): Promise<void> {
    this.shutdownPromise ??= (async () => {
      if (this.reaperTimer) clearInterval(this.reaperTimer);
      this.reaperTimer = null;
      this.closingReason = new PyroError("cancelled", "The server is shutting down.");
      for (const call of [...this.calls]) call.abort(this.closingReason);
      const settled = Promise.allSettled([...this.inflight]);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([settled, new Promise((r) => (timer = setTimeout(r, options.graceMs ?? 15_000)))]);
      clearTimeout(timer);
      for (const vmId of [...this.ownedVms]) {
        await this.pyro.deleteVm({ vm_id: vmId }).catch(() => undefined);
        this.ownedVms.delete(vmId);
      }
      if (this.ownsPyro) await this.pyro.close().catch(() => undefined);
      await this.close().catch(() => undefined);
    })();
    return this.shutdownPromise;
  }

  private toolError(error: unknown): CallToolResult {
    return toolError(error, this.enabledTools);
  }

  /** Calls currently running (for tests and diagnostics). */
  get runningCalls(): number {
    return this.inflight.size;
  }
}

/** A failure as a tool error, its hint naming only the tools of this server's profile. */
function toolError(error: unknown, tools: ReadonlySet<string>): CallToolResult {
  const e = asPyroError(error);
  return { isError: true, content: [{ type: "text", text: errorText(e, tools) }] };
}

/**
 * Creates the pyro MCP server for one client connection. The same object
 * works with any transport (`server.connect(new StdioServerTransport())`, a
 * Streamable HTTP transport, an in-memory pair in tests).
 *
 * ```ts
 * import { createServer } from "pyro-mcp";
 * const server = createServer({ profile: "task-core", allowedSourceRoots: ["/srv/repos"] });
 * await server.connect(transport);
 * ```
 */
export function createServer(options: CreateServerOptions = {}): PyroMcpServer {
  return new PyroMcpServer(options);
}

export { mcpProgressListener } from "./progress.js";
export { PROFILES, PROFILE_NAMES, DEFAULT_PROFILE, type ProfileName, type ToolName } from "./profiles.js";
