/**
 * What VMs cost under QEMU TCG on this machine, each figure a ratio of ours
 * against the bare mechanism measured side by side in this one run (medians,
 * interleaved so that machine noise hits both sides alike):
 *
 *   boot      cold boot to agent ready vs a bare qemu boot of the same kernel to a busybox /init that exits at once
 *   restore   a one-shot runInVm through snapshot restore vs one that boots cold
 *   netrestore  the same with network (each VM its own passt): the driver's start to agent ready and back, then a
 *             one-shot runInVm, restored vs cold (the restored side is checked to be a restore)
 *   steps     where a restored one-shot's time goes: the restore to agent ready, its first command, a second, the teardown
 *   spare     a one-shot run through a warm spare, qemu vs namespace
 *   memory    host memory (PSS of qemu) of an idle 256 MiB VM, cold and restored, 1.5 s and 5 s after it is ready
 *             (free page reporting hands freed pages back 2 s after they were freed)
 *   mcp       vm_run round trips from the official MCP client over stdio, both drivers, with and without spares
 *
 *   npm run bench:vm                 all
 *   npm run bench:vm -- boot memory  some
 *
 * Needs a build (npm run build), qemu, and the busybox environment; the VM
 * artifacts and snapshots are made on first use in the cache.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, chmodSync, copyFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { Pyro } from "../src/index.js";
import { ensureEnvironment } from "../src/environments/index.js";
import { ensureVmArtifacts } from "../src/environments/vm/index.js";
import { QemuDriver } from "../src/drivers/qemu/driver.js";
import { AGENT_CHARDEV_FD, qemuArgs } from "../src/drivers/qemu/args.js";
import { execInSandbox } from "../src/runtime/sandbox-exec.js";
import type { SandboxSpec } from "../src/drivers/types.js";
import type { SpareEvent } from "../src/runtime/pool.js";

const root = new URL("..", import.meta.url).pathname;
const wanted = process.argv.slice(2);
const run = (name: string) => !wanted.length || wanted.includes(name);
const N = Number(process.env.PYRO_BENCH_N ?? 5);
const verdicts: string[] = [];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

/** Runs a and b alternately `n` times (after `warm` warm-ups each) and reports medians and their ratio against `target`. */
async function compare(label: string, target: number, n: number, a: [string, () => Promise<unknown>], b: [string, () => Promise<unknown>], warm = 1): Promise<void> {
  for (let i = 0; i < warm; i++) {
    await a[1]();
    await b[1]();
  }
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < n; i++) {
    ta.push(await time(a[1]));
    tb.push(await time(b[1]));
  }
  const ma = median(ta);
  const mb = median(tb);
  const ratio = ma / mb;
  const verdict = `(target <= ${target}x) ${ratio <= target ? "ok" : "OVER TARGET"}`;
  console.log(`${label}\n  ${a[0]}: ${ma.toFixed(0)} ms   ${b[0]}: ${mb.toFixed(0)} ms   ratio ${ratio.toFixed(2)}x ${verdict}`);
  verdicts.push(`${label.split(":")[0]}: ${ratio.toFixed(2)}x ${verdict}`);
}

const scratch = mkdtempSync(join(tmpdir(), "pyro-bench-vm-"));
const stateDir = join(scratch, "state");
mkdirSync(stateDir);
process.env.PYRO_STATE_DIR = stateDir;
const children: ChildProcess[] = [];

try {
  const env = await ensureEnvironment("busybox");
  const artifacts = await ensureVmArtifacts(env);
  const boot = { kernel: artifacts.kernel.path, initramfs: artifacts.initramfs.path, root_image: artifacts.rootfs_image.path };
  const driver = new QemuDriver();
  let n = 0;
  const spec = (): SandboxSpec => {
    const id = `bench${n++}`;
    const dir = join(stateDir, id);
    mkdirSync(dir, { recursive: true });
    return { id, dir, rootfs: env.rootfs, vcpu_count: 1, mem_mib: 256, pids_max: 1024, disk_mib: 64, keep_layer: false, network: false, deadline: null, die_with_parent: true, hostname: id, vm: boot };
  };
  const withSnapshots = async <T>(on: boolean, fn: () => Promise<T>): Promise<T> => {
    const before = process.env.PYRO_QEMU_SNAPSHOTS;
    process.env.PYRO_QEMU_SNAPSHOTS = on ? "on" : "off";
    try {
      return await fn();
    } finally {
      if (before === undefined) delete process.env.PYRO_QEMU_SNAPSHOTS;
      else process.env.PYRO_QEMU_SNAPSHOTS = before;
    }
  };
  const startStop = (snap: boolean, network = false) => () =>
    withSnapshots(snap, async () => {
      const h = await driver.start({ ...spec(), network });
      if (h.boot !== (snap ? "restored" : "cold")) throw new Error(`expected a ${snap ? "restored" : "cold"} VM, got ${h.boot} (${h.boot_detail ?? ""})`);
      await driver.kill(h);
      driver.cleanup(h);
    });
  console.log(`pyro VM bench (TCG): node ${process.version}, qemu ${spawnSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" }).stdout.split("\n")[0]}, load ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}, n=${N}\n`);

  if (run("boot")) {
    // The same kernel and qemu argv, an initramfs of busybox alone whose /init reboots at once (reboot=t: qemu -no-reboot exits).
    const ird = join(scratch, "bare");
    mkdirSync(join(ird, "bin"), { recursive: true });
    copyFileSync(existsSync("/bin/busybox") ? "/bin/busybox" : "/usr/bin/busybox", join(ird, "bin", "busybox"));
    writeFileSync(join(ird, "init"), "#!/bin/busybox sh\n/bin/busybox reboot -f\n");
    chmodSync(join(ird, "init"), 0o755);
    const cpio = spawnSync("sh", ["-c", `cd ${ird} && find . | cpio -o -H newc --quiet > ${join(scratch, "bare.cpio")}`]);
    if (cpio.status !== 0) throw new Error(`cpio: ${cpio.stderr}`);
    const bare = () =>
      new Promise<void>((resolve, reject) => {
        const s = spec();
        const argv = qemuArgs(s, { ...boot, initramfs: join(scratch, "bare.cpio") }, { kind: "ram", mib: 64 }, { qmp: join(s.dir, "q.sock") }, "tcg");
        // The agent's virtserialport is a chardev on an inherited socket (AGENT_CHARDEV_FD): a socket pair nobody reads.
        const q = spawn("qemu-system-x86_64", argv, { stdio: Array.from({ length: AGENT_CHARDEV_FD + 1 }, (_, i) => (i === AGENT_CHARDEV_FD ? "pipe" : "ignore")) });
        children.push(q);
        const timer = setTimeout(() => q.kill("SIGKILL"), 60_000);
        q.on("error", reject);
        q.on("exit", (code) => {
          clearTimeout(timer);
          if (code === 0) resolve();
          else reject(new Error(`bare qemu exited ${code}`));
        });
      });
    await compare("boot: cold boot to agent ready vs a bare qemu boot of the same kernel to a busybox /init that exits", 1.3, N, ["cold boot to agent", startStop(false)], ["bare kernel + busybox /init", bare]);
  }

  if (run("restore")) {
    const pyro = new Pyro({ stateDir, driver: "qemu" });
    const one = (snap: boolean) => () => withSnapshots(snap, () => pyro.runInVm({ environment: "busybox", command: "true", mem_mib: 256 }));
    await compare("restore: one-shot runInVm through snapshot restore vs booting cold", 0.15, N, ["restored", one(true)], ["cold boot", one(false)]);
  }

  if (run("netrestore")) {
    // With network: passt's start is on both sides; the cold side also pays the guest's network start (virtio_net, the interface).
    await compare("netrestore: a VM with network, start to agent ready and kill, restored vs cold", 0.15, N, ["restored with network", startStop(true, true)], ["cold with network", startStop(false, true)]);
    const pyro = new Pyro({ stateDir, driver: "qemu" });
    const one = (snap: boolean) => () => withSnapshots(snap, () => pyro.runInVm({ environment: "busybox", command: "true", mem_mib: 256, network: true }));
    await compare("netrestore-run: one-shot runInVm with network through snapshot restore vs booting cold", 0.15, N, ["restored with network", one(true)], ["cold with network", one(false)]);
  }

  if (run("steps")) {
    // The driver's own steps of a restored one-shot VM (runInVm adds its record and lock, a few ms): start returns once the
    // guest's agent answered HELLO and SYNC; the first command pays for qemu's empty translation cache, the second does not.
    const rows: Record<string, number[]> = { "restore to agent ready": [], "first command (true)": [], "second command (true)": [], "kill and cleanup": [] };
    await withSnapshots(true, async () => {
      for (let i = 0; i <= N; i++) {
        let t = performance.now();
        const h = await driver.start(spec());
        const ready = performance.now() - t;
        const times = [ready];
        for (let k = 0; k < 2; k++) {
          t = performance.now();
          const r = await execInSandbox(driver, h, { command: "true", timeout_seconds: 30, max_output_bytes: 4096 });
          if (r.exit_code !== 0) throw new Error(`exec failed: ${r.stderr}`);
          times.push(performance.now() - t);
        }
        t = performance.now();
        await driver.kill(h);
        driver.cleanup(h);
        times.push(performance.now() - t);
        if (i === 0) continue; // the first may make the snapshot
        Object.values(rows).forEach((xs, j) => xs.push(times[j]!));
      }
    });
    console.log(`steps: a restored one-shot VM, medians\n  ${Object.entries(rows).map(([k, xs]) => `${k}: ${median(xs).toFixed(0)} ms`).join("   ")}`);
  }

  if (run("spare")) {
    const pools: Record<string, { pyro: Pyro; ready: number }> = {};
    for (const d of ["qemu", "namespace"] as const) {
      const entry = { pyro: null as unknown as Pyro, ready: 0 };
      entry.pyro = new Pyro({ stateDir, driver: d, warmPool: true, onSpare: (e: SpareEvent) => void (e.kind === "ready" && entry.ready++) });
      pools[d] = entry;
    }
    const untilReady = async (d: string, count: number) => {
      const deadline = Date.now() + 120_000;
      while (pools[d]!.ready < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    };
    const runOn = (d: string) => async () => {
      const r = await pools[d]!.pyro.runInVm({ environment: "busybox", command: "true", mem_mib: 256 });
      if (r.exit_code !== 0) throw new Error(`${d} run failed`);
    };
    // The first run of each boots its own sandbox and leaves a spare; then only runs served by a spare are timed.
    for (const d of ["qemu", "namespace"]) await runOn(d)();
    const tq: number[] = [];
    const tn: number[] = [];
    for (let i = 0; i < N; i++) {
      for (const [d, into] of [["qemu", tq], ["namespace", tn]] as const) {
        await untilReady(d, i + 1);
        into.push(await time(runOn(d)));
      }
    }
    const ratio = median(tq) / median(tn);
    const verdict = `(target <= 2x) ${ratio <= 2 ? "ok" : "OVER TARGET"}`;
    console.log(`spare: a one-shot runInVm through a warm spare, qemu vs namespace\n  qemu: ${median(tq).toFixed(0)} ms   namespace: ${median(tn).toFixed(0)} ms   ratio ${ratio.toFixed(2)}x ${verdict}`);
    verdicts.push(`spare: ${ratio.toFixed(2)}x ${verdict}`);
    for (const p of Object.values(pools)) await p.pyro.close();
  }

  if (run("memory")) {
    const pss = (pid: number) => Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1] ?? NaN) / 1024;
    const qemuOf = (dir: string) =>
      readdirSync("/proc")
        .filter((p) => /^\d+$/.test(p))
        .map(Number)
        .filter((p) => {
          try {
            return readFileSync(`/proc/${p}/comm`, "utf8").startsWith("qemu") && readFileSync(`/proc/${p}/cmdline`, "utf8").includes(dir);
          } catch {
            return false;
          }
        });
    // Where a cold VM's PSS is: the guest's RAM, qemu's TCG code buffer, the kernel file qemu keeps mapped (its ELF loader's ROM copy).
    const parts = (pid: number) => {
      const out = { guest: 0, tcg: 0, vmlinux: 0 };
      let size = 0;
      let name = "";
      for (const l of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
        const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(l);
        if (m) {
          size = (parseInt(m[2]!, 16) - parseInt(m[1]!, 16)) / 1048576;
          name = m[3] ?? "";
        } else if (l.startsWith("Pss:")) {
          const v = Number(l.split(/\s+/)[1]) / 1024;
          if (name.endsWith("/vmlinux")) out.vmlinux += v;
          else if (!name && Math.round(size) === 256) out.guest += v;
          else if (!name && Math.round(size) === 1024) out.tcg += v;
        }
      }
      return out;
    };
    for (const snap of [false, true]) {
      const early: number[] = [];
      const settled: number[] = [];
      let split = "";
      for (let i = 0; i < 3; i++) {
        await withSnapshots(snap, async () => {
          const s = spec();
          const h = await driver.start(s);
          await new Promise((r) => setTimeout(r, 1500)); // idle: the boot's work settled
          for (const p of qemuOf(s.dir)) early.push(pss(p));
          await new Promise((r) => setTimeout(r, 3500)); // and what the guest freed reported (2 s after it was freed)
          for (const p of qemuOf(s.dir)) {
            settled.push(pss(p));
            const x = parts(p);
            split = `guest RAM ${x.guest.toFixed(0)}, TCG code ${x.tcg.toFixed(0)}, vmlinux mapping ${x.vmlinux.toFixed(0)} MiB`;
          }
          await driver.kill(h);
          driver.cleanup(h);
        });
      }
      const m = median(settled);
      const verdict = `(goal <= 150 MiB) ${m <= 150 ? "ok" : "OVER GOAL"}`;
      console.log(`memory: PSS of qemu for an idle 256 MiB guest, ${snap ? "restored" : "cold-booted"}: ${median(early).toFixed(0)} MiB at 1.5 s, ${m.toFixed(0)} MiB at 5 s ${verdict}\n  (${split})`);
      verdicts.push(`memory (${snap ? "restored" : "cold"}): ${m.toFixed(0)} MiB ${verdict}`);
    }
  }

  if (run("mcp")) {
    const cli = join(root, "dist", "cli.js");
    for (const d of ["namespace", "qemu"] as const) {
      const row: string[] = [];
      for (const spares of [false, true]) {
        const transport = new StdioClientTransport({
          command: process.execPath,
          args: [cli, "mcp", "serve", "--profile", "vm-run", ...(spares ? [] : ["--no-spares"])],
          env: { ...(process.env as Record<string, string>), PYRO_DRIVER: d, PYRO_STATE_DIR: stateDir },
          stderr: "pipe",
        });
        let log = "";
        transport.stderr?.on("data", (c: Buffer) => (log += c.toString()));
        const client = new Client({ name: "pyro-bench", version: "0" });
        await client.connect(transport);
        const readyCount = () => (log.match(/spare \S+ ready/g) ?? []).length;
        const call = () => client.callTool({ name: "vm_run", arguments: { environment: "busybox", command: "true", mem_mib: 256 } });
        await call(); // warm: the environment's artifacts and snapshot, the first spare
        const ts: number[] = [];
        for (let i = 0; i < N; i++) {
          if (spares) {
            const deadline = Date.now() + 60_000;
            while (readyCount() < i + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
          }
          ts.push(await time(call));
        }
        await client.close();
        row.push(`${spares ? "with spares" : "without spares"}: ${median(ts).toFixed(0)} ms`);
      }
      console.log(`mcp: vm_run round trip from the MCP client over stdio, ${d}\n  ${row.join("   ")}`);
    }
  }
  console.log(`\nsummary\n  ${verdicts.join("\n  ")}`);
} finally {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  await new Pyro({ stateDir }).reapExpired().catch(() => undefined);
  rmSync(scratch, { recursive: true, force: true });
}
