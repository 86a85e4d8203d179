import { chmodSync, existsSync, lstatSync, readdirSync, readlinkSync, renameSync, openSync, fsyncSync, closeSync, statSync, mkdtempSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { cacheDir } from "../util/paths.js";
import { refuseSharedDir } from "../util/private-dir.js";
import { fileSha256Hex } from "../util/file-sha256.js";
import { ensureDir, readJsonOrNull, removeTree } from "../util/fsutil.js";
import { parseManifest, type Manifest, type Probe } from "./manifest.js";
import type { ProgressListener } from "../util/progress.js";

/**
 * The on-disk cache of environments:
 *
 *   <cacheDir>/environments/
 *     <slug>/manifest.json     written last, atomically: "this entry is complete"
 *     <slug>/rootfs/           the tree (the namespace driver's read-only lower layer)
 *     <slug>/rootfs.ext4 ...   room for VM drivers' artifacts, listed in the manifest
 *     .tmp/<slug>.<random>/    builds in progress (or left by a killed build)
 *     .locks/<slug>.lock       one lock per environment (pid + start time)
 *
 * An entry only ever appears under its final name complete (rename of a
 * finished build directory), so a crash at any point leaves either the old
 * entry, nothing, or debris under .tmp that `prune` removes.
 */

export type EntryState = "not_pulled" | "ready" | "broken";

export function environmentsDir(): string {
  return join(cacheDir(), "environments");
}
/**
 * Makes the environments directory private to its owner (mode 700) and
 * returns it. Trees there may hold set-id binaries of the uid sandboxes run
 * as, and no one but pyro needs to reach them: bwrap gets each tree bound by
 * its own user (or, as root, by `pyro-agent launch`), never by path from
 * another account.
 */
export function privateEnvironmentsDir(): string {
  const dir = environmentsDir();
  ensureDir(dir, 0o700);
  // Another user's cache may hold an environment of theirs, which a root pyro would boot and hand to the sandbox uid with its set-id bits.
  refuseSharedDir(cacheDir(), "cache directory", { rootSticky: true, hint: CACHE_HINT });
  try {
    const st = statSync(dir);
    if ((st.mode & 0o077) !== 0 && st.uid === process.getuid?.()) chmodSync(dir, 0o700);
  } catch {
    /* made just now, or not ours: refused below */
  }
  refuseSharedDir(dir, "environments directory", { hint: CACHE_HINT });
  return dir;
}
const CACHE_HINT = "Use a cache directory only you can write: remove this one, or set PYRO_CACHE_DIR to a directory of your own (mode 700).";

export function tmpRoot(): string {
  return join(environmentsDir(), ".tmp");
}
export function locksDir(): string {
  return join(environmentsDir(), ".locks");
}

/** Names never contain "_" (see catalog.ts), so ":" → "_" is reversible and safe in a path. */
export function slugOf(name: string): string {
  return name.replace(":", "_");
}
export function nameOfSlug(slug: string): string {
  return slug.replace("_", ":");
}

export interface EntryPaths {
  dir: string;
  manifest: string;
  rootfs: string;
  lock: string;
}

export function entryPaths(name: string): EntryPaths {
  const slug = slugOf(name);
  const dir = join(environmentsDir(), slug);
  return { dir, manifest: join(dir, "manifest.json"), rootfs: join(dir, "rootfs"), lock: join(locksDir(), `${slug}.lock`) };
}

/** Slugs of every entry directory present (complete or not), excluding cache-internal dot directories. */
export function presentSlugs(): string[] {
  try {
    return readdirSync(environmentsDir(), { withFileTypes: true })
      .filter((d) => d.isDirectory() && !d.name.startsWith("."))
      .map((d) => d.name)
      .sort();
  } catch {
    return [];
  }
}

export interface EntryStatus {
  name: string;
  slug: string;
  state: EntryState;
  /** Why the entry is broken (empty when ready or not pulled). */
  problems: string[];
  manifest: Manifest | null;
  paths: EntryPaths;
}

/**
 * The quick state check, cheap enough for every `list` and every sandbox
 * start (a manifest read and a few lstat calls): the manifest parses and
 * names this entry, every artifact exists with its recorded size, the probe
 * files resolve to the recorded targets and sizes, and the rootfs has the
 * recorded number of top-level entries. The full check is `verifyEntry`.
 */
export function entryStatus(name: string): EntryStatus {
  const paths = entryPaths(name);
  const slug = slugOf(name);
  const base = { name, slug, paths };
  if (!existsSync(paths.dir)) return { ...base, state: "not_pulled", problems: [], manifest: null };
  const problems: string[] = [];
  const raw = readJsonOrNull<unknown>(paths.manifest);
  if (raw === null) {
    problems.push(existsSync(paths.manifest) ? "manifest.json is unreadable or torn" : "manifest.json is missing");
    return { ...base, state: "broken", problems, manifest: null };
  }
  const parsed = parseManifest(raw);
  if (!parsed.manifest) {
    problems.push(`manifest.json is not a valid manifest (${parsed.error})`);
    return { ...base, state: "broken", problems, manifest: null };
  }
  const manifest = parsed.manifest;
  if (manifest.name !== name || manifest.slug !== slug) problems.push(`manifest.json names "${manifest.name}", not "${name}"`);
  for (const [key, artifact] of Object.entries(manifest.artifacts)) {
    if (!artifact) continue;
    const p = join(paths.dir, artifact.path);
    let st;
    try {
      st = lstatSync(p);
    } catch {
      problems.push(`artifact ${key} (${artifact.path}) is missing`);
      continue;
    }
    if (artifact.type === "dir" && !st.isDirectory()) problems.push(`artifact ${key} (${artifact.path}) is not a directory`);
    if (artifact.type === "file" && (!st.isFile() || st.size !== artifact.bytes)) {
      problems.push(`artifact ${key} (${artifact.path}) has ${st.isFile() ? st.size : "no"} bytes, expected ${artifact.bytes}`);
    }
  }
  const rootfs = join(paths.dir, manifest.artifacts.rootfs.path);
  if (problems.length === 0) {
    for (const probe of manifest.probes.files) {
      const problem = checkProbe(rootfs, probe);
      if (problem) problems.push(problem);
    }
    let top = -1;
    try {
      top = readdirSync(rootfs).length;
    } catch {
      /* reported below */
    }
    if (top !== manifest.probes.top_level_entries) {
      problems.push(`rootfs has ${top < 0 ? "no readable" : top} top-level entries, expected ${manifest.probes.top_level_entries}`);
    }
  }
  return { ...base, state: problems.length ? "broken" : "ready", problems, manifest };
}

function checkProbe(rootfs: string, probe: Probe): string | null {
  const resolved = resolveInRoot(rootfs, probe.path);
  if (resolved === null) return `${probe.path} is missing from the rootfs`;
  if (resolved !== probe.resolved) return `${probe.path} now resolves to ${resolved}, expected ${probe.resolved}`;
  try {
    const st = lstatSync(join(rootfs, resolved));
    if (st.size !== probe.size) return `${probe.resolved} has ${st.size} bytes, expected ${probe.size}`;
  } catch {
    return `${probe.resolved} is missing from the rootfs`;
  }
  return null;
}

/**
 * Resolves a path the way the sandbox will see it: symlinks (absolute or
 * relative) are followed inside `root`, never out of it, as a chroot would.
 * Returns the resolved absolute in-root path, or null when it does not exist
 * (or loops).
 */
export function resolveInRoot(root: string, path: string): string | null {
  let pending = path.split("/").filter((c) => c && c !== ".");
  let current: string[] = [];
  let hops = 0;
  while (pending.length) {
    const name = pending.shift()!;
    if (name === "..") {
      current.pop();
      continue;
    }
    const candidate = [...current, name];
    let st;
    try {
      st = lstatSync(join(root, ...candidate));
    } catch {
      return null;
    }
    if (st.isSymbolicLink()) {
      if (++hops > 40) return null;
      const target = readlinkSync(join(root, ...candidate));
      const parts = target.split("/").filter((c) => c && c !== ".");
      if (target.startsWith("/")) current = [];
      pending = [...parts, ...pending];
      continue;
    }
    if (pending.length && !st.isDirectory()) return null;
    current = candidate;
  }
  return "/" + current.join("/");
}

/** Records the probe files of a finished rootfs (those of `paths` that exist). */
export function recordProbes(rootfs: string, paths: readonly string[]): { top_level_entries: number; files: Probe[] } {
  const files: Probe[] = [];
  for (const path of paths) {
    const resolved = resolveInRoot(rootfs, path);
    if (resolved === null) continue;
    const st = lstatSync(join(rootfs, resolved));
    files.push({ path, resolved, size: st.size });
  }
  return { top_level_entries: readdirSync(rootfs).length, files };
}

/** The probe files every rootfs is checked by, when present. */
export const DEFAULT_PROBES = ["/bin/sh", "/etc/os-release", "/var/lib/dpkg/status", "/bin/busybox", "/usr/bin/env"] as const;

export interface TreeDigest {
  digest: string;
  files: number;
  bytes: number;
}

interface WalkEntry {
  rel: string;
  abs: string;
  type: string;
  mode: number;
  size: number;
  rdev: number;
}

function typeChar(st: ReturnType<typeof lstatSync> & object): string {
  if (st.isDirectory()) return "d";
  if (st.isFile()) return "f";
  if (st.isSymbolicLink()) return "l";
  if (st.isCharacterDevice()) return "c";
  if (st.isBlockDevice()) return "b";
  if (st.isFIFO()) return "p";
  return "s";
}

/**
 * The digest of a tree: sha256 over one record per entry, in sorted path
 * order: path, type, permission bits (incl. set-id and sticky), size, and the
 * content's sha256 (files) or target (symlinks). Owners and times are left
 * out on purpose: the tree is single-uid by construction and mtimes change
 * with every build, while what a sandbox sees does not.
 */
export async function treeDigest(root: string, options: { signal?: AbortSignal; onProgress?: ProgressListener } = {}): Promise<TreeDigest> {
  const entries: WalkEntry[] = [];
  const walk = (dir: string, rel: string) => {
    const names = readdirSync(dir).sort();
    for (const name of names) {
      const abs = join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(abs);
      const type = typeChar(st);
      entries.push({ rel: r, abs, type, mode: st.mode & 0o7777, size: type === "f" ? st.size : 0, rdev: st.rdev });
      if (type === "d") walk(abs, r);
    }
  };
  const rootSt = statSync(root);
  entries.push({ rel: ".", abs: root, type: "d", mode: rootSt.mode & 0o7777, size: 0, rdev: 0 });
  walk(root, "");
  const totalBytes = entries.reduce((n, e) => n + e.size, 0);
  const outer = createHash("sha256");
  const buffer = Buffer.allocUnsafe(1 << 20);
  let done = 0;
  let files = 0;
  let lastYield = Date.now();
  for (const e of entries) {
    let extra = "";
    if (e.type === "f") {
      extra = fileSha256Hex(e.abs, buffer);
      done += e.size;
    } else if (e.type === "l") {
      extra = readlinkSync(e.abs);
    } else if (e.type === "c" || e.type === "b") {
      extra = String(e.rdev);
    }
    if (e.type !== "d") files++;
    outer.update(`${e.rel}\0${e.type}\0${e.mode.toString(8)}\0${e.size}\0${extra}\n`);
    if (Date.now() - lastYield > 50) {
      // Let timers (progress bars, abort signals) run during a long digest.
      await new Promise((r) => setImmediate(r));
      lastYield = Date.now();
      if (options.signal?.aborted) throw options.signal.reason ?? new Error("aborted");
      options.onProgress?.({ phase: "digest", message: "computing the rootfs digest", current: done, total: totalBytes });
    }
  }
  return { digest: `sha256:${outer.digest("hex")}`, files, bytes: totalBytes };
}

/** A fresh build directory under .tmp, named after the slug so prune can tell whose it was. */
export function makeBuildDir(slug: string): string {
  privateEnvironmentsDir();
  ensureDir(tmpRoot());
  const dir = mkdtempSync(join(tmpRoot(), `${slug}.`));
  chmodSync(dir, 0o755); // mkdtemp makes 0700; entries are the usual 755 inside the private environments directory
  return dir;
}

function fsyncDir(path: string): void {
  try {
    const fd = openSync(path, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    /* best effort: some filesystems refuse fsync on directories */
  }
}

/**
 * Moves a finished build directory (manifest already written) into its final
 * place. An existing entry (broken, or being replaced by --force) is first
 * renamed aside into .tmp and removed afterwards, so there is never a moment
 * where the final name holds a half-copied tree. Caller holds the entry lock.
 */
export function installBuild(buildDir: string, name: string): void {
  const { dir } = entryPaths(name);
  privateEnvironmentsDir();
  let aside: string | null = null;
  if (existsSync(dir)) {
    aside = join(tmpRoot(), `${slugOf(name)}.old-${Date.now().toString(36)}`);
    renameSync(dir, aside);
  }
  renameSync(buildDir, dir);
  fsyncDir(environmentsDir());
  if (aside) removeTree(aside);
}

/** Sum of the artifacts' recorded sizes: what `list` shows, without walking the tree. */
export function manifestBytes(manifest: Manifest): number {
  return Object.values(manifest.artifacts).reduce((n, a) => n + (a?.bytes ?? 0), 0);
}
