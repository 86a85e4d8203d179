import * as z from "zod";
import type { ServiceManager } from "../runtime/services.js";
import { SERVICE_RESTARTS_MAX } from "../runtime/services.js";
import { command, envVars } from "./schemas.js";
import { parseArgs } from "./parse.js";

/** The service operations: named long-running processes in a task, with a readiness probe. */

const taskId = z.string().describe("The task id returned by task_create, e.g. task_0123456789ab.");
const name = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, "1-63 of a-z, 0-9, - and _, starting with a letter or digit").describe("The service's name in the task, e.g. web or db.");
const port = z.number().int().min(1).max(65535);

export const readyProbe = z
  .union([
    z.object({ file: z.string().min(1).max(4096).describe("Ready once this path exists in the sandbox.") }).strict(),
    z.object({ tcp_port: port.describe("Ready once 127.0.0.1:PORT in the sandbox accepts a connection.") }).strict(),
    z.object({ http: z.object({ port, path: z.string().regex(/^\/[^\s]{0,1023}$/).optional().describe("Default /.") }).strict().describe("Ready once GET http://127.0.0.1:PORT/PATH in the sandbox answers 2xx.") }).strict(),
    z.object({ command: command.describe("Ready once this command exits 0 (run every 250 ms, 10 s each at most).") }).strict(),
  ])
  .describe("How to tell the service is ready: one of file, tcp_port, http {port, path}, command.");

export const startServiceArgs = z
  .object({
    task_id: taskId,
    name,
    command,
    cwd: z.string().min(1).max(4096).optional().describe("Working directory (default /workspace)."),
    env: envVars.optional(),
    ready: readyProbe.optional(),
    ready_timeout_seconds: z.number().int().min(1).max(600).optional().describe("How long the probe may take to pass (default 30); then the service is stopped and the error quotes its log."),
    restart: z.enum(["no", "on-failure"]).optional().describe("on-failure: start it again when it exits non-zero or its sandbox died after it was ready (default no)."),
    max_restarts: z.number().int().min(0).max(SERVICE_RESTARTS_MAX).optional().describe("Restarts allowed with on-failure (default 3)."),
    publish: z
      .object({
        port: port.describe("The service's TCP port in the sandbox."),
        host_port: z.number().int().min(1024).max(65535).optional().describe("The port on the host's 127.0.0.1 (default: a free one)."),
      })
      .strict()
      .optional()
      .describe("Publish the service's port on the host's loopback (127.0.0.1 only, never another address) once it is ready; closed when the service stops."),
  })
  .strict();
export type StartServiceArgs = z.infer<typeof startServiceArgs>;

export const serviceArgs = z.object({ task_id: taskId, name }).strict();
export type ServiceArgs = z.infer<typeof serviceArgs>;
export const serviceLogsArgs = z.object({ task_id: taskId, name, tail: z.number().int().min(1).max(10_000).optional().describe("The last N lines (default 200).") }).strict();
export type ServiceLogsArgs = z.infer<typeof serviceLogsArgs>;
export const serviceListArgs = z.object({ task_id: taskId }).strict();

export const serviceInfo = z.object({
  task_id: z.string(),
  name: z.string(),
  state: z.enum(["starting", "running", "exited", "stopped", "failed"]),
  ready: z.boolean(),
  pid: z.number().int().nullable(),
  command: z.union([z.string(), z.array(z.string())]),
  started_at: z.string(),
  ready_at: z.string().nullable(),
  exit_code: z.number().int().nullable(),
  restarts: z.number().int(),
  restart: z.enum(["no", "on-failure"]),
  log_bytes: z.number().int(),
  published: z.object({ host: z.literal("127.0.0.1"), port: z.number().int(), guest_port: z.number().int() }).nullable().describe("Where the host reaches the service (http://127.0.0.1:PORT), or null."),
  publish_error: z.string().nullable().describe("Why the port was not published again when this process took the service over (the port was taken), else null."),
  held_here: z.boolean().describe("This pyro process holds the service (writes its log, serves its port); false: another process or none (the task's agent buffers its output). Status, logs and stop take it over."),
});
export const serviceLogs = z.object({ task_id: z.string(), name: z.string(), lines: z.array(z.string()), log_bytes: z.number().int() });
export const serviceList = z.object({ task_id: z.string(), services: z.array(serviceInfo) });

export async function startService(services: ServiceManager, raw: StartServiceArgs, options: { signal?: AbortSignal; onOutput?: (chunk: Buffer) => void } = {}): Promise<z.infer<typeof serviceInfo>> {
  const { task_id, ...args } = parseArgs(startServiceArgs, raw);
  return services.start(task_id, args, options.signal, options.onOutput);
}

export async function statusService(services: ServiceManager, raw: ServiceArgs): Promise<z.infer<typeof serviceInfo>> {
  const a = parseArgs(serviceArgs, raw);
  return services.status(a.task_id, a.name);
}

export async function logsService(services: ServiceManager, raw: ServiceLogsArgs): Promise<z.infer<typeof serviceLogs>> {
  const a = parseArgs(serviceLogsArgs, raw);
  return services.logs(a.task_id, a.name, a.tail);
}

export async function stopService(services: ServiceManager, raw: ServiceArgs): Promise<z.infer<typeof serviceInfo>> {
  const a = parseArgs(serviceArgs, raw);
  return services.stop(a.task_id, a.name);
}

export async function listServices(services: ServiceManager, raw: { task_id: string }): Promise<z.infer<typeof serviceList>> {
  const a = parseArgs(serviceListArgs, raw);
  return { task_id: a.task_id, services: await services.list(a.task_id) };
}
