import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isIP } from "node:net";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { PyroClient } from "../sdk/client.js";
import { PyroError } from "../core/errors.js";
import { createServer, type PyroMcpServer } from "./server.js";
import { mcpProgressListener } from "./progress.js";
import type { ProfileName } from "./profiles.js";
import type { SpareEvent } from "../runtime/pool.js";
import { checkToken, MAKE_TOKEN_FILE, TOKEN_ENV } from "./token.js";

/** The one path the MCP endpoint answers on. */
export const MCP_PATH = "/mcp";
/** Largest request body accepted (a tool call's arguments; sources travel as host paths, not bytes). */
export const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Sessions open at once; an initialize past this is refused with 503. */
export const MAX_SESSIONS = 64;
/** A session with no request and no running call for this long is closed (the client re-initializes on 404). */
export const SESSION_IDLE_MS = 30 * 60_000;
/**
 * TCP connections open at once; past it, node closes a new one as it is accepted. A connection is an fd of the
 * server's before any token is checked, so without a cap anyone who can reach the port (on loopback: any local
 * user) could hold enough idle ones to take every fd the process may open, and a running tool call of a real
 * session would then fail mid-way on EMFILE. With it, a flood costs new connections only (until the headers
 * timeout closes its idle ones): connections already open, and the calls streaming on them, go on. Room for every
 * session's event stream and a few calls each.
 */
export const MAX_CONNECTIONS = 256;
/** How long a connection may take to send a request's headers (an idle one is closed after it: 408). */
export const HEADERS_TIMEOUT_MS = 10_000;

export interface HttpAddress {
  host: string;
  port: number;
}

/** Parses `HOST:PORT`, `[::1]:PORT`, `:PORT` or `PORT` (the host defaults to 127.0.0.1). */
export function parseHttpAddress(value: string): HttpAddress {
  const v = value.trim();
  let host = "127.0.0.1";
  let portText = v;
  const v6 = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(v);
  if (v6) {
    host = v6[1]!;
    portText = v6[2]!;
  } else if (v.includes(":")) {
    const i = v.lastIndexOf(":");
    host = v.slice(0, i) || host;
    portText = v.slice(i + 1);
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!Number.isInteger(port) || port > 65535 || (!v6 && host.includes(":")) || /[\s/@]/.test(host)) {
    throw new PyroError("invalid_argument", `--http expects HOST:PORT, got "${value}".`, { hint: "For example --http 127.0.0.1:8765 (port 0 picks a free port); IPv6 as [::1]:8765." });
  }
  return { host, port };
}

/** Whether a host name or address only reaches this machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || h.startsWith("::ffff:127.");
  return false;
}

/** The host part of a Host header value (`name:port`, `[v6]:port`). */
function hostnameOf(hostHeader: string): string {
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(hostHeader);
  if (v6) return v6[1]!;
  return hostHeader.replace(/:\d+$/, "");
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

export interface HttpServeOptions {
  address: HttpAddress;
  /**
   * The bearer token (at least 16 characters); required for a non-loopback
   * address. Default: a random one, returned as `token` with `generatedToken`.
   * The CLI reads it from --token-file or $PYRO_MCP_TOKEN (readTokenFile,
   * takeEnvToken); it never takes a token on the command line.
   */
  token?: string;
  profile?: ProfileName | string;
  allowedSourceRoots?: string[];
  /** One Pyro shared by every session (default: a new one routing pull progress to the calling tool). */
  pyro?: PyroClient;
  /** With the default Pyro: warm spares for vm_run, shared by every session, deleted by close(). */
  warmPool?: boolean;
  onSpare?: (event: SpareEvent) => void;
  /** Why no sandbox can start here, for every session's instructions (CreateServerOptions.unavailable). */
  unavailable?: string | null;
  maxBodyBytes?: number;
  reapIntervalMs?: number;
  sessionIdleMs?: number;
}

export interface HttpServing {
  url: string;
  token: string;
  /** True when the token was generated here (so it has to be shown to the user). */
  generatedToken: boolean;
  server: Server;
  sessions(): number;
  /** Shuts every session down (their vm_create VMs deleted, running calls aborted) and stops listening. */
  close(): Promise<void>;
}

/**
 * MCP over Streamable HTTP: one `PyroMcpServer` per session (stateful
 * sessions), all sharing one Pyro and one reaper.
 *
 * Every request must carry `Authorization: Bearer <token>` (compared in
 * constant time). Against DNS rebinding, a loopback listener only accepts a
 * loopback Host header, and an Origin header (sent by browsers) must be a
 * loopback origin, or for a non-loopback listener the origin of the Host
 * itself. A non-loopback address is refused unless a token was given
 * explicitly. The token is never logged here; the caller prints a generated one.
 */
export async function serveHttp(options: HttpServeOptions): Promise<HttpServing> {
  const { address } = options;
  const loopback = isLoopbackHost(address.host);
  const explicitToken = options.token;
  if (!loopback && !explicitToken) {
    throw new PyroError("invalid_argument", `Refusing to serve MCP on the non-loopback address ${address.host} without an explicit token.`, {
      hint: `Pass --token-file PATH (a file only you can read, made with ${MAKE_TOKEN_FILE}) or set ${TOKEN_ENV}, or listen on 127.0.0.1.`,
    });
  }
  if (explicitToken !== undefined) checkToken(explicitToken, "The token");
  const token = explicitToken ?? randomBytes(32).toString("base64url");
  const expected = digest(`Bearer ${token}`);
  const maxBody = options.maxBodyBytes ?? MAX_BODY_BYTES;
  const pyro = options.pyro ?? new PyroClient({ errorHints: "cli", allowedSourceRoots: options.allowedSourceRoots, onProgress: mcpProgressListener, warmPool: options.warmPool, onSpare: options.onSpare });
  const sessions = new Map<string, { transport: StreamableHTTPServerTransport; server: PyroMcpServer; lastSeen: number }>();
  const pending = new Set<PyroMcpServer>();

  // One reaper for all sessions.
  const reap = () => void pyro.reapExpired().catch(() => undefined);
  reap();
  const reaper = setInterval(reap, options.reapIntervalMs ?? 60_000);
  reaper.unref();
  // Clients that vanish without DELETE leave sessions behind: close the idle ones (their vm_create VMs go with them).
  const idleMs = options.sessionIdleMs ?? SESSION_IDLE_MS;
  const sweeper = setInterval(() => {
    for (const session of sessions.values()) {
      if (Date.now() - session.lastSeen > idleMs && session.server.runningCalls === 0) void session.transport.close();
    }
  }, Math.min(idleMs, 60_000));
  sweeper.unref();

  function hostAllowed(req: IncomingMessage): boolean {
    if (!loopback) return true; // a public listener is protected by its explicit token
    const host = req.headers.host;
    return typeof host === "string" && isLoopbackHost(hostnameOf(host));
  }

  function originAllowed(req: IncomingMessage): boolean {
    const origin = req.headers.origin;
    if (origin === undefined) return true; // not a browser
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      return false;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return false;
    if (isLoopbackHost(url.hostname)) return true;
    const host = req.headers.host;
    return !loopback && typeof host === "string" && url.hostname.replace(/^\[|\]$/g, "") === hostnameOf(host);
  }

  function authorized(req: IncomingMessage): boolean {
    const header = req.headers.authorization;
    return typeof header === "string" && timingSafeEqual(digest(header), expected);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (path !== MCP_PATH) return sendText(res, 404, `Not found: the MCP endpoint is ${MCP_PATH}.`);
    if (!hostAllowed(req)) return sendText(res, 403, "Forbidden: the Host header is not a loopback name (DNS rebinding protection).");
    if (!originAllowed(req)) return sendText(res, 403, "Forbidden: requests from this Origin are not allowed (DNS rebinding protection).");
    if (!authorized(req)) {
      res.setHeader("WWW-Authenticate", 'Bearer realm="pyro-mcp"');
      return sendText(res, 401, "Unauthorized: send Authorization: Bearer <token> (the token in the server's --token-file or $PYRO_MCP_TOKEN, or the one it printed when it generated one).");
    }
    let body: unknown;
    if (req.method === "POST") {
      const raw = await readBody(req, maxBody);
      if (raw === null) return sendRpcError(res, 413, -32600, `Request body larger than ${maxBody} bytes.`);
      try {
        body = JSON.parse(raw.toString("utf8"));
      } catch (error) {
        return sendRpcError(res, 400, -32700, `Parse error: ${(error as Error).message}`);
      }
    }
    const sid = req.headers["mcp-session-id"];
    if (typeof sid === "string") {
      const session = sessions.get(sid);
      if (!session) return sendRpcError(res, 404, -32001, "Session not found: it ended or the server restarted; initialize a new session.");
      session.lastSeen = Date.now();
      await session.transport.handleRequest(req, res, body);
      session.lastSeen = Date.now();
      return;
    }
    if (req.method === "POST" && isInitializeRequest(body)) {
      if (sessions.size + pending.size >= MAX_SESSIONS) return sendRpcError(res, 503, -32000, `Too many sessions (${MAX_SESSIONS}); close some first.`);
      const server = createServer({ profile: options.profile, pyro, allowedSourceRoots: options.allowedSourceRoots, reaper: false, unavailable: options.unavailable });
      pending.add(server);
      const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => {
          pending.delete(server);
          sessions.set(id, { transport, server, lastSeen: Date.now() });
        },
      });
      transport.onclose = () => {
        pending.delete(server);
        if (transport.sessionId) sessions.delete(transport.sessionId);
        void server.shutdown();
      };
      await server.connect(transport);
      await transport.handleRequest(req, res, body);
      if (!transport.sessionId) {
        // The initialize failed (e.g. a bad Accept header): nothing to keep.
        pending.delete(server);
        void server.shutdown();
      }
      return;
    }
    return sendRpcError(res, 400, -32000, "Bad Request: no Mcp-Session-Id header; start with an initialize request.");
  }

  // Idle and slow-header connections are checked every second, so a flood's connections free their slots quickly.
  const server = createHttpServer({ headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1_000 }, (req, res) => {
    handle(req, res).catch((error) => {
      if (!res.headersSent) sendRpcError(res, 500, -32603, `Internal error: ${(error as Error)?.message ?? error}`);
      else res.end();
    });
  });
  server.requestTimeout = 0; // tool calls may stream for as long as their timeout allows
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) =>
      reject(
        new PyroError("invalid_argument", `Cannot listen on ${address.host}:${address.port}: ${error.code ?? error.message}.`, {
          hint: error.code === "EADDRINUSE" ? "Pick another port, or 0 for a free one." : "Check the address.",
          cause: error,
        }),
      ),
    );
    server.listen(address.port, address.host, () => resolve());
  });
  const bound = server.address();
  const port = typeof bound === "object" && bound ? bound.port : address.port;
  const hostForUrl = isIP(address.host) === 6 ? `[${address.host}]` : address.host;
  let closing: Promise<void> | null = null;
  return {
    url: `http://${hostForUrl}:${port}${MCP_PATH}`,
    token,
    generatedToken: explicitToken === undefined,
    server,
    sessions: () => sessions.size,
    close() {
      closing ??= (async () => {
        clearInterval(reaper);
        clearInterval(sweeper);
        const all = [...sessions.values()].map((s) => s.server).concat([...pending]);
        await Promise.allSettled(all.map((s) => s.shutdown()));
        if (!options.pyro) await pyro.close().catch(() => undefined);
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
      })();
      return closing;
    },
  };
}

function readBody(req: IncomingMessage, max: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > max) {
      req.resume();
      resolve(null);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on("data", (chunk: Buffer) => {
      if (over) return;
      size += chunk.length;
      if (size > max) {
        over = true;
        chunks.length = 0;
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(over ? null : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" }).end(text + "\n");
}

function sendRpcError(res: ServerResponse, status: number, code: number, message: string): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code, message } }));
}
