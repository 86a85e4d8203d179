import * as z from "zod";
import { cacheDir } from "../util/paths.js";
import { parseArgs } from "./parse.js";
import type { ProgressListener } from "../util/progress.js";
import { ManifestSchema } from "../environments/manifest.js";
import { importEnvironment, inspectEnvironment, listEnvironments, pruneEnvironments, pullEnvironment } from "../environments/index.js";

export { parseArgs };

/**
 * The environment operations: one zod schema for the arguments and one for
 * the result of each, shared by the CLI (--json output), the SDK and MCP.
 * Fields are snake_case on the wire. Each operation parses its arguments
 * (unknown fields are an error, so a typo never passes silently).
 */

/** Things a caller passes that are not data: progress and cancellation. */
export interface OperationContext {
  onProgress?: ProgressListener;
  signal?: AbortSignal;
}

const environmentName = z.string().min(1).max(64).describe('An environment name, e.g. "debian:12" or "busybox" (see env list).');
const stateEnum = z.enum(["not_pulled", "ready", "broken"]);
const kindEnum = z.enum(["catalog", "import"]);

export const EnvSummarySchema = z.strictObject({
  name: z.string(),
  description: z.string(),
  kind: kindEnum,
  state: stateEnum,
  problems: z.array(z.string()),
  size_bytes: z.number().int().nullable(),
  build_seconds: z.number().nullable(),
  built_at: z.string().nullable(),
  packages_count: z.number().int().nullable(),
  default: z.boolean(),
});

// env list
export const EnvListArgsSchema = z.strictObject({});
export const EnvListResultSchema = z.strictObject({
  environments: z.array(EnvSummarySchema),
  cache_dir: z.string(),
});
export type EnvListArgs = z.infer<typeof EnvListArgsSchema>;
export type EnvListResult = z.infer<typeof EnvListResultSchema>;

export async function envList(args: EnvListArgs = {}): Promise<EnvListResult> {
  parseArgs(EnvListArgsSchema, args, "env list");
  return { environments: listEnvironments(), cache_dir: cacheDir() };
}

// env pull
export const EnvPullArgsSchema = z.strictObject({
  environment: environmentName,
  mirror: z
    .string()
    .regex(/^(https?|file):\/\/\S+$/, "must be an http://, https:// or file:// URL")
    .optional()
    .describe("Debian mirror URL; default: the host's apt source for the suite, else http://deb.debian.org/debian."),
  force: z.boolean().optional().describe("Rebuild even when the environment is ready."),
});
export const EnvPullResultSchema = z.strictObject({
  name: z.string(),
  state: z.literal("ready"),
  built: z.boolean().describe("True when this call built it; false when it was already ready or another process built it."),
  seconds: z.number(),
  rootfs: z.string(),
  size_bytes: z.number().int(),
  files: z.number().int(),
  packages_count: z.number().int(),
  digest: z.string(),
  build_seconds: z.number(),
  built_at: z.string(),
});
export type EnvPullArgs = z.infer<typeof EnvPullArgsSchema>;
export type EnvPullResult = z.infer<typeof EnvPullResultSchema>;

export async function envPull(args: EnvPullArgs, ctx: OperationContext = {}): Promise<EnvPullResult> {
  const a = parseArgs(EnvPullArgsSchema, args, "env pull");
  const r = await pullEnvironment(a.environment, { mirror: a.mirror, force: a.force, onProgress: ctx.onProgress, signal: ctx.signal });
  const rootfs = r.manifest.artifacts.rootfs;
  return {
    name: r.name,
    state: "ready",
    built: r.built,
    seconds: r.seconds,
    rootfs: r.rootfs,
    size_bytes: rootfs.bytes,
    files: rootfs.files,
    packages_count: r.manifest.packages.length,
    digest: rootfs.digest,
    build_seconds: r.manifest.build_seconds,
    built_at: r.manifest.built_at,
  };
}

// env inspect
export const EnvInspectArgsSchema = z.strictObject({
  environment: environmentName,
  verify: z.boolean().optional().describe("Recompute the rootfs digest and compare it with the manifest (seconds)."),
});
export const EnvInspectResultSchema = EnvSummarySchema.extend({
  slug: z.string(),
  path: z.string(),
  rootfs: z.string(),
  manifest: ManifestSchema.nullable(),
  verify: z.strictObject({ ok: z.boolean(), expected: z.string(), actual: z.string(), seconds: z.number() }).nullable(),
});
export type EnvInspectArgs = z.infer<typeof EnvInspectArgsSchema>;
export type EnvInspectResult = z.infer<typeof EnvInspectResultSchema>;

export async function envInspect(args: EnvInspectArgs, ctx: OperationContext = {}): Promise<EnvInspectResult> {
  const a = parseArgs(EnvInspectArgsSchema, args, "env inspect");
  return inspectEnvironment(a.environment, { verify: a.verify, onProgress: ctx.onProgress, signal: ctx.signal });
}

// env prune
export const EnvPruneArgsSchema = z.strictObject({
  all: z.boolean().optional().describe("Also remove ready environments that no VM or task uses."),
});
export const EnvPruneResultSchema = z.strictObject({
  removed: z.array(
    z.strictObject({
      path: z.string(),
      kind: z.enum(["partial", "broken", "stale_lock", "unused"]),
      name: z.string().nullable(),
      bytes: z.number().int(),
    }),
  ),
  skipped: z.array(z.strictObject({ path: z.string(), reason: z.string() })),
  bytes_freed: z.number().int(),
});
export type EnvPruneArgs = z.infer<typeof EnvPruneArgsSchema>;
export type EnvPruneResult = z.infer<typeof EnvPruneResultSchema>;

export async function envPrune(args: EnvPruneArgs = {}): Promise<EnvPruneResult> {
  const a = parseArgs(EnvPruneArgsSchema, args, "env prune");
  return pruneEnvironments({ all: a.all });
}

// env import
export const EnvImportArgsSchema = z.strictObject({
  name: environmentName,
  path: z.string().min(1).describe("A rootfs directory, or a .tar, .tar.gz or .tgz file, on the host."),
  force: z.boolean().optional().describe("Replace an existing import of the same name."),
});
export const EnvImportResultSchema = z.strictObject({
  name: z.string(),
  kind: z.literal("import"),
  state: z.literal("ready"),
  rootfs: z.string(),
  size_bytes: z.number().int(),
  files: z.number().int(),
  packages_count: z.number().int(),
  digest: z.string(),
  skipped: z.array(z.strictObject({ path: z.string(), type: z.string() })),
  setid_dropped: z.array(z.string()),
  warnings: z.array(z.string()),
});
export type EnvImportArgs = z.infer<typeof EnvImportArgsSchema>;
export type EnvImportResult = z.infer<typeof EnvImportResultSchema>;

export async function envImport(args: EnvImportArgs, ctx: OperationContext = {}): Promise<EnvImportResult> {
  const a = parseArgs(EnvImportArgsSchema, args, "env import");
  const r = await importEnvironment(a.name, a.path, { force: a.force, onProgress: ctx.onProgress, signal: ctx.signal });
  const rootfs = r.manifest.artifacts.rootfs;
  return {
    name: r.name,
    kind: "import",
    state: "ready",
    rootfs: r.rootfs,
    size_bytes: rootfs.bytes,
    files: rootfs.files,
    packages_count: r.manifest.packages.length,
    digest: rootfs.digest,
    skipped: r.report.skipped,
    setid_dropped: r.report.setid_dropped,
    warnings: r.warnings,
  };
}
