// Deterministic tests of the import path's checks, without a sandbox: the
// glob matcher (same vectors as guest/tests/test_glob.c), the walk's
// per-component checks against swaps made between two of its steps, the
// protected directories, and a tar body whose parser aborts.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { gzipSync } from "node:zlib";
import { Glob, ImportChecker, compileExcludes, directoryEntries, packTar, resolveSource, tarEntries } from "../../src/runtime/archive/index.js";
import { protectedDirs, protectedOverlap } from "../../src/runtime/archive/source-path.js";
import { PyroError } from "../../src/core/errors.js";
import { rawTar } from "../helpers/tarfix.js";

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "pyro-unit-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const VECTORS: Array<[string, string | Buffer, boolean]> = [
  ["*.log", "a.log", true],
  ["*.log", "a.logx", false],
  ["a?c", "abc", true],
  ["a?c", "ac", false],
  ["[a-c]x", "bx", true],
  ["[!a-c]x", "bx", false],
  ["[^a-c]x", "dx", true],
  ["[]]", "]", true],
  ["\\*", "*", true],
  ["\\*", "a", false],
  ["*", "", true],
  ["a*b*c", "aXbYc", true],
  ["a*b*c", "aXbY", false],
  ["caf?.txt", "café.txt", true],
  ["caf?.txt", Buffer.from("caf\xe9.txt", "latin1"), true],
  ["caf[!x].txt", Buffer.from("caf\xe9.txt", "latin1"), true],
  ["src/*.ts", "src/a/b.ts", true],
  ["**", "x/y", true],
  ["[a-]", "-", true],
  ["node_modules", "node_modules", true],
  ["node_modules", "node_module", false],
  ["*a*a*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaab", true],
];

test("globs: fnmatch's grammar, UTF-8 characters, odd bytes as one character each", () => {
  for (const [pattern, name, want] of VECTORS) assert.equal(new Glob(pattern).matches(name), want, `${pattern} vs ${name}`);
  const ex = compileExcludes(["*.log"])!;
  assert.equal(ex("deep/dir/x.log"), true);
  assert.equal(ex("x.txt"), false);
});

test("globs: invalid or oversized patterns are invalid_argument with the reason", () => {
  for (const [pattern, why] of [
    ["[abc", /never closed/],
    ["a\\", /lone backslash/],
    ["[z-a]", /reversed/],
    ["", /empty/],
    ["x".repeat(257), /257 bytes long; the most is 256/],
    ["\ud800", /surrogate/],
  ] as Array<[string, RegExp]>) {
    assert.throws(
      () => new Glob(pattern),
      (e: unknown) => e instanceof PyroError && e.code === "invalid_argument" && why.test(e.message),
      pattern,
    );
  }
  assert.throws(() => compileExcludes(Array.from({ length: 65 }, (_, i) => `p${i}`)), /65 exclude patterns were given; the most is 64/);
});

test("globs: the crafted pattern is linear in the name's length", () => {
  const g = new Glob("*a*a*a*a*a*a*a*a*a*b");
  // Measured against itself, not a clock budget (a loaded machine slows both sizes alike): four times
  // the length costs about four times the time when linear, sixteen when quadratic. The best of
  // seven rounds of each size, taken in turns, so a moment of load falls on both; linear is 4x,
  // quadratic 16x, and the bound sits between them.
  const time = (n: number) => {
    const name = "a".repeat(n);
    const started = performance.now();
    for (let i = 0; i < 200; i++) assert.equal(g.matches(name), false);
    return performance.now() - started;
  };
  let short = Infinity;
  let long = Infinity;
  for (let round = 0; round < 7; round++) {
    short = Math.min(short, time(2048));
    long = Math.min(long, time(8192));
  }
  // The RegExp it replaced took about 5 minutes on one name of 60 characters.
  assert.ok(long < 30_000, `200 matches of 8192 characters took ${long.toFixed(0)} ms`);
  assert.ok(long / short < 10, `4x the length took ${(long / short).toFixed(1)}x the time (${short.toFixed(1)} ms, ${long.toFixed(1)} ms): not linear`);
});

async function drain(gen: AsyncGenerator<unknown>): Promise<void> {
  for await (const _ of gen);
}

test("walk: a directory swapped for a symlink after it was listed is refused, not followed", async (t) => {
  const src = tempDir(t);
  mkdirSync(join(src, "a"));
  writeFileSync(join(src, "a", "inner"), "inner");
  writeFileSync(join(src, "b.txt"), "b");
  const walk = directoryEntries(src, new ImportChecker());
  const first = await walk.next();
  assert.equal((first.value as { entry: { path: string } }).entry.path, "a");
  // Between listing "a" and descending into it, "a" becomes a link to /etc.
  renameSync(join(src, "a"), join(src, "a.real"));
  symlinkSync("/etc", join(src, "a"));
  await assert.rejects(drain(walk), (e: unknown) => {
    assert.ok(e instanceof PyroError, String(e));
    assert.equal(e.code, "unsafe_archive");
    assert.match(e.message, /Refused to import "a": it stopped being a directory \((ELOOP|ENOTDIR)/);
    return true;
  });
});

test("walk: a directory swapped for another directory after it was listed is refused (dev/ino)", async (t) => {
  const src = tempDir(t);
  mkdirSync(join(src, "a"));
  writeFileSync(join(src, "a", "inner"), "inner");
  const walk = directoryEntries(src, new ImportChecker());
  await walk.next();
  renameSync(join(src, "a"), join(src, "a.real"));
  mkdirSync(join(src, "a"));
  writeFileSync(join(src, "a", "planted"), "planted");
  await assert.rejects(drain(walk), /Refused to import "a": it was replaced by another directory/);
});

test("walk: a root swapped since it was checked is refused; a root that is a symlink is not opened", async (t) => {
  const dir = tempDir(t);
  const root = join(dir, "root");
  mkdirSync(root);
  const source = resolveSource(root);
  renameSync(root, join(dir, "old"));
  mkdirSync(root);
  await assert.rejects(drain(directoryEntries(source.path, new ImportChecker(), { expect: source })), /the source directory was replaced/);
  rmSync(root, { recursive: true });
  symlinkSync("/etc", root);
  await assert.rejects(drain(directoryEntries(source.path, new ImportChecker(), { expect: source })), (e: unknown) => e instanceof PyroError && e.code === "source_not_allowed");
});

test("walk: a name that is not UTF-8 is refused by name unless excluded", async (t) => {
  const src = tempDir(t);
  writeFileSync(Buffer.concat([Buffer.from(`${src}/bad`), Buffer.from([0xff]), Buffer.from("name")]), "x");
  writeFileSync(join(src, "good"), "y");
  await assert.rejects(drain(directoryEntries(src, new ImportChecker())), (e: unknown) => e instanceof PyroError && e.code === "unsafe_archive" && e.message.includes('"bad\\xffname"'));
  const checker = new ImportChecker(undefined, compileExcludes(["bad*"]));
  const seen: string[] = [];
  for await (const { entry } of directoryEntries(src, checker)) seen.push(entry.path);
  assert.deepEqual(seen, ["good"]);
});

test("sources inside the state or cache directory are refused with invalid_argument", (t) => {
  const state = tempDir(t);
  const inner = join(state, "tasks", "task_000000000000", "sandbox", "rw", "upper", "workspace");
  mkdirSync(inner, { recursive: true });
  assert.throws(() => resolveSource(inner, undefined, [state]), (e: unknown) => e instanceof PyroError && e.code === "invalid_argument" && /inside pyro's own state directory/.test(e.message));
  const link = join(tempDir(t), "link");
  symlinkSync(inner, link);
  assert.throws(() => resolveSource(link, undefined, [state]), /inside pyro's own state directory/);
  assert.equal(resolveSource(tempDir(t), undefined, [state]).kind, "directory");
});

test("tar: a parse that aborts while a body is being read fails that body instead of hanging", async () => {
  // A truncated gzip member inside a body: the parser fails mid-entry.
  const tar = rawTar([{ path: "big", body: Buffer.alloc(4 << 20, 1) }]);
  const gz = gzipSync(tar).subarray(0, 2000);
  const stats = { files: 0, bytes: 0, digest: "" };
  const started = performance.now();
  await assert.rejects(drain(packTar(tarEntries(Readable.from([gz]), new ImportChecker()), stats)), (e: unknown) => e instanceof PyroError && e.code === "unsafe_archive");
  assert.ok(performance.now() - started < 5000);
});

test("tar: zeros inflating past node-tar's 1000:1 ratio stream through (our byte limit is the bound)", async () => {
  const size = 96 * 2 ** 20;
  const gz = gzipSync(rawTar([{ path: "zeros", body: Buffer.alloc(0), size }]), { level: 9 });
  assert.ok(size / gz.length > 1000, `ratio ${(size / gz.length).toFixed(0)}`);
  const stats = { files: 0, bytes: 0, digest: "" };
  let n = 0;
  for await (const b of packTar(tarEntries(Readable.from([gz]), new ImportChecker()), stats)) n += b.length;
  assert.equal(stats.bytes, size);
  assert.ok(n > size);
  await assert.rejects(
    drain(packTar(tarEntries(Readable.from([gz]), new ImportChecker({ max_files: 10, max_bytes: 2 ** 20 })), stats)),
    /holds more than 1048576 bytes/,
  );
});

test("past the entry or byte limit, the hint says to import less, not to fix the entry where the count ran out", async (t) => {
  const src = tempDir(t);
  for (let i = 0; i < 5; i++) writeFileSync(join(src, `f${i}`), "x".repeat(100));
  for (const limits of [{ max_files: 3, max_bytes: 2 ** 20 }, { max_files: 100, max_bytes: 250 }]) {
    await assert.rejects(drain(directoryEntries(src, new ImportChecker(limits))), (e: unknown) => {
      assert.ok(e instanceof PyroError && e.code === "unsafe_archive", String(e));
      assert.match(e.message, /the import (has|holds) more than/);
      assert.match(e.hint ?? "", /^Nothing was changed\. Import less: a subdirectory, or leave out .* with exclude/);
      return true;
    });
  }
});

test("the user's default state and cache directories stay protected when PYRO_STATE_DIR and PYRO_CACHE_DIR name others", (t) => {
  // An MCP server configured with its own directories must still never read or write the CLI's tasks.
  const home = tempDir(t);
  const saved = { HOME: process.env.HOME, PYRO_STATE_DIR: process.env.PYRO_STATE_DIR, PYRO_CACHE_DIR: process.env.PYRO_CACHE_DIR, XDG_STATE_HOME: process.env.XDG_STATE_HOME, XDG_CACHE_HOME: process.env.XDG_CACHE_HOME };
  t.after(() => {
    for (const [k, v] of Object.entries(saved)) v === undefined ? delete process.env[k] : (process.env[k] = v);
  });
  Object.assign(process.env, { HOME: home, PYRO_STATE_DIR: tempDir(t), PYRO_CACHE_DIR: tempDir(t) });
  delete process.env.XDG_STATE_HOME;
  delete process.env.XDG_CACHE_HOME;
  const paths = protectedDirs().map((d) => d.path);
  assert.ok(paths.includes(join(home, ".local", "state", "pyro-mcp")), paths.join(", "));
  assert.ok(paths.includes(join(home, ".cache", "pyro-mcp")), paths.join(", "));
  const record = join(home, ".local", "state", "pyro-mcp", "tasks", "task_000000000000");
  mkdirSync(record, { recursive: true });
  assert.throws(() => resolveSource(record), /inside pyro's own state directory/);
  assert.equal(protectedOverlap(join(record, "record.json"))?.path, join(home, ".local", "state", "pyro-mcp"));
  assert.equal(protectedOverlap(home)?.path !== undefined, true, "a merge into the home would write below it");
  assert.equal(protectedOverlap(join(home, "src")), null);
});
