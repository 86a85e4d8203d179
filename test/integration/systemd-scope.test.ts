/**
 * An unprivileged user without cgroup delegation gets limits from a systemd
 * user scope (src/drivers/systemd-scope.ts): a real run inside a real scope,
 * its limits said and held, and no unit left once it ended. Runs where pyro
 * is not root and the host's probe found a usable user manager; elsewhere it
 * is skipped with the probe's reason (root makes its own groups; a host
 * without a user manager has no scopes to make).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { userScopeSupport } from "../../src/drivers/systemd-scope.js";
import { cgroupLayout } from "../../src/drivers/cgroups.js";
import { testPyro, waitFor } from "../helpers/sandbox.js";

const support = process.getuid?.() === 0 ? null : userScopeSupport();
const skip =
  support === null
    ? "needs an unprivileged user with a systemd user manager (this run is root, which makes its own cgroups)"
    : cgroupLayout().flavor !== "none"
      ? `this user can make cgroups itself (${cgroupLayout().flavor}): scopes are not used`
      : support.usable
        ? false
        : `no usable systemd user scope here: ${support.reason}`;

const units = () => spawnSync("systemctl", ["--user", "list-units", "--all", "--plain", "--no-legend", "pyro-*"], { encoding: "utf8" }).stdout.trim();

test("a run in a systemd user scope: its limits said and held (an OOM kill), no unit left", { skip, timeout: 120_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const small = await pyro.runInVm({ environment: "busybox", mem_mib: 128, command: "sed -n 's/^0:://p' /proc/self/cgroup" });
  assert.equal(small.exit_code, 0, small.stderr);
  assert.equal(small.limits?.enforced_by.pids, support!.controllers.includes("pids") ? "cgroup-v2" : "rlimit", JSON.stringify(small.limits));
  assert.match(small.limits!.note!, /systemd user scope/);
  if (!support!.controllers.includes("memory")) return t.skip("the user manager has no memory controller: the OOM half does not apply");
  assert.equal(small.limits?.enforced_by.memory, "cgroup-v2");
  // 300 MiB held in one shell variable, under a 128 MiB limit: without the scope nothing would stop it.
  const hog = await pyro.runInVm({ environment: "busybox", mem_mib: 128, command: "x=$(head -c 314572800 /dev/zero | tr '\\0' a); echo survived ${#x}" });
  assert.equal(hog.oom_killed, true, JSON.stringify({ exit: hog.exit_code, out: hog.stdout.slice(0, 200), err: hog.stderr.slice(0, 200) }));
  assert.doesNotMatch(hog.stdout, /survived/);
  await waitFor(() => units() === "", 10_000, "the scopes to be collected");
});
