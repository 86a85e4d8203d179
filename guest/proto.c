/* pyro-agent: the protocol codec (see proto.h and docs/protocol.md). */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- types */

bool pyro_type_known(uint8_t type, bool from_host) {
  switch ((enum pyro_type)type) {
  case PYRO_HELLO:
  case PYRO_OPEN:
  case PYRO_STDIN:
  case PYRO_STDIN_EOF:
  case PYRO_SIGNAL:
  case PYRO_KILL:
  case PYRO_WINDOW:
  case PYRO_PING:
  case PYRO_SHUTDOWN:
  case PYRO_SYNC:
  case PYRO_RESIZE:
  case PYRO_ATTACH:
  case PYRO_DETACH:
  case PYRO_LIST:
    return from_host;
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
    return !from_host;
  default:
    return false;
  }
}

const char *pyro_type_name(uint8_t type) {
  switch ((enum pyro_type)type) {
  case PYRO_HELLO: return "HELLO";
  case PYRO_OPEN: return "OPEN";
  case PYRO_STDIN: return "STDIN";
  case PYRO_STDIN_EOF: return "STDIN_EOF";
  case PYRO_SIGNAL: return "SIGNAL";
  case PYRO_KILL: return "KILL";
  case PYRO_WINDOW: return "WINDOW";
  case PYRO_PING: return "PING";
  case PYRO_SHUTDOWN: return "SHUTDOWN";
  case PYRO_SYNC: return "SYNC";
  case PYRO_RESIZE: return "RESIZE";
  case PYRO_ATTACH: return "ATTACH";
  case PYRO_DETACH: return "DETACH";
  case PYRO_LIST: return "LIST";
  case PYRO_ATTACHED: return "ATTACHED";
  case PYRO_DETACHED: return "DETACHED";
  case PYRO_KEPT: return "KEPT";
  case PYRO_HELLO_ACK: return "HELLO_ACK";
  case PYRO_OPENED: return "OPENED";
  case PYRO_STDOUT: return "STDOUT";
  case PYRO_STDERR: return "STDERR";
  case PYRO_EXIT: return "EXIT";
  case PYRO_STDIN_WINDOW: return "STDIN_WINDOW";
  case PYRO_OPEN_FAILED: return "OPEN_FAILED";
  case PYRO_PONG: return "PONG";
  case PYRO_SYNCED: return "SYNCED";
  case PYRO_ERROR: return "ERROR";
  default: return "unknown";
  }
}

/* Types that live on channel 0 (the connection), in either direction. */
static bool type_on_channel0(uint8_t type) {
  return type == PYRO_HELLO || type == PYRO_PING || type == PYRO_SHUTDOWN ||
         type == PYRO_SYNC || type == PYRO_HELLO_ACK || type == PYRO_PONG ||
         type == PYRO_SYNCED || type == PYRO_ERROR;
}

/* --------------------------------------------------------------- header */

int pyro_hdr_decode(const uint8_t *b, bool from_host, struct pyro_hdr *h,
                    const char **why) {
  if (b[0] != 0x50 || b[1] != 0x59) {
    *why = "bad magic";
    return PYRO_E_PROTOCOL;
  }
  if (b[2] != PYRO_VERSION) {
    *why = "unsupported frame version";
    return PYRO_E_PROTOCOL;
  }
  h->type = b[3];
  h->channel = pyro_get_le32(b + 4);
  h->length = pyro_get_le32(b + 8);
  if (!pyro_type_known(h->type, from_host)) {
    *why = "unknown message type";
    return PYRO_E_PROTOCOL;
  }
  if (h->length > PYRO_MAX_PAYLOAD) {
    *why = "payload length over MAX_PAYLOAD";
    return PYRO_E_PROTOCOL;
  }
  if (type_on_channel0(h->type) != (h->channel == 0)) {
    *why = h->channel == 0 ? "process message on channel 0"
                           : "connection message on a process channel";
    return PYRO_E_CHANNEL;
  }
  return PYRO_OK;
}

enum pyro_split pyro_split(const uint8_t *buf, size_t len, bool from_host,
                           struct pyro_hdr *h, size_t *frame_len, int *code,
                           const char **why) {
  *frame_len = 0;
  *code = PYRO_OK;
  /* A wrong magic is visible from the first byte: fail early rather than
   * wait for a header that a garbage sender may never complete. */
  if ((len >= 1 && buf[0] != 0x50) || (len >= 2 && buf[1] != 0x59)) {
    *code = PYRO_E_PROTOCOL;
    *why = "bad magic";
    return PYRO_SPLIT_BAD;
  }
  if (len < PYRO_HDR_LEN)
    return PYRO_SPLIT_NEED_MORE;
  int rc = pyro_hdr_decode(buf, from_host, h, why);
  if (rc != PYRO_OK) {
    *code = rc;
    return PYRO_SPLIT_BAD;
  }
  size_t total = PYRO_HDR_LEN + (size_t)h->length;
  if (len < total)
    return PYRO_SPLIT_NEED_MORE;
  *frame_len = total;
  return PYRO_SPLIT_FRAME;
}

/* --------------------------------------------------------------- reader */

struct rd {
  const uint8_t *p;
  size_t n;
  size_t off;
};

static bool rd_u32(struct rd *r, uint32_t *v) {
  if (r->n - r->off < 4)
    return false;
  *v = pyro_get_le32(r->p + r->off);
  r->off += 4;
  return true;
}

static bool rd_str(struct rd *r, const uint8_t **s, uint32_t *len) {
  uint32_t l;
  if (!rd_u32(r, &l))
    return false;
  if (r->n - r->off < l)
    return false;
  *s = r->p + r->off;
  *len = l;
  r->off += l;
  return true;
}

static bool rd_u64(struct rd *r, uint64_t *v) {
  if (r->n - r->off < 8)
    return false;
  *v = pyro_get_le64(r->p + r->off);
  r->off += 8;
  return true;
}

static bool rd_done(const struct rd *r) { return r->off == r->n; }

static int fail(const char **why, const char *msg, int code) {
  *why = msg;
  return code;
}

/* ----------------------------------------------------------------- OPEN */

static int decode_open(struct rd *r, struct pyro_open *o, const char **why) {
  const uint8_t *s;
  uint32_t len;

  memset(o, 0, sizeof *o);
  if (!rd_u32(r, &o->flags) || !rd_u32(r, &o->timeout_ms) ||
      !rd_u32(r, &o->argc))
    return fail(why, "OPEN payload too short", PYRO_E_PROTOCOL);
  if ((o->flags & ~PYRO_OPEN_KNOWN_FLAGS) != 0)
    return fail(why, "OPEN has unknown flags", PYRO_E_PROTOCOL);
  if (o->argc == 0)
    return fail(why, "OPEN argc is 0", PYRO_E_PROTOCOL);
  if (o->argc > PYRO_MAX_ARGC)
    return fail(why, "OPEN argc over 4096", PYRO_E_LIMIT);
  o->argv_at = r->p + r->off;
  for (uint32_t i = 0; i < o->argc; i++) {
    if (!rd_str(r, &s, &len))
      return fail(why, "OPEN argv truncated", PYRO_E_PROTOCOL);
    if (memchr(s, 0, len) != NULL)
      return fail(why, "NUL byte in argv", PYRO_E_PROTOCOL);
    o->str_bytes += len;
  }
  if (!rd_u32(r, &o->envc))
    return fail(why, "OPEN envc missing", PYRO_E_PROTOCOL);
  if (o->envc > PYRO_MAX_ENVC)
    return fail(why, "OPEN envc over 4096", PYRO_E_LIMIT);
  o->envv_at = r->p + r->off;
  for (uint32_t i = 0; i < o->envc; i++) {
    if (!rd_str(r, &s, &len))
      return fail(why, "OPEN env truncated", PYRO_E_PROTOCOL);
    if (memchr(s, 0, len) != NULL)
      return fail(why, "NUL byte in env", PYRO_E_PROTOCOL);
    const uint8_t *eq = memchr(s, '=', len);
    if (eq == NULL || eq == s)
      return fail(why, "env entry is not K=V", PYRO_E_PROTOCOL);
    o->str_bytes += len;
  }
  if (!rd_str(r, &o->cwd, &o->cwd_len))
    return fail(why, "OPEN cwd truncated", PYRO_E_PROTOCOL);
  if (memchr(o->cwd, 0, o->cwd_len) != NULL)
    return fail(why, "NUL byte in cwd", PYRO_E_PROTOCOL);
  o->str_bytes += o->cwd_len;
  if ((o->flags & PYRO_OPEN_KEEP) != 0) {
    if (!rd_str(r, &o->key, &o->key_len))
      return fail(why, "OPEN with KEEP: key missing", PYRO_E_PROTOCOL);
    if (!pyro_key_valid(o->key, o->key_len))
      return fail(why, "OPEN with KEEP: the key must be 1..64 bytes of [A-Za-z0-9._-]",
                  PYRO_E_PROTOCOL);
  }
  if (!rd_done(r))
    return fail(why, "trailing bytes after OPEN", PYRO_E_PROTOCOL);
  return PYRO_OK;
}

bool pyro_key_valid(const uint8_t *s, uint32_t len) {
  if (len == 0 || len > PYRO_KEY_MAX)
    return false;
  for (uint32_t i = 0; i < len; i++) {
    uint8_t c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok)
      return false;
  }
  return true;
}

void pyro_open_next(const uint8_t **at, const uint8_t **s, uint32_t *len) {
  *len = pyro_get_le32(*at);
  *s = *at + 4;
  *at += 4 + (size_t)*len;
}

static char *copy_str(char **dst, const uint8_t *s, uint32_t len) {
  char *out = *dst;
  memcpy(out, s, len);
  out[len] = '\0';
  *dst += (size_t)len + 1;
  return out;
}

struct pyro_cmd *pyro_cmd_build(const struct pyro_open *o) {
  static const char default_env[] = "PATH=" PYRO_DEFAULT_PATH;
  uint32_t envc = o->envc == 0 ? 1 : o->envc;
  /* Every size here is bounded: argc, envc <= 4096, str_bytes <= MAX_PAYLOAD. */
  size_t ptrs = ((size_t)o->argc + 1 + (size_t)envc + 1) * sizeof(char *);
  size_t chars = o->str_bytes + (size_t)o->argc + (size_t)envc + 2 +
                 sizeof default_env;
  struct pyro_cmd *cmd = malloc(sizeof *cmd + ptrs + chars);
  if (cmd == NULL)
    return NULL;
  char **vec = (char **)(cmd + 1);
  char *str = (char *)(vec + o->argc + 1 + envc + 1);
  const uint8_t *at, *s;
  uint32_t len;

  cmd->flags = o->flags;
  cmd->timeout_ms = o->timeout_ms;
  cmd->argv = vec;
  at = o->argv_at;
  for (uint32_t i = 0; i < o->argc; i++) {
    pyro_open_next(&at, &s, &len);
    cmd->argv[i] = copy_str(&str, s, len);
  }
  cmd->argv[o->argc] = NULL;

  cmd->envp = vec + o->argc + 1;
  cmd->path = PYRO_DEFAULT_PATH;
  if (o->envc == 0) {
    cmd->envp[0] = copy_str(&str, (const uint8_t *)default_env,
                            (uint32_t)strlen(default_env));
  } else {
    at = o->envv_at;
    for (uint32_t i = 0; i < o->envc; i++) {
      pyro_open_next(&at, &s, &len);
      cmd->envp[i] = copy_str(&str, s, len);
      if (strncmp(cmd->envp[i], "PATH=", 5) == 0)
        cmd->path = cmd->envp[i] + 5;
    }
  }
  cmd->envp[envc] = NULL;
  cmd->cwd = o->cwd_len == 0 ? "/" : copy_str(&str, o->cwd, o->cwd_len);
  return cmd;
}

/* ---------------------------------------------------------------- decode */

int pyro_msg_decode(const struct pyro_hdr *h, const uint8_t *payload,
                    struct pyro_msg *m, const char **why) {
  struct rd r = {payload, h->length, 0};

  memset(m, 0, sizeof *m);
  m->hdr = *h;
  m->payload = payload;
  switch ((enum pyro_type)h->type) {
  case PYRO_HELLO:
    if (!rd_u32(&r, &m->u.hello.min_version) ||
        !rd_u32(&r, &m->u.hello.max_version) ||
        !rd_str(&r, &m->u.hello.client, &m->u.hello.client_len))
      return fail(why, "HELLO payload too short", PYRO_E_PROTOCOL);
    if (!rd_done(&r))
      return fail(why, "trailing bytes after HELLO", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_OPEN:
    return decode_open(&r, &m->u.open, why);
  case PYRO_STDIN:
    if (h->length == 0)
      return fail(why, "empty STDIN frame", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_ATTACH:
    if (!rd_str(&r, &m->u.key.s, &m->u.key.len) || !rd_done(&r))
      return fail(why, "ATTACH payload is not one string", PYRO_E_PROTOCOL);
    if (!pyro_key_valid(m->u.key.s, m->u.key.len))
      return fail(why, "ATTACH: the key must be 1..64 bytes of [A-Za-z0-9._-]", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_STDIN_EOF:
  case PYRO_KILL:
  case PYRO_SHUTDOWN:
  case PYRO_DETACH:
  case PYRO_LIST:
    if (h->length != 0)
      return fail(why, "payload on an empty message", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_SIGNAL:
  case PYRO_WINDOW:
    if (h->length != 4)
      return fail(why, "u32 payload of wrong length", PYRO_E_PROTOCOL);
    m->u.value = pyro_get_le32(payload);
    if (h->type == PYRO_SIGNAL &&
        (m->u.value == 0 || m->u.value > PYRO_MAX_SIGNO))
      return fail(why, "signal number out of range", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_PING:
    if (h->length > PYRO_MAX_PING)
      return fail(why, "PING over 64 bytes", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_RESIZE:
    if (h->length != 8)
      return fail(why, "RESIZE payload of wrong length", PYRO_E_PROTOCOL);
    m->u.winsize.rows = pyro_get_le32(payload);
    m->u.winsize.cols = pyro_get_le32(payload + 4);
    if (m->u.winsize.rows == 0 || m->u.winsize.rows > PYRO_MAX_WINSIZE ||
        m->u.winsize.cols == 0 || m->u.winsize.cols > PYRO_MAX_WINSIZE)
      return fail(why, "RESIZE rows or cols not in 1..65535", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_SYNC: {
    struct pyro_sync *s = &m->u.sync;
    if (!rd_u64(&r, &s->unix_time_ns) || !rd_u32(&r, &s->seed_len))
      return fail(why, "SYNC payload too short", PYRO_E_PROTOCOL);
    if (s->seed_len < PYRO_SYNC_SEED_MIN || s->seed_len > PYRO_SYNC_SEED_MAX)
      return fail(why, "SYNC seed length not in 16..256", PYRO_E_PROTOCOL);
    if (r.n - r.off != s->seed_len)
      return fail(why, "SYNC seed length does not match the payload", PYRO_E_PROTOCOL);
    s->seed = r.p + r.off;
    return PYRO_OK;
  }
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
    return fail(why, "not a host message", PYRO_E_PROTOCOL);
  }
}

/* -------------------------------------------------------------- encoders */

size_t pyro_enc_hdr(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                    uint32_t len) {
  if (cap < PYRO_HDR_LEN || len > PYRO_MAX_PAYLOAD ||
      cap - PYRO_HDR_LEN < len)
    return 0;
  buf[0] = 0x50;
  buf[1] = 0x59;
  buf[2] = PYRO_VERSION;
  buf[3] = type;
  pyro_put_le32(buf + 4, channel);
  pyro_put_le32(buf + 8, len);
  return PYRO_HDR_LEN + len;
}

size_t pyro_enc_empty(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel) {
  return pyro_enc_hdr(buf, cap, type, channel, 0);
}

size_t pyro_enc_u32(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                    uint32_t value) {
  size_t n = pyro_enc_hdr(buf, cap, type, channel, 4);
  if (n != 0)
    pyro_put_le32(buf + PYRO_HDR_LEN, value);
  return n;
}

size_t pyro_enc_data(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                     const void *data, size_t n) {
  if (n > PYRO_MAX_PAYLOAD)
    return 0;
  size_t total = pyro_enc_hdr(buf, cap, type, channel, (uint32_t)n);
  if (total != 0 && n > 0)
    memcpy(buf + PYRO_HDR_LEN, data, n);
  return total;
}

/* A writer over a payload with a fixed capacity; ok turns false on overflow. */
struct wr {
  uint8_t *p;
  size_t cap;
  size_t off;
  bool ok;
};

static void wr_u32(struct wr *w, uint32_t v) {
  if (!w->ok || w->cap - w->off < 4) {
    w->ok = false;
    return;
  }
  pyro_put_le32(w->p + w->off, v);
  w->off += 4;
}

static void wr_str(struct wr *w, const char *s) {
  size_t len = strlen(s);
  if (len > PYRO_MAX_PAYLOAD) {
    w->ok = false;
    return;
  }
  wr_u32(w, (uint32_t)len);
  if (!w->ok || w->cap - w->off < len) {
    w->ok = false;
    return;
  }
  memcpy(w->p + w->off, s, len);
  w->off += len;
}

static struct wr wr_begin(uint8_t *buf, size_t cap) {
  struct wr w = {buf, 0, 0, cap >= PYRO_HDR_LEN};
  if (w.ok) {
    w.p = buf + PYRO_HDR_LEN;
    w.cap = cap - PYRO_HDR_LEN;
    if (w.cap > PYRO_MAX_PAYLOAD)
      w.cap = PYRO_MAX_PAYLOAD;
  }
  return w;
}

static size_t wr_end(struct wr *w, uint8_t *buf, uint8_t type, uint32_t channel) {
  if (!w->ok)
    return 0;
  return pyro_enc_hdr(buf, PYRO_HDR_LEN + w->off, type, channel, (uint32_t)w->off);
}

size_t pyro_enc_hello(uint8_t *buf, size_t cap, uint32_t min_version,
                      uint32_t max_version, const char *client) {
  struct wr w = wr_begin(buf, cap);
  wr_u32(&w, min_version);
  wr_u32(&w, max_version);
  wr_str(&w, client);
  return wr_end(&w, buf, PYRO_HELLO, 0);
}

size_t pyro_enc_hello_ack(uint8_t *buf, size_t cap, uint32_t version,
                          uint32_t max_payload, uint32_t initial_window,
                          const char *agent_version) {
  struct wr w = wr_begin(buf, cap);
  wr_u32(&w, version);
  wr_u32(&w, max_payload);
  wr_u32(&w, initial_window);
  wr_str(&w, agent_version);
  return wr_end(&w, buf, PYRO_HELLO_ACK, 0);
}

size_t pyro_enc_exit(uint8_t *buf, size_t cap, uint32_t channel, uint32_t kind,
                     uint32_t value, uint32_t flags) {
  struct wr w = wr_begin(buf, cap);
  wr_u32(&w, kind);
  wr_u32(&w, value);
  wr_u32(&w, flags);
  return wr_end(&w, buf, PYRO_EXIT, channel);
}

size_t pyro_enc_code_msg(uint8_t *buf, size_t cap, uint8_t type,
                         uint32_t channel, uint32_t code, const char *msg) {
  struct wr w = wr_begin(buf, cap);
  wr_u32(&w, code);
  wr_str(&w, msg);
  return wr_end(&w, buf, type, channel);
}

size_t pyro_enc_sync(uint8_t *buf, size_t cap, uint64_t unix_time_ns, const uint8_t *seed,
                     uint32_t seed_len) {
  struct wr w = wr_begin(buf, cap);
  /* A host never sends a SYNC the agent would refuse. */
  if (seed_len < PYRO_SYNC_SEED_MIN || seed_len > PYRO_SYNC_SEED_MAX)
    return 0;
  wr_u32(&w, (uint32_t)unix_time_ns);
  wr_u32(&w, (uint32_t)(unix_time_ns >> 32));
  wr_u32(&w, seed_len);
  if (w.ok && w.cap - w.off >= seed_len) {
    memcpy(w.p + w.off, seed, seed_len);
    w.off += seed_len;
  } else {
    w.ok = false;
  }
  return wr_end(&w, buf, PYRO_SYNC, 0);
}

static size_t enc_open(uint8_t *buf, size_t cap, uint32_t channel, uint32_t flags,
                       uint32_t timeout_ms, const char *const *argv,
                       const char *const *envp, const char *cwd, const char *key);

size_t pyro_enc_open(uint8_t *buf, size_t cap, uint32_t channel, uint32_t flags,
                     uint32_t timeout_ms, const char *const *argv,
                     const char *const *envp, const char *cwd) {
  return enc_open(buf, cap, channel, flags, timeout_ms, argv, envp, cwd, NULL);
}

size_t pyro_enc_open_kept(uint8_t *buf, size_t cap, uint32_t channel, uint32_t flags,
                          uint32_t timeout_ms, const char *const *argv,
                          const char *const *envp, const char *cwd, const char *key) {
  return enc_open(buf, cap, channel, flags | PYRO_OPEN_KEEP, timeout_ms, argv, envp, cwd, key);
}

size_t pyro_enc_str(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                    const void *s, uint32_t len) {
  if (len > PYRO_MAX_PAYLOAD - 4)
    return 0;
  size_t n = pyro_enc_hdr(buf, cap, type, channel, 4 + len);
  if (n != 0) {
    pyro_put_le32(buf + PYRO_HDR_LEN, len);
    if (len > 0)
      memcpy(buf + PYRO_HDR_LEN + 4, s, len);
  }
  return n;
}

static void wr_u64(struct wr *w, uint64_t v) {
  wr_u32(w, (uint32_t)v);
  wr_u32(w, (uint32_t)(v >> 32));
}

size_t pyro_enc_attached(uint8_t *buf, size_t cap, uint32_t channel, uint32_t pid,
                         uint32_t flags, uint64_t dropped) {
  struct wr w = wr_begin(buf, cap);
  wr_u32(&w, pid);
  wr_u32(&w, flags);
  wr_u64(&w, dropped);
  return wr_end(&w, buf, PYRO_ATTACHED, channel);
}

size_t pyro_enc_kept(uint8_t *buf, size_t cap, uint32_t channel, const struct pyro_kept *e,
                     uint32_t n) {
  struct wr w = wr_begin(buf, cap);
  wr_u32(&w, n);
  for (uint32_t i = 0; i < n && w.ok; i++) {
    wr_u32(&w, e[i].key_len);
    if (!w.ok || w.cap - w.off < e[i].key_len) {
      w.ok = false;
      break;
    }
    memcpy(w.p + w.off, e[i].key, e[i].key_len);
    w.off += e[i].key_len;
    wr_u32(&w, e[i].pid);
    wr_u32(&w, e[i].state);
    wr_u64(&w, e[i].ring_bytes);
    wr_u64(&w, e[i].dropped);
  }
  return wr_end(&w, buf, PYRO_KEPT, channel);
}

int pyro_kept_decode(const uint8_t *p, uint32_t len, struct pyro_kept *out, uint32_t *n,
                     const char **why) {
  struct rd r = {p, len, 0};
  uint32_t count;
  *n = 0;
  if (!rd_u32(&r, &count))
    return fail(why, "KEPT payload too short", PYRO_E_PROTOCOL);
  if (count > PYRO_MAX_KEPT)
    return fail(why, "KEPT lists more than 32 kept channels", PYRO_E_PROTOCOL);
  for (uint32_t i = 0; i < count; i++) {
    struct pyro_kept e;
    if (!rd_str(&r, &e.key, &e.key_len) || !rd_u32(&r, &e.pid) || !rd_u32(&r, &e.state) ||
        !rd_u64(&r, &e.ring_bytes) || !rd_u64(&r, &e.dropped))
      return fail(why, "KEPT entry truncated", PYRO_E_PROTOCOL);
    if (!pyro_key_valid(e.key, e.key_len))
      return fail(why, "KEPT entry with an invalid key", PYRO_E_PROTOCOL);
    if (e.state > PYRO_KEPT_EXITED)
      return fail(why, "KEPT entry with an unknown state", PYRO_E_PROTOCOL);
    if (e.ring_bytes > PYRO_KEPT_RING)
      return fail(why, "KEPT entry with a ring over 256 KiB", PYRO_E_PROTOCOL);
    if (out != NULL)
      out[i] = e;
  }
  if (!rd_done(&r))
    return fail(why, "trailing bytes after KEPT", PYRO_E_PROTOCOL);
  *n = count;
  return PYRO_OK;
}

int pyro_attached_check(const uint8_t *p, uint32_t len, const char **why) {
  if (len != 16)
    return fail(why, "ATTACHED payload of wrong length", PYRO_E_PROTOCOL);
  if ((pyro_get_le32(p + 4) & ~PYRO_ATTACHED_EXITED) != 0)
    return fail(why, "ATTACHED has unknown flags", PYRO_E_PROTOCOL);
  return PYRO_OK;
}

static size_t enc_open(uint8_t *buf, size_t cap, uint32_t channel, uint32_t flags,
                       uint32_t timeout_ms, const char *const *argv,
                       const char *const *envp, const char *cwd, const char *key) {
  struct wr w = wr_begin(buf, cap);
  uint32_t argc = 0, envc = 0;
  while (argv[argc] != NULL)
    argc++;
  while (envp != NULL && envp[envc] != NULL)
    envc++;
  wr_u32(&w, flags);
  wr_u32(&w, timeout_ms);
  wr_u32(&w, argc);
  for (uint32_t i = 0; i < argc; i++)
    wr_str(&w, argv[i]);
  wr_u32(&w, envc);
  for (uint32_t i = 0; i < envc; i++)
    wr_str(&w, envp[i]);
  wr_str(&w, cwd);
  if (key != NULL)
    wr_str(&w, key);
  return wr_end(&w, buf, PYRO_OPEN, channel);
}
