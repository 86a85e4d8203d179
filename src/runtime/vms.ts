import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { driverNamed, resolveDriver } from "../drivers/index.js";
import type { Driver, DriverName, Isolation, LimitsInfo, NetworkInfo, SandboxHandle } from "../drivers/types.js";
import { ensureEnvironment } from "../environments/index.js";
import { DEFAULTS } from "../core/defaults.js";
import { PyroError } from "../core/errors.js";
import { isAlive, selfIdentity, type ProcessIdentity } from "../util/proc.js";
import { pauseAt } from "../util/testhook.js";
import type { ProgressListener } from "../util/progress.js";
import { checkId, newId } from "./ids.js";
import { execInSandbox, type ExecOutcome, type ExecRequest } from "./sandbox-exec.js";
import { RecordStore } from "./store.js";
import { agentListens, bootSandbox, reapStraySandboxes, releaseOrphanDir } from "./boot.js";
import { SparePool, type SpareEvent } from "./pool.js";
import type { CreateVmArgs, VmRecord, VmState } from "./vm-record.js";

export type { CreateVmArgs, VmRecord, VmState } from "./vm-record.js";
import { checkDiskQuota } from "./quota.js";
import { checkMemoryRoom } from "../drivers/memory-room.js";
import { checkCpuRoom } from "../drivers/cpu-room.js";

/** What status calls return. */
export interface VmStatus {
  vm_id: string;
  environment: string;
  state: VmState;
  running: boolean;
  vcpu_count: number;
  mem_mib: number;
  disk_mib: number;
  network: boolean;
  ttl_seconds: number;
  created_at: string;
  expires_at: string;
  isolation: Isolation;
  limits: LimitsInfo | null;
}

export interface RuntimeOptions {
  stateDir: string;
  driver?: string;
  onProgress?: ProgressListener;
  /** Keep warm spares for one-shot runs (runtime/pool.ts): for long-lived processes only. */
  warmPool?: boolean;
  /** What the pool reports (spares ready, runs served by one). */
  onSpare?: (event: SpareEvent) => void;
}

export class VmManager {
  readonly store: RecordStore<VmRecord>;
  /** Warm spares for runInVm, when this manager keeps them. */
  readonly pool: SparePool | null;

  constructor(private readonly options: RuntimeOptions) {
    this.store = new RecordStore<VmRecord>(options.stateDir, "vm");
    this.pool = options.warmPool ? new SparePool(this, options.onSpare) : null;
  }

  isSandboxRunning(record: VmRecord): boolean {
    return record.sandbox !== null && this.driverFor(record).isRunning(record.sandbox);
  }

  private driverFor(record: Pick<VmRecord, "driver">): Driver {
    return driverNamed(record.driver);
  }

  /** Reads a record or says clearly that there is no such VM. */
  get(vmId: string): VmRecord {
    const id = checkId("vm", vmId);
    const record = this.store.read(id);
    if (!record || record.deleting) {
      throw new PyroError("unknown_vm", `No VM with id ${id}.`, { hint: "It may have expired or been deleted; list VMs with `pyro vm list`." });
    }
    return record;
  }

  async create(args: CreateVmArgs, internal: { ephemeral?: boolean; spare?: boolean; signal?: AbortSignal; onProgress?: ProgressListener } = {}): Promise<VmRecord> {
    const driver = resolveDriver(args.driver ?? this.options.driver);
    // Before anything is made: a limit past the host's RAM keeps nothing (a one-shot namespace run's layer is a tmpfs, RAM too).
    const disk_mib = args.disk_mib ?? (internal.ephemeral ? DEFAULTS.run_disk_mib : DEFAULTS.disk_mib);
    checkMemoryRoom({ mem_mib: args.mem_mib ?? DEFAULTS.mem_mib, ram_layer_mib: internal.ephemeral && driver.name === "namespace" ? disk_mib : null });
    checkCpuRoom(args.vcpu_count ?? DEFAULTS.vcpu_count);
    const environment = args.environment ?? DEFAULTS.environment;
    const env = await ensureEnvironment(environment, { onProgress: internal.onProgress ?? this.options.onProgress, signal: internal.signal });
    const now = Date.now();
    const ttl = args.ttl_seconds ?? DEFAULTS.ttl_seconds;
    const record: VmRecord = {
      schema: 1,
      vm_id: newId("vm"),
      environment: env.name,
      rootfs: env.rootfs,
      state: "created",
      vcpu_count: args.vcpu_count ?? DEFAULTS.vcpu_count,
      mem_mib: args.mem_mib ?? DEFAULTS.mem_mib,
      disk_mib,
      network: args.network ?? DEFAULTS.network,
      ttl_seconds: ttl,
      created_at: new Date(now).toISOString(),
      expires_at: new Date(now + ttl * 1000).toISOString(),
      driver: driver.name,
      isolation: driver.isolation(),
      ephemeral: internal.ephemeral ?? false,
      owner: internal.ephemeral ? selfIdentity() : null,
      sandbox: null,
      ...(internal.spare ? { spare: true } : {}),
    };
    // An ephemeral VM dies with this process: no need to pay for fsync.
    this.store.create(record.vm_id, record, { durable: !record.ephemeral });
    return record;
  }

  private expired(record: VmRecord): boolean {
    return Date.parse(record.expires_at) <= Date.now();
  }

  /** Boots the VM's sandbox. Starting a started VM is a no-op. */
  async start(vmId: string, signal?: AbortSignal, onProgress?: ProgressListener): Promise<VmRecord> {
    const id = checkId("vm", vmId);
    return this.store.withLock(id, async () => {
      const record = this.refresh(this.get(id));
      if (this.expired(record)) {
        await this.destroy(record);
        throw new PyroError("unknown_vm", `VM ${id} expired at ${record.expires_at} and was deleted.`, { hint: "Create a new VM, with a longer ttl_seconds if needed." });
      }
      if (record.state === "started") return record;
      record.sandbox = await bootSandbox(this.driverFor(record), { ...record, disk_mib: diskOf(record), id }, join(this.store.dir(id), "sandbox"), { ephemeral: record.ephemeral, signal, onProgress: onProgress ?? this.options.onProgress });
      record.isolation = record.sandbox.isolation ?? record.isolation;
      record.state = "started";
      this.store.write(id, record, { durable: !record.ephemeral });
      pauseAt("vm-start:recorded");
      return record;
    }, signal);
  }

  /** A started record whose sandbox died (crash, kill -9, TTL deadline) becomes stopped, and its leftovers are released. */
  private refresh(record: VmRecord): VmRecord {
    return this.settleDead(record).record;
  }

  /** refresh(), and a promise that settles once the dead sandbox's helpers (pasta) and disk are released: the reaper waits for it. */
  private settleDead(record: VmRecord): { record: VmRecord; released: Promise<void> } {
    if (record.state !== "started" || !record.sandbox || this.driverFor(record).isRunning(record.sandbox)) return { record, released: Promise.resolve() };
    const driver = this.driverFor(record);
    const released = driver.kill(record.sandbox).catch(() => undefined); // helpers may outlive a crashed sandbox
    try {
      driver.cleanup(record.sandbox);
    } catch {
      return { record, released }; // a process still leaving its group: the next refresh or reap retries
    }
    record.state = "stopped";
    record.sandbox = null;
    this.store.write(record.vm_id, record);
    return { record, released };
  }

  status(vmId: string): VmStatus {
    const record = this.refresh(this.get(vmId));
    return toStatus(record);
  }

  list(): VmStatus[] {
    const out: VmStatus[] = [];
    for (const id of this.store.ids()) {
      const record = this.store.read(id);
      if (record && !record.ephemeral && !record.deleting) out.push(toStatus(this.refresh(record)));
    }
    return out;
  }

  networkInfo(vmId: string): { vm_id: string; network: NetworkInfo | { enabled: boolean } ; state: VmState } {
    const record = this.refresh(this.get(vmId));
    return { vm_id: record.vm_id, state: record.state, network: record.sandbox?.network ?? { enabled: record.network } };
  }

  /** Runs one command in the VM (starting it if needed; a VM driver's first artifacts report to onProgress). The caller decides whether the VM is then deleted. */
  async exec(vmId: string, request: ExecRequest & { onProgress?: ProgressListener }): Promise<ExecOutcome & { vm_id: string }> {
    let record = this.get(vmId);
    if (record.state !== "started" || !record.sandbox) record = await this.start(vmId, request.signal, request.onProgress);
    else {
      record = this.refresh(record);
      // Another process may have killed this persistent VM's sandbox and died before recording it;
      // an ephemeral VM (this process's own, or its pool's) has no such other killer.
      if (!record.ephemeral && record.sandbox && !(await agentListens(record.sandbox.socket))) record = await this.stopDead(record.vm_id);
    }
    if (!record.sandbox) {
      throw new PyroError("invalid_state", `VM ${record.vm_id} is stopped.`, { hint: "Start it again with `pyro vm start`, or create a new one." });
    }
    if (!record.ephemeral) await checkDiskQuota(this.driverFor(record), join(this.store.dir(record.vm_id), "sandbox"), record.sandbox, `run a command in VM ${record.vm_id}`);
    const outcome = await execInSandbox(this.driverFor(record), record.sandbox, { cwd: "/", ...request });
    return { vm_id: record.vm_id, ...outcome };
  }

  /**
   * A started VM whose agent no longer answers (its sandbox was killed and is
   * still tearing down, its killer killed too) is a crashed one: it ends now
   * and the VM is stopped, as refresh() does for a dead init.
   */
  private async stopDead(id: string): Promise<VmRecord> {
    return this.store.withLock(id, async () => {
      const record = this.get(id);
      if (record.sandbox && !(await agentListens(record.sandbox.socket))) {
        const driver = this.driverFor(record);
        await driver.kill(record.sandbox);
        driver.cleanup(record.sandbox);
        record.sandbox = null;
        record.state = "stopped";
        this.store.write(id, record, { durable: !record.ephemeral });
      }
      return record;
    });
  }

  async stop(vmId: string): Promise<VmStatus> {
    const id = checkId("vm", vmId);
    return this.store.withLock(id, async () => {
      const record = this.get(id);
      if (record.sandbox) {
        const driver = this.driverFor(record);
        await driver.kill(record.sandbox);
        driver.cleanup(record.sandbox);
      }
      record.sandbox = null;
      record.state = record.state === "created" ? "created" : "stopped";
      this.store.write(id, record);
      return toStatus(record);
    });
  }

  async delete(vmId: string): Promise<{ vm_id: string; deleted: true }> {
    const id = checkId("vm", vmId);
    return this.store.withLock(id, async () => {
      await this.destroy(this.get(id));
      return { vm_id: id, deleted: true as const };
    });
  }

  /**
   * Kills the sandbox, releases its host resources and removes its directory,
   * the lock held. Kill -9 at any line leaves the record (a persistent VM's
   * marked `deleting`, an ephemeral one's owner dead: the reaper finishes the
   * delete) or a trash directory with nothing live in it (the next sweep
   * frees its bytes): the directory is renamed away only once the sandbox and
   * its groups are gone.
   */
  private async destroy(record: VmRecord): Promise<void> {
    const driver = this.driverFor(record);
    if (!record.ephemeral && !record.deleting) {
      record.deleting = true;
      this.store.write(record.vm_id, record);
    }
    pauseAt("vm-delete:marked");
    // Both signal at once and then wait (the notes name the same processes as the record, or what a start cut short made).
    await Promise.all([record.sandbox ? driver.kill(record.sandbox) : undefined, driver.cleanupDir(join(this.store.dir(record.vm_id), "sandbox"))]);
    if (record.sandbox) driver.cleanup(record.sandbox);
    pauseAt("vm-delete:released");
    this.store.remove(record.vm_id);
  }

  /**
   * Removes expired VMs and what crashed processes left: ephemeral VMs whose
   * owner is dead, directories without a record. Safe to run from any process
   * at any time; every pyro process runs it on start.
   */
  async reap(): Promise<Array<{ id: string; kind: "vm"; reason: string }>> {
    const reaped: Array<{ id: string; kind: "vm"; reason: string }> = [];
    this.store.sweepLocks();
    await this.store.sweepTrash(releaseOrphanDir);
    for (const id of this.store.ids()) {
      const record = this.store.read(id);
      let reason: string | null = null;
      if (!record) reason = "no record (a crashed create)";
      else if (record.ephemeral && !isAlive(record.owner)) reason = "owner process is gone";
      else if (record.deleting) reason = "deletion cut short";
      else if (this.expired(record)) reason = "ttl expired";
      if (!record) {
        // Left by older versions (a record is now made with its directory); only one not being created right now.
        try {
          if (Date.now() - statSync(this.store.dir(id)).mtimeMs < 60_000) continue;
          this.store.remove(id);
          reaped.push({ id, kind: "vm", reason: reason! });
        } catch {
          /* gone meanwhile */
        }
        continue;
      }
      // A sandbox that died: its groups and helpers go, the VM stays (stopped).
      const stale = !reason && record.state === "started" && record.sandbox !== null && !this.isSandboxRunning(record);
      // A persistent VM whose last start was cut short (groups made, no sandbox recorded): its notes say what to free.
      const unrecorded = !reason && !record.ephemeral && record.sandbox === null && existsSync(join(this.store.dir(id), "sandbox"));
      if (!reason && !stale && !unrecorded) continue;
      await this.store.underTryLock(id, async () => {
        const latest = this.store.read(id);
        if (!latest) return;
        if (reason) {
          await this.destroy(latest);
          reaped.push({ id, kind: "vm", reason });
        } else if (latest.sandbox) await this.settleDead(latest).released;
        else await this.driverFor(latest).cleanupDir(join(this.store.dir(id), "sandbox"));
      });
    }
    // Sandbox processes no record names: a start whose process was killed right after spawning bwrap.
    for (const id of await reapStraySandboxes(this.store, (id) => join(this.store.dir(id), "sandbox"))) reaped.push({ id, kind: "vm", reason: "sandbox process no record names" });
    return reaped;
  }

}

function diskOf(record: { disk_mib?: number; ephemeral: boolean }): number {
  return record.disk_mib ?? (record.ephemeral ? DEFAULTS.run_disk_mib : DEFAULTS.disk_mib);
}

function toStatus(record: VmRecord): VmStatus {
  return {
    vm_id: record.vm_id,
    environment: record.environment,
    state: record.state,
    running: record.state === "started",
    vcpu_count: record.vcpu_count,
    mem_mib: record.mem_mib,
    disk_mib: diskOf(record),
    network: record.network,
    ttl_seconds: record.ttl_seconds,
    created_at: record.created_at,
    expires_at: record.expires_at,
    isolation: record.isolation,
    limits: record.sandbox?.limits ?? null,
  };
}
