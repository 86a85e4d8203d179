/* pyro-agent apply: move a staged tree into place, all or nothing.
 *
 *   pyro-agent apply --stage S --dest D --backup B --root R [--delete] [--exclude PATTERN]...
 *
 * The host unpacks a checked archive into the staging directory S (on the
 * same filesystem as D). This step then merges S into D:
 *   - a path new to D is renamed into place (a whole new directory at once);
 *   - a path D already has is first renamed aside into B, then replaced;
 *   - with --delete, paths of D that S lacks (and no --exclude pattern
 *     matches) are renamed aside into B.
 * Every rename is journaled in memory. If any step fails, the journal is
 * undone in reverse order and D is exactly as it was; the exit status is 1
 * and one line on stderr says what failed. On success B and S are removed
 * and one JSON line on stdout counts what changed.
 *
 * D must resolve to R or a directory under R (e.g. /workspace), and no
 * component of D may be a symlink: a push never lands outside the workspace,
 * whatever the workspace contains.
 */
#define _GNU_SOURCE
#include "apply.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum op_kind { OP_PLACED, OP_MOVED_ASIDE, OP_MKDIR };

struct op {
  enum op_kind kind;
  char *rel; /* path relative to D; absolute for OP_MKDIR */
};

static struct {
  const char *stage;
  const char *dest;
  const char *backup;
  const char *root;
  bool delete_missing;
  const char **excludes;
  size_t n_excludes;
  struct op *ops;
  size_t n_ops, cap_ops;
  size_t added, replaced, deleted;
  char error[512];
} A;

#define MAX_OPS 2000000

static int fail(const char *what, const char *rel, int err) {
  if (!A.error[0])
    snprintf(A.error, sizeof A.error, "%.100s \"%.300s\": %.80s", what, rel, strerror(err));
  return -1;
}

/* Tests prove the rollback by making the Nth change fail (PYRO_APPLY_FAIL_AFTER=N in the command's env). */
static long fail_after = -1;

static int journal(enum op_kind kind, const char *rel) {
  if (fail_after >= 0 && (long)A.n_ops >= fail_after) return fail("injected failure (PYRO_APPLY_FAIL_AFTER) at", rel, EIO);
  if (A.n_ops == A.cap_ops) {
    size_t cap = A.cap_ops ? A.cap_ops * 2 : 256;
    if (cap > MAX_OPS) return fail("too many changes at", rel, E2BIG);
    struct op *n = realloc(A.ops, cap * sizeof *n);
    if (!n) return fail("out of memory at", rel, ENOMEM);
    A.ops = n;
    A.cap_ops = cap;
  }
  char *copy = strdup(rel);
  if (!copy) return fail("out of memory at", rel, ENOMEM);
  A.ops[A.n_ops].kind = kind;
  A.ops[A.n_ops].rel = copy;
  A.n_ops++;
  return 0;
}

/* Drops the newest journal entry: its rename did not happen. */
static void unjournal(void) {
  A.n_ops--;
  free(A.ops[A.n_ops].rel);
}

static int join(char *out, const char *base, const char *rel) {
  int n = rel[0] ? snprintf(out, PATH_MAX, "%s/%s", base, rel) : snprintf(out, PATH_MAX, "%s", base);
  if (n < 0 || n >= PATH_MAX) return fail("path too long", rel, ENAMETOOLONG);
  return 0;
}

/* mkdir -p of B/dirname(rel), journaled so rollback and cleanup need nothing else. */
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

static int move_aside(const char *rel) {
  char from[PATH_MAX], to[PATH_MAX];
  if (join(from, A.dest, rel) < 0 || join(to, A.backup, rel) < 0 || backup_parent(rel) < 0) return -1;
  /* Journal first, so that no rename can happen that the rollback would not know of. */
  if (journal(OP_MOVED_ASIDE, rel) < 0) return -1;
  if (rename(from, to) < 0) return unjournal(), fail("cannot move aside", rel, errno);
  return 0;
}

static int place(const char *rel) {
  char from[PATH_MAX], to[PATH_MAX];
  if (join(from, A.stage, rel) < 0 || join(to, A.dest, rel) < 0) return -1;
  if (journal(OP_PLACED, rel) < 0) return -1;
  if (rename(from, to) < 0) return unjournal(), fail("cannot move into place", rel, errno);
  return 0;
}

static const char *rel_of(const char *path, const char *base) {
  size_t n = strlen(base);
  const char *rel = path + n;
  return *rel == '/' ? rel + 1 : rel;
}

static int merge_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)ftw;
  (void)sb;
  const char *rel = rel_of(path, A.stage);
  if (!rel[0]) return FTW_CONTINUE; /* the stage root itself */
  char target[PATH_MAX];
  if (join(target, A.dest, rel) < 0) return FTW_STOP;
  struct stat tst;
  bool exists = lstat(target, &tst) == 0;
  if (!exists && errno != ENOENT) return fail("cannot inspect", rel, errno), FTW_STOP;
  if (flag == FTW_D) {
    /* Merge into an existing directory (it keeps its own mode, so a rollback has nothing to restore). */
    if (exists && S_ISDIR(tst.st_mode)) return FTW_CONTINUE;
    if (exists && move_aside(rel) < 0) return FTW_STOP;
    if (place(rel) < 0) return FTW_STOP;
    if (exists) A.replaced++;
    else A.added++;
    return FTW_SKIP_SUBTREE; /* the whole new directory moved at once */
  }
  if (exists && move_aside(rel) < 0) return FTW_STOP;
  if (place(rel) < 0) return FTW_STOP;
  if (exists) A.replaced++;
  else A.added++;
  return FTW_CONTINUE;
}

static bool excluded(const char *rel) {
  const char *base = strrchr(rel, '/');
  base = base ? base + 1 : rel;
  for (size_t i = 0; i < A.n_excludes; i++) {
    if (fnmatch(A.excludes[i], rel, 0) == 0 || fnmatch(A.excludes[i], base, 0) == 0) return true;
  }
  return false;
}

static int delete_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  (void)flag;
  const char *rel = rel_of(path, A.dest);
  if (!rel[0]) return FTW_CONTINUE;
  if (excluded(rel)) return flag == FTW_D ? FTW_SKIP_SUBTREE : FTW_CONTINUE;
  char staged[PATH_MAX];
  if (join(staged, A.stage, rel) < 0) return FTW_STOP;
  struct stat st;
  if (lstat(staged, &st) == 0) return FTW_CONTINUE;
  /* Not in the source: moved aside (and removed with the backup on success). */
  if (move_aside(rel) < 0) return FTW_STOP;
  A.deleted++;
  return flag == FTW_D ? FTW_SKIP_SUBTREE : FTW_CONTINUE;
}

static void rollback(void) {
  for (size_t i = A.n_ops; i-- > 0;) {
    char d[PATH_MAX], other[PATH_MAX];
    const struct op *op = &A.ops[i];
    if (op->kind == OP_MKDIR) {
      (void)rmdir(op->rel);
      continue;
    }
    if (join(d, A.dest, op->rel) < 0) continue;
    if (op->kind == OP_PLACED) {
      if (join(other, A.stage, op->rel) == 0 && rename(d, other) < 0)
        fprintf(stderr, "pyro-agent apply: rollback: cannot move back \"%s\": %s\n", op->rel, strerror(errno));
    } else if (op->kind == OP_MOVED_ASIDE) {
      if (join(other, A.backup, op->rel) == 0 && rename(other, d) < 0)
        fprintf(stderr, "pyro-agent apply: rollback: cannot restore \"%s\": %s\n", op->rel, strerror(errno));
    }
  }
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  if (flag == FTW_DP) (void)rmdir(path);
  else (void)unlink(path);
  return FTW_CONTINUE;
}

static void remove_tree(const char *path) {
  (void)nftw(path, remove_one, 64, FTW_PHYS | FTW_DEPTH | FTW_ACTIONRETVAL);
}

/* mkdir -p DEST under ROOT, refusing any component that is a symlink or not a directory. */
static int prepare_dest(void) {
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
      if (mkdir(path, 0755) < 0) return fail("cannot create destination", path, errno);
      if (journal(OP_MKDIR, path) < 0) return -1;
    } else {
      return fail("cannot inspect destination", path, errno);
    }
    if (end) break;
    *p = '/';
  }
  return 0;
}

int apply_main(int argc, char **argv) {
  const char *inject = getenv("PYRO_APPLY_FAIL_AFTER");
  if (inject && *inject) fail_after = strtol(inject, NULL, 10);
  A.excludes = calloc((size_t)argc, sizeof *A.excludes);
  if (!A.excludes) return 1;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(arg, "--delete") == 0) A.delete_missing = true;
    else if (!val) {
      fprintf(stderr, "pyro-agent apply: %s needs a value\n", arg);
      return 2;
    } else if (strcmp(arg, "--stage") == 0) A.stage = argv[++i];
    else if (strcmp(arg, "--dest") == 0) A.dest = argv[++i];
    else if (strcmp(arg, "--backup") == 0) A.backup = argv[++i];
    else if (strcmp(arg, "--root") == 0) A.root = argv[++i];
    else if (strcmp(arg, "--exclude") == 0) A.excludes[A.n_excludes++] = argv[++i];
    else {
      fprintf(stderr, "pyro-agent apply: unknown option %s\n", arg);
      return 2;
    }
  }
  if (!A.stage || !A.dest || !A.backup || !A.root || A.stage[0] != '/' || A.dest[0] != '/' || A.backup[0] != '/' || A.root[0] != '/') {
    fprintf(stderr, "usage: pyro-agent apply --stage /S --dest /D --backup /B --root /R [--delete] [--exclude P]...\n");
    return 2;
  }
  if (mkdir(A.backup, 0700) < 0) {
    fprintf(stderr, "pyro-agent apply: cannot create %s: %s\n", A.backup, strerror(errno));
    return 1;
  }
  int rc = prepare_dest();
  /* Deletions are decided first, while the stage still holds every pushed path. */
  if (rc == 0 && A.delete_missing) rc = nftw(A.dest, delete_one, 64, FTW_PHYS | FTW_ACTIONRETVAL) == 0 ? 0 : -1;
  if (rc == 0) rc = nftw(A.stage, merge_one, 64, FTW_PHYS | FTW_ACTIONRETVAL) == 0 ? 0 : -1;
  if (rc != 0) {
    if (!A.error[0]) snprintf(A.error, sizeof A.error, "walking the staged tree failed: %s", strerror(errno));
    rollback();
    remove_tree(A.backup);
    fprintf(stderr, "pyro-agent apply: %s; the destination was left as it was\n", A.error);
    return 1;
  }
  remove_tree(A.backup);
  remove_tree(A.stage);
  printf("{\"added\":%zu,\"replaced\":%zu,\"deleted\":%zu}\n", A.added, A.replaced, A.deleted);
  return 0;
}
