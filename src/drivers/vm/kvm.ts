import { closeSync, constants, existsSync, openSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { cacheDir } from "../../util/paths.js";
import { sandboxOwner } from "../../util/sandbox-user.js";
import { readJsonOrNull, writeJsonAtomic, ensureDir } from "../../util/fsutil.js";

/**
 * Whether qemu may use KVM here. "/dev/kvm opens" is not the answer: some
 * hosts of this kind have a PVM /dev/kvm that opens, runs a tiny hand-made
 * guest, and crawls then dies on a stock kernel (host-facts.md, "The
 * host"). So KVM is used only where a real boot of our VM to its agent has
 * succeeded under it, and that verdict is remembered for the host's boot
 * (a kernel update or a new module changes it only across a reboot).
 * Before any boot: cheap static checks rule out the hosts where trying
 * would only cost a timeout.
 */

export interface KvmVerdict {
  usable: boolean;
  /** Why, in a user's words: what doctor shows and what the isolation note says. */
  detail: string;
}

/** The verdict known without booting anything: null means "a boot must tell". */
export function staticKvmVerdict(): KvmVerdict | null {
  if (!existsSync("/dev/kvm")) return { usable: false, detail: "/dev/kvm does not exist (no hardware virtualization here, or nested virtualization is off)" };
  try {
    closeSync(openSync("/dev/kvm", constants.O_RDWR));
  } catch (error) {
    return { usable: false, detail: `/dev/kvm cannot be opened read-write (${(error as NodeJS.ErrnoException).code}): add your user to the kvm group` };
  }
  if (existsSync("/sys/module/kvm_pvm")) return { usable: false, detail: "/dev/kvm is PVM (kvm_pvm): stock kernels do not boot on it, so qemu runs under TCG" };
  let flags = "";
  try {
    flags = /^flags\s*:(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "";
  } catch {
    /* no cpuinfo: let a boot tell */
  }
  if (process.arch === "x64" && flags && !/\b(vmx|svm)\b/.test(flags)) {
    return { usable: false, detail: "/dev/kvm opens but the CPU shows no vmx/svm flag (a paravirtual KVM): stock kernels do not boot on it, so qemu runs under TCG" };
  }
  return null;
}

function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}

const verdictFile = () => join(cacheDir(), "kvm-verdict.json");

/** The verdict for this host boot: static, or what a real boot proved, or null (not tried yet). */
export function kvmVerdict(): KvmVerdict | null {
  const fixed = staticKvmVerdict();
  if (fixed) return fixed;
  const saved = readJsonOrNull<KvmVerdict & { boot_id: string }>(verdictFile());
  return saved && saved.boot_id === bootId() ? { usable: saved.usable, detail: saved.detail } : null;
}

/** Remembers what a boot under KVM showed, for the rest of this host boot. */
export function recordKvmVerdict(verdict: KvmVerdict): void {
  ensureDir(cacheDir());
  writeJsonAtomic(verdictFile(), { ...verdict, boot_id: bootId() });
}

/**
 * /dev/kvm's group, when that group (not root's) may read and write it and
 * the device is KVM's (10:232): the group `pyro-agent launch --kvm-device`
 * keeps for the sandbox uid as root. Null otherwise (root-only /dev/kvm:
 * a root pyro's VMs then run under TCG, and doctor says why).
 */
export function kvmDeviceGroup(path = "/dev/kvm"): number | null {
  try {
    const st = statSync(path);
    if (!st.isCharacterDevice() || st.rdev !== (10 << 8 | 232)) return null;
    return st.gid !== 0 && (st.mode & 0o060) === 0o060 ? st.gid : null;
  } catch {
    return null;
  }
}

/** Whether a uid or gid (no supplementary groups) may open /dev/kvm read-write, from its mode. */
export function opensKvm(owner: { uid: number; gid: number }, path = "/dev/kvm"): boolean {
  try {
    const st = statSync(path);
    const bits = st.uid === owner.uid ? (st.mode >> 6) & 7 : st.gid === owner.gid ? (st.mode >> 3) & 7 : st.mode & 7;
    return (bits & 6) === 6;
  } catch {
    return false;
  }
}

/**
 * As root, VMs run as the sandbox uid: whether that uid can open /dev/kvm
 * (by its mode, or through the device's group the launcher keeps). Null
 * when it can (or pyro is not root); else why not, in a user's words.
 */
export function sandboxKvmBlocked(owner: { uid: number; gid: number } | null, path = "/dev/kvm"): string | null {
  if (!owner || !existsSync(path) || opensKvm(owner, path) || kvmDeviceGroup(path) !== null) return null;
  return `as root, VMs run as the sandbox uid ${owner.uid}, and ${path} lets only root in (no group may open it): give it to the kvm group (mode 0660, as udev does) for KVM`;
}

/** sandboxKvmBlocked for this process's sandbox uid (null when pyro is not root, or the uid can use KVM). */
export function rootKvmBlocked(): string | null {
  if (process.getuid?.() !== 0) return null;
  try {
    return sandboxKvmBlocked(sandboxOwner());
  } catch {
    return null; // no sandbox uid: the start says why
  }
}
