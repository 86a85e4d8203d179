/**
 * `pyro-agent vmm`, the supervisor of one VM, run for real: its "VMM" is a
 * stand-in whose guest is the real agent (`pyro-agent serve`, on a unix
 * socket the vmm connects to, or on a socketpair the vmm hands over at a
 * fixed fd, as qemu's `-chardev socket,fd=N` gets it). Several real
 * AgentClients talk to the vmm's socket at once; their frames share the one
 * guest stream. Fake guests (a test server) play the hostile or silent
 * guest. A real qemu boot is in vmm-qemu.test.ts.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient, type ExecResult, type ExecSpec } from "../../src/agent/client.js";
import { MsgType, OpenFlags, encodeCodeMessage, encodeFrame, encodeHello, encodeHelloAck, encodeOpen, encodeU32 } from "../../src/agent/codec.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const AGENT = join(ROOT, "guest", "build", "pyro-agent");

let work = "";
let seq = 0;
const vmms: Vmm[] = [];
const clients: AgentClient[] = [];
const servers: Server[] = [];

interface Vmm {
  child: ChildProcess;
  sock: string;
  guest: string;
  consolePath: string;
  ready: Promise<string>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
}

interface VmmOptions {
  /** The VMM's argv; default: the real agent serving the guest path. */
  argv?: (guestPath: string) => string[];
  guest?: (guestPath: string) => string;
  extra?: string[];
  bootTimeoutMs?: number;
}

function startVmm(o: VmmOptions = {}): Vmm {
  const dir = join(work, `v${++seq}`);
  spawnSync("mkdir", ["-p", dir]);
  const sock = join(dir, "vmm.sock");
  const guest = join(dir, "guest.sock");
  const consolePath = join(dir, "console.log");
  const argv = o.argv ? o.argv(guest) : [AGENT, "serve", "--listen", guest];
  const child = spawn(
    AGENT,
    [
      "vmm",
      "--listen",
      sock,
      "--guest",
      o.guest ? o.guest(guest) : `unix:${guest}`,
      "--ready-fd",
      "3",
      "--console",
      consolePath,
      "--boot-timeout-ms",
      String(o.bootTimeoutMs ?? 5000),
      // A test runner killed mid-run (a timeout) must not leave vmms behind.
      "--die-with-parent",
      ...(o.extra ?? []),
      "--",
      ...argv,
    ],
    { stdio: ["ignore", "ignore", "pipe", "pipe"] },
  );
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const ready = new Promise<string>((resolve) => {
    let text = "";
    const s = child.stdio[3] as NodeJS.ReadableStream;
    s.on("data", (b: Buffer) => (text += b.toString()));
    s.on("end", () => resolve(text));
    s.on("error", () => resolve(text));
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  const v = { child, sock, guest, consolePath, ready, exit, stderr: () => err };
  vmms.push(v);
  return v;
}

async function connect(v: Vmm): Promise<AgentClient> {
  const c = await AgentClient.connect(v.sock);
  clients.push(c);
  return c;
}

/** The pids of a process's children (the stand-in VMM). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const spec = (argv: string[], more: Partial<ExecSpec> = {}): ExecSpec => ({
  argv,
  env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
  cwd: "",
  timeoutMs: 0,
  ...more,
});

async function run(c: AgentClient, script: string, more: Partial<ExecSpec> = {}) {
  const out: Buffer[] = [];
  const h = c.exec(spec(["/bin/sh", "-c", script], { onStdout: (b) => void out.push(Buffer.from(b)), ...more }));
  const result = await h.result;
  return { result, stdout: Buffer.concat(out).toString() };
}

const exited = (value: number): ExecResult => ({ kind: "exited", value, timed_out: false, killed: false });

before(() => {
  const r = spawnSync("make", ["-C", join(ROOT, "guest")], { encoding: "utf8" });
  assert.equal(r.status, 0, `make -C guest failed:\n${r.stdout}${r.stderr}`);
  work = mkdtempSync(join(tmpdir(), "pyro-vmm-test-"));
});

after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) s.close();
  for (const v of vmms) if (v.child.exitCode === null && v.child.signalCode === null) v.child.kill("SIGKILL");
  await Promise.all(vmms.map((v) => v.exit));
  if (work) rmSync(work, { recursive: true, force: true });
});

// ------------------------------------------------------------ the real agent

test("boot: console captured, 'R', many clients with concurrent execs, stdin, large output, ping", async () => {
  const v = startVmm({ argv: (g) => ["/bin/sh", "-c", `echo stand-in VMM booting; exec ${AGENT} serve --listen ${g}`] });
  assert.equal(await v.ready, "R", v.stderr());
  assert.equal(statSync(v.sock).mode & 0o777, 0o600, "the vmm's socket is 0600");
  assert.match(readFileSync(v.consolePath, "utf8"), /stand-in VMM booting/);

  const cs = await Promise.all([0, 1, 2, 3].map(() => connect(v)));
  assert.deepEqual(cs[0]!.agent, { version: 1, max_payload: 65536, initial_window: 262144, agent_version: "pyro-agent 0.1.0" });
  await Promise.all(cs.map((c) => c.ping()));

  // 4 clients x 4 execs at once: echo, stdin through cat, 16 MiB out with a
  // slow consumer (flow control end to end), exit codes.
  const jobs = cs.flatMap((c, i) => [
    run(c, `echo client ${i}; exit ${i}`).then((r) => {
      assert.equal(r.stdout, `client ${i}\n`);
      assert.deepEqual(r.result, exited(i));
    }),
    (async () => {
      const input = Buffer.alloc(1_500_000 + i, 97 + i);
      const r = await run(c, "cat", { stdin: input });
      assert.equal(r.stdout.length, input.length);
      assert.equal(r.stdout, input.toString());
    })(),
    (async () => {
      let n = 0;
      let slow = 0;
      const h = c.exec(
        spec(["/bin/sh", "-c", "head -c 16777216 /dev/zero"], {
          onStdout: (b) => {
            n += b.length;
            if (++slow % 50 === 0) return new Promise((r) => setTimeout(r, 5));
          },
        }),
      );
      assert.deepEqual(await h.result, exited(0));
      assert.equal(n, 16777216);
      assert.ok(h.queuedBytes <= 262144);
    })(),
    c.ping(),
  ]);
  await Promise.all(jobs);
  const st = readFileSync(`/proc/${v.child.pid}/status`, "utf8");
  const rss = Number(/VmRSS:\s+(\d+)/.exec(st)![1]);
  assert.ok(rss < 32 * 1024, `the vmm's RSS stays small (${rss} KiB)`);
});

test("a client killed mid-exec: its processes die in the guest; the others go on; ids are freed", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R", v.stderr());
  const a = await connect(v);
  const b = await connect(v);
  const pids: number[] = [];
  const hs = [0, 1, 2].map(() => a.exec(spec(["/bin/sh", "-c", "echo start; sleep 1000"], { onStdout: () => {} })));
  for (const h of hs) {
    h.result.catch(() => {}); // rejects with cancelled at a.close()
    pids.push((await h.opened)!);
  }
  for (const p of pids) assert.ok(alive(p), `process ${p} runs`);
  // b keeps a stream going across a's disconnect.
  const long = b.exec(spec(["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done"], { onStdout: () => {} }));
  a.close();
  await waitFor("a's processes to die", () => pids.every((p) => !alive(p)));
  assert.deepEqual(await long.result, exited(0));
  // 70 execs one after another on a new client: ids freed by the dropped EXITs.
  const c = await connect(v);
  for (let i = 0; i < 70; i++) assert.deepEqual((await run(c, "true")).result, exited(0));
  await c.ping();
});

test("SHUTDOWN: forwarded; the vmm exits with the VMM's status and removes its socket", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const c = await connect(v);
  const vmmPid = childrenOf(v.child.pid!)[0]!;
  await c.shutdown();
  const e = await v.exit;
  assert.deepEqual(e, { code: 0, signal: null }, v.stderr());
  assert.ok(!existsSync(v.sock));
  assert.ok(!alive(vmmPid));
});

test("kill -9 of the vmm leaves no VMM process", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const c = await connect(v);
  const h = c.exec(spec(["sleep", "1000"]));
  h.result.catch(() => {}); // rejects when the vmm dies
  const cmd = (await h.opened)!;
  const vmmPid = childrenOf(v.child.pid!)[0]!;
  assert.ok(alive(vmmPid));
  v.child.kill("SIGKILL");
  await v.exit;
  await waitFor("the stand-in VMM to die", () => !alive(vmmPid));
  // The agent (the stand-in's guest) killed its command as it died.
  await waitFor("the guest's command to die", () => !alive(cmd));
});

test("SIGTERM and the deadline: the VMM killed, the socket removed, exit 0", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const vmmPid = childrenOf(v.child.pid!)[0]!;
  v.child.kill("SIGTERM");
  assert.deepEqual(await v.exit, { code: 0, signal: null });
  assert.ok(!alive(vmmPid) && !existsSync(v.sock));

  const d = startVmm({ extra: ["--deadline", String(Math.floor(Date.now() / 1000) + 2)] });
  assert.equal(await d.ready, "R");
  const dPid = childrenOf(d.child.pid!)[0]!;
  const t = Date.now();
  assert.deepEqual(await d.exit, { code: 0, signal: null });
  assert.ok(Date.now() - t < 3500, `the deadline held (${Date.now() - t} ms)`);
  assert.ok(!alive(dPid) && !existsSync(d.sock));
});

test("--guest fd:N: a socketpair handed to the VMM at fd N, no path at all", async () => {
  const v = startVmm({ guest: () => "fd:5", argv: () => [AGENT, "serve", "--fd", "5"] });
  assert.equal(await v.ready, "R", v.stderr());
  const cs = await Promise.all([0, 1].map(() => connect(v)));
  const rs = await Promise.all(cs.map((c, i) => run(c, `echo via fd ${i}`)));
  assert.deepEqual(rs.map((r) => r.stdout), ["via fd 0\n", "via fd 1\n"]);
});

test("--pass-fd N (twice): the VMM gets each fd at its N, the vmm keeps no copy, so each peer sees the end when the VMM goes", async () => {
  const dir = join(work, `pass${++seq}`);
  spawnSync("mkdir", ["-p", dir]);
  const sock = join(dir, "vmm.sock");
  // fds 6 and 7 are ends of socketpairs (node's "pipe"), as the qemu driver hands a restore with network its
  // snapshot (a file, in fact) and passt's peer.
  const child = spawn(AGENT, ["vmm", "--listen", sock, "--guest", "fd:5", "--ready-fd", "3", "--console", join(dir, "console.log"), "--die-with-parent", "--pass-fd", "6", "--pass-fd", "7", "--", "sh", "-c", `sleep 60 & exec ${AGENT} serve --fd 5`], {
    stdio: ["ignore", "ignore", "pipe", "pipe", "ignore", "ignore", "pipe", "pipe"],
  });
  const ready = await new Promise<string>((resolve) => {
    let text = "";
    const r = child.stdio[3] as NodeJS.ReadableStream;
    r.on("data", (b: Buffer) => {
      text += b.toString();
      if (text.length) resolve(text);
    });
    r.on("end", () => resolve(text));
  });
  assert.equal(ready, "R");
  const ended = [6, 7].map((fd) => {
    const peer = (child.stdio as unknown as Socket[])[fd]!;
    return new Promise<void>((resolve) => {
      peer.on("end", resolve);
      peer.on("close", () => resolve());
      peer.on("error", () => resolve());
      peer.resume();
    });
  });
  // The stand-in VMM is the agent, which closes what it inherited; the sleep its shell started first keeps fds 6 and 7 as qemu would.
  const [vmmChild] = childrenOf(child.pid!);
  assert.ok(vmmChild, "the VMM runs");
  const [holder] = childrenOf(vmmChild);
  assert.ok(holder, "the VMM's first process runs");
  for (const fd of [6, 7]) {
    assert.match(readlinkSync(`/proc/${holder}/fd/${fd}`), /^socket:/, `the VMM got the passed fd ${fd} at its number`);
    assert.equal(existsSync(`/proc/${child.pid}/fd/${fd}`), false, `the vmm closed its own copy of ${fd}`);
  }
  // SIGTERM: the vmm kills the VMM's group; with nobody else holding fds 6 and 7, each peer sees the end.
  child.kill("SIGTERM");
  await Promise.race([Promise.all(ended), new Promise((_, reject) => setTimeout(() => reject(new Error("a peer never saw the end")), 5000))]);
  const vmm = (...extra: string[]) => spawnSync(AGENT, ["vmm", "--listen", sock, "--guest", "fd:5", "--ready-fd", "3", "--console", join(dir, "c2"), ...extra, "--", "true"], { encoding: "utf8" });
  for (const [extra, why] of [
    [["--pass-fd", "5"], /--pass-fd N must be neither/],
    [["--pass-fd", "6", "--pass-fd", "6"], /twice with the same N/],
    [["--pass-fd", "6", "--pass-fd", "7", "--pass-fd", "8"], /at most twice/],
  ] as const) {
    const bad = vmm(...extra);
    assert.equal(bad.status, 2, extra.join(" "));
    assert.match(bad.stderr, why);
  }
});

test("the console log is capped; its head is kept", async () => {
  const v = startVmm({
    argv: (g) => ["/bin/sh", "-c", `echo FIRST; head -c 3000000 /dev/zero | tr '\\0' x; exec ${AGENT} serve --listen ${g}`],
    extra: ["--console-max", "100000"],
  });
  assert.equal(await v.ready, "R", v.stderr());
  const c = await connect(v);
  await c.ping();
  const log = readFileSync(v.consolePath, "utf8");
  assert.ok(log.startsWith("FIRST\n"));
  assert.ok(log.length <= 100000 + 100, `log is ${log.length} bytes`);
  assert.match(log, /console output past 100000 bytes is not kept/);
});

test("version negotiation is the agent's: a client outside the guest's version gets E_VERSION", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const s = createConnection(v.sock);
  const got: Buffer[] = [];
  s.on("data", (b) => got.push(b));
  await new Promise<void>((r) => s.on("connect", () => r()));
  s.write(encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 2, max_version: 3, client: "future" })));
  await new Promise<void>((r) => s.on("close", () => r()));
  const f = Buffer.concat(got);
  assert.equal(f[3], MsgType.ERROR);
  assert.equal(f.readUInt32LE(12), 2);
  assert.match(f.subarray(20).toString(), /no common protocol version \(agent speaks 1\)/);
  // The guest stream survived it.
  const c = await connect(v);
  await c.ping();
});

test("--guest vsock:PATH:PORT: Firecracker's CONNECT/OK handshake, retried while the guest port is not up", async () => {
  // A stand-in for Firecracker's host-side vsock socket: the first
  // connection is dropped (nobody listens on the port yet, as Firecracker
  // does), the next gets "OK <hostport>" and is spliced to the real agent.
  const dir = mkdtempSync(join(work, "vsock-"));
  const vsockPath = join(dir, "v.vsock");
  const agentPath = join(dir, "agent.sock");
  const lines: string[] = [];
  let attempts = 0;
  const srv = createServer((s) => {
    let line = "";
    const onData = (b: Buffer) => {
      line += b.toString("latin1");
      const nl = line.indexOf("\n");
      if (nl < 0) return;
      s.off("data", onData);
      lines.push(line.slice(0, nl));
      if (++attempts === 1) return void s.destroy();
      const g = createConnection(agentPath);
      g.on("connect", () => {
        s.write("OK 1073741824\n");
        s.pipe(g);
        g.pipe(s);
      });
      g.on("error", () => s.destroy());
      s.on("error", () => g.destroy());
    };
    s.on("data", onData);
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(vsockPath, () => r()));
  const v = startVmm({ guest: () => `vsock:${vsockPath}:52`, argv: () => [AGENT, "serve", "--listen", agentPath] });
  assert.equal(await v.ready, "R", v.stderr());
  assert.deepEqual(lines.slice(0, 2), ["CONNECT 52", "CONNECT 52"]);
  const c = await connect(v);
  assert.equal((await run(c, "echo over vsock")).stdout, "over vsock\n");

  // A vsock that refuses: a clear E line.
  const dir2 = mkdtempSync(join(work, "vsock-"));
  const refusing = createServer((s) => s.end("NO such port\n"));
  servers.push(refusing);
  await new Promise<void>((r) => refusing.listen(join(dir2, "v.vsock"), () => r()));
  const w = startVmm({ guest: () => `vsock:${join(dir2, "v.vsock")}:52`, argv: () => ["sleep", "1000"] });
  assert.match(await w.ready, /^Ethe vsock answered "NO such port" to CONNECT 52/);
  assert.equal((await w.exit).code, 1);
});

/** A raw protocol client: what it sent and every byte it got until the vmm closed it. */
async function rawClient(v: Vmm, frames: Buffer[], read = true): Promise<{ socket: Socket; closed: Promise<Buffer> }> {
  const socket = createConnection(v.sock);
  const got: Buffer[] = [];
  if (read) socket.on("data", (b) => got.push(b));
  socket.on("error", () => {});
  await new Promise<void>((r) => socket.on("connect", () => r()));
  socket.write(Buffer.concat([encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 1, max_version: 1, client: "raw" })), ...frames]));
  const closed = new Promise<Buffer>((r) => socket.on("close", () => r(Buffer.concat(got))));
  return { socket, closed };
}

/** The ERROR frame at the end of what a raw client got: [code, message]. */
function lastError(b: Buffer): [number, string] {
  let off = 0;
  let last: [number, string] = [0, ""];
  while (off + 12 <= b.length) {
    const len = b.readUInt32LE(off + 8);
    if (b[off + 3] === MsgType.ERROR) last = [b.readUInt32LE(off + 12), b.subarray(off + 20, off + 12 + len).toString()];
    off += 12 + len;
  }
  return last;
}

test("a client's protocol errors are its own: it gets the agent's ERROR, the guest stream and the other clients go on", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const good = await connect(v);
  const open = (ch: number, flags = 0, argv = ["sleep", "1000"]) =>
    encodeFrame(MsgType.OPEN, ch, encodeOpen({ flags, timeout_ms: 0, argv, env: ["PATH=/usr/bin:/bin"], cwd: "" }));
  const cases: [string, Buffer[], number, RegExp][] = [
    ["STDIN without STDIN_PIPE", [open(1), encodeFrame(MsgType.STDIN, 1, Buffer.from("x"))], 4, /without STDIN_PIPE/],
    // sleep never reads: the agent returns at most the pipe's 64 KiB of credit.
    ["STDIN past the window", [open(1, OpenFlags.STDIN_PIPE), ...Array.from({ length: 8 }, () => encodeFrame(MsgType.STDIN, 1, Buffer.alloc(65536)))], 5, /past the window/],
    ["STDIN after STDIN_EOF", [open(1, OpenFlags.STDIN_PIPE), encodeFrame(MsgType.STDIN_EOF, 1), encodeFrame(MsgType.STDIN, 1, Buffer.from("x"))], 1, /after STDIN_EOF/],
    ["a second HELLO", [encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 1, max_version: 1, client: "again" }))], 1, /second HELLO/],
    ["OPEN on a channel in use", [open(3), open(3)], 4, /in use/],
    ["SYNC from a client", [encodeFrame(0x0a, 0, Buffer.concat([Buffer.alloc(8), encodeU32(16), Buffer.alloc(16)]))], 1, /supervisor's own/],
    ["an agent message", [encodeFrame(MsgType.PONG, 0)], 1, /unknown message type|not a host message/],
    ["more than 8 PINGs outstanding", Array.from({ length: 200 }, () => encodeFrame(MsgType.PING, 0, Buffer.from("p"))), 3, /PINGs outstanding/],
  ];
  for (const [name, frames, code, msg] of cases) {
    const { closed } = await rawClient(v, frames);
    const [c, m] = lastError(await closed);
    assert.equal(c, code, `${name}: code (${m})`);
    assert.match(m, msg, name);
    assert.equal((await run(good, "echo still here")).stdout, "still here\n", `after ${name}`);
  }
  assert.equal(v.child.exitCode, null, "the vmm runs on");
});

test("a client that grants credit and never reads is dropped at 8 MiB; its process dies; the vmm stays small", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const grants = Array.from({ length: 4 }, () => encodeFrame(MsgType.WINDOW, 1, encodeU32(0xffffffff)));
  const open = encodeFrame(MsgType.OPEN, 1, encodeOpen({ flags: 0, timeout_ms: 0, argv: ["head", "-c", String(1 << 30), "/dev/zero"], env: ["PATH=/usr/bin:/bin"], cwd: "" }));
  // A client in another process that writes its frames and never reads
  // (node's own socket would keep reading into its buffer).
  const hello = encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 1, max_version: 1, client: "raw" }));
  const script = "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(bytes.fromhex(sys.argv[2]))\ntime.sleep(60)";
  const py = spawn("python3", ["-c", script, v.sock, Buffer.concat([hello, open, ...grants]).toString("hex")], { stdio: "ignore" });
  try {
    await waitFor("the client to be dropped", () => /does not read: dropped/.test(v.stderr()), 20_000).catch((e) => {
      const ps = spawnSync("sh", ["-c", `ps -eo pid,stat,pcpu,rss,args | grep -E 'head -c|python3 -c|${v.sock}' | grep -v grep`], { encoding: "utf8" }).stdout;
      throw new Error(`${e}\nvmm stderr: ${v.stderr()}\nconsole: ${readFileSync(v.consolePath, "utf8")}\n${ps}`);
    });
  } finally {
    py.kill("SIGKILL");
  }
  const st = readFileSync(`/proc/${v.child.pid}/status`, "utf8");
  const hwm = Number(/VmHWM:\s+(\d+)/.exec(st)![1]);
  assert.ok(hwm < 24 * 1024, `vmm peak RSS ${hwm} KiB`);
  const c = await connect(v);
  assert.equal((await run(c, "echo fine")).stdout, "fine\n");
  await waitFor("the reader-less client's process to die", () => spawnSync("sh", ["-c", "ps -eo args | grep -q '^head -c 1073741824'"]).status !== 0);
});

test("a 17th connection is refused with E_LIMIT", async () => {
  const v = startVmm();
  assert.equal(await v.ready, "R");
  const cs = await Promise.all(Array.from({ length: 16 }, () => connect(v)));
  // Said before any HELLO: read it without writing.
  const s17 = createConnection(v.sock);
  const got: Buffer[] = [];
  s17.on("data", (b) => got.push(b));
  await new Promise<void>((r) => s17.on("close", () => r()));
  assert.deepEqual(lastError(Buffer.concat(got)), [3, "too many connections (16)"]);
  await Promise.all(cs.map((c) => c.ping()));
});

// ------------------------------------------------------------ boot failures

test("a VMM that dies during boot: 'E' with its status and its last console lines", async () => {
  const v = startVmm({ argv: () => ["/bin/sh", "-c", "echo 'Kernel panic - not syncing: no init'; exit 3"] });
  const line = await v.ready;
  assert.match(line, /^Ethe VMM exited with status 3 during boot/);
  assert.match(line, /Kernel panic - not syncing: no init/);
  assert.ok(line.endsWith("\n") && line.indexOf("\n") === line.length - 1, "one line");
  assert.equal((await v.exit).code, 1);
  assert.ok(!existsSync(v.sock));
});

test("a VMM that cannot be run: 'E' naming it", async () => {
  const v = startVmm({ argv: () => ["/nonexistent/qemu"] });
  assert.match(await v.ready, /^Ecannot run the VMM \/nonexistent\/qemu: No such file or directory/);
  assert.equal((await v.exit).code, 1);
});

test("a guest that never answers: the boot timeout fires cleanly, the VMM is gone", async () => {
  // No stream at all.
  const v = startVmm({ argv: () => ["sleep", "1000"], bootTimeoutMs: 500 });
  const t = Date.now();
  assert.match(await v.ready, /^Ethe guest agent did not answer within 500 ms \(the guest stream never accepted a connection\)/);
  assert.ok(Date.now() - t < 2000);
  const e = await v.exit;
  assert.equal(e.code, 1);
  assert.ok(!existsSync(v.sock));

  // A stream that accepts and says nothing.
  const dir = mkdtempSync(join(work, "silent-"));
  const path = join(dir, "g.sock");
  const sockets: Socket[] = [];
  const srv = createServer((s) => sockets.push(s));
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(path, () => r()));
  const w = startVmm({ guest: () => `unix:${path}`, argv: () => ["sleep", "1000"], bootTimeoutMs: 500 });
  assert.match(await w.ready, /no HELLO_ACK/);
  assert.equal((await w.exit).code, 1);
  for (const s of sockets) s.destroy();
});

// ------------------------------------------------------------ hostile guests

/** A fake guest: answers HELLO and SYNC, then calls evil with the socket and the first client frame. */
async function fakeGuest(evil: (s: Socket, frame: Buffer) => void): Promise<string> {
  const dir = mkdtempSync(join(work, "evil-"));
  const path = join(dir, "g.sock");
  const srv = createServer((s) => {
    let buf = Buffer.alloc(0);
    let n = 0;
    s.on("data", (b) => {
      buf = Buffer.concat([buf, b]);
      while (buf.length >= 12 && buf.length >= 12 + buf.readUInt32LE(8)) {
        const frame = buf.subarray(0, 12 + buf.readUInt32LE(8));
        buf = buf.subarray(frame.length);
        n++;
        if (frame[3] === MsgType.HELLO)
          s.write(encodeFrame(MsgType.HELLO_ACK, 0, encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 262144, agent_version: "evil" })));
        else if (frame[3] === 0x0a) {
          // SYNC: u64 time, u32 seed_len, seed.
          assert.equal(frame.readUInt32LE(20), 32);
          assert.equal(frame.length, 12 + 12 + 32);
          const ns = frame.readBigUInt64LE(12);
          assert.ok(Math.abs(Number(ns / 1000000n) - Date.now()) < 5000, "SYNC carries the host's time");
          s.write(encodeFrame(0x89, 0, encodeU32(3)));
        } else if (n > 2) evil(s, Buffer.from(frame));
      }
    });
    s.on("error", () => {});
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(path, () => r()));
  return path;
}

for (const [name, evil] of [
  ["output for a channel never opened", (s: Socket) => s.write(encodeFrame(MsgType.STDOUT, 77, Buffer.from("x")))],
  ["a frame over MAX_PAYLOAD", (s: Socket) => s.write(Buffer.from([0x50, 0x59, 1, 0x83, 1, 0, 0, 0, 1, 0, 2, 0]))],
  ["garbage", (s: Socket) => s.write(Buffer.from("GET / HTTP/1.1\r\n\r\n"))],
  ["STDOUT on channel 0", (s: Socket) => s.write(encodeFrame(MsgType.STDOUT, 0, Buffer.from("x")))],
  ["an ERROR", (s: Socket) => s.write(encodeFrame(MsgType.ERROR, 0, encodeCodeMessage(1, "I give up")))],
  ["output past the window", (s: Socket, f: Buffer) => {
    const ch = f.readUInt32LE(4);
    s.write(encodeFrame(MsgType.OPENED, ch, encodeU32(5)));
    for (let i = 0; i < 5; i++) s.write(encodeFrame(MsgType.STDOUT, ch, Buffer.alloc(65536)));
  }],
  ["closing the stream", (s: Socket) => s.destroy()],
  // Kept channels: ATTACHED answering an OPEN, KEPT answering no LIST, DETACHED on a channel without KEEP, a KEPT over 32.
  ["ATTACHED for an OPEN", (s: Socket, f: Buffer) => s.write(encodeFrame(0x8a, f.readUInt32LE(4), Buffer.alloc(16)))],
  ["KEPT for an OPEN", (s: Socket, f: Buffer) => s.write(encodeFrame(0x8c, f.readUInt32LE(4), encodeU32(0)))],
  ["DETACHED on a channel without KEEP", (s: Socket, f: Buffer) => s.write(encodeFrame(0x8b, f.readUInt32LE(4)))],
  ["a KEPT of 33 entries", (s: Socket, f: Buffer) => s.write(encodeFrame(0x8c, f.readUInt32LE(4), encodeU32(33)))],
] as const) {
  test(`a hostile guest (${name}): clients get an error, the VM is killed, the vmm exits 1`, async () => {
    const path = await fakeGuest(evil as (s: Socket, f: Buffer) => void);
    const v = startVmm({ guest: () => `unix:${path}`, argv: () => ["sleep", "1000"] });
    assert.equal(await v.ready, "R", v.stderr());
    const vmmPid = childrenOf(v.child.pid!)[0]!;
    const c = await connect(v);
    const h = c.exec(spec(["true"]));
    await assert.rejects(h.result);
    const e = await v.exit;
    assert.equal(e.code, 1, v.stderr());
    assert.ok(!alive(vmmPid) && !existsSync(v.sock));
    assert.match(v.stderr(), /guest/);
  });
}

/** The vmm's resident set, KiB (0 once it is gone). */
function rssKiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);
  } catch {
    return 0;
  }
}

test("a hostile guest that floods a killed channel and never reads: the vmm stays small and ends the VM (E_FLOW)", async () => {
  // The guest answers OPEN; at the KILL of the client that went it stops
  // reading its stream for good and writes 1-byte STDOUT frames on that
  // channel without end, ignoring its credit. Each dropped frame's credit
  // is owed back to it; refunds that queued one WINDOW per frame grew the
  // vmm by ~48 B per 13-byte frame (1 GB in seconds).
  let flooding!: () => void;
  const floodStarted = new Promise<void>((r) => (flooding = r));
  const path = await fakeGuest((s, f) => {
    const ch = f.readUInt32LE(4);
    if (f[3] === MsgType.OPEN) s.write(encodeFrame(MsgType.OPENED, ch, encodeU32(100 + ch)));
    else if (f[3] === MsgType.KILL) {
      s.pause();
      const one = encodeFrame(MsgType.STDOUT, ch, Buffer.from("x"));
      const big = Buffer.concat(Array.from({ length: 65536 }, () => one));
      const pump = (): void => {
        while (!s.destroyed && s.write(big)) {}
        if (!s.destroyed) s.once("drain", pump);
      };
      pump();
      flooding();
    }
  });
  const v = startVmm({ guest: () => `unix:${path}`, argv: () => ["sleep", "1000"] });
  assert.equal(await v.ready, "R", v.stderr());
  const pid = v.child.pid!;
  const base = rssKiB(pid);
  let peak = base;
  const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(pid))), 10);
  try {
    const open = (ch: number, flags = 0) =>
      encodeFrame(MsgType.OPEN, ch, encodeOpen({ flags, timeout_ms: 0, argv: ["x"], env: [], cwd: "" }));
    const a = await rawClient(v, [open(1)]);
    await waitFor("OPENED", () => a.socket.bytesRead >= 32 + 16); // HELLO_ACK "evil", OPENED
    a.socket.destroy();
    await floodStarted;
    // Flooding with its stream unread: the vmm owes it one WINDOW per
    // channel, not one per frame.
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(peak - base < 6 * 1024, `the vmm's RSS while flooded: ${base} -> ${peak} KiB`);
    // Another client's stdin fills the guest-bound queue past its limit
    // (the guest reads nothing): the refunds wait, the flood runs past its
    // credit, and that ends the VM with a clear error.
    if (v.child.exitCode === null) {
      const frames = Array.from({ length: 16 }, (_, i) => [
        open(i + 1, OpenFlags.STDIN_PIPE),
        ...Array.from({ length: 4 }, () => encodeFrame(MsgType.STDIN, i + 1, Buffer.alloc(65536, 1))),
      ]).flat();
      await rawClient(v, frames);
    }
    const t = Date.now();
    const e = await Promise.race([v.exit, new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
    assert.ok(e !== null, `the vmm ends the VM in bounded time (RSS ${rssKiB(pid)} KiB)`);
    assert.equal(e.code, 1);
    assert.ok(Date.now() - t < 10_000);
    assert.match(v.stderr(), /the guest agent broke the protocol \(code 5\): output past the window/);
    assert.ok(peak - base < 8 * 1024, `the vmm's RSS: ${base} -> ${peak} KiB`);
  } finally {
    clearInterval(sampler);
  }
});

test("bad command lines: exit 2 with what is wrong", () => {
  for (const [args, msg] of [
    [["vmm", "--listen", "/tmp/x", "--console", "/tmp/c", "--ready-fd", "3", "--", "true"], /needs --guest/],
    [["vmm", "--guest", "tcp:1", "--listen", "/tmp/x", "--console", "/tmp/c", "--ready-fd", "3", "--", "true"], /unix:PATH, vsock:PATH:PORT or fd:N/],
    [["vmm", "--guest", "unix:/tmp/g", "--listen", "/tmp/x", "--console", "/tmp/c", "--ready-fd", "3"], /after --/],
    [["vmm", "--guest", "vsock:/tmp/v", "--listen", "/tmp/x", "--console", "/tmp/c", "--ready-fd", "3", "--", "true"], /vsock:PATH:PORT/],
  ] as const) {
    const r = spawnSync(AGENT, args as unknown as string[], { encoding: "utf8" });
    assert.equal(r.status, 2);
    assert.match(r.stderr, msg);
  }
  writeFileSync(join(work, "unused"), "");
});

test("--prepare-snapshot: after SYNCED the stream is closed, 'R', the VMM kept; a second vmm reaches the same guest and serves", async () => {
  const dir = mkdtempSync(join(work, "snap-"));
  const guestPath = join(dir, "g.sock");
  const p = startVmm({ guest: () => `unix:${guestPath}`, argv: () => [AGENT, "serve", "--listen", guestPath], extra: ["--prepare-snapshot"] });
  assert.equal(await p.ready, "R", p.stderr());
  assert.ok(!existsSync(p.sock), "a preparing vmm serves nothing");
  const vmmPid = childrenOf(p.child.pid!)[0]!;
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(alive(vmmPid) && p.child.exitCode === null, "the VMM runs on, for the driver to snapshot it");
  // The "restore": a new vmm, whose own VMM is idle, reaches the guest that waits for a new connection.
  const r = startVmm({ guest: () => `unix:${guestPath}`, argv: () => ["sleep", "1000"] });
  assert.equal(await r.ready, "R", r.stderr());
  const c = await connect(r);
  assert.equal((await run(c, "echo restored")).stdout, "restored\n");
  p.child.kill("SIGTERM");
  assert.equal((await p.exit).code, 0);
  assert.equal((await r.exit).code, 1, "the guest went: the second vmm ends too");
});

test("--die-with-parent: the parent's death takes the vmm and its VMM", async () => {
  const dir = mkdtempSync(join(work, "dwp-"));
  const pidFile = join(dir, "pid");
  const parent = spawn("/bin/sh", [
    "-c",
    `${AGENT} vmm --die-with-parent --listen ${dir}/v.sock --guest unix:${dir}/g.sock --ready-fd 3 --console ${dir}/c.log -- ${AGENT} serve --listen ${dir}/g.sock 3>${dir}/ready & echo $! > ${pidFile}; wait`,
  ], { stdio: "ignore" });
  await waitFor("the vmm to be ready", () => existsSync(join(dir, "ready")) && readFileSync(join(dir, "ready"), "utf8") === "R");
  const vmm = Number(readFileSync(pidFile, "utf8"));
  const inner = childrenOf(vmm)[0]!;
  assert.ok(alive(vmm) && alive(inner));
  parent.kill("SIGKILL");
  await waitFor("the vmm and its VMM to die", () => !alive(vmm) && !alive(inner));
});
