// A pyro process that runs a published service in a task until a test kills it:
//   node --import tsx test/helpers/service-child.ts STATE_DIR TASK_ID MARKER
// Prints "ready HOST_PORT" once the service is ready and published.
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, marker] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
const s = await pyro.startTaskService({
  task_id: taskId!,
  name: "web",
  command: `sleep ${marker} & exec busybox httpd -f -p 127.0.0.1:8081 -h /workspace`,
  ready: { tcp_port: 8081 },
  publish: { port: 8081 },
});
process.stdout.write(`ready ${s.published!.port}\n`);
setInterval(() => undefined, 60_000);
