import { readFileSync } from "node:fs";
import { PyroError } from "../../core/errors.js";
import type { SandboxSpec, VmBootFiles } from "../types.js";
import { agentBootWords, type DataLayer } from "../vm/guest.js";
import { GUEST_MAC, guestNetCmdline } from "./passt.js";

/**
 * The qemu command line and the guest kernel's, as pure functions of the
 * sandbox spec: what `-M microvm` needs to boot Debian's cloud kernel to our
 * agent (../shared/reference/host-facts.md, "VMs under QEMU TCG": the recipe
 * measured on this kind of host, and why each piece is there).
 */

/** The virtio-serial port the agent serves on (guest/vminit.c looks it up by this name). */
export const AGENT_PORT = "org.pyro.agent";

export { shmMib, type DataLayer } from "../vm/guest.js";

export interface QemuPaths {
  /** QMP, for snapshots and for asking a stalled VM what state it is in. */
  qmp: string;
  /**
   * The network's backend (network on): the fd qemu gets its end of passt's
   * socketpair at (`-netdev stream,addr.type=fd`), or "template": a
   * snapshot's template, whose virtio-net device sits on a hub port of its
   * own that drops every frame. The saved state is the device's, not the
   * backend's, so a restore attaches the same device to its own passt;
   * the hub's link is up, as the template's must be when saved (qemu takes
   * a restored virtio-net's link state from the device's saved status).
   */
  netFd?: number | "template";
}

/**
 * qemu's end of the agent stream: one end of a socketpair the VM supervisor
 * makes and hands qemu at this fd (`pyro-agent vmm --guest fd:N`), so no
 * path exists that another process could connect to first.
 */
export const AGENT_CHARDEV_FD = 4;

/**
 * The TSC frequency in kHz, for `tsc_early_khz`: under TCG the guest cannot
 * calibrate its TSC against the PIT reliably (12 of 45 boots hung without
 * it, 0 of ~110 with it). null when /proc/cpuinfo gives no MHz (the kernel
 * then calibrates as usual).
 */
export function tscKhz(cpuinfo: string = readCpuinfo()): number | null {
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1];
  const khz = mhz ? Math.round(Number(mhz) * 1000) : NaN;
  return Number.isFinite(khz) && khz > 0 ? khz : null;
}

function readCpuinfo(): string {
  try {
    return readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    return "";
  }
}

/**
 * The guest kernel's command line: the measured boot recipe, then the
 * agent's settings (`pyro.*`, parsed and bounds-checked by the agent,
 * docs/protocol.md "VM boot"). No value here comes from a caller unchecked:
 * the hostname is the sandbox id's, the numbers are validated integers.
 */
export function kernelCmdline(spec: SandboxSpec, data: DataLayer, tsc: number | null = tscKhz(), snapshot = false): string {
  const parts = [
    "console=ttyS0",
    "quiet",
    // Reboot by triple fault (qemu -no-reboot then exits) and never wait after a panic.
    "reboot=t",
    "panic=-1",
    // Only for a snapshot's template (and so its restores): freed pages are zeroed, so the snapshot skips them
    // (qemu sends a zero page as a flag), e.g. the initramfs the kernel unpacked and freed. Measured: a busybox
    // snapshot 67 MB without, 55 MB with. Not for cold boots: the kernel then zeroes all RAM as it frees it into
    // the page allocator at boot, and qemu's PSS for a 256 MiB guest went from ~190 to ~380 MiB.
    ...(snapshot ? ["init_on_free=1"] : []),
    // Only for a template: the agent runs `/bin/sh -lc true` once before it serves, so every restore's first
    // command finds the shell in the guest's page cache (guest/vminit.c warm_up; ~50 ms less under TCG).
    ...(snapshot ? ["pyro.warm=1"] : []),
    ...(tsc ? [`tsc_early_khz=${tsc}`, "tsc=reliable"] : []),
    ...agentBootWords(spec, data, { port: AGENT_PORT }),
    // The network's addresses, explicit: the guest configures them itself (no DHCP, nothing guessed).
    ...(spec.network ? guestNetCmdline() : []),
  ];
  for (const p of parts) {
    if (/\s/.test(p)) throw new Error(`kernel command line part with whitespace: ${JSON.stringify(p)}`);
  }
  return parts.join(" ");
}

/**
 * qemu's arguments. microvm with its ACPI on (the virtio-mmio devices are
 * found through it: Debian builds without VIRTIO_MMIO_CMDLINE_DEVICES), no
 * default devices, no monitor on a terminal; the root image read-only (many
 * VMs share it), the data disk writable, the agent on a virtserialport whose
 * chardev is a socketpair only the supervisor holds the other end of; qemu's own seccomp
 * sandbox on, so a compromised qemu cannot spawn programs or change its
 * privileges.
 */
export function qemuArgs(spec: SandboxSpec, boot: VmBootFiles, data: DataLayer, paths: QemuPaths, accel: "kvm" | "tcg", tsc: number | null = tscKhz(), snapshot = false): string[] {
  const args = [
    "-M", "microvm",
    "-accel", accel,
    "-cpu", accel === "kvm" ? "host" : "max",
    "-m", String(spec.mem_mib),
    "-smp", String(spec.vcpu_count),
    "-nodefaults",
    "-no-user-config",
    "-display", "none",
    "-no-reboot",
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel", boot.kernel,
    "-initrd", boot.initramfs,
    "-append", kernelCmdline(spec, data, tsc, snapshot),
    // The console (kernel and agent messages) to qemu's stdout, which the supervisor caps into the sandbox's log.
    "-serial", "stdio",
    // A snapshot's template and its restores: the stream carries no run state (the template is saved stopped),
    // so a restoring qemu runs the guest as soon as it has loaded, with no QMP `cont` round trip on the way.
    ...(snapshot ? ["-global", "migration.store-global-state=off"] : []),
    "-drive", `id=root,file=${boot.root_image},format=raw,if=none,readonly=on`,
    "-device", "virtio-blk-device,drive=root",
  ];
  if (data.kind === "disk") {
    args.push("-drive", `id=data,file=${data.path},format=raw,if=none,discard=unmap`, "-device", "virtio-blk-device,drive=data");
  }
  args.push(
    "-device", "virtio-serial-device",
    "-chardev", `socket,id=agent,fd=${AGENT_CHARDEV_FD}`,
    "-device", `virtserialport,chardev=agent,name=${AGENT_PORT}`,
    "-qmp", `unix:${paths.qmp},server=on,wait=off`,
  );
  if (spec.network) {
    if (paths.netFd === undefined) throw new Error("qemuArgs: a VM with network needs the fd of passt's socketpair");
    // qemu 7.2's stream netdev on an inherited, connected socket: passt's socketpair (qemu 7.2 takes addr.type=fd).
    // A template's: a hub with this one port (no peer, no fd, nothing reaches the host), the same device on it.
    const netdev = paths.netFd === "template" ? "hubport,id=net,hubid=0" : `stream,id=net,server=off,addr.type=fd,addr.str=${paths.netFd}`;
    args.push("-netdev", netdev, "-device", `virtio-net-device,netdev=net,mac=${GUEST_MAC}`);
  }
  // Last, so every other device keeps its virtio-mmio slot. Free page reporting only (no stats polling, no free
  // page hinting, no deflate-on-oom; pyro never inflates it): the guest hands back runs of pages it freed (2 MiB
  // and up, 2 s after they were freed) and qemu discards them, so an idle VM's host memory follows what the guest
  // uses now, not the most it ever touched (docs/security.md: what the device exposes).
  args.push("-device", "virtio-balloon-device,free-page-reporting=on");
  for (const p of [boot.kernel, boot.initramfs, boot.root_image, paths.qmp, ...(data.kind === "disk" ? [data.path] : [])]) {
    // qemu splits option values at commas: a path with one would be read as more options.
    if (p.includes(",")) {
      throw new PyroError("invalid_argument", `qemu cannot be given a path with a comma in it: ${p}`, {
        hint: "Set PYRO_STATE_DIR and PYRO_CACHE_DIR to directories whose paths have no comma.",
      });
    }
  }
  return args;
}
