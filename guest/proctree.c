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

const char *proc_stat_fields(pid_t pid, char *buf, size_t cap) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(open(path, O_RDONLY | O_CLOEXEC));
  if (fd < 0)
    return NULL;
  ssize_t n = TEMP_FAILURE_RETRY(read(fd, buf, cap - 1));
  if (n <= 0)
    return NULL;
  buf[n] = '\0';
  char *close_paren = strrchr(buf, ')');
  return close_paren != NULL && close_paren[1] == ' ' && close_paren[2] != '\0' ? close_paren + 2 : NULL;
}

pid_t proc_parent_of(pid_t pid) {
  char buf[1024];
  const char *fields = proc_stat_fields(pid, buf, sizeof buf);
  int ppid;
  if (fields == NULL || sscanf(fields, "%*c %d", &ppid) != 1)
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
    pid_t pid = (pid_t)strtol(de->d_name, NULL, 10);
    if (pid <= 0 || proc_parent_of(pid) != self)
      continue;
    if (keep != NULL && keep(pid, ctx))
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
