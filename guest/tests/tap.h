/* A tiny TAP harness: ok(cond, name...) prints "ok N - name" or "not ok";
 * tap_done() prints the plan and returns the exit status. */
#ifndef PYRO_TAP_H
#define PYRO_TAP_H

#include <stdarg.h>
#include <stdio.h>

static int tap_count;
static int tap_failed;

__attribute__((format(printf, 2, 3))) static void ok(int cond, const char *fmt, ...) {
  va_list ap;
  tap_count++;
  if (!cond)
    tap_failed++;
  printf("%s %d - ", cond ? "ok" : "not ok", tap_count);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
}

static int tap_done(void) {
  printf("1..%d\n", tap_count);
  if (tap_failed)
    fprintf(stderr, "# %d of %d failed\n", tap_failed, tap_count);
  return tap_failed ? 1 : 0;
}

#endif
