// A pyro process that pushes into a task and is killed mid-push by a test:
//   node --import tsx test/helpers/push-child.ts STATE_DIR TASK_ID SOURCE ENV_JSON
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, source, envJson] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
await pyro.tasks.push(taskId!, { source_path: source! }, { env: JSON.parse(envJson ?? "{}") });
process.stdout.write("pushed\n");
await pyro.close();
