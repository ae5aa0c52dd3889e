/*
 * cli: the `backbone` command: `serve` (the daemon), `migrate`, `version`,
 * and client subcommands that speak the HTTP API (`locks`, `fenced`).
 *
 * Exit codes, for scripts: 0 success; 1 the server refused (a 4xx answer,
 * such as a lock held by someone else); 2 usage error; 3 the server could
 * not be reached or failed (5xx).
 */
#ifndef BB_CLI_H
#define BB_CLI_H

#include "base/base.h"
#include "store/store.h"

enum cli_exit { CLI_OK = 0, CLI_REFUSED = 1, CLI_USAGE = 2, CLI_UNAVAILABLE = 3 };

/* Options of the daemon (one table in config.c: flags, BACKBONE_* env, --help). */
struct serve_config {
    char *db;
    char *host;
    int64_t port;
    int64_t http_threads;
    int64_t body_limit_bytes;
    char *api_token;
    char *log_level;
    int64_t db_pool;
    int64_t db_batch;
    int64_t shutdown_timeout_ms;
    int64_t workers;
    char *worker_queues;
    int64_t job_poll_ms;
    bool job_wakeups;
    int64_t payload_limit_bytes;
    char *webhook_secret;
    char *exec_allow;
    int64_t job_retention_ms;
    int64_t scheduler_tick_ms;
    char *roles;
    int64_t reservation_sweep_ms;
    int64_t idempotency_retention_ms;
    int64_t saga_poll_ms;
    int64_t saga_retention_ms;
    int64_t outbox_retention_ms;
    int64_t saga_batch;
    int64_t payment_batch;
    int64_t checkout_reservation_ttl_ms;
    char *psp_latency_ms; /* strings: unset falls back to MOCK_* variables */
    char *psp_failure_rate;
    char *psp_timeout_rate;
    char *psp_decline_rate;
    int64_t psp_seed;
    int64_t psp_timeout_ms;
    int64_t psp_threads;
};

/* Parse serve/migrate options (argv after the subcommand). Returns CLI_OK,
 * or CLI_USAGE after printing the error (or help, with *help_shown). */
int serve_config_load(struct serve_config *cfg, int argc, char **argv, const char *command,
                      bool *help_shown);
void serve_config_free(struct serve_config *cfg);

/* Apply every module's migrations, in dependency order. */
BB_WUR enum err backbone_migrate_all(struct store *s, struct bb_error *e);

int cli_serve(int argc, char **argv);
int cli_worker(int argc, char **argv);
int cli_migrate(int argc, char **argv);
int cli_jobs(int argc, char **argv);
int cli_queues(int argc, char **argv);
int cli_schedules(int argc, char **argv);
int cli_dlq(int argc, char **argv);
int cli_sagas(int argc, char **argv);
int cli_locks(int argc, char **argv);
int cli_fenced(int argc, char **argv);

#endif /* BB_CLI_H */
