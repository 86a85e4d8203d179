import { test } from "node:test";
import assert from "node:assert/strict";
import { vmmArgv, VMM_PASS_FD, VMM_PASS_FD2, VMM_READY_FD } from "../../src/drivers/vm/supervisor.js";
import { JAIL_BLOCK_FD, JAIL_INFO_FD } from "../../src/drivers/vm/jail.js";

/** An option's value in argv (before the VMM's `--`), or undefined. */
const value = (argv: string[], opt: string) => {
  const end = argv.indexOf("--");
  const i = argv.slice(0, end).indexOf(opt);
  return i < 0 ? undefined : argv[i + 1];
};
const base = { agent: "/a/pyro-agent", guest: "fd:4", console: "/d/vm/console.log", bootTimeoutMs: 60_000, deadline: null, dieWithParent: false };

test("the supervisor's argv: its options before `--`, the VMM's argv after it, untouched", () => {
  const argv = vmmArgv({ ...base, listen: "/d/vm/run/agent.sock", deadline: 1_900_000_000, dieWithParent: true }, ["/usr/bin/qemu", "--", "-x"]);
  assert.deepEqual(argv.slice(0, 2), ["/a/pyro-agent", "vmm"]);
  assert.deepEqual(argv.slice(argv.indexOf("--")), ["--", "/usr/bin/qemu", "--", "-x"]);
  assert.equal(value(argv, "--listen"), "/d/vm/run/agent.sock");
  assert.equal(value(argv, "--guest"), "fd:4");
  assert.equal(value(argv, "--ready-fd"), String(VMM_READY_FD));
  assert.equal(value(argv, "--console"), "/d/vm/console.log");
  assert.equal(value(argv, "--boot-timeout-ms"), "60000");
  assert.equal(value(argv, "--deadline"), "1900000000");
  assert.ok(argv.includes("--die-with-parent"));
  assert.ok(!argv.includes("--prepare-snapshot") && !argv.includes("--pass-fd"));
});

test("a snapshot's template serves nothing; a VM with network gets the pass fd, which is none of bwrap's or the ready fd", () => {
  const template = vmmArgv({ ...base, prepareSnapshot: true, dieWithParent: true }, ["q"]);
  assert.ok(template.includes("--prepare-snapshot"));
  assert.equal(value(template, "--listen"), undefined);
  assert.equal(value(template, "--deadline"), undefined);
  const net = vmmArgv({ ...base, listen: "/s", pass: 1 }, ["q"]);
  assert.equal(value(net, "--pass-fd"), String(VMM_PASS_FD));
  assert.equal(net.filter((a) => a === "--pass-fd").length, 1);
  assert.ok(![VMM_READY_FD, JAIL_INFO_FD, JAIL_BLOCK_FD, 0, 1, 2].includes(VMM_PASS_FD));
  assert.ok(!net.includes("--die-with-parent"));
  // A restore with network: its snapshot and passt's end, at two fds none of which is another's.
  const both = vmmArgv({ ...base, listen: "/s", pass: 2 }, ["q"]);
  const end = both.indexOf("--");
  assert.deepEqual(both.slice(0, end).flatMap((a, i) => (a === "--pass-fd" ? [both[i + 1]] : [])), [String(VMM_PASS_FD), String(VMM_PASS_FD2)]);
  assert.ok(![VMM_READY_FD, JAIL_INFO_FD, JAIL_BLOCK_FD, VMM_PASS_FD, 0, 1, 2].includes(VMM_PASS_FD2));
});
