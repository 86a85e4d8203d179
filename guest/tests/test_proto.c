/* Unit test of the protocol codec (proto.c), TAP output.
 * With --write-seeds DIR it writes a seed corpus for the fuzzer instead. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "tap.h"

static uint8_t buf[PYRO_MAX_FRAME + 64];

/* Splits and decodes one host frame; returns the error code (0 = ok). */
static int decode_one(const uint8_t *b, size_t n, struct pyro_msg *m) {
  struct pyro_hdr h;
  size_t flen;
  int code;
  const char *why;
  enum pyro_split r = pyro_split(b, n, true, &h, &flen, &code, &why);
  if (r == PYRO_SPLIT_BAD)
    return code;
  if (r == PYRO_SPLIT_NEED_MORE)
    return -1;
  if (flen != n)
    return -2;
  return pyro_msg_decode(&h, b + PYRO_HDR_LEN, m, &why);
}

static size_t frame(uint8_t type, uint32_t ch, const uint8_t *payload, uint32_t len) {
  size_t n = pyro_enc_hdr(buf, sizeof buf, type, ch, len);
  if (len > 0)
    memcpy(buf + PYRO_HDR_LEN, payload, len);
  return n;
}

static void test_example_bytes(void) {
  static const uint8_t hello[] = {0x50, 0x59, 0x01, 0x01, 0, 0, 0, 0, 0x0d, 0, 0, 0,
                                  1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x74};
  struct pyro_msg m;
  size_t n = pyro_enc_hello(buf, sizeof buf, 1, 1, "t");
  ok(n == sizeof hello && memcmp(buf, hello, n) == 0, "HELLO encodes to the bytes in docs/protocol.md");
  ok(decode_one(hello, sizeof hello, &m) == PYRO_OK && m.u.hello.min_version == 1 &&
         m.u.hello.max_version == 1 && m.u.hello.client_len == 1 && m.u.hello.client[0] == 't',
     "HELLO example decodes");
}

static void test_header_errors(void) {
  struct pyro_msg m;
  size_t n = pyro_enc_empty(buf, sizeof buf, PYRO_KILL, 3);
  ok(decode_one(buf, n, &m) == PYRO_OK, "KILL on channel 3 is fine");
  buf[0] = 0x51;
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "bad magic byte 0");
  buf[0] = 0x50;
  buf[1] = 0x00;
  ok(decode_one(buf, 1, &m) == -1 && decode_one(buf, 2, &m) == PYRO_E_PROTOCOL,
     "bad magic byte 1 is seen after 2 bytes");
  buf[1] = 0x59;
  buf[2] = 2;
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "wrong version");
  buf[2] = 1;
  buf[3] = 0x7f;
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "unknown type");
  buf[3] = PYRO_EXIT;
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "an agent type from the host");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_KILL, 0);
  ok(decode_one(buf, n, &m) == PYRO_E_CHANNEL, "KILL on channel 0");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_SHUTDOWN, 9);
  ok(decode_one(buf, n, &m) == PYRO_E_CHANNEL, "SHUTDOWN on channel 9");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_STDIN, 1);
  pyro_put_le32(buf + 8, PYRO_MAX_PAYLOAD + 1);
  ok(decode_one(buf, PYRO_HDR_LEN, &m) == PYRO_E_PROTOCOL, "length over MAX_PAYLOAD, known from the header");
  pyro_put_le32(buf + 8, 0xffffffffu);
  ok(decode_one(buf, PYRO_HDR_LEN, &m) == PYRO_E_PROTOCOL, "length 0xffffffff");
  pyro_put_le32(buf + 8, 10);
  ok(decode_one(buf, PYRO_HDR_LEN + 9, &m) == -1, "a short payload waits for more");
  ok(pyro_type_known(PYRO_EXIT, false) && !pyro_type_known(PYRO_EXIT, true) &&
         pyro_type_known(PYRO_OPEN, true) && !pyro_type_known(0, true),
     "type directions");
}

static void test_small_messages(void) {
  struct pyro_msg m;
  uint8_t p[128] = {0};
  size_t n;
  pyro_put_le32(p, 9);
  n = frame(PYRO_SIGNAL, 1, p, 4);
  ok(decode_one(buf, n, &m) == PYRO_OK && m.u.value == 9, "SIGNAL 9");
  pyro_put_le32(p, 0);
  n = frame(PYRO_SIGNAL, 1, p, 4);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "SIGNAL 0 rejected");
  pyro_put_le32(p, 65);
  n = frame(PYRO_SIGNAL, 1, p, 4);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "SIGNAL 65 rejected");
  n = frame(PYRO_SIGNAL, 1, p, 5);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "SIGNAL with 5 bytes rejected");
  pyro_put_le32(p, 4096);
  n = frame(PYRO_WINDOW, 2, p, 4);
  ok(decode_one(buf, n, &m) == PYRO_OK && m.u.value == 4096, "WINDOW 4096");
  n = frame(PYRO_WINDOW, 2, p, 3);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "WINDOW with 3 bytes rejected");
  n = frame(PYRO_STDIN, 2, p, 0);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "empty STDIN rejected");
  n = frame(PYRO_STDIN, 2, p, 7);
  ok(decode_one(buf, n, &m) == PYRO_OK, "STDIN with 7 bytes");
  n = frame(PYRO_KILL, 2, p, 1);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "KILL with a payload rejected");
  n = frame(PYRO_STDIN_EOF, 2, p, 0);
  ok(decode_one(buf, n, &m) == PYRO_OK, "STDIN_EOF");
  n = frame(PYRO_PING, 0, p, 64);
  ok(decode_one(buf, n, &m) == PYRO_OK, "PING of 64 bytes");
  n = frame(PYRO_PING, 0, p, 65);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "PING of 65 bytes rejected");
  n = pyro_enc_hello(buf, sizeof buf, 1, 1, "x");
  buf[n++] = 0;
  pyro_put_le32(buf + 8, pyro_get_le32(buf + 8) + 1);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "HELLO with a trailing byte rejected");
}

static size_t enc_open(const char *const *argv, const char *const *envp, const char *cwd) {
  return pyro_enc_open(buf, sizeof buf, 7, PYRO_OPEN_STDIN_PIPE, 1234, argv, envp, cwd);
}

static void test_open(void) {
  struct pyro_msg m;
  const char *argv[] = {"/bin/sh", "-c", "echo hi", NULL};
  const char *envp[] = {"A=1", "PATH=/x:/y", "EMPTY=", NULL};
  size_t n = enc_open(argv, envp, "/workspace");
  ok(decode_one(buf, n, &m) == PYRO_OK, "OPEN decodes");
  struct pyro_cmd *cmd = pyro_cmd_build(&m.u.open);
  ok(cmd != NULL && cmd->flags == PYRO_OPEN_STDIN_PIPE && cmd->timeout_ms == 1234 &&
         strcmp(cmd->argv[0], "/bin/sh") == 0 && strcmp(cmd->argv[2], "echo hi") == 0 &&
         cmd->argv[3] == NULL,
     "OPEN argv");
  ok(cmd != NULL && strcmp(cmd->envp[0], "A=1") == 0 && strcmp(cmd->envp[2], "EMPTY=") == 0 &&
         cmd->envp[3] == NULL && strcmp(cmd->path, "/x:/y") == 0 &&
         strcmp(cmd->cwd, "/workspace") == 0,
     "OPEN env, PATH and cwd");
  free(cmd);

  const char *none[] = {NULL};
  n = enc_open(argv, none, "");
  ok(decode_one(buf, n, &m) == PYRO_OK, "OPEN without env and cwd decodes");
  cmd = pyro_cmd_build(&m.u.open);
  ok(cmd != NULL && strcmp(cmd->envp[0], "PATH=" PYRO_DEFAULT_PATH) == 0 && cmd->envp[1] == NULL &&
         strcmp(cmd->path, PYRO_DEFAULT_PATH) == 0 && strcmp(cmd->cwd, "/") == 0,
     "defaults: PATH env and cwd /");
  free(cmd);

  /* Every truncation of a valid OPEN is an error, never a crash. */
  n = enc_open(argv, envp, "/workspace");
  size_t plen = n - PYRO_HDR_LEN;
  int all_bad = 1;
  for (size_t cut = 0; cut < plen; cut++) {
    pyro_put_le32(buf + 8, (uint32_t)cut);
    struct pyro_hdr h;
    const char *why;
    h.type = PYRO_OPEN;
    h.channel = 7;
    h.length = (uint32_t)cut;
    if (pyro_msg_decode(&h, buf + PYRO_HDR_LEN, &m, &why) == PYRO_OK)
      all_bad = 0;
  }
  ok(all_bad, "every truncated OPEN is rejected (%zu cuts)", plen);

  const char *empty_argv[] = {NULL};
  n = enc_open(empty_argv, envp, "/");
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "argc 0 rejected");

  const char *bad_env[] = {"NOEQUALS", NULL};
  n = enc_open(argv, bad_env, "/");
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "env without '=' rejected");
  const char *bad_env2[] = {"=v", NULL};
  n = enc_open(argv, bad_env2, "/");
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "env with an empty key rejected");

  /* NUL inside an argv string: build "a\0b" by hand. */
  n = enc_open(argv, envp, "/w");
  uint8_t *first = buf + PYRO_HDR_LEN + 12 + 4; /* "/bin/sh" bytes */
  first[1] = 0;
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "NUL in argv rejected");
  n = enc_open(argv, envp, "/w");
  buf[n - 1] = 0;
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "NUL in cwd rejected");

  n = enc_open(argv, envp, "/w");
  pyro_put_le32(buf + PYRO_HDR_LEN, 0x4);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "unknown OPEN flag rejected");
  pyro_put_le32(buf + PYRO_HDR_LEN, PYRO_OPEN_PTY);
  ok(decode_one(buf, n, &m) == PYRO_OK, "PTY flag parses");

  n = enc_open(argv, envp, "/w");
  pyro_put_le32(buf + PYRO_HDR_LEN + 8, 4097);
  ok(decode_one(buf, n, &m) == PYRO_E_LIMIT, "argc 4097 is E_LIMIT");
  pyro_put_le32(buf + PYRO_HDR_LEN + 8, 0xffffffffu);
  ok(decode_one(buf, n, &m) == PYRO_E_LIMIT, "argc 0xffffffff is E_LIMIT");
  n = enc_open(argv, envp, "/w");
  pyro_put_le32(buf + PYRO_HDR_LEN + 12, 0xfffffff0u);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "a string length past the payload");

  n = enc_open(argv, envp, "/w");
  buf[n] = 'x';
  pyro_put_le32(buf + 8, pyro_get_le32(buf + 8) + 1);
  ok(decode_one(buf, n + 1, &m) == PYRO_E_PROTOCOL, "trailing byte after OPEN rejected");

  /* The largest argv that fits: 4096 one-byte strings. */
  static const char *big[PYRO_MAX_ARGC + 2];
  for (unsigned i = 0; i < PYRO_MAX_ARGC; i++)
    big[i] = "a";
  big[PYRO_MAX_ARGC] = NULL;
  n = enc_open(big, none, "/");
  ok(n > 0 && decode_one(buf, n, &m) == PYRO_OK, "argc 4096 accepted");
  cmd = pyro_cmd_build(&m.u.open);
  ok(cmd != NULL && cmd->argv[PYRO_MAX_ARGC - 1][0] == 'a' && cmd->argv[PYRO_MAX_ARGC] == NULL,
     "argc 4096 builds");
  free(cmd);
  big[PYRO_MAX_ARGC] = "a";
  big[PYRO_MAX_ARGC + 1] = NULL;
  n = enc_open(big, none, "/");
  ok(n > 0 && decode_one(buf, n, &m) == PYRO_E_LIMIT, "argc 4097 rejected");

  /* An OPEN over MAX_PAYLOAD cannot be encoded. */
  static char huge[PYRO_MAX_PAYLOAD];
  memset(huge, 'x', sizeof huge - 1);
  const char *huge_argv[] = {huge, NULL};
  ok(enc_open(huge_argv, none, "/") == 0, "encoder refuses a payload over MAX_PAYLOAD");
}

static void test_encoders(void) {
  size_t n = pyro_enc_exit(buf, sizeof buf, 5, PYRO_EXIT_SIGNALED, 9, PYRO_EXIT_TIMED_OUT);
  ok(n == 24 && buf[3] == PYRO_EXIT && pyro_get_le32(buf + 4) == 5 && pyro_get_le32(buf + 8) == 12 &&
         pyro_get_le32(buf + 12) == 1 && pyro_get_le32(buf + 16) == 9 && pyro_get_le32(buf + 20) == 1,
     "EXIT layout");
  n = pyro_enc_hello_ack(buf, sizeof buf, 1, PYRO_MAX_PAYLOAD, PYRO_INITIAL_WINDOW, PYRO_AGENT_VERSION);
  ok(n == PYRO_HDR_LEN + 16 + strlen(PYRO_AGENT_VERSION) && pyro_get_le32(buf + 16) == 65536 &&
         pyro_get_le32(buf + 20) == 262144 && pyro_get_le32(buf + 24) == strlen(PYRO_AGENT_VERSION),
     "HELLO_ACK layout");
  n = pyro_enc_code_msg(buf, sizeof buf, PYRO_ERROR, 0, PYRO_E_FLOW, "past window");
  ok(n == PYRO_HDR_LEN + 8 + 11 && pyro_get_le32(buf + 12) == PYRO_E_FLOW, "ERROR layout");
  ok(pyro_enc_exit(buf, 23, 5, 0, 0, 0) == 0, "encoder respects the buffer size");
  ok(pyro_enc_data(buf, sizeof buf, PYRO_STDOUT, 1, buf, PYRO_MAX_PAYLOAD + 1) == 0,
     "data over MAX_PAYLOAD refused");
}

/* Random bytes, split into frames the way the agent does: must end in a
 * frame, "need more" or an error, never read out of bounds (run it under
 * the fuzzer's sanitizers for that) or loop. */
static void test_garbage(void) {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  int frames = 0, errors = 0;
  for (int round = 0; round < 20000; round++) {
    size_t n = 1 + (size_t)(s % 200);
    for (size_t i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      buf[i] = (uint8_t)s;
    }
    if (round % 2 == 0 && n >= 12) { /* a valid header half the time */
      buf[0] = 0x50;
      buf[1] = 0x59;
      buf[2] = 1;
      buf[3] = (uint8_t)(1 + s % 10);
      pyro_put_le32(buf + 8, (uint32_t)(n - 12));
    }
    struct pyro_hdr h;
    struct pyro_msg m;
    size_t flen;
    int code;
    const char *why;
    enum pyro_split r = pyro_split(buf, n, true, &h, &flen, &code, &why);
    if (r == PYRO_SPLIT_FRAME) {
      if (pyro_msg_decode(&h, buf + PYRO_HDR_LEN, &m, &why) == PYRO_OK) {
        frames++;
        if (h.type == PYRO_OPEN)
          free(pyro_cmd_build(&m.u.open));
      } else {
        errors++;
      }
    } else if (r == PYRO_SPLIT_BAD) {
      errors++;
    }
  }
  ok(frames > 0 && errors > 0, "garbage: %d frames, %d errors, no crash", frames, errors);
}

static void test_sync(void) {
  struct pyro_msg m;
  uint8_t seed[PYRO_SYNC_SEED_MAX + 1];
  for (size_t i = 0; i < sizeof seed; i++)
    seed[i] = (uint8_t)(i * 7 + 1);
  const uint64_t t = 1764640800123456789ull;
  size_t n = pyro_enc_sync(buf, sizeof buf, t, seed, 32);
  ok(n == PYRO_HDR_LEN + 8 + 4 + 32 && buf[3] == PYRO_SYNC, "SYNC encodes to 12 + 44 bytes");
  ok(decode_one(buf, n, &m) == PYRO_OK && m.u.sync.unix_time_ns == t && m.u.sync.seed_len == 32 &&
         memcmp(m.u.sync.seed, seed, 32) == 0,
     "SYNC round-trips time (all 64 bits) and seed");
  n = pyro_enc_sync(buf, sizeof buf, t, seed, PYRO_SYNC_SEED_MIN);
  ok(decode_one(buf, n, &m) == PYRO_OK, "a 16-byte seed is the minimum");
  n = pyro_enc_sync(buf, sizeof buf, t, seed, PYRO_SYNC_SEED_MAX);
  ok(decode_one(buf, n, &m) == PYRO_OK, "a 256-byte seed is the maximum");
  ok(pyro_enc_sync(buf, sizeof buf, t, seed, PYRO_SYNC_SEED_MIN - 1) == 0 &&
         pyro_enc_sync(buf, sizeof buf, t, seed, PYRO_SYNC_SEED_MAX + 1) == 0,
     "the encoder makes no SYNC the agent would refuse");
  /* Frames of a hostile host: a valid SYNC whose length fields then lie. */
  n = pyro_enc_sync(buf, sizeof buf, t, seed, PYRO_SYNC_SEED_MIN);
  pyro_put_le32(buf + PYRO_HDR_LEN + 8, PYRO_SYNC_SEED_MIN - 1);
  pyro_put_le32(buf + 8, 8 + 4 + PYRO_SYNC_SEED_MIN - 1);
  ok(decode_one(buf, n - 1, &m) == PYRO_E_PROTOCOL, "a 15-byte seed is refused");
  n = pyro_enc_sync(buf, sizeof buf, t, seed, PYRO_SYNC_SEED_MAX);
  memcpy(buf + n, seed, 1);
  pyro_put_le32(buf + PYRO_HDR_LEN + 8, PYRO_SYNC_SEED_MAX + 1);
  pyro_put_le32(buf + 8, 8 + 4 + PYRO_SYNC_SEED_MAX + 1);
  ok(decode_one(buf, n + 1, &m) == PYRO_E_PROTOCOL, "a 257-byte seed is refused");
  n = pyro_enc_sync(buf, sizeof buf, t, seed, 32);
  pyro_put_le32(buf + PYRO_HDR_LEN + 8, 33);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "seed_len past the payload");
  pyro_put_le32(buf + PYRO_HDR_LEN + 8, 31);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "a byte after the seed");
  n = frame(PYRO_SYNC, 0, seed, 11);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "SYNC shorter than its fixed part");
  n = pyro_enc_sync(buf, sizeof buf, t, seed, 32);
  pyro_put_le32(buf + 4, 5);
  ok(decode_one(buf, n, &m) == PYRO_E_CHANNEL, "SYNC on a process channel");
  n = frame(PYRO_SYNCED, 0, seed, 4);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL && pyro_type_known(PYRO_SYNCED, false),
     "SYNCED is an agent message");
  ok(pyro_enc_sync(buf, PYRO_HDR_LEN + 40, t, seed, 32) == 0, "SYNC encoder refuses a short buffer");
}

static void test_resize(void) {
  struct pyro_msg m;
  uint8_t p[8];
  size_t n;
  pyro_put_le32(p, 50);
  pyro_put_le32(p + 4, 132);
  n = frame(PYRO_RESIZE, 3, p, 8);
  ok(decode_one(buf, n, &m) == PYRO_OK && m.u.winsize.rows == 50 && m.u.winsize.cols == 132,
     "RESIZE 50x132 on channel 3");
  ok(strcmp(pyro_type_name(PYRO_RESIZE), "RESIZE") == 0 && pyro_type_known(PYRO_RESIZE, true) &&
         !pyro_type_known(PYRO_RESIZE, false),
     "RESIZE is a host message");
  n = frame(PYRO_RESIZE, 0, p, 8);
  ok(decode_one(buf, n, &m) == PYRO_E_CHANNEL, "RESIZE on channel 0");
  n = frame(PYRO_RESIZE, 3, p, 7);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "RESIZE of 7 bytes");
  pyro_put_le32(p, 0);
  n = frame(PYRO_RESIZE, 3, p, 8);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "0 rows");
  pyro_put_le32(p, 24);
  pyro_put_le32(p + 4, PYRO_MAX_WINSIZE + 1);
  n = frame(PYRO_RESIZE, 3, p, 8);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "65536 cols (winsize holds unsigned shorts)");
  pyro_put_le32(p + 4, PYRO_MAX_WINSIZE);
  n = frame(PYRO_RESIZE, 3, p, 8);
  ok(decode_one(buf, n, &m) == PYRO_OK, "65535 cols is the maximum");
}

static int write_seeds(const char *dir) {
  const char *argv[] = {"/bin/sh", "-c", "cat", NULL};
  const char *envp[] = {"PATH=/bin", "HOME=/root", NULL};
  uint8_t win[4] = {0, 0, 1, 0};
  size_t n;
  struct {
    const char *name;
    size_t len;
  } seeds[8];
  static uint8_t store[8][1024];
  static const uint8_t seed32[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                     17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  n = pyro_enc_hello(store[0], sizeof store[0], 1, 1, "pyro-mcp 0.1.0");
  seeds[0].name = "hello";
  seeds[0].len = n;
  n = pyro_enc_open(store[1], sizeof store[1], 1, PYRO_OPEN_STDIN_PIPE, 30000, argv, envp, "/workspace");
  seeds[1].name = "open";
  seeds[1].len = n;
  n = pyro_enc_data(store[2], sizeof store[2], PYRO_STDIN, 1, "hi\n", 3);
  seeds[2].name = "stdin";
  seeds[2].len = n;
  n = pyro_enc_data(store[3], sizeof store[3], PYRO_WINDOW, 1, win, 4);
  seeds[3].name = "window";
  seeds[3].len = n;
  n = pyro_enc_data(store[4], sizeof store[4], PYRO_PING, 0, "ping", 4);
  seeds[4].name = "ping";
  seeds[4].len = n;
  n = pyro_enc_sync(store[6], sizeof store[6], 1764640800000000000ull, seed32, sizeof seed32);
  seeds[6].name = "sync";
  seeds[6].len = n;
  /* A terminal: OPEN with PTY, then its size. */
  uint8_t ws[8] = {50, 0, 0, 0, 132, 0, 0, 0};
  n = pyro_enc_open(store[7], sizeof store[7], 2, PYRO_OPEN_PTY, 0, argv, envp, "/workspace");
  n += pyro_enc_data(store[7] + n, sizeof store[7] - n, PYRO_RESIZE, 2, ws, sizeof ws);
  seeds[7].name = "pty";
  seeds[7].len = n;
  /* A whole session in one input (SYNC right after HELLO, as a VM host sends it). */
  size_t off = 0;
  memcpy(store[5], store[0], seeds[0].len);
  off += seeds[0].len;
  memcpy(store[5] + off, store[6], seeds[6].len);
  off += seeds[6].len;
  for (int i = 1; i < 5; i++) {
    memcpy(store[5] + off, store[i], seeds[i].len);
    off += seeds[i].len;
  }
  seeds[5].name = "session";
  seeds[5].len = off;
  for (int i = 0; i < 8; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, seeds[i].name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(store[i], 1, seeds[i].len, f) != seeds[i].len) {
      perror(path);
      return 1;
    }
    fclose(f);
  }
  return 0;
}

/* Kept channels: OPEN with KEEP, ATTACH, DETACH, LIST; ATTACHED and KEPT. */
static void test_kept(void) {
  static const char *const argv[] = {"/bin/sh", NULL};
  struct pyro_msg m;
  size_t n = pyro_enc_open_kept(buf, sizeof buf, 5, PYRO_OPEN_PTY, 0, argv, NULL, "/w", "shell_0123456789ab");
  ok(n > 0 && decode_one(buf, n, &m) == PYRO_OK && (m.u.open.flags & PYRO_OPEN_KEEP) &&
         m.u.open.key_len == 18 && memcmp(m.u.open.key, "shell_0123456789ab", 18) == 0 &&
         m.u.open.cwd_len == 2,
     "OPEN with KEEP decodes its key after cwd");
  n = pyro_enc_open(buf, sizeof buf, 5, PYRO_OPEN_KEEP, 0, argv, NULL, "/w");
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "OPEN with KEEP and no key");
  n = pyro_enc_open(buf, sizeof buf, 5, 0, 0, argv, NULL, "/w");
  ok(decode_one(buf, n, &m) == PYRO_OK && m.u.open.key == NULL, "OPEN without KEEP has no key");
  n = pyro_enc_open_kept(buf, sizeof buf, 5, 0, 0, argv, NULL, "/w", "k");
  pyro_put_le32(buf + 8, pyro_get_le32(buf + 8) - 1); /* one byte short of the key */
  ok(decode_one(buf, n - 1, &m) == PYRO_E_PROTOCOL, "OPEN with a truncated key");
  n = pyro_enc_open(buf, sizeof buf, 5, 0, 0, argv, NULL, "/w");
  {
    /* OPEN without KEEP but a trailing string: trailing bytes. */
    uint8_t extra[] = {1, 0, 0, 0, 'k'};
    memcpy(buf + n, extra, sizeof extra);
    pyro_put_le32(buf + 8, pyro_get_le32(buf + 8) + sizeof extra);
    ok(decode_one(buf, n + sizeof extra, &m) == PYRO_E_PROTOCOL, "a key without KEEP is trailing bytes");
  }
  const char *bad[] = {"", "has space", "a/b", "\xc3\xa9", "x\x01y", NULL};
  for (int i = 0; bad[i] != NULL; i++) {
    n = pyro_enc_open_kept(buf, sizeof buf, 5, 0, 0, argv, NULL, "/w", bad[i]);
    ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "OPEN with bad key %d refused", i);
    n = pyro_enc_str(buf, sizeof buf, PYRO_ATTACH, 6, bad[i], (uint32_t)strlen(bad[i]));
    ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "ATTACH with bad key %d refused", i);
  }
  char k64[65], k65[66];
  memset(k64, 'a', 64);
  k64[64] = '\0';
  memset(k65, 'a', 65);
  k65[65] = '\0';
  n = pyro_enc_str(buf, sizeof buf, PYRO_ATTACH, 6, k64, 64);
  ok(decode_one(buf, n, &m) == PYRO_OK && m.u.key.len == 64, "ATTACH with a 64-byte key");
  n = pyro_enc_str(buf, sizeof buf, PYRO_ATTACH, 6, k65, 65);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "ATTACH with a 65-byte key refused");
  n = pyro_enc_open_kept(buf, sizeof buf, 5, 0, 0, argv, NULL, "/w", k65);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "OPEN with a 65-byte key refused");
  n = pyro_enc_str(buf, sizeof buf, PYRO_ATTACH, 6, "k", 1);
  pyro_put_le32(buf + PYRO_HDR_LEN, 2); /* string length past the payload */
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "ATTACH whose string runs past the payload");
  n = pyro_enc_str(buf, sizeof buf, PYRO_ATTACH, 0, "k", 1);
  ok(decode_one(buf, n, &m) == PYRO_E_CHANNEL, "ATTACH on channel 0");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_DETACH, 3);
  ok(decode_one(buf, n, &m) == PYRO_OK, "DETACH");
  n = frame(PYRO_DETACH, 3, (const uint8_t *)"x", 1);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "DETACH with a payload");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_LIST, 4);
  ok(decode_one(buf, n, &m) == PYRO_OK, "LIST");
  n = frame(PYRO_LIST, 4, (const uint8_t *)"x", 1);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "LIST with a payload");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_LIST, 0);
  ok(decode_one(buf, n, &m) == PYRO_E_CHANNEL, "LIST on channel 0");
  n = pyro_enc_empty(buf, sizeof buf, PYRO_DETACHED, 4);
  ok(decode_one(buf, n, &m) == PYRO_E_PROTOCOL, "DETACHED is not a host message");

  /* ATTACHED */
  const char *why;
  n = pyro_enc_attached(buf, sizeof buf, 4, 7, PYRO_ATTACHED_EXITED, 1234);
  ok(n == PYRO_HDR_LEN + 16 && pyro_attached_check(buf + PYRO_HDR_LEN, 16, &why) == PYRO_OK &&
         pyro_get_le64(buf + PYRO_HDR_LEN + 8) == 1234,
     "ATTACHED encodes and checks");
  pyro_put_le32(buf + PYRO_HDR_LEN + 4, 2);
  ok(pyro_attached_check(buf + PYRO_HDR_LEN, 16, &why) == PYRO_E_PROTOCOL, "ATTACHED with unknown flags");
  ok(pyro_attached_check(buf + PYRO_HDR_LEN, 15, &why) == PYRO_E_PROTOCOL, "ATTACHED too short");

  /* KEPT */
  struct pyro_kept e[PYRO_MAX_KEPT + 1], out[PYRO_MAX_KEPT];
  char keys[PYRO_MAX_KEPT + 1][8];
  for (unsigned i = 0; i <= PYRO_MAX_KEPT; i++) {
    snprintf(keys[i], sizeof keys[i], "k%u", i);
    e[i] = (struct pyro_kept){(const uint8_t *)keys[i], (uint32_t)strlen(keys[i]), i + 1,
                              i % 3, i * 100, (uint64_t)i << 33};
  }
  uint32_t cnt = 99;
  n = pyro_enc_kept(buf, sizeof buf, 9, e, PYRO_MAX_KEPT);
  int rc = pyro_kept_decode(buf + PYRO_HDR_LEN, (uint32_t)(n - PYRO_HDR_LEN), out, &cnt, &why);
  ok(rc == PYRO_OK && cnt == PYRO_MAX_KEPT && out[31].pid == 32 && out[31].state == 31 % 3 &&
         out[31].ring_bytes == 3100 && out[31].dropped == (uint64_t)31 << 33 &&
         out[31].key_len == 3 && memcmp(out[31].key, "k31", 3) == 0,
     "KEPT of 32 entries round-trips");
  n = pyro_enc_kept(buf, sizeof buf, 9, e, 0);
  ok(pyro_kept_decode(buf + PYRO_HDR_LEN, 4, NULL, &cnt, &why) == PYRO_OK && cnt == 0, "empty KEPT");
  n = pyro_enc_kept(buf, sizeof buf, 9, e, PYRO_MAX_KEPT + 1);
  ok(pyro_kept_decode(buf + PYRO_HDR_LEN, (uint32_t)(n - PYRO_HDR_LEN), NULL, &cnt, &why) == PYRO_E_PROTOCOL,
     "KEPT of 33 entries refused");
  n = pyro_enc_kept(buf, sizeof buf, 9, e, 1);
  uint32_t plen = (uint32_t)(n - PYRO_HDR_LEN);
  uint8_t *p = buf + PYRO_HDR_LEN;
  ok(pyro_kept_decode(p, plen - 1, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT truncated");
  p[plen] = 0;
  ok(pyro_kept_decode(p, plen + 1, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT with a trailing byte");
  pyro_put_le32(p + 4 + 4 + 2 + 4, 3);
  ok(pyro_kept_decode(p, plen, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT with an unknown state");
  pyro_put_le32(p + 4 + 4 + 2 + 4, 1);
  pyro_put_le32(p + 4 + 4 + 2 + 8, PYRO_KEPT_RING + 1);
  ok(pyro_kept_decode(p, plen, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT with a ring over 256 KiB");
  pyro_put_le32(p + 4 + 4 + 2 + 8, 0);
  p[4 + 4] = ' ';
  ok(pyro_kept_decode(p, plen, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT with a bad key");
  pyro_put_le32(p + 4, 0xffffffffu);
  ok(pyro_kept_decode(p, plen, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT with a key length past the payload");
  ok(pyro_kept_decode(p, 3, NULL, &cnt, &why) == PYRO_E_PROTOCOL, "KEPT too short for its count");
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
    return write_seeds(argv[2]);
  test_example_bytes();
  test_header_errors();
  test_small_messages();
  test_open();
  test_encoders();
  test_sync();
  test_resize();
  test_kept();
  test_garbage();
  return tap_done();
}
