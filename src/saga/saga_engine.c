/*
 * saga_engine.c: the "saga" job handler that runs one step and moves the
 * instance on, the starter thread that turns starting events into
 * instances, the announcer that wakes starters, metrics and the HTTP API.
 */
#include "saga/saga_int.h"

#include "metrics/metrics.h"
#include "outbox/outbox.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { DEFS_MAX = 8, START_BATCH = 100 };

/* Definitions are added at start-up, before any thread reads them. */
static const struct saga_def *g_defs[DEFS_MAX];
static size_t g_n_defs;

const struct saga_def *
saga__def_find(const char *type)
{
    for (size_t i = 0; i < g_n_defs; i++)
        if (strcmp(g_defs[i]->type, type) == 0)
            return g_defs[i];
    return NULL;
}

/* ---- metrics ----------------------------------------------------------------------------- */

static struct metrics_def M_STARTED = {
    .name = "backbone_sagas_started_total",
    .help = "Saga instances started, by type.",
    .type = METRICS_COUNTER,
    .labels = {"type"},
};
static struct metrics_def M_ENDED = {
    .name = "backbone_sagas_ended_total",
    .help = "Saga instances that ended, by type and outcome (completed, compensated: FAILED "
            "after its compensations, stuck: a compensation kept failing).",
    .type = METRICS_COUNTER,
    .labels = {"type", "outcome"},
};
static struct metrics_def M_STUCK = {
    .name = "backbone_sagas_stuck",
    .help = "Saga instances STUCK now, waiting for a person (POST /sagas/{id}/retry).",
    .type = METRICS_GAUGE,
    .labels = {"type"},
};
static struct metrics_def M_STEP = {
    .name = "backbone_saga_step_duration_seconds",
    .help = "Time one run of a saga step took, by type, step and phase.",
    .type = METRICS_HISTOGRAM,
    .labels = {"type", "step", "phase"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};

static void
metrics_init(void)
{
    metrics_register(&M_STARTED);
    metrics_register(&M_ENDED);
    metrics_register(&M_STUCK);
    metrics_register(&M_STEP);
}

void
saga__metric_started(const char *type)
{
    metrics_add(&M_STARTED, 1, type);
}

void
saga__metric_transition(const char *type, enum saga_state from, enum saga_state to)
{
    if (from == to)
        return;
    if (to == SAGA_COMPLETED)
        metrics_add(&M_ENDED, 1, type, "completed");
    else if (to == SAGA_FAILED)
        metrics_add(&M_ENDED, 1, type, "compensated");
    else if (to == SAGA_STUCK)
        metrics_add(&M_ENDED, 1, type, "stuck");
}

void
saga__metric_step(const char *type, const char *step, bool compensating, double seconds)
{
    metrics_observe(&M_STEP, seconds, type, step, compensating ? "compensation" : "action");
}

void
saga__metric_stuck_reset(void)
{
    for (size_t i = 0; i < g_n_defs; i++)
        metrics_set(&M_STUCK, 0, g_defs[i]->type);
}

void
saga__metric_stuck(const char *type, int64_t n)
{
    if (saga__def_find(type))
        metrics_set(&M_STUCK, (double)n, type);
}

/* ---- the engine -------------------------------------------------------------------------- */

struct saga_engine {
    struct store *store;
    struct saga_engine_options opt;
    pthread_t starter;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping; /* guarded by mu */
    bool wake;     /* guarded by mu */
};

/* ---- one step ------------------------------------------------------------------------------ */

struct step_job {
    struct saga_engine *eng;
    struct job_run *run;
    const char *saga_id;
    int64_t version;
    struct saga_instance in;
    bool found;
    const struct saga_def *def;
    struct saga_step_run sr;
    char key[SAGA_ID_LEN + 80];
    struct bb_error step_error;
    enum saga_outcome outcome;
    int64_t started_at_ms;
    bool stale; /* another run of this version moved the saga on */
};

static enum err
load_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct step_job *j = arg;
    saga__instance_deinit(&j->in);
    return saga__load(c, j->saga_id, &j->in, &j->found, e);
}

/* Run the step (sr.c is the transaction for in-transaction steps). */
static void
run_step(struct step_job *j, struct store_conn *c)
{
    const struct saga_step_def *sd = &j->def->steps[j->in.step];
    saga_step_fn *fn = j->sr.compensating ? sd->compensate : sd->action;
    j->sr.c = c;
    j->sr.reason[0] = '\0';
    bb_error_clear(&j->step_error);
    j->outcome = fn ? fn(&j->sr, &j->step_error) : SAGA_STEP_OK;
}

static void
fill_result(const struct step_job *j, struct saga_step_result *res)
{
    *res =
        (struct saga_step_result){.outcome = j->outcome,
                                  .data = j->sr.data,
                                  .reason = j->sr.reason,
                                  .error = j->outcome == SAGA_STEP_OK ? NULL : j->step_error.detail,
                                  .started_at_ms = j->started_at_ms};
}

/* An in-transaction step and, when it succeeds, its transition, in one
 * unit. A step that fails rolls back (ERR_CONFLICT marks it so) and its
 * outcome is recorded by record_work. */
static enum err
in_txn_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct step_job *j = arg;
    struct saga_instance now;
    bool found;
    enum err rc = saga__load(c, j->saga_id, &now, &found, e);
    if (rc != ERR_OK)
        return rc;
    bool current = found && now.version == j->version;
    saga__instance_deinit(&now);
    j->stale = !current;
    if (!current)
        return bb_fail(e, ERR_CONFLICT, "", "saga %s moved on", j->saga_id);
    json_decref(j->sr.data); /* a unit the store retries starts afresh */
    j->sr.data = json_deep_copy(j->in.data);
    run_step(j, c);
    if (j->outcome != SAGA_STEP_OK)
        return bb_fail(e, ERR_CONFLICT, "", "step failed");
    struct saga_step_result res;
    fill_result(j, &res);
    return saga__transition(c, j->def, &j->in, &res, bb_wall_ms(), &j->stale, e);
}

static enum err
record_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct step_job *j = arg;
    struct saga_step_result res;
    fill_result(j, &res);
    return saga__transition(c, j->def, &j->in, &res, bb_wall_ms(), &j->stale, e);
}

static enum job_verdict
saga_job(struct job_run *run)
{
    struct step_job *j = xcalloc(1, sizeof *j);
    j->eng = run->ctx;
    j->run = run;
    json_t *payload = json_loads(run->job->payload, 0, NULL);
    j->saga_id = json_string_value(json_object_get(payload, "saga_id"));
    j->version = json_integer_value(json_object_get(payload, "version"));
    enum job_verdict verdict = JOB_DONE;
    struct bb_error e;
    if (j->saga_id == NULL) {
        bb_buf_puts(&run->error, "payload has no saga_id");
        verdict = JOB_FAIL_PERMANENTLY;
        goto out;
    }
    if (store_run(j->eng->store, STORE_READ, load_work, j, &e) != ERR_OK) {
        bb_buf_printf(&run->error, "loading saga %s: %s", j->saga_id, e.detail);
        verdict = JOB_RETRY;
        goto out;
    }
    bool active = j->in.state == SAGA_RUNNING || j->in.state == SAGA_COMPENSATING;
    if (!j->found || j->in.version != j->version || !active)
        goto out; /* a run that another one already moved on from */
    j->def = saga__def_find(j->in.type);
    if (j->def == NULL || (size_t)j->in.step >= j->def->n_steps) {
        bb_buf_printf(&run->error, "no definition of saga type %s here", j->in.type);
        verdict = JOB_RETRY; /* another process may know it */
        goto out;
    }
    const struct saga_step_def *sd = &j->def->steps[j->in.step];
    bool compensating = j->in.state == SAGA_COMPENSATING;
    snprintf(j->key, sizeof j->key, "saga:%s:%s%s", j->in.id, sd->name,
             compensating ? ":undo" : "");
    j->sr = (struct saga_step_run){.saga_id = j->in.id,
                                   .type = j->in.type,
                                   .step = sd->name,
                                   .compensating = compensating,
                                   .failure = j->in.reason,
                                   .key = j->key,
                                   .store = j->eng->store,
                                   .ctx = j->def->ctx,
                                   .attempt = j->in.retries + 1,
                                   .lease_token = run->job->lease_token};
    j->started_at_ms = bb_wall_ms();
    int64_t t0 = bb_mono_ms();
    enum err rc;
    if (sd->in_txn) {
        rc = store_run(j->eng->store, STORE_WRITE, in_txn_work, j, &e);
        if (rc == ERR_CONFLICT && !j->stale && j->outcome != SAGA_STEP_OK)
            rc = store_run(j->eng->store, STORE_WRITE, record_work, j, &e);
    } else {
        j->sr.data = json_deep_copy(j->in.data);
        run_step(j, NULL);
        rc = store_run(j->eng->store, STORE_WRITE, record_work, j, &e);
    }
    saga__metric_step(j->in.type, sd->name, compensating, (double)(bb_mono_ms() - t0) / 1e3);
    if (j->outcome != SAGA_STEP_OK)
        log_info("saga.step_failed", "saga=%s type=%s step=%s phase=%s outcome=%s detail=%s",
                 j->in.id, j->in.type, sd->name, compensating ? "compensation" : "action",
                 j->outcome == SAGA_STEP_RETRY ? "retry" : "failed", j->step_error.detail);
    if (rc == ERR_CONFLICT && j->stale)
        rc = ERR_OK; /* another run got there first */
    if (rc != ERR_OK) {
        bb_buf_printf(&run->error, "saga %s step %s: %s", j->in.id, sd->name, e.detail);
        verdict = JOB_RETRY; /* the same version runs again */
    }
out:
    json_decref(j->sr.data);
    saga__instance_deinit(&j->in);
    json_decref(payload);
    free(j);
    return verdict;
}

/* ---- the starter ------------------------------------------------------------------------- */

struct start_batch {
    int64_t claimed;
    int64_t started;
};

static enum err
start_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct start_batch *b = arg;
    b->claimed = b->started = 0;
    int64_t now = bb_wall_ms();
    for (size_t d = 0; d < g_n_defs; d++) {
        const struct saga_def *def = g_defs[d];
        if (def->start_event == NULL)
            continue;
        struct outbox_claimed *ev;
        size_t n;
        enum err rc = outbox_claim(c, def->start_event, START_BATCH, &ev, &n, e);
        if (rc != ERR_OK)
            return rc;
        for (size_t i = 0; i < n && rc == ERR_OK; i++) {
            json_t *data = NULL;
            struct bb_error why;
            if (ev[i].data == NULL ||
                def->from_event(ev[i].data, ev[i].aggregate_id, &data, def->ctx, &why) != ERR_OK) {
                /* Nothing can start from it; say so once and move on. */
                log_error("saga.bad_start_event", "type=%s event=%lld detail=%s", def->type,
                          (long long)ev[i].id, ev[i].data ? why.detail : "not JSON");
            } else {
                char id[SAGA_ID_LEN + 1];
                bool created;
                rc = saga_start(c, def, ev[i].aggregate_id, data, now, id, &created, e);
                b->started += rc == ERR_OK && created;
            }
            json_decref(data);
            if (rc == ERR_OK)
                rc = outbox_mark_handled(c, ev[i].id, now, e);
        }
        b->claimed += (int64_t)n;
        outbox_claimed_free(ev, n);
        if (rc != ERR_OK)
            return rc;
    }
    return ERR_OK;
}

static void
on_notify(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    (void)payload;
    struct saga_engine *eng = arg;
    pthread_mutex_lock(&eng->mu);
    eng->wake = true;
    pthread_cond_signal(&eng->cv);
    pthread_mutex_unlock(&eng->mu);
}

static void *
starter_main(void *arg)
{
    struct saga_engine *eng = arg;
    pthread_setname_np(pthread_self(), "bb-saga-start");
    pthread_mutex_lock(&eng->mu);
    while (!eng->stopping) {
        eng->wake = false;
        pthread_mutex_unlock(&eng->mu);
        struct start_batch b = {0};
        struct bb_error e;
        do {
            if (store_run(eng->store, STORE_WRITE, start_work, &b, &e) != ERR_OK) {
                log_error_limited(1, "saga.start_failed", "detail=%s", e.detail);
                break;
            }
            if (b.claimed > 0)
                log_debug("saga.started", "events=%lld sagas=%lld", (long long)b.claimed,
                          (long long)b.started);
        } while (b.claimed >= START_BATCH);
        pthread_mutex_lock(&eng->mu);
        if (eng->stopping || eng->wake)
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + (eng->opt.poll_ms % 1000) * 1000000;
        ts.tv_sec += eng->opt.poll_ms / 1000 + ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        while (!eng->stopping && !eng->wake)
            if (pthread_cond_timedwait(&eng->cv, &eng->mu, &ts) != 0)
                break;
    }
    pthread_mutex_unlock(&eng->mu);
    return NULL;
}

enum err
saga_engine_create(struct store *s, struct job_registry *r, const struct saga_engine_options *o,
                   struct saga_engine **out, struct bb_error *e)
{
    (void)e;
    metrics_init();
    struct saga_engine *eng = xcalloc(1, sizeof *eng);
    eng->store = s;
    eng->opt = *o;
    if (eng->opt.poll_ms <= 0)
        eng->opt.poll_ms = 5000;
    pthread_mutex_init(&eng->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&eng->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (r)
        job_registry_add(r, SAGA_HANDLER, saga_job, eng);
    *out = eng;
    return ERR_OK;
}

void
saga_engine_add(struct saga_engine *eng, const struct saga_def *def)
{
    (void)eng;
    BB_ASSERT(g_n_defs < DEFS_MAX && def->n_steps > 0 && def->n_steps <= SAGA_STEPS_MAX);
    if (saga__def_find(def->type) == NULL)
        g_defs[g_n_defs++] = def;
}

static enum err
queue_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    struct job_queue q;
    enum err rc = job_queue_get(c, SAGA_QUEUE, &q, e);
    if (rc != ERR_NOT_FOUND)
        return rc;
    bb_error_clear(e);
    job_queue_defaults(&q, SAGA_QUEUE);
    return job_queue_put(c, &q, bb_wall_ms(), e);
}

enum err
saga_engine_start(struct saga_engine *eng, struct bb_error *e)
{
    enum err rc = store_run(eng->store, STORE_WRITE, queue_work, NULL, e);
    if (rc != ERR_OK || !eng->opt.run_starter)
        return rc;
    rc = store_listen(eng->store, SAGA_CHANNEL, on_notify, eng);
    if (rc != ERR_OK)
        return rc;
    if (pthread_create(&eng->starter, NULL, starter_main, eng) != 0) {
        store_unlisten(eng->store, on_notify, eng);
        return bb_fail(e, ERR_INTERNAL, "", "cannot start the saga starter");
    }
    eng->started = true;
    return ERR_OK;
}

void
saga_engine_stop(struct saga_engine *eng)
{
    if (eng == NULL || !eng->started)
        return;
    store_unlisten(eng->store, on_notify, eng);
    pthread_mutex_lock(&eng->mu);
    eng->stopping = true;
    pthread_cond_signal(&eng->cv);
    pthread_mutex_unlock(&eng->mu);
    pthread_join(eng->starter, NULL);
    eng->started = false;
}

void
saga_engine_destroy(struct saga_engine *eng)
{
    if (eng == NULL)
        return;
    saga_engine_stop(eng);
    pthread_mutex_destroy(&eng->mu);
    pthread_cond_destroy(&eng->cv);
    free(eng);
}

/* ---- the announcer ----------------------------------------------------------------------- */

struct saga_announcer {
    struct store *store;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool pending;  /* guarded by mu */
    bool stopping; /* guarded by mu */
};

static enum err
notify_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    return store_notify(c, SAGA_CHANNEL, "", e);
}

static void *
announcer_main(void *arg)
{
    struct saga_announcer *a = arg;
    pthread_setname_np(pthread_self(), "bb-saga-notify");
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->pending && !a->stopping)
            pthread_cond_wait(&a->cv, &a->mu);
        if (!a->pending)
            break;
        a->pending = false; /* every call until now is covered by this one */
        pthread_mutex_unlock(&a->mu);
        struct bb_error e;
        if (store_run(a->store, STORE_WRITE, notify_work, NULL, &e) != ERR_OK)
            log_error_limited(1, "saga.announce_failed", "detail=%s", e.detail);
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

struct saga_announcer *
saga_announcer_create(struct store *s)
{
    struct saga_announcer *a = xcalloc(1, sizeof *a);
    a->store = s;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    if (pthread_create(&a->thread, NULL, announcer_main, a) != 0)
        bb_panic(__FILE__, __LINE__, "cannot start the saga announcer");
    return a;
}

void
saga_announce(struct saga_announcer *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->pending = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

void
saga_announcer_destroy(struct saga_announcer *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a);
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

struct saga_op {
    const char *id;
    struct saga_filter filter;
};

static enum err
get_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct saga_op *op = arg;
    return saga_get_json(c, op->id, &a->body, e);
}

static enum err
list_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct saga_op *op = arg;
    return saga_list_json(c, &op->filter, &a->body, e);
}

static enum err
retry_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct saga_op *op = arg;
    return saga_retry(c, op->id, bb_wall_ms(), &a->body, e);
}

static struct saga_op *
op_with_id(struct http_req *r)
{
    struct saga_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    struct bb_error *e = http_req_error(r);
    if (http_req_param_ident(r, "saga_id", SAGA_ID_LEN, &op->id, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return NULL;
    }
    return op;
}

static void
handle_get(struct http_req *r, void *ctx)
{
    struct saga_engine *eng = ctx;
    struct saga_op *op = op_with_id(r);
    if (op)
        http_req_run_json(r, eng->store, STORE_READ, get_work, NULL, op);
}

static void
handle_retry(struct http_req *r, void *ctx)
{
    struct saga_engine *eng = ctx;
    struct saga_op *op = op_with_id(r);
    if (op)
        http_req_run_json(r, eng->store, STORE_WRITE, retry_work, NULL, op);
}

static void
handle_list(struct http_req *r, void *ctx)
{
    struct saga_engine *eng = ctx;
    struct saga_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    struct bb_error *e = http_req_error(r);
    op->filter.limit = 100;
    const char *state = http_req_query(r, "state");
    enum saga_state st;
    enum err rc = http_req_query_int(r, "limit", 1, 1000, &op->filter.limit, e);
    if (rc == ERR_OK && state && !saga_state_from_name(state, &st))
        rc = bb_fail(e, ERR_INVALID, "state",
                     "state must be RUNNING, COMPENSATING, COMPLETED, FAILED or STUCK");
    const char *texts[] = {"type", "correlation_id", "after"};
    const char **dest[] = {&op->filter.type, &op->filter.correlation_id, &op->filter.after};
    for (size_t i = 0; i < BB_ARRAY_LEN(texts) && rc == ERR_OK; i++) {
        const char *v = http_req_query(r, texts[i]);
        if (v && !bb_ident_is_valid(v, 255))
            rc = bb_fail(e, ERR_INVALID, texts[i], "%s must be 1 to 255 of A-Z a-z 0-9 . _ : - @",
                         texts[i]);
        else if (v)
            *dest[i] = bb_arena_strdup(http_req_arena(r), v);
    }
    if (rc != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    op->filter.state = state ? saga_state_name(st) : NULL;
    http_req_run_json(r, eng->store, STORE_READ, list_work, NULL, op);
}

size_t
saga_routes(struct saga_engine *eng, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"GET", "/sagas", handle_list, eng, false},
        {"GET", "/sagas/{saga_id}", handle_get, eng, false},
        {"POST", "/sagas/{saga_id}/retry", handle_retry, eng, false},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}
