import { existsSync } from "node:fs";
import { connectUnixNoFollow } from "../util/unix-socket.js";
import { dirname, join } from "node:path";
import { driverNamed } from "../drivers/index.js";
import type { Driver, SandboxHandle } from "../drivers/types.js";
import { readJsonOrNull } from "../util/fsutil.js";
import { descendsFrom, killTrees } from "../util/proc.js";
import { pauseAt } from "../util/testhook.js";
import { DEFAULTS } from "../core/defaults.js";
import { PyroError } from "../core/errors.js";
import type { ProgressListener } from "../util/progress.js";
import { execInSandbox } from "./sandbox-exec.js";
import type { RecordStore } from "./store.js";

/** What VMs and tasks have in common when their sandbox boots. */
export interface BootRecord {
  id: string;
  environment: string;
  rootfs: string;
  vcpu_count: number;
  mem_mib: number;
  disk_mib: number;
  network: boolean;
  expires_at: string | null;
}

/**
 * Boots the sandbox of a VM or task and prepares what every command in it
 * expects: with network on, a resolv.conf that points at the user-mode
 * network's DNS forwarder (the environment's copy names the build host's
 * resolver, unreachable from inside). Written by a process inside the
 * sandbox, never through the host's view of its writable layer.
 */
export async function bootSandbox(driver: Driver, record: BootRecord, dir: string, options: { ephemeral: boolean; signal?: AbortSignal; onProgress?: ProgressListener }): Promise<SandboxHandle> {
  // The caller holds the record's lock and its record names no live sandbox.
  // A sandbox directory that exists already saw a start: one whose creator
  // was killed before the record named it may still run over this writable
  // layer. It goes first, so two sandboxes never share a layer.
  if (existsSync(dir)) await driver.cleanupDir(dir);
  // A VM driver's artifacts for this environment (built on its first VM use, with progress).
  const vm = driver.prepare ? await driver.prepare({ name: record.environment, rootfs: record.rootfs }, { signal: options.signal, onProgress: options.onProgress }) : undefined;
  const handle = await driver.start(
    {
      id: record.id,
      dir,
      rootfs: record.rootfs,
      vcpu_count: record.vcpu_count,
      mem_mib: record.mem_mib,
      pids_max: DEFAULTS.pids_max,
      disk_mib: record.disk_mib,
      keep_layer: !options.ephemeral,
      network: record.network,
      // Rounded up: a sandbox never ends before its record says it expires.
      deadline: record.expires_at ? Math.ceil(Date.parse(record.expires_at) / 1000) : null,
      die_with_parent: options.ephemeral,
      hostname: record.id.replace(/_/g, "-"),
      ...(vm ? { vm } : {}),
    },
    { signal: options.signal },
  );
  if (handle.network.enabled && handle.network.dns.length && !handle.dns_configured) {
    const lines = handle.network.dns.map((ip) => `nameserver ${ip}`).join("\\n");
    const r = await execInSandbox(driver, handle, {
      command: ["/bin/sh", "-c", `rm -f /etc/resolv.conf && printf '${lines}\\n' > /etc/resolv.conf`],
      timeout_seconds: 10,
      max_output_bytes: 4096,
    }).catch((error: unknown) => ({ exit_code: -1, stderr: String(error) }));
    if (r.exit_code !== 0) {
      await driver.kill(handle);
      driver.cleanup(handle);
      throw new PyroError("sandbox_failed", `Cannot configure DNS in the sandbox: ${r.stderr.trim()}`, { hint: "The environment needs /bin/sh; run without --network or use another environment." });
    }
  }
  pauseAt("boot:ready");
  return handle;
}

/**
 * The reaper's last sweep, for VMs and tasks alike: sandbox processes whose
 * argv names one of the store's directories but that its record does not
 * name (a start whose process was killed right after spawning bwrap) are
 * killed, with what their directory's notes name when no sandbox is
 * recorded. Each id only under its lock, taken at once. Returns the ids.
 */
export async function reapStraySandboxes(store: RecordStore<{ driver: string; sandbox: SandboxHandle | null }>, sandboxDir: (id: string) => string): Promise<string[]> {
  const reaped: string[] = [];
  for (const [id, found] of store.sandboxProcesses()) {
    await store.underTryLock(id, async () => {
      const latest = store.read(id);
      const known = latest?.sandbox ? [latest.sandbox.process, ...latest.sandbox.helpers] : [];
      // A recorded sandbox's own children (a VM supervisor's qemu) are the sandbox, not strays.
      const strays = found.filter((p) => !known.some((k) => k.pid === p.identity.pid && k.start_time === p.identity.start_time) && !descendsFrom(p.identity.pid, known));
      if (!strays.length) return;
      await killTrees(strays.map((p) => p.identity));
      if (latest && !latest.sandbox) await driverNamed(latest.driver).cleanupDir(sandboxDir(id));
      reaped.push(id);
    });
  }
  return reaped;
}

/** cleanupDir for a sandbox directory whose record sits next to it (a trash directory's), with the record's driver. */
export async function releaseOrphanDir(dir: string): Promise<void> {
  const record = readJsonOrNull<{ driver?: string }>(join(dirname(dir), "record.json"));
  await driverNamed(record?.driver ?? "namespace").cleanupDir(dir);
}

/**
 * Whether something accepts connections on the agent's socket. Refused or
 * missing means the agent is gone; a slow answer counts as listening (a busy
 * agent is not killed for it).
 */
export function agentListens(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = connectUnixNoFollow(socket);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      conn.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(true), 2_000);
    conn.once("connect", () => done(true));
    // Not a socket any more (a link planted in its place is never followed): as gone as a missing one.
    conn.once("error", (error: NodeJS.ErrnoException) => done(!(error.code === "ECONNREFUSED" || error.code === "ENOENT" || error.code === "ENOTSOCK")));
  });
}
