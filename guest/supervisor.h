/* pyro-agent: one supervisor process per OPEN.
 *
 * The agent forks a supervisor, which becomes a child subreaper, forks the
 * command in a new session and owns its whole tree. The supervisor and the
 * agent talk over a SOCK_SEQPACKET socketpair ("ctl"), one fixed-size
 * message per packet:
 *
 *   supervisor -> agent: FORKED(pid), then OPENED(pid) | FAILED(errno, text) then exit,
 *                        later EXIT(kind, value, flags) then exit;
 *   agent -> supervisor: SIGNAL(signo) | KILL.
 *
 * When the agent closes ctl (its connection went away, or the agent died),
 * the supervisor kills the tree and exits without reporting. The supervisor
 * never holds the command's output pipes, so the agent sees EOF on them as
 * soon as the last process of the tree is gone.
 */
#ifndef PYRO_SUPERVISOR_H
#define PYRO_SUPERVISOR_H

#include <stdint.h>
#include <sys/types.h>

#include "proto.h"

enum sup_msg_type {
  SUP_FORKED = 4, /* a = pid, before exec: lets the agent kill the session
                   * if the supervisor is killed before it can report */
  SUP_OPENED = 1, /* a = pid */
  SUP_FAILED = 2, /* a = errno, text = message */
  SUP_EXIT = 3,   /* a = kind, b = value, c = flags */
};

struct sup_msg {
  uint32_t type;
  uint32_t a, b, c;
  char text[240];
};

enum sup_req_type {
  SUP_REQ_SIGNAL = 1, /* arg = signo, to the main process */
  SUP_REQ_KILL = 2,   /* kill the whole tree, EXIT carries "killed" */
};

struct sup_req {
  uint32_t op;
  uint32_t arg;
};

/* The agent's ends of a new supervisor. All fds are CLOEXEC; out/err/in and
 * ctl are non-blocking. in_fd is -1 without STDIN_PIPE. */
struct sup_handle {
  pid_t pid;
  /* The supervisor is PID 1 of the command's own pid namespace: pids it
   * reports are of that namespace, and its death ends the whole tree. */
  bool isolated;
  int ctl_fd;
  int out_fd;
  int err_fd;
  int in_fd;
};

/* Forks a supervisor for cmd; with isolate, as PID 1 of a new pid and
 * mount namespace with a /proc of its own (needs CAP_SYS_ADMIN, as the
 * sandbox's PID 1 has; no silent fallback). Returns 0, or -1 with errno
 * (nothing leaks). */
int supervisor_spawn(const struct pyro_cmd *cmd, bool isolate, struct sup_handle *h);

#endif
