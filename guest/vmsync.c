/* pyro-agent: SYNC (see vmsync.h). */
#define _GNU_SOURCE
#include "vmsync.h"

#include <fcntl.h>
#include <linux/random.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "util.h"

static bool set_clock(uint64_t unix_time_ns) {
  struct timespec ts = {(time_t)(unix_time_ns / 1000000000u), (long)(unix_time_ns % 1000000000u)};
  if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
    warn_errno("SYNC: clock_settime(%llu ns)", (unsigned long long)unix_time_ns);
    return false;
  }
  return true;
}

static bool seed_rng(const uint8_t *seed, uint32_t len) {
  /* struct rand_pool_info ends in a flexible array: lay it out by hand. */
  union {
    struct rand_pool_info info;
    uint8_t bytes[sizeof(struct rand_pool_info) + PYRO_SYNC_SEED_MAX];
  } req;
  memset(&req, 0, sizeof req);
  req.info.entropy_count = (int)(len * 8);
  req.info.buf_size = (int)len;
  memcpy(req.bytes + sizeof(struct rand_pool_info), seed, len);
  cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(open("/dev/urandom", O_WRONLY | O_CLOEXEC));
  if (fd < 0) {
    warn_errno("SYNC: open /dev/urandom");
    return false;
  }
  if (ioctl(fd, RNDADDENTROPY, &req.info) < 0) {
    warn_errno("SYNC: RNDADDENTROPY");
    return false;
  }
  /* Crediting alone does not reseed a CRNG that is already initialised
   * (it reseeds on its own schedule, up to a minute later): until then
   * two VMs restored from one snapshot would still share their output.
   * RNDRESEEDCRNG makes the new seed take effect now. ENODATA: the CRNG
   * was not ready yet, and then the credited seed is what readies it. */
  if (ioctl(fd, RNDRESEEDCRNG) < 0 && errno != ENODATA) {
    warn_errno("SYNC: RNDRESEEDCRNG");
    return false;
  }
  return true;
}

uint32_t vmsync_apply(const struct pyro_sync *s, bool vm) {
  if (!vm)
    return 0;
  uint32_t flags = 0;
  if (set_clock(s->unix_time_ns))
    flags |= PYRO_SYNCED_CLOCK;
  if (seed_rng(s->seed, s->seed_len))
    flags |= PYRO_SYNCED_RNG;
  return flags;
}
