import { spawn } from "node:child_process";
import type { Command } from "commander";
import { action, emit, intOption } from "./common.js";
import { lastRunShape } from "./run.js";
import { daemonEnabled, socketPath, withAbsolutePaths } from "../daemon/paths.js";

/** Seconds without a request after which the daemon deletes its spares and exits. */
export const DEFAULT_IDLE_SECONDS = 300;

function idleSeconds(): number {
  const v = Number(process.env.PYRO_DAEMON_IDLE_SECONDS);
  return Number.isInteger(v) && v > 0 ? v : DEFAULT_IDLE_SECONDS;
}

/**
 * Starts the daemon detached from this process (its own session, no stdio),
 * warming the shape of the run that just finished. Never throws: the daemon
 * only makes later runs faster.
 */
export function startDaemonInBackground(): void {
  if (!daemonEnabled() || !lastRunShape) return;
  try {
    const child = spawn(
      process.execPath,
      [...process.execArgv, process.argv[1]!, "daemon", "serve", "--idle-seconds", String(idleSeconds()), "--warm", JSON.stringify(lastRunShape)],
      // Its own session, no stdio, and / as its directory: it must not hold the caller's terminal or working directory.
      { detached: true, stdio: "ignore", env: withAbsolutePaths(process.env), cwd: "/" },
    );
    child.on("error", () => undefined);
    child.unref();
  } catch {
    /* no daemon: later runs stay in-process */
  }
}

export function registerDaemon(program: Command): void {
  const daemon = program
    .command("daemon")
    .summary("the warm background process that makes `pyro run` fast (status, stop, serve)")
    .description(
      "`pyro run` hands its work to a warm daemon of the same user when one is running,\n" +
        "and starts one in the background after a run when none is. The daemon keeps a\n" +
        "booted spare sandbox for each of the last 4 kinds of run it served (each used\n" +
        "by one command, then deleted), and exits after 5 minutes without a request\n" +
        "(PYRO_DAEMON_IDLE_SECONDS). PYRO_DAEMON=0 turns it off: every run is in-process.",
    );

  daemon
    .command("serve")
    .description("run the daemon in the foreground (what the background start runs)")
    .option("--idle-seconds <n>", "exit after this many seconds without a request (default 300)", intOption("--idle-seconds"))
    .option("--warm <json>", "a run shape to boot a spare for at once, as JSON")
    .action(
      action(async (opts: { idleSeconds?: number; warm?: string }) => {
        const { serveDaemon } = await import("../daemon/server.js");
        let warm;
        if (opts.warm) {
          try {
            warm = JSON.parse(opts.warm);
          } catch {
            warm = undefined;
          }
        }
        await serveDaemon({ idleSeconds: opts.idleSeconds ?? idleSeconds(), warm });
      }),
    );

  daemon
    .command("status")
    .description("whether a daemon serves this configuration, with its counters")
    .option("--json", "print JSON")
    .action(
      action(async (opts: { json?: boolean }) => {
        const { askDaemon } = await import("../daemon/client.js");
        const status = await askDaemon("status");
        const value = status ? { running: true, ...status } : { running: false, socket: socketPath(), enabled: daemonEnabled() };
        emit(value, Boolean(opts.json), (v) =>
          v.running
            ? `daemon running: pid ${v.pid}, since ${v.started_at}, ${v.requests} runs served, ${v.active} active, ${v.spares} warm spares, exits after ${v.idle_seconds} s idle\n  socket ${v.socket}`
            : `no daemon running${v.enabled ? " (the next `pyro run` starts one)" : " (PYRO_DAEMON is off)"}\n  socket ${v.socket}`,
        );
      }),
    );

  daemon
    .command("stop")
    .description("stop the daemon: its spares are deleted; runs in progress are finished first")
    .option("--json", "print JSON")
    .action(
      action(async (opts: { json?: boolean }) => {
        const { askDaemon } = await import("../daemon/client.js");
        const status = await askDaemon("stop");
        emit({ stopped: status !== null, pid: status?.pid ?? null }, Boolean(opts.json), (v) => (v.stopped ? `daemon ${v.pid} stopped` : "no daemon was running"));
      }),
    );
}
