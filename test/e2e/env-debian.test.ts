import { test, describe, before, after } from "node:test";
import { sandboxOwner } from "../../src/util/sandbox-user.js";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, readdirSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { runCli, spawnCli, collect, waitForStderr } from "../helpers/cli.js";
import { checkMirror, defaultMirror } from "../../src/environments/mirror.js";
import { findExecutable } from "../../src/drivers/availability.js";

/**
 * The CLI as a user drives it: `pyro env pull debian:12-base` really builds
 * from the Debian mirror (about 40 s here), then list/inspect see it.
 * Skipped, with the reason, when the mirror or mmdebstrap is missing.
 */

const scratch = mkdtempSync(join(tmpdir(), "pyro-e2e-env-"));
const env = { PYRO_CACHE_DIR: join(scratch, "cache"), PYRO_STATE_DIR: join(scratch, "state") };
after(() => rmSync(scratch, { recursive: true, force: true }));

let skip: string | false = false;
before(async () => {
  if (!findExecutable("mmdebstrap") && !findExecutable("debootstrap")) skip = "neither mmdebstrap nor debootstrap is installed";
  else {
    const mirror = defaultMirror("bookworm");
    try {
      await checkMirror(mirror, "bookworm");
    } catch {
      skip = `the Debian mirror ${mirror} is unreachable`;
    }
  }
});

/** Processes whose command line mentions our scratch directory (a build that outlived its pyro). */
function leftovers(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmd.includes(scratch) && Number(pid) !== process.pid) out.push(`${pid}: ${cmd.slice(0, 120)}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

describe("debian:12-base from the CLI", () => {
  test("a pull killed during mmdebstrap leaves no process, no mount, nothing ready", async (t) => {
    if (skip) return t.skip(skip);
    const child = spawnCli(["env", "pull", "debian:12-base", "--json"], env);
    const done = collect(child);
    await waitForStderr(child, /"phase":"download"/, 60_000);
    child.kill("SIGKILL");
    await done;
    let left: string[] = [];
    for (let i = 0; i < 50; i++) {
      left = leftovers();
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(left, [], "the build died with its pyro");
    assert.ok(!readFileSync("/proc/self/mountinfo", "utf8").includes(scratch), "no mount leaked onto the host");
    const list = JSON.parse((await runCli(["env", "list", "--json"], env)).stdout);
    assert.equal(list.environments.find((e: { name: string }) => e.name === "debian:12-base").state, "not_pulled");
  });

  test("pull builds it from the mirror; list shows it ready with packages; inspect --verify passes", async (t) => {
    if (skip) return t.skip(skip);
    const t0 = performance.now();
    const pull = await runCli(["env", "pull", "debian:12-base", "--json"], env);
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(pull.code, 0, pull.stderr.slice(-3000));
    const r = JSON.parse(pull.stdout);
    assert.equal(r.built, true);
    assert.ok(r.packages_count > 50, `${r.packages_count} packages`);
    t.diagnostic(`debian:12-base built in ${seconds.toFixed(1)} s: ${r.files} files, ${r.size_bytes} bytes`);
    const phases = new Set(
      pull.stderr
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l).progress.phase),
    );
    for (const p of ["setup", "download", "install", "fixup", "digest", "finalize"]) assert.ok(phases.has(p), `progress phase ${p} in ${[...phases]}`);
    assert.ok(!existsSync(join(env.PYRO_CACHE_DIR, "environments", ".tmp")) || readdirSync(join(env.PYRO_CACHE_DIR, "environments", ".tmp")).length === 0, "the killed build's debris is gone");

    const list = JSON.parse((await runCli(["env", "list", "--json"], env)).stdout);
    const e = list.environments.find((x: { name: string }) => x.name === "debian:12-base");
    assert.equal(e.state, "ready");
    assert.ok(e.packages_count > 50);
    assert.ok(e.size_bytes > 50 * 1024 * 1024);

    const insp = await runCli(["env", "inspect", "debian:12-base", "--verify", "--json"], env);
    assert.equal(insp.code, 0, insp.stderr);
    const i = JSON.parse(insp.stdout);
    assert.equal(i.verify.ok, true);
    const names = i.manifest.packages.map((p: { name: string }) => p.name);
    for (const p of ["dpkg", "apt", "bash", "coreutils"]) assert.ok(names.includes(p), p);
    assert.equal(i.manifest.builder.tool, findExecutable("mmdebstrap") ? "mmdebstrap" : "debootstrap");

    // Single-uid, sandbox-ready.
    const rootfs = i.rootfs as string;
    // Owned by the uid sandboxes run as: the user, or pyro's sandbox uid as root (src/util/sandbox-user.ts).
    const owner = sandboxOwner() ?? { uid: process.getuid!(), gid: process.getgid!() };
    assert.equal(execFileSync("find", [rootfs, "(", "!", "-uid", String(owner.uid), "-o", "!", "-gid", String(owner.gid), ")", "-print", "-quit"], { encoding: "utf8" }), "");
    assert.match(readFileSync(join(rootfs, "etc/apt/apt.conf.d/99pyro"), "utf8"), /APT::Sandbox::User "root";/);
    assert.ok(existsSync(join(rootfs, "workspace")));
    const bwrap = findExecutable("bwrap");
    if (bwrap) {
      const out = execFileSync(bwrap, ["--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME"], { encoding: "utf8" });
      assert.equal(out, "bookworm\n");
    }

    const again = await runCli(["env", "pull", "debian:12-base", "--json"], env);
    assert.equal(JSON.parse(again.stdout).built, false, "a second pull is a no-op");
  });
});
