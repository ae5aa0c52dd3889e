/*
 * job_worker.c: the embedded worker pool.
 *
 * Three kinds of threads, passing work as messages through lists guarded by
 * one mutex:
 *   fetcher    claims jobs in batches, in one unit of work (one statement per
 *              queue), and hands them to the runners. It keeps up to
 *              `capacity` jobs claimed (running or ready): the concurrency
 *              plus a prefetch, and claims again when half of that is free or
 *              a runner sits idle, so batches stay large under load. The
 *              prefetch adapts: none while jobs take a while (a job waiting in
 *              one process's buffer could run now in another's idle worker),
 *              8 times the concurrency (at least 64, at most 1000) while
 *              recent jobs finish in under FAST_JOB_US, where a claim's commit
 *              would otherwise cost more than the jobs themselves;
 *              then sleeps until a job is announced (store notification:
 *              in-process on SQLite, LISTEN/NOTIFY on PostgreSQL), a slot
 *              frees up, the next delayed job falls due, or poll_ms passes
 *              (the fallback when a notification is lost);
 *   runners    (concurrency of them) run one handler each, outside any
 *              transaction, and hand the outcome to the completer. A job
 *              claimed ahead waited with its lease running: before it
 *              starts, its lease must outlast the handler's deadline, or
 *              be extended to, or the job is handed back (lease_fit);
 *   completer  records every outcome waiting, in one transaction (group
 *              commit: one fsync for many jobs), retrying while the database
 *              is away. A refused outcome (stale lease) is counted and
 *              dropped: someone else owns that job now.
 *
 * Stop: claim no more; hand back jobs claimed but not started; let running
 * jobs finish until the deadline, then tell them to stop (job_run's cancel)
 * and hand back their leases (outcome "interrupted": pending again at once,
 * not counted against max_attempts); record everything; join.
 *
 * Locking: `mu` guards every field marked so; it is never held while running
 * a handler or calling into the store.
 */
#include "jobs/jobs_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    FINISH_BATCH_MAX = 1000,
    STUCK_GRACE_MS = 3000,
    FAST_JOB_US = 2000,
    LIMITED_REFRESH_MS = 1000, /* how long the list of limited queues is trusted */
    /* A handler's deadline ends at least this long before its lease, and a
     * lease with less than this left is not worth extending (lease_fit). */
    LEASE_MARGIN_MS = 500,
    LEASE_SLACK_MS = 1000, /* a lease is max_duration plus this, as a claim gives */
    LEASE_KEEP_PCT = 90,   /* a job that would keep less of its max_duration gets a new lease */
};

struct ready {
    struct ready *next;
    struct job_lease lease;
};

struct done {
    struct done *next;
    struct job_finish f;
    char *error;
    char *queue;
    double duration_s;
    bool recorded; /* the handler ended the job in its own transaction */
};

/* A job running in this pool, findable by its id (a cancel stops it). */
struct live_run {
    struct live_run *next;
    struct job_run *run;
};

struct job_pool {
    struct store *store;
    const struct job_registry *reg;
    int concurrency;
    int capacity;           /* most jobs claimed at once: running plus ready; guarded by mu */
    double avg_duration_us; /* moving average of recent jobs; guarded by mu */
    int64_t poll_ms;
    bool ignore_wakeups;
    char worker[JOB_WORKER_MAX + 1];
    char **queues; /* NULL: every queue */
    size_t n_queues;
    char *queues_json; /* the same as a JSON array, for the claim; NULL: every queue */

    pthread_t fetcher;
    pthread_t completer;
    bool started; /* fetcher and completer are running */
    pthread_t *runners;
    int n_runners;

    pthread_mutex_t mu;
    pthread_cond_t fetch_cv;  /* the fetcher: a slot freed, or a wake-up */
    pthread_cond_t run_cv;    /* the runners: a job is ready */
    pthread_cond_t done_cv;   /* the completer: an outcome is waiting */
    pthread_cond_t idle_cv;   /* stop: a runner went idle */
    struct ready *ready_head; /* guarded by mu */
    struct ready *ready_tail; /* guarded by mu */
    int n_ready;              /* guarded by mu */
    int running;              /* guarded by mu */
    int reserved;             /* slots promised to jobs handed over at commit; guarded by mu */
    struct done *done_head;   /* guarded by mu */
    int n_done;               /* guarded by mu */
    bool stopping;            /* guarded by mu */
    bool wake;                /* guarded by mu */
    /* The last claim got fewer jobs than it asked for and nothing was
     * announced meanwhile: nothing more was due. A job ending then claims
     * again only for a limited queue (a slot of its own came free) or once
     * next_due_ms has come; new jobs announce themselves (wake undoes it). */
    bool drained;        /* guarded by mu */
    int64_t next_due_ms; /* the last claim's earliest future run_at (0: none); guarded by mu */
    char **limited;      /* queues with a concurrency limit, read LIMITED_REFRESH_MS ago at most */
    size_t n_limited;    /* limited, n_limited and limited_at_ms: guarded by mu */
    int64_t limited_at_ms;
    bool completer_stop;     /* guarded by mu */
    pthread_mutex_t live_mu; /* apart from mu: taken twice a job, by runners only */
    struct live_run *live;   /* the runs under way; guarded by live_mu */
    _Atomic bool cancel;     /* handlers watch it */
};

static double
rand01(void)
{
    return (double)bb_rand_below(1000000) / 1000000.0;
}

/* mu held. Would the fetcher claim now? (Its wait condition, inverted.) */
static bool
fetch_due(const struct job_pool *p)
{
    int free_slots = p->capacity - p->running - p->n_ready - p->reserved;
    if (free_slots <= 0) /* a pool of one, busy, would claim nothing over and over */
        return false;
    return free_slots >= p->capacity / 2 ||
           (p->n_ready == 0 && p->running + p->reserved < p->concurrency);
}

/* mu held. Update the moving average of job durations and the capacity. */
static void
adapt_prefetch(struct job_pool *p, double duration_us)
{
    p->avg_duration_us =
        p->avg_duration_us >= 1e9 ? duration_us : 0.9 * p->avg_duration_us + 0.1 * duration_us;
    int prefetch = 0;
    if (p->avg_duration_us < FAST_JOB_US) {
        prefetch = 8 * p->concurrency;
        prefetch = prefetch < 64 ? 64 : prefetch > 1000 ? 1000 : prefetch;
    }
    p->capacity = p->concurrency + prefetch;
}

/* ---- fetching ------------------------------------------------------------------------ */

struct claim_unit {
    struct job_pool *pool;
    int64_t want;
    struct job_lease *leases; /* all queues together */
    size_t n;
    int64_t next_due_ms; /* earliest future run_at, 0 if none */
};

static void
unit_append(struct claim_unit *u, struct job_lease *got, size_t n_got)
{
    if (n_got) {
        u->leases = xrealloc(u->leases, (u->n + n_got) * sizeof *u->leases);
        memcpy(u->leases + u->n, got, n_got * sizeof *got);
        u->n += n_got;
    }
    free(got);
}

static bool
serves(const struct job_pool *p, const char *queue)
{
    for (size_t i = 0; i < p->n_queues; i++) {
        if (strcmp(p->queues[i], queue) == 0)
            return true;
    }
    return p->queues == NULL;
}

static char **
names_dup(char *const *names, size_t n)
{
    char **out = xcalloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = xstrdup(names[i]);
    return out;
}

/* The queues with a concurrency limit (a copy: free with jobs__free_names),
 * read again when the pool's copy is LIMITED_REFRESH_MS old: a limit set
 * meanwhile is honoured at once (the unlimited claim reads job_queues
 * itself); only its own claim waits that long. *stale_at: when the copy
 * used runs out (0: read just now). */
static enum err
limited_queues(struct store_conn *c, struct job_pool *p, int64_t now_ms, char ***out, size_t *n,
               int64_t *stale_at, struct bb_error *e)
{
    pthread_mutex_lock(&p->mu);
    bool fresh = p->limited_at_ms > 0 && now_ms - p->limited_at_ms < LIMITED_REFRESH_MS;
    if (fresh) {
        *out = names_dup(p->limited, p->n_limited);
        *n = p->n_limited;
        *stale_at = p->limited_at_ms + LIMITED_REFRESH_MS;
    }
    pthread_mutex_unlock(&p->mu);
    if (fresh)
        return ERR_OK;
    *stale_at = 0;
    char **names;
    size_t k;
    enum err rc = jobs__limited_queues(c, &names, &k, e);
    if (rc != ERR_OK)
        return rc;
    pthread_mutex_lock(&p->mu);
    jobs__free_names(p->limited, p->n_limited);
    p->limited = names_dup(names, k);
    p->n_limited = k;
    p->limited_at_ms = now_ms;
    pthread_mutex_unlock(&p->mu);
    *out = names;
    *n = k;
    return ERR_OK;
}

/* mu held. Whether `queue` has a concurrency limit, as last read. */
static bool
is_limited(const struct job_pool *p, const char *queue)
{
    for (size_t i = 0; i < p->n_limited; i++) {
        if (strcmp(p->limited[i], queue) == 0)
            return true;
    }
    return false;
}

/* One claim: every unlimited queue in one statement, then each queue with a
 * concurrency limit on its own (it counts its running jobs exactly). */
static enum err
claim_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct claim_unit *u = arg;
    struct job_pool *p = u->pool;
    for (size_t i = 0; i < u->n; i++)
        job_lease_deinit(&u->leases[i]);
    free(u->leases);
    u->leases = NULL;
    u->n = 0;
    u->next_due_ms = 0;
    int64_t now = bb_wall_ms(), throttled = 0;
    struct job_lease *got;
    size_t n_got;
    enum err rc =
        jobs__claim_unlimited(c, p->queues_json, p->worker, u->want, now, &got, &n_got, e);
    if (rc == ERR_OK)
        unit_append(u, got, n_got);
    int64_t stale_at = 0;
    if (rc == ERR_OK && (int64_t)u->n < u->want) {
        char **limited = NULL;
        size_t n_limited = 0;
        rc = limited_queues(c, p, now, &limited, &n_limited, &stale_at, e);
        for (size_t k = 0; rc == ERR_OK && k < n_limited && (int64_t)u->n < u->want; k++) {
            if (!serves(p, limited[k]))
                continue;
            int64_t until;
            rc = job_claim(c, limited[k], p->worker, false, u->want - (int64_t)u->n, 0, now, &got,
                           &n_got, &until, e);
            if (rc == ERR_OK)
                unit_append(u, got, n_got);
            if (until > 0 && (throttled == 0 || until < throttled))
                throttled = until;
        }
        jobs__free_names(limited, n_limited);
    }
    if (rc == ERR_OK && (int64_t)u->n < u->want)
        rc = jobs__next_due(c, now, &u->next_due_ms, e);
    /* A rate limit held jobs back: look again when it lets the next go. */
    if (throttled > 0 && (u->next_due_ms == 0 || throttled < u->next_due_ms))
        u->next_due_ms = throttled;
    /* Short, with the limited queues as read a moment ago: a queue limited
     * since then (its jobs the unlimited claim left alone) is claimed once
     * the copy runs out, not at the next poll. */
    if ((int64_t)u->n < u->want && stale_at > 0 &&
        (u->next_due_ms == 0 || stale_at < u->next_due_ms))
        u->next_due_ms = stale_at;
    return rc;
}

/* mu held. Queue `lease` (moved in) for the runners. */
static void
ready_push(struct job_pool *p, struct job_lease *lease)
{
    struct ready *r = xcalloc(1, sizeof *r);
    r->lease = *lease;
    if (p->ready_tail)
        p->ready_tail->next = r;
    else
        p->ready_head = r;
    p->ready_tail = r;
    p->n_ready++;
}

/* Wait on fetch_cv until `deadline_wall_ms` (mu held). */
static void
fetch_wait(struct job_pool *p, int64_t wait_ms)
{
    bb_cond_wait_ms(&p->fetch_cv, &p->mu, wait_ms);
}

static void *
fetcher_main(void *arg)
{
    struct job_pool *p = arg;
    pthread_setname_np(pthread_self(), "bb-job-fetch");
    struct claim_unit u = {.pool = p};
    int64_t failures = 0;
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        int free_slots = p->capacity - p->running - p->n_ready - p->reserved;
        if (!fetch_due(p)) {
            pthread_cond_wait(&p->fetch_cv, &p->mu);
            continue;
        }
        p->wake = false;
        pthread_mutex_unlock(&p->mu);
        u.want = free_slots;
        struct bb_error e;
        enum err rc = store_run(p->store, STORE_WRITE, claim_work, &u, &e);
        int64_t now = bb_wall_ms();
        pthread_mutex_lock(&p->mu);
        if (rc != ERR_OK) {
            /* The database is away: back off, up to the poll interval. */
            log_error_limited(1, "jobs.claim_failed", "detail=%s", e.detail);
            int64_t wait = 50LL << (failures < 5 ? failures : 5);
            failures++;
            fetch_wait(p, wait < p->poll_ms ? wait : p->poll_ms);
            continue;
        }
        failures = 0;
        for (size_t i = 0; i < u.n; i++)
            ready_push(p, &u.leases[i]);
        bool full = (int64_t)u.n == u.want;
        /* Drained unless work was announced while it claimed (it may have
         * committed after the claim looked). */
        p->drained = !full && !p->wake && !p->ignore_wakeups;
        p->next_due_ms = u.next_due_ms;
        /* One runner per job: waking every idle runner for one job cost
         * more CPU than the job itself (each took the lock to find nothing). */
        for (size_t i = 0; i < u.n; i++)
            pthread_cond_signal(&p->run_cv);
        free(u.leases);
        u.leases = NULL;
        u.n = 0;
        if (full || p->wake || p->stopping)
            continue; /* there may be more right away */
        int64_t wait = p->poll_ms;
        if (u.next_due_ms > 0 && u.next_due_ms - now < wait)
            wait = u.next_due_ms - now > 0 ? u.next_due_ms - now : 0;
        if (wait > 0)
            fetch_wait(p, wait);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void
on_ready(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct job_pool *p = arg;
    if (payload && payload[0] && p->queues) {
        bool ours = false;
        for (size_t i = 0; i < p->n_queues && !ours; i++)
            ours = strcmp(p->queues[i], payload) == 0;
        if (!ours)
            return;
    }
    pthread_mutex_lock(&p->mu);
    p->wake = true;
    p->drained = false; /* new work: a job ending may claim it, should the pool be full now */
    pthread_cond_signal(&p->fetch_cv);
    pthread_mutex_unlock(&p->mu);
}

/* A running job was cancelled (payload: its id; NULL: notifications may
 * have been lost, and nothing says which): if it runs here, it stops. Its
 * outcome will be refused anyway (the cancel revoked its lease); this stops
 * the work, so that a retry does not run beside it for long. */
static void
on_cancel(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct job_pool *p = arg;
    char *end;
    if (payload == NULL || payload[0] == '\0')
        return;
    long long id = strtoll(payload, &end, 10);
    if (*end != '\0')
        return;
    pthread_mutex_lock(&p->live_mu);
    for (struct live_run *l = p->live; l; l = l->next) {
        if (l->run->job->id == id)
            l->run->revoked = true;
    }
    pthread_mutex_unlock(&p->live_mu);
}

/* ---- jobs handed over at insert (job_submit_many_here) ------------------------------------ */

size_t
jobs__pool_reserve(struct job_pool *p, const char *queue, size_t n, const char **worker)
{
    size_t take = 0;
    pthread_mutex_lock(&p->mu);
    int free_slots = p->capacity - p->running - p->n_ready - p->reserved;
    if (!p->stopping && serves(p, queue) && !is_limited(p, queue) && free_slots > 0)
        take = n < (size_t)free_slots ? n : (size_t)free_slots;
    p->reserved += (int)take;
    pthread_mutex_unlock(&p->mu);
    *worker = p->worker;
    return take;
}

static void queue_done(struct job_pool *p, struct done *d);
static struct done *done_new(struct job_lease *lease, enum job_outcome outcome, const char *error,
                             double duration_s);

void
jobs__pool_adopt(struct job_pool *p, struct job_lease *leases, size_t n_leases, size_t reserved)
{
    pthread_mutex_lock(&p->mu);
    p->reserved -= (int)reserved;
    for (size_t i = 0; i < n_leases; i++) {
        if (p->stopping) {
            /* As stop does with the jobs it claimed: straight back (or, with
             * no one left to record that, when the lease runs out). */
            if (!p->completer_stop)
                queue_done(p, done_new(&leases[i], JOB_OUTCOME_INTERRUPTED,
                                       "worker stopping: handed back before it started", 0));
            job_lease_deinit(&leases[i]);
            continue;
        }
        ready_push(p, &leases[i]);
        pthread_cond_signal(&p->run_cv);
    }
    pthread_mutex_unlock(&p->mu);
    free(leases);
}

/* ---- running --------------------------------------------------------------------------- */

/* mu held. The completer waits only on an empty list: wake it then. */
static void
queue_done(struct job_pool *p, struct done *d)
{
    bool was_empty = p->done_head == NULL;
    d->next = p->done_head;
    p->done_head = d;
    p->n_done++;
    if (was_empty)
        pthread_cond_signal(&p->done_cv);
}

static struct done *
done_new(struct job_lease *lease, enum job_outcome outcome, const char *error, double duration_s)
{
    struct done *d = xcalloc(1, sizeof *d);
    d->error = error ? xstrdup(error) : NULL;
    d->queue = xstrdup(lease->queue);
    d->duration_s = duration_s;
    d->f = (struct job_finish){
        .id = lease->id, .token = lease->lease_token, .outcome = outcome, .error = d->error};
    return d;
}

static enum job_outcome
outcome_of(enum job_verdict v, const struct job_run *run, bool cancelled)
{
    if (v == JOB_DONE)
        return JOB_OUTCOME_COMPLETED;
    if (v == JOB_FAIL_PERMANENTLY)
        return JOB_OUTCOME_PERMANENT;
    if (cancelled)
        return JOB_OUTCOME_INTERRUPTED;
    return bb_mono_ms() >= run->deadline_mono_ms ? JOB_OUTCOME_TIMEOUT : JOB_OUTCOME_FAILED;
}

/* Count a recorded outcome (f.rc says how it went) and free it. */
static void
done_counted(struct done *d)
{
    if (d->f.rc == ERR_OK) {
        jobs__metric_finished(d->queue, d->f.outcome, d->duration_s);
    } else if (d->f.rc == ERR_STALE_TOKEN) {
        jobs__metric_stale(d->f.outcome == JOB_OUTCOME_COMPLETED ? "complete" : "fail");
        log_warn("jobs.stale_outcome", "job=%lld outcome=%s", (long long)d->f.id,
                 job_outcome_name(d->f.outcome));
    }
    free(d->error);
    free(d->queue);
    free(d);
}

struct extend_unit {
    struct job_lease *lease;
    int64_t now_ms;
};

static enum err
extend_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct extend_unit *u = arg;
    return job_heartbeat(c, u->lease->id, u->lease->lease_token,
                         u->lease->max_duration_ms + LEASE_SLACK_MS, false, u->now_ms,
                         &u->lease->lease_expires_at_ms, e);
}

/*
 * Before a job starts: make its lease outlast the handler's deadline. A
 * job claimed ahead (the prefetch, or handed over at commit) waits in
 * `ready` while its lease, taken at the claim, runs; the handler's
 * deadline (max_duration) starts only now. Left as it was, a job that
 * waited past its lease could be rescued and claimed elsewhere, and then
 * run here too. So the handler's deadline never passes the lease less
 * LEASE_MARGIN_MS, and:
 *  - room for at least LEASE_KEEP_PCT% of max_duration before that (it
 *    waited a little, or not at all): run it, its deadline at the lease's
 *    (no write: under load, when jobs wait here, a write per job is the
 *    last thing the database needs);
 *  - live but shorter (it waited long): extend it as a heartbeat does, to
 *    max_duration and LEASE_SLACK_MS from now, and run it with its whole
 *    max_duration (one write, so that a job never loses more than a tenth
 *    of its time to our buffer);
 *  - expired, or within LEASE_MARGIN_MS of it, or the extension failed for
 *    want of the database: do not run it; hand it back ("interrupted":
 *    pending again at once, and the attempt does not count against its
 *    max_attempts: it never ran, and waiting in a worker's buffer is no
 *    fault of the job's; a rescue would have counted it, and killed a job
 *    on its last attempt without running it). A hand-back carries the
 *    lease token, so if the job was rescued meanwhile it is refused as
 *    stale and changes nothing;
 *  - the extension refused (the token no longer holds it: rescued,
 *    cancelled): someone else owns it; record nothing.
 * Returns true to run it (with *deadline_mono_ms), false not to; *back is
 * then the hand-back to record, or NULL.
 */
static bool
lease_fit(struct job_pool *p, struct job_lease *lease, int64_t *deadline_mono_ms,
          struct done **back)
{
    *back = NULL;
    int64_t now = bb_wall_ms(), mono = bb_mono_ms();
    int64_t left = lease->lease_expires_at_ms - now;
    int64_t room = left - LEASE_MARGIN_MS; /* the handler's time within the lease */
    *deadline_mono_ms = mono + (room < lease->max_duration_ms ? room : lease->max_duration_ms);
    if (room > 0 && room >= lease->max_duration_ms * LEASE_KEEP_PCT / 100)
        return true;
    *deadline_mono_ms = mono + lease->max_duration_ms;
    const char *why = "lease ran out while it waited to start: handed back";
    if (left > LEASE_MARGIN_MS) {
        struct extend_unit u = {.lease = lease, .now_ms = now};
        struct bb_error e;
        enum err rc = bb_fault("jobs.lease_extend")
                          ? bb_fail(&e, ERR_UNAVAILABLE, "", "injected fault: the extension failed")
                          : store_run(p->store, STORE_WRITE, extend_work, &u, &e);
        if (rc == ERR_OK)
            return true;
        if (rc == ERR_STALE_TOKEN) {
            log_warn("jobs.lease_lost_before_start", "job=%lld", (long long)lease->id);
            return false;
        }
        log_error_limited(1, "jobs.lease_extend_failed", "job=%lld detail=%s", (long long)lease->id,
                          e.detail);
        why = "lease could not be extended before it started: handed back";
    }
    *back = done_new(lease, JOB_OUTCOME_INTERRUPTED, why, 0);
    return false;
}

/* Run one job until `deadline_mono_ms`; returns its outcome, to be queued
 * by the caller unless the handler recorded it. */
static struct done *
run_one(struct job_pool *p, struct job_lease *lease, int64_t deadline_mono_ms)
{
    void *ctx = NULL;
    job_handler_fn *fn = jobs__registry_find(p->reg, lease->handler, &ctx);
    struct job_run run = {.job = lease,
                          .store = p->store,
                          .worker = p->worker,
                          .ctx = ctx,
                          .cancel = &p->cancel,
                          .deadline_mono_ms = deadline_mono_ms};
    bb_buf_init(&run.error);
    struct live_run live = {.run = &run};
    pthread_mutex_lock(&p->live_mu);
    live.next = p->live;
    p->live = &live;
    pthread_mutex_unlock(&p->live_mu);
    int64_t t0 = bb_mono_ns();
    enum job_verdict v;
    if (fn == NULL) {
        bb_buf_printf(&run.error, "no handler named %s in worker %s", lease->handler, p->worker);
        v = JOB_RETRY; /* another worker may have it */
    } else {
        bb_log_context_set(NULL, lease->traceparent); /* its logs and events carry it on */
        v = fn(&run);
        bb_log_context_clear();
    }
    double duration = (double)(bb_mono_ns() - t0) / 1e9;
    pthread_mutex_lock(&p->live_mu);
    for (struct live_run **lp = &p->live; *lp; lp = &(*lp)->next) {
        if (*lp == &live) {
            *lp = live.next;
            break;
        }
    }
    pthread_mutex_unlock(&p->live_mu);
    enum job_outcome outcome = outcome_of(v, &run, p->cancel || run.revoked);
    struct done *d = done_new(lease, outcome, run.error.len ? run.error.data : NULL, duration);
    if (run.recorded && v == JOB_DONE) {
        d->recorded = true;
        d->f.rc = run.recorded_rc;
    }
    bb_buf_deinit(&run.error);
    return d;
}

static void *
runner_main(void *arg)
{
    struct job_pool *p = arg;
    pthread_setname_np(pthread_self(), "bb-job-run");
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->ready_head == NULL && !p->stopping)
            pthread_cond_wait(&p->run_cv, &p->mu);
        if (p->ready_head == NULL || p->stopping)
            break; /* stopping: jobs not started are handed back by stop */
        struct ready *r = p->ready_head;
        p->ready_head = r->next;
        if (p->ready_head == NULL)
            p->ready_tail = NULL;
        p->n_ready--;
        p->running++;
        pthread_mutex_unlock(&p->mu);
        int64_t deadline;
        struct done *d = NULL;
        bool ran = lease_fit(p, &r->lease, &deadline, &d);
        if (ran) {
            /* Started now, not at the claim: a job handed back unrun is not
             * counted, and its queue latency includes the wait here. */
            jobs__metric_started(r->lease.queue, jobs__queue_latency_s(&r->lease, bb_wall_ms()));
            d = run_one(p, &r->lease, deadline);
        }
        double duration_s = d ? d->duration_s : 0;
        bool recorded = d && d->recorded;
        if (recorded)
            done_counted(d); /* frees it */
        pthread_mutex_lock(&p->mu);
        if (d && !recorded)
            queue_done(p, d);
        p->running--;
        if (ran) /* a job not run says nothing about how long jobs take */
            adapt_prefetch(p, duration_s * 1e6);
        bool claim_again = !p->drained || is_limited(p, r->lease.queue) ||
                           (p->next_due_ms > 0 && p->next_due_ms <= bb_wall_ms());
        if (claim_again && fetch_due(p))
            pthread_cond_signal(&p->fetch_cv);
        job_lease_deinit(&r->lease);
        free(r);
        if (p->stopping)
            pthread_cond_broadcast(&p->idle_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- recording outcomes ------------------------------------------------------------------ */

enum { FINISH_NOTIFY_MAX = 8 };

struct finish_unit {
    struct job_finish *items;
    size_t n;
    /* Limited queues with a job ending here: a slot comes free, which
     * idle workers of other processes hear of (they would wait for their
     * poll otherwise; this pool claims again by itself). */
    const char *notify[FINISH_NOTIFY_MAX];
    size_t n_notify;
    bool notify_all; /* more than FINISH_NOTIFY_MAX of them */
};

static enum err
finish_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct finish_unit *u = arg;
    enum err rc = job_finish_batch(c, u->items, u->n, bb_wall_ms(), rand01, e);
    if (rc == ERR_OK && u->notify_all)
        return store_notify(c, JOBS__CHANNEL, "", e);
    for (size_t i = 0; i < u->n_notify && rc == ERR_OK; i++)
        rc = store_notify(c, JOBS__CHANNEL, u->notify[i], e);
    return rc;
}

/* mu held. Note `queue` in `u` if it has a concurrency limit. */
static void
notify_if_limited(struct job_pool *p, struct finish_unit *u, const char *queue)
{
    if (queue == NULL || !is_limited(p, queue))
        return;
    for (size_t i = 0; i < u->n_notify; i++) {
        if (strcmp(u->notify[i], queue) == 0)
            return;
    }
    if (u->n_notify < FINISH_NOTIFY_MAX)
        u->notify[u->n_notify++] = queue;
    else
        u->notify_all = true;
}

/* Record `list` (consumed); retries while the store is away unless told to
 * stop. */
static void
record(struct job_pool *p, struct done *list, size_t n)
{
    struct done **all = xcalloc(n, sizeof *all);
    struct finish_unit u = {.items = xcalloc(n, sizeof *u.items), .n = n};
    size_t k = 0;
    pthread_mutex_lock(&p->mu);
    for (struct done *d = list; d; d = d->next) {
        all[k] = d;
        u.items[k++] = d->f;
        notify_if_limited(p, &u, d->queue);
    }
    pthread_mutex_unlock(&p->mu);
    for (int attempt = 0;; attempt++) {
        struct bb_error e;
        enum err rc = store_run(p->store, STORE_WRITE, finish_work, &u, &e);
        if (rc == ERR_OK)
            break;
        log_error_limited(1, "jobs.record_failed", "jobs=%zu detail=%s", n, e.detail);
        pthread_mutex_lock(&p->mu);
        bool give_up = p->completer_stop && attempt >= 3;
        pthread_mutex_unlock(&p->mu);
        if (give_up) {
            /* Their leases will run out and the jobs will be rescued. */
            for (size_t i = 0; i < n; i++)
                u.items[i].rc = ERR_UNAVAILABLE;
            break;
        }
        bb_sleep_ms(bb_jitter_ms(attempt < 5 ? 100LL << attempt : 3000, 0.2));
    }
    bool rescheduled = false;
    for (size_t i = 0; i < n; i++) {
        struct job_finish *f = &u.items[i];
        rescheduled |= f->rc == ERR_OK && f->state == JOB_PENDING;
        all[i]->f.rc = f->rc;
        done_counted(all[i]);
    }
    free(u.items);
    free(all);
    if (rescheduled) {
        /* A retry is due soon: let the fetcher see its run_at. */
        pthread_mutex_lock(&p->mu);
        p->wake = true;
        p->drained = false;
        pthread_cond_signal(&p->fetch_cv);
        pthread_mutex_unlock(&p->mu);
    }
}

static void *
completer_main(void *arg)
{
    struct job_pool *p = arg;
    pthread_setname_np(pthread_self(), "bb-job-done");
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->done_head == NULL && !p->completer_stop)
            pthread_cond_wait(&p->done_cv, &p->mu);
        if (p->done_head == NULL)
            break;
        /* Take up to FINISH_BATCH_MAX outcomes. */
        struct done *batch = p->done_head, *last = batch;
        size_t n = 1;
        while (last->next && n < FINISH_BATCH_MAX) {
            last = last->next;
            n++;
        }
        p->done_head = last->next;
        last->next = NULL;
        p->n_done -= (int)n;
        pthread_mutex_unlock(&p->mu);
        record(p, batch, n);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static void
split_queues(struct job_pool *p, const char *const *queues)
{
    if (queues == NULL || queues[0] == NULL)
        return;
    size_t n = 0;
    while (queues[n])
        n++;
    p->queues = xcalloc(n, sizeof *p->queues);
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        p->queues[i] = xstrdup(queues[i]);
        json_array_append_new(list, json_string(queues[i]));
    }
    p->n_queues = n;
    p->queues_json = bb_json_dumps(list);
    json_decref(list);
}

enum err
job_pool_start(struct store *s, const struct job_registry *r, const struct job_pool_options *o,
               struct job_pool **out, struct bb_error *e)
{
    jobs__metrics_register();
    struct job_pool *p = xcalloc(1, sizeof *p);
    p->store = s;
    p->reg = r;
    p->concurrency = o->concurrency > 0 ? o->concurrency : 1;
    p->capacity = p->concurrency;
    p->avg_duration_us = 1e9; /* unknown: assume slow until jobs show otherwise */
    p->poll_ms = o->poll_ms > 0 ? o->poll_ms : 1000;
    p->ignore_wakeups = o->ignore_wakeups;
    if (o->worker_name && *o->worker_name) {
        bb_utf8_copy(p->worker, sizeof p->worker, o->worker_name);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(p->worker, sizeof p->worker, "%s:%d", host, (int)getpid());
    }
    split_queues(p, o->queues);
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->live_mu, NULL);
    bb_cond_init_mono(&p->fetch_cv);
    bb_cond_init_mono(&p->idle_cv);
    pthread_cond_init(&p->run_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    enum err rc = p->ignore_wakeups ? ERR_OK : store_listen(s, JOBS__CHANNEL, on_ready, p);
    if (rc == ERR_OK)
        rc = store_listen(s, JOBS__CANCEL_CHANNEL, on_cancel, p);
    if (rc != ERR_OK) {
        job_pool_stop(p, 0);
        return bb_fail(e, rc, "", "cannot listen for new or cancelled jobs");
    }
    p->runners = xcalloc((size_t)p->concurrency, sizeof *p->runners);
    for (int i = 0; i < p->concurrency; i++) {
        if (pthread_create(&p->runners[i], NULL, runner_main, p) != 0)
            bb_panic(__FILE__, __LINE__, "cannot start job runner threads");
        p->n_runners++;
    }
    if (pthread_create(&p->completer, NULL, completer_main, p) != 0 ||
        pthread_create(&p->fetcher, NULL, fetcher_main, p) != 0)
        bb_panic(__FILE__, __LINE__, "cannot start job pool threads");
    p->started = true;
    log_info("jobs.pool_started", "worker=%s concurrency=%d queues=%zu", p->worker, p->concurrency,
             p->n_queues);
    *out = p;
    return ERR_OK;
}

/* Wait on idle_cv until no job runs or `deadline` (monotonic) passes; mu held. */
static void
wait_idle(struct job_pool *p, int64_t deadline)
{
    while (p->running > 0 && bb_mono_ms() < deadline) {
        bb_cond_wait_ms(&p->idle_cv, &p->mu, deadline - bb_mono_ms());
    }
}

bool
job_pool_stop(struct job_pool *p, int64_t deadline_mono_ms)
{
    if (p == NULL)
        return true;
    if (!p->ignore_wakeups)
        store_unlisten(p->store, on_ready, p);
    store_unlisten(p->store, on_cancel, p);
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->fetch_cv);
    pthread_cond_broadcast(&p->run_cv);
    pthread_mutex_unlock(&p->mu);
    if (p->started) /* join the fetcher first, then hand back what it claimed */
        pthread_join(p->fetcher, NULL);
    pthread_mutex_lock(&p->mu);
    /* Jobs claimed but never started go straight back. */
    while (p->ready_head) {
        struct ready *r = p->ready_head;
        p->ready_head = r->next;
        p->n_ready--;
        queue_done(p, done_new(&r->lease, JOB_OUTCOME_INTERRUPTED,
                               "worker stopping: handed back before it started", 0));
        job_lease_deinit(&r->lease);
        free(r);
    }
    p->ready_tail = NULL;
    wait_idle(p, deadline_mono_ms);
    int stuck = 0;
    if (p->running > 0) {
        /* Out of time: ask handlers to stop; they hand their leases back. */
        p->cancel = true;
        wait_idle(p, bb_mono_ms() + STUCK_GRACE_MS);
        stuck = p->running;
    }
    pthread_mutex_unlock(&p->mu);
    if (stuck == 0) {
        for (int i = 0; i < p->n_runners; i++)
            pthread_join(p->runners[i], NULL);
    }
    /* Record what has finished (a stuck handler's outcome, if it comes
     * later, is not: its lease runs out and the job is rescued). */
    pthread_mutex_lock(&p->mu);
    p->completer_stop = true;
    pthread_cond_signal(&p->done_cv);
    pthread_mutex_unlock(&p->mu);
    if (p->started)
        pthread_join(p->completer, NULL);
    if (stuck > 0) {
        /* A handler ignores cancellation: leave the pool to the exiting
         * process. */
        log_error("jobs.pool_stuck", "running=%d", stuck);
        return false;
    }
    log_info("jobs.pool_stopped", "worker=%s", p->worker);
    for (size_t i = 0; i < p->n_queues; i++)
        free(p->queues[i]);
    free(p->queues);
    free(p->queues_json);
    free(p->runners);
    jobs__free_names(p->limited, p->n_limited);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->live_mu);
    pthread_cond_destroy(&p->fetch_cv);
    pthread_cond_destroy(&p->run_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_cond_destroy(&p->idle_cv);
    free(p);
    return true;
}
