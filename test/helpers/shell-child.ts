// A pyro process that holds a shell in a task, with a background job, until a test kills it:
//   node --import tsx test/helpers/shell-child.ts STATE_DIR TASK_ID MARKER
// Prints "ready SHELL_ID" once the job runs.
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, marker] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
const sh = await pyro.openTaskShell({ task_id: taskId! });
await pyro.writeTaskShell({ task_id: taskId!, shell_id: sh.shell_id, input: `sleep ${marker} & echo job-''started\n` });
await pyro.readTaskShell({ task_id: taskId!, shell_id: sh.shell_id, wait_for: "job-started", timeout_ms: 20_000 });
process.stdout.write(`ready ${sh.shell_id}\n`);
setInterval(() => undefined, 60_000);
