// Runs a test tier (or all of them) with node's own test runner, TypeScript
// loaded through tsx. Node 20's --test takes no globs, so files are listed here.
//
// The run owns its world: a private directory (removed afterwards) holds the
// environment cache, the state, the daemon sockets and every temporary file
// the tests make, so `npm test` neither reads nor changes the user's
// ~/.cache/pyro-mcp and ~/.local/state/pyro-mcp (checked at the end), and no
// test's output depends on what a previous run left. Environments that many
// tests share are built once, here, before any test starts.
//
//   PYRO_TEST_CACHE_DIR=DIR   reuse this cache (say, your warm one) instead of a fresh one
//   PYRO_TEST_KEEP=1          keep the run's directory (its path is printed)
//   PYRO_TEST_DEADLINE_MINUTES=N  stop the whole run after N minutes (default 75; CI has 90)
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join, relative, resolve, sep } from "node:path";
import { spawnSync } from "node:child_process";

const root = new URL("..", import.meta.url).pathname;
// Arguments are tiers (`unit`, `vm`, ...) or single test files (`test/vm/guest.test.ts`): a file runs alone, with its tier's setup.
// PYRO_TEST_NAME=REGEX runs only the tests whose names match (node's --test-name-pattern).
const args = process.argv.slice(2);
const chosenFiles = args.filter((a) => a.endsWith(".test.ts")).map((a) => resolve(a));
const tierOf = (file) => relative(join(root, "test"), file).split(sep)[0];
const tiers = args.length ? [...new Set(args.map((a) => (a.endsWith(".test.ts") ? tierOf(resolve(a)) : a)))] : ["unit", "integration", "e2e", "security", "fault", "vm"];
// unit tests are pure and run in parallel; sandbox tiers share a 2-core machine.
// security is the attack suite (test/security/, docs/security.md); fault is the slow tier:
// hundreds of kill -9 of pyro processes (test/fault/, docs/reliability.md); vm boots real
// VMs under QEMU (test/vm/, docs/drivers.md).
const concurrency = { unit: 4, integration: 2, e2e: 2, security: 2, fault: 2, vm: 1 };
// What each tier needs built before it starts (shared by many of its files).
const needs = { integration: ["busybox"], e2e: ["busybox", "debian:12"], security: ["busybox"], fault: ["busybox"], vm: ["busybox"] };

function list(dir) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...list(p));
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}

/** The user's own pyro directories, as pyro would find them without the run's overrides. */
function userDirs(env) {
  const home = env.HOME || homedir();
  const uid = process.getuid?.() ?? 0;
  return [
    env.PYRO_CACHE_DIR ? resolve(env.PYRO_CACHE_DIR) : join(env.XDG_CACHE_HOME ? resolve(env.XDG_CACHE_HOME) : join(home, ".cache"), "pyro-mcp"),
    env.PYRO_STATE_DIR ? resolve(env.PYRO_STATE_DIR) : join(env.XDG_STATE_HOME ? resolve(env.XDG_STATE_HOME) : join(home, ".local", "state"), "pyro-mcp"),
    env.XDG_RUNTIME_DIR ? join(resolve(env.XDG_RUNTIME_DIR), "pyro-mcp") : join(tmpdir(), `pyro-mcp-${uid}`),
  ];
}

/** Every entry under dir with what a change would touch (not atime): the before/after check. */
function snapshot(dir) {
  const out = new Map();
  const walk = (p, depth) => {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      return;
    }
    const kind = st.isDirectory() ? "d" : st.isSymbolicLink() ? `l:${readlinkSync(p)}` : st.isFile() ? "f" : "o";
    out.set(p, `${kind} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.isDirectory() ? "" : st.size} ${st.mtimeMs}`);
    if (st.isDirectory() && depth < 64) {
      let names = [];
      try {
        names = readdirSync(p);
      } catch {
        return;
      }
      for (const n of names) walk(join(p, n), depth + 1);
    }
  };
  walk(dir, 0);
  return out;
}

function differences(before, after) {
  const lines = [];
  for (const [p, v] of after) if (before.get(p) !== v) lines.push(`${before.has(p) ? "changed" : "added"}: ${p}`);
  for (const p of before.keys()) if (!after.has(p)) lines.push(`removed: ${p}`);
  return lines;
}

/** Processes the run left: they carry its marker in their environment, or name its directory. */
function leftovers(runDir) {
  const found = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const environ = readFileSync(`/proc/${name}/environ`, "utf8");
      const cmd = readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ").trim();
      if (environ.includes(`PYRO_TEST_RUN=${runDir}\0`) || cmd.includes(`${runDir}/`)) found.push({ pid: Number(name), cmd });
    } catch {
      /* gone, or not ours to read */
    }
  }
  return found;
}

const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

const original = { ...process.env };
const userDirList = userDirs(original);
const before = userDirList.map(snapshot);

// Short on purpose: sockets live several levels below it (sun_path holds 108 bytes).
const runDir = mkdtempSync(join(tmpdir(), "pyt-"));
// Traversable by the unprivileged user the security tier creates (it gets directories of its own below).
chmodSync(runDir, 0o711);
for (const sub of ["tmp", "state", "run"]) mkdirSync(join(runDir, sub), { mode: 0o700 });
// TMPDIR is what /tmp is to the tests, the unprivileged user's included (tsx keeps a cache there): sticky and open.
chmodSync(join(runDir, "tmp"), 0o1777);
const cache = process.env.PYRO_TEST_CACHE_DIR ? resolve(process.env.PYRO_TEST_CACHE_DIR) : join(runDir, "cache");
const env = {
  ...process.env,
  PYRO_CACHE_DIR: cache,
  PYRO_STATE_DIR: join(runDir, "state"),
  XDG_RUNTIME_DIR: join(runDir, "run"),
  TMPDIR: join(runDir, "tmp"),
  PYRO_TEST_RUN: runDir,
};
console.log(`test run directory: ${runDir} (cache: ${cache}${process.env.PYRO_TEST_CACHE_DIR ? ", from PYRO_TEST_CACHE_DIR" : ", fresh"})`);

let status = 1;
try {
  // Global setup: the shared environments, built once with the CLI a user runs.
  const pyro = join(root, "dist", "pyro.cjs");
  const wanted = [...new Set(tiers.flatMap((t) => needs[t] ?? []))];
  for (const name of wanted) {
    const started = Date.now();
    const r = spawnSync(process.execPath, [pyro, "env", "pull", name], { cwd: root, env, stdio: ["ignore", "inherit", "inherit"] });
    if (r.status !== 0) throw new Error(`global setup: \`pyro env pull ${name}\` failed (exit ${r.status ?? r.signal}); is the package built (npm run build)?`);
    console.log(`global setup: ${name} ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  // One runner invocation for all requested tiers, so its closing summary counts everything.
  const wholeTiers = args.length ? args.filter((a) => !a.endsWith(".test.ts")) : tiers;
  const files = [...wholeTiers.flatMap((tier) => list(join(root, "test", tier))), ...chosenFiles];
  const jobs = Math.min(...tiers.map((t) => concurrency[t] ?? 1));
  console.log(`running ${files.length} test files (${tiers.join(", ")}), concurrency ${jobs}`);
  // No test may hang the run: one without a timeout of its own gets 10 minutes, and a file whose
  // tests are done exits even if something of it lingers (the sweep below ends what is left).
  // The whole run has a deadline well inside CI's 90 minutes, so a hang fails with the list of
  // what was still running instead of being cut off silently.
  const deadlineMinutes = Number(process.env.PYRO_TEST_DEADLINE_MINUTES ?? 75);
  const r = spawnSync(process.execPath, ["--import", "tsx", "--test", `--test-concurrency=${jobs}`, "--test-timeout=600000", "--test-force-exit", ...(process.env.PYRO_TEST_NAME ? [`--test-name-pattern=${process.env.PYRO_TEST_NAME}`] : []), ...files], {
    stdio: "inherit",
    cwd: root,
    env,
    timeout: deadlineMinutes * 60_000,
    killSignal: "SIGKILL",
  });
  if (r.error?.code === "ETIMEDOUT" || r.signal === "SIGKILL") {
    console.error(`the test run passed its deadline of ${deadlineMinutes} minutes (PYRO_TEST_DEADLINE_MINUTES) and was stopped; still running:`);
    for (const p of leftovers(runDir)) console.error(`  ${p.pid} ${p.cmd.slice(0, 200)}`);
  }
  status = r.status ?? 1;
} catch (error) {
  console.error(error.message);
} finally {
  // Daemons the tests started idle out on their own; the run does not wait for them.
  let left = leftovers(runDir);
  for (const p of left) {
    try {
      process.kill(p.pid, "SIGTERM");
    } catch {
      /* gone */
    }
  }
  if (left.length) sleep(500);
  for (const p of leftovers(runDir)) {
    try {
      process.kill(p.pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  if (left.length) console.log(`after the run: ${left.length} process(es) of the run still running, ended: ${left.map((p) => p.cmd.slice(0, 80)).join("; ")}`);
  if (process.env.PYRO_TEST_KEEP) console.log(`kept ${runDir}`);
  else rmSync(runDir, { recursive: true, force: true });

  // The user's cache, state and daemon directories are exactly as they were.
  const changed = userDirList.flatMap((dir, i) => differences(before[i], snapshot(dir)));
  if (changed.length) {
    console.error(`the tests changed the user's pyro directories (they must use their own):\n  ${changed.slice(0, 20).join("\n  ")}`);
    status = 1;
  } else {
    console.log(`the user's pyro directories are unchanged (${userDirList.join(", ")})`);
  }
}
process.exit(status);
