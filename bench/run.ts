/**
 * pyro-mcp benchmarks: each figure is a ratio of ours against the bare
 * mechanism, measured side by side in this one run (medians, interleaved so
 * that machine noise hits both sides alike).
 *
 *   npm run bench                 all
 *   npm run bench -- exec push    some (start, cli, exec, concurrent, push)
 *
 * Needs a build (npm run build) and the busybox environment (built offline
 * on first use).
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "../src/index.js";
import { ensureEnvironment } from "../src/environments/index.js";
import { AgentClient } from "../src/agent/client.js";
import { sandboxOwner } from "../src/util/sandbox-user.js";
import { agentBinaryPath } from "../src/util/agent-binary.js";
import { findExecutable } from "../src/drivers/availability.js";

const root = new URL("..", import.meta.url).pathname;
const CLI = join(root, "dist", "pyro.cjs");
const wanted = process.argv.slice(2);
const run = (name: string) => !wanted.length || wanted.includes(name);

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

function spawnWait(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: "ignore", env: env ? { ...process.env, ...env } : process.env });
    child.on("error", reject);
    child.on("exit", (code) => resolve(code ?? -1));
  });
}

/** Runs a and b alternately `n` times (after `warm` warm-ups each) and reports medians and their ratio. */
async function compare(label: string, target: number, n: number, a: [string, () => Promise<unknown>], b: [string, () => Promise<unknown>], warm = 3): Promise<void> {
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
  const verdict = target === Infinity ? "(for reference)" : `(target <= ${target}x) ${ratio <= target ? "ok" : "OVER TARGET"}`;
  console.log(`${label}\n  ${a[0]}: ${ma.toFixed(1)} ms   ${b[0]}: ${mb.toFixed(1)} ms   ratio ${ratio.toFixed(2)}x ${verdict}`);
}

const stateDir = mkdtempSync(join(tmpdir(), "pyro-bench-"));
const pyro = new Pyro({ stateDir });
const env = await ensureEnvironment("busybox");
console.log(`pyro-mcp bench: node ${process.version}, state ${stateDir}\n`);

try {
  if (run("start")) {
    await compare(
      "runInVm(true) on busybox, in-process, vs a bare bwrap over the same rootfs",
      2,
      30,
      ["runInVm", () => pyro.runInVm({ environment: "busybox", command: ["true"] })],
      ["bwrap --ro-bind ROOTFS / true", () => spawnWait("bwrap", ["--unshare-all", "--ro-bind", env.rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"])],
    );
    // As root, sandboxes no longer run as root: the like-for-like mechanism is an
    // unprivileged bwrap started through pyro-agent launch (docs/security.md).
    const owner = sandboxOwner();
    if (owner) {
      const agent = agentBinaryPath();
      const staged = `/run/pyro${env.rootfs}`;
      const launch = ["launch", "--uid", String(owner.uid), "--gid", String(owner.gid), "--bind", env.rootfs, "--", findExecutable("bwrap")!, "--unshare-all", "--ro-bind", staged, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"];
      await compare(
        "  the same against a bare bwrap as the sandbox uid (pyro-agent launch + bwrap: what a root host now runs, safely)",
        Infinity,
        30,
        ["runInVm", () => pyro.runInVm({ environment: "busybox", command: ["true"] })],
        ["launch + bwrap --ro-bind ROOTFS / true", () => spawnWait(agent, launch)],
      );
    }
    // What the CLI daemon does: a warm spare per shape, booted in the background
    // (here while the baseline runs, so this ratio flatters us a little).
    const pooled = new Pyro({ stateDir, warmPool: true });
    await compare(
      "  the same with a warm pool (Pyro({ warmPool: true }), as the CLI daemon runs it)",
      Infinity,
      30,
      ["runInVm, warm pool", () => pooled.runInVm({ environment: "busybox", command: ["true"] })],
      ["bwrap --ro-bind ROOTFS / true", () => spawnWait("bwrap", ["--unshare-all", "--ro-bind", env.rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"])],
    );
    await pooled.close();
  }

  if (run("cli")) {
    // The daemon is keyed by the environment: this state directory gets its own, stopped at the end.
    const cliEnv = { PYRO_STATE_DIR: stateDir };
    const pyroRun = (extra: NodeJS.ProcessEnv = {}) => () => spawnWait(process.execPath, [CLI, "run", "busybox", "-q", "--", "true"], { ...cliEnv, ...extra });
    try {
      await compare(
        "`pyro run busybox -- true` as a whole process (through the warm daemon) vs `node -e 0`",
        1.5,
        20,
        ["pyro run", pyroRun()],
        ["node -e 0", () => spawnWait(process.execPath, ["-e", "0"])],
      );
      await compare(
        "  the same without the daemon (PYRO_DAEMON=0: load the runtime, boot, exec, delete in one process) vs `node -e 0`",
        Infinity,
        20,
        ["pyro run, in-process", pyroRun({ PYRO_DAEMON: "0" })],
        ["node -e 0", () => spawnWait(process.execPath, ["-e", "0"])],
      );
      const floorScript = `require("child_process").spawn("bwrap", ${JSON.stringify(["--unshare-all", "--ro-bind", env.rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"])}, { stdio: "ignore" })`;
      await compare(
        "  the floor of any in-process design: a node process that only spawns a bare bwrap, vs `node -e 0`",
        Infinity,
        20,
        ["node + bare bwrap", () => spawnWait(process.execPath, ["-e", floorScript])],
        ["node -e 0", () => spawnWait(process.execPath, ["-e", "0"])],
      );
    } finally {
      await spawnWait(process.execPath, [CLI, "daemon", "stop"], cliEnv);
    }
  }

  if (run("exec")) {
    const vm = await pyro.createVm({ environment: "busybox", ttl_seconds: 600 });
    await pyro.startVm({ vm_id: vm.vm_id });
    const record = pyro.vms.get(vm.vm_id);
    const client = await AgentClient.connect(record.sandbox!.socket);
    const execTrue = async () => {
      const h = client.exec({ argv: ["true"], env: { PATH: "/bin" }, cwd: "/", timeoutMs: 10_000 });
      await h.result;
    };
    await compare(
      "exec round-trip in a running sandbox (one agent connection) vs a host spawn('true')",
      3,
      100,
      ["agent exec", execTrue],
      ["spawn true", () => spawnWait("true", [])],
      10,
    );
    client.close();
    await pyro.deleteVm({ vm_id: vm.vm_id });

    const task = await pyro.createTask({ environment: "busybox" });
    await compare(
      "execTask(true) (lock, connect, handshake, journal, logs) vs a host spawn('true')",
      10,
      50,
      ["execTask", () => pyro.execTask({ task_id: task.task_id, command: ["true"] })],
      ["spawn true", () => spawnWait("true", [])],
    );
    await pyro.deleteTask({ task_id: task.task_id });
  }

  if (run("concurrent")) {
    const n = 32;
    const t = performance.now();
    const results = await Promise.all(Array.from({ length: n }, (_, i) => pyro.runInVm({ environment: "busybox", command: `echo ${i}` })));
    const ms = performance.now() - t;
    const ok = results.every((r, i) => r.exit_code === 0 && r.stdout === `${i}\n`);
    console.log(`${n} concurrent runInVm: ${ok ? "all succeeded" : "SOME FAILED"} in ${ms.toFixed(0)} ms = ${((n / ms) * 1000).toFixed(1)} sandboxes/s`);
  }

  if (run("push")) {
    // 10,000 files, 200 MB: 9,990 small files and 10 large ones.
    const src = mkdtempSync(join(tmpdir(), "pyro-bench-src-"));
    const block = Buffer.alloc(1 << 20, 7);
    for (let d = 0; d < 100; d++) {
      mkdirSync(join(src, `d${d}`));
      for (let f = 0; f < 100; f++) {
        if (d === 0 && f < 10) writeFileSync(join(src, `d${d}`, `big${f}`), Buffer.concat(Array.from({ length: 19 }, () => block)));
        else writeFileSync(join(src, `d${d}`, `f${f}`), block.subarray(0, 1024));
      }
    }
    const task = await pyro.createTask({ environment: "busybox" });
    const dest = mkdtempSync(join(tmpdir(), "pyro-bench-dst-"));
    await compare(
      "task sync push of 10,000 files / 200 MB vs a local `tar -cf - | tar -xf -` of the same tree (ratio = time ours / time tar; target speed >= 0.5x)",
      2,
      3,
      ["pushTaskSync", () => pyro.pushTaskSync({ task_id: task.task_id, source_path: src })],
      [
        "tar | tar",
        async () => {
          rmSync(dest, { recursive: true, force: true });
          mkdirSync(dest);
          spawnSync("sh", ["-c", `tar -C '${src}' -cf - . | tar -C '${dest}' -xf -`]);
        },
      ],
      1,
    );
    const mem = process.memoryUsage();
    console.log(`  bench process after pushes: rss ${(mem.rss / 2 ** 20).toFixed(0)} MiB (the 200 MB tree is streamed, not held)`);
    await pyro.deleteTask({ task_id: task.task_id });
    rmSync(src, { recursive: true, force: true });
    rmSync(dest, { recursive: true, force: true });
  }
} finally {
  for (const v of (await pyro.listVms()).vms) await pyro.deleteVm({ vm_id: v.vm_id }).catch(() => undefined);
  for (const t of (await pyro.listTasks()).tasks) await pyro.deleteTask({ task_id: t.task_id }).catch(() => undefined);
  rmSync(stateDir, { recursive: true, force: true });
}
