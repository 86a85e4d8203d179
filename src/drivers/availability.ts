import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, statSync } from "node:fs";
import { spawn } from "node:child_process";
import { delimiter, join } from "node:path";
import { locateAgent } from "../util/agent-binary.js";
import { PyroError } from "../core/errors.js";
import { IMPLEMENTED_DRIVERS } from "./types.js";
import { kvmVerdict } from "./qemu/kvm.js";
import { cgroupLayout } from "./cgroups.js";

/**
 * What this host can isolate with, and why not when it cannot. Used by
 * `pyro doctor` (everything, with reasons and the apt-get line that fixes
 * it) and by the runtime on every start (`namespaceSupport()`: static checks
 * only, cached for the process, no subprocess on the hot path).
 */

export type DriverName = "firecracker" | "qemu" | "namespace";

/** Carried by every result that ran something (CONTRACT: "Drivers"). */
export interface Isolation {
  driver: DriverName;
  kind: "microvm" | "emulated-vm" | "namespace";
  accel: "kvm" | "tcg" | null;
}

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface DriverStatus {
  driver: DriverName;
  available: boolean;
  /** Why it is not available (null when it is). */
  reason: string | null;
  /** The isolation it gives when available. */
  isolation: Isolation | null;
  checks: Check[];
  /** Debian packages that would make it available. */
  missing_packages: string[];
}

/** Finds an executable on PATH (or an absolute path), without spawning anything. */
export function findExecutable(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  const candidates = name.includes("/") ? [name] : (env.PATH ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin").split(delimiter).filter(Boolean).map((d) => join(d, name));
  // Root's PATH may lack sbin on some setups; tools like debootstrap live there.
  if (!name.includes("/")) candidates.push(join("/usr/sbin", name), join("/sbin", name));
  for (const p of candidates) {
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      /* next */
    }
  }
  return null;
}

function readSysctl(path: string): string | null {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return null;
  }
}

const isRoot = () => process.getuid?.() === 0;

/** /dev/kvm opened read-write, the only test that tells the truth (permissions, a missing module, nesting). */
export function kvmCheck(): Check {
  if (!existsSync("/dev/kvm")) return { name: "kvm", ok: false, detail: "/dev/kvm does not exist (no hardware virtualization here, or the kvm module is not loaded; nested virtualization may be off)" };
  try {
    closeSync(openSync("/dev/kvm", constants.O_RDWR));
    return { name: "kvm", ok: true, detail: "/dev/kvm is read-write" };
  } catch (error) {
    return { name: "kvm", ok: false, detail: `/dev/kvm cannot be opened read-write (${(error as NodeJS.ErrnoException).code}): add your user to the kvm group` };
  }
}

/** User namespaces, from the sysctls that disable them (no subprocess). */
export function userNamespaceSysctlCheck(): Check {
  const max = readSysctl("/proc/sys/user/max_user_namespaces");
  if (max !== null && Number(max) === 0) return { name: "user_namespaces", ok: false, detail: "user.max_user_namespaces is 0: user namespaces are disabled (sysctl -w user.max_user_namespaces=10000)" };
  if (!isRoot()) {
    if (readSysctl("/proc/sys/kernel/unprivileged_userns_clone") === "0") {
      return { name: "user_namespaces", ok: false, detail: "kernel.unprivileged_userns_clone is 0: unprivileged user namespaces are off (sysctl -w kernel.unprivileged_userns_clone=1)" };
    }
    if (readSysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") === "1") {
      return { name: "user_namespaces", ok: true, detail: "AppArmor restricts unprivileged user namespaces: bwrap works only with its AppArmor profile (the sandbox probe tells)" };
    }
  }
  return { name: "user_namespaces", ok: true, detail: max !== null ? `enabled (user.max_user_namespaces=${max})` : "enabled" };
}

function agentCheck(): Check {
  try {
    const agent = locateAgent();
    const from = agent.source === "prebuilt" ? `prebuilt for ${agent.platform}, sha256 as recorded at build` : agent.source === "built" ? "built from source" : "from $PYRO_AGENT";
    return { name: "agent", ok: true, detail: `${agent.path} (${from})` };
  } catch (error) {
    const e = error as Error;
    return { name: "agent", ok: false, detail: e instanceof PyroError && e.hint ? `${e.message} ${e.hint}` : `cannot locate the guest agent: ${e.message}` };
  }
}

export interface NamespaceSupport {
  available: boolean;
  reason: string | null;
  bwrap: string | null;
  checks: Check[];
}

let nsCache: NamespaceSupport | null = null;
let probeCache: Promise<Check> | null = null;

/**
 * The namespace driver's static preconditions, cached for the process (a few
 * stat calls the first time, nothing after): bwrap on PATH, user namespaces
 * not disabled, the agent built. Whether bwrap can really start a sandbox
 * here is `probeNamespaceSandbox()`, which costs a subprocess: doctor runs it,
 * and the runtime should run it only after a sandbox failed to start, to tell
 * the user why.
 */
export function namespaceSupport(): NamespaceSupport {
  if (nsCache) return nsCache;
  const bwrap = findExecutable("bwrap");
  const checks: Check[] = [
    bwrap ? { name: "bwrap", ok: true, detail: bwrap } : { name: "bwrap", ok: false, detail: "bwrap is not installed (apt-get install bubblewrap)" },
    userNamespaceSysctlCheck(),
    agentCheck(),
  ];
  const failed = checks.filter((c) => !c.ok);
  nsCache = { available: failed.length === 0, reason: failed.length ? failed.map((c) => c.detail).join("; ") : null, bwrap, checks };
  return nsCache;
}

/** Forgets cached results (after installing something, or in tests). */
export function resetAvailabilityCache(): void {
  nsCache = null;
  probeCache = null;
}

function run(cmd: string, args: string[], timeoutMs = 5000): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    let stderr = "";
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"], timeout: timeoutMs });
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    child.on("error", (e) => resolve({ code: null, stderr: e.message }));
    child.on("close", (code) => resolve({ code, stderr: stderr.trim() }));
  });
}

/** Starts a trivial sandbox with every namespace bwrap can make, /proc and /dev mounted: what the driver needs, minus our agent. Cached once it ran. */
export function probeNamespaceSandbox(): Promise<Check> {
  probeCache ??= (async (): Promise<Check> => {
    const bwrap = findExecutable("bwrap");
    if (!bwrap) return { name: "sandbox", ok: false, detail: "bwrap is not installed" };
    const t0 = performance.now();
    const r = await run(bwrap, ["--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]);
    const ms = (performance.now() - t0).toFixed(0);
    if (r.code === 0) return { name: "sandbox", ok: true, detail: `bwrap started a trivial sandbox (user, mount, pid, net, ipc, uts namespaces) in ${ms} ms` };
    return { name: "sandbox", ok: false, detail: `bwrap could not start a trivial sandbox: ${r.stderr.split("\n")[0] || `exit ${r.code}`}` };
  })();
  return probeCache;
}

/** User namespaces really usable (a subprocess; doctor only). */
async function probeUserNamespace(): Promise<Check> {
  const sys = userNamespaceSysctlCheck();
  if (!sys.ok) return sys;
  const unshare = findExecutable("unshare");
  if (!unshare) return sys;
  const r = await run(unshare, ["--user", "--map-root-user", "true"]);
  return r.code === 0 ? { name: "user_namespaces", ok: true, detail: "usable (unshare --user --map-root-user works)" } : { name: "user_namespaces", ok: false, detail: `unshare --user failed: ${r.stderr.split("\n")[0]}` };
}

export function qemuBinaryName(arch: string = process.arch): string {
  return arch === "arm64" ? "qemu-system-aarch64" : "qemu-system-x86_64";
}
export function qemuPackage(arch: string = process.arch): string {
  return arch === "arm64" ? "qemu-system-arm" : "qemu-system-x86";
}

/** Whether this release can boot the driver at all. */
function releaseCheck(driver: DriverName): Check {
  return IMPLEMENTED_DRIVERS.includes(driver)
    ? { name: "driver", ok: true, detail: "built in" }
    : { name: "driver", ok: false, detail: `the ${driver} driver is not part of this release yet (the namespace driver runs instead)` };
}

/** Every driver's status, with the subprocess probes (doctor). Firecracker, qemu, namespace: the order `auto` prefers. */
export async function probeDrivers(): Promise<DriverStatus[]> {
  const kvm = kvmCheck();

  const fcPath = process.env.PYRO_FIRECRACKER ?? findExecutable("firecracker");
  const fcChecks: Check[] = [kvm, fcPath ? { name: "firecracker", ok: true, detail: fcPath } : { name: "firecracker", ok: false, detail: "no firecracker binary on PATH (not packaged by Debian: get a release from github.com/firecracker-microvm/firecracker, or set PYRO_FIRECRACKER)" }];
  fcChecks.push(releaseCheck("firecracker"));
  const fcFailed = fcChecks.filter((c) => !c.ok);
  const firecracker: DriverStatus = {
    driver: "firecracker",
    available: fcFailed.length === 0,
    reason: fcFailed.length ? fcFailed.map((c) => c.detail).join("; ") : null,
    isolation: fcFailed.length ? null : { driver: "firecracker", kind: "microvm", accel: "kvm" },
    checks: fcChecks,
    missing_packages: [],
  };

  const qemuPath = findExecutable(qemuBinaryName());
  const qemuChecks: Check[] = [
    qemuPath ? { name: "qemu", ok: true, detail: qemuPath } : { name: "qemu", ok: false, detail: `${qemuBinaryName()} is not installed (apt-get install ${qemuPackage()})` },
    accelCheck(),
    releaseCheck("qemu"),
  ];
  const qemuFailed = qemuChecks.filter((c) => !c.ok);
  const qemu: DriverStatus = {
    driver: "qemu",
    available: qemuFailed.length === 0,
    reason: qemuFailed.length ? qemuFailed.map((c) => c.detail).join("; ") : null,
    isolation: qemuFailed.length ? null : kvmVerdict()?.usable ? { driver: "qemu", kind: "microvm", accel: "kvm" } : { driver: "qemu", kind: "emulated-vm", accel: "tcg" },
    checks: qemuChecks,
    // Installing QEMU makes no driver available until the qemu driver ships.
    missing_packages: qemuPath || !IMPLEMENTED_DRIVERS.includes("qemu") ? [] : [qemuPackage()],
  };

  const ns = namespaceSupport();
  const nsChecks: Check[] = [ns.checks[0]!, await probeUserNamespace(), await probeNamespaceSandbox(), ns.checks[2]!];
  const nsFailed = nsChecks.filter((c) => !c.ok);
  const namespace: DriverStatus = {
    driver: "namespace",
    available: nsFailed.length === 0,
    reason: nsFailed.length ? nsFailed.map((c) => c.detail).join("; ") : null,
    isolation: nsFailed.length ? null : { driver: "namespace", kind: "namespace", accel: null },
    checks: nsChecks,
    missing_packages: ns.bwrap ? [] : ["bubblewrap"],
  };
  return [firecracker, qemu, namespace];
}

/** qemu's acceleration here, and why: KVM only once a VM booted under it on this host boot. */
function accelCheck(): Check {
  const verdict = kvmVerdict();
  if (verdict?.usable) return { name: "accel", ok: true, detail: `kvm (${verdict.detail}); auto picks qemu` };
  if (verdict) return { name: "accel", ok: true, detail: `tcg, software emulation (${verdict.detail}); never picked by auto, use --driver qemu` };
  return { name: "accel", ok: true, detail: "tcg until KVM is proven: /dev/kvm looks usable; `pyro run --driver qemu busybox -- true` boots a VM under it once, and auto then picks qemu" };
}

/** What `auto` picks: firecracker, then qemu with KVM, then namespace. QEMU under TCG never (too slow for an agent loop). */
export function pickAutoDriver(statuses: readonly DriverStatus[]): { driver: DriverName; isolation: Isolation } | null {
  const by = (d: DriverName) => statuses.find((s) => s.driver === d && s.available && s.isolation);
  const pick = by("firecracker") ?? (by("qemu")?.isolation?.accel === "kvm" ? by("qemu") : undefined) ?? by("namespace");
  return pick ? { driver: pick.driver, isolation: pick.isolation! } : null;
}

export type CgroupVersion = "v1" | "v2" | "none";

export interface CgroupStatus {
  /** Where the memory/pids/cpu controllers live: v1 hierarchies (also on hybrid hosts) or the unified v2 tree. */
  version: CgroupVersion;
  /** A cgroup2 tree is also mounted (at /sys/fs/cgroup/unified) next to v1 controllers. */
  hybrid: boolean;
  /** Where pyro would create its groups. */
  base: string | null;
  controllers: { name: "memory" | "pids" | "cpu"; available: boolean; writable: boolean }[];
}

/**
 * Which cgroup hierarchy the host has and which of the controllers the driver
 * uses we can write: the namespace driver's own view (cgroupLayout), so doctor
 * reports exactly what a sandbox will get (without writable controllers the
 * driver says its limits are not enforced).
 */
export function cgroupStatus(): CgroupStatus {
  const layout = cgroupLayout();
  const version: CgroupVersion = layout.flavor !== "none" ? layout.flavor : layout.controllers.some((c) => c.available) ? (existsSync("/sys/fs/cgroup/cgroup.controllers") ? "v2" : "v1") : "none";
  const base = layout.parents.unified ?? layout.parents.memory ?? null;
  return { version, hybrid: layout.hybrid, base: base && version !== "none" ? base : null, controllers: layout.controllers.map((c) => ({ ...c })) };
}

/** The one line that installs Debian packages (sudo when not root). */
export function installCommand(packages: readonly string[]): string | null {
  if (packages.length === 0) return null;
  return `${isRoot() ? "" : "sudo "}apt-get install -y ${[...new Set(packages)].join(" ")}`;
}
