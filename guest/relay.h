/* pyro-agent vmm: the pure multiplexing state of many host connections over
 * one guest stream (see vmm.c for the I/O around it).
 *
 * No I/O and no allocation: fixed tables sized by the protocol's limits, so
 * the unit test can drive every path and a hostile guest cannot make them
 * grow. Channel ids on the guest stream are allocated here; each maps to
 * one (client slot, client channel id) pair, both ways:
 *   - client -> guest: a linear look-up in the client's own list of at most
 *     RELAY_CLIENT_CHANNELS guest ids;
 *   - guest -> client: an index into the channel table by guest id.
 * A guest id is freed only when the guest ends its channel (EXIT or
 * OPEN_FAILED; DETACHED for a kept one; KEPT for a LIST), never when the
 * client goes: the agent may still send frames for it, and they must not
 * reach a later channel with the same id.
 *
 * Kept channels (OPEN flag KEEP, or ATTACH): when their client goes they
 * are DETACHING (the caller sends DETACH, not KILL), their frames dropped
 * with no credit owed (the agent resets the windows at the next ATTACH),
 * until the agent's DETACHED (or EXIT / OPEN_FAILED, if it ended first)
 * frees the id.
 */
#ifndef PYRO_RELAY_H
#define PYRO_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RELAY_MAX_CLIENTS 16u
#define RELAY_CLIENT_CHANNELS 64u  /* per client, as the agent enforces per connection */
#define RELAY_MAX_CHANNELS 1024u   /* in all: what the guest's VM stream accepts */
#define RELAY_CLIENT_PINGS 8u      /* outstanding PINGs per client */
#define RELAY_MAX_PINGS (RELAY_MAX_CLIENTS * RELAY_CLIENT_PINGS)
#define RELAY_MAX_CREDIT ((uint64_t)1 << 40)

enum relay_ch_state {
  RELAY_CH_FREE = 0,
  RELAY_CH_LIVE,   /* its client is connected */
  RELAY_CH_KILLED, /* its client went: KILL sent, frames dropped until EXIT */
  RELAY_CH_DETACHING, /* kept, its client went: DETACH sent, dropped until DETACHED */
};

/* What the guest id was allocated for: which answer the guest owes. */
enum relay_kind {
  RELAY_K_OPEN = 0, /* OPENED or OPEN_FAILED */
  RELAY_K_ATTACH,   /* ATTACHED or OPEN_FAILED */
  RELAY_K_LIST,     /* KEPT, final */
};

struct relay_ch {
  uint8_t state;
  bool opened;     /* OPENED seen */
  bool has_stdin;  /* opened with STDIN_PIPE */
  bool stdin_eof;  /* the client sent STDIN_EOF */
  bool kept;       /* OPEN with KEEP, or ATTACH: DETACH and DETACHED apply */
  uint8_t kind;    /* enum relay_kind */
  uint16_t client; /* slot, while LIVE */
  uint32_t cid;    /* the client's id for it, while LIVE */
  /* Flow control as the guest sees it (docs/protocol.md "Flow control"):
   * out_credit = STDOUT+STDERR bytes the guest may still send (granted by
   * the client's WINDOWs, or by us once the client is gone); in_used =
   * STDIN bytes sent and not yet returned by STDIN_WINDOW. */
  uint64_t out_credit;
  uint64_t in_used;
  /* KILLED only: credit owed to the guest and not yet sent, summed over the
   * dropped output (and the one window given at the kill). One pending
   * WINDOW per channel, sent by the caller when the guest-bound queue has
   * room (relay_refund_next): the guest that does not read its stream
   * gets no more credit, so it cannot make the vmm queue without end. */
  uint64_t refund;
};

struct relay_client {
  bool used;
  uint32_t gen; /* bumped on every reuse of the slot */
  uint16_t nch;
  uint16_t npings;
  uint16_t gids[RELAY_CLIENT_CHANNELS];
};

struct relay_ping {
  uint16_t client;
  uint32_t gen;
  uint64_t token; /* our payload to the guest: 8 bytes, little-endian */
  uint8_t len;
  uint8_t data[64]; /* the client's payload, echoed back to it */
};

struct relay {
  uint32_t window; /* initial_window from the guest's HELLO_ACK */
  uint32_t next_gid;
  uint32_t nchannels; /* guest ids in use, LIVE or KILLED */
  uint32_t nrefunds;  /* channels whose refund is not 0 */
  uint32_t refund_next; /* where relay_refund_next looks first (round robin) */
  uint64_t next_token;
  struct relay_ch ch[RELAY_MAX_CHANNELS + 1]; /* index = guest id; 0 unused */
  struct relay_client cl[RELAY_MAX_CLIENTS];
  struct relay_ping pings[RELAY_MAX_PINGS]; /* FIFO: the guest answers in order */
  unsigned ping_head, ping_count;
};

/* What to do with a frame from the guest. */
enum relay_verdict {
  RELAY_FORWARD = 0, /* to *client as *cid */
  RELAY_DROP,        /* for a client that went (STDOUT/STDERR: its credit is owed) */
  RELAY_BAD,         /* a protocol violation by the guest: *code, *why */
};

void relay_init(struct relay *r, uint32_t window);

/* A new client: its slot, or -1 when RELAY_MAX_CLIENTS are connected. */
int relay_client_add(struct relay *r);

/* The client went. Its live channels become KILLED; their guest ids are
 * written to kill_gids (room for RELAY_CLIENT_CHANNELS) and counted in the
 * result: the caller sends KILL for each. Each is owed a refund of
 * r->window (relay_refund_next), so the agent can drain the pipes and send
 * the EXIT that frees the id. */
unsigned relay_client_gone(struct relay *r, unsigned client, uint32_t *kill_gids);

/* A client's OPEN on cid: allocates a guest id into *gid. PYRO_OK, or an
 * error code for the client (E_CHANNEL: cid in use; E_LIMIT: 64 for this
 * client or 1024 in all). */
int relay_open(struct relay *r, unsigned client, uint32_t cid, uint32_t open_flags,
               uint32_t *gid, const char **why);
/* The same for ATTACH (a kept channel; its stdin is assumed: an attached
 * channel without one drops STDIN) and LIST (answered by KEPT only). */
int relay_open_as(struct relay *r, unsigned client, uint32_t cid, uint32_t open_flags,
                  enum relay_kind kind, uint32_t *gid, const char **why);

/* True for a guest id the caller must DETACH rather than KILL (from
 * relay_client_gone's list). */
bool relay_detaching(const struct relay *r, uint32_t gid);

/* A client's DETACH on a live gid: PYRO_OK, or E_CHANNEL for a channel
 * that is not kept (the agent would end the whole VM stream for it). */
int relay_client_detach(struct relay *r, uint32_t gid, const char **why);

/* The guest id of a client's channel, 0 when it has none (ended, or never
 * opened: such frames are dropped, as the agent ignores them). */
uint32_t relay_lookup(const struct relay *r, unsigned client, uint32_t cid);

/* Checks and accounting for client frames on a live channel gid (from
 * relay_lookup). Every error the agent would answer with ERROR (and so end
 * the one guest stream, the whole VM) is caught here and charged to the
 * client alone: STDIN without STDIN_PIPE (E_CHANNEL), after STDIN_EOF,
 * past the window (E_FLOW), a second STDIN_EOF. */
int relay_client_stdin(struct relay *r, uint32_t gid, uint32_t len, const char **why);
int relay_client_stdin_eof(struct relay *r, uint32_t gid, const char **why);
void relay_client_window(struct relay *r, uint32_t gid, uint32_t increment);

/* A process frame from the guest (header already checked: known type,
 * length, channel not 0; payload checked by relay_check_guest_payload).
 * Updates the tables (EXIT and OPEN_FAILED free the id) and says where it
 * goes. */
enum relay_verdict relay_guest_frame(struct relay *r, uint8_t type, uint32_t gid,
                                     const uint8_t *payload, uint32_t len,
                                     unsigned *client, uint32_t *cid, int *code,
                                     const char **why);

/* The next refund to send: true with a KILLED channel's guest id and the
 * WINDOW increment (at most UINT32_MAX; a larger debt stays owed), now
 * counted in the channel's credit. false when nothing is owed. The caller
 * sends the WINDOW, so it calls this only while it has room to queue it. */
bool relay_refund_next(struct relay *r, uint32_t *gid, uint32_t *increment);

/* A client's PING: queues it and gives the token to send to the guest.
 * PYRO_OK or E_LIMIT (RELAY_CLIENT_PINGS outstanding). */
int relay_ping(struct relay *r, unsigned client, const uint8_t *data, uint32_t len,
               uint64_t *token, const char **why);

/* The guest's PONG: the oldest outstanding ping must carry that token.
 * FORWARD with the client's payload in *data and *len_out, DROP when that client
 * went, BAD otherwise. */
enum relay_verdict relay_pong(struct relay *r, const uint8_t *payload, uint32_t len,
                              unsigned *client, const uint8_t **data, uint32_t *len_out,
                              const char **why);

/* Checks the payload of any agent -> host frame exactly (the agent-direction
 * counterpart of pyro_msg_decode). PYRO_OK or E_PROTOCOL with *why. */
int relay_check_guest_payload(uint8_t type, const uint8_t *p, uint32_t len,
                              const char **why);

#endif
