import { test } from "node:test";
import assert from "node:assert/strict";
import {
  type Frame,
  FrameDecoder,
  HEADER_LEN,
  MAX_PAYLOAD,
  MsgType,
  OpenFlags,
  decodeAgentMessage,
  decodeHostMessage,
  encodeCodeMessage,
  encodeExit,
  encodeFrame,
  encodeHello,
  encodeHelloAck,
  encodeOpen,
  encodeU32,
} from "../../src/agent/codec.js";
import { PyroError } from "../../src/core/errors.js";

/** A small seeded PRNG (mulberry32), so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function decodeAll(bytes: Buffer, direction: "from_agent" | "from_host" = "from_agent", split?: number[]): Frame[] {
  const d = new FrameDecoder(direction);
  const out: Frame[] = [];
  let off = 0;
  for (const n of split ?? [bytes.length]) {
    out.push(...d.push(bytes.subarray(off, off + n)));
    off += n;
  }
  if (off < bytes.length) out.push(...d.push(bytes.subarray(off)));
  d.end();
  return out;
}

function isProtocolError(e: unknown): boolean {
  return e instanceof PyroError && e.code === "agent_protocol";
}

function agentFrame(type: number, channel: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return encodeFrame(type, channel, payload);
}

test("the HELLO example of docs/protocol.md", () => {
  // header: magic, v1, HELLO | channel 0 | length 13; then min 1, max 1, string "t"
  const frame = encodeFrame(MsgType.HELLO, 0, encodeHello({ min_version: 1, max_version: 1, client: "t" }));
  assert.deepEqual(frame, Buffer.from("50590101" + "00000000" + "0d000000" + "01000000" + "01000000" + "01000000" + "74", "hex"));
  const [f] = decodeAll(frame, "from_host");
  assert.deepEqual(decodeHostMessage(f!), { type: "hello", channel: 0, min_version: 1, max_version: 1, client: "t" });
});

test("host messages round-trip", () => {
  const open = { flags: OpenFlags.STDIN_PIPE, timeout_ms: 30000, argv: ["/bin/sh", "-lc", "cat"], env: ["A=1", "B=x=y"], cwd: "/workspace" };
  const frames = Buffer.concat([
    encodeFrame(MsgType.OPEN, 1, encodeOpen(open)),
    encodeFrame(MsgType.STDIN, 1, Buffer.from([0xff, 0x00, 0xfe])),
    encodeFrame(MsgType.STDIN_EOF, 1),
    encodeFrame(MsgType.SIGNAL, 1, encodeU32(15)),
    encodeFrame(MsgType.KILL, 1),
    encodeFrame(MsgType.WINDOW, 1, encodeU32(4096)),
    encodeFrame(MsgType.PING, 0, Buffer.from("abc")),
    encodeFrame(MsgType.SHUTDOWN, 0),
  ]);
  const msgs = decodeAll(frames, "from_host").map(decodeHostMessage);
  assert.deepEqual(msgs[0], { type: "open", channel: 1, ...open });
  assert.deepEqual(msgs[1], { type: "stdin", channel: 1, data: Buffer.from([0xff, 0x00, 0xfe]) });
  assert.deepEqual(
    msgs.slice(2).map((m) => m.type),
    ["stdin_eof", "signal", "kill", "window", "ping", "shutdown"],
  );
});

test("agent messages round-trip, whole and byte by byte", () => {
  const stream = Buffer.concat([
    agentFrame(MsgType.HELLO_ACK, 0, encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 262144, agent_version: "pyro-agent 0.1.0" })),
    agentFrame(MsgType.OPENED, 7, encodeU32(42)),
    agentFrame(MsgType.STDOUT, 7, Buffer.from([0x80, 0x81, 0x0a])),
    agentFrame(MsgType.STDERR, 7, Buffer.alloc(MAX_PAYLOAD, 1)),
    agentFrame(MsgType.STDIN_WINDOW, 7, encodeU32(3)),
    agentFrame(MsgType.EXIT, 7, encodeExit({ kind: 1, value: 9, flags: 7 })),
    agentFrame(MsgType.OPEN_FAILED, 8, encodeCodeMessage(2, "cannot execute 'x': No such file or directory")),
    agentFrame(MsgType.PONG, 0, Buffer.from("p")),
    agentFrame(MsgType.ERROR, 0, encodeCodeMessage(5, "past window")),
  ]);
  const whole = decodeAll(stream).map(decodeAgentMessage);
  const bytewise = decodeAll(stream, "from_agent", Array.from({ length: stream.length }, () => 1)).map(decodeAgentMessage);
  assert.deepEqual(bytewise, whole);
  assert.deepEqual(whole[0], { type: "hello_ack", channel: 0, version: 1, max_payload: 65536, initial_window: 262144, agent_version: "pyro-agent 0.1.0" });
  assert.deepEqual(whole[1], { type: "opened", channel: 7, pid: 42 });
  assert.deepEqual(whole[2], { type: "stdout", channel: 7, data: Buffer.from([0x80, 0x81, 0x0a]) });
  assert.equal((whole[3] as { data: Buffer }).data.length, MAX_PAYLOAD);
  assert.deepEqual(whole[5], { type: "exit", channel: 7, kind: 1, value: 9, flags: 7 });
  assert.deepEqual(whole[6], { type: "open_failed", channel: 8, errno: 2, message: "cannot execute 'x': No such file or directory" });
  assert.deepEqual(whole[8], { type: "error", channel: 0, code: 5, message: "past window" });
});

test("malformed frames are rejected with agent_protocol", () => {
  const good = agentFrame(MsgType.OPENED, 1, encodeU32(5));
  const cases: Array<[string, Buffer]> = [
    ["bad magic byte 0", Buffer.concat([Buffer.from([0x51]), good.subarray(1)])],
    ["bad magic byte 1", Buffer.concat([Buffer.from([0x50, 0x00]), good.subarray(2)])],
    ["wrong version", Buffer.from(good).fill(2, 2, 3)],
    ["unknown type", Buffer.from(good).fill(0x7e, 3, 4)],
    ["a host type from the agent", agentFrame(MsgType.OPEN, 1, Buffer.alloc(4))],
    ["HELLO_ACK on a channel", agentFrame(MsgType.HELLO_ACK, 3, Buffer.alloc(16))],
    ["STDOUT on channel 0", agentFrame(MsgType.STDOUT, 0, Buffer.from("x"))],
  ];
  const oversized = Buffer.from(good);
  oversized.writeUInt32LE(MAX_PAYLOAD + 1, 8);
  cases.push(["length over MAX_PAYLOAD (header only)", oversized.subarray(0, HEADER_LEN)]);
  const huge = Buffer.from(good);
  huge.writeUInt32LE(0xffffffff, 8);
  cases.push(["length 0xffffffff", huge.subarray(0, HEADER_LEN)]);
  for (const [name, bytes] of cases) {
    assert.throws(() => decodeAll(bytes), isProtocolError, name);
  }
  // A wrong magic is seen after the first byte, before any header completes.
  const d = new FrameDecoder();
  assert.throws(() => [...d.push(Buffer.from([0x00]))], isProtocolError);
  // Once failed, the decoder stays failed.
  assert.throws(() => [...d.push(good)], isProtocolError);
  // A stream that ends inside a frame.
  const d2 = new FrameDecoder();
  assert.deepEqual([...d2.push(good.subarray(0, 13))], []);
  assert.throws(() => d2.end(), isProtocolError);
});

test("malformed payloads are rejected with agent_protocol", () => {
  const ack = encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 262144, agent_version: "v" });
  const cases: Array<[string, number, number, Buffer]> = [
    ["HELLO_ACK short", MsgType.HELLO_ACK, 0, ack.subarray(0, 10)],
    ["HELLO_ACK trailing byte", MsgType.HELLO_ACK, 0, Buffer.concat([ack, Buffer.from([0])])],
    ["HELLO_ACK string past the end", MsgType.HELLO_ACK, 0, Buffer.concat([ack.subarray(0, 12), encodeU32(1000), Buffer.from("v")])],
    ["OPENED 3 bytes", MsgType.OPENED, 1, Buffer.alloc(3)],
    ["OPENED 5 bytes", MsgType.OPENED, 1, Buffer.alloc(5)],
    ["empty STDOUT", MsgType.STDOUT, 1, Buffer.alloc(0)],
    ["EXIT 11 bytes", MsgType.EXIT, 1, Buffer.alloc(11)],
    ["EXIT unknown kind", MsgType.EXIT, 1, encodeExit({ kind: 2, value: 0, flags: 0 })],
    ["EXIT code 256", MsgType.EXIT, 1, encodeExit({ kind: 0, value: 256, flags: 0 })],
    ["EXIT signal 0", MsgType.EXIT, 1, encodeExit({ kind: 1, value: 0, flags: 0 })],
    ["EXIT unknown flag", MsgType.EXIT, 1, encodeExit({ kind: 0, value: 0, flags: 8 })],
    ["STDIN_WINDOW 8 bytes", MsgType.STDIN_WINDOW, 1, Buffer.alloc(8)],
    ["OPEN_FAILED short", MsgType.OPEN_FAILED, 1, Buffer.alloc(6)],
    ["OPEN_FAILED trailing", MsgType.OPEN_FAILED, 1, Buffer.concat([encodeCodeMessage(2, "x"), Buffer.from("y")])],
    ["PONG over 64 bytes", MsgType.PONG, 0, Buffer.alloc(65)],
    ["ERROR string past the end", MsgType.ERROR, 0, Buffer.concat([encodeU32(1), encodeU32(99)])],
  ];
  for (const [name, type, channel, payload] of cases) {
    assert.throws(() => decodeAll(agentFrame(type, channel, payload)).map(decodeAgentMessage), isProtocolError, name);
  }
});

test("malformed host payloads are rejected (the fake agent's side)", () => {
  const openBytes = encodeOpen({ flags: 0, timeout_ms: 0, argv: ["a"], env: [], cwd: "" });
  const cases: Array<[string, number, number, Buffer]> = [
    ["OPEN truncated", MsgType.OPEN, 1, openBytes.subarray(0, openBytes.length - 1)],
    ["OPEN trailing", MsgType.OPEN, 1, Buffer.concat([openBytes, Buffer.from([0])])],
    ["OPEN argc 0", MsgType.OPEN, 1, Buffer.concat([encodeU32(0), encodeU32(0), encodeU32(0), encodeU32(0), encodeU32(0)])],
    ["SIGNAL 65", MsgType.SIGNAL, 1, encodeU32(65)],
    ["KILL with payload", MsgType.KILL, 1, Buffer.from([1])],
    ["empty STDIN", MsgType.STDIN, 1, Buffer.alloc(0)],
  ];
  for (const [name, type, channel, payload] of cases) {
    assert.throws(() => decodeAll(encodeFrame(type, channel, payload), "from_host").map(decodeHostMessage), isProtocolError, name);
  }
});

test("encodeOpen refuses what the agent would refuse", () => {
  const base = { flags: 0, timeout_ms: 0, argv: ["x"], env: [] as string[], cwd: "/" };
  const code = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return (e as PyroError).code;
    }
    return null;
  };
  assert.equal(code(() => encodeOpen({ ...base, argv: [] })), "invalid_argument");
  assert.equal(code(() => encodeOpen({ ...base, argv: ["a\0b"] })), "invalid_argument");
  assert.equal(code(() => encodeOpen({ ...base, env: ["NOEQ"] })), "invalid_argument");
  assert.equal(code(() => encodeOpen({ ...base, env: ["=v"] })), "invalid_argument");
  assert.equal(code(() => encodeOpen({ ...base, cwd: "/a\0" })), "invalid_argument");
  assert.equal(code(() => encodeOpen({ ...base, argv: ["x".repeat(MAX_PAYLOAD)] })), "limit_exceeded");
  assert.equal(code(() => encodeOpen({ ...base, argv: Array.from({ length: 4097 }, () => "a") })), "limit_exceeded");
  assert.equal(code(() => encodeFrame(MsgType.STDIN, 1, Buffer.alloc(MAX_PAYLOAD + 1))), "invalid_argument");
});

test("random garbage ends in frames or agent_protocol, never a crash, hang or big buffer", () => {
  const rand = prng(0x5eed);
  const int = (n: number) => Math.floor(rand() * n);
  const validFrames = [
    agentFrame(MsgType.OPENED, 1, encodeU32(9)),
    agentFrame(MsgType.STDOUT, 1, Buffer.from("hello")),
    agentFrame(MsgType.EXIT, 1, encodeExit({ kind: 0, value: 0, flags: 0 })),
    agentFrame(MsgType.PONG, 0, Buffer.from("x")),
    agentFrame(MsgType.HELLO_ACK, 0, encodeHelloAck({ version: 1, max_payload: 65536, initial_window: 262144, agent_version: "a" })),
  ];
  let framesSeen = 0;
  let errors = 0;
  let chunks = 0;
  for (let round = 0; round < 6000; round++) {
    // A stream of valid frames with random corruption: flipped bytes, random
    // bytes, random lengths in headers.
    const parts: Buffer[] = [];
    const n = 1 + int(6);
    for (let i = 0; i < n; i++) {
      const kind = int(4);
      if (kind === 0) parts.push(Buffer.from(Array.from({ length: int(40) }, () => int(256))));
      else {
        const f = Buffer.from(validFrames[int(validFrames.length)]!);
        if (kind === 1 && f.length > 0) f[int(f.length)] = int(256);
        if (kind === 2 && rand() < 0.3) f.writeUInt32LE(int(2) ? int(MAX_PAYLOAD * 2) : 0xffffffff, 8);
        parts.push(f);
      }
    }
    const stream = Buffer.concat(parts);
    const d = new FrameDecoder();
    let off = 0;
    try {
      while (off < stream.length) {
        const len = 1 + int(Math.min(64, stream.length - off));
        chunks++;
        for (const f of d.push(stream.subarray(off, off + len))) {
          framesSeen++;
          try {
            decodeAgentMessage(f);
          } catch (e) {
            assert.ok(isProtocolError(e), `payload error is a PyroError: ${String(e)}`);
          }
        }
        assert.ok(d.bufferedBytes <= HEADER_LEN + MAX_PAYLOAD);
        off += len;
      }
      d.end();
    } catch (e) {
      assert.ok(isProtocolError(e), `stream error is a PyroError: ${String(e)}`);
      errors++;
    }
  }
  assert.ok(chunks > 10000, `${chunks} chunks`);
  assert.ok(framesSeen > 100 && errors > 100, `frames ${framesSeen}, errors ${errors}`);
});
