import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, constants, existsSync, lstatSync, mkdirSync, openSync, readdirSync, statfsSync, unlinkSync, writeSync, chmodSync } from "node:fs";
import { chownTree, sandboxOwner } from "../../util/sandbox-user.js";
import { dirname, join } from "node:path";
import { PyroError } from "../../core/errors.js";
import type { ProgressListener } from "../../util/progress.js";
import type { PackageInfo } from "../manifest.js";
import { findExecutable } from "../../drivers/availability.js";
import { formatBytes } from "../../util/format.js";
export { formatBytes };

/** What a builder hands back to the cache code that writes the manifest. */
export interface BuildOutput {
  suite: string | null;
  mirror: string | null;
  variant: string | null;
  packages: PackageInfo[];
  builder: { tool: string; version: string };
}

export interface BuildContext {
  signal?: AbortSignal;
  onProgress: ProgressListener;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new PyroError("cancelled", "The environment build was cancelled.");
}

/**
 * Test hook: PYRO_TEST_BUILD_DELAY_MS makes a builder pause (abortably) in
 * the middle of writing its rootfs, so tests can kill a pull midway or race
 * two pulls deterministically. Read only by builders; never set it otherwise.
 */
export async function testBuildDelay(ctx: BuildContext): Promise<void> {
  const ms = Number(process.env.PYRO_TEST_BUILD_DELAY_MS ?? 0);
  if (!(ms > 0)) return;
  ctx.onProgress({ phase: "install", message: `pausing ${ms} ms (PYRO_TEST_BUILD_DELAY_MS)` });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    ctx.signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(new PyroError("cancelled", "The environment build was cancelled."));
      },
      { once: true },
    );
  });
}

/** Free bytes for an unprivileged writer on the filesystem holding `path` (or its nearest existing ancestor). */
export function freeBytes(path: string): number {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  const s = statfsSync(p);
  return Number(s.bavail) * Number(s.bsize);
}

/** Refuses to start a build that cannot fit, before anything is written. */
export function checkDisk(path: string, needed: number, what: string): void {
  const free = freeBytes(path);
  if (free < needed) {
    throw new PyroError("insufficient_disk", `Building ${what} needs about ${formatBytes(needed)} free under ${path}, but only ${formatBytes(free)} is free.`, {
      hint: "Free some space (`pyro env prune --all` removes unused environments), or point PYRO_CACHE_DIR at a larger disk.",
      details: { needed_bytes: needed, free_bytes: free, path },
    });
  }
}

// Every build subprocess alive in this process, by process group: killed on our exit.
const liveGroups = new Set<number>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const pgid of liveGroups) {
      try {
        process.kill(-pgid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  });
}

export interface ToolRun {
  /** Lines of stdout and stderr, as they come. */
  onLine?: (line: string) => void;
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /**
   * Put the tool in its own mount and pid namespaces (root only): mounts it
   * makes (mmdebstrap mounts /proc, /sys, /dev into the chroot) can never leak
   * onto the host, and when it dies every process it started dies with it.
   */
  isolate?: boolean;
}

/**
 * Runs a build tool so that it dies with us: its own process group (killed on
 * abort and on our exit), PR_SET_PDEATHSIG through `setpriv --pdeathsig KILL`
 * (which covers our own SIGKILL, when no exit hook runs), and as root a pid
 * namespace whose init is the tool (`unshare --pid --kill-child`), so that
 * its grandchildren (apt, dpkg) go too. Resolves with the last output lines;
 * rejects with environment_build_failed (or cancelled) otherwise.
 */
export function runTool(cmd: string, args: string[], options: ToolRun = {}): Promise<{ tail: string[] }> {
  installExitHook();
  let argv = [cmd, ...args];
  if (options.isolate && process.getuid?.() === 0 && findExecutable("unshare")) {
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "--", ...argv];
  }
  if (findExecutable("setpriv")) argv = ["setpriv", "--pdeathsig", "KILL", "--", ...argv];
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) return reject(new PyroError("cancelled", "The environment build was cancelled."));
    let child: ChildProcess;
    try {
      child = spawn(argv[0]!, argv.slice(1), {
        detached: true,
        stdio: ["ignore", "pipe", "pipe"],
        env: options.env ?? process.env,
        cwd: options.cwd,
      });
    } catch (error) {
      return reject(new PyroError("environment_build_failed", `Could not start ${cmd}: ${(error as Error).message}`));
    }
    const pgid = child.pid!;
    if (pgid) liveGroups.add(pgid);
    const tail: string[] = [];
    const onText = (() => {
      let partial = "";
      return (chunk: Buffer) => {
        const text = partial + chunk.toString("utf8");
        const lines = text.split(/\r?\n|\r/);
        partial = lines.pop() ?? "";
        for (const line of lines) {
          if (!line) continue;
          tail.push(line);
          if (tail.length > 40) tail.shift();
          options.onLine?.(line);
        }
      };
    })();
    child.stdout!.on("data", onText);
    child.stderr!.on("data", onText);
    let killTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      try {
        process.kill(-pgid, "SIGTERM");
      } catch {
        /* gone */
      }
      killTimer = setTimeout(() => {
        try {
          process.kill(-pgid, "SIGKILL");
        } catch {
          /* gone */
        }
      }, 3000);
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    child.on("error", (error) => {
      liveGroups.delete(pgid);
      reject(new PyroError("environment_build_failed", `Could not run ${cmd}: ${error.message}`));
    });
    child.on("close", (code, sig) => {
      liveGroups.delete(pgid);
      if (killTimer) clearTimeout(killTimer);
      options.signal?.removeEventListener("abort", onAbort);
      // Whatever the exit status, make sure nothing of the group survives.
      try {
        process.kill(-pgid, "SIGKILL");
      } catch {
        /* gone */
      }
      if (options.signal?.aborted) return reject(new PyroError("cancelled", "The environment build was cancelled."));
      if (code === 0) return resolve({ tail });
      const last = tail.filter((l) => /^(E:|W:|error|Error)/.test(l)).slice(-3);
      const shown = (last.length ? last : tail.slice(-3)).join(" | ");
      reject(
        new PyroError("environment_build_failed", `${cmd} failed (${code !== null ? `exit ${code}` : `signal ${sig}`}): ${shown}`, {
          hint: "Check the mirror (--mirror URL) and free disk, then run the pull again; PYRO_DEBUG=1 shows the full output.",
          details: { tool: cmd, exit_code: code, output_tail: tail },
        }),
      );
    });
  });
}

/** Runs a command to completion and returns its stdout (for `--version` and the like); null if it fails. */
export function captureOutput(cmd: string, args: string[], timeoutMs = 10_000): Promise<string | null> {
  return new Promise((resolve) => {
    let out = "";
    let child: ChildProcess;
    try {
      child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
    } catch {
      return resolve(null);
    }
    child.stdout!.on("data", (d: Buffer) => (out += d.toString("utf8")));
    child.stderr!.on("data", () => {});
    child.on("error", () => resolve(null));
    child.on("close", (code) => resolve(code === 0 ? out : null));
  });
}

/**
 * Checks that every component of `rel` below `root` is a real directory (not
 * a symlink), creating missing ones. Returns false when a component is a
 * symlink or a non-directory: writing there could land outside the rootfs
 * on the host (an imported tree may hold `etc -> /etc`).
 */
function realDirInRoot(root: string, rel: string, mode = 0o755): boolean {
  let current = root;
  for (const part of rel.split("/").filter(Boolean)) {
    current = join(current, part);
    let st;
    try {
      st = lstatSync(current);
    } catch {
      mkdirSync(current, { mode });
      continue;
    }
    if (!st.isDirectory() || st.isSymbolicLink()) return false;
  }
  return true;
}

/** Writes a small file inside a rootfs without ever following a symlink on the host. */
export function writeInRoot(root: string, rel: string, content: string, mode = 0o644): boolean {
  const parent = dirname(rel);
  if (!realDirInRoot(root, parent)) return false;
  const path = join(root, rel);
  try {
    const st = lstatSync(path);
    if (st.isDirectory()) return false;
    unlinkSync(path);
  } catch {
    /* absent */
  }
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    writeSync(fd, content);
  } finally {
    closeSync(fd);
  }
  chmodSync(path, mode);
  return true;
}

/** Makes a directory inside a rootfs (every component real) and sets its mode. */
export function mkdirInRoot(root: string, rel: string, mode: number): boolean {
  if (!realDirInRoot(root, rel, mode)) return false;
  chmodSync(join(root, rel), mode);
  return true;
}

/**
 * The fixups every rootfs gets so that any driver can run it: mountpoints the
 * sandbox mounts over (bwrap cannot create them in a read-only root), /tmp
 * 1777, /workspace for tasks, a hostname, a placeholder resolv.conf (the
 * driver binds its own when network is on; the host's copy is not kept, it is
 * host-specific and would make builds differ between hosts), and for Debian
 * trees an apt that runs as the one uid a sandbox has. Returns the fixups
 * that had to be skipped (an imported tree with e.g. `etc -> /elsewhere`).
 */
export function applyRootfsFixups(root: string, options: { hostname?: string } = {}): string[] {
  const skipped: string[] = [];
  const dirs: [string, number][] = [
    ["proc", 0o555],
    ["sys", 0o555],
    ["dev", 0o755],
    ["run", 0o755],
    ["tmp", 0o1777],
    ["root", 0o700],
    ["workspace", 0o755],
    ["etc", 0o755],
  ];
  for (const [rel, mode] of dirs) if (!mkdirInRoot(root, rel, mode)) skipped.push(`/${rel}`);
  if (!writeInRoot(root, "etc/hostname", `${options.hostname ?? "pyro"}\n`)) skipped.push("/etc/hostname");
  if (!writeInRoot(root, "etc/resolv.conf", "# pyro: the sandbox driver provides name resolution when network is on.\n")) skipped.push("/etc/resolv.conf");
  let hasApt = false;
  try {
    hasApt = lstatSync(join(root, "etc", "apt")).isDirectory();
  } catch {
    /* no apt */
  }
  if (hasApt && !writeInRoot(root, "etc/apt/apt.conf.d/99pyro", '// Sandboxes have one uid: apt must not drop to _apt.\nAPT::Sandbox::User "root";\n')) {
    skipped.push("/etc/apt/apt.conf.d/99pyro");
  }
  return skipped;
}

/**
 * Makes a tree single-uid: every entry owned by the uid a sandbox's root
 * maps to (src/util/sandbox-user.ts; lchown, never following symlinks).
 * Sandboxes map exactly one uid, so a file owned by _apt or by group shadow
 * would be unwritable or unreadable inside. Set-id bits are dropped (see
 * chownTree). Device
 * nodes (mmdebstrap --mode=root mknods /dev/null, /dev/console, ... into the
 * tree) are removed: sandboxes mount their own /dev, and a world-writable
 * /dev/console in a user's cache is a door to the host's console.
 */
export async function chownTreeForSandboxes(root: string, signal?: AbortSignal): Promise<void> {
  await chownTree(root, sandboxOwner() ?? { uid: 0, gid: 0 }, { removeDevices: true, stripSetId: true, ...(signal ? { signal } : {}) });
}
