// Where the firecracker driver runs and what it says where it cannot: the
// host checks (KVM not ruled out, a firecracker binary, its version), what
// auto and --driver firecracker do with them, and that a record's driver is
// found whatever this host can boot now.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { firecrackerNetworkCheck, firecrackerSupport, firecrackerVersionCheck, opensKvm, pickAutoDriver, tunRefusal, type DriverStatus } from "../../src/drivers/availability.js";
import { driverNamed, resolveDriver } from "../../src/drivers/index.js";
import { staticKvmVerdict } from "../../src/drivers/vm/kvm.js";

const work = mkdtempSync(join(tmpdir(), "fc-avail-"));
after(() => rmSync(work, { recursive: true, force: true }));

function script(name: string, body: string): string {
  const p = join(work, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return p;
}

test("firecracker's version: v1.8 or newer (ACPI-described devices, which Debian's kernel needs); an answer that is not a version is said", () => {
  assert.deepEqual(firecrackerVersionCheck(script("fc-new", 'echo "Firecracker v1.10.1"; echo; echo "Supported snapshot data format versions: v5.0.0"')), { name: "firecracker_version", ok: true, detail: "Firecracker v1.10.1" });
  const old = firecrackerVersionCheck(script("fc-old", 'echo "Firecracker v1.7.0"'));
  assert.equal(old.ok, false);
  assert.match(old.detail, /v1\.7\.0 is too old: v1\.8 or newer describes its devices in ACPI/);
  const junk = firecrackerVersionCheck(script("fc-junk", "echo hello; exit 3"));
  assert.equal(junk.ok, false);
  assert.match(junk.detail, /--version did not say a version/);
});

test("PYRO_FIRECRACKER names the binary; one that is not executable is said, with the KVM verdict, and nothing is available", () => {
  const missing = firecrackerSupport({ PATH: "/nonexistent", PYRO_FIRECRACKER: join(work, "no-such-firecracker") });
  assert.equal(missing.available, false);
  assert.match(missing.reason!, /PYRO_FIRECRACKER=.*no-such-firecracker is not an executable file/);
  assert.equal(missing.binary, null);
  const none = firecrackerSupport({ PATH: "/nonexistent" });
  assert.match(none.reason!, /no firecracker binary on PATH .*github\.com\/firecracker-microvm\/firecracker\/releases, or set PYRO_FIRECRACKER/);

  const fc = script("firecracker", 'echo "Firecracker v1.10.1"');
  const found = firecrackerSupport({ PATH: "/nonexistent", PYRO_FIRECRACKER: fc });
  assert.equal(found.binary, fc);
  assert.ok(found.checks.some((c) => c.name === "firecracker_version" && c.ok));
  // On a host whose /dev/kvm cannot boot a stock kernel (this one: PVM) the binary is not enough.
  const kvm = staticKvmVerdict();
  if (kvm && !kvm.usable) {
    assert.equal(found.available, false);
    assert.match(found.reason!, /Firecracker has no software emulation/);
    assert.ok(found.reason!.includes(kvm.detail.replace(/, so qemu runs under TCG$/, "")));
  }
});

test("--driver firecracker where it cannot run: driver_unavailable naming what is missing and what to use instead; auto moves on", (t) => {
  if (firecrackerSupport().available) return t.skip("the firecracker driver can run here");
  assert.throws(() => resolveDriver("firecracker"), (e: Error & { code?: string; hint?: string }) => {
    assert.equal(e.code, "driver_unavailable");
    assert.match(e.message, /The firecracker driver cannot run here: .*(\/dev\/kvm|firecracker binary)/);
    assert.match(String(e.hint), /--driver qemu .*--driver namespace/);
    return true;
  });
  assert.notEqual(resolveDriver("auto").name, "firecracker");
  // A record's driver is found anyway: its sandbox stays killable and cleanable from any process.
  assert.equal(driverNamed("firecracker").name, "firecracker");
  assert.equal(driverNamed("firecracker"), driverNamed("firecracker"), "one driver object per process");
  assert.equal(driverNamed("something-older").name, "namespace");
  assert.throws(() => resolveDriver("kvm"), /Unknown driver "kvm"/);
});

test("auto prefers firecracker wherever it is available, then qemu with proven KVM, then namespace", () => {
  const st = (driver: DriverStatus["driver"], available: boolean, accel: "kvm" | "tcg" | null): DriverStatus => ({
    driver,
    available,
    reason: available ? null : "x",
    isolation: available ? { driver, kind: driver === "namespace" ? "namespace" : accel === "kvm" ? "microvm" : "emulated-vm", accel } : null,
    checks: [],
    missing_packages: [],
  });
  assert.equal(pickAutoDriver([st("firecracker", true, "kvm"), st("qemu", true, "kvm"), st("namespace", true, null)])?.driver, "firecracker");
  assert.equal(pickAutoDriver([st("firecracker", false, null), st("qemu", true, "kvm"), st("namespace", true, null)])?.driver, "qemu");
  assert.equal(pickAutoDriver([st("firecracker", false, null), st("qemu", true, "tcg"), st("namespace", true, null)])?.driver, "namespace");
});

test("as root, /dev/kvm must let the sandbox uid in by its mode (launch drops supplementary groups): opensKvm reads it right", (t) => {
  const dev = join(work, "kvm");
  writeFileSync(dev, "");
  const owner = { uid: 2_000_000_000, gid: 2_000_000_000 };
  chmodSync(dev, 0o600);
  assert.equal(opensKvm(owner, dev), false, "root's alone");
  chmodSync(dev, 0o666);
  assert.equal(opensKvm(owner, dev), true, "everyone's");
  chmodSync(dev, 0o664);
  assert.equal(opensKvm(owner, dev), false, "others may read, not write");
  assert.equal(opensKvm(owner, join(work, "no-kvm")), false);
  if (process.getuid?.() !== 0) return t.skip("chown to another gid needs root");
  chownSync(dev, 0, owner.gid);
  chmodSync(dev, 0o660);
  assert.equal(opensKvm(owner, dev), true, "by its group");
  chownSync(dev, owner.uid, 0);
  chmodSync(dev, 0o066);
  assert.equal(opensKvm(owner, dev), false, "the owner's bits count for the owner, not the others'");
});

test("a firecracker VM's network needs the tun device open to the VM's uid: its mode is read as the kernel does; doctor says it, and it never makes the driver unavailable", (t) => {
  const file = join(work, "not-a-tun");
  writeFileSync(file, "", { mode: 0o666 });
  assert.match(tunRefusal(file, null)!, /is not the tun device \(char 10:200\)/);
  assert.match(tunRefusal("/dev/null", null)!, /is not the tun device/);
  assert.match(tunRefusal(join(work, "absent"), null)!, /does not exist \(the kernel's tun module/);
  const checks = firecrackerSupport({ PYRO_FIRECRACKER: join(work, "absent") }).checks;
  const net = checks.find((c) => c.name === "network");
  assert.ok(net, "doctor lists the network check");
  assert.match(net.detail, /^VMs with network/);
  const support = firecrackerSupport({ PYRO_FIRECRACKER: join(work, "absent") });
  assert.ok(!(support.reason ?? "").includes("VMs with network"), "the network is said, not counted against the driver");
  if (process.getuid?.() !== 0) return t.skip("the mode cases need root (mknod of a tun node, a sandbox uid)");
  const node = (name: string, mode: number, uid = 0, gid = 0) => {
    const p = join(work, name);
    assert.equal(spawnSync("mknod", [p, "c", "10", "200"]).status, 0);
    chmodSync(p, mode);
    chownSync(p, uid, gid);
    return p;
  };
  const owner = { uid: 2000000000, gid: 2000000000 };
  assert.equal(tunRefusal(node("tun666", 0o666), owner), null, "0666, as Debian's udev makes it");
  assert.match(tunRefusal(node("tun600", 0o600), owner)!, /mode 0600 \(owner 0:0\), so the sandbox uid 2000000000, which Firecracker runs as, cannot open it/);
  assert.equal(tunRefusal(node("tun-own", 0o600, owner.uid, 0), owner), null, "its own device");
  assert.equal(tunRefusal(node("tun-grp", 0o660, 0, owner.gid), owner), null, "through its gid");
  // The owner's bits alone count for the owner (as the kernel checks): 0066 owned by the VM's uid refuses it.
  assert.notEqual(tunRefusal(node("tun-owner-denied", 0o066, owner.uid, 0), owner), null);
  assert.equal(firecrackerNetworkCheck(owner, join(work, "tun666")).ok, true);
  assert.match(firecrackerNetworkCheck(owner, join(work, "tun600")).detail, /VMs with network cannot run here: .*tun600 is mode 0600/);
});
