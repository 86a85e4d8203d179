/* pyro-agent: the VM's settings, read from the kernel command line.
 *
 * The host's qemu or firecracker driver puts them there (docs/protocol.md,
 * "VM boot"). Pure functions over a string, unit-tested in
 * tests/test_vmcfg.c: /proc/cmdline is written by the host, so every value
 * is bounds-checked and anything unexpected under "pyro." is an error.
 */
#ifndef PYRO_VMCFG_H
#define PYRO_VMCFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VMCFG_DEFAULT_PORT "org.pyro.agent"
/* /proc/cmdline is at most a page on x86 (COMMAND_LINE_SIZE 2048 there). */
#define VMCFG_CMDLINE_MAX 4096

struct vmcfg {
  char root[33];       /* pyro.root: a /dev/ block device, read-only ext4 */
  char data[33];       /* pyro.data=/dev/...: a writable ext4 disk; "" in RAM mode */
  unsigned data_ram_mib; /* pyro.data=ram:<MiB>: a tmpfs of that size; 0 with a disk */
  char port[64];       /* pyro.port: the virtio-serial port's name */
  unsigned vsock_port; /* pyro.vsock: listen on AF_VSOCK instead; 0 = serial */
  char hostname[65];   /* pyro.hostname; "" = leave the kernel's */
  unsigned pids_max;   /* pyro.pids_max; 0 = no limit */
  unsigned shm_mib;    /* pyro.shm_mib: size of /dev/shm and /run; 0 = kernel default */
  /* The network the host's user-mode stack (passt) serves, given explicitly:
   * passt's defaults copy the host's own address and gateway. */
  bool net;            /* pyro.ip was given: configure the first ethernet interface */
  uint32_t ip;         /* pyro.ip=A.B.C.D/PREFIX: the guest's address (network order) */
  unsigned prefix;     /*   its prefix length, 8..30 */
  uint32_t gw;         /* pyro.gw=A.B.C.D: the default route's gateway (required with pyro.ip) */
  uint32_t dns;        /* pyro.dns=A.B.C.D: the resolver for /etc/resolv.conf; 0 = none */
  /* pyro.warm=1: a snapshot's template runs the environment's shell once
   * before it serves, so the restored VMs' first command finds it in the
   * guest's page cache (vminit.c warm_up). 0 or absent = not. */
  bool warm;
  /* pyro.port_poll_ms=N: the idle serial port's backstop poll (agent.c
   * PORT_POLL_MS; the port's edge is what normally wakes the agent). 0 or
   * absent = the default. The tests set it high to prove the edge alone
   * brings a host in. */
  unsigned port_poll_ms;
};

/* Parses every pyro.* word of cmdline (the kernel's quoting rules: double
 * quotes group, "--" ends the kernel's part). pyro.root and pyro.data are
 * required. Returns 0, or -1 with a one-line message in err naming the
 * setting and what it accepts. */
int vmcfg_parse(const char *cmdline, struct vmcfg *cfg, char *err, size_t errlen);

/* Collects the "<module>.<param>=<value>" words of cmdline for one module
 * (a '-' and a '_' in module names are the same, as for the kernel) into
 * out as "param=value param2=value2", the form finit_module(2) takes.
 * Returns 0, or -1 when they do not fit in outlen. */
int vmcfg_module_params(const char *cmdline, const char *module, char *out, size_t outlen);

#endif
