import type { ProcessIdentity } from "../util/proc.js";
import type { ProgressListener } from "../util/progress.js";

export type DriverName = "firecracker" | "qemu" | "namespace";

/**
 * The drivers this release can boot (doctor reports any other unavailable,
 * whatever the host has, and auto never picks it), so what doctor says and
 * what runs never disagree.
 */
export const IMPLEMENTED_DRIVERS: readonly DriverName[] = ["firecracker", "qemu", "namespace"];

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
  /**
   * The size of the sandbox's writable layer (everything it writes outside
   * its tmpfs mounts). An ephemeral sandbox's layer dies with it; any other
   * sandbox's must survive a restart, and keeps the size it was made with.
   */
  disk_mib: number;
  /** The writable layer must survive the sandbox (tasks, persistent VMs); false: it may die with it (one-shot runs). */
  keep_layer: boolean;
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
  /** How the sandbox reaches the outside: "none" (loopback only), "pasta" (namespace) or "passt" (qemu): user-mode networking. */
  backend: "none" | "pasta" | "passt";
  interface: string | null;
  guest_ip: string | null;
  gateway: string | null;
  dns: string[];
  /** Whether services on the host's loopback are reachable from inside (always false: a design rule). */
  host_loopback_reachable: false;
}

/**
 * What keeps one limit, said honestly:
 * - cgroup-v1 / cgroup-v2: the kernel, through the sandbox's cgroup;
 * - rlimit: the kernel, through a resource limit of the sandbox's processes
 *   (RLIMIT_NPROC for processes);
 * - tmpfs: the kernel, through a sized tmpfs (ENOSPC past it);
 * - ext4-image: the kernel, through an ext4 image of that size (ENOSPC);
 * - checked: pyro measures it before and after each operation and refuses
 *   the next one past it; a single command can still go over;
 * - none: nothing keeps it on this host.
 */
/** What keeps one limit; "vm" is the VM itself (its RAM, its vCPUs, the guest kernel's own pids cgroup). */
export type Enforcement = "cgroup-v1" | "cgroup-v2" | "rlimit" | "tmpfs" | "ext4-image" | "checked" | "vm" | "none";

/** Limits as the driver could enforce them on this host, said honestly, one by one. */
export interface LimitsInfo {
  /** The cgroup flavor that holds memory, CPU and processes ("none": no cgroup could be made). */
  mechanism: "cgroup-v1" | "cgroup-v2" | "vm" | "none";
  /** A limit that nothing enforces is null here. */
  mem_mib: number | null;
  vcpu_count: number | null;
  pids_max: number | null;
  disk_mib: number | null;
  /** The size of /dev/shm and of /run (each), in MiB. */
  shm_mib: number | null;
  /** What keeps each limit. */
  enforced_by: { memory: Enforcement; cpu: Enforcement; pids: Enforcement; disk: Enforcement; shm: Enforcement };
  /** One line for people, made from the above (describeLimits). */
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
  /** The disk image mounted as the writable layer (a loop device holds it while the sandbox runs), if any. */
  disk_image?: string;
  started_at: string;
  /** What really runs it (a qemu VM that proved KVM, or fell back to TCG); absent in records of older releases. */
  isolation?: Isolation;
  /** How a VM driver started it: booted, or restored from a snapshot of a VM of its shape (docs/drivers.md, "Snapshots"). */
  boot?: "cold" | "restored";
  /** Why a VM that could have been restored booted cold (a snapshot that failed), if one did. */
  boot_detail?: string;
  /** The sandbox wrote its own /etc/resolv.conf for `network.dns` as it booted (the qemu driver's guest agent). */
  dns_configured?: boolean;
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
  /**
   * A host path under which the sandbox's files can be walked without
   * trusting the guest (paths inside it are the guest's, "/workspace"
   * included), or null when the host cannot see them now (a stopped
   * sandbox whose layer is a disk image). `handle` is the running
   * sandbox's, if any.
   */
  filesView(dir: string, handle: SandboxHandle | null): { root: string; kind: "root" | "upper" } | null;
  /**
   * Bytes the writable layer takes on the host disk, for a quota the driver
   * can only check (limits.enforced_by.disk "checked"), and the first part of
   * it that could not be measured (relative to the layer), if any; null when
   * the quota is not the driver's to check.
   */
  checkedLayerBytes(dir: string): Promise<{ bytes: number; unmeasured: string | null } | null>;
}
