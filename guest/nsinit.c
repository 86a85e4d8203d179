/* pyro-agent: building the sandbox's root in init mode (see nsinit.h).
 *
 * We run as uid 0 with every capability of a fresh user namespace that also
 * owns new mount, pid, net, ipc and uts namespaces (bubblewrap made them).
 * Each step below is one mount or file operation; the first that fails
 * ends setup with a message naming it, and the host shows that message.
 */
#define _GNU_SOURCE
#include "nsinit.h"

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "util.h"

struct ctx {
  char *err;
  size_t errlen;
};

/* Records "what: strerror(errno)" and returns -1. */
PYRO_PRINTF(2, 3) static int fail(struct ctx *c, const char *fmt, ...) {
  int errsv = errno;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(c->err, c->errlen, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < c->errlen)
    snprintf(c->err + n, c->errlen - (size_t)n, ": %s", strerror(errsv));
  errno = errsv;
  return -1;
}

static int ensure_dir(struct ctx *c, const char *path, mode_t mode) {
  if (mkdir(path, mode) < 0 && errno != EEXIST)
    return fail(c, "mkdir %s", path);
  return 0;
}

static int mount_at(struct ctx *c, const char *src, const char *target, const char *type,
                    unsigned long flags, const char *data) {
  if (mount(src, target, type, flags, data) < 0)
    return fail(c, "mount %s on %s",
                type != NULL ? type : (src != NULL ? src : "(remount)"), target);
  return 0;
}

/* An empty file to bind a device node onto. */
static int touch(struct ctx *c, const char *path) {
  int fd = (int)TEMP_FAILURE_RETRY(open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644));
  if (fd < 0)
    return fail(c, "create %s", path);
  (void)close(fd);
  return 0;
}

/* src's bytes into a new file at path, made here (O_EXCL, no symlink followed). */
static int copy_bytes(struct ctx *c, const char *src, const char *path) {
  int in = (int)TEMP_FAILURE_RETRY(open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (in < 0)
    return fail(c, "open %s", src);
  int out = (int)TEMP_FAILURE_RETRY(
      open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0555));
  if (out < 0) {
    (void)close(in);
    return fail(c, "create %s", path);
  }
  char buf[65536];
  int rc = -1;
  for (;;) {
    ssize_t n = TEMP_FAILURE_RETRY(read(in, buf, sizeof buf));
    if (n < 0) {
      fail(c, "read %s", src);
      break;
    }
    if (n == 0) {
      rc = 0;
      break;
    }
    if (write_all(out, buf, (size_t)n) < 0) {
      fail(c, "write %s", path);
      break;
    }
  }
  (void)close(in);
  if (close(out) < 0 && rc == 0)
    return fail(c, "write %s", path);
  return rc;
}

/* A copy of src at path (made here, never an existing name): the agent binary as a file of the
 * sandbox's own /run, so no host path reaches the sandbox (a bind mount's source path shows in its
 * /proc/self/mountinfo). */
static int copy_file(struct ctx *c, const char *src, const char *path) {
  /* Init caps its own writes for its log (main.c): lifted for this copy, which is larger. */
  struct rlimit fsize;
  bool capped = getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != fsize.rlim_max;
  if (capped) {
    struct rlimit open_ended = {fsize.rlim_max, fsize.rlim_max};
    (void)setrlimit(RLIMIT_FSIZE, &open_ended);
  }
  int rc = copy_bytes(c, src, path);
  if (capped)
    (void)setrlimit(RLIMIT_FSIZE, &fsize);
  return rc;
}

/* out = a + b; a path that does not fit is an error, never a cut path. */
static int pjoin(struct ctx *c, char *out, size_t n, const char *a, const char *b) {
  int len = snprintf(out, n, "%s%s", a, b);
  if (len < 0 || (size_t)len >= n) {
    errno = ENAMETOOLONG;
    return fail(c, "path %s%s", a, b);
  }
  return 0;
}

/* A tmpfs's size bounds its pages, not its inodes: by default it takes
 * half the host's RAM pages' worth of them, and each empty file or
 * directory costs about a kilobyte of kernel memory that no size and (with
 * no memory cgroup) no limit counts. So a 1 MiB /dev could hold millions
 * of empty files, gigabytes of the host's memory that outlive every exec.
 * nr_inodes bounds them: one per 4 KiB of the size (what a small file
 * takes anyway), at least 1024. */
#define DEV_INODES 1024
/* Every devpts instance but the host's first takes its ptys from one
 * host-wide count (kernel.pty.max less kernel.pty.reserve: 3072 by
 * default), so without a maximum of its own one sandbox holding 3071
 * ptys (an open of /dev/ptmx each) left every other sandbox's shells, and
 * every container on the host, without a terminal. 64 is twice the kept
 * shells a sandbox may have (PYRO_MAX_KEPT), the rest for commands that
 * make ptys of their own (script, expect, test suites). */
#define SANDBOX_PTYS 64
#define STR_(x) #x
#define STR(x) STR_(x)
static void sized_opts(char *buf, size_t len, const char *mode, unsigned mib) {
  unsigned long inodes = (unsigned long)mib * 256;
  if (inodes < 1024)
    inodes = 1024;
  snprintf(buf, len, "mode=%s,size=%um,nr_inodes=%lu", mode, mib, inodes);
}

static int setup_dev(struct ctx *c, const char *root, unsigned shm_mib) {
  static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
  static const char *const links[][2] = {
      {"/proc/self/fd", "fd"},         {"/proc/self/fd/0", "stdin"},
      {"/proc/self/fd/1", "stdout"},   {"/proc/self/fd/2", "stderr"},
      {"pts/ptmx", "ptmx"},
  };
  char src[64], dst[PATH_MAX], dev[PATH_MAX], name[64];

  if (pjoin(c, dev, sizeof dev, root, "/dev") < 0)
    return -1;
  /* nodev: the nodes bound below are mounts of their own and work; a node
   * a command makes here does not (in a VM, CAP_MKNOD is real: it could
   * otherwise reach the disks or the console, which is the host's log). */
  if (ensure_dir(c, dev, 0755) < 0 ||
      mount_at(c, "tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV,
               "mode=0755,size=1m,nr_inodes=" STR(DEV_INODES)) < 0)
    return -1;
  for (size_t i = 0; i < N_ELEMENTS(nodes); i++) {
    snprintf(src, sizeof src, "/dev/%s", nodes[i]);
    snprintf(name, sizeof name, "/%s", nodes[i]);
    if (pjoin(c, dst, sizeof dst, dev, name) < 0)
      return -1;
    if (touch(c, dst) < 0 || mount_at(c, src, dst, NULL, MS_BIND, NULL) < 0)
      return -1;
  }
  for (size_t i = 0; i < N_ELEMENTS(links); i++) {
    snprintf(name, sizeof name, "/%s", links[i][1]);
    if (pjoin(c, dst, sizeof dst, dev, name) < 0)
      return -1;
    if (symlink(links[i][0], dst) < 0)
      return fail(c, "symlink %s", dst);
  }
  if (pjoin(c, dst, sizeof dst, dev, "/pts") < 0)
    return -1;
  if (ensure_dir(c, dst, 0755) < 0 ||
      mount_at(c, "devpts", dst, "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620,max=" STR(SANDBOX_PTYS)) < 0)
    return -1;
  /* Without a size, a tmpfs may take half the host's RAM, whatever the
   * sandbox's memory limit (and with no cgroup nothing else stops it). */
  char shm_opts[96] = "mode=1777";
  if (shm_mib > 0)
    sized_opts(shm_opts, sizeof shm_opts, "1777", shm_mib);
  if (pjoin(c, dst, sizeof dst, dev, "/shm") < 0)
    return -1;
  if (ensure_dir(c, dst, 01777) < 0 ||
      mount_at(c, "tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, shm_opts) < 0)
    return -1;
  return 0;
}

static int pivot_into_root(struct ctx *c) {
  if (chdir(NSINIT_ROOT) < 0)
    return fail(c, "chdir %s", NSINIT_ROOT);
  /* pivot_root(".", "."): the old root ends up stacked under the new one
   * and is detached right away, so nothing of bubblewrap's staging tree
   * (the lower dir, the agent binary) stays reachable. */
  if (syscall(SYS_pivot_root, ".", ".") < 0)
    return fail(c, "pivot_root");
  if (umount2(".", MNT_DETACH) < 0)
    return fail(c, "detach the old root");
  if (chdir("/") < 0)
    return fail(c, "chdir /");
  return 0;
}

/* Read-only bind of a path onto itself (a directory or file that exists). */
static int bind_readonly(struct ctx *c, const char *path) {
  const unsigned long fixed = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  if (mount_at(c, path, path, NULL, MS_BIND | MS_REC, NULL) < 0 ||
      mount_at(c, NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | fixed, NULL) < 0)
    return -1;
  return 0;
}

/* Hides a path: an empty read-only tmpfs over a directory, /dev/null over a
 * file. A path the kernel does not have is fine. */
static int mask_path(struct ctx *c, const char *path) {
  struct stat st;
  if (lstat(path, &st) < 0)
    return errno == ENOENT ? 0 : fail(c, "stat %s", path);
  if (S_ISDIR(st.st_mode))
    return mount_at(c, "tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    "mode=0555");
  return mount_at(c, "/dev/null", path, NULL, MS_BIND, NULL);
}

/* The host-wide parts of /proc and /sys (the lists container runtimes
 * use): global sysctls, the sysrq trigger, IRQ and bus settings are
 * read-only; kernel memory, keys, timers and firmware are hidden. */
static const char *const proc_readonly[] = {"sys", "sysrq-trigger", "irq", "bus", "fs"};
static const char *const proc_masked[] = {"kcore",         "keys",        "timer_list",
                                          "sched_debug",   "latency_stats", "timer_stats",
                                          "acpi",          "scsi",        "asound",
                                          "kallsyms",      "kpagecount",  "kpageflags",
                                          "kpagecgroup",   "vmallocinfo"};
static const char *const sys_masked[] = {"firmware", "kernel/debug", "kernel/security",
                                         "devices/virtual/powercap", "fs/cgroup", "fs/bpf"};

static int mask_proc(struct ctx *c, const char *proc) {
  char path[128];
  for (size_t i = 0; i < N_ELEMENTS(proc_readonly); i++) {
    snprintf(path, sizeof path, "%s/%s", proc, proc_readonly[i]);
    if (access(path, F_OK) == 0 && bind_readonly(c, path) < 0)
      return -1;
  }
  for (size_t i = 0; i < N_ELEMENTS(proc_masked); i++) {
    snprintf(path, sizeof path, "%s/%s", proc, proc_masked[i]);
    if (mask_path(c, path) < 0)
      return -1;
  }
  return 0;
}

int nsinit_exec_view(char *err, size_t errlen) {
  struct ctx cx = {err, errlen};
  struct ctx *c = &cx;
  if (unshare(CLONE_NEWNS) < 0)
    return fail(c, "unshare the mount namespace");
  if (mount_at(c, "none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return -1;
  /* Over the agent's /proc (which shows the whole sandbox and stays
   * unmasked for the agent alone). The command cannot unmount it: it holds
   * no CAP_SYS_ADMIN and the filter refuses umount. */
  if (mount_at(c, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
    return -1;
  return mask_proc(c, "/proc");
}

/* Commands hold no CAP_NET_RAW (guest/supervisor.c says why), so ping
 * needs ICMP datagram sockets, which the kernel opens only for the groups
 * of net.ipv4.ping_group_range (none by default). It is a setting of the
 * sandbox's own network namespace (/proc/sys/net is the opener's), read
 * before /proc/sys is made read-only for commands. Every group where all
 * are mapped (a VM), else the sandbox's root (a user namespace maps one);
 * best effort: without it, ping alone fails. */
static void allow_ping(const char *root) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/proc/sys/net/ipv4/ping_group_range", root) >= (int)sizeof path)
    return;
  static const char *const ranges[] = {"0 2147483647", "0 0"};
  for (size_t i = 0; i < N_ELEMENTS(ranges); i++) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
      return;
    bool ok = write_all(fd, ranges[i], strlen(ranges[i])) == 0;
    close(fd);
    if (ok)
      return;
  }
}

/* inotify instances and watches, and fanotify groups and marks, are
 * counted per uid along the chain of user namespaces, up to the host's
 * limits for the sandbox's uid outside: the running user's own when pyro
 * is not root (a sandbox holding all 128 inotify instances left that
 * user's editor, `tail -f` and systemd without one), the sandbox uid's,
 * shared by every sandbox, as root. In the sandbox's own user namespace
 * (whose root holds CAP_SYS_RESOURCE now; commands never do, and
 * /proc/sys is read-only for them) each count gets a quarter of the
 * host's: /proc/sys/fs/... shows the host's (the initial namespace's)
 * value, /proc/sys/user/... is this namespace's. In a VM both name the
 * guest kernel's own count: the same semantics, nothing of the host's.
 * Best effort, like allow_ping: an older kernel without one of them keeps
 * what it has. */
static void share_user_counts(const char *root) {
  static const char *const counts[][2] = {
      {"fs/inotify/max_user_instances", "user/max_inotify_instances"},
      {"fs/inotify/max_user_watches", "user/max_inotify_watches"},
      {"fs/fanotify/max_user_groups", "user/max_fanotify_groups"},
      {"fs/fanotify/max_user_marks", "user/max_fanotify_marks"},
  };
  for (size_t i = 0; i < N_ELEMENTS(counts); i++) {
    char path[PATH_MAX], buf[32];
    if (snprintf(path, sizeof path, "%s/proc/sys/%s", root, counts[i][0]) >= (int)sizeof path)
      return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
      continue;
    buf[n] = 0;
    char *end;
    long host = strtol(buf, &end, 10);
    if (end == buf || host <= 0)
      continue;
    long share = host / 4 > 0 ? host / 4 : 1;
    if (snprintf(path, sizeof path, "%s/proc/sys/%s", root, counts[i][1]) >= (int)sizeof path)
      return;
    int n2 = snprintf(buf, sizeof buf, "%ld", share);
    if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
      continue;
    (void)write_all(fd, buf, (size_t)n2);
    close(fd);
  }
}

/* System V shared memory is a second way to the same pages as /dev/shm:
 * its segments live in a tmpfs of the kernel's own that no size bounds,
 * outlive the process that made them (for as long as the sandbox's ipc
 * namespace lives) and are freed by no OOM kill. With no memory cgroup, a
 * command kept 2.9 GiB of them past its own end while /dev/shm was sized
 * 512 MiB. kernel.shmall and shmmax are settings of the sandbox's own ipc
 * namespace (the opener's), written by its root before /proc/sys turns
 * read-only for commands: the same size as /dev/shm, all segments
 * together. Fatal if they cannot be set: the limits say /dev/shm is
 * sized. */
static int size_sysv_shm(struct ctx *c, const char *root, unsigned shm_mib) {
  if (shm_mib == 0)
    return 0;
  char path[PATH_MAX], buf[32];
  const struct {
    const char *name;
    unsigned long long value;
  } limits[] = {
      {"/proc/sys/kernel/shmmax", (unsigned long long)shm_mib << 20},
      {"/proc/sys/kernel/shmall", (unsigned long long)shm_mib << (20 - 12)}, /* pages of 4 KiB */
  };
  for (size_t i = 0; i < N_ELEMENTS(limits); i++) {
    if (pjoin(c, path, sizeof path, root, limits[i].name) < 0)
      return -1;
    int n = snprintf(buf, sizeof buf, "%llu", limits[i].value);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
      return fail(c, "open %s", path);
    int rc = write_all(fd, buf, (size_t)n);
    close(fd);
    if (rc < 0)
      return fail(c, "write %s", path);
  }
  return 0;
}

/* Everything of the sandbox's view inside an overlay root that is already
 * mounted at root (see nsinit.h); shared by init mode and the VM's /init. */
static int populate(struct ctx *c, const char *root, const char *agent_src, unsigned shm_mib,
                    bool in_userns) {
  static const char *const dirs[] = {"/proc", "/sys", "/run", "/workspace", "/tmp"};
  char path[PATH_MAX];
  for (size_t i = 0; i < N_ELEMENTS(dirs); i++) {
    if (pjoin(c, path, sizeof path, root, dirs[i]) < 0 || ensure_dir(c, path, 0755) < 0)
      return -1;
  }
  if (pjoin(c, path, sizeof path, root, "/tmp") < 0)
    return -1;
  if (chmod(path, 01777) < 0)
    return fail(c, "chmod %s", path);

  /* proc in a user namespace needs a fully visible proc mounted already in
   * this mount namespace: bubblewrap's --proc provides it. */
  if (pjoin(c, path, sizeof path, root, "/proc") < 0)
    return -1;
  if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
    fail(c, "mount proc on /proc");
    size_t n = strnlen(c->err, c->errlen);
    if (in_userns)
      snprintf(c->err + n, c->errlen - n, " (bubblewrap needs --proc /proc)");
    return -1;
  }
  allow_ping(root);
  share_user_counts(root);
  if (size_sysv_shm(c, root, shm_mib) < 0)
    return -1;
  if (setup_dev(c, root, shm_mib) < 0)
    return -1;
  /* Sized like /dev/shm: an unsized tmpfs could take half the host's RAM. */
  char run_opts[96] = "mode=0755";
  if (shm_mib > 0)
    sized_opts(run_opts, sizeof run_opts, "0755", shm_mib);
  if (pjoin(c, path, sizeof path, root, "/run") < 0)
    return -1;
  if (mount_at(c, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, run_opts) < 0)
    return -1;
  /* The agent binary for `apply`, read-only (a bind of its copy onto itself: commands lack
   * CAP_SYS_ADMIN to remount it, and a mount point cannot be renamed or removed). */
  if (pjoin(c, path, sizeof path, root, NSINIT_AGENT_PATH) < 0)
    return -1;
  if (copy_file(c, agent_src, path) < 0 || mount_at(c, path, path, NULL, MS_BIND, NULL) < 0 ||
      mount_at(c, NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
               NULL) < 0)
    return -1;
  /* sysfs needs a visible sysfs too (bubblewrap --ro-bind /sys /sys); the
   * sandbox works without it. Where it mounts, host details are hidden. */
  if (pjoin(c, path, sizeof path, root, "/sys") < 0)
    return -1;
  if (mount("sysfs", path, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0) {
    for (size_t i = 0; i < N_ELEMENTS(sys_masked); i++) {
      char name[64];
      snprintf(name, sizeof name, "/sys/%s", sys_masked[i]);
      if (pjoin(c, path, sizeof path, root, name) < 0)
        return -1;
      if (mask_path(c, path) < 0)
        return -1;
    }
  }
  return 0;
}

int nsinit_populate(const char *root, const char *agent_src, unsigned shm_mib, char *err,
                    size_t errlen) {
  struct ctx cx = {err, errlen};
  umask(022);
  return populate(&cx, root, agent_src, shm_mib, false);
}

int nsinit_setup(const char *hostname, unsigned shm_mib, unsigned rw_tmpfs_mib, char *err,
                 size_t errlen) {
  struct ctx cx = {err, errlen};
  struct ctx *c = &cx;

  umask(022);
  /* A cgroup namespace rooted where the host has put us by now (bubblewrap
   * made its own before that): /proc/self/cgroup then shows "/", not the
   * host's hierarchy, and cgroup files outside ours have no name here. */
  if (unshare(CLONE_NEWCGROUP) < 0)
    return fail(c, "unshare the cgroup namespace");
  /* Nothing we mount may propagate anywhere. */
  if (mount_at(c, "none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return -1;

  /* The size is the layer's quota: the overlay reports the upper's statfs,
   * so `df /` inside shows it, and a write past it fails with ENOSPC. Its
   * pages are charged to the writer's memory cgroup where there is one. */
  if (rw_tmpfs_mib > 0) {
    char rw_opts[96];
    sized_opts(rw_opts, sizeof rw_opts, "0755", rw_tmpfs_mib);
    if (mount_at(c, "tmpfs", NSINIT_RW, "tmpfs", MS_NOSUID | MS_NODEV, rw_opts) < 0)
      return -1;
  }
  if (ensure_dir(c, NSINIT_ROOT, 0755) < 0 || ensure_dir(c, NSINIT_RW "/upper", 0755) < 0 ||
      ensure_dir(c, NSINIT_RW "/work", 0755) < 0)
    return -1;
  if (mount_at(c, "overlay", NSINIT_ROOT, "overlay", 0,
               "lowerdir=" NSINIT_LOWER ",upperdir=" NSINIT_RW "/upper,workdir=" NSINIT_RW
               "/work,userxattr") < 0)
    return -1;

  if (populate(c, NSINIT_ROOT, "/.pyro/agent", shm_mib, true) < 0)
    return -1;
  if (hostname != NULL && sethostname(hostname, strlen(hostname)) < 0)
    return fail(c, "sethostname %s", hostname);
  return pivot_into_root(c);
}
