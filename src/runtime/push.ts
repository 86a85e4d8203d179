import { closeSync, fsyncSync, openSync, rmSync, writeSync } from "node:fs";
import { dirname, posix } from "node:path";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { compileExcludes, sanitizedTar, type CheckedEntry, type ImportLimits, type ResolvedSource, DEFAULT_IMPORT_LIMITS } from "./archive/index.js";
import { execInSandbox } from "./sandbox-exec.js";

/**
 * The one transfer stack for host content entering a sandbox, used by task
 * creation (seed) and by sync push alike:
 *
 *   host: source -> checked entries -> fresh tar stream -> frames + end marker
 *         (sha256 and length) ==agent stdin==>
 *   guest: `pyro-agent apply --receive` feeds the frames to tar -x in a
 *          staging directory, checks the end marker, plans the merge into an
 *          fsynced journal, renames, commits (guest/apply.c)
 *
 * All or nothing: a bad entry stops the stream before anything touches the
 * destination, and a stream that ends without its marker (host killed,
 * connection cut) is never applied; a failure while applying is undone from
 * the journal, and an apply killed outright (its process, the agent, the
 * sandbox, or this host process) is rolled back or forward by the next
 * push or exec (recoverPush). The staging directory lives on the sandbox's
 * root filesystem (the same filesystem as /workspace), so applying is
 * renames, not copies. A stream that moves no byte for stall_seconds is
 * stopped (a watchdog), so no push waits forever.
 */
export { WORKSPACE } from "./workspace.js";
import { WORKSPACE } from "./workspace.js";
const STAGE_ROOT = "/.pyro-stage";
/** The agent's binary inside a sandbox (guest/nsinit.h NSINIT_AGENT_PATH): /proc/1/exe is unreadable to commands. */
const AGENT_IN_SANDBOX = "/run/pyro-agent";
const JOURNAL = `${STAGE_ROOT}/journal`;

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
  /**
   * Progress watchdog: a push whose stream moves no byte for this long
   * (the source stopped yielding, or the sandbox stopped taking its stdin)
   * is stopped with sandbox_failed and nothing is applied. Default
   * $PYRO_PUSH_STALL_SECONDS, else 60.
   */
  stall_seconds?: number;
  /**
   * A host file that exists while a push may be half-applied in the sandbox
   * (written before the guest starts, removed once the push applied or was
   * undone). A process killed mid-push leaves it; the next operation on the
   * task then runs recoverPush first.
   */
  pending_marker?: string;
  /** Told of every checked entry as it is packed (paths relative to dest): what the task's baseline learns a push carried. */
  onEntry?: (entry: CheckedEntry) => void;
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

/** Frames carry at most this much of the tar stream (the guest refuses frames over 16 MiB). */
const FRAME_MAX = 1024 * 1024;

/** Default for PushOptions.stall_seconds. */
export const DEFAULT_STALL_SECONDS = 60;

/**
 * The guest command that finishes or undoes an interrupted apply (its journal
 * lives in the sandbox's writable layer, outside /workspace) and empties the
 * stage root. Harmless when nothing was interrupted.
 */
export const RECOVER_COMMAND = [AGENT_IN_SANDBOX, "apply", "--recover", "--journal", JOURNAL];

function writeMarker(path: string): void {
  const fd = openSync(path, "w", 0o600);
  try {
    writeSync(fd, `${process.pid} ${new Date().toISOString()}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const dir = openSync(dirname(path), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/** Runs the guest's recovery; throws sandbox_failed when the sandbox cannot do it. */
export async function recoverPush(driver: Driver, handle: SandboxHandle): Promise<void> {
  const r = await execInSandbox(driver, handle, { command: RECOVER_COMMAND, cwd: "/", timeout_seconds: 120, max_output_bytes: 64 * 1024 });
  if (r.exit_code !== 0) {
    throw new PyroError("sandbox_failed", `Recovering an interrupted push failed in the sandbox: ${r.stderr.trim().split("\n").pop() || `exit code ${r.exit_code}`}.`, {
      hint: "The workspace may hold a half-applied push; the next push or exec retries the recovery. If it keeps failing, check the sandbox's free space.",
    });
  }
}

/**
 * The host side of the guest's `--receive`: each piece of the tar stream as a
 * frame (u32 LE length + bytes), then an empty frame, the stream's sha256 and
 * its length (u64 LE). The guest applies the stage only when that end marker
 * arrived and matches, so a stream cut anywhere applies nothing.
 */
async function* framed(stream: AsyncIterable<Buffer>, stats: { digest: string }, onProgress: (bytes: number) => void): AsyncGenerator<Buffer> {
  let total = 0;
  for await (const piece of stream) {
    for (let off = 0; off < piece.length; off += FRAME_MAX) {
      const part = piece.subarray(off, Math.min(piece.length, off + FRAME_MAX));
      const head = Buffer.alloc(4);
      head.writeUInt32LE(part.length, 0);
      total += part.length;
      yield Buffer.concat([head, part]);
      onProgress(total);
    }
  }
  if (!/^sha256:[0-9a-f]{64}$/.test(stats.digest)) throw new PyroError("internal", "the packed stream ended without its digest");
  const trailer = Buffer.alloc(4 + 32 + 8);
  Buffer.from(stats.digest.slice(7), "hex").copy(trailer, 4);
  trailer.writeBigUInt64LE(BigInt(total), 36);
  yield trailer;
  onProgress(total);
}

export async function pushToSandbox(driver: Driver, handle: SandboxHandle, source: ResolvedSource, options: PushOptions = {}): Promise<PushResult> {
  const dest = checkDest(options.dest);
  // Bad patterns are refused before anything moves.
  const exclude = compileExcludes(options.exclude);
  const stallSeconds = options.stall_seconds ?? (Number(process.env.PYRO_PUSH_STALL_SECONDS) || DEFAULT_STALL_SECONDS);
  if (!(stallSeconds > 0)) throw new PyroError("invalid_argument", `stall_seconds must be positive, got ${stallSeconds}.`);
  const id = randomBytes(6).toString("hex");
  const stage = `${STAGE_ROOT}/${id}`;
  const backup = `${STAGE_ROOT}/${id}.backup`;
  const started = performance.now();
  const { stream, stats, checker } = sanitizedTar(source, options.limits ?? DEFAULT_IMPORT_LIMITS, exclude, options.onEntry);

  // A failure of the host side (an unsafe entry found mid-stream) must stop the guest before it applies anything:
  // the stream then ends without its end marker (the guest refuses it) and the command is killed.
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort();
  options.signal?.addEventListener("abort", onOuterAbort, { once: true });
  let hostError: unknown = null;
  let sent = 0;
  let lastProgress = performance.now();
  let streamed = false;
  let stalled = false;
  const input = Readable.from(
    (async function* () {
      try {
        yield* framed(stream, stats, (n) => {
          sent = n;
          lastProgress = performance.now();
        });
        streamed = true;
      } catch (error) {
        hostError = error;
        abort.abort();
      }
    })(),
  );
  // Nothing that moves bytes may wait forever: no progress for stall_seconds stops the push.
  const watchdog = setInterval(() => {
    if (!streamed && !hostError && performance.now() - lastProgress > stallSeconds * 1000) {
      stalled = true;
      abort.abort();
    }
  }, Math.min(1000, stallSeconds * 250));

  if (options.pending_marker) writeMarker(options.pending_marker);
  const args = ["--receive", "--journal", JOURNAL, "--stage", stage, "--dest", dest, "--backup", backup, "--root", WORKSPACE];
  if (options.delete) args.push("--delete");
  for (const p of options.exclude ?? []) args.push("--exclude", p);
  try {
    const outcome = await execInSandbox(driver, handle, {
      command: [AGENT_IN_SANDBOX, "apply", ...args],
      cwd: "/",
      env: options.env,
      timeout_seconds: options.timeout_seconds ?? 3600,
      max_output_bytes: 64 * 1024,
      stdin: input,
      signal: abort.signal,
    });
    if (hostError) throw hostError;
    if (stalled) {
      throw new PyroError("sandbox_failed", `The push into ${dest} made no progress for ${stallSeconds} s (${sent} bytes of the stream had been taken); it was stopped and nothing was applied.`, {
        hint: "The sandbox may be out of disk space or hung, or the source stopped being readable. Check the task (status, exec df), then push again.",
        details: { bytes_sent: sent },
      });
    }
    if (outcome.cancelled) throw new PyroError("cancelled", "The push was cancelled; the destination is unchanged.");
    if (outcome.exit_code !== 0) {
      const why = outcome.timed_out ? "it timed out" : outcome.stderr.trim().split("\n").pop() || `exit code ${outcome.exit_code}`;
      throw new PyroError("sandbox_failed", `The push into ${dest} failed in the sandbox: ${why}.`, {
        hint: "Nothing was changed in the workspace. Check the destination and the sandbox's free space, then push again.",
      });
    }
    const counts = JSON.parse(outcome.stdout.trim().split("\n").pop() || "{}") as { added?: number; replaced?: number; deleted?: number };
    if (options.pending_marker) rmSync(options.pending_marker, { force: true });
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
    // Leave no stage and no half-applied change behind (the guest's own cleanup may not have run).
    const recovered = await recoverPush(driver, handle).then(
      () => true,
      () => false,
    );
    if (recovered && options.pending_marker) rmSync(options.pending_marker, { force: true });
    throw error;
  } finally {
    clearInterval(watchdog);
    options.signal?.removeEventListener("abort", onOuterAbort);
  }
}
