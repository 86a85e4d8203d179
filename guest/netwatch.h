/* pyro-agent netwatch: runs a sandbox's network helper (pasta) and kills it
 * once the sandbox's init has ended (netwatch.c). */
#ifndef PYRO_NETWATCH_H
#define PYRO_NETWATCH_H

int netwatch_main(int argc, char **argv);

#endif
