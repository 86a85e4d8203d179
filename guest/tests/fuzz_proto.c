/* libFuzzer target for the protocol codec: the input is a byte stream from
 * an untrusted host, split into frames exactly as the agent does. Every
 * decoded OPEN is built into its execve form and re-encoded: the bytes must
 * round-trip. Built with ASan and UBSan by `make fuzz`. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "relay.h"

static uint8_t out[PYRO_MAX_FRAME];

static void check_open(const struct pyro_msg *m) {
  struct pyro_cmd *cmd = pyro_cmd_build(&m->u.open);
  if (cmd == NULL)
    return;
  uint32_t argc = 0;
  while (cmd->argv[argc] != NULL)
    argc++;
  if (argc != m->u.open.argc)
    abort();
  /* Re-encode and compare when the defaults did not change anything. */
  if (m->u.open.envc > 0 && m->u.open.cwd_len > 0) {
    char key[PYRO_KEY_MAX + 1] = "";
    bool keep = (cmd->flags & PYRO_OPEN_KEEP) != 0;
    if (keep != (m->u.open.key != NULL) || (keep && !pyro_key_valid(m->u.open.key, m->u.open.key_len)))
      abort();
    if (keep)
      memcpy(key, m->u.open.key, m->u.open.key_len);
    size_t n = keep ? pyro_enc_open_kept(out, sizeof out, m->hdr.channel, cmd->flags, cmd->timeout_ms,
                                         (const char *const *)cmd->argv, (const char *const *)cmd->envp,
                                         cmd->cwd, key)
                    : pyro_enc_open(out, sizeof out, m->hdr.channel, cmd->flags, cmd->timeout_ms,
                                    (const char *const *)cmd->argv, (const char *const *)cmd->envp,
                                    cmd->cwd);
    if (n != PYRO_HDR_LEN + m->hdr.length ||
        memcmp(out + PYRO_HDR_LEN, m->payload, m->hdr.length) != 0)
      abort();
  }
  free(cmd);
}

/* The same bytes as a hostile guest's stream into the vmm (vmm.c's
 * guest_frame without the I/O): two clients with open channels, then every
 * frame through the splitter, the payload check and the relay tables,
 * whose counts must stay consistent. */
static struct relay relay_state;

/* Pays every refund owed: each to a killed channel, never 0. */
static void pay_refunds(struct relay *r) {
  uint32_t gid, inc;
  while (relay_refund_next(r, &gid, &inc))
    if (gid == 0 || gid > RELAY_MAX_CHANNELS || r->ch[gid].state != RELAY_CH_KILLED || inc == 0)
      abort();
}

static void fuzz_guest_stream(const uint8_t *data, size_t size) {
  struct relay *r = &relay_state;
  uint32_t gid, kills[RELAY_CLIENT_CHANNELS];
  const char *why = NULL;
  relay_init(r, 4096);
  int a = relay_client_add(r), b = relay_client_add(r);
  for (uint32_t cid = 1; cid <= 3; cid++) {
    (void)relay_open(r, (unsigned)a, cid, PYRO_OPEN_STDIN_PIPE, &gid, &why);
    (void)relay_open(r, (unsigned)b, cid, cid == 2 ? PYRO_OPEN_KEEP : 0, &gid, &why);
  }
  /* Kept channels too: an ATTACH and a LIST of client a, and b's kept
   * channel 2 DETACHING when b goes (its frames dropped, nothing owed). */
  (void)relay_open_as(r, (unsigned)a, 4, 0, RELAY_K_ATTACH, &gid, &why);
  (void)relay_open_as(r, (unsigned)a, 5, 0, RELAY_K_LIST, &gid, &why);
  (void)relay_client_gone(r, (unsigned)b, kills);
  uint64_t token;
  (void)relay_ping(r, (unsigned)a, (const uint8_t *)"x", 1, &token, &why);
  size_t pos = 0;
  while (pos < size) {
    struct pyro_hdr h;
    size_t flen;
    int code;
    enum pyro_split sp = pyro_split(data + pos, size - pos, false, &h, &flen, &code, &why);
    if (sp != PYRO_SPLIT_FRAME)
      break;
    const uint8_t *p = data + pos + PYRO_HDR_LEN;
    if (relay_check_guest_payload(h.type, p, h.length, &why) != PYRO_OK)
      break;
    unsigned cl;
    uint32_t cid;
    if (h.channel == 0) {
      const uint8_t *d;
      uint32_t dl;
      if (h.type == PYRO_PONG && relay_pong(r, p, h.length, &cl, &d, &dl, &why) == RELAY_FORWARD &&
          (cl >= RELAY_MAX_CLIENTS || dl > PYRO_MAX_PING))
        abort();
    } else {
      enum relay_verdict v = relay_guest_frame(r, h.type, h.channel, p, h.length, &cl, &cid, &code, &why);
      if (v == RELAY_BAD)
        break;
      if (v == RELAY_FORWARD && (cl != (unsigned)a || cid == 0 || cid > 5))
        abort();
    }
    /* The vmm pays refunds only when its guest-bound queue has room: here
     * after the frames of odd length, so debts both wait and get paid. */
    if (h.length & 1)
      pay_refunds(r);
    pos += flen;
  }
  unsigned live = 0, owed = 0;
  for (unsigned g = 1; g <= RELAY_MAX_CHANNELS; g++) {
    live += r->ch[g].state != RELAY_CH_FREE;
    owed += r->ch[g].refund != 0;
    if (r->ch[g].refund != 0 && r->ch[g].state != RELAY_CH_KILLED)
      abort();
    if (r->ch[g].state == RELAY_CH_DETACHING && !r->ch[g].kept)
      abort();
  }
  if (live != r->nchannels || r->cl[a].nch > r->nchannels || owed != r->nrefunds)
    abort();
  pay_refunds(r);
  if (r->nrefunds != 0)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t pos = 0;
  while (pos < size) {
    struct pyro_hdr h;
    struct pyro_msg m;
    size_t flen;
    int code;
    const char *why = NULL;
    enum pyro_split r = pyro_split(data + pos, size - pos, true, &h, &flen, &code, &why);
    if (r == PYRO_SPLIT_NEED_MORE)
      break;
    if (r == PYRO_SPLIT_BAD) {
      if (code == PYRO_OK || why == NULL)
        abort();
      break;
    }
    if (flen < PYRO_HDR_LEN || flen > size - pos || flen > PYRO_MAX_FRAME)
      abort();
    code = pyro_msg_decode(&h, data + pos + PYRO_HDR_LEN, &m, &why);
    if (code == PYRO_OK && h.type == PYRO_OPEN)
      check_open(&m);
    if (code == PYRO_OK && h.type == PYRO_HELLO) {
      if (m.u.hello.client_len > h.length)
        abort();
    }
    if (code == PYRO_OK && h.type == PYRO_SYNC) {
      /* The seed is exactly the rest of the payload, within its bounds. */
      if (m.u.sync.seed_len < PYRO_SYNC_SEED_MIN || m.u.sync.seed_len > PYRO_SYNC_SEED_MAX ||
          12u + m.u.sync.seed_len != h.length || m.u.sync.seed != m.payload + 12)
        abort();
    }
    if (code != PYRO_OK)
      break;
    pos += flen;
  }
  /* The agent -> host direction of the header decoder too. */
  if (size >= PYRO_HDR_LEN) {
    struct pyro_hdr h;
    const char *why;
    (void)pyro_hdr_decode(data, false, &h, &why);
  }
  fuzz_guest_stream(data, size);
  return 0;
}
