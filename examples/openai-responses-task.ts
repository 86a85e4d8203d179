/**
 * An OpenAI Responses API tool loop with a persistent workspace: the model
 * gets `task_create` (a sandbox whose /workspace starts from a host
 * directory), `task_sync_push` (later host changes, all or nothing) and
 * `task_exec` (commands in that workspace). The conversation has two turns
 * with a host-side edit between them, the loop a coding agent runs:
 *
 *   1. "create a task from my project and run its tests"  -> the tests fail
 *   2. (the developer fixes the file on the host)
 *      "push my fix and run the tests again"              -> the tests pass
 *
 * and the program deletes the task at the end.
 *
 *   OPENAI_API_KEY=sk-... node --import tsx examples/openai-responses-task.ts
 *
 * Environment: OPENAI_API_KEY; OPENAI_BASE_URL (the openai SDK's own);
 * OPENAI_MODEL (default gpt-5); PYRO_EXAMPLE_ENV, the environment used when
 * the model names none (default debian:12).
 */
import OpenAI from "openai";
import type { FunctionTool, ResponseInputItem } from "openai/resources/responses/responses";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro, PyroError } from "pyro-mcp";
import { pyroToolDefinitions } from "pyro-mcp/tools";

const MODEL = process.env.OPENAI_MODEL ?? "gpt-5";
const ENVIRONMENT = process.env.PYRO_EXAMPLE_ENV ?? "debian:12";
const MAX_OUTPUT_BYTES = 64 * 1024;

// A tiny project on the host, with a bug.
const project = mkdtempSync(join(tmpdir(), "pyro-example-project-"));
writeFileSync(join(project, "greet.sh"), 'echo "Helo, $1!"\n');
writeFileSync(
  join(project, "test.sh"),
  'out=$(sh greet.sh world)\nif [ "$out" = "Hello, world!" ]; then echo "PASS: $out"; else echo "FAIL: expected \'Hello, world!\', got \'$out\'"; exit 1; fi\n',
);

const client = new OpenAI(); // reads OPENAI_API_KEY and OPENAI_BASE_URL
// source_path may only point into the project: whatever the model asks for, nothing else on the host is read.
const pyro = new Pyro({ allowedSourceRoots: [project], onProgress: (e) => console.error(`[pyro] ${e.phase}: ${e.message}`) });

// Descriptions and JSON Schemas as pyro's MCP server publishes them.
const defs = pyroToolDefinitions({ tasks: true, allowedSourceRoots: [project] });
const tools: FunctionTool[] = [defs.task_create, defs.task_sync_push, defs.task_exec].map((d) => ({
  type: "function",
  name: d.name,
  description: d.description,
  parameters: d.parameters,
  strict: false,
}));

const created = new Set<string>();

async function callTool(name: string, argumentsJson: string): Promise<unknown> {
  try {
    const args = JSON.parse(argumentsJson);
    console.error(`[${name}] ${argumentsJson}`);
    switch (name) {
      case "task_create": {
        const task = await pyro.createTask({ environment: ENVIRONMENT, ...args });
        created.add(task.task_id);
        return task;
      }
      case "task_sync_push":
        return await pyro.pushTaskSync(args);
      case "task_exec":
        return await pyro.execTask({ ...args, max_output_bytes: MAX_OUTPUT_BYTES });
      default:
        return { error: { code: "unknown_tool", message: `There is no tool named ${name}.` } };
    }
  } catch (error) {
    if (error instanceof PyroError) return error.toJSON();
    if (error instanceof SyntaxError) return { error: { code: "invalid_argument", message: `arguments are not JSON: ${error.message}` } };
    throw error;
  }
}

const input: ResponseInputItem[] = [];

/** One user turn: the tool loop until the model answers in text. */
async function ask(prompt: string): Promise<string> {
  input.push({ role: "user", content: prompt });
  for (let step = 1; step <= 10; step++) {
    const response = await client.responses.create({ model: MODEL, input, tools });
    input.push(...(response.output as ResponseInputItem[]));
    const calls = response.output.filter((item) => item.type === "function_call");
    if (calls.length === 0) return response.output_text;
    for (const call of calls) {
      const output = await callTool(call.name, call.arguments);
      input.push({ type: "function_call_output", call_id: call.call_id, output: JSON.stringify(output) });
    }
  }
  throw new Error("no answer after 10 steps");
}

try {
  console.log(await ask(`My project is in ${project} on this machine. Create a task from it, run its tests with \`sh test.sh\` in the task, and tell me the result in one sentence.`));
  // The developer fixes the bug on the host, as they would in their editor.
  writeFileSync(join(project, "greet.sh"), 'echo "Hello, $1!"\n');
  console.error("[host] fixed greet.sh");
  console.log(await ask("I fixed greet.sh on the host. Push my project into the task again and rerun the tests; one sentence."));
} finally {
  for (const task_id of created) await pyro.deleteTask({ task_id }).catch(() => undefined);
  rmSync(project, { recursive: true, force: true });
}
