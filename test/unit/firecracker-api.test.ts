// The firecracker driver's API requests, checked against Firecracker's own
// published API description (test/fixtures/firecracker/, vendored from the
// firecracker repository with its license note), and its client against a
// real HTTP server on a unix socket. No firecracker binary runs here (nor
// could it: /dev/kvm is PVM), so this is where the driver's half of the
// conversation is proven.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { apiCall, bootRequests, configureAndStart, GUEST_CID, type ApiRequest } from "../../src/drivers/firecracker/api.js";
import { AGENT_VSOCK_PORT, bootArgs, firecrackerArgs, instanceId, microVm } from "../../src/drivers/firecracker/args.js";
import { FIRECRACKER_TAP, JAIL_BRIDGE, PASTA_TAP, tapnetArgv } from "../../src/drivers/firecracker/network.js";
import { pastaArgs } from "../../src/drivers/pasta.js";
import { GUEST_MAC, SANDBOX_NET } from "../../src/drivers/network.js";
import { jailArgs } from "../../src/drivers/vm/jail.js";
import type { SandboxSpec } from "../../src/drivers/types.js";
import { loadSwagger, validate, validateRequest } from "../helpers/swagger.js";

const doc = loadSwagger(new URL("../fixtures/firecracker/firecracker-api.json", import.meta.url).pathname);

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
const VSOCK = "/state/vms/vm_0123456789ab/sandbox/vm/run/v.sock";

const work = mkdtempSync(join(tmpdir(), "fc-api-"));
const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
  rmSync(work, { recursive: true, force: true });
});

test("every request of a one-shot VM's boot conforms to Firecracker's API description, in a bootable order", () => {
  const reqs = bootRequests(microVm(spec, boot, { kind: "ram", mib: 1024 }, VSOCK));
  assert.deepEqual(reqs.map((r) => `${r.method} ${r.path}`), ["PUT /machine-config", "PUT /boot-source", "PUT /drives/root", "PUT /vsock", "PUT /actions"]);
  for (const r of reqs) assert.deepEqual(validateRequest(doc, r.method, r.path, r.body), [], `${r.method} ${r.path} ${JSON.stringify(r.body)}`);
  const by = (p: string) => reqs.find((r) => r.path === p)!.body;
  assert.deepEqual(by("/machine-config"), { vcpu_count: 2, mem_size_mib: 512, smt: false });
  assert.deepEqual(by("/boot-source"), { kernel_image_path: boot.kernel, initrd_path: boot.initramfs, boot_args: bootArgs(spec, { kind: "ram", mib: 1024 }) });
  // The root image read-only and not Firecracker's "root device" (our /init mounts it; no root= is added).
  assert.deepEqual(by("/drives/root"), { drive_id: "root", path_on_host: boot.root_image, is_root_device: false, is_read_only: true });
  assert.deepEqual(by("/vsock"), { guest_cid: GUEST_CID, uds_path: VSOCK });
  assert.deepEqual(by("/actions"), { action_type: "InstanceStart" });
});

test("a task's VM gets its own disk, writable, after the root image (so /dev/vdb); a VM with a TAP gets eth0", () => {
  const vm = microVm({ ...spec, keep_layer: true }, boot, { kind: "disk", path: "/state/vm/disk.img" }, VSOCK);
  const reqs = bootRequests({ ...vm, tap: { host_dev_name: "pyro-tap0", guest_mac: "06:00:ac:10:00:02" } });
  assert.deepEqual(reqs.map((r) => r.path), ["/machine-config", "/boot-source", "/drives/root", "/drives/data", "/vsock", "/network-interfaces/eth0", "/actions"]);
  for (const r of reqs) assert.deepEqual(validateRequest(doc, r.method, r.path, r.body), [], `${r.method} ${r.path}`);
  assert.deepEqual(reqs[3]!.body, { drive_id: "data", path_on_host: "/state/vm/disk.img", is_root_device: false, is_read_only: false });
  assert.match(String(reqs[1]!.body.boot_args), / pyro\.data=\/dev\/vdb /);
});

test("a VM with network: its TAP by the name made in the jail, the fixed guest MAC, the guest's addresses on its command line; the request conforms", () => {
  const net = { ...spec, network: true };
  const reqs = bootRequests(microVm(net, boot, { kind: "ram", mib: 1024 }, VSOCK));
  assert.deepEqual(reqs.map((r) => r.path), ["/machine-config", "/boot-source", "/drives/root", "/vsock", "/network-interfaces/eth0", "/actions"]);
  for (const r of reqs) assert.deepEqual(validateRequest(doc, r.method, r.path, r.body), [], `${r.method} ${r.path} ${JSON.stringify(r.body)}`);
  assert.deepEqual(reqs[4]!.body, { iface_id: "eth0", host_dev_name: FIRECRACKER_TAP, guest_mac: GUEST_MAC });
  const words = String(reqs[1]!.body.boot_args).split(" ");
  for (const w of [`pyro.ip=${SANDBOX_NET.guest_ip}/${SANDBOX_NET.prefix}`, `pyro.gw=${SANDBOX_NET.gateway}`, `pyro.dns=${SANDBOX_NET.dns}`]) assert.ok(words.includes(w), w);
  // Without network: no interface, no address words.
  const plain = bootRequests(microVm(spec, boot, { kind: "ram", mib: 1024 }, VSOCK));
  assert.ok(!plain.some((r) => r.path.startsWith("/network-interfaces")));
  assert.doesNotMatch(String(plain[1]!.body.boot_args), /pyro\.(ip|gw|dns)=/);
  // A bad MAC or interface is what Firecracker's description refuses (the validator sees the field).
  assert.match(validateRequest(doc, "PUT", "/network-interfaces/eth0", { iface_id: "eth0" }).join(), /host_dev_name is missing/);
});

test("the jail's network plumbing: tapnet's argv, pasta without --config-net on its own tap, /dev/net/tun bound into the jail only with network", () => {
  assert.deepEqual(tapnetArgv("/a/pyro-agent", 2000000000, false), ["/a/pyro-agent", "tapnet", "--tun", "/dev/net/tun", "--netns-fd", "3", "--tap", FIRECRACKER_TAP, "--owner", "2000000000", "--bridge", JAIL_BRIDGE, "--attach", PASTA_TAP]);
  assert.deepEqual(tapnetArgv("/a/pyro-agent", 1000, true, "/t/tun").slice(2, 7), ["--userns", "--tun", "/t/tun", "--netns-fd", "3"]);
  assert.equal(new Set([FIRECRACKER_TAP, JAIL_BRIDGE, PASTA_TAP]).size, 3);
  const tapPasta = pastaArgs("/s/pasta.pid", true, PASTA_TAP);
  assert.ok(!tapPasta.includes("--config-net"), "the namespace gets no address");
  assert.equal(tapPasta[tapPasta.indexOf("-I") + 1], PASTA_TAP);
  // The same stack and rules as the namespace driver's: the guest's address, no gateway to host loopback, no port forwarded.
  for (const w of ["--no-map-gw", "--ipv4-only", "-a"]) assert.ok(tapPasta.includes(w), w);
  assert.deepEqual([tapPasta[tapPasta.indexOf("-T") + 1], tapPasta[tapPasta.indexOf("-U") + 1]], ["none", "none"]);
  const own = pastaArgs("/s/pasta.pid", true);
  assert.ok(own.includes("--config-net"));
  assert.equal(own[own.indexOf("-I") + 1], SANDBOX_NET.interface);
  const paths = { readOnly: [], writable: [], source: (p: string) => p };
  const withTun = jailArgs(paths, { dieWithParent: true, kvm: true, tun: "/dev/net/tun" }, ["x"]);
  const at = withTun.indexOf("/dev/net/tun");
  assert.deepEqual(withTun.slice(at - 1, at + 2), ["--dev-bind", "/dev/net/tun", "/dev/net/tun"]);
  assert.ok(withTun.indexOf("--unshare-net") >= 0, "the jail keeps its own network namespace");
  assert.ok(!jailArgs(paths, { dieWithParent: true, kvm: true }, ["x"]).includes("/dev/net/tun"));
});

test("the validator is not vacuous: it refuses what Firecracker would refuse", () => {
  assert.match(validateRequest(doc, "PUT", "/machine-config", { vcpu_count: 0, mem_size_mib: 128 }).join(), /below the minimum 1/);
  assert.match(validateRequest(doc, "PUT", "/machine-config", { vcpu_count: 33, mem_size_mib: 128 }).join(), /above the maximum 32/);
  assert.match(validateRequest(doc, "PUT", "/machine-config", { vcpu_count: 1 }).join(), /mem_size_mib is missing/);
  assert.match(validateRequest(doc, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: "128" }).join(), /expected an integer/);
  assert.match(validateRequest(doc, "PUT", "/boot-source", { kernel_image_path: "/k", kernel_args: "x" }).join(), /kernel_args is not a property/);
  assert.match(validateRequest(doc, "PUT", "/drives/root", { drive_id: "data", is_root_device: false, path_on_host: "/x", is_read_only: true }).join(), /differs from the path's "root"/);
  assert.match(validateRequest(doc, "PUT", "/vsock", { guest_cid: 2, uds_path: "/v" }).join(), /below the minimum 3/);
  assert.match(validateRequest(doc, "PUT", "/actions", { action_type: "InstanceStop" }).join(), /is not one of/);
  assert.match(validateRequest(doc, "GET", "/actions", undefined).join(), /no such operation/);
  assert.match(validateRequest(doc, "PUT", "/snapshot/load", {}).join(), /no such operation/);
  assert.match(validate(doc, { $ref: "#/definitions/Error" }, { fault_message: "x" }, "e").join(), /read-only/);
});

test("the guest kernel's command line: Firecracker's reboot and PCI words, the agent's words with its vsock port", () => {
  const line = bootArgs(spec, { kind: "ram", mib: 64 });
  for (const w of ["console=ttyS0", "reboot=k", "panic=1", "pci=off", "pyro.root=/dev/vda", "pyro.data=ram:64", `pyro.vsock=${AGENT_VSOCK_PORT}`, "pyro.hostname=vm-0123456789ab", "pyro.pids_max=1024", "pyro.shm_mib=256"]) {
    assert.ok(line.split(" ").includes(w), `${w} in ${line}`);
  }
  // No serial port word (that is qemu's) and no TCG recipe: Firecracker is KVM only.
  assert.doesNotMatch(line, /pyro\.port=|tsc_early_khz/);
  assert.throws(() => bootArgs({ ...spec, hostname: "a b" }, { kind: "ram", mib: 64 }), /whitespace/);
});

test("firecracker's own argv: its API socket and an instance id Firecracker accepts", () => {
  assert.deepEqual(firecrackerArgs("/usr/local/bin/firecracker", "/s/vm/run/api.sock", "vm_0123456789ab"), ["/usr/local/bin/firecracker", "--api-sock", "/s/vm/run/api.sock", "--id", "vm-0123456789ab"]);
  assert.equal(instanceId("task_0123456789ab"), "task-0123456789ab");
  assert.throws(() => instanceId("vm_../x"), /No Firecracker instance id/);
});

/** A stand-in for Firecracker's API server: a real HTTP server on a unix socket that checks each request against the description. */
function apiServer(path: string, answer: (req: IncomingMessage, body: unknown, errors: string[]) => [number, string] = (_r, _b, errors) => (errors.length ? [400, JSON.stringify({ fault_message: errors.join("; ") })] : [204, ""])) {
  const seen: { method: string; path: string; body: unknown; errors: string[]; contentType: string | undefined }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        body = undefined;
      }
      const errors = validateRequest(doc, req.method!, req.url!, body);
      seen.push({ method: req.method!, path: req.url!, body, errors, contentType: req.headers["content-type"] });
      const [status, text] = answer(req, body, errors);
      res.writeHead(status, text ? { "Content-Type": "application/json" } : {});
      res.end(text);
    });
  });
  servers.push(server);
  return { server, seen, listen: () => new Promise<void>((r) => server.listen(path, () => r())) };
}

test("configureAndStart over a real unix socket: every request sent in order, as JSON, each one valid", async () => {
  const sock = join(work, "api1.sock");
  const api = apiServer(sock);
  await api.listen();
  const reqs = bootRequests(microVm({ ...spec, keep_layer: true }, boot, { kind: "disk", path: "/d.img" }, VSOCK));
  await configureAndStart(sock, reqs, { timeoutMs: 5_000, gone: () => false });
  assert.deepEqual(api.seen.map((s) => `${s.method} ${s.path}`), reqs.map((r) => `${r.method} ${r.path}`));
  for (const s of api.seen) {
    assert.deepEqual(s.errors, [], `${s.method} ${s.path}`);
    assert.equal(s.contentType, "application/json");
  }
  assert.deepEqual(api.seen.map((s) => s.body), reqs.map((r) => r.body));
});

test("an API socket that appears late is waited for; one that never appears, or a VMM that died, is a clear error", async () => {
  const sock = join(work, "api2.sock");
  const api = apiServer(sock);
  const reqs = bootRequests(microVm(spec, boot, { kind: "ram", mib: 64 }, VSOCK));
  const started = configureAndStart(sock, reqs, { timeoutMs: 5_000, gone: () => false });
  await new Promise((r) => setTimeout(r, 150));
  await api.listen();
  await started;
  assert.equal(api.seen.length, reqs.length);

  const t0 = Date.now();
  await assert.rejects(configureAndStart(join(work, "never.sock"), reqs, { timeoutMs: 300, gone: () => false }), /API socket .*never\.sock did not answer within 300 ms \(ENOENT\)/);
  assert.ok(Date.now() - t0 < 2_000, "gave up near its deadline");
  await assert.rejects(configureAndStart(join(work, "never.sock"), reqs, { timeoutMs: 5_000, gone: () => true }), /Firecracker exited before its API socket answered/);
});

test("a refused request stops the sequence and says which request and Firecracker's fault_message", async () => {
  const sock = join(work, "api3.sock");
  const api = apiServer(sock, (req) => (req.url === "/drives/root" ? [400, JSON.stringify({ fault_message: "Unable to open the block device backing file: No such file or directory" })] : [204, ""]));
  await api.listen();
  const reqs = bootRequests(microVm(spec, boot, { kind: "ram", mib: 64 }, VSOCK));
  await assert.rejects(configureAndStart(sock, reqs, { timeoutMs: 5_000, gone: () => false }), (e: Error) => {
    assert.match(e.message, /Firecracker refused to attach the root image \(PUT \/drives\/root: HTTP 400: Unable to open the block device backing file/);
    return true;
  });
  // Nothing after the refusal was sent: no InstanceStart of a half-configured VM.
  assert.deepEqual(api.seen.map((s) => s.path), ["/machine-config", "/boot-source", "/drives/root"]);
});

test("an API that hangs, answers garbage or floods: bounded errors, never a hang", async () => {
  const hang = join(work, "api4.sock");
  const hanging = createServer(() => undefined);
  servers.push(hanging);
  await new Promise<void>((r) => hanging.listen(hang, () => r()));
  const req: ApiRequest = { method: "PUT", path: "/actions", body: { action_type: "InstanceStart" }, what: "start the microVM" };
  const t0 = Date.now();
  await assert.rejects(apiCall(hang, req, 200), /did not answer PUT \/actions: no answer within 200 ms/);
  assert.ok(Date.now() - t0 < 2_000);

  const junk = join(work, "api5.sock");
  const api = apiServer(junk, () => [500, "<html>not firecracker</html>"]);
  await api.listen();
  await assert.rejects(apiCall(junk, req, 2_000), /HTTP 500: <html>not firecracker<\/html>/);

  const flood = join(work, "api6.sock");
  const flooding = createServer((_req, res) => {
    res.writeHead(400, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ fault_message: "x".repeat(1 << 20) }));
  });
  servers.push(flooding);
  await new Promise<void>((r) => flooding.listen(flood, () => r()));
  await assert.rejects(apiCall(flood, req, 2_000), (e: Error) => e.message.length < 1_000);
});
