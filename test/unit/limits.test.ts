/**
 * LimitsInfo: each limit with what keeps it, and the one note every front
 * door prints, made from the same fields (so they cannot disagree).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildLimits } from "../../src/drivers/limits.js";
import { limitsInfo } from "../../src/operations/schemas.js";

const base = { mem_mib: 1024, vcpu_count: 1, pids_max: 1024, nproc_rlimit: true, disk_mib: 8192, shm_mib: 512 } as const;

test("with cgroups: every limit is kept, by the cgroup and the image", () => {
  const l = buildLimits({ ...base, cgroups: "cgroup-v2", reason: null, disk: "ext4-image" });
  assert.deepEqual(l.enforced_by, { memory: "cgroup-v2", cpu: "cgroup-v2", pids: "cgroup-v2", disk: "ext4-image", shm: "tmpfs" });
  assert.equal(l.mechanism, "cgroup-v2");
  assert.equal(l.mem_mib, 1024);
  assert.equal(l.disk_mib, 8192);
  assert.equal(l.note, "memory 1024 MiB and 1 vCPU by cgroup v2; 1024 processes by cgroup v2 and RLIMIT_NPROC; disk 8192 MiB by an ext4 image of that size (ENOSPC inside); /dev/shm and /run 512 MiB each by tmpfs size");
  limitsInfo.parse(l);
});

test("without cgroups: memory and CPU are null and said to be unlimited; processes by RLIMIT_NPROC; the disk checked", () => {
  const l = buildLimits({ ...base, cgroups: "none", reason: "cgroup v1 controllers missing or not writable by this user: memory, pids, cpu", disk: "checked" });
  assert.deepEqual(l.enforced_by, { memory: "none", cpu: "none", pids: "rlimit", disk: "checked", shm: "tmpfs" });
  assert.equal(l.mechanism, "none");
  assert.equal(l.mem_mib, null);
  assert.equal(l.vcpu_count, null);
  assert.equal(l.pids_max, 1024);
  assert.equal(l.disk_mib, 8192);
  assert.match(l.note!, /^memory and CPU not limited \(cgroup v1 controllers missing/);
  assert.match(l.note!, /1024 processes by RLIMIT_NPROC;/);
  assert.match(l.note!, /disk 8192 MiB by pyro's check before each exec and push \(not the kernel/);
  assert.doesNotMatch(l.note!, /cgroup v[12] and|by cgroup/);
  limitsInfo.parse(l);
});

test("a run's tmpfs layer says where its pages go", () => {
  const withMem = buildLimits({ ...base, disk_mib: 2048, cgroups: "cgroup-v1", reason: null, disk: "tmpfs" });
  assert.match(withMem.note!, /disk 2048 MiB by a tmpfs of that size \(ENOSPC inside; in RAM, counted in the memory limit\)/);
  const without = buildLimits({ ...base, disk_mib: 2048, cgroups: "none", reason: null, disk: "tmpfs" });
  assert.match(without.note!, /in RAM, which no memory limit caps here/);
});

test("a limit nothing keeps is null and said so", () => {
  const l = buildLimits({ ...base, nproc_rlimit: false, shm_mib: null, cgroups: "none", reason: null, disk: "none" });
  assert.deepEqual(l.enforced_by, { memory: "none", cpu: "none", pids: "none", disk: "none", shm: "none" });
  assert.equal(l.pids_max, null);
  assert.equal(l.disk_mib, null);
  assert.equal(l.note, "memory and CPU not limited; processes not limited; disk not limited");
});
