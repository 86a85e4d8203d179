/**
 * An MCP client (the official @modelcontextprotocol/sdk) that starts
 * `pyro mcp serve` over stdio, lists its tools and calls vm_run: what an MCP
 * host (Claude Code, Codex, Cursor, ...) does with pyro's server.
 *
 *   node --import tsx examples/mcp-client.ts
 *
 * PYRO_EXAMPLE_ENV sets the environment (default debian:12, built from
 * Debian's archive on first use, about a minute).
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";

const ENVIRONMENT = process.env.PYRO_EXAMPLE_ENV ?? "debian:12";

// The pyro CLI of the installed package (or of this clone): node + dist/cli.js, as `pyro host print-config` prints it.
const cli = join(dirname(createRequire(import.meta.url).resolve("pyro-mcp/package.json")), "dist", "cli.js");

const transport = new StdioClientTransport({
  command: process.execPath,
  args: [cli, "mcp", "serve", "--profile", "vm-run"],
  // The SDK passes only a few variables (HOME, PATH, ...) by default; pass ours, so PYRO_* settings reach the server.
  env: process.env as Record<string, string>,
  stderr: "inherit",
});
const client = new Client({ name: "pyro-example", version: "1.0.0" });
await client.connect(transport);

try {
  const { tools } = await client.listTools();
  console.log(`${client.getServerVersion()?.name} ${client.getServerVersion()?.version}: ${tools.map((t) => t.name).join(", ")}`);

  const result = (await client.callTool({
    name: "vm_run",
    arguments: { environment: ENVIRONMENT, command: "echo hello from the sandbox; uname -sr; id -u" },
  })) as CallToolResult;
  // The text a model reads, then the structured result an application reads.
  for (const block of result.content) if (block.type === "text") console.log(block.text);
  const structured = result.structuredContent as { exit_code: number; isolation: { driver: string; kind: string } } | undefined;
  if (result.isError || !structured) throw new Error("vm_run failed");
  console.log(`exit_code ${structured.exit_code}, isolation ${structured.isolation.driver} (${structured.isolation.kind})`);
} finally {
  await client.close();
}
