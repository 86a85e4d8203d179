import { readFileSync } from "node:fs";
import { join } from "node:path";
import { writeCpio, type CpioEntry } from "./cpio.js";
import type { CachedKernel } from "./kernel.js";

/**
 * The initramfs every VM boots: the guest agent as /init and the modules it
 * loads, in exactly the layout the agent's VM mode expects:
 *
 *   /init                 the static pyro-agent, 0755
 *   /dev/console          char 5:1, so the kernel can give init a console
 *   /dev /proc /sys /mnt /tmp   empty directories
 *   /modules/order        one file name per line, in load order
 *   /modules/<name>.ko    each module, uncompressed
 *
 * Uncompressed on purpose: it is a few MiB, and under TCG the guest would
 * spend longer inflating it than the host spends reading it.
 */
export function initramfsEntries(agent: Buffer, modules: readonly { name: string; data: Buffer }[]): CpioEntry[] {
  const entries: CpioEntry[] = [
    { type: "dir", path: "dev" },
    { type: "char", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    { type: "dir", path: "proc" },
    { type: "dir", path: "sys" },
    { type: "dir", path: "mnt" },
    { type: "dir", path: "tmp", mode: 0o1777 },
    { type: "dir", path: "modules" },
    { type: "file", path: "modules/order", data: Buffer.from(modules.map((m) => `${m.name}.ko\n`).join("")) },
  ];
  for (const m of modules) entries.push({ type: "file", path: `modules/${m.name}.ko`, data: m.data });
  entries.push({ type: "file", path: "init", data: agent, mode: 0o755 });
  return entries;
}

/** The initramfs bytes for a kernel's modules (kernel.json order) and an agent binary. */
export function buildInitramfs(kernel: CachedKernel, agentPath: string): Buffer {
  const modules = kernel.record.modules.map((m) => ({ name: m.name, data: readFileSync(join(kernel.dir, m.path)) }));
  return writeCpio(initramfsEntries(readFileSync(agentPath), modules));
}
