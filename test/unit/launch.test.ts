import { test } from "node:test";
import assert from "node:assert/strict";
import { launchCommand, launchStaged } from "../../src/drivers/launch.js";
import { sandboxCommand } from "../../src/drivers/namespace/driver.js";
import { passtCommand } from "../../src/drivers/qemu/passt.js";
import { jailCommand } from "../../src/drivers/vm/jail.js";
import type { SandboxSpec } from "../../src/drivers/types.js";

const owner = { uid: 2_000_000_000, gid: 2_000_000_000 };
const head = ["launch", "--uid", "2000000000", "--gid", "2000000000", "--parent", String(process.pid)];

test("one launcher argv: uid, gid and --parent first, then the KVM device, binds, the disk, and the command after --", () => {
  const c = launchCommand({ agent: "/a/pyro-agent", owner, binds: ["/x", "/y"], disk: { image: "/d/disk.img", at: "/d/rw" }, kvmDevice: "/dev/kvm" }, ["/usr/bin/bwrap", "--", "z"]);
  assert.equal(c.file, "/a/pyro-agent");
  assert.deepEqual(c.args, [...head, "--kvm-device", "/dev/kvm", "--bind", "/x", "--bind", "/y", "--disk", "/d/disk.img", "/d/rw", "--", "/usr/bin/bwrap", "--", "z"]);
  assert.equal(launchStaged("/var/state/vms/v1/sock"), "/run/pyro/var/state/vms/v1/sock");
});

test("every driver's launch carries --parent: the namespace sandbox (with its disk image), a VM's jail, passt", () => {
  const spec: SandboxSpec = { id: "v1", dir: "/s/v1/sandbox", rootfs: "/c/rootfs", vcpu_count: 1, mem_mib: 256, pids_max: 512, disk_mib: 64, keep_layer: true, network: false, deadline: null, die_with_parent: false, hostname: "v1" };
  const ns = sandboxCommand(spec, "/a/pyro-agent", "/usr/bin/bwrap", owner, "ext4-image");
  assert.deepEqual(ns.args.slice(0, head.length), head);
  const dd = ns.args.indexOf("--");
  assert.deepEqual(ns.args.slice(head.length, dd), ["--bind", "/c/rootfs", "--bind", "/s/v1/sandbox/sock", "--bind", "/a/pyro-agent", "--disk", "/s/v1/sandbox/disk.img", "/s/v1/sandbox/rw"], "the image is mounted where rw/ would be bound");
  assert.equal(ns.args[dd + 1], "/usr/bin/bwrap");
  assert.ok(ns.args.includes(launchStaged("/s/v1/sandbox/rw")), "bwrap binds the staged paths");
  for (const c of [jailCommand("/usr/bin/bwrap", ["--x"], { agent: "/a/pyro-agent", owner, binds: ["/k"], kvm: false }), passtCommand("/usr/bin/passt", "/s/run", { agent: "/a/pyro-agent", owner })]) {
    assert.equal(c.file, "/a/pyro-agent");
    assert.deepEqual(c.args.slice(0, head.length), head);
  }
});
