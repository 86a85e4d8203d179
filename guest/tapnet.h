/* pyro-agent tapnet: the layer-2 plumbing of a firecracker VM's network,
 * made in its jail's network namespace (tapnet.c). */
#ifndef PYRO_TAPNET_H
#define PYRO_TAPNET_H

int tapnet_main(int argc, char **argv);

#endif
