/**
 * The daemon's socket directory when its parent belongs to another user:
 * root after a plain `su` keeps the user's XDG_RUNTIME_DIR (/run/user/1000),
 * so root's sockets live in /run/user/1000/pyro-mcp, a directory of root's
 * inside one the user may rename entries of. The directory is checked (a
 * real directory, root's, mode 700) and the socket is then reached in it:
 * if the check and the connect each look the name up, the user can swap a
 * directory of their own in between, holding a socket that answers as
 * root's daemon (it reads the command line and stdin of root's `pyro run`
 * and writes what root's terminal shows). docs/security.md, "The CLI daemon".
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { askDaemon } from "../../src/daemon/client.js";
import { ensureDaemonDir, socketPath } from "../../src/daemon/paths.js";
import { encodeFrame, Frame } from "../../src/daemon/protocol.js";
import { TEST_USER } from "../helpers/unprivileged.js";

const isRoot = process.getuid?.() === 0;
const FAKE_PID = 424242;

test("another user who owns the daemon directory's parent cannot swap in a socket that answers as the daemon", { skip: isRoot ? false : "needs root: the victim is root, the attacker another uid", timeout: 120_000 }, async (t) => {
  if (spawnSync("id", ["-u", TEST_USER]).status !== 0) spawnSync("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER]);
  const uid = Number(spawnSync("id", ["-u", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", TEST_USER], { encoding: "utf8" }).stdout.trim());
  // The user's runtime directory, as su leaves it in root's environment.
  const runtime = mkdtempSync(join(tmpdir(), "pyro-other-runtime-"));
  chownSync(runtime, uid, gid);
  chmodSync(runtime, 0o700);
  const saved = process.env.XDG_RUNTIME_DIR;
  process.env.XDG_RUNTIME_DIR = runtime;
  const fake = createServer((socket) => socket.end(encodeFrame(Frame.STATUS_REPLY, { pid: FAKE_PID, build: "fake", started_at: "", socket: "", requests: 0, active: 0, spares: 0, idle_seconds: 0 })));
  let swapper: ReturnType<typeof spawn> | null = null;
  t.after(() => {
    swapper?.kill("SIGKILL");
    fake.close();
    process.env.XDG_RUNTIME_DIR = saved;
    if (saved === undefined) delete process.env.XDG_RUNTIME_DIR;
    rmSync(runtime, { recursive: true, force: true });
  });
  const real = join(runtime, "pyro-mcp");
  ensureDaemonDir(real); // root's own, mode 700: what the client trusts (no daemon listens in it)
  // The user's directory, holding a socket of the daemon's name (the name is a hash of what the user can guess).
  const planted = join(runtime, "planted");
  mkdirSync(planted, { mode: 0o755 });
  await new Promise<void>((resolve) => fake.listen(join(planted, basename(socketPath())), resolve));
  chownSync(planted, uid, gid);
  // The user swaps the two names as fast as it can (renames in a directory of its own).
  const loop = `const fs = require("fs"); const d = process.argv[1];
    for (;;) {
      try {
        fs.renameSync(d + "/pyro-mcp", d + "/real"); fs.renameSync(d + "/planted", d + "/pyro-mcp");
        fs.renameSync(d + "/pyro-mcp", d + "/planted"); fs.renameSync(d + "/real", d + "/pyro-mcp");
      } catch {}
    }`;
  swapper = spawn("setpriv", [`--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", process.execPath, "-e", loop, runtime], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 200));
  let impersonated = 0;
  let asked = 0;
  const until = Date.now() + 15_000;
  while (Date.now() < until && asked < 4000) {
    asked++;
    const reply = await askDaemon("status").catch(() => null);
    if (reply?.pid === FAKE_PID) impersonated++;
  }
  assert.equal(impersonated, 0, `${impersonated} of ${asked} status requests were answered by the other user's socket`);
});
