/* pyro-agent: event loop, connections, channels and flow control.
 *
 * One epoll set holds every fd: the signalfd, listening sockets,
 * connections, and per channel the supervisor's ctl socket, the command's
 * stdout/stderr pipes and its stdin pipe. Everything is non-blocking and
 * level-triggered; an fd that must not be read right now (no credit, or the
 * connection's outgoing queue is full) is taken out of the set rather than
 * masked, so a hung-up pipe cannot spin the loop.
 *
 * Memory is bounded by the protocol: a connection holds one input frame
 * (<= 12 + MAX_PAYLOAD bytes) and an outgoing queue that stops being fed at
 * PYRO_OUTQ_LIMIT; a channel holds at most the STDIN window it granted.
 *
 * Objects that die while an epoll batch is being handled are unlinked at
 * once (fds closed, out of the set) and freed after the batch, so a later
 * event of the same batch never touches freed memory.
 *
 * Kept channels (OPEN flag KEEP) belong to the agent, not to a connection:
 * a->kept lists them (at most PYRO_MAX_KEPT). When their connection closes
 * they detach (conn NULL, id 0): their output is still read, so the process
 * never blocks, into a ring of at most PYRO_KEPT_RING bytes that drops its
 * oldest records; one that exits meanwhile keeps its status and ring until
 * ATTACH hands it to a connection again. So a kept channel costs at most
 * its ring and its fds, 32 x 256 KiB in all.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "proctree.h"
#include "proto.h"
#include "supervisor.h"
#include "util.h"
#include "vmsync.h"

#define MAX_LISTENERS 4
#define MAX_CREDIT ((uint64_t)1 << 40)
#define SHUTDOWN_KILL_BUDGET_MS 5000
#define LISTEN_BACKOFF_MS 100
/* A serial port with no host on the other side reports POLLHUP continuously,
 * so it cannot sit in the epoll set level-triggered (it would spin). It sits
 * there edge-triggered instead (SRC_PORT): virtio_console wakes the port's
 * waitqueue when the host connects (its PORT_OPEN control message) and when
 * bytes arrive, so the agent looks at once, not at its next poll (after a
 * restore that look was 25 ms late on average, up to 50, when this poll
 * was all there was). The poll stays as a backstop, for a wakeup the edge
 * did not carry; measured with it at 5 s, restores were still ready in
 * ~110-150 ms, so the edge is what wakes the agent. */
#define PORT_POLL_MS 250

enum src_kind {
  SRC_SIGNAL,
  SRC_LISTEN,
  SRC_CONN,
  SRC_CH_CTL,
  SRC_CH_OUT,
  SRC_CH_ERR,
  SRC_CH_IN,
  SRC_PORT,
};

/* One fd in the epoll set. events is what is registered (0 = not in set). */
struct source {
  enum src_kind kind;
  void *obj;
  int fd;
  uint32_t events;
};

/* A queued outgoing frame, or (in a stdin queue) a chunk of payload. */
struct chunk {
  struct chunk *next;
  size_t len;
  uint8_t data[];
};

struct queue {
  struct chunk *head, *tail;
  size_t off;   /* bytes of head already written */
  size_t bytes; /* unwritten bytes in the queue */
};

struct channel;

struct conn {
  struct agent *agent;
  struct conn *next;
  struct source src;
  bool dead;
  bool is_stream; /* the agent ends with it */
  bool is_port;   /* the serial port's connection: its fd outlives it */
  unsigned max_channels;
  bool hello_done;
  bool out_full;  /* last seen: queue over PYRO_OUTQ_LIMIT */
  uint8_t *in;    /* PYRO_MAX_FRAME bytes */
  size_t in_len;
  struct queue out;
  struct channel *channels;
  unsigned nchannels;
};

struct channel {
  struct agent *agent;
  struct conn *conn; /* NULL while a kept channel is detached */
  struct channel *next;
  uint32_t id;
  bool dead;
  pid_t sup_pid;
  bool isolated; /* the supervisor is PID 1 of the command's pid namespace */
  uint32_t pid;
  bool opened;
  bool has_stdin;
  bool pty;          /* out and in are a PTY master: EIO is its EOF */
  bool stdin_eof;    /* STDIN_EOF received */
  bool status_known; /* EXIT received from the supervisor */
  uint32_t exit_kind, exit_value, exit_flags;
  uint64_t oom_at_open; /* the guest's oom_kill counter at OPEN (VM mode) */
  uint64_t out_credit; /* STDOUT+STDERR bytes the host will accept */
  uint64_t in_credit;  /* STDIN bytes the host may still send */
  struct queue in_q;   /* STDIN bytes not yet in the pipe */
  struct source ctl, out, err, in;
  /* KEEP: the key, and while detached the output read meanwhile (records:
   * data[0] the frame type, then the bytes), ring_bytes of payload in all,
   * and how many bytes the ring dropped since the last ATTACH. */
  bool kept;
  uint32_t key_len;
  char key[PYRO_KEY_MAX + 1];
  struct queue ring;
  uint64_t ring_bytes;
  uint64_t dropped;
};

struct agent {
  int epfd;
  struct agent_opts opts;
  struct source sig;
  struct source listeners[MAX_LISTENERS];
  unsigned nlisteners;
  int64_t listen_paused_until;
  struct conn *conns;
  unsigned nconns;
  struct conn *dead_conns;
  /* The serial port (agent_add_port), while no host is connected to it;
   * -1 when there is none or a connection is using it. */
  int port_fd;
  int64_t port_check_at;
  /* port_fd in the epoll set, edge-triggered, while no host is on it (PORT_POLL_MS). */
  struct source port_src;
  struct channel *dead_channels;
  /* Every kept channel, attached or not: keys are unique among them. */
  struct channel *kept[PYRO_MAX_KEPT];
  unsigned nkept;
  bool stop;
  int exit_code;
  /* A supervisor died unexpectedly: its orphans re-parent to us and are
   * killed on every SIGCHLD until none is left (see sweep_orphans). */
  bool sweeping;
  uint8_t scratch[PYRO_MAX_PAYLOAD];
};

static void channel_update(struct channel *ch);
static void conn_update(struct conn *c);
static void conn_close(struct conn *c, const char *why);

/* ------------------------------------------------------------- sources */

static void src_init(struct source *s, enum src_kind kind, void *obj, int fd) {
  s->kind = kind;
  s->obj = obj;
  s->fd = fd;
  s->events = 0;
}

/* Puts the fd in the epoll set with these events, or takes it out (0). */
static void src_want(struct agent *a, struct source *s, uint32_t events) {
  if (s->fd < 0 || s->events == events)
    return;
  struct epoll_event ev = {.events = events, .data.ptr = s};
  int op = events == 0 ? EPOLL_CTL_DEL : s->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  if (epoll_ctl(a->epfd, op, s->fd, &ev) < 0) {
    warn_errno("epoll_ctl(%d) on fd %d", op, s->fd);
    return;
  }
  s->events = events;
}

static void src_close(struct agent *a, struct source *s) {
  if (s->fd < 0)
    return;
  src_want(a, s, 0);
  close_fd(&s->fd);
}

/* The idle serial port in the epoll set (edge-triggered: PORT_POLL_MS), or
 * out of it before a connection takes the fd. */
static void port_watch(struct agent *a, bool on) {
  if (on && a->port_fd >= 0) {
    a->port_src.fd = a->port_fd;
    /* EPOLLOUT too: a host that connects and sends nothing yet makes the
     * port writable, not readable, and an edge epoll does not ask for is
     * not reported (measured: a restore whose host sent no bytes waited for
     * the backstop). While no host is there the port is never writable. */
    src_want(a, &a->port_src, EPOLLIN | EPOLLOUT | EPOLLET);
  } else if (!on && a->port_src.fd >= 0) {
    src_want(a, &a->port_src, 0);
    a->port_src.fd = -1;
  }
}

/* -------------------------------------------------------------- queues */

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

/* Frees every chunk except a partly written head (so a frame on the wire is
 * never cut); keep_head false frees that too. */
static void queue_clear(struct queue *q, bool keep_head) {
  struct chunk *c = q->head;
  if (keep_head && c != NULL && q->off > 0) {
    struct chunk *rest = c->next;
    c->next = NULL;
    q->tail = c;
    q->bytes = c->len - q->off;
    c = rest;
  } else {
    q->head = q->tail = NULL;
    q->off = 0;
    q->bytes = 0;
  }
  while (c != NULL) {
    struct chunk *next = c->next;
    free(c);
    c = next;
  }
}

/* Advances past n written bytes. */
static void queue_consume(struct queue *q, size_t n) {
  q->bytes -= n;
  while (n > 0 && q->head != NULL) {
    struct chunk *c = q->head;
    size_t left = c->len - q->off;
    if (n < left) {
      q->off += n;
      return;
    }
    n -= left;
    q->head = c->next;
    if (q->head == NULL)
      q->tail = NULL;
    q->off = 0;
    free(c);
  }
}

/* ---------------------------------------------------------- conn output */

/* Queues one frame built by the caller into a fresh chunk of cap bytes. The
 * encoder's result 0 means "does not fit", which only a bug can cause. */
#define CONN_SEND(c, cap, ENCODE_CALL)                                         \
  do {                                                                         \
    struct chunk *ck_ = chunk_new(cap);                                        \
    if (ck_ == NULL) {                                                         \
      conn_close((c), "out of memory");                                        \
      break;                                                                   \
    }                                                                          \
    uint8_t *buf = ck_->data;                                                  \
    ck_->len = (ENCODE_CALL);                                                  \
    if (ck_->len == 0) {                                                       \
      free(ck_);                                                               \
      warn_msg("frame does not fit (bug)");                                    \
      break;                                                                   \
    }                                                                          \
    queue_push(&(c)->out, ck_);                                                \
  } while (0)

static void send_u32(struct conn *c, uint8_t type, uint32_t ch, uint32_t v) {
  CONN_SEND(c, PYRO_HDR_LEN + 4, pyro_enc_u32(buf, PYRO_HDR_LEN + 4, type, ch, v));
}

static void send_data(struct conn *c, uint8_t type, uint32_t ch, const void *p, size_t n) {
  CONN_SEND(c, PYRO_HDR_LEN + n, pyro_enc_data(buf, PYRO_HDR_LEN + n, type, ch, p, n));
}

static void send_code_msg(struct conn *c, uint8_t type, uint32_t ch, uint32_t code,
                          const char *msg) {
  size_t cap = PYRO_HDR_LEN + 8 + strlen(msg);
  CONN_SEND(c, cap, pyro_enc_code_msg(buf, cap, type, ch, code, msg));
}

static void send_exit(struct conn *c, uint32_t ch, uint32_t kind, uint32_t value,
                      uint32_t flags) {
  CONN_SEND(c, PYRO_HDR_LEN + 12,
            pyro_enc_exit(buf, PYRO_HDR_LEN + 12, ch, kind, value, flags));
}

static void send_hello_ack(struct conn *c) {
  size_t cap = PYRO_HDR_LEN + 16 + sizeof PYRO_AGENT_VERSION;
  CONN_SEND(c, cap,
            pyro_enc_hello_ack(buf, cap, PYRO_VERSION, PYRO_MAX_PAYLOAD,
                               PYRO_INITIAL_WINDOW, PYRO_AGENT_VERSION));
}

/* Writes as much of the outgoing queue as the socket takes. */
static void conn_flush(struct conn *c) {
  while (!c->dead && c->out.head != NULL) {
    struct iovec iov[64];
    int n = 0;
    size_t off = c->out.off;
    for (struct chunk *k = c->out.head; k != NULL && n < 64; k = k->next) {
      iov[n].iov_base = k->data + off;
      iov[n].iov_len = k->len - off;
      off = 0;
      n++;
    }
    ssize_t w = TEMP_FAILURE_RETRY(writev(c->src.fd, iov, n));
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      conn_close(c, "write failed");
      return;
    }
    queue_consume(&c->out, (size_t)w);
  }
  conn_update(c);
}

/* Recomputes what the connection waits for, and wakes its channels when the
 * outgoing queue falls back under the limit. */
static void conn_update(struct conn *c) {
  if (c->dead)
    return;
  bool full = c->out.bytes >= PYRO_OUTQ_LIMIT;
  uint32_t ev = (full ? 0 : EPOLLIN) | (c->out.bytes > 0 ? EPOLLOUT : 0);
  /* ev is never 0: a full queue means EPOLLOUT is set. */
  src_want(c->agent, &c->src, ev);
  if (c->out_full != full) {
    c->out_full = full;
    if (!full) {
      /* channel_update may end (unlink) ch: take next first. */
      for (struct channel *ch = c->channels, *next; ch != NULL; ch = next) {
        next = ch->next;
        channel_update(ch);
      }
    }
  }
}

/* Reports a protocol error to the peer and drops the connection. */
static void conn_protocol_error(struct conn *c, int code, const char *why) {
  warn_msg("connection: protocol error %d: %s", code, why);
  /* Frames already queued are valid: they go first (the queue is bounded). */
  send_code_msg(c, PYRO_ERROR, 0, (uint32_t)code, why);
  if (c->dead)
    return;
  /* One best-effort write: the peer may not be reading at all. */
  struct chunk *k = c->out.head;
  size_t off = c->out.off;
  while (k != NULL) {
    ssize_t w = TEMP_FAILURE_RETRY(write(c->src.fd, k->data + off, k->len - off));
    if (w <= 0 || (size_t)w < k->len - off)
      break;
    k = k->next;
    off = 0;
  }
  conn_close(c, NULL);
}

/* ------------------------------------------------------------ channels */

/* The guest kernel's count of OOM kills ("oom_kill N" in /proc/vmstat,
 * read through a held fd); 0 when it cannot be read (no OOM is claimed). */
static uint64_t oom_kills(int vmstat_fd) {
  char buf[8192];
  ssize_t n = TEMP_FAILURE_RETRY(pread(vmstat_fd, buf, sizeof buf - 1, 0));
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  const char *at = strstr(buf, "\noom_kill ");
  return at != NULL ? strtoull(at + 10, NULL, 10) : 0;
}

static struct channel *channel_find(struct conn *c, uint32_t id) {
  for (struct channel *ch = c->channels; ch != NULL; ch = ch->next)
    if (ch->id == id)
      return ch;
  return NULL;
}

/* Unlinks a channel and closes its fds. Closing ctl makes a supervisor that
 * is still running kill the command's whole tree. */
static void channel_destroy(struct channel *ch) {
  struct conn *c = ch->conn;
  struct agent *a = ch->agent;
  if (ch->dead)
    return;
  ch->dead = true;
  src_close(a, &ch->ctl);
  src_close(a, &ch->out);
  src_close(a, &ch->err);
  src_close(a, &ch->in);
  queue_clear(&ch->in_q, false);
  queue_clear(&ch->ring, false);
  if (ch->kept) {
    for (unsigned i = 0; i < a->nkept; i++) {
      if (a->kept[i] == ch) {
        a->kept[i] = a->kept[--a->nkept];
        break;
      }
    }
  }
  if (c != NULL) {
    for (struct channel **pp = &c->channels; *pp != NULL; pp = &(*pp)->next) {
      if (*pp == ch) {
        *pp = ch->next;
        break;
      }
    }
    c->nchannels--;
  }
  ch->next = a->dead_channels;
  a->dead_channels = ch;
}

static void channel_close_stdin(struct channel *ch) {
  src_close(ch->agent, &ch->in);
  queue_clear(&ch->in_q, false);
}

/* Writes queued STDIN bytes into the pipe and returns credit for them. */
static void channel_write_stdin(struct channel *ch) {
  size_t written = 0;
  while (ch->in.fd >= 0 && ch->in_q.head != NULL) {
    struct chunk *k = ch->in_q.head;
    ssize_t w = TEMP_FAILURE_RETRY(write(ch->in.fd, k->data + ch->in_q.off,
                                         k->len - ch->in_q.off));
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      /* EPIPE: the command closed its stdin; the rest is dropped (like a
       * pipe into a process that stopped reading). */
      channel_close_stdin(ch);
      break;
    }
    queue_consume(&ch->in_q, (size_t)w);
    written += (size_t)w;
  }
  if (written > 0 && !ch->dead && ch->conn != NULL) {
    ch->in_credit += written;
    send_u32(ch->conn, PYRO_STDIN_WINDOW, ch->id, (uint32_t)written);
  }
  if (ch->in.fd >= 0 && ch->stdin_eof && ch->in_q.head == NULL)
    channel_close_stdin(ch);
}

/* Reads one chunk of command output into a STDOUT/STDERR frame. */
/* A detached kept channel's output goes to its ring; past PYRO_KEPT_RING
 * the oldest records are dropped (and counted), so nothing waits for a
 * reader and the ring never holds more than one window. */
static void ring_push(struct channel *ch, uint8_t type, const uint8_t *p, size_t n) {
  struct chunk *k = chunk_new(n + 1);
  if (k == NULL) {
    ch->dropped += n; /* out of memory: lost, but counted */
    return;
  }
  k->data[0] = type;
  memcpy(k->data + 1, p, n);
  while (ch->ring.head != NULL && ch->ring_bytes + n > PYRO_KEPT_RING) {
    struct chunk *old = ch->ring.head;
    ch->ring.head = old->next;
    if (ch->ring.head == NULL)
      ch->ring.tail = NULL;
    ch->ring.bytes -= old->len;
    ch->ring_bytes -= old->len - 1;
    ch->dropped += old->len - 1;
    free(old);
  }
  queue_push(&ch->ring, k);
  ch->ring_bytes += n;
}

static void channel_read_output(struct channel *ch, struct source *s, uint8_t type) {
  struct agent *a = ch->agent;
  size_t want = ch->out_credit < PYRO_MAX_PAYLOAD ? (size_t)ch->out_credit : PYRO_MAX_PAYLOAD;
  if (ch->conn == NULL)
    want = PYRO_MAX_PAYLOAD; /* detached: read at the process's pace */
  if (want == 0)
    return;
  ssize_t n = TEMP_FAILURE_RETRY(read(s->fd, a->scratch, want));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return;
  if (n <= 0) {
    /* A PTY master reads EIO once no process holds the terminal: EOF. */
    if (n < 0 && !(ch->pty && errno == EIO))
      warn_errno("channel %u: read output", ch->id);
    src_close(a, s);
    return;
  }
  if (ch->conn == NULL) {
    ring_push(ch, type, a->scratch, (size_t)n);
    return;
  }
  ch->out_credit -= (uint64_t)n;
  send_data(ch->conn, type, ch->id, a->scratch, (size_t)n);
}

/* Brings a channel's epoll interest in line with its state, and ends it once
 * the exit status is known and both output pipes reached EOF. */
static void channel_update(struct channel *ch) {
  if (ch->dead)
    return;
  struct conn *c = ch->conn;
  struct agent *a = ch->agent;
  if (c == NULL) {
    /* Detached: always read (into the ring); the status waits for ATTACH. */
    src_want(a, &ch->out, ch->opened ? EPOLLIN : 0);
    src_want(a, &ch->err, ch->opened ? EPOLLIN : 0);
    src_want(a, &ch->in, 0);
    src_want(a, &ch->ctl, EPOLLIN);
    return;
  }
  bool can_read = ch->opened && ch->out_credit > 0 && !c->out_full &&
                  c->out.bytes < PYRO_OUTQ_LIMIT;
  /* The queue can pass the limit between two conn_update calls (several
   * reads in one batch): record it, or the flush that drains it would see
   * no change and never wake the channels parked here (a stall found
   * through the vmm, whose clients can grant far more than one window). */
  if (c->out.bytes >= PYRO_OUTQ_LIMIT)
    c->out_full = true;
  src_want(a, &ch->out, can_read ? EPOLLIN : 0);
  src_want(a, &ch->err, can_read ? EPOLLIN : 0);
  src_want(a, &ch->in, ch->in_q.head != NULL ? EPOLLOUT : 0);
  src_want(a, &ch->ctl, EPOLLIN);
  if (ch->status_known && ch->out.fd < 0 && ch->err.fd < 0) {
    if (a->opts.sync_fd > 0 && syncfs(a->opts.sync_fd) < 0)
      warn_errno("syncfs before an exit");
    uint32_t flags = ch->exit_flags;
    if (a->opts.vmstat_fd > 0 && oom_kills(a->opts.vmstat_fd) > ch->oom_at_open)
      flags |= PYRO_EXIT_OOM;
    send_exit(c, ch->id, ch->exit_kind, ch->exit_value, flags);
    channel_destroy(ch);
  }
}

static bool is_supervisor(pid_t pid, void *ctx) {
  struct agent *a = ctx;
  for (struct conn *c = a->conns; c != NULL; c = c->next)
    for (struct channel *ch = c->channels; ch != NULL; ch = ch->next)
      if (ch->sup_pid == pid)
        return true;
  for (unsigned i = 0; i < a->nkept; i++)
    if (a->kept[i]->sup_pid == pid)
      return true;
  return false;
}

/* Our children are supervisors, except for the orphans of a supervisor that
 * died (they re-parent to us: PID 1, or a child subreaper in serve mode).
 * Those are killed; their own children re-parent to us in turn and go at
 * the next SIGCHLD, until a sweep finds none. */
static void sweep_orphans(struct agent *a) {
  int n = kill_children_except(is_supervisor, a);
  a->sweeping = n != 0;
}

/* The supervisor vanished without reporting (killed from inside the
 * sandbox). The tree may still hold the pipes: kill it and drop the output
 * rather than wait for EOF that may never come. */
static void channel_supervisor_lost(struct channel *ch) {
  struct conn *c = ch->conn;
  struct agent *a = ch->agent;
  src_close(a, &ch->ctl);
  /* An isolated supervisor's death took its whole pid namespace with it,
   * and ch->pid is a pid of that namespace, not ours: nothing to kill. */
  if (!ch->isolated && ch->pid > 1) {
    /* The command runs in its own session (pgid = pid), unless it never
     * got as far as exec. */
    warn_msg("channel %u: supervisor died; killing session %u", ch->id, ch->pid);
    (void)kill(-(pid_t)ch->pid, SIGKILL);
    (void)kill((pid_t)ch->pid, SIGKILL);
  }
  ch->sup_pid = -1; /* its pid may be reused */
  a->sweeping = true;
  sweep_orphans(a);
  if (!ch->opened) {
    if (c != NULL)
      send_code_msg(c, PYRO_OPEN_FAILED, ch->id, ECHILD,
                    "the process supervisor was killed before the command started");
    channel_destroy(ch);
    return;
  }
  src_close(a, &ch->out);
  src_close(a, &ch->err);
  channel_close_stdin(ch);
  ch->status_known = true;
  ch->exit_kind = PYRO_EXIT_SIGNALED;
  ch->exit_value = SIGKILL;
  ch->exit_flags = 0;
  channel_update(ch);
}

static void channel_on_ctl(struct channel *ch) {
  struct sup_msg m;
  ssize_t n = TEMP_FAILURE_RETRY(recv(ch->ctl.fd, &m, sizeof m, MSG_DONTWAIT));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return;
  if (n != (ssize_t)sizeof m) {
    if (ch->status_known)
      src_close(ch->agent, &ch->ctl); /* normal end: EXIT came first */
    else
      channel_supervisor_lost(ch);
    return;
  }
  m.text[sizeof m.text - 1] = '\0';
  switch ((enum sup_msg_type)m.type) {
  case SUP_FORKED:
    if (!ch->opened)
      ch->pid = m.a;
    break;
  case SUP_OPENED:
    if (ch->opened)
      break;
    ch->opened = true;
    ch->pid = m.a;
    if (ch->conn != NULL)
      send_u32(ch->conn, PYRO_OPENED, ch->id, m.a);
    break;
  case SUP_FAILED:
    if (ch->opened)
      break;
    /* Detached before it started: nobody to tell; the key is free again. */
    if (ch->conn != NULL)
      send_code_msg(ch->conn, PYRO_OPEN_FAILED, ch->id, m.a, m.text);
    channel_destroy(ch);
    return;
  case SUP_EXIT:
    if (!ch->opened || ch->status_known)
      break;
    ch->status_known = true;
    ch->exit_kind = m.a;
    ch->exit_value = m.b;
    ch->exit_flags = m.c;
    channel_close_stdin(ch);
    break;
  default:
    warn_msg("channel %u: unknown supervisor message %u", ch->id, m.type);
    break;
  }
  channel_update(ch);
}

static void channel_send_req(struct channel *ch, uint32_t op, uint32_t arg) {
  struct sup_req req = {op, arg};
  if (ch->ctl.fd < 0 || ch->status_known)
    return;
  if (TEMP_FAILURE_RETRY(send(ch->ctl.fd, &req, sizeof req, MSG_DONTWAIT | MSG_NOSIGNAL)) < 0)
    warn_errno("channel %u: request to supervisor", ch->id);
}

static struct channel *kept_find(struct agent *a, const uint8_t *key, uint32_t len) {
  for (unsigned i = 0; i < a->nkept; i++)
    if (a->kept[i]->key_len == len && memcmp(a->kept[i]->key, key, len) == 0)
      return a->kept[i];
  return NULL;
}

static void channel_open(struct conn *c, const struct pyro_msg *m) {
  uint32_t id = m->hdr.channel;
  const struct pyro_open *o = &m->u.open;
  struct agent *a = c->agent;

  if ((o->flags & PYRO_OPEN_KEEP) != 0) {
    if (kept_find(a, o->key, o->key_len) != NULL) {
      send_code_msg(c, PYRO_OPEN_FAILED, id, EEXIST,
                    "a kept process with this key exists (attach it, or pick another key)");
      return;
    }
    if (a->nkept >= PYRO_MAX_KEPT) {
      send_code_msg(c, PYRO_OPEN_FAILED, id, EMFILE, "too many kept processes (32)");
      return;
    }
  }

  cleanup_free struct pyro_cmd *cmd = pyro_cmd_build(&m->u.open);
  if (cmd == NULL) {
    send_code_msg(c, PYRO_OPEN_FAILED, id, ENOMEM, "out of memory");
    return;
  }
  struct channel *ch = calloc(1, sizeof *ch);
  if (ch == NULL) {
    send_code_msg(c, PYRO_OPEN_FAILED, id, ENOMEM, "out of memory");
    return;
  }
  struct sup_handle h;
  if (supervisor_spawn(cmd, c->agent->opts.pid1, &h) < 0) {
    int err = errno;
    char msg[160];
    snprintf(msg, sizeof msg, "cannot start a process supervisor: %s", strerror(err));
    free(ch);
    send_code_msg(c, PYRO_OPEN_FAILED, id, (uint32_t)err, msg);
    return;
  }
  ch->agent = a;
  ch->conn = c;
  ch->id = id;
  if ((o->flags & PYRO_OPEN_KEEP) != 0) {
    ch->kept = true;
    ch->key_len = o->key_len;
    memcpy(ch->key, o->key, o->key_len);
    ch->key[o->key_len] = '\0';
    a->kept[a->nkept++] = ch;
  }
  if (c->agent->opts.vmstat_fd > 0)
    ch->oom_at_open = oom_kills(c->agent->opts.vmstat_fd);
  ch->sup_pid = h.pid;
  ch->isolated = h.isolated;
  ch->pty = (cmd->flags & PYRO_OPEN_PTY) != 0;
  /* A terminal's input always comes from the host (STDIN frames). */
  ch->has_stdin = ch->pty || (cmd->flags & PYRO_OPEN_STDIN_PIPE) != 0;
  ch->out_credit = PYRO_INITIAL_WINDOW;
  ch->in_credit = PYRO_INITIAL_WINDOW;
  src_init(&ch->ctl, SRC_CH_CTL, ch, h.ctl_fd);
  src_init(&ch->out, SRC_CH_OUT, ch, h.out_fd);
  src_init(&ch->err, SRC_CH_ERR, ch, h.err_fd);
  src_init(&ch->in, SRC_CH_IN, ch, h.in_fd);
  ch->next = c->channels;
  c->channels = ch;
  c->nchannels++;
  channel_update(ch);
}

/* ------------------------------------------------------- kept channels */

/* Takes a kept channel off its connection: it runs on, detached. notify:
 * send DETACHED on its id (DETACH, or a takeover), the last frame of that
 * id; a closing connection has nobody to tell. STDIN bytes not yet written
 * are dropped (their sender is gone). */
static void channel_detach(struct channel *ch, bool notify) {
  struct conn *c = ch->conn;
  uint32_t id = ch->id;
  if (c == NULL || ch->dead)
    return;
  for (struct channel **pp = &c->channels; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == ch) {
      *pp = ch->next;
      break;
    }
  }
  c->nchannels--;
  ch->next = NULL;
  ch->conn = NULL;
  ch->id = 0;
  queue_clear(&ch->in_q, false);
  if (ch->stdin_eof)
    channel_close_stdin(ch); /* what was queued before the EOF is dropped */
  channel_update(ch);
  /* Last: a send that fails for memory closes c, which must no longer
   * list this channel. */
  if (notify && !c->dead)
    CONN_SEND(c, PYRO_HDR_LEN, pyro_enc_empty(buf, PYRO_HDR_LEN, PYRO_DETACHED, id));
}

static bool channel_exited(const struct channel *ch) {
  return ch->status_known && ch->out.fd < 0 && ch->err.fd < 0;
}

/* ATTACH on a new id: the kept channel moves to it (from wherever it is),
 * ATTACHED, the ring as STDOUT/STDERR under a fresh window, then live
 * output and EXIT as for any channel. */
static void channel_attach(struct conn *c, const struct pyro_msg *m) {
  uint32_t id = m->hdr.channel;
  struct channel *ch = kept_find(c->agent, m->u.key.s, m->u.key.len);
  if (ch == NULL || ch->dead) {
    send_code_msg(c, PYRO_OPEN_FAILED, id, ENOENT, "no kept process has this key");
    return;
  }
  if (!ch->opened) {
    send_code_msg(c, PYRO_OPEN_FAILED, id, EAGAIN, "the kept process has not started yet");
    return;
  }
  channel_detach(ch, true); /* a takeover: the old holder hears DETACHED */
  ch->conn = c;
  ch->id = id;
  ch->next = c->channels;
  c->channels = ch;
  c->nchannels++;
  /* Fresh windows each way: the new holder granted initial_window. A
   * stdin the last holder ended stays ended; its STDIN is then dropped. */
  ch->in_credit = PYRO_INITIAL_WINDOW;
  if (ch->stdin_eof && ch->in.fd < 0)
    ch->stdin_eof = false;
  uint32_t flags = channel_exited(ch) ? PYRO_ATTACHED_EXITED : 0;
  CONN_SEND(c, PYRO_HDR_LEN + 16,
            pyro_enc_attached(buf, PYRO_HDR_LEN + 16, id, ch->pid, flags, ch->dropped));
  ch->dropped = 0;
  /* The ring never holds more than PYRO_KEPT_RING = the initial window. */
  ch->out_credit = PYRO_INITIAL_WINDOW - ch->ring_bytes;
  while (ch->ring.head != NULL && !c->dead) {
    struct chunk *k = ch->ring.head;
    send_data(c, k->data[0], id, k->data + 1, k->len - 1);
    ch->ring.head = k->next;
    ch->ring.bytes -= k->len;
    ch->ring_bytes -= k->len - 1;
    free(k);
  }
  queue_clear(&ch->ring, false);
  ch->ring_bytes = 0;
  channel_update(ch);
}

/* LIST on a new id: KEPT, its only frame. */
static void send_kept(struct conn *c, uint32_t id) {
  struct agent *a = c->agent;
  struct pyro_kept e[PYRO_MAX_KEPT];
  uint32_t n = 0;
  for (unsigned i = 0; i < a->nkept && n < PYRO_MAX_KEPT; i++) {
    const struct channel *ch = a->kept[i];
    e[n].key = (const uint8_t *)ch->key;
    e[n].key_len = ch->key_len;
    e[n].pid = ch->pid;
    e[n].state = ch->conn != NULL      ? PYRO_KEPT_ATTACHED
                 : channel_exited(ch) ? PYRO_KEPT_EXITED
                                      : PYRO_KEPT_DETACHED;
    e[n].ring_bytes = ch->ring_bytes;
    e[n].dropped = ch->dropped;
    n++;
  }
  /* 32 x (4 + 64 + 24) + 4 bytes: far under MAX_PAYLOAD. */
  size_t cap = PYRO_HDR_LEN + 4 + (size_t)PYRO_MAX_KEPT * (4 + PYRO_KEY_MAX + 24);
  CONN_SEND(c, cap, pyro_enc_kept(buf, cap, id, e, n));
}

/* A closing connection: kept channels detach, the others end. */
static void conn_drop_channels(struct conn *c) {
  while (c->channels != NULL) {
    struct channel *ch = c->channels;
    if (ch->kept)
      channel_detach(ch, false);
    else
      channel_destroy(ch);
  }
}

/* ------------------------------------------------------------- framing */

static void agent_shutdown(struct agent *a, const char *why);

static void handle_stdin(struct conn *c, struct channel *ch, const struct pyro_msg *m) {
  uint32_t len = m->hdr.length;
  if (!ch->has_stdin && !ch->kept) {
    conn_protocol_error(c, PYRO_E_CHANNEL, "STDIN on a channel without STDIN_PIPE");
    return;
  }
  if (ch->stdin_eof) {
    conn_protocol_error(c, PYRO_E_PROTOCOL, "STDIN after STDIN_EOF");
    return;
  }
  if (len > ch->in_credit) {
    conn_protocol_error(c, PYRO_E_FLOW, "STDIN past the window");
    return;
  }
  ch->in_credit -= len;
  /* The command closed its stdin (or, for an attached kept channel, never
   * had one: its new holder cannot know): dropped, no credit back. */
  if (ch->in.fd < 0)
    return;
  struct chunk *k = chunk_new(len);
  if (k == NULL) {
    conn_close(c, "out of memory");
    return;
  }
  memcpy(k->data, m->payload, len);
  queue_push(&ch->in_q, k);
  channel_write_stdin(ch);
  channel_update(ch); /* the pipe may be full: wait for EPOLLOUT */
}

static void handle_frame(struct conn *c, const struct pyro_msg *m) {
  uint32_t id = m->hdr.channel;
  struct channel *ch = NULL;

  if (!c->hello_done && m->hdr.type != PYRO_HELLO) {
    conn_protocol_error(c, PYRO_E_PROTOCOL, "the first frame must be HELLO");
    return;
  }
  bool new_id = m->hdr.type == PYRO_OPEN || m->hdr.type == PYRO_ATTACH ||
                m->hdr.type == PYRO_LIST;
  if (m->hdr.type != PYRO_HELLO && !new_id && id != 0) {
    /* Frames for a channel that already ended are normal (the host sent
     * them before it saw EXIT): ignore them. */
    ch = channel_find(c, id);
    if (ch == NULL)
      return;
  }
  switch ((enum pyro_type)m->hdr.type) {
  case PYRO_HELLO:
    if (c->hello_done && c->is_port) {
      /* A serial port has no connection boundaries: a host that hangs up
       * and a new one that connects within the same instant show no
       * POLLHUP we could see. The new host starts with HELLO, so a HELLO
       * is where the old connection ends: dropped as if it had closed. */
      warn_msg("a new host said HELLO on the serial port: dropping the previous connection");
      conn_drop_channels(c);
      queue_clear(&c->out, false);
      c->hello_done = false;
      conn_update(c);
    }
    if (c->hello_done) {
      conn_protocol_error(c, PYRO_E_PROTOCOL, "second HELLO");
      return;
    }
    if (m->u.hello.min_version > PYRO_VERSION || m->u.hello.max_version < PYRO_VERSION) {
      conn_protocol_error(c, PYRO_E_VERSION, "no common protocol version (agent speaks 1)");
      return;
    }
    c->hello_done = true;
    send_hello_ack(c);
    return;
  case PYRO_OPEN:
  case PYRO_ATTACH:
  case PYRO_LIST:
    if (channel_find(c, id) != NULL) {
      conn_protocol_error(c, PYRO_E_CHANNEL, "OPEN, ATTACH or LIST on a channel in use");
      return;
    }
    if (m->hdr.type == PYRO_LIST) {
      send_kept(c, id);
      return;
    }
    if (c->nchannels >= c->max_channels) {
      conn_protocol_error(c, PYRO_E_LIMIT,
                          c->max_channels == PYRO_MAX_CHANNELS ? "more than 64 open channels"
                                                               : "more than 1024 open channels");
      return;
    }
    if (m->hdr.type == PYRO_ATTACH)
      channel_attach(c, m);
    else
      channel_open(c, m);
    return;
  case PYRO_DETACH:
    if (!ch->kept) {
      conn_protocol_error(c, PYRO_E_CHANNEL, "DETACH on a channel opened without KEEP");
      return;
    }
    channel_detach(ch, true);
    return;
  case PYRO_STDIN:
    handle_stdin(c, ch, m);
    return;
  case PYRO_STDIN_EOF:
    if (!ch->has_stdin)
      return;
    if (ch->stdin_eof) {
      conn_protocol_error(c, PYRO_E_PROTOCOL, "second STDIN_EOF");
      return;
    }
    ch->stdin_eof = true;
    if (ch->in_q.head == NULL)
      channel_close_stdin(ch);
    channel_update(ch);
    return;
  case PYRO_SIGNAL:
    channel_send_req(ch, SUP_REQ_SIGNAL, m->u.value);
    return;
  case PYRO_KILL:
    channel_send_req(ch, SUP_REQ_KILL, 0);
    return;
  case PYRO_RESIZE: {
    if (!ch->pty) {
      conn_protocol_error(c, PYRO_E_CHANNEL, "RESIZE on a channel without a PTY");
      return;
    }
    /* The kernel sends SIGWINCH to the terminal's foreground group. */
    struct winsize ws = {.ws_row = (unsigned short)m->u.winsize.rows,
                         .ws_col = (unsigned short)m->u.winsize.cols};
    int fd = ch->out.fd >= 0 ? ch->out.fd : ch->in.fd;
    if (fd >= 0 && ioctl(fd, TIOCSWINSZ, &ws) < 0)
      warn_errno("channel %u: resize", ch->id);
    return;
  }
  case PYRO_WINDOW:
    ch->out_credit += m->u.value;
    if (ch->out_credit > MAX_CREDIT)
      ch->out_credit = MAX_CREDIT;
    channel_update(ch);
    return;
  case PYRO_PING:
    send_data(c, PYRO_PONG, 0, m->payload, m->hdr.length);
    return;
  case PYRO_SHUTDOWN:
    agent_shutdown(c->agent, "SHUTDOWN received");
    return;
  case PYRO_SYNC:
    send_u32(c, PYRO_SYNCED, 0, vmsync_apply(&m->u.sync, c->agent->opts.vm));
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
    conn_protocol_error(c, PYRO_E_PROTOCOL, "not a host message");
    return;
  }
}

/* Reads what the socket has and handles every whole frame in the buffer. */
static void conn_on_readable(struct conn *c) {
  ssize_t n = TEMP_FAILURE_RETRY(read(c->src.fd, c->in + c->in_len, PYRO_MAX_FRAME - c->in_len));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return;
  if (n <= 0) {
    conn_close(c, n == 0 ? NULL : "read failed");
    return;
  }
  c->in_len += (size_t)n;
  size_t pos = 0;
  while (!c->dead && !c->agent->stop) {
    struct pyro_hdr h;
    struct pyro_msg m;
    size_t flen;
    int code;
    const char *why = "";
    enum pyro_split r = pyro_split(c->in + pos, c->in_len - pos, true, &h, &flen, &code, &why);
    if (r == PYRO_SPLIT_NEED_MORE)
      break;
    if (r == PYRO_SPLIT_BAD) {
      conn_protocol_error(c, code, why);
      return;
    }
    code = pyro_msg_decode(&h, c->in + pos + PYRO_HDR_LEN, &m, &why);
    if (code != PYRO_OK) {
      conn_protocol_error(c, code, why);
      return;
    }
    handle_frame(c, &m);
    pos += flen;
  }
  if (c->dead)
    return;
  if (pos > 0) {
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
  }
}

/* -------------------------------------------------------- connections */

static struct conn *conn_new(struct agent *a, int fd, bool is_stream, bool is_port) {
  struct conn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->in = malloc(PYRO_MAX_FRAME);
  if (c->in == NULL) {
    free(c);
    return NULL;
  }
  c->agent = a;
  c->is_stream = is_stream;
  c->is_port = is_port;
  c->max_channels = is_port ? PYRO_MAX_CHANNELS_VM : PYRO_MAX_CHANNELS;
  src_init(&c->src, SRC_CONN, c, fd);
  c->next = a->conns;
  a->conns = c;
  a->nconns++;
  conn_update(c);
  if (c->src.events == 0) {
    /* Could not even add it to the set. */
    conn_close(c, "cannot watch the connection");
    return NULL;
  }
  return c;
}

/* Drops a connection: kills every process of its channels (through their
 * supervisors) and closes the fd. why NULL = an ordinary close. */
static void conn_close(struct conn *c, const char *why) {
  struct agent *a = c->agent;
  if (c->dead)
    return;
  if (why != NULL)
    warn_msg("connection closed: %s", why);
  c->dead = true;
  conn_drop_channels(c);
  if (c->is_port) {
    /* The port stays open (no other opener can take it meanwhile) and is
     * watched by port_check until the next host is there. */
    src_want(a, &c->src, 0);
    a->port_fd = steal_fd(&c->src.fd);
    a->port_check_at = monotonic_ms();
    port_watch(a, true);
  }
  src_close(a, &c->src);
  queue_clear(&c->out, false);
  for (struct conn **pp = &a->conns; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  }
  a->nconns--;
  c->next = a->dead_conns;
  a->dead_conns = c;
  if (c->is_stream && !a->stop) {
    a->stop = true;
    a->exit_code = 0;
  }
}

static void refuse_conn(int fd) {
  uint8_t buf[128];
  size_t n = pyro_enc_code_msg(buf, sizeof buf, PYRO_ERROR, 0, PYRO_E_LIMIT,
                               "too many connections (16)");
  (void)TEMP_FAILURE_RETRY(write(fd, buf, n));
  (void)close(fd);
}

static void listener_on_readable(struct agent *a, struct source *s) {
  for (;;) {
    int fd = (int)TEMP_FAILURE_RETRY(accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
        return;
      /* EMFILE and friends: back off instead of spinning on a level-
       * triggered listener. */
      warn_errno("accept");
      a->listen_paused_until = monotonic_ms() + LISTEN_BACKOFF_MS;
      for (unsigned i = 0; i < a->nlisteners; i++)
        src_want(a, &a->listeners[i], 0);
      return;
    }
    if (a->nconns >= PYRO_MAX_CONNS) {
      refuse_conn(fd);
      continue;
    }
    if (conn_new(a, fd, false, false) == NULL) {
      warn_msg("cannot set up a connection");
      (void)close(fd);
    }
  }
}

/* -------------------------------------------------------------- signals */

static void signal_on_readable(struct agent *a) {
  struct signalfd_siginfo si;
  while (TEMP_FAILURE_RETRY(read(a->sig.fd, &si, sizeof si)) == (ssize_t)sizeof si) {
    switch (si.ssi_signo) {
    case SIGCHLD:
      (void)reap_children(NULL, NULL);
      if (a->sweeping)
        sweep_orphans(a);
      break;
    case SIGTERM:
    case SIGINT:
    case SIGHUP:
      /* As PID 1, only a signal from outside the pid namespace (where the
       * sender's pid reads as 0) ends the sandbox. */
      if (!a->opts.pid1 || si.ssi_pid == 0)
        agent_shutdown(a, "termination signal");
      break;
    default:
      break;
    }
  }
}

/* --------------------------------------------------------------- agent */

struct agent *agent_new(const struct agent_opts *opts) {
  struct agent *a = calloc(1, sizeof *a);
  if (a == NULL)
    return NULL;
  a->opts = *opts;
  a->epfd = -1;
  a->port_fd = -1;
  src_init(&a->port_src, SRC_PORT, a, -1);
  src_init(&a->sig, SRC_SIGNAL, a, -1);

  /* Orphans of a crashed supervisor re-parent to us (PID 1 does this
   * anyway), so shutdown can find and kill every process we started. */
  if (!opts->pid1)
    (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

  /* 16 connections x 64 channels x 4 fds need more than the usual 1024. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }

  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
    goto fail;
  a->sig.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  a->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (a->sig.fd < 0 || a->epfd < 0)
    goto fail;
  src_want(a, &a->sig, EPOLLIN);
  if (a->sig.events == 0)
    goto fail;
  return a;
fail:;
  int errsv = errno;
  close_fd(&a->sig.fd);
  close_fd(&a->epfd);
  free(a);
  errno = errsv;
  return NULL;
}

int agent_add_listener(struct agent *a, int listen_fd) {
  if (a->nlisteners >= MAX_LISTENERS) {
    errno = EMFILE;
    return -1;
  }
  if (set_nonblock(listen_fd) < 0)
    return -1;
  struct source *s = &a->listeners[a->nlisteners];
  src_init(s, SRC_LISTEN, a, listen_fd);
  src_want(a, s, EPOLLIN);
  if (s->events == 0)
    return -1;
  a->nlisteners++;
  return 0;
}

int agent_add_stream(struct agent *a, int fd) {
  if (set_nonblock(fd) < 0)
    return -1;
  if (conn_new(a, fd, true, false) == NULL)
    return -1;
  return 0;
}

int agent_add_port(struct agent *a, int fd) {
  if (set_nonblock(fd) < 0)
    return -1;
  a->port_fd = fd;
  a->port_check_at = monotonic_ms();
  port_watch(a, true);
  return 0;
}

/* The serial port with no connection on it: is a host there now? Bytes
 * that arrive while the port still reports a hang-up are left alone: they
 * are the next host's, which virtio delivers on its data queue, possibly
 * before the "host connected" message on its control queue. (The last
 * host's bytes were all read: a connection ends at EOF, which the port
 * reports only once its buffer is empty.) Returns the ms until the next
 * look (-1: none needed). */
static int port_check(struct agent *a) {
  if (a->port_fd < 0)
    return -1;
  int64_t now = monotonic_ms();
  if (now < a->port_check_at)
    return (int)(a->port_check_at - now);
  struct pollfd p = {a->port_fd, POLLIN, 0};
  int rc = poll(&p, 1, 0);
  if (rc < 0) {
    warn_errno("poll the serial port");
  } else if (p.revents & POLLHUP) {
    /* no host yet */
  } else if (p.revents & POLLNVAL) {
    warn_msg("the serial port's fd is not open; no host can connect any more");
    port_watch(a, false);
    a->port_fd = -1;
    return -1;
  } else {
    port_watch(a, false);
    int fd = a->port_fd;
    a->port_fd = -1;
    /* On failure conn_close hands the fd back to port_fd. */
    if (conn_new(a, fd, false, true) != NULL) {
      warn_msg("host connected on the serial port");
      return -1;
    }
    warn_msg("cannot set up a connection on the serial port; retrying");
  }
  int wait = a->opts.port_poll_ms > 0 ? (int)a->opts.port_poll_ms : PORT_POLL_MS;
  a->port_check_at = now + wait;
  return wait;
}

/* Kills every process and ends agent_run (exit code 0). */
static void agent_shutdown(struct agent *a, const char *why) {
  if (a->stop)
    return;
  warn_msg("shutting down: %s", why);
  a->stop = true;
  a->exit_code = 0;
}

static void free_dead(struct agent *a) {
  while (a->dead_channels != NULL) {
    struct channel *ch = a->dead_channels;
    a->dead_channels = ch->next;
    free(ch);
  }
  while (a->dead_conns != NULL) {
    struct conn *c = a->dead_conns;
    a->dead_conns = c->next;
    free(c->in);
    free(c);
  }
}

/* Milliseconds until the deadline (capped, so a clock change is noticed),
 * or -1 for none; 0 when it has passed. */
static int deadline_wait_ms(const struct agent *a) {
  if (a->opts.deadline <= 0)
    return -1;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t left = (a->opts.deadline - (int64_t)now.tv_sec) * 1000 - now.tv_nsec / 1000000;
  if (left <= 0)
    return 0;
  return left > 1000 ? 1000 : (int)left;
}

static void dispatch(struct agent *a, struct source *s, uint32_t ev) {
  switch (s->kind) {
  case SRC_SIGNAL:
    signal_on_readable(a);
    return;
  case SRC_PORT:
    /* The port's waitqueue woke (a host connected, or bytes came): look now. */
    a->port_check_at = 0;
    return;
  case SRC_LISTEN:
    listener_on_readable(a, s);
    return;
  case SRC_CONN: {
    struct conn *c = s->obj;
    if (c->dead)
      return;
    if (ev & EPOLLOUT)
      conn_flush(c);
    if (c->dead)
      return;
    if (ev & EPOLLIN)
      conn_on_readable(c);
    else if (ev & (EPOLLERR | EPOLLHUP))
      conn_close(c, NULL);
    return;
  }
  case SRC_CH_CTL:
  case SRC_CH_OUT:
  case SRC_CH_ERR:
  case SRC_CH_IN: {
    struct channel *ch = s->obj;
    if (ch->dead || s->fd < 0)
      return;
    if (s->kind == SRC_CH_CTL)
      channel_on_ctl(ch);
    else if (s->kind == SRC_CH_OUT)
      channel_read_output(ch, s, PYRO_STDOUT);
    else if (s->kind == SRC_CH_ERR)
      channel_read_output(ch, s, PYRO_STDERR);
    else if (ev & EPOLLERR)
      channel_close_stdin(ch);
    else
      channel_write_stdin(ch);
    channel_update(ch);
    return;
  }
  }
}

int agent_run(struct agent *a) {
  struct epoll_event evs[64];

  while (!a->stop) {
    int timeout = deadline_wait_ms(a);
    if (timeout == 0) {
      agent_shutdown(a, "deadline reached");
      break;
    }
    if (a->listen_paused_until > 0) {
      int64_t left = a->listen_paused_until - monotonic_ms();
      if (left <= 0) {
        a->listen_paused_until = 0;
        for (unsigned i = 0; i < a->nlisteners; i++)
          src_want(a, &a->listeners[i], EPOLLIN);
      } else if (timeout < 0 || left < timeout) {
        timeout = (int)left;
      }
    }
    int port_wait = port_check(a);
    if (port_wait >= 0 && (timeout < 0 || port_wait < timeout))
      timeout = port_wait;
    int n = epoll_wait(a->epfd, evs, (int)N_ELEMENTS(evs), timeout);
    if (n < 0) {
      if (errno != EINTR)
        warn_errno("epoll_wait");
      continue;
    }
    for (int i = 0; i < n && !a->stop; i++)
      dispatch(a, evs[i].data.ptr, evs[i].events);
    for (struct conn *c = a->conns, *next; c != NULL && !a->stop; c = next) {
      next = c->next; /* conn_flush may close (unlink) c */
      if (c->out.bytes > 0)
        conn_flush(c);
    }
    free_dead(a);
  }

  /* Kill everything: closing each channel's ctl tells its supervisor to
   * kill its tree; then whatever is left among our descendants (all of the
   * sandbox as PID 1) gets SIGKILL until none remains. */
  while (a->conns != NULL)
    conn_close(a->conns, NULL);
  while (a->nkept > 0)
    channel_destroy(a->kept[0]);
  for (unsigned i = 0; i < a->nlisteners; i++)
    src_close(a, &a->listeners[i]);
  close_fd(&a->port_fd);
  if (a->opts.pid1)
    (void)kill(-1, SIGKILL);
  if (kill_descendants(monotonic_ms() + SHUTDOWN_KILL_BUDGET_MS, NULL, NULL) < 0)
    warn_msg("some processes survived SIGKILL");
  if (a->opts.pid1) {
    int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root >= 0) {
      (void)syncfs(root);
      (void)close(root);
    }
  }
  free_dead(a);
  return a->exit_code;
}
