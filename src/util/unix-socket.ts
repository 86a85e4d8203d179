import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { createConnection, Socket as NetSocket, type Socket } from "node:net";

/** O_PATH (Linux, x86-64 and arm64): a handle on the name itself, which opens nothing. */
const O_PATH = 0o10000000;

/**
 * connect(2) follows symlinks, and the directories pyro's sandbox sockets
 * live in belong to the sandbox's uid (as root: `sandbox/sock/`, a VM's
 * `vm/run/`): whatever runs as that uid (an agent, a qemu that escaped its
 * guest) could replace the socket with a link to any socket on the host,
 * and pyro (root) would connect there and send it a command and its input.
 * So the name is opened with O_PATH|O_NOFOLLOW, must be a socket, and the
 * connection goes to that very inode through /proc/self/fd.
 *
 * Returns the connecting socket; a name that is not a socket (a symlink
 * included) or is missing fails it with an error event (ENOTSOCK, ENOENT),
 * as a refused connection would.
 */
export function connectUnixNoFollow(path: string): Socket {
  let fd: number;
  try {
    fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    return failed(error as NodeJS.ErrnoException);
  }
  let ok = false;
  try {
    ok = fstatSync(fd).isSocket();
  } catch {
    /* below */
  }
  if (!ok) {
    closeSync(fd);
    return failed(Object.assign(new Error(`${path} is not a socket (a symlink is never followed)`), { code: "ENOTSOCK" }));
  }
  const socket = createConnection({ path: `/proc/self/fd/${fd}` });
  // connect(2) has resolved the path once it answers either way: the handle is no longer needed.
  const release = () => {
    if (fd < 0) return;
    closeSync(fd);
    fd = -1;
  };
  socket.once("connect", release);
  socket.once("error", release);
  socket.once("close", release);
  return socket;
}

/** A socket that fails at once with `error`, like a connection refused. */
function failed(error: NodeJS.ErrnoException): Socket {
  const socket = new NetSocket();
  process.nextTick(() => socket.destroy(error));
  return socket;
}
