import { isUtf8 } from "node:buffer";
import { PyroError } from "../core/errors.js";
import type { TaskManager } from "./tasks.js";
import { changedPaths, diffWorkspace, type DiffResult } from "./baseline.js";
import { exportWorkspace, type ExportResult } from "./export.js";
import { absPath, commitFiles, fetchMany, listDir, manifest, readRange, workspaceRel, type CommitRecord, type DirEntry } from "./files.js";
import { applyFilePatch, parsePatch } from "./patch.js";

/**
 * The file API of a task (task_file_list/read/write, task_patch_apply,
 * task_diff, task_export): policy (caps, encodings, all-or-nothing) on top
 * of the guest's `pyro-agent files` (runtime/files.ts), each call under the
 * task's lock with its sandbox booted (TaskManager.withSandbox).
 */

/** Most entries one listing returns. */
export const MAX_LIST_ENTRIES = 10_000;
/** Most bytes one read returns, and the default. */
export const MAX_READ_BYTES = 16 * 1024 * 1024;
export const DEFAULT_READ_BYTES = 1024 * 1024;
/** Most bytes one write carries, and the most a patch may make one file. */
export const MAX_WRITE_BYTES = 16 * 1024 * 1024;

export type ReadEncoding = "auto" | "text" | "base64";

export async function fileList(tasks: TaskManager, taskId: string, path: string | undefined, signal?: AbortSignal): Promise<{ task_id: string; path: string; entries: DirEntry[]; truncated: boolean }> {
  const rel = workspaceRel(path ?? "/workspace");
  return tasks.withSandbox(taskId, async ({ task_id, driver, handle }) => {
    const all = (await listDir(driver, handle, rel, signal)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { task_id, path: absPath(rel), entries: all.slice(0, MAX_LIST_ENTRIES), truncated: all.length > MAX_LIST_ENTRIES };
  }, { signal });
}

/** A range cut in the middle of a UTF-8 sequence loses its last partial character (next_offset resumes there). */
function textCut(data: Buffer): Buffer | null {
  for (let cut = 0; cut <= 3 && cut < data.length + 1; cut++) {
    const part = data.subarray(0, data.length - cut);
    if (isUtf8(part) && !part.includes(0)) return part;
  }
  return null;
}

export async function fileRead(
  tasks: TaskManager,
  taskId: string,
  args: { path: string; offset?: number; length?: number; encoding?: ReadEncoding },
  signal?: AbortSignal,
): Promise<{ task_id: string; path: string; size: number; mode: number; offset: number; length: number; encoding: "text" | "base64"; content: string; eof: boolean; next_offset: number | null }> {
  const rel = workspaceRel(args.path);
  if (!rel) throw new PyroError("invalid_argument", "/workspace is a directory; list it instead.", { hint: "task_file_list shows what it holds." });
  const length = args.length ?? DEFAULT_READ_BYTES;
  const offset = args.offset ?? 0;
  const encoding = args.encoding ?? "auto";
  return tasks.withSandbox(taskId, async ({ task_id, driver, handle }) => {
    const r = await readRange(driver, handle, rel, offset, length, signal);
    let data = r.data;
    let as: "text" | "base64" = "base64";
    if (encoding !== "base64") {
      const atEnd = r.offset + data.length >= r.size;
      const text = atEnd ? (isUtf8(data) && !data.includes(0) ? data : null) : textCut(data);
      if (text) {
        data = text;
        as = "text";
      } else if (encoding === "text") {
        throw new PyroError("invalid_argument", `${absPath(rel)} is not UTF-8 text (it holds a NUL byte or invalid UTF-8).`, {
          hint: 'Read it with encoding "base64" (or "auto", which picks base64 for binary files).',
          details: { path: absPath(rel), size: r.size },
        });
      }
    }
    const end = r.offset + data.length;
    return {
      task_id,
      path: absPath(rel),
      size: r.size,
      mode: r.mode,
      offset: r.offset,
      length: data.length,
      encoding: as,
      content: as === "text" ? data.toString("utf8") : data.toString("base64"),
      eof: end >= r.size,
      next_offset: end >= r.size ? null : end,
    };
  }, { signal });
}

export async function fileWrite(
  tasks: TaskManager,
  taskId: string,
  args: { path: string; content: string; encoding?: "text" | "base64"; mode?: number },
  signal?: AbortSignal,
): Promise<{ task_id: string; path: string; bytes: number; mode: number }> {
  const rel = workspaceRel(args.path);
  if (!rel) throw new PyroError("invalid_argument", "/workspace itself cannot be written; name a file under it.");
  let data: Buffer;
  if (args.encoding === "base64") {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(args.content.replace(/\s+/g, ""))) throw new PyroError("invalid_argument", "content is not valid base64.", { hint: 'Pass the bytes base64-encoded, or text with encoding "text".' });
    data = Buffer.from(args.content, "base64");
  } else data = Buffer.from(args.content, "utf8");
  if (data.length > MAX_WRITE_BYTES) {
    throw new PyroError("limit_exceeded", `The content is ${data.length} bytes; one write carries at most ${MAX_WRITE_BYTES}.`, { hint: "Push large files from the host with task_sync_push instead." });
  }
  const mode = args.mode ?? 0o644;
  return tasks.withSandbox(taskId, async ({ task_id, driver, handle }) => {
    await commitFiles(driver, handle, [{ op: "write", rel, mode, data }], signal);
    return { task_id, path: absPath(rel), bytes: data.length, mode };
  }, { signal, writes: `write a file in task ${taskId}` });
}

export async function patchApply(
  tasks: TaskManager,
  taskId: string,
  args: { patch: string; strip?: number },
  signal?: AbortSignal,
): Promise<{ task_id: string; files: Array<{ path: string; status: "added" | "modified" | "deleted"; hunks: number }>; added: number; modified: number; deleted: number }> {
  const files = parsePatch(args.patch, args.strip ?? "auto");
  // Paths are checked (and the whole patch refused) before the sandbox is touched.
  const parsed = files.map((f) => ({ f, oldRel: f.oldPath === null ? null : workspaceRel(f.oldPath, "patched path"), newRel: f.newPath === null ? null : workspaceRel(f.newPath, "patched path") }));
  for (const p of parsed) if (p.oldRel === "" || p.newRel === "") throw new PyroError("invalid_argument", "The patch names /workspace itself as a file.");
  return tasks.withSandbox(taskId, async ({ task_id, driver, handle }) => {
    const paths = [...new Set(parsed.flatMap((p) => [p.oldRel, p.newRel]).filter((p): p is string => p !== null))];
    const kinds = new Map((await manifest(driver, handle, { list: paths, signal })).map((e) => [e.path, e]));
    const current = new Map<string, string | null>();
    const readable = paths.filter((p) => kinds.get(p)?.kind === "file");
    const got = await fetchMany(driver, handle, readable.map((path) => ({ path })), MAX_WRITE_BYTES + 1, signal);
    readable.forEach((p, i) => {
      const g = got[i]!;
      if ("error" in g) throw new PyroError("patch_failed", `The patch does not apply: ${absPath(p)} cannot be read (${g.error}); nothing was changed.`);
      if (g.size > MAX_WRITE_BYTES) throw new PyroError("limit_exceeded", `${absPath(p)} is ${g.size} bytes; a patch applies to files of at most ${MAX_WRITE_BYTES}. Nothing was changed.`);
      if (!isUtf8(g.data) || g.data.includes(0)) throw new PyroError("patch_failed", `The patch does not apply: ${absPath(p)} is a binary file; nothing was changed.`, { hint: "Write binary files whole with task_file_write (base64)." });
      current.set(p, g.data.toString("utf8"));
    });
    for (const p of paths) {
      const k = kinds.get(p);
      if (k && k.kind !== "file") throw new PyroError("patch_failed", `The patch does not apply: ${absPath(p)} is a ${k.kind}, not a regular file; nothing was changed.`, { hint: "Patches change regular files only; symlinks are never followed." });
    }
    // Every hunk of every file in memory first; the workspace changes only if all of them applied.
    const records: CommitRecord[] = [];
    const report: Array<{ path: string; status: "added" | "modified" | "deleted"; hunks: number }> = [];
    const state = new Map(current);
    for (const { f, oldRel, newRel } of parsed) {
      const from = oldRel ?? newRel!;
      const before = oldRel === null ? null : state.has(oldRel) ? state.get(oldRel)! : null;
      if (oldRel === null && newRel !== null && state.get(newRel) != null) {
        throw new PyroError("patch_failed", `The patch does not apply: it creates ${absPath(newRel)}, which already exists; nothing was changed.`, { hint: "Read the file and make the patch against it, or write it whole with task_file_write." });
      }
      if (oldRel !== null && before === null) {
        throw new PyroError("patch_failed", `The patch does not apply: ${absPath(oldRel)} does not exist; nothing was changed.`, { hint: "task_file_list shows what the directory holds; a new file's patch starts with --- /dev/null." });
      }
      const after = applyFilePatch(absPath(from), before, f);
      if (after !== null && Buffer.byteLength(after) > MAX_WRITE_BYTES) throw new PyroError("limit_exceeded", `The patch makes ${absPath(newRel!)} larger than ${MAX_WRITE_BYTES} bytes; nothing was changed.`);
      if (oldRel !== null && oldRel !== newRel) state.set(oldRel, null);
      if (newRel !== null) state.set(newRel, after);
      if (newRel === null) report.push({ path: absPath(oldRel!), status: "deleted", hunks: f.hunks.length });
      else report.push({ path: absPath(newRel), status: oldRel === null || !current.has(newRel) ? "added" : "modified", hunks: f.hunks.length });
    }
    for (const [rel, text] of state) {
      if (text === null) {
        if (current.get(rel) != null) records.push({ op: "delete", rel });
      } else if (text !== current.get(rel)) {
        records.push({ op: "write", rel, mode: kinds.get(rel)?.mode ?? 0o644, data: Buffer.from(text, "utf8") });
      }
    }
    if (records.length) await commitFiles(driver, handle, records, signal);
    return {
      task_id,
      files: report,
      added: report.filter((r) => r.status === "added").length,
      modified: report.filter((r) => r.status === "modified").length,
      deleted: report.filter((r) => r.status === "deleted").length,
    };
  }, { signal, writes: `apply a patch in task ${taskId}` });
}

export async function taskDiff(
  tasks: TaskManager,
  taskId: string,
  args: { path?: string; max_diff_bytes: number; max_file_bytes: number },
  signal?: AbortSignal,
): Promise<DiffResult & { task_id: string }> {
  const under = workspaceRel(args.path ?? "/workspace");
  return tasks.withSandbox(taskId, async ({ task_id, driver, handle, dir }) => {
    const r = await diffWorkspace(driver, handle, dir, { under, max_diff_bytes: args.max_diff_bytes, max_file_bytes: args.max_file_bytes, signal });
    return { task_id, ...r };
  }, { signal });
}

export async function taskExport(
  tasks: TaskManager,
  taskId: string,
  args: { target: string; path?: string; only_changed?: boolean; format?: "dir" | "tar"; merge?: boolean; max_bytes?: number; max_files?: number },
  signal?: AbortSignal,
): Promise<ExportResult & { task_id: string; path: string; not_exported_deleted: string[] }> {
  const rel = workspaceRel(args.path ?? "/workspace");
  const format = args.format ?? (args.target.endsWith(".tar") ? "tar" : "dir");
  if (/\.(tar\.gz|tgz|zip)$/.test(args.target) && !args.format) {
    throw new PyroError("invalid_argument", `Exports are a directory or an uncompressed .tar; "${args.target}" asks for a compressed archive.`, { hint: "Export to a .tar (compress it afterwards), or to a directory." });
  }
  return tasks.withSandbox(taskId, async ({ task_id, driver, handle, dir }) => {
    let list: string[] | null = null;
    let deleted: string[] = [];
    if (args.only_changed) {
      const changed = await changedPaths(driver, handle, dir, rel, signal);
      list = changed.changed;
      deleted = changed.deleted.map(absPath);
    }
    const r = await exportWorkspace(driver, handle, {
      rel,
      list,
      target: args.target,
      format,
      merge: args.merge ?? false,
      stateDirs: [tasks.stateDir],
      limits: { max_bytes: args.max_bytes ?? 4 * 1024 ** 3, max_files: args.max_files ?? 100_000 },
      signal,
    });
    return { task_id, path: absPath(rel), ...r, not_exported_deleted: deleted };
  }, { signal });
}
