// The import rules of docs/architecture.md, checked on the source: imports run
// one way (front doors -> operations -> runtime -> drivers and environments ->
// core), and no two modules import each other, directly or around a loop.
// Dynamic `import()` and `import type` count: a cycle through types is still
// a cycle for a reader.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const SRC = resolve(new URL("../../src", import.meta.url).pathname);

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** module (relative to src, no extension) -> the src modules it imports. */
function importGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  const name = (p: string) => relative(SRC, p).replace(/\.ts$/, "");
  for (const file of sources(SRC)) {
    const text = readFileSync(file, "utf8");
    const deps = new Set<string>();
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)"(\.{1,2}\/[^"]+)"/g)) {
      deps.add(name(resolve(dirname(file), m[1]!.replace(/\.js$/, ".ts"))));
    }
    graph.set(name(file), deps);
  }
  return graph;
}

/** Lower layers first; a module may import its own layer and those below it. */
const LAYERS: Array<[string, string[]]> = [
  ["core", ["core/", "version", "util/"]],
  ["agent", ["agent/"]],
  ["drivers+environments", ["drivers/", "environments/"]],
  ["runtime", ["runtime/"]],
  ["operations", ["operations/"]],
  // The SDK's client is what the MCP server is built on; `Pyro` (sdk/pyro) adds
  // `createServer` to it, so it is a front door beside the MCP server.
  ["sdk client", ["sdk/client"]],
  ["front doors", ["sdk/pyro", "mcp/", "integrations/", "daemon/", "cli/", "index"]],
];

function layerOf(module: string): number {
  const i = LAYERS.findIndex(([, prefixes]) => prefixes.some((p) => (p.endsWith("/") ? module.startsWith(p) : module === p)));
  assert.notEqual(i, -1, `${module} belongs to no layer: add it to LAYERS and docs/architecture.md`);
  return i;
}

test("no module imports a layer above its own", () => {
  const wrong: string[] = [];
  for (const [from, deps] of importGraph()) {
    for (const to of deps) {
      if (layerOf(to) > layerOf(from)) wrong.push(`${from} (${LAYERS[layerOf(from)]![0]}) imports ${to} (${LAYERS[layerOf(to)]![0]})`);
    }
  }
  assert.deepEqual(wrong, []);
});

test("no import cycles, not even through types or dynamic imports", () => {
  const graph = importGraph();
  const cycles: string[] = [];
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (m: string) => {
    state.set(m, "open");
    stack.push(m);
    for (const d of graph.get(m) ?? []) {
      if (state.get(d) === "open") cycles.push([...stack.slice(stack.indexOf(d)), d].join(" -> "));
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(m, "done");
  };
  for (const m of graph.keys()) if (!state.has(m)) visit(m);
  assert.deepEqual(cycles, []);
});

test("the checker sees imports of every form", () => {
  const graph = importGraph();
  assert.ok(graph.get("sdk/pyro")?.has("mcp/server"), "a dynamic import() is an edge");
  assert.ok(graph.get("runtime/pool")?.has("runtime/vm-record"), "an `import type` is an edge");
});

test("drivers are peers: none imports another's folder (what they share lives in drivers/ and drivers/vm/)", () => {
  const wrong: string[] = [];
  const folder = (m: string) => /^drivers\/([^/]+)\//.exec(m)?.[1] ?? null;
  // drivers/vm/ is what both VM drivers share: any driver may import it; it imports no driver.
  const SHARED = "vm";
  for (const [from, deps] of importGraph()) {
    for (const to of deps) {
      const [a, b] = [folder(from), folder(to)];
      if (a && b && a !== b && b !== SHARED) wrong.push(`${from} imports ${to}`);
    }
  }
  assert.deepEqual(wrong, []);
  assert.ok([...importGraph().keys()].some((m) => folder(m) === SHARED), "drivers/vm/ exists and is checked");
});
