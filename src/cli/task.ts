import type { Command } from "commander";
import { action, emit, formatBytes, intOption } from "./common.js";
import { cliPyro, describeIsolation } from "./runtime.js";
import { splitRunArgv } from "./run.js";
import { registerTaskFiles } from "./task-files.js";
import { registerTaskShell } from "./task-shell.js";
import { registerTaskService } from "./task-service.js";

function statusText(s: any): string {
  const seed = s.seed.kind === "empty" ? "empty" : `${s.seed.kind} ${s.seed.source} (${s.seed.file_count} files, ${formatBytes(s.seed.bytes)})`;
  return [
    `${s.task_id}${s.name ? ` (${s.name})` : ""}  ${s.state}  ${s.environment}`,
    `  workspace: ${s.workspace.files === null || s.workspace.bytes === null ? "size not visible from the host" : `${s.workspace.files} files, ${formatBytes(s.workspace.bytes)}`}; seed: ${seed}`,
    `  execs: ${s.exec_count}, pushes: ${s.push_count}; created ${s.created_at}, last activity ${s.last_activity_at}`,
    `  ${s.vcpu_count} vCPU, ${s.mem_mib} MiB memory, ${s.disk_mib} MiB disk`,
    `  isolation: ${describeIsolation(s.isolation)}`,
    `  limits: ${s.limits?.note ?? "said once its sandbox runs (it is stopped)"}`,
    ...(s.shells ?? []).map((sh: any) => `  shell ${sh.shell_id}: ${sh.state}, ${sh.rows}x${sh.cols}, ${sh.holder_pid !== null ? `held by pyro pid ${sh.holder_pid}` : "held by no process"}`),
  ].join("\n");
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function registerTask(program: Command): void {
  const task = program
    .command("task")
    .summary("persistent workspaces: create from host content, push changes, exec repeatedly")
    .description(
      "Tasks keep a /workspace across many commands and across pyro processes.\n" +
        "Create one from a host directory or tarball, push later host changes into it,\n" +
        "and run commands in it; every exec is journaled.",
    )
    .addHelpText(
      "after",
      "\nThe loop:\n  id=$(pyro task create debian:12 --source-path ./repo --id-only)\n  pyro task exec $id -- git status\n  # edit files on the host, then:\n  pyro task sync push $id ./repo\n  pyro task exec $id -- make test\n  pyro task diff $id\n  pyro task export $id ./result --only-changed\n  pyro task delete $id",
    );

  task
    .command("create")
    .description("create a task; /workspace starts from --source-path (a directory, .tar, .tar.gz or .tgz) or empty")
    .argument("[env]", "environment (default debian:12)")
    .option("--source-path <path>", "host directory or tarball to seed /workspace from")
    .option("--name <name>", "a label")
    .option("--vcpu-count <n>", "CPUs (default 1)", intOption("--vcpu-count"))
    .option("--mem-mib <n>", "memory limit in MiB (default 1024)", intOption("--mem-mib"))
    .option("--disk-mib <n>", "size of /workspace's writable layer in MiB, fixed at create (default 8192)", intOption("--disk-mib"))
    .option("--ttl-seconds <n>", "delete automatically after this many seconds (default never)", intOption("--ttl-seconds"))
    .option("--network", "outbound network (default off)")
    .option("--driver <driver>", "auto, namespace, qemu, firecracker")
    .option("--json", "print JSON")
    .option("--id-only", "print only the task id")
    .action(
      action(async (env: string | undefined, opts: any) => {
        const pyro = await cliPyro({ driver: opts.driver });
        const s = await pyro.createTask({
          ...(env ? { environment: env } : {}),
          ...(opts.sourcePath ? { source_path: opts.sourcePath } : {}),
          ...(opts.name ? { name: opts.name } : {}),
          ...(opts.vcpuCount !== undefined ? { vcpu_count: opts.vcpuCount } : {}),
          ...(opts.memMib !== undefined ? { mem_mib: opts.memMib } : {}),
          ...(opts.diskMib !== undefined ? { disk_mib: opts.diskMib } : {}),
          ...(opts.ttlSeconds !== undefined ? { ttl_seconds: opts.ttlSeconds } : {}),
          ...(opts.network ? { network: true } : {}),
        });
        if (opts.idOnly) process.stdout.write(s.task_id + "\n");
        else emit(s, Boolean(opts.json), statusText);
      }),
    );

  const sync = task.command("sync").description("move content between the host and a task's workspace");
  sync
    .command("push")
    .description("import a host directory or tarball into the live workspace, all or nothing")
    .argument("<task_id>", "the task id")
    .argument("<source_path>", "host directory, .tar, .tar.gz or .tgz")
    .option("--dest <path>", "destination under /workspace (default /workspace)")
    .option("--delete", "also remove files under dest that the source does not have")
    .option("--exclude <glob>", "leave out matching paths (repeatable), e.g. --exclude node_modules", collect)
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, source: string, opts: any) => {
        const pyro = await cliPyro();
        const r = await pyro.pushTaskSync({
          task_id: taskId,
          source_path: source,
          ...(opts.dest ? { dest: opts.dest } : {}),
          ...(opts.delete ? { delete: true } : {}),
          ...(opts.exclude ? { exclude: opts.exclude } : {}),
        });
        emit(r, Boolean(opts.json), (v) => `pushed ${v.files} ${v.files === 1 ? "entry" : "entries"} (${formatBytes(v.bytes)}) to ${v.dest}: ${v.added} added, ${v.replaced} replaced, ${v.deleted} deleted in ${v.duration_ms} ms`);
      }),
    );

  task
    .command("exec")
    .description("run a command in the task's workspace (cwd /workspace); exits with its exit code")
    .argument("<task_id>", "the task id")
    .argument("[command...]", "the command, after --")
    .option("--timeout-seconds <n>", "kill the command's tree after this many seconds (default 30)", intOption("--timeout-seconds"))
    .option("--cwd <dir>", "working directory (default /workspace)")
    .option("-e, --env <KEY=VALUE>", "environment variable (repeatable)", collect)
    .option("--json", "print the result as JSON instead of streaming")
    .action(
      action(async (taskId: string, cmd: string[], opts: any) => {
        const { command } = splitRunArgv(process.argv, cmd);
        const env: Record<string, string> = {};
        for (const kv of opts.env ?? []) {
          const i = kv.indexOf("=");
          if (i <= 0) throw new (await import("../core/errors.js")).PyroError("invalid_argument", `--env expects KEY=VALUE, got "${kv}".`);
          env[kv.slice(0, i)] = kv.slice(i + 1);
        }
        const pyro = await cliPyro();
        const controller = new AbortController();
        const onSignal = () => controller.abort();
        process.once("SIGINT", onSignal);
        process.once("SIGTERM", onSignal);
        try {
          const result = await pyro.execTask(
            {
              task_id: taskId,
              command,
              ...(opts.cwd ? { cwd: opts.cwd } : {}),
              ...(opts.timeoutSeconds !== undefined ? { timeout_seconds: opts.timeoutSeconds } : {}),
              ...(Object.keys(env).length ? { env } : {}),
            },
            opts.json
              ? { signal: controller.signal }
              : { onStdout: (c) => process.stdout.write(c), onStderr: (c) => process.stderr.write(c), signal: controller.signal },
          );
          if (opts.json) emit(result, true, () => "");
          else if (result.exec_error) process.stderr.write(`[pyro] ${result.exec_error} (the command did not start)\n`);
          return controller.signal.aborted ? 130 : result.exit_code;
        } finally {
          process.off("SIGINT", onSignal);
          process.off("SIGTERM", onSignal);
        }
      }),
    );

  registerTaskFiles(task);
  registerTaskShell(task);
  registerTaskService(task);

  task
    .command("status")
    .description("show a task's state, workspace size, seed and activity")
    .argument("<task_id>", "the task id")
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, opts: any) => {
        const pyro = await cliPyro();
        emit(await pyro.statusTask({ task_id: taskId }), Boolean(opts.json), statusText);
      }),
    );

  task
    .command("logs")
    .description("show the task's exec journal with output")
    .argument("<task_id>", "the task id")
    .option("--tail <n>", "only the last N entries", intOption("--tail"))
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, opts: any) => {
        const pyro = await cliPyro();
        const logs = await pyro.logsTask({ task_id: taskId, ...(opts.tail !== undefined ? { tail: opts.tail } : {}) });
        emit(logs, Boolean(opts.json), (v) =>
          v.entries.length
            ? v.entries
                .map((e: any) => `#${e.sequence} [exit ${e.exit_code}, ${e.duration_ms} ms] ${Array.isArray(e.command) ? e.command.join(" ") : e.command}\n${e.stdout}${e.stderr ? `--- stderr ---\n${e.stderr}` : ""}`)
                .join("\n")
            : "no execs yet",
        );
      }),
    );

  task
    .command("list")
    .description("list tasks")
    .option("--json", "print JSON")
    .action(
      action(async (opts: any) => {
        const pyro = await cliPyro();
        emit(await pyro.listTasks(), Boolean(opts.json), (v) => (v.tasks.length ? v.tasks.map(statusText).join("\n") : "no tasks"));
      }),
    );

  task
    .command("delete")
    .description("stop the task's sandbox and remove everything it had")
    .argument("<task_id>", "the task id")
    .option("--json", "print JSON")
    .action(
      action(async (taskId: string, opts: any) => {
        const pyro = await cliPyro();
        emit(await pyro.deleteTask({ task_id: taskId }), Boolean(opts.json), (v) => `deleted ${v.task_id}`);
      }),
    );
}
