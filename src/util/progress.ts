/**
 * Progress of long work (an environment build, a large push), reported by the
 * runtime and rendered by whichever front door is asking: a progress bar on a
 * terminal, plain lines otherwise, JSON lines with --json, MCP progress
 * notifications for an MCP client.
 */
export interface ProgressEvent {
  /** A short stable name of the current phase, e.g. "download", "extract". */
  phase: string;
  /** A sentence for people. */
  message: string;
  /** Completed units and total units of this phase, when known. */
  current?: number;
  total?: number;
}

export type ProgressListener = (event: ProgressEvent) => void;

export const noProgress: ProgressListener = () => {};
