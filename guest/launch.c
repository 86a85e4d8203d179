/* pyro-agent launch: starts bubblewrap as the sandbox uid when pyro runs
 * as root (see launch.h).
 *
 *   pyro-agent launch --uid N --gid N [--parent PID] [--kvm-device DEV] [--bind SRC]... [--disk IMG SRC] -- BWRAP ARGS...
 *
 * Run on the host, by root, with the fds bwrap needs already in place.
 * Steps, each fatal on failure (exit 125 and one line on stderr, which the
 * host shows):
 *   0. with --parent: our parent must still be PID, the host process that
 *      spawned us. A starter killed between its fork and our exec leaves a
 *      child that nobody can find by its command line until it execs us
 *      (it still shows the starter's); by then the starter's cleanup may
 *      have looked and gone. Such a launcher must not attach and mount the
 *      task's disk (a second mount of a mounted ext4 image corrupts it), so
 *      it stops here;
 *   1. a private mount namespace of our own (it dies with bwrap: nothing
 *      is left mounted on the host, whatever kills us);
 *   2. each SRC opened by path while we are still root (the state and
 *      cache directories are usually under /root, mode 700);
 *   3. a small tmpfs on LAUNCH_STAGE, and each opened SRC bound at
 *      LAUNCH_STAGE "/pyro" SRC, so the sandbox uid can reach it (bwrap
 *      resolves its sources by path) and bwrap's command line still names
 *      the sandbox's directory;
 *   3b. with --disk: IMG (an ext4 image root made and owns) attached to a
 *      free loop device with LO_FLAGS_AUTOCLEAR and mounted (nosuid,
 *      nodev) at LAUNCH_STAGE "/pyro" SRC, in place of a bind of SRC: the
 *      sandbox's writable layer, whose size is then a quota the kernel
 *      keeps (ENOSPC inside). The mount lives in this namespace and its
 *      copies only, so when the sandbox's last process exits the mount
 *      goes and the loop device detaches itself: kill -9 of anything
 *      leaves neither;
 *   4. supplementary groups cleared, gid and uid set (real, effective and
 *      saved), so no capability of the host's root is left. With
 *      --kvm-device DEV (a VM under KVM): the one supplementary group kept
 *      is DEV's, and only when DEV is KVM's character device (10:232),
 *      its group is not root's and may read and write it: the sandbox uid
 *      then opens /dev/kvm as members of the kvm group do, and nothing
 *      else of that group's (Debian's kvm group owns only /dev/kvm);
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
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "util.h"

#define MAX_BINDS 8

struct bind {
  const char *src;
  int fd;
};

PYRO_NORETURN static void launch_die(const char *what, const char *arg) {
  die_step("launch", what, arg);
}

static unsigned parse_id(const char *s) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v == 0 || v >= 0xffffffffUL) {
    errno = 0;
    launch_die("--uid, --gid and --parent need a positive id, got", s);
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

/* Attaches the open image to a free loop device that detaches itself on
 * its last close (the unmount). Returns the device's fd; its path in dev.
 * Another process may take the device LOOP_CTL_GET_FREE named before we
 * configure it (EBUSY): then we ask again. */
static int attach_loop(int image, const char *name, char *dev, size_t devlen) {
  int ctl = (int)TEMP_FAILURE_RETRY(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (ctl < 0)
    launch_die("open", "/dev/loop-control");
  for (int attempt = 0; attempt < 64; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0)
      launch_die("find a free loop device for", name);
    snprintf(dev, devlen, "/dev/loop%d", n);
    int fd = (int)TEMP_FAILURE_RETRY(open(dev, O_RDWR | O_CLOEXEC));
    if (fd < 0) {
      /* A device just made may take a moment to appear in devtmpfs. */
      if (errno == ENOENT) {
        (void)usleep(2000);
        continue;
      }
      launch_die("open", dev);
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (__u32)image;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    snprintf((char *)cfg.info.lo_file_name, sizeof cfg.info.lo_file_name, "%s", name);
    if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
      (void)close(ctl);
      return fd;
    }
    int err = errno;
    (void)close(fd);
    if (err != EBUSY) {
      errno = err;
      launch_die("attach a loop device to", name);
    }
  }
  errno = EBUSY;
  launch_die("attach a loop device to", name);
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
  pid_t parent = 0;
  const char *kvm_device = NULL;
  const char *disk_image = NULL, *disk_src = NULL;
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
    } else if (strcmp(argv[i], "--kvm-device") == 0 && i + 1 < argc && kvm_device == NULL) {
      kvm_device = argv[++i];
    } else if (strcmp(argv[i], "--parent") == 0 && i + 1 < argc) {
      parent = (pid_t)parse_id(argv[++i]);
    } else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc && nbinds < MAX_BINDS) {
      if (!valid_source(argv[i + 1])) {
        errno = 0;
        launch_die("--bind needs an absolute, normalized path, got", argv[i + 1]);
      }
      binds[nbinds++] = (struct bind){argv[i + 1], -1};
      i += 1;
    } else if (strcmp(argv[i], "--disk") == 0 && i + 2 < argc && disk_image == NULL) {
      if (!valid_source(argv[i + 1]) || !valid_source(argv[i + 2])) {
        errno = 0;
        launch_die("--disk needs two absolute, normalized paths, got", argv[i + 1]);
      }
      disk_image = argv[i + 1];
      disk_src = argv[i + 2];
      i += 2;
    } else {
      errno = 0;
      launch_die("usage: pyro-agent launch --uid N --gid N [--parent PID] [--kvm-device DEV] [--bind SRC]... [--disk IMG SRC] -- BWRAP ARGS...; bad option",
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

  if (parent > 0 && getppid() != parent) {
    errno = 0;
    launch_die("the process that started the sandbox is gone; nothing was started", NULL);
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
  /* The image must be root's own regular file: the sandbox uid can change
   * its directory's content only through the mounted filesystem, never the
   * image itself, and a symlink planted in its place is not followed. */
  int image = -1;
  if (disk_image != NULL) {
    struct stat ist;
    image = (int)TEMP_FAILURE_RETRY(open(disk_image, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY));
    if (image < 0)
      launch_die("open", disk_image);
    if (fstat(image, &ist) < 0)
      launch_die("stat", disk_image);
    if (!S_ISREG(ist.st_mode) || ist.st_uid != 0 || (ist.st_mode & 022) != 0) {
      errno = 0;
      launch_die("the disk image must be a regular file of root's, writable by root alone:", disk_image);
    }
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
  if (disk_image != NULL) {
    char dst[PATH_MAX], dev[64];
    snprintf(dst, sizeof dst, "%s/pyro%s", LAUNCH_STAGE, disk_src);
    make_parents(dst);
    if (mkdir(dst, 0755) < 0)
      launch_die("create", dst);
    int loop = attach_loop(image, disk_image, dev, sizeof dev);
    if (mount(dev, dst, "ext4", MS_NOSUID | MS_NODEV, NULL) < 0)
      launch_die("mount the disk image", disk_image);
    /* The mount holds the device now; our fds would keep it past the
     * mount's end (and bwrap would inherit nothing of them anyway). */
    (void)close(loop);
    (void)close(image);
  }

  gid_t g = (gid_t)gid;
  gid_t kvm_gid = 0;
  if (kvm_device != NULL) {
    struct stat st;
    if (stat(kvm_device, &st) < 0)
      launch_die("stat the KVM device", kvm_device);
    errno = 0;
    if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 10 || minor(st.st_rdev) != 232)
      launch_die("--kvm-device is not KVM's character device (10:232):", kvm_device);
    if (st.st_gid == 0 || (st.st_mode & 0060) != 0060)
      launch_die("--kvm-device lets no group but root's read and write it:", kvm_device);
    kvm_gid = st.st_gid;
  }
  if (setgroups(kvm_gid != 0 ? 1 : 0, kvm_gid != 0 ? &kvm_gid : NULL) < 0 || setresgid(g, g, g) < 0)
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
