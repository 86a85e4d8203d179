import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, lchownSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { Readable, Writable } from "node:stream";
import { PyroError } from "../../core/errors.js";
import { ensureDir, readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { agentBinaryPath } from "../../util/agent-binary.js";
import { childrenOf, identityOf, isAlive, killTrees, processesNaming, signalIfAlive, waitForExit, type ProcessIdentity } from "../../util/proc.js";
import { sandboxOwner, type SandboxOwner } from "../../util/sandbox-user.js";
import { pauseAt } from "../../util/testhook.js";
import { findExecutable, qemuBinaryName, qemuPackage } from "../availability.js";
import { addProcess, cgroupMembers, createSandboxCgroups, oomKillCount, plannedCgroupDirs, removeSandboxCgroups } from "../cgroups.js";
import type { Driver, Isolation, NetworkInfo, SandboxHandle, SandboxSpec, VmBootFiles } from "../types.js";
import { ensureVmArtifacts } from "../../environments/vm/index.js";
import type { ProgressListener } from "../../util/progress.js";
import { AGENT_CHARDEV_FD, qemuArgs, shmMib, type DataLayer, type QemuPaths } from "./args.js";
import { vmLimits } from "../limits.js";
import { kvmDeviceGroup, kvmVerdict, recordKvmVerdict, rootKvmBlocked } from "../vm/kvm.js";
import { JAIL_BLOCK_FD, JAIL_INFO_FD, jailArgs, jailCommand } from "../vm/jail.js";
import { consoleTail, ensureDataDisk, prepareVmDir } from "../vm/files.js";
import { readUntil, signalGroup } from "../spawned.js";
import { Qmp } from "./qmp.js";
import { commitSnapshot, migrationSink, openSnapshot, readSnapshot, removeSnapshot, snapshotPlan, sweepTemps, tempPath, templateSpec, type SnapshotMeta, type SnapshotPlan } from "./snapshot.js";
import { acquireLock } from "../../util/lock.js";
import type { Server } from "node:net";
import { PASST_NETWORK, passtFailure, startPasst } from "./passt.js";
import type { Socket } from "node:net";

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

const READY_FD = 3;
/** Where the jail, the supervisor and qemu get pyro's end of passt's socketpair (after bwrap's info and block fds). */
const NET_FD = 6;
/** Where a restoring qemu gets the snapshot's file (`-incoming fd:N`): the same slot, as a restored VM has no network. */
const SNAPSHOT_FD = NET_FD;
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
const NOTES = "resources.json";
/** The least guest RAM Debian's cloud kernel boots to our agent in (64 MiB panics during boot). */
export const MIN_VM_MEM_MIB = 128;
const MAX_SOCKET_PATH = 107;
/** Where `pyro-agent launch` stages what it binds (guest/launch.h LAUNCH_STAGE). */
const LAUNCH_STAGE = "/run";
/** The supervisor and qemu get no variable of the host's (API keys, the MCP HTTP token). */
const VMM_ENV: NodeJS.ProcessEnv = {};

interface Notes {
  cgroups: string[];
  processes: ProcessIdentity[];
  complete?: boolean;
  /** Files outside the sandbox's directory that a start cut short leaves (a snapshot's temp file). */
  debris?: string[];
}

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

const NO_NETWORK: NetworkInfo = {
  enabled: false,
  backend: "none",
  interface: null,
  guest_ip: null,
  gateway: null,
  dns: [],
  host_loopback_reachable: false,
};

/**
 * The files a sandbox's VM uses. `vm/` belongs to pyro (root as root): the
 * disk and the console log are made there by pyro and handed to the VM's
 * uid by descriptor, so the VM's uid can write them but cannot create,
 * rename or replace any name in it (a root pyro that made files where the
 * VM's uid could plant a link would write where that uid chose). Only
 * `vm/run/` (its sockets) is the VM's. The driver's notes stay one level up.
 */
export function vmPaths(dir: string): QemuPaths & { vmDir: string; runDir: string; socket: string; console: string; disk: string; migrate: string; passtLog: string } {
  const vmDir = join(dir, "vm");
  const runDir = join(vmDir, "run");
  return {
    vmDir,
    runDir,
    socket: join(runDir, "agent.sock"),
    qmp: join(runDir, "qmp.sock"),
    // A template VM migrates to it (pyro listens); a restored VM reads its snapshot from an fd.
    migrate: join(runDir, "migrate.sock"),
    // passt's stderr: pyro's file, one level above the VM's, handed to passt as an fd.
    passtLog: join(dir, "passt.log"),
    console: join(vmDir, "console.log"),
    // Not the namespace driver's disk.img: what a guest kernel wrote raw is never mounted by the host's.
    disk: join(vmDir, "disk.img"),
  };
}





export class QemuDriver implements Driver {
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
    if (spec.mem_mib < MIN_VM_MEM_MIB) {
      // Below this Debian's kernel panics while booting ("System is deadlocked on memory"): say so before trying.
      throw new PyroError("invalid_argument", `A qemu VM needs at least ${MIN_VM_MEM_MIB} MiB of memory (mem_mib ${spec.mem_mib} was asked).`, {
        hint: `Give mem_mib ${MIN_VM_MEM_MIB} or more, or use --driver namespace for a smaller sandbox.`,
      });
    }
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
    for (const p of [paths.socket, paths.qmp, paths.migrate]) {
      if (p.length > MAX_SOCKET_PATH) {
        throw new PyroError("invalid_argument", `The state directory path is too long for a unix socket (${p.length} bytes).`, { hint: "Set PYRO_STATE_DIR to a shorter directory." });
      }
    }
    // Tasks and persistent VMs keep their writable layer on their own disk; one-shot runs keep it in guest RAM.
    // The RAM layer is a tmpfs in the guest: disk_mib caps it, and the guest's RAM caps it before that.
    const data: DataLayer = spec.keep_layer ? { kind: "disk", path: paths.disk } : { kind: "ram", mib: spec.disk_mib };
    if (data.kind === "disk") ensureDataDisk(paths.disk, spec.disk_mib, owner);
    // Only one-shot VMs restore: their whole state is in RAM, so the snapshot is all of it; a VM with a disk of
    // its own would resume with a page cache and file system state that disagree with the disk.
    // A VM with network boots cold: its passt is its own, and a restored guest would resume a network
    // stack (ARP, connections) that began against the template's.
    const plan = data.kind === "ram" && !spec.network && options.snapshots !== false && process.env.PYRO_QEMU_SNAPSHOTS !== "off" ? snapshotPlan(spec, data, accel, qemu, agent) : null;

    writeJsonAtomic(join(spec.dir, NOTES), { cgroups: plannedCgroupDirs(spec.id), processes: [] } satisfies Notes, { durable: false });
    const cgroups = createSandboxCgroups(spec.id, { mem_mib: spec.mem_mib + QEMU_OVERHEAD_MIB, vcpu_count: spec.vcpu_count, pids_max: QEMU_PIDS_MAX });
    let debris: string[] = [];
    const noted: ProcessIdentity[] = [];
    const notes = (processes: ProcessIdentity[], complete = false) =>
      writeJsonAtomic(join(spec.dir, NOTES), { cgroups: cgroups.dirs, processes: [...processes, ...noted.filter((n) => !processes.some((p) => p.pid === n.pid))], complete, ...(debris.length ? { debris } : {}) } satisfies Notes, { durable: false });
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

  /** Starts the supervisor and its qemu, and waits for its ready line. Kills what it started on any failure. */
  private async startVmm(ctx: BootContext, mode: LaunchMode | { kind: "template" }, command: { file: string; args: string[] }, inherit?: Socket | number): Promise<{ child: ChildProcess; vmm: ProcessIdentity; monitors: ProcessIdentity[] }> {
    let child: ChildProcess | null = null;
    let vmm: ProcessIdentity | null = null;
    const monitors: ProcessIdentity[] = [];
    // The jail's bwrap leads its own process group until it execs the supervisor: a kill of the group
    // reaches a child whose pid bwrap has not reported yet.
    const killGroup = () => {
      if (child?.pid) signalGroup(child.pid, "SIGKILL");
    };
    ctx.signal?.addEventListener("abort", killGroup, { once: true });
    try {
      // fd 6 of the jail (NET_FD, SNAPSHOT_FD): passt's peer of a VM with network, or a restore's snapshot file.
      child = spawn(command.file, command.args, { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe", "pipe", ...(inherit !== undefined ? [inherit] : [])], env: VMM_ENV, detached: true });
      // The jail holds passt's peer now (at NET_FD, for qemu): pyro's copy goes before the event loop could read from it.
      if (typeof inherit === "object") inherit.destroy();
      const spawned = new Promise<never>((_, reject) =>
        child!.once("error", (error) => reject(new PyroError("driver_unavailable", `Cannot start the VM's jail: ${error.message}`, { hint: "Run `pyro doctor`." }))),
      );
      const monitor = child.pid ? identityOf(child.pid) : null;
      if (monitor) {
        monitors.push(monitor);
        ctx.notes([monitor]);
      }
      pauseAt(mode.kind === "template" ? "snapshot:spawned" : "boot:spawned");
      const stdio = child.stdio as unknown as Array<Readable & Writable>;
      const [ready, info, block] = [stdio[READY_FD]!, stdio[JAIL_INFO_FD]!, stdio[JAIL_BLOCK_FD]!];
      for (const pipe of [ready, info, block]) pipe.on("error", () => undefined);
      const stderr = child.stderr!;
      let early = "";
      stderr.on("data", (d: Buffer) => (early = (early + d.toString("utf8")).slice(-2000)));
      // bwrap reports the supervisor's host pid (PID 1 of the jail), then waits: it joins the cgroups before it runs.
      const infoText = await Promise.race([readUntil(info, (t) => t.includes("}"), 15_000), spawned]);
      const childPid = Number(/"child-pid":\s*(\d+)/.exec(infoText)?.[1]);
      vmm = Number.isFinite(childPid) ? identityOf(childPid) : null;
      if (!vmm) throw new PyroError("sandbox_failed", `The VM's jail did not start: ${early.trim().split("\n").slice(-2).join(" | ") || "bwrap reported no process"}.`, { hint: "Run `pyro doctor` to check bubblewrap and user namespaces." });
      addProcess(ctx.cgroups, vmm.pid);
      ctx.notes([vmm, ...monitors]);
      block.end("go");
      const line = await Promise.race([readUntil(ready, (t) => t.startsWith("R") || t.includes("\n"), ctx.bootTimeoutMs + 10_000), spawned]);
      if (!line.startsWith("R")) {
        const why = line.startsWith("E") ? line.slice(1).trim() : early.trim().split("\n").slice(-2).join(" | ") || consoleTail(ctx.paths.console) || "the VM supervisor exited before the guest agent answered";
        const what = mode.kind === "restore" ? "restore to its agent" : mode.kind === "template" ? "boot to its agent (as a snapshot's template)" : "boot to its agent";
        throw new PyroError("sandbox_failed", `The ${ctx.accel === "kvm" ? "KVM" : "TCG"} VM did not ${what}: ${why}.`, {
          hint: `Its console is in ${ctx.paths.console}; run \`pyro doctor\` to check qemu and the VM artifacts.`,
        });
      }
      for (const s2 of [ready, info, stderr]) s2.destroy();
      return { child, vmm, monitors };
    } catch (error) {
      killGroup();
      await killTrees([...(vmm ? [vmm] : []), ...monitors]);
      throw error;
    } finally {
      ctx.signal?.removeEventListener("abort", killGroup);
    }
  }

  /** A cold boot, or a restore of a snapshot: the sandbox's own VM. */
  private async launch(ctx: BootContext, mode: LaunchMode): Promise<SandboxHandle> {
    const { spec, data, accel } = ctx;
    const command = this.command(ctx, mode);
    // A restore's qemu reads the snapshot from this fd (checked first); the jail has its own copy once spawned.
    const snapshotFd = mode.kind === "restore" ? await openSnapshot(mode.plan, mode.meta) : null;
    // The network first: passt and qemu share a socketpair, whose pyro end goes to the jail as it is spawned.
    const launcher = ctx.owner ? { agent: ctx.agent, owner: ctx.owner, stage: LAUNCH_STAGE } : null;
    const net = spec.network ? startPasst(ctx.paths.runDir, ctx.paths.passtLog, launcher, ctx.addNoted) : null;
    const passt = net?.identity ?? null;
    let started;
    try {
      started = await this.startVmm(ctx, mode, command, snapshotFd ?? net?.peer);
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
      network: passt ? PASST_NETWORK : NO_NETWORK,
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
    let template: { child: ChildProcess; vmm: ProcessIdentity; monitors: ProcessIdentity[] } | null = null;
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

  private async endTemplate(t: { child: ChildProcess; vmm: ProcessIdentity; monitors: ProcessIdentity[] }): Promise<void> {
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
  private command(ctx: BootContext, mode: LaunchMode | { kind: "template" }): { file: string; args: string[] } {
    const { spec, agent, qemu, bwrap, paths, data, accel, bootTimeoutMs, owner } = ctx;
    const boot = spec.vm!;
    const readOnly = [resolve(boot.kernel), resolve(boot.initramfs), resolve(boot.root_image), agent];
    const writable = [paths.vmDir];
    const files = { kernel: readOnly[0]!, initramfs: readOnly[1]!, root_image: readOnly[2]! };
    // A template and its restores boot the same argv (the saved state is that machine's), apart from the sockets.
    const snap = mode.kind !== "cold";
    const qemuArgv = qemuArgs(snap ? templateSpec(spec) : spec, files, data, { qmp: paths.qmp, netFd: NET_FD }, accel, undefined, snap);
    // The snapshot's file at SNAPSHOT_FD: qemu loads it and, the template's run state not being in it
    // (args.ts: store-global-state=off), runs the guest at once; the vmm's HELLO is already waiting.
    if (mode.kind === "restore") qemuArgv.push("-incoming", `fd:${SNAPSHOT_FD}`);
    const vmmArgs = [
      agent,
      "vmm",
      ...(mode.kind === "template" ? ["--prepare-snapshot", "--die-with-parent"] : ["--listen", paths.socket]),
      "--guest", `fd:${AGENT_CHARDEV_FD}`,
      "--ready-fd", String(READY_FD),
      "--console", paths.console,
      "--boot-timeout-ms", String(mode.kind === "restore" ? RESTORE_TIMEOUT_MS : bootTimeoutMs),
      ...(spec.deadline ? ["--deadline", String(spec.deadline)] : []),
      ...(spec.die_with_parent && mode.kind !== "template" ? ["--die-with-parent"] : []),
      // passt's socketpair end, passed through bwrap and the supervisor to qemu at the same number.
      ...(spec.network && mode.kind !== "template" ? ["--pass-fd", String(NET_FD)] : []),
      ...(mode.kind === "restore" ? ["--pass-fd", String(SNAPSHOT_FD)] : []),
      "--",
      qemu,
      ...qemuArgv,
    ];
    const dieWithParent = spec.die_with_parent || mode.kind === "template";
    const stage = (p: string) => (owner ? `${LAUNCH_STAGE}/pyro${p}` : p);
    const jail = jailArgs({ readOnly, writable, source: stage }, { dieWithParent, kvm: accel === "kvm" }, vmmArgs);
    return jailCommand(bwrap, jail, owner ? { agent, owner, binds: [...readOnly, ...writable], kvm: accel === "kvm" && kvmDeviceGroup() !== null } : null);
  }

  isRunning(handle: SandboxHandle): boolean {
    return isAlive(handle.process);
  }

  async kill(handle: SandboxHandle): Promise<void> {
    const all = [handle.process, ...handle.helpers];
    for (const p of all) signalIfAlive(p, "SIGKILL");
    await Promise.all(all.filter((p) => p.pid > 0).map((p) => waitForExit(p, 5_000)));
  }

  cleanup(handle: SandboxHandle): void {
    removeSandboxCgroups(handle.cgroups);
    for (const p of [handle.socket]) rmSync(p, { force: true });
  }

  /** Releases what a start in `dir` made, complete or cut short (see the Driver type). */
  async cleanupDir(dir: string): Promise<void> {
    const found = readJsonOrNull<Notes>(join(dir, NOTES));
    const targets = found ? [...found.processes] : [];
    // The supervisor and qemu name this directory in their argv (their sockets, the disk, the console).
    if (!found?.complete) targets.push(...processesNaming(`${resolve(dir)}/`).map((p) => p.identity));
    await killTrees(targets);
    for (let round = 0; !found?.complete && round < 3; round++) {
      const late = processesNaming(`${resolve(dir)}/`).map((p) => p.identity);
      if (!late.length) break;
      await killTrees(late);
    }
    // A half-made disk (the temp file of a killed mkfs) is debris; the disk itself is the task's and stays.
    for (const name of safeReaddir(join(dir, "vm"))) if (name.startsWith("disk.img.tmp-")) rmSync(join(dir, "vm", name), { recursive: true, force: true });
    if (!found) return;
    // A snapshot's temp file of a start killed while it made one (never a finished snapshot: those are renamed from it).
    for (const p of found.debris ?? []) if (/\.bin\.tmp-\d+$/.test(p)) rmSync(p, { force: true });
    const members = cgroupMembers(found.cgroups).map(identityOf).filter((p): p is ProcessIdentity => p !== null);
    if (members.length) await killTrees(members);
    removeSandboxCgroups(found.cgroups);
    rmSync(join(dir, NOTES), { force: true });
  }

  oomKills(handle: SandboxHandle): number {
    return oomKillCount(handle.cgroups);
  }

  /** The VM's files are on its own disk, seen only by the guest kernel: the host never walks or mounts them. */
  filesView(): null {
    return null;
  }

  /** The disk image is the quota, enforced by its size. */
  checkedLayerBytes(): null {
    return null;
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

