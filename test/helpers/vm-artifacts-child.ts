// A separate pyro process that ensures an environment's VM artifacts (for the
// concurrency and kill -9 tests in test/vm/): progress on stderr, the result as
// JSON on stdout. The cache comes from PYRO_CACHE_DIR as usual.
import { ensureEnvironment } from "../../src/environments/index.js";
import { ensureVmArtifacts } from "../../src/environments/vm/index.js";

const name = process.argv[2] ?? "busybox";
try {
  const env = await ensureEnvironment(name);
  const a = await ensureVmArtifacts(env, { progress: (e) => process.stderr.write(`progress ${e.phase} ${e.message}\n`) });
  process.stdout.write(JSON.stringify(a) + "\n");
} catch (error) {
  process.stderr.write(`error ${JSON.stringify((error as { toJSON?: () => unknown }).toJSON?.() ?? String(error))}\n`);
  process.exit(1);
}
