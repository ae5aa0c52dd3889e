/*
 * jobbench: load for Backbone's job API, one measurement per run, printed as
 * one JSON line.
 *
 *   jobbench submit  --url U --duration 5s   one client submitting no-op jobs one
 *                                             by one: jobs/s, p50/p99 per submit
 *   jobbench batch   --url U --jobs 20000    batches of 1000 in one request each
 *   jobbench process --url U --jobs 20000    submit into a paused queue, resume it,
 *                                             time first start to last completion
 *   jobbench flow    --url U --jobs 20000    submit in batches while the workers run:
 *                                             time first submit sent to last completion
 *   jobbench latency --url U --samples 200   idle system: a waiting pull claim vs
 *                                             a submit; time submit sent -> job claimed
 *   jobbench start   --url U --samples 200   idle embedded workers vs a submit: the job's
 *                                             created_at -> started_at (server clock, ms)
 *   jobbench deep    --url U --jobs 1000000  queue N jobs, then time single claims and a
 *                                            /metrics scrape
 *
 * Every submit answered 201 is durable (the server commits before answering).
 */
#include "benchlib.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct config {
    char *url;
    char *label;
    int64_t duration_ms;
    int64_t jobs;
    int64_t samples;
    int64_t clients;
};

#define OFF(f) offsetof(struct config, f)
static const struct bb_opt OPTS[] = {
    {"url", BB_OPT_STRING, OFF(url), 0, 0, "http://127.0.0.1:8080", "server URL", 0},
    {"label", BB_OPT_STRING, OFF(label), 0, 0, "", "name printed with the result", 0},
    {"duration", BB_OPT_DURATION, OFF(duration_ms), 100, 3600000, "5s", "submit: how long", 0},
    {"jobs", BB_OPT_INT, OFF(jobs), 1, 100000000, "20000", "batch/process/deep: how many", 0},
    {"samples", BB_OPT_INT, OFF(samples), 1, 100000, "200", "latency/deep: measurements", 0},
    {"clients", BB_OPT_INT, OFF(clients), 1, 64, "1", "submit: concurrent clients", 0},
};

static struct config cfg;

/* One request to the server under test. */
static json_t *
call(struct http_client *h, const char *method, const char *path, const char *body, long want)
{
    return bench_call(h, cfg.url, method, path, body, want);
}

/* ---- submit ---------------------------------------------------------------------------- */

static bool
submit_one(struct http_client *h, void *ctx, size_t client, uint64_t i)
{
    (void)ctx, (void)client, (void)i;
    json_decref(call(h, "POST", "/jobs", "{\"queue\":\"sink\",\"handler\":\"noop\"}", 201));
    return true;
}

/* A paused queue: submits measure the API and the commit, not the workers. */
static void
paused_queue(struct http_client *h, const char *name)
{
    char path[64];
    snprintf(path, sizeof path, "/queues/%s", name);
    json_t *q = call(h, "PUT", path, "{\"paused\":true}", 0);
    json_decref(q);
}

static void
run_submit(void)
{
    struct http_client *h = http_client_create(NULL, 30000);
    paused_queue(h, "sink");
    http_client_destroy(h);
    struct bench_result res;
    bench_run((size_t)cfg.clients, cfg.duration_ms, submit_one, NULL, &res);
    printf("{\"bench\":\"submit\",\"label\":\"%s\",\"clients\":%" PRId64 ",\"jobs\":%zu,"
           "\"jobs_per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
           cfg.label, cfg.clients, res.ok, res.ok_per_s, res.p50_ms, res.p99_ms);
}

/* ---- batches ---------------------------------------------------------------------------- */

static char *
batch_body(const char *queue, const char *handler, int64_t n)
{
    struct bb_buf b;
    bb_buf_init(&b);
    bb_buf_puts(&b, "{\"jobs\":[");
    for (int64_t i = 0; i < n; i++)
        bb_buf_printf(&b, "%s{\"queue\":\"%s\",\"handler\":\"%s\",\"payload\":{\"i\":%" PRId64 "}}",
                      i ? "," : "", queue, handler, i);
    bb_buf_puts(&b, "]}");
    return b.data;
}

/* Submit `total` jobs in requests of 1000; returns jobs/s. */
static double
submit_batches(struct http_client *h, const char *queue, const char *handler, int64_t total)
{
    char *body = batch_body(queue, handler, total < 1000 ? total : 1000);
    int64_t t0 = bb_mono_ns();
    for (int64_t done = 0; done < total; done += 1000)
        json_decref(call(h, "POST", "/jobs/batch", body, 201));
    double secs = (double)(bb_mono_ns() - t0) / 1e9;
    free(body);
    return (double)total / secs;
}

static void
run_batch(void)
{
    struct http_client *h = http_client_create(NULL, 120000);
    paused_queue(h, "sink");
    double rate = submit_batches(h, "sink", "noop", cfg.jobs);
    printf("{\"bench\":\"batch\",\"label\":\"%s\",\"jobs\":%" PRId64 ",\"jobs_per_s\":%.0f}\n",
           cfg.label, cfg.jobs, rate);
    http_client_destroy(h);
}

/* ---- processing ----------------------------------------------------------------------------- */

/* Does `queue` still have a job in `state`? One indexed row, not a count. */
static bool
any_job(struct http_client *h, const char *queue, const char *state)
{
    char path[96];
    snprintf(path, sizeof path, "/jobs?queue=%s&state=%s&limit=1", queue, state);
    json_t *page = call(h, "GET", path, NULL, 200);
    bool any = json_array_size(json_object_get(page, "jobs")) > 0;
    json_decref(page);
    return any;
}

/* Wait until `queue` has no job pending or running; the time it ended. */
static int64_t
drained(struct http_client *h, const char *queue)
{
    while (any_job(h, queue, "pending") || any_job(h, queue, "running"))
        bb_sleep_ms(2);
    return bb_mono_ns();
}

static void
run_process(void)
{
    struct http_client *h = http_client_create(NULL, 120000);
    paused_queue(h, "work");
    submit_batches(h, "work", "noop", cfg.jobs);
    int64_t t0 = bb_mono_ns();
    json_decref(call(h, "POST", "/queues/work/resume", "{}", 200));
    double secs = (double)(drained(h, "work") - t0) / 1e9;
    printf("{\"bench\":\"process\",\"label\":\"%s\",\"jobs\":%" PRId64 ",\"jobs_per_s\":%.0f}\n",
           cfg.label, cfg.jobs, (double)cfg.jobs / secs);
    http_client_destroy(h);
}

static void
run_flow(void)
{
    struct http_client *h = http_client_create(NULL, 120000);
    json_decref(call(h, "PUT", "/queues/flow", "{}", 0));
    int64_t t0 = bb_mono_ns();
    submit_batches(h, "flow", "noop", cfg.jobs);
    double secs = (double)(drained(h, "flow") - t0) / 1e9;
    printf("{\"bench\":\"flow\",\"label\":\"%s\",\"jobs\":%" PRId64 ",\"jobs_per_s\":%.0f}\n",
           cfg.label, cfg.jobs, (double)cfg.jobs / secs);
    http_client_destroy(h);
}

/* ---- latency ------------------------------------------------------------------------------ */

/* Print the samples' p50/p99 as `bench`'s result line, and free them. */
static void
print_latencies(const char *bench, int64_t *lat)
{
    double p50, p99;
    bench_percentiles(lat, (size_t)cfg.samples, &p50, &p99);
    printf("{\"bench\":\"%s\",\"label\":\"%s\",\"samples\":%" PRId64
           ",\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
           bench, cfg.label, cfg.samples, p50, p99);
    free(lat);
}

struct claimer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool parked;
    int64_t claimed_ns;
};

static void *
claim_main(void *arg)
{
    struct claimer *c = arg;
    struct http_client *h = http_client_create(NULL, 30000);
    json_t *r = call(h, "POST", "/queues/lat/claim",
                     "{\"worker\":\"bench\",\"max\":1,\"wait_ms\":20000}", 200);
    int64_t got = bb_mono_ns();
    json_t *job = json_array_get(json_object_get(r, "jobs"), 0);
    if (job == NULL) {
        fprintf(stderr, "jobbench: the claim came back empty\n");
        exit(1);
    }
    char path[64], body[64];
    snprintf(path, sizeof path, "/jobs/%" JSON_INTEGER_FORMAT "/complete",
             json_integer_value(json_object_get(job, "job_id")));
    snprintf(body, sizeof body, "{\"token\":%" JSON_INTEGER_FORMAT "}",
             json_integer_value(json_object_get(job, "lease_token")));
    json_decref(call(h, "POST", path, body, 200));
    json_decref(r);
    pthread_mutex_lock(&c->mu);
    c->claimed_ns = got;
    pthread_mutex_unlock(&c->mu);
    http_client_destroy(h);
    return NULL;
}

/* Wait until the server has parked the claim (its gauge says so). */
static void
await_parked(struct http_client *h)
{
    for (int i = 0; i < 20000; i++) {
        char url[256];
        snprintf(url, sizeof url, "%s/metrics", cfg.url);
        struct http_client_response resp;
        struct bb_error e;
        if (http_client_do(h, "GET", url, NULL, &resp, &e) == ERR_OK) {
            bool parked = resp.body.data &&
                          strstr(resp.body.data, "\nbackbone_job_claim_waiters 1\n") != NULL;
            bb_buf_deinit(&resp.body);
            if (parked)
                return;
        }
        bb_sleep_ms(1);
    }
    fprintf(stderr, "jobbench: the claim never parked\n");
    exit(1);
}

static void
run_latency(void)
{
    struct http_client *h = http_client_create(NULL, 30000);
    json_decref(call(h, "PUT", "/queues/lat", "{}", 0));
    int64_t *lat = xcalloc((size_t)cfg.samples, sizeof *lat);
    for (int64_t i = 0; i < cfg.samples; i++) {
        struct claimer c = {.claimed_ns = 0};
        pthread_mutex_init(&c.mu, NULL);
        pthread_t t;
        pthread_create(&t, NULL, claim_main, &c);
        await_parked(h);
        int64_t t0 = bb_mono_ns();
        json_decref(
            call(h, "POST", "/jobs", "{\"queue\":\"lat\",\"handler\":\"external:lat\"}", 201));
        pthread_join(t, NULL);
        lat[i] = c.claimed_ns - t0;
        pthread_mutex_destroy(&c.mu);
    }
    print_latencies("latency", lat);
    http_client_destroy(h);
}

/* A time the server wrote, in ms; exits on anything else. */
static int64_t
stamp_ms(json_t *job, const char *field)
{
    int64_t ms;
    const char *text = json_string_value(json_object_get(job, field));
    if (text == NULL || bb_rfc3339_parse(text, &ms) != ERR_OK) {
        fprintf(stderr, "jobbench: job without %s\n", field);
        exit(1);
    }
    return ms;
}

/* The embedded workers' side of ready-to-start: each job submitted to idle
 * workers, its start read back from the server's own stamps (ms). */
static void
run_start(void)
{
    struct http_client *h = http_client_create(NULL, 30000);
    json_decref(call(h, "PUT", "/queues/start", "{}", 0));
    int64_t *lat = xcalloc((size_t)cfg.samples, sizeof *lat);
    for (int64_t i = 0; i < cfg.samples; i++) {
        json_t *r = call(h, "POST", "/jobs", "{\"queue\":\"start\",\"handler\":\"noop\"}", 201);
        char path[64];
        snprintf(path, sizeof path, "/jobs/%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(r, "job_id")));
        json_decref(r);
        json_t *job = NULL;
        for (;;) {
            job = call(h, "GET", path, NULL, 200);
            const char *state = json_string_value(json_object_get(job, "state"));
            if (state != NULL && strcmp(state, "completed") == 0)
                break;
            json_decref(job);
            bb_sleep_ms(5);
        }
        lat[i] = (stamp_ms(job, "started_at") - stamp_ms(job, "created_at")) * 1000000;
        json_decref(job);
    }
    print_latencies("start", lat);
    http_client_destroy(h);
}

static void
run_deep(void)
{
    struct http_client *h = http_client_create(NULL, 120000);
    json_decref(call(h, "PUT", "/queues/deep", "{}", 0));
    double rate = submit_batches(h, "deep", "external:deep", cfg.jobs);
    int64_t *lat = xcalloc((size_t)cfg.samples, sizeof *lat);
    for (int64_t i = 0; i < cfg.samples; i++) {
        int64_t t0 = bb_mono_ns();
        json_t *r = call(h, "POST", "/queues/deep/claim", "{\"worker\":\"bench\",\"max\":1}", 200);
        lat[i] = bb_mono_ns() - t0;
        if (json_array_size(json_object_get(r, "jobs")) != 1) {
            fprintf(stderr, "jobbench: claim found nothing\n");
            exit(1);
        }
        json_decref(r);
    }
    double p50, p99;
    bench_percentiles(lat, (size_t)cfg.samples, &p50, &p99);
    /* What a Prometheus scrape costs with that many jobs (depth by state). */
    int64_t scrape[5];
    for (size_t i = 0; i < BB_ARRAY_LEN(scrape); i++) {
        int64_t t0 = bb_mono_ns();
        json_decref(call(h, "GET", "/metrics", NULL, 200));
        scrape[i] = bb_mono_ns() - t0;
    }
    double scrape_ms, ignored;
    bench_percentiles(scrape, BB_ARRAY_LEN(scrape), &scrape_ms, &ignored);
    printf("{\"bench\":\"deep\",\"label\":\"%s\",\"queued\":%" PRId64 ",\"fill_jobs_per_s\":%.0f,"
           "\"claim_p50_ms\":%.2f,\"claim_p99_ms\":%.2f,\"metrics_scrape_ms\":%.1f}\n",
           cfg.label, cfg.jobs, rate, p50, p99, scrape_ms);
    free(lat);
    http_client_destroy(h);
}

int
main(int argc, char **argv)
{
    static const struct bench_mode modes[] = {{"submit", run_submit},   {"batch", run_batch},
                                              {"process", run_process}, {"flow", run_flow},
                                              {"latency", run_latency}, {"start", run_start},
                                              {"deep", run_deep}};
    return bench_main("jobbench", OPTS, BB_ARRAY_LEN(OPTS), &cfg, modes, BB_ARRAY_LEN(modes), argc,
                      argv);
}
