import { request } from "node:http";
import { connectUnixNoFollow } from "../../util/unix-socket.js";

/**
 * Firecracker's API, as the driver uses it: the requests that configure a
 * microVM and start it, as a pure function of what the VM is (so a unit
 * test checks every one against Firecracker's published API description,
 * test/fixtures/firecracker/), and a small HTTP/1.1 client for the unix
 * socket Firecracker serves it on (`--api-sock`). Firecracker answers a
 * good pre-boot request with 204 No Content and a bad one with 400 and
 * `{"fault_message": ...}`, which the error passes on.
 */

export interface ApiRequest {
  method: "PUT";
  path: string;
  body: Record<string, unknown>;
  /** What the request does, for an error message ("set the boot source"). */
  what: string;
}

export interface MicroVm {
  /** An ELF vmlinux (Firecracker loads it directly; ours has a PVH note too). */
  kernel: string;
  initramfs: string;
  boot_args: string;
  vcpu_count: number;
  mem_mib: number;
  /** The environment's ext4 image, read-only: the guest's /dev/vda. */
  root_image: string;
  /** A task's own disk, writable: the guest's /dev/vdb. */
  data_disk: string | null;
  /** Firecracker's vsock device: the guest's CID and the host socket it proxies host-initiated connections from. */
  vsock: { guest_cid: number; uds_path: string };
  /** A TAP device on the host for the guest's eth0, if the VM has a network. */
  tap: { host_dev_name: string; guest_mac: string } | null;
}

/** The guest's CID: any value from 3 up; each VM has its own vsock device, reached only through its own socket. */
export const GUEST_CID = 3;

/**
 * The requests, in order: the machine, the boot source, the disks (the root
 * image first, so it is /dev/vda), the vsock, the network, then
 * InstanceStart. `is_root_device` is false for both disks: the guest's root
 * is mounted by our /init from the initramfs, and Firecracker would
 * otherwise add `root=/dev/vda` to the kernel's command line.
 */
export function bootRequests(vm: MicroVm): ApiRequest[] {
  const reqs: ApiRequest[] = [
    { method: "PUT", path: "/machine-config", body: { vcpu_count: vm.vcpu_count, mem_size_mib: vm.mem_mib, smt: false }, what: "set the machine's vCPUs and memory" },
    { method: "PUT", path: "/boot-source", body: { kernel_image_path: vm.kernel, initrd_path: vm.initramfs, boot_args: vm.boot_args }, what: "set the boot source (kernel, initramfs, command line)" },
    { method: "PUT", path: "/drives/root", body: { drive_id: "root", path_on_host: vm.root_image, is_root_device: false, is_read_only: true }, what: "attach the root image" },
  ];
  if (vm.data_disk) {
    reqs.push({ method: "PUT", path: "/drives/data", body: { drive_id: "data", path_on_host: vm.data_disk, is_root_device: false, is_read_only: false }, what: "attach the VM's disk" });
  }
  reqs.push({ method: "PUT", path: "/vsock", body: { guest_cid: vm.vsock.guest_cid, uds_path: vm.vsock.uds_path }, what: "add the vsock device" });
  if (vm.tap) {
    reqs.push({ method: "PUT", path: "/network-interfaces/eth0", body: { iface_id: "eth0", host_dev_name: vm.tap.host_dev_name, guest_mac: vm.tap.guest_mac }, what: "add the network interface" });
  }
  reqs.push({ method: "PUT", path: "/actions", body: { action_type: "InstanceStart" }, what: "start the microVM" });
  return reqs;
}

/** One request over the API socket; resolves on 2xx, rejects with Firecracker's fault_message otherwise. */
export function apiCall(socketPath: string, req: ApiRequest, timeoutMs: number): Promise<void> {
  const body = Buffer.from(JSON.stringify(req.body));
  return new Promise((resolve, reject) => {
    const r = request(
      // createConnection: run/ is the VM uid's, so the socket is reached only through its own inode, never a link planted there.
      { socketPath, createConnection: () => connectUnixNoFollow(socketPath), method: req.method, path: req.path, headers: { "Content-Type": "application/json", Accept: "application/json", "Content-Length": body.length }, timeout: timeoutMs, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          // Firecracker's answers are a few hundred bytes: more is not Firecracker.
          if ((size += c.length) <= 64 * 1024) chunks.push(c);
        });
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve();
          const text = Buffer.concat(chunks).toString("utf8");
          let fault = text.slice(0, 500);
          try {
            const parsed = JSON.parse(text) as { fault_message?: unknown };
            if (typeof parsed.fault_message === "string") fault = parsed.fault_message.slice(0, 500);
          } catch {
            /* not JSON: the raw text */
          }
          reject(new ApiError(`Firecracker refused to ${req.what} (${req.method} ${req.path}: HTTP ${status}${fault ? `: ${fault}` : ""})`));
        });
        res.on("error", (e) => reject(new ApiError(`Firecracker's answer to ${req.method} ${req.path} broke off: ${e.message}`)));
      },
    );
    r.on("timeout", () => r.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    r.on("error", (e) => reject(new ApiError(`Firecracker's API did not answer ${req.method} ${req.path}: ${e.message}`)));
    r.end(body);
  });
}

export class ApiError extends Error {}

/**
 * Waits for Firecracker's API socket (it binds it right after it starts),
 * then sends the requests one by one, stopping at the first refusal. `gone`
 * says the VMM died meanwhile (no point waiting for its socket).
 */
export async function configureAndStart(socketPath: string, requests: readonly ApiRequest[], options: { timeoutMs: number; gone: () => boolean }): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  for (let i = 0; ; i++) {
    try {
      await apiCall(socketPath, requests[0]!, Math.max(1, deadline - Date.now()));
      break;
    } catch (error) {
      const code = /\b(ENOENT|ECONNREFUSED)\b/.exec((error as Error).message)?.[1];
      // Not there yet (ENOENT) or not listening yet (ECONNREFUSED): Firecracker is still starting.
      if (!code) throw error;
      if (options.gone()) throw new ApiError("Firecracker exited before its API socket answered");
      if (Date.now() >= deadline) throw new ApiError(`Firecracker's API socket ${socketPath} did not answer within ${options.timeoutMs} ms (${code})`);
      await new Promise((r) => setTimeout(r, Math.min(50, 5 + i * 5)));
    }
  }
  for (const req of requests.slice(1)) await apiCall(socketPath, req, Math.max(1, deadline - Date.now()));
}
