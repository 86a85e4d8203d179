import { spawn } from "node:child_process";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import type { Socket } from "node:net";
import { PyroError } from "../../core/errors.js";
import { identityOf, type ProcessIdentity } from "../../util/proc.js";
import type { SandboxOwner } from "../../util/sandbox-user.js";
import { pauseAt } from "../../util/testhook.js";
import { findExecutable } from "../availability.js";
import { SANDBOX_NET } from "../network.js";
import type { NetworkInfo } from "../types.js";
import { launchCommand, launchStaged } from "../launch.js";

/**
 * A qemu VM's network with `network: true`: passt (Debian's `passt`, the
 * same user-mode stack as the namespace driver's pasta) on the host's
 * network, joined to qemu's `-netdev stream` by a socketpair: passt gets one
 * end (`--fd 3`), qemu the other (through the jail and the VM supervisor,
 * `vmm --pass-fd`), so there is no socket path another process could
 * connect to first, and none whose length passt limits (it keeps 98 bytes).
 *
 * passt cannot run in the qemu jail (that has no network but loopback), so
 * it runs beside it, in a sandbox of its own making (passt detaches into
 * new namespaces, drops its capabilities and filters its syscalls), as the
 * VM's uid: when pyro is root, through `pyro-agent launch` (as bwrap is),
 * which binds the VM's run/ directory where that uid can reach it (the
 * state directory is usually under /root, mode 700) for passt's pid file,
 * and drops root before it execs passt. It runs in the foreground (`-f`:
 * its pid is the one pyro spawned, noted before anything waits on it); with
 * `--fd` it ends once the socket closes, that is when qemu exits (the vmm
 * and pyro close their copies as soon as qemu holds one), so a VM that dies
 * any way takes its passt with it. Its pid file's path names the sandbox's
 * directory: a passt whose notes were never written (pyro killed right
 * after the spawn) is found by its argv.
 *
 * The guest gets the explicit addresses of SANDBOX_NET on its kernel
 * command line (no DHCP: `--no-dhcp` and the IPv6 autoconfiguration off);
 * `--no-map-gw` keeps the gateway address from reaching the host's
 * loopback, and no port is forwarded to the guest (`-t none -u none`).
 */

export { GUEST_MAC, guestNetCmdline } from "../network.js";

/** passt's end of the socketpair, at this fd in passt. */
export const PASST_FD = 3;

export function passtArgs(pidFile: string): string[] {
  return [
    "--foreground",
    "--fd", String(PASST_FD),
    "--pid", pidFile,
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

/** The command that runs passt: itself, or (pyro as root) through the launcher as the VM's uid. */
export function passtCommand(passt: string, runDir: string, launch: { agent: string; owner: SandboxOwner } | null): { file: string; args: string[] } {
  const pidFile = `${runDir}/passt.pid`;
  if (!launch) return { file: passt, args: passtArgs(pidFile) };
  // The VM's uid reaches run/ only at the launcher's staged path (which still names the directory).
  return launchCommand({ agent: launch.agent, owner: launch.owner, binds: [runDir] }, [passt, ...passtArgs(launchStaged(pidFile))]);
}

/**
 * Starts passt for a VM whose sockets live in `runDir`, its stderr in `log`.
 * Returns at once (no wait: the socketpair is connected, qemu's frames wait
 * in it until passt reads them) with passt's identity, already handed to
 * `onSpawned` (the sandbox's notes), and pyro's end of the socketpair, to be
 * given to the jail as it is spawned and closed right after: synchronously,
 * before pyro's event loop could read a byte of it.
 */
export function startPasst(runDir: string, log: string, launch: { agent: string; owner: SandboxOwner } | null, onSpawned: (passt: ProcessIdentity) => void): { identity: ProcessIdentity; peer: Socket } {
  const passt = findExecutable("passt");
  if (!passt) {
    throw new PyroError("driver_unavailable", "passt is not installed: the qemu driver gives VMs a network through it.", {
      hint: "Install Debian's passt package (apt-get install -y passt), or run without --network.",
    });
  }
  const command = passtCommand(passt, runDir, launch);
  // One boot's messages: a task that boots many times keeps only the last passt's.
  const logFd = openSync(log, constants.O_WRONLY | constants.O_TRUNC | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  try {
    // stdio[3] "pipe" is a socketpair (libuv): passt's end at fd 3, pyro's end child.stdio[3].
    const child = spawn(command.file, command.args, { stdio: ["ignore", "ignore", logFd, "pipe"], detached: true, env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } });
    const peer = (child.stdio as unknown as Socket[])[PASST_FD]!;
    // Node starts reading a child's pipe as it wraps it; pyro must never take a frame meant for qemu.
    (peer as unknown as { _handle?: { readStop?: () => void } })._handle?.readStop?.();
    peer.on("error", () => undefined);
    child.once("error", () => undefined);
    const identity = child.pid ? identityOf(child.pid) : null;
    if (!identity) {
      peer.destroy();
      throw new PyroError("driver_unavailable", "Cannot start passt for the VM's network.", { hint: "apt-get install -y passt, or run without --network." });
    }
    onSpawned(identity);
    child.unref();
    pauseAt("passt:spawned");
    return { identity, peer };
  } finally {
    closeSync(logFd);
  }
}

/** Why passt is gone (its last message), for a VM whose passt did not outlive its boot. */
export function passtFailure(log: string): PyroError {
  return new PyroError("sandbox_failed", `passt could not set up the VM's network: ${logTail(log)}`, { hint: "Run `pyro doctor` to check user-mode networking, or run without --network." });
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
