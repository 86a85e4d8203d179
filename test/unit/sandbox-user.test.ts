/**
 * The uid a root pyro runs sandboxes as (src/util/sandbox-user.ts): never an
 * account's, never something that is not an unprivileged uid.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_SANDBOX_UID, sandboxOwner } from "../../src/util/sandbox-user.js";

const isRoot = process.getuid?.() === 0;

test("as root, sandboxes run as the dedicated uid by default", { skip: !isRoot && "only a root pyro maps sandboxes to another uid" }, () => {
  assert.deepEqual(sandboxOwner({}), { uid: DEFAULT_SANDBOX_UID, gid: DEFAULT_SANDBOX_UID });
});

test("as root, a PYRO_SANDBOX_UID that is not an unprivileged uid is refused with what to do", { skip: !isRoot && "only a root pyro maps sandboxes to another uid" }, () => {
  for (const bad of ["0", "-1", "abc", "4294967295", "1e3", " 5"]) {
    assert.throws(() => sandboxOwner({ PYRO_SANDBOX_UID: bad }), (e: { code?: string; message: string; hint?: string }) => e.code === "invalid_argument" && e.message.includes(JSON.stringify(bad).slice(1, -1)) && /unset it/.test(e.hint ?? ""), bad);
  }
});

test("as root, a PYRO_SANDBOX_UID an account already uses is refused (nobody: 65534)", { skip: !isRoot && "only a root pyro maps sandboxes to another uid" }, () => {
  assert.throws(() => sandboxOwner({ PYRO_SANDBOX_UID: "65534" }), (e: { code?: string; message: string }) => e.code === "driver_unavailable" && /already used on this host \(by nobody/.test(e.message));
});

test("as an unprivileged user, a sandbox's root is that user (no owner to map)", { skip: isRoot && "runs as root here" }, () => {
  assert.equal(sandboxOwner({}), null);
});
