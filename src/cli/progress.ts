import type { ProgressEvent, ProgressListener } from "../util/progress.js";

/**
 * Renders progress events for a person or a machine, on stderr (stdout is
 * the result's): with --json, one JSON object per line; on a terminal, a
 * cli-progress bar showing the phase (loaded only then); otherwise plain
 * `[phase] message` lines, with counted events thinned to one a second.
 */
export interface ProgressRenderer {
  listener: ProgressListener;
  /** Ends the bar (if any) so that the result prints on a clean line. */
  stop(): void;
}

export async function createProgressRenderer(options: { json: boolean; stream?: NodeJS.WriteStream }): Promise<ProgressRenderer> {
  const stream = options.stream ?? process.stderr;
  if (options.json) {
    return {
      listener: (e) => stream.write(JSON.stringify({ progress: e }) + "\n"),
      stop() {},
    };
  }
  if (!stream.isTTY) return plainLines(stream);
  const { SingleBar } = (await import("cli-progress")).default;
  const width = 24;
  const bar = new SingleBar({
    stream,
    fps: 8,
    hideCursor: true,
    clearOnComplete: false,
    format: (_opts, params, payload: { phase: string; message: string; counted: boolean }) => {
      const phase = `${payload.phase}`.padEnd(9);
      if (!payload.counted) return `${phase} ${payload.message}`;
      const filled = Math.max(0, Math.min(width, Math.round(params.progress * width)));
      const pct = `${Math.floor(params.progress * 100)}`.padStart(3);
      return `${phase} ${"█".repeat(filled)}${"░".repeat(width - filled)} ${pct}% ${params.value}/${params.total} ${payload.message}`;
    },
  });
  let started = false;
  return {
    listener: (e: ProgressEvent) => {
      const counted = e.total !== undefined && e.total > 0 && e.current !== undefined;
      const payload = { phase: e.phase, message: e.message, counted };
      if (!started) {
        bar.start(counted ? e.total! : 1, counted ? e.current! : 0, payload);
        started = true;
        return;
      }
      if (counted) bar.setTotal(e.total!);
      bar.update(counted ? e.current! : 0, payload);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

function plainLines(stream: NodeJS.WritableStream): ProgressRenderer {
  let lastPhase = "";
  let lastAt = 0;
  return {
    listener: (e) => {
      const counted = e.current !== undefined;
      const now = Date.now();
      const final = counted && e.total !== undefined && e.current === e.total;
      if (counted && e.phase === lastPhase && !final && now - lastAt < 1000) return;
      lastPhase = e.phase;
      lastAt = now;
      const count = counted ? ` (${e.current}${e.total ? `/${e.total}` : ""})` : "";
      stream.write(`[${e.phase}] ${e.message}${count}\n`);
    },
    stop() {},
  };
}
