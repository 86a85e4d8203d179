import { test } from "node:test";
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { writeOrWait } from "../../src/cli/io.js";

/**
 * writeOrWait is how a run's output reaches a slow reader (the terminal, a
 * pipe, the daemon's client): it must wait while the reader is backed up, and
 * must never wait for a reader that is gone. The daemon's hang of 2026-12
 * (a client killed mid-output: its stream destroyed, the run waiting for a
 * drain that could not come, the daemon unable to stop) is the second case.
 */

const slow = () => {
  const w = new Writable({ highWaterMark: 4, write: (_c, _e, cb) => void setTimeout(cb, 20) });
  w.on("error", () => undefined);
  return w;
};
const settles = (p: void | Promise<void>, ms: number) => Promise.race([Promise.resolve(p).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

test("a backed-up stream is waited for until it drains", async () => {
  const w = slow();
  const p = writeOrWait(w, Buffer.from("more than four bytes"));
  assert.ok(p instanceof Promise);
  assert.equal(await settles(p, 2_000), true);
});

test("a stream destroyed long before the write is not waited for", async () => {
  const w = slow();
  w.destroy();
  await new Promise((r) => setTimeout(r, 50)); // its close was emitted already
  assert.equal(await settles(writeOrWait(w, Buffer.from("output after the reader went away")), 500), true);
});

test("a stream destroyed while a write waits releases the wait", async () => {
  const w = new Writable({ highWaterMark: 4, write: () => undefined }); // never drains
  w.on("error", () => undefined);
  const p = writeOrWait(w, Buffer.from("more than four bytes"));
  setTimeout(() => w.destroy(), 20);
  assert.equal(await settles(p, 2_000), true);
});

test("an ended stream is not written to or waited for", async () => {
  const w = slow();
  w.end();
  assert.equal(await settles(writeOrWait(w, Buffer.from("late")), 500), true);
});
