/**
 * A state directory another user owns or may write (a predictable path in
 * /tmp that they made first, a directory left mode 777): they can plant a
 * record whose sandbox names any host process, by the pid and start time
 * anyone reads in /proc, and the reaper of the next `pyro vm list` kills it.
 * docs/security.md, "Paths and ids".
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro, PyroError } from "../../src/index.js";
import { TEST_USER } from "../helpers/unprivileged.js";

const isRoot = process.getuid?.() === 0;

function startTime(pid: number): number {
  // Field 22 of /proc/PID/stat, after the parenthesized command name.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}

async function refusal(p: Promise<unknown>): Promise<PyroError | null> {
  try {
    await p;
    return null;
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected a PyroError, got ${e}`);
    return e;
  }
}

/** An expired VM record whose sandbox is `pid`: what the reaper kills. */
function plantRecord(state: string, pid: number): void {
  const id = "vm_aaaaaaaaaaaa";
  const dir = join(state, "vms", id);
  mkdirSync(dir, { recursive: true });
  const none = { enabled: false, backend: "none", interface: null, guest_ip: null, gateway: null, dns: [], host_loopback_reachable: false };
  const limits = { mechanism: "none", mem_mib: null, vcpu_count: null, pids_max: 1024, disk_mib: 8192, shm_mib: 512, enforced_by: { memory: "none", cpu: "none", pids: "rlimit", disk: "checked", shm: "tmpfs" }, note: "" };
  const record = {
    schema: 1, vm_id: id, environment: "busybox", rootfs: "/", state: "started", vcpu_count: 1, mem_mib: 1024, disk_mib: 8192, network: false, ttl_seconds: 600,
    created_at: "2020-01-01T00:00:00.000Z", expires_at: "2020-01-01T00:10:00.000Z", driver: "namespace", isolation: { driver: "namespace", kind: "namespace", accel: null }, ephemeral: false, owner: null,
    sandbox: { driver: "namespace", process: { pid, start_time: startTime(pid) }, socket: join(dir, "sandbox", "sock", "agent.sock"), helpers: [], cgroups: [], network: none, limits, started_at: "2020-01-01T00:00:01.000Z" },
  };
  writeFileSync(join(dir, "record.json"), JSON.stringify(record));
}

function victim(t: { after(fn: () => void): void }): number {
  const child = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
  child.unref();
  t.after(() => {
    try {
      process.kill(child.pid!, "SIGKILL");
    } catch {
      /* gone */
    }
  });
  return child.pid!;
}

test("a root pyro never acts on records another user planted in a state directory of theirs", { skip: isRoot ? false : "needs root: the victim is root, the planter another uid", timeout: 60_000 }, async (t) => {
  if (spawnSync("id", ["-u", TEST_USER]).status !== 0) spawnSync("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER]);
  const uid = Number(spawnSync("id", ["-u", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const state = mkdtempSync(join(tmpdir(), "pyro-planted-state-"));
  t.after(() => rmSync(state, { recursive: true, force: true }));
  const pid = victim(t);
  plantRecord(state, pid);
  assert.equal(spawnSync("chown", ["-R", `${uid}:${uid}`, state]).status, 0);
  chmodSync(state, 0o755);
  const pyro = new Pyro({ stateDir: state });
  // What every MCP server and daemon runs at start and each minute, and the CLI before a listing.
  const error = (await refusal(pyro.reapExpired())) ?? (await refusal(pyro.listVms()));
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(alive(pid), `root's process ${pid}, named by the other user's record, was killed`);
  assert.ok(error, "the other user's state directory was used");
  assert.equal(error.code, "invalid_state", error.message);
  assert.match(error.message, new RegExp(`Refusing the state directory ${state}: it is owned by uid ${uid}, not 0`));
});

test("a state directory of one's own that others may write is refused, and so is a records directory in it", { timeout: 60_000 }, async (t) => {
  const state = mkdtempSync(join(tmpdir(), "pyro-open-state-"));
  t.after(() => rmSync(state, { recursive: true, force: true }));
  const pid = victim(t);
  plantRecord(state, pid);
  chmodSync(state, 0o777);
  const pyro = new Pyro({ stateDir: state });
  const open = await refusal(pyro.listVms());
  assert.equal(open?.code, "invalid_state", String(open));
  assert.match(open!.message, /Refusing the state directory .*: its mode is 777: others may write it/);
  chmodSync(state, 0o700);
  chmodSync(join(state, "vms"), 0o777);
  const inner = await refusal(pyro.listVms());
  assert.match(String(inner?.message), /Refusing the record directory .*vms: its mode is 777/);
  assert.ok(alive(pid), "the process the planted record names is alive");
});
