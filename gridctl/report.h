/* report.h - gridctl report burden: text, CSV, JSON or one printable HTML page. */
#ifndef GRIDCTL_REPORT_H
#define GRIDCTL_REPORT_H

#include "session.h"

/* "report burden [--from T] [--to T] [--community C]
 *  [--csv | --json | --html FILE]"; argv[0] is "report". */
int report_cmd(struct gc_session *s, int argc, char **argv);

#endif
