import { writeSync } from "node:fs";

/**
 * Test hook for the fault-injection tier (test/fault/): with
 * PYRO_TEST_PAUSE_AT=<point>[,<point>...], the process stops dead at that
 * point, after saying so on stderr (`pyro-test: paused at <point>`), so a test
 * can kill -9 it exactly there. The whole thread blocks (no event loop turn,
 * no timer, no I/O callback runs), as if the kernel had frozen it. Unset, it
 * costs one comparison.
 */
const POINTS = new Set((process.env.PYRO_TEST_PAUSE_AT ?? "").split(",").filter(Boolean));

export function pauseAt(point: string): void {
  if (POINTS.size === 0 || !POINTS.has(point)) return;
  try {
    writeSync(2, `pyro-test: paused at ${point} pid ${process.pid}\n`);
  } catch {
    /* no stderr: still pause */
  }
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (;;) Atomics.wait(cell, 0, 0, 60_000);
}

/**
 * The points of PYRO_TEST_PAUSE_AT under `prefix:` (files:commit-renamed gives
 * commit-renamed), for a process in the sandbox with a hook of its own
 * (guest/files.c, PYRO_FILES_PAUSE_AT); "" when none is set.
 */
export function guestPausePoints(prefix: string): string {
  return [...POINTS].filter((p) => p.startsWith(`${prefix}:`)).map((p) => p.slice(prefix.length + 1)).join(",");
}
