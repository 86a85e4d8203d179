// Runs a test tier (or all of them) with node's own test runner, TypeScript
// loaded through tsx. Node 20's --test takes no globs, so files are listed here.
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

const root = new URL("..", import.meta.url).pathname;
const tiers = process.argv.slice(2).length ? process.argv.slice(2) : ["unit", "integration", "e2e", "security", "fault", "vm"];
// unit tests are pure and run in parallel; sandbox tiers share a 2-core machine.
// security is the attack suite (test/security/, docs/security.md); fault is the slow tier:
// hundreds of kill -9 of pyro processes (test/fault/, docs/reliability.md).
const concurrency = { unit: 4, integration: 2, e2e: 2, security: 2, fault: 2, vm: 1 };

function list(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...list(p));
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}

// One runner invocation for all requested tiers, so its closing summary counts everything.
const files = tiers.flatMap((tier) => list(join(root, "test", tier)));
const jobs = Math.min(...tiers.map((t) => concurrency[t] ?? 1));
console.log(`running ${files.length} test files (${tiers.join(", ")}), concurrency ${jobs}`);
const r = spawnSync(process.execPath, ["--import", "tsx", "--test", `--test-concurrency=${jobs}`, ...files], {
  stdio: "inherit",
  cwd: root,
});
process.exit(r.status ?? 1);
