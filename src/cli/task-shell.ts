import type { Command } from "commander";
import { action } from "./common.js";
import { cliPyro } from "./runtime.js";

/** Ctrl-]: telnet's escape key; nothing a shell user types for another purpose. */
const DETACH_KEY = 0x1d;
/** Ctrl-D: what the terminal's line discipline turns into end-of-file at an empty prompt. */
const EOF_KEY = Buffer.from([0x04]);

/**
 * `pyro task shell TASK_ID`: the user's terminal attached to a new shell in
 * the task, like `docker exec -it`. The command closes its shell when it
 * ends: on the shell's own exit, on the detach key, or on a signal. (Killed
 * with SIGKILL it cannot: the shell, which belongs to the task, runs on and
 * task_status lists it, held by no process.) The daemon (docs/daemon.md)
 * is not involved: it serves only `pyro run`.
 */
export function registerTaskShell(task: Command): void {
  task
    .command("shell")
    .description("attach this terminal to a new interactive shell in the task's /workspace (Ctrl-] detaches and closes it)")
    .argument("<task_id>", "the task id")
    .option("--cwd <dir>", "starting directory (default /workspace)")
    .action(
      action(async (taskId: string, opts: { cwd?: string }) => {
        const pyro = await cliPyro();
        const stdin = process.stdin;
        const stdout = process.stdout;
        const tty = Boolean(stdin.isTTY);
        const size = () => ({ rows: clamp(stdout.rows), cols: clamp(stdout.columns) });
        let detached = false;
        let interrupted: string | null = null;
        const shell = await pyro.openTaskShell(
          { task_id: taskId, ...(stdout.isTTY ? size() : {}), ...(opts.cwd ? { cwd: opts.cwd } : {}) },
          { onOutput: (chunk) => stdout.write(chunk) },
        );
        const id = { task_id: shell.task_id, shell_id: shell.shell_id };
        // Raw bytes go through the runtime's writer: keystrokes need not be valid UTF-8 (the SDK's input is a string).
        const write = (data: Buffer) => pyro.shells.write(id.task_id, id.shell_id, data).catch(() => undefined);
        const onResize = () => {
          if (stdout.isTTY) void pyro.resizeTaskShell({ ...id, ...size() }).catch(() => undefined);
        };
        const onData = (chunk: Buffer) => {
          const at = tty ? chunk.indexOf(DETACH_KEY) : -1;
          if (at >= 0) {
            if (at > 0) void write(chunk.subarray(0, at));
            detached = true;
            void pyro.closeTaskShell(id).catch(() => undefined);
            return;
          }
          void write(chunk);
        };
        const onEnd = () => void write(EOF_KEY);
        const onSignal = (name: string) => () => {
          interrupted = name;
          void pyro.closeTaskShell(id).catch(() => undefined);
        };
        const onHup = onSignal("SIGHUP");
        const onTerm = onSignal("SIGTERM");
        const onInt = onSignal("SIGINT");
        if (tty) stdin.setRawMode(true);
        stdin.on("data", onData);
        stdin.on("end", onEnd);
        stdout.on("resize", onResize);
        process.on("SIGHUP", onHup);
        process.on("SIGTERM", onTerm);
        process.on("SIGINT", onInt);
        stdin.resume();
        let code: number | null = null;
        try {
          code = await pyro.shells.exited(id.task_id, id.shell_id).catch(() => null);
        } finally {
          stdin.off("data", onData);
          stdin.off("end", onEnd);
          stdout.off("resize", onResize);
          process.off("SIGHUP", onHup);
          process.off("SIGTERM", onTerm);
          process.off("SIGINT", onInt);
          if (tty) stdin.setRawMode(false);
          stdin.pause();
          await pyro.close();
        }
        if (detached) {
          process.stderr.write(`\r\npyro: detached from ${id.shell_id}; it was closed with this command\r\n`);
          return 0;
        }
        if (interrupted) return interrupted === "SIGINT" ? 130 : interrupted === "SIGHUP" ? 129 : 143;
        return code ?? 125;
      }),
    );
}

function clamp(n: number | undefined): number {
  return Math.max(1, Math.min(1000, n ?? 24));
}
