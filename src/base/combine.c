/*
 * combine.c: batches of concurrent callers' work (see base.h, "Combining").
 *
 * Each caller parks a waiter (its item, its state, its own condition
 * variable) in `waiting`, FIFO. A waiter whose item is not taken and who
 * finds fewer than `leaders` batches in flight leads one; when a batch
 * ends, its leader marks every member done and wakes the first in line,
 * who may lead the next. Waking only the waiters concerned keeps a crowd
 * from stampeding the mutex.
 *
 * Locking: `mu` guards `waiting`, `n_waiting`, `leaders` and every parked
 * waiter's `state`. `run` is called without it.
 */
#include "base/base.h"

#include <pthread.h>
#include <stdlib.h>

enum waiter_state { W_WAITING, W_TAKEN, W_DONE };

struct waiter {
    void *item;
    enum waiter_state state; /* guarded by the combiner's mu */
    pthread_cond_t cv;
};

struct bb_combiner {
    struct bb_combiner_options o;
    pthread_mutex_t mu;
    struct waiter **waiting; /* guarded by mu; o.waiting_max slots */
    size_t n_waiting;        /* guarded by mu */
    size_t leaders;          /* guarded by mu */
};

struct bb_combiner *
bb_combiner_create(const struct bb_combiner_options *o)
{
    struct bb_combiner *cb = xcalloc(1, sizeof *cb);
    cb->o = *o;
    if (cb->o.leaders < 1)
        cb->o.leaders = 1;
    if (cb->o.batch_max < 1)
        cb->o.batch_max = 1;
    if (cb->o.waiting_max < 1)
        cb->o.waiting_max = 1;
    cb->waiting = xcalloc(cb->o.waiting_max, sizeof *cb->waiting);
    pthread_mutex_init(&cb->mu, NULL);
    return cb;
}

void
bb_combiner_destroy(struct bb_combiner *cb)
{
    if (cb == NULL)
        return;
    pthread_mutex_destroy(&cb->mu);
    free(cb->waiting);
    free(cb);
}

static void
tell_waiting(struct bb_combiner *cb)
{
    if (cb->o.on_waiting)
        cb->o.on_waiting(cb->n_waiting, cb->o.waiting_ctx);
}

/* Whether w may join the batch m[0..n-1]. */
static bool
joins(const struct bb_combiner *cb, const struct waiter *w, struct waiter *const *m, size_t n)
{
    if (n >= cb->o.batch_max || !cb->o.same(w->item, m[0]->item, cb->o.ctx))
        return false;
    for (size_t i = 0; i < n && cb->o.conflicts; i++)
        if (cb->o.conflicts(w->item, m[i]->item, cb->o.ctx))
            return false;
    return true;
}

/* Take the leader's own item and up to batch_max - 1 more waiting items of
 * its kind that conflict with none taken, oldest first; the rest keep their
 * places. */
static size_t
take_batch(struct bb_combiner *cb, struct waiter *leader, struct waiter **m)
{
    size_t n = 1, kept = 0;
    m[0] = leader;
    for (size_t i = 0; i < cb->n_waiting; i++) {
        struct waiter *w = cb->waiting[i];
        if (w != leader && joins(cb, w, m, n))
            m[n++] = w;
        else if (w != leader)
            cb->waiting[kept++] = w;
    }
    cb->n_waiting = kept;
    tell_waiting(cb);
    for (size_t i = 0; i < n; i++)
        m[i]->state = W_TAKEN;
    return n;
}

/* Run a batch taken under mu; returns with mu held again. */
static void
lead(struct bb_combiner *cb, struct waiter **m, size_t n)
{
    cb->leaders++;
    if (cb->n_waiting > 0 && cb->leaders < cb->o.leaders)
        pthread_cond_signal(&cb->waiting[0]->cv); /* another slot is free */
    pthread_mutex_unlock(&cb->mu);
    void **items = xcalloc(n, sizeof *items);
    for (size_t i = 0; i < n; i++)
        items[i] = m[i]->item;
    cb->o.run(items, n, cb->o.ctx);
    free(items);
    pthread_mutex_lock(&cb->mu);
    for (size_t i = 0; i < n; i++) {
        m[i]->state = W_DONE;
        pthread_cond_signal(&m[i]->cv);
    }
    cb->leaders--;
    if (cb->n_waiting > 0) /* the first in line may lead the next batch */
        pthread_cond_signal(&cb->waiting[0]->cv);
}

bool
bb_combine(struct bb_combiner *cb, void *item)
{
    struct waiter w = {.item = item, .state = W_WAITING};
    pthread_mutex_lock(&cb->mu);
    if (cb->n_waiting == cb->o.waiting_max) {
        pthread_mutex_unlock(&cb->mu);
        return false;
    }
    pthread_cond_init(&w.cv, NULL);
    cb->waiting[cb->n_waiting++] = &w;
    tell_waiting(cb);
    while (w.state != W_DONE) {
        if (w.state == W_TAKEN || cb->leaders >= cb->o.leaders) {
            pthread_cond_wait(&w.cv, &cb->mu);
            continue;
        }
        struct waiter **m = xcalloc(cb->o.batch_max, sizeof *m);
        size_t n = take_batch(cb, &w, m);
        lead(cb, m, n);
        free(m);
    }
    pthread_mutex_unlock(&cb->mu);
    pthread_cond_destroy(&w.cv);
    return true;
}
