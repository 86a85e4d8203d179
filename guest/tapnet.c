/* pyro-agent tapnet: the layer-2 plumbing of a firecracker VM's network,
 * in its jail's network namespace (see tapnet.h).
 *
 *   pyro-agent tapnet [--userns] [--tun DEV] --netns-fd N --tap NAME --owner UID --bridge NAME --attach NAME
 *   pyro-agent tapnet --netns-fd N --owner-userns-fd M -- PROGRAM ARGS...
 *
 * The second form runs PROGRAM (pasta) with fd M open on the user namespace
 * that owns the network namespace at fd N (NS_GET_USERNS). That is the one
 * pasta must join before the network namespace, and no process is in it:
 * unprivileged bubblewrap makes the jail's namespaces in one user namespace
 * and then moves its child into a nested one (so that it is not root
 * there), whose /proc/PID/ns/user does not own the jail's network.
 *
 * Run on the host by pyro (root, or the user whose jail it is) once pasta
 * has attached to the jail's namespace and made its own tap (--attach).
 * Firecracker opens a TAP device by name; pasta is a user-mode stack behind
 * a tap of its own; this joins the two with a bridge, in the jail's network
 * namespace only, so everything made here goes with that namespace.
 * Steps, each fatal on failure (exit 125 and one line on stderr, which the
 * host shows):
 *   1. with --userns (pyro unprivileged): join the user namespace that owns
 *      the jail's network namespace (bubblewrap's, whose owner we are), for
 *      CAP_NET_ADMIN over it (as root we have it already, and stay in the
 *      host's user namespace);
 *   2. join the jail's network namespace (fds pyro opened, not pids that a
 *      dead jail's successor could take), refusing our own: this must never
 *      plumb the host's network;
 *   3. IPv6 off in that namespace (its own sysctls, default and all), so
 *      the namespace itself sends no frame (router solicitation, MLD, DAD)
 *      that pasta could take for the guest's; it gets no IPv4 address either;
 *   4. the TAP (IFF_TUN_EXCL: never a device that is already there),
 *      owned by UID (TUNSETOWNER) and persistent (TUNSETPERSIST), so the VM's
 *      uid opens it without CAP_NET_ADMIN once we close it;
 *   5. the bridge, with the TAP and pasta's tap as its ports (STP off, the
 *      bridge's default: no frame of its own), then all three up.
 */
#define _GNU_SOURCE
#include "tapnet.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/if_tun.h>
#include <linux/nsfs.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "util.h"

PYRO_NORETURN static void tapnet_die(const char *what, const char *arg) {
  die_step("tapnet", what, arg);
}

/* An ifreq naming `name`, the rest zero. */
static struct ifreq ifreq_named(const char *name) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
  return ifr;
}

static int parse_num(const char *s, const char *what) {
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v <= 0 || v >= 0x7fffffffL) {
    errno = 0;
    tapnet_die(what, s);
  }
  return (int)v;
}

/* An interface name of ours: 1 to IFNAMSIZ-1 of [a-z0-9]. */
static const char *parse_ifname(const char *s) {
  size_t n = strlen(s);
  bool ok = n > 0 && n < IFNAMSIZ;
  for (size_t i = 0; ok && i < n; i++)
    ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9');
  if (!ok) {
    errno = 0;
    tapnet_die("an interface name is 1 to 15 of [a-z0-9], got", s);
  }
  return s;
}

static void join_ns(int fd, int type, const char *what) {
  struct stat st;
  if (fstat(fd, &st) != 0)
    tapnet_die("no namespace fd for", what);
  if (setns(fd, type) != 0)
    tapnet_die("join the jail's", what);
  (void)close(fd);
}

/* One sysctl of the current network namespace: /proc/sys/net is looked up in the opener's. */
static void write_sysctl(const char *path, const char *value, bool missing_ok) {
  int fd = (int)TEMP_FAILURE_RETRY(open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd < 0) {
    /* A kernel without IPv6 has no such file, and no IPv6 frame to send. */
    if (errno == ENOENT && missing_ok)
      return;
    tapnet_die("open", path);
  }
  size_t n = strlen(value);
  if (write(fd, value, n) != (ssize_t)n)
    tapnet_die("write", path);
  (void)close(fd);
}

static void ipv6_off(const char *dev, bool missing_ok) {
  char path[96];
  snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", dev);
  write_sysctl(path, "1", missing_ok);
}

static void make_tap(const char *tun, const char *name, int owner) {
  int fd = (int)TEMP_FAILURE_RETRY(open(tun, O_RDWR | O_CLOEXEC | O_NOCTTY));
  if (fd < 0)
    tapnet_die("open", tun);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 10 || minor(st.st_rdev) != 200) {
    errno = 0;
    tapnet_die("not the tun device (char 10:200):", tun);
  }
  struct ifreq ifr = ifreq_named(name);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL;
  if (ioctl(fd, TUNSETIFF, &ifr) != 0)
    tapnet_die("create the TAP device", name);
  if (ioctl(fd, TUNSETOWNER, (unsigned long)owner) != 0)
    tapnet_die("give the TAP device to its VM's uid:", name);
  if (ioctl(fd, TUNSETPERSIST, 1UL) != 0)
    tapnet_die("make the TAP device persistent:", name);
  (void)close(fd);
}

static int if_index(int sock, const char *name) {
  struct ifreq ifr = ifreq_named(name);
  if (ioctl(sock, SIOCGIFINDEX, &ifr) != 0)
    tapnet_die("no interface", name);
  return ifr.ifr_ifindex;
}

static void add_port(int sock, const char *bridge, const char *port) {
  struct ifreq ifr = ifreq_named(bridge);
  ifr.ifr_ifindex = if_index(sock, port);
  if (ioctl(sock, SIOCBRADDIF, &ifr) != 0)
    tapnet_die("add to the bridge:", port);
}

static void link_up(int sock, const char *name) {
  struct ifreq ifr = ifreq_named(name);
  if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
    tapnet_die("read the flags of", name);
  ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP);
  if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0)
    tapnet_die("bring up", name);
}

/* The user namespace that owns the network namespace at netns, as a new fd. */
static int owner_userns(int netns) {
  int fd = ioctl(netns, NS_GET_USERNS);
  if (fd < 0)
    tapnet_die("find the user namespace that owns the jail's network namespace", NULL);
  return fd;
}

/* Refuses the network namespace we are in (the host's): nothing here may touch the host's own network. */
static void refuse_own_netns(int netns) {
  struct stat own, target;
  if (stat("/proc/self/ns/net", &own) != 0 || fstat(netns, &target) != 0)
    tapnet_die("cannot compare the network namespaces", NULL);
  if (own.st_dev == target.st_dev && own.st_ino == target.st_ino) {
    errno = 0;
    tapnet_die("refused: --netns-fd is this process's own network namespace (the host's), not a jail's", NULL);
  }
}

int tapnet_main(int argc, char **argv) {
  int netns = -1, owner = -1, exec_userns_at = -1;
  bool userns = false;
  char **program = NULL;
  const char *tap = NULL, *bridge = NULL, *attach = NULL, *tun = "/dev/net/tun";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    errno = 0;
    if (strcmp(a, "--") == 0) {
      program = argv + i + 1;
      break;
    }
    if (strcmp(a, "--userns") == 0) {
      userns = true;
      continue;
    }
    if (!v)
      tapnet_die("a value is missing after", a);
    if (strcmp(a, "--owner-userns-fd") == 0)
      exec_userns_at = parse_num(v, "--owner-userns-fd needs an fd, got");
    else if (strcmp(a, "--netns-fd") == 0)
      netns = parse_num(v, "--netns-fd needs an fd, got");
    else if (strcmp(a, "--owner") == 0)
      owner = parse_num(v, "--owner needs a positive uid, got");
    else if (strcmp(a, "--tun") == 0)
      tun = v;
    else if (strcmp(a, "--tap") == 0)
      tap = parse_ifname(v);
    else if (strcmp(a, "--bridge") == 0)
      bridge = parse_ifname(v);
    else if (strcmp(a, "--attach") == 0)
      attach = parse_ifname(v);
    else
      tapnet_die("unknown argument", a);
    i++;
  }
  errno = 0;
  if (netns < 0)
    tapnet_die("--netns-fd is missing", NULL);
  refuse_own_netns(netns);
  if (exec_userns_at >= 0) {
    if (!program || !program[0] || tap || bridge || attach || userns)
      tapnet_die("usage: pyro-agent tapnet --netns-fd N --owner-userns-fd M -- PROGRAM ARGS...", NULL);
    int fd = owner_userns(netns);
    /* NS_GET_USERNS gives a close-on-exec fd; dup2 gives one without, and one already in place loses the flag. */
    if (fd == exec_userns_at ? fcntl(fd, F_SETFD, 0) != 0 : dup2(fd, exec_userns_at) < 0 || close(fd) != 0)
      tapnet_die("place the user namespace's fd", NULL);
    execv(program[0], program);
    tapnet_die("exec", program[0]);
  }
  if (program || owner < 0 || !tap || !bridge || !attach)
    tapnet_die("usage: pyro-agent tapnet [--userns] --netns-fd N --tap NAME --owner UID --bridge NAME --attach NAME", NULL);
  if (strcmp(tap, bridge) == 0 || strcmp(tap, attach) == 0 || strcmp(bridge, attach) == 0)
    tapnet_die("--tap, --bridge and --attach name three different interfaces", NULL);

  if (userns)
    join_ns(owner_userns(netns), CLONE_NEWUSER, "user namespace");
  join_ns(netns, CLONE_NEWNET, "network namespace");

  /* default first: the devices made next inherit it; all turns it off on the ones already there (lo, pasta's tap). */
  ipv6_off("default", true);
  ipv6_off("all", true);
  make_tap(tun, tap, owner);
  int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0)
    tapnet_die("socket", NULL);
  if (ioctl(sock, SIOCBRADDBR, bridge) != 0)
    tapnet_die("create the bridge (is the kernel's bridge module available?)", bridge);
  add_port(sock, bridge, tap);
  add_port(sock, bridge, attach);
  bool have_ipv6 = access("/proc/sys/net/ipv6/conf/all", F_OK) == 0;
  if (have_ipv6) {
    ipv6_off(tap, false);
    ipv6_off(bridge, false);
    ipv6_off(attach, false);
  }
  link_up(sock, tap);
  link_up(sock, attach);
  link_up(sock, bridge);
  (void)close(sock);
  return 0;
}
