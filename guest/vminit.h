/* pyro-agent as /init of a VM (the qemu and firecracker drivers).
 *
 * The kernel runs the initramfs's /init (this binary) as PID 1 with no
 * arguments and the console on fds 0-2. It mounts /dev, /proc and /sys,
 * loads the modules of /modules/order, reads its settings from the kernel
 * command line (vmcfg.h), mounts the read-only root disk under a writable
 * layer (a disk that keeps a task's workspace across boots, or RAM), builds
 * the same view of it as the namespace driver's init mode (nsinit.c),
 * switches root into it and serves the protocol on a virtio-serial port or
 * a vsock listener. Every failure is one console line ("pyro-agent: ...")
 * and a power-off, never a panic loop or a hang. SHUTDOWN kills
 * everything, makes the data disk clean and powers off.
 * docs/protocol.md, "VM boot".
 */
#ifndef PYRO_VMINIT_H
#define PYRO_VMINIT_H

#include "util.h"

/* Where the initramfs's files are; the agent binary is /init. */
#define VMINIT_SELF "/init"
#define VMINIT_MODULES "/modules"

PYRO_NORETURN void vminit_main(void);

#endif
