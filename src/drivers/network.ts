import type { NetworkInfo } from "./types.js";

/**
 * The user-mode network every driver gives a sandbox with `network: true`
 * (pasta for the namespace driver, passt for the qemu driver: one stack).
 *
 * The sandbox gets an address of its own (10.0.2.15/24, gateway 10.0.2.2,
 * DNS forwarded at 10.0.2.3), because passt and pasta would otherwise copy
 * the host's address and make the host's own non-loopback services
 * unreachable. Host loopback stays out of reach: `--no-map-gw` stops the
 * gateway address from mapping to the host's 127.0.0.1, and no port is
 * forwarded either way (`-T none -U none` for pasta, `-t none -u none` for
 * passt).
 */
export const SANDBOX_NET = {
  interface: "eth0",
  guest_ip: "10.0.2.15",
  prefix: 24,
  gateway: "10.0.2.2",
  dns: "10.0.2.3",
} as const;

export const LOOPBACK_ONLY: NetworkInfo = {
  enabled: false,
  backend: "none",
  interface: null,
  guest_ip: null,
  gateway: null,
  dns: [],
  host_loopback_reachable: false,
};

/** A VM's kernel command line words for its network (guest/vmcfg.c checks them): both VM drivers' guests configure eth0 from them. */
export function guestNetCmdline(): string[] {
  return [`pyro.ip=${SANDBOX_NET.guest_ip}/${SANDBOX_NET.prefix}`, `pyro.gw=${SANDBOX_NET.gateway}`, `pyro.dns=${SANDBOX_NET.dns}`];
}

/**
 * A VM guest's MAC: fixed (one NIC per VM, on a link of its own). passt and
 * pasta learn it from the guest's first frame (measured with Debian 12's
 * 0.0~git20230309: pasta answers whichever MAC the guest's frames come from).
 */
export const GUEST_MAC = "52:54:00:12:34:56";
