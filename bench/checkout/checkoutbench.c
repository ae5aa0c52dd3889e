/*
 * checkoutbench: load for the checkout edge and the inventory, one
 * measurement per run, printed as one JSON line.
 *
 *   checkoutbench checkout --url U --clients 64 --duration 10s
 *       POST /checkout, each with its own Idempotency-Key: accepted/s, p50/p99
 *   checkoutbench reserve --url U --skus 1 --clients 64 --duration 10s
 *       POST /inventory/reservations of 1 unit of a random one of `skus`
 *       products (created first, with ample stock): reservations/s, p50/p99
 *   checkoutbench saga --url U --skus 100 --clients 64 --duration 10s [--rate R]
 *       POST /checkout (closed loop, or R per second in all), then wait for
 *       every saga to end: completed checkouts/s end to end and p50/p99 of
 *       202 -> COMPLETED, from the checkouts' own created_at/updated_at.
 *       The wait watches the server's count of ended checkout sagas
 *       (/metrics, twice a second) and reads the checkouts once all have
 *       ended, so that the load generator does not poll the server it
 *       measures.
 *
 * Every 202 and 201 is durable (the server commits before answering).
 */
#include "benchlib.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct config {
    char *url;
    char *label;
    int64_t duration_ms;
    int64_t clients;
    int64_t skus;
    int64_t rate;
    char *psp_label;
};

#define OFF(f) offsetof(struct config, f)
static const struct bb_opt OPTS[] = {
    {"url", BB_OPT_STRING, OFF(url), 0, 0, "http://127.0.0.1:8080", "server URL", 0},
    {"label", BB_OPT_STRING, OFF(label), 0, 0, "", "name printed with the result", 0},
    {"duration", BB_OPT_DURATION, OFF(duration_ms), 100, 3600000, "10s", "how long", 0},
    {"clients", BB_OPT_INT, OFF(clients), 1, 1024, "64", "concurrent clients", 0},
    {"skus", BB_OPT_INT, OFF(skus), 1, 1000000, "1", "reserve, saga: products to spread over", 0},
    {"rate", BB_OPT_INT, OFF(rate), 0, 1000000, "0", "saga: checkouts per second (0: closed loop)",
     0},
    {"psp-label", BB_OPT_STRING, OFF(psp_label), 0, 0, "", "saga: the PSP latency, printed", 0},
};

static struct config cfg;
static char run_id[16]; /* keys and order ids stay unique across runs */

static bool
checkout_one(struct http_client *h, void *ctx, size_t client, uint64_t i)
{
    (void)ctx;
    char key[64];
    snprintf(key, sizeof key, "%s-%zu-%" PRIu64, run_id, client, i);
    http_client_set_header(h, "Idempotency-Key", key);
    json_decref(bench_call(h, cfg.url, "POST", "/checkout",
                           "{\"customer_id\":\"bench\",\"currency\":\"EUR\","
                           "\"payment\":{\"card\":\"tok_visa\"},\"items\":["
                           "{\"sku\":\"SKU-1\",\"qty\":2,\"unit_price\":1250},"
                           "{\"sku\":\"SKU-2\",\"qty\":1,\"unit_price\":500}]}",
                           202));
    return true;
}

static void make_product(struct http_client *h, const char *sku);

static void
run_checkout(void)
{
    struct http_client *h = http_client_create(NULL, 60000);
    make_product(h, "SKU-1"); /* the edge accepts baskets of products it sells */
    make_product(h, "SKU-2");
    http_client_destroy(h);
    struct bench_result res;
    bench_run((size_t)cfg.clients, cfg.duration_ms, checkout_one, NULL, &res);
    printf("{\"bench\":\"checkout\",\"label\":\"%s\",\"clients\":%" PRId64 ",\"accepted\":%zu,"
           "\"per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
           cfg.label, cfg.clients, res.ok, res.ok_per_s, res.p50_ms, res.p99_ms);
}

static bool
reserve_one(struct http_client *h, void *ctx, size_t client, uint64_t i)
{
    (void)ctx;
    char body[256];
    uint64_t sku = bb_rand_below((uint64_t)cfg.skus);
    snprintf(body, sizeof body,
             "{\"order_id\":\"%s-%zu-%" PRIu64 "\",\"items\":[{\"sku\":\"S%" PRIu64
             "\",\"qty\":1}],\"ttl_ms\":600000}",
             run_id, client, i, sku);
    json_decref(bench_call(h, cfg.url, "POST", "/inventory/reservations", body, 201));
    return true;
}

/* A product with ample stock. */
static void
make_product(struct http_client *h, const char *sku)
{
    char body[128];
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"name\":\"%s\",\"stock\":1000000000}", sku, sku);
    json_decref(bench_call(h, cfg.url, "POST", "/inventory/products", body, 0));
}

/* Products S0..S(skus-1). */
static void
make_products(void)
{
    struct http_client *h = http_client_create(NULL, 60000);
    for (int64_t i = 0; i < cfg.skus; i++) {
        char sku[32];
        snprintf(sku, sizeof sku, "S%" PRId64, i);
        make_product(h, sku);
    }
    http_client_destroy(h);
}

static void
run_reserve(void)
{
    make_products();
    struct bench_result res;
    bench_run((size_t)cfg.clients, cfg.duration_ms, reserve_one, NULL, &res);
    printf("{\"bench\":\"reserve\",\"label\":\"%s\",\"skus\":%" PRId64 ",\"clients\":%" PRId64
           ",\"reserved\":%zu,\"per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
           cfg.label, cfg.skus, cfg.clients, res.ok, res.ok_per_s, res.p50_ms, res.p99_ms);
}

/* ---- saga: 202 -> COMPLETED ------------------------------------------------------------- */

enum { SAGA_IDS_MAX = 1 << 21 };

struct saga_run {
    pthread_mutex_t mu;
    char (*ids)[40];
    size_t n;
    int64_t start_ns;
};

static bool
saga_one(struct http_client *h, void *ctx, size_t client, uint64_t i)
{
    struct saga_run *sr = ctx;
    if (cfg.rate > 0) { /* open loop: client k sends at k/rate + i*clients/rate */
        int64_t due = sr->start_ns + (int64_t)((double)(client + i * (uint64_t)cfg.clients) /
                                               (double)cfg.rate * 1e9);
        int64_t wait = due - bb_mono_ns();
        if (wait > 0)
            bb_sleep_ms(wait / 1000000);
    }
    char key[64], body[256];
    snprintf(key, sizeof key, "%s-%zu-%" PRIu64, run_id, client, i);
    http_client_set_header(h, "Idempotency-Key", key);
    snprintf(body, sizeof body,
             "{\"customer_id\":\"bench\",\"currency\":\"EUR\",\"payment\":{\"card\":\"tok\"},"
             "\"items\":[{\"sku\":\"S%" PRIu64 "\",\"qty\":1,\"unit_price\":1250}]}",
             bb_rand_below((uint64_t)cfg.skus));
    json_t *out = bench_call(h, cfg.url, "POST", "/checkout", body, 202);
    const char *id = json_string_value(json_object_get(out, "checkout_id"));
    pthread_mutex_lock(&sr->mu);
    if (id && sr->n < SAGA_IDS_MAX)
        bb_strlcpy(sr->ids[sr->n++], id, sizeof sr->ids[0]);
    pthread_mutex_unlock(&sr->mu);
    json_decref(out);
    return true;
}

/* "2026-11-23T17:30:34.048Z" in ms since the epoch. */
static int64_t
iso_ms(const char *s)
{
    struct tm tm = {0};
    int ms = 0;
    if (s == NULL || sscanf(s, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                            &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* The server's count of checkout sagas that ended, whatever the outcome. */
static uint64_t
sagas_ended(struct http_client *h)
{
    char url[1024];
    snprintf(url, sizeof url, "%s/metrics", cfg.url);
    struct http_client_response resp;
    struct bb_error e;
    if (http_client_do(h, "GET", url, NULL, &resp, &e) != ERR_OK || resp.status != 200) {
        fprintf(stderr, "checkoutbench: GET /metrics failed\n");
        exit(1);
    }
    static const char name[] = "backbone_sagas_ended_total{";
    uint64_t n = 0;
    for (const char *l = resp.body.data; l && *l;) {
        const char *eol = strchr(l, '\n');
        size_t len = eol ? (size_t)(eol - l) : strlen(l);
        const char *sp = memchr(l, ' ', len);
        if (len > sizeof name && strncmp(l, name, sizeof name - 1) == 0 && sp &&
            memmem(l, (size_t)(sp - l), "type=\"checkout\"", 15))
            n += strtoull(sp + 1, NULL, 10);
        l = eol ? eol + 1 : l + len;
    }
    bb_buf_deinit(&resp.body);
    return n;
}

static void
run_saga(void)
{
    make_products();
    struct saga_run sr = {.ids = xcalloc(SAGA_IDS_MAX, 40)};
    pthread_mutex_init(&sr.mu, NULL);
    struct http_client *h = http_client_create(NULL, 60000);
    uint64_t ended0 = sagas_ended(h);
    sr.start_ns = bb_mono_ns();
    struct bench_result res;
    bench_run((size_t)cfg.clients, cfg.duration_ms, saga_one, &sr, &res);
    /* Wait for every saga to end, then read the checkouts; the times are
     * the server's own. */
    int64_t deadline = bb_mono_ms() + 600000;
    while (sagas_ended(h) - ended0 < sr.n && bb_mono_ms() < deadline)
        bb_sleep_ms(500); /* a scrape counts the job backlog: not too often */
    int64_t *lat_ns = xcalloc(sr.n ? sr.n : 1, sizeof *lat_ns);
    size_t completed = 0, failed = 0;
    int64_t first = INT64_MAX, last = 0;
    for (size_t i = 0; i < sr.n; i++) {
        char path[80];
        snprintf(path, sizeof path, "/checkout/%s", sr.ids[i]);
        for (;;) {
            json_t *c = bench_call(h, cfg.url, "GET", path, NULL, 200);
            const char *status = json_string_value(json_object_get(c, "status"));
            if (status && strcmp(status, "PENDING") != 0) {
                int64_t created = iso_ms(json_string_value(json_object_get(c, "created_at")));
                int64_t updated = iso_ms(json_string_value(json_object_get(c, "updated_at")));
                if (strcmp(status, "COMPLETED") == 0) {
                    lat_ns[completed++] = (updated - created) * 1000000;
                    first = created < first ? created : first;
                    last = updated > last ? updated : last;
                } else {
                    failed++;
                }
                json_decref(c);
                break;
            }
            json_decref(c);
            if (bb_mono_ms() > deadline) {
                fprintf(stderr, "checkoutbench: checkout %s still PENDING after 10 minutes\n",
                        sr.ids[i]);
                exit(1);
            }
            bb_sleep_ms(5);
        }
    }
    http_client_destroy(h);
    double p50 = 0, p99 = 0;
    bench_percentiles(lat_ns, completed, &p50, &p99);
    double span_s = last > first ? (double)(last - first) / 1e3 : 1;
    printf("{\"bench\":\"saga\",\"label\":\"%s\",\"psp\":\"%s\",\"clients\":%" PRId64
           ",\"rate\":%" PRId64 ",\"accepted\":%zu,\"completed\":%zu,\"failed\":%zu,"
           "\"per_s\":%.0f,\"accepted_per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
           cfg.label, cfg.psp_label, cfg.clients, cfg.rate, sr.n, completed, failed,
           (double)completed / span_s, res.ok_per_s, p50, p99);
    free(lat_ns);
    free(sr.ids);
    pthread_mutex_destroy(&sr.mu);
}

int
main(int argc, char **argv)
{
    static const struct bench_mode modes[] = {
        {"checkout", run_checkout}, {"reserve", run_reserve}, {"saga", run_saga}};
    snprintf(run_id, sizeof run_id, "r%" PRIx64, bb_rand_u64() & 0xffffffff);
    return bench_main("checkoutbench", OPTS, BB_ARRAY_LEN(OPTS), &cfg, modes, BB_ARRAY_LEN(modes),
                      argc, argv);
}
