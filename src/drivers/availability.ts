import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
import { spawn, spawnSync } from "node:child_process";
import { release } from "node:os";
import { delimiter, join } from "node:path";
import { sandboxOwner, type SandboxOwner } from "../util/sandbox-user.js";
import { locateAgent } from "../util/agent-binary.js";
import { PyroError } from "../core/errors.js";
import { IMPLEMENTED_DRIVERS } from "./types.js";
import { kvmDeviceGroup, kvmVerdict, opensKvm, rootKvmBlocked } from "./vm/kvm.js";
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

/** The least Firecracker that describes its virtio devices in ACPI, which is how Debian's kernel finds them. */
export const MIN_FIRECRACKER: readonly [number, number] = [1, 8];

/** The firecracker binary: `$PYRO_FIRECRACKER` (a path, or a name on PATH), else `firecracker` on PATH. */
export function firecrackerBinary(env: NodeJS.ProcessEnv = process.env): string | null {
  return findExecutable(env.PYRO_FIRECRACKER || "firecracker", env);
}

const versionCache = new Map<string, Check>();

/** `firecracker --version`, at least MIN_FIRECRACKER (a subprocess of a few ms, cached per binary). */
export function firecrackerVersionCheck(binary: string): Check {
  const cached = versionCache.get(binary);
  if (cached) return cached;
  const r = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 5_000, env: {} });
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(`${r.stdout ?? ""}`);
  let check: Check;
  if (r.status !== 0 || !m) {
    check = { name: "firecracker_version", ok: false, detail: `${binary} --version did not say a version (${(r.error?.message ?? r.stderr ?? `exit ${r.status}`).toString().trim().slice(0, 200)})` };
  } else {
    const [major, minor] = [Number(m[1]), Number(m[2])];
    const ok = major > MIN_FIRECRACKER[0] || (major === MIN_FIRECRACKER[0] && minor >= MIN_FIRECRACKER[1]);
    check = ok
      ? { name: "firecracker_version", ok: true, detail: `Firecracker v${m[1]}.${m[2]}.${m[3]}` }
      : { name: "firecracker_version", ok: false, detail: `Firecracker v${m[1]}.${m[2]}.${m[3]} is too old: v${MIN_FIRECRACKER.join(".")} or newer describes its devices in ACPI, which Debian's kernel needs` };
  }
  versionCache.set(binary, check);
  return check;
}

/**
 * Firecracker's own jailer, opt-in: `PYRO_JAILER` names it (a path, or a
 * name on PATH); unset or empty, firecracker runs in pyro's bubblewrap jail.
 * Null when it is not asked for.
 */
export function jailerRequested(env: NodeJS.ProcessEnv = process.env): string | null {
  return env.PYRO_JAILER ? env.PYRO_JAILER : null;
}

const tripleCache = new Map<string, string | null>();

/** The x.y.z a binary's `--version` says (cached per binary: a few ms each, and every start asks). */
function versionTriple(binary: string): string | null {
  if (tripleCache.has(binary)) return tripleCache.get(binary)!;
  const r = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 5_000, env: {} });
  const triple = r.status === 0 ? (/v?(\d+\.\d+\.\d+)/.exec(`${r.stdout ?? ""}`)?.[1] ?? null) : null;
  tripleCache.set(binary, triple);
  return triple;
}

/**
 * Whether the jailer is in use and, when asked for, whether it can be:
 * pyro is root (the jailer must start as root: it chroots, makes device
 * nodes and drops to the sandbox uid), it is an executable file, and its
 * `--version` is firecracker's (Firecracker ships the two as one release;
 * each jailer is built for its own firecracker). `binary` is the jailer's
 * path when it can be used.
 */
export function jailerCheck(firecracker: string | null, env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? -1): { check: Check; binary: string | null } {
  const asked = jailerRequested(env);
  if (!asked) return { check: { name: "jailer", ok: true, detail: "not in use (PYRO_JAILER is not set): firecracker runs in pyro's bubblewrap jail" }, binary: null };
  const fail = (detail: string) => ({ check: { name: "jailer", ok: false, detail: `PYRO_JAILER=${asked}: ${detail}` }, binary: null });
  if (uid !== 0) return fail(`the jailer must start as root and pyro runs as uid ${uid}: run pyro as root, or unset PYRO_JAILER for the bubblewrap jail`);
  const binary = findExecutable(asked, env);
  if (!binary) return fail("not an executable file (get the jailer from the same Firecracker release as firecracker, or unset PYRO_JAILER)");
  if (!firecracker) return fail("no firecracker binary to run under it");
  const [jv, fv] = [versionTriple(binary), versionTriple(firecracker)];
  if (!jv) return fail(`${binary} --version did not say a version`);
  if (jv !== fv) return fail(`the jailer is v${jv} and firecracker (${firecracker}) is ${fv ? `v${fv}` : "of no version"}: use the jailer of the same release`);
  return { check: { name: "jailer", ok: true, detail: `in use: ${binary} (v${jv}, firecracker's version)` }, binary };
}

/** KVM as Firecracker needs it: ruled out by the static checks or a failed proof, else usable (proven, or not yet tried). */
function firecrackerKvmCheck(): Check {
  const verdict = kvmVerdict();
  if (verdict && !verdict.usable) return { name: "kvm", ok: false, detail: verdict.detail.replace(/, so qemu runs under TCG$|; qemu runs under TCG$/, "") + " (Firecracker has no software emulation)" };
  if (verdict) return { name: "kvm", ok: true, detail: `KVM proven on this host boot (${verdict.detail})` };
  return { name: "kvm", ok: true, detail: "/dev/kvm opens read-write; not yet proven by a boot on this host boot" };
}

export { opensKvm } from "./vm/kvm.js";

/**
 * As root, firecracker runs as the sandbox uid, which `pyro-agent launch`
 * leaves without supplementary groups: the kvm group does not help it, so
 * /dev/kvm's mode must let that uid (or its gid) in. Said here, so auto
 * never picks a driver that would refuse to start.
 */
function kvmAccessAsRoot(): Check[] {
  let owner;
  try {
    owner = sandboxOwner();
  } catch (error) {
    return [{ name: "kvm_access", ok: false, detail: (error as Error).message }];
  }
  if (!owner) return [];
  if (opensKvm(owner)) return [{ name: "kvm_access", ok: true, detail: `the sandbox uid ${owner.uid} may open /dev/kvm` }];
  const group = kvmDeviceGroup();
  if (group !== null) return [{ name: "kvm_access", ok: true, detail: `the sandbox uid ${owner.uid} opens /dev/kvm through its group ${group}, which the launcher keeps for it` }];
  let mode = "";
  try {
    const st = statSync("/dev/kvm");
    mode = ` (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}, owner ${st.uid}:${st.gid})`;
  } catch {
    /* said by the kvm check */
  }
  return [{ name: "kvm_access", ok: false, detail: `as root, firecracker runs as the sandbox uid ${owner.uid} with no supplementary groups, and /dev/kvm${mode} does not let it in (no group but root's may open it): give /dev/kvm to the kvm group (mode 0660, as udev does), or run pyro as an unprivileged user in that group` }];
}

/** The host's tun device; inside the jail it is bound at the same path, where Firecracker opens it. */
export const TUN_DEVICE = "/dev/net/tun";
const TUN_RDEV = { major: 10, minor: 200 };

/** Who opens the TAP: the sandbox uid as root (no supplementary group: the launcher clears them), else pyro's own user. */
function vmIdentity(owner: SandboxOwner | null): { uid: number; gids: number[] } {
  if (owner) return { uid: owner.uid, gids: [owner.gid] };
  return { uid: process.getuid!(), gids: [process.getgid!(), ...(process.getgroups?.() ?? [])] };
}

/** Why the VM's uid cannot open `tun` read-write, or null when it can. */
export function tunRefusal(tun: string, owner: SandboxOwner | null): string | null {
  let st;
  try {
    st = statSync(tun);
  } catch {
    return `${tun} does not exist (the kernel's tun module: modprobe tun)`;
  }
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  if (!st.isCharacterDevice() || major !== TUN_RDEV.major || minor !== TUN_RDEV.minor) return `${tun} is not the tun device (char 10:200)`;
  const who = vmIdentity(owner);
  const mode = st.mode & 0o777;
  const bits = who.uid === st.uid ? mode >> 6 : who.gids.includes(st.gid) ? (mode >> 3) & 7 : mode & 7;
  if ((bits & 6) === 6) return null;
  const name = owner ? `the sandbox uid ${owner.uid}` : `uid ${who.uid}`;
  return `${tun} is mode ${mode.toString(8).padStart(4, "0")} (owner ${st.uid}:${st.gid}), so ${name}, which Firecracker runs as, cannot open it`;
}

/** The kernel's bridge: loaded, built in, or a module that the first bridge loads. */
function bridgeRefusal(): string | null {
  const modules = `/lib/modules/${release()}`;
  if (existsSync("/sys/module/bridge") || existsSync(`${modules}/kernel/net/bridge`)) return null;
  try {
    if (/\/bridge\.ko$/m.test(readFileSync(`${modules}/modules.builtin`, "utf8"))) return null;
  } catch {
    /* no list: said below */
  }
  return `the kernel has no bridge (not loaded, no module in ${modules}): the VM's TAP is bridged to pasta`;
}

/** Whether a firecracker VM may have a network here, and why not: what `pyro doctor` says and what a start refuses with. */
export function firecrackerNetworkCheck(owner: SandboxOwner | null, tun = TUN_DEVICE): Check {
  const missing = [
    findExecutable("pasta") ? null : "pasta is not installed (apt-get install -y passt)",
    tunRefusal(tun, owner),
    bridgeRefusal(),
  ].filter((m): m is string => m !== null);
  if (missing.length) return { name: "network", ok: false, detail: `VMs with network cannot run here: ${missing.join("; ")}` };
  return { name: "network", ok: true, detail: `VMs with network: a TAP in the VM's jail, bridged to pasta (${tun} opens for the VM's uid)` };
}

/** The network check under the sandbox owner (a bad PYRO_SANDBOX_UID is said by kvm_access too). */
function firecrackerNetworkCheckFor(): Check {
  try {
    return firecrackerNetworkCheck(sandboxOwner());
  } catch (error) {
    return { name: "network", ok: false, detail: (error as Error).message };
  }
}

export interface FirecrackerSupport {
  available: boolean;
  reason: string | null;
  binary: string | null;
  /** KVM proven by a boot on this host boot (what auto waits for). */
  proven: boolean;
  /** Firecracker's jailer, when PYRO_JAILER asks for it and it can be used (jailerCheck); absent or null: the bubblewrap jail. */
  jailer?: string | null;
  checks: Check[];
}

/**
 * The firecracker driver's preconditions: KVM not ruled out (a PVM or
 * flagless /dev/kvm is, without a boot: drivers/vm/kvm.ts), a firecracker
 * binary, v1.8 or newer (one `--version`, cached), the agent built.
 */
export function firecrackerSupport(env: NodeJS.ProcessEnv = process.env): FirecrackerSupport {
  const binary = firecrackerBinary(env);
  const binaryCheck: Check = binary
    ? { name: "firecracker", ok: true, detail: binary }
    : {
        name: "firecracker",
        ok: false,
        detail: env.PYRO_FIRECRACKER
          ? `PYRO_FIRECRACKER=${env.PYRO_FIRECRACKER} is not an executable file`
          : "no firecracker binary on PATH (not packaged by Debian: get a release from github.com/firecracker-microvm/firecracker/releases, or set PYRO_FIRECRACKER)",
      };
  const kvm = firecrackerKvmCheck();
  const jailer = jailerCheck(binary, env);
  // The jailer makes firecracker its own /dev/kvm (owned by the sandbox uid): the host's mode does not matter then.
  const checks: Check[] = [kvm, ...(kvm.ok && !jailer.binary ? kvmAccessAsRoot() : []), binaryCheck];
  if (binary) checks.push(firecrackerVersionCheck(binary));
  checks.push(jailer.check, agentCheck(), releaseCheck("firecracker"));
  const failed = checks.filter((c) => !c.ok);
  // Said, never counted: a host without it still runs firecracker VMs, without network (a start with network refuses).
  checks.push(firecrackerNetworkCheckFor());
  return { available: failed.length === 0, reason: failed.length ? failed.map((c) => c.detail).join("; ") : null, binary, proven: kvmVerdict()?.usable === true, checks, jailer: jailer.binary };
}

/** Every driver's status, with the subprocess probes (doctor). Firecracker, qemu, namespace: the order `auto` prefers. */
export async function probeDrivers(): Promise<DriverStatus[]> {
  const fc = firecrackerSupport();
  const firecracker: DriverStatus = {
    driver: "firecracker",
    available: fc.available,
    reason: fc.reason,
    isolation: fc.available ? { driver: "firecracker", kind: "microvm", accel: "kvm" } : null,
    checks: fc.checks,
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
    isolation: qemuFailed.length ? null : kvmVerdict()?.usable && !rootKvmBlocked() ? { driver: "qemu", kind: "microvm", accel: "kvm" } : { driver: "qemu", kind: "emulated-vm", accel: "tcg" },
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
  const blocked = verdict && !verdict.usable ? null : rootKvmBlocked();
  if (blocked) return { name: "accel", ok: true, detail: `tcg, software emulation (${blocked}); never picked by auto, use --driver qemu` };
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
