// The docs the npm package ships name no file the package lacks (issue 13):
// every relative markdown link, and every path that names a file or folder of
// the repository (its first segment is a top-level entry of the clone: src/,
// test/, scripts/, ...), in every packed .md file, must be in `npm pack`'s
// file list. A file only a clone has (scripts/setup.sh, test/...) may be named
// where the text says so: its paragraph, or the one just before (the prose
// above a code block), says "clone", "repository" or "checkout".
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { ROOT } from "../helpers/mcp.js";

function packedFiles(): string[] {
  // --ignore-scripts: prepack checks a full build; this test needs only the list.
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, npm_config_update_notifier: "false" } });
  return (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
}

/** The references a markdown text makes: [relative links] and `code spans` or bare words that look like repository paths. */
export function references(text: string, topLevel: ReadonlySet<string>): { line: number; ref: string; link: boolean; text: string }[] {
  const out: { line: number; ref: string; link: boolean; text: string }[] = [];
  const lines = text.split("\n");
  // Paragraph i: its own lines and the paragraph's before it (blank lines delimit them).
  const para: number[] = [];
  let n = 0;
  lines.forEach((l, i) => {
    if (l.trim() === "" && i > 0 && lines[i - 1]!.trim() !== "") n++;
    para.push(n);
  });
  const context = (i: number) => lines.filter((_, j) => para[j] === para[i] || para[j] === para[i]! - 1).join("\n");
  lines.forEach((line, i) => {
    const lineText = context(i);
    for (const m of line.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!.replace(/#.*$/, "");
      if (target && !/^[a-z][a-z0-9+.-]*:/i.test(target)) out.push({ line: i + 1, ref: target, link: true, text: lineText });
    }
    for (const m of line.matchAll(/(?<![\w/.~$@-])(?:\.\/)?([A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.*-]*)*)/g)) {
      const ref = m[1]!.replace(/[.]+$/, "");
      const first = ref.split("/")[0]!;
      // A repository entry by name: a folder with a slash after it, or a top-level file itself (README.md).
      if (topLevel.has(first) && (ref.includes("/") || /\.\w+$/.test(first))) out.push({ line: i + 1, ref, link: false, text: lineText });
    }
  });
  return out;
}

const CLONE_ONLY = /\b(clone|repository|checkout)\b/i;

test("every file and link the packed docs name is in the package", () => {
  const files = packedFiles();
  const packed = new Set(files);
  const has = (p: string) => packed.has(p) || files.some((f) => f.startsWith(`${p.replace(/\/+$/, "")}/`));
  const topLevel = new Set(readdirSync(ROOT).filter((n) => !["node_modules", "dist", ".git"].includes(n)));
  const docs = files.filter((f) => f.endsWith(".md"));
  assert.ok(docs.includes("README.md") && docs.includes("docs/install.md"), `the package ships its docs: ${docs.join(" ")}`);
  const wrong: string[] = [];
  for (const doc of docs) {
    for (const r of references(readFileSync(join(ROOT, doc), "utf8"), topLevel)) {
      const glob = r.ref.includes("*");
      const target = r.link ? normalize(join(dirname(doc), r.ref)) : normalize(r.ref);
      if (glob ? files.some((f) => new RegExp(`^${target.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*")}$`).test(f)) : has(target)) continue;
      if (!r.link && CLONE_ONLY.test(r.text)) continue;
      wrong.push(`${doc}:${r.line}: ${r.ref}`);
    }
  }
  assert.deepEqual(wrong, [], "name only what the package ships, or say on the line that it is the clone's");
});

test("the reference finder sees links, repository paths and nothing else", () => {
  const top = new Set(["src", "test", "README.md", "docs"]);
  const refs = references("See [install](docs/install.md), `src/a.ts`, test/x/ and README.md; not sandbox/rw/upper, https://x/src/y or ~/src/z.", top).map((r) => r.ref);
  assert.deepEqual(refs, ["docs/install.md", "docs/install.md", "src/a.ts", "test/x/", "README.md"]);
});
