/* pyro-agent: the event loop that serves the protocol.
 *
 * The loop knows nothing about where its byte streams come from: a
 * transport hands it either a listening socket (every accepted connection
 * is served, up to PYRO_MAX_CONNS at once) or one already-connected stream
 * (a socketpair end, a virtio-serial port, a vsock connection). Everything
 * per connection (framing, channels, flow control, supervisors) lives in
 * agent.c.
 */
#ifndef PYRO_AGENT_H
#define PYRO_AGENT_H

#include <stdbool.h>
#include <stdint.h>

struct agent;

struct agent_opts {
  /* PID 1 of the sandbox (init mode): SIGTERM is honoured only from outside
   * the pid namespace, and shutdown kills every process in it. */
  bool pid1;
  /* Wall-clock end of life (unix seconds), 0 for none: at that time every
   * process is killed and agent_run returns. */
  int64_t deadline;
  /* Runs as /init of a VM: SYNC sets the clock and seeds the RNG (elsewhere
   * it is answered with flags 0). */
  bool vm;
  /* An fd on the file system of a task's disk (VM mode), or -1: synced
   * (syncfs) before each EXIT is sent, so that what a command wrote is on
   * the disk when the host has its result, and a crash of the VM after
   * that loses none of it (ext4 would otherwise hold it for up to 30 s).
   * 0 or -1: none (0 is stdin, never such an fd). */
  int sync_fd;
  /* VM mode: an fd on /proc/vmstat (opened before the switch of root), or
   * -1. Its oom_kill counter is read at each OPEN and before each EXIT; a
   * change sets PYRO_EXIT_OOM, so a command the guest's OOM killer ended is
   * reported as such (the host's cgroups do not see inside a VM). The
   * counter is the guest's: a command that ran beside the one killed is
   * flagged too. 0 or -1: none. */
  int vmstat_fd;
  /* The idle serial port's backstop poll in ms (agent.c PORT_POLL_MS when 0). */
  unsigned port_poll_ms;
};

/* Sets up signals (SIGCHLD and termination through a signalfd, SIGPIPE
 * ignored) and the epoll set. NULL with errno on failure. */
struct agent *agent_new(const struct agent_opts *opts);

/* Serves every connection accepted on a listening socket (made non-blocking). */
int agent_add_listener(struct agent *a, int listen_fd);

/* Serves one connected stream (read and written on the same fd). When it
 * closes, the agent kills everything and agent_run returns 0. */
int agent_add_stream(struct agent *a, int fd);

/* Serves a virtio-serial port (already open, read-write): one host
 * connection at a time, and the host may go away and come back (a relay
 * restarting, a snapshot being taken or restored). While the port reports
 * POLLHUP (no host) it waits in the epoll set edge-triggered (and looks
 * every PORT_POLL_MS as a backstop); when the host
 * is there, a fresh connection starts (it must begin with HELLO); when it
 * hangs up, that connection is dropped like any closed one (its processes
 * killed) and the agent waits again. The connection may hold
 * PYRO_MAX_CHANNELS_VM channels: one relay multiplexes many host clients. */
int agent_add_port(struct agent *a, int fd);

/* Runs until SHUTDOWN, the deadline, a termination signal or (stream mode)
 * the end of the stream; kills every process first. Returns the exit code. */
int agent_run(struct agent *a);

#endif
