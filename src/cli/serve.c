/*
 * serve.c: `backbone serve` and `backbone migrate`: build the application
 * from its modules, run it until SIGTERM/SIGINT, and take it down in order.
 *
 * `backbone worker` is the same without the API: workers and the scheduler
 * alone against a shared (PostgreSQL) database, with HTTP for /healthz,
 * /readyz and /metrics only, and only when --port is given.
 *
 * Start-up: open the store (SQLite: take ownership of the file), apply every
 * module's migrations, create the services, start the embedded workers and
 * the scheduler, listen.
 * Shutdown (graceful, bounded by --shutdown-timeout): stop accepting and
 * answer new requests 503; answer parked lock waiters and long-poll claims
 * 503; stop the scheduler; let running jobs finish until the deadline and
 * hand back the rest; wait for requests in flight to get their answers (their
 * transactions commit first); stop HTTP; stop the services; close the store.
 */
#include "cli/cli.h"

#include "checkout/checkout.h"
#include "http/http.h"
#include "inventory/inventory.h"
#include "jobs/jobs.h"
#include "locks/locks.h"
#include "metrics/metrics.h"
#include "orders/orders.h"
#include "outbox/outbox.h"
#include "payments/payments.h"
#include "saga/saga.h"
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_ROUTES = 128 };

/* What a process runs (--roles). */
enum role {
    ROLE_LOCKS = 1 << 0,
    ROLE_JOBS = 1 << 1, /* the jobs API */
    ROLE_WORKERS = 1 << 2,
    ROLE_SCHEDULER = 1 << 3,
    ROLE_INVENTORY = 1 << 4,
    ROLE_OUTBOX = 1 << 5,
    ROLE_ORDERS = 1 << 6,
    ROLE_PAYMENTS = 1 << 7,
    ROLE_CHECKOUT = 1 << 8,
    ROLE_SAGAS = 1 << 9, /* the saga starter and API (workers run the steps) */
};
static const struct {
    const char *name;
    unsigned bits;
} ROLES[] = {
    {"locks", ROLE_LOCKS},         {"jobs", ROLE_JOBS},           {"workers", ROLE_WORKERS},
    {"scheduler", ROLE_SCHEDULER}, {"inventory", ROLE_INVENTORY}, {"outbox", ROLE_OUTBOX},
    {"orders", ROLE_ORDERS},       {"payments", ROLE_PAYMENTS},   {"checkout", ROLE_CHECKOUT},
    {"sagas", ROLE_SAGAS},
};

struct app {
    struct serve_config cfg;
    struct store *store;
    struct lock_service *locks;
    struct job_registry *registry;
    struct job_service *jobs;
    struct job_pool *pool;
    struct job_scheduler *scheduler;
    struct inventory_service *inventory;
    struct outbox_service *outbox;
    struct order_service *orders;
    struct payments *payments;
    struct checkout_service *checkout;
    struct saga_engine *sagas;
    struct saga_announcer *announcer;
    struct checkout_saga *checkout_saga;
    struct http_server *http;
    unsigned roles;
    char **worker_queues; /* NULL-terminated, from --worker-queues */
    char **exec_allow;    /* NULL-terminated, from --exec-allow */
    int64_t started_wall_ms;
};

enum err
backbone_migrate_all(struct store *s, struct bb_error *e)
{
    struct {
        const char *module;
        const struct store_migration *(*list)(size_t *n);
    } modules[] = {
        {"idempotency", store_idem_migrations},
        {"locks", lock_migrations},
        {"jobs", job_migrations},
        {"outbox", outbox_migrations},
        {"inventory", inventory_migrations},
        {"orders", order_migrations},
        {"payments", payment_migrations},
        {"checkout", checkout_migrations},
        {"sagas", saga_migrations},
    };
    struct store_conn *c;
    enum err rc = store_conn_open(s, &c, e);
    if (rc != ERR_OK)
        return rc;
    for (size_t i = 0; i < BB_ARRAY_LEN(modules) && rc == ERR_OK; i++) {
        size_t n;
        const struct store_migration *m = modules[i].list(&n);
        rc = store_migrate(c, modules[i].module, m, n, NULL, e);
    }
    store_conn_close(c);
    return rc;
}

static enum err
open_store(const struct serve_config *cfg, struct store **out, struct bb_error *e)
{
    struct store_options so;
    store_options_defaults(&so, cfg->db);
    if (cfg->db_pool > 0)
        so.pool_size = (int)cfg->db_pool;
    if (cfg->db_batch > 0)
        so.batch_max = (int)cfg->db_batch;
    so.exclusive = true;
    return store_open(&so, out, e);
}

/* ---- system routes: liveness, readiness, metrics --------------------------------- */

static struct metrics_def M_BUILD = {
    .name = "backbone_build_info",
    .help = "Always 1; labels carry the version.",
    .type = METRICS_GAUGE,
    .labels = {"version"},
};
static struct metrics_def M_RSS = {
    .name = "backbone_process_resident_memory_bytes",
    .help = "Resident set size of this process.",
    .type = METRICS_GAUGE,
};
static struct metrics_def M_START = {
    .name = "backbone_process_start_time_seconds",
    .help = "Start time of this process since the Unix epoch.",
    .type = METRICS_GAUGE,
};

static int64_t
rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return (int64_t)resident * sysconf(_SC_PAGESIZE);
}

static void
handle_healthz(struct http_req *r, void *ctx)
{
    (void)ctx;
    json_t *body = json_object();
    json_object_set_new(body, "status", json_string("ok"));
    http_reply_json(r, 200, body);
}

static enum err
ready_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    return store_ping(c, e);
}

static void
ready_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct app *app = arg;
    if (rc != ERR_OK) {
        struct bb_error down = *e;
        down.code = ERR_UNAVAILABLE;
        http_reply_problem(r, &down, NULL);
        return;
    }
    json_t *body = json_object();
    json_object_set_new(body, "status", json_string("ready"));
    json_object_set_new(body, "engine",
                        json_string(store_engine_name(store_engine_of(app->store))));
    http_reply_json(r, 200, body);
}

static void
handle_readyz(struct http_req *r, void *ctx)
{
    struct app *app = ctx;
    http_req_run(r, app->store, STORE_READ, ready_work, ready_reply, app);
}

static enum err
metrics_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    enum err rc = lock_metrics_refresh(c, bb_wall_ms(), e);
    if (rc == ERR_OK)
        rc = saga_metrics_refresh(c, e);
    return rc == ERR_OK ? job_metrics_refresh(c, bb_wall_ms(), e) : rc;
}

static void
metrics_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    (void)arg;
    if (rc != ERR_OK) /* still serve what we have: the database gauges are stale */
        log_warn("metrics.refresh_failed", "detail=%s", e->detail);
    metrics_set(&M_RSS, (double)rss_bytes());
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    http_reply_raw(r, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len);
}

static void
handle_metrics(struct http_req *r, void *ctx)
{
    struct app *app = ctx;
    http_req_run(r, app->store, STORE_READ, metrics_work, metrics_reply, app);
}

static size_t
app_routes(struct app *app, struct http_route *routes, size_t max)
{
    size_t n = 0;
    routes[n++] = (struct http_route){"GET", "/healthz", handle_healthz, app, true, NULL};
    routes[n++] = (struct http_route){"GET", "/readyz", handle_readyz, app, false, NULL};
    routes[n++] = (struct http_route){"GET", "/metrics", handle_metrics, app, false, NULL};
    if (app->locks != NULL)
        n += lock_service_routes(app->locks, routes + n, max - n);
    if (app->jobs != NULL)
        n += job_service_routes(app->jobs, routes + n, max - n);
    if (app->outbox != NULL)
        n += outbox_service_routes(app->outbox, routes + n, max - n);
    if (app->inventory != NULL)
        n += inventory_service_routes(app->inventory, routes + n, max - n);
    if (app->orders != NULL)
        n += order_service_routes(app->orders, routes + n, max - n);
    if (app->payments != NULL && (app->roles & ROLE_PAYMENTS))
        n += payments_routes(app->payments, routes + n, max - n);
    if (app->sagas != NULL && (app->roles & ROLE_SAGAS))
        n += saga_routes(app->sagas, routes + n, max - n);
    if (app->checkout != NULL)
        n += checkout_service_routes(app->checkout, routes + n, max - n);
    return n;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

/* "a,b,c" into a NULL-terminated array (NULL for none). */
static char **
split_list(const char *text)
{
    if (text == NULL || *text == '\0')
        return NULL;
    size_t n = 1;
    for (const char *p = text; *p; p++)
        n += *p == ',';
    char **out = xcalloc(n + 1, sizeof *out);
    size_t k = 0;
    const char *p = text;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 0)
            out[k++] = xstrndup(p, len);
        p += len + (comma != NULL);
    }
    return out;
}

static void
free_list(char **list)
{
    for (size_t i = 0; list && list[i]; i++)
        free(list[i]);
    free(list);
}

/* A rate from a flag, else the seed's variable, else 0. */
static enum err
rate_option(const char *flag_value, const char *env, const char *name, double *out,
            struct bb_error *e)
{
    const char *text = flag_value ? flag_value : getenv(env);
    *out = 0;
    if (text == NULL || *text == '\0')
        return ERR_OK;
    char *end;
    double v = strtod(text, &end);
    if (*end != '\0' || !(v >= 0 && v <= 1))
        return bb_fail(e, ERR_USAGE, name, "--%s: expected a number from 0 to 1, got '%s'", name,
                       text);
    *out = v;
    return ERR_OK;
}

/* The PSP mock and the payments' settings from --psp-* and MOCK_*. */
static enum err
payments_options_load(const struct serve_config *cfg, struct payments_options *po,
                      struct bb_error *e)
{
    memset(po, 0, sizeof *po);
    po->psp_timeout_ms = cfg->psp_timeout_ms;
    po->threads = (int)cfg->psp_threads;
    po->batch = (int)cfg->payment_batch;
    po->psp.seed = (uint64_t)cfg->psp_seed;
    const char *latency = cfg->psp_latency_ms ? cfg->psp_latency_ms : getenv("MOCK_LATENCY_MS");
    if (latency && *latency && bb_duration_parse(latency, &po->psp.latency_ms) != ERR_OK)
        return bb_fail(e, ERR_USAGE, "psp-latency-ms",
                       "--psp-latency-ms: expected milliseconds, got '%s'", latency);
    enum err rc = rate_option(cfg->psp_failure_rate, "MOCK_FAILURE_RATE", "psp-failure-rate",
                              &po->psp.failure_rate, e);
    if (rc == ERR_OK)
        rc = rate_option(cfg->psp_timeout_rate, "MOCK_TIMEOUT_RATE", "psp-timeout-rate",
                         &po->psp.timeout_rate, e);
    if (rc == ERR_OK)
        rc = rate_option(cfg->psp_decline_rate, "MOCK_DECLINE_RATE", "psp-decline-rate",
                         &po->psp.decline_rate, e);
    if (rc == ERR_OK && po->psp.failure_rate + po->psp.timeout_rate > 1)
        rc = bb_fail(e, ERR_USAGE, "psp-timeout-rate",
                     "--psp-failure-rate and --psp-timeout-rate add up to more than 1");
    return rc;
}

/* --roles: "all" or names from ROLES. */
static enum err
roles_parse(const char *text, unsigned *out, struct bb_error *e)
{
    *out = 0;
    char **names = split_list(text);
    enum err rc = names ? ERR_OK : bb_fail(e, ERR_USAGE, "roles", "--roles: none given");
    for (size_t i = 0; names && names[i] && rc == ERR_OK; i++) {
        if (strcmp(names[i], "all") == 0) {
            *out = ~0u;
            continue;
        }
        size_t k = 0;
        while (k < BB_ARRAY_LEN(ROLES) && strcmp(ROLES[k].name, names[i]) != 0)
            k++;
        if (k == BB_ARRAY_LEN(ROLES))
            rc = bb_fail(e, ERR_USAGE, "roles",
                         "--roles: unknown role '%s' (all, locks, jobs, workers, scheduler, "
                         "inventory, orders, payments, checkout, outbox, sagas)",
                         names[i]);
        else
            *out |= ROLES[k].bits;
    }
    free_list(names);
    return rc;
}

/* Store, schema, then what app->roles asks for: services, workers,
 * scheduler; HTTP. */
static enum err
app_start(struct app *app, struct bb_error *e)
{
    app->started_wall_ms = bb_wall_ms();
    metrics_set(&M_BUILD, 1, BB_VERSION);
    metrics_set(&M_START, (double)app->started_wall_ms / 1000.0);
    app->worker_queues = split_list(app->cfg.worker_queues);
    for (size_t i = 0; app->worker_queues && app->worker_queues[i]; i++) {
        if (!job_name_is_valid(app->worker_queues[i]))
            return bb_fail(e, ERR_USAGE, "worker-queues",
                           "--worker-queues: '%s' is not a queue "
                           "name",
                           app->worker_queues[i]);
    }
    app->exec_allow = split_list(app->cfg.exec_allow);
    struct job_registry_options ro = {.http_secret = app->cfg.webhook_secret,
                                      .exec_allow = (const char *const *)app->exec_allow};
    struct payments_options pay; /* checked before the store is touched */
    enum err rc = payments_options_load(&app->cfg, &pay, e);
    if (rc == ERR_OK)
        rc = job_registry_create(&ro, &app->registry, e);
    if (rc == ERR_OK)
        rc = open_store(&app->cfg, &app->store, e);
    if (rc == ERR_OK)
        rc = backbone_migrate_all(app->store, e);
    if (rc != ERR_OK)
        return rc;
    unsigned roles = app->roles;
    if (roles & ROLE_LOCKS) {
        rc = lock_service_create(app->store, &app->locks, e);
        if (rc == ERR_OK) {
            lock_service_reserve(app->locks, PAYMENT_FENCE_PREFIX);
            lock_service_reserve(app->locks, JOB_FENCE_PREFIX);
        }
    }
    if (rc == ERR_OK && (roles & ROLE_JOBS)) {
        struct job_service_options jo = {.payload_limit_bytes = app->cfg.payload_limit_bytes};
        rc = job_service_create(app->store, app->registry, &jo, &app->jobs, e);
    }
    if (rc == ERR_OK && (roles & ROLE_OUTBOX)) {
        struct outbox_options oo = {.retention_ms = app->cfg.outbox_retention_ms};
        rc = outbox_service_create(app->store, &oo, &app->outbox, e);
    }
    if (rc == ERR_OK && (roles & ROLE_ORDERS))
        app->orders = order_service_create(app->store);
    if (rc == ERR_OK && (roles & ROLE_CHECKOUT)) {
        app->announcer = saga_announcer_create(app->store);
        app->checkout = checkout_service_create(app->store, app->announcer);
    }
    /* Workers run the checkout saga's payment steps in process. */
    if (rc == ERR_OK && (roles & (ROLE_PAYMENTS | ROLE_WORKERS))) {
        rc = payments_create(app->store, &pay, &app->payments, e);
    }
    if (rc == ERR_OK && (roles & ROLE_INVENTORY)) {
        struct inventory_options inv = {.sweep_ms = app->cfg.reservation_sweep_ms,
                                        .key_retention_ms = app->cfg.idempotency_retention_ms};
        rc = inventory_service_create(app->store, &inv, &app->inventory, e);
    }
    if (rc == ERR_OK && (roles & (ROLE_WORKERS | ROLE_SAGAS))) {
        struct saga_engine_options so = {.poll_ms = app->cfg.saga_poll_ms,
                                         .run_starter = (roles & ROLE_SAGAS) != 0,
                                         .ignore_wakeups = !app->cfg.job_wakeups,
                                         .retention_ms = app->cfg.saga_retention_ms,
                                         .unit_batch = app->cfg.saga_batch};
        rc = saga_engine_create(app->store, app->registry, &so, &app->sagas, e);
        struct checkout_saga_options co = {
            .payments = app->payments, .reservation_ttl_ms = app->cfg.checkout_reservation_ttl_ms};
        if (rc == ERR_OK)
            rc = checkout_saga_create(app->sagas, app->registry, &co, &app->checkout_saga, e);
        if (rc == ERR_OK)
            rc = saga_engine_start(app->sagas, e);
    }
    if (rc != ERR_OK)
        return rc;
    if (roles & ROLE_SCHEDULER) {
        struct job_scheduler_options so = {.tick_ms = app->cfg.scheduler_tick_ms,
                                           .retention_ms = app->cfg.job_retention_ms};
        rc = job_scheduler_start(app->store, &so, &app->scheduler, e);
    }
    if (rc == ERR_OK && (roles & ROLE_WORKERS) && app->cfg.workers > 0) {
        struct job_pool_options po = {.queues = (const char *const *)app->worker_queues,
                                      .concurrency = (int)app->cfg.workers,
                                      .poll_ms = app->cfg.job_poll_ms,
                                      .ignore_wakeups = !app->cfg.job_wakeups};
        rc = job_pool_start(app->store, app->registry, &po, &app->pool, e);
        if (rc == ERR_OK && app->sagas)
            saga_engine_run_here(app->sagas, app->pool);
    }
    if (rc != ERR_OK || app->cfg.port < 0) /* a worker without --port */
        return rc;
    struct http_route routes[MAX_ROUTES];
    size_t n = app_routes(app, routes, MAX_ROUTES);
    struct http_server_options ho;
    http_server_options_defaults(&ho);
    ho.host = app->cfg.host;
    ho.port = (int)app->cfg.port;
    ho.threads = (int)app->cfg.http_threads;
    if (app->cfg.body_limit_bytes > 0) /* a worker has only GET routes */
        ho.body_limit_bytes = app->cfg.body_limit_bytes;
    ho.api_token = app->cfg.api_token;
    rc = http_server_start(&ho, routes, n, &app->http, e);
    if (rc != ERR_OK)
        return rc;
    /* auth=off says so when --api-token is unset or empty (an empty
     * BACKBONE_API_TOKEN= turns it off too). */
    bool auth = app->cfg.api_token != NULL && app->cfg.api_token[0] != '\0';
    log_info("server.listening", "host=%s port=%d engine=%s version=%s pid=%d auth=%s",
             app->cfg.host, http_server_port(app->http),
             store_engine_name(store_engine_of(app->store)), BB_VERSION, (int)getpid(),
             auth ? "bearer" : "off");
    return ERR_OK;
}

/* Take everything down in order (also after a failed start: NULLs are fine).
 * False when something still runs (a handler that ignored cancellation, a
 * request still suspended): then nothing is freed, for the process to exit
 * with. */
static bool
app_stop(struct app *app)
{
    int64_t t0 = bb_mono_ms();
    int64_t deadline = t0 + app->cfg.shutdown_timeout_ms;
    http_server_drain(app->http);
    lock_service_stop_waiting(app->locks);
    job_service_stop_waiting(app->jobs);
    job_scheduler_stop(app->scheduler);
    saga_engine_stop(app->sagas);
    if (app->sagas)
        saga_engine_run_here(app->sagas, NULL);
    bool clean = job_pool_stop(app->pool, deadline);
    payments_stop(app->payments);
    int64_t left = deadline - bb_mono_ms();
    clean = http_server_stop(app->http, left > 1000 ? left : 1000) && clean;
    if (!clean) {
        /* A handler or a request still runs: what it may use stays, and the
         * process exits with it. Every accepted write is already durable. */
        log_info("server.stopped", "duration_ms=%lld clean=%s", (long long)(bb_mono_ms() - t0),
                 "false");
        return false;
    }
    lock_service_destroy(app->locks);
    job_service_destroy(app->jobs);
    inventory_service_destroy(app->inventory);
    outbox_service_destroy(app->outbox);
    order_service_destroy(app->orders);
    payments_destroy(app->payments);
    checkout_service_destroy(app->checkout);
    saga_announcer_destroy(app->announcer);
    saga_engine_destroy(app->sagas);
    checkout_saga_destroy(app->checkout_saga);
    job_registry_destroy(app->registry);
    store_close(app->store);
    free_list(app->worker_queues);
    free_list(app->exec_allow);
    log_info("server.stopped", "duration_ms=%lld", (long long)(bb_mono_ms() - t0));
    return true;
}

/* Test builds: BACKBONE_FAULTS arms fault points (bb_faults_arm; seeded by
 * BACKBONE_FAULTS_SEED) once everything has started, so that start-up
 * itself does not fail. Not an option of --help: a test knob, refused by
 * builds without fault points. */
static enum err
faults_arm(bool started, struct bb_error *e)
{
    const char *spec = getenv("BACKBONE_FAULTS");
    if (spec == NULL || spec[0] == '\0')
        return ERR_OK;
    const char *seed_text = getenv("BACKBONE_FAULTS_SEED");
    uint64_t seed = 1;
    if (seed_text && seed_text[0]) {
        char *end;
        errno = 0;
        seed = strtoull(seed_text, &end, 10);
        if (errno != 0 || *end != '\0' || seed_text[0] == '-')
            return bb_fail(e, ERR_USAGE, "faults", "BACKBONE_FAULTS_SEED '%s' is not a number",
                           seed_text);
    }
    enum err rc = bb_faults_arm(spec, seed, e);
    if (rc == ERR_OK && !started)
        bb_faults_disarm(); /* checked: armed once started */
    else if (rc == ERR_OK)
        log_warn("faults.armed", "faults=%s seed=%llu", spec, (unsigned long long)seed);
    return rc;
}

/* serve and worker: run until SIGTERM/SIGINT. */
static int
run(int argc, char **argv, const char *command, bool with_api)
{
    struct app app;
    memset(&app, 0, sizeof app);
    bool help;
    int code = serve_config_load(&app.cfg, argc, argv, command, &help);
    if (code != CLI_OK || help) {
        serve_config_free(&app.cfg);
        return code;
    }
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    /* Blocked before any thread starts, so every thread inherits the mask and
     * only sigwait below receives them. */
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct bb_error e;
    bb_error_clear(&e);
    code = CLI_OK;
    enum err rc = ERR_OK;
    if (with_api)
        rc = roles_parse(app.cfg.roles, &app.roles, &e);
    else
        app.roles = ROLE_WORKERS | ROLE_SCHEDULER | ROLE_SAGAS;
    if (rc == ERR_OK)
        rc = faults_arm(false, &e);
    if (rc != ERR_OK || app_start(&app, &e) != ERR_OK || faults_arm(true, &e) != ERR_OK) {
        log_error("server.start_failed", "field=%s detail=%s", e.field, e.detail);
        fprintf(stderr, "backbone %s: %s\n", command, e.detail);
        code = e.code == ERR_USAGE ? CLI_USAGE : CLI_UNAVAILABLE;
    } else {
        if (!with_api)
            log_info("worker.started", "engine=%s workers=%lld pid=%d",
                     store_engine_name(store_engine_of(app.store)), (long long)app.cfg.workers,
                     (int)getpid());
        int sig = 0;
        sigwait(&signals, &sig);
        log_info("server.stopping", "signal=%d", sig);
    }
    if (app_stop(&app)) {
        serve_config_free(&app.cfg);
        metrics_shutdown();
    }
    return code;
}

int
cli_serve(int argc, char **argv)
{
    return run(argc, argv, "serve", true);
}

int
cli_worker(int argc, char **argv)
{
    return run(argc, argv, "worker", false);
}

int
cli_migrate(int argc, char **argv)
{
    struct serve_config cfg;
    bool help;
    int code = serve_config_load(&cfg, argc, argv, "migrate", &help);
    if (code != CLI_OK || help) {
        serve_config_free(&cfg);
        return code;
    }
    struct bb_error e;
    bb_error_clear(&e);
    struct store *s = NULL;
    enum err rc = open_store(&cfg, &s, &e);
    if (rc == ERR_OK)
        rc = backbone_migrate_all(s, &e);
    store_close(s);
    if (rc == ERR_OK)
        printf("schema up to date (%s)\n", cfg.db);
    else
        fprintf(stderr, "backbone migrate: %s\n", e.detail);
    serve_config_free(&cfg);
    metrics_shutdown();
    return rc == ERR_OK ? CLI_OK : CLI_UNAVAILABLE;
}
