import { closeSync, existsSync, lchownSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { PyroError } from "../../core/errors.js";
import { ensureDir, writeJsonAtomic } from "../../util/fsutil.js";
import { agentBinaryPath } from "../../util/agent-binary.js";
import { isAlive, killTrees, waitForExit, type ProcessIdentity } from "../../util/proc.js";
import { sandboxOwner, type SandboxOwner } from "../../util/sandbox-user.js";
import { pauseAt } from "../../util/testhook.js";
import { findExecutable, qemuBinaryName, qemuPackage } from "../availability.js";
import { createSandboxCgroups, plannedCgroupDirs, removeSandboxCgroups } from "../cgroups.js";
import type { Driver, Isolation, SandboxHandle, SandboxSpec, VmBootFiles } from "../types.js";
import { ensureVmArtifacts } from "../../environments/vm/index.js";
import type { ProgressListener } from "../../util/progress.js";
import { AGENT_CHARDEV_FD, qemuArgs, shmMib, type DataLayer, type QemuPaths } from "./args.js";
import { vmLimits } from "../limits.js";
import { checkVmMemory } from "../vm/guest.js";
import { launchStaged } from "../launch.js";
import { LOOPBACK_ONLY } from "../network.js";
import { kvmDeviceGroup, kvmVerdict, recordKvmVerdict, rootKvmBlocked } from "../vm/kvm.js";
import { jailArgs, jailCommand } from "../vm/jail.js";
import { VM_NOTES, VmDriverBase, type VmNotes } from "../vm/base.js";
import { startSupervisor, vmmArgv, VMM_PASS_FD, VMM_PASS_FD2, type Supervised } from "../vm/supervisor.js";
import { checkSocketPaths, consoleTail, ensureDataDisk, prepareVmDir, vmDirPaths } from "../vm/files.js";
import { signalGroup } from "../spawned.js";
import { Qmp } from "./qmp.js";
import { commitSnapshot, migrationSink, openSnapshot, readSnapshot, removeSnapshot, snapshotPlan, sweepTemps, tempPath, templateSpec, type SnapshotMeta, type SnapshotPlan } from "./snapshot.js";
import { acquireLock } from "../../util/lock.js";
import { PASST_NETWORK, passtFailure, startPasst } from "./passt.js";
import type { Server, Socket } from "node:net";

/**
 * The qemu driver: each sandbox is a `-M microvm` VM booted from the
 * environment's VM artifacts (src/environments/vm/) to pyro-agent as its
 * /init, reached over one virtio-serial port. qemu runs under the VM
 * supervisor (`pyro-agent vmm`, guest/vmm.c): the process whose life is the
 * sandbox's life, which multiplexes the host's many connections onto the
 * one port, caps the console log, ends the VM at its deadline and takes it
 * down when it is killed (qemu dies with it: PR_SET_PDEATHSIG).
 *
 * As root the supervisor and qemu run as pyro's sandbox uid (through
 * `pyro-agent launch`, like bwrap for the namespace driver): an escape from
 * qemu lands in an unprivileged account, and qemu's own seccomp sandbox is on.
 */

/** TCG boots Debian's cloud kernel to the agent in ~2-3 s alone; a loaded 2-core host can take several times that. */
const BOOT_TIMEOUT_MS = 60_000;
/** Under KVM a boot that takes longer than this is not KVM working (a PVM /dev/kvm crawls): TCG takes over. */
const KVM_PROOF_TIMEOUT_MS = 15_000;
/** A restore answers in well under a second under TCG; one that takes this long is not going to: boot cold instead. */
const RESTORE_TIMEOUT_MS = 20_000;
/** qemu's own memory beyond the guest's: the TCG code buffer, the vmlinux mapping, device state. */
const QEMU_OVERHEAD_MIB = 384;
/** qemu's threads (vCPUs, I/O, RCU, the TCG workers) and the supervisor. */
const QEMU_PIDS_MAX = 256;

/** What one start of a VM shares between its steps (a template boot, then the restore or cold boot). */
interface BootContext {
  spec: SandboxSpec;
  agent: string;
  qemu: string;
  bwrap: string;
  paths: ReturnType<typeof vmPaths>;
  data: DataLayer;
  accel: "kvm" | "tcg";
  bootTimeoutMs: number;
  owner: SandboxOwner | null;
  cgroups: string[];
  notes: (processes: ProcessIdentity[], complete?: boolean) => void;
  /** Processes every later note names too (passt, once spawned), whatever the step writing the note knows. */
  addNoted: (p: ProcessIdentity) => void;
  setDebris: (paths: string[]) => void;
  signal?: AbortSignal;
}

type LaunchMode = { kind: "cold"; detail?: string } | { kind: "restore"; plan: SnapshotPlan; meta: SnapshotMeta };

/**
 * The fds a VMM is passed, and the number each has in the jail: a
 * restore's snapshot file first (VMM_PASS_FD), then passt's end of its
 * socketpair (the next number, or the first for a cold boot). A template's
 * NIC has no peer ("template": a hub port that drops every frame). One
 * plan for both qemu's argv and the order the launch hands the fds over.
 */
export function passedFds(kind: LaunchMode["kind"] | "template", network: boolean): { snapshot: number | null; net: number | "template" | null; count: 0 | 1 | 2 } {
  const snapshot = kind === "restore" ? VMM_PASS_FD : null;
  const net = !network ? null : kind === "template" ? "template" : snapshot === null ? VMM_PASS_FD : VMM_PASS_FD2;
  return { snapshot, net, count: ((snapshot === null ? 0 : 1) + (typeof net === "number" ? 1 : 0)) as 0 | 1 | 2 };
}

/**
 * The files a sandbox's VM uses. `vm/` belongs to pyro (root as root): the
 * disk and the console log are made there by pyro and handed to the VM's
 * uid by descriptor, so the VM's uid can write them but cannot create,
 * rename or replace any name in it (a root pyro that made files where the
 * VM's uid could plant a link would write where that uid chose). Only
 * `vm/run/` (its sockets) is the VM's. The driver's notes stay one level up.
 */
export function vmPaths(dir: string): QemuPaths & ReturnType<typeof vmDirPaths> & { migrate: string; passtLog: string } {
  const vm = vmDirPaths(dir);
  return {
    ...vm,
    qmp: join(vm.runDir, "qmp.sock"),
    // A template VM migrates to it (pyro listens); a restored VM reads its snapshot from an fd.
    migrate: join(vm.runDir, "migrate.sock"),
    // passt's stderr: pyro's file, one level above the VM's, handed to passt as an fd.
    passtLog: join(dir, "passt.log"),
  };
}

export class QemuDriver extends VmDriverBase implements Driver {
  readonly name = "qemu" as const;

  /** The acceleration the next VM gets: KVM only where a boot under it has succeeded on this host boot. */
  private accel(): "kvm" | "tcg" {
    if (process.env.PYRO_QEMU_ACCEL === "tcg" || rootKvmBlocked()) return "tcg";
    return kvmVerdict()?.usable ? "kvm" : "tcg";
  }

  /** The environment's kernel, initramfs and root image: built on its first VM use, checked (cheaply) on every later one. */
  async prepare(environment: { name: string; rootfs: string }, options: { signal?: AbortSignal; onProgress?: ProgressListener } = {}): Promise<VmBootFiles> {
    const a = await ensureVmArtifacts(environment, { signal: options.signal, progress: options.onProgress });
    return { kernel: a.kernel.path, initramfs: a.initramfs.path, root_image: a.rootfs_image.path };
  }

  isolation(): Isolation {
    const accel = this.accel();
    return { driver: "qemu", kind: accel === "kvm" ? "microvm" : "emulated-vm", accel };
  }

  async start(spec: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<SandboxHandle> {
    // A host whose KVM is not proven yet (and not ruled out) proves it with this very VM, with a short
    // deadline; a failure there is remembered and the VM boots under TCG instead.
    // As root with a /dev/kvm only root may open, the sandbox uid cannot use KVM: TCG, without a proof (and no verdict: it is this uid's, not the host's).
    const blocked = rootKvmBlocked();
    const known = kvmVerdict();
    const verdict = process.env.PYRO_QEMU_ACCEL === "tcg" ? { usable: false, detail: "PYRO_QEMU_ACCEL=tcg" } : known && !known.usable ? known : blocked ? { usable: false, detail: blocked } : known;
    if (verdict === null) {
      try {
        const handle = await this.boot(spec, "kvm", KVM_PROOF_TIMEOUT_MS, { ...options, snapshots: false });
        recordKvmVerdict({ usable: true, detail: "a VM booted to its agent under KVM on this host" });
        return handle;
      } catch (error) {
        if (options.signal?.aborted) throw error;
        recordKvmVerdict({ usable: false, detail: `a VM did not boot under KVM on this host (${(error as Error).message.slice(0, 200)}); qemu runs under TCG` });
      }
    }
    return this.boot(spec, verdict?.usable ? "kvm" : "tcg", BOOT_TIMEOUT_MS, options);
  }

  private async boot(spec: SandboxSpec, accel: "kvm" | "tcg", bootTimeoutMs: number, options: { signal?: AbortSignal; snapshots?: boolean }): Promise<SandboxHandle> {
    checkVmMemory("qemu", spec.mem_mib);
    if (!spec.vm) throw new PyroError("internal", "The qemu driver was started without the environment's VM artifacts.");
    // Checked: a clone's source build, or the package's prebuilt one with the digest recorded at build (util/agent-binary.ts).
    const agent = agentBinaryPath();
    const qemu = findExecutable(qemuBinaryName());
    if (!qemu) {
      throw new PyroError("driver_unavailable", `${qemuBinaryName()} is not installed.`, { hint: `apt-get install -y ${qemuPackage()}; then \`pyro doctor\`.` });
    }
    const owner = sandboxOwner();
    const bwrap = findExecutable("bwrap");
    if (!bwrap) throw new PyroError("driver_unavailable", "bwrap is not installed: the qemu driver jails each qemu with it.", { hint: "apt-get install -y bubblewrap" });
    const paths = vmPaths(resolve(spec.dir));
    prepareVmDir(paths, owner);
    checkSocketPaths([paths.socket, paths.qmp, paths.migrate]);
    // Tasks and persistent VMs keep their writable layer on their own disk; one-shot runs keep it in guest RAM.
    // The RAM layer is a tmpfs in the guest: disk_mib caps it, and the guest's RAM caps it before that.
    const data: DataLayer = spec.keep_layer ? { kind: "disk", path: paths.disk } : { kind: "ram", mib: spec.disk_mib };
    if (data.kind === "disk") ensureDataDisk(paths.disk, spec.disk_mib, owner);
    // Only one-shot VMs restore: their whole state is in RAM, so the snapshot is all of it; a VM with a disk of
    // its own would resume with a page cache and file system state that disagree with the disk.
    // A VM with network restores too, from a template of its own shape: that template configured the same static
    // addresses (the kernel command line's, which every passt is told too) on a virtio-net device whose backend
    // dropped every frame, and made no connection, so the restored guest's stack holds nothing of another passt:
    // no socket, no neighbour entry (measured: none, the template had no peer to learn one from; the gateway's MAC a
    // restored guest then learns by ARP is its own passt's). So nothing is flushed or re-announced after a restore.
    const plan = data.kind === "ram" && options.snapshots !== false && process.env.PYRO_QEMU_SNAPSHOTS !== "off" ? snapshotPlan(spec, data, accel, qemu, agent) : null;

    writeJsonAtomic(join(spec.dir, VM_NOTES), { cgroups: plannedCgroupDirs(spec.id), processes: [] } satisfies VmNotes, { durable: false });
    const cgroups = createSandboxCgroups(spec.id, { mem_mib: spec.mem_mib + QEMU_OVERHEAD_MIB, vcpu_count: spec.vcpu_count, pids_max: QEMU_PIDS_MAX });
    let debris: string[] = [];
    const noted: ProcessIdentity[] = [];
    const notes = (processes: ProcessIdentity[], complete = false) =>
      writeJsonAtomic(join(spec.dir, VM_NOTES), { cgroups: cgroups.dirs, processes: [...processes, ...noted.filter((n) => !processes.some((p) => p.pid === n.pid))], complete, ...(debris.length ? { debris } : {}) } satisfies VmNotes, { durable: false });
    const addNoted = (p: ProcessIdentity) => {
      noted.push(p);
      notes([]);
    };
    const ctx: BootContext = { spec, agent, qemu, bwrap, paths, data, accel, bootTimeoutMs, owner, cgroups: cgroups.dirs, notes, addNoted, setDebris: (d) => (debris = d), signal: options.signal };
    try {
      let detail: string | undefined;
      if (plan) {
        let meta = readSnapshot(plan);
        if (!meta) {
          try {
            meta = await this.makeSnapshot(ctx, plan);
          } catch (error) {
            if (options.signal?.aborted) throw error;
            detail = `no snapshot could be made (${(error as Error).message.slice(0, 300)}): booted cold`;
          }
        }
        if (meta) {
          try {
            return await this.launch(ctx, { kind: "restore", plan, meta });
          } catch (error) {
            if (options.signal?.aborted) throw error;
            // Whatever failed (damage the size check missed, a qemu that cannot load it), the next one-shot rebuilds it.
            if (readSnapshot(plan)?.sha256 === meta.sha256) removeSnapshot(plan);
            detail = `the snapshot did not restore (${(error as Error).message.slice(0, 300)}): it was removed and this VM booted cold`;
          }
        }
      }
      return await this.launch(ctx, { kind: "cold", detail });
    } catch (error) {
      removeSandboxCgroups(cgroups.dirs);
      throw error;
    }
  }

  /** Starts the supervisor and its qemu (vm/supervisor.ts), and waits for its ready line. Kills what it started on any failure. */
  private startVmm(ctx: BootContext, mode: LaunchMode | { kind: "template" }, command: { file: string; args: string[] }, pass?: Array<Socket | number>): Promise<Supervised> {
    const what = mode.kind === "restore" ? "restore to its agent" : mode.kind === "template" ? "boot to its agent (as a snapshot's template)" : "boot to its agent";
    return startSupervisor({
      command,
      cgroups: ctx.cgroups,
      notes: (processes) => ctx.notes(processes),
      bootTimeoutMs: ctx.bootTimeoutMs,
      signal: ctx.signal,
      // At VMM_PASS_FD (and VMM_PASS_FD2) of the jail: a restore's snapshot file (-incoming fd:N), then passt's peer (qemu's -netdev).
      pass,
      pausePoint: mode.kind === "template" ? "snapshot:spawned" : "boot:spawned",
      failure: (why) =>
        new PyroError("sandbox_failed", `The ${ctx.accel === "kvm" ? "KVM" : "TCG"} VM did not ${what}: ${why}.`, {
          hint: `Its console is in ${ctx.paths.console}; run \`pyro doctor\` to check qemu and the VM artifacts.`,
        }),
      consoleTail: () => consoleTail(ctx.paths.console),
    });
  }

  /** A cold boot, or a restore of a snapshot: the sandbox's own VM. */
  private async launch(ctx: BootContext, mode: LaunchMode): Promise<SandboxHandle> {
    const { spec, data, accel } = ctx;
    const command = this.command(ctx, mode);
    // A restore's qemu reads the snapshot from this fd (checked first); the jail has its own copy once spawned.
    const snapshotFd = mode.kind === "restore" ? await openSnapshot(mode.plan, mode.meta) : null;
    // The network first: passt and qemu share a socketpair, whose pyro end goes to the jail as it is spawned.
    const launcher = ctx.owner ? { agent: ctx.agent, owner: ctx.owner } : null;
    const net = spec.network ? startPasst(ctx.paths.runDir, ctx.paths.passtLog, launcher, ctx.addNoted) : null;
    const passt = net?.identity ?? null;
    let started;
    try {
      // At the numbers command() put in qemu's argv.
      const fds = command.fds;
      const pass: Array<Socket | number> = [];
      if (fds.snapshot !== null && snapshotFd !== null) pass[fds.snapshot - VMM_PASS_FD] = snapshotFd;
      if (typeof fds.net === "number" && net) pass[fds.net - VMM_PASS_FD] = net.peer;
      if (pass.length !== fds.count || pass.includes(undefined as never)) throw new PyroError("internal", `The VM's passed fds do not match their plan (${pass.length} of ${fds.count}).`);
      started = await this.startVmm(ctx, mode, command, pass);
      // passt lives as long as qemu holds its end: one gone by now failed (its options, its isolation).
      if (passt && !isAlive(passt)) throw passtFailure(ctx.paths.passtLog);
    } catch (error) {
      net?.peer.destroy();
      if (started) await killTrees([started.vmm, ...started.monitors]);
      if (passt) await killTrees([passt]);
      throw error;
    } finally {
      if (snapshotFd !== null) closeSync(snapshotFd);
    }
    const { child, vmm, monitors } = started;
    child.unref();
    // qemu is the supervisor's child in the jail: killing the supervisor (PID 1 there) ends it. passt ends when
    // qemu's end of their socketpair closes; killed with the VM all the same.
    const helpers = [...monitors, ...(passt ? [passt] : [])];
    ctx.notes([vmm, ...helpers], true);
    pauseAt("boot:info");
    return {
      driver: "qemu",
      process: vmm,
      socket: ctx.paths.socket,
      helpers,
      cgroups: ctx.cgroups,
      network: passt ? PASST_NETWORK : LOOPBACK_ONLY,
      // The guest agent wrote /etc/resolv.conf from pyro.dns at boot (guest/vminit.c).
      ...(passt ? { dns_configured: true } : {}),
      limits: vmLimits({ mem_mib: spec.mem_mib, vcpu_count: spec.vcpu_count, pids_max: spec.pids_max, disk_mib: data.kind === "disk" ? spec.disk_mib : data.mib, disk: data.kind === "disk" ? "ext4-image" : "tmpfs", shm_mib: shmMib(spec.mem_mib) }),
      started_at: new Date().toISOString(),
      isolation: { driver: "qemu", kind: accel === "kvm" ? "microvm" : "emulated-vm", accel },
      boot: mode.kind === "restore" ? "restored" : "cold",
      ...(mode.kind === "cold" && mode.detail ? { boot_detail: mode.detail } : {}),
    };
  }

  /**
   * Boots a template VM of this shape to its agent (`vmm --prepare-snapshot`:
   * after HELLO and SYNC it drops the guest stream, so the saved agent waits
   * for the next host), pauses it and migrates it into the cache. Under the
   * key's lock, as a temp file renamed into place: a concurrent maker waits
   * and takes the result, a killed one leaves a temp file that the next
   * maker (or the reaper, through the sandbox's notes) removes.
   */
  private async makeSnapshot(ctx: BootContext, plan: SnapshotPlan): Promise<SnapshotMeta> {
    ensureDir(plan.dir, 0o755);
    const lock = await acquireLock(plan.lock, { timeoutMs: 5 * 60_000, what: "a VM snapshot", signal: ctx.signal });
    let template: Supervised | null = null;
    const temp = tempPath(plan);
    const sink = { server: null as Server | null };
    try {
      const made = readSnapshot(plan);
      if (made) return made;
      sweepTemps(plan);
      ctx.setDebris([temp]);
      template = await this.startVmm(ctx, { kind: "template" }, this.command(ctx, { kind: "template" }));
      ctx.notes([template.vmm, ...template.monitors]);
      const s = migrationSink(ctx.paths.migrate, temp);
      sink.server = s.server;
      await s.listening;
      // qemu (the sandbox uid, as root) connects to it; lchown: run/ is the VM's, never follow a name there.
      if (ctx.owner) lchownSync(ctx.paths.migrate, ctx.owner.uid, ctx.owner.gid);
      const qmp = await Qmp.connect(ctx.paths.qmp, 10_000);
      try {
        await qmp.cmd("stop");
        await qmp.cmd("migrate", { uri: `unix:${this.staged(ctx, ctx.paths.migrate)}` });
        const deadline = Date.now() + ctx.bootTimeoutMs;
        let streaming = false;
        for (;;) {
          if (!streaming && existsSync(temp)) {
            streaming = true;
            pauseAt("snapshot:migrating");
          }
          const st = (await qmp.cmd("query-migrate")) as { status?: unknown; "error-desc"?: unknown };
          if (st.status === "completed") break;
          if (st.status === "failed" || st.status === "cancelled") throw new Error(`qemu's migration ${String(st.status)}: ${String(st["error-desc"] ?? "").slice(0, 300)}`);
          if (Date.now() > deadline) throw new Error("qemu's migration did not complete in time");
          await new Promise((r) => setTimeout(r, 10));
        }
      } finally {
        qmp.close();
      }
      const got = await s.done;
      await this.endTemplate(template);
      template = null;
      pauseAt("snapshot:commit");
      const meta = commitSnapshot(plan, temp, got, ctx.qemu);
      ctx.setDebris([]);
      ctx.notes([]);
      return meta;
    } catch (error) {
      rmSync(temp, { force: true });
      ctx.setDebris([]);
      throw error;
    } finally {
      sink.server?.close();
      if (template) await this.endTemplate(template);
      for (const p of [ctx.paths.migrate, ctx.paths.qmp]) rmSync(p, { force: true });
      lock.release();
    }
  }

  private async endTemplate(t: Supervised): Promise<void> {
    if (t.child.pid) signalGroup(t.child.pid, "SIGKILL");
    await killTrees([t.vmm, ...t.monitors]);
    await waitForExit(t.vmm, 5_000);
  }

  /** A path as the supervisor and qemu see it: the jail binds every file at its own path. */
  private staged(_ctx: BootContext, p: string): string {
    return resolve(p);
  }

  /**
   * The jail and the supervisor in it (jail.ts): bwrap around `pyro-agent
   * vmm` around qemu; as root, through `pyro-agent launch`, which stages the
   * files where the sandbox uid can reach them and runs bwrap as that uid.
   * Inside the jail every file is at its own path, so the processes' argv
   * names the sandbox's directory (what cleanupDir looks for).
   */
  private command(ctx: BootContext, mode: LaunchMode | { kind: "template" }): { file: string; args: string[]; fds: ReturnType<typeof passedFds> } {
    const { spec, agent, qemu, bwrap, paths, data, accel, bootTimeoutMs, owner } = ctx;
    const boot = spec.vm!;
    const readOnly = [resolve(boot.kernel), resolve(boot.initramfs), resolve(boot.root_image), agent];
    const writable = [paths.vmDir];
    const files = { kernel: readOnly[0]!, initramfs: readOnly[1]!, root_image: readOnly[2]! };
    // A template and its restores boot the same argv (the saved state is that machine's), apart from the sockets
    // and the network's backend: a template's drops every frame, a restore's is its own passt.
    const snap = mode.kind !== "cold";
    const fds = passedFds(mode.kind, spec.network);
    const qemuArgv = qemuArgs(snap ? templateSpec(spec) : spec, files, data, { qmp: paths.qmp, ...(fds.net !== null ? { netFd: fds.net } : {}) }, accel, undefined, snap);
    // The snapshot's file: qemu loads it and, the template's run state not being in it
    // (args.ts: store-global-state=off), runs the guest at once; the vmm's HELLO is already waiting.
    if (fds.snapshot !== null) qemuArgv.push("-incoming", `fd:${fds.snapshot}`);
    const vmmArgs = vmmArgv(
      {
        agent,
        // A template serves nothing: the vmm drops the guest stream after SYNC and the VM waits to be saved.
        ...(mode.kind === "template" ? { prepareSnapshot: true } : { listen: paths.socket }),
        guest: `fd:${AGENT_CHARDEV_FD}`,
        console: paths.console,
        bootTimeoutMs: mode.kind === "restore" ? RESTORE_TIMEOUT_MS : bootTimeoutMs,
        deadline: spec.deadline,
        dieWithParent: spec.die_with_parent || mode.kind === "template",
        // A restore's snapshot and passt's socketpair end, passed through bwrap and the supervisor to qemu at the same numbers.
        pass: fds.count,
      },
      [qemu, ...qemuArgv],
    );
    const dieWithParent = spec.die_with_parent || mode.kind === "template";
    const stage = (p: string) => (owner ? launchStaged(p) : p);
    const jail = jailArgs({ readOnly, writable, source: stage }, { dieWithParent, kvm: accel === "kvm" }, vmmArgs);
    // The fd plan goes with the argv it numbered, so the launch hands over the same fds.
    return { ...jailCommand(bwrap, jail, owner ? { agent, owner, binds: [...readOnly, ...writable], kvm: accel === "kvm" && kvmDeviceGroup() !== null } : null), fds };
  }

  cleanup(handle: SandboxHandle): void {
    removeSandboxCgroups(handle.cgroups);
    for (const p of [handle.socket]) rmSync(p, { force: true });
  }

  /** A snapshot's temp file of a start killed while it made one (never a finished snapshot: those are renamed from it). */
  protected releaseLeftovers(_dir: string, notes: VmNotes | null): void {
    for (const p of notes?.debris ?? []) if (/\.bin\.tmp-\d+$/.test(p)) rmSync(p, { force: true });
  }
}
