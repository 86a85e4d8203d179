import { posix } from "node:path";
import { writeSync } from "node:fs";
import { PassThrough, Readable } from "node:stream";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { guestPausePoints } from "../util/testhook.js";
import { execInSandbox } from "./sandbox-exec.js";
import { WORKSPACE } from "./workspace.js";

/**
 * The host side of `pyro-agent files` (guest/files.c): every workspace file
 * operation runs inside the sandbox as a process the trusted agent binary
 * (/run/pyro-agent, read-only to the sandbox) starts through the same exec
 * channel as any command, so it works unchanged on every driver. The guest
 * opens each path one component at a time with O_NOFOLLOW from /workspace;
 * the host normalizes paths first so that errors are clear before anything
 * runs. Everything the guest says is parsed as untrusted: bounded, checked.
 */

const AGENT = "/run/pyro-agent";
/** Where the baseline's small files are kept, by hash, outside /workspace (re-validated by the host's manifest). */
export const BASELINE_STORE = "/.pyro-baseline";

/** Turns a user's path (absolute under /workspace, or relative to it) into a path relative to /workspace ("" for /workspace). */
export function workspaceRel(raw: string, what = "path"): string {
  if (typeof raw !== "string" || raw.includes("\0")) throw new PyroError("invalid_argument", `The ${what} contains a NUL byte.`);
  const abs = raw.startsWith("/") ? posix.normalize(raw) : posix.normalize(`${WORKSPACE}/${raw}`);
  const clean = abs.replace(/\/+$/, "") || "/";
  if (clean !== WORKSPACE && !clean.startsWith(`${WORKSPACE}/`)) {
    throw new PyroError("invalid_argument", `The ${what} "${raw}" is outside ${WORKSPACE} (it resolves to "${clean}").`, {
      hint: `Use a path under ${WORKSPACE}, absolute (${WORKSPACE}/app/main.c) or relative to it (app/main.c).`,
    });
  }
  if (raw.split("/").includes("..")) {
    throw new PyroError("invalid_argument", `The ${what} "${raw}" has a \`..\` component.`, { hint: `Name the file directly, e.g. ${clean}.` });
  }
  return clean === WORKSPACE ? "" : clean.slice(WORKSPACE.length + 1);
}

/** The absolute in-sandbox path of a workspace-relative one, for messages and results. */
export function absPath(rel: string): string {
  return rel ? `${WORKSPACE}/${rel}` : WORKSPACE;
}

/** Maps the guest's "kind: message" error line to a PyroError with a hint a caller can act on. */
export function guestError(stderr: string, exitCode: number, what: string): PyroError {
  const line = stderr.trim().split("\n").filter((l) => !l.startsWith("skipped: ")).pop() ?? "";
  const m = /^([a-z_]+): (.*)$/.exec(line);
  const kind = m?.[1] ?? "";
  const message = m?.[2] ?? (line || `exit code ${exitCode}`);
  const at = `${what}: ${message}`;
  switch (kind) {
    case "not_found":
      return new PyroError("file_not_found", at, { hint: "task_file_list (pyro task file ls) shows what the directory holds." });
    case "outside":
    case "symlink":
      return new PyroError("path_not_allowed", at, { hint: `Paths stay under ${WORKSPACE} and never go through a symlink; name the real path (list the directory to see link targets).` });
    case "not_dir":
    case "not_file":
    case "is_dir":
      return new PyroError("invalid_argument", at, { hint: "List the parent directory to see what kind of entry it is." });
    default:
      return new PyroError("sandbox_failed", at, { hint: "Check the task (status, free space), then try again." });
  }
}

export interface FilesRun {
  exit_code: number;
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs `pyro-agent files ARGS` in the sandbox, collecting at most maxStdout
 * bytes of its output (more is a protocol failure of the guest: it is told
 * exactly how much to send). stdout can instead be streamed (onStdout).
 */
export async function runFiles(
  driver: Driver,
  handle: SandboxHandle,
  args: string[],
  options: { stdin?: Buffer | Readable; maxStdout?: number; onStdout?: (c: Buffer) => void | Promise<void>; signal?: AbortSignal; timeout_seconds?: number; argv?: string[] } = {},
): Promise<FilesRun> {
  const chunks: Buffer[] = [];
  let size = 0;
  const cap = options.maxStdout ?? 1024 * 1024;
  const abort = new AbortController();
  const onOuter = () => abort.abort();
  options.signal?.addEventListener("abort", onOuter, { once: true });
  let overflow = false;
  // Fault tests (PYRO_TEST_PAUSE_AT=files:POINT) stop the guest's files process at POINT; its
  // "paused at" line is passed on to this process's stderr at once, so the test knows when to kill.
  const pause = guestPausePoints("files");
  try {
    const r = await execInSandbox(driver, handle, {
      command: options.argv ?? [AGENT, "files", ...args],
      ...(pause
        ? {
            env: { PYRO_FILES_PAUSE_AT: pause },
            onStderr: (c: Buffer) => {
              try {
                writeSync(2, c);
              } catch {
                /* no stderr: the test sees nothing, the operation is unchanged */
              }
            },
          }
        : {}),
      cwd: "/",
      timeout_seconds: options.timeout_seconds ?? 600,
      max_output_bytes: 64 * 1024,
      stdin: options.stdin ?? null,
      signal: abort.signal,
      onStdout: options.onStdout
        ? options.onStdout
        : (c) => {
            size += c.length;
            if (size > cap) {
              overflow = true;
              abort.abort();
              return;
            }
            chunks.push(c);
          },
    });
    if (overflow) {
      throw new PyroError("limit_exceeded", `The sandbox's answer to \`files ${args[0]}\` was over ${cap} bytes, the most the host takes; the operation was stopped and nothing changed.`, {
        hint: "The workspace (or the directory) may hold too many entries: narrow the path, or remove files from the workspace.",
      });
    }
    if (r.cancelled) throw new PyroError("cancelled", "The file operation was cancelled.");
    if (r.timed_out) throw new PyroError("sandbox_failed", "The file operation timed out in the sandbox.", { hint: "The sandbox may be overloaded; try again." });
    return { exit_code: r.exit_code, stdout: Buffer.concat(chunks), stderr: r.stderr };
  } finally {
    options.signal?.removeEventListener("abort", onOuter);
  }
}

/** JSON lines from the guest, each checked to be an object. */
export function jsonLines<T>(buf: Buffer): T[] {
  const out: T[] = [];
  for (const line of buf.toString("utf8").split("\n")) {
    if (!line) continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new PyroError("sandbox_failed", "The sandbox answered a file operation with malformed output.", { hint: "Try again; if it repeats, delete the task." });
    }
    if (typeof v !== "object" || v === null) throw new PyroError("sandbox_failed", "The sandbox answered a file operation with malformed output.");
    out.push(v as T);
  }
  return out;
}

export interface DirEntry {
  name: string;
  kind: "file" | "dir" | "symlink" | "fifo" | "socket" | "device" | "other";
  size: number;
  mode: number;
  mtime: number;
  target?: string;
}

export async function listDir(driver: Driver, handle: SandboxHandle, rel: string, signal?: AbortSignal): Promise<DirEntry[]> {
  const r = await runFiles(driver, handle, ["ls", WORKSPACE, rel], { maxStdout: 64 * 1024 * 1024, signal });
  if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, `Cannot list ${absPath(rel)}`);
  return jsonLines<DirEntry>(r.stdout);
}

/** The guest's answer to read and fetch: a header line, then exactly `sent` bytes. */
function splitHeader(buf: Buffer, at: number): { header: Record<string, unknown>; next: number } {
  const nl = buf.indexOf(0x0a, at);
  if (nl < 0) throw new PyroError("sandbox_failed", "The sandbox's answer to a file read ended early.");
  const header = jsonLines<Record<string, unknown>>(buf.subarray(at, nl + 1))[0] ?? {};
  return { header, next: nl + 1 };
}

function count(v: unknown): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new PyroError("sandbox_failed", "The sandbox's answer to a file read is malformed.");
  return v;
}

export async function readRange(driver: Driver, handle: SandboxHandle, rel: string, offset: number, length: number, signal?: AbortSignal): Promise<{ size: number; mode: number; offset: number; data: Buffer }> {
  const r = await runFiles(driver, handle, ["read", WORKSPACE, rel, String(offset), String(length)], { maxStdout: length + 4096, signal });
  if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, `Cannot read ${absPath(rel)}`);
  const { header, next } = splitHeader(r.stdout, 0);
  const sent = count(header.sent);
  if (sent > length || r.stdout.length - next !== sent) throw new PyroError("sandbox_failed", "The sandbox sent a different number of bytes than it announced.");
  return { size: count(header.size), mode: count(header.mode), offset: count(header.offset), data: r.stdout.subarray(next) };
}

export type CommitRecord = { op: "write"; rel: string; mode: number; data: Buffer } | { op: "delete"; rel: string };

/** Writes and deletes files all or nothing (guest/files.c, commit). */
export async function commitFiles(driver: Driver, handle: SandboxHandle, records: CommitRecord[], signal?: AbortSignal): Promise<void> {
  const parts: Buffer[] = [];
  for (const r of records) {
    if (!r.rel) throw new PyroError("invalid_argument", `${WORKSPACE} itself cannot be written or deleted.`);
    if (r.op === "write") parts.push(Buffer.from(`W ${(r.mode & 0o1777).toString(8)} ${r.data.length} `), Buffer.from(r.rel), Buffer.from([0]), r.data);
    else parts.push(Buffer.from("D "), Buffer.from(r.rel), Buffer.from([0]));
  }
  parts.push(Buffer.from("E\0"));
  const r = await runFiles(driver, handle, ["commit", WORKSPACE], { stdin: Buffer.concat(parts), maxStdout: 4096, signal });
  if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, "Nothing was changed");
}

export interface ManifestEntry {
  path: string;
  kind: DirEntry["kind"];
  mode: number;
  size: number;
  sha256?: string;
  target?: string;
}

/** The manifest of the whole workspace, or (list) of exactly these relative paths; store copies small files into the baseline store. */
export async function manifest(driver: Driver, handle: SandboxHandle, options: { store?: boolean; list?: string[]; signal?: AbortSignal } = {}): Promise<ManifestEntry[]> {
  const args = ["manifest", WORKSPACE];
  if (options.store) args.push("--store", BASELINE_STORE);
  let stdin: Buffer | undefined;
  if (options.list) {
    args.push("--list");
    stdin = Buffer.concat(options.list.flatMap((p) => [Buffer.from(p), Buffer.from([0])]));
  }
  // About 150 bytes an entry: room for ~800,000 entries, and no more of the host's memory whatever the sandbox made.
  const r = await runFiles(driver, handle, args, { stdin, maxStdout: MAX_MANIFEST_BYTES, signal: options.signal, timeout_seconds: 3600 });
  if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, "Cannot record the workspace's manifest");
  return jsonLines<ManifestEntry>(r.stdout).filter((e) => typeof e.path === "string" && typeof e.kind === "string");
}

/** The most manifest text a host takes from a sandbox. */
export const MAX_MANIFEST_BYTES = 128 * 1024 * 1024;

export type FetchItem = { path: string } | { blob: string };
export type Fetched = { data: Buffer; size: number } | { error: string };

/** Several files (workspace paths or baseline blobs by hash), each cut at `cap` bytes, in one exec. */
export async function fetchMany(driver: Driver, handle: SandboxHandle, items: FetchItem[], cap: number, signal?: AbortSignal): Promise<Fetched[]> {
  if (!items.length) return [];
  const stdin = Buffer.concat(items.flatMap((i) => [Buffer.from("path" in i ? `p:${i.path}` : `b:${i.blob}`), Buffer.from([0])]));
  const r = await runFiles(driver, handle, ["fetch", WORKSPACE, BASELINE_STORE, String(cap)], { stdin, maxStdout: items.length * (cap + 4096), signal });
  if (r.exit_code !== 0) throw guestError(r.stderr, r.exit_code, "Cannot read the changed files");
  const out: Fetched[] = [];
  let at = 0;
  for (let i = 0; i < items.length; i++) {
    const { header, next } = splitHeader(r.stdout, at);
    if (typeof header.error === "string") {
      out.push({ error: header.error });
      at = next;
      continue;
    }
    const sent = count(header.sent);
    if (sent > cap || next + sent > r.stdout.length) throw new PyroError("sandbox_failed", "The sandbox sent a different number of bytes than it announced.");
    out.push({ data: r.stdout.subarray(next, next + sent), size: count(header.size) });
    at = next + sent;
  }
  if (at !== r.stdout.length) throw new PyroError("sandbox_failed", "The sandbox sent more than was asked for.");
  return out;
}

/**
 * A tar stream of a subtree (or of exactly the listed paths) straight out of
 * the sandbox, with backpressure: the guest blocks while the host's reader
 * is behind. The stream is untrusted: the caller re-validates every entry.
 */
export function tarOut(driver: Driver, handle: SandboxHandle, rel: string, list: string[] | null, signal?: AbortSignal): { stream: Readable; done: Promise<FilesRun> } {
  const out = new PassThrough({ highWaterMark: 1024 * 1024 });
  const args = ["tar", WORKSPACE, rel];
  // Tests play a compromised guest (a VM whose kernel is the attacker's) with PYRO_TEST_EXPORT_COMMAND:
  // a JSON argv run in the sandbox instead of the agent, whose stdout is the "tar stream" the host must survive.
  const hostile = process.env.PYRO_TEST_EXPORT_COMMAND ? (JSON.parse(process.env.PYRO_TEST_EXPORT_COMMAND) as string[]) : null;
  let stdin: Buffer | undefined;
  if (list) {
    args.push("--list");
    stdin = Buffer.concat(list.flatMap((p) => [Buffer.from(p), Buffer.from([0])]));
  }
  const done = runFiles(driver, handle, args, {
    ...(hostile ? { argv: hostile } : {}),
    stdin,
    signal,
    timeout_seconds: 3600,
    onStdout: (c) => {
      if (out.destroyed) return;
      if (!out.write(c)) return new Promise<void>((resolve) => {
        const go = () => {
          out.off("drain", go);
          out.off("close", go);
          resolve();
        };
        out.on("drain", go);
        out.on("close", go);
      });
    },
  }).then(
    (r) => {
      out.end();
      return r;
    },
    (e: unknown) => {
      out.destroy(e instanceof Error ? e : new Error(String(e)));
      throw e;
    },
  );
  done.catch(() => undefined);
  return { stream: out, done };
}
