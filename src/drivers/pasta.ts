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
 * Starts pasta for the sandbox whose init is `target`; resolves once the interface is configured
 * (or, with `vm`, the tap made), with pasta and its watcher (both to be noted and killed with the sandbox).
 * The sandbox's namespaces are opened here and handed to pasta as fds: pasta drops its capabilities
 * before it joins, and as root the sandbox belongs to the sandbox uid, whose /proc/PID/ns pasta could
 * then not open itself.
 *
 * pasta runs under `pyro-agent netwatch` (guest/netwatch.c): given fds, the pasta of Debian 12 never
 * learns that the sandbox ended, and a sandbox that died on its own (its init killed from outside, the
 * OOM killer) with no pyro process alive left it running, holding the namespace and host sockets, until a
 * later command's reaper. The watcher holds a pidfd of the init (checked against its start time, so
 * never a reused pid's), is pasta's subreaper, and SIGKILLs pasta as soon as the init ends; it ends
 * itself once pasta has. Its argv names pasta's pid file, so the reaper finds it as it finds pasta.
 */
export async function startPasta(target: ProcessIdentity, dir: string, agent: string, vm?: { tap: string }): Promise<{ helpers: ProcessIdentity[]; info: NetworkInfo }> {
  const pidFile = join(dir, "pasta.pid");
  const isRoot = process.getuid?.() === 0;
  const pasta = findExecutable("pasta");
  if (!pasta) {
    throw new PyroError("driver_unavailable", "Cannot start pasta for network: pasta is not installed.", {
      hint: "Install Debian's passt package (apt-get install -y passt), or run without --network.",
    });
  }
  const watch = ["netwatch", "--target", `${target.pid}:${target.start_time}`, "--pid-file", pidFile, "--"];
  const nsFds: number[] = [];
  let child;
  try {
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin" };
    // Its own session, as pasta's background process is: a Ctrl-C to the CLI's terminal does not end the sandbox's network.
    if (vm) {
      // A VM jail's PID 1 is in a user namespace nested in the one owning its network: `pyro-agent tapnet`
      // puts the owner at fd 3 (NS_GET_USERNS) and execs pasta, so pasta is still the watcher's child.
      nsFds.push(openSync(`/proc/${target.pid}/ns/net`, "r"));
      const args = [...watch, agent, "tapnet", "--netns-fd", String(NETNS_FD), "--owner-userns-fd", String(USERNS_FD), "--", pasta, ...pastaArgs(pidFile, isRoot, vm.tap)];
      child = spawn(agent, args, { stdio: ["ignore", "pipe", "pipe", "ignore", nsFds[0]!], env, detached: true });
    } else {
      nsFds.push(openSync(`/proc/${target.pid}/ns/user`, "r"), openSync(`/proc/${target.pid}/ns/net`, "r"));
      child = spawn(agent, [...watch, pasta, ...pastaArgs(pidFile, isRoot)], { stdio: ["ignore", "pipe", "pipe", ...nsFds], env, detached: true });
    }
  } catch (error) {
    throw new PyroError("sandbox_failed", `Cannot reach the sandbox's namespaces for its network: ${(error as Error).message}`, {
      hint: "The sandbox exited while starting; run `pyro doctor`.",
    });
  } finally {
    for (const fd of nsFds) closeSync(fd);
  }
  let stderr = "";
  let stdout = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  // null: the watcher said "ready" (pasta configured the namespace and runs in the background, its child); else pasta's (or the watcher's) exit code.
  const code: number | null = await new Promise((resolve, reject) => {
    child.on("error", (error) =>
      reject(
        new PyroError("driver_unavailable", `Cannot start pasta for network: ${error.message}`, {
          hint: "Run `npm run build` (the guest agent runs pasta), or run without --network.",
        }),
      ),
    );
    child.stdout!.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes("ready\n")) resolve(null);
    });
    child.on("exit", (c, signal) => resolve(c ?? (signal ? 128 : 1)));
  });
  child.stdout!.destroy();
  child.stderr!.destroy();
  if (code !== null) {
    throw new PyroError("sandbox_failed", `pasta could not set up the sandbox network (exit ${code}): ${stderr.trim().split("\n").pop() ?? ""}`, {
      hint: "Run `pyro doctor` to check user-mode networking, or run without --network.",
    });
  }
  child.unref();
  const watcher = child.pid ? identityOf(child.pid) : null;
  // pasta runs in the background now, before its pid is in any note: its pid file and its argv (which names that file) say it is this sandbox's,
  // and its watcher (whose argv names the file too) kills it if the sandbox ends before anyone notes it.
  pauseAt("pasta:forked");
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  const helper = identityOf(pid);
  if (!helper) throw new PyroError("sandbox_failed", "pasta exited right after configuring the network.");
  return {
    helpers: [helper, ...(watcher ? [watcher] : [])],
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
