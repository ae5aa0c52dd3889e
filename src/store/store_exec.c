/*
 * store_exec.c: the executor (group commit) and the PostgreSQL listener.
 *
 * Units of work arrive through bounded queues (mutex + condition variable).
 * An executor thread owns one connection; it takes the next unit and, for
 * writes, up to batch_max-1 more that are already waiting, runs them in one
 * transaction (each inside its own SAVEPOINT when there are several, so one
 * unit's failure undoes only its own changes), commits once, and only then
 * reports every unit's outcome. On SQLite a single writer thread does this,
 * turning many concurrent requests into one fsync; on PostgreSQL several
 * threads run one unit per transaction and the server groups the WAL flushes.
 *
 * Invariant: `done` is called exactly once per accepted unit, after its
 * outcome is final: committed, rolled back, or unknown (connection lost
 * during COMMIT, reported as ERR_UNAVAILABLE).
 *
 * Locking: each queue's mutex guards its list. Lock order: a queue's mutex
 * is never held while calling work, done or listener callbacks.
 */
#include "store/store_int.h"

#include <errno.h>
#include <poll.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

enum { RETRY_LIMIT = 20 };

struct store__item {
    struct store__item *next;
    enum store_txn mode;
    const struct store_group *group; /* NULL: none */
    void *group_arg;                 /* what the group's `many` gets for it */
    store_work_fn *work;
    store_done_fn *done;
    void *arg;
    enum err rc;
    struct bb_error err;
};

struct exec_thread {
    struct store *store;
    struct store__queue *queue;
    char name[16];
};

static void
queue_init(struct store__queue *q)
{
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->head = q->tail = NULL;
    q->len = 0;
    q->stopping = false;
}

static void
queue_deinit(struct store__queue *q)
{
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
}

static enum err
submit(struct store *s, enum store_txn mode, const struct store_group *g, void *group_arg,
       store_work_fn *work, store_done_fn *done, void *arg)
{
    struct store__queue *q = mode == STORE_WRITE ? s->writeq : s->readq;
    struct store__item *it = xcalloc(1, sizeof *it);
    it->mode = mode;
    it->group = g;
    it->group_arg = group_arg;
    it->work = work;
    it->done = done;
    it->arg = arg;
    pthread_mutex_lock(&q->mu);
    if (q->stopping || q->len >= (size_t)s->opt.queue_max) {
        enum err rc = q->stopping ? ERR_UNAVAILABLE : ERR_OVERLOADED;
        pthread_mutex_unlock(&q->mu);
        free(it);
        return rc;
    }
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->len++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return ERR_OK;
}

enum err
store_submit_grouped(struct store *s, enum store_txn mode, const struct store_group *g,
                     store_work_fn *work, store_done_fn *done, void *arg)
{
    return submit(s, mode, g, arg, work, done, arg);
}

enum err
store_submit(struct store *s, enum store_txn mode, store_work_fn *work, store_done_fn *done,
             void *arg)
{
    return submit(s, mode, NULL, NULL, work, done, arg);
}

/* ---- synchronous wrapper ----------------------------------------------------- */

/* The caller sleeps on a semaphore the executor posts once, after writing
 * rc and err: woken, it takes no lock (a condition variable's mutex, still
 * held by the executor that signalled, cost two more context switches). */
struct run_wait {
    sem_t done;
    enum err rc;
    struct bb_error err;
    store_work_fn *work;
    void *arg;
};

static enum err
run_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct run_wait *w = arg;
    return w->work(c, w->arg, e);
}

static void
run_done(void *arg, enum err rc, const struct bb_error *e)
{
    struct run_wait *w = arg;
    w->rc = rc;
    if (e)
        w->err = *e;
    if (sem_post(&w->done) != 0)
        bb_panic(__FILE__, __LINE__, "sem_post failed");
}

enum err
store_run_grouped(struct store *s, enum store_txn mode, const struct store_group *g,
                  store_work_fn *work, void *arg, struct bb_error *e)
{
    struct run_wait w = {.work = work, .arg = arg};
    if (sem_init(&w.done, 0, 0) != 0)
        bb_panic(__FILE__, __LINE__, "sem_init failed");
    enum err rc = submit(s, mode, g, arg, run_work, run_done, &w);
    if (rc != ERR_OK) {
        bb_fail(e, rc, "", "%s",
                rc == ERR_OVERLOADED ? "database queue is full" : "store is shutting down");
    } else {
        bb_sem_wait(&w.done);
        rc = w.rc;
        if (rc != ERR_OK && e)
            *e = w.err;
    }
    sem_destroy(&w.done);
    return rc;
}

enum err
store_run(struct store *s, enum store_txn mode, store_work_fn *work, void *arg, struct bb_error *e)
{
    return store_run_grouped(s, mode, NULL, work, arg, e);
}

/* ---- the executor loop --------------------------------------------------------- */

/* Unlink up to group->max - 1 more units of first's group from the queue
 * (under its mutex), wherever they wait, and chain them after `first`. */
static size_t
take_group(struct store__queue *q, struct store__item *first)
{
    size_t n = 1;
    struct store__item *last = first, *prev = NULL;
    for (struct store__item *it = q->head; it && n < first->group->max;) {
        struct store__item *next = it->next;
        if (it->group == first->group && it->mode == first->mode) {
            if (prev)
                prev->next = next;
            else
                q->head = next;
            if (q->tail == it)
                q->tail = prev;
            it->next = NULL;
            last->next = it;
            last = it;
            n++;
        } else {
            prev = it;
        }
        it = next;
    }
    return n;
}

/* Take the next unit and, for writes, up to batch_max-1 more waiting writes
 * (or, for a unit of a group, up to the group's max of that group).
 * Returns NULL when the queue is stopping and empty. */
static struct store__item *
queue_take(struct store *s, struct store__queue *q, size_t *n_out)
{
    pthread_mutex_lock(&q->mu);
    while (q->head == NULL && !q->stopping)
        pthread_cond_wait(&q->cv, &q->mu);
    struct store__item *first = q->head;
    size_t n = 0;
    if (first && first->group) {
        q->head = first->next;
        if (q->head == NULL)
            q->tail = NULL;
        first->next = NULL;
        n = take_group(q, first);
        q->len -= n;
    } else if (first) {
        struct store__item *last = first;
        n = 1;
        size_t max = first->mode == STORE_WRITE ? (size_t)s->opt.batch_max : 1;
        while (n < max && last->next && last->next->mode == first->mode &&
               last->next->group == NULL) {
            last = last->next;
            n++;
        }
        q->head = last->next;
        if (q->head == NULL)
            q->tail = NULL;
        last->next = NULL;
        q->len -= n;
    }
    store__metrics_queue_depth(q->len);
    pthread_mutex_unlock(&q->mu);
    *n_out = n;
    return first;
}

static void
backoff_retry(struct store *s, int attempt)
{
    store__metrics_retry(s->ops->engine);
    int64_t base = 1 << (attempt < 6 ? attempt : 6); /* 2..64 ms */
    bb_sleep_ms(bb_jitter_ms(base, 0.5));
}

/* Run one unit inside the open transaction, under a savepoint when `nested`.
 * Retries the unit alone on ERR_RETRY. */
static void
run_unit(struct store_conn *c, struct store__item *it, bool nested)
{
    struct store *s = c->store;
    for (int attempt = 1;; attempt++) {
        size_t notes_mark = c->n_notes, afters_mark = c->n_afters;
        bb_error_clear(&it->err);
        if (nested) {
            it->rc = c->ops->exec_script(c, "SAVEPOINT bb_unit", &it->err);
            if (it->rc != ERR_OK)
                return;
        }
        it->rc = it->work(c, it->arg, &it->err);
        if (it->rc == ERR_OK) {
            bb_error_clear(&it->err);
            if (nested)
                it->rc = c->ops->exec_script(c, "RELEASE SAVEPOINT bb_unit", &it->err);
            return;
        }
        if (it->err.code == ERR_OK)
            bb_fail(&it->err, it->rc, "", "%s", bb_err_title(it->rc));
        it->err.code = it->rc;
        store__notes_truncate(c, notes_mark);
        store__afters_run(c, afters_mark, false);
        if (!nested)
            return; /* the caller rolls the whole transaction back */
        struct bb_error ignored;
        if (c->ops->exec_script(c, "ROLLBACK TO SAVEPOINT bb_unit; RELEASE SAVEPOINT bb_unit",
                                &ignored) != ERR_OK) {
            it->rc = ERR_UNAVAILABLE;
            return;
        }
        if (it->rc != ERR_RETRY || attempt >= RETRY_LIMIT)
            return;
        backoff_retry(s, attempt);
    }
}

static void
fail_all(struct store__item *items, enum err rc, const struct bb_error *e)
{
    for (struct store__item *it = items; it; it = it->next) {
        if (it->rc == ERR_OK) {
            it->rc = rc;
            it->err = *e;
            it->err.code = rc; /* the reply is by the code: a commit's trouble is 503 */
        }
    }
}

/* One transaction for a group's units (n > 1), through its `many`, setting
 * each unit's rc. False when `many` failed as a whole: each must then run
 * alone. A commit that fails fails every unit (its outcome is unknown). */
static bool
run_group(struct store_conn *c, struct store__item *items, size_t n)
{
    struct store *s = c->store;
    const struct store_group *g = items->group;
    void **args = xcalloc(n, sizeof *args);
    enum err *rcs = xcalloc(n, sizeof *rcs);
    struct bb_error *errors = xcalloc(n, sizeof *errors);
    size_t i = 0;
    for (struct store__item *it = items; it; it = it->next)
        args[i++] = it->group_arg;
    enum err rc = ERR_RETRY;
    bool many_ok = false;
    struct bb_error e;
    bb_error_clear(&e);
    for (int attempt = 1; rc == ERR_RETRY && attempt <= RETRY_LIMIT; attempt++) {
        if (attempt > 1)
            backoff_retry(s, attempt - 1);
        int64_t t0 = bb_mono_ns();
        for (size_t k = 0; k < n; k++) {
            rcs[k] = ERR_OK;
            bb_error_clear(&errors[k]);
        }
        many_ok = false;
        rc = store_begin(c, items->mode, &e);
        if (rc == ERR_OK) {
            rc = g->many(c, (void *const *)args, n, rcs, errors, g->ctx, &e);
            many_ok = rc == ERR_OK;
            if (many_ok)
                rc = store_commit(c, &e);
            else
                store_rollback(c);
        }
        if (items->mode == STORE_WRITE)
            store__metrics_batch(s->ops->engine, n, bb_mono_ns() - t0, rc == ERR_OK);
    }
    i = 0;
    for (struct store__item *it = items; it; it = it->next, i++) {
        it->rc = rc == ERR_OK ? rcs[i] : rc == ERR_RETRY ? ERR_RETRY : ERR_UNAVAILABLE;
        it->err = rc == ERR_OK ? errors[i] : e;
        if (rc != ERR_OK)
            it->err.code = it->rc;
        if (it->rc != ERR_OK && it->err.code == ERR_OK)
            bb_fail(&it->err, it->rc, "", "%s", bb_err_title(it->rc));
    }
    free(errors);
    free(rcs);
    free(args);
    return many_ok || rc == ERR_OK;
}

/* One transaction for `items` (n > 0). Sets each item's rc. */
static void
run_batch(struct store_conn *c, struct store__item *items, size_t n)
{
    struct store *s = c->store;
    bool nested = n > 1;
    for (int attempt = 1;; attempt++) {
        int64_t t0 = bb_mono_ns();
        struct bb_error e;
        bb_error_clear(&e);
        for (struct store__item *it = items; it; it = it->next)
            it->rc = ERR_OK;
        enum err rc = store_begin(c, items->mode, &e);
        if (rc == ERR_OK) {
            for (struct store__item *it = items; it; it = it->next)
                run_unit(c, it, nested);
            if (!nested && items->rc != ERR_OK) {
                store_rollback(c);
                rc = items->rc; /* the unit's own outcome; retried below if ERR_RETRY */
                e = items->err;
            } else {
                rc = store_commit(c, &e);
                if (rc != ERR_OK)
                    fail_all(items, rc == ERR_RETRY ? ERR_RETRY : ERR_UNAVAILABLE, &e);
            }
        } else {
            fail_all(items, rc, &e);
        }
        if (items->mode == STORE_WRITE)
            store__metrics_batch(s->ops->engine, n, bb_mono_ns() - t0, rc == ERR_OK);
        if (rc != ERR_RETRY || attempt >= RETRY_LIMIT)
            return;
        backoff_retry(s, attempt);
    }
}

static void *
exec_thread_main(void *arg)
{
    struct exec_thread *t = arg;
    struct store *s = t->store;
    pthread_setname_np(pthread_self(), t->name);
    struct store_conn *c = NULL;
    for (;;) {
        size_t n;
        struct store__item *items = queue_take(s, t->queue, &n);
        if (items == NULL)
            break;
        struct bb_error e;
        bb_error_clear(&e);
        if (c && c->ops->is_broken(c)) {
            store_conn_close(c);
            c = NULL;
        }
        if (c == NULL && store__conn_connect(s, &c, &e) != ERR_OK) {
            c = NULL;
            for (struct store__item *it = items; it; it = it->next)
                it->rc = ERR_OK;
            fail_all(items, ERR_UNAVAILABLE, &e);
        } else if (n > 1 && items->group) {
            if (!run_group(c, items, n)) { /* each alone, in order */
                store__metrics_group_fallback(s->ops->engine);
                for (struct store__item *it = items; it; it = it->next) {
                    struct store__item *next = it->next;
                    it->next = NULL;
                    run_batch(c, it, 1);
                    it->next = next;
                }
            }
        } else {
            run_batch(c, items, n);
        }
        while (items) {
            struct store__item *next = items->next;
            items->done(items->arg, items->rc, items->rc == ERR_OK ? NULL : &items->err);
            free(items);
            items = next;
        }
    }
    store_conn_close(c);
    free(t);
    return NULL;
}

enum err
store__exec_start(struct store *s, struct bb_error *e)
{
    queue_init(&s->queues[0]);
    queue_init(&s->queues[1]);
    s->writeq = &s->queues[0];
    size_t n_write = 1;
    if (s->ops->engine == STORE_SQLITE) {
        s->readq = &s->queues[1];
    } else {
        s->readq = s->writeq; /* one pool serves both */
        n_write = 0;
    }
    size_t total = n_write + (size_t)s->opt.pool_size;
    s->threads = xcalloc(total, sizeof *s->threads);
    for (size_t i = 0; i < total; i++) {
        struct exec_thread *t = xcalloc(1, sizeof *t);
        t->store = s;
        t->queue = i < n_write ? s->writeq : s->readq;
        snprintf(t->name, sizeof t->name, "bb-store-%c%u", i < n_write ? 'w' : 'p',
                 (unsigned)(i % 100));
        int rc = pthread_create(&s->threads[i], NULL, exec_thread_main, t);
        if (rc != 0) {
            free(t);
            return bb_fail(e, ERR_INTERNAL, "", "cannot start store thread: %s", strerror(rc));
        }
        s->n_threads++;
    }
    return ERR_OK;
}

void
store__exec_stop(struct store *s)
{
    if (s->writeq == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&s->queues[i].mu);
        s->queues[i].stopping = true;
        pthread_cond_broadcast(&s->queues[i].cv);
        pthread_mutex_unlock(&s->queues[i].mu);
    }
    for (size_t i = 0; i < s->n_threads; i++)
        pthread_join(s->threads[i], NULL);
    free(s->threads);
    s->threads = NULL;
    s->n_threads = 0;
    queue_deinit(&s->queues[0]);
    queue_deinit(&s->queues[1]);
    s->writeq = s->readq = NULL;
}

/* ---- the PostgreSQL listener ------------------------------------------------------ */

/* LISTEN on every subscribed channel (again, after a reconnect). */
static enum err
listener_subscribe_all(struct store *s, void *conn)
{
    s->subs_changed = false;
    pthread_mutex_lock(&s->subs_mu);
    size_t n = s->n_subs;
    char(*channels)[64] = xcalloc(n ? n : 1, sizeof *channels);
    for (size_t i = 0; i < n; i++)
        bb_strlcpy(channels[i], s->subs[i].channel, sizeof channels[i]);
    pthread_mutex_unlock(&s->subs_mu);
    enum err rc = ERR_OK;
    for (size_t i = 0; i < n && rc == ERR_OK; i++)
        rc = store__pg_listen_channel(conn, channels[i]);
    free(channels);
    return rc;
}

static void *
listener_main(void *arg)
{
    struct store *s = arg;
    pthread_setname_np(pthread_self(), "bb-store-listen");
    void *conn = NULL;
    int64_t backoff_ms = 100;
    while (!s->listener_stop) {
        if (conn == NULL) {
            struct bb_error e;
            bb_error_clear(&e);
            conn = store__pg_listen_connect(s, &e);
            if (conn != NULL && listener_subscribe_all(s, conn) != ERR_OK)
                bb_fail(&e, ERR_UNAVAILABLE, "", "LISTEN failed");
            if (conn == NULL || e.code != ERR_OK) {
                log_warn("store.listener_down", "detail=%s retry_ms=%lld", e.detail,
                         (long long)backoff_ms);
                if (conn)
                    store__pg_listen_close(conn);
                conn = NULL;
                struct pollfd pfd = {.fd = s->listener_wake_fd, .events = POLLIN};
                (void)poll(&pfd, 1, (int)backoff_ms);
                backoff_ms = backoff_ms < 5000 ? backoff_ms * 2 : 5000;
                continue;
            }
            backoff_ms = 100;
            /* Anything sent while we were away is lost: tell everyone to look. */
            store__dispatch(s, "", NULL);
        }
        if (s->subs_changed && listener_subscribe_all(s, conn) != ERR_OK) {
            store__pg_listen_close(conn);
            conn = NULL;
            continue;
        }
        struct pollfd pfds[2] = {
            {.fd = store__pg_listen_socket(conn), .events = POLLIN},
            {.fd = s->listener_wake_fd, .events = POLLIN},
        };
        int r = poll(pfds, 2, 1000);
        if (r < 0 && errno != EINTR)
            break;
        if (pfds[1].revents & POLLIN) {
            uint64_t v;
            (void)!read(s->listener_wake_fd, &v, sizeof v);
        }
        if ((pfds[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
            store__pg_listen_consume(s, conn) != ERR_OK) {
            log_warn("store.listener_lost", "detail=%s", "LISTEN connection lost; reconnecting");
            store__pg_listen_close(conn);
            conn = NULL;
        }
    }
    if (conn)
        store__pg_listen_close(conn);
    return NULL;
}

enum err
store__listener_start(struct store *s, struct bb_error *e)
{
    if (s->listener_running) {
        uint64_t one = 1;
        (void)!write(s->listener_wake_fd, &one, sizeof one);
        return ERR_OK;
    }
    s->listener_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->listener_wake_fd < 0)
        return bb_fail(e, ERR_INTERNAL, "", "eventfd: %s", strerror(errno));
    s->listener_stop = false;
    int rc = pthread_create(&s->listener, NULL, listener_main, s);
    if (rc != 0) {
        close(s->listener_wake_fd);
        s->listener_wake_fd = -1;
        return bb_fail(e, ERR_INTERNAL, "", "cannot start listener: %s", strerror(rc));
    }
    s->listener_running = true;
    return ERR_OK;
}

void
store__listener_stop(struct store *s)
{
    if (!s->listener_running)
        return;
    s->listener_stop = true;
    uint64_t one = 1;
    (void)!write(s->listener_wake_fd, &one, sizeof one);
    pthread_join(s->listener, NULL);
    close(s->listener_wake_fd);
    s->listener_wake_fd = -1;
    s->listener_running = false;
}
