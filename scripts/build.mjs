// Builds everything a user runs: the guest agent (C, static), the bundled CLI
// and SDK (esbuild, ESM, code-split so that heavy modules load lazily), the
// SDK's type declarations (tsc), and the prebuilt agents the npm package
// carries (dist/agent/: static, stripped, x86_64 and aarch64, with their
// sha256 recorded in dist/agent/agents.json; src/util/agent-binary.ts).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, chmodSync, constants, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { delimiter, join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
const skipTypes = process.argv.includes("--no-types");

execFileSync("make", ["-s", "-C", `${root}guest`, "all", "release"], { stdio: "inherit" });

const onPath = (name) =>
  (process.env.PATH ?? "").split(delimiter).some((d) => {
    try {
      accessSync(join(d, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
// The packaged agents, by npm's platform names (process.platform-process.arch).
// The aarch64 one is cross-compiled with Debian's toolchain; without it the
// build goes on (a clone runs its own source build) and `npm pack` refuses
// (scripts/check-package.mjs).
const agents = [{ platform: `linux-${process.arch}`, file: "guest/build/pyro-agent.stripped" }];
if (process.arch === "x64" && onPath("aarch64-linux-gnu-gcc")) {
  execFileSync("make", ["-s", "-C", `${root}guest`, "release-aarch64"], { stdio: "inherit" });
  agents.push({ platform: "linux-arm64", file: "guest/build/aarch64/pyro-agent.stripped" });
} else {
  console.warn(
    process.arch === "x64"
      ? "build: no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross): no aarch64 agent in dist/agent, so npm pack will refuse"
      : `build: the aarch64 agent is cross-compiled on x86_64 hosts; on ${process.arch} dist/agent gets the native one only, so npm pack will refuse`,
  );
}

rmSync(`${root}dist`, { recursive: true, force: true });
const manifest = { format: 1, version: pkg.version, agents: {} };
for (const a of agents) {
  const rel = `${a.platform}/pyro-agent`;
  mkdirSync(`${root}dist/agent/${a.platform}`, { recursive: true });
  copyFileSync(`${root}${a.file}`, `${root}dist/agent/${rel}`);
  chmodSync(`${root}dist/agent/${rel}`, 0o755);
  const bytes = readFileSync(`${root}dist/agent/${rel}`);
  manifest.agents[a.platform] = { path: rel, sha256: `sha256:${createHash("sha256").update(bytes).digest("hex")}`, bytes: bytes.length };
}
writeFileSync(`${root}dist/agent/agents.json`, `${JSON.stringify(manifest, null, 2)}\n`);
const common = {
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  sourcemap: true,
  define: { __PYRO_VERSION__: JSON.stringify(pkg.version) },
  logLevel: "warning",
};
// The library: dependencies stay external, so applications dedupe them.
await build({
  ...common,
  entryPoints: {
    index: `${root}src/index.ts`,
    // Subpath exports: pyro-mcp/tools, pyro-mcp/ai-sdk, pyro-mcp/langchain (their frameworks are optional peers).
    tools: `${root}src/integrations/tools.ts`,
    "ai-sdk": `${root}src/integrations/ai-sdk.ts`,
    langchain: `${root}src/integrations/langchain.ts`,
  },
  outdir: `${root}dist`,
  packages: "external",
  chunkNames: "chunks/[name]-[hash]",
});
// The CLI: dependencies bundled in. Loading one parsed file instead of
// hundreds of resolved modules is most of a fast start (zod alone costs
// ~250 ms unbundled and ~40 ms bundled on this kind of machine). Command
// implementations stay in lazily imported chunks.
// A new id per build: the CLI daemon serves only clients of its own build.
const buildId = `${pkg.version}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
await build({
  ...common,
  define: { ...common.define, __PYRO_BUILD__: JSON.stringify(buildId) },
  entryPoints: { cli: `${root}src/cli/main.ts` },
  outdir: `${root}dist`,
  chunkNames: "cli-chunks/[name]-[hash]",
  minifyWhitespace: true,
  minifySyntax: true,
  // jsonc-parser's "main" is a UMD build whose require() of its own files esbuild cannot follow.
  alias: { "jsonc-parser": "jsonc-parser/lib/esm/main.js" },
  // Bundled CommonJS dependencies call require() for node builtins.
  banner: { js: 'import { createRequire as __pyroCreateRequire } from "node:module"; const require = __pyroCreateRequire(import.meta.url);' },
});
// The executable: the daemon client's fast path as one CommonJS file (no ES
// module loader, no builtin facades: ~20 ms sooner on this kind of machine);
// everything else is loaded from dist/cli.js.
await build({
  ...common,
  splitting: false,
  format: "cjs",
  define: { ...common.define, __PYRO_BUILD__: JSON.stringify(buildId), __PYRO_FULL_CLI__: JSON.stringify("./cli.js") },
  entryPoints: { pyro: `${root}src/cli/entry.ts` },
  outdir: `${root}dist`,
  outExtension: { ".js": ".cjs" },
  // version.ts reads package.json through import.meta only when run from source.
  logOverride: { "empty-import-meta": "silent" },
  minifyWhitespace: true,
  minifySyntax: true,
});
chmodSync(`${root}dist/cli.js`, 0o755);
chmodSync(`${root}dist/pyro.cjs`, 0o755);
if (!skipTypes) {
  execFileSync(`${root}node_modules/.bin/tsc`, ["-p", `${root}tsconfig.json`], { stdio: "inherit" });
}
