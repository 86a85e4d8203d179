/** The pyro-mcp SDK. */
export { PyroError, ERROR_CODES, type PyroErrorCode } from "./core/errors.js";
export { VERSION } from "./version.js";
export { Pyro, type PyroClient, type PyroOptions, type ExecResult, type VmStatus, type TaskStatus, type PushResult, type TaskLogs, type StreamOptions } from "./sdk/pyro.js";
export type { Isolation, DriverName } from "./drivers/types.js";
export { createServer, PyroMcpServer, mcpProgressListener, type CreateServerOptions, type ProfileName } from "./mcp/server.js";
