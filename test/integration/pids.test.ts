/**
 * The processes of all sandboxes together, against the host's pid space: a
 * sandbox holds at most 1024, but a model may make as many sandboxes as it
 * likes, and on a host whose kernel.pid_max is 32768 (the kernel's default,
 * this CI host's) 32 fork bombs took every pid of the host. The group that
 * holds every sandbox's group is capped at half of what the host can number
 * (docs/security.md, "Resources").
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { cgroupLayout, sharedPidsMax } from "../../src/drivers/cgroups.js";
import { testPyro } from "../helpers/sandbox.js";

const layout = cgroupLayout();
const noGroups = layout.flavor === "none" ? `no cgroups pyro can make here (${layout.reason})` : false;

function hostPids(): number {
  const read = (name: string) => Number(readFileSync(`/proc/sys/kernel/${name}`, "utf8").trim());
  return Math.min(read("pid_max"), read("threads-max"));
}

test("the group of every sandbox's groups holds at most half the host's pids; a sandbox still forks", { skip: noGroups, timeout: 60_000 }, async (t) => {
  const { pyro } = testPyro(t, { driver: "namespace" });
  const r = await pyro.runInVm({ environment: "busybox", command: "for i in 1 2 3 4 5 6 7 8; do sleep 0.1 & done; wait; echo forked" });
  assert.equal(r.stdout.trim(), "forked", r.stderr);
  assert.equal(sharedPidsMax(), Math.floor(hostPids() / 2));
  const base = layout.flavor === "v1" ? join(layout.parents.pids!, "pyro-mcp") : join(layout.parents.unified!, "pyro-mcp");
  const max = readFileSync(join(base, "pids.max"), "utf8").trim();
  assert.notEqual(max, "max", `${base}/pids.max is unlimited: the sandboxes together may take every pid of the host`);
  assert.ok(Number(max) <= Math.floor(hostPids() / 2), `${base}/pids.max is ${max}, more than half of the host's ${hostPids()}`);
});
