/* pyro-agent launch: bubblewrap as the sandbox uid, for a pyro running as
 * root (launch.c; docs/security.md "Running as root"). */
#ifndef PYRO_LAUNCH_H
#define PYRO_LAUNCH_H

/* Where the sources appear, in the launcher's own mount namespace only. */
#define LAUNCH_STAGE "/run"

int launch_main(int argc, char **argv);

#endif
