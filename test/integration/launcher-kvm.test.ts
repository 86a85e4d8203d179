/**
 * KVM for a root pyro's VMs (src/drivers/vm/kvm.ts, guest/launch.c): the
 * launcher drops to the sandbox uid with no supplementary group but
 * /dev/kvm's, and only for KVM's own device (10:232) whose group, not
 * root's, may read and write it. Real launcher, real device nodes made in a
 * temporary directory (the host's /dev/kvm is never touched).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvmDeviceGroup, sandboxKvmBlocked } from "../../src/drivers/vm/kvm.js";
import { jailCommand } from "../../src/drivers/vm/jail.js";

const AGENT = join(new URL("../../", import.meta.url).pathname, "guest", "build", "pyro-agent");
const notRoot = process.getuid?.() === 0 ? false : "the launcher runs only as root (and mknod needs it)";
const GID = 4242;
const OWNER = { uid: 2000000000, gid: 2000000000 };

function node(dir: string, name: string, major: number, minor: number, mode: number, gid: number): string {
  const p = join(dir, name);
  assert.equal(spawnSync("mknod", [p, "c", String(major), String(minor)]).status, 0, "mknod");
  chownSync(p, 0, gid);
  chmodSync(p, mode);
  return p;
}

const launch = (device: string) =>
  spawnSync(AGENT, ["launch", "--uid", String(OWNER.uid), "--gid", String(OWNER.gid), "--kvm-device", device, "--", "/usr/bin/id", "-G"], { encoding: "utf8", timeout: 20_000 });

test("the launcher keeps /dev/kvm's group, and only that of a real KVM device that group may open", { skip: notRoot }, (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-kvmdev-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kvm = node(dir, "kvm", 10, 232, 0o660, GID);
  const ok = launch(kvm);
  assert.equal(ok.status, 0, ok.stderr);
  assert.deepEqual(ok.stdout.trim().split(/\s+/).map(Number).sort(), [GID, OWNER.gid].sort(), "the sandbox gid and the device's group, nothing else");
  assert.equal(kvmDeviceGroup(kvm), GID);
  assert.equal(sandboxKvmBlocked(OWNER, kvm), null);

  const rootOnly = node(dir, "kvm-root", 10, 232, 0o600, 0);
  const r1 = launch(rootOnly);
  assert.equal(r1.status, 125);
  assert.match(r1.stderr, /lets no group but root's read and write it/);
  assert.equal(kvmDeviceGroup(rootOnly), null);
  assert.match(sandboxKvmBlocked(OWNER, rootOnly)!, /lets only root in .*give it to the kvm group/);

  const readOnlyGroup = node(dir, "kvm-ro", 10, 232, 0o640, GID);
  assert.equal(launch(readOnlyGroup).status, 125);
  // Another device, even one of the group: the launcher grants no group but KVM's.
  const other = node(dir, "null", 1, 3, 0o660, GID);
  const r2 = launch(other);
  assert.equal(r2.status, 125);
  assert.match(r2.stderr, /not KVM's character device/);
  const file = join(dir, "file");
  writeFileSync(file, "");
  chownSync(file, 0, GID);
  chmodSync(file, 0o660);
  assert.equal(launch(file).status, 125);
  assert.equal(kvmDeviceGroup(file), null);
});

test("the jail's command: bwrap alone, or the launcher with --parent and, for KVM, --kvm-device", () => {
  assert.deepEqual(jailCommand("/usr/bin/bwrap", ["--x"], null), { file: "/usr/bin/bwrap", args: ["--x"] });
  const c = jailCommand("/usr/bin/bwrap", ["--x"], { agent: "/a", owner: OWNER, binds: ["/k", "/d"], kvm: true });
  assert.equal(c.file, "/a");
  assert.deepEqual(c.args, ["launch", "--uid", String(OWNER.uid), "--gid", String(OWNER.gid), "--parent", String(process.pid), "--kvm-device", "/dev/kvm", "--bind", "/k", "--bind", "/d", "--", "/usr/bin/bwrap", "--x"]);
  assert.ok(!jailCommand("/b", [], { agent: "/a", owner: OWNER, binds: [], kvm: false }).args.includes("--kvm-device"));
});
