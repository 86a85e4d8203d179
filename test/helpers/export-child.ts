// A pyro process that exports a task and is killed mid-export by a test:
//   node --import tsx test/helpers/export-child.ts STATE_DIR TASK_ID TARGET
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, target] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
await pyro.exportTask({ task_id: taskId!, target: target! });
process.stdout.write("exported\n");
await pyro.close();
