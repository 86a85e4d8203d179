/**
 * A sandbox whose starter is killed between its fork and its exec: the child
 * shows the starter's command line until it execs, so the starter's cleanup
 * (cleanupDir, reap) cannot find it by the sandbox directory it names; by
 * the time it execs, that cleanup may have come and gone. Two guards make
 * such a late child start nothing (src/drivers/namespace/driver.ts):
 * the root launcher refuses to run once its parent is not the starter (it
 * would otherwise mount the task's disk image a second time), and the agent
 * waits for the starter's 'G' on its ready socket and ends at EOF (it would
 * otherwise listen on the task's socket beside the next boot's agent).
 * Real bubblewrap, the real agent and launcher; each case also runs with
 * the go-ahead given, so that it fails if the guard merely broke the start.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { loopDevicesUnder, waitFor } from "../helpers/sandbox.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const AGENT = join(ROOT, "guest", "build", "pyro-agent");
const bwrap = spawnSync("sh", ["-c", "command -v bwrap"], { encoding: "utf8" }).stdout.trim();
const noBwrap = bwrap ? false : "bwrap is not installed";

/** The agent as init of a pid namespace, the ready fd a socket pair (Node's extra stdio pipes are). */
function startAgent(dir: string) {
  const socket = join(dir, "agent.sock");
  const child = spawn(bwrap, ["--unshare-pid", "--as-pid-1", "--dev-bind", "/", "/", "--proc", "/proc", AGENT, "init", "--listen", socket, "--ready-fd", "3", "--await-go"], {
    stdio: ["ignore", "ignore", "pipe", "pipe"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, socket, exited, ready: child.stdio[3] as Duplex };
}

test("an agent whose starter never says go runs nothing and ends", { skip: noBwrap, timeout: 30_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-go-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = startAgent(dir);
  a.ready.on("error", () => undefined);
  a.ready.destroy(); // the starter died: EOF on the agent's end
  const code = await Promise.race([a.exited, new Promise<"hung">((r) => setTimeout(() => r("hung"), 10_000))]);
  if (code === "hung") a.child.kill("SIGKILL");
  assert.equal(code, 0, "the agent ended on its own");
  assert.equal(existsSync(a.socket), false, "it never listened");
});

test("an agent that is told go goes on with its start", { skip: noBwrap, timeout: 30_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-go-"));
  const a = startAgent(dir);
  t.after(() => {
    a.child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  let said = "";
  a.ready.on("data", (c: Buffer) => (said += c.toString()));
  a.ready.write("G");
  // Past the go-ahead it listens first, then sets up its root: over the host's
  // own / (no /.pyro staging here) that fails, and it says so on the ready fd.
  await waitFor(() => said.length > 0, 10_000, "the agent's readiness report");
  assert.match(said, /^Emkdir \/\.pyro\/root/, `the agent said ${JSON.stringify(said)}`);
  assert.equal(existsSync(a.socket), true, "it listened");
});

const notRoot = process.getuid?.() === 0 ? false : "the launcher runs only as root";

test("a launcher whose parent is not its starter mounts nothing and says why", { skip: notRoot || noBwrap, timeout: 30_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-launch-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, "disk.img");
  writeFileSync(image, "");
  truncateSync(image, 16 << 20);
  assert.equal(spawnSync("mkfs.ext4", ["-q", "-F", image]).status, 0, "mkfs.ext4");
  const rw = join(dir, "rw");
  mkdirSync(rw);
  const launch = (parent: number) =>
    spawnSync(AGENT, ["launch", "--uid", "2000000000", "--gid", "2000000000", "--parent", String(parent), "--disk", image, rw, "--", "/bin/true"], { encoding: "utf8", timeout: 20_000 });
  // Its parent here is this test process: any other pid is a starter that is gone.
  const orphan = launch(process.pid + 1_000_000);
  assert.equal(orphan.status, 125, orphan.stderr);
  assert.match(orphan.stderr, /the process that started the sandbox is gone; nothing was started/);
  assert.deepEqual(loopDevicesUnder(dir), [], "no loop device was attached");
  // The same launch from its real starter goes through (and, with /bin/true as "bwrap", ends at once).
  const started = launch(process.pid);
  assert.equal(started.status, 0, started.stderr);
  await waitFor(() => loopDevicesUnder(dir).length === 0, 10_000, "the image's loop device to detach");
});
