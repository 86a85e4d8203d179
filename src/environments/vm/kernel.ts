import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { gunzipSync } from "node:zlib";
import { z } from "zod";
import { PyroError } from "../../core/errors.js";
import { findExecutable } from "../../drivers/availability.js";
import { ensureDir, readJsonOrNull, removeTree, writeJsonAtomic } from "../../util/fsutil.js";
import type { ProgressListener } from "../../util/progress.js";
import { checkDisk, runTool } from "../builders/common.js";
import { extractVmlinux, BzImageError, MissingToolError } from "./bzimage.js";
import { pvhEntry, withFileSource, ElfError } from "./elf.js";
import { moduleNameOfPath, readModinfo } from "./modinfo.js";
import { parseModulesBuiltin, resolveModuleOrder, ModuleOrderError } from "./module-order.js";
import { kernelDirName, kernelsDir, kernelsTmp, rememberSha256, sha256FileCached } from "./store.js";
import { fileSha256 } from "../../util/file-sha256.js";

/**
 * The guest kernel: Debian's cloud kernel package, fetched with
 * `apt-get download` (no root), unpacked with `dpkg-deb -x`, its bzImage
 * turned into an ELF vmlinux (bzimage.ts), and the modules the guest agent
 * loads picked out by their own .modinfo dependencies.
 */

/**
 * What the guest agent loads: block, console and network devices on virtio-mmio, overlayfs, vsock for
 * Firecracker, and the balloon driver, whose free page reporting hands the pages the guest freed back to
 * the host (the qemu driver's `virtio-balloon-device,free-page-reporting=on`; without the device it binds nothing).
 */
export const GUEST_MODULES = ["virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "overlay", "vmw_vsock_virtio_transport", "virtio_balloon"] as const;

/**
 * Whether a cached kernel's modules are every one the guest needs now (as a
 * module or built in): a kernel extracted by a release that wanted fewer
 * (before virtio_net) must be extracted again, or a VM with network would
 * wait for an interface that never appears.
 */
export function coversGuestModules(record: Pick<KernelRecord, "modules" | "builtin">, wanted: readonly string[] = GUEST_MODULES): boolean {
  const have = new Set([...record.modules.map((m) => m.name), ...record.builtin].map((n) => n.replace(/-/g, "_")));
  return wanted.every((n) => have.has(n.replace(/-/g, "_")));
}

export const KERNEL_JSON_VERSION = 1;
const sha256 = z.string().regex(/^sha256:[0-9a-f]{64}$/);
export const KernelRecordSchema = z.looseObject({
  version: z.literal(KERNEL_JSON_VERSION),
  meta_package: z.string(),
  package: z.string().min(1),
  package_version: z.string().min(1),
  release: z.string().min(1),
  arch: z.string(),
  /** "elf-pvh" (x86: vmlinux with a PVH entry note) or "arm64-image" (arm64: the uncompressed Image). */
  format: z.enum(["elf-pvh", "arm64-image"]),
  compression: z.string(),
  vmlinux: z.strictObject({ path: z.literal("vmlinux"), sha256, bytes: z.number().int().nonnegative() }),
  modules: z.array(z.strictObject({ name: z.string(), path: z.string().regex(/^modules\/[A-Za-z0-9_]+\.ko$/), sha256, bytes: z.number().int().nonnegative(), depends: z.array(z.string()) })),
  builtin: z.array(z.string()),
  built_at: z.string(),
  build_seconds: z.number().nonnegative(),
});
export type KernelRecord = z.infer<typeof KernelRecordSchema>;

export interface CachedKernel {
  /** Absolute directory of the kernel entry. */
  dir: string;
  /** Its name under kernelsDir(). */
  name: string;
  record: KernelRecord;
}

/** Debian's architecture name for this host, and the meta package to fetch. */
export function kernelPackageFor(arch: string = process.arch): { debArch: string; metaPackage: string } {
  if (arch === "x64") return { debArch: "amd64", metaPackage: "linux-image-cloud-amd64" };
  if (arch === "arm64") return { debArch: "arm64", metaPackage: "linux-image-cloud-arm64" };
  throw new PyroError("driver_unavailable", `VM drivers support x86_64 and aarch64 hosts; this one is ${arch}.`, { hint: "Use the namespace driver on this host." });
}

/** Reads and checks one cached kernel: record valid, every file present with its recorded sha256. Returns the problem, or null. */
export function checkKernel(dir: string): { kernel: CachedKernel | null; problem: string | null } {
  const raw = readJsonOrNull<unknown>(join(dir, "kernel.json"));
  const parsed = KernelRecordSchema.safeParse(raw);
  if (!parsed.success) return { kernel: null, problem: raw === null ? "kernel.json is missing or torn" : `kernel.json is invalid (${parsed.error.issues[0]?.message})` };
  const record = parsed.data;
  for (const f of [record.vmlinux, ...record.modules]) {
    const actual = sha256FileCached(join(dir, f.path));
    if (actual === null) return { kernel: null, problem: `${f.path} is missing` };
    if (actual !== f.sha256) return { kernel: null, problem: `${f.path} has sha256 ${actual}, recorded ${f.sha256}` };
  }
  return { kernel: { dir, name: dir.split("/").pop()!, record }, problem: null };
}

/** Complete kernels in the cache for this architecture, newest build first. */
export function cachedKernels(debArch: string): CachedKernel[] {
  let names: string[] = [];
  try {
    names = readdirSync(kernelsDir()).filter((n) => !n.startsWith("."));
  } catch {
    return [];
  }
  const out: CachedKernel[] = [];
  for (const n of names) {
    const raw = readJsonOrNull<unknown>(join(kernelsDir(), n, "kernel.json"));
    const parsed = KernelRecordSchema.safeParse(raw);
    if (parsed.success && parsed.data.arch === debArch && coversGuestModules(parsed.data)) out.push({ dir: join(kernelsDir(), n), name: n, record: parsed.data });
  }
  return out.sort((a, b) => (a.record.built_at < b.record.built_at ? 1 : -1));
}

function kernelError(message: string, hint: string, cause?: unknown): PyroError {
  return new PyroError("environment_build_failed", message, { hint, ...(cause ? { cause } : {}) });
}

/** `apt-get download` with errors that say what to do. */
async function aptDownload(spec: string, cwd: string, signal: AbortSignal | undefined): Promise<string> {
  const args = ["download", ...(process.getuid?.() === 0 ? ["-o", "APT::Sandbox::User=root"] : []), spec];
  try {
    await runTool("apt-get", args, { cwd, ...(signal ? { signal } : {}) });
  } catch (error) {
    if (error instanceof PyroError && error.code === "cancelled") throw error;
    const tail = ((error as PyroError).details?.output_tail as string[] | undefined)?.join("\n") ?? (error as Error).message;
    if (/Unable to locate package|has no installation candidate|Version .* was not found/.test(tail)) {
      throw kernelError(`apt-get cannot find the package ${spec}: ${(error as Error).message}`, "Run `apt-get update` (as root) so apt knows Debian's kernel packages, and check that a Debian main component is in the apt sources.", error);
    }
    if (/Failed to fetch|Could not resolve|Temporary failure|Connection failed|Unable to connect/i.test(tail)) {
      throw new PyroError("mirror_unreachable", `apt-get could not download ${spec} from the Debian archive: ${(error as Error).message}`, {
        hint: "Check the network path to the mirror in /etc/apt/sources.list*, then try again.",
        cause: error,
      });
    }
    throw kernelError(`apt-get download ${spec} failed: ${(error as Error).message}`, "Run `apt-get download " + spec + "` by hand to see why, fix that, then try again.", error);
  }
  const name = spec.split("=")[0]!;
  const deb = readdirSync(cwd).find((f) => f.startsWith(`${name}_`) && f.endsWith(".deb"));
  if (!deb) throw kernelError(`apt-get download ${spec} left no .deb in ${cwd}.`, "Run `apt-get download " + spec + "` by hand to see why.");
  return join(cwd, deb);
}

function debField(deb: string, field: string): string {
  const r = spawnSync("dpkg-deb", ["-f", deb, field], { encoding: "utf8" });
  if (r.status !== 0) throw kernelError(`dpkg-deb cannot read ${deb}: ${(r.stderr || r.error?.message || "").trim()}`, "The download is damaged or not a Debian package; run the command again.");
  return r.stdout.trim();
}

/** The real kernel package a meta package depends on: "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)" → name=version. */
export function kernelDependency(depends: string): { name: string; version: string | null } | null {
  for (const alt of depends.split(/[,|]/)) {
    const m = /^\s*(linux-image-[A-Za-z0-9.+-]+)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?/.exec(alt);
    if (m && !/^linux-image-cloud-/.test(m[1]!)) return { name: m[1]!, version: m[2] ?? null };
  }
  return null;
}

function decompressModule(path: string, data: Buffer): Buffer {
  if (path.endsWith(".ko")) return data;
  if (path.endsWith(".ko.gz")) return gunzipSync(data);
  const tool = path.endsWith(".ko.xz") ? { cmd: "xz", pkg: "xz-utils" } : { cmd: "zstd", pkg: "zstd" };
  const r = spawnSync(tool.cmd, ["-d", "-c"], { input: data, maxBuffer: 256 * 1024 * 1024 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === "ENOENT") throw kernelError(`${tool.cmd} is needed to decompress ${path} and is not installed.`, `Install it: apt-get install ${tool.pkg}`);
  if (r.status !== 0) throw kernelError(`${tool.cmd} could not decompress ${path}: ${r.stderr.toString().trim()}`, "The kernel package is damaged; remove the cache's kernels directory and try again.");
  return r.stdout;
}

/** Every module file in the unpacked package: name → path. */
function moduleFiles(modulesRoot: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string) => {
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, d.name);
      if (d.isDirectory()) walk(p);
      else if (d.isFile()) {
        const name = moduleNameOfPath(d.name);
        if (name && !out.has(name)) out.set(name, p);
      }
    }
  };
  walk(modulesRoot);
  return out;
}

export interface BuildKernelOptions {
  signal?: AbortSignal;
  onProgress: ProgressListener;
  arch?: string;
  /** The modules the guest needs (default GUEST_MODULES). */
  modules?: readonly string[];
  /** A kernel image .deb to use instead of downloading one (tests; hosts that keep their own copy). */
  deb?: string;
}

/**
 * Fetches and builds a kernel entry. The caller holds kernelsLock(). Nothing
 * is left on failure: all work happens in a directory under kernels/.tmp,
 * removed on any error, renamed into place only when complete.
 */
export async function buildKernel(options: BuildKernelOptions): Promise<CachedKernel> {
  const t0 = performance.now();
  const { debArch, metaPackage } = kernelPackageFor(options.arch);
  for (const [tool, pkg] of [
    ...(options.deb ? [] : ([["apt-get", "apt"]] as const)),
    ["dpkg-deb", "dpkg"],
  ] as const) {
    if (!findExecutable(tool)) {
      throw new PyroError("driver_unavailable", `VM drivers take their guest kernel from Debian's ${metaPackage} package, fetched with ${tool}, which is not installed.`, {
        hint: `Run pyro on a Debian or Ubuntu host (package ${pkg}), or use the namespace driver.`,
      });
    }
  }
  ensureDir(kernelsTmp());
  // Under the kernels lock nobody else builds: whatever is in .tmp was left by a killed build (an unpacked package is ~100 MiB).
  for (const n of readdirSync(kernelsTmp())) removeTree(join(kernelsTmp(), n));
  // The package, its unpacked tree and the vmlinux at the peak.
  checkDisk(kernelsDir(), 320 * 1024 * 1024, "the VM kernel");
  const work = join(kernelsTmp(), `build-${process.pid}-${Date.now().toString(36)}`);
  mkdirSync(work);
  try {
    let deb = options.deb;
    if (!deb) {
      options.onProgress({ phase: "kernel", message: `apt-get download ${metaPackage}` });
      const meta = await aptDownload(metaPackage, work, options.signal);
      const dep = kernelDependency(debField(meta, "Depends"));
      if (!dep) throw kernelError(`${metaPackage} depends on no linux-image package (${debField(meta, "Depends")}).`, "Debian's archive changed how it names kernels; report this with the output of `apt-cache depends " + metaPackage + "`.");
      options.onProgress({ phase: "kernel", message: `apt-get download ${dep.name}` });
      deb = await aptDownload(dep.version ? `${dep.name}=${dep.version}` : dep.name, work, options.signal);
    }
    const pkg = debField(deb, "Package");
    const version = debField(deb, "Version");
    options.onProgress({ phase: "kernel", message: `unpacking ${pkg} ${version}` });
    const x = join(work, "x");
    await runTool("dpkg-deb", ["-x", deb, x], options.signal ? { signal: options.signal } : {});
    const boot = existsSync(join(x, "boot")) ? readdirSync(join(x, "boot")).filter((f) => /^vmlinuz-/.test(f)) : [];
    if (boot.length !== 1) throw kernelError(`${pkg} ${version} holds ${boot.length ? boot.join(", ") : "no /boot/vmlinuz-*"}, expected exactly one kernel.`, "This package is not a kernel image package; check `apt-cache depends " + metaPackage + "`.");
    const release = boot[0]!.slice("vmlinuz-".length);
    const out = join(work, "out");
    mkdirSync(join(out, "modules"), { recursive: true });

    options.onProgress({ phase: "kernel", message: `extracting vmlinux from ${boot[0]}` });
    const vmlinux = join(out, "vmlinux");
    let compression: string;
    let format: KernelRecord["format"];
    try {
      if (debArch === "amd64") {
        compression = (await extractVmlinux(join(x, "boot", boot[0]!), vmlinux)).compression;
        format = "elf-pvh";
        const entry = withFileSource(vmlinux, pvhEntry);
        if (entry === null) throw kernelError(`The vmlinux of ${pkg} ${version} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), so QEMU's microvm and Firecracker cannot boot it.`, "This kernel was built without CONFIG_PVH; pick a kernel package that has it (Debian's cloud and generic kernels do).");
      } else {
        // arm64's vmlinuz is a gzip'd Image that QEMU and Firecracker boot as is once uncompressed.
        const data = gunzipSync(readFileSync(join(x, "boot", boot[0]!)));
        if (data.length < 64 || data.readUInt32LE(0x38) !== 0x644d5241) throw new BzImageError("the uncompressed arm64 kernel has no ARM\\x64 Image magic");
        writeFileSync(vmlinux, data);
        compression = "gzip";
        format = "arm64-image";
      }
    } catch (error) {
      if (error instanceof MissingToolError) throw kernelError(`${error.tool} is needed to decompress the kernel and is not installed.`, `Install it: apt-get install ${error.pkg}`, error);
      if (error instanceof BzImageError || error instanceof ElfError) throw kernelError(`The kernel in ${pkg} ${version} cannot be turned into a bootable vmlinux: ${error.message}`, "The download may be damaged: run again; if it persists, report it with the package version.", error);
      throw error;
    }

    options.onProgress({ phase: "kernel", message: "resolving module dependencies from .modinfo" });
    const modRoot = join(x, "lib", "modules", release);
    if (!existsSync(modRoot)) throw kernelError(`${pkg} has no lib/modules/${release}.`, "This package is not a kernel image package.");
    const builtinPath = join(modRoot, "modules.builtin");
    const builtin = existsSync(builtinPath) ? parseModulesBuiltin(readFileSync(builtinPath, "utf8")) : new Set<string>();
    const files = moduleFiles(modRoot);
    const loaded = new Map<string, { data: Buffer; depends: string[] }>();
    const load = (name: string) => {
      const known = loaded.get(name);
      if (known) return known;
      const p = files.get(name);
      if (!p) return undefined;
      const data = decompressModule(p, readFileSync(p));
      let info;
      try {
        info = readModinfo(data);
      } catch (error) {
        throw kernelError(`${p.slice(x.length)} is not a readable kernel module: ${(error as Error).message}`, "The kernel package is damaged; run again.", error);
      }
      const entry = { data, depends: info.depends };
      loaded.set(name, entry);
      return entry;
    };
    let order;
    try {
      order = resolveModuleOrder({ wanted: options.modules ?? GUEST_MODULES, dependsOf: (n) => load(n)?.depends, builtin });
    } catch (error) {
      if (error instanceof ModuleOrderError) throw kernelError(`The modules the guest needs cannot be loaded from ${pkg} ${version}: ${error.message}`, "Use a kernel package that ships them (Debian's cloud kernels do).", error);
      throw error;
    }
    const modules: KernelRecord["modules"] = [];
    for (const name of order.order) {
      const m = loaded.get(name)!;
      const path = `modules/${name}.ko`;
      writeFileSync(join(out, path), m.data, { mode: 0o644 });
      modules.push({ name, path, sha256: fileSha256(join(out, path)), bytes: m.data.length, depends: m.depends });
    }
    const record: KernelRecord = {
      version: KERNEL_JSON_VERSION,
      meta_package: metaPackage,
      package: pkg,
      package_version: version,
      release,
      arch: debArch,
      format,
      compression,
      vmlinux: { path: "vmlinux", sha256: fileSha256(vmlinux), bytes: statSync(vmlinux).size },
      modules,
      builtin: order.builtin,
      built_at: new Date().toISOString(),
      build_seconds: Math.round(performance.now() - t0) / 1000,
    };
    writeJsonAtomic(join(out, "kernel.json"), record);
    const name = kernelDirName(pkg, version);
    const final = join(kernelsDir(), name);
    // Under the kernels lock nobody else writes here: a directory of that name is a damaged earlier build.
    if (existsSync(final)) {
      const aside = join(kernelsTmp(), `old-${name}-${Date.now().toString(36)}`);
      renameSync(final, aside);
      removeTree(aside);
    }
    renameSync(out, final);
    for (const f of [record.vmlinux, ...record.modules]) rememberSha256(join(final, f.path), f.sha256);
    options.onProgress({ phase: "kernel", message: `kernel ${release} ready (${record.build_seconds}s)` });
    return { dir: final, name, record };
  } finally {
    removeTree(work);
  }
}
