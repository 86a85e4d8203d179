// Checks that a package directory is fit to ship (npm's prepack runs it on
// the clone before `npm pack` / `npm publish`; the e2e test runs it on an
// installed copy): the built CLI and SDK are there, and dist/agent carries a
// static, stripped pyro-agent for linux-x64 and linux-arm64, each of the
// right machine and with the sha256 that dist/agent/agents.json recorded.
//
//   node scripts/check-package.mjs [PACKAGE_DIR]    (default: this clone)
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const root = resolve(process.argv[2] ?? new URL("..", import.meta.url).pathname);
const MACHINES = { "linux-x64": { code: 62, name: "x86-64" }, "linux-arm64": { code: 183, name: "aarch64" } };
const problems = [];

/** What an ELF64 little-endian file is: its machine, whether it asks for a dynamic loader, whether it keeps a symbol table. */
export function elfFacts(buf) {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) return { error: "not an ELF file" };
  if (buf[4] !== 2 || buf[5] !== 1) return { error: "not a 64-bit little-endian ELF file" };
  const machine = buf.readUInt16LE(0x12);
  const phoff = Number(buf.readBigUInt64LE(0x20));
  const shoff = Number(buf.readBigUInt64LE(0x28));
  const phentsize = buf.readUInt16LE(0x36);
  const phnum = buf.readUInt16LE(0x38);
  const shentsize = buf.readUInt16LE(0x3a);
  const shnum = buf.readUInt16LE(0x3c);
  let interp = false;
  for (let i = 0; i < phnum; i++) if (buf.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) interp = true;
  let symtab = false;
  for (let i = 0; i < shnum; i++) if (buf.readUInt32LE(shoff + i * shentsize + 4) === 2 /* SHT_SYMTAB */) symtab = true;
  return { machine, static: !interp, stripped: !symtab };
}

for (const f of ["dist/pyro.cjs", "dist/cli.js", "dist/index.js", "dist/types/index.d.ts"]) {
  if (!existsSync(join(root, f))) problems.push(`${f} is missing`);
}
let manifest = null;
try {
  manifest = JSON.parse(readFileSync(join(root, "dist/agent/agents.json"), "utf8"));
} catch (error) {
  problems.push(`dist/agent/agents.json cannot be read (${error.code ?? error.message})`);
}
if (manifest) {
  const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version;
  if (manifest.version !== version) problems.push(`dist/agent/agents.json is of version ${manifest.version}, the package of ${version}`);
  for (const [platform, machine] of Object.entries(MACHINES)) {
    const entry = manifest.agents?.[platform];
    if (!entry) {
      problems.push(`no ${platform} agent in dist/agent${platform === "linux-arm64" ? " (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross, then npm run build)" : ""}`);
      continue;
    }
    const file = join(root, "dist/agent", entry.path);
    let buf;
    try {
      buf = readFileSync(file);
    } catch (error) {
      problems.push(`${platform}: ${file} cannot be read (${error.code})`);
      continue;
    }
    const sha = `sha256:${createHash("sha256").update(buf).digest("hex")}`;
    if (sha !== entry.sha256) problems.push(`${platform}: ${file} has ${sha}, agents.json recorded ${entry.sha256}`);
    const facts = elfFacts(buf);
    if (facts.error) problems.push(`${platform}: ${file} is ${facts.error}`);
    else {
      if (facts.machine !== machine.code) problems.push(`${platform}: ${file} is for ELF machine ${facts.machine}, not ${machine.name}`);
      if (!facts.static) problems.push(`${platform}: ${file} is dynamically linked (it must run in any rootfs)`);
      if (!facts.stripped) problems.push(`${platform}: ${file} is not stripped`);
    }
  }
}

if (problems.length) {
  console.error(`check-package: ${root} is not fit to ship:\n  ${problems.join("\n  ")}\nBuild it with \`npm run build\` (scripts/setup.sh installs the cross compiler).`);
  process.exit(1);
}
// stderr: npm pack --json prints its JSON on stdout after prepack ran.
console.error(`check-package: ${root}: CLI, SDK and agents for ${Object.keys(MACHINES).join(", ")} (static, stripped, digests as recorded)`);
