/*
 * job_state.c: the job lifecycle as a table, names, and retry backoff.
 * Pure: no store, no clock.
 */
#include "jobs/jobs.h"

#include <math.h>
#include <string.h>

static const char *const STATE_NAMES[JOB_STATE_COUNT] = {
    [JOB_PENDING] = "pending",     [JOB_RUNNING] = "running", [JOB_COMPLETED] = "completed",
    [JOB_CANCELLED] = "cancelled", [JOB_DEAD] = "dead",
};

/* TRANSITIONS[from][to]:
 *   pending -> running (claim), cancelled (cancel), pending (run now)
 *   running -> completed, pending (retry, rescue, hand-back), dead (last
 *              attempt failed), cancelled (cancel revokes the lease)
 *   completed, cancelled, dead -> pending (run again / redrive) */
static const bool TRANSITIONS[JOB_STATE_COUNT][JOB_STATE_COUNT] = {
    [JOB_PENDING] = {[JOB_RUNNING] = true, [JOB_CANCELLED] = true, [JOB_PENDING] = true},
    [JOB_RUNNING] =
        {[JOB_COMPLETED] = true, [JOB_PENDING] = true, [JOB_DEAD] = true, [JOB_CANCELLED] = true},
    [JOB_COMPLETED] = {[JOB_PENDING] = true},
    [JOB_CANCELLED] = {[JOB_PENDING] = true},
    [JOB_DEAD] = {[JOB_PENDING] = true},
};

static const char *const OUTCOME_NAMES[] = {
    [JOB_OUTCOME_COMPLETED] = "completed",          [JOB_OUTCOME_FAILED] = "failed",
    [JOB_OUTCOME_PERMANENT] = "failed_permanently", [JOB_OUTCOME_TIMEOUT] = "timeout",
    [JOB_OUTCOME_EXPIRED] = "lease_expired",        [JOB_OUTCOME_INTERRUPTED] = "interrupted",
};

const char *
job_state_name(enum job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT ? STATE_NAMES[s] : "unknown";
}

bool
job_state_parse(const char *text, enum job_state *out)
{
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        if (strcmp(text, STATE_NAMES[i]) == 0) {
            *out = (enum job_state)i;
            return true;
        }
    }
    return false;
}

bool
job_can_transition(enum job_state from, enum job_state to)
{
    if ((unsigned)from >= JOB_STATE_COUNT || (unsigned)to >= JOB_STATE_COUNT)
        return false;
    return TRANSITIONS[from][to];
}

bool
job_is_terminal(enum job_state s)
{
    return s == JOB_COMPLETED || s == JOB_CANCELLED || s == JOB_DEAD;
}

const char *
job_outcome_name(enum job_outcome o)
{
    return (unsigned)o < BB_ARRAY_LEN(OUTCOME_NAMES) ? OUTCOME_NAMES[o] : "unknown";
}

void
job_backoff_defaults(struct job_backoff *b)
{
    /* The checkout sketch's 1 s, 4 s, 16 s, 64 s; capped at an hour. */
    b->base_ms = 1000;
    b->factor_milli = 4000;
    b->cap_ms = 3600000;
    b->jitter_pct = 10;
}

int64_t
job_backoff_delay_ms(const struct job_backoff *b, int retry, double rand01)
{
    if (retry < 1)
        retry = 1;
    double delay = (double)b->base_ms * pow((double)b->factor_milli / 1000.0, retry - 1);
    if (delay > (double)b->cap_ms || !isfinite(delay))
        delay = (double)b->cap_ms;
    double spread = (double)b->jitter_pct / 100.0 * (2.0 * rand01 - 1.0);
    delay *= 1.0 + spread;
    return delay < 0 ? 0 : (int64_t)delay;
}

bool
job_name_is_valid(const char *name)
{
    return bb_ident_is_valid(name, JOB_NAME_MAX);
}

bool
job_handler_is_external(const char *handler)
{
    return strcmp(handler, "external") == 0 || strncmp(handler, "external:", 9) == 0;
}
