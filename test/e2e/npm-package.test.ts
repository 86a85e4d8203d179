// The npm package on its own, as a new user meets it (issue 13): `npm pack`,
// `npm i ./pyro-mcp-*.tgz` into an empty project with --ignore-scripts, a
// PATH without gcc or make and no network, then `npx -y pyro-mcp doctor`, a
// busybox run, `mcp serve` through the official MCP client, and the SDK
// required from a CommonJS project; then the package's agent damaged and
// missing, which must be refused and said at start, with hints that name no
// command the installed package lacks.
//
// Hermetic: the install reads no registry and no user npm cache. The
// project gets a lockfile made from the repository's (same versions, same
// layout), whose dependencies resolve to tarballs packed here from the
// repository's installed node_modules; `npm i --offline` with an empty cache
// of its own then installs exactly that.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, renameSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tar from "tar";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { ROOT } from "../helpers/mcp.js";
import { waitFor } from "../helpers/sandbox.js";
import { agentPlatform } from "../../src/util/agent-binary.js";

const PKG = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { name: string; version: string; dependencies: Record<string, string> } & Record<string, unknown>;
const TARBALL = `${PKG.name}-${PKG.version}.tgz`;
const PLATFORM = agentPlatform();
const bwrap = spawnSync("sh", ["-c", "command -v bwrap"]).status === 0;
const built = existsSync(join(ROOT, "dist", "agent", "agents.json"));
// Without the cross compiler the build makes no arm64 agent and npm pack refuses: skipped with the reason, except in CI, which installs it.
const arm64 = built && "linux-arm64" in (JSON.parse(readFileSync(join(ROOT, "dist", "agent", "agents.json"), "utf8")) as { agents: object }).agents;
const skip = !bwrap
  ? "bwrap is not installed"
  : !built
    ? "the package is not built (npm run build)"
    : process.platform !== "linux"
      ? "not Linux"
      : !arm64 && !process.env.CI
        ? "no aarch64 agent in dist/agent, so npm pack refuses (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross, then npm run build)"
        : false;

interface LockEntry {
  version?: string;
  resolved?: string;
  integrity?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  dev?: boolean;
  devOptional?: boolean;
  [k: string]: unknown;
}

/** The repository lock's entries the package's own dependencies need, at the same places (node resolves each the same way there). */
function dependencyClosure(): Map<string, LockEntry> {
  const packages = (JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, LockEntry> }).packages;
  const find = (from: string, name: string): string | null => {
    let base = from;
    for (;;) {
      const key = `${base ? `${base}/` : ""}node_modules/${name}`;
      if (packages[key]) return key;
      if (!base) return null;
      const i = base.lastIndexOf("/node_modules/");
      base = i < 0 ? "" : base.slice(0, i);
    }
  };
  const keep = new Map<string, LockEntry>();
  const visit = (key: string, deps: Record<string, string>, optional: Record<string, string>, peers: string[]) => {
    for (const name of [...Object.keys(deps), ...Object.keys(optional), ...peers]) {
      const found = find(key, name);
      if (!found) {
        assert.ok(name in optional, `package-lock.json has no ${name} for ${key || "pyro-mcp"}: run npm ci`);
        continue;
      }
      if (keep.has(found)) continue;
      const e = packages[found]!;
      keep.set(found, e);
      const requiredPeers = Object.keys(e.peerDependencies ?? {}).filter((p) => !e.peerDependenciesMeta?.[p]?.optional);
      visit(found, e.dependencies ?? {}, e.optionalDependencies ?? {}, requiredPeers);
    }
  };
  visit("", PKG.dependencies, {}, []);
  return keep;
}

const sri = (buf: Buffer) => `sha512-${createHash("sha512").update(buf).digest("base64")}`;

/** An installed package's directory as the tarball it was installed from (npm installs only the packed files). */
async function packInstalled(dir: string, out: string): Promise<Buffer> {
  const names = readdirSync(dir).filter((n) => n !== "node_modules");
  await tar.c({ gzip: true, file: out, cwd: dir, prefix: "package", portable: true, filter: (p) => !p.split("/").includes("node_modules") }, names);
  return readFileSync(out);
}

/** A PATH of what /usr/bin and friends hold, less every C compiler and make: the install and the runs must need neither. */
function pathWithoutCompilers(dir: string): string {
  mkdirSync(dir, { mode: 0o755 });
  const compiler = /^(cc|c89|c99|gcc|g\+\+|c\+\+|cpp|make|gmake|clang.*|tcc|ld|ld\..*|as)(-\d+)?$|-(gcc|g\+\+|cc|ld|as)(-\d+)?$/;
  for (const from of ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"]) {
    let names: string[] = [];
    try {
      names = readdirSync(from);
    } catch {
      continue;
    }
    for (const n of names) {
      if (compiler.test(n) || existsSync(join(dir, n))) continue;
      try {
        symlinkSync(join(from, n), join(dir, n));
      } catch {
        /* a name seen twice */
      }
    }
  }
  return dir;
}

let base = "";
let project = "";
let installed = "";
let env: NodeJS.ProcessEnv = {};
let packed: { files: { path: string }[] } | null = null;
let install: SpawnSyncReturns<string> | null = null;

function run(cmd: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string; timeout?: number } = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd: options.cwd ?? project, env: options.env ?? env, encoding: "utf8", input: options.input, timeout: options.timeout ?? 120_000, maxBuffer: 1 << 26 });
}
const npx = (args: string[], extra: NodeJS.ProcessEnv = {}) => run("npx", ["-y", "pyro-mcp", ...args], { env: { ...env, ...extra } });
const said = (r: SpawnSyncReturns<string>) => `exit ${r.status ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

async function mcpClient(extra: NodeJS.ProcessEnv = {}): Promise<{ client: Client; stderr: () => string }> {
  const transport = new StdioClientTransport({ command: "npx", args: ["-y", "pyro-mcp", "mcp", "serve"], cwd: project, env: { ...env, ...extra } as Record<string, string>, stderr: "pipe" });
  let stderr = "";
  transport.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  const client = new Client({ name: "pyro-npm-e2e", version: "0" });
  await client.connect(transport);
  return { client, stderr: () => stderr };
}

describe("the npm package on its own", { skip, concurrency: false }, () => {
  before(async () => {
    base = realpathSync(mkdtempSync(join(tmpdir(), "pyro-npm-")));
    // As root, bwrap is exec'd as the sandbox uid from this PATH: it must be able to reach it.
    chmodSync(base, 0o711);
    project = join(base, "project");
    mkdirSync(join(project, "deps"), { recursive: true });
    const PATH = pathWithoutCompilers(join(base, "bin"));
    const home = join(base, "home");
    mkdirSync(home);
    env = {
      PATH,
      HOME: home,
      LANG: "C.UTF-8",
      TMPDIR: process.env.TMPDIR ?? "/tmp",
      PYRO_CACHE_DIR: join(base, "cache"),
      PYRO_STATE_DIR: join(base, "state"),
      XDG_RUNTIME_DIR: join(base, "run"),
      PYRO_MCP_SPARES: "0",
      // No registry, no user cache: npx must use the installed package, npm i the local tarballs.
      npm_config_offline: "true",
      npm_config_cache: join(base, "npm-cache"),
      npm_config_update_notifier: "false",
      npm_config_audit: "false",
      npm_config_fund: "false",
      ...(process.env.PYRO_TEST_RUN ? { PYRO_TEST_RUN: process.env.PYRO_TEST_RUN } : {}),
    };
    mkdirSync(join(base, "run"), { mode: 0o700 });

    // npm pack in the clone, as a release would (prepack checks the agents).
    const pack = spawnSync("npm", ["pack", "--json", "--pack-destination", project], { cwd: ROOT, encoding: "utf8", env: { ...process.env, npm_config_update_notifier: "false", npm_config_cache: join(base, "npm-cache") }, maxBuffer: 1 << 26 });
    assert.equal(pack.status, 0, said(pack));
    packed = (JSON.parse(pack.stdout) as { files: { path: string }[] }[])[0]!;

    const lock: { name: string; lockfileVersion: 3; requires: true; packages: Record<string, LockEntry> } = {
      name: "fresh-project",
      lockfileVersion: 3,
      requires: true,
      packages: { "": { name: "fresh-project", dependencies: { [PKG.name]: `file:${TARBALL}` } } },
    };
    const tarball = readFileSync(join(project, TARBALL));
    lock.packages[`node_modules/${PKG.name}`] = {
      version: PKG.version,
      resolved: `file:${TARBALL}`,
      integrity: sri(tarball),
      license: PKG.license,
      dependencies: PKG.dependencies,
      bin: PKG.bin,
      engines: PKG.engines,
      peerDependencies: PKG.peerDependencies as Record<string, string>,
      peerDependenciesMeta: PKG.peerDependenciesMeta as Record<string, { optional?: boolean }>,
    };
    for (const [key, entry] of dependencyClosure()) {
      const file = `${key.replace(/[/@]/g, "_")}-${entry.version}.tgz`;
      const buf = await packInstalled(join(ROOT, key), join(project, "deps", file));
      const { dev: _d, devOptional: _o, ...rest } = entry;
      lock.packages[key] = { ...rest, resolved: `file:deps/${file}`, integrity: sri(buf) };
    }
    writeFileSync(join(project, "package.json"), `${JSON.stringify({ name: "fresh-project", version: "1.0.0", private: true, dependencies: { [PKG.name]: `file:${TARBALL}` } }, null, 2)}\n`);
    writeFileSync(join(project, "package-lock.json"), `${JSON.stringify(lock, null, 2)}\n`);
    install = run("npm", ["i", "--offline", "--ignore-scripts", "--no-audit", "--no-fund", `./${TARBALL}`]);
    installed = join(project, "node_modules", PKG.name);
  });

  after(() => {
    if (!base) return;
    // The daemon the first run started, then everything the project made.
    if (existsSync(join(installed, "dist", "pyro.cjs"))) run("npx", ["-y", "pyro-mcp", "daemon", "stop"]);
    rmSync(base, { recursive: true, force: true });
  });

  test("installs offline, without scripts or a compiler, and carries both agents with their digests", () => {
    const tools = run("sh", ["-c", "command -v gcc; command -v cc; command -v make; command -v npm; command -v bwrap"]);
    assert.deepEqual(tools.stdout.trim().split("\n"), [join(base, "bin", "npm"), join(base, "bin", "bwrap")], "the test PATH has npm and bwrap, no compiler and no make");
    assert.equal(install!.status, 0, said(install!));
    const files = new Set(packed!.files.map((f) => f.path));
    for (const f of ["dist/agent/agents.json", "dist/agent/linux-x64/pyro-agent", "dist/agent/linux-arm64/pyro-agent", "dist/pyro.cjs", "dist/index.js"]) assert.ok(files.has(f), `the tarball has ${f}`);
    assert.ok(![...files].some((f) => f.startsWith("guest/build/")), "no build products of the clone's make");
    const pkg = JSON.parse(readFileSync(join(installed, "package.json"), "utf8")) as { scripts?: Record<string, string> };
    for (const s of ["preinstall", "install", "postinstall", "prepare"]) assert.equal(pkg.scripts?.[s], undefined, `no ${s} script`);
    assert.ok(!existsSync(join(installed, "binding.gyp")), "nothing npm would build at install");
    assert.ok(!existsSync(join(installed, "guest", "build")), "nothing was compiled at install");
    // The installed agents: static, stripped, of the right machine, with the recorded digests.
    const check = run(process.execPath, [join(ROOT, "scripts", "check-package.mjs"), installed]);
    assert.equal(check.status, 0, said(check));
    assert.equal(statSync(join(installed, "dist", "agent", PLATFORM, "pyro-agent")).mode & 0o111, 0o111, "the agent is executable");
  });

  test("npx -y pyro-mcp doctor: the namespace driver with the package's prebuilt agent, and no compiler asked for", () => {
    const r = npx(["doctor"]);
    assert.equal(r.status, 0, said(r));
    assert.match(r.stdout, /ok {2}namespace/);
    assert.ok(r.stdout.includes(`+ agent: ${join(installed, "dist", "agent", PLATFORM, "pyro-agent")} (prebuilt for ${PLATFORM}, sha256 as recorded at build)`), r.stdout);
    const j = JSON.parse(npx(["doctor", "--json"]).stdout) as { missing_packages: string[] };
    for (const p of ["gcc", "make", "libc6-dev"]) assert.ok(!j.missing_packages.includes(p), `doctor asks for no ${p}: ${j.missing_packages.join(" ")}`);
  });

  test("npx -y pyro-mcp run busybox -- echo hi", () => {
    const r = npx(["run", "busybox", "--", "echo", "hi"]);
    assert.equal(r.status, 0, said(r));
    assert.equal(r.stdout, "hi\n");
  });

  test("npx -y pyro-mcp mcp serve: vm_run through the official MCP client", async () => {
    const { client, stderr } = await mcpClient();
    try {
      assert.doesNotMatch(client.getInstructions() ?? "", /no sandbox can start/);
      const tools = await client.listTools();
      assert.ok(tools.tools.some((t) => t.name === "vm_run"));
      const r = (await client.callTool({ name: "vm_run", arguments: { environment: "busybox", command: "echo hi" } })) as CallToolResult;
      assert.ok(!r.isError, JSON.stringify(r));
      const s = r.structuredContent as { exit_code: number; stdout: string; isolation: { driver: string } };
      assert.equal(s.exit_code, 0);
      assert.equal(s.stdout, "hi\n");
      assert.equal(s.isolation.driver, "namespace");
      assert.doesNotMatch(stderr(), /WARNING/);
    } finally {
      await client.close();
    }
  });

  test("require('pyro-mcp') from a CommonJS project: type-checks with tsc (module nodenext) and runs; node16 fails at type-check time", () => {
    const cjs = join(project, "cjs");
    mkdirSync(cjs);
    writeFileSync(join(cjs, "package.json"), `${JSON.stringify({ name: "cjs-user", private: true, type: "commonjs" })}\n`);
    writeFileSync(
      join(cjs, "tsconfig.json"),
      JSON.stringify({ compilerOptions: { module: "nodenext", moduleResolution: "nodenext", target: "es2022", strict: true, skipLibCheck: true, outDir: "out", types: ["node"], typeRoots: [join(ROOT, "node_modules", "@types")] }, files: ["main.ts"] }),
    );
    writeFileSync(
      join(cjs, "main.ts"),
      [
        'import { Pyro, PyroError, VERSION } from "pyro-mcp";',
        'import { pyroToolDefinitions } from "pyro-mcp/tools";',
        "const pyro = new Pyro();",
        'pyro.runInVm({ environment: "busybox", command: ["echo", "from cjs"] }).then(async (r) => {',
        "  const code: number = r.exit_code;",
        '  let refused = "";',
        '  try { await pyro.runInVm({ environment: "busybox", command: "true", mem_mib: 1 }); } catch (e) { if (e instanceof PyroError) refused = e.code; }',
        "  console.log(JSON.stringify({ version: VERSION, code, stdout: r.stdout, refused, tools: typeof pyroToolDefinitions }));",
        "});",
        "",
      ].join("\n"),
    );
    const tsc = run(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", cjs]);
    assert.equal(tsc.status, 0, said(tsc));
    // module node16 cannot require an ES module: refused at type-check time (TS1479), never a crash at run time.
    const node16 = run(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", cjs, "--module", "node16", "--moduleResolution", "node16", "--noEmit"]);
    assert.notEqual(node16.status, 0, said(node16));
    assert.match(node16.stdout, /error TS1479: .*ECMAScript module/);
    const out = readFileSync(join(cjs, "out", "main.js"), "utf8");
    assert.match(out, /require\("pyro-mcp"\)/, "tsc emitted a CommonJS require");
    const r = run(process.execPath, [join(cjs, "out", "main.js")], { cwd: cjs });
    assert.equal(r.status, 0, said(r));
    assert.doesNotMatch(r.stderr, /ExperimentalWarning|ERR_/);
    assert.deepEqual(JSON.parse(r.stdout), { version: PKG.version, code: 0, stdout: "from cjs\n", refused: "invalid_argument", tools: "function" });
  });

  test("a damaged agent is refused with what to do, and mcp serve (stdio and HTTP) says so at start", async () => {
    // The daemon of the busybox run keeps a spare running this agent: stopped first, and the runs here go without it.
    const stop = run("npx", ["-y", "pyro-mcp", "daemon", "stop"]);
    assert.equal(stop.status, 0, said(stop));
    const agent = join(installed, "dist", "agent", PLATFORM, "pyro-agent");
    const good = readFileSync(agent);
    const bad = Buffer.from(good);
    bad[bad.length >> 1]! ^= 0xff;
    // Swapped in by rename, as a replaced file would be (one byte changed, same size).
    const swap = (bytes: Buffer) => {
      writeFileSync(`${agent}.new`, bytes, { mode: 0o755 });
      renameSync(`${agent}.new`, agent);
    };
    swap(bad);
    try {
      const r = npx(["run", "busybox", "--", "echo", "hi"], { PYRO_DAEMON: "0" });
      assert.equal(r.status, 125, said(r));
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /does not match the digest recorded when the package was built/);
      assert.match(r.stderr, /Reinstall pyro-mcp/);
      assert.doesNotMatch(r.stderr, /npm run build/);
      const doctor = npx(["doctor"], { PYRO_DAEMON: "0" });
      assert.match(doctor.stdout, /no {2}namespace/);
      assert.match(doctor.stdout, /- agent: .*does not match the digest/);

      const { client, stderr } = await mcpClient({ PYRO_DAEMON: "0" });
      try {
        assert.match(stderr(), /WARNING: no sandbox can start on this host \(driver namespace\).*does not match the digest/);
        assert.match(client.getInstructions() ?? "", /no sandbox can start on this host right now.*does not match the digest/);
        const call = (await client.callTool({ name: "vm_run", arguments: { environment: "busybox", command: "echo hi" } })) as CallToolResult;
        assert.equal(call.isError, true);
        assert.match(JSON.stringify(call.content), /driver_unavailable/);
        assert.doesNotMatch(JSON.stringify(call.content), /npm run build/);
      } finally {
        await client.close();
      }

      // Over Streamable HTTP too: the warning before the line that says it serves, the note in every session's instructions.
      // The installed bin itself (what npx runs): npx does not pass SIGTERM on to its child.
      const http = spawn(join(project, "node_modules", ".bin", "pyro"), ["mcp", "serve", "--http", "127.0.0.1:0"], { cwd: project, env: { ...env, PYRO_DAEMON: "0" }, stdio: ["ignore", "ignore", "pipe"] });
      try {
        let err = "";
        http.stderr!.on("data", (c: Buffer) => (err += c.toString()));
        const url = await waitFor(() => /on (http:\/\/\S+\/mcp)/.exec(err)?.[1], 30_000, `the server's URL (stderr: ${err})`);
        const token = /bearer token \(generated for this run\): (\S+)/.exec(err)?.[1];
        assert.ok(err.indexOf("WARNING: no sandbox can start") >= 0 && err.indexOf("WARNING") < err.indexOf("Streamable HTTP on"), err);
        const client = new Client({ name: "pyro-npm-e2e-http", version: "0" });
        await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
        assert.match(client.getInstructions() ?? "", /no sandbox can start on this host right now.*does not match the digest/);
        await client.close();
      } finally {
        http.kill("SIGTERM");
        await new Promise((r) => (http.exitCode !== null || http.signalCode !== null ? r(null) : http.once("exit", r)));
      }

      // Gone altogether (a partial copy): said as missing, still with no `npm run build`.
      rmSync(agent);
      const gone = npx(["run", "busybox", "--", "true"], { PYRO_DAEMON: "0" });
      assert.equal(gone.status, 125, said(gone));
      assert.match(gone.stderr, /prebuilt guest agent for linux-\w+ is missing/);
      assert.doesNotMatch(gone.stderr, /npm run build/);
    } finally {
      swap(good);
    }
    const again = npx(["run", "busybox", "--", "echo", "ok"], { PYRO_DAEMON: "0" });
    assert.equal(again.stdout, "ok\n", said(again));
  });
});
