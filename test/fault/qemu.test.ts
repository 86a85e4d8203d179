import { test } from "node:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { findExecutable, qemuBinaryName } from "../../src/drivers/availability.js";
import { cacheDir } from "../../src/util/paths.js";
import { hostProcesses, spawnPyro } from "../helpers/crash.js";
import { ENV, killRound, pick, random, Tally, World } from "./harness.js";

/**
 * kill -9 of the in-process CLI (PYRO_DAEMON=0) driving qemu VMs under TCG:
 * at the named points of a VM's boot (cold for tasks, restored from a
 * snapshot for one-shot runs, with network or not), with and without
 * network (passt), of a task's create, exec and delete, and at random
 * moments of each. After every kill
 * the harness's checks (no process, mount, loop device, cgroup, lock,
 * directory or temporary left; records parse; tasks usable at one version)
 * plus the VM's own: no qemu, supervisor or passt of the state directory
 * that no record names, no snapshot temp file in the cache. Once per point
 * (a TCG boot costs seconds), so the tier's time grows by a few minutes.
 */

const qemu = findExecutable(qemuBinaryName());
const skip = (!qemu && `${qemuBinaryName()} is not installed (apt-get install qemu-system-x86)`) || (!findExecutable("passt") && "passt is not installed (apt-get install passt)");
const RANDOM_ROUNDS = Number(process.env.PYRO_FAULT_QEMU_RANDOM ?? 12);
// passt:spawned: passt started and noted, its socket not yet seen; boot:spawned: the jail's bwrap spawned, before
// it reported the supervisor; boot:info: the VM answered (ready), before the record names it; boot:ready: the record names it.
const BOOT = ["boot:spawned", "boot:info", "boot:ready"];
const BOOT_NET = ["passt:spawned", "boot:spawned", "boot:info", "boot:ready"];

/** What a VM could leave that the harness's generic checks do not look for: snapshot temp files in the cache. */
function vmDebris(): string[] {
  const dir = join(cacheDir(), "environments", ENV, "snapshots");
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const makers = hostProcesses().filter((p) => p.argv.some((a) => a.includes("--prepare-snapshot")));
  // A temp file of a live maker (another test of the tier) is its own.
  return makers.length ? [] : names.filter((n) => /\.tmp-\d+$/.test(n)).map((n) => `snapshot temp file left: ${join(dir, n)}`);
}

/** The harness's round, then the VM's own after-check. */
async function vmRound(tally: Tally, world: World, kind: string, point: string, start: Parameters<typeof killRound>[4], how: Parameters<typeof killRound>[5]): Promise<void> {
  await killRound(tally, world, kind, point, start, how);
  const debris = vmDebris();
  if (debris.length) tally.kill(kind, `${point} (cache)`, debris);
}

test("kill -9 of the in-process CLI at named points of qemu VMs (boot, restore, network, exec, delete)", { skip, timeout: 900_000 }, async (t) => {
  const tally = new Tally("cli in-process on qemu, targeted");
  const world = new World(t, { driver: "qemu" });
  const cli = (args: string[], point: string) => () => spawnPyro(args, world.env({ PYRO_TEST_PAUSE_AT: point }));
  const targeted = { targeted: true } as const;
  // A one-shot run restores the snapshot of its shape (with network, a shape of its own): each made once here
  // (not killed: test/vm/snapshot.test.ts kills its making), so every killed run below is a restore.
  await world.pyro.runInVm({ environment: ENV, command: ["true"] });
  await world.pyro.runInVm({ environment: ENV, command: ["true"], network: true });
  for (const point of BOOT) await vmRound(tally, world, "cli run (restore)", point, cli(["run", ENV, "--", "true"], point), targeted);
  // passt:spawned here is between the restore's passt spawn and its jail's, the snapshot's fd open in pyro.
  for (const point of BOOT_NET) await vmRound(tally, world, "cli run --network (restore)", point, cli(["run", "--network", ENV, "--", "true"], point), targeted);
  for (const point of ["task-create:record", ...BOOT, "task-create:booted", "task-create:seeded"]) {
    await vmRound(tally, world, "cli task create", point, cli(["task", "create", ENV, "--source-path", world.src, "--id-only"], point), targeted);
    await world.prune();
  }
  for (const point of BOOT_NET) {
    await vmRound(tally, world, "cli task create --network", point, cli(["task", "create", ENV, "--network", "--id-only"], point), targeted);
    await world.prune();
  }
  for (const point of ["boot:spawned", "boot:ready"]) {
    const id = await world.task();
    await world.check();
    world.stopSandbox(id);
    await vmRound(tally, world, "cli task exec (boots)", point, cli(["task", "exec", id, "--", "true"], point), targeted);
  }
  for (const point of ["task-delete:marked", "task-delete:released", "task-delete:renamed"]) {
    const id = await world.task();
    await world.check();
    await vmRound(tally, world, "cli task delete", point, cli(["task", "delete", id], point), targeted);
  }
  await world.prune();
  tally.finish();
});

test("kill -9 of the in-process CLI at random moments of qemu VMs", { skip, timeout: 900_000 }, async (t) => {
  const tally = new Tally("cli in-process on qemu, random");
  const world = new World(t, { driver: "qemu" });
  const ops = ["run", "run --network", "create", "create --network", "exec", "exec (boots)", "delete"] as const;
  for (let round = 0; round < RANDOM_ROUNDS; round++) {
    const op = pick(ops);
    let args: string[];
    if (op.startsWith("create")) {
      args = ["task", "create", ENV, "--source-path", world.src, "--id-only", ...(op.endsWith("network") ? ["--network"] : [])];
    } else if (op.startsWith("run")) {
      args = ["run", ...(op.endsWith("network") ? ["--network"] : []), ENV, "--", "sh", "-c", "echo hi"];
    } else {
      const id = await world.task();
      await world.check();
      if (op.endsWith("(boots)")) world.stopSandbox(id);
      args = op.startsWith("exec") ? ["task", "exec", id, "--", "sh", "-c", "echo x >> /workspace/log; sleep 0.2"] : ["task", "delete", id];
    }
    // Anywhere in a TCG boot and its command (cold ~2-4 s here, a restore, with network or not, well under one;
    // a shape's first run makes its snapshot, ~3.5 s): reproducible from the seed.
    const delayMs = Math.floor(random() * (op.startsWith("run") ? 1500 : 4000));
    await vmRound(tally, world, `qemu ${op}`, "random", () => spawnPyro(args, world.env()), { targeted: false, delayMs });
    await world.prune();
  }
  tally.finish();
});
