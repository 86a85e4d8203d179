import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, closeSync, constants, existsSync, fchmodSync, fchownSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { Readable, Writable } from "node:stream";
import { PyroError } from "../../core/errors.js";
import { ensureDir, readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { agentBinaryPath } from "../../util/paths.js";
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
import { kvmVerdict, recordKvmVerdict } from "./kvm.js";
import { JAIL_BLOCK_FD, JAIL_INFO_FD, jailArgs } from "./jail.js";

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
/** TCG boots Debian's cloud kernel to the agent in ~2-3 s alone; a loaded 2-core host can take several times that. */
const BOOT_TIMEOUT_MS = 60_000;
/** Under KVM a boot that takes longer than this is not KVM working (a PVM /dev/kvm crawls): TCG takes over. */
const KVM_PROOF_TIMEOUT_MS = 15_000;
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
}

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
export function vmPaths(dir: string): QemuPaths & { vmDir: string; runDir: string; socket: string; console: string; disk: string } {
  const vmDir = join(dir, "vm");
  const runDir = join(vmDir, "run");
  return {
    vmDir,
    runDir,
    socket: join(runDir, "agent.sock"),
    qmp: join(runDir, "qmp.sock"),
    console: join(vmDir, "console.log"),
    // Not the namespace driver's disk.img: what a guest kernel wrote raw is never mounted by the host's.
    disk: join(vmDir, "disk.img"),
  };
}

/** Hands a file pyro made to the VM's uid, by descriptor (never following a name). */
function giveTo(path: string, owner: SandboxOwner | null): void {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) throw new PyroError("sandbox_failed", `${path} is not a regular file.`, { hint: "Delete the VM or task and create it again." });
    if (owner) fchownSync(fd, owner.uid, owner.gid);
    fchmodSync(fd, 0o600);
  } finally {
    closeSync(fd);
  }
}

/** The VM's directory, pyro's own (a leftover one the VM's uid owned, from an older release, is taken back). */
function prepareVmDir(paths: ReturnType<typeof vmPaths>, owner: SandboxOwner | null): void {
  ensureDir(paths.vmDir, 0o755);
  const st = lstatSync(paths.vmDir);
  if (!st.isDirectory()) throw new PyroError("sandbox_failed", `${paths.vmDir} is not a directory.`, { hint: "Delete the VM or task and create it again." });
  if (st.uid !== (process.getuid?.() ?? st.uid)) chownSync(paths.vmDir, process.getuid!(), process.getgid!());
  chmodSync(paths.vmDir, 0o755);
  // The sockets' directory is the VM's: made afresh on every boot.
  rmSync(paths.runDir, { recursive: true, force: true });
  mkdirSync(paths.runDir, { mode: 0o700 });
  if (owner) chownSync(paths.runDir, owner.uid, owner.gid);
  // The console log: appended to across boots (the supervisor caps it); made here, handed over by descriptor.
  if (!existsSync(paths.console)) closeSync(openSync(paths.console, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
  giveTo(paths.console, owner);
}

/**
 * A sandbox's writable disk: an empty ext4 file system, sparse, made once
 * and kept across reboots (the agent makes upper/ and work/ on it at first
 * boot). Made as a temp file and renamed, so a kill never leaves a
 * half-made disk that a later boot would take for a real one.
 */
function ensureDataDisk(path: string, mib: number, owner: SandboxOwner | null): void {
  if (existsSync(path)) return;
  const mkfs = findExecutable("mkfs.ext4");
  if (!mkfs) throw new PyroError("driver_unavailable", "mkfs.ext4 is not installed: the qemu driver makes each task's disk with it.", { hint: "apt-get install -y e2fsprogs" });
  const tmp = `${path}.tmp-${process.pid}`;
  const r = spawnSync(mkfs, ["-q", "-F", "-m", "0", "-L", "pyro-data", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp, `${mib}M`], { encoding: "utf8", env: { PATH: process.env.PATH } });
  if (r.status !== 0) {
    rmSync(tmp, { force: true });
    throw new PyroError("sandbox_failed", `Cannot make the VM's disk (${path}): ${(r.stderr || r.error?.message || "").trim()}`, { hint: "Check the free space of the state directory's file system." });
  }
  giveTo(tmp, owner);
  renameSync(tmp, path);
}

/** Reads a stream until `done` says enough, the stream ends, or the deadline passes. */
function readUntil(stream: Readable, done: (text: string) => boolean, timeoutMs: number): Promise<string> {
  return new Promise((resolveText) => {
    let text = "";
    const finish = () => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", finish);
      stream.off("close", finish);
      resolveText(text);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString("utf8");
      if (done(text)) finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    stream.on("data", onData);
    stream.on("end", finish);
    stream.on("close", finish);
  });
}

export class QemuDriver implements Driver {
  readonly name = "qemu" as const;

  /** The acceleration the next VM gets: KVM only where a boot under it has succeeded on this host boot. */
  private accel(): "kvm" | "tcg" {
    if (process.env.PYRO_QEMU_ACCEL === "tcg") return "tcg";
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
    const verdict = process.env.PYRO_QEMU_ACCEL === "tcg" ? { usable: false, detail: "PYRO_QEMU_ACCEL=tcg" } : kvmVerdict();
    if (verdict === null) {
      try {
        const handle = await this.boot(spec, "kvm", KVM_PROOF_TIMEOUT_MS, options);
        recordKvmVerdict({ usable: true, detail: "a VM booted to its agent under KVM on this host" });
        return handle;
      } catch (error) {
        if (options.signal?.aborted) throw error;
        recordKvmVerdict({ usable: false, detail: `a VM did not boot under KVM on this host (${(error as Error).message.slice(0, 200)}); qemu runs under TCG` });
      }
    }
    return this.boot(spec, verdict?.usable ? "kvm" : "tcg", BOOT_TIMEOUT_MS, options);
  }

  private async boot(spec: SandboxSpec, accel: "kvm" | "tcg", bootTimeoutMs: number, options: { signal?: AbortSignal }): Promise<SandboxHandle> {
    if (spec.network) {
      throw new PyroError("invalid_argument", "The qemu driver does not give VMs a network in this release.", {
        hint: "Run without network, or use --driver namespace for a sandbox with network.",
      });
    }
    if (spec.mem_mib < MIN_VM_MEM_MIB) {
      // Below this Debian's kernel panics while booting ("System is deadlocked on memory"): say so before trying.
      throw new PyroError("invalid_argument", `A qemu VM needs at least ${MIN_VM_MEM_MIB} MiB of memory (mem_mib ${spec.mem_mib} was asked).`, {
        hint: `Give mem_mib ${MIN_VM_MEM_MIB} or more, or use --driver namespace for a smaller sandbox.`,
      });
    }
    if (!spec.vm) throw new PyroError("internal", "The qemu driver was started without the environment's VM artifacts.");
    const agent = agentBinaryPath();
    if (!existsSync(agent)) {
      throw new PyroError("driver_unavailable", `The guest agent is not built (${agent} is missing).`, { hint: "Run `npm run build` (or `make -C guest`) in the pyro-mcp package." });
    }
    const qemu = findExecutable(qemuBinaryName());
    if (!qemu) {
      throw new PyroError("driver_unavailable", `${qemuBinaryName()} is not installed.`, { hint: `apt-get install -y ${qemuPackage()}; then \`pyro doctor\`.` });
    }
    const owner = sandboxOwner();
    const bwrap = findExecutable("bwrap");
    if (!bwrap) throw new PyroError("driver_unavailable", "bwrap is not installed: the qemu driver jails each qemu with it.", { hint: "apt-get install -y bubblewrap" });
    const paths = vmPaths(resolve(spec.dir));
    prepareVmDir(paths, owner);
    for (const p of [paths.socket, paths.qmp]) {
      if (p.length + (owner ? LAUNCH_STAGE.length + 5 : 0) > MAX_SOCKET_PATH) {
        throw new PyroError("invalid_argument", `The state directory path is too long for a unix socket (${p.length} bytes).`, { hint: "Set PYRO_STATE_DIR to a shorter directory." });
      }
    }
    // Tasks and persistent VMs keep their writable layer on their own disk; one-shot runs keep it in guest RAM.
    // The RAM layer is a tmpfs in the guest: disk_mib caps it, and the guest's RAM caps it before that.
    const data: DataLayer = spec.keep_layer ? { kind: "disk", path: paths.disk } : { kind: "ram", mib: spec.disk_mib };
    if (data.kind === "disk") ensureDataDisk(paths.disk, spec.disk_mib, owner);

    writeJsonAtomic(join(spec.dir, NOTES), { cgroups: plannedCgroupDirs(spec.id), processes: [] } satisfies Notes, { durable: false });
    const cgroups = createSandboxCgroups(spec.id, { mem_mib: spec.mem_mib + QEMU_OVERHEAD_MIB, vcpu_count: spec.vcpu_count, pids_max: QEMU_PIDS_MAX });
    const notes = (processes: ProcessIdentity[], complete = false) => writeJsonAtomic(join(spec.dir, NOTES), { cgroups: cgroups.dirs, processes, complete } satisfies Notes, { durable: false });

    const command = this.command(spec, agent, qemu, bwrap, paths, data, accel, bootTimeoutMs, owner);
    let child: ChildProcess | null = null;
    let vmm: ProcessIdentity | null = null;
    const monitors: ProcessIdentity[] = [];
    // The jail's bwrap leads its own process group until it execs the supervisor: a kill of the group
    // reaches a child whose pid bwrap has not reported yet.
    const killGroup = () => {
      if (child?.pid) signalGroup(child.pid, "SIGKILL");
    };
    options.signal?.addEventListener("abort", killGroup, { once: true });
    try {
      child = spawn(command.file, command.args, { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe", "pipe"], env: VMM_ENV, detached: true });
      const spawned = new Promise<never>((_, reject) =>
        child!.once("error", (error) => reject(new PyroError("driver_unavailable", `Cannot start the VM's jail: ${error.message}`, { hint: "Run `pyro doctor`." }))),
      );
      const monitor = child.pid ? identityOf(child.pid) : null;
      if (monitor) {
        monitors.push(monitor);
        notes([monitor]);
      }
      pauseAt("boot:spawned");
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
      addProcess(cgroups.dirs, vmm.pid);
      notes([vmm, ...monitors]);
      block.end("go");
      const line = await Promise.race([readUntil(ready, (t) => t.startsWith("R") || t.includes("\n"), bootTimeoutMs + 10_000), spawned]);
      if (!line.startsWith("R")) {
        const why = line.startsWith("E") ? line.slice(1).trim() : early.trim().split("\n").slice(-2).join(" | ") || consoleTail(spec.dir) || "the VM supervisor exited before the guest agent answered";
        throw new PyroError("sandbox_failed", `The ${accel === "kvm" ? "KVM" : "TCG"} VM did not boot to its agent: ${why}.`, {
          hint: `Its console is in ${paths.console}; run \`pyro doctor\` to check qemu and the VM artifacts.`,
        });
      }
      for (const s2 of [ready, info, stderr]) s2.destroy();
      child.unref();
      // qemu is the supervisor's child in the jail: killing the supervisor (PID 1 there) ends it.
      const helpers = [...monitors];
      notes([vmm, ...helpers], true);
      pauseAt("boot:info");
      return {
        driver: "qemu",
        process: vmm,
        socket: paths.socket,
        helpers,
        cgroups: cgroups.dirs,
        network: NO_NETWORK,
        limits: vmLimits({ mem_mib: spec.mem_mib, vcpu_count: spec.vcpu_count, pids_max: spec.pids_max, disk_mib: data.kind === "disk" ? spec.disk_mib : data.mib, disk: data.kind === "disk" ? "ext4-image" : "tmpfs", shm_mib: shmMib(spec.mem_mib) }),
        started_at: new Date().toISOString(),
        isolation: { driver: "qemu", kind: accel === "kvm" ? "microvm" : "emulated-vm", accel },
      };
    } catch (error) {
      killGroup();
      await killTrees([...(vmm ? [vmm] : []), ...monitors]);
      removeSandboxCgroups(cgroups.dirs);
      throw error;
    } finally {
      options.signal?.removeEventListener("abort", killGroup);
    }
  }

  /**
   * The jail and the supervisor in it (jail.ts): bwrap around `pyro-agent
   * vmm` around qemu; as root, through `pyro-agent launch`, which stages the
   * files where the sandbox uid can reach them and runs bwrap as that uid.
   * Inside the jail every file is at its own path, so the processes' argv
   * names the sandbox's directory (what cleanupDir looks for).
   */
  private command(spec: SandboxSpec, agent: string, qemu: string, bwrap: string, paths: ReturnType<typeof vmPaths>, data: DataLayer, accel: "kvm" | "tcg", bootTimeoutMs: number, owner: SandboxOwner | null): { file: string; args: string[] } {
    const boot = spec.vm!;
    const readOnly = [resolve(boot.kernel), resolve(boot.initramfs), resolve(boot.root_image), agent];
    const writable = [paths.vmDir];
    const stage = (p: string) => (owner ? `${LAUNCH_STAGE}/pyro${p}` : p);
    const vmmArgs = [
      agent,
      "vmm",
      "--listen", paths.socket,
      "--guest", `fd:${AGENT_CHARDEV_FD}`,
      "--ready-fd", String(READY_FD),
      "--console", paths.console,
      "--boot-timeout-ms", String(bootTimeoutMs),
      ...(spec.deadline ? ["--deadline", String(spec.deadline)] : []),
      ...(spec.die_with_parent ? ["--die-with-parent"] : []),
      "--",
      qemu,
      ...qemuArgs(spec, { kernel: readOnly[0]!, initramfs: readOnly[1]!, root_image: readOnly[2]! }, data, { qmp: paths.qmp }, accel),
    ];
    const jail = jailArgs({ readOnly, writable, source: stage }, { dieWithParent: spec.die_with_parent, kvm: accel === "kvm" }, vmmArgs);
    if (!owner) return { file: bwrap, args: jail };
    return {
      file: agent,
      args: ["launch", "--uid", String(owner.uid), "--gid", String(owner.gid), ...[...readOnly, ...writable].flatMap((s2) => ["--bind", s2]), "--", bwrap, ...jail],
    };
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

function signalGroup(leader: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-leader, signal);
  } catch {
    /* gone */
  }
}

/** The last lines of a VM's console, for an error message. */
export function consoleTail(dir: string, lines = 5): string {
  // The directory is the VM's own: never follow a link it put there, never read more than the tail.
  let fd = -1;
  try {
    fd = openSync(vmPaths(dir).console, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) return "";
    const buf = Buffer.alloc(Math.min(4096, st.size));
    const n = readSync(fd, buf, 0, buf.length, Math.max(0, st.size - buf.length));
    return buf.subarray(0, n).toString("utf8").replace(/[^\x20-\x7e\n]/g, "").trim().split("\n").slice(-lines).join(" | ");
  } catch {
    return "";
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
