import type { Readable, Writable } from "node:stream";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { ErrorCode, JSONRPCMessageSchema, type JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";

/** Longest line (one JSON-RPC message) accepted on stdin. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

/**
 * MCP over stdio: newline-delimited JSON-RPC on stdin/stdout, like the SDK's
 * StdioServerTransport, except that a line that is not JSON, not a JSON-RPC
 * message, or too long is answered with a JSON-RPC error (-32700 parse error,
 * -32600 invalid request) instead of being dropped silently, and the server
 * goes on reading the next line.
 */
export class LineStdioTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: <T extends JSONRPCMessage>(message: T) => void;

  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Set while the rest of an over-long line is being skipped. */
  private skipping = false;
  private started = false;
  private closed = false;

  constructor(
    private readonly stdin: Readable = process.stdin,
    private readonly stdout: Writable = process.stdout,
  ) {}

  async start(): Promise<void> {
    if (this.started) throw new Error("LineStdioTransport already started");
    this.started = true;
    this.stdin.on("data", this.onData);
    this.stdin.on("error", this.onStreamError);
    // A client that went away makes writes fail with EPIPE: report it, never crash.
    this.stdout.on("error", (error) => this.onerror?.(error));
  }

  private readonly onStreamError = (error: Error): void => {
    this.onerror?.(error);
  };

  private readonly onData = (chunk: Buffer | string): void => {
    let data = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    for (;;) {
      const nl = data.indexOf(0x0a);
      if (nl === -1) {
        if (this.skipping) return;
        this.chunks.push(data);
        this.buffered += data.length;
        if (this.buffered > MAX_LINE_BYTES) {
          this.chunks = [];
          this.buffered = 0;
          this.skipping = true;
          this.reply(null, ErrorCode.InvalidRequest, `Message longer than ${MAX_LINE_BYTES} bytes; it was discarded.`);
        }
        return;
      }
      const head = data.subarray(0, nl);
      data = data.subarray(nl + 1);
      if (this.skipping) {
        this.skipping = false;
        continue;
      }
      const line = this.chunks.length ? Buffer.concat([...this.chunks, head]) : head;
      this.chunks = [];
      this.buffered = 0;
      this.handleLine(line.toString("utf8").replace(/\r$/, ""));
    }
  };

  private handleLine(line: string): void {
    if (!line.trim()) return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      this.reply(null, ErrorCode.ParseError, `Parse error: ${(error as Error).message}`);
      return;
    }
    const parsed = JSONRPCMessageSchema.safeParse(value);
    if (!parsed.success) {
      const id = value && typeof value === "object" && "id" in value ? (value as { id: unknown }).id : null;
      const validId = typeof id === "string" || (typeof id === "number" && Number.isFinite(id)) ? id : null;
      this.reply(validId, ErrorCode.InvalidRequest, "Invalid Request: not a JSON-RPC 2.0 request, notification or response.");
      return;
    }
    try {
      this.onmessage?.(parsed.data);
    } catch (error) {
      this.onerror?.(error as Error);
    }
  }

  private reply(id: string | number | null, code: number, message: string): void {
    // JSON-RPC answers an unidentifiable request with id null; the SDK's types do not allow that, hence the raw write.
    this.write(JSON.stringify({ jsonrpc: "2.0", id, error: { code, message } }) + "\n").catch(() => undefined);
    this.onerror?.(new Error(message));
  }

  private write(text: string): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed || this.stdout.destroyed) return resolve();
      if (this.stdout.write(text)) return resolve();
      // A host that went away never drains: its close (or error) ends the wait as well.
      const done = () => {
        this.stdout.off("drain", done);
        this.stdout.off("close", done);
        this.stdout.off("error", done);
        resolve();
      };
      this.stdout.once("drain", done);
      this.stdout.once("close", done);
      this.stdout.once("error", done);
    });
  }

  send(message: JSONRPCMessage): Promise<void> {
    return this.write(JSON.stringify(message) + "\n");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stdin.off("data", this.onData);
    this.stdin.off("error", this.onStreamError);
    if (this.stdin.listenerCount("data") === 0) this.stdin.pause();
    this.chunks = [];
    this.onclose?.();
  }
}
