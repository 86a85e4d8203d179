/**
 * The attack suite (suite.ts), as root and as an unprivileged user created
 * here: every attack must fail and leave the host as it was. docs/security.md
 * names what each group of attacks checks.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runAttackSuite, type SuiteReport } from "./suite.js";
import { testUser } from "../helpers/unprivileged.js";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const haveBwrap = spawnSync("bwrap", ["--version"]).status === 0;
const isRoot = process.getuid?.() === 0;

/** The static attack helper, built for this host; null (with the reason) when it cannot be. */
function buildHelper(dir: string): string | null {
  const r = spawnSync("gcc", ["-static", "-O1", "-o", join(dir, "attack"), join(ROOT, "test/security/attack.c")], { encoding: "utf8" });
  return r.status === 0 ? null : `cannot build the static attack helper (gcc, libc6-dev): ${r.stderr || r.error?.message}`;
}

function setup(): { base: string; attackDir: string; secret: string; skip: string | null } {
  const base = mkdtempSync(join(tmpdir(), "pyro-attack-"));
  chmodSync(base, 0o755);
  const attackDir = join(base, "import");
  mkdirSync(attackDir, { mode: 0o755 });
  const hostDir = join(base, "host");
  mkdirSync(hostDir, { mode: 0o755 });
  const secret = join(hostDir, "secret");
  // World-readable on purpose: any sandbox process that reached the host's filesystem could read it.
  writeFileSync(secret, "the host's secret\n", { mode: 0o644 });
  return { base, attackDir, secret, skip: haveBwrap ? buildHelper(attackDir) : "bubblewrap is not installed" };
}

function assertReport(report: SuiteReport): void {
  const failed = [...report.outcomes, ...report.host].filter((o) => !o.held);
  console.log(`uid ${report.uid}: ${report.outcomes.length} attacks, ${report.outcomes.length - report.outcomes.filter((o) => !o.held).length} held; ${report.host.length} host checks`);
  assert.ok(report.outcomes.length >= 60, `the suite runs at least 60 attacks (ran ${report.outcomes.length})`);
  assert.deepEqual(
    failed.map((o) => `${o.name}: ${o.detail}`),
    [],
    "every attack fails and the host is unchanged",
  );
}

test("attacks from inside a sandbox fail, as the user running the tests", { skip: !haveBwrap && "bubblewrap is not installed", timeout: 300_000 }, async (t) => {
  const s = setup();
  t.after(() => rmSync(s.base, { recursive: true, force: true }));
  if (s.skip) return t.skip(s.skip);
  const stateDir = mkdtempSync(join(tmpdir(), "pyro-attack-st-"));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  assertReport(await runAttackSuite({ attackDir: s.attackDir, secret: s.secret, root: ROOT, stateDir }));
});

test("attacks from inside a sandbox fail, as an unprivileged user", { skip: (!isRoot && "needs root to create the unprivileged user") || (!haveBwrap && "bubblewrap is not installed"), timeout: 300_000 }, async (t) => {
  const s = setup();
  t.after(() => rmSync(s.base, { recursive: true, force: true }));
  if (s.skip) return t.skip(s.skip);
  const user = testUser(ROOT, s.base);
  t.after(() => user.cleanup());
  const stateDir = user.env.PYRO_STATE_DIR!;
  const root = user.root;
  const r = spawnSync("runuser", ["-u", user.name, "--", process.execPath, "--import", "tsx", join(root, "test/security/run-suite.ts"), s.attackDir, s.secret, root, stateDir], {
    cwd: root,
    encoding: "utf8",
    env: user.env,
    timeout: 280_000,
    maxBuffer: 16 << 20,
  });
  assert.equal(r.status, 0, `the suite ran as ${user.name}: ${r.stderr.slice(-2000)}`);
  const report = JSON.parse(r.stdout.trim().split("\n").pop()!) as SuiteReport;
  assert.equal(report.uid, user.uid);
  assertReport(report);
});
