/*
 * cli_locks.c: `backbone locks ...` and `backbone fenced ...`, clients of
 * the lock API.
 */
#include "cli/cli_int.h"

#include "http/http.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

struct locks_args {
    struct cli_client client; /* first: cli_parse fills it */
    char *owner;
    int64_t ttl_ms;
    int64_t wait_ms;
    int64_t token;
    int64_t limit;
    char *after;
    char *value;
};

#define OFF(f) offsetof(struct locks_args, f)

static const struct bb_opt LOCKS_OPTS[] = {
    {"owner", BB_OPT_STRING, OFF(owner), 0, 0, NULL, "who holds the lock (acquire)", BB_OPT_NO_ENV},
    {"ttl", BB_OPT_DURATION, OFF(ttl_ms), 10, 86400000, "30s", "lease length (acquire, renew)",
     BB_OPT_NO_ENV},
    {"wait", BB_OPT_DURATION, OFF(wait_ms), 0, 300000, "0", "wait this long for a held lock",
     BB_OPT_NO_ENV},
    {"token", BB_OPT_INT, OFF(token), 0, INT64_MAX, "0", "fencing token (renew, release, put)",
     BB_OPT_NO_ENV},
    {"limit", BB_OPT_INT, OFF(limit), 1, 1000, "100", "most locks to list", BB_OPT_NO_ENV},
    {"after", BB_OPT_STRING, OFF(after), 0, 0, NULL, "list locks named after this one",
     BB_OPT_NO_ENV},
    {"value", BB_OPT_STRING, OFF(value), 0, 0, NULL, "JSON value to store (fenced put)",
     BB_OPT_NO_ENV},
};

static const char LOCKS_USAGE[] = "backbone locks acquire NAME --owner O [--ttl 30s] [--wait 5s]\n"
                                  "       backbone locks renew NAME --token N [--ttl 30s]\n"
                                  "       backbone locks release NAME --token N\n"
                                  "       backbone locks show NAME\n"
                                  "       backbone locks list [--limit N] [--after NAME]\n"
                                  "       backbone fenced put KEY --token N --value JSON\n"
                                  "       backbone fenced get KEY";

/* "/locks/<escaped name><suffix>" */
static void
lock_path(struct bb_buf *out, const char *prefix, const char *name, const char *suffix)
{
    bb_buf_puts(out, prefix);
    http_client_escape(name, out);
    bb_buf_puts(out, suffix);
}

static void
print_grant(const char *verb, const json_t *g)
{
    json_int_t token = json_integer_value(json_object_get(g, "token"));
    printf("%s %s: owner %s", verb, json_string_value(json_object_get(g, "name")),
           json_string_value(json_object_get(g, "owner")));
    if (json_object_get(g, "token"))
        printf(", token %" JSON_INTEGER_FORMAT, token);
    printf(", epoch %" JSON_INTEGER_FORMAT ", expires %s (in %" JSON_INTEGER_FORMAT " ms)\n",
           json_integer_value(json_object_get(g, "epoch")),
           json_string_value(json_object_get(g, "expires_at")),
           json_integer_value(json_object_get(g, "expires_in_ms")));
}

/* A refusal because someone else holds the lock (409 lock_held) names the
 * holder and when its lease runs out: say so after the detail. */
static void
print_holder(const json_t *problem)
{
    const char *holder = json_string_value(json_object_get(problem, "holder"));
    const char *expires = json_string_value(json_object_get(problem, "expires_at"));
    if (holder == NULL)
        return;
    fprintf(stderr, "backbone: held by %s", holder);
    if (expires)
        fprintf(stderr, ", lease expires %s", expires);
    fputc('\n', stderr);
}

/* Run one call and print its answer; `verb` NULL prints nothing but JSON. */
static int
call_and_print(const struct locks_args *a, const char *method, struct bb_buf *path, json_t *body,
               const char *verb)
{
    json_t *out, *problem;
    int code = cli_call_problem(&a->client, method, path->data, body, &out, &problem);
    json_decref(body);
    bb_buf_deinit(path);
    if (code != CLI_OK) {
        print_holder(problem);
        json_decref(problem);
        return code;
    }
    if (a->client.json) {
        cli_print_json(out);
    } else if (strcmp(verb, "released") == 0) {
        printf("released %s (token %" JSON_INTEGER_FORMAT ")\n",
               json_string_value(json_object_get(out, "name")),
               json_integer_value(json_object_get(out, "token")));
    } else if (strcmp(verb, "list") == 0) {
        const json_t *locks = json_object_get(out, "locks");
        size_t i;
        const json_t *g;
        if (json_array_size(locks) == 0)
            printf("no locks held\n");
        json_array_foreach(locks, i, g) print_grant("held", g);
        const char *next = json_string_value(json_object_get(out, "next_after"));
        if (next)
            printf("more: --after %s\n", next);
    } else if (strcmp(verb, "fenced") == 0) {
        char *v = bb_json_dumps(json_object_get(out, "value"));
        printf("%s (token %" JSON_INTEGER_FORMAT ")\n", v,
               json_integer_value(json_object_get(out, "token")));
        free(v);
    } else {
        print_grant(verb, out);
    }
    json_decref(out);
    return CLI_OK;
}

static int
usage_error(const char *msg)
{
    fprintf(stderr, "backbone: %s\nusage: %s\n", msg, LOCKS_USAGE);
    return CLI_USAGE;
}

static int
locks_run(const char *cmd, const char *name, const struct locks_args *a)
{
    struct bb_buf path;
    bb_buf_init(&path);
    if (strcmp(cmd, "acquire") == 0) {
        if (a->owner == NULL)
            return usage_error("acquire needs --owner");
        json_t *body = json_pack("{s:s, s:I, s:I}", "owner", a->owner, "ttl_ms",
                                 (json_int_t)a->ttl_ms, "wait_ms", (json_int_t)a->wait_ms);
        if (body == NULL)
            return usage_error("--owner must be valid UTF-8");
        lock_path(&path, "/locks/", name, "/acquire");
        /* The server parks the request up to --wait: the client's own
         * timeout starts counting after it. */
        struct locks_args waiting = *a;
        waiting.client.timeout_ms += a->wait_ms;
        return call_and_print(&waiting, "POST", &path, body, "acquired");
    }
    if (strcmp(cmd, "renew") == 0 || strcmp(cmd, "release") == 0) {
        if (a->token <= 0)
            return usage_error("renew and release need --token");
        bool renew = strcmp(cmd, "renew") == 0;
        json_t *body = renew ? json_pack("{s:I, s:I}", "token", (json_int_t)a->token, "ttl_ms",
                                         (json_int_t)a->ttl_ms)
                             : json_pack("{s:I}", "token", (json_int_t)a->token);
        lock_path(&path, "/locks/", name, renew ? "/renew" : "/release");
        return call_and_print(a, "POST", &path, body, renew ? "renewed" : "released");
    }
    if (strcmp(cmd, "show") == 0) {
        lock_path(&path, "/locks/", name, "");
        return call_and_print(a, "GET", &path, NULL, "held");
    }
    return usage_error("unknown locks command");
}

static int
fenced_run(const char *cmd, const char *key, const struct locks_args *a)
{
    struct bb_buf path;
    bb_buf_init(&path);
    lock_path(&path, "/fenced/", key, "");
    if (strcmp(cmd, "get") == 0)
        return call_and_print(a, "GET", &path, NULL, "fenced");
    if (strcmp(cmd, "put") != 0 || a->value == NULL || a->token <= 0) {
        bb_buf_deinit(&path);
        return usage_error("fenced put needs --token and --value");
    }
    json_error_t jerr;
    json_t *value = json_loads(a->value, JSON_DECODE_ANY, &jerr);
    if (value == NULL) {
        bb_buf_deinit(&path);
        return usage_error("--value must be JSON (quote strings: '\"text\"')");
    }
    json_t *body = json_pack("{s:I, s:o}", "token", (json_int_t)a->token, "value", value);
    json_t *out;
    int code = cli_call(&a->client, "PUT", path.data, body, &out);
    json_decref(body);
    bb_buf_deinit(&path);
    if (code == CLI_OK) {
        if (a->client.json)
            cli_print_json(out);
        else
            printf("stored %s with token %" PRId64 "\n", key, a->token);
        json_decref(out);
    }
    return code;
}

static int
run(int argc, char **argv, bool fenced)
{
    struct locks_args a;
    memset(&a, 0, sizeof a);
    const char *pos[2];
    size_t npos = 0;
    int code =
        cli_parse(LOCKS_OPTS, BB_ARRAY_LEN(LOCKS_OPTS), &a, argc, argv, LOCKS_USAGE, pos, 2, &npos);
    if (code < 0) {
        if (npos == 1 && strcmp(pos[0], "list") == 0 && !fenced) {
            struct bb_buf path;
            bb_buf_init(&path);
            bb_buf_printf(&path, "/locks?limit=%lld", (long long)a.limit);
            if (a.after) {
                bb_buf_puts(&path, "&after=");
                http_client_escape(a.after, &path);
            }
            code = call_and_print(&a, "GET", &path, NULL, "list");
        } else if (npos != 2) {
            code = usage_error("expected a command and a name");
        } else {
            code = fenced ? fenced_run(pos[0], pos[1], &a) : locks_run(pos[0], pos[1], &a);
        }
    }
    cli_free(LOCKS_OPTS, BB_ARRAY_LEN(LOCKS_OPTS), &a);
    return code;
}

int
cli_locks(int argc, char **argv)
{
    return run(argc, argv, false);
}

int
cli_fenced(int argc, char **argv)
{
    return run(argc, argv, true);
}
