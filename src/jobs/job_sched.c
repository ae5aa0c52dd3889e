/*
 * job_sched.c: the scheduler thread ("bb-job-sched"): every tick it rescues
 * jobs whose lease ran out and fires the schedules that are due. Any number
 * of processes may run one against the same database: rescue claims expired
 * rows with FOR UPDATE SKIP LOCKED (PostgreSQL) and every change is a
 * compare-and-set on the lease token; a schedule fire advances next_fire_at
 * with a compare-and-set, so each fire happens once. With a retention set it
 * also sweeps finished jobs out, a window of ids per tick, more windows
 * while they are mostly prunable (old jobs have low ids); a sweep that has
 * reached the jobs too young to prune rests a while (at most a minute)
 * before it starts over.
 */
#include "jobs/jobs_int.h"

#include <stdlib.h>

enum { RESCUE_BATCH = 1000, PRUNE_WINDOW = 5000, PRUNE_WINDOWS_MAX = 20, PRUNE_REST_MS = 60000 };

struct job_scheduler {
    struct store *store;
    int64_t tick_ms;
    int64_t retention_ms;
    int64_t prune_cursor;     /* the sweep's last id; scheduler thread only */
    int64_t prune_resting_to; /* monotonic ms; scheduler thread only */
    struct bb_ticker *ticker;
};

struct tick_unit {
    struct job_scheduler *sch;
    int64_t rescued;
    int64_t fired;
    int64_t pruned;
};

static enum err
rescue_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct tick_unit *u = arg;
    return job_rescue_expired(c, bb_wall_ms(), RESCUE_BATCH, &u->rescued, e);
}

static enum err
fire_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct tick_unit *u = arg;
    return job_schedule_fire_due(c, bb_wall_ms(), &u->fired, e);
}

static enum err
prune_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct tick_unit *u = arg;
    return job_prune_finished(c, bb_wall_ms() - u->sch->retention_ms, PRUNE_WINDOW,
                              &u->sch->prune_cursor, &u->pruned, e);
}

static void
prune(struct job_scheduler *s)
{
    if (bb_mono_ms() < s->prune_resting_to)
        return;
    struct tick_unit u = {.sch = s};
    int64_t total = 0;
    for (int i = 0; i < PRUNE_WINDOWS_MAX; i++) {
        struct bb_error e;
        if (store_run(s->store, STORE_WRITE, prune_work, &u, &e) != ERR_OK) {
            log_error_limited(1, "jobs.prune_failed", "detail=%s", e.detail);
            break;
        }
        total += u.pruned;
        if (s->prune_cursor == 0) { /* caught up: what ages meanwhile waits */
            int64_t rest = s->retention_ms < PRUNE_REST_MS ? s->retention_ms : PRUNE_REST_MS;
            s->prune_resting_to = bb_mono_ms() + rest;
            break;
        }
        if (u.pruned < PRUNE_WINDOW / 2)
            break;
    }
    if (total > 0) {
        jobs__metric_pruned(total);
        log_info("jobs.pruned", "jobs=%lld", (long long)total);
    }
}

static void
tick(void *arg)
{
    struct job_scheduler *s = arg;
    struct tick_unit u = {.sch = s};
    struct bb_error e;
    if (store_run(s->store, STORE_WRITE, rescue_work, &u, &e) != ERR_OK)
        log_error_limited(1, "jobs.rescue_failed", "detail=%s", e.detail);
    else if (u.rescued > 0)
        log_warn("jobs.rescued", "jobs=%lld", (long long)u.rescued);
    if (store_run(s->store, STORE_WRITE, fire_work, &u, &e) != ERR_OK)
        log_error_limited(1, "jobs.schedule_failed", "detail=%s", e.detail);
    if (s->retention_ms > 0)
        prune(s);
}

enum err
job_scheduler_start(struct store *st, const struct job_scheduler_options *o,
                    struct job_scheduler **out, struct bb_error *e)
{
    jobs__metrics_register();
    struct job_scheduler *s = xcalloc(1, sizeof *s);
    s->store = st;
    s->tick_ms = o->tick_ms > 0 ? o->tick_ms : 500;
    s->retention_ms = o->retention_ms;
    if (bb_ticker_start("bb-job-sched", s->tick_ms, tick, s, &s->ticker, e) != ERR_OK) {
        free(s);
        return e->code;
    }
    *out = s;
    return ERR_OK;
}

void
job_scheduler_stop(struct job_scheduler *s)
{
    if (s == NULL)
        return;
    bb_ticker_stop(s->ticker);
    free(s);
}
