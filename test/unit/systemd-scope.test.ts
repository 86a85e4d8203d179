/**
 * Limits through a systemd user scope (src/drivers/systemd-scope.ts): what
 * the host probe's output means, the systemd-run command a sandbox starts
 * with, and how a scope that holds only some limits is said. The real
 * scope is exercised in test/integration/systemd-scope.test.ts where a user
 * manager exists.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseProbe, scopeCommand, scopeProperties } from "../../src/drivers/systemd-scope.js";
import { buildLimits } from "../../src/drivers/limits.js";
import { limitsInfo } from "../../src/operations/schemas.js";

test("the probe: scopes are used only with fds passed, a scope's own group and a controller", () => {
  assert.deepEqual(parseProbe("fd3\ncgroup /user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope\ncontrollers cpu memory pids\n"), {
    usable: true,
    controllers: ["cpu", "memory", "pids"],
    reason: null,
  });
  assert.match(parseProbe("cgroup /user.slice/x/run-r1.scope\ncontrollers memory pids\n").reason!, /does not pass file descriptors/);
  assert.match(parseProbe("fd3\ncgroup /user.slice/user-1000.slice/session-2.scope/../x\ncontrollers memory\n").reason!, /did not get a cgroup v2 group of its own/);
  assert.match(parseProbe("fd3\ncgroup /\ncontrollers memory\n").reason!, /did not get a cgroup v2 group of its own/);
  assert.match(parseProbe("fd3\ncgroup /a/run-r1.scope\ncontrollers io\n").reason!, /no memory, pids or cpu controller/);
  assert.deepEqual(parseProbe("fd3\ncgroup /a/run-r1.scope\ncontrollers pids\n").controllers, ["pids"]);
});

test("the command: systemd-run execs bwrap in a scope named after the sandbox, with the limits its controllers allow", () => {
  const limits = { mem_mib: 256, vcpu_count: 2, pids_max: 512 };
  const c = scopeCommand("task_0123456789ab", limits, ["memory", "pids", "cpu"], "/usr/bin/bwrap", ["--unshare-pid", "x"]);
  assert.equal(c.file, "systemd-run");
  assert.deepEqual(c.args.slice(0, 4), ["--user", "--scope", "--quiet", "--collect"]);
  assert.match(c.args[4]!, new RegExp(`^--unit=pyro-task-0123456789ab-${process.pid}-[0-9a-z]+\\.scope$`));
  assert.deepEqual(c.args.slice(5), ["-p", "MemoryMax=256M", "-p", "MemorySwapMax=0", "-p", "TasksMax=512", "-p", "CPUQuota=200%", "--", "/usr/bin/bwrap", "--unshare-pid", "x"]);
  // A property for a controller the scope lacks would only be ignored by systemd: it is not asked for.
  assert.deepEqual(scopeProperties(limits, ["pids"]), ["-p", "TasksMax=512"]);
});

test("a scope with only the pids controller: processes by cgroup v2, memory and CPU said to be unlimited", () => {
  const l = buildLimits({ mem_mib: 1024, vcpu_count: 1, pids_max: 1024, nproc_rlimit: true, disk_mib: 2048, shm_mib: 512, disk: "tmpfs", cgroups: "cgroup-v2", reason: null, holds: { memory: false, pids: true, cpu: false }, via_scope: true });
  assert.deepEqual(l.enforced_by, { memory: "none", cpu: "none", pids: "cgroup-v2", disk: "tmpfs", shm: "tmpfs" });
  assert.equal(l.mem_mib, null);
  assert.equal(l.vcpu_count, null);
  assert.equal(l.pids_max, 1024);
  assert.match(l.note!, /^memory and CPU not limited; 1024 processes by cgroup v2 and RLIMIT_NPROC;/);
  assert.match(l.note!, /the group is a systemd user scope \(systemd-run --user --scope\)$/);
  limitsInfo.parse(l);
  const memOnly = buildLimits({ mem_mib: 512, vcpu_count: 1, pids_max: 64, nproc_rlimit: true, disk_mib: 2048, shm_mib: 256, disk: "tmpfs", cgroups: "cgroup-v2", reason: null, holds: { memory: true, pids: false, cpu: false }, via_scope: true });
  assert.deepEqual(memOnly.enforced_by, { memory: "cgroup-v2", cpu: "none", pids: "rlimit", disk: "tmpfs", shm: "tmpfs" });
  assert.match(memOnly.note!, /^memory 512 MiB by cgroup v2; CPU not limited; 64 processes by RLIMIT_NPROC;/);
});
