/** The pyro-mcp SDK. */
export { PyroError, ERROR_CODES, type PyroErrorCode } from "./sdk/errors.js";
export { VERSION } from "./version.js";
