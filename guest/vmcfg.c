/* pyro-agent: the VM's settings from the kernel command line (see vmcfg.h). */
#define _GNU_SOURCE
#include "vmcfg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The next word of the command line, as the kernel's next_arg() splits it:
 * blanks separate words except inside double quotes. *at is advanced past
 * it; the word is [*w, *w + *len). False at the end. */
static bool next_word(const char **at, const char **w, size_t *len) {
  const char *p = *at;
  while (*p == ' ' || *p == '\t' || *p == '\n')
    p++;
  if (*p == '\0')
    return false;
  const char *start = p;
  bool quoted = false;
  while (*p != '\0' && (quoted || (*p != ' ' && *p != '\t' && *p != '\n'))) {
    if (*p == '"')
      quoted = !quoted;
    p++;
  }
  *w = start;
  *len = (size_t)(p - start);
  *at = p;
  return true;
}

static bool is_end_of_options(const char *w, size_t len) { return len == 2 && memcmp(w, "--", 2) == 0; }

/* A value with the kernel's quotes removed ("a b" -> a b), into out. */
static bool unquote(const char *v, size_t len, char *out, size_t outlen) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (v[i] == '"')
      continue;
    if (n + 1 >= outlen)
      return false;
    out[n++] = v[i];
  }
  out[n] = '\0';
  return true;
}

static int fail(char *err, size_t errlen, const char *key, const char *what) {
  snprintf(err, errlen, "bad kernel command line: %s %s", key, what);
  return -1;
}

/* dst = src, whose length the caller has validated to fit. */
static void copy_in(char *dst, size_t cap, const char *src) {
  size_t n = strnlen(src, cap - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static bool parse_uint(const char *s, uint64_t min, uint64_t max, unsigned *out) {
  if (*s < '0' || *s > '9')
    return false;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max)
    return false;
  *out = (unsigned)v;
  return true;
}

/* A block device path: /dev/ and then [a-z0-9], at most 32 bytes. Nothing
 * else is a disk the host attached (and no "..", no odd bytes in mounts). */
static bool valid_dev(const char *s) {
  size_t n = strlen(s);
  if (n <= 5 || n > 32 || strncmp(s, "/dev/", 5) != 0)
    return false;
  for (size_t i = 5; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
      return false;
  return true;
}

/* Port names (virtio-serial) and host names: [A-Za-z0-9._-]. */
static bool valid_name(const char *s, size_t max, bool dots_dashes_only) {
  size_t n = strlen(s);
  if (n == 0 || n > max)
    return false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || (!dots_dashes_only && ch == '_');
    if (!ok)
      return false;
  }
  return true;
}

/* A dotted-quad IPv4 address (inet_pton's strict form: no octal, no short forms). */
static bool parse_ipv4(const char *s, uint32_t *out) {
  struct in_addr a;
  if (inet_pton(AF_INET, s, &a) != 1)
    return false;
  *out = a.s_addr;
  return true;
}

/* A unicast address a host may give a guest: not 0.0.0.0/8, loopback,
 * link-local, multicast or broadcast. */
static bool usable_ipv4(uint32_t be) {
  uint32_t h = ntohl(be);
  unsigned top = h >> 24;
  return top != 0 && top != 127 && top < 224 && (h >> 16) != 0xA9FEu;
}

int vmcfg_parse(const char *cmdline, struct vmcfg *cfg, char *err, size_t errlen) {
  const char *at = cmdline, *w;
  size_t len;
  unsigned seen = 0;
  char key[32], val[128];

  memset(cfg, 0, sizeof *cfg);
  copy_in(cfg->port, sizeof cfg->port, VMCFG_DEFAULT_PORT);
  while (next_word(&at, &w, &len)) {
    if (is_end_of_options(w, len))
      break;
    if (len < 5 || strncmp(w, "pyro.", 5) != 0)
      continue;
    const char *eq = memchr(w, '=', len);
    size_t klen = eq != NULL ? (size_t)(eq - w) : len;
    if (klen >= sizeof key) {
      snprintf(err, errlen, "bad kernel command line: unknown setting %.40s...", w);
      return -1;
    }
    memcpy(key, w, klen);
    key[klen] = '\0';
    if (eq == NULL)
      return fail(err, errlen, key, "needs a value (pyro.NAME=VALUE)");
    if (!unquote(eq + 1, len - klen - 1, val, sizeof val))
      return fail(err, errlen, key, "is longer than 127 bytes");
    static const char *const keys[] = {"pyro.root",     "pyro.data",     "pyro.port",
                                       "pyro.vsock",    "pyro.hostname", "pyro.pids_max",
                                       "pyro.shm_mib",  "pyro.ip",       "pyro.gw",
                                       "pyro.dns",      "pyro.warm",     "pyro.port_poll_ms"};
    unsigned idx = 0;
    while (idx < sizeof keys / sizeof keys[0] && strcmp(keys[idx], key) != 0)
      idx++;
    if (idx == sizeof keys / sizeof keys[0]) {
      snprintf(err, errlen,
               "bad kernel command line: unknown setting %s (known: pyro.root, pyro.data, "
               "pyro.port, pyro.vsock, pyro.hostname, pyro.pids_max, pyro.shm_mib, "
               "pyro.ip, pyro.gw, pyro.dns, pyro.warm, pyro.port_poll_ms)",
               key);
      return -1;
    }
    if (seen & (1u << idx))
      return fail(err, errlen, key, "is given twice");
    seen |= 1u << idx;
    switch (idx) {
    case 0:
      if (!valid_dev(val))
        return fail(err, errlen, key, "must be a block device like /dev/vda");
      copy_in(cfg->root, sizeof cfg->root, val);
      break;
    case 1:
      if (strncmp(val, "ram:", 4) == 0) {
        if (!parse_uint(val + 4, 1, 1u << 20, &cfg->data_ram_mib))
          return fail(err, errlen, key, "must be ram:<MiB> with MiB in 1..1048576");
      } else if (valid_dev(val)) {
        copy_in(cfg->data, sizeof cfg->data, val);
      } else {
        return fail(err, errlen, key, "must be a block device like /dev/vdb or ram:<MiB>");
      }
      break;
    case 2:
      if (!valid_name(val, 63, false))
        return fail(err, errlen, key, "must be 1..63 bytes of [A-Za-z0-9._-]");
      copy_in(cfg->port, sizeof cfg->port, val);
      break;
    case 3:
      /* 0xFFFFFFFF is VMADDR_PORT_ANY. */
      if (!parse_uint(val, 1, 0xFFFFFFFEu, &cfg->vsock_port))
        return fail(err, errlen, key, "must be a port number in 1..4294967294");
      break;
    case 4:
      if (!valid_name(val, 64, true))
        return fail(err, errlen, key, "must be 1..64 bytes of [A-Za-z0-9.-]");
      copy_in(cfg->hostname, sizeof cfg->hostname, val);
      break;
    case 5:
      if (!parse_uint(val, 16, 1u << 22, &cfg->pids_max))
        return fail(err, errlen, key, "must be an integer in 16..4194304");
      break;
    case 6:
      if (!parse_uint(val, 1, 1u << 20, &cfg->shm_mib))
        return fail(err, errlen, key, "must be MiB in 1..1048576");
      break;
    case 7: {
      char *slash = strchr(val, '/');
      if (slash == NULL)
        return fail(err, errlen, key, "must be an IPv4 address and prefix like 10.0.2.15/24");
      *slash = '\0';
      if (!parse_ipv4(val, &cfg->ip) || !usable_ipv4(cfg->ip) ||
          !parse_uint(slash + 1, 8, 30, &cfg->prefix))
        return fail(err, errlen, key,
                    "must be a unicast IPv4 address and a prefix in 8..30, like 10.0.2.15/24");
      cfg->net = true;
      break;
    }
    case 8:
      if (!parse_ipv4(val, &cfg->gw) || !usable_ipv4(cfg->gw))
        return fail(err, errlen, key, "must be a unicast IPv4 address like 10.0.2.2");
      break;
    case 9:
      if (!parse_ipv4(val, &cfg->dns) || !usable_ipv4(cfg->dns))
        return fail(err, errlen, key, "must be a unicast IPv4 address like 10.0.2.3");
      break;
    case 10: {
      unsigned warm = 0;
      if (!parse_uint(val, 0, 1, &warm))
        return fail(err, errlen, key, "must be 0 or 1");
      cfg->warm = warm == 1;
      break;
    }
    case 11:
      if (!parse_uint(val, 10, 600000, &cfg->port_poll_ms))
        return fail(err, errlen, key, "must be an integer in 10..600000 (milliseconds)");
      break;
    default:
      break;
    }
  }
  if (!(seen & 1u))
    return fail(err, errlen, "pyro.root", "is missing (the read-only root disk, e.g. pyro.root=/dev/vda)");
  if (!(seen & 2u))
    return fail(err, errlen, "pyro.data",
                "is missing (a writable disk, pyro.data=/dev/vdb, or pyro.data=ram:<MiB>)");
  if (cfg->data[0] != '\0' && strcmp(cfg->data, cfg->root) == 0)
    return fail(err, errlen, "pyro.data", "must not be the root disk");
  if (!cfg->net && (seen & ((1u << 8) | (1u << 9))))
    return fail(err, errlen, "pyro.gw and pyro.dns", "need pyro.ip (the guest's own address)");
  if (cfg->net) {
    if (!(seen & (1u << 8)))
      return fail(err, errlen, "pyro.gw", "is missing (pyro.ip needs a gateway)");
    uint32_t mask = htonl(~0u << (32 - cfg->prefix));
    if ((cfg->ip & mask) != (cfg->gw & mask) || cfg->ip == cfg->gw)
      return fail(err, errlen, "pyro.gw", "must be another address on pyro.ip's subnet");
    uint32_t host = ntohl(cfg->ip & ~mask);
    if (host == 0 || host == ntohl(~mask))
      return fail(err, errlen, "pyro.ip", "must not be its subnet's network or broadcast address");
  }
  return 0;
}

/* Module names compare with '-' and '_' as one. */
static bool same_module(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  if (alen != blen)
    return false;
  for (size_t i = 0; i < alen; i++) {
    char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
    if (x != y)
      return false;
  }
  return true;
}

int vmcfg_module_params(const char *cmdline, const char *module, char *out, size_t outlen) {
  const char *at = cmdline, *w;
  size_t len, n = 0;
  if (outlen == 0)
    return -1;
  out[0] = '\0';
  while (next_word(&at, &w, &len)) {
    if (is_end_of_options(w, len))
      break;
    const char *dot = memchr(w, '.', len);
    const char *eq = memchr(w, '=', len);
    /* The module name is what comes before the first dot, which must come
     * before any '=' (a value may hold dots: virtio_mmio.device=4K@0xd00). */
    if (dot == NULL || dot == w || (eq != NULL && eq < dot))
      continue;
    if (!same_module(w, (size_t)(dot - w), module))
      continue;
    size_t plen = len - (size_t)(dot + 1 - w);
    if (plen == 0)
      continue;
    if (n + (n > 0) + plen + 1 > outlen)
      return -1;
    if (n > 0)
      out[n++] = ' ';
    memcpy(out + n, dot + 1, plen);
    n += plen;
    out[n] = '\0';
  }
  return 0;
}
