/* pyro-agent probe: is a service in this sandbox ready?
 *
 *   pyro-agent probe tcp PORT          127.0.0.1:PORT accepts a connection
 *   pyro-agent probe http PORT PATH    GET PATH on 127.0.0.1:PORT answers 2xx
 *   pyro-agent connect PORT            stdin/stdout bridged to 127.0.0.1:PORT
 *                                      (one connection of a published port)
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
#include <signal.h>
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
  /* Read the rest of the answer (for at most a second) before closing: closed with unread data, the
   * socket resets the connection, and a server still writing the page logs that as an error (Python's
   * http.server printed a ConnectionResetError traceback into every probed service's log). */
  int64_t drain = monotonic_ms() + 1000;
  if (drain > deadline)
    drain = deadline;
  while (got > 0 && wait_fd(fd, POLLIN, drain) == 0) {
    char sink[16384];
    ssize_t r = recv(fd, sink, sizeof sink, 0);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
      break;
  }
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

/* ------------------------------------------------------------ connect */

#define RELAY_BUF 65536

/* One direction of the bridge: bytes read from `from`, not yet written to `to`. */
struct pipe_dir {
  int from, to;
  char buf[RELAY_BUF];
  size_t len, off;
  bool eof; /* `from` ended: once buf is empty, `to` is shut for writing */
  bool done;
};

static void dir_finish(struct pipe_dir *d, bool to_is_sock) {
  d->done = true;
  if (to_is_sock)
    (void)shutdown(d->to, SHUT_WR);
  else
    (void)close(d->to);
}

/* Bridges fds 0/1 and a TCP connection to 127.0.0.1:PORT until both
 * directions ended. Exit 0, or 1 when the port refused (its stderr says
 * why), 2 on a usage error. The host's relay (runtime/ports.ts) runs one
 * per connection it accepted on the host's loopback. */
int connect_main(int argc, char **argv) {
  if (argc != 2 || parse_port(argv[1]) < 0) {
    fprintf(stderr, "usage: pyro-agent connect PORT\n");
    return 2;
  }
  int port = parse_port(argv[1]);
  int sock = connect_local(port, monotonic_ms() + PROBE_TIMEOUT_MS);
  if (sock < 0) {
    fprintf(stderr, "connect: 127.0.0.1:%d: %s\n", port, strerror(errno));
    return 1;
  }
  (void)signal(SIGPIPE, SIG_IGN);
  static struct pipe_dir up, down; /* host -> service, service -> host */
  up.from = STDIN_FILENO;
  up.to = sock;
  down.from = sock;
  down.to = STDOUT_FILENO;
  /* Ends when the service's side has ended (and all of it reached the
   * host): like socat, a service that closed is the end of the connection
   * even if the host never half-closed. The host's end only half-closes. */
  while (!down.done) {
    struct pipe_dir *dirs[2] = {&up, &down};
    struct pollfd p[4];
    int n = 0, idx[4];
    for (int i = 0; i < 2; i++) {
      struct pipe_dir *d = dirs[i];
      if (d->done)
        continue;
      if (d->len == 0 && !d->eof) {
        p[n] = (struct pollfd){d->from, POLLIN, 0};
        idx[n++] = i * 2;
      } else if (d->len > 0) {
        p[n] = (struct pollfd){d->to, POLLOUT, 0};
        idx[n++] = i * 2 + 1;
      }
    }
    if (n > 0 && poll(p, (nfds_t)n, -1) < 0) {
      if (errno == EINTR)
        continue;
      return 1;
    }
    for (int k = 0; k < n; k++) {
      struct pipe_dir *d = dirs[idx[k] / 2];
      if (p[k].revents == 0)
        continue;
      if (idx[k] % 2 == 0) {
        ssize_t r = read(d->from, d->buf, sizeof d->buf);
        if (r > 0) {
          d->len = (size_t)r;
          d->off = 0;
        } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
          d->eof = true;
        }
      } else {
        ssize_t w = write(d->to, d->buf + d->off, d->len - d->off);
        if (w > 0) {
          d->off += (size_t)w;
          if (d->off == d->len)
            d->len = d->off = 0;
        } else if (w < 0 && errno != EINTR && errno != EAGAIN) {
          /* The other side is gone: nothing more can go this way. */
          d->len = d->off = 0;
          d->eof = true;
        }
      }
    }
    for (int i = 0; i < 2; i++)
      if (!dirs[i]->done && dirs[i]->eof && dirs[i]->len == 0)
        dir_finish(dirs[i], dirs[i] == &up);
  }
  close(sock);
  return 0;
}
