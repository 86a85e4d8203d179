/* pyro-agent: the protocol codec (docs/protocol.md).
 *
 * Pure functions over byte buffers: no I/O, no global state. This is the code
 * the unit test and the libFuzzer target link, so every length is checked
 * against the buffer before it is used and nothing allocates more than a
 * bound derived from MAX_PAYLOAD.
 */
#ifndef PYRO_PROTO_H
#define PYRO_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PYRO_HDR_LEN 12u
#define PYRO_MAX_PAYLOAD 65536u
#define PYRO_MAX_FRAME (PYRO_HDR_LEN + PYRO_MAX_PAYLOAD)
#define PYRO_VERSION 1u
#define PYRO_INITIAL_WINDOW 262144u
#define PYRO_MAX_ARGC 4096u
#define PYRO_MAX_ENVC 4096u
#define PYRO_MAX_CHANNELS 64u
/* A VM's serial stream carries every host client through one relay
 * (`pyro-agent vmm`), so it may hold more channels than one client would. */
#define PYRO_MAX_CHANNELS_VM 1024u
#define PYRO_MAX_CONNS 16u
#define PYRO_MAX_PING 64u
#define PYRO_MAX_SIGNO 64u
/* SYNC's seed: at least 128 bits, at most what RNDADDENTROPY takes at once
 * with room to spare. */
#define PYRO_SYNC_SEED_MIN 16u
#define PYRO_SYNC_SEED_MAX 256u
/* The agent stops reading a connection and its pipes above this much queued output. */
#define PYRO_OUTQ_LIMIT (1024u * 1024u)
#define PYRO_AGENT_VERSION "pyro-agent 0.1.0"
#define PYRO_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

enum pyro_type {
  /* host -> agent */
  PYRO_HELLO = 0x01,
  PYRO_OPEN = 0x02,
  PYRO_STDIN = 0x03,
  PYRO_STDIN_EOF = 0x04,
  PYRO_SIGNAL = 0x05,
  PYRO_KILL = 0x06,
  PYRO_WINDOW = 0x07,
  PYRO_PING = 0x08,
  PYRO_SHUTDOWN = 0x09,
  PYRO_SYNC = 0x0A,
  PYRO_RESIZE = 0x0B,
  PYRO_ATTACH = 0x0C, /* new id: string key of a kept channel */
  PYRO_DETACH = 0x0D, /* a kept channel's id: empty */
  PYRO_LIST = 0x0E,   /* new id: empty; answered by KEPT */
  /* agent -> host */
  PYRO_HELLO_ACK = 0x81,
  PYRO_OPENED = 0x82,
  PYRO_STDOUT = 0x83,
  PYRO_STDERR = 0x84,
  PYRO_EXIT = 0x85,
  PYRO_STDIN_WINDOW = 0x86,
  PYRO_OPEN_FAILED = 0x87,
  PYRO_PONG = 0x88,
  PYRO_SYNCED = 0x89,
  PYRO_ATTACHED = 0x8A, /* u32 pid, u32 flags, u64 dropped_bytes */
  PYRO_DETACHED = 0x8B, /* empty: the last frame of that id */
  PYRO_KEPT = 0x8C,     /* LIST's answer (its only and last frame) */
  PYRO_ERROR = 0x8F,
};

/* ERROR frame codes; 0 means "no error" in return values below. */
enum pyro_code {
  PYRO_OK = 0,
  PYRO_E_PROTOCOL = 1,
  PYRO_E_VERSION = 2,
  PYRO_E_LIMIT = 3,
  PYRO_E_CHANNEL = 4,
  PYRO_E_FLOW = 5,
};

#define PYRO_OPEN_STDIN_PIPE 0x1u
#define PYRO_OPEN_PTY 0x2u
/* The process belongs to the sandbox, not to the connection: it detaches
 * when the connection closes, and ATTACH (by its key, a trailing string of
 * the OPEN payload) hands it to another (docs/protocol.md "Kept channels"). */
#define PYRO_OPEN_KEEP 0x4u
#define PYRO_OPEN_KNOWN_FLAGS (PYRO_OPEN_STDIN_PIPE | PYRO_OPEN_PTY | PYRO_OPEN_KEEP)

/* Kept channels: a key is 1..64 bytes of [A-Za-z0-9._-]; at most 32 per
 * agent (exited, unclaimed ones included), each with a ring of at most
 * PYRO_KEPT_RING bytes of output read while detached. The ring never holds
 * more than the initial window, so ATTACH can send it all at once. */
#define PYRO_KEY_MAX 64u
#define PYRO_MAX_KEPT 32u
#define PYRO_KEPT_RING PYRO_INITIAL_WINDOW
/* ATTACHED flags */
#define PYRO_ATTACHED_EXITED 0x1u
/* KEPT states */
#define PYRO_KEPT_ATTACHED 0u
#define PYRO_KEPT_DETACHED 1u
#define PYRO_KEPT_EXITED 2u

/* RESIZE: u32 rows, u32 cols of a PTY channel's terminal, each 1..65535
 * (the kernel's struct winsize holds unsigned shorts). */
#define PYRO_MAX_WINSIZE 65535u
/* A PTY starts at this size until the host's first RESIZE. */
#define PYRO_DEFAULT_ROWS 24u
#define PYRO_DEFAULT_COLS 80u

/* SYNC: u64 unix_time_ns, u32 seed_len, seed bytes (PYRO_SYNC_SEED_MIN..MAX);
 * SYNCED: u32 flags, what the agent did with it. */
#define PYRO_SYNCED_CLOCK 0x1u
#define PYRO_SYNCED_RNG 0x2u
#define PYRO_SYNCED_KNOWN (PYRO_SYNCED_CLOCK | PYRO_SYNCED_RNG)

#define PYRO_EXIT_EXITED 0u
#define PYRO_EXIT_SIGNALED 1u
#define PYRO_EXIT_TIMED_OUT 0x1u
#define PYRO_EXIT_KILLED 0x2u
/* VM mode: the guest kernel's OOM killer killed a process while the command
 * ran (its oom_kill counter moved between OPEN and EXIT). */
#define PYRO_EXIT_OOM 0x4u

struct pyro_hdr {
  uint8_t type;
  uint32_t channel;
  uint32_t length;
};

/* A HELLO payload; client points into the payload. */
struct pyro_hello {
  uint32_t min_version;
  uint32_t max_version;
  const uint8_t *client;
  uint32_t client_len;
};

/* A validated OPEN payload. The strings are not copied: argv and env are
 * walked again with pyro_open_next() (they were validated as a whole). */
struct pyro_open {
  uint32_t flags;
  uint32_t timeout_ms;
  uint32_t argc;
  uint32_t envc;
  const uint8_t *argv_at; /* first argv string (its u32 length) */
  const uint8_t *envv_at; /* first env string */
  const uint8_t *cwd;
  uint32_t cwd_len;
  size_t str_bytes; /* sum of argv, env and cwd string lengths */
  const uint8_t *key; /* with PYRO_OPEN_KEEP: the key (checked), else NULL */
  uint32_t key_len;
};

/* A SYNC payload: the host's wall clock and fresh randomness for the guest. */
struct pyro_sync {
  uint64_t unix_time_ns;
  const uint8_t *seed;
  uint32_t seed_len; /* PYRO_SYNC_SEED_MIN..PYRO_SYNC_SEED_MAX */
};

/* One decoded host -> agent message. Pointers point into the payload. */
struct pyro_msg {
  struct pyro_hdr hdr;
  const uint8_t *payload;
  union {
    struct pyro_hello hello;
    struct pyro_open open;
    struct pyro_sync sync;
    uint32_t value; /* SIGNAL signo, WINDOW increment */
    struct {
      uint32_t rows, cols;
    } winsize; /* RESIZE */
    struct {
      const uint8_t *s;
      uint32_t len;
    } key; /* ATTACH */
  } u;
};

/* An OPEN made ready for execve: one allocation holding everything. */
struct pyro_cmd {
  uint32_t flags;
  uint32_t timeout_ms;
  char **argv;        /* argc entries + NULL */
  char **envp;        /* as given (PATH default when none given) + NULL */
  const char *cwd;    /* "/" when empty */
  const char *path;   /* the PATH to search: from envp, else the default */
};

enum pyro_split {
  PYRO_SPLIT_NEED_MORE = 0, /* not a whole frame yet */
  PYRO_SPLIT_FRAME = 1,     /* *hdr and *frame_len describe a whole frame */
  PYRO_SPLIT_BAD = 2,       /* *code and *why describe the error */
};

static inline uint32_t pyro_get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}
static inline uint64_t pyro_get_le64(const uint8_t *p) {
  return (uint64_t)pyro_get_le32(p) | ((uint64_t)pyro_get_le32(p + 4) << 32);
}
static inline void pyro_put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/* True for types the host may send (from_host) or the agent may send. */
bool pyro_type_known(uint8_t type, bool from_host);
const char *pyro_type_name(uint8_t type);

/* Decodes a 12-byte header: magic, version, type for the direction, length
 * limit, and whether the type belongs on channel 0 or on a process channel.
 * Returns PYRO_OK or an error code with *why set to a static string. */
int pyro_hdr_decode(const uint8_t *b, bool from_host, struct pyro_hdr *h,
                    const char **why);

/* Looks at the start of buf: a whole frame, not enough bytes yet, or an error
 * (which can be known from the header alone, before the payload arrives). */
enum pyro_split pyro_split(const uint8_t *buf, size_t len, bool from_host,
                           struct pyro_hdr *h, size_t *frame_len, int *code,
                           const char **why);

/* Decodes and validates the payload of a host -> agent frame whose header has
 * already been decoded. Returns PYRO_OK or an error code (*why set). */
int pyro_msg_decode(const struct pyro_hdr *h, const uint8_t *payload,
                    struct pyro_msg *m, const char **why);

/* Walks the validated strings of an OPEN: *at is advanced past one string. */
void pyro_open_next(const uint8_t **at, const uint8_t **s, uint32_t *len);

/* Builds the execve form of a validated OPEN; NULL only on ENOMEM. The size is
 * bounded by the payload (<= MAX_PAYLOAD) plus (argc + envc + 2) pointers.
 * Free with free(). */
struct pyro_cmd *pyro_cmd_build(const struct pyro_open *o);

/* Encoders. Each writes a whole frame (header + payload) into buf and returns
 * its length, or 0 when it does not fit in cap or would exceed MAX_PAYLOAD. */
size_t pyro_enc_hdr(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                    uint32_t len);
size_t pyro_enc_empty(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel);
size_t pyro_enc_u32(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                    uint32_t value);
size_t pyro_enc_data(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                     const void *data, size_t n);
size_t pyro_enc_hello(uint8_t *buf, size_t cap, uint32_t min_version,
                      uint32_t max_version, const char *client);
size_t pyro_enc_hello_ack(uint8_t *buf, size_t cap, uint32_t version,
                          uint32_t max_payload, uint32_t initial_window,
                          const char *agent_version);
size_t pyro_enc_exit(uint8_t *buf, size_t cap, uint32_t channel, uint32_t kind,
                     uint32_t value, uint32_t flags);
/* OPEN_FAILED (channel, errno) and ERROR (channel 0, code): u32 + string. */
size_t pyro_enc_code_msg(uint8_t *buf, size_t cap, uint8_t type,
                         uint32_t channel, uint32_t code, const char *msg);
/* SYNC (host -> agent): used by the tests and the fuzzer's corpus. */
size_t pyro_enc_sync(uint8_t *buf, size_t cap, uint64_t unix_time_ns, const uint8_t *seed,
                     uint32_t seed_len);
size_t pyro_enc_open(uint8_t *buf, size_t cap, uint32_t channel, uint32_t flags,
                     uint32_t timeout_ms, const char *const *argv,
                     const char *const *envp, const char *cwd);
/* OPEN with PYRO_OPEN_KEEP set and key appended (the tests' and vmm's form). */
size_t pyro_enc_open_kept(uint8_t *buf, size_t cap, uint32_t channel, uint32_t flags,
                          uint32_t timeout_ms, const char *const *argv,
                          const char *const *envp, const char *cwd, const char *key);
/* A frame whose payload is one string (ATTACH). */
size_t pyro_enc_str(uint8_t *buf, size_t cap, uint8_t type, uint32_t channel,
                    const void *s, uint32_t len);
size_t pyro_enc_attached(uint8_t *buf, size_t cap, uint32_t channel, uint32_t pid,
                         uint32_t flags, uint64_t dropped);

/* True for a valid key: 1..PYRO_KEY_MAX bytes of [A-Za-z0-9._-]. */
bool pyro_key_valid(const uint8_t *s, uint32_t len);

/* One entry of a KEPT payload. */
struct pyro_kept {
  const uint8_t *key;
  uint32_t key_len;
  uint32_t pid;
  uint32_t state; /* PYRO_KEPT_* */
  uint64_t ring_bytes;
  uint64_t dropped;
};
/* KEPT: u32 n, n x (string key, u32 pid, u32 state, u64 ring_bytes, u64 dropped). */
size_t pyro_enc_kept(uint8_t *buf, size_t cap, uint32_t channel, const struct pyro_kept *e,
                     uint32_t n);
/* Checks a KEPT payload exactly (n <= PYRO_MAX_KEPT, valid keys, known
 * states, ring_bytes <= PYRO_KEPT_RING) and, when out is not NULL, fills up
 * to PYRO_MAX_KEPT entries of it; *n gets the count. */
int pyro_kept_decode(const uint8_t *p, uint32_t len, struct pyro_kept *out, uint32_t *n,
                     const char **why);
/* ATTACHED's payload: exactly 16 bytes, known flags. */
int pyro_attached_check(const uint8_t *p, uint32_t len, const char **why);

#endif
