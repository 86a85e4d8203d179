/* Unit tests of the exclude glob matcher (glob.c): the same vectors as
 * test/unit/glob.test.ts, so host and guest agree; and a time bound on the
 * pattern that made fnmatch(3) backtrack for minutes. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "glob.h"
#include "tap.h"

struct vec {
  const char *pattern, *name;
  int want;
};

static const struct vec VECS[] = {
    {"*.log", "a.log", 1},        {"*.log", "a.logx", 0},       {"a?c", "abc", 1},
    {"a?c", "ac", 0},             {"[a-c]x", "bx", 1},          {"[!a-c]x", "bx", 0},
    {"[^a-c]x", "dx", 1},         {"[]]", "]", 1},              {"\\*", "*", 1},
    {"\\*", "a", 0},              {"*", "", 1},                 {"a*b*c", "aXbYc", 1},
    {"a*b*c", "aXbY", 0},         {"caf?.txt", "caf\xc3\xa9.txt", 1},
    {"caf?.txt", "caf\xe9.txt", 1}, {"caf[!x].txt", "caf\xe9.txt", 1},
    {"src/*.ts", "src/a/b.ts", 1}, {"**", "x/y", 1},            {"[a-]", "-", 1},
    {"node_modules", "node_modules", 1}, {"node_modules", "node_module", 0},
    {"*a*a*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaab", 1},
};

static const char *INVALID[] = {"[abc", "a\\", "[z-a]", "", "\xff"};

int main(void) {
  struct pyro_glob *g = malloc(sizeof *g);
  const char *why = "";
  for (size_t i = 0; i < sizeof VECS / sizeof VECS[0]; i++) {
    const struct vec *v = &VECS[i];
    int rc = pyro_glob_compile(g, v->pattern, &why);
    ok(rc == 0 && pyro_glob_match(g, (const unsigned char *)v->name, strlen(v->name)) == (v->want != 0),
       "'%s' %s '%s'", v->pattern, v->want ? "matches" : "does not match", v->name);
  }
  for (size_t i = 0; i < sizeof INVALID / sizeof INVALID[0]; i++)
    ok(pyro_glob_compile(g, INVALID[i], &why) < 0 && why[0], "'%s' is refused (%s)", INVALID[i], why);
  char longp[300];
  memset(longp, 'a', 257);
  longp[257] = '\0';
  ok(pyro_glob_compile(g, longp, &why) < 0, "a 257-byte pattern is refused");

  /* The crafted pattern against 1000 names of 4096 'a's: fnmatch takes minutes on one. */
  pyro_glob_compile(g, "*a*a*a*a*a*a*a*a*a*b", &why);
  static unsigned char name[4096];
  memset(name, 'a', sizeof name);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int hits = 0;
  for (int i = 0; i < 1000; i++) hits += pyro_glob_match(g, name, sizeof name);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  ok(hits == 0 && ms < 2000, "1000 crafted matches of 4096 bytes in %.1f ms (bound 2000)", ms);
  free(g);
  return tap_done();
}
