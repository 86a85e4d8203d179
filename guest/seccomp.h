/* pyro-agent: the seccomp filter every command runs under. */
#ifndef PYRO_SECCOMP_H
#define PYRO_SECCOMP_H

/* Sets no_new_privs and installs the filter on the calling thread.
 * Returns 0, or -1 with errno set. Called in the command's child right
 * before execve. */
int seccomp_install(void);

#endif
