import { readdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { readJsonOrNull } from "../../util/fsutil.js";
import { isAlive, killTrees, processesNaming, type ProcessIdentity } from "../../util/proc.js";
import { oomKillCount, releaseSandboxCgroups } from "../cgroups.js";
import { killSandbox } from "../spawned.js";
import { vmDirPaths } from "./files.js";
import type { SandboxHandle } from "../types.js";

/**
 * What the two VM drivers (qemu, firecracker) do the same way once a VM
 * runs: is it running, kill it, release what a start left in its directory,
 * count OOM kills, and say that the host never looks into a VM's disk. Each
 * driver's own class (its driver.ts) extends this and keeps the rest: its
 * start, its cleanup of the sockets it makes, and what else of its own a
 * start cut short may leave (`releaseLeftovers`).
 */

/** The driver's notes in a sandbox directory, one level above the VM's own `vm/`: the VM's uid cannot write them. */
export const VM_NOTES = "resources.json";

export interface VmNotes {
  cgroups: string[];
  processes: ProcessIdentity[];
  /** The start completed: `processes` names every process of the sandbox. */
  complete?: boolean;
  /** Files outside the sandbox's directory that a start cut short leaves (qemu: a snapshot's temp file). */
  debris?: string[];
}

export abstract class VmDriverBase {
  isRunning(handle: SandboxHandle): boolean {
    return isAlive(handle.process);
  }

  async kill(handle: SandboxHandle): Promise<void> {
    await killSandbox(handle);
  }

  /** Releases what a start in `dir` made, complete or cut short (see the Driver type). */
  async cleanupDir(dir: string): Promise<void> {
    const found = readJsonOrNull<VmNotes>(join(dir, VM_NOTES));
    const targets = found ? [...found.processes] : [];
    // The supervisor and its VMM name this directory in their argv (their sockets, the disk, the console).
    const naming = `${resolve(dir)}/`;
    if (!found?.complete) targets.push(...processesNaming(naming).map((p) => p.identity));
    await killTrees(targets);
    // One may have forked between a scan and its kill: looked for again.
    for (let round = 0; !found?.complete && round < 3; round++) {
      const late = processesNaming(naming).map((p) => p.identity);
      if (!late.length) break;
      await killTrees(late);
    }
    // A half-made disk (the temp file of a killed mkfs) is debris; the disk itself is the task's and stays.
    const { vmDir } = vmDirPaths(dir);
    for (const name of safeReaddir(vmDir)) if (name.startsWith("disk.img.tmp-")) rmSync(join(vmDir, name), { recursive: true, force: true });
    this.releaseLeftovers(resolve(dir), found);
    if (!found) return;
    await releaseSandboxCgroups(found.cgroups);
    rmSync(join(dir, VM_NOTES), { force: true });
  }

  /** What this driver's start may leave in (or name from) `dir` besides processes, cgroups and a half-made disk; called after the kills. */
  protected abstract releaseLeftovers(dir: string, notes: VmNotes | null): void;

  oomKills(handle: SandboxHandle): number {
    return oomKillCount(handle.cgroups);
  }

  /** The VM's files are on its own disk, seen only by the guest kernel: the host never walks or mounts them. */
  filesView(): null {
    return null;
  }

  /** The disk image is the quota, enforced by its size. */
  async checkedLayerBytes(): Promise<null> {
    return null;
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
