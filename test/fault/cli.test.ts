import { test } from "node:test";
import { spawnPyro } from "../helpers/crash.js";
import { ENV, killRound, pick, randomDelay, Tally, World } from "./harness.js";

/**
 * kill -9 of the CLI running in-process (PYRO_DAEMON=0): at every named
 * point of create, boot (with and without network), exec, push, delete, and
 * at random moments of each operation.
 */

const REPEAT = Number(process.env.PYRO_FAULT_REPEAT ?? 3);
const RANDOM_ROUNDS = Number(process.env.PYRO_FAULT_RANDOM ?? 90);

const isRoot = process.getuid?.() === 0;
const BOOT = ["boot:groups", "boot:spawned", "boot:info", "boot:held", "boot:ready"];
const BOOT_NET = ["boot:spawned", "pasta:forked", "boot:held", "boot:ready"];

test("kill -9 of the in-process CLI at named points", { timeout: 600_000 }, async (t) => {
  const tally = new Tally("cli in-process, targeted");
  const world = new World(t);
  const cli = (args: string[], point: string) => () => spawnPyro(args, world.env({ PYRO_TEST_PAUSE_AT: point }));
  const targeted = { targeted: true } as const;
  for (let rep = 0; rep < REPEAT; rep++) {
    // boot:disk: the task's disk image made, not yet mounted (as root only: unprivileged there is no image).
    for (const point of ["task-create:record", ...(isRoot ? ["boot:disk"] : []), ...BOOT, "task-create:booted", "task-create:seeded"]) {
      await killRound(tally, world, "cli task create", point, cli(["task", "create", ENV, "--source-path", world.src, "--id-only"], point), targeted);
    }
    for (const point of BOOT_NET) await killRound(tally, world, "cli task create --network", point, cli(["task", "create", ENV, "--network", "--id-only"], point), targeted);
    for (const point of BOOT) await killRound(tally, world, "cli run", point, cli(["run", ENV, "--", "true"], point), targeted);
    for (const point of BOOT_NET) await killRound(tally, world, "cli run --network", point, cli(["run", "--network", ENV, "--", "true"], point), targeted);
    // boot:disk comes on every boot of a task whose layer is a disk image (as root): mounted next, at a restart too.
    for (const point of isRoot ? ["boot:disk", ...BOOT] : BOOT) {
      const id = await world.task();
      await world.check();
      world.stopSandbox(id);
      await killRound(tally, world, "cli task exec (boots)", point, cli(["task", "exec", id, "--", "true"], point), targeted);
    }
    for (const point of ["boot:spawned", "boot:ready"]) {
      const id = await world.task();
      await world.check();
      world.stopSandbox(id);
      const { next } = world.bump();
      await killRound(tally, world, "cli task sync push (boots)", point, cli(["task", "sync", "push", id, world.src], point), targeted, { pushed: { id, next } });
    }
    for (const point of ["task-delete:marked", "task-delete:released", "task-delete:renamed"]) {
      const id = await world.task();
      await world.check();
      await killRound(tally, world, "cli task delete", point, cli(["task", "delete", id], point), targeted);
    }
    for (const point of ["boot:ready", "vm-start:recorded", "vm-delete:marked", "vm-delete:released"]) {
      const vm = await world.pyro.createVm({ environment: ENV });
      const verb = point.startsWith("vm-delete") ? "delete" : "start";
      if (verb === "delete") await world.pyro.startVm({ vm_id: vm.vm_id });
      await killRound(tally, world, `cli vm ${verb}`, point, cli(["vm", verb, vm.vm_id], point), targeted);
      // A VM whose start was cut short is whole but stopped or started: delete it for the next round.
      for (const v of (await world.pyro.listVms()).vms) await world.pyro.deleteVm({ vm_id: v.vm_id });
    }
    await world.prune();
  }
  tally.finish();
});

test("kill -9 of the in-process CLI at random moments", { timeout: 600_000 }, async (t) => {
  const tally = new Tally("cli in-process, random");
  const world = new World(t);
  const all = ["create", "create --network", "run", "run --network", "exec", "exec (boots)", "push", "push (boots)", "delete"] as const;
  // PYRO_FAULT_OPS="exec (boots),push" narrows the rounds to those operations (to chase one failure).
  const only = process.env.PYRO_FAULT_OPS?.split(",").map((s) => s.trim());
  const ops = only ? all.filter((o) => only.includes(o)) : all;
  for (let round = 0; round < RANDOM_ROUNDS; round++) {
    const op = pick(ops);
    const env = world.env();
    let args: string[];
    let expect: Parameters<World["check"]>[0] = {};
    if (op.startsWith("create")) {
      args = ["task", "create", ENV, "--source-path", world.src, "--id-only", ...(op.endsWith("network") ? ["--network"] : [])];
    } else if (op.startsWith("run")) {
      args = ["run", ...(op.endsWith("network") ? ["--network"] : []), ENV, "--", "sh", "-c", "echo hi"];
    } else {
      const id = await world.task();
      await world.check();
      if (op.endsWith("(boots)")) world.stopSandbox(id);
      if (op.startsWith("exec")) args = ["task", "exec", id, "--", "sh", "-c", "echo x >> /workspace/log; sleep 0.2"];
      else if (op.startsWith("push")) {
        const { next } = world.bump();
        expect = { pushed: { id, next } };
        args = ["task", "sync", "push", id, world.src];
      } else args = ["task", "delete", id];
    }
    const delayMs = randomDelay(`cli ${op}`);
    await killRound(tally, world, `cli ${op}`, "random", () => spawnPyro(args, env), { targeted: false, delayMs }, expect);
    await world.prune();
  }
  tally.finish();
});
