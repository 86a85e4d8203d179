import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { Pyro } from "../../src/index.js";
import { cleanupState } from "../helpers/sandbox.js";
import { killPid, pausedPid, reapAndCheck, type Spawned } from "../helpers/crash.js";

/**
 * The fault-injection tier: pyro processes (the CLI in-process and through
 * the daemon, the daemon, the MCP server) are killed with SIGKILL at random
 * moments and at named points (PYRO_TEST_PAUSE_AT), and after each kill a
 * reap must leave nothing but whole tasks that work, with every workspace
 * wholly at one pushed version. Counts per kind and point are printed.
 */

export const ENV = "busybox";
/** Files per pushed version: enough that a push takes a while to apply. */
export const FILES = 150;
/** The random-kill rounds' seed, printed so that a failure can be replayed (PYRO_FAULT_SEED). */
export const SEED = Number(process.env.PYRO_FAULT_SEED ?? Date.now() % 100_000);

let rngState = SEED || 1;
export function random(): number {
  // xorshift32: reproducible from the printed seed.
  rngState ^= rngState << 13;
  rngState ^= rngState >>> 17;
  rngState ^= rngState << 5;
  return ((rngState >>> 0) % 1_000_000) / 1_000_000;
}
export const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Tally {
  private readonly rows = new Map<string, { kills: number; failures: number; missed: number }>();
  readonly failures: string[] = [];

  constructor(readonly title: string) {}

  row(kind: string, point: string) {
    const key = `${kind}\t${point}`;
    let r = this.rows.get(key);
    if (!r) this.rows.set(key, (r = { kills: 0, failures: 0, missed: 0 }));
    return r;
  }

  /** A kill and what was wrong after it. */
  kill(kind: string, point: string, problems: string[]): void {
    const r = this.row(kind, point);
    r.kills++;
    if (problems.length) {
      r.failures++;
      this.failures.push(`${kind} @ ${point}:\n  ${problems.join("\n  ")}`);
    }
  }

  /** A round whose process finished before the kill (random) or never reached its point (targeted: a failure). */
  missed(kind: string, point: string, why: string, isFailure: boolean): void {
    const r = this.row(kind, point);
    r.missed++;
    if (isFailure) {
      r.failures++;
      this.failures.push(`${kind} @ ${point}: ${why}`);
    }
  }

  get kills(): number {
    return [...this.rows.values()].reduce((n, r) => n + r.kills, 0);
  }

  report(): string {
    const lines = [`fault tally (${this.title}, seed ${SEED}): kind / point / kills / failures / rounds without a kill`];
    for (const [key, r] of [...this.rows.entries()].sort()) lines.push(`fault-tally | ${key.replace("\t", " | ")} | ${r.kills} | ${r.failures} | ${r.missed}`);
    lines.push(`fault-total | ${this.title} | ${this.kills} kills | ${this.failures.length} failures`);
    return lines.join("\n");
  }

  /** Prints the tally and fails the test with every problem found. */
  finish(): void {
    console.log(this.report());
    assert.deepEqual(this.failures, [], `failures after kills (seed ${SEED})`);
  }
}

/**
 * A private state directory and a host source tree whose files all carry one
 * version tag; `bump()` rewrites them to the next version (what a push then
 * carries).
 */
export class World {
  readonly base: string;
  readonly stateDir: string;
  readonly root: string;
  readonly src: string;
  version = 0;
  readonly pyro: Pyro;

  /** The driver every sandbox of this world uses (the CLI children get it as PYRO_DRIVER); default: auto. */
  readonly driver: "qemu" | undefined;

  constructor(t: TestContext, options: { driver?: "qemu" } = {}) {
    this.driver = options.driver;
    this.base = mkdtempSync(join(tmpdir(), "pyro-fault-"));
    this.stateDir = join(this.base, "s");
    this.root = join(this.base, "root");
    this.src = join(this.root, "src");
    mkdirSync(this.stateDir);
    mkdirSync(join(this.src, "data"), { recursive: true });
    this.writeVersion(0);
    this.pyro = new Pyro({ stateDir: this.stateDir, ...(this.driver ? { driver: this.driver } : {}) });
    t.after(async () => {
      await cleanupState(new Pyro({ stateDir: this.stateDir, ...(this.driver ? { driver: this.driver } : {}) }), this.stateDir).catch(() => undefined);
      rmSync(this.base, { recursive: true, force: true });
    });
  }

  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { PYRO_STATE_DIR: this.stateDir, PYRO_DAEMON: "0", ...(this.driver ? { PYRO_DRIVER: this.driver } : {}), ...extra };
  }

  private writeVersion(v: number): void {
    for (let i = 0; i < FILES; i++) writeFileSync(join(this.src, "data", `f${String(i).padStart(3, "0")}`), `v${v}\n`);
    this.version = v;
  }

  /** The next version of the source: a push from now on carries it. */
  bump(): { old: number; next: number } {
    const old = this.version;
    this.writeVersion(old + 1);
    return { old, next: old + 1 };
  }

  tasks(): string[] {
    try {
      return readdirSync(join(this.stateDir, "tasks")).filter((n) => n.startsWith("task_"));
    } catch {
      return [];
    }
  }

  record(id: string): any {
    return JSON.parse(readFileSync(join(this.stateDir, "tasks", id, "record.json"), "utf8"));
  }

  /** A seeded task to exec in, push to and delete (made in this process when the last one was deleted). */
  async task(): Promise<string> {
    const existing = this.tasks()[0];
    if (existing) return existing;
    const s = await this.pyro.createTask({ environment: ENV, source_path: this.src });
    return s.task_id;
  }

  /** Kills a task's sandbox from outside, so that the next exec or push boots one. */
  stopSandbox(id: string): void {
    const r = this.record(id);
    if (r.sandbox) killPid(r.sandbox.process.pid);
  }

  /** The version each task's /workspace/data was last seen at (-1: empty). */
  readonly versions = new Map<string, number>();

  /**
   * Everything after a kill: a reap, then no leftovers, and each remaining
   * task works (an exec succeeds) with its /workspace/data wholly at one
   * version: the one it had, or for the task a push was killed into, that
   * or the pushed one; a task made in the round, the source's version.
   */
  async check(expect: { pushed?: { id: string; next: number } } = {}, options: { liveOwners?: number[] } = {}): Promise<string[]> {
    const { problems, tasks } = await reapAndCheck(this.stateDir, [], options);
    for (const id of [...this.versions.keys()]) if (!tasks.includes(id)) this.versions.delete(id);
    for (const id of tasks) {
      try {
        const r = await this.pyro.execTask({ task_id: id, command: "cat /workspace/data/* 2>/dev/null | sort | uniq -c" });
        if (r.exit_code !== 0) problems.push(`task ${id}: exec exited ${r.exit_code}: ${r.stderr}`);
        const lines = r.stdout.trim().split("\n").filter(Boolean).map((l) => l.trim().split(/\s+/));
        let version = -1;
        if (lines.length) {
          const [count, tag] = lines[0]!;
          version = Number(tag!.slice(1));
          if (lines.length !== 1 || Number(count) !== FILES) {
            problems.push(`task ${id}: /workspace/data is torn: ${r.stdout.trim().replace(/\n/g, " | ")}`);
            continue;
          }
        }
        const prev = this.versions.get(id);
        const allowed = prev === undefined ? [this.version, -1] : expect.pushed?.id === id ? [prev, expect.pushed.next] : [prev];
        if (!allowed.includes(version)) problems.push(`task ${id}: /workspace/data at v${version}, expected one of ${allowed.map((v) => `v${v}`).join(", ")}`);
        this.versions.set(id, version);
      } catch (error) {
        problems.push(`task ${id}: not usable after the kill: ${(error as Error).message}`);
      }
    }
    return problems;
  }

  /** Keeps at most one task (rounds that completed a create add one). */
  async prune(): Promise<void> {
    for (const id of this.tasks().slice(1)) await this.pyro.deleteTask({ task_id: id }).catch(() => undefined);
  }
}

/** The shortest completed run of each kind of round: random kills land within it. */
const durations = new Map<string, number>();

/** A random moment within the kind's shortest observed run (400 ms until one completed). */
export function randomDelay(kind: string): number {
  return Math.floor(random() * 0.95 * (durations.get(kind) ?? 400));
}

/**
 * One round: starts a process, kills it (at `point` when targeted; after
 * `delayMs` otherwise), waits for it, then checks. `killTarget` picks whom to
 * kill given the pid that paused (default: that pid).
 */
export async function killRound(
  tally: Tally,
  world: World,
  kind: string,
  point: string,
  start: () => Spawned,
  how: { targeted: true } | { targeted: false; delayMs: number },
  expect: Parameters<World["check"]>[0] = {},
  options: Parameters<World["check"]>[1] = {},
): Promise<void> {
  const startedAt = Date.now();
  const s = start();
  let killed = false;
  if (how.targeted) {
    const pid = await pausedPid(s, 30_000).catch(() => null);
    if (pid) {
      killPid(pid);
      if (pid !== s.child.pid) killPid(s.child.pid!);
      killed = true;
    }
  } else {
    await Promise.race([sleep(how.delayMs), s.exited]);
    if (s.child.exitCode === null && s.child.signalCode === null) {
      killPid(s.child.pid!);
      killed = true;
    }
  }
  await s.exited;
  if (!killed) durations.set(kind, Math.min(durations.get(kind) ?? Infinity, Date.now() - startedAt));
  if (!killed) {
    tally.missed(kind, point, `ended (${s.child.exitCode}) before it was killed: ${s.stderr().slice(-500)}`, how.targeted);
    // A round that completed must still leave a clean state.
    const problems = await world.check(expect, options);
    if (problems.length) tally.kill(kind, `${point} (completed)`, problems);
    return;
  }
  const problems = await world.check(expect, options);
  if (process.env.PYRO_FAULT_VERBOSE) console.log(`round ${kind} @ ${point} ${"delayMs" in how ? how.delayMs : ""}: ${problems.length} problems; stderr: ${s.stderr().slice(-300)}`);
  tally.kill(kind, point, problems);
}
