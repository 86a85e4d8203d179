import { readdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PyroError } from "../core/errors.js";

/**
 * Which Debian mirror to build from. By default the one the host's apt
 * already uses (it is reachable, maybe a local proxy or a snapshot), found in
 * /etc/apt/sources.list and sources.list.d/ (one-line and deb822 formats);
 * else deb.debian.org. `--mirror URL` overrides both.
 */
export const DEFAULT_MIRROR = "http://deb.debian.org/debian";

export interface SourceEntry {
  types: string[];
  uris: string[];
  suites: string[];
  enabled: boolean;
}

/** One-line format: `deb [opt=val ...] URI SUITE [COMPONENT...]`; comments and blank lines ignored. */
export function parseOneLineSources(text: string): SourceEntry[] {
  const out: SourceEntry[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    if (!line) continue;
    const m = /^(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (!m) continue;
    out.push({ types: [m[1]!], uris: [m[2]!], suites: [m[3]!], enabled: true });
  }
  return out;
}

/** deb822 format (`*.sources`): paragraphs of `Key: value` fields, `#` comment lines, continuation lines. */
export function parseDeb822Sources(text: string): SourceEntry[] {
  const out: SourceEntry[] = [];
  for (const para of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    let last: string | null = null;
    for (const raw of para.split("\n")) {
      if (raw.startsWith("#")) continue;
      if (/^[ \t]/.test(raw) && last) {
        fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (!m) continue;
      last = m[1]!.toLowerCase();
      fields.set(last, m[2]!.trim());
    }
    if (!fields.has("uris")) continue;
    const words = (k: string) => (fields.get(k) ?? "").split(/\s+/).filter(Boolean);
    out.push({
      types: words("types"),
      uris: words("uris"),
      suites: words("suites"),
      enabled: !/^(no|false|0)$/i.test(fields.get("enabled") ?? "yes"),
    });
  }
  return out;
}

/** The first enabled binary (`deb`) source serving exactly `suite`, with a URI we can build from. */
export function pickMirror(entries: readonly SourceEntry[], suite: string): string | null {
  for (const e of entries) {
    if (!e.enabled || !e.types.includes("deb") || !e.suites.includes(suite)) continue;
    const uri = e.uris.find((u) => /^(https?|file):/.test(u));
    if (uri) return uri.replace(/\/+$/, "");
  }
  return null;
}

/** Reads the host's apt sources in apt's order: sources.list, then sources.list.d/ sorted. */
export function hostSourceEntries(etcApt = "/etc/apt"): SourceEntry[] {
  const entries: SourceEntry[] = [];
  const read = (p: string) => {
    try {
      return readFileSync(p, "utf8");
    } catch {
      return "";
    }
  };
  entries.push(...parseOneLineSources(read(join(etcApt, "sources.list"))));
  let names: string[] = [];
  try {
    names = readdirSync(join(etcApt, "sources.list.d")).sort();
  } catch {
    /* none */
  }
  for (const name of names) {
    const p = join(etcApt, "sources.list.d", name);
    if (name.endsWith(".list")) entries.push(...parseOneLineSources(read(p)));
    else if (name.endsWith(".sources")) entries.push(...parseDeb822Sources(read(p)));
  }
  return entries;
}

export function defaultMirror(suite: string, etcApt = "/etc/apt"): string {
  return pickMirror(hostSourceEntries(etcApt), suite) ?? DEFAULT_MIRROR;
}

/**
 * Checks that MIRROR/dists/SUITE/Release answers within the timeout, and
 * returns the Release file's Date as a Unix time: builds use it as
 * SOURCE_DATE_EPOCH, so two builds from the same mirror state are identical.
 */
export async function checkMirror(mirror: string, suite: string, timeoutMs = 10_000): Promise<{ releaseEpoch: number | null }> {
  const url = `${mirror.replace(/\/+$/, "")}/dists/${suite}/Release`;
  const fail = (why: string, cause?: unknown) =>
    new PyroError("mirror_unreachable", `The Debian mirror ${mirror} could not be reached (${url}: ${why}).`, {
      hint: "Check the network or proxy, or pass another mirror with `--mirror URL` (e.g. --mirror http://deb.debian.org/debian).",
      details: { mirror, url },
      cause,
    });
  let text: string;
  if (url.startsWith("file:")) {
    const p = fileURLToPath(url);
    if (!existsSync(p)) throw fail("no such file");
    text = readFileSync(p, "utf8");
  } else if (/^https?:/.test(url)) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: "follow" });
      if (!res.ok) throw fail(`HTTP ${res.status}`);
      text = await res.text();
    } catch (error) {
      if (error instanceof PyroError) throw error;
      const e = error as Error & { cause?: { code?: string; message?: string } };
      const why = e.name === "TimeoutError" ? `no answer within ${Math.round(timeoutMs / 1000)} s` : (e.cause?.code ?? e.cause?.message ?? e.message);
      throw fail(why, error);
    }
  } else {
    throw new PyroError("invalid_argument", `Unsupported mirror URL "${mirror}".`, { hint: "Use an http://, https:// or file:// URL of a Debian archive." });
  }
  const date = /^Date:\s*(.+)$/m.exec(text)?.[1];
  const epoch = date ? Math.floor(Date.parse(date) / 1000) : NaN;
  return { releaseEpoch: Number.isFinite(epoch) ? epoch : null };
}
