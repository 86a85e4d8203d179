/* pyro-agent netwatch: ends a sandbox's network helper (pasta) when the
 * sandbox ends, whoever is there to see it (see netwatch.h).
 *
 *   pyro-agent netwatch --target PID:START_TIME --pid-file PATH -- PROGRAM ARGS...
 *
 * pasta is handed the sandbox's namespaces as fds, and the pasta of Debian 12
 * quits by itself only when a netns bound to the filesystem is deleted: when
 * a sandbox died on its own (its init killed from outside, the OOM killer)
 * with no pyro process alive, pasta stayed, holding the namespace and its
 * host sockets, until a later pyro command's reaper found it. This process
 * is what sees the sandbox end:
 *   1. a pidfd of the sandbox's init (PID), kept only if that process's
 *      start time (field 22 of /proc/PID/stat, what pyro's notes call a
 *      process identity) is START_TIME once the pidfd is open: a pid the
 *      kernel gave to another process is refused, and a pidfd cannot be
 *      taken over by a later process with the same pid;
 *   2. it becomes a child subreaper and runs PROGRAM (pasta, or the tapnet
 *      that execs it) with fds 0-2 and the namespace fds >= 3 it was given,
 *      stdout on /dev/null; pasta configures the namespace, writes the pid
 *      of its background process to PATH and exits 0 in the foreground. Its
 *      background process is then our child (we are its nearest subreaper),
 *      so its pid stays its own until we reap it;
 *   3. a non-zero exit of PROGRAM is ours (its message is on stderr); else,
 *      once the pid in PATH is checked to be our child, "ready\n" on stdout,
 *      which is what the host waits for, then stdio on /dev/null;
 *   4. poll on both pidfds: the init's ending kills pasta (SIGKILL, to our
 *      own unreaped child: never another process), pasta's ending (pyro
 *      killed it) ends us. Either way we reap it and exit 0.
 * We hold none of the namespace fds after the fork: the namespace goes with
 * its last process and pasta's sockets, as before. pasta's own options
 * (--runas, its sandboxing) are the host's and are not touched here.
 * Failures before "ready": exit 125 with one line on stderr.
 */
#define _GNU_SOURCE
#include "netwatch.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proctree.h"
#include "util.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

PYRO_NORETURN static void netwatch_die(const char *what, const char *arg) {
  die_step("netwatch", what, arg);
}

static int pidfd_open_(pid_t pid) {
  return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Field 22 of /proc/PID/stat (the start time), or -1 for a process gone or a zombie. */
static long long start_time_of(pid_t pid) {
  char buf[1024];
  const char *p = proc_stat_fields(pid, buf, sizeof buf);
  if (!p || *p == 'Z' || *p == 'X') /* field 3, the state */
    return -1;
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p)
      p++;
  }
  if (!p)
    return -1;
  char *end = NULL;
  long long v = strtoll(p, &end, 10);
  return end == p ? -1 : v;
}

static long long parse_ll(const char *s, const char *what) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < 0) {
    errno = 0;
    netwatch_die(what, s);
  }
  return v;
}

static void to_devnull(int fd) {
  int null = (int)TEMP_FAILURE_RETRY(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (null >= 0) {
    (void)dup2(null, fd);
    (void)close(null);
  }
}

int netwatch_main(int argc, char **argv) {
  const char *target = NULL, *pid_file = NULL;
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    }
    if (i + 1 >= argc) {
      errno = 0;
      netwatch_die("a value is missing after", argv[i]);
    }
    if (strcmp(argv[i], "--target") == 0)
      target = argv[++i];
    else if (strcmp(argv[i], "--pid-file") == 0)
      pid_file = argv[++i];
    else {
      errno = 0;
      netwatch_die("unknown option", argv[i]);
    }
  }
  if (!target || !pid_file || i >= argc) {
    errno = 0;
    netwatch_die("usage: netwatch --target PID:START_TIME --pid-file PATH -- PROGRAM ARGS...", NULL);
  }
  const char *colon = strchr(target, ':');
  if (!colon) {
    errno = 0;
    netwatch_die("--target is PID:START_TIME, got", target);
  }
  char pid_text[32];
  snprintf(pid_text, sizeof pid_text, "%.*s", (int)(colon - target), target);
  pid_t init_pid = (pid_t)parse_ll(pid_text, "--target's pid is a number, got");
  long long init_start = parse_ll(colon + 1, "--target's start time is a number, got");
  if (init_pid <= 1) {
    errno = 0;
    netwatch_die("--target's pid is above 1, got", target);
  }

  /* 1. The init, by a pidfd that is provably its own (open first, then check). */
  int init_fd = pidfd_open_(init_pid);
  if (init_fd < 0) {
    if (errno == ENOSYS)
      netwatch_die("this kernel has no pidfd_open (Linux 5.3 or later is needed)", NULL);
    netwatch_die("the sandbox's init is gone:", target);
  }
  if (start_time_of(init_pid) != init_start) {
    errno = 0;
    netwatch_die("the sandbox's init is gone (its pid is another process's now):", target);
  }

  /* 2. PROGRAM, whose daemon becomes our child. */
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
    netwatch_die("become a child subreaper", NULL);
  (void)unlink(pid_file); /* what we read below is this run's */
  pid_t fg = fork();
  if (fg < 0)
    netwatch_die("fork", NULL);
  if (fg == 0) {
    to_devnull(STDOUT_FILENO);
    execvp(argv[i], argv + i);
    fprintf(stderr, "pyro-agent netwatch: exec %s: %s\n", argv[i], strerror(errno));
    _exit(127);
  }
  /* The namespace fds are PROGRAM's, not ours to keep alive. */
  for (int fd = STDERR_FILENO + 1; fd < init_fd; fd++)
    (void)close(fd);
  close_fds_from(init_fd + 1);

  int status = 0;
  if (TEMP_FAILURE_RETRY(waitpid(fg, &status, 0)) != fg)
    netwatch_die("wait for", argv[i]);
  if (!WIFEXITED(status))
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  if (WEXITSTATUS(status) != 0)
    return WEXITSTATUS(status);

  /* 3. The daemon's pid, which must be our child (else it is not the one PROGRAM left). */
  char buf[32] = {0};
  int pf = (int)TEMP_FAILURE_RETRY(open(pid_file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (pf < 0)
    netwatch_die("read the helper's pid file", pid_file);
  ssize_t n = TEMP_FAILURE_RETRY(read(pf, buf, sizeof buf - 1));
  (void)close(pf);
  if (n <= 0) {
    errno = 0;
    netwatch_die("the helper's pid file is empty:", pid_file);
  }
  buf[strcspn(buf, "\n")] = '\0';
  pid_t helper = (pid_t)parse_ll(buf, "the helper's pid file holds no pid:");
  if (proc_parent_of(helper) != getpid()) {
    errno = 0;
    netwatch_die("the helper ended as it started, or is not ours: pid", buf);
  }
  int helper_fd = pidfd_open_(helper);
  if (helper_fd < 0)
    netwatch_die("open a pidfd of the helper", buf);

  if (write_all(STDOUT_FILENO, "ready\n", 6) != 0)
    netwatch_die("report readiness", NULL);
  to_devnull(STDIN_FILENO);
  to_devnull(STDOUT_FILENO);
  to_devnull(STDERR_FILENO);

  /* 4. Whichever ends first. */
  struct pollfd fds[2] = {{.fd = init_fd, .events = POLLIN}, {.fd = helper_fd, .events = POLLIN}};
  for (;;) {
    int r = poll(fds, 2, -1);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 || (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
      (void)kill(helper, SIGKILL); /* our unreaped child: the pid cannot be another's */
    break;
  }
  /* Reap it and any other child PROGRAM left (none is expected). */
  while (TEMP_FAILURE_RETRY(waitpid(-1, NULL, 0)) > 0) {
  }
  return 0;
}
