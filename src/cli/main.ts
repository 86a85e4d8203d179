/**
 * The `pyro` command. Every command group lives in its own module and loads
 * what it needs lazily in its action, so `pyro --help` and `pyro run` do not
 * pay for the MCP SDK, archive code or environment builders.
 */
import { CommanderError } from "commander";
import { EXIT_USAGE } from "./common.js";
import { processIo } from "./io.js";
import { newProgram } from "./program.js";
import { registerEnv } from "./env.js";
import { registerDoctor } from "./doctor.js";
import { registerRun } from "./run.js";
import { registerVm } from "./vm.js";
import { registerTask } from "./task.js";
import { registerMcp } from "./mcp.js";
import { registerHost } from "./host.js";
import { registerDemo } from "./demo.js";
import { registerDaemon } from "./daemon.js";

const program = newProgram(processIo());

/** After an in-process `pyro run`: starts the daemon in the background for the next one (entry.ts). */
export async function startDaemonAfterRun(): Promise<void> {
  const { startDaemonInBackground } = await import("./daemon.js");
  startDaemonInBackground();
}

// A reader that goes away (`pyro env list | head`) is not a crash: stop as a
// terminated process would, through the commands' own cleanup (a running
// sandbox is removed), instead of an unhandled EPIPE.
let stdoutGone = false;
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code !== "EPIPE") throw error;
  // Every later write fails too: signal once, and let the cleanup finish.
  if (!stdoutGone) process.kill(process.pid, "SIGTERM");
  stdoutGone = true;
});

registerDoctor(program);
registerEnv(program);
registerRun(program);
registerVm(program);
registerTask(program);
registerMcp(program);
registerHost(program);
registerDemo(program);
registerDaemon(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // help and version requests exit 0; usage mistakes exit 2 (the message is already printed).
    process.exitCode = error.exitCode === 0 ? 0 : EXIT_USAGE;
  } else {
    throw error;
  }
}
