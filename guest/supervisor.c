/* pyro-agent: the per-OPEN supervisor and the command's exec (see supervisor.h). */
#define _GNU_SOURCE
#include "supervisor.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include <linux/capability.h>
#include <sched.h>
#include <sys/syscall.h>

#include "nsinit.h"
#include "proctree.h"
#include "seccomp.h"
#include "util.h"

/* How long the supervisor keeps killing a tree before it gives up and
 * reports anyway (a process stuck in uninterruptible sleep). */
#define KILL_TREE_BUDGET_MS 10000

/* --------------------------------------------------- the command's child */

enum exec_stage {
  STAGE_SETSID = 1,
  STAGE_CTTY,
  STAGE_FDS,
  STAGE_CHDIR,
  STAGE_CAPS,
  STAGE_SECCOMP,
  STAGE_EXEC,
};

/* The capabilities a command keeps (in its user namespace): what builds,
 * package managers and test suites use (owners, modes, uid switches, low
 * ports, chroot). The rest is dropped from every set and the bounding set,
 * so no exec can regain it; notably CAP_SYS_ADMIN (mounts, namespaces),
 * CAP_SYS_PTRACE (would override the agent's non-dumpable state),
 * CAP_NET_ADMIN, CAP_DAC_READ_SEARCH (file handles), CAP_SYS_RESOURCE,
 * CAP_SYS_NICE, CAP_SYS_TIME, CAP_SYSLOG, CAP_BPF, CAP_PERFMON,
 * CAP_CHECKPOINT_RESTORE. The list is the default set of container runtimes
 * (docs/security.md) less CAP_NET_RAW: a packet socket (or a raw one with
 * IP_HDRINCL) writes frames whose destination is 127.0.0.1 or 0.0.0.0
 * straight to pasta or passt, which connect to that address on the host, so
 * with network on a command reached the host's loopback services. ping uses
 * ICMP datagram sockets instead (ping_group_range, set by nsinit). */
static const int kept_caps[] = {
    CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_FOWNER,     CAP_FSETID,      CAP_KILL,
    CAP_SETGID, CAP_SETUID,       CAP_SETPCAP,    CAP_NET_BIND_SERVICE,
    CAP_SYS_CHROOT,               CAP_MKNOD,      CAP_AUDIT_WRITE, CAP_SETFCAP,
};

static bool cap_kept(int cap) {
  for (size_t i = 0; i < N_ELEMENTS(kept_caps); i++)
    if (kept_caps[i] == cap)
      return true;
  return false;
}

/* Drops every capability not in kept_caps from the bounding, ambient,
 * inheritable, permitted and effective sets. */
static int drop_capabilities(void) {
  for (int cap = 0; cap <= 63; cap++) {
    if (cap_kept(cap))
      continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL)
        break; /* past the kernel's last capability */
      return -1;
    }
  }
  (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  for (size_t i = 0; i < N_ELEMENTS(kept_caps); i++) {
    int cap = kept_caps[i];
    data[cap / 32].effective |= 1U << (cap % 32);
  }
  for (int i = 0; i < 2; i++) {
    /* Only what we hold can stay: capset refuses to add. */
    data[i].permitted = data[i].effective;
    data[i].inheritable = 0;
  }
  struct __user_cap_data_struct cur[2];
  if (syscall(SYS_capget, &hdr, cur) < 0)
    return -1;
  for (int i = 0; i < 2; i++) {
    data[i].effective &= cur[i].permitted;
    data[i].permitted &= cur[i].permitted;
  }
  return (int)syscall(SYS_capset, &hdr, data);
}

struct exec_report {
  int32_t stage;
  int32_t err;
};

PYRO_NORETURN static void exec_fail(int report_fd, enum exec_stage stage) {
  struct exec_report r = {(int32_t)stage, errno};
  (void)write_all(report_fd, &r, sizeof r);
  _exit(127);
}

/* execve of a file that is not an executable format: run it with /bin/sh,
 * as execvp does. */
static void exec_as_script(char *file, char *const argv[], char *const envp[]) {
  static char sh[] = "/bin/sh";
  size_t argc = 0;
  while (argv[argc] != NULL)
    argc++;
  char **sh_argv = calloc(argc + 2, sizeof(char *));
  if (sh_argv == NULL)
    return;
  sh_argv[0] = sh;
  sh_argv[1] = file;
  for (size_t i = 1; i < argc; i++)
    sh_argv[i + 1] = argv[i];
  execve(sh, sh_argv, envp);
  free(sh_argv);
  errno = ENOEXEC;
}

/* execvp semantics with an explicit PATH (the one from the command's env,
 * or the default) and the command's exact environment. Returns only on
 * failure, with errno set like execvp would. */
static void exec_search(const struct pyro_cmd *cmd) {
  char *file = cmd->argv[0];
  if (file[0] == '\0') {
    errno = ENOENT;
    return;
  }
  if (strchr(file, '/') != NULL) {
    execve(file, cmd->argv, cmd->envp);
    if (errno == ENOEXEC)
      exec_as_script(file, cmd->argv, cmd->envp);
    return;
  }
  bool saw_eacces = false;
  size_t flen = strlen(file);
  const char *p = cmd->path;
  for (;;) {
    const char *end = strchrnul(p, ':');
    size_t dlen = (size_t)(end - p);
    char buf[PATH_MAX];
    if (dlen == 0) {
      buf[0] = '.';
      dlen = 1;
    } else if (dlen < sizeof buf) {
      memcpy(buf, p, dlen);
    }
    if (dlen + 1 + flen + 1 <= sizeof buf) {
      buf[dlen] = '/';
      memcpy(buf + dlen + 1, file, flen + 1);
      execve(buf, cmd->argv, cmd->envp);
      switch (errno) {
      case ENOEXEC:
        exec_as_script(buf, cmd->argv, cmd->envp);
        return;
      case EACCES:
        saw_eacces = true;
        break;
      case ENOENT:
      case ENOTDIR:
      case ENODEV:
      case ESTALE:
      case ETIMEDOUT:
      case ELOOP:
      case ENAMETOOLONG:
        break;
      default:
        return;
      }
    }
    if (*end == '\0')
      break;
    p = end + 1;
  }
  errno = saw_eacces ? EACCES : ENOENT;
}

/* In the command's child (forked by the supervisor; fds 0-2 are the
 * command's stdio, report_fd is the CLOEXEC pipe to the supervisor).
 * Never returns. */
PYRO_NORETURN static void command_exec(const struct pyro_cmd *cmd, int report_fd) {
  sigset_t none;

  if (setsid() < 0)
    exec_fail(report_fd, STAGE_SETSID);
  /* A terminal's session: the PTY on 0-2 becomes the controlling terminal,
   * so the shell gets job control, ^C as SIGINT to its foreground group,
   * and SIGWINCH when the host resizes. */
  if ((cmd->flags & PYRO_OPEN_PTY) && ioctl(STDIN_FILENO, TIOCSCTTY, 0) < 0)
    exec_fail(report_fd, STAGE_CTTY);
  /* Dispositions and mask back to defaults: the agent ignores SIGPIPE and
   * blocks the signals it reads through signalfd, and both are inherited. */
  for (int sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP)
      (void)signal(sig, SIG_DFL);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* The agent's file-size cap is for its own log, not the command's files. */
  struct rlimit fsize;
  if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != fsize.rlim_max) {
    fsize.rlim_cur = fsize.rlim_max;
    (void)setrlimit(RLIMIT_FSIZE, &fsize);
  }

  /* Keep only 0-2 and the report pipe (as fd 3, CLOEXEC). */
  if (report_fd != 3) {
    if (dup3(report_fd, 3, O_CLOEXEC) < 0)
      exec_fail(report_fd, STAGE_FDS);
    report_fd = 3;
  }
  close_fds_from(4);

  if (chdir(cmd->cwd) < 0)
    exec_fail(report_fd, STAGE_CHDIR);
  if (drop_capabilities() < 0)
    exec_fail(report_fd, STAGE_CAPS);
  if (seccomp_install() < 0)
    exec_fail(report_fd, STAGE_SECCOMP);
  exec_search(cmd);
  exec_fail(report_fd, STAGE_EXEC);
}

/* ---------------------------------------------------------- supervisor */

static void sup_send(int ctl, const struct sup_msg *m) {
  if (ctl < 0)
    return;
  (void)TEMP_FAILURE_RETRY(send(ctl, m, sizeof *m, MSG_NOSIGNAL));
}

static void format_failure(const struct pyro_cmd *cmd, const struct exec_report *r,
                           struct sup_msg *m) {
  const char *what;
  const char *arg = cmd->argv[0];
  switch ((enum exec_stage)r->stage) {
  case STAGE_SETSID: what = "cannot start a session for"; break;
  case STAGE_CTTY: what = "cannot give a controlling terminal to"; break;
  case STAGE_FDS: what = "cannot set up file descriptors for"; break;
  case STAGE_CHDIR:
    what = "cannot change directory to";
    arg = cmd->cwd;
    break;
  case STAGE_CAPS: what = "cannot drop capabilities for"; break;
  case STAGE_SECCOMP: what = "cannot install the seccomp filter for"; break;
  case STAGE_EXEC: what = "cannot execute"; break;
  default: what = "cannot start"; break;
  }
  m->type = SUP_FAILED;
  m->a = (uint32_t)r->err;
  snprintf(m->text, sizeof m->text, "%s '%.160s': %s", what, arg, strerror(r->err));
}

struct main_state {
  pid_t pid;
  bool done;
  int status;
};

static void on_reap(pid_t pid, int status, void *ctx) {
  struct main_state *ms = ctx;
  if (pid == ms->pid) {
    ms->done = true;
    ms->status = status;
  }
}

/* Moves the fds the supervisor keeps to 0, 1, 2 (the command's stdio),
 * 3 (ctl, CLOEXEC) and 4 (the agent's stderr, for our own messages), and
 * closes everything else the agent had open (other connections, other
 * channels' pipes), so no fd of another channel is held here. */
static int arrange_fds(int in_r, int out_w, int err_w, int ctl, int *log_fd) {
  int want[5] = {in_r, out_w, err_w, ctl, STDERR_FILENO};
  int tmp[5];
  for (int i = 0; i < 5; i++) {
    tmp[i] = fcntl(want[i], F_DUPFD_CLOEXEC, 10);
    if (tmp[i] < 0 && i < 4)
      return -1;
  }
  for (int i = 0; i < 3; i++)
    if (dup2(tmp[i], i) < 0)
      return -1;
  if (dup3(tmp[3], 3, O_CLOEXEC) < 0)
    return -1;
  *log_fd = -1;
  if (tmp[4] >= 0 && dup3(tmp[4], 4, O_CLOEXEC) == 4)
    *log_fd = 4;
  else
    (void)close(4);
  close_fds_from(5);
  return 0;
}

/* In an isolated supervisor (PID 1 of the command's own pid namespace):
 * kills everything else in the namespace and reaps it, so nothing of the
 * command outlives its exec. Orphans re-parent to us, so when waitpid says
 * there is no child left, there is no process left. */
static int kill_namespace(int64_t deadline, reap_fn reaped, void *ctx) {
  for (;;) {
    (void)kill(-1, SIGKILL);
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      if (reaped != NULL)
        reaped(pid, status, ctx);
      continue;
    }
    if (pid < 0 && errno == ECHILD)
      return 0;
    if (pid < 0 && errno != EINTR)
      return -1;
    if (monotonic_ms() > deadline)
      return -1;
    struct timespec ts = {0, 1000000};
    (void)nanosleep(&ts, NULL);
  }
}

PYRO_NORETURN static void supervisor_main(const struct pyro_cmd *cmd, bool isolated, int in_r,
                                          int out_w, int err_w, int ctl_in) {
  struct sup_msg msg;
  struct main_state ms = {-1, false, 0};
  uint32_t flags = 0;
  bool agent_gone = false;
  int ctl = 3;
  int log_fd = -1;
  sigset_t chld;

  memset(&msg, 0, sizeof msg);
  if (arrange_fds(in_r, out_w, err_w, ctl_in, &log_fd) < 0) {
    /* ctl may not be at 3 yet: report on the original fd. */
    struct exec_report r = {STAGE_FDS, errno};
    format_failure(cmd, &r, &msg);
    sup_send(ctl_in, &msg);
    _exit(1);
  }
  if (isolated) {
    if (nsinit_exec_view(msg.text, sizeof msg.text) < 0) {
      msg.type = SUP_FAILED;
      msg.a = (uint32_t)errno;
      sup_send(ctl, &msg);
      _exit(1);
    }
  } else {
    (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  }
  (void)prctl(PR_SET_NAME, "pyro-supervisor", 0, 0, 0);

  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  cleanup_fd int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  int report[2] = {-1, -1};
  if (sfd < 0 || pipe2(report, O_CLOEXEC) < 0) {
    struct exec_report r = {STAGE_FDS, errno};
    format_failure(cmd, &r, &msg);
    sup_send(ctl, &msg);
    _exit(1);
  }

  ms.pid = fork();
  if (ms.pid < 0) {
    msg.type = SUP_FAILED;
    msg.a = (uint32_t)errno;
    snprintf(msg.text, sizeof msg.text, "cannot fork: %s", strerror(errno));
    sup_send(ctl, &msg);
    _exit(1);
  }
  if (ms.pid == 0) {
    close_fd(&report[0]);
    command_exec(cmd, report[1]);
  }

  msg.type = SUP_FORKED;
  msg.a = (uint32_t)ms.pid;
  sup_send(ctl, &msg);
  memset(&msg, 0, sizeof msg);

  /* The command's stdio belongs to the command only: once its tree is gone
   * the agent must see EOF. Our own stderr goes back to the agent's. */
  (void)close(STDIN_FILENO);
  (void)close(STDOUT_FILENO);
  if (log_fd < 0 || dup2(log_fd, STDERR_FILENO) < 0)
    (void)close(STDERR_FILENO);
  close_fd(&log_fd);
  close_fd(&report[1]);

  struct exec_report r;
  ssize_t n = TEMP_FAILURE_RETRY(read(report[0], &r, sizeof r));
  close_fd(&report[0]);
  if (n == (ssize_t)sizeof r) {
    (void)TEMP_FAILURE_RETRY(waitpid(ms.pid, NULL, 0));
    format_failure(cmd, &r, &msg);
    sup_send(ctl, &msg);
    _exit(0);
  }

  msg.type = SUP_OPENED;
  msg.a = (uint32_t)ms.pid;
  sup_send(ctl, &msg);

  int64_t deadline = cmd->timeout_ms > 0 ? monotonic_ms() + cmd->timeout_ms : -1;
  for (;;) {
    (void)reap_children(on_reap, &ms);
    if (ms.done)
      break;
    int timeout = -1;
    if (deadline >= 0) {
      int64_t left = deadline - monotonic_ms();
      if (left <= 0) {
        flags |= PYRO_EXIT_TIMED_OUT;
        break;
      }
      timeout = left > INT_MAX ? INT_MAX : (int)left;
    }
    struct pollfd pfd[2] = {{sfd, POLLIN, 0}, {ctl, POLLIN, 0}};
    int rc = poll(pfd, 2, timeout);
    if (rc < 0 && errno != EINTR) {
      warn_errno("supervisor: poll");
      break;
    }
    if (rc <= 0)
      continue;
    if (pfd[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (TEMP_FAILURE_RETRY(read(sfd, &si, sizeof si)) == (ssize_t)sizeof si) {
      }
    }
    if (pfd[1].revents != 0) {
      struct sup_req req;
      ssize_t got = TEMP_FAILURE_RETRY(recv(ctl, &req, sizeof req, MSG_DONTWAIT));
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        continue;
      if (got != (ssize_t)sizeof req) {
        agent_gone = true; /* EOF or error: the connection is gone */
        break;
      }
      if (req.op == SUP_REQ_SIGNAL) {
        (void)reap_children(on_reap, &ms);
        if (!ms.done)
          (void)kill(ms.pid, (int)req.arg);
      } else if (req.op == SUP_REQ_KILL) {
        flags |= PYRO_EXIT_KILLED;
        break;
      }
    }
  }

  /* The command leads its own session and process group: one kill of the
   * group takes down everything that stayed in it atomically (a fork bomb
   * cannot outrun it: fork fails once SIGKILL is pending). The pgid cannot
   * have been reused while any member is alive, so this never hits a
   * stranger. What left the group (setsid daemons) falls to the scan below. */
  (void)kill(-ms.pid, SIGKILL);
  if (!ms.done)
    (void)kill(ms.pid, SIGKILL);
  int64_t budget = monotonic_ms() + KILL_TREE_BUDGET_MS;
  if ((isolated ? kill_namespace(budget, on_reap, &ms) : kill_descendants(budget, on_reap, &ms)) < 0)
    warn_msg("supervisor: processes of pid %d survived SIGKILL", (int)ms.pid);
  if (agent_gone)
    _exit(0);

  memset(&msg, 0, sizeof msg);
  msg.type = SUP_EXIT;
  if (ms.done && WIFEXITED(ms.status)) {
    msg.a = PYRO_EXIT_EXITED;
    msg.b = (uint32_t)WEXITSTATUS(ms.status);
  } else if (ms.done && WIFSIGNALED(ms.status)) {
    msg.a = PYRO_EXIT_SIGNALED;
    msg.b = (uint32_t)WTERMSIG(ms.status);
  } else {
    msg.a = PYRO_EXIT_SIGNALED;
    msg.b = SIGKILL;
  }
  msg.c = flags;
  sup_send(ctl, &msg);
  _exit(0);
}

/* ------------------------------------------------------------ the agent */

int supervisor_spawn(const struct pyro_cmd *cmd, bool isolate, struct sup_handle *h) {
  cleanup_fd int out_r = -1, out_w = -1, err_r = -1, err_w = -1;
  cleanup_fd int in_r = -1, in_w = -1, ctl_a = -1, ctl_s = -1;
  int p[2];
  int sv[2];

  if (cmd->flags & PYRO_OPEN_PTY) {
    /* The agent holds the master (out_r, and a dup as in_w); the command
     * gets the peer on 0, 1 and 2, opened from the master itself
     * (TIOCGPTPEER: no path lookup in a devpts the sandbox could remount).
     * There is no separate stderr on a terminal: err_r stays -1, which
     * the agent treats as a stream already at EOF. */
    out_r = TEMP_FAILURE_RETRY(open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (out_r < 0)
      return -1;
    int unlock = 0;
    struct winsize ws = {.ws_row = PYRO_DEFAULT_ROWS, .ws_col = PYRO_DEFAULT_COLS};
    if (ioctl(out_r, TIOCSPTLCK, &unlock) < 0 || ioctl(out_r, TIOCSWINSZ, &ws) < 0)
      return -1;
    out_w = ioctl(out_r, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (out_w < 0)
      return -1;
    err_w = fcntl(out_w, F_DUPFD_CLOEXEC, 0);
    in_r = fcntl(out_w, F_DUPFD_CLOEXEC, 0);
    in_w = fcntl(out_r, F_DUPFD_CLOEXEC, 0);
    if (err_w < 0 || in_r < 0 || in_w < 0)
      return -1;
  } else {
    if (pipe2(p, O_CLOEXEC) < 0)
      return -1;
    out_r = p[0];
    out_w = p[1];
    if (pipe2(p, O_CLOEXEC) < 0)
      return -1;
    err_r = p[0];
    err_w = p[1];
    if (cmd->flags & PYRO_OPEN_STDIN_PIPE) {
      if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
      in_r = p[0];
      in_w = p[1];
    } else {
      in_r = TEMP_FAILURE_RETRY(open("/dev/null", O_RDONLY | O_CLOEXEC));
      if (in_r < 0) {
        /* No /dev/null: an empty pipe reads as EOF just the same. */
        if (pipe2(p, O_CLOEXEC) < 0)
          return -1;
        in_r = p[0];
        (void)close(p[1]);
      }
    }
  }
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -1;
  ctl_a = sv[0];
  ctl_s = sv[1];
  if (set_nonblock(out_r) < 0 || (err_r >= 0 && set_nonblock(err_r) < 0) ||
      (in_w >= 0 && set_nonblock(in_w) < 0) || set_nonblock(ctl_a) < 0)
    return -1;

  /* Isolated: the supervisor is PID 1 of a new pid namespace, so the
   * command cannot see, signal or outlive it, nor see the agent. A raw
   * clone with no stack returns twice, like fork. */
  pid_t pid = isolate ? (pid_t)syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, NULL, NULL, NULL, NULL)
                      : fork();
  if (pid < 0)
    return -1;
  if (pid == 0)
    supervisor_main(cmd, isolate, in_r, out_w, err_w, ctl_s);

  h->pid = pid;
  h->isolated = isolate;
  h->ctl_fd = steal_fd(&ctl_a);
  h->out_fd = steal_fd(&out_r);
  h->err_fd = steal_fd(&err_r);
  h->in_fd = steal_fd(&in_w);
  return 0;
}
