import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { collect, runCliSync as runCli, spawnCliPiped as spawnCli } from "../helpers/cli.js";
import { leftovers, waitFor } from "../helpers/sandbox.js";
import { encodeFrame, Frame, FrameReader, PROTOCOL_VERSION } from "../../src/daemon/protocol.js";

/**
 * The CLI daemon as users meet it: the first `pyro run` starts it, later runs
 * go through it and must behave exactly as in-process runs do, and it must
 * be reachable only by its user and only for `pyro run`.
 */

interface DaemonEnv {
  env: NodeJS.ProcessEnv;
  stateDir: string;
  runtimeDir: string;
}

function daemonEnv(t: TestContext): DaemonEnv {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-dst-"));
  const runtimeDir = mkdtempSync(join(tmpdir(), "pyro-drt-"));
  const env = { PYRO_STATE_DIR: stateDir, XDG_RUNTIME_DIR: runtimeDir, PYRO_DAEMON: "1", PYRO_DAEMON_IDLE_SECONDS: "120" };
  t.after(async () => {
    // Not spawnSync: a test's stand-in daemon lives in this process and must be able to answer.
    const stop = spawnCli(["daemon", "stop"], env);
    const limit = setTimeout(() => stop.kill("SIGKILL"), 60_000);
    await collect(stop);
    clearTimeout(limit);
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(runtimeDir, { recursive: true, force: true });
  });
  return { env, stateDir, runtimeDir };
}

function status(env: NodeJS.ProcessEnv): { running: boolean; pid?: number; requests?: number; active?: number; spares?: number; socket: string } {
  const r = runCli(["daemon", "status", "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** The first run, in-process, starts the daemon; resolves once it is up with a warm spare. */
async function startDaemon(env: NodeJS.ProcessEnv): Promise<number> {
  const first = runCli(["run", "busybox", "-q", "--", "true"], { env });
  assert.equal(first.status, 0, first.stderr);
  const s = await waitFor(() => {
    const st = status(env);
    return st.running && st.spares === 1 ? st : null;
  }, 20_000, "the daemon to start with a warm spare");
  return s.pid!;
}

const vmDirs = (stateDir: string) => {
  try {
    return readdirSync(join(stateDir, "vms")).filter((n) => !n.startsWith(".")); // deleted, on its way out
  } catch {
    return [];
  }
};
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test("the first pyro run starts the daemon; later runs go through it and behave as in-process runs", async (t) => {
  const { env, stateDir } = daemonEnv(t);
  const pid = await startDaemon(env);

  const cases: Array<{ args: string[]; input?: string }> = [
    { args: ["run", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 7"] },
    { args: ["run", "busybox", "-q", "--", "tr a-z A-Z | rev"], input: "hello\n" },
    { args: ["run", "busybox"] },
    { args: ["run", "nope:1", "--", "true"] },
    { args: ["run", "busybox", "--mem-mib", "lots", "--", "true"] },
    { args: ["run", "--help"] },
  ];
  for (const { args, input } of cases) {
    const inProcess = runCli(args, { env: { ...env, PYRO_DAEMON: "0" }, input });
    const viaDaemon = runCli(args, { env, input });
    assert.equal(viaDaemon.status, inProcess.status, `exit code of pyro ${args.join(" ")}: ${viaDaemon.stderr}`);
    assert.equal(viaDaemon.stdout, inProcess.stdout, `stdout of pyro ${args.join(" ")}`);
    // The summary line carries a duration; everything else on stderr is identical.
    const strip = (s: string) => s.replace(/ in \d+ ms;/, " in N ms;");
    assert.equal(strip(viaDaemon.stderr), strip(inProcess.stderr), `stderr of pyro ${args.join(" ")}`);
  }
  const json = runCli(["run", "busybox", "--json", "--timeout-seconds", "1", "--", "sleep", "30"], { env });
  assert.equal(json.status, 124);
  assert.equal(JSON.parse(json.stdout).timed_out, true);

  const s = status(env);
  assert.equal(s.pid, pid, "the same daemon served every run");
  assert.equal(s.requests, cases.length + 1);

  const stop = runCli(["daemon", "stop", "--json"], { env });
  assert.deepEqual(JSON.parse(stop.stdout), { stopped: true, pid });
  await waitFor(() => !alive(pid), 10_000, "the daemon to exit");
  assert.deepEqual(leftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
  assert.equal(status(env).running, false);
});

test("through the daemon, Ctrl-C, kill -9 of the client and a reader going away each stop the run and remove its sandbox", async (t) => {
  const { env, stateDir } = daemonEnv(t);
  const pid = await startDaemon(env);
  const onlySpare = () => {
    const st = status(env);
    return st.active === 0 && vmDirs(stateDir).length === 1 && st.spares === 1;
  };
  const started = () => waitFor(() => status(env).active === 1 && vmDirs(stateDir).length >= 1, 15_000, "the run to start in the daemon");

  const interrupted = spawnCli(["run", "busybox", "--", "sleep", "60"], env);
  await started();
  await new Promise((r) => setTimeout(r, 300));
  interrupted.kill("SIGINT");
  assert.equal(await new Promise((r) => interrupted.on("exit", r)), 130);
  await waitFor(onlySpare, 10_000, "only the spare to be left after Ctrl-C");

  const killed = spawnCli(["run", "busybox", "--", "sleep", "60"], env);
  await started();
  await new Promise((r) => setTimeout(r, 300));
  killed.kill("SIGKILL");
  await new Promise((r) => killed.on("exit", r));
  await waitFor(onlySpare, 10_000, "only the spare to be left after kill -9 of the client");

  // Killed while its command prints: the output that follows has no reader (the run once waited for one forever,
  // and the daemon could then never stop).
  const printing = spawnCli(["run", "busybox", "--", "sh", "-c", "while :; do echo line; done"], env);
  await new Promise<void>((resolve) => printing.stdout!.once("data", () => resolve()));
  printing.kill("SIGKILL");
  await new Promise((r) => printing.on("exit", r));
  await waitFor(onlySpare, 10_000, "only the spare to be left after kill -9 of a client whose command prints");

  const reader = spawnCli(["run", "busybox", "--", "sh", "-c", "while :; do echo line; done"], env);
  await new Promise<void>((resolve) => reader.stdout!.once("data", () => resolve()));
  reader.stdout!.destroy();
  assert.equal(await new Promise((r) => reader.on("exit", r)), 143);
  await waitFor(onlySpare, 10_000, "only the spare to be left after the reader went away");

  assert.equal(status(env).pid, pid);
  runCli(["daemon", "stop"], { env });
  await waitFor(() => !alive(pid), 10_000, "the daemon to exit");
  assert.deepEqual(leftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

/** Sends raw frames to the daemon's socket and collects what comes back until it closes. */
function rawExchange(socketPath: string, frames: Buffer[]): Promise<Array<{ type: number; payload: Buffer }>> {
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    const reader = new FrameReader();
    const got: Array<{ type: number; payload: Buffer }> = [];
    s.on("connect", () => frames.forEach((f) => s.write(f)));
    s.on("data", (d: Buffer) => got.push(...reader.push(d)));
    s.on("error", () => undefined);
    s.on("close", () => resolve(got));
    setTimeout(() => reject(new Error("the daemon kept a hostile connection open")), 10_000).unref();
  });
}

test("the daemon serves only `pyro run` of its own build, and cuts off a peer that sends garbage", async (t) => {
  const { env, stateDir } = daemonEnv(t);
  await startDaemon(env);
  const socket = status(env).socket;
  const { BUILD_ID } = await import("../../src/daemon/paths.js");
  const built = JSON.parse(runCli(["daemon", "status", "--json"], { env }).stdout);
  assert.ok(built.build && built.build !== BUILD_ID, "the daemon runs the built CLI, not this source tree");

  const refused = async (request: object, why: RegExp) => {
    const got = await rawExchange(socket, [encodeFrame(Frame.REQUEST, request)]);
    assert.equal(got.length, 1);
    assert.equal(got[0]!.type, Frame.REFUSE);
    assert.match(JSON.parse(got[0]!.payload.toString()).reason, why);
  };
  const good = { protocol: PROTOCOL_VERSION, build: built.build, stdin: "tty" };
  await refused({ ...good, argv: ["env", "prune", "--all"] }, /only `pyro run`/);
  await refused({ ...good, argv: ["task", "delete", "task_000000000000"] }, /only `pyro run`/);
  await refused({ ...good, build: "someone-else", argv: ["run", "busybox", "--", "true"] }, /build/);
  await refused({ ...good, protocol: 99, argv: ["run", "busybox", "--", "true"] }, /protocol/);
  await refused({ ...good, argv: ["run", 42] }, /array of strings/);

  await refused(null as unknown as object, /JSON object/);
  await refused([] as unknown as object, /JSON object/);

  // A frame length over the limit, and a frame of an unknown type: cut off, nothing run.
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(0xffffffff, 0);
  assert.deepEqual(await rawExchange(socket, [huge]), []);
  assert.deepEqual(await rawExchange(socket, [encodeFrame(99, "x")]), []);
  // A connection that never sends its request is dropped (after 5 s).
  assert.deepEqual(await rawExchange(socket, []), []);

  // Garbage from an accepted client (a SIGNAL that is not JSON) costs that client its
  // connection and its run, and nothing else.
  const accepted = await rawExchange(socket, [
    encodeFrame(Frame.REQUEST, { ...good, argv: ["run", "busybox", "-q", "--", "sleep", "30"] }),
    encodeFrame(Frame.SIGNAL, "not json"),
  ]);
  assert.equal(accepted[0]!.type, Frame.ACCEPT);
  assert.ok(!accepted.some((f) => f.type === Frame.EXIT), "the garbled connection is cut, not answered");
  await waitFor(() => status(env).active === 0, 10_000, "the garbled client's run to be stopped");

  // Still serving; nothing ran for the refused requests.
  assert.equal(status(env).requests, 1);
  const ok = runCli(["run", "busybox", "-q", "--", "echo", "still here"], { env });
  assert.equal(ok.stdout, "still here\n");
  assert.equal(status(env).requests, 2);
  runCli(["daemon", "stop"], { env });
  assert.deepEqual(leftovers(stateDir).dirs, []);
});

test("a socket directory that another user could write is never used: runs stay in-process", async (t) => {
  const { env, stateDir, runtimeDir } = daemonEnv(t);
  const dir = join(runtimeDir, "pyro-mcp");
  for (const [what, prepare] of [
    ["world-writable", () => chmodSync(dir, 0o777)],
    ["owned by another user", () => chownSync(dir, 65534, 65534)],
  ] as const) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { mode: 0o700 });
    prepare();
    const r = runCli(["run", "busybox", "-q", "--", "echo", "works"], { env });
    assert.equal(r.status, 0, `${what}: ${r.stderr}`);
    assert.equal(r.stdout, "works\n");
    const serve = runCli(["daemon", "serve", "--idle-seconds", "1"], { env, timeoutMs: 20_000 });
    assert.equal(serve.status, 125, `${what}: the daemon must refuse the directory`);
    assert.match(serve.stderr, /refusing the daemon directory .*pyro-mcp/);
    await new Promise((r) => setTimeout(r, 500)); // the background start after the run, refused the same way
    assert.equal(status(env).running, false, `${what}: no daemon may listen there`);
    assert.deepEqual(readdirSync(dir), [], `${what}: nothing was created in the directory`);
  }
  assert.deepEqual(leftovers(stateDir), { processes: [], dirs: [], cgroups: [] });
});

test("a daemon that refuses a run leaves its stdin whole: the run falls back in-process with every byte", async (t) => {
  const { env, runtimeDir } = daemonEnv(t);
  const dir = join(runtimeDir, "pyro-mcp");
  mkdirSync(dir, { mode: 0o700 });
  // A stand-in for a daemon that is stopping: it refuses every request.
  const key = JSON.parse(runCli(["daemon", "status", "--json"], { env }).stdout).socket as string;
  const fake = createServer((c) => c.once("data", () => c.end(encodeFrame(Frame.REFUSE, { reason: "the daemon is stopping" }))));
  // Listening elsewhere and renamed into place, as the daemon does: its close then unlinks only its own name,
  // not the socket of the daemon that replaces it.
  await new Promise<void>((r) => fake.listen(`${key}.fake`, r));
  renameSync(`${key}.fake`, key);
  t.after(() => fake.close());
  const input = "line one\nline two\n".repeat(1000);
  // Asynchronously: the stand-in lives in this process and must answer while the client runs.
  const child = spawnCli(["run", "busybox", "-q", "--", "cat"], env);
  child.stdin!.end(input);
  const r = await collect(child);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, input);
  // The in-process run then starts a daemon of its own in the stand-in's place (stopped after the test).
  const deadline = Date.now() + 20_000;
  let started = false;
  while (!started && Date.now() < deadline) {
    // Asynchronously: the stand-in answers status requests (with a refusal) until the daemon's socket replaces it.
    const st = await collect(spawnCli(["daemon", "status", "--json"], env));
    started = st.code === 0 && JSON.parse(st.stdout).running === true;
  }
  assert.ok(started, "the fallback run starts a daemon of its own");
});

test("the daemon holds neither a fast writer's stdin nor a slow reader's output in memory", async (t) => {
  const { env } = daemonEnv(t);
  const pid = await startDaemon(env);
  const rssMiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
  const base = rssMiB();
  let peak = base;
  const sample = setInterval(() => (peak = Math.max(peak, rssMiB())), 100);
  t.after(() => clearInterval(sample));

  // 512 MiB offered on stdin to a command that never reads it.
  const writer = spawnCli(["run", "busybox", "-q", "--timeout-seconds", "3", "--", "sleep", "2"], env);
  const chunk = Buffer.alloc(1 << 20);
  let offered = 0;
  writer.stdin!.on("error", () => undefined);
  const feed = () => {
    while (offered < 512 && writer.stdin!.write(chunk)) offered++;
    if (offered < 512) writer.stdin!.once("drain", () => (offered++, feed()));
    else writer.stdin!.end();
  };
  feed();
  assert.equal((await collect(writer)).code, 0);

  // An endless output that nobody reads until the command times out.
  const reader = spawnCli(["run", "busybox", "-q", "--timeout-seconds", "2", "--", "cat /dev/zero"], env);
  reader.stdout!.pause();
  // Past its timeout, read what was held back (a bounded amount) so the client can finish.
  setTimeout(() => reader.stdout!.resume(), 3_500);
  const code = await new Promise((r) => reader.on("exit", r));
  assert.equal(code, 124);

  clearInterval(sample);
  assert.ok(peak - base < 100, `the daemon grew by ${(peak - base).toFixed(0)} MiB (from ${base.toFixed(0)} MiB)`);
});

test("a daemon that accepts connections and never answers costs a run 10 s, not forever: it runs in-process; status says so", async (t) => {
  const { env, runtimeDir } = daemonEnv(t);
  const dir = join(runtimeDir, "pyro-mcp");
  mkdirSync(dir, { mode: 0o700 });
  const key = JSON.parse(runCli(["daemon", "status", "--json"], { env }).stdout).socket as string;
  // A wedged daemon: the kernel accepts, nothing ever answers.
  const held: import("node:net").Socket[] = [];
  const closed = new Set<import("node:net").Socket>();
  const wedged = createServer((c) => {
    held.push(c);
    c.on("error", () => undefined);
    c.on("close", () => closed.add(c));
    c.resume(); // reads (and drops) what the client sends, so its hang-up is seen
  });
  await new Promise<void>((r) => wedged.listen(`${key}.wedged`, r));
  renameSync(`${key}.wedged`, key);
  t.after(() => {
    for (const c of held) c.destroy();
    wedged.close();
  });

  let started = Date.now();
  const st = await collect(spawnCli(["daemon", "status", "--json"], env));
  assert.notEqual(st.code, 0);
  assert.match(st.stderr, /did not answer a status request within 10 s/);
  assert.ok(Date.now() - started < 30_000);

  // A stop is refused as quickly: a wedged daemon would never answer it.
  started = Date.now();
  const stop = await collect(spawnCli(["daemon", "stop"], env));
  assert.notEqual(stop.code, 0);
  assert.match(stop.stderr, /did not answer a status request within 10 s/);
  assert.ok(Date.now() - started < 30_000);

  // Last: the run falls back in-process, and then starts a daemon of its own in the stand-in's place.
  started = Date.now();
  const r = await collect(spawnCli(["run", "busybox", "-q", "--", "echo", "ran"], env));
  const took = Date.now() - started;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "ran\n");
  assert.match(r.stderr, /the daemon did not answer within 10 s; running in-process/);
  assert.ok(took >= 9_000 && took < 40_000, `took ${took} ms`);
  // Every client gave its connection up rather than leaving it open (status, stop's status, run).
  assert.equal(held.length, 3);
  await waitFor(() => closed.size === 3 || null, 5_000, "the clients to close their connections");

  // The stand-in goes; the daemon the fallback run started (if its socket replaced the stand-in's) is stopped after the test.
  for (const c of held) c.destroy();
  wedged.close();
});
