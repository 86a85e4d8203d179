/* libFuzzer target for the protocol codec: the input is a byte stream from
 * an untrusted host, split into frames exactly as the agent does. Every
 * decoded OPEN is built into its execve form and re-encoded: the bytes must
 * round-trip. Built with ASan and UBSan by `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static uint8_t out[PYRO_MAX_FRAME];

static void check_open(const struct pyro_msg *m) {
  struct pyro_cmd *cmd = pyro_cmd_build(&m->u.open);
  if (cmd == NULL)
    return;
  uint32_t argc = 0;
  while (cmd->argv[argc] != NULL)
    argc++;
  if (argc != m->u.open.argc)
    abort();
  /* Re-encode and compare when the defaults did not change anything. */
  if (m->u.open.envc > 0 && m->u.open.cwd_len > 0) {
    size_t n = pyro_enc_open(out, sizeof out, m->hdr.channel, cmd->flags, cmd->timeout_ms,
                             (const char *const *)cmd->argv, (const char *const *)cmd->envp,
                             cmd->cwd);
    if (n != PYRO_HDR_LEN + m->hdr.length ||
        memcmp(out + PYRO_HDR_LEN, m->payload, m->hdr.length) != 0)
      abort();
  }
  free(cmd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t pos = 0;
  while (pos < size) {
    struct pyro_hdr h;
    struct pyro_msg m;
    size_t flen;
    int code;
    const char *why = NULL;
    enum pyro_split r = pyro_split(data + pos, size - pos, true, &h, &flen, &code, &why);
    if (r == PYRO_SPLIT_NEED_MORE)
      break;
    if (r == PYRO_SPLIT_BAD) {
      if (code == PYRO_OK || why == NULL)
        abort();
      break;
    }
    if (flen < PYRO_HDR_LEN || flen > size - pos || flen > PYRO_MAX_FRAME)
      abort();
    code = pyro_msg_decode(&h, data + pos + PYRO_HDR_LEN, &m, &why);
    if (code == PYRO_OK && h.type == PYRO_OPEN)
      check_open(&m);
    if (code == PYRO_OK && h.type == PYRO_HELLO) {
      if (m.u.hello.client_len > h.length)
        abort();
    }
    if (code == PYRO_OK && h.type == PYRO_SYNC) {
      /* The seed is exactly the rest of the payload, within its bounds. */
      if (m.u.sync.seed_len < PYRO_SYNC_SEED_MIN || m.u.sync.seed_len > PYRO_SYNC_SEED_MAX ||
          12u + m.u.sync.seed_len != h.length || m.u.sync.seed != m.payload + 12)
        abort();
    }
    if (code != PYRO_OK)
      break;
    pos += flen;
  }
  /* The agent -> host direction of the header decoder too. */
  if (size >= PYRO_HDR_LEN) {
    struct pyro_hdr h;
    const char *why;
    (void)pyro_hdr_decode(data, false, &h, &why);
  }
  return 0;
}
