import type * as z from "zod";
import { PyroError } from "../core/errors.js";
import { LIMITS } from "../core/defaults.js";

/** The value at `path` in what the caller passed (for "got ..." in a message). */
function valueAt(args: unknown, path: readonly PropertyKey[]): unknown {
  let at: unknown = args;
  for (const k of path) {
    if (typeof at !== "object" || at === null) return undefined;
    at = (at as Record<PropertyKey, unknown>)[k];
  }
  return at;
}

function shown(value: unknown): string {
  const s = JSON.stringify(value);
  return s === undefined ? String(value) : s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

/**
 * One issue in the caller's words: a setting out of range names its whole
 * range and what was given ("mem_mib must be between 64 and 262144, got 1"),
 * not zod's "Too small: expected number to be >=64".
 */
function issueText(issue: z.core.$ZodIssue, args: unknown): string {
  const field = issue.path.length ? issue.path.map(String).join(".") : "arguments";
  const key = String(issue.path[issue.path.length - 1] ?? "");
  const range = (LIMITS as Record<string, unknown>)[key] as { min: number; max: number } | undefined;
  const value = valueAt(args, issue.path);
  if ((issue.code === "too_small" || issue.code === "too_big") && range && typeof value === "number") {
    return `${field} must be between ${range.min} and ${range.max}, got ${value}`;
  }
  // Without a named range, the one bound that was crossed (not zod's "Too small: expected number to be >=1").
  if (issue.code === "too_small" && typeof value === "number") return `${field} must be ${issue.inclusive === false ? "more than" : "at least"} ${issue.minimum}, got ${value}`;
  if (issue.code === "too_big" && typeof value === "number") return `${field} must be ${issue.inclusive === false ? "less than" : "at most"} ${issue.maximum}, got ${value}`;
  if (issue.code === "invalid_type" && range && value !== undefined) {
    return `${field} must be a whole number between ${range.min} and ${range.max}, got ${shown(value)}`;
  }
  if (issue.code === "invalid_value" && value !== undefined) return `${field} must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}, got ${shown(value)}`;
  if (issue.code === "unrecognized_keys") return `unknown argument${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => JSON.stringify(k)).join(", ")}`;
  return `${field}: ${issue.message}`;
}

/**
 * Parses an operation's arguments with its schema, turning zod's report into
 * one PyroError that names each bad field (`operation` prefixes the message,
 * e.g. "env pull"). details.issues keeps each field's path, so a front door
 * can say it in its own words (the CLI names its flags).
 */
export function parseArgs<S extends z.ZodType>(schema: S, args: unknown, operation?: string): z.infer<S> {
  const result = schema.safeParse(args ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => issueText(i, args));
  throw new PyroError("invalid_argument", `${operation ? `${operation}: ` : ""}Invalid arguments: ${problems.join("; ")}.`, {
    hint: "Check the argument names and ranges in docs/public-contract.md.",
    details: { issues: result.error.issues.map((i, n) => ({ path: i.path.map(String), message: problems[n]! })) },
  });
}
