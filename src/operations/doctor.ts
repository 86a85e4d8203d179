import * as z from "zod";
import { sandboxOwner } from "../util/sandbox-user.js";
import { existsSync } from "node:fs";
import { arch, platform, release } from "node:os";
import { cacheDir, stateDir } from "../util/paths.js";
import { cgroupStatus, findExecutable, firecrackerBinary, installCommand, pickAutoDriver, probeDrivers, qemuBinaryName, qemuPackage } from "../drivers/availability.js";
import { parseArgs } from "./env.js";
import { DEFAULTS, limitsInfo } from "./schemas.js";
import { plannedLimits } from "../drivers/namespace/driver.js";

/**
 * `pyro doctor`: what this host can isolate with, what `auto` picks, and the
 * one command that installs what is missing. Tells the truth by trying
 * (a trivial bwrap sandbox, opening /dev/kvm), not by guessing.
 */

const isolation = z.strictObject({
  driver: z.enum(["firecracker", "qemu", "namespace"]),
  kind: z.enum(["microvm", "emulated-vm", "namespace"]),
  accel: z.enum(["kvm", "tcg"]).nullable(),
});
const check = z.strictObject({ name: z.string(), ok: z.boolean(), detail: z.string() });

export const DoctorArgsSchema = z.strictObject({});
export const DoctorResultSchema = z.strictObject({
  platform: z.strictObject({
    os: z.string(),
    arch: z.string(),
    kernel: z.string(),
    node: z.string(),
    root: z.boolean(),
    uid: z.number().int().nullable(),
    /** As root: the uid sandboxes run as (their root outside; PYRO_SANDBOX_UID), null otherwise or when it cannot be used. */
    sandbox_uid: z.number().int().nullable(),
  }),
  drivers: z.array(
    z.strictObject({
      driver: z.enum(["firecracker", "qemu", "namespace"]),
      available: z.boolean(),
      reason: z.string().nullable(),
      isolation: isolation.nullable(),
      checks: z.array(check),
    }),
  ),
  auto: z.strictObject({ driver: z.enum(["firecracker", "qemu", "namespace"]), isolation }).nullable(),
  limits: z
    .strictObject({ run: limitsInfo, task: limitsInfo })
    .describe("What a namespace sandbox made now with the defaults would get: a one-shot run's and a task's limits, and what keeps each."),
  cgroups: z.strictObject({
    version: z.enum(["v1", "v2", "none"]),
    hybrid: z.boolean(),
    base: z.string().nullable(),
    controllers: z.array(z.strictObject({ name: z.string(), available: z.boolean(), writable: z.boolean() })),
  }),
  tools: z.array(
    z.strictObject({
      name: z.string(),
      found: z.boolean(),
      path: z.string().nullable(),
      package: z.string().nullable(),
      purpose: z.string(),
    }),
  ),
  cache: z.strictObject({ dir: z.string(), exists: z.boolean(), free_bytes: z.number().int().nullable() }),
  state_dir: z.string(),
  missing_packages: z.array(z.string()),
  install_command: z.string().nullable(),
});
export type DoctorArgs = z.infer<typeof DoctorArgsSchema>;
export type DoctorResult = z.infer<typeof DoctorResultSchema>;

function sandboxUid(): number | null {
  try {
    return sandboxOwner()?.uid ?? null;
  } catch {
    return null; // the runs themselves say why (an account already uses the uid)
  }
}

export async function doctor(args: DoctorArgs = {}): Promise<DoctorResult> {
  parseArgs(DoctorArgsSchema, args, "doctor");
  const statuses = await probeDrivers();
  const root = process.getuid?.() === 0;
  const { busyboxCandidates, elfInfo } = await import("../environments/builders/busybox.js");
  const staticBusybox = busyboxCandidates().find((p) => existsSync(p) && elfInfo(p).static) ?? null;
  const find = (n: string) => findExecutable(n);
  const tools: DoctorResult["tools"] = [
    { name: "bwrap", path: find("bwrap"), package: "bubblewrap", purpose: "the namespace driver" },
    { name: "mmdebstrap", path: find("mmdebstrap"), package: "mmdebstrap", purpose: "builds Debian environments" },
    { name: "debootstrap", path: find("debootstrap"), package: "debootstrap", purpose: "builds Debian environments when mmdebstrap is missing (root only)" },
    { name: "busybox (static)", path: staticBusybox, package: "busybox-static", purpose: "the busybox environment, offline (else fetched with apt-get download)" },
    { name: "pasta", path: find("pasta"), package: "passt", purpose: "network for sandboxes with network on (namespace driver)" },
    { name: "slirp4netns", path: find("slirp4netns"), package: "slirp4netns", purpose: "network fallback when pasta is missing" },
    { name: qemuBinaryName(), path: find(qemuBinaryName()), package: qemuPackage(), purpose: "the qemu driver" },
    { name: "firecracker", path: firecrackerBinary(), package: null, purpose: "the firecracker driver (not packaged by Debian)" },
    { name: "cc", path: find("cc"), package: "gcc", purpose: "builds the guest agent from source (make -C guest)" },
    { name: "make", path: find("make"), package: "make", purpose: "builds the guest agent from source" },
  ].map((t) => ({ ...t, found: t.path !== null }));

  const has = (n: string) => tools.find((t) => t.name === n)?.found ?? false;
  const missing: string[] = [];
  if (!has("bwrap")) missing.push("bubblewrap");
  if (!has("mmdebstrap") && !(has("debootstrap") && root)) missing.push("mmdebstrap");
  if (!has("busybox (static)")) missing.push("busybox-static");
  if (!has("pasta") && !has("slirp4netns")) missing.push("passt");
  if (!has(qemuBinaryName())) missing.push(qemuPackage());
  const agentMissing = statuses.find((s) => s.driver === "namespace")?.checks.some((c) => c.name === "agent" && !c.ok);
  if (agentMissing) {
    if (!has("cc")) missing.push("gcc", "libc6-dev");
    if (!has("make")) missing.push("make");
  }

  let free: number | null = null;
  try {
    const { freeBytes } = await import("../environments/builders/common.js");
    free = freeBytes(cacheDir());
  } catch {
    free = null;
  }
  return {
    platform: { os: platform(), arch: arch(), kernel: release(), node: process.version, root, uid: process.getuid?.() ?? null, sandbox_uid: sandboxUid() },
    drivers: statuses.map(({ missing_packages: _m, ...s }) => s),
    auto: pickAutoDriver(statuses),
    limits: {
      run: plannedLimits({ mem_mib: DEFAULTS.mem_mib, vcpu_count: DEFAULTS.vcpu_count, pids_max: DEFAULTS.pids_max, disk_mib: DEFAULTS.run_disk_mib, keep_layer: false }),
      task: plannedLimits({ mem_mib: DEFAULTS.mem_mib, vcpu_count: DEFAULTS.vcpu_count, pids_max: DEFAULTS.pids_max, disk_mib: DEFAULTS.disk_mib, keep_layer: true }),
    },
    cgroups: cgroupStatus(),
    tools,
    cache: { dir: cacheDir(), exists: existsSync(cacheDir()), free_bytes: free },
    state_dir: stateDir(),
    missing_packages: missing,
    install_command: installCommand(missing),
  };
}
