/*
 * benchlib: what the load generators share: one checked HTTP call,
 * latency percentiles, and a closed loop of clients for a duration.
 */
#ifndef BB_BENCHLIB_H
#define BB_BENCHLIB_H

#include "http/http.h"

/* Set by each tool: its name in error messages. */
extern const char *bench_name;

/* One request to base+path; exits unless the status is `want` (0: any
 * 2xx). Returns the parsed body (NULL if not JSON). */
json_t *bench_call(struct http_client *h, const char *base, const char *method, const char *path,
                   const char *body, long want);
/* p50 and p99 in ms of `n` durations in ns (sorts them). */
void bench_percentiles(int64_t *ns, size_t n, double *p50_ms, double *p99_ms);

/* One operation of a client: true when it succeeded (timed), false when
 * it was refused (counted apart). `i` counts this client's operations. */
typedef bool bench_op_fn(struct http_client *h, void *ctx, size_t client, uint64_t i);
struct bench_result {
    size_t ok;
    size_t refused;
    double ok_per_s;
    double p50_ms, p99_ms; /* of the successful operations */
};
/* `clients` threads, each with its own keep-alive connection, calling `op`
 * back to back for `duration_ms`. */
void bench_run(size_t clients, int64_t duration_ms, bench_op_fn *op, void *ctx,
               struct bench_result *out);

/* A tool's benchmarks by name: `tool NAME [options]` parses `opts` into
 * `cfg`, runs NAME's function and frees `cfg`; 2 on a usage error. */
struct bench_mode {
    const char *name;
    void (*run)(void);
};
int bench_main(const char *tool, const struct bb_opt *opts, size_t n_opts, void *cfg,
               const struct bench_mode *modes, size_t n_modes, int argc, char **argv);

#endif /* BB_BENCHLIB_H */
