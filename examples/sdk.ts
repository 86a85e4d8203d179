/**
 * The TypeScript SDK directly, no transport: one-shot runInVm, then a task
 * created from a host directory, exec'd in, updated from the host with
 * pushTaskSync, exec'd in again, and deleted.
 *
 *   node --import tsx examples/sdk.ts
 *
 * PYRO_EXAMPLE_ENV sets the environment (default debian:12, built from
 * Debian's archive on first use, about a minute).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "pyro-mcp";

const environment = process.env.PYRO_EXAMPLE_ENV ?? "debian:12";
const pyro = new Pyro({ onProgress: (e) => console.error(`[pyro] ${e.phase}: ${e.message}`) });

// 1. One command, one ephemeral sandbox, automatic cleanup.
const run = await pyro.runInVm({ environment, command: "echo hello from $(hostname); id -u", timeout_seconds: 30 });
console.log(`runInVm: exit ${run.exit_code}, isolation ${run.isolation.driver}/${run.isolation.kind}\n${run.stdout}`);

// 2. A persistent workspace seeded from a host directory.
const project = mkdtempSync(join(tmpdir(), "pyro-example-sdk-"));
writeFileSync(join(project, "version.txt"), "1\n");
const task = await pyro.createTask({ environment, source_path: project, name: "sdk-example" });
try {
  const first = await pyro.execTask({ task_id: task.task_id, command: "cat version.txt; echo ran >> runs.log" });
  console.log(`execTask #${first.sequence}: version ${first.stdout.trim()}`);

  // The host changes; push the change into the live workspace (all or nothing).
  writeFileSync(join(project, "version.txt"), "2\n");
  const push = await pyro.pushTaskSync({ task_id: task.task_id, source_path: project });
  console.log(`pushTaskSync: ${push.files} file(s), ${push.replaced} replaced`);

  // The new content is there, and so is what the first exec wrote (runs.log is not on the host).
  const second = await pyro.execTask({ task_id: task.task_id, command: ["sh", "-c", "cat version.txt; wc -l < runs.log"] });
  const [version, runs] = second.stdout.trim().split("\n");
  console.log(`execTask #${second.sequence}: version ${version}, runs.log has ${runs?.trim()} line(s)`);
} finally {
  await pyro.deleteTask({ task_id: task.task_id });
  console.log(`deleteTask: ${task.task_id} deleted`);
  rmSync(project, { recursive: true, force: true });
}
