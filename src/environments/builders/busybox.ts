import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readSync, readdirSync, symlinkSync, lstatSync } from "node:fs";
import { join, dirname } from "node:path";
import { PyroError } from "../../core/errors.js";
import { ensureDir, removeTree } from "../../util/fsutil.js";
import { applyRootfsFixups, captureOutput, runTool, testBuildDelay, throwIfAborted, writeInRoot, type BuildContext, type BuildOutput } from "./common.js";

/**
 * The `busybox` environment: one static busybox and a symlink per applet.
 * Built offline in about a second from Debian's busybox-static: the host's
 * binary when it is static, else the package fetched with `apt-get download`
 * (from the host's configured mirror) and unpacked with `dpkg-deb -x`.
 */

/** What the ELF header says about a file: whether it is ELF at all, and whether it needs a program interpreter (ld.so). */
export function elfInfo(path: string): { elf: boolean; static: boolean } {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return { elf: false, static: false };
  }
  try {
    const h = Buffer.alloc(64);
    if (readSync(fd, h, 0, 64, 0) < 52 || h.readUInt32BE(0) !== 0x7f454c46) return { elf: false, static: false };
    const is64 = h[4] === 2;
    const le = h[5] === 1;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const u64 = (b: Buffer, o: number) => Number(le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o));
    const phoff = is64 ? u64(h, 32) : u32(h, 28);
    const phentsize = u16(h, is64 ? 54 : 42);
    const phnum = u16(h, is64 ? 56 : 44);
    if (phentsize < (is64 ? 56 : 32) || phnum > 4096) return { elf: true, static: false };
    const ph = Buffer.alloc(phentsize * phnum);
    if (readSync(fd, ph, 0, ph.length, phoff) < ph.length) return { elf: true, static: false };
    for (let i = 0; i < phnum; i++) {
      const PT_INTERP = 3;
      if (u32(ph, i * phentsize) === PT_INTERP) return { elf: true, static: false };
    }
    return { elf: true, static: true };
  } finally {
    closeSync(fd);
  }
}

/** Parses busybox's banner ("BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary."). */
export function parseBusyboxBanner(text: string): { upstream: string; debian: string | null } | null {
  const m = /BusyBox v(\S+)(?: \(Debian ([^)]+)\))?/.exec(text);
  return m ? { upstream: m[1]!, debian: m[2] ?? null } : null;
}

/** The host binaries tried first; PYRO_BUSYBOX names another one. */
export function busyboxCandidates(): string[] {
  return [process.env.PYRO_BUSYBOX, "/bin/busybox", "/usr/bin/busybox"].filter((p): p is string => Boolean(p));
}

/** Finds a static busybox: a candidate on the host, else downloads Debian's busybox-static into `workDir`. */
export async function findStaticBusybox(workDir: string, ctx: BuildContext, candidates = busyboxCandidates()): Promise<{ path: string; origin: string }> {
  for (const path of candidates) {
    if (existsSync(path) && elfInfo(path).static) return { path, origin: path };
  }
  ctx.onProgress({ phase: "download", message: "no static busybox on the host: apt-get download busybox-static" });
  ensureDir(workDir);
  try {
    await runTool("apt-get", ["download", "-o", "APT::Sandbox::User=root", "busybox-static"], { cwd: workDir, signal: ctx.signal });
    const deb = readdirSync(workDir).find((f) => /^busybox-static_.*\.deb$/.test(f));
    if (!deb) throw new Error("apt-get download left no busybox-static .deb");
    ctx.onProgress({ phase: "extract", message: `unpacking ${deb}` });
    await runTool("dpkg-deb", ["-x", join(workDir, deb), join(workDir, "x")], { signal: ctx.signal });
    for (const p of ["x/bin/busybox", "x/usr/bin/busybox"]) {
      const full = join(workDir, p);
      if (existsSync(full) && elfInfo(full).static) return { path: full, origin: `busybox-static package (${deb})` };
    }
    throw new Error("the busybox-static package holds no static busybox");
  } catch (error) {
    if (error instanceof PyroError && error.code === "cancelled") throw error;
    throw new PyroError("environment_build_failed", `No static busybox found (looked at ${candidates.join(", ")}) and fetching Debian's busybox-static failed: ${(error as Error).message}`, {
      hint: "Install it with `apt-get install busybox-static` (or set PYRO_BUSYBOX to a static busybox binary), then run the pull again.",
      cause: error,
    });
  }
}

/** Builds the busybox rootfs into `rootfs` (which must not exist yet). */
export async function buildBusybox(rootfs: string, ctx: BuildContext): Promise<BuildOutput> {
  const work = join(dirname(rootfs), "busybox-download");
  ctx.onProgress({ phase: "setup", message: "looking for a static busybox" });
  const source = await findStaticBusybox(work, ctx);
  throwIfAborted(ctx.signal);
  const listing = await captureOutput(source.path, ["--list-full"]);
  const banner = (await captureOutput(source.path, ["--help"])) ?? "";
  if (listing === null) {
    throw new PyroError("environment_build_failed", `${source.path} does not run (busybox --list-full failed).`, {
      hint: "Install Debian's busybox-static (`apt-get install busybox-static`) or set PYRO_BUSYBOX to a working static busybox.",
    });
  }
  const version = parseBusyboxBanner(banner);
  const applets = listing
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.includes("/") && !l.startsWith("/") && !l.split("/").includes("..") && l !== "bin/busybox");

  ctx.onProgress({ phase: "install", message: `installing busybox and ${applets.length} applets`, current: 0, total: applets.length });
  mkdirSync(rootfs, { mode: 0o755 });
  for (const d of ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "var", "home"]) ensureDir(join(rootfs, d));
  copyFileSync(source.path, join(rootfs, "bin/busybox"));
  chmodSync(join(rootfs, "bin/busybox"), 0o755);
  let done = 0;
  for (const rel of applets) {
    const target = join(rootfs, rel);
    ensureDir(dirname(target));
    try {
      lstatSync(target);
    } catch {
      symlinkSync("/bin/busybox", target);
    }
    if (++done === Math.floor(applets.length / 2)) await testBuildDelay(ctx);
  }
  if (!existsSync(join(rootfs, "bin/sh"))) symlinkSync("/bin/busybox", join(rootfs, "bin/sh"));
  ctx.onProgress({ phase: "install", message: "applets linked", current: applets.length, total: applets.length });

  ctx.onProgress({ phase: "fixup", message: "writing /etc and mountpoints" });
  writeInRoot(rootfs, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
  writeInRoot(rootfs, "etc/group", "root:x:0:\nnogroup:x:65534:\n");
  const v = version?.upstream ?? "unknown";
  writeInRoot(rootfs, "etc/os-release", `NAME="pyro busybox"\nID=busybox\nVERSION_ID="${v}"\nPRETTY_NAME="pyro busybox ${v}"\n`);
  writeInRoot(rootfs, "etc/profile", "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
  applyRootfsFixups(rootfs);
  removeTree(work);
  return {
    suite: null,
    mirror: null,
    variant: null,
    packages: [{ name: version?.debian ? "busybox-static" : "busybox", version: version?.debian ?? v }],
    builder: { tool: "pyro-busybox", version: `busybox ${v} from ${source.origin}` },
  };
}
