/*
 * checkoutbench: load for the checkout edge and the inventory, one
 * measurement per run, printed as one JSON line.
 *
 *   checkoutbench checkout --url U --clients 64 --duration 10s
 *       POST /checkout, each with its own Idempotency-Key: accepted/s, p50/p99
 *   checkoutbench reserve --url U --skus 1 --clients 64 --duration 10s
 *       POST /inventory/reservations of 1 unit of a random one of `skus`
 *       products (created first, with ample stock): reservations/s, p50/p99
 *
 * Every 202 and 201 is durable (the server commits before answering).
 */
#include "benchlib.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct config {
    char *url;
    char *label;
    int64_t duration_ms;
    int64_t clients;
    int64_t skus;
};

#define OFF(f) offsetof(struct config, f)
static const struct bb_opt OPTS[] = {
    {"url", BB_OPT_STRING, OFF(url), 0, 0, "http://127.0.0.1:8080", "server URL", 0},
    {"label", BB_OPT_STRING, OFF(label), 0, 0, "", "name printed with the result", 0},
    {"duration", BB_OPT_DURATION, OFF(duration_ms), 100, 3600000, "10s", "how long", 0},
    {"clients", BB_OPT_INT, OFF(clients), 1, 1024, "64", "concurrent clients", 0},
    {"skus", BB_OPT_INT, OFF(skus), 1, 1000000, "1", "reserve: products to spread over", 0},
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

static void
run_checkout(void)
{
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

static void
run_reserve(void)
{
    struct http_client *h = http_client_create(NULL, 60000);
    for (int64_t i = 0; i < cfg.skus; i++) {
        char body[128];
        snprintf(body, sizeof body,
                 "{\"sku\":\"S%" PRId64 "\",\"name\":\"S%" PRId64 "\",\"stock\":1000000000}", i, i);
        json_decref(bench_call(h, cfg.url, "POST", "/inventory/products", body, 0));
    }
    http_client_destroy(h);
    struct bench_result res;
    bench_run((size_t)cfg.clients, cfg.duration_ms, reserve_one, NULL, &res);
    printf("{\"bench\":\"reserve\",\"label\":\"%s\",\"skus\":%" PRId64 ",\"clients\":%" PRId64
           ",\"reserved\":%zu,\"per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
           cfg.label, cfg.skus, cfg.clients, res.ok, res.ok_per_s, res.p50_ms, res.p99_ms);
}

int
main(int argc, char **argv)
{
    const char *pos[1];
    size_t npos = 0;
    struct bb_error e;
    if (bb_opts_parse(OPTS, BB_ARRAY_LEN(OPTS), &cfg, argc - 1, argv + 1, false, pos, 1, &npos,
                      &e) != ERR_OK ||
        npos != 1) {
        fprintf(stderr, "usage: checkoutbench checkout|reserve [options]\n%s\n",
                npos == 1 ? e.detail : "");
        bb_opts_help(stderr, OPTS, BB_ARRAY_LEN(OPTS), false);
        return 2;
    }
    bench_name = "checkoutbench";
    snprintf(run_id, sizeof run_id, "r%" PRIx64, bb_rand_u64() & 0xffffffff);
    http_client_global_init();
    int code = 0;
    if (strcmp(pos[0], "checkout") == 0)
        run_checkout();
    else if (strcmp(pos[0], "reserve") == 0)
        run_reserve();
    else {
        fprintf(stderr, "checkoutbench: unknown benchmark %s\n", pos[0]);
        code = 2;
    }
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &cfg);
    http_client_global_cleanup();
    return code;
}
