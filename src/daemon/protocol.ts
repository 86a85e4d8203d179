import type { Socket } from "node:net";

/**
 * The CLI daemon's wire format, over a unix stream socket that only its user
 * can reach: frames of a 4-byte big-endian length (of what follows), a 1-byte
 * type and a payload. Control frames carry JSON; stdio frames carry raw bytes.
 *
 * client → daemon: REQUEST, then (after ACCEPT) STDIN* STDIN_END, SIGNAL any time
 * daemon → client: ACCEPT | REFUSE, then STDOUT* / STDERR* / STDIN_PAUSE / STDIN_RESUME, then EXIT
 * Both directions are flow-controlled: the daemon stops reading a command's
 * output while the client's socket is backed up (the command then blocks on
 * its pipe), and pauses the client's stdin while the command is not reading.
 * STATUS and STOP are one-frame requests answered by STATUS_REPLY (STOP: then close).
 */

/** Bumped on any incompatible change; a daemon refuses other versions (the client then runs in-process). */
export const PROTOCOL_VERSION = 1;
/** Largest frame either side accepts: a peer that sends more is cut off. */
export const MAX_FRAME = 1 << 20;

export const Frame = {
  REQUEST: 1,
  STDIN: 2,
  STDIN_END: 3,
  SIGNAL: 4,
  STATUS: 5,
  STOP: 6,
  ACCEPT: 16,
  REFUSE: 17,
  STDOUT: 18,
  STDERR: 19,
  EXIT: 20,
  STATUS_REPLY: 21,
  /** Flow control of stdin: the command is not reading; stop sending until RESUME. */
  STDIN_PAUSE: 22,
  STDIN_RESUME: 23,
} as const;

export interface RunRequest {
  protocol: number;
  /** The client's build: a daemon of another build refuses, so old code never serves new clients. */
  build: string;
  /** The arguments after `pyro`, e.g. ["run", "busybox", "--", "true"]. */
  argv: string[];
  /** "pipe": the client will forward its stdin; "tty": it is a terminal and is not passed through. */
  stdin: "pipe" | "tty";
}

export interface DaemonStatus {
  pid: number;
  build: string;
  started_at: string;
  socket: string;
  requests: number;
  active: number;
  spares: number;
  idle_seconds: number;
}

export function encodeFrame(type: number, payload: Uint8Array | string | object = new Uint8Array(0)): Buffer {
  const body = payload instanceof Uint8Array ? payload : Buffer.from(typeof payload === "string" ? payload : JSON.stringify(payload), "utf8");
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame.writeUInt32BE(body.length + 1, 0);
  frame[4] = type;
  frame.set(body, 5);
  return frame;
}

/** Splits a byte stream into frames; throws on a frame over MAX_FRAME or an empty one. */
export class FrameReader {
  private buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Array<{ type: number; payload: Buffer }> {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const frames: Array<{ type: number; payload: Buffer }> = [];
    while (this.buffer.length >= 4) {
      const length = this.buffer.readUInt32BE(0);
      if (length < 1 || length > MAX_FRAME + 1) throw new Error(`bad frame length ${length}`);
      if (this.buffer.length < 4 + length) break;
      frames.push({ type: this.buffer[4]!, payload: this.buffer.subarray(5, 4 + length) });
      this.buffer = this.buffer.subarray(4 + length);
    }
    return frames;
  }
}

export function parseJson<T>(payload: Buffer): T {
  return JSON.parse(payload.toString("utf8")) as T;
}

/**
 * Feeds a socket's bytes to `handle`, one frame at a time. Bad framing, or a
 * handler that throws (malformed JSON, a frame out of place), costs the
 * connection and nothing else.
 */
export function onFrames(socket: Socket, handle: (type: number, payload: Buffer) => void): void {
  const reader = new FrameReader();
  socket.on("data", (chunk: Buffer) => {
    try {
      for (const { type, payload } of reader.push(chunk)) {
        if (socket.destroyed) return;
        handle(type, payload);
      }
    } catch {
      socket.destroy();
    }
  });
}
