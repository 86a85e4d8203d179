import { existsSync, realpathSync, rmSync } from "node:fs";
import type { Socket } from "node:net";
import { join, resolve } from "node:path";
import { PyroError } from "../../core/errors.js";
import { readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { agentBinaryPath } from "../../util/agent-binary.js";
import { killTrees, processesNaming, type ProcessIdentity } from "../../util/proc.js";
import type { ProgressListener } from "../../util/progress.js";
import { sandboxOwner } from "../../util/sandbox-user.js";
import { pauseAt } from "../../util/testhook.js";
import { ensureVmArtifacts } from "../../environments/vm/index.js";
import { findExecutable, firecrackerSupport, type FirecrackerSupport } from "../availability.js";
import { createSandboxCgroups, plannedCgroupDirs, releaseSandboxCgroups, removeSandboxCgroups } from "../cgroups.js";
import { vmLimits } from "../limits.js";
import { launchStaged } from "../launch.js";
import { LOOPBACK_ONLY } from "../network.js";
import type { Driver, Isolation, NetworkInfo, SandboxHandle, SandboxSpec, VmBootFiles } from "../types.js";
import { VM_NOTES, VmDriverBase, type VmNotes } from "../vm/base.js";
import { checkSocketPaths, consoleTail, ensureDataDisk, prepareVmDir, vmDirPaths } from "../vm/files.js";
import { checkVmMemory, shmMib, type DataLayer } from "../vm/guest.js";
import { jailArgs, jailCommand } from "../vm/jail.js";
import { kvmDeviceGroup, kvmVerdict, recordKvmVerdict } from "../vm/kvm.js";
import { startSupervisor, vmmArgv, VMM_PASS_FD } from "../vm/supervisor.js";
import { bootRequests, configureAndStart } from "./api.js";
import { AGENT_VSOCK_PORT, firecrackerArgs, microVm } from "./args.js";
import { consoleRelayArgv, JailedFirecracker, jailedMicroVm, jailLayout, removeJailRoot, supervisorWritable } from "./jailer.js";
import { checkFirecrackerNetwork, startJailNetwork, TUN_DEVICE } from "./network.js";

/**
 * The firecracker driver: each sandbox is a Firecracker microVM (KVM only:
 * Firecracker has no software emulation) booted from the environment's VM
 * artifacts, the same PVH vmlinux, initramfs and root image as the qemu
 * driver (src/environments/vm/), to pyro-agent as its /init, which serves
 * the protocol on a vsock port. Firecracker is configured over its API
 * socket (api.ts: machine, boot source, disks, vsock, InstanceStart) and
 * runs under the VM supervisor (`pyro-agent vmm --guest vsock:...`, which
 * reaches the agent through Firecracker's host-side vsock socket with
 * `CONNECT 52`), in the same bubblewrap jail as qemu (vm/jail.ts), as the
 * sandbox uid when pyro is root. Firecracker's own seccomp filters are on
 * (its default). A VM with network gets a TAP device in the jail's own
 * network namespace, bridged there to pasta (network.ts).
 */

/** A KVM boot of Debian's cloud kernel to the agent takes well under a second; a loaded host gets the rest. */
const BOOT_TIMEOUT_MS = 30_000;
/** Firecracker's own memory beyond the guest's (a few MiB measured by its authors), with room for the supervisor and bwrap. */
const FIRECRACKER_OVERHEAD_MIB = 128;
/** Firecracker's threads (the VMM, the API server, one per vCPU) and the supervisor. */
const FIRECRACKER_PIDS_MAX = 128;

/**
 * A sandbox's VM files, as for qemu: `vm/` is pyro's (the console log and a
 * task's disk, handed to the VM's uid by descriptor), `vm/run/` the VM's
 * (the supervisor's socket, Firecracker's API socket and its vsock socket,
 * all made by the processes in the jail).
 */
export function firecrackerPaths(dir: string) {
  const vm = vmDirPaths(dir);
  return { ...vm, api: join(vm.runDir, "api.sock"), vsock: join(vm.runDir, "v.sock") };
}

/**
 * What the driver asks of the host before it boots anything. The real one
 * is the only one the product uses; the integration suite passes another to
 * run the whole driver around a stand-in for Firecracker on a host where
 * the real one cannot run (test/integration/firecracker-standin.test.ts).
 */
export interface FirecrackerHost {
  /** KVM usable (and, as root, open to the sandbox uid), a firecracker binary of v1.8+, the agent built. */
  support(): FirecrackerSupport;
  /** The tun device bound into a jail with network (the host's /dev/net/tun; a test's own node of it). */
  tunDevice?: string;
}

const REAL_HOST: FirecrackerHost = { support: () => firecrackerSupport(), tunDevice: TUN_DEVICE };

export class FirecrackerDriver extends VmDriverBase implements Driver {
  readonly name = "firecracker" as const;

  constructor(private readonly host: FirecrackerHost = REAL_HOST) {
    super();
  }

  isolation(): Isolation {
    return { driver: "firecracker", kind: "microvm", accel: "kvm" };
  }

  /** Says what is missing before anything is built or made: a host without KVM or firecracker gets one clear error. */
  private runnable(): FirecrackerSupport & { binary: string } {
    const support = this.host.support();
    if (!support.available || !support.binary) {
      throw new PyroError("driver_unavailable", `The firecracker driver cannot run here: ${support.reason}.`, {
        hint: "Use --driver qemu (a VM under TCG where KVM does not work) or --driver namespace; `pyro doctor` shows what each driver needs.",
      });
    }
    return { ...support, binary: support.binary };
  }

  /** The environment's kernel, initramfs and root image (the qemu driver's, shared): built on first VM use. */
  async prepare(environment: { name: string; rootfs: string }, options: { signal?: AbortSignal; onProgress?: ProgressListener } = {}): Promise<VmBootFiles> {
    this.runnable();
    const a = await ensureVmArtifacts(environment, { signal: options.signal, progress: options.onProgress });
    return { kernel: a.kernel.path, initramfs: a.initramfs.path, root_image: a.rootfs_image.path };
  }

  async start(spec: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<SandboxHandle> {
    const { binary: firecracker, jailer } = this.runnable();
    checkVmMemory("firecracker", spec.mem_mib);
    if (spec.vcpu_count > 32) throw new PyroError("invalid_argument", `Firecracker gives a VM at most 32 vCPUs (vcpu_count ${spec.vcpu_count} was asked).`, { hint: "Ask for 32 or fewer." });
    if (!spec.vm) throw new PyroError("internal", "The firecracker driver was started without the environment's VM artifacts.");
    const agent = agentBinaryPath();
    const bwrap = findExecutable("bwrap");
    if (!bwrap) throw new PyroError("driver_unavailable", "bwrap is not installed: the firecracker driver jails each firecracker with it.", { hint: "apt-get install -y bubblewrap" });
    const owner = sandboxOwner();
    if (jailer && !owner) throw new PyroError("driver_unavailable", "Firecracker's jailer (PYRO_JAILER) runs only when pyro is root.", { hint: "Run pyro as root, or unset PYRO_JAILER." });
    // The jailer puts firecracker in a network namespace of its own, not the jail's where pyro makes the TAP: refused rather than booted without the network asked for.
    if (jailer && spec.network) throw new PyroError("invalid_argument", "Firecracker's jailer (PYRO_JAILER) does not give VMs a network in this release: its firecracker runs in a network namespace of its own, away from the TAP pyro makes.", { hint: "Run without network, or unset PYRO_JAILER for a firecracker VM with network." });
    const tun = spec.network ? (this.host.tunDevice ?? TUN_DEVICE) : null;
    // Before anything is made: the TAP is the only network Firecracker has, and its uid must be able to open it.
    if (tun) checkFirecrackerNetwork(owner, tun);
    for (const [what, p] of Object.entries(spec.vm)) {
      // Firecracker opens them only when asked to boot: say which is missing before a jail is made around it.
      if (!existsSync(p)) throw new PyroError("sandbox_failed", `The environment's VM ${what.replace("_", " ")} ${p} is missing.`, { hint: "Run the command again: the VM artifacts are checked and rebuilt on use (or `pyro env prune` and pull the environment)." });
    }
    const paths = firecrackerPaths(resolve(spec.dir));
    // On the jailer's path the supervisor reaches the vsock through paths.vsock, a link into the chroot; pyro reaches the API by its inode.
    checkSocketPaths([paths.socket, paths.api, paths.vsock]);
    prepareVmDir(paths, owner);
    // Tasks and persistent VMs keep their writable layer on their own disk; one-shot runs keep it in guest RAM.
    const data: DataLayer = spec.keep_layer ? { kind: "disk", path: paths.disk } : { kind: "ram", mib: spec.disk_mib };
    if (data.kind === "disk") ensureDataDisk(paths.disk, spec.disk_mib, owner);

    writeJsonAtomic(join(spec.dir, VM_NOTES), { cgroups: plannedCgroupDirs(spec.id), processes: [] } satisfies VmNotes, { durable: false });
    const cgroups = createSandboxCgroups(spec.id, { mem_mib: spec.mem_mib + FIRECRACKER_OVERHEAD_MIB, vcpu_count: spec.vcpu_count, pids_max: FIRECRACKER_PIDS_MAX });
    let supervised: ProcessIdentity[] = [];
    let jail: JailedFirecracker | null = null;
    let pasta: ProcessIdentity[] = [];
    let network: NetworkInfo = LOOPBACK_ONLY;
    const notes = (processes: ProcessIdentity[], complete = false) =>
      writeJsonAtomic(join(spec.dir, VM_NOTES), { cgroups: cgroups.dirs, processes: [...processes, ...pasta, ...(jail?.processes() ?? [])], complete } satisfies VmNotes, { durable: false });
    try {
      const boot = spec.vm;
      const files = { kernel: resolve(boot.kernel), initramfs: resolve(boot.initramfs), root_image: resolve(boot.root_image) };
      // Firecracker's jailer (jailer.ts), beside the supervisor: firecracker in a chroot of its own, the supervisor relaying its console.
      if (jailer && owner) {
        const layout = jailLayout(paths.vmDir, JailedFirecracker.execName(firecracker, realpathSync), spec.id, files, data.kind === "disk" ? data.path : null);
        jail = new JailedFirecracker(layout, { jailer, firecracker, owner, cgroups: cgroups.dirs, note: () => notes(supervised), consoleTail: () => consoleTail(paths.console) });
      }
      const relayed = jail?.prepare(paths.vsock);
      const requests = bootRequests(jail ? jailedMicroVm(spec, data) : microVm(spec, files, data, paths.vsock));
      const sh = findExecutable("sh") ?? "/bin/sh";
      const vmmArgs = vmmArgv(
        {
          agent,
          listen: paths.socket,
          guest: `vsock:${paths.vsock}:${AGENT_VSOCK_PORT}`,
          console: paths.console,
          bootTimeoutMs: BOOT_TIMEOUT_MS,
          deadline: spec.deadline,
          dieWithParent: spec.die_with_parent,
          pass: jail ? 1 : 0,
        },
        jail ? consoleRelayArgv(sh, VMM_PASS_FD) : firecrackerArgs(firecracker, paths.api, spec.id),
      );
      // Inside the jail every file is at its own path, so the processes' argv names the sandbox's directory.
      const readOnly = jail ? [agent] : [files.kernel, files.initramfs, files.root_image, agent, firecracker];
      const writable = jail ? supervisorWritable(paths, jail.layout) : [paths.vmDir];
      const stage = (p: string) => (owner ? launchStaged(p) : p);
      const jailed = jailArgs({ readOnly, writable, source: stage }, { dieWithParent: spec.die_with_parent, kvm: !jail, ...(tun ? { tun } : {}) }, vmmArgs);
      const command = jailCommand(bwrap, jailed, owner ? { agent, owner, binds: [...readOnly, ...writable], kvm: !jail && kvmDeviceGroup() !== null } : null);
      const { child, vmm, monitors } = await startSupervisor({
        command,
        cgroups: cgroups.dirs,
        notes: (processes) => notes((supervised = processes)),
        bootTimeoutMs: BOOT_TIMEOUT_MS,
        signal: options.signal,
        ...(relayed ? { pass: [relayed as Socket] } : {}),
        // A VM with network has its TAP in the jail before Firecracker (not started yet) could be asked to open it.
        ...(tun
          ? {
              prepare: async (jailPid: ProcessIdentity) => {
                const net = await startJailNetwork(jailPid, spec.dir, agent, owner, (p) => {
                  pasta = p;
                  notes(supervised);
                }, tun);
                network = net.info;
              },
            }
          : {}),
        // While the supervisor waits for the guest's vsock socket, configure and start the microVM.
        configure: (gone) => (jail ? jail.start(requests, () => supervised, gone, BOOT_TIMEOUT_MS) : configureAndStart(paths.api, requests, { timeoutMs: BOOT_TIMEOUT_MS, gone })),
        failure: (why) =>
          new PyroError("sandbox_failed", `The firecracker VM did not boot to its agent: ${why}.`, {
            hint: `Its console is in ${paths.console}; run \`pyro doctor\` to check firecracker, /dev/kvm and the VM artifacts.`,
          }),
        consoleTail: () => consoleTail(paths.console),
      });
      child.unref();
      // Firecracker is the supervisor's child in the jail: killing the supervisor (PID 1 there) ends it; pasta is outside, killed with it.
      notes([vmm, ...monitors], true);
      pauseAt("boot:info");
      if (!kvmVerdict() && this.host === REAL_HOST) recordKvmVerdict({ usable: true, detail: "a Firecracker VM booted to its agent under KVM on this host" });
      return {
        driver: "firecracker",
        process: vmm,
        socket: paths.socket,
        helpers: [...monitors, ...pasta, ...(jail?.processes() ?? [])],
        cgroups: cgroups.dirs,
        network,
        // The agent writes /etc/resolv.conf from pyro.dns as it boots, as under qemu.
        ...(network.enabled ? { dns_configured: true } : {}),
        limits: vmLimits({ mem_mib: spec.mem_mib, vcpu_count: spec.vcpu_count, pids_max: spec.pids_max, disk_mib: data.kind === "disk" ? spec.disk_mib : data.mib, disk: data.kind === "disk" ? "ext4-image" : "tmpfs", shm_mib: shmMib(spec.mem_mib) }),
        started_at: new Date().toISOString(),
        isolation: this.isolation(),
        boot: "cold",
      };
    } catch (error) {
      if (jail) {
        // Firecracker is nobody's child here: killed by name, then whatever is left in the cgroups, before its chroot goes.
        await jail.kill();
        // A group still busy stays named by the notes (cleanupDir retries): the start's own error is the one reported.
        await releaseSandboxCgroups(cgroups.dirs).catch(() => undefined);
        removeJailRoot(paths.vmDir, cgroups.dirs);
      }
      // The jail is gone (startSupervisor killed it); pasta runs beside it and holds its network namespace.
      if (pasta.length) await killTrees(pasta);
      removeSandboxCgroups(cgroups.dirs);
      throw error;
    }
  }

  /** The sockets Firecracker and the supervisor leave in run/ (the directory itself is made afresh on the next boot). */
  cleanup(handle: SandboxHandle): void {
    removeSandboxCgroups(handle.cgroups);
    const runDir = join(handle.socket, "..");
    for (const p of [handle.socket, join(runDir, "api.sock"), join(runDir, "v.sock")]) rmSync(p, { force: true });
    removeJailRoot(join(runDir, ".."), handle.cgroups);
  }

  /** As every VM driver's, with the jailer's chroot last: firecracker, named by no argv, is found through the cgroups and killed first. */
  override async cleanupDir(dir: string): Promise<void> {
    const notes = readJsonOrNull<VmNotes>(join(dir, VM_NOTES));
    if (notes) await releaseSandboxCgroups(notes.cgroups);
    removeJailRoot(firecrackerPaths(resolve(dir)).vmDir, notes?.cgroups ?? []);
    await super.cleanupDir(dir);
  }

  /** The sockets of a VM nobody runs any more (Firecracker's API and vsock sockets, the supervisor's). */
  protected releaseLeftovers(dir: string): void {
    const paths = firecrackerPaths(dir);
    if (!processesNaming(`${dir}/`).length) for (const p of [paths.socket, paths.api, paths.vsock]) rmSync(p, { force: true });
  }
}
