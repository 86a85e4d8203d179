import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { action, emit, formatBytes, intOption, shownPath } from "./common.js";
import { cliPyro } from "./runtime.js";

/**
 * `pyro task file ls|cat|write`, `pyro task patch`, `pyro task diff`,
 * `pyro task export`: the workspace file API (operations/task-files.ts).
 */

function modeOption(value: string): number {
  if (!/^0?[0-7]{3,4}$/.test(value)) throw new InvalidArgumentError("--mode is octal permission bits, e.g. 0644 or 755.");
  return parseInt(value, 8);
}

/** An option parser, so that commander reports a bad --format as the usage error it is (exit 2), not a bug of pyro's. */
function formatOption(value: string): "dir" | "tar" {
  if (value !== "dir" && value !== "tar") throw new InvalidArgumentError("--format is dir or tar.");
  return value;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as string));
  return Buffer.concat(chunks);
}

function lsText(v: any): string {
  const lines = v.entries.map((e: any) => {
    const t = e.kind === "dir" ? "d" : e.kind === "symlink" ? "l" : e.kind === "file" ? "-" : "?";
    return `${t} ${e.mode.toString(8).padStart(4, "0")} ${String(e.size).padStart(10)}  ${shownPath(e.name)}${e.target !== undefined ? ` -> ${shownPath(e.target)}` : ""}`;
  });
  return [...lines, ...(v.truncated ? [`(only the first ${v.entries.length} entries)`] : [])].join("\n");
}

export function registerTaskFiles(task: Command): void {
  const file = task.command("file").description("list, read and write files of a task's /workspace (paths never follow symlinks)");
  file
    .command("ls")
    .description("list a directory of the workspace (default /workspace)")
    .argument("<task_id>", "the task id")
    .argument("[path]", "directory under /workspace (absolute or relative to it)")
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, path: string | undefined, opts: any) => {
        const pyro = await cliPyro();
        emit(await pyro.listTaskFiles({ task_id: taskId, ...(path ? { path } : {}) }), Boolean(opts.json), lsText);
      }),
    );

  file
    .command("cat")
    .description("print a file of the workspace (its bytes, as they are)")
    .argument("<task_id>", "the task id")
    .argument("<path>", "file under /workspace")
    .option("--offset <n>", "first byte (default 0)", intOption("--offset"))
    .option("--length <n>", "most bytes (default: the whole file)", intOption("--length"))
    .option("--json", "print the result (text or base64) as JSON")
    .action(
      action(async (taskId: string, path: string, opts: any) => {
        const pyro = await cliPyro();
        if (opts.json) {
          emit(await pyro.readTaskFile({ task_id: taskId, path, ...(opts.offset !== undefined ? { offset: opts.offset } : {}), ...(opts.length !== undefined ? { length: opts.length } : {}) }), true, () => "");
          return;
        }
        // The whole file (or --length bytes), in reads of the SDK's default size.
        let offset: number | null = opts.offset ?? 0;
        let left: number = opts.length ?? Number.MAX_SAFE_INTEGER;
        while (offset !== null && left > 0) {
          const r = await pyro.readTaskFile({ task_id: taskId, path, offset, length: Math.min(left, 1024 * 1024), encoding: "base64" });
          const bytes = Buffer.from(r.content, "base64");
          if (bytes.length) process.stdout.write(bytes);
          left -= bytes.length;
          offset = bytes.length ? r.next_offset : null;
        }
      }),
    );

  file
    .command("write")
    .description("write a file of the workspace atomically from stdin (or --from a host file); parents are created")
    .argument("<task_id>", "the task id")
    .argument("<path>", "file under /workspace")
    .option("--from <host_file>", "read the content from this host file instead of stdin")
    .option("--mode <octal>", "permission bits (default 0644)", modeOption)
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, path: string, opts: any) => {
        const data = opts.from ? readFileSync(opts.from) : await readAll(process.stdin);
        const pyro = await cliPyro();
        const r = await pyro.writeTaskFile({ task_id: taskId, path, content: data.toString("base64"), encoding: "base64", ...(opts.mode !== undefined ? { mode: opts.mode } : {}) });
        emit(r, Boolean(opts.json), (v) => `wrote ${formatBytes(v.bytes)} to ${v.path} (mode ${v.mode.toString(8).padStart(4, "0")})`);
      }),
    );

  task
    .command("patch")
    .description("apply a unified diff (diff -u, git diff) to the workspace, all or nothing")
    .argument("<task_id>", "the task id")
    .argument("[patch_file]", "the patch (default: stdin)")
    .option("-p, --strip <n>", "leading path components to strip (default: git's a/ and b/)", intOption("--strip"))
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, patchFile: string | undefined, opts: any) => {
        const patch = (patchFile && patchFile !== "-" ? readFileSync(patchFile) : await readAll(process.stdin)).toString("utf8");
        const pyro = await cliPyro();
        const r = await pyro.applyTaskPatch({ task_id: taskId, patch, ...(opts.strip !== undefined ? { strip: opts.strip } : {}) });
        emit(r, Boolean(opts.json), (v) => v.files.map((f: any) => `${f.status} ${shownPath(f.path)} (${f.hunks} hunk${f.hunks === 1 ? "" : "s"})`).join("\n"));
      }),
    );

  task
    .command("diff")
    .description("what changed in the workspace since its baseline (the seed, or the last push), as a unified diff")
    .argument("<task_id>", "the task id")
    .argument("[path]", "only under this directory of /workspace")
    .option("--stat", "only the changed paths")
    .option("--max-diff-bytes <n>", "most bytes of diff text (default 262144)", intOption("--max-diff-bytes"))
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, path: string | undefined, opts: any) => {
        const pyro = await cliPyro();
        const r = await pyro.diffTask({ task_id: taskId, ...(path ? { path } : {}), ...(opts.maxDiffBytes !== undefined ? { max_diff_bytes: opts.maxDiffBytes } : {}) });
        emit(r, Boolean(opts.json), (v) => {
          const stat = v.changes.map((c: any) => `${c.status === "added" ? "A" : c.status === "deleted" ? "D" : "M"} ${shownPath(c.path)}${c.note ? `  (${c.note})` : ""}`).join("\n");
          if (opts.stat) return stat || "no changes";
          return v.changes.length ? `${v.patch}${v.changes.some((c: any) => c.note) ? `\n${stat}` : ""}${v.truncated ? "\n(diff truncated: raise --max-diff-bytes)" : ""}` : "no changes";
        });
      }),
    );

  task
    .command("export")
    .description("copy the workspace (or a subtree, or only changed files) to a new host directory or .tar; every entry re-checked")
    .argument("<task_id>", "the task id")
    .argument("<target>", "a new host directory, or a new file ending in .tar")
    .option("--path <dir>", "export only this directory of /workspace")
    .option("--only-changed", "only files added or modified since the baseline")
    .option("--format <f>", "dir or tar (default: tar for a .tar target)", formatOption)
    .option("--merge", "write into an existing directory, replacing files of the same name")
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, target: string, opts: any) => {
        const pyro = await cliPyro();
        const r = await pyro.exportTask({
          task_id: taskId,
          target,
          ...(opts.path ? { path: opts.path } : {}),
          ...(opts.onlyChanged ? { only_changed: true } : {}),
          ...(opts.format ? { format: opts.format } : {}),
          ...(opts.merge ? { merge: true } : {}),
        });
        emit(r, Boolean(opts.json), (v) =>
          [
            `exported ${v.files} file(s), ${formatBytes(v.bytes)} from ${v.path} to ${v.target} (${v.format})`,
            ...v.skipped.map((s: any) => `  skipped ${shownPath(s.path)}: ${s.reason}`),
            ...v.not_exported_deleted.map((p: string) => `  deleted since the baseline (not exported): ${shownPath(p)}`),
          ].join("\n"),
        );
      }),
    );
}
