/**
 * Snapshot restore of one-shot qemu VMs (docs/drivers.md, "Snapshots"):
 * the first one-shot VM of a shape makes the snapshot, later ones restore
 * it with fresh randomness and the host's clock; a damaged snapshot falls
 * back to a cold boot and is rebuilt; concurrent makers make one; a kill -9
 * of pyro while it makes one leaves no process and no snapshot. Real qemu
 * (TCG) and Debian's kernel, the busybox environment of the run's cache.
 */
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, openSync, writeSync, writeFileSync, closeSync, existsSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { once } from "node:events";
import { ensureEnvironment } from "../../src/environments/index.js";
import { ensureVmArtifacts } from "../../src/environments/vm/index.js";
import { QemuDriver } from "../../src/drivers/qemu/driver.js";
import type { SandboxHandle, SandboxSpec, VmBootFiles } from "../../src/drivers/types.js";
import { AgentClient } from "../../src/agent/client.js";
import { missingForVm, sh } from "../helpers/vm-fixture.js";
import { spawnCli } from "../helpers/cli.js";
import { processesMentioning, waitFor } from "../helpers/sandbox.js";
import { hostAddress, outsideAndLoopback } from "../helpers/outside.js";
import { lookup } from "node:dns/promises";
import { findExecutable, qemuBinaryName } from "../../src/drivers/availability.js";
import { readSnapshot, removeSnapshot, snapshotPlan } from "../../src/drivers/qemu/snapshot.js";
import { agentBinaryPath } from "../../src/util/agent-binary.js";
import { PASST_NETWORK } from "../../src/drivers/qemu/passt.js";
import { hostProcesses } from "../helpers/crash.js";

const skip = missingForVm() ?? false;
const state = mkdtempSync(join(tmpdir(), "pyro-snap-"));
after(() => rmSync(state, { recursive: true, force: true }));

let boot: VmBootFiles;
let rootfs = "";
let snapDir = "";
const driver = new QemuDriver();
let n = 0;
let bin256 = "";

function spec(over: Partial<SandboxSpec> = {}): SandboxSpec {
  const id = `snap${n++}`;
  const dir = join(state, id);
  mkdirSync(dir, { recursive: true });
  return { id, dir, rootfs, vcpu_count: 1, mem_mib: 256, pids_max: 512, disk_mib: 64, keep_layer: false, network: false, deadline: null, die_with_parent: true, hostname: id, vm: boot, ...over };
}

async function stop(h: SandboxHandle): Promise<void> {
  await driver.kill(h);
  driver.cleanup(h);
}

async function run(h: SandboxHandle, script: string, timeoutMs?: number): Promise<string> {
  const c = await AgentClient.connect(h.socket, { timeoutMs: 10_000 });
  try {
    const r = await sh(c, script, timeoutMs);
    assert.equal(r.code, 0, r.err);
    return r.out;
  } finally {
    c.close();
  }
}

const snapshots = () => (existsSync(snapDir) ? readdirSync(snapDir).filter((f) => !f.endsWith(".lock")).sort() : []);

describe("snapshots of one-shot qemu VMs", { skip, concurrency: false }, () => {
  before(async () => {
    const env = await ensureEnvironment("busybox");
    rootfs = env.rootfs;
    const a = await ensureVmArtifacts(env);
    boot = { kernel: a.kernel.path, initramfs: a.initramfs.path, root_image: a.rootfs_image.path };
    snapDir = join(join(a.rootfs_image.path, ".."), "snapshots");
    rmSync(snapDir, { recursive: true, force: true });
  });

  test("the first one-shot VM makes the snapshot, the next restores it; two restored VMs have different RNG output, each its own boot_id, and the host's clock", async () => {
    const t0 = performance.now();
    const a = await driver.start(spec());
    const first = performance.now() - t0;
    try {
      assert.equal(a.boot, "restored", `the maker restores what it made (${a.boot_detail ?? ""})`);
      const files = snapshots();
      assert.equal(files.length, 2, `one snapshot and its record: ${files.join(", ")}`);
      assert.ok(files.some((f) => f.endsWith(".bin")) && files.some((f) => f.endsWith(".json")));
      const bin = join(snapDir, files.find((f) => f.endsWith(".bin"))!);
      bin256 = bin;
      const mtime = statSync(bin).mtimeMs;
      const t1 = performance.now();
      const b = await driver.start(spec());
      const second = performance.now() - t1;
      try {
        assert.equal(b.boot, "restored");
        assert.equal(statSync(bin).mtimeMs, mtime, "the second VM did not remake the snapshot");
        console.log(`# make + restore: ${first.toFixed(0)} ms; restore: ${second.toFixed(0)} ms`);
        const probe = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/boot_id; date +%s; hostname";
        const [oa, ob] = await Promise.all([run(a, probe), run(b, probe)]);
        const [ra, ida, da, ha] = oa.trim().split("\n");
        const [rb, idb, db] = ob.trim().split("\n");
        assert.equal(ra!.length, 32);
        assert.notEqual(ra, rb, "two VMs restored from one snapshot read different bytes from /dev/urandom (the vmm's SYNC reseeded each)");
        // The kernel makes boot_id at its first read, not at boot: nothing reads it before the snapshot,
        // so each restored VM makes its own, after SYNC reseeded it (measured; were it read before, all would share it).
        assert.notEqual(ida, idb, "each restored VM makes its own boot_id at its first read");
        for (const d of [da, db]) assert.ok(Math.abs(Number(d) - Date.now() / 1000) < 3, `a restored VM's clock is the host's (${d})`);
        assert.equal(ha, "pyro", "a restored VM has the template's hostname");
      } finally {
        await stop(b);
      }
    } finally {
      await stop(a);
    }
  });

  test("another shape gets a snapshot of its own; a VM with a disk of its own (a task) boots cold", async () => {
    const before = snapshots().length;
    const a = await driver.start(spec({ mem_mib: 192 }));
    try {
      assert.equal(a.boot, "restored");
      assert.equal(snapshots().length, before + 2, "a second key for a second shape");
      assert.equal((await run(a, "echo ok")).trim(), "ok");
    } finally {
      await stop(a);
    }
    const t = await driver.start(spec({ die_with_parent: false, keep_layer: true }));
    try {
      assert.equal(t.boot, "cold");
      assert.notEqual((await run(t, "hostname")).trim(), "pyro");
    } finally {
      await stop(t);
    }
    assert.equal(snapshots().length, before + 2);
  });

  test("a one-shot VM with network restores from a snapshot of its own shape, against its own passt: it reaches the host's address, has its DNS, not the host's loopback, and no neighbour of the template's", async (t) => {
    const addr = hostAddress();
    if (!addr) return t.skip("this host has no non-loopback IPv4 address to stand in for the outside");
    if (!findExecutable("passt")) return t.skip("passt is not installed (apt-get install passt)");
    const { outside, loopback } = await outsideAndLoopback(t, addr);
    const hostResolves = await lookup("deb.debian.org").then(() => true, () => false);
    const passts = () => hostProcesses().filter((p) => /(^|\/)passt(\.avx2)?$/.test(p.argv[0] ?? "") && p.argv.some((a) => a.includes(`${state}/`)));
    const script = [
      // Before any traffic: the restored guest's neighbour table holds nothing (the template's had no peer to learn).
      "echo \"neighbours=$(tail -n +2 /proc/net/arp | wc -l)\"",
      `echo "outside=$(timeout 10 nc ${addr} ${outside.port} </dev/null | head -n 1)"`,
      // The host's loopback, by every name a guest could use for it: its own 127.0.0.1 (the guest's), the gateway, the DNS forwarder.
      ...["127.0.0.1", "10.0.2.2", "10.0.2.3"].map((ip) => `echo "via ${ip}=$(timeout 5 nc ${ip} ${loopback.port} </dev/null 2>/dev/null | head -n 1)"`),
      "grep -q '10.0.2.15' /proc/net/fib_trie && echo 'inet 10.0.2.15'",
      "awk '$2 == \"00000000\" { print \"default via \" $3 \" dev \" $1 }' /proc/net/route",
      "cat /etc/resolv.conf",
      "nslookup deb.debian.org >/dev/null 2>&1 && echo resolved || echo unresolved",
    ].join("; ");
    // This shape's snapshot, by its key (the directory may hold other shapes', and other builds' of the agent).
    const netSpec = spec({ network: true });
    const plan = snapshotPlan(netSpec, { kind: "ram", mib: netSpec.disk_mib }, "tcg", findExecutable(qemuBinaryName())!, agentBinaryPath())!;
    const plain = spec();
    assert.notEqual(plan.key, snapshotPlan(plain, { kind: "ram", mib: plain.disk_mib }, "tcg", findExecutable(qemuBinaryName())!, agentBinaryPath())!.key, "the network is a shape of its own");
    removeSnapshot(plan);
    for (const round of ["the maker", "a later one", "one whose snapshot is damaged"]) {
      if (round === "one whose snapshot is damaged") {
        // qemu refuses it (its stream's magic overwritten) though its record matches (the sha256 recomputed): the restore
        // fails after its passt was spawned, that passt is killed with it, and the VM boots cold with a passt of its own.
        const bin = plan.bin;
        const fd = openSync(bin, "r+");
        writeSync(fd, Buffer.from("XXXX"), 0, 4, 0);
        closeSync(fd);
        const record = plan.meta;
        const meta = JSON.parse(readFileSync(record, "utf8")) as { sha256: string; stamp?: string };
        meta.sha256 = createHash("sha256").update(readFileSync(bin)).digest("hex");
        delete meta.stamp;
        writeFileSync(record, JSON.stringify(meta));
      }
      const h = await driver.start(spec({ network: true }));
      try {
        if (round === "one whose snapshot is damaged") {
          assert.equal(h.boot, "cold");
          assert.match(h.boot_detail ?? "", /did not restore.*Not a migration stream/, "qemu refused it (the record's check passed)");
        } else assert.equal(h.boot, "restored", `${round} restores (${h.boot_detail ?? ""})`);
        assert.deepEqual(h.network, PASST_NETWORK);
        assert.equal(h.dns_configured, true);
        assert.equal(passts().length, 1, "its own passt (a failed restore's is gone)");
        // The loopback probes wait out their 5 s timeouts: more than run()'s 20 s default on a loaded host.
        const out = await run(h, script, 90_000);
        assert.match(out, /^neighbours=0$/m, out);
        assert.match(out, /^outside=from-outside$/m, `${round} reaches the host's address through its passt: ${out}`);
        assert.doesNotMatch(out, /from-host-loopback/, "the host's loopback is unreachable from the guest");
        for (const ip of ["127.0.0.1", "10.0.2.2", "10.0.2.3"]) assert.match(out, new RegExp(`^via ${ip.replace(/\./g, "\\.")}=$`, "m"));
        assert.match(out, /^inet 10\.0\.2\.15$/m);
        assert.match(out, /^default via 0202000A dev eth0$/m, "the default route is via 10.0.2.2");
        assert.match(out, /^nameserver 10\.0\.2\.3$/m, "resolv.conf names passt's DNS forwarder");
        if (hostResolves) assert.match(out, /^resolved$/m, "a name resolves through the forwarder");
        if (h.boot === "restored") assert.equal((await run(h, "hostname")).trim(), "pyro", "the template's hostname: it is a restore");
      } finally {
        await stop(h);
      }
      await waitFor(() => passts().length === 0, 10_000, "passt to end with its VM");
      if (round === "the maker") assert.ok(readSnapshot(plan), "the maker made this shape's snapshot");
    }
    assert.equal(existsSync(plan.bin) || existsSync(plan.meta), false, "the snapshot qemu refused was removed");
  });

  test("a truncated snapshot is rebuilt; one damaged inside is removed, that VM boots cold within a bounded time, and the next rebuilds it", async () => {
    // The 256 MiB shape's snapshot, made by the first test.
    const newest = bin256;
    truncateSync(newest, Math.floor(statSync(newest).size / 2));
    const a = await driver.start(spec());
    try {
      assert.equal(a.boot, "restored", "the size check saw the truncation: remade, then restored");
      assert.ok(statSync(newest).size > 1_000_000);
    } finally {
      await stop(a);
    }
    // Same size, other bytes: only the sha256 (checked as it streams) or qemu's own checks can tell.
    const fd = openSync(newest, "r+");
    writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, Math.floor(statSync(newest).size / 2));
    closeSync(fd);
    const t0 = performance.now();
    const b = await driver.start(spec());
    const took = performance.now() - t0;
    try {
      assert.equal(b.boot, "cold");
      assert.match(b.boot_detail ?? "", /did not restore/);
      assert.ok(took < 40_000, `the fallback took ${took.toFixed(0)} ms`);
      assert.equal(existsSync(newest), false, "the damaged snapshot was removed");
      assert.equal((await run(b, "echo ok")).trim(), "ok");
    } finally {
      await stop(b);
    }
    const c = await driver.start(spec());
    try {
      assert.equal(c.boot, "restored");
      assert.ok(existsSync(newest), "rebuilt");
    } finally {
      await stop(c);
    }
  });

  test("two makers at once make one snapshot and both restore it; no temp file is left", async () => {
    rmSync(snapDir, { recursive: true, force: true });
    const [a, b] = await Promise.all([driver.start(spec()), driver.start(spec())]);
    try {
      assert.equal(a.boot, "restored");
      assert.equal(b.boot, "restored");
      assert.deepEqual(snapshots().map((f) => f.replace(/^[0-9a-f]+/, "K")), ["K.bin", "K.json"]);
    } finally {
      await Promise.all([stop(a), stop(b)]);
    }
  });

  for (const point of ["snapshot:migrating", "snapshot:commit"]) test(`kill -9 of pyro at ${point} leaves no process and no snapshot; the next run removes the temp file and makes it`, async () => {
    rmSync(snapDir, { recursive: true, force: true });
    const st = mkdtempSync(join(tmpdir(), "pyro-snapk-"));
    try {
      const env = { PYRO_STATE_DIR: st, PYRO_TEST_PAUSE_AT: point };
      const child = spawnCli(["run", "--driver", "qemu", "busybox", "--", "true"], env);
      let err = "";
      child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
      await waitFor(() => err.includes(`paused at ${point}`), 120_000, `the pause point (${err})`);
      const temps = () => (existsSync(snapDir) ? readdirSync(snapDir).filter((f) => f.includes(".tmp-")) : []);
      assert.equal(temps().length, 1, "the temp file exists while it is made");
      child.kill("SIGKILL");
      await once(child, "exit");
      await waitFor(() => processesMentioning(st).length === 0, 10_000, "the template's supervisor and qemu to die with pyro");
      assert.deepEqual(snapshots().filter((f) => !f.includes(".tmp-")), [], "no snapshot, no record");
      const again = spawnCli(["run", "--driver", "qemu", "busybox", "--", "hostname"], { PYRO_STATE_DIR: st });
      let out = "";
      again.stdout!.on("data", (d: Buffer) => (out += d.toString()));
      const [code] = (await once(again, "exit")) as [number];
      assert.equal(code, 0);
      assert.equal(out.trim(), "pyro", "served by a restore");
      assert.deepEqual(temps(), [], "the killed maker's temp file is gone");
      assert.equal(snapshots().length, 2);
    } finally {
      rmSync(st, { recursive: true, force: true });
    }
  });
});
