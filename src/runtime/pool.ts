import { statSync } from "node:fs";
import { ensureEnvironment, type ReadyEnvironment } from "../environments/index.js";
import { DEFAULTS } from "../core/defaults.js";
import type { RecordStore } from "./store.js";
import type { CreateVmArgs, VmRecord } from "./vm-record.js";
import type { ExecRequest } from "./sandbox-exec.js";

/** What the pool needs of the VM manager that owns it (runtime/vms.ts). */
export interface SpareHost {
  readonly store: RecordStore<VmRecord>;
  isSandboxRunning(record: VmRecord): boolean;
  create(args: CreateVmArgs, options: { ephemeral: boolean; spare: boolean }): Promise<VmRecord>;
  start(vmId: string): Promise<unknown>;
  exec(vmId: string, request: ExecRequest): Promise<unknown>;
  delete(vmId: string): Promise<unknown>;
}

/**
 * Warm spares for one-shot runs: after a run, a sandbox with the same
 * environment and limits is booted in the background, so the next run with
 * that shape only has to exec. A spare is an ordinary ephemeral VM record
 * (owned by this process, dies with it, reaped by any pyro process if this
 * one is killed); it is used by exactly one command and then deleted like
 * any other run, so no state ever passes from one run to the next.
 *
 * Only a long-lived process (the CLI daemon, the MCP server) keeps a pool: a spare made by a
 * process that exits right away would be wasted work.
 */

/** A spare lives this long; a run takes it only if its command's timeout still fits, with a margin for cleanup. */
export const SPARE_TTL_SECONDS = 900;
const TAKE_MARGIN_SECONDS = 60;
/** At most this many spares (one per shape) at a time; booting one more evicts the oldest. */
export const MAX_SPARES = 4;

/** The shape of sandbox a run needs; spares match on every field. */
export interface SpareShape {
  environment: string;
  vcpu_count: number;
  mem_mib: number;
  disk_mib: number;
  network: boolean;
  driver: string | undefined;
}

interface Spare {
  vmId: string;
  /**
   * The environment's rootfs when the spare booted, as digest and directory
   * identity: a rebuilt environment (even one with the same digest) is a new
   * directory, and the spare's mount would still show the old, deleted one.
   */
  rootfs: string;
  /** When the spare's TTL deadline ends it (ms since the epoch). */
  expiresAt: number;
}

export function shapeOf(args: CreateVmArgs): SpareShape {
  return {
    environment: args.environment ?? DEFAULTS.environment,
    vcpu_count: args.vcpu_count ?? DEFAULTS.vcpu_count,
    mem_mib: args.mem_mib ?? DEFAULTS.mem_mib,
    disk_mib: args.disk_mib ?? DEFAULTS.run_disk_mib,
    network: args.network ?? DEFAULTS.network,
    driver: args.driver,
  };
}

const keyOf = (s: SpareShape) => JSON.stringify([s.environment, s.vcpu_count, s.mem_mib, s.disk_mib, s.network, s.driver ?? null]);

/** What a pool reports to its owner (the MCP server logs it): a spare that became ready, a run served by one. */
export type SpareEvent = { kind: "ready"; vm_id: string; shape: SpareShape; boot_ms: number } | { kind: "taken"; vm_id: string; shape: SpareShape };

export class SparePool {
  private readonly spares = new Map<string, Spare>();
  /** Shapes whose spare is booting: at most one boot per shape at a time. */
  private readonly booting = new Map<string, Promise<void>>();
  /** Deletions of used sandboxes still in flight. */
  private readonly releasing = new Set<Promise<void>>();
  private closed = false;

  /** Runs served by a spare so far (for status output and tests). */
  private served = 0;

  constructor(
    private readonly vms: SpareHost,
    private readonly onEvent: (event: SpareEvent) => void = () => undefined,
  ) {}

  /**
   * Hands over the spare for this shape if there is a usable one: still
   * running, over the environment as it is now, with enough lifetime left for
   * the command's timeout. The record stops being a spare before it is
   * returned, so nothing else can take it.
   */
  async take(shape: SpareShape, timeoutSeconds: number): Promise<VmRecord | null> {
    const key = keyOf(shape);
    const spare = this.spares.get(key);
    if (!spare) return null;
    const left = spare.expiresAt - Date.now();
    if (left < (timeoutSeconds + TAKE_MARGIN_SECONDS) * 1000) {
      // A command that may outlive the spare gets a sandbox of its own. A spare
      // too old even for a default run is dropped, so that a fresh one replaces it.
      if (left < (DEFAULTS.timeout_seconds + TAKE_MARGIN_SECONDS) * 1000) {
        this.spares.delete(key);
        this.release(spare.vmId);
      }
      return null;
    }
    this.spares.delete(key);
    const record = this.vms.store.read(spare.vmId);
    const env = await ensureEnvironment(shape.environment).catch(() => null);
    const usable =
      record !== null &&
      record.state === "started" &&
      record.sandbox !== null &&
      this.vms.isSandboxRunning(record) &&
      env !== null &&
      rootfsIdentity(env) === spare.rootfs;
    if (!usable || !record) {
      await this.vms.delete(spare.vmId).catch(() => undefined);
      return null;
    }
    record.spare = false;
    this.vms.store.write(record.vm_id, record, { durable: false });
    this.served++;
    this.onEvent({ kind: "taken", vm_id: record.vm_id, shape });
    return record;
  }

  /**
   * Deletes a used sandbox in the background: the caller has its result and
   * need not wait (this process lives on; its sandboxes die with it anyway).
   * `close()` waits for deletions in flight.
   */
  release(vmId: string): void {
    const deletion = this.vms.delete(vmId).then(
      () => undefined,
      () => undefined,
    );
    this.releasing.add(deletion);
    void deletion.finally(() => this.releasing.delete(deletion));
  }

  /**
   * Boots a spare for this shape in the background, unless one exists or is
   * booting. Never throws. The boot starts on a later turn of the event loop,
   * so that the result of the run that asked is delivered first.
   */
  replenish(shape: SpareShape): void {
    const key = keyOf(shape);
    if (this.closed || this.spares.has(key) || this.booting.has(key)) return;
    const boot = (async () => {
      await new Promise((resolve) => setImmediate(resolve));
      const record = await this.vms.create({ ...shape, ttl_seconds: SPARE_TTL_SECONDS }, { ephemeral: true, spare: true });
      const t0 = performance.now();
      try {
        await this.vms.start(record.vm_id);
        // A spare runs one command of pyro's before a run may take it: it proves the agent execs, and in a VM
        // under TCG it fills qemu's translation cache, which a restore starts without (measured here: the
        // first exec after a restore ~200 ms, the next ones 20-30 ms). Its exit code does not matter (an
        // environment may lack `true`); nothing of it stays but the page cache of /bin/true.
        await this.vms.exec(record.vm_id, { command: ["true"], timeout_seconds: 30, max_output_bytes: 1024 });
        const env = await ensureEnvironment(shape.environment);
        if (this.closed) throw new Error("pool closed");
        // Room for this shape: the oldest spare of another shape goes.
        while (this.spares.size >= MAX_SPARES) {
          const [oldestKey, oldest] = this.spares.entries().next().value as [string, Spare];
          this.spares.delete(oldestKey);
          this.release(oldest.vmId);
        }
        this.spares.set(key, { vmId: record.vm_id, rootfs: rootfsIdentity(env), expiresAt: Date.parse(record.expires_at) });
        this.onEvent({ kind: "ready", vm_id: record.vm_id, shape, boot_ms: Math.round(performance.now() - t0) });
      } catch (error) {
        await this.vms.delete(record.vm_id).catch(() => undefined);
        throw error;
      }
    })()
      .catch(() => undefined) // a spare is an optimization: a run without one boots its own
      .finally(() => this.booting.delete(key));
    this.booting.set(key, boot);
  }

  /** How many spares are ready (for status output and tests). */
  size(): number {
    return this.spares.size;
  }

  /** How many runs a spare served. */
  servedCount(): number {
    return this.served;
  }

  /** Deletes every spare, waiting for boots in flight; the pool takes no new spares afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.booting.values(), ...this.releasing]);
    const ids = [...this.spares.values()].map((s) => s.vmId);
    this.spares.clear();
    await Promise.all(ids.map((id) => this.vms.delete(id).catch(() => undefined)));
  }
}

/** What makes one build of an environment's rootfs this one: its digest and its directory's identity. */
function rootfsIdentity(env: ReadyEnvironment): string {
  let inode = "gone";
  try {
    const st = statSync(env.rootfs);
    inode = `${st.dev}:${st.ino}`;
  } catch {
    /* a pruned environment: never equal to a booted spare's */
  }
  return `${env.manifest.artifacts.rootfs.digest}@${inode}`;
}
