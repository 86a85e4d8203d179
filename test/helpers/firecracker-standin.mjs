#!/usr/bin/node
// A stand-in for the `firecracker` binary, for hosts where the real one
// cannot run (no firecracker binary, or a /dev/kvm that cannot boot a stock
// kernel, as on this project's CI machines). It is NOT a VMM: it boots no
// kernel. It plays Firecracker's two host-side interfaces as they are
// documented, so the firecracker driver runs end to end around it, jail,
// supervisor and all:
//
// - the API on `--api-sock` (HTTP/1.1 over a unix socket): every request is
//   appended to `<api-sock dir>/requests.jsonl` for the test to validate
//   against Firecracker's published API description; files named by
//   boot-source and drives must exist and be readable (Firecracker opens
//   them: 400 with a fault_message otherwise); PUT /vsock binds uds_path;
//   InstanceStart starts the "guest": the real pyro-agent in serve mode;
//   PUT /network-interfaces opens host_dev_name as Firecracker does (through
//   /dev/net/tun, TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, as this
//   process's uid and capabilities) and holds it open, as Firecracker's
//   virtio-net device does: a TAP it may not open is a 400, as Firecracker's
//   "Open tap device failed" (python3 does the ioctl: node has none). First,
//   from the same place, it tries what a compromised Firecracker would (make
//   another TAP, take pasta's, take the bridge down) and writes what the
//   kernel answered to `<api-sock dir>/tap-abuse.txt` for the test;
// - the vsock's host side (docs/vsock.md in the firecracker repository):
//   a connection to uds_path sends `CONNECT <port>\n`; before the guest
//   listens on the port it is closed (Firecracker's RST), after it the
//   answer is `OK <host port>\n` and the bytes flow to the guest's port.
//
// The test copies this file and writes the agent's path over __PYRO_AGENT__
// (the supervisor gives the VMM an empty environment, so nothing else reaches it).
import { createServer as createHttp } from "node:http";
import { createConnection, createServer } from "node:net";
import { accessSync, appendFileSync, constants, existsSync } from "node:fs";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";

const AGENT = "__PYRO_AGENT__";
const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const apiSock = opt("--api-sock");
const id = opt("--id");
if (!apiSock || !id || !/^[A-Za-z0-9-]{1,64}$/.test(id)) {
  process.stderr.write(`firecracker stand-in: bad arguments ${JSON.stringify(args)}\n`);
  process.exit(1);
}
const runDir = dirname(apiSock);
const log = join(runDir, "requests.jsonl");
const guestSock = join(runDir, "guest.sock");
const config = {};
let started = false;
let guestPort = 0;
// A path to refuse with 400, for error-path tests (written over by the test; the placeholder refuses nothing).
const refuse = "__STANDIN_REFUSE__".startsWith("__") ? "" : "__STANDIN_REFUSE__";

function readable(p) {
  try {
    accessSync(p, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

function fault(res, message) {
  res.writeHead(400, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ fault_message: message }));
}

const api = createHttp((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const text = Buffer.concat(chunks).toString("utf8");
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      return fault(res, `the body is not JSON: ${text.slice(0, 100)}`);
    }
    appendFileSync(log, JSON.stringify({ method: req.method, path: req.url, content_type: req.headers["content-type"] ?? null, body }) + "\n");
    if (started && req.url !== "/actions") return fault(res, "The requested operation is not supported after starting the microVM.");
    if (req.url === "/boot-source") {
      for (const p of [body.kernel_image_path, body.initrd_path]) if (p && !readable(p)) return fault(res, `Cannot open the kernel or initrd file ${p}`);
      // Firecracker's argument for the guest's own vsock port: the agent's word on the command line.
      guestPort = Number(/\bpyro\.vsock=(\d+)/.exec(body.boot_args ?? "")?.[1] ?? 0);
    }
    if (req.url?.startsWith("/drives/") && !readable(body.path_on_host)) return fault(res, `Unable to open the block device backing file ${body.path_on_host}`);
    if (refuse && req.url === refuse) return fault(res, `stand-in told to refuse ${refuse}`);
    if (req.url?.startsWith("/network-interfaces/")) {
      return openTap(body.host_dev_name, (error) => {
        if (error) return fault(res, `Open tap device failed: ${error}`);
        config[req.url] = body;
        res.writeHead(204);
        res.end();
      });
    }
    if (req.url === "/vsock") {
      if (existsSync(body.uds_path)) return fault(res, `Address in use: ${body.uds_path}`);
      vsockServer(body.uds_path);
    }
    if (req.url === "/actions" && body.action_type === "InstanceStart") {
      for (const need of ["/boot-source", "/machine-config"]) if (!config[need]) return fault(res, `InstanceStart before ${need}`);
      started = true;
      process.stdout.write(`firecracker stand-in ${id}: InstanceStart; the guest is pyro-agent serve\n`);
      spawn(AGENT, ["serve", "--listen", guestSock], { stdio: ["ignore", "inherit", "inherit"] });
    }
    config[req.url] = body;
    res.writeHead(204);
    res.end();
  });
});
api.listen(apiSock);

function vsockServer(path) {
  createServer((s) => {
    let line = "";
    const onData = (b) => {
      line += b.toString("latin1");
      const nl = line.indexOf("\n");
      if (nl < 0) return;
      s.off("data", onData);
      const rest = Buffer.from(line.slice(nl + 1), "latin1");
      const port = Number(/^CONNECT (\d+)$/.exec(line.slice(0, nl))?.[1]);
      // Nobody listens on that port of the guest (yet): Firecracker resets the connection.
      if (!started || port !== guestPort || !existsSync(guestSock)) return void s.destroy();
      const g = createConnection(guestSock);
      g.on("connect", () => {
        s.write(`OK ${1073741824 + Math.floor(Math.random() * 1000)}\n`);
        if (rest.length) g.write(rest);
        s.pipe(g);
        g.pipe(s);
      });
      g.on("error", () => s.destroy());
      s.on("error", () => g.destroy());
    };
    s.on("data", onData);
  }).listen(path);
}

// Opens the TAP and keeps it open (this process's child, in the jail: it ends with it).
function openTap(name, done) {
  const code = [
    "import errno, fcntl, os, socket, struct, sys, time",
    "def tap(name):",
    "    fd = os.open('/dev/net/tun', os.O_RDWR)",
    "    try:",
    "        fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', name.encode(), 0x0002 | 0x1000))",
    "        return 'ok'",
    "    except OSError as e:",
    "        return errno.errorcode[e.errno]",
    "    finally:",
    "        os.close(fd)",
    "def down(name):",
    "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
    "    try:",
    "        fcntl.ioctl(s, 0x8914, struct.pack('16sH', name.encode(), 0))",
    "        return 'ok'",
    "    except OSError as e:",
    "        return errno.errorcode[e.errno]",
    "open(sys.argv[2], 'w').write('new %s pasta %s bridge %s\\n' % (tap('evil0'), tap('pasta0'), down('br0')))",
    "fd = os.open('/dev/net/tun', os.O_RDWR)",
    "fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', sys.argv[1].encode(), 0x0002 | 0x1000 | 0x4000))",
    "print('ok', flush=True)",
    "while True: time.sleep(3600)",
  ].join("\n");
  const child = spawn("/usr/bin/python3", ["-c", code, String(name), join(runDir, "tap-abuse.txt")], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (b) => {
    out += b;
    if (out.startsWith("ok")) done(null);
  });
  child.stderr.on("data", (b) => (err += b));
  child.on("exit", (c) => {
    if (!out.startsWith("ok")) done(err.trim().split("\n").pop() || `exit ${c}`);
  });
  child.on("error", (e) => done(e.message));
}
