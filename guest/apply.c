/* pyro-agent apply: receive a pushed tree and move it into place, all or
 * nothing, even across a kill -9 of anything involved.
 *
 *   pyro-agent apply --journal J --stage S --dest D --backup B --root R
 *                    [--receive] [--delete] [--exclude PATTERN]...
 *   pyro-agent apply --recover --journal J
 *
 * The stage root is dirname(J) (e.g. /.pyro-stage); S and B live in it, on
 * the same filesystem as D, so applying is renames, not copies.
 *
 * 0. Recovery. If J exists, an earlier apply was interrupted (its process,
 *    the agent or the whole sandbox was killed): it is rolled back (no commit
 *    record) or forward (commit record), then the stage root is emptied.
 *    `--recover` does only this.
 * 1. --receive: stdin carries the tar stream in frames (u32 LE length +
 *    bytes; length 0 ends it), followed by the stream's sha256 (32 bytes)
 *    and its length (u64 LE). The bytes go to `tar -x -C S`; the stage is
 *    used only if the end marker arrived and digest and length match, so a
 *    stream cut anywhere (between two tar members included) applies
 *    nothing. Exit status 3 and one line on stderr otherwise.
 * 2. Plan. Every change is decided first, from S and D as they are:
 *    - a path new to D is renamed into place (a whole new directory at once);
 *    - a path D already has is first renamed aside into B, then replaced;
 *    - with --delete, paths of D that S lacks (and no --exclude pattern
 *      matches) are renamed aside into B.
 *    The plan is written to J and fsynced before anything changes.
 * 3. Execute the plan in order. A failure undoes what was done (in reverse,
 *    each step checked against the filesystem, so undoing is idempotent and
 *    can itself be interrupted and redone): D is exactly as it was, the exit
 *    status is 1 and one line on stderr says what failed.
 * 4. Commit: a commit record is appended to J and fsynced; then B and S are
 *    removed, then J. One JSON line on stdout counts what changed.
 *
 * D must resolve to R or a directory under R (e.g. /workspace), and no
 * component of D may be a symlink: a push never lands outside the workspace.
 *
 * Journal format: "PYROJ1\0" D\0 S\0 B\0, then one record per planned step
 * (a kind byte 'M' mkdir (absolute path), 'A' moved aside, 'P' placed, then
 * the path relative to D and \0), then "E\0" (end of plan), and "C\0" once
 * committed. Paths cannot hold NUL, so the format needs no escaping.
 */
#define _GNU_SOURCE
#include "apply.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "glob.h"
#include "sha256.h"

struct op {
  char kind; /* 'M', 'A' or 'P' */
  char *path;
};

static struct {
  const char *stage;
  const char *dest;
  const char *backup;
  const char *root;
  const char *journal;
  bool delete_missing;
  bool receive;
  bool recover_only;
  struct pyro_glob *globs;
  size_t n_globs;
  struct op *ops;
  size_t n_ops, cap_ops;
  size_t added, replaced, deleted;
  char error[512];
} A;

#define MAX_OPS 2000000
#define MAX_FRAME (16u << 20)

static int fail(const char *what, const char *rel, int err) {
  if (!A.error[0])
    snprintf(A.error, sizeof A.error, "%.100s \"%.300s\": %.80s", what, rel, strerror(err));
  return -1;
}

/* Tests prove the rollback by making the Nth change fail (PYRO_APPLY_FAIL_AFTER=N), and the
 * recovery by killing the apply at its Nth step (PYRO_APPLY_EXIT_AFTER=N: _exit at step N,
 * where step 0 is right after the plan is on disk, step k after the k-th change, then after
 * the commit record, after removing the backup, after removing the stage). */
static long fail_after = -1;
static long exit_after = -1;
static long pause_after = -1; /* PYRO_APPLY_PAUSE_AFTER=N: stop at step N until killed (tests kill the host or the sandbox then) */
static long steps;

static void crash_point(void) {
  long step = steps++;
  if (exit_after >= 0 && step == exit_after) {
    fprintf(stderr, "pyro-agent apply: exiting at step %ld (PYRO_APPLY_EXIT_AFTER)\n", exit_after);
    _exit(137);
  }
  if (pause_after >= 0 && step == pause_after)
    for (;;) pause();
}

static int plan(char kind, const char *path) {
  if (A.n_ops == A.cap_ops) {
    size_t cap = A.cap_ops ? A.cap_ops * 2 : 256;
    if (cap > MAX_OPS) return fail("too many changes at", path, E2BIG);
    struct op *n = realloc(A.ops, cap * sizeof *n);
    if (!n) return fail("out of memory at", path, ENOMEM);
    A.ops = n;
    A.cap_ops = cap;
  }
  char *copy = strdup(path);
  if (!copy) return fail("out of memory at", path, ENOMEM);
  A.ops[A.n_ops].kind = kind;
  A.ops[A.n_ops].path = copy;
  A.n_ops++;
  return 0;
}

static int join(char *out, const char *base, const char *rel) {
  int n = rel[0] ? snprintf(out, PATH_MAX, "%s/%s", base, rel) : snprintf(out, PATH_MAX, "%s", base);
  if (n < 0 || n >= PATH_MAX) return fail("path too long", rel, ENAMETOOLONG);
  return 0;
}

static const char *rel_of(const char *path, const char *base) {
  size_t n = strlen(base);
  const char *rel = path + n;
  return *rel == '/' ? rel + 1 : rel;
}

static bool exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

/* ---------------------------------------------------------------- plan */

static bool excluded(const char *rel) {
  const char *base = strrchr(rel, '/');
  base = base ? base + 1 : rel;
  for (size_t i = 0; i < A.n_globs; i++) {
    if (pyro_glob_match(&A.globs[i], (const unsigned char *)rel, strlen(rel)) ||
        (base != rel && pyro_glob_match(&A.globs[i], (const unsigned char *)base, strlen(base))))
      return true;
  }
  return false;
}

static int plan_merge(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)ftw;
  (void)sb;
  const char *rel = rel_of(path, A.stage);
  if (!rel[0]) return FTW_CONTINUE; /* the stage root itself */
  char target[PATH_MAX];
  if (join(target, A.dest, rel) < 0) return FTW_STOP;
  struct stat tst;
  bool present = lstat(target, &tst) == 0;
  if (!present && errno != ENOENT && errno != ENOTDIR) return fail("cannot inspect", rel, errno), FTW_STOP;
  if (flag == FTW_D && present && S_ISDIR(tst.st_mode)) return FTW_CONTINUE; /* merge into it; it keeps its mode */
  if (present && plan('A', rel) < 0) return FTW_STOP;
  if (plan('P', rel) < 0) return FTW_STOP;
  if (present) A.replaced++;
  else A.added++;
  return flag == FTW_D ? FTW_SKIP_SUBTREE : FTW_CONTINUE; /* a new directory moves at once */
}

static int plan_delete(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  const char *rel = rel_of(path, A.dest);
  if (!rel[0]) return FTW_CONTINUE;
  if (excluded(rel)) return flag == FTW_D ? FTW_SKIP_SUBTREE : FTW_CONTINUE;
  char staged[PATH_MAX];
  if (join(staged, A.stage, rel) < 0) return FTW_STOP;
  struct stat st;
  if (lstat(staged, &st) == 0) {
    /* A directory the source replaces with a non-directory moves aside whole when merging. */
    if (flag == FTW_D && !S_ISDIR(st.st_mode)) return FTW_SKIP_SUBTREE;
    return FTW_CONTINUE;
  }
  if (errno != ENOENT && errno != ENOTDIR) return fail("cannot inspect", rel, errno), FTW_STOP;
  /* Not in the source: moved aside (and removed with the backup on success). */
  if (plan('A', rel) < 0) return FTW_STOP;
  A.deleted++;
  return flag == FTW_D ? FTW_SKIP_SUBTREE : FTW_CONTINUE;
}

/* Plans mkdir -p DEST under ROOT, refusing any component that is a symlink or not a directory. */
static int plan_dest(bool *dest_exists) {
  size_t rlen = strlen(A.root);
  if (strncmp(A.dest, A.root, rlen) != 0 || (A.dest[rlen] != '\0' && A.dest[rlen] != '/')) {
    snprintf(A.error, sizeof A.error, "destination \"%.200s\" is not under %.200s", A.dest, A.root);
    return -1;
  }
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s", A.dest) >= (int)sizeof path) return fail("path too long", A.dest, ENAMETOOLONG);
  if (strstr(path, "/../") || strstr(path, "/./") || (strlen(path) >= 3 && strcmp(path + strlen(path) - 3, "/..") == 0)) {
    snprintf(A.error, sizeof A.error, "destination \"%.300s\" must be a normalized path", A.dest);
    return -1;
  }
  *dest_exists = true;
  for (char *p = path + 1;; p++) {
    bool end = *p == '\0';
    if (*p != '/' && !end) continue;
    *p = '\0';
    struct stat st;
    if (lstat(path, &st) == 0) {
      if (S_ISLNK(st.st_mode)) {
        snprintf(A.error, sizeof A.error, "destination component \"%.300s\" is a symlink; a push never goes through symlinks", path);
        return -1;
      }
      if (!S_ISDIR(st.st_mode)) {
        snprintf(A.error, sizeof A.error, "destination component \"%.300s\" is not a directory", path);
        return -1;
      }
    } else if (errno == ENOENT && strlen(path) >= rlen) {
      *dest_exists = false;
      if (plan('M', path) < 0) return -1;
    } else {
      return fail("cannot inspect destination", path, errno);
    }
    if (end) break;
    *p = '/';
  }
  return 0;
}

/* ------------------------------------------------------------- journal */

static int fsync_dir_of(const char *path) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash) return 0;
  if (slash == dir) slash[1] = '\0';
  else *slash = '\0';
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

struct buf {
  char *p;
  size_t len, cap;
};

static int buf_add(struct buf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  return 0;
}

static int buf_str(struct buf *b, const char *s) { return buf_add(b, s, strlen(s) + 1); }

static int journal_write_plan(void) {
  struct buf b = {0};
  int rc = buf_add(&b, "PYROJ1", 7) | buf_str(&b, A.dest) | buf_str(&b, A.stage) | buf_str(&b, A.backup);
  for (size_t i = 0; i < A.n_ops && rc == 0; i++) rc = buf_add(&b, &A.ops[i].kind, 1) | buf_str(&b, A.ops[i].path);
  rc |= buf_add(&b, "E", 2);
  if (rc != 0) {
    free(b.p);
    return fail("out of memory writing", A.journal, ENOMEM);
  }
  int fd = open(A.journal, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    free(b.p);
    return fail("cannot create the journal", A.journal, errno);
  }
  if (write_all(fd, b.p, b.len) < 0 || fsync(fd) < 0) {
    int err = errno;
    close(fd);
    free(b.p);
    (void)unlink(A.journal);
    return fail("cannot write the journal", A.journal, err);
  }
  close(fd);
  free(b.p);
  if (fsync_dir_of(A.journal) < 0) return fail("cannot sync the journal's directory", A.journal, errno);
  return 0;
}

static int journal_commit(void) {
  int fd = open(A.journal, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return fail("cannot open the journal", A.journal, errno);
  if (write_all(fd, "C", 2) < 0 || fsync(fd) < 0) {
    int err = errno;
    close(fd);
    return fail("cannot commit the journal", A.journal, err);
  }
  close(fd);
  return 0;
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  if (flag == FTW_DP) (void)rmdir(path);
  else (void)unlink(path);
  return FTW_CONTINUE;
}

static void remove_tree(const char *path) {
  if (exists(path)) (void)nftw(path, remove_one, 64, FTW_PHYS | FTW_DEPTH | FTW_ACTIONRETVAL);
}

/* ------------------------------------------------------- execute, undo */

/* mkdir -p of B/dirname(rel). */
static int backup_parent(const char *rel) {
  char path[PATH_MAX];
  if (join(path, A.backup, rel) < 0) return -1;
  for (char *p = path + strlen(A.backup) + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(path, 0700) < 0 && errno != EEXIST) return fail("cannot create backup directory", path, errno);
    *p = '/';
  }
  return 0;
}

static int do_op(const struct op *op) {
  char from[PATH_MAX], to[PATH_MAX];
  switch (op->kind) {
  case 'M':
    if (mkdir(op->path, 0755) < 0 && errno != EEXIST) return fail("cannot create destination", op->path, errno);
    return 0;
  case 'A':
    if (join(from, A.dest, op->path) < 0 || join(to, A.backup, op->path) < 0 || backup_parent(op->path) < 0) return -1;
    if (rename(from, to) < 0) return fail("cannot move aside", op->path, errno);
    return 0;
  case 'P':
    if (join(from, A.stage, op->path) < 0 || join(to, A.dest, op->path) < 0) return -1;
    if (rename(from, to) < 0) return fail("cannot move into place", op->path, errno);
    return 0;
  default:
    return fail("unknown journal record", op->path, EINVAL);
  }
}

/* Undoes one step if it happened, judged from the filesystem: a placed path is
 * gone from S, a moved-aside path is in B (B and S are fresh for each push).
 * Returns -1 (with a message on stderr) when something could not be put back. */
static int undo_op(const struct op *op) {
  char d[PATH_MAX], other[PATH_MAX];
  if (op->kind == 'M') {
    (void)rmdir(op->path);
    return 0;
  }
  if (join(d, A.dest, op->path) < 0) return -1;
  if (op->kind == 'P') {
    if (join(other, A.stage, op->path) < 0) return -1;
    if (exists(other) || !exists(d)) return 0; /* never placed */
    if (rename(d, other) == 0) return 0;
    fprintf(stderr, "pyro-agent apply: rollback: cannot move back \"%s\": %s\n", op->path, strerror(errno));
    return -1;
  }
  if (join(other, A.backup, op->path) < 0) return -1;
  if (!exists(other)) return 0; /* never moved aside */
  if (rename(other, d) == 0) return 0;
  fprintf(stderr, "pyro-agent apply: rollback: cannot restore \"%s\": %s\n", op->path, strerror(errno));
  return -1;
}

static int undo_all(size_t upto) {
  int rc = 0;
  for (size_t i = upto; i-- > 0;)
    if (undo_op(&A.ops[i]) < 0) rc = -1;
  return rc;
}

/* After a rollback: B is removed only when everything was put back (else it
 * still holds originals, and J stays so the next apply retries). */
static void finish_rollback(int undo_rc) {
  if (undo_rc != 0) return;
  remove_tree(A.backup);
  remove_tree(A.stage);
  (void)unlink(A.journal);
  (void)fsync_dir_of(A.journal);
}

/* ------------------------------------------------------------ recovery */

static int recover(void) {
  int fd = open(A.journal, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    snprintf(A.error, sizeof A.error, "cannot open the journal %.200s: %.80s", A.journal, strerror(errno));
    return -1;
  }
  struct buf b = {0};
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      free(b.p);
      snprintf(A.error, sizeof A.error, "cannot read the journal: %.80s", strerror(errno));
      return -1;
    }
    if (n == 0) break;
    if (buf_add(&b, chunk, (size_t)n) < 0) {
      close(fd);
      free(b.p);
      snprintf(A.error, sizeof A.error, "out of memory reading the journal");
      return -1;
    }
  }
  close(fd);
  /* Split into NUL-terminated strings; a torn tail (no final NUL) is ignored. */
  const char *fields[4];
  size_t nf = 0, pos = 0;
  bool planned = false, committed = false;
  while (pos < b.len) {
    const char *s = b.p + pos;
    const char *nul = memchr(s, '\0', b.len - pos);
    if (!nul) break;
    pos = (size_t)(nul - b.p) + 1;
    if (nf < 4) {
      fields[nf++] = s;
      continue;
    }
    if (strcmp(s, "E") == 0) planned = true;
    else if (strcmp(s, "C") == 0) committed = planned;
    else if (!planned && (s[0] == 'M' || s[0] == 'A' || s[0] == 'P') && s[1]) {
      if (plan(s[0], s + 1) < 0) {
        free(b.p);
        return -1;
      }
    }
  }
  int rc = 0;
  if (nf == 4 && strcmp(fields[0], "PYROJ1") == 0 && planned) {
    A.dest = fields[1];
    A.stage = fields[2];
    A.backup = fields[3];
    if (committed) {
      fprintf(stderr, "pyro-agent apply: completing an interrupted push into %s (it had committed)\n", A.dest);
      remove_tree(A.backup);
      remove_tree(A.stage);
    } else {
      fprintf(stderr, "pyro-agent apply: rolling back an interrupted push into %s\n", A.dest);
      rc = undo_all(A.n_ops);
      if (rc == 0) remove_tree(A.backup);
      else snprintf(A.error, sizeof A.error, "an interrupted push into %.200s could not be rolled back completely; its originals are kept in %.200s", A.dest, A.backup);
    }
  }
  /* else: the plan never reached the disk whole, so nothing was changed. */
  if (rc == 0) {
    (void)unlink(A.journal);
    (void)fsync_dir_of(A.journal);
  }
  for (size_t i = 0; i < A.n_ops; i++) free(A.ops[i].path);
  A.n_ops = 0;
  A.added = A.replaced = A.deleted = 0;
  A.dest = A.stage = A.backup = NULL;
  free(b.p); /* the fields pointed into it: nothing uses them past here */
  return rc;
}

/* Recovers, then empties the stage root (stages of pushes that never applied). */
static int recover_and_sweep(const char *stage_root) {
  const char *dest = A.dest, *stage = A.stage, *backup = A.backup;
  if (recover() < 0) return -1;
  A.dest = dest, A.stage = stage, A.backup = backup;
  remove_tree(stage_root);
  return 0;
}

/* ------------------------------------------------------------- receive */

static int read_full(int fd, void *p, size_t n, size_t *got) {
  char *c = p;
  *got = 0;
  while (*got < n) {
    ssize_t r = read(fd, c + *got, n - *got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) return 0;
    *got += (size_t)r;
  }
  return 1;
}

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static int receive(void) {
  const char *stall = getenv("PYRO_RECEIVE_STALL_AFTER");
  long long stall_after = stall && *stall ? strtoll(stall, NULL, 10) : -1;
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return fail("cannot make a pipe for", "tar", errno);
  pid_t tar = fork();
  if (tar < 0) return fail("cannot start", "tar", errno);
  if (tar == 0) {
    dup2(p[0], 0);
    execlp("tar", "tar", "-x", "-f", "-", "-C", A.stage, (char *)NULL);
    fprintf(stderr, "pyro-agent apply: cannot run tar: %s\n", strerror(errno));
    _exit(127);
  }
  close(p[0]);
  /* Bigger pipes on both hops (agent -> us -> tar): fewer context switches per megabyte. */
  (void)fcntl(0, F_SETPIPE_SZ, 1 << 20);
  (void)fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
  struct sha256 h;
  sha256_init(&h);
  uint64_t total = 0;
  bool tar_gone = false, ended = false, bad = false;
  static unsigned char data[256 * 1024];
  for (;;) {
    unsigned char hdr[4];
    size_t got;
    if (read_full(0, hdr, 4, &got) <= 0) break;
    uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    if (len == 0) {
      ended = true;
      break;
    }
    if (len > MAX_FRAME) {
      bad = true;
      break;
    }
    while (len > 0) {
      size_t want = len < sizeof data ? len : sizeof data;
      if (read_full(0, data, want, &got) <= 0) {
        total += got;
        goto cut;
      }
      sha256_update(&h, data, want);
      total += want;
      len -= (uint32_t)want;
      if (stall_after >= 0 && (long long)total >= stall_after)
        for (;;) pause(); /* a test's stalled guest: the host's watchdog must end this */
      if (!tar_gone && write_all(p[1], data, want) < 0) tar_gone = true;
    }
  }
cut:;
  unsigned char trailer[40];
  size_t got = 0;
  bool complete = false;
  if (ended && read_full(0, trailer, sizeof trailer, &got) == 1) {
    uint8_t digest[32];
    sha256_final(&h, digest);
    complete = memcmp(digest, trailer, 32) == 0 && le64(trailer + 32) == total;
    if (!complete) bad = true;
  }
  close(p[1]);
  int status = 0;
  if (!complete) kill(tar, SIGKILL);
  while (waitpid(tar, &status, 0) < 0 && errno == EINTR) {}
  if (!complete) {
    if (bad)
      snprintf(A.error, sizeof A.error, "the pushed stream does not match the length and digest the host sent (%llu bytes received); nothing was applied", (unsigned long long)total);
    else
      snprintf(A.error, sizeof A.error, "the pushed stream ended after %llu bytes, before the host's end marker; nothing was applied", (unsigned long long)total);
    return -1;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    snprintf(A.error, sizeof A.error, "unpacking the pushed archive failed (tar %s %d); nothing was applied",
             WIFEXITED(status) ? "exited with" : "was killed by signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- main */

static int usage(void) {
  fprintf(stderr,
          "usage: pyro-agent apply --journal /J --stage /S --dest /D --backup /B --root /R [--receive] [--delete] [--exclude P]...\n"
          "       pyro-agent apply --recover --journal /J\n");
  return 2;
}

int apply_main(int argc, char **argv) {
  const char *inject = getenv("PYRO_APPLY_FAIL_AFTER");
  if (inject && *inject) fail_after = strtol(inject, NULL, 10);
  const char *crash = getenv("PYRO_APPLY_EXIT_AFTER");
  if (crash && *crash) exit_after = strtol(crash, NULL, 10);
  const char *hold = getenv("PYRO_APPLY_PAUSE_AFTER");
  if (hold && *hold) pause_after = strtol(hold, NULL, 10);
  signal(SIGPIPE, SIG_IGN);
  A.globs = calloc((size_t)argc, sizeof *A.globs);
  if (!A.globs) return 1;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(arg, "--delete") == 0) A.delete_missing = true;
    else if (strcmp(arg, "--receive") == 0) A.receive = true;
    else if (strcmp(arg, "--recover") == 0) A.recover_only = true;
    else if (!val) {
      fprintf(stderr, "pyro-agent apply: %s needs a value\n", arg);
      return 2;
    } else if (strcmp(arg, "--stage") == 0) A.stage = argv[++i];
    else if (strcmp(arg, "--dest") == 0) A.dest = argv[++i];
    else if (strcmp(arg, "--backup") == 0) A.backup = argv[++i];
    else if (strcmp(arg, "--root") == 0) A.root = argv[++i];
    else if (strcmp(arg, "--journal") == 0) A.journal = argv[++i];
    else if (strcmp(arg, "--exclude") == 0) {
      const char *why = "";
      if (pyro_glob_compile(&A.globs[A.n_globs], argv[++i], &why) < 0) {
        fprintf(stderr, "pyro-agent apply: exclude pattern \"%.300s\" is invalid: %s\n", argv[i], why);
        return 2;
      }
      A.n_globs++;
    } else {
      fprintf(stderr, "pyro-agent apply: unknown option %s\n", arg);
      return 2;
    }
  }
  if (!A.journal || A.journal[0] != '/' || !strrchr(A.journal + 1, '/')) return usage();
  char stage_root[PATH_MAX];
  snprintf(stage_root, sizeof stage_root, "%s", A.journal);
  *strrchr(stage_root, '/') = '\0';
  umask(022);

  /* One apply at a time per sandbox: a recovery must never run beside an apply the host gave
   * up on but the sandbox has not killed yet. The lock dies with its holder. */
  char lock_path[PATH_MAX + 8];
  snprintf(lock_path, sizeof lock_path, "%s.lock", stage_root);
  int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX) < 0) {
    fprintf(stderr, "pyro-agent apply: cannot lock %s: %s\n", lock_path, strerror(errno));
    return 1;
  }

  if (A.recover_only) {
    if (recover_and_sweep(stage_root) < 0) {
      fprintf(stderr, "pyro-agent apply: %s\n", A.error);
      return 1;
    }
    return 0;
  }
  if (!A.stage || !A.dest || !A.backup || !A.root || A.stage[0] != '/' || A.dest[0] != '/' || A.backup[0] != '/' || A.root[0] != '/')
    return usage();
  if (recover_and_sweep(stage_root) < 0) {
    fprintf(stderr, "pyro-agent apply: %s; the workspace was not changed by this push\n", A.error);
    return 1;
  }
  if (mkdir(stage_root, 0700) < 0 && errno != EEXIST) {
    fprintf(stderr, "pyro-agent apply: cannot create %s: %s\n", stage_root, strerror(errno));
    return 1;
  }
  if (A.receive) {
    if (mkdir(A.stage, 0755) < 0) {
      fprintf(stderr, "pyro-agent apply: cannot create %s: %s\n", A.stage, strerror(errno));
      return 1;
    }
    if (receive() < 0) {
      remove_tree(stage_root);
      fprintf(stderr, "pyro-agent apply: %s\n", A.error);
      return 3;
    }
  }
  if (mkdir(A.backup, 0700) < 0) {
    fprintf(stderr, "pyro-agent apply: cannot create %s: %s\n", A.backup, strerror(errno));
    remove_tree(stage_root);
    return 1;
  }
  bool dest_exists = false;
  int rc = plan_dest(&dest_exists);
  /* Deletions are decided first, while the stage still holds every pushed path. */
  if (rc == 0 && A.delete_missing && dest_exists) rc = nftw(A.dest, plan_delete, 64, FTW_PHYS | FTW_ACTIONRETVAL) == 0 ? 0 : -1;
  if (rc == 0) rc = nftw(A.stage, plan_merge, 64, FTW_PHYS | FTW_ACTIONRETVAL) == 0 ? 0 : -1;
  if (rc == 0) rc = journal_write_plan();
  if (rc != 0) {
    if (!A.error[0]) snprintf(A.error, sizeof A.error, "walking the staged tree failed: %s", strerror(errno));
    remove_tree(stage_root);
    fprintf(stderr, "pyro-agent apply: %s; the destination was left as it was\n", A.error);
    return 1;
  }
  crash_point();
  size_t done = 0;
  for (; done < A.n_ops; done++) {
    if (fail_after >= 0 && (long)done >= fail_after) {
      fail("injected failure (PYRO_APPLY_FAIL_AFTER) at", A.ops[done].path, EIO);
      break;
    }
    if (do_op(&A.ops[done]) < 0) break;
    crash_point();
  }
  if (done < A.n_ops) {
    int undo_rc = undo_all(done + 1);
    finish_rollback(undo_rc);
    fprintf(stderr, "pyro-agent apply: %s; %s\n", A.error,
            undo_rc == 0 ? "the destination was left as it was" : "the rollback was incomplete and will be retried by the next push");
    return 1;
  }
  if (journal_commit() < 0) {
    int undo_rc = undo_all(A.n_ops);
    finish_rollback(undo_rc);
    fprintf(stderr, "pyro-agent apply: %s; the destination was left as it was\n", A.error);
    return 1;
  }
  crash_point();
  remove_tree(A.backup);
  crash_point();
  remove_tree(A.stage);
  crash_point();
  (void)unlink(A.journal);
  (void)fsync_dir_of(A.journal);
  remove_tree(stage_root);
  printf("{\"added\":%zu,\"replaced\":%zu,\"deleted\":%zu}\n", A.added, A.replaced, A.deleted);
  return 0;
}
