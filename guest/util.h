/* pyro-agent: small helpers shared by every part of the agent.
 *
 * Conventions (after bubblewrap's utils.h):
 *  - fds start at -1 and are closed by cleanup_fd unless stolen;
 *  - every read/write goes through TEMP_FAILURE_RETRY;
 *  - die() is only for the time before the agent serves anything (argument
 *    parsing, setup); once serving, errors are reported with warn*() and the
 *    agent goes on, because an exiting PID 1 takes the sandbox with it.
 */
#ifndef PYRO_UTIL_H
#define PYRO_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef TEMP_FAILURE_RETRY
#define TEMP_FAILURE_RETRY(expression)                                         \
  (__extension__({                                                             \
    long int __result;                                                         \
    do                                                                         \
      __result = (long int)(expression);                                       \
    while (__result == -1L && errno == EINTR);                                 \
    __result;                                                                  \
  }))
#endif

#define PYRO_NORETURN __attribute__((__noreturn__))
#define PYRO_PRINTF(a, b) __attribute__((__format__(__printf__, a, b)))
#define PYRO_UNUSED __attribute__((__unused__))
#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

void cleanup_freep(void *p);
void cleanup_fdp(int *fdp);
#define cleanup_free __attribute__((cleanup(cleanup_freep)))
#define cleanup_fd __attribute__((cleanup(cleanup_fdp)))

/* Takes ownership out of a cleanup variable: returns it and leaves NULL / -1. */
static inline void *steal_pointer(void *pp) {
  void **ptr = (void **)pp;
  void *ref = *ptr;
  *ptr = NULL;
  return ref;
}
static inline int steal_fd(int *fdp) {
  int fd = *fdp;
  *fdp = -1;
  return fd;
}

/* Closes *fdp if open and sets it to -1, keeping errno. */
void close_fd(int *fdp);

/* The integer in S, which must be all digits (a sign allowed) and within
 * [MIN, MAX]; otherwise FAIL is called (it does not return) with
 * "OPT needs an integer in [MIN, MAX], not "S"". For command-line options. */
int64_t parse_int_arg(const char *opt, const char *s, int64_t min, int64_t max,
                      void (*fail)(const char *why) PYRO_NORETURN);

void warn_msg(const char *fmt, ...) PYRO_PRINTF(1, 2);
/* Like warn_msg, with ": strerror(errno)" appended (errno saved first). */
void warn_errno(const char *fmt, ...) PYRO_PRINTF(1, 2);
PYRO_NORETURN void die(const char *fmt, ...) PYRO_PRINTF(1, 2);
PYRO_NORETURN void die_with_error(const char *fmt, ...) PYRO_PRINTF(1, 2);
/* A host-side subcommand's failed step (launch, tapnet): "pyro-agent CMD: WHAT[ ARG][: strerror(errno)]"
 * on stderr (errno 0: no reason) and exit 125, the status the host reads as "the helper refused". */
PYRO_NORETURN void die_step(const char *cmd, const char *what, const char *arg);

int set_nonblock(int fd);
/* Writes all of buf to a blocking fd; -1 with errno on failure. */
int write_all(int fd, const void *buf, size_t len);
/* Closes every fd >= lowfd (close_range, with a fallback for old kernels). */
void close_fds_from(int lowfd);

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t monotonic_ms(void);

#endif
