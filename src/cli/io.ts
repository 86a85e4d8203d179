import type { Readable, Writable } from "node:stream";

/**
 * What a command talks to: the process itself (`processIo`), or a client of
 * the daemon whose stdio, exit code and Ctrl-C travel over a socket
 * (src/daemon). Commands that can run in the daemon use this instead of
 * `process` directly, so that one implementation serves both.
 */
export interface CliIo {
  /** The command line as process.argv has it: [node, script, ...arguments]. */
  readonly argv: string[];
  /** The caller's stdin to pass through, or null when it is a terminal. */
  stdin(): Readable | null;
  /** Stops reading stdin, so that it does not hold the caller open once the command is done. */
  releaseStdin(): void;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean };
  /** Calls `fn` when the caller is interrupted (Ctrl-C: SIGINT; kill or a reader gone: SIGTERM). Returns the unsubscribe. */
  onInterrupt(fn: (signal: NodeJS.Signals) => void): () => void;
  setExitCode(code: number): void;
}

/** The io of this process. */
export function processIo(): CliIo {
  return {
    argv: process.argv,
    stdin: () => (process.stdin.isTTY ? null : process.stdin),
    releaseStdin: () => {
      if (!process.stdin.isTTY) process.stdin.destroy();
    },
    stdout: process.stdout,
    stderr: process.stderr,
    onInterrupt(fn) {
      process.once("SIGINT", fn);
      process.once("SIGTERM", fn);
      return () => {
        process.off("SIGINT", fn);
        process.off("SIGTERM", fn);
      };
    },
    setExitCode: (code) => {
      process.exitCode = code;
    },
  };
}

/**
 * Writes a chunk; when the stream is backed up, returns a Promise that
 * settles once it drains (or closes or fails: a reader that went away must
 * not hold the command forever).
 */
export function writeOrWait(stream: NodeJS.WritableStream, chunk: Uint8Array): void | Promise<void> {
  // A stream destroyed earlier (the daemon's client went away) emits nothing again: waiting for
  // its drain or close would hold the command, and the run, forever. Its output is dropped.
  if (gone(stream)) return;
  if (stream.write(chunk)) return;
  if (gone(stream)) return;
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      stream.off("error", done);
      resolve();
    };
    stream.once("drain", done);
    stream.once("close", done);
    stream.once("error", done);
  });
}

function gone(stream: NodeJS.WritableStream): boolean {
  const w = stream as Partial<Pick<Writable, "destroyed" | "writableEnded">>;
  return w.destroyed === true || w.writableEnded === true;
}
