/*
 * job_http.c: the jobs API: submitting (one, a batch, recurring), reading,
 * cancelling and retrying jobs, queues, schedules, the dead-letter queue, and
 * the pull API for workers outside Backbone (claim with long polling,
 * heartbeat, complete, fail).
 *
 * Each handler validates its input on the HTTP thread, then runs one unit
 * of work on the store executor and answers after commit. A `struct jop`
 * carries inputs and the answer (`out`, `status`); it lives in the request's
 * arena. A claim that finds nothing and may wait parks on a wait list keyed
 * by queue, woken by the store notification that announces new jobs.
 */
#include "jobs/jobs_int.h"

#include "metrics/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum {
    LIST_LIMIT_DEFAULT = 100,
    LIST_LIMIT_MAX = 1000,
    BATCH_MAX = 1000,
    CLAIM_MAX = 100,
    CLAIM_WAIT_MAX_MS = 60000,
    CLAIM_RECHECK_MS = 1000,
    MAX_DURATION_S_MAX = 86400,
};
/* The furthest a job may be put off: delay_ms, run_at, every_ms. */
#define DELAY_MAX_MS (366LL * 86400000)

enum { SUBMIT_GROUP_MAX = 64 };

struct job_service {
    struct store *store;
    const struct job_registry *reg;
    int64_t payload_limit;
    struct http_waitlist *claims;
    struct http_json_group submits; /* POST /jobs: many per transaction */
};

/* One request's operation. */
struct jop {
    struct job_service *svc;
    struct http_req *req;
    int64_t id;
    int64_t token;
    int64_t n;
    const char *name;
    const char *worker;
    const char *error;
    bool flag;
    int64_t lease_ms;
    int64_t deadline_mono_ms;
    uint64_t seen_seq;
    int64_t throttled_ms;       /* claims: how long the rate limit holds the next start back */
    struct job_finish *claimed; /* claims: the leases the last attempt took (arena) */
    size_t n_claimed;
    struct job_spec spec;
    struct jobs__recurring recurring;
    struct job_spec *specs; /* batch */
    size_t n_specs;
    struct job_queue queue;
    struct job_filter filter;
    json_t *in; /* a request body a unit reads (owned by the request) */
    int kind;   /* lease reports: 0 heartbeat, 1 complete, 2 fail */
    /* the answer */
    json_t *out;
    int status;
};

static struct jop *
jop_new(struct http_req *r, struct job_service *svc)
{
    struct jop *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->svc = svc;
    op->req = r;
    op->status = 200;
    return op;
}

/* Set the answer (a unit that runs again replaces it). */
static void
jop_answer(struct jop *op, int status, json_t *out)
{
    json_decref(op->out);
    op->out = out;
    op->status = status;
}

static void
jop_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct jop *op = arg;
    json_t *out = op->out;
    op->out = NULL;
    if (rc != ERR_OK) {
        json_decref(out);
        http_reply_problem(r, e, NULL);
        return;
    }
    http_reply_json(r, op->status, out ? out : json_object());
}

static void
fail_now(struct http_req *r, struct bb_error *e)
{
    http_reply_problem(r, e, NULL);
}

static void
run_write(struct jop *op, store_work_fn *work)
{
    http_req_run(op->req, op->svc->store, STORE_WRITE, work, jop_reply, op);
}

static void
run_read(struct jop *op, store_work_fn *work)
{
    http_req_run(op->req, op->svc->store, STORE_READ, work, jop_reply, op);
}

static json_t *
time_value(int64_t ms)
{
    char buf[32];
    bb_wall_ms_format(ms, buf);
    return json_string(buf);
}

/* ---- parsing requests ------------------------------------------------------------------ */

static enum err
path_id(struct http_req *r, int64_t *out, struct bb_error *e)
{
    const char *v = http_req_param(r, "id");
    char *end = NULL;
    errno = 0;
    /* Digits only: strtoll alone would take " 1" and "+1" for job 1, and
     * an id past INT64_MAX for INT64_MAX. */
    long long id = v && *v >= '0' && *v <= '9' ? strtoll(v, &end, 10) : 0;
    if (id <= 0 || *end != '\0' || errno != 0)
        return bb_fail(e, ERR_INVALID, "job_id", "job id must be a positive integer");
    *out = id;
    return ERR_OK;
}

static enum err
path_name(struct http_req *r, const char *param, const char **out, struct bb_error *e)
{
    const char *v = http_req_param(r, param);
    if (v == NULL || !job_name_is_valid(v))
        return bb_fail(e, ERR_INVALID, param,
                       "%s must be 1 to %d characters from A-Z a-z 0-9 . _ : -", param,
                       JOB_NAME_MAX);
    *out = v;
    return ERR_OK;
}

/* Field name with the batch prefix, in the arena. */
static const char *
field(struct bb_arena *a, const char *prefix, const char *name)
{
    return *prefix ? bb_arena_printf(a, "%s%s", prefix, name) : name;
}

/* A failure whose field carries the prefix. */
static enum err
prefixed(struct bb_error *e, enum err rc, struct bb_arena *a, const char *prefix)
{
    if (rc != ERR_OK && *prefix) {
        char f[sizeof e->field];
        bb_strlcpy(f, field(a, prefix, e->field), sizeof f);
        bb_strlcpy(e->field, f, sizeof e->field);
    }
    return rc;
}

static enum err
name_member(const json_t *body, const char *key, bool required, const char **out,
            struct bb_error *e)
{
    enum err rc = bb_json_string(body, key, required, JOB_NAME_MAX, out, e);
    if (rc == ERR_OK && *out && !job_name_is_valid(*out))
        return bb_fail(e, ERR_INVALID, key,
                       "%s must be 1 to %d characters from A-Z a-z 0-9 . _ : -", key, JOB_NAME_MAX);
    return rc;
}

static enum err
backoff_member(const json_t *body, struct job_spec *spec, struct bb_error *e)
{
    const json_t *b = json_object_get(body, "backoff");
    if (b == NULL)
        return ERR_OK;
    if (!json_is_object(b))
        return bb_fail(e, ERR_INVALID, "backoff", "backoff must be an object");
    static const char *const allowed[] = {"base_ms", "factor", "cap_ms", "jitter_pct", NULL};
    enum err rc = bb_json_only(b, allowed, e);
    job_backoff_defaults(&spec->backoff);
    spec->has_backoff = true;
    if (rc == ERR_OK)
        rc = bb_json_int(b, "base_ms", false, 1, 86400000, &spec->backoff.base_ms, e);
    if (rc == ERR_OK)
        rc = bb_json_int(b, "cap_ms", false, 1, 86400000 * 7LL, &spec->backoff.cap_ms, e);
    if (rc == ERR_OK)
        rc = bb_json_int(b, "jitter_pct", false, 0, 100, &spec->backoff.jitter_pct, e);
    const json_t *factor = json_object_get(b, "factor");
    if (rc == ERR_OK && factor) {
        if (!json_is_number(factor) || json_number_value(factor) < 1 ||
            json_number_value(factor) > 100)
            rc = bb_fail(e, ERR_INVALID, "factor", "factor must be a number from 1 to 100");
        else
            spec->backoff.factor_milli = (int64_t)(json_number_value(factor) * 1000 + 0.5);
    }
    if (rc != ERR_OK) {
        char f[sizeof e->field + 16];
        snprintf(f, sizeof f, "backoff.%s", e->field);
        bb_strlcpy(e->field, f, sizeof e->field);
    }
    return rc;
}

/* The payload as stored: compact JSON text. A string payload is JSON text
 * itself (the seed API sent "payload":"{}"), and must parse. */
static enum err
payload_member(const json_t *body, int64_t limit, struct bb_arena *a, const char **out,
               struct bb_error *e)
{
    const json_t *v = json_object_get(body, "payload");
    json_t *parsed = NULL;
    if (v == NULL) {
        *out = "{}";
        return ERR_OK;
    }
    if (json_is_string(v)) {
        json_error_t jerr;
        parsed = json_loadb(json_string_value(v), json_string_length(v),
                            JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (parsed == NULL)
            return bb_fail(e, ERR_INVALID, "payload",
                           "payload is a string but not JSON text (%s); send JSON", jerr.text);
        v = parsed;
    }
    char *text = bb_json_dumps(v);
    json_decref(parsed);
    size_t len = strlen(text);
    if ((int64_t)len > limit) {
        free(text);
        return bb_fail(e, ERR_TOO_LARGE, "payload",
                       "payload is %zu bytes, more than the limit of %" PRId64, len, limit);
    }
    *out = bb_arena_strdup(a, text);
    free(text);
    return ERR_OK;
}

static enum err
tags_member(const json_t *body, struct bb_arena *a, const char **out, struct bb_error *e)
{
    const json_t *tags = json_object_get(body, "tags");
    if (tags == NULL)
        return ERR_OK;
    if (!json_is_array(tags) || json_array_size(tags) > JOB_TAGS_MAX)
        return bb_fail(e, ERR_INVALID, "tags", "tags must be an array of at most %d strings",
                       JOB_TAGS_MAX);
    size_t i;
    const json_t *t;
    json_array_foreach(tags, i, t)
    {
        if (!json_is_string(t) || json_string_length(t) == 0 || json_string_length(t) > 100)
            return bb_fail(e, ERR_INVALID, "tags", "tags[%zu] must be a string of 1 to 100 bytes",
                           i);
    }
    char *text = bb_json_dumps(tags);
    *out = bb_arena_strdup(a, text);
    free(text);
    return ERR_OK;
}

static enum err
target_member(const json_t *body, const struct job_registry *reg, const char *handler,
              struct bb_arena *a, const char **out, struct bb_error *e)
{
    const json_t *t = json_object_get(body, "target");
    enum err rc = job_registry_check_target(reg, handler, t, e);
    if (rc != ERR_OK || t == NULL)
        return rc;
    char *text = bb_json_dumps(t);
    *out = bb_arena_strdup(a, text);
    free(text);
    return ERR_OK;
}

static enum err
unknown_handler(const struct job_registry *reg, const char *handler, struct bb_error *e)
{
    if (strcmp(handler, "exec") == 0)
        return bb_fail(e, ERR_INVALID, "handler",
                       "the exec handler is off: start the server with --exec-allow DIR to let "
                       "jobs run the commands in DIR");
    struct bb_buf names;
    bb_buf_init(&names);
    job_registry_names(reg, &names);
    bb_fail(e, ERR_INVALID, "handler",
            "unknown handler '%.100s': this server runs %s; external:NAME is for workers that "
            "claim over HTTP",
            handler, names.data);
    bb_buf_deinit(&names);
    return ERR_INVALID;
}

static const char *const SPEC_FIELDS[] = {
    "queue",      "handler",         "payload",  "target",
    "schedule",   "run_at",          "delay_ms", "cron",
    "timezone",   "every_ms",        "name",     "priority",
    "unique_key", "max_attempts",    "backoff",  "max_duration_seconds",
    "tags",       "concurrency_key", NULL,
};

/* When it runs: now, run_at, delay_ms; or recurring: cron (+timezone), every_ms. */
static enum err
timing_members(const json_t *body, int64_t now_ms, struct job_spec *spec,
               struct jobs__recurring *rec, struct bb_error *e)
{
    const char *schedule = NULL, *run_at = NULL;
    int64_t delay = -1, every = 0;
    enum err rc = bb_json_string(body, "schedule", false, 32, &schedule, e);
    if (rc == ERR_OK && schedule && strcmp(schedule, "now") != 0)
        rc = bb_fail(e, ERR_INVALID, "schedule",
                     "schedule must be \"now\"; use run_at, delay_ms, cron or every_ms");
    if (rc == ERR_OK)
        rc = bb_json_string(body, "run_at", false, 64, &run_at, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "delay_ms", false, 0, DELAY_MAX_MS, &delay, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "every_ms", false, 1000, DELAY_MAX_MS, &every, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "cron", false, 127, &rec->cron, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "timezone", false, 63, &rec->tz, e);
    if (rc == ERR_OK)
        rc = name_member(body, "name", false, &rec->name, e);
    if (rc != ERR_OK)
        return rc;
    int kinds = (run_at != NULL) + (delay >= 0) + (every > 0) + (rec->cron != NULL);
    if (kinds > 1)
        return bb_fail(e, ERR_INVALID, "schedule",
                       "give at most one of run_at, delay_ms, cron and every_ms");
    /* "now" (the seed API's word) is a time of its own: with another, one
     * of the two would be silently dropped. */
    if (schedule && kinds > 0) {
        const char *other = run_at       ? "run_at"
                            : delay >= 0 ? "delay_ms"
                            : rec->cron  ? "cron"
                                         : "every_ms";
        return bb_fail(e, ERR_INVALID, other,
                       "schedule \"now\" and %s exclude each other: give one of them", other);
    }
    if (run_at && bb_rfc3339_parse(run_at, &spec->run_at_ms) != ERR_OK)
        return bb_fail(e, ERR_INVALID, "run_at",
                       "run_at must be an RFC 3339 time such as 2026-11-23T10:00:00Z");
    if (run_at && spec->run_at_ms > now_ms + DELAY_MAX_MS)
        return bb_fail(e, ERR_INVALID, "run_at",
                       "run_at must be at most 366 days from now, as delay_ms (use a schedule, "
                       "or submit it later)");
    if (delay >= 0)
        spec->run_at_ms = now_ms + delay;
    if (rec->tz && !rec->cron)
        return bb_fail(e, ERR_INVALID, "timezone", "timezone goes with cron");
    if (rec->tz && !job_tz_is_valid(rec->tz))
        return bb_fail(e, ERR_INVALID, "timezone",
                       "unknown time zone '%s' (see tzdata: UTC, "
                       "Europe/Paris, America/New_York...)",
                       rec->tz);
    if (rec->cron) {
        struct job_cron parsed;
        int64_t next;
        rc = job_cron_parse(rec->cron, &parsed, e);
        if (rc == ERR_OK)
            rc = job_cron_next(&parsed, rec->tz ? rec->tz : "UTC", now_ms, &next, e);
        if (rc != ERR_OK)
            return rc;
    }
    if (rec->name && !rec->cron && every == 0)
        return bb_fail(e, ERR_INVALID, "name", "name names a recurring job: give cron or every_ms");
    rec->interval_ms = every;
    rec->present = rec->cron != NULL || every > 0;
    return ERR_OK;
}

enum err
jobs__spec_from_json(const json_t *body, const struct job_registry *reg, int64_t payload_limit,
                     int64_t now_ms, const char *prefix, struct bb_arena *arena,
                     struct job_spec *spec, struct jobs__recurring *rec, struct bb_error *e)
{
    memset(spec, 0, sizeof *spec);
    memset(rec, 0, sizeof *rec);
    int64_t seconds = 0;
    enum err rc = json_is_object(body) ? bb_json_only(body, SPEC_FIELDS, e)
                                       : bb_fail(e, ERR_INVALID, "", "a job must be a JSON object");
    if (rc == ERR_OK)
        rc = name_member(body, "queue", false, &spec->queue, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "handler", false, JOB_NAME_MAX, &spec->handler, e);
    if (rc == ERR_OK && spec->handler == NULL)
        spec->handler = "noop"; /* the seed API's jobs name no handler */
    if (rc == ERR_OK &&
        (!job_name_is_valid(spec->handler) || !job_registry_has(reg, spec->handler)))
        rc = unknown_handler(reg, spec->handler, e);
    if (rc == ERR_OK)
        rc = payload_member(body, payload_limit, arena, &spec->payload, e);
    if (rc == ERR_OK)
        rc = target_member(body, reg, spec->handler, arena, &spec->target, e);
    if (rc == ERR_OK)
        rc = timing_members(body, now_ms, spec, rec, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "priority", false, JOB_PRIORITY_MIN, JOB_PRIORITY_MAX,
                         &spec->priority, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "unique_key", false, JOB_UNIQUE_KEY_MAX, &spec->unique_key, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "concurrency_key", false, JOB_CONCURRENCY_KEY_MAX,
                            &spec->concurrency_key, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "max_attempts", false, 1, JOB_ATTEMPTS_MAX, &spec->max_attempts, e);
    if (rc == ERR_OK)
        rc = backoff_member(body, spec, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "max_duration_seconds", false, 1, MAX_DURATION_S_MAX, &seconds, e);
    if (rc == ERR_OK)
        rc = tags_member(body, arena, &spec->tags, e);
    spec->max_duration_ms = seconds * 1000;
    return prefixed(e, rc, arena, prefix);
}

/* ---- submitting ---------------------------------------------------------------------------- */

static enum err
unknown_queue(struct bb_error *e, const char *queue)
{
    return bb_fail(e, ERR_INVALID, "queue", "unknown queue '%s' (create it: PUT /queues/%s)", queue,
                   queue);
}

/* The answer to a submit that created its job. */
static json_t *
submitted_json(const struct job_spec *spec, int64_t id, int64_t now_ms)
{
    return json_pack("{s:I, s:s, s:o}", "job_id", (json_int_t)id, "state", "pending", "run_at",
                     time_value(spec->run_at_ms ? spec->run_at_ms : now_ms));
}

static enum err
submit_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    int64_t now = bb_wall_ms();
    if (op->recurring.present) {
        struct job_schedule s = {.interval_ms = op->recurring.interval_ms, .job = op->spec};
        if (op->recurring.name)
            bb_strlcpy(s.name, op->recurring.name, sizeof s.name);
        else
            snprintf(s.name, sizeof s.name, "job-%s", op->name);
        if (op->recurring.cron)
            bb_strlcpy(s.cron, op->recurring.cron, sizeof s.cron);
        bb_strlcpy(s.tz, op->recurring.tz ? op->recurring.tz : "UTC", sizeof s.tz);
        struct job_schedule_put_result put;
        enum err rc = job_schedule_put(c, &s, now, &put, e);
        if (rc == ERR_NOT_FOUND && strcmp(e->field, "queue") == 0)
            return unknown_queue(e, op->spec.queue); /* 400, as a one-off submit */
        if (rc == ERR_OK)
            jop_answer(op, put.created ? 201 : 200,
                       json_pack("{s:s, s:o, s:b, s:b}", "schedule", s.name, "next_fire_at",
                                 time_value(put.next_fire_ms), "created", put.created, "paused",
                                 put.paused));
        return rc;
    }
    int64_t id;
    bool created;
    enum err rc = job_submit(c, &op->spec, now, &id, &created, e);
    if (rc == ERR_NOT_FOUND && strcmp(e->field, "queue") == 0)
        return unknown_queue(e, op->spec.queue);
    if (rc != ERR_OK)
        return rc;
    if (created) {
        jop_answer(op, 201, submitted_json(&op->spec, id, now));
        return ERR_OK;
    }
    /* Its unique key found a job: that job as it is, not as asked. */
    json_t *job;
    rc = job_get_json(c, id, false, now, &job, e);
    if (rc == ERR_NOT_FOUND) /* gone since (PostgreSQL): look again */
        return bb_fail(e, ERR_RETRY, "", "unique job changed concurrently");
    if (rc != ERR_OK)
        return rc;
    jop_answer(op, 200,
               json_pack("{s:I, s:O, s:O, s:b}", "job_id", (json_int_t)id, "state",
                         json_object_get(job, "state"), "run_at", json_object_get(job, "run_at"),
                         "duplicate", true));
    json_decref(job);
    return ERR_OK;
}

/* A plain submit (no schedule, no unique key) taken alone. */
static enum err
submit_alone(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct jop *op = arg;
    enum err rc = submit_work(c, op, e);
    if (rc == ERR_OK) {
        a->status = op->status;
        a->body = op->out;
        op->out = NULL;
    }
    return rc;
}

/* Plain submits waiting together: each queue read once, one insert per
 * queue; a request naming an unknown queue fails alone. */
static enum err
submit_many_json(struct store_conn *c, void *const *args, struct http_answer *const *answers,
                 size_t n, enum err *rcs, struct bb_error *errors, struct bb_error *e)
{
    struct job_spec *specs = xcalloc(n, sizeof *specs);
    size_t *of = xcalloc(n, sizeof *of), k = 0;
    const char **names = xcalloc(n, sizeof *names);
    bool *known = xcalloc(n, sizeof *known);
    size_t n_names = 0;
    enum err rc = ERR_OK;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        const struct jop *op = args[i];
        const char *queue = op->spec.queue ? op->spec.queue : "default";
        size_t q = 0;
        while (q < n_names && strcmp(names[q], queue) != 0)
            q++;
        if (q == n_names) {
            struct job_queue found;
            rc = job_queue_get(c, queue, &found, e);
            known[q] = rc == ERR_OK;
            if (rc == ERR_NOT_FOUND)
                rc = ERR_OK;
            names[n_names++] = queue;
        }
        if (!known[q]) {
            rcs[i] = unknown_queue(&errors[i], queue);
            continue;
        }
        specs[k] = op->spec;
        of[k++] = i;
    }
    int64_t *ids = xcalloc(k ? k : 1, sizeof *ids);
    bool *created = xcalloc(k ? k : 1, sizeof *created);
    int64_t now = bb_wall_ms();
    size_t at;
    if (rc == ERR_OK && k > 0)
        rc = job_submit_many(c, specs, k, now, ids, created, &at, e);
    for (size_t q = 0; q < k && rc == ERR_OK; q++) {
        answers[of[q]]->status = 201;
        answers[of[q]]->body = submitted_json(&specs[q], ids[q], now);
    }
    free(created);
    free(ids);
    free(known);
    free(names);
    free(of);
    free(specs);
    return rc;
}

static void
handle_submit(struct http_req *r, void *ctx)
{
    struct job_service *svc = ctx;
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, svc);
    json_t *body;
    if (http_req_json_object(r, &body, e) != ERR_OK ||
        jobs__spec_from_json(body, svc->reg, svc->payload_limit, bb_wall_ms(), "",
                             http_req_arena(r), &op->spec, &op->recurring, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->spec.traceparent = http_req_traceparent(r);
    char id[37];
    bb_uuid7(id);
    op->name = bb_arena_strdup(http_req_arena(r), id);
    if (op->recurring.present || op->spec.unique_key || op->spec.schedule)
        http_req_run(r, svc->store, STORE_WRITE, submit_work, jop_reply, op);
    else /* may share its transaction with others waiting */
        http_req_run_json_grouped(r, svc->store, STORE_WRITE, &svc->submits, submit_alone, NULL,
                                  op);
}

static enum err
batch_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    int64_t *ids = xcalloc(op->n_specs, sizeof *ids);
    bool *created = xcalloc(op->n_specs, sizeof *created);
    size_t at = 0;
    enum err rc = job_submit_many(c, op->specs, op->n_specs, bb_wall_ms(), ids, created, &at, e);
    if (rc != ERR_OK) {
        free(ids);
        free(created);
        char f[sizeof e->field + 32];
        snprintf(f, sizeof f, "jobs[%zu].%s", at, e->field[0] ? e->field : "job");
        char detail[sizeof e->detail];
        bb_strlcpy(detail, e->detail, sizeof detail); /* bb_fail writes e->detail */
        return bb_fail(e, rc == ERR_NOT_FOUND ? ERR_INVALID : rc, f, "jobs[%zu]: %s", at, detail);
    }
    json_t *list = json_array();
    op->n = 0;
    for (size_t i = 0; i < op->n_specs; i++) {
        op->n += created[i];
        json_array_append_new(
            list, json_pack("{s:I, s:b}", "job_id", (json_int_t)ids[i], "created", created[i]));
    }
    free(ids);
    free(created);
    /* 201 when the batch created a job; 200 when every job's unique key
     * was held, as a single submit's duplicate answers. */
    jop_answer(op, op->n > 0 ? 201 : 200, json_pack("{s:o}", "jobs", list));
    return ERR_OK;
}

static void
handle_batch(struct http_req *r, void *ctx)
{
    struct job_service *svc = ctx;
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, svc);
    json_t *body;
    static const char *const allowed[] = {"jobs", NULL};
    if (http_req_json_object(r, &body, e) != ERR_OK || bb_json_only(body, allowed, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    json_t *jobs = json_object_get(body, "jobs");
    if (!json_is_array(jobs) || json_array_size(jobs) == 0 || json_array_size(jobs) > BATCH_MAX) {
        bb_fail(e, ERR_INVALID, "jobs", "jobs must be an array of 1 to %d jobs", BATCH_MAX);
        fail_now(r, e);
        return;
    }
    op->n_specs = json_array_size(jobs);
    op->specs = bb_arena_alloc(http_req_arena(r), op->n_specs * sizeof *op->specs);
    int64_t now = bb_wall_ms();
    for (size_t i = 0; i < op->n_specs; i++) {
        struct jobs__recurring rec;
        char prefix[32];
        snprintf(prefix, sizeof prefix, "jobs[%zu].", i);
        if (jobs__spec_from_json(json_array_get(jobs, i), svc->reg, svc->payload_limit, now, prefix,
                                 http_req_arena(r), &op->specs[i], &rec, e) != ERR_OK) {
            fail_now(r, e);
            return;
        }
        if (rec.present) {
            bb_fail(e, ERR_INVALID, field(http_req_arena(r), prefix, "cron"),
                    "a batch takes one-off jobs; create recurring ones one at a time");
            fail_now(r, e);
            return;
        }
        op->specs[i].traceparent = http_req_traceparent(r);
    }
    http_req_run(r, svc->store, STORE_WRITE, batch_work, jop_reply, op);
}

/* ---- reading ------------------------------------------------------------------------------- */

static enum err
get_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    json_t *job;
    enum err rc = job_get_json(c, op->id, true, bb_wall_ms(), &job, e);
    if (rc != ERR_OK)
        return rc;
    if (op->flag) { /* the dead-letter view: only dead jobs */
        if (strcmp(json_string_value(json_object_get(job, "state")), "dead") != 0) {
            json_decref(job);
            return bb_fail(e, ERR_NOT_FOUND, "job_id",
                           "job %" PRId64 " is not in the dead-letter queue", op->id);
        }
    }
    if (op->name) { /* the history view: attempts only */
        json_t *h = json_pack("{s:I, s:O}", "job_id", (json_int_t)op->id, "attempts",
                              json_object_get(job, "attempts"));
        json_decref(job);
        job = h;
    }
    jop_answer(op, 200, job);
    return ERR_OK;
}

static void
get_job(struct http_req *r, void *ctx, bool dead_only, bool history)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    if (path_id(r, &op->id, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->flag = dead_only;
    op->name = history ? "history" : NULL;
    run_read(op, get_work);
}

static void
handle_get(struct http_req *r, void *ctx)
{
    get_job(r, ctx, false, false);
}

static void
handle_history(struct http_req *r, void *ctx)
{
    get_job(r, ctx, false, true);
}

static void
handle_dlq_get(struct http_req *r, void *ctx)
{
    get_job(r, ctx, true, false);
}

static enum err
list_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    json_t *page;
    enum err rc = job_list_json(c, &op->filter, bb_wall_ms(), &page, e);
    if (rc == ERR_OK)
        jop_answer(op, 200, page);
    return rc;
}

static void
list_jobs(struct http_req *r, void *ctx, bool dead_only)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    op->filter.limit = LIST_LIMIT_DEFAULT;
    const char *queue = http_req_query(r, "queue");
    const char *state = dead_only ? "dead" : http_req_query(r, "state");
    if (queue && !job_name_is_valid(queue)) {
        bb_fail(e, ERR_INVALID, "queue", "queue must be a queue name");
        fail_now(r, e);
        return;
    }
    if (state && !job_state_parse(state, &op->filter.state)) {
        bb_fail(e, ERR_INVALID, "state",
                "state must be pending, running, completed, cancelled or dead");
        fail_now(r, e);
        return;
    }
    if (http_req_query_int(r, "limit", 1, LIST_LIMIT_MAX, &op->filter.limit, e) != ERR_OK ||
        http_req_query_int(r, "after", 0, INT64_MAX, &op->filter.after_id, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    const char *fingerprint = dead_only ? http_req_query(r, "fingerprint") : NULL;
    if (fingerprint && !job_fingerprint_is_valid(fingerprint)) {
        bb_fail(e, ERR_INVALID, "fingerprint",
                "fingerprint must be 16 hex digits (GET /dlq/groups)");
        fail_now(r, e);
        return;
    }
    op->filter.has_state = state != NULL;
    op->filter.queue = queue ? bb_arena_strdup(http_req_arena(r), queue) : NULL;
    op->filter.fingerprint = fingerprint ? bb_arena_strdup(http_req_arena(r), fingerprint) : NULL;
    run_read(op, list_work);
}

static void
handle_list(struct http_req *r, void *ctx)
{
    list_jobs(r, ctx, false);
}

static void
handle_dlq_list(struct http_req *r, void *ctx)
{
    list_jobs(r, ctx, true);
}

/* ---- changing jobs by hand --------------------------------------------------------------------
 */

static enum err
cancel_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    enum err rc = job_cancel(c, op->id, bb_wall_ms(), e);
    if (rc == ERR_OK)
        jop_answer(op, 200,
                   json_pack("{s:I, s:s}", "job_id", (json_int_t)op->id, "state", "cancelled"));
    return rc;
}

static enum err
run_now_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    if (op->flag) { /* the dead-letter redrive: only dead jobs */
        json_t *job;
        enum err rc = job_get_json(c, op->id, false, bb_wall_ms(), &job, e);
        if (rc != ERR_OK)
            return rc;
        bool dead = strcmp(json_string_value(json_object_get(job, "state")), "dead") == 0;
        json_decref(job);
        if (!dead)
            return bb_fail(e, ERR_CONFLICT, "job_id",
                           "job %" PRId64 " is not in the dead-letter queue", op->id);
    }
    enum err rc = job_run_now(c, op->id, bb_wall_ms(), e);
    if (rc == ERR_OK)
        jop_answer(op, 200,
                   json_pack("{s:I, s:s}", "job_id", (json_int_t)op->id, "state", "pending"));
    return rc;
}

static void
job_action(struct http_req *r, void *ctx, store_work_fn *work, bool flag)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    if (path_id(r, &op->id, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->flag = flag;
    run_write(op, work);
}

static void
handle_cancel(struct http_req *r, void *ctx)
{
    job_action(r, ctx, cancel_work, false);
}

static void
handle_run(struct http_req *r, void *ctx)
{
    job_action(r, ctx, run_now_work, false);
}

static void
handle_dlq_redrive_one(struct http_req *r, void *ctx)
{
    job_action(r, ctx, run_now_work, true);
}

static enum err
groups_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    json_t *groups;
    enum err rc = job_dead_groups_json(c, op->name, op->filter.limit, &groups, e);
    if (rc == ERR_OK)
        jop_answer(op, 200, groups);
    return rc;
}

/* ?queue=NAME (and, but for the groups, &fingerprint=F) for the
 * dead-letter operations on many jobs. */
static struct jop *
dlq_many(struct http_req *r, void *ctx, bool by_fingerprint)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    const char *queue = http_req_query(r, "queue");
    const char *fingerprint = by_fingerprint ? http_req_query(r, "fingerprint") : NULL;
    if (queue && !job_name_is_valid(queue)) {
        bb_fail(e, ERR_INVALID, "queue", "queue must be a queue name");
        fail_now(r, e);
        return NULL;
    }
    if (fingerprint && !job_fingerprint_is_valid(fingerprint)) {
        bb_fail(e, ERR_INVALID, "fingerprint",
                "fingerprint must be 16 hex digits (GET /dlq/groups)");
        fail_now(r, e);
        return NULL;
    }
    op->name = queue ? bb_arena_strdup(http_req_arena(r), queue) : NULL;
    op->filter.fingerprint = fingerprint ? bb_arena_strdup(http_req_arena(r), fingerprint) : NULL;
    return op;
}

static void
handle_dlq_groups(struct http_req *r, void *ctx)
{
    struct jop *op = dlq_many(r, ctx, false);
    if (op == NULL)
        return;
    op->filter.limit = LIST_LIMIT_DEFAULT;
    if (http_req_query_int(r, "limit", 1, LIST_LIMIT_MAX, &op->filter.limit, http_req_error(r)) !=
        ERR_OK) {
        fail_now(r, http_req_error(r));
        return;
    }
    run_read(op, groups_work);
}

static enum err
redrive_all_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    const struct job_dead_match m = {op->name, op->filter.fingerprint};
    int64_t skipped;
    enum err rc = job_redrive_dead(c, &m, bb_wall_ms(), &op->n, &skipped, e);
    if (rc == ERR_OK)
        jop_answer(
            op, 200,
            json_pack("{s:I, s:I}", "redriven", (json_int_t)op->n, "skipped", (json_int_t)skipped));
    return rc;
}

static enum err
purge_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    const struct job_dead_match m = {op->name, op->filter.fingerprint};
    enum err rc = job_purge_dead(c, &m, &op->n, e);
    if (rc == ERR_OK)
        jop_answer(op, 200, json_pack("{s:I}", "purged", (json_int_t)op->n));
    return rc;
}

static enum err
purge_one_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    enum err rc = job_purge_dead_one(c, op->id, e);
    if (rc == ERR_OK)
        jop_answer(op, 200, json_pack("{s:I, s:i}", "job_id", (json_int_t)op->id, "purged", 1));
    return rc;
}

static void
handle_dlq_purge_one(struct http_req *r, void *ctx)
{
    job_action(r, ctx, purge_one_work, false);
}

static void
dlq_bulk(struct http_req *r, void *ctx, store_work_fn *work)
{
    struct jop *op = dlq_many(r, ctx, true);
    if (op)
        run_write(op, work);
}

static void
handle_dlq_redrive_all(struct http_req *r, void *ctx)
{
    dlq_bulk(r, ctx, redrive_all_work);
}

static void
handle_dlq_purge(struct http_req *r, void *ctx)
{
    dlq_bulk(r, ctx, purge_work);
}

/* ---- the pull API -------------------------------------------------------------------------------
 */

static json_t *
lease_json(const struct job_lease *l)
{
    json_t *o = json_pack("{s:I, s:s, s:s, s:I, s:I, s:I, s:o}", "job_id", (json_int_t)l->id,
                          "queue", l->queue, "handler", l->handler, "attempt",
                          (json_int_t)l->attempt, "max_attempts", (json_int_t)l->attempt_limit,
                          "lease_token", (json_int_t)l->lease_token, "lease_expires_at",
                          time_value(l->lease_expires_at_ms));
    json_t *payload = json_loads(l->payload, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    json_object_set_new(o, "payload", payload ? payload : json_null());
    json_object_set_new(o, "traceparent",
                        l->traceparent ? json_string(l->traceparent) : json_null());
    return o;
}

static enum err
claim_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    struct job_lease *leases;
    size_t n;
    int64_t now = bb_wall_ms(), until;
    op->n_claimed = 0;
    enum err rc =
        job_claim(c, op->name, op->worker, true, op->n, op->lease_ms, now, &leases, &n, &until, e);
    op->throttled_ms = until > 0 ? until - now : 0;
    if (rc == ERR_NOT_FOUND)
        rc = bb_fail(e, ERR_NOT_FOUND, "queue", "no queue named %s", op->name);
    if (rc != ERR_OK)
        return rc;
    json_t *list = json_array();
    op->claimed = n ? bb_arena_alloc(http_req_arena(op->req), n * sizeof *op->claimed) : NULL;
    op->n_claimed = n;
    for (size_t i = 0; i < n; i++) {
        op->claimed[i] =
            (struct job_finish){.id = leases[i].id,
                                .token = leases[i].lease_token,
                                .outcome = JOB_OUTCOME_INTERRUPTED,
                                .error = "the worker hung up before it heard of its claim"};
        json_array_append_new(list, lease_json(&leases[i]));
        /* Queue latency: from when it became ready to this claim. */
        jobs__metric_started_at_commit(c, leases[i].queue, jobs__queue_latency_s(&leases[i], now));
        job_lease_deinit(&leases[i]);
    }
    free(leases);
    jop_answer(op, 200, json_pack("{s:o}", "jobs", list));
    return ERR_OK;
}

static void claim_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e);

static void
claim_submit(struct jop *op)
{
    op->seen_seq = http_waitlist_seq(op->svc->claims, op->name);
    http_req_run(op->req, op->svc->store, STORE_WRITE, claim_work, claim_reply, op);
}

static void claim_give_up(void *arg, enum err why);

static void
claim_retry(void *arg)
{
    struct jop *op = arg;
    if (http_req_client_gone(op->req))  /* jobs claimed now would wait out their leases unseen */
        claim_give_up(op, ERR_TIMEOUT); /* the empty answer of a long poll that ran out */
    else
        claim_submit(op);
}

static void
claim_give_up(void *arg, enum err why)
{
    struct jop *op = arg;
    json_decref(op->out); /* the empty answer the last attempt left */
    op->out = NULL;
    if (why == ERR_TIMEOUT) { /* nothing came: an empty answer, as a long poll does */
        http_reply_json(op->req, 200, json_pack("{s:[]}", "jobs"));
        return;
    }
    struct bb_error e;
    bb_fail(&e, why, "", "server is shutting down");
    http_reply_problem(op->req, &e, NULL);
}

static enum err
hand_back_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    int64_t now = bb_wall_ms();
    enum err rc = job_finish_batch(c, op->claimed, op->n_claimed, now, NULL, e);
    for (size_t i = 0; i < op->n_claimed && rc == ERR_OK; i++) {
        const struct job_finish *f = &op->claimed[i];
        if (f->rc == ERR_OK)
            jobs__metric_finished_at_commit(c, f->queue, f->outcome,
                                            (double)(now - f->started_at_ms) / 1000.0);
    }
    /* Ready again: other workers waiting on the queue hear of them. */
    return rc == ERR_OK ? store_notify(c, JOBS__CHANNEL, op->name, e) : rc;
}

static void
hand_back_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct jop *op = arg;
    if (rc != ERR_OK)
        log_warn("jobs.hand_back_failed", "queue=%s jobs=%zu detail=%s", op->name, op->n_claimed,
                 e->detail);
    else
        log_info("jobs.claim_handed_back", "queue=%s worker=%s jobs=%zu", op->name, op->worker,
                 op->n_claimed);
    struct bb_error gone;
    bb_fail(&gone, ERR_UNAVAILABLE, "", "the worker hung up before it heard of its claim");
    http_reply_problem(r, &gone, NULL);
}

static void
claim_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct jop *op = arg;
    if (rc == ERR_OK && op->n_claimed > 0 && http_req_client_gone(r)) {
        /* Claimed while its worker hung up: the jobs would wait out their
         * leases unseen; they go back at once (an interrupted attempt). */
        json_decref(op->out);
        op->out = NULL;
        http_req_run(r, op->svc->store, STORE_WRITE, hand_back_work, hand_back_reply, op);
        return;
    }
    if (rc == ERR_OK && json_array_size(json_object_get(op->out, "jobs")) == 0 &&
        bb_mono_ms() < op->deadline_mono_ms) {
        /* Look again in a while, or when the rate limit lets the next go. */
        int64_t wait = op->throttled_ms > 0 && op->throttled_ms < CLAIM_RECHECK_MS
                           ? op->throttled_ms
                           : CLAIM_RECHECK_MS;
        int64_t retry_at = bb_mono_ms() + wait;
        if (http_waitlist_park(op->svc->claims, op->name, retry_at, op->deadline_mono_ms,
                               op->seen_seq, claim_retry, claim_give_up, op))
            return;
        claim_give_up(op, ERR_UNAVAILABLE);
        return;
    }
    jop_reply(r, arg, rc, e);
}

static void
handle_claim(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"worker", "max", "lease_ms", "wait_ms", NULL};
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    json_t *body;
    int64_t wait_ms = 0;
    op->n = 1;
    op->lease_ms = 30000;
    if (path_name(r, "queue", &op->name, e) != ERR_OK ||
        http_req_json_object(r, &body, e) != ERR_OK || bb_json_only(body, allowed, e) != ERR_OK ||
        bb_json_string(body, "worker", true, JOB_WORKER_MAX, &op->worker, e) != ERR_OK ||
        bb_json_int(body, "max", false, 1, CLAIM_MAX, &op->n, e) != ERR_OK ||
        bb_json_int(body, "lease_ms", false, JOB_LEASE_MIN_MS, JOB_LEASE_MAX_MS, &op->lease_ms,
                    e) != ERR_OK ||
        bb_json_int(body, "wait_ms", false, 0, CLAIM_WAIT_MAX_MS, &wait_ms, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->deadline_mono_ms = bb_mono_ms() + wait_ms;
    claim_submit(op);
}

static enum err
heartbeat_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    int64_t expires;
    store_each_statement_commits(c); /* one statement: on PostgreSQL, one round trip */
    enum err rc =
        job_heartbeat(c, op->id, op->token, op->lease_ms, true, bb_wall_ms(), &expires, e);
    if (rc == ERR_OK)
        jop_answer(op, 200,
                   json_pack("{s:I, s:o}", "job_id", (json_int_t)op->id, "lease_expires_at",
                             time_value(expires)));
    return rc;
}

static enum err
report_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    struct job_finish f = {.id = op->id, .token = op->token, .error = op->error};
    f.outcome = op->error == NULL ? JOB_OUTCOME_COMPLETED
                : op->flag        ? JOB_OUTCOME_FAILED
                                  : JOB_OUTCOME_PERMANENT;
    int64_t now = bb_wall_ms();
    enum err rc = job_finish_batch(c, &f, 1, now, NULL, e);
    if (rc != ERR_OK)
        return rc;
    if (f.rc != ERR_OK) {
        /* A worker that lost our answer sends its report again: the same
         * answer, nothing recorded twice. Anything else is refused with
         * what became of the lease. */
        rc = job_finish_replay(c, &f, e);
        if (rc == ERR_OK)
            jop_answer(op, 200,
                       json_pack("{s:I, s:s}", "job_id", (json_int_t)op->id, "state",
                                 job_state_name(f.state)));
        return rc;
    }
    /* The attempt ran from its claim to this report. */
    jobs__metric_finished_at_commit(c, f.queue, f.outcome,
                                    (double)(now - f.started_at_ms) / 1000.0);
    /* A slot of a queue with a concurrency limit came free: wake the
     * workers and parked claims waiting for one, in every process (an
     * embedded worker's completion does the same). */
    struct job_queue q;
    rc = job_queue_get(c, f.queue, &q, e);
    if (rc == ERR_OK && (q.concurrency > 0 || q.key_concurrency > 0))
        rc = store_notify(c, JOBS__CHANNEL, f.queue, e);
    if (rc != ERR_OK && rc != ERR_NOT_FOUND) /* no settings: no limit */
        return rc;
    op->n = f.outcome;
    jop_answer(
        op, 200,
        json_pack("{s:I, s:s}", "job_id", (json_int_t)op->id, "state", job_state_name(f.state)));
    return ERR_OK;
}

static void
report_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct jop *op = arg;
    static const char *const what[] = {"heartbeat", "complete", "fail"};
    if (rc == ERR_STALE_TOKEN)
        jobs__metric_stale(what[op->kind]);
    jop_reply(r, arg, rc, e);
}

/* heartbeat, complete and fail share their parsing. */
static void
lease_report(struct http_req *r, void *ctx, int kind)
{
    static const char *const hb[] = {"token", "lease_ms", NULL};
    static const char *const done[] = {"token", NULL};
    static const char *const fail[] = {"token", "error", "retry", NULL};
    const char *const *allowed = kind == 0 ? hb : kind == 1 ? done : fail;
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    json_t *body;
    op->lease_ms = 30000;
    op->flag = true;
    op->kind = kind;
    if (path_id(r, &op->id, e) != ERR_OK || http_req_json_object(r, &body, e) != ERR_OK ||
        bb_json_only(body, allowed, e) != ERR_OK ||
        bb_json_int(body, "token", true, 1, INT64_MAX, &op->token, e) != ERR_OK ||
        (kind == 0 && bb_json_int(body, "lease_ms", false, JOB_LEASE_MIN_MS, JOB_LEASE_MAX_MS,
                                  &op->lease_ms, e) != ERR_OK) ||
        (kind == 2 &&
         bb_json_string(body, "error", true, JOB_ERROR_MAX, &op->error, e) != ERR_OK)) {
        fail_now(r, e);
        return;
    }
    const json_t *retry = json_object_get(body, "retry");
    if (kind == 2 && retry) {
        if (!json_is_boolean(retry)) {
            bb_fail(e, ERR_INVALID, "retry", "retry must be true or false");
            fail_now(r, e);
            return;
        }
        op->flag = json_is_true(retry);
    }
    http_req_run(r, op->svc->store, STORE_WRITE, kind == 0 ? heartbeat_work : report_work,
                 report_reply, op);
}

static void
handle_heartbeat(struct http_req *r, void *ctx)
{
    lease_report(r, ctx, 0);
}

static void
handle_complete(struct http_req *r, void *ctx)
{
    lease_report(r, ctx, 1);
}

static void
handle_fail(struct http_req *r, void *ctx)
{
    lease_report(r, ctx, 2);
}

/* ---- queues
 * ----------------------------------------------------------------------------------------- */

/* A listing's answer: the one named (op->name), or all as {member: [...]}.
 * Steals `list`. */
static void
answer_listing(struct jop *op, json_t *list, const char *member)
{
    if (op->name) {
        jop_answer(op, 200, json_incref(json_array_get(list, 0)));
        json_decref(list);
    } else {
        jop_answer(op, 200, json_pack("{s:o}", member, list));
    }
}

/* GET of one named thing: the name from path parameter `param`. */
static void
read_named(struct http_req *r, void *ctx, const char *param, store_work_fn *work)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    if (path_name(r, param, &op->name, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    run_read(op, work);
}

static enum err
queues_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    json_t *list;
    enum err rc = job_queue_list_json(c, op->name, bb_wall_ms(), &list, e);
    if (rc == ERR_OK)
        answer_listing(op, list, "queues");
    return rc;
}

static void
handle_queues(struct http_req *r, void *ctx)
{
    run_read(jop_new(r, ctx), queues_work);
}

static void
handle_queue_get(struct http_req *r, void *ctx)
{
    read_named(r, ctx, "queue", queues_work);
}

/* `member` ("rate_limit", "key_rate_limit"): {"max": N, "per_ms": W} sets
 * it, null removes it. */
static enum err
rate_limit_member(const json_t *body, const char *member, int64_t *max, int64_t *per_ms,
                  struct bb_error *e)
{
    static const char *const allowed[] = {"max", "per_ms", NULL};
    const json_t *rl = json_object_get(body, member);
    if (rl == NULL)
        return ERR_OK;
    if (json_is_null(rl)) {
        *max = *per_ms = 0;
        return ERR_OK;
    }
    if (!json_is_object(rl))
        return bb_fail(e, ERR_INVALID, member, "%s must be {\"max\": N, \"per_ms\": W} or null",
                       member);
    enum err rc = bb_json_only(rl, allowed, e);
    if (rc == ERR_OK)
        rc = bb_json_int(rl, "max", true, 1, JOB_RATE_MAX, max, e);
    if (rc == ERR_OK)
        rc = bb_json_int(rl, "per_ms", true, 1, JOB_RATE_WINDOW_MAX, per_ms, e);
    if (rc != ERR_OK) { /* name the member inside */
        char field[sizeof e->field + 32];
        snprintf(field, sizeof field, "%s.%s", member, e->field);
        bb_strlcpy(e->field, field, sizeof e->field);
    }
    return rc;
}

/* PUT: create, or update the settings given (others keep their value). */
static enum err
queue_put_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    const json_t *body = op->in;
    struct job_queue q;
    enum err rc = job_queue_get(c, op->name, &q, e);
    bool created = rc == ERR_NOT_FOUND;
    if (created) {
        job_queue_defaults(&q, op->name);
        rc = ERR_OK;
    }
    if (rc != ERR_OK)
        return rc;
    const json_t *paused = json_object_get(body, "paused");
    if (paused && !json_is_boolean(paused))
        return bb_fail(e, ERR_INVALID, "paused", "paused must be true or false");
    if (paused)
        q.paused = json_is_true(paused);
    if ((rc = bb_json_int(body, "concurrency", false, 0, 100000, &q.concurrency, e)) != ERR_OK ||
        (rc = bb_json_int(body, "key_concurrency", false, 0, 100000, &q.key_concurrency, e)) !=
            ERR_OK ||
        (rc = bb_json_int(body, "max_attempts", false, 1, JOB_ATTEMPTS_MAX, &q.max_attempts, e)) !=
            ERR_OK ||
        (rc = bb_json_int(body, "lease_ms", false, JOB_LEASE_MIN_MS, JOB_LEASE_MAX_MS, &q.lease_ms,
                          e)) != ERR_OK)
        return rc;
    if (json_object_get(body, "backoff")) {
        struct job_spec tmp = {0};
        if ((rc = backoff_member(body, &tmp, e)) != ERR_OK)
            return rc;
        q.backoff = tmp.backoff;
    }
    if ((rc = rate_limit_member(body, "rate_limit", &q.rate_max, &q.rate_per_ms, e)) != ERR_OK ||
        (rc = rate_limit_member(body, "key_rate_limit", &q.key_rate_max, &q.key_rate_per_ms, e)) !=
            ERR_OK)
        return rc;
    if ((rc = job_queue_put(c, &q, bb_wall_ms(), e)) != ERR_OK)
        return rc;
    json_t *list;
    if ((rc = job_queue_list_json(c, op->name, bb_wall_ms(), &list, e)) != ERR_OK)
        return rc;
    jop_answer(op, created ? 201 : 200, json_incref(json_array_get(list, 0)));
    json_decref(list);
    return ERR_OK;
}

static void
handle_queue_put(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"paused",       "concurrency",    "key_concurrency",
                                          "max_attempts", "backoff",        "lease_ms",
                                          "rate_limit",   "key_rate_limit", NULL};
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    json_t *body;
    if (path_name(r, "queue", &op->name, e) != ERR_OK ||
        http_req_json_object(r, &body, e) != ERR_OK || bb_json_only(body, allowed, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->in = body;
    run_write(op, queue_put_work);
}

static enum err
queue_pause_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    enum err rc = job_queue_set_paused(c, op->name, op->flag, bb_wall_ms(), e);
    if (rc == ERR_OK)
        jop_answer(op, 200, json_pack("{s:s, s:b}", "name", op->name, "paused", op->flag));
    return rc;
}

static void
queue_pause(struct http_req *r, void *ctx, bool paused)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    if (path_name(r, "queue", &op->name, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->flag = paused;
    run_write(op, queue_pause_work);
}

static void
handle_queue_pause(struct http_req *r, void *ctx)
{
    queue_pause(r, ctx, true);
}

static void
handle_queue_resume(struct http_req *r, void *ctx)
{
    queue_pause(r, ctx, false);
}

/* ---- schedules
 * ---------------------------------------------------------------------------------------- */

static enum err
schedules_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    json_t *list;
    enum err rc = job_schedule_list_json(c, op->name, op->name ? 5 : 1, &list, e);
    if (rc == ERR_OK)
        answer_listing(op, list, "schedules");
    return rc;
}

static void
handle_schedules(struct http_req *r, void *ctx)
{
    run_read(jop_new(r, ctx), schedules_work);
}

static void
handle_schedule_get(struct http_req *r, void *ctx)
{
    read_named(r, ctx, "name", schedules_work);
}

static void
handle_schedule_create(struct http_req *r, void *ctx)
{
    struct job_service *svc = ctx;
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, svc);
    json_t *body;
    if (http_req_json_object(r, &body, e) != ERR_OK ||
        jobs__spec_from_json(body, svc->reg, svc->payload_limit, bb_wall_ms(), "",
                             http_req_arena(r), &op->spec, &op->recurring, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    if (!op->recurring.present || op->recurring.name == NULL) {
        bb_fail(e, ERR_INVALID, op->recurring.present ? "name" : "cron",
                op->recurring.present ? "a schedule needs a name"
                                      : "a schedule needs cron (with timezone) or every_ms");
        fail_now(r, e);
        return;
    }
    http_req_run(r, svc->store, STORE_WRITE, submit_work, jop_reply, op);
}

static enum err
schedule_pause_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    enum err rc = job_schedule_set_paused(c, op->name, op->flag, bb_wall_ms(), e);
    if (rc == ERR_OK)
        jop_answer(op, 200, json_pack("{s:s, s:b}", "name", op->name, "paused", op->flag));
    return rc;
}

static enum err
schedule_delete_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct jop *op = arg;
    enum err rc = job_schedule_delete(c, op->name, e);
    if (rc == ERR_OK)
        jop_answer(op, 200, json_pack("{s:s, s:b}", "name", op->name, "deleted", 1));
    return rc;
}

static void
schedule_action(struct http_req *r, void *ctx, store_work_fn *work, bool flag)
{
    struct bb_error *e = http_req_error(r);
    struct jop *op = jop_new(r, ctx);
    if (path_name(r, "name", &op->name, e) != ERR_OK) {
        fail_now(r, e);
        return;
    }
    op->flag = flag;
    run_write(op, work);
}

static void
handle_schedule_pause(struct http_req *r, void *ctx)
{
    schedule_action(r, ctx, schedule_pause_work, true);
}

static void
handle_schedule_resume(struct http_req *r, void *ctx)
{
    schedule_action(r, ctx, schedule_pause_work, false);
}

static void
handle_schedule_delete(struct http_req *r, void *ctx)
{
    schedule_action(r, ctx, schedule_delete_work, false);
}

/* ---- the service
 * ------------------------------------------------------------------------------------------ */

static struct metrics_def M_CLAIM_WAITERS = {
    .name = "backbone_job_claim_waiters",
    .help = "Long-poll claims of the pull API parked in this process.",
    .type = METRICS_GAUGE,
};

static void
claim_waiters(int64_t n)
{
    metrics_set(&M_CLAIM_WAITERS, (double)n);
}

/* New jobs were announced (payload: their queue; "" or NULL: any). */
static void
on_ready(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct job_service *svc = arg;
    http_waitlist_wake(svc->claims, payload && *payload ? payload : NULL);
}

enum err
job_service_create(struct store *s, const struct job_registry *r,
                   const struct job_service_options *o, struct job_service **out,
                   struct bb_error *e)
{
    jobs__metrics_register();
    metrics_register(&M_CLAIM_WAITERS);
    struct job_service *svc = xcalloc(1, sizeof *svc);
    svc->store = s;
    svc->reg = r;
    svc->payload_limit = o->payload_limit_bytes > 0 ? o->payload_limit_bytes : (int64_t)256 * 1024;
    svc->claims = http_waitlist_create("bb-job-claims", claim_waiters);
    http_json_group_init(&svc->submits, submit_many_json, SUBMIT_GROUP_MAX);
    enum err rc = store_listen(s, JOBS__CHANNEL, on_ready, svc);
    if (rc != ERR_OK) {
        job_service_destroy(svc);
        return bb_fail(e, rc, "", "cannot listen for new jobs");
    }
    *out = svc;
    return ERR_OK;
}

/* The query parameters each route takes (NULL: none). The server refuses
 * the others: a typo in a filter (?job_id=8, ?queues=ext) must be an error,
 * not a bulk operation on every job the filter was meant to narrow. */
static const char *const Q_LIST[] = {"queue", "state", "limit", "after", NULL};
static const char *const Q_DLQ_LIST[] = {"queue", "fingerprint", "limit", "after", NULL};
static const char *const Q_DLQ_GROUPS[] = {"queue", "limit", NULL};
static const char *const Q_DLQ_BULK[] = {"queue", "fingerprint", NULL};

static const struct http_route ROUTES[] = {
    {"POST", "/jobs", handle_submit, NULL, false, NULL},
    {"POST", "/jobs/batch", handle_batch, NULL, false, NULL},
    {"GET", "/jobs", handle_list, NULL, false, Q_LIST},
    {"GET", "/jobs/{id}", handle_get, NULL, false, NULL},
    {"GET", "/jobs/{id}/history", handle_history, NULL, false, NULL},
    {"POST", "/jobs/{id}/run", handle_run, NULL, false, NULL},
    {"POST", "/jobs/{id}/retry", handle_run, NULL, false, NULL},
    {"POST", "/jobs/{id}/cancel", handle_cancel, NULL, false, NULL},
    {"POST", "/jobs/{id}/heartbeat", handle_heartbeat, NULL, false, NULL},
    {"POST", "/jobs/{id}/complete", handle_complete, NULL, false, NULL},
    {"POST", "/jobs/{id}/fail", handle_fail, NULL, false, NULL},
    {"GET", "/queues", handle_queues, NULL, false, NULL},
    {"GET", "/queues/{queue}", handle_queue_get, NULL, false, NULL},
    {"PUT", "/queues/{queue}", handle_queue_put, NULL, false, NULL},
    {"POST", "/queues/{queue}/pause", handle_queue_pause, NULL, false, NULL},
    {"POST", "/queues/{queue}/resume", handle_queue_resume, NULL, false, NULL},
    {"POST", "/queues/{queue}/claim", handle_claim, NULL, false, NULL},
    {"GET", "/schedules", handle_schedules, NULL, false, NULL},
    {"POST", "/schedules", handle_schedule_create, NULL, false, NULL},
    {"GET", "/schedules/{name}", handle_schedule_get, NULL, false, NULL},
    {"POST", "/schedules/{name}/pause", handle_schedule_pause, NULL, false, NULL},
    {"POST", "/schedules/{name}/resume", handle_schedule_resume, NULL, false, NULL},
    {"DELETE", "/schedules/{name}", handle_schedule_delete, NULL, false, NULL},
    {"GET", "/dlq", handle_dlq_list, NULL, false, Q_DLQ_LIST},
    {"GET", "/dlq/groups", handle_dlq_groups, NULL, false, Q_DLQ_GROUPS}, /* before /dlq/{id} */
    {"GET", "/dlq/{id}", handle_dlq_get, NULL, false, NULL},
    {"POST", "/dlq/{id}/redrive", handle_dlq_redrive_one, NULL, false, NULL},
    {"POST", "/dlq/redrive", handle_dlq_redrive_all, NULL, false, Q_DLQ_BULK},
    {"DELETE", "/dlq", handle_dlq_purge, NULL, false, Q_DLQ_BULK},
    {"DELETE", "/dlq/{id}", handle_dlq_purge_one, NULL, false, NULL},
};

size_t
job_service_routes(struct job_service *svc, struct http_route *out, size_t max)
{
    BB_ASSERT(BB_ARRAY_LEN(ROUTES) <= max);
    for (size_t i = 0; i < BB_ARRAY_LEN(ROUTES); i++) {
        out[i] = ROUTES[i];
        out[i].ctx = svc;
    }
    return BB_ARRAY_LEN(ROUTES);
}

void
job_service_stop_waiting(struct job_service *svc)
{
    if (svc)
        http_waitlist_stop(svc->claims);
}

void
job_service_destroy(struct job_service *svc)
{
    if (svc == NULL)
        return;
    store_unlisten(svc->store, on_ready, svc);
    http_waitlist_destroy(svc->claims);
    free(svc);
}
