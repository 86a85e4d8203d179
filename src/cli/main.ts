#!/usr/bin/env node
/**
 * The `pyro` command. Every command group lives in its own module and loads
 * what it needs lazily in its action, so `pyro --help` and `pyro run` do not
 * pay for the MCP SDK, archive code or environment builders.
 */
import { Command, CommanderError } from "commander";
import { VERSION } from "../version.js";
import { EXIT_USAGE } from "./common.js";
import { registerEnv } from "./env.js";
import { registerDoctor } from "./doctor.js";
import { registerRun } from "./run.js";
import { registerVm } from "./vm.js";
import { registerTask } from "./task.js";
import { registerMcp } from "./mcp.js";
import { registerHost } from "./host.js";
import { registerDemo } from "./demo.js";

const program = new Command("pyro")
  .description(
    "Disposable sandboxes for AI agents.\n\n" +
      "  pyro run busybox -- echo hi        one command, one ephemeral sandbox\n" +
      "  pyro env pull debian:12            build an environment from Debian's archive\n" +
      "  pyro doctor                        what this host can isolate with",
  )
  .version(VERSION, "-V, --version", "print the version")
  .showHelpAfterError("(run with --help for usage)")
  .exitOverride();

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
