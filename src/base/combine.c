/*
 * combine.c: batches of concurrent callers' work (see base.h, "Combining").
 *
 * Each caller parks a waiter (its item, its state, its own semaphore) in
 * `waiting`, FIFO. A waiter whose item is not taken and who finds fewer
 * than `leaders` batches in flight leads one; when a batch ends, its leader
 * marks every member done and wakes it, and wakes the first in line, who
 * may lead the next. A member woken done returns without the combiner's
 * mutex: the crowd a batch ends for does not queue on it (with a condition
 * variable each woken member had to take the mutex back, most often still
 * held by the leader waking the others: two more context switches each).
 *
 * A waiter lives on its caller's stack, so it must not return while a post
 * to its semaphore is under way: every post is counted in `posted` before
 * it is made, a waiter is marked done only after the count of every post it
 * will get, and it takes them all before it returns.
 *
 * Locking: `mu` guards `waiting`, `n_waiting`, `leaders`; a parked waiter's
 * `state` is written under it and read with or without it. `run` is called
 * without it.
 */
#include "base/base.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>

enum waiter_state { W_WAITING, W_TAKEN, W_DONE };

struct waiter {
    void *item;
    _Atomic int state;  /* an enum waiter_state; written under the combiner's mu */
    atomic_uint posted; /* posts to sem made or about to be */
    sem_t sem;
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

/* Under mu: post w's semaphore, counted first; with `done`, w's item is
 * carried (marked between the count and the post, so that a waiter who
 * sees it done knows of every post it will get). */
static void
wake(struct waiter *w, bool done)
{
    atomic_fetch_add(&w->posted, 1);
    if (done)
        atomic_store(&w->state, W_DONE);
    if (sem_post(&w->sem) != 0)
        bb_panic(__FILE__, __LINE__, "sem_post failed");
}

void
bb_sem_wait(sem_t *s)
{
    while (sem_wait(s) != 0)
        if (errno != EINTR)
            bb_panic(__FILE__, __LINE__, "sem_wait failed");
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
        atomic_store(&m[i]->state, W_TAKEN);
    return n;
}

/* Run a batch taken under mu; returns with mu held again. */
static void
lead(struct bb_combiner *cb, struct waiter **m, size_t n)
{
    cb->leaders++;
    if (cb->n_waiting > 0 && cb->leaders < cb->o.leaders)
        wake(cb->waiting[0], false); /* another slot is free */
    pthread_mutex_unlock(&cb->mu);
    void **items = xcalloc(n, sizeof *items);
    for (size_t i = 0; i < n; i++)
        items[i] = m[i]->item;
    cb->o.run(items, n, cb->o.ctx);
    free(items);
    pthread_mutex_lock(&cb->mu);
    atomic_store(&m[0]->state, W_DONE); /* the leader's own */
    for (size_t i = 1; i < n; i++)
        wake(m[i], true);
    cb->leaders--;
    if (cb->n_waiting > 0) /* the first in line may lead the next batch */
        wake(cb->waiting[0], false);
}

bool
bb_combine(struct bb_combiner *cb, void *item)
{
    struct waiter w = {.item = item};
    atomic_init(&w.state, W_WAITING);
    atomic_init(&w.posted, 0);
    unsigned taken = 0; /* posts taken */
    pthread_mutex_lock(&cb->mu);
    if (cb->n_waiting == cb->o.waiting_max) {
        pthread_mutex_unlock(&cb->mu);
        return false;
    }
    if (sem_init(&w.sem, 0, 0) != 0)
        bb_panic(__FILE__, __LINE__, "sem_init failed");
    cb->waiting[cb->n_waiting++] = &w;
    tell_waiting(cb);
    for (;;) {
        int state = atomic_load(&w.state);
        if (state == W_DONE) {
            pthread_mutex_unlock(&cb->mu);
            break;
        }
        if (state == W_WAITING && cb->leaders < cb->o.leaders) {
            struct waiter **m = xcalloc(cb->o.batch_max, sizeof *m);
            size_t n = take_batch(cb, &w, m);
            lead(cb, m, n);
            free(m);
            continue;
        }
        pthread_mutex_unlock(&cb->mu);
        bb_sem_wait(&w.sem);
        taken++;
        if (atomic_load(&w.state) == W_DONE)
            break; /* without the mutex */
        pthread_mutex_lock(&cb->mu);
    }
    for (; taken < atomic_load(&w.posted); taken++) /* posts still on their way */
        bb_sem_wait(&w.sem);
    sem_destroy(&w.sem);
    return true;
}
