import type { DriverName, Isolation, SandboxHandle } from "../drivers/types.js";
import type { ProcessIdentity } from "../util/proc.js";

/** A VM's record and the arguments that make one: shared by the VM manager and the spare pool. */

export type VmState = "created" | "started" | "stopped";

/** A VM as stored on disk. */
export interface VmRecord {
  schema: 1;
  vm_id: string;
  environment: string;
  rootfs: string;
  state: VmState;
  vcpu_count: number;
  mem_mib: number;
  /** The writable layer's size (records older than disk_mib lack it: the defaults). */
  disk_mib: number;
  network: boolean;
  ttl_seconds: number;
  created_at: string;
  expires_at: string;
  driver: DriverName;
  isolation: Isolation;
  /** Ephemeral VMs (runInVm) belong to one process and are reaped when it dies. */
  ephemeral: boolean;
  owner: ProcessIdentity | null;
  sandbox: SandboxHandle | null;
  /** A warm spare of the run pool (runtime/pool.ts), not yet handed to a run. */
  spare?: boolean;
  /** Set (under the lock) before a delete of a persistent VM releases anything: the reaper finishes a delete cut short. */
  deleting?: true;
}

export interface CreateVmArgs {
  environment?: string;
  vcpu_count?: number;
  mem_mib?: number;
  disk_mib?: number;
  ttl_seconds?: number;
  network?: boolean;
  driver?: string;
}

