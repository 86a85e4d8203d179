import { test, describe, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync, existsSync, readdirSync, readFileSync, writeFileSync, copyFileSync, openSync, writeSync, closeSync, lstatSync, unlinkSync, readlinkSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join } from "node:path";
import { spawn, spawnSync } from "node:child_process";

// The whole file works in its own cache: the kernel download and builds never touch a user's.
const scratch = mkdtempSync(join(tmpdir(), "pyro-vm-artifacts-"));
const CACHE = join(scratch, "cache");
process.env.PYRO_CACHE_DIR = CACHE;
process.env.PYRO_STATE_DIR = join(scratch, "state");

import { ensureEnvironment, pruneEnvironments } from "../../src/environments/index.js";
import { entryPaths, entryStatus, tmpRoot } from "../../src/environments/cache.js";
import { ensureVmArtifacts, GUEST_MODULES, type VmArtifacts } from "../../src/environments/vm/index.js";
import { kernelsDir, kernelsTmp } from "../../src/environments/vm/store.js";
import { fileSha256 } from "../../src/util/file-sha256.js";
import { readCpio } from "../../src/environments/vm/cpio.js";
import { readElfHeader, withFileSource, pvhEntry } from "../../src/environments/vm/elf.js";
import { readModinfo } from "../../src/environments/vm/modinfo.js";
import { buildRootfsImage } from "../../src/environments/vm/rootfs-image.js";
import { VmRecordSchema } from "../../src/environments/manifest.js";
import { agentBinaryPath, locateAgent } from "../../src/util/agent-binary.js";

/** Whether a usable agent is there (locateAgent throws, saying why, when not). */
function agentFound(): boolean {
  try {
    return Boolean(locateAgent());
  } catch {
    return false;
  }
}
import { PyroError } from "../../src/core/errors.js";
import type { ProgressEvent } from "../../src/util/progress.js";
import { ROOT } from "../helpers/cli.js";

after(() => rmSync(scratch, { recursive: true, force: true }));

const have = (t: string) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0;
const missing = ["apt-get", "dpkg-deb", "mkfs.ext4", "debugfs", "unshare"].filter((t) => !have(t));
const skip = missing.length ? `needs ${missing.join(", ")}` : false;

let artifacts: VmArtifacts;
const timings: Record<string, number> = {};

function debugfsStat(image: string, path: string): { uid: number; gid: number; mode: string } {
  const r = spawnSync("debugfs", ["-R", `stat ${path}`, image], { encoding: "utf8" });
  const m = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(r.stdout);
  const mode = /Mode:\s+(\d+)/.exec(r.stdout);
  assert.ok(m && mode, `debugfs stat ${path}: ${r.stdout}${r.stderr}`);
  return { uid: Number(m[1]), gid: Number(m[2]), mode: mode[1]! };
}

/** Pids (other than ours) with an open file below `dir`: what a killed build could leak. */
function processesWithFilesUnder(dir: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync("/proc").filter((n) => /^\d+$/.test(n) && Number(n) !== process.pid)) {
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target = "";
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (target.startsWith(dir + "/")) {
        out.push(Number(pid));
        break;
      }
    }
  }
  return out;
}

function runChild(name: string, env: NodeJS.ProcessEnv = {}) {
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/vm-artifacts-child.ts"), name], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d));
  child.stderr.on("data", (d: Buffer) => (err += d));
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) => child.on("close", (code) => resolve({ code, out, err })));
  return { child, done, err: () => err };
}

describe("VM artifacts for busybox", { skip, concurrency: false }, () => {
  before(() => {
    if (!agentFound()) {
      const r = spawnSync("make", ["-C", join(ROOT, "guest")], { encoding: "utf8" });
      assert.equal(r.status, 0, `make -C guest failed:\n${r.stdout}${r.stderr}`);
    }
  });

  test("first use fetches the kernel and builds everything; the manifest records it", async () => {
    const env = await ensureEnvironment("busybox");
    const events: ProgressEvent[] = [];
    const t0 = performance.now();
    artifacts = await ensureVmArtifacts(env, { progress: (e) => events.push({ ...e, current: Math.round(performance.now() - t0) }) });
    timings.first_use_s = (performance.now() - t0) / 1000;
    const at = (re: RegExp) => events.find((e) => re.test(e.message))?.current ?? NaN;
    timings.kernel_s = at(/^kernel .* ready/) / 1000;
    timings.initramfs_ms = at(/^initrd\.img:/) - at(/^kernel .* ready/);
    timings.image_ms = at(/^rootfs\.ext4:/) - at(/^making rootfs\.ext4/);

    const m = entryStatus("busybox").manifest!;
    const vm = VmRecordSchema.parse(m.vm);
    assert.equal(vm.kernel.release, artifacts.kernel.release);
    assert.match(vm.kernel.package, /^linux-image-.*-cloud-(amd64|arm64)$/);
    assert.equal(vm.initramfs.sha256, fileSha256(artifacts.initramfs.path));
    assert.equal(vm.rootfs_image.sha256, fileSha256(artifacts.rootfs_image.path));
    assert.equal(artifacts.kernel.sha256, fileSha256(artifacts.kernel.path));
    assert.equal(vm.initramfs.agent_sha256, fileSha256(agentBinaryPath()));
    assert.equal(entryStatus("busybox").state, "ready");
    assert.deepEqual(readdirSync(tmpRoot()), [], "no build directory left");
    assert.deepEqual(existsSync(kernelsTmp()) ? readdirSync(kernelsTmp()) : [], []);
  });

  test("the kernel is an ELF vmlinux with a PVH entry", { skip: process.arch === "x64" ? false : "PVH is x86" }, () => {
    const h = withFileSource(artifacts.kernel.path, readElfHeader);
    assert.equal(h.is64, true);
    assert.equal(h.machine, 62, "EM_X86_64");
    const entry = withFileSource(artifacts.kernel.path, pvhEntry);
    assert.ok(entry !== null && entry > 0, "XEN_ELFNOTE_PHYS32_ENTRY present");
  });

  test("the initramfs holds exactly the agreed layout, modules in dependency order", () => {
    const listed = readCpio(readFileSync(artifacts.initramfs.path));
    const mods = artifacts.initramfs.modules;
    const expected = ["dev", "dev/console", "proc", "sys", "mnt", "tmp", "modules", "modules/order", ...mods.map((n) => `modules/${n}.ko`), "init"];
    assert.deepEqual(listed.map((e) => e.path).sort(), expected.sort());
    const by = new Map(listed.map((e) => [e.path, e]));
    assert.equal(by.get("init")!.mode, 0o100755);
    assert.deepEqual(by.get("init")!.data, readFileSync(agentBinaryPath()));
    assert.equal(by.get("dev/console")!.mode & 0o170000, 0o020000);
    assert.deepEqual([by.get("dev/console")!.rdevmajor, by.get("dev/console")!.rdevminor], [5, 1]);
    for (const d of ["dev", "proc", "sys", "mnt", "tmp"]) assert.equal(by.get(d)!.mode & 0o170000, 0o040000, d);
    assert.equal(by.get("modules/order")!.data.toString(), mods.map((n) => `${n}.ko\n`).join(""));
    // Every module is a real, uncompressed module whose dependencies come before it; every wanted one is there (none is built in on Debian's cloud kernels).
    const seen = new Set<string>();
    for (const n of mods) {
      const info = readModinfo(by.get(`modules/${n}.ko`)!.data);
      assert.equal(info.name, n);
      for (const d of info.depends) assert.ok(seen.has(d), `${n} depends on ${d}, which must load first`);
      seen.add(n);
    }
    for (const w of GUEST_MODULES) assert.ok(seen.has(w), `${w} is in the initramfs`);
    assert.ok(mods.indexOf("virtio_ring") < mods.indexOf("virtio_mmio"));
  });

  test("the root image holds the rootfs owned by 0:0, set-id bits as the tree has them", () => {
    const image = artifacts.rootfs_image.path;
    const tree = entryPaths("busybox").rootfs;
    const hostOwner = lstatSync(join(tree, "bin/busybox")).uid;
    if (process.getuid?.() === 0) assert.notEqual(hostOwner, 0, "as root the tree belongs to the sandbox uid");
    for (const p of ["/bin/busybox", "/etc/os-release", "/", "/bin"]) {
      const st = debugfsStat(image, p);
      assert.deepEqual([st.uid, st.gid], [0, 0], p);
    }
    assert.equal(debugfsStat(image, "/bin/busybox").mode, (lstatSync(join(tree, "bin/busybox")).mode & 0o7777).toString(8).padStart(4, "0"));
    const fsck = spawnSync("e2fsck", ["-fn", image], { encoding: "utf8" });
    assert.equal(fsck.status, 0, `e2fsck finds the image clean:\n${fsck.stdout}${fsck.stderr}`);
    const label = spawnSync("dumpe2fs", ["-h", image], { encoding: "utf8" }).stdout;
    assert.match(label, /Filesystem volume name:\s+pyro-root/);
    assert.equal(lstatSync(image).size, artifacts.rootfs_image.size_mib * 1024 * 1024);
  });

  test("a ready set is returned without rebuilding, fast", async () => {
    const env = await ensureEnvironment("busybox");
    const events: ProgressEvent[] = [];
    const t0 = performance.now();
    const again = await ensureVmArtifacts(env, { progress: (e) => events.push(e) });
    timings.ready_ms = performance.now() - t0;
    assert.deepEqual(again, artifacts);
    assert.deepEqual(events, []);
    assert.ok(timings.ready_ms < 1500, `took ${timings.ready_ms} ms`);
  });

  test("a damaged image (same size) is rebuilt; the kernel is not fetched again", async () => {
    const fd = openSync(artifacts.rootfs_image.path, "r+");
    writeSync(fd, Buffer.from("damage"), 0, 6, 2048);
    closeSync(fd);
    const events: string[] = [];
    const r = await ensureVmArtifacts(await ensureEnvironment("busybox"), { progress: (e) => events.push(e.message) });
    assert.ok(events.some((m) => /rootfs\.ext4 does not match/.test(m)), events.join("\n"));
    assert.ok(!events.some((m) => /apt-get|initrd\.img:/.test(m)), "neither kernel nor initramfs rebuilt");
    assert.equal(fileSha256(r.rootfs_image.path), r.rootfs_image.sha256);
    assert.equal(debugfsStat(r.rootfs_image.path, "/bin/busybox").uid, 0);
  });

  test("a fresh process notices a damaged vmlinux (digests are remembered, but not across a write) and rebuilds the kernel", async () => {
    const fd = openSync(artifacts.kernel.path, "r+");
    writeSync(fd, Buffer.from("damage"), 0, 6, 1 << 20);
    closeSync(fd);
    const c = runChild("busybox");
    const r = await c.done;
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /vmlinux has sha256 .* recorded/);
    assert.match(r.err, /apt-get download linux-image-/);
    const fresh = JSON.parse(r.out) as VmArtifacts;
    assert.equal(fresh.kernel.sha256, artifacts.kernel.sha256, "the same package gives the same vmlinux");
    assert.equal(fileSha256(fresh.kernel.path), fresh.kernel.sha256);
    assert.equal(fresh.initramfs.sha256, artifacts.initramfs.sha256);
  });

  test("a changed agent binary rebuilds the initramfs", async () => {
    const agent = join(scratch, "pyro-agent-changed");
    copyFileSync(agentBinaryPath(), agent);
    writeFileSync(agent, Buffer.concat([readFileSync(agent), Buffer.from("\0changed")]));
    process.env.PYRO_AGENT = agent;
    try {
      const r = await ensureVmArtifacts(await ensureEnvironment("busybox"));
      assert.equal(r.initramfs.agent_sha256, fileSha256(agent));
      assert.notEqual(r.initramfs.sha256, artifacts.initramfs.sha256);
      assert.deepEqual(readCpio(readFileSync(r.initramfs.path)).find((e) => e.path === "init")!.data, readFileSync(agent));
      assert.equal(r.rootfs_image.sha256, fileSha256(r.rootfs_image.path));
    } finally {
      delete process.env.PYRO_AGENT;
    }
    const back = await ensureVmArtifacts(await ensureEnvironment("busybox"));
    assert.equal(back.initramfs.sha256, artifacts.initramfs.sha256, "same inputs, same initramfs bytes");
  });

  test("two processes building at once both get the same, whole artifacts", async () => {
    unlinkSync(join(entryPaths("busybox").dir, "rootfs.ext4"));
    unlinkSync(join(entryPaths("busybox").dir, "initrd.img"));
    const a = runChild("busybox");
    const b = runChild("busybox");
    const [ra, rb] = await Promise.all([a.done, b.done]);
    assert.equal(ra.code, 0, ra.err);
    assert.equal(rb.code, 0, rb.err);
    const ja = JSON.parse(ra.out) as VmArtifacts;
    const jb = JSON.parse(rb.out) as VmArtifacts;
    assert.deepEqual(ja, jb);
    assert.equal(fileSha256(ja.rootfs_image.path), ja.rootfs_image.sha256);
    assert.equal(fileSha256(ja.initramfs.path), ja.initramfs.sha256);
    assert.equal([ra.err, rb.err].filter((e) => /making rootfs\.ext4/.test(e)).length, 1, "one of them built, the other waited and reused it");
    assert.deepEqual(readdirSync(tmpRoot()), []);
  });

  test("kill -9 in the middle of a build leaves the old record or debris that the next build or prune removes", async () => {
    unlinkSync(join(entryPaths("busybox").dir, "rootfs.ext4"));
    const c = runChild("busybox");
    await new Promise<void>((resolve, reject) => {
      const t = setInterval(() => {
        if (/making rootfs\.ext4/.test(c.err())) {
          clearInterval(t);
          c.child.kill("SIGKILL");
          resolve();
        }
      }, 2);
      c.done.then(() => {
        clearInterval(t);
        reject(new Error(`finished before it could be killed: ${c.err()}`));
      }, reject);
    });
    await c.done;
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(processesWithFilesUnder(scratch), [], "mkfs.ext4 died with the killed process");
    assert.equal(entryStatus("busybox").state, "ready", "the environment itself is untouched");
    const r = await ensureVmArtifacts(await ensureEnvironment("busybox"));
    assert.equal(fileSha256(r.rootfs_image.path), r.rootfs_image.sha256);
    await pruneEnvironments();
    assert.deepEqual(readdirSync(tmpRoot()), []);
  });

  test("an abort during the image build is cancelled, leaving the entry's record and no debris", async () => {
    unlinkSync(join(entryPaths("busybox").dir, "rootfs.ext4"));
    const before = readFileSync(entryPaths("busybox").manifest, "utf8");
    const ac = new AbortController();
    await assert.rejects(
      ensureVmArtifacts(await ensureEnvironment("busybox"), { signal: ac.signal, progress: (e) => /making rootfs\.ext4/.test(e.message) && ac.abort() }),
      (e: unknown) => e instanceof PyroError && e.code === "cancelled",
    );
    assert.equal(readFileSync(entryPaths("busybox").manifest, "utf8"), before);
    assert.ok(!existsSync(join(entryPaths("busybox").dir, "rootfs.ext4")));
    assert.deepEqual(readdirSync(tmpRoot()), []);
    const r = await ensureVmArtifacts(await ensureEnvironment("busybox"));
    assert.equal(fileSha256(r.rootfs_image.path), r.rootfs_image.sha256);
  });

  test("boots under QEMU TCG to the kernel starting /init", { skip: have("qemu-system-x86_64") && process.arch === "x64" ? false : "needs qemu-system-x86_64 on x86_64", timeout: 120_000 }, async () => {
    const mhz = Math.round(cpus()[0]?.speed ?? 0) || 2000;
    const args = ["-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
      "-kernel", artifacts.kernel.path, "-initrd", artifacts.initramfs.path,
      "-append", `console=ttyS0 reboot=t panic=-1 tsc_early_khz=${mhz * 1000} tsc=reliable`];
    const t0 = performance.now();
    const q = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "pipe", "pipe"] });
    let console = "";
    const seen = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 90_000);
      const onData = (d: Buffer) => {
        console += d.toString("latin1");
        if (/Run \/init as init process/.test(console)) {
          clearTimeout(timer);
          resolve(true);
        }
      };
      q.stdout.on("data", onData);
      q.stderr.on("data", onData);
      q.on("close", () => {
        clearTimeout(timer);
        resolve(/Run \/init as init process/.test(console));
      });
    });
    timings.boot_to_init_s = (performance.now() - t0) / 1000;
    q.kill("SIGKILL");
    await new Promise((r) => (q.exitCode !== null || q.signalCode !== null ? r(null) : q.on("close", r)));
    assert.ok(seen, `the console never showed "Run /init as init process":\n${console.slice(-3000)}`);
    assert.match(console, new RegExp(`Linux version ${artifacts.kernel.release.replace(/[.+]/g, "\\$&")}`));
  });

  test("bad input: no mkfs.ext4, no apt-get, an unreachable archive; nothing half-written is left", async () => {
    const env = await ensureEnvironment("busybox");
    const dir = entryPaths("busybox").dir;
    const savedPath = process.env.PATH;
    // mkfs.ext4 lives in /usr/sbin, which the lookup always adds: hand the builder a path that does not exist.
    const out = join(scratch, "no-mkfs.ext4");
    await assert.rejects(buildRootfsImage(env.rootfs, out, { mkfs: "/nonexistent/mkfs.ext4" }), (e: unknown) => e instanceof PyroError && e.code === "driver_unavailable" && /mkfs\.ext4/.test(e.message) && /e2fsprogs/.test(e.hint ?? ""));
    assert.ok(!existsSync(out));
    // mkfs.ext4 failing (an image path it cannot create: its directory is gone) is an error with its output, and nothing is left.
    await assert.rejects(buildRootfsImage(env.rootfs, join(scratch, "gone", "x.ext4")), /ENOENT/);
    assert.ok(existsSync(join(dir, "rootfs.ext4")), "the entry's image is untouched");

    // A second cache with no kernel in it.
    process.env.PYRO_CACHE_DIR = join(scratch, "cache2");
    try {
      const env2 = await ensureEnvironment("busybox");
      process.env.PATH = "/nonexistent";
      try {
        await assert.rejects(ensureVmArtifacts(env2), (e: unknown) => e instanceof PyroError && e.code === "driver_unavailable" && /apt-get/.test(e.message) && /Debian/.test(e.hint ?? ""));
      } finally {
        process.env.PATH = savedPath;
      }
      const conf = join(scratch, "apt-unreachable.conf");
      writeFileSync(conf, 'Acquire::http::Proxy "http://127.0.0.1:9/";\nAcquire::https::Proxy "http://127.0.0.1:9/";\nAcquire::Retries "0";\n');
      process.env.APT_CONFIG = conf;
      try {
        await assert.rejects(ensureVmArtifacts(env2), (e: unknown) => e instanceof PyroError && e.code === "mirror_unreachable" && /network|mirror/.test(e.hint ?? ""));
      } finally {
        delete process.env.APT_CONFIG;
      }
      assert.ok(!existsSync(kernelsDir()) || readdirSync(kernelsDir()).every((n) => n === ".tmp"), "no kernel and no lock left");
      assert.deepEqual(existsSync(kernelsTmp()) ? readdirSync(kernelsTmp()) : [], []);
      assert.equal(VmRecordSchema.safeParse(entryStatus("busybox").manifest?.vm).success, false, "no vm record was written");
    } finally {
      process.env.PYRO_CACHE_DIR = CACHE;
    }
  });

  test("as an unprivileged user, the user's own files (even mode 0600) become 0:0 in the image", { skip: process.getuid?.() === 0 ? false : "needs root to become a spare uid" }, () => {
    const uid = 2_000_000_321; // a uid no account uses, like the sandbox uid
    const dir = mkdtempSync(join(tmpdir(), "pyro-vm-unpriv-"));
    try {
      mkdirSync(join(dir, "t/etc"), { recursive: true });
      writeFileSync(join(dir, "t/etc/shadow"), "secret", { mode: 0o600 });
      const script = join(dir, "build.mts");
      writeFileSync(script, `import { buildRootfsImage } from ${JSON.stringify(join(ROOT, "src/environments/vm/rootfs-image.ts"))};\nconsole.log(JSON.stringify(await buildRootfsImage(${JSON.stringify(join(dir, "t"))}, ${JSON.stringify(join(dir, "img"))})));\n`);
      spawnSync("chown", ["-R", `${uid}:${uid}`, dir]);
      const r = spawnSync("setpriv", ["--reuid", String(uid), "--regid", String(uid), "--clear-groups", process.execPath, "--import", "tsx", script], { cwd: ROOT, encoding: "utf8", env: { ...process.env, HOME: dir } });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout).mapped_from, { uid, gid: uid });
      const st = debugfsStat(join(dir, "img"), "/etc/shadow");
      assert.deepEqual([st.uid, st.gid, st.mode], [0, 0, "0600"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("prune removes a kernel once no environment refers to it", async () => {
    const kernelDir = readdirSync(kernelsDir()).filter((n) => !n.startsWith("."));
    assert.equal(kernelDir.length, 1);
    const kept = await pruneEnvironments();
    assert.ok(!kept.removed.some((r) => r.path.startsWith(kernelsDir())), "a referenced kernel stays");
    const all = await pruneEnvironments({ all: true });
    assert.ok(all.removed.some((r) => r.path === join(kernelsDir(), kernelDir[0]!) && r.kind === "unused"), JSON.stringify(all.removed));
    assert.ok(!existsSync(join(kernelsDir(), kernelDir[0]!)));
    console.log(`# vm artifacts timings: ${JSON.stringify(Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, Math.round(v * 1000) / 1000])))}`);
  });
});
