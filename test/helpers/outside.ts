import type { TestContext } from "node:test";
import { createServer, type Server } from "node:net";
import { networkInterfaces } from "node:os";

/**
 * What the network tests reach from a sandbox: a server on a non-loopback
 * address of this host stands in for "the outside" (the traffic never leaves
 * the machine), and one on the host's loopback must stay out of reach.
 */

/** A non-loopback IPv4 address of this host, or null. */
export function hostAddress(): string | null {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  return null;
}

/** A TCP server on host (a free port) that answers every connection with one line and hangs up. */
export function serveLine(host: string, reply: string): Promise<Server & { port: number }> {
  return new Promise((resolve) => {
    const server = createServer((socket) => socket.end(reply, () => socket.destroy())) as Server & { port: number };
    server.listen(0, host, () => {
      server.port = (server.address() as { port: number }).port;
      resolve(server);
    });
  });
}

/** "from-outside" on addr and "from-host-loopback" on 127.0.0.1, both closed after the test. */
export async function outsideAndLoopback(t: TestContext, addr: string): Promise<{ outside: Server & { port: number }; loopback: Server & { port: number } }> {
  const outside = await serveLine(addr, "from-outside\n");
  const loopback = await serveLine("127.0.0.1", "from-host-loopback\n");
  t.after(() => {
    outside.close();
    loopback.close();
  });
  return { outside, loopback };
}
