// The workspace file API (test/integration/task-files.test.ts) again on qemu
// under TCG: the same guest program (pyro-agent files) through the same exec
// channel, in a VM with its own kernel and disk.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { findExecutable, qemuBinaryName } from "../../src/drivers/availability.js";
import { ROOT } from "../helpers/cli.js";

const skip = !findExecutable(qemuBinaryName()) && `${qemuBinaryName()} is not installed (apt-get install qemu-system-x86)`;

test("the file API's integration tests pass on qemu under TCG", { skip, timeout: 900_000 }, () => {
  const r = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-concurrency=1", join(ROOT, "test/integration/task-files.test.ts")], {
    cwd: ROOT,
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== "NODE_TEST_CONTEXT")), PYRO_DRIVER: "qemu" },
    encoding: "utf8",
    timeout: 880_000,
    maxBuffer: 64 << 20,
  });
  const failed = r.stdout.split("\n").filter((l) => /^not ok /.test(l));
  const passed = Number(/^# pass (\d+)/m.exec(r.stdout)?.[1] ?? 0);
  console.log(`on qemu: ${passed} passed, ${failed.length} failed`);
  assert.deepEqual(failed, [], r.stdout.slice(-6000) + r.stderr.slice(-2000));
  // Every top-level test of the file, counted from its source (a test added there is expected here too).
  const declared = readFileSync(join(ROOT, "test/integration/task-files.test.ts"), "utf8").match(/^test\(/gm)?.length ?? 0;
  assert.ok(declared >= 10, `task-files.test.ts declares ${declared} tests`);
  assert.equal(passed, declared, "every test of the file ran");
});
