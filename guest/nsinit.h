/* pyro-agent: building the sandbox's root in init mode. */
#ifndef PYRO_NSINIT_H
#define PYRO_NSINIT_H

#include <stddef.h>

/* The layout bubblewrap prepares for us (docs/protocol.md, "init mode"). */
#define NSINIT_LOWER "/.pyro/lower"
#define NSINIT_RW "/.pyro/rw"
#define NSINIT_ROOT "/.pyro/root"

/* Where the agent's own binary is visible inside the root (read-only), for
 * the host's `pyro-agent apply` runs: /proc/1/exe is unreadable to commands
 * (the agent is not dumpable). */
#define NSINIT_AGENT_PATH "/run/pyro-agent"

/* Mounts the overlay root and its /proc, /dev, /dev/pts, /dev/shm (at most
 * shm_mib MiB; 0 = the kernel's default), /run, /sys (with firmware and
 * other host details masked), the agent binary at NSINIT_AGENT_PATH,
 * creates /workspace and /tmp, sets the hostname (when not NULL) and pivots
 * into the new root. With rw_tmpfs_mib > 0 the writable layer is a tmpfs
 * of that many MiB mounted over NSINIT_RW first (a one-shot sandbox's: it
 * dies with the sandbox, and a full layer is ENOSPC inside); with 0 it is
 * whatever the host bound there (a directory, or a task's ext4 image).
 * Returns 0, or -1 with a one-line message in err (errno text included). */
int nsinit_setup(const char *hostname, unsigned shm_mib, unsigned rw_tmpfs_mib, char *err,
                 size_t errlen);

/* The VM's /init: the same view as nsinit_setup (proc, the small /dev
 * with its nodes bound from the current /dev, /dev/pts, sized /dev/shm and
 * /run, the agent binary agent_src bound read-only at NSINIT_AGENT_PATH,
 * read-only masked /sys, /workspace, /tmp) inside an overlay root already
 * mounted at root. No pivot: the caller switches root. */
int nsinit_populate(const char *root, const char *agent_src, unsigned shm_mib, char *err,
                    size_t errlen);

/* The view one command gets, called by its supervisor right after it
 * became PID 1 of a new pid namespace: a new mount namespace with a fresh
 * /proc of that pid namespace (only the command's own processes), in which
 * the host-wide files (/proc/sys, sysrq-trigger, kcore, keys, ...) are
 * read-only or empty. Returns 0, or -1 with a message in err. */
int nsinit_exec_view(char *err, size_t errlen);

#endif
