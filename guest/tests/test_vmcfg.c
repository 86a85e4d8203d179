/* Unit test of the VM's kernel command line parser (vmcfg.c), TAP output. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "vmcfg.h"

static char err[256];

static int parse(const char *cmdline, struct vmcfg *cfg) {
  err[0] = '\0';
  return vmcfg_parse(cmdline, cfg, err, sizeof err);
}

static void test_settings(void) {
  struct vmcfg c;
  ok(parse("console=ttyS0 quiet pyro.root=/dev/vda pyro.data=/dev/vdb", &c) == 0 &&
         strcmp(c.root, "/dev/vda") == 0 && strcmp(c.data, "/dev/vdb") == 0 &&
         c.data_ram_mib == 0 && strcmp(c.port, "org.pyro.agent") == 0 && c.vsock_port == 0 &&
         c.hostname[0] == '\0' && c.pids_max == 0 && c.shm_mib == 0 && !c.warm && c.port_poll_ms == 0,
     "root and data disks, the rest defaults");
  ok(parse("pyro.root=/dev/vda pyro.data=ram:64 pyro.port=org.x-y_1 pyro.vsock=52 "
           "pyro.hostname=vm-1.local pyro.pids_max=512 pyro.shm_mib=32 pyro.warm=1 pyro.port_poll_ms=60000\n",
           &c) == 0 &&
         c.data[0] == '\0' && c.data_ram_mib == 64 && strcmp(c.port, "org.x-y_1") == 0 &&
         c.vsock_port == 52 && strcmp(c.hostname, "vm-1.local") == 0 && c.pids_max == 512 &&
         c.shm_mib == 32 && c.warm && c.port_poll_ms == 60000,
     "every setting, trailing newline as in /proc/cmdline");
  ok(parse("pyro.root=\"/dev/vda\" pyro.data=/dev/vdb", &c) == 0 && strcmp(c.root, "/dev/vda") == 0,
     "kernel quotes are removed");
  ok(parse("pyro.root=/dev/vda pyro.data=/dev/vdb -- pyro.root=junk", &c) == 0,
     "words after -- belong to init, not to us");
  ok(parse("pyro.root=/dev/vda", &c) < 0 && strstr(err, "pyro.data is missing") != NULL,
     "pyro.data is required: %s", err);
  ok(parse("pyro.data=ram:8", &c) < 0 && strstr(err, "pyro.root is missing") != NULL,
     "pyro.root is required");
  static const char *const bad[] = {
      "pyro.root=/dev/../etc pyro.data=ram:8", "pyro.root=vda pyro.data=ram:8",
      "pyro.root=/dev/vda pyro.data=ram:0",    "pyro.root=/dev/vda pyro.data=ram:1048577",
      "pyro.root=/dev/vda pyro.data=ram:-1",   "pyro.root=/dev/vda pyro.data=ram:8x",
      "pyro.root=/dev/vda pyro.data=/dev/vda", "pyro.root=/dev/vda pyro.data=ram:8 pyro.vsock=0",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.vsock=4294967295",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.pids_max=15",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.pids_max=99999999999999999999",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.shm_mib=",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.warm=2",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.warm=yes",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.warm=1 pyro.warm=1",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.port_poll_ms=9",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.port_poll_ms=600001",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.hostname=a_b",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.port=a/b",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.rooot=/dev/vdc",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.root=/dev/vdc",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.hostname",
      "pyro.root=/dev/vda pyro.data=ram:8 pyro.hostname=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ok(parse(bad[i], &c) < 0 && (strncmp(err, "bad kernel command line: pyro.", 30) == 0 ||
                                 strstr(err, "unknown setting pyro.rooot") != NULL),
       "refused: %s -> %s", bad[i], err);
}

static void test_network(void) {
  struct vmcfg c;
  ok(parse("pyro.root=/dev/vda pyro.data=ram:8", &c) == 0 && !c.net, "no pyro.ip: no network");
  ok(parse("pyro.root=/dev/vda pyro.data=ram:8 pyro.ip=10.0.2.15/24 pyro.gw=10.0.2.2 pyro.dns=10.0.2.3", &c) == 0 &&
         c.net && c.ip == htonl(0x0A00020Fu) && c.prefix == 24 && c.gw == htonl(0x0A000202u) &&
         c.dns == htonl(0x0A000203u),
     "address, prefix, gateway, resolver");
  ok(parse("pyro.root=/dev/vda pyro.data=ram:8 pyro.ip=10.0.2.15/24 pyro.gw=10.0.2.2", &c) == 0 && c.net && c.dns == 0,
     "the resolver is optional");
  static const char *const bad[] = {
      "pyro.ip=10.0.2.15/24",                            /* no gateway */
      "pyro.gw=10.0.2.2",                                /* a gateway without an address */
      "pyro.dns=10.0.2.3",                               /* a resolver without an address */
      "pyro.ip=10.0.2.15 pyro.gw=10.0.2.2",              /* no prefix */
      "pyro.ip=10.0.2.15/31 pyro.gw=10.0.2.14",          /* prefix out of range */
      "pyro.ip=10.0.2.15/7 pyro.gw=10.0.2.2",
      "pyro.ip=10.0.2.15/24x pyro.gw=10.0.2.2",
      "pyro.ip=010.0.2.15/24 pyro.gw=10.0.2.2",          /* octal-looking forms are not addresses */
      "pyro.ip=10.2.15/24 pyro.gw=10.0.2.2",             /* short forms either */
      "pyro.ip=127.0.0.2/8 pyro.gw=127.0.0.1",           /* loopback */
      "pyro.ip=169.254.1.2/16 pyro.gw=169.254.1.1",      /* link-local */
      "pyro.ip=224.0.0.5/24 pyro.gw=224.0.0.1",          /* multicast */
      "pyro.ip=0.0.0.5/24 pyro.gw=0.0.0.1",
      "pyro.ip=10.0.2.15/24 pyro.gw=10.0.3.2",           /* gateway off the subnet */
      "pyro.ip=10.0.2.15/24 pyro.gw=10.0.2.15",          /* gateway is the guest */
      "pyro.ip=10.0.2.0/24 pyro.gw=10.0.2.2",            /* network address */
      "pyro.ip=10.0.2.255/24 pyro.gw=10.0.2.2",          /* broadcast address */
      "pyro.ip=10.0.2.15/24 pyro.gw=10.0.2.2 pyro.dns=127.0.0.53",
      "pyro.ip=10.0.2.15/24 pyro.gw=10.0.2.2 pyro.dns=a.b.c.d",
      "pyro.ip=10.0.2.15/24 pyro.gw=10.0.2.2 pyro.ip=10.0.2.16/24",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char line[256];
    snprintf(line, sizeof line, "pyro.root=/dev/vda pyro.data=ram:8 %s", bad[i]);
    ok(parse(line, &c) < 0 && strncmp(err, "bad kernel command line: pyro.", 30) == 0, "refused: %s -> %s", bad[i], err);
  }
}

static void test_module_params(void) {
  char out[128];
  const char *cl = "console=ttyS0 virtio_mmio.device=4K@0xfeb00e00:12 virtio-mmio.device=4K@0xfeb00c00:11 "
                   "virtio_blk.queue_depth=8 virtio_mmio=x .bad=1 overlay.redirect_dir=\"on\" -- virtio_mmio.device=no";
  ok(vmcfg_module_params(cl, "virtio_mmio", out, sizeof out) == 0 &&
         strcmp(out, "device=4K@0xfeb00e00:12 device=4K@0xfeb00c00:11") == 0,
     "virtio_mmio gets both devices ('-' = '_'), nothing after --: %s", out);
  ok(vmcfg_module_params(cl, "virtio_blk", out, sizeof out) == 0 && strcmp(out, "queue_depth=8") == 0,
     "virtio_blk gets its own");
  ok(vmcfg_module_params(cl, "overlay", out, sizeof out) == 0 && strcmp(out, "redirect_dir=\"on\"") == 0,
     "quotes are kept for the kernel's own parser");
  ok(vmcfg_module_params(cl, "virtio", out, sizeof out) == 0 && out[0] == '\0',
     "a module name that is a prefix of another gets nothing");
  ok(vmcfg_module_params(cl, "virtio_mmio", out, 20) < 0, "too long for the buffer is an error");
}

int main(void) {
  test_settings();
  test_network();
  test_module_params();
  return tap_done();
}
