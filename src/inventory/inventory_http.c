/*
 * inventory_http.c: the inventory's HTTP routes, its metrics and the
 * sweeper thread ("bb-inv-sweep") that expires reservations past their TTL.
 *
 * Handlers validate on the HTTP thread, then run one unit of work on the
 * store executor and answer once it has committed. A `struct inv_op`
 * carries a request's inputs; it lives in the request's arena.
 */
#include "inventory/inventory.h"

#include "metrics/metrics.h"

#include <stdlib.h>
#include <string.h>

enum { SWEEP_BATCH = 500, PRUNE_EVERY_MS = 60000 };

struct inventory_service {
    struct store *store;
    struct inventory_options opt;
    int64_t pruned_at_ms; /* monotonic; the sweeper's own */
    struct bb_ticker *sweeper;
};

struct inv_op {
    struct inventory_service *svc;
    const char *sku;
    const char *name;
    const char *order_id;
    const char *key;
    const char *reason;
    int64_t qty; /* stock, qty, delta */
    int64_t ttl_ms;
    struct inventory_item items[INVENTORY_ITEMS_MAX];
    size_t n_items;
};

/* ---- metrics ------------------------------------------------------------------------------ */

static struct metrics_def M_RESERVATIONS = {
    .name = "backbone_inventory_reservations_total",
    .help = "Reservation requests, by outcome (reserved, replayed, short).",
    .type = METRICS_COUNTER,
    .labels = {"outcome"},
};
static struct metrics_def M_RELEASES = {
    .name = "backbone_inventory_releases_total",
    .help = "Reservations whose stock went back, by reason (released, expired).",
    .type = METRICS_COUNTER,
    .labels = {"reason"},
};
static struct metrics_def M_COMMITS = {
    .name = "backbone_inventory_commits_total",
    .help = "Commit requests, by outcome (committed, expired, refused).",
    .type = METRICS_COUNTER,
    .labels = {"outcome"},
};
static struct metrics_def M_ADJUSTMENTS = {
    .name = "backbone_inventory_adjustments_total",
    .help = "Stock changes applied (restocks, returns, corrections).",
    .type = METRICS_COUNTER,
};

static void
metrics_init(void)
{
    struct metrics_def *all[] = {&M_RESERVATIONS, &M_RELEASES, &M_COMMITS, &M_ADJUSTMENTS};
    for (size_t i = 0; i < BB_ARRAY_LEN(all); i++)
        metrics_register(all[i]);
}

/* ---- validation ------------------------------------------------------------------------ */

static struct inv_op *
op_new(struct http_req *r, struct inventory_service *svc)
{
    struct inv_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->svc = svc;
    return op;
}

static enum err
path_sku(struct http_req *r, struct inv_op *op, struct bb_error *e)
{
    return http_req_param_ident(r, "sku", INVENTORY_SKU_MAX, &op->sku, e);
}

static enum err
path_order(struct http_req *r, struct inv_op *op, struct bb_error *e)
{
    return http_req_param_ident(r, "order_id", INVENTORY_ORDER_ID_MAX, &op->order_id, e);
}

/* items: [{"sku","qty"}], 1..INVENTORY_ITEMS_MAX, distinct SKUs. */
static enum err
items_member(struct http_req *r, const json_t *body, struct inv_op *op, struct bb_error *e)
{
    static const char *const allowed[] = {"sku", "qty", NULL};
    const json_t *items = json_object_get(body, "items");
    if (!json_is_array(items) || json_array_size(items) == 0 ||
        json_array_size(items) > INVENTORY_ITEMS_MAX)
        return bb_fail(e, ERR_INVALID, "items", "items must be an array of 1 to %d items",
                       INVENTORY_ITEMS_MAX);
    struct bb_arena *a = http_req_arena(r);
    size_t i;
    const json_t *item;
    json_array_foreach(items, i, item)
    {
        struct inventory_item *it = &op->items[i];
        enum err rc = json_is_object(item) ? bb_json_only(item, allowed, e)
                                           : bb_fail(e, ERR_INVALID, "", "must be an object");
        if (rc == ERR_OK)
            rc = bb_json_ident(item, "sku", true, INVENTORY_SKU_MAX, &it->sku, e);
        if (rc == ERR_OK)
            rc = bb_json_int(item, "qty", true, 1, INVENTORY_QTY_MAX, &it->qty, e);
        for (size_t k = 0; k < i && rc == ERR_OK; k++) {
            if (strcmp(op->items[k].sku, it->sku) == 0)
                rc = bb_fail(e, ERR_INVALID, "sku", "sku %s is listed twice", it->sku);
        }
        if (rc != ERR_OK) {
            bb_error_prefix_field(e, bb_arena_printf(a, "items[%zu].", i));
            return rc;
        }
    }
    op->n_items = json_array_size(items);
    return ERR_OK;
}

/* ---- products --------------------------------------------------------------------------- */

static enum err
create_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    bool created;
    enum err rc = inventory_product_create(c, op->sku, op->name, op->qty, bb_wall_ms(), &a->body,
                                           &created, e);
    a->status = created ? 201 : 200;
    return rc;
}

static void
handle_create(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"sku", "name", "stock", NULL};
    struct bb_error *e = http_req_error(r);
    struct inv_op *op = op_new(r, ctx);
    json_t *body;
    if (http_req_json_only(r, allowed, &body, e) != ERR_OK ||
        bb_json_ident(body, "sku", true, INVENTORY_SKU_MAX, &op->sku, e) != ERR_OK ||
        bb_json_text(body, "name", true, INVENTORY_NAME_MAX, &op->name, e) != ERR_OK ||
        bb_json_int(body, "stock", false, 0, INVENTORY_STOCK_MAX, &op->qty, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_WRITE, create_work, NULL, op);
}

static enum err
product_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    return inventory_product_get_json(c, op->sku, &a->body, e);
}

static void
handle_product(struct http_req *r, void *ctx)
{
    struct inv_op *op = op_new(r, ctx);
    if (path_sku(r, op, http_req_error(r)) != ERR_OK) {
        http_reply_problem(r, http_req_error(r), NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_READ, product_work, NULL, op);
}

static enum err
availability_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    json_t *product;
    enum err rc = product_work(c, arg, a, e);
    if (rc != ERR_OK)
        return rc;
    product = a->body;
    a->body = json_pack("{s:O, s:O, s:O, s:O}", "sku", json_object_get(product, "sku"), "on_hand",
                        json_object_get(product, "on_hand"), "reserved",
                        json_object_get(product, "reserved"), "available",
                        json_object_get(product, "available"));
    json_decref(product);
    return ERR_OK;
}

static void
handle_availability(struct http_req *r, void *ctx)
{
    struct inv_op *op = op_new(r, ctx);
    if (path_sku(r, op, http_req_error(r)) != ERR_OK) {
        http_reply_problem(r, http_req_error(r), NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_READ, availability_work, NULL, op);
}

static void
adjusted(void *arg, enum err rc, const struct http_answer *a)
{
    (void)arg, (void)a;
    if (rc == ERR_OK)
        metrics_add(&M_ADJUSTMENTS, 1);
}

static enum err
stock_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    return inventory_stock_add(c, op->sku, op->qty, op->key, bb_wall_ms(), &a->body, e);
}

static void
handle_stock(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"qty", NULL};
    struct bb_error *e = http_req_error(r);
    struct inv_op *op = op_new(r, ctx);
    json_t *body;
    if (path_sku(r, op, e) != ERR_OK || http_req_idempotency_key(r, &op->key, e) != ERR_OK ||
        http_req_json_only(r, allowed, &body, e) != ERR_OK ||
        bb_json_int(body, "qty", true, 1, INVENTORY_QTY_MAX, &op->qty, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_WRITE, stock_work, adjusted, op);
}

static enum err
adjust_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    return inventory_adjust(c, op->key, op->sku, op->qty, op->reason, bb_wall_ms(), &a->body, e);
}

static void
handle_adjust(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"key", "sku", "delta", "reason", NULL};
    struct bb_error *e = http_req_error(r);
    struct inv_op *op = op_new(r, ctx);
    json_t *body;
    if (http_req_json_only(r, allowed, &body, e) != ERR_OK ||
        bb_json_string(body, "key", true, STORE_IDEM_KEY_MAX, &op->key, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    if (!store_idem_key_is_valid(op->key))
        bb_fail(e, ERR_INVALID, "key", "key must be 1 to %d visible ASCII characters",
                STORE_IDEM_KEY_MAX);
    else if (bb_json_ident(body, "sku", true, INVENTORY_SKU_MAX, &op->sku, e) == ERR_OK &&
             bb_json_int(body, "delta", true, -INVENTORY_STOCK_MAX, INVENTORY_STOCK_MAX, &op->qty,
                         e) == ERR_OK &&
             bb_json_text(body, "reason", true, INVENTORY_REASON_MAX, &op->reason, e) == ERR_OK) {
        if (op->qty != 0) {
            http_req_run_json(r, op->svc->store, STORE_WRITE, adjust_work, adjusted, op);
            return;
        }
        bb_fail(e, ERR_INVALID, "delta", "delta must not be zero");
    }
    http_reply_problem(r, e, NULL);
}

/* ---- reservations ------------------------------------------------------------------------ */

static enum err
reserve_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    bool created;
    json_t *short_items;
    enum err rc = inventory_reserve(c, op->order_id, op->items, op->n_items, op->ttl_ms,
                                    bb_wall_ms(), &a->body, &created, &short_items, e);
    if (short_items)
        a->extra = json_pack("{s:o}", "short", short_items);
    a->status = created ? 201 : 200;
    return rc;
}

static void
reserved(void *arg, enum err rc, const struct http_answer *a)
{
    (void)arg;
    if (rc == ERR_OK)
        metrics_add(&M_RESERVATIONS, 1, a->status == 201 ? "reserved" : "replayed");
    else if (rc == ERR_INSUFFICIENT_STOCK)
        metrics_add(&M_RESERVATIONS, 1, "short");
}

static void
handle_reserve(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"order_id", "items", "ttl_ms", NULL};
    struct bb_error *e = http_req_error(r);
    struct inv_op *op = op_new(r, ctx);
    json_t *body;
    op->ttl_ms = INVENTORY_TTL_DEFAULT_MS;
    if (http_req_json_only(r, allowed, &body, e) != ERR_OK ||
        bb_json_ident(body, "order_id", true, INVENTORY_ORDER_ID_MAX, &op->order_id, e) != ERR_OK ||
        items_member(r, body, op, e) != ERR_OK ||
        bb_json_int(body, "ttl_ms", false, INVENTORY_TTL_MIN_MS, INVENTORY_TTL_MAX_MS, &op->ttl_ms,
                    e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_WRITE, reserve_work, reserved, op);
}

static enum err
reservation_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    return inventory_reservation_get_json(c, op->order_id, &a->body, e);
}

static enum err
release_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    return inventory_release(c, op->order_id, bb_wall_ms(), &a->body, e);
}

static enum err
commit_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct inv_op *op = arg;
    return inventory_commit(c, op->order_id, bb_wall_ms(), &a->body, e);
}

static void
released(void *arg, enum err rc, const struct http_answer *a)
{
    (void)arg;
    const char *state = json_string_value(json_object_get(a->body, "state"));
    if (rc == ERR_OK && state && strcmp(state, "released") == 0)
        metrics_add(&M_RELEASES, 1, "released");
}

static void
committed(void *arg, enum err rc, const struct http_answer *a)
{
    (void)arg, (void)a;
    metrics_add(&M_COMMITS, 1,
                rc == ERR_OK                    ? "committed"
                : rc == ERR_RESERVATION_EXPIRED ? "expired"
                                                : "refused");
}

/* The routes on one reservation: GET, DELETE (release), POST .../commit. */
static void
on_reservation(struct http_req *r, void *ctx, enum store_txn mode, http_json_work_fn *work,
               http_json_after_fn *after)
{
    struct inv_op *op = op_new(r, ctx);
    if (path_order(r, op, http_req_error(r)) != ERR_OK) {
        http_reply_problem(r, http_req_error(r), NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, mode, work, after, op);
}

static void
handle_reservation(struct http_req *r, void *ctx)
{
    on_reservation(r, ctx, STORE_READ, reservation_work, NULL);
}

static void
handle_release(struct http_req *r, void *ctx)
{
    on_reservation(r, ctx, STORE_WRITE, release_work, released);
}

static void
handle_commit(struct http_req *r, void *ctx)
{
    on_reservation(r, ctx, STORE_WRITE, commit_work, committed);
}

/* ---- the sweeper ------------------------------------------------------------------------- */

static enum err
sweep_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    char trace[BB_TRACEPARENT_LEN + 1];
    bb_traceparent_new(trace); /* a sweep starts a trace: its events carry it */
    bb_log_context_set(NULL, trace);
    enum err rc = inventory_expire_due(c, bb_wall_ms(), SWEEP_BATCH, arg, e);
    bb_log_context_clear();
    return rc;
}

struct prune_op {
    int64_t before_ms;
    int64_t n;
};

static enum err
prune_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct prune_op *op = arg;
    return store_idem_prune(c, op->before_ms, SWEEP_BATCH, &op->n, e);
}

/* Forget idempotency keys past their retention, a batch at a time. */
static void
prune_keys(struct inventory_service *svc)
{
    int64_t now = bb_mono_ms();
    int64_t every =
        svc->opt.key_retention_ms < PRUNE_EVERY_MS ? svc->opt.key_retention_ms : PRUNE_EVERY_MS;
    if (svc->opt.key_retention_ms <= 0 || now - svc->pruned_at_ms < every)
        return;
    svc->pruned_at_ms = now;
    struct prune_op op = {.before_ms = bb_wall_ms() - svc->opt.key_retention_ms};
    struct bb_error e;
    do {
        if (store_run(svc->store, STORE_WRITE, prune_work, &op, &e) != ERR_OK) {
            log_error_limited(1, "inventory.key_prune_failed", "detail=%s", e.detail);
            return;
        }
    } while (op.n == SWEEP_BATCH);
}

static void
sweep(void *arg)
{
    struct inventory_service *svc = arg;
    int64_t n = 0;
    struct bb_error e;
    do { /* a full batch: more may be due */
        if (store_run(svc->store, STORE_WRITE, sweep_work, &n, &e) != ERR_OK) {
            log_error_limited(1, "inventory.sweep_failed", "detail=%s", e.detail);
            break;
        }
        if (n > 0) {
            metrics_add(&M_RELEASES, (double)n, "expired");
            log_info("inventory.expired", "reservations=%lld", (long long)n);
        }
    } while (n == SWEEP_BATCH);
    prune_keys(svc);
}

enum err
inventory_service_create(struct store *s, const struct inventory_options *o,
                         struct inventory_service **out, struct bb_error *e)
{
    metrics_init();
    struct inventory_service *svc = xcalloc(1, sizeof *svc);
    svc->store = s;
    svc->opt = *o;
    if (svc->opt.sweep_ms <= 0)
        svc->opt.sweep_ms = 1000;
    svc->pruned_at_ms = bb_mono_ms() - PRUNE_EVERY_MS; /* a first pass at start */
    if (bb_ticker_start("bb-inv-sweep", svc->opt.sweep_ms, sweep, svc, &svc->sweeper, e) !=
        ERR_OK) {
        free(svc);
        return e->code;
    }
    *out = svc;
    return ERR_OK;
}

size_t
inventory_service_routes(struct inventory_service *svc, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"POST", "/inventory/products", handle_create, svc, false, NULL},
        {"GET", "/inventory/products/{sku}", handle_product, svc, false, NULL},
        {"POST", "/inventory/products/{sku}/stock", handle_stock, svc, false, NULL},
        {"GET", "/inventory/products/{sku}/availability", handle_availability, svc, false, NULL},
        {"POST", "/inventory/reservations", handle_reserve, svc, false, NULL},
        {"GET", "/inventory/reservations/{order_id}", handle_reservation, svc, false, NULL},
        {"DELETE", "/inventory/reservations/{order_id}", handle_release, svc, false, NULL},
        {"POST", "/inventory/reservations/{order_id}/commit", handle_commit, svc, false, NULL},
        {"POST", "/inventory/adjust", handle_adjust, svc, false, NULL},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}

void
inventory_service_destroy(struct inventory_service *svc)
{
    if (svc == NULL)
        return;
    bb_ticker_stop(svc->sweeper);
    free(svc);
}
