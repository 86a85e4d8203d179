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
