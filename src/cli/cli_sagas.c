/*
 * cli_sagas.c: `backbone sagas list|get|retry`, a client of the sagas API.
 * A list prints one line per saga; `get` prints the timeline, one line per
 * step run; --json prints the API's answer.
 */
#include "cli/cli_int.h"

#include "http/http.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

struct sagas_args {
    struct cli_client client; /* first: cli_parse fills it */
    char *type;
    char *state;
    char *after;
    int64_t limit;
};

#define OFF(f) offsetof(struct sagas_args, f)
static const struct bb_opt SAGAS_OPTS[] = {
    {"type", BB_OPT_STRING, OFF(type), 0, 0, NULL, "saga type (list)", BB_OPT_NO_ENV},
    {"state", BB_OPT_STRING, OFF(state), 0, 0, NULL,
     "RUNNING, COMPENSATING, COMPLETED, FAILED or STUCK (list)", BB_OPT_NO_ENV},
    {"after", BB_OPT_STRING, OFF(after), 0, 0, NULL, "saga id to page after (list)", BB_OPT_NO_ENV},
    {"limit", BB_OPT_INT, OFF(limit), 1, 1000, "100", "sagas per page (list)", BB_OPT_NO_ENV},
};

static const char SAGAS_USAGE[] =
    "backbone sagas list [--type T] [--state S] [--limit N] [--after ID]\n"
    "       backbone sagas get ID | retry ID      (retry: a STUCK saga goes on again)";

static const char *
str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static void
print_saga_line(const json_t *s)
{
    printf("%s  %-12s %-10s step %-20s%s%s\n", str(s, "saga_id"), str(s, "state"), str(s, "type"),
           str(s, "step"), json_is_string(json_object_get(s, "reason")) ? "  reason: " : "",
           json_is_string(json_object_get(s, "reason")) ? str(s, "reason") : "");
}

static void
human_list(const json_t *out)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(out, "sagas"), i, s) print_saga_line(s);
    if (json_is_string(json_object_get(out, "next_after")))
        printf("(more: --after %s)\n", str(out, "next_after"));
}

static void
human_saga(const json_t *s)
{
    print_saga_line(s);
    printf("  correlation %s, retries %" JSON_INTEGER_FORMAT "%s%s\n", str(s, "correlation_id"),
           json_integer_value(json_object_get(s, "retries")),
           json_is_string(json_object_get(s, "next_retry_at")) ? ", next retry at " : "",
           json_is_string(json_object_get(s, "next_retry_at")) ? str(s, "next_retry_at") : "");
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(s, "timeline"), i, t)
    {
        printf("  %s  %-20s %-12s %-6s attempt %" JSON_INTEGER_FORMAT "  %" JSON_INTEGER_FORMAT
               " ms%s%s\n",
               str(t, "started_at"), str(t, "step"), str(t, "phase"), str(t, "outcome"),
               json_integer_value(json_object_get(t, "attempt")),
               json_integer_value(json_object_get(t, "duration_ms")),
               json_is_string(json_object_get(t, "error")) ? "  " : "",
               json_is_string(json_object_get(t, "error")) ? str(t, "error") : "");
    }
}

static void
query_arg(struct bb_buf *b, const char *key, const char *value)
{
    if (value == NULL)
        return;
    bb_buf_printf(b, "&%s=", key);
    http_client_escape(value, b);
}

int
cli_sagas(int argc, char **argv)
{
    struct sagas_args a;
    memset(&a, 0, sizeof a);
    const char *pos[3];
    size_t npos = 0;
    int code =
        cli_parse(SAGAS_OPTS, BB_ARRAY_LEN(SAGAS_OPTS), &a, argc, argv, SAGAS_USAGE, pos, 3, &npos);
    if (code >= 0) {
        cli_free(SAGAS_OPTS, BB_ARRAY_LEN(SAGAS_OPTS), &a);
        return code;
    }
    struct bb_buf path;
    bb_buf_init(&path);
    const char *method = "GET";
    void (*human)(const json_t *) = human_saga;
    bool list = npos == 1 && strcmp(pos[0], "list") == 0;
    if (list) {
        bb_buf_printf(&path, "/sagas?limit=%" PRId64, a.limit);
        query_arg(&path, "type", a.type);
        query_arg(&path, "state", a.state);
        query_arg(&path, "after", a.after);
        human = human_list;
    } else if (npos == 2 && (strcmp(pos[0], "get") == 0 || strcmp(pos[0], "retry") == 0)) {
        bb_buf_puts(&path, "/sagas/");
        http_client_escape(pos[1], &path);
        if (strcmp(pos[0], "retry") == 0) {
            bb_buf_puts(&path, "/retry");
            method = "POST";
        }
    } else {
        fprintf(stderr, "backbone: expected list, get ID or retry ID\nusage: %s\n", SAGAS_USAGE);
        code = CLI_USAGE;
    }
    json_t *out = NULL;
    json_t *body = strcmp(method, "POST") == 0 ? json_object() : NULL;
    if (code < 0)
        code = cli_call(&a.client, method, path.data, body, &out);
    json_decref(body);
    if (code == CLI_OK) {
        if (a.client.json)
            cli_print_json(out);
        else
            human(out);
    }
    json_decref(out);
    bb_buf_deinit(&path);
    cli_free(SAGAS_OPTS, BB_ARRAY_LEN(SAGAS_OPTS), &a);
    return code;
}
