import { existsSync, lstatSync, readlinkSync } from "node:fs";
import { launchCommand } from "../launch.js";

/**
 * The jail a VMM runs in (qemu; firecracker when its own jailer is not
 * used): bubblewrap's namespaces around the VM supervisor and the VMM
 * (user, pid, network, ipc, uts, mount). All VMs run as one host uid
 * (pyro's sandbox uid as root, the user otherwise); without the jail a
 * process that escaped one VMM would see every other VM's VMM in the
 * host's pid namespace, ptrace it (qemu is dumpable), reach its control
 * socket (QMP, Firecracker's API) through /proc/PID/root, and reach the
 * network. In the jail it sees its own supervisor and VMM only, no network
 * but loopback (a firecracker VM with network: its TAP, bridged to pasta
 * in the jail's own network namespace, firecracker/network.ts), and a
 * filesystem of the system's programs (read-only), the environment's
 * artifacts (read-only) and its own VM directory.
 */

export interface JailPaths {
  /** Read-only inside at the same path: the kernel, initramfs, root image, the agent binary. */
  readOnly: string[];
  /** Writable inside at the same path: the VM's directory. */
  writable: string[];
  /** Where each path is reached from by bwrap (as root, the launcher's staged copy of it). */
  source: (path: string) => string;
}

/** The system directories qemu's binary, libraries and firmware live in; a symlink (merged /usr) stays a symlink. */
const SYSTEM = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

function systemBinds(): string[] {
  const out: string[] = [];
  for (const p of SYSTEM) {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) out.push("--symlink", readlinkSync(p), p);
    else if (st.isDirectory()) out.push("--ro-bind", p, p);
  }
  // The dynamic linker finds multiarch libraries (/usr/lib/x86_64-linux-gnu) through its cache.
  if (existsSync("/etc/ld.so.cache")) out.push("--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache");
  return out;
}

/** fds bwrap is given: 3 = the supervisor's ready line (passed through), 4 = bwrap's info JSON, 5 = bwrap waits on it before exec. */
export const JAIL_INFO_FD = 4;
export const JAIL_BLOCK_FD = 5;

/** `tun`: the host's tun device, bound at /dev/net/tun (a firecracker VM with network opens its TAP through it). */
export function jailArgs(paths: JailPaths, options: { dieWithParent: boolean; kvm: boolean; tun?: string }, command: string[]): string[] {
  const args = [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    // The supervisor is PID 1: killing it (the handle's process) ends the namespace, qemu with it.
    "--as-pid-1",
    ...(options.dieWithParent ? ["--die-with-parent"] : []),
    ...systemBinds(),
    "--dev", "/dev",
    ...(options.kvm ? ["--dev-bind", "/dev/kvm", "/dev/kvm"] : []),
    ...(options.tun ? ["--dev-bind", options.tun, "/dev/net/tun"] : []),
    "--proc", "/proc",
    "--tmpfs", "/tmp",
  ];
  for (const p of paths.readOnly) args.push("--ro-bind", paths.source(p), p);
  for (const p of paths.writable) args.push("--bind", paths.source(p), p);
  args.push("--info-fd", String(JAIL_INFO_FD), "--block-fd", String(JAIL_BLOCK_FD), "--", ...command);
  return args;
}

/**
 * The jail's command: bwrap itself, or, as root, `pyro-agent launch` around
 * it (guest/launch.c), which binds `binds` where the sandbox uid reaches
 * them and drops to that uid. `--parent`: a launcher whose starter died
 * before it exec'd starts nothing. `kvm`: the launcher keeps /dev/kvm's
 * group as the one supplementary group, where that group (not root's) may
 * open it (kvmDeviceGroup), so a root pyro's VMs get KVM as a kvm-group user's do.
 */
export function jailCommand(
  bwrap: string,
  jail: string[],
  launch: { agent: string; owner: { uid: number; gid: number }; binds: string[]; kvm: boolean } | null,
): { file: string; args: string[] } {
  if (!launch) return { file: bwrap, args: jail };
  const { agent, owner, binds, kvm } = launch;
  return launchCommand({ agent, owner, binds, ...(kvm ? { kvmDevice: KVM_DEVICE } : {}) }, [bwrap, ...jail]);
}

export const KVM_DEVICE = "/dev/kvm";
