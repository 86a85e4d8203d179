// Shells and services on the qemu driver under TCG: the PTY, RESIZE and the port relay cross the vmm relay
// and the virtio-serial port to the guest's agent, and behave as on the
// namespace driver (test/integration/shell.test.ts, which also checks what a
// killed holder leaves from the host's /proc, where a VM's processes do not show).
import { test } from "node:test";
import assert from "node:assert/strict";
import { AgentClient, isDetachedError } from "../../src/agent/client.js";
import { Pyro } from "../../src/index.js";
import { findExecutable, qemuBinaryName } from "../../src/drivers/availability.js";
import { testPyro } from "../helpers/sandbox.js";

const skip = !findExecutable(qemuBinaryName()) && `${qemuBinaryName()} is not installed (apt-get install qemu-system-x86)`;

test("a shell in a qemu task: state between calls, resize, Ctrl-C, exit code", { skip, timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t, { driver: "qemu" });
  const task = await pyro.createTask({ environment: "busybox", mem_mib: 256 });
  assert.equal(task.isolation.driver, "qemu");
  const sh = await pyro.openTaskShell({ task_id: task.task_id, rows: 33, cols: 77 });
  const id = { task_id: task.task_id, shell_id: sh.shell_id };
  await pyro.writeTaskShell({ ...id, input: "cd /tmp; V=vm; stty size; uname -r; echo E$((1))\n" });
  const r1 = await pyro.readTaskShell({ ...id, wait_for: "E1", plain: true, timeout_ms: 60_000 });
  assert.equal(r1.reason, "pattern", JSON.stringify(r1));
  assert.match(r1.output, /^33 77$/m);
  await pyro.resizeTaskShell({ ...id, rows: 44, cols: 99 });
  await pyro.writeTaskShell({ ...id, input: "echo \"$(pwd) $V\"; stty size\n" });
  const r2 = await pyro.readTaskShell({ ...id, wait_for: "44 99", plain: true, timeout_ms: 30_000 });
  assert.match(r2.output, /^\/tmp vm$/m);
  await pyro.writeTaskShell({ ...id, input: "sleep 60\n" });
  await new Promise((r) => setTimeout(r, 1000));
  await pyro.signalTaskShell({ ...id, signal: "SIGINT" });
  await pyro.writeTaskShell({ ...id, input: "echo rc=$?\n" });
  assert.equal((await pyro.readTaskShell({ ...id, wait_for: "rc=130", timeout_ms: 30_000 })).reason, "pattern");
  await pyro.writeTaskShell({ ...id, input: "exit 4\n" });
  const last = await pyro.readTaskShell({ ...id, wait_idle_ms: 10_000, timeout_ms: 30_000 });
  assert.deepEqual([last.state, last.exit_code], ["exited", 4]);
  await pyro.closeTaskShell(id);
});

test("a service in a qemu task: a TCP probe and a port published on the host's 127.0.0.1, through the serial port", { skip, timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t, { driver: "qemu" });
  const task = await pyro.createTask({ environment: "busybox", mem_mib: 256 });
  await pyro.execTask({ task_id: task.task_id, command: "echo from-the-vm > /workspace/index.html" });
  const s = await pyro.startTaskService({
    task_id: task.task_id,
    name: "web",
    command: "exec busybox httpd -f -p 127.0.0.1:8080 -h /workspace",
    ready: { tcp_port: 8080 },
    ready_timeout_seconds: 120,
    publish: { port: 8080 },
  });
  assert.equal(s.published?.host, "127.0.0.1");
  const res = await fetch(`http://127.0.0.1:${s.published!.port}/index.html`);
  assert.equal(await res.text(), "from-the-vm\n");
  await pyro.stopTaskService({ task_id: task.task_id, name: "web" });
  await assert.rejects(fetch(`http://127.0.0.1:${s.published!.port}/index.html`));
});

test("kept channels through the vmm relay: a client that closes detaches its kept process (not killed), a second client attaches it; a shell outlives its SDK", { skip, timeout: 300_000 }, async (t) => {
  const { pyro, stateDir } = testPyro(t, { driver: "qemu" });
  const task = await pyro.createTask({ environment: "busybox", mem_mib: 256 });
  const { handle } = await pyro.tasks.running(task.task_id);
  const a = await AgentClient.connect(handle.socket, { timeoutMs: 30_000 });
  let first = "";
  const kept = a.exec({ argv: ["/bin/sh", "-c", "echo one; sleep 2; echo two-after-close; exec sleep 300"], env: { PATH: "/bin" }, cwd: "/", timeoutMs: 0, keep: "vmkept", onStdout: (c) => void (first += c.toString()) });
  assert.ok((await kept.opened) !== null);
  for (let i = 0; i < 100 && first !== "one\n"; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(first, "one\n");
  const plain = a.exec({ argv: ["/bin/sh", "-c", "exec sleep 300"], env: { PATH: "/bin" }, cwd: "/", timeoutMs: 0 });
  assert.ok((await plain.opened) !== null);
  kept.result.catch(() => undefined);
  plain.result.catch(() => undefined);
  a.close(); // the vmm sends DETACH for the kept one, KILL for the plain one
  const b = await AgentClient.connect(handle.socket, { timeoutMs: 30_000 });
  t.after(() => b.close());
  let listed = await b.listKept();
  for (let i = 0; i < 100 && !(listed.length === 1 && listed[0]!.state === "detached" && listed[0]!.ring_bytes >= "two-after-close\n".length); i++) {
    await new Promise((r) => setTimeout(r, 100));
    listed = await b.listKept();
  }
  assert.deepEqual(listed.map((e) => [e.key, e.state, e.ring_bytes]), [["vmkept", "detached", "two-after-close\n".length]]);
  let text = "";
  const again = b.attach("vmkept", { onStdout: (c) => void (text += c.toString()) });
  assert.ok((await again.opened) !== null);
  const againEnd = again.result.then(() => null, (e: unknown) => e);
  for (let i = 0; i < 100 && !text.includes("two-after-close"); i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(text, "two-after-close\n", "the output printed after the first client closed");
  // A takeover across two vmm clients: the old holder's channel ends with DETACHED.
  const c = await AgentClient.connect(handle.socket, { timeoutMs: 30_000 });
  t.after(() => c.close());
  const third = c.attach("vmkept");
  assert.ok((await third.opened) !== null);
  assert.ok(isDetachedError(await againEnd), "the old holder's channel ended with DETACHED");
  third.kill();
  assert.equal((await third.result).kind, "signaled");
  assert.deepEqual(await c.listKept(), []);

  // The same through the SDK: a shell outlives the Pyro that opened it.
  const sh = await pyro.openTaskShell({ task_id: task.task_id });
  const id = { task_id: task.task_id, shell_id: sh.shell_id };
  await pyro.writeTaskShell({ ...id, input: "cd /tmp; V=kept; (sleep 2; echo late-''line) &\n" });
  await pyro.close();
  await new Promise((r) => setTimeout(r, 3000));
  const next = new Pyro({ stateDir, driver: "qemu" });
  t.after(() => next.close());
  const r = await next.readTaskShell({ ...id, plain: true, wait_for: "late-line", timeout_ms: 30_000 });
  assert.equal(r.reason, "pattern");
  await next.writeTaskShell({ ...id, input: "echo \"$(pwd) $V\"\n" });
  assert.match((await next.readTaskShell({ ...id, plain: true, wait_for: "/tmp kept", timeout_ms: 30_000 })).output, /\/tmp kept/);
  await next.closeTaskShell(id);
  assert.deepEqual((await next.statusTask({ task_id: task.task_id })).shells, []);
});
