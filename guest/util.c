/* pyro-agent: helpers (see util.h). */
#define _GNU_SOURCE
#include "util.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>

void cleanup_freep(void *p) {
  void **pp = (void **)p;
  free(*pp);
}

void cleanup_fdp(int *fdp) { close_fd(fdp); }

void close_fd(int *fdp) {
  if (*fdp >= 0) {
    int errsv = errno;
    (void)close(*fdp);
    errno = errsv;
  }
  *fdp = -1;
}

static void vwarn(int err, const char *fmt, va_list ap) {
  char line[1024];
  int n = vsnprintf(line, sizeof line, fmt, ap);
  if (n < 0)
    return;
  size_t len = strnlen(line, sizeof line);
  if (err != 0 && len < sizeof line - 1)
    snprintf(line + len, sizeof line - len, ": %s", strerror(err));
  fprintf(stderr, "pyro-agent: %s\n", line);
}

void warn_msg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwarn(0, fmt, ap);
  va_end(ap);
}

void warn_errno(const char *fmt, ...) {
  int errsv = errno;
  va_list ap;
  va_start(ap, fmt);
  vwarn(errsv, fmt, ap);
  va_end(ap);
  errno = errsv;
}

void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwarn(0, fmt, ap);
  va_end(ap);
  exit(1);
}

void die_step(const char *cmd, const char *what, const char *arg) {
  if (errno != 0)
    fprintf(stderr, "pyro-agent %s: %s%s%s: %s\n", cmd, what, arg ? " " : "", arg ? arg : "", strerror(errno));
  else
    fprintf(stderr, "pyro-agent %s: %s%s%s\n", cmd, what, arg ? " " : "", arg ? arg : "");
  exit(125);
}

void die_with_error(const char *fmt, ...) {
  int errsv = errno;
  va_list ap;
  va_start(ap, fmt);
  vwarn(errsv, fmt, ap);
  va_end(ap);
  exit(1);
}

int set_nonblock(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0)
    return -1;
  if (flags & O_NONBLOCK)
    return 0;
  return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = TEMP_FAILURE_RETRY(write(fd, p, len));
    if (n < 0)
      return -1;
    if (n == 0) {
      errno = EIO;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

void close_fds_from(int lowfd) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0U) == 0)
    return;
#endif
  long max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > 65536)
    max = 65536;
  for (int fd = lowfd; fd < max; fd++)
    (void)close(fd);
}

int64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t parse_int_arg(const char *opt, const char *s, int64_t min, int64_t max,
                      void (*fail)(const char *why) PYRO_NORETURN) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s needs an integer in [%lld, %lld], not \"%.40s\"", opt,
             (long long)min, (long long)max, s);
    fail(msg);
  }
  return v;
}
