import { PyroError } from "../core/errors.js";
import { NamespaceDriver } from "./namespace/driver.js";
import type { Driver, DriverName } from "./types.js";

export type DriverChoice = DriverName | "auto";

const DRIVER_NAMES: readonly DriverChoice[] = ["auto", "firecracker", "qemu", "namespace"];

let namespaceDriver: NamespaceDriver | null = null;

/**
 * Resolves a driver choice. `auto` picks firecracker, then qemu with KVM,
 * then namespace; QEMU under TCG is never picked automatically. The VM
 * drivers are not part of this release yet: asking for one explicitly says
 * so instead of silently running something weaker.
 */
export function resolveDriver(choice: string | undefined = process.env.PYRO_DRIVER || "auto"): Driver {
  if (!DRIVER_NAMES.includes(choice as DriverChoice)) {
    throw new PyroError("invalid_argument", `Unknown driver "${choice}".`, { hint: `Use one of: ${DRIVER_NAMES.join(", ")}.` });
  }
  if (choice === "firecracker" || choice === "qemu") {
    throw new PyroError("driver_unavailable", `The ${choice} driver is not available in this version of pyro-mcp.`, {
      hint: "Use --driver namespace (or auto); run `pyro doctor` to see what this host supports.",
    });
  }
  return (namespaceDriver ??= new NamespaceDriver());
}
