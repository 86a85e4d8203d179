/**
 * Runs the attack suite as whatever user runs this file and prints its
 * report as JSON on stdout (attacks.test.ts runs it as an unprivileged user
 * it creates). Arguments: ATTACK_DIR SECRET ROOT STATE_DIR.
 */
import { runAttackSuite } from "./suite.js";

const [attackDir, secret, root, stateDir] = process.argv.slice(2);
if (!attackDir || !secret || !root || !stateDir) {
  console.error("usage: run-suite.ts ATTACK_DIR SECRET ROOT STATE_DIR");
  process.exit(2);
}
const report = await runAttackSuite({ attackDir, secret, root, stateDir });
process.stdout.write(JSON.stringify(report) + "\n");
