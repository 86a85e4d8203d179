/* pyro-agent vmm: multiplexing tables (see relay.h). */
#include "relay.h"

#include <string.h>

#include "proto.h"

static int fail(const char **why, const char *msg, int code) {
  *why = msg;
  return code;
}

void relay_init(struct relay *r, uint32_t window) {
  memset(r, 0, sizeof *r);
  r->window = window;
  r->next_gid = 1;
  r->next_token = 1;
  r->refund_next = 1;
}

int relay_client_add(struct relay *r) {
  for (unsigned i = 0; i < RELAY_MAX_CLIENTS; i++) {
    struct relay_client *c = &r->cl[i];
    if (!c->used) {
      uint32_t gen = c->gen + 1;
      memset(c, 0, sizeof *c);
      c->used = true;
      c->gen = gen;
      return (int)i;
    }
  }
  return -1;
}

static uint64_t add_credit(uint64_t credit, uint64_t inc) {
  credit += inc;
  return credit > RELAY_MAX_CREDIT ? RELAY_MAX_CREDIT : credit;
}

/* Owes a KILLED channel credit (relay_refund_next hands it out). */
static void owe(struct relay *r, struct relay_ch *ch, uint64_t inc) {
  if (inc == 0)
    return;
  if (ch->refund == 0)
    r->nrefunds++;
  ch->refund = add_credit(ch->refund, inc);
}

bool relay_refund_next(struct relay *r, uint32_t *gid, uint32_t *increment) {
  if (r->nrefunds == 0)
    return false;
  uint32_t g = r->refund_next;
  for (unsigned tries = 0; tries < RELAY_MAX_CHANNELS; tries++, g = g % RELAY_MAX_CHANNELS + 1) {
    struct relay_ch *ch = &r->ch[g];
    if (ch->refund == 0)
      continue;
    uint32_t inc = ch->refund > UINT32_MAX ? UINT32_MAX : (uint32_t)ch->refund;
    ch->refund -= inc;
    if (ch->refund == 0)
      r->nrefunds--;
    ch->out_credit = add_credit(ch->out_credit, inc);
    /* Round robin: one channel's large debt does not starve the others. */
    r->refund_next = g % RELAY_MAX_CHANNELS + 1;
    *gid = g;
    *increment = inc;
    return true;
  }
  return false; /* not reached: nrefunds counts channels with a refund */
}

unsigned relay_client_gone(struct relay *r, unsigned client, uint32_t *kill_gids) {
  unsigned n = 0;
  if (client >= RELAY_MAX_CLIENTS || !r->cl[client].used)
    return 0;
  struct relay_client *c = &r->cl[client];
  for (unsigned i = 0; i < c->nch; i++) {
    struct relay_ch *ch = &r->ch[c->gids[i]];
    if (ch->kept && ch->kind != RELAY_K_LIST) {
      /* It belongs to the sandbox: detached, not killed. No credit is
       * owed: the agent reads a detached channel without any. */
      ch->state = RELAY_CH_DETACHING;
    } else {
      ch->state = RELAY_CH_KILLED;
      owe(r, ch, r->window);
    }
    if (kill_gids != NULL)
      kill_gids[n] = c->gids[i];
    n++;
  }
  c->nch = 0;
  c->used = false;
  /* Its pings stay in the FIFO (the guest still answers them in order);
   * the generation tells relay_pong to drop their answers. */
  return n;
}

uint32_t relay_lookup(const struct relay *r, unsigned client, uint32_t cid) {
  if (client >= RELAY_MAX_CLIENTS || cid == 0)
    return 0;
  const struct relay_client *c = &r->cl[client];
  for (unsigned i = 0; i < c->nch; i++)
    if (r->ch[c->gids[i]].cid == cid)
      return c->gids[i];
  return 0;
}

bool relay_detaching(const struct relay *r, uint32_t gid) {
  return gid >= 1 && gid <= RELAY_MAX_CHANNELS && r->ch[gid].state == RELAY_CH_DETACHING;
}

int relay_client_detach(struct relay *r, uint32_t gid, const char **why) {
  if (!r->ch[gid].kept || r->ch[gid].kind == RELAY_K_LIST)
    return fail(why, "DETACH on a channel opened without KEEP", PYRO_E_CHANNEL);
  return PYRO_OK;
}

int relay_open(struct relay *r, unsigned client, uint32_t cid, uint32_t open_flags,
               uint32_t *gid, const char **why) {
  return relay_open_as(r, client, cid, open_flags, RELAY_K_OPEN, gid, why);
}

int relay_open_as(struct relay *r, unsigned client, uint32_t cid, uint32_t open_flags,
                  enum relay_kind kind, uint32_t *gid, const char **why) {
  struct relay_client *c = &r->cl[client];
  *gid = 0;
  if (cid == 0)
    return fail(why, "OPEN on channel 0", PYRO_E_CHANNEL);
  if (relay_lookup(r, client, cid) != 0)
    return fail(why, "OPEN on a channel in use", PYRO_E_CHANNEL);
  if (c->nch >= RELAY_CLIENT_CHANNELS)
    return fail(why, "more than 64 open channels", PYRO_E_LIMIT);
  if (r->nchannels >= RELAY_MAX_CHANNELS)
    return fail(why, "the VM has 1024 channels open (all connections together)",
                PYRO_E_LIMIT);
  /* Round robin from the last id, so an id just freed is not reused at
   * once (a frame the guest sent late would then look valid). */
  uint32_t g = r->next_gid;
  for (unsigned tries = 0; tries < RELAY_MAX_CHANNELS; tries++) {
    if (r->ch[g].state == RELAY_CH_FREE)
      break;
    g = g % RELAY_MAX_CHANNELS + 1;
  }
  /* nchannels < MAX means a free one exists: the loop found it. */
  struct relay_ch *ch = &r->ch[g];
  memset(ch, 0, sizeof *ch);
  ch->state = RELAY_CH_LIVE;
  ch->client = (uint16_t)client;
  ch->cid = cid;
  ch->kind = (uint8_t)kind;
  ch->kept = kind == RELAY_K_ATTACH || (open_flags & PYRO_OPEN_KEEP) != 0;
  /* A PTY's input comes from STDIN frames too (the agent's rule); an
   * attached channel's is unknown here and the agent drops STDIN for one
   * without stdin. */
  ch->has_stdin = kind == RELAY_K_ATTACH ||
                  (open_flags & (PYRO_OPEN_STDIN_PIPE | PYRO_OPEN_PTY)) != 0;
  ch->out_credit = kind == RELAY_K_LIST ? 0 : r->window;
  c->gids[c->nch++] = (uint16_t)g;
  r->nchannels++;
  r->next_gid = g % RELAY_MAX_CHANNELS + 1;
  *gid = g;
  return PYRO_OK;
}

int relay_client_stdin(struct relay *r, uint32_t gid, uint32_t len, const char **why) {
  struct relay_ch *ch = &r->ch[gid];
  if (!ch->has_stdin)
    return fail(why, "STDIN on a channel without STDIN_PIPE", PYRO_E_CHANNEL);
  if (ch->stdin_eof)
    return fail(why, "STDIN after STDIN_EOF", PYRO_E_PROTOCOL);
  if (ch->in_used + len > r->window)
    return fail(why, "STDIN past the window", PYRO_E_FLOW);
  ch->in_used += len;
  return PYRO_OK;
}

int relay_client_stdin_eof(struct relay *r, uint32_t gid, const char **why) {
  struct relay_ch *ch = &r->ch[gid];
  if (!ch->has_stdin)
    return PYRO_OK; /* ignored by the agent too */
  if (ch->stdin_eof)
    return fail(why, "second STDIN_EOF", PYRO_E_PROTOCOL);
  ch->stdin_eof = true;
  return PYRO_OK;
}

void relay_client_window(struct relay *r, uint32_t gid, uint32_t increment) {
  struct relay_ch *ch = &r->ch[gid];
  ch->out_credit = add_credit(ch->out_credit, increment);
}

/* Frees a guest id and takes it out of its client's list. */
static void channel_free(struct relay *r, uint32_t gid) {
  struct relay_ch *ch = &r->ch[gid];
  if (ch->state == RELAY_CH_LIVE) {
    struct relay_client *c = &r->cl[ch->client];
    for (unsigned i = 0; i < c->nch; i++) {
      if (c->gids[i] == gid) {
        c->gids[i] = c->gids[--c->nch];
        break;
      }
    }
  }
  if (ch->refund != 0)
    r->nrefunds--; /* the guest ended it: nothing more to drain */
  memset(ch, 0, sizeof *ch);
  r->nchannels--;
}

enum relay_verdict relay_guest_frame(struct relay *r, uint8_t type, uint32_t gid,
                                     const uint8_t *payload, uint32_t len,
                                     unsigned *client, uint32_t *cid, int *code,
                                     const char **why) {
  *code = PYRO_E_PROTOCOL;
  if (gid == 0 || gid > RELAY_MAX_CHANNELS || r->ch[gid].state == RELAY_CH_FREE) {
    *code = PYRO_E_CHANNEL;
    *why = "frame for a channel the host did not open";
    return RELAY_BAD;
  }
  struct relay_ch *ch = &r->ch[gid];
  bool live = ch->state == RELAY_CH_LIVE;
  *client = ch->client;
  *cid = ch->cid;
  switch ((enum pyro_type)type) {
  case PYRO_OPENED:
  case PYRO_ATTACHED:
    if (ch->opened || ch->kind != (type == PYRO_OPENED ? RELAY_K_OPEN : RELAY_K_ATTACH)) {
      *why = type == PYRO_OPENED ? "OPENED out of turn" : "ATTACHED out of turn";
      return RELAY_BAD;
    }
    ch->opened = true;
    break;
  case PYRO_DETACHED:
    if (!ch->kept || ch->kind == RELAY_K_LIST) {
      *why = "DETACHED on a channel that is not kept";
      return RELAY_BAD;
    }
    channel_free(r, gid);
    break;
  case PYRO_KEPT:
    if (ch->kind != RELAY_K_LIST) {
      *why = "KEPT that answers no LIST";
      return RELAY_BAD;
    }
    channel_free(r, gid);
    break;
  case PYRO_STDOUT:
  case PYRO_STDERR:
    if (!ch->opened) {
      *why = "output before OPENED";
      return RELAY_BAD;
    }
    if (len > ch->out_credit) {
      *code = PYRO_E_FLOW;
      *why = "output past the window";
      return RELAY_BAD;
    }
    ch->out_credit -= len;
    if (ch->state == RELAY_CH_KILLED) /* dropped: owed back, so the agent can drain to EOF */
      owe(r, ch, len);
    break;
  case PYRO_STDIN_WINDOW: {
    if (ch->kind == RELAY_K_LIST) {
      *why = "STDIN_WINDOW on a LIST";
      return RELAY_BAD;
    }
    uint32_t inc = pyro_get_le32(payload);
    if (inc > ch->in_used) {
      *code = PYRO_E_FLOW;
      *why = "STDIN_WINDOW returns more credit than was used";
      return RELAY_BAD;
    }
    ch->in_used -= inc;
    break;
  }
  case PYRO_EXIT:
    if (!ch->opened) {
      *why = "EXIT before OPENED";
      return RELAY_BAD;
    }
    channel_free(r, gid);
    break;
  case PYRO_OPEN_FAILED:
    if (ch->opened || ch->kind == RELAY_K_LIST) {
      *why = "OPEN_FAILED out of turn";
      return RELAY_BAD;
    }
    channel_free(r, gid);
    break;
  case PYRO_ATTACH:
  case PYRO_DETACH:
  case PYRO_LIST:
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
  case PYRO_HELLO_ACK:
  case PYRO_PONG:
  case PYRO_SYNCED:
  case PYRO_ERROR:
  default:
    *why = "not a process frame from the agent";
    return RELAY_BAD;
  }
  (void)len;
  return live ? RELAY_FORWARD : RELAY_DROP;
}

int relay_ping(struct relay *r, unsigned client, const uint8_t *data, uint32_t len,
               uint64_t *token, const char **why) {
  struct relay_client *c = &r->cl[client];
  if (len > PYRO_MAX_PING)
    return fail(why, "PING over 64 bytes", PYRO_E_PROTOCOL);
  if (c->npings >= RELAY_CLIENT_PINGS || r->ping_count >= RELAY_MAX_PINGS)
    return fail(why, "more than 8 PINGs outstanding", PYRO_E_LIMIT);
  struct relay_ping *p = &r->pings[(r->ping_head + r->ping_count) % RELAY_MAX_PINGS];
  p->client = (uint16_t)client;
  p->gen = c->gen;
  p->token = r->next_token++;
  p->len = (uint8_t)len;
  if (len > 0)
    memcpy(p->data, data, len);
  r->ping_count++;
  c->npings++;
  *token = p->token;
  return PYRO_OK;
}

enum relay_verdict relay_pong(struct relay *r, const uint8_t *payload, uint32_t len,
                              unsigned *client, const uint8_t **data, uint32_t *len_out,
                              const char **why) {
  if (r->ping_count == 0) {
    *why = "PONG without a PING";
    return RELAY_BAD;
  }
  struct relay_ping *p = &r->pings[r->ping_head];
  uint64_t token = 0;
  if (len == 8)
    token = (uint64_t)pyro_get_le32(payload) | ((uint64_t)pyro_get_le32(payload + 4) << 32);
  if (len != 8 || token != p->token) {
    *why = "PONG does not echo the PING";
    return RELAY_BAD;
  }
  r->ping_head = (r->ping_head + 1) % RELAY_MAX_PINGS;
  r->ping_count--;
  struct relay_client *c = &r->cl[p->client];
  if (!c->used || c->gen != p->gen)
    return RELAY_DROP;
  c->npings--;
  *client = p->client;
  *data = p->data;
  *len_out = p->len;
  return RELAY_FORWARD;
}

/* ------------------------------------------------------------- payloads */

static bool has_str_at(const uint8_t *p, uint32_t len, uint32_t off) {
  if (len < off || len - off < 4)
    return false;
  return pyro_get_le32(p + off) == len - off - 4;
}

int relay_check_guest_payload(uint8_t type, const uint8_t *p, uint32_t len,
                              const char **why) {
  switch ((enum pyro_type)type) {
  case PYRO_HELLO_ACK:
    if (!has_str_at(p, len, 12))
      return fail(why, "malformed HELLO_ACK", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_OPENED:
  case PYRO_STDIN_WINDOW:
  case PYRO_SYNCED:
    if (len != 4)
      return fail(why, "u32 payload of wrong length", PYRO_E_PROTOCOL);
    if (type == PYRO_SYNCED && (pyro_get_le32(p) & ~PYRO_SYNCED_KNOWN) != 0)
      return fail(why, "SYNCED has unknown flags", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_STDOUT:
  case PYRO_STDERR:
    if (len == 0)
      return fail(why, "empty output frame", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_EXIT:
    if (len != 12)
      return fail(why, "EXIT payload of wrong length", PYRO_E_PROTOCOL);
    if (pyro_get_le32(p) > PYRO_EXIT_SIGNALED)
      return fail(why, "EXIT kind unknown", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_OPEN_FAILED:
  case PYRO_ERROR:
    if (!has_str_at(p, len, 4))
      return fail(why, "malformed code and message", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_PONG:
    if (len > PYRO_MAX_PING)
      return fail(why, "PONG over 64 bytes", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_ATTACHED:
    return pyro_attached_check(p, len, why);
  case PYRO_DETACHED:
    if (len != 0)
      return fail(why, "DETACHED with a payload", PYRO_E_PROTOCOL);
    return PYRO_OK;
  case PYRO_KEPT: {
    uint32_t n;
    return pyro_kept_decode(p, len, NULL, &n, why);
  }
  case PYRO_ATTACH:
  case PYRO_DETACH:
  case PYRO_LIST:
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
  default:
    return fail(why, "not an agent message", PYRO_E_PROTOCOL);
  }
}
