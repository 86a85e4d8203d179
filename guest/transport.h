/* pyro-agent: transports, i.e. where the byte streams come from.
 *
 * Kept apart from the event loop: the namespace driver uses a listening unix
 * socket; tests use one connected fd; the VM drivers add a virtio-serial or
 * vsock stream the same way (agent_add_stream on the opened port).
 */
#ifndef PYRO_TRANSPORT_H
#define PYRO_TRANSPORT_H

/* Creates a listening unix stream socket at path, mode 0600, replacing a
 * stale socket file there. Returns the fd (CLOEXEC, non-blocking), or -1
 * with errno and *step naming the call that failed. */
int transport_listen_unix(const char *path, const char **step);

#endif
