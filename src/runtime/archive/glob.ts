import { PyroError } from "../../core/errors.js";

/**
 * Exclude globs, matched in time linear in the name's length (docs/security.md,
 * "Imports"). The same grammar and the same algorithm run in the guest
 * (guest/apply.c, `--exclude`), so what the host leaves out of a push is
 * exactly what the guest's `--delete` keeps.
 *
 * Grammar, like fnmatch(3) without flags:
 *   `*`      any run of characters, `/` included
 *   `?`      one character
 *   `[...]`  one character of the set; `[!...]` or `[^...]` one not in it;
 *            `a-z` ranges; `]` first in the set is literal; `\x` is x
 *   `\x`     the character x itself
 * A "character" is one UTF-8 sequence; a byte that is not part of a valid
 * sequence counts as one character of its own.
 *
 * Matching simulates the glob's automaton on a bit set of states (one bit
 * per token), one step per character: no backtracking, so a crafted pattern
 * such as `*a*a*a*a*a*a*a*a*a*b` costs the same as `*.log`.
 */
export const MAX_GLOB_BYTES = 256;
export const MAX_EXCLUDES = 64;

type Token = { kind: "lit"; cp: number } | { kind: "any" } | { kind: "class"; negated: boolean; ranges: Array<[number, number]> };

/** Units above every code point stand for bytes that are not valid UTF-8. */
const INVALID_BASE = 0x110000;

function invalid(pattern: string, why: string): never {
  throw new PyroError("invalid_argument", `exclude pattern ${JSON.stringify(pattern)} is invalid: ${why}.`, {
    hint: "Use *, ? and [...] (write \\*, \\? or \\[ for the character itself), e.g. node_modules or *.log.",
    details: { pattern },
  });
}

function codePoints(pattern: string): number[] {
  const out: number[] = [];
  for (const ch of pattern) {
    const cp = ch.codePointAt(0)!;
    if (cp >= 0xd800 && cp <= 0xdfff) invalid(pattern, "it contains a lone UTF-16 surrogate (not valid Unicode)");
    if (cp === 0) invalid(pattern, "it contains a NUL character");
    out.push(cp);
  }
  return out;
}

export class Glob {
  readonly source: string;
  private readonly tokens: Token[];
  /** Words per state set: states 0..tokens.length. */
  private readonly words: number;
  /** Bit j set: a `*` lets state j stay on any character. */
  private readonly stay: Uint32Array;
  /** For ASCII units, the states a character advances into (bit j+1 when token j matches it). */
  private readonly ascii: Uint32Array;
  private readonly cache = new Map<number, Uint32Array>();

  constructor(pattern: string) {
    if (typeof pattern !== "string" || pattern.length === 0) invalid(String(pattern), "it is empty");
    const bytes = Buffer.byteLength(pattern, "utf8");
    if (bytes > MAX_GLOB_BYTES) invalid(pattern.slice(0, 40) + "...", `it is ${bytes} bytes long; the most is ${MAX_GLOB_BYTES}`);
    this.source = pattern;
    const cps = codePoints(pattern);
    const tokens: Token[] = [];
    const stars: boolean[] = [false];
    for (let i = 0; i < cps.length; i++) {
      const c = cps[i]!;
      if (c === 0x2a /* * */) {
        stars[tokens.length] = true;
        continue;
      }
      let token: Token;
      if (c === 0x3f /* ? */) token = { kind: "any" };
      else if (c === 0x5c /* \ */) {
        if (i + 1 >= cps.length) invalid(pattern, "it ends with a lone backslash");
        token = { kind: "lit", cp: cps[++i]! };
      } else if (c === 0x5b /* [ */) {
        let j = i + 1;
        let negated = false;
        if (cps[j] === 0x21 || cps[j] === 0x5e) {
          negated = true;
          j++;
        }
        const ranges: Array<[number, number]> = [];
        let first = true;
        for (;;) {
          if (j >= cps.length) invalid(pattern, "a [ is never closed by ]");
          let lo = cps[j]!;
          if (lo === 0x5d /* ] */ && !first) break;
          first = false;
          if (lo === 0x5c) {
            if (j + 1 >= cps.length) invalid(pattern, "a [ is never closed by ]");
            lo = cps[++j]!;
          }
          j++;
          let hi = lo;
          if (cps[j] === 0x2d /* - */ && j + 1 < cps.length && cps[j + 1] !== 0x5d) {
            j++;
            hi = cps[j]!;
            if (hi === 0x5c) {
              if (j + 1 >= cps.length) invalid(pattern, "a [ is never closed by ]");
              hi = cps[++j]!;
            }
            j++;
            if (hi < lo) invalid(pattern, `the range ${String.fromCodePoint(lo)}-${String.fromCodePoint(hi)} is reversed`);
          }
          ranges.push([lo, hi]);
        }
        token = { kind: "class", negated, ranges };
        i = j;
      } else token = { kind: "lit", cp: c };
      tokens.push(token);
      stars[tokens.length] = false;
    }
    this.tokens = tokens;
    this.words = ((tokens.length + 1) >>> 5) + 1;
    this.stay = new Uint32Array(this.words);
    for (let j = 0; j <= tokens.length; j++) if (stars[j]) this.stay[j >>> 5]! |= 1 << (j & 31);
    this.ascii = new Uint32Array(128 * this.words);
    for (let u = 0; u < 128; u++) this.ascii.set(this.computeMask(u), u * this.words);
  }

  private computeMask(unit: number): Uint32Array {
    const mask = new Uint32Array(this.words);
    for (let j = 0; j < this.tokens.length; j++) {
      const t = this.tokens[j]!;
      let hit: boolean;
      if (t.kind === "any") hit = true;
      else if (t.kind === "lit") hit = t.cp === unit;
      else {
        let inSet = false;
        for (const [lo, hi] of t.ranges) if (unit >= lo && unit <= hi) inSet = true;
        hit = inSet !== t.negated;
      }
      if (hit) mask[(j + 1) >>> 5]! |= 1 << ((j + 1) & 31);
    }
    return mask;
  }

  private maskOf(unit: number): Uint32Array {
    if (unit < 128) return this.ascii.subarray(unit * this.words, (unit + 1) * this.words);
    let m = this.cache.get(unit);
    if (!m) {
      m = this.computeMask(unit);
      if (this.cache.size < 4096) this.cache.set(unit, m);
    }
    return m;
  }

  /** Whether the whole of `name` (UTF-8 bytes, or a string) matches. */
  matches(name: Buffer | string, start = 0): boolean {
    const buf = typeof name === "string" ? Buffer.from(name, "utf8") : name;
    const w = this.words;
    let d = new Uint32Array(w);
    let next = new Uint32Array(w);
    d[0] = 1;
    let i = start;
    while (i < buf.length) {
      const [unit, len] = decodeUnit(buf, i);
      i += len;
      const m = this.maskOf(unit);
      let any = 0;
      let carry = 0;
      for (let k = 0; k < w; k++) {
        const v = d[k]!;
        const shifted = ((v << 1) | carry) >>> 0;
        carry = v >>> 31;
        const n = ((shifted & m[k]!) | (v & this.stay[k]!)) >>> 0;
        next[k] = n;
        any |= n;
      }
      if (!any) return false;
      [d, next] = [next, d];
    }
    const k = this.tokens.length;
    return (d[k >>> 5]! & (1 << (k & 31))) !== 0;
  }
}

/** One character of a name: a valid UTF-8 sequence is its code point, any other byte a unit of its own. */
export function decodeUnit(buf: Buffer, i: number): [number, number] {
  const b0 = buf[i]!;
  if (b0 < 0x80) return [b0, 1];
  let need: number;
  let cp: number;
  let min: number;
  if (b0 >= 0xc2 && b0 <= 0xdf) [need, cp, min] = [1, b0 & 0x1f, 0x80];
  else if (b0 >= 0xe0 && b0 <= 0xef) [need, cp, min] = [2, b0 & 0x0f, 0x800];
  else if (b0 >= 0xf0 && b0 <= 0xf4) [need, cp, min] = [3, b0 & 0x07, 0x10000];
  else return [INVALID_BASE + b0, 1];
  for (let k = 1; k <= need; k++) {
    const b = buf[i + k];
    if (b === undefined || (b & 0xc0) !== 0x80) return [INVALID_BASE + b0, 1];
    cp = (cp << 6) | (b & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return [INVALID_BASE + b0, 1];
  return [cp, need + 1];
}

/**
 * Checks exclude patterns (count, length, grammar) and returns the matcher
 * the walk and the checker use: a path is excluded when the glob matches
 * the whole relative path or its base name.
 */
export function compileExcludes(patterns: readonly string[] | undefined): ((rel: Buffer | string) => boolean) | undefined {
  if (!patterns?.length) return undefined;
  if (patterns.length > MAX_EXCLUDES) {
    throw new PyroError("invalid_argument", `${patterns.length} exclude patterns were given; the most is ${MAX_EXCLUDES}.`, {
      hint: "Combine patterns (e.g. one *.log instead of one per file), or exclude a parent directory.",
    });
  }
  const globs = [...new Set(patterns)].map((p) => new Glob(p));
  return (rel) => {
    const buf = typeof rel === "string" ? Buffer.from(rel, "utf8") : rel;
    const slash = buf.lastIndexOf(0x2f);
    return globs.some((g) => g.matches(buf) || (slash >= 0 && g.matches(buf, slash + 1)));
  };
}
