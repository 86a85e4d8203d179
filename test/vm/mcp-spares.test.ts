/**
 * Warm spares in `pyro mcp serve`, through the official MCP client over
 * stdio: after a vm_run the server boots (qemu: restores) a spare of that
 * shape, the next vm_run of the shape is served by it (the server's log
 * names the spare, whose id is the result's vm_id) and is faster; the spares
 * die with the server. For the namespace and qemu drivers.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { missingForVm } from "../helpers/vm-fixture.js";
import { mcpFixture, stdioClient } from "../helpers/mcp.js";
import { processesMentioning, waitFor } from "../helpers/sandbox.js";

const vmSkip = missingForVm() ?? false;

interface Run {
  vm_id: string;
  exit_code: number;
  stdout: string;
}

for (const driver of ["namespace", "qemu"] as const) {
  test(`mcp serve (${driver}): the second vm_run of a shape is served by the spare the first left; spares die with the server`, { skip: driver === "qemu" ? vmSkip : false, timeout: 240_000 }, async (t) => {
    const fx = mcpFixture(t);
    // MCP's vm_run has no driver argument: the server's default decides.
    fx.env.PYRO_DRIVER = driver;
    delete fx.env.PYRO_MCP_SPARES; // the server's default: spares on
    const { client, stderr } = await stdioClient(t, fx, ["--profile", "vm-run"]);
    const args = { environment: "busybox", command: "echo hi", mem_mib: 256 };
    const call = async () => {
      const t0 = performance.now();
      const r = await client.callTool({ name: "vm_run", arguments: args });
      assert.ok(!r.isError, JSON.stringify(r.content));
      return { run: r.structuredContent as unknown as Run, ms: performance.now() - t0 };
    };
    const first = await call();
    assert.equal(first.run.stdout, "hi\n");
    assert.doesNotMatch(stderr(), /served by spare/, "the first run had no spare");
    await waitFor(() => /spare \S+ ready/.test(stderr()), 120_000, `a spare to be ready (${stderr()})`);
    const spareId = /spare (\S+) ready/.exec(stderr())![1]!;
    const second = await call();
    assert.equal(second.run.stdout, "hi\n");
    assert.equal(second.run.vm_id, spareId, "the second run ran in the spare");
    assert.match(stderr(), new RegExp(`vm_run served by spare ${spareId}`));
    console.log(`# ${driver}: vm_run without a spare ${first.ms.toFixed(0)} ms, through a spare ${second.ms.toFixed(0)} ms`);
    assert.ok(second.ms < first.ms, "a run through a spare is faster than one that starts its own sandbox");
    // The second run's replacement, then the server's exit: every spare goes with it.
    await waitFor(() => (stderr().match(/spare \S+ ready/g) ?? []).length >= 2, 120_000, "the replacement spare");
    await client.close();
    await waitFor(() => processesMentioning(fx.stateDir).length === 0, 20_000, "the spares to die with the server");
  });
}
