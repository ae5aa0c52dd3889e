/*
 * ticker.c: a named thread that runs one function now and then again at an
 * interval, until stopped: the loops of the job scheduler, the reservation
 * sweeper and the outbox pruner.
 *
 * Locking: `mu` guards `stopping`; the rest is fixed from start to stop.
 */
#include "base/base.h"

#include <pthread.h>
#include <stdlib.h>

struct bb_ticker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping; /* guarded by mu */
    pthread_t thread;
    int64_t every_ms;
    bb_task_fn *fn;
    void *arg;
    char name[16];
};

static void *
ticker_main(void *arg)
{
    struct bb_ticker *t = arg;
    pthread_setname_np(pthread_self(), t->name);
    pthread_mutex_lock(&t->mu);
    while (!t->stopping) {
        pthread_mutex_unlock(&t->mu);
        t->fn(t->arg);
        pthread_mutex_lock(&t->mu);
        if (!t->stopping)
            bb_cond_wait_ms(&t->cv, &t->mu, t->every_ms);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

enum err
bb_ticker_start(const char *name, int64_t every_ms, bb_task_fn *fn, void *arg,
                struct bb_ticker **out, struct bb_error *e)
{
    BB_ASSERT(every_ms > 0);
    struct bb_ticker *t = xcalloc(1, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    bb_cond_init_mono(&t->cv);
    t->every_ms = every_ms;
    t->fn = fn;
    t->arg = arg;
    bb_strlcpy(t->name, name, sizeof t->name);
    *out = t;
    if (pthread_create(&t->thread, NULL, ticker_main, t) != 0) {
        *out = NULL;
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        free(t);
        return bb_fail(e, ERR_INTERNAL, "", "cannot start the %s thread", name);
    }
    return ERR_OK;
}

bool
bb_ticker_stopping(struct bb_ticker *t)
{
    pthread_mutex_lock(&t->mu);
    bool stopping = t->stopping;
    pthread_mutex_unlock(&t->mu);
    return stopping;
}

void
bb_ticker_stop(struct bb_ticker *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    t->stopping = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}
