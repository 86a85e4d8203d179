import { readFileSync, realpathSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, resolve } from "node:path";

/**
 * The host's home directories, by real path: what neither an export may
 * write into (host-runs.ts: startup files) nor an import through allowed
 * roots may read (source-path.ts: keys and credentials). Its own module so
 * that both can use it without importing each other.
 */

function real(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/** This process's home and every home directory /etc/passwd names (but `/`, a system account's). */
export function homeDirs(): string[] {
  const homes = new Set<string>();
  const add = (h: string | undefined) => {
    if (h && isAbsolute(h) && resolve(h) !== "/") homes.add(real(h));
  };
  add(homedir()); // $HOME when set, else the passwd entry of this uid
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) add(line.split(":")[5]);
  } catch {
    /* no passwd: this process's home only */
  }
  return [...homes];
}
