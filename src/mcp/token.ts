import { closeSync, constants as fsConstants, fstatSync, openSync, readFileSync, type Stats } from "node:fs";
import { PyroError } from "../core/errors.js";

/**
 * Where the HTTP front door's bearer token comes from: `--token-file PATH` or
 * `$PYRO_MCP_TOKEN`, never the command line (where every local user can read
 * it in ps). Kept apart from http.ts so that the CLI checks a token without
 * loading the HTTP transport.
 */

/** The environment variable a bearer token may come from (removed from the environment once read). */
export const TOKEN_ENV = "PYRO_MCP_TOKEN";
/** Shortest bearer token accepted. */
export const MIN_TOKEN_LENGTH = 16;
/** Largest token file read: a token is one short line. */
const MAX_TOKEN_FILE_BYTES = 4096;

/** How to make a good token file, for hints (PATH stands for the file). */
export const MAKE_TOKEN_FILE = "(umask 077; openssl rand -hex 32 > PATH)";

function fileKind(st: Stats): string {
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a fifo";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice() || st.isBlockDevice()) return "a device";
  return "not a regular file";
}

/**
 * Reads the bearer token from `--token-file PATH`. The file must be a regular
 * file owned by the current user that neither group nor others can read or
 * write (a token others can read is no secret; one others can write lets them
 * pick it). The checks are made on the opened descriptor, so the file cannot
 * be swapped between the check and the read. One trailing newline (LF or
 * CRLF) is dropped; an empty file or one of several lines is refused.
 */
export function readTokenFile(path: string): string {
  let fd: number;
  try {
    // O_NONBLOCK: a fifo put in the file's place must not hang the server before the check refuses it.
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOCTTY);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "does not exist" : code === "EACCES" ? "cannot be read (permission denied)" : `cannot be opened (${code ?? (error as Error).message})`;
    throw new PyroError("invalid_argument", `--token-file ${path} ${why}.`, {
      hint:
        code === "EACCES"
          ? `Use a file of your own that you can read: \`ls -l ${path}\` shows its owner and mode; \`chmod 600 ${path}\` as its owner.`
          : `Create it with a long random token that only you can read: ${MAKE_TOKEN_FILE.replace("PATH", path)}.`,
      cause: error,
    });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      throw new PyroError("invalid_argument", `--token-file ${path} is ${fileKind(st)}; it must be a regular file holding the token.`, {
        hint: `Point --token-file at a file that holds only the token, e.g. one made with ${MAKE_TOKEN_FILE.replace("PATH", "FILE")}.`,
      });
    }
    const uid = process.geteuid?.();
    if (uid !== undefined && st.uid !== uid) {
      throw new PyroError("invalid_argument", `--token-file ${path} is owned by uid ${st.uid}, not by the user running pyro (uid ${uid}): its owner can read and change the token.`, {
        hint: `Use a token file of your own: ${MAKE_TOKEN_FILE.replace("PATH", "FILE")}, then --token-file FILE.`,
      });
    }
    const mode = st.mode & 0o777;
    if (mode & 0o066) {
      const who = [mode & 0o044 ? "readable" : "", mode & 0o022 ? "writable" : ""].filter(Boolean).join(" and ");
      throw new PyroError("invalid_argument", `--token-file ${path} is ${who} by group or others (mode ${mode.toString(8).padStart(4, "0")}); the token must be private to you.`, {
        hint: `Run \`chmod 600 ${path}\`${mode & 0o044 ? ", and replace the token if someone else may have read it" : ""}.`,
      });
    }
    if (st.size > MAX_TOKEN_FILE_BYTES) {
      throw new PyroError("invalid_argument", `--token-file ${path} is ${st.size} bytes; a token file holds one line (at most ${MAX_TOKEN_FILE_BYTES} bytes).`, {
        hint: "Check the path: the file should hold only the token.",
      });
    }
    const token = readFileSync(fd, "utf8").replace(/\r?\n$/, "");
    if (token.length === 0) {
      throw new PyroError("invalid_argument", `--token-file ${path} is empty.`, { hint: `Write a long random token into it: ${MAKE_TOKEN_FILE.replace("PATH", path)}.` });
    }
    if (/[\r\n]/.test(token)) {
      throw new PyroError("invalid_argument", `--token-file ${path} holds more than one line; it must hold only the token.`, { hint: "Put the token alone on the first line (a trailing newline is fine)." });
    }
    checkToken(token, `The token in --token-file ${path}`);
    return token;
  } finally {
    closeSync(fd);
  }
}

/**
 * Takes `$PYRO_MCP_TOKEN` out of `env` (default: this process's environment)
 * and returns it, or undefined when it is unset or empty (check it with
 * checkToken before use). Removing it keeps the token out of every process
 * pyro starts afterwards (bwrap and the sandbox's init, pasta, environment
 * builders), which would otherwise inherit it.
 */
export function takeEnvToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = env[TOKEN_ENV];
  delete env[TOKEN_ENV];
  return value || undefined;
}

/** Refuses a token too short to be a secret; `what` names where it came from. */
export function checkToken(token: string, what: string): void {
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new PyroError("invalid_argument", `${what} is too short for an MCP bearer token (fewer than ${MIN_TOKEN_LENGTH} characters).`, {
      hint: "Use a long random secret, e.g. `openssl rand -hex 32`.",
    });
  }
}
