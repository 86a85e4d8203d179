// Everything of the integration tier that does not test the namespace
// driver itself runs again on qemu under TCG: the same SDK calls, the same
// answers, whichever driver boots the sandbox. The tests left out say why.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { findExecutable, qemuBinaryName } from "../../src/drivers/availability.js";
import { ROOT } from "../helpers/cli.js";

const skip = !findExecutable(qemuBinaryName()) && `${qemuBinaryName()} is not installed (apt-get install qemu-system-x86)`;

// Left out there, each marked `onlyNamespace` in its file: the seed's loop and runInVm's leftovers
// (they assert isolation.driver "namespace"), the memory limit (mem_mib 64: a VM needs 128, and
// oom_killed comes from the host's cgroup; a VM's own OOM is test/vm/qemu-driver.test.ts's), the
// sandbox's view of /proc/1, 32 concurrent runs (32 TCG VMs of 1 GiB on a 2-core host).

test("the task and VM integration tests pass on qemu under TCG", { skip, timeout: 900_000 }, () => {
  const files = ["test/integration/task.test.ts", "test/integration/vm.test.ts"].map((f) => join(ROOT, f));
  const r = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-concurrency=1", ...files], {
    cwd: ROOT,
    // NODE_TEST_CONTEXT would make the inner runner talk to ours in its own protocol instead of printing TAP.
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== "NODE_TEST_CONTEXT")), PYRO_DRIVER: "qemu" },
    encoding: "utf8",
    timeout: 880_000,
    maxBuffer: 64 << 20,
  });
  const failed = r.stdout.split("\n").filter((l) => /^not ok /.test(l));
  const passed = Number(/^# pass (\d+)/m.exec(r.stdout)?.[1] ?? 0);
  console.log(`on qemu: ${passed} passed, ${failed.length} failed`);
  assert.deepEqual(failed, [], r.stdout.slice(-6000) + r.stderr.slice(-2000));
  assert.ok(passed >= 20, `most of the tier ran (${passed} passed)`);
});
