import { PyroError } from "../core/errors.js";

/**
 * The environments pyro knows how to build. Every entry is explicit: suite,
 * variant and package list are written here (never "latest" or a moving tag),
 * so that two builds from the same mirror state give the same rootfs.
 *
 * Names are part of the public contract (docs/environments.md); adding an
 * entry is fine, renaming one is a breaking change.
 */
export interface CatalogEntry {
  name: string;
  description: string;
  /** How it is built: from Debian's archive with mmdebstrap, or from one static busybox. */
  builder: "debian" | "busybox";
  /** Debian suite (codename) for debian entries. */
  suite?: string;
  /** mmdebstrap/debootstrap variant. */
  variant?: "minbase";
  /** Packages added on top of the variant, installed without Recommends. */
  packages: readonly string[];
  /**
   * Disk space a build needs at its peak (rootfs + apt's downloads and lists
   * before cleanup), with headroom. Checked before anything is written.
   */
  estimated_disk_bytes: number;
}

const MiB = 1024 * 1024;

export const DEFAULT_ENVIRONMENT = "debian:12";

export const CATALOG: readonly CatalogEntry[] = [
  {
    name: "debian:12-base",
    description: "Debian 12 (bookworm) minbase: shell, coreutils, apt, dpkg.",
    builder: "debian",
    suite: "bookworm",
    variant: "minbase",
    packages: [],
    estimated_disk_bytes: 450 * MiB,
  },
  {
    name: "debian:12",
    description: "Debian 12 minbase + git, ca-certificates, curl, python3 (the default environment).",
    builder: "debian",
    suite: "bookworm",
    variant: "minbase",
    packages: ["git", "ca-certificates", "curl", "python3"],
    estimated_disk_bytes: 700 * MiB,
  },
  {
    name: "debian:12-build",
    description: "Debian 12 minbase + build-essential, pkg-config, make, python3, git: for compiling.",
    builder: "debian",
    suite: "bookworm",
    variant: "minbase",
    packages: ["build-essential", "pkg-config", "make", "python3", "git"],
    estimated_disk_bytes: 1300 * MiB,
  },
  {
    name: "busybox",
    description: "One static busybox with its applets: builds offline in about a second; for tests and demos.",
    builder: "busybox",
    packages: [],
    estimated_disk_bytes: 8 * MiB,
  },
];

/**
 * Environment names: lowercase letters, digits, "." and "-", with an optional
 * ":tag" of the same characters. No "_" (the cache slug uses it for ":"), no
 * leading "." (cache-internal directories start with one), at most 64 chars.
 */
const NAME_RE = /^[a-z0-9][a-z0-9.-]*(:[a-z0-9][a-z0-9.-]*)?$/;

export function isValidEnvironmentName(name: string): boolean {
  return name.length <= 64 && NAME_RE.test(name) && !name.includes("..");
}

export function assertValidEnvironmentName(name: string): void {
  if (!isValidEnvironmentName(name)) {
    throw new PyroError("invalid_argument", `"${name}" is not a valid environment name.`, {
      hint: 'Use lowercase letters, digits, "." and "-", optionally followed by ":tag" (e.g. "myproject:1"); at most 64 characters.',
    });
  }
}

export function catalogEntry(name: string): CatalogEntry | undefined {
  return CATALOG.find((e) => e.name === name);
}

export function catalogNames(): string[] {
  return CATALOG.map((e) => e.name);
}

/** The error for a name that is neither in the catalog nor imported: it lists every valid name. */
export function unknownEnvironment(name: string, imported: readonly string[] = []): PyroError {
  const valid = [...catalogNames(), ...imported];
  const guess = closestName(name, valid);
  return new PyroError("unknown_environment", `Unknown environment "${name}".${guess ? ` Did you mean "${guess}"?` : ""} Valid environments: ${valid.join(", ")}.`, {
    hint: "Run `pyro env list` to see them, or `pyro env import NAME PATH` to add your own rootfs.",
    details: { name, valid, ...(guess ? { did_you_mean: guess } : {}) },
  });
}

/** Edit distance, small strings only (environment names are at most 64 characters). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

/**
 * The valid name a mistyped one most likely meant: the same letters and
 * digits without the punctuation ("debian12", "Debian-12" for "debian:12"),
 * else the nearest within two edits. null when nothing is close.
 */
export function closestName(name: string, valid: readonly string[]): string | null {
  const bare = (s: string) => s.toLowerCase().replace(/[^a-z0-9]/g, "");
  const same = valid.find((v) => bare(v) === bare(name));
  if (same) return same;
  let best: string | null = null;
  let bestD = 3;
  for (const v of valid) {
    const d = distance(name.toLowerCase(), v);
    if (d < bestD) [best, bestD] = [v, d];
  }
  return best;
}
