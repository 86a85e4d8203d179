/* pyro-agent: the seccomp filter, hand-written classic BPF.
 *
 * The sandbox's commands run as root of a user namespace with every
 * capability in it; the namespaces are the boundary. This filter removes the
 * kernel interfaces that widen the attack surface of that boundary (module
 * loading, kexec, bpf, perf, userfaultfd, keyrings, new namespaces and mounts,
 * file handles, io_uring) and returns EPERM for them, so programs see an ordinary
 * "not permitted" rather than dying. It also refuses io_setup: the events of
 * every AIO context on the host count against one total (fs.aio-max-nr,
 * 65536 by default) with no share per user or namespace, so one sandbox
 * holding them all made every io_setup on the host fail (databases, qemu's
 * aio=native); programs fall back to threads, as on a kernel without AIO.
 *
 * Layout of the program:
 *   1. load arch; x86_64 -> X86 block, aarch64 -> ARM block, else KILL;
 *   2. per arch: load nr; the x32 ABI (nr >= 0x40000000) gets ENOSYS so it
 *      cannot be used to reach a blocked call under another number;
 *   3. a list of "nr == N -> EPERM", then the special cases:
 *      clone with any CLONE_NEW* flag -> EPERM, clone3 -> ENOSYS (its flags live in
 *      memory that BPF cannot read; libc falls back to clone), personality
 *      other than PER_LINUX / query -> EPERM;
 *   4. ALLOW.
 * Syscall numbers are written out per arch (so the filter for both arches
 * builds on either) and checked against the system headers where they apply.
 */
#define _GNU_SOURCE
#include "seccomp.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "util.h"

#ifndef AUDIT_ARCH_AARCH64
#define AUDIT_ARCH_AARCH64 (EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE)
#endif
#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#endif

#define X32_SYSCALL_BIT 0x40000000U

/* Calls answered with EPERM on x86_64. */
static const uint32_t x86_64_eperm[] = {
    246, /* kexec_load */
    320, /* kexec_file_load */
    175, /* init_module */
    313, /* finit_module */
    176, /* delete_module */
    321, /* bpf */
    298, /* perf_event_open */
    323, /* userfaultfd */
    250, /* keyctl */
    248, /* add_key */
    249, /* request_key */
    304, /* open_by_handle_at */
    303, /* name_to_handle_at */
    430, /* fsopen */
    431, /* fsconfig */
    432, /* fsmount */
    433, /* fspick */
    429, /* move_mount */
    428, /* open_tree */
    442, /* mount_setattr */
    467, /* open_tree_attr (6.15) */
    165, /* mount */
    166, /* umount2 */
    155, /* pivot_root */
    167, /* swapon */
    168, /* swapoff */
    169, /* reboot */
    103, /* syslog */
    163, /* acct */
    179, /* quotactl */
    443, /* quotactl_fd */
    308, /* setns */
    272, /* unshare */
    172, /* iopl */
    173, /* ioperm */
    425, /* io_uring_setup: its own syscall-like interface, which this filter cannot see */
    426, /* io_uring_enter */
    427, /* io_uring_register */
    206, /* io_setup: every AIO context counts against one host-wide total (fs.aio-max-nr) */
};
#define X86_64_CLONE 56
#define X86_64_CLONE3 435
#define X86_64_PERSONALITY 135

/* Calls answered with EPERM on aarch64 (asm-generic numbers). */
static const uint32_t aarch64_eperm[] = {
    104, /* kexec_load */
    294, /* kexec_file_load */
    105, /* init_module */
    273, /* finit_module */
    106, /* delete_module */
    280, /* bpf */
    241, /* perf_event_open */
    282, /* userfaultfd */
    219, /* keyctl */
    217, /* add_key */
    218, /* request_key */
    265, /* open_by_handle_at */
    264, /* name_to_handle_at */
    430, /* fsopen */
    431, /* fsconfig */
    432, /* fsmount */
    433, /* fspick */
    429, /* move_mount */
    428, /* open_tree */
    442, /* mount_setattr */
    467, /* open_tree_attr */
    40,  /* mount */
    39,  /* umount2 */
    41,  /* pivot_root */
    224, /* swapon */
    225, /* swapoff */
    142, /* reboot */
    116, /* syslog */
    89,  /* acct */
    60,  /* quotactl */
    443, /* quotactl_fd */
    268, /* setns */
    97,  /* unshare */
    425, /* io_uring_setup */
    426, /* io_uring_enter */
    427, /* io_uring_register */
    0,   /* io_setup */
};
#define AARCH64_CLONE 220
#define AARCH64_CLONE3 435
#define AARCH64_PERSONALITY 92

#if defined(__x86_64__)
_Static_assert(__NR_mount == 165 && __NR_unshare == 272 && __NR_bpf == 321 &&
                   __NR_clone == X86_64_CLONE && __NR_clone3 == X86_64_CLONE3 &&
                   __NR_personality == X86_64_PERSONALITY &&
                   __NR_kexec_file_load == 320 && __NR_setns == 308 &&
                   __NR_quotactl_fd == 443 && __NR_iopl == 172 && __NR_io_setup == 206,
               "x86_64 syscall numbers");
#elif defined(__aarch64__)
_Static_assert(__NR_mount == 40 && __NR_unshare == 97 && __NR_bpf == 280 &&
                   __NR_clone == AARCH64_CLONE && __NR_clone3 == AARCH64_CLONE3 &&
                   __NR_personality == AARCH64_PERSONALITY &&
                   __NR_kexec_file_load == 294 && __NR_setns == 268 && __NR_io_setup == 0,
               "aarch64 syscall numbers");
#endif

#define PER_LINUX_QUERY 0xffffffffU

/* Every namespace clone() can create (CLONE_NEWTIME exists only for
 * unshare and clone3, both refused). */
#define CLONE_NEW_ANY                                                                     \
  (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |          \
   CLONE_NEWPID | CLONE_NEWNET)

/* Program size: header 4 + per arch (3 + 2*list + 8) + returns 4. */
#define MAX_INSNS 256

struct prog {
  struct sock_filter insn[MAX_INSNS];
  unsigned n;
  bool overflow;
};

static unsigned emit(struct prog *p, struct sock_filter f) {
  if (p->n >= MAX_INSNS) {
    p->overflow = true;
    return p->n;
  }
  p->insn[p->n] = f;
  return p->n++;
}

/* Jump targets are resolved by placing the shared return statements at
 * fixed positions at the end of each arch block; each block is emitted by
 * this function and is self-contained (returns inline). */
static void emit_arch_block(struct prog *p, const uint32_t *eperm, size_t n,
                            uint32_t nr_clone, uint32_t nr_clone3,
                            uint32_t nr_personality, bool has_x32) {
  const struct sock_filter ret_allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  const struct sock_filter ret_eperm =
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
  const struct sock_filter ret_enosys =
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA));

  emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                       offsetof(struct seccomp_data, nr)));
  if (has_x32) {
    /* nr >= X32 bit: ENOSYS (skip the return when below). */
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K,
                                         X32_SYSCALL_BIT, 0, 1));
    emit(p, ret_enosys);
  }
  for (size_t i = 0; i < n; i++) {
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, eperm[i], 0, 1));
    emit(p, ret_eperm);
  }
  /* clone3: ENOSYS. */
  emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr_clone3, 0, 1));
  emit(p, ret_enosys);
  /* clone: flags are args[0]; only the low 32 bits hold CLONE_* bits. */
  emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr_clone, 0, 4));
  emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                       offsetof(struct seccomp_data, args[0])));
  emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEW_ANY, 0, 1));
  emit(p, ret_eperm);
  emit(p, ret_allow);
  /* personality: only PER_LINUX (0) and the query value (0xffffffff). The
   * kernel takes an unsigned int, so the low word is the whole argument. */
  emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr_personality, 0, 5));
  emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                       offsetof(struct seccomp_data, args[0])));
  emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, 0));
  emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PER_LINUX_QUERY, 1, 0));
  emit(p, ret_eperm);
  emit(p, ret_allow);
  /* Everything else. */
  emit(p, ret_allow);
}

/* Offsets in struct seccomp_data are little-endian words on both arches:
 * args[0] low word is at offsetof(args[0]). */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the filter loads the low word of args at offsetof(args[i])");

int seccomp_install(void) {
  static struct prog p;
  p.n = 0;
  p.overflow = false;

  /* Header: arch dispatch. Jump offsets to the ARM block are patched below. */
  emit(&p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        offsetof(struct seccomp_data, arch)));
  unsigned j_x86 = emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                          AUDIT_ARCH_X86_64, 0, 0));
  unsigned j_arm = emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                          AUDIT_ARCH_AARCH64, 0, 0));
  emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));

  unsigned x86_start = p.n;
  emit_arch_block(&p, x86_64_eperm, N_ELEMENTS(x86_64_eperm), X86_64_CLONE,
                  X86_64_CLONE3, X86_64_PERSONALITY, true);
  unsigned arm_start = p.n;
  emit_arch_block(&p, aarch64_eperm, N_ELEMENTS(aarch64_eperm), AARCH64_CLONE,
                  AARCH64_CLONE3, AARCH64_PERSONALITY, false);
  if (p.overflow || x86_start - j_x86 - 1 > 255 || arm_start - j_arm - 1 > 255) {
    errno = E2BIG;
    return -1;
  }
  p.insn[j_x86].jt = (uint8_t)(x86_start - j_x86 - 1);
  p.insn[j_arm].jt = (uint8_t)(arm_start - j_arm - 1);

  struct sock_fprog fprog = {.len = (unsigned short)p.n, .filter = p.insn};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return -1;
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) != 0)
    return -1;
  return 0;
}
