// A pyro process that applies a patch to a task and is killed mid-commit by a test:
//   node --import tsx test/helpers/patch-child.ts STATE_DIR TASK_ID PATCH
// (the test sets PYRO_TEST_PAUSE_AT=files:POINT, so the guest's commit stops at POINT).
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, patch] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
try {
  await pyro.applyTaskPatch({ task_id: taskId!, patch: patch! });
  process.stdout.write("applied\n");
} finally {
  await pyro.close();
}
