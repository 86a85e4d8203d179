import type { Command } from "commander";
import { action, intOption } from "./common.js";

interface DemoOptions {
  environment: string;
  pace?: number;
}

/**
 * `pyro demo`: a short guided run through what an agent gets, printed as the
 * commands a person would type with their real output: a one-shot run (with
 * the isolation it used), then a task created from a host directory, exec'd
 * in, updated from the host and deleted. Ctrl-C stops it and cleans up.
 */
export function registerDemo(program: Command): void {
  program
    .command("demo")
    .summary("a short guided run: one-shot vm_run, then a task loop")
    .description(
      "A guided run of what an agent gets, each step printed as the command you would\n" +
        "type, with its real output: one command in a fresh sandbox (and the isolation\n" +
        "it used), then a task created from a small host directory, exec'd in, updated\n" +
        "from the host with sync push, and deleted. Takes seconds on busybox (the\n" +
        "default, built offline); Ctrl-C stops it and removes what it made.",
    )
    .option("--environment <env>", "environment to run in, e.g. debian:12 (built on first use)", "busybox")
    .option("--pace <ms>", "pause before each command, as if typed (default: 600 on a terminal, 0 otherwise)", intOption("--pace"))
    .action(
      action(async (opts: DemoOptions) => {
        const { mkdtempSync, mkdirSync, rmSync, writeFileSync } = await import("node:fs");
        const { tmpdir } = await import("node:os");
        const { join } = await import("node:path");
        const { cliPyro, describeIsolation } = await import("./runtime.js");
        const { formatBytes } = await import("./common.js");
        const { shellQuote } = await import("../integrations/hosts.js");
        const { PyroError } = await import("../core/errors.js");
        const { setTimeout: sleep } = await import("node:timers/promises");

        const env = opts.environment;
        const started = Date.now();
        const controller = new AbortController();
        const { signal } = controller;
        let readerGone = false;
        const out = (line = "") => {
          if (!readerGone) process.stdout.write(line + "\n");
        };
        const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
        const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
        const pace = Math.max(0, opts.pace ?? (process.stdout.isTTY ? 600 : 0));
        // Shows a command as typed at a prompt, after a pause a person can follow (interruptible).
        const prompt = async (argv: string[] | string) => {
          if (pace) await sleep(pace, undefined, { signal });
          out(`${bold("$")} ${typeof argv === "string" ? argv : argv.map((a, i) => (i === 0 ? a : shellQuote(a))).join(" ")}`);
        };
        const print = (text: string) => {
          if (text) out(text.endsWith("\n") ? text.slice(0, -1) : text);
        };

        let interrupted = false;
        const onSignal = () => {
          interrupted = true;
          controller.abort(new PyroError("cancelled", "Interrupted."));
        };
        process.once("SIGINT", onSignal);
        process.once("SIGTERM", onSignal);
        // A reader that went away (`pyro demo | head`) stops the demo like Ctrl-C, and it cleans up the same way.
        const onStdoutError = () => {
          readerGone = true;
          onSignal();
        };
        process.stdout.on("error", onStdoutError);
        const check = () => {
          if (signal.aborted) throw new PyroError("cancelled", "Interrupted.");
        };

        const pyro = await cliPyro();
        const workdir = mkdtempSync(join(tmpdir(), "pyro-demo-"));
        const app = join(workdir, "app");
        let taskId: string | null = null;
        try {
          out(bold(`pyro demo: disposable sandboxes for AI agents, on ${env}`));
          out(dim("Each step is a command you can type yourself; the output below it is real."));
          out();

          out(bold("1. One command, one fresh sandbox, deleted afterwards (the MCP tool vm_run)"));
          const script = 'echo "hello from $(hostname), uid $(id -u), shell pid $$"; echo "/:" $(ls /)';
          await prompt(["pyro", "run", env, "--", script]);
          const run = await pyro.runInVm({ environment: env, command: script }, { signal });
          print(run.stdout);
          print(run.stderr);
          out(dim(`[pyro] exit ${run.exit_code} in ${run.duration_ms} ms; isolation: ${describeIsolation(run.isolation)}`));
          out(dim("It had its own hostname, process ids and root filesystem, and no network; it is deleted now."));
          out();

          check();
          out(bold("2. A task: a persistent /workspace created from a host directory (task_create, task_exec, task_sync_push)"));
          mkdirSync(app);
          writeFileSync(join(app, "greet.sh"), 'echo "hello, version 1"\n');
          writeFileSync(join(app, "README"), "A tiny project for pyro demo.\n");
          await prompt(["pyro", "task", "create", env, "--source-path", app, "--id-only"]);
          const create = await pyro.createTask({ environment: env, source_path: app, name: "pyro-demo" }, { signal });
          taskId = create.task_id;
          out(create.task_id);
          const limits = create.limits;
          const limitsText = limits?.note ? `; limits: ${limits.note}` : "";
          out(dim(`[pyro] seeded /workspace with ${create.seed.file_count} files (${formatBytes(create.seed.bytes)}); isolation: ${describeIsolation(create.isolation)}${limitsText}`));

          check();
          const first = "sh greet.sh | tee -a greetings.log";
          await prompt(["pyro", "task", "exec", create.task_id, "--", first]);
          const r1 = await pyro.execTask({ task_id: create.task_id, command: first }, { signal });
          print(r1.stdout);
          print(r1.stderr);

          check();
          out(dim("# the project changes on the host, as it would in your editor:"));
          const edit = 'echo "hello, version 2"';
          await prompt(`echo ${shellQuote(edit)} > ${shellQuote(join(app, "greet.sh"))}`);
          writeFileSync(join(app, "greet.sh"), edit + "\n");
          await prompt(["pyro", "task", "sync", "push", create.task_id, app]);
          const push = await pyro.pushTaskSync({ task_id: create.task_id, source_path: app }, { signal });
          out(`pushed ${push.files} entries (${formatBytes(push.bytes)}) to ${push.dest}: ${push.added} added, ${push.replaced} replaced, ${push.deleted} deleted in ${push.duration_ms} ms`);

          check();
          const second = "sh greet.sh | tee -a greetings.log; echo ---; cat greetings.log";
          await prompt(["pyro", "task", "exec", create.task_id, "--", second]);
          const r2 = await pyro.execTask({ task_id: create.task_id, command: second }, { signal });
          print(r2.stdout);
          print(r2.stderr);
          out(dim("The push brought version 2 in; greetings.log, written inside the sandbox, kept both runs."));

          await prompt(["pyro", "task", "delete", create.task_id]);
          await pyro.deleteTask({ task_id: create.task_id });
          taskId = null;
          out(`deleted ${create.task_id}`);
          out();

          out(bold(`Done in ${((Date.now() - started) / 1000).toFixed(1)} s. Next:`));
          out("  pyro mcp serve                        serve vm_run and the task tools to an MCP host over stdio");
          out("  pyro host print-config claude-code    the config for Claude Code (or codex, claude-desktop, cursor, opencode)");
          out("  pyro doctor                           what this host can isolate with");
          out("  docs/first-run.md, docs/integrations.md, docs/hosts.md");
          return 0;
        } catch (error) {
          if (readerGone) return 141;
          if (interrupted) {
            process.stderr.write("\npyro demo: interrupted; cleaning up\n");
            return 130;
          }
          throw error;
        } finally {
          if (taskId) await pyro.deleteTask({ task_id: taskId }).catch(() => undefined);
          rmSync(workdir, { recursive: true, force: true });
          process.off("SIGINT", onSignal);
          process.off("SIGTERM", onSignal);
          if (!readerGone) process.stdout.off("error", onStdoutError);
        }
      }),
    );
}
