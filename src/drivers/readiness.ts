import { PyroError } from "../core/errors.js";
import { locateAgent } from "../util/agent-binary.js";
import { findExecutable, namespaceSupport, probeNamespaceSandbox, qemuBinaryName, qemuPackage } from "./availability.js";
import { resolveDriver } from "./index.js";
import type { DriverName } from "./types.js";

/**
 * Whether the driver a call would get here (PYRO_DRIVER, else `auto`) can
 * start a sandbox, and why not. For a long-lived front door to say so once at
 * start (`pyro mcp serve`), instead of connecting and failing every call:
 * the static checks plus, for the namespace driver, one trivial bwrap
 * sandbox (a subprocess, cached for the process), which catches what static
 * checks cannot (an AppArmor policy, a container's seccomp filter).
 */
export interface Readiness {
  /** The driver calls would use, null when the choice itself is refused. */
  driver: DriverName | null;
  ok: boolean;
  /** Why no sandbox can start (null when one can), with what to do. */
  reason: string | null;
}

const said = (e: unknown) => (e instanceof PyroError ? `${e.message}${e.hint ? ` ${e.hint}` : ""}` : String((e as Error)?.message ?? e));

export async function sandboxReadiness(choice: string | undefined = process.env.PYRO_DRIVER || "auto"): Promise<Readiness> {
  let name: DriverName;
  try {
    name = resolveDriver(choice).name;
  } catch (error) {
    return { driver: null, ok: false, reason: `${process.env.PYRO_DRIVER ? `PYRO_DRIVER=${process.env.PYRO_DRIVER}: ` : ""}${said(error)}` };
  }
  if (name === "namespace") {
    const ns = namespaceSupport();
    if (!ns.available) return { driver: name, ok: false, reason: ns.reason };
    const probe = await probeNamespaceSandbox();
    return probe.ok ? { driver: name, ok: true, reason: null } : { driver: name, ok: false, reason: probe.detail };
  }
  // qemu (asked for, or auto with KVM proven): qemu itself, bwrap for its jail, the agent it boots as /init.
  const problems: string[] = [];
  if (!findExecutable(qemuBinaryName())) problems.push(`${qemuBinaryName()} is not installed (apt-get install ${qemuPackage()})`);
  if (!findExecutable("bwrap")) problems.push("bwrap is not installed: the qemu driver jails each qemu with it (apt-get install bubblewrap)");
  try {
    locateAgent();
  } catch (error) {
    problems.push(said(error));
  }
  return problems.length ? { driver: name, ok: false, reason: problems.join("; ") } : { driver: name, ok: true, reason: null };
}
