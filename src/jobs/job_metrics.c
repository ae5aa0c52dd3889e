/*
 * job_metrics.c: the job engine's metrics, declared once. Counters move
 * after the transaction that did the work has committed (the embedded
 * workers once their unit returns, the pull API and the store through
 * store_after_commit); gauges of depth come from the database at scrape
 * time (job_metrics_refresh).
 */
#include "jobs/jobs_int.h"

#include "metrics/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static struct metrics_def M_SUBMITTED = {
    .name = "backbone_jobs_submitted_total",
    .help = "Jobs submitted, by queue.",
    .type = METRICS_COUNTER,
    .labels = {"queue"},
};
static struct metrics_def M_STARTED = {
    .name = "backbone_jobs_started_total",
    .help = "Attempts started (an embedded worker's handler began; a pull worker's claim), "
            "by queue.",
    .type = METRICS_COUNTER,
    .labels = {"queue"},
};
static struct metrics_def M_FINISHED = {
    .name = "backbone_jobs_finished_total",
    .help = "Attempts finished, by queue and outcome (completed, failed, failed_permanently, "
            "timeout, lease_expired).",
    .type = METRICS_COUNTER,
    .labels = {"queue", "outcome"},
};
static struct metrics_def M_DURATION = {
    .name = "backbone_job_duration_seconds",
    .help = "How long attempts ran, by queue.",
    .type = METRICS_HISTOGRAM,
    .labels = {"queue"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};
static struct metrics_def M_LATENCY = {
    .name = "backbone_job_queue_latency_seconds",
    .help = "Time from a job being ready (its run_at, or its submission if later) to an attempt "
            "starting, by queue.",
    .type = METRICS_HISTOGRAM,
    .labels = {"queue"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};
static struct metrics_def M_DEPTH = {
    .name = "backbone_jobs",
    .help = "Jobs waiting or running, by queue and state (ready, scheduled, parked: ready but "
            "waiting for their concurrency key to have room or a start, running, dead: the "
            "dead-letter queue).",
    .type = METRICS_GAUGE,
    .labels = {"queue", "state"},
};
static struct metrics_def M_DEAD_GROUPS = {
    .name = "backbone_dead_jobs_by_error",
    .help = "Dead jobs of the largest dead-letter groups (at most 20), by queue, handler, error "
            "fingerprint and error pattern: the hint an alert carries (GET /dlq/groups lists "
            "them all).",
    .type = METRICS_GAUGE,
    .labels = {"queue", "handler", "fingerprint", "error"},
    .omit_zero = true,
};
static struct metrics_def M_RESCUES = {
    .name = "backbone_job_lease_rescues_total",
    .help = "Jobs whose lease ran out and were taken back for a retry, by queue and kind of "
            "worker that lost it (embedded: a Backbone worker; external: a pull-API worker).",
    .type = METRICS_COUNTER,
    .labels = {"queue", "kind"},
};
static struct metrics_def M_KEY_RATE_PARKED = {
    .name = "backbone_job_key_rate_parked_total",
    .help = "Ready jobs a claim set aside (parked) until their concurrency key's next start, the "
            "key having used up its per-key rate limit, by queue.",
    .type = METRICS_COUNTER,
    .labels = {"queue"},
};
static struct metrics_def M_PRUNED = {
    .name = "backbone_jobs_pruned_total",
    .help = "Completed and cancelled jobs deleted after the retention period (--job-retention).",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_STALE = {
    .name = "backbone_job_stale_reports_total",
    .help = "Completions, failures and heartbeats refused because the lease token was stale "
            "(zombie workers), by what was refused.",
    .type = METRICS_COUNTER,
    .labels = {"report"},
};

void
jobs__metrics_register(void)
{
    struct metrics_def *all[] = {&M_SUBMITTED, &M_STARTED,        &M_FINISHED, &M_DURATION,
                                 &M_LATENCY,   &M_DEPTH,          &M_RESCUES,  &M_STALE,
                                 &M_PRUNED,    &M_KEY_RATE_PARKED};
    for (size_t i = 0; i < BB_ARRAY_LEN(all); i++)
        metrics_register(all[i]);
}

struct metrics_def *
jobs__metric_submitted_def(void)
{
    return &M_SUBMITTED;
}

double
jobs__queue_latency_s(const struct job_lease *l, int64_t now_ms)
{
    int64_t ready_ms = l->run_at_ms > l->created_at_ms ? l->run_at_ms : l->created_at_ms;
    return now_ms > ready_ms ? (double)(now_ms - ready_ms) / 1000.0 : 0.0;
}

void
jobs__metric_started(const char *queue, double queue_latency_s)
{
    metrics_add(&M_STARTED, 1, queue);
    metrics_observe(&M_LATENCY, queue_latency_s < 0 ? 0 : queue_latency_s, queue);
}

void
jobs__metric_finished(const char *queue, enum job_outcome outcome, double duration_s)
{
    metrics_add(&M_FINISHED, 1, queue, job_outcome_name(outcome));
    metrics_observe(&M_DURATION, duration_s < 0 ? 0 : duration_s, queue);
}

/* A started or finished attempt, to count once its transaction commits. */
struct attempt_later {
    bool finished; /* else started */
    enum job_outcome outcome;
    double seconds; /* queue latency, or duration */
    char queue[JOB_NAME_MAX + 1];
};

static void
attempt_counted(void *arg, bool committed)
{
    struct attempt_later *a = arg;
    if (committed && a->finished)
        jobs__metric_finished(a->queue, a->outcome, a->seconds);
    else if (committed)
        jobs__metric_started(a->queue, a->seconds);
    free(a);
}

static void
attempt_at_commit(struct store_conn *c, const char *queue, bool finished, enum job_outcome outcome,
                  double seconds)
{
    struct attempt_later *a = xcalloc(1, sizeof *a);
    a->finished = finished;
    a->outcome = outcome;
    a->seconds = seconds;
    bb_strlcpy(a->queue, queue, sizeof a->queue);
    store_after_commit(c, attempt_counted, a);
}

void
jobs__metric_started_at_commit(struct store_conn *c, const char *queue, double queue_latency_s)
{
    attempt_at_commit(c, queue, false, JOB_OUTCOME_COMPLETED, queue_latency_s);
}

void
jobs__metric_finished_at_commit(struct store_conn *c, const char *queue, enum job_outcome outcome,
                                double duration_s)
{
    attempt_at_commit(c, queue, true, outcome, duration_s);
}

void
jobs__metric_stale(const char *what)
{
    metrics_add(&M_STALE, 1, what);
}

struct metrics_def *
jobs__metric_rescued_def(void)
{
    return &M_RESCUES;
}

struct metrics_def *
jobs__metric_key_rate_parked_def(void)
{
    return &M_KEY_RATE_PARKED;
}

void
jobs__metric_pruned(int64_t n)
{
    metrics_add(&M_PRUNED, (double)n);
}

void
jobs__metric_depth(const char *queue, const char *state, int64_t n)
{
    metrics_set(&M_DEPTH, (double)n, queue, state);
}

/* The series the last refresh set, so those gone from the top are zeroed
 * (and so left out of the exposition). */
static pthread_mutex_t g_shown_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_series *g_shown[JOBS__DEAD_GROUPS_SHOWN]; /* guarded by g_shown_mu */
static size_t g_n_shown;                                        /* guarded by g_shown_mu */

/* A label value from a group's field ("" when absent), at most `cap` - 1
 * bytes of whole characters. */
static const char *
group_label(const json_t *g, const char *key, char *buf, size_t cap)
{
    const char *v = json_string_value(json_object_get(g, key));
    bb_utf8_copy(buf, cap, v ? v : "");
    return buf;
}

void
jobs__metric_dead_groups(const json_t *groups)
{
    struct metrics_series *now[JOBS__DEAD_GROUPS_SHOWN];
    size_t n = 0;
    size_t i;
    const json_t *g;
    pthread_mutex_lock(&g_shown_mu);
    json_array_foreach(groups, i, g)
    {
        if (n == JOBS__DEAD_GROUPS_SHOWN)
            break;
        char queue[JOB_NAME_MAX + 1], handler[JOB_NAME_MAX + 1], fp[JOB_FINGERPRINT_LEN + 1];
        char error[121];
        const char *values[] = {group_label(g, "queue", queue, sizeof queue),
                                group_label(g, "handler", handler, sizeof handler),
                                group_label(g, "fingerprint", fp, sizeof fp),
                                group_label(g, "error", error, sizeof error)};
        now[n] = metrics_series_get(&M_DEAD_GROUPS, values);
        metrics_series_set(now[n], (double)json_integer_value(json_object_get(g, "count")));
        n++;
    }
    for (size_t k = 0; k < g_n_shown; k++) {
        bool kept = false;
        for (size_t j = 0; j < n && !kept; j++)
            kept = now[j] == g_shown[k];
        if (!kept)
            metrics_series_set(g_shown[k], 0);
    }
    memcpy(g_shown, now, n * sizeof now[0]);
    g_n_shown = n;
    pthread_mutex_unlock(&g_shown_mu);
}
