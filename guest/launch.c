/* pyro-agent launch: starts bubblewrap as the sandbox uid when pyro runs
 * as root (see launch.h).
 *
 *   pyro-agent launch --uid N --gid N [--bind SRC]... -- BWRAP ARGS...
 *
 * Run on the host, by root, with the fds bwrap needs already in place.
 * Steps, each fatal on failure (exit 125 and one line on stderr, which the
 * host shows):
 *   1. a private mount namespace of our own (it dies with bwrap: nothing
 *      is left mounted on the host, whatever kills us);
 *   2. each SRC opened by path while we are still root (the state and
 *      cache directories are usually under /root, mode 700);
 *   3. a small tmpfs on LAUNCH_STAGE, and each opened SRC bound at
 *      LAUNCH_STAGE "/pyro" SRC, so the sandbox uid can reach it (bwrap
 *      resolves its sources by path) and bwrap's command line still names
 *      the sandbox's directory;
 *   4. supplementary groups cleared, gid and uid set (real, effective and
 *      saved), so no capability of the host's root is left;
 *   5. exec BWRAP: an ordinary unprivileged bubblewrap whose sandbox root
 *      is the sandbox uid outside.
 */
#define _GNU_SOURCE
#include "launch.h"

#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define MAX_BINDS 8

struct bind {
  const char *src;
  int fd;
};

PYRO_NORETURN static void launch_die(const char *what, const char *arg) {
  if (errno != 0)
    fprintf(stderr, "pyro-agent launch: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "",
            strerror(errno));
  else
    fprintf(stderr, "pyro-agent launch: %s%s%s\n", what, arg ? " " : "", arg ? arg : "");
  exit(125);
}

static unsigned parse_id(const char *s) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v == 0 || v >= 0xffffffffUL) {
    errno = 0;
    launch_die("--uid and --gid need an unprivileged id, got", s);
  }
  return (unsigned)v;
}

/* An absolute, normalized path: no empty, "." or ".." component. */
static bool valid_source(const char *s) {
  if (s[0] != '/' || strlen(s) > 1024)
    return false;
  for (const char *p = s; *p;) {
    const char *c = p + 1;
    const char *e = strchrnul(c, '/');
    size_t n = (size_t)(e - c);
    if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
      return false;
    p = e;
  }
  return true;
}

/* mkdir -p of dst's parents, inside the stage. */
static void make_parents(char *dst) {
  for (char *p = dst + strlen(LAUNCH_STAGE) + 1; (p = strchr(p, '/')) != NULL; p++) {
    *p = '\0';
    if (mkdir(dst, 0755) < 0 && errno != EEXIST)
      launch_die("create", dst);
    *p = '/';
  }
}

int launch_main(int argc, char **argv) {
  struct bind binds[MAX_BINDS];
  size_t nbinds = 0;
  unsigned uid = 0, gid = 0;
  int i = 1;

  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    }
    if (strcmp(argv[i], "--uid") == 0 && i + 1 < argc) {
      uid = parse_id(argv[++i]);
    } else if (strcmp(argv[i], "--gid") == 0 && i + 1 < argc) {
      gid = parse_id(argv[++i]);
    } else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc && nbinds < MAX_BINDS) {
      if (!valid_source(argv[i + 1])) {
        errno = 0;
        launch_die("--bind needs an absolute, normalized path, got", argv[i + 1]);
      }
      binds[nbinds++] = (struct bind){argv[i + 1], -1};
      i += 1;
    } else {
      errno = 0;
      launch_die("usage: pyro-agent launch --uid N --gid N [--bind SRC]... -- BWRAP ARGS...; bad option",
          argv[i]);
    }
  }
  if (uid == 0 || gid == 0 || i >= argc || argv[i][0] != '/') {
    errno = 0;
    launch_die("needs --uid, --gid and an absolute bwrap path after --", NULL);
  }
  if (geteuid() != 0) {
    errno = 0;
    launch_die("runs only as root (an unprivileged pyro starts bwrap directly)", NULL);
  }

  if (unshare(CLONE_NEWNS) < 0)
    launch_die("unshare the mount namespace", NULL);
  if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    launch_die("make the mounts private", NULL);
  for (size_t k = 0; k < nbinds; k++) {
    binds[k].fd = (int)TEMP_FAILURE_RETRY(open(binds[k].src, O_PATH | O_CLOEXEC));
    if (binds[k].fd < 0)
      launch_die("open", binds[k].src);
  }
  /* The stage hides whatever LAUNCH_STAGE holds in this namespace only;
   * sources were opened above, so one under it is still reached. */
  if (mount("tmpfs", LAUNCH_STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=256k") < 0)
    launch_die("mount a tmpfs on", LAUNCH_STAGE);
  for (size_t k = 0; k < nbinds; k++) {
    char dst[PATH_MAX], src[64];
    struct stat st;
    snprintf(dst, sizeof dst, "%s/pyro%s", LAUNCH_STAGE, binds[k].src);
    make_parents(dst);
    snprintf(src, sizeof src, "/proc/self/fd/%d", binds[k].fd);
    if (fstat(binds[k].fd, &st) < 0)
      launch_die("stat", binds[k].src);
    int made = S_ISDIR(st.st_mode) ? mkdir(dst, 0755)
                                   : (int)TEMP_FAILURE_RETRY(open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (made < 0)
      launch_die("create", dst);
    if (!S_ISDIR(st.st_mode))
      (void)close(made);
    if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
      launch_die("bind", binds[k].src);
    (void)close(binds[k].fd);
  }

  gid_t g = (gid_t)gid;
  if (setgroups(0, NULL) < 0 || setresgid(g, g, g) < 0)
    launch_die("switch to the sandbox gid", NULL);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0)
    launch_die("switch to the sandbox uid", NULL);
  if (geteuid() == 0 || getuid() == 0) {
    errno = 0;
    launch_die("still root after setresuid", NULL);
  }
  execv(argv[i], argv + i);
  launch_die("exec", argv[i]);
}
