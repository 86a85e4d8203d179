import { posix } from "node:path";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../sdk/errors.js";
import { sanitizedTar, type ImportLimits, type ResolvedSource, DEFAULT_IMPORT_LIMITS } from "./archive/index.js";
import { execInSandbox } from "./sandbox-exec.js";

/**
 * The one transfer stack for host content entering a sandbox, used by task
 * creation (seed) and by sync push alike:
 *
 *   host: source -> checked entries -> fresh tar stream ==agent stdin==>
 *   guest: tar -x into a staging directory -> `pyro-agent apply` merges the
 *          stage into the destination, journaling every rename
 *
 * All or nothing: a bad entry stops the stream before anything touches the
 * destination; a failure while applying is rolled back by the journal. The
 * staging directory lives on the sandbox's root filesystem (the same
 * filesystem as /workspace), so applying is renames, not copies.
 */
export { WORKSPACE } from "./workspace.js";
import { WORKSPACE } from "./workspace.js";
const STAGE_ROOT = "/.pyro-stage";
/** The agent's binary inside a sandbox (guest/nsinit.h NSINIT_AGENT_PATH): /proc/1/exe is unreadable to commands. */
const AGENT_IN_SANDBOX = "/run/pyro-agent";

export interface PushOptions {
  dest?: string;
  /** Remove paths under dest that the source does not have (like rsync --delete). */
  delete?: boolean;
  /** Glob patterns (matched against the relative path and the base name) left out of the push and never deleted. */
  exclude?: string[];
  limits?: ImportLimits;
  timeout_seconds?: number;
  signal?: AbortSignal;
  /** Environment variables for the guest's staging step (tests inject faults through it). */
  env?: Record<string, string>;
}

export interface PushResult {
  dest: string;
  files: number;
  bytes: number;
  digest: string;
  added: number;
  replaced: number;
  deleted: number;
  setid_dropped: string[];
  duration_ms: number;
}

/** Normalizes a destination and insists it stays under /workspace. */
export function checkDest(raw: string | undefined): string {
  const value = raw ?? WORKSPACE;
  if (typeof value !== "string" || !value.startsWith("/")) {
    throw new PyroError("invalid_argument", `dest "${value}" must be an absolute path under ${WORKSPACE}.`, { hint: `For example ${WORKSPACE}/src.` });
  }
  if (value.includes("\0")) throw new PyroError("invalid_argument", "dest contains a NUL byte.");
  const dest = posix.normalize(value).replace(/\/+$/, "") || "/";
  if (dest !== WORKSPACE && !dest.startsWith(`${WORKSPACE}/`)) {
    throw new PyroError("invalid_argument", `dest "${value}" is outside ${WORKSPACE} (it resolves to "${dest}").`, {
      hint: `Push into ${WORKSPACE} or a directory under it.`,
    });
  }
  return dest;
}

/** A shell-safe single-quoted word. */
function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Glob (`*`, `?`, `[...]`) to a RegExp, with the same meaning as fnmatch(3) without flags: `*` also crosses `/`. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) re += "\\[";
      else {
        let body = glob.slice(i + 1, end);
        if (body.startsWith("!")) body = "^" + body.slice(1);
        re += `[${body.replace(/\\/g, "\\\\")}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\/]/g, "\\$&");
  }
  return new RegExp(`^${re}$`, "s");
}

export function excluder(patterns: string[] | undefined): ((rel: string) => boolean) | undefined {
  if (!patterns?.length) return undefined;
  const res = patterns.map(globToRegExp);
  return (rel) => {
    const base = rel.slice(rel.lastIndexOf("/") + 1);
    return res.some((r) => r.test(rel) || r.test(base));
  };
}

export async function pushToSandbox(driver: Driver, handle: SandboxHandle, source: ResolvedSource, options: PushOptions = {}): Promise<PushResult> {
  const dest = checkDest(options.dest);
  const id = randomBytes(6).toString("hex");
  const stage = `${STAGE_ROOT}/${id}`;
  const backup = `${STAGE_ROOT}/${id}.backup`;
  const started = performance.now();
  const { stream, stats, checker } = sanitizedTar(source, options.limits ?? DEFAULT_IMPORT_LIMITS, excluder(options.exclude));

  // A failure of the host side (an unsafe entry found mid-stream) must stop the guest before it applies anything.
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort();
  options.signal?.addEventListener("abort", onOuterAbort, { once: true });
  let hostError: unknown = null;
  const input = Readable.from(
    (async function* () {
      try {
        yield* stream;
      } catch (error) {
        hostError = error;
        abort.abort();
      }
    })(),
  );

  // Earlier crashed pushes may have left stages behind; pushes to one sandbox are serialized by the caller.
  const script = [
    "set -e",
    "umask 022",
    `rm -rf ${STAGE_ROOT}`,
    `mkdir -p ${q(stage)}`,
    `tar -x -f - -C ${q(stage)} || { rm -rf ${STAGE_ROOT}; echo 'pyro: unpacking the pushed archive failed' >&2; exit 3; }`,
    `exec ${AGENT_IN_SANDBOX} apply --stage ${q(stage)} --dest ${q(dest)} --backup ${q(backup)} --root ${WORKSPACE}${options.delete ? " --delete" : ""}${(options.exclude ?? []).map((p) => ` --exclude ${q(p)}`).join("")}`,
  ].join("\n");
  try {
    const outcome = await execInSandbox(driver, handle, {
      command: ["/bin/sh", "-c", script],
      cwd: "/",
      env: options.env,
      timeout_seconds: options.timeout_seconds ?? 3600,
      max_output_bytes: 64 * 1024,
      stdin: input,
      signal: abort.signal,
    });
    if (hostError) throw hostError;
    if (outcome.cancelled) throw new PyroError("cancelled", "The push was cancelled; the destination is unchanged.");
    if (outcome.exit_code !== 0) {
      const why = outcome.timed_out ? "it timed out" : outcome.stderr.trim().split("\n").pop() || `exit code ${outcome.exit_code}`;
      throw new PyroError("sandbox_failed", `The push into ${dest} failed in the sandbox: ${why}.`, {
        hint: "Nothing was changed in the workspace. Check the destination and the sandbox's free space, then push again.",
      });
    }
    const counts = JSON.parse(outcome.stdout.trim().split("\n").pop() || "{}") as { added?: number; replaced?: number; deleted?: number };
    return {
      dest,
      files: stats.files,
      bytes: stats.bytes,
      digest: stats.digest,
      added: counts.added ?? 0,
      replaced: counts.replaced ?? 0,
      deleted: counts.deleted ?? 0,
      setid_dropped: checker.setidDropped,
      duration_ms: Math.round(performance.now() - started),
    };
  } catch (error) {
    // Leave no stage behind after a failure (the guest's own cleanup may not have run).
    await execInSandbox(driver, handle, { command: ["/bin/rm", "-rf", STAGE_ROOT], timeout_seconds: 60, max_output_bytes: 4096 }).catch(() => undefined);
    throw error;
  } finally {
    options.signal?.removeEventListener("abort", onOuterAbort);
  }
}
