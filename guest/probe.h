/* pyro-agent probe: a service's readiness, checked inside its sandbox (probe.c). */
#ifndef PYRO_PROBE_H
#define PYRO_PROBE_H

int probe_main(int argc, char **argv);
int connect_main(int argc, char **argv);

#endif
