/* layers.h - department grid layers (多网合一): import and crosswalk report. */
#ifndef GRIDD_LAYERS_H
#define GRIDD_LAYERS_H

#include "gridd.pb-c.h"

struct conn;

/* ImportLayer: the department's polygons under its own codes, overlaid on
 * the unified cells; the reply's report lists the codes that straddle
 * cells or communities. Called from the rpc table after its role check. */
void layers_import(struct conn *c, const Gridd__V1__Envelope *env);

#endif
