/*
 * job_metrics.c: the job engine's metrics, declared once. Counters move
 * after the transaction that did the work has committed (the callers in
 * job_http.c and job_worker.c); gauges of depth come from the database at
 * scrape time (job_metrics_refresh).
 */
#include "jobs/jobs_int.h"

#include "metrics/metrics.h"

static struct metrics_def M_SUBMITTED = {
    .name = "backbone_jobs_submitted_total",
    .help = "Jobs submitted, by queue.",
    .type = METRICS_COUNTER,
    .labels = {"queue"},
};
static struct metrics_def M_STARTED = {
    .name = "backbone_jobs_started_total",
    .help = "Attempts started (jobs claimed by a worker), by queue.",
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
    .help = "Time from a job being ready (run_at) to an attempt starting, by queue.",
    .type = METRICS_HISTOGRAM,
    .labels = {"queue"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};
static struct metrics_def M_DEPTH = {
    .name = "backbone_jobs",
    .help = "Jobs waiting or running, by queue and state (ready, scheduled, running, dead: "
            "the dead-letter queue).",
    .type = METRICS_GAUGE,
    .labels = {"queue", "state"},
};
static struct metrics_def M_RESCUES = {
    .name = "backbone_job_lease_rescues_total",
    .help = "Jobs whose lease ran out and were taken back for a retry.",
    .type = METRICS_COUNTER,
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
    struct metrics_def *all[] = {&M_SUBMITTED, &M_STARTED, &M_FINISHED, &M_DURATION, &M_LATENCY,
                                 &M_DEPTH,     &M_RESCUES, &M_STALE,    &M_PRUNED};
    for (size_t i = 0; i < BB_ARRAY_LEN(all); i++)
        metrics_register(all[i]);
}

struct metrics_def *
jobs__metric_submitted_def(void)
{
    return &M_SUBMITTED;
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

void
jobs__metric_stale(const char *what)
{
    metrics_add(&M_STALE, 1, what);
}

void
jobs__metric_rescued(int64_t n)
{
    metrics_add(&M_RESCUES, (double)n);
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
