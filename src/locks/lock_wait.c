/*
 * lock_wait.c: blocking acquires without blocking threads or polling the
 * database in a loop.
 *
 * An acquire that finds its lock held, and may still wait, is parked here
 * with its (suspended) HTTP request. It is retried when:
 *   - a release of that lock is announced (store notification: in-process on
 *     SQLite, LISTEN/NOTIFY from any process on PostgreSQL);
 *   - the holder's lease runs out (we know when: retry_at);
 *   - the listener reconnected and notifications may have been lost
 *     (payload NULL: every waiter retries);
 *   - at the latest every RECHECK_MS, a backstop against a lost notification.
 * When its deadline passes first it is answered 409.
 *
 * One thread ("bb-lock-wait") sleeps on a condition variable until the
 * earliest retry or deadline. Locking: `mu` guards the list and `stopping`;
 * it is never held while calling into the store or answering requests.
 */
#include "locks/locks_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { RECHECK_MS = 1000 };

struct parked {
    struct parked *next;
    struct locks__op *op;
    int64_t retry_at_mono_ms;
    int64_t deadline_mono_ms;
    bool due; /* a release of this lock was announced */
};

struct locks__waiters {
    struct store *store;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct parked *head; /* guarded by mu */
    int64_t count;       /* guarded by mu */
    bool stopping;       /* guarded by mu */
    /* Releases announced so far. An op notes it before each attempt; if it
     * moved by the time the op parks, a release may have slipped in between
     * the attempt and the parking, so the op retries at once. */
    _Atomic uint64_t releases;
};

static void
on_release(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct locks__waiters *w = arg;
    pthread_mutex_lock(&w->mu);
    w->releases++;
    bool any = false;
    for (struct parked *p = w->head; p; p = p->next) {
        if (payload == NULL || strcmp(locks__op_name(p->op), payload) == 0) {
            p->due = true;
            any = true;
        }
    }
    if (any)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Detach every parked op that is due, expired or (when stopping) any. */
static struct parked *
take_ready(struct locks__waiters *w, int64_t now, int64_t *next_wake)
{
    struct parked *ready = NULL, **pp = &w->head;
    *next_wake = now + RECHECK_MS;
    while (*pp) {
        struct parked *p = *pp;
        if (w->stopping || p->due || p->retry_at_mono_ms <= now || p->deadline_mono_ms <= now) {
            *pp = p->next;
            p->next = ready;
            ready = p;
            w->count--;
            continue;
        }
        if (p->retry_at_mono_ms < *next_wake)
            *next_wake = p->retry_at_mono_ms;
        if (p->deadline_mono_ms < *next_wake)
            *next_wake = p->deadline_mono_ms;
        pp = &p->next;
    }
    locks__metric_waiters(w->count);
    return ready;
}

static void
wait_until(struct locks__waiters *w, int64_t mono_ms)
{
    int64_t delta = mono_ms - bb_mono_ms();
    if (delta <= 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += delta / 1000;
    ts.tv_nsec += (delta % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
}

static void *
waiter_main(void *arg)
{
    struct locks__waiters *w = arg;
    pthread_setname_np(pthread_self(), "bb-lock-wait");
    pthread_mutex_lock(&w->mu);
    for (;;) {
        int64_t now = bb_mono_ms(), next_wake;
        struct parked *ready = take_ready(w, now, &next_wake);
        bool stopping = w->stopping;
        if (ready) {
            pthread_mutex_unlock(&w->mu);
            while (ready) {
                struct parked *next = ready->next;
                if (stopping)
                    locks__op_give_up(ready->op, ERR_UNAVAILABLE);
                else if (ready->deadline_mono_ms <= now && !ready->due)
                    locks__op_give_up(ready->op, ERR_LOCK_HELD);
                else
                    locks__op_retry(ready->op); /* re-parks itself if still held */
                free(ready);
                ready = next;
            }
            pthread_mutex_lock(&w->mu);
            continue;
        }
        if (stopping)
            break;
        wait_until(w, next_wake);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

struct locks__waiters *
locks__waiters_create(struct store *s)
{
    struct locks__waiters *w = xcalloc(1, sizeof *w);
    w->store = s;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->thread, NULL, waiter_main, w) != 0)
        bb_panic(__FILE__, __LINE__, "cannot start lock waiter thread");
    if (store_listen(s, LOCKS__CHANNEL, on_release, w) != ERR_OK)
        log_warn("locks.listen_failed", "channel=%s", LOCKS__CHANNEL);
    return w;
}

uint64_t
locks__waiters_seq(struct locks__waiters *w)
{
    return w->releases;
}

bool
locks__waiters_park(struct locks__waiters *w, struct locks__op *op, int64_t retry_at_mono_ms,
                    uint64_t seen_seq)
{
    struct parked *p = xcalloc(1, sizeof *p);
    p->op = op;
    p->deadline_mono_ms = locks__op_deadline(op);
    p->retry_at_mono_ms = retry_at_mono_ms;
    pthread_mutex_lock(&w->mu);
    p->due = w->releases != seen_seq;
    if (w->stopping) {
        pthread_mutex_unlock(&w->mu);
        free(p);
        return false;
    }
    p->next = w->head;
    w->head = p;
    w->count++;
    locks__metric_waiters(w->count);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return true;
}

void
locks__waiters_stop(struct locks__waiters *w)
{
    pthread_mutex_lock(&w->mu);
    bool already = w->stopping;
    w->stopping = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (!already)
        pthread_join(w->thread, NULL);
}

void
locks__waiters_destroy(struct locks__waiters *w)
{
    if (w == NULL)
        return;
    store_unlisten(w->store, on_release, w);
    locks__waiters_stop(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
