/* pyro-agent vmm: the host-side supervisor of one VM (vmm.c).
 *
 *   pyro-agent vmm --listen SOCK --guest unix:PATH|vsock:PATH:PORT|fd:N
 *                  --ready-fd N --console FILE [--console-max BYTES]
 *                  [--deadline UNIX_SECONDS] [--die-with-parent]
 *                  [--boot-timeout-ms N] [--prepare-snapshot] -- VMM_ARGV...
 *
 * Runs the VMM (qemu, firecracker) as its child, captures its output into
 * a capped console log, reaches the guest agent over the VM's one byte
 * stream, sends HELLO and SYNC, and serves many host connections on SOCK
 * by multiplexing them onto that stream (relay.c). Its life is the VM's.
 */
#ifndef PYRO_VMM_H
#define PYRO_VMM_H

int vmm_main(int argc, char **argv);

#endif
