import type { Pyro } from "../sdk/pyro.js";
import type { ProgressListener } from "../util/progress.js";

/**
 * The SDK object the CLI's sandbox commands use, loaded lazily. Every such
 * command first reaps what expired or what crashed pyro processes left, so
 * leftovers never pile up even without a long-running server.
 */
export async function cliPyro(options: { driver?: string; onProgress?: ProgressListener } = {}): Promise<Pyro> {
  const { Pyro } = await import("../sdk/pyro.js");
  const pyro = new Pyro({ driver: options.driver as never, onProgress: options.onProgress ?? stderrProgress() });
  await pyro.reapExpired().catch(() => undefined);
  return pyro;
}

/** Progress of an environment pulled on first use, as plain lines on stderr (stdout is the command's). */
export function stderrProgress(): ProgressListener {
  let last = "";
  return (event) => {
    const line = `[pyro] ${event.phase}: ${event.message}`;
    if (line !== last) process.stderr.write(line + "\n");
    last = line;
  };
}

export function describeIsolation(i: { driver: string; kind: string; accel: string | null }): string {
  if (i.kind === "namespace") return "namespace sandbox (bubblewrap: Linux namespaces + cgroups + seccomp; no VM)";
  if (i.kind === "emulated-vm") return `${i.driver} VM, software-emulated (${i.accel ?? "tcg"})`;
  return `${i.driver} microVM (${i.accel ?? "kvm"})`;
}
