import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateText, stepCountIs, type Tool, type ToolSet } from "ai";
import { MockLanguageModelV3 } from "ai/test";
import { ToolMessage } from "@langchain/core/messages";
import { pyroTools as aiSdkTools } from "../../src/integrations/ai-sdk.js";
import { pyroTool, pyroTools as langchainTools } from "../../src/integrations/langchain.js";
import { pyroToolDefinitions } from "../../src/integrations/tools.js";
import { toolSpecs } from "../../src/mcp/tools.js";
import { PyroError } from "../../src/index.js";
import { testPyro } from "../helpers/sandbox.js";

/**
 * The framework wrappers, each driven through its framework's own API
 * (`tool.execute(input, options)` and `generateText` for the Vercel AI SDK,
 * `tool.invoke(...)` for LangChain), running real sandboxes on busybox.
 */

const ENV = "busybox";
const callOptions = (id = "call_1") => ({ toolCallId: id, messages: [] });

/** Calls an AI SDK tool's execute as the AI SDK does, awaiting its (non-streaming) result. */
async function execute<I, O>(tool: Tool<I, O>, input: I, options: { abortSignal?: AbortSignal } = {}): Promise<O> {
  return (await tool.execute!(input, { ...callOptions(), ...options })) as O;
}

function sourceRoot(t: import("node:test").TestContext): string {
  const root = mkdtempSync(join(tmpdir(), "pyro-wrappers-"));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  return root;
}

test("the neutral definitions are the MCP tools: same names, descriptions and input schemas", () => {
  const roots = ["/srv/repos"];
  const specs = new Map(toolSpecs({ allowedSourceRoots: roots }).map((s) => [s.name, s]));
  const narrow = pyroToolDefinitions({ allowedSourceRoots: roots });
  assert.deepEqual(Object.keys(narrow), ["vm_run"], "vm_run alone by default");
  const all = pyroToolDefinitions({ tasks: true, allowedSourceRoots: roots });
  assert.deepEqual(Object.keys(all), ["vm_run", "task_create", "task_sync_push", "task_exec", "task_status", "task_logs", "task_list", "task_delete"]);
  for (const def of Object.values(all)) {
    const spec = specs.get(def!.name as never)!;
    assert.equal(def!.description, spec.description, def!.name);
    assert.equal(def!.inputSchema, spec.inputSchema, def!.name);
  }
  assert.match(all.task_create.description, /\/srv\/repos/, "the allowed roots are in the description");
  const params = all.vm_run.parameters as { properties: Record<string, unknown>; required: string[]; $schema?: string };
  assert.deepEqual(Object.keys(params.properties).sort(), ["command", "disk_mib", "environment", "mem_mib", "network", "timeout_seconds", "vcpu_count"]);
  assert.deepEqual(params.required, ["command"]);
  assert.equal(params.$schema, undefined);
});

test("AI SDK: pyroTools() is { vm_run } and tools.vm_run.execute runs a real sandbox", async (t) => {
  const { pyro } = testPyro(t);
  const tools = aiSdkTools({ pyro });
  assert.deepEqual(Object.keys(tools), ["vm_run"]);
  assert.equal(tools.vm_run.description, pyroToolDefinitions().vm_run.description);
  const r = await execute(tools.vm_run, { environment: ENV, command: "echo from-ai-sdk; id -u; exit 3" });
  assert.equal(r.exit_code, 3);
  assert.equal(r.stdout, "from-ai-sdk\n0\n");
  assert.deepEqual(r.isolation, { driver: "namespace", kind: "namespace", accel: null });
  assert.equal((await pyro.listVms()).vms.length, 0, "the ephemeral VM is gone");

  // Output is capped as in MCP results (64 KiB per stream, head and tail kept).
  const big = await execute(tools.vm_run, { environment: ENV, command: "echo HEAD; head -c 200000 /dev/zero | tr '\\0' x; echo; echo TAIL" });
  assert.equal(big.stdout_truncated, true);
  assert.ok(Buffer.byteLength(big.stdout) <= 64 * 1024 + 200);
  assert.match(big.stdout, /^HEAD\n[\s\S]*TAIL\n$/);

  // An abort signal from the AI SDK kills the command and removes the sandbox.
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 300);
  await assert.rejects(execute(tools.vm_run, { environment: ENV, command: "sleep 30" }, { abortSignal: controller.signal }), (e: unknown) => {
    assert.ok(e instanceof PyroError);
    assert.equal(e.code, "cancelled");
    return true;
  });
  assert.equal((await pyro.listVms()).vms.length, 0);
});

test("AI SDK: generateText runs vm_run from a model's tool call and feeds the result back", async (t) => {
  const { pyro } = testPyro(t);
  const prompts: unknown[] = [];
  let call = 0;
  const usage = { inputTokens: { total: 1, noCache: 1, cacheRead: 0, cacheWrite: 0 }, outputTokens: { total: 1, text: 1, reasoning: 0 } };
  const model = new MockLanguageModelV3({
    doGenerate: async (options) => {
      prompts.push(options.prompt);
      call++;
      if (call === 1) {
        assert.deepEqual(options.tools?.map((x) => x.name), ["vm_run"]);
        return {
          content: [{ type: "tool-call", toolCallId: "tc1", toolName: "vm_run", input: JSON.stringify({ environment: ENV, command: "echo generated; uname -s" }) }],
          finishReason: { unified: "tool-calls", raw: "tool_calls" },
          usage,
          warnings: [],
        };
      }
      return { content: [{ type: "text", text: "done" }], finishReason: { unified: "stop", raw: "stop" }, usage, warnings: [] };
    },
  });
  // Every form of pyroTools() is a ToolSet for the AI SDK's types.
  const flag: boolean = call < 0;
  const typed: ToolSet[] = [aiSdkTools(), aiSdkTools({ tasks: true }), aiSdkTools({ tasks: flag })];
  assert.equal(typed.length, 3);
  const result = await generateText({ model, tools: aiSdkTools({ pyro }), stopWhen: stepCountIs(3), prompt: "Run something." });
  assert.equal(result.text, "done");
  assert.equal(result.steps.length, 2);
  const toolResult = result.steps[0]!.toolResults[0]!;
  assert.equal(toolResult.toolName, "vm_run");
  const output = toolResult.output as { exit_code: number; stdout: string };
  assert.equal(output.exit_code, 0);
  assert.equal(output.stdout, "generated\nLinux\n");
  // The second model call saw the tool result.
  assert.match(JSON.stringify(prompts[1]), /"stdout":"generated\\nLinux\\n"/);
});

test("AI SDK: the task tools are opt-in and run the whole loop; pyro failures are errors with a hint", async (t) => {
  const { pyro } = testPyro(t);
  const root = sourceRoot(t);
  const repo = join(root, "repo");
  mkdirSync(repo);
  writeFileSync(join(repo, "a.txt"), "one\n");
  const tools = aiSdkTools({ pyro, tasks: true, allowedSourceRoots: [root] });
  assert.deepEqual(Object.keys(tools), ["vm_run", "task_create", "task_sync_push", "task_exec", "task_status", "task_logs", "task_list", "task_delete"]);

  const created = await execute(tools.task_create, { environment: ENV, source_path: "repo" });
  assert.equal(created.seed.file_count, 1);
  const e1 = await execute(tools.task_exec, { task_id: created.task_id, command: "cat a.txt; echo made > b.txt" });
  assert.equal(e1.stdout, "one\n");
  writeFileSync(join(repo, "a.txt"), "two\n");
  const pushed = await execute(tools.task_sync_push, { task_id: created.task_id, source_path: repo });
  assert.equal(pushed.replaced, 1);
  const e2 = await execute(tools.task_exec, { task_id: created.task_id, command: ["sh", "-c", "cat a.txt b.txt"] });
  assert.equal(e2.stdout, "two\nmade\n");
  const logs = await execute(tools.task_logs, { task_id: created.task_id });
  assert.equal(logs.entries.length, 2);
  assert.equal((await execute(tools.task_list, {})).tasks.length, 1);

  // A source_path outside the allowed roots is refused before anything is made, with a hint a model can act on.
  await assert.rejects(execute(tools.task_create, { environment: ENV, source_path: "/etc" }), (e: unknown) => {
    assert.ok(e instanceof PyroError);
    assert.equal(e.code, "source_not_allowed");
    assert.match(e.message, /outside the allowed roots[\s\S]*\nHint: /);
    return true;
  });
  assert.equal((await pyro.listTasks()).tasks.length, 1);

  assert.deepEqual(await execute(tools.task_delete, { task_id: created.task_id }), { task_id: created.task_id, deleted: true });
  await assert.rejects(execute(tools.task_status, { task_id: created.task_id }), (e: unknown) => {
    assert.ok(e instanceof PyroError);
    assert.equal(e.code, "unknown_task");
    assert.match(e.message, /task_list/, "the hint speaks the tools' vocabulary");
    return true;
  });
});

test("LangChain: pyroTools() is [vm_run]; invoke runs a real sandbox, content is the MCP text, artifact the result", async (t) => {
  const { pyro } = testPyro(t);
  const tools = langchainTools({ pyro });
  assert.deepEqual(tools.map((x) => x.name), ["vm_run"]);
  const vmRun = tools[0]!;
  assert.equal(vmRun.description, pyroToolDefinitions().vm_run.description);

  const text = await vmRun.invoke({ environment: ENV, command: "echo from-langchain; exit 2" });
  assert.match(text, /^exit 2 in \d+ ms \(namespace sandbox, vm_[0-9a-f]+\)\n--- stdout ---\nfrom-langchain\n$/);

  // Invoked with a tool call (as an agent does), it returns a ToolMessage carrying the structured result.
  const msg = await vmRun.invoke({ type: "tool_call", id: "lc_1", name: "vm_run", args: { environment: ENV, command: ["echo", "argv", "$HOME"] } });
  assert.ok(msg instanceof ToolMessage);
  assert.equal(msg.tool_call_id, "lc_1");
  assert.match(String(msg.content), /--- stdout ---\nargv \$HOME\n/);
  assert.equal(msg.artifact.exit_code, 0);
  assert.equal(msg.artifact.stdout, "argv $HOME\n");
  assert.deepEqual(msg.artifact.isolation, { driver: "namespace", kind: "namespace", accel: null });

  // LangChain validates the input against the zod schema before anything runs.
  await assert.rejects(vmRun.invoke({ environment: ENV, command: "" }), /command must not be empty|did not match expected schema/);
  await assert.rejects(vmRun.invoke({ command: "true", driver: "namespace" } as never), /did not match expected schema|Unrecognized key/);
  assert.equal((await pyro.listVms()).vms.length, 0);
});

test("LangChain: task tools only when asked for; the loop through invoke", async (t) => {
  const { pyro } = testPyro(t);
  const root = sourceRoot(t);
  writeFileSync(join(root, "f.txt"), "v1\n");
  const tools = Object.fromEntries(langchainTools({ pyro, tasks: true, allowedSourceRoots: [root] }).map((x) => [x.name, x]));
  assert.deepEqual(Object.keys(tools), ["vm_run", "task_create", "task_sync_push", "task_exec", "task_status", "task_logs", "task_list", "task_delete"]);

  const created = await tools.task_create!.invoke({ type: "tool_call", id: "c", name: "task_create", args: { environment: ENV, source_path: root } });
  const taskId = created.artifact.task_id as string;
  assert.match(String(created.content), /^created task_[0-9a-f]+: running, busybox/);
  writeFileSync(join(root, "f.txt"), "v2\n");
  assert.match(await tools.task_sync_push!.invoke({ task_id: taskId, source_path: root }), /^pushed 1 file\(s\)/);
  assert.match(await tools.task_exec!.invoke({ task_id: taskId, command: "cat f.txt" }), /--- stdout ---\nv2\n$/);
  assert.match(await tools.task_delete!.invoke({ task_id: taskId }), new RegExp(`^deleted ${taskId}$`));

  const single = pyroTool("task_list", { pyro });
  assert.equal(await single.invoke({}), "no tasks");
  assert.throws(() => pyroTool("vm_launch", { pyro }), /Unknown pyro tool "vm_launch"/);
});
