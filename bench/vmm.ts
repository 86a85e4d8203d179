/**
 * What `pyro-agent vmm` costs: the same agent (`pyro-agent serve`) reached
 * straight over its own socket, and through the vmm that multiplexes host
 * connections onto one guest stream, measured side by side in one run
 * (medians, interleaved so that machine noise hits both alike).
 *
 *   make -C guest && node --import tsx bench/vmm.ts
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../src/agent/client.js";

const root = new URL("..", import.meta.url).pathname;
const AGENT = join(root, "guest", "build", "pyro-agent");

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

async function compare(label: string, n: number, a: [string, () => Promise<unknown>], b: [string, () => Promise<unknown>], warm = 3): Promise<void> {
  for (let i = 0; i < warm; i++) {
    await a[1]();
    await b[1]();
  }
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < n; i++) {
    ta.push(await time(a[1]));
    tb.push(await time(b[1]));
  }
  const ma = median(ta);
  const mb = median(tb);
  console.log(`${label}\n  ${a[0]}: ${ma.toFixed(2)} ms   ${b[0]}: ${mb.toFixed(2)} ms   added ${(ma - mb).toFixed(2)} ms, ratio ${(ma / mb).toFixed(2)}x`);
}

async function waitFor(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error("timed out");
}

if (!existsSync(AGENT)) spawnSync("make", ["-C", join(root, "guest")], { stdio: "inherit" });
const dir = mkdtempSync(join(tmpdir(), "pyro-bench-vmm-"));
const children: ChildProcess[] = [];
try {
  const direct = spawn(AGENT, ["serve", "--listen", join(dir, "direct.sock")], { stdio: "ignore" });
  children.push(direct);
  const vmm = spawn(
    AGENT,
    ["vmm", "--listen", join(dir, "vmm.sock"), "--guest", `unix:${join(dir, "guest.sock")}`, "--ready-fd", "3", "--console", join(dir, "console.log"), "--", AGENT, "serve", "--listen", join(dir, "guest.sock")],
    { stdio: ["ignore", "ignore", "ignore", "pipe"] },
  );
  children.push(vmm);
  let ready = "";
  (vmm.stdio[3] as NodeJS.ReadableStream).on("data", (b: Buffer) => (ready += b.toString()));
  await waitFor(() => ready === "R" && existsSync(join(dir, "direct.sock")));
  const viaVmm = await AgentClient.connect(join(dir, "vmm.sock"));
  const straight = await AgentClient.connect(join(dir, "direct.sock"));
  console.log(`pyro-agent vmm bench: node ${process.version}, ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")} load\n`);

  const execTrue = (c: AgentClient) => () => c.exec({ argv: ["/bin/true"], env: {}, cwd: "", timeoutMs: 0 }).result;
  await compare("exec true round trip (OPEN, OPENED, EXIT)", 200, ["through the vmm", execTrue(viaVmm)], ["straight to the agent", execTrue(straight)], 10);

  const big = (c: AgentClient) => async () => {
    let n = 0;
    const r = await c.exec({ argv: ["head", "-c", String(64 << 20), "/dev/zero"], env: { PATH: "/usr/bin:/bin" }, cwd: "", timeoutMs: 0, onStdout: (b) => void (n += b.length) }).result;
    if (n !== 64 << 20 || r.kind !== "exited") throw new Error(`short output: ${n}`);
  };
  await compare("64 MiB of stdout, flow-controlled end to end", 10, ["through the vmm", big(viaVmm)], ["straight to the agent", big(straight)], 2);

  const ping = (c: AgentClient) => () => c.ping();
  await compare("PING (through the vmm it is answered by the guest's PONG)", 200, ["through the vmm", ping(viaVmm)], ["straight to the agent", ping(straight)], 10);

  const st = readFileSync(`/proc/${vmm.pid}/status`, "utf8");
  console.log(`\nvmm peak RSS (VmHWM): ${/VmHWM:\s+(\d+ kB)/.exec(st)![1]}`);
  viaVmm.close();
  straight.close();
} finally {
  for (const c of children) c.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 200));
  rmSync(dir, { recursive: true, force: true });
}
