/* pyro-agent apply: moves a staged tree into place, all or nothing (apply.c). */
#ifndef PYRO_APPLY_H
#define PYRO_APPLY_H

int apply_main(int argc, char **argv);

#endif
