/**
 * An OpenAI Responses API tool loop that gives the model one tool, `vm_run`:
 * one command in a fresh, isolated sandbox that is deleted afterwards.
 *
 *   OPENAI_API_KEY=sk-... node --import tsx examples/openai-responses-vm-run.ts ["your question"]
 *
 * Environment: OPENAI_API_KEY; OPENAI_BASE_URL (the openai SDK's own, for a
 * proxy or a compatible server); OPENAI_MODEL (default gpt-5);
 * PYRO_EXAMPLE_ENV, the environment used when the model names none (default
 * debian:12, built from Debian's archive on first use, about a minute).
 */
import OpenAI from "openai";
import type { FunctionTool, ResponseInputItem } from "openai/resources/responses/responses";
import { Pyro, PyroError } from "pyro-mcp";
import { pyroToolDefinitions } from "pyro-mcp/tools";

const MODEL = process.env.OPENAI_MODEL ?? "gpt-5";
const ENVIRONMENT = process.env.PYRO_EXAMPLE_ENV ?? "debian:12";
const PROMPT =
  process.argv[2] ??
  "Use vm_run to find out which Linux kernel and which user id a sandbox runs with, and what is in its root directory. Answer in two sentences.";
/** A model's context is not a log file: cap each output stream (the MCP server does the same). */
const MAX_OUTPUT_BYTES = 64 * 1024;

const client = new OpenAI(); // reads OPENAI_API_KEY and OPENAI_BASE_URL
const pyro = new Pyro({ onProgress: (e) => console.error(`[pyro] ${e.phase}: ${e.message}`) });

// The tool's description and JSON Schema are the ones pyro's MCP server publishes for vm_run.
const { vm_run } = pyroToolDefinitions();
const tools: FunctionTool[] = [{ type: "function", name: "vm_run", description: vm_run.description, parameters: vm_run.parameters, strict: false }];

/** Runs one function call; the result (or the error) goes back to the model as JSON. */
async function callTool(name: string, argumentsJson: string): Promise<unknown> {
  if (name !== "vm_run") return { error: { code: "unknown_tool", message: `There is no tool named ${name}; use vm_run.` } };
  try {
    const args = JSON.parse(argumentsJson) as Parameters<Pyro["runInVm"]>[0];
    console.error(`[vm_run] ${JSON.stringify(args.command)} on ${args.environment ?? ENVIRONMENT}`);
    return await pyro.runInVm({ environment: ENVIRONMENT, ...args, max_output_bytes: MAX_OUTPUT_BYTES });
  } catch (error) {
    // Invalid arguments, an unknown environment, ...: tell the model what failed and what to do.
    if (error instanceof PyroError) return error.toJSON();
    if (error instanceof SyntaxError) return { error: { code: "invalid_argument", message: `arguments are not JSON: ${error.message}` } };
    throw error;
  }
}

const input: ResponseInputItem[] = [{ role: "user", content: PROMPT }];
for (let turn = 1; ; turn++) {
  if (turn > 10) throw new Error("no answer after 10 turns");
  const response = await client.responses.create({ model: MODEL, input, tools });
  // Keep the whole conversation (reasoning items included) for the next turn.
  input.push(...(response.output as ResponseInputItem[]));
  const calls = response.output.filter((item) => item.type === "function_call");
  if (calls.length === 0) {
    console.log(response.output_text);
    break;
  }
  for (const call of calls) {
    const output = await callTool(call.name, call.arguments);
    input.push({ type: "function_call_output", call_id: call.call_id, output: JSON.stringify(output) });
  }
}
