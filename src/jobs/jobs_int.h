/*
 * jobs_int.h: shared inside src/jobs only.
 */
#ifndef BB_JOBS_INT_H
#define BB_JOBS_INT_H

#include "jobs/jobs.h"

/* Channel announcing new ready work; payload: the queue name. */
#define JOBS__CHANNEL "bb_job_ready"
/* A running job was cancelled (payload: its id): whoever runs it stops. */
#define JOBS__CANCEL_CHANNEL "bb_job_cancel"

/* Parse a job spec from a JSON request body (POST /jobs, batch items, the
 * job part of a schedule). `prefix` ("", "jobs[3].") goes before field
 * names in errors. Strings point into `body` or `arena`. Cron/interval
 * fields are reported through *recurring (NULL: refused). */
struct jobs__recurring {
    bool present;
    const char *cron;
    const char *tz;
    int64_t interval_ms;
    const char *name;
};
enum err jobs__spec_from_json(const json_t *body, const struct job_registry *reg,
                              int64_t payload_limit, int64_t now_ms, const char *prefix,
                              struct bb_arena *arena, struct job_spec *spec,
                              struct jobs__recurring *recurring, struct bb_error *e);

/* Store helpers for the workers (job_store.c). */
/* Names of the queues not paused that have a concurrency limit (heap array;
 * jobs__free_names). */
enum err jobs__limited_queues(struct store_conn *c, char ***names, size_t *n, struct bb_error *e);
/* Claim for the embedded workers from every queue not paused and without a
 * concurrency limit, within `queues_json` (a JSON array of names; NULL or []
 * for all): best priority first, then oldest, in one statement. The lease
 * is each job's max_duration plus a second. */
enum err jobs__claim_unlimited(struct store_conn *c, const char *queues_json, const char *worker,
                               int64_t max, int64_t now_ms, struct job_lease **leases, size_t *n,
                               struct bb_error *e);
void jobs__free_names(char **names, size_t n);
/* Hand-over (job_submit_many_here): room in `p` for up to n jobs of
 * `queue`, kept until jobs__pool_adopt (0: the pool does not serve the
 * queue here, is full or is stopping); *worker gets the pool's name. */
size_t jobs__pool_reserve(struct job_pool *p, const char *queue, size_t n, const char **worker);
/* After the commit: run `leases` (consumed), giving back the room of the
 * `reserved` slots; leases NULL: the transaction rolled back, only give
 * the room back. */
void jobs__pool_adopt(struct job_pool *p, struct job_lease *leases, size_t n_leases,
                      size_t reserved);
/* The earliest run_at of a pending job later than now (0: none). */
enum err jobs__next_due(struct store_conn *c, int64_t now_ms, int64_t *next_ms, struct bb_error *e);

/* Handlers (job_handlers.c). */
job_handler_fn *jobs__registry_find(const struct job_registry *r, const char *name, void **ctx);

/* The exec handler (job_exec.c): commands from the directories in `dirs`
 * (NULL-terminated, absolute, resolved at creation). */
struct jobs__exec;
enum err jobs__exec_create(const char *const *dirs, struct jobs__exec **out, struct bb_error *e);
void jobs__exec_destroy(struct jobs__exec *x);
/* Is `target` a command this process may run ({"argv", "env",
 * "permanent_exit_codes"})? Errors name target.* fields. */
enum err jobs__exec_check_target(const struct jobs__exec *x, const json_t *target,
                                 struct bb_error *e);
/* The handler; its registration context is the struct jobs__exec. */
enum job_verdict jobs__exec_handle(struct job_run *run);

/* Metrics, counted by callers after their transaction commits. */
void jobs__metrics_register(void);
/* The submitted-jobs counter (by queue), counted at commit by the store. */
struct metrics_def *jobs__metric_submitted_def(void);
/* A started job's queue latency: from when it became ready to `now_ms`.
 * Ready is its run_at (a retry's or a redrive's sets it anew), or its
 * submission when that came later: a run_at in the past, or a schedule's
 * fire made late, does not count the time before the job existed. */
double jobs__queue_latency_s(const struct job_lease *l, int64_t now_ms);
void jobs__metric_started(const char *queue, double queue_latency_s);
void jobs__metric_finished(const char *queue, enum job_outcome outcome, double duration_s);
void jobs__metric_stale(const char *what);
/* The same two, counted when `c`'s open transaction commits (not at all
 * if it rolls back): for the pull API, whose claims and reports are the
 * transaction's own work. */
void jobs__metric_started_at_commit(struct store_conn *c, const char *queue,
                                    double queue_latency_s);
void jobs__metric_finished_at_commit(struct store_conn *c, const char *queue,
                                     enum job_outcome outcome, double duration_s);
/* Rescues, by queue and kind; counted at commit by job_rescue_expired. */
struct metrics_def *jobs__metric_rescued_def(void);
struct metrics_def *jobs__metric_key_rate_parked_def(void);
void jobs__metric_pruned(int64_t n);
void jobs__metric_depth(const char *queue, const char *state, int64_t n);
/* Dead jobs without a fingerprint (they died before version 4 kept them)
 * get theirs, 500 at a time: the data step of that migration. */
BB_WUR enum err jobs__fingerprint_dead_jobs(struct store_conn *c, struct bb_error *e);
/* The largest dead-letter groups (job_dead_groups_json's "groups") as a
 * gauge; those no longer among them drop out. */
enum { JOBS__DEAD_GROUPS_SHOWN = 20 };
void jobs__metric_dead_groups(const json_t *groups);

#endif /* BB_JOBS_INT_H */
