import { spawnSync } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { PyroError } from "../../core/errors.js";
import { killTrees, type ProcessIdentity } from "../../util/proc.js";
import type { SandboxOwner } from "../../util/sandbox-user.js";
import { pauseAt } from "../../util/testhook.js";
import { firecrackerNetworkCheck, TUN_DEVICE } from "../availability.js";
import { startPasta } from "../pasta.js";
import type { NetworkInfo } from "../types.js";

/**
 * A firecracker VM's network with `network: true`: the same user-mode stack
 * and addresses as the other drivers (pasta, ../network.ts), reached
 * through a TAP device, which is the only network Firecracker has.
 *
 * Everything lives in the VM jail's own network namespace (bwrap's
 * --unshare-net, vm/jail.ts), never the host's: pasta attaches to it (as
 * the namespace driver attaches it, by fds of the jail's user and network
 * namespaces) and makes its tap there, unconfigured (no --config-net);
 * `pyro-agent tapnet` (guest/tapnet.c) then makes, in the same namespace,
 * Firecracker's TAP (owned by the VM's uid and persistent, so Firecracker,
 * which runs as that uid with no capability, may open it by name) and a
 * bridge joining it to pasta's tap, and turns IPv6 off there, so the
 * namespace itself (which has no address) never sends a frame pasta could
 * take for the guest's. The guest gets SANDBOX_NET's addresses on its
 * kernel command line, as under qemu; pasta learns its MAC from its frames.
 *
 * What the TAP and the bridge need goes with the namespace: when the jail's
 * last process and pasta (whose tap holds the namespace) are gone, the
 * kernel removes both. pasta does not end with the jail by itself: it is one
 * of the sandbox's processes (its notes, the handle's helpers; its argv
 * names the sandbox's directory for a start cut short) and is killed with it.
 *
 * Why a C subcommand rather than `ip`/`nsenter`: joining the namespaces
 * needs a single-threaded process (setns of a user namespace), the tun
 * ioctls have no stable `ip` spelling for "exclusive" (TUN_EXCL), and it
 * takes the namespaces as fds pyro opened, so a jail that died meanwhile
 * cannot send the plumbing into someone else's namespace, and it refuses its
 * own (the host's) outright. iproute2 is not needed at all.
 */

/** Firecracker's TAP, pasta's tap and the bridge between them, in the jail's network namespace (its own names: nothing else is there). */
export const FIRECRACKER_TAP = "fc0";
export const PASTA_TAP = "pasta0";
export const JAIL_BRIDGE = "br0";

export { TUN_DEVICE };

/** The fd `pyro-agent tapnet` gets the jail's network namespace at. */
const TAPNET_NETNS_FD = 3;

/** `pyro-agent tapnet`'s argv; `userns`: join the user namespace owning the jail's network first (an unprivileged pyro's CAP_NET_ADMIN over it). */
export function tapnetArgv(agent: string, owner: number, userns: boolean, tun: string = TUN_DEVICE): string[] {
  return [
    agent, "tapnet",
    ...(userns ? ["--userns"] : []),
    "--tun", tun,
    "--netns-fd", String(TAPNET_NETNS_FD),
    "--tap", FIRECRACKER_TAP,
    "--owner", String(owner),
    "--bridge", JAIL_BRIDGE,
    "--attach", PASTA_TAP,
  ];
}

/** Refuses a VM with network before anything is made for it, saying what is missing and what to do. */
export function checkFirecrackerNetwork(owner: SandboxOwner | null, tun = TUN_DEVICE): void {
  const check = firecrackerNetworkCheck(owner, tun);
  if (check.ok) return;
  throw new PyroError("driver_unavailable", `The firecracker driver cannot give this VM a network: ${check.detail.replace(/^VMs with network cannot run here: /, "")}.`, {
    hint: "Firecracker's only network is a TAP device it opens by name through /dev/net/tun: make that device mode 0666 (as Debian's udev does: `chmod 0666 /dev/net/tun`, or a udev rule KERNEL==\"tun\", MODE=\"0666\"), run without --network, or use --driver qemu (its network needs no TAP).",
  });
}

/**
 * Plumbs the network of the jail whose PID 1 is `jail`: pasta (handed to
 * `onPasta` as soon as it runs, for the sandbox's notes), then the TAP
 * (made through `tun`, the device the jail gets and the start checked) and
 * the bridge. On a failure pasta is killed here, so nothing is left.
 */
export async function startJailNetwork(jail: ProcessIdentity, dir: string, agent: string, owner: SandboxOwner | null, onPasta: (pasta: ProcessIdentity[]) => void, tun: string = TUN_DEVICE): Promise<{ pasta: ProcessIdentity[]; info: NetworkInfo }> {
  const pasta = await startPasta(jail, dir, agent, { tap: PASTA_TAP });
  onPasta(pasta.helpers);
  try {
    pauseAt("tap:pasta");
    runTapnet(jail, agent, owner, tun);
    pauseAt("tap:made");
  } catch (error) {
    await killTrees(pasta.helpers);
    throw error;
  }
  return { pasta: pasta.helpers, info: pasta.info };
}

function runTapnet(jail: ProcessIdentity, agent: string, owner: SandboxOwner | null, tun: string): void {
  // As root (owner set) the host's CAP_NET_ADMIN covers the jail's network; an unprivileged pyro gets it in the user namespace owning it, which is its own.
  const userns = !owner;
  const fds: number[] = [];
  try {
    fds.push(openSync(`/proc/${jail.pid}/ns/net`, "r"));
  } catch (error) {
    throw new PyroError("sandbox_failed", `Cannot reach the VM jail's namespaces for its network: ${(error as Error).message}`, { hint: "The VM exited while starting; its console may say why." });
  }
  let r;
  try {
    r = spawnSync(agent, tapnetArgv(agent, owner ? owner.uid : process.getuid!(), userns, tun).slice(1), { stdio: ["ignore", "ignore", "pipe", ...fds], encoding: "utf8", timeout: 10_000, env: {} });
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  if (r.status !== 0) {
    const why = (r.stderr ?? "").trim().split("\n").pop() || r.error?.message || `exit ${r.status ?? r.signal}`;
    throw new PyroError("sandbox_failed", `Cannot make the VM's TAP device and its bridge to pasta: ${why}`, { hint: "Run `pyro doctor` (firecracker's network check), or run without --network." });
  }
}
