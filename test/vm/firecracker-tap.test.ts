// The data path of a firecracker VM's network, for real, on a host that
// cannot run Firecracker (no binary; a PVM /dev/kvm): the driver's own
// plumbing (startJailNetwork: pasta on its tap, `pyro-agent tapnet`'s TAP
// owned by the VM's uid and the bridge, IPv6 off) in a network namespace of
// its own, and a real guest on that TAP in Firecracker's place: QEMU (TCG)
// with `-netdev tap,ifname=fc0`, booting the environment's real VM
// artifacts (Debian's cloud kernel, our initramfs with the agent as /init,
// the busybox root image) with the kernel command line the VM drivers give
// a VM with network. The guest must reach a server on the host's own
// address (the outside) and must not reach the host's loopback by any name.
// QEMU runs as root here (it opens the host's /dev/net/tun, root's alone on
// this host); that the VM's uid may open the TAP is proven with the
// stand-in (test/integration/firecracker-standin.test.ts).
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEnvironment } from "../../src/environments/index.js";
import { ensureVmArtifacts } from "../../src/environments/vm/index.js";
import { findExecutable } from "../../src/drivers/availability.js";
import { FIRECRACKER_TAP, startJailNetwork } from "../../src/drivers/firecracker/network.js";
import { GUEST_MAC, guestNetCmdline, SANDBOX_NET } from "../../src/drivers/network.js";
import { AGENT_PORT } from "../../src/drivers/qemu/args.js";
import { agentBootWords } from "../../src/drivers/vm/guest.js";
import type { SandboxSpec } from "../../src/drivers/types.js";
import { agentBinaryPath } from "../../src/util/agent-binary.js";
import { identityOf, killTrees } from "../../src/util/proc.js";
import { sandboxOwner } from "../../src/util/sandbox-user.js";
import { bootVm, connectVm, missingForVm, sh, type Fixture, type Kernel } from "../helpers/vm-fixture.js";
import { assertOutsideOnly, hostAddress, ncProbes, outsideAndLoopback } from "../helpers/outside.js";
import { processesMentioning } from "../helpers/sandbox.js";

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return "needs root: QEMU opens the host's /dev/net/tun (mode 0600 here) and joins the namespace with nsenter";
  const vm = missingForVm();
  if (vm) return vm;
  if (!findExecutable("pasta")) return "pasta is not installed (apt-get install passt)";
  for (const tool of ["unshare", "nsenter"]) if (!findExecutable(tool)) return `${tool} is not installed (util-linux)`;
  if (!hostAddress()) return "this host has no non-loopback IPv4 address to stand in for the outside";
  return false;
}

test("a real guest on the TAP the firecracker driver makes reaches the outside through pasta, and not the host's loopback", { skip: skipReason(), timeout: 600_000 }, async (t: TestContext) => {
  const env = await ensureEnvironment("busybox");
  const a = await ensureVmArtifacts(env);
  const dir = mkdtempSync(join(tmpdir(), "pyro-fc-tap-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));

  // The jail's network namespace, owned by a user namespace of its own, as bwrap's is.
  const holder = spawn("unshare", ["--user", "--net", "sleep", "600"], { stdio: "ignore" });
  t.after(() => holder.kill("SIGKILL"));
  let jail = null;
  for (let i = 0; i < 100 && !jail; i++) {
    await new Promise((r) => setTimeout(r, 20));
    const id = holder.pid ? identityOf(holder.pid) : null;
    if (id && readlinkSync(`/proc/${id.pid}/ns/net`) !== readlinkSync("/proc/self/ns/net")) jail = id;
  }
  assert.ok(jail, "the namespace holder runs");
  const net = await startJailNetwork(jail, dir, agentBinaryPath(), sandboxOwner(), () => undefined);
  t.after(() => killTrees(net.pasta));
  assert.equal(net.info.guest_ip, SANDBOX_NET.guest_ip);

  const { outside, loopback } = await outsideAndLoopback(t, hostAddress()!);
  const spec = { id: "vm_7a7a7a7a7a7a", hostname: "vm-7a7a7a7a7a7a", pids_max: 512, mem_mib: 256, network: true } as SandboxSpec;
  const append = [...agentBootWords(spec, { kind: "ram", mib: 64 }, { port: AGENT_PORT }), ...guestNetCmdline()].join(" ");
  const fx: Fixture = { dir, kernel: { vmlinux: a.kernel.path } as Kernel, initramfs: a.initramfs.path, rootImage: a.rootfs_image.path };
  const t0 = performance.now();
  const vm = bootVm(fx, {
    append,
    wrap: ["nsenter", `--net=/proc/${jail.pid}/ns/net`, "--"],
    qemuArgs: ["-netdev", `tap,id=net,ifname=${FIRECRACKER_TAP},script=no,downscript=no`, "-device", `virtio-net-device,netdev=net,mac=${GUEST_MAC}`],
  });
  t.after(() => vm.kill());
  const client = await connectVm(vm, 300_000);
  t.after(() => client.close());
  t.diagnostic(`guest booted to its agent in ${(performance.now() - t0).toFixed(0)} ms (TCG)`);

  const addr = hostAddress()!;
  const script = [
    ...ncProbes(addr, outside.port, loopback.port),
    "grep -q 10.0.2.15 /proc/net/fib_trie && echo 'inet 10.0.2.15'",
    "cat /sys/class/net/eth0/address",
    "cat /etc/resolv.conf",
  ].join("; ");
  const t1 = performance.now();
  const r = await sh(client, script, 120_000);
  t.diagnostic(`the probes took ${(performance.now() - t1).toFixed(0)} ms`);
  assert.equal(r.code, 0, r.err);
  assertOutsideOnly(r.out, `${r.out}\n${r.err}\n${vm.console().slice(-2000)}`);
  assert.match(r.out, /^inet 10\.0\.2\.15$/m);
  assert.match(r.out, new RegExp(`^${GUEST_MAC}$`, "m"), "the guest has the MAC the driver gives Firecracker");
  assert.match(r.out, /^nameserver 10\.0\.2\.3$/m);

  await vm.kill();
  await killTrees(net.pasta);
  holder.kill("SIGKILL");
  await new Promise((r) => holder.once("exit", r));
  assert.deepEqual(processesMentioning(dir), [], "no pasta left");
});
