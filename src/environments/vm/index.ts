import { existsSync, lstatSync, readdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { PyroError } from "../../core/errors.js";
import { acquireLock, type Lock } from "../../util/lock.js";
import { locateAgent } from "../../util/agent-binary.js";
import { readJsonOrNull, removeTree, treeUsage, writeFileAtomic, writeJsonAtomic } from "../../util/fsutil.js";
import { noProgress, type ProgressListener } from "../../util/progress.js";
import { entryPaths, entryStatus, environmentsDir, makeBuildDir, presentSlugs } from "../cache.js";
import { VmRecordSchema, type Manifest, type VmRecord } from "../manifest.js";
import { buildInitramfs } from "./initramfs.js";
import { buildKernel, cachedKernels, checkKernel, coversGuestModules, GUEST_MODULES, kernelPackageFor, type CachedKernel } from "./kernel.js";
import { buildRootfsImage } from "./rootfs-image.js";
import { kernelsDir, kernelsLock, kernelsTmp, rememberSha256, sha256FileCached } from "./store.js";
import { fileSha256 } from "../../util/file-sha256.js";

/**
 * What a VM boots from, per environment: the kernel (shared in the cache),
 * the initramfs (agent + modules) and the ext4 root image, each recorded in
 * the environment's manifest under `vm` with its sha256. Built on first VM
 * use; rebuilt piece by piece when a digest no longer matches, the agent
 * binary changed, or the rootfs was rebuilt.
 */
export interface VmArtifacts {
  kernel: { path: string; release: string; package: string; package_version: string; sha256: string };
  initramfs: { path: string; sha256: string; modules: string[]; agent_sha256: string };
  rootfs_image: { path: string; size_mib: number; sha256: string };
}

/** The part of ensureEnvironment()'s result this needs: the name (the rootfs is taken from the entry's own manifest). */
export interface VmEnvironment {
  name: string;
}

export interface VmArtifactOptions {
  signal?: AbortSignal;
  progress?: ProgressListener;
  /** How long to wait for another process building the same artifacts (default 30 min). */
  lockTimeoutMs?: number;
}

export { GUEST_MODULES } from "./kernel.js";

/** The agent VMs boot as /init: located and checked (util/agent-binary.ts throws, saying what to do, when there is none to use). */
function agentSha(): { path: string; sha256: string } {
  const { path, sha256 } = locateAgent();
  return { path, sha256 };
}

function readyManifest(name: string): Manifest {
  const s = entryStatus(name);
  if (s.state !== "ready" || !s.manifest) {
    throw new PyroError("environment_not_ready", `${name} is ${s.state === "broken" ? `broken (${s.problems.join("; ")})` : "not pulled"}, so no VM artifacts can be made from it.`, {
      hint: `Pull it first: pyro env pull ${name}`,
    });
  }
  return s.manifest;
}

/** Why each recorded artifact cannot be used as it is (empty: all good). */
interface Verdict {
  kernel: CachedKernel | null;
  initramfs: boolean;
  image: boolean;
  problems: string[];
}

function judge(manifest: Manifest, dir: string, rootfs: string, agent: string, debArch: string): Verdict {
  const parsed = VmRecordSchema.safeParse(manifest.vm);
  if (!parsed.success) return { kernel: null, initramfs: false, image: false, problems: [manifest.vm === undefined ? "no VM artifacts yet" : "the manifest's vm record is invalid"] };
  const vm = parsed.data;
  const problems: string[] = [];
  let kernel: CachedKernel | null = null;
  const k = checkKernel(join(kernelsDir(), vm.kernel.dir));
  if (!k.kernel) problems.push(`kernel ${vm.kernel.dir}: ${k.problem}`);
  else if (k.kernel.record.arch !== debArch) problems.push(`kernel ${vm.kernel.dir} is for ${k.kernel.record.arch}`);
  else if (k.kernel.record.vmlinux.sha256 !== vm.kernel.sha256) problems.push(`kernel ${vm.kernel.dir} was rebuilt`);
  else if (!coversGuestModules(k.kernel.record)) problems.push(`kernel ${vm.kernel.dir} lacks modules the guest needs now (${GUEST_MODULES.join(", ")})`);
  else kernel = k.kernel;

  let initramfs = false;
  const ird = sha256FileCached(join(dir, vm.initramfs.path));
  if (ird !== vm.initramfs.sha256) problems.push(ird ? "initrd.img does not match its recorded sha256" : "initrd.img is missing");
  else if (vm.initramfs.agent_sha256 !== agent) problems.push("the guest agent binary changed");
  else if (!kernel || vm.initramfs.kernel_sha256 !== kernel.record.vmlinux.sha256) problems.push("initrd.img was made for another kernel");
  else initramfs = true;

  let image = false;
  const img = sha256FileCached(join(dir, vm.rootfs_image.path));
  let owner: { uid: number; gid: number } | null = null;
  try {
    const st = lstatSync(rootfs);
    owner = { uid: st.uid, gid: st.gid };
  } catch {
    /* reported as a mismatch */
  }
  if (img !== vm.rootfs_image.sha256) problems.push(img ? "rootfs.ext4 does not match its recorded sha256" : "rootfs.ext4 is missing");
  else if (vm.rootfs_image.rootfs_digest !== manifest.artifacts.rootfs.digest) problems.push("rootfs.ext4 was made from another rootfs");
  else if (!owner || owner.uid !== vm.rootfs_image.mapped_from.uid || owner.gid !== vm.rootfs_image.mapped_from.gid) problems.push("the rootfs changed owner since rootfs.ext4 was made");
  else image = true;
  return { kernel, initramfs, image, problems };
}

function result(vm: VmRecord, dir: string, kernel: CachedKernel): VmArtifacts {
  return {
    kernel: { path: join(kernel.dir, kernel.record.vmlinux.path), release: kernel.record.release, package: kernel.record.package, package_version: kernel.record.package_version, sha256: kernel.record.vmlinux.sha256 },
    initramfs: { path: join(dir, vm.initramfs.path), sha256: vm.initramfs.sha256, modules: [...vm.initramfs.modules], agent_sha256: vm.initramfs.agent_sha256 },
    rootfs_image: { path: join(dir, vm.rootfs_image.path), size_mib: vm.rootfs_image.size_mib, sha256: vm.rootfs_image.sha256 },
  };
}

/**
 * The VM artifacts of a ready environment (what ensureEnvironment returned),
 * building whatever is missing or stale. The fast path takes no lock: a
 * manifest read and a stat per file (store.ts remembers digests).
 * Builds run under the environment's lock and then the kernels' lock (this
 * order everywhere), in a directory under the cache's .tmp, and each file is
 * renamed into the entry before the manifest (written last, atomically)
 * names it: a kill at any point leaves the old record or debris for prune.
 */
export async function ensureVmArtifacts(env: VmEnvironment, options: VmArtifactOptions = {}): Promise<VmArtifacts> {
  const onProgress = options.progress ?? noProgress;
  const { debArch } = kernelPackageFor();
  const agent = agentSha();
  const paths = entryPaths(env.name);
  {
    const manifest = readyManifest(env.name);
    const v = judge(manifest, paths.dir, join(paths.dir, manifest.artifacts.rootfs.path), agent.sha256, debArch);
    if (v.kernel && v.initramfs && v.image) return result(VmRecordSchema.parse(manifest.vm), paths.dir, v.kernel);
  }

  const locks: Lock[] = [];
  const lockOpts = { timeoutMs: options.lockTimeoutMs ?? 30 * 60_000, ...(options.signal ? { signal: options.signal } : {}) };
  try {
    locks.push(await acquireLock(paths.lock, { ...lockOpts, what: `the VM artifacts of ${env.name}` }));
    locks.push(await acquireLock(kernelsLock(), { ...lockOpts, what: "the VM kernel build" }));
    // Another process may have built them while we waited.
    const manifest = readyManifest(env.name);
    const rootfs = join(paths.dir, manifest.artifacts.rootfs.path);
    const v = judge(manifest, paths.dir, rootfs, agent.sha256, debArch);
    if (v.kernel && v.initramfs && v.image) return result(VmRecordSchema.parse(manifest.vm), paths.dir, v.kernel);
    onProgress({ phase: "vm", message: `VM artifacts of ${env.name}: ${v.problems.join("; ")}` });

    let kernel = v.kernel;
    if (!kernel) {
      kernel = cachedKernels(debArch).map((k) => checkKernel(k.dir).kernel).find((k) => k !== null) ?? null;
      if (kernel) onProgress({ phase: "kernel", message: `using the cached kernel ${kernel.record.release} (${kernel.record.package_version})` });
      else kernel = await buildKernel({ onProgress, ...(options.signal ? { signal: options.signal } : {}) });
    }
    const old = VmRecordSchema.safeParse(manifest.vm);
    const build = makeBuildDir(paths.dir.split("/").pop()!);
    try {
      let initramfs = old.success && v.initramfs && old.data.kernel.sha256 === kernel.record.vmlinux.sha256 ? old.data.initramfs : null;
      if (!initramfs) {
        const t0 = performance.now();
        const bytes = buildInitramfs(kernel, agent.path);
        writeFileAtomic(join(build, "initrd.img"), bytes);
        const sha256 = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
        renameSync(join(build, "initrd.img"), join(paths.dir, "initrd.img"));
        rememberSha256(join(paths.dir, "initrd.img"), sha256);
        initramfs = { path: "initrd.img", sha256, bytes: bytes.length, modules: kernel.record.modules.map((m) => m.name), agent_sha256: agent.sha256, kernel_sha256: kernel.record.vmlinux.sha256 };
        onProgress({ phase: "initramfs", message: `initrd.img: ${bytes.length} bytes, modules ${initramfs.modules.join(" ")} (${Math.round(performance.now() - t0)} ms)` });
      }
      let image = old.success && v.image ? old.data.rootfs_image : null;
      if (!image) {
        const t0 = performance.now();
        onProgress({ phase: "image", message: `making rootfs.ext4 from ${rootfs}` });
        const out = join(build, "rootfs.ext4");
        const made = await buildRootfsImage(rootfs, out, options.signal ? { signal: options.signal } : {});
        const sha256 = fileSha256(out);
        const bytes = statSync(out).size;
        renameSync(out, join(paths.dir, "rootfs.ext4"));
        rememberSha256(join(paths.dir, "rootfs.ext4"), sha256);
        image = { path: "rootfs.ext4", sha256, bytes, size_mib: made.size_mib, rootfs_digest: manifest.artifacts.rootfs.digest, mapped_from: made.mapped_from };
        onProgress({ phase: "image", message: `rootfs.ext4: ${made.size_mib} MiB (${Math.round(performance.now() - t0)} ms)` });
      }
      const vm: VmRecord = {
        kernel: { dir: kernel.name, package: kernel.record.package, package_version: kernel.record.package_version, release: kernel.record.release, arch: kernel.record.arch, sha256: kernel.record.vmlinux.sha256 },
        initramfs,
        rootfs_image: image,
        built_at: new Date().toISOString(),
      };
      // Re-read under the lock: only the vm record changes, everything else is kept as it is on disk.
      writeJsonAtomic(paths.manifest, { ...readyManifest(env.name), vm });
      return result(vm, paths.dir, kernel);
    } finally {
      removeTree(build);
    }
  } finally {
    for (const l of locks.reverse()) l.release();
  }
}

/** Kernel directories some environment's manifest refers to. */
function referencedKernels(): Set<string> {
  const out = new Set<string>();
  for (const slug of presentSlugs()) {
    const m = readJsonOrNull<{ vm?: { kernel?: { dir?: unknown } } }>(join(environmentsDir(), slug, "manifest.json"));
    const dir = m?.vm?.kernel?.dir;
    if (typeof dir === "string") out.add(dir);
  }
  return out;
}

export interface KernelRemoval {
  path: string;
  kind: "partial" | "broken" | "unused" | "stale_lock";
  bytes: number;
}

/**
 * Removes kernels no environment refers to (an environment's removal frees
 * its kernel), damaged ones, and builds a killed process left. Skipped, with
 * nothing removed, while another process holds the kernels' lock.
 */
export async function pruneVmKernels(): Promise<{ removed: KernelRemoval[]; skipped: { path: string; reason: string }[] }> {
  const removed: KernelRemoval[] = [];
  if (!existsSync(kernelsDir())) return { removed, skipped: [] };
  let lock: Lock;
  try {
    lock = await acquireLock(kernelsLock(), { timeoutMs: 0, what: "the VM kernels" });
  } catch {
    return { removed, skipped: [{ path: kernelsDir(), reason: "another pyro process is building a VM kernel" }] };
  }
  try {
    for (const n of existsSync(kernelsTmp()) ? readdirSync(kernelsTmp()) : []) {
      const p = join(kernelsTmp(), n);
      removed.push({ path: p, kind: "partial", bytes: treeUsage(p).bytes });
      removeTree(p);
    }
    const referenced = referencedKernels();
    for (const n of readdirSync(kernelsDir())) {
      if (n.startsWith(".")) continue;
      const p = join(kernelsDir(), n);
      const broken = checkKernel(p).problem !== null;
      if (!broken && referenced.has(n)) continue;
      removed.push({ path: p, kind: broken ? "broken" : "unused", bytes: treeUsage(p).bytes });
      removeTree(p);
    }
  } finally {
    lock.release();
  }
  return { removed, skipped: [] };
}
