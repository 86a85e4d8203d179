// The qemu driver's command lines as pure functions: the measured boot
// recipe (host-facts.md), the agent's settings, and what they must refuse.
import { test } from "node:test";
import assert from "node:assert/strict";
import { AGENT_CHARDEV_FD, kernelCmdline, qemuArgs, shmMib, tscKhz } from "../../src/drivers/qemu/args.js";
import type { SandboxSpec } from "../../src/drivers/types.js";
import { PyroError } from "../../src/core/errors.js";
import { GUEST_MAC, passtArgs, passtCommand } from "../../src/drivers/qemu/passt.js";
import { passedFds } from "../../src/drivers/qemu/driver.js";
import { VMM_PASS_FD, VMM_PASS_FD2 } from "../../src/drivers/vm/supervisor.js";

const spec: SandboxSpec = {
  id: "vm_0123456789ab",
  dir: "/state/vms/vm_0123456789ab/sandbox",
  rootfs: "/cache/environments/busybox/rootfs",
  vcpu_count: 2,
  mem_mib: 512,
  disk_mib: 1024,
  pids_max: 1024,
  network: false,
  deadline: null,
  die_with_parent: true,
  keep_layer: false,
  hostname: "vm-0123456789ab",
};
const boot = { kernel: "/c/k/vmlinux", initramfs: "/c/e/initrd.img", root_image: "/c/e/rootfs.ext4" };

test("tsc_early_khz comes from /proc/cpuinfo's MHz, or is left out", () => {
  assert.equal(tscKhz("processor\t: 0\ncpu MHz\t\t: 2999.998\n"), 2999998);
  assert.equal(tscKhz("processor\t: 0\n"), null);
  assert.match(kernelCmdline(spec, { kind: "ram", mib: 64 }, 2000000), /tsc_early_khz=2000000 tsc=reliable/);
  assert.doesNotMatch(kernelCmdline(spec, { kind: "ram", mib: 64 }, null), /tsc/);
});

test("the kernel command line carries the agent's settings, and the data layer", () => {
  const ram = kernelCmdline(spec, { kind: "ram", mib: 64 }, null).split(" ");
  for (const w of ["console=ttyS0", "reboot=t", "panic=-1", "pyro.root=/dev/vda", "pyro.data=ram:64", "pyro.port=org.pyro.agent", "pyro.hostname=vm-0123456789ab", "pyro.pids_max=1024", `pyro.shm_mib=${shmMib(512)}`]) {
    assert.ok(ram.includes(w), `${w} in ${ram.join(" ")}`);
  }
  assert.ok(kernelCmdline(spec, { kind: "disk", path: "/d.img" }, null).split(" ").includes("pyro.data=/dev/vdb"));
  assert.throws(() => kernelCmdline({ ...spec, hostname: "a b" }, { kind: "ram", mib: 64 }, null), /whitespace/);
});

test("qemu's arguments: microvm, no defaults, its seccomp sandbox on, root read-only, the agent on an inherited socketpair", () => {
  const a = qemuArgs(spec, boot, { kind: "disk", path: "/s/vm/disk.img" }, { qmp: "/s/vm/qmp.sock" }, "tcg", null);
  const after = (flag: string) => a[a.indexOf(flag) + 1];
  assert.equal(after("-M"), "microvm");
  assert.equal(after("-accel"), "tcg");
  assert.equal(after("-cpu"), "max");
  assert.equal(after("-m"), "512");
  assert.equal(after("-smp"), "2");
  assert.ok(a.includes("-nodefaults") && a.includes("-no-user-config") && a.includes("-no-reboot"));
  assert.match(after("-sandbox")!, /^on,.*spawn=deny/);
  assert.ok(a.includes("id=root,file=/c/e/rootfs.ext4,format=raw,if=none,readonly=on"));
  assert.ok(a.some((x) => x.startsWith("id=data,file=/s/vm/disk.img,")), "a task's disk is attached");
  assert.ok(a.indexOf("id=root,file=/c/e/rootfs.ext4,format=raw,if=none,readonly=on") < a.findIndex((x) => x.startsWith("id=data,")), "root first: /dev/vda");
  assert.ok(a.includes(`socket,id=agent,fd=${AGENT_CHARDEV_FD}`), "no chardev path another process could connect to");
  assert.equal(qemuArgs(spec, boot, { kind: "ram", mib: 64 }, { qmp: "/q" }, "kvm", null)[qemuArgs(spec, boot, { kind: "ram", mib: 64 }, { qmp: "/q" }, "kvm", null).indexOf("-cpu") + 1], "host");
  assert.ok(!qemuArgs(spec, boot, { kind: "ram", mib: 64 }, { qmp: "/q" }, "tcg", null).some((x) => x.startsWith("id=data")), "a RAM layer attaches no disk");
});

test("a path with a comma is refused: qemu would read it as more options", () => {
  assert.throws(
    () => qemuArgs(spec, { ...boot, root_image: "/c/e,readonly=off/rootfs.ext4" }, { kind: "ram", mib: 64 }, { qmp: "/q" }, "tcg", null),
    (e: unknown) => e instanceof PyroError && e.code === "invalid_argument" && /comma/.test(e.message) && /PYRO_STATE_DIR/.test(e.hint ?? ""),
  );
});

test("network on: qemu's stream netdev to passt's socket, a virtio-net device, and the explicit addresses on the kernel command line", () => {
  const net = { ...spec, network: true };
  const cmdline = kernelCmdline(net, { kind: "ram", mib: 64 }, null).split(" ");
  for (const w of ["pyro.ip=10.0.2.15/24", "pyro.gw=10.0.2.2", "pyro.dns=10.0.2.3"]) assert.ok(cmdline.includes(w), `${w} in ${cmdline.join(" ")}`);
  assert.ok(!kernelCmdline(spec, { kind: "ram", mib: 64 }, null).includes("pyro.ip"), "network off: no address at all");
  const args = qemuArgs(net, boot, { kind: "ram", mib: 64 }, { qmp: "/s/qmp.sock", netFd: 6 }, "tcg", null);
  const netdev = args[args.indexOf("-netdev") + 1]!;
  assert.equal(netdev, "stream,id=net,server=off,addr.type=fd,addr.str=6", "an inherited socketpair end: no path another process could connect to");
  assert.ok(args.includes(`virtio-net-device,netdev=net,mac=${GUEST_MAC}`));
  assert.ok(!qemuArgs(spec, boot, { kind: "ram", mib: 64 }, { qmp: "/s/qmp.sock", netFd: 6 }, "tcg", null).includes("-netdev"), "network off: no network device");
  assert.throws(() => qemuArgs(net, boot, { kind: "ram", mib: 64 }, { qmp: "/s/qmp.sock" }, "tcg", null), /socketpair/);
});

test("a snapshot's template with network: the same virtio-net device on a hub port of its own (no fd, no host), the rest of the argv its restore's", () => {
  const net = { ...spec, network: true };
  const template = qemuArgs(net, boot, { kind: "ram", mib: 64 }, { qmp: "/q", netFd: "template" }, "tcg", null, true);
  const restore = qemuArgs(net, boot, { kind: "ram", mib: 64 }, { qmp: "/q", netFd: 7 }, "tcg", null, true);
  assert.equal(template[template.indexOf("-netdev") + 1], "hubport,id=net,hubid=0");
  assert.equal(restore[restore.indexOf("-netdev") + 1], "stream,id=net,server=off,addr.type=fd,addr.str=7");
  const differ = template.map((a, i) => (a === restore[i] ? null : i)).filter((i) => i !== null);
  assert.deepEqual(differ, [template.indexOf("-netdev") + 1], "only the backend differs: qemu loads a device state into the same device model");
});

test("passt: the host's loopback out of reach, no port forwarded, no DHCP, on its socketpair, in the foreground; as root through the launcher", () => {
  const args = passtArgs("/s/run/passt.pid");
  for (const a of ["--no-map-gw", "--foreground", "--ipv4-only", "--no-dhcp", "--no-dhcpv6", "--no-ndp", "--no-ra"]) assert.ok(args.includes(a), `${a} in ${args.join(" ")}`);
  const opt = (name: string) => args[args.indexOf(name) + 1];
  assert.equal(opt("-t"), "none");
  assert.equal(opt("-u"), "none");
  assert.equal(opt("-a"), "10.0.2.15");
  assert.equal(opt("-g"), "10.0.2.2");
  assert.equal(opt("--dns-forward"), "10.0.2.3");
  assert.equal(opt("--fd"), "3", "passt's end of the socketpair; it ends when qemu's does");
  assert.equal(opt("--pid"), "/s/run/passt.pid");
  assert.ok(!args.some((a) => /^-[TUs]$|^--socket|^--map-host-loopback|^--runas/.test(a)), "no socket path, nothing mapped to the host's loopback, no uid switch by passt itself");
  const direct = passtCommand("/usr/bin/passt", "/s/run", null);
  assert.equal(direct.file, "/usr/bin/passt");
  assert.equal(direct.args[direct.args.indexOf("--pid") + 1], "/s/run/passt.pid", "the pid file's path names the sandbox's directory (how a reap finds an unnoted passt)");
  const asRoot = passtCommand("/usr/bin/passt", "/s/run", { agent: "/a/pyro-agent", owner: { uid: 2000000000, gid: 2000000000 }, stage: "/run" } as never);
  assert.equal(asRoot.file, "/a/pyro-agent");
  assert.deepEqual(asRoot.args.slice(0, 11), ["launch", "--uid", "2000000000", "--gid", "2000000000", "--parent", String(process.pid), "--bind", "/s/run", "--", "/usr/bin/passt"]);
  assert.equal(asRoot.args[asRoot.args.indexOf("--pid") + 1], "/run/pyro/s/run/passt.pid", "as the VM's uid, at the launcher's staged path");
});

test("free page reporting: a virtio-balloon device with reporting on and nothing else of the balloon's, last (every other device keeps its slot), for cold VMs, templates and restores alike", () => {
  for (const snapshot of [false, true]) {
    for (const net of [false, true]) {
      const a = qemuArgs({ ...spec, network: net }, boot, { kind: "ram", mib: 64 }, { qmp: "/q", netFd: 6 }, "tcg", null, snapshot);
      const balloons = a.filter((x) => x.startsWith("virtio-balloon"));
      assert.deepEqual(balloons, ["virtio-balloon-device,free-page-reporting=on"], "one balloon, reporting only: no free-page-hint, no stats polling, no deflate-on-oom");
      assert.equal(a.at(-1), balloons[0], "the last device");
      assert.equal(a.at(-2), "-device");
    }
  }
});

test("a snapshot's template and its restores: run state not in the stream (a restore runs once loaded), the warm-up and zeroed freed pages on the guest's command line; a cold boot has none of them", () => {
  const snap = qemuArgs(spec, boot, { kind: "ram", mib: 64 }, { qmp: "/q" }, "tcg", null, true);
  const cold = qemuArgs(spec, boot, { kind: "ram", mib: 64 }, { qmp: "/q" }, "tcg", null, false);
  assert.equal(snap[snap.indexOf("-global") + 1], "migration.store-global-state=off");
  assert.ok(!cold.includes("-global") && !cold.includes("migration.store-global-state=off"));
  const snapLine = kernelCmdline(spec, { kind: "ram", mib: 64 }, null, true).split(" ");
  const coldLine = kernelCmdline(spec, { kind: "ram", mib: 64 }, null, false).split(" ");
  for (const w of ["pyro.warm=1", "init_on_free=1"]) {
    assert.ok(snapLine.includes(w), `${w} for a template`);
    assert.ok(!coldLine.includes(w), `no ${w} for a cold boot`);
  }
  assert.ok(!snap.includes("-incoming") && !cold.includes("-incoming"), "the driver adds -incoming for a restore only, after the shared argv");
});

test("passed fds: a restore's snapshot first, then passt's end; a template's NIC has no peer", () => {
  assert.deepEqual(passedFds("cold", false), { snapshot: null, net: null, count: 0 });
  assert.deepEqual(passedFds("cold", true), { snapshot: null, net: VMM_PASS_FD, count: 1 });
  assert.deepEqual(passedFds("restore", false), { snapshot: VMM_PASS_FD, net: null, count: 1 });
  assert.deepEqual(passedFds("restore", true), { snapshot: VMM_PASS_FD, net: VMM_PASS_FD2, count: 2 });
  assert.deepEqual(passedFds("template", true), { snapshot: null, net: "template", count: 0 });
  assert.deepEqual(passedFds("template", false), { snapshot: null, net: null, count: 0 });
});
