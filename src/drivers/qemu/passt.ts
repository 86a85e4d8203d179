import { spawn } from "node:child_process";
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync } from "node:fs";
import { dirname } from "node:path";
import { PyroError } from "../../core/errors.js";
import { identityOf, signalIfAlive, waitForExit, type ProcessIdentity } from "../../util/proc.js";
import type { SandboxOwner } from "../../util/sandbox-user.js";
import { pauseAt } from "../../util/testhook.js";
import { findExecutable } from "../availability.js";
import { SANDBOX_NET } from "../network.js";
import type { NetworkInfo } from "../types.js";

/**
 * A qemu VM's network with `network: true`: passt (Debian's `passt`, the
 * same user-mode stack as the namespace driver's pasta) on the host's
 * network, and qemu's `-netdev stream` connected to passt's unix socket.
 *
 * passt cannot run in the qemu jail (that has no network but loopback), so
 * it runs beside it, in a sandbox of its own making (passt detaches into
 * new namespaces, drops its capabilities and filters its syscalls once the
 * socket is bound), as the VM's uid: when pyro is root, through
 * `pyro-agent launch` (as bwrap is), which binds the VM's socket directory
 * where that uid can reach it (the state directory is usually under /root,
 * mode 700) and drops root before it execs passt. It is started in the foreground (`-f`: its pid is the one pyro
 * spawned, recorded before anything waits on it) and for one client
 * (`-1`): it exits when qemu's connection closes, so a VM that dies any
 * way takes its passt with it; a passt whose qemu never came is found by
 * its argv, which names the socket in the sandbox's directory.
 *
 * The guest gets the explicit addresses of SANDBOX_NET on its kernel
 * command line (no DHCP: `--no-dhcp` and the IPv6 autoconfiguration off);
 * `--no-map-gw` keeps the gateway address from reaching the host's
 * loopback, and no port is forwarded to the guest (`-t none -u none`).
 */

/** The kernel command line's network words (guest/vmcfg.c checks them). */
export function guestNetCmdline(): string[] {
  return [`pyro.ip=${SANDBOX_NET.guest_ip}/${SANDBOX_NET.prefix}`, `pyro.gw=${SANDBOX_NET.gateway}`, `pyro.dns=${SANDBOX_NET.dns}`];
}

/** The guest's MAC: fixed (one NIC per VM, on a link of its own); passt learns it from the guest's first frame. */
export const GUEST_MAC = "52:54:00:12:34:56";

export function passtArgs(socket: string): string[] {
  return [
    "--foreground",
    "--one-off",
    "--socket", socket,
    "-a", SANDBOX_NET.guest_ip,
    "-n", String(SANDBOX_NET.prefix),
    "-g", SANDBOX_NET.gateway,
    "--dns-forward", SANDBOX_NET.dns,
    "--no-map-gw",
    "-t", "none",
    "-u", "none",
    "--ipv4-only",
    "--no-dhcp",
    "--no-dhcpv6",
    "--no-ndp",
    "--no-ra",
    "--quiet",
  ];
}

export const PASST_NETWORK: NetworkInfo = {
  enabled: true,
  backend: "passt",
  interface: SANDBOX_NET.interface,
  guest_ip: SANDBOX_NET.guest_ip,
  gateway: SANDBOX_NET.gateway,
  dns: [SANDBOX_NET.dns],
  host_loopback_reachable: false,
};

/** How long passt may take to bind its socket; it takes milliseconds. */
const PASST_READY_MS = 5_000;

/** The command that runs passt: itself, or (pyro as root) through the launcher as the VM's uid. */
export function passtCommand(passt: string, socket: string, launch: { agent: string; owner: SandboxOwner; stage: string } | null): { file: string; args: string[]; socket: string } {
  if (!launch) return { file: passt, args: passtArgs(socket), socket };
  const dir = dirname(socket);
  const staged = `${launch.stage}/pyro${socket}`;
  return { file: launch.agent, args: ["launch", "--uid", String(launch.owner.uid), "--gid", String(launch.owner.gid), "--bind", dir, "--", passt, ...passtArgs(staged)], socket: staged };
}

/** sun_path holds 108 bytes with its NUL. */
const MAX_SOCKET_PATH = 107;

/**
 * Starts passt with its socket at `socket` (in the VM's run/ directory) and
 * its stderr in `log`; resolves once the socket exists, with
 * passt's identity. `onSpawned` gets it first, before any wait, so a kill of
 * pyro at any later point leaves a passt that the sandbox's notes name.
 */
export async function startPasst(socket: string, log: string, launch: { agent: string; owner: SandboxOwner; stage: string } | null, onSpawned: (passt: ProcessIdentity) => void): Promise<ProcessIdentity> {
  const passt = findExecutable("passt");
  if (!passt) {
    throw new PyroError("driver_unavailable", "passt is not installed: the qemu driver gives VMs a network through it.", {
      hint: "Install Debian's passt package (apt-get install -y passt), or run without --network.",
    });
  }
  const command = passtCommand(passt, socket, launch);
  if (command.socket.length > MAX_SOCKET_PATH) {
    throw new PyroError("invalid_argument", `The state directory path is too long for passt's unix socket (${command.socket.length} bytes).`, { hint: "Set PYRO_STATE_DIR to a shorter directory." });
  }
  // One boot's messages: a task that boots many times keeps only the last passt's.
  const logFd = openSync(log, constants.O_WRONLY | constants.O_TRUNC | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  let identity: ProcessIdentity | null = null;
  let exited: number | null = null;
  try {
    const child = spawn(command.file, command.args, { stdio: ["ignore", "ignore", logFd], detached: true, env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } });
    const spawnError = new Promise<never>((_, reject) =>
      child.once("error", (error) => reject(new PyroError("driver_unavailable", `Cannot start passt for the VM's network: ${error.message}`, { hint: "apt-get install -y passt, or run without --network." }))),
    );
    child.once("exit", (code, signal) => (exited = code ?? (signal ? 128 : 1)));
    identity = child.pid ? identityOf(child.pid) : null;
    if (identity) onSpawned(identity);
    child.unref();
    pauseAt("passt:spawned");
    const deadline = Date.now() + PASST_READY_MS;
    const ready = (async () => {
      for (;;) {
        if (isSocket(socket)) return;
        if (exited !== null) throw new PyroError("sandbox_failed", `passt could not set up the VM's network (exit ${exited}): ${logTail(log)}`, { hint: "Run `pyro doctor` to check user-mode networking, or run without --network." });
        if (Date.now() > deadline) throw new PyroError("sandbox_failed", `passt did not open its socket within ${PASST_READY_MS} ms: ${logTail(log)}`, { hint: "Run `pyro doctor`, or run without --network." });
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await Promise.race([ready, spawnError]);
    if (!identity) throw new PyroError("sandbox_failed", "passt exited right after it started.");
    return identity;
  } catch (error) {
    if (identity) {
      signalIfAlive(identity, "SIGKILL");
      await waitForExit(identity, 5_000);
    }
    throw error;
  } finally {
    closeSync(logFd);
  }
}

function isSocket(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** The last line passt wrote (its log is pyro's file; read without following links, at most 2 KiB). */
function logTail(log: string): string {
  let fd = -1;
  try {
    fd = openSync(log, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(2048, size));
    const n = readSync(fd, buf, 0, buf.length, Math.max(0, size - buf.length));
    const lines = buf.subarray(0, n).toString("utf8").replace(/[^\x20-\x7e\n]/g, "").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("Failed to send"));
    return lines.slice(-2).join(" | ") || "no message";
  } catch {
    return "no message";
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
