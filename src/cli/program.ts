import { Command } from "commander";
import { VERSION } from "../version.js";
import type { CliIo } from "./io.js";

/** The `pyro` program without its commands, writing help and usage errors to `io`. */
export function newProgram(io: CliIo): Command {
  return new Command("pyro")
    .description(
      "Disposable sandboxes for AI agents.\n\n" +
        "  pyro run busybox -- echo hi        one command, one ephemeral sandbox\n" +
        "  pyro env pull debian:12            build an environment from Debian's archive\n" +
        "  pyro doctor                        what this host can isolate with",
    )
    .version(VERSION, "-V, --version", "print the version")
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput({ writeOut: (s) => void io.stdout.write(s), writeErr: (s) => void io.stderr.write(s) })
    .exitOverride();
}
