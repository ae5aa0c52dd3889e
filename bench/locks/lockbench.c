/*
 * lockbench: acquire+release pairs per second, and the latency of each pair
 * (p50/p99), over HTTP with N concurrent clients, each on its own keep-alive
 * connection.
 *
 *   lockbench --target backbone --url http://127.0.0.1:8080 --clients 8
 *   lockbench --target etcd --url http://127.0.0.1:2379 --clients 8
 *
 * A pair on Backbone is POST /locks/K/acquire then POST /locks/K/release.
 * On etcd 3.4 (v3 JSON gateway) it is what a lock costs there: lease grant,
 * a put-if-absent transaction bound to the lease, and a delete-if-value
 * transaction (the same three calls as ../shared/peers/node/bench_locks.js).
 * Keys come from a space of --keys names, walked so that clients rarely
 * collide; an acquire that finds its key held counts as "busy" and moves on.
 * With --wait D (Backbone only) an acquire blocks up to D for a held key
 * instead: with --keys 1 every client queues on one lock, and pairs/s is
 * how fast it passes from holder to waiter.
 * Prints one JSON line.
 */
#include "http/http.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct config {
    char *target;
    char *url;
    char *label;
    int64_t clients;
    int64_t duration_ms;
    int64_t keys;
    int64_t wait_ms;
};

#define OFF(f) offsetof(struct config, f)
static const struct bb_opt OPTS[] = {
    {"target", BB_OPT_STRING, OFF(target), 0, 0, "backbone", "backbone or etcd", 0},
    {"url", BB_OPT_STRING, OFF(url), 0, 0, "http://127.0.0.1:8080", "server URL", 0},
    {"label", BB_OPT_STRING, OFF(label), 0, 0, "", "name printed with the result", 0},
    {"clients", BB_OPT_INT, OFF(clients), 1, 1024, "8", "concurrent clients", 0},
    {"duration", BB_OPT_DURATION, OFF(duration_ms), 100, 3600000, "10s", "how long to run", 0},
    {"keys", BB_OPT_INT, OFF(keys), 1, 1000000, "1000", "size of the lock name space", 0},
    {"wait", BB_OPT_DURATION, OFF(wait_ms), 0, 20000, "0s",
     "backbone: block this long for a held key", 0},
};

struct client {
    const struct config *cfg;
    int id;
    int64_t end_ns;
    int64_t *lat_ns; /* one per completed pair */
    size_t n_lat;
    size_t cap_lat;
    int64_t busy;
    int64_t errors;
    char error[256];
};

static void
record(struct client *c, int64_t ns)
{
    if (c->n_lat == c->cap_lat) {
        c->cap_lat = c->cap_lat ? c->cap_lat * 2 : 4096;
        c->lat_ns = xrealloc(c->lat_ns, c->cap_lat * sizeof *c->lat_ns);
    }
    c->lat_ns[c->n_lat++] = ns;
}

/* POST `body` and parse the JSON answer; NULL (and an error noted) on failure. */
static json_t *
post(struct client *c, struct http_client *h, const char *url, const char *body, long *status)
{
    struct http_client_response resp;
    struct bb_error e;
    if (http_client_do(h, "POST", url, body, &resp, &e) != ERR_OK) {
        bb_strlcpy(c->error, e.detail, sizeof c->error);
        c->errors++;
        return NULL;
    }
    *status = resp.status;
    json_t *doc = json_loadb(resp.body.data, resp.body.len, 0, NULL);
    bb_buf_deinit(&resp.body);
    if (doc == NULL) {
        snprintf(c->error, sizeof c->error, "%s: answer is not JSON", url);
        c->errors++;
    }
    return doc;
}

/* One Backbone pair; false when the key was busy or something failed. */
static bool
pair_backbone(struct client *c, struct http_client *h, const char *key)
{
    char url[512], body[128];
    long status = 0;
    snprintf(url, sizeof url, "%s/locks/%s/acquire", c->cfg->url, key);
    snprintf(body, sizeof body, "{\"owner\":\"c%d\",\"ttl_ms\":30000,\"wait_ms\":%" PRId64 "}",
             c->id, c->cfg->wait_ms);
    json_t *g = post(c, h, url, body, &status);
    if (g == NULL)
        return false;
    if (status == 409) {
        c->busy++;
        json_decref(g);
        return false;
    }
    json_int_t token = json_integer_value(json_object_get(g, "token"));
    json_decref(g);
    if (status != 200 || token <= 0) {
        snprintf(c->error, sizeof c->error, "acquire answered %ld", status);
        c->errors++;
        return false;
    }
    snprintf(url, sizeof url, "%s/locks/%s/release", c->cfg->url, key);
    snprintf(body, sizeof body, "{\"token\":%" JSON_INTEGER_FORMAT "}", token);
    json_t *r = post(c, h, url, body, &status);
    json_decref(r);
    if (r == NULL || status != 200) {
        snprintf(c->error, sizeof c->error, "release answered %ld", status);
        c->errors++;
        return false;
    }
    return true;
}

static void
base64(const char *in, char *out, size_t out_len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(in), o = 0;
    for (size_t i = 0; i < n && o + 5 < out_len; i += 3) {
        unsigned v = (unsigned char)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned char)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
}

/* One etcd pair: lease grant, put-if-absent with the lease, delete-if-ours. */
static bool
pair_etcd(struct client *c, struct http_client *h, const char *key, int64_t seq)
{
    char url[512], body[1024], k64[128], v64[128], tok[64];
    long status = 0;
    base64(key, k64, sizeof k64);
    snprintf(tok, sizeof tok, "%d:%" PRId64, c->id, seq);
    base64(tok, v64, sizeof v64);
    snprintf(url, sizeof url, "%s/v3/lease/grant", c->cfg->url);
    json_t *lease = post(c, h, url, "{\"TTL\":30}", &status);
    if (lease == NULL)
        return false;
    const char *id = json_string_value(json_object_get(lease, "ID"));
    snprintf(url, sizeof url, "%s/v3/kv/txn", c->cfg->url);
    snprintf(body, sizeof body,
             "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
             "\"create_revision\":\"0\"}],\"success\":[{\"request_put\":{\"key\":\"%s\","
             "\"value\":\"%s\",\"lease\":\"%s\"}}]}",
             k64, k64, v64, id ? id : "0");
    json_decref(lease);
    json_t *acq = post(c, h, url, body, &status);
    if (acq == NULL)
        return false;
    bool got = json_is_true(json_object_get(acq, "succeeded"));
    json_decref(acq);
    if (!got) {
        c->busy++;
        return false;
    }
    snprintf(body, sizeof body,
             "{\"compare\":[{\"key\":\"%s\",\"target\":\"VALUE\",\"result\":\"EQUAL\","
             "\"value\":\"%s\"}],\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}",
             k64, v64, k64);
    json_t *rel = post(c, h, url, body, &status);
    bool ok = rel && json_is_true(json_object_get(rel, "succeeded"));
    json_decref(rel);
    if (!ok) {
        snprintf(c->error, sizeof c->error, "etcd release failed");
        c->errors++;
    }
    return ok;
}

static void *
client_main(void *arg)
{
    struct client *c = arg;
    struct http_client *h = http_client_create(NULL, 30000);
    bool etcd = strcmp(c->cfg->target, "etcd") == 0;
    for (int64_t i = 0; bb_mono_ns() < c->end_ns && c->errors < 100; i++) {
        char key[64];
        snprintf(key, sizeof key, "bench-%" PRId64, (c->id * 7919 + i) % c->cfg->keys);
        int64_t t0 = bb_mono_ns();
        bool ok = etcd ? pair_etcd(c, h, key, i) : pair_backbone(c, h, key);
        if (ok)
            record(c, bb_mono_ns() - t0);
    }
    http_client_destroy(h);
    return NULL;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
    struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct bb_error e;
    if (bb_opts_parse(OPTS, BB_ARRAY_LEN(OPTS), &cfg, argc - 1, argv + 1, false, NULL, 0, NULL,
                      &e) != ERR_OK) {
        fprintf(stderr, "lockbench: %s\n", e.detail);
        bb_opts_help(stderr, OPTS, BB_ARRAY_LEN(OPTS), false);
        return 2;
    }
    http_client_global_init();
    size_t n = (size_t)cfg.clients;
    struct client *clients = xcalloc(n, sizeof *clients);
    pthread_t *threads = xcalloc(n, sizeof *threads);
    int64_t start = bb_mono_ns();
    for (size_t i = 0; i < n; i++) {
        clients[i] =
            (struct client){.cfg = &cfg, .id = (int)i, .end_ns = start + cfg.duration_ms * 1000000};
        pthread_create(&threads[i], NULL, client_main, &clients[i]);
    }
    size_t total = 0;
    int64_t busy = 0, errors = 0;
    const char *last_error = "";
    for (size_t i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
        total += clients[i].n_lat;
        busy += clients[i].busy;
        errors += clients[i].errors;
        if (clients[i].error[0])
            last_error = clients[i].error;
    }
    double secs = (double)(bb_mono_ns() - start) / 1e9;
    int64_t *all = xcalloc(total ? total : 1, sizeof *all);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(all + k, clients[i].lat_ns, clients[i].n_lat * sizeof *all);
        k += clients[i].n_lat;
    }
    qsort(all, total, sizeof *all, cmp_i64);
    double p50 = total ? (double)all[total / 2] / 1e6 : 0;
    double p99 = total ? (double)all[(size_t)((double)total * 0.99)] / 1e6 : 0;
    printf("{\"target\":\"%s\",\"label\":\"%s\",\"clients\":%zu,\"keys\":%" PRId64
           ",\"wait_ms\":%" PRId64 ",\"seconds\":%.1f,\"pairs\":%zu,"
           "\"pairs_per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"busy\":%" PRId64
           ",\"errors\":%" PRId64 "}\n",
           cfg.target, cfg.label, n, cfg.keys, cfg.wait_ms, secs, total, (double)total / secs, p50,
           p99, busy, errors);
    if (errors)
        fprintf(stderr, "lockbench: %" PRId64 " errors, last: %s\n", errors, last_error);
    for (size_t i = 0; i < n; i++)
        free(clients[i].lat_ns);
    free(all);
    free(clients);
    free(threads);
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &cfg);
    http_client_global_cleanup();
    return errors ? 1 : 0;
}
