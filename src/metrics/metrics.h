/*
 * metrics: counters, gauges and histograms with labels, exposed in the
 * Prometheus text format.
 *
 * A metric is declared once, as a static `struct metrics_def` naming its
 * name, help, type and label names; the first use registers it in the
 * process-wide registry (the one mutable global besides the log level).
 * Names follow Prometheus conventions: `backbone_` prefix, base units,
 * `_total` for counters. Label values must come from bounded sets (routes,
 * states, reasons), never ids; a family refuses new series past
 * METRICS_MAX_SERIES and counts them in one "overflow" series instead.
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef BB_METRICS_H
#define BB_METRICS_H

#include "base/base.h"

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

enum { METRICS_MAX_LABELS = 4, METRICS_MAX_SERIES = 2000 };

struct metrics_family; /* private registry state */
struct metrics_series; /* one label combination */

struct metrics_def {
    const char *name;
    const char *help;
    enum metrics_type type;
    const char *labels[METRICS_MAX_LABELS + 1]; /* NULL-terminated label names */
    const double *buckets;                      /* histograms: upper bounds, ascending */
    size_t n_buckets;
    /* Gauges whose label values come and go: series at 0 are left out. */
    bool omit_zero;
    _Atomic(struct metrics_family *) family; /* set on registration */
};

/* Buckets for latencies in seconds, 100 µs to 10 s. */
enum { METRICS_LATENCY_BUCKETS_N = 16 };
extern const double METRICS_LATENCY_BUCKETS[METRICS_LATENCY_BUCKETS_N];

/* Register `def` (idempotent). Series appear on first use; a family with no
 * labels shows its single series at 0 from registration on. */
void metrics_register(struct metrics_def *def);

/* Look up (creating) the series for `values` (one per label name). The
 * pointer stays valid until metrics_shutdown, so hot paths may cache it. */
struct metrics_series *metrics_series_get(struct metrics_def *def, const char *const *values);

void metrics_series_add(struct metrics_series *s, double v);     /* counter, gauge */
void metrics_series_set(struct metrics_series *s, double v);     /* gauge */
void metrics_series_observe(struct metrics_series *s, double v); /* histogram */

/* Convenience forms taking the label values as trailing arguments, one per
 * label name declared in `def`. */
void metrics_add(struct metrics_def *def, double v, ...);
void metrics_set(struct metrics_def *def, double v, ...);
void metrics_observe(struct metrics_def *def, double v, ...);

/* Current value of a counter/gauge series (tests and collectors). */
double metrics_series_value(const struct metrics_series *s);

/* Append every registered family to `out` in Prometheus text format 0.0.4. */
void metrics_render(struct bb_buf *out);

/* Free the registry (end of process, so sanitizers see no leaks). Not safe
 * while other threads still use metrics. */
void metrics_shutdown(void);

#endif /* BB_METRICS_H */
