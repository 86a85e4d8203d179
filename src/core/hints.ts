/**
 * Hints in the words of the surface they are read on. The runtime writes its
 * hints for the CLI (`pyro task list`, `--network`); an SDK caller should
 * read SDK methods and arguments instead, and a model (MCP tools, the AI SDK
 * and LangChain wrappers) should read the names of tools it actually has,
 * never a CLI command it cannot run or a tool of a profile it was not given.
 */
import { PyroError } from "./errors.js";

export type HintSurface = { kind: "sdk" } | { kind: "tools"; tools: ReadonlySet<string> };

/** CLI phrases and their SDK equivalents (longest first where one contains another). */
const SDK_WORDS: Array<[RegExp, string]> = [
  [/`?pyro env list`?/g, "`listEnvironments()`"],
  [/`?pyro env import NAME PATH`?/g, "`importEnvironment({ name, path })`"],
  [/`?pyro env prune --all`?/g, "`pruneEnvironments({ all: true })`"],
  [/`?pyro env prune`?/g, "`pruneEnvironments()`"],
  [/`?pyro task list`?/g, "`listTasks()`"],
  [/`?pyro vm list`?/g, "`listVms()`"],
  [/`?pyro vm start`?/g, "`startVm()`"],
  [/`?pyro doctor`?/g, "`pyro doctor` (this package's CLI)"],
  [/without --network/g, "without `network: true`"],
  [/--network/g, "`network: true`"],
  [/--driver namespace/g, '`driver: "namespace"`'],
  [/--mirror URL/g, "the `mirror` argument"],
  [/--force/g, "`force: true`"],
];

/**
 * Each MCP tool's SDK method: hints written for a model or the tools (the
 * shell, service and file APIs name their tools) read as methods in the SDK.
 * test/unit/hints.test.ts checks it against the tools and the SDK.
 */
export const TOOL_METHODS: Readonly<Record<string, string>> = {
  vm_run: "runInVm",
  vm_create: "createVm",
  vm_start: "startVm",
  vm_exec: "execVm",
  vm_status: "statusVm",
  vm_stop: "stopVm",
  vm_delete: "deleteVm",
  vm_network_info: "networkInfoVm",
  vm_reap_expired: "reapExpired",
  vm_list_environments: "listEnvironments",
  task_create: "createTask",
  task_sync_push: "pushTaskSync",
  task_exec: "execTask",
  task_status: "statusTask",
  task_logs: "logsTask",
  task_list: "listTasks",
  task_delete: "deleteTask",
  task_file_list: "listTaskFiles",
  task_file_read: "readTaskFile",
  task_file_write: "writeTaskFile",
  task_patch_apply: "applyTaskPatch",
  task_diff: "diffTask",
  task_export: "exportTask",
  task_shell_open: "openTaskShell",
  task_shell_write: "writeTaskShell",
  task_shell_read: "readTaskShell",
  task_shell_signal: "signalTaskShell",
  task_shell_resize: "resizeTaskShell",
  task_shell_close: "closeTaskShell",
  task_service_start: "startTaskService",
  task_service_status: "statusTaskService",
  task_service_logs: "logsTaskService",
  task_service_stop: "stopTaskService",
  task_service_list: "listTaskServices",
};
const TOOL_NAME = new RegExp(`\\b(${Object.keys(TOOL_METHODS).join("|")})\\b`, "g");

/** What a model can be told per code when the runtime's hint names the CLI, given the tools it has. */
function toolHint(error: PyroError, has: (name: string) => boolean): string | undefined {
  switch (error.code) {
    case "unknown_task":
      return has("task_list")
        ? "Check the task_id; task_list shows the tasks that exist (a deleted or expired task is gone for good)."
        : "Check the task_id (a deleted or expired task is gone for good).";
    case "unknown_vm":
      return has("vm_create")
        ? "VMs expire after ttl_seconds (600 by default), and vm_exec deletes its VM after one command; create a new one with vm_create, or just use vm_run."
        : "That VM is gone; run the command with vm_run, which makes a fresh sandbox each time.";
    case "invalid_state":
      if (/`pyro vm start`/.test(error.hint ?? "")) return has("vm_start") ? "Start it again with vm_start, or create a new one." : "Run the command with vm_run instead.";
      return undefined;
    case "unknown_environment":
      return has("vm_list_environments")
        ? "vm_list_environments lists them; the catalog has debian:12, debian:12-base, debian:12-build and busybox."
        : "Use one of the environments the message lists (the environment argument's description says what each holds).";
    case "invalid_argument":
      if (Array.isArray(error.details?.issues)) return "Check the argument names and ranges in the tool's input schema.";
      return undefined;
    case "source_not_allowed":
      // For the user to act on, through the model: only whoever started the server can widen its roots.
      return error.hint;
    default:
      return undefined;
  }
}

/** A hint that still names the CLI (a `pyro ...` command or a --flag) after the tool rewrites: said for a model. */
const CLI_WORDS = /`pyro [a-z]|\bpyro (env|vm|task|doctor|run|mcp|host)\b|(^|\s)--[a-z]|\b[a-z]+[A-Z]\w*\(/;

function toolFallback(error: PyroError, hint: string): string {
  if (/--network/.test(hint)) return hint.replace(/without --network/g, "with network: false").replace(/--network/g, "network: true").replace(/,? ?or use --driver namespace[^.]*/, "");
  switch (error.code) {
    case "driver_unavailable":
    case "sandbox_failed":
    case "environment_build_failed":
    case "mirror_unreachable":
    case "insufficient_disk":
    case "environment_not_ready":
      return "This is a problem of the machine pyro runs on, not of the arguments: retrying will not help until the operator of this server fixes the host (its message above says what is wrong).";
    default:
      return "Check the arguments against the tool's input schema, or tell the user what the message says.";
  }
}

/** The hint of `error` as the surface should show it (undefined: no hint). */
export function hintFor(error: PyroError, surface: HintSurface): string | undefined {
  if (surface.kind === "sdk") {
    let hint = error.hint;
    if (!hint) return hint;
    for (const [re, words] of SDK_WORDS) hint = hint.replace(re, words);
    return hint.replace(TOOL_NAME, (tool) => `\`${TOOL_METHODS[tool]}()\``);
  }
  const has = (name: string) => surface.tools.has(name);
  const own = toolHint(error, has);
  if (own) return own;
  if (!error.hint) return undefined;
  return CLI_WORDS.test(error.hint) ? toolFallback(error, error.hint) : error.hint;
}

/** The same error with its hint for the surface (the original kept as `cause`). */
export function withHintFor(error: PyroError, surface: HintSurface): PyroError {
  const hint = hintFor(error, surface);
  if (hint === error.hint) return error;
  const copy = new PyroError(error.code, error.message, { ...(hint ? { hint } : {}), cause: error, ...(error.details ? { details: error.details } : {}) });
  copy.stack = error.stack;
  return copy;
}
