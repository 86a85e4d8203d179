import { closeSync, constants, existsSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { cacheDir } from "../../util/paths.js";
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
