import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { cleanupState, processesMentioning } from "../helpers/sandbox.js";
import { BUILT_CLI, ROOT } from "../helpers/mcp.js";
import { callOutputs, functionCall, lastOutput, message, startResponsesServer } from "../helpers/responses-server.js";
import { pyroToolDefinitions } from "../../src/integrations/tools.js";

/**
 * Every program in examples/ runs here as a user runs it (`node --import tsx
 * examples/X.ts`, importing the package by its own name, i.e. the built
 * dist/), on the busybox environment, each with a state directory of its own.
 * The OpenAI examples talk to a local server that speaks the Responses API
 * wire format; only OPENAI_BASE_URL differs from a run against the real API.
 */

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function stateDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "pyro-examples-"));
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir: dir }), dir).catch(() => undefined);
  });
  return dir;
}

function runExample(file: string, env: Record<string, string>, timeoutMs = 60_000): Promise<Run> {
  assert.ok(existsSync(BUILT_CLI), "the examples import the built package: run `npm run build` first");
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", join("examples", file)], {
      cwd: ROOT,
      env: { ...process.env, PYRO_EXAMPLE_ENV: "busybox", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d));
    child.stderr.on("data", (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Nothing of the example is left: no task or VM records, no sandbox processes. */
function assertNothingLeft(dir: string): void {
  for (const kind of ["vms", "tasks"]) {
    const entries = existsSync(join(dir, kind)) ? readdirSync(join(dir, kind)) : [];
    assert.deepEqual(entries, [], `${kind} left in the state directory`);
  }
  assert.deepEqual(processesMentioning(dir), [], "sandbox processes left");
}

test("examples/sdk.ts: runInVm, then a task from a directory, pushed to, exec'd in, deleted", async (t) => {
  const dir = stateDir(t);
  const r = await runExample("sdk.ts", { PYRO_STATE_DIR: dir });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^runInVm: exit 0, isolation namespace\/namespace\nhello from vm-[0-9a-f]+\n0\n/);
  assert.match(r.stdout, /execTask #1: version 1\n/);
  assert.match(r.stdout, /pushTaskSync: 1 file\(s\), 1 replaced\n/);
  assert.match(r.stdout, /execTask #2: version 2, runs\.log has 1 line\(s\)\n/);
  assert.match(r.stdout, /deleteTask: task_[0-9a-f]+ deleted\n$/);
  assertNothingLeft(dir);
});

test("examples/mcp-client.ts: starts `pyro mcp serve`, lists tools, calls vm_run", async (t) => {
  const dir = stateDir(t);
  const r = await runExample("mcp-client.ts", { PYRO_STATE_DIR: dir });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^pyro-mcp \d+\.\d+\.\d+: vm_run\n/);
  assert.match(r.stdout, /exit 0 in \d+ ms \(namespace sandbox, vm_[0-9a-f]+\)\n--- stdout ---\nhello from the sandbox\nLinux \S+\n0\n/);
  assert.match(r.stdout, /exit_code 0, isolation namespace \(namespace\)\n$/);
  assertNothingLeft(dir);
});

test("examples/openai-responses-vm-run.ts: the Responses tool loop runs vm_run and returns the real output", async (t) => {
  const dir = stateDir(t);
  const command = "echo sandbox-ok; id -u; uname -s";
  const { baseURL, requests } = await startResponsesServer(t, [
    () => [functionCall("vm_run", { command })],
    (body) => {
      const out = lastOutput(body);
      return [message(`The sandbox said ${JSON.stringify(out.stdout)} (exit ${out.exit_code}).`)];
    },
  ]);
  const r = await runExample("openai-responses-vm-run.ts", {
    PYRO_STATE_DIR: dir,
    OPENAI_BASE_URL: baseURL,
    OPENAI_API_KEY: "sk-test-local",
    OPENAI_MODEL: "gpt-test",
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(requests.length, 2);

  // The first request: the model, the prompt and the vm_run function tool, described and shaped as the MCP tool is.
  const [first, second] = requests.map((q) => q.body);
  assert.equal(requests[0]!.headers.authorization, "Bearer sk-test-local");
  assert.equal(first.model, "gpt-test");
  assert.equal(first.input[0].role, "user");
  assert.equal(first.tools.length, 1);
  const vmRun = pyroToolDefinitions().vm_run;
  assert.deepEqual(first.tools[0], { type: "function", name: "vm_run", description: vmRun.description, parameters: vmRun.parameters, strict: false });
  assert.deepEqual(first.tools[0].parameters.required, ["command"]);
  assert.equal(first.tools[0].parameters.additionalProperties, false);

  // The second: the conversation so far plus the function_call_output carrying the real sandbox result.
  assert.ok(second.input.some((i: any) => i.type === "function_call" && i.name === "vm_run"), "the model's function_call is sent back");
  const outputs = callOutputs(second);
  assert.equal(outputs.length, 1);
  const call = second.input.find((i: any) => i.type === "function_call");
  assert.equal(outputs[0]!.call_id, call.call_id);
  const result = outputs[0]!.output;
  assert.equal(result.exit_code, 0);
  assert.equal(result.stdout, "sandbox-ok\n0\nLinux\n");
  assert.equal(result.timed_out, false);
  assert.deepEqual(result.isolation, { driver: "namespace", kind: "namespace", accel: null });
  assert.match(result.vm_id, /^vm_[0-9a-f]+$/);

  assert.equal(r.stdout, `The sandbox said ${JSON.stringify("sandbox-ok\n0\nLinux\n")} (exit 0).\n`);
  assertNothingLeft(dir);
});

test("examples/openai-responses-vm-run.ts: a pyro error goes back to the model as the tool's output", async (t) => {
  const dir = stateDir(t);
  const { baseURL, requests } = await startResponsesServer(t, [
    () => [functionCall("vm_run", { command: "true", environment: "no-such-env" })],
    (body) => [message(`error: ${lastOutput(body).error.code}`)],
  ]);
  const r = await runExample("openai-responses-vm-run.ts", { PYRO_STATE_DIR: dir, OPENAI_BASE_URL: baseURL, OPENAI_API_KEY: "sk-test-local" });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(requests[0]!.body.model, "gpt-5", "the default model");
  const out = lastOutput(requests[1]!.body);
  assert.equal(out.error.code, "unknown_environment");
  assert.match(out.error.message, /no-such-env/);
  assert.equal(r.stdout, "error: unknown_environment\n");
});

test("examples/openai-responses-task.ts: task_create, task_exec, (host edit), task_sync_push, task_exec, then the task is deleted", async (t) => {
  const dir = stateDir(t);
  let project = "";
  let taskId = "";
  const { baseURL, requests } = await startResponsesServer(t, [
    // Turn 1: create a task from the project the prompt names, run the tests.
    (body) => {
      project = /My project is in (\S+) on this machine/.exec(body.input[0].content)?.[1] ?? "";
      return [functionCall("task_create", { source_path: project })];
    },
    (body) => {
      taskId = lastOutput(body).task_id;
      return [functionCall("task_exec", { task_id: taskId, command: "sh test.sh" })];
    },
    (body) => [message(`Tests: ${lastOutput(body).stdout.trim()}`)],
    // Turn 2 (after the host-side fix): push, rerun.
    () => [functionCall("task_sync_push", { task_id: taskId, source_path: project })],
    () => [functionCall("task_exec", { task_id: taskId, command: "sh test.sh" })],
    (body) => [message(`Tests: ${lastOutput(body).stdout.trim()}`)],
  ]);
  const r = await runExample("openai-responses-task.ts", {
    PYRO_STATE_DIR: dir,
    OPENAI_BASE_URL: baseURL,
    OPENAI_API_KEY: "sk-test-local",
    OPENAI_MODEL: "gpt-test",
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(requests.length, 6);
  assert.match(project, /pyro-example-project-/);

  // The three function tools, as the MCP server describes them (source roots: the project).
  const defs = pyroToolDefinitions({ tasks: true, allowedSourceRoots: [project] });
  assert.deepEqual(
    requests[0]!.body.tools.map((x: any) => [x.name, x.description]),
    [defs.task_create, defs.task_sync_push, defs.task_exec].map((d) => [d.name, d.description]),
  );

  const created = lastOutput(requests[1]!.body);
  assert.match(created.task_id, /^task_[0-9a-f]+$/);
  assert.equal(created.environment, "busybox", "PYRO_EXAMPLE_ENV is the default environment");
  assert.equal(created.seed.kind, "directory");
  assert.equal(created.seed.file_count, 2);
  assert.deepEqual(created.isolation, { driver: "namespace", kind: "namespace", accel: null });

  const failing = lastOutput(requests[2]!.body);
  assert.equal(failing.exit_code, 1);
  assert.equal(failing.sequence, 1);
  assert.equal(failing.stdout, "FAIL: expected 'Hello, world!', got 'Helo, world!'\n");

  // The second turn is a new user message on the same conversation.
  const turn2 = requests[3]!.body.input;
  assert.match(turn2[turn2.length - 1].content, /I fixed greet\.sh on the host/);

  const pushed = lastOutput(requests[4]!.body);
  assert.equal(pushed.task_id, taskId);
  assert.equal(pushed.replaced, 2);
  assert.equal(pushed.dest, "/workspace");

  const passing = lastOutput(requests[5]!.body);
  assert.equal(passing.exit_code, 0);
  assert.equal(passing.sequence, 2);
  assert.equal(passing.stdout, "PASS: Hello, world!\n");

  assert.equal(r.stdout, "Tests: FAIL: expected 'Hello, world!', got 'Helo, world!'\nTests: PASS: Hello, world!\n");
  assert.ok(!existsSync(project), "the example removes its project directory");
  assertNothingLeft(dir);
});

test("the examples resolve pyro-mcp by its own name, through package.json exports", async () => {
  const { createRequire } = await import("node:module");
  const require = createRequire(join(ROOT, "examples", "x.js"));
  assert.equal(require.resolve("pyro-mcp/package.json"), join(ROOT, "package.json"));
  for (const [spec, file] of [
    ["pyro-mcp", "dist/index.js"],
    ["pyro-mcp/tools", "dist/tools.js"],
    ["pyro-mcp/ai-sdk", "dist/ai-sdk.js"],
    ["pyro-mcp/langchain", "dist/langchain.js"],
  ] as const) {
    const url = import.meta.resolve(spec);
    assert.equal(new URL(url).pathname, join(ROOT, file), spec);
  }
  // The built subpath entries load with their peers and expose the wrappers.
  const ai = await import("pyro-mcp/ai-sdk");
  const lc = await import("pyro-mcp/langchain");
  assert.deepEqual(Object.keys(ai.pyroTools()), ["vm_run"]);
  assert.deepEqual(lc.pyroTools().map((x) => x.name), ["vm_run"]);
});
