/* Exclude globs matched in time linear in the name (see glob.h).
 *
 *   *  any run of characters ('/' included)   ?  one character
 *   [...] [!...] [^...]  a set, with a-z ranges, ']' first is literal
 *   \x  the character x
 * A character is one valid UTF-8 sequence, or one byte that is not part of
 * one (units above 0x10FFFF stand for those bytes).
 *
 * The pattern is a chain of single-character tokens; a '*' is a self-loop
 * on the state before the next token. Matching runs that automaton on a
 * bit set of states, one step per character, so no pattern can make it
 * backtrack (fnmatch(3) is exponential on patterns such as *a*a*a*a*b).
 */
#include "glob.h"

#include <string.h>

#define INVALID_BASE 0x110000u

static size_t decode_unit(const unsigned char *s, size_t len, size_t i, uint32_t *unit) {
  unsigned b0 = s[i];
  if (b0 < 0x80) {
    *unit = b0;
    return 1;
  }
  unsigned need;
  uint32_t cp, min;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    need = 1, cp = b0 & 0x1f, min = 0x80;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    need = 2, cp = b0 & 0x0f, min = 0x800;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    need = 3, cp = b0 & 0x07, min = 0x10000;
  } else {
    *unit = INVALID_BASE + b0;
    return 1;
  }
  for (unsigned k = 1; k <= need; k++) {
    if (i + k >= len || (s[i + k] & 0xc0) != 0x80) {
      *unit = INVALID_BASE + b0;
      return 1;
    }
    cp = (cp << 6) | (s[i + k] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
    *unit = INVALID_BASE + b0;
    return 1;
  }
  *unit = cp;
  return need + 1;
}

static bool token_hits(const struct pyro_glob *g, const struct pyro_glob_token *t, uint32_t unit) {
  if (t->kind == 1)
    return true;
  if (t->kind == 0)
    return t->cp == unit;
  bool in = false;
  for (unsigned r = t->first; r < (unsigned)t->first + t->n; r++)
    if (unit >= g->ranges[r].lo && unit <= g->ranges[r].hi)
      in = true;
  return in != t->negated;
}

static void mask_of(const struct pyro_glob *g, uint32_t unit, uint64_t *mask) {
  memset(mask, 0, sizeof(uint64_t) * PYRO_GLOB_WORDS);
  for (size_t j = 0; j < g->ntokens; j++)
    if (token_hits(g, &g->tokens[j], unit))
      mask[(j + 1) / 64] |= (uint64_t)1 << ((j + 1) % 64);
}

int pyro_glob_compile(struct pyro_glob *g, const char *pattern, const char **why) {
  memset(g, 0, sizeof *g);
  size_t len = strlen(pattern);
  const unsigned char *p = (const unsigned char *)pattern;
  if (len == 0) {
    *why = "it is empty";
    return -1;
  }
  if (len > PYRO_GLOB_MAX_BYTES) {
    *why = "it is longer than 256 bytes";
    return -1;
  }
  /* Code points of the pattern (invalid UTF-8 is refused: the host sends valid Unicode). */
  uint32_t cps[PYRO_GLOB_MAX_BYTES];
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    uint32_t u;
    i += decode_unit(p, len, i, &u);
    if (u >= INVALID_BASE) {
      *why = "it is not valid UTF-8";
      return -1;
    }
    cps[n++] = u;
  }
  bool stars[PYRO_GLOB_MAX_TOKENS + 1] = {false};
  for (size_t i = 0; i < n; i++) {
    uint32_t c = cps[i];
    if (c == '*') {
      stars[g->ntokens] = true;
      continue;
    }
    struct pyro_glob_token *t = &g->tokens[g->ntokens];
    if (c == '?') {
      t->kind = 1;
    } else if (c == '\\') {
      if (i + 1 >= n) {
        *why = "it ends with a lone backslash";
        return -1;
      }
      t->kind = 0;
      t->cp = cps[++i];
    } else if (c == '[') {
      size_t j = i + 1;
      t->kind = 2;
      if (j < n && (cps[j] == '!' || cps[j] == '^')) {
        t->negated = true;
        j++;
      }
      t->first = (uint16_t)g->nranges;
      bool first = true;
      for (;;) {
        if (j >= n) {
          *why = "a [ is never closed by ]";
          return -1;
        }
        uint32_t lo = cps[j];
        if (lo == ']' && !first)
          break;
        first = false;
        if (lo == '\\') {
          if (j + 1 >= n) {
            *why = "a [ is never closed by ]";
            return -1;
          }
          lo = cps[++j];
        }
        j++;
        uint32_t hi = lo;
        if (j + 1 < n && cps[j] == '-' && cps[j + 1] != ']') {
          j++;
          hi = cps[j];
          if (hi == '\\') {
            if (j + 1 >= n) {
              *why = "a [ is never closed by ]";
              return -1;
            }
            hi = cps[++j];
          }
          j++;
          if (hi < lo) {
            *why = "a range is reversed";
            return -1;
          }
        }
        g->ranges[g->nranges].lo = lo;
        g->ranges[g->nranges].hi = hi;
        g->nranges++;
        t->n++;
      }
      i = j;
    } else {
      t->kind = 0;
      t->cp = c;
    }
    g->ntokens++;
  }
  for (size_t j = 0; j <= g->ntokens; j++)
    if (stars[j])
      g->stay[j / 64] |= (uint64_t)1 << (j % 64);
  for (uint32_t u = 0; u < 128; u++)
    mask_of(g, u, g->ascii[u]);
  return 0;
}

bool pyro_glob_match(const struct pyro_glob *g, const unsigned char *name, size_t len) {
  const size_t w = (g->ntokens + 1 + 63) / 64;
  uint64_t d[PYRO_GLOB_WORDS] = {1}, mask[PYRO_GLOB_WORDS];
  for (size_t i = 0; i < len;) {
    uint32_t unit;
    i += decode_unit(name, len, i, &unit);
    const uint64_t *m = mask;
    if (unit < 128)
      m = g->ascii[unit];
    else
      mask_of(g, unit, mask);
    uint64_t any = 0, carry = 0;
    for (size_t k = 0; k < w; k++) {
      uint64_t v = d[k];
      uint64_t shifted = (v << 1) | carry;
      carry = v >> 63;
      d[k] = (shifted & m[k]) | (v & g->stay[k]);
      any |= d[k];
    }
    if (!any)
      return false;
  }
  size_t k = g->ntokens;
  return (d[k / 64] >> (k % 64)) & 1;
}
