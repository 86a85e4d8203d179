import { mkdirSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { constants } from "node:os";
import { randomBytes } from "node:crypto";
import { isDetachedError, type AgentClient, type ExecHandle } from "../agent/client.js";
import { PyroError } from "../core/errors.js";
import { readJsonOrNull, writeJsonAtomic } from "../util/fsutil.js";
import { selfIdentity, type ProcessIdentity } from "../util/proc.js";
import { ByteRing } from "./ring.js";
import { SharedAgents, keptOf } from "./shared-agents.js";
import { BASE_ENV } from "./sandbox-exec.js";
import { stripTerminal } from "./terminal-text.js";
import type { TaskManager } from "./tasks.js";
import { WORKSPACE } from "./workspace.js";

/**
 * Shells: a PTY in a task's sandbox that keeps its state (cwd, variables,
 * background jobs) between calls.
 *
 * A shell belongs to the task, not to the pyro process that opened it: it
 * is a kept channel of the sandbox's agent (docs/protocol.md, "Kept
 * channels") under the key shell_<id>. One pyro process at a time holds it
 * (its output flows into that process's ring); when the holder exits or is
 * killed, the agent keeps the shell running and buffers its output (a
 * 256 KiB ring, the oldest dropped and counted). Any process that reads,
 * writes, signals, resizes or closes a shell it does not hold attaches it,
 * taking it over from the holder, if any, whose next call then says so.
 * The agent's list of kept channels is the truth for status; a note per
 * shell in the task's directory adds what the agent does not know (size,
 * cwd, opened_at, the last holder). Bounded: 32 kept processes per
 * sandbox, each ring 256 KiB, all killed with the task's sandbox.
 */

/** Unread output kept per shell; past it the oldest bytes are dropped and counted. */
export const SHELL_RING_BYTES = 1024 * 1024;
/** What one read returns at most (and by default). */
export const SHELL_READ_MAX = 1024 * 1024;
export const SHELL_READ_DEFAULT = 64 * 1024;
/** The longest a read may wait (wait_idle_ms / wait_for / timeout_ms). */
export const SHELL_WAIT_MAX_MS = 600_000;
/** Bytes one write may carry. */
export const SHELL_WRITE_MAX = 64 * 1024;
/** Open shells per task held by one process. */
export const SHELLS_PER_TASK = 16;

const SHAPE = /^shell_[0-9a-f]{12}$/;
const { ENOENT, EMFILE } = constants.errno;

/** The shell a PTY starts: bash when the environment has it, else sh, interactive either way. */
const SHELL_ARGV = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec sh -i; fi"];

export interface ShellInfo {
  shell_id: string;
  task_id: string;
  state: "running" | "exited";
  pid: number | null;
  rows: number;
  cols: number;
  cwd: string;
  opened_at: string;
  exit_code: number | null;
  /** Unread output bytes waiting for a read, and unread bytes dropped so far (ring full). */
  unread_bytes: number;
  dropped_bytes: number;
  /** The holding process's pid (null: no process holds it, the agent buffers its output); held_here true when it is this process. */
  holder_pid: number | null;
  held_here: boolean;
}

export interface ShellReadResult {
  shell_id: string;
  output: string;
  bytes: number;
  /** Unread bytes the ring dropped (it was full) before this output. */
  dropped_bytes: number;
  /** Bytes still unread after this read (the read hit max_bytes). */
  remaining_bytes: number;
  /** Why the read returned: wait_for seen, idle for wait_idle_ms, the timeout, the shell exited, or nothing to wait for. */
  reason: "pattern" | "idle" | "timeout" | "exited" | "immediate";
  state: "running" | "exited";
  exit_code: number | null;
}

export interface ShellOpenArgs {
  rows?: number;
  cols?: number;
  cwd?: string;
  env?: Record<string, string>;
}

export interface ShellReadArgs {
  max_bytes?: number;
  plain?: boolean;
  wait_idle_ms?: number;
  wait_for?: string;
  timeout_ms?: number;
}

/** Signals a shell takes by name. INT, QUIT and TSTP go through the terminal, to its foreground job. */
export const SHELL_SIGNALS = ["SIGINT", "SIGQUIT", "SIGTSTP", "SIGTERM", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGCONT", "SIGWINCH"] as const;
export type ShellSignal = (typeof SHELL_SIGNALS)[number];
const TERMINAL_KEYS: Partial<Record<ShellSignal, string>> = { SIGINT: "\x03", SIGQUIT: "\x1c", SIGTSTP: "\x1a" };
const SIGNAL_NUMBERS: Record<ShellSignal, number> = { SIGINT: 2, SIGQUIT: 3, SIGTSTP: 20, SIGTERM: 15, SIGHUP: 1, SIGKILL: 9, SIGUSR1: 10, SIGUSR2: 12, SIGCONT: 18, SIGWINCH: 28 };

/** A note in the task's directory saying a shell exists and who holds it. */
interface ShellNote {
  shell_id: string;
  task_id: string;
  holder: ProcessIdentity;
  rows: number;
  cols: number;
  cwd: string;
  opened_at: string;
  pid: number | null;
}

class Shell {
  readonly ring = new ByteRing(SHELL_RING_BYTES);
  exitCode: number | null = null;
  exited = false;
  /** Another process attached it: the next call here says so and forgets it. */
  takenOver = false;
  /** This process let go of it (close of the SDK): the shell runs on in the task. */
  released = false;
  /** Bytes the agent's ring dropped while no process held the shell: reported by the next read. */
  pendingDropped = 0;
  /** Its use of the shared connection was given back. */
  clientDropped = false;
  lastOutputAt = 0;
  private waiters = new Set<() => void>();
  readonly listeners = new Set<(chunk: Buffer) => void>();

  constructor(
    readonly id: string,
    readonly taskId: string,
    readonly client: AgentClient,
    public handle: ExecHandle | null,
    public rows: number,
    public cols: number,
    readonly cwd: string,
    readonly openedAt: string,
    readonly notePath: string,
  ) {}

  output(chunk: Buffer): void {
    this.ring.push(chunk);
    this.lastOutputAt = Date.now();
    for (const l of this.listeners) l(chunk);
    this.wake();
  }

  wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves at the next output, exit, or after ms. */
  nextEvent(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.waiters.add(done);
    });
  }
}

export class ShellManager {
  private readonly shells = new Map<string, Shell>();
  /** Attaches under way, so two calls of this process never take a shell over from each other. */
  private readonly attaching = new Map<string, Promise<Shell>>();
  private readonly agents = new SharedAgents();

  constructor(private readonly tasks: TaskManager) {}

  async open(taskId: string, args: ShellOpenArgs = {}, options: { signal?: AbortSignal; onOutput?: (chunk: Buffer) => void } = {}): Promise<ShellInfo> {
    const rows = args.rows ?? 24;
    const cols = args.cols ?? 80;
    const cwd = args.cwd ?? WORKSPACE;
    if (!cwd.startsWith("/") || cwd.includes("\0")) throw new PyroError("invalid_argument", `cwd must be an absolute path in the sandbox, got ${JSON.stringify(cwd)}.`);
    const id = this.tasks.get(taskId).task_id;
    const mine = [...this.shells.values()].filter((s) => s.taskId === id && !s.exited).length;
    if (mine >= SHELLS_PER_TASK) {
      throw new PyroError("limit_exceeded", `Task ${id} already has ${mine} open shells in this process (at most ${SHELLS_PER_TASK}).`, {
        hint: "Close one with task_shell_close, or reuse an open shell.",
      });
    }
    const { handle, dir } = await this.tasks.running(id, options.signal, `open a shell in task ${id}`);
    const client = await this.agents.acquire(handle.socket, options.signal);
    const shellId = `shell_${randomBytes(6).toString("hex")}`;
    const notes = join(dir, "shells");
    const shell = new Shell(shellId, id, client, null, rows, cols, cwd, new Date().toISOString(), join(notes, `${shellId}.json`));
    if (options.onOutput) shell.listeners.add(options.onOutput);
    let exec: ExecHandle;
    try {
      exec = client.exec({
        argv: SHELL_ARGV,
        env: { ...BASE_ENV, TERM: "xterm-256color", ...(args.env ?? {}) },
        cwd,
        timeoutMs: 0,
        pty: { rows, cols },
        keep: shellId,
        onStdout: (c) => shell.output(c),
        onStderr: (c) => shell.output(c),
      });
    } catch (error) {
      this.agents.release(client);
      throw error;
    }
    shell.handle = exec;
    const pid = await exec.opened;
    if (pid === null) {
      const r = await exec.result.catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
      this.agents.release(client);
      const why = r instanceof Error ? r.message : r.kind === "open_failed" ? r.message : "it exited at once";
      const full = !(r instanceof Error) && r.kind === "open_failed" && r.errno === EMFILE;
      throw new PyroError(full ? "limit_exceeded" : "sandbox_failed", `Cannot start a shell in task ${id} (cwd ${cwd}): ${why}.`, {
        hint: full ? "The task's sandbox keeps at most 32 shells and services; close a shell with task_shell_close or stop a service." : cwd === WORKSPACE ? "Check the task with task_status." : "Check that cwd exists in the sandbox.",
      });
    }
    this.shells.set(shellId, shell);
    this.watch(shell, exec);
    this.writeNote(shell);
    return this.info(shell);
  }

  /** Sends keystrokes (or any bytes) to the shell's terminal. */
  async write(taskId: string, shellId: string, data: string | Buffer): Promise<{ shell_id: string; bytes: number }> {
    const shell = await this.hold(taskId, shellId);
    const buf = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    if (buf.length === 0) throw new PyroError("invalid_argument", "Nothing to write: input is empty.");
    if (buf.length > SHELL_WRITE_MAX) throw new PyroError("invalid_argument", `input is ${buf.length} bytes; one write takes at most ${SHELL_WRITE_MAX}.`, { hint: "Split it, or put large content in a file with task_exec." });
    this.alive(shell, "write to");
    await shell.handle!.writeStdin(buf);
    return { shell_id: shell.id, bytes: buf.length };
  }

  /**
   * Returns what arrived since the last read (at most max_bytes; the rest
   * stays for the next read). With wait_for, waits until that literal text
   * appears in unread output; with wait_idle_ms, until no output came for
   * that long; both bounded by timeout_ms. A read of an exited shell
   * returns what is left and its exit code.
   */
  async read(taskId: string, shellId: string, args: ShellReadArgs = {}, signal?: AbortSignal): Promise<ShellReadResult> {
    const shell = await this.hold(taskId, shellId, signal);
    const max = args.max_bytes ?? SHELL_READ_DEFAULT;
    const waiting = args.wait_for !== undefined || args.wait_idle_ms !== undefined;
    const timeout = args.timeout_ms ?? (waiting ? 30_000 : 0);
    const started = Date.now();
    const deadline = started + timeout;
    let reason: ShellReadResult["reason"] = "immediate";
    const needle = args.wait_for;
    // The text is looked for in the unread bytes as the plain text a model sees, so colours never
    // split it. Each check reads only what arrived since the previous one plus a margin for a
    // match or an escape sequence that straddles the two, so a flood costs each check its own bytes.
    const margin = needle === undefined ? 0 : Buffer.byteLength(needle) + 1024;
    let checkedTotal = shell.ring.total - shell.ring.length;
    const seen = (): boolean => {
      if (needle === undefined) return false;
      const fresh = shell.ring.total - checkedTotal;
      checkedTotal = shell.ring.total;
      return stripTerminal(shell.ring.peekTail(fresh + margin).toString("utf8")).includes(needle);
    };
    if (waiting) {
      for (;;) {
        if (signal?.aborted) throw new PyroError("cancelled", "The operation was cancelled.");
        if (seen()) {
          reason = "pattern";
          break;
        }
        if (shell.exited) {
          reason = "exited";
          break;
        }
        const now = Date.now();
        if (args.wait_idle_ms !== undefined && needle === undefined) {
          const idleSince = Math.max(started, shell.lastOutputAt);
          if (now - idleSince >= args.wait_idle_ms) {
            reason = "idle";
            break;
          }
        }
        if (now >= deadline) {
          reason = "timeout";
          break;
        }
        let wait = deadline - now;
        if (args.wait_idle_ms !== undefined && needle === undefined) wait = Math.min(wait, Math.max(started, shell.lastOutputAt) + args.wait_idle_ms - now);
        await shell.nextEvent(wait);
      }
    } else if (shell.exited) reason = "exited";
    if (shell.takenOver) throw this.takenOverError(shell);
    const { data, dropped } = shell.ring.take(cutPoint(shell.ring.peek(max + 3), max));
    const text = data.toString("utf8");
    const detachedDrops = shell.pendingDropped;
    shell.pendingDropped = 0;
    return {
      shell_id: shell.id,
      output: args.plain ? stripTerminal(text) : text,
      bytes: data.length,
      dropped_bytes: dropped + detachedDrops,
      remaining_bytes: shell.ring.length,
      reason,
      state: shell.exited ? "exited" : "running",
      exit_code: shell.exitCode,
    };
  }

  async signal(taskId: string, shellId: string, name: ShellSignal): Promise<{ shell_id: string; signal: ShellSignal; via: "terminal" | "process" }> {
    const shell = await this.hold(taskId, shellId);
    this.alive(shell, "signal");
    const key = TERMINAL_KEYS[name];
    if (key) {
      // Through the line discipline, like a key press: to the foreground job, not the shell itself.
      void shell.handle!.writeStdin(Buffer.from(key)).catch(() => undefined);
      return { shell_id: shell.id, signal: name, via: "terminal" };
    }
    shell.handle!.sendSignal(SIGNAL_NUMBERS[name]);
    return { shell_id: shell.id, signal: name, via: "process" };
  }

  async resize(taskId: string, shellId: string, rows: number, cols: number): Promise<ShellInfo> {
    const shell = await this.hold(taskId, shellId);
    this.alive(shell, "resize");
    shell.handle!.resize(rows, cols);
    shell.rows = rows;
    shell.cols = cols;
    this.writeNote(shell);
    return this.info(shell);
  }

  /** Ends the shell and everything it started; returns its last state. Closing a shell twice says it is unknown. */
  async close(taskId: string, shellId: string): Promise<ShellInfo & { closed: true }> {
    const shell = await this.hold(taskId, shellId);
    if (!shell.exited) {
      shell.handle!.kill();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([shell.handle!.result.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
    }
    const info = this.info(shell);
    this.forget(shell);
    return { ...info, closed: true };
  }

  /**
   * The task's shells: the ones this process holds (their live state) and
   * the others the sandbox's agent keeps (its list is the truth), with what
   * their notes add. A note whose shell the agent no longer has (it exited
   * and was read, or the sandbox stopped) is removed.
   */
  async list(taskId: string): Promise<ShellInfo[]> {
    const id = this.tasks.get(taskId).task_id;
    const out = [...this.shells.values()].filter((s) => s.taskId === id && !s.takenOver).map((s) => this.info(s));
    const dir = join(this.tasks.store.dir(id), "shells");
    const kept = await keptOf(this.tasks, id);
    if (kept === undefined) return out; // the agent could not be asked: change nothing
    const byKey = new Map(kept.filter((e) => SHAPE.test(e.key)).map((e) => [e.key, e]));
    for (const [key, e] of byKey) {
      if (out.some((s) => s.shell_id === key)) continue;
      const note = readJsonOrNull<ShellNote>(join(dir, `${key}.json`));
      if (note && note.task_id !== id) continue;
      out.push({
        shell_id: key,
        task_id: id,
        state: e.state === "exited" ? "exited" : "running",
        pid: e.pid,
        rows: note?.rows ?? 24,
        cols: note?.cols ?? 80,
        cwd: note?.cwd ?? WORKSPACE,
        opened_at: note?.opened_at ?? "",
        exit_code: null,
        unread_bytes: e.ring_bytes,
        dropped_bytes: e.dropped_bytes,
        holder_pid: e.state === "attached" ? (note?.holder.pid ?? null) : null,
        held_here: false,
      });
    }
    let names: string[] = [];
    try {
      names = readdirSync(dir).filter((n) => n.endsWith(".json"));
    } catch {
      return out;
    }
    for (const name of names) {
      const shellId = name.slice(0, -5);
      if (SHAPE.test(shellId) && !byKey.has(shellId) && !this.shells.has(shellId)) rmSync(join(dir, name), { force: true });
    }
    return out;
  }


  /** Subscribes to raw output as it arrives (the CLI's attached terminal); the shell must be held here. */
  onOutput(taskId: string, shellId: string, listener: (chunk: Buffer) => void): () => void {
    const shell = this.local(taskId, shellId);
    shell.listeners.add(listener);
    return () => shell.listeners.delete(listener);
  }

  /** Resolves once the shell's process ended (its exit code, or null when the connection was lost). */
  async exited(taskId: string, shellId: string): Promise<number | null> {
    const shell = this.local(taskId, shellId);
    while (!shell.exited && !shell.takenOver) await shell.nextEvent(60_000);
    return shell.exitCode;
  }

  /**
   * Lets go of every shell this process holds (an SDK program or a server
   * ending): each one runs on in its task, its output buffered by the
   * agent, for the next process to attach.
   */
  async releaseAll(): Promise<void> {
    const all = [...this.shells.values()];
    this.shells.clear();
    await Promise.all(
      all.map(async (shell) => {
        await releaseChannel(shell, shell.handle, shell.client);
        this.dropClient(shell);
      }),
    );
  }

  /** Closes every shell this process holds (a server shutting down); with taskId, that task's only. */
  async closeAll(taskId?: string): Promise<void> {
    await Promise.all(
      [...this.shells.values()].filter((s) => taskId === undefined || s.taskId === taskId).map((s) => this.close(s.taskId, s.id).catch(() => undefined)),
    );
  }

  private checkId(taskId: string, shellId: string): string {
    const id = this.tasks.get(taskId).task_id;
    if (typeof shellId !== "string" || !SHAPE.test(shellId)) {
      throw new PyroError("unknown_shell", `${JSON.stringify(shellId)} is not a shell id (shell ids look like shell_0123456789ab).`, { hint: "task_status lists a task's shells; open one with task_shell_open." });
    }
    return id;
  }

  /** A shell this process holds now (no attach). */
  private local(taskId: string, shellId: string): Shell {
    const id = this.checkId(taskId, shellId);
    const shell = this.shells.get(shellId);
    if (!shell || shell.taskId !== id) throw this.unknown(id, shellId);
    return shell;
  }

  private unknown(taskId: string, shellId: string): PyroError {
    return new PyroError("unknown_shell", `No shell ${shellId} is open in task ${taskId}.`, {
      hint: "It was closed, it exited and its end was read, or the task's sandbox stopped. task_status lists the task's shells; open a new one with task_shell_open.",
    });
  }

  private takenOverError(shell: Shell): PyroError {
    this.shells.delete(shell.id);
    return new PyroError("invalid_state", `Shell ${shell.id} of task ${shell.taskId} was taken over by another pyro process, which reads and writes it now; output that arrived after that went to it.`, {
      hint: "Use the shell from that process, or call again to take it back (the other process's next call then says it was taken over).",
    });
  }

  /**
   * The shell, held by this process: one it holds already, else attached
   * from the task's agent (taking it over from another process, or from
   * nobody after its holder died). The agent's ring, what the shell printed
   * while no process held it, is the first output the next read returns.
   */
  private async hold(taskId: string, shellId: string, signal?: AbortSignal): Promise<Shell> {
    const id = this.checkId(taskId, shellId);
    const mine = this.shells.get(shellId);
    if (mine) {
      if (mine.taskId !== id) throw this.unknown(id, shellId);
      if (mine.takenOver) throw this.takenOverError(mine);
      return mine;
    }
    const pending = this.attaching.get(shellId);
    if (pending) return pending;
    const attach = this.attach(id, shellId, signal).finally(() => this.attaching.delete(shellId));
    this.attaching.set(shellId, attach);
    return attach;
  }

  private async attach(id: string, shellId: string, signal?: AbortSignal): Promise<Shell> {
    const notePath = join(this.tasks.store.dir(id), "shells", `${shellId}.json`);
    const note = readJsonOrNull<ShellNote>(notePath);
    if (note && note.task_id !== id) throw this.unknown(id, shellId);
    const sandbox = await this.tasks.runningNow(id);
    if (!sandbox) {
      rmSync(notePath, { force: true });
      throw this.unknown(id, shellId);
    }
    const client = await this.agents.acquire(sandbox.handle.socket, signal);
    const shell = new Shell(shellId, id, client, null, note?.rows ?? 24, note?.cols ?? 80, note?.cwd ?? WORKSPACE, note?.opened_at ?? new Date().toISOString(), notePath);
    const exec = client.attach(shellId, { pty: true, onStdout: (c) => shell.output(c), onStderr: (c) => shell.output(c) });
    const pid = await exec.opened;
    if (pid === null) {
      const r = await exec.result.catch((e: unknown) => e);
      this.agents.release(client);
      if (r && typeof r === "object" && "kind" in r && r.kind === "open_failed" && "errno" in r && r.errno === ENOENT) {
        // Another task's key never matches (ids are unique), and the agent no longer has it.
        rmSync(notePath, { force: true });
        throw this.unknown(id, shellId);
      }
      throw new PyroError("sandbox_failed", `Cannot attach shell ${shellId} of task ${id}: ${r instanceof Error ? r.message : r && typeof r === "object" && "message" in r ? String(r.message) : "the agent refused"}.`);
    }
    shell.handle = exec;
    shell.pendingDropped = exec.droppedBytes;
    this.shells.set(shellId, shell);
    this.watch(shell, exec);
    this.writeNote(shell);
    return shell;
  }

  /** Follows the shell's channel: its exit, a takeover by another process, or a lost connection. */
  private watch(shell: Shell, exec: ExecHandle): void {
    exec.result.then(
      (r) => {
        shell.exitCode = r.kind === "open_failed" ? 127 : r.kind === "signaled" ? 128 + r.value : r.value;
        this.ended(shell);
      },
      (e: unknown) => {
        if (shell.released) return;
        if (isDetachedError(e)) {
          shell.takenOver = true;
          this.dropClient(shell);
          shell.wake();
          return;
        }
        this.ended(shell);
      },
    );
  }

  private writeNote(shell: Shell): void {
    try {
      mkdirSync(join(this.tasks.store.dir(shell.taskId), "shells"), { recursive: true, mode: 0o700 });
      const note: ShellNote = { shell_id: shell.id, task_id: shell.taskId, holder: selfIdentity(), rows: shell.rows, cols: shell.cols, cwd: shell.cwd, opened_at: shell.openedAt, pid: shell.handle?.pid ?? null };
      writeJsonAtomic(shell.notePath, note, { durable: false });
    } catch {
      /* the task was deleted meanwhile: the shell ends with its sandbox */
    }
  }

  private alive(shell: Shell, what: string): void {
    if (shell.exited) {
      throw new PyroError("invalid_state", `Cannot ${what} shell ${shell.id}: its process has exited${shell.exitCode !== null ? ` (exit code ${shell.exitCode})` : " (the sandbox connection was lost)"}.`, {
        hint: "Read what it left with task_shell_read, close it with task_shell_close, and open a new one with task_shell_open.",
      });
    }
  }

  /** Gives back this shell's use of the shared connection (once). */
  private dropClient(shell: Shell): void {
    if (shell.clientDropped) return;
    shell.clientDropped = true;
    this.agents.release(shell.client);
  }

  private ended(shell: Shell): void {
    shell.exited = true;
    this.dropClient(shell);
    rmSync(shell.notePath, { force: true });
    shell.wake();
  }

  private forget(shell: Shell): void {
    shell.exited = true;
    shell.wake();
    this.dropClient(shell);
    rmSync(shell.notePath, { force: true });
    this.shells.delete(shell.id);
  }

  private info(s: Shell): ShellInfo {
    return {
      shell_id: s.id,
      task_id: s.taskId,
      state: s.exited ? "exited" : "running",
      pid: s.handle?.pid ?? null,
      rows: s.rows,
      cols: s.cols,
      cwd: s.cwd,
      opened_at: s.openedAt,
      exit_code: s.exitCode,
      unread_bytes: s.ring.length,
      dropped_bytes: s.ring.dropped,
      holder_pid: process.pid,
      held_here: true,
    };
  }
}

/**
 * Lets go of a kept channel: DETACH and its DETACHED, so everything this
 * process sent before reaches the agent (closing the socket at once could
 * drop frames still in its buffer). Bounded: 2 s.
 */
export async function releaseChannel(owner: { released: boolean; wake(): void }, handle: ExecHandle | null, client: AgentClient | null): Promise<void> {
  // The caller gives the connection back afterwards (it may be shared).
  owner.released = true;
  if (handle && client && !client.closed) {
    try {
      handle.detach();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([handle.result.then(() => undefined, () => undefined), new Promise((r) => (timer = setTimeout(r, 2000)))]);
      clearTimeout(timer);
    } catch {
      /* not detachable (ended already): closing is enough */
    }
  }
  owner.wake();
}

/** Where to cut `max` bytes so no UTF-8 character is split (peeked holds a few bytes past max). */
function cutPoint(peeked: Buffer, max: number): number {
  if (peeked.length <= max) return peeked.length;
  let cut = max;
  // Back up over continuation bytes (10xxxxxx) to the start of the character max falls in.
  while (cut > 0 && cut > max - 4 && (peeked[cut]! & 0xc0) === 0x80) cut--;
  return cut > 0 ? cut : max;
}
