/* pyro-agent probe: is a service in this sandbox ready?
 *
 *   pyro-agent probe tcp PORT          127.0.0.1:PORT accepts a connection
 *   pyro-agent probe http PORT PATH    GET PATH on 127.0.0.1:PORT answers 2xx
 *
 * Exit 0 when ready, 1 when not (the last line of stderr says why), 2 on a
 * usage error. Every step is bounded (PROBE_TIMEOUT_MS), so a service that
 * accepts and never answers cannot hang its probe. Runs as an ordinary
 * command (the host execs /run/pyro-agent probe ...), under the sandbox's
 * seccomp filter, so the environment needs no nc or curl.
 */
#define _GNU_SOURCE
#include "probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#define PROBE_TIMEOUT_MS 5000
#define PROBE_PATH_MAX 1024

static int usage(void) {
  fprintf(stderr, "usage: pyro-agent probe tcp PORT | pyro-agent probe http PORT PATH\n");
  return 2;
}

static int parse_port(const char *s) {
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 65535)
    return -1;
  return (int)v;
}

/* Waits for events on fd within what is left of the deadline. */
static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - monotonic_ms();
    if (left <= 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    struct pollfd p = {fd, events, 0};
    int rc = poll(&p, 1, (int)left);
    if (rc > 0)
      return 0;
    if (rc < 0 && errno != EINTR)
      return -1;
  }
}

static int connect_local(int port, int64_t deadline) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    if (errno != EINPROGRESS || wait_fd(fd, POLLOUT, deadline) < 0) {
      int e = errno;
      close(fd);
      errno = e;
      return -1;
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
      close(fd);
      errno = err != 0 ? err : errno;
      return -1;
    }
  }
  return fd;
}

static int probe_http(int fd, int port, const char *path, int64_t deadline) {
  char req[PROBE_PATH_MAX + 128];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nUser-Agent: pyro-probe\r\nConnection: close\r\n\r\n", path, port);
  size_t off = 0;
  while (off < (size_t)n) {
    if (wait_fd(fd, POLLOUT, deadline) < 0)
      return -1;
    ssize_t w = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EINTR)
      return -1;
    if (w > 0)
      off += (size_t)w;
  }
  /* Only the status line matters: "HTTP/1.x NNN". */
  char buf[64];
  size_t got = 0;
  while (got < 12) {
    if (wait_fd(fd, POLLIN, deadline) < 0)
      return -1;
    ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
    if (r == 0)
      break;
    if (r < 0 && errno != EAGAIN && errno != EINTR)
      return -1;
    if (r > 0)
      got += (size_t)r;
  }
  buf[got] = '\0';
  if (got < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ') {
    fprintf(stderr, "probe: 127.0.0.1:%d did not answer HTTP\n", port);
    return 1;
  }
  if (buf[9] != '2') {
    fprintf(stderr, "probe: GET %s on 127.0.0.1:%d answered %.3s\n", path, port, buf + 9);
    return 1;
  }
  return 0;
}

int probe_main(int argc, char **argv) {
  if (argc < 3)
    return usage();
  bool http = strcmp(argv[1], "http") == 0;
  if ((!http && strcmp(argv[1], "tcp") != 0) || argc != (http ? 4 : 3))
    return usage();
  int port = parse_port(argv[2]);
  if (port < 0)
    return usage();
  const char *path = http ? argv[3] : NULL;
  if (path != NULL && (path[0] != '/' || strlen(path) > PROBE_PATH_MAX || strpbrk(path, " \r\n") != NULL))
    return usage();
  int64_t deadline = monotonic_ms() + PROBE_TIMEOUT_MS;
  int fd = connect_local(port, deadline);
  if (fd < 0) {
    fprintf(stderr, "probe: 127.0.0.1:%d: %s\n", port, strerror(errno));
    return 1;
  }
  int rc = 0;
  if (http) {
    rc = probe_http(fd, port, path, deadline);
    if (rc < 0) {
      fprintf(stderr, "probe: GET %s on 127.0.0.1:%d: %s\n", path, port, strerror(errno));
      rc = 1;
    }
  }
  close(fd);
  return rc;
}
