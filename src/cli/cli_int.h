/*
 * cli_int.h: helpers shared by the client subcommands.
 */
#ifndef BB_CLI_INT_H
#define BB_CLI_INT_H

#include "cli/cli.h"

/* Options every client subcommand takes. A subcommand's argument struct
 * starts with a `struct cli_client`, and cli_parse adds these options to
 * the subcommand's own table. */
struct cli_client {
    char *server;
    char *api_token;
    bool json;
    int64_t timeout_ms;
};

/*
 * Send one request (path already escaped; body may be NULL) and decode the
 * JSON answer into *out (caller json_decref's). Returns a cli_exit code; on
 * anything but CLI_OK the error has been printed (problem detail, or the
 * raw answer with --json).
 */
int cli_call(const struct cli_client *c, const char *method, const char *path, json_t *body,
             json_t **out);
/* cli_call that also hands back, in human mode, the problem document of a
 * refusal (4xx/5xx with a JSON body) in *problem (caller json_decref's;
 * NULL otherwise), after its detail has been printed, so that the caller
 * can print what its own problems carry (a lock's holder). */
int cli_call_problem(const struct cli_client *c, const char *method, const char *path, json_t *body,
                     json_t **out, json_t **problem);
/* Print `v` as one line of JSON (the --json output). */
void cli_print_json(const json_t *v);
/* Parse options for a subcommand (its table plus the client options),
 * handling --help. `dst` starts with a struct cli_client. Returns -1 to go
 * on, or an exit code to return. */
int cli_parse(const struct bb_opt *opts, size_t n, void *dst, int argc, char **argv,
              const char *usage, const char **pos, size_t max_pos, size_t *n_pos);
/* Free what cli_parse allocated in `dst`. */
void cli_free(const struct bb_opt *opts, size_t n, void *dst);

#endif /* BB_CLI_INT_H */
