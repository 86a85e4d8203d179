import type { ProcessIdentity } from "../util/proc.js";
import type { ProgressListener } from "../util/progress.js";

export type DriverName = "firecracker" | "qemu" | "namespace";

/**
 * The drivers this release can boot. The VM drivers come later; until then
 * doctor reports them unavailable (whatever the host has) and auto never
 * picks them, so what doctor says and what runs never disagree.
 */
export const IMPLEMENTED_DRIVERS: readonly DriverName[] = ["qemu", "namespace"];

/** What actually isolates a sandbox; carried by every result that ran something. */
export interface Isolation {
  driver: DriverName;
  kind: "microvm" | "emulated-vm" | "namespace";
  accel: "kvm" | "tcg" | null;
}

/** What the runtime asks a driver to boot. Drivers know nothing of tasks, journals or MCP. */
export interface SandboxSpec {
  /** The VM or task id; names cgroups and the hostname. */
  id: string;
  /** A directory owned by this sandbox: the driver keeps its writable layer, socket and logs here. */
  dir: string;
  /** The environment's read-only root filesystem (a directory). */
  rootfs: string;
  vcpu_count: number;
  mem_mib: number;
  /** Most processes the sandbox may hold at once: stops fork bombs. */
  pids_max: number;
  network: boolean;
  /** Unix seconds after which the sandbox ends itself even if no pyro process is running (TTL). */
  deadline: number | null;
  /** Ephemeral sandboxes die with the process that started them (kill -9 of the CLI leaves nothing). */
  die_with_parent: boolean;
  hostname: string;
  /** What a VM driver boots (built per environment on first VM use); absent for the namespace driver. */
  vm?: VmBootFiles;
}

/** An environment's VM artifacts (src/environments/vm/): all read-only, shared by every VM of the environment. */
export interface VmBootFiles {
  /** An uncompressed ELF vmlinux with a PVH entry point. */
  kernel: string;
  /** A cpio archive whose /init is pyro-agent, with the modules it loads. */
  initramfs: string;
  /** An ext4 image of the environment's rootfs, attached read-only. */
  root_image: string;
}

export interface NetworkInfo {
  enabled: boolean;
  /** How the sandbox reaches the outside: "none" (loopback only) or "pasta" (user-mode networking). */
  backend: "none" | "pasta";
  interface: string | null;
  guest_ip: string | null;
  gateway: string | null;
  dns: string[];
  /** Whether services on the host's loopback are reachable from inside (always false: a design rule). */
  host_loopback_reachable: false;
}

/** Limits as the driver could enforce them on this host, said honestly. */
export interface LimitsInfo {
  mechanism: "cgroup-v1" | "cgroup-v2" | "none";
  mem_mib: number | null;
  vcpu_count: number | null;
  pids_max: number | null;
  note: string | null;
}

/**
 * Everything needed to find, reach and clean up a running sandbox from any
 * pyro process: stored in the VM or task record, so it must stay plain JSON.
 */
export interface SandboxHandle {
  driver: DriverName;
  /** The process whose life is the sandbox's life (bwrap's monitor, qemu, firecracker). */
  process: ProcessIdentity;
  /** Unix socket where the guest agent answers. */
  socket: string;
  /** Helper processes that must die with the sandbox (pasta, ...). */
  helpers: ProcessIdentity[];
  /** Driver-owned resources to release after the sandbox is gone (cgroup directories, ...). */
  cgroups: string[];
  network: NetworkInfo;
  limits: LimitsInfo;
  started_at: string;
  /** What really runs it (a qemu VM that proved KVM, or fell back to TCG); absent in records of older releases. */
  isolation?: Isolation;
}

export interface Driver {
  readonly name: DriverName;
  isolation(): Isolation;
  /**
   * What this driver boots for an environment, made on first use and cached
   * (a VM driver's kernel, initramfs and root image). Drivers that boot the
   * environment's rootfs directory itself have none.
   */
  prepare?(environment: { name: string; rootfs: string }, options?: { signal?: AbortSignal; onProgress?: ProgressListener }): Promise<VmBootFiles>;
  /** Boots a sandbox and returns once its agent is listening. Cleans up after itself on failure. */
  start(spec: SandboxSpec, options?: { signal?: AbortSignal }): Promise<SandboxHandle>;
  /** True while the sandbox's process is alive. */
  isRunning(handle: SandboxHandle): boolean;
  /** Kills the sandbox (and its helpers) and waits until it is gone. Idempotent. */
  kill(handle: SandboxHandle): Promise<void>;
  /** Releases what the sandbox left on the host after it is gone (cgroups, sockets). Idempotent. */
  cleanup(handle: SandboxHandle): void;
  /**
   * Releases whatever of a sandbox directory's sandboxes still runs or holds
   * resources without a record naming it (its creator was killed mid-start,
   * or mid-kill): what the notes the driver keeps in the directory name, and
   * processes only the driver's own marks can find (for the namespace
   * driver, an argv naming the directory). Idempotent.
   */
  cleanupDir(dir: string): Promise<void>;
  /** How many processes the memory limit has killed so far (for reporting an OOM kill in a result). */
  oomKills(handle: SandboxHandle): number;
}
