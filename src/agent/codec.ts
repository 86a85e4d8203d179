/**
 * The pyro-agent wire format (docs/protocol.md), host side: constants, frame
 * encoding, a streaming frame decoder and strict payload codecs for every
 * message. Pure: no I/O, no timers.
 *
 * Everything decoded here comes from an untrusted agent, so every length is
 * checked before it is used, a payload must parse exactly (no short reads, no
 * trailing bytes), and the decoder never holds more than one partial frame
 * (at most 12 + MAX_PAYLOAD bytes). Any violation throws
 * PyroError("agent_protocol"); there is no resynchronisation.
 */
import { PyroError } from "../core/errors.js";

export const MAGIC = Buffer.from([0x50, 0x59]);
export const HEADER_LEN = 12;
export const PROTOCOL_VERSION = 1;
export const MAX_PAYLOAD = 65536;
export const MAX_ARGC = 4096;
export const MAX_ENVC = 4096;
export const MAX_CHANNELS = 64;
export const MAX_PING = 64;
export const MAX_SIGNO = 64;
/** SYNC's seed length bounds (docs/protocol.md, "SYNC"). */
export const SYNC_SEED_MIN = 16;
export const SYNC_SEED_MAX = 256;
/** Largest initial window the host accepts from an agent: it bounds what one channel may buffer. */
export const MAX_INITIAL_WINDOW = 4 * 1024 * 1024;
/** Kept channels (docs/protocol.md, "Kept channels"): a key's shape, how many an agent keeps, its ring. */
export const KEPT_KEY = /^[A-Za-z0-9._-]{1,64}$/;
export const MAX_KEPT = 32;
export const KEPT_RING_BYTES = 256 * 1024;

export const MsgType = {
  HELLO: 0x01,
  OPEN: 0x02,
  STDIN: 0x03,
  STDIN_EOF: 0x04,
  SIGNAL: 0x05,
  KILL: 0x06,
  WINDOW: 0x07,
  PING: 0x08,
  SHUTDOWN: 0x09,
  SYNC: 0x0a,
  RESIZE: 0x0b,
  ATTACH: 0x0c,
  DETACH: 0x0d,
  LIST: 0x0e,
  HELLO_ACK: 0x81,
  OPENED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  STDIN_WINDOW: 0x86,
  OPEN_FAILED: 0x87,
  PONG: 0x88,
  SYNCED: 0x89,
  ATTACHED: 0x8a,
  DETACHED: 0x8b,
  KEPT: 0x8c,
  ERROR: 0x8f,
} as const;
export type MsgTypeName = keyof typeof MsgType;

const HOST_TYPES = new Set<number>([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e]);
const AGENT_TYPES = new Set<number>([0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8f]);
/** Types that live on channel 0 (the connection itself). */
const CONNECTION_TYPES = new Set<number>([0x01, 0x08, 0x09, 0x0a, 0x81, 0x88, 0x89, 0x8f]);

export const AgentErrorCode = { PROTOCOL: 1, VERSION: 2, LIMIT: 3, CHANNEL: 4, FLOW: 5 } as const;
/** KEEP: the process belongs to the sandbox, not to this connection (a key follows cwd). */
export const OpenFlags = { STDIN_PIPE: 0x1, PTY: 0x2, KEEP: 0x4 } as const;
const KNOWN_OPEN_FLAGS = OpenFlags.STDIN_PIPE | OpenFlags.PTY | OpenFlags.KEEP;
export const AttachedFlags = { EXITED: 0x1 } as const;
export const KeptState = { ATTACHED: 0, DETACHED: 1, EXITED: 2 } as const;
export const ExitKind = { EXITED: 0, SIGNALED: 1 } as const;
/** OOM: the guest kernel's OOM killer killed a process while the command ran (VM agents only). */
export const ExitFlags = { TIMED_OUT: 0x1, KILLED: 0x2, OOM: 0x4 } as const;
export const SyncedFlags = { CLOCK: 0x1, RNG: 0x2 } as const;

export function typeName(type: number): string {
  for (const [name, value] of Object.entries(MsgType)) if (value === type) return name;
  return `0x${type.toString(16).padStart(2, "0")}`;
}

function protocolError(message: string): PyroError {
  return new PyroError("agent_protocol", `guest agent protocol error: ${message}`, {
    hint: "The sandbox's agent sent something it must not; the sandbox was stopped. Recreate it.",
  });
}

function argumentError(message: string): PyroError {
  return new PyroError("invalid_argument", message);
}

// ---------------------------------------------------------------- frames

export interface Frame {
  type: number;
  channel: number;
  payload: Buffer;
}

/** Encodes one frame: 12-byte header + payload. */
export function encodeFrame(type: number, channel: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw argumentError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  if (!Number.isInteger(channel) || channel < 0 || channel > 0xffffffff) throw argumentError(`bad channel id ${channel}`);
  const out = Buffer.allocUnsafe(HEADER_LEN + payload.length);
  out[0] = 0x50;
  out[1] = 0x59;
  out[2] = PROTOCOL_VERSION;
  out[3] = type;
  out.writeUInt32LE(channel, 4);
  out.writeUInt32LE(payload.length, 8);
  payload.copy(out, HEADER_LEN);
  return out;
}

export type Direction = "from_agent" | "from_host";

/**
 * Splits a byte stream into frames. push() takes any chunking of the stream
 * and yields each whole frame as soon as it is complete; a header is checked
 * as soon as it is whole (a wrong magic after one or two bytes), so a
 * garbage sender is rejected before it can make us wait for a payload.
 *
 * Memory: at most one partial frame is held. Frames are yielded one by one,
 * so a consumer that throws stops the rest of the chunk from being parsed.
 */
export class FrameDecoder {
  private readonly accept: Set<number>;
  /** The header being assembled (bytes 0..headerHave). */
  private readonly header = Buffer.alloc(HEADER_LEN);
  private headerHave = 0;
  /** The frame being assembled once its header is known: exactly 12 + length bytes. */
  private frame: Buffer | null = null;
  private frameHave = 0;
  private failed: PyroError | null = null;

  constructor(readonly direction: Direction = "from_agent") {
    this.accept = direction === "from_agent" ? AGENT_TYPES : HOST_TYPES;
  }

  /** Bytes of an incomplete frame currently held (never above HEADER_LEN + MAX_PAYLOAD). */
  get bufferedBytes(): number {
    return this.frame ? this.frameHave : this.headerHave;
  }

  *push(chunk: Buffer): Generator<Frame, void, undefined> {
    if (this.failed) throw this.failed;
    let data = chunk;
    try {
      while (data.length > 0) {
        if (this.frame === null && this.headerHave === 0 && data.length >= HEADER_LEN) {
          // Fast path: a header at the front of the chunk, maybe the whole frame.
          const len = this.checkHeader(data);
          if (data.length >= HEADER_LEN + len) {
            yield this.frameOf(data.subarray(0, HEADER_LEN + len));
            data = data.subarray(HEADER_LEN + len);
            continue;
          }
          this.startFrame(data.subarray(0, HEADER_LEN), len);
          data = data.subarray(HEADER_LEN);
          continue;
        }
        if (this.frame === null) {
          const take = Math.min(HEADER_LEN - this.headerHave, data.length);
          data.copy(this.header, this.headerHave, 0, take);
          this.headerHave += take;
          data = data.subarray(take);
          if (this.headerHave < HEADER_LEN) {
            this.checkMagic(this.header.subarray(0, this.headerHave));
            continue;
          }
          const len = this.checkHeader(this.header);
          this.headerHave = 0;
          if (len === 0) {
            yield this.frameOf(Buffer.from(this.header));
            continue;
          }
          this.startFrame(this.header, len);
          continue;
        }
        const take = Math.min(this.frame.length - this.frameHave, data.length);
        data.copy(this.frame, this.frameHave, 0, take);
        this.frameHave += take;
        data = data.subarray(take);
        if (this.frameHave === this.frame.length) {
          const whole = this.frame;
          this.frame = null;
          this.frameHave = 0;
          yield this.frameOf(whole);
        }
      }
    } catch (error) {
      if (error instanceof PyroError) this.failed = error;
      throw error;
    }
  }

  /** Throws unless the stream ended on a frame boundary. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.bufferedBytes > 0) throw protocolError(`stream ended inside a frame (${this.bufferedBytes} bytes held)`);
  }

  /** Allocates exactly one frame (bounded by the checked length) and copies the header in. */
  private startFrame(header: Buffer, len: number): void {
    this.frame = Buffer.allocUnsafe(HEADER_LEN + len);
    header.copy(this.frame, 0, 0, HEADER_LEN);
    this.frameHave = HEADER_LEN;
  }

  private checkMagic(buf: Buffer): void {
    if ((buf.length >= 1 && buf[0] !== 0x50) || (buf.length >= 2 && buf[1] !== 0x59)) {
      throw protocolError("bad magic");
    }
  }

  /** Validates a whole header and returns the payload length. */
  private checkHeader(buf: Buffer): number {
    this.checkMagic(buf);
    if (buf[2] !== PROTOCOL_VERSION) throw protocolError(`unsupported frame version ${buf[2]}`);
    const type = buf[3]!;
    if (!this.accept.has(type)) throw protocolError(`unexpected message type ${typeName(type)}`);
    const channel = buf.readUInt32LE(4);
    const len = buf.readUInt32LE(8);
    if (len > MAX_PAYLOAD) throw protocolError(`payload length ${len} exceeds ${MAX_PAYLOAD}`);
    if (CONNECTION_TYPES.has(type) !== (channel === 0)) {
      throw protocolError(`${typeName(type)} on ${channel === 0 ? "channel 0" : `channel ${channel}`}`);
    }
    return len;
  }

  private frameOf(buf: Buffer): Frame {
    return { type: buf[3]!, channel: buf.readUInt32LE(4), payload: buf.subarray(HEADER_LEN) };
  }
}

// ---------------------------------------------------------- payload codec

/** Writes u32 and length-prefixed strings into a growing list of buffers. */
class Writer {
  private parts: Buffer[] = [];
  length = 0;

  u32(value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw argumentError(`value ${value} is not a u32`);
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(value, 0);
    return this.push(b);
  }

  str(value: string | Buffer): this {
    const b = typeof value === "string" ? Buffer.from(value, "utf8") : value;
    this.u32(b.length);
    return this.push(b);
  }

  private push(b: Buffer): this {
    this.parts.push(b);
    this.length += b.length;
    return this;
  }

  done(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

/** Reads a payload strictly: every read is bounds-checked, and end() demands that nothing is left. */
class Reader {
  private off = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}

  u32(): number {
    if (this.buf.length - this.off < 4) throw protocolError(`${this.what}: payload too short`);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }

  bytes(): Buffer {
    const len = this.u32();
    if (this.buf.length - this.off < len) throw protocolError(`${this.what}: string of ${len} bytes runs past the payload`);
    const b = this.buf.subarray(this.off, this.off + len);
    this.off += len;
    return b;
  }

  str(): string {
    return this.bytes().toString("utf8");
  }

  end(): void {
    if (this.off !== this.buf.length) throw protocolError(`${this.what}: ${this.buf.length - this.off} trailing bytes`);
  }
}

function expectLength(payload: Buffer, length: number, what: string): void {
  if (payload.length !== length) throw protocolError(`${what}: payload of ${payload.length} bytes, expected ${length}`);
}

// ------------------------------------------------------ host -> agent

export interface HelloPayload {
  min_version: number;
  max_version: number;
  client: string;
}

export interface OpenPayload {
  flags: number;
  timeout_ms: number;
  argv: string[];
  /** "K=V" entries. */
  env: string[];
  cwd: string;
  /** With OpenFlags.KEEP: the kept channel's key (KEPT_KEY). */
  key?: string;
}

export function encodeHello(p: HelloPayload): Buffer {
  return new Writer().u32(p.min_version).u32(p.max_version).str(p.client).done();
}

/**
 * Encodes an OPEN payload, refusing what the agent would refuse: empty argv,
 * NUL bytes, env entries that are not K=V, counts over 4096, and a total over
 * MAX_PAYLOAD (PyroError limit_exceeded).
 */
export function encodeOpen(p: OpenPayload): Buffer {
  if (p.argv.length < 1) throw argumentError("argv must hold at least the program");
  if (p.argv.length > MAX_ARGC) throw new PyroError("limit_exceeded", `argv has ${p.argv.length} entries; at most ${MAX_ARGC}`);
  if (p.env.length > MAX_ENVC) throw new PyroError("limit_exceeded", `env has ${p.env.length} entries; at most ${MAX_ENVC}`);
  if ((p.flags & ~KNOWN_OPEN_FLAGS) !== 0) throw argumentError(`unknown OPEN flags ${p.flags}`);
  const keep = (p.flags & OpenFlags.KEEP) !== 0;
  if (keep !== (p.key !== undefined)) throw argumentError("an OPEN carries a key exactly when it has the KEEP flag");
  if (p.key !== undefined) checkKey(p.key);
  for (const a of p.argv) if (a.includes("\0")) throw argumentError("argv entries must not contain NUL bytes");
  for (const e of p.env) {
    if (e.includes("\0")) throw argumentError("environment entries must not contain NUL bytes");
    if (e.indexOf("=") < 1) throw argumentError(`environment entry ${JSON.stringify(e)} is not KEY=VALUE`);
  }
  if (p.cwd.includes("\0")) throw argumentError("cwd must not contain NUL bytes");
  const w = new Writer().u32(p.flags).u32(p.timeout_ms).u32(p.argv.length);
  for (const a of p.argv) w.str(a);
  w.u32(p.env.length);
  for (const e of p.env) w.str(e);
  w.str(p.cwd);
  if (p.key !== undefined) w.str(p.key);
  if (w.length > MAX_PAYLOAD) {
    throw new PyroError("limit_exceeded", `the command line and environment take ${w.length} bytes; at most ${MAX_PAYLOAD}`, {
      hint: "Pass large data through stdin or a file instead of argv or env.",
    });
  }
  return w.done();
}

export interface SyncPayload {
  /** The host's wall clock, nanoseconds since the epoch (a u64). */
  unix_time_ns: bigint;
  /** Fresh randomness for the guest's RNG, SYNC_SEED_MIN..SYNC_SEED_MAX bytes. */
  seed: Buffer;
}

/** Encodes a SYNC payload: u64 unix_time_ns, u32 seed_len, seed. */
export function encodeSync(p: SyncPayload): Buffer {
  if (typeof p.unix_time_ns !== "bigint" || p.unix_time_ns < 0n || p.unix_time_ns > 0xffffffffffffffffn) {
    throw argumentError(`unix_time_ns must be a u64 bigint, got ${String(p.unix_time_ns)}`);
  }
  if (p.seed.length < SYNC_SEED_MIN || p.seed.length > SYNC_SEED_MAX) {
    throw argumentError(`the SYNC seed must be ${SYNC_SEED_MIN}..${SYNC_SEED_MAX} bytes, got ${p.seed.length}`);
  }
  const out = Buffer.allocUnsafe(12 + p.seed.length);
  out.writeBigUInt64LE(p.unix_time_ns, 0);
  out.writeUInt32LE(p.seed.length, 8);
  p.seed.copy(out, 12);
  return out;
}

/** A terminal's size in RESIZE: each 1..MAX_WINSIZE (the kernel's winsize holds unsigned shorts). */
export const MAX_WINSIZE = 65535;

/** Encodes a RESIZE payload: u32 rows, u32 cols. */
export function encodeResize(rows: number, cols: number): Buffer {
  for (const [name, v] of [["rows", rows], ["cols", cols]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > MAX_WINSIZE) throw argumentError(`terminal ${name} must be an integer in 1..${MAX_WINSIZE}, got ${v}`);
  }
  return new Writer().u32(rows).u32(cols).done();
}

export function encodeU32(value: number): Buffer {
  return new Writer().u32(value).done();
}

/** Throws invalid_argument unless key is 1..64 bytes of [A-Za-z0-9._-]. */
export function checkKey(key: string): void {
  if (typeof key !== "string" || !KEPT_KEY.test(key)) {
    throw argumentError(`a kept process's key must be 1..64 characters of A-Z, a-z, 0-9, '.', '_' and '-', got ${JSON.stringify(key)}`);
  }
}

/** ATTACH's payload: string key. */
export function encodeAttach(key: string): Buffer {
  checkKey(key);
  return new Writer().str(key).done();
}

export type HostMessage =
  | ({ type: "hello"; channel: 0 } & HelloPayload)
  | ({ type: "open"; channel: number } & OpenPayload)
  | { type: "stdin"; channel: number; data: Buffer }
  | { type: "stdin_eof"; channel: number }
  | { type: "signal"; channel: number; signo: number }
  | { type: "kill"; channel: number }
  | { type: "window"; channel: number; increment: number }
  | { type: "ping"; channel: 0; data: Buffer }
  | { type: "shutdown"; channel: 0 }
  | ({ type: "sync"; channel: 0 } & SyncPayload)
  | { type: "resize"; channel: number; rows: number; cols: number }
  | { type: "attach"; channel: number; key: string }
  | { type: "detach"; channel: number }
  | { type: "list"; channel: number };

function checkString(s: Buffer, what: string): string {
  if (s.includes(0)) throw protocolError(`NUL byte in ${what}`);
  return s.toString("utf8");
}

/** Decodes a host -> agent frame (used by tests and tools that play the agent). */
export function decodeHostMessage(frame: Frame): HostMessage {
  const { type, channel, payload } = frame;
  switch (type) {
    case MsgType.HELLO: {
      const r = new Reader(payload, "HELLO");
      const m = { type: "hello" as const, channel: 0 as const, min_version: r.u32(), max_version: r.u32(), client: r.str() };
      r.end();
      return m;
    }
    case MsgType.OPEN: {
      const r = new Reader(payload, "OPEN");
      const flags = r.u32();
      const timeout_ms = r.u32();
      if ((flags & ~KNOWN_OPEN_FLAGS) !== 0) throw protocolError("OPEN: unknown flags");
      const argc = r.u32();
      if (argc < 1 || argc > MAX_ARGC) throw protocolError(`OPEN: argc ${argc}`);
      const argv: string[] = [];
      for (let i = 0; i < argc; i++) argv.push(checkString(r.bytes(), "argv"));
      const envc = r.u32();
      if (envc > MAX_ENVC) throw protocolError(`OPEN: envc ${envc}`);
      const env: string[] = [];
      for (let i = 0; i < envc; i++) {
        const e = checkString(r.bytes(), "env");
        if (e.indexOf("=") < 1) throw protocolError("OPEN: env entry is not K=V");
        env.push(e);
      }
      const cwd = checkString(r.bytes(), "cwd");
      let key: string | undefined;
      if ((flags & OpenFlags.KEEP) !== 0) {
        key = r.str();
        if (!KEPT_KEY.test(key)) throw protocolError("OPEN: invalid key");
      }
      r.end();
      return { type: "open", channel, flags, timeout_ms, argv, env, cwd, ...(key !== undefined ? { key } : {}) };
    }
    case MsgType.STDIN:
      if (payload.length === 0) throw protocolError("empty STDIN");
      return { type: "stdin", channel, data: payload };
    case MsgType.STDIN_EOF:
      expectLength(payload, 0, "STDIN_EOF");
      return { type: "stdin_eof", channel };
    case MsgType.SIGNAL: {
      expectLength(payload, 4, "SIGNAL");
      const signo = payload.readUInt32LE(0);
      if (signo < 1 || signo > MAX_SIGNO) throw protocolError(`SIGNAL: signal ${signo} out of range`);
      return { type: "signal", channel, signo };
    }
    case MsgType.KILL:
      expectLength(payload, 0, "KILL");
      return { type: "kill", channel };
    case MsgType.WINDOW:
      expectLength(payload, 4, "WINDOW");
      return { type: "window", channel, increment: payload.readUInt32LE(0) };
    case MsgType.PING:
      if (payload.length > MAX_PING) throw protocolError("PING over 64 bytes");
      return { type: "ping", channel: 0, data: payload };
    case MsgType.SHUTDOWN:
      expectLength(payload, 0, "SHUTDOWN");
      return { type: "shutdown", channel: 0 };
    case MsgType.SYNC: {
      if (payload.length < 12) throw protocolError("SYNC: payload too short");
      const seedLen = payload.readUInt32LE(8);
      if (seedLen < SYNC_SEED_MIN || seedLen > SYNC_SEED_MAX) throw protocolError(`SYNC: seed length ${seedLen}`);
      expectLength(payload, 12 + seedLen, "SYNC");
      return { type: "sync", channel: 0, unix_time_ns: payload.readBigUInt64LE(0), seed: payload.subarray(12) };
    }
    case MsgType.RESIZE: {
      expectLength(payload, 8, "RESIZE");
      const rows = payload.readUInt32LE(0);
      const cols = payload.readUInt32LE(4);
      if (rows < 1 || rows > MAX_WINSIZE || cols < 1 || cols > MAX_WINSIZE) throw protocolError(`RESIZE: ${rows}x${cols} out of range`);
      return { type: "resize", channel, rows, cols };
    }
    case MsgType.ATTACH: {
      const r = new Reader(payload, "ATTACH");
      const key = r.str();
      r.end();
      if (!KEPT_KEY.test(key)) throw protocolError("ATTACH: invalid key");
      return { type: "attach", channel, key };
    }
    case MsgType.DETACH:
      expectLength(payload, 0, "DETACH");
      return { type: "detach", channel };
    case MsgType.LIST:
      expectLength(payload, 0, "LIST");
      return { type: "list", channel };
    default:
      throw protocolError(`not a host message: ${typeName(type)}`);
  }
}

// ------------------------------------------------------ agent -> host

export interface HelloAckPayload {
  version: number;
  max_payload: number;
  initial_window: number;
  agent_version: string;
}

export interface ExitPayload {
  kind: number;
  value: number;
  flags: number;
}

/** One kept process as LIST's answer (KEPT) names it. */
export interface KeptEntry {
  key: string;
  pid: number;
  state: "attached" | "detached" | "exited";
  ring_bytes: number;
  dropped_bytes: number;
}

export type AgentMessage =
  | ({ type: "hello_ack"; channel: 0 } & HelloAckPayload)
  | { type: "opened"; channel: number; pid: number }
  | { type: "stdout" | "stderr"; channel: number; data: Buffer }
  | ({ type: "exit"; channel: number } & ExitPayload)
  | { type: "stdin_window"; channel: number; increment: number }
  | { type: "open_failed"; channel: number; errno: number; message: string }
  | { type: "pong"; channel: 0; data: Buffer }
  | { type: "synced"; channel: 0; flags: number }
  | { type: "attached"; channel: number; pid: number; exited: boolean; dropped_bytes: number }
  | { type: "detached"; channel: number }
  | { type: "kept"; channel: number; entries: KeptEntry[] }
  | { type: "error"; channel: 0; code: number; message: string };

export function encodeHelloAck(p: HelloAckPayload): Buffer {
  return new Writer().u32(p.version).u32(p.max_payload).u32(p.initial_window).str(p.agent_version).done();
}

export function encodeExit(p: ExitPayload): Buffer {
  return new Writer().u32(p.kind).u32(p.value).u32(p.flags).done();
}

/** OPEN_FAILED (errno + message) and ERROR (code + message) share a layout. */
export function encodeCodeMessage(code: number, message: string): Buffer {
  return new Writer().u32(code).str(message).done();
}

/** Agent -> host KEPT (tests and tools that play the agent). */
export function encodeKept(entries: KeptEntry[]): Buffer {
  const w = new Writer().u32(entries.length);
  const parts: Buffer[] = [];
  for (const e of entries) {
    const tail = Buffer.alloc(24);
    tail.writeUInt32LE(e.pid, 0);
    tail.writeUInt32LE(e.state === "attached" ? 0 : e.state === "detached" ? 1 : 2, 4);
    tail.writeBigUInt64LE(BigInt(e.ring_bytes), 8);
    tail.writeBigUInt64LE(BigInt(e.dropped_bytes), 16);
    parts.push(new Writer().str(e.key).done(), tail);
  }
  return Buffer.concat([w.done(), ...parts]);
}

/** Agent -> host ATTACHED. */
export function encodeAttached(pid: number, flags: number, dropped: bigint): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(pid, 0);
  b.writeUInt32LE(flags, 4);
  b.writeBigUInt64LE(dropped, 8);
  return b;
}

/** A u64 count from the agent as a number; past 2^53 it could not be exact, so it is refused. */
function safeCount(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${what}: ${v} is out of range`);
  return Number(v);
}

function decodeKept(payload: Buffer): KeptEntry[] {
  if (payload.length < 4) throw protocolError("KEPT: payload too short");
  const n = payload.readUInt32LE(0);
  if (n > MAX_KEPT) throw protocolError(`KEPT: ${n} entries, at most ${MAX_KEPT}`);
  const out: KeptEntry[] = [];
  let off = 4;
  for (let i = 0; i < n; i++) {
    if (payload.length - off < 4) throw protocolError("KEPT: entry truncated");
    const len = payload.readUInt32LE(off);
    off += 4;
    if (len < 1 || len > 64 || payload.length - off < len + 24) throw protocolError("KEPT: entry truncated or key length out of range");
    const key = payload.subarray(off, off + len).toString("latin1");
    if (!KEPT_KEY.test(key)) throw protocolError("KEPT: invalid key");
    off += len;
    const pid = payload.readUInt32LE(off);
    const state = payload.readUInt32LE(off + 4);
    const ring = safeCount(payload.readBigUInt64LE(off + 8), "KEPT ring_bytes");
    const dropped = safeCount(payload.readBigUInt64LE(off + 16), "KEPT dropped_bytes");
    off += 24;
    if (state > 2) throw protocolError(`KEPT: unknown state ${state}`);
    if (ring > KEPT_RING_BYTES) throw protocolError(`KEPT: ring of ${ring} bytes, at most ${KEPT_RING_BYTES}`);
    out.push({ key, pid, state: state === 0 ? "attached" : state === 1 ? "detached" : "exited", ring_bytes: ring, dropped_bytes: dropped });
  }
  if (off !== payload.length) throw protocolError(`KEPT: ${payload.length - off} trailing bytes`);
  return out;
}

/** Longest message string the host keeps from an agent (the rest is cut). */
const MAX_AGENT_TEXT = 1024;

function agentText(b: Buffer): string {
  return b.subarray(0, MAX_AGENT_TEXT).toString("utf8");
}

/** Decodes and validates an agent -> host frame. */
export function decodeAgentMessage(frame: Frame): AgentMessage {
  const { type, channel, payload } = frame;
  switch (type) {
    case MsgType.HELLO_ACK: {
      const r = new Reader(payload, "HELLO_ACK");
      const m = {
        type: "hello_ack" as const,
        channel: 0 as const,
        version: r.u32(),
        max_payload: r.u32(),
        initial_window: r.u32(),
        agent_version: agentText(r.bytes()),
      };
      r.end();
      return m;
    }
    case MsgType.OPENED:
      expectLength(payload, 4, "OPENED");
      return { type: "opened", channel, pid: payload.readUInt32LE(0) };
    case MsgType.STDOUT:
    case MsgType.STDERR:
      if (payload.length === 0) throw protocolError(`empty ${typeName(type)}`);
      return { type: type === MsgType.STDOUT ? "stdout" : "stderr", channel, data: payload };
    case MsgType.EXIT: {
      expectLength(payload, 12, "EXIT");
      const kind = payload.readUInt32LE(0);
      const value = payload.readUInt32LE(4);
      const flags = payload.readUInt32LE(8);
      if (kind !== ExitKind.EXITED && kind !== ExitKind.SIGNALED) throw protocolError(`EXIT: unknown kind ${kind}`);
      if (kind === ExitKind.EXITED && value > 255) throw protocolError(`EXIT: exit code ${value}`);
      if (kind === ExitKind.SIGNALED && (value < 1 || value > MAX_SIGNO)) throw protocolError(`EXIT: signal ${value}`);
      if ((flags & ~(ExitFlags.TIMED_OUT | ExitFlags.KILLED | ExitFlags.OOM)) !== 0) throw protocolError(`EXIT: unknown flags ${flags}`);
      return { type: "exit", channel, kind, value, flags };
    }
    case MsgType.STDIN_WINDOW:
      expectLength(payload, 4, "STDIN_WINDOW");
      return { type: "stdin_window", channel, increment: payload.readUInt32LE(0) };
    case MsgType.OPEN_FAILED: {
      const r = new Reader(payload, "OPEN_FAILED");
      const errno = r.u32();
      const message = agentText(r.bytes());
      r.end();
      return { type: "open_failed", channel, errno, message };
    }
    case MsgType.PONG:
      if (payload.length > MAX_PING) throw protocolError("PONG over 64 bytes");
      return { type: "pong", channel: 0, data: payload };
    case MsgType.SYNCED: {
      expectLength(payload, 4, "SYNCED");
      const flags = payload.readUInt32LE(0);
      if ((flags & ~(SyncedFlags.CLOCK | SyncedFlags.RNG)) !== 0) throw protocolError(`SYNCED: unknown flags ${flags}`);
      return { type: "synced", channel: 0, flags };
    }
    case MsgType.ATTACHED: {
      expectLength(payload, 16, "ATTACHED");
      const flags = payload.readUInt32LE(4);
      if ((flags & ~AttachedFlags.EXITED) !== 0) throw protocolError(`ATTACHED: unknown flags ${flags}`);
      return {
        type: "attached",
        channel,
        pid: payload.readUInt32LE(0),
        exited: (flags & AttachedFlags.EXITED) !== 0,
        dropped_bytes: safeCount(payload.readBigUInt64LE(8), "ATTACHED dropped_bytes"),
      };
    }
    case MsgType.DETACHED:
      expectLength(payload, 0, "DETACHED");
      return { type: "detached", channel };
    case MsgType.KEPT:
      return { type: "kept", channel, entries: decodeKept(payload) };
    case MsgType.ERROR: {
      const r = new Reader(payload, "ERROR");
      const code = r.u32();
      const message = agentText(r.bytes());
      r.end();
      return { type: "error", channel: 0, code, message };
    }
    default:
      throw protocolError(`not an agent message: ${typeName(type)}`);
  }
}
