import { AgentClient } from "../agent/client.js";
import type { KeptEntry } from "../agent/codec.js";
import type { TaskManager } from "./tasks.js";

/**
 * One agent connection per sandbox for everything a process holds there
 * (its shells, its services), shared and counted: an agent serves at most
 * 16 connections and 64 channels on each, so a connection per shell would
 * run out at 16 shells and leave none for execs. The connection closes when
 * its last user releases it; one that failed is replaced at the next
 * acquire (its users saw their channels fail with it).
 */
export class SharedAgents {
  private readonly entries = new Map<string, { pending: Promise<AgentClient>; client: AgentClient | null; users: number }>();

  async acquire(socket: string, signal?: AbortSignal): Promise<AgentClient> {
    const known = this.entries.get(socket);
    if (known) {
      const client = await known.pending.catch(() => null);
      if (client && !client.closed && this.entries.get(socket) === known) {
        known.users++;
        return client;
      }
      if (this.entries.get(socket) === known) this.entries.delete(socket);
    }
    const entry: { pending: Promise<AgentClient>; client: AgentClient | null; users: number } = { pending: AgentClient.connect(socket, { timeoutMs: 10_000, signal }), client: null, users: 1 };
    this.entries.set(socket, entry);
    try {
      entry.client = await entry.pending;
      return entry.client;
    } catch (error) {
      if (this.entries.get(socket) === entry) this.entries.delete(socket);
      throw error;
    }
  }

  /** One user fewer; the last one closes the connection. */
  release(client: AgentClient): void {
    for (const [socket, entry] of this.entries) {
      if (entry.client !== client) continue;
      entry.users--;
      if (entry.users <= 0) {
        this.entries.delete(socket);
        client.close();
      }
      return;
    }
    client.close(); // replaced after it failed: nobody else uses it
  }
}

/**
 * What a task's agent keeps (its shells and services, docs/protocol.md
 * "Kept channels"), asked on a connection of its own so that asking takes
 * nothing over: [] when the task's sandbox is not running, undefined when
 * the agent could not be asked.
 */
export async function keptOf(tasks: Pick<TaskManager, "runningNow">, taskId: string): Promise<KeptEntry[] | undefined> {
  const sandbox = await tasks.runningNow(taskId).catch(() => null);
  if (!sandbox) return [];
  let client: AgentClient | null = null;
  try {
    client = await AgentClient.connect(sandbox.handle.socket, { timeoutMs: 5000 });
    return await client.listKept(5000);
  } catch {
    return undefined;
  } finally {
    client?.close();
  }
}
