import type { Driver, SandboxHandle } from "../drivers/types.js";
import { DEFAULTS } from "../operations/schemas.js";
import { PyroError } from "../sdk/errors.js";
import { execInSandbox } from "./sandbox-exec.js";

/** What VMs and tasks have in common when their sandbox boots. */
export interface BootRecord {
  id: string;
  rootfs: string;
  vcpu_count: number;
  mem_mib: number;
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
export async function bootSandbox(driver: Driver, record: BootRecord, dir: string, options: { ephemeral: boolean; signal?: AbortSignal }): Promise<SandboxHandle> {
  const handle = await driver.start(
    {
      id: record.id,
      dir,
      rootfs: record.rootfs,
      vcpu_count: record.vcpu_count,
      mem_mib: record.mem_mib,
      pids_max: DEFAULTS.pids_max,
      network: record.network,
      // Rounded up: a sandbox never ends before its record says it expires.
      deadline: record.expires_at ? Math.ceil(Date.parse(record.expires_at) / 1000) : null,
      die_with_parent: options.ephemeral,
      hostname: record.id.replace(/_/g, "-"),
    },
    { signal: options.signal },
  );
  if (handle.network.enabled && handle.network.dns.length) {
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
  return handle;
}
