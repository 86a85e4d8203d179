/**
 * Shells in tasks, as a user of the SDK drives them: real sandboxes (busybox,
 * namespace driver), the real agent's PTY, every error path, and what a
 * kill -9 of the process holding a shell leaves: the shell, running in the
 * task, for the next process to read (shells belong to the task).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { PyroError } from "../../src/core/errors.js";
import { SHELL_RING_BYTES } from "../../src/runtime/shells.js";
import { testPyro, waitFor } from "../helpers/sandbox.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const code = (e: unknown) => (e instanceof PyroError ? e.code : String(e));

/** Host processes whose argv is exactly this (a marker command started inside a sandbox). */
function hostProcessesRunning(argv: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ").trim() === argv) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}

async function task(pyro: Pyro): Promise<string> {
  return (await pyro.createTask({ environment: "busybox" })).task_id;
}

test("a shell keeps cwd, variables and background jobs between calls; reads wait for text or idle output", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const sh = await pyro.openTaskShell({ task_id, rows: 30, cols: 100 });
  assert.match(sh.shell_id, /^shell_[0-9a-f]{12}$/);
  assert.equal(sh.state, "running");
  assert.equal(sh.cwd, "/workspace");
  const id = { task_id, shell_id: sh.shell_id };
  const prompt = await pyro.readTaskShell({ ...id, wait_for: "# ", plain: true });
  assert.equal(prompt.reason, "pattern");
  assert.match(prompt.output, /\/workspace # $/);

  await pyro.writeTaskShell({ ...id, input: "cd /tmp && export GREETING=hello && sleep 31337 &\n" });
  await pyro.writeTaskShell({ ...id, input: "cd /tmp; GREETING=hello; stty size\n" });
  const r1 = await pyro.readTaskShell({ ...id, wait_idle_ms: 400, plain: true });
  assert.equal(r1.reason, "idle");
  assert.match(r1.output, /^30 100$/m, "the terminal has the size it was opened with");

  // Another call, same shell: the state is still there.
  await pyro.writeTaskShell({ ...id, input: "echo \"$(pwd) $GREETING\"; jobs\n" });
  const r2 = await pyro.readTaskShell({ ...id, wait_for: "Running", plain: true });
  assert.match(r2.output, /^\/tmp hello$/m);
  assert.match(r2.output, /sleep 31337/);
  assert.equal(r2.dropped_bytes, 0);

  // Reads return only what is new; a read with nothing new and no wait returns at once.
  const empty = await pyro.readTaskShell({ ...id, wait_idle_ms: 200 });
  assert.equal(empty.reason, "idle");
  assert.ok(empty.bytes <= 16, `little or nothing new: ${JSON.stringify(empty.output)}`);
  const none = await pyro.readTaskShell(id);
  assert.equal(none.reason, "immediate");

  // The raw mode keeps the terminal's bytes; plain strips them.
  // (The terminal echoes input: wait for text the input does not contain.)
  await pyro.writeTaskShell({ ...id, input: "printf '\\033[1;31m%s%s\\033[0m\\n' col our\n" });
  const raw = await pyro.readTaskShell({ ...id, wait_for: "colour" });
  assert.ok(raw.output.includes("\x1b[1;31mcolour\x1b[0m"), JSON.stringify(raw.output));

  // Resize: the program in the terminal sees the new size.
  const resized = await pyro.resizeTaskShell({ ...id, rows: 50, cols: 132 });
  assert.deepEqual([resized.rows, resized.cols], [50, 132]);
  await pyro.writeTaskShell({ ...id, input: "stty size\n" });
  assert.match((await pyro.readTaskShell({ ...id, wait_for: "50 132", plain: true })).output, /^50 132$/m);

  // SIGINT goes to the foreground job, through the terminal, and the shell lives on.
  await pyro.writeTaskShell({ ...id, input: "sleep 60\n" });
  await new Promise((r) => setTimeout(r, 300));
  const sig = await pyro.signalTaskShell({ ...id, signal: "SIGINT" });
  assert.equal(sig.via, "terminal");
  // (A shell drops the rest of a command list whose job died of SIGINT: ask for the status on its own line.)
  await pyro.writeTaskShell({ ...id, input: "echo status=$?\n" });
  const after = await pyro.readTaskShell({ ...id, wait_for: "status=130", plain: true, timeout_ms: 5000 });
  assert.equal(after.reason, "pattern", `the interrupted sleep reports 130: ${JSON.stringify(after.output)}`);

  // task_status lists it.
  const status = await pyro.statusTask({ task_id });
  assert.deepEqual(status.shells?.map((s) => [s.shell_id, s.state, s.held_here]), [[sh.shell_id, "running", true]]);

  // The shell's own exit is reported, and a write after it is a clear error.
  await pyro.writeTaskShell({ ...id, input: "exit 7\n" });
  const last = await pyro.readTaskShell({ ...id, wait_idle_ms: 5000, timeout_ms: 10_000 });
  assert.deepEqual([last.reason, last.state, last.exit_code], ["exited", "exited", 7]);
  await assert.rejects(pyro.writeTaskShell({ ...id, input: "true\n" }), (e) => code(e) === "invalid_state" && /has exited \(exit code 7\)/.test((e as Error).message) && /`openTaskShell\(\)`/.test((e as PyroError).hint ?? ""));
  await assert.rejects(pyro.resizeTaskShell({ ...id, rows: 10, cols: 10 }), (e) => code(e) === "invalid_state");
  const closed = await pyro.closeTaskShell(id);
  assert.equal(closed.exit_code, 7);
  await assert.rejects(pyro.readTaskShell(id), (e) => code(e) === "unknown_shell", "a closed shell is gone");
  assert.deepEqual((await pyro.statusTask({ task_id })).shells, []);
  await waitFor(() => hostProcessesRunning("sleep 31337").length === 0, 10_000, "the background job to end with its shell");
});

test("several shells per task are independent; closing one ends its jobs only", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const a = await pyro.openTaskShell({ task_id });
  const b = await pyro.openTaskShell({ task_id, cwd: "/tmp" });
  await pyro.writeTaskShell({ task_id, shell_id: a.shell_id, input: "X=from-a; sleep 31338 &\n" });
  await pyro.writeTaskShell({ task_id, shell_id: b.shell_id, input: "echo \"[$X] $(pwd)\"; sleep 31339 &\n" });
  const rb = await pyro.readTaskShell({ task_id, shell_id: b.shell_id, wait_for: "] /tmp", plain: true });
  assert.match(rb.output, /^\[\] \/tmp$/m, "b does not see a's variable, and started in its own cwd");
  await waitFor(() => hostProcessesRunning("sleep 31338").length === 1 && hostProcessesRunning("sleep 31339").length === 1, 10_000, "both jobs");
  assert.equal((await pyro.statusTask({ task_id })).shells?.length, 2);
  await pyro.closeTaskShell({ task_id, shell_id: a.shell_id });
  await waitFor(() => hostProcessesRunning("sleep 31338").length === 0, 10_000, "a's job to end");
  assert.equal(hostProcessesRunning("sleep 31339").length, 1, "b's job runs on");
  // Files a shell writes are the task's: task_exec sees them.
  await pyro.writeTaskShell({ task_id, shell_id: b.shell_id, input: "echo from-shell > /workspace/note\n" });
  await pyro.readTaskShell({ task_id, shell_id: b.shell_id, wait_idle_ms: 300 });
  assert.equal((await pyro.execTask({ task_id, command: "cat /workspace/note" })).stdout, "from-shell\n");
  // Deleting the task ends the rest.
  await pyro.deleteTask({ task_id });
  await waitFor(() => hostProcessesRunning("sleep 31339").length === 0, 10_000, "b's job to end with the task");
  await assert.rejects(pyro.readTaskShell({ task_id, shell_id: b.shell_id }), (e) => code(e) === "unknown_task");
});

test("an unread shell costs a bounded ring: the oldest output is dropped and counted", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const sh = await pyro.openTaskShell({ task_id });
  const id = { task_id, shell_id: sh.shell_id };
  // 4 MiB of output nobody reads while it is printed, then a marker.
  await pyro.writeTaskShell({ ...id, input: "head -c 4194304 /dev/zero | tr '\\0' a; echo; echo END-OF-''FLOOD\n" });
  for (let i = 0; !(await pyro.statusTask({ task_id })).shells?.[0]?.dropped_bytes; i++) {
    assert.ok(i < 600, "the ring drops within 60 s");
    await new Promise((r) => setTimeout(r, 100));
  }
  const r = await pyro.readTaskShell({ ...id, wait_for: "END-OF-FLOOD", timeout_ms: 60_000, max_bytes: 1024 });
  assert.equal(r.reason, "pattern");
  assert.equal(r.bytes, 1024, "max_bytes caps one read");
  assert.ok(r.dropped_bytes >= 4194304 - SHELL_RING_BYTES, `dropped ${r.dropped_bytes}`);
  assert.ok(r.remaining_bytes > 0 && r.remaining_bytes <= SHELL_RING_BYTES, `remaining ${r.remaining_bytes}`);
  const rest = await pyro.readTaskShell({ ...id, max_bytes: 1024 * 1024 });
  assert.equal(rest.dropped_bytes, 0, "the loss is reported once");
  assert.match(rest.output, /END-OF-FLOOD/);
});

test("bad input: unknown and malformed ids, another task's shell, a bad cwd, oversized writes; nothing is left open", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task_id = await task(pyro);
  const other = await task(pyro);
  const sh = await pyro.openTaskShell({ task_id });
  await assert.rejects(pyro.readTaskShell({ task_id, shell_id: "shell_000000000000" }), (e) => code(e) === "unknown_shell" && /No shell shell_000000000000 is open/.test((e as Error).message));
  await assert.rejects(pyro.writeTaskShell({ task_id, shell_id: "../../etc", input: "x" }), (e) => code(e) === "unknown_shell" && /not a shell id/.test((e as Error).message));
  await assert.rejects(pyro.readTaskShell({ task_id: other, shell_id: sh.shell_id }), (e) => code(e) === "unknown_shell", "a shell id is only valid with its own task");
  await assert.rejects(pyro.openTaskShell({ task_id: "task_000000000000" }), (e) => code(e) === "unknown_task");
  await assert.rejects(pyro.openTaskShell({ task_id, cwd: "relative" }), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.openTaskShell({ task_id, cwd: "/no/such/dir" }), (e) => code(e) === "sandbox_failed" && /\/no\/such\/dir/.test((e as Error).message));
  await assert.rejects(pyro.openTaskShell({ task_id, rows: 0 } as never), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.writeTaskShell({ task_id, shell_id: sh.shell_id, input: "x".repeat(64 * 1024 + 1) }), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.writeTaskShell({ task_id, shell_id: sh.shell_id, input: "" }), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.readTaskShell({ task_id, shell_id: sh.shell_id, wait_idle_ms: 0 }), (e) => code(e) === "invalid_argument");
  await assert.rejects(pyro.signalTaskShell({ task_id, shell_id: sh.shell_id, signal: "SIGSEGV" as never }), (e) => code(e) === "invalid_argument");
  // A wait that never succeeds ends at its timeout, with what arrived.
  const t0 = Date.now();
  const r = await pyro.readTaskShell({ task_id, shell_id: sh.shell_id, wait_for: "never-printed", timeout_ms: 700 });
  assert.equal(r.reason, "timeout");
  assert.ok(Date.now() - t0 >= 650 && Date.now() - t0 < 5000);
  // Only the shell that opened is noted in the task's directory; closing it removes the note.
  const notes = join(stateDir, "tasks", task_id, "shells");
  assert.deepEqual(readdirSync(notes), [`${sh.shell_id}.json`]);
  await pyro.closeTaskShell({ task_id, shell_id: sh.shell_id });
  assert.deepEqual(readdirSync(notes), []);
  await assert.rejects(pyro.closeTaskShell({ task_id, shell_id: sh.shell_id }), (e) => code(e) === "unknown_shell", "a second close");
});

test("a shell belongs to the task: kill -9 of its holder leaves it running; the next process reads what it printed meanwhile, keeps its cwd and variables, and its close leaves nothing", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task_id = await task(pyro);
  const marker = "4242";
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/shell-child.ts"), stateDir, task_id, marker], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.on("data", (c) => (out += c));
  child.stderr!.on("data", (c) => (err += c));
  await waitFor(() => /ready (shell_\w+)/.test(out), 30_000, `the child's shell (${err})`);
  const shellId = /ready (shell_\w+)/.exec(out)![1]!;
  assert.equal(hostProcessesRunning(`sleep ${marker}`).length, 1, "the job runs");
  // Another process sees the shell, held by the child.
  const seen = (await pyro.statusTask({ task_id })).shells!;
  assert.deepEqual(seen.map((s) => [s.shell_id, s.state, s.held_here, s.holder_pid]), [[shellId, "running", false, child.pid]]);

  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  // The shell and its jobs go on in the task; no process holds it, the agent buffers its output.
  assert.equal(hostProcessesRunning(`sleep ${marker}`).length, 1, "the job outlives the holder");
  await waitFor(() => true, 100);
  const orphaned = (await pyro.statusTask({ task_id })).shells!;
  assert.deepEqual(orphaned.map((s) => [s.shell_id, s.state, s.held_here, s.holder_pid]), [[shellId, "running", false, null]]);
  await new Promise((r) => setTimeout(r, 3500)); // the ticks are printed while nobody holds the shell

  const id = { task_id, shell_id: shellId };
  const meanwhile = await pyro.readTaskShell({ ...id, plain: true, wait_for: "job-done", timeout_ms: 10_000 });
  assert.equal(meanwhile.reason, "pattern");
  for (let i = 0; i < 10; i++) assert.match(meanwhile.output, new RegExp(`tick-${i}\\b`), `tick-${i}, printed after the kill, is read`);
  assert.equal(meanwhile.dropped_bytes, 0);
  await pyro.writeTaskShell({ ...id, input: "echo where=$(pwd) var=$KEEPVAR\n" });
  const state = await pyro.readTaskShell({ ...id, plain: true, wait_for: "var=kept-42", timeout_ms: 10_000 });
  assert.match(state.output, /where=\/tmp var=kept-42/, "cwd and variables are the shell's own");
  const held = (await pyro.statusTask({ task_id })).shells!;
  assert.deepEqual(held.map((s) => [s.shell_id, s.held_here, s.holder_pid]), [[shellId, true, process.pid]]);
  const note = JSON.parse(readFileSync(join(stateDir, "tasks", task_id, "shells", `${shellId}.json`), "utf8")) as { holder: { pid: number } };
  assert.equal(note.holder.pid, process.pid, "the note names the new holder");

  await pyro.closeTaskShell(id);
  await waitFor(() => hostProcessesRunning(`sleep ${marker}`).length === 0, 10_000, "the job to end with the shell");
  assert.deepEqual((await pyro.statusTask({ task_id })).shells, []);
  assert.ok(!existsSync(join(stateDir, "tasks", task_id, "shells", `${shellId}.json`)));
  await assert.rejects(pyro.readTaskShell(id), (e) => code(e) === "unknown_shell" && /No shell/.test((e as Error).message));
});

test("takeover: a second process's use of a shell takes it over; the first one's next call says so, and a later call takes it back", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const other = new Pyro({ stateDir });
  t.after(() => other.close());
  const task_id = await task(pyro);
  const sh = await pyro.openTaskShell({ task_id });
  const id = { task_id, shell_id: sh.shell_id };
  await pyro.writeTaskShell({ ...id, input: "X=first; echo set-''done\n" });
  await pyro.readTaskShell({ ...id, wait_for: "set-done" });
  await other.writeTaskShell({ ...id, input: "echo x=$X\n" });
  assert.match((await other.readTaskShell({ ...id, plain: true, wait_for: "x=first" })).output, /x=first/);
  await assert.rejects(pyro.readTaskShell(id), (e) => code(e) === "invalid_state" && /taken over by another pyro process/.test((e as Error).message) && /take it back/.test((e as PyroError).hint ?? ""));
  // Calling again takes it back; now the other one is told.
  await pyro.writeTaskShell({ ...id, input: "echo back-''here\n" });
  assert.equal((await pyro.readTaskShell({ ...id, wait_for: "back-here" })).reason, "pattern");
  await assert.rejects(other.readTaskShell(id), (e) => code(e) === "invalid_state" && /taken over/.test((e as Error).message));
  await pyro.closeTaskShell(id);
  assert.deepEqual((await other.statusTask({ task_id })).shells, []);
});

test("a shell that exits while no process holds it keeps its last output and exit code for the next reader", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const task_id = await task(pyro);
  const sh = await pyro.openTaskShell({ task_id });
  const id = { task_id, shell_id: sh.shell_id };
  await pyro.writeTaskShell({ ...id, input: "sleep 0.5; echo last-''words; exit 5\n" });
  await pyro.shells.releaseAll(); // as the SDK's close(): this process lets go, the shell runs on
  const next = new Pyro({ stateDir });
  t.after(() => next.close());
  await waitFor(() => true, 1500);
  await new Promise((r) => setTimeout(r, 1500));
  const listed = (await next.statusTask({ task_id })).shells!;
  assert.deepEqual(listed.map((s) => [s.shell_id, s.state, s.held_here]), [[sh.shell_id, "exited", false]]);
  const r = await next.readTaskShell({ ...id, plain: true, wait_for: "never-printed", timeout_ms: 5000 });
  assert.equal(r.state, "exited");
  assert.equal(r.exit_code, 5);
  assert.match(r.output, /last-words/);
  await next.closeTaskShell(id);
  assert.deepEqual((await next.statusTask({ task_id })).shells, []);
});

test("a shell's terminal is the sandbox's own: its devpts holds only the sandbox's terminals", async (t) => {
  const { pyro } = testPyro(t);
  const task_id = await task(pyro);
  const sh = await pyro.openTaskShell({ task_id });
  const id = { task_id, shell_id: sh.shell_id };
  await pyro.writeTaskShell({ ...id, input: "tty; ls /dev/pts | tr '\\n' ' '; echo; echo DO''NE\n" });
  const r = await pyro.readTaskShell({ ...id, wait_for: "DONE", plain: true });
  assert.match(r.output, /^\/dev\/pts\/0$/m, "the first terminal of a fresh devpts instance");
  assert.match(r.output, /^0 ptmx $/m, "no terminal of the host (or of another sandbox) is visible");
  // The shell cannot lift its own limits through the terminal: it runs with the sandbox's capabilities.
  await pyro.writeTaskShell({ ...id, input: "grep CapEff /proc/self/status; mount -t tmpfs x /mnt 2>&1 | head -1; echo DO''NE2\n" });
  const caps = await pyro.readTaskShell({ ...id, wait_for: "DONE2", plain: true });
  assert.doesNotMatch(caps.output, /CapEff:\s+0*1fffff/, "not every capability");
  assert.match(caps.output, /denied|not permitted/i, "no mounts from a shell");
});

test("limits: 32 shells and services per task's sandbox, whichever processes opened them; a duplicate service name from another process is refused", async (t) => {
  const { pyro, stateDir } = testPyro(t);
  const other = new Pyro({ stateDir });
  const third = new Pyro({ stateDir });
  t.after(async () => {
    await other.close();
    await third.close();
  });
  const task_id = await task(pyro);
  await third.startTaskService({ task_id, name: "svc", command: "exec sleep 300" });
  await assert.rejects(other.startTaskService({ task_id, name: "svc", command: "exec sleep 300" }), (e) => code(e) === "invalid_state" && /already runs/.test((e as Error).message));
  for (let i = 0; i < 16; i++) await pyro.openTaskShell({ task_id });
  for (let i = 0; i < 15; i++) await other.openTaskShell({ task_id });
  await assert.rejects(third.openTaskShell({ task_id }), (e) => code(e) === "limit_exceeded" && /too many kept processes \(32\)/.test((e as Error).message) && /at most 32/.test((e as PyroError).hint ?? ""));
  assert.equal((await third.statusTask({ task_id })).shells!.length, 31);
  await pyro.deleteTask({ task_id });
});
