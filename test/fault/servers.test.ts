import { test } from "node:test";
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { killPid, liveDaemonsOf, pausedPid, spawnPyro, type Spawned } from "../helpers/crash.js";
import { ROOT } from "../helpers/cli.js";
import { ENV, pick, random, randomDelay, sleep, Tally, World } from "./harness.js";

/**
 * kill -9 of the long-lived processes: the CLI daemon (`pyro daemon serve`,
 * docs/daemon.md) in the middle of runs it serves and at named points of its
 * boots, the CLI client of a daemon run, and the MCP server (`pyro mcp serve`
 * over stdio) in the middle of each tool call and at named points.
 */

const DAEMON_ROUNDS = Number(process.env.PYRO_FAULT_DAEMON ?? 8);
const MCP_ROUNDS = Number(process.env.PYRO_FAULT_MCP ?? 60);
const BOOT = ["boot:groups", "boot:spawned", "boot:info", "boot:held", "boot:ready"];

async function until(fn: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

function alive(s: Spawned): boolean {
  return s.child.exitCode === null && s.child.signalCode === null;
}

test("kill -9 of the CLI daemon and of its clients", { timeout: 600_000 }, async (t) => {
  const tally = new Tally("daemon");
  const world = new World(t);
  const runtime = join(world.base, "run");
  mkdirSync(runtime, { mode: 0o700 });
  let point = "";
  const env = () => ({ PYRO_STATE_DIR: world.stateDir, XDG_RUNTIME_DIR: runtime, PYRO_DAEMON_IDLE_SECONDS: "120", ...(point ? { PYRO_TEST_PAUSE_AT: point } : {}) });
  // The socket of each configuration (the pause point is part of the daemon's key), as `pyro daemon status` names it.
  const socketOf = new Map<string, string>();
  const socket = () => {
    let path = socketOf.get(point);
    if (!path) {
      const r = spawnSync(process.execPath, ["dist/pyro.cjs", "daemon", "status", "--json"], { cwd: ROOT, env: { ...process.env, ...env() }, encoding: "utf8", timeout: 30_000 });
      path = (JSON.parse(r.stdout) as { socket: string }).socket;
      socketOf.set(point, path);
    }
    return path;
  };
  const inode = (path: string) => {
    try {
      return statSync(path).ino;
    } catch {
      return 0;
    }
  };
  let daemon: Spawned | null = null;
  /** Starts our daemon and waits until it listens: it renames its socket into place once listening, so a new inode means ready. */
  const startDaemon = async (): Promise<{ pid: number; problems: string[] }> => {
    const path = socket();
    const before = inode(path);
    daemon = spawnPyro(["daemon", "serve", "--idle-seconds", "120"], env());
    const listening = await until(() => (inode(path) !== 0 && inode(path) !== before) || !alive(daemon!), 30_000);
    const problems = listening && alive(daemon) ? [] : [`the daemon never listened on ${path}: ${daemon.stderr().slice(-300)}`];
    return { pid: daemon.child.pid!, problems };
  };
  /** Waits for a process the round killed or expects to end; one that had to be killed for hanging is a failure. */
  const ended = async (s: Spawned | null, what: string): Promise<string[]> => {
    if (!s) return [];
    await s.exited;
    return s.hung() ? [`${what} hung (killed after its limit); stderr: ${s.stderr().slice(-500)}`] : [];
  };
  // Stops ours and any daemon a client started on its own after ours was killed (it would keep a spare of its own).
  const stopDaemon = async () => {
    if (daemon && alive(daemon)) {
      daemon.child.kill("SIGTERM");
      await daemon.exited;
    }
    daemon = null;
    // SIGTERM, then SIGKILL: one may be frozen at a PYRO_TEST_PAUSE_AT point (inherited from its client),
    // where no signal handler runs. A killed one's spares are reaped like any dead owner's.
    for (const sig of ["SIGTERM", "SIGKILL"] as const) {
      for (const other of liveDaemonsOf(world.stateDir)) {
        try {
          process.kill(other, sig);
        } catch {
          /* gone */
        }
      }
      if (await until(() => liveDaemonsOf(world.stateDir).length === 0, 1_500)) break;
    }
  };
  t.after(stopDaemon);
  const run = () => spawnPyro(["run", ENV, "--", "sh", "-c", "echo hi; sleep 0.1"], env());
  const onlySpares = () => {
    try {
      return readdirSync(join(world.stateDir, "vms")).every((n) => !n.startsWith("vm_") || world.pyro.vms.store.read(n)?.spare);
    } catch {
      return true;
    }
  };

  for (let round = 0; round < DAEMON_ROUNDS; round++) {
    // 1. The daemon, in the middle of a run it serves, at a random moment.
    point = "";
    let started = await startDaemon();
    let client = run();
    const kind1 = "daemon (serving a run)";
    await Promise.race([sleep(randomDelay(kind1)), client.exited]);
    killPid(started.pid);
    // The client reports the daemon gone, or (not yet accepted) runs in-process and ends.
    const problems1 = [...started.problems, ...(await ended(client, "the client")), ...(await ended(daemon, "the killed daemon"))];
    tally.kill(kind1, "random", [...problems1, ...(await world.check())]);
    // A client that fell back in-process starts a daemon of its own: not this round's to keep.
    await stopDaemon();

    // 2. The daemon at a named point of the run's boot (the client has the same PYRO_TEST_PAUSE_AT, so the same daemon key).
    point = pick(BOOT);
    started = await startDaemon();
    client = run();
    const paused = await pausedPid(daemon!, 20_000).catch(() => null);
    if (paused) {
      killPid(paused);
      // The client may fall back to running in-process, with the same PYRO_TEST_PAUSE_AT: it then
      // freezes at that point too, and would wait forever. It is killed there like the daemon was.
      const fellBack = await pausedPid(client, 30_000).catch(() => null);
      if (fellBack) killPid(fellBack);
      const problems2 = [...started.problems, ...(await ended(client, "the client")), ...(await ended(daemon, "the killed daemon"))];
      // A daemon the client started after ours died is alive and owns its spare.
      tally.kill("daemon (booting a run)", point, [...problems2, ...(await world.check({}, { liveOwners: liveDaemonsOf(world.stateDir) }))]);
    } else {
      tally.missed("daemon (booting a run)", point, `never paused: ${started.problems.join("; ")} ${daemon!.stderr().slice(-300)} / client: ${client.stderr().slice(-300)}`, true);
      // The client may be frozen at the point itself (in-process): it ends here too.
      killPid(started.pid);
      killPid(client.child.pid!);
      await client.exited;
    }
    await stopDaemon();

    // 3. A client of a live daemon, at a random moment: the daemon removes the run's sandbox; its spare stays, its own.
    point = "";
    started = await startDaemon();
    for (let k = 0; k < 2; k++) {
      client = run();
      const kind3 = "cli run through the daemon";
      const startedAt = Date.now();
      await Promise.race([sleep(Math.floor(random() * 250)), client.exited]);
      if (alive(client)) {
        killPid(client.child.pid!);
        await client.exited;
        await until(onlySpares, 10_000);
        await sleep(100);
        tally.kill(kind3, "random", [...started.problems, ...(await world.check({}, { liveOwners: [started.pid, ...liveDaemonsOf(world.stateDir)] }))]);
      } else tally.missed(kind3, "random", `completed in ${Date.now() - startedAt} ms`, false);
    }
    await stopDaemon();
  }
  tally.finish();
});

interface McpServer {
  s: Spawned;
  call(name: string, args: Record<string, unknown>): void;
  responded: () => boolean;
}

async function mcpServer(world: World, point: string): Promise<McpServer> {
  const s = spawnPyro(["mcp", "serve", "--allow-source-root", world.root], world.env(point ? { PYRO_TEST_PAUSE_AT: point } : {}), "pipe");
  const send = (m: unknown) => s.child.stdin!.write(JSON.stringify(m) + "\n");
  s.child.stdin!.on("error", () => undefined);
  send({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "fault", version: "0" } } });
  await until(() => s.stdout().includes('"id":1') || !alive(s), 15_000);
  send({ jsonrpc: "2.0", method: "notifications/initialized" });
  return {
    s,
    call: (name, args) => send({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name, arguments: args } }),
    responded: () => s.stdout().includes('"id":2'),
  };
}

test("kill -9 of the MCP server (stdio) during each tool call", { timeout: 600_000 }, async (t) => {
  const tally = new Tally("mcp server");
  const world = new World(t);
  const tools = ["task_create", "task_create --network", "vm_run", "vm_run --network", "task_exec", "task_exec (boots)", "task_sync_push", "task_delete"] as const;
  for (let round = 0; round < MCP_ROUNDS; round++) {
    const tool = pick(tools);
    const targeted = round % 2 === 1 && !["task_delete", "task_exec", "task_sync_push"].includes(tool);
    const point = targeted ? pick(tool.endsWith("--network") ? [...BOOT, "pasta:forked"] : tool.startsWith("task_create") ? [...BOOT, "task-create:booted", "task-create:seeded"] : BOOT) : "random";
    let args: Record<string, unknown>;
    let expect: Parameters<World["check"]>[0] = {};
    const network = tool.endsWith("--network");
    if (tool.startsWith("task_create")) args = { environment: ENV, source_path: world.src, network };
    else if (tool.startsWith("vm_run")) args = { environment: ENV, command: "echo hi", network };
    else {
      const id = await world.task();
      await world.check();
      if (tool.endsWith("(boots)") || targeted) world.stopSandbox(id);
      if (tool.startsWith("task_exec")) args = { task_id: id, command: "echo x >> /workspace/log; sleep 0.2" };
      else if (tool === "task_sync_push") {
        const { next } = world.bump();
        expect = { pushed: { id, next } };
        args = { task_id: id, source_path: world.src };
      } else args = { task_id: id };
    }
    const kind = `mcp ${tool}`;
    const server = await mcpServer(world, targeted ? point : "");
    const startedAt = Date.now();
    server.call(tool.split(" ")[0]!, args);
    let killed = false;
    if (targeted) {
      const pid = await pausedPid(server.s, 20_000).catch(() => null);
      if (pid) {
        killPid(pid);
        killed = true;
      }
    } else {
      const delay = randomDelay(kind);
      await until(() => server.responded() || Date.now() - startedAt >= delay, 30_000);
      if (!server.responded()) {
        killPid(server.s.child.pid!);
        killed = true;
      }
    }
    if (!killed) {
      killPid(server.s.child.pid!);
      await server.s.exited;
      tally.missed(kind, point, `the call completed first (${Date.now() - startedAt} ms)`, targeted);
      const problems = await world.check(expect);
      if (problems.length) tally.kill(kind, `${point} (completed)`, problems);
    } else {
      await server.s.exited;
      tally.kill(kind, point, await world.check(expect));
    }
    await world.prune();
  }
  tally.finish();
});
