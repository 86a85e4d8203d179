// A pyro process that holds a shell in a task until a test kills it:
//   node --import tsx test/helpers/shell-child.ts STATE_DIR TASK_ID MARKER
// The shell cds to /tmp, sets KEEPVAR, and starts two background jobs: `sleep MARKER`, and one
// that prints tick-0..tick-9 over ~2 s, starting 1 s later (after the test killed this process),
// then job-done. Prints "ready SHELL_ID" once the jobs run.
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, marker] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
const sh = await pyro.openTaskShell({ task_id: taskId! });
const id = { task_id: taskId!, shell_id: sh.shell_id };
await pyro.writeTaskShell({
  ...id,
  input: `cd /tmp; export KEEPVAR=kept-42; sleep ${marker} & (sleep 1; i=0; while [ $i -lt 10 ]; do echo tick-$i; i=$((i+1)); sleep 0.2; done; echo job-''done) & echo job-''started\n`,
});
await pyro.readTaskShell({ ...id, wait_for: "job-started", timeout_ms: 20_000 });
process.stdout.write(`ready ${sh.shell_id}\n`);
setInterval(() => undefined, 60_000);
