import { PyroError } from "../../core/errors.js";
import type { SandboxSpec, VmBootFiles } from "../types.js";
import { GUEST_MAC, guestNetCmdline } from "../network.js";
import { agentBootWords, type DataLayer } from "../vm/guest.js";
import { GUEST_CID, type MicroVm } from "./api.js";
import { FIRECRACKER_TAP } from "./network.js";

/**
 * The firecracker command line, the guest kernel's, and the microVM's
 * description, as pure functions of the sandbox spec (unit-tested, and
 * their API requests checked against Firecracker's published description).
 */

/** The vsock port the agent listens on in the guest (`pyro.vsock`); the supervisor sends `CONNECT 52`. */
export const AGENT_VSOCK_PORT = 52;

/**
 * The guest kernel's command line. `reboot=k`: a guest reboot goes through
 * the i8042 reset line, which ends Firecracker (it has no other way out);
 * `panic=1` turns a panic into that reboot after a second. `pci=off`:
 * Firecracker has no PCI bus (its virtio devices are virtio-mmio, described
 * in ACPI since Firecracker 1.8, which is how Debian's kernel finds them:
 * it is built without VIRTIO_MMIO_CMDLINE_DEVICES). Firecracker appends its
 * own `virtio_mmio.device=` words; the agent hands them to virtio_mmio,
 * which ignores a parameter it does not have.
 */
export function bootArgs(spec: SandboxSpec, data: DataLayer): string {
  return ["console=ttyS0", "quiet", "reboot=k", "panic=1", "pci=off", ...agentBootWords(spec, data, { vsock: AGENT_VSOCK_PORT }), ...(spec.network ? guestNetCmdline() : [])].join(" ");
}

/** Firecracker's instance id: 1..64 of `[A-Za-z0-9-]` (ours have an underscore). */
export function instanceId(sandboxId: string): string {
  const id = sandboxId.replace(/_/g, "-");
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) throw new PyroError("internal", `No Firecracker instance id can be made of ${JSON.stringify(sandboxId)}.`);
  return id;
}

/** firecracker's own arguments: its API socket and id; everything else comes over the API. */
export function firecrackerArgs(binary: string, apiSocket: string, sandboxId: string): string[] {
  return [binary, "--api-sock", apiSocket, "--id", instanceId(sandboxId)];
}

/** The microVM a sandbox is: what bootRequests turns into API calls. */
export function microVm(spec: SandboxSpec, boot: VmBootFiles, data: DataLayer, vsockPath: string): MicroVm {
  return {
    kernel: boot.kernel,
    initramfs: boot.initramfs,
    boot_args: bootArgs(spec, data),
    vcpu_count: spec.vcpu_count,
    mem_mib: spec.mem_mib,
    root_image: boot.root_image,
    data_disk: data.kind === "disk" ? data.path : null,
    vsock: { guest_cid: GUEST_CID, uds_path: vsockPath },
    // The TAP is in the jail's network namespace, where Firecracker opens it by name (network.ts makes it first).
    tap: spec.network ? { host_dev_name: FIRECRACKER_TAP, guest_mac: GUEST_MAC } : null,
  };
}
