/* pyro-agent files: the file API of a task's workspace, run by the host
 * through the agent (as /run/pyro-agent) like `apply`, so it works the same
 * on every driver (src/runtime/files.ts is the host side).
 *
 *   pyro-agent files ls       ROOT REL
 *   pyro-agent files read     ROOT REL OFFSET LENGTH
 *   pyro-agent files commit   ROOT               (stdin: records, see below)
 *   pyro-agent files manifest ROOT [--store DIR] [--list]  (--list: stdin NUL-separated RELs)
 *   pyro-agent files fetch    ROOT STORE CAP     (stdin: NUL-separated "p:REL" / "b:SHA256")
 *   pyro-agent files tar      ROOT REL [--list]  (--list: stdin NUL-separated RELs)
 *
 * With --list each listed path is visited alone (a listed directory is not
 * descended); a listed path that is gone, or now lies beyond a symlink, is
 * left out.
 *
 * Every path is relative to ROOT (/workspace) and is opened one component
 * at a time from a descriptor of ROOT with O_NOFOLLOW: a `..`, an absolute
 * path or a symlink anywhere on the way is refused, and a symlink swapped in
 * during the walk is refused too (nothing is ever looked up by its full
 * name). The final component is never followed either: a symlink is
 * listed, manifested and archived as a symlink, never read through.
 *
 * Output is one JSON line per result (ls, manifest), a JSON header line and
 * raw bytes (read, fetch), or a tar stream (tar: ustar with pax records for
 * long names; devices, fifos and sockets are left out and named on stderr).
 * Errors: exit 1 and one line on stderr starting with a kind word the host
 * maps to an error code (`not_found:`, `outside:`, `symlink:`, `not_dir:`,
 * `not_file:`, `is_dir:`, `io:`); exit 2 is usage.
 *
 * commit: stdin holds records `W MODE SIZE REL\0` + SIZE bytes (write a file)
 * or `D REL\0` (delete a file), then `E\0`. All or nothing: every new content
 * is first written to a temporary file beside its target and fsynced (any
 * failure removes them all and changes nothing); then each target is moved
 * aside and the new file renamed in (a failure there undoes every rename, in
 * reverse); then what was moved aside is removed. Parents are created
 * (mode 755) when missing, never through a symlink, and removed again when
 * the commit fails. */
#define _GNU_SOURCE
#include "files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sha256.h"

#define MAX_REL 4096
#define MAX_DEPTH 256
#define MAX_RECORDS 100000
/* Files up to this size are copied into the baseline store (for text diffs). */
#define STORE_MAX (1u << 20)

static char errbuf[600];

/* Records the first error: "kind: message". */
PYRO_PRINTF(2, 3) static int ferr(const char *kind, const char *fmt, ...) {
  if (errbuf[0]) return -1;
  int n = snprintf(errbuf, sizeof errbuf, "%s: ", kind);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof errbuf) vsnprintf(errbuf + n, sizeof errbuf - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

static int finish(int rc) {
  if (rc != 0) {
    fprintf(stderr, "%s\n", errbuf[0] ? errbuf : "io: failed");
    return 1;
  }
  return 0;
}

static void json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
    else if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\u%04x", *p);
    else fputc(*p, out);
  }
  fputc('"', out);
}

/* Splits REL into components; refuses absolute paths, "..", and overlong paths. */
static int split(const char *rel, char *copy, char **parts, int *n) {
  if (rel[0] == '/') return ferr("outside", "\"%.300s\" is absolute; paths are relative to the workspace", rel);
  if (strlen(rel) >= MAX_REL) return ferr("outside", "the path is longer than %d bytes", MAX_REL);
  strcpy(copy, rel);
  *n = 0;
  for (char *save = NULL, *tok = strtok_r(copy, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
    if (strcmp(tok, ".") == 0) continue;
    if (strcmp(tok, "..") == 0) return ferr("outside", "\"%.300s\" has a `..` component", rel);
    if (*n >= MAX_DEPTH) return ferr("outside", "\"%.300s\" is nested too deeply", rel);
    parts[(*n)++] = tok;
  }
  return 0;
}

/* Directories commit created, so that a failed commit removes them again (newest first). */
#define MAX_MADE 4096
static struct {
  int dfd;
  char *name;
} made[MAX_MADE];
static size_t n_made;

static void unmake_dirs(void) {
  while (n_made > 0) {
    n_made--;
    unlinkat(made[n_made].dfd, made[n_made].name, AT_REMOVEDIR); /* fails, harmlessly, if not empty */
    close(made[n_made].dfd);
    free(made[n_made].name);
  }
}

static void forget_dirs(void) {
  while (n_made > 0) {
    n_made--;
    close(made[n_made].dfd);
    free(made[n_made].name);
  }
}

static int journal_mkdir(char **parts, int i);

/* Opens the directory holding the last component of REL (which must have one
 * unless allow_root), without following any symlink; with mkparents, creates
 * missing directories. *last gets the last component (or "." for the root). */
static int open_parent(int rootfd, const char *rel, bool mkparents, bool allow_root, char *copy, const char **last) {
  char *parts[MAX_DEPTH];
  int n;
  if (split(rel, copy, parts, &n) < 0) return -1;
  if (n == 0) {
    if (!allow_root) return ferr("is_dir", "the path names the workspace itself");
    *last = ".";
    return fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
  }
  int dfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
  for (int i = 0; i < n - 1; i++) {
    int next = openat(dfd, parts[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0 && errno == ENOENT && mkparents) {
      /* Journaled before it exists, so that a commit killed from here on removes it again. */
      if (journal_mkdir(parts, i) < 0) {
        close(dfd);
        return -1;
      }
      if (mkdirat(dfd, parts[i], 0755) < 0) {
        if (errno != EEXIST) {
          close(dfd);
          return ferr("io", "cannot create the directory \"%.300s\": %s", parts[i], strerror(errno));
        }
      } else if (n_made < MAX_MADE) {
        made[n_made].dfd = fcntl(dfd, F_DUPFD_CLOEXEC, 3);
        made[n_made].name = strdup(parts[i]);
        if (made[n_made].dfd >= 0 && made[n_made].name) n_made++;
      }
      next = openat(dfd, parts[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (next < 0) {
      int e = errno;
      struct stat st;
      bool link = fstatat(dfd, parts[i], &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
      close(dfd);
      if (link || e == ELOOP) return ferr("symlink", "\"%.300s\" goes through the symlink \"%.200s\"; paths never follow symlinks", rel, parts[i]);
      if (e == ENOENT) return ferr("not_found", "\"%.300s\": the directory \"%.200s\" does not exist", rel, parts[i]);
      if (e == ENOTDIR) return ferr("not_dir", "\"%.300s\": \"%.200s\" is not a directory", rel, parts[i]);
      return ferr("io", "\"%.300s\": %s", rel, strerror(e));
    }
    close(dfd);
    dfd = next;
  }
  *last = parts[n - 1];
  return dfd;
}

static int open_root(const char *root) {
  int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ferr("not_found", "the workspace %.200s cannot be opened: %s", root, strerror(errno));
  return fd;
}

static const char *kind_of(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "symlink";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISCHR(m) || S_ISBLK(m)) return "device";
  return "other";
}

/* Opens a regular file (never a symlink, never blocking on a fifo or touching a device). */
static int open_regular(int dfd, const char *name, const char *rel, struct stat *st) {
  if (fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return ferr("not_found", "\"%.300s\" does not exist", rel);
    return ferr("io", "\"%.300s\": %s", rel, strerror(errno));
  }
  if (S_ISLNK(st->st_mode)) return ferr("symlink", "\"%.300s\" is a symlink; it is not followed (list its directory to see its target)", rel);
  if (S_ISDIR(st->st_mode)) return ferr("is_dir", "\"%.300s\" is a directory; list it instead", rel);
  if (!S_ISREG(st->st_mode)) return ferr("not_file", "\"%.300s\" is a %s, not a regular file; only regular files can be read", rel, kind_of(st->st_mode));
  int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ferr("io", "cannot open \"%.300s\": %s", rel, strerror(errno));
  if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
    close(fd);
    return ferr("not_file", "\"%.300s\" changed while it was opened", rel);
  }
  return fd;
}

/* ------------------------------------------------------------------ ls */

static int cmd_ls(int rootfd, const char *rel) {
  char copy[MAX_REL];
  const char *last;
  int pfd = open_parent(rootfd, rel, false, true, copy, &last);
  if (pfd < 0) return -1;
  int dfd = openat(pfd, last, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) {
    int e = errno;
    struct stat st;
    int r = fstatat(pfd, last, &st, AT_SYMLINK_NOFOLLOW);
    close(pfd);
    if (r == 0 && S_ISLNK(st.st_mode)) return ferr("symlink", "\"%.300s\" is a symlink; it is not followed", rel);
    if (r == 0) return ferr("not_dir", "\"%.300s\" is a %s, not a directory", rel, kind_of(st.st_mode));
    if (e == ENOENT) return ferr("not_found", "\"%.300s\" does not exist", rel);
    return ferr("io", "\"%.300s\": %s", rel, strerror(e));
  }
  close(pfd);
  DIR *d = fdopendir(dfd);
  if (!d) {
    close(dfd);
    return ferr("io", "\"%.300s\": %s", rel, strerror(errno));
  }
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    struct stat st;
    if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue; /* removed meanwhile */
    fputs("{\"name\":", stdout);
    json_str(stdout, de->d_name);
    printf(",\"kind\":\"%s\",\"size\":%lld,\"mode\":%u,\"mtime\":%lld", kind_of(st.st_mode), (long long)st.st_size, (unsigned)(st.st_mode & 07777), (long long)st.st_mtime);
    if (S_ISLNK(st.st_mode)) {
      char target[MAX_REL];
      ssize_t n = readlinkat(dirfd(d), de->d_name, target, sizeof target - 1);
      if (n >= 0) {
        target[n] = 0;
        fputs(",\"target\":", stdout);
        json_str(stdout, target);
      }
    }
    fputs("}\n", stdout);
  }
  closedir(d);
  return fflush(stdout) == 0 ? 0 : ferr("io", "writing the listing: %s", strerror(errno));
}

/* ------------------------------------------------------------------ read */

/* Copies len bytes of fd to stdout (to_stdout) and/or a store file, hashing them. */
static int copy_out(int fd, uint64_t len, struct sha256 *h, int storefd, bool to_stdout) {
  static char buf[65536];
  while (len > 0) {
    size_t want = len < sizeof buf ? (size_t)len : sizeof buf;
    ssize_t n = TEMP_FAILURE_RETRY(read(fd, buf, want));
    if (n < 0) return ferr("io", "reading: %s", strerror(errno));
    if (n == 0) {
      /* The file shrank since its header went out: pad, so the stream stays framed. */
      memset(buf, 0, want);
      n = (ssize_t)want;
    }
    if (h) sha256_update(h, buf, (size_t)n);
    if (storefd >= 0 && write_all(storefd, buf, (size_t)n) < 0) return ferr("io", "writing the baseline store: %s", strerror(errno));
    if (to_stdout && write_all(STDOUT_FILENO, buf, (size_t)n) < 0) return ferr("io", "writing: %s", strerror(errno));
    len -= (uint64_t)n;
  }
  return 0;
}

static int cmd_read(int rootfd, const char *rel, uint64_t offset, uint64_t length) {
  char copy[MAX_REL];
  const char *last;
  int pfd = open_parent(rootfd, rel, false, false, copy, &last);
  if (pfd < 0) return -1;
  struct stat st;
  int fd = open_regular(pfd, last, rel, &st);
  close(pfd);
  if (fd < 0) return -1;
  uint64_t size = (uint64_t)st.st_size;
  uint64_t start = offset < size ? offset : size;
  uint64_t n = size - start < length ? size - start : length;
  printf("{\"size\":%llu,\"mode\":%u,\"offset\":%llu,\"sent\":%llu}\n", (unsigned long long)size, (unsigned)(st.st_mode & 07777), (unsigned long long)start, (unsigned long long)n);
  fflush(stdout);
  int rc = 0;
  if (lseek(fd, (off_t)start, SEEK_SET) < 0) rc = ferr("io", "seeking \"%.300s\": %s", rel, strerror(errno));
  else rc = copy_out(fd, n, NULL, -1, true);
  close(fd);
  return rc;
}

/* ------------------------------------------------------------------ journal */

/* The commit's journal and its lock live beside ROOT, outside it (for /workspace:
 * /.pyro-files.journal and /.pyro-files.lock), in the sandbox's writable layer: a
 * commit killed outright (the process, the agent, the sandbox, the VM) is rolled back,
 * or forward once it had committed, by the next files command of any kind.
 *
 * Format: "PYROF1\0", then one NUL-terminated record per step, appended before the
 * step it announces (see jappend for what is synced when):
 *   "M" REL                      a directory about to be created (REL from ROOT)
 *   "F" OLD OP " " TMP " " ASIDE " " REL
 *                                a change: OLD '1' when REL existed, OP 'W' or 'D',
 *                                TMP ".pyro-new.P.N" (about to be created beside REL;
 *                                "-" for a delete), ASIDE ".pyro-old.P.N" (where the
 *                                old REL goes)
 *   "P"                          every temporary is written: the renames begin
 *   "C"                          every rename is done and synced: committed
 * A torn last record (no NUL) is ignored. The sandbox can write anything there, so
 * recovery trusts no byte of it: each REL goes through open_parent (one component at
 * a time from ROOT, O_NOFOLLOW, no `..`, not absolute), TMP and ASIDE must be single
 * names of exactly those patterns, and it only renames, unlinks files and removes
 * empty directories inside ROOT. */
#define JOURNAL_NAME ".pyro-files.journal"
#define LOCK_NAME ".pyro-files.lock"
#define JOURNAL_MAX (64u << 20)
/* How long a commit waits for another files command's recovery or commit (a command
 * of the sandbox holding the lock must not hang the host's commit forever). */
#define LOCK_WAIT_MS 60000
/* How long any other files command waits, where a journal says a commit is under way,
 * before it leaves that commit alone. The host runs one files command of a task at a
 * time, so the holder is the commit of a host that was just killed (the agent kills the
 * orphan when its connection closes, but its death lags the host's by a few ms, and the
 * host's next command can start inside that window) or a process of the sandbox's own. */
#define RECOVER_WAIT_MS 2000

static char jdir_path[PATH_MAX];
static int jdirfd = -1;  /* the directory holding the journal (ROOT's parent) */
static int lockfd = -1;  /* held (LOCK_EX) for a whole commit, or for a recovery */
static int jfd = -1;     /* the live commit's journal, appended to */
static char recover_why[400]; /* the first thing a recovery could not put back, for the commit's error */
static size_t jsize;

/* Test hook (PYRO_FILES_PAUSE_AT=POINT[,POINT]: the host passes it only when its own
 * PYRO_TEST_PAUSE_AT names files:POINT): stop dead there, after saying so, until killed. */
static void pause_at(const char *point) {
  const char *want = getenv("PYRO_FILES_PAUSE_AT");
  if (!want || !*want) return;
  size_t n = strlen(point);
  for (const char *p = want; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
    if (strncmp(p, point, n) == 0 && (p[n] == ',' || p[n] == 0)) {
      fprintf(stderr, "pyro-agent files: paused at %s pid %d\n", point, (int)getpid());
      for (;;) pause();
    }
  }
}

/* Opens ROOT's parent, where the journal and its lock live. */
static int journal_dir(const char *root) {
  char r[PATH_MAX];
  snprintf(r, sizeof r, "%s", root);
  size_t len = strlen(r);
  while (len > 1 && r[len - 1] == '/') r[--len] = 0;
  char *slash = strrchr(r, '/');
  if (!slash) snprintf(jdir_path, sizeof jdir_path, ".");
  else if (slash == r) snprintf(jdir_path, sizeof jdir_path, "/");
  else {
    *slash = 0;
    snprintf(jdir_path, sizeof jdir_path, "%s", r);
  }
  jdirfd = open(jdir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  return jdirfd;
}

/* 0: locked; 1: still held by a live process after wait_ms; -1: no lock (errno). */
static int take_lock(int wait_ms) {
  if (lockfd < 0) {
    lockfd = openat(jdirfd, LOCK_NAME, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (lockfd < 0) return -1;
    struct stat st;
    if (fstat(lockfd, &st) < 0 || !S_ISREG(st.st_mode)) {
      close(lockfd);
      lockfd = -1;
      errno = EINVAL;
      return -1;
    }
  }
  for (int waited = 0;; waited += 20) {
    if (flock(lockfd, LOCK_EX | LOCK_NB) == 0) return 0;
    if (errno != EWOULDBLOCK && errno != EINTR) return -1;
    if (waited >= wait_ms) return 1;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

static void release_lock(void) {
  if (lockfd >= 0) close(lockfd); /* closing the only descriptor releases the flock */
  lockfd = -1;
}

/* Appends one record before the step it announces. A kill of the process, the agent or the
 * sandbox leaves the page cache whole, so a written record is seen; sync makes it durable
 * against a crash of the VM or the machine too. Phase 1's records ("M", "F") are synced
 * together by "P" (one fdatasync, not one per file: 10 files took 166 ms synced one by one
 * against 58 ms unjournaled): the temporaries and directories they announce were created
 * after them, which ext4's ordered journal keeps in that order; "P" and "C" are synced
 * before the renames they stand for are made or forgotten. */
static int jappend(const char *rec, bool sync) {
  size_t n = strlen(rec) + 1;
  if (jsize + n > JOURNAL_MAX) return ferr("io", "the commit's journal would pass %u MiB (too many or too long paths in one commit); split it into smaller commits", JOURNAL_MAX >> 20);
  if (write_all(jfd, rec, n) < 0 || (sync && fdatasync(jfd) < 0)) return ferr("io", "cannot write the commit journal %s/%s: %s", jdir_path, JOURNAL_NAME, strerror(errno));
  jsize += n;
  return 0;
}

static int journal_mkdir(char **parts, int i) {
  if (jfd < 0) return 0;
  char rec[MAX_REL + 2];
  size_t at = 0;
  rec[at++] = 'M';
  for (int k = 0; k <= i; k++) at += (size_t)snprintf(rec + at, sizeof rec - at, "%s%s", k ? "/" : "", parts[k]);
  if (at >= sizeof rec) return ferr("outside", "the path is longer than %d bytes", MAX_REL);
  return jappend(rec, false);
}

static int journal_create(void) {
  jfd = openat(jdirfd, JOURNAL_NAME, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (jfd < 0) return ferr("io", "cannot create the commit journal %s/%s: %s%s", jdir_path, JOURNAL_NAME, strerror(errno), errno == EEXIST ? " (another process made it meanwhile; try again)" : "");
  jsize = 0;
  if (jappend("PYROF1", true) < 0 || fsync(jdirfd) < 0) {
    close(jfd);
    jfd = -1;
    unlinkat(jdirfd, JOURNAL_NAME, 0);
    return ferr("io", "cannot write the commit journal %s/%s: %s", jdir_path, JOURNAL_NAME, strerror(errno));
  }
  return 0;
}

static void journal_remove(void) {
  if (jfd >= 0) close(jfd);
  jfd = -1;
  unlinkat(jdirfd, JOURNAL_NAME, 0);
  fsync(jdirfd);
}

/* NAME is PREFIX then digits, '.', digits (each at most 10): returns the suffix after PREFIX, or NULL. */
static const char *pattern_suffix(const char *name, const char *prefix) {
  size_t pl = strlen(prefix);
  if (strncmp(name, prefix, pl) != 0) return NULL;
  const char *s = name + pl;
  size_t a = strspn(s, "0123456789");
  if (a == 0 || a > 10 || s[a] != '.') return NULL;
  size_t b = strspn(s + a + 1, "0123456789");
  if (b == 0 || b > 10 || s[a + 1 + b] != 0) return NULL;
  return s;
}

struct jrec {
  bool had_old, write;
  char tmp[32], aside[32];
  const char *rel;
};

/* Parses an "F" record; false when it is not exactly of the format (a forged journal). */
static bool parse_frec(const char *s, struct jrec *r) {
  if (s[0] != 'F' || (s[1] != '0' && s[1] != '1') || (s[2] != 'W' && s[2] != 'D') || s[3] != ' ') return false;
  r->had_old = s[1] == '1';
  r->write = s[2] == 'W';
  const char *p = s + 4, *sp = strchr(p, ' ');
  if (!sp || (size_t)(sp - p) >= sizeof r->tmp) return false;
  memcpy(r->tmp, p, (size_t)(sp - p));
  r->tmp[sp - p] = 0;
  p = sp + 1;
  sp = strchr(p, ' ');
  if (!sp || (size_t)(sp - p) >= sizeof r->aside) return false;
  memcpy(r->aside, p, (size_t)(sp - p));
  r->aside[sp - p] = 0;
  r->rel = sp + 1;
  const char *as = pattern_suffix(r->aside, ".pyro-old.");
  if (!as || !r->rel[0]) return false;
  if (r->write) {
    const char *ts = pattern_suffix(r->tmp, ".pyro-new.");
    return ts && strcmp(ts, as) == 0;
  }
  return !r->had_old ? false : strcmp(r->tmp, "-") == 0;
}

static bool exists_at(int dfd, const char *name, struct stat *st) {
  return fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Rolls an interrupted commit back (no "C") or forward ("C"), then removes its journal.
 * Returns -1 only when something could not be put back (the journal then stays, and the
 * next files command tries again; a commit refuses to start over it). */
static int recover(int rootfd, bool locked) {
  if (jdirfd < 0) return 0;
  if (!locked) {
    /* The usual case costs one fstatat, and a read-only command creates no lock file. */
    struct stat js;
    if (fstatat(jdirfd, JOURNAL_NAME, &js, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) return 0;
    int l = take_lock(RECOVER_WAIT_MS);
    if (l != 0) return 0; /* 1: a live commit or recovery holds it; -1: no lock file here, so no commit ever ran */
  }
  int fd = openat(jdirfd, JOURNAL_NAME, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  int rc = 0;
  if (fd < 0) {
    if (errno != ENOENT) {
      fprintf(stderr, "pyro-agent files: removed %s/%s, which is not a commit journal (%s); nothing was recovered from it\n", jdir_path, JOURNAL_NAME, strerror(errno));
      if (unlinkat(jdirfd, JOURNAL_NAME, 0) < 0) unlinkat(jdirfd, JOURNAL_NAME, AT_REMOVEDIR);
    }
    goto out;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > JOURNAL_MAX) {
    close(fd);
    fprintf(stderr, "pyro-agent files: removed %s/%s, which is not a commit journal (%s); nothing was recovered from it\n", jdir_path, JOURNAL_NAME, S_ISREG(st.st_mode) ? "too large" : kind_of(st.st_mode));
    if (unlinkat(jdirfd, JOURNAL_NAME, 0) < 0) unlinkat(jdirfd, JOURNAL_NAME, AT_REMOVEDIR);
    goto out;
  }
  size_t len = (size_t)st.st_size, got = 0;
  char *buf = malloc(len + 1);
  if (!buf) {
    close(fd);
    fprintf(stderr, "pyro-agent files: out of memory reading the commit journal %s/%s; it is left for the next files command\n", jdir_path, JOURNAL_NAME);
    snprintf(recover_why, sizeof recover_why, "out of memory reading it");
    rc = -1;
    goto out;
  }
  while (got < len) {
    ssize_t r = TEMP_FAILURE_RETRY(read(fd, buf + got, len - got));
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  len = got;
  buf[len] = 0;
  /* The complete records: up to the last NUL (a torn tail is a record never acted on). */
  while (len > 0 && buf[len - 1] != 0) len--;
  size_t nrec = 0;
  for (size_t i = 0; i < len; i++)
    if (buf[i] == 0) nrec++;
  const char **recs = calloc(nrec ? nrec : 1, sizeof *recs);
  if (!recs) {
    free(buf);
    fprintf(stderr, "pyro-agent files: out of memory reading the commit journal; it is left for the next files command\n");
    snprintf(recover_why, sizeof recover_why, "out of memory reading it");
    rc = -1;
    goto out;
  }
  size_t k = 0;
  for (size_t at = 0; at < len; at += strlen(buf + at) + 1) recs[k++] = buf + at;
  bool phase2 = false, committed = false;
  size_t bad = 0, changes = 0;
  if (nrec == 0 || strcmp(recs[0], "PYROF1") != 0) {
    if (len > 0) fprintf(stderr, "pyro-agent files: removed %s/%s: it does not start as a commit journal does; nothing was recovered from it\n", jdir_path, JOURNAL_NAME);
    nrec = 0;
  }
  for (size_t i = 1; i < nrec; i++) {
    if (strcmp(recs[i], "P") == 0) phase2 = true;
    else if (strcmp(recs[i], "C") == 0) committed = phase2;
  }
  for (size_t j = nrec; j-- > 1;) {
    const char *s = recs[j];
    if (s[0] == 'P' || s[0] == 'C' || s[0] == 'M') {
      if (s[0] != 'M' || !s[1]) { if (s[1]) bad++; continue; }
      /* A directory the commit created: rolled back, it goes again if empty. */
      if (committed) continue;
      char copy[MAX_REL];
      const char *last;
      errbuf[0] = 0;
      int dfd = open_parent(rootfd, s + 1, false, false, copy, &last);
      if (dfd < 0) { if (strncmp(errbuf, "not_found", 9) != 0) bad++; continue; }
      unlinkat(dfd, last, AT_REMOVEDIR); /* fails, harmlessly, if not empty or not a directory */
      close(dfd);
      continue;
    }
    struct jrec r;
    if (!parse_frec(s, &r)) { bad++; continue; }
    char copy[MAX_REL];
    const char *name;
    errbuf[0] = 0;
    int dfd = open_parent(rootfd, r.rel, false, false, copy, &name);
    if (dfd < 0) {
      /* A directory that was never made (or a forged path: `..`, absolute, a symlink on the way). */
      if (strncmp(errbuf, "not_found", 9) != 0) bad++;
      continue;
    }
    changes++;
    struct stat a, t;
    if (committed) {
      if (exists_at(dfd, r.aside, &a) && unlinkat(dfd, r.aside, 0) < 0) fprintf(stderr, "pyro-agent files: cannot remove the old copy of \"%.300s\": %s\n", r.rel, strerror(errno));
      if (r.write && exists_at(dfd, r.tmp, &t)) unlinkat(dfd, r.tmp, 0);
    } else {
      if (exists_at(dfd, r.aside, &a) && !S_ISDIR(a.st_mode)) {
        /* The old file was moved aside: it goes back over whatever was placed (one rename, so
         * the target is never missing); for a delete, back where it was. */
        if (renameat(dfd, r.aside, dfd, name) < 0) {
          int e = errno;
          if (!recover_why[0]) snprintf(recover_why, sizeof recover_why, "cannot put back \"%.250s\" (it is kept as %s beside it): %s", r.rel, r.aside, strerror(e));
          fprintf(stderr, "pyro-agent files: rollback: cannot put back \"%.300s\" (it is kept as %s beside it): %s\n", r.rel, r.aside, strerror(e));
          rc = -1;
        }
      } else if (phase2 && r.write && !r.had_old && !exists_at(dfd, r.tmp, &t) && exists_at(dfd, name, &t) && S_ISREG(t.st_mode)) {
        /* A new file (nothing was there) already renamed into place: it goes. */
        unlinkat(dfd, name, 0);
      }
      if (r.write && exists_at(dfd, r.tmp, &t) && S_ISREG(t.st_mode)) unlinkat(dfd, r.tmp, 0);
    }
    fsync(dfd);
    close(dfd);
  }
  errbuf[0] = 0;
  if (nrec > 0 && rc == 0)
    fprintf(stderr, "pyro-agent files: %s an interrupted commit (%zu change%s)%s\n", committed ? "completed" : "rolled back", changes, changes == 1 ? "" : "s",
            bad ? "; records that name no path inside the workspace or are malformed were ignored" : "");
  else if (nrec > 0)
    fprintf(stderr, "pyro-agent files: an interrupted commit could not be rolled back completely; its journal %s/%s is kept for the next files command\n", jdir_path, JOURNAL_NAME);
  free(recs);
  free(buf);
  if (rc == 0) {
    unlinkat(jdirfd, JOURNAL_NAME, 0);
    fsync(jdirfd);
  }
out:
  if (!locked) release_lock();
  return rc;
}

/* ------------------------------------------------------------------ commit */

struct rec {
  char op; /* 'W' or 'D' */
  unsigned mode;
  char *rel;
  int dfd;
  const char *name;
  char *copy;
  char tmp[64];   /* new content, beside the target */
  char aside[64]; /* the old target, moved aside */
  bool had_old, placed, moved;
};

static int read_field(char *buf, size_t cap) {
  size_t n = 0;
  for (;;) {
    int c = getchar();
    if (c == EOF) return ferr("io", "the commit records ended early");
    if (c == 0) break;
    if (n + 1 >= cap) return ferr("io", "a commit record is too long");
    buf[n++] = (char)c;
  }
  buf[n] = 0;
  return 0;
}

static void undo(struct rec *r, size_t n) {
  for (size_t i = n; i-- > 0;) {
    if (r[i].placed && r[i].op == 'W') unlinkat(r[i].dfd, r[i].name, 0);
    if (r[i].moved) renameat(r[i].dfd, r[i].aside, r[i].dfd, r[i].name);
    r[i].placed = r[i].moved = false;
  }
  for (size_t i = 0; i < n; i++)
    if (r[i].tmp[0]) unlinkat(r[i].dfd, r[i].tmp, 0);
}

static int cmd_commit(int rootfd) {
  static struct rec recs[MAX_RECORDS];
  size_t n = 0;
  char line[MAX_REL + 64];
  int rc = 0;
  static unsigned counter;
  if (jdirfd < 0) return ferr("io", "cannot open %s, where the commit journal is kept: %s", jdir_path, strerror(errno));
  int l = take_lock(LOCK_WAIT_MS);
  if (l > 0) return ferr("io", "another files command has held %s/%s for %d s; try again once it is done", jdir_path, LOCK_NAME, LOCK_WAIT_MS / 1000);
  if (l < 0) return ferr("io", "cannot lock %s/%s: %s", jdir_path, LOCK_NAME, strerror(errno));
  if (recover(rootfd, true) < 0)
    return ferr("io", "an earlier commit was interrupted and could not be rolled back completely (%s); nothing was changed by this one. Put the file back by hand (or remove what is in the way), then remove %s/%s", recover_why, jdir_path, JOURNAL_NAME);
  if (journal_create() < 0) return -1;
  /* Phase 1: every new content into a temporary beside its target. */
  for (;;) {
    if (read_field(line, sizeof line) < 0) { rc = -1; break; }
    if (strcmp(line, "E") == 0) break;
    if (n >= MAX_RECORDS) { rc = ferr("io", "more than %d changes in one commit", MAX_RECORDS); break; }
    struct rec *r = &recs[n];
    memset(r, 0, sizeof *r);
    r->dfd = -1;
    unsigned long long size = 0;
    int used = 0;
    if (line[0] == 'W' && sscanf(line, "W %o %llu %n", &r->mode, &size, &used) == 2 && used > 0) {
      r->op = 'W';
    } else if (line[0] == 'D' && line[1] == ' ') {
      r->op = 'D';
      used = 2;
    } else {
      rc = ferr("io", "a commit record is malformed");
      break;
    }
    r->rel = strdup(line + used);
    r->copy = malloc(MAX_REL);
    if (!r->rel || !r->copy) { rc = ferr("io", "out of memory"); break; }
    n++;
    r->dfd = open_parent(rootfd, r->rel, r->op == 'W', false, r->copy, &r->name);
    if (r->dfd < 0) { rc = -1; break; }
    struct stat st;
    if (fstatat(r->dfd, r->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (S_ISDIR(st.st_mode)) { rc = ferr("is_dir", "\"%.300s\" is a directory", r->rel); break; }
      r->had_old = true;
    } else if (errno != ENOENT) {
      rc = ferr("io", "\"%.300s\": %s", r->rel, strerror(errno));
      break;
    } else if (r->op == 'D') {
      rc = ferr("not_found", "\"%.300s\" does not exist, so it cannot be deleted", r->rel);
      break;
    }
    snprintf(r->aside, sizeof r->aside, ".pyro-old.%d.%u", (int)getpid(), counter);
    char jr[MAX_REL + 96], tmpname[32];
    if (r->op == 'W') snprintf(tmpname, sizeof tmpname, ".pyro-new.%d.%u", (int)getpid(), counter);
    else snprintf(tmpname, sizeof tmpname, "-");
    snprintf(jr, sizeof jr, "F%c%c %s %s %s", r->had_old ? '1' : '0', r->op, tmpname, r->aside, r->rel);
    /* In the journal before the temporary exists: a kill from here on never leaves it behind. */
    if (jappend(jr, false) < 0) { rc = -1; break; }
    if (r->op == 'W') {
      snprintf(r->tmp, sizeof r->tmp, "%s", tmpname);
      int fd = openat(r->dfd, r->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      if (fd < 0) { r->tmp[0] = 0; rc = ferr("io", "cannot write beside \"%.300s\": %s", r->rel, strerror(errno)); break; }
      if (n == 1) pause_at("commit-writing");
      static char buf[65536];
      unsigned long long left = size;
      while (left > 0 && rc == 0) {
        size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
        size_t got = fread(buf, 1, want, stdin);
        if (got == 0) rc = ferr("io", "the content of \"%.300s\" ended early", r->rel);
        else if (write_all(fd, buf, got) < 0) rc = ferr("io", "writing \"%.300s\": %s", r->rel, strerror(errno));
        left -= got;
      }
      if (rc == 0 && fchmod(fd, r->mode & 01777) < 0) rc = ferr("io", "chmod \"%.300s\": %s", r->rel, strerror(errno));
      if (rc == 0 && fsync(fd) < 0) rc = ferr("io", "fsync \"%.300s\": %s", r->rel, strerror(errno));
      close(fd);
      if (rc != 0) break;
    }
    counter++;
  }
  if (rc == 0) {
    pause_at("commit-written");
    /* Durable before the first rename: recovery removes a new file placed where nothing was only past it. */
    rc = jappend("P", true);
  }
  /* Phase 2: move the old aside, the new in; any failure undoes them all. */
  for (size_t i = 0; rc == 0 && i < n; i++) {
    struct rec *r = &recs[i];
    if (r->had_old) {
      if (renameat(r->dfd, r->name, r->dfd, r->aside) < 0) { rc = ferr("io", "cannot replace \"%.300s\": %s", r->rel, strerror(errno)); break; }
      r->moved = true;
      if (i == 0) pause_at("commit-renaming");
    }
    if (r->op == 'W') {
      if (renameat(r->dfd, r->tmp, r->dfd, r->name) < 0) { rc = ferr("io", "cannot place \"%.300s\": %s", r->rel, strerror(errno)); break; }
      r->tmp[0] = 0;
      r->placed = true;
    }
    if (i == 0 && n > 1) pause_at("commit-renamed");
  }
  if (rc == 0) pause_at("commit-placed");
  /* The renames reach the disk before the commit record does: a committed journal is never rolled
   * forward over renames a VM's crash lost. */
  for (size_t i = 0; rc == 0 && i < n; i++)
    if (fsync(recs[i].dfd) < 0) rc = ferr("io", "fsync the directory of \"%.300s\": %s", recs[i].rel, strerror(errno));
  if (rc == 0) rc = jappend("C", true);
  if (rc != 0) {
    undo(recs, n);
    unmake_dirs();
  } else {
    forget_dirs();
    pause_at("commit-committed");
  }
  /* Phase 3: the old contents go. */
  for (size_t i = 0; i < n; i++) {
    if (rc == 0 && recs[i].moved) unlinkat(recs[i].dfd, recs[i].aside, 0);
    if (rc == 0) fsync(recs[i].dfd);
  }
  if (rc == 0) pause_at("commit-cleaned");
  /* Done or undone: the journal has nothing left to say (a kill before this line redoes either). */
  journal_remove();
  for (size_t i = 0; i < n; i++) {
    if (recs[i].dfd >= 0) close(recs[i].dfd);
    free(recs[i].rel);
    free(recs[i].copy);
  }
  if (rc == 0) printf("{\"changed\":%zu}\n", n);
  return rc;
}

/* ------------------------------------------------------------------ walks */

struct walk {
  FILE *out;
  bool tar;
  int storefd; /* -1: no store */
  uint64_t skipped;
  bool norecurse; /* --list: each listed path alone (a listed directory is not descended) */
};

static void hex(const uint8_t d[32], char out[65]) {
  static const char x[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = x[d[i] >> 4];
    out[2 * i + 1] = x[d[i] & 15];
  }
  out[64] = 0;
}

/* Hashes a regular file, copying it into the store (by its hash) when small. */
static int hash_file(int fd, uint64_t size, int storefd, char out[65]) {
  struct sha256 h;
  sha256_init(&h);
  int tfd = -1;
  char tname[64];
  if (storefd >= 0 && size <= STORE_MAX) {
    snprintf(tname, sizeof tname, ".tmp.%d", (int)getpid());
    tfd = openat(storefd, tname, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  }
  int rc = copy_out(fd, size, &h, tfd, false);
  uint8_t d[32];
  sha256_final(&h, d);
  hex(d, out);
  if (tfd >= 0) {
    close(tfd);
    if (rc == 0) renameat(storefd, tname, storefd, out);
    else unlinkat(storefd, tname, 0);
  }
  return rc;
}

/* ustar header (+ a pax record first when a name does not fit). */
static void octal(char *field, size_t width, uint64_t v) {
  /* width-1 digits and a NUL; callers keep v below 8^(width-1) */
  field[width - 1] = 0;
  for (size_t i = width - 1; i-- > 0; v >>= 3) field[i] = (char)('0' + (v & 7));
}

static void name_field(unsigned char *field, const char *s) {
  size_t n = strlen(s);
  memcpy(field, s, n > 99 ? 99 : n);
}

static int tar_block(const void *data, size_t len) {
  static const char zero[512];
  if (write_all(STDOUT_FILENO, data, len) < 0) return ferr("io", "writing the archive: %s", strerror(errno));
  if (len % 512 && write_all(STDOUT_FILENO, zero, 512 - len % 512) < 0) return ferr("io", "writing the archive: %s", strerror(errno));
  return 0;
}

static void checksum(unsigned char *h) {
  memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; i++) sum += h[i];
  snprintf((char *)h + 148, 8, "%06o", sum);
  h[155] = ' ';
}

static int pax_record(char *buf, size_t cap, size_t *used, const char *key, const char *value) {
  size_t body = strlen(key) + strlen(value) + 3; /* " key=value\n" minus the length */
  size_t len = body + 1;
  for (;;) {
    char tmp[24];
    size_t digits = (size_t)snprintf(tmp, sizeof tmp, "%zu", len);
    if (body + digits == len) break;
    len = body + digits;
  }
  if (*used + len > cap) return ferr("io", "a name is too long for the archive");
  *used += (size_t)snprintf(buf + *used, cap - *used, "%zu %s=%s\n", len, key, value);
  return 0;
}

static int tar_header(const char *path, char type, const struct stat *st, const char *link) {
  unsigned char h[512];
  memset(h, 0, sizeof h);
  if (strlen(path) > 99 || (link && strlen(link) > 99)) {
    static char pax[3 * MAX_REL];
    size_t used = 0;
    if (strlen(path) > 99 && pax_record(pax, sizeof pax, &used, "path", path) < 0) return -1;
    if (link && strlen(link) > 99 && pax_record(pax, sizeof pax, &used, "linkpath", link) < 0) return -1;
    memcpy(h, "PaxHeader", 9);
    octal((char *)h + 100, 8, 0644);
    octal((char *)h + 108, 8, 0);
    octal((char *)h + 116, 8, 0);
    octal((char *)h + 124, 12, used);
    octal((char *)h + 136, 12, 0);
    h[156] = 'x';
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    checksum(h);
    if (tar_block(h, 512) < 0 || tar_block(pax, used) < 0) return -1;
    memset(h, 0, sizeof h);
  }
  if (type == '0' && (uint64_t)st->st_size >= (1ull << 33)) return ferr("io", "\"%.300s\" is 8 GiB or larger; the archive cannot hold it", path);
  name_field(h, path);
  octal((char *)h + 100, 8, st->st_mode & 07777);
  octal((char *)h + 108, 8, 0);
  octal((char *)h + 116, 8, 0);
  octal((char *)h + 124, 12, type == '0' ? (uint64_t)st->st_size : 0);
  octal((char *)h + 136, 12, st->st_mtime > 0 ? (uint64_t)st->st_mtime : 0);
  h[156] = (unsigned char)type;
  if (link) name_field(h + 157, link);
  memcpy(h + 257, "ustar", 6);
  memcpy(h + 263, "00", 2);
  checksum(h);
  return tar_block(h, 512);
}

/* One entry (its name relative to ROOT in rel) and, for a directory, what is under it. */
static int visit(struct walk *w, int dfd, const char *name, char *rel, size_t rlen, int depth) {
  struct stat st;
  if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return 0; /* gone meanwhile */
  char link[MAX_REL] = "";
  if (S_ISLNK(st.st_mode)) {
    ssize_t n = readlinkat(dfd, name, link, sizeof link - 1);
    if (n < 0) return 0;
    link[n] = 0;
  }
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
    /* Devices, fifos and sockets are never exported; the manifest names them. */
    if (w->tar) {
      /* The name is the sandbox's: quoted, so a newline in it cannot forge another line for the host. */
      fprintf(stderr, "skipped: %s ", kind_of(st.st_mode));
      json_str(stderr, rel);
      fputc('\n', stderr);
      w->skipped++;
      return 0;
    }
  }
  int fd = -1;
  char sha[65] = "";
  if (S_ISREG(st.st_mode)) {
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
      if (fd >= 0) close(fd);
      return 0; /* replaced meanwhile */
    }
  }
  int rc = 0;
  if (w->tar) {
    char path[MAX_REL + 2];
    snprintf(path, sizeof path, "%s%s", rel, S_ISDIR(st.st_mode) ? "/" : "");
    if (rlen > 0) rc = tar_header(path, S_ISREG(st.st_mode) ? '0' : S_ISDIR(st.st_mode) ? '5' : '2', &st, S_ISLNK(st.st_mode) ? link : NULL);
    if (rc == 0 && fd >= 0) {
      rc = copy_out(fd, (uint64_t)st.st_size, NULL, -1, true);
      if (rc == 0 && st.st_size % 512) {
        static const char zero[512];
        if (write_all(STDOUT_FILENO, zero, 512 - (size_t)(st.st_size % 512)) < 0) rc = ferr("io", "writing the archive: %s", strerror(errno));
      }
    }
  } else if (rlen > 0) {
    if (fd >= 0) rc = hash_file(fd, (uint64_t)st.st_size, w->storefd, sha);
    if (rc == 0) {
      fputs("{\"path\":", w->out);
      json_str(w->out, rel);
      fprintf(w->out, ",\"kind\":\"%s\",\"mode\":%u,\"size\":%lld", kind_of(st.st_mode), (unsigned)(st.st_mode & 07777), S_ISREG(st.st_mode) ? (long long)st.st_size : 0LL);
      if (sha[0]) fprintf(w->out, ",\"sha256\":\"%s\"", sha);
      if (link[0]) {
        fputs(",\"target\":", w->out);
        json_str(w->out, link);
      }
      fputs("}\n", w->out);
    }
  }
  if (fd >= 0) close(fd);
  if (rc != 0 || !S_ISDIR(st.st_mode) || (w->norecurse && rlen > 0)) return rc;
  if (depth >= MAX_DEPTH) return ferr("io", "\"%.300s\" is nested too deeply", rel);
  int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (sub < 0) return 0;
  DIR *d = fdopendir(sub);
  if (!d) {
    close(sub);
    return ferr("io", "\"%.300s\": %s", rel, strerror(errno));
  }
  struct dirent *de;
  while (rc == 0 && (de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    size_t nl = strlen(de->d_name);
    if (rlen + nl + 2 >= MAX_REL) {
      rc = ferr("io", "a path under \"%.300s\" is longer than %d bytes", rel, MAX_REL);
      break;
    }
    size_t at = rlen;
    if (rlen > 0) rel[at++] = '/';
    memcpy(rel + at, de->d_name, nl + 1);
    rc = visit(w, dirfd(d), de->d_name, rel, at + nl, depth + 1);
    rel[rlen] = 0;
  }
  closedir(d);
  return rc;
}

/* Visits REL (the root itself when empty) or, with list, each NUL-separated REL of stdin. */
static int walk_paths(struct walk *w, int rootfd, const char *rel, bool list) {
  char buf[MAX_REL];
  for (;;) {
    const char *one = rel;
    if (list) {
      int r = 0;
      size_t n = 0;
      int c;
      while ((c = getchar()) != EOF && c != 0) {
        if (n + 1 >= sizeof buf) return ferr("outside", "a listed path is longer than %d bytes", MAX_REL);
        buf[n++] = (char)c;
      }
      if (c == EOF && n == 0) break;
      buf[n] = 0;
      one = buf;
      (void)r;
    }
    char copy[MAX_REL], relbuf[MAX_REL];
    const char *last;
    int pfd = open_parent(rootfd, one, false, true, copy, &last);
    if (pfd < 0) {
      /* A listed path that went away (or now lies beyond a symlink) is simply not there. */
      if (list && (strncmp(errbuf, "not_found", 9) == 0 || strncmp(errbuf, "symlink", 7) == 0 || strncmp(errbuf, "not_dir", 7) == 0)) {
        errbuf[0] = 0;
        continue;
      }
      return -1;
    }
    /* rel as the walk writes it: normalized, without ./ or slashes doubled. */
    char *parts[MAX_DEPTH];
    int np;
    char copy2[MAX_REL];
    split(one, copy2, parts, &np);
    size_t rl = 0;
    relbuf[0] = 0;
    for (int i = 0; i < np; i++) rl += (size_t)snprintf(relbuf + rl, sizeof relbuf - rl, "%s%s", i ? "/" : "", parts[i]);
    if (!list && np > 0) {
      struct stat st;
      if (fstatat(pfd, last, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        close(pfd);
        return ferr("not_found", "\"%.300s\" does not exist", one);
      }
      if (S_ISLNK(st.st_mode)) {
        close(pfd);
        return ferr("symlink", "\"%.300s\" is a symlink; it is not followed", one);
      }
    }
    int rc = visit(w, pfd, last, relbuf, rl, 0);
    close(pfd);
    if (rc < 0) return -1;
    if (!list) break;
  }
  return 0;
}

/* ------------------------------------------------------------------ fetch */

/* Items (NUL-separated on stdin): p:REL a workspace file, b:SHA a baseline blob; each answered by a header line and bytes. */
static int cmd_fetch(int rootfd, const char *store, uint64_t cap) {
  char item[MAX_REL + 3];
  int storefd = open(store, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  for (;;) {
    size_t n = 0;
    int c;
    while ((c = getchar()) != EOF && c != 0) {
      if (n + 1 >= sizeof item) return ferr("io", "an item is too long");
      item[n++] = (char)c;
    }
    if (c == EOF && n == 0) break;
    item[n] = 0;
    errbuf[0] = 0;
    int fd = -1;
    struct stat st;
    if (strncmp(item, "p:", 2) == 0) {
      char copy[MAX_REL];
      const char *last;
      int pfd = open_parent(rootfd, item + 2, false, false, copy, &last);
      if (pfd >= 0) {
        fd = open_regular(pfd, last, item + 2, &st);
        close(pfd);
      }
    } else if (strncmp(item, "b:", 2) == 0 && strlen(item) == 66 && strspn(item + 2, "0123456789abcdef") == 64) {
      if (storefd < 0) ferr("not_found", "no baseline store");
      else fd = open_regular(storefd, item + 2, item + 2, &st);
    } else {
      ferr("io", "a malformed item");
    }
    if (fd < 0) {
      fputs("{\"error\":", stdout);
      json_str(stdout, errbuf);
      fputs("}\n", stdout);
      continue;
    }
    uint64_t size = (uint64_t)st.st_size, sent = size < cap ? size : cap;
    printf("{\"size\":%llu,\"sent\":%llu}\n", (unsigned long long)size, (unsigned long long)sent);
    fflush(stdout);
    int rc = copy_out(fd, sent, NULL, -1, true);
    close(fd);
    if (rc < 0) return -1;
  }
  errbuf[0] = 0;
  if (storefd >= 0) close(storefd);
  return fflush(stdout) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ main */

static uint64_t num(const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || !*s) {
    fprintf(stderr, "pyro-agent files: \"%s\" is not a number\n", s);
    exit(2);
  }
  return v;
}

PYRO_NORETURN static void files_usage(void) {
  fprintf(stderr,
          "usage: pyro-agent files ls ROOT REL | read ROOT REL OFFSET LENGTH | commit ROOT |\n"
          "       manifest ROOT [--store DIR] [--list] | fetch ROOT STORE CAP | tar ROOT REL [--list]\n");
  exit(2);
}

int files_main(int argc, char **argv) {
  if (argc < 3) files_usage();
  const char *cmd = argv[1];
  int rootfd = open_root(argv[2]);
  if (rootfd < 0) return finish(-1);
  /* Every subcommand first finishes or undoes a commit that was killed (commit does it under the
   * lock it then keeps), so nothing ever sees a workspace half old, half new, or a .pyro-* temporary. */
  if (journal_dir(argv[2]) >= 0 && strcmp(cmd, "commit") != 0) recover(rootfd, false);
  if (strcmp(cmd, "ls") == 0 && argc == 4) return finish(cmd_ls(rootfd, argv[3]));
  if (strcmp(cmd, "read") == 0 && argc == 6) return finish(cmd_read(rootfd, argv[3], num(argv[4]), num(argv[5])));
  if (strcmp(cmd, "commit") == 0 && argc == 3) return finish(cmd_commit(rootfd));
  if (strcmp(cmd, "fetch") == 0 && argc == 5) return finish(cmd_fetch(rootfd, argv[3], num(argv[4])));
  if (strcmp(cmd, "manifest") == 0) {
    struct walk w = {stdout, false, -1, 0, false};
    bool list = false;
    for (int i = 3; i < argc; i++) {
      if (strcmp(argv[i], "--list") == 0) list = w.norecurse = true;
      else if (strcmp(argv[i], "--store") == 0 && i + 1 < argc) {
        const char *store = argv[++i];
        mkdir(store, 0700);
        /* The store is the sandbox's to break (it can plant a symlink there): without it the
         * manifest is still made, and a diff only lacks the old side of its texts. */
        w.storefd = open(store, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (w.storefd < 0) fprintf(stderr, "pyro-agent files: no baseline store at %s (%s); the manifest is made without it\n", store, strerror(errno));
      } else files_usage();
    }
    int rc = walk_paths(&w, rootfd, "", list);
    if (fflush(stdout) != 0 && rc == 0) rc = ferr("io", "writing the manifest: %s", strerror(errno));
    return finish(rc);
  }
  if (strcmp(cmd, "tar") == 0 && (argc == 4 || (argc == 5 && strcmp(argv[4], "--list") == 0))) {
    struct walk w = {stdout, true, -1, 0, argc == 5};
    int rc = walk_paths(&w, rootfd, argv[3], argc == 5);
    static const char end[1024];
    if (rc == 0 && write_all(STDOUT_FILENO, end, sizeof end) < 0) rc = ferr("io", "writing the archive: %s", strerror(errno));
    return finish(rc);
  }
  files_usage();
}
