import { PyroError } from "../core/errors.js";

/**
 * Which tools a server exposes. The model-facing surface is kept small on
 * purpose: `vm_run` alone covers one-shot commands; tasks add a persistent
 * workspace; `task-full` adds shells that keep their state and services; `full` adds the
 * lower-level VM lifecycle.
 */
export const TOOL_NAMES = [
  "vm_run",
  "vm_create",
  "vm_start",
  "vm_exec",
  "vm_status",
  "vm_stop",
  "vm_delete",
  "vm_network_info",
  "vm_reap_expired",
  "vm_list_environments",
  "task_create",
  "task_sync_push",
  "task_exec",
  "task_status",
  "task_logs",
  "task_list",
  "task_delete",
  "task_file_list",
  "task_file_read",
  "task_file_write",
  "task_patch_apply",
  "task_diff",
  "task_export",
  "task_shell_open",
  "task_shell_write",
  "task_shell_read",
  "task_shell_signal",
  "task_shell_resize",
  "task_shell_close",
  "task_service_start",
  "task_service_status",
  "task_service_logs",
  "task_service_stop",
  "task_service_list",
] as const;
export type ToolName = (typeof TOOL_NAMES)[number];

const TASK_TOOLS = ["task_create", "task_sync_push", "task_exec", "task_status", "task_logs", "task_list", "task_delete"] as const;
/** The workspace file API: files, patches, diff and export (task-full and full). */
const TASK_FILE_TOOLS = ["task_file_list", "task_file_read", "task_file_write", "task_patch_apply", "task_diff", "task_export"] as const;
/** An interactive workspace: shells that keep their state between calls. */
const SHELL_TOOLS = ["task_shell_open", "task_shell_write", "task_shell_read", "task_shell_signal", "task_shell_resize", "task_shell_close"] as const;
/** Long-running processes with a readiness probe. */
const SERVICE_TOOLS = ["task_service_start", "task_service_status", "task_service_logs", "task_service_stop", "task_service_list"] as const;

export const PROFILES = {
  /** One tool: one command in one ephemeral sandbox. */
  "vm-run": ["vm_run"],
  /** vm_run plus persistent task workspaces (the default). */
  "task-core": ["vm_run", ...TASK_TOOLS],
  /** task-core plus a workspace an agent lives in: files, patches, diff and export; shells and services. */
  "task-full": ["vm_run", ...TASK_TOOLS, ...TASK_FILE_TOOLS, ...SHELL_TOOLS, ...SERVICE_TOOLS],
  /** Every tool, including the VM lifecycle and environment listing. */
  full: TOOL_NAMES,
} as const satisfies Record<string, readonly ToolName[]>;

export type ProfileName = keyof typeof PROFILES;
export const PROFILE_NAMES = Object.keys(PROFILES) as ProfileName[];
export const DEFAULT_PROFILE: ProfileName = "task-core";

export function isProfileName(value: string): value is ProfileName {
  return Object.prototype.hasOwnProperty.call(PROFILES, value);
}

/** Checks a profile name from a flag or an SDK caller, naming the valid ones when it is wrong. */
export function parseProfile(value: string | undefined): ProfileName {
  if (value === undefined) return DEFAULT_PROFILE;
  if (isProfileName(value)) return value;
  throw new PyroError("invalid_argument", `Unknown MCP profile "${value}".`, {
    hint: `Use one of: ${PROFILE_NAMES.join(", ")} (default ${DEFAULT_PROFILE}).`,
  });
}

export function toolsOf(profile: ProfileName): readonly ToolName[] {
  return PROFILES[profile];
}
