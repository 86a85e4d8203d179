// Where the guest agent comes from (src/util/agent-binary.ts): a clone's
// source build first, else the package's prebuilt one for this arch, used
// only with the digest recorded at build; every way of not having one says
// what to do, and an installed package's hints never name `npm run build`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PyroError } from "../../src/core/errors.js";
import { agentPlatform, locateAgent, type LocateOptions } from "../../src/util/agent-binary.js";

const sha = (b: Buffer | string) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** A package root: `clone` adds the build script a clone has; `agents` what dist/agent carries (null: no agents.json). */
function fakeRoot(t: import("node:test").TestContext, opts: { clone?: boolean; built?: boolean; agents?: Record<string, string> | null; record?: Record<string, string> }): string {
  const root = mkdtempSync(join(tmpdir(), "pyro-agent-bin-"));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  writeFileSync(join(root, "package.json"), '{"name":"pyro-mcp","version":"0.0.0"}');
  if (opts.clone) {
    mkdirSync(join(root, "scripts"));
    writeFileSync(join(root, "scripts", "build.mjs"), "");
  }
  if (opts.built) {
    mkdirSync(join(root, "guest", "build"), { recursive: true });
    writeFileSync(join(root, "guest", "build", "pyro-agent"), "built agent");
  }
  if (opts.agents !== null) {
    const agents: Record<string, { path: string; sha256: string; bytes: number }> = {};
    for (const [platform, content] of Object.entries(opts.agents ?? {})) {
      mkdirSync(join(root, "dist", "agent", platform), { recursive: true });
      writeFileSync(join(root, "dist", "agent", platform, "pyro-agent"), content);
      agents[platform] = { path: `${platform}/pyro-agent`, sha256: opts.record?.[platform] ?? sha(content), bytes: content.length };
    }
    mkdirSync(join(root, "dist", "agent"), { recursive: true });
    writeFileSync(join(root, "dist", "agent", "agents.json"), JSON.stringify({ format: 1, version: "0.0.0", agents }));
  }
  return root;
}

function refusal(options: LocateOptions): PyroError {
  try {
    locateAgent({ env: {}, ...options });
  } catch (error) {
    assert.ok(error instanceof PyroError, String(error));
    assert.equal(error.code, "driver_unavailable");
    return error;
  }
  assert.fail("locateAgent found an agent");
}
const words = (e: PyroError) => `${e.message} ${e.hint ?? ""}`;

const BOTH = { "linux-x64": "x64 agent", "linux-arm64": "arm64 agent" };

test("an installed package runs its prebuilt agent for process.arch, with the recorded digest", (t) => {
  const root = fakeRoot(t, { agents: BOTH });
  for (const arch of ["x64", "arm64"]) {
    const a = locateAgent({ env: {}, root, platform: "linux", arch });
    assert.equal(a.source, "prebuilt");
    assert.equal(a.platform, `linux-${arch}`);
    assert.equal(a.path, join(root, "dist", "agent", `linux-${arch}`, "pyro-agent"));
    assert.equal(a.sha256, sha(BOTH[`linux-${arch}` as keyof typeof BOTH]));
  }
  assert.equal(agentPlatform("linux", "arm64"), "linux-arm64");
});

test("a clone prefers the agent it built from source over a prebuilt one", (t) => {
  const root = fakeRoot(t, { clone: true, built: true, agents: BOTH });
  const a = locateAgent({ env: {}, root, platform: "linux", arch: "x64" });
  assert.equal(a.source, "built");
  assert.equal(a.path, join(root, "guest", "build", "pyro-agent"));
});

test("PYRO_AGENT wins, and one that names no file is refused", (t) => {
  const root = fakeRoot(t, { agents: BOTH });
  const own = join(root, "mine");
  writeFileSync(own, "mine");
  assert.equal(locateAgent({ env: { PYRO_AGENT: own }, root }).source, "env");
  assert.match(words(refusal({ env: { PYRO_AGENT: join(root, "nope") }, root })), /PYRO_AGENT names .*nope, which is not a file/);
});

test("a prebuilt agent that does not match its recorded digest is refused, with reinstall and no npm run build", (t) => {
  const root = fakeRoot(t, { agents: BOTH, record: { "linux-x64": sha("something else") } });
  const e = refusal({ root, platform: "linux", arch: "x64" });
  assert.match(e.message, /does not match the digest recorded when the package was built \(recorded sha256:[0-9a-f]{64}, found sha256:[0-9a-f]{64}\)/);
  assert.match(e.hint!, /Reinstall pyro-mcp/);
  assert.doesNotMatch(words(e), /npm run build/);
  // The other arch's agent is unaffected.
  assert.equal(locateAgent({ env: {}, root, platform: "linux", arch: "arm64" }).source, "prebuilt");
});

test("a prebuilt agent changed after it was checked is caught at the next call (same path, same size)", (t) => {
  const root = fakeRoot(t, { agents: BOTH });
  assert.equal(locateAgent({ env: {}, root, platform: "linux", arch: "x64" }).source, "prebuilt");
  writeFileSync(join(root, "dist", "agent", "linux-x64", "pyro-agent"), "x64 agenT");
  assert.match(refusal({ root, platform: "linux", arch: "x64" }).message, /does not match the digest/);
});

test("a missing prebuilt agent, a missing manifest, another arch, another OS: each says what to do, never npm run build", (t) => {
  const missing = fakeRoot(t, { agents: BOTH });
  rmSync(join(missing, "dist", "agent", "linux-x64", "pyro-agent"));
  const gone = refusal({ root: missing, platform: "linux", arch: "x64" });
  assert.match(gone.message, /prebuilt guest agent for linux-x64 is missing .*the package is incomplete/);

  const noManifest = refusal({ root: fakeRoot(t, { agents: null }), platform: "linux", arch: "x64" });
  assert.match(noManifest.message, /carries no guest agent for linux-x64 \(it carries: none/);
  assert.match(noManifest.hint!, /Reinstall pyro-mcp/);

  const root = fakeRoot(t, { agents: BOTH });
  const riscv = refusal({ root, platform: "linux", arch: "riscv64" });
  assert.match(riscv.message, /carries no guest agent for linux-riscv64 \(it carries: linux-arm64, linux-x64\)/);
  assert.ok(riscv.hint!.includes(`make -C ${join(root, "guest")}`), riscv.hint);
  assert.match(riscv.hint!, /PYRO_AGENT/);

  const mac = refusal({ root, platform: "darwin", arch: "arm64" });
  assert.match(mac.message, /Linux only \(this is darwin-arm64\)/);

  for (const e of [gone, noManifest, riscv, mac]) assert.doesNotMatch(words(e), /npm run build/);
});

test("a clone without a build says to build it", (t) => {
  const e = refusal({ root: fakeRoot(t, { clone: true, agents: null }), platform: "linux", arch: "x64" });
  assert.match(e.message, /The guest agent is not built/);
  assert.match(e.hint!, /npm run build/);
});
