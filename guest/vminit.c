/* pyro-agent as /init of a VM (see vminit.h). */
#define _GNU_SOURCE
#include "vminit.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/reboot.h>
/* Before linux/vm_sockets.h: older kernel headers (Debian's arm64 cross ones) use struct sockaddr without including it. */
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>

#include "agent.h"
#include "nsinit.h"
#include "vmcfg.h"

/* Staging in the initramfs; hidden under the new root once we switch. */
#define MNT_LOWER "/mnt/lower"
#define MNT_RW "/mnt/rw"
#define MNT_ROOT "/mnt/root"
#define MNT_CGROUP "/mnt/cgroup"

/* virtio devices show up within milliseconds of their driver loading;
 * seconds mean the host did not attach the disk (or the port). */
#define DEVICE_WAIT_MS 5000
/* 1024 channels x 4 fds, plus the rest. */
#define VM_NOFILE 8192

/* ------------------------------------------------------------- ending */

/* Powers the VM off. reboot(2) does not return when it works; if it does
 * (no ACPI power-off), PID 1 exiting panics the kernel, and the host boots
 * it with panic=-1 and qemu with -no-reboot, so qemu exits either way. */
PYRO_NORETURN static void power_off(void) {
  sync();
  (void)reboot(RB_POWER_OFF);
  warn_errno("power off");
  _exit(1);
}

/* A setup step failed: one console line, then power off. */
PYRO_PRINTF(1, 2) PYRO_NORETURN static void fatal(const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  (void)vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  warn_msg("cannot start the VM: %s; powering off", line);
  power_off();
}

/* ---------------------------------------------------------- small steps */

/* The kernel opens /dev/console as fds 0-2 for init; if the initramfs has
 * no /dev/console they are closed, and the first files we open would
 * become our "stdout". Make sure they are taken. */
static void fix_stdio(void) {
  for (int fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) >= 0)
      continue;
    int n = open("/dev/console", O_RDWR | O_NOCTTY);
    if (n < 0)
      n = open("/dev/null", O_RDWR);
    if (n >= 0 && n != fd) {
      (void)dup2(n, fd);
      (void)close(n);
    }
  }
}

static void mkdir_or_die(const char *path, mode_t mode) {
  if (mkdir(path, mode) < 0 && errno != EEXIST)
    fatal("mkdir %s: %s", path, strerror(errno));
}

static void mount_or_die(const char *src, const char *target, const char *type,
                         unsigned long flags, const char *data, const char *what) {
  if (mount(src, target, type, flags, data) < 0)
    fatal("mount %s (%s on %s): %s", what, src, target, strerror(errno));
}

static void early_mounts(void) {
  mkdir_or_die("/dev", 0755);
  /* devtmpfs: the kernel makes the nodes of the disks and ports it finds. */
  if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
    fatal("mount devtmpfs on /dev: %s", strerror(errno));
  fix_stdio();
  mkdir_or_die("/proc", 0555);
  mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, "/proc");
  mkdir_or_die("/sys", 0555);
  mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, "/sys");
}

/* Reads a small file whole into buf (NUL-terminated); -1 with errno. */
static ssize_t read_small(const char *path, char *buf, size_t cap) {
  cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(open(path, O_RDONLY | O_CLOEXEC));
  if (fd < 0)
    return -1;
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = TEMP_FAILURE_RETRY(read(fd, buf + n, cap - 1 - n));
    if (r < 0)
      return -1;
    if (r == 0)
      break;
    n += (size_t)r;
  }
  buf[n] = '\0';
  if (n + 1 == cap) {
    char extra;
    if (TEMP_FAILURE_RETRY(read(fd, &extra, 1)) > 0) {
      errno = EFBIG;
      return -1;
    }
  }
  return (ssize_t)n;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* ------------------------------------------------------------- modules */

static bool valid_module_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 55) /* MODULE_NAME_LEN is 56 with its NUL */
    return false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '_' || ch == '-'))
      return false;
  }
  return true;
}

/* finit_module(2) on each /modules/<name>.ko of /modules/order (lines are
 * "<name>" or "<name>.ko"), in that
 * order (the host wrote it in dependency order), each with its parameters
 * from the kernel command line: insmod-style loading ignores them, and
 * virtio_mmio needs its device= lines from there. */
static void load_modules(const char *cmdline) {
  static char order[16384];
  if (read_small(VMINIT_MODULES "/order", order, sizeof order) < 0) {
    if (errno == ENOENT) {
      warn_msg("no " VMINIT_MODULES "/order: loading no modules");
      return;
    }
    fatal("read " VMINIT_MODULES "/order: %s", strerror(errno));
  }
  unsigned loaded = 0, present = 0;
  char *save = NULL;
  for (char *name = strtok_r(order, "\n", &save); name != NULL; name = strtok_r(NULL, "\n", &save)) {
    size_t len = strlen(name);
    if (len > 0 && name[len - 1] == '\r')
      name[--len] = '\0';
    if (len == 0)
      continue;
    /* A line names the module or its file (the host's builder writes file names). */
    if (len > 3 && strcmp(name + len - 3, ".ko") == 0)
      name[len -= 3] = '\0';
    if (!valid_module_name(name))
      fatal(VMINIT_MODULES "/order: '%.60s' is not a module name ([A-Za-z0-9_-], at most 55)", name);
    char path[96], params[1024];
    snprintf(path, sizeof path, VMINIT_MODULES "/%s.ko", name);
    if (vmcfg_module_params(cmdline, name, params, sizeof params) < 0)
      fatal("the kernel command line's parameters for module %s are over %zu bytes", name,
            sizeof params - 1);
    cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(open(path, O_RDONLY | O_CLOEXEC));
    if (fd < 0)
      fatal("open module %s: %s", path, strerror(errno));
    if (syscall(SYS_finit_module, fd, params, 0) < 0) {
      if (errno != EEXIST)
        fatal("load module %s: %s", path, strerror(errno));
      present++;
    } else {
      loaded++;
    }
    /* The initramfs lives in RAM for the VM's whole life: a loaded
     * module's file is only weight now. */
    (void)unlink(path);
  }
  warn_msg("loaded %u modules (%u were already there)", loaded, present);
}

/* ------------------------------------------------------------- devices */

/* Waits for a block device node; a disk the host did not attach never
 * appears, and that is a clear failure after DEVICE_WAIT_MS. */
static void wait_block_device(const char *path, const char *what) {
  int64_t deadline = monotonic_ms() + DEVICE_WAIT_MS;
  struct stat st;
  for (;;) {
    if (stat(path, &st) == 0) {
      if (!S_ISBLK(st.st_mode))
        fatal("%s %s is not a block device", what, path);
      return;
    }
    if (monotonic_ms() > deadline)
      fatal("%s %s did not appear within %d ms (is the disk attached, and virtio_blk in "
            VMINIT_MODULES "/order?)",
            what, path, DEVICE_WAIT_MS);
    sleep_ms(5);
  }
}

/* The /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is name. */
static void find_port(const char *name, char *dev, size_t devlen) {
  int64_t deadline = monotonic_ms() + DEVICE_WAIT_MS;
  for (;;) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (d != NULL) {
      struct dirent *e;
      while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strlen(e->d_name) > 32)
          continue;
        char path[96], got[128];
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        if (read_small(path, got, sizeof got) < 0)
          continue;
        got[strcspn(got, "\n")] = '\0';
        if (strcmp(got, name) == 0) {
          snprintf(dev, devlen, "/dev/%s", e->d_name);
          closedir(d);
          struct stat st;
          if (stat(dev, &st) == 0)
            return;
          break; /* the node is on its way */
        }
      }
      closedir(d);
    }
    if (monotonic_ms() > deadline)
      fatal("no virtio-serial port named '%s' within %d ms (is the virtserialport attached "
            "with name=%s, and virtio_console in " VMINIT_MODULES "/order?)",
            name, DEVICE_WAIT_MS, name);
    sleep_ms(5);
  }
}

/* -------------------------------------------------------------- layers */

/* The root disk read-only under a writable layer: an ext4 disk the host
 * made (upper/ and work/ created on first boot and reused after, so a
 * task's files survive a reboot) or a tmpfs. Returns an O_PATH fd of the
 * data disk's mount (-1 in RAM mode) for the clean unmount at shutdown. */
static int mount_layers(const struct vmcfg *cfg) {
  int data_fd = -1;
  mkdir_or_die("/mnt", 0755);
  mkdir_or_die(MNT_LOWER, 0755);
  mkdir_or_die(MNT_RW, 0755);
  mkdir_or_die(MNT_ROOT, 0755);
  wait_block_device(cfg->root, "the root disk (pyro.root)");
  mount_or_die(cfg->root, MNT_LOWER, "ext4", MS_RDONLY, NULL, "the root disk (must be ext4)");
  if (cfg->data[0] != '\0') {
    wait_block_device(cfg->data, "the data disk (pyro.data)");
    mount_or_die(cfg->data, MNT_RW, "ext4", 0, NULL,
                 "the data disk (must be ext4, made by the host with mkfs.ext4, and writable)");
    data_fd = open(MNT_RW, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (data_fd < 0)
      fatal("open %s: %s", MNT_RW, strerror(errno));
  } else {
    char opts[48];
    snprintf(opts, sizeof opts, "mode=0755,size=%um", cfg->data_ram_mib);
    mount_or_die("tmpfs", MNT_RW, "tmpfs", 0, opts, "the RAM layer");
  }
  mkdir_or_die(MNT_RW "/upper", 0755);
  mkdir_or_die(MNT_RW "/work", 0755);
  /* nodev: uid 0 of a VM holds a real CAP_MKNOD; a node it makes on the
   * root (or under /workspace, /tmp) must not open the disks or the
   * console, the host's log. /dev's own nodes are mounts of their own. */
  mount_or_die("overlay", MNT_ROOT, "overlay", MS_NODEV,
               "lowerdir=" MNT_LOWER ",upperdir=" MNT_RW "/upper,workdir=" MNT_RW "/work",
               "the overlay root (is overlay in " VMINIT_MODULES "/order?)");
  return data_fd;
}

/* pids.max for everything but the kernel: RLIMIT_NPROC does not bind uid 0
 * of the first user namespace (the kernel exempts INIT_USER), so the VM's
 * fork-bomb cap is a cgroup v2 group that PID 1 moves itself into; every
 * process it starts is born there. The hierarchy is mounted in the
 * initramfs, out of the commands' view. */
static void limit_pids(unsigned pids_max) {
  char v[32];
  mkdir_or_die(MNT_CGROUP, 0755);
  mount_or_die("cgroup2", MNT_CGROUP, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL,
               "the cgroup2 hierarchy (for pyro.pids_max)");
  static const struct {
    const char *path, *value;
  } steps[] = {
      {MNT_CGROUP "/cgroup.subtree_control", "+pids"},
      {MNT_CGROUP "/sandbox/pids.max", NULL},
      {MNT_CGROUP "/sandbox/cgroup.procs", "1"},
  };
  mkdir_or_die(MNT_CGROUP "/sandbox", 0755);
  snprintf(v, sizeof v, "%u", pids_max);
  for (size_t i = 0; i < N_ELEMENTS(steps); i++) {
    const char *value = steps[i].value != NULL ? steps[i].value : v;
    cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(open(steps[i].path, O_WRONLY | O_CLOEXEC));
    if (fd < 0 || write_all(fd, value, strlen(value)) < 0)
      fatal("write '%s' to %s: %s", value, steps[i].path, strerror(errno));
  }
  /* Rooted here, as in the namespace driver: /proc/self/cgroup shows "/". */
  if (unshare(CLONE_NEWCGROUP) < 0)
    fatal("unshare the cgroup namespace: %s", strerror(errno));
}

/* The loopback interface up (the kernel gives it 127.0.0.1): the namespace
 * driver's sandboxes have it too (bubblewrap brings it up). */
static void loopback_up(void) {
  cleanup_fd int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, "lo", 3);
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
    fatal("read the flags of lo: %s", strerror(errno));
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
    fatal("bring lo up: %s", strerror(errno));
}

/* The guest's end of the host's user-mode network (passt over virtio-net):
 * the address, prefix and gateway the host put on the command line, set
 * with the classic ioctls (no DHCP client: passt's defaults would copy the
 * host's own address, and nothing here guesses). The interface is the one
 * ethernet device the host attached; it appears once virtio_net binds it. */
static void find_netdev(char *name, size_t cap) {
  int64_t deadline = monotonic_ms() + DEVICE_WAIT_MS;
  for (;;) {
    DIR *d = opendir("/sys/class/net");
    if (d != NULL) {
      struct dirent *e;
      while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "lo") == 0 || strlen(e->d_name) >= cap ||
            strlen(e->d_name) >= IFNAMSIZ)
          continue;
        snprintf(name, cap, "%s", e->d_name);
        closedir(d);
        return;
      }
      closedir(d);
    }
    if (monotonic_ms() > deadline)
      fatal("no network interface appeared within %d ms (is the virtio-net device attached, and "
            "virtio_net in " VMINIT_MODULES "/order?)",
            DEVICE_WAIT_MS);
    sleep_ms(5);
  }
}

static void set_inet(struct sockaddr *sa, uint32_t be) {
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = be;
  memcpy(sa, &sin, sizeof sin);
}

static void network_up(const struct vmcfg *cfg, char *ifname, size_t cap) {
  find_netdev(ifname, cap);
  cleanup_fd int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    fatal("socket for the network setup: %s", strerror(errno));
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
  set_inet(&ifr.ifr_addr, cfg->ip);
  if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
    fatal("set the address of %s: %s", ifname, strerror(errno));
  set_inet(&ifr.ifr_netmask, htonl(~0u << (32 - cfg->prefix)));
  if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0)
    fatal("set the netmask of %s: %s", ifname, strerror(errno));
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
    fatal("read the flags of %s: %s", ifname, strerror(errno));
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
    fatal("bring %s up: %s", ifname, strerror(errno));
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  set_inet(&rt.rt_dst, 0);
  set_inet(&rt.rt_genmask, 0);
  set_inet(&rt.rt_gateway, cfg->gw);
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  rt.rt_dev = ifname;
  if (ioctl(s, SIOCADDRT, &rt) < 0)
    fatal("add the default route via the gateway on %s: %s", ifname, strerror(errno));
}

/* /etc/resolv.conf of the new root names the host's DNS forwarder (the
 * environment's copy names the build host's resolver, unreachable from
 * here). Written in the guest's own writable layer, replacing whatever
 * was there (a link included: unlink, then create exclusively). */
static void write_resolv_conf(uint32_t dns) {
  char addr[INET_ADDRSTRLEN], text[64];
  struct in_addr a = {.s_addr = dns};
  if (inet_ntop(AF_INET, &a, addr, sizeof addr) == NULL)
    fatal("format the resolver's address: %s", strerror(errno));
  int n = snprintf(text, sizeof text, "nameserver %s\n", addr);
  mkdir_or_die(MNT_ROOT "/etc", 0755);
  if (unlink(MNT_ROOT "/etc/resolv.conf") < 0 && errno != ENOENT)
    fatal("remove /etc/resolv.conf: %s", strerror(errno));
  cleanup_fd int fd = (int)TEMP_FAILURE_RETRY(
      open(MNT_ROOT "/etc/resolv.conf", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (fd < 0 || write_all(fd, text, (size_t)n) < 0)
    fatal("write /etc/resolv.conf: %s", strerror(errno));
}

/* The initramfs cannot pivot_root (its rootfs is the root of the mount
 * tree and has no parent): move the new root over / and chroot into it,
 * as switch_root does. The initramfs's files stay in RAM, unreachable; we
 * keep /init mapped (we are it) and the rest is a few modules. */
static void switch_root(void) {
  if (chdir(MNT_ROOT) < 0)
    fatal("chdir %s: %s", MNT_ROOT, strerror(errno));
  if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
    fatal("move the new root onto /: %s", strerror(errno));
  if (chroot(".") < 0 || chdir("/") < 0)
    fatal("chroot into the new root: %s", strerror(errno));
}

/* A snapshot's template (pyro.warm=1) runs what the host's first command
 * after a restore runs first, `/bin/sh -lc true` (runtime/sandbox-exec.ts
 * toArgv), once before it serves: the shell, its libraries and
 * /etc/profile are then in the guest's page cache in every restore, which
 * under TCG saves their reads through virtio-blk from each restored VM's
 * first command (measured: ~50 ms of ~170). In a session of its own,
 * bounded in time; whatever it left in its group is killed. An environment
 * without /bin/sh only loses the warm-up. */
#define WARM_TIMEOUT_MS 10000

static void warm_up(void) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t pid = fork();
  if (pid < 0) {
    warn_errno("fork the warm-up shell");
    return;
  }
  if (pid == 0) {
    /* runtime/sandbox-exec.ts BASE_ENV. */
    static char sh[] = "/bin/sh", lc[] = "-lc", cmd[] = "true";
    static char path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    static char home[] = "HOME=/root", lang[] = "LANG=C.UTF-8", term[] = "TERM=dumb";
    char *argv[] = {sh, lc, cmd, NULL};
    char *envp[] = {path, home, lang, term, NULL};
    (void)setsid();
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0)
      for (int fd = 0; fd < 3; fd++)
        (void)dup2(null, fd);
    execve(argv[0], argv, envp);
    _exit(127);
  }
  int status = 0;
  pid_t got = 0;
  for (int waited = 0; (got = waitpid(pid, &status, WNOHANG)) == 0 && waited < WARM_TIMEOUT_MS; waited += 2) {
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  (void)kill(-pid, SIGKILL);
  if (got == 0) {
    warn_msg("the warm-up shell did not end in %d ms: killed", WARM_TIMEOUT_MS);
    (void)waitpid(pid, &status, 0);
  } else if (got > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    warn_msg("the warm-up shell failed (status %d): restores start without it", status);
  } else {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    warn_msg("warmed up: /bin/sh -lc true ran in %ld ms",
             (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
  }
}

/* ------------------------------------------------------------ shutdown */

/* After every process is gone: the overlay and then the data disk
 * read-only, which commits ext4's journal and marks it clean, as an
 * unmount would (the overlay is our root, so it cannot be unmounted, and
 * it holds the disk while it exists). */
static void make_data_clean(int data_fd) {
  sync();
  if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
    warn_errno("remount the root overlay read-only");
  if (data_fd < 0)
    return;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", data_fd);
  if (mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
    warn_errno("remount the data disk read-only (it will be recovered from its journal)");
  else
    warn_msg("the data disk is clean");
  close_fd(&data_fd);
}

/* --------------------------------------------------------------- main */

void vminit_main(void) {
  static char cmdline[VMCFG_CMDLINE_MAX];
  char err[512];
  struct vmcfg cfg;

  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  umask(022);
  early_mounts();
  if (read_small("/proc/cmdline", cmdline, sizeof cmdline) < 0)
    fatal("read /proc/cmdline: %s", strerror(errno));
  if (vmcfg_parse(cmdline, &cfg, err, sizeof err) < 0)
    fatal("%s", err);
  load_modules(cmdline);

  int data_fd = mount_layers(&cfg);
  if (cfg.pids_max > 0)
    limit_pids(cfg.pids_max);
  if (nsinit_populate(MNT_ROOT, VMINIT_SELF, cfg.shm_mib, err, sizeof err) < 0)
    fatal("%s", err);
  if (cfg.hostname[0] != '\0' && sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
    fatal("sethostname %s: %s", cfg.hostname, strerror(errno));
  loopback_up();
  if (cfg.net) {
    char ifname[IFNAMSIZ];
    network_up(&cfg, ifname, sizeof ifname);
    if (cfg.dns != 0)
      write_resolv_conf(cfg.dns);
    warn_msg("network: %s up with the host's address and gateway", ifname);
  }
  /* The guest's OOM kill counter, read around every command (agent.h). */
  int vmstat_fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
  if (vmstat_fd < 0)
    warn_errno("open /proc/vmstat (OOM kills will not be reported)");

  /* The stream is opened in the initramfs's /dev and /sys, which the new
   * root does not show; the fd stays valid after the switch. */
  int stream_fd = -1;
  char port[64] = "";
  if (cfg.vsock_port == 0) {
    find_port(cfg.port, port, sizeof port);
    stream_fd = (int)TEMP_FAILURE_RETRY(open(port, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (stream_fd < 0)
      fatal("open the virtio-serial port %s: %s", port, strerror(errno));
  } else {
    stream_fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (stream_fd < 0)
      fatal("vsock socket: %s (list vsock and vmw_vsock_virtio_transport in " VMINIT_MODULES
            "/order)",
            strerror(errno));
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = cfg.vsock_port;
    if (bind(stream_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(stream_fd, 16) < 0)
      fatal("listen on vsock port %u: %s", cfg.vsock_port, strerror(errno));
  }
  switch_root();

  /* 1024 channels of 4 fds each on the serial stream. */
  struct rlimit nofile = {VM_NOFILE, VM_NOFILE};
  if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
    warn_errno("raise RLIMIT_NOFILE to %d", VM_NOFILE);

  if (cfg.warm)
    warm_up();

  /* A task's disk: every exec's writes are on it before its result leaves (agent.h). */
  int sync_fd = -1;
  if (cfg.data_ram_mib == 0 && (sync_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
    warn_errno("open / for syncfs");
  struct agent_opts opts = {.pid1 = true, .vm = true, .sync_fd = sync_fd, .vmstat_fd = vmstat_fd, .port_poll_ms = cfg.port_poll_ms};
  struct agent *agent = agent_new(&opts);
  if (agent == NULL)
    fatal("set up the event loop: %s", strerror(errno));
  if (cfg.vsock_port == 0) {
    if (agent_add_port(agent, stream_fd) < 0)
      fatal("serve %s: %s", port, strerror(errno));
    warn_msg("ready: serving on the virtio-serial port %s (%s)", cfg.port, port);
  } else {
    if (agent_add_listener(agent, stream_fd) < 0)
      fatal("serve vsock port %u: %s", cfg.vsock_port, strerror(errno));
    warn_msg("ready: serving on vsock port %u", cfg.vsock_port);
  }
  (void)agent_run(agent);
  make_data_clean(data_fd);
  warn_msg("powering off");
  power_off();
}
