/*
 * saga_engine.c: the "saga" job handler that runs one step and moves the
 * instance on, the starter thread that turns starting events into
 * instances, the announcer that wakes starters, metrics and the HTTP API.
 */
#include "saga/saga_int.h"

#include "metrics/metrics.h"
#include "outbox/outbox.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum {
    DEFS_MAX = 8,
    START_BATCH = 100,
    PRUNE_BATCH = 1000,
    PRUNE_BATCHES_MAX = 20,
    SWEEP_PAGE = 500,       /* in-flight sagas looked at per transaction */
    SWEEP_PAGES_MAX = 20,   /* per round; the next round goes on from there */
    UNIT_LEADERS_MAX = 4,   /* batched units in flight at once */
    UNIT_WAITING_MAX = 512, /* members waiting for a leader; more run alone */
};

/* Definitions are added at start-up, before any thread reads them, and
 * forgotten with their engine (one engine at a time in a process). */
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
    .help = "Saga instances that ended, each once, by type and outcome (completed; "
            "compensated: FAILED after its compensations; failed: FAILED with nothing to "
            "compensate). STUCK is no end: backbone_sagas_stuck_total.",
    .type = METRICS_COUNTER,
    .labels = {"type", "outcome"},
};
static struct metrics_def M_STUCK_TOTAL = {
    .name = "backbone_sagas_stuck_total",
    .help = "Times saga instances became STUCK, by type (a compensation kept failing, or no job "
            "drove it any more); a saga retried by hand that sticks again counts again.",
    .type = METRICS_COUNTER,
    .labels = {"type"},
};
static struct metrics_def M_STUCK = {
    .name = "backbone_sagas_stuck",
    .help = "Saga instances STUCK now, waiting for a person (POST /sagas/{id}/retry).",
    .type = METRICS_GAUGE,
    .labels = {"type"},
};
static struct metrics_def M_START_FAILED = {
    .name = "backbone_saga_start_failures_total",
    .help = "Rounds of the starter that failed and rolled back (their events are claimed again).",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_BAD_START = {
    .name = "backbone_saga_bad_start_events_total",
    .help = "Starting events nothing could start from (not the data a saga of the type needs), "
            "by type; each was ended by its type's reject (a checkout: FAILED) and logged.",
    .type = METRICS_COUNTER,
    .labels = {"type"},
};
static struct metrics_def M_PRUNED = {
    .name = "backbone_sagas_pruned_total",
    .help = "Finished saga instances deleted after the retention period (--saga-retention).",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_JOB_RUNS = {
    .name = "backbone_saga_job_runs_total",
    .help = "Runs of saga jobs by where they found their instance: read from the store, or "
            "carried from the starter that had just written it (nothing read).",
    .type = METRICS_COUNTER,
    .labels = {"from"},
};
static const double UNIT_BATCH_BUCKETS[] = {1, 2, 4, 8, 16, 32, 64};
static struct metrics_def M_UNIT_BATCH = {
    .name = "backbone_saga_unit_batch_size",
    .help = "Saga instances whose units ran together in one transaction (--saga-batch).",
    .type = METRICS_HISTOGRAM,
    .buckets = UNIT_BATCH_BUCKETS,
    .n_buckets = BB_ARRAY_LEN(UNIT_BATCH_BUCKETS),
};
static struct metrics_def M_UNITS_WAITING = {
    .name = "backbone_saga_units_waiting",
    .help = "Saga units waiting for a batch to carry them (all four batches in flight).",
    .type = METRICS_GAUGE,
};
static struct metrics_def M_UNIT_ALONE = {
    .name = "backbone_saga_unit_batch_fallbacks_total",
    .help = "Batched saga units that failed as a whole; each member then ran alone.",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_UNIT_RELOADS = {
    .name = "backbone_saga_unit_reloads_total",
    .help = "Saga units that failed in the store or found their instance moved, whose run read"
            " the instance again and found them committed (it goes on from there, or ends with"
            " it) or nothing committed (the same unit runs again).",
    .type = METRICS_COUNTER,
    .labels = {"found"},
};
static struct metrics_def M_STEP = {
    .name = "backbone_saga_step_duration_seconds",
    .help = "Time one run of a saga step took, by type, step and phase (a step run for "
            "several sagas at once in a batch: the batch's time, for each of them).",
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
    metrics_register(&M_STUCK_TOTAL);
    metrics_register(&M_STEP);
    metrics_register(&M_PRUNED);
    metrics_register(&M_JOB_RUNS);
    metrics_register(&M_START_FAILED);
    metrics_register(&M_BAD_START);
    metrics_register(&M_UNIT_BATCH);
    metrics_register(&M_UNIT_ALONE);
    metrics_register(&M_UNIT_RELOADS);
    metrics_register(&M_UNITS_WAITING);
}

void
saga__count_started(struct store_conn *c, const char *type, size_t n)
{
    if (n > 0)
        store_count_at_commit(c, &M_STARTED, (double)n, (const char *const[]){type});
}

/* COMPLETED and FAILED are final (nothing moves a saga out of them), so each
 * saga ends, and is counted here, once; STUCK waits for a person, who may
 * send it on to an end, counted then. */
void
saga__count_transition(struct store_conn *c, const char *type, enum saga_state from,
                       enum saga_state to)
{
    if (from == to)
        return;
    if (to == SAGA_STUCK) {
        store_count_at_commit(c, &M_STUCK_TOTAL, 1, (const char *const[]){type});
        return;
    }
    const char *how = to == SAGA_COMPLETED                             ? "completed"
                      : to == SAGA_FAILED && from == SAGA_COMPENSATING ? "compensated"
                      : to == SAGA_FAILED                              ? "failed"
                                                                       : NULL;
    if (how != NULL)
        store_count_at_commit(c, &M_ENDED, 1, (const char *const[]){type, how});
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
    metrics_set(&M_STUCK, 0, SAGA_TYPE_UNREGISTERED);
}

/* Types this binary has no definition for (retired, or another version's)
 * count together: the labels stay the registered ones, and no stuck saga
 * goes unseen. */
void
saga__metric_stuck(const char *type, int64_t n)
{
    if (saga__def_find(type))
        metrics_set(&M_STUCK, (double)n, type);
    else
        metrics_add(&M_STUCK, (double)n, SAGA_TYPE_UNREGISTERED);
}

/* ---- the engine -------------------------------------------------------------------------- */

struct saga_engine {
    struct store *store;
    struct saga_engine_options opt;
    pthread_t starter;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;                     /* guarded by mu */
    bool wake;                         /* guarded by mu */
    int64_t last_pruned_ms;            /* starter thread only */
    int64_t last_swept_ms;             /* starter thread only */
    char sweep_after[SAGA_ID_LEN + 1]; /* starter thread only: where the sweep goes on */
    /* Batched units: at most UNIT_LEADERS_MAX batches run at once; NULL
     * when every unit runs alone. */
    struct bb_combiner *combiner;
    _Atomic(struct job_pool *) pool; /* saga_engine_run_here's */
    pthread_mutex_t carried_mu;
    struct carried *carried; /* CARRIED_SLOTS, guarded by carried_mu */
};

/* ---- instances carried from the starter ---------------------------------------------------- */

/*
 * The starter keeps each saga it started, as it committed it, for the
 * first run of its first job: a run under the job's first lease (token 1),
 * so no run can have moved the saga before it, and it need not read it
 * back. A slot per job id (ids grow one by one): a newer job takes an
 * older one's slot; a run that finds nothing there reads the saga.
 */
enum { CARRIED_SLOTS = 1024 };
struct carried {
    int64_t job_id; /* 0: empty */
    struct saga_instance in;
};

/* What one starter unit started, kept once it commits. */
struct carry_batch {
    struct saga_engine *eng;
    size_t n;
    struct carried c[];
};

static void
carried_end(void *arg, bool committed)
{
    struct carry_batch *cb = arg;
    struct saga_engine *eng = cb->eng;
    pthread_mutex_lock(&eng->carried_mu);
    for (size_t i = 0; i < cb->n && committed; i++) {
        struct carried *slot = &eng->carried[cb->c[i].job_id % CARRIED_SLOTS];
        if (slot->job_id != 0)
            saga__instance_deinit(&slot->in);
        *slot = cb->c[i];
    }
    pthread_mutex_unlock(&eng->carried_mu);
    for (size_t i = 0; i < cb->n && !committed; i++)
        saga__instance_deinit(&cb->c[i].in);
    free(cb);
}

/* The instance carried for `run`, into *out, when it is its job's first. */
static bool
carried_take(struct saga_engine *eng, const struct job_run *run, const char *saga_id,
             struct saga_instance *out)
{
    if (run->job->lease_token != 1)
        return false;
    bool found = false;
    pthread_mutex_lock(&eng->carried_mu);
    struct carried *slot = &eng->carried[run->job->id % CARRIED_SLOTS];
    if (slot->job_id == run->job->id && strcmp(slot->in.id, saga_id) == 0) {
        saga__instance_deinit(out);
        *out = slot->in;
        *slot = (struct carried){0};
        found = true;
    }
    pthread_mutex_unlock(&eng->carried_mu);
    return found;
}

/* ---- running steps ------------------------------------------------------------------------- */

/*
 * One job carries an instance as far as it can go at once: a step, its
 * transition, and on to the next step while that may run now. A retry's
 * backoff, the end, STUCK, or the job's lease running short hand over to a
 * new job (or none). A job that is not the instance's current one
 * (sagas.job_id) does nothing: a crash's leftover, or a run that another
 * one overtook.
 *
 * Consecutive in-transaction steps share one transaction, and so does the
 * record of an outside step (a payment) before them, with what its action
 * left to write there (its saga_record: the payment's outcome). When one of them
 * fails, the unit rolls back and runs again stopping before it, so what
 * succeeded commits, and the failure is recorded in a unit of its own. What
 * an outside step holds (its `hold`) is taken in the unit that makes it
 * next and given back in the one that records it. An `at_once` step runs
 * right after the outside step before it succeeded; both results (and
 * records) then wait for the same unit.
 */
/* A step's result to record first in the next unit. */
struct pending {
    enum saga_outcome outcome;
    json_t *data; /* NULL: unchanged */
    char reason[SAGA_REASON_MAX + 1];
    struct bb_error error;
    int64_t started_ms;
    struct saga_record record; /* written with the result */
};

struct step_job {
    struct saga_engine *eng;
    struct job_run *run;
    const char *saga_id;
    struct saga_instance in; /* as last committed */
    const struct saga_def *def;
    /* Results to record first in the next unit, in order: an outside
     * step's (and the `at_once` step's after it), or an in-transaction
     * step's failure. */
    int n_pending;
    struct pending pending[2];
    /* The unit's working state. */
    struct saga_instance work;
    struct saga_unit unit;
    int limit;    /* in-transaction steps a unit may run */
    int ran;      /* in-transaction steps the unit ran and moved past */
    bool failed;  /* one failed: the unit rolled back */
    bool stale;   /* another run moved the instance on */
    bool stopped; /* a batched unit: a batch form failed this one */
    /* Set by the batch that carried its unit: the outcome, or `alone` (the
     * batch failed as a whole: run it alone). */
    bool alone;
    enum err batch_rc;
    struct bb_error batch_error;
    bool chain; /* the next step stays with this job */
    /* What the next outside step holds (0: nothing), as committed, and as
     * the unit leaves it. */
    int64_t held, unit_held;
    /* The unit left the instance to no further step of this job, and ended
     * the job itself (job_runs_complete_in); end_rc says how. */
    bool ended;
    enum err end_rc;
    int tries; /* reads of the instance since a unit last committed (recover) */
};

static bool
is_current(const struct step_job *j, const struct saga_instance *in)
{
    return (in->state == SAGA_RUNNING || in->state == SAGA_COMPENSATING) &&
           in->job_id == j->run->job->id;
}

enum { STEP_KEY_MAX = SAGA_ID_LEN + 80 };

/* What the step `in` is at sees (c: its transaction, or NULL). */
static struct saga_step_run
step_run(const struct step_job *j, const struct saga_instance *in, struct store_conn *c,
         json_t *data, char key[STEP_KEY_MAX])
{
    const struct saga_step_def *sd = &j->def->steps[in->step];
    bool compensating = in->state == SAGA_COMPENSATING;
    snprintf(key, STEP_KEY_MAX, "saga:%s:%s%s", in->id, sd->name, compensating ? ":undo" : "");
    return (struct saga_step_run){.saga_id = in->id,
                                  .type = in->type,
                                  .step = sd->name,
                                  .compensating = compensating,
                                  .failure = in->reason,
                                  .key = key,
                                  .data = data,
                                  .c = c,
                                  .store = j->eng->store,
                                  .ctx = j->def->ctx,
                                  .attempt = in->retries + 1,
                                  .job_id = j->run->job->id,
                                  .lease_token = j->run->job->lease_token,
                                  .held = j->held,
                                  .traceparent = j->run->job->traceparent,
                                  .pool = atomic_load(&j->eng->pool)};
}

/* The thread's trace for the length of a step (units of many sagas run on
 * one thread), and the one it had before. */
struct trace_scope {
    char prev[128];
};

static void
trace_enter(struct trace_scope *s, const char *traceparent)
{
    const char *prev = bb_log_context_traceparent();
    bb_strlcpy(s->prev, prev ? prev : "", sizeof s->prev);
    bb_log_context_set(NULL, traceparent);
}

static void
trace_leave(const struct trace_scope *s)
{
    bb_log_context_set(NULL, s->prev[0] ? s->prev : NULL);
}

/* Run the step `in` is at into *out (c: in its transaction, else outside
 * any, and j->held is what it holds after; before: what an `at_once`
 * step sees). */
static void
run_step(struct step_job *j, const struct saga_instance *in, struct store_conn *c,
         const struct saga_record *before, struct pending *out)
{
    const struct saga_step_def *sd = &j->def->steps[in->step];
    bool compensating = in->state == SAGA_COMPENSATING;
    char key[STEP_KEY_MAX];
    *out = (struct pending){.data = json_deep_copy(in->data), .started_ms = bb_wall_ms()};
    struct saga_step_run sr = step_run(j, in, c, out->data, key);
    sr.before = before;
    saga_step_fn *fn = compensating ? sd->compensate : sd->action;
    int64_t t0_ns = bb_mono_ns();
    struct trace_scope ts;
    trace_enter(&ts, sr.traceparent);
    out->outcome = fn ? fn(&sr, &out->error) : SAGA_STEP_OK;
    trace_leave(&ts);
    saga__metric_step(in->type, sd->name, compensating, (double)(bb_mono_ns() - t0_ns) / 1e9);
    bb_strlcpy(out->reason, sr.reason, sizeof out->reason);
    if (c == NULL) {
        j->held = sr.held;
        out->record = sr.record;
    } else if (sr.record.drop) {
        sr.record.drop(sr.record.arg); /* an in-transaction step writes for itself */
    }
}

/* What the step `in` is at holds while it runs (NULL: nothing). */
static saga_hold_fn *
hold_of(const struct step_job *j, const struct saga_instance *in)
{
    const struct saga_step_def *sd = &j->def->steps[in->step];
    return sd->in_txn ? NULL : sd->hold;
}

/* Give back what the step `in` is at held. */
static void
unhold(struct step_job *j, struct store_conn *c, const struct saga_instance *in, int64_t held)
{
    const struct saga_step_def *sd = &j->def->steps[in->step];
    if (held == 0 || sd->unhold == NULL)
        return;
    char key[STEP_KEY_MAX];
    struct saga_step_run sr = step_run(j, in, c, in->data, key);
    sd->unhold(&sr, held);
}

struct unit_batch {
    struct step_job **m;
    size_t n;
};

/* Do the members share their step (`in` or `work`) and its batch form? */
static bool
one_step(struct step_job *const *m, size_t n, bool recorded, bool has_batch)
{
    for (size_t i = 1; i < n; i++) {
        const struct saga_instance *a = recorded ? &m[0]->in : &m[0]->work;
        const struct saga_instance *b = recorded ? &m[i]->in : &m[i]->work;
        if (m[i]->def != m[0]->def || a->step != b->step)
            return false;
    }
    return has_batch;
}

/* Give back what the steps the members recorded held (held[i]). */
static void
give_back(struct store_conn *c, struct step_job **m, size_t n)
{
    if (n == 0)
        return;
    const struct saga_step_def *sd = &m[0]->def->steps[m[0]->in.step];
    if (!one_step(m, n, true, sd->unhold_batch != NULL)) {
        for (size_t i = 0; i < n; i++)
            unhold(m[i], c, &m[i]->in, m[i]->unit_held);
        return;
    }
    struct saga_step_run runs[SAGA_UNIT_BATCH_MAX], *rp[SAGA_UNIT_BATCH_MAX];
    char keys[SAGA_UNIT_BATCH_MAX][STEP_KEY_MAX];
    int64_t held[SAGA_UNIT_BATCH_MAX];
    for (size_t i = 0; i < n; i++) {
        runs[i] = step_run(m[i], &m[i]->in, c, m[i]->in.data, keys[i]);
        rp[i] = &runs[i];
        held[i] = m[i]->unit_held;
    }
    sd->unhold_batch(rp, held, n);
}

/* Take what the members' next steps hold. Not getting it is no failure:
 * the step tries itself. */
static void
take(struct store_conn *c, struct step_job **m, size_t n)
{
    if (n == 0)
        return;
    const struct saga_step_def *sd = &m[0]->def->steps[m[0]->work.step];
    struct saga_step_run runs[SAGA_UNIT_BATCH_MAX], *rp[SAGA_UNIT_BATCH_MAX];
    char keys[SAGA_UNIT_BATCH_MAX][STEP_KEY_MAX];
    int64_t held[SAGA_UNIT_BATCH_MAX];
    struct bb_error ignored;
    bool batch = one_step(m, n, false, sd->hold_batch != NULL);
    for (size_t i = 0; i < n; i++) {
        /* What the hold sets in the data is written with the unit; the
         * committed instance may share the object. */
        json_t *own = json_deep_copy(m[i]->work.data);
        if (own == NULL)
            bb_panic(__FILE__, __LINE__, "out of memory");
        json_decref(m[i]->work.data);
        m[i]->work.data = own;
        runs[i] = step_run(m[i], &m[i]->work, c, m[i]->work.data, keys[i]);
        rp[i] = &runs[i];
        if (!batch && hold_of(m[i], &m[i]->work)(&runs[i], &m[i]->unit_held, &ignored) != ERR_OK)
            m[i]->unit_held = 0;
    }
    if (!batch)
        return;
    if (sd->hold_batch(rp, n, held, &ignored) != ERR_OK)
        memset(held, 0, n * sizeof *held);
    for (size_t i = 0; i < n; i++)
        m[i]->unit_held = held[i];
}

/* At the end of a unit, before the instances are written: give back what
 * the step each member recorded held, and take what its next step holds
 * when its runner goes on to it.
 * When both hold the same, it is taken again (a lock's re-entrant acquire
 * renews it) rather than given back. */
static void
hold(struct store_conn *c, struct unit_batch *b)
{
    struct step_job *giving[SAGA_UNIT_BATCH_MAX], *taking[SAGA_UNIT_BATCH_MAX];
    size_t n_giving = 0, n_taking = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct step_job *j = b->m[i];
        saga_hold_fn *next = is_current(j, &j->work) ? hold_of(j, &j->work) : NULL;
        bool same = j->n_pending > 0 && next && next == hold_of(j, &j->in);
        if (j->n_pending > 0 && !same && j->unit_held != 0 && j->def->steps[j->in.step].unhold)
            giving[n_giving++] = j;
        else if (j->n_pending > 0 && !same)
            j->unit_held = 0;
        if (next)
            taking[n_taking++] = j;
    }
    give_back(c, giving, n_giving);
    for (size_t i = 0; i < n_giving; i++)
        giving[i]->unit_held = 0;
    take(c, taking, n_taking);
}

/* Record `res` and make the moved instance the unit's. */
static enum err
move_on(struct store_conn *c, struct step_job *j, const struct saga_step_result *res,
        struct bb_error *e)
{
    struct saga_instance next = {0};
    struct saga_step_result traced = *res;
    traced.traceparent = j->run->job->traceparent; /* the next step's job carries it on */
    enum err rc = saga__transition(c, j->def, &j->work, &traced, j->chain ? j->run->job->id : 0,
                                   bb_wall_ms(), &j->unit, &next, e);
    if (rc != ERR_OK)
        return rc;
    saga__instance_deinit(&j->work);
    j->work = next;
    return ERR_OK;
}

/* Start a unit afresh (a unit the store runs again starts afresh too) and
 * record the pending results first. */
static enum err
unit_start(struct store_conn *c, struct step_job *j, struct bb_error *e)
{
    saga__instance_deinit(&j->work);
    j->work = j->in;
    json_incref(j->work.data);
    saga__unit_begin(&j->unit, &j->in);
    j->ran = 0;
    j->failed = j->stale = j->stopped = j->ended = false;
    j->unit_held = j->held;
    enum err rc = ERR_OK;
    for (int r = 0; r < j->n_pending && rc == ERR_OK; r++) {
        const struct pending *p = &j->pending[r];
        struct saga_step_result res = {.outcome = p->outcome,
                                       .data = p->data,
                                       .reason = p->reason,
                                       .error = p->error.detail,
                                       .started_at_ms = p->started_ms};
        rc = move_on(c, j, &res, e);
    }
    return rc;
}

/* The r-th record of members that have one, or NULL. */
static const struct saga_record *
record_of(const struct step_job *j, int r)
{
    return r < j->n_pending && j->pending[r].record.fn ? &j->pending[r].record : NULL;
}

/* Write what the members' outside actions left for their results' unit
 * (saga_record), in the order the actions ran: one call for the members
 * that share a `fn`. */
static enum err
record(struct store_conn *c, struct step_job *const *m, size_t n, struct bb_error *e)
{
    enum err rc = ERR_OK;
    for (int r = 0; r < 2 && rc == ERR_OK; r++) {
        void *args[SAGA_UNIT_BATCH_MAX];
        bool done[SAGA_UNIT_BATCH_MAX] = {false};
        for (size_t i = 0; i < n && rc == ERR_OK; i++) {
            const struct saga_record *rec = record_of(m[i], r);
            if (rec == NULL || done[i])
                continue;
            size_t k = 0;
            for (size_t x = i; x < n; x++) {
                const struct saga_record *other = record_of(m[x], r);
                if (other && other->fn == rec->fn) {
                    args[k++] = other->arg;
                    done[x] = true;
                }
            }
            rc = rec->fn(c, args, k, e);
        }
    }
    return rc;
}

/*
 * After a unit's flush: the members whose instance no further step of
 * theirs will move (it ended, waits for a retry or for another job, or is
 * STUCK) end their jobs in the unit's transaction, which saves each a
 * transaction of the job engine's.
 */
static enum err
end_jobs(struct store_conn *c, struct step_job *const *m, size_t n, struct bb_error *e)
{
    struct step_job *ending[SAGA_UNIT_BATCH_MAX];
    struct job_run *runs[SAGA_UNIT_BATCH_MAX];
    enum err rcs[SAGA_UNIT_BATCH_MAX];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_current(m[i], &m[i]->work)) {
            ending[k] = m[i];
            runs[k++] = m[i]->run;
        }
    }
    if (k == 0)
        return ERR_OK;
    enum err rc = job_runs_complete_in(c, runs, k, rcs, e);
    for (size_t i = 0; i < k && rc == ERR_OK; i++) {
        ending[i]->ended = true;
        ending[i]->end_rc = rcs[i];
    }
    return rc;
}

static enum err
advance_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct step_job *j = arg;
    enum err rc = unit_start(c, j, e);
    if (rc == ERR_OK)
        rc = record(c, &j, 1, e);
    while (rc == ERR_OK && j->ran < j->limit && is_current(j, &j->work) &&
           j->def->steps[j->work.step].in_txn) {
        struct pending p;
        run_step(j, &j->work, c, NULL, &p);
        if (p.outcome != SAGA_STEP_OK) {
            json_decref(p.data);
            if (j->n_pending == 0 && j->ran == 0) { /* alone: record the failure next */
                p.data = NULL;                      /* its writes roll back */
                j->pending[0] = p;
            }
            j->failed = true;
            return bb_fail(e, ERR_CONFLICT, "", "step failed");
        }
        struct saga_step_result res = {
            .outcome = p.outcome, .data = p.data, .reason = "", .started_at_ms = p.started_ms};
        rc = move_on(c, j, &res, e);
        json_decref(p.data);
        j->ran++;
    }
    if (rc == ERR_OK)
        hold(c, &(struct unit_batch){.m = &j, .n = 1});
    if (rc == ERR_OK)
        rc = saga__unit_flush(c, &j->unit, &j->work, &j->stale, e);
    if (rc == ERR_OK)
        rc = end_jobs(c, &j, 1, e);
    return rc;
}

/* ---- batched units ------------------------------------------------------------------------ */

/*
 * A unit may join others when all it will do, on the way it is meant to
 * go, has a batch form: the record of an outside step's success, then the
 * in-transaction actions that follow, each with an `action_batch`. A member
 * that a batch form fails stops there (its failure recorded with the
 * batch); what follows (compensations) runs in units of its own.
 */
static bool
batchable(const struct step_job *j)
{
    if (j->limit != INT_MAX || j->in.state != SAGA_RUNNING)
        return false;
    int s = j->in.step;
    for (int r = 0; r < j->n_pending; r++, s++)
        if (j->pending[r].outcome != SAGA_STEP_OK)
            return false;
    for (; (size_t)s < j->def->n_steps && j->def->steps[s].in_txn; s++)
        if (j->def->steps[s].action_batch == NULL)
            return false;
    return true;
}

/* A member still running actions in the batch. */
static bool
going(const struct step_job *j)
{
    if (j->stopped || j->work.state != SAGA_RUNNING || !is_current(j, &j->work))
        return false;
    const struct saga_step_def *sd = &j->def->steps[j->work.step];
    return sd->in_txn && sd->action_batch != NULL;
}

/* One round: every going member at the first going member's step, through
 * the step's batch form. *ran 0 when none went. */
static enum err
batch_round(struct store_conn *c, struct unit_batch *b, size_t *ran, struct bb_error *e)
{
    struct step_job *m[SAGA_UNIT_BATCH_MAX];
    struct saga_step_run runs[SAGA_UNIT_BATCH_MAX], *rp[SAGA_UNIT_BATCH_MAX];
    json_t *data[SAGA_UNIT_BATCH_MAX];
    char keys[SAGA_UNIT_BATCH_MAX][STEP_KEY_MAX];
    enum saga_outcome out[SAGA_UNIT_BATCH_MAX];
    struct bb_error errors[SAGA_UNIT_BATCH_MAX];
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct step_job *j = b->m[i];
        if (!going(j) || (k > 0 && (j->def != m[0]->def || j->work.step != m[0]->work.step)))
            continue;
        m[k] = j;
        data[k] = json_deep_copy(j->work.data);
        runs[k] = step_run(j, &j->work, c, data[k], keys[k]);
        rp[k] = &runs[k];
        out[k] = SAGA_STEP_OK;
        bb_error_clear(&errors[k]);
        k++;
    }
    *ran = k;
    if (k == 0)
        return ERR_OK;
    const struct saga_step_def *sd = &m[0]->def->steps[m[0]->work.step];
    int64_t started = bb_wall_ms(), t0_ns = bb_mono_ns();
    struct trace_scope ts;
    trace_enter(&ts, NULL); /* each run's trace is its own (runs[i].traceparent) */
    enum err rc = sd->action_batch(rp, k, out, errors, e);
    trace_leave(&ts);
    /* Each member waited the whole batch for its step: that is its step's
     * latency (not the batch's time shared out, which no member saw). A
     * batch that fails records nothing: its members run again alone and
     * record those runs. */
    double seconds = (double)(bb_mono_ns() - t0_ns) / 1e9;
    for (size_t i = 0; i < k; i++) {
        if (rc == ERR_OK) {
            saga__metric_step(m[i]->work.type, sd->name, false, seconds);
            struct saga_step_result res = {.outcome = out[i],
                                           .data = out[i] == SAGA_STEP_OK ? data[i] : NULL,
                                           .reason = runs[i].reason,
                                           .error = errors[i].detail,
                                           .started_at_ms = started};
            rc = move_on(c, m[i], &res, e);
            m[i]->ran++;
            m[i]->stopped = out[i] != SAGA_STEP_OK;
        }
        json_decref(data[i]);
    }
    return rc;
}

static enum err
advance_batch(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct unit_batch *b = arg;
    enum err rc = ERR_OK;
    for (size_t i = 0; i < b->n && rc == ERR_OK; i++)
        rc = unit_start(c, b->m[i], e);
    if (rc == ERR_OK)
        rc = record(c, b->m, b->n, e);
    for (size_t ran = 1; rc == ERR_OK && ran > 0;)
        rc = batch_round(c, b, &ran, e);
    if (rc != ERR_OK)
        return rc;
    hold(c, b);
    struct saga_unit *units[SAGA_UNIT_BATCH_MAX];
    const struct saga_instance *now[SAGA_UNIT_BATCH_MAX];
    for (size_t i = 0; i < b->n; i++) {
        units[i] = &b->m[i]->unit;
        now[i] = &b->m[i]->work;
    }
    bool stale;
    rc = saga__units_flush(c, units, now, b->n, &stale, e);
    if (rc == ERR_OK)
        rc = end_jobs(c, b->m, b->n, e);
    return rc;
}

/* The combiner's run: the members' units, together when there are
 * several. */
static void
lead(void **items, size_t n, void *ctx)
{
    struct saga_engine *eng = ctx;
    struct step_job *m[SAGA_UNIT_BATCH_MAX];
    for (size_t i = 0; i < n; i++)
        m[i] = items[i];
    metrics_observe(&M_UNIT_BATCH, (double)n);
    struct bb_error e;
    enum err rc;
    if (n == 1) {
        rc = store_run(eng->store, STORE_WRITE, advance_work, m[0], &e);
    } else {
        struct unit_batch b = {.m = m, .n = n};
        rc = store_run(eng->store, STORE_WRITE, advance_batch, &b, &e);
        if (rc != ERR_OK) {
            metrics_add(&M_UNIT_ALONE, 1);
            log_debug("saga.batch_failed", "members=%zu detail=%s", n, e.detail);
        }
    }
    for (size_t i = 0; i < n; i++) {
        m[i]->alone = n > 1 && rc != ERR_OK;
        m[i]->batch_rc = rc;
        m[i]->batch_error = e;
    }
}

/*
 * Units of one kind: the same definition, step and state, with or without
 * a result to record first. A batch of one kind runs the same steps for
 * all, so it locks the rows its members share once, in one order (the
 * products in SKU order, say); a batch that mixed kinds would lock them in
 * two rounds, and two such batches could wait on each other in a circle.
 */
static bool
same_kind(const void *x, const void *y, void *ctx)
{
    (void)ctx;
    const struct step_job *a = x, *b = y;
    return a->def == b->def && a->in.step == b->in.step && a->in.state == b->in.state &&
           a->n_pending == b->n_pending;
}

static void
units_waiting(size_t n, void *ctx)
{
    (void)ctx;
    metrics_set(&M_UNITS_WAITING, (double)n);
}

/*
 * Commit j's unit: alone, or with others waiting at the same time. A unit
 * waits only while UNIT_LEADERS_MAX batches are in flight, so an idle
 * engine runs each at once; under load, units gather while the
 * connections are busy, and each transaction carries many.
 */
static enum err
unit_commit(struct step_job *j, struct bb_error *e)
{
    struct saga_engine *eng = j->eng;
    j->alone = false;
    if (eng->combiner == NULL || !batchable(j) || !bb_combine(eng->combiner, j) || j->alone)
        return store_run(eng->store, STORE_WRITE, advance_work, j, e);
    *e = j->batch_error;
    return j->batch_rc;
}

static void
clear_pending(struct step_job *j)
{
    for (int r = 0; r < j->n_pending; r++) {
        json_decref(j->pending[r].data);
        if (j->pending[r].record.drop)
            j->pending[r].record.drop(j->pending[r].record.arg);
    }
    j->n_pending = 0;
}

/* Log the failed steps as they are recorded. */
static void
log_failure(const struct step_job *j)
{
    for (int r = 0; r < j->n_pending; r++) {
        const struct pending *p = &j->pending[r];
        if (p->outcome == SAGA_STEP_OK)
            continue;
        const struct saga_step_def *sd = &j->def->steps[j->in.step + r];
        log_info("saga.step_failed", "saga=%s type=%s step=%s phase=%s outcome=%s detail=%s",
                 j->in.id, j->in.type, sd->name,
                 j->in.state == SAGA_COMPENSATING ? "compensation" : "action",
                 p->outcome == SAGA_STEP_RETRY ? "retry" : "failed", p->error.detail);
    }
}

static enum err
load_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct step_job *j = arg;
    bool found;
    saga__instance_deinit(&j->in);
    if (bb_fault("saga.load"))
        return bb_fail(e, ERR_STORE, "", "saga %s: its first read failed (fault point)",
                       j->saga_id);
    enum err rc = saga__load(c, j->saga_id, &j->in, &found, e);
    if (rc == ERR_OK && !found)
        j->in.state = SAGA_FAILED; /* nothing to run */
    return rc;
}

/* The instances read at the same time, in one statement. */
static enum err
load_many(struct store_conn *c, void *const *jobs, size_t n, enum err *rcs, struct bb_error *errors,
          void *ctx, struct bb_error *e)
{
    (void)rcs;
    (void)errors;
    (void)ctx;
    const char **ids = xcalloc(n, sizeof *ids);
    struct saga_instance **in = xcalloc(n, sizeof *in);
    bool *found = xcalloc(n, sizeof *found);
    for (size_t i = 0; i < n; i++) {
        struct step_job *j = jobs[i];
        saga__instance_deinit(&j->in);
        ids[i] = j->saga_id;
        in[i] = &j->in;
    }
    enum err rc = saga__load_many(c, ids, n, in, found, e);
    for (size_t i = 0; i < n && rc == ERR_OK; i++)
        if (!found[i])
            in[i]->state = SAGA_FAILED; /* nothing to run */
    free(found);
    free(in);
    free(ids);
    return rc;
}

static const struct store_group LOADS = {.many = load_many, .max = SAGA_UNIT_BATCH_MAX};

/* Steps run while at least this much of the job's lease is left. */
#define CHAIN_LEASE_LEFT_MS (SAGA_STEP_LEASE_MS / 2)

/* After an outside action that succeeded, run the next step at once when
 * it is `at_once` and the lease has time for it; both results are then
 * recorded in the next unit. */
static void
run_at_once(struct step_job *j)
{
    const struct saga_instance *in = &j->in;
    size_t next = (size_t)in->step + 1;
    if (in->state != SAGA_RUNNING || j->pending[0].outcome != SAGA_STEP_OK ||
        next >= j->def->n_steps || !j->def->steps[next].at_once || j->def->steps[next].in_txn ||
        job_run_should_stop(j->run) ||
        bb_mono_ms() + CHAIN_LEASE_LEFT_MS >= j->run->deadline_mono_ms)
        return;
    struct saga_instance after = *in; /* as the first result leaves it (not owned) */
    after.step = (int)next;
    after.retries = 0;
    after.data = j->pending[0].data;
    const struct saga_record *before = j->pending[0].record.fn ? &j->pending[0].record : NULL;
    run_step(j, &after, NULL, before, &j->pending[1]);
    j->n_pending = 2;
}

/*
 * A unit that failed in the store (its commit, say, whose outcome is then
 * unknown), or that found the instance moved, is decided by what the store
 * holds now, read again in process after a short pause, a few times in a
 * row before the job's own retry takes over: a chained job's failures
 * would otherwise add up across its steps, and its backoff (1 s, 4 s,
 * 16 s, a minute) keep a checkout waiting on a database that failed once
 * a step. The read also checks the run's lease: only the job's live run
 * goes on.
 */
static const int64_t RELOAD_PAUSE_MS[] = {0, 25, 100, 400, 1600};

struct reload {
    struct step_job *j;
    struct saga_instance in;
    bool held; /* the run still holds its job's lease */
};

static enum err
reload_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct reload *r = arg;
    const struct job_lease *job = r->j->run->job;
    saga__instance_deinit(&r->in);
    bool found;
    enum err rc = saga__load(c, r->j->saga_id, &r->in, &found, e);
    if (rc == ERR_OK && !found)
        r->in.state = SAGA_FAILED; /* nothing to run */
    return rc == ERR_OK ? job_lease_held(c, job->id, job->lease_token, &r->held, e) : rc;
}

/* The instance as committed now, into r->in (owned), pausing first unless
 * `at_once`; false once the run's tries in a row are spent (e says why). */
static bool
reload(struct step_job *j, bool at_once, struct reload *r, struct bb_error *e)
{
    *r = (struct reload){.j = j};
    if (!at_once && j->tries == 0)
        j->tries = 1;
    while (j->tries < (int)BB_ARRAY_LEN(RELOAD_PAUSE_MS) && !job_run_should_stop(j->run)) {
        bb_sleep_ms(RELOAD_PAUSE_MS[j->tries++]);
        if (store_run(j->eng->store, STORE_READ, reload_work, r, e) == ERR_OK)
            return true;
    }
    saga__instance_deinit(&r->in);
    return false;
}

enum recovery { GO_ON, LEAVE_TO_JOB, LEAVE_DONE };

/* After a unit failed with `rc` (stale: it found the instance moved): go
 * on from the committed instance if it moved, or with the same results if
 * nothing committed and the store's trouble may pass (a step's own refusal,
 * a record's, would only come again: the job runs the step again). */
static enum recovery
recover(struct step_job *j, enum err rc, bool stale)
{
    bool trouble = rc == ERR_STORE || rc == ERR_UNAVAILABLE;
    struct reload r;
    struct bb_error unread;
    if (!reload(j, stale, &r, &unread))
        return LEAVE_TO_JOB;
    bool same = r.in.version == j->in.version;
    /* Its commit's answer was lost, or another unit of this run committed
     * (a batch's, before this one ran alone): the unit's own commit is the
     * one that left exactly its work, and what it held and ended are so. */
    bool own = !same && r.in.version == j->work.version && r.in.state == j->work.state &&
               r.in.step == j->work.step && r.in.job_id == j->work.job_id;
    if (own) {
        log_failure(j);
        if (!is_current(j, &j->work)) /* end_jobs ended the job with it */
            job_run_recorded(j->run, j->ended ? j->end_rc : ERR_OK);
    }
    if (!same || trouble)
        metrics_add(&M_UNIT_RELOADS, 1, same ? "nothing" : "committed");
    if (!r.held || (same && !trouble)) {
        saga__instance_deinit(&r.in);
        return r.held ? LEAVE_TO_JOB : LEAVE_DONE; /* LEAVE_DONE: its report would be refused */
    }
    if (same) { /* the same unit again, as far as it went */
        saga__instance_deinit(&r.in);
        return GO_ON;
    }
    j->limit = INT_MAX;
    j->held = own ? j->unit_held : 0; /* a step holding nothing takes it itself */
    clear_pending(j);
    saga__instance_deinit(&j->in);
    j->in = r.in;
    return GO_ON;
}

static enum job_verdict
carry(struct step_job *j)
{
    struct job_run *run = j->run;
    struct bb_error e;
    bool carried = carried_take(j->eng, run, j->saga_id, &j->in);
    metrics_add(&M_JOB_RUNS, 1, carried ? "starter" : "store");
    if (!carried &&
        store_run_grouped(j->eng->store, STORE_READ, &LOADS, load_work, j, &e) != ERR_OK) {
        struct reload r;
        bool loaded = reload(j, false, &r, &e);
        if (!loaded || !r.held) {
            saga__instance_deinit(&r.in);
            bb_buf_printf(&run->error, "loading saga %s: %s", j->saga_id,
                          loaded ? "the run lost its lease" : e.detail);
            return JOB_RETRY;
        }
        saga__instance_deinit(&j->in);
        j->in = r.in;
    }
    j->limit = INT_MAX;
    for (;;) {
        if (j->n_pending == 0) {
            if (!is_current(j, &j->in))
                return JOB_DONE; /* it ended, waits, or is another job's now */
            j->def = saga__def_find(j->in.type);
            if (j->def == NULL || (size_t)j->in.step >= j->def->n_steps) {
                bb_buf_printf(&run->error, "no definition of saga type %s here", j->in.type);
                return JOB_RETRY; /* another process may know it */
            }
            if (!j->def->steps[j->in.step].in_txn) {
                run_step(j, &j->in, NULL, NULL, &j->pending[0]);
                j->n_pending = 1;
                run_at_once(j);
            }
        }
        j->chain =
            !job_run_should_stop(run) && bb_mono_ms() + CHAIN_LEASE_LEFT_MS < run->deadline_mono_ms;
        enum err rc = unit_commit(j, &e);
        if (rc == ERR_OK) {
            if (j->ended)
                job_run_recorded(run, j->end_rc);
            log_failure(j);
            clear_pending(j);
            saga__instance_deinit(&j->in);
            j->in = j->work;
            j->work = (struct saga_instance){0};
            j->held = j->unit_held;
            j->limit = INT_MAX;
            j->tries = 0;
        } else if (rc == ERR_CONFLICT && j->failed) {
            /* Commit what came before the failure; a failure alone is
             * recorded next (advance_work kept it). */
            if (j->n_pending == 0 && j->ran == 0)
                j->n_pending = 1;
            j->limit = j->ran;
        } else {
            enum recovery how = recover(j, rc, rc == ERR_CONFLICT && j->stale);
            if (how != GO_ON) {
                bb_buf_printf(&run->error, "saga %s: %s", j->saga_id, e.detail);
                return how == LEAVE_DONE ? JOB_DONE : JOB_RETRY; /* JOB_RETRY: it runs again */
            }
        }
    }
}

/* Give back what a step still holds as the job stops. */
static enum err
release_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)e;
    struct step_job *j = arg;
    unhold(j, c, &j->in, j->held);
    return ERR_OK;
}

static enum job_verdict
saga_job(struct job_run *run)
{
    struct step_job *j = xcalloc(1, sizeof *j);
    j->eng = run->ctx;
    j->run = run;
    json_t *payload = json_loads(run->job->payload, 0, NULL);
    j->saga_id = json_string_value(json_object_get(payload, "saga_id"));
    enum job_verdict verdict;
    if (j->saga_id == NULL) {
        bb_buf_puts(&run->error, "payload has no saga_id");
        verdict = JOB_FAIL_PERMANENTLY;
    } else {
        verdict = carry(j);
    }
    struct bb_error e;
    if (j->held != 0 && j->def &&
        store_run(j->eng->store, STORE_WRITE, release_work, j, &e) != ERR_OK)
        log_debug("saga.unhold_failed", "saga=%s detail=%s", j->saga_id, e.detail);
    clear_pending(j);
    saga__unit_deinit(&j->unit);
    saga__instance_deinit(&j->work);
    saga__instance_deinit(&j->in);
    json_decref(payload);
    free(j);
    return verdict;
}

/* ---- the starter ------------------------------------------------------------------------- */

struct start_batch {
    struct saga_engine *eng;
    struct job_pool *pool; /* the first jobs go there (NULL: to the queue) */
    /* Per definition, the last event claimed this round (committed), and
     * by the unit in hand. */
    int64_t after[DEFS_MAX], last[DEFS_MAX];
    int64_t claimed;
    int64_t started;
    int64_t rejected[DEFS_MAX]; /* bad starting events, by the unit in hand */
};

/* A saga as saga__start_many writes it. */
static struct carried
started_as(const struct saga_def *def, const char *id, const char *correlation_id,
           const json_t *data, int64_t job_id)
{
    struct carried c = {.job_id = job_id,
                        .in = {.state = SAGA_RUNNING, .version = 1, .job_id = job_id}};
    bb_strlcpy(c.in.id, id, sizeof c.in.id);
    bb_strlcpy(c.in.type, def->type, sizeof c.in.type);
    bb_strlcpy(c.in.correlation_id, correlation_id, sizeof c.in.correlation_id);
    c.in.data = json_deep_copy(data);
    if (c.in.data == NULL)
        bb_panic(__FILE__, __LINE__, "out of memory");
    return c;
}

static enum err
start_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct start_batch *b = arg;
    b->claimed = b->started = 0;
    memset(b->rejected, 0, sizeof b->rejected);
    int64_t now = bb_wall_ms();
    for (size_t d = 0; d < g_n_defs; d++) {
        const struct saga_def *def = g_defs[d];
        if (def->start_event == NULL)
            continue;
        struct outbox_claimed *ev;
        size_t n;
        enum err rc = outbox_claim(c, def->start_event, b->after[d], START_BATCH, &ev, &n, e);
        if (rc != ERR_OK)
            return rc;
        const char *correlation[START_BATCH], *traces[START_BATCH];
        json_t *data[START_BATCH];
        int64_t handled[START_BATCH];
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            struct bb_error why;
            handled[i] = ev[i].id;
            data[k] = NULL;
            if (ev[i].data == NULL || def->from_event(ev[i].data, ev[i].aggregate_id, &data[k],
                                                      def->ctx, &why) != ERR_OK) {
                /* Nothing can start from it: end what waited for it, say so
                 * once and move on. */
                const char *detail = ev[i].data ? why.detail : "the event's data is not JSON";
                log_error("saga.bad_start_event", "type=%s event=%lld detail=%s", def->type,
                          (long long)ev[i].id, detail);
                json_decref(data[k]);
                data[k] = NULL;
                b->rejected[d]++;
                if (def->on_reject)
                    rc = def->on_reject(c, ev[i].aggregate_id, detail, ev[i].traceparent, def->ctx,
                                        e);
                if (rc != ERR_OK) {
                    for (size_t j = 0; j < k; j++)
                        json_decref(data[j]);
                    outbox_claimed_free(ev, n);
                    return rc;
                }
                continue;
            }
            traces[k] = ev[i].traceparent; /* the checkout request's trace, carried on */
            correlation[k++] = ev[i].aggregate_id;
        }
        char(*ids)[SAGA_ID_LEN + 1] = xcalloc(k ? k : 1, sizeof *ids);
        bool created[START_BATCH];
        int64_t job_ids[START_BATCH];
        /* Kept for the first jobs' runs here once committed (registered
         * first: the jobs handed over start after it). */
        struct carry_batch *cb = NULL;
        if (k > 0 && b->pool) {
            cb = xcalloc(1, sizeof *cb + k * sizeof cb->c[0]);
            cb->eng = b->eng;
            store_after_commit(c, carried_end, cb);
        }
        if (k > 0)
            rc = saga__start_many(c, def, correlation, (const json_t *const *)data, traces, k, now,
                                  b->pool, ids, created, job_ids, e);
        for (size_t i = 0; i < k; i++) {
            b->started += rc == ERR_OK && created[i];
            if (rc == ERR_OK && created[i] && job_ids[i] > 0 && cb)
                cb->c[cb->n++] = started_as(def, ids[i], correlation[i], data[i], job_ids[i]);
            json_decref(data[i]);
        }
        free(ids);
        if (rc == ERR_OK)
            rc = outbox_mark_handled(c, handled, n, now, e);
        b->last[d] = n > 0 ? ev[n - 1].id : b->after[d];
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

struct prune_unit {
    int64_t before_ms;
    int64_t deleted;
};

static enum err
prune_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct prune_unit *u = arg;
    return saga_prune_finished(c, u->before_ms, PRUNE_BATCH, &u->deleted, e);
}

/* Delete what finished before the retention period, a batch per transaction
 * (so no transaction holds many rows), at most once per poll period. */
static void
prune(struct saga_engine *eng)
{
    int64_t now = bb_mono_ms();
    if (eng->opt.retention_ms <= 0 || now - eng->last_pruned_ms < eng->opt.poll_ms)
        return;
    eng->last_pruned_ms = now;
    struct prune_unit u = {.before_ms = bb_wall_ms() - eng->opt.retention_ms};
    int64_t total = 0;
    for (int i = 0; i < PRUNE_BATCHES_MAX; i++) {
        struct bb_error e;
        if (store_run(eng->store, STORE_WRITE, prune_work, &u, &e) != ERR_OK) {
            log_error_limited(1, "saga.prune_failed", "detail=%s", e.detail);
            break;
        }
        total += u.deleted;
        if (u.deleted < PRUNE_BATCH)
            break;
    }
    if (total > 0) {
        metrics_add(&M_PRUNED, (double)total);
        log_info("saga.pruned", "sagas=%lld", (long long)total);
    }
}

struct sweep_unit {
    const char *after;
    char last[SAGA_ID_LEN + 1];
    int64_t stuck;
};

static enum err
sweep_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct sweep_unit *u = arg;
    return saga_sweep_stranded(c, u->after, SWEEP_PAGE, bb_wall_ms(), u->last, &u->stuck, e);
}

/*
 * Make STUCK the sagas no job drives any more (a job dead after its last
 * attempt, cancelled or purged by hand): a page per transaction, every
 * round, in every process that runs a starter. Each saga's move ends its
 * step and hands over to the next job in one transaction, so a saga between
 * two steps always has a pending or running job; saga_sweep_stranded's
 * compare-and-set covers a step that ends while it looks. At most once per
 * poll period, however often the starter wakes.
 */
static void
sweep(struct saga_engine *eng)
{
    int64_t now = bb_mono_ms();
    if (eng->last_swept_ms != 0 && now - eng->last_swept_ms < eng->opt.poll_ms)
        return;
    eng->last_swept_ms = now;
    int64_t total = 0;
    for (int i = 0; i < SWEEP_PAGES_MAX; i++) {
        struct sweep_unit u = {.after = eng->sweep_after};
        struct bb_error e;
        if (store_run(eng->store, STORE_WRITE, sweep_work, &u, &e) != ERR_OK) {
            log_error_limited(1, "saga.sweep_failed", "detail=%s", e.detail);
            break;
        }
        total += u.stuck;
        bb_strlcpy(eng->sweep_after, u.last, sizeof eng->sweep_after);
        if (u.last[0] == '\0')
            break;
    }
    if (total > 0)
        log_info("saga.swept", "stranded=%lld", (long long)total);
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
        struct start_batch b = {.eng = eng, .pool = atomic_load(&eng->pool)};
        struct bb_error e;
        do {
            if (store_run(eng->store, STORE_WRITE, start_work, &b, &e) != ERR_OK) {
                log_error_limited(1, "saga.start_failed", "detail=%s", e.detail);
                metrics_add(&M_START_FAILED, 1);
                break;
            }
            for (size_t d = 0; d < g_n_defs; d++) {
                if (b.rejected[d] > 0)
                    metrics_add(&M_BAD_START, (double)b.rejected[d], g_defs[d]->type);
            }
            /* On through a backlog from there; each round starts over. */
            memcpy(b.after, b.last, sizeof b.after);
            if (b.claimed > 0)
                log_debug("saga.started", "events=%lld sagas=%lld", (long long)b.claimed,
                          (long long)b.started);
        } while (b.claimed >= START_BATCH);
        prune(eng);
        sweep(eng);
        pthread_mutex_lock(&eng->mu);
        if (eng->stopping || eng->wake)
            continue;
        int64_t deadline = bb_mono_ms() + eng->opt.poll_ms;
        while (!eng->stopping && !eng->wake && bb_mono_ms() < deadline)
            bb_cond_wait_ms(&eng->cv, &eng->mu, deadline - bb_mono_ms());
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
    if (eng->opt.unit_batch <= 0)
        eng->opt.unit_batch = 32;
    if (eng->opt.unit_batch > SAGA_UNIT_BATCH_MAX)
        eng->opt.unit_batch = SAGA_UNIT_BATCH_MAX;
    pthread_mutex_init(&eng->mu, NULL);
    pthread_mutex_init(&eng->carried_mu, NULL);
    eng->carried = xcalloc(CARRIED_SLOTS, sizeof *eng->carried);
    if (eng->opt.unit_batch > 1) {
        struct bb_combiner_options co = {.leaders = UNIT_LEADERS_MAX,
                                         .batch_max = (size_t)eng->opt.unit_batch,
                                         .waiting_max = UNIT_WAITING_MAX,
                                         .same = same_kind,
                                         .run = lead,
                                         .ctx = eng,
                                         .on_waiting = units_waiting};
        eng->combiner = bb_combiner_create(&co);
    }
    bb_cond_init_mono(&eng->cv);
    if (r)
        job_registry_add(r, SAGA_HANDLER, saga_job, eng);
    *out = eng;
    return ERR_OK;
}

void
saga_engine_run_here(struct saga_engine *eng, struct job_pool *pool)
{
    atomic_store(&eng->pool, pool);
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
    if (!eng->opt.ignore_wakeups)
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
    for (size_t i = 0; i < CARRIED_SLOTS; i++)
        if (eng->carried[i].job_id != 0)
            saga__instance_deinit(&eng->carried[i].in);
    free(eng->carried);
    pthread_mutex_destroy(&eng->carried_mu);
    pthread_mutex_destroy(&eng->mu);
    pthread_cond_destroy(&eng->cv);
    bb_combiner_destroy(eng->combiner);
    free(eng);
    /* Its definitions may go with it (a checkout saga's is freed with it):
     * an engine made later, a test's, adds its own. */
    g_n_defs = 0;
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

/* The query parameters each route takes (NULL: none; the server refuses
 * any other, see struct http_route). */
static const char *const LIST_QUERY[] = {"type",  "state", "correlation_id",
                                         "after", "limit", NULL}; /* GET /sagas */

size_t
saga_routes(struct saga_engine *eng, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"GET", "/sagas", handle_list, eng, false, LIST_QUERY},
        {"GET", "/sagas/{saga_id}", handle_get, eng, false, NULL},
        {"POST", "/sagas/{saga_id}/retry", handle_retry, eng, false, NULL},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}
