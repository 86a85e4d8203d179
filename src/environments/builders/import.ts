import { existsSync, readFileSync, statSync, closeSync, openSync, readSync } from "node:fs";
import { join, resolve } from "node:path";
import { PyroError } from "../../core/errors.js";
import { VERSION } from "../../version.js";
import { parseDpkgStatus } from "../manifest.js";
import { resolveInRoot } from "../cache.js";
import { applyRootfsFixups, type BuildContext, type BuildOutput } from "./common.js";
import { copyTree, extractArchive, type ExtractReport, type ImportLimits } from "./safe-extract.js";

/**
 * `pyro env import NAME PATH`: a rootfs directory or a .tar/.tar.gz/.tgz
 * becomes an environment. The tree is checked entry by entry like any
 * archive that enters the product (see safe-extract.ts) and copied, never
 * moved: the source is left as it was.
 */

export interface ImportOutput extends BuildOutput {
  source: { path: string; type: "dir" | "tar" };
  report: ExtractReport;
  warnings: string[];
}

/** Tells a directory from a tarball; a tarball is recognised by content (ustar magic or gzip), not only by name. */
export function sourceType(path: string): "dir" | "tar" {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new PyroError("invalid_argument", `${path} does not exist.`, { hint: "Pass a rootfs directory or a .tar, .tar.gz or .tgz file." });
  }
  if (st.isDirectory()) return "dir";
  if (!st.isFile()) throw new PyroError("invalid_argument", `${path} is neither a directory nor a file.`);
  const head = Buffer.alloc(263);
  const fd = openSync(path, "r");
  try {
    readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  const gzip = head[0] === 0x1f && head[1] === 0x8b;
  const ustar = head.subarray(257, 262).toString("latin1") === "ustar";
  if (gzip || ustar || /\.(tar|tar\.gz|tgz)$/.test(path)) return "tar";
  throw new PyroError("invalid_argument", `${path} is not a tar archive.`, { hint: "Pass a rootfs directory or a .tar, .tar.gz or .tgz file." });
}

export async function importTree(path: string, rootfs: string, ctx: BuildContext & { limits?: Partial<ImportLimits> }): Promise<ImportOutput> {
  const abs = resolve(path);
  const type = sourceType(abs);
  ctx.onProgress({ phase: "extract", message: `${type === "dir" ? "copying" : "extracting"} ${abs}` });
  const opts = { signal: ctx.signal, onProgress: ctx.onProgress, ...(ctx.limits ? { limits: ctx.limits } : {}) };
  const report = type === "dir" ? await copyTree(abs, rootfs, opts) : await extractArchive(abs, rootfs, opts);

  ctx.onProgress({ phase: "fixup", message: "adding mountpoints, /workspace and /etc/hostname" });
  const warnings: string[] = [];
  const skippedFixups = applyRootfsFixups(rootfs);
  if (skippedFixups.length) warnings.push(`left as imported (a symlink or non-directory is in the way): ${skippedFixups.join(", ")}`);
  if (resolveInRoot(rootfs, "/bin/sh") === null) warnings.push("no /bin/sh: string commands (run through /bin/sh -lc) will not work, argv commands will");
  if (report.skipped.length) warnings.push(`skipped ${report.skipped.length} device node(s)/fifo(s)/socket(s): sandboxes mount their own /dev`);
  if (report.setid_dropped.length) warnings.push(`dropped set-id bits of ${report.setid_dropped.length} file(s)`);

  const status = join(rootfs, "var/lib/dpkg/status");
  let packages = existsSync(status) && resolveInRoot(rootfs, "/var/lib/dpkg/status") === "/var/lib/dpkg/status" ? parseDpkgStatus(readFileSync(status, "utf8")) : [];
  if (packages.length === 0 && resolveInRoot(rootfs, "/bin/busybox") === "/bin/busybox") {
    // Never run an imported binary on the host: read its version string instead.
    const m = /BusyBox v([0-9][\w.-]*)/.exec(readHead(join(rootfs, "bin/busybox"), 8 << 20));
    if (m) packages = [{ name: "busybox", version: m[1]! }];
  }
  return {
    suite: null,
    mirror: null,
    variant: null,
    packages,
    builder: { tool: "pyro-import", version: VERSION },
    source: { path: abs, type },
    report,
    warnings,
  };
}

function readHead(path: string, max: number): string {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(Math.min(max, statSync(path).size));
    const n = readSync(fd, buf, 0, buf.length, 0);
    return buf.subarray(0, n).toString("latin1");
  } finally {
    closeSync(fd);
  }
}
