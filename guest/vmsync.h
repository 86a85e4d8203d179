/* pyro-agent: SYNC, the host handing a VM its wall clock and fresh entropy.
 *
 * A VM restored from a snapshot wakes up with the snapshot's clock and the
 * snapshot's RNG state: two restored VMs would hand out the same "random"
 * bytes. The host sends SYNC after every boot and restore, before anything
 * runs (docs/protocol.md, "SYNC").
 */
#ifndef PYRO_VMSYNC_H
#define PYRO_VMSYNC_H

#include <stdbool.h>
#include <stdint.h>

#include "proto.h"

/* In a VM (vm true): sets CLOCK_REALTIME, mixes the seed into the kernel's
 * input pool crediting its bits, and reseeds the CRNG from it at once.
 * Elsewhere (a namespace sandbox shares the host's clock and RNG) it does
 * nothing. Returns the SYNCED flags (PYRO_SYNCED_CLOCK | PYRO_SYNCED_RNG
 * for what worked); failures are logged, never fatal. */
uint32_t vmsync_apply(const struct pyro_sync *s, bool vm);

#endif
