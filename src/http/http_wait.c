/*
 * http_wait.c: parking suspended requests until something they wait for may
 * have happened: a blocking lock acquire, a long-poll claim.
 *
 * A parked entry has a key (a lock name, a queue), a time to retry anyway,
 * and a deadline. One thread per list sleeps on a condition variable until
 * the earliest of those; http_waitlist_wake(key) marks entries due at once.
 * Due entries get their retry callback (which re-parks them if they still
 * have to wait); entries past their deadline get give_up.
 *
 * Lost wake-ups: an entry notes its key's wake counter before its attempt
 * (http_waitlist_seq); if a wake of that key came between the attempt and
 * the parking, the entry is due at once. Keys share WAKE_BUCKETS counters by
 * hash, so a wake of another key makes an entry retry early only when the
 * two keys share a counter, not on every wake anywhere.
 *
 * Waking one (locks: a release frees the lock for one waiter, and waking
 * every waiter of it would cost each of them a transaction to learn that
 * one won): http_waitlist_wake_one makes due the entry of the key that came
 * first (`order`: taken at its first park and kept across re-parks through
 * its struct http_wait_turn). A wake is a baton: the entry that had it is
 * told (turn->woken) and must, if it neither takes what it waited for nor
 * parks again, hand it on (http_waitlist_pass), which wakes the next one.
 * A wake-one still moves the key's counter, so an entry between its attempt
 * and its park (not parked: not a candidate) parks due, and with the baton:
 * it may be the only waiter, or the one to which a pass comes too early.
 * That can make one more entry than needed retry, never one fewer.
 *
 * The thread only reads the clock and sleeps; what is due at a given time
 * is decided by run_ready(now), which tests drive with a fake clock through
 * a list without a thread (http__waitlist_create_manual).
 *
 * Locking: `mu` guards the list and `stopping`; callbacks run without it.
 */
#include "http/http_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct parked {
    struct parked *next;
    char *key;
    int64_t retry_at_mono_ms;
    int64_t deadline_mono_ms;
    uint64_t order;              /* first come, first woken by wake_one */
    bool due;                    /* woken: by a wake, or by one between its attempt and park */
    struct http_wait_turn *turn; /* the caller's, may be NULL; told `due` when run */
    http_wait_fn *retry;
    http_giveup_fn *give_up;
    void *arg;
};

enum { WAKE_BUCKETS = 64 };

struct http_waitlist {
    char name[16];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct parked *head;          /* guarded by mu */
    int64_t count;                /* guarded by mu */
    bool stopping;                /* guarded by mu */
    uint64_t wakes[WAKE_BUCKETS]; /* guarded by mu */
    uint64_t last_order;          /* guarded by mu */
    void (*on_count)(int64_t);
    bool threaded; /* false: driven by http__waitlist_run (tests) */
};

/* Detach entries that are due, past their deadline, or (stopping) all. */
static struct parked *
take_ready(struct http_waitlist *w, int64_t now, int64_t *next_wake)
{
    struct parked *ready = NULL, **pp = &w->head;
    *next_wake = now + 60000;
    while (*pp) {
        struct parked *p = *pp;
        if (w->stopping || p->due || p->retry_at_mono_ms <= now || p->deadline_mono_ms <= now) {
            *pp = p->next;
            p->next = ready;
            ready = p;
            w->count--;
            if (p->turn)
                p->turn->woken = p->due;
            continue;
        }
        if (p->retry_at_mono_ms < *next_wake)
            *next_wake = p->retry_at_mono_ms;
        if (p->deadline_mono_ms < *next_wake)
            *next_wake = p->deadline_mono_ms;
        pp = &p->next;
    }
    if (w->on_count)
        w->on_count(w->count);
    return ready;
}

/*
 * One pass at `now`, with mu held (released while callbacks run): the entries
 * ready at `now` get their callback, each once. Returns how many ran; sets
 * *next_wake to the earliest retry or deadline among the entries left
 * (now + 60 s when none), as they were before the callbacks, which may have
 * parked or woken entries: after any ran, the caller passes again.
 */
static size_t
run_ready(struct http_waitlist *w, int64_t now, int64_t *next_wake)
{
    struct parked *ready = take_ready(w, now, next_wake);
    bool stopping = w->stopping;
    if (ready == NULL)
        return 0;
    pthread_mutex_unlock(&w->mu);
    size_t n = 0;
    while (ready) {
        struct parked *next = ready->next;
        /* A woken entry gets its attempt even past its deadline: what woke
         * it may be what it waited for, and the attempt ends the wait
         * either way. */
        if (stopping)
            ready->give_up(ready->arg, ERR_UNAVAILABLE);
        else if (ready->deadline_mono_ms <= now && !ready->due)
            ready->give_up(ready->arg, ERR_TIMEOUT);
        else
            ready->retry(ready->arg);
        free(ready->key);
        free(ready);
        ready = next;
        n++;
    }
    pthread_mutex_lock(&w->mu);
    return n;
}

static void
wait_until(struct http_waitlist *w, int64_t mono_ms)
{
    int64_t delta = mono_ms - bb_mono_ms();
    if (delta <= 0)
        return;
    bb_cond_wait_ms(&w->cv, &w->mu, delta);
}

static void *
waitlist_main(void *arg)
{
    struct http_waitlist *w = arg;
    pthread_setname_np(pthread_self(), w->name);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        int64_t next_wake;
        if (run_ready(w, bb_mono_ms(), &next_wake) > 0)
            continue;
        if (w->stopping)
            break;
        wait_until(w, next_wake);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static struct http_waitlist *
waitlist_new(const char *thread_name, void (*on_count)(int64_t))
{
    struct http_waitlist *w = xcalloc(1, sizeof *w);
    bb_strlcpy(w->name, thread_name, sizeof w->name);
    w->on_count = on_count;
    pthread_mutex_init(&w->mu, NULL);
    bb_cond_init_mono(&w->cv);
    return w;
}

struct http_waitlist *
http_waitlist_create(const char *thread_name, void (*on_count)(int64_t))
{
    struct http_waitlist *w = waitlist_new(thread_name, on_count);
    if (pthread_create(&w->thread, NULL, waitlist_main, w) != 0)
        bb_panic(__FILE__, __LINE__, "cannot start %s thread", thread_name);
    w->threaded = true;
    return w;
}

struct http_waitlist *
http__waitlist_create_manual(void (*on_count)(int64_t))
{
    return waitlist_new("manual", on_count);
}

size_t
http__waitlist_run(struct http_waitlist *w, int64_t now_mono_ms, int64_t *next_mono_ms)
{
    BB_ASSERT(!w->threaded);
    pthread_mutex_lock(&w->mu);
    size_t n = run_ready(w, now_mono_ms, next_mono_ms);
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* FNV-1a, folded onto the buckets. */
static size_t
bucket_of(const char *key)
{
    return (size_t)(bb_fnv1a(BB_FNV1A_BASIS, key) % WAKE_BUCKETS);
}

uint64_t
http_waitlist_seq(struct http_waitlist *w, const char *key)
{
    pthread_mutex_lock(&w->mu);
    uint64_t seq = w->wakes[bucket_of(key)];
    pthread_mutex_unlock(&w->mu);
    return seq;
}

bool
http_waitlist_park(struct http_waitlist *w, const char *key, int64_t retry_at_mono_ms,
                   int64_t deadline_mono_ms, uint64_t seen_seq, http_wait_fn *retry,
                   http_giveup_fn *give_up, void *arg)
{
    return http_waitlist_park_in_line(w, key, retry_at_mono_ms, deadline_mono_ms, seen_seq, NULL,
                                      retry, give_up, arg);
}

bool
http_waitlist_park_in_line(struct http_waitlist *w, const char *key, int64_t retry_at_mono_ms,
                           int64_t deadline_mono_ms, uint64_t seen_seq, struct http_wait_turn *turn,
                           http_wait_fn *retry, http_giveup_fn *give_up, void *arg)
{
    struct parked *p = xcalloc(1, sizeof *p);
    p->key = xstrdup(key);
    p->retry_at_mono_ms = retry_at_mono_ms;
    p->deadline_mono_ms = deadline_mono_ms;
    p->retry = retry;
    p->give_up = give_up;
    p->arg = arg;
    pthread_mutex_lock(&w->mu);
    if (w->stopping) {
        pthread_mutex_unlock(&w->mu);
        free(p->key);
        free(p);
        return false;
    }
    p->due = w->wakes[bucket_of(key)] != seen_seq;
    p->turn = turn;
    if (turn && turn->order != 0) {
        p->order = turn->order; /* parked again: keeps its place */
    } else {
        p->order = ++w->last_order;
        if (turn)
            turn->order = p->order;
    }
    if (turn)
        turn->woken = false; /* parked again: the baton, if it had it, is spent */
    p->next = w->head;
    w->head = p;
    w->count++;
    if (w->on_count)
        w->on_count(w->count);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return true;
}

size_t
http_waitlist_wake(struct http_waitlist *w, const char *key)
{
    pthread_mutex_lock(&w->mu);
    if (key == NULL) {
        for (size_t i = 0; i < WAKE_BUCKETS; i++)
            w->wakes[i]++;
    } else {
        w->wakes[bucket_of(key)]++;
    }
    size_t n = 0;
    for (struct parked *p = w->head; p; p = p->next) {
        if (key == NULL || strcmp(p->key, key) == 0) {
            p->due = true;
            n++;
        }
    }
    if (n > 0)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return n;
}

size_t
http_waitlist_wake_one(struct http_waitlist *w, const char *key)
{
    if (key == NULL)
        return http_waitlist_wake(w, NULL);
    pthread_mutex_lock(&w->mu);
    w->wakes[bucket_of(key)]++;
    struct parked *first = NULL;
    for (struct parked *p = w->head; p; p = p->next) {
        if (strcmp(p->key, key) == 0 && (first == NULL || p->order < first->order))
            first = p;
    }
    /* Already due, the first entry still runs after this wake: one attempt
     * answers both. */
    if (first) {
        first->due = true;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return first ? 1 : 0;
}

size_t
http_waitlist_pass(struct http_waitlist *w, const char *key, struct http_wait_turn *turn)
{
    if (!turn->woken)
        return 0;
    turn->woken = false;
    return http_waitlist_wake_one(w, key);
}

void
http_waitlist_stop(struct http_waitlist *w)
{
    pthread_mutex_lock(&w->mu);
    bool already = w->stopping;
    w->stopping = true;
    pthread_cond_signal(&w->cv);
    if (!already && !w->threaded) {
        /* No thread to give the entries up: do it here (any time will do,
         * stopping gives every entry up). */
        int64_t unused;
        while (run_ready(w, 0, &unused) > 0) {
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (!already && w->threaded)
        pthread_join(w->thread, NULL);
}

void
http_waitlist_destroy(struct http_waitlist *w)
{
    if (w == NULL)
        return;
    http_waitlist_stop(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
