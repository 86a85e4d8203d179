import { PyroError } from "../core/errors.js";
import { NamespaceDriver } from "./namespace/driver.js";
import { QemuDriver } from "./qemu/driver.js";
import { FirecrackerDriver } from "./firecracker/driver.js";
import { kvmVerdict } from "./vm/kvm.js";
import { findExecutable, firecrackerSupport, qemuBinaryName } from "./availability.js";
import type { Driver, DriverName } from "./types.js";

export type DriverChoice = DriverName | "auto";

const DRIVER_NAMES: readonly DriverChoice[] = ["auto", "firecracker", "qemu", "namespace"];

const drivers: Partial<Record<DriverName, Driver>> = {};

/**
 * The driver of a sandbox that exists (a record's): always returned,
 * whatever this host can boot now (a firecracker record stays killable and
 * cleanable from a process without $PYRO_FIRECRACKER). A name no release
 * wrote gets the namespace driver, whose cleanup finds processes by the
 * directory they name.
 */
export function driverNamed(name: DriverName | string): Driver {
  switch (name) {
    case "firecracker":
      return (drivers.firecracker ??= new FirecrackerDriver());
    case "qemu":
      return (drivers.qemu ??= new QemuDriver());
    default:
      return (drivers.namespace ??= new NamespaceDriver());
  }
}

/**
 * Resolves a driver choice for a new sandbox. `auto` picks firecracker
 * where it can run (KVM not ruled out, a firecracker binary of v1.8 or
 * newer), then qemu where KVM is proven on this host boot (a VM booted
 * under it: drivers/vm/kvm.ts), then namespace; QEMU under TCG is never
 * picked automatically (seconds per boot), only when asked for. Asking for
 * a driver that cannot run here says what is missing instead of silently
 * running something weaker.
 */
export function resolveDriver(choice: string | undefined = process.env.PYRO_DRIVER || "auto"): Driver {
  if (!DRIVER_NAMES.includes(choice as DriverChoice)) {
    throw new PyroError("invalid_argument", `Unknown driver "${choice}".`, { hint: `Use one of: ${DRIVER_NAMES.join(", ")}.` });
  }
  if (choice === "firecracker") {
    const fc = firecrackerSupport();
    if (!fc.available) {
      throw new PyroError("driver_unavailable", `The firecracker driver cannot run here: ${fc.reason}.`, {
        hint: "Use --driver qemu (a VM under TCG where KVM does not work) or --driver namespace (or auto); `pyro doctor` shows what each driver needs.",
      });
    }
    return driverNamed("firecracker");
  }
  if (choice === "auto" && firecrackerSupport().available) return driverNamed("firecracker");
  if (choice === "qemu" || (choice === "auto" && kvmVerdict()?.usable && findExecutable(qemuBinaryName()))) return driverNamed("qemu");
  return driverNamed("namespace");
}
