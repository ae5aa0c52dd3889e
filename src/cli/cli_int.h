/*
 * cli_int.h: helpers shared by the client subcommands.
 */
#ifndef BB_CLI_INT_H
#define BB_CLI_INT_H

#include "cli/cli.h"

/* Options every client subcommand takes (appended to its own table). */
struct cli_client {
    char *server;
    char *api_token;
    bool json;
    int64_t timeout_ms;
};

#define CLI_CLIENT_OPTS(type, member)                                                             \
    {"server", BB_OPT_STRING, offsetof(type, member.server), 0, 0, "http://127.0.0.1:8080",      \
     "Backbone server URL"},                                                                      \
        {"api-token", BB_OPT_STRING, offsetof(type, member.api_token), 0, 0, NULL,                \
         "bearer token, if the server requires one"},                                             \
        {"json", BB_OPT_BOOL, offsetof(type, member.json), 0, 0, "false",                         \
         "print the server's JSON answer instead of text"},                                       \
        {"timeout", BB_OPT_DURATION, offsetof(type, member.timeout_ms), 1, 3600000, "30s",        \
         "give up on the server after this long"}

/*
 * Send one request (path already escaped; body may be NULL) and decode the
 * JSON answer into *out (caller json_decref's). Returns a cli_exit code; on
 * anything but CLI_OK the error has been printed (problem detail, or the
 * raw answer with --json).
 */
int cli_call(const struct cli_client *c, const char *method, const char *path, json_t *body,
             json_t **out);
/* Print `v` as one line of JSON (the --json output). */
void cli_print_json(const json_t *v);
/* Parse options for a subcommand, handling --help. Returns -1 to go on, or
 * an exit code to return. */
int cli_parse(const struct bb_opt *opts, size_t n, void *dst, int argc, char **argv,
              const char *usage, const char **pos, size_t max_pos, size_t *n_pos);

#endif /* BB_CLI_INT_H */
