/*
 * cli_jobs.c: `backbone jobs|queues|schedules|dlq ...`, clients of the jobs
 * API. Lists print one line per item; single objects print as indented JSON
 * (readable, and the same shape scripts get with --json).
 */
#include "cli/cli_int.h"

#include "http/http.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

struct jobs_args {
    struct cli_client client; /* first: cli_parse fills it */
    char *handler;
    char *queue;
    char *payload;
    char *run_at;
    char *delay;
    char *cron;
    char *tz;
    int64_t every_ms;
    char *name;
    int64_t priority;
    char *unique_key;
    char *concurrency_key;
    int64_t key_concurrency;
    int64_t max_attempts;
    int64_t timeout_ms;
    char *target_url;
    char *target;
    char *state;
    char *fingerprint;
    int64_t limit;
    int64_t after;
    int64_t concurrency;
    char *paused;
    char *rate;
    char *key_rate;
    char *backoff;
    char *tags;
    bool all;
};

#define OFF(f) offsetof(struct jobs_args, f)
#define NO_ENV BB_OPT_NO_ENV

static const struct bb_opt JOBS_OPTS[] = {
    {"handler", BB_OPT_STRING, OFF(handler), 0, 0, NULL, "handler (submit, schedules create)",
     NO_ENV},
    {"queue", BB_OPT_STRING, OFF(queue), 0, 0, NULL,
     "queue (submit, list, dlq; submit-batch: of the jobs that name none)", NO_ENV},
    {"payload", BB_OPT_STRING, OFF(payload), 0, 0, NULL, "JSON payload", NO_ENV},
    {"run-at", BB_OPT_STRING, OFF(run_at), 0, 0, NULL, "RFC 3339 time to run at", NO_ENV},
    {"delay", BB_OPT_STRING, OFF(delay), 0, 0, NULL, "run after a delay (30s, 5m)", NO_ENV},
    {"cron", BB_OPT_STRING, OFF(cron), 0, 0, NULL, "cron expression (recurring)", NO_ENV},
    {"tz", BB_OPT_STRING, OFF(tz), 0, 0, NULL, "time zone of --cron (default UTC)", NO_ENV},
    {"every", BB_OPT_DURATION, OFF(every_ms), 0, 366LL * 86400000, "0",
     "run every interval (recurring)", NO_ENV},
    {"name", BB_OPT_STRING, OFF(name), 0, 0, NULL, "name of a recurring job", NO_ENV},
    {"priority", BB_OPT_INT, OFF(priority), -1000, 1000, "0", "higher runs first", NO_ENV},
    {"concurrency-key", BB_OPT_STRING, OFF(concurrency_key), 0, 0, NULL,
     "jobs of one key run at most the queue's --key-concurrency at once", NO_ENV},
    {"key-concurrency", BB_OPT_INT, OFF(key_concurrency), -1, 100000, "-1",
     "queues put: most running jobs per concurrency key (0: no limit)", NO_ENV},
    {"unique-key", BB_OPT_STRING, OFF(unique_key), 0, 0, NULL,
     "at most one pending or running job per key", NO_ENV},
    {"max-attempts", BB_OPT_INT, OFF(max_attempts), 0, 1000, "0", "attempts before dead", NO_ENV},
    {"max-duration", BB_OPT_DURATION, OFF(timeout_ms), 0, 86400000, "0",
     "how long an attempt may run (queues put: its jobs' default)", NO_ENV},
    {"backoff", BB_OPT_STRING, OFF(backoff), 0, 0, NULL,
     "delay before the first retry (2s), or the whole policy as JSON"
     " ({\"base_ms\":500,\"factor\":2,\"cap_ms\":60000,\"jitter_pct\":10}); submit, queues put",
     NO_ENV},
    {"tags", BB_OPT_STRING, OFF(tags), 0, 0, NULL, "comma-separated tags (a,b)", NO_ENV},
    {"target-url", BB_OPT_STRING, OFF(target_url), 0, 0, NULL, "URL for the http handler", NO_ENV},
    {"target", BB_OPT_STRING, OFF(target), 0, 0, NULL,
     "the handler's target as JSON (exec: {\"argv\":[...]})", NO_ENV},
    {"state", BB_OPT_STRING, OFF(state), 0, 0, NULL, "filter: pending, running, ..., dead", NO_ENV},
    {"fingerprint", BB_OPT_STRING, OFF(fingerprint), 0, 0, NULL,
     "dlq: only the dead jobs of this error fingerprint (dlq groups)", NO_ENV},
    {"all", BB_OPT_BOOL, OFF(all), 0, 0, "false",
     "dlq purge: every dead job (purge without an id or a filter asks for it)", NO_ENV},
    {"limit", BB_OPT_INT, OFF(limit), 1, 1000, "100", "most items to list", NO_ENV},
    {"after", BB_OPT_INT, OFF(after), 0, INT64_MAX, "0", "list after this job id", NO_ENV},
    {"concurrency", BB_OPT_INT, OFF(concurrency), -1, 100000, "-1",
     "queues put: most running jobs (0: no limit)", NO_ENV},
    {"paused", BB_OPT_STRING, OFF(paused), 0, 0, NULL, "queues put: true or false", NO_ENV},
    {"rate", BB_OPT_STRING, OFF(rate), 0, 0, NULL,
     "queues put: most starts per interval across all workers (100/1s, 5/1m; off)", NO_ENV},
    {"key-rate", BB_OPT_STRING, OFF(key_rate), 0, 0, NULL,
     "queues put: most starts per interval of each concurrency key (10/1m; off)", NO_ENV},
};

static const char JOBS_USAGE[] =
    "backbone jobs submit --handler H [--queue Q] [--payload JSON] [--run-at T | --delay 5s |\n"
    "                     --cron EXPR [--tz ZONE] [--name N] | --every 30s] [--priority N]\n"
    "                     [--unique-key K] [--concurrency-key K] [--max-attempts N]\n"
    "                     [--max-duration 60s] [--backoff 2s | --backoff JSON] [--tags a,b]\n"
    "                     [--target-url U | --target JSON]\n"
    "       backbone jobs submit-batch FILE|- [--queue Q]   (a JSON array of jobs, or JSON lines)\n"
    "       backbone jobs get|history|cancel|retry|run ID\n"
    "       backbone jobs list [--queue Q] [--state S] [--limit N] [--after ID]\n"
    "       backbone queues list | show Q | pause Q | resume Q\n"
    "       backbone queues put Q [--concurrency N] [--key-concurrency N] [--max-attempts N]\n"
    "                             [--backoff 2s | --backoff JSON] [--max-duration 60s]\n"
    "                             [--paused true|false] [--rate N/INTERVAL | --rate off]\n"
    "                             [--key-rate N/INTERVAL | --key-rate off]\n"
    "       backbone schedules list | show N | pause N | resume N | delete N\n"
    "       backbone schedules create N (--cron EXPR [--tz ZONE] | --every 30s) --handler H ...\n"
    "       backbone dlq groups [--queue Q] [--limit N]\n"
    "       backbone dlq list|redrive-all [--queue Q] [--fingerprint F]\n"
    "       backbone dlq purge --queue Q | --fingerprint F | --all\n"
    "       backbone dlq show ID | redrive ID | purge ID";

static int
usage_error(const char *msg)
{
    fprintf(stderr, "backbone: %s\nusage: %s\n", msg, JOBS_USAGE);
    return CLI_USAGE;
}

static void
print_pretty(const json_t *v)
{
    char *text = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (text)
        puts(text);
    free(text);
}

static const char *
str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static void
print_job_line(const json_t *j)
{
    bool parked = json_is_true(json_object_get(j, "parked"));
    printf("%" JSON_INTEGER_FORMAT "  %-10s %-16s %-20s attempt %" JSON_INTEGER_FORMAT
           "/%" JSON_INTEGER_FORMAT "  run_at %s%s%s%s%s\n",
           json_integer_value(json_object_get(j, "job_id")), str(j, "state"), str(j, "queue"),
           str(j, "handler"), json_integer_value(json_object_get(j, "attempt")),
           json_integer_value(json_object_get(j, "attempt_limit")), str(j, "run_at"),
           parked ? "  parked: key " : "", parked ? str(j, "concurrency_key") : "",
           json_is_string(json_object_get(j, "last_error")) ? "  error: " : "",
           json_is_string(json_object_get(j, "last_error")) ? str(j, "last_error") : "");
}

/* Call, then print: `human` prints the answer for people (NULL: pretty JSON). */
static int
call(const struct jobs_args *a, const char *method, const char *path, json_t *body,
     void (*human)(const json_t *))
{
    json_t *out;
    int code = cli_call(&a->client, method, path, body, &out);
    json_decref(body);
    if (code != CLI_OK)
        return code;
    if (a->client.json)
        cli_print_json(out);
    else if (human)
        human(out);
    else
        print_pretty(out);
    json_decref(out);
    return CLI_OK;
}

static void
human_jobs(const json_t *page)
{
    const json_t *jobs = json_object_get(page, "jobs");
    size_t i;
    const json_t *j;
    if (json_array_size(jobs) == 0)
        printf("no jobs\n");
    json_array_foreach(jobs, i, j) print_job_line(j);
    const json_t *next = json_object_get(page, "next_after");
    if (json_is_integer(next))
        printf("more: --after %" JSON_INTEGER_FORMAT "\n", json_integer_value(next));
}

/* "?name=value" or "&name=value" (escaped) when `value` is set. */
static void
query_param(struct bb_buf *path, const char *name, const char *value)
{
    if (value) {
        bb_buf_printf(path, "%c%s=", strchr(path->data, '?') ? '&' : '?', name);
        http_client_escape(value, path);
    }
}

static void
human_groups(const json_t *o)
{
    const json_t *groups = json_object_get(o, "groups");
    size_t i;
    const json_t *g;
    if (json_array_size(groups) == 0)
        printf("no dead jobs\n");
    json_array_foreach(groups, i, g)
    {
        printf("%s  %6" JSON_INTEGER_FORMAT " dead  %-12s %-20s last %s\n  %s\n",
               str(g, "fingerprint"), json_integer_value(json_object_get(g, "count")),
               str(g, "queue"), str(g, "handler"), str(g, "last_dead_at"), str(g, "error"));
    }
}

static void
human_submitted(const json_t *o)
{
    if (json_object_get(o, "schedule"))
        printf("schedule %s%s, next fire %s%s\n", str(o, "schedule"),
               json_is_false(json_object_get(o, "created")) ? " replaced" : "",
               str(o, "next_fire_at"),
               json_is_true(json_object_get(o, "paused")) ? " (paused: resume to fire)" : "");
    else
        printf("job %" JSON_INTEGER_FORMAT " %s, runs at %s\n",
               json_integer_value(json_object_get(o, "job_id")),
               json_is_true(json_object_get(o, "duplicate")) ? "(already queued under that key)"
                                                             : "queued",
               str(o, "run_at"));
}

static void
human_batch(const json_t *o)
{
    const json_t *jobs = json_object_get(o, "jobs");
    size_t i, created = 0;
    const json_t *j;
    json_array_foreach(jobs, i, j) created += json_is_true(json_object_get(j, "created"));
    printf("%zu jobs queued in one transaction", created);
    if (created < json_array_size(jobs))
        printf(", %zu already queued under their unique keys", json_array_size(jobs) - created);
    if (json_array_size(jobs) > 20) {
        printf(" (--json lists their ids)\n");
        return;
    }
    json_array_foreach(jobs, i, j)
    {
        printf("%s%" JSON_INTEGER_FORMAT, i ? ", " : ": ids ",
               json_integer_value(json_object_get(j, "job_id")));
    }
    printf("\n");
}

static void
human_queues(const json_t *o)
{
    const json_t *queues = json_object_get(o, "queues");
    size_t i;
    const json_t *q;
    json_array_foreach(queues, i, q)
    {
        const json_t *d = json_object_get(q, "depth");
        printf("%-20s %s ready %" JSON_INTEGER_FORMAT " scheduled %" JSON_INTEGER_FORMAT
               " running %" JSON_INTEGER_FORMAT " dead %" JSON_INTEGER_FORMAT
               " concurrency %" JSON_INTEGER_FORMAT,
               str(q, "name"), json_is_true(json_object_get(q, "paused")) ? "paused " : "active ",
               json_integer_value(json_object_get(d, "ready")),
               json_integer_value(json_object_get(d, "scheduled")),
               json_integer_value(json_object_get(d, "running")),
               json_integer_value(json_object_get(d, "dead")),
               json_integer_value(json_object_get(q, "concurrency")));
        json_int_t per_key = json_integer_value(json_object_get(q, "key_concurrency"));
        if (per_key > 0)
            printf(" per key %" JSON_INTEGER_FORMAT " (parked %" JSON_INTEGER_FORMAT ")", per_key,
                   json_integer_value(json_object_get(d, "parked")));
        const json_t *rate = json_object_get(q, "rate_limit");
        if (json_is_object(rate))
            printf(" rate %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "ms",
                   json_integer_value(json_object_get(rate, "max")),
                   json_integer_value(json_object_get(rate, "per_ms")));
        rate = json_object_get(q, "key_rate_limit");
        if (json_is_object(rate))
            printf(" per key rate %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "ms",
                   json_integer_value(json_object_get(rate, "max")),
                   json_integer_value(json_object_get(rate, "per_ms")));
        printf("\n");
    }
}

static void
human_queue(const json_t *q)
{
    json_t *list = json_pack("{s:[O]}", "queues", q);
    human_queues(list);
    json_decref(list);
}

static void
human_schedules(const json_t *o)
{
    const json_t *list = json_object_get(o, "schedules");
    size_t i;
    const json_t *s;
    if (json_array_size(list) == 0)
        printf("no schedules\n");
    json_array_foreach(list, i, s)
    {
        const json_t *every = json_object_get(s, "every_ms");
        printf("%-24s %-20s %s next %s%s\n", str(s, "name"),
               json_is_integer(every) ? "every" : str(s, "cron"),
               json_is_integer(every) ? "" : str(s, "timezone"), str(s, "next_fire_at"),
               json_is_true(json_object_get(s, "paused")) ? "  (paused)" : "");
    }
}

/* Short answers (cancelled, paused, purged...): "job_id 3, state pending". */
static void
human_done(const json_t *o)
{
    const char *key;
    const json_t *v;
    const char *sep = "";
    json_object_foreach((json_t *)o, key, v)
    {
        char *text = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY);
        printf("%s%s %s", sep, key, text ? text : json_string_value(v));
        free(text);
        sep = ", ";
    }
    printf("\n");
}

static void
human_history(const json_t *o)
{
    const json_t *attempts = json_object_get(o, "attempts");
    size_t i;
    const json_t *a;
    if (json_array_size(attempts) == 0)
        printf("job %" JSON_INTEGER_FORMAT " has not run yet\n",
               json_integer_value(json_object_get(o, "job_id")));
    json_array_foreach(attempts, i, a)
    {
        const json_t *ms = json_object_get(a, "duration_ms");
        printf("attempt %" JSON_INTEGER_FORMAT "  %-18s %-20s %s  ",
               json_integer_value(json_object_get(a, "attempt")), str(a, "outcome"),
               str(a, "worker"), str(a, "started_at"));
        if (json_is_integer(ms))
            printf("%" JSON_INTEGER_FORMAT " ms", json_integer_value(ms));
        else
            printf("-");
        if (json_is_string(json_object_get(a, "error")))
            printf("  error: %s", str(a, "error"));
        printf("\n");
    }
}

/* --backoff: a duration is the first retry's delay (the rest default, as
 * the API has it); a JSON object is the API's backoff, which the server
 * checks. NULL when it is neither. */
static json_t *
backoff_json(const char *text)
{
    if (text[0] == '{')
        return json_loads(text, 0, NULL);
    int64_t ms;
    if (bb_duration_parse(text, &ms) != ERR_OK || ms <= 0)
        return NULL;
    return json_pack("{s:I}", "base_ms", (json_int_t)ms);
}

/* --tags a,b as ["a","b"]; an empty tag stays, for the server to refuse
 * with the tag it is. */
static json_t *
tags_json(const char *text)
{
    json_t *tags = json_array();
    for (const char *p = text;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        json_array_append_new(tags, json_stringn(p, len));
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return tags;
}

/* The body of a submit or a schedule, from the flags. */
static int
job_body(const struct jobs_args *a, json_t **out)
{
    json_t *b = json_object();
    if (a->handler)
        json_object_set_new(b, "handler", json_string(a->handler));
    if (a->queue)
        json_object_set_new(b, "queue", json_string(a->queue));
    if (a->payload) {
        json_t *p = json_loads(a->payload, JSON_DECODE_ANY, NULL);
        if (p == NULL) {
            json_decref(b);
            return usage_error("--payload must be JSON");
        }
        json_object_set_new(b, "payload", p);
    }
    if (a->run_at)
        json_object_set_new(b, "run_at", json_string(a->run_at));
    if (a->delay) {
        int64_t ms;
        if (bb_duration_parse(a->delay, &ms) != ERR_OK) {
            json_decref(b);
            return usage_error("--delay: expected a duration such as 30s or 5m");
        }
        json_object_set_new(b, "delay_ms", json_integer(ms));
    }
    if (a->cron)
        json_object_set_new(b, "cron", json_string(a->cron));
    if (a->tz)
        json_object_set_new(b, "timezone", json_string(a->tz));
    if (a->every_ms > 0)
        json_object_set_new(b, "every_ms", json_integer(a->every_ms));
    if (a->name)
        json_object_set_new(b, "name", json_string(a->name));
    if (a->priority)
        json_object_set_new(b, "priority", json_integer(a->priority));
    if (a->unique_key)
        json_object_set_new(b, "unique_key", json_string(a->unique_key));
    if (a->concurrency_key)
        json_object_set_new(b, "concurrency_key", json_string(a->concurrency_key));
    if (a->max_attempts)
        json_object_set_new(b, "max_attempts", json_integer(a->max_attempts));
    if (a->timeout_ms)
        json_object_set_new(b, "max_duration_seconds", json_integer((a->timeout_ms + 999) / 1000));
    if (a->backoff) {
        json_t *bo = backoff_json(a->backoff);
        if (bo == NULL) {
            json_decref(b);
            return usage_error("--backoff: expected a duration (2s) or a JSON object");
        }
        json_object_set_new(b, "backoff", bo);
    }
    if (a->tags)
        json_object_set_new(b, "tags", tags_json(a->tags));
    if (a->target_url && a->target) {
        json_decref(b);
        return usage_error("--target-url and --target exclude each other");
    }
    if (a->target_url)
        json_object_set_new(b, "target", json_pack("{s:s}", "url", a->target_url));
    if (a->target) {
        json_t *t = json_loads(a->target, 0, NULL);
        if (t == NULL) {
            json_decref(b);
            return usage_error("--target must be a JSON object");
        }
        json_object_set_new(b, "target", t);
    }
    *out = b;
    return CLI_OK;
}

static int
parse(struct jobs_args *a, int argc, char **argv, const char **pos, size_t *npos)
{
    memset(a, 0, sizeof *a);
    return cli_parse(JOBS_OPTS, BB_ARRAY_LEN(JOBS_OPTS), a, argc, argv, JOBS_USAGE, pos, 3, npos);
}

/* "/prefix/<escaped>suffix" */
static void
path_for(struct bb_buf *b, const char *prefix, const char *item, const char *suffix)
{
    bb_buf_puts(b, prefix);
    http_client_escape(item, b);
    bb_buf_puts(b, suffix);
}

/* The jobs of a batch file's text: a JSON array of jobs, the body of
 * POST /jobs/batch ({"jobs":[...]}), or JSON lines (one job per line). */
static json_t *
batch_jobs(const char *text, size_t len)
{
    json_error_t err;
    json_t *all = json_loadb(text, len, 0, &err);
    if (json_is_object(all) && json_is_array(json_object_get(all, "jobs"))) {
        json_t *jobs = json_incref(json_object_get(all, "jobs"));
        json_decref(all);
        return jobs;
    }
    if (json_is_array(all))
        return all;
    json_decref(all); /* one line of JSON lines, or not JSON at all */
    json_t *jobs = json_array();
    size_t line = 0;
    for (const char *at = text, *end = text + len; at < end; line++) {
        const char *nl = memchr(at, '\n', (size_t)(end - at));
        size_t n = nl ? (size_t)(nl - at) : (size_t)(end - at);
        size_t blank = 0;
        while (blank < n && strchr(" \t\r", at[blank]) != NULL)
            blank++;
        if (blank < n) {
            json_t *job = json_loadb(at, n, 0, &err);
            if (!json_is_object(job)) {
                fprintf(stderr, "backbone: line %zu: %s\n", line + 1,
                        job ? "a job must be a JSON object" : err.text);
                json_decref(job);
                json_decref(jobs);
                return NULL;
            }
            json_array_append_new(jobs, job);
        }
        at = nl ? nl + 1 : end;
    }
    return jobs;
}

/* `backbone jobs submit-batch FILE`: every job in one request, one
 * transaction (all are queued or none); --queue fills in jobs without one. */
static int
submit_batch(struct jobs_args *a, const char *file)
{
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "r");
    if (f == NULL) {
        fprintf(stderr, "backbone: cannot open %s: %s\n", file, strerror(errno));
        return CLI_USAGE;
    }
    struct bb_buf text;
    bb_buf_init(&text);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        bb_buf_append(&text, chunk, n);
    bool failed = ferror(f) != 0;
    if (f != stdin)
        fclose(f);
    json_t *jobs = failed ? NULL : batch_jobs(text.data ? text.data : "", text.len);
    bb_buf_deinit(&text);
    if (failed)
        fprintf(stderr, "backbone: cannot read %s\n", file);
    if (jobs == NULL)
        return CLI_USAGE;
    size_t i;
    json_t *job;
    json_array_foreach(jobs, i, job)
    {
        if (a->queue != NULL && json_is_object(job) && json_object_get(job, "queue") == NULL)
            json_object_set_new(job, "queue", json_string(a->queue));
    }
    if (json_array_size(jobs) == 0) {
        json_decref(jobs);
        return usage_error("the batch has no jobs");
    }
    return call(a, "POST", "/jobs/batch", json_pack("{s:o}", "jobs", jobs), human_batch);
}

static int
jobs_cmd(struct jobs_args *a, const char *cmd, const char *arg)
{
    struct bb_buf path;
    bb_buf_init(&path);
    int code;
    if (strcmp(cmd, "submit") == 0) {
        json_t *body;
        if (a->handler == NULL)
            return usage_error("submit needs --handler");
        if ((code = job_body(a, &body)) != CLI_OK)
            return code;
        return call(a, "POST", "/jobs", body, human_submitted);
    }
    if (strcmp(cmd, "submit-batch") == 0)
        return arg ? submit_batch(a, arg) : usage_error("submit-batch needs a file (or -)");
    if (strcmp(cmd, "list") == 0) {
        bb_buf_printf(&path, "/jobs?limit=%" PRId64 "&after=%" PRId64, a->limit, a->after);
        query_param(&path, "queue", a->queue);
        query_param(&path, "state", a->state);
        code = call(a, "GET", path.data, NULL, human_jobs);
    } else if (arg == NULL) {
        return usage_error("expected a job id");
    } else if (strcmp(cmd, "get") == 0) {
        path_for(&path, "/jobs/", arg, "");
        code = call(a, "GET", path.data, NULL, NULL);
    } else if (strcmp(cmd, "history") == 0) {
        path_for(&path, "/jobs/", arg, "/history");
        code = call(a, "GET", path.data, NULL, human_history);
    } else if (strcmp(cmd, "cancel") == 0 || strcmp(cmd, "retry") == 0 || strcmp(cmd, "run") == 0) {
        char suffix[16];
        snprintf(suffix, sizeof suffix, "/%s", cmd);
        path_for(&path, "/jobs/", arg, suffix);
        code = call(a, "POST", path.data, json_object(), human_done);
    } else {
        code = usage_error("unknown jobs command");
    }
    bb_buf_deinit(&path);
    return code;
}

/* --rate or --key-rate (`flag`) N/INTERVAL ("100/1s") as {"max": N,
 * "per_ms": ms}; "off" as null. */
static int
rate_json(const char *flag, const char *text, json_t **out)
{
    if (strcmp(text, "off") == 0) {
        *out = json_null();
        return CLI_OK;
    }
    const char *slash = strchr(text, '/');
    char *end;
    errno = 0;
    long long max = strtoll(text, &end, 10);
    int64_t per_ms;
    if (slash == NULL || end != slash || errno != 0 || max < 1 ||
        bb_duration_parse(slash + 1, &per_ms) != ERR_OK || per_ms < 1) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s must be N/INTERVAL (100/1s, 5/1m) or off", flag);
        return usage_error(msg);
    }
    *out = json_pack("{s:I, s:I}", "max", (json_int_t)max, "per_ms", (json_int_t)per_ms);
    return CLI_OK;
}

/* PUT /queues/Q's body: the settings given, each as the API takes it. */
static int
queue_body(const struct jobs_args *a, json_t **out)
{
    json_t *body = json_object();
    int code = CLI_OK;
    if (a->concurrency >= 0)
        json_object_set_new(body, "concurrency", json_integer(a->concurrency));
    if (a->key_concurrency >= 0)
        json_object_set_new(body, "key_concurrency", json_integer(a->key_concurrency));
    if (a->max_attempts)
        json_object_set_new(body, "max_attempts", json_integer(a->max_attempts));
    if (a->timeout_ms && a->timeout_ms < 100)
        code = usage_error("--max-duration: a queue's is at least 100ms");
    else if (a->timeout_ms)
        json_object_set_new(body, "lease_ms", json_integer(a->timeout_ms));
    if (code == CLI_OK && a->paused) {
        if (strcmp(a->paused, "true") != 0 && strcmp(a->paused, "false") != 0)
            code = usage_error("--paused must be true or false");
        else
            json_object_set_new(body, "paused", json_boolean(strcmp(a->paused, "true") == 0));
    }
    if (code == CLI_OK && a->backoff) {
        json_t *bo = backoff_json(a->backoff);
        if (bo == NULL)
            code = usage_error("--backoff: expected a duration (2s) or a JSON object");
        else
            json_object_set_new(body, "backoff", bo);
    }
    if (code == CLI_OK && a->rate) {
        json_t *rate;
        if ((code = rate_json("--rate", a->rate, &rate)) == CLI_OK)
            json_object_set_new(body, "rate_limit", rate);
    }
    if (code == CLI_OK && a->key_rate) {
        json_t *rate;
        if ((code = rate_json("--key-rate", a->key_rate, &rate)) == CLI_OK)
            json_object_set_new(body, "key_rate_limit", rate);
    }
    if (code != CLI_OK) {
        json_decref(body);
        return code;
    }
    *out = body;
    return CLI_OK;
}

static int
queues_cmd(struct jobs_args *a, const char *cmd, const char *arg)
{
    struct bb_buf path;
    bb_buf_init(&path);
    int code;
    if (strcmp(cmd, "list") == 0) {
        code = call(a, "GET", "/queues", NULL, human_queues);
    } else if (arg == NULL) {
        code = usage_error("expected a queue name");
    } else if (strcmp(cmd, "show") == 0) {
        path_for(&path, "/queues/", arg, "");
        code = call(a, "GET", path.data, NULL, human_queue);
    } else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) {
        path_for(&path, "/queues/", arg, strcmp(cmd, "pause") == 0 ? "/pause" : "/resume");
        code = call(a, "POST", path.data, json_object(), human_done);
    } else if (strcmp(cmd, "put") == 0) {
        json_t *body;
        if ((code = queue_body(a, &body)) == CLI_OK) {
            path_for(&path, "/queues/", arg, "");
            code = call(a, "PUT", path.data, body, human_queue);
        }
    } else {
        code = usage_error("unknown queues command");
    }
    bb_buf_deinit(&path);
    return code;
}

static int
schedules_cmd(struct jobs_args *a, const char *cmd, const char *arg)
{
    struct bb_buf path;
    bb_buf_init(&path);
    int code;
    if (strcmp(cmd, "list") == 0) {
        code = call(a, "GET", "/schedules", NULL, human_schedules);
    } else if (arg == NULL) {
        code = usage_error("expected a schedule name");
    } else if (strcmp(cmd, "create") == 0) {
        json_t *body;
        if (a->handler == NULL)
            return usage_error("schedules create needs --handler");
        if ((code = job_body(a, &body)) != CLI_OK)
            return code;
        json_object_set_new(body, "name", json_string(arg));
        code = call(a, "POST", "/schedules", body, human_submitted);
    } else if (strcmp(cmd, "show") == 0) {
        path_for(&path, "/schedules/", arg, "");
        code = call(a, "GET", path.data, NULL, NULL);
    } else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) {
        path_for(&path, "/schedules/", arg, strcmp(cmd, "pause") == 0 ? "/pause" : "/resume");
        code = call(a, "POST", path.data, json_object(), human_done);
    } else if (strcmp(cmd, "delete") == 0) {
        path_for(&path, "/schedules/", arg, "");
        code = call(a, "DELETE", path.data, NULL, human_done);
    } else {
        code = usage_error("unknown schedules command");
    }
    bb_buf_deinit(&path);
    return code;
}

static int
dlq_cmd(struct jobs_args *a, const char *cmd, const char *arg)
{
    struct bb_buf path;
    bb_buf_init(&path);
    int code;
    /* "purge ID" purges that job; "purge" alone, every dead job its
     * filters (--queue, --fingerprint) match. */
    bool purge_all = strcmp(cmd, "purge") == 0 && arg == NULL;
    bool bulk = strcmp(cmd, "list") == 0 || strcmp(cmd, "redrive-all") == 0 || purge_all;
    if (purge_all && !a->all && a->queue == NULL && a->fingerprint == NULL) {
        code = usage_error("purge deletes dead jobs for good: name one (purge ID), filter them"
                           " (--queue, --fingerprint), or say --all");
    } else if (bulk && arg != NULL) {
        /* An id after a bulk command must not be dropped: the command
         * would then act on every dead job. */
        code = usage_error(strcmp(cmd, "redrive-all") == 0
                               ? "redrive-all takes no id: redrive ID redrives one job"
                               : "list takes no id: show ID shows one job");
    } else if (bulk) {
        bb_buf_puts(&path, strcmp(cmd, "redrive-all") == 0 ? "/dlq/redrive" : "/dlq");
        /* Paging is for the list; the bulk operations take no such filter
         * (the server refuses a parameter it does not take). */
        if (strcmp(cmd, "list") == 0)
            bb_buf_printf(&path, "?limit=%" PRId64 "&after=%" PRId64, a->limit, a->after);
        query_param(&path, "queue", a->queue);
        query_param(&path, "fingerprint", a->fingerprint);
        code = strcmp(cmd, "list") == 0    ? call(a, "GET", path.data, NULL, human_jobs)
               : strcmp(cmd, "purge") == 0 ? call(a, "DELETE", path.data, NULL, human_done)
                                           : call(a, "POST", path.data, json_object(), human_done);
    } else if (strcmp(cmd, "groups") == 0) {
        bb_buf_printf(&path, "/dlq/groups?limit=%" PRId64, a->limit);
        query_param(&path, "queue", a->queue);
        code = call(a, "GET", path.data, NULL, human_groups);
    } else if (arg == NULL) {
        code = usage_error("expected a job id");
    } else if (strcmp(cmd, "show") == 0) {
        path_for(&path, "/dlq/", arg, "");
        code = call(a, "GET", path.data, NULL, NULL);
    } else if (strcmp(cmd, "redrive") == 0) {
        path_for(&path, "/dlq/", arg, "/redrive");
        code = call(a, "POST", path.data, json_object(), human_done);
    } else if (strcmp(cmd, "purge") == 0) {
        if (a->queue || a->fingerprint || a->all)
            code = usage_error("purge ID takes no --queue, --fingerprint or --all");
        else {
            path_for(&path, "/dlq/", arg, "");
            code = call(a, "DELETE", path.data, NULL, human_done);
        }
    } else {
        code = usage_error("unknown dlq command");
    }
    bb_buf_deinit(&path);
    return code;
}

static int
dispatch(int argc, char **argv, int (*fn)(struct jobs_args *, const char *, const char *))
{
    struct jobs_args a;
    const char *pos[3];
    size_t npos = 0;
    int code = parse(&a, argc, argv, pos, &npos);
    if (code < 0) {
        if (npos == 0 || npos > 2)
            code = usage_error("expected a command (and an id or a name)");
        else
            code = fn(&a, pos[0], npos > 1 ? pos[1] : NULL);
    }
    cli_free(JOBS_OPTS, BB_ARRAY_LEN(JOBS_OPTS), &a);
    return code;
}

int
cli_jobs(int argc, char **argv)
{
    return dispatch(argc, argv, jobs_cmd);
}

int
cli_queues(int argc, char **argv)
{
    return dispatch(argc, argv, queues_cmd);
}

int
cli_schedules(int argc, char **argv)
{
    return dispatch(argc, argv, schedules_cmd);
}

int
cli_dlq(int argc, char **argv)
{
    return dispatch(argc, argv, dlq_cmd);
}
