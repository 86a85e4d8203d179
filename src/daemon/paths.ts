import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, type Stats } from "node:fs";
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
  return join(daemonDir(env), socketName(env));
}

/** The socket's name in its directory. */
export function socketName(env: NodeJS.ProcessEnv = process.env): string {
  return `daemon-${daemonKey(env)}.sock`;
}

/**
 * Why a socket directory cannot be trusted, or null when it can: it must be
 * a real directory (not a symlink) owned by this user and closed to everyone
 * else. Otherwise another user could have planted a socket in it that
 * impersonates the daemon.
 */
export function untrustedDirReason(dir: string): string | null {
  const held = holdDaemonDir(dir);
  if (typeof held === "string") return held;
  closeSync(held.fd);
  return null;
}

/**
 * The socket directory held open once checked, for reaching the socket
 * through it (`via`, /proc/self/fd/N) instead of by its name again. The
 * directory's parent may be another user's (root after a plain `su` keeps
 * the user's XDG_RUNTIME_DIR): checked by name and connected by name, that
 * user could swap a directory of their own in between, with a socket that
 * answers as the daemon (the attack suite won that race 7 times in 4000).
 * Returns why it cannot be trusted instead, as untrustedDirReason does.
 */
export function holdDaemonDir(dir: string): { fd: number; via: string } | string {
  let fd: number;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return "it does not exist";
    // O_DIRECTORY|O_NOFOLLOW refuses a symlink with ENOTDIR (ELOOP without O_DIRECTORY): say which it was.
    if (code === "ELOOP" || code === "ENOTDIR") return lstatSync(dir, { throwIfNoEntry: false })?.isSymbolicLink() ? "it is a symlink" : "it is not a directory";
    return `it cannot be opened (${code})`;
  }
  const why = distrust(fstatSync(fd));
  if (why) {
    closeSync(fd);
    return why;
  }
  return { fd, via: `/proc/self/fd/${fd}` };
}

function distrust(st: Stats): string | null {
  if (!st.isDirectory()) return "it is not a directory";
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return `it is owned by uid ${st.uid}, not ${uid}`;
  if ((st.mode & 0o077) !== 0) return `its mode is ${(st.mode & 0o777).toString(8)}, not 700`;
  return null;
}

/** Creates the socket directory (mode 700) if needed and holds it (holdDaemonDir); throws when an existing one cannot be trusted. */
export function ensureDaemonDir(dir: string): { fd: number; via: string } {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const held = holdDaemonDir(dir);
  if (typeof held === "string") {
    throw new PyroError("invalid_state", `refusing the daemon directory ${dir}: ${held}.`, {
      hint: "Another user could plant a socket there. Remove it, or set XDG_RUNTIME_DIR to a private directory.",
    });
  }
  return held;
}

/** A 64-bit FNV-1a hash in hex: names, not security (node:crypto would cost the fast path a module load). */
function fnv1a64(text: string): string {
  let hash = 0xcbf29ce484222325n;
  const bytes = Buffer.from(text, "utf8");
  for (const b of bytes) hash = BigInt.asUintN(64, (hash ^ BigInt(b)) * 0x100000001b3n);
  return hash.toString(16).padStart(16, "0");
}
