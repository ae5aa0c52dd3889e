/*
 * pool.c: a fixed set of named threads taking tasks from one bounded queue
 * (mutex + condition variable), for work that waits on something slow (a
 * payment provider) and must not hold an HTTP or database thread meanwhile.
 *
 * Locking: `mu` guards the queue and `stopping`; `n_threads` changes only
 * in create and stop (one caller).
 */
#include "base/base.h"

#include <pthread.h>
#include <stdlib.h>

struct task {
    struct task *next;
    bb_task_fn *fn;
    void *arg;
};

struct bb_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct task *head, *tail; /* guarded by mu */
    size_t len, max;          /* guarded by mu (max is fixed) */
    bool stopping;            /* guarded by mu */
    pthread_t *threads;
    size_t n_threads;
    char name[16];
};

static void *
pool_main(void *arg)
{
    struct bb_pool *p = arg;
    pthread_setname_np(pthread_self(), p->name);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        struct task *t = p->head;
        if (t == NULL) /* stopping and drained */
            break;
        p->head = t->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->len--;
        pthread_mutex_unlock(&p->mu);
        t->fn(t->arg);
        free(t);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct bb_pool *
bb_pool_create(const char *name, size_t threads, size_t queue_max)
{
    BB_ASSERT(threads > 0 && queue_max > 0);
    struct bb_pool *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max = queue_max;
    bb_strlcpy(p->name, name, sizeof p->name);
    p->threads = xcalloc(threads, sizeof *p->threads);
    for (size_t i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0)
            bb_panic(__FILE__, __LINE__, "cannot start pool thread %s", name);
        p->n_threads++;
    }
    return p;
}

enum err
bb_pool_submit(struct bb_pool *p, bb_task_fn *fn, void *arg)
{
    struct task *t = xmalloc(sizeof *t);
    *t = (struct task){.fn = fn, .arg = arg};
    pthread_mutex_lock(&p->mu);
    enum err rc = p->stopping ? ERR_UNAVAILABLE : p->len >= p->max ? ERR_OVERLOADED : ERR_OK;
    if (rc == ERR_OK) {
        if (p->tail)
            p->tail->next = t;
        else
            p->head = t;
        p->tail = t;
        p->len++;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (rc != ERR_OK)
        free(t);
    return rc;
}

void
bb_pool_stop(struct bb_pool *p)
{
    pthread_mutex_lock(&p->mu);
    bool joined = p->stopping && p->n_threads == 0;
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (joined)
        return;
    for (size_t i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    p->n_threads = 0; /* only the stopping thread touches it now */
}

void
bb_pool_destroy(struct bb_pool *p)
{
    if (p == NULL)
        return;
    bb_pool_stop(p);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}
