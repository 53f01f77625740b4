/* fuzz_config.c - libFuzzer target: the config parser over arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg = NULL;
	char buf[8192];

	if (cfg_parse("fuzz.conf", (const char *)data, size, &cfg, &errs)) {
		/* A config that parses must be internally consistent: every
		 * crosswalk target resolves and every key formats. */
		for (size_t i = 0; i < cfg->n_departments; i++) {
			const struct cfg_department *d = &cfg->departments[i];

			if (cfg_department(cfg, d->id) != d)
				__builtin_trap();
			for (size_t j = 0; j < d->n_categories; j++) {
				const char *tt = cfg_category(d,
				    d->categories[j].code);

				if (tt == NULL || cfg_task_type(cfg, tt) == NULL)
					__builtin_trap();
			}
		}
		for (size_t i = 0; i < cfg->n_communities; i++) {
			const struct cfg_grid *g = cfg_grid_for(cfg,
			    cfg->communities[i].id);

			if (g->min_households > g->target_households ||
			    g->target_households > g->max_households)
				__builtin_trap();
		}
		for (size_t i = 0; i < cfg_key_count(); i++)
			(void)!cfg_key_value(cfg, i, buf, sizeof(buf));
		if (cfg->n_listen == 0 || cfg->conninfo == NULL ||
		    cfg->max_frame_bytes_unauth > cfg->max_frame_bytes)
			__builtin_trap();
		cfg_warn_restart_only(cfg, cfg);
		cfg_free(cfg);
	} else if (cfg != NULL || errs.n == 0 || errs.n > CFG_MAX_ERRORS) {
		__builtin_trap();
	}
	cfg_errors_clear(&errs);
	return 0;
}
