// A pyro process that starts one firecracker sandbox around the stand-in
// (argv: the stand-in's directory, the spec as JSON, optionally the tun
// device node for a VM with network), for kill -9 tests:
// with PYRO_TEST_PAUSE_AT it stops dead at that point of the boot.
import { standinDriver } from "./firecracker-standin.js";
import type { SandboxSpec } from "../../src/drivers/types.js";

const [dir, specJson, tun] = process.argv.slice(2);
const { driver } = standinDriver(dir!, "", tun);
const handle = await driver.start(JSON.parse(specJson!) as SandboxSpec);
process.stdout.write(`started ${handle.process.pid}\n`);
// Stay alive: the test kills this process.
setInterval(() => undefined, 60_000);
