/* log.h - leveled logging to stderr, one line per event, key=value fields. */
#ifndef GRIDD_LOG_H
#define GRIDD_LOG_H

#include <stdbool.h>

#include "util.h"

enum log_level {
	LOG_LVL_DEBUG = 0,
	LOG_LVL_INFO,
	LOG_LVL_WARN,
	LOG_LVL_ERROR,
};

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
bool log_parse_level(const char *name, enum log_level *out) WUR;
const char *log_level_name(enum log_level level);

/* Never pass secrets, passwords or tokens; personal fields only at debug. */
void log_msg(enum log_level level, const char *fmt, ...) PRINTF_LIKE(2, 3);
/* Start-up failures only: logs and exits with the given status. */
void log_fatal(int status, const char *fmt, ...) PRINTF_LIKE(2, 3)
    __attribute__((noreturn));

#define log_debug(...) \
	do { if (log_enabled(LOG_LVL_DEBUG)) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) \
	do { if (log_enabled(LOG_LVL_INFO)) log_msg(LOG_LVL_INFO, __VA_ARGS__); } while (0)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif
