import type { Command } from "commander";
import { action, emit, formatBytes } from "./common.js";
import { PyroError } from "../core/errors.js";
import type { EnvImportResult, EnvInspectResult, EnvListResult, EnvPruneResult, EnvPullResult } from "../operations/env.js";

/**
 * `pyro env list|pull|inspect|prune|import`. Operations (and through them
 * zod, builders and tar) are imported inside the actions, so `pyro --help`
 * pays for none of it.
 */

const ops = () => import("../operations/env.js");

/**
 * Runs a long operation with progress and Ctrl-C: SIGINT/SIGTERM abort it
 * (the build subprocess is killed, nothing is left that looks ready), a
 * second signal exits at once. Exits 130 after an interrupt.
 */
async function withProgress<T>(json: boolean, fn: (ctx: { onProgress: (e: import("../util/progress.js").ProgressEvent) => void; signal: AbortSignal }) => Promise<T>): Promise<T | number> {
  const { createProgressRenderer } = await import("./progress.js");
  const renderer = await createProgressRenderer({ json });
  const controller = new AbortController();
  let interrupted: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) process.exit(sig === "SIGINT" ? 130 : 143);
    interrupted = sig;
    controller.abort(new PyroError("cancelled", `Interrupted by ${sig}.`));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    return await fn({ onProgress: renderer.listener, signal: controller.signal });
  } catch (error) {
    if (interrupted) {
      renderer.stop();
      process.stderr.write(`pyro: interrupted; nothing partial was kept (the next pull starts over).\n`);
      if (json) process.stdout.write(JSON.stringify(new PyroError("cancelled", `Interrupted by ${interrupted}.`).toJSON(), null, 2) + "\n");
      return interrupted === "SIGINT" ? 130 : 143;
    }
    throw error;
  } finally {
    renderer.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n");
}

function formatList(r: EnvListResult): string {
  const rows = [["NAME", "STATE", "SIZE", "BUILD", "PACKAGES", "DESCRIPTION"]];
  for (const e of r.environments) {
    rows.push([
      e.name + (e.default ? " *" : ""),
      e.state.replace("_", " "),
      e.size_bytes === null ? "-" : formatBytes(e.size_bytes),
      e.build_seconds === null ? "-" : `${e.build_seconds.toFixed(1)} s`,
      e.packages_count === null ? "-" : String(e.packages_count),
      e.kind === "import" ? `[import] ${e.description}` : e.description,
    ]);
  }
  const broken = r.environments.filter((e) => e.state === "broken");
  const notes = broken.map((e) => `${e.name} is broken (${e.problems.join("; ")}): \`pyro env pull ${e.name}\` rebuilds it.`);
  return [table(rows), "", "* default environment. Cache: " + r.cache_dir, ...notes].join("\n");
}

function formatPull(r: EnvPullResult): string {
  const what = `${r.files} files, ${formatBytes(r.size_bytes)}, ${r.packages_count} packages`;
  return r.built ? `${r.name} is ready: ${what} (built in ${r.build_seconds.toFixed(1)} s).` : `${r.name} is ready: ${what} (already built ${r.built_at}).`;
}

function formatInspect(r: EnvInspectResult): string {
  const m = r.manifest;
  const lines = [
    `name:         ${r.name}${r.default ? " (default)" : ""}`,
    `description:  ${r.description}`,
    `kind:         ${r.kind}`,
    `state:        ${r.state.replace("_", " ")}`,
    `path:         ${r.path}`,
  ];
  for (const p of r.problems) lines.push(`problem:      ${p}`);
  if (m) {
    lines.push(
      `suite:        ${m.suite ?? "-"}${m.variant ? ` (${m.variant})` : ""}`,
      `mirror:       ${m.mirror ?? "-"}`,
      `builder:      ${m.builder.tool} ${m.builder.version} (pyro ${m.builder.pyro_version})`,
      `built:        ${m.built_at} in ${m.build_seconds.toFixed(1)} s`,
      `packages:     ${m.packages.length}${m.packages.length ? ` (${m.packages.slice(0, 6).map((p) => `${p.name} ${p.version}`).join(", ")}${m.packages.length > 6 ? ", ..." : ""})` : ""}`,
    );
    for (const [key, a] of Object.entries(m.artifacts)) {
      if (!a) continue;
      lines.push(`artifact:     ${key}: ${a.type === "dir" ? `${a.files} files, ${formatBytes(a.bytes)}, ${a.digest}` : `${formatBytes(a.bytes)}, ${a.sha256}`}`);
    }
  }
  if (r.verify) lines.push(`verify:       ${r.verify.ok ? "ok" : "FAILED"} (${r.verify.seconds.toFixed(1)} s)${r.verify.ok ? "" : `: expected ${r.verify.expected}, found ${r.verify.actual}`}`);
  else if (m) lines.push("verify:       not run (--verify recomputes the rootfs digest)");
  return lines.join("\n");
}

function formatPrune(r: EnvPruneResult): string {
  const lines = r.removed.map((x) => `removed ${x.kind.replace("_", " ")}: ${x.path}${x.bytes ? ` (${formatBytes(x.bytes)})` : ""}`);
  for (const s of r.skipped) lines.push(`kept ${s.path}: ${s.reason}`);
  lines.push(r.removed.length ? `Freed ${formatBytes(r.bytes_freed)}.` : "Nothing to remove.");
  return lines.join("\n");
}

function formatImport(r: EnvImportResult): string {
  const lines = [`${r.name} is ready: ${r.files} files, ${formatBytes(r.size_bytes)}, ${r.packages_count} packages (kind: import).`];
  for (const w of r.warnings) lines.push(`note: ${w}`);
  return lines.join("\n");
}

export function registerEnv(program: Command): void {
  const env = program
    .command("env")
    .summary("environments: the root filesystems sandboxes run on")
    .description("Environments: the root filesystems sandboxes run on, built locally from Debian's archive")
    .addHelpText(
      "after",
      `
Catalog: debian:12-base, debian:12 (default), debian:12-build, busybox.
Environments are cached under $PYRO_CACHE_DIR (default ~/.cache/pyro-mcp).

Examples:
  pyro env list                      what is available and what is pulled
  pyro env pull debian:12            build the default environment (~1 min)
  pyro env pull busybox              a tiny environment, offline, ~1 s
  pyro env inspect debian:12 --verify
  pyro env import myroot ./rootfs.tar.gz`,
    );

  env
    .command("list")
    .description("List the catalog and imported environments with their state (not pulled, ready, broken), size and build time")
    .option("--json", "print JSON")
    .action(
      action(async (opts: { json?: boolean }) => {
        const r = await (await ops()).envList({});
        emit(r, Boolean(opts.json), formatList);
      }),
    );

  env
    .command("pull")
    .description("Build an environment into the cache (no-op when it is ready; a broken entry is rebuilt)")
    .argument("<env>", "environment name, e.g. debian:12")
    .option("--mirror <url>", "Debian mirror (default: the host's apt source for the suite, else http://deb.debian.org/debian)")
    .option("--force", "rebuild even if ready")
    .option("--json", "print the result as JSON on stdout, progress as JSON lines on stderr")
    .addHelpText(
      "after",
      `
Builds with mmdebstrap (debootstrap where only that exists) from the mirror,
in a temporary directory renamed into place only when complete: an
interrupted pull leaves nothing half-built. Two pulls of one environment at
once: one builds, the other waits and reuses the result.

Examples:
  pyro env pull debian:12
  pyro env pull debian:12-build --mirror http://ftp.de.debian.org/debian
  pyro env pull busybox --force --json`,
    )
    .action(
      action(async (name: string, opts: { mirror?: string; force?: boolean; json?: boolean }) => {
        const json = Boolean(opts.json);
        const o = await ops();
        const r = await withProgress(json, (ctx) => o.envPull({ environment: name, ...(opts.mirror ? { mirror: opts.mirror } : {}), ...(opts.force ? { force: true } : {}) }, ctx));
        if (typeof r === "number") return r;
        emit(r, json, formatPull);
      }),
    );

  env
    .command("inspect")
    .description("Show an environment's manifest: packages, artifacts, builder; --verify recomputes the rootfs digest")
    .argument("<env>", "environment name")
    .option("--verify", "recompute the rootfs digest and compare it with the manifest (exit 1 when it differs)")
    .option("--json", "print JSON")
    .addHelpText(
      "after",
      `
Without --verify, the state comes from the quick check (manifest, artifacts,
probe files). With it, every file is hashed; a mismatch marks the entry
broken, so the next \`pyro env pull\` rebuilds it.

Examples:
  pyro env inspect debian:12
  pyro env inspect busybox --verify --json`,
    )
    .action(
      action(async (name: string, opts: { verify?: boolean; json?: boolean }) => {
        const json = Boolean(opts.json);
        const o = await ops();
        const r = await withProgress(json, (ctx) => o.envInspect({ environment: name, ...(opts.verify ? { verify: true } : {}) }, ctx));
        if (typeof r === "number") return r;
        emit(r, json, formatInspect);
        if (r.verify && !r.verify.ok) return 1;
      }),
    );

  env
    .command("prune")
    .description("Remove partial builds, broken entries and stale locks (--all: also environments no VM or task uses)")
    .option("--all", "also remove ready environments that no VM or task record references")
    .option("--json", "print JSON")
    .addHelpText(
      "after",
      `
A build in progress (its lock held by a live process) is never touched.

Examples:
  pyro env prune
  pyro env prune --all --json`,
    )
    .action(
      action(async (opts: { all?: boolean; json?: boolean }) => {
        const r = await (await ops()).envPrune(opts.all ? { all: true } : {});
        emit(r, Boolean(opts.json), formatPrune);
      }),
    );

  env
    .command("import")
    .description("Make an environment from a rootfs directory or a .tar/.tar.gz/.tgz (copied, checked entry by entry)")
    .argument("<name>", 'a new environment name: lowercase letters, digits, ".", "-", optional ":tag"')
    .argument("<path>", "a rootfs directory or tarball")
    .option("--force", "replace an existing import of that name")
    .option("--json", "print the result as JSON on stdout, progress as JSON lines on stderr")
    .addHelpText(
      "after",
      `
Rejected, naming the entry: absolute paths, ".." components, entries under a
symlink of the archive, hard links to anything but an earlier file of the
archive, more than 500k entries or 20 GiB (PYRO_IMPORT_MAX_FILES,
PYRO_IMPORT_MAX_BYTES). Device nodes, fifos and sockets are skipped; set-id
bits are dropped. Symlinks are kept as they are and never followed on the host.

Examples:
  pyro env import myproject ./rootfs
  pyro env import alpine:3.20 ./alpine-minirootfs-3.20.0-x86_64.tar.gz`,
    )
    .action(
      action(async (name: string, path: string, opts: { force?: boolean; json?: boolean }) => {
        const json = Boolean(opts.json);
        const o = await ops();
        const r = await withProgress(json, (ctx) => o.envImport({ name, path, ...(opts.force ? { force: true } : {}) }, ctx));
        if (typeof r === "number") return r;
        emit(r, json, formatImport);
      }),
    );
}
