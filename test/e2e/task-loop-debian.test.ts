import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCliSync } from "../helpers/cli.js";
import { leftovers } from "../helpers/sandbox.js";

/**
 * The seed's loop, from the CLI, as a user types it, on the real debian:12
 * environment (pulled from Debian's archive on first use): a git repository
 * on the host becomes a task's /workspace; an edit on the host is pushed;
 * git in the guest sees exactly that change.
 */
test("the seed's loop from the CLI on debian:12: create from a git repo, edit, push, exec sees it, delete", { timeout: 15 * 60_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-loop-"));
  const repo = mkdtempSync(join(tmpdir(), "pyro-repo-"));
  t.after(() => {
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(repo, { recursive: true, force: true });
  });
  const git = (...args: string[]) => execFileSync("git", ["-C", repo, ...args], { encoding: "utf8", env: { ...process.env, GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@e", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@e" } });
  git("init", "-q", "-b", "main");
  mkdirSync(join(repo, "src"));
  writeFileSync(join(repo, "src", "app.py"), "print('v1')\n");
  writeFileSync(join(repo, "run.sh"), "#!/bin/sh\nexec python3 src/app.py\n", { mode: 0o755 });
  git("add", ".");
  git("commit", "-q", "-m", "first");

  const env = { PYRO_STATE_DIR: stateDir };
  const pyro = (args: string[]) => {
    const r = runCliSync(args, { env, timeoutMs: 14 * 60_000 });
    assert.equal(r.status, 0, `pyro ${args.join(" ")}\n${r.stderr}`);
    return r.stdout;
  };

  const id = pyro(["task", "create", "debian:12", "--source-path", repo, "--id-only"]).trim();
  assert.match(id, /^task_[0-9a-f]{12}$/);
  assert.equal(pyro(["task", "exec", id, "--", "./run.sh"]), "v1\n");
  // git in the guest sees a clean tree: modes and content arrived as the host has them.
  assert.equal(pyro(["task", "exec", id, "--", "git -c safe.directory='*' status --porcelain"]), "");

  writeFileSync(join(repo, "src", "app.py"), "print('v2')\n");
  assert.match(pyro(["task", "sync", "push", id, repo]), /pushed/);
  assert.equal(pyro(["task", "exec", id, "--", "./run.sh"]), "v2\n");
  assert.equal(pyro(["task", "exec", id, "--", "git -c safe.directory='*' status --porcelain"]), " M src/app.py\n");

  const status = JSON.parse(pyro(["task", "status", id, "--json"]));
  assert.equal(status.environment, "debian:12");
  assert.equal(status.exec_count, 4);
  assert.equal(status.isolation.driver, "namespace");
  const logs = JSON.parse(pyro(["task", "logs", id, "--tail", "1", "--json"]));
  assert.equal(logs.entries[0].stdout, " M src/app.py\n");

  pyro(["task", "delete", id]);
  assert.deepEqual(leftovers(stateDir, [id]), { processes: [], dirs: [], cgroups: [] });
});

test("pyro run debian:12 -- git --version prints git's version and the isolation", { timeout: 15 * 60_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-run-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  const r = runCliSync(["run", "debian:12", "--", "git", "--version"], { env: { PYRO_STATE_DIR: stateDir }, timeoutMs: 14 * 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^git version 2\.\d+/);
  assert.match(r.stderr, /isolation: namespace sandbox/);
});
