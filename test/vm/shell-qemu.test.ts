// Shells and services on the qemu driver under TCG: the PTY, RESIZE and the port relay cross the vmm relay
// and the virtio-serial port to the guest's agent, and behave as on the
// namespace driver (test/integration/shell.test.ts, which also checks what a
// killed holder leaves from the host's /proc, where a VM's processes do not show).
import { test } from "node:test";
import assert from "node:assert/strict";
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
