import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileSha256, rememberedFileSha256 } from "../../src/util/file-sha256.js";

const dir = mkdtempSync(join(tmpdir(), "pyro-sha-"));
test.after(() => rmSync(dir, { recursive: true, force: true }));
const sha = (b: Buffer | string) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

test("fileSha256 is the sha256 of the whole file, across its 1 MiB reads", () => {
  const big = Buffer.alloc((1 << 20) * 2 + 123, 0);
  for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
  writeFileSync(join(dir, "big"), big);
  assert.equal(fileSha256(join(dir, "big")), sha(big));
  writeFileSync(join(dir, "empty"), "");
  assert.equal(fileSha256(join(dir, "empty")), sha(""));
  assert.throws(() => fileSha256(join(dir, "missing")), /ENOENT/);
});

test("a remembered digest follows a write to the file; no file and a directory have none", () => {
  const p = join(dir, "agent");
  writeFileSync(p, "aaaa");
  assert.equal(rememberedFileSha256(p), sha("aaaa"));
  writeFileSync(p, "bbbbbb");
  assert.equal(rememberedFileSha256(p), sha("bbbbbb"), "a rewrite changes the file's stamp, so it is hashed again");
  assert.equal(rememberedFileSha256(join(dir, "missing")), null);
  assert.equal(rememberedFileSha256(dir), null);
});
