// A pyro process that runs a published service in a task until a test kills it:
//   node --import tsx test/helpers/service-child.ts STATE_DIR TASK_ID MARKER
// Prints "ready HOST_PORT" once the service is ready and published. Beside its web server the service
// runs `sleep MARKER` and a job that logs tick-0..tick-4 starting 1 s later (after the test killed us).
import { Pyro } from "../../src/index.js";

const [stateDir, taskId, marker] = process.argv.slice(2);
const pyro = new Pyro({ stateDir: stateDir! });
const s = await pyro.startTaskService({
  task_id: taskId!,
  name: "web",
  command: `sleep ${marker} & (sleep 1; i=0; while [ $i -lt 5 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done) & exec busybox httpd -f -p 127.0.0.1:8081 -h /workspace`,
  ready: { tcp_port: 8081 },
  publish: { port: 8081 },
});
process.stdout.write(`ready ${s.published!.port}\n`);
setInterval(() => undefined, 60_000);
