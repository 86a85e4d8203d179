// Hints in the words of the surface that shows them (src/core/hints.ts), and
// the agent's failure text made fit to print (runtime/sandbox-exec.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { PyroError } from "../../src/core/errors.js";
import { hintFor, withHintFor } from "../../src/core/hints.js";
import { agentText } from "../../src/runtime/sandbox-exec.js";
import { closestName } from "../../src/environments/catalog.js";
import { PROFILES } from "../../src/mcp/profiles.js";
import { EXIT_RUNTIME, EXIT_USAGE, exitCodeFor, inFlagWords } from "../../src/cli/common.js";
import { parseArgs } from "../../src/operations/parse.js";
import { runInVmArgs } from "../../src/operations/vm.js";
import { startServiceArgs } from "../../src/operations/task-service.js";
import { Command } from "commander";

// Runtime errors as the runtime writes them (CLI words).
const ERRORS = [
  new PyroError("unknown_task", "No task with id task_0.", { hint: "List tasks with `pyro task list`." }),
  new PyroError("unknown_vm", "No VM with id vm_0.", { hint: "It may have expired or been deleted; list VMs with `pyro vm list`." }),
  new PyroError("invalid_state", "VM vm_0 is stopped.", { hint: "Start it again with `pyro vm start`, or create a new one." }),
  new PyroError("unknown_environment", 'Unknown environment "x".', { hint: "Run `pyro env list` to see them, or `pyro env import NAME PATH` to add your own rootfs." }),
  new PyroError("driver_unavailable", "Cannot find bwrap on PATH.", { hint: "Install bubblewrap (apt-get install -y bubblewrap) and run `pyro doctor`." }),
  new PyroError("insufficient_disk", "Not enough space.", { hint: "Free some space (`pyro env prune --all` removes unused environments), or point PYRO_CACHE_DIR at a larger disk." }),
  new PyroError("sandbox_failed", "Cannot configure DNS.", { hint: "The environment needs /bin/sh; run without --network or use another environment." }),
  new PyroError("invalid_argument", "vm_run: Invalid arguments: mem_mib must be between 64 and 262144, got 1.", { hint: "Check the argument names and ranges in docs/public-contract.md.", details: { issues: [] } }),
];

test("a model's hints name only tools of its profile and never a CLI command or an SDK method", () => {
  for (const profile of ["vm-run", "task-core", "full"] as const) {
    const tools = new Set<string>(PROFILES[profile]);
    const others = PROFILES.full.filter((n) => !tools.has(n));
    for (const e of ERRORS) {
      const hint = hintFor(e, { kind: "tools", tools }) ?? "";
      assert.doesNotMatch(hint, /`pyro |\bpyro (env|vm|task|doctor) |(^|\s)--[a-z]|[a-z][A-Z]\w*\(\)/, `${profile} ${e.code}: ${hint}`);
      for (const t of others) assert.ok(!new RegExp(`\\b${t}\\b`).test(hint), `${profile} ${e.code} names ${t}: ${hint}`);
    }
  }
  const taskCore = new Set<string>(PROFILES["task-core"]);
  assert.match(hintFor(ERRORS[0]!, { kind: "tools", tools: taskCore })!, /task_list/);
  assert.match(hintFor(ERRORS[2]!, { kind: "tools", tools: new Set<string>(PROFILES.full) })!, /vm_start/);
  assert.match(hintFor(ERRORS[7]!, { kind: "tools", tools: taskCore })!, /tool's input schema/);
  assert.match(hintFor(ERRORS[6]!, { kind: "tools", tools: taskCore })!, /network: false/);
});

test("SDK hints name SDK methods and arguments", () => {
  const sdk = ERRORS.map((e) => hintFor(e, { kind: "sdk" }) ?? "");
  assert.equal(sdk[0], "List tasks with `listTasks()`.");
  assert.match(sdk[1]!, /`listVms\(\)`/);
  assert.match(sdk[2]!, /`startVm\(\)`/);
  assert.match(sdk[3]!, /`listEnvironments\(\)`.*`importEnvironment\(\{ name, path \}\)`/);
  assert.match(sdk[5]!, /`pruneEnvironments\(\{ all: true \}\)`/);
  assert.match(sdk[6]!, /without `network: true`/);
  for (const h of sdk) assert.doesNotMatch(h, /`pyro (env|vm|task) |--network/, h);
  // The rewritten error keeps code, message and details, and the original as its cause.
  const e = withHintFor(ERRORS[0]!, { kind: "sdk" });
  assert.ok(e instanceof PyroError);
  assert.equal(e.code, "unknown_task");
  assert.equal(e.message, ERRORS[0]!.message);
  assert.equal(e.cause, ERRORS[0]);
});

test("the agent's failure text cannot carry terminal escapes, line breaks or direction overrides", () => {
  assert.equal(agentText("cannot execute 'x': No such file or directory"), "cannot execute 'x': No such file or directory");
  assert.equal(agentText("cannot execute '\u001b]0;pwned\u0007\u001b[2J': x\nfake line"), "cannot execute '?]0;pwned??[2J': x?fake line");
  assert.equal(agentText("a\u202eb\u2066c\u009bd"), "a?b?c?d");
  assert.equal(agentText("x".repeat(1000)).length, 243);
});

test("did you mean: the same letters without the punctuation, else within two edits", () => {
  const valid = ["debian:12-base", "debian:12", "debian:12-build", "busybox"];
  assert.equal(closestName("debian12", valid), "debian:12");
  assert.equal(closestName("debian-12-build", valid), "debian:12-build");
  assert.equal(closestName("busybx", valid), "busybox");
  assert.equal(closestName("ubuntu:24.04", valid), null);
});

test("SDK hints name SDK methods where the runtime's hint names a tool (shells, services, files)", async () => {
  const { TOOL_METHODS } = await import("../../src/core/hints.js");
  const { Pyro } = await import("../../src/index.js");
  // Every tool has its method, and every method exists on the SDK: the table cannot go stale unnoticed.
  assert.deepEqual(Object.keys(TOOL_METHODS).sort(), [...PROFILES.full].sort());
  for (const method of Object.values(TOOL_METHODS)) assert.equal(typeof (Pyro.prototype as unknown as Record<string, unknown>)[method], "function", method);
  const e = new PyroError("unknown_shell", "No shell shell_0 is open in task task_0.", { hint: "task_status lists a task's shells; open one with task_shell_open." });
  assert.equal(hintFor(e, { kind: "sdk" }), "`statusTask()` lists a task's shells; open one with `openTaskShell()`.");
  // A model keeps the tool names.
  assert.equal(hintFor(e, { kind: "tools", tools: new Set(PROFILES["task-full"]) }), e.hint);
});

test("the CLI exits 2 for a caller's mistake, a missing --source-path among them (docs/public-contract.md), 125 for a runtime failure", () => {
  const exit = (code: string) => exitCodeFor(new PyroError(code as never, "x"));
  for (const code of ["invalid_argument", "unknown_environment", "unknown_task", "file_not_found", "target_exists", "source_not_found"]) assert.equal(exit(code), EXIT_USAGE, code);
  for (const code of ["driver_unavailable", "insufficient_disk"]) assert.equal(exit(code), EXIT_RUNTIME, code);
});

test("a value outside a choice says the choices and what was given, in the CLI as its flag", () => {
  let error: unknown;
  try {
    parseArgs(runInVmArgs, { command: "true", driver: "qemuu" });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PyroError);
  assert.match(error.message, /driver must be one of "auto", "firecracker", "qemu", "namespace", got "qemuu"/);
  const cli = inFlagWords(error, new Command("run").option("--driver <driver>"));
  assert.equal(cli.message, '--driver must be one of "auto", "firecracker", "qemu", "namespace", got "qemuu".');
});

test("a number past a bound without a named range says the bound and what was given", () => {
  const cli = new Command("run").option("--ready-timeout-seconds <n>").option("--max-restarts <n>");
  const base = { task_id: "task_000000000000", name: "web", command: "true" };
  for (const [args, text] of [
    [{ ...base, ready_timeout_seconds: 0 }, /^--ready-timeout-seconds must be at least 1, got 0\.$/],
    [{ ...base, ready_timeout_seconds: 601 }, /^--ready-timeout-seconds must be at most 600, got 601\.$/],
    [{ ...base, max_restarts: -1 }, /^--max-restarts must be at least 0, got -1\.$/],
  ] as const) {
    let error: unknown;
    try {
      parseArgs(startServiceArgs, args);
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof PyroError);
    assert.match(inFlagWords(error, cli).message, text);
  }
});
