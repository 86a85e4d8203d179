/* pyro-agent: killing and reaping a whole process tree. */
#ifndef PYRO_PROCTREE_H
#define PYRO_PROCTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef void (*reap_fn)(pid_t pid, int status, void *ctx);

/* Reaps every child that has exited, without blocking; calls on_reap (may be
 * NULL) for each. Returns the number reaped, or -1 when there is no child
 * left at all (ECHILD). */
int reap_children(reap_fn on_reap, void *ctx);

/* SIGKILLs every child of the caller, reaps, and repeats until waitpid says
 * ECHILD (returns 0) or deadline_ms (CLOCK_MONOTONIC) passes (returns -1).
 * The caller must be a child subreaper or PID 1: then every grandchild
 * re-parents to it as its parent dies, so repeating "kill my children" ends
 * with the whole tree gone, double-forked daemons included. Children are
 * found through /proc (ppid field of /proc/PID/stat); between a scan and its
 * kill() no pid can be reused, because a child stays a zombie until we reap
 * it, and we only reap after the kills. */
int kill_descendants(int64_t deadline_ms, reap_fn on_reap, void *ctx);

/* SIGKILLs every child of the caller for which keep(pid) is false; returns
 * how many were signalled, or -1 when /proc cannot be read. */
int kill_children_except(bool (*keep)(pid_t pid, void *ctx), void *ctx);

/* /proc/PID/stat read into buf (cap bytes): what follows the command, from
 * field 3 on ("S PPID ..."), or NULL when it cannot be read. The command
 * (field 2) may hold spaces and parentheses: it ends at the last ')'. */
const char *proc_stat_fields(pid_t pid, char *buf, size_t cap);

/* The parent pid of PID (field 4 of /proc/PID/stat), or -1. */
pid_t proc_parent_of(pid_t pid);

#endif
