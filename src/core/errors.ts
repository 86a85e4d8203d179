/**
 * Every failure pyro reports is a PyroError with a stable `code` (the table
 * below is part of the public contract: docs/public-contract.md), a message
 * that says what went wrong, and a hint that says what to do about it.
 *
 * A guest command that exits non-zero is NOT an error: it is data in the exec
 * result. Errors are for things pyro itself could not do.
 */
export const ERROR_CODES = {
  invalid_argument: "An argument is missing, malformed or out of range.",
  unknown_environment: "No environment of that name exists in the catalog or among imports.",
  environment_not_ready: "The environment is not pulled, or its cache entry is broken.",
  environment_build_failed: "Building an environment from the package archive failed.",
  mirror_unreachable: "The Debian mirror could not be reached.",
  insufficient_disk: "There is not enough free disk space for the operation.",
  unknown_vm: "No VM with that id exists.",
  unknown_task: "No task with that id exists.",
  unknown_shell: "No shell with that id is open in this task (or another pyro process holds it).",
  unknown_service: "No service of that name runs in this task in this pyro process.",
  invalid_state: "The VM or task is not in a state that allows the operation.",
  driver_unavailable: "The requested isolation driver cannot run on this host.",
  sandbox_failed: "The sandbox could not be started or died unexpectedly.",
  agent_protocol: "The guest agent spoke the protocol wrongly; the sandbox was stopped.",
  unsafe_archive: "An archive or tree contains an entry that cannot be imported safely.",
  source_not_allowed: "A source path is outside the allowed roots, unreadable or of the wrong kind.",
  source_not_found: "A source path (under the allowed roots) does not exist.",
  limit_exceeded: "A size, count or resource limit was exceeded.",
  file_not_found: "A path in a task's workspace does not exist.",
  path_not_allowed: "A path leaves /workspace or goes through a symlink.",
  patch_failed: "A patch does not apply to the workspace; nothing was changed.",
  target_exists: "An export target already exists (pass merge to write into a directory).",
  busy: "Another pyro process holds the lock for too long.",
  cancelled: "The operation was cancelled.",
  internal: "An unexpected internal failure; please report it.",
} as const;

export type PyroErrorCode = keyof typeof ERROR_CODES;

export interface PyroErrorOptions {
  hint?: string;
  cause?: unknown;
  details?: Record<string, unknown>;
}

export class PyroError extends Error {
  override readonly name = "PyroError";
  readonly code: PyroErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: PyroErrorCode, message: string, options: PyroErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
    this.details = options.details;
  }

  /** The wire form used by `--json` output and MCP error results. */
  toJSON(): { error: { code: PyroErrorCode; message: string; hint?: string; details?: Record<string, unknown> } } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.hint ? { hint: this.hint } : {}),
        ...(this.details ? { details: this.details } : {}),
      },
    };
  }

  /** One or two lines for a person: what failed, then what to do. */
  toText(): string {
    return this.hint ? `${this.message}\n  hint: ${this.hint}` : this.message;
  }
}

export function isPyroError(value: unknown): value is PyroError {
  return value instanceof PyroError;
}

/** Wraps anything thrown into a PyroError, keeping PyroErrors as they are. */
export function asPyroError(value: unknown): PyroError {
  if (value instanceof PyroError) return value;
  if (value instanceof Error && value.name === "AbortError") {
    return new PyroError("cancelled", "The operation was cancelled.", { cause: value });
  }
  const message = value instanceof Error ? value.message : String(value);
  return new PyroError("internal", message, { cause: value, hint: "This is a bug in pyro-mcp; please report it with the command you ran." });
}
