import * as z from "zod";

/**
 * The manifest of one cache entry (`environments/<slug>/manifest.json`). It is
 * written last and atomically: its presence is the "this entry is complete"
 * marker, and its contents are what `inspect` checks the files against.
 *
 * Objects are loose (unknown keys are kept) so that a manifest written by a
 * newer pyro (which may add artifacts or fields) still reads in an older one.
 */
export const MANIFEST_VERSION = 1;

const sha256 = z.string().regex(/^sha256:[0-9a-f]{64}$/, "expected sha256:<64 hex digits>");

/** A directory tree (the rootfs): its digest covers paths, types, modes, sizes and contents. */
export const DirArtifactSchema = z.looseObject({
  type: z.literal("dir"),
  /** Relative to the entry directory. */
  path: z.string().min(1),
  digest: sha256,
  files: z.number().int().nonnegative(),
  bytes: z.number().int().nonnegative(),
});

/** A single file (rootfs.ext4, vmlinuz, initrd.img: added later by VM drivers). */
export const FileArtifactSchema = z.looseObject({
  type: z.literal("file"),
  path: z.string().min(1),
  sha256,
  bytes: z.number().int().nonnegative(),
});

export const ArtifactSchema = z.discriminatedUnion("type", [DirArtifactSchema, FileArtifactSchema]);

export const ArtifactsSchema = z
  .looseObject({
    rootfs: DirArtifactSchema,
    "rootfs.ext4": FileArtifactSchema.optional(),
    vmlinuz: FileArtifactSchema.optional(),
    "initrd.img": FileArtifactSchema.optional(),
  })
  .catchall(ArtifactSchema);

export const PackageSchema = z.strictObject({ name: z.string().min(1), version: z.string() });

/** A file whose size is recorded at build time and checked cheaply on every state check. */
export const ProbeSchema = z.strictObject({
  /** As asked for, e.g. "/bin/sh". */
  path: z.string(),
  /** After following symlinks inside the rootfs, e.g. "/usr/bin/dash". */
  resolved: z.string(),
  size: z.number().int().nonnegative(),
});

/**
 * The VM artifacts of an entry (src/environments/vm/), added on first VM use
 * and rebuilt when a digest, the agent or the rootfs changes. Kept out of
 * `artifacts` on purpose: a damaged image must cost a rebuild of the image,
 * not make the whole entry "broken" (an import could not be rebuilt at all).
 */
export const VmRecordSchema = z.looseObject({
  /** Shared by environments: <cacheDir>/kernels/<dir>/ (see vm/store.ts). */
  kernel: z.looseObject({
    dir: z.string().regex(/^[A-Za-z0-9.+~_-]+$/),
    package: z.string(),
    package_version: z.string(),
    release: z.string(),
    arch: z.string(),
    sha256,
  }),
  initramfs: z.looseObject({
    path: z.literal("initrd.img"),
    sha256,
    bytes: z.number().int().nonnegative(),
    modules: z.array(z.string()),
    agent_sha256: sha256,
    kernel_sha256: sha256,
  }),
  rootfs_image: z.looseObject({
    path: z.literal("rootfs.ext4"),
    sha256,
    bytes: z.number().int().nonnegative(),
    size_mib: z.number().int().positive(),
    /** The rootfs digest it was made from. */
    rootfs_digest: sha256,
    /** The host owner that became 0:0 in the image. */
    mapped_from: z.looseObject({ uid: z.number().int().nonnegative(), gid: z.number().int().nonnegative() }),
  }),
  built_at: z.string(),
});
export type VmRecord = z.infer<typeof VmRecordSchema>;

export const ManifestSchema = z.looseObject({
  name: z.string().min(1),
  slug: z.string().min(1),
  version: z.literal(MANIFEST_VERSION),
  kind: z.enum(["catalog", "import"]),
  description: z.string().optional(),
  suite: z.string().nullable(),
  mirror: z.string().nullable(),
  variant: z.string().nullable(),
  packages: z.array(PackageSchema),
  artifacts: ArtifactsSchema,
  builder: z.looseObject({
    tool: z.string(),
    version: z.string(),
    pyro_version: z.string(),
  }),
  /** For imports: where the tree came from. */
  source: z.looseObject({ path: z.string(), type: z.enum(["dir", "tar"]) }).optional(),
  built_at: z.string(),
  build_seconds: z.number().nonnegative(),
  probes: z.looseObject({
    top_level_entries: z.number().int().nonnegative(),
    files: z.array(ProbeSchema),
  }),
  /** Checked on its own (VmRecordSchema) by the VM code: a bad one means "rebuild the VM artifacts", never "entry broken". */
  vm: z.unknown().optional(),
});

export type Manifest = z.infer<typeof ManifestSchema>;
export type DirArtifact = z.infer<typeof DirArtifactSchema>;
export type FileArtifact = z.infer<typeof FileArtifactSchema>;
export type PackageInfo = z.infer<typeof PackageSchema>;
export type Probe = z.infer<typeof ProbeSchema>;

/** Parses a manifest, returning null with the reason when it is not one (torn, foreign, older schema). */
export function parseManifest(value: unknown): { manifest: Manifest; error: null } | { manifest: null; error: string } {
  const r = ManifestSchema.safeParse(value);
  if (r.success) return { manifest: r.data, error: null };
  const first = r.error.issues[0];
  return { manifest: null, error: first ? `${first.path.join(".") || "(root)"}: ${first.message}` : "invalid manifest" };
}

/**
 * Installed packages from a dpkg status file (`var/lib/dpkg/status`): every
 * stanza whose Status ends in "installed", sorted by name. Parsed here rather
 * than with dpkg-query so that it works on any host and any rootfs.
 */
export function parseDpkgStatus(text: string): { name: string; version: string }[] {
  const out: { name: string; version: string }[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    let name = "";
    let version = "";
    let status = "";
    for (const line of stanza.split("\n")) {
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
      if (!m) continue;
      const key = m[1]!.toLowerCase();
      if (key === "package") name = m[2]!.trim();
      else if (key === "version") version = m[2]!.trim();
      else if (key === "status") status = m[2]!.trim();
    }
    if (!name || !/\binstalled$/.test(status) || /\bnot-installed$/.test(status)) continue;
    out.push({ name, version });
  }
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return out;
}
