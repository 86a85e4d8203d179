/** The pyro-mcp SDK. */
export { PyroError, ERROR_CODES, type PyroErrorCode } from "./sdk/errors.js";
export { VERSION } from "./version.js";
export { Pyro, type PyroOptions, type ExecResult, type VmStatus, type StreamOptions } from "./sdk/pyro.js";
export type { Isolation, DriverName } from "./drivers/types.js";
