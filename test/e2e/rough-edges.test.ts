// The rough edges of issue 13, each on the surface a user met it on: the
// CLI's output, MCP results through the official client, SDK errors, the
// model-facing tool wrappers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { cliArgs, mcpFixture, stdioClient, textOf } from "../helpers/mcp.js";
import { testPyro } from "../helpers/sandbox.js";
import { PyroError } from "../../src/index.js";
import { pyroToolDefinitions } from "../../src/integrations/tools.js";

const ENV = "busybox";

function pyro(args: string[], env: NodeJS.ProcessEnv) {
  return spawnSync(process.execPath, cliArgs(args), { env: { ...env, PYRO_DAEMON: "0" }, encoding: "utf8" });
}

/** A hint a model can act on: no CLI command, no tool of a profile it was not given. */
function assertModelHint(text: string, has: readonly string[]) {
  assert.doesNotMatch(text, /`pyro |\bpyro (env|vm|task|doctor) /, `no CLI command in: ${text}`);
  for (const tool of ["vm_create", "vm_start", "vm_exec", "vm_list_environments", "vm_status", "vm_delete"]) {
    if (!has.includes(tool)) assert.ok(!text.includes(tool), `${tool} is not the caller's: ${text}`);
  }
}

test("a command that cannot start: pyro's own line on stderr, exec_error in the result, apart from the command's output", (t) => {
  const fx = mcpFixture(t);
  const r = pyro(["run", ENV, "--", "nosuchcmd", "arg"], fx.env);
  assert.equal(r.status, 127);
  assert.match(r.stderr, /^\[pyro\] cannot execute 'nosuchcmd': No such file or directory \(the command did not start\)$/m);
  // Even with --quiet: the summary line goes, the reason stays.
  const quiet = pyro(["run", "-q", ENV, "--", "nosuchcmd", "x"], fx.env);
  assert.match(quiet.stderr, /cannot execute 'nosuchcmd'/);
  const json = JSON.parse(pyro(["run", ENV, "--json", "--", "nosuchcmd", "x"], fx.env).stdout);
  assert.equal(json.exec_error, "cannot execute 'nosuchcmd': No such file or directory");
  assert.equal(json.stderr, "", "not mixed into the command's stderr");
  assert.equal(json.exit_code, 127);
  // A command that prints the same words is a command's output, and says nothing in exec_error.
  const mimic = JSON.parse(pyro(["run", ENV, "--json", "--", "sh", "-c", "echo \"cannot execute 'nosuchcmd': No such file or directory\" >&2; exit 127"], fx.env).stdout);
  assert.equal(mimic.exec_error, null);
  assert.match(mimic.stderr, /cannot execute/);
  assert.equal(mimic.exit_code, 127);
  // Not executable: 126, said too.
  const noexec = JSON.parse(pyro(["run", ENV, "--json", "--", "/etc/passwd", "x"], fx.env).stdout);
  assert.equal(noexec.exit_code, 126);
  assert.match(noexec.exec_error, /cannot execute '\/etc\/passwd': Permission denied/);
});

test("task exec: a missing command and a missing --cwd are said on stderr and kept in the journal", (t) => {
  const fx = mcpFixture(t);
  const id = pyro(["task", "create", ENV, "--id-only"], fx.env).stdout.trim();
  assert.match(id, /^task_/);
  const missing = pyro(["task", "exec", id, "--", "nosuchcmd", "a"], fx.env);
  assert.equal(missing.status, 127);
  assert.match(missing.stderr, /^\[pyro\] cannot execute 'nosuchcmd': No such file or directory \(the command did not start\)$/m);
  const cwd = pyro(["task", "exec", id, "--cwd", "/nope", "--", "pwd"], fx.env);
  assert.equal(cwd.status, 127);
  assert.match(cwd.stderr, /^\[pyro\] cannot change directory to '\/nope': No such file or directory \(the command did not start\)$/m);
  const logs = JSON.parse(pyro(["task", "logs", id, "--json"], fx.env).stdout);
  assert.deepEqual(
    logs.entries.map((e: any) => e.exec_error),
    ["cannot execute 'nosuchcmd': No such file or directory", "cannot change directory to '/nope': No such file or directory"],
  );
  assert.equal(pyro(["task", "delete", id], fx.env).status, 0);
});

test("CLI argument errors in the CLI's words; a command without --; did you mean", (t) => {
  const fx = mcpFixture(t);
  const mem = pyro(["run", ENV, "--mem-mib", "1", "--", "true"], fx.env);
  assert.equal(mem.status, 2);
  assert.equal(mem.stderr, "pyro: --mem-mib must be between 64 and 262144, got 1.\n  hint: See `pyro run --help` for every flag and its default.\n");
  const two = pyro(["task", "create", ENV, "--vcpu-count", "0", "--ttl-seconds", "1"], fx.env);
  assert.equal(two.status, 2);
  assert.match(two.stderr, /--vcpu-count must be between 1 and 64, got 0; --ttl-seconds must be between 10 and 2592000, got 1\./);
  assert.doesNotMatch(mem.stderr + two.stderr, /Too small|mem_mib|vcpu_count|expected number/);

  const bare = pyro(["run", ENV, "echo", "hi"], fx.env);
  assert.equal(bare.status, 0, bare.stderr);
  assert.equal(bare.stdout, "hi\n");
  const none = pyro(["run", "echo"], fx.env);
  assert.equal(none.status, 2);
  assert.match(none.stderr, /No command given \("echo" was taken as the environment\)\.\n  hint: Put the command after --/);

  const typo = pyro(["run", "debian12", "--", "true"], fx.env);
  assert.equal(typo.status, 2);
  assert.match(typo.stderr, /Unknown environment "debian12"\. Did you mean "debian:12"\?/);
  assert.match(pyro(["run", "busybx", "--", "true"], fx.env).stderr, /Did you mean "busybox"\?/);
  assert.doesNotMatch(pyro(["run", "zzzzzzzz", "--", "true"], fx.env).stderr, /Did you mean/);
});

test("MCP (task-core): argument errors in pyro's format, hints naming only the caller's tools, source_not_found, exec_error", async (t) => {
  const fx = mcpFixture(t);
  const { client } = await stdioClient(t, fx);
  const tools = (await client.listTools()).tools.map((x) => x.name);
  const call = async (name: string, args: Record<string, unknown>) => (await client.callTool({ name, arguments: args })) as CallToolResult;

  const range = await call("vm_run", { environment: ENV, command: "true", mem_mib: 1 });
  assert.equal(range.isError, true);
  assert.equal(textOf(range), "Error (invalid_argument): vm_run: Invalid arguments: mem_mib must be between 64 and 262144, got 1.\nHint: Check the argument names and ranges in the tool's input schema.");
  const unknown = await call("vm_run", { environment: ENV, command: "true", nonsense: 1 });
  assert.match(textOf(unknown), /^Error \(invalid_argument\): vm_run: Invalid arguments: unknown argument "nonsense"\./);
  const type = await call("task_exec", { task_id: 5, command: "true" });
  assert.match(textOf(type), /^Error \(invalid_argument\): task_exec: Invalid arguments: task_id: /);
  for (const r of [range, unknown, type]) assert.doesNotMatch(textOf(r), /-32602|Input validation error|MCP error/);

  const env = await call("vm_run", { environment: "debian12", command: "true" });
  assert.match(textOf(env), /^Error \(unknown_environment\): Unknown environment "debian12"\. Did you mean "debian:12"\?/);
  assertModelHint(textOf(env), tools);
  const task = await call("task_exec", { task_id: "task_000000000000", command: "true" });
  assert.match(textOf(task), /Hint: .*task_list/);
  assertModelHint(textOf(task), tools);

  const missing = await call("task_create", { environment: ENV, source_path: join(fx.root, "not-there") });
  assert.match(textOf(missing), /^Error \(source_not_found\): source_path ".*not-there" does not exist\./);
  const outside = await call("task_create", { environment: ENV, source_path: "/nonexistent-outside" });
  assert.match(textOf(outside), /^Error \(source_not_allowed\)/, "outside the roots: no oracle for what exists");

  const run = await call("vm_run", { environment: ENV, command: ["nosuchcmd"] });
  assert.ok(!run.isError);
  assert.equal((run.structuredContent as any).exec_error, "cannot execute 'nosuchcmd': No such file or directory");
  assert.match(textOf(run), /^exit 127 .*\nthe command did not start: cannot execute 'nosuchcmd': No such file or directory \(reported by pyro, not the command\)/);
});

test("SDK errors name SDK methods; the tool wrappers name only their own tools", async (t) => {
  const { pyro: sdk } = testPyro(t);
  const caught = async (p: Promise<unknown>) => p.then(() => assert.fail("should have thrown"), (e: unknown) => e as PyroError);
  const task = await caught(sdk.execTask({ task_id: "task_000000000000", command: "true" }));
  assert.equal(task.code, "unknown_task");
  assert.match(task.hint!, /listTasks\(\)/);
  const env = await caught(sdk.runInVm({ environment: "debian12", command: "true" }));
  assert.match(env.message, /Did you mean "debian:12"\?/);
  assert.match(env.hint!, /listEnvironments\(\)/);
  assert.match(env.hint!, /importEnvironment\(/);
  const vm = await caught(sdk.statusVm({ vm_id: "vm_000000000000" }));
  assert.match(vm.hint!, /listVms\(\)/);
  for (const e of [task, env, vm]) assert.doesNotMatch(e.hint!, /`pyro |pyro (task|vm|env) /, e.hint);
  const range = await caught(sdk.runInVm({ environment: ENV, command: "true", mem_mib: 1 }));
  assert.match(range.message, /mem_mib must be between 64 and 262144, got 1/);

  // vm_run alone: a model with one tool is told nothing about tools it lacks.
  const root = mcpFixture(t).root;
  const only = pyroToolDefinitions({ allowedSourceRoots: [root] });
  const bad = await caught(only.vm_run.execute({ environment: "debian12", command: "true" }));
  assertModelHint(`${bad.message}\n${bad.hint}`, ["vm_run"]);
  assert.ok(!/task_list/.test(bad.message), bad.message);
  const args = await caught(only.vm_run.execute({ environment: ENV, command: "true", timeout_seconds: 0 } as never));
  assert.match(args.message, /^Error \(invalid_argument\): vm_run: Invalid arguments: timeout_seconds must be between 1 and 86400, got 0\./);
  const withTasks = pyroToolDefinitions({ tasks: true, allowedSourceRoots: [root] });
  const gone = await caught(withTasks.task_status.execute({ task_id: "task_000000000000" }));
  assert.match(gone.message, /task_list shows the tasks/);
  assertModelHint(gone.message, Object.keys(withTasks));
});
