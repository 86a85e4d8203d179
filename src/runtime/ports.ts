import { createServer, type Server, type Socket } from "node:net";
import { AgentClient, type ExecHandle } from "../agent/client.js";
import { PyroError } from "../core/errors.js";
import type { TaskManager } from "./tasks.js";

/**
 * Published ports: a TCP port of a task's sandbox reachable from the host,
 * on the host's loopback only.
 *
 * The host listens on 127.0.0.1 (never another address: the address is not
 * an argument) and, for each connection it accepts, opens a channel on the
 * publishing process's agent connection that runs `pyro-agent connect PORT`
 * inside the sandbox: a relay from its stdin/stdout to 127.0.0.1:PORT
 * there. So it works for every driver and without network: the sandbox's
 * network namespace (or VM) is never joined or forwarded, nothing listens
 * on the host but the one loopback socket, and closing it (with the
 * service, the task, or the process) ends every relay.
 */

/** Host address of every published port. */
export const PUBLISH_HOST = "127.0.0.1";
/** Connections one published port relays at once; more wait for the agent's channels. */
const MAX_CONNECTIONS = 64;

export interface Published {
  host: typeof PUBLISH_HOST;
  port: number;
  guest_port: number;
}

export class PublishedPort {
  private client: AgentClient | null = null;
  private readonly relays = new Set<{ socket: Socket; exec: ExecHandle | null }>();
  private closed = false;

  private constructor(
    private readonly tasks: TaskManager,
    private readonly taskId: string,
    readonly guestPort: number,
    private readonly server: Server,
    readonly hostPort: number,
  ) {}

  /** Listens on 127.0.0.1:hostPort (0: one the kernel picks). */
  static async open(tasks: TaskManager, taskId: string, guestPort: number, hostPort = 0): Promise<PublishedPort> {
    const server = createServer({ pauseOnConnect: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (e: NodeJS.ErrnoException) =>
        reject(
          new PyroError("invalid_argument", `Cannot publish on ${PUBLISH_HOST}:${hostPort}: ${e.code === "EADDRINUSE" ? "the port is in use" : e.code === "EACCES" ? "a port below 1024 needs privileges" : e.message}.`, {
            hint: "Give another host_port, or leave it out to get a free one.",
          }),
        ),
      );
      server.listen({ host: PUBLISH_HOST, port: hostPort, exclusive: true }, () => resolve());
    });
    const port = (server.address() as { port: number }).port;
    const published = new PublishedPort(tasks, taskId, guestPort, server, port);
    server.maxConnections = MAX_CONNECTIONS * 4;
    server.on("connection", (socket) => void published.relay(socket));
    return published;
  }

  get info(): Published {
    return { host: PUBLISH_HOST, port: this.hostPort, guest_port: this.guestPort };
  }

  /** Stops listening and ends every relay. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const r of this.relays) {
      r.exec?.kill();
      r.socket.destroy();
    }
    this.client?.close();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async agent(): Promise<AgentClient> {
    if (this.client && !this.client.closed) return this.client;
    const { handle } = await this.tasks.running(this.taskId);
    this.client = await AgentClient.connect(handle.socket, { timeoutMs: 10_000 });
    return this.client;
  }

  private async relay(socket: Socket): Promise<void> {
    const entry: { socket: Socket; exec: ExecHandle | null } = { socket, exec: null };
    this.relays.add(entry);
    socket.on("error", () => undefined);
    socket.once("close", () => {
      this.relays.delete(entry);
      entry.exec?.kill();
    });
    try {
      if (this.closed) throw new Error("closed");
      const client = await this.agent();
      const exec = client.exec({
        argv: ["/run/pyro-agent", "connect", String(this.guestPort)],
        env: {},
        cwd: "/",
        timeoutMs: 0,
        stdin: "pipe",
        // The service's bytes go out at the host client's pace: a slow reader holds the agent's window, not our memory.
        onStdout: (chunk) => {
          if (socket.destroyed) return;
          if (!socket.write(chunk)) return new Promise<void>((resolve) => socket.once("drain", resolve).once("close", resolve));
        },
      });
      entry.exec = exec;
      if (socket.destroyed) exec.kill();
      socket.on("data", (chunk: Buffer) => {
        socket.pause();
        exec.writeStdin(chunk).then(
          () => socket.resume(),
          () => socket.destroy(),
        );
      });
      socket.once("end", () => exec.endStdin());
      socket.resume();
      await exec.result.catch(() => undefined);
      socket.end();
    } catch {
      socket.destroy();
    }
  }
}
