/**
 * Services and published ports on real sandboxes (busybox, namespace
 * driver): readiness probes of every kind, the errors and what they leave,
 * restarts, and the one way in from the host: 127.0.0.1 only, closed with
 * the service, relayed through the agent (the sandbox has no network).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { get } from "node:http";
import { connect, createServer } from "node:net";
import { networkInterfaces } from "node:os";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { PyroError } from "../../src/core/errors.js";
import { testPyro, waitFor } from "../helpers/sandbox.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const code = (e: unknown) => (e instanceof PyroError ? e.code : String(e));

function hostProcessesRunning(argv: string): number {
  let n = 0;
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ").trim() === argv) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

function fetch(host: string, port: number, path: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = get({ host, port, path, timeout: 10_000 }, (res) => {
      const parts: Buffer[] = [];
      res.on("data", (c: Buffer) => parts.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("timeout")));
  });
}

/** Whether a TCP connection to host:port is accepted (false: refused). */
function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

function nonLoopbackAddress(): string | null {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  return null;
}

async function task(pyro: Pyro): Promise<string> {
  const { task_id } = await pyro.createTask({ environment: "busybox" });
  // Content the service serves: a page and 5 MiB of random bytes.
  await pyro.execTask({ task_id, command: "mkdir -p /workspace/www && echo '<h1>hello from the task</h1>' > /workspace/www/index.html && head -c 5242880 /dev/urandom > /workspace/www/blob" });
  return task_id;
}

test("a service with an HTTP probe, published on 127.0.0.1 only, served byte for byte, closed with the service", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const started = Date.now();
  const s = await pyro.startTaskService({
    task_id,
    name: "web",
    command: "echo starting; sleep 0.5; exec busybox httpd -f -v -p 127.0.0.1:8080 -h /workspace/www",
    ready: { http: { port: 8080, path: "/index.html" } },
    publish: { port: 8080 },
  });
  t.diagnostic(`ready and published in ${Date.now() - started} ms`);
  assert.deepEqual([s.state, s.ready, s.published?.host, s.published?.guest_port], ["running", true, "127.0.0.1", 8080]);
  const port = s.published!.port;
  const page = await fetch("127.0.0.1", port, "/index.html");
  assert.deepEqual([page.status, page.body.toString()], [200, "<h1>hello from the task</h1>\n"]);
  // 5 MiB through the relay, byte for byte.
  const blob = await fetch("127.0.0.1", port, "/blob");
  const inside = await pyro.execTask({ task_id, command: "sha256sum /workspace/www/blob" });
  assert.equal(createHash("sha256").update(blob.body).digest("hex"), inside.stdout.split(" ")[0]);
  // Several connections at once.
  const many = await Promise.all(Array.from({ length: 8 }, () => fetch("127.0.0.1", port, "/index.html")));
  assert.ok(many.every((r) => r.status === 200));

  // The one way in: loopback only. The host's other address refuses, and so does any port but the published one.
  const other = nonLoopbackAddress();
  if (other) assert.equal(await accepts(other, port), false, `${other}:${port} refuses`);
  else t.diagnostic("no non-loopback IPv4 address on this host: that check was skipped");
  const logs = await pyro.logsTaskService({ task_id, name: "web" });
  assert.equal(logs.lines[0], "starting");
  assert.ok(logs.lines.some((l) => /GET \/index\.html|index\.html/.test(l)) || logs.lines.length >= 1);
  const st = await pyro.statusTask({ task_id });
  assert.deepEqual(st.services?.map((x) => [x.name, x.state, x.published?.port]), [["web", "running", port]]);

  const stopped = await pyro.stopTaskService({ task_id, name: "web" });
  assert.deepEqual([stopped.state, stopped.published], ["stopped", null]);
  assert.equal(await accepts("127.0.0.1", port), false, "the port is closed with the service");
  assert.equal(hostProcessesRunning("busybox httpd -f -v -p 127.0.0.1:8080 -h /workspace/www"), 0);
  // Stopped, it can start again under the same name.
  const again = await pyro.startTaskService({ task_id, name: "web", command: "exec busybox httpd -f -p 127.0.0.1:8080 -h /workspace/www", ready: { tcp_port: 8080 }, publish: { port: 8080, host_port: port } });
  assert.equal(again.published?.port, port, "the given host_port");
  await pyro.deleteTask({ task_id });
  assert.equal(await accepts("127.0.0.1", port), false, "the port is closed with the task");
});

test("an HTTP probe reads the answer before it closes: a server still writing its page sees no connection reset", async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: "busybox" });
  // A server that answers 16 MiB (more than the sockets buffer) and says whether all of it was written.
  await pyro.writeTaskFile({
    task_id,
    path: "serve.sh",
    content: '#!/bin/sh\nread line\nprintf "HTTP/1.0 200 OK\\r\\n\\r\\n"\nif head -c 16777216 /dev/zero; then echo sent-all >> /workspace/log; else echo write-failed >> /workspace/log; fi\n',
  });
  await pyro.execTask({ task_id, command: "chmod +x /workspace/serve.sh" });
  const s = await pyro.startTaskService({ task_id, name: "web", command: "exec nc -ll -p 8080 -e /workspace/serve.sh", ready: { http: { port: 8080 } } });
  assert.equal(s.ready, true);
  let log = "";
  for (let i = 0; i < 50 && !log; i++) {
    log = (await pyro.execTask({ task_id, command: "cat /workspace/log 2>/dev/null" })).stdout;
    if (!log) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(log, "sent-all\n", "the probe's close cut the server's write short");
  await pyro.deleteTask({ task_id });
});

test("probes: a file, a command; a probe that never passes and a service that exits first are clear errors that leave nothing", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const f = await pyro.startTaskService({ task_id, name: "filer", command: "sleep 0.3; touch /tmp/ready; exec sleep 4601", ready: { file: "/tmp/ready" } });
  assert.equal(f.state, "running");
  const c = await pyro.startTaskService({ task_id, name: "cmd", command: ["sleep", "4602"], ready: { command: "test 1 -eq 1" } });
  assert.equal(c.ready, true);

  const t0 = Date.now();
  await assert.rejects(
    pyro.startTaskService({ task_id, name: "never", command: "echo listening-soon; echo oh no >&2; exec sleep 4603", ready: { tcp_port: 9999 }, ready_timeout_seconds: 2 }),
    (e) => code(e) === "invalid_state" && /not ready within 2 s \(127\.0\.0\.1:9999 did not accept: .*refused/i.test((e as Error).message) && /listening-soon\noh no/.test((e as PyroError).hint ?? ""),
  );
  assert.ok(Date.now() - t0 < 10_000);
  await waitFor(() => hostProcessesRunning("sleep 4603") === 0, 10_000, "the failed service's process to end");
  assert.equal((await pyro.statusTaskService({ task_id, name: "never" })).state, "failed");

  await assert.rejects(
    pyro.startTaskService({ task_id, name: "dies", command: "echo bad config >&2; exit 3", ready: { http: { port: 8000 } } }),
    (e) => code(e) === "invalid_state" && /exited \(exit code 3\) before it was ready/.test((e as Error).message) && /bad config/.test((e as PyroError).hint ?? ""),
  );
  await assert.rejects(pyro.startTaskService({ task_id, name: "filer", command: "true" }), (e) => code(e) === "invalid_state" && /already runs/.test((e as Error).message));
  await assert.rejects(pyro.startTaskService({ task_id, name: "Bad Name", command: "true" }), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.startTaskService({ task_id, name: "x", command: "true", ready: { tcp_port: 0 } } as never), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.startTaskService({ task_id, name: "x", command: "true", ready: { file: "/a", tcp_port: 1 } } as never), (e) => code(e) === "invalid_argument", "one probe kind");
  await assert.rejects(pyro.statusTaskService({ task_id, name: "nope" }), (e) => code(e) === "unknown_service");
  await assert.rejects(pyro.stopTaskService({ task_id: "task_000000000000", name: "filer" }), (e) => code(e) === "unknown_task");

  // A host port in use: a clear error, and the service is not left running.
  const busy = createServer().listen(0, "127.0.0.1");
  await new Promise((r) => busy.once("listening", r));
  t.after(() => busy.close());
  const busyPort = (busy.address() as { port: number }).port;
  await assert.rejects(
    pyro.startTaskService({ task_id, name: "clash", command: "exec busybox httpd -f -p 127.0.0.1:8082 -h /workspace/www", ready: { tcp_port: 8082 }, publish: { port: 8082, host_port: busyPort } }),
    (e) => code(e) === "invalid_argument" && /in use/.test((e as Error).message),
  );
  assert.equal(hostProcessesRunning("busybox httpd -f -p 127.0.0.1:8082 -h /workspace/www"), 0, "the service was stopped");

  // restart: on-failure restarts a service that fails after it was ready, up to max_restarts.
  await pyro.startTaskService({ task_id, name: "flaky", command: "touch /tmp/up; sleep 0.3; exit 1", ready: { file: "/tmp/up" }, restart: "on-failure", max_restarts: 2 });
  for (let i = 0; (await pyro.statusTaskService({ task_id, name: "flaky" })).state !== "failed"; i++) {
    assert.ok(i < 100, "it gives up");
    await new Promise((r) => setTimeout(r, 100));
  }
  const flaky = await pyro.statusTaskService({ task_id, name: "flaky" });
  assert.deepEqual([flaky.restarts, flaky.exit_code], [2, 1]);
  assert.equal((await pyro.logsTaskService({ task_id, name: "flaky" })).lines.filter((l) => /^pyro: restart \d of 2/.test(l)).length, 2);

  // Deleting the task stops the rest.
  await pyro.deleteTask({ task_id });
  await waitFor(() => hostProcessesRunning("sleep 4601") + hostProcessesRunning("sleep 4602") === 0, 10_000, "the services to end with the task");
});

test("a service belongs to the task: kill -9 of its holder leaves it running; the next process takes it over, its log gets the output, its port is published again; delete leaves nothing", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task_id = await task(pyro);
  await pyro.execTask({ task_id, command: "echo served > /workspace/page" });
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/service-child.ts"), stateDir, task_id, "4848"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.on("data", (c) => (out += c));
  child.stderr!.on("data", (c) => (err += c));
  await waitFor(() => /ready (\d+)/.test(out), 30_000, `the child's service (${err})`);
  const port = Number(/ready (\d+)/.exec(out)![1]);
  assert.equal((await fetch("127.0.0.1", port, "/page")).body.toString(), "served\n");
  assert.equal(hostProcessesRunning("sleep 4848"), 1);
  const listed = (await pyro.listTaskServices({ task_id })).services;
  assert.deepEqual(listed.map((s) => [s.name, s.state, s.held_here]), [["web", "running", false]], "listing does not take it over");
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  assert.equal(await accepts("127.0.0.1", port), false, "the host's listener died with its process");
  await new Promise((r) => setTimeout(r, 2500)); // the ticks go to the agent's ring meanwhile
  assert.equal(hostProcessesRunning("sleep 4848"), 1, "the service outlives its holder");

  const s = await pyro.statusTaskService({ task_id, name: "web" });
  assert.equal(s.state, "running");
  assert.equal(s.held_here, true);
  assert.deepEqual(s.published, { host: "127.0.0.1", port, guest_port: 8081 }, "the same host port again");
  assert.equal(s.publish_error, null);
  assert.equal((await fetch("127.0.0.1", port, "/page")).body.toString(), "served\n");
  const logs = await pyro.logsTaskService({ task_id, name: "web" });
  for (let i = 0; i < 5; i++) assert.ok(logs.lines.includes(`tick-${i}`), `tick-${i} (printed while no process held the service) is in the log: ${JSON.stringify(logs.lines)}`);

  await pyro.deleteTask({ task_id });
  await waitFor(() => hostProcessesRunning("sleep 4848") === 0, 10_000, "the service to end with its task");
  assert.equal(await accepts("127.0.0.1", port), false, "the port closed with the task");
});

test("stop from another process than the starter ends the service; a port taken meanwhile is reported, not fatal", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task_id = await task(pyro);
  await pyro.execTask({ task_id, command: "mkdir -p /workspace/www && echo hi > /workspace/www/index.html" });
  const s = await pyro.startTaskService({ task_id, name: "web", command: "sleep 4949 & exec busybox httpd -f -p 127.0.0.1:8085 -h /workspace/www", ready: { tcp_port: 8085 }, publish: { port: 8085 } });
  const port = s.published!.port;
  await pyro.close(); // the SDK lets go: the service runs on, its listener closes
  const squatter = createServer().listen(port, "127.0.0.1");
  await new Promise((r) => squatter.once("listening", r));
  t.after(() => squatter.close());
  const next = new Pyro({ stateDir });
  t.after(() => next.close());
  const again = await next.statusTaskService({ task_id, name: "web" });
  assert.equal(again.state, "running");
  assert.equal(again.published, null);
  assert.match(again.publish_error ?? "", new RegExp(`127\\.0\\.0\\.1:${port} could not be published again: .*in use`));
  const stopped = await next.stopTaskService({ task_id, name: "web" });
  assert.equal(stopped.state, "stopped");
  await waitFor(() => hostProcessesRunning("sleep 4949") === 0, 10_000, "the service's tree to end");
  const after = (await new Pyro({ stateDir }).listTaskServices({ task_id })).services;
  assert.deepEqual(after.map((x) => [x.name, x.state]), [["web", "stopped"]], "a third process sees the last state");
});

test("shells, probes and published ports do not wait behind a long task_exec (they take no lock on a running sandbox)", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const long = pyro.execTask({ task_id, command: "sleep 6; echo long-done", timeout_seconds: 30 });
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  const sh = await pyro.openTaskShell({ task_id });
  const s = await pyro.startTaskService({ task_id, name: "web", command: "exec busybox httpd -f -p 127.0.0.1:8083 -h /workspace/www", ready: { tcp_port: 8083 }, publish: { port: 8083 } });
  const page = await fetch("127.0.0.1", s.published!.port, "/index.html");
  assert.equal(page.status, 200);
  const took = Date.now() - t0;
  assert.ok(took < 4000, `shell, service and a fetch took ${took} ms beside a 6 s exec`);
  assert.equal((await long).stdout, "long-done\n");
  await pyro.closeTaskShell({ task_id, shell_id: sh.shell_id });
});

test("a published service that floods a client who never reads costs the host a bounded buffer, not its memory", async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: "busybox" });
  const s = await pyro.startTaskService({ task_id, name: "flood", command: "exec busybox nc -ll -p 8084 -e cat /dev/zero", ready: { tcp_port: 8084 }, publish: { port: 8084 } });
  const before = process.memoryUsage().rss;
  const sock = connect({ host: "127.0.0.1", port: s.published!.port });
  sock.pause(); // connected, never reading
  await new Promise((r) => setTimeout(r, 4000));
  const grown = (process.memoryUsage().rss - before) / 1048576;
  t.diagnostic(`host RSS grew ${grown.toFixed(1)} MiB in 4 s beside an endless stream nobody read`);
  assert.ok(grown < 64, `grew ${grown.toFixed(1)} MiB`);
  // Reading again, the stream flows: nothing was lost or stuck.
  let n = 0;
  sock.on("data", (c: Buffer) => (n += c.length));
  sock.resume();
  await waitFor(() => n > 32 * 1024 * 1024, 20_000, "32 MiB to flow once the client reads");
  sock.destroy();
});

test("on-failure restarts are done by the process that holds the service, after a takeover too", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task_id = await task(pyro);
  await pyro.startTaskService({ task_id, name: "flaky", command: "echo run; while [ ! -e /workspace/die ]; do sleep 0.1; done; rm /workspace/die; exit 3", restart: "on-failure", max_restarts: 2 });
  await pyro.close(); // the starter lets go; nobody holds it now
  const next = new Pyro({ stateDir });
  t.after(() => next.close());
  const held = await next.statusTaskService({ task_id, name: "flaky" });
  assert.deepEqual([held.state, held.held_here, held.restarts], ["running", true, 0]);
  await next.execTask({ task_id, command: "touch /workspace/die" });
  await waitFor(() => {
    const svc = (next.services as unknown as { services: Map<string, { restarts: number; state: string }> }).services.get(`${task_id}/flaky`);
    return svc?.restarts === 1 && svc.state === "running";
  }, 15_000, "the holder to restart it, and the restart to be running");
  const after = await next.statusTaskService({ task_id, name: "flaky" });
  assert.equal(after.restarts, 1);
  assert.equal(after.state, "running");
  const seen = (await new Pyro({ stateDir }).listTaskServices({ task_id })).services;
  assert.deepEqual(seen.map((s) => [s.name, s.state, s.restarts, s.held_here]), [["flaky", "running", 1, false]], "another process sees the restart in the note");
  // The second run's first line reaches the log when the agent delivers it (running does not wait for output).
  let lines: string[] = [];
  const deadline = Date.now() + 10_000;
  do {
    lines = (await next.logsTaskService({ task_id, name: "flaky" })).lines;
    if (lines.filter((l) => l === "run").length === 2) break;
    await new Promise((r) => setTimeout(r, 50));
  } while (Date.now() < deadline);
  assert.ok(lines.filter((l) => l === "run").length === 2 && lines.some((l) => /restart 1 of 2 \(exit 3\)/.test(l)), JSON.stringify(lines));
  await next.stopTaskService({ task_id, name: "flaky" });
});
