// `pyro mcp serve` says at start when no sandbox can run here, and why
// (issue 13): drivers/readiness.ts finds out, the server's instructions carry
// it to the model. The CLI's stderr line and a real broken host are tried
// end to end in test/e2e/npm-package.test.ts (a damaged agent).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { createServer, serverInstructions } from "../../src/mcp/server.js";
import { sandboxReadiness } from "../../src/drivers/readiness.js";
import { Pyro } from "../../src/index.js";

test("a driver this release cannot run, or no driver at all, is not ready, with the reason", async () => {
  const fc = await sandboxReadiness("firecracker");
  assert.deepEqual([fc.ok, fc.driver], [false, null]);
  assert.match(fc.reason!, /firecracker driver cannot run here/);
  const bogus = await sandboxReadiness("bogus");
  assert.equal(bogus.ok, false);
  assert.match(bogus.reason!, /Unknown driver "bogus"/);
});

test("the instructions say nothing extra when sandboxes can run, and why not when they cannot", () => {
  assert.doesNotMatch(serverInstructions(null), /NOTE/);
  const note = serverInstructions("bwrap is not installed (apt-get install bubblewrap)");
  assert.ok(note.startsWith(serverInstructions(null)));
  assert.match(note, /no sandbox can start on this host right now, so every tool call fails until the host is fixed\. Why: bwrap is not installed \(apt-get install bubblewrap\)/);
  assert.match(note, /pyro doctor/);
});

test("an MCP client reads the reason in the server's instructions", async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-readiness-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  for (const unavailable of [null, "the guest agent is missing"]) {
    const server = createServer({ profile: "vm-run", pyro: new Pyro({ stateDir }), reaper: false, unavailable });
    const [a, b] = InMemoryTransport.createLinkedPair();
    const client = new Client({ name: "t", version: "0" });
    await Promise.all([server.connect(a), client.connect(b)]);
    assert.equal(client.getInstructions(), serverInstructions(unavailable));
    if (unavailable) assert.match(client.getInstructions()!, /Why: the guest agent is missing/);
    await client.close();
    await server.shutdown();
  }
});
