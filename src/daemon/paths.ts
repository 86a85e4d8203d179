import { lstatSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { VERSION } from "../version.js";
import { PyroError } from "../core/errors.js";

declare const __PYRO_BUILD__: string | undefined;

/** This build of pyro: set by the bundler (a new value per build); from source, the version. */
export const BUILD_ID: string = typeof __PYRO_BUILD__ === "string" ? __PYRO_BUILD__ : `${VERSION}-source`;

/** Whether `pyro run` may use (and start) the daemon: on unless PYRO_DAEMON is 0, off, false or no. */
export function daemonEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = (env.PYRO_DAEMON ?? "").trim().toLowerCase();
  return !["0", "off", "false", "no"].includes(v);
}

/**
 * One daemon per user, build and configuration: everything in the
 * environment that changes what a run does (state and cache directories,
 * driver, agent override, PATH for bwrap and pasta) is part of its name, so a
 * client never reaches a daemon that would run its command differently.
 */
export function daemonKey(raw: NodeJS.ProcessEnv = process.env): string {
  const env = withAbsolutePaths(raw);
  const relevant = Object.keys(env)
    .filter((k) => k.startsWith("PYRO_") || k.startsWith("XDG_") || k === "HOME" || k === "PATH")
    .filter((k) => !k.startsWith("PYRO_DAEMON") && k !== "XDG_RUNTIME_DIR")
    .sort()
    .map((k) => `${k}=${env[k]}`);
  return fnv1a64([BUILD_ID, String(process.getuid?.() ?? -1), ...relevant].join("\0"));
}

/** Variables that name directories or files, relative to the working directory when relative. */
const PATH_VARIABLES = ["PYRO_STATE_DIR", "PYRO_CACHE_DIR", "PYRO_AGENT", "XDG_STATE_HOME", "XDG_CACHE_HOME"];

/**
 * The environment with path variables made absolute: the daemon runs in /,
 * and two clients in different directories with PYRO_STATE_DIR=./state mean
 * different state directories, hence different daemons.
 */
export function withAbsolutePaths(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  for (const k of PATH_VARIABLES) if (out[k]) out[k] = resolve(out[k]!);
  return out;
}

/** The directory that holds this user's daemon sockets: $XDG_RUNTIME_DIR/pyro-mcp, else /tmp/pyro-mcp-<uid>. */
export function daemonDir(env: NodeJS.ProcessEnv = process.env): string {
  const uid = process.getuid?.() ?? 0;
  return env.XDG_RUNTIME_DIR ? join(env.XDG_RUNTIME_DIR, "pyro-mcp") : join(tmpdir(), `pyro-mcp-${uid}`);
}

export function socketPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(daemonDir(env), `daemon-${daemonKey(env)}.sock`);
}

/**
 * Why a socket directory cannot be trusted, or null when it can: it must be
 * a real directory (not a symlink) owned by this user and closed to everyone
 * else. Otherwise another user could have planted a socket in it that
 * impersonates the daemon.
 */
export function untrustedDirReason(dir: string): string | null {
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    return "it does not exist";
  }
  if (st.isSymbolicLink()) return "it is a symlink";
  if (!st.isDirectory()) return "it is not a directory";
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return `it is owned by uid ${st.uid}, not ${uid}`;
  if ((st.mode & 0o077) !== 0) return `its mode is ${(st.mode & 0o777).toString(8)}, not 700`;
  return null;
}

/** Creates the socket directory (mode 700) if needed; throws when an existing one cannot be trusted. */
export function ensureDaemonDir(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const why = untrustedDirReason(dir);
  if (why) {
    throw new PyroError("invalid_state", `refusing the daemon directory ${dir}: ${why}.`, {
      hint: "Another user could plant a socket there. Remove it, or set XDG_RUNTIME_DIR to a private directory.",
    });
  }
}

/** A 64-bit FNV-1a hash in hex: names, not security (node:crypto would cost the fast path a module load). */
function fnv1a64(text: string): string {
  let hash = 0xcbf29ce484222325n;
  const bytes = Buffer.from(text, "utf8");
  for (const b of bytes) hash = BigInt.asUintN(64, (hash ^ BigInt(b)) * 0x100000001b3n);
  return hash.toString(16).padStart(16, "0");
}
