/**
 * The real pyro-agent (guest/build/pyro-agent) inside bubblewrap over a
 * busybox root, driven by the real AgentClient over a unix socket; plus fake
 * hostile agents that the client must survive. No mocks of the agent.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Readable } from "node:stream";
import { AgentClient, type ExecResult, type ExecSpec } from "../../src/agent/client.js";
import {
  AgentErrorCode,
  FrameDecoder,
  MsgType,
  OpenFlags,
  decodeAgentMessage,
  decodeHostMessage,
  encodeExit,
  encodeFrame,
  encodeHello,
  encodeHelloAck,
  encodeOpen,
  encodeU32,
  encodeAttached,
  encodeKept,
} from "../../src/agent/codec.js";
import { PyroError } from "../../src/core/errors.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const AGENT = join(ROOT, "guest", "build", "pyro-agent");
const BUSYBOX = "/bin/busybox";
const haveBwrap = spawnSync("bwrap", ["--version"]).status === 0;
const skip = !haveBwrap ? "bwrap is not installed" : !existsSync(BUSYBOX) ? "busybox-static (/bin/busybox) is not installed" : false;

let work = "";
let rootfs = "";
const sandboxes: Sandbox[] = [];
const servers: Server[] = [];
const clients: AgentClient[] = [];

// ----------------------------------------------------------------- helpers

interface Sandbox {
  socket: string;
  dir: string;
  child: ChildProcess;
  /** Host pid of the sandbox's PID 1 (from bwrap's --info-fd). */
  initPid: number;
  ready: string;
  exit: Promise<number | null>;
  kill(): Promise<void>;
}

/** Reads a stream until done() says enough, or the stream ends. */
function readUntil(stream: NodeJS.ReadableStream, done: (text: string) => boolean, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const finish = () => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", finish);
      resolve(text);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (done(text)) finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    stream.on("data", onData);
    stream.on("end", finish);
  });
}

function makeRootfs(dir: string): void {
  mkdirSync(join(dir, "bin"), { recursive: true });
  copyFileSync(BUSYBOX, join(dir, "bin", "busybox"));
  const list = spawnSync(BUSYBOX, ["--list-full"], { encoding: "utf8" }).stdout.split("\n").filter(Boolean);
  for (const rel of list) {
    const path = join(dir, rel);
    if (existsSync(path)) continue;
    mkdirSync(dirname(path), { recursive: true });
    symlinkSync("/bin/busybox", path);
  }
  for (const d of ["etc", "tmp", "mnt", "workspace"]) mkdirSync(join(dir, d), { recursive: true });
}

/** Starts bwrap with the given arguments; fd 3 = ready pipe, fd 4 = bwrap's info JSON. */
async function startBwrap(dir: string, socket: string, bwrapArgs: string[]): Promise<Sandbox> {
  const child = spawn("bwrap", bwrapArgs, { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  const info = await readUntil(child.stdio[4] as NodeJS.ReadableStream, (t) => /"child-pid":\s*\d+/.test(t));
  const initPid = Number(/"child-pid":\s*(\d+)/.exec(info)?.[1] ?? 0);
  const ready = await readUntil(child.stdio[3] as NodeJS.ReadableStream, (t) => t.startsWith("R") || t.includes("\n"));
  const sb: Sandbox = {
    socket,
    dir,
    child,
    initPid,
    ready,
    exit,
    async kill() {
      if (initPid > 0) {
        try {
          process.kill(initPid, "SIGKILL");
        } catch {
          /* already gone */
        }
      }
      child.kill("SIGKILL");
      await exit;
    },
  };
  sandboxes.push(sb);
  if (!ready.startsWith("R") && !ready.startsWith("E")) {
    throw new Error(`agent did not become ready: ${JSON.stringify(ready)} stderr: ${stderr}`);
  }
  return sb;
}

/** `pyro-agent serve` in a bare bwrap over the busybox root (no mounts by the agent). */
async function startServe(): Promise<Sandbox> {
  const dir = mkdtempSync(join(work, "serve-"));
  mkdirSync(join(dir, "sock"));
  return startBwrap(dir, join(dir, "sock", "agent.sock"), [
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
    "--uid", "0", "--gid", "0", "--die-with-parent",
    // bwrap's own tmpfs root with the busybox tree bound in (mount points need a writable root).
    "--ro-bind", join(rootfs, "bin"), "/bin",
    "--ro-bind", join(rootfs, "sbin"), "/sbin",
    "--ro-bind", join(rootfs, "usr"), "/usr",
    "--proc", "/proc",
    "--dev", "/dev",
    "--tmpfs", "/tmp",
    "--bind", join(dir, "sock"), "/sock",
    "--ro-bind", AGENT, "/pyro-agent",
    "--info-fd", "4",
    "/pyro-agent", "serve", "--listen", "/sock/agent.sock", "--ready-fd", "3",
  ]);
}

/** `pyro-agent init` with the namespace driver's command line. */
async function startInit(options: { deadline?: number; withProc?: boolean } = {}): Promise<Sandbox> {
  const dir = mkdtempSync(join(work, "vm-"));
  mkdirSync(join(dir, "rw"));
  mkdirSync(join(dir, "sock"));
  return startBwrap(dir, join(dir, "sock", "agent.sock"), [
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
    "--uid", "0", "--gid", "0", "--cap-add", "ALL", "--as-pid-1", "--die-with-parent",
    "--ro-bind", rootfs, "/.pyro/lower",
    "--bind", join(dir, "rw"), "/.pyro/rw",
    "--bind", join(dir, "sock"), "/.pyro/sock",
    "--ro-bind", AGENT, "/.pyro/agent",
    "--dev", "/dev",
    ...(options.withProc === false ? [] : ["--proc", "/proc"]),
    "--info-fd", "4",
    "/.pyro/agent", "init", "--listen", "/.pyro/sock/agent.sock", "--ready-fd", "3",
    "--hostname", "pyro-test",
    ...(options.deadline ? ["--deadline", String(options.deadline)] : []),
  ]);
}

async function connect(sb: Sandbox): Promise<AgentClient> {
  const c = await AgentClient.connect(sb.socket, { timeoutMs: 5000 });
  clients.push(c);
  return c;
}

interface Ran {
  result: ExecResult;
  stdout: Buffer;
  stderr: Buffer;
}

async function run(client: AgentClient, command: string | string[], extra: Partial<ExecSpec> = {}): Promise<Ran> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const h = client.exec({
    argv: typeof command === "string" ? ["/bin/sh", "-c", command] : command,
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    cwd: "/",
    timeoutMs: 20_000,
    onStdout: (c) => void out.push(Buffer.from(c)),
    onStderr: (c) => void err.push(Buffer.from(c)),
    ...extra,
  });
  const result = await h.result;
  return { result, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
}

function exited(value: number) {
  return { kind: "exited", value, timed_out: false, killed: false };
}

/** Lines of `ps` in the sandbox that mention "sleep". */
async function sleepers(client: AgentClient): Promise<string[]> {
  const r = await run(client, ["ps"]);
  return r.stdout
    .toString()
    .split("\n")
    .filter((l) => /sleep \d/.test(l));
}

async function eventually(check: () => Promise<boolean>, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}

function rejectsWith(p: Promise<unknown>, code: string, pattern?: RegExp): Promise<void> {
  return assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof PyroError, `expected a PyroError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

/** A raw connection to the real agent for sending what the client never would. */
async function rawConnect(path: string): Promise<{ sock: Socket; frames: () => Promise<{ types: number[]; closed: boolean; error?: number }> }> {
  const sock = createConnection({ path });
  await new Promise<void>((resolve, reject) => {
    sock.once("connect", resolve);
    sock.once("error", reject);
  });
  const decoder = new FrameDecoder("from_agent");
  const types: number[] = [];
  let error: number | undefined;
  let closed = false;
  const ended = new Promise<void>((resolve) => {
    sock.on("data", (chunk: Buffer) => {
      try {
        for (const f of decoder.push(chunk)) {
          types.push(f.type);
          if (f.type === MsgType.ERROR) error = f.payload.readUInt32LE(0);
        }
      } catch {
        /* whatever the agent sends after an error does not matter */
      }
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      closed = true;
      resolve();
    });
  });
  return {
    sock,
    frames: async () => {
      await Promise.race([ended, new Promise((r) => setTimeout(r, 5000))]);
      return { types, closed, ...(error === undefined ? {} : { error }) };
    },
  };
}

/** A fake agent on a unix socket: handler gets each accepted socket. */
async function fakeAgent(handler: (sock: Socket) => void): Promise<string> {
  const path = join(mkdtempSync(join(work, "fake-")), "agent.sock");
  const server = createServer((sock) => {
    sock.on("error", () => {});
    handler(sock);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return path;
}

/** Reads host frames on a fake agent's socket. */
function onHostFrames(sock: Socket, handler: (m: ReturnType<typeof decodeHostMessage>) => void): void {
  const d = new FrameDecoder("from_host");
  sock.on("data", (chunk: Buffer) => {
    for (const f of d.push(chunk)) handler(decodeHostMessage(f));
  });
}

const ACK = encodeFrame(
  MsgType.HELLO_ACK,
  0,
  encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 262144, agent_version: "fake 0" }),
);

// -------------------------------------------------------------- fixtures

let sb: Sandbox;
let client: AgentClient;

before(async () => {
  if (skip) return;
  if (!existsSync(AGENT)) {
    const r = spawnSync("make", ["-C", join(ROOT, "guest")], { encoding: "utf8" });
    assert.equal(r.status, 0, `make -C guest failed:\n${r.stdout}${r.stderr}`);
  }
  work = mkdtempSync(join(tmpdir(), "pyro-agent-test-"));
  rootfs = join(work, "rootfs");
  makeRootfs(rootfs);
  sb = await startServe();
  assert.equal(sb.ready, "R");
  client = await connect(sb);
});

after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) s.close();
  await Promise.all(sandboxes.map((s) => s.kill()));
  if (work) rmSync(work, { recursive: true, force: true });
});

// ------------------------------------------------------- the real agent

test("handshake reports the agent version and limits", { skip }, () => {
  assert.deepEqual(client.agent, { version: 1, max_payload: 65536, initial_window: 262144, agent_version: "pyro-agent 0.1.0" });
});

test("echo, exit codes and stderr", { skip }, async () => {
  const r = await run(client, "echo hello; echo oops >&2; exit 42");
  assert.equal(r.stdout.toString(), "hello\n");
  assert.equal(r.stderr.toString(), "oops\n");
  assert.deepEqual(r.result, exited(42));
  assert.deepEqual((await run(client, ["true"])).result, exited(0));
});

test("stdin passthrough: a Buffer with binary bytes, a Readable with backpressure, a pipe", { skip }, async () => {
  const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 0x80, 0x0a]);
  const r = await run(client, ["cat"], { stdin: bytes });
  assert.deepEqual(r.stdout, bytes);
  assert.deepEqual(r.result, exited(0));

  // 2 MiB from a stream, well past the 256 KiB window: credit must flow back.
  const total = 2 * 1024 * 1024;
  const source = Readable.from(
    (function* () {
      for (let i = 0; i < total / 65536; i++) yield Buffer.alloc(65536, i & 0xff);
    })(),
  );
  const wc = await run(client, ["wc", "-c"], { stdin: source });
  assert.equal(wc.stdout.toString().trim(), String(total));

  const h = client.exec({ argv: ["cat"], env: {}, cwd: "/", timeoutMs: 10_000, stdin: "pipe", onStdout: (c) => void got.push(Buffer.from(c)) });
  const got: Buffer[] = [];
  await h.writeStdin(Buffer.from("one "));
  await h.writeStdin(Buffer.from("two"));
  h.endStdin();
  assert.deepEqual(await h.result, exited(0));
  assert.equal(Buffer.concat(got).toString(), "one two");
});

test("death by signal, sendSignal and abort", { skip }, async () => {
  assert.deepEqual((await run(client, "kill -9 $$")).result, { kind: "signaled", value: 9, timed_out: false, killed: false });

  const h = client.exec({ argv: ["sleep", "100"], env: {}, cwd: "/", timeoutMs: 20_000 });
  const pid = await h.opened;
  assert.ok(typeof pid === "number" && pid > 1);
  h.sendSignal(15);
  assert.deepEqual(await h.result, { kind: "signaled", value: 15, timed_out: false, killed: false });

  const ac = new AbortController();
  const started = Date.now();
  const aborted = client.exec({ argv: ["sleep", "100"], env: {}, cwd: "/", timeoutMs: 20_000, signal: ac.signal });
  await aborted.opened;
  ac.abort();
  assert.deepEqual(await aborted.result, { kind: "signaled", value: 9, timed_out: false, killed: true });
  assert.ok(Date.now() - started < 5000);
});

test("exec failures are OPEN_FAILED with errno", { skip }, async () => {
  const missing = await run(client, ["/nonexistent/prog"]);
  assert.equal(missing.result.kind, "open_failed");
  assert.equal((missing.result as { errno: number }).errno, 2);
  assert.match((missing.result as { message: string }).message, /cannot execute '\/nonexistent\/prog': No such file/);

  const notOnPath = await run(client, ["no-such-command"]);
  assert.equal((notOnPath.result as { errno: number }).errno, 2);

  const dir = await run(client, ["/bin"]);
  assert.equal((dir.result as { errno: number }).errno, 13, "a directory is EACCES");

  const badCwd = await run(client, ["pwd"], { cwd: "/nope" });
  assert.equal((badCwd.result as { errno: number }).errno, 2);
  assert.match((badCwd.result as { message: string }).message, /change directory to '\/nope'/);
});

test("cwd and env are exactly as given", { skip }, async () => {
  assert.equal((await run(client, ["pwd"], { cwd: "/tmp" })).stdout.toString(), "/tmp\n");
  assert.equal((await run(client, ["pwd"], { cwd: "" })).stdout.toString(), "/\n");
  const env = await run(client, ["/usr/bin/env"], { env: { FOO: "bar baz", EMPTY: "", PATH: "/bin" } });
  assert.equal(env.stdout.toString(), "FOO=bar baz\nEMPTY=\nPATH=/bin\n");
  // With no env at all, only the default PATH is set (and searched).
  const bare = await run(client, ["env"], { env: {} });
  assert.equal(bare.stdout.toString(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
});

test("a timeout kills the whole tree, daemons included", { skip }, async () => {
  const started = Date.now();
  const r = await run(client, "sleep 1001 & setsid sh -c 'sleep 1002' & sh -c 'sleep 1003 &'; sleep 1004", { timeoutMs: 700 });
  assert.deepEqual(r.result, { kind: "signaled", value: 9, timed_out: true, killed: false });
  assert.ok(Date.now() - started < 5000, "EXIT came promptly");
  assert.deepEqual(await sleepers(client), []);

  // The main process exits at once, leaving a daemon that holds stdout: the
  // daemon is killed and EXIT follows, without waiting for it.
  const t0 = Date.now();
  const d = await run(client, "setsid sh -c 'sleep 1005' & echo started");
  assert.equal(d.stdout.toString(), "started\n");
  assert.deepEqual(d.result, exited(0));
  assert.ok(Date.now() - t0 < 5000);
  assert.deepEqual(await sleepers(client), []);
});

test("closing the connection kills its processes", { skip }, async () => {
  const other = await connect(sb);
  const h = other.exec({ argv: ["sh", "-c", "sleep 1006 & sleep 1007"], env: { PATH: "/bin" }, cwd: "/", timeoutMs: 60_000 });
  assert.ok((await h.opened) !== null);
  assert.ok(await eventually(async () => (await sleepers(client)).length === 2), "both sleeps started");
  other.close();
  await rejectsWith(h.result, "cancelled");
  assert.ok(await eventually(async () => (await sleepers(client)).length === 0), "no sleep left");
});

test("a supervisor killed from inside ends its channel as SIGKILL, tree gone", { skip }, async () => {
  // The command's parent is its supervisor; root in the sandbox can kill it.
  // Depending on who runs first, the supervisor dies before or after it
  // reported OPENED: either way the channel ends and the session is killed.
  for (let i = 0; i < 5; i++) {
    const r = await run(client, "sleep 1010 & kill -9 $PPID; sleep 1011");
    if (r.result.kind === "open_failed") assert.equal(r.result.errno, 10 /* ECHILD */);
    else assert.deepEqual(r.result, { kind: "signaled", value: 9, timed_out: false, killed: false });
  }
  assert.ok(await eventually(async () => (await sleepers(client)).length === 0), "no sleep left");
  await client.ping();
});

test("50 MB of output streams with exact bytes and bounded memory", { skip }, async () => {
  const size = 50 * 1024 * 1024;
  let bytes = 0;
  let nonZero = 0;
  let maxQueued = 0;
  const rssBefore = process.memoryUsage().rss;
  let rssPeak = rssBefore;
  let n = 0;
  const h = client.exec({
    argv: ["head", "-c", String(size), "/dev/zero"],
    env: {},
    cwd: "/",
    timeoutMs: 60_000,
    onStdout: (c) => {
      bytes += c.length;
      if (c[0] !== 0 || c[c.length - 1] !== 0) nonZero++;
      maxQueued = Math.max(maxQueued, h.queuedBytes);
      if (++n % 64 === 0) rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    },
  });
  assert.deepEqual(await h.result, exited(0));
  assert.equal(bytes, size);
  assert.equal(nonZero, 0);
  assert.ok(maxQueued <= 262144, `queued ${maxQueued}`);
  assert.ok(rssPeak - rssBefore < 128 * 1024 * 1024, `rss grew by ${((rssPeak - rssBefore) / 1048576).toFixed(1)} MiB`);

  // A consumer that pauses (returns a Promise): the agent is held to the window.
  let slowBytes = 0;
  let slowMaxQueued = 0;
  const slow = client.exec({
    argv: ["head", "-c", String(4 * 1024 * 1024), "/dev/zero"],
    env: {},
    cwd: "/",
    timeoutMs: 60_000,
    onStdout: async (c) => {
      slowBytes += c.length;
      slowMaxQueued = Math.max(slowMaxQueued, slow.queuedBytes);
      await new Promise((r) => setTimeout(r, 1));
    },
  });
  assert.deepEqual(await slow.result, exited(0));
  assert.equal(slowBytes, 4 * 1024 * 1024);
  assert.ok(slowMaxQueued <= 262144, `queued ${slowMaxQueued}`);
});

test("non-UTF-8 output arrives byte for byte", { skip }, async () => {
  const r = await run(client, "printf '\\377\\376\\000\\200abc\\351'");
  assert.deepEqual(r.stdout, Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x61, 0x62, 0x63, 0xe9]));
});

test("30 concurrent execs on one connection, and several connections at once", { skip }, async () => {
  const runs = Array.from({ length: 30 }, (_, i) => run(client, `sleep 0.2; echo out-${i}; echo err-${i} >&2; exit ${i}`));
  const results = await Promise.all(runs);
  results.forEach((r, i) => {
    assert.equal(r.stdout.toString(), `out-${i}\n`);
    assert.equal(r.stderr.toString(), `err-${i}\n`);
    assert.deepEqual(r.result, exited(i));
  });

  const many = await Promise.all(Array.from({ length: 5 }, () => connect(sb)));
  const outs = await Promise.all(many.flatMap((c, i) => [run(c, `echo conn-${i}-a`), run(c, `echo conn-${i}-b`)]));
  assert.deepEqual(
    outs.map((o) => o.stdout.toString().trim()),
    many.flatMap((_, i) => [`conn-${i}-a`, `conn-${i}-b`]),
  );
  for (const c of many) c.close();
});

test("the real agent answers garbage with ERROR or a close, and stays alive", { skip }, async () => {
  const hello = encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 1, max_version: 1, client: "raw" }));

  // Random bytes.
  const a = await rawConnect(sb.socket);
  a.sock.write(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) & 0xff)));
  const ra = await a.frames();
  assert.ok(ra.closed, "closed after garbage");
  if (ra.error !== undefined) assert.equal(ra.error, AgentErrorCode.PROTOCOL);

  // An oversized length after a valid HELLO.
  const b = await rawConnect(sb.socket);
  const big = Buffer.alloc(12);
  encodeFrame(MsgType.STDIN, 1).copy(big);
  big.writeUInt32LE(0x7fffffff, 8);
  b.sock.write(Buffer.concat([hello, big]));
  const rb = await b.frames();
  assert.deepEqual(rb.types, [MsgType.HELLO_ACK, MsgType.ERROR]);
  assert.equal(rb.error, AgentErrorCode.PROTOCOL);

  // A wrong frame version.
  const c = await rawConnect(sb.socket);
  const v2 = Buffer.from(hello);
  v2[2] = 2;
  c.sock.write(v2);
  const rc = await c.frames();
  assert.deepEqual(rc.types, [MsgType.ERROR]);

  // No common protocol version.
  const d = await rawConnect(sb.socket);
  d.sock.write(encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 2, max_version: 9, client: "future" })));
  assert.equal((await d.frames()).error, AgentErrorCode.VERSION);

  // STDIN past the window (to a process that does not read it).
  const e = await rawConnect(sb.socket);
  const open = encodeFrame(
    MsgType.OPEN,
    1,
    encodeOpen({ flags: OpenFlags.STDIN_PIPE, timeout_ms: 10_000, argv: ["sleep", "1008"], env: [], cwd: "/" }),
  );
  const flood = Array.from({ length: 8 }, () => encodeFrame(MsgType.STDIN, 1, Buffer.alloc(65536, 0x61)));
  e.sock.write(Buffer.concat([hello, open, ...flood]));
  const re = await e.frames();
  assert.equal(re.error, AgentErrorCode.FLOW);

  // A channel id in use, and frames for an unknown channel (ignored: they may race with EXIT).
  const f = await rawConnect(sb.socket);
  const sleepOpen = encodeFrame(MsgType.OPEN, 5, encodeOpen({ flags: 0, timeout_ms: 10_000, argv: ["sleep", "1009"], env: [], cwd: "/" }));
  f.sock.write(Buffer.concat([hello, encodeFrame(MsgType.WINDOW, 77, encodeU32(5)), sleepOpen, sleepOpen]));
  const rf = await f.frames();
  assert.equal(rf.error, AgentErrorCode.CHANNEL);

  // The agent is alive, and the processes of those connections are gone.
  const fresh = await connect(sb);
  assert.equal((await run(fresh, "echo alive")).stdout.toString(), "alive\n");
  assert.ok(await eventually(async () => (await sleepers(fresh)).length === 0));
  fresh.close();
});

test("SHUTDOWN kills everything and the agent exits 0", { skip }, async () => {
  const own = await startServe();
  const a = await connect(own);
  const b = await connect(own);
  const h = a.exec({ argv: ["sleep", "1012"], env: {}, cwd: "/", timeoutMs: 60_000 });
  const failed = rejectsWith(h.result, "sandbox_failed");
  await h.opened;
  await b.shutdown();
  await failed;
  assert.equal(await own.exit, 0);
  // The sandbox's pid namespace is gone with its PID 1.
  assert.ok(await eventually(async () => !existsSync(`/proc/${own.initPid}`), 3000), "sandbox init still running");
});

test("serve --fd: one connected stream (a socketpair); the agent exits when it closes", { skip }, async () => {
  // Node gives a child's extra "pipe" stdio as a unix socketpair.
  const child = spawn(
    "bwrap",
    [
      "--unshare-user", "--unshare-pid", "--unshare-net", "--uid", "0", "--gid", "0", "--die-with-parent",
      "--ro-bind", join(rootfs, "bin"), "/bin",
      "--ro-bind", join(rootfs, "usr"), "/usr",
      "--proc", "/proc", "--dev", "/dev",
      "--ro-bind", AGENT, "/pyro-agent",
      "/pyro-agent", "serve", "--fd", "3",
    ],
    { stdio: ["ignore", "ignore", "inherit", "pipe"] },
  );
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const c = AgentClient.fromStream(child.stdio[3] as Socket);
  try {
    await c.hello({ timeoutMs: 5000 });
    assert.equal((await run(c, "echo over a stream")).stdout.toString(), "over a stream\n");
    const h = c.exec({ argv: ["sleep", "1013"], env: {}, cwd: "/", timeoutMs: 60_000 });
    const failed = rejectsWith(h.result, "cancelled");
    await h.opened;
    c.close();
    await failed;
    assert.equal(await exit, 0);
  } finally {
    child.kill("SIGKILL");
  }
});

// ------------------------------------------------------ hostile agents

test("a fake agent speaking garbage: agent_protocol", async () => {
  const path = await fakeAgent((sock) => sock.write(Buffer.from("HTTP/1.1 400 Bad Request\r\n\r\n")));
  await rejectsWith(AgentClient.connect(path), "agent_protocol", /bad magic/);
});

test("a fake agent that never answers: the handshake times out", async () => {
  const path = await fakeAgent(() => {});
  const c = AgentClient.fromStream(createConnection({ path }));
  const started = Date.now();
  await rejectsWith(c.hello({ timeoutMs: 300 }), "sandbox_failed", /did not answer HELLO within 300 ms/);
  assert.ok(Date.now() - started < 2000);
  assert.ok(c.closed);
});

test("a fake agent: valid HELLO_ACK, then junk", async () => {
  const path = await fakeAgent((sock) =>
    onHostFrames(sock, (m) => {
      if (m.type === "hello") sock.write(ACK);
      if (m.type === "open") sock.write(Buffer.from("\x00junk after a good handshake"));
    }),
  );
  const c = await AgentClient.connect(path);
  await rejectsWith(c.exec({ argv: ["x"], env: {}, cwd: "/", timeoutMs: 1000 }).result, "agent_protocol");
  assert.ok(c.closed);
});

test("a fake agent flooding STDOUT past the window: rejected, flood stopped", async () => {
  let sent = 0;
  let stopped: () => void = () => {};
  const floodStopped = new Promise<void>((r) => (stopped = r));
  const path = await fakeAgent((sock) => {
    sock.on("close", () => stopped());
    onHostFrames(sock, (m) => {
      if (m.type === "hello") sock.write(ACK);
      if (m.type === "open") {
        sock.write(encodeFrame(MsgType.OPENED, m.channel, encodeU32(2)));
        const chunk = encodeFrame(MsgType.STDOUT, m.channel, Buffer.alloc(65536, 0x41));
        const pump = () => {
          while (!sock.destroyed && sent < 1e9) {
            sent += 65536;
            if (!sock.write(chunk)) return void sock.once("drain", pump);
          }
        };
        pump();
      }
    });
  });
  // A consumer slower than the flood: credit is not returned, so the flood
  // overruns the window and is caught.
  const c = await AgentClient.connect(path);
  let received = 0;
  const h = c.exec({
    argv: ["x"],
    env: {},
    cwd: "/",
    timeoutMs: 1000,
    onStdout: async (b) => {
      received += b.length;
      await new Promise((r) => setTimeout(r, 20));
    },
  });
  await rejectsWith(h.result, "agent_protocol", /past the window/);
  await floodStopped;
  assert.ok(received <= 262144, `delivered ${received}`);
  assert.ok(sent < 64 * 1024 * 1024, `the flood was cut off after ${sent} bytes`);

  // A consumer as fast as the flood returns credit as it goes, so the flood
  // never overruns; it is an endless output, ended by the host deadline,
  // with memory flat.
  sent = 0;
  const c2 = await AgentClient.connect(path);
  let maxQueued = 0;
  const rss = process.memoryUsage().rss;
  const h2 = c2.exec({
    argv: ["x"],
    env: {},
    cwd: "/",
    timeoutMs: 100,
    hostDeadlineMs: 1500,
    onStdout: () => void (maxQueued = Math.max(maxQueued, h2.queuedBytes)),
  });
  await rejectsWith(h2.result, "sandbox_failed", /within 1500 ms/);
  assert.ok(maxQueued <= 262144);
  assert.ok(process.memoryUsage().rss - rss < 128 * 1024 * 1024);
});

test("a fake agent that never sends EXIT: the host deadline fires", async () => {
  const path = await fakeAgent((sock) =>
    onHostFrames(sock, (m) => {
      if (m.type === "hello") sock.write(ACK);
      if (m.type === "open") sock.write(encodeFrame(MsgType.OPENED, m.channel, encodeU32(3)));
    }),
  );
  const c = await AgentClient.connect(path);
  const started = Date.now();
  await rejectsWith(
    c.exec({ argv: ["x"], env: {}, cwd: "/", timeoutMs: 100, hostDeadlineMs: 400 }).result,
    "sandbox_failed",
    /within 400 ms/,
  );
  assert.ok(Date.now() - started < 2000);
});

test("a fake agent: second EXIT, unknown channel, oversized window, unsolicited PONG", async () => {
  const scenarios: Array<[string, (sock: Socket, ch: number) => void, RegExp]> = [
    [
      "second EXIT",
      (sock, ch) => {
        const exit = encodeFrame(MsgType.EXIT, ch, encodeExit({ kind: 0, value: 0, flags: 0 }));
        sock.write(Buffer.concat([encodeFrame(MsgType.OPENED, ch, encodeU32(4)), exit, exit]));
      },
      /exit for unknown channel/,
    ],
    ["unknown channel", (sock) => sock.write(encodeFrame(MsgType.OPENED, 999, encodeU32(4))), /unknown channel 999/],
    ["EXIT before OPENED", (sock, ch) => sock.write(encodeFrame(MsgType.EXIT, ch, encodeExit({ kind: 0, value: 0, flags: 0 }))), /before OPENED/],
    ["unsolicited PONG", (sock) => sock.write(encodeFrame(MsgType.PONG, 0, Buffer.from("x"))), /PONG/],
    // Kept channels (docs/protocol.md): answers out of turn.
    ["ATTACHED for an OPEN", (sock, ch) => sock.write(encodeFrame(MsgType.ATTACHED, ch, encodeAttached(4, 0, 0n))), /ATTACHED out of turn/],
    ["KEPT for an OPEN", (sock, ch) => sock.write(encodeFrame(MsgType.KEPT, ch, encodeKept([]))), /KEPT that answers no LIST/],
    ["DETACHED for an exec without keep", (sock, ch) => sock.write(Buffer.concat([encodeFrame(MsgType.OPENED, ch, encodeU32(4)), encodeFrame(MsgType.DETACHED, ch)])), /not kept/],
    ["a KEPT of 33 entries", (sock, ch) => sock.write(encodeFrame(MsgType.KEPT, ch, encodeU32(33))), /at most 32/],
  ];
  for (const [name, misbehave, pattern] of scenarios) {
    const path = await fakeAgent((sock) =>
      onHostFrames(sock, (m) => {
        if (m.type === "hello") sock.write(ACK);
        if (m.type === "open" && m.argv[0] === "victim") misbehave(sock, m.channel);
      }),
    );
    const c = await AgentClient.connect(path);
    // A second exec stays pending: it must fail with the connection.
    const bystander = c.exec({ argv: ["bystander"], env: {}, cwd: "/", timeoutMs: 1000 });
    const h = c.exec({ argv: ["victim"], env: {}, cwd: "/", timeoutMs: 1000 });
    await h.result.catch(() => {}); // a first EXIT may have resolved it before the misbehaviour
    await rejectsWith(bystander.result, "agent_protocol", pattern).catch((e) => assert.fail(`${name}: ${String(e)}`));
    assert.ok(c.closed, name);
  }
  const path = await fakeAgent((sock) =>
    onHostFrames(sock, (m) => {
      if (m.type === "hello") {
        sock.write(encodeFrame(MsgType.HELLO_ACK, 0, encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 0xffffffff, agent_version: "x" })));
      }
    }),
  );
  await rejectsWith(AgentClient.connect(path), "agent_protocol", /initial_window/);
});

// ------------------------------------------------------------ init mode

test("init mode: overlay root, writes in rw/upper, own /proc, hostname, seccomp, deadline", { skip }, async () => {
  const deadline = Math.floor(Date.now() / 1000) + 4;
  const vm = await startInit({ deadline });
  assert.equal(vm.ready, "R");
  const c = await connect(vm);

  const root = await run(c, "ls /; test -e /.pyro && echo LEAK; cat /proc/1/cmdline | tr '\\0' ' '");
  const text = root.stdout.toString();
  for (const d of ["bin", "dev", "proc", "run", "tmp", "workspace"]) assert.match(text, new RegExp(`^${d}$`, "m"));
  assert.doesNotMatch(text, /LEAK/);
  assert.match(text, /\/\.pyro\/agent init/);

  await run(c, "echo persisted > /workspace/file; mkdir -p /etc/x");
  assert.equal(readFileSync(join(vm.dir, "rw", "upper", "workspace", "file"), "utf8"), "persisted\n");

  const procs = await run(c, "ls /proc | grep -E '^[0-9]+$' | wc -l");
  assert.ok(Number(procs.stdout.toString()) < 10, `pids visible: ${procs.stdout}`);

  assert.equal((await run(c, ["hostname"])).stdout.toString(), "pyro-test\n");
  const devs = await run(c, "echo x > /dev/null && head -c 4 /dev/zero | wc -c && ls /dev/pts/ptmx && stat -c %a /tmp");
  assert.equal(devs.stdout.toString(), "4\n/dev/pts/ptmx\n1777\n");

  const un = await run(c, "unshare -U true");
  assert.notEqual((un.result as { value: number }).value, 0);
  assert.match(un.stderr.toString(), /Operation not permitted/);
  const mnt = await run(c, "mkdir -p /mnt && mount -t tmpfs none /mnt");
  assert.notEqual((mnt.result as { value: number }).value, 0);
  assert.match(mnt.stderr.toString(), /Operation not permitted|permission denied/i);

  // The deadline ends the sandbox by itself.
  const code = await Promise.race([vm.exit, new Promise((r) => setTimeout(() => r("still running"), 8000))]);
  assert.equal(code, 0);
  assert.ok(Date.now() / 1000 >= deadline);
});

test("init mode: a setup failure is reported on the ready fd", { skip }, async () => {
  const vm = await startInit({ withProc: false });
  assert.match(vm.ready, /^Emount proc on \/proc: Operation not permitted \(bubblewrap needs --proc \/proc\)/);
  assert.equal(await vm.exit, 1);
});
