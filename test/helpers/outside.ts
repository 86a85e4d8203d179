import assert from "node:assert/strict";
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

/** The guest's names for the host's loopback: its own 127.0.0.1, the gateway, the DNS forwarder. */
export const LOOPBACK_NAMES = ["127.0.0.1", "10.0.2.2", "10.0.2.3"] as const;

/**
 * Shell lines for a busybox guest: `outside=<line>` from the outside server,
 * `via <ip>=<line>` from the loopback one by each of its names (empty when
 * unreachable). `timeout` bounds a connect nobody answers (nc's -w does not,
 * for a SYN into a void).
 */
export function ncProbes(addr: string, outsidePort: number, loopbackPort: number): string[] {
  return [
    `echo "outside=$(timeout 20 nc -w 10 ${addr} ${outsidePort} </dev/null | head -n 1)"`,
    ...LOOPBACK_NAMES.map((ip) => `echo "via ${ip}=$(timeout 8 nc -w 5 ${ip} ${loopbackPort} </dev/null 2>/dev/null | head -n 1)"`),
  ];
}

/** What ncProbes' lines must say: the outside answered, the host's loopback by no name. */
export function assertOutsideOnly(out: string, context = out): void {
  assert.match(out, /^outside=from-outside$/m, context);
  assert.doesNotMatch(out, /from-host-loopback/, "the host's loopback is unreachable from the guest");
  for (const ip of LOOPBACK_NAMES) assert.match(out, new RegExp(`^via ${ip.replace(/\./g, "\\.")}=$`, "m"));
}
