import { createServer, type Server, type Socket } from "node:net";
import { PassThrough, Writable } from "node:stream";
import { renameSync, statSync, unlinkSync } from "node:fs";
import { CommanderError } from "commander";
import { Pyro } from "../sdk/pyro.js";
import { removalsDone } from "../runtime/store.js";
import { newProgram } from "../cli/program.js";
import { registerRun } from "../cli/run.js";
import type { CliIo } from "../cli/io.js";
import { EXIT_USAGE } from "../cli/common.js";
import { shapeOf } from "../runtime/pool.js";
import type { CreateVmArgs } from "../runtime/vms.js";
import { BUILD_ID, daemonDir, ensureDaemonDir, socketName, socketPath } from "./paths.js";
import { encodeFrame, Frame, onFrames, parseJson, PROTOCOL_VERSION, type DaemonStatus, type RunRequest } from "./protocol.js";

/**
 * The CLI daemon: a warm pyro process that runs `pyro run` for clients of
 * its own user. A client pays for starting Node and a socket round trip
 * instead of loading the runtime and booting a sandbox: the daemon keeps a
 * warm spare for each shape of run it has seen (runtime/pool.ts). It exits
 * after `idleSeconds` without a request, deleting its spares; every sandbox
 * it started dies with it even on kill -9 (die-with-parent), and any pyro
 * process reaps the records.
 */
export interface DaemonOptions {
  idleSeconds: number;
  /** A run shape to warm at once (the run that started the daemon), as `pyro run` arguments. */
  warm?: CreateVmArgs;
}

/** How long a connection may take to send its request. */
const REQUEST_DEADLINE_MS = 5_000;
const REAP_INTERVAL_MS = 60_000;

export async function serveDaemon(options: DaemonOptions): Promise<void> {
  // Held for the daemon's life: the socket is made, renamed, checked and removed through the very
  // directory that was checked, never by its name again (its parent may be another user's: paths.ts).
  const held = ensureDaemonDir(daemonDir());
  const shownPath = socketPath();
  const path = `${held.via}/${socketName()}`;
  const pyro = new Pyro({ warmPool: true, errorHints: "cli" });
  await pyro.reapExpired().catch(() => undefined);
  const startedAt = new Date().toISOString();
  let requests = 0;
  let active = 0;
  let lastActivity = Date.now();
  let stopping = false;

  const server = createServer({ allowHalfOpen: false }, (socket) => serveConnection(socket));
  await listenInPlace(server, path);
  const inode = statSync(path).ino;
  /** False once our socket file was removed or replaced: no client can reach this daemon any more. */
  const reachable = () => {
    try {
      return statSync(path).ino === inode;
    } catch {
      return false;
    }
  };

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopped: Promise<void> | null = null;
  const shutdown = () => (stopped ??= stop());
  const stop = async () => {
    stopping = true;
    server.close();
    // Runs in progress finish first (each ends by its own timeout at the latest).
    while (active > 0) await new Promise((r) => setTimeout(r, 50));
    clearInterval(timer);
    // Remove the socket file only if it is still ours (a newer daemon may have replaced it).
    if (reachable()) rmSocket(path);
    await pyro.vms.pool?.close();
    await removalsDone();
    resolveDone();
  };
  let lastReap = Date.now();
  const timer = setInterval(() => {
    if (active === 0 && (Date.now() - lastActivity >= options.idleSeconds * 1000 || !reachable())) void shutdown();
    else if (Date.now() - lastReap >= REAP_INTERVAL_MS) {
      lastReap = Date.now();
      void pyro.reapExpired().catch(() => undefined);
    }
  }, 1000);
  process.once("SIGTERM", () => void shutdown());
  process.once("SIGINT", () => void shutdown());
  process.once("SIGHUP", () => void shutdown());

  if (options.warm) pyro.vms.pool?.replenish(shapeOf(options.warm));

  function status(): DaemonStatus {
    return {
      pid: process.pid,
      build: BUILD_ID,
      started_at: startedAt,
      socket: shownPath,
      requests,
      active,
      spares: pyro.vms.pool?.size() ?? 0,
      idle_seconds: options.idleSeconds,
    };
  }

  function serveConnection(socket: Socket): void {
    let io: ConnectionIo | null = null;
    const deadline = setTimeout(() => socket.destroy(), REQUEST_DEADLINE_MS);
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(deadline);
      io?.clientGone();
    });
    // Whatever a peer sends, it can only lose its own connection (and stop its own run).
    onFrames(socket, handleFrame);

    function handleFrame(type: number, payload: Buffer): void {
      if (io) {
        io.onFrame(type, payload);
        return;
      }
      clearTimeout(deadline);
      if (type === Frame.STATUS) {
        socket.end(encodeFrame(Frame.STATUS_REPLY, status()));
      } else if (type === Frame.STOP) {
        // Answer once the spares are gone, so that `pyro daemon stop` returning means nothing is left.
        const reply = status();
        void shutdown().then(() => socket.end(encodeFrame(Frame.STATUS_REPLY, reply)));
      } else if (type === Frame.REQUEST) {
        const refusal = stopping ? "the daemon is stopping" : checkRequest(payload);
        if (refusal) {
          socket.end(encodeFrame(Frame.REFUSE, { reason: refusal }));
          return;
        }
        const request = parseJson<RunRequest>(payload);
        io = new ConnectionIo(socket, request);
        socket.write(encodeFrame(Frame.ACCEPT, { pid: process.pid }));
        requests++;
        active++;
        lastActivity = Date.now();
        void runRequest(io, pyro).finally(() => {
          active--;
          lastActivity = Date.now();
        });
      } else {
        socket.destroy();
      }
    }
  }

  await done;
}

/** Why a request cannot be served here (the client then runs in-process), or null. */
function checkRequest(payload: Buffer): string | null {
  let request: RunRequest;
  try {
    request = parseJson<RunRequest>(payload);
  } catch {
    return "the request is not JSON";
  }
  if (typeof request !== "object" || request === null || Array.isArray(request)) return "the request must be a JSON object";
  if (request.protocol !== PROTOCOL_VERSION) return `protocol ${request.protocol} is not ${PROTOCOL_VERSION}`;
  if (request.build !== BUILD_ID) return `the client's build ${request.build} is not this daemon's ${BUILD_ID}`;
  if (!Array.isArray(request.argv) || request.argv.length > 65_536 || !request.argv.every((a) => typeof a === "string")) return "argv must be an array of strings";
  if (request.argv[0] !== "run") return "only `pyro run` is served by the daemon";
  if (request.stdin !== "pipe" && request.stdin !== "tty") return "stdin must be pipe or tty";
  return null;
}

/** Runs one `pyro run` through the same command definition as the CLI, with the client's stdio. */
async function runRequest(io: ConnectionIo, pyro: Pyro): Promise<void> {
  const program = newProgram(io);
  registerRun(program, { io, pyro: async () => pyro });
  try {
    await program.parseAsync(io.argv.slice(2), { from: "user" });
  } catch (error) {
    if (error instanceof CommanderError) io.setExitCode(error.exitCode === 0 ? 0 : EXIT_USAGE);
    else {
      io.stderr.write(`pyro: internal error in the daemon: ${(error as Error)?.message ?? error}\n`);
      io.setExitCode(125);
    }
  }
  io.finish();
}

/** A client's stdio, exit code and interrupts, carried by frames on its connection. */
class ConnectionIo implements CliIo {
  readonly argv: string[];
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean };
  private readonly input: PassThrough | null;
  private readonly interruptListeners = new Set<(signal: NodeJS.Signals) => void>();
  private exitCode = 0;
  private gone = false;
  private stdinPaused = false;

  constructor(
    private readonly socket: Socket,
    request: RunRequest,
  ) {
    this.argv = ["node", "pyro", ...request.argv];
    this.input = request.stdin === "pipe" ? new PassThrough() : null;
    this.stdout = this.frameWriter(Frame.STDOUT);
    // Progress lines and the summary go through here; it is never a terminal (plain lines, no bar).
    this.stderr = Object.assign(this.frameWriter(Frame.STDERR), { isTTY: false });
  }

  /**
   * A stream whose writes become frames of one type. It reports backpressure
   * (write() false, then "drain") while the client's socket is backed up, so
   * the run holds the command's output instead of buffering it here.
   */
  private frameWriter(type: number): Writable {
    const writer = new Writable({
      highWaterMark: 64 * 1024,
      write: (chunk: Buffer, _encoding, callback) => {
        if (this.gone) return callback();
        let ok = true;
        for (let off = 0; off < chunk.length; off += 256 * 1024) ok = this.socket.write(encodeFrame(type, chunk.subarray(off, off + 256 * 1024)));
        if (ok) callback();
        else this.socket.once("drain", () => callback());
      },
    });
    writer.on("error", () => undefined);
    this.socket.once("close", () => writer.destroy());
    return writer;
  }

  onFrame(type: number, payload: Buffer): void {
    if (type === Frame.STDIN) {
      if (!this.input || this.input.destroyed) return;
      // The command is not reading: ask the client to stop sending until it does.
      if (!this.input.write(payload) && !this.stdinPaused) {
        this.stdinPaused = true;
        this.socket.write(encodeFrame(Frame.STDIN_PAUSE));
        this.input.once("drain", () => {
          this.stdinPaused = false;
          if (!this.gone) this.socket.write(encodeFrame(Frame.STDIN_RESUME));
        });
      }
    } else if (type === Frame.STDIN_END) this.input?.end();
    else if (type === Frame.SIGNAL) {
      const signal = (parseJson<{ signal?: unknown } | null>(payload) ?? {}).signal;
      this.interrupt(signal === "SIGINT" ? "SIGINT" : "SIGTERM");
    } else throw new Error(`unexpected frame type ${type}`);
  }

  /** The client went away (killed, or its connection dropped): stop its command as a kill would. */
  clientGone(): void {
    this.gone = true;
    this.input?.destroy();
    this.interrupt("SIGTERM");
  }

  private interrupt(signal: NodeJS.Signals): void {
    for (const fn of [...this.interruptListeners]) fn(signal);
  }

  stdin() {
    return this.input;
  }
  releaseStdin(): void {
    this.input?.destroy();
  }
  onInterrupt(fn: (signal: NodeJS.Signals) => void): () => void {
    const once = (signal: NodeJS.Signals) => {
      this.interruptListeners.delete(once);
      fn(signal);
    };
    this.interruptListeners.add(once);
    return () => this.interruptListeners.delete(once);
  }
  setExitCode(code: number): void {
    this.exitCode = code;
  }
  /** Sends EXIT once everything written before it has gone out, in order. */
  finish(): void {
    let pending = 2;
    const done = () => {
      if (--pending === 0 && !this.gone) this.socket.end(encodeFrame(Frame.EXIT, { code: this.exitCode }));
    };
    this.stdout.end(done);
    this.stderr.end(done);
  }
}

/**
 * Listens on a temporary name and renames the socket into place: atomic, so
 * racing daemons never unlink each other's sockets. The last one to rename
 * is the one clients reach; the others see their socket replaced and exit
 * once idle.
 */
async function listenInPlace(server: Server, path: string): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  rmSocket(temporary);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(temporary, () => {
      server.off("error", reject);
      resolve();
    });
  });
  renameSync(temporary, path);
}

function rmSocket(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* already gone */
  }
}
