import { spawn, type ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";
import { PyroError } from "../../core/errors.js";
import { identityOf, killTrees, type ProcessIdentity } from "../../util/proc.js";
import { pauseAt } from "../../util/testhook.js";
import { addProcess } from "../cgroups.js";
import { readUntil, signalGroup } from "../spawned.js";
import { JAIL_BLOCK_FD, JAIL_INFO_FD } from "./jail.js";

/**
 * Starts a VM's jail with `pyro-agent vmm` as its PID 1 (which starts the
 * VMM) and waits for the supervisor's ready line: bwrap reports the jail's
 * PID 1 on its info fd and waits on its block fd; the supervisor joins the
 * VM's cgroups before it runs; then `configure` (if any) does what the
 * VMM needs from the host while the supervisor waits for the guest (the
 * firecracker driver's API requests, the qemu driver's feeding of a
 * snapshot). Kills everything it started on any failure, an abort included.
 * Both VM drivers start their VMs here, and build the supervisor's argv
 * with `vmmArgv`.
 */

/** The supervisor's ready line ("R", or "E" and why) is on this fd of bwrap, passed through to the supervisor. */
export const VMM_READY_FD = 3;
/** Where the jail, the supervisor and the VMM get the first `pass` fd (after bwrap's info and block fds, 4 and 5); the second goes at the next. */
export const VMM_PASS_FD = 6;
/** The fd the second `pass` fd is at: a restored VM with network gets its snapshot at VMM_PASS_FD and passt's end here. */
export const VMM_PASS_FD2 = VMM_PASS_FD + 1;

/** The supervisor and the VMM get no variable of the host's (API keys, the MCP HTTP token). */
const VMM_ENV: NodeJS.ProcessEnv = {};

export interface SupervisorLaunch {
  /** bwrap, or `pyro-agent launch` around it as root. */
  command: { file: string; args: string[] };
  cgroups: string[];
  /** Records what runs, as it appears (the driver's notes: a start cut short is released from them). */
  notes: (processes: ProcessIdentity[]) => void;
  bootTimeoutMs: number;
  signal?: AbortSignal;
  /**
   * Fds for the VMM (at most two), handed to the jail at VMM_PASS_FD and
   * VMM_PASS_FD2 as it is spawned and passed on with the supervisor's
   * `--pass-fd` (vmmArgv's `pass`): one end of a socketpair (qemu's end of
   * passt's), whose pyro copy is closed in the same synchronous step, before
   * its event loop could read a frame; or a file descriptor (a restore's
   * snapshot), which the caller closes once the start returns.
   */
  pass?: Array<Socket | number>;
  /** The test hook the spawn pauses at (util/testhook.ts); "boot:spawned" by default. */
  pausePoint?: string;
  /**
   * Runs once the jail's PID 1 exists and before it runs (bwrap waits on its
   * block fd), with that process: what the VMM must find in the jail from
   * its first instruction is made here (the firecracker driver's TAP). A
   * rejection fails the start with it, everything started killed.
   */
  prepare?: (jail: ProcessIdentity) => Promise<void>;
  /** Runs once the jail runs; a rejection kills the VM and fails the start with `configureFailure` (else `failure`) of its message. */
  configure?: (gone: () => boolean) => Promise<void>;
  configureFailure?: (why: string) => PyroError;
  /** The error for a supervisor that said "E" (or nothing): `why` is its line, or the best guess. */
  failure: (why: string) => PyroError;
  /** The console's last lines, for a supervisor that died without a word. */
  consoleTail: () => string;
}

export interface Supervised {
  child: ChildProcess;
  /** The supervisor: PID 1 of the jail, the sandbox's process. */
  vmm: ProcessIdentity;
  /** bwrap's monitor (and the launcher's) outside the jail. */
  monitors: ProcessIdentity[];
}

export async function startSupervisor(l: SupervisorLaunch): Promise<Supervised> {
  let child: ChildProcess | null = null;
  let vmm: ProcessIdentity | null = null;
  const monitors: ProcessIdentity[] = [];
  let exited = false;
  // bwrap leads its own process group until it execs the supervisor: a kill of the group reaches a child
  // whose pid bwrap has not reported yet.
  const killGroup = () => {
    if (child?.pid) signalGroup(child.pid, "SIGKILL");
  };
  l.signal?.addEventListener("abort", killGroup, { once: true });
  try {
    const pass = l.pass ?? [];
    if (pass.length > 2) throw new Error("startSupervisor: at most two fds pass to the VMM");
    child = spawn(l.command.file, l.command.args, { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe", "pipe", ...pass], env: VMM_ENV, detached: true });
    // The jail holds the pass sockets now: pyro's copies go before the event loop could read from them.
    for (const p of pass) if (typeof p === "object") p.destroy();
    child.once("exit", () => (exited = true));
    const spawned = new Promise<never>((_, reject) =>
      child!.once("error", (error) => reject(new PyroError("driver_unavailable", `Cannot start the VM's jail: ${error.message}`, { hint: "Run `pyro doctor`." }))),
    );
    const monitor = child.pid ? identityOf(child.pid) : null;
    if (monitor) {
      monitors.push(monitor);
      l.notes([monitor]);
    }
    pauseAt(l.pausePoint ?? "boot:spawned");
    const stdio = child.stdio as unknown as Array<Readable & Writable>;
    const [ready, info, block] = [stdio[VMM_READY_FD]!, stdio[JAIL_INFO_FD]!, stdio[JAIL_BLOCK_FD]!];
    for (const pipe of [ready, info, block]) pipe.on("error", () => undefined);
    const stderr = child.stderr!;
    let early = "";
    stderr.on("data", (d: Buffer) => (early = (early + d.toString("utf8")).slice(-2000)));
    const infoText = await Promise.race([readUntil(info, (t) => t.includes("}"), 15_000), spawned]);
    const childPid = Number(/"child-pid":\s*(\d+)/.exec(infoText)?.[1]);
    vmm = Number.isFinite(childPid) ? identityOf(childPid) : null;
    if (!vmm) throw new PyroError("sandbox_failed", `The VM's jail did not start: ${early.trim().split("\n").slice(-2).join(" | ") || "bwrap reported no process"}.`, { hint: "Run `pyro doctor` to check bubblewrap and user namespaces." });
    addProcess(l.cgroups, vmm.pid);
    l.notes([vmm, ...monitors]);
    if (l.prepare) await Promise.race([l.prepare(vmm), spawned]);
    block.end("go");
    let configureError: Error | null = null;
    const configuring = l.configure?.(() => exited).catch((error: Error) => {
      configureError = error;
      killGroup();
    });
    const line = await Promise.race([readUntil(ready, (t) => t.startsWith("R") || t.includes("\n"), l.bootTimeoutMs + 10_000), spawned]);
    await configuring;
    if (configureError) throw (l.configureFailure ?? l.failure)((configureError as Error).message);
    if (!line.startsWith("R")) {
      throw l.failure(line.startsWith("E") ? line.slice(1).trim() : early.trim().split("\n").slice(-2).join(" | ") || l.consoleTail() || "the VM supervisor exited before the guest agent answered");
    }
    for (const s of [ready, info, stderr]) s.destroy();
    return { child, vmm, monitors };
  } catch (error) {
    killGroup();
    await killTrees([...(vmm ? [vmm] : []), ...monitors]);
    throw error;
  } finally {
    l.signal?.removeEventListener("abort", killGroup);
  }
}

export interface VmmOptions {
  agent: string;
  /** The socket the supervisor serves the host on; absent for `--prepare-snapshot` (a snapshot's template serves nothing). */
  listen?: string;
  prepareSnapshot?: boolean;
  /** How it reaches the guest agent: `fd:N` (qemu's chardev) or `vsock:PATH:PORT` (Firecracker's). */
  guest: string;
  console: string;
  bootTimeoutMs: number;
  deadline: number | null;
  dieWithParent: boolean;
  /** How many of the launch's `pass` fds the VMM gets (at VMM_PASS_FD, then VMM_PASS_FD2). */
  pass?: 0 | 1 | 2;
}

/** `pyro-agent vmm ... -- VMM_ARGV` (docs/drivers.md, "The VM supervisor"), the ready line on VMM_READY_FD. */
export function vmmArgv(o: VmmOptions, vmm: string[]): string[] {
  return [
    o.agent,
    "vmm",
    ...(o.prepareSnapshot ? ["--prepare-snapshot"] : []),
    ...(o.listen !== undefined ? ["--listen", o.listen] : []),
    "--guest", o.guest,
    "--ready-fd", String(VMM_READY_FD),
    "--console", o.console,
    "--boot-timeout-ms", String(o.bootTimeoutMs),
    ...(o.deadline ? ["--deadline", String(o.deadline)] : []),
    ...(o.dieWithParent ? ["--die-with-parent"] : []),
    ...(o.pass ? ["--pass-fd", String(VMM_PASS_FD)] : []),
    ...(o.pass === 2 ? ["--pass-fd", String(VMM_PASS_FD2)] : []),
    "--",
    ...vmm,
  ];
}
