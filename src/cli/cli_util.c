/*
 * cli_util.c: the client side of the HTTP API for CLI subcommands.
 */
#include "cli/cli_int.h"

#include "http/http.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

void
cli_print_json(const json_t *v)
{
    char *text = bb_json_dumps(v);
    puts(text);
    free(text);
}

#define CLIENT_OFF(f) offsetof(struct cli_client, f)

static const struct bb_opt CLIENT_OPTS[] = {
    {"server", BB_OPT_STRING, CLIENT_OFF(server), 0, 0, "http://127.0.0.1:8080",
     "Backbone server URL", 0},
    {"api-token", BB_OPT_STRING, CLIENT_OFF(api_token), 0, 0, NULL,
     "bearer token, if the server requires one", 0},
    {"json", BB_OPT_BOOL, CLIENT_OFF(json), 0, 0, "false",
     "print the server's JSON answer instead of text", 0},
    {"timeout", BB_OPT_DURATION, CLIENT_OFF(timeout_ms), 1, 3600000, "30s",
     "give up on the server after this long (beyond any --wait)", 0},
};

enum { MAX_OPTS = 32 };

int
cli_parse(const struct bb_opt *opts, size_t n, void *dst, int argc, char **argv, const char *usage,
          const char **pos, size_t max_pos, size_t *n_pos)
{
    struct bb_opt all[MAX_OPTS];
    size_t n_all = n + BB_ARRAY_LEN(CLIENT_OPTS);
    BB_ASSERT(n_all <= MAX_OPTS);
    memcpy(all, opts, n * sizeof *opts);
    memcpy(all + n, CLIENT_OPTS, sizeof CLIENT_OPTS);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: %s\n\noptions (flag, or BACKBONE_* variable):\n", usage);
            bb_opts_help(stdout, all, n_all, true);
            return CLI_OK;
        }
    }
    struct bb_error e;
    bb_error_clear(&e);
    if (bb_opts_parse(all, n_all, dst, argc, argv, true, pos, max_pos, n_pos, &e) != ERR_OK) {
        fprintf(stderr, "backbone: %s\nusage: %s\n", e.detail, usage);
        return CLI_USAGE;
    }
    return -1;
}

void
cli_free(const struct bb_opt *opts, size_t n, void *dst)
{
    bb_opts_free(opts, n, dst);
    bb_opts_free(CLIENT_OPTS, BB_ARRAY_LEN(CLIENT_OPTS), dst);
}

static int
exit_for_status(long status)
{
    if (status >= 200 && status < 300)
        return CLI_OK;
    if (status >= 400 && status < 500)
        return CLI_REFUSED;
    return CLI_UNAVAILABLE;
}

int
cli_call(const struct cli_client *c, const char *method, const char *path, json_t *body,
         json_t **out)
{
    return cli_call_problem(c, method, path, body, out, NULL);
}

int
cli_call_problem(const struct cli_client *c, const char *method, const char *path, json_t *body,
                 json_t **out, json_t **problem)
{
    *out = NULL;
    if (problem)
        *problem = NULL;
    struct bb_buf url;
    bb_buf_init(&url);
    size_t n = strlen(c->server);
    while (n > 0 && c->server[n - 1] == '/')
        n--;
    bb_buf_append(&url, c->server, n);
    bb_buf_puts(&url, path);
    char *text = body ? bb_json_dumps(body) : NULL;
    struct http_client_response resp;
    struct bb_error e;
    bb_error_clear(&e);
    enum err rc =
        http_client_request(method, url.data, c->api_token, text, c->timeout_ms, &resp, &e);
    free(text);
    bb_buf_deinit(&url);
    if (rc != ERR_OK) {
        fprintf(stderr, "backbone: %s (%s)\n", e.detail, c->server);
        return rc == ERR_USAGE ? CLI_USAGE : CLI_UNAVAILABLE;
    }
    json_error_t jerr;
    json_t *doc = resp.body.len ? json_loadb(resp.body.data, resp.body.len, 0, &jerr) : NULL;
    int code = exit_for_status(resp.status);
    if (doc == NULL) {
        fprintf(stderr, "backbone: server answered %ld with a body that is not JSON\n",
                resp.status);
        code = CLI_UNAVAILABLE;
    } else if (code != CLI_OK) {
        if (c->json) {
            cli_print_json(doc);
        } else {
            const char *detail = json_string_value(json_object_get(doc, "detail"));
            const char *title = json_string_value(json_object_get(doc, "title"));
            fprintf(stderr, "backbone: %s (HTTP %ld)\n",
                    detail  ? detail
                    : title ? title
                            : "request failed",
                    resp.status);
            if (problem) {
                *problem = doc;
                doc = NULL;
            }
        }
        json_decref(doc);
        doc = NULL;
    }
    bb_buf_deinit(&resp.body);
    *out = doc;
    return code;
}
