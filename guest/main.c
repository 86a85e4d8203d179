/* pyro-agent: command line and the order of start-up steps.
 *
 *   pyro-agent --version
 *   pyro-agent init  --listen PATH --ready-fd N [--await-go] [--deadline UNIX_SECONDS] [--hostname NAME]
 *                    [--shm-mib N] [--pids-max N] [--rw-tmpfs-mib N]
 *   pyro-agent serve --listen PATH [--ready-fd N] [--deadline UNIX_SECONDS]
 *   pyro-agent serve --fd N [--deadline UNIX_SECONDS]
 *   pyro-agent apply --journal J --stage S --dest D --backup B --root R [--receive] [--delete] [--exclude P]...
 *   pyro-agent apply --recover --journal J
 *   pyro-agent files ls|read|commit|manifest|fetch|tar ROOT ...   (files.c)
 *   pyro-agent launch --uid N --gid N [--bind SRC]... [--disk IMG SRC] -- BWRAP ARGS...
 *   pyro-agent tapnet [--userns] [--tun DEV] --netns-fd N --tap NAME --owner UID --bridge NAME --attach NAME
 *   pyro-agent tapnet --netns-fd N --owner-userns-fd M -- PROGRAM ARGS...
 *   pyro-agent netwatch --target PID:START_TIME --pid-file PATH -- PROGRAM ARGS...
 *
 * As /init of a VM (PID 1, argv[0] "/init"): vminit.c, settings from the
 * kernel command line.
 *   pyro-agent vmm --listen SOCK --guest unix:PATH|vsock:PATH:PORT|fd:N --ready-fd N
 *                  --console FILE [...] -- VMM_ARGV...
 *
 * vmm: run on the host, the supervisor of one VM and the multiplexer of
 * many host connections onto its one agent stream (vmm.c).
 * launch: run on the host by a root pyro to start bwrap as the sandbox uid
 * (launch.c).
 * tapnet: run on the host by pyro to join a firecracker VM's TAP device to
 * pasta in the VM jail's network namespace (tapnet.c).
 * netwatch: run on the host by pyro around pasta, which it kills once the
 * sandbox's init has ended, with or without a pyro process alive (netwatch.c).
 * apply: run by the host (through the agent, as /run/pyro-agent) to move a
 * staged push into place, all or nothing (apply.c).
 * init: PID 1 of a bubblewrap sandbox. Creates the listening socket first
 * (so the host can see it appear), builds the overlay root and pivots into
 * it, then writes 'R' on the ready fd (or 'E' and a one-line message on a
 * setup failure, and exits 1) and serves.
 * serve: no mounts; serves a listening socket, or one connected stream
 * until it closes.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agent.h"
#include "apply.h"
#include "files.h"
#include "probe.h"
#include "launch.h"
#include "nsinit.h"
#include "proto.h"
#include "netwatch.h"
#include "tapnet.h"
#include "transport.h"
#include "util.h"
#include "vminit.h"
#include "vmm.h"

enum mode { MODE_INIT, MODE_SERVE };

/* The most the agent writes to files (its log on the host) in init mode. */
#define AGENT_LOG_MAX (1024 * 1024)

struct args {
  enum mode mode;
  const char *listen;
  const char *hostname;
  int ready_fd;
  int stream_fd;
  int64_t deadline;
  unsigned shm_mib;
  unsigned pids_max;
  unsigned rw_tmpfs_mib;
  bool await_go;
};

PYRO_NORETURN static void usage(const char *why) {
  if (why != NULL)
    fprintf(stderr, "pyro-agent: %s\n", why);
  fprintf(stderr,
          "usage: pyro-agent --version\n"
          "       pyro-agent init --listen PATH --ready-fd N [--await-go] [--deadline UNIX_SECONDS] "
          "[--hostname NAME] [--shm-mib N] [--pids-max N] [--rw-tmpfs-mib N]\n"
          "       pyro-agent serve --listen PATH [--ready-fd N] [--deadline UNIX_SECONDS]\n"
          "       pyro-agent serve --fd N [--deadline UNIX_SECONDS]\n"
          "       pyro-agent apply --journal J --stage S --dest D --backup B --root R [--receive] [--delete] [--exclude P]...\n"
          "       pyro-agent apply --recover --journal J\n"
          "       pyro-agent vmm --listen SOCK --guest unix:PATH|vsock:PATH:PORT|fd:N --ready-fd N "
          "--console FILE [...] -- VMM_ARGV...\n");
  exit(2);
}

static int64_t parse_int(const char *opt, const char *s, int64_t min, int64_t max) {
  return parse_int_arg(opt, s, min, max, usage);
}

static void parse_args(int argc, char **argv, struct args *a) {
  memset(a, 0, sizeof *a);
  a->ready_fd = -1;
  a->stream_fd = -1;
  if (argc < 2)
    usage(NULL);
  if (strcmp(argv[1], "--version") == 0) {
    printf("%s\n", PYRO_AGENT_VERSION);
    exit(0);
  }
  if (strcmp(argv[1], "init") == 0)
    a->mode = MODE_INIT;
  else if (strcmp(argv[1], "serve") == 0)
    a->mode = MODE_SERVE;
  else
    usage("unknown mode");
  for (int i = 2; i < argc; i++) {
    const char *opt = argv[i];
    if (strcmp(opt, "--await-go") == 0 && a->mode == MODE_INIT) {
      a->await_go = true;
      continue;
    }
    if (i + 1 >= argc)
      usage("an option is missing its value");
    const char *val = argv[++i];
    if (strcmp(opt, "--listen") == 0)
      a->listen = val;
    else if (strcmp(opt, "--ready-fd") == 0)
      a->ready_fd = (int)parse_int(opt, val, 0, INT_MAX);
    else if (strcmp(opt, "--fd") == 0 && a->mode == MODE_SERVE)
      a->stream_fd = (int)parse_int(opt, val, 0, INT_MAX);
    else if (strcmp(opt, "--deadline") == 0)
      a->deadline = parse_int(opt, val, 1, INT64_MAX / 2000);
    else if (strcmp(opt, "--hostname") == 0 && a->mode == MODE_INIT)
      a->hostname = val;
    else if (strcmp(opt, "--shm-mib") == 0 && a->mode == MODE_INIT)
      a->shm_mib = (unsigned)parse_int(opt, val, 1, 1 << 20);
    else if (strcmp(opt, "--pids-max") == 0 && a->mode == MODE_INIT)
      a->pids_max = (unsigned)parse_int(opt, val, 16, 1 << 22);
    else if (strcmp(opt, "--rw-tmpfs-mib") == 0 && a->mode == MODE_INIT)
      a->rw_tmpfs_mib = (unsigned)parse_int(opt, val, 16, 1 << 24);
    else
      usage("unknown option");
  }
  if (a->mode == MODE_INIT && (a->listen == NULL || a->ready_fd < 0))
    usage("init needs --listen and --ready-fd");
  if (a->mode == MODE_SERVE && (a->listen == NULL) == (a->stream_fd < 0))
    usage("serve needs exactly one of --listen and --fd");
  if (a->stream_fd >= 0 && a->ready_fd >= 0)
    usage("--ready-fd goes with --listen");
  if (a->hostname != NULL && (strlen(a->hostname) == 0 || strlen(a->hostname) > 64))
    usage("--hostname must be 1..64 bytes");
}

/* Start-up failure: tell the host through the ready fd ('E' + one line),
 * and on stderr, then exit 1. */
PYRO_NORETURN static void fail_startup(int ready_fd, const char *msg) {
  fprintf(stderr, "pyro-agent: %s\n", msg);
  if (ready_fd >= 0) {
    char line[600];
    int n = snprintf(line, sizeof line, "E%s\n", msg);
    if (n > 0)
      (void)write_all(ready_fd, line, strnlen(line, sizeof line));
  }
  exit(1);
}

static void check_fd(int fd, const char *what) {
  if (fcntl(fd, F_GETFD) < 0) {
    char msg[64];
    snprintf(msg, sizeof msg, "%s %d is not open", what, fd);
    usage(msg);
  }
}

/* Closes every fd above stderr except `keep` (-1 for none): whatever the
 * process that started the sandbox held open (a directory, a pipe, a
 * socket) must not reach the sandbox, where /proc would hand it to any
 * command. */
static void close_inherited_fds(int keep) {
  if (keep < 0 || keep <= STDERR_FILENO) {
    close_fds_from(STDERR_FILENO + 1);
    return;
  }
  for (int fd = STDERR_FILENO + 1; fd < keep; fd++)
    (void)close(fd);
  close_fds_from(keep + 1);
}

int main(int argc, char **argv) {
  struct args args;
  char msg[512];
  const char *step = NULL;
  int listen_fd = -1;

  /* The kernel runs the initramfs's /init as PID 1, without arguments of
   * ours (words of its command line it does not know may follow). */
  if (getpid() == 1 && argc >= 1 && strcmp(argv[0], VMINIT_SELF) == 0)
    vminit_main();
  if (argc > 1 && strcmp(argv[1], "apply") == 0)
    return apply_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "files") == 0)
    return files_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "launch") == 0)
    return launch_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "vmm") == 0)
    return vmm_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "tapnet") == 0)
    return tapnet_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "netwatch") == 0)
    return netwatch_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "probe") == 0)
    return probe_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "connect") == 0)
    return connect_main(argc - 1, argv + 1);
  parse_args(argc, argv, &args);
  /* Not dumpable: no process of the sandbox may ptrace the agent or its
   * supervisors, or open their /proc/PID/{fd,mem,environ} (commands hold no
   * CAP_SYS_PTRACE, which is what would override this). Inherited by every
   * supervisor; a command's execve makes it dumpable again. */
  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  /* parse_args allows at most one of them. */
  close_inherited_fds(args.ready_fd >= 0 ? args.ready_fd : args.stream_fd);
  if (args.ready_fd >= 0) {
    check_fd(args.ready_fd, "--ready-fd");
    /* Our commands must not inherit it (nor hold the host's pipe open). */
    (void)fcntl(args.ready_fd, F_SETFD, FD_CLOEXEC);
  }
  if (args.stream_fd >= 0)
    check_fd(args.stream_fd, "--fd");

  if (args.mode == MODE_INIT && getpid() != 1)
    fail_startup(args.ready_fd, "init mode must run as PID 1 of a new pid namespace");

  /* --await-go: the ready fd is a socket pair whose host end writes 'G'
   * once it has noted this sandbox (its groups, its init) and before it lets
   * bwrap exec us. EOF instead means the host that started us died first:
   * nobody knows of this sandbox, so it runs nothing (no socket, no mounts)
   * and ends. */
  if (args.await_go) {
    char go = 0;
    ssize_t n;
    do
      n = read(args.ready_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1 || go != 'G')
      _exit(0);
  }

  /* The socket comes first: it is on the host's side of the mounts, and
   * its appearance tells the host that the agent started. */
  if (args.listen != NULL) {
    listen_fd = transport_listen_unix(args.listen, &step);
    if (listen_fd < 0) {
      snprintf(msg, sizeof msg, "cannot listen on %s (%s): %s", args.listen, step,
               strerror(errno));
      fail_startup(args.ready_fd, msg);
    }
  }
  /* The process cap holds without cgroups too: RLIMIT_NPROC counts the
   * processes of our uid in this user namespace (the sandbox's alone), and
   * no capability inside lifts it (only CAP_SYS_RESOURCE or CAP_SYS_ADMIN
   * of the host's namespace would). */
  if (args.pids_max > 0) {
    struct rlimit nproc = {args.pids_max, args.pids_max};
    if (setrlimit(RLIMIT_NPROC, &nproc) < 0) {
      snprintf(msg, sizeof msg, "cannot set RLIMIT_NPROC: %s", strerror(errno));
      fail_startup(args.ready_fd, msg);
    }
  }
  /* Pending signals and POSIX message queue bytes are counted per uid
   * through every user namespace up to the host's, where the sandbox's uid
   * is the running user's own when pyro is not root (and shared by every
   * sandbox when it is): a sandbox that queued 96362 signals left that
   * user's processes without timer_create and sigqueue (EAGAIN) while it
   * held them. The count at this namespace's level is checked against the
   * rlimit of the process charged, so a quarter of what we inherited, soft
   * and hard (no command holds CAP_SYS_RESOURCE to raise it), bounds the
   * whole sandbox. A VM's guest counts its own, nothing of the host's. */
  if (args.mode == MODE_INIT) {
    static const int shared[] = {RLIMIT_SIGPENDING, RLIMIT_MSGQUEUE};
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
      struct rlimit rl;
      if (getrlimit(shared[i], &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        continue; /* unlimited for the uid outside: nothing to run out of */
      rl.rlim_cur = rl.rlim_max = rl.rlim_cur / 4 > 0 ? rl.rlim_cur / 4 : 1;
      if (setrlimit(shared[i], &rl) < 0) {
        snprintf(msg, sizeof msg, "cannot lower RLIMIT_%s: %s",
                 shared[i] == RLIMIT_SIGPENDING ? "SIGPENDING" : "MSGQUEUE", strerror(errno));
        fail_startup(args.ready_fd, msg);
      }
    }
  }
  /* Our stderr is a file on the host (the sandbox's log): what we and the
   * supervisors write there is capped (the soft limit; commands get the
   * hard one back before exec), and past it writes fail instead of
   * killing us. */
  if (args.mode == MODE_INIT) {
    struct rlimit fsize;
    if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur > AGENT_LOG_MAX) {
      fsize.rlim_cur = AGENT_LOG_MAX;
      (void)setrlimit(RLIMIT_FSIZE, &fsize);
    }
    (void)signal(SIGXFSZ, SIG_IGN);
  }
  if (args.mode == MODE_INIT && nsinit_setup(args.hostname, args.shm_mib, args.rw_tmpfs_mib, msg, sizeof msg) < 0)
    fail_startup(args.ready_fd, msg);

  struct agent_opts opts = {.pid1 = args.mode == MODE_INIT, .deadline = args.deadline, .sync_fd = -1};
  struct agent *agent = agent_new(&opts);
  if (agent == NULL) {
    snprintf(msg, sizeof msg, "cannot set up the event loop: %s", strerror(errno));
    fail_startup(args.ready_fd, msg);
  }
  if (listen_fd >= 0 && agent_add_listener(agent, listen_fd) < 0) {
    snprintf(msg, sizeof msg, "cannot watch the listening socket: %s", strerror(errno));
    fail_startup(args.ready_fd, msg);
  }
  if (args.stream_fd >= 0 && agent_add_stream(agent, args.stream_fd) < 0) {
    snprintf(msg, sizeof msg, "cannot serve fd %d: %s", args.stream_fd, strerror(errno));
    fail_startup(args.ready_fd, msg);
  }
  if (args.ready_fd >= 0) {
    if (write_all(args.ready_fd, "R", 1) < 0)
      warn_errno("write to the ready fd");
    close_fd(&args.ready_fd);
  }
  return agent_run(agent);
}
