/*
 * jobs: durable jobs: queues, schedules (now, at, delay, cron, interval),
 * fenced leases, retries with backoff, dead letters, attempt history, and the
 * workers that run them.
 *
 * A job is a row. Lifecycle (job_can_transition):
 *   pending   waiting to run, at or after run_at (a retry waits here too)
 *   running   claimed under a lease: `lease_token` fences the holder
 *   completed finished successfully
 *   cancelled stopped by a person before it finished
 *   dead      failed its last attempt (the dead-letter queue); redrivable
 * Delivery is at-least-once: a lease that runs out is rescued (the job goes
 * back to pending, or to dead after its last attempt), and a completion,
 * heartbeat or failure carrying a lease token that is no longer current is
 * refused (ERR_STALE_TOKEN). lease_token grows by one on every claim of a
 * job, so "job:<id>" with it is a fencing key/token pair other modules can
 * check (lock_fence_check).
 *
 * The store functions run inside the caller's open transaction (so business
 * rows and their jobs commit or roll back together) and take `now_ms` from
 * the caller.
 */
#ifndef BB_JOBS_H
#define BB_JOBS_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

enum {
    JOB_NAME_MAX = 100, /* queue, handler and schedule names */
    JOB_UNIQUE_KEY_MAX = 200,
    JOB_CONCURRENCY_KEY_MAX = 200,
    JOB_WORKER_MAX = 200,  /* bytes of a worker's name (a claim's "worker") */
    JOB_KEYED_SCAN = 1000, /* ready jobs a claim of a keyed queue looks at */
    JOB_ERROR_MAX = 2000,  /* bytes of an attempt's error kept */
    JOB_PRIORITY_MIN = -1000,
    JOB_PRIORITY_MAX = 1000,
    JOB_ATTEMPTS_MAX = 1000,
    JOB_LEASE_MIN_MS = 100,
    JOB_LEASE_MAX_MS = 86400000,
    JOB_TAGS_MAX = 20,
    JOB_RATE_MAX = 1000000,         /* starts per window */
    JOB_RATE_WINDOW_MAX = 86400000, /* ms */
};

enum job_state { JOB_PENDING, JOB_RUNNING, JOB_COMPLETED, JOB_CANCELLED, JOB_DEAD };
enum { JOB_STATE_COUNT = 5 };

const char *job_state_name(enum job_state s);
bool job_state_parse(const char *text, enum job_state *out);
/* The lifecycle table. */
bool job_can_transition(enum job_state from, enum job_state to);
bool job_is_terminal(enum job_state s);

/* Retry backoff: delay before retry n (1 = after the first failure) is
 * min(cap, base * factor^(n-1)), moved by up to ±jitter percent. The
 * defaults give 1 s, 4 s, 16 s, 64 s. */
struct job_backoff {
    int64_t base_ms;
    int64_t factor_milli; /* 4000 = ×4 */
    int64_t cap_ms;
    int64_t jitter_pct; /* 0..100 */
};
void job_backoff_defaults(struct job_backoff *b);
/* `rand01` in [0, 1) picks the jitter (tests pass fixed values). */
int64_t job_backoff_delay_ms(const struct job_backoff *b, int retry, double rand01);

/* Queue names, handler names, schedule names: 1..100 of A-Z a-z 0-9 . _ : - */
bool job_name_is_valid(const char *name);
/* Handlers named "external" or "external:..." are run by workers outside
 * Backbone, which claim them over HTTP (the pull API). */
bool job_handler_is_external(const char *handler);

/* Dead letters group by their error: the pattern is the error with what
 * varies between occurrences masked (UUIDs as <uuid>, long hex strings as
 * <hex>, decimals and numbers of four digits or more as <n>; short numbers
 * such as HTTP statuses and exit codes stay), whitespace collapsed, at most
 * JOB_ERROR_PATTERN_MAX bytes. The fingerprint is 16 hex digits of the
 * SHA-256 of the handler and the pattern. */
enum { JOB_ERROR_PATTERN_MAX = 200, JOB_FINGERPRINT_LEN = 16 };
void job_error_pattern(const char *error, char *out, size_t cap);
void job_error_fingerprint(const char *handler, const char *error,
                           char out[JOB_FINGERPRINT_LEN + 1]);
bool job_fingerprint_is_valid(const char *text);

/* ---- cron ---------------------------------------------------------------------- */

/* A parsed cron expression: 5 fields (minute hour day-of-month month
 * day-of-week) or 6 (seconds first). Fields take a star, numbers, ranges
 * a-b, steps (a star or a range, then /n), lists, and month/day names (JAN,
 * MON), or a macro (@hourly, @daily, @weekly, @monthly, @yearly). When both
 * day fields are restricted, either may match (Vixie cron). */
struct job_cron {
    uint64_t second; /* bit i set: second i matches */
    uint64_t minute;
    uint32_t hour;
    uint32_t mday;  /* bits 1..31 */
    uint16_t month; /* bits 1..12 */
    uint8_t wday;   /* bits 0..6, Sunday = 0 */
    bool mday_star;
    bool wday_star;
};

/* ERR_INVALID with the reason (the field and token at fault). */
BB_WUR enum err job_cron_parse(const char *expr, struct job_cron *out, struct bb_error *e);
/* Is `tz` a time zone in the system's tzdata ("UTC", "Europe/Paris")? */
bool job_tz_is_valid(const char *tz);
/*
 * The first fire time strictly after `after_ms`, in time zone `tz`. Local
 * times that do not exist (a spring-forward gap) are skipped; times that
 * occur twice (fall back) fire once. ERR_INVALID when nothing matches in
 * the next 5 years (say, 30 February).
 */
BB_WUR enum err job_cron_next(const struct job_cron *cron, const char *tz, int64_t after_ms,
                              int64_t *next_ms, struct bb_error *e);
/*
 * The latest fire time at or before `at_ms` and not before `floor_ms`, by
 * the same rules (a time that occurs twice fires at its first instant),
 * found by walking the calendar back, not by stepping through fires. While
 * clocks show an hour for the second time, fires of that hour later than
 * the clock shows but already past (their first instant) are not seen:
 * job_cron_next from the answer finds them. ERR_NOT_FOUND when none.
 */
BB_WUR enum err job_cron_prev(const struct job_cron *cron, const char *tz, int64_t at_ms,
                              int64_t floor_ms, int64_t *prev_ms, struct bb_error *e);

/* ---- queues ------------------------------------------------------------------------ */

/* A queue's settings; jobs submitted to it inherit the retry policy unless
 * they bring their own. */
struct job_queue {
    char name[JOB_NAME_MAX + 1];
    bool paused;
    int64_t concurrency;     /* most running jobs across all workers; 0: no limit */
    int64_t key_concurrency; /* most running jobs per concurrency_key; 0: no limit */
    int64_t max_attempts;
    struct job_backoff backoff;
    int64_t lease_ms; /* default lease for embedded workers */
    /* A rate limit on starts across all workers: a token bucket holding up
     * to rate_max starts, refilled at rate_max per rate_per_ms (0: none). */
    int64_t rate_max;
    int64_t rate_per_ms;
    /* The same per concurrency_key: each key's own bucket of key_rate_max
     * starts, refilled at key_rate_max per key_rate_per_ms (0: none). */
    int64_t key_rate_max;
    int64_t key_rate_per_ms;
};

void job_queue_defaults(struct job_queue *q, const char *name);
/* Has it a limit its claims must honour one claimer at a time (concurrency,
 * rate, per key)? */
bool job_queue_is_limited(const struct job_queue *q);
/* Create or update (idempotent). */
BB_WUR enum err job_queue_put(struct store_conn *c, const struct job_queue *q, int64_t now_ms,
                              struct bb_error *e);
BB_WUR enum err job_queue_get(struct store_conn *c, const char *name, struct job_queue *out,
                              struct bb_error *e);
BB_WUR enum err job_queue_set_paused(struct store_conn *c, const char *name, bool paused,
                                     int64_t now_ms, struct bb_error *e);
/* Every queue (or `only` that one) as JSON ({name, paused, concurrency,
 * ..., depth:{ready, scheduled, parked, running, dead}}), name order. */
BB_WUR enum err job_queue_list_json(struct store_conn *c, const char *only, int64_t now_ms,
                                    json_t **out, struct bb_error *e);

/* ---- submitting ------------------------------------------------------------------------- */

/* What a submit asks for. Strings are borrowed for the call. */
struct job_spec {
    const char *queue;    /* default "default" */
    const char *handler;  /* required */
    const char *payload;  /* JSON text; NULL means {} */
    const char *target;   /* JSON text: what "http" posts to, what "exec" runs; may be NULL */
    int64_t run_at_ms;    /* 0: now */
    int64_t priority;     /* higher runs first */
    int64_t max_attempts; /* 0: the queue's */
    bool has_backoff;     /* else the queue's */
    struct job_backoff backoff;
    int64_t backoff_cap_ms;  /* > 0: the backoff's cap is at most this (a queue's too) */
    int64_t max_duration_ms; /* 0: the queue's lease */
    const char *unique_key;  /* NULL: none */
    /* Jobs of one key run at most the queue's key_concurrency at once (a
     * customer, a tenant, an API account); NULL: none. */
    const char *concurrency_key;
    const char *tags;         /* JSON array text; NULL: [] */
    const char *schedule;     /* the schedule that fired it, or NULL */
    int64_t scheduled_for_ms; /* that fire's time */
    const char *traceparent;  /* W3C trace context its runs carry on, or NULL */
};

/*
 * Enqueue inside the caller's transaction (transactional enqueue: the job
 * exists if and only if the transaction commits). Checks the queue exists.
 * A unique_key already held by a pending or running job returns that job
 * with *created = false. Announces the job to waiting workers at commit.
 */
BB_WUR enum err job_submit(struct store_conn *c, const struct job_spec *spec, int64_t now_ms,
                           int64_t *id, bool *created, struct bb_error *e);

/* Enqueue many jobs at once, inside the caller's transaction: one
 * statement per queue (jobs with a unique key go one by one). On failure
 * *failed_at is the spec at fault (a missing queue, say). */
BB_WUR enum err job_submit_many(struct store_conn *c, const struct job_spec *specs, size_t n,
                                int64_t now_ms, int64_t *ids, bool *created, size_t *failed_at,
                                struct bb_error *e);

struct job_pool;
/*
 * job_submit_many, and each job due now in a queue `pool` serves (not
 * paused, without a concurrency limit) runs in `pool` right after the
 * commit while the pool has room for it: it is inserted already leased to
 * the pool's worker (its first attempt), so no claim and no wake-up are
 * needed. Should this process die first, the lease runs out and the job is
 * rescued as any claimed job is. pool NULL: job_submit_many.
 */
BB_WUR enum err job_submit_many_here(struct store_conn *c, struct job_pool *pool,
                                     const struct job_spec *specs, size_t n, int64_t now_ms,
                                     int64_t *ids, bool *created, size_t *failed_at,
                                     struct bb_error *e);

/* ---- reading ------------------------------------------------------------------------------- */

/* A job as the API shows it (JSON object), with its attempts when asked. */
BB_WUR enum err job_get_json(struct store_conn *c, int64_t id, bool with_attempts, int64_t now_ms,
                             json_t **out, struct bb_error *e);

struct job_filter {
    const char *queue;       /* NULL: all */
    const char *fingerprint; /* dead jobs of this error fingerprint (NULL: all) */
    bool has_state;
    enum job_state state;
    int64_t after_id; /* page after this id (0: from the start) */
    int64_t limit;
};
/* {"jobs":[...], "next_after": id|null}, newest last (id order). */
BB_WUR enum err job_list_json(struct store_conn *c, const struct job_filter *f, int64_t now_ms,
                              json_t **out, struct bb_error *e);

/* The states of jobs ids[0..n-1] (repeats allowed), in one statement:
 * states[i] when found[i]; found[i] false for an id with no job (never
 * made, or deleted by retention or a purge). */
BB_WUR enum err job_states_many(struct store_conn *c, const int64_t *ids, size_t n,
                                enum job_state *states, bool *found, struct bb_error *e);

/* ---- changing jobs by hand ------------------------------------------------------------------- */

/* Cancel a pending or running job (a running one's lease is revoked: its
 * completion will be refused). ERR_CONFLICT when already finished. */
BB_WUR enum err job_cancel(struct store_conn *c, int64_t id, int64_t now_ms, struct bb_error *e);
/* Run now: a pending job's run_at becomes now; a dead, cancelled or completed
 * job is enqueued again with a fresh set of attempts. ERR_CONFLICT while
 * running, or (field "unique_key", naming the holder) while a pending or
 * running job holds its unique_key. */
BB_WUR enum err job_run_now(struct store_conn *c, int64_t id, int64_t now_ms, struct bb_error *e);
/* Dead letters: redrive every dead job that `m` matches, or delete them.
 * *n gets how many. A redrive leaves dead the jobs whose unique_key a
 * pending or running job holds, and of those sharing a key all but the
 * newest; *skipped gets how many it left. */
struct job_dead_match {
    const char *queue;       /* NULL: all queues */
    const char *fingerprint; /* NULL: every error */
};
BB_WUR enum err job_redrive_dead(struct store_conn *c, const struct job_dead_match *m,
                                 int64_t now_ms, int64_t *n, int64_t *skipped, struct bb_error *e);
BB_WUR enum err job_purge_dead(struct store_conn *c, const struct job_dead_match *m, int64_t *n,
                               struct bb_error *e);
/* Purge dead job `id` with its attempts. ERR_NOT_FOUND when there is no
 * such job, or it is not dead (the detail says which). */
BB_WUR enum err job_purge_dead_one(struct store_conn *c, int64_t id, struct bb_error *e);
/* The dead letters grouped by queue and error fingerprint, largest first:
 * {"groups":[{"queue","fingerprint","handler","error" (the pattern),
 * "sample_error","sample_job_id","count","first_dead_at","last_dead_at"}]}. */
BB_WUR enum err job_dead_groups_json(struct store_conn *c, const char *queue, int64_t limit,
                                     json_t **out, struct bb_error *e);

/* ---- leases ------------------------------------------------------------------------------------
 */

/* A claimed job, as a worker needs it. Strings are heap copies. */
struct job_lease {
    int64_t id;
    char *queue;
    char *handler;
    char *payload;
    char *target;
    int64_t attempt; /* 1 on the first run */
    int64_t attempt_limit;
    int64_t lease_token;
    int64_t lease_expires_at_ms;
    int64_t max_duration_ms;
    int64_t created_at_ms;
    int64_t run_at_ms;
    char *traceparent; /* the submitter's W3C trace context, or NULL */
};
void job_lease_deinit(struct job_lease *l);

/*
 * Claim up to `max` ready jobs of `queue` for `worker`, highest priority
 * first, then oldest run_at. The lease lasts `lease_ms` if that is shorter
 * than each job's max_duration, else (and when it is 0) the max_duration
 * plus a second. `external` picks the pull API's jobs (handler
 * "external...") or the embedded workers'. Honours the queue's pause,
 * concurrency limits (all jobs, and per concurrency_key: then among the
 * JOB_KEYED_SCAN first ready jobs, and a claim left short parks those of
 * full keys until a job of their key stops running), rate limit and
 * per-key rate limit (among the JOB_KEYED_SCAN first ready jobs too: those
 * of a key whose bucket is empty are parked until its next start); when a
 * rate limit held jobs back, *throttled_until_ms (if non-NULL; else 0) is
 * when the next start is allowed. On PostgreSQL concurrent claimers skip
 * each other's rows (FOR UPDATE SKIP LOCKED). *leases is a heap array (free
 * each with job_lease_deinit, then free()).
 */
BB_WUR enum err job_claim(struct store_conn *c, const char *queue, const char *worker,
                          bool external, int64_t max, int64_t lease_ms, int64_t now_ms,
                          struct job_lease **leases, size_t *n, int64_t *throttled_until_ms,
                          struct bb_error *e);
/* The level, in thousandths of a start, at `now_ms` of a token bucket of
 * `max` starts per `per_ms` that was at `milli` at `at_ms` (never above
 * max); and how long from a level until it allows one start (0: now). */
int64_t job_rate_level_milli(int64_t max, int64_t per_ms, int64_t milli, int64_t at_ms,
                             int64_t now_ms);
int64_t job_rate_wait_ms(int64_t max, int64_t per_ms, int64_t milli);
/* Extend a live lease to now + lease_ms (*expires_at_ms: to when it was).
 * `bounded` (the pull API's heartbeats): not past the attempt's
 * max_duration from its start, and refused once that is over, so a job's
 * timeout holds for workers Backbone cannot stop. ERR_STALE_TOKEN when
 * `token` no longer holds the lease. */
BB_WUR enum err job_heartbeat(struct store_conn *c, int64_t id, int64_t token, int64_t lease_ms,
                              bool bounded, int64_t now_ms, int64_t *expires_at_ms,
                              struct bb_error *e);

/* Does `token` still hold job id's lease: is the job running under it? A
 * lease run out but not yet rescued still does (the job's report under it
 * would be taken). A read: nothing changes. */
BB_WUR enum err job_lease_held(struct store_conn *c, int64_t id, int64_t token, bool *held,
                               struct bb_error *e);

/* How an attempt ended. */
enum job_outcome {
    JOB_OUTCOME_COMPLETED,
    JOB_OUTCOME_FAILED,      /* retried while attempts remain */
    JOB_OUTCOME_PERMANENT,   /* no retry: dead at once */
    JOB_OUTCOME_TIMEOUT,     /* ran past max_duration; retried */
    JOB_OUTCOME_EXPIRED,     /* the lease ran out (rescued); retried at once */
    JOB_OUTCOME_INTERRUPTED, /* its worker stopped and handed it back: retried at once,
                              * not counted against max_attempts */
};
const char *job_outcome_name(enum job_outcome o);

struct job_finish {
    int64_t id;
    int64_t token;
    enum job_outcome outcome;
    const char *error; /* for failures; may be NULL */
    /* result */
    enum err rc;          /* ERR_OK, or ERR_STALE_TOKEN when the lease was lost */
    enum job_state state; /* where the job went */
    /* With rc ERR_OK: the job's queue, and when the attempt started (its
     * claim), for the metrics of those who did not time it themselves. */
    char queue[JOB_NAME_MAX + 1];
    int64_t started_at_ms;
};
/*
 * Record the end of attempts: completed, or failed (back to pending after
 * the backoff, or dead after the last attempt). Each entry whose token is
 * stale gets rc = ERR_STALE_TOKEN and changes nothing. One transaction for
 * many jobs (the workers' group commit). `rand01` draws jitter (NULL: a
 * random draw).
 */
BB_WUR enum err job_finish_batch(struct store_conn *c, struct job_finish *items, size_t n,
                                 int64_t now_ms, double (*rand01)(void), struct bb_error *e);
/*
 * For a report job_finish_batch refused as stale: is it a repeat of the
 * report that ended this very lease (a worker that resent it after losing
 * the answer), the job left as that report left it? Then ERR_OK, with
 * f->state the state the report led to (the answer the first one got), and
 * nothing written. Otherwise ERR_STALE_TOKEN (field "token") whose detail
 * says what became of the lease: completed or failed by it already, run out
 * and rescued, cancelled, claimed again, no such job.
 */
BB_WUR enum err job_finish_replay(struct store_conn *c, struct job_finish *f, struct bb_error *e);
/* Rescue jobs whose lease ran out (at most `limit`). *n gets how many. */
BB_WUR enum err job_rescue_expired(struct store_conn *c, int64_t now_ms, int64_t limit, int64_t *n,
                                   struct bb_error *e);
/* Retention, a sweep in id order that needs no index of its own: among the
 * `limit` jobs after id *cursor, delete the completed and cancelled ones
 * that finished before `before_ms`, with their attempts (dead jobs stay
 * until purged). *cursor moves past them, or back to 0 at the table's end
 * or at a job created since `before_ms` (ids follow creation, so none
 * after it can have finished before then); *deleted gets how many went. */
BB_WUR enum err job_prune_finished(struct store_conn *c, int64_t before_ms, int64_t limit,
                                   int64_t *cursor, int64_t *deleted, struct bb_error *e);

/* ---- schedules (cron and fixed intervals) -----------------------------------------------------
 */

struct job_schedule {
    char name[JOB_NAME_MAX + 1];
    char cron[128];      /* empty when interval_ms is set */
    char tz[64];         /* cron's time zone, default UTC */
    int64_t interval_ms; /* 0 when cron is set */
    struct job_spec job; /* what each fire submits (run_at ignored) */
    bool paused;
};

/* Create or replace; computes the next fire time after now. A replace
 * keeps the schedule's paused flag (s->paused sets a new one's). */
struct job_schedule_put_result {
    int64_t next_fire_ms;
    bool created; /* false: it replaced one of that name */
    bool paused;  /* as it is now */
};
BB_WUR enum err job_schedule_put(struct store_conn *c, const struct job_schedule *s, int64_t now_ms,
                                 struct job_schedule_put_result *out, struct bb_error *e);
BB_WUR enum err job_schedule_delete(struct store_conn *c, const char *name, struct bb_error *e);
BB_WUR enum err job_schedule_set_paused(struct store_conn *c, const char *name, bool paused,
                                        int64_t now_ms, struct bb_error *e);
/* {"schedules":[{name, cron|interval_ms, tz, queue, handler, paused,
 * next_fire_at, upcoming:[next n fire times]}]} */
BB_WUR enum err job_schedule_list_json(struct store_conn *c, const char *only, int upcoming,
                                       json_t **out, struct bb_error *e);
/*
 * Fire every schedule due at `now_ms`: one job per fire time, exactly once
 * across any number of processes (the fire advances next_fire_at with a
 * compare-and-set, and (schedule, fire time) is unique among jobs). Fires
 * missed while nothing ran are skipped, not replayed: one job, for the
 * latest missed time. *n gets how many jobs were submitted.
 */
BB_WUR enum err job_schedule_fire_due(struct store_conn *c, int64_t now_ms, int64_t *n,
                                      struct bb_error *e);

/* ---- handlers and workers ----------------------------------------------------------------------
 */

/* What a handler sees. */
struct job_run {
    const struct job_lease *job;
    struct store *store;
    const char *worker;
    void *ctx;                /* the handler's registration context */
    _Atomic bool *cancel;     /* set when the worker stops */
    _Atomic bool revoked;     /* set when the job is cancelled while it runs */
    int64_t deadline_mono_ms; /* the attempt's max_duration ends here */
    struct bb_buf error;      /* the handler writes why it failed */
    /* Set by job_run_recorded: the job's end is in the database already. */
    bool recorded;
    enum err recorded_rc;
};
/* Should a handler stop now (deadline passed, the job cancelled, or the
 * worker stopping)? */
bool job_run_should_stop(const struct job_run *run);

/*
 * A handler whose last act is a write of its own can end its job in that
 * transaction instead of the worker's next one: job_runs_complete_in
 * records the runs' jobs as completed in the caller's open write
 * transaction `c` (rcs[i]: ERR_OK, or ERR_STALE_TOKEN when runs[i]'s lease
 * was lost and nothing changed). Once, and only once, that transaction has
 * committed, the handler calls job_run_recorded(run, rcs[i]) and returns
 * JOB_DONE: the worker then records nothing more. If it does not commit,
 * the handler says nothing and the worker records its verdict as usual.
 */
BB_WUR enum err job_runs_complete_in(struct store_conn *c, struct job_run *const *runs, size_t n,
                                     enum err *rcs, struct bb_error *e);
void job_run_recorded(struct job_run *run, enum err rc);

/* A handler's verdict on one attempt. */
enum job_verdict { JOB_DONE, JOB_RETRY, JOB_FAIL_PERMANENTLY };
typedef enum job_verdict job_handler_fn(struct job_run *run);

/* The fence of the "ledger" handler's writes: JOB_FENCE_PREFIX "{job_id}",
 * checked against the lease token. Reserved: the lock API refuses to take
 * or write these names. */
#define JOB_FENCE_PREFIX "job:"

/* The handlers this process can run, by name. Built in: "noop",
 * "fail" (always retryable failure), "fail_permanently", "sleep" (payload
 * {"ms":N}, honours cancel), "ledger" (records the job once in job_ledger,
 * fenced by the lease: the idempotent handler of the crash tests), "http"
 * (push: POST the payload to target.url) and, when exec_allow names
 * directories, "exec" (run target.argv with the payload on stdin; see
 * job_exec.c). Register before starting workers; read-only afterwards. */
struct job_registry_options {
    const char *http_secret;       /* signs webhook bodies; NULL: unsigned */
    const char *const *exec_allow; /* NULL-terminated directories; NULL: no exec */
};
struct job_registry;
BB_WUR enum err job_registry_create(const struct job_registry_options *o, struct job_registry **out,
                                    struct bb_error *e);
void job_registry_destroy(struct job_registry *r);
void job_registry_add(struct job_registry *r, const char *name, job_handler_fn *fn, void *ctx);
bool job_registry_has(const struct job_registry *r, const char *name);
/* Append the registered names, comma-separated, to `out`. */
void job_registry_names(const struct job_registry *r, struct bb_buf *out);
/* Check a job's target (JSON, NULL when absent) for its handler: "http"
 * needs {"url": "http(s)://..."}, "exec" a command it may run; others take
 * any object. Errors name target.* fields. */
BB_WUR enum err job_registry_check_target(const struct job_registry *r, const char *handler,
                                          const json_t *target, struct bb_error *e);

/* The embedded worker pool. */
struct job_pool_options {
    const char *const *queues; /* NULL-terminated; NULL: every queue */
    int concurrency;           /* jobs run at once */
    int64_t poll_ms;           /* fallback when no wake-up arrives */
    const char *worker_name;   /* default host:pid */
    bool ignore_wakeups;       /* tests: rely on polling alone */
};
struct job_pool;
BB_WUR enum err job_pool_start(struct store *s, const struct job_registry *r,
                               const struct job_pool_options *o, struct job_pool **out,
                               struct bb_error *e);
/* Stop claiming; let running jobs finish until `deadline_ms` (monotonic),
 * then cancel them and hand their leases back (they run again elsewhere).
 * Outcomes already reached are recorded before it returns. False when a
 * handler ignored cancellation: its thread still runs, so the pool is left
 * to the exiting process, and so must be everything the handler may use
 * (the registry, the store). NULL is fine (true). */
bool job_pool_stop(struct job_pool *p, int64_t deadline_mono_ms);

/* The scheduler: rescues expired leases, fires schedules and deletes
 * finished jobs past their retention, in every process that runs it (safe
 * to run many). */
struct job_scheduler_options {
    int64_t tick_ms;      /* default 500 */
    int64_t retention_ms; /* completed/cancelled jobs kept this long; 0: forever */
};
struct job_scheduler;
BB_WUR enum err job_scheduler_start(struct store *s, const struct job_scheduler_options *o,
                                    struct job_scheduler **out, struct bb_error *e);
void job_scheduler_stop(struct job_scheduler *sch);

/* ---- the HTTP service -------------------------------------------------------------------------
 */

struct job_service_options {
    int64_t payload_limit_bytes;
};
struct job_service;
BB_WUR enum err job_service_create(struct store *s, const struct job_registry *r,
                                   const struct job_service_options *o, struct job_service **out,
                                   struct bb_error *e);
size_t job_service_routes(struct job_service *svc, struct http_route *out, size_t max);
/* Answer parked long-poll claims (503) and park no more. */
void job_service_stop_waiting(struct job_service *svc);
void job_service_destroy(struct job_service *svc);
BB_WUR enum err job_metrics_refresh(struct store_conn *c, int64_t now_ms, struct bb_error *e);

const struct store_migration *job_migrations(size_t *n);

#endif /* BB_JOBS_H */
