#!/usr/bin/env node
/**
 * The `pyro` executable (built as dist/pyro.cjs: CommonJS, one file, because
 * a Node process reaches CommonJS code sooner than the ES module loader).
 *
 * `pyro run` first tries the warm daemon of this user (src/daemon): a client
 * that loads almost nothing and hands its arguments and stdio over a socket.
 * Everything else, and `pyro run` when no daemon takes it, loads the whole
 * CLI (main.ts, dist/cli.js); such a run then starts the daemon in the
 * background for the next one.
 */
import { daemonEnabled } from "../daemon/paths.js";
import { runThroughDaemon } from "../daemon/client.js";

declare const __PYRO_FULL_CLI__: string | undefined;
/** The whole CLI: dist/cli.js next to this bundle, or main.ts when run from source. */
const FULL_CLI = typeof __PYRO_FULL_CLI__ === "string" ? __PYRO_FULL_CLI__ : "./main.js";

async function start(): Promise<void> {
  const args = process.argv.slice(2);
  const viaDaemon = args[0] === "run" && daemonEnabled();
  if (viaDaemon) {
    const code = await runThroughDaemon(args);
    if (code !== null) {
      process.exitCode = code;
      return;
    }
  }
  const cli = (await import(FULL_CLI)) as typeof import("./main.js");
  // Warm the next run, unless this one was interrupted or pyro itself failed.
  const code = Number(process.exitCode ?? 0);
  if (viaDaemon && ![2, 125, 130, 143].includes(code)) await cli.startDaemonAfterRun();
}

void start();
