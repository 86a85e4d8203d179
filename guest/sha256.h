/* SHA-256 (FIPS 180-4), for checking a pushed stream against the host's digest. */
#ifndef PYRO_SHA256_H
#define PYRO_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
  uint32_t h[8];
  uint64_t len;
  uint8_t buf[64];
  size_t n;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
void sha256_final(struct sha256 *s, uint8_t out[32]);
/* Tests: use the portable code even where the CPU has SHA extensions. */
void sha256_portable_only(void);

#endif
