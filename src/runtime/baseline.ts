import { createHash } from "node:crypto";
import { isUtf8 } from "node:buffer";
import { join, posix } from "node:path";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { PyroError } from "../core/errors.js";
import { readJsonOrNull, writeJsonAtomic } from "../util/fsutil.js";
import { compileExcludes } from "./archive/glob.js";
import { unifiedDiff } from "./diff.js";
import { absPath, fetchMany, manifest, type Fetched, type FetchItem, type ManifestEntry } from "./files.js";

/**
 * A task's baseline: what /workspace held when the task was created (its
 * seed) and, for the paths a push carried, what the push put there. It is a
 * manifest (path, kind, mode, size, sha256, link target), kept on the HOST
 * in the task's directory, where the sandbox cannot change it. For text
 * diffs the sandbox also keeps the baseline's small files (up to 1 MiB) by
 * hash in /.pyro-baseline, outside /workspace; the host re-hashes every such
 * copy it is sent and refuses one that does not match its manifest, so an
 * agent that edits the store can hide nothing, only lose a diff's old side.
 */
export interface Baseline {
  schema: 1;
  recorded_at: string;
  updated_at: string;
  entries: Record<string, Omit<ManifestEntry, "path">>;
}

const FILE = "baseline.json";

function entryOf(e: ManifestEntry): Omit<ManifestEntry, "path"> {
  return { kind: e.kind, mode: e.mode, size: e.size, ...(e.sha256 ? { sha256: e.sha256 } : {}), ...(e.target !== undefined ? { target: e.target } : {}) };
}

export function readBaseline(taskDir: string): Baseline | null {
  const b = readJsonOrNull<Baseline>(join(taskDir, FILE));
  return b && b.schema === 1 && typeof b.entries === "object" && b.entries !== null ? b : null;
}

/** At create, after the seed: the whole workspace. */
export async function recordBaseline(driver: Driver, handle: SandboxHandle, taskDir: string, signal?: AbortSignal): Promise<void> {
  const entries = await manifest(driver, handle, { store: true, signal });
  const now = new Date().toISOString();
  const b: Baseline = { schema: 1, recorded_at: now, updated_at: now, entries: Object.fromEntries(entries.map((e) => [e.path, entryOf(e)])) };
  writeJsonAtomic(join(taskDir, FILE), b);
}

/**
 * After a push, the pushed state is the baseline of the paths it carried:
 * a diff then shows what the agent changed since the host last gave it
 * content, not the host's own edits. Paths the push did not carry keep
 * their baseline; with `delete`, paths under dest the push removed (those
 * no exclude pattern protects) leave the baseline too.
 */
export async function updateBaselineAfterPush(
  driver: Driver,
  handle: SandboxHandle,
  taskDir: string,
  push: { destRel: string; pushed: string[]; delete?: boolean; exclude?: string[] },
  signal?: AbortSignal,
): Promise<void> {
  const b = readBaseline(taskDir);
  if (!b) return; // a task from before baselines: task_diff says so
  const paths = push.pushed.map((p) => (push.destRel ? `${push.destRel}/${p}` : p));
  const fresh = await manifest(driver, handle, { store: true, list: paths, signal });
  if (push.delete) {
    const excluded = compileExcludes(push.exclude);
    const pushedSet = new Set(paths);
    for (const path of Object.keys(b.entries)) {
      const under = push.destRel === "" ? path : path.startsWith(`${push.destRel}/`) ? path.slice(push.destRel.length + 1) : null;
      if (under === null || pushedSet.has(path)) continue;
      const parts = under.split("/");
      const kept = excluded && parts.some((_, i) => excluded(parts.slice(0, i + 1).join("/")));
      if (!kept) delete b.entries[path];
    }
  }
  for (const p of paths) delete b.entries[p];
  for (const e of fresh) b.entries[e.path] = entryOf(e);
  b.updated_at = new Date().toISOString();
  writeJsonAtomic(join(taskDir, FILE), b);
}

export interface Change {
  path: string;
  status: "added" | "modified" | "deleted";
  kind: string;
  old_kind: string | null;
  mode: number | null;
  old_mode: number | null;
  size: number | null;
  old_size: number | null;
  /** null: not a regular file on either side (a symlink), or not looked at. */
  binary: boolean | null;
  diff: string | null;
  /** Why there is no diff, when there is none. */
  note: string | null;
}

export interface DiffResult {
  baseline_at: string;
  added: string[];
  modified: string[];
  deleted: string[];
  changes: Change[];
  /** Every text diff, concatenated: what `git apply` takes. */
  patch: string;
  truncated: boolean;
}

export interface DiffOptions {
  /** Only paths under this workspace-relative directory ("" for all). */
  under: string;
  /** Most bytes of diff text in the result. */
  max_diff_bytes: number;
  /** Files larger than this (either side) are named, not diffed. */
  max_file_bytes: number;
  signal?: AbortSignal;
}

/** Most bytes of file contents one fetch of a diff may bring to the host (at the per-file cap). */
const FETCH_BATCH_BYTES = 16 * 1024 * 1024;

function isText(buf: Buffer): boolean {
  return !buf.subarray(0, 8192).includes(0) && isUtf8(buf);
}

function sha256(buf: Buffer): string {
  return createHash("sha256").update(buf).digest("hex");
}

function noBaseline(): PyroError {
  return new PyroError("invalid_state", "This task has no baseline to diff against (it was created by a pyro release without baselines).", {
    hint: "Create the task again to get a baseline, or compare by hand with task_exec.",
  });
}

/** The changed paths between the host's baseline and a fresh manifest of the sandbox (directories are not changes of their own). */
export function compare(base: Baseline, now: ManifestEntry[], under: string): { added: ManifestEntry[]; modified: Array<{ now: ManifestEntry; old: Omit<ManifestEntry, "path"> }>; deleted: Array<ManifestEntry> } {
  const inScope = (p: string) => under === "" || p === under || p.startsWith(`${under}/`);
  const seen = new Set<string>();
  const added: ManifestEntry[] = [];
  const modified: Array<{ now: ManifestEntry; old: Omit<ManifestEntry, "path"> }> = [];
  for (const e of now) {
    if (!inScope(e.path)) continue;
    seen.add(e.path);
    const old = base.entries[e.path];
    if (e.kind === "dir" && (!old || old.kind === "dir")) continue;
    if (!old || old.kind === "dir") added.push(e);
    else if (old.kind !== e.kind || old.mode !== e.mode || old.sha256 !== e.sha256 || old.target !== e.target || (e.kind !== "file" && old.size !== e.size)) modified.push({ now: e, old });
  }
  const deleted: ManifestEntry[] = [];
  for (const [path, old] of Object.entries(base.entries)) {
    if (!inScope(path) || seen.has(path) || old.kind === "dir") continue;
    deleted.push({ path, ...old });
  }
  const byPath = (a: { path: string }, b: { path: string }) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
  added.sort(byPath);
  modified.sort((a, b) => byPath(a.now, b.now));
  deleted.sort(byPath);
  return { added, modified, deleted };
}

/**
 * What changed in /workspace since the baseline: the sandbox makes a fresh
 * manifest (hashing every file where it lives), the host compares it with
 * its own record, then fetches in one exec only the contents a diff needs
 * (the new side from /workspace, the old side from the baseline store).
 */
export async function diffWorkspace(driver: Driver, handle: SandboxHandle, taskDir: string, options: DiffOptions): Promise<DiffResult> {
  const base = readBaseline(taskDir);
  if (!base) throw noBaseline();
  const now = await manifest(driver, handle, { signal: options.signal });
  const { added, modified, deleted } = compare(base, now, options.under);

  const changes: Change[] = [];
  const slots: Array<{ change: Change; items: FetchItem[]; hasNew: boolean; oldSha: string | null }> = [];
  const small = (size: number | null | undefined) => size !== null && size !== undefined && size <= options.max_file_bytes;
  const push = (change: Change, newPath: string | null, oldSha: string | null) => {
    changes.push(change);
    const items: FetchItem[] = [];
    if (newPath !== null) items.push({ path: newPath });
    if (oldSha !== null) items.push({ blob: oldSha });
    if (items.length) slots.push({ change, items, hasNew: newPath !== null, oldSha });
  };
  for (const e of added) {
    const c: Change = { path: absPath(e.path), status: "added", kind: e.kind, old_kind: null, mode: e.mode, old_mode: null, size: e.kind === "file" ? e.size : null, old_size: null, binary: null, diff: null, note: null };
    if (e.kind === "symlink") c.note = `a symlink to ${JSON.stringify(e.target ?? "")}`;
    else if (e.kind !== "file") c.note = `a ${e.kind}`;
    else if (!small(e.size)) c.note = `too large to diff (${e.size} bytes; the cap is ${options.max_file_bytes})`;
    push(c, e.kind === "file" && small(e.size) ? e.path : null, null);
  }
  for (const { now: e, old } of modified) {
    const c: Change = { path: absPath(e.path), status: "modified", kind: e.kind, old_kind: old.kind, mode: e.mode, old_mode: old.mode, size: e.kind === "file" ? e.size : null, old_size: old.kind === "file" ? old.size : null, binary: null, diff: null, note: null };
    const both = e.kind === "file" && old.kind === "file";
    if (both && old.sha256 === e.sha256) c.note = `only the mode changed (${old.mode.toString(8)} -> ${e.mode.toString(8)})`;
    else if (e.kind === "symlink" || old.kind === "symlink") c.note = `${old.kind === "symlink" ? `was a symlink to ${JSON.stringify(old.target ?? "")}` : `was a ${old.kind}`}, now ${e.kind === "symlink" ? `a symlink to ${JSON.stringify(e.target ?? "")}` : `a ${e.kind}`}`;
    else if (!both) c.note = `was a ${old.kind}, now a ${e.kind}`;
    else if (!small(e.size) || !small(old.size)) c.note = `too large to diff (${old.size} -> ${e.size} bytes; the cap is ${options.max_file_bytes})`;
    const fetch = both && old.sha256 !== e.sha256 && small(e.size) && small(old.size);
    push(c, fetch ? e.path : null, fetch ? old.sha256 ?? null : null);
  }
  for (const e of deleted) {
    const c: Change = { path: absPath(e.path), status: "deleted", kind: e.kind, old_kind: e.kind, mode: null, old_mode: e.mode, size: null, old_size: e.kind === "file" ? e.size : null, binary: null, diff: null, note: null };
    if (e.kind === "symlink") c.note = `was a symlink to ${JSON.stringify(e.target ?? "")}`;
    else if (e.kind !== "file") c.note = `was a ${e.kind}`;
    else if (!small(e.size)) c.note = `too large to diff (${e.size} bytes)`;
    push(c, null, e.kind === "file" && small(e.size) ? e.sha256 ?? null : null);
  }

  // Contents come in batches of at most FETCH_BATCH_BYTES (at the per-file cap), and no more are fetched once the
  // diff text is full: however many files a sandbox changes, the host holds a bounded amount of them.
  let patch = "";
  let truncated = false;
  const perBatch = Math.max(2, Math.floor(FETCH_BATCH_BYTES / options.max_file_bytes));
  const results = new Map<(typeof slots)[number], Fetched[]>();
  let next = 0;
  const fetchBatch = async () => {
    const batch: typeof slots = [];
    let count = 0;
    while (next < slots.length && (batch.length === 0 || count + slots[next]!.items.length <= perBatch)) {
      count += slots[next]!.items.length;
      batch.push(slots[next++]!);
    }
    const got = await fetchMany(driver, handle, batch.flatMap((b) => b.items), options.max_file_bytes, options.signal);
    let at = 0;
    for (const b of batch) {
      results.set(b, got.slice(at, at + b.items.length));
      at += b.items.length;
    }
  };
  for (const slot of slots) {
    const { change, hasNew, oldSha } = slot;
    if (truncated) {
      change.note = `diff left out: the result's diff cap (${options.max_diff_bytes} bytes) was reached`;
      continue;
    }
    if (!results.has(slot)) {
      results.clear();
      await fetchBatch();
    }
    const got = results.get(slot)!;
    const n = hasNew ? got[0]! : null;
    const o = oldSha !== null ? got[hasNew ? 1 : 0]! : null;
    if (n && "error" in n) {
      change.note = `changed while the diff was made (${n.error})`;
      continue;
    }
    if (o && "error" in o) {
      change.note = "the baseline's content is not kept in the sandbox (over 1 MiB, or removed from /.pyro-baseline)";
      continue;
    }
    // The sandbox keeps the old side; the host's manifest decides whether it is the real one.
    if (o && oldSha && sha256(o.data) !== oldSha) {
      change.note = "the baseline's copy in the sandbox was altered (its hash does not match the host's manifest); the old side is not shown";
      continue;
    }
    const newBuf = n ? n.data : null;
    const oldBuf = o ? o.data : null;
    const binary = (newBuf !== null && !isText(newBuf)) || (oldBuf !== null && !isText(oldBuf));
    change.binary = binary;
    if (binary) {
      change.note = "binary file";
      continue;
    }
    const rel = change.path.slice("/workspace/".length);
    const text = unifiedDiff(rel, change.status === "added" ? null : oldBuf!.toString("utf8"), change.status === "deleted" ? null : newBuf!.toString("utf8"));
    if (patch.length + text.length > options.max_diff_bytes) {
      truncated = true;
      change.note = `diff left out: the result's diff cap (${options.max_diff_bytes} bytes) was reached`;
      continue;
    }
    change.diff = text;
    patch += `diff --git a/${rel} b/${rel}\n${text}`;
  }
  for (const c of changes) if (c.kind === "file" && c.binary === null && c.note === null) c.binary = false;
  return {
    baseline_at: base.updated_at,
    added: added.map((e) => absPath(e.path)),
    modified: modified.map((m) => absPath(m.now.path)),
    deleted: deleted.map((e) => absPath(e.path)),
    changes,
    patch,
    truncated,
  };
}

/** Workspace-relative paths (files and symlinks) added or modified since the baseline, under a directory. */
export async function changedPaths(driver: Driver, handle: SandboxHandle, taskDir: string, under: string, signal?: AbortSignal): Promise<{ changed: string[]; deleted: string[] }> {
  const base = readBaseline(taskDir);
  if (!base) throw noBaseline();
  const { added, modified, deleted } = compare(base, await manifest(driver, handle, { signal }), under);
  const changed = [...added.map((e) => e.path), ...modified.map((m) => m.now.path)].filter((p) => posix.normalize(p) === p);
  return { changed, deleted: deleted.map((e) => e.path) };
}
