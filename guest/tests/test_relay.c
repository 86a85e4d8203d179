/* Unit test of the vmm's multiplexing tables (relay.c), TAP output. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "relay.h"
#include "tap.h"

#define WIN 262144u

static struct relay R;

static enum relay_verdict guest(uint8_t type, uint32_t gid, const uint8_t *p, uint32_t len,
                                unsigned *cl, uint32_t *cid, int *code) {
  const char *why = "";
  return relay_guest_frame(&R, type, gid, p, len, cl, cid, code, &why);
}

static uint32_t open_ok(unsigned client, uint32_t cid, uint32_t flags) {
  uint32_t gid = 0;
  const char *why = "";
  int rc = relay_open(&R, client, cid, flags, &gid, &why);
  return rc == PYRO_OK ? gid : 0;
}

static void test_alloc_and_rewrite(void) {
  relay_init(&R, WIN);
  int a = relay_client_add(&R), b = relay_client_add(&R);
  ok(a == 0 && b == 1, "two clients get slots 0 and 1");
  uint32_t ga = open_ok((unsigned)a, 1, 0), gb = open_ok((unsigned)b, 1, 0);
  ok(ga != 0 && gb != 0 && ga != gb, "the same client channel id on two clients maps to two guest ids (%u, %u)", ga, gb);
  ok(relay_lookup(&R, (unsigned)a, 1) == ga && relay_lookup(&R, (unsigned)b, 1) == gb,
     "client -> guest look-up");
  unsigned cl = 99;
  uint32_t cid = 0;
  int code;
  uint8_t pid[4] = {7, 0, 0, 0};
  ok(guest(PYRO_OPENED, gb, pid, 4, &cl, &cid, &code) == RELAY_FORWARD && cl == (unsigned)b && cid == 1,
     "guest -> client: OPENED for gid %u goes to client %d channel 1", gb, b);
  ok(relay_lookup(&R, (unsigned)a, 2) == 0, "an unknown client channel has no guest id");
  const char *why = "";
  uint32_t g;
  ok(relay_open(&R, (unsigned)a, 1, 0, &g, &why) == PYRO_E_CHANNEL, "OPEN on a client channel in use: E_CHANNEL");
  ok(relay_open(&R, (unsigned)a, 0, 0, &g, &why) == PYRO_E_CHANNEL, "OPEN on channel 0: E_CHANNEL");
  /* EXIT frees the id; the next OPEN does not get it back at once. */
  uint8_t ex[12] = {0};
  ok(guest(PYRO_EXIT, gb, ex, 12, &cl, &cid, &code) == RELAY_FORWARD, "EXIT forwarded");
  ok(relay_lookup(&R, (unsigned)b, 1) == 0 && R.nchannels == 1, "EXIT freed the mapping");
  ok(guest(PYRO_EXIT, gb, ex, 12, &cl, &cid, &code) == RELAY_BAD && code == PYRO_E_CHANNEL,
     "a second EXIT is a guest protocol error");
  uint32_t g2 = open_ok((unsigned)b, 1, 0);
  ok(g2 != 0 && g2 != gb, "a freed guest id is not reused at once (%u after %u)", g2, gb);
}

static void test_exhaustion(void) {
  relay_init(&R, WIN);
  int a = relay_client_add(&R);
  unsigned n = 0;
  for (uint32_t cid = 1; cid <= RELAY_CLIENT_CHANNELS; cid++)
    n += open_ok((unsigned)a, cid, 0) != 0;
  ok(n == RELAY_CLIENT_CHANNELS, "64 channels on one client");
  const char *why = "";
  uint32_t g;
  ok(relay_open(&R, (unsigned)a, 1000, 0, &g, &why) == PYRO_E_LIMIT, "the 65th: E_LIMIT (%s)", why);

  relay_init(&R, WIN);
  for (unsigned i = 0; i < RELAY_MAX_CLIENTS; i++)
    (void)relay_client_add(&R);
  ok(relay_client_add(&R) == -1, "a 17th client has no slot");
  n = 0;
  for (unsigned c = 0; c < RELAY_MAX_CLIENTS; c++)
    for (uint32_t cid = 1; cid <= RELAY_CLIENT_CHANNELS; cid++)
      n += open_ok(c, cid, 0) != 0;
  ok(n == RELAY_MAX_CHANNELS && R.nchannels == RELAY_MAX_CHANNELS, "1024 channels in all");
  bool distinct = true;
  static uint8_t seen[RELAY_MAX_CHANNELS + 1];
  memset(seen, 0, sizeof seen);
  for (unsigned c = 0; c < RELAY_MAX_CLIENTS; c++)
    for (uint32_t cid = 1; cid <= RELAY_CLIENT_CHANNELS; cid++) {
      uint32_t gid = relay_lookup(&R, c, cid);
      if (gid == 0 || gid > RELAY_MAX_CHANNELS || seen[gid])
        distinct = false;
      else
        seen[gid] = 1;
    }
  ok(distinct, "every one of them has its own guest id in 1..1024");
  /* Free one through the guest: exactly one OPEN fits again, on any client. */
  uint32_t gid = relay_lookup(&R, 3, 5);
  unsigned cl;
  uint32_t cid;
  int code;
  uint8_t ef[40] = {0};
  ef[4] = 0;
  ok(guest(PYRO_OPEN_FAILED, gid, ef, 8, &cl, &cid, &code) == RELAY_FORWARD && cl == 3 && cid == 5,
     "OPEN_FAILED before OPENED ends the channel");
  ok(open_ok(3, 5, 0) == gid, "the only free id is found again (%u)", gid);
}

static void test_client_gone(void) {
  relay_init(&R, WIN);
  int a = relay_client_add(&R), b = relay_client_add(&R);
  uint32_t g1 = open_ok((unsigned)a, 1, PYRO_OPEN_STDIN_PIPE), g2 = open_ok((unsigned)a, 2, 0);
  uint32_t gb = open_ok((unsigned)b, 1, 0);
  unsigned cl;
  uint32_t cid;
  int code;
  uint8_t pid[4] = {9, 0, 0, 0}, data[100] = {0};
  (void)guest(PYRO_OPENED, g1, pid, 4, &cl, &cid, &code);
  (void)guest(PYRO_OPENED, g2, pid, 4, &cl, &cid, &code);
  (void)guest(PYRO_OPENED, gb, pid, 4, &cl, &cid, &code);
  ok(guest(PYRO_STDOUT, g1, data, 100, &cl, &cid, &code) == RELAY_FORWARD, "output forwarded mid-stream");
  uint32_t kills[RELAY_CLIENT_CHANNELS];
  unsigned n = relay_client_gone(&R, (unsigned)a, kills);
  ok(n == 2 && ((kills[0] == g1 && kills[1] == g2) || (kills[0] == g2 && kills[1] == g1)),
     "client disconnect: KILL for both of its live channels");
  ok(R.ch[g1].state == RELAY_CH_KILLED && R.nchannels == 3, "the ids stay taken until EXIT");
  ok(R.ch[g1].out_credit == WIN - 100 && R.ch[g1].refund == WIN && R.nrefunds == 2,
     "a window for the drain is owed to each, not yet counted (%llu)",
     (unsigned long long)R.ch[g1].refund);
  uint32_t rg[2], ri[2];
  ok(relay_refund_next(&R, &rg[0], &ri[0]) && relay_refund_next(&R, &rg[1], &ri[1]) &&
         rg[0] != rg[1] && ri[0] == WIN && ri[1] == WIN && !relay_refund_next(&R, &rg[0], &ri[0]),
     "one WINDOW of the window each, then nothing owed");
  uint64_t credit = R.ch[g1].out_credit;
  ok(credit == WIN - 100 + WIN, "the refund is counted in the credit (%llu)", (unsigned long long)credit);
  ok(guest(PYRO_STDOUT, g1, data, 100, &cl, &cid, &code) == RELAY_DROP, "output of a killed channel: dropped");
  ok(R.ch[g1].out_credit == credit - 100 && R.ch[g1].refund == 100 && R.nrefunds == 1,
     "and its credit owed back");
  ok(guest(PYRO_STDIN_WINDOW, g1, (const uint8_t *)"\0\0\0\0", 4, &cl, &cid, &code) == RELAY_DROP,
     "STDIN_WINDOW of a killed channel: dropped");
  uint8_t ex[12] = {1, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0};
  ok(guest(PYRO_EXIT, g1, ex, 12, &cl, &cid, &code) == RELAY_DROP, "its EXIT: dropped, and the id freed");
  ok(R.ch[g1].state == RELAY_CH_FREE && R.nchannels == 2 && R.nrefunds == 0,
     "two ids left in use; nothing owed to the freed one");
  ok(!relay_refund_next(&R, &rg[0], &ri[0]), "no refund for an ended channel");
  ok(guest(PYRO_STDOUT, g1, data, 1, &cl, &cid, &code) == RELAY_BAD && code == PYRO_E_CHANNEL,
     "output after that EXIT is a guest protocol error");
  ok(guest(PYRO_STDOUT, gb, data, 10, &cl, &cid, &code) == RELAY_FORWARD && cl == (unsigned)b,
     "the other client is untouched");
  int a2 = relay_client_add(&R);
  ok(a2 == a && relay_lookup(&R, (unsigned)a2, 1) == 0, "the slot is reused, with none of the old channels");
  ok(relay_client_gone(&R, (unsigned)a2, kills) == 0, "a client with no channels kills nothing");
}

/* A guest that floods a killed channel with tiny frames while it reads
 * nothing: the debt is one sum per channel, and without the refunds (the
 * vmm holds them while its guest-bound queue is full) the guest runs out
 * of credit and the next frame is E_FLOW. */
static void test_refund_coalesced(void) {
  relay_init(&R, 4096);
  int a = relay_client_add(&R);
  uint32_t g = open_ok((unsigned)a, 1, 0), h = open_ok((unsigned)a, 2, 0);
  unsigned cl;
  uint32_t cid, kills[RELAY_CLIENT_CHANNELS], rg, ri;
  int code;
  uint8_t pid[4] = {9, 0, 0, 0}, x = 'x';
  (void)guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code);
  (void)guest(PYRO_OPENED, h, pid, 4, &cl, &cid, &code);
  ok(relay_client_gone(&R, (unsigned)a, kills) == 2, "two channels killed");
  unsigned dropped = 0;
  while (guest(PYRO_STDOUT, g, &x, 1, &cl, &cid, &code) == RELAY_DROP)
    dropped++;
  ok(dropped == 4096 && code == PYRO_E_FLOW,
     "unrefunded, a flooding guest gets its one window and then E_FLOW (%u frames)", dropped);
  ok(R.ch[g].refund == 4096 + 4096 && R.nrefunds == 2, "owed: the drain window + every dropped byte, summed");
  ok(relay_refund_next(&R, &rg, &ri) && rg == g && ri == 8192, "one WINDOW for all of it");
  ok(R.ch[g].out_credit == 8192 && R.ch[g].refund == 0, "now counted in the guest's credit");
  ok(relay_refund_next(&R, &rg, &ri) && rg == h && ri == 4096 && !relay_refund_next(&R, &rg, &ri),
     "the other channel's, then nothing");
  for (unsigned i = 0; i < 100; i++)
    (void)guest(PYRO_STDOUT, g, &x, 1, &cl, &cid, &code);
  ok(relay_refund_next(&R, &rg, &ri) && rg == g && ri == 100, "a batch of frames: one WINDOW");

  /* A debt past u32 (clients may grant up to 2^40) goes out in pieces. */
  relay_init(&R, 4096);
  a = relay_client_add(&R);
  g = open_ok((unsigned)a, 1, 0);
  (void)guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code);
  for (int i = 0; i < 2; i++)
    relay_client_window(&R, g, 0xffffffffu);
  (void)relay_client_gone(&R, (unsigned)a, kills);
  static uint8_t big[65536];
  uint64_t sent = 0;
  while (R.ch[g].out_credit >= sizeof big &&
         guest(PYRO_STDOUT, g, big, sizeof big, &cl, &cid, &code) == RELAY_DROP)
    sent += sizeof big;
  uint64_t owed = R.ch[g].refund;
  ok(owed == 4096 + sent && owed > 0xffffffffu, "owed past u32 (%llu)", (unsigned long long)owed);
  uint64_t got = 0;
  unsigned frames = 0;
  while (relay_refund_next(&R, &rg, &ri)) {
    got += ri;
    frames++;
  }
  ok(got == owed && frames == (owed + 0xfffffffeu) / 0xffffffffu && R.ch[g].refund == 0 && R.nrefunds == 0,
     "paid in WINDOWs of at most u32 (%u)", frames);
}

static void test_flow(void) {
  relay_init(&R, 1000);
  int a = relay_client_add(&R);
  uint32_t g = open_ok((unsigned)a, 1, PYRO_OPEN_STDIN_PIPE), gn = open_ok((unsigned)a, 2, 0);
  unsigned cl;
  uint32_t cid;
  int code;
  const char *why = "";
  static uint8_t data[2000];
  uint8_t pid[4] = {1, 0, 0, 0};
  (void)guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code);
  ok(guest(PYRO_STDOUT, g, data, 1000, &cl, &cid, &code) == RELAY_FORWARD, "output up to the window");
  ok(guest(PYRO_STDERR, g, data, 1, &cl, &cid, &code) == RELAY_BAD && code == PYRO_E_FLOW,
     "one byte past it: E_FLOW from the guest");
  relay_init(&R, 1000);
  a = relay_client_add(&R);
  g = open_ok((unsigned)a, 1, PYRO_OPEN_STDIN_PIPE);
  gn = open_ok((unsigned)a, 2, 0);
  (void)guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code);
  ok(guest(PYRO_STDOUT, g, data, 600, &cl, &cid, &code) == RELAY_FORWARD, "600 of 1000");
  relay_client_window(&R, g, 600);
  ok(guest(PYRO_STDOUT, g, data, 1000, &cl, &cid, &code) == RELAY_FORWARD, "the client's WINDOW passed on");
  ok(relay_client_stdin(&R, g, 1000, &why) == PYRO_OK, "STDIN up to the window");
  ok(relay_client_stdin(&R, g, 1, &why) == PYRO_E_FLOW, "STDIN past it: E_FLOW for the client");
  uint8_t inc[4];
  pyro_put_le32(inc, 400);
  ok(guest(PYRO_STDIN_WINDOW, g, inc, 4, &cl, &cid, &code) == RELAY_FORWARD, "STDIN_WINDOW 400");
  ok(relay_client_stdin(&R, g, 400, &why) == PYRO_OK, "400 more allowed");
  pyro_put_le32(inc, 1001);
  ok(guest(PYRO_STDIN_WINDOW, g, inc, 4, &cl, &cid, &code) == RELAY_BAD && code == PYRO_E_FLOW,
     "a guest returning more STDIN credit than used: E_FLOW");
  ok(relay_client_stdin(&R, gn, 1, &why) == PYRO_E_CHANNEL, "STDIN without STDIN_PIPE: E_CHANNEL for the client");
  ok(relay_client_stdin_eof(&R, gn, &why) == PYRO_OK, "STDIN_EOF without a pipe: ignored");
  ok(relay_client_stdin_eof(&R, g, &why) == PYRO_OK && relay_client_stdin_eof(&R, g, &why) == PYRO_E_PROTOCOL,
     "a second STDIN_EOF: E_PROTOCOL for the client");
  ok(relay_client_stdin(&R, g, 1, &why) == PYRO_E_PROTOCOL, "STDIN after STDIN_EOF: E_PROTOCOL");
  relay_client_window(&R, g, 0xffffffffu);
  for (int i = 0; i < 400; i++)
    relay_client_window(&R, g, 0xffffffffu);
  ok(R.ch[g].out_credit == RELAY_MAX_CREDIT, "credit is capped at 2^40");
}

static void test_hostile_guest(void) {
  relay_init(&R, WIN);
  int a = relay_client_add(&R);
  uint32_t g = open_ok((unsigned)a, 1, 0);
  unsigned cl;
  uint32_t cid;
  int code;
  uint8_t data[16] = {0}, pid[4] = {1, 0, 0, 0};
  ok(guest(PYRO_STDOUT, 0, data, 1, &cl, &cid, &code) == RELAY_BAD, "a process frame on channel 0");
  ok(guest(PYRO_STDOUT, 5000, data, 1, &cl, &cid, &code) == RELAY_BAD, "a channel over 1024");
  ok(guest(PYRO_STDOUT, 0xffffffffu, data, 1, &cl, &cid, &code) == RELAY_BAD, "channel 2^32-1");
  ok(guest(PYRO_OPENED, g + 1, pid, 4, &cl, &cid, &code) == RELAY_BAD && code == PYRO_E_CHANNEL,
     "a channel the host never opened");
  ok(guest(PYRO_STDOUT, g, data, 1, &cl, &cid, &code) == RELAY_BAD, "output before OPENED");
  ok(guest(PYRO_EXIT, g, data, 12, &cl, &cid, &code) == RELAY_BAD, "EXIT before OPENED");
  ok(guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code) == RELAY_FORWARD, "OPENED");
  ok(guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code) == RELAY_BAD, "a second OPENED");
  ok(guest(PYRO_OPEN_FAILED, g, data, 8, &cl, &cid, &code) == RELAY_BAD, "OPEN_FAILED after OPENED");
  ok(guest(PYRO_PONG, g, data, 8, &cl, &cid, &code) == RELAY_BAD, "a connection type on a process channel");
  ok(guest(PYRO_STDIN, g, data, 1, &cl, &cid, &code) == RELAY_BAD, "a host type from the guest");

  const char *why = "";
  static uint8_t big[PYRO_MAX_PAYLOAD];
  memset(big, 0, sizeof big);
  ok(relay_check_guest_payload(PYRO_EXIT, big, 11, &why) != PYRO_OK, "EXIT of 11 bytes");
  ok(relay_check_guest_payload(PYRO_EXIT, big, 13, &why) != PYRO_OK, "EXIT of 13 bytes");
  big[0] = 2;
  ok(relay_check_guest_payload(PYRO_EXIT, big, 12, &why) != PYRO_OK, "EXIT of an unknown kind");
  big[0] = 0;
  ok(relay_check_guest_payload(PYRO_EXIT, big, 12, &why) == PYRO_OK, "a good EXIT");
  ok(relay_check_guest_payload(PYRO_STDOUT, big, 0, &why) != PYRO_OK, "empty STDOUT");
  ok(relay_check_guest_payload(PYRO_PONG, big, 65, &why) != PYRO_OK, "PONG over 64 bytes");
  pyro_put_le32(big + 4, 0xfffffff0u);
  ok(relay_check_guest_payload(PYRO_ERROR, big, 20, &why) != PYRO_OK, "ERROR whose string runs past the payload");
  pyro_put_le32(big + 4, 3);
  ok(relay_check_guest_payload(PYRO_OPEN_FAILED, big, 11, &why) == PYRO_OK &&
         relay_check_guest_payload(PYRO_OPEN_FAILED, big, 12, &why) != PYRO_OK,
     "OPEN_FAILED string must end the payload exactly");
  pyro_put_le32(big + 12, 4);
  ok(relay_check_guest_payload(PYRO_HELLO_ACK, big, 20, &why) == PYRO_OK &&
         relay_check_guest_payload(PYRO_HELLO_ACK, big, 15, &why) != PYRO_OK,
     "HELLO_ACK checked exactly");
  pyro_put_le32(big, 4);
  ok(relay_check_guest_payload(PYRO_SYNCED, big, 4, &why) != PYRO_OK, "SYNCED with an unknown flag");
  pyro_put_le32(big, 3);
  ok(relay_check_guest_payload(PYRO_SYNCED, big, 4, &why) == PYRO_OK, "SYNCED clock+rng");
  ok(relay_check_guest_payload(PYRO_SYNC, big, 4, &why) != PYRO_OK, "a host type from the guest");

  /* Over-long and garbage headers are refused by the shared splitter. */
  uint8_t h[PYRO_HDR_LEN];
  size_t flen;
  struct pyro_hdr hd;
  (void)pyro_enc_hdr(h, sizeof h, PYRO_STDOUT, 1, 0);
  pyro_put_le32(h + 8, PYRO_MAX_PAYLOAD + 1);
  ok(pyro_split(h, sizeof h, false, &hd, &flen, &code, &why) == PYRO_SPLIT_BAD, "over-long guest frame refused from its header");
  (void)pyro_enc_hdr(h, sizeof h, PYRO_STDOUT, 0, 0);
  ok(pyro_split(h, sizeof h, false, &hd, &flen, &code, &why) == PYRO_SPLIT_BAD && code == PYRO_E_CHANNEL,
     "STDOUT on channel 0 refused from its header");
  (void)pyro_enc_hdr(h, sizeof h, PYRO_SYNCED, 3, 4);
  ok(pyro_split(h, sizeof h, false, &hd, &flen, &code, &why) == PYRO_SPLIT_BAD, "SYNCED on a process channel");
}

static void test_pings(void) {
  relay_init(&R, WIN);
  int a = relay_client_add(&R), b = relay_client_add(&R);
  uint64_t ta, tb, t;
  const char *why = "";
  ok(relay_ping(&R, (unsigned)a, (const uint8_t *)"aaaa", 4, &ta, &why) == PYRO_OK &&
         relay_ping(&R, (unsigned)b, (const uint8_t *)"bb", 2, &tb, &why) == PYRO_OK && ta != tb,
     "two pings, two tokens");
  uint8_t p[8];
  unsigned cl;
  const uint8_t *d;
  uint32_t dl;
  pyro_put_le32(p, (uint32_t)tb);
  pyro_put_le32(p + 4, 0);
  ok(relay_pong(&R, p, 8, &cl, &d, &dl, &why) == RELAY_BAD, "a PONG out of order is a guest protocol error");
  pyro_put_le32(p, (uint32_t)ta);
  ok(relay_pong(&R, p, 8, &cl, &d, &dl, &why) == RELAY_FORWARD && cl == (unsigned)a && dl == 4 &&
         memcmp(d, "aaaa", 4) == 0,
     "the first PONG answers client a with its own payload");
  (void)relay_client_gone(&R, (unsigned)b, NULL);
  pyro_put_le32(p, (uint32_t)tb);
  ok(relay_pong(&R, p, 8, &cl, &d, &dl, &why) == RELAY_DROP, "the PONG for a client that went: dropped");
  ok(relay_pong(&R, p, 8, &cl, &d, &dl, &why) == RELAY_BAD, "a PONG without a PING");
  unsigned n = 0;
  for (int i = 0; i < 20; i++)
    n += relay_ping(&R, (unsigned)a, NULL, 0, &t, &why) == PYRO_OK;
  ok(n == RELAY_CLIENT_PINGS, "at most 8 pings outstanding per client (%u)", n);
  ok(relay_pong(&R, p, 7, &cl, &d, &dl, &why) == RELAY_BAD, "a PONG of the wrong length");
}

/* SYNC and SYNCED in the shared codec (proto.c): what the vmm sends and
 * the guest agent parses. */
static void test_sync_codec(void) {
  static uint8_t f[PYRO_MAX_FRAME];
  uint8_t seed[PYRO_SYNC_SEED_MAX + 1];
  for (unsigned i = 0; i < sizeof seed; i++)
    seed[i] = (uint8_t)i;
  size_t n = pyro_enc_sync(f, sizeof f, 0x0123456789abcdefull, seed, 32);
  ok(n == PYRO_HDR_LEN + 12 + 32 && f[3] == PYRO_SYNC, "SYNC encodes to 12 + 12 + 32 bytes");
  struct pyro_hdr h;
  struct pyro_msg m;
  size_t flen;
  int code;
  const char *why = "";
  ok(pyro_split(f, n, true, &h, &flen, &code, &why) == PYRO_SPLIT_FRAME && flen == n, "SYNC splits as a host frame");
  ok(pyro_msg_decode(&h, f + PYRO_HDR_LEN, &m, &why) == PYRO_OK && m.u.sync.unix_time_ns == 0x0123456789abcdefull &&
         m.u.sync.seed_len == 32 && memcmp(m.u.sync.seed, seed, 32) == 0,
     "SYNC decodes: time and seed round-trip");
  ok(pyro_enc_sync(f, sizeof f, 1, seed, 15) == 0 && pyro_enc_sync(f, sizeof f, 1, seed, 257) == 0,
     "the encoder refuses seeds outside 16..256");
  n = pyro_enc_sync(f, sizeof f, 1, seed, 16);
  pyro_put_le32(f + PYRO_HDR_LEN + 8, 15);
  (void)pyro_split(f, n, true, &h, &flen, &code, &why);
  ok(pyro_msg_decode(&h, f + PYRO_HDR_LEN, &m, &why) == PYRO_E_PROTOCOL, "a seed_len of 15: E_PROTOCOL");
  pyro_put_le32(f + PYRO_HDR_LEN + 8, 17);
  ok(pyro_msg_decode(&h, f + PYRO_HDR_LEN, &m, &why) == PYRO_E_PROTOCOL, "a seed_len past the payload: E_PROTOCOL");
  h.length = 11;
  ok(pyro_msg_decode(&h, f + PYRO_HDR_LEN, &m, &why) == PYRO_E_PROTOCOL, "a short SYNC: E_PROTOCOL");
  n = pyro_enc_sync(f, sizeof f, 1, seed, 16);
  pyro_put_le32(f + 4, 1);
  ok(pyro_split(f, n, true, &h, &flen, &code, &why) == PYRO_SPLIT_BAD && code == PYRO_E_CHANNEL,
     "SYNC on a process channel: E_CHANNEL");
  n = pyro_enc_u32(f, sizeof f, PYRO_SYNCED, 0, 3);
  ok(pyro_split(f, n, false, &h, &flen, &code, &why) == PYRO_SPLIT_FRAME, "SYNCED splits as an agent frame");
  ok(pyro_split(f, n, true, &h, &flen, &code, &why) == PYRO_SPLIT_BAD, "and is refused from a host");
}

/* Kept channels: a gone client's kept channel is DETACHED, not killed,
 * owes no refund, and is freed by DETACHED; ATTACH and LIST take ids with
 * their own answers; a guest's ATTACHED, KEPT or DETACHED out of turn is
 * a protocol error. */
static void test_kept(void) {
  relay_init(&R, WIN);
  int a = relay_client_add(&R), b = relay_client_add(&R);
  unsigned cl;
  uint32_t cid, g;
  int code;
  const char *why = "";
  uint8_t pid[4] = {7, 0, 0, 0}, out[100] = {0}, ex[12] = {0};
  uint8_t att[16] = {7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0};
  uint32_t kept = open_ok((unsigned)a, 1, PYRO_OPEN_KEEP | PYRO_OPEN_PTY);
  uint32_t plain = open_ok((unsigned)a, 2, PYRO_OPEN_STDIN_PIPE);
  ok(guest(PYRO_OPENED, kept, pid, 4, &cl, &cid, &code) == RELAY_FORWARD &&
         guest(PYRO_OPENED, plain, pid, 4, &cl, &cid, &code) == RELAY_FORWARD,
     "a kept and a plain channel open");
  ok(relay_client_detach(&R, plain, &why) == PYRO_E_CHANNEL, "DETACH of a plain channel is the client's error");
  ok(relay_client_detach(&R, kept, &why) == PYRO_OK, "DETACH of a kept channel is forwarded");
  uint32_t gids[RELAY_CLIENT_CHANNELS];
  unsigned n = relay_client_gone(&R, (unsigned)a, gids);
  ok(n == 2, "both channels are listed at the client's close");
  bool saw_kept = false, saw_plain = false;
  for (unsigned i = 0; i < n; i++) {
    if (gids[i] == kept)
      saw_kept = relay_detaching(&R, kept);
    if (gids[i] == plain)
      saw_plain = !relay_detaching(&R, plain);
  }
  ok(saw_kept && saw_plain, "the kept one is DETACHED, the plain one KILLed");
  ok(R.ch[kept].refund == 0 && R.ch[plain].refund == WIN, "only the killed one is owed a window");
  ok(guest(PYRO_STDOUT, kept, out, sizeof out, &cl, &cid, &code) == RELAY_DROP && R.ch[kept].refund == 0,
     "output of a detaching channel is dropped, no credit owed");
  ok(guest(PYRO_DETACHED, kept, NULL, 0, &cl, &cid, &code) == RELAY_DROP && R.ch[kept].state == RELAY_CH_FREE,
     "DETACHED frees the detaching id");
  ok(guest(PYRO_DETACHED, plain, NULL, 0, &cl, &cid, &code) == RELAY_BAD, "DETACHED on a killed plain channel: the guest's error");
  (void)guest(PYRO_EXIT, plain, ex, 12, &cl, &cid, &code);

  /* ATTACH from another client: ATTACHED like OPENED, then a takeover. */
  ok(relay_open_as(&R, (unsigned)b, 5, 0, RELAY_K_ATTACH, &g, &why) == PYRO_OK, "ATTACH takes a guest id");
  ok(guest(PYRO_OPENED, g, pid, 4, &cl, &cid, &code) == RELAY_BAD, "OPENED answering an ATTACH: the guest's error");
  relay_init(&R, WIN);
  a = relay_client_add(&R);
  b = relay_client_add(&R);
  uint32_t ga = 0, gb = 0;
  (void)relay_open_as(&R, (unsigned)a, 5, 0, RELAY_K_ATTACH, &ga, &why);
  ok(guest(PYRO_ATTACHED, ga, att, 16, &cl, &cid, &code) == RELAY_FORWARD && cl == (unsigned)a && cid == 5,
     "ATTACHED goes to its client");
  ok(relay_client_stdin(&R, ga, 10, &why) == PYRO_OK, "an attached channel takes STDIN");
  ok(guest(PYRO_STDOUT, ga, out, sizeof out, &cl, &cid, &code) == RELAY_FORWARD, "the ring's output flows");
  ok(guest(PYRO_ATTACHED, ga, att, 16, &cl, &cid, &code) == RELAY_BAD, "a second ATTACHED: the guest's error");
  (void)relay_open_as(&R, (unsigned)b, 9, 0, RELAY_K_ATTACH, &gb, &why);
  ok(guest(PYRO_DETACHED, ga, NULL, 0, &cl, &cid, &code) == RELAY_FORWARD && cl == (unsigned)a && cid == 5 &&
         relay_lookup(&R, (unsigned)a, 5) == 0,
     "the takeover's DETACHED goes to the old holder and frees its id");
  ok(guest(PYRO_ATTACHED, gb, att, 16, &cl, &cid, &code) == RELAY_FORWARD && cl == (unsigned)b, "the new holder's ATTACHED");
  ok(guest(PYRO_STDOUT, ga, out, sizeof out, &cl, &cid, &code) == RELAY_BAD, "output for the freed old id: the guest's error");

  /* LIST: KEPT is its only answer. */
  uint32_t gl = 0;
  ok(relay_open_as(&R, (unsigned)a, 6, 0, RELAY_K_LIST, &gl, &why) == PYRO_OK, "LIST takes a guest id");
  ok(guest(PYRO_STDOUT, gl, out, sizeof out, &cl, &cid, &code) == RELAY_BAD, "output on a LIST: the guest's error");
  uint8_t kept0[4] = {0};
  ok(guest(PYRO_KEPT, gb, kept0, 4, &cl, &cid, &code) == RELAY_BAD, "KEPT for a channel that is no LIST: the guest's error");
  ok(guest(PYRO_KEPT, gl, kept0, 4, &cl, &cid, &code) == RELAY_FORWARD && cl == (unsigned)a && cid == 6 &&
         R.ch[gl].state == RELAY_CH_FREE,
     "KEPT answers the LIST and frees its id");
  (void)relay_open_as(&R, (unsigned)a, 7, 0, RELAY_K_LIST, &gl, &why);
  ok(guest(PYRO_OPEN_FAILED, gl, kept0, 4, &cl, &cid, &code) == RELAY_BAD, "OPEN_FAILED answering a LIST: the guest's error");

  /* The payload checks of the new guest frames. */
  ok(relay_check_guest_payload(PYRO_ATTACHED, att, 16, &why) == PYRO_OK &&
         relay_check_guest_payload(PYRO_ATTACHED, att, 12, &why) == PYRO_E_PROTOCOL,
     "ATTACHED's payload is checked");
  att[4] = 4;
  ok(relay_check_guest_payload(PYRO_ATTACHED, att, 16, &why) == PYRO_E_PROTOCOL, "ATTACHED with unknown flags");
  ok(relay_check_guest_payload(PYRO_DETACHED, NULL, 0, &why) == PYRO_OK &&
         relay_check_guest_payload(PYRO_DETACHED, att, 1, &why) == PYRO_E_PROTOCOL,
     "DETACHED carries nothing");
  uint8_t big[4] = {33, 0, 0, 0};
  ok(relay_check_guest_payload(PYRO_KEPT, kept0, 4, &why) == PYRO_OK &&
         relay_check_guest_payload(PYRO_KEPT, big, 4, &why) == PYRO_E_PROTOCOL &&
         relay_check_guest_payload(PYRO_KEPT, kept0, 3, &why) == PYRO_E_PROTOCOL,
     "KEPT's count and length are checked");
}

int main(void) {
  test_sync_codec();
  test_alloc_and_rewrite();
  test_exhaustion();
  test_client_gone();
  test_refund_coalesced();
  test_flow();
  test_hostile_guest();
  test_pings();
  test_kept();
  return tap_done();
}
