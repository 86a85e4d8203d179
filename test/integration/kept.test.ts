/**
 * Kept channels (docs/protocol.md, "Kept channels") against the real agent
 * in a real busybox task sandbox (namespace driver), driven by the real
 * AgentClient: a kept process outlives its connection, its output is
 * buffered in a bounded ring that never stalls it, ATTACH takes it over
 * (the old holder hears DETACHED), LIST is the truth, and the limits and
 * key errors hold.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { AgentClient, isDetachedError } from "../../src/agent/client.js";
import { KEPT_RING_BYTES, MAX_KEPT } from "../../src/agent/codec.js";
import { PyroError } from "../../src/core/errors.js";
import { testPyro, waitFor } from "../helpers/sandbox.js";

/** Polls an async condition until it holds. */
async function until(fn: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ENOENT = 2;
const EEXIST = 17;
const EMFILE = 24;

async function agentOf(t: import("node:test").TestContext): Promise<{ connect: () => Promise<AgentClient> }> {
  const { pyro } = testPyro(t);
  const task = await pyro.createTask({ environment: "busybox" });
  const { handle } = await pyro.tasks.running(task.task_id);
  const clients: AgentClient[] = [];
  t.after(() => clients.forEach((c) => c.close()));
  return {
    connect: async () => {
      const c = await AgentClient.connect(handle.socket);
      clients.push(c);
      return c;
    },
  };
}

const sh = (script: string, keep?: string, out?: (b: Buffer) => void) => ({
  argv: ["/bin/sh", "-c", script],
  env: { PATH: "/bin" },
  cwd: "/",
  timeoutMs: 0,
  stdin: "pipe" as const,
  ...(keep !== undefined ? { keep } : {}),
  onStdout: out,
  onStderr: out,
});

test("a kept process outlives its connection; the next connection attaches it and reads what it printed meanwhile", async (t) => {
  const agent = await agentOf(t);
  const a = await agent.connect();
  let seen = "";
  const first = a.exec(sh("echo before; read line; echo got-$line; sleep 0.5; echo after; exec sleep 300", "k1", (c) => void (seen += c.toString())));
  assert.ok((await first.opened) !== null);
  await first.writeStdin(Buffer.from("hello\n"));
  await waitFor(() => seen.includes("got-hello\n"), 5000, "the first holder's output");
  first.result.catch(() => undefined);
  a.close(); // as a kill -9 of its process would: the connection is gone
  const b = await agent.connect();
  await until(async () => (await b.listKept()).some((e) => e.key === "k1" && e.state === "detached" && e.ring_bytes === "after\n".length), 10_000, "the output buffered while detached");
  let text = "";
  const again = b.attach("k1", { onStdout: (c) => void (text += c.toString()) });
  assert.ok((await again.opened) !== null);
  assert.equal(again.droppedBytes, 0);
  await waitFor(() => text.includes("after"), 5000, "the ring delivered");
  assert.equal(text, "after\n", "what it printed after its connection closed");
  assert.deepEqual((await b.listKept()).map((e) => [e.key, e.state]), [["k1", "attached"]]);
  again.kill();
  const r = await again.result;
  assert.equal(r.kind, "signaled");
  assert.deepEqual(await b.listKept(), [], "an ended kept process leaves no entry");
});

test("a detached chatty process never stalls: 10 MiB written while detached, it exits, the attach gets the ring, dropped_bytes and EXIT", async (t) => {
  const agent = await agentOf(t);
  const a = await agent.connect();
  // It writes only once its first connection is gone (a byte sent to that connection is neither the ring's nor dropped).
  const chatty = a.exec(sh("while [ ! -e /tmp/go ]; do sleep 0.05; done; dd if=/dev/zero bs=65536 count=160 2>/dev/null | tr '\\0' x; echo; echo the-end", "chatty"));
  assert.ok((await chatty.opened) !== null);
  chatty.result.catch(() => undefined);
  a.close();
  const b = await agent.connect();
  const go = await b.exec(sh("touch /tmp/go")).result;
  assert.equal(go.kind, "exited");
  await until(async () => (await b.listKept()).some((e) => e.key === "chatty" && e.state === "exited"), 30_000, "the detached process to exit without a reader");
  const entry = (await b.listKept()).find((e) => e.key === "chatty")!;
  assert.ok(entry.ring_bytes <= KEPT_RING_BYTES && entry.ring_bytes > 0, `ring ${entry.ring_bytes}`);
  let got = 0;
  let tail = "";
  const h = b.attach("chatty", {
    onStdout: (c) => {
      got += c.length;
      tail = (tail + c.toString("latin1")).slice(-64);
    },
  });
  assert.ok((await h.opened) !== null);
  assert.equal(h.exitedBeforeAttach, true);
  const r = await h.result;
  assert.deepEqual(r, { kind: "exited", value: 0, timed_out: false, killed: false });
  assert.equal(got, entry.ring_bytes);
  assert.equal(h.droppedBytes + got, 160 * 65536 + 1 + "the-end\n".length, "every byte is either delivered or counted as dropped");
  assert.ok(h.droppedBytes > 0);
  assert.match(tail, /the-end\n$/, "the ring keeps the newest output");
  assert.deepEqual(await b.listKept(), []);
});

test("takeover: a second attach moves the process; the first holder's channel ends with DETACHED", async (t) => {
  const agent = await agentOf(t);
  const a = await agent.connect();
  const b = await agent.connect();
  const held = a.exec(sh("while :; do read x || exit 3; echo echo-$x; done", "taken", () => undefined));
  assert.ok((await held.opened) !== null);
  const heldEnd = assert.rejects(held.result, (e) => isDetachedError(e) && /another pyro process attached it/.test((e as Error).message));
  let text = "";
  const taker = b.attach("taken", { onStdout: (c) => void (text += c.toString()) });
  assert.ok((await taker.opened) !== null);
  await heldEnd;
  await taker.writeStdin(Buffer.from("one\n"));
  await waitFor(() => text.includes("echo-one"), 5000, "the new holder's stdin and output");
  // The same connection can take its own channel over too, and DETACH hands it back to the agent.
  let more = "";
  const takerEnd = assert.rejects(taker.result, isDetachedError);
  const again = b.attach("taken", { onStdout: (c) => void (more += c.toString()) });
  assert.ok((await again.opened) !== null);
  await takerEnd;
  const againEnd = assert.rejects(again.result, isDetachedError);
  again.detach();
  await againEnd;
  assert.deepEqual((await b.listKept()).map((e) => [e.key, e.state]), [["taken", "detached"]]);
  const last = a.attach("taken");
  assert.ok((await last.opened) !== null);
  last.kill();
  assert.equal((await last.result).kind, "signaled");
});

test("key errors and limits: unknown key, duplicate key, 32 kept at most, bad keys refused before they are sent", async (t) => {
  const agent = await agentOf(t);
  const a = await agent.connect();
  const missing = a.attach("nope");
  assert.equal(await missing.opened, null);
  assert.deepEqual(await missing.result, { kind: "open_failed", errno: ENOENT, message: "no kept process has this key" });
  const handles = [];
  for (let i = 0; i < MAX_KEPT; i++) {
    const h = a.exec(sh("exec sleep 300", `k-${i}`));
    handles.push(h);
  }
  for (const h of handles) {
    assert.ok((await h.opened) !== null);
    h.result.catch(() => undefined);
  }
  const dup = a.exec(sh("exec sleep 300", "k-3"));
  assert.equal(await dup.opened, null);
  const d = await dup.result;
  assert.ok(d.kind === "open_failed" && d.errno === EEXIST && /key exists/.test(d.message), JSON.stringify(d));
  const over = a.exec(sh("exec sleep 300", "k-extra"));
  const o = await over.result;
  assert.ok(o.kind === "open_failed" && o.errno === EMFILE && /too many kept processes \(32\)/.test(o.message), JSON.stringify(o));
  // A process without KEEP is not limited by the kept ones, and cannot be detached.
  const plain = a.exec(sh("echo plain"));
  assert.equal((await plain.result).kind, "exited");
  assert.throws(() => a.exec(sh("true", "has space")), (e) => e instanceof PyroError && e.code === "invalid_argument" && /key/.test(e.message));
  assert.throws(() => a.exec(sh("true", "x".repeat(65))), (e) => e instanceof PyroError && e.code === "invalid_argument");
  assert.throws(() => a.attach(""), (e) => e instanceof PyroError && e.code === "invalid_argument");
  // Everything still works: the connection was never broken by an error.
  assert.equal((await a.listKept()).length, MAX_KEPT);
  a.close();
  const b = await agent.connect();
  assert.equal((await b.listKept()).filter((e) => e.state === "detached").length, MAX_KEPT, "a closed connection detaches them all");
  for (let i = 0; i < MAX_KEPT; i++) {
    const h = b.attach(`k-${i}`);
    assert.ok((await h.opened) !== null);
    h.kill();
    await h.result;
  }
  assert.deepEqual(await b.listKept(), []);
});

test("a DETACH on a channel opened without KEEP is a protocol error that the agent reports", async (t) => {
  const agent = await agentOf(t);
  const a = await agent.connect();
  const plain = a.exec(sh("exec sleep 300"));
  assert.ok((await plain.opened) !== null);
  assert.throws(() => plain.detach(), (e) => e instanceof PyroError && e.code === "invalid_state");
  // Sent anyway (a hostile or buggy host): the agent answers ERROR E_CHANNEL and drops only that connection.
  (a as unknown as { send(type: number, ch: number): void }).send(0x0d, plain.channel);
  await assert.rejects(plain.result, (e) => e instanceof PyroError && /DETACH on a channel opened without KEEP/.test(e.message));
  const b = await agent.connect();
  assert.deepEqual(await b.listKept(), []);
});

test("abuse: a host that attaches one key over and over, on one connection and across many, leaks no channel, fd or process", async (t) => {
  const agent = await agentOf(t);
  const a = await agent.connect();
  const h = a.exec(sh("exec sleep 300", "spin"));
  assert.ok((await h.opened) !== null);
  h.result.catch(() => undefined);
  let last = h;
  for (let i = 0; i < 200; i++) {
    const next = a.attach("spin");
    next.result.catch(() => undefined);
    const lastEnd = assert.rejects(last.result, isDetachedError);
    assert.ok((await next.opened) !== null, `attach ${i}`);
    await lastEnd;
    last = next;
  }
  // The connection still holds one channel for it: 63 more open at once.
  const many = Array.from({ length: 63 }, () => a.exec(sh("exec sleep 300")));
  for (const m of many) assert.ok((await m.opened) !== null);
  for (const m of many) m.kill();
  await Promise.all(many.map((m) => m.result));
  for (let i = 0; i < 20; i++) {
    const c = await agent.connect();
    const x = c.attach("spin");
    x.result.catch(() => undefined);
    assert.ok((await x.opened) !== null);
    c.close(); // detached again each time
  }
  const b = await agent.connect();
  assert.deepEqual((await b.listKept()).map((e) => [e.key, e.state]), [["spin", "detached"]]);
  const end = b.attach("spin");
  assert.ok((await end.opened) !== null);
  end.kill();
  assert.equal((await end.result).kind, "signaled");
  assert.deepEqual(await b.listKept(), []);
});
