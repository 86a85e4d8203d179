/**
 * What the qemu driver does for a VM's cost (docs/drivers.md, "What a VM
 * costs"): free page reporting through the virtio-balloon device is on in
 * the guest and hands memory the guest freed back to the host, cold-booted
 * and restored alike; a snapshot's template warms the shell up (and a cold
 * VM does not); a restore reads its snapshot from an fd, with no socket
 * left behind. Real qemu (TCG) and Debian's kernel, the busybox environment
 * of the run's cache.
 */
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEnvironment } from "../../src/environments/index.js";
import { ensureVmArtifacts } from "../../src/environments/vm/index.js";
import { QemuDriver } from "../../src/drivers/qemu/driver.js";
import type { SandboxHandle, SandboxSpec, VmBootFiles } from "../../src/drivers/types.js";
import { AgentClient } from "../../src/agent/client.js";
import { missingForVm, sh } from "../helpers/vm-fixture.js";

const skip = missingForVm() ?? false;
const state = mkdtempSync(join(tmpdir(), "pyro-mem-"));
after(() => rmSync(state, { recursive: true, force: true }));

let boot: VmBootFiles;
let rootfs = "";
const driver = new QemuDriver();
let n = 0;

function spec(over: Partial<SandboxSpec> = {}): SandboxSpec {
  const id = `mem${n++}`;
  const dir = join(state, id);
  mkdirSync(dir, { recursive: true });
  return { id, dir, rootfs, vcpu_count: 1, mem_mib: 256, pids_max: 512, disk_mib: 64, keep_layer: false, network: false, deadline: null, die_with_parent: true, hostname: id, vm: boot, ...over };
}

async function run(h: SandboxHandle, script: string, timeoutMs = 60_000): Promise<string> {
  const c = await AgentClient.connect(h.socket, { timeoutMs: 10_000 });
  try {
    const r = await sh(c, script, timeoutMs);
    assert.equal(r.code, 0, r.err);
    return r.out;
  } finally {
    c.close();
  }
}

async function stop(h: SandboxHandle): Promise<void> {
  await driver.kill(h);
  driver.cleanup(h);
}

/** The PSS of the qemu whose argv names the sandbox's directory, in MiB. */
function qemuPss(dir: string): number {
  for (const p of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      if (!readFileSync(`/proc/${p}/comm`, "utf8").startsWith("qemu") || !readFileSync(`/proc/${p}/cmdline`, "utf8").includes(`${dir}/`)) continue;
      return Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/smaps_rollup`, "utf8"))![1]) / 1024;
    } catch {
      /* a process that ended meanwhile */
    }
  }
  throw new Error(`no qemu names ${dir}`);
}

async function until(what: string, ok: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// The balloon's device in the guest: its driver, and feature bit 5 (VIRTIO_BALLOON_F_REPORTING) of what was negotiated.
const BALLOON = 'for d in /sys/bus/virtio/devices/*; do [ "$(basename "$(readlink "$d/driver")")" = virtio_balloon ] && cut -c6 "$d/features"; done';

describe("the qemu driver's memory and restore costs", { skip, concurrency: false }, () => {
  before(async () => {
    const env = await ensureEnvironment("busybox");
    rootfs = env.rootfs;
    const a = await ensureVmArtifacts(env);
    boot = { kernel: a.kernel.path, initramfs: a.initramfs.path, root_image: a.rootfs_image.path };
  });

  for (const restored of [false, true]) {
    test(`${restored ? "a restored" : "a cold-booted"} VM reports free pages: the balloon's driver is bound with reporting negotiated, and 96 MiB the guest wrote and freed go back to the host`, { timeout: 240_000 }, async () => {
      const before = process.env.PYRO_QEMU_SNAPSHOTS;
      process.env.PYRO_QEMU_SNAPSHOTS = restored ? "on" : "off";
      let h: SandboxHandle;
      try {
        h = await driver.start(spec());
      } finally {
        if (before === undefined) delete process.env.PYRO_QEMU_SNAPSHOTS;
        else process.env.PYRO_QEMU_SNAPSHOTS = before;
      }
      try {
        assert.equal(h.boot, restored ? "restored" : "cold", h.boot_detail);
        assert.equal((await run(h, BALLOON)).trim(), "1", "virtio_balloon bound, VIRTIO_BALLOON_F_REPORTING negotiated");
        const idle = qemuPss(spec_dir(h));
        // Written (so every page is the guest's and resident in qemu), then freed.
        await run(h, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=96 2>/dev/null && sync");
        const full = qemuPss(spec_dir(h));
        assert.ok(full - idle > 80, `qemu holds the guest's 96 MiB (idle ${idle.toFixed(0)} MiB, full ${full.toFixed(0)} MiB)`);
        await run(h, "rm /dev/shm/fill");
        // The guest reports a freed run 2 s after it was freed (PAGE_REPORTING_DELAY); TCG and a loaded host add to that.
        await until(`qemu's PSS to come down from ${full.toFixed(0)} MiB`, () => qemuPss(spec_dir(h)) < full - 64, 60_000);
        console.log(`# ${restored ? "restored" : "cold"}: idle ${idle.toFixed(0)} MiB, holding 96 MiB ${full.toFixed(0)} MiB, after freeing it ${qemuPss(spec_dir(h)).toFixed(0)} MiB`);
      } finally {
        await stop(h);
      }
    });
  }

  test("a snapshot's template runs the warm-up shell before it is saved, a cold VM does not; a restore leaves no incoming socket", { timeout: 240_000 }, async () => {
    // A shape of its own, so this test makes the snapshot (the template boots in the maker's own directory).
    const s = spec({ mem_mib: 320 });
    const a = await driver.start(s);
    try {
      assert.equal(a.boot, "restored", a.boot_detail);
      const log = readFileSync(join(s.dir, "vm", "console.log"), "utf8");
      assert.match(log, /warmed up: \/bin\/sh -lc true ran in \d+ ms/, "the template ran the shell once");
      assert.deepEqual(readdirSync(join(s.dir, "vm", "run")).filter((f) => /incoming|migrate/.test(f)), [], "no migration socket: the snapshot came in on an fd");
      assert.equal((await run(a, "echo ok")).trim(), "ok");
    } finally {
      await stop(a);
    }
    const before = process.env.PYRO_QEMU_SNAPSHOTS;
    process.env.PYRO_QEMU_SNAPSHOTS = "off";
    const c = spec({ mem_mib: 320 });
    try {
      const h = await driver.start(c);
      try {
        assert.equal(h.boot, "cold");
        assert.equal((await run(h, "echo ok")).trim(), "ok");
        assert.doesNotMatch(readFileSync(join(c.dir, "vm", "console.log"), "utf8"), /warmed up/, "a cold VM serves at once");
      } finally {
        await stop(h);
      }
    } finally {
      if (before === undefined) delete process.env.PYRO_QEMU_SNAPSHOTS;
      else process.env.PYRO_QEMU_SNAPSHOTS = before;
    }
    assert.ok(existsSync(join(boot.root_image, "..", "snapshots")));
  });
});

/** A handle's sandbox directory: its socket is `<dir>/vm/run/agent.sock`. */
function spec_dir(h: SandboxHandle): string {
  return join(h.socket, "..", "..", "..");
}
