import type { Socket } from "node:net";
import { connectUnixNoFollow } from "../../util/unix-socket.js";

/**
 * A minimal QMP client for the driver's own use (pausing a template VM and
 * migrating it to a snapshot): one command at a time, answers matched in
 * order, events skipped. qemu runs what the guest drives, so its output is
 * bounded like any other hostile input: a line over MAX_LINE ends the
 * connection rather than growing a buffer.
 */
const MAX_LINE = 1 << 20;

export class Qmp {
  private buf = "";
  private waiters: Array<{ resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void }> = [];
  private failed: Error | null = null;

  private constructor(private readonly sock: Socket) {
    sock.on("data", (b: Buffer) => {
      this.buf += b.toString("utf8");
      if (this.buf.length > MAX_LINE && !this.buf.includes("\n")) return this.fail(new Error("QMP sent a line over 1 MiB"));
      let nl: number;
      while ((nl = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        let m: unknown;
        try {
          m = JSON.parse(line);
        } catch {
          return this.fail(new Error("QMP sent a line that is not JSON"));
        }
        if (typeof m !== "object" || m === null) return this.fail(new Error("QMP sent a message that is not an object"));
        const o = m as Record<string, unknown>;
        if ("return" in o || "error" in o || "QMP" in o) this.waiters.shift()?.resolve(o);
      }
    });
    sock.on("error", (e) => this.fail(e));
    sock.on("close", () => this.fail(new Error("QMP connection closed")));
  }

  private fail(e: Error): void {
    if (!this.failed) this.failed = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
    this.sock.destroy();
  }

  /** Connects (retrying while qemu has not made the socket yet) and leaves capabilities negotiation done. */
  static async connect(path: string, timeoutMs: number): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = connectUnixNoFollow(path); // run/ is the VM uid's: never through a link planted there
      const error = await new Promise<Error | null>((resolve) => {
        s.once("connect", () => resolve(null));
        s.once("error", resolve);
      });
      if (!error) {
        const q = new Qmp(s);
        await q.next(); // the greeting
        await q.cmd("qmp_capabilities");
        return q;
      }
      s.destroy();
      if (Date.now() > deadline) throw new Error(`cannot connect to QMP at ${path}: ${error.message}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private next(): Promise<Record<string, unknown>> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  async cmd(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const answer = this.next();
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + "\n");
    const m = await answer;
    if ("error" in m) {
      const e = m.error as { desc?: unknown } | undefined;
      throw new Error(`QMP ${execute}: ${typeof e?.desc === "string" ? e.desc.slice(0, 300) : "failed"}`);
    }
    return m.return;
  }

  close(): void {
    this.sock.destroy();
  }
}
