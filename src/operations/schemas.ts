import * as z from "zod";

/**
 * Schemas shared by every operation. One schema per operation is the single
 * source for the SDK's argument checks, the MCP tools' input/output schemas
 * and the CLI's --json output. Fields are snake_case on the wire and in the
 * SDK, as in the MCP tools.
 */
export { DEFAULTS, LIMITS } from "../core/defaults.js";
import { LIMITS } from "../core/defaults.js";

export const environmentName = z
  .string()
  .min(1)
  .max(128)
  .describe("Environment name, e.g. `debian:12` (git, curl, python3), `debian:12-base`, `debian:12-build` or `busybox`.");

export const vcpuCount = z.number().int().min(LIMITS.vcpu_count.min).max(LIMITS.vcpu_count.max).describe("CPUs the sandbox may use (default 1; at most the host's CPUs).");
export const memMib = z.number().int().min(LIMITS.mem_mib.min).max(LIMITS.mem_mib.max).describe("Memory limit in MiB (default 1024); a process past it is killed.");
export const diskMib = z
  .number()
  .int()
  .min(LIMITS.disk_mib.min)
  .max(LIMITS.disk_mib.max)
  .describe("Size of the sandbox's writable layer in MiB (default 8192 for tasks and vm_create, 2048 for vm_run); past it writes fail with ENOSPC. status' limits say what enforces it on this host.");
export const timeoutSeconds = z
  .number()
  .int()
  .min(LIMITS.timeout_seconds.min)
  .max(LIMITS.timeout_seconds.max)
  .describe("Seconds before the command's whole process tree is killed and exit_code 124 is returned (default 30).");
export const ttlSeconds = z.number().int().min(LIMITS.ttl_seconds.min).max(LIMITS.ttl_seconds.max).describe("Seconds until the VM is deleted automatically (default 600).");
export const network = z.boolean().describe("Outbound network through user-mode networking (default false: loopback only). The host's own loopback services are never reachable.");

/** A string runs through `/bin/sh -lc`; an array is an argv run without a shell. */
export const command = z
  .union([
    z.string().min(1, "command must not be empty"),
    z.array(z.string()).min(1, "command must not be empty").max(LIMITS.argv),
  ])
  .describe("A shell command string (run with /bin/sh -lc) or an argv array (run without a shell).");

export const envVars = z
  .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "environment variable names are letters, digits and _"), z.string())
  .describe("Extra environment variables for the command.");

export const isolation = z
  .object({
    driver: z.enum(["firecracker", "qemu", "namespace"]),
    kind: z.enum(["microvm", "emulated-vm", "namespace"]),
    accel: z.enum(["kvm", "tcg"]).nullable(),
  })
  .describe("What isolated the sandbox that ran this.");

const enforcement = z.enum(["cgroup-v1", "cgroup-v2", "rlimit", "tmpfs", "ext4-image", "checked", "vm", "none"]);
export const limitsInfo = z
  .object({
    mechanism: z.enum(["cgroup-v1", "cgroup-v2", "vm", "none"]).describe("What holds memory, CPU and processes: the cgroup flavor of the sandbox's groups, vm (the VM itself), or none (no cgroup could be made here)."),
    mem_mib: z.number().nullable(),
    vcpu_count: z.number().nullable(),
    pids_max: z.number().nullable(),
    disk_mib: z.number().nullable(),
    shm_mib: z.number().nullable().describe("Size of /dev/shm and of /run, each."),
    enforced_by: z
      .object({ memory: enforcement, cpu: enforcement, pids: enforcement, disk: enforcement, shm: enforcement })
      .describe("What keeps each limit: a cgroup, an rlimit, a tmpfs or ext4 image of that size (ENOSPC), checked by pyro around each exec and push, or none. A limit kept by none is null above."),
    note: z.string().nullable(),
  })
  .describe("Limits as this host enforces them, one by one.");

export const execResult = z.object({
  vm_id: z.string().optional(),
  task_id: z.string().optional(),
  sequence: z.number().int().optional(),
  exit_code: z.number().int().describe("The command's exit code; 128+n when killed by signal n; 124 on timeout; 127 when not found."),
  signal: z.string().nullable().describe("The name of the signal that killed the command, if any."),
  stdout: z.string(),
  stderr: z.string(),
  stdout_truncated: z.boolean(),
  stderr_truncated: z.boolean(),
  timed_out: z.boolean(),
  oom_killed: z.boolean().describe("True when the memory limit killed a process of the command."),
  exec_error: z
    .string()
    .nullable()
    .describe("Set when the command could not be started (not found, not executable, a cwd that does not exist): pyro's own report, never the command's output. The command did not run; exit_code is 127 (not found) or 126."),
  duration_ms: z.number().int(),
  isolation,
  limits: limitsInfo.nullable().describe("The limits of the sandbox that ran this, and what kept each."),
});
export type ExecResult = z.infer<typeof execResult>;

export const networkInfo = z.object({
  enabled: z.boolean(),
  backend: z.enum(["none", "pasta", "passt"]),
  interface: z.string().nullable(),
  guest_ip: z.string().nullable(),
  gateway: z.string().nullable(),
  dns: z.array(z.string()),
  host_loopback_reachable: z.literal(false),
});



export const driverChoice = z.enum(["auto", "firecracker", "qemu", "namespace"]).describe("Isolation driver (default auto).");
