import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, constants, copyFileSync, linkSync, lstatSync, mkdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import { basename, join, relative } from "node:path";
import type { Readable } from "node:stream";
import { PyroError } from "../../core/errors.js";
import { argvOf, descendsFrom, identityOf, killTrees, type ProcessIdentity } from "../../util/proc.js";
import type { SandboxOwner } from "../../util/sandbox-user.js";
import { findExecutable } from "../availability.js";
import { addProcess, cgroupMembers } from "../cgroups.js";
import type { SandboxSpec, VmBootFiles } from "../types.js";
import type { DataLayer } from "../vm/guest.js";
import { configureAndStart, type ApiRequest, type MicroVm } from "./api.js";
import { instanceId, microVm } from "./args.js";

/**
 * Firecracker's own jailer (docs/jailer.md in firecracker-microvm/firecracker),
 * where `PYRO_JAILER` asks for it (availability.ts: `jailerCheck`), in place
 * of the bubblewrap jail around firecracker. The jailer starts as root,
 * chroots into `<chroot base>/<exec file name>/<id>/root`, makes /dev/kvm
 * and /dev/net/tun there for the sandbox uid, clones firecracker into a new
 * pid namespace (`--new-pid-ns`) and execs it as that uid. It runs BESIDE
 * the VM supervisor, not under it: the supervisor parses the guest's frames,
 * so it stays in its bubblewrap jail as the sandbox uid, and a process there
 * cannot start a root jailer. What ties the two:
 *
 * - firecracker's stdout and stderr (its serial console) are one socket whose
 *   other end is the supervisor's "VMM", a `cat` of fd 6 (the console relay):
 *   firecracker's exit is the relay's EOF, so the supervisor exits with the
 *   VM, and the console is capped as qemu's is;
 * - the jailer is spawned through a gate (`sh` waiting for one line on fd 3)
 *   that pyro lets go only once the gate is in the sandbox's cgroups, so
 *   firecracker is born in them: the cgroups are how every cleanup finds it
 *   (its argv names no sandbox directory), and they bound the supervisor and
 *   firecracker together, as on the bwrap path;
 * - `unshare --net --ipc --uts` around the jailer: firecracker gets an empty
 *   network namespace of its own (the jailer alone would leave it in the
 *   host's), and its own ipc and uts, as the bwrap jail gives.
 *
 * The supervisor's death does not end firecracker (the jailer's setuid
 * clears any parent-death signal, and nothing else links them): the
 * handle names firecracker as a helper, so a kill, a refresh of a dead
 * sandbox and the reaper kill it, and the cgroups catch it where nothing
 * named it yet (docs/drivers.md, "The jailer").
 */

/** The chroot's directory under the VM's own (pyro's) `vm/`: `--chroot-base-dir`. */
export function jailBase(vmDir: string): string {
  return join(vmDir, "jail");
}

/** Where firecracker, in its chroot, finds what it is asked to open. */
const JAILED = { kernel: "/vmlinux", initramfs: "/initrd.img", root_image: "/rootfs.ext4", disk: "/disk.img", api: "/run/api.sock", vsock: "/run/v.sock" } as const;

export interface JailLayout {
  /** `--chroot-base-dir`. */
  base: string;
  /** `<base>/<exec file name>/<id>/root`: firecracker's `/`. */
  chroot: string;
  /** The jailer's and firecracker's `--id`. */
  id: string;
  /** The exec file's own name: firecracker runs as `/<execName>` in the chroot. */
  execName: string;
  /** The API socket as pyro reaches it, and as firecracker's `--api-sock` names it (inside the chroot). */
  api: { host: string; jailed: string };
  /** The vsock's host-side socket, both ways. */
  vsock: { host: string; jailed: string };
  /** The chroot's run/ (both sockets): all of the chroot the supervisor's jail binds. */
  runDir: string;
  /** What goes into the chroot: hard links (copies across file systems) of the artifacts, a hard link of the VM's disk. */
  files: Array<{ source: string; jailed: string; writable: boolean }>;
}

/**
 * The chroot, as a pure function of the VM: the jailer canonicalizes
 * `--exec-file` and names the chroot's directory after the real file's
 * name (`execName`), so the caller passes that name.
 */
export function jailLayout(vmDir: string, execName: string, sandboxId: string, boot: VmBootFiles, disk: string | null): JailLayout {
  const base = jailBase(vmDir);
  const id = instanceId(sandboxId);
  const chroot = join(base, execName, id, "root");
  const inside = (p: string) => join(chroot, p);
  const files = [
    { source: boot.kernel, jailed: JAILED.kernel, writable: false },
    { source: boot.initramfs, jailed: JAILED.initramfs, writable: false },
    { source: boot.root_image, jailed: JAILED.root_image, writable: false },
    ...(disk ? [{ source: disk, jailed: JAILED.disk, writable: true }] : []),
  ];
  return { base, chroot, id, execName, api: { host: inside(JAILED.api), jailed: JAILED.api }, vsock: { host: inside(JAILED.vsock), jailed: JAILED.vsock }, runDir: inside("/run"), files };
}

/** The microVM with every path as firecracker sees it from its chroot. */
export function jailedMicroVm(spec: SandboxSpec, data: DataLayer): MicroVm {
  const jailedData: DataLayer = data.kind === "disk" ? { kind: "disk", path: JAILED.disk } : data;
  return microVm(spec, { kernel: JAILED.kernel, initramfs: JAILED.initramfs, root_image: JAILED.root_image }, jailedData, JAILED.vsock);
}

export interface JailerArgs {
  jailer: string;
  firecracker: string;
  layout: JailLayout;
  owner: SandboxOwner;
}

/**
 * The jailer's argv (docs/jailer.md, "Jailer Usage"). Not given: `--cgroup`
 * and `--parent-cgroup` (pyro's own cgroups hold the jailer from before it
 * runs: one `--parent-cgroup` for every controller cannot nest under pyro's
 * own group where the controllers put pyro in different groups, as on this
 * project's CI hosts, and the jailer's v1 parser refuses
 * `memory.memsw.limit_in_bytes`, two dots); `--netns` (`unshare --net`
 * gives it a fresh one, no handle to mount and clean up); `--daemonize`
 * (its stdio is the console relay; pyro gives it a session of its own);
 * `--resource-limit` (the jailer's default of 2048 open files holds).
 * After `--`, firecracker's own: the jailer passes `--id` itself.
 */
export function jailerArgv(a: JailerArgs): string[] {
  return [
    a.jailer,
    "--id", a.layout.id,
    "--exec-file", a.firecracker,
    "--uid", String(a.owner.uid),
    "--gid", String(a.owner.gid),
    "--chroot-base-dir", a.layout.base,
    "--new-pid-ns",
    "--",
    "--api-sock", a.layout.api.jailed,
  ];
}

/** The fd of the gate's "go" line (fd 3: the jailer closes every fd above 2 as it starts, so firecracker never holds it). */
export const GATE_FD = 3;
/**
 * The gate: waits for one line on fd 3 (what pyro writes once the gate's
 * pid is in the sandbox's cgroups), sends the jailer's stderr where its
 * stdout goes (the console relay), then execs the jailer in new network,
 * ipc and uts namespaces. A pyro killed before the line leaves the pipe's
 * end closed: `read` fails and nothing is started.
 */
const GATE = `exec 2>&1; IFS= read -r go <&${GATE_FD} && [ "$go" = go ] && exec "$@" ${GATE_FD}<&-; exit 125`;

/** What pyro spawns: the gate around `unshare` around the jailer. */
export function gatedJailerCommand(sh: string, unshare: string, jailer: string[]): { file: string; args: string[] } {
  return { file: sh, args: ["-c", GATE, "pyro-jailer-gate", unshare, "--net", "--ipc", "--uts", "--", ...jailer] };
}

/**
 * What the supervisor's bubblewrap jail binds writable on the jailer's
 * path: its own sockets' directory, the console log, and of the chroot only
 * `run/` (the vsock socket): nothing of `root/`, where the jailer works as
 * root by name (copying firecracker, mknod, chown).
 */
export function supervisorWritable(vm: { runDir: string; console: string }, layout: JailLayout): string[] {
  return [vm.runDir, vm.console, layout.runDir];
}

/** The supervisor's "VMM" on the jailer path: copies firecracker's console (at the supervisor's first pass fd) to its own stdout, the supervisor's console log. */
export function consoleRelayArgv(sh: string, passFd: number): string[] {
  return [sh, "-c", `exec cat <&${passFd}`];
}

/**
 * Puts the artifacts and the VM's disk into the chroot, afresh. Read-only
 * artifacts are hard-linked where they are on the chroot's file system and
 * not writable by the sandbox uid (a link shares the inode: it is never
 * chowned or chmodded), else copied (root's, 0444). The disk must be a
 * hard link: the guest's writes have to reach the task's own disk; it is
 * already the sandbox uid's (files.ts hands it over). The directories
 * above `root/` are pyro's (0755); the jailer gives `root/` to the sandbox
 * uid; `root/`, `dev/`, `dev/net/` and `run/` are made the sandbox uid's
 * (0700) here, as the jailer leaves them.
 */
export function prepareChroot(layout: JailLayout, owner: SandboxOwner): void {
  removeChrootTree(layout.base);
  mkdirSync(layout.chroot, { recursive: true, mode: 0o755 });
  for (let d = join(layout.chroot, ".."); d.startsWith(layout.base); d = join(d, "..")) chmodSync(d, 0o755);
  for (const f of layout.files) {
    const target = join(layout.chroot, f.jailed);
    if (f.writable) {
      try {
        linkSync(f.source, target);
      } catch (error) {
        throw new PyroError("sandbox_failed", `Cannot hard-link the VM's disk ${f.source} into the jailer's chroot (${(error as NodeJS.ErrnoException).code}): its writes must reach the disk itself.`, {
          hint: "Keep the state directory on one file system, or unset PYRO_JAILER for the bubblewrap jail.",
        });
      }
      continue;
    }
    if (!writableBy(f.source, owner)) {
      try {
        linkSync(f.source, target);
        continue;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EXDEV") throw error;
      }
    }
    copyFileSync(f.source, target, constants.COPYFILE_FICLONE);
    chmodSync(target, 0o444);
  }
  // Made as the jailer leaves them (0700, the sandbox uid's): run/ must exist before the supervisor's jail binds it.
  for (const d of ["", "dev", "dev/net", "run"]) {
    const dir = join(layout.chroot, d);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chownSync(dir, owner.uid, owner.gid);
    chmodSync(dir, 0o700);
  }
}

/** Whether the sandbox uid could write the file through a hard link of it (then it gets a copy). */
function writableBy(path: string, owner: SandboxOwner): boolean {
  const st = statSync(path);
  if (st.uid === owner.uid) return true;
  if (st.gid === owner.gid && st.mode & 0o020) return true;
  return (st.mode & 0o002) !== 0;
}

/**
 * Removes the chroot (its links, firecracker's copy, the jailer's device
 * nodes), but only once nothing of the sandbox runs in `cgroups`: `root/`
 * is the sandbox uid's, and a live firecracker could swap a directory for a
 * symlink under a recursive removal. Returns whether it is gone (else the
 * next cleanup of the directory retries).
 */
export function removeJailRoot(vmDir: string, cgroups: string[]): boolean {
  if (cgroupMembers(cgroups).length) return false;
  removeChrootTree(jailBase(vmDir));
  return true;
}

function removeChrootTree(base: string): void {
  try {
    if (!lstatSync(base).isDirectory()) throw new PyroError("sandbox_failed", `${base} is not a directory.`, { hint: "Delete the VM or task and create it again." });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  rmSync(base, { recursive: true, force: true });
}

export interface Gate {
  child: ChildProcess;
  identity: ProcessIdentity;
  /** The gated process's stdout and stderr (one socket): the console relay's input. */
  console: Readable;
  /** Its exit status (null: killed, or it never started). */
  exit: Promise<number | null>;
  /** Lets it run (it is in `cgroups` by then). */
  go: () => void;
}

/**
 * Spawns a gated command (gatedJailerCommand) held at its gate: noted
 * (`noted`, before anything else can happen), then put into `cgroups`.
 * A session of its own (the jailer's --daemonize would send the console to
 * /dev/null) and an empty environment (the jailer clears it too).
 */
export function spawnGate(command: { file: string; args: string[] }, cgroups: string[], noted: (identity: ProcessIdentity) => void): Gate {
  const child = spawn(command.file, command.args, { stdio: ["ignore", "pipe", "ignore", "pipe"], env: {}, detached: true });
  const exit = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => resolve(code));
    child.once("error", () => resolve(null));
  });
  const identity = child.pid ? identityOf(child.pid) : null;
  if (!identity) {
    child.kill("SIGKILL");
    throw new PyroError("sandbox_failed", "Cannot start Firecracker's jailer (its gate did not start).", { hint: "Run `pyro doctor`." });
  }
  noted(identity);
  addProcess(cgroups, identity.pid);
  const control = child.stdio[GATE_FD] as unknown as NodeJS.WritableStream & { on: (e: string, f: () => void) => unknown };
  control.on("error", () => undefined);
  return { child, identity, console: child.stdout!, exit, go: () => void control.end("go\n") };
}

/**
 * One jailed firecracker's start: the chroot made, the gate spawned and in
 * the sandbox's cgroups before anything runs. `console` goes to the
 * supervisor (startSupervisor's `pass`); `start` runs as its `configure`.
 */
export class JailedFirecracker {
  private gate: Gate | null = null;
  private gateExit: Promise<number | null> = Promise.resolve(null);
  private noted: ProcessIdentity[] = [];
  firecracker: ProcessIdentity | null = null;

  constructor(
    readonly layout: JailLayout,
    private readonly o: { jailer: string; firecracker: string; owner: SandboxOwner; cgroups: string[]; note: (processes: ProcessIdentity[]) => void; consoleTail: () => string },
  ) {}

  /** The exec file's name the jailer names the chroot's directory after (it canonicalizes `--exec-file`). */
  static execName(firecracker: string, realpath: (p: string) => string): string {
    const name = basename(realpath(firecracker));
    // The jailer refuses an exec file whose name does not say firecracker (docs/jailer.md).
    if (!name.includes("firecracker")) {
      throw new PyroError("driver_unavailable", `The jailer runs only a file whose name contains "firecracker", and ${firecracker} is ${name}.`, { hint: "Name the firecracker binary firecracker (PYRO_FIRECRACKER), or unset PYRO_JAILER." });
    }
    return name;
  }

  /** The processes the sandbox's notes and handle name: the gate (the jailer, once exec'd) while it lives, then firecracker. */
  processes(): ProcessIdentity[] {
    return [...this.noted, ...(this.firecracker ? [this.firecracker] : [])];
  }

  /**
   * Makes the chroot, the vsock's short name for the supervisor (`vsockLink`,
   * in `vm/run/`: a socket path inside the chroot can pass sun_path's 107
   * bytes, a link's target has no such bound), and spawns the gate. Returns
   * the console's socket, for the supervisor.
   */
  prepare(vsockLink: string): Readable {
    prepareChroot(this.layout, this.o.owner);
    symlinkSync(relative(join(vsockLink, ".."), this.layout.vsock.host), vsockLink);
    const [sh, unshare] = [findExecutable("sh"), findExecutable("unshare")];
    if (!sh || !unshare) throw new PyroError("driver_unavailable", "sh and unshare (util-linux) are needed to start Firecracker's jailer.", { hint: "apt-get install -y util-linux" });
    const command = gatedJailerCommand(sh, unshare, jailerArgv({ jailer: this.o.jailer, firecracker: this.o.firecracker, layout: this.layout, owner: this.o.owner }));
    const gate = spawnGate(command, this.o.cgroups, (identity) => {
      this.noted = [identity];
      this.o.note(this.processes());
    });
    this.gate = gate;
    this.gateExit = gate.exit;
    return gate.console;
  }

  /**
   * The supervisor's `configure`: lets the jailer go, configures and starts
   * the microVM over the API socket in the chroot, then finds firecracker
   * (the one process of the cgroups outside the supervisor's tree, once the
   * jailer's parent has exited) for the handle.
   */
  async start(requests: readonly ApiRequest[], supervisor: () => ProcessIdentity[], gone: () => boolean, timeoutMs: number): Promise<void> {
    this.gate!.go();
    let status: number | null | undefined;
    void this.gateExit.then((code) => (status = code));
    // What the jailer said when it failed is on the console (its stderr goes there): the error carries it.
    const failed = (code: number | null) => new Error(`the jailer exited with status ${code}${this.o.consoleTail() ? `: ${this.o.consoleTail()}` : ""}`);
    try {
      await configureAndStart(this.layout.api.host, requests, { timeoutMs, gone: () => gone() || (status !== undefined && status !== 0) });
    } catch (error) {
      if (status !== undefined && status !== 0) throw failed(status);
      throw error;
    }
    // The jailer's parent exits once it has cloned firecracker and written its pid file.
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([this.gateExit, new Promise<"late">((r) => (timer = setTimeout(() => r("late"), 5_000)))]).finally(() => clearTimeout(timer));
    if (code === "late") throw new Error("the jailer did not exit after starting firecracker");
    if (code !== 0) throw failed(code);
    const theirs = [...supervisor(), ...this.noted];
    const found = cgroupMembers(this.o.cgroups)
      .filter((pid) => !theirs.some((p) => p.pid === pid) && !descendsFrom(pid, theirs))
      .map(identityOf)
      .filter((p): p is ProcessIdentity => p !== null && argvOf(p)?.[0] === `/${this.layout.execName}`);
    if (found.length !== 1) throw new Error(`firecracker could not be told apart in the sandbox's cgroups (${found.length} candidates)`);
    this.firecracker = found[0]!;
    this.noted = [];
    this.o.note(this.processes());
  }

  /** Kills the jailer's processes of a start cut short (the caller then releases the cgroups, which catch the rest). */
  async kill(): Promise<void> {
    await killTrees(this.processes());
  }
}
