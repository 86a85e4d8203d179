import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { chownTree, ownedBy, sandboxOwner } from "../util/sandbox-user.js";
import { join } from "node:path";
import { PyroError } from "../core/errors.js";
import { VERSION } from "../version.js";
import { cacheDir, stateDir } from "../util/paths.js";
import { acquireLock, type Lock } from "../util/lock.js";
import { isAlive, type ProcessIdentity } from "../util/proc.js";
import { readJsonOrNull, removeTree, treeUsage, writeJsonAtomic } from "../util/fsutil.js";
import { noProgress, type ProgressListener } from "../util/progress.js";
import { assertValidEnvironmentName, catalogEntry, CATALOG, DEFAULT_ENVIRONMENT, isValidEnvironmentName, unknownEnvironment, type CatalogEntry } from "./catalog.js";
import {
  DEFAULT_PROBES,
  entryPaths,
  entryStatus,
  environmentsDir,
  installBuild,
  locksDir,
  makeBuildDir,
  manifestBytes,
  nameOfSlug,
  presentSlugs,
  privateEnvironmentsDir,
  recordProbes,
  slugOf,
  tmpRoot,
  treeDigest,
  type EntryState,
} from "./cache.js";
import { MANIFEST_VERSION, type Manifest } from "./manifest.js";
import type { BuildOutput } from "./builders/common.js";
import type { ExtractReport, ImportLimits } from "./builders/safe-extract.js";

/**
 * The environments API the runtime, the operations and the CLI use. Builders
 * (and the tar code) are loaded lazily: listing or ensuring a ready
 * environment costs a manifest read and a few lstat calls.
 */

export { DEFAULT_ENVIRONMENT, CATALOG } from "./catalog.js";
export type { Manifest } from "./manifest.js";
export type { EntryState } from "./cache.js";

export interface EnvironmentSummary {
  name: string;
  description: string;
  kind: "catalog" | "import";
  state: EntryState;
  /** Why the entry is broken; empty otherwise. */
  problems: string[];
  size_bytes: number | null;
  build_seconds: number | null;
  built_at: string | null;
  packages_count: number | null;
  default: boolean;
}

/** Marker a failed `inspect --verify` leaves, so the next pull rebuilds an entry whose quick check still passes. */
const VERIFY_FAILED = "verify-failed.json";

function summarize(name: string, description: string, kind: "catalog" | "import"): EnvironmentSummary & { manifest: Manifest | null } {
  const status = entryStatus(name);
  let state = status.state;
  const problems = [...status.problems];
  const marker = readJsonOrNull<{ problem?: string }>(join(status.paths.dir, VERIFY_FAILED));
  if (state === "ready" && marker) {
    state = "broken";
    problems.push(marker.problem ?? "a previous `inspect --verify` found the rootfs changed");
  }
  const m = status.manifest;
  return {
    name,
    description: m?.description ?? description,
    kind,
    state,
    problems,
    size_bytes: m ? manifestBytes(m) : null,
    build_seconds: m?.build_seconds ?? null,
    built_at: m?.built_at ?? null,
    packages_count: m ? m.packages.length : null,
    default: name === DEFAULT_ENVIRONMENT,
    manifest: m,
  };
}

/** Names of imported environments present in the cache (complete or broken). */
export function importedNames(): string[] {
  return presentSlugs()
    .map(nameOfSlug)
    .filter((n) => isValidEnvironmentName(n) && !catalogEntry(n));
}

type Target = { kind: "catalog"; entry: CatalogEntry } | { kind: "import" };

/** Resolves a name to a catalog entry or an existing import; anything else is unknown_environment listing the valid names. */
function resolveTarget(name: string): Target {
  const entry = catalogEntry(name);
  if (entry) return { kind: "catalog", entry };
  if (isValidEnvironmentName(name) && importedNames().includes(name)) return { kind: "import" };
  throw unknownEnvironment(name, importedNames());
}

/** The catalog, then imports: each with its state, size and build time. */
export function listEnvironments(): EnvironmentSummary[] {
  const out: EnvironmentSummary[] = [];
  for (const e of CATALOG) {
    const { manifest: _m, ...s } = summarize(e.name, e.description, "catalog");
    out.push(s);
  }
  for (const name of importedNames()) {
    const { manifest: _m, ...s } = summarize(name, "imported rootfs", "import");
    out.push(s);
  }
  return out;
}

export interface InspectResult extends EnvironmentSummary {
  slug: string;
  path: string;
  rootfs: string;
  manifest: Manifest | null;
  /** Present when asked for: the rootfs digest recomputed and compared with the manifest. */
  verify: { ok: boolean; expected: string; actual: string; seconds: number } | null;
}

/**
 * One environment in detail. `verify` recomputes the rootfs tree digest
 * (seconds for a Debian tree) and compares it with the manifest; a mismatch
 * marks the entry broken so that the next pull rebuilds it.
 */
export async function inspectEnvironment(name: string, options: { verify?: boolean; signal?: AbortSignal; onProgress?: ProgressListener } = {}): Promise<InspectResult> {
  const target = resolveTarget(name);
  const description = target.kind === "catalog" ? target.entry.description : "imported rootfs";
  const s = summarize(name, description, target.kind);
  const paths = entryPaths(name);
  let verify: InspectResult["verify"] = null;
  if (options.verify && s.manifest && s.state !== "not_pulled") {
    const t0 = performance.now();
    let actual = "unreadable";
    try {
      actual = (await treeDigest(join(paths.dir, s.manifest.artifacts.rootfs.path), options)).digest;
    } catch (error) {
      if (options.signal?.aborted) throw new PyroError("cancelled", "Verification cancelled.");
      actual = `unreadable (${(error as Error).message})`;
    }
    const expected = s.manifest.artifacts.rootfs.digest;
    verify = { ok: actual === expected, expected, actual, seconds: Math.round(performance.now() - t0) / 1000 };
    if (!verify.ok) {
      const problem = `rootfs digest ${actual} differs from the manifest's ${expected}`;
      writeJsonAtomic(join(paths.dir, VERIFY_FAILED), { problem, at: new Date().toISOString() });
      s.state = "broken";
      if (!s.problems.includes(problem)) s.problems.push(problem);
    }
  }
  return { ...s, slug: slugOf(name), path: paths.dir, rootfs: paths.rootfs, verify };
}

export interface PullOptions {
  /** Debian mirror URL (default: the host's apt source for the suite, else deb.debian.org). */
  mirror?: string;
  /** Rebuild even when ready. */
  force?: boolean;
  onProgress?: ProgressListener;
  signal?: AbortSignal;
  /** How long to wait for another process building the same environment (default 60 min). */
  lockTimeoutMs?: number;
}

export interface PullResult {
  name: string;
  slug: string;
  /** Absolute path of the rootfs directory. */
  rootfs: string;
  manifest: Manifest;
  /** True when this call built it; false when it was ready (or another process built it while we waited). */
  built: boolean;
  seconds: number;
}

/** Reports who holds an environment's lock, for the "waiting" progress line. */
function lockHolder(lockPath: string): ProcessIdentity | null {
  const owner = readJsonOrNull<ProcessIdentity>(lockPath);
  return owner && isAlive(owner) ? owner : null;
}

async function lockEntry(name: string, onProgress: ProgressListener, signal: AbortSignal | undefined, timeoutMs: number): Promise<Lock> {
  const { lock } = entryPaths(name);
  const holder = lockHolder(lock);
  if (holder) onProgress({ phase: "wait", message: `waiting for pid ${holder.pid}, which is building ${name}` });
  return acquireLock(lock, { what: `the build of ${name}`, signal, timeoutMs });
}

/** The slug a .tmp directory belongs to: "<slug>.<random>" or "<slug>.old-<time>" (slugs may contain dots, the suffix does not). */
function buildDirSlug(dirName: string): string {
  const i = dirName.lastIndexOf(".");
  return i > 0 ? dirName.slice(0, i) : dirName;
}

/** Under the entry lock nobody else builds this slug: any .tmp directory of it is debris from a killed build. */
function removeDebris(slug: string): { path: string; bytes: number }[] {
  const removed: { path: string; bytes: number }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(tmpRoot());
  } catch {
    return removed;
  }
  for (const n of names) {
    if (buildDirSlug(n) !== slug) continue;
    const p = join(tmpRoot(), n);
    if (mountsUnder(p).length) continue; // never rm -rf across a mount; prune reports it
    const bytes = treeUsage(p).bytes;
    removeTree(p);
    removed.push({ path: p, bytes });
  }
  return removed;
}

/** Mount points at or below a path (a build killed outside its own mount namespace could leave some): never delete across them. */
function mountsUnder(path: string): string[] {
  try {
    return readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[4]?.replace(/\\040/g, " ") ?? "")
      .filter((m) => m === path || m.startsWith(path + "/"));
  } catch {
    return [];
  }
}

/**
 * Builds an environment into the cache unless it is ready (then returns at
 * once). Two concurrent pulls of one environment: one builds under the
 * entry lock, the other waits and reuses the result. Killed at any point,
 * it leaves nothing that looks ready: the build happens under .tmp and is
 * renamed into place complete, manifest written last.
 */
export async function pullEnvironment(name: string, options: PullOptions = {}): Promise<PullResult> {
  const t0 = performance.now();
  const onProgress = options.onProgress ?? noProgress;
  const target = resolveTarget(name);
  const done = (built: boolean): PullResult => {
    const s = entryStatus(name);
    return { name, slug: s.slug, rootfs: s.paths.rootfs, manifest: s.manifest!, built, seconds: Math.round(performance.now() - t0) / 1000 };
  };
  const ready = () => summarize(name, "", target.kind).state === "ready";
  if (target.kind === "import") {
    if (ready() && !options.force) return done(false);
    const m = entryStatus(name).manifest;
    throw new PyroError(ready() ? "invalid_argument" : "environment_not_ready", ready() ? `${name} is imported: it cannot be rebuilt from an archive.` : `The imported environment ${name} is broken and cannot be rebuilt by a pull.`, {
      hint: `Import it again: pyro env import --force ${name} ${m?.source?.path ?? "PATH"}`,
    });
  }
  if (ready() && !options.force) return done(false);
  refuseWhileInUse(name, options.force);

  const lock = await lockEntry(name, onProgress, options.signal, options.lockTimeoutMs ?? 60 * 60_000);
  try {
    if (ready() && !options.force) {
      onProgress({ phase: "finalize", message: `${name} was built by another process` });
      return done(false);
    }
    removeDebris(slugOf(name));
    await buildCatalogEntry(target.entry, options, onProgress);
    return done(true);
  } finally {
    lock.release();
  }
}

async function buildCatalogEntry(entry: CatalogEntry, options: PullOptions, onProgress: ProgressListener): Promise<void> {
  const t0 = performance.now();
  const ctx = { signal: options.signal, onProgress };
  const { checkDisk } = await import("./builders/common.js");
  let releaseEpoch: number | null = null;
  let mirror: string | null = null;
  if (entry.builder === "debian") {
    const { checkMirror, defaultMirror } = await import("./mirror.js");
    mirror = (options.mirror ?? defaultMirror(entry.suite ?? "bookworm")).replace(/\/+$/, "");
    onProgress({ phase: "setup", message: `checking the mirror ${mirror}` });
    releaseEpoch = (await checkMirror(mirror, entry.suite ?? "bookworm")).releaseEpoch;
  }
  // Without root, mmdebstrap writes a tarball that is then extracted: twice the space at the peak.
  const factor = entry.builder === "debian" && process.getuid?.() !== 0 ? 2 : 1;
  checkDisk(environmentsDir(), entry.estimated_disk_bytes * factor, entry.name);
  if (options.signal?.aborted) throw new PyroError("cancelled", "The environment build was cancelled.");

  const dir = makeBuildDir(slugOf(entry.name));
  const rootfs = join(dir, "rootfs");
  try {
    let out: BuildOutput;
    if (entry.builder === "busybox") {
      const { buildBusybox } = await import("./builders/busybox.js");
      out = await buildBusybox(rootfs, ctx);
    } else {
      const { buildDebian } = await import("./builders/debian.js");
      out = await buildDebian(entry, rootfs, { ...ctx, mirror: mirror!, releaseEpoch, workDir: dir });
    }
    await finalizeBuild(dir, entry.name, "catalog", entry.description, out, t0, ctx, { include: [...entry.packages] });
  } catch (error) {
    removeTree(dir);
    throw error;
  }
}

/** Digest, probes, manifest (last, atomically), rename into place. */
async function finalizeBuild(
  dir: string,
  name: string,
  kind: "catalog" | "import",
  description: string,
  out: BuildOutput,
  t0: number,
  ctx: { signal?: AbortSignal | undefined; onProgress: ProgressListener },
  extra: Record<string, unknown> = {},
): Promise<Manifest> {
  const rootfs = join(dir, "rootfs");
  ctx.onProgress({ phase: "digest", message: "computing the rootfs digest" });
  const digest = await treeDigest(rootfs, { signal: ctx.signal, onProgress: ctx.onProgress });
  const manifest: Manifest = {
    name,
    slug: slugOf(name),
    version: MANIFEST_VERSION,
    kind,
    description,
    suite: out.suite,
    mirror: out.mirror,
    variant: out.variant,
    ...extra,
    packages: out.packages,
    artifacts: { rootfs: { type: "dir", path: "rootfs", digest: digest.digest, files: digest.files, bytes: digest.bytes } },
    builder: { ...out.builder, pyro_version: VERSION },
    built_at: new Date().toISOString(),
    build_seconds: Math.round(performance.now() - t0) / 1000,
    probes: recordProbes(rootfs, DEFAULT_PROBES),
  };
  if (ctx.signal?.aborted) throw new PyroError("cancelled", "The environment build was cancelled.");
  ctx.onProgress({ phase: "finalize", message: `${name}: ${digest.files} files, ${digest.bytes} bytes, ${out.packages.length} packages` });
  writeJsonAtomic(join(dir, "manifest.json"), manifest);
  installBuild(dir, name);
  return manifest;
}

export interface ReadyEnvironment {
  name: string;
  slug: string;
  /** Absolute path of the rootfs directory: the namespace driver's read-only lower layer. */
  rootfs: string;
  manifest: Manifest;
}

/** What the runtime calls before starting a sandbox: ready → returned at once (no lock); missing or broken → pulled (with progress). */
/**
 * A ready check is remembered this long per process (keyed by the cache
 * directory too), so a burst of sandboxes on one environment (32 concurrent
 * runs, a busy MCP server) pays for the quick check once, not per sandbox.
 */
const READY_MEMORY_MS = 5_000;
const recentlyReady = new Map<string, { at: number; env: ReadyEnvironment }>();

export async function ensureEnvironment(name: string, options: Omit<PullOptions, "force"> = {}): Promise<ReadyEnvironment> {
  const key = `${cacheDir()}\0${name}`;
  const known = recentlyReady.get(key);
  if (known && Date.now() - known.at < READY_MEMORY_MS) return known.env;
  // Before any entry is read: a cache another user can write may hold an environment of theirs.
  privateEnvironmentsDir();
  const target = resolveTarget(name);
  const s = summarize(name, "", target.kind);
  let env: ReadyEnvironment;
  if (s.state === "ready" && s.manifest) {
    env = { name, slug: slugOf(name), rootfs: entryPaths(name).rootfs, manifest: s.manifest };
  } else {
    const r = await pullEnvironment(name, options);
    env = { name: r.name, slug: r.slug, rootfs: r.rootfs, manifest: r.manifest };
  }
  // As root, sandboxes run as a dedicated uid that must own the tree (src/util/sandbox-user.ts);
  // trees built or imported before that rule, or by a builder that cannot chown, are given to it once.
  privateEnvironmentsDir();
  const owner = sandboxOwner();
  if (owner && !ownedBy(env.rootfs, owner)) await chownTree(env.rootfs, owner, { removeDevices: true, ...(options.signal ? { signal: options.signal } : {}) });
  recentlyReady.set(key, { at: Date.now(), env });
  return env;
}

export interface PruneRemoval {
  path: string;
  kind: "partial" | "broken" | "stale_lock" | "unused";
  name: string | null;
  bytes: number;
}

export interface PruneResult {
  removed: PruneRemoval[];
  /** Entries left alone because another process holds their lock, or a mount sits below them. */
  skipped: { path: string; reason: string }[];
  bytes_freed: number;
}

/** Environments named by VM and task records (stateDir()/{vms,tasks}/ * /record.json): never removed by prune --all. */
/**
 * A forced rebuild or re-import replaces the rootfs that VMs and tasks use as
 * their read-only lower layer: refuse while any record still uses it, rather
 * than change a running workspace's root under it.
 */
function refuseWhileInUse(name: string, replacing: boolean | undefined): void {
  if (!replacing || !referencedEnvironments().has(name)) return;
  throw new PyroError("invalid_state", `${name} is in use by a VM or task; replacing it would change their root filesystem under them.`, {
    hint: "Delete the VMs and tasks that use it (pyro vm list, pyro task list), then try again.",
  });
}

export function referencedEnvironments(): Set<string> {
  const names = new Set<string>();
  for (const kind of ["vms", "tasks"]) {
    const base = join(stateDir(), kind);
    let ids: string[] = [];
    try {
      ids = readdirSync(base);
    } catch {
      continue;
    }
    for (const id of ids) {
      const rec = readJsonOrNull<{ environment?: unknown; spare?: unknown }>(join(base, id, "record.json"));
      // A warm spare never ran anything: it is checked against the environment when taken, and dropped if that changed.
      if (rec && typeof rec.environment === "string" && rec.spare !== true) names.add(rec.environment);
    }
  }
  return names;
}

/**
 * Removes what a killed build or damage left: partial builds under .tmp,
 * broken entries, stale locks; with `all`, also ready entries no VM or task
 * record references. Each slug is handled under its lock, taken without
 * waiting: a build in progress is skipped, never pulled from under.
 */
export async function pruneEnvironments(options: { all?: boolean } = {}): Promise<PruneResult> {
  const removed: PruneRemoval[] = [];
  const skipped: PruneResult["skipped"] = [];
  const slugs = new Set<string>(presentSlugs());
  for (const n of existsSync(tmpRoot()) ? readdirSync(tmpRoot()) : []) slugs.add(buildDirSlug(n));
  for (const n of existsSync(locksDir()) ? readdirSync(locksDir()) : []) if (n.endsWith(".lock")) slugs.add(n.slice(0, -5));
  const referenced = options.all ? referencedEnvironments() : new Set<string>();

  for (const slug of [...slugs].sort()) {
    const name = nameOfSlug(slug);
    const lockPath = join(locksDir(), `${slug}.lock`);
    const stale = existsSync(lockPath) && !lockHolder(lockPath);
    let lock: Lock;
    try {
      lock = await acquireLock(lockPath, { timeoutMs: 0, what: `the lock of ${name}` });
    } catch {
      skipped.push({ path: join(environmentsDir(), slug), reason: "another pyro process is building it" });
      continue;
    }
    try {
      if (stale) removed.push({ path: lockPath, kind: "stale_lock", name, bytes: 0 });
      for (const n of existsSync(tmpRoot()) ? readdirSync(tmpRoot()) : []) {
        if (buildDirSlug(n) === slug && mountsUnder(join(tmpRoot(), n)).length) skipped.push({ path: join(tmpRoot(), n), reason: "a filesystem is mounted below it" });
      }
      for (const r of removeDebris(slug)) removed.push({ ...r, kind: "partial", name });
      const dir = join(environmentsDir(), slug);
      if (!existsSync(dir) || !statSync(dir).isDirectory()) continue;
      const s = summarize(name, "", catalogEntry(name) ? "catalog" : "import");
      const unused = options.all && s.state === "ready" && !referenced.has(name);
      if (s.state === "broken" || unused) {
        if (mountsUnder(dir).length) {
          skipped.push({ path: dir, reason: "a filesystem is mounted below it (a running sandbox?)" });
          continue;
        }
        const bytes = treeUsage(dir).bytes;
        removeTree(dir);
        removed.push({ path: dir, kind: s.state === "broken" ? "broken" : "unused", name, bytes });
      }
    } finally {
      lock.release();
    }
  }
  // VM kernels are shared by environments: the ones no remaining entry refers to go with the last of them.
  const { pruneVmKernels } = await import("./vm/index.js");
  const kernels = await pruneVmKernels();
  for (const r of kernels.removed) removed.push({ ...r, name: null });
  skipped.push(...kernels.skipped);
  return { removed, skipped, bytes_freed: removed.reduce((n, r) => n + r.bytes, 0) };
}

export interface ImportOptions {
  /** Replace an existing import of the same name. */
  force?: boolean;
  limits?: Partial<ImportLimits>;
  onProgress?: ProgressListener;
  signal?: AbortSignal;
}

export interface ImportResult {
  name: string;
  slug: string;
  rootfs: string;
  manifest: Manifest;
  report: ExtractReport;
  warnings: string[];
}

/** `pyro env import NAME PATH`: a checked copy of a rootfs directory or tarball becomes an environment of kind "import". */
export async function importEnvironment(name: string, path: string, options: ImportOptions = {}): Promise<ImportResult> {
  const t0 = performance.now();
  const onProgress = options.onProgress ?? noProgress;
  assertValidEnvironmentName(name);
  if (catalogEntry(name)) {
    throw new PyroError("invalid_argument", `"${name}" is a catalog environment; an import needs a name of its own.`, { hint: `Pick another name, e.g. "${name.replace(/[:.]/g, "-")}-custom".` });
  }
  const { importTree, sourceType } = await import("./builders/import.js");
  const type = sourceType(path);
  const { checkDisk } = await import("./builders/common.js");
  const size = type === "dir" ? treeUsage(path).bytes : statSync(path).size * 4;
  checkDisk(environmentsDir(), size + 16 * 1024 * 1024, `the import of ${path}`);

  const lock = await lockEntry(name, onProgress, options.signal, 60 * 60_000);
  try {
    refuseWhileInUse(name, options.force && existsSync(entryPaths(name).dir));
    if (existsSync(entryPaths(name).dir) && !options.force) {
      throw new PyroError("invalid_argument", `An environment named "${name}" is already imported.`, { hint: `Use --force to replace it, or \`pyro env prune\`/another name.` });
    }
    removeDebris(slugOf(name));
    const dir = makeBuildDir(slugOf(name));
    try {
      const out = await importTree(path, join(dir, "rootfs"), { signal: options.signal, onProgress, ...(options.limits ? { limits: options.limits } : {}) });
      const manifest = await finalizeBuild(dir, name, "import", `imported from ${out.source.path}`, out, t0, { signal: options.signal, onProgress }, { source: out.source });
      const p = entryPaths(name);
      return { name, slug: slugOf(name), rootfs: p.rootfs, manifest, report: out.report, warnings: out.warnings };
    } catch (error) {
      removeTree(dir);
      throw error;
    }
  } finally {
    lock.release();
  }
}
