import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Readable, Writable } from "node:stream";
import { PyroError } from "../../core/errors.js";
import { ensureDir, readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { argvOf, identityOf, isAlive, killTrees, processesNaming, type ProcessIdentity } from "../../util/proc.js";
import { pauseAt } from "../../util/testhook.js";
import { agentBinaryPath } from "../../util/agent-binary.js";
import { chownTree, ownedBy, sandboxOwner, type SandboxOwner } from "../../util/sandbox-user.js";
import type { Driver, Isolation, LimitsInfo, SandboxHandle, SandboxSpec } from "../types.js";
import { buildLimits } from "../limits.js";
import { DISK_IMAGE, ensureDiskImage, layerKind, waitLoopReleased, type LayerKind } from "./disk.js";
import { measureLayer } from "../../util/layer-tree.js";
import { addProcess, cgroupLayout, createSandboxCgroups, oomKillCount, plannedCgroupDirs, releaseSandboxCgroups, removeSandboxCgroups, type SandboxCgroups } from "../cgroups.js";
import { scopeCommand, scopeDirOf, scopeHolds, userScopeSupport } from "../systemd-scope.js";
import type { CgroupHolds } from "../limits.js";
import { LOOPBACK_ONLY } from "../network.js";
import { startPasta } from "../pasta.js";
import { findExecutable } from "../availability.js";
import { launchCommand, launchStaged } from "../launch.js";
import { killSandbox, readUntil, signalGroup } from "../spawned.js";

/** Where things appear inside the sandbox before the agent pivots into the overlay root. */
const IN = {
  lower: "/.pyro/lower",
  rw: "/.pyro/rw",
  sock: "/.pyro/sock",
  agent: "/.pyro/agent",
  socket: "/.pyro/sock/agent.sock",
} as const;

/** fds handed to bwrap: 3 = the agent's readiness byte, 4 = bwrap's info JSON, 5 = bwrap waits on it before exec. */
const READY_FD = 3;
const INFO_FD = 4;
const BLOCK_FD = 5;
const START_TIMEOUT_MS = 15_000;
/** The driver's notes in a sandbox directory: what to release if the start never completed. */
const NOTES = "resources.json";
interface Notes {
  cgroups: string[];
  processes: ProcessIdentity[];
  /** The hostname the agent is given on its command line: the one mark of a sandbox init whose pid never reached these notes. */
  hostname?: string;
  /** The sandbox's init is among `processes` (false: a start cut short before bwrap reported it). */
  init_noted?: boolean;
  /** The start completed: `processes` names every process of the sandbox (init, bwrap's monitor, pasta). */
  complete?: boolean;
}

/** Unix socket paths are limited to 108 bytes (sun_path). */
const MAX_SOCKET_PATH = 107;

/**
 * The environment bwrap and the agent get: nothing. The agent runs every
 * command with the environment its call names (docs/protocol.md), so none
 * of the host's variables (API keys, the MCP HTTP token) reaches a sandbox,
 * not even through /proc/1/environ.
 */
const SANDBOX_ENV: NodeJS.ProcessEnv = {};

/** The host paths bwrap binds into the sandbox's staging tree. */
export interface BwrapSources {
  lower: string;
  rw: string;
  sock: string;
  agent: string;
}

/**
 * The limits a new namespace sandbox of this shape gets on this host, said
 * as its status will say them (doctor shows these, for a run and a task).
 */
export function plannedLimits(shape: { mem_mib: number; vcpu_count: number; pids_max: number; disk_mib: number; keep_layer: boolean }): LimitsInfo {
  const layout = cgroupLayout();
  let owner: SandboxOwner | null = null;
  try {
    owner = sandboxOwner();
  } catch {
    /* the runs say why the sandbox uid cannot be used */
  }
  let flavor: "none" | "cgroup-v1" | "cgroup-v2" = layout.flavor === "none" ? "none" : layout.flavor === "v1" ? "cgroup-v1" : "cgroup-v2";
  let reason = layout.reason;
  let holds: CgroupHolds | undefined;
  if (flavor === "none") {
    const scope = userScopeSupport();
    if (scope.usable) {
      flavor = "cgroup-v2";
      holds = { memory: scope.controllers.includes("memory"), pids: scope.controllers.includes("pids"), cpu: scope.controllers.includes("cpu") };
    } else reason = `${reason}; ${scope.reason}`;
  }
  const disk = !shape.keep_layer ? "tmpfs" : owner ? "ext4-image" : "checked";
  return buildLimits({ cgroups: flavor, reason, holds, via_scope: holds !== undefined, ...shape, nproc_rlimit: true, disk, shm_mib: shmMib(shape) });
}

/** /dev/shm and /run, each: half the memory limit, so a full one fails with ENOSPC before its pages (charged to the sandbox) hit the limit. */
export function shmMib(spec: Pick<SandboxSpec, "mem_mib">): number {
  return Math.max(16, Math.floor(spec.mem_mib / 2));
}

export function bwrapArgs(spec: SandboxSpec, from: BwrapSources, layer: LayerKind = "checked"): string[] {
  return [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    // root inside maps to the uid bwrap runs as: the invoking user, or pyro's sandbox uid when pyro runs as root.
    "--uid", "0",
    "--gid", "0",
    // For the agent's setup (mounts, pivot); each command then keeps only a short list (guest/supervisor.c).
    "--cap-add", "ALL",
    "--as-pid-1",
    ...(spec.die_with_parent ? ["--die-with-parent"] : []),
    "--ro-bind", from.lower, IN.lower,
    "--bind", from.rw, IN.rw,
    "--bind", from.sock, IN.sock,
    "--ro-bind", from.agent, IN.agent,
    "--dev", "/dev",
    // The kernel lets the agent mount a new proc only where a full proc is already visible.
    "--proc", "/proc",
    "--info-fd", String(INFO_FD),
    "--block-fd", String(BLOCK_FD),
    IN.agent,
    "init",
    "--listen", IN.socket,
    "--ready-fd", String(READY_FD),
    // It reads a 'G' from the ready fd (a socket pair) before anything else, or ends at EOF: see boot().
    "--await-go",
    "--hostname", spec.hostname,
    "--shm-mib", String(shmMib(spec)),
    "--pids-max", String(spec.pids_max),
    // A one-shot sandbox's layer: a tmpfs of disk_mib that the agent mounts over the (empty) bound directory.
    ...(layer === "tmpfs" ? ["--rw-tmpfs-mib", String(spec.disk_mib)] : []),
    ...(spec.deadline ? ["--deadline", String(spec.deadline)] : []),
  ];
}

/**
 * The program and arguments that start the sandbox. As an unprivileged
 * user: bwrap itself. As root: `pyro-agent launch`, which stages the same
 * sources where the sandbox uid can reach them (in a mount namespace of its
 * own) and runs bwrap as that uid (guest/launch.c), so the sandbox's root
 * is never the host's root.
 */
export function sandboxCommand(spec: SandboxSpec, agent: string, bwrap: string, owner: SandboxOwner | null, layer: LayerKind = "checked"): { file: string; args: string[] } {
  const sources: BwrapSources = { lower: spec.rootfs, rw: join(spec.dir, "rw"), sock: join(spec.dir, "sock"), agent };
  if (!owner) {
    if (layer === "ext4-image") throw new PyroError("internal", "A disk image layer needs pyro to run as root.");
    return { file: bwrap, args: bwrapArgs(spec, sources, layer) };
  }
  if (!bwrap.startsWith("/")) {
    throw new PyroError("driver_unavailable", "Cannot find bwrap on PATH.", { hint: "Install bubblewrap (apt-get install -y bubblewrap) and run `pyro doctor`." });
  }
  // Staged under their own host path, so bwrap's command line still names the sandbox's directory.
  const names = Object.keys(sources) as (keyof BwrapSources)[];
  for (const k of names) sources[k] = resolve(sources[k]);
  const staged = Object.fromEntries(names.map((k) => [k, launchStaged(sources[k])])) as unknown as BwrapSources;
  // With an image, the launcher mounts it where the layer's directory would be staged: bwrap's arguments do not change.
  const image = layer === "ext4-image";
  const binds = names.filter((k) => !(image && k === "rw")).map((k) => sources[k]);
  const disk = image ? { image: resolve(spec.dir, DISK_IMAGE), at: sources.rw } : undefined;
  return launchCommand({ agent, owner, binds, disk }, [bwrap, ...bwrapArgs(spec, staged, layer)]);
}

/**
 * As root, the sandbox's writable layer and socket directory belong to the
 * sandbox uid, which is what the sandbox's root is outside. A layer made by
 * an older release (owned by root) is handed over whole, once, before the
 * sandbox runs, so nothing inside is changing it.
 */
async function prepareOwnership(spec: SandboxSpec, owner: SandboxOwner | null, layer: LayerKind): Promise<void> {
  if (!owner) return;
  const dirs = [join(spec.dir, "sock")];
  if (layer === "checked") {
    const upper = join(spec.dir, "rw", "upper");
    if (!ownedBy(upper, owner)) await chownTree(upper, owner);
    dirs.push(join(spec.dir, "rw"), join(spec.dir, "rw", "work"));
  } else if (layer === "tmpfs") dirs.push(join(spec.dir, "rw"));
  for (const dir of dirs) {
    if (!ownedBy(dir, owner)) await chownTree(dir, owner);
  }
}

/** How long a start waits for a previous sandbox's mount of the image to be gone, and a kill for its own. */
const LOOP_RELEASE_MS = 5_000;

/**
 * bwrap's absolute path, looked up once per PATH: spawning by name makes
 * every sandbox start try each PATH entry in turn (a dozen failed execve
 * calls under npm's PATH). Falls back to the name, so that a missing bwrap
 * still fails with the spawn error users know.
 */
let bwrapLookup: { path: string | undefined; found: string } | null = null;
function bwrapPath(): string {
  if (!bwrapLookup || bwrapLookup.path !== process.env.PATH) {
    bwrapLookup = { path: process.env.PATH, found: findExecutable("bwrap") ?? "bwrap" };
  }
  return bwrapLookup.found;
}


export class NamespaceDriver implements Driver {
  readonly name = "namespace" as const;

  isolation(): Isolation {
    return { driver: "namespace", kind: "namespace", accel: null };
  }

  async start(spec: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<SandboxHandle> {
    // Checked: a clone's source build, or the package's prebuilt one with the digest recorded at build (util/agent-binary.ts).
    const agent = agentBinaryPath();
    const owner = sandboxOwner();
    const layer = layerKind(spec.dir, !spec.keep_layer, owner);
    // The layer's directory: bound empty under a tmpfs layer, in place of an image's mount, or the layer itself.
    ensureDir(join(spec.dir, "rw"));
    if (layer === "checked") {
      ensureDir(join(spec.dir, "rw", "upper"));
      ensureDir(join(spec.dir, "rw", "work"));
    }
    ensureDir(join(spec.dir, "sock"), 0o700);
    const socket = join(spec.dir, "sock", "agent.sock");
    if (socket.length > MAX_SOCKET_PATH) {
      throw new PyroError("invalid_argument", `The state directory path is too long for a unix socket (${socket.length} > ${MAX_SOCKET_PATH} bytes).`, {
        hint: "Set PYRO_STATE_DIR to a shorter directory.",
      });
    }

    await prepareOwnership(spec, owner, layer);
    const image = layer === "ext4-image" ? resolve(spec.dir, DISK_IMAGE) : undefined;
    if (image) {
      await ensureDiskImage(spec.dir, spec.disk_mib, owner!);
      pauseAt("boot:disk");
      // Two mounts of one ext4 image would corrupt it: a sandbox of this directory still being torn down goes first.
      if (!(await waitLoopReleased(image, LOOP_RELEASE_MS))) {
        throw new PyroError("busy", `The disk image ${image} is still attached to a loop device from an earlier sandbox.`, { hint: "Try again in a moment; `losetup -a` shows what holds it." });
      }
    }
    const limits = (cgroups: { flavor: "cgroup-v1" | "cgroup-v2" | "none"; reason: string | null; holds?: CgroupHolds }) =>
      buildLimits({ cgroups: cgroups.flavor, reason: cgroups.reason, holds: cgroups.holds, via_scope: cgroups.holds !== undefined, mem_mib: spec.mem_mib, vcpu_count: spec.vcpu_count, pids_max: spec.pids_max, nproc_rlimit: true, disk_mib: spec.disk_mib, disk: layer, shm_mib: shmMib(spec) });

    // Notes for cleanupDir(), kept up to date through the start, so a creator
    // killed mid-start leaks nothing: each resource is named before it exists
    // (the groups) or at once after (processes; until then bwrap's argv names
    // this directory, which cleanupDir looks for).
    writeJsonAtomic(join(spec.dir, NOTES), { cgroups: plannedCgroupDirs(spec.id), processes: [], hostname: spec.hostname, init_noted: false } satisfies Notes, { durable: false });
    let cgroups: SandboxCgroups & { holds?: CgroupHolds } = createSandboxCgroups(spec.id, spec);
    // No group of our own to make (an unprivileged user without delegation): a systemd user scope, where this host proved one works.
    const scope = cgroups.flavor === "none" ? userScopeSupport() : null;
    if (scope && !scope.usable) cgroups = { ...cgroups, reason: `${cgroups.reason}; ${scope.reason}` };
    pauseAt("boot:groups");
    const notes = (processes: ProcessIdentity[], complete = false) =>
      writeJsonAtomic(join(spec.dir, NOTES), { cgroups: cgroups.dirs, processes, hostname: spec.hostname, init_noted: init !== null, complete } satisfies Notes, { durable: false });
    const log = openLog(join(spec.dir, "sandbox.log"));
    let child: ChildProcess | null = null;
    const helpers: ProcessIdentity[] = [];
    let init: ProcessIdentity | null = null;
    // bwrap leads its own process group (detached), and so does the sandbox
    // child it forks until that execs the agent: killing the group reaches a
    // child whose pid bwrap has not reported yet, which --die-with-parent
    // does not cover before bwrap arms it.
    const killGroup = () => {
      if (child?.pid) signalGroup(child.pid, "SIGKILL");
    };
    options.signal?.addEventListener("abort", killGroup, { once: true });
    try {
      const direct = sandboxCommand(spec, agent, bwrapPath(), owner, layer);
      const command = scope?.usable ? scopeCommand(spec.id, spec, scope.controllers, direct.file, direct.args) : direct;
      child = spawn(command.file, command.args, {
        stdio: ["ignore", log, log, "pipe", "pipe", "pipe"],
        env: SANDBOX_ENV,
        // Its own session: a Ctrl-C to the CLI's terminal does not reach the sandbox; pyro cleans up itself.
        detached: true,
      });
      const spawnError = new Promise<never>((_, reject) =>
        child!.once("error", (error) =>
          reject(
            new PyroError("driver_unavailable", `Cannot run bwrap: ${error.message}`, {
              hint: "Install bubblewrap (apt-get install -y bubblewrap) and run `pyro doctor`.",
            }),
          ),
        ),
      );
      pauseAt("boot:spawned");
      const spawnedMonitor = child.pid ? identityOf(child.pid) : null;
      if (spawnedMonitor) {
        helpers.push(spawnedMonitor);
        notes([...helpers]);
      }
      const stdio = child.stdio as unknown as Array<Readable & Writable>;
      const [readyPipe, infoPipe, blockPipe] = [stdio[READY_FD]!, stdio[INFO_FD]!, stdio[BLOCK_FD]!];
      // These pipes reset when bwrap exits early; the readiness checks below report that, so swallow the stream errors.
      for (const pipe of [readyPipe, infoPipe, blockPipe]) pipe.on("error", () => undefined);

      // 1. bwrap reports the sandbox init's host pid, then waits on the block fd.
      const infoText = await Promise.race([readUntil(infoPipe, (t) => t.includes("}"), START_TIMEOUT_MS), spawnError]);
      const childPid = Number(/"child-pid":\s*(\d+)/.exec(infoText)?.[1]);
      init = Number.isFinite(childPid) ? identityOf(childPid) : null;
      if (!init) throw this.startFailure(spec, "bwrap did not start the sandbox");
      pauseAt("boot:info");
      notes([init, ...helpers]);

      // 2. Before the agent runs anything: limits, then the network.
      if (scope?.usable) {
        // bwrap (and so the init it forked) already runs in the scope systemd-run made: its group is read back, not joined.
        const dir = child.pid ? scopeDirOf(child.pid) : null;
        if (!dir) throw this.startFailure(spec, "systemd-run did not start the sandbox in a scope of its own");
        cgroups = { dirs: [dir], flavor: "cgroup-v2", reason: null, holds: scopeHolds(dir) };
        notes([init, ...helpers]);
      } else addProcess(cgroups.dirs, init.pid);
      let network = LOOPBACK_ONLY;
      if (spec.network) {
        const pasta = await startPasta(init, spec.dir, agent);
        helpers.push(...pasta.helpers);
        notes([init, ...helpers]);
        network = pasta.info;
      }
      if (options.signal?.aborted) throw new PyroError("cancelled", "Sandbox start was cancelled.");

      pauseAt("boot:held");
      // 3. Let the agent go, and wait for its readiness byte. The 'G' on the
      // ready fd comes first: an agent that finds EOF there instead (its
      // starter was killed before this line, perhaps before it could note
      // the sandbox at all) ends without running anything.
      await new Promise<void>((resolve, reject) => readyPipe.write("G", (error) => (error ? reject(error) : resolve())));
      blockPipe.end("go");
      const ready = await Promise.race([readUntil(readyPipe, (t) => t.length > 0 && (t[0] === "R" || t.includes("\n")), START_TIMEOUT_MS), spawnError]);
      if (!ready.startsWith("R")) {
        throw this.startFailure(spec, ready.startsWith("E") ? ready.slice(1).trim() : "the guest agent did not become ready");
      }
      for (const s of [readyPipe, infoPipe]) s.destroy();
      child.unref();
      // Everything is named now: a later cleanupDir need not search /proc.
      notes([init, ...helpers], true);
      return {
        driver: "namespace",
        process: init,
        socket,
        helpers,
        cgroups: cgroups.dirs,
        network,
        limits: limits(cgroups),
        ...(image ? { disk_image: image } : {}),
        started_at: new Date().toISOString(),
      };
    } catch (error) {
      const partial: SandboxHandle = {
        driver: "namespace",
        process: init ?? { pid: -1, start_time: -1 },
        socket,
        helpers,
        cgroups: cgroups.dirs,
        network: LOOPBACK_ONLY,
        limits: limits(cgroups),
        ...(image ? { disk_image: image } : {}),
        started_at: new Date().toISOString(),
      };
      killGroup();
      await this.kill(partial);
      this.cleanup(partial);
      throw error;
    } finally {
      options.signal?.removeEventListener("abort", killGroup);
      closeSync(log);
    }
  }

  private startFailure(spec: SandboxSpec, what: string): PyroError {
    let tail = "";
    try {
      tail = readFileSync(join(spec.dir, "sandbox.log"), "utf8").trim().split("\n").slice(-3).join(" | ");
    } catch {
      /* no log */
    }
    return new PyroError("sandbox_failed", `The namespace sandbox failed to start: ${what}${tail ? ` (${tail})` : ""}.`, {
      hint: "Run `pyro doctor` to check bubblewrap and user namespaces on this host.",
    });
  }

  isRunning(handle: SandboxHandle): boolean {
    return isAlive(handle.process);
  }

  async kill(handle: SandboxHandle): Promise<void> {
    // Killing the sandbox's PID 1 makes the kernel kill everything in its pid namespace.
    await killSandbox(handle);
    // The image's mount goes with the sandbox's last process, and its loop device right after.
    if (handle.disk_image) await waitLoopReleased(handle.disk_image, LOOP_RELEASE_MS);
  }

  cleanup(handle: SandboxHandle): void {
    removeSandboxCgroups(handle.cgroups);
  }

  /**
   * Releases whatever a start in `dir` made, complete or cut short: the
   * processes its notes name and their children (a bwrap monitor noted
   * before its sandbox's init was), a pasta whose pid file is there but whose
   * pid never reached the notes, and, when the start was cut short before
   * the init was noted: bwrap processes still naming the directory and agents
   * carrying the sandbox's hostname (bwrap's child outlives a monitor killed
   * with its parent, and execs the agent once the block fd reads EOF);
   * then anything left in its groups, then the groups.
   */
  async cleanupDir(dir: string): Promise<void> {
    const found = readJsonOrNull<Notes>(join(dir, NOTES));
    const targets = found ? [...found.processes] : [];
    const pasta = pastaFromPidFile(dir);
    if (pasta) targets.push(pasta);
    if (found && !found.init_noted && found.hostname) targets.push(...agentsNamed(found.hostname));
    // Unless a completed start named every process: whatever names this
    // directory in its argv (bwrap, the launcher, a pasta whose pid file was
    // not written yet when its starter died), looked for again after each
    // kill, since one may have forked between a scan and its kill.
    const search = !found?.complete;
    if (search) targets.push(...processesNaming(`${dir}/`).map((p) => p.identity));
    await killTrees(targets);
    // A sandbox child that was still bwrap at the first scan may have exec'd the agent since (its block
    // fd read EOF when its starter died): by then only its hostname marks it, so both are looked for again.
    const unnoted = found && !found.init_noted && found.hostname ? found.hostname : null;
    for (let round = 0; search && round < 3; round++) {
      const late = [...processesNaming(`${dir}/`).map((p) => p.identity), ...(unnoted ? agentsNamed(unnoted) : [])];
      if (!late.length) break;
      await killTrees(late);
    }
    // Whatever was killed above held the image's mount, if any: its loop device detaches once they are all gone.
    await waitLoopReleased(join(dir, DISK_IMAGE), LOOP_RELEASE_MS);
    if (!found) return;
    await releaseSandboxCgroups(found.cgroups);
    // Everything the notes name is released: later calls (every reap of a stopped task) need not look again.
    rmSync(join(dir, NOTES), { force: true });
  }

  oomKills(handle: SandboxHandle): number {
    return oomKillCount(handle.cgroups);
  }

  filesView(dir: string, handle: SandboxHandle | null): { root: string; kind: "root" | "upper" } | null {
    const image = existsSync(join(dir, DISK_IMAGE));
    if (!image) return { root: join(dir, "rw", "upper"), kind: "upper" };
    // The image is mounted only in the sandbox's namespaces: its init's root is the way in (root may enter it; nothing is followed inside).
    if (handle && handle.process.pid > 0 && isAlive(handle.process)) return { root: `/proc/${handle.process.pid}/root`, kind: "root" };
    return null;
  }

  async checkedLayerBytes(dir: string): Promise<{ bytes: number; unmeasured: string | null } | null> {
    if (existsSync(join(dir, DISK_IMAGE))) return null;
    const upper = join(dir, "rw", "upper");
    if (!existsSync(upper)) return null;
    // Not treeUsage: the sandbox may have made directories its owner (this user) cannot list, or nested them past any walk.
    const usage = await measureLayer(upper);
    return { bytes: usage.allocated, unmeasured: usage.unmeasured };
  }
}

/**
 * The sandbox's log (bwrap's and the agent's stderr). The agent caps what it
 * writes at 1 MiB (RLIMIT_FSIZE, guest/main.c); a log that reached that is
 * kept as sandbox.log.1 and a new one begins, so restarts keep logging and
 * the host keeps at most two.
 */
function openLog(path: string): number {
  try {
    if (statSync(path).size >= 1024 * 1024) renameSync(path, `${path}.1`);
  } catch {
    /* no log yet */
  }
  return openSync(path, "a", 0o600);
}

/** The pasta that wrote `dir`/pasta.pid, if it still runs (its argv names that file, so a reused pid is never taken for it). */
function pastaFromPidFile(dir: string): ProcessIdentity | null {
  const pidFile = join(dir, "pasta.pid");
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, "utf8").trim());
  } catch {
    return null;
  }
  const identity = Number.isInteger(pid) && pid > 0 ? identityOf(pid) : null;
  if (!identity) return null;
  return argvOf(identity)?.includes(pidFile) ? identity : null;
}

/** Sandbox inits (the agent, PID 1 of its namespace, seen from the host) started with this hostname. */
function agentsNamed(hostname: string): ProcessIdentity[] {
  return processesNaming(IN.agent)
    .filter((p) => p.argv[0] === IN.agent && p.argv[1] === "init" && p.argv[p.argv.indexOf("--hostname") + 1] === hostname)
    .map((p) => p.identity);
}

