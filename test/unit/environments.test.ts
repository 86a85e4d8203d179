import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync, existsSync, readdirSync, lstatSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawn } from "node:child_process";

// Every test process gets its own cache and state (cacheDir()/stateDir() read the environment at call time).
const scratch = mkdtempSync(join(tmpdir(), "pyro-unit-env-"));
process.env.PYRO_CACHE_DIR = join(scratch, "cache");
process.env.PYRO_STATE_DIR = join(scratch, "state");

import { CATALOG, DEFAULT_ENVIRONMENT, catalogNames, isValidEnvironmentName, unknownEnvironment } from "../../src/environments/catalog.js";
import { ManifestSchema, parseDpkgStatus, parseManifest, type Manifest } from "../../src/environments/manifest.js";
import { DEFAULT_PROBES, entryPaths, entryStatus, recordProbes, resolveInRoot, slugOf, nameOfSlug, tmpRoot, locksDir, treeDigest } from "../../src/environments/cache.js";
import { parseOneLineSources, parseDeb822Sources, pickMirror, hostSourceEntries, defaultMirror } from "../../src/environments/mirror.js";
import { listEnvironments, inspectEnvironment, pruneEnvironments, pullEnvironment, importEnvironment, ensureEnvironment } from "../../src/environments/index.js";
import { extractArchive, copyTree, entryComponents } from "../../src/environments/builders/safe-extract.js";
import { MmdebstrapProgress, DebootstrapProgress } from "../../src/environments/builders/debian.js";
import { elfInfo, parseBusyboxBanner } from "../../src/environments/builders/busybox.js";
import { PyroError } from "../../src/core/errors.js";
import { writeJsonAtomic } from "../../src/util/fsutil.js";
import { tarball, type TarEntry } from "../helpers/tar.js";

after(() => rmSync(scratch, { recursive: true, force: true }));

let n = 0;
function tmp(prefix: string): string {
  return mkdtempSync(join(scratch, `${prefix}-${n++}-`));
}

/** Makes a small but complete cache entry by hand (what a builder would leave). */
async function makeEntry(name: string, kind: "catalog" | "import" = "catalog"): Promise<Manifest> {
  const { dir, rootfs } = entryPaths(name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(rootfs, "bin"), { recursive: true });
  mkdirSync(join(rootfs, "etc"));
  writeFileSync(join(rootfs, "bin/busybox"), "not really busybox\n");
  symlinkSync("busybox", join(rootfs, "bin/sh"));
  writeFileSync(join(rootfs, "etc/os-release"), "NAME=test\n");
  const d = await treeDigest(rootfs);
  const manifest: Manifest = {
    name,
    slug: slugOf(name),
    version: 1,
    kind,
    suite: null,
    mirror: null,
    variant: null,
    packages: [{ name: "busybox", version: "1.0" }],
    artifacts: { rootfs: { type: "dir", path: "rootfs", digest: d.digest, files: d.files, bytes: d.bytes } },
    builder: { tool: "test", version: "0", pyro_version: "0.0.0" },
    built_at: new Date().toISOString(),
    build_seconds: 0.1,
    probes: recordProbes(rootfs, DEFAULT_PROBES),
  };
  writeJsonAtomic(join(dir, "manifest.json"), manifest);
  return manifest;
}

async function expectRejects(p: Promise<unknown>, code: string, includes?: string): Promise<PyroError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected a PyroError(${code}), got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (includes) assert.ok(e.message.includes(includes), `"${e.message}" should mention "${includes}"`);
    return e;
  }
  assert.fail(`expected a PyroError(${code}), but it resolved`);
}

describe("catalog", () => {
  test("has the four contract names, debian:12 the default", () => {
    assert.deepEqual(catalogNames(), ["debian:12-base", "debian:12", "debian:12-build", "busybox"]);
    assert.equal(DEFAULT_ENVIRONMENT, "debian:12");
    for (const e of CATALOG) {
      assert.ok(e.estimated_disk_bytes > 0, e.name);
      assert.ok(e.description.length > 10, e.name);
      if (e.builder === "debian") assert.equal(e.suite, "bookworm");
    }
    assert.deepEqual(CATALOG.find((e) => e.name === "debian:12")!.packages, ["git", "ca-certificates", "curl", "python3"]);
    assert.deepEqual(CATALOG.find((e) => e.name === "debian:12-base")!.packages, []);
  });

  test("an unknown name lists the valid ones (catalog and imported)", async () => {
    const err = unknownEnvironment("debian:13", ["mine"]);
    assert.equal(err.code, "unknown_environment");
    for (const name of [...catalogNames(), "mine"]) assert.ok(err.message.includes(name), err.message);
    await expectRejects(pullEnvironment("ubuntu:24.04"), "unknown_environment", "debian:12-base");
    await expectRejects(inspectEnvironment("nope"), "unknown_environment", "busybox");
  });

  test("names are validated", () => {
    for (const ok of ["busybox", "debian:12", "my-env.2:v1", "a"]) assert.ok(isValidEnvironmentName(ok), ok);
    for (const bad of ["", "Busybox", "a_b", ".hidden", "a/b", "../x", "a:b:c", "x".repeat(65), "a..b", "-a"]) assert.ok(!isValidEnvironmentName(bad), bad);
    assert.equal(slugOf("debian:12-base"), "debian_12-base");
    assert.equal(nameOfSlug("debian_12-base"), "debian:12-base");
  });
});

describe("manifest", () => {
  const valid = (): Record<string, unknown> => ({
    name: "busybox",
    slug: "busybox",
    version: 1,
    kind: "catalog",
    suite: null,
    mirror: null,
    variant: null,
    packages: [{ name: "busybox-static", version: "1:1.35.0-4" }],
    artifacts: { rootfs: { type: "dir", path: "rootfs", digest: "sha256:" + "a".repeat(64), files: 3, bytes: 10 } },
    builder: { tool: "pyro-busybox", version: "1", pyro_version: "0.1.0" },
    built_at: "2025-01-01T00:00:00.000Z",
    build_seconds: 0.5,
    probes: { top_level_entries: 3, files: [{ path: "/bin/sh", resolved: "/bin/busybox", size: 10 }] },
  });

  test("accepts a complete manifest, and VM artifacts added later without migration", () => {
    assert.ok(ManifestSchema.safeParse(valid()).success);
    const m = valid();
    (m.artifacts as Record<string, unknown>)["rootfs.ext4"] = { type: "file", path: "rootfs.ext4", sha256: "sha256:" + "b".repeat(64), bytes: 1024 };
    (m.artifacts as Record<string, unknown>).vmlinuz = { type: "file", path: "vmlinuz", sha256: "sha256:" + "c".repeat(64), bytes: 1 };
    (m.artifacts as Record<string, unknown>)["future-thing"] = { type: "file", path: "x", sha256: "sha256:" + "d".repeat(64), bytes: 1 };
    assert.ok(ManifestSchema.safeParse(m).success);
  });

  test("rejects torn or foreign manifests with the failing field", () => {
    const noDigest = valid();
    (noDigest.artifacts as { rootfs: Record<string, unknown> }).rootfs.digest = "md5:abc";
    assert.match(parseManifest(noDigest).error ?? "", /artifacts\.rootfs\.digest/);
    const v2 = { ...valid(), version: 2 };
    assert.match(parseManifest(v2).error ?? "", /version/);
    assert.ok(parseManifest(null).error);
    const { packages: _p, ...noPackages } = valid();
    assert.match(parseManifest(noPackages).error ?? "", /packages/);
  });

  test("parses a dpkg status file: installed packages only, sorted", () => {
    const status = [
      "Package: zlib1g\nStatus: install ok installed\nPriority: required\nArchitecture: amd64\nMulti-Arch: same\nVersion: 1:1.2.13.dfsg-1\nDescription: compression\n library",
      "Package: bash\nEssential: yes\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n",
      "Package: removed-one\nStatus: deinstall ok config-files\nVersion: 1.0\n",
      "Package: gone\nStatus: purge ok not-installed\n",
    ].join("\n\n");
    assert.deepEqual(parseDpkgStatus(status), [
      { name: "bash", version: "5.2.15-2+b2" },
      { name: "zlib1g", version: "1:1.2.13.dfsg-1" },
    ]);
  });
});

describe("cache state", () => {
  test("not_pulled, ready, then broken in every way the quick check sees", async () => {
    const name = "busybox";
    assert.equal(entryStatus(name).state, "not_pulled");

    await makeEntry(name);
    assert.equal(entryStatus(name).state, "ready");
    assert.equal(listEnvironments().find((e) => e.name === name)?.state, "ready");

    const { manifest: manifestPath, rootfs, dir } = entryPaths(name);
    const damage: [string, () => void, RegExp][] = [
      ["manifest deleted", () => unlinkSync(manifestPath), /manifest\.json is missing/],
      ["torn manifest", () => writeFileSync(manifestPath, readFileSync(manifestPath, "utf8").slice(0, 40)), /unreadable or torn/],
      ["manifest of another entry", () => writeFileSync(manifestPath, readFileSync(manifestPath, "utf8").replace('"name": "busybox"', '"name": "other"')), /names "other"/],
      ["rootfs missing", () => rmSync(rootfs, { recursive: true }), /artifact rootfs/],
      ["probe file deleted", () => unlinkSync(join(rootfs, "etc/os-release")), /\/etc\/os-release is missing/],
      ["probe target resized", () => writeFileSync(join(rootfs, "bin/busybox"), "x"), /\/bin\/busybox has 1 bytes/],
      ["top-level entry added", () => mkdirSync(join(rootfs, "extra")), /top-level entries/],
    ];
    for (const [what, act, problem] of damage) {
      await makeEntry(name);
      assert.equal(entryStatus(name).state, "ready", what);
      act();
      const s = entryStatus(name);
      assert.equal(s.state, "broken", what);
      assert.match(s.problems.join("; "), problem, what);
    }
    rmSync(dir, { recursive: true });
    assert.equal(entryStatus(name).state, "not_pulled");
  });

  test("inspect --verify catches a same-size change the quick check cannot, and marks the entry broken", async () => {
    await makeEntry("busybox");
    const { rootfs } = entryPaths("busybox");
    const ok = await inspectEnvironment("busybox", { verify: true });
    assert.equal(ok.verify?.ok, true);
    writeFileSync(join(rootfs, "etc/os-release"), "NAME=tset\n"); // same size, other content
    assert.equal(entryStatus("busybox").state, "ready");
    const bad = await inspectEnvironment("busybox", { verify: true });
    assert.equal(bad.verify?.ok, false);
    assert.equal(bad.state, "broken");
    assert.equal(listEnvironments().find((e) => e.name === "busybox")?.state, "broken", "the next list and pull see it");
    rmSync(entryPaths("busybox").dir, { recursive: true });
  });

  test("ensureEnvironment returns a ready entry at once, with its absolute rootfs", async () => {
    const m = await makeEntry("busybox");
    const t0 = performance.now();
    const r = await ensureEnvironment("busybox");
    assert.ok(performance.now() - t0 < 1000, "no build: a manifest read and a few lstat calls");
    assert.equal(r.rootfs, entryPaths("busybox").rootfs);
    assert.equal(r.manifest.artifacts.rootfs.digest, m.artifacts.rootfs.digest);
    rmSync(entryPaths("busybox").dir, { recursive: true });
  });

  test("the tree digest covers content, modes and symlink targets", async () => {
    const a = tmp("digest");
    mkdirSync(join(a, "d"));
    writeFileSync(join(a, "d/f"), "hello");
    symlinkSync("d/f", join(a, "l"));
    const d1 = (await treeDigest(a)).digest;
    assert.equal((await treeDigest(a)).digest, d1, "stable");
    writeFileSync(join(a, "d/f"), "hellO");
    const d2 = (await treeDigest(a)).digest;
    assert.notEqual(d2, d1);
    rmSync(join(a, "l"));
    symlinkSync("d/g", join(a, "l"));
    assert.notEqual((await treeDigest(a)).digest, d2);
    const d3 = (await treeDigest(a)).digest;
    const { chmodSync } = await import("node:fs");
    chmodSync(join(a, "d/f"), 0o600);
    assert.notEqual((await treeDigest(a)).digest, d3);
  });

  test("resolveInRoot follows symlinks inside the root, never out of it", () => {
    const r = tmp("resolve");
    mkdirSync(join(r, "usr/bin"), { recursive: true });
    writeFileSync(join(r, "usr/bin/dash"), "x");
    symlinkSync("usr/bin", join(r, "bin"));
    symlinkSync("dash", join(r, "usr/bin/sh"));
    symlinkSync("/../../../../etc/passwd", join(r, "escape"));
    symlinkSync("loop", join(r, "loop"));
    assert.equal(resolveInRoot(r, "/bin/sh"), "/usr/bin/dash");
    assert.equal(resolveInRoot(r, "/escape"), null, "/etc/passwd of the root, which does not exist");
    assert.equal(resolveInRoot(r, "/loop"), null);
    assert.equal(resolveInRoot(r, "/missing"), null);
  });
});

describe("mirror", () => {
  const oneLine = `# the main archive
deb http://mirror.example/debian bookworm main contrib
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://deb.example/debian/ bookworm main
deb http://security.debian.org/debian-security bookworm-security main
`;
  const deb822 = `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://local.proxy:3142/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
Enabled: no
URIs: http://disabled.example/debian
Suites: trixie bookworm
`;

  test("one-line sources: first binary source of exactly the suite", () => {
    const entries = parseOneLineSources(oneLine);
    assert.equal(entries.length, 4);
    assert.equal(pickMirror(entries, "bookworm"), "http://mirror.example/debian");
    assert.equal(pickMirror(entries.slice(1), "bookworm"), "https://deb.example/debian", "options in brackets are skipped, trailing slash dropped");
    assert.equal(pickMirror(entries, "trixie"), null);
  });

  test("deb822 sources: comments, multiple suites, Enabled: no", () => {
    const entries = parseDeb822Sources(deb822);
    assert.equal(entries.length, 3);
    assert.equal(pickMirror(entries, "bookworm"), "http://local.proxy:3142/debian");
    assert.equal(pickMirror(entries, "trixie"), null, "the only trixie source is disabled");
    assert.equal(pickMirror(entries.slice(1), "bookworm"), null, "bookworm-security is not bookworm");
  });

  test("host sources: sources.list first, then sources.list.d in order; default otherwise", () => {
    const etc = tmp("apt");
    mkdirSync(join(etc, "sources.list.d"));
    writeFileSync(join(etc, "sources.list"), "# nothing here\n");
    writeFileSync(join(etc, "sources.list.d/b.sources"), deb822);
    writeFileSync(join(etc, "sources.list.d/a.list"), "deb http://first.example/debian bookworm main\n");
    writeFileSync(join(etc, "sources.list.d/c.list.disabled"), "deb http://never.example/debian bookworm main\n");
    assert.equal(hostSourceEntries(etc).length, 4);
    assert.equal(defaultMirror("bookworm", etc), "http://first.example/debian");
    assert.equal(defaultMirror("bookworm", join(etc, "missing")), "http://deb.debian.org/debian");
  });
});

describe("build tool output", () => {
  test("mmdebstrap --verbose lines become phases with counts", () => {
    const p = new MmdebstrapProgress();
    const events = [
      "I: running apt-get update...",
      "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]",
      "I: downloading packages with apt...",
      "0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.",
      "Get:1 http://deb.debian.org/debian bookworm/main amd64 gcc-12-base amd64 12.2.0-14 [37.6 kB]",
      "Get:2 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9 [2759 kB]",
      "I: extracting archives...",
      "I: installing essential packages...",
      "Unpacking libc6:amd64 (2.36-9) ...",
      "Setting up libc6:amd64 (2.36-9) ...",
      "I: installing remaining packages inside the chroot...",
      "I: cleaning package lists and apt cache...",
    ]
      .map((l) => p.feed(l))
      .filter((e) => e !== null);
    const phases = [...new Set(events.map((e) => e!.phase))];
    assert.deepEqual(phases, ["setup", "download", "extract", "install", "configure", "cleanup"]);
    const dl = events.filter((e) => e!.phase === "download" && e!.current !== undefined).at(-1)!;
    assert.deepEqual([dl.current, dl.total], [2, 3]);
    assert.match(dl.message, /libc6/);
    const inst = events.filter((e) => e!.phase === "install" && e!.current !== undefined).at(-1)!;
    assert.deepEqual([inst.current, inst.total], [2, 6]);
  });

  test("debootstrap lines become phases", () => {
    const p = new DebootstrapProgress();
    const events = ["I: Retrieving InRelease", "I: Retrieving libacl1 2.3.1-3", "I: Validating libacl1 2.3.1-3", "I: Retrieving libc6 2.36", "I: Extracting base-files...", "I: Installing core packages...", "I: Configuring base-files...", "I: Base system installed successfully."].map((l) => p.feed(l));
    assert.deepEqual(
      events.map((e) => e && `${e.phase}${e.current ? `:${e.current}` : ""}`),
      ["setup", "download:1", null, "download:2", "extract:1", "install", "configure:1", "cleanup"],
    );
  });

  test("ELF program headers tell a static binary from a dynamic one; busybox banner parses", () => {
    assert.deepEqual(elfInfo("/bin/sh").elf, true);
    assert.equal(elfInfo(process.execPath).static, false, "node is dynamically linked");
    assert.deepEqual(elfInfo(__filenameOf()), { elf: false, static: false });
    if (existsSync("/bin/busybox")) assert.equal(elfInfo("/bin/busybox").static, true, "Debian's busybox-static");
    assert.deepEqual(parseBusyboxBanner("BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary."), { upstream: "1.35.0", debian: "1:1.35.0-4+b3" });
    assert.deepEqual(parseBusyboxBanner("BusyBox v1.36.1 () multi-call binary."), { upstream: "1.36.1", debian: null });
  });
});

function __filenameOf(): string {
  return new URL(import.meta.url).pathname;
}

describe("prune", () => {
  test("removes partial builds, broken entries and stale locks; skips a build in progress", async () => {
    // A partial build of busybox (a killed pull), a broken debian:12-base, a stale lock of debian:12.
    mkdirSync(join(tmpRoot(), "busybox.abc123", "rootfs/bin"), { recursive: true });
    writeFileSync(join(tmpRoot(), "busybox.abc123", "rootfs/bin/busybox"), Buffer.alloc(4096));
    await makeEntry("debian:12-base");
    unlinkSync(entryPaths("debian:12-base").manifest);
    mkdirSync(locksDir(), { recursive: true });
    writeFileSync(join(locksDir(), "debian_12.lock"), JSON.stringify({ pid: 999_999_999, start_time: 1 }));
    // A build in progress: debian:12-build's lock held by a live process, with its .tmp directory.
    const sleeper = spawn("sleep", ["30"], { stdio: "ignore" });
    after(() => sleeper.kill("SIGKILL"));
    const { identityOf } = await import("../../src/util/proc.js");
    await new Promise((r) => setTimeout(r, 50));
    writeFileSync(join(locksDir(), "debian_12-build.lock"), JSON.stringify(identityOf(sleeper.pid!)));
    mkdirSync(join(tmpRoot(), "debian_12-build.live01"), { recursive: true });
    // A ready entry: kept without --all.
    await makeEntry("busybox");

    const r = await pruneEnvironments();
    const kinds = r.removed.map((x) => `${x.kind}:${x.name}`).sort();
    assert.deepEqual(kinds, ["broken:debian:12-base", "partial:busybox", "stale_lock:debian:12"]);
    assert.ok(r.bytes_freed >= 4096, `freed ${r.bytes_freed}`);
    assert.ok(!existsSync(join(tmpRoot(), "busybox.abc123")));
    assert.ok(!existsSync(entryPaths("debian:12-base").dir));
    assert.ok(!existsSync(join(locksDir(), "debian_12.lock")));
    assert.ok(existsSync(join(tmpRoot(), "debian_12-build.live01")), "a live build is left alone");
    assert.ok(r.skipped.some((s) => s.path.endsWith("debian_12-build")));
    assert.equal(entryStatus("busybox").state, "ready");
    sleeper.kill("SIGKILL");
    rmSync(join(tmpRoot(), "debian_12-build.live01"), { recursive: true });
    rmSync(join(locksDir(), "debian_12-build.lock"));
  });

  test("debris is matched to its exact slug, even when names contain dots", async () => {
    mkdirSync(join(tmpRoot(), "my.env.abc123"), { recursive: true });
    mkdirSync(join(tmpRoot(), "my.xyz789"), { recursive: true });
    const sleeper = spawn("sleep", ["30"], { stdio: "ignore" });
    after(() => sleeper.kill("SIGKILL"));
    await new Promise((r) => setTimeout(r, 50));
    const { identityOf } = await import("../../src/util/proc.js");
    writeFileSync(join(locksDir(), "my.env.lock"), JSON.stringify(identityOf(sleeper.pid!)));
    const r = await pruneEnvironments();
    assert.deepEqual(r.removed.map((x) => `${x.kind}:${x.name}`), ["partial:my"]);
    assert.ok(existsSync(join(tmpRoot(), "my.env.abc123")), "my.env is being built by a live process");
    sleeper.kill("SIGKILL");
    rmSync(join(tmpRoot(), "my.env.abc123"), { recursive: true });
    rmSync(join(locksDir(), "my.env.lock"));
  });

  test("--all removes ready entries no VM or task record references", async () => {
    await makeEntry("busybox");
    await makeEntry("debian:12");
    const rec = join(process.env.PYRO_STATE_DIR!, "tasks", "t1");
    mkdirSync(rec, { recursive: true });
    writeFileSync(join(rec, "record.json"), JSON.stringify({ id: "t1", environment: "debian:12" }));
    const r = await pruneEnvironments({ all: true });
    assert.deepEqual(r.removed.map((x) => `${x.kind}:${x.name}`), ["unused:busybox"]);
    assert.equal(entryStatus("debian:12").state, "ready");
    assert.equal(entryStatus("busybox").state, "not_pulled");
    rmSync(entryPaths("debian:12").dir, { recursive: true });
    rmSync(rec, { recursive: true });
  });
});

describe("import checks", () => {
  async function importTar(entries: TarEntry[], options: { gzip?: boolean; limits?: { maxFiles?: number; maxBytes?: number } } = {}) {
    const dir = tmp("tar");
    const file = join(dir, options.gzip ? "in.tar.gz" : "in.tar");
    writeFileSync(file, tarball(entries, options));
    const dest = join(dir, "out");
    const report = await extractArchive(file, dest, { limits: options.limits ?? {} });
    return { dest, report, dir };
  }

  async function rejected(entries: TarEntry[], code: string, entry: string, options: { limits?: { maxFiles?: number; maxBytes?: number } } = {}) {
    const dir = tmp("bad");
    const file = join(dir, "bad.tar");
    writeFileSync(file, tarball(entries));
    const e = await expectRejects(extractArchive(file, join(dir, "out"), options), code);
    assert.equal((e.details as { entry?: string } | undefined)?.entry, entry, e.message);
    assert.ok(e.message.includes(entry), `"${e.message}" names ${entry}`);
    return { dir, error: e };
  }

  test("a well-formed tarball (and its gzip) extracts with modes, symlinks, hard links", async () => {
    const entries: TarEntry[] = [
      { path: "./", type: "dir" },
      { path: "bin/", type: "dir" },
      { path: "bin/tool", content: "#!/bin/sh\n", mode: 0o755 },
      { path: "bin/sh", type: "symlink", linkpath: "/bin/tool" },
      { path: "bin/tool2", type: "hardlink", linkpath: "bin/tool" },
      { path: "tmp/", type: "dir", mode: 0o1777 },
      { path: "ro/", type: "dir", mode: 0o555 },
      { path: "ro/file", content: "x", mode: 0o444 },
    ];
    for (const gzip of [false, true]) {
      const { dest, report } = await importTar(entries, { gzip });
      assert.equal(readFileSync(join(dest, "bin/tool"), "utf8"), "#!/bin/sh\n");
      assert.equal(statSync(join(dest, "bin/tool")).mode & 0o7777, 0o755);
      assert.equal(lstatSync(join(dest, "bin/sh")).isSymbolicLink(), true);
      assert.equal(statSync(join(dest, "bin/tool2")).ino, statSync(join(dest, "bin/tool")).ino);
      assert.equal(statSync(join(dest, "tmp")).mode & 0o7777, 0o1777);
      assert.equal(statSync(join(dest, "ro")).mode & 0o7777, 0o555, "read-only dir applied after its contents");
      assert.equal(report.skipped.length, 0);
    }
  });

  test("rejects ../ and absolute paths, naming the entry", async () => {
    await rejected([{ path: "../evil", content: "x" }], "unsafe_archive", "../evil");
    await rejected([{ path: "ok/", type: "dir" }, { path: "ok/../../evil", content: "x" }], "unsafe_archive", "ok/../../evil");
    await rejected([{ path: "/etc/evil", content: "x" }], "unsafe_archive", "/etc/evil");
    assert.throws(() => entryComponents("a/../b"), PyroError);
    assert.deepEqual(entryComponents("./a//b/"), ["a", "b"]);
  });

  test("rejects an entry written through a symlink of the archive, and writes nothing outside", async () => {
    const outside = tmp("outside");
    const { dir } = await rejected(
      [
        { path: "link", type: "symlink", linkpath: outside },
        { path: "link/pwned", content: "gotcha" },
      ],
      "unsafe_archive",
      "link/pwned",
    );
    assert.deepEqual(readdirSync(outside), []);
    assert.ok(dir);
    // A relative symlink up and out, then a directory entry through it.
    await rejected(
      [
        { path: "up", type: "symlink", linkpath: "../../.." },
        { path: "up/etc/", type: "dir" },
      ],
      "unsafe_archive",
      "up/etc/",
    );
    // A file replacing an earlier symlink is fine: the link itself is replaced, not followed.
    const { dest } = await importTar([
      { path: "f", type: "symlink", linkpath: join(outside, "target") },
      { path: "f", content: "mine" },
    ]);
    assert.equal(readFileSync(join(dest, "f"), "utf8"), "mine");
    assert.ok(!existsSync(join(outside, "target")));
  });

  test("rejects hard links out of the archive or to anything but an earlier file", async () => {
    await rejected([{ path: "hl", type: "hardlink", linkpath: "/etc/passwd" }], "unsafe_archive", "hl");
    await rejected([{ path: "hl", type: "hardlink", linkpath: "../../../etc/passwd" }], "unsafe_archive", "hl");
    await rejected([{ path: "hl", type: "hardlink", linkpath: "later" }, { path: "later", content: "x" }], "unsafe_archive", "hl");
    await rejected([{ path: "d/", type: "dir" }, { path: "hl", type: "hardlink", linkpath: "d" }], "unsafe_archive", "hl");
    await rejected([{ path: "s", type: "symlink", linkpath: "/etc/passwd" }, { path: "hl", type: "hardlink", linkpath: "s" }], "unsafe_archive", "hl");
  });

  test("skips and reports device nodes and fifos; drops set-id bits", async () => {
    const { dest, report } = await importTar([
      { path: "dev/", type: "dir" },
      { path: "dev/null", type: "char", mode: 0o666, devmajor: 1, devminor: 3 },
      { path: "dev/sda", type: "block", mode: 0o660, devmajor: 8, devminor: 0 },
      { path: "run/fifo", type: "fifo" },
      { path: "bin/su", content: "suid", mode: 0o4755 },
      { path: "bin/wall", content: "sgid", mode: 0o2755 },
    ]);
    assert.deepEqual(
      report.skipped.map((s) => `${s.type}:${s.path}`),
      ["CharacterDevice:dev/null", "BlockDevice:dev/sda", "FIFO:run/fifo"],
    );
    assert.ok(!existsSync(join(dest, "dev/null")));
    assert.equal(statSync(join(dest, "bin/su")).mode & 0o7777, 0o755);
    assert.equal(statSync(join(dest, "bin/wall")).mode & 0o7777, 0o755);
    assert.deepEqual(report.setid_dropped, ["bin/su", "bin/wall"]);
  });

  test("limits on entries and bytes stop the import at the entry that crosses them", async () => {
    const many: TarEntry[] = Array.from({ length: 20 }, (_, i) => ({ path: `f${String(i).padStart(2, "0")}`, content: "x" }));
    await rejected(many, "limit_exceeded", "f10", { limits: { maxFiles: 10 } });
    await rejected([{ path: "small", content: "x".repeat(10) }, { path: "big", content: "x".repeat(100) }], "limit_exceeded", "big", { limits: { maxBytes: 50 } });
  });

  test("garbage is not a tar archive", async () => {
    const dir = tmp("garbage");
    writeFileSync(join(dir, "g.tar"), Buffer.alloc(2048, 0x41));
    await expectRejects(extractArchive(join(dir, "g.tar"), join(dir, "out")), "unsafe_archive", "not a valid tar archive");
  });

  test("a directory source is copied without following symlinks; specials skipped; hard links kept", async () => {
    const src = tmp("srcdir");
    const outside = tmp("outside");
    writeFileSync(join(outside, "secret"), "host secret");
    mkdirSync(join(src, "etc"));
    writeFileSync(join(src, "etc/os-release"), "NAME=mine\n");
    symlinkSync(outside, join(src, "escape"));
    symlinkSync(join(outside, "secret"), join(src, "etc/secret-link"));
    writeFileSync(join(src, "suid"), "x", { mode: 0o4755 });
    const { linkSync, chmodSync } = await import("node:fs");
    chmodSync(join(src, "suid"), 0o4755);
    linkSync(join(src, "etc/os-release"), join(src, "hardlinked"));
    const { execFileSync } = await import("node:child_process");
    execFileSync("mkfifo", [join(src, "fifo")]);
    const dest = join(tmp("copy"), "out");
    const report = await copyTree(src, dest);
    assert.equal(lstatSync(join(dest, "escape")).isSymbolicLink(), true);
    assert.ok(!existsSync(join(dest, "escape/secret")) || lstatSync(join(dest, "escape")).isSymbolicLink());
    assert.equal(lstatSync(join(dest, "etc/secret-link")).isSymbolicLink(), true, "copied as a link, its target never read");
    assert.equal(statSync(join(dest, "hardlinked")).ino, statSync(join(dest, "etc/os-release")).ino);
    assert.equal(statSync(join(dest, "suid")).mode & 0o7777, 0o755);
    assert.deepEqual(report.skipped, [{ path: "fifo", type: "FIFO" }]);
    assert.equal(readFileSync(join(src, "etc/os-release"), "utf8"), "NAME=mine\n", "the source is left as it was");
  });

  test("importEnvironment: kind import, listed, catalog names refused, broken imports are not rebuilt by pull", async () => {
    const dir = tmp("imp");
    const file = join(dir, "root.tgz");
    writeFileSync(
      file,
      tarball(
        [
          { path: "bin/", type: "dir" },
          { path: "bin/busybox", content: "BusyBox v9.9.9 (fake)", mode: 0o755 },
          { path: "bin/sh", type: "symlink", linkpath: "busybox" },
          { path: "etc", type: "symlink", linkpath: "/etc" },
        ],
        { gzip: true },
      ),
    );
    await expectRejects(importEnvironment("busybox", file), "invalid_argument", "catalog");
    await expectRejects(importEnvironment("Bad_Name", file), "invalid_argument");
    const r = await importEnvironment("mine:1", file);
    assert.equal(r.manifest.kind, "import");
    assert.deepEqual(r.manifest.packages, [{ name: "busybox", version: "9.9.9" }]);
    assert.ok(r.warnings.some((w) => w.includes("/etc/hostname")), "fixups through the etc -> /etc symlink are skipped, not written on the host");
    const listed = listEnvironments().find((e) => e.name === "mine:1");
    assert.equal(listed?.kind, "import");
    assert.equal(listed?.state, "ready");
    assert.equal((await pullEnvironment("mine:1")).built, false);
    await expectRejects(importEnvironment("mine:1", file), "invalid_argument", "already imported");
    await importEnvironment("mine:1", file, { force: true });
    unlinkSync(join(entryPaths("mine:1").rootfs, "bin/busybox"));
    assert.equal(listEnvironments().find((e) => e.name === "mine:1")?.state, "broken");
    await expectRejects(pullEnvironment("mine:1"), "environment_not_ready", "mine:1");
    const unknown = await expectRejects(pullEnvironment("other"), "unknown_environment");
    assert.ok(unknown.message.includes("mine:1"), "imported names are listed as valid");
    rmSync(entryPaths("mine:1").dir, { recursive: true });
  });
});

describe("operations", () => {
  test("results match their schemas; arguments are strict", async () => {
    const ops = await import("../../src/operations/env.js");
    await makeEntry("busybox");
    assert.ok(ops.EnvListResultSchema.safeParse(await ops.envList({})).success);
    const insp = await ops.envInspect({ environment: "busybox", verify: true });
    const parsed = ops.EnvInspectResultSchema.safeParse(insp);
    assert.ok(parsed.success, JSON.stringify(parsed.error?.issues));
    const pull = await ops.envPull({ environment: "busybox" });
    assert.ok(ops.EnvPullResultSchema.safeParse(pull).success);
    assert.equal(pull.built, false);
    assert.ok(ops.EnvPruneResultSchema.safeParse(await ops.envPrune({})).success);
    await expectRejects(ops.envPull({ environment: "busybox", forse: true } as never), "invalid_argument", "forse");
    await expectRejects(ops.envPull({ environment: "busybox", mirror: "ftp://x" }), "invalid_argument", "mirror");
    await expectRejects(ops.envInspect({} as never), "invalid_argument", "environment");
    rmSync(entryPaths("busybox").dir, { recursive: true });
  });
});
