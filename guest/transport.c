/* pyro-agent: transports (see transport.h). */
#define _GNU_SOURCE
#include "transport.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "util.h"

int transport_listen_unix(const char *path, const char **step) {
  struct sockaddr_un addr;
  struct stat st;

  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path) {
    *step = "socket path too long";
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(addr.sun_path, path);

  cleanup_fd int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *step = "socket";
    return -1;
  }
  /* Only a leftover socket is replaced, never another kind of file. */
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
    (void)unlink(path);
  /* The socket file takes its mode from the umask at bind time: 0600 from
   * the start, so there is no moment where others may connect. */
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
  umask(old);
  if (rc < 0) {
    *step = "bind";
    return -1;
  }
  if (listen(fd, 64) < 0) {
    *step = "listen";
    return -1;
  }
  return steal_fd(&fd);
}
