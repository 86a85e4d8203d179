// The host's connections to sandbox sockets (the agent's, a VM's QMP and
// migration sockets) live in directories the sandbox's uid owns: a name
// there replaced by a symlink must never lead pyro to another socket.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../../src/agent/client.js";
import { agentListens } from "../../src/runtime/boot.js";
import { connectUnixNoFollow } from "../../src/util/unix-socket.js";
import { PyroError } from "../../src/core/errors.js";

function listen(path: string): Promise<{ server: Server; connections: () => number }> {
  let n = 0;
  const server = createServer((c) => {
    n++;
    c.end();
  });
  return new Promise((resolve) => server.listen(path, () => resolve({ server, connections: () => n })));
}

test("a symlink planted where a sandbox socket was is never connected through", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pyro-sock-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // Some other socket of the host (another VM's agent, a system service) that the link points at.
  const victim = await listen(join(dir, "host-service.sock"));
  t.after(() => victim.server.close());
  const planted = join(dir, "agent.sock");
  symlinkSync(join(dir, "host-service.sock"), planted);
  await assert.rejects(AgentClient.connect(planted, { timeoutMs: 2000 }), (e: unknown) => e instanceof PyroError && e.code === "sandbox_failed" && /not a socket/.test(e.message));
  assert.equal(await agentListens(planted), false, "a link is not a live agent");
  writeFileSync(join(dir, "file.sock"), "");
  assert.equal(await agentListens(join(dir, "file.sock")), false);
  assert.equal(await agentListens(join(dir, "missing.sock")), false);
  assert.equal(victim.connections(), 0, "nothing reached the socket the link names");
  // The socket itself is reached as before.
  const s = connectUnixNoFollow(join(dir, "host-service.sock"));
  await new Promise<void>((resolve, reject) => (s.once("connect", () => resolve()), s.once("error", reject)));
  s.destroy();
  assert.equal(await agentListens(join(dir, "host-service.sock")), true);
});
