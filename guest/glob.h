/* Exclude globs in linear time (glob.c); the same grammar and algorithm as
 * src/runtime/archive/glob.ts, so host and guest agree on every name. */
#ifndef PYRO_GLOB_H
#define PYRO_GLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PYRO_GLOB_MAX_BYTES 256
#define PYRO_GLOB_MAX_TOKENS PYRO_GLOB_MAX_BYTES
#define PYRO_GLOB_WORDS ((PYRO_GLOB_MAX_TOKENS + 1 + 63) / 64)

struct pyro_glob_range {
  uint32_t lo, hi;
};

struct pyro_glob_token {
  uint8_t kind; /* 0 literal, 1 any, 2 class */
  bool negated;
  uint32_t cp;        /* literal */
  uint16_t first, n;  /* class: ranges[first .. first+n) */
};

struct pyro_glob {
  size_t ntokens;
  struct pyro_glob_token tokens[PYRO_GLOB_MAX_TOKENS];
  struct pyro_glob_range ranges[PYRO_GLOB_MAX_BYTES];
  size_t nranges;
  uint64_t stay[PYRO_GLOB_WORDS];
  uint64_t ascii[128][PYRO_GLOB_WORDS];
};

/* Compiles a pattern; on error returns -1 and points *why at a message. */
int pyro_glob_compile(struct pyro_glob *g, const char *pattern, const char **why);
/* Whether the whole of name[0..len) matches. */
bool pyro_glob_match(const struct pyro_glob *g, const unsigned char *name, size_t len);

#endif
