import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import type { TestContext } from "node:test";

/**
 * A local stand-in for the OpenAI Responses API (`POST /v1/responses`, JSON,
 * no streaming), speaking its wire format: each request is answered by a
 * scripted model turn, either function calls or a final text message. The
 * official `openai` SDK talks to it unchanged when OPENAI_BASE_URL points
 * here, so an example runs exactly the code path it runs against the real API.
 */

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: any;
}

export type OutputItem = Record<string, unknown>;

/** A scripted model turn: given the request body (and its index), the output items to answer with. */
export type ModelTurn = (body: any, index: number) => OutputItem[];

let counter = 0;

export function functionCall(name: string, args: unknown): OutputItem {
  counter++;
  return { type: "function_call", id: `fc_${counter}`, call_id: `call_${counter}`, name, arguments: JSON.stringify(args), status: "completed" };
}

export function message(text: string): OutputItem {
  counter++;
  return { type: "message", id: `msg_${counter}`, role: "assistant", status: "completed", content: [{ type: "output_text", text, annotations: [] }] };
}

/** The function_call_output items of a request's input, with their output parsed as JSON. */
export function callOutputs(body: any): Array<{ call_id: string; output: any }> {
  return (body?.input ?? [])
    .filter((i: any) => i?.type === "function_call_output")
    .map((i: any) => ({ call_id: i.call_id, output: JSON.parse(i.output) }));
}

/** The last function_call_output of a request's input, parsed. */
export function lastOutput(body: any): any {
  const outputs = callOutputs(body);
  return outputs[outputs.length - 1]?.output;
}

export async function startResponsesServer(t: TestContext, turns: ModelTurn[]): Promise<{ baseURL: string; requests: RecordedRequest[] }> {
  const requests: RecordedRequest[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let body: any = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        /* recorded as null */
      }
      const index = requests.length;
      requests.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers, body });
      const reply = (status: number, value: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(value));
      };
      if (req.method !== "POST" || req.url !== "/v1/responses") {
        return reply(404, { error: { message: `no route ${req.method} ${req.url}`, type: "invalid_request_error", code: null, param: null } });
      }
      const turn = turns[index];
      if (!turn) return reply(400, { error: { message: `unexpected request #${index + 1}`, type: "invalid_request_error", code: null, param: null } });
      let output: OutputItem[];
      try {
        output = turn(body, index);
      } catch (error) {
        return reply(400, { error: { message: `script turn ${index + 1} failed: ${(error as Error).message}`, type: "invalid_request_error", code: null, param: null } });
      }
      reply(200, {
        id: `resp_${index + 1}`,
        object: "response",
        created_at: Math.floor(Date.now() / 1000),
        status: "completed",
        error: null,
        incomplete_details: null,
        instructions: null,
        model: body?.model ?? "unknown",
        output,
        parallel_tool_calls: true,
        temperature: 1,
        top_p: 1,
        tool_choice: "auto",
        tools: body?.tools ?? [],
        metadata: {},
        usage: { input_tokens: 10, input_tokens_details: { cached_tokens: 0 }, output_tokens: 10, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 20 },
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  return { baseURL: `http://127.0.0.1:${port}/v1`, requests };
}
