/*
 * test_saga_store.c: the saga engine with real workers on both engines, on a
 * toy definition whose steps do what each test says: steps run in order,
 * a permanent failure compensates in reverse, retries use the queue's
 * backoff and then give up, a compensation that keeps failing leaves the
 * saga STUCK until retried by hand, an in-transaction step that fails
 * leaves no write behind, an outside step holds what the transition into it
 * took (and what the hold set in the data is written with it) until the one
 * that records it, what an outside action leaves to
 * write commits with the record of its result or not at all (and then the
 * step runs again), an `at_once` step runs before the outside step before
 * it is recorded and both are recorded together, a starting event starts
 * one saga (its first job runs from what the starter wrote, unread),
 * a second job for the same step (a crash's leftover) moves nothing, a
 * unit the store fails runs again in the same run (and one whose commit's
 * answer was lost, alone or in a batch, goes on from what it committed),
 * retention deletes finished sagas only, and on_end and on_reject get each
 * saga's or event's own trace (those of a batch each theirs).
 */
#include "testsupport.h"

#include "jobs/jobs.h"
#include "outbox/outbox.h"
#include "saga/saga.h"
#include "saga/saga_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What the toy's steps do, set by each test. */
static struct {
    pthread_mutex_t mu;
    char log[512];               /* "a1 a2 c1 " */
    enum saga_outcome action[3]; /* each action's verdict */
    int retries_left[3];         /* RETRY this many times first */
    enum saga_outcome undo[3];
    int64_t s2_held;         /* what s2's action last saw in run->held */
    int64_t s2_saw_hold;     /* ...and in its data's "s2_hold" (the hold's) */
    int64_t unheld;          /* what unhold last gave back */
    int record_fails_left;   /* the records that fail (after writing) first */
    enum err record_fail_rc; /* ...with this (0: ERR_STALE_TOKEN, a refusal) */
    bool lose_s1_commit;     /* the commit of the unit that runs s1 loses its answer */
    size_t max_record_call;  /* the most args a record call had */
    size_t max_end_call;     /* the most ends an on_end call had */
    int thread_traced_ends;  /* on_end calls that found a trace on their thread */
    int before_seen;         /* runs of q2 that saw q1's record in run->before */
    int64_t before_found;    /* ...and the records of q1 they found in the store */
    long s3_sleep_ns;        /* s3's action takes at least this long */
} toy = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The workers read `toy` under its lock. */
#define TOY_SET(field, value)          \
    do {                               \
        pthread_mutex_lock(&toy.mu);   \
        toy.field = (value);           \
        pthread_mutex_unlock(&toy.mu); \
    } while (0)

static struct store_stmt TOY_WRITE = {.sql = "INSERT INTO toy_writes (saga, step) VALUES ($1, $2)"};
static struct store_stmt TOY_COUNT = {.sql = "SELECT count(*) FROM toy_writes"};
static struct store_stmt TOY_TABLE = {.sql = "CREATE TABLE toy_writes (saga TEXT, step TEXT)"};

/* What an outside step leaves to write with its result: (saga, "STEP:record"). */
struct toy_record {
    char saga[SAGA_ID_LEN + 1];
    char step[16];
};

static enum err
toy_record_write(struct store_conn *c, void *const *args, size_t n, struct bb_error *e)
{
    for (size_t i = 0; i < n; i++) {
        const struct toy_record *r = args[i];
        const struct store_param p[] = {sp_text(r->saga), sp_text(r->step)};
        enum err rc = store_exec(c, &TOY_WRITE, p, 2, NULL, e);
        if (rc != ERR_OK)
            return rc;
    }
    pthread_mutex_lock(&toy.mu);
    toy.max_record_call = n > toy.max_record_call ? n : toy.max_record_call;
    bool fail = toy.record_fails_left > 0;
    toy.record_fails_left -= fail ? 1 : 0;
    enum err rc = toy.record_fail_rc ? toy.record_fail_rc : ERR_STALE_TOKEN;
    pthread_mutex_unlock(&toy.mu);
    return fail ? bb_fail(e, rc, "", "the record failed") : ERR_OK;
}

static void
toy_record_leave(struct saga_step_run *run)
{
    struct toy_record *r = xcalloc(1, sizeof *r);
    bb_strlcpy(r->saga, run->saga_id, sizeof r->saga);
    snprintf(r->step, sizeof r->step, "%s:record", run->step);
    run->record = (struct saga_record){.fn = toy_record_write, .arg = r, .drop = free};
}

static enum saga_outcome
toy_step(struct saga_step_run *run, struct bb_error *e)
{
    int i = run->step[1] - '1';
    pthread_mutex_lock(&toy.mu);
    size_t n = strlen(toy.log);
    snprintf(toy.log + n, sizeof toy.log - n, "%c%d ", run->compensating ? 'c' : 'a', i + 1);
    enum saga_outcome o = run->compensating ? toy.undo[i] : toy.action[i];
    if (i == 1 && !run->compensating) {
        toy.s2_held = run->held;
        toy.s2_saw_hold = json_integer_value(json_object_get(run->data, "s2_hold"));
    }
    if (!run->compensating && toy.retries_left[i] > 0) {
        toy.retries_left[i]--;
        o = SAGA_STEP_RETRY;
    }
    bool lose = i == 0 && run->c && !run->compensating && toy.lose_s1_commit;
    toy.lose_s1_commit = toy.lose_s1_commit && !lose;
    struct timespec nap = {.tv_nsec = i == 2 && !run->compensating ? toy.s3_sleep_ns : 0};
    pthread_mutex_unlock(&toy.mu);
    while (nap.tv_nsec > 0 && nanosleep(&nap, &nap) != 0) /* at least that long */
        ;
    struct bb_error armed;
    if (lose && bb_faults_arm_here("store.commit_lost=1", 1, &armed) != ERR_OK)
        return SAGA_STEP_FAIL;
    if (run->c) { /* in the transaction: a write that must vanish if the step fails */
        const struct store_param p[] = {sp_text(run->saga_id), sp_text(run->step)};
        if (store_exec(run->c, &TOY_WRITE, p, 2, NULL, e) != ERR_OK)
            return SAGA_STEP_RETRY;
    } else if (!run->compensating) {
        toy_record_leave(run);
    }
    if (o != SAGA_STEP_OK) {
        snprintf(run->reason, sizeof run->reason, "step %d said no", i + 1);
        bb_fail(e, ERR_INTERNAL, "", "%s of %s failed", run->compensating ? "undo" : "action",
                run->step);
    }
    json_object_set_new(run->data, run->step, json_true());
    return o;
}

/* s2 holds "something" (token 42) while it runs, taken and given back in
 * the transitions around it. */
static enum err
toy_hold(struct saga_step_run *run, int64_t *held, struct bb_error *e)
{
    (void)e;
    *held = run->c ? 42 : 0;
    if (run->c) /* written with the unit that takes it */
        json_object_set_new(run->data, "s2_hold", json_integer(42));
    return ERR_OK;
}

static void
toy_unhold(struct saga_step_run *run, int64_t held)
{
    if (run->c == NULL)
        return;
    pthread_mutex_lock(&toy.mu);
    toy.unheld = held;
    pthread_mutex_unlock(&toy.mu);
}

static const struct saga_step_def TOY_STEPS[] = {
    {.name = "s1", .action = toy_step, .compensate = toy_step, .in_txn = true},
    {.name = "s2",
     .action = toy_step,
     .compensate = toy_step,
     .hold = toy_hold,
     .unhold = toy_unhold},
    {.name = "s3", .action = toy_step, .compensate = toy_step, .in_txn = true},
};

static enum err
toy_from_event(const json_t *event, const char *aggregate_id, json_t **data, void *ctx,
               struct bb_error *e)
{
    (void)ctx;
    if (json_object_get(event, "bad"))
        return bb_fail(e, ERR_INVALID, "", "%s: a bad toy event", aggregate_id);
    *data = json_pack("{s:s, s:O}", "for", aggregate_id, "event", event);
    return ERR_OK;
}

/* The aggregates whose events toy_from_event refused, as on_reject heard
 * them. */
static struct {
    pthread_mutex_t mu;
    char last[64];
    char why[128];
    char traceparent[64]; /* "": none */
    int n;
} rejected = {.mu = PTHREAD_MUTEX_INITIALIZER};

static enum err
toy_on_reject(struct store_conn *c, const char *aggregate_id, const char *why,
              const char *traceparent, void *ctx, struct bb_error *e)
{
    (void)c;
    (void)ctx;
    (void)e;
    pthread_mutex_lock(&rejected.mu);
    bb_strlcpy(rejected.last, aggregate_id, sizeof rejected.last);
    bb_strlcpy(rejected.why, why, sizeof rejected.why);
    bb_strlcpy(rejected.traceparent, traceparent ? traceparent : "", sizeof rejected.traceparent);
    rejected.n++;
    pthread_mutex_unlock(&rejected.mu);
    return ERR_OK;
}

/*
 * "toyc": two outside steps, the second `at_once`, then an in-transaction
 * one; the steps do what toy's s1..s3 do. q2 notes whether it saw q1's
 * record, and how many of q1's records the store had then.
 */
struct written_op {
    const char *key; /* "SAGA:STEP" */
    int64_t n;
};

static enum err
written_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    static struct store_stmt of = {
        .sql = "SELECT count(*) FROM toy_writes WHERE saga || ':' || step = $1"};
    struct written_op *op = arg;
    const struct store_param p[] = {sp_text(op->key)};
    struct store_rows r;
    enum err rc = store_query(c, &of, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    op->n = store_next(&r) ? store_col_int(&r, 0) : 0;
    store_rows_close(&r);
    return ERR_OK;
}

static enum saga_outcome
toyc_q2(struct saga_step_run *run, struct bb_error *e)
{
    const struct toy_record *r =
        run->before && run->before->fn == toy_record_write ? run->before->arg : NULL;
    if (r && strcmp(r->saga, run->saga_id) == 0 && strcmp(r->step, "q1:record") == 0) {
        char key[128];
        snprintf(key, sizeof key, "%s:q1:record", run->saga_id);
        struct written_op op = {.key = key};
        if (store_run(run->store, STORE_READ, written_work, &op, e) != ERR_OK)
            return SAGA_STEP_RETRY;
        pthread_mutex_lock(&toy.mu);
        toy.before_seen++;
        toy.before_found += op.n;
        pthread_mutex_unlock(&toy.mu);
    }
    return toy_step(run, e);
}

static const struct saga_step_def TOYC_STEPS[] = {
    {.name = "q1", .action = toy_step, .compensate = toy_step},
    {.name = "q2", .action = toyc_q2, .compensate = toy_step, .at_once = true},
    {.name = "q3", .action = toy_step, .compensate = toy_step, .in_txn = true},
};

static const struct saga_def TOYC = {.type = "toyc", .steps = TOYC_STEPS, .n_steps = 3};

static const struct saga_def TOY = {.type = "toy",
                                    .steps = TOY_STEPS,
                                    .n_steps = 3,
                                    .start_event = "toy.requested.v1",
                                    .from_event = toy_from_event,
                                    .on_reject = toy_on_reject};

/*
 * "toyb": an outside step p0, then two in-transaction steps with batch
 * forms. Run alone, b1 waits at a gate: while the first units wait there,
 * the rest queue behind them; then they run as one batch. A saga whose
 * data says "fail" fails at b2, alone or in a batch.
 */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;        /* b1 alone may go on */
    int held;         /* b1 runs alone waiting at the gate */
    size_t max_batch; /* the most members a batch form saw */
    int batches;      /* batch form calls */
    bool break_b2;    /* the next batch of b2 fails as a whole, after a write */
    bool lose_b2;     /* the next batch of b2 commits, but its answer is lost */
} gate = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static enum saga_outcome
toyb_alone(struct saga_step_run *run, struct bb_error *e)
{
    if (strcmp(run->step, "b1") == 0 && !run->compensating) {
        pthread_mutex_lock(&gate.mu);
        gate.held++;
        pthread_cond_broadcast(&gate.cv);
        while (!gate.open)
            pthread_cond_wait(&gate.cv, &gate.mu);
        pthread_mutex_unlock(&gate.mu);
    }
    if (strcmp(run->step, "b2") == 0 && json_is_true(json_object_get(run->data, "fail"))) {
        bb_strlcpy(run->reason, "b2 said no", sizeof run->reason);
        bb_fail(e, ERR_INTERNAL, "", "b2 of %s failed", run->saga_id);
        return SAGA_STEP_FAIL;
    }
    char step[16];
    snprintf(step, sizeof step, "%s%s", run->step, run->compensating ? ":undo" : "");
    const struct store_param p[] = {sp_text(run->saga_id), sp_text(step)};
    return store_exec(run->c, &TOY_WRITE, p, 2, NULL, e) == ERR_OK ? SAGA_STEP_OK : SAGA_STEP_RETRY;
}

/* The same for many: writes for every member but those whose data says to
 * fail at b2. */
static enum err
toyb_batch(struct saga_step_run **runs, size_t n, enum saga_outcome *out, struct bb_error *errors,
           struct bb_error *e)
{
    pthread_mutex_lock(&gate.mu);
    gate.batches++;
    gate.max_batch = n > gate.max_batch ? n : gate.max_batch;
    bool fail_all = gate.break_b2 && strcmp(runs[0]->step, "b2") == 0;
    bool lose = gate.lose_b2 && strcmp(runs[0]->step, "b2") == 0;
    if (fail_all)
        gate.break_b2 = false;
    if (lose)
        gate.lose_b2 = false;
    pthread_mutex_unlock(&gate.mu);
    enum err armed = lose ? bb_faults_arm_here("store.commit_lost=1", 1, e) : ERR_OK;
    if (armed != ERR_OK)
        return armed;
    if (fail_all) { /* what it wrote must vanish with the batch */
        const struct store_param p[] = {sp_text(runs[0]->saga_id), sp_text("b2")};
        enum err rc = store_exec(runs[0]->c, &TOY_WRITE, p, 2, NULL, e);
        return rc != ERR_OK ? rc : bb_fail(e, ERR_STORE, "", "the batch broke");
    }
    enum err rc = ERR_OK;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        out[i] = SAGA_STEP_OK;
        if (strcmp(runs[i]->step, "b2") == 0 &&
            json_is_true(json_object_get(runs[i]->data, "fail"))) {
            out[i] = SAGA_STEP_FAIL;
            bb_strlcpy(runs[i]->reason, "b2 said no", sizeof runs[i]->reason);
            bb_fail(&errors[i], ERR_INTERNAL, "", "b2 of %s failed", runs[i]->saga_id);
            continue;
        }
        const struct store_param p[] = {sp_text(runs[i]->saga_id), sp_text(runs[i]->step)};
        rc = store_exec(runs[i]->c, &TOY_WRITE, p, 2, NULL, e);
    }
    return rc;
}

static enum saga_outcome
toyb_p0(struct saga_step_run *run, struct bb_error *e)
{
    (void)e;
    toy_record_leave(run);
    return SAGA_STEP_OK;
}

static const struct saga_step_def TOYB_STEPS[] = {
    {.name = "p0", .action = toyb_p0},
    {.name = "b1",
     .action = toyb_alone,
     .compensate = toyb_alone,
     .in_txn = true,
     .action_batch = toyb_batch},
    {.name = "b2", .action = toyb_alone, .in_txn = true, .action_batch = toyb_batch},
};

/* Each end as a write (saga, "end:COMPLETED") and its trace as another
 * (saga, "trace:TRACEPARENT", "trace:none" without), the most at once
 * noted. The thread has no trace of its own meanwhile. */
static enum err
toyb_end(struct store_conn *c, const char *const *saga_ids, const enum saga_state *ends,
         const json_t *const *data, const char *const *reasons, const char *const *traceparents,
         size_t n, void *ctx, struct bb_error *e)
{
    (void)data;
    (void)ctx;
    bool thread_traced = bb_log_context_traceparent() != NULL;
    for (size_t i = 0; i < n; i++) {
        char step[32], trace[80];
        snprintf(step, sizeof step, "end:%s", saga_state_name(ends[i]));
        snprintf(trace, sizeof trace, "trace:%s", traceparents[i] ? traceparents[i] : "none");
        if ((ends[i] == SAGA_FAILED) != (reasons[i] != NULL))
            return bb_fail(e, ERR_INTERNAL, "", "a reason for FAILED only");
        const struct store_param p[] = {sp_text(saga_ids[i]), sp_text(step)};
        const struct store_param q[] = {sp_text(saga_ids[i]), sp_text(trace)};
        enum err rc = store_exec(c, &TOY_WRITE, p, 2, NULL, e);
        if (rc == ERR_OK)
            rc = store_exec(c, &TOY_WRITE, q, 2, NULL, e);
        if (rc != ERR_OK)
            return rc;
    }
    pthread_mutex_lock(&toy.mu);
    toy.max_end_call = n > toy.max_end_call ? n : toy.max_end_call;
    toy.thread_traced_ends += thread_traced;
    pthread_mutex_unlock(&toy.mu);
    return ERR_OK;
}

static const struct saga_def TOYB = {
    .type = "toyb", .steps = TOYB_STEPS, .n_steps = 3, .on_end = toyb_end};

struct fixture {
    struct test_db *db;
    struct job_registry *registry;
    struct saga_engine *engine;
    struct job_pool *pool;
};

static enum err
setup_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    struct job_queue q;
    enum err rc = job_queue_get(c, "sagas", &q, e);
    q.max_attempts = 3;
    q.backoff.base_ms = 5;
    q.backoff.cap_ms = 20;
    if (rc == ERR_OK)
        rc = job_queue_put(c, &q, bb_wall_ms(), e);
    return rc == ERR_OK ? store_exec(c, &TOY_TABLE, NULL, 0, NULL, e) : rc;
}

/* here: the saga engine runs its jobs in the fixture's pool
 * (saga_engine_run_here) from its start. */
static int
setup_with(void **state, int64_t workers, bool here)
{
    pthread_mutex_lock(&toy.mu);
    memset(toy.log, 0, sizeof toy.log);
    for (int i = 0; i < 3; i++) {
        toy.action[i] = toy.undo[i] = SAGA_STEP_OK;
        toy.retries_left[i] = 0;
    }
    toy.s2_held = toy.unheld = 0;
    toy.record_fails_left = 0;
    toy.record_fail_rc = ERR_OK;
    toy.lose_s1_commit = false;
    toy.max_record_call = toy.max_end_call = 0;
    toy.thread_traced_ends = 0;
    toy.before_seen = 0;
    toy.before_found = 0;
    toy.s3_sleep_ns = 0;
    pthread_mutex_unlock(&toy.mu);
    struct fixture *f = xcalloc(1, sizeof *f);
    f->db = test_db_create();
    struct bb_error e;
    struct job_registry_options ro = {0};
    assert_ok(job_registry_create(&ro, &f->registry, &e), &e);
    struct saga_engine_options so = {.poll_ms = 50, .run_starter = true};
    assert_ok(saga_engine_create(f->db->store, f->registry, &so, &f->engine, &e), &e);
    saga_engine_add(f->engine, &TOY);
    saga_engine_add(f->engine, &TOYB);
    saga_engine_add(f->engine, &TOYC);
    struct job_pool_options po = {.concurrency = workers, .poll_ms = 50};
    assert_ok(job_pool_start(f->db->store, f->registry, &po, &f->pool, &e), &e);
    if (here)
        saga_engine_run_here(f->engine, f->pool);
    assert_ok(saga_engine_start(f->engine, &e), &e);
    assert_ok(store_run(f->db->store, STORE_WRITE, setup_work, NULL, &e), &e);
    *state = f;
    return 0;
}

static int
setup(void **state)
{
    return setup_with(state, 2, false);
}

static int
setup_here(void **state)
{
    return setup_with(state, 2, true);
}

/* Enough workers for every saga of the batch test at once. */
static int
setup_wide(void **state)
{
    return setup_with(state, 16, false);
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    bb_faults_disarm(); /* what a test armed, even if it failed */
    saga_engine_stop(f->engine);
    saga_engine_run_here(f->engine, NULL);
    job_pool_stop(f->pool, bb_mono_ms() + 5000);
    saga_engine_destroy(f->engine);
    job_registry_destroy(f->registry);
    test_db_destroy(f->db);
    free(f);
    return 0;
}

struct start_op {
    const struct saga_def *def; /* NULL: toy */
    const char *correlation;
    char id[SAGA_ID_LEN + 1];
    bool created;
};

static enum err
start_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct start_op *op = arg;
    json_t *data = json_object();
    enum err rc = saga_start(c, op->def ? op->def : &TOY, op->correlation, data, bb_wall_ms(),
                             op->id, &op->created, e);
    json_decref(data);
    return rc;
}

struct get_op {
    const char *id;
    json_t *saga;
};

static enum err
get_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct get_op *op = arg;
    json_decref(op->saga);
    op->saga = NULL;
    return saga_get_json(c, op->id, &op->saga, e);
}

/* The saga once it is in `state` (20 s at most). */
static json_t *
await_state(struct fixture *f, const char *id, const char *state)
{
    struct get_op op = {.id = id};
    struct bb_error e;
    for (int64_t deadline = bb_mono_ms() + 20000;; bb_sleep_ms(10)) {
        assert_ok(store_run(f->db->store, STORE_READ, get_work, &op, &e), &e);
        const char *now = json_string_value(json_object_get(op.saga, "state"));
        if (strcmp(now, state) == 0)
            return op.saga;
        if (bb_mono_ms() > deadline)
            fail_msg("saga %s is %s, not %s", id, now, state);
    }
}

static const char *
started(struct fixture *f, struct start_op *op)
{
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, start_work, op, &e), &e);
    return op->id;
}

/* "s1:action:ok s2:action:retry ..." */
static void
timeline_is(const json_t *saga, const char *want)
{
    char got[1024] = "";
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(saga, "timeline"), i, t)
    {
        size_t n = strlen(got);
        snprintf(got + n, sizeof got - n, "%s%s:%s:%s", i ? " " : "",
                 json_string_value(json_object_get(t, "step")),
                 json_string_value(json_object_get(t, "phase")),
                 json_string_value(json_object_get(t, "outcome")));
    }
    assert_string_equal(got, want);
}

static void
log_is(const char *want)
{
    pthread_mutex_lock(&toy.mu);
    assert_string_equal(toy.log, want);
    pthread_mutex_unlock(&toy.mu);
}

/* The count `st` answers, with `arg` as its one parameter if not NULL. */
static int64_t
count_of(struct fixture *f, struct store_stmt *st, const char *arg)
{
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(f->db->store, &c, &e), &e);
    struct store_rows r;
    const struct store_param p[] = {sp_text(arg)};
    assert_ok(store_query(c, st, p, arg ? 1 : 0, &r, &e), &e);
    assert_true(store_next(&r));
    int64_t n = store_col_int(&r, 0);
    store_rows_close(&r);
    store_conn_close(c);
    return n;
}

static int64_t
writes(struct fixture *f)
{
    return count_of(f, &TOY_COUNT, NULL);
}

static int64_t
writes_of(struct fixture *f, const char *saga, const char *step)
{
    static struct store_stmt of = {
        .sql = "SELECT count(*) FROM toy_writes WHERE saga || ':' || step = $1"};
    char key[256];
    snprintf(key, sizeof key, "%s:%s", saga, step);
    return count_of(f, &of, key);
}

static struct store_stmt SAGA_JOBS_NOT_COMPLETED = {
    .sql = "SELECT count(*) FROM jobs WHERE queue = 'sagas' AND state <> 'completed'",
};

static int64_t
stale_completions(void)
{
    int64_t n = test_metric("backbone_job_stale_reports_total{report=\"complete\"}");
    return n < 0 ? 0 : n;
}

static struct store_stmt SAGA_JOBS_RETRIED = {
    .sql = "SELECT count(*) FROM jobs WHERE queue = 'sagas' AND attempt > 1",
};

/* Units read again after they failed, by what the read found. */
static int64_t
reloads(const char *found)
{
    char name[128];
    snprintf(name, sizeof name, "backbone_saga_unit_reloads_total{found=\"%s\"}", found);
    int64_t n = test_metric(name);
    return n < 0 ? 0 : n;
}

static void
steps_run_in_order_and_complete(void **state)
{
    struct fixture *f = *state;
    struct start_op op = {.correlation = "order-1"};
    int64_t stale = stale_completions();
    json_t *saga = await_state(f, started(f, &op), "COMPLETED");
    /* Its job ended in the transaction that completed it, and the worker
     * did not record it again. */
    assert_int_equal(count_of(f, &SAGA_JOBS_NOT_COMPLETED, NULL), 0);
    assert_int_equal(stale_completions(), stale);
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:ok");
    log_is("a1 a2 a3 ");
    /* What s2's action left was written with the record of its result. */
    assert_int_equal(writes_of(f, op.id, "s2:record"), 1);
    /* s2 ran holding what the transition into it took, and the one that
     * recorded it gave that back. */
    pthread_mutex_lock(&toy.mu);
    assert_int_equal(toy.s2_held, 42);
    assert_int_equal(toy.unheld, 42);
    pthread_mutex_unlock(&toy.mu);
    json_t *data = json_object_get(saga, "data");
    assert_true(json_is_true(json_object_get(data, "s3")));
    /* What the hold set in the data was written with its unit, and s2 saw it. */
    assert_int_equal(json_integer_value(json_object_get(data, "s2_hold")), 42);
    pthread_mutex_lock(&toy.mu);
    assert_int_equal(toy.s2_saw_hold, 42);
    pthread_mutex_unlock(&toy.mu);
    json_decref(saga);
    /* One per correlation id. */
    struct start_op again = {.correlation = "order-1"};
    started(f, &again);
    assert_false(again.created);
    assert_string_equal(again.id, op.id);
    assert_int_equal(writes(f), 3); /* s1, s2's record, s3 */
}

/* A step shorter than a millisecond is timed to its length, not to 0 ms
 * (the histogram's buckets start at 0.1 ms): s3's action takes at least
 * 0.3 ms, and its run counts once with at least that. */
static void
a_step_shorter_than_a_millisecond_is_timed(void **state)
{
    struct fixture *f = *state;
    const char *count = "backbone_saga_step_duration_seconds_count{type=\"toy\",step=\"s3\","
                        "phase=\"action\"}";
    const char *sum = "backbone_saga_step_duration_seconds_sum{type=\"toy\",step=\"s3\","
                      "phase=\"action\"}";
    int64_t count_before = test_metric(count) < 0 ? 0 : test_metric(count);
    double sum_before = test_metric_value(sum) < 0 ? 0 : test_metric_value(sum);
    TOY_SET(s3_sleep_ns, 300000);
    struct start_op op = {.correlation = "order-ns"};
    json_decref(await_state(f, started(f, &op), "COMPLETED"));
    assert_int_equal(test_metric(count), count_before + 1);
    assert_true(test_metric_value(sum) - sum_before >= 0.0003);
}

/* A record that fails takes the unit with it: s2's result and what it left
 * are not written, and s2 runs again (its job retried), to one record. */
static void
an_outside_result_that_cannot_be_written_runs_its_step_again(void **state)
{
    struct fixture *f = *state;
    TOY_SET(record_fails_left, 1);
    struct start_op op = {.correlation = "order-r"};
    json_t *saga = await_state(f, started(f, &op), "COMPLETED");
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:ok");
    json_decref(saga);
    log_is("a1 a2 a2 a3 ");
    assert_int_equal(writes_of(f, op.id, "s2:record"), 1);
    assert_int_equal(writes_of(f, op.id, "s3"), 1);
}

/* A toy saga whose unit that records s2 the store fails `fails` times
 * (after the record was written) ends COMPLETED with s2's record written
 * once, the steps having run as `log` says, its job retried `retried`
 * times, and `reads` reads of the saga that found nothing committed. */
static void
store_fails_the_record(struct fixture *f, const char *correlation, int fails, const char *log,
                       int64_t retried, int64_t reads)
{
    int64_t before = reloads("nothing");
    pthread_mutex_lock(&toy.mu);
    toy.record_fails_left = fails;
    toy.record_fail_rc = ERR_STORE;
    pthread_mutex_unlock(&toy.mu);
    struct start_op op = {.correlation = correlation};
    json_t *saga = await_state(f, started(f, &op), "COMPLETED");
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:ok");
    json_decref(saga);
    log_is(log);
    assert_int_equal(writes_of(f, op.id, "s2:record"), 1);
    assert_int_equal(count_of(f, &SAGA_JOBS_RETRIED, NULL), retried);
    assert_int_equal(reloads("nothing"), before + reads);
}

/* Nothing committed, and the same run commits the same results again, so
 * s2 does not run again and its job is not retried. */
static void
a_unit_the_store_fails_commits_the_same_results_again(void **state)
{
    store_fails_the_record(*state, "order-sf", 1, "a1 a2 a3 ", 0, 1);
}

/* ...but one it keeps failing, past the run's reads in a row (four), is
 * left to its job: the retry runs s2 again, and its result commits. */
static void
a_unit_the_store_keeps_failing_is_left_to_its_job(void **state)
{
    store_fails_the_record(*state, "order-sf5", 5, "a1 a2 a2 a3 ", 1, 4);
}

/* The commit of the unit that ran s1 (and took s2's hold) loses its
 * answer: the run reads the saga, finds its unit committed, and goes on to
 * s2 holding what the unit took, without a retry of its job. */
static void
a_unit_whose_commit_answer_is_lost_goes_on_from_what_it_committed(void **state)
{
    struct fixture *f = *state;
    int64_t before = reloads("committed");
    TOY_SET(lose_s1_commit, true);
    struct start_op op = {.correlation = "order-lost"};
    json_t *saga = await_state(f, started(f, &op), "COMPLETED");
    assert_int_equal(bb_faults_injected("store.commit_lost"), 1);
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:ok");
    json_decref(saga);
    log_is("a1 a2 a3 ");
    pthread_mutex_lock(&toy.mu);
    assert_int_equal(toy.s2_held, 42);
    assert_int_equal(toy.unheld, 42);
    pthread_mutex_unlock(&toy.mu);
    assert_int_equal(count_of(f, &SAGA_JOBS_RETRIED, NULL), 0);
    assert_int_equal(count_of(f, &SAGA_JOBS_NOT_COMPLETED, NULL), 0);
    assert_int_equal(reloads("committed"), before + 1);
}

/* A run's first read of its saga fails (once): the run reads it again in
 * process and goes on, its job not retried. */
static void
a_run_whose_first_read_fails_reads_it_again(void **state)
{
    struct fixture *f = *state;
    TOY_SET(retries_left[1], 1); /* s2's retry runs from the store, not the starter */
    struct bb_error e;
    assert_ok(bb_faults_arm("saga.load=1", 1, &e), &e);
    struct start_op op = {.correlation = "order-load"};
    json_t *saga = await_state(f, started(f, &op), "COMPLETED");
    assert_int_equal(bb_faults_injected("saga.load"), 1);
    timeline_is(saga, "s1:action:ok s2:action:retry s2:action:ok s3:action:ok");
    json_decref(saga);
    log_is("a1 a2 a2 a3 ");
    assert_int_equal(count_of(f, &SAGA_JOBS_RETRIED, NULL), 0); /* a step's retry is a new job */
}

/* Since the last call. */
static void
before_is(int seen, int64_t found)
{
    pthread_mutex_lock(&toy.mu);
    assert_int_equal(toy.before_seen, seen);
    assert_int_equal(toy.before_found, found);
    toy.before_seen = 0;
    toy.before_found = 0;
    pthread_mutex_unlock(&toy.mu);
}

/* A toyc saga for `correlation` run to the state `end`: its timeline, the
 * steps' log (cleared first) and what q2 saw of q1's record (see
 * before_is) as given, and q1's and q2's records written q1 and q2 times. */
static void
toyc_runs(struct fixture *f, const char *correlation, const char *end, const char *timeline,
          const char *log, int seen, int64_t found, int64_t q1, int64_t q2)
{
    TOY_SET(log[0], '\0');
    struct start_op op = {.def = &TOYC, .correlation = correlation};
    json_t *saga = await_state(f, started(f, &op), end);
    timeline_is(saga, timeline);
    json_decref(saga);
    log_is(log);
    before_is(seen, found);
    assert_int_equal(writes_of(f, op.id, "q1:record"), q1);
    assert_int_equal(writes_of(f, op.id, "q2:record"), q2);
}

/* q2 ran before q1's result and record were written, saw that record, and
 * both were written by the unit that went on to q3. */
static void
an_at_once_step_runs_before_the_step_before_is_recorded(void **state)
{
    struct fixture *f = *state;
    toyc_runs(f, "order-c", "COMPLETED", "q1:action:ok q2:action:ok q3:action:ok", "a1 a2 a3 ", 1,
              0, 1, 1);
    assert_int_equal(writes(f), 3);
}

/* A q1 that asks for a retry is recorded alone (with its record), and q2
 * waits for its next run (and finds only the retry's record); a q2 that
 * fails is recorded with q1 and compensation starts from q1. */
static void
an_at_once_step_follows_only_a_success(void **state)
{
    struct fixture *f = *state;
    TOY_SET(retries_left[0], 1);
    toyc_runs(f, "order-c1", "COMPLETED", "q1:action:retry q1:action:ok q2:action:ok q3:action:ok",
              "a1 a1 a2 a3 ", 1, 1, 2, 1);
    TOY_SET(action[1], SAGA_STEP_FAIL);
    toyc_runs(f, "order-c2", "FAILED", "q1:action:ok q2:action:failed q1:compensation:ok",
              "a1 a2 c1 ", 1, 0, 1, 1);
}

/* A record that fails takes both results with it: q1 and q2 run again, and
 * each record is written once. */
static void
records_of_steps_run_at_once_commit_together(void **state)
{
    struct fixture *f = *state;
    TOY_SET(record_fails_left, 1);
    toyc_runs(f, "order-c3", "COMPLETED", "q1:action:ok q2:action:ok q3:action:ok",
              "a1 a2 a1 a2 a3 ", 2, 0, 1, 1);
}

static void
a_permanent_failure_compensates_in_reverse(void **state)
{
    struct fixture *f = *state;
    TOY_SET(action[2], SAGA_STEP_FAIL);
    struct start_op op = {.correlation = "order-2"};
    json_t *saga = await_state(f, started(f, &op), "FAILED");
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:failed s2:compensation:ok "
                      "s1:compensation:ok");
    /* s3 first ran in the transaction that recorded s2; its failure rolled
     * that back, s2 was recorded alone and s3 ran again on its own. */
    log_is("a1 a2 a3 a3 c2 c1 ");
    assert_string_equal(json_string_value(json_object_get(saga, "reason")), "step 3 said no");
    json_decref(saga);
    /* s3's write went with its failure; s1's, s2's record and s1's undo's stayed. */
    assert_int_equal(writes(f), 3);
}

static void
retries_follow_the_queue_then_give_up(void **state)
{
    struct fixture *f = *state;
    TOY_SET(retries_left[1], 1); /* s2: one retry, then fine */
    struct start_op op = {.correlation = "order-3"};
    json_t *saga = await_state(f, started(f, &op), "COMPLETED");
    timeline_is(saga, "s1:action:ok s2:action:retry s2:action:ok s3:action:ok");
    /* Each entry: its attempt, the error of one that did not succeed, its times. */
    json_t *tl = json_object_get(saga, "timeline");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(tl, 1), "attempt")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(tl, 2), "attempt")), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(tl, 1), "error")),
                        "action of s2 failed");
    assert_true(json_is_null(json_object_get(json_array_get(tl, 2), "error")));
    for (size_t i = 0; i < json_array_size(tl); i++) {
        const json_t *t = json_array_get(tl, i);
        assert_true(json_integer_value(json_object_get(t, "duration_ms")) >= 0);
        assert_non_null(json_string_value(json_object_get(t, "started_at")));
        assert_non_null(json_string_value(json_object_get(t, "ended_at")));
    }
    json_decref(saga);
    TOY_SET(retries_left[1], 100); /* more than the queue's 3 attempts */
    struct start_op op2 = {.correlation = "order-4"};
    saga = await_state(f, started(f, &op2), "FAILED");
    timeline_is(saga, "s1:action:ok s2:action:retry s2:action:retry s2:action:failed "
                      "s1:compensation:ok");
    json_decref(saga);
}

static enum err
retry_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    json_t *out = NULL;
    enum err rc = saga_retry(c, arg, bb_wall_ms(), &out, e);
    json_decref(out);
    return rc;
}

struct retried_op {
    const char *id;
    char state[16]; /* the state the retry left it in */
};

static enum err
retried_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct retried_op *op = arg;
    json_t *out = NULL;
    enum err rc = saga_retry(c, op->id, bb_wall_ms(), &out, e);
    if (rc == ERR_OK)
        bb_strlcpy(op->state, json_string_value(json_object_get(out, "state")), sizeof op->state);
    json_decref(out);
    return rc;
}

static void
a_failing_compensation_is_stuck_until_retried(void **state)
{
    struct fixture *f = *state;
    TOY_SET(action[2], SAGA_STEP_FAIL);
    TOY_SET(undo[1], SAGA_STEP_FAIL);
    struct start_op op = {.correlation = "order-5"};
    json_t *saga = await_state(f, started(f, &op), "STUCK");
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:failed s2:compensation:failed");
    json_decref(saga);
    struct bb_error e;
    TOY_SET(undo[1], SAGA_STEP_OK); /* a person fixed the cause */
    assert_ok(store_run(f->db->store, STORE_WRITE, retry_work, op.id, &e), &e);
    saga = await_state(f, op.id, "FAILED");
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:failed s2:compensation:failed "
                      "s2:compensation:retried s2:compensation:ok s1:compensation:ok");
    json_decref(saga);
    /* Only a STUCK saga is retried by hand. */
    assert_int_equal(store_run(f->db->store, STORE_WRITE, retry_work, op.id, &e), ERR_CONFLICT);
}

/* A second job for the saga's first step, as a crash or a rescued lease
 * would leave behind. */
static enum err
twin_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct start_op *op = arg;
    enum err rc = start_work(c, op, e);
    char payload[128];
    snprintf(payload, sizeof payload, "{\"saga_id\":\"%s\",\"version\":1}", op->id);
    struct job_spec spec = {.queue = "sagas", .handler = "saga", .payload = payload};
    int64_t id;
    bool created;
    return rc == ERR_OK ? job_submit(c, &spec, bb_wall_ms(), &id, &created, e) : rc;
}

static void
two_jobs_for_one_step_move_the_saga_once(void **state)
{
    struct fixture *f = *state;
    struct start_op op = {.correlation = "order-7"};
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, twin_work, &op, &e), &e);
    json_t *saga = await_state(f, op.id, "COMPLETED");
    timeline_is(saga, "s1:action:ok s2:action:ok s3:action:ok");
    json_decref(saga);
    assert_int_equal(writes(f), 3); /* the twin, not the saga's job, ran nothing */
}

#define BAD_EVENT_TRACE "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

/* A starting event for order-6 (arg NULL), or a bad one for `arg` (with
 * the trace BAD_EVENT_TRACE). */
static enum err
event_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    json_t *data = arg ? json_pack("{s:b}", "bad", 1) : json_pack("{s:i}", "n", 1);
    struct outbox_event ev = {.type = "toy.requested.v1",
                              .aggregate_type = "toy",
                              .aggregate_id = arg ? arg : "order-6",
                              .data = data,
                              .traceparent = arg ? BAD_EVENT_TRACE : NULL,
                              .for_consumer = true};
    enum err rc = outbox_append(c, &ev, bb_wall_ms(), e);
    json_decref(data);
    return rc;
}

static enum err
list_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct saga_filter f = {.correlation_id = "order-6", .limit = 10};
    return saga_list_json(c, &f, arg, e);
}

static enum err
order7_list_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct saga_filter f = {.correlation_id = "order-7", .limit = 10};
    return saga_list_json(c, &f, arg, e);
}

/* The sagas of order-6, once `want` is their first one's state (or after
 * 20 s). */
static json_t *
order6_sagas_when(struct fixture *f, const char *want)
{
    struct bb_error e;
    json_t *list = NULL;
    for (int64_t deadline = bb_mono_ms() + 20000; bb_mono_ms() < deadline; bb_sleep_ms(10)) {
        json_decref(list);
        list = NULL;
        assert_ok(store_run(f->db->store, STORE_READ, list_work, &list, &e), &e);
        json_t *first = json_array_get(json_object_get(list, "sagas"), 0);
        if (first && strcmp(json_string_value(json_object_get(first, "state")), want) == 0)
            break;
    }
    return list;
}

static int64_t
metric_or_zero(const char *series)
{
    int64_t n = test_metric(series);
    return n < 0 ? 0 : n;
}

static void
a_starting_event_starts_one_saga(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    /* Its first job runs here (setup_here), handed over with the saga as
     * the starter wrote it: nothing is read back. */
    int64_t carried = metric_or_zero("backbone_saga_job_runs_total{from=\"starter\"}");
    int64_t read = metric_or_zero("backbone_saga_job_runs_total{from=\"store\"}");
    /* Twice: the second event for the same aggregate finds its saga. */
    assert_ok(store_run(f->db->store, STORE_WRITE, event_work, NULL, &e), &e);
    assert_ok(store_run(f->db->store, STORE_WRITE, event_work, NULL, &e), &e);
    json_t *list = order6_sagas_when(f, "COMPLETED");
    json_t *sagas = json_object_get(list, "sagas");
    assert_int_equal(json_array_size(sagas), 1);
    json_t *data = json_object_get(json_array_get(sagas, 0), "data");
    assert_string_equal(json_string_value(json_object_get(data, "for")), "order-6");
    assert_string_equal(json_string_value(json_object_get(json_array_get(sagas, 0), "state")),
                        "COMPLETED");
    json_decref(list);
    assert_int_equal(metric_or_zero("backbone_saga_job_runs_total{from=\"starter\"}"), carried + 1);
    assert_int_equal(metric_or_zero("backbone_saga_job_runs_total{from=\"store\"}"), read);
}

static void
a_bad_starting_event_is_rejected_and_counted(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    pthread_mutex_lock(&rejected.mu);
    int before = rejected.n;
    pthread_mutex_unlock(&rejected.mu);
    int64_t counted = metric_or_zero("backbone_saga_bad_start_events_total{type=\"toy\"}");
    char bad_for[] = "order-7";
    assert_ok(store_run(f->db->store, STORE_WRITE, event_work, bad_for, &e), &e);
    /* Then a good one: the starter went on past the bad one. */
    assert_ok(store_run(f->db->store, STORE_WRITE, event_work, NULL, &e), &e);
    json_decref(order6_sagas_when(f, "COMPLETED"));
    pthread_mutex_lock(&rejected.mu);
    assert_int_equal(rejected.n, before + 1);
    assert_string_equal(rejected.last, "order-7");
    assert_non_null(strstr(rejected.why, "a bad toy event"));
    assert_string_equal(rejected.traceparent, BAD_EVENT_TRACE); /* the event's */
    pthread_mutex_unlock(&rejected.mu);
    for (int64_t deadline = bb_mono_ms() + 20000;
         metric_or_zero("backbone_saga_bad_start_events_total{type=\"toy\"}") == counted &&
         bb_mono_ms() < deadline;)
        bb_sleep_ms(10);
    assert_int_equal(metric_or_zero("backbone_saga_bad_start_events_total{type=\"toy\"}"),
                     counted + 1);
    json_t *list = NULL;
    assert_ok(store_run(f->db->store, STORE_READ, order7_list_work, &list, &e), &e);
    assert_int_equal(json_array_size(json_object_get(list, "sagas")), 0);
    json_decref(list);
}

/* Makes every mark of a handled event fail, as a broken disk or a lost
 * connection would at the end of the starter's transaction. */
static struct store_stmt REFUSE_FN = {
    .sql_pg = "CREATE FUNCTION refuse_handled() RETURNS trigger LANGUAGE plpgsql"
              " AS 'BEGIN RAISE EXCEPTION ''refused for the test''; END'",
    .sql_sqlite = "SELECT 1",
};
static struct store_stmt REFUSE_ON = {
    .sql_pg = "CREATE TRIGGER refuse_handled BEFORE UPDATE ON outbox_events"
              " FOR EACH ROW EXECUTE FUNCTION refuse_handled()",
    .sql_sqlite = "CREATE TRIGGER refuse_handled BEFORE UPDATE ON outbox_events"
                  " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
};
static struct store_stmt REFUSE_OFF = {
    .sql_pg = "DROP TRIGGER refuse_handled ON outbox_events",
    .sql_sqlite = "DROP TRIGGER refuse_handled",
};

static bool refuse = true;

/* Sets the refusal on (arg &refuse) or off (NULL). */
static enum err
refuse_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    bool on = arg != NULL;
    enum err rc = on ? store_exec(c, &REFUSE_FN, NULL, 0, NULL, e) : ERR_OK;
    return rc == ERR_OK ? store_exec(c, on ? &REFUSE_ON : &REFUSE_OFF, NULL, 0, NULL, e) : rc;
}

static void
a_start_that_rolls_back_leaves_nothing_behind(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    int64_t failures = metric_or_zero("backbone_saga_start_failures_total");
    int64_t started = metric_or_zero("backbone_sagas_started_total{type=\"toy\"}");
    int64_t carried = metric_or_zero("backbone_saga_job_runs_total{from=\"starter\"}");
    int64_t read = metric_or_zero("backbone_saga_job_runs_total{from=\"store\"}");
    assert_ok(store_run(f->db->store, STORE_WRITE, refuse_work, &refuse, &e), &e);
    assert_ok(store_run(f->db->store, STORE_WRITE, event_work, NULL, &e), &e);
    for (int64_t deadline = bb_mono_ms() + 20000;
         metric_or_zero("backbone_saga_start_failures_total") == failures &&
         bb_mono_ms() < deadline;
         bb_sleep_ms(10))
        ;
    assert_true(metric_or_zero("backbone_saga_start_failures_total") > failures);
    /* The starter's saga and job rolled back with the mark: nothing started,
     * counted or kept for a run. */
    json_t *list = NULL;
    assert_ok(store_run(f->db->store, STORE_READ, list_work, &list, &e), &e);
    assert_int_equal(json_array_size(json_object_get(list, "sagas")), 0);
    json_decref(list);
    assert_int_equal(metric_or_zero("backbone_sagas_started_total{type=\"toy\"}"), started);

    /* Mended, the event starts its saga once, carried to its first run. */
    assert_ok(store_run(f->db->store, STORE_WRITE, refuse_work, NULL, &e), &e);
    list = order6_sagas_when(f, "COMPLETED");
    json_t *sagas = json_object_get(list, "sagas");
    assert_int_equal(json_array_size(sagas), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(sagas, 0), "state")),
                        "COMPLETED");
    json_decref(list);
    assert_int_equal(metric_or_zero("backbone_sagas_started_total{type=\"toy\"}"), started + 1);
    assert_int_equal(metric_or_zero("backbone_saga_job_runs_total{from=\"starter\"}"), carried + 1);
    assert_int_equal(metric_or_zero("backbone_saga_job_runs_total{from=\"store\"}"), read);
}

struct prune_op {
    int64_t before_ms;
    int64_t limit;
    int64_t deleted;
};

static enum err
prune_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct prune_op *op = arg;
    return saga_prune_finished(c, op->before_ms, op->limit, &op->deleted, e);
}

static int64_t
pruned(struct fixture *f, int64_t before_ms, int64_t limit)
{
    struct prune_op op = {.before_ms = before_ms, .limit = limit};
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, prune_work, &op, &e), &e);
    return op.deleted;
}

static struct store_stmt TIMELINE_KEPT = {
    .sql = "SELECT count(*) FROM sagas WHERE id = $1 AND timeline <> ''"};

/* 1 while the saga and its timeline are kept, 0 once pruned. */
static int64_t
timeline_kept(struct fixture *f, const char *id)
{
    return count_of(f, &TIMELINE_KEPT, id);
}

struct load_op {
    const char *ids[4];
    struct saga_instance in[4];
    bool found[4];
};

static enum err
load_many_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct load_op *op = arg;
    struct saga_instance *in[4] = {&op->in[0], &op->in[1], &op->in[2], &op->in[3]};
    return saga__load_many(c, op->ids, 4, in, op->found, e);
}

/* What the jobs of many sagas read in one statement: each instance as
 * saga__load reads it, a missing one not found, one asked twice twice. */
static void
instances_are_read_many_at_once(void **state)
{
    struct fixture *f = *state;
    struct start_op a = {.correlation = "order-a"}, b = {.correlation = "order-b"};
    json_decref(await_state(f, started(f, &a), "COMPLETED"));
    TOY_SET(action[2], SAGA_STEP_FAIL);
    json_decref(await_state(f, started(f, &b), "FAILED"));
    struct load_op op = {.ids = {a.id, "01a00000-0000-7000-8000-000000000000", b.id, a.id}};
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_READ, load_many_work, &op, &e), &e);
    assert_true(op.found[0] && !op.found[1] && op.found[2] && op.found[3]);
    assert_string_equal(op.in[0].id, a.id);
    assert_string_equal(op.in[0].correlation_id, "order-a");
    assert_int_equal(op.in[0].state, SAGA_COMPLETED);
    assert_string_equal(op.in[3].id, a.id);
    assert_string_equal(op.in[2].id, b.id);
    assert_int_equal(op.in[2].state, SAGA_FAILED);
    assert_string_equal(op.in[2].reason, "step 3 said no");
    for (int i = 0; i < 4; i++)
        if (op.found[i])
            saga__instance_deinit(&op.in[i]);
}

static void
finished_sagas_are_deleted_after_the_retention(void **state)
{
    struct fixture *f = *state;
    struct start_op done = {.correlation = "order-done"};
    json_decref(await_state(f, started(f, &done), "COMPLETED"));
    TOY_SET(action[2], SAGA_STEP_FAIL);
    struct start_op failed = {.correlation = "order-failed"};
    json_decref(await_state(f, started(f, &failed), "FAILED"));
    TOY_SET(undo[1], SAGA_STEP_FAIL);
    struct start_op stuck = {.correlation = "order-stuck"};
    json_decref(await_state(f, started(f, &stuck), "STUCK"));
    assert_true(timeline_kept(f, done.id) && timeline_kept(f, failed.id));

    /* Nothing finished an hour ago. */
    assert_int_equal(pruned(f, bb_wall_ms() - 3600000, 100), 0);
    /* With everything past the retention: a batch at a time (COMPLETED
     * first), timelines with them; the STUCK one stays for a person. */
    int64_t later = bb_wall_ms() + 1000;
    assert_int_equal(pruned(f, later, 1), 1);
    assert_int_equal(timeline_kept(f, done.id), 0);
    assert_true(timeline_kept(f, failed.id));
    assert_int_equal(pruned(f, later, 100), 1);
    assert_int_equal(timeline_kept(f, failed.id), 0);
    assert_int_equal(pruned(f, later, 100), 0);
    struct get_op op = {.id = done.id};
    struct bb_error e;
    assert_int_equal(store_run(f->db->store, STORE_READ, get_work, &op, &e), ERR_NOT_FOUND);
    op.id = stuck.id;
    assert_ok(store_run(f->db->store, STORE_READ, get_work, &op, &e), &e);
    assert_string_equal(json_string_value(json_object_get(op.saga, "state")), "STUCK");
    json_decref(op.saga);
    assert_true(timeline_kept(f, stuck.id));
}

static int64_t
units_waiting(void)
{
    return test_metric("backbone_saga_units_waiting");
}

struct many_op {
    char ids[12][SAGA_ID_LEN + 1];
};

/* The trace saga i of the batch test starts with; NULL for saga 4. */
static const char *
trace_of(int i, char buf[56])
{
    if (i == 4)
        return NULL;
    snprintf(buf, 56, "00-%032x-%016x-01", (unsigned)(0x7a00 + i), (unsigned)(0xb0 + i));
    return buf;
}

/* Twelve toyb sagas, each (but saga 4) with a trace of its own, as
 * starting events would give them. */
static enum err
start_many_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct many_op *op = arg;
    char corrs[12][32], bufs[12][56];
    const char *corr[12], *traces[12];
    json_t *data[12];
    bool created[12];
    int64_t jobs[12];
    for (int i = 0; i < 12; i++) {
        snprintf(corrs[i], sizeof corrs[i], "b-%d", i);
        corr[i] = corrs[i];
        traces[i] = trace_of(i, bufs[i]);
        data[i] = json_pack("{s:b}", "fail", i == 9);
    }
    enum err rc = saga__start_many(c, &TOYB, corr, (const json_t *const *)data, traces, 12,
                                   bb_wall_ms(), NULL, op->ids, created, jobs, e);
    for (int i = 0; i < 12; i++)
        json_decref(data[i]);
    return rc;
}

enum batch_trouble { BATCH_FINE, BATCH_BREAKS, BATCH_ANSWER_LOST };

/*
 * Units that queue while four batches are in flight run together as one:
 * each member's writes once, its timeline whole, and a member the batch
 * form fails compensates alone while the others complete. When the batch
 * BREAKS at b2 (fails as a whole), it rolls back, and each member runs its
 * unit alone, to the same end. When its commit's ANSWER is LOST, each
 * member's unit alone finds its saga moved on, reads it, and goes on from
 * what the batch committed (its job ended with it, or compensating).
 */
static void
twelve_sagas_with_a_batch_of_eight(struct fixture *f, enum batch_trouble trouble)
{
    int64_t fallbacks = test_metric("backbone_saga_unit_batch_fallbacks_total");
    int64_t stale = stale_completions();
    int64_t reloaded = reloads("committed");
    pthread_mutex_lock(&gate.mu);
    gate.open = false;
    gate.held = gate.batches = 0;
    gate.max_batch = 0;
    gate.break_b2 = trouble == BATCH_BREAKS;
    gate.lose_b2 = trouble == BATCH_ANSWER_LOST;
    pthread_mutex_unlock(&gate.mu);
    struct many_op op;
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, start_many_work, &op, &e), &e);
    /* The first four units lead batches of one and wait at the gate (on
     * SQLite one of them; the others wait for the writer); the other
     * eight queue behind them. */
    static struct store_stmt running = {
        .sql = "SELECT count(*) FROM jobs WHERE queue = 'sagas' AND state = $1"};
    int64_t deadline = bb_mono_ms() + 20000;
    while (units_waiting() != 8 && bb_mono_ms() <= deadline)
        bb_sleep_ms(5);
    int64_t waiting = units_waiting();
    /* Open the gate either way: a failure with units held there would
     * leave the teardown waiting for them. */
    pthread_mutex_lock(&gate.mu);
    int held = gate.held;
    gate.open = true;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
    if (waiting != 8)
        fail_msg("%lld units waiting, not 8 (sagas jobs running %lld, pending %lld; %d at the "
                 "gate)",
                 (long long)waiting, (long long)count_of(f, &running, "running"),
                 (long long)count_of(f, &running, "pending"), held);
    for (int i = 0; i < 12; i++) {
        json_t *saga = await_state(f, op.ids[i], i == 9 ? "FAILED" : "COMPLETED");
        if (i == 9)
            timeline_is(saga, "p0:action:ok b1:action:ok b2:action:failed b1:compensation:ok");
        else
            timeline_is(saga, "p0:action:ok b1:action:ok b2:action:ok");
        json_decref(saga);
        assert_int_equal(writes_of(f, op.ids[i], "p0:record"), 1);
        assert_int_equal(writes_of(f, op.ids[i], i == 9 ? "end:FAILED" : "end:COMPLETED"), 1);
        /* Its end got its own trace, whatever batch it ended in. */
        char buf[56], trace[80];
        const char *tp = trace_of(i, buf);
        snprintf(trace, sizeof trace, "trace:%s", tp ? tp : "none");
        assert_int_equal(writes_of(f, op.ids[i], trace), 1);
        assert_int_equal(writes_of(f, op.ids[i], "b1"), 1);
        assert_int_equal(writes_of(f, op.ids[i], "b2"), i == 9 ? 0 : 1);
        assert_int_equal(writes_of(f, op.ids[i], "b1:undo"), i == 9 ? 1 : 0);
    }
    pthread_mutex_lock(&gate.mu);
    assert_int_equal(gate.max_batch, 8); /* the eight that waited, in one batch */
    pthread_mutex_lock(&toy.mu);
    assert_int_equal(toy.max_record_call, 8); /* their p0 records in one call */
    /* Those that completed in the batch (seven, or eight when the one that
     * fails at b2 was among the four that went first) ended in one call;
     * alone, one each. */
    if (trouble == BATCH_BREAKS)
        assert_int_equal(toy.max_end_call, 1);
    else
        assert_in_range(toy.max_end_call, 7, 8);
    assert_int_equal(toy.thread_traced_ends, 0); /* not the leader's, nor a member's */
    pthread_mutex_unlock(&toy.mu);
    assert_int_equal(gate.batches, 2); /* its b1 and its b2 */
    assert_false(gate.break_b2);
    assert_false(gate.lose_b2);
    pthread_mutex_unlock(&gate.mu);
    assert_int_equal(test_metric("backbone_saga_unit_batch_fallbacks_total"),
                     fallbacks + (trouble != BATCH_FINE ? 1 : 0));
    /* Each member of the batch read its saga back (and so did any unit
     * that shared the batch's transaction in the store). */
    if (trouble == BATCH_ANSWER_LOST)
        assert_in_range(reloads("committed") - reloaded, 8, 12);
    else
        assert_int_equal(reloads("committed"), reloaded);
    /* The batch ended its members' jobs with them, once, and none was
     * retried. */
    assert_int_equal(count_of(f, &SAGA_JOBS_NOT_COMPLETED, NULL), 0);
    assert_int_equal(count_of(f, &SAGA_JOBS_RETRIED, NULL), 0);
    assert_int_equal(stale_completions(), stale);
}

static void
units_waiting_together_run_as_one_batch(void **state)
{
    twelve_sagas_with_a_batch_of_eight(*state, BATCH_FINE);
}

static void
a_batch_that_fails_whole_runs_each_unit_alone(void **state)
{
    twelve_sagas_with_a_batch_of_eight(*state, BATCH_BREAKS);
}

static void
a_batch_commit_whose_answer_is_lost_goes_on_from_it(void **state)
{
    twelve_sagas_with_a_batch_of_eight(*state, BATCH_ANSWER_LOST);
}

/* Before version 4 a timeline was rows of saga_steps: the migration moves
 * each into its saga's row, in the order written, and drops the table. */
static struct store_stmt LEGACY_SAGA = {
    .sql = "INSERT INTO sagas (id, type, correlation_id, state, step, version, data,"
           " created_at_ms, updated_at_ms) VALUES ($1, 'old', $1, 'COMPLETED', 1, 3, '{}', 1, 1)"};
static struct store_stmt LEGACY_DOWN = {.sql = "ALTER TABLE sagas DROP COLUMN timeline"};
static struct store_stmt LEGACY_UNTRACE = {.sql = "ALTER TABLE sagas DROP COLUMN traceparent"};
static struct store_stmt LEGACY_UNINDEX = {.sql_sqlite = "SELECT 1",
                                           .sql_pg = "DROP INDEX sagas_in_flight"};
static struct store_stmt LEGACY_FORGET = {
    .sql = "DELETE FROM schema_migrations WHERE module = 'sagas' AND version >= 4"};
static struct store_stmt LEGACY_TABLE = {
    .sql_sqlite = "CREATE TABLE saga_steps (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                  " saga_id TEXT NOT NULL, step TEXT NOT NULL, phase TEXT NOT NULL,"
                  " outcome TEXT NOT NULL, attempt INTEGER NOT NULL, error TEXT,"
                  " started_at_ms INTEGER NOT NULL, ended_at_ms INTEGER NOT NULL)",
    .sql_pg = "CREATE TABLE saga_steps (id BIGINT GENERATED ALWAYS AS IDENTITY,"
              " saga_id TEXT NOT NULL, step TEXT NOT NULL, phase TEXT NOT NULL,"
              " outcome TEXT NOT NULL, attempt INTEGER NOT NULL, error TEXT,"
              " started_at_ms BIGINT NOT NULL, ended_at_ms BIGINT NOT NULL,"
              " PRIMARY KEY (saga_id, id))"};
static struct store_stmt LEGACY_STEP = {
    .sql = "INSERT INTO saga_steps (saga_id, step, phase, outcome, attempt, error,"
           " started_at_ms, ended_at_ms) VALUES ($1, $2, 'action', $3, $4, $5, $6, $7)"};
static struct store_stmt LEGACY_GONE = {.sql = "SELECT count(*) FROM saga_steps"};

static enum err
legacy_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    const struct store_param a[] = {sp_text("saga-a")}, b[] = {sp_text("saga-b")};
    enum err rc = store_exec(c, &LEGACY_SAGA, a, 1, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_SAGA, b, 1, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_DOWN, NULL, 0, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_UNTRACE, NULL, 0, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_UNINDEX, NULL, 0, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_FORGET, NULL, 0, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_TABLE, NULL, 0, NULL, e);
    /* Interleaved across the two sagas; times that do not follow the order. */
    static const struct {
        const char *saga, *step, *outcome, *error;
        int64_t attempt, started, ended;
    } rows[] = {
        {"saga-a", "s1", "ok", NULL, 1, 5000, 5010},
        {"saga-b", "s1", "ok", NULL, 1, 100, 120},
        {"saga-a", "s2", "retry", "a \"quoted\"\nerror", 1, 4000, 4030},
        {"saga-a", "s2", "ok", NULL, 2, 6000, 6001},
        {"saga-a", "s3", "ok", NULL, 1, 7000, 7000},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(rows) && rc == ERR_OK; i++) {
        const struct store_param p[] = {sp_text(rows[i].saga),
                                        sp_text(rows[i].step),
                                        sp_text(rows[i].outcome),
                                        sp_int(rows[i].attempt),
                                        rows[i].error ? sp_text(rows[i].error) : sp_null(),
                                        sp_int(rows[i].started),
                                        sp_int(rows[i].ended)};
        rc = store_exec(c, &LEGACY_STEP, p, BB_ARRAY_LEN(p), NULL, e);
    }
    return rc;
}

static void
timelines_written_as_rows_move_into_their_sagas(void **state)
{
    struct test_db *db = *state;
    struct bb_error e;
    assert_ok(store_run(db->store, STORE_WRITE, legacy_work, NULL, &e), &e);
    struct store_conn *c;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    size_t n;
    const struct store_migration *m = saga_migrations(&n);
    int applied = 0;
    assert_ok(store_migrate(c, "sagas", m, n, &applied, &e), &e);
    assert_int_equal(applied, (int)n - 3);

    struct get_op op = {.id = "saga-a"};
    assert_ok(store_run(db->store, STORE_READ, get_work, &op, &e), &e);
    timeline_is(op.saga, "s1:action:ok s2:action:retry s2:action:ok s3:action:ok");
    const json_t *tl = json_object_get(op.saga, "timeline");
    const json_t *retry = json_array_get(tl, 1);
    assert_string_equal(json_string_value(json_object_get(retry, "error")), "a \"quoted\"\nerror");
    assert_int_equal(json_integer_value(json_object_get(retry, "attempt")), 1);
    assert_int_equal(json_integer_value(json_object_get(retry, "duration_ms")), 30);
    assert_true(json_is_null(json_object_get(json_array_get(tl, 0), "error")));
    json_decref(op.saga);
    op = (struct get_op){.id = "saga-b"};
    assert_ok(store_run(db->store, STORE_READ, get_work, &op, &e), &e);
    timeline_is(op.saga, "s1:action:ok");
    json_decref(op.saga);

    assert_int_equal(store_exec(c, &LEGACY_GONE, NULL, 0, NULL, &e), ERR_STORE);
    store_conn_close(c);
}

/* A line of a timeline that is not one this code wrote (a hand-edited row,
 * a cut-off write) is left out of GET /sagas/{id}; the others are shown. */
static void
a_timeline_line_that_cannot_be_read_is_left_out(void **state)
{
    struct fixture *f = *state;
    struct start_op op = {.correlation = "order-garbled"};
    json_decref(await_state(f, started(f, &op), "COMPLETED"));
    static struct store_stmt garble = {
        .sql = "UPDATE sagas SET timeline = 'not json\n' || timeline || '{\"step\":\"cut\", '"
               " WHERE id = $1",
    };
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(f->db->store, &c, &e), &e);
    const struct store_param p[] = {sp_text(op.id)};
    int64_t changed = 0;
    assert_ok(store_exec(c, &garble, p, 1, &changed, &e), &e);
    store_conn_close(c);
    assert_int_equal(changed, 1);
    struct get_op get = {.id = op.id};
    assert_ok(store_run(f->db->store, STORE_READ, get_work, &get, &e), &e);
    timeline_is(get.saga, "s1:action:ok s2:action:ok s3:action:ok");
    json_decref(get.saga);
}

/* The sagas queue's first retry waits `base_ms`. */
static enum err
backoff_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct job_queue q;
    enum err rc = job_queue_get(c, "sagas", &q, e);
    q.backoff.base_ms = *(const int64_t *)arg;
    q.backoff.cap_ms = q.backoff.base_ms * 4;
    return rc == ERR_OK ? job_queue_put(c, &q, bb_wall_ms(), e) : rc;
}

static void
set_backoff_ms(struct fixture *f, int64_t base_ms)
{
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, backoff_work, &base_ms, &e), &e);
}

static enum err
cancel_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    return job_cancel(c, *(const int64_t *)arg, bb_wall_ms(), e);
}

static enum err
metrics_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    return saga_metrics_refresh(c, e);
}

static int64_t
stuck_gauge(struct fixture *f, const char *type)
{
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_READ, metrics_work, NULL, &e), &e);
    char series[96];
    snprintf(series, sizeof series, "backbone_sagas_stuck{type=\"%s\"}", type);
    return metric_or_zero(series);
}

#define STUCK_TOTAL "backbone_sagas_stuck_total{type=\"toy\"}"

/* Until `series` is `want` (20 s at most): a unit's counts are added just
 * after its commit, which another connection may see first. */
static void
await_metric(const char *series, int64_t want)
{
    for (int64_t deadline = bb_mono_ms() + 20000; metric_or_zero(series) != want; bb_sleep_ms(10))
        if (bb_mono_ms() > deadline)
            fail_msg("%s is %lld, not %lld", series, (long long)metric_or_zero(series),
                     (long long)want);
}

/* The saga once it waits in `state` for its step's retry (a job due an
 * hour from now). */
static json_t *
await_waiting(struct fixture *f, const char *id, const char *state)
{
    struct get_op op = {.id = id};
    struct bb_error e;
    for (int64_t deadline = bb_mono_ms() + 20000;; bb_sleep_ms(10)) {
        assert_ok(store_run(f->db->store, STORE_READ, get_work, &op, &e), &e);
        const char *now = json_string_value(json_object_get(op.saga, "state"));
        if (strcmp(now, state) == 0 && json_integer_value(json_object_get(op.saga, "retries")) > 0)
            return op.saga;
        if (bb_mono_ms() > deadline)
            fail_msg("saga %s is %s, not waiting in %s", id, now, state);
    }
}

/*
 * A saga whose job is cancelled while it waits in `state` for a retry:
 * the sweep makes it STUCK (listed, counted, its error saying why), and
 * the retry by hand drives it again from where it stopped, to `end` with
 * `timeline`.
 */
static void
a_cancelled_job_leaves_its_saga_stuck(struct fixture *f, const char *correlation, const char *state,
                                      const char *end, const char *timeline)
{
    struct start_op op = {.correlation = correlation};
    json_t *saga = await_waiting(f, started(f, &op), state);
    int64_t job = json_integer_value(json_object_get(saga, "job_id"));
    json_decref(saga);
    assert_true(job > 0);
    int64_t stuck_before = metric_or_zero(STUCK_TOTAL);
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, cancel_work, &job, &e), &e);
    saga = await_state(f, op.id, "STUCK");
    char want[128];
    snprintf(want, sizeof want, "stranded: its job %lld is cancelled", (long long)job);
    const char *error = json_string_value(json_object_get(saga, "error"));
    assert_non_null(error);
    assert_non_null(strstr(error, want));
    assert_true(json_is_null(json_object_get(saga, "job_id")));
    json_decref(saga);
    assert_int_equal(stuck_gauge(f, "toy"), 1);
    await_metric(STUCK_TOTAL, stuck_before + 1);
    /* A person retries it once the cause is fixed: it goes on as it was. */
    set_backoff_ms(f, 5);
    TOY_SET(retries_left[1], 0);
    TOY_SET(undo[1], SAGA_STEP_OK);
    struct retried_op r = {.id = op.id};
    assert_ok(store_run(f->db->store, STORE_WRITE, retried_work, &r, &e), &e);
    assert_string_equal(r.state, state);
    saga = await_state(f, op.id, end);
    timeline_is(saga, timeline);
    json_decref(saga);
    assert_int_equal(stuck_gauge(f, "toy"), 0);
}

static struct store_stmt RETIRED_STUCK = {
    .sql = "INSERT INTO sagas (id, type, correlation_id, state, step, version, data,"
           " created_at_ms, updated_at_ms) VALUES ($1, $1, $1, 'STUCK', 1, 3, '{}', 1, 1)"};

static enum err
retired_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    enum err rc = ERR_OK;
    static const char *const types[] = {"retired-a", "retired-b"};
    for (size_t i = 0; i < BB_ARRAY_LEN(types) && rc == ERR_OK; i++) {
        const struct store_param p[] = {sp_text(types[i])};
        rc = store_exec(c, &RETIRED_STUCK, p, 1, NULL, e);
    }
    return rc;
}

/* STUCK sagas of types this binary does not know (retired since) are
 * counted together, under their own label. */
static void
stuck_sagas_of_unregistered_types_are_counted_together(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(stuck_gauge(f, SAGA_TYPE_UNREGISTERED), 0);
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, retired_work, NULL, &e), &e);
    assert_int_equal(stuck_gauge(f, SAGA_TYPE_UNREGISTERED), 2);
    assert_int_equal(stuck_gauge(f, "toy"), 0);
    assert_int_equal(metric_or_zero("backbone_sagas_stuck{type=\"retired-a\"}"), 0);
}

static void
a_saga_whose_job_is_cancelled_running_is_stuck_then_runs_on(void **state)
{
    struct fixture *f = *state;
    set_backoff_ms(f, 3600000);
    TOY_SET(retries_left[1], 1);
    a_cancelled_job_leaves_its_saga_stuck(f, "order-cancelled", "RUNNING", "COMPLETED",
                                          "s1:action:ok s2:action:retry s2:action:stuck "
                                          "s2:action:retried s2:action:ok s3:action:ok");
}

static void
a_saga_whose_job_is_cancelled_compensating_is_stuck_then_compensates(void **state)
{
    struct fixture *f = *state;
    set_backoff_ms(f, 3600000);
    TOY_SET(action[2], SAGA_STEP_FAIL);
    TOY_SET(undo[1], SAGA_STEP_RETRY);
    a_cancelled_job_leaves_its_saga_stuck(
        f, "order-cancelled-undo", "COMPENSATING", "FAILED",
        "s1:action:ok s2:action:ok s3:action:failed s2:compensation:retry s2:compensation:stuck "
        "s2:compensation:retried s2:compensation:ok s1:compensation:ok");
}

/* A saga of a type no process knows: its job fails every attempt and goes
 * to the dead letters; the sweep makes the saga STUCK. */
static const struct saga_def GHOST = {.type = "ghost", .steps = TOY_STEPS, .n_steps = 3};

static struct store_stmt JOB_IS_DEAD = {
    .sql = "SELECT count(*) FROM jobs WHERE queue = 'sagas' AND state = 'dead'"
           " AND payload LIKE '%' || $1 || '%'",
};

static void
a_saga_whose_job_dies_is_stuck(void **state)
{
    struct fixture *f = *state;
    struct start_op op = {.def = &GHOST, .correlation = "order-ghost"};
    json_t *saga = await_state(f, started(f, &op), "STUCK");
    assert_int_equal(count_of(f, &JOB_IS_DEAD, op.id), 1);
    const char *error = json_string_value(json_object_get(saga, "error"));
    assert_non_null(error);
    assert_non_null(strstr(error, " is dead"));
    json_decref(saga);
    /* The retry runs it on (no reason: it never failed), with a new job. */
    struct retried_op r = {.id = op.id};
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, retried_work, &r, &e), &e);
    assert_string_equal(r.state, "RUNNING");
}

struct sweep_op {
    int64_t stuck;
};

/* One sweep over every in-flight saga, as another process's would be. */
static enum err
sweep_all_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct sweep_op *op = arg;
    char after[SAGA_ID_LEN + 1] = "", last[SAGA_ID_LEN + 1];
    enum err rc;
    do {
        int64_t n = 0;
        rc = saga_sweep_stranded(c, after, 7, bb_wall_ms(), last, &n, e);
        op->stuck += n;
        bb_strlcpy(after, last, sizeof after);
    } while (rc == ERR_OK && last[0]);
    return rc;
}

static struct store_stmt SAGAS_IN_FLIGHT = {
    .sql = "SELECT count(*) FROM sagas WHERE state IN ('RUNNING', 'COMPENSATING')",
};
static struct store_stmt SAGAS_STUCK = {.sql = "SELECT count(*) FROM sagas WHERE state = 'STUCK'"};

/* Sweeps again and again while sagas move from step to step (retries hand
 * over to new jobs, compensations follow failures): none is ever taken for
 * stranded, since each move ends a step and hands over in one transaction. */
static void
a_sweep_never_strands_a_saga_between_steps(void **state)
{
    struct fixture *f = *state;
    TOY_SET(retries_left[1], 30); /* some retry, some give up and compensate */
    enum { N = 40 };
    for (int i = 0; i < N; i++) {
        char correlation[32];
        snprintf(correlation, sizeof correlation, "order-busy-%d", i);
        struct start_op op = {.correlation = correlation};
        started(f, &op);
    }
    struct sweep_op op = {0};
    struct bb_error e;
    int rounds = 0;
    for (int64_t deadline = bb_mono_ms() + 60000; count_of(f, &SAGAS_IN_FLIGHT, NULL) > 0;
         rounds++) {
        assert_ok(store_run(f->db->store, STORE_WRITE, sweep_all_work, &op, &e), &e);
        assert_int_equal(op.stuck, 0);
        if (bb_mono_ms() > deadline)
            fail_msg("sagas still in flight after 60 s");
    }
    assert_true(rounds > 0);
    assert_int_equal(count_of(f, &SAGAS_STUCK, NULL), 0);
}

struct in_flight_op {
    struct saga_in_flight *f;
    size_t n;
    int64_t stuck;
};

static enum err
in_flight_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct in_flight_op *op = arg;
    free(op->f);
    return saga__in_flight(c, "", 10, &op->f, &op->n, e);
}

static enum err
strand_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct in_flight_op *op = arg;
    return saga__strand(c, op->f, op->n, bb_wall_ms(), &op->stuck, e);
}

static enum err
run_now_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    return job_run_now(c, *(const int64_t *)arg, bb_wall_ms(), e);
}

/*
 * What a sweep in another process sees when a step ends while it looks:
 * the saga as it waited for job J (read first), then J finished (read
 * second), since the step's end handed over to a new job in between. The
 * saga is not stranded: its version moved on, and the sweep leaves it.
 */
static void
a_sweep_that_read_a_saga_before_its_step_ended_leaves_it_alone(void **state)
{
    struct fixture *f = *state;
    set_backoff_ms(f, 3600000);
    TOY_SET(retries_left[1], 2);
    struct start_op start = {.correlation = "order-moving"};
    json_t *saga = await_waiting(f, started(f, &start), "RUNNING");
    int64_t job = json_integer_value(json_object_get(saga, "job_id"));
    json_decref(saga);
    struct in_flight_op op = {0};
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_READ, in_flight_work, &op, &e), &e);
    assert_int_equal(op.n, 1);
    assert_int_equal(op.f[0].job_id, job);
    /* The step runs now and asks for its second retry: a new job waits. */
    assert_ok(store_run(f->db->store, STORE_WRITE, run_now_work, &job, &e), &e);
    struct get_op get = {.id = start.id};
    for (int64_t deadline = bb_mono_ms() + 20000;; bb_sleep_ms(10)) {
        assert_ok(store_run(f->db->store, STORE_READ, get_work, &get, &e), &e);
        if (json_integer_value(json_object_get(get.saga, "retries")) == 2)
            break;
        if (bb_mono_ms() > deadline)
            fail_msg("the step did not run again");
    }
    assert_int_not_equal(json_integer_value(json_object_get(get.saga, "job_id")), job);
    json_decref(get.saga);
    assert_ok(store_run(f->db->store, STORE_WRITE, strand_work, &op, &e), &e);
    assert_int_equal(op.stuck, 0);
    saga = await_waiting(f, start.id, "RUNNING");
    json_decref(saga);
    /* The same sweep, read afresh, finds nothing stranded either. */
    assert_ok(store_run(f->db->store, STORE_READ, in_flight_work, &op, &e), &e);
    assert_ok(store_run(f->db->store, STORE_WRITE, strand_work, &op, &e), &e);
    assert_int_equal(op.stuck, 0);
    free(op.f);
}

/* How each way to the end counts: every saga ends once, in the outcome
 * that names how, and a STUCK saga counts as stuck when it sticks and as
 * its end when a retry takes it there. */
static void
each_saga_ends_once_in_the_count_of_its_outcome(void **state)
{
    struct fixture *f = *state;
    static const char *const SERIES[] = {
        "backbone_sagas_ended_total{type=\"toy\",outcome=\"completed\"}",
        "backbone_sagas_ended_total{type=\"toy\",outcome=\"compensated\"}",
        "backbone_sagas_ended_total{type=\"toy\",outcome=\"failed\"}",
        STUCK_TOTAL,
    };
    enum { N_SERIES = BB_ARRAY_LEN(SERIES) };
    static const struct {
        const char *correlation;
        int fail_action, fail_undo; /* 1-based step that fails; 0: none */
        const char *end;
        int64_t counts[N_SERIES]; /* what each series gains */
    } cases[] = {
        {"order-m-ok", 0, 0, "COMPLETED", {1, 0, 0, 0}},
        /* s1 fails: nothing before it to compensate. */
        {"order-m-first", 1, 0, "FAILED", {0, 0, 1, 0}},
        {"order-m-last", 3, 0, "FAILED", {0, 1, 0, 0}},
        /* s2's compensation fails: STUCK, then retried to FAILED. */
        {"order-m-stuck", 3, 2, "STUCK", {0, 0, 0, 1}},
    };
    int64_t before[N_SERIES];
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        for (size_t s = 0; s < N_SERIES; s++)
            before[s] = metric_or_zero(SERIES[s]);
        for (int k = 0; k < 3; k++) {
            TOY_SET(action[k], k + 1 == cases[i].fail_action ? SAGA_STEP_FAIL : SAGA_STEP_OK);
            TOY_SET(undo[k], k + 1 == cases[i].fail_undo ? SAGA_STEP_FAIL : SAGA_STEP_OK);
        }
        struct start_op op = {.correlation = cases[i].correlation};
        json_decref(await_state(f, started(f, &op), cases[i].end));
        for (size_t s = 0; s < N_SERIES; s++)
            if (cases[i].counts[s] > 0)
                await_metric(SERIES[s], before[s] + cases[i].counts[s]);
        for (size_t s = 0; s < N_SERIES; s++)
            assert_int_equal(metric_or_zero(SERIES[s]), before[s] + cases[i].counts[s]);
        if (strcmp(cases[i].end, "STUCK") != 0)
            continue;
        TOY_SET(undo[cases[i].fail_undo - 1], SAGA_STEP_OK);
        struct bb_error e;
        assert_ok(store_run(f->db->store, STORE_WRITE, retry_work, (void *)op.id, &e), &e);
        json_decref(await_state(f, op.id, "FAILED"));
        /* Ended once, compensated; stuck once. */
        await_metric(SERIES[1], before[1] + 1);
        for (size_t s = 0; s < N_SERIES; s++)
            assert_int_equal(metric_or_zero(SERIES[s]), before[s] + (s == 1 || s == 3));
    }
}

#define SAGA_TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

static const struct CMUnitTest tests[] = {
    SAGA_TEST(steps_run_in_order_and_complete),
    SAGA_TEST(a_step_shorter_than_a_millisecond_is_timed),
    SAGA_TEST(an_outside_result_that_cannot_be_written_runs_its_step_again),
    SAGA_TEST(a_unit_the_store_fails_commits_the_same_results_again),
    SAGA_TEST(a_unit_the_store_keeps_failing_is_left_to_its_job),
    SAGA_TEST(a_unit_whose_commit_answer_is_lost_goes_on_from_what_it_committed),
    SAGA_TEST(a_run_whose_first_read_fails_reads_it_again),
    SAGA_TEST(an_at_once_step_runs_before_the_step_before_is_recorded),
    SAGA_TEST(an_at_once_step_follows_only_a_success),
    SAGA_TEST(records_of_steps_run_at_once_commit_together),
    SAGA_TEST(a_permanent_failure_compensates_in_reverse),
    SAGA_TEST(retries_follow_the_queue_then_give_up),
    SAGA_TEST(a_failing_compensation_is_stuck_until_retried),
    SAGA_TEST(each_saga_ends_once_in_the_count_of_its_outcome),
    SAGA_TEST(a_saga_whose_job_is_cancelled_running_is_stuck_then_runs_on),
    SAGA_TEST(stuck_sagas_of_unregistered_types_are_counted_together),
    SAGA_TEST(a_saga_whose_job_is_cancelled_compensating_is_stuck_then_compensates),
    SAGA_TEST(a_saga_whose_job_dies_is_stuck),
    SAGA_TEST(a_sweep_that_read_a_saga_before_its_step_ended_leaves_it_alone),
    SAGA_TEST(a_sweep_never_strands_a_saga_between_steps),
    cmocka_unit_test_setup_teardown(a_starting_event_starts_one_saga, setup_here, teardown),
    cmocka_unit_test_setup_teardown(a_bad_starting_event_is_rejected_and_counted, setup_here,
                                    teardown),
    cmocka_unit_test_setup_teardown(a_start_that_rolls_back_leaves_nothing_behind, setup_here,
                                    teardown),
    SAGA_TEST(two_jobs_for_one_step_move_the_saga_once),
    SAGA_TEST(finished_sagas_are_deleted_after_the_retention),
    SAGA_TEST(a_timeline_line_that_cannot_be_read_is_left_out),
    cmocka_unit_test_setup_teardown(instances_are_read_many_at_once, setup, teardown),
    cmocka_unit_test_setup_teardown(units_waiting_together_run_as_one_batch, setup_wide, teardown),
    cmocka_unit_test_setup_teardown(a_batch_that_fails_whole_runs_each_unit_alone, setup_wide,
                                    teardown),
    cmocka_unit_test_setup_teardown(a_batch_commit_whose_answer_is_lost_goes_on_from_it, setup_wide,
                                    teardown),
    cmocka_unit_test_setup_teardown(timelines_written_as_rows_move_into_their_sagas, test_db_setup,
                                    test_db_teardown),
};

TEST_MAIN(tests, true)
