/*
 * saga: durable multi-step workflows with compensation, executed as jobs.
 *
 * A saga definition is an ordered list of steps, each an action and a
 * compensation (C functions, registered by the definition's type). An
 * instance is a row (type, state, current step, data, retry count, next
 * retry time, version, the job that runs it) with a timeline of every
 * step's outcome. Steps run in jobs of the "sagas" queue (handler "saga"),
 * so they inherit leases and crash recovery: a worker that dies mid-step
 * leaves its lease to expire and the step runs again. Every transition (the
 * next step, a retry, the turn to compensation, the end) is a
 * compare-and-set on the instance's version that records the outcome, in
 * the transaction of the step's own writes when it has them; a next step
 * that may run at once stays with the job that ran this one (its runner goes
 * straight on while the lease has time left), a retry's backoff gets a new
 * job. A job that is not the instance's current one does nothing.
 *
 * States: RUNNING -> COMPLETED, or RUNNING -> COMPENSATING -> FAILED, or
 * COMPENSATING -> STUCK when a compensation keeps failing, or RUNNING or
 * COMPENSATING -> STUCK when no job drives it any more (its job dead after
 * SAGA_JOB_ATTEMPTS, cancelled or purged: the starter's sweep finds it).
 * A person acts: POST /sagas/{id}/retry goes on from where it stopped. A
 * step that asks for a retry runs again after the "sagas" queue's backoff
 * (defaults 1 s, 4 s, 16 s, 64 s) until the queue's max_attempts (5);
 * after the last, or on a permanent failure, the compensations run in
 * reverse order from the last step that succeeded (or from the failed step
 * itself when its definition says it may have left something behind).
 *
 * Steps must be idempotent: an action may run again after a crash. The
 * engine hands each a key derived from the instance and the step.
 *
 * Starting: a definition names the outbox event type that starts it; a
 * starter thread claims such events (FOR UPDATE SKIP LOCKED on PostgreSQL),
 * makes one instance per event's aggregate and marks the event handled, in
 * one transaction. It wakes on a notification (saga_announce: LISTEN/NOTIFY
 * on PostgreSQL, in process on SQLite) and polls as a fallback.
 */
#ifndef BB_SAGA_H
#define BB_SAGA_H

#include "base/base.h"
#include "http/http.h"
#include "jobs/jobs.h"
#include "store/store.h"

enum {
    SAGA_ID_LEN = 36, /* a UUIDv7 */
    SAGA_STEPS_MAX = 16,
    SAGA_REASON_MAX = 200,
};

enum saga_state { SAGA_RUNNING, SAGA_COMPENSATING, SAGA_COMPLETED, SAGA_FAILED, SAGA_STUCK };
const char *saga_state_name(enum saga_state s);
bool saga_state_from_name(const char *name, enum saga_state *out);

/* A step's verdict. */
enum saga_outcome {
    SAGA_STEP_OK,
    SAGA_STEP_RETRY, /* transient: try again after the backoff */
    SAGA_STEP_FAIL,  /* permanent: compensate now (a compensation: STUCK) */
};

/*
 * What an outside action leaves for the transaction that records its
 * result, so that both commit together (a payment's outcome with the
 * saga's move): `fn` writes args[0..n-1] in c, one per instance (several
 * when the unit is batched; `fn` is the same for all), and again whenever
 * that transaction runs again; `drop` frees an arg once it is recorded or
 * given up. When `fn` fails, nothing of the unit commits and the job runs
 * the step again, after the job engine's backoff.
 */
typedef enum err saga_record_fn(struct store_conn *c, void *const *args, size_t n,
                                struct bb_error *e);
struct saga_record {
    saga_record_fn *fn; /* NULL: nothing to write */
    void *arg;
    void (*drop)(void *arg);
};

/* What a step sees. */
struct saga_step_run {
    const char *saga_id;
    const char *type;
    const char *step;     /* the step's name */
    bool compensating;    /* running the compensation */
    const char *failure;  /* compensating: why the saga failed ("out of stock") */
    const char *key;      /* "saga:{id}:{step}" ("...:undo" for a compensation) */
    json_t *data;         /* the instance's data: read it; set results in it */
    struct store_conn *c; /* in-transaction steps: the open transaction; else NULL */
    struct store *store;
    void *ctx;           /* the definition's */
    int64_t attempt;     /* 1 on the first run of this step */
    int64_t job_id;      /* the job running the step */
    int64_t lease_token; /* the job's lease token: (job_id, lease_token) names the run */
    int64_t held;        /* what `hold` took for this run (a lock's token); 0: nothing */
    /* The trace the saga carries on (its start event's); NULL: none. A step
     * runs with it as its thread's log context, so what it writes alone
     * carries it; a batch action gives each run's to what it writes. */
    const char *traceparent;
    /* The worker pool running saga jobs in this process (NULL: none): a
     * job a step submits may run there at once (job_submit_many_here). */
    struct job_pool *pool;
    /* A failing step says why, for people (`reason`, e.g. "out of stock")
     * and for operators (`e`). */
    char reason[SAGA_REASON_MAX + 1];
    struct saga_record record; /* an outside action's, whatever its verdict */
    /* An `at_once` step: what the outside step before it left to record,
     * which is not in the store yet (NULL: that step was recorded first,
     * or left nothing). */
    const struct saga_record *before;
};
typedef enum saga_outcome saga_step_fn(struct saga_step_run *run, struct bb_error *e);
/*
 * The batch form of an in-transaction action: what `action` does for each
 * of runs[0..n-1] (every run's c is the one transaction), with as few
 * statements as it can for all of them together. out[i] is runs[i]'s
 * verdict, errors[i] its error for operators when not OK. A run it fails
 * must have written nothing: decide before writing. Returning an error
 * rolls the whole transaction back, and each instance then runs its unit
 * alone (the plain `action`).
 */
typedef enum err saga_batch_fn(struct saga_step_run **runs, size_t n, enum saga_outcome *out,
                               struct bb_error *errors, struct bb_error *e);
/* Take (into *held) and give back what an outside step holds while it runs
 * (a lock), in run->c. */
typedef enum err saga_hold_fn(struct saga_step_run *run, int64_t *held, struct bb_error *e);
typedef void saga_unhold_fn(struct saga_step_run *run, int64_t held);
/* Their batch forms, for the instances of a batched unit: held[i] what
 * runs[i] took (0: nothing) or gives back. */
typedef enum err saga_hold_batch_fn(struct saga_step_run **runs, size_t n, int64_t *held,
                                    struct bb_error *e);
typedef void saga_unhold_batch_fn(struct saga_step_run **runs, const int64_t *held, size_t n);

struct saga_step_def {
    const char *name;
    saga_step_fn *action;
    saga_step_fn *compensate;    /* NULL: nothing to undo */
    bool in_txn;                 /* action and compensation run in the transition's transaction */
    saga_batch_fn *action_batch; /* in_txn only, may be NULL: the action for many instances */
    bool undo_on_failure;        /* a failed action may have left something: compensate it too */
    /* An outside step that holds something while it runs: `hold` takes it
     * in the transaction that makes the step next (when the same runner
     * goes straight on to it), `unhold` gives it back in the one that
     * records the step; neither needs a transaction of its own. Between
     * two steps with the same `hold` it is taken again, not given back (a
     * lock's re-entrant acquire renews it). What `hold` sets in
     * run->data is written with the unit that took it. A run that finds
     * run->held 0 (a rescued job, say) takes it itself and sets
     * run->held. Both may be NULL. */
    saga_hold_fn *hold;
    saga_unhold_fn *unhold;
    saga_hold_batch_fn *hold_batch; /* may be NULL: `hold` for each */
    saga_unhold_batch_fn *unhold_batch;
    /* An outside action that follows an outside action: it runs as soon as
     * that one succeeded, before that one's result is recorded, and both
     * results are recorded in one unit (one transaction fewer). It holds
     * what that one held (`hold` is not taken again in between) and sees
     * that one's record as run->before, since the store has not got it. A
     * crash before the unit commits runs both again. */
    bool at_once;
};

/* The ends of instances, in the transaction that records them (several
 * when a batched unit ends several): ends[i] of saga_ids[i], its data,
 * reasons[i] (NULL unless it FAILED) and traceparents[i], the trace of the
 * job that ended it, carried on from the instance's start (NULL: none).
 * It runs, like all store work, on a store thread, which carries no trace
 * of its own (and a batch's instances came from different requests): what
 * it writes for an instance carries that one's trace if it says so. What
 * it writes commits once per instance: COMPLETED and FAILED are never
 * left, and every move is a compare-and-set on the instance's version in
 * the transaction that calls this. */
typedef enum err saga_end_fn(struct store_conn *c, const char *const *saga_ids,
                             const enum saga_state *ends, const json_t *const *data,
                             const char *const *reasons, const char *const *traceparents, size_t n,
                             void *ctx, struct bb_error *e);
/* The instance's data from the starting event's data; the event's
 * aggregate id correlates (one instance per type and aggregate). */
typedef enum err saga_start_fn(const json_t *event_data, const char *aggregate_id, json_t **data,
                               void *ctx, struct bb_error *e);
/* Instances deleted after the retention (their data), in the transaction
 * that deletes them: delete what they kept outside their rows. */
typedef enum err saga_prune_fn(struct store_conn *c, const json_t *const *data, size_t n, void *ctx,
                               struct bb_error *e);
/* A starting event nothing can start from (saga_start_fn refused it, or
 * its data is not JSON), in the transaction that marks it handled: end
 * what waited for the saga (`why` says what was wrong, for operators;
 * `traceparent` is the event's, NULL: none). What it writes commits
 * with the mark, so once per event. */
typedef enum err saga_reject_fn(struct store_conn *c, const char *aggregate_id, const char *why,
                                const char *traceparent, void *ctx, struct bb_error *e);

struct saga_def {
    const char *type; /* "checkout" */
    const struct saga_step_def *steps;
    size_t n_steps;
    const char *start_event; /* outbox event type that starts one; NULL: none */
    saga_start_fn *from_event;
    saga_reject_fn *on_reject; /* may be NULL */
    saga_end_fn *on_end;       /* may be NULL */
    saga_prune_fn *on_prune;   /* may be NULL */
    void *ctx;
};

/*
 * Batched units: instances whose next unit of work is the record of an
 * outside step's success and/or in-transaction actions that all have an
 * `action_batch` wait for one another briefly, while earlier units hold
 * the connections, and run together in one transaction with others of the
 * same kind (definition, step, state): one UPDATE of their rows, one
 * INSERT of their timelines, one call of each step's batch form. Up to
 * `unit_batch` instances per transaction (1: every unit alone).
 */
enum { SAGA_UNIT_BATCH_MAX = 64 };

struct saga_engine_options {
    int64_t poll_ms;      /* the starter's fallback poll (default 5000) */
    int64_t unit_batch;   /* instances per batched unit, 1..SAGA_UNIT_BATCH_MAX (0: 32) */
    bool run_starter;     /* claim starting events in this process */
    bool ignore_wakeups;  /* the starter finds events by its poll alone (tests the fallback) */
    int64_t retention_ms; /* the starter deletes sagas this long finished (0: never) */
};
struct saga_engine;
/* Registers the job handler "saga" in `r` (before workers start). */
BB_WUR enum err saga_engine_create(struct store *s, struct job_registry *r,
                                   const struct saga_engine_options *o, struct saga_engine **out,
                                   struct bb_error *e);
/* The pool this process runs saga jobs in (NULL: none, or no longer): the
 * first job of an instance the starter makes, and the jobs steps submit,
 * are handed to it at commit instead of waiting for its claim. Set it after
 * the pool starts, and back to NULL before it stops. */
void saga_engine_run_here(struct saga_engine *eng, struct job_pool *pool);
/* Add a definition (before saga_engine_start); `def` must outlive the engine. */
void saga_engine_add(struct saga_engine *eng, const struct saga_def *def);
/* Create the "sagas" queue if missing and start the starter thread. */
BB_WUR enum err saga_engine_start(struct saga_engine *eng, struct bb_error *e);
void saga_engine_stop(struct saga_engine *eng);
/* Stop and free it; the definitions added to it are forgotten (one engine
 * at a time in a process), so they may be freed after it. */
void saga_engine_destroy(struct saga_engine *eng);

/*
 * Wake starters (in every process on PostgreSQL) after a starting event
 * committed. Cheap and coalesced: a burst of calls makes one notification,
 * sent after the caller's commit by a thread of its own.
 */
struct saga_announcer;
struct saga_announcer *saga_announcer_create(struct store *s);
void saga_announce(struct saga_announcer *a);
void saga_announcer_destroy(struct saga_announcer *a);

/* Start an instance inside the caller's transaction: one per (type,
 * correlation id); *created false when it existed (*id is that one's). */
BB_WUR enum err saga_start(struct store_conn *c, const struct saga_def *def,
                           const char *correlation_id, const json_t *data, int64_t now_ms,
                           char id[SAGA_ID_LEN + 1], bool *created, struct bb_error *e);

/* saga_start for n instances of `def` at once, one statement per table:
 * ids[i] and created[i] as saga_start answers for correlation_ids[i]
 * (distinct) and data[i]. */
BB_WUR enum err saga_start_many(struct store_conn *c, const struct saga_def *def,
                                const char *const *correlation_ids, const json_t *const *data,
                                size_t n, int64_t now_ms, char (*ids)[SAGA_ID_LEN + 1],
                                bool *created, struct bb_error *e);

/* {saga_id, type, correlation_id, state, step, steps:[names], data, retries,
 * next_retry_at, reason, created_at, updated_at, timeline:[{step, phase,
 * outcome, attempt, error, started_at, ended_at, duration_ms}]}. */
BB_WUR enum err saga_get_json(struct store_conn *c, const char *id, json_t **out,
                              struct bb_error *e);
struct saga_filter {
    const char *type;  /* NULL: any */
    const char *state; /* NULL: any */
    const char *correlation_id;
    const char *after; /* id to page after */
    int64_t limit;
};
/* {"sagas":[...without timeline], "next_after": id|null}, id order. */
BB_WUR enum err saga_list_json(struct store_conn *c, const struct saga_filter *f, json_t **out,
                               struct bb_error *e);
/* A STUCK instance goes on from where it stopped (new job): it
 * compensates again, or, when it never failed (it was stranded while
 * RUNNING: it has no reason), runs its step again. ERR_CONFLICT in any
 * other state. */
BB_WUR enum err saga_retry(struct store_conn *c, const char *id, int64_t now_ms, json_t **out,
                           struct bb_error *e);

/*
 * Sagas stranded out of sight: among up to `limit` RUNNING or COMPENSATING
 * instances after id `after` ("": from the first), in id order, each whose
 * job no longer drives it (dead after its last attempt, cancelled,
 * completed, or deleted by a purge) becomes STUCK, with the reason in its
 * error, so that it is listed, counted and retried by hand (saga_retry).
 * A saga whose step ends meanwhile is left alone: its move changed its
 * version, which the change to STUCK compares. *last gets the id to go on
 * after ("" when the page was the last), *stuck how many became STUCK.
 */
BB_WUR enum err saga_sweep_stranded(struct store_conn *c, const char *after, int64_t limit,
                                    int64_t now_ms, char last[SAGA_ID_LEN + 1], int64_t *stuck,
                                    struct bb_error *e);

/*
 * Delete up to `limit` COMPLETED or FAILED instances (with their timelines)
 * created and last moved before `before_ms`, COMPLETED ones first, oldest
 * first in each; *deleted gets how many. STUCK, RUNNING and COMPENSATING
 * instances are never deleted.
 */
BB_WUR enum err saga_prune_finished(struct store_conn *c, int64_t before_ms, int64_t limit,
                                    int64_t *deleted, struct bb_error *e);

const struct store_migration *saga_migrations(size_t *n);

/* GET /sagas, GET /sagas/{id}, POST /sagas/{id}/retry. */
size_t saga_routes(struct saga_engine *eng, struct http_route *out, size_t max);
/* saga_stuck gauge and the like, before a scrape. */
BB_WUR enum err saga_metrics_refresh(struct store_conn *c, struct bb_error *e);

#endif /* BB_SAGA_H */
