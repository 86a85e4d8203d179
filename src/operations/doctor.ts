import * as z from "zod";
import { sandboxOwner } from "../util/sandbox-user.js";
import { existsSync } from "node:fs";
import { arch, platform, release } from "node:os";
import { cacheDir, stateDir } from "../util/paths.js";
import { cgroupStatus, findExecutable, firecrackerBinary, installCommand, pickAutoDriver, probeDrivers, qemuBinaryName, qemuPackage } from "../drivers/availability.js";
import { IMPLEMENTED_DRIVERS } from "../drivers/types.js";
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

/** Host architectures the VM drivers support (environments/vm/kernel.ts). */
const VM_ARCHES: readonly string[] = ["x64", "arm64"];

/** What the qemu driver needs beyond the namespace driver's tools. */
const QEMU_PACKAGES = new Set(["qemu-system-x86", "qemu-system-arm", "e2fsprogs", "lz4", "zstd", "xz-utils"]);

/**
 * Every host tool pyro uses, with the Debian package that brings it: what
 * doctor checks, and the list scripts/setup.sh installs (test/unit/doctor-setup.test.ts
 * holds them equal). Nothing here that pyro does not run: a tool listed as
 * missing must be one a user has a reason to install.
 */
export function hostTools(arch: string = process.arch): Array<{ name: string; package: string | null; purpose: string; file?: string }> {
  return [
    { name: "bwrap", package: "bubblewrap", purpose: "the namespace driver" },
    { name: "mmdebstrap", package: "mmdebstrap", purpose: "builds Debian environments" },
    { name: "debootstrap", package: "debootstrap", purpose: "builds Debian environments when mmdebstrap is missing (root only)" },
    { name: "ca-certificates", package: "ca-certificates", purpose: "https mirrors for the environment builders", file: "/etc/ssl/certs/ca-certificates.crt" },
    { name: "busybox (static)", package: "busybox-static", purpose: "the busybox environment, offline (else fetched with apt-get download)" },
    { name: "pasta", package: "passt", purpose: "network for sandboxes with network on (pasta for namespace sandboxes; the same package's passt for qemu VMs)" },
    { name: qemuBinaryName(arch), package: qemuPackage(arch), purpose: "the qemu driver" },
    { name: "mkfs.ext4", package: "e2fsprogs", purpose: "the qemu driver's disk images, and a task's disk image when pyro runs as root" },
    { name: "lz4", package: "lz4", purpose: "the qemu driver: unpacks Debian's 6.1 cloud kernel" },
    { name: "zstd", package: "zstd", purpose: "the qemu driver: unpacks Debian's 6.12 cloud kernel" },
    { name: "xz", package: "xz-utils", purpose: "the qemu driver: unpacks xz-compressed kernels" },
    { name: "firecracker", package: null, purpose: "the firecracker driver (not packaged by Debian)" },
    { name: "cc", package: "gcc", purpose: "builds the guest agent from source (make -C guest; with libc6-dev)" },
    { name: "make", package: "make", purpose: "builds the guest agent from source" },
  ];
}

/** What a clone's development needs beyond running pyro: the packaged aarch64 agent's cross compiler, and qemu-user for its C tests. doctor never asks for these. */
export const DEV_PACKAGES: readonly string[] = ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user", "cpio"];

/** The Debian packages scripts/setup.sh installs on this architecture: every package of hostTools, libc6-dev for cc, and DEV_PACKAGES. */
export function setupPackages(arch: string = process.arch): string[] {
  const pkgs = hostTools(arch).flatMap((t) => (t.package ? [t.package] : []));
  return [...pkgs, "libc6-dev", ...DEV_PACKAGES];
}

export async function doctor(args: DoctorArgs = {}): Promise<DoctorResult> {
  parseArgs(DoctorArgsSchema, args, "doctor");
  const statuses = await probeDrivers();
  const root = process.getuid?.() === 0;
  const { busyboxCandidates, elfInfo } = await import("../environments/builders/busybox.js");
  const staticBusybox = busyboxCandidates().find((p) => existsSync(p) && elfInfo(p).static) ?? null;
  const find = (n: string) => findExecutable(n);
  const vmArch = VM_ARCHES.includes(process.arch);
  const tools: DoctorResult["tools"] = hostTools(process.arch).map((t) => {
    const path = t.name === "busybox (static)" ? staticBusybox : t.name === "firecracker" ? firecrackerBinary() : t.file ? (existsSync(t.file) ? t.file : null) : find(t.name);
    return { name: t.name, found: path !== null, path, package: t.package, purpose: t.purpose };
  });

  const has = (n: string) => tools.find((t) => t.name === n)?.found ?? false;
  const missing: string[] = [];
  if (!has("bwrap")) missing.push("bubblewrap");
  if (!has("mmdebstrap") && !(has("debootstrap") && root)) missing.push("mmdebstrap");
  if (!has("busybox (static)")) missing.push("busybox-static");
  if (!has("pasta")) missing.push("passt");
  if (!has("ca-certificates")) missing.push("ca-certificates");
  // The qemu driver's packages only where this release can boot a VM (an x86_64 or aarch64 host).
  if (IMPLEMENTED_DRIVERS.includes("qemu") && vmArch) {
    for (const t of tools) if (t.package && !t.found && QEMU_PACKAGES.has(t.package)) missing.push(t.package);
  }
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
    missing_packages: [...new Set(missing)],
    install_command: installCommand(missing),
  };
}
