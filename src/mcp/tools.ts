import * as z from "zod";
import type { ToolAnnotations } from "@modelcontextprotocol/sdk/types.js";
import type { PyroClient } from "../sdk/client.js";
import { PyroError } from "../core/errors.js";
import { hintFor } from "../core/hints.js";
import { shownPath } from "../util/format.js";
import { resolveSource } from "../runtime/archive/source-path.js";
import { envList, EnvListArgsSchema, EnvListResultSchema } from "../operations/env.js";
import { DEFAULTS, environmentName, isolation as isolationSchema } from "../operations/schemas.js";
import * as vmOps from "../operations/vm.js";
import * as taskOps from "../operations/task.js";
import * as fileOps from "../operations/task-files.js";
import { realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import * as shellOps from "../operations/task-shell.js";
import * as serviceOps from "../operations/task-service.js";
import type { ToolName } from "./profiles.js";
import type { CallProgress } from "./progress.js";

/**
 * The MCP tools. Each one is a thin front door over one SDK operation: its
 * input and output schemas are the operation's own zod schemas (minus the
 * fields that do not belong in a model's hands), its handler parses nothing
 * itself and turns the result into `structuredContent` plus a short text copy.
 */

/** Output per stream in MCP results: a model's context is not a log file. */
export const MCP_MAX_OUTPUT_BYTES = 64 * 1024;
/** Journal entries task_logs returns when `tail` is not given. */
export const MCP_DEFAULT_LOG_TAIL = 20;

/** What every tool call of one server shares. */
export interface ServerContext {
  pyro: PyroClient;
  /** Absolute directories source_path must lie under. */
  allowedSourceRoots: readonly string[];
  /** VMs made by vm_create through this server: deleted when the server shuts down. */
  ownedVms: Set<string>;
}

/** What one tool call gets. */
export interface CallContext {
  signal: AbortSignal;
  progress: CallProgress;
}

export interface ToolOutcome<O> {
  structured: O;
  text: string;
}

export interface ToolSpec<I extends z.ZodObject = z.ZodObject, O extends z.ZodObject = z.ZodObject> {
  name: ToolName;
  title: string;
  description: string;
  inputSchema: I;
  outputSchema: O;
  annotations: ToolAnnotations;
  run(args: z.infer<I>, server: ServerContext, call: CallContext): Promise<ToolOutcome<z.infer<O>>>;
}

function tool<I extends z.ZodObject, O extends z.ZodObject>(spec: ToolSpec<I, O>): ToolSpec<I, O> {
  return spec;
}

// ---------------------------------------------------------------- schemas

const mcpEnvironment = environmentName.describe(
  `Environment: \`${DEFAULTS.environment}\` (the default: Debian 12 with git, curl, ca-certificates, python3), \`debian:12-base\` (shell and core tools), \`debian:12-build\` (compilers, make, pkg-config), or \`busybox\` (tiny, instant). A missing environment is built on first use (progress is reported), which can take a minute.`,
);

const runInput = vmOps.runInVmArgs.omit({ driver: true, max_output_bytes: true }).extend({ environment: mcpEnvironment.optional() });
const createVmInput = vmOps.createVmArgs.omit({ driver: true }).extend({ environment: mcpEnvironment.optional() });
const execVmInput = vmOps.execVmArgs.omit({ max_output_bytes: true });
const createTaskInput = taskOps.createTaskArgs.omit({ driver: true }).extend({ environment: mcpEnvironment.optional() });
const execTaskInput = taskOps.execTaskArgs.omit({ max_output_bytes: true });
const logsTaskInput = taskOps.logsTaskArgs
  .omit({ max_output_bytes: true })
  .extend({ tail: taskOps.logsTaskArgs.shape.tail.describe(`Only the last N journal entries (default ${MCP_DEFAULT_LOG_TAIL} here).`) });
const emptyInput = z.object({}).strict();

// ---------------------------------------------------------------- text summaries

function isolationText(i: z.infer<typeof isolationSchema>): string {
  if (i.kind === "namespace") return "namespace sandbox";
  if (i.kind === "emulated-vm") return `${i.driver} VM, emulated (${i.accel ?? "tcg"})`;
  return `${i.driver} microVM (${i.accel ?? "kvm"})`;
}

function commandText(command: string | string[]): string {
  return typeof command === "string" ? command : command.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(" ");
}

export function execText(r: z.infer<typeof vmOps.execResult>): string {
  const notes: string[] = [];
  if (r.timed_out) notes.push("timed out: the whole process tree was killed");
  if (r.oom_killed) notes.push("a process was killed by the memory limit");
  if (r.signal && !r.timed_out) notes.push(`killed by ${r.signal}`);
  if (r.stdout_truncated) notes.push("stdout truncated to its head and tail");
  if (r.stderr_truncated) notes.push("stderr truncated to its head and tail");
  const ids = [r.task_id ? `${r.task_id} #${r.sequence}` : null, r.vm_id && !r.task_id ? r.vm_id : null].filter(Boolean).join(" ");
  let text = `exit ${r.exit_code} in ${r.duration_ms} ms (${isolationText(r.isolation)}${ids ? `, ${ids}` : ""})`;
  if (r.exec_error) text += `\nthe command did not start: ${r.exec_error} (reported by pyro, not the command)`;
  if (notes.length) text += `\n${notes.join("; ")}`;
  if (r.stdout) text += `\n--- stdout ---\n${r.stdout}`;
  if (r.stderr) text += `\n--- stderr ---\n${r.stderr}`;
  if (!r.stdout && !r.stderr) text += "\n(no output)";
  return text;
}

function bytesText(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

function vmText(s: z.infer<typeof vmOps.vmStatus>): string {
  return `${s.vm_id}: ${s.state}, ${s.environment}, ${s.vcpu_count} vCPU, ${s.mem_mib} MiB memory, ${s.disk_mib} MiB disk, network ${s.network ? "on" : "off"}, expires ${s.expires_at} (${isolationText(s.isolation)})${s.limits?.note ? `\nlimits: ${s.limits.note}` : ""}`;
}

function taskText(s: z.infer<typeof taskOps.taskStatus>): string {
  const name = s.name ? ` "${s.name}"` : "";
  return (
    `${s.task_id}${name}: ${s.state}, ${s.environment}, ${s.exec_count} exec(s), ${s.push_count} push(es), ` +
    `/workspace ${s.workspace.files === null || s.workspace.bytes === null ? "(size not visible from the host)" : `${s.workspace.files} file(s) ${bytesText(s.workspace.bytes)}`}, network ${s.network ? "on" : "off"}` +
    (s.expires_at ? `, expires ${s.expires_at}` : "") +
    ` (${isolationText(s.isolation)})` +
    (s.limits?.note ? `\nlimits: ${s.limits.note}` : "") +
    (s.shells?.length ? `\nshells: ${s.shells.map((sh) => `${sh.shell_id} ${sh.state}${sh.held_here ? "" : sh.holder_pid !== null ? ` (held by pid ${sh.holder_pid})` : " (held by no process)"}`).join(", ")}` : "") +
    (s.services?.length ? `\nservices: ${s.services.map((sv) => `${sv.name} ${sv.state}`).join(", ")}` : "")
  );
}

// ---------------------------------------------------------------- the tools

/**
 * Checks source_path against the server's roots before anything is made,
 * whatever Pyro the server was given, and returns the real path the SDK is
 * then given (so a relative path means the same to both).
 */
function checkSource(path: string, server: ServerContext): string {
  return resolveSource(path, server.allowedSourceRoots).path;
}

/**
 * An export target on the server's host: like a source, it must lie under an
 * allowed root (its parent, with symlinks resolved, is checked), so a model
 * can write only where the operator allowed reading.
 */
function checkExportTarget(path: string, server: ServerContext): string {
  const abs = resolve(server.allowedSourceRoots[0] ?? process.cwd(), path);
  let parent: string;
  try {
    parent = realpathSync(dirname(abs));
  } catch {
    throw new PyroError("invalid_argument", `The export target's parent ${dirname(abs)} does not exist.`, { hint: "Create it first, or export under an allowed root." });
  }
  const inside = server.allowedSourceRoots.some((root) => {
    let r: string;
    try {
      r = realpathSync(root);
    } catch {
      return false;
    }
    const rel = relative(r, parent);
    return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
  });
  if (!inside) {
    throw new PyroError("source_not_allowed", `The export target ${abs} is outside the allowed roots (${server.allowedSourceRoots.join(", ")}).`, { hint: "Export under an allowed root (the server's --allow-source-root directories; by default its working directory)." });
  }
  return join(parent, basename(abs));
}

function rootsText(roots: readonly string[]): string {
  return roots.map((r) => `\`${r}\``).join(", ");
}

function streamTo(call: CallContext): { onStdout?: (c: Buffer) => void; onStderr?: (c: Buffer) => void } {
  if (!call.progress.enabled) return {};
  return { onStdout: (c) => call.progress.output("stdout", c), onStderr: (c) => call.progress.output("stderr", c) };
}

const OUTPUT_NOTE =
  "stdout and stderr are each capped at 64 KiB in this result, keeping the head and the tail around a marker (stdout_truncated / stderr_truncated say when). " +
  "A non-zero exit_code is a normal result, not a tool error: read stderr. exit_code 124 with timed_out true means the timeout killed the command's whole process tree.";

const COMMAND_NOTE = "A string command runs through `/bin/sh -lc`; an array is an argv run without a shell.";

export function toolSpecs(options: { allowedSourceRoots: readonly string[] }): ToolSpec[] {
  const roots = rootsText(options.allowedSourceRoots);
  const firstRoot = options.allowedSourceRoots[0] ?? process.cwd();
  const SOURCE_NOTE =
    `source_path is a path on the SERVER's host (where pyro runs), not on the client's machine, and it must lie under an allowed root: ${roots}. ` +
    `A relative path is resolved against \`${firstRoot}\`. It may be a directory or a .tar/.tar.gz/.tgz file; entries that could escape (absolute paths, \`..\`, symlinked parents, hard links out of the tree, devices, fifos) are refused with an error naming the entry, and set-id bits are dropped.`;

  const specs = [
    tool({
      name: "vm_run",
      title: "Run a command in a fresh sandbox",
      description:
        "Run one command in a fresh, isolated sandbox that is deleted afterwards. Use this first: for any one-shot command (run a script, build or test a snippet, check a tool's version, try something risky) vm_run is the right tool. " +
        "Nothing persists between calls; use task_create + task_exec instead only when several commands must share files in one workspace. " +
        `Defaults: environment ${DEFAULTS.environment}, ${DEFAULTS.vcpu_count} vCPU, ${DEFAULTS.mem_mib} MiB memory, ${DEFAULTS.run_disk_mib} MiB disk (disk_mib), timeout ${DEFAULTS.timeout_seconds} s, no network (set network: true for outbound access; the host's own services are never reachable). ` +
        `${COMMAND_NOTE} The working directory is /. ${OUTPUT_NOTE} The isolation field says what isolated the run (firecracker or qemu microVM, or a namespace sandbox).`,
      inputSchema: runInput,
      outputSchema: vmOps.execResult,
      annotations: { title: "Run a command in a fresh sandbox", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server, call) {
        const r = await server.pyro.runInVm({ ...args, max_output_bytes: MCP_MAX_OUTPUT_BYTES }, { signal: call.signal, ...streamTo(call) });
        return { structured: r, text: execText(r) };
      },
    }),
    tool({
      name: "vm_create",
      title: "Create a VM",
      description:
        "Create a VM record without running anything (low-level; prefer vm_run). Follow with vm_exec, which runs one command and then deletes the VM; vm_start boots it early if you need to inspect it with vm_status or vm_network_info first. " +
        `Defaults: environment ${DEFAULTS.environment}, ${DEFAULTS.vcpu_count} vCPU, ${DEFAULTS.mem_mib} MiB memory, ${DEFAULTS.disk_mib} MiB disk, ttl ${DEFAULTS.ttl_seconds} s (deleted automatically after), no network. ` +
        "VMs this server created are deleted when the server shuts down.",
      inputSchema: createVmInput,
      outputSchema: vmOps.vmStatus,
      annotations: { title: "Create a VM", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server) {
        const s = await server.pyro.createVm(args);
        server.ownedVms.add(s.vm_id);
        return { structured: s, text: `created ${vmText(s)}` };
      },
    }),
    tool({
      name: "vm_start",
      title: "Start a VM",
      description: "Boot the sandbox of a VM made by vm_create. Starting a started VM does nothing. Not needed before vm_exec, which starts the VM itself.",
      inputSchema: vmOps.vmIdArgs,
      outputSchema: vmOps.vmStatus,
      annotations: { title: "Start a VM", readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.startVm(args);
        return { structured: s, text: vmText(s) };
      },
    }),
    tool({
      name: "vm_exec",
      title: "Run a command in a VM, then delete it",
      description:
        "Run one command in a VM made by vm_create (starting it if needed), then delete the VM: a VM serves exactly one vm_exec. " +
        `For a one-shot command vm_run does the same in one call; for several commands in one workspace use tasks. Default timeout ${DEFAULTS.timeout_seconds} s. ${COMMAND_NOTE} ${OUTPUT_NOTE}`,
      inputSchema: execVmInput,
      outputSchema: vmOps.execResult,
      annotations: { title: "Run a command in a VM, then delete it", readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true },
      async run(args, server, call) {
        try {
          const r = await server.pyro.execVm({ ...args, max_output_bytes: MCP_MAX_OUTPUT_BYTES }, { signal: call.signal, ...streamTo(call) });
          return { structured: r, text: `${execText(r)}\n(${args.vm_id} was deleted)` };
        } finally {
          server.ownedVms.delete(args.vm_id);
        }
      },
    }),
    tool({
      name: "vm_status",
      title: "VM status",
      description: "The state (created, started or stopped), resources, expiry time and isolation of a VM made by vm_create. A VM whose sandbox died shows as stopped.",
      inputSchema: vmOps.vmIdArgs,
      outputSchema: vmOps.vmStatus,
      annotations: { title: "VM status", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.statusVm(args);
        return { structured: s, text: vmText(s) };
      },
    }),
    tool({
      name: "vm_stop",
      title: "Stop a VM",
      description: "Kill a VM's sandbox (everything running in it ends); the VM record stays until vm_delete or its TTL.",
      inputSchema: vmOps.vmIdArgs,
      outputSchema: vmOps.vmStatus,
      annotations: { title: "Stop a VM", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.stopVm(args);
        return { structured: s, text: `stopped ${vmText(s)}` };
      },
    }),
    tool({
      name: "vm_delete",
      title: "Delete a VM",
      description: "Kill a VM's sandbox and delete the VM and everything in it. Not needed after vm_exec (which deletes its VM) or vm_run; VMs also expire after their ttl_seconds.",
      inputSchema: vmOps.vmIdArgs,
      outputSchema: vmOps.vmDeleted,
      annotations: { title: "Delete a VM", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.deleteVm(args);
        server.ownedVms.delete(r.vm_id);
        return { structured: r, text: `deleted ${r.vm_id}` };
      },
    }),
    tool({
      name: "vm_network_info",
      title: "VM network",
      description: "How a VM reaches the network: disabled (loopback only), or its interface, address, gateway and DNS when it was created with network: true. The host's loopback is never reachable.",
      inputSchema: vmOps.vmIdArgs,
      outputSchema: vmOps.vmNetworkInfo,
      annotations: { title: "VM network", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.networkInfoVm(args);
        const n = r.network;
        const detail = !n.enabled ? "network disabled (loopback only)" : "guest_ip" in n ? `network via ${n.backend}: ${n.interface ?? "?"} ${n.guest_ip ?? "?"} gateway ${n.gateway ?? "?"} dns ${n.dns.join(",") || "-"}` : "network enabled (details once started)";
        return { structured: r, text: `${r.vm_id} (${r.state}): ${detail}` };
      },
    }),
    tool({
      name: "vm_reap_expired",
      title: "Delete expired VMs and tasks",
      description: "Delete VMs and tasks past their TTL, and whatever crashed pyro processes left behind. The server also does this every 60 s by itself.",
      inputSchema: emptyInput,
      outputSchema: vmOps.reapResult,
      annotations: { title: "Delete expired VMs and tasks", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(_args, server) {
        const r = await server.pyro.reapExpired();
        for (const item of r.reaped) server.ownedVms.delete(item.id);
        return { structured: r, text: r.reaped.length ? `reaped ${r.reaped.length}: ${r.reaped.map((x) => `${x.id} (${x.reason})`).join(", ")}` : "nothing to reap" };
      },
    }),
    tool({
      name: "vm_list_environments",
      title: "List environments",
      description: "The environments a sandbox can start from (the catalog and imported ones), with whether each is built (ready), not pulled yet (built on first use), or broken (rebuilt on next use), and its size.",
      inputSchema: EnvListArgsSchema,
      outputSchema: EnvListResultSchema,
      annotations: { title: "List environments", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args) {
        const r = await envList(args);
        const text = r.environments
          .map((e) => `${e.name}${e.default ? " (default)" : ""}: ${e.state.replace("_", " ")}${e.size_bytes ? `, ${bytesText(e.size_bytes)}` : ""} - ${e.description}`)
          .join("\n");
        return { structured: r, text: `${text}\n(cache: ${r.cache_dir})` };
      },
    }),
    tool({
      name: "task_create",
      title: "Create a persistent workspace (task)",
      description:
        "Create a task: a sandbox whose /workspace keeps its files across task_exec calls, pyro restarts and sandbox crashes, until task_delete (or ttl_seconds). " +
        "Use it only when several commands must share state (edit, build, test loops on a project); for a single command use vm_run. " +
        `${SOURCE_NOTE} Without source_path /workspace starts empty. ` +
        `Defaults: environment ${DEFAULTS.environment}, ${DEFAULTS.vcpu_count} vCPU, ${DEFAULTS.mem_mib} MiB memory, ${DEFAULTS.disk_mib} MiB disk (disk_mib, fixed at create; writes past it fail with ENOSPC where the limits say the kernel keeps it), no network, no TTL. Returns the task_id; call task_delete when done.`,
      inputSchema: createTaskInput,
      outputSchema: taskOps.taskStatus,
      annotations: { title: "Create a persistent workspace (task)", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server, call) {
        const source_path = args.source_path !== undefined ? checkSource(args.source_path, server) : undefined;
        call.progress.phase(`task: creating${args.source_path ? ` and seeding /workspace from ${args.source_path}` : ""}`);
        const s = await server.pyro.createTask({ ...args, ...(source_path ? { source_path } : {}) }, { signal: call.signal });
        return { structured: s, text: `created ${taskText(s)}` + (s.seed.kind !== "empty" ? `\nseeded from ${s.seed.source}: ${s.seed.file_count} file(s), ${bytesText(s.seed.bytes)}` : "") };
      },
    }),
    tool({
      name: "task_sync_push",
      title: "Push host changes into a task",
      description:
        "Import a host directory or archive into a task's live /workspace (or dest under it), overwriting files of the same name: use it after files changed on the host, instead of recreating the task. " +
        `${SOURCE_NOTE} The push is all-or-nothing: on any error /workspace is left as it was. delete: true also removes files under dest that the source lacks; exclude leaves out glob patterns.`,
      inputSchema: taskOps.pushTaskSyncArgs,
      outputSchema: taskOps.pushResult,
      annotations: { title: "Push host changes into a task", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(args, server, call) {
        const source_path = checkSource(args.source_path, server);
        call.progress.phase(`push: importing ${args.source_path} into ${args.dest ?? "/workspace"}`);
        const r = await server.pyro.pushTaskSync({ ...args, source_path }, { signal: call.signal });
        return {
          structured: r,
          text:
            `pushed ${r.files} file(s), ${bytesText(r.bytes)} into ${r.dest} of ${r.task_id} in ${r.duration_ms} ms: ${r.added} added, ${r.replaced} replaced, ${r.deleted} deleted` +
            (r.setid_dropped.length ? `\nset-id bits dropped: ${r.setid_dropped.join(", ")}` : ""),
        };
      },
    }),
    tool({
      name: "task_exec",
      title: "Run a command in a task",
      description:
        "Run a command in a task's persistent workspace (cwd /workspace by default); files it writes stay for the next task_exec. A stopped task is restarted with /workspace intact. " +
        `Default timeout ${DEFAULTS.timeout_seconds} s. ${COMMAND_NOTE} ${OUTPUT_NOTE} Every exec is journaled with a sequence number; task_logs returns the full record.`,
      inputSchema: execTaskInput,
      outputSchema: vmOps.execResult,
      annotations: { title: "Run a command in a task", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server, call) {
        const r = await server.pyro.execTask({ ...args, max_output_bytes: MCP_MAX_OUTPUT_BYTES }, { signal: call.signal, ...streamTo(call) });
        return { structured: r, text: execText(r) };
      },
    }),
    tool({
      name: "task_status",
      title: "Task status",
      description: "A task's state (running or stopped), environment, exec and push counts, workspace size, seed, expiry, and the shells open in it.",
      inputSchema: taskOps.taskIdArgs,
      outputSchema: taskOps.taskStatus,
      annotations: { title: "Task status", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.statusTask(args);
        return { structured: s, text: taskText(s) };
      },
    }),
    tool({
      name: "task_logs",
      title: "Task exec journal",
      description: `The journal of a task's execs, oldest first: command, cwd, exit code, timings and output of each (output capped at 64 KiB per stream per entry, head and tail kept). Default: the last ${MCP_DEFAULT_LOG_TAIL} entries.`,
      inputSchema: logsTaskInput,
      outputSchema: taskOps.taskLogs,
      annotations: { title: "Task exec journal", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.logsTask({ task_id: args.task_id, tail: args.tail ?? MCP_DEFAULT_LOG_TAIL, max_output_bytes: MCP_MAX_OUTPUT_BYTES });
        const text = r.entries.length
          ? r.entries
              .map((e) => {
                let s = `#${e.sequence} $ ${commandText(e.command)} (cwd ${e.cwd}) -> exit ${e.exit_code}${e.timed_out ? " (timed out)" : ""} in ${e.duration_ms} ms`;
                if (e.stdout) s += `\n--- stdout ---\n${e.stdout}`;
                if (e.stderr) s += `\n--- stderr ---\n${e.stderr}`;
                return s;
              })
              .join("\n")
          : `${r.task_id} has no execs yet`;
        return { structured: r, text };
      },
    }),
    tool({
      name: "task_list",
      title: "List tasks",
      description: "Every task on this host, with its state and workspace size. Tasks persist across sessions: check here before creating a new one.",
      inputSchema: emptyInput,
      outputSchema: taskOps.taskList,
      annotations: { title: "List tasks", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(_args, server) {
        const r = await server.pyro.listTasks();
        return { structured: r, text: r.tasks.length ? r.tasks.map(taskText).join("\n") : "no tasks" };
      },
    }),
    tool({
      name: "task_delete",
      title: "Delete a task",
      description: "Kill a task's sandbox (a running exec ends now) and delete the task with its /workspace and logs. Cannot be undone.",
      inputSchema: taskOps.taskIdArgs,
      outputSchema: taskOps.taskDeleted,
      annotations: { title: "Delete a task", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.deleteTask(args);
        return { structured: r, text: `deleted ${r.task_id}` };
      },
    }),
    tool({
      name: "task_file_list",
      title: "List a workspace directory",
      description:
        "List a directory of a task's /workspace (default /workspace itself): each entry's name, kind (file, dir, symlink, ...), size, mode and, for a symlink, its target. " +
        "Paths are absolute under /workspace or relative to it; `..` and symlinks are never followed. Cheaper and exact compared with parsing `ls` output from task_exec.",
      inputSchema: fileOps.fileListArgs,
      outputSchema: fileOps.fileListResult,
      annotations: { title: "List a workspace directory", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server, call) {
        const r = await server.pyro.listTaskFiles(args, { signal: call.signal });
        const lines = r.entries.map((e) => `${e.kind === "dir" ? "d" : e.kind === "symlink" ? "l" : e.kind === "file" ? "-" : "?"} ${e.mode.toString(8).padStart(4, "0")} ${String(e.size).padStart(9)} ${shownPath(e.name)}${e.target !== undefined ? ` -> ${shownPath(e.target)}` : ""}`);
        return { structured: r, text: `${shownPath(r.path)}: ${r.entries.length} entr${r.entries.length === 1 ? "y" : "ies"}${r.truncated ? " (truncated)" : ""}\n${lines.join("\n")}` };
      },
    }),
    tool({
      name: "task_file_read",
      title: "Read a workspace file",
      description:
        `Read a file of a task's /workspace without shell quoting: UTF-8 text as is, binary as base64 (encoding auto), at most length bytes from offset (default and cap here ${MCP_MAX_OUTPUT_BYTES} bytes). ` +
        "next_offset says where the rest starts (null at the end). Symlinks, fifos and devices are refused, never followed or opened.",
      inputSchema: fileOps.fileReadArgs,
      outputSchema: fileOps.fileReadResult,
      annotations: { title: "Read a workspace file", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server, call) {
        const r = await server.pyro.readTaskFile({ ...args, length: Math.min(args.length ?? MCP_MAX_OUTPUT_BYTES, MCP_MAX_OUTPUT_BYTES) }, { signal: call.signal });
        const head = `${shownPath(r.path)}: bytes ${r.offset}-${r.offset + r.length} of ${r.size} (${r.encoding})${r.next_offset !== null ? `; more from offset ${r.next_offset}` : ""}`;
        return { structured: r, text: `${head}\n${r.content}` };
      },
    }),
    tool({
      name: "task_file_write",
      title: "Write a workspace file",
      description:
        "Write a whole file in a task's /workspace atomically (readers see the old or the new content, never half), creating missing parent directories; content is text, or base64 with encoding base64; mode defaults to 420 (0644). " +
        "Use it instead of heredocs through task_exec; for a small change to a big file, task_patch_apply sends less.",
      inputSchema: fileOps.fileWriteArgs,
      outputSchema: fileOps.fileWriteResult,
      annotations: { title: "Write a workspace file", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(args, server, call) {
        const r = await server.pyro.writeTaskFile(args, { signal: call.signal });
        return { structured: r, text: `wrote ${r.bytes} byte(s) to ${shownPath(r.path)} (mode ${r.mode.toString(8)})` };
      },
    }),
    tool({
      name: "task_patch_apply",
      title: "Apply a patch to the workspace",
      description:
        "Apply a unified diff (diff -u / git diff; paths relative to /workspace, git's a/ b/ prefixes stripped) to a task's workspace, all or nothing: if any hunk does not match, nothing changes and the error shows the failing hunk. " +
        "Files created from /dev/null and deleted to /dev/null are supported; a hunk may sit at another line than its header says, but its context must match exactly.",
      inputSchema: fileOps.patchApplyArgs,
      outputSchema: fileOps.patchApplyResult,
      annotations: { title: "Apply a patch to the workspace", readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
      async run(args, server, call) {
        const r = await server.pyro.applyTaskPatch(args, { signal: call.signal });
        return { structured: r, text: `patched ${r.files.length} file(s): ${r.added} added, ${r.modified} modified, ${r.deleted} deleted\n${r.files.map((f) => `${f.status} ${shownPath(f.path)} (${f.hunks} hunk(s))`).join("\n")}` };
      },
    }),
    tool({
      name: "task_diff",
      title: "What changed in the workspace",
      description:
        "What changed in a task's /workspace since its baseline (the seed at task_create; a push makes the pushed files the new baseline): added, modified and deleted paths, and a unified diff of each text file (binary and large files are named, not diffed; the diff text is capped and truncated says so). " +
        "Use it to review the work before task_export.",
      inputSchema: fileOps.diffArgs,
      outputSchema: fileOps.diffResult,
      annotations: { title: "What changed in the workspace", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server, call) {
        const r = await server.pyro.diffTask({ ...args, max_diff_bytes: Math.min(args.max_diff_bytes ?? MCP_MAX_OUTPUT_BYTES, MCP_MAX_OUTPUT_BYTES) }, { signal: call.signal });
        const summary = `${r.added.length} added, ${r.modified.length} modified, ${r.deleted.length} deleted since ${r.baseline_at}${r.truncated ? " (diff truncated)" : ""}`;
        const notes = r.changes.filter((c) => c.note).map((c) => `${c.status} ${shownPath(c.path)}: ${c.note}`);
        return { structured: r, text: [summary, ...notes, r.patch].filter(Boolean).join("\n") };
      },
    }),
    tool({
      name: "task_export",
      title: "Export the workspace to the host",
      description:
        "Copy a task's /workspace (or path, a directory under it; or with only_changed just the files added or modified since the baseline) to a NEW directory or .tar on the server's host, under an allowed root. " +
        "Every entry is re-checked on the host: nothing is written outside the target, symlinks pointing out of the tree, devices, fifos and repository metadata (.git, .hg) are left out (listed in skipped), an existing target is refused unless merge: true. " +
        "Never into a home directory itself or its dot-entries, a directory on PATH or a .git or .hg directory (the host runs what is there): export into a project or a new directory.",
      inputSchema: fileOps.exportArgs,
      outputSchema: fileOps.exportResult,
      annotations: { title: "Export the workspace to the host", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
      async run(args, server, call) {
        const target = checkExportTarget(args.target, server);
        call.progress.phase(`export: ${shownPath(args.path ?? "/workspace")} to ${shownPath(target)}`);
        const r = await server.pyro.exportTask({ ...args, target }, { signal: call.signal });
        return {
          structured: r,
          text:
            `exported ${r.files} file(s), ${bytesText(r.bytes)} from ${shownPath(r.path)} of ${r.task_id} to ${shownPath(r.target)} (${r.format})` +
            (r.skipped.length ? `\nskipped: ${r.skipped.map((x) => `${shownPath(x.path)} (${x.reason})`).join(", ")}` : "") +
            (r.not_exported_deleted.length ? `\ndeleted since the baseline (not in the export): ${r.not_exported_deleted.map(shownPath).join(", ")}` : ""),
        };
      },
    }),
    ...shellTools(),
    ...serviceTools(),
  ];
  return specs as unknown as ToolSpec[];
}

const SHELL_WHEN =
  "Use a shell instead of task_exec when state must carry from one command to the next (cd, exported variables, an activated virtualenv, background jobs), or for an interactive program (a REPL, a prompt that asks questions); for one self-contained command task_exec is simpler and journaled.";

function shellText(s: z.infer<typeof shellOps.shellInfo>): string {
  const held = s.held_here ? "" : s.holder_pid !== null ? `, held by pyro pid ${s.holder_pid}` : ", held by no process";
  return `${s.shell_id} in ${s.task_id}: ${s.state}${s.exit_code !== null ? ` (exit ${s.exit_code})` : ""}, ${s.rows}x${s.cols}, started in ${s.cwd}, ${s.unread_bytes} unread byte(s)${s.dropped_bytes ? `, ${s.dropped_bytes} dropped unread` : ""}${held}`;
}

function shellReadText(r: z.infer<typeof shellOps.shellRead>): string {
  const why = { pattern: "wait_for text seen", idle: "output went idle", timeout: "timed out waiting", exited: "the shell has exited", immediate: "no wait asked" }[r.reason];
  const notes = [`${r.bytes} byte(s), ${why}`];
  if (r.dropped_bytes) notes.push(`${r.dropped_bytes} unread byte(s) were dropped before this output (read more often)`);
  if (r.remaining_bytes) notes.push(`${r.remaining_bytes} more byte(s) unread: read again`);
  if (r.state === "exited") notes.push(`exit code ${r.exit_code ?? "unknown (connection lost)"}`);
  return `${notes.join("; ")}\n${r.output || "(no output)"}`;
}

function shellTools(): ToolSpec[] {
  const readInput = shellOps.readShellArgs.extend({
    max_bytes: z.number().int().min(1).max(MCP_MAX_OUTPUT_BYTES).optional().describe(`At most this many bytes (default ${MCP_MAX_OUTPUT_BYTES}); the rest stays for the next read.`),
    plain: shellOps.readShellArgs.shape.plain.describe("Strip terminal escapes and apply carriage returns and backspaces (default true here: what a screen would show)."),
  });
  const specs = [
    tool({
      name: "task_shell_open",
      title: "Open a shell in a task",
      description:
        `Open an interactive shell (bash, else sh) on a terminal in a task's /workspace. ${SHELL_WHEN} ` +
        "Then task_shell_write keystrokes (end a command with \\n) and task_shell_read the output. Several shells per task are allowed. " +
        "The shell belongs to the task: it runs until task_shell_close or task_delete, also after this server exits (another pyro process then reads it, with what it printed meanwhile).",
      inputSchema: shellOps.openShellArgs,
      outputSchema: shellOps.shellInfo,
      annotations: { title: "Open a shell in a task", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server, call) {
        const s = await server.pyro.openTaskShell(args, { signal: call.signal });
        return { structured: s, text: `${shellText(s)}\nNext: task_shell_read with wait_idle_ms to see the prompt, task_shell_write to type.` };
      },
    }),
    tool({
      name: "task_shell_write",
      title: "Type into a shell",
      description: 'Send text to a shell\'s terminal as keystrokes: "ls -la\\n" runs ls. Control keys are characters too ("\\u0003" is Ctrl-C; task_shell_signal says it by name). Returns at once; read the output with task_shell_read.',
      inputSchema: shellOps.writeShellArgs,
      outputSchema: shellOps.shellWritten,
      annotations: { title: "Type into a shell", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server) {
        const r = await server.pyro.writeTaskShell(args);
        return { structured: r, text: `wrote ${r.bytes} byte(s) to ${r.shell_id}` };
      },
    }),
    tool({
      name: "task_shell_read",
      title: "Read a shell's output",
      description:
        "Return what a shell printed since the last read. To avoid polling, wait: wait_for returns once that literal text appears (a prompt, 'Listening on'), wait_idle_ms once no output came for that long (500-2000 suits most commands); timeout_ms bounds either (default 30000). " +
        "The terminal echoes what you type, so wait_for a text your input does not contain: write `make test; echo DONE-$((1+1))` and wait_for `DONE-2`. " +
        `Output is capped at max_bytes (default ${MCP_MAX_OUTPUT_BYTES}); remaining_bytes says what is left for the next read, dropped_bytes what was lost because over 1 MiB waited unread.`,
      inputSchema: readInput,
      outputSchema: shellOps.shellRead,
      annotations: { title: "Read a shell's output", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
      async run(args, server, call) {
        const r = await server.pyro.readTaskShell({ ...args, plain: args.plain ?? true, max_bytes: args.max_bytes ?? MCP_MAX_OUTPUT_BYTES }, { signal: call.signal });
        return { structured: r, text: shellReadText(r) };
      },
    }),
    tool({
      name: "task_shell_signal",
      title: "Signal a shell",
      description: "Interrupt what runs in a shell: SIGINT (Ctrl-C), SIGQUIT and SIGTSTP (Ctrl-Z) go to its foreground job through the terminal; SIGTERM, SIGHUP, SIGKILL and the rest to the shell process itself.",
      inputSchema: shellOps.signalShellArgs,
      outputSchema: shellOps.shellSignalled,
      annotations: { title: "Signal a shell", readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.signalTaskShell(args);
        return { structured: r, text: `sent ${r.signal} to ${r.shell_id} (${r.via === "terminal" ? "its foreground job, through the terminal" : "the shell process"})` };
      },
    }),
    tool({
      name: "task_shell_resize",
      title: "Resize a shell's terminal",
      description: "Set a shell's terminal size in rows and columns (programs that draw full screens, like top or less, redraw).",
      inputSchema: shellOps.resizeShellArgs,
      outputSchema: shellOps.shellInfo,
      annotations: { title: "Resize a shell's terminal", readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.resizeTaskShell(args);
        return { structured: s, text: shellText(s) };
      },
    }),
    tool({
      name: "task_shell_close",
      title: "Close a shell",
      description: "End a shell and every process it started (background jobs included). Files it wrote in /workspace stay.",
      inputSchema: shellOps.shellIdArgs,
      outputSchema: shellOps.shellClosed,
      annotations: { title: "Close a shell", readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.closeTaskShell(args);
        return { structured: s, text: `closed ${s.shell_id}${s.exit_code !== null ? ` (exit ${s.exit_code})` : ""}` };
      },
    }),
  ];
  return specs as unknown as ToolSpec[];
}

/** The text of a tool error: what failed, then what to do, as a model can act on it. */
export function errorText(error: PyroError, tools: ReadonlySet<string>): string {
  // Named by what the caller has: a task-core model is never sent to a full-profile tool or a CLI command.
  const hint = hintFor(error, { kind: "tools", tools });
  return `Error (${error.code}): ${error.message}${hint ? `\nHint: ${hint}` : ""}`;
}

function serviceText(s: z.infer<typeof serviceOps.serviceInfo>): string {
  return `${s.name} in ${s.task_id}: ${s.state}${s.ready ? ", ready" : ""}${s.published ? `, published on ${s.published.host}:${s.published.port} (port ${s.published.guest_port} in the sandbox)` : ""}${s.exit_code !== null ? `, exit ${s.exit_code}` : ""}${s.restarts ? `, ${s.restarts} restart(s)` : ""}, log ${bytesText(s.log_bytes)}`;
}

function serviceTools(): ToolSpec[] {
  const specs = [
    tool({
      name: "task_service_start",
      title: "Start a service in a task",
      description:
        "Start a named long-running process in a task (a dev server, a database) and wait until it is ready: `ready` is a probe, one of {file}, {tcp_port}, {http: {port, path}} (2xx), {command} (exits 0), checked inside the sandbox until ready_timeout_seconds (default 30). " +
        "Returns once ready; if it exits first or the probe never passes, the service is stopped and the error quotes its last log lines. Use this rather than a background job in task_exec (which ends with the exec) or in a shell (no readiness, no log). " +
        "Its output goes to a log (task_service_logs); restart: on-failure restarts it (max_restarts, default 3). publish: {port} makes the port reachable from the host at 127.0.0.1:<published.port> (loopback only) for a browser or tests on the host. It belongs to the task: it runs until task_service_stop or task_delete, also after this server exits (the next pyro process that asks about it holds it: its log, its published port).",
      inputSchema: serviceOps.startServiceArgs,
      outputSchema: serviceOps.serviceInfo,
      annotations: { title: "Start a service in a task", readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
      async run(args, server, call) {
        const s = await server.pyro.startTaskService(args, { signal: call.signal });
        return { structured: s, text: serviceText(s) };
      },
    }),
    tool({
      name: "task_service_status",
      title: "Service status",
      description: "A service's state (starting, running, exited, stopped, failed), readiness, exit code, restarts and log size.",
      inputSchema: serviceOps.serviceArgs,
      outputSchema: serviceOps.serviceInfo,
      annotations: { title: "Service status", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.statusTaskService(args);
        return { structured: s, text: serviceText(s) };
      },
    }),
    tool({
      name: "task_service_logs",
      title: "Service log",
      description: "The last lines of a service's output, stdout and stderr together (default 200 lines; the log on disk is capped at 4 MiB plus one older part).",
      inputSchema: serviceOps.serviceLogsArgs,
      outputSchema: serviceOps.serviceLogs,
      annotations: { title: "Service log", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.logsTaskService(args);
        const text = r.lines.join("\n");
        return { structured: r, text: r.lines.length ? (text.length > MCP_MAX_OUTPUT_BYTES ? text.slice(-MCP_MAX_OUTPUT_BYTES) : text) : `${r.name} has no output yet` };
      },
    }),
    tool({
      name: "task_service_stop",
      title: "Stop a service",
      description: "Stop a service and every process it started. Its log stays readable with task_service_logs.",
      inputSchema: serviceOps.serviceArgs,
      outputSchema: serviceOps.serviceInfo,
      annotations: { title: "Stop a service", readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const s = await server.pyro.stopTaskService(args);
        return { structured: s, text: serviceText(s) };
      },
    }),
    tool({
      name: "task_service_list",
      title: "List a task's services",
      description: "A task's services, running or not, with their state (whichever pyro process started them; held_here says whether this server holds one).",
      inputSchema: serviceOps.serviceListArgs,
      outputSchema: serviceOps.serviceList,
      annotations: { title: "List a task's services", readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      async run(args, server) {
        const r = await server.pyro.listTaskServices(args);
        return { structured: r, text: r.services.length ? r.services.map(serviceText).join("\n") : `no services in ${r.task_id}` };
      },
    }),
  ];
  return specs as unknown as ToolSpec[];
}
