/* SHA-256 against known digests, both the x86 SHA-extension code (where the
 * CPU has it) and the portable code, over lengths around the block size. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sha256.h"
#include "tap.h"

static void hex(const uint8_t d[32], char out[65]) {
  for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static void digest(const void *p, size_t n, char out[65]) {
  struct sha256 s;
  uint8_t d[32];
  sha256_init(&s);
  sha256_update(&s, p, n);
  sha256_final(&s, d);
  hex(d, out);
}

int main(void) {
  char got[65];
  digest("", 0, got);
  ok(strcmp(got, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0, "empty: %s", got);
  digest("abc", 3, got);
  ok(strcmp(got, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0, "abc: %s", got);
  const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  digest(m, strlen(m), got);
  ok(strcmp(got, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0, "two blocks: %s", got);
  static uint8_t buf[1 << 20];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 7 + (i >> 8));
  /* The fast path must agree with the portable one for every split and length. */
  char fast[200][65];
  size_t lens[] = {1, 55, 56, 63, 64, 65, 127, 128, 129, 1000, 4096, 65537, sizeof buf};
  size_t nl = sizeof lens / sizeof lens[0];
  for (size_t i = 0; i < nl; i++) {
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    sha256_update(&s, buf, lens[i] / 3);
    sha256_update(&s, buf + lens[i] / 3, lens[i] - lens[i] / 3);
    sha256_final(&s, d);
    hex(d, fast[i]);
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < 64; i++) digest(buf, sizeof buf, got);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s_fast = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  sha256_portable_only();
  int agree = 1;
  for (size_t i = 0; i < nl; i++) {
    digest(buf, lens[i], got);
    if (strcmp(got, fast[i]) != 0) agree = 0;
  }
  ok(agree, "the default (hardware if present) and portable code agree on %zu lengths", nl);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < 16; i++) digest(buf, sizeof buf, got);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s_port = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("# default: %.0f MB/s, portable: %.0f MB/s\n", 64 / s_fast * 1.048576, 16 / s_port * 1.048576);
  return tap_done();
}
