/*
 * metrics.c: the registry and the Prometheus text exposition.
 *
 * Locking: `registry_mu` guards the family list; each family's `mu` guards
 * its series array. Values are atomics (doubles stored as their bit
 * pattern and updated with compare-and-swap), so updates take no lock once a
 * series is found. Lock order: registry_mu, then a family's mu.
 */
#include "metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

const double METRICS_LATENCY_BUCKETS[METRICS_LATENCY_BUCKETS_N] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};

struct metrics_series {
    struct metrics_family *family;
    uint64_t hash;
    char *values[METRICS_MAX_LABELS];
    _Atomic uint64_t value_bits; /* counter/gauge value, or histogram sum */
    _Atomic uint64_t count;      /* histogram observations */
    _Atomic uint64_t *buckets;   /* histogram: n_buckets cumulative-later counts */
};

struct metrics_family {
    struct metrics_def *def;
    size_t n_labels;
    struct metrics_family *next;
    pthread_mutex_t mu;
    struct metrics_series **series; /* guarded by mu */
    size_t n_series;                /* guarded by mu */
    size_t cap_series;              /* guarded by mu */
    struct metrics_series *overflow;
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_family *registry_head; /* guarded by registry_mu */
static struct metrics_family *registry_tail; /* guarded by registry_mu */

static double
bits_to_double(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static uint64_t
double_to_bits(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

static void
atomic_add_double(_Atomic uint64_t *bits, double v)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(bits, &old,
                                                  double_to_bits(bits_to_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

static uint64_t
hash_values(const char *const *values, size_t n)
{
    uint64_t h = BB_FNV1A_BASIS;
    for (size_t i = 0; i < n; i++) {
        /* A NULL value is "", as series_new and the lookup read it. */
        h = bb_fnv1a(h, values[i] ? values[i] : "");
        h = (h ^ 0xff) * BB_FNV1A_PRIME; /* a separator no value holds */
    }
    return h;
}

static struct metrics_series *
series_new(struct metrics_family *f, const char *const *values, uint64_t hash)
{
    struct metrics_series *s = xcalloc(1, sizeof *s);
    s->family = f;
    s->hash = hash;
    for (size_t i = 0; i < f->n_labels; i++)
        s->values[i] = xstrdup(values[i] ? values[i] : "");
    if (f->def->type == METRICS_HISTOGRAM)
        s->buckets = xcalloc(f->def->n_buckets, sizeof *s->buckets);
    return s;
}

static void
series_free(struct metrics_series *s, size_t n_labels)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < n_labels; i++)
        free(s->values[i]);
    free((void *)s->buckets);
    free(s);
}

void
metrics_register(struct metrics_def *def)
{
    if (def->family)
        return;
    pthread_mutex_lock(&registry_mu);
    if (def->family == NULL) {
        struct metrics_family *f = xcalloc(1, sizeof *f);
        f->def = def;
        while (f->n_labels < METRICS_MAX_LABELS && def->labels[f->n_labels])
            f->n_labels++;
        BB_ASSERT(def->type != METRICS_HISTOGRAM || def->n_buckets > 0);
        pthread_mutex_init(&f->mu, NULL);
        if (f->n_labels == 0) {
            f->series = xcalloc(1, sizeof *f->series);
            f->series[0] = series_new(f, NULL, hash_values(NULL, 0));
            f->n_series = f->cap_series = 1;
        }
        if (registry_tail)
            registry_tail->next = f;
        else
            registry_head = f;
        registry_tail = f;
        def->family = f;
    }
    pthread_mutex_unlock(&registry_mu);
}

struct metrics_series *
metrics_series_get(struct metrics_def *def, const char *const *values)
{
    metrics_register(def);
    struct metrics_family *f = def->family;
    uint64_t h = hash_values(values, f->n_labels);
    pthread_mutex_lock(&f->mu);
    struct metrics_series *found = NULL;
    for (size_t i = 0; i < f->n_series && !found; i++) {
        struct metrics_series *s = f->series[i];
        if (s->hash != h)
            continue;
        bool same = true;
        for (size_t k = 0; k < f->n_labels && same; k++)
            same = strcmp(s->values[k], values[k] ? values[k] : "") == 0;
        if (same)
            found = s;
    }
    if (!found && f->n_series >= METRICS_MAX_SERIES) {
        if (f->overflow == NULL) {
            const char *ov[METRICS_MAX_LABELS] = {"overflow", "overflow", "overflow", "overflow"};
            f->overflow = series_new(f, ov, 0);
        }
        found = f->overflow;
    }
    if (!found) {
        if (f->n_series == f->cap_series) {
            f->cap_series = f->cap_series ? f->cap_series * 2 : 8;
            f->series = xrealloc(f->series, f->cap_series * sizeof *f->series);
        }
        found = series_new(f, values, h);
        f->series[f->n_series++] = found;
    }
    pthread_mutex_unlock(&f->mu);
    return found;
}

void
metrics_series_add(struct metrics_series *s, double v)
{
    atomic_add_double(&s->value_bits, v);
}

void
metrics_series_set(struct metrics_series *s, double v)
{
    s->value_bits = double_to_bits(v);
}

void
metrics_series_observe(struct metrics_series *s, double v)
{
    const struct metrics_def *def = s->family->def;
    for (size_t i = 0; i < def->n_buckets; i++) {
        if (v <= def->buckets[i]) {
            s->buckets[i]++;
            break;
        }
    }
    s->count++;
    atomic_add_double(&s->value_bits, v);
}

double
metrics_series_value(const struct metrics_series *s)
{
    return bits_to_double(s->value_bits);
}

static struct metrics_series *
series_from_va(struct metrics_def *def, va_list ap)
{
    const char *values[METRICS_MAX_LABELS] = {0};
    for (size_t i = 0; i < METRICS_MAX_LABELS && def->labels[i]; i++)
        values[i] = va_arg(ap, const char *);
    return metrics_series_get(def, values);
}

void
metrics_add(struct metrics_def *def, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    metrics_series_add(series_from_va(def, ap), v);
    va_end(ap);
}

void
metrics_set(struct metrics_def *def, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    metrics_series_set(series_from_va(def, ap), v);
    va_end(ap);
}

void
metrics_observe(struct metrics_def *def, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    metrics_series_observe(series_from_va(def, ap), v);
    va_end(ap);
}

/* Label values escape \, " and newline (exposition format 0.0.4). */
static void
put_label_value(struct bb_buf *out, const char *v)
{
    bb_buf_puts(out, "\"");
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            bb_buf_puts(out, "\\\\");
        else if (*p == '"')
            bb_buf_puts(out, "\\\"");
        else if (*p == '\n')
            bb_buf_puts(out, "\\n");
        else
            bb_buf_append(out, p, 1);
    }
    bb_buf_puts(out, "\"");
}

/* `{a="x",b="y"` plus an optional extra label, closed with `}`; nothing when
 * there are no labels at all. */
static void
put_labels(struct bb_buf *out, const struct metrics_family *f, const struct metrics_series *s,
           const char *extra_name, const char *extra_value)
{
    if (f->n_labels == 0 && extra_name == NULL)
        return;
    bb_buf_puts(out, "{");
    for (size_t i = 0; i < f->n_labels; i++) {
        bb_buf_printf(out, "%s%s=", i ? "," : "", f->def->labels[i]);
        put_label_value(out, s->values[i]);
    }
    if (extra_name) {
        bb_buf_printf(out, "%s%s=", f->n_labels ? "," : "", extra_name);
        put_label_value(out, extra_value);
    }
    bb_buf_puts(out, "}");
}

static void
put_number(struct bb_buf *out, double v)
{
    if (isinf(v))
        bb_buf_puts(out, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        bb_buf_printf(out, "%.0f", v);
    else
        bb_buf_printf(out, "%.9g", v);
}

static void
render_series(struct bb_buf *out, const struct metrics_family *f, const struct metrics_series *s)
{
    const struct metrics_def *def = f->def;
    if (def->type != METRICS_HISTOGRAM) {
        if (def->omit_zero && bits_to_double(s->value_bits) == 0)
            return;
        bb_buf_puts(out, def->name);
        put_labels(out, f, s, NULL, NULL);
        bb_buf_puts(out, " ");
        put_number(out, bits_to_double(s->value_bits));
        bb_buf_puts(out, "\n");
        return;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i < def->n_buckets; i++) {
        char le[32];
        snprintf(le, sizeof le, "%g", def->buckets[i]);
        cumulative += s->buckets[i];
        bb_buf_printf(out, "%s_bucket", def->name);
        put_labels(out, f, s, "le", le);
        bb_buf_printf(out, " %llu\n", (unsigned long long)cumulative);
    }
    uint64_t count = s->count;
    bb_buf_printf(out, "%s_bucket", def->name);
    put_labels(out, f, s, "le", "+Inf");
    bb_buf_printf(out, " %llu\n", (unsigned long long)count);
    bb_buf_printf(out, "%s_sum", def->name);
    put_labels(out, f, s, NULL, NULL);
    bb_buf_puts(out, " ");
    put_number(out, bits_to_double(s->value_bits));
    bb_buf_printf(out, "\n%s_count", def->name);
    put_labels(out, f, s, NULL, NULL);
    bb_buf_printf(out, " %llu\n", (unsigned long long)count);
}

static const char *
type_name(enum metrics_type t)
{
    return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

void
metrics_render(struct bb_buf *out)
{
    pthread_mutex_lock(&registry_mu);
    for (struct metrics_family *f = registry_head; f; f = f->next) {
        bb_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->def->name, f->def->help, f->def->name,
                      type_name(f->def->type));
        pthread_mutex_lock(&f->mu);
        for (size_t i = 0; i < f->n_series; i++)
            render_series(out, f, f->series[i]);
        if (f->overflow)
            render_series(out, f, f->overflow);
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&registry_mu);
}

void
metrics_shutdown(void)
{
    pthread_mutex_lock(&registry_mu);
    struct metrics_family *f = registry_head;
    while (f) {
        struct metrics_family *next = f->next;
        for (size_t i = 0; i < f->n_series; i++)
            series_free(f->series[i], f->n_labels);
        series_free(f->overflow, f->n_labels);
        free(f->series);
        pthread_mutex_destroy(&f->mu);
        f->def->family = NULL;
        free(f);
        f = next;
    }
    registry_head = registry_tail = NULL;
    pthread_mutex_unlock(&registry_mu);
}
