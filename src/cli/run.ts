import type { Command } from "commander";
import { action, emit, intOption } from "./common.js";
import { cliPyro, describeIsolation, pullProgress } from "./runtime.js";
import { PyroError } from "../core/errors.js";
import type { Pyro } from "../sdk/pyro.js";
import type { CreateVmArgs } from "../runtime/vms.js";
import { processIo, writeOrWait, type CliIo } from "./io.js";

/** The shape of the last run this process made (what the daemon it starts should keep warm). */
export let lastRunShape: CreateVmArgs | null = null;

/** Where `pyro run` does its work: this process (the default), or the daemon on behalf of a client. */
export interface RunContext {
  io: CliIo;
  /** The SDK object to run with. */
  pyro(): Promise<Pyro>;
}

interface RunOptions {
  vcpuCount?: number;
  memMib?: number;
  diskMib?: number;
  timeoutSeconds?: number;
  network?: boolean;
  driver?: string;
  json?: boolean;
  quiet?: boolean;
}

/**
 * Splits `pyro run [ENV] [flags] -- CMD...`: everything after the first `--`
 * is the command. One word runs through /bin/sh -lc (so `pyro run -- 'ls | wc'`
 * works); several words are an argv run without a shell.
 */
export function splitRunArgv(argv: string[], operands: string[] = [], taken?: string): { command: string | string[] } {
  const dash = argv.indexOf("--");
  // Without --, the operands after the environment are the command (`pyro run busybox echo hi`);
  // flags among them are pyro's, which is why the help says to put the command after --.
  const cmd = dash >= 0 ? argv.slice(dash + 1) : operands;
  if (!cmd.length) {
    throw new PyroError("invalid_argument", `No command given${taken ? ` ("${taken}" was taken as the environment)` : ""}.`, {
      hint: "Put the command after --, e.g. `pyro run busybox -- echo hello` (everything after -- is the command's, flags included).",
    });
  }
  return { command: cmd.length === 1 ? cmd[0]! : cmd };
}

export function registerRun(program: Command, context: RunContext = { io: processIo(), pyro: () => cliPyro() }): void {
  const { io } = context;
  program
    .command("run")
    .summary("run one command in a fresh sandbox, then delete it")
    .description(
      "Run one command in an ephemeral sandbox and delete the sandbox afterwards.\n" +
        "Output streams live; stdin is passed through when it is not a terminal;\n" +
        "pyro exits with the command's exit code (124 on timeout). Ctrl-C kills the\n" +
        "sandbox and cleans up. One word after -- runs through /bin/sh -lc; several\n" +
        "words run as an argv without a shell. Without --, the words after ENV are the\n" +
        "command, but flags among them are read as pyro's own.",
    )
    .argument("[env]", "environment (default debian:12; see `pyro env list`)")
    .argument("[command...]", "the command, after --")
    .option("--vcpu-count <n>", "CPUs the sandbox may use (default 1)", intOption("--vcpu-count"))
    .option("--mem-mib <n>", "memory limit in MiB (default 1024)", intOption("--mem-mib"))
    .option("--disk-mib <n>", "size of the writable layer in MiB (default 2048; a tmpfs: ENOSPC past it)", intOption("--disk-mib"))
    .option("--timeout-seconds <n>", "kill the command's whole tree after this many seconds (default 30)", intOption("--timeout-seconds"))
    .option("--network", "give the sandbox outbound network (default: loopback only)")
    .option("--driver <driver>", "isolation driver: auto, namespace, qemu, firecracker (default auto)")
    .option("--json", "print the whole result as JSON instead of streaming")
    .option("-q, --quiet", "do not print the isolation/exit summary line on stderr")
    .addHelpText(
      "after",
      "\nExamples:\n  pyro run debian:12 -- git --version\n  echo hi | pyro run busybox -- cat\n  pyro run busybox --timeout-seconds 5 -- 'sleep 60'\n  pyro run debian:12 --network -- curl -sI https://deb.debian.org",
    )
    .action(
      action(async (envArg: string | undefined, rest: string[], opts: RunOptions) => {
        const argv = io.argv;
        const dash = argv.indexOf("--");
        // An operand before `--` is the environment; operands after it are the command.
        const beforeDash = dash >= 0 ? argv.slice(0, dash) : argv;
        const environment = envArg && beforeDash.slice(beforeDash.indexOf("run") + 1).includes(envArg) ? envArg : undefined;
        const { command } = splitRunArgv(argv, rest, environment);
        const pyro = await context.pyro();
        const controller = new AbortController();
        let interrupted: NodeJS.Signals | null = null;
        const unsubscribe = io.onInterrupt((sig) => {
          interrupted = sig;
          controller.abort();
        });
        const live = !opts.json;
        const progress = await pullProgress(io.stderr);
        const shape = {
          ...(environment ? { environment } : {}),
          ...(opts.vcpuCount !== undefined ? { vcpu_count: opts.vcpuCount } : {}),
          ...(opts.memMib !== undefined ? { mem_mib: opts.memMib } : {}),
          ...(opts.diskMib !== undefined ? { disk_mib: opts.diskMib } : {}),
          ...(opts.network ? { network: true } : {}),
          ...(opts.driver !== undefined ? { driver: opts.driver as never } : {}),
        };
        try {
          const result = await pyro.runInVm(
            {
              ...shape,
              command,
              ...(opts.timeoutSeconds !== undefined ? { timeout_seconds: opts.timeoutSeconds } : {}),
            },
            {
              stdin: io.stdin(),
              // A slow reader of our output slows the command instead of filling our memory.
              onStdout: live ? (c) => writeOrWait(io.stdout, c) : undefined,
              onStderr: live ? (c) => writeOrWait(io.stderr, c) : undefined,
              onProgress: progress,
              signal: controller.signal,
            },
          );
          lastRunShape = shape;
          // pyro's own line, even with --quiet: without it a command that never started looks like one that printed nothing.
          if (!opts.json && result.exec_error) io.stderr.write(`[pyro] ${result.exec_error} (the command did not start)\n`);
          if (opts.json) emit(result, true, () => "", io.stdout);
          else if (!opts.quiet) {
            const why = result.timed_out ? " (timed out)" : result.oom_killed ? " (killed: memory limit)" : result.signal ? ` (${result.signal})` : "";
            io.stderr.write(`[pyro] exit ${result.exit_code}${why} in ${result.duration_ms} ms; isolation: ${describeIsolation(result.isolation)}${result.limits?.note ? `; limits: ${result.limits.note}` : ""}\n`);
          }
          return result.exit_code;
        } catch (error) {
          if (interrupted) return interrupted === "SIGINT" ? 130 : 143;
          throw error;
        } finally {
          unsubscribe();
          // stdin may hold the caller open after the sandbox is gone.
          io.releaseStdin();
        }
      }, io),
    );
}
