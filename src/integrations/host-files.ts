/**
 * Adds pyro's server entry to an MCP host's own config file, or takes it
 * out, changing nothing else: other servers, settings, comments (JSONC and
 * TOML) and formatting stay as they were. `pyro host install|uninstall`.
 *
 * Every edit is checked on the parsed result before it is written: the file
 * must parse, and every value except pyro's entry must be what it was. An
 * edit that would lose anything (say, a Codex entry written as an inline
 * table) is refused, not written. A file that does not parse is never
 * touched. The write is atomic (temporary sibling, fsync, rename), keeps the
 * file's mode and owner, and goes through a symlink to its target.
 */
import { chownSync, closeSync, fchmodSync, fsyncSync, linkSync, openSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeSync, mkdirSync } from "node:fs";
import { dirname, join, basename } from "node:path";
import { randomBytes } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { applyEdits, format, modify, parse as parseJsonc, printParseErrorCode, type ParseError } from "jsonc-parser";
import { parse as parseToml, stringify as stringifyToml, TomlError } from "smol-toml";
import { PyroError } from "../core/errors.js";
import type { HostConfig, HostFormat } from "./hosts.js";

export type EntryChange = "added" | "updated" | "unchanged" | "removed" | "absent";

export interface EditOutcome {
  /** The file's new text (the old one when nothing changes). */
  text: string;
  change: EntryChange;
}

type Doc = Record<string, unknown>;

function isObject(v: unknown): v is Doc {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function lineCol(text: string, offset: number): string {
  const before = text.slice(0, offset).split("\n");
  return `line ${before.length}, column ${before[before.length - 1]!.length + 1}`;
}

/** smol-toml's tables have no prototype and its dates are objects: plain values, so parsed documents compare. */
function plain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Date) return { $date: v.toISOString?.() ?? String(v), $text: String(v) };
  if (typeof v === "object" && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

/** The parsed file, or a PyroError saying where it does not parse. Empty (or all whitespace) is {}. */
export function parseConfig(format: HostFormat, text: string, file: string): Doc {
  const fail = (what: string) =>
    new PyroError("invalid_argument", `${file} does not parse as ${format === "toml" ? "TOML" : format === "jsonc" ? "JSON with comments" : "JSON"} (${what}); pyro left it as it is.`, {
      hint: `Fix the file (or move it away), then run the command again; \`pyro host install HOST --print\` prints the entry to add by hand.`,
    });
  if (!text.trim()) return {};
  let value: unknown;
  if (format === "toml") {
    try {
      value = plain(parseToml(text));
    } catch (error) {
      if (error instanceof TomlError) throw fail(`line ${error.line}, column ${error.column}: ${error.message.split("\n")[0]}`);
      throw fail(String((error as Error)?.message ?? error));
    }
  } else {
    const errors: ParseError[] = [];
    value = parseJsonc(text, errors, { disallowComments: format === "json", allowTrailingComma: format === "jsonc", allowEmptyContent: false });
    if (errors.length) throw fail(`${lineCol(text, errors[0]!.offset)}: ${printParseErrorCode(errors[0]!.error)}`);
  }
  if (!isObject(value)) throw fail("its top level is not an object");
  return value;
}

/** The object at `key` in doc: undefined when absent, an error when something else is there. */
function serversOf(doc: Doc, key: string[], file: string): Doc | undefined {
  let at: unknown = doc;
  for (const k of key) {
    if (!isObject(at)) break;
    at = at[k];
  }
  if (at === undefined) return undefined;
  if (!isObject(at)) {
    throw new PyroError("invalid_argument", `${file}: "${key.join(".")}" is not an object, so pyro cannot add a server to it; pyro left the file as it is.`, {
      hint: `Make "${key.join(".")}" an object of servers (or remove it), then run the command again.`,
    });
  }
  return at;
}

/**
 * The parsed document with `name` under `key` set to entry (or removed when
 * entry is undefined), without an emptied servers object: TOML has no way to
 * keep an empty implicit table, so "no servers left" compares as "no servers key".
 */
function expected(doc: Doc, key: string[], name: string, entry: unknown): Doc {
  const copy = structuredClone(doc);
  let at: Doc = copy;
  for (const k of key) {
    if (!isObject(at[k])) at[k] = {};
    at = at[k] as Doc;
  }
  if (entry === undefined) delete at[name];
  else at[name] = entry;
  return withoutEmpty(copy, key);
}

function withoutEmpty(doc: Doc, key: string[]): Doc {
  const copy = structuredClone(doc);
  let at: Doc = copy;
  for (const k of key.slice(0, -1)) {
    if (!isObject(at[k])) return copy;
    at = at[k] as Doc;
  }
  const last = key[key.length - 1]!;
  if (isObject(at[last]) && !Object.keys(at[last] as Doc).length) delete at[last];
  return copy;
}

function indentOf(text: string): { insertSpaces: boolean; tabSize: number } {
  const m = /^([ \t]+)["\w]/m.exec(text);
  if (!m) return { insertSpaces: true, tabSize: 2 };
  return m[1]!.startsWith("\t") ? { insertSpaces: false, tabSize: 1 } : { insertSpaces: true, tabSize: m[1]!.length };
}

function editJson(text: string, key: string[], name: string, entry: unknown): string {
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  // Edited unformatted, then only the inserted text is formatted: formatting the
  // edit itself would re-indent the neighbouring entries of the same object.
  const edits = modify(text, [...key, name], entry, {});
  let out = applyEdits(text, edits);
  if (entry !== undefined && edits.length === 1) {
    const e = edits[0]!;
    out = applyEdits(out, format(out, { offset: e.offset, length: e.content.length }, { ...indentOf(text), eol }));
  }
  return out;
}

/** A TOML table header naming the server `name` under `key`, or one of its subtables. */
function headerRe(key: string[], name: string): RegExp {
  const part = (k: string) => `(?:${k.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}|"${k.replace(/[.*+?^${}()|[\]\\"]/g, "\\$&")}"|'${k.replace(/[.*+?^${}()|[\]\\']/g, "\\$&")}')`;
  return new RegExp(`^\\s*\\[\\s*${[...key, name].map(part).join("\\s*\\.\\s*")}\\s*(?:\\.[^\\]]*)?\\]\\s*(?:#.*)?$`);
}

/** The TOML text without the tables of `name` under `key` (its header up to the next table that is not its own). */
function dropTomlTables(text: string, key: string[], name: string): string {
  const re = headerRe(key, name);
  const lines = text.split("\n");
  const out: string[] = [];
  let inside = false;
  for (const line of lines) {
    if (/^\s*\[/.test(line)) inside = re.test(line);
    if (!inside) out.push(line);
  }
  return out.join("\n").replace(/\n{3,}$/, "\n\n");
}

function editToml(text: string, key: string[], name: string, entry: unknown): string {
  let out = dropTomlTables(text, key, name);
  if (entry !== undefined) {
    let value: Doc = { [name]: entry };
    for (const k of [...key].reverse()) value = { [k]: value };
    const block = stringifyToml(value).replace(/\n*$/, "\n");
    const body = out.replace(/\s+$/, "");
    out = body ? `${body}\n\n${block}` : block;
  } else {
    out = out.replace(/\n+$/, "\n");
  }
  return out;
}

/**
 * The file's text with `entry` set under key/name (entry undefined: removed),
 * checked: the result parses to exactly the old document with that one change.
 */
export function editConfig(format: HostFormat, text: string, key: string[], name: string, entry: unknown, file: string): EditOutcome {
  const doc = parseConfig(format, text, file);
  const servers = serversOf(doc, key, file);
  const current = servers?.[name];
  if (entry === undefined && current === undefined) return { text, change: "absent" };
  if (entry !== undefined && isDeepStrictEqual(current, entry)) return { text, change: "unchanged" };
  const base = text.trim() ? text : "";
  let out: string;
  if (format === "toml") out = editToml(base, key, name, entry);
  else out = base ? editJson(base, key, name, entry) : JSON.stringify(expected({}, key, name, entry), null, 2) + "\n";
  let check: Doc;
  try {
    check = parseConfig(format, out, file);
  } catch {
    check = { unparsable: true };
  }
  if (!isDeepStrictEqual(withoutEmpty(check, key), expected(doc, key, name, entry))) {
    throw new PyroError("invalid_argument", `${file}: pyro's "${name}" entry is written in a form pyro cannot edit without changing something else (for example an inline table); pyro left the file as it is.`, {
      hint: `Edit the "${name}" entry under "${key.join(".")}" by hand; \`pyro host install HOST --print\` prints what it should be.`,
    });
  }
  return { text: out, change: entry === undefined ? "removed" : current === undefined ? "added" : "updated" };
}

/** A new file's text: the host's preamble (OpenCode's $schema) and the entry. */
export function newConfigText(config: HostConfig): string {
  return config.text;
}

/**
 * Replaces `path` with `text` atomically, keeping its mode and owner (a
 * config file may hold tokens: ~/.claude.json is 0600), through a symlink to
 * its target. Fails, changing nothing, when the file changed since `before`
 * was read (the host rewrote it meanwhile).
 */
export function replaceFile(path: string, text: string, before: string | null): void {
  let target = path;
  let mode = 0o644;
  let owner: { uid: number; gid: number } | null = null;
  if (before !== null) {
    target = realpathSync(path);
    const st = statSync(target);
    mode = st.mode & 0o7777;
    owner = { uid: st.uid, gid: st.gid };
  } else {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    mode = 0o644 & ~process.umask();
  }
  const tmp = join(dirname(target), `.${basename(target)}.pyro-${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  // Made 0600 and only then given the file's mode: the content never sits readable by more than the file was.
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeSync(fd, text);
    fchmodSync(fd, mode);
    fsyncSync(fd);
  } catch (error) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw error;
  }
  closeSync(fd);
  try {
    if (owner && process.getuid?.() === 0) chownSync(tmp, owner.uid, owner.gid);
    if (before === null) {
      // link fails when the name exists: a file made meanwhile is never replaced.
      try {
        linkSync(tmp, target);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "EEXIST") throw changed(path);
        throw error;
      }
      rmSync(tmp, { force: true });
    } else {
      if (readFileSync(target, "utf8") !== before) throw changed(path);
      renameSync(tmp, target);
    }
  } catch (error) {
    rmSync(tmp, { force: true });
    throw error;
  }
  const dfd = openSync(dirname(target), "r");
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

function changed(path: string): PyroError {
  return new PyroError("busy", `${path} changed while pyro was editing it (is the host rewriting it?); pyro left it as it is.`, { hint: "Run the command again." });
}

/** The file's text, or null when it does not exist. */
export function readConfig(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new PyroError("invalid_argument", `${path} cannot be read: ${(error as Error).message}.`, { hint: "Check the file's permissions." });
  }
}

export interface InstallOutcome {
  path: string;
  change: EntryChange;
}

/** Adds (or refreshes) the config's entry in its host's file at `path`. */
export function installEntry(config: HostConfig, path: string): InstallOutcome {
  const before = readConfig(path);
  if (before === null || !before.trim()) {
    replaceFile(path, newConfigText(config), before);
    return { path, change: "added" };
  }
  const edit = editConfig(config.format, before, config.key, config.name, config.entry, path);
  if (edit.change !== "unchanged") replaceFile(path, edit.text, before);
  return { path, change: edit.change };
}

/** Takes the config's entry (by name) out of its host's file at `path`; nothing else changes. */
export function uninstallEntry(config: HostConfig, path: string): InstallOutcome {
  const before = readConfig(path);
  if (before === null) return { path, change: "absent" };
  const edit = editConfig(config.format, before, config.key, config.name, undefined, path);
  if (edit.change === "removed") replaceFile(path, edit.text, before);
  return { path, change: edit.change };
}
