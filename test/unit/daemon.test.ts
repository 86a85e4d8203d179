import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeFrame, Frame, FrameReader, MAX_FRAME } from "../../src/daemon/protocol.js";
import { daemonEnabled, daemonKey, untrustedDirReason } from "../../src/daemon/paths.js";

test("frames survive any split of the byte stream, and oversized or empty frames are refused", () => {
  const bytes = Buffer.concat([encodeFrame(Frame.STDOUT, Buffer.from([0, 255, 10])), encodeFrame(Frame.EXIT, { code: 7 }), encodeFrame(Frame.STDIN_END)]);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const reader = new FrameReader();
    const frames = [...reader.push(bytes.subarray(0, cut)), ...reader.push(bytes.subarray(cut))];
    assert.deepEqual(
      frames.map((f) => [f.type, [...f.payload]]),
      [
        [Frame.STDOUT, [0, 255, 10]],
        [Frame.EXIT, [...Buffer.from('{"code":7}')]],
        [Frame.STDIN_END, []],
      ],
    );
  }
  const huge = Buffer.alloc(5);
  huge.writeUInt32BE(MAX_FRAME + 2, 0);
  assert.throws(() => new FrameReader().push(huge), /bad frame length/);
  assert.throws(() => new FrameReader().push(Buffer.alloc(4)), /bad frame length 0/);
});

test("the daemon's name changes with everything that changes a run, and not with its own knobs", () => {
  const base = { HOME: "/root", PATH: "/usr/bin", PYRO_STATE_DIR: "/a" };
  assert.equal(daemonKey(base), daemonKey({ ...base }));
  assert.notEqual(daemonKey(base), daemonKey({ ...base, PYRO_STATE_DIR: "/b" }));
  assert.notEqual(daemonKey(base), daemonKey({ ...base, PYRO_CACHE_DIR: "/c" }));
  assert.notEqual(daemonKey(base), daemonKey({ ...base, PATH: "/opt/bin:/usr/bin" }));
  assert.notEqual(daemonKey(base), daemonKey({ ...base, PYRO_AGENT: "/tmp/agent" }));
  assert.equal(daemonKey(base), daemonKey({ ...base, PYRO_DAEMON: "1", PYRO_DAEMON_IDLE_SECONDS: "9", TERM: "xterm" }));
  // A relative state directory means the one under the working directory (the daemon runs in /).
  assert.equal(daemonKey({ ...base, PYRO_STATE_DIR: "state" }), daemonKey({ ...base, PYRO_STATE_DIR: join(process.cwd(), "state") }));
  assert.equal(daemonEnabled({}), true);
  for (const off of ["0", "off", "false", "no", " OFF "]) assert.equal(daemonEnabled({ PYRO_DAEMON: off }), false, off);
});

test("a socket directory is trusted only if it is a private directory of this user", (t) => {
  const base = mkdtempSync(join(tmpdir(), "pyro-dd-"));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const dir = join(base, "d");
  assert.equal(untrustedDirReason(dir), "it does not exist");
  mkdirSync(dir, { mode: 0o700 });
  assert.equal(untrustedDirReason(dir), null);
  chmodSync(dir, 0o755);
  assert.match(untrustedDirReason(dir)!, /mode is 755/);
  chmodSync(dir, 0o700);
  symlinkSync(dir, join(base, "link"));
  assert.equal(untrustedDirReason(join(base, "link")), "it is a symlink");
  writeFileSync(join(base, "file"), "");
  assert.equal(untrustedDirReason(join(base, "file")), "it is not a directory");
});
