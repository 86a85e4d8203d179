/**
 * SYNC / SYNCED (docs/protocol.md, "SYNC"): the codec both ways, the
 * client's sync() against a scripted agent (answers, order, a SYNCED nobody
 * asked for, silence), and the real agent outside a VM answering flags 0.
 * The VM side (clock set, RNG reseeded) is tested on qemu in test/vm/.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../../src/agent/client.js";
import {
  FrameDecoder,
  MsgType,
  SYNC_SEED_MAX,
  SYNC_SEED_MIN,
  decodeAgentMessage,
  decodeHostMessage,
  encodeFrame,
  encodeHelloAck,
  encodeSync,
  encodeU32,
} from "../../src/agent/codec.js";
import { PyroError } from "../../src/core/errors.js";

const AGENT = new URL("../../guest/build/pyro-agent", import.meta.url).pathname;

function code(e: unknown): string | undefined {
  return e instanceof PyroError ? e.code : undefined;
}

test("SYNC encodes as u64 time, u32 seed_len, seed, and decodes back", () => {
  const seed = Buffer.alloc(32, 7);
  const t = 1764640800123456789n;
  const p = encodeSync({ unix_time_ns: t, seed });
  assert.equal(p.length, 44);
  assert.equal(p.readBigUInt64LE(0), t);
  assert.equal(p.readUInt32LE(8), 32);
  const frame = encodeFrame(MsgType.SYNC, 0, p);
  assert.equal(frame[3], 0x0a);
  const [f] = [...new FrameDecoder("from_host").push(frame)];
  const m = decodeHostMessage(f!);
  assert.equal(m.type, "sync");
  if (m.type === "sync") {
    assert.equal(m.unix_time_ns, t);
    assert.deepEqual(m.seed, seed);
  }
  // The largest u64 survives too.
  const big = decodeHostMessage({ type: MsgType.SYNC, channel: 0, payload: encodeSync({ unix_time_ns: 2n ** 64n - 1n, seed }) });
  assert.equal(big.type === "sync" && big.unix_time_ns, 2n ** 64n - 1n);
});

test("SYNC seeds outside 16..256 bytes and times outside u64 are refused on both sides", () => {
  const t = 1n;
  for (const n of [0, SYNC_SEED_MIN - 1, SYNC_SEED_MAX + 1]) {
    assert.throws(() => encodeSync({ unix_time_ns: t, seed: Buffer.alloc(n) }), (e) => code(e) === "invalid_argument");
  }
  assert.throws(() => encodeSync({ unix_time_ns: -1n, seed: Buffer.alloc(16) }), (e) => code(e) === "invalid_argument");
  assert.throws(() => encodeSync({ unix_time_ns: 2n ** 64n, seed: Buffer.alloc(16) }), (e) => code(e) === "invalid_argument");
  for (const n of [SYNC_SEED_MIN, SYNC_SEED_MAX]) assert.doesNotThrow(() => encodeSync({ unix_time_ns: t, seed: Buffer.alloc(n) }));
  const good = encodeSync({ unix_time_ns: t, seed: Buffer.alloc(20) });
  const bad = [good.subarray(0, 11), Buffer.concat([good, Buffer.from([0])]), good.subarray(0, good.length - 1)];
  const lied = Buffer.from(good);
  lied.writeUInt32LE(300, 8);
  bad.push(lied);
  for (const payload of bad) {
    assert.throws(() => decodeHostMessage({ type: MsgType.SYNC, channel: 0, payload }), (e) => code(e) === "agent_protocol");
  }
  // SYNC lives on channel 0.
  assert.throws(() => [...new FrameDecoder("from_host").push(encodeFrame(MsgType.SYNC, 3, good))], (e) => code(e) === "agent_protocol");
});

test("SYNCED carries u32 flags; unknown bits, other lengths and process channels are protocol errors", () => {
  for (const flags of [0, 1, 2, 3]) {
    assert.deepEqual(decodeAgentMessage({ type: MsgType.SYNCED, channel: 0, payload: encodeU32(flags) }), { type: "synced", channel: 0, flags });
  }
  assert.throws(() => decodeAgentMessage({ type: MsgType.SYNCED, channel: 0, payload: encodeU32(4) }), (e) => code(e) === "agent_protocol");
  assert.throws(() => decodeAgentMessage({ type: MsgType.SYNCED, channel: 0, payload: Buffer.alloc(3) }), (e) => code(e) === "agent_protocol");
  assert.throws(() => [...new FrameDecoder("from_agent").push(encodeFrame(MsgType.SYNCED, 1, encodeU32(0)))], (e) => code(e) === "agent_protocol");
  // Each direction refuses the other's message.
  assert.throws(() => [...new FrameDecoder("from_host").push(encodeFrame(MsgType.SYNCED, 0, encodeU32(0)))], (e) => code(e) === "agent_protocol");
  assert.throws(() => [...new FrameDecoder("from_agent").push(encodeFrame(MsgType.SYNC, 0, encodeSync({ unix_time_ns: 1n, seed: Buffer.alloc(16) })))], (e) => code(e) === "agent_protocol");
});

/**
 * A scripted agent on a unix socket: answers HELLO, then hands every SYNC
 * it gets to onSync (which writes what it likes).
 */
async function scripted(t: { after(fn: () => void): void }, onSync: (sock: Socket, m: { unix_time_ns: bigint; seed: Buffer }, n: number) => void): Promise<AgentClient> {
  const dir = mkdtempSync(join(tmpdir(), "pyro-sync-"));
  const path = join(dir, "s");
  let n = 0;
  const server = createServer((sock) => {
    const dec = new FrameDecoder("from_host");
    sock.on("error", () => {});
    sock.on("data", (chunk) => {
      for (const f of dec.push(chunk)) {
        const m = decodeHostMessage(f);
        if (m.type === "hello") {
          sock.write(encodeFrame(MsgType.HELLO_ACK, 0, encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 262144, agent_version: "fake" })));
        } else if (m.type === "sync") onSync(sock, m, n++);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  const client = await AgentClient.connect(path);
  t.after(() => {
    client.close();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return client;
}

test("sync() sends the host's time and 32 fresh bytes, and maps the flags", async (t) => {
  const seen: Array<{ unix_time_ns: bigint; seed: Buffer }> = [];
  const client = await scripted(t, (sock, m, n) => {
    seen.push(m);
    sock.write(encodeFrame(MsgType.SYNCED, 0, encodeU32([3, 0, 1][n]!)));
  });
  const before = BigInt(Date.now()) * 1_000_000n;
  assert.deepEqual(await client.sync(), { clock: true, rng: true });
  const after = BigInt(Date.now() + 1) * 1_000_000n;
  assert.ok(seen[0]!.unix_time_ns >= before - 1_000_000n && seen[0]!.unix_time_ns <= after, "the time sent is the host's now");
  assert.equal(seen[0]!.seed.length, 32);
  // Two SYNCs in flight are answered in order; every seed is fresh.
  const [a, b] = await Promise.all([client.sync(), client.sync({ seed: Buffer.alloc(16, 1), unixTimeNs: 5n })]);
  assert.deepEqual(a, { clock: false, rng: false });
  assert.deepEqual(b, { clock: true, rng: false });
  assert.notDeepEqual(seen[0]!.seed, seen[1]!.seed);
  assert.equal(seen[2]!.unix_time_ns, 5n);
  assert.deepEqual(seen[2]!.seed, Buffer.alloc(16, 1));
  assert.throws(() => client.sync({ seed: Buffer.alloc(8) }), (e) => code(e) === "invalid_argument");
});

test("a SYNCED that answers no SYNC fails the connection; a silent agent times out", async (t) => {
  const extra = await scripted(t, (sock) => {
    sock.write(encodeFrame(MsgType.SYNCED, 0, encodeU32(3)));
    sock.write(encodeFrame(MsgType.SYNCED, 0, encodeU32(3)));
  });
  assert.deepEqual(await extra.sync(), { clock: true, rng: true });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(extra.closed, true);
  await assert.rejects(extra.sync(), (e) => code(e) === "agent_protocol");

  const silent = await scripted(t, () => {});
  await assert.rejects(silent.sync({ timeoutMs: 200 }), (e) => code(e) === "sandbox_failed" && /SYNC within 200 ms/.test((e as Error).message));
});

test("the real agent outside a VM answers SYNC with flags 0", { skip: existsSync(AGENT) ? false : "guest/build/pyro-agent is not built (make -C guest)" }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-sync-"));
  const path = join(dir, "s");
  const child = spawn(AGENT, ["serve", "--listen", path, "--ready-fd", "3"], { stdio: ["ignore", "ignore", "inherit", "pipe"] });
  t.after(() => {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const ready = await new Promise<string>((resolve) => (child.stdio[3] as NodeJS.ReadableStream).once("data", (b: Buffer) => resolve(b.toString())));
  assert.equal(ready, "R");
  const client = await AgentClient.connect(path);
  t.after(() => client.close());
  // The host's own time (the default): were the agent to apply it, on this shared machine
  // nothing would jump; the flags are what says it did nothing.
  assert.deepEqual(await client.sync(), { clock: false, rng: false });
  await client.ping();
});
