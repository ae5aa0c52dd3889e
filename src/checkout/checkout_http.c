/*
 * checkout_http.c: POST /checkout and GET /checkout/{id}, and their metric.
 */
#include "checkout/checkout.h"

#include "metrics/metrics.h"

#include <stdlib.h>
#include <string.h>

enum { ACCEPT_GROUP_MAX = 32 };

struct checkout_service {
    struct store *store;
    struct saga_announcer *announcer;
    struct checkout_skus *known;    /* SKUs found to name a product */
    struct http_json_group accepts; /* POST /checkout: many per transaction */
};

struct checkout_op {
    struct checkout_service *svc;
    struct checkout_request req;
    char fingerprint[65];
    const char *checkout_id;
    const char *traceparent;
    bool created;
};

static struct metrics_def M_CHECKOUTS = {
    .name = "backbone_checkouts_total",
    .help = "Checkout requests, by outcome (accepted, replayed, refused).",
    .type = METRICS_COUNTER,
    .labels = {"outcome"},
};

static enum err
payment_member(const json_t *body, struct checkout_request *req, struct bb_error *e)
{
    static const char *const allowed[] = {"method", "card", NULL};
    const json_t *payment = json_object_get(body, "payment");
    if (!json_is_object(payment))
        return bb_fail(e, ERR_INVALID, "payment", "payment must be an object ({\"card\": ...})");
    const char *method = NULL;
    enum err rc = bb_json_only(payment, allowed, e);
    if (rc == ERR_OK)
        rc = bb_json_string(payment, "method", false, 16, &method, e);
    if (rc == ERR_OK && method && strcmp(method, "card") != 0)
        rc = bb_fail(e, ERR_INVALID, "method", "method must be \"card\"");
    if (rc == ERR_OK)
        rc = bb_json_text(payment, "card", true, 64, &req->card, e); /* what the PSP charges */
    if (rc != ERR_OK)
        bb_error_prefix_field(e, "payment.");
    return rc;
}

/* Validate the body into op->req; the fingerprint is its canonical form's. */
static enum err
request_parse(struct http_req *r, struct checkout_op *op, struct bb_error *e)
{
    static const char *const allowed[] = {"customer_id", "items", "payment", "currency", NULL};
    struct checkout_request *req = &op->req;
    json_t *body;
    enum err rc = http_req_idempotency_key(r, &req->idempotency_key, e);
    if (rc == ERR_OK)
        rc = http_req_json_only(r, allowed, &body, e);
    if (rc == ERR_OK)
        rc = bb_json_ident(body, "customer_id", true, ORDER_ID_MAX, &req->customer_id, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "currency", true, 3, &req->currency, e);
    if (rc == ERR_OK && !bb_currency_is_valid(req->currency))
        rc = bb_fail(e, ERR_INVALID, "currency", "currency must be an ISO 4217 code (EUR)");
    if (rc == ERR_OK)
        rc = order_items_from_json(json_object_get(body, "items"), req->items, &req->n_items, e);
    if (rc == ERR_OK)
        rc = payment_member(body, req, e);
    for (size_t i = 0; rc == ERR_OK && i < req->n_items; i++) {
        const struct order_item *it = &req->items[i];
        if (it->unit_price > (BB_AMOUNT_MAX - req->total_amount) / it->qty)
            rc = bb_fail(e, ERR_INVALID, "items", "the basket's total is too large");
        else
            req->total_amount += it->qty * it->unit_price;
    }
    /* Free items may be in a basket, but a payment is of 1 unit or more. */
    if (rc == ERR_OK && req->total_amount < 1)
        rc = bb_fail(e, ERR_INVALID, "items",
                     "the basket's total is 0: at least one item must have a unit_price");
    if (rc != ERR_OK)
        return rc;
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (canon == NULL)
        bb_panic(__FILE__, __LINE__, "json_dumps failed");
    bb_sha256_hex(canon, strlen(canon), op->fingerprint);
    free(canon);
    req->fingerprint = op->fingerprint;
    return ERR_OK;
}

static enum err
accept_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct checkout_op *op = arg;
    a->status = 202;
    return checkout_accept(c, op->svc->known, &op->req, bb_wall_ms(), &a->body, &op->created, e);
}

/* accept_work for the requests that wait at the same time. */
static enum err
accept_many(struct store_conn *c, void *const *args, struct http_answer *const *answers, size_t n,
            enum err *rcs, struct bb_error *errors, struct bb_error *e)
{
    const struct checkout_request **reqs = xcalloc(n, sizeof *reqs);
    const char **traceparents = xcalloc(n, sizeof *traceparents);
    json_t **outs = xcalloc(n, sizeof *outs);
    bool *created = xcalloc(n, sizeof *created);
    for (size_t i = 0; i < n; i++) {
        const struct checkout_op *op = args[i];
        reqs[i] = &op->req;
        traceparents[i] = op->traceparent;
    }
    struct checkout_skus *known = ((const struct checkout_op *)args[0])->svc->known;
    enum err rc = checkout_accept_many(c, known, reqs, traceparents, n, bb_wall_ms(), outs, created,
                                       rcs, errors, e);
    for (size_t i = 0; i < n; i++) {
        struct checkout_op *op = args[i];
        op->created = rc == ERR_OK && created[i];
        answers[i]->status = 202;
        answers[i]->body = rc == ERR_OK ? outs[i] : NULL;
    }
    free(created);
    free(outs);
    free(traceparents);
    free(reqs);
    return rc;
}

static void
accepted(void *arg, enum err rc, const struct http_answer *a)
{
    struct checkout_op *op = arg;
    (void)a;
    metrics_add(&M_CHECKOUTS, 1, rc != ERR_OK ? "refused" : op->created ? "accepted" : "replayed");
    if (rc == ERR_OK && op->created)
        saga_announce(op->svc->announcer);
}

static void
handle_checkout(struct http_req *r, void *ctx)
{
    struct bb_error *e = http_req_error(r);
    struct checkout_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->svc = ctx;
    if (request_parse(r, op, e) != ERR_OK) {
        metrics_add(&M_CHECKOUTS, 1, "refused");
        http_reply_problem(r, e, NULL);
        return;
    }
    op->traceparent = http_req_traceparent(r);
    http_req_run_json_grouped(r, op->svc->store, STORE_WRITE, &op->svc->accepts, accept_work,
                              accepted, op);
}

static enum err
get_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct checkout_op *op = arg;
    return checkout_get_json(c, op->checkout_id, &a->body, e);
}

static void
handle_get(struct http_req *r, void *ctx)
{
    struct checkout_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->svc = ctx;
    if (http_req_param_ident(r, "checkout_id", ORDER_ID_MAX, &op->checkout_id, http_req_error(r)) !=
        ERR_OK) {
        http_reply_problem(r, http_req_error(r), NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_READ, get_work, NULL, op);
}

struct checkout_service *
checkout_service_create(struct store *s, struct saga_announcer *a)
{
    metrics_register(&M_CHECKOUTS);
    struct checkout_service *svc = xcalloc(1, sizeof *svc);
    svc->store = s;
    svc->announcer = a;
    svc->known = checkout_skus_create();
    http_json_group_init(&svc->accepts, accept_many, ACCEPT_GROUP_MAX);
    return svc;
}

size_t
checkout_service_routes(struct checkout_service *svc, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"POST", "/checkout", handle_checkout, svc, false, NULL},
        {"GET", "/checkout/{checkout_id}", handle_get, svc, false, NULL},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}

void
checkout_service_destroy(struct checkout_service *svc)
{
    if (svc)
        checkout_skus_destroy(svc->known);
    free(svc);
}
