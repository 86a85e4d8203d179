import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync, chmodSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { Readable } from "node:stream";
import { list } from "tar";
import { ImportChecker, directoryEntries, packTar, tarEntries, resolveSource, type PackStats } from "../../src/runtime/archive/index.js";
import { PyroError } from "../../src/core/errors.js";
import { rawTar, type RawEntry } from "../helpers/tarfix.js";

async function drain(gen: AsyncGenerator<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of gen) parts.push(b);
  return Buffer.concat(parts);
}

async function packFromTar(buf: Buffer, limits?: { max_files: number; max_bytes: number }) {
  const checker = new ImportChecker(limits);
  const stats: PackStats = { files: 0, bytes: 0, digest: "" };
  const out = await drain(packTar(tarEntries(Readable.from([buf]), checker), stats));
  return { out, stats, checker };
}

async function listTar(buf: Buffer): Promise<Array<{ path: string; type: string; mode: number; linkpath?: string; size: number }>> {
  const entries: Array<{ path: string; type: string; mode: number; linkpath?: string; size: number }> = [];
  const parser = list({ onReadEntry: (e) => entries.push({ path: e.path, type: e.type, mode: e.mode ?? 0, linkpath: e.linkpath, size: e.size }) });
  await new Promise<void>((resolve, reject) => {
    parser.on("end", () => resolve());
    parser.on("error", reject);
    parser.end(buf);
  });
  return entries;
}

async function rejects(promise: Promise<unknown>, entry: string, why: RegExp, limit?: { limit: string; max: number }) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof PyroError, `expected PyroError, got ${error}`);
    assert.equal(error.code, "unsafe_archive");
    assert.equal(error.details?.entry, entry, error.message);
    assert.match(error.message, why);
    // The limit a refusal ran into, for callers (the export) that word their own message: none for other refusals.
    assert.deepEqual([error.details?.limit, error.details?.max], [limit?.limit, limit?.max]);
    return true;
  });
}

const hostile: Array<[string, RawEntry[], string, RegExp]> = [
  ["dot-dot", [{ path: "../evil", body: "x" }], "../evil", /`\.\.`/],
  ["nested dot-dot", [{ path: "a/../../evil", body: "x" }], "a/../../evil", /`\.\.`/],
  ["absolute path", [{ path: "/etc/passwd", body: "x" }], "/etc/passwd", /absolute/],
  ["symlink then write through it", [{ path: "link", type: "SymbolicLink", linkpath: "." }, { path: "link/file", body: "x" }], "link/file", /through the symlink "link"/],
  ["symlink pointing out", [{ path: "up", type: "SymbolicLink", linkpath: "../../etc" }], "up", /outside the tree/],
  ["absolute symlink", [{ path: "abs", type: "SymbolicLink", linkpath: "/etc/shadow" }], "abs", /absolute path/],
  ["hard link to a host file", [{ path: "h", type: "Link", linkpath: "/etc/passwd" }], "/etc/passwd", /absolute/],
  ["hard link to a missing entry", [{ path: "h", type: "Link", linkpath: "nothere" }], "h", /not an earlier file/],
  ["character device", [{ path: "dev/null", type: "CharacterDevice" }], "dev/null", /device/],
  ["block device", [{ path: "sda", type: "BlockDevice" }], "sda", /device/],
  ["fifo", [{ path: "pipe", type: "FIFO" }], "pipe", /fifo/],
];

for (const [name, entries, entry, why] of hostile) {
  test(`archive import rejects: ${name}`, async () => {
    await rejects(packFromTar(rawTar(entries)), entry, why);
    await rejects(packFromTar(rawTar(entries, { gzip: true })), entry, why);
  });
}

test("archive import drops set-uid and set-gid bits and keeps exec bits", async () => {
  const { out, checker } = await packFromTar(rawTar([{ path: "suid", body: "#!/bin/sh\n", mode: 0o6755 }, { path: "plain", body: "x", mode: 0o755 }]));
  const entries = await listTar(out);
  assert.equal(entries.find((e) => e.path === "suid")!.mode, 0o755);
  assert.equal(entries.find((e) => e.path === "plain")!.mode, 0o755);
  assert.deepEqual(checker.setidDropped, ["suid"]);
});

test("archive import enforces the file-count limit", async () => {
  const many = Array.from({ length: 20 }, (_, i) => ({ path: `f${i}`, body: "x" }));
  await rejects(packFromTar(rawTar(many), { max_files: 10, max_bytes: 1 << 20 }), "f10", /more than 10 entries/, { limit: "max_files", max: 10 });
});

test("archive import stops a compressed bomb at the byte limit", async () => {
  // 64 MiB of zeros compress to ~64 KiB; the limit is 1 MiB.
  const bomb = rawTar([{ path: "bomb", size: 64 * 1024 * 1024 }], { gzip: true });
  assert.ok(bomb.length < 200 * 1024);
  await rejects(packFromTar(bomb, { max_files: 10, max_bytes: 1 << 20 }), "bomb", /more than 1048576 bytes/, { limit: "max_bytes", max: 1048576 });
});

test("archive import refuses garbage that is not a tar archive", async () => {
  await assert.rejects(packFromTar(Buffer.from("this is not a tar archive at all".repeat(40))), (e: unknown) => e instanceof PyroError && e.code === "unsafe_archive");
});

test("a directory packs with modes, symlinks inside the tree, empty dirs and mtimes; the digest is stable", async (t) => {
  const root = mkdtempSync(join(tmpdir(), "pyro-arch-"));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, "src/empty"), { recursive: true });
  writeFileSync(join(root, "src/run.sh"), "#!/bin/sh\necho hi\n");
  chmodSync(join(root, "src/run.sh"), 0o755);
  writeFileSync(join(root, "README"), "hello\n");
  utimesSync(join(root, "README"), new Date(1_600_000_000_000), new Date(1_600_000_000_000));
  symlinkSync("../README", join(root, "src/readme-link"));
  const pack = async () => {
    const stats: PackStats = { files: 0, bytes: 0, digest: "" };
    const out = await drain(packTar(directoryEntries(root, new ImportChecker()), stats));
    return { out, stats };
  };
  const a = await pack();
  const b = await pack();
  assert.equal(a.stats.digest, b.stats.digest);
  assert.match(a.stats.digest, /^sha256:[0-9a-f]{64}$/);
  assert.equal(a.stats.files, 3); // README, the symlink, run.sh: directories are not files
  const entries = await listTar(a.out);
  assert.deepEqual(entries.map((e) => e.path), ["README", "src/", "src/empty/", "src/readme-link", "src/run.sh"]);
  assert.equal(entries.find((e) => e.path === "src/run.sh")!.mode, 0o755);
  assert.equal(entries.find((e) => e.path === "src/readme-link")!.linkpath, "../README");
  // GNU tar reads what we wrote, mtimes included.
  const dest = mkdtempSync(join(tmpdir(), "pyro-arch-x-"));
  t.after(() => rmSync(dest, { recursive: true, force: true }));
  execFileSync("tar", ["-x", "-C", dest], { input: a.out });
  assert.equal(execFileSync("stat", ["-c", "%Y %a", join(dest, "README")]).toString().trim(), "1600000000 644");
});

test("a directory with a symlink pointing out, a fifo or a socket is refused, naming the entry", async (t) => {
  const mk = () => {
    const root = mkdtempSync(join(tmpdir(), "pyro-arch-"));
    t.after(() => rmSync(root, { recursive: true, force: true }));
    writeFileSync(join(root, "ok"), "x");
    return root;
  };
  const out = mk();
  symlinkSync("/etc/passwd", join(out, "passwd"));
  await rejects(drain(packTar(directoryEntries(out, new ImportChecker()))), "passwd", /absolute path/);

  const fifo = mk();
  execFileSync("mkfifo", [join(fifo, "pipe")]);
  await rejects(drain(packTar(directoryEntries(fifo, new ImportChecker()))), "pipe", /fifo/);

  const sock = mk();
  const server = createServer();
  await new Promise<void>((r) => server.listen(join(sock, "s.sock"), r));
  t.after(() => server.close());
  await rejects(drain(packTar(directoryEntries(sock, new ImportChecker()))), "s.sock", /socket/);
});

test("resolveSource checks existence, kind and allowed roots", async (t) => {
  const root = mkdtempSync(join(tmpdir(), "pyro-src-"));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, "repo"));
  writeFileSync(join(root, "a.tgz"), "");
  writeFileSync(join(root, "notes.txt"), "");
  symlinkSync("/etc", join(root, "escape"));
  assert.equal(resolveSource(join(root, "repo"), [root]).kind, "directory");
  assert.equal(resolveSource(join(root, "a.tgz"), [root]).kind, "tar");
  assert.equal(resolveSource("repo", [root]).kind, "directory");
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      return (e as PyroError).code;
    }
    return "ok";
  };
  assert.equal(code(() => resolveSource(join(root, "missing"), [root])), "source_not_found");
  assert.equal(code(() => resolveSource("missing", [root])), "source_not_found", "relative to the first root");
  assert.equal(code(() => resolveSource(join(root, "missing"))), "source_not_found", "no roots: anywhere");
  // Outside the roots a missing path is refused like an existing one: no oracle for what exists there,
  // neither directly nor through a symlink under a root that leads out of it.
  assert.equal(code(() => resolveSource("/etc/pyro-no-such-file", [root])), "source_not_allowed");
  assert.equal(code(() => resolveSource(join(root, "escape", "pyro-no-such-file"), [root])), "source_not_allowed");
  assert.equal(code(() => resolveSource(join(root, "..", "pyro-no-such-dir", "x"), [root])), "source_not_allowed");
  assert.equal(code(() => resolveSource(join(root, "notes.txt"), [root])), "source_not_allowed");
  assert.equal(code(() => resolveSource("/etc", [root])), "source_not_allowed");
  assert.equal(code(() => resolveSource(join(root, "escape"), [root])), "source_not_allowed");
  assert.equal(code(() => resolveSource(join(root, "repo", "..", "..", "etc"), [root])), "source_not_allowed");
});
