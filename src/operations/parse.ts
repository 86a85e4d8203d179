import type * as z from "zod";
import { PyroError } from "../core/errors.js";

/**
 * Parses an operation's arguments with its schema, turning zod's report into
 * one PyroError that names each bad field (`operation` prefixes the message,
 * e.g. "env pull").
 */
export function parseArgs<S extends z.ZodType>(schema: S, args: unknown, operation?: string): z.infer<S> {
  const result = schema.safeParse(args ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => `${i.path.length ? i.path.join(".") : "arguments"}: ${i.message}`);
  throw new PyroError("invalid_argument", `${operation ? `${operation}: ` : ""}Invalid arguments: ${problems.join("; ")}.`, {
    hint: "Check the argument names and ranges in docs/public-contract.md.",
    details: { issues: result.error.issues.map((i) => ({ path: i.path.map(String), message: i.message })) },
  });
}
