/* pyro-agent: killing and reaping a whole process tree (see proctree.h). */
#define _GNU_SOURCE
#include "proctree.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "util.h"

int reap_children(reap_fn on_reap, void *ctx) {
  int reaped = 0;
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      reaped++;
      if (on_reap != NULL)
        on_reap(pid, status, ctx);
      continue;
    }
    if (pid == 0)
      return reaped;
    if (errno == EINTR)
      continue;
    /* ECHILD: nothing left to wait for. */
    return reaped > 0 ? reaped : -1;
  }
}

/* The parent pid of /proc/PID/stat, or -1. The command name (field 2) may
 * hold spaces and parentheses: parse after the last ')'. */
static pid_t parent_of(const char *pid_dir) {
  char path[64];
  char buf[512];
  if (snprintf(path, sizeof path, "/proc/%s/stat", pid_dir) >= (int)sizeof path)
    return -1;
  cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(open(path, O_RDONLY | O_CLOEXEC));
  if (fd < 0)
    return -1;
  ssize_t n = TEMP_FAILURE_RETRY(read(fd, buf, sizeof buf - 1));
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  char *close_paren = strrchr(buf, ')');
  if (close_paren == NULL)
    return -1;
  char state;
  int ppid;
  if (sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2)
    return -1;
  return (pid_t)ppid;
}

int kill_children_except(bool (*keep)(pid_t pid, void *ctx), void *ctx) {
  pid_t self = getpid();
  int killed = 0;
  DIR *dir = opendir("/proc");
  if (dir == NULL)
    return -1;
  struct dirent *de;
  while ((de = readdir(dir)) != NULL) {
    if (de->d_name[0] < '1' || de->d_name[0] > '9')
      continue;
    if (parent_of(de->d_name) != self)
      continue;
    pid_t pid = (pid_t)strtol(de->d_name, NULL, 10);
    if (pid <= 0 || (keep != NULL && keep(pid, ctx)))
      continue;
    if (kill(pid, SIGKILL) == 0)
      killed++;
  }
  closedir(dir);
  return killed;
}

int kill_descendants(int64_t deadline_ms, reap_fn on_reap, void *ctx) {
  for (;;) {
    if (kill_children_except(NULL, NULL) < 0) {
      /* No /proc: nothing better than waiting for what is already dying. */
    }
    int r = reap_children(on_reap, ctx);
    if (r < 0)
      return 0;
    if (monotonic_ms() >= deadline_ms)
      return -1;
    if (r == 0) {
      struct timespec ts = {0, 2 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
}
