/* saga_int.h: private to src/saga. */
#ifndef BB_SAGA_INT_H
#define BB_SAGA_INT_H

#include "saga/saga.h"

#define SAGA_QUEUE   "sagas"
#define SAGA_HANDLER "saga"
#define SAGA_CHANNEL "bb_saga_start"
enum {
    SAGA_JOB_ATTEMPTS = 25,     /* a step's job: crashes and database errors only */
    SAGA_STEP_LEASE_MS = 30000, /* a step's job lease */
    SAGA_TYPE_MAX = 64,
};

/* An instance as the engine works on it. */
struct saga_instance {
    char id[SAGA_ID_LEN + 1];
    char type[SAGA_TYPE_MAX + 1];
    char correlation_id[256];
    enum saga_state state;
    int step;
    int64_t version;
    json_t *data;
    int64_t retries;
    char reason[SAGA_REASON_MAX + 1];
    int64_t job_id; /* the job that runs its next step; 0: none */
};

/* What one run of a step came to. */
struct saga_step_result {
    enum saga_outcome outcome;
    const json_t *data; /* the data after the step (NULL: unchanged) */
    const char *reason; /* for people; "" when none */
    const char *error;  /* for operators; NULL when none */
    int64_t started_at_ms;
    const char *traceparent; /* the step job's: the next step's job carries it on */
};

BB_WUR enum err saga__load(struct store_conn *c, const char *id, struct saga_instance *out,
                           bool *found, struct bb_error *e);
/* saga__load for n instances (distinct ids) in one statement: *out[i] and
 * found[i] for ids[i]. */
BB_WUR enum err saga__load_many(struct store_conn *c, const char *const *ids, size_t n,
                                struct saga_instance *const *out, bool *found, struct bb_error *e);
void saga__instance_deinit(struct saga_instance *in);
/* saga_start_many, the first jobs handed to `pool` (job_submit_many_here),
 * and each new instance's first job id in job_ids[i] (0: not created);
 * traceparents[i] (the array or an entry may be NULL) is the trace its
 * step jobs carry on. */
BB_WUR enum err saga__start_many(struct store_conn *c, const struct saga_def *def,
                                 const char *const *correlation_ids, const json_t *const *data,
                                 const char *const *traceparents, size_t n, int64_t now_ms,
                                 struct job_pool *pool, char (*ids)[SAGA_ID_LEN + 1], bool *created,
                                 int64_t *job_ids, struct bb_error *e);
/* The writes of one unit of work, gathered: the instance's move
 * (compare-and-set on the version the unit found) with its timeline's new
 * entries, one UPDATE however many steps the unit ran. A unit records
 * at most one outside step's outcome and then runs each step once. */
enum { SAGA_UNIT_ROWS = SAGA_STEPS_MAX + 1 };
struct saga_unit_row {
    const char *step, *phase, *outcome;
    int64_t attempt;
    char *error;
    int64_t started_ms, ended_ms;
};
struct saga_unit {
    int64_t from_version;
    struct saga_unit_row rows[SAGA_UNIT_ROWS];
    size_t n_rows;
    int64_t run_at; /* the last move's retry time (its error and time are its row's) */
    /* The instance ended (and its definition has an on_end, called by the
     * flush, for all the units it flushes at once). */
    const struct saga_def *ended_def;
    char *end_reason;      /* NULL unless FAILED */
    char *end_traceparent; /* the trace of the job that ended it (NULL: none) */
};
void saga__unit_begin(struct saga_unit *u, const struct saga_instance *in);
/* Write what the unit gathered, `now` being the instance as moved:
 * ERR_CONFLICT with *stale set when another run moved it first. */
BB_WUR enum err saga__unit_flush(struct store_conn *c, struct saga_unit *u,
                                 const struct saga_instance *now, bool *stale, struct bb_error *e);
/* The same for n instances at once (units[i] moved now[i]): one UPDATE and
 * one INSERT; ERR_CONFLICT with *stale set when any was moved first. */
BB_WUR enum err saga__units_flush(struct store_conn *c, struct saga_unit *const *units,
                                  const struct saga_instance *const *now, size_t n, bool *stale,
                                  struct bb_error *e);
void saga__unit_deinit(struct saga_unit *u);

/* Record `res` and move the instance on, in `u` (saga__unit_flush writes
 * it). A next step that may run now stays with job `keep_job` (0: a new
 * job runs it). *next is the instance as moved (its data a reference of
 * its own). */
BB_WUR enum err saga__transition(struct store_conn *c, const struct saga_def *def,
                                 const struct saga_instance *in, const struct saga_step_result *res,
                                 int64_t keep_job, int64_t now_ms, struct saga_unit *u,
                                 struct saga_instance *next, struct bb_error *e);

/* A RUNNING or COMPENSATING instance as saga_sweep_stranded reads it. */
struct saga_in_flight {
    char id[SAGA_ID_LEN + 1];
    char type[SAGA_TYPE_MAX + 1];
    int64_t version, job_id;
    enum saga_state state;
    int step;
    int64_t retries;
};
/* saga_sweep_stranded in its two steps: read up to `limit` in-flight
 * instances after `after` (*out a heap array of *n, free() it; NULL when
 * it fails), then make STUCK those of them whose job no longer drives
 * them, each only if still at the version read (*stuck: how many). */
BB_WUR enum err saga__in_flight(struct store_conn *c, const char *after, int64_t limit,
                                struct saga_in_flight **out, size_t *n, struct bb_error *e);
BB_WUR enum err saga__strand(struct store_conn *c, const struct saga_in_flight *f, size_t n,
                             int64_t now_ms, int64_t *stuck, struct bb_error *e);

/* The definitions of this process, by type (NULL: none). */
const struct saga_def *saga__def_find(const char *type);

/* Counted when `c`'s open transaction commits. */
void saga__count_started(struct store_conn *c, const char *type, size_t n);
void saga__count_transition(struct store_conn *c, const char *type, enum saga_state from,
                            enum saga_state to);
void saga__metric_step(const char *type, const char *step, bool compensating, double seconds);
/* The backbone_sagas_stuck gauge, refreshed from a count by type; types with
 * no definition here count under SAGA_TYPE_UNREGISTERED. */
#define SAGA_TYPE_UNREGISTERED "unregistered"
void saga__metric_stuck_reset(void);
void saga__metric_stuck(const char *type, int64_t n);

#endif /* BB_SAGA_INT_H */
