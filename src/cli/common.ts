import { InvalidArgumentError, type Command } from "commander";
import { asPyroError, PyroError } from "../core/errors.js";
import { processIo, type CliIo } from "./io.js";
export { formatBytes, shownPath } from "../util/format.js";

/** Exit codes of pyro's own failures (the guest's exit code passes through otherwise). */
export const EXIT_USAGE = 2;
export const EXIT_RUNTIME = 125;

const USAGE_CODES = new Set(["invalid_argument", "unknown_environment", "unknown_vm", "unknown_task", "path_not_allowed", "file_not_found", "source_not_found", "target_exists"]);

export function exitCodeFor(error: PyroError): number {
  return USAGE_CODES.has(error.code) ? EXIT_USAGE : EXIT_RUNTIME;
}

/** Prints a result: JSON for machines, the formatter's text for people. */
export function emit(value: unknown, json: boolean, human: (v: any) => string, out: CliIo["stdout"] = process.stdout): void {
  if (json) out.write(JSON.stringify(value, null, 2) + "\n");
  else {
    const text = human(value);
    if (text) out.write(text.endsWith("\n") ? text : text + "\n");
  }
}

/**
 * Wraps a command's action: one place turns every failure into one clear line
 * (plus a hint) on stderr, or an error object on stdout with --json, and the
 * documented exit code.
 */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void>, io: CliIo = processIo()): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const command = args[args.length - 1] as Command;
    const json = Boolean(command?.opts?.().json);
    try {
      const code = await fn(...args);
      if (typeof code === "number") io.setExitCode(code);
    } catch (raw) {
      const error = inFlagWords(asPyroError(raw), command);
      if (json) io.stdout.write(JSON.stringify(error.toJSON(), null, 2) + "\n");
      io.stderr.write(`pyro: ${error.toText()}\n`);
      if (error.code === "internal" && process.env.PYRO_DEBUG) io.stderr.write(`${(raw as Error)?.stack ?? raw}\n`);
      io.setExitCode(exitCodeFor(error));
    }
  };
}

/**
 * An argument error in the CLI's words: a field the command has a flag for is
 * named by that flag (`--mem-mib must be between 64 and 262144, got 1`, not
 * `mem_mib: Too small: expected number to be >=64`), and the hint points at
 * the command's help instead of the contract's field names.
 */
export function inFlagWords(error: PyroError, command: Command | undefined): PyroError {
  const issues = error.details?.issues as Array<{ path: string[]; message: string }> | undefined;
  if (error.code !== "invalid_argument" || !Array.isArray(issues) || !command?.options) return error;
  const flags = new Set(command.options.map((o) => o.long).filter(Boolean));
  let named = 0;
  const lines = issues.map((i) => {
    const field = i.path[0];
    const flag = field ? `--${field.replace(/_/g, "-")}` : "";
    if (!field || !flags.has(flag) || !i.message.startsWith(field)) return i.message;
    named++;
    return flag + i.message.slice(field.length).replace(/^: /, " ");
  });
  if (!named) return error;
  const name = commandPath(command);
  return new PyroError("invalid_argument", `${lines.join("; ")}.`, { hint: `See \`${name} --help\` for every flag and its default.`, details: error.details, cause: error });
}

function commandPath(command: Command): string {
  const names: string[] = [];
  for (let c: Command | null = command; c; c = c.parent) names.unshift(c.name());
  names[0] = "pyro";
  return names.join(" ");
}

/** Parses an integer option, with the option's name in the error. */
export function intOption(name: string): (value: string) => number {
  return (value: string) => {
    // Commander reports this as a usage error (exit 2), naming the option and the value.
    if (!/^-?\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be an integer.`);
    return Number(value);
  };
}

