/**
 * The kept-channel messages of the wire format (docs/protocol.md, "Kept
 * channels"), host side: OPEN with KEEP and ATTACH/DETACH/LIST encode as
 * the agent expects, and a hostile agent's ATTACHED, DETACHED or KEPT is
 * refused unless it parses exactly within its bounds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  KEPT_RING_BYTES,
  MAX_KEPT,
  MsgType,
  OpenFlags,
  decodeAgentMessage,
  decodeHostMessage,
  encodeAttach,
  encodeAttached,
  encodeKept,
  encodeOpen,
  type KeptEntry,
} from "../../src/agent/codec.js";
import { PyroError } from "../../src/core/errors.js";

const agent = (type: number, payload: Buffer, channel = 3) => decodeAgentMessage({ type, channel, payload });
const refused = (fn: () => unknown, re: RegExp) => assert.throws(fn, (e) => e instanceof PyroError && e.code === "agent_protocol" && re.test(e.message));
const entry = (over: Partial<KeptEntry> = {}): KeptEntry => ({ key: "shell_0123456789ab", pid: 7, state: "detached", ring_bytes: 10, dropped_bytes: 0, ...over });

test("OPEN with KEEP carries the key after cwd; ATTACH, DETACH and LIST round-trip", () => {
  const p = encodeOpen({ flags: OpenFlags.PTY | OpenFlags.KEEP, timeout_ms: 0, argv: ["sh"], env: [], cwd: "/w", key: "svc_web" });
  assert.deepEqual(p.subarray(p.length - 11), Buffer.from([7, 0, 0, 0, ...Buffer.from("svc_web")]));
  const m = decodeHostMessage({ type: MsgType.OPEN, channel: 1, payload: p });
  assert.ok(m.type === "open" && m.key === "svc_web" && m.cwd === "/w");
  assert.deepEqual(decodeHostMessage({ type: MsgType.ATTACH, channel: 2, payload: encodeAttach("a.b-c_9") }), { type: "attach", channel: 2, key: "a.b-c_9" });
  assert.deepEqual(decodeHostMessage({ type: MsgType.DETACH, channel: 2, payload: Buffer.alloc(0) }), { type: "detach", channel: 2 });
  assert.deepEqual(decodeHostMessage({ type: MsgType.LIST, channel: 4, payload: Buffer.alloc(0) }), { type: "list", channel: 4 });
});

test("the host never sends a key the agent would refuse", () => {
  for (const key of ["", "x".repeat(65), "a b", "a/b", "é", "a\0b"]) {
    assert.throws(() => encodeAttach(key), (e) => e instanceof PyroError && e.code === "invalid_argument", JSON.stringify(key));
    assert.throws(() => encodeOpen({ flags: OpenFlags.KEEP, timeout_ms: 0, argv: ["sh"], env: [], cwd: "", key }), (e) => e instanceof PyroError && e.code === "invalid_argument");
  }
  assert.throws(() => encodeOpen({ flags: OpenFlags.KEEP, timeout_ms: 0, argv: ["sh"], env: [], cwd: "" }), /exactly when/);
  assert.throws(() => encodeOpen({ flags: 0, timeout_ms: 0, argv: ["sh"], env: [], cwd: "", key: "k" }), /exactly when/);
  assert.equal(encodeAttach("x".repeat(64)).length, 68);
});

test("ATTACHED, DETACHED and KEPT decode exactly", () => {
  assert.deepEqual(agent(MsgType.ATTACHED, encodeAttached(42, 1, 123n)), { type: "attached", channel: 3, pid: 42, exited: true, dropped_bytes: 123 });
  assert.deepEqual(agent(MsgType.DETACHED, Buffer.alloc(0)), { type: "detached", channel: 3 });
  const entries = [entry(), entry({ key: "svc_web", state: "attached", pid: 9 }), entry({ key: "k", state: "exited", ring_bytes: KEPT_RING_BYTES, dropped_bytes: 2 ** 40 })];
  assert.deepEqual(agent(MsgType.KEPT, encodeKept(entries)), { type: "kept", channel: 3, entries });
  assert.deepEqual(agent(MsgType.KEPT, encodeKept([])), { type: "kept", channel: 3, entries: [] });
  const full = Array.from({ length: MAX_KEPT }, (_, i) => entry({ key: `k${i}` }));
  assert.equal((agent(MsgType.KEPT, encodeKept(full)) as { entries: unknown[] }).entries.length, MAX_KEPT);
});

test("a hostile ATTACHED, DETACHED or KEPT is a protocol error, never a big allocation or a bad number", () => {
  refused(() => agent(MsgType.ATTACHED, Buffer.alloc(15)), /ATTACHED: payload of 15 bytes/);
  refused(() => agent(MsgType.ATTACHED, Buffer.alloc(17)), /ATTACHED/);
  refused(() => agent(MsgType.ATTACHED, encodeAttached(1, 2, 0n)), /unknown flags 2/);
  refused(() => agent(MsgType.ATTACHED, encodeAttached(1, 0, 2n ** 63n)), /out of range/);
  refused(() => agent(MsgType.DETACHED, Buffer.from([0])), /DETACHED/);
  refused(() => agent(MsgType.KEPT, Buffer.alloc(3)), /too short/);
  // A count over 32, whatever follows: refused before anything is read.
  const many = Buffer.alloc(4);
  many.writeUInt32LE(0xffffffff, 0);
  refused(() => agent(MsgType.KEPT, many), /entries, at most 32/);
  refused(() => agent(MsgType.KEPT, encodeKept(Array.from({ length: MAX_KEPT + 1 }, (_, i) => entry({ key: `k${i}` })))), /at most 32/);
  const one = encodeKept([entry()]);
  refused(() => agent(MsgType.KEPT, one.subarray(0, one.length - 1)), /truncated/);
  refused(() => agent(MsgType.KEPT, Buffer.concat([one, Buffer.from([0])])), /trailing/);
  // A key length over 64, or 0, or one that runs past the payload.
  const longKey = Buffer.from(one);
  longKey.writeUInt32LE(65, 4);
  refused(() => agent(MsgType.KEPT, longKey), /key length/);
  const huge = Buffer.from(one);
  huge.writeUInt32LE(0xfffffff0, 4);
  refused(() => agent(MsgType.KEPT, huge), /truncated|key length/);
  refused(() => agent(MsgType.KEPT, encodeKept([entry({ key: "bad key" })])), /invalid key/);
  const badState = Buffer.from(one);
  badState.writeUInt32LE(3, 4 + 4 + entry().key.length + 4);
  refused(() => agent(MsgType.KEPT, badState), /unknown state 3/);
  refused(() => agent(MsgType.KEPT, encodeKept([entry({ ring_bytes: KEPT_RING_BYTES + 1 })])), /ring of/);
  refused(() => agent(MsgType.KEPT, encodeKept([entry({ dropped_bytes: Number.MAX_SAFE_INTEGER + 2 })])), /out of range/);
});
