/**
 * A test fixture for booting the real pyro-agent as a VM's /init under QEMU
 * (TCG), built from Debian's kernel package and a busybox root. For the
 * guest-side tests (test/vm/) only: the production artifacts come from the
 * environment builders. What it makes:
 *
 * - the kernel: `apt-get download linux-image-cloud-amd64` and the
 *   linux-image-*-cloud-amd64 package it depends on, unpacked with
 *   `dpkg-deb -x`, its bzImage payload (LZ4 for 6.1 cloud, zstd for later)
 *   decompressed to the ELF vmlinux that QEMU boots through PVH; cached in
 *   one directory reused across runs ($PYRO_VM_FIXTURE_DIR, default
 *   $TMPDIR/pyro-vm-fixture);
 * - an initramfs (cpio newc, written here): /init = guest/build/pyro-agent,
 *   /dev/console, /modules/order and the modules, in the dependency order
 *   their own `depends=` metadata gives;
 * - an ext4 root image of a static busybox tree (`mkfs.ext4 -d`) and empty
 *   ext4 data disks;
 * - a qemu process (`-M microvm`, virtio-blk disks, a virtserialport on a
 *   unix socket) and an AgentClient on that socket.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { AgentClient } from "../../src/agent/client.js";

export const AGENT = new URL("../../guest/build/pyro-agent", import.meta.url).pathname;
export const FIXTURE_DIR = process.env.PYRO_VM_FIXTURE_DIR ?? join(tmpdir(), "pyro-vm-fixture");
/** The modules the agent needs on 6.1 cloud (ext4 and crc32c are built in). */
export const VM_MODULES = ["virtio_mmio", "virtio_blk", "virtio_console", "overlay"];

function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): Buffer {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, input: opts.input, maxBuffer: 512 * 1024 * 1024 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}: ${r.stderr.toString().trim()}`);
  return r.stdout;
}

/** What is missing on this host to boot the fixture, or null. */
export function missingForVm(): string | null {
  for (const tool of ["qemu-system-x86_64", "apt-get", "dpkg-deb", "lz4", "mkfs.ext4"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
  }
  if (!existsSync(AGENT)) return "guest/build/pyro-agent is not built (make -C guest)";
  if (!staticBusybox()) return "no static busybox (apt-get install busybox-static)";
  return null;
}

function staticBusybox(): string | null {
  for (const p of ["/bin/busybox", "/usr/bin/busybox"]) {
    if (existsSync(p) && !/dynamically/.test(spawnSync("file", ["-L", p]).stdout?.toString() ?? "")) return p;
  }
  return null;
}

// ------------------------------------------------------------------ kernel

export interface Kernel {
  vmlinux: string;
  /** lib/modules/<release>/kernel of the unpacked package. */
  modules: string;
  release: string;
}

/** The offset of a known compressed payload in a bzImage, and how to decompress it. */
function findPayload(image: Buffer): { offset: number; tool: string[] } {
  const kinds: Array<{ magic: number[]; tool: string[] }> = [
    { magic: [0x02, 0x21, 0x4c, 0x18], tool: ["lz4", "-dc"] }, // LZ4 legacy frame (6.1 cloud)
    { magic: [0x28, 0xb5, 0x2f, 0xfd], tool: ["zstd", "-dc"] }, // zstd (6.12 cloud)
    { magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], tool: ["xz", "-dc"] },
  ];
  for (const k of kinds) {
    const at = image.indexOf(Buffer.from(k.magic));
    if (at >= 0) return { offset: at, tool: k.tool };
  }
  throw new Error("no LZ4, zstd or xz payload found in the kernel image");
}

/** Downloads (once) and unpacks Debian's cloud kernel; returns its ELF vmlinux and modules. */
export function fetchKernel(final = join(FIXTURE_DIR, "kernel")): Kernel {
  const done = join(final, "done.json");
  if (existsSync(done)) return JSON.parse(readFileSync(done, "utf8")) as Kernel;
  // Built aside and renamed into place whole: a run killed halfway, or two
  // runs at once, never leave a half-made kernel directory behind.
  rmSync(final, { recursive: true, force: true });
  const dir = `${final}.tmp-${process.pid}`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  // APT::Sandbox::User=root: the scratch dir is root's; _apt could not write there.
  const apt = ["download", "-o", "APT::Sandbox::User=root"];
  run("apt-get", [...apt, "linux-image-cloud-amd64"], { cwd: dir });
  const meta = readdirSync(dir).find((f) => f.startsWith("linux-image-cloud-amd64_") && f.endsWith(".deb"));
  if (!meta) throw new Error("apt-get download left no linux-image-cloud-amd64 .deb");
  const depends = run("dpkg-deb", ["-f", join(dir, meta), "Depends"]).toString();
  const pkg = /linux-image-[0-9][^\s,(]*-cloud-amd64/.exec(depends)?.[0];
  if (!pkg) throw new Error(`linux-image-cloud-amd64 depends on no kernel package: ${depends}`);
  run("apt-get", [...apt, pkg], { cwd: dir });
  const deb = readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(".deb"));
  if (!deb) throw new Error(`apt-get download left no ${pkg} .deb`);
  run("dpkg-deb", ["-x", join(dir, deb), join(dir, "x")]);
  const boot = join(dir, "x", "boot");
  const vmlinuz = readdirSync(boot).find((f) => f.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new Error(`${deb} holds no /boot/vmlinuz-*`);
  const release = vmlinuz.slice("vmlinuz-".length);
  const image = readFileSync(join(boot, vmlinuz));
  const { offset, tool } = findPayload(image);
  // The decompressor stops at the end of its frame and may complain about
  // the bytes after it (the rest of the bzImage): judge by the output.
  const r = spawnSync(tool[0]!, tool.slice(1), { input: image.subarray(offset), maxBuffer: 512 * 1024 * 1024 });
  if (!r.stdout || r.stdout.length < 1024 * 1024 || r.stdout.readUInt32BE(0) !== 0x7f454c46) {
    throw new Error(`${tool.join(" ")} did not give an ELF vmlinux: ${r.stderr?.toString().trim()}`);
  }
  writeFileSync(join(dir, "vmlinux"), r.stdout);
  for (const f of readdirSync(dir)) if (f.endsWith(".deb")) rmSync(join(dir, f));
  const kernel: Kernel = { vmlinux: join(final, "vmlinux"), modules: join(final, "x", "lib", "modules", release, "kernel"), release };
  writeFileSync(join(dir, "done.json"), JSON.stringify(kernel));
  try {
    renameSync(dir, final);
  } catch {
    rmSync(dir, { recursive: true, force: true }); // another run got there first
  }
  return JSON.parse(readFileSync(done, "utf8")) as Kernel;
}

// ----------------------------------------------------------------- modules

function findModules(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith(".ko")) out.set(e.name.slice(0, -3).replace(/-/g, "_"), join(d, e.name));
    }
  };
  walk(root);
  return out;
}

/** The `depends=` field of a module's .modinfo (NUL-separated key=value strings). */
export function moduleDepends(ko: Buffer): string[] {
  const key = Buffer.from("\0depends=");
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const end = ko.indexOf(0, at + key.length);
  const value = ko.subarray(at + key.length, end < 0 ? undefined : end).toString("latin1");
  return value.split(",").filter(Boolean).map((m) => m.replace(/-/g, "_"));
}

/** The wanted modules and everything they depend on, dependencies first. */
export function moduleOrder(modulesDir: string, wanted: string[]): Array<{ name: string; path: string }> {
  const all = findModules(modulesDir);
  const order: Array<{ name: string; path: string }> = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string) => {
    if (state.get(name) === "done") return;
    if (state.get(name) === "visiting") throw new Error(`module dependency cycle at ${name}`);
    const path = all.get(name);
    if (!path) throw new Error(`module ${name} is not in ${modulesDir}`);
    state.set(name, "visiting");
    for (const dep of moduleDepends(readFileSync(path))) visit(dep);
    state.set(name, "done");
    order.push({ name, path });
  };
  for (const w of wanted) visit(w);
  return order;
}

// -------------------------------------------------------------------- cpio

type CpioEntry =
  | { path: string; kind: "dir"; mode?: number }
  | { path: string; kind: "file"; data: Buffer; mode?: number }
  | { path: string; kind: "char"; major: number; minor: number; mode?: number };

/** A cpio "newc" archive (the initramfs format the kernel unpacks). */
export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const add = (name: string, mode: number, data: Buffer, rmajor = 0, rminor = 0) => {
    const nameBuf = Buffer.from(`${name}\0`);
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, rmajor, rminor, nameBuf.length, 0];
    const header = Buffer.from("070701" + fields.map((f) => f.toString(16).padStart(8, "0")).join(""), "latin1");
    parts.push(header, nameBuf, pad(header.length + nameBuf.length), data, pad(data.length));
  };
  for (const e of entries) {
    if (e.kind === "dir") add(e.path, 0o040000 | (e.mode ?? 0o755), Buffer.alloc(0));
    else if (e.kind === "file") add(e.path, 0o100000 | (e.mode ?? 0o644), e.data);
    else add(e.path, 0o020000 | (e.mode ?? 0o600), Buffer.alloc(0), e.major, e.minor);
  }
  add("TRAILER!!!", 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

export function buildInitramfs(out: string, kernel: Kernel, options: { agent?: string; modules?: string[] } = {}): void {
  const mods = moduleOrder(kernel.modules, options.modules ?? VM_MODULES);
  const entries: CpioEntry[] = [
    { path: "dev", kind: "dir" },
    { path: "dev/console", kind: "char", major: 5, minor: 1 },
    { path: "init", kind: "file", data: readFileSync(options.agent ?? AGENT), mode: 0o755 },
    { path: "modules", kind: "dir" },
    { path: "modules/order", kind: "file", data: Buffer.from(mods.map((m) => m.name).join("\n") + "\n") },
    ...mods.map((m): CpioEntry => ({ path: `modules/${m.name}.ko`, kind: "file", data: readFileSync(m.path) })),
  ];
  writeFileSync(`${out}.tmp`, writeCpio(entries));
  renameSync(`${out}.tmp`, out);
}

// ------------------------------------------------------------------ disks

/** An ext4 image of a static busybox tree: /bin/busybox and a link per applet. */
export function buildRootImage(out: string, sizeMib = 16): void {
  const bb = staticBusybox();
  if (!bb) throw new Error("no static busybox");
  const tree = `${out}.tree`;
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(join(tree, "bin"), { recursive: true });
  mkdirSync(join(tree, "etc"));
  copyFileSync(bb, join(tree, "bin", "busybox"));
  for (const applet of run(bb, ["--list"]).toString().split("\n").filter(Boolean)) {
    if (applet !== "busybox") symlinkSync("busybox", join(tree, "bin", basename(applet)));
  }
  writeFileSync(join(tree, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  run("mkfs.ext4", ["-q", "-F", "-d", tree, out, `${sizeMib}M`]);
  rmSync(tree, { recursive: true, force: true });
}

/** An empty ext4 disk, as the host driver makes a task's data disk. */
export function makeDataDisk(path: string, sizeMib = 64): void {
  rmSync(path, { force: true });
  const fd = openSync(path, "w");
  closeSync(fd);
  run("truncate", ["-s", `${sizeMib}M`, path]);
  run("mkfs.ext4", ["-q", "-F", path]);
}

/** Everything a boot needs, built once per test run into dir (the kernel cached beyond it). */
export interface Fixture {
  dir: string;
  kernel: Kernel;
  initramfs: string;
  rootImage: string;
}

export function buildFixture(dir: string): Fixture {
  mkdirSync(dir, { recursive: true });
  const kernel = fetchKernel();
  const initramfs = join(dir, "initramfs.cpio");
  buildInitramfs(initramfs, kernel);
  const rootImage = join(dir, "root.img");
  buildRootImage(rootImage);
  return { dir, kernel, initramfs, rootImage };
}

// ------------------------------------------------------------------- boot

/** The host's TSC in kHz (TCG guests hang calibrating it against the PIT without tsc_early_khz). */
export function hostTscKhz(): number {
  const m = /cpu MHz\s*:\s*([0-9.]+)/.exec(readFileSync("/proc/cpuinfo", "utf8"));
  return m ? Math.round(Number(m[1]) * 1000) : 2_000_000;
}

export interface BootOptions {
  /** pyro.* and other words appended to the command line. */
  append: string;
  /** A writable data disk image (attached after the root disk: /dev/vdb). */
  dataDisk?: string;
  /** Leave the root disk off (a fault test). */
  noRootDisk?: boolean;
  /** More qemu arguments (e.g. -rtc). */
  qemuArgs?: string[];
  name?: string;
  /** A QMP socket for the test (snapshots). */
  qmp?: boolean;
  /** Restore from this migration file instead of booting (`-incoming exec:cat FILE`). */
  incoming?: string;
  /** A command qemu runs under (e.g. nsenter into a network namespace): its argv, qemu's after it. */
  wrap?: string[];
}

export interface Vm {
  proc: ChildProcess;
  socket: string;
  qmpSocket: string | null;
  consolePath: string;
  /** Resolves with qemu's exit code (or signal name). */
  exited: Promise<number | string>;
  startedAt: number;
  console(): string;
  kill(): Promise<void>;
}

let seq = 0;

export function bootVm(fx: Fixture, opts: BootOptions): Vm {
  const name = opts.name ?? `vm${++seq}`;
  const socket = join(fx.dir, `${name}.sock`);
  const consolePath = join(fx.dir, `${name}.console`);
  rmSync(socket, { force: true });
  rmSync(join(fx.dir, `${name}.qmp`), { force: true });
  writeFileSync(consolePath, "");
  const append = `console=ttyS0 quiet reboot=t panic=-1 tsc_early_khz=${hostTscKhz()} tsc=reliable ${opts.append}`;
  const args = [
    "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-kernel", fx.kernel.vmlinux, "-initrd", fx.initramfs, "-append", append,
    "-serial", `file:${consolePath}`,
    ...(opts.noRootDisk ? [] : ["-drive", `id=root,file=${fx.rootImage},format=raw,if=none,readonly=on`, "-device", "virtio-blk-device,drive=root"]),
    ...(opts.dataDisk ? ["-drive", `id=data,file=${opts.dataDisk},format=raw,if=none`, "-device", "virtio-blk-device,drive=data"] : []),
    "-device", "virtio-serial-device",
    "-chardev", `socket,id=agent,path=${socket},server=on,wait=off`,
    "-device", "virtserialport,chardev=agent,name=org.pyro.agent",
    ...(opts.qmp ? ["-qmp", `unix:${join(fx.dir, `${name}.qmp`)},server=on,wait=off`] : []),
    ...(opts.incoming ? ["-incoming", `exec:cat ${opts.incoming}`] : []),
    ...(opts.qemuArgs ?? []),
  ];
  const startedAt = performance.now();
  const command = [...(opts.wrap ?? []), "qemu-system-x86_64", ...args];
  const proc = spawn(command[0]!, command.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | string>((resolve) => proc.once("exit", (code, signal) => resolve(code ?? signal ?? "?")));
  const vm: Vm = {
    proc,
    socket,
    qmpSocket: opts.qmp ? join(fx.dir, `${name}.qmp`) : null,
    consolePath,
    exited,
    startedAt,
    console: () => readFileSync(consolePath, "utf8") + (stderr ? `\n[qemu stderr] ${stderr}` : ""),
    kill: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await exited;
      rmSync(socket, { force: true });
    },
  };
  return vm;
}

/** Waits for qemu's socket, connects and does HELLO, all within timeoutMs. */
export async function connectVm(vm: Vm, timeoutMs = 60_000): Promise<AgentClient> {
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(vm.socket)) {
    if (Date.now() > deadline || vm.proc.exitCode !== null) throw new Error(`qemu made no socket; console:\n${vm.console()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  // The socket file appears at bind(), a moment before qemu listens.
  let sock: Socket;
  for (;;) {
    const s = createConnection({ path: vm.socket });
    const error = await new Promise<Error | null>((resolve) => {
      s.once("connect", () => resolve(null));
      s.once("error", resolve);
    });
    if (!error) {
      sock = s;
      break;
    }
    s.destroy();
    if (Date.now() > deadline || (error as NodeJS.ErrnoException).code !== "ECONNREFUSED") throw error;
    await new Promise((r) => setTimeout(r, 10));
  }
  const client = AgentClient.fromStream(sock);
  try {
    await client.hello({ timeoutMs: Math.max(1000, deadline - Date.now()) });
  } catch (error) {
    client.close();
    throw new Error(`no HELLO_ACK: ${(error as Error).message}; console:\n${vm.console()}`);
  }
  return client;
}

/** Runs a command to its end and collects its output. */
export async function sh(client: AgentClient, script: string, timeoutMs = 20_000): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const h = client.exec({
    argv: ["/bin/sh", "-c", script],
    env: { PATH: "/bin" },
    cwd: "/",
    timeoutMs,
    onStdout: (b) => void (out += b.toString()),
    onStderr: (b) => void (err += b.toString()),
  });
  const r = await h.result;
  if (r.kind === "open_failed") throw new Error(`open failed: ${r.message}`);
  return { code: r.kind === "exited" ? r.value : 128 + r.value, out, err };
}

/** Waits until qemu exits, or throws after timeoutMs. */
export async function waitExit(vm: Vm, timeoutMs: number): Promise<number | string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`qemu still running after ${timeoutMs} ms; console:\n${vm.console()}`)), timeoutMs);
  });
  try {
    return await Promise.race([vm.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function writeAll(path: string, data: string): void {
  const fd = openSync(path, "w");
  writeSync(fd, data);
  closeSync(fd);
}

/** A minimal QMP client: one command at a time, answers matched in order (events skipped). */
export class Qmp {
  private buf = "";
  private waiters: Array<(m: Record<string, unknown>) => void> = [];
  private constructor(private readonly sock: Socket) {
    sock.on("data", (b: Buffer) => {
      this.buf += b.toString();
      let nl: number;
      while ((nl = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const m = JSON.parse(line) as Record<string, unknown>;
        if ("return" in m || "error" in m || "QMP" in m) this.waiters.shift()?.(m);
      }
    });
  }

  static async connect(path: string, timeoutMs = 30_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = createConnection({ path });
      const error = await new Promise<Error | null>((resolve) => {
        s.once("connect", () => resolve(null));
        s.once("error", resolve);
      });
      if (!error) {
        const q = new Qmp(s);
        await q.next(); // the greeting
        await q.cmd("qmp_capabilities");
        return q;
      }
      s.destroy();
      if (Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private next(): Promise<Record<string, unknown>> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async cmd(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const answer = this.next();
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + "\n");
    const m = await answer;
    if ("error" in m) throw new Error(`QMP ${execute}: ${JSON.stringify(m.error)}`);
    return m.return;
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Stops a VM and saves it to file (QEMU migration), then quits qemu. */
export async function snapshotVm(vm: Vm, file: string): Promise<void> {
  const q = await Qmp.connect(vm.qmpSocket!);
  await q.cmd("stop");
  await q.cmd("migrate", { uri: `exec:cat > ${file}` });
  for (;;) {
    const st = (await q.cmd("query-migrate")) as { status?: string; "error-desc"?: string };
    if (st.status === "completed") break;
    if (st.status === "failed") throw new Error(`migration failed: ${st["error-desc"]}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await q.cmd("quit").catch(() => undefined);
  q.close();
  await vm.exited;
}

/** After `-incoming`: waits for the state to load and lets the VM run. */
export async function resumeVm(vm: Vm): Promise<void> {
  const q = await Qmp.connect(vm.qmpSocket!);
  for (;;) {
    const st = (await q.cmd("query-status")) as { status: string };
    if (st.status === "running") break;
    if (st.status !== "inmigrate") {
      await q.cmd("cont");
      break;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  q.close();
}
