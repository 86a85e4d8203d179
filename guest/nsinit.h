/* pyro-agent: building the sandbox's root in init mode. */
#ifndef PYRO_NSINIT_H
#define PYRO_NSINIT_H

#include <stddef.h>

/* The layout bubblewrap prepares for us (docs/protocol.md, "init mode"). */
#define NSINIT_LOWER "/.pyro/lower"
#define NSINIT_RW "/.pyro/rw"
#define NSINIT_ROOT "/.pyro/root"

/* Mounts the overlay root and its /proc, /dev, /dev/pts, /dev/shm, /run,
 * /sys, creates /workspace and /tmp, sets the hostname (when not NULL) and
 * pivots into the new root. Returns 0, or -1 with a one-line message in err
 * (errno text included). */
int nsinit_setup(const char *hostname, char *err, size_t errlen);

#endif
