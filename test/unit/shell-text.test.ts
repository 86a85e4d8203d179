/** The pure parts of shells: the unread-output ring, plain text from a terminal, RESIZE's codec. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ByteRing } from "../../src/runtime/ring.js";
import { stripTerminal } from "../../src/runtime/terminal-text.js";
import { decodeHostMessage, encodeFrame, encodeResize, FrameDecoder, MsgType } from "../../src/agent/codec.js";
import { PyroError } from "../../src/core/errors.js";

const code = (e: unknown) => (e instanceof PyroError ? e.code : String(e));

test("the ring keeps unread bytes in order, wraps, and never holds more than its cap", () => {
  const r = new ByteRing(8);
  r.push(Buffer.from("abc"));
  r.push(Buffer.from("def"));
  assert.equal(r.take(4).data.toString(), "abcd");
  r.push(Buffer.from("ghijk")); // wraps around the end of the buffer
  assert.equal(r.length, 7);
  assert.equal(r.peek().toString(), "efghijk");
  assert.equal(r.peekTail(3).toString(), "ijk", "the newest bytes, across the wrap");
  assert.equal(r.peekTail(100).toString(), "efghijk");
  const all = r.take(100);
  assert.deepEqual([all.data.toString(), all.dropped], ["efghijk", 0]);
  assert.equal(r.length, 0);
});

test("a ring nobody reads drops the oldest bytes and says how many, once", () => {
  const r = new ByteRing(10);
  for (let i = 0; i < 100; i++) r.push(Buffer.from(String(i % 10)));
  assert.equal(r.length, 10);
  assert.equal(r.total, 100);
  assert.equal(r.dropped, 90);
  const t = r.take(10);
  assert.deepEqual([t.data.toString(), t.dropped], ["0123456789", 90]);
  r.push(Buffer.from("x"));
  assert.equal(r.take(10).dropped, 0, "the count is reported by the read that follows the loss, not again");
  // One chunk larger than the ring: only its newest bytes stay.
  r.push(Buffer.from("0123456789ABCDEF"));
  const big = r.take(100);
  assert.deepEqual([big.data.toString(), big.dropped], ["6789ABCDEF", 6]);
});

test("plain text: colours, cursor moves, titles and queries go; CR overwrites, BS erases, CRLF is LF", () => {
  assert.equal(stripTerminal("\x1b[1;32mgreen\x1b[0m text"), "green text");
  assert.equal(stripTerminal("a\r\nb\r\n"), "a\nb\n");
  assert.equal(stripTerminal("\x1b]0;title\x07/workspace # \x1b[6n\x1b[J"), "/workspace # ");
  assert.equal(stripTerminal("10%\r50%\r100%\n"), "100%\n");
  assert.equal(stripTerminal("abc\b\bX"), "aXc");
  assert.equal(stripTerminal("\x1b[?2004hprompt$ \x1b[?2004l"), "prompt$ ");
  assert.equal(stripTerminal("x\x1b(By\x1b=z\x07\x00"), "xyz");
  assert.equal(stripTerminal("tab\there"), "tab\there");
  assert.equal(stripTerminal("\x1bP1;2|payload\x1b\\after"), "after");
  // Hostile input cannot make it slow: linear in the input (no regex backtracking blow-up).
  const evil = "\x1b[" + "1;".repeat(200_000) + "\x1b]" + "x".repeat(200_000);
  const t0 = performance.now();
  stripTerminal(evil + "\r".repeat(100_000) + "\b".repeat(100_000));
  assert.ok(performance.now() - t0 < 2000, "stripping 800 KB of hostile escapes takes under 2 s");
});

test("RESIZE encodes rows and cols, and both sides refuse sizes a winsize cannot hold", () => {
  const frame = encodeFrame(MsgType.RESIZE, 5, encodeResize(50, 132));
  assert.equal(frame[3], 0x0b);
  const [f] = [...new FrameDecoder("from_host").push(frame)];
  assert.deepEqual(decodeHostMessage(f!), { type: "resize", channel: 5, rows: 50, cols: 132 });
  for (const [r, c] of [[0, 80], [24, 0], [65536, 80], [24, 1.5]] as const) {
    assert.throws(() => encodeResize(r, c), (e) => code(e) === "invalid_argument", `${r}x${c}`);
  }
  const bad = Buffer.alloc(8);
  bad.writeUInt32LE(70000, 0);
  bad.writeUInt32LE(80, 4);
  assert.throws(() => decodeHostMessage({ type: MsgType.RESIZE, channel: 5, payload: bad }), (e) => code(e) === "agent_protocol");
  assert.throws(() => [...new FrameDecoder("from_host").push(encodeFrame(MsgType.RESIZE, 0, encodeResize(1, 1)))], (e) => code(e) === "agent_protocol", "not on channel 0");
});
