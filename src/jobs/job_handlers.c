/*
 * job_handlers.c: the handler registry and the built-in handlers.
 *
 * Handlers run on a worker thread, outside any transaction. They must watch
 * job_run_should_stop() in anything long: it turns true when the attempt's
 * max_duration passes, the job is cancelled or the worker is stopping.
 */
#include "jobs/jobs_int.h"

#include "locks/locks.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct handler {
    char name[JOB_NAME_MAX + 1];
    job_handler_fn *fn;
    void *ctx;
};

struct job_registry {
    struct handler *handlers;
    size_t n;
    char *http_secret;       /* signs webhook bodies; NULL: unsigned */
    struct jobs__exec *exec; /* NULL: exec disabled */
};

bool
job_run_should_stop(const struct job_run *run)
{
    return *run->cancel || run->revoked || bb_mono_ms() >= run->deadline_mono_ms;
}

void
job_run_recorded(struct job_run *run, enum err rc)
{
    run->recorded = true;
    run->recorded_rc = rc;
}

void
job_registry_add(struct job_registry *r, const char *name, job_handler_fn *fn, void *ctx)
{
    BB_ASSERT(job_name_is_valid(name) && !job_handler_is_external(name));
    r->handlers = xrealloc(r->handlers, (r->n + 1) * sizeof *r->handlers);
    struct handler *h = &r->handlers[r->n++];
    bb_strlcpy(h->name, name, sizeof h->name);
    h->fn = fn;
    h->ctx = ctx;
}

job_handler_fn *
jobs__registry_find(const struct job_registry *r, const char *name, void **ctx)
{
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->handlers[i].name, name) == 0) {
            if (ctx)
                *ctx = r->handlers[i].ctx;
            return r->handlers[i].fn;
        }
    }
    return NULL;
}

bool
job_registry_has(const struct job_registry *r, const char *name)
{
    return job_handler_is_external(name) || jobs__registry_find(r, name, NULL) != NULL;
}

void
job_registry_destroy(struct job_registry *r)
{
    if (r == NULL)
        return;
    free(r->handlers);
    free(r->http_secret);
    jobs__exec_destroy(r->exec);
    free(r);
}

void
job_registry_names(const struct job_registry *r, struct bb_buf *out)
{
    for (size_t i = 0; i < r->n; i++)
        bb_buf_printf(out, "%s%s", i ? ", " : "", r->handlers[i].name);
}

enum err
job_registry_check_target(const struct job_registry *r, const char *handler, const json_t *target,
                          struct bb_error *e)
{
    if (target != NULL && !json_is_object(target))
        return bb_fail(e, ERR_INVALID, "target", "target must be an object");
    if (strcmp(handler, "exec") == 0 && r->exec != NULL)
        return jobs__exec_check_target(r->exec, target, e);
    if (strcmp(handler, "http") != 0)
        return ERR_OK;
    if (target == NULL)
        return bb_fail(e, ERR_INVALID, "target", "the http handler needs target.url");
    const char *url = json_string_value(json_object_get(target, "url"));
    if (url == NULL || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return bb_fail(e, ERR_INVALID, "target.url", "target.url must be an http(s) URL");
    return ERR_OK;
}

/* ---- built-ins ----------------------------------------------------------------------- */

static enum job_verdict
handle_noop(struct job_run *run)
{
    (void)run;
    return JOB_DONE;
}

static enum job_verdict
handle_fail(struct job_run *run)
{
    bb_buf_printf(&run->error, "failed on purpose (attempt %" PRId64 ")", run->job->attempt);
    return JOB_RETRY;
}

static enum job_verdict
handle_fail_permanently(struct job_run *run)
{
    bb_buf_puts(&run->error, "failed on purpose, permanently");
    return JOB_FAIL_PERMANENTLY;
}

/* Wait `ms` in small steps, giving up early when told to stop. */
static bool
pause_ms(struct job_run *run, int64_t ms)
{
    int64_t end = bb_mono_ms() + ms;
    while (bb_mono_ms() < end) {
        if (job_run_should_stop(run))
            return false;
        int64_t left = end - bb_mono_ms();
        bb_sleep_ms(left < 10 ? left : 10);
    }
    return true;
}

static int64_t
payload_int(const struct job_run *run, const char *key)
{
    json_t *p = json_loads(run->job->payload, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    int64_t v = json_integer_value(json_object_get(p, key));
    json_decref(p);
    return v;
}

static enum job_verdict
handle_sleep(struct job_run *run)
{
    if (!pause_ms(run, payload_int(run, "ms"))) {
        bb_buf_puts(&run->error, "stopped before the sleep ended");
        return JOB_RETRY;
    }
    return JOB_DONE;
}

static struct store_stmt LEDGER_INSERT = {
    .sql = "INSERT INTO job_ledger (job_id, lease_token, recorded_at_ms) VALUES ($1, $2, $3)"
           " ON CONFLICT (job_id) DO NOTHING",
};

static enum err
ledger_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    const struct job_lease *job = arg;
    char key[48];
    snprintf(key, sizeof key, JOB_FENCE_PREFIX "%" PRId64, job->id);
    /* Fenced by the lease: a worker whose lease was rescued cannot write. */
    enum err rc = lock_fence_check(c, key, job->lease_token, bb_wall_ms(), e);
    if (rc != ERR_OK)
        return rc;
    const struct store_param p[] = {sp_int(job->id), sp_int(job->lease_token),
                                    sp_int(bb_wall_ms())};
    return store_exec(c, &LEDGER_INSERT, p, BB_ARRAY_LEN(p), NULL, e);
}

/*
 * The idempotent handler of the crash tests: after an optional pause
 * (payload {"ms":N}) it records the job in job_ledger, at most once per job
 * however often it runs, and refuses to write for a stale lease.
 */
static enum job_verdict
handle_ledger(struct job_run *run)
{
    if (!pause_ms(run, payload_int(run, "ms"))) {
        bb_buf_puts(&run->error, "stopped before recording");
        return JOB_RETRY;
    }
    struct bb_error e;
    enum err rc = store_run(run->store, STORE_WRITE, ledger_work, (void *)run->job, &e);
    if (rc == ERR_OK)
        return JOB_DONE;
    bb_buf_printf(&run->error, "ledger: %s", e.detail);
    if (rc != ERR_STALE_TOKEN)
        return JOB_RETRY;
    lock_metric_fence_refused();
    return JOB_FAIL_PERMANENTLY;
}

/* ---- HTTP push --------------------------------------------------------------------------- */

static bool
push_should_stop(void *arg)
{
    return job_run_should_stop(arg);
}

/*
 * POST the payload to target.url. 2xx: done. 408, 429, 5xx, a timeout or a
 * connection failure: retried. Other 4xx: a permanent failure, unless the
 * target says {"retry_4xx": true}; so is a 3xx (redirects are not followed:
 * the job is to name the final URL). With a secret configured, the request
 * is signed: X-Backbone-Timestamp: <unix seconds>, and
 * X-Backbone-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<job id>.<body>">,
 * so that a receiver can refuse an old request replayed, and trust the job
 * id it deduplicates by. A cancel (or the worker's stop) gives the request
 * up in flight.
 */
static enum job_verdict
handle_http(struct job_run *run)
{
    struct job_registry *reg = run->ctx;
    json_t *target = run->job->target ? json_loads(run->job->target, 0, NULL) : NULL;
    const char *url = json_string_value(json_object_get(target, "url"));
    bool retry_4xx = json_is_true(json_object_get(target, "retry_4xx"));
    if (url == NULL) {
        json_decref(target);
        bb_buf_puts(&run->error, "http handler: the job has no target.url");
        return JOB_FAIL_PERMANENTLY;
    }
    int64_t left = run->deadline_mono_ms - bb_mono_ms();
    struct http_client *client = http_client_create(NULL, left > 1 ? left : 1);
    http_client_set_stop(client, push_should_stop, run); /* cancelled, or the worker stops */
    char id[32], attempt[32];
    snprintf(id, sizeof id, "%" PRId64, run->job->id);
    snprintf(attempt, sizeof attempt, "%" PRId64, run->job->attempt);
    http_client_add_header(client, "X-Backbone-Job-Id", id);
    http_client_add_header(client, "X-Backbone-Attempt", attempt);
    if (run->job->traceparent)
        http_client_add_header(client, "traceparent", run->job->traceparent);
    if (reg->http_secret) {
        char stamp[32], mac[65], value[80];
        snprintf(stamp, sizeof stamp, "%" PRId64, bb_wall_ms() / 1000);
        struct bb_buf signed_text;
        bb_buf_init(&signed_text);
        bb_buf_printf(&signed_text, "%s.%s.%s", stamp, id, run->job->payload);
        bb_hmac_sha256_hex(reg->http_secret, signed_text.data, signed_text.len, mac);
        bb_buf_deinit(&signed_text);
        snprintf(value, sizeof value, "sha256=%s", mac);
        http_client_add_header(client, "X-Backbone-Timestamp", stamp);
        http_client_add_header(client, "X-Backbone-Signature", value);
    }
    struct http_client_response resp;
    struct bb_error e;
    enum err rc = http_client_do(client, "POST", url, run->job->payload, &resp, &e);
    http_client_destroy(client);
    long status = rc == ERR_OK ? resp.status : 0;
    if (rc != ERR_OK)
        bb_buf_printf(&run->error, "POST %s: %s", url, e.detail);
    else if (status < 200 || status >= 300)
        bb_buf_printf(&run->error, "POST %s answered %ld: %.200s", url, status,
                      resp.body.data ? resp.body.data : "");

    json_decref(target); /* `url` points into it: freed only now */
    if (rc != ERR_OK)
        return JOB_RETRY;
    bb_buf_deinit(&resp.body);
    if (status >= 200 && status < 300)
        return JOB_DONE;
    if (status >= 300 && status < 400) {
        bb_buf_puts(&run->error, " (redirects are not followed: give the job the final URL)");
        return JOB_FAIL_PERMANENTLY;
    }
    if (status >= 400 && status < 500 && status != 408 && status != 429 && !retry_4xx)
        return JOB_FAIL_PERMANENTLY;
    return JOB_RETRY;
}

enum err
job_registry_create(const struct job_registry_options *o, struct job_registry **out,
                    struct bb_error *e)
{
    struct job_registry *r = xcalloc(1, sizeof *r);
    r->http_secret = o->http_secret && *o->http_secret ? xstrdup(o->http_secret) : NULL;
    if (o->exec_allow != NULL) {
        enum err rc = jobs__exec_create(o->exec_allow, &r->exec, e);
        if (rc != ERR_OK) {
            job_registry_destroy(r);
            return rc;
        }
    }
    job_registry_add(r, "noop", handle_noop, NULL);
    job_registry_add(r, "fail", handle_fail, NULL);
    job_registry_add(r, "fail_permanently", handle_fail_permanently, NULL);
    job_registry_add(r, "sleep", handle_sleep, NULL);
    job_registry_add(r, "ledger", handle_ledger, NULL);
    job_registry_add(r, "http", handle_http, r);
    if (r->exec != NULL)
        job_registry_add(r, "exec", jobs__exec_handle, r->exec);
    *out = r;
    return ERR_OK;
}
