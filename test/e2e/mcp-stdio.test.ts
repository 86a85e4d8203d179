import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { waitFor } from "../helpers/sandbox.js";
import { pidExists } from "../../src/util/proc.js";
import { cliArgs, exited, mcpFixture, sandboxProcesses, spawnBuiltCli, stdioClient, textOf } from "../helpers/mcp.js";

/** The MCP server over stdio, driven by the official MCP client SDK through the built CLI. */

const ENV = "busybox";

function structured<T = Record<string, any>>(r: unknown): T {
  const result = r as CallToolResult;
  assert.ok(!result.isError, `tool error: ${textOf(result)}`);
  return result.structuredContent as T;
}

function dirEntries(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

test("tools per profile: vm-run, task-core (the default), task-full, full", async (t) => {
  const fx = mcpFixture(t);
  const expect: Record<string, string[]> = {
    "vm-run": ["vm_run"],
    "": ["task_create", "task_delete", "task_exec", "task_list", "task_logs", "task_status", "task_sync_push", "vm_run"],
    "task-full": ["task_create", "task_delete", "task_diff", "task_exec", "task_export", "task_file_list", "task_file_read", "task_file_write", "task_list", "task_logs", "task_patch_apply", "task_service_list", "task_service_logs", "task_service_start", "task_service_status", "task_service_stop", "task_shell_close", "task_shell_open", "task_shell_read", "task_shell_resize", "task_shell_signal", "task_shell_write", "task_status", "task_sync_push", "vm_run"],
    full: ["task_create", "task_delete", "task_diff", "task_exec", "task_export", "task_file_list", "task_file_read", "task_file_write", "task_list", "task_logs", "task_patch_apply", "task_service_list", "task_service_logs", "task_service_start", "task_service_status", "task_service_stop", "task_shell_close", "task_shell_open", "task_shell_read", "task_shell_resize", "task_shell_signal", "task_shell_write", "task_status", "task_sync_push", "vm_create", "vm_delete", "vm_exec", "vm_list_environments", "vm_network_info", "vm_reap_expired", "vm_run", "vm_start", "vm_status", "vm_stop"],
  };
  await Promise.all(
    Object.entries(expect).map(async ([profile, names]) => {
      const { client } = await stdioClient(t, fx, profile ? ["--profile", profile] : []);
      const { tools } = await client.listTools();
      assert.deepEqual(tools.map((x) => x.name).sort(), names, profile || "default");
      assert.equal(client.getServerVersion()?.name, "pyro-mcp");
      assert.match(client.getInstructions() ?? "", /vm_run/);
    }),
  );
  const { spawnSync } = await import("node:child_process");
  const bad = spawnSync(process.execPath, cliArgs(["mcp", "serve", "--profile", "everything"]), { encoding: "utf8", env: fx.env, input: "" });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /Unknown MCP profile "everything"[\s\S]*vm-run, task-core, task-full, full/);
});

test("vm_run, the task loop, progress, cancellation, errors and concurrency over one stdio connection", async (t) => {
  const fx = mcpFixture(t);
  const { client } = await stdioClient(t, fx);

  await t.test("vm_run on busybox", async () => {
    const r = await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo hello; echo oops >&2; exit 3" } });
    const s = structured(r);
    assert.equal(s.exit_code, 3);
    assert.equal(s.stdout, "hello\n");
    assert.equal(s.stderr, "oops\n");
    assert.equal(s.timed_out, false);
    assert.equal(s.isolation.driver, "namespace");
    assert.match(textOf(r), /^exit 3 in \d+ ms \(namespace sandbox, vm_[0-9a-f]+\)\n--- stdout ---\nhello\n\n--- stderr ---\noops\n$/);
    const argv = structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: ["echo", "a b", "$HOME"] } }));
    assert.equal(argv.stdout, "a b $HOME\n");
    const timeout = structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "sleep 30", timeout_seconds: 1 } }));
    assert.equal(timeout.exit_code, 124);
    assert.equal(timeout.timed_out, true);
  });

  await t.test("output is capped at 64 KiB per stream, head and tail kept", async () => {
    const s = structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo FIRST; head -c 300000 /dev/zero | tr '\\0' x; echo; echo LAST" } }));
    assert.equal(s.stdout_truncated, true);
    assert.ok(Buffer.byteLength(s.stdout) <= 64 * 1024 + 200, `stdout is ${Buffer.byteLength(s.stdout)} bytes`);
    assert.match(s.stdout, /^FIRST\n/);
    assert.match(s.stdout, /LAST\n$/);
  });

  await t.test("the task loop: create from a directory, push, exec, logs, delete", async () => {
    const repo = join(fx.root, "repo");
    mkdirSync(join(repo, "src"), { recursive: true });
    writeFileSync(join(repo, "README.md"), "version 1\n");
    writeFileSync(join(repo, "src", "main.sh"), "echo main\n");
    const phases: string[] = [];
    const created = structured(
      await client.callTool({ name: "task_create", arguments: { environment: ENV, source_path: "repo", name: "e2e" } }, undefined, { onprogress: (p) => phases.push(p.message ?? "") }),
    );
    assert.match(phases.join("\n"), /task: creating and seeding \/workspace from repo/);
    const task_id = created.task_id as string;
    assert.match(task_id, /^task_[0-9a-f]+$/);
    assert.equal(created.seed.kind, "directory");
    assert.ok(created.seed.file_count >= 2, `seeded ${created.seed.file_count} entries`);
    const first = structured(await client.callTool({ name: "task_exec", arguments: { task_id, command: "cat README.md; pwd; echo note > notes.txt" } }));
    assert.equal(first.stdout, "version 1\n/workspace\n");
    assert.equal(first.sequence, 1);

    writeFileSync(join(repo, "README.md"), "version 2\n");
    const push = await client.callTool({ name: "task_sync_push", arguments: { task_id, source_path: repo } });
    assert.ok(structured(push).replaced >= 1, JSON.stringify(push.structuredContent));
    assert.match(textOf(push), /^pushed \d+ file\(s\), .* into \/workspace of task_/);

    const second = structured(await client.callTool({ name: "task_exec", arguments: { task_id, command: "cat README.md notes.txt", env: { X: "1" } } }));
    assert.equal(second.stdout, "version 2\nnote\n");
    assert.equal(second.sequence, 2);

    const logs = structured(await client.callTool({ name: "task_logs", arguments: { task_id } }));
    assert.deepEqual(
      logs.entries.map((e: any) => [e.sequence, e.exit_code, e.stdout]),
      [
        [1, 0, "version 1\n/workspace\n"],
        [2, 0, "version 2\nnote\n"],
      ],
    );
    const tail = structured(await client.callTool({ name: "task_logs", arguments: { task_id, tail: 1 } }));
    assert.equal(tail.entries.length, 1);

    const status = structured(await client.callTool({ name: "task_status", arguments: { task_id } }));
    assert.equal(status.exec_count, 2);
    assert.equal(status.push_count, 1);
    const list = structured(await client.callTool({ name: "task_list", arguments: {} }));
    assert.deepEqual(list.tasks.map((x: any) => x.task_id), [task_id]);
    assert.deepEqual(structured(await client.callTool({ name: "task_delete", arguments: { task_id } })), { task_id, deleted: true });
    assert.deepEqual(structured(await client.callTool({ name: "task_list", arguments: {} })).tasks, []);
  });

  await t.test("progress notifications carry a long command's output", async () => {
    const updates: Array<{ progress: number; message?: string }> = [];
    const r = await client.callTool(
      { name: "vm_run", arguments: { environment: ENV, command: "for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.25; done" } },
      undefined,
      { onprogress: (p) => updates.push(p) },
    );
    assert.equal(structured(r).stdout.split("\n").length, 9);
    assert.ok(updates.length >= 2, `progress notifications: ${JSON.stringify(updates)}`);
    for (let i = 1; i < updates.length; i++) assert.ok(updates[i]!.progress > updates[i - 1]!.progress, "progress increases");
    assert.match(updates.map((u) => u.message).join(""), /\[stdout\] tick 1\n[\s\S]*tick [5-8]/);
  });

  await t.test("cancellation kills the command and removes its sandbox", async () => {
    const before = sandboxProcesses(fx.stateDir).length;
    const controller = new AbortController();
    const started = Date.now();
    let abortedAt = 0;
    const call = client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo started; sleep 30" } }, undefined, {
      signal: controller.signal,
      onprogress: (p) => {
        if (/started/.test(p.message ?? "") && !abortedAt) {
          abortedAt = Date.now();
          controller.abort();
        }
      },
    });
    await assert.rejects(call, /abort/i);
    assert.ok(abortedAt > 0, "the command had started");
    assert.ok(Date.now() - started < 10_000);
    await waitFor(() => sandboxProcesses(fx.stateDir).length <= before, 10_000, "the sandbox to be killed");
    await waitFor(() => dirEntries(join(fx.stateDir, "vms")).length === 0, 10_000, "the ephemeral VM to be deleted");
    // The server is still serving.
    assert.equal(structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo alive" } })).stdout, "alive\n");
  });

  await t.test("wrong calls are tool errors and the server keeps serving", async () => {
    const tasksBefore = structured(await client.callTool({ name: "task_list", arguments: {} })).tasks.length;
    const unknown = await client.callTool({ name: "vm_launch", arguments: {} });
    assert.equal(unknown.isError, true); // the v1 SDK wraps its InvalidParams error into a tool error
    assert.match(textOf(unknown), /Tool vm_launch not found/);
    const bad = await client.callTool({ name: "vm_run", arguments: { command: "" } });
    assert.equal(bad.isError, true);
    assert.match(textOf(bad), /^Error \(invalid_argument\): vm_run: Invalid arguments: command/);
    const noTask = await client.callTool({ name: "task_exec", arguments: { task_id: "task_0123456789ab", command: "true" } });
    assert.equal(noTask.isError, true);
    assert.match(textOf(noTask), /^Error \(unknown_task\): No task with id task_0123456789ab\.\nHint: /);
    const outside = await client.callTool({ name: "task_create", arguments: { environment: ENV, source_path: "/etc" } });
    assert.equal(outside.isError, true);
    assert.match(textOf(outside), /source_not_allowed[\s\S]*outside the allowed roots[\s\S]*--allow-source-root/);
    const escape = await client.callTool({ name: "task_create", arguments: { environment: ENV, source_path: "../.." } });
    assert.equal(escape.isError, true);
    assert.match(textOf(escape), /outside the allowed roots/);
    assert.equal(structured(await client.callTool({ name: "task_list", arguments: {} })).tasks.length, tasksBefore, "a refused source made nothing");
    assert.equal(structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo ok" } })).stdout, "ok\n");
  });

  await t.test("20 concurrent vm_run calls all complete correctly", async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => client.callTool({ name: "vm_run", arguments: { environment: ENV, command: `echo call-${i}; sleep 0.2` } }, undefined, { timeout: 60_000 })),
    );
    results.forEach((r, i) => {
      const s = structured(r);
      assert.equal(s.exit_code, 0, textOf(r));
      assert.equal(s.stdout, `call-${i}\n`);
    });
    await waitFor(() => dirEntries(join(fx.stateDir, "vms")).length === 0, 10_000, "every ephemeral VM to be deleted");
  });
});

test("malformed JSON-RPC on stdin is answered with a protocol error and the server keeps serving", async (t) => {
  const fx = mcpFixture(t);
  const child = spawnBuiltCli(["mcp", "serve", "--profile", "vm-run", "--allow-source-root", fx.root], { env: fx.env, cwd: fx.root });
  t.after(() => child.kill("SIGKILL"));
  const lines: any[] = [];
  let buf = "";
  child.stdout!.on("data", (c: Buffer) => {
    buf += c.toString();
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
    }
  });
  child.stdin!.write("this is not json\n");
  const parseError = await waitFor(() => lines[0], 10_000, "a parse error");
  assert.deepEqual({ id: parseError.id, code: parseError.error.code }, { id: null, code: -32700 });
  child.stdin!.write(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "0" } } }) + "\n");
  const init = await waitFor(() => lines.find((l) => l.id === 1), 10_000, "the initialize result");
  assert.equal(init.result.serverInfo.name, "pyro-mcp");
  child.stdin!.write(JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) + "\n");
  child.stdin!.write('{"jsonrpc":"2.0","id":2,"method":\n');
  child.stdin!.write('{"jsonrpc": "1.0", "id": 3}\n');
  child.stdin!.write(JSON.stringify({ jsonrpc: "2.0", id: 4, method: "no/such/method" }) + "\n");
  child.stdin!.write(JSON.stringify({ jsonrpc: "2.0", id: 5, method: "tools/call", params: { name: "vm_run", arguments: { environment: ENV, command: "echo raw" } } }) + "\n");
  const five = await waitFor(() => lines.find((l) => l.id === 5), 20_000, "the tool result");
  assert.equal(five.result.structuredContent.stdout, "raw\n");
  const errors = lines.filter((l) => l.error).map((l) => [l.id, l.error.code]);
  assert.deepEqual(errors, [
    [null, -32700],
    [null, -32700],
    [3, -32600],
    [4, -32601],
  ]);
  child.stdin!.end();
  const { code } = await exited(child);
  assert.equal(code, 0, "stdin closed: a clean exit");
});

test("on stdin close the server deletes the VMs it created and leaves tasks intact", async (t) => {
  const fx = mcpFixture(t);
  const { client, transport } = await stdioClient(t, fx, ["--profile", "full"]);
  const vm = structured(await client.callTool({ name: "vm_create", arguments: { environment: ENV } }));
  const started = structured(await client.callTool({ name: "vm_start", arguments: { vm_id: vm.vm_id } }));
  assert.equal(started.state, "started");
  assert.equal(structured(await client.callTool({ name: "vm_status", arguments: { vm_id: vm.vm_id } })).running, true);
  const net = structured(await client.callTool({ name: "vm_network_info", arguments: { vm_id: vm.vm_id } }));
  assert.equal(net.network.enabled, false);
  const other = structured(await client.callTool({ name: "vm_create", arguments: { environment: ENV } }));
  const exec = structured(await client.callTool({ name: "vm_exec", arguments: { vm_id: other.vm_id, command: "echo once" } }));
  assert.equal(exec.stdout, "once\n");
  const gone = await client.callTool({ name: "vm_status", arguments: { vm_id: other.vm_id } });
  assert.equal(gone.isError, true, "vm_exec deleted its VM");
  assert.match(textOf(gone), /unknown_vm/);
  const task = structured(await client.callTool({ name: "task_create", arguments: { environment: ENV } }));
  assert.ok(sandboxProcesses(fx.stateDir).length >= 1);
  const pid = transport.pid;
  assert.ok(pid);
  await client.close(); // closes the server's stdin
  await waitFor(
    () => {
      try {
        process.kill(pid!, 0);
        return false;
      } catch {
        return true;
      }
    },
    15_000,
    "the server to exit",
  );
  assert.deepEqual(dirEntries(join(fx.stateDir, "vms")), [], "the server's VM was deleted");
  assert.deepEqual(dirEntries(join(fx.stateDir, "tasks")), [task.task_id], "the task was left intact");
});

test("SIGTERM aborts running calls, deletes the server's VMs and exits", async (t) => {
  const fx = mcpFixture(t);
  const { client, transport } = await stdioClient(t, fx, ["--profile", "full"]);
  const vm = structured(await client.callTool({ name: "vm_create", arguments: { environment: ENV } }));
  await client.callTool({ name: "vm_start", arguments: { vm_id: vm.vm_id } });
  let sawStart = false;
  const running = client
    .callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo started; sleep 30" } }, undefined, { onprogress: () => (sawStart = true) })
    .catch((e: Error) => e);
  await waitFor(() => sawStart, 10_000, "the long command to start");
  assert.ok(dirEntries(join(fx.stateDir, "vms")).length === 2);
  const pid = transport.pid!;
  const t0 = Date.now();
  process.kill(pid, "SIGTERM");
  const outcome = await running;
  // The call ends at once: a cancelled tool error if the answer got out before the server exited, else a closed connection.
  assert.ok(outcome instanceof Error || ((outcome as CallToolResult).isError && /cancelled/.test(textOf(outcome))), JSON.stringify(outcome));
  await waitFor(() => !pidExists(pid), 15_000, "the server to exit");
  assert.ok(Date.now() - t0 < 10_000, "shut down promptly");
  assert.deepEqual(dirEntries(join(fx.stateDir, "vms")), []);
  await waitFor(() => sandboxProcesses(fx.stateDir).length === 0, 5_000, "no sandbox left");
});

test("16+ concurrent calls over stdio: no abort-listener warning, and SIGTERM still aborts every one", async (t) => {
  const fx = mcpFixture(t);
  const { client, transport, stderr } = await stdioClient(t, fx);
  const N = 20;
  for (let round = 0; round < 2; round++) {
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        client.callTool({ name: "vm_run", arguments: { environment: ENV, command: `echo call-${i}; sleep 0.3` } }, undefined, round ? { onprogress: () => undefined } : undefined),
      ),
    );
    results.forEach((r, i) => assert.equal(structured(r).stdout, `call-${i}\n`));
  }
  // 16 calls running at once when the server is told to stop: each is aborted, none waits out its command.
  const started = new Set<number>();
  const running = Array.from({ length: 16 }, (_, i) =>
    client
      .callTool({ name: "vm_run", arguments: { environment: ENV, command: "echo started; sleep 60" } }, undefined, { onprogress: () => void started.add(i), timeout: 120_000 })
      .catch((e: Error) => e),
  );
  await waitFor(() => started.size === 16, 30_000, "16 long commands to start");
  const pid = transport.pid!;
  const t0 = Date.now();
  process.kill(pid, "SIGTERM");
  for (const outcome of await Promise.all(running)) {
    assert.ok(outcome instanceof Error || ((outcome as CallToolResult).isError && /cancelled/.test(textOf(outcome))), JSON.stringify(outcome));
  }
  await waitFor(() => !pidExists(pid), 15_000, "the server to exit");
  assert.ok(Date.now() - t0 < 10_000, `shut down promptly (${Date.now() - t0} ms)`);
  await waitFor(() => sandboxProcesses(fx.stateDir).length === 0, 10_000, "no sandbox left");
  assert.deepEqual(dirEntries(join(fx.stateDir, "vms")), []);
  assert.doesNotMatch(stderr(), /MaxListenersExceededWarning|memory leak/);
  assert.match(stderr(), /serving 8 tools on stdio/, "the server's stderr was captured");
});

test("a PYRO_MCP_TOKEN in the stdio server's environment does not reach its sandboxes", async (t) => {
  const fx = mcpFixture(t);
  const token = "stdio-env-token-0123456789abcdef";
  const { client } = await stdioClient(t, { ...fx, env: { ...fx.env, PYRO_MCP_TOKEN: token } });
  // Its pid 1's environment is out of reach (not dumpable); its own holds what the call named, and no token.
  const s = structured(await client.callTool({ name: "vm_run", arguments: { environment: ENV, command: "tr '\\0' '\\n' < /proc/1/environ; env" } }));
  assert.match(s.stderr, /Permission denied/, "pid 1's environment is out of reach");
  assert.match(s.stdout, /^PATH=/m, "the command's own environment was read");
  assert.ok(!s.stdout.includes(token) && !s.stdout.includes("PYRO_MCP_TOKEN"), s.stdout);
});

test("a server started in / with no --allow-source-root says at start that source_path may name any host directory", async (t) => {
  const fx = mcpFixture(t);
  const startLog = async (cwd: string): Promise<string> => {
    const child = spawnBuiltCli(["mcp", "serve", "--profile", "vm-run"], { env: fx.env, cwd });
    t.after(() => child.kill("SIGKILL"));
    let err = "";
    child.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    await waitFor(() => /serving \d+ tools? on stdio/.test(err), 20_000, `the server in ${cwd} to serve`);
    child.stdin!.end();
    await exited(child);
    return err;
  };
  const atRoot = await startLog("/");
  assert.match(atRoot, /source roots: \/\)/);
  assert.match(atRoot, /warning: source_path and task_export may name any host directory: this server started in \/ [\s\S]*--allow-source-root DIR/);
  // Where it starts in a directory of its own, the root is that directory and nothing is said.
  const inProject = await startLog(fx.root);
  assert.doesNotMatch(inProject, /warning: source_path/);
});
