/**
 * A qemu VM's passt ends with its VM, with no pyro process alive
 * (docs/reliability.md, "Network helpers"): a task's qemu killed from outside
 * (kill -9) after the CLI call that made the task has exited leaves no
 * process naming the sandbox's directory within a bound, no reap run. passt
 * holds one end of a socketpair whose other end only qemu keeps (--fd, which
 * implies --one-off), so it quits once qemu's end closes; this holds it to
 * that, next to the namespace driver's test (test/integration/net-helper.test.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { cleanupState, processesMentioning } from "../helpers/sandbox.js";
import { spawnPyro } from "../helpers/crash.js";
import { missingForVm } from "../helpers/vm-fixture.js";

const skip = missingForVm() ?? false;
/** passt quits as its socket closes (2-30 ms measured); the bound is this 2-core host's scheduling under a loaded run. */
const BOUND_MS = 2_500;

function pidsNamed(comm: RegExp, needle: string): number[] {
  return readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .filter((n) => {
      try {
        return comm.test(readFileSync(`/proc/${n}/comm`, "utf8").trim()) && readFileSync(`/proc/${n}/cmdline`, "utf8").includes(needle);
      } catch {
        return false;
      }
    })
    .map(Number);
}

test("a qemu task's passt ends within 2.5 s of its qemu killed from outside, with no pyro process alive", { skip, timeout: 300_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-nethelper-q-"));
  t.after(async () => {
    await cleanupState(new Pyro({ stateDir }), stateDir).catch(() => undefined);
  });
  const env = { PYRO_STATE_DIR: stateDir, PYRO_DAEMON: "0" };
  const created = spawnPyro(["task", "create", "--driver", "qemu", "--network", "busybox", "--id-only"], env);
  const r = await created.exited;
  assert.equal(r.code, 0, created.stderr());
  const dir = join(stateDir, "tasks", created.stdout().trim(), "sandbox");
  const [passt] = pidsNamed(/^passt/, `${dir}/`);
  const [qemu] = pidsNamed(/^qemu-system/, `${dir}/`);
  assert.ok(passt && qemu, "the task's qemu and passt run");
  assert.deepEqual(pidsNamed(/^node$/, "pyro.cjs").filter((p) => readFileSync(`/proc/${p}/environ`, "utf8").includes(`PYRO_STATE_DIR=${stateDir}\0`)), [], "no pyro process is there to see the VM die");

  process.kill(qemu, "SIGKILL");
  const t0 = Date.now();
  let left = processesMentioning(`${dir}/`);
  while (left.length && Date.now() - t0 < BOUND_MS) {
    await new Promise((res) => setTimeout(res, 20));
    left = processesMentioning(`${dir}/`);
  }
  t.diagnostic(`${left.length} processes named the sandbox directory ${Date.now() - t0} ms after qemu was killed`);
  assert.deepEqual(left.map((p) => `${p.pid} ${p.cmd}`), [], `within ${BOUND_MS} ms of qemu's kill -9, passt, the vmm and the jail are gone`);
});
