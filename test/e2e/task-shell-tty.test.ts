/**
 * `pyro task shell TASK_ID` under a real terminal: tmux runs the built CLI,
 * send-keys types, capture-pane reads the screen.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro } from "../../src/index.js";
import { cleanupState, waitFor } from "../helpers/sandbox.js";
import { ROOT } from "../helpers/cli.js";

const haveTmux = spawnSync("tmux", ["-V"]).status === 0;

function hostProcessesRunning(argv: string): number {
  let n = 0;
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ").trim() === argv) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

test("pyro task shell: raw keys, SIGWINCH resize, Ctrl-C to the job, exit code, Ctrl-] detaches and leaves nothing", { skip: haveTmux ? false : "tmux is not installed (apt-get install tmux)" }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-tty-"));
  const pyro = new Pyro({ stateDir });
  // A tmux server of this test's own, its socket in a directory removed afterwards.
  const tmuxDir = mkdtempSync(join(tmpdir(), "pyro-tty-tmux-"));
  const sock = join(tmuxDir, "tmux.sock");
  const tmux = (...args: string[]) => spawnSync("tmux", ["-S", sock, ...args], { encoding: "utf8" });
  t.after(async () => {
    tmux("kill-server");
    rmSync(tmuxDir, { recursive: true, force: true });
    await cleanupState(pyro, stateDir);
  });
  const task = await pyro.createTask({ environment: "busybox" });
  const env = ["PYRO_DAEMON=0", `PYRO_STATE_DIR=${stateDir}`, `PYRO_CACHE_DIR=${process.env.PYRO_CACHE_DIR ?? ""}`, `XDG_RUNTIME_DIR=${process.env.XDG_RUNTIME_DIR ?? ""}`].map(shellQuote).join(" ");
  const run = (session: string) => {
    const cmd = `cd ${shellQuote(ROOT)} && env ${env} ${shellQuote(process.execPath)} dist/pyro.cjs task shell ${task.task_id}; echo EXIT=$?; sleep 120`;
    const r = tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd);
    assert.equal(r.status, 0, r.stderr);
  };
  const screen = (session: string) => tmux("capture-pane", "-p", "-t", session).stdout;
  const until = async (session: string, re: RegExp, what: string) => {
    const deadline = Date.now() + 20_000;
    while (!re.test(screen(session))) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; the screen:\n${screen(session)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const keys = (session: string, ...k: string[]) => assert.equal(tmux("send-keys", "-t", session, ...k).status, 0);

  // busybox ash asks the terminal where its cursor is (ESC [ 6 n) before its first prompt; tmux answers,
  // and an answer that comes after ash stopped waiting is echoed as ^[[R;CR (as in any terminal): allow it,
  // and clear the line (Ctrl-U) before typing.
  const PROMPT = /\/workspace #( ?\^\[\[[\d;]*R)?\s*$/m;
  run("a");
  await until("a", PROMPT, "the prompt");
  keys("a", "C-u");
  keys("a", "cd /tmp; X=7; echo \"x=$X $(pwd)\"; stty size", "Enter");
  await until("a", /^x=7 \/tmp\n30 100$/m, "state and the terminal's size");
  // The terminal is resized: pyro gets SIGWINCH and resizes the shell's PTY.
  assert.equal(tmux("resize-window", "-t", "a", "-x", "90", "-y", "25").status, 0);
  await new Promise((r) => setTimeout(r, 300));
  keys("a", "stty size", "Enter");
  await until("a", /^25 90$/m, "the new size");
  // Ctrl-C is a key for the job in the shell, not a signal for pyro.
  keys("a", "sleep 4545", "Enter");
  await waitFor(() => hostProcessesRunning("sleep 4545") === 1, 10_000, "the job");
  keys("a", "C-c");
  keys("a", "echo rc=$?", "Enter");
  await until("a", /^rc=130$/m, "the interrupted job's status");
  assert.doesNotMatch(screen("a"), /EXIT=/, "pyro is still attached");
  // Ctrl-] detaches: the shell (held by that pyro) is closed with its jobs.
  keys("a", "sleep 4546 &", "Enter");
  await waitFor(() => hostProcessesRunning("sleep 4546") === 1, 10_000, "the background job");
  keys("a", "C-]");
  await until("a", /pyro: detached from shell_[0-9a-f]{12}[\s\S]*EXIT=0/, "the detach");
  await waitFor(() => hostProcessesRunning("sleep 4546") === 0, 10_000, "the background job to end");
  assert.deepEqual((await pyro.statusTask({ task_id: task.task_id })).shells, []);

  // The shell's own exit code is pyro's.
  run("b");
  await until("b", PROMPT, "the prompt");
  keys("b", "C-u");
  keys("b", "exit 5", "Enter");
  await until("b", /^EXIT=5$/m, "the exit code");
});
