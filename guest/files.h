/* pyro-agent files: the workspace file API, run by the host through the agent (files.c). */
#ifndef PYRO_FILES_H
#define PYRO_FILES_H

#include "util.h"

int files_main(int argc, char **argv);

#endif
