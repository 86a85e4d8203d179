/**
 * The host end of the pyro-agent protocol (docs/protocol.md) over one byte
 * stream: a handshake, any number of concurrent processes (channels), flow
 * control in both directions, and the defences the host owes itself against
 * an untrusted agent:
 *
 * - every wait has a deadline (HELLO: 10 s; an exec: its timeout + grace);
 * - nothing is buffered without a bound: the decoder holds at most one
 *   frame, a channel holds at most the window it granted, and stdin is only
 *   written while the agent has credit and the socket is draining;
 * - anything outside the protocol (a decode error, data past the window, a
 *   frame for an unknown channel, a second EXIT) fails every pending call
 *   with PyroError("agent_protocol") and destroys the connection.
 *
 * A command that exits non-zero is data (ExecResult), never an error.
 */
import { connectUnixNoFollow } from "../util/unix-socket.js";
import { randomBytes } from "node:crypto";
import type { Duplex, Readable } from "node:stream";
import { PyroError } from "../core/errors.js";
import { VERSION } from "../version.js";
import {
  type AgentMessage,
  type HelloAckPayload,
  ExitFlags,
  ExitKind,
  FrameDecoder,
  MAX_CHANNELS,
  MAX_INITIAL_WINDOW,
  MAX_PAYLOAD,
  MAX_SIGNO,
  MsgType,
  OpenFlags,
  PROTOCOL_VERSION,
  SyncedFlags,
  decodeAgentMessage,
  type KeptEntry,
  encodeAttach,
  encodeFrame,
  encodeHello,
  encodeOpen,
  encodeResize,
  encodeSync,
  encodeU32,
} from "./codec.js";

/** How long the agent has to answer HELLO (docs/protocol.md). */
export const HELLO_TIMEOUT_MS = 10_000;
/** Added to an exec's own timeout for the host-side hard deadline when the caller gives none. */
export const DEFAULT_GRACE_MS = 5_000;
/** Payloads from this size on are written without being copied into a frame buffer. */
const LARGE_PAYLOAD = 16 * 1024;
/** Stdin is written only while the socket's own queue is below this. */
const SOCKET_HIGH_WATER = 1024 * 1024;

export interface ConnectOptions {
  /** Deadline for the connection itself (default 5000 ms). The handshake has its own 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What the caller consumes output with. A callback may return a Promise to pause that channel. */
export type OutputCallback = (chunk: Buffer) => void | Promise<void>;

export interface ExecSpec {
  argv: string[];
  env: Record<string, string>;
  /** Working directory in the sandbox; "" means "/". */
  cwd: string;
  /** Enforced by the agent: the tree is killed and the result says timed_out. 0 = none. */
  timeoutMs: number;
  /**
   * Host-side hard deadline: if the agent has not reported the end by then,
   * the result rejects with sandbox_failed and the connection is destroyed.
   * Default: timeoutMs + 5000 when timeoutMs > 0, else none.
   */
  hostDeadlineMs?: number;
  /**
   * A Buffer or a Readable is written to the process's stdin (with
   * backpressure) and then closed; "pipe" gives a stdin written with
   * writeStdin()/endStdin(); null or absent means /dev/null.
   */
  stdin?: Buffer | Readable | "pipe" | null;
  /**
   * Called synchronously for each chunk, in order. Returning a Promise pauses
   * this channel's delivery (later chunks wait, bounded by the window) until
   * it settles: the agent then gets credit for the bytes only after they
   * were consumed, so a slow consumer slows the process, never our memory.
   * A callback that throws (or rejects) kills the process; the result then
   * rejects with that error.
   */
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  /** Abort = KILL for the channel; the result then resolves with killed: true. */
  signal?: AbortSignal;
  /**
   * Run on a terminal of this size (OPEN flag PTY, then RESIZE): stdin, stdout
   * and stderr are one PTY, so every output byte arrives as stdout, and stdin
   * behaves as with "pipe" (writeStdin) unless a Buffer or Readable is given.
   */
  pty?: { rows: number; cols: number };
  /**
   * Keep the process when this connection closes (OPEN flag KEEP): it
   * belongs to the sandbox, under this key, until it is attached again
   * (attach()) and ends. docs/protocol.md, "Kept channels".
   */
  keep?: string;
}

/** What attach() takes: the output callbacks of an exec, and whether the process has a terminal. */
export interface AttachSpec {
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  /** The kept process runs on a PTY: resize() is allowed. */
  pty?: boolean;
  signal?: AbortSignal;
}

/**
 * The result of a kept exec rejects with this code's error when the agent
 * detached it from this connection: another connection attached it (a
 * takeover) or detach() was called. details.detached is true.
 */
export function isDetachedError(e: unknown): boolean {
  return e instanceof PyroError && (e.details as { detached?: boolean } | undefined)?.detached === true;
}

export type ExecResult =
  | { kind: "exited" | "signaled"; value: number; timed_out: boolean; killed: boolean; oom?: boolean }
  | { kind: "open_failed"; errno: number; message: string };

export interface ExecHandle {
  /** The channel id on this connection (0 while queued behind the 64-channel limit). */
  readonly channel: number;
  /** The process id in the sandbox, once OPENED arrived. */
  readonly pid: number | null;
  /** Resolves with the pid at OPENED, or null if the process never started. Never rejects. */
  readonly opened: Promise<number | null>;
  /** Resolves once EXIT (or OPEN_FAILED) arrived and every output chunk was delivered. */
  readonly result: Promise<ExecResult>;
  /** Output bytes received but not yet handed to the callbacks (at most the window). */
  readonly queuedBytes: number;
  /** Kills the whole process tree (KILL). */
  kill(): void;
  /** Sends a signal to the main process. */
  sendSignal(signo: number): void;
  /** Writes to stdin (stdin: "pipe"), waiting for the agent's credit. */
  writeStdin(data: Buffer): Promise<void>;
  /** Closes stdin after everything written so far. */
  endStdin(): void;
  /** Sets the terminal's size (an exec with `pty` only); the agent's kernel sends SIGWINCH. */
  resize(rows: number, cols: number): void;
  /** attach(): bytes the agent's ring dropped while the process was detached (ATTACHED); else 0. */
  readonly droppedBytes: number;
  /** attach(): the process had already exited when it was attached (its EXIT follows the ring). */
  readonly exitedBeforeAttach: boolean;
  /** A kept exec or attach(): detaches it (DETACH); the result then rejects with a detached error (isDetachedError). */
  detach(): void;
}

export type HelloInfo = HelloAckPayload;

/** What the agent did with a SYNC: a VM's agent sets both; a namespace sandbox's, neither. */
export interface SyncResult {
  clock: boolean;
  rng: boolean;
}

export interface SyncOptions {
  /** Default 10 s; then the connection fails with sandbox_failed. */
  timeoutMs?: number;
  /** Default: this host's clock now. */
  unixTimeNs?: bigint;
  /** Default: 32 fresh bytes from the host's CSPRNG. */
  seed?: Buffer;
}

interface Pending<T> {
  resolve(value: T): void;
  reject(error: PyroError): void;
  timer: NodeJS.Timeout | undefined;
}

function protocolError(message: string): PyroError {
  return new PyroError("agent_protocol", `guest agent protocol error: ${message}`, {
    hint: "The sandbox's agent sent something it must not; the sandbox was stopped. Recreate it.",
  });
}

/** An AgentClient speaks to one pyro-agent over one stream. */
export class AgentClient {
  private readonly decoder = new FrameDecoder("from_agent");
  private failure: PyroError | null = null;
  private helloInfo: HelloInfo | null = null;
  private helloPending: Pending<HelloInfo> | null = null;
  private helloPromise: Promise<HelloInfo> | null = null;
  private readonly active = new Map<number, Channel>();
  private readonly waiting: Channel[] = [];
  private readonly pings = new Map<string, Pending<void>>();
  /** SYNCs in flight: the agent answers them in order. */
  private readonly syncs: Array<Pending<SyncResult>> = [];
  private drainWaiters: Array<() => void> = [];
  private nextChannel = 1;
  private closeWaiters: Array<() => void> = [];
  private socketClosed = false;
  /** After SHUTDOWN, frames still in flight (output of killed processes) are ignored. */
  private shuttingDown = false;

  private constructor(private readonly stream: Duplex) {
    stream.on("data", (chunk: Buffer) => this.onData(chunk));
    stream.on("drain", () => this.wakeDrain());
    stream.on("end", () => this.onEnd());
    stream.on("error", (error: Error) =>
      this.fail(new PyroError("sandbox_failed", `connection to the guest agent failed: ${error.message}`, { cause: error })),
    );
    stream.on("close", () => {
      this.socketClosed = true;
      this.fail(new PyroError("sandbox_failed", "the guest agent closed the connection"));
      for (const w of this.closeWaiters.splice(0)) w();
    });
  }

  /**
   * Connects to an agent's unix socket and performs the handshake.
   * Rejects with sandbox_failed when the socket cannot be reached or the
   * agent does not answer HELLO within 10 s, agent_protocol when it answers
   * wrongly, cancelled on abort.
   */
  static async connect(socketPath: string, options: ConnectOptions = {}): Promise<AgentClient> {
    const timeoutMs = options.timeoutMs ?? 5000;
    const signal = options.signal;
    if (signal?.aborted) throw new PyroError("cancelled", "The operation was cancelled.");
    // Never through a symlink: the socket's directory belongs to the sandbox's uid (util/unix-socket.ts).
    const socket = connectUnixNoFollow(socketPath);
    await new Promise<void>((resolve, reject) => {
      const done = (error?: PyroError) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        socket.off("connect", onConnect);
        socket.off("error", onError);
        if (error) {
          socket.destroy();
          reject(error);
        } else resolve();
      };
      const onConnect = () => done();
      const onError = (error: Error) =>
        done(
          new PyroError("sandbox_failed", `cannot connect to the guest agent at ${socketPath}: ${error.message}`, {
            cause: error,
            hint: "The sandbox may have stopped; check its status.",
          }),
        );
      const onAbort = () => done(new PyroError("cancelled", "The operation was cancelled."));
      const timer = setTimeout(
        () => done(new PyroError("sandbox_failed", `connecting to the guest agent at ${socketPath} took over ${timeoutMs} ms`)),
        timeoutMs,
      );
      socket.once("connect", onConnect);
      socket.once("error", onError);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    const client = new AgentClient(socket);
    try {
      await client.hello({ signal });
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /** Wraps an already-connected stream (a socketpair end, a serial port). Call hello() next. */
  static fromStream(stream: Duplex): AgentClient {
    return new AgentClient(stream);
  }

  /** True once the connection failed or was closed; every call then rejects. */
  get closed(): boolean {
    return this.failure !== null;
  }

  /** The agent's HELLO_ACK, once the handshake is done. */
  get agent(): HelloInfo | null {
    return this.helloInfo;
  }

  /** The handshake; idempotent. Rejects after timeoutMs (default 10 s) with sandbox_failed. */
  hello(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<HelloInfo> {
    if (this.helloPromise) return this.helloPromise;
    const timeoutMs = options.timeoutMs ?? HELLO_TIMEOUT_MS;
    this.helloPromise = new Promise<HelloInfo>((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      const onAbort = () => this.fail(new PyroError("cancelled", "The operation was cancelled."));
      const cleanup = () => {
        clearTimeout(pending.timer);
        options.signal?.removeEventListener("abort", onAbort);
        this.helloPending = null;
      };
      const pending: Pending<HelloInfo> = {
        resolve: (v) => {
          cleanup();
          resolve(v);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
        timer: setTimeout(
          () =>
            this.fail(
              new PyroError("sandbox_failed", `the guest agent did not answer HELLO within ${timeoutMs} ms`, {
                hint: "The sandbox may be hung or not running pyro-agent; stop it and try again.",
              }),
            ),
          timeoutMs,
        ),
      };
      this.helloPending = pending;
      options.signal?.addEventListener("abort", onAbort, { once: true });
      this.send(
        MsgType.HELLO,
        0,
        encodeHello({ min_version: PROTOCOL_VERSION, max_version: PROTOCOL_VERSION, client: `pyro-mcp ${VERSION}` }),
      );
    });
    return this.helloPromise;
  }

  /**
   * Starts a process. Invalid arguments throw here (invalid_argument, or
   * limit_exceeded for a command line over 64 KiB); everything later is in
   * the handle's result. More than 64 concurrent execs wait for a channel.
   */
  exec(spec: ExecSpec): ExecHandle {
    const env = Object.entries(spec.env).map(([k, v]) => {
      if (k.length === 0 || k.includes("=") || k.includes("\0")) {
        throw new PyroError("invalid_argument", `invalid environment variable name ${JSON.stringify(k)}`);
      }
      return `${k}=${v}`;
    });
    const hasStdin = (spec.stdin !== undefined && spec.stdin !== null) || spec.pty !== undefined;
    const resize = spec.pty ? encodeResize(spec.pty.rows, spec.pty.cols) : null;
    if (!Number.isInteger(spec.timeoutMs) || spec.timeoutMs < 0 || spec.timeoutMs > 0xffffffff) {
      throw new PyroError("invalid_argument", `timeoutMs must be an integer in [0, 2^32), got ${spec.timeoutMs}`);
    }
    const open = encodeOpen({
      flags: (hasStdin ? OpenFlags.STDIN_PIPE : 0) | (resize ? OpenFlags.PTY : 0) | (spec.keep !== undefined ? OpenFlags.KEEP : 0),
      timeout_ms: spec.timeoutMs,
      argv: spec.argv,
      env,
      cwd: spec.cwd,
      ...(spec.keep !== undefined ? { key: spec.keep } : {}),
    });
    const hard = spec.hostDeadlineMs ?? (spec.timeoutMs > 0 ? spec.timeoutMs + DEFAULT_GRACE_MS : undefined);
    const ch = new Channel(this, spec, open, hasStdin, hard, resize, spec.keep !== undefined ? "open_kept" : "open");
    return this.enqueue(ch, "exec()");
  }

  /**
   * Takes over the kept process with this key (ATTACH): from a detached
   * one, or from the connection that holds it (that one's result then
   * rejects with a detached error). `opened` resolves with its pid at
   * ATTACHED (null for ENOENT: no such key; the result says open_failed
   * with that errno); `droppedBytes` says what its ring lost meanwhile; its
   * ring comes first through the callbacks, then live output, then EXIT.
   */
  attach(key: string, spec: AttachSpec = {}): ExecHandle {
    const payload = encodeAttach(key);
    const execSpec: ExecSpec = { argv: [`(kept process ${key})`], env: {}, cwd: "", timeoutMs: 0, stdin: "pipe", onStdout: spec.onStdout, onStderr: spec.onStderr, signal: spec.signal };
    const ch = new Channel(this, execSpec, payload, true, undefined, spec.pty ? encodeResize(24, 80) : null, "attach");
    return this.enqueue(ch, "attach()");
  }

  /** The agent's kept processes (LIST -> KEPT). Rejects with sandbox_failed after timeoutMs (the connection is then destroyed). */
  async listKept(timeoutMs = HELLO_TIMEOUT_MS): Promise<KeptEntry[]> {
    const spec: ExecSpec = { argv: ["(list of kept processes)"], env: {}, cwd: "", timeoutMs: 0 };
    const ch = new Channel(this, spec, Buffer.alloc(0), false, timeoutMs, null, "list");
    this.enqueue(ch, "listKept()");
    await ch.result;
    return ch.keptEntries;
  }

  private enqueue(ch: Channel, what: string): Channel {
    if (this.failure) ch.fail(this.failure);
    else if (!this.helloInfo) ch.fail(new PyroError("invalid_state", `${what} before the agent handshake (hello())`));
    else if (this.active.size < MAX_CHANNELS) this.start(ch);
    else this.waiting.push(ch);
    ch.watchAbort();
    return ch;
  }

  /** Round trip to the agent; rejects with sandbox_failed after timeoutMs. */
  ping(timeoutMs = HELLO_TIMEOUT_MS): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      const data = randomBytes(8);
      const key = data.toString("hex");
      const pending: Pending<void> = {
        resolve: () => {
          clearTimeout(pending.timer);
          this.pings.delete(key);
          resolve();
        },
        reject: (e) => {
          clearTimeout(pending.timer);
          this.pings.delete(key);
          reject(e);
        },
        timer: setTimeout(
          () => this.fail(new PyroError("sandbox_failed", `the guest agent did not answer PING within ${timeoutMs} ms`)),
          timeoutMs,
        ),
      };
      this.pings.set(key, pending);
      this.send(MsgType.PING, 0, data);
    });
  }

  /**
   * Hands the agent the host's wall clock and fresh entropy (SYNC). A VM's
   * agent sets its clock and reseeds its RNG; send it after every boot and
   * every snapshot restore, before anything runs, so no two restored VMs
   * share an RNG state. Elsewhere the agent answers { clock: false, rng:
   * false }. Rejects with sandbox_failed after timeoutMs (the connection
   * is then destroyed), invalid_argument for a bad seed.
   */
  sync(options: SyncOptions = {}): Promise<SyncResult> {
    const timeoutMs = options.timeoutMs ?? HELLO_TIMEOUT_MS;
    const unixTimeNs = options.unixTimeNs ?? BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
    const payload = encodeSync({ unix_time_ns: unixTimeNs, seed: options.seed ?? randomBytes(32) });
    return new Promise<SyncResult>((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      if (!this.helloInfo) return reject(new PyroError("invalid_state", "sync() before the agent handshake (hello())"));
      const pending: Pending<SyncResult> = {
        resolve: (v) => {
          clearTimeout(pending.timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(pending.timer);
          reject(e);
        },
        timer: setTimeout(
          () => this.fail(new PyroError("sandbox_failed", `the guest agent did not answer SYNC within ${timeoutMs} ms`)),
          timeoutMs,
        ),
      };
      this.syncs.push(pending);
      this.send(MsgType.SYNC, 0, payload);
    });
  }

  /**
   * Asks the agent to kill everything and exit (SHUTDOWN), then waits up to
   * timeoutMs for it to close the connection. Pending execs reject with
   * cancelled.
   */
  async shutdown(timeoutMs = 5000): Promise<void> {
    if (!this.failure) {
      this.send(MsgType.SHUTDOWN, 0);
      this.shuttingDown = true;
      this.failPending(new PyroError("cancelled", "the sandbox is shutting down"));
    }
    if (!this.socketClosed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.closeWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    this.close();
  }

  /** Closes the connection: the agent kills every process of this connection. */
  close(): void {
    this.fail(new PyroError("cancelled", "the connection to the guest agent was closed"));
  }

  // ------------------------------------------------------------ internals

  /** @internal */
  send(type: number, channel: number, payload?: Buffer): boolean {
    if (this.failure) return false;
    if (payload && payload.length >= LARGE_PAYLOAD) {
      // Header and payload go out in one writev without copying the payload
      // into a fresh frame buffer (stdin transfers are mostly such frames).
      const frame = encodeFrame(type, channel, payload.subarray(0, 0));
      frame.writeUInt32LE(payload.length, 8);
      this.stream.cork();
      this.stream.write(frame);
      this.stream.write(payload);
      process.nextTick(() => this.stream.uncork());
      return true;
    }
    this.stream.write(encodeFrame(type, channel, payload));
    return true;
  }

  /** @internal Resolves when the stream's write queue is under the high-water mark (or the client failed). */
  waitWritable(): Promise<void> {
    if (this.failure || this.stream.writableLength < SOCKET_HIGH_WATER) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** @internal */
  get initialWindow(): number {
    return this.helloInfo?.initial_window ?? 0;
  }

  /** @internal */
  get maxPayload(): number {
    return this.helloInfo?.max_payload ?? MAX_PAYLOAD;
  }

  /** @internal Called by a channel once EXIT or OPEN_FAILED arrived: frees its id and starts a waiting exec. */
  release(ch: Channel): void {
    if (this.active.get(ch.channel) === ch) this.active.delete(ch.channel);
    while (!this.failure && this.active.size < MAX_CHANNELS && this.waiting.length > 0) {
      this.start(this.waiting.shift()!);
    }
  }

  /** @internal A queued exec that was aborted before it got a channel. */
  unqueue(ch: Channel): void {
    const i = this.waiting.indexOf(ch);
    if (i >= 0) this.waiting.splice(i, 1);
  }

  /**
   * @internal Fails the whole connection: every pending call rejects with
   * error and the stream is destroyed (the agent then kills our processes).
   */
  fail(error: PyroError): void {
    if (this.failure) return;
    this.failure = error;
    this.stream.destroy();
    this.failPending(error);
    this.wakeDrain();
  }

  private failPending(error: PyroError): void {
    this.helloPending?.reject(error);
    for (const p of [...this.pings.values()]) p.reject(error);
    for (const p of this.syncs.splice(0)) p.reject(error);
    for (const ch of [...this.active.values(), ...this.waiting.splice(0)]) ch.fail(error);
    this.active.clear();
  }

  private wakeDrain(): void {
    for (const w of this.drainWaiters.splice(0)) w();
  }

  private start(ch: Channel): void {
    let id = this.nextChannel;
    while (id === 0 || this.active.has(id)) id = id >= 0xffffffff ? 1 : id + 1;
    this.nextChannel = id >= 0xffffffff ? 1 : id + 1;
    this.active.set(id, ch);
    ch.start(id);
  }

  private onData(chunk: Buffer): void {
    if (this.failure || this.shuttingDown) return;
    try {
      for (const frame of this.decoder.push(chunk)) {
        this.onMessage(decodeAgentMessage(frame));
        if (this.failure) return;
      }
    } catch (error) {
      this.fail(error instanceof PyroError ? error : protocolError(String(error)));
    }
  }

  private onEnd(): void {
    if (this.failure || this.shuttingDown) return;
    try {
      this.decoder.end();
    } catch (error) {
      this.fail(error as PyroError);
      return;
    }
    this.fail(new PyroError("sandbox_failed", "the guest agent closed the connection"));
  }

  private onMessage(m: AgentMessage): void {
    if (m.type === "error") {
      throw protocolError(`the agent reported error ${m.code}: ${m.message}`);
    }
    if (m.type === "hello_ack") {
      if (this.helloInfo || !this.helloPending) throw protocolError("unexpected HELLO_ACK");
      if (m.version !== PROTOCOL_VERSION) throw protocolError(`agent chose protocol version ${m.version}`);
      if (m.max_payload < 1 || m.max_payload > MAX_PAYLOAD) throw protocolError(`agent max_payload ${m.max_payload}`);
      if (m.initial_window < 1 || m.initial_window > MAX_INITIAL_WINDOW) {
        throw protocolError(`agent initial_window ${m.initial_window}`);
      }
      const { type: _t, channel: _c, ...info } = m;
      this.helloInfo = info;
      this.helloPending.resolve(info);
      return;
    }
    if (!this.helloInfo) throw protocolError(`${m.type} before HELLO_ACK`);
    if (m.type === "pong") {
      const pending = this.pings.get(m.data.toString("hex"));
      if (!pending) throw protocolError("PONG that answers no PING");
      pending.resolve();
      return;
    }
    if (m.type === "synced") {
      const pending = this.syncs.shift();
      if (!pending) throw protocolError("SYNCED that answers no SYNC");
      pending.resolve({ clock: (m.flags & SyncedFlags.CLOCK) !== 0, rng: (m.flags & SyncedFlags.RNG) !== 0 });
      return;
    }
    const ch = this.active.get(m.channel);
    if (!ch) throw protocolError(`${m.type} for unknown channel ${m.channel}`);
    ch.onMessage(m);
  }
}

type ChannelState = "queued" | "opening" | "open" | "ended";
/** What the channel's first frame is: OPEN (with KEEP or not), ATTACH or LIST. */
type ChannelMode = "open" | "open_kept" | "attach" | "list";

function detachedError(): PyroError {
  return new PyroError("invalid_state", "the kept process was detached from this connection: another pyro process attached it (took it over), or it was detached", {
    details: { detached: true },
  });
}

/** One exec: the per-channel state machine behind an ExecHandle. */
class Channel implements ExecHandle {
  channel = 0;
  pid: number | null = null;
  readonly opened: Promise<number | null>;
  readonly result: Promise<ExecResult>;
  queuedBytes = 0;
  droppedBytes = 0;
  exitedBeforeAttach = false;
  keptEntries: KeptEntry[] = [];

  private state: ChannelState = "queued";
  private resolveOpened!: (pid: number | null) => void;
  private resolveResult!: (r: ExecResult) => void;
  private rejectResult!: (e: unknown) => void;
  private settled = false;
  private hardTimer: NodeJS.Timeout | undefined;
  private abortListener: (() => void) | null = null;
  private killSent = false;
  private consumerError: unknown = null;

  /** Output credit the agent still has; data past it is a protocol error. */
  private outCredit = 0;
  /** Consumed output bytes not yet returned with WINDOW. */
  private unreturned = 0;
  private readonly queue: Array<{ cb: OutputCallback | undefined; data: Buffer }> = [];
  private delivering = false;
  private exitResult: ExecResult | null = null;

  private stdinCredit = 0;
  private stdinGranted = 0;
  private stdinTail: Promise<void> = Promise.resolve();
  private stdinEnded = false;
  private stdinWaiter: (() => void) | null = null;
  private failure: PyroError | null = null;
  /** The size to send right after OPEN: the initial one, or the last resize() while queued. */
  private pendingSize: Buffer | null = null;

  constructor(
    private readonly client: AgentClient,
    private readonly spec: ExecSpec,
    private readonly openPayload: Buffer,
    private readonly hasStdin: boolean,
    private readonly hostDeadlineMs: number | undefined,
    /** The first RESIZE of a PTY exec, sent right after OPEN; null without a PTY. */
    private readonly initialSize: Buffer | null = null,
    private readonly mode: ChannelMode = "open",
  ) {
    // An attached terminal keeps its size: only a resize() sends one.
    this.pendingSize = mode === "attach" ? null : initialSize;
    this.opened = new Promise((resolve) => (this.resolveOpened = resolve));
    this.result = new Promise((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
  }

  /** Sends OPEN on channel id and starts the stdin source, if any. */
  start(id: number): void {
    this.channel = id;
    this.state = "opening";
    this.outCredit = this.client.initialWindow;
    this.stdinCredit = this.client.initialWindow;
    this.stdinGranted = this.client.initialWindow;
    if (this.hostDeadlineMs !== undefined) {
      this.hardTimer = setTimeout(() => {
        this.client.fail(
          new PyroError(
            "sandbox_failed",
            `the guest agent did not report the end of '${this.spec.argv[0]}' within ${this.hostDeadlineMs} ms`,
            { hint: "The sandbox is not responding; it was disconnected. Stop it and try again." },
          ),
        );
      }, this.hostDeadlineMs);
    }
    this.client.send(this.mode === "attach" ? MsgType.ATTACH : this.mode === "list" ? MsgType.LIST : MsgType.OPEN, id, this.openPayload);
    if (this.mode === "list") return;
    if (this.pendingSize) this.client.send(MsgType.RESIZE, id, this.pendingSize);
    if (this.killSent) this.client.send(MsgType.KILL, id);
    const stdin = this.spec.stdin;
    if (Buffer.isBuffer(stdin)) {
      this.writeStdin(stdin).then(
        () => this.endStdin(),
        () => {},
      );
    } else if (stdin && stdin !== "pipe") {
      void this.pumpReadable(stdin);
    }
  }

  watchAbort(): void {
    const signal = this.spec.signal;
    if (!signal || this.settled) return;
    if (signal.aborted) return this.abort();
    this.abortListener = () => this.abort();
    signal.addEventListener("abort", this.abortListener, { once: true });
  }

  kill(): void {
    if (this.state === "ended" || this.settled || this.killSent) return;
    this.killSent = true;
    if (this.state !== "queued") this.client.send(MsgType.KILL, this.channel);
  }

  detach(): void {
    if (this.mode !== "open_kept" && this.mode !== "attach") throw new PyroError("invalid_state", "only a kept exec (keep) or an attach() can be detached");
    if (this.state === "opening" || this.state === "open") this.client.send(MsgType.DETACH, this.channel);
  }

  sendSignal(signo: number): void {
    if (!Number.isInteger(signo) || signo < 1 || signo > MAX_SIGNO) {
      throw new PyroError("invalid_argument", `signal number must be 1..${MAX_SIGNO}, got ${signo}`);
    }
    if (this.state === "open") this.client.send(MsgType.SIGNAL, this.channel, encodeU32(signo));
  }

  resize(rows: number, cols: number): void {
    if (!this.initialSize) throw new PyroError("invalid_state", "this exec has no terminal (pass pty: {rows, cols})");
    const payload = encodeResize(rows, cols);
    if (this.state === "queued") this.pendingSize = payload;
    else if (this.state === "opening" || this.state === "open") this.client.send(MsgType.RESIZE, this.channel, payload);
  }

  writeStdin(data: Buffer): Promise<void> {
    if (!this.hasStdin) {
      return Promise.reject(new PyroError("invalid_state", "this exec has no stdin pipe (pass stdin: \"pipe\")"));
    }
    if (this.stdinEnded) return Promise.reject(new PyroError("invalid_state", "stdin was already ended"));
    const run = this.stdinTail.then(() => this.writeNow(data));
    this.stdinTail = run.catch(() => {});
    return run;
  }

  endStdin(): void {
    if (!this.hasStdin || this.stdinEnded) return;
    this.stdinEnded = true;
    void this.stdinTail.then(() => {
      if (this.state === "opening" || this.state === "open") this.client.send(MsgType.STDIN_EOF, this.channel);
    });
  }

  /** Frames for this channel, in order. Throws PyroError("agent_protocol") on anything out of place. */
  onMessage(m: AgentMessage): void {
    switch (m.type) {
      case "opened":
      case "attached":
        if (this.state !== "opening") throw protocolError(`${m.type.toUpperCase()} twice on channel ${this.channel}`);
        if ((m.type === "attached") !== (this.mode === "attach") || this.mode === "list") throw protocolError(`${m.type.toUpperCase()} out of turn on channel ${this.channel}`);
        this.state = "open";
        this.pid = m.pid;
        if (m.type === "attached") {
          this.droppedBytes = m.dropped_bytes;
          this.exitedBeforeAttach = m.exited;
        }
        this.resolveOpened(m.pid);
        return;
      case "detached":
        if (this.mode !== "open_kept" && this.mode !== "attach") throw protocolError(`DETACHED on channel ${this.channel}, which is not kept`);
        if (this.state !== "opening" && this.state !== "open") throw protocolError(`DETACHED out of turn on channel ${this.channel}`);
        this.state = "ended";
        this.client.release(this);
        this.queue.length = 0;
        this.queuedBytes = 0;
        this.wakeStdin();
        this.settle(null, detachedError());
        return;
      case "kept":
        if (this.mode !== "list" || this.state !== "opening") throw protocolError(`KEPT that answers no LIST on channel ${this.channel}`);
        this.state = "ended";
        this.client.release(this);
        this.keptEntries = m.entries;
        this.settle({ kind: "exited", value: 0, timed_out: false, killed: false });
        return;
      case "stdout":
      case "stderr": {
        if (this.state !== "open") throw protocolError(`${m.type} before OPENED on channel ${this.channel}`);
        if (m.data.length > this.outCredit) {
          throw protocolError(`${m.data.length} bytes of ${m.type} past the window (${this.outCredit} left) on channel ${this.channel}`);
        }
        this.outCredit -= m.data.length;
        this.queuedBytes += m.data.length;
        this.queue.push({ cb: m.type === "stdout" ? this.spec.onStdout : this.spec.onStderr, data: m.data });
        this.pump();
        return;
      }
      case "stdin_window":
        if (this.state !== "open" && this.state !== "opening") throw protocolError("STDIN_WINDOW out of place");
        if (!this.hasStdin) throw protocolError(`STDIN_WINDOW on channel ${this.channel} without stdin`);
        if (this.stdinCredit + m.increment > this.stdinGranted) {
          throw protocolError(`STDIN_WINDOW returns more credit than was used on channel ${this.channel}`);
        }
        this.stdinCredit += m.increment;
        this.wakeStdin();
        return;
      case "exit": {
        if (this.state !== "open") throw protocolError(`EXIT before OPENED on channel ${this.channel}`);
        this.state = "ended";
        this.client.release(this);
        this.exitResult = {
          kind: m.kind === ExitKind.SIGNALED ? "signaled" : "exited",
          value: m.value,
          timed_out: (m.flags & ExitFlags.TIMED_OUT) !== 0,
          killed: (m.flags & ExitFlags.KILLED) !== 0,
          ...((m.flags & ExitFlags.OOM) !== 0 ? { oom: true } : {}),
        };
        this.wakeStdin();
        this.pump();
        return;
      }
      case "open_failed":
        if (this.state !== "opening") throw protocolError(`OPEN_FAILED after OPENED on channel ${this.channel}`);
        if (this.mode === "list") throw protocolError(`OPEN_FAILED answers a LIST on channel ${this.channel}`);
        this.state = "ended";
        this.client.release(this);
        this.wakeStdin();
        this.settle({ kind: "open_failed", errno: m.errno, message: m.message });
        return;
      default:
        throw protocolError(`${m.type} on channel ${this.channel}`);
    }
  }

  /** Fails this exec (the connection failed, or was closed). */
  fail(error: PyroError): void {
    if (this.settled) return;
    this.failure = error;
    this.state = "ended";
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.wakeStdin();
    this.settle(null, error);
  }

  private abort(): void {
    if (this.settled) return;
    if (this.state === "queued") {
      this.client.unqueue(this);
      this.state = "ended";
      this.settle({ kind: "signaled", value: 9, timed_out: false, killed: true });
      return;
    }
    this.kill();
  }

  /** Hands queued output to the callbacks in order; pauses on a returned Promise. */
  private pump(): void {
    while (!this.delivering && !this.settled && this.queue.length > 0) {
      const item = this.queue.shift()!;
      let ret: void | Promise<void> = undefined;
      if (this.consumerError === null && item.cb) {
        try {
          ret = item.cb(item.data);
        } catch (error) {
          this.consumerFailed(error);
        }
      }
      if (ret && typeof (ret as Promise<void>).then === "function") {
        this.delivering = true;
        (ret as Promise<void>).then(
          () => {
            this.delivering = false;
            this.consumed(item.data.length);
            this.pump();
          },
          (error: unknown) => {
            this.delivering = false;
            this.consumerFailed(error);
            this.consumed(item.data.length);
            this.pump();
          },
        );
        return;
      }
      this.consumed(item.data.length);
    }
    if (!this.delivering && this.queue.length === 0 && this.exitResult && !this.settled) {
      if (this.consumerError !== null) this.settle(null, this.consumerError);
      else this.settle(this.exitResult);
    }
  }

  private consumerFailed(error: unknown): void {
    if (this.consumerError !== null) return;
    this.consumerError = error;
    this.kill();
  }

  /**
   * Returns credit for consumed bytes. Batched at a quarter of the window so
   * the agent always has at least three quarters left; never after EXIT
   * (the agent forgot the channel, and its id may be reused).
   */
  private consumed(n: number): void {
    this.queuedBytes -= n;
    if (this.state !== "open") return;
    this.unreturned += n;
    if (this.unreturned >= Math.max(1, Math.floor(this.client.initialWindow / 4))) {
      this.client.send(MsgType.WINDOW, this.channel, encodeU32(this.unreturned));
      this.outCredit += this.unreturned;
      this.unreturned = 0;
    }
  }

  private async writeNow(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.failure) throw this.failure;
      if (this.state === "ended") return; // the process is gone: the rest is dropped, as a pipe would
      if (this.stdinCredit === 0) {
        await new Promise<void>((resolve) => (this.stdinWaiter = resolve));
        continue;
      }
      await this.client.waitWritable();
      if (this.failure) throw this.failure;
      if (this.ended()) return;
      const n = Math.min(this.stdinCredit, this.client.maxPayload, data.length - off);
      this.client.send(MsgType.STDIN, this.channel, data.subarray(off, off + n));
      this.stdinCredit -= n;
      off += n;
    }
  }

  private async pumpReadable(source: Readable): Promise<void> {
    try {
      for await (const chunk of source.iterator({ destroyOnReturn: false })) {
        if (this.state === "ended") break;
        const buf = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer);
        if (buf.length > 0) await this.writeStdin(buf);
      }
    } catch {
      // A failing stdin source (or a failed connection) just ends stdin.
    }
    this.endStdin();
  }

  /** Re-reads the state after an await (TypeScript keeps the narrowing from before it). */
  private ended(): boolean {
    return this.state === "ended";
  }

  private wakeStdin(): void {
    const w = this.stdinWaiter;
    this.stdinWaiter = null;
    w?.();
  }

  private settle(value: ExecResult | null, error?: unknown): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.hardTimer);
    if (this.abortListener) this.spec.signal?.removeEventListener("abort", this.abortListener);
    this.resolveOpened(this.pid);
    if (value) this.resolveResult(value);
    else this.rejectResult(error);
  }
}
