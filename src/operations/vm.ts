import * as z from "zod";
import type { Readable } from "node:stream";
import { PyroError } from "../core/errors.js";
import type { VmManager } from "../runtime/vms.js";
import { shapeOf } from "../runtime/pool.js";
import type { ProgressListener } from "../util/progress.js";
import { parseArgs } from "./parse.js";
import {
  command,
  DEFAULTS,
  driverChoice,
  environmentName,
  execResult,
  isolation,
  limitsInfo,
  LIMITS,
  memMib,
  diskMib,
  network,
  networkInfo,
  timeoutSeconds,
  ttlSeconds,
  vcpuCount,
} from "./schemas.js";

export { parseArgs };

/** The VM operations: one schema per operation, shared by the SDK, the CLI's --json and the MCP tools. */

const vmId = z.string().describe("The VM id returned by vm_create, e.g. vm_0123456789ab.");
const maxOutputBytes = z
  .number()
  .int()
  .min(LIMITS.max_output_bytes.min)
  .max(LIMITS.max_output_bytes.max)
  .describe("Cap per output stream; the head and tail are kept around a marker (default 1 MiB).");

export const runInVmArgs = z
  .object({
    environment: environmentName.optional(),
    command,
    vcpu_count: vcpuCount.optional(),
    mem_mib: memMib.optional(),
    disk_mib: diskMib.optional(),
    timeout_seconds: timeoutSeconds.optional(),
    network: network.optional(),
    driver: driverChoice.optional(),
    max_output_bytes: maxOutputBytes.optional(),
  })
  .strict();
export type RunInVmArgs = z.infer<typeof runInVmArgs>;

export const createVmArgs = z
  .object({
    environment: environmentName.optional(),
    vcpu_count: vcpuCount.optional(),
    mem_mib: memMib.optional(),
    disk_mib: diskMib.optional(),
    ttl_seconds: ttlSeconds.optional(),
    network: network.optional(),
    driver: driverChoice.optional(),
  })
  .strict();
export type CreateVmArgsT = z.infer<typeof createVmArgs>;

export const vmIdArgs = z.object({ vm_id: vmId }).strict();

export const execVmArgs = z
  .object({
    vm_id: vmId,
    command,
    timeout_seconds: timeoutSeconds.optional(),
    max_output_bytes: maxOutputBytes.optional(),
  })
  .strict();
export type ExecVmArgs = z.infer<typeof execVmArgs>;

export const vmStatus = z.object({
  vm_id: z.string(),
  environment: z.string(),
  state: z.enum(["created", "started", "stopped"]),
  running: z.boolean(),
  vcpu_count: z.number().int(),
  mem_mib: z.number().int(),
  disk_mib: z.number().int(),
  network: z.boolean(),
  ttl_seconds: z.number().int(),
  created_at: z.string(),
  expires_at: z.string(),
  isolation,
  limits: limitsInfo.nullable(),
});

export const vmNetworkInfo = z.object({
  vm_id: z.string(),
  state: z.enum(["created", "started", "stopped"]),
  network: z.union([networkInfo, z.object({ enabled: z.boolean() })]),
});

export const vmDeleted = z.object({ vm_id: z.string(), deleted: z.literal(true) });
export const reapResult = z.object({ reaped: z.array(z.object({ id: z.string(), kind: z.enum(["vm", "task"]), reason: z.string() })) });
export const vmList = z.object({ vms: z.array(vmStatus) });
export { execResult };

export interface StreamOptions {
  stdin?: Readable | Buffer | null;
  /** Live output. Returning a Promise holds further output (and slows the command) until it settles. */
  onStdout?: (chunk: Buffer) => void | Promise<void>;
  onStderr?: (chunk: Buffer) => void | Promise<void>;
  signal?: AbortSignal;
  /** Progress of an environment pulled, or a VM driver's artifacts built, on first use by this call (default: the Pyro's onProgress). */
  onProgress?: ProgressListener;
}

/**
 * One command, one ephemeral sandbox, automatic cleanup: the VM dies with
 * the calling process even on kill -9, and is deleted here in every case.
 */
export async function runInVm(vms: VmManager, raw: RunInVmArgs, stream: StreamOptions = {}): Promise<z.infer<typeof execResult>> {
  const args = parseArgs(runInVmArgs, raw);
  const timeout = args.timeout_seconds ?? DEFAULTS.timeout_seconds;
  const shape = vms.pool ? shapeOf(args) : null;
  const spare = shape ? await vms.pool!.take(shape, timeout) : null;
  // The VM's lifetime covers the command's timeout (plus a margin to boot and
  // clean up): its TTL deadline must never cut a long command short.
  const record = spare ?? (await vms.create({ ...args, ttl_seconds: Math.max(DEFAULTS.ttl_seconds, timeout + 60) }, { ephemeral: true, signal: stream.signal, onProgress: stream.onProgress }));
  try {
    const outcome = await vms.exec(record.vm_id, {
      command: args.command,
      timeout_seconds: timeout,
      max_output_bytes: args.max_output_bytes ?? DEFAULTS.max_output_bytes,
      cwd: "/",
      ...stream,
    });
    return shapeExec(outcome);
  } finally {
    if (vms.pool) {
      // A pool's process lives on: its result need not wait for the deletion.
      vms.pool.release(record.vm_id);
      vms.pool.replenish(shape!);
    } else {
      await vms.delete(record.vm_id).catch(() => undefined);
    }
  }
}

/** Runs one command in an existing VM, then deletes the VM (the original's exec_vm semantics). */
export async function execVm(vms: VmManager, raw: ExecVmArgs, stream: StreamOptions = {}): Promise<z.infer<typeof execResult>> {
  const args = parseArgs(execVmArgs, raw);
  vms.get(args.vm_id);
  try {
    const outcome = await vms.exec(args.vm_id, {
      command: args.command,
      timeout_seconds: args.timeout_seconds ?? DEFAULTS.timeout_seconds,
      max_output_bytes: args.max_output_bytes ?? DEFAULTS.max_output_bytes,
      ...stream,
    });
    return shapeExec(outcome);
  } finally {
    await vms.delete(args.vm_id).catch(() => undefined);
  }
}

function shapeExec(outcome: Awaited<ReturnType<VmManager["exec"]>>): z.infer<typeof execResult> {
  if (outcome.cancelled) throw new PyroError("cancelled", "The command was cancelled; its sandbox was killed and removed.");
  const { cancelled: _cancelled, ...rest } = outcome;
  return rest;
}
