import type { Command } from "commander";
import { PyroError } from "../core/errors.js";
import { action, intOption } from "./common.js";
import { cliPyro } from "./runtime.js";
import { splitRunArgv } from "./run.js";

/**
 * `pyro task service run TASK_ID NAME [probe] [--publish PORT] -- CMD...`:
 * a service in the foreground: it returns nothing until the service ends,
 * streams its log, prints where a published port is, and stops the
 * service on Ctrl-C (like `docker run` without -d). The service belongs to
 * the task (runtime/services.ts): a kill -9 of this command leaves it
 * running, for the next pyro process to take over. MCP servers and SDK
 * programs keep services in the background (task_service_start).
 */
export function registerTaskService(task: Command): void {
  const service = task.command("service").description("long-running processes in a task, with a readiness probe and published ports");
  service
    .command("run")
    .description("start a service in the foreground: wait until ready, stream its log, stop it on Ctrl-C")
    .argument("<task_id>", "the task id")
    .argument("<name>", "the service's name (a-z, 0-9, - and _)")
    .argument("[command...]", "the command, after --")
    .option("--ready-file <path>", "ready once this path exists in the sandbox")
    .option("--ready-tcp <port>", "ready once 127.0.0.1:PORT in the sandbox accepts", intOption("--ready-tcp"))
    .option("--ready-http <port[/path]>", "ready once GET http://127.0.0.1:PORT/PATH in the sandbox answers 2xx")
    .option("--ready-cmd <command>", "ready once this command exits 0")
    .option("--ready-timeout-seconds <n>", "how long the probe may take (default 30)", intOption("--ready-timeout-seconds"))
    .option("--publish <port[:host_port]>", "publish the sandbox's PORT on the host's 127.0.0.1 (HOST_PORT, else a free one)")
    .option("--restart <policy>", "no or on-failure (default no)")
    .option("--max-restarts <n>", "restarts allowed with on-failure (default 3)", intOption("--max-restarts"))
    .option("--cwd <dir>", "working directory (default /workspace)")
    .action(
      action(async (taskId: string, name: string, _cmd: string[], opts: any) => {
        const { command } = splitRunArgv(process.argv);
        const probes = [opts.readyFile, opts.readyTcp, opts.readyHttp, opts.readyCmd].filter((p) => p !== undefined);
        if (probes.length > 1) throw new PyroError("invalid_argument", "give at most one of --ready-file, --ready-tcp, --ready-http, --ready-cmd.");
        let ready: any;
        if (opts.readyFile !== undefined) ready = { file: opts.readyFile };
        else if (opts.readyTcp !== undefined) ready = { tcp_port: opts.readyTcp };
        else if (opts.readyHttp !== undefined) {
          const m = /^(\d+)(\/.*)?$/.exec(opts.readyHttp);
          if (!m) throw new PyroError("invalid_argument", `--ready-http expects PORT or PORT/PATH, got "${opts.readyHttp}".`);
          ready = { http: { port: Number(m[1]), ...(m[2] ? { path: m[2] } : {}) } };
        } else if (opts.readyCmd !== undefined) ready = { command: opts.readyCmd };
        let publish: any;
        if (opts.publish !== undefined) {
          const m = /^(\d+)(?::(\d+))?$/.exec(opts.publish);
          if (!m) throw new PyroError("invalid_argument", `--publish expects PORT or PORT:HOST_PORT, got "${opts.publish}".`);
          publish = { port: Number(m[1]), ...(m[2] ? { host_port: Number(m[2]) } : {}) };
        }
        const pyro = await cliPyro();
        const controller = new AbortController();
        let interrupted: NodeJS.Signals | null = null;
        const onSignal = (sig: NodeJS.Signals) => () => {
          interrupted = sig;
          controller.abort();
          void pyro.stopTaskService({ task_id: taskId, name }).catch(() => undefined);
        };
        const onInt = onSignal("SIGINT");
        const onTerm = onSignal("SIGTERM");
        process.on("SIGINT", onInt);
        process.on("SIGTERM", onTerm);
        try {
          const s = await pyro.startTaskService(
            {
              task_id: taskId,
              name,
              command,
              ...(ready ? { ready } : {}),
              ...(opts.readyTimeoutSeconds !== undefined ? { ready_timeout_seconds: opts.readyTimeoutSeconds } : {}),
              ...(publish ? { publish } : {}),
              ...(opts.restart ? { restart: opts.restart } : {}),
              ...(opts.maxRestarts !== undefined ? { max_restarts: opts.maxRestarts } : {}),
              ...(opts.cwd ? { cwd: opts.cwd } : {}),
            },
            { signal: controller.signal, onOutput: (c) => process.stdout.write(c) },
          );
          process.stderr.write(`pyro: ${s.name} is ready${s.published ? `; published on http://${s.published.host}:${s.published.port} (port ${s.published.guest_port} in the sandbox)` : ""}; Ctrl-C stops it\n`);
          const end = await pyro.services.ended(s.task_id, s.name);
          if (interrupted) return interrupted === "SIGINT" ? 130 : 143;
          process.stderr.write(`pyro: ${end.name} ${end.state}${end.exit_code !== null ? ` (exit ${end.exit_code})` : ""}${end.restarts ? ` after ${end.restarts} restart(s)` : ""}\n`);
          return end.exit_code ?? 125;
        } finally {
          process.off("SIGINT", onInt);
          process.off("SIGTERM", onTerm);
          await pyro.close();
        }
      }),
    );
}
