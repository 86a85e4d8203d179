/**
 * The host-facing security tests, again as an unprivileged user: what a
 * model can do to the host through an export or a workspace path must not
 * depend on pyro running as root (as a user there is no sandbox uid, no
 * disk image and no loop mount: the layer is a directory of the user's,
 * measured, and every file pyro writes is the user's own). Each file runs
 * whole, through the project's test runner, as the user testUser() makes;
 * attacks.test.ts does the same for the attack suite.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testUser } from "../helpers/unprivileged.js";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const isRoot = process.getuid?.() === 0;
const haveBwrap = spawnSync("bwrap", ["--version"]).status === 0;
/** The files, and at least how many of their tests must pass (none may fail, none may be skipped). */
const FILES: Array<[string, number]> = [
  ["test/security/export.test.ts", 6],
  ["test/integration/task-files.test.ts", 10],
];

/**
 * Each failed test's own report (its subtest line through its YAML block), not the run's tail: a CI log keeps only
 * the end of a long message, and the end of a long file's run is the tests that passed after the one that failed.
 */
function failedBlocks(out: string): string {
  const lines = out.split("\n");
  const blocks: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i]!.startsWith("not ok ")) continue;
    const start = i > 0 && lines[i - 1]!.startsWith("# Subtest:") ? i - 1 : i;
    let end = i + 1;
    while (end < lines.length && !/^(# Subtest:|ok |not ok |\d+\.\.\d+)/.test(lines[end]!)) end++;
    blocks.push(lines.slice(start, end).join("\n").slice(0, 6000));
  }
  return blocks.join("\n") || out.slice(-4000);
}

for (const [file, least] of FILES) {
  test(`${file}, as an unprivileged user`, { skip: (!isRoot && "needs root to create the unprivileged user") || (!haveBwrap && "bubblewrap is not installed"), timeout: 480_000 }, async (t) => {
    const scratch = mkdtempSync(join(tmpdir(), "pyro-as-user-"));
    t.after(() => rmSync(scratch, { recursive: true, force: true }));
    const user = testUser(ROOT, scratch);
    t.after(() => user.cleanup());
    // The files make their own state directories (each test its own), under the runner's own TMPDIR: socket paths stay short.
    const child = spawn("runuser", ["-u", user.name, "--", process.execPath, join(user.root, "scripts/test.mjs"), join(user.root, file)], { cwd: user.root, env: { ...user.env, PYRO_STATE_DIR: undefined, TMPDIR: "/tmp" }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    const count = (what: string) => Number(new RegExp(`^# ${what} (\\d+)$`, "m").exec(out)?.[1] ?? -1);
    const failed = out.split("\n").filter((l) => l.startsWith("not ok "));
    assert.deepEqual(failed, [], `as ${user.name}:\n${failedBlocks(out)}`);
    assert.equal(code, 0, `the run as ${user.name} exited ${code}:\n${out.slice(-4000)}`);
    assert.ok(count("pass") >= least, `at least ${least} tests passed as ${user.name} (${count("pass")}):\n${out.slice(-2000)}`);
    assert.equal(count("skipped"), 0, `nothing was skipped as ${user.name}:\n${out.split("\n").filter((l) => /# SKIP/.test(l)).join("\n")}`);
    t.diagnostic(`${count("pass")} tests passed as ${user.name} (uid ${user.uid})`);
  });
}
