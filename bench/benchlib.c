/*
 * benchlib.c: see benchlib.h.
 */
#include "benchlib.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

const char *bench_name = "bench";

json_t *
bench_call(struct http_client *h, const char *base, const char *method, const char *path,
           const char *body, long want)
{
    char url[1024];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct http_client_response resp;
    struct bb_error e;
    if (http_client_do(h, method, url, body, &resp, &e) != ERR_OK) {
        fprintf(stderr, "%s: %s %s: %s\n", bench_name, method, path, e.detail);
        exit(1);
    }
    if (want ? resp.status != want : resp.status / 100 != 2) {
        fprintf(stderr, "%s: %s %s answered %ld: %.300s\n", bench_name, method, path, resp.status,
                resp.body.data ? resp.body.data : "");
        exit(1);
    }
    json_t *doc = json_loadb(resp.body.data ? resp.body.data : "", resp.body.len, 0, NULL);
    bb_buf_deinit(&resp.body);
    return doc;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void
bench_percentiles(int64_t *ns, size_t n, double *p50_ms, double *p99_ms)
{
    qsort(ns, n, sizeof *ns, cmp_i64);
    *p50_ms = n ? (double)ns[n / 2] / 1e6 : 0;
    *p99_ms = n ? (double)ns[(size_t)((double)n * 0.99)] / 1e6 : 0;
}

struct client {
    bench_op_fn *op;
    void *ctx;
    size_t index;
    int64_t end_ns;
    int64_t *lat; /* successful operations */
    size_t n, cap;
    size_t refused;
};

static void *
client_main(void *arg)
{
    struct client *c = arg;
    struct http_client *h = http_client_create(NULL, 60000);
    for (uint64_t i = 0; bb_mono_ns() < c->end_ns; i++) {
        int64_t t0 = bb_mono_ns();
        if (!c->op(h, c->ctx, c->index, i)) {
            c->refused++;
            continue;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 4096;
            c->lat = xrealloc(c->lat, c->cap * sizeof *c->lat);
        }
        c->lat[c->n++] = bb_mono_ns() - t0;
    }
    http_client_destroy(h);
    return NULL;
}

void
bench_run(size_t clients, int64_t duration_ms, bench_op_fn *op, void *ctx, struct bench_result *out)
{
    struct client *c = xcalloc(clients, sizeof *c);
    pthread_t *t = xcalloc(clients, sizeof *t);
    int64_t start = bb_mono_ns();
    for (size_t i = 0; i < clients; i++) {
        c[i] = (struct client){
            .op = op, .ctx = ctx, .index = i, .end_ns = start + duration_ms * 1000000};
        if (pthread_create(&t[i], NULL, client_main, &c[i]) != 0)
            bb_panic(__FILE__, __LINE__, "cannot start a client thread");
    }
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < clients; i++) {
        pthread_join(t[i], NULL);
        out->ok += c[i].n;
        out->refused += c[i].refused;
    }
    double secs = (double)(bb_mono_ns() - start) / 1e9;
    int64_t *all = xcalloc(out->ok ? out->ok : 1, sizeof *all);
    size_t k = 0;
    for (size_t i = 0; i < clients; i++) {
        memcpy(all + k, c[i].lat, c[i].n * sizeof *all);
        k += c[i].n;
        free(c[i].lat);
    }
    bench_percentiles(all, out->ok, &out->p50_ms, &out->p99_ms);
    out->ok_per_s = (double)out->ok / secs;
    free(all);
    free(c);
    free(t);
}

int
bench_main(const char *tool, const struct bb_opt *opts, size_t n_opts, void *cfg,
           const struct bench_mode *modes, size_t n_modes, int argc, char **argv)
{
    bench_name = tool;
    const char *pos[1];
    size_t npos = 0;
    struct bb_error e;
    bb_error_clear(&e);
    const struct bench_mode *mode = NULL;
    bool parsed =
        bb_opts_parse(opts, n_opts, cfg, argc - 1, argv + 1, false, pos, 1, &npos, &e) == ERR_OK;
    for (size_t i = 0; parsed && npos == 1 && i < n_modes; i++)
        if (strcmp(pos[0], modes[i].name) == 0)
            mode = &modes[i];
    if (mode == NULL) {
        fprintf(stderr, "usage: %s", tool);
        for (size_t i = 0; i < n_modes; i++)
            fprintf(stderr, "%s%s", i ? "|" : " ", modes[i].name);
        fprintf(stderr, " [options]\n%s\n",
                !parsed     ? e.detail
                : npos == 1 ? "unknown benchmark"
                            : "");
        bb_opts_help(stderr, opts, n_opts, false);
        bb_opts_free(opts, n_opts, cfg);
        return 2;
    }
    http_client_global_init();
    mode->run();
    bb_opts_free(opts, n_opts, cfg);
    http_client_global_cleanup();
    return 0;
}
