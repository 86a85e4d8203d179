/* pyro-agent vmm: the host-side supervisor and multiplexer of one VM.
 *
 * One process, one epoll loop, whose life is the VM's:
 *   boot:  start VMM_ARGV (own process group, PDEATHSIG, fds 0-2 only:
 *          stdin /dev/null, stdout+stderr a pipe we read into the console
 *          log), reach the guest stream, HELLO -> HELLO_ACK, SYNC -> SYNCED,
 *          all within --boot-timeout-ms; then 'R' on the ready fd (or 'E' and
 *          one line: what failed and the console's last lines).
 *   serve: accept up to 16 host connections on SOCK and carry each one's
 *          protocol over the ONE guest stream (relay.c holds the tables).
 *   end:   the VMM exits (we exit with its status), SIGTERM/SIGINT/SIGHUP,
 *          the deadline, or a fault of the guest (ERROR, a malformed frame,
 *          the stream closing): the VMM is killed and reaped, SOCK removed.
 *
 * The guest is hostile: every frame from it goes through pyro_split (the
 * bounds-checked header parser), relay_check_guest_payload and the relay
 * tables; anything wrong ends the VM, never us. Memory is bounded: one
 * input frame per stream, per client a queue bounded by the credit that
 * client granted, capped at CLIENT_OUTQ_MAX (a client that grants credit
 * and does not read is dropped), and the guest-bound queue V.gout:
 *
 *   V.gout.bytes < PYRO_OUTQ_LIMIT + PYRO_MAX_FRAME + 1024 * 12,
 *
 * whatever the guest does (it may never read its stream). Everything
 * queued there is either admitted only while the queue is under
 * PYRO_OUTQ_LIMIT (a client's frame: client_process; a refund WINDOW:
 * send_refunds), or is a KILL (or, for a kept channel, a DETACH) at a
 * client's close, one per live channel, and no channel opens while the
 * queue is over the limit (1024 channels x a 12-byte KILL or DETACH).
 * A kept channel whose client went is DETACHING: its frames are dropped
 * and no credit is owed (the agent reads a detached channel without any
 * and resets both windows at ATTACH), so it queues nothing for the guest
 * either; its id is freed by DETACHED (or EXIT / OPEN_FAILED if it ended
 * first). ATTACH and LIST take a guest id like OPEN (the same limits);
 * ATTACHED, DETACHED and KEPT are checked like every guest frame
 * (relay_check_guest_payload: KEPT's count, keys and states), and one out
 * of turn (ATTACHED for an OPEN, KEPT for no LIST, DETACHED on a channel
 * that is not kept) ends the VM. Nothing the guest sends queues anything for it: the
 * credit of output dropped on a killed channel is owed, one sum per
 * channel in the relay table, and goes out as one WINDOW when there is
 * room. A guest that does not read so gets no more credit than it had,
 * and output past it ends the VM (E_FLOW). A chunk costs at most ~3x its
 * bytes (12-byte frames, 16-byte header, malloc's), so under 4 MiB.
 *
 * Every client protocol error the agent would answer with ERROR (which
 * ends its connection: here, the whole VM) is caught before forwarding and
 * charged to that client alone.
 */
#define _GNU_SOURCE
#include "vmm.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "proto.h"
#include "relay.h"
#include "transport.h"
#include "util.h"

#define CONSOLE_MAX_DEFAULT (1024 * 1024)
#define CONSOLE_TAIL 4096
#define BOOT_TIMEOUT_DEFAULT_MS 30000
#define CONNECT_RETRY_MS 20
#define SHUTDOWN_GRACE_MS 10000
#define CLIENT_OUTQ_MAX (8u * 1024 * 1024)
#define MAX_WINDOW (4u * 1024 * 1024) /* what the host accepts (docs/protocol.md) */
#define SYNC_SEED_LEN 32u
#define MAX_AGENT_VERSION 256u
/* The guest stream is read in batches of several frames: one read per
 * 64 KiB frame made a 64 MiB output 1.5x slower than straight. */
#define GIN_CAP (4u * PYRO_MAX_FRAME)

enum tag { T_SIGNAL = 1, T_LISTEN, T_GUEST, T_CONSOLE, T_CLIENT };

enum state {
  S_CONNECT,   /* waiting for the guest stream to accept us */
  S_VSOCK,     /* firecracker: CONNECT sent, waiting for "OK ...\n" */
  S_HELLO,     /* HELLO sent */
  S_SYNC,      /* SYNC sent */
  S_SERVE,     /* 'R' written, serving clients */
  S_PREPARED,  /* --prepare-snapshot: stream closed, waiting to be killed */
  S_SHUTDOWN,  /* a client sent SHUTDOWN: the guest's end is expected */
};

enum guest_kind { G_UNIX, G_VSOCK, G_FD };

struct chunk {
  struct chunk *next;
  size_t len;
  uint8_t data[];
};

struct queue {
  struct chunk *head, *tail;
  size_t off;
  size_t bytes;
};

struct client {
  bool used;
  bool hello_done;
  int fd;
  uint32_t events;
  unsigned slot; /* relay slot */
  size_t in_len;
  uint8_t *in; /* PYRO_MAX_FRAME */
  struct queue out;
};

/* A restore with network passes two: the snapshot and passt's socketpair end. */
#define PASS_MAX 2

struct args {
  const char *listen;
  const char *guest;
  const char *console;
  int ready_fd;
  uint64_t console_max;
  int64_t deadline;
  bool die_with_parent;
  int boot_timeout_ms;
  bool prepare_snapshot;
  /* --pass-fd N (at most twice): inherited fds handed to the VMM at the
   * same numbers and closed in the vmm once the VMM runs (qemu's `-netdev
   * stream,addr.type=fd` to passt: the network's socketpair, no path; a
   * restore's snapshot file, `-incoming fd:N`; a restored VM with network
   * gets both); -1 for none. */
  int pass_fd[PASS_MAX];
  char **vmm_argv;
};

struct vmm {
  struct args a;
  enum guest_kind gkind;
  char gpath[108];
  uint32_t gport;
  int gfd_child; /* G_FD: the fd number the VMM gets its end at */

  enum state state;
  int epfd, sigfd, listen_fd, guest_fd, console_fd, log_fd, ready_fd;
  uint32_t guest_events, listen_events;
  pid_t child;
  bool child_exited;
  int child_status;
  int64_t boot_deadline;  /* monotonic ms */
  int64_t next_connect;   /* monotonic ms */
  int64_t shutdown_until; /* monotonic ms, S_SHUTDOWN */
  bool socket_made;
  bool stop;
  int exit_code;

  /* The guest stream. */
  uint8_t *gin;
  size_t gin_len;
  struct queue gout;
  char vsock_line[64];
  size_t vsock_len;
  uint32_t guest_version;
  uint8_t hello_ack[PYRO_HDR_LEN + 16 + MAX_AGENT_VERSION];
  size_t hello_ack_len;

  /* Console: the log keeps the head (up to console_max bytes, counting what
   * the file already held); the last CONSOLE_TAIL bytes are also kept here,
   * for the one-line error reports, which want the end. Keeping the head
   * rather than rotating means the boot messages, which explain most
   * failures, are never lost to a guest that prints without end. */
  uint64_t log_bytes;
  bool log_capped;
  char tail[CONSOLE_TAIL];
  size_t tail_pos, tail_len;

  struct relay relay;
  struct client clients[RELAY_MAX_CLIENTS];
  uint8_t scratch[PYRO_MAX_FRAME];
};

static struct vmm V;

/* ---------------------------------------------------------------- usage */

PYRO_NORETURN static void usage(const char *why) {
  if (why != NULL)
    fprintf(stderr, "pyro-agent vmm: %s\n", why);
  fprintf(stderr,
          "usage: pyro-agent vmm --listen SOCK --guest unix:PATH|vsock:PATH:PORT|fd:N\n"
          "         --ready-fd N --console FILE [--console-max BYTES] [--deadline UNIX_SECONDS]\n"
          "         [--die-with-parent] [--boot-timeout-ms N] [--prepare-snapshot] [--pass-fd N]...\n"
          "         -- VMM_ARGV...\n");
  exit(2);
}

static int64_t parse_int(const char *opt, const char *s, int64_t min, int64_t max) {
  return parse_int_arg(opt, s, min, max, usage);
}

static void parse_guest(struct vmm *v, const char *g) {
  const char *path;
  if (strncmp(g, "unix:", 5) == 0) {
    v->gkind = G_UNIX;
    path = g + 5;
    if (strlen(path) == 0 || strlen(path) >= sizeof v->gpath)
      usage("--guest unix:PATH needs a path of 1..107 bytes");
    strcpy(v->gpath, path);
  } else if (strncmp(g, "vsock:", 6) == 0) {
    v->gkind = G_VSOCK;
    path = g + 6;
    const char *colon = strrchr(path, ':');
    if (colon == NULL || colon == path || (size_t)(colon - path) >= sizeof v->gpath)
      usage("--guest vsock:PATH:PORT needs a path of 1..107 bytes and a port");
    memcpy(v->gpath, path, (size_t)(colon - path));
    v->gpath[colon - path] = '\0';
    v->gport = (uint32_t)parse_int("--guest vsock port", colon + 1, 1, UINT32_MAX);
  } else if (strncmp(g, "fd:", 3) == 0) {
    v->gkind = G_FD;
    v->gfd_child = (int)parse_int("--guest fd", g + 3, 3, 1023);
  } else {
    usage("--guest must be unix:PATH, vsock:PATH:PORT or fd:N");
  }
}

static void parse_args(int argc, char **argv, struct vmm *v) {
  struct args *a = &v->a;
  memset(a, 0, sizeof *a);
  a->ready_fd = -1;
  for (int k = 0; k < PASS_MAX; k++)
    a->pass_fd[k] = -1;
  int passes = 0;
  a->console_max = CONSOLE_MAX_DEFAULT;
  a->boot_timeout_ms = BOOT_TIMEOUT_DEFAULT_MS;
  int i = 1;
  for (; i < argc; i++) {
    const char *opt = argv[i];
    if (strcmp(opt, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(opt, "--die-with-parent") == 0) {
      a->die_with_parent = true;
      continue;
    }
    if (strcmp(opt, "--prepare-snapshot") == 0) {
      a->prepare_snapshot = true;
      continue;
    }
    if (i + 1 >= argc)
      usage("an option is missing its value");
    const char *val = argv[++i];
    if (strcmp(opt, "--listen") == 0)
      a->listen = val;
    else if (strcmp(opt, "--guest") == 0)
      a->guest = val;
    else if (strcmp(opt, "--console") == 0)
      a->console = val;
    else if (strcmp(opt, "--ready-fd") == 0)
      a->ready_fd = (int)parse_int(opt, val, 0, INT_MAX);
    else if (strcmp(opt, "--console-max") == 0)
      a->console_max = (uint64_t)parse_int(opt, val, 4096, INT64_MAX / 2);
    else if (strcmp(opt, "--deadline") == 0)
      a->deadline = parse_int(opt, val, 1, INT64_MAX / 2000);
    else if (strcmp(opt, "--boot-timeout-ms") == 0)
      a->boot_timeout_ms = (int)parse_int(opt, val, 1, 3600 * 1000);
    else if (strcmp(opt, "--pass-fd") == 0) {
      if (passes == PASS_MAX)
        usage("--pass-fd is given at most twice");
      a->pass_fd[passes++] = (int)parse_int(opt, val, 3, 1023);
    }
    else
      usage("unknown option");
  }
  if (i >= argc)
    usage("the VMM's command line goes after --");
  a->vmm_argv = argv + i;
  if (a->guest == NULL || a->console == NULL || a->ready_fd < 0)
    usage("vmm needs --guest, --console and --ready-fd");
  if (a->listen == NULL && !a->prepare_snapshot)
    usage("vmm needs --listen (only --prepare-snapshot serves nothing)");
  if (a->ready_fd <= STDERR_FILENO)
    usage("--ready-fd must be above 2");
  parse_guest(v, a->guest);
  if (v->gkind == G_FD && v->gfd_child == a->ready_fd)
    usage("--guest fd:N must not be the ready fd");
  for (int k = 0; k < passes; k++) {
    if (a->pass_fd[k] == a->ready_fd || (v->gkind == G_FD && a->pass_fd[k] == v->gfd_child))
      usage("--pass-fd N must be neither the ready fd nor the guest's fd:N");
    if (k > 0 && a->pass_fd[k] == a->pass_fd[0])
      usage("--pass-fd N is given twice with the same N");
  }
}

/* ------------------------------------------------------------- helpers */

static void close_range_from_to(unsigned lo, unsigned hi) {
  if (lo > hi)
    return;
#ifdef SYS_close_range
  if (syscall(SYS_close_range, lo, hi, 0U) == 0)
    return;
#endif
  unsigned max = hi > 65535 ? 65535 : hi;
  for (unsigned fd = lo; fd <= max; fd++)
    (void)close((int)fd);
}

/* Closes every fd above 2 except the n in keep (-1 for none; n <= KEEP_MAX). */
#define KEEP_MAX 5
static void close_fds_except(const int *keep, int n) {
  int k[KEEP_MAX];
  if (n > KEEP_MAX)
    n = KEEP_MAX;
  memcpy(k, keep, sizeof k[0] * (size_t)n);
  for (int i = 0; i < n; i++) /* sort them */
    for (int j = i + 1; j < n; j++)
      if (k[j] < k[i]) {
        int t = k[i];
        k[i] = k[j];
        k[j] = t;
      }
  unsigned lo = 3;
  for (int i = 0; i < n; i++) {
    if (k[i] < 3 || (unsigned)k[i] < lo)
      continue;
    close_range_from_to(lo, (unsigned)k[i] - 1);
    lo = (unsigned)k[i] + 1;
  }
  close_range_from_to(lo, ~0U);
}

static struct chunk *chunk_new(size_t len) {
  struct chunk *c = malloc(sizeof *c + len);
  if (c != NULL) {
    c->next = NULL;
    c->len = len;
  }
  return c;
}

static void queue_push(struct queue *q, struct chunk *c) {
  if (q->tail != NULL)
    q->tail->next = c;
  else
    q->head = c;
  q->tail = c;
  q->bytes += c->len;
}

static void queue_clear(struct queue *q) {
  struct chunk *c = q->head;
  while (c != NULL) {
    struct chunk *next = c->next;
    free(c);
    c = next;
  }
  memset(q, 0, sizeof *q);
}

/* Writes what fd takes of q. 0, or -1 (errno) when the fd failed. */
static int queue_flush(struct queue *q, int fd) {
  while (q->head != NULL) {
    struct iovec iov[64];
    int n = 0;
    size_t off = q->off;
    for (struct chunk *k = q->head; k != NULL && n < 64; k = k->next) {
      iov[n].iov_base = k->data + off;
      iov[n].iov_len = k->len - off;
      off = 0;
      n++;
    }
    ssize_t w = TEMP_FAILURE_RETRY(writev(fd, iov, n));
    if (w < 0)
      return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    size_t left = (size_t)w;
    q->bytes -= left;
    while (left > 0) {
      struct chunk *c = q->head;
      size_t rest = c->len - q->off;
      if (left < rest) {
        q->off += left;
        break;
      }
      left -= rest;
      q->head = c->next;
      if (q->head == NULL)
        q->tail = NULL;
      q->off = 0;
      free(c);
    }
  }
  return 0;
}

/* Queues a copy of a frame, with its channel field set to channel. */
static bool queue_frame(struct queue *q, const uint8_t *frame, size_t len, uint32_t channel) {
  struct chunk *c = chunk_new(len);
  if (c == NULL)
    return false;
  memcpy(c->data, frame, len);
  pyro_put_le32(c->data + 4, channel);
  queue_push(q, c);
  return true;
}

static void want(int fd, uint32_t *have, uint32_t events, uint64_t tag) {
  if (fd < 0 || *have == events)
    return;
  struct epoll_event ev = {.events = events, .data.u64 = tag};
  int op = events == 0 ? EPOLL_CTL_DEL : *have == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  if (epoll_ctl(V.epfd, op, fd, &ev) < 0) {
    warn_errno("vmm: epoll_ctl on fd %d", fd);
    return;
  }
  *have = events;
}

/* ------------------------------------------------------------- console */

static void console_keep(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    V.tail[V.tail_pos] = p[i];
    V.tail_pos = (V.tail_pos + 1) % CONSOLE_TAIL;
  }
  V.tail_len = V.tail_len + n > CONSOLE_TAIL ? CONSOLE_TAIL : V.tail_len + n;
}

static void console_write(const char *p, size_t n) {
  console_keep(p, n);
  if (V.log_capped || V.log_fd < 0)
    return;
  uint64_t room = V.a.console_max > V.log_bytes ? V.a.console_max - V.log_bytes : 0;
  size_t w = n < room ? n : (size_t)room;
  if (w > 0 && write_all(V.log_fd, p, w) < 0)
    warn_errno("vmm: write to the console log");
  V.log_bytes += w;
  if (w < n) {
    char note[128];
    int m = snprintf(note, sizeof note,
                     "\n[pyro-agent vmm: console output past %llu bytes is not kept]\n",
                     (unsigned long long)V.a.console_max);
    if (m > 0)
      (void)write_all(V.log_fd, note, (size_t)m);
    V.log_capped = true;
  }
}

/* Reads what the VMM printed. Returns false at EOF. */
static bool console_drain(void) {
  char buf[16384];
  for (int rounds = 0; rounds < 64; rounds++) {
    ssize_t n = TEMP_FAILURE_RETRY(read(V.console_fd, buf, sizeof buf));
    if (n < 0)
      return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0)
      return false;
    console_write(buf, (size_t)n);
  }
  return true;
}

/* The console's last lines, made one printable line (at most cap-1 bytes).
 * A kernel panic's own line says most, and its stack trace would push it
 * out of the tail: when the tail holds one, the report starts there. */
static void console_tail_line(char *out, size_t cap) {
  size_t n = V.tail_len, start = (V.tail_pos + CONSOLE_TAIL - n) % CONSOLE_TAIL;
  size_t want_bytes = cap > 16 ? cap - 16 : 0;
  size_t skip = n > want_bytes ? n - want_bytes : 0;
  static const char panic[] = "Kernel panic";
  for (size_t i = 0; i + sizeof panic - 1 <= n; i++) {
    size_t k = 0;
    while (k < sizeof panic - 1 && V.tail[(start + i + k) % CONSOLE_TAIL] == panic[k])
      k++;
    if (k == sizeof panic - 1) {
      skip = i;
      break;
    }
  }
  size_t o = 0;
  bool sep = false;
  for (size_t i = skip; i < n && o + 4 < cap; i++) {
    unsigned char ch = (unsigned char)V.tail[(start + i) % CONSOLE_TAIL];
    if (ch == '\n' || ch == '\r') {
      sep = o > 0;
      continue;
    }
    if (sep) {
      out[o++] = ' ';
      out[o++] = '|';
      out[o++] = ' ';
      sep = false;
      if (o + 4 >= cap)
        break;
    }
    out[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
  }
  out[o] = '\0';
}

/* ------------------------------------------------------------ the VMM */

static void kill_vmm(void) {
  if (V.child <= 0 || V.child_exited)
    return;
  (void)kill(-V.child, SIGKILL);
  (void)kill(V.child, SIGKILL);
  int st;
  while (waitpid(V.child, &st, 0) < 0 && errno == EINTR) {
  }
  V.child_exited = true;
  V.child_status = st;
}

static int status_code(int st) {
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  if (WIFSIGNALED(st))
    return 128 + WTERMSIG(st);
  return 1;
}

static void describe_status(int st, char *out, size_t cap) {
  if (WIFEXITED(st))
    snprintf(out, cap, "exited with status %d", WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    snprintf(out, cap, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
  else
    snprintf(out, cap, "ended (wait status %d)", st);
}

/* Starts the VMM. guest_child: the fd to hand it at V.gfd_child, or -1. */
static int spawn_vmm(int out_w, int guest_child, char *msg, size_t cap) {
  int ep[2];
  if (pipe2(ep, O_CLOEXEC) < 0) {
    snprintf(msg, cap, "cannot make a pipe: %s", strerror(errno));
    return -1;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(msg, cap, "cannot fork: %s", strerror(errno));
    close(ep[0]);
    close(ep[1]);
    return -1;
  }
  if (pid == 0) {
    int err = 0;
    /* The exec-error pipe must not sit where the guest's end goes. */
    if (guest_child >= 0 && ep[1] == V.gfd_child) {
      int moved = fcntl(ep[1], F_DUPFD_CLOEXEC, V.gfd_child + 1);
      if (moved < 0)
        _exit(127);
      ep[1] = moved;
    }
    /* Its own group, so one kill takes whatever it started; and it dies
     * with us (a kill -9 of the vmm must not leave a VM running). The
     * getppid check closes the race with our death before the prctl. */
    if (setpgid(0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
      err = errno;
    else if (getppid() != parent)
      _exit(127);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (err == 0 && (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 ||
                     dup2(out_w, STDOUT_FILENO) < 0 || dup2(out_w, STDERR_FILENO) < 0))
      err = errno;
    if (err == 0 && guest_child >= 0) {
      if (guest_child == V.gfd_child) {
        if (fcntl(guest_child, F_SETFD, 0) < 0)
          err = errno;
      } else if (dup2(guest_child, V.gfd_child) < 0) {
        err = errno;
      }
    }
    for (int k = 0; k < PASS_MAX; k++)
      if (err == 0 && V.a.pass_fd[k] >= 0 && fcntl(V.a.pass_fd[k], F_SETFD, 0) < 0)
        err = errno;
    if (err == 0) {
      /* fds 0-2, the guest stream's end, the passed fds, and the exec-error pipe (CLOEXEC). */
      int keep[] = {guest_child >= 0 ? V.gfd_child : -1, ep[1], V.a.pass_fd[0], V.a.pass_fd[1]};
      close_fds_except(keep, (int)(sizeof keep / sizeof keep[0]));
      sigset_t none;
      sigemptyset(&none);
      (void)sigprocmask(SIG_SETMASK, &none, NULL);
      (void)signal(SIGPIPE, SIG_DFL);
      execvp(V.a.vmm_argv[0], V.a.vmm_argv);
      err = errno;
    }
    if (write(ep[1], &err, sizeof err) < 0)
      _exit(127);
    _exit(127);
  }
  close(ep[1]);
  V.child = pid;
  int err = 0;
  ssize_t n = TEMP_FAILURE_RETRY(read(ep[0], &err, sizeof err));
  close(ep[0]);
  if (n == (ssize_t)sizeof err) {
    snprintf(msg, cap, "cannot run the VMM %s: %s", V.a.vmm_argv[0], strerror(err));
    return -1;
  }
  return 0;
}

/* ----------------------------------------------------------- endings */

static void ready_write(const char *line) {
  if (V.ready_fd < 0)
    return;
  if (write_all(V.ready_fd, line, strlen(line)) < 0)
    warn_errno("vmm: write to the ready fd");
  close_fd(&V.ready_fd);
}

static void client_close(struct client *c);

static void cleanup(void) {
  for (unsigned i = 0; i < RELAY_MAX_CLIENTS; i++)
    if (V.clients[i].used)
      client_close(&V.clients[i]);
  close_fd(&V.guest_fd);
  kill_vmm();
  if (V.socket_made) {
    (void)unlink(V.a.listen);
    V.socket_made = false;
  }
  close_fd(&V.listen_fd);
}

/* A failure: before ready, 'E' + what failed + the console's end; after,
 * every client is told. Then the VMM goes, and we exit 1. */
PYRO_NORETURN static void fail(const char *what) {
  char tail[700], line[1100];
  /* What the VMM printed last often says why (a dead VMM's pipe holds it
   * all; console_drain stops at EAGAIN if a grandchild keeps it open). */
  if (V.console_fd >= 0)
    (void)console_drain();
  console_tail_line(tail, sizeof tail);
  snprintf(line, sizeof line, "E%s%s%s\n", what, tail[0] ? "; console: " : "", tail);
  warn_msg("vmm: %s", what);
  ready_write(line);
  for (unsigned i = 0; i < RELAY_MAX_CLIENTS; i++) {
    struct client *c = &V.clients[i];
    if (!c->used)
      continue;
    size_t n = pyro_enc_code_msg(V.scratch, sizeof V.scratch, PYRO_ERROR, 0, PYRO_E_PROTOCOL, what);
    struct chunk *k = n ? chunk_new(n) : NULL;
    if (k != NULL) {
      memcpy(k->data, V.scratch, n);
      queue_push(&c->out, k);
    }
    (void)queue_flush(&c->out, c->fd); /* best effort: it may not read */
  }
  cleanup();
  exit(1);
}

/* ------------------------------------------------------------- clients */

static void client_close(struct client *c) {
  uint32_t gids[RELAY_CLIENT_CHANNELS];
  if (!c->used)
    return;
  /* The agent's own semantics for a closed connection: its processes die.
   * The relay owes each a window of credit (send_refunds), which lets the
   * agent drain their pipes and send the EXIT that frees each id. */
  unsigned n = relay_client_gone(&V.relay, c->slot, gids);
  for (unsigned i = 0; i < n; i++) {
    uint8_t f[PYRO_HDR_LEN];
    /* A kept channel belongs to the VM: DETACH, it runs on. */
    uint8_t type = relay_detaching(&V.relay, gids[i]) ? PYRO_DETACH : PYRO_KILL;
    size_t len = pyro_enc_empty(f, sizeof f, type, gids[i]);
    if (!queue_frame(&V.gout, f, len, gids[i]))
      fail("out of memory");
  }
  want(c->fd, &c->events, 0, 0);
  close_fd(&c->fd);
  queue_clear(&c->out);
  free(c->in);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

static void client_send(struct client *c, const uint8_t *frame, size_t len, uint32_t channel) {
  if (!queue_frame(&c->out, frame, len, channel))
    fail("out of memory");
  if (c->out.bytes > CLIENT_OUTQ_MAX) {
    warn_msg("vmm: a client granted credit it does not read: dropped");
    client_close(c);
  }
}

/* A guest frame to a client, rewritten in place (the guest buffer is ours).
 * With nothing queued for that client it is written at once, saving the
 * copy into a queue chunk; what the socket does not take is queued. */
static void client_forward(struct client *c, uint8_t *frame, size_t len, uint32_t channel) {
  pyro_put_le32(frame + 4, channel);
  size_t done = 0;
  if (c->out.bytes == 0) {
    ssize_t w = TEMP_FAILURE_RETRY(write(c->fd, frame, len));
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      client_close(c);
      return;
    }
    done = w > 0 ? (size_t)w : 0;
  }
  if (done < len) {
    struct chunk *k = chunk_new(len - done);
    if (k == NULL)
      fail("out of memory");
    memcpy(k->data, frame + done, len - done);
    queue_push(&c->out, k);
    if (c->out.bytes > CLIENT_OUTQ_MAX) {
      warn_msg("vmm: a client granted credit it does not read: dropped");
      client_close(c);
    }
  }
}

static void client_error(struct client *c, int code, const char *why) {
  size_t n = pyro_enc_code_msg(V.scratch, sizeof V.scratch, PYRO_ERROR, 0, (uint32_t)code, why);
  if (n > 0) {
    client_send(c, V.scratch, n, 0);
    if (c->used)
      (void)queue_flush(&c->out, c->fd);
  }
  client_close(c);
}

static void guest_send(const uint8_t *frame, size_t len, uint32_t channel) {
  if (!queue_frame(&V.gout, frame, len, channel))
    fail("out of memory");
}

/* The credit owed to killed channels, as WINDOWs, while the guest-bound
 * queue has room: one per channel however many frames were dropped, and
 * none for a guest that does not read (see the bound at the top). */
static void send_refunds(void) {
  if (V.guest_fd < 0 || (V.state != S_SERVE && V.state != S_SHUTDOWN))
    return;
  uint32_t gid, inc;
  while (V.gout.bytes < PYRO_OUTQ_LIMIT && relay_refund_next(&V.relay, &gid, &inc)) {
    uint8_t f[PYRO_HDR_LEN + 4];
    size_t n = pyro_enc_u32(f, sizeof f, PYRO_WINDOW, gid, inc);
    guest_send(f, n, gid);
  }
}

/* One decoded frame from a client. */
static void client_frame(struct client *c, const uint8_t *frame, const struct pyro_msg *m) {
  size_t flen = PYRO_HDR_LEN + m->hdr.length;
  uint32_t cid = m->hdr.channel, gid;
  const char *why = "";
  int code;
  uint8_t f[PYRO_HDR_LEN + 8];

  if (!c->hello_done && m->hdr.type != PYRO_HELLO) {
    client_error(c, PYRO_E_PROTOCOL, "the first frame must be HELLO");
    return;
  }
  switch ((enum pyro_type)m->hdr.type) {
  case PYRO_HELLO:
    if (c->hello_done) {
      client_error(c, PYRO_E_PROTOCOL, "second HELLO");
      return;
    }
    /* Negotiated as the agent does, against the guest's version. */
    if (m->u.hello.min_version > V.guest_version || m->u.hello.max_version < V.guest_version) {
      char msg[96];
      snprintf(msg, sizeof msg, "no common protocol version (agent speaks %u)", V.guest_version);
      client_error(c, PYRO_E_VERSION, msg);
      return;
    }
    c->hello_done = true;
    client_send(c, V.hello_ack, V.hello_ack_len, 0);
    return;
  case PYRO_OPEN:
  case PYRO_ATTACH:
  case PYRO_LIST:
    code = relay_open_as(&V.relay, c->slot, cid, m->hdr.type == PYRO_OPEN ? m->u.open.flags : 0,
                         m->hdr.type == PYRO_OPEN     ? RELAY_K_OPEN
                         : m->hdr.type == PYRO_ATTACH ? RELAY_K_ATTACH
                                                      : RELAY_K_LIST,
                         &gid, &why);
    if (code != PYRO_OK) {
      client_error(c, code, why);
      return;
    }
    guest_send(frame, flen, gid);
    return;
  case PYRO_DETACH:
  case PYRO_STDIN:
  case PYRO_STDIN_EOF:
  case PYRO_SIGNAL:
  case PYRO_KILL:
  case PYRO_WINDOW:
  case PYRO_RESIZE:
    gid = relay_lookup(&V.relay, c->slot, cid);
    if (gid == 0)
      return; /* a channel that ended: the agent ignores these too */
    code = PYRO_OK;
    if (m->hdr.type == PYRO_STDIN)
      code = relay_client_stdin(&V.relay, gid, m->hdr.length, &why);
    else if (m->hdr.type == PYRO_STDIN_EOF)
      code = relay_client_stdin_eof(&V.relay, gid, &why);
    else if (m->hdr.type == PYRO_WINDOW)
      relay_client_window(&V.relay, gid, m->u.value);
    else if (m->hdr.type == PYRO_DETACH)
      code = relay_client_detach(&V.relay, gid, &why);
    if (code != PYRO_OK) {
      client_error(c, code, why);
      return;
    }
    guest_send(frame, flen, gid);
    return;
  case PYRO_PING: {
    uint64_t token;
    code = relay_ping(&V.relay, c->slot, m->payload, m->hdr.length, &token, &why);
    if (code != PYRO_OK) {
      client_error(c, code, why);
      return;
    }
    uint8_t tok[8];
    pyro_put_le32(tok, (uint32_t)token);
    pyro_put_le32(tok + 4, (uint32_t)(token >> 32));
    size_t n = pyro_enc_data(f, sizeof f, PYRO_PING, 0, tok, sizeof tok);
    guest_send(f, n, 0);
    return;
  }
  case PYRO_SHUTDOWN:
    guest_send(frame, flen, 0);
    if (V.state == S_SERVE) {
      V.state = S_SHUTDOWN;
      V.shutdown_until = monotonic_ms() + SHUTDOWN_GRACE_MS;
    }
    return;
  case PYRO_SYNC:
    client_error(c, PYRO_E_PROTOCOL, "SYNC is the VM supervisor's own message");
    return;
  case PYRO_HELLO_ACK:
  case PYRO_OPENED:
  case PYRO_STDOUT:
  case PYRO_STDERR:
  case PYRO_EXIT:
  case PYRO_STDIN_WINDOW:
  case PYRO_OPEN_FAILED:
  case PYRO_PONG:
  case PYRO_SYNCED:
  case PYRO_ATTACHED:
  case PYRO_DETACHED:
  case PYRO_KEPT:
  case PYRO_ERROR:
  default:
    client_error(c, PYRO_E_PROTOCOL, "not a host message");
    return;
  }
}

/* Handles the whole frames buffered from a client, stopping while the
 * guest queue is full (the rest waits in c->in: resume_clients). */
static void client_process(struct client *c) {
  size_t pos = 0;
  while (c->used && V.gout.bytes < PYRO_OUTQ_LIMIT) {
    struct pyro_hdr h;
    struct pyro_msg m;
    size_t flen;
    int code;
    const char *why = "";
    enum pyro_split r = pyro_split(c->in + pos, c->in_len - pos, true, &h, &flen, &code, &why);
    if (r == PYRO_SPLIT_NEED_MORE)
      break;
    if (r == PYRO_SPLIT_BAD) {
      client_error(c, code, why);
      return;
    }
    code = pyro_msg_decode(&h, c->in + pos + PYRO_HDR_LEN, &m, &why);
    if (code != PYRO_OK) {
      client_error(c, code, why);
      return;
    }
    client_frame(c, c->in + pos, &m);
    pos += flen;
  }
  if (c->used && pos > 0) {
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
  }
}

static void client_readable(struct client *c) {
  /* A full buffer holds a frame that waits for the guest queue. */
  if (c->in_len >= PYRO_MAX_FRAME)
    return;
  ssize_t n = TEMP_FAILURE_RETRY(read(c->fd, c->in + c->in_len, PYRO_MAX_FRAME - c->in_len));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return;
  if (n <= 0) {
    client_close(c);
    return;
  }
  c->in_len += (size_t)n;
  client_process(c);
}

static void accept_clients(void) {
  for (;;) {
    int fd = (int)TEMP_FAILURE_RETRY(accept4(V.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
        warn_errno("vmm: accept");
      return;
    }
    int slot = relay_client_add(&V.relay);
    uint8_t *in = slot >= 0 ? malloc(PYRO_MAX_FRAME) : NULL;
    if (in == NULL) {
      uint8_t buf[128];
      size_t n = pyro_enc_code_msg(buf, sizeof buf, PYRO_ERROR, 0, PYRO_E_LIMIT,
                                   slot < 0 ? "too many connections (16)" : "out of memory");
      (void)TEMP_FAILURE_RETRY(write(fd, buf, n));
      (void)close(fd);
      if (slot >= 0)
        (void)relay_client_gone(&V.relay, (unsigned)slot, NULL);
      continue;
    }
    struct client *c = &V.clients[slot];
    memset(c, 0, sizeof *c);
    c->used = true;
    c->fd = fd;
    c->slot = (unsigned)slot;
    c->in = in;
  }
}

/* --------------------------------------------------------------- guest */

static void guest_connected(void) {
  uint8_t f[64];
  size_t n = pyro_enc_hello(f, sizeof f, PYRO_VERSION, PYRO_VERSION, "pyro-agent vmm");
  guest_send(f, n, 0);
  V.state = S_HELLO;
}

/* One connect attempt to a unix socket path; -1 with errno. */
static int connect_unix(const char *path) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

static void try_connect(void) {
  int fd = connect_unix(V.gpath);
  if (fd < 0) {
    /* Not there yet (ENOENT), not listening yet (ECONNREFUSED), backlog
     * full (EAGAIN): the VMM is still starting. Anything else is final. */
    if (errno == ENOENT || errno == ECONNREFUSED || errno == EAGAIN) {
      V.next_connect = monotonic_ms() + CONNECT_RETRY_MS;
      return;
    }
    char msg[300];
    snprintf(msg, sizeof msg, "cannot connect to the guest stream %s: %s", V.gpath, strerror(errno));
    fail(msg);
  }
  V.guest_fd = fd;
  if (V.gkind == G_VSOCK) {
    char line[32];
    int n = snprintf(line, sizeof line, "CONNECT %u\n", V.gport);
    struct chunk *k = chunk_new((size_t)n);
    if (k == NULL)
      fail("out of memory");
    memcpy(k->data, line, (size_t)n);
    queue_push(&V.gout, k);
    V.state = S_VSOCK;
  } else {
    guest_connected();
  }
}

/* Firecracker's answer to CONNECT: "OK <hostport>\n", at most 63 bytes,
 * read byte by byte so nothing of the agent's stream is taken with it. */
static void vsock_readable(void) {
  for (;;) {
    char ch;
    ssize_t n = TEMP_FAILURE_RETRY(read(V.guest_fd, &ch, 1));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n <= 0) {
      /* Firecracker closes a connection to a port nobody listens on yet:
       * the agent is not up. Retry, within the boot timeout. */
      want(V.guest_fd, &V.guest_events, 0, 0);
      close_fd(&V.guest_fd);
      V.guest_events = 0;
      queue_clear(&V.gout);
      V.vsock_len = 0;
      V.state = S_CONNECT;
      V.next_connect = monotonic_ms() + CONNECT_RETRY_MS;
      return;
    }
    if (ch == '\n') {
      V.vsock_line[V.vsock_len] = '\0';
      if (strncmp(V.vsock_line, "OK ", 3) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "the vsock answered \"%s\" to CONNECT %u", V.vsock_line, V.gport);
        fail(msg);
      }
      guest_connected();
      return;
    }
    if (V.vsock_len + 1 >= sizeof V.vsock_line || ch < 0x20 || ch > 0x7e)
      fail("the vsock's answer to CONNECT is not an OK line");
    V.vsock_line[V.vsock_len++] = ch;
  }
}

/* The guest's end of the stream went. Most often the VMM is exiting (a
 * panic, a poweroff, a crash): give it a moment so the report says how it
 * ended, which says more than a reset socket. */
PYRO_NORETURN static void guest_lost(const char *what) {
  for (int i = 0; i < 50 && !V.child_exited; i++) {
    int st;
    if (waitpid(V.child, &st, WNOHANG) == V.child) {
      V.child_exited = true;
      V.child_status = st;
      break;
    }
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    (void)nanosleep(&ten_ms, NULL);
  }
  if (V.child_exited) {
    char st[96], msg[300];
    describe_status(V.child_status, st, sizeof st);
    snprintf(msg, sizeof msg, "the VMM %s %s (%s)", st,
             V.state == S_SERVE || V.state == S_SHUTDOWN ? "while serving" : "during boot", what);
    fail(msg);
  }
  fail(what);
}

static void guest_violation(int code, const char *why) {
  char msg[200];
  snprintf(msg, sizeof msg, "the guest agent broke the protocol (code %d): %s", code, why);
  fail(msg);
}

static void guest_error_frame(const uint8_t *p, uint32_t len) {
  /* Checked by relay_check_guest_payload: u32 code, string. */
  uint32_t code = pyro_get_le32(p), mlen = pyro_get_le32(p + 4);
  char text[160], msg[240];
  size_t o = 0;
  for (uint32_t i = 0; i < mlen && o + 1 < sizeof text; i++) {
    unsigned char ch = p[8 + i];
    text[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
  }
  text[o] = '\0';
  (void)len;
  snprintf(msg, sizeof msg, "the guest agent reported an error (code %u): %s", code, text);
  fail(msg);
}

static void got_hello_ack(const uint8_t *frame, const uint8_t *p, uint32_t len) {
  uint32_t version = pyro_get_le32(p), max_payload = pyro_get_le32(p + 4);
  uint32_t window = pyro_get_le32(p + 8);
  if (version != PYRO_VERSION)
    guest_violation(PYRO_E_VERSION, "HELLO_ACK with a version we did not offer");
  if (max_payload == 0 || max_payload > PYRO_MAX_PAYLOAD)
    guest_violation(PYRO_E_PROTOCOL, "HELLO_ACK max_payload out of range");
  if (window == 0 || window > MAX_WINDOW)
    guest_violation(PYRO_E_PROTOCOL, "HELLO_ACK initial_window not in 1..4 MiB");
  if (len - 16 > MAX_AGENT_VERSION)
    guest_violation(PYRO_E_PROTOCOL, "HELLO_ACK agent version over 256 bytes");
  V.guest_version = version;
  memcpy(V.hello_ack, frame, PYRO_HDR_LEN + len);
  V.hello_ack_len = PYRO_HDR_LEN + len;
  relay_init(&V.relay, window);

  /* Fresh time and randomness: after a cold boot the guest has neither
   * worth having; after a restore it has the snapshot's, shared with
   * every other VM restored from it. */
  uint8_t seed[SYNC_SEED_LEN];
  if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
    char msg[96];
    snprintf(msg, sizeof msg, "getrandom: %s", strerror(errno));
    fail(msg);
  }
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  uint64_t ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
  uint8_t f[PYRO_HDR_LEN + 12 + SYNC_SEED_LEN];
  size_t n = pyro_enc_sync(f, sizeof f, ns, seed, sizeof seed);
  explicit_bzero(seed, sizeof seed);
  guest_send(f, n, 0);
  explicit_bzero(f, sizeof f);
  V.state = S_SYNC;
}

static void got_synced(uint32_t flags) {
  if (V.a.prepare_snapshot) {
    /* The guest agent drops this connection and waits for the next one,
     * which the vmm of the restored VM opens. */
    want(V.guest_fd, &V.guest_events, 0, 0);
    close_fd(&V.guest_fd);
    queue_clear(&V.gout);
    V.state = S_PREPARED;
    ready_write("R");
    return;
  }
  if (flags != (PYRO_SYNCED_CLOCK | PYRO_SYNCED_RNG))
    warn_msg("vmm: the guest set%s%s (SYNCED flags %u)",
             flags & PYRO_SYNCED_CLOCK ? " its clock," : " no clock,",
             flags & PYRO_SYNCED_RNG ? " its RNG seed" : " no RNG seed", flags);
  V.state = S_SERVE;
  ready_write("R");
}

static void guest_frame(uint8_t *frame, const struct pyro_hdr *h) {
  const uint8_t *p = frame + PYRO_HDR_LEN;
  const char *why = "";
  int code = relay_check_guest_payload(h->type, p, h->length, &why);
  if (code != PYRO_OK)
    guest_violation(code, why);
  if (h->type == PYRO_ERROR)
    guest_error_frame(p, h->length);

  if (V.state == S_HELLO || V.state == S_SYNC) {
    if (V.state == S_HELLO && h->type == PYRO_HELLO_ACK)
      got_hello_ack(frame, p, h->length);
    else if (V.state == S_SYNC && h->type == PYRO_SYNCED)
      got_synced(pyro_get_le32(p));
    else
      guest_violation(PYRO_E_PROTOCOL, V.state == S_HELLO ? "the first frame must be HELLO_ACK"
                                                          : "SYNC must be answered by SYNCED");
    return;
  }
  if (h->channel == 0) {
    if (h->type != PYRO_PONG)
      guest_violation(PYRO_E_PROTOCOL, "unexpected connection message");
    unsigned slot;
    const uint8_t *data;
    uint32_t dlen;
    enum relay_verdict vd = relay_pong(&V.relay, p, h->length, &slot, &data, &dlen, &why);
    if (vd == RELAY_BAD)
      guest_violation(PYRO_E_PROTOCOL, why);
    if (vd == RELAY_FORWARD) {
      uint8_t f[PYRO_HDR_LEN + PYRO_MAX_PING];
      size_t n = pyro_enc_data(f, sizeof f, PYRO_PONG, 0, data, dlen);
      client_send(&V.clients[slot], f, n, 0);
    }
    return;
  }
  unsigned slot;
  uint32_t cid;
  enum relay_verdict vd = relay_guest_frame(&V.relay, h->type, h->channel, p, h->length, &slot,
                                            &cid, &code, &why);
  if (vd == RELAY_BAD)
    guest_violation(code, why);
  /* RELAY_DROP: output of a killed channel is owed back (send_refunds). */
  if (vd == RELAY_FORWARD)
    client_forward(&V.clients[slot], frame, PYRO_HDR_LEN + h->length, cid);
}

static void guest_readable(void) {
  ssize_t n = TEMP_FAILURE_RETRY(read(V.guest_fd, V.gin + V.gin_len, GIN_CAP - V.gin_len));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return;
  if (n <= 0) {
    if (V.state == S_SHUTDOWN) {
      /* Expected: wait for the VMM to exit (bounded by shutdown_until). */
      want(V.guest_fd, &V.guest_events, 0, 0);
      close_fd(&V.guest_fd);
      return;
    }
    guest_lost(n == 0 ? "the guest closed the agent stream" : "reading the guest stream failed");
  }
  V.gin_len += (size_t)n;
  size_t pos = 0;
  while (V.guest_fd >= 0 && V.state != S_PREPARED) {
    struct pyro_hdr h;
    size_t flen;
    int code;
    const char *why = "";
    enum pyro_split r = pyro_split(V.gin + pos, V.gin_len - pos, false, &h, &flen, &code, &why);
    if (r == PYRO_SPLIT_NEED_MORE)
      break;
    if (r == PYRO_SPLIT_BAD)
      guest_violation(code, why);
    guest_frame(V.gin + pos, &h);
    pos += flen;
  }
  if (pos > 0) {
    memmove(V.gin, V.gin + pos, V.gin_len - pos);
    V.gin_len -= pos;
  }
}

/* ------------------------------------------------------------ the loop */

static void on_signal(void) {
  struct signalfd_siginfo si;
  while (TEMP_FAILURE_RETRY(read(V.sigfd, &si, sizeof si)) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) {
      int st;
      pid_t p = waitpid(V.child, &st, WNOHANG);
      if (p == V.child) {
        V.child_exited = true;
        V.child_status = st;
      }
    } else {
      warn_msg("vmm: %s: stopping the VM", strsignal((int)si.ssi_signo));
      V.stop = true;
      V.exit_code = 0;
    }
  }
}

static void vmm_exited(void) {
  (void)console_drain();
  if (V.state == S_SERVE || V.state == S_SHUTDOWN || V.state == S_PREPARED) {
    V.stop = true;
    V.exit_code = status_code(V.child_status);
    if (V.state == S_SERVE)
      warn_msg("vmm: the VM exited without SHUTDOWN");
    return;
  }
  char st[96], msg[200];
  describe_status(V.child_status, st, sizeof st);
  snprintf(msg, sizeof msg, "the VMM %s during boot (before the agent answered)", st);
  fail(msg);
}

/* Brings every fd's epoll interest in line with the state. */
static void update_interest(void) {
  if (V.guest_fd >= 0) {
    uint32_t ev = EPOLLIN | (V.gout.bytes > 0 ? EPOLLOUT : 0);
    if (V.state == S_CONNECT)
      ev = 0;
    want(V.guest_fd, &V.guest_events, ev, (uint64_t)T_GUEST << 32);
  }
  bool serving = V.state == S_SERVE || V.state == S_SHUTDOWN;
  if (V.listen_fd >= 0)
    want(V.listen_fd, &V.listen_events, serving ? EPOLLIN : 0, (uint64_t)T_LISTEN << 32);
  bool guest_full = V.gout.bytes >= PYRO_OUTQ_LIMIT;
  for (unsigned i = 0; i < RELAY_MAX_CLIENTS; i++) {
    struct client *c = &V.clients[i];
    if (!c->used)
      continue;
    uint32_t ev = (guest_full ? 0 : EPOLLIN) | (c->out.bytes > 0 ? EPOLLOUT : 0);
    if (ev == 0) {
      /* Parked: nothing to write, nothing to read now. EPOLLRDHUP-free
       * and out of the set, so a hung-up peer cannot spin the loop. */
      want(c->fd, &c->events, 0, 0);
      continue;
    }
    want(c->fd, &c->events, ev, ((uint64_t)T_CLIENT << 32) | i);
  }
}

/* A client parked on a full guest queue may still hold whole frames. */
static void resume_clients(void) {
  for (unsigned i = 0; i < RELAY_MAX_CLIENTS && V.gout.bytes < PYRO_OUTQ_LIMIT; i++)
    if (V.clients[i].used && V.clients[i].in_len >= PYRO_HDR_LEN)
      client_process(&V.clients[i]);
}

static int wait_ms(void) {
  int64_t now = monotonic_ms(), t = INT64_MAX;
  if (V.state == S_CONNECT || V.state == S_VSOCK || V.state == S_HELLO || V.state == S_SYNC)
    t = V.boot_deadline - now;
  if (V.state == S_CONNECT && V.next_connect - now < t)
    t = V.next_connect - now;
  if (V.state == S_SHUTDOWN && V.shutdown_until - now < t)
    t = V.shutdown_until - now;
  if (V.a.deadline > 0) {
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    int64_t left = (V.a.deadline - (int64_t)rt.tv_sec) * 1000 - rt.tv_nsec / 1000000;
    if (left > 1000)
      left = 1000; /* a clock change is noticed within a second */
    if (left < t)
      t = left;
  }
  if (t == INT64_MAX)
    return -1;
  if (t < 0)
    return 0;
  return t > INT_MAX ? INT_MAX : (int)t;
}

static void check_timers(void) {
  int64_t now = monotonic_ms();
  bool booting = V.state == S_CONNECT || V.state == S_VSOCK || V.state == S_HELLO || V.state == S_SYNC;
  if (booting && now >= V.boot_deadline) {
    char msg[160];
    snprintf(msg, sizeof msg, "the guest agent did not answer within %d ms (%s)", V.a.boot_timeout_ms,
             V.state == S_CONNECT ? "the guest stream never accepted a connection"
             : V.state == S_VSOCK ? "no OK to CONNECT"
             : V.state == S_HELLO ? "no HELLO_ACK" : "no SYNCED");
    fail(msg);
  }
  if (V.state == S_SHUTDOWN && now >= V.shutdown_until) {
    warn_msg("vmm: the VM did not exit within %d ms of SHUTDOWN: killed", SHUTDOWN_GRACE_MS);
    V.stop = true;
    V.exit_code = 1;
  }
  if (V.a.deadline > 0) {
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    if ((int64_t)rt.tv_sec >= V.a.deadline) {
      if (booting)
        fail("the sandbox's deadline passed during boot");
      warn_msg("vmm: deadline reached: stopping the VM");
      V.stop = true;
      V.exit_code = 0;
    }
  }
  if (V.state == S_CONNECT && now >= V.next_connect)
    try_connect();
}

static void dispatch(uint64_t tag, uint32_t ev) {
  enum tag kind = (enum tag)(tag >> 32);
  unsigned idx = (unsigned)(tag & 0xffffffffu);
  switch (kind) {
  case T_SIGNAL:
    on_signal();
    return;
  case T_CONSOLE:
    if (!console_drain()) {
      /* The VMM closed its output (it is exiting): stop watching. */
      uint32_t have = EPOLLIN;
      want(V.console_fd, &have, 0, 0);
      close_fd(&V.console_fd);
    }
    return;
  case T_LISTEN:
    accept_clients();
    return;
  case T_GUEST:
    if (V.guest_fd < 0)
      return;
    if (ev & EPOLLOUT) {
      if (queue_flush(&V.gout, V.guest_fd) < 0) {
        if (V.state == S_SHUTDOWN) {
          want(V.guest_fd, &V.guest_events, 0, 0);
          close_fd(&V.guest_fd);
          return;
        }
        guest_lost("writing the guest stream failed");
      }
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      if (V.state == S_VSOCK)
        vsock_readable();
      else
        guest_readable();
    }
    return;
  case T_CLIENT: {
    if (idx >= RELAY_MAX_CLIENTS)
      return;
    struct client *c = &V.clients[idx];
    if (!c->used)
      return;
    if ((ev & EPOLLOUT) && queue_flush(&c->out, c->fd) < 0) {
      client_close(c);
      return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
      client_readable(c);
    return;
  }
  }
}

int vmm_main(int argc, char **argv) {
  char msg[512];
  const char *step = "";
  int out_pipe[2] = {-1, -1}, pair[2] = {-1, -1};

  memset(&V, 0, sizeof V);
  parse_args(argc, argv, &V);
  V.epfd = V.sigfd = V.listen_fd = V.guest_fd = V.console_fd = V.log_fd = -1;
  V.ready_fd = V.a.ready_fd;

  /* Not dumpable (nothing of the same uid may read our memory: the seeds
   * pass through it); and nothing inherited leaks into the VMM. */
  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  if (V.a.die_with_parent) {
    pid_t before = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != before)
      exit(1);
  }
  if (fcntl(V.ready_fd, F_GETFD) < 0)
    usage("--ready-fd is not open");
  for (int k = 0; k < PASS_MAX; k++)
    if (V.a.pass_fd[k] >= 0 && fcntl(V.a.pass_fd[k], F_GETFD) < 0)
      usage("--pass-fd is not open");
  int keep[] = {V.ready_fd, V.a.pass_fd[0], V.a.pass_fd[1]};
  close_fds_except(keep, (int)(sizeof keep / sizeof keep[0]));
  (void)fcntl(V.ready_fd, F_SETFD, FD_CLOEXEC);
  for (int k = 0; k < PASS_MAX; k++)
    if (V.a.pass_fd[k] >= 0)
      (void)fcntl(V.a.pass_fd[k], F_SETFD, FD_CLOEXEC);

  V.gin = malloc(GIN_CAP);
  if (V.gin == NULL)
    fail("out of memory");
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
      (V.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
      (V.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
    snprintf(msg, sizeof msg, "cannot set up the event loop: %s", strerror(errno));
    fail(msg);
  }
  uint32_t sig_events = 0;
  want(V.sigfd, &sig_events, EPOLLIN, (uint64_t)T_SIGNAL << 32);

  V.log_fd = open(V.a.console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  struct stat st;
  if (V.log_fd < 0 || fstat(V.log_fd, &st) < 0) {
    snprintf(msg, sizeof msg, "cannot open the console log %s: %s", V.a.console, strerror(errno));
    fail(msg);
  }
  V.log_bytes = (uint64_t)st.st_size;
  if (!V.a.prepare_snapshot) {
    V.listen_fd = transport_listen_unix(V.a.listen, &step);
    if (V.listen_fd < 0) {
      snprintf(msg, sizeof msg, "cannot listen on %s (%s): %s", V.a.listen, step, strerror(errno));
      fail(msg);
    }
    V.socket_made = true;
  }
  if (pipe2(out_pipe, O_CLOEXEC) < 0) {
    snprintf(msg, sizeof msg, "cannot make the console pipe: %s", strerror(errno));
    fail(msg);
  }
  /* fd:N: a socketpair whose other end the VMM inherits (qemu's
   * `-chardev socket,id=ID,fd=N`): no path that another process could
   * connect to. */
  if (V.gkind == G_FD && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
    snprintf(msg, sizeof msg, "cannot make the guest socketpair: %s", strerror(errno));
    fail(msg);
  }
  V.console_fd = out_pipe[0];
  V.boot_deadline = monotonic_ms() + V.a.boot_timeout_ms;
  int rc = spawn_vmm(out_pipe[1], pair[1], msg, sizeof msg);
  close_fd(&out_pipe[1]);
  close_fd(&pair[1]);
  /* The VMM holds the passed fds now; ours would keep a peer (passt)
   * from seeing the end when the VMM exits. */
  for (int k = 0; k < PASS_MAX; k++)
    if (V.a.pass_fd[k] >= 0)
      close_fd(&V.a.pass_fd[k]);
  if (rc < 0)
    fail(msg);
  if (set_nonblock(V.console_fd) < 0) {
    snprintf(msg, sizeof msg, "console pipe: %s", strerror(errno));
    fail(msg);
  }
  uint32_t con_events = 0;
  want(V.console_fd, &con_events, EPOLLIN, (uint64_t)T_CONSOLE << 32);

  if (V.gkind == G_FD) {
    V.guest_fd = pair[0];
    if (set_nonblock(V.guest_fd) < 0)
      fail("cannot make the guest socket non-blocking");
    guest_connected();
  } else {
    V.state = S_CONNECT;
    V.next_connect = monotonic_ms();
  }

  struct epoll_event evs[64];
  while (!V.stop) {
    check_timers();
    if (V.stop)
      break;
    /* Refunds first: a few bytes each, they must not wait behind clients
     * that keep the queue full. */
    send_refunds();
    resume_clients();
    update_interest();
    int n = epoll_wait(V.epfd, evs, (int)N_ELEMENTS(evs), wait_ms());
    if (n < 0) {
      if (errno != EINTR)
        fail("epoll_wait failed");
      continue;
    }
    for (int i = 0; i < n && !V.stop; i++)
      dispatch(evs[i].data.u64, evs[i].events);
    if (V.child_exited && !V.stop)
      vmm_exited();
    /* Write what was queued in this batch at once (latency), then let
     * EPOLLOUT carry the rest. The batch's dropped output is refunded
     * in it, one WINDOW per channel. */
    if (!V.stop)
      send_refunds();
    if (V.guest_fd >= 0 && V.gout.bytes > 0 && V.state != S_CONNECT &&
        queue_flush(&V.gout, V.guest_fd) < 0 && V.state != S_SHUTDOWN)
      fail("writing the guest stream failed");
    for (unsigned i = 0; i < RELAY_MAX_CLIENTS; i++) {
      struct client *c = &V.clients[i];
      if (c->used && c->out.bytes > 0 && queue_flush(&c->out, c->fd) < 0)
        client_close(c);
    }
  }
  int code = V.exit_code;
  if (V.child_exited)
    code = status_code(V.child_status);
  else if (V.ready_fd >= 0)
    fail("stopped before the guest was ready");
  cleanup();
  return code;
}
