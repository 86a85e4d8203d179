/**
 * An unprivileged user for the tests that must hold as one (docs/security.md's
 * claims hold as root and as a user): created once (a system account with no
 * home), given a fresh home per run, and a checkout it can read (the clone
 * may sit under a private directory such as /root: then a hard-linked copy
 * of it, or a copy).
 */
import { spawnSync } from "node:child_process";
import { chownSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TEST_USER = "pyro-attack-test";

export interface TestUser {
  name: string;
  uid: number;
  gid: number;
  /** A fresh home (also its TMPDIR), owned by the user. */
  home: string;
  /** A checkout the user can read: the real one, or a copy under `scratch`. */
  root: string;
  /** The environment to run the user's processes with: cache and state named outright, inside the home. */
  env: NodeJS.ProcessEnv;
  cleanup(): void;
}

/** Needs root (useradd, runuser); the caller skips with its reason otherwise. */
export function testUser(checkout: string, scratch: string): TestUser {
  if (spawnSync("id", ["-u", TEST_USER]).status !== 0) {
    const r = spawnSync("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`useradd ${TEST_USER}: ${r.stderr}`);
  }
  const uid = Number(spawnSync("id", ["-u", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const home = mkdtempSync(join(tmpdir(), "pyro-user-home-"));
  chownSync(home, uid, gid);
  let root = checkout;
  if (spawnSync("runuser", ["-u", TEST_USER, "--", "test", "-r", join(checkout, "package.json")]).status !== 0) {
    root = join(scratch, "checkout");
    if (spawnSync("cp", ["-al", checkout, root]).status !== 0 && spawnSync("cp", ["-a", checkout, root]).status !== 0) throw new Error(`cannot copy the checkout to ${root} for ${TEST_USER}`);
    rmSync(join(root, ".git"), { recursive: true, force: true });
  }
  return {
    name: TEST_USER,
    uid,
    gid,
    home,
    root,
    // runuser sets HOME from the account; the cache and state directories are named outright.
    env: { PATH: process.env.PATH, HOME: home, TMPDIR: home, LANG: "C.UTF-8", PYRO_CACHE_DIR: join(home, "cache"), PYRO_STATE_DIR: join(home, "state") },
    cleanup: () => rmSync(home, { recursive: true, force: true }),
  };
}
