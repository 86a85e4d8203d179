import { closeSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { BUILD_ID, daemonDir, holdDaemonDir, socketName, socketPath } from "./paths.js";
import { writeOrWait } from "../cli/io.js";
import { PyroError } from "../core/errors.js";
import { encodeFrame, Frame, onFrames, parseJson, PROTOCOL_VERSION, type DaemonStatus, type RunRequest } from "./protocol.js";

/**
 * How long a daemon may take to accept a run before the client gives up on
 * it and runs in-process (nothing is consumed before the accept). A daemon
 * answers at once unless it is wedged; one that holds its socket open and
 * never answers must not hang every `pyro run` of its user.
 */
const ACCEPT_DEADLINE_MS = 10_000;
/** How long `pyro daemon status` (and the status a stop asks first) waits for an answer. */
const STATUS_DEADLINE_MS = 10_000;

/**
 * The client side of the CLI daemon: `pyro run` hands its arguments and
 * stdio to a warm daemon of the same user, build and configuration.
 *
 * Returns the exit code, or null when no daemon took the request (none
 * running, a directory that cannot be trusted, a refusal): the caller then
 * runs in-process, with nothing consumed (stdin is only read after the daemon
 * accepted).
 */
export async function runThroughDaemon(args: string[]): Promise<number | null> {
  const socket = await connectToDaemon();
  if (!socket) return null;
  const stdinIsTTY = Boolean(process.stdin.isTTY);
  const request: RunRequest = { protocol: PROTOCOL_VERSION, build: BUILD_ID, argv: args, stdin: stdinIsTTY ? "tty" : "pipe" };
  socket.write(encodeFrame(Frame.REQUEST, request));

  return new Promise<number | null>((resolve) => {
    let accepted = false;
    const stdinFlow: StdinFlow = { paused: false, socketFull: false };
    let exitCode: number | null = null;
    let signals = 0;
    const forward = (signal: NodeJS.Signals) => {
      signals++;
      // A second Ctrl-C does not wait: dropping the connection makes the daemon kill the sandbox.
      if (signals > 1) {
        exitCode = signal === "SIGINT" ? 130 : 143;
        socket.destroy();
        return;
      }
      socket.write(encodeFrame(Frame.SIGNAL, { signal }));
    };
    let stdoutGone = false;
    let waitingForDrain = false;
    const onStdoutError = (error: NodeJS.ErrnoException) => {
      if (error.code !== "EPIPE" || stdoutGone) return;
      // A reader that went away (`pyro run ... | head`): stop the command as SIGTERM would,
      // drop the rest of its output, and keep reading until the daemon reports the exit
      // (the pending write's wait settles on the error, which resumes the socket).
      stdoutGone = true;
      forward("SIGTERM");
    };
    const finish = (code: number | null) => {
      process.off("SIGINT", forward);
      process.off("SIGTERM", forward);
      // Only a served run consumed stdin; a refused one leaves it whole for the in-process run.
      if (accepted && !stdinIsTTY) process.stdin.destroy();
      resolve(code);
    };

    const acceptDeadline = setTimeout(() => {
      process.stderr.write(`pyro: the daemon did not answer within ${ACCEPT_DEADLINE_MS / 1000} s; running in-process (\`pyro daemon stop\`, or PYRO_DAEMON=0)\n`);
      socket.destroy();
    }, ACCEPT_DEADLINE_MS);
    onFrames(socket, (type, payload) => {
      if (!accepted) {
        clearTimeout(acceptDeadline);
        // Anything but ACCEPT (a REFUSE) closes the connection; the close falls back in-process.
        if (type !== Frame.ACCEPT) return void socket.destroy();
        accepted = true;
        process.on("SIGINT", forward);
        process.on("SIGTERM", forward);
        process.stdout.on("error", onStdoutError);
        if (!stdinIsTTY) pipeStdin(socket, stdinFlow);
        return;
      }
      if (type === Frame.STDOUT) {
        if (stdoutGone) return;
        // Backpressure: a slow reader of our stdout slows the daemon's writes to us.
        const wait = writeOrWait(process.stdout, payload);
        if (wait && !waitingForDrain) {
          waitingForDrain = true;
          socket.pause();
          void wait.then(() => {
            waitingForDrain = false;
            socket.resume();
          });
        }
      } else if (type === Frame.STDERR) {
        process.stderr.write(payload);
      } else if (type === Frame.STDIN_PAUSE) {
        stdinFlow.paused = true;
        process.stdin.pause();
      } else if (type === Frame.STDIN_RESUME) {
        stdinFlow.paused = false;
        if (!stdinFlow.socketFull) process.stdin.resume();
      } else if (type === Frame.EXIT) {
        exitCode = parseJson<{ code: number }>(payload).code;
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(acceptDeadline);
      if (!accepted) return finish(null);
      if (exitCode === null) {
        process.stderr.write("pyro: the daemon went away before the command finished; run it again (PYRO_DAEMON=0 runs without the daemon)\n");
        exitCode = 125;
      }
      finish(exitCode);
    });
  });
}

/** Why stdin is paused: the daemon asked (the command is not reading), or our socket is backed up. */
interface StdinFlow {
  paused: boolean;
  socketFull: boolean;
}

function pipeStdin(socket: Socket, flow: StdinFlow): void {
  process.stdin.on("data", (chunk: Buffer) => {
    if (!socket.write(encodeFrame(Frame.STDIN, chunk))) {
      flow.socketFull = true;
      socket.once("drain", () => {
        flow.socketFull = false;
        if (!flow.paused) process.stdin.resume();
      });
    }
    if (flow.paused || flow.socketFull) process.stdin.pause();
  });
  process.stdin.on("end", () => socket.write(encodeFrame(Frame.STDIN_END)));
  process.stdin.on("error", () => socket.write(encodeFrame(Frame.STDIN_END)));
}

/**
 * Connects to the daemon's socket through the directory it checked, held
 * open (paths.ts, holdDaemonDir): never by the directory's name a second
 * time. Null when the directory cannot be trusted or nothing listens.
 */
function connectToDaemon(): Promise<Socket | null> {
  const held = holdDaemonDir(daemonDir());
  if (typeof held === "string") return Promise.resolve(null);
  return new Promise((resolve) => {
    const socket = connect(`${held.via}/${socketName()}`);
    // connect(2) has resolved the path once it answers either way.
    const release = () => closeSync(held.fd);
    socket.once("connect", () => {
      release();
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", () => {
      release();
      resolve(null);
    });
  });
}

/** Asks the daemon for its status, or to stop (answered once it has); null when none is running. */
export async function askDaemon(request: "status" | "stop"): Promise<DaemonStatus | null> {
  // A stop is answered only once the runs in progress end; a daemon that answers no status is wedged, and
  // waiting for its stop would be forever: it must answer a status first (which throws when it does not).
  if (request === "stop" && (await askDaemon("status")) === null) return null;
  const socket = await connectToDaemon();
  if (!socket) return null;
  socket.write(encodeFrame(request === "status" ? Frame.STATUS : Frame.STOP));
  return new Promise((resolve, reject) => {
    let reply: DaemonStatus | null = null;
    // A status is answered at once by a daemon that is not wedged (a stop waits for the runs in progress, by design).
    const deadline =
      request === "status"
        ? setTimeout(() => {
            socket.destroy();
            reject(new PyroError("busy", `The daemon at ${socketPath()} did not answer a status request within ${STATUS_DEADLINE_MS / 1000} s.`, { hint: "Stop it with `kill` (its pid is in `ps`), or set PYRO_DAEMON=0 to run without it." }));
          }, STATUS_DEADLINE_MS)
        : undefined;
    onFrames(socket, (type, payload) => {
      if (type === Frame.STATUS_REPLY) reply = parseJson<DaemonStatus>(payload);
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(deadline);
      resolve(reply);
    });
  });
}
