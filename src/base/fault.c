/*
 * fault.c: fault points for tests (STYLE.md section 9).
 *
 * The armed points live in a table that is never changed once published:
 * arming builds a new one and swaps the pointer, so bb_fault reads it
 * without a lock. Tables replaced stay on a list until the process ends
 * (tests arm a handful of times), so a thread still reading one is safe.
 */
#include "base/base.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum fault_mode { FAULT_ONCE, FAULT_FROM, FAULT_SHARE };

struct fault_point {
    char name[BB_FAULT_NAME_MAX + 1];
    enum fault_mode mode;
    int64_t n;   /* ONCE, FROM: the call that fails (first of them); SHARE: 1 in n */
    int64_t max; /* most failures in all; 0: no bound */
    uint64_t salt;
    _Atomic int64_t calls;
    _Atomic int64_t injected;
};

struct fault_table {
    struct fault_table *older;
    bool here; /* only `owner`'s calls count (bb_faults_arm_here) */
    pthread_t owner;
    size_t n;
    struct fault_point points[BB_FAULT_POINTS_MAX];
};

static _Atomic(struct fault_table *) armed;
static void (*_Atomic on_inject)(const char *point);
static struct fault_table *retired; /* guarded by arm_mu */
static pthread_mutex_t arm_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t
mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int64_t
parse_count(const char *text, size_t len)
{
    if (len == 0 || len > 12)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        v = v * 10 + (text[i] - '0');
    }
    return v;
}

/* One `name=spec` entry of `len` bytes into *p. */
static enum err
parse_point(const char *text, size_t len, uint64_t seed, struct fault_point *p, struct bb_error *e)
{
    const char *eq = memchr(text, '=', len);
    size_t name_len = eq ? (size_t)(eq - text) : 0;
    if (eq == NULL || name_len == 0 || name_len > BB_FAULT_NAME_MAX)
        return bb_fail(e, ERR_USAGE, "faults", "'%.*s' is not NAME=SPEC", (int)len, text);
    memset(p, 0, sizeof *p);
    memcpy(p->name, text, name_len);
    const char *spec = eq + 1;
    size_t spec_len = len - name_len - 1;
    const char *x = memchr(spec, 'x', spec_len);
    if (x) {
        p->max = parse_count(x + 1, spec_len - (size_t)(x - spec) - 1);
        spec_len = (size_t)(x - spec);
        if (p->max < 1)
            return bb_fail(e, ERR_USAGE, "faults", "%s: the bound after x must be a count",
                           p->name);
    }
    if (spec_len > 2 && spec[0] == '1' && spec[1] == '/') {
        p->mode = FAULT_SHARE;
        p->n = parse_count(spec + 2, spec_len - 2);
    } else if (spec_len > 1 && spec[spec_len - 1] == '+') {
        p->mode = FAULT_FROM;
        p->n = parse_count(spec, spec_len - 1);
    } else {
        p->mode = FAULT_ONCE;
        p->n = parse_count(spec, spec_len);
    }
    if (p->n < 1)
        return bb_fail(e, ERR_USAGE, "faults", "%s: '%.*s' is not N, N+ or 1/K", p->name,
                       (int)(len - name_len - 1), spec);
    p->salt = mix64(seed);
    for (size_t i = 0; i < name_len; i++)
        p->salt = mix64(p->salt ^ (unsigned char)p->name[i]);
    return ERR_OK;
}

static void
publish(struct fault_table *t)
{
    pthread_mutex_lock(&arm_mu);
    struct fault_table *old = atomic_exchange(&armed, t);
    if (old) {
        old->older = retired;
        retired = old;
    }
    pthread_mutex_unlock(&arm_mu);
}

static enum err
arm(const char *spec, uint64_t seed, bool here, struct bb_error *e)
{
    struct fault_table *t = xcalloc(1, sizeof *t);
    t->here = here;
    t->owner = pthread_self();
    const char *p = spec;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (t->n == BB_FAULT_POINTS_MAX) {
            free(t);
            return bb_fail(e, ERR_USAGE, "faults", "at most %d points", BB_FAULT_POINTS_MAX);
        }
        enum err rc = parse_point(p, len, seed, &t->points[t->n], e);
        if (rc != ERR_OK) {
            free(t);
            return rc;
        }
        t->n++;
        p += len;
        if (*p == ',')
            p++;
    }
#ifndef BB_FAULTS
    free(t);
    return bb_fail(e, ERR_USAGE, "faults", "this build has no fault points (test builds have)");
#else
    publish(t);
    return ERR_OK;
#endif
}

enum err
bb_faults_arm(const char *spec, uint64_t seed, struct bb_error *e)
{
    return arm(spec, seed, false, e);
}

enum err
bb_faults_arm_here(const char *spec, uint64_t seed, struct bb_error *e)
{
    return arm(spec, seed, true, e);
}

void
bb_faults_disarm(void)
{
    publish(NULL);
}

void
bb_faults_on_inject(void (*fn)(const char *point))
{
    atomic_store_explicit(&on_inject, fn, memory_order_release);
}

static struct fault_point *
find(struct fault_table *t, const char *point)
{
    for (size_t i = 0; t && i < t->n; i++) {
        if (strcmp(t->points[i].name, point) == 0)
            return &t->points[i];
    }
    return NULL;
}

int64_t
bb_faults_injected(const char *point)
{
    struct fault_point *p = find(atomic_load(&armed), point);
    return p ? atomic_load(&p->injected) : 0;
}

#ifdef BB_FAULTS
bool
bb_fault(const char *point)
{
    struct fault_table *t = atomic_load_explicit(&armed, memory_order_acquire);
    if (t == NULL || (t->here && !pthread_equal(t->owner, pthread_self())))
        return false;
    struct fault_point *p = find(t, point);
    if (p == NULL)
        return false;
    int64_t call = atomic_fetch_add(&p->calls, 1) + 1;
    bool hit = p->mode == FAULT_ONCE   ? call == p->n
               : p->mode == FAULT_FROM ? call >= p->n
                                       : mix64(p->salt ^ (uint64_t)call) % (uint64_t)p->n == 0;
    if (!hit)
        return false;
    int64_t done = atomic_load(&p->injected);
    do {
        if (p->max > 0 && done >= p->max)
            return false;
    } while (!atomic_compare_exchange_weak(&p->injected, &done, done + 1));
    void (*fn)(const char *) = atomic_load_explicit(&on_inject, memory_order_acquire);
    if (fn)
        fn(point);
    return true;
}
#endif
