/**
 * The attack suite: every way out of a namespace sandbox that we know of,
 * tried from inside a real sandbox, each judged by what it reached. Used by
 * attacks.test.ts as root in-process, and (through run-suite.ts) as an
 * unprivileged user the test creates.
 *
 * Each attack is a command run in one task (whose /workspace holds the
 * static `attack` helper, imported from the host like any user content) or
 * through the CLI; it "held" when its check finds nothing reached. After
 * all of them the host is checked: its sysctls and hostname, a marker file
 * no sandbox may touch, the environment's rootfs digest, and that no
 * process of the sandboxes is left.
 */
import { spawn, spawnSync } from "node:child_process";
import { createServer } from "node:net";
import { homedir, networkInterfaces, hostname as hostHostname } from "node:os";
import { readFileSync, readdirSync, readlinkSync, statSync, statfsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { Pyro } from "../../src/index.js";
import { inspectEnvironment } from "../../src/environments/index.js";
import { cacheDir } from "../../src/util/paths.js";
import { agentsOf, hostProcesses, type HostProcess } from "../helpers/crash.js";
import { removalsDone } from "../../src/runtime/store.js";
import { findExecutable } from "../../src/drivers/availability.js";

export interface AttackOutcome {
  name: string;
  held: boolean;
  detail: string;
}

export interface SuiteReport {
  uid: number;
  outcomes: AttackOutcome[];
  host: AttackOutcome[];
}

export interface SuiteOptions {
  /** Directory holding the static `attack` binary (imported into the task's /workspace). */
  attackDir: string;
  /** A file on the host that no sandbox may read, and whose content must not change. */
  secret: string;
  /** The repository root (for ./bin/pyro). */
  root: string;
  stateDir: string;
}

interface ExecResult {
  exit_code: number | null;
  stdout: string;
  stderr: string;
}

type Check = (r: ExecResult) => string | null;

/** The helper's verdict: exit 0 with "blocked:" held; anything else did not. */
const helper: Check = (r) => (r.exit_code === 0 && /^blocked:/m.test(r.stdout) && !/ESCAPED/.test(r.stdout) ? null : `exit ${r.exit_code}: ${r.stdout.trim()} ${r.stderr.trim()}`);
/** A shell command that must fail (nonzero exit). */
const mustFail: Check = (r) => (r.exit_code !== 0 ? null : `succeeded: ${r.stdout.trim().slice(0, 200)}`);
const outputLacks =
  (needle: string | RegExp): Check =>
  (r) => {
    const text = r.stdout + r.stderr;
    const hit = typeof needle === "string" ? text.includes(needle) : needle.test(text);
    return hit ? `output shows ${String(needle)}: ${text.trim().slice(0, 300)}` : null;
  };

const SYSCTLS = ["kernel/core_pattern", "kernel/modprobe", "kernel/hostname", "vm/drop_caches", "kernel/sysrq", "net/ipv4/ip_forward", "kernel/panic"];

function readSysctls(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of SYSCTLS) {
    try {
      out[k] = readFileSync(`/proc/sys/${k}`, "utf8");
    } catch {
      out[k] = "(unreadable)";
    }
  }
  return out;
}

/** A non-loopback IPv4 address of this host (for "the network is off" checks), if it has one. */
function hostAddress(): string | null {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  return null;
}

/** A process's name, as ps shows it: its argv[0] without the directory. */
const nameOf = (p: HostProcess) => basename(p.argv[0] ?? "");
const mentions = (p: HostProcess, needle: string) => p.argv.some((a) => a.includes(needle));

/** Sandbox processes and helpers (bwrap and what it runs, pasta) whose command line names the state dir: what a leaked sandbox would be. Not this suite's own parents. */
function leftovers(stateDir: string): string[] {
  return hostProcesses()
    .filter((p) => mentions(p, stateDir) && /^(bwrap|pasta|passt|agent|pyro-agent)/.test(nameOf(p)))
    .map((p) => `${p.pid}: ${p.argv.join(" ").slice(0, 300)}`);
}

/** The descendants of the bwrap processes started for this state dir: what runs inside its sandboxes. */
function sandboxProcesses(stateDir: string): Array<HostProcess & { comm: string }> {
  const table = hostProcesses().map((p) => ({ ...p, comm: nameOf(p) }));
  const roots = table.filter((p) => p.comm === "bwrap" && mentions(p, stateDir));
  const found = new Map(roots.map((p) => [p.pid, p]));
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of table) if (!found.has(p.pid) && found.has(p.ppid)) (found.set(p.pid, p), (grew = true));
  }
  // bwrap itself stays on the host side (it holds what pyro inherited, as pyro does); what runs inside is its descendants.
  return [...found.values()].filter((p) => !roots.includes(p));
}

function fdTargets(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/fd`).map((fd) => {
      try {
        return `fd ${fd} -> ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`;
      } catch {
        return `fd ${fd} (unreadable)`;
      }
    });
  } catch {
    return ["fds unreadable"];
  }
}

function environOf(pid: number): string {
  try {
    return `environ: ${readFileSync(`/proc/${pid}/environ`, "utf8").replace(/\0/g, " ")}`;
  } catch {
    return "environ unreadable";
  }
}

export async function runAttackSuite(o: SuiteOptions): Promise<SuiteReport> {
  const outcomes: AttackOutcome[] = [];
  const host: AttackOutcome[] = [];
  const secretBefore = readFileSync(o.secret, "utf8");
  const sysctlsBefore = readSysctls();
  const hostnameBefore = hostHostname();
  const pyro = new Pyro({ stateDir: o.stateDir });
  await pyro.pullEnvironment({ environment: "busybox" });
  const digestBefore = (await inspectEnvironment("busybox", { verify: true })).verify!.actual;

  const task = await pyro.createTask({ environment: "busybox", source_path: o.attackDir });
  const run = async (command: string, timeout = 30): Promise<ExecResult> => {
    const r = await pyro.execTask({ task_id: task.task_id, command, timeout_seconds: timeout });
    return { exit_code: r.exit_code, stdout: r.stdout, stderr: r.stderr };
  };
  const attempt = async (name: string, command: string, check: Check, timeout?: number) => {
    let detail: string | null;
    try {
      detail = check(await run(command, timeout));
    } catch (error) {
      detail = `the attack could not run: ${(error as Error).message}`;
    }
    outcomes.push({ name, held: detail === null, detail: detail ?? "held" });
  };
  const A = "/workspace/attack";
  const S = o.secret;

  // Reaching other processes of the sandbox: the supervisor is PID 1 of the command's namespace.
  for (const a of ["ptrace", "seize", "vm-read", "proc-mem", "pidfd-getfd"]) await attempt(`${a} the command's supervisor (pid 1)`, `${A} ${a} 1`, helper);
  await attempt("read the supervisor's environment", "cat /proc/1/environ", mustFail);
  await attempt("list the supervisor's fds' targets", "readlink /proc/1/fd/*", mustFail);
  await attempt("open the supervisor's exe", "cat /proc/1/exe > /dev/null", mustFail);
  await attempt("write the host's sandbox log through the supervisor's stderr", `${A} write /proc/1/fd/2 flood`, helper);
  await attempt("see the agent or other commands' processes", "cat /proc/[0-9]*/comm", (r) => {
    const names = r.stdout.trim().split("\n");
    return names.filter((n) => n === "pyro-supervisor").length === 1 && !names.includes("agent") && names.length <= 3 ? null : `sees ${names.join(", ")}`;
  });
  await attempt("kill -9 its own pid 1", `${A} kill-init`, helper);
  await attempt("kill -9 -1", `${A} kill-all`, helper);

  // The host's filesystem.
  await attempt("read the host secret by its path", `${A} secret ${S}`, helper);
  await attempt("walk /proc/*/fd to the host", `${A} proc-fd-walk ${S}`, helper, 60);
  await attempt("chroot escape", `${A} chroot-escape ${S}`, helper);
  await attempt("find bubblewrap's staging tree", "ls /.pyro /run/pyro 2>&1; test ! -e /.pyro && test ! -e /run/pyro", (r) => (r.exit_code === 0 ? null : r.stdout));
  await attempt("find the host state directory", `ls ${o.stateDir}`, mustFail);
  await attempt("read a host device", "cat /dev/vda /dev/sda /dev/mem /dev/kmsg 2>&1 | head -c 100; ls /dev", outputLacks(/^(vda|sda|mem|kmsg|kvm|net)$/m));
  await attempt("write the agent binary", "echo x > /run/pyro-agent", mustFail);
  // A bind mount's source shows in mountinfo as its path on the host's filesystem: none may name a host directory.
  const hostDirs = [o.root, o.stateDir, dirname(o.secret), cacheDir(), homedir()].filter((p): p is string => Boolean(p) && p !== "/");
  await attempt("learn host paths from the mount table", "cat /proc/self/mountinfo", (r) => {
    const seen = hostDirs.filter((p) => r.stdout.includes(p));
    return r.exit_code === 0 && !seen.length ? null : `mountinfo names ${seen.join(", ") || "nothing (it did not read)"}: ${r.stdout.split("\n").filter((l) => seen.some((p) => l.includes(p))).join(" | ").slice(0, 300)}`;
  });

  // New namespaces, mounts, and the kernel interfaces the filter closes.
  for (const a of ["unshare-user", "unshare-mount", "unshare-net", "clone-user", "clone-mount", "clone-pid", "clone-net", "clone-ipc", "clone-uts", "clone-cgroup", "clone3", "setns"]) await attempt(a, `${A} ${a}`, helper);
  for (const a of ["mount-proc", "mount-tmpfs", "mount-cgroup", "mount-bind", "remount-sys-rw", "umount-proc-sys", "umount-proc", "fsopen", "open-tree", "pivot-root"]) await attempt(a, `${A} ${a}`, helper);
  for (const a of ["io-uring", "io-setup", "keyctl", "add-key", "bpf", "perf", "userfaultfd", "kexec", "init-module", "delete-module", "open-by-handle", "name-to-handle", "reboot", "swapon", "syslog", "iopl", "personality", "x32", "acct", "quotactl", "settime", "mknod-disk", "seccomp-off", "cap-regain"]) {
    await attempt(a, `${A} ${a}`, helper);
  }

  // Host-wide files of /proc.
  for (const f of ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger", "/proc/sys/kernel/sysrq"]) {
    await attempt(`write ${f}`, `${A} write ${f} '|/tmp/pwn'`, helper);
  }
  for (const f of ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/kallsyms", "/proc/kpageflags"]) await attempt(`read ${f}`, `${A} read ${f}`, helper);
  await attempt("see the host's cgroups", "cat /proc/self/cgroup; ls -A /sys/fs/cgroup", outputLacks("pyro-mcp"));
  await attempt("change the hostname (its own uts namespace only)", `${A} sethostname-host`, (r) => (r.exit_code === 0 ? null : r.stdout + r.stderr));

  // Processes that outlive their exec.
  await attempt("plant a setsid, double-forked daemon", `${A} survivor`, (r) => (/planted/.test(r.stdout) ? null : r.stdout + r.stderr));
  await attempt("find the daemon in the next exec", "ps -o pid,comm | grep -v grep | grep survivor", mustFail);
  await attempt("background job survives its exec", "sleep 300 & echo started", (r) => (r.exit_code === 0 ? null : r.stderr));
  await attempt("find the background job in the next exec", "ps -o comm | grep -c '^sleep'", mustFail);
  await attempt("exceed the process cap", `${A} fork-count 1500`, (r) => {
    const n = Number(/started (\d+)/.exec(r.stdout)?.[1]);
    return Number.isFinite(n) && n < 1024 ? null : `started ${n}`;
  });
  // ptys of every devpts instance but the host's first come from one host-wide pool (kernel.pty.max
  // less kernel.pty.reserve, 3072 by default): a sandbox that holds them all leaves every other
  // sandbox's shells, and every container on the host, without a terminal.
  await attempt("take the host's ptys (its devpts instance has a maximum of its own)", `${A} pty-count 4000`, (r) => {
    const n = Number(/opened (\d+)/.exec(r.stdout)?.[1]);
    return Number.isFinite(n) && n >= 32 && n <= 64 ? null : `opened ${n} ptys: ${r.stdout.trim()}`;
  });
  // inotify instances are counted per uid of the host (the sandbox uid as root, the running user's
  // own otherwise: their editor's and `tail -f`'s): a sandbox may take a quarter, never all.
  const inotifyShare = Math.floor(Number(readFileSync("/proc/sys/fs/inotify/max_user_instances", "utf8")) / 4);
  await attempt("take the host user's inotify instances (a sandbox gets a quarter of them)", `${A} inotify-count 100000`, (r) => {
    const n = Number(/made (\d+)/.exec(r.stdout)?.[1]);
    return Number.isFinite(n) && n >= 1 && n <= inotifyShare ? null : `made ${n} of the host's ${inotifyShare * 4}: ${r.stdout.trim()}`;
  });
  // Pending signals likewise, up to this process's RLIMIT_SIGPENDING for the uid outside: a user whose
  // count is spent gets EAGAIN from timer_create and sigqueue in every process.
  const sigShare = Math.floor(Number(/^Max pending signals\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1]) / 4);
  await attempt("spend the host user's pending signals (a sandbox gets a quarter of them)", `${A} sigqueue-count 10000000`, (r) => {
    const n = Number(/queued (\d+)/.exec(r.stdout)?.[1]);
    return Number.isFinite(n) && n >= 1 && n <= sigShare ? null : `queued ${n} of the host's ${sigShare * 4}: ${r.stdout.trim()}`;
  });
  const mqShare = Math.floor(Number(/^Max msgqueue size\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1]) / 4);
  await attempt("spend the host user's POSIX message queue bytes (a sandbox gets a quarter of them)", `${A} mqueue-bytes`, (r) => {
    const n = Number(/queued bytes (\d+)/.exec(r.stdout)?.[1]);
    return Number.isFinite(n) && n >= 1 && n <= mqShare ? null : `queues of ${n} bytes of the host's ${mqShare * 4}: ${r.stdout.trim()}`;
  });
  // System V shared memory is /dev/shm's pages by another way: all segments together are bounded by the
  // same size (half of mem_mib, 512 MiB here), kept where no memory cgroup is (unprivileged here) too.
  await attempt("keep System V shared memory past /dev/shm's size", `${A} sysv-shm 1100`, (r) => {
    const n = Number(/kept (\d+) MiB/.exec(r.stdout)?.[1]);
    return r.exit_code === 0 && Number.isFinite(n) && n <= 512 ? null : `exit ${r.exit_code}: kept ${n} MiB: ${r.stdout.trim()}`;
  }, 60);
  await attempt("fill /dev/shm past its size", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=1100 2>&1; df -m /dev/shm; rm -f /dev/shm/fill", (r) => (/No space left/.test(r.stdout + r.stderr) ? null : `no ENOSPC: ${r.stdout.trim().slice(-200)}`), 60);

  // The network is off by default: neither the host's loopback nor its own address is reachable.
  const server = createServer((s) => s.end("host service\n"));
  await new Promise<void>((res) => server.listen(0, "0.0.0.0", () => res()));
  const port = (server.address() as { port: number }).port;
  await attempt("reach a host service on 127.0.0.1", `nc -w 2 127.0.0.1 ${port} </dev/null`, outputLacks("host service"));
  // Not an attack: without CAP_NET_RAW, ping's way is an ICMP datagram socket, which the sandbox's ping_group_range allows.
  await attempt("ping still works (an ICMP datagram socket to the sandbox's own loopback)", `${A} icmp-echo 127.0.0.1`, (r) => (r.exit_code === 0 && /echo reply/.test(r.stdout) ? null : `exit ${r.exit_code}: ${r.stdout.trim()}`));
  const addr = hostAddress();
  if (addr) await attempt("reach a host service on the host's own address", `nc -w 2 ${addr} ${port} </dev/null`, outputLacks("host service"));
  server.close();

  // With network on, the host's loopback stays out of reach even by frames the command writes
  // itself: pasta connects on the host to whatever destination a frame names, 127.0.0.1 and
  // 0.0.0.0 (the host's loopback) included, which the guest's kernel would never route out.
  // Where this user cannot open /dev/net/tun (mode 600 on some hosts) there is no network to attack.
  const net = findExecutable("pasta")
    ? await pyro.createTask({ environment: "busybox", source_path: o.attackDir, network: true }).catch((error: Error) => {
        if (/tun/.test(error.message)) return null;
        throw error;
      })
    : null;
  if (net) {
    // A reached service sees the connection reset: that must not end the suite.
    const loopback = createServer((s) => (s.on("error", () => undefined), s.end("host loopback service\n")));
    await new Promise<void>((res) => loopback.listen(0, "127.0.0.1", () => res()));
    const lport = (loopback.address() as { port: number }).port;
    const onNet = async (name: string, command: string) => {
      let detail: string | null;
      try {
        const r = await pyro.execTask({ task_id: net.task_id, command, timeout_seconds: 30 });
        detail = helper({ exit_code: r.exit_code, stdout: r.stdout, stderr: r.stderr });
      } catch (error) {
        detail = `the attack could not run: ${(error as Error).message}`;
      }
      outcomes.push({ name, held: detail === null, detail: detail ?? "held" });
    };
    for (const dst of ["127.0.0.1", "0.0.0.0"]) await onNet(`reach the host's loopback with hand-made frames to ${dst} (network on)`, `${A} raw-loopback ${dst} ${lport}`);
    await onNet("open a raw IP socket that sends its own header (network on)", `${A} raw-ip`);
    loopback.close();
    await pyro.deleteTask({ task_id: net.task_id });
  }

  // What the process that starts pyro holds: an open directory fd, an open
  // file, and secrets in its environment. Inspected from the host side on
  // every process of the running sandbox (as root all are readable; as an
  // unprivileged user the non-dumpable agent's are not, and the command's
  // own are), and from inside by the command itself.
  const secrets = ["sk-host-secret-value", "host-mcp-token"];
  const hostPaths = [join(S, ".."), S];
  const viaCli = async (daemon: boolean): Promise<string | null> => {
    const script = `exec 7< ${JSON.stringify(join(S, ".."))}; exec 8< ${JSON.stringify(S)}; exec ./bin/pyro run busybox -- sh -c 'ls -l /proc/self/fd/; env; sleep 3'`;
    const child = spawn("bash", ["-c", script], {
      cwd: o.root,
      env: { ...process.env, PYRO_STATE_DIR: o.stateDir, PYRO_DAEMON: daemon ? "1" : "0", PYRO_TEST_API_KEY: secrets[0], PYRO_MCP_TOKEN: secrets[1] },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
    // Wait for the command's sleep, then look at every process of its sandbox from the host.
    let inspected: string[] = [];
    for (let i = 0; i < 100 && inspected.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const sandbox = sandboxProcesses(o.stateDir);
      if (sandbox.some((p) => p.comm === "sleep")) inspected = sandbox.flatMap((p) => [...fdTargets(p.pid), environOf(p.pid)].map((t) => `${p.pid}/${p.comm}: ${t}`));
    }
    const code = await exited;
    if (code !== 0) return `exit ${code}: ${out.slice(-300)}`;
    if (inspected.length === 0) return "never saw the sandbox's processes";
    const seen = inspected.join("\n") + "\n" + out;
    const leak = [...secrets, ...hostPaths].find((n) => seen.includes(n));
    return leak ? `reached the sandbox: ${leak}` : null;
  };
  for (const [label, daemon] of [["in-process", false], ["through the daemon, first run", true], ["through the daemon, second run", true]] as const) {
    const detail = await viaCli(daemon);
    outcomes.push({ name: `inherited fds and environment reach no sandbox process (${label})`, held: detail === null, detail: detail ?? "held" });
  }
  // The same environment as the runs: the daemon's key covers PYRO_* variables.
  // A daemon started by the second run may still be taking over the socket when the first stop
  // arrives: stop until status says none serves this configuration.
  const daemonEnv = { ...process.env, PYRO_STATE_DIR: o.stateDir, PYRO_DAEMON: "1", PYRO_TEST_API_KEY: secrets[0], PYRO_MCP_TOKEN: secrets[1] };
  let stopped = spawnSync("./bin/pyro", ["daemon", "stop"], { cwd: o.root, env: daemonEnv, encoding: "utf8", timeout: 20_000 });
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 500));
    if (/no daemon running/.test(spawnSync("./bin/pyro", ["daemon", "status"], { cwd: o.root, env: daemonEnv, encoding: "utf8" }).stdout)) break;
    stopped = spawnSync("./bin/pyro", ["daemon", "stop"], { cwd: o.root, env: daemonEnv, encoding: "utf8", timeout: 20_000 });
  }

  // A tmpfs's size bounds its pages, not its inodes: empty files cost the host kernel memory that no size counts.
  await attempt("fill /dev with empty files (its inodes are bounded too)", "cd /dev && i=0; while [ $i -lt 5000 ]; do touch e$i 2>/dev/null || break; i=$((i+1)); done; echo made $i; rm -f e*", (r) => {
    const n = Number(/made (\d+)/.exec(r.stdout)?.[1]);
    return Number.isFinite(n) && n < 2000 ? null : `made ${n} empty files in a 1 MiB /dev`;
  }, 60);
  await attempt("the inode counts of /dev/shm and /run are bounded by their sizes", "df -i /dev/shm /run | tail -2", (r) => {
    const counts = r.stdout.trim().split("\n").map((l) => Number(l.trim().split(/\s+/)[1]));
    // One per 4 KiB of each size (half of mem_mib, 1024 MiB here), where the kernel's default is half the host's RAM pages.
    return counts.length === 2 && counts.every((c) => c > 0 && c <= 512 * 256) ? null : `inodes: ${r.stdout.trim()}`;
  });
  await attempt("fill /dev past its size", "dd if=/dev/zero of=/dev/fill bs=64k count=64 2>&1; rm -f /dev/fill", (r) => (/No space left/.test(r.stdout + r.stderr) ? null : `no ENOSPC: ${r.stdout.trim().slice(-200)}`));

  // Another sandbox of the same user (as root: of the same sandbox uid) is out of reach too.
  const other = await pyro.createVm({ environment: "busybox" });
  await pyro.startVm({ vm_id: other.vm_id });
  const otherPids = agentsOf(other.vm_id);
  await attempt("signal another sandbox's processes by their host pids", otherPids.map((p) => `kill -0 ${p} 2>/dev/null && echo reached ${p}`).join("; ") + "; true", (r) => (/reached/.test(r.stdout) ? r.stdout.trim() : otherPids.length ? null : "the other sandbox's processes were not found"));
  await attempt("see another sandbox's processes", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '", outputLacks(other.vm_id.replace("_", "-")));
  {
    const alive = await pyro.statusVm({ vm_id: other.vm_id });
    outcomes.push({ name: "the other sandbox is unharmed", held: alive.state === "started" && otherPids.every((p) => agentsOf(other.vm_id).includes(p)), detail: `state ${alive.state}` });
    await pyro.deleteVm({ vm_id: other.vm_id });
  }

  await attempt("fill /run past its size", "dd if=/dev/zero of=/run/fill bs=1M count=1100 2>&1; rm -f /run/fill", (r) => (/No space left/.test(r.stdout + r.stderr) ? null : `no ENOSPC: ${r.stdout.trim().slice(-200)}`), 60);

  // The rootfs is written through the overlay only.
  await attempt("overwrite a binary of the environment", "echo pwned > /bin/busybox.pwn && rm -f /bin/ls && echo done", (r) => (r.exit_code === 0 ? null : r.stderr));
  // The host measures a task's workspace in its writable layer: a /workspace that is a symlink
  // to a host directory must lead the walk nowhere (it once counted the host's /root as root).
  await attempt("replace /workspace with a symlink to a host directory", `cd / && rm -rf /workspace && ln -s ${JSON.stringify(join(S, ".."))} /workspace && echo planted`, (r) => (/planted/.test(r.stdout) ? null : r.stdout + r.stderr));
  {
    const status = await pyro.statusTask({ task_id: task.task_id });
    outcomes.push({ name: "the host's status of that task walks no host directory", held: status.workspace.files === 0 && status.workspace.bytes === 0, detail: `workspace ${JSON.stringify(status.workspace)}` });
  }

  // The disk quota (disk_mib). As root a task's layer is an ext4 image of that size (the kernel says ENOSPC);
  // unprivileged it is a directory on the host disk that pyro checks, and the limits say so. A one-shot
  // run's layer is a tmpfs of that size for both. The host's free space is measured on the state directory's disk.
  {
    const MIB = 1024 * 1024;
    const hostFree = () => {
      const st = statfsSync(o.stateDir);
      return st.bavail * st.bsize;
    };
    const small = await pyro.createTask({ environment: "busybox", disk_mib: 64 });
    const neighbour = await pyro.createTask({ environment: "busybox", disk_mib: 64 });
    const kernel = small.limits?.enforced_by.disk === "ext4-image";
    const ex = (id: string, command: string) => pyro.execTask({ task_id: id, command, timeout_seconds: 60 });
    if (kernel) {
      const df = await ex(small.task_id, "df -k /workspace | tail -1");
      const kib = Number(df.stdout.trim().split(/\s+/)[1]);
      outcomes.push({ name: "df /workspace in a task shows its disk_mib, not the host's disk", held: kib > 48 * 1024 && kib <= 64 * 1024, detail: df.stdout.trim() });
      const before = hostFree();
      const fill = await ex(small.task_id, "dd if=/dev/zero of=/workspace/fill bs=1M count=600 2>&1; dd if=/dev/zero of=/tmp/fill bs=1M count=600 2>&1; sync");
      const grew = before - hostFree();
      outcomes.push({ name: "write past a task's disk_mib (ENOSPC inside, /workspace and /tmp alike)", held: (fill.stdout.match(/No space left/g) ?? []).length >= 2, detail: fill.stdout.trim().slice(-300) });
      // 1200 MiB were attempted; the image can take at most its 64. The margin is for other writers on this disk.
      outcomes.push({ name: "filling a task's disk barely moves the host's free space", held: grew < 400 * MIB, detail: `host free space fell by ${Math.round(grew / MIB)} MiB` });
    } else {
      outcomes.push({ name: "the task's limits say its disk quota is checked by pyro, not kept by the kernel", held: small.limits?.enforced_by.disk === "checked" && /not the kernel/.test(small.limits?.note ?? ""), detail: small.limits?.note ?? "no limits" });
      const refusedNext = async (id: string): Promise<string> => {
        try {
          await ex(id, "true");
          return "the next exec ran";
        } catch (error) {
          const e = error as { code?: string; message: string };
          return e.code === "limit_exceeded" && /disk_mib/.test(e.message) ? "" : `${e.code}: ${e.message}`;
        }
      };
      await ex(small.task_id, "dd if=/dev/zero of=/workspace/fill bs=1M count=100 2>&1");
      const refused = await refusedNext(small.task_id);
      outcomes.push({ name: "write past a task's disk_mib (the next exec is refused: the quota is checked here)", held: refused === "", detail: refused || "held" });
      // Nor can it go on writing through a shell or a service, which start commands as an exec does.
      for (const [what, start] of [
        ["a shell", () => pyro.openTaskShell({ task_id: small.task_id })],
        ["a service", () => pyro.startTaskService({ task_id: small.task_id, name: "writer", command: "dd if=/dev/zero of=/workspace/more bs=1M count=50; sleep 60" })],
      ] as const) {
        let detail: string;
        try {
          await start();
          detail = `${what} started`;
        } catch (error) {
          const e = error as { code?: string; message: string };
          detail = e.code === "limit_exceeded" && /disk_mib/.test(e.message) ? "" : `${e.code}: ${e.message}`;
        }
        outcomes.push({ name: `past its disk_mib, a task refuses ${what} too`, held: detail === "", detail: detail || "held" });
      }
      // Bytes the host's walk cannot see must not escape the check: here the sandbox's files are this user's,
      // so a directory of mode 000 is one this user cannot list, and a walk has a depth it stops at.
      for (const [what, plant] of [
        ["in a directory of mode 000", "mkdir /workspace/hide && dd if=/dev/zero of=/workspace/hide/fill bs=1M count=100 2>&1; chmod 000 /workspace/hide"],
        ["in a layer whose top is mode 000", "dd if=/dev/zero of=/fill bs=1M count=100 2>&1; chmod 000 /"],
        ["under 600 nested directories", "cd /workspace && i=0; while [ $i -lt 600 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; dd if=/dev/zero of=fill bs=1M count=100 2>&1"],
      ] as const) {
        const hidden = await pyro.createTask({ environment: "busybox", disk_mib: 64 });
        await ex(hidden.task_id, plant);
        const detail = await refusedNext(hidden.task_id);
        outcomes.push({ name: `hide a write past disk_mib ${what} (the next exec is still refused)`, held: detail === "", detail: detail || "held" });
        await pyro.deleteTask({ task_id: hidden.task_id });
      }
      // Deleting those tasks frees their layers: a removal that gave up on such a tree left it on the host for good.
      await removalsDone();
      await pyro.reapExpired();
      await removalsDone();
      const trash = readdirSync(join(o.stateDir, "tasks")).filter((n) => n.startsWith(".trash-"));
      outcomes.push({ name: "deleted tasks leave nothing on the host's disk (mode-000 and deep trees included)", held: trash.length === 0, detail: trash.length ? `left: ${trash.join(", ")}` : "held" });
    }
    const next = await ex(neighbour.task_id, "echo ok > /workspace/f && cat /workspace/f");
    outcomes.push({ name: "a second task is unaffected by the first's full disk", held: next.stdout.trim() === "ok", detail: `exit ${next.exit_code}: ${next.stdout}${next.stderr}` });
    const once = await pyro.runInVm({ environment: "busybox", disk_mib: 64, command: "dd if=/dev/zero of=/fill bs=1M count=200 2>&1", timeout_seconds: 60 });
    outcomes.push({ name: "write past a one-shot run's disk_mib (ENOSPC: a tmpfs of that size)", held: /No space left/.test(once.stdout) && once.limits?.enforced_by.disk === "tmpfs", detail: `${once.limits?.enforced_by.disk}: ${once.stdout.trim().slice(-200)}` });
    // What the limits say must be what holds: a process cap and a sized /dev/shm everywhere, memory only with a cgroup.
    const l = once.limits;
    const said = !l ? "no limits" : l.enforced_by.pids === "none" || l.enforced_by.shm !== "tmpfs" ? `pids ${l.enforced_by.pids}, shm ${l.enforced_by.shm}` : l.mechanism === "none" && (l.mem_mib !== null || l.enforced_by.memory !== "none") ? "claims a memory limit without cgroups" : null;
    outcomes.push({ name: "the result's limits say what this host enforces", held: said === null, detail: said ?? l!.note! });
    for (const t of [small, neighbour]) await pyro.deleteTask({ task_id: t.task_id });
  }

  await pyro.deleteTask({ task_id: task.task_id });
  await pyro.reapExpired();
  await pyro.close();

  const check = (name: string, detail: string | null) => host.push({ name, held: detail === null, detail: detail ?? "held" });
  check("the host secret is unchanged", readFileSync(o.secret, "utf8") === secretBefore ? null : "changed");
  const sysctlsAfter = readSysctls();
  check("host sysctls are unchanged", SYSCTLS.filter((k) => sysctlsAfter[k] !== sysctlsBefore[k]).join(", ") || null);
  check("the host's hostname is unchanged", hostHostname() === hostnameBefore ? null : `now ${hostHostname()}`);
  const digestAfter = (await inspectEnvironment("busybox", { verify: true })).verify!.actual;
  const envDir = join(cacheDir(), "environments");
  check("the environments directory is private (its trees are reachable by no other user)", (statSync(envDir).mode & 0o077) === 0 ? null : `mode ${(statSync(envDir).mode & 0o777).toString(8)}`);
  check("the environment's rootfs digest is unchanged", digestAfter === digestBefore ? null : `${digestBefore} -> ${digestAfter}`);
  // A stopped daemon's spare sandbox may take a moment to exit.
  let left = leftovers(o.stateDir);
  for (let i = 0; i < 50 && left.length; i++) {
    await new Promise((r) => setTimeout(r, 100));
    left = leftovers(o.stateDir);
  }
  check("no process of the sandboxes is left on the host", left.length ? `${left.join("; ")} (daemon stop said: ${stopped.stdout}${stopped.stderr})` : null);
  return { uid: process.getuid?.() ?? -1, outcomes, host };
}
