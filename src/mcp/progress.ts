import { AsyncLocalStorage } from "node:async_hooks";
import { StringDecoder } from "node:string_decoder";
import type { ProgressEvent, ProgressListener } from "../util/progress.js";

/** What a progress notification carries (MCP `notifications/progress` params, minus the token). */
export interface ProgressUpdate {
  progress: number;
  total?: number;
  message?: string;
}

/** Output forwarded per notification: the newest part of what arrived since the last one. */
const MAX_MESSAGE_CHARS = 4096;

/**
 * The progress of one tool call, sent as MCP progress notifications when the
 * client asked for them (a progress token in the request's `_meta`).
 *
 * - `progress` is a counter that increases with every notification, as the
 *   protocol requires; `total` is never set (the length of a command's run is
 *   unknown). The useful part is `message`.
 * - Output chunks and phases (environment pull, push) are batched: at most
 *   one notification per `intervalMs`, carrying the latest phase and the
 *   output that arrived since the previous one (its newest 4 KiB).
 * - After `close()` nothing more is sent, so no notification can follow the
 *   call's result.
 */
export class CallProgress {
  private count = 0;
  private lastSent = 0;
  private timer: NodeJS.Timeout | null = null;
  private pendingOutput: Array<{ stream: "stdout" | "stderr"; text: string }> = [];
  private pendingPhase: string | null = null;
  private closed = false;
  private readonly decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") };

  constructor(
    private readonly send: ((update: ProgressUpdate) => void) | null,
    private readonly intervalMs = 500,
  ) {}

  /** Whether the client asked for progress at all (otherwise every method is a no-op). */
  get enabled(): boolean {
    return this.send !== null && !this.closed;
  }

  /** A phase of the work, e.g. "push: importing ./repo into /workspace". */
  phase(message: string): void {
    if (!this.enabled) return;
    this.pendingPhase = message;
    this.schedule();
  }

  /** A runtime progress event (an environment pull on first use). */
  event(event: ProgressEvent): void {
    const counts = event.total ? ` (${event.current ?? 0}/${event.total})` : event.current !== undefined ? ` (${event.current})` : "";
    this.phase(`${event.phase}: ${event.message}${counts}`);
  }

  /** A chunk of the running command's output. */
  output(stream: "stdout" | "stderr", chunk: Buffer): void {
    if (!this.enabled) return;
    const text = this.decoders[stream].write(chunk);
    if (!text) return;
    const last = this.pendingOutput[this.pendingOutput.length - 1];
    if (last && last.stream === stream) last.text = clip(last.text + text);
    else this.pendingOutput.push({ stream, text: clip(text) });
    this.schedule();
  }

  /** Stops sending: called when the call ends, before its result goes out. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.pendingOutput = [];
    this.pendingPhase = null;
  }

  /** One notification per interval at most: whatever piled up meanwhile goes out together. */
  private schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, this.lastSent + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, wait);
    this.timer.unref?.();
  }

  private flush(): void {
    if (this.closed || !this.send) return;
    const parts: string[] = [];
    if (this.pendingPhase !== null) parts.push(this.pendingPhase + (this.pendingOutput.length ? "\n" : ""));
    for (const p of this.pendingOutput) parts.push(`[${p.stream}] ${p.text}`);
    this.pendingPhase = null;
    this.pendingOutput = [];
    if (!parts.length) return;
    this.count += 1;
    this.lastSent = Date.now();
    this.send({ progress: this.count, message: clip(parts.join("")) });
  }
}

/** Keeps the newest part of a long text. */
function clip(text: string): string {
  return text.length <= MAX_MESSAGE_CHARS ? text : `…${text.slice(text.length - MAX_MESSAGE_CHARS + 1)}`;
}

/**
 * The call whose async context is running. The server's Pyro reports
 * environment pulls through `mcpProgressListener`, which forwards each event
 * to the call that caused it (each tool call runs inside its own scope).
 */
export const progressScope = new AsyncLocalStorage<CallProgress>();

/**
 * A `ProgressListener` for `new Pyro({ onProgress })` that routes runtime
 * progress (environment pulls) to the MCP tool call that triggered it. Pass it
 * when you give `createServer` a Pyro of your own.
 */
export const mcpProgressListener: ProgressListener = (event) => {
  progressScope.getStore()?.event(event);
};
