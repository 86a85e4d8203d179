import type { Pyro } from "../sdk/pyro.js";
import type { ProgressListener } from "../util/progress.js";
import { createProgressRenderer } from "./progress.js";

/**
 * The SDK object the CLI's sandbox commands use, loaded lazily. Every such
 * command first reaps what expired or what crashed pyro processes left, so
 * leftovers never pile up even without a long-running server.
 */
export async function cliPyro(options: { driver?: string; onProgress?: ProgressListener } = {}): Promise<Pyro> {
  const { Pyro } = await import("../sdk/pyro.js");
  const pyro = new Pyro({ errorHints: "cli", driver: options.driver as never, onProgress: options.onProgress ?? (await pullProgress(process.stderr)) });
  await pyro.reapExpired().catch(() => undefined);
  return pyro;
}

/**
 * Progress of an environment pulled on first use, on stderr (stdout is the
 * command's): a bar on a terminal, plain lines otherwise. The bar ends with
 * the build's last phase, before the command's own output starts.
 */
export async function pullProgress(stream: NodeJS.WritableStream & { isTTY?: boolean }): Promise<ProgressListener> {
  // Loads the bar library only on a terminal; plain lines need nothing.
  const renderer = await createProgressRenderer({ json: false, stream: stream as NodeJS.WriteStream });
  return (event) => {
    renderer.listener(event);
    if (event.phase === "finalize") renderer.stop();
  };
}

export function describeIsolation(i: { driver: string; kind: string; accel: string | null }): string {
  // Limits (cgroups or not) are said by a status's `limits`, which knows what this host enforced; this line claims only what every namespace sandbox has.
  if (i.kind === "namespace") return "namespace sandbox (bubblewrap: Linux namespaces + seccomp; no VM)";
  if (i.kind === "emulated-vm") return `${i.driver} VM, software-emulated (${i.accel ?? "tcg"})`;
  return `${i.driver} microVM (${i.accel ?? "kvm"})`;
}
