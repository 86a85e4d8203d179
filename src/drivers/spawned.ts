import type { Readable } from "node:stream";

/** What both drivers need of the processes they spawn (bwrap, the VM's jail): their readiness lines and their groups. */

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
