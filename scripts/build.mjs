// Builds everything a user runs: the guest agent (C, static), the bundled CLI
// and SDK (esbuild, ESM, code-split so that heavy modules load lazily), and the
// SDK's type declarations (tsc).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { chmodSync, readFileSync, rmSync } from "node:fs";

const root = new URL("..", import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
const skipTypes = process.argv.includes("--no-types");

execFileSync("make", ["-s", "-C", `${root}guest`], { stdio: "inherit" });

rmSync(`${root}dist`, { recursive: true, force: true });
await build({
  entryPoints: { cli: `${root}src/cli/main.ts`, index: `${root}src/index.ts` },
  outdir: `${root}dist`,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  packages: "external",
  sourcemap: true,
  chunkNames: "chunks/[name]-[hash]",
  define: { __PYRO_VERSION__: JSON.stringify(pkg.version) },
  banner: { js: "" },
  logLevel: "warning",
});
chmodSync(`${root}dist/cli.js`, 0o755);
if (!skipTypes) {
  execFileSync(`${root}node_modules/.bin/tsc`, ["-p", `${root}tsconfig.json`], { stdio: "inherit" });
}
