import { PyroError } from "../core/errors.js";
import { NamespaceDriver } from "./namespace/driver.js";
import { QemuDriver } from "./qemu/driver.js";
import { kvmVerdict } from "./vm/kvm.js";
import { findExecutable, qemuBinaryName } from "./availability.js";
import type { Driver, DriverName } from "./types.js";

export type DriverChoice = DriverName | "auto";

const DRIVER_NAMES: readonly DriverChoice[] = ["auto", "firecracker", "qemu", "namespace"];

let namespaceDriver: NamespaceDriver | null = null;
let qemuDriver: QemuDriver | null = null;

/**
 * Resolves a driver choice. `auto` picks firecracker, then qemu where KVM
 * is proven on this host boot (a VM booted under it: drivers/qemu/kvm.ts),
 * then namespace; QEMU under TCG is never picked automatically (seconds per
 * boot), only when asked for. Asking for a driver this release cannot run
 * says so instead of silently running something weaker.
 */
export function resolveDriver(choice: string | undefined = process.env.PYRO_DRIVER || "auto"): Driver {
  if (!DRIVER_NAMES.includes(choice as DriverChoice)) {
    throw new PyroError("invalid_argument", `Unknown driver "${choice}".`, { hint: `Use one of: ${DRIVER_NAMES.join(", ")}.` });
  }
  if (choice === "firecracker") {
    throw new PyroError("driver_unavailable", "The firecracker driver is not available in this version of pyro-mcp.", {
      hint: "Use --driver qemu or namespace (or auto); run `pyro doctor` to see what this host supports.",
    });
  }
  if (choice === "qemu" || (choice === "auto" && kvmVerdict()?.usable && findExecutable(qemuBinaryName()))) return (qemuDriver ??= new QemuDriver());
  return (namespaceDriver ??= new NamespaceDriver());
}
