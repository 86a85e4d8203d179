import { PyroError } from "../../core/errors.js";
import type { SandboxSpec } from "../types.js";

/**
 * What every VM driver tells the guest agent on the kernel command line
 * (`pyro.*` words, parsed and bounds-checked by guest/vmcfg.c:
 * docs/protocol.md, "VM boot"). The VMM-specific words (console, reboot,
 * TSC) are each driver's own; these are the agent's, the same for qemu and
 * firecracker, so the guest boots the same way under both.
 */

/** The writable layer a VM gets: its own disk (tasks, persistent VMs) or RAM (one-shot runs). */
export type DataLayer = { kind: "disk"; path: string } | { kind: "ram"; mib: number };

/** Where the agent serves the host: a virtio-serial port by name (qemu) or a vsock port (firecracker). */
export type AgentStream = { port: string } | { vsock: number };

/** The least guest RAM Debian's cloud kernel boots to our agent in (with 64 MiB it panics while booting: "System is deadlocked on memory"). */
export const MIN_VM_MEM_MIB = 128;

/** Refuses a VM too small to boot, before anything is made for it. */
export function checkVmMemory(driver: "qemu" | "firecracker", memMib: number): void {
  if (memMib >= MIN_VM_MEM_MIB) return;
  throw new PyroError("invalid_argument", `A ${driver} VM needs at least ${MIN_VM_MEM_MIB} MiB of memory (mem_mib ${memMib} was asked).`, {
    hint: `Give mem_mib ${MIN_VM_MEM_MIB} or more, or use --driver namespace for a smaller sandbox.`,
  });
}

/** Half the memory for /dev/shm, like the namespace driver: a full shm fails with ENOSPC before it exhausts the guest. */
export function shmMib(memMib: number): number {
  return Math.max(16, Math.floor(memMib / 2));
}

/**
 * The agent's words. No value here comes from a caller unchecked: the
 * hostname is the sandbox id's, the numbers are validated integers; a word
 * with whitespace would split into two, so it is refused.
 */
export function agentBootWords(spec: SandboxSpec, data: DataLayer, stream: AgentStream): string[] {
  const words = [
    // The root image is always the first disk, a task's disk the second (each driver attaches them in that order).
    "pyro.root=/dev/vda",
    `pyro.data=${data.kind === "disk" ? "/dev/vdb" : `ram:${data.mib}`}`,
    "port" in stream ? `pyro.port=${stream.port}` : `pyro.vsock=${stream.vsock}`,
    `pyro.hostname=${spec.hostname}`,
    `pyro.pids_max=${spec.pids_max}`,
    `pyro.shm_mib=${shmMib(spec.mem_mib)}`,
  ];
  for (const w of words) {
    if (/\s/.test(w)) throw new Error(`kernel command line word with whitespace: ${JSON.stringify(w)}`);
  }
  return words;
}
