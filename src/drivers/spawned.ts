import type { Readable } from "node:stream";
import { signalIfAlive, waitForExit } from "../util/proc.js";
import type { SandboxHandle } from "./types.js";

/** What every driver needs of the processes it spawns (bwrap, the VM's jail): their readiness lines, their groups, their end. */

/** Reads a stream to its end or until `done` says enough, with a deadline. */
export function readUntil(stream: Readable, done: (text: string) => boolean, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const finish = () => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", finish);
      stream.off("close", finish);
      resolve(text);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString("utf8");
      if (done(text)) finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    stream.on("data", onData);
    stream.on("end", finish);
    stream.on("close", finish);
  });
}

/** Sends a signal to a whole process group; a group already gone is fine. */
export function signalGroup(leader: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-leader, signal);
  } catch {
    /* gone */
  }
}

/**
 * Every driver's kill: SIGKILL to the sandbox's process (PID 1 of its pid
 * namespace: the kernel then kills everything in it; for a VM, the
 * supervisor, whose VMM dies with it) and to its helpers (bwrap's monitor,
 * pasta, passt), then a wait until each is gone. The records name each
 * process with its start time, so a reused pid is never signalled.
 */
export async function killSandbox(handle: SandboxHandle): Promise<void> {
  const all = [handle.process, ...handle.helpers];
  for (const p of all) signalIfAlive(p, "SIGKILL");
  await Promise.all(all.filter((p) => p.pid > 0).map((p) => waitForExit(p, 5_000)));
}
