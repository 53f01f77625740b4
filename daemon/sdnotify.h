/* sdnotify.h - systemd readiness notification; a no-op without systemd. */
#ifndef GRIDD_SDNOTIFY_H
#define GRIDD_SDNOTIFY_H

void sdnotify_ready(void);
void sdnotify_reloading(void);
void sdnotify_stopping(void);
void sdnotify_status(const char *status);

#endif
