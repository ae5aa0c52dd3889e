/*
 * config.c: the daemon's option table. Each row is a flag, a BACKBONE_*
 * variable, a default, bounds and the line `backbone serve --help` prints.
 */
#include "cli/cli.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define OFF(field) offsetof(struct serve_config, field)

/* A saga's payment step holds the payment lock (30 s) and its job's lease
 * (30 s) across its PSP call, and a capture runs straight after its
 * authorization when 15 s of the lease are left (the saga engine's
 * CHAIN_LEASE_LEFT_MS): two calls must end inside the lock's TTL with room
 * to record them, so one waits at most 10 s. */
#define PSP_TIMEOUT_MAX_MS 10000

/* Rows `backbone serve` and `backbone worker` share. */
#define COMMON_OPTS                                                                                 \
    {"db",                                                                                          \
     BB_OPT_STRING,                                                                                 \
     OFF(db),                                                                                       \
     0,                                                                                             \
     0,                                                                                             \
     "sqlite:backbone.db",                                                                          \
     "database URL: sqlite:PATH (embedded) or postgres://user@host:port/db",                        \
     0},                                                                                            \
        {"host", BB_OPT_STRING, OFF(host), 0, 0, "127.0.0.1", "address to listen on (numeric)", 0}, \
        {"http-threads", BB_OPT_INT, OFF(http_threads), 1, 64, "2", "HTTP event-loop threads", 0},  \
        {"api-token",                                                                               \
         BB_OPT_STRING,                                                                             \
         OFF(api_token),                                                                            \
         0,                                                                                         \
         0,                                                                                         \
         NULL,                                                                                      \
         "when set, every endpoint but /healthz needs 'Authorization: Bearer TOKEN'",               \
         0},                                                                                        \
        {"log-level",                                                                               \
         BB_OPT_STRING,                                                                             \
         OFF(log_level),                                                                            \
         0,                                                                                         \
         0,                                                                                         \
         "info",                                                                                    \
         "debug, info, warn, error or off",                                                         \
         0},                                                                                        \
        {"db-pool",                                                                                 \
         BB_OPT_INT,                                                                                \
         OFF(db_pool),                                                                              \
         0,                                                                                         \
         256,                                                                                       \
         "0",                                                                                       \
         "database threads/connections (0: engine default, 8 on PostgreSQL, 2 readers on SQLite)",  \
         0},                                                                                        \
        {"db-batch",                                                                                \
         BB_OPT_INT,                                                                                \
         OFF(db_batch),                                                                             \
         0,                                                                                         \
         4096,                                                                                      \
         "0",                                                                                       \
         "most requests grouped into one commit (0: engine default, 256 on SQLite, 1 on "           \
         "PostgreSQL)",                                                                             \
         0},                                                                                        \
        {"shutdown-timeout",                                                                        \
         BB_OPT_DURATION,                                                                           \
         OFF(shutdown_timeout_ms),                                                                  \
         0,                                                                                         \
         3600000,                                                                                   \
         "10s",                                                                                     \
         "on SIGTERM, how long in-flight requests and running jobs may take to finish",             \
         0},                                                                                        \
        {"job-poll",                                                                                \
         BB_OPT_DURATION,                                                                           \
         OFF(job_poll_ms),                                                                          \
         10,                                                                                        \
         3600000,                                                                                   \
         "1s",                                                                                      \
         "how often idle workers look for jobs when no wake-up arrives",                            \
         0},                                                                                        \
        {"job-wakeups",                                                                             \
         BB_OPT_BOOL,                                                                               \
         OFF(job_wakeups),                                                                          \
         0,                                                                                         \
         0,                                                                                         \
         "true",                                                                                    \
         "wake idle workers and saga starters on submit (false: polling alone, for testing it)",    \
         0},                                                                                        \
        {"webhook-secret",                                                                          \
         BB_OPT_STRING,                                                                             \
         OFF(webhook_secret),                                                                       \
         0,                                                                                         \
         0,                                                                                         \
         NULL,                                                                                      \
         "signs the http handler's requests: sha256=HMAC(\"<X-Backbone-Timestamp>.<job "            \
         "id>.<body>\")",                                                                           \
         0},                                                                                        \
        {"exec-allow",                                                                              \
         BB_OPT_STRING,                                                                             \
         OFF(exec_allow),                                                                           \
         0,                                                                                         \
         0,                                                                                         \
         NULL,                                                                                      \
         "comma-separated directories whose commands exec jobs may run (default: exec is off)",     \
         0},                                                                                        \
        {"job-retention",                                                                           \
         BB_OPT_DURATION,                                                                           \
         OFF(job_retention_ms),                                                                     \
         0,                                                                                         \
         INT64_C(3153600000000),                                                                    \
         "7d",                                                                                      \
         "how long completed and cancelled jobs are kept (0: forever; dead jobs stay until "        \
         "purged)",                                                                                 \
         0},                                                                                        \
    {                                                                                               \
        "scheduler-tick", BB_OPT_DURATION, OFF(scheduler_tick_ms), 50, 60000, "500ms",              \
            "how often expired leases are rescued and schedules fired", 0                           \
    }

static const struct bb_opt SERVE_OPTS[] = {
    COMMON_OPTS,
    {"port", BB_OPT_INT, OFF(port), 0, 65535, "8080", "TCP port to listen on (0: any free port)",
     0},
    {"body-limit", BB_OPT_SIZE, OFF(body_limit_bytes), 1024, 64 << 20, "1MiB",
     "largest request body accepted (413 beyond)", 0},
    {"payload-limit", BB_OPT_SIZE, OFF(payload_limit_bytes), 16, 64 << 20, "256KiB",
     "largest job payload accepted (413 beyond)", 0},
    {"workers", BB_OPT_INT, OFF(workers), 0, 1024, "10",
     "jobs this process runs at once (embedded workers; 0: none)", 0},
    {"worker-queues", BB_OPT_STRING, OFF(worker_queues), 0, 0, NULL,
     "comma-separated queues the embedded workers take jobs from (default: every queue)", 0},
    {"roles", BB_OPT_STRING, OFF(roles), 0, 0, "all",
     "what this process runs: all, or a comma-separated subset of locks, jobs, workers, "
     "scheduler, inventory, orders, payments, checkout, outbox, sagas",
     0},
    {"reservation-sweep", BB_OPT_DURATION, OFF(reservation_sweep_ms), 10, 3600000, "1s",
     "how often reservations past their TTL are expired (their stock returns)", 0},
    {"idempotency-retention", BB_OPT_DURATION, OFF(idempotency_retention_ms), 0,
     INT64_C(315360000000), "24h",
     "how long stock and adjustment Idempotency-Keys are remembered (0: forever)", 0},
    {"saga-poll", BB_OPT_DURATION, OFF(saga_poll_ms), 10, 3600000, "5s",
     "how often the saga starter looks for new checkouts when no wake-up arrives, and for "
     "sagas no job drives any more (they become STUCK)",
     0},
    {"saga-batch", BB_OPT_INT, OFF(saga_batch), 1, 64, "32",
     "saga instances whose units may share one transaction (1: each alone)", 0},
    {"payment-batch", BB_OPT_INT, OFF(payment_batch), 1, 64, "32",
     "payment operations in the same step (and PSP mock records) that may share one "
     "transaction (1: each alone)",
     0},
    {"saga-retention", BB_OPT_DURATION, OFF(saga_retention_ms), 0, INT64_C(3153600000000), "30d",
     "how long COMPLETED and FAILED sagas are kept, with their timelines (0: forever)", 0},
    {"outbox-retention", BB_OPT_DURATION, OFF(outbox_retention_ms), 0, INT64_C(3153600000000), "7d",
     "how long outbox events are kept for GET /outbox readers (0: forever; events an "
     "in-process consumer has not handled stay)",
     0},
    {"checkout-reservation-ttl", BB_OPT_DURATION, OFF(checkout_reservation_ttl_ms), 100, 604800000,
     "10m", "how long a checkout's stock stays reserved waiting for its payment", 0},
    {"psp-latency-ms", BB_OPT_STRING, OFF(psp_latency_ms), 0, 0, NULL,
     "the PSP mock's latency in ms (default: MOCK_LATENCY_MS, else 0)", 0},
    {"psp-failure-rate", BB_OPT_STRING, OFF(psp_failure_rate), 0, 0, NULL,
     "share of PSP calls that fail, 0 to 1 (default: MOCK_FAILURE_RATE, else 0)", 0},
    {"psp-timeout-rate", BB_OPT_STRING, OFF(psp_timeout_rate), 0, 0, NULL,
     "share of PSP calls that hang past --psp-timeout, 0 to 1 (default 0)", 0},
    {"psp-decline-rate", BB_OPT_STRING, OFF(psp_decline_rate), 0, 0, NULL,
     "share of authorizations the PSP mock declines, 0 to 1 (default 0)", 0},
    {"psp-seed", BB_OPT_INT, OFF(psp_seed), 0, INT64_MAX, "1",
     "seed of the PSP mock's draws (the same seed, the same answers)", 0},
    {"psp-timeout", BB_OPT_DURATION, OFF(psp_timeout_ms), 10, PSP_TIMEOUT_MAX_MS, "2s",
     "how long a payment waits for the PSP before giving up (retry with the same key); at "
     "most 10s, well inside the saga's 30 s payment lock and step lease",
     0},
    {"psp-threads", BB_OPT_INT, OFF(psp_threads), 1, 1024, "32",
     "payment requests waiting on the PSP at once", 0},
};

/* `backbone worker`: workers alone; HTTP only for /healthz, /readyz and
 * /metrics, and only when --port is given. */
static const struct bb_opt WORKER_OPTS[] = {
    COMMON_OPTS,
    {"port", BB_OPT_INT, OFF(port), -1, 65535, "-1",
     "TCP port for /healthz, /readyz and /metrics (-1: no HTTP; 0: any free port)", 0},
    {"concurrency", BB_OPT_INT, OFF(workers), 1, 1024, "10", "jobs this process runs at once", 0},
    {"queues", BB_OPT_STRING, OFF(worker_queues), 0, 0, NULL,
     "comma-separated queues to take jobs from (default: every queue)", 0},
};

int
serve_config_load(struct serve_config *cfg, int argc, char **argv, const char *command,
                  bool *help_shown)
{
    *help_shown = false;
    memset(cfg, 0, sizeof *cfg);
    bool worker = strcmp(command, "worker") == 0;
    const struct bb_opt *opts = worker ? WORKER_OPTS : SERVE_OPTS;
    size_t n_opts = worker ? BB_ARRAY_LEN(WORKER_OPTS) : BB_ARRAY_LEN(SERVE_OPTS);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: backbone %s [options]\n\noptions (flag, or BACKBONE_* variable):\n",
                   command);
            bb_opts_help(stdout, opts, n_opts, true);
            *help_shown = true;
            return CLI_OK;
        }
    }
    struct bb_error e;
    bb_error_clear(&e);
    if (bb_opts_parse(opts, n_opts, cfg, argc, argv, true, NULL, 0, NULL, &e) != ERR_OK) {
        fprintf(stderr, "backbone %s: %s\n", command, e.detail);
        return CLI_USAGE;
    }
    enum bb_log_level level;
    if (bb_log_level_parse(cfg->log_level, &level) != ERR_OK) {
        fprintf(stderr,
                "backbone %s: --log-level: expected debug, info, warn, error or off, "
                "got '%s'\n",
                command, cfg->log_level);
        return CLI_USAGE;
    }
    bb_log_level = level;
    return CLI_OK;
}

void
serve_config_free(struct serve_config *cfg)
{
    /* Both tables own the same string fields. */
    bb_opts_free(SERVE_OPTS, BB_ARRAY_LEN(SERVE_OPTS), cfg);
}
