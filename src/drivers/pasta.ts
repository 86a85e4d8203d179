import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { identityOf, type ProcessIdentity } from "../util/proc.js";
import { PyroError } from "../core/errors.js";
import { pauseAt } from "../util/testhook.js";
import type { NetworkInfo } from "./types.js";
import { SANDBOX_NET } from "./network.js";
import { findExecutable } from "./availability.js";

/**
 * pasta (Debian's `passt`), the user-mode network of a namespace sandbox
 * with `network: true` and, behind a TAP, of a firecracker VM: pasta joins
 * the sandbox's (or the VM jail's) user and network namespaces and splices
 * its traffic through sockets of the host; the addresses and the rules that
 * keep the host's loopback out of reach are the ones every driver uses
 * (network.ts). Shared by the two drivers, so neither imports the other's folder.
 */

/** fds pasta gets for the sandbox's namespaces, opened by us (see startPasta). */
const USERNS_FD = 3;
const NETNS_FD = 4;

/**
 * pasta's argv. `tap`: a tap of this name for a VM behind it (the
 * firecracker driver bridges it to the VM's TAP), left unconfigured (no
 * `--config-net`: the namespace gets no address, the guest has the
 * addresses); without it, pasta configures the namespace's own eth0.
 */
export function pastaArgs(pidFile: string, isRoot: boolean, tap?: string): string[] {
  return [
    // As root, pasta would switch to `nobody` and then be refused entry to the sandbox's user namespace.
    ...(isRoot ? ["--runas", "0:0"] : []),
    ...(tap ? [] : ["--config-net"]),
    "-a", SANDBOX_NET.guest_ip,
    "-n", String(SANDBOX_NET.prefix),
    "-g", SANDBOX_NET.gateway,
    "-I", tap ?? SANDBOX_NET.interface,
    "--dns-forward", SANDBOX_NET.dns,
    "--no-map-gw",
    "-T", "none",
    "-U", "none",
    "--ipv4-only",
    "--quiet",
    "--pid", pidFile,
    "--userns", `/proc/self/fd/${USERNS_FD}`,
    "--netns", `/proc/self/fd/${NETNS_FD}`,
  ];
}

/**
 * Starts pasta for the sandbox whose init has host pid `targetPid`; resolves once the interface is configured
 * (or, with `tap`, made).
 * The sandbox's namespaces are opened here and handed to pasta as fds: pasta drops its capabilities
 * before it joins, and as root the sandbox belongs to the sandbox uid, whose /proc/PID/ns pasta could
 * then not open itself.
 */
export async function startPasta(targetPid: number, dir: string, vm?: { tap: string; agent: string }): Promise<{ helper: ProcessIdentity; info: NetworkInfo }> {
  const pidFile = join(dir, "pasta.pid");
  const isRoot = process.getuid?.() === 0;
  const nsFds: number[] = [];
  let child;
  try {
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin" };
    if (vm) {
      // A VM jail's PID 1 is in a user namespace nested in the one owning its network: `pyro-agent tapnet`
      // puts the owner at fd 3 (NS_GET_USERNS) and execs pasta, so pasta is still the process spawned here.
      const pasta = findExecutable("pasta");
      if (!pasta) throw Object.assign(new Error("spawn pasta ENOENT"), { code: "ENOENT" });
      nsFds.push(openSync(`/proc/${targetPid}/ns/net`, "r"));
      const args = ["tapnet", "--netns-fd", String(NETNS_FD), "--owner-userns-fd", String(USERNS_FD), "--", pasta, ...pastaArgs(pidFile, isRoot, vm.tap)];
      child = spawn(vm.agent, args, { stdio: ["ignore", "ignore", "pipe", "ignore", nsFds[0]!], env });
    } else {
      nsFds.push(openSync(`/proc/${targetPid}/ns/user`, "r"), openSync(`/proc/${targetPid}/ns/net`, "r"));
      child = spawn("pasta", pastaArgs(pidFile, isRoot), { stdio: ["ignore", "ignore", "pipe", ...nsFds], env });
    }
  } catch (error) {
    throw new PyroError("sandbox_failed", `Cannot reach the sandbox's namespaces for its network: ${(error as Error).message}`, {
      hint: "The sandbox exited while starting; run `pyro doctor`.",
    });
  } finally {
    for (const fd of nsFds) closeSync(fd);
  }
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const code: number = await new Promise((resolve, reject) => {
    child.on("error", (error) =>
      reject(
        new PyroError("driver_unavailable", `Cannot start pasta for network: ${error.message}`, {
          hint: "Install Debian's passt package (apt-get install -y passt), or run without --network.",
        }),
      ),
    );
    // pasta configures the namespace, then forks into the background: the foreground exit means "ready".
    child.on("exit", (c) => resolve(c ?? 1));
  });
  if (code !== 0) {
    throw new PyroError("sandbox_failed", `pasta could not set up the sandbox network (exit ${code}): ${stderr.trim().split("\n").pop() ?? ""}`, {
      hint: "Run `pyro doctor` to check user-mode networking, or run without --network.",
    });
  }
  // pasta runs in the background now, before its pid is in any note: its pid file and its argv (which names that file) say it is this sandbox's.
  pauseAt("pasta:forked");
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  const helper = identityOf(pid);
  if (!helper) throw new PyroError("sandbox_failed", "pasta exited right after configuring the network.");
  return {
    helper,
    info: {
      enabled: true,
      backend: "pasta",
      interface: SANDBOX_NET.interface,
      guest_ip: SANDBOX_NET.guest_ip,
      gateway: SANDBOX_NET.gateway,
      dns: [SANDBOX_NET.dns],
      host_loopback_reachable: false,
    },
  };
}
