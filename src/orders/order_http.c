/*
 * order_http.c: the orders' HTTP routes.
 */
#include "orders/orders.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct order_service {
    struct store *store;
};

struct order_op {
    struct order_service *svc;
    const char *order_id;
    const char *checkout_id;
    const char *reason;
    struct order_spec spec;
    struct order_item items[ORDER_ITEMS_MAX];
};

static struct order_op *
op_new(struct http_req *r, struct order_service *svc)
{
    struct order_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->svc = svc;
    return op;
}

enum err
order_items_from_json(const json_t *items, struct order_item *out, size_t *n, struct bb_error *e)
{
    static const char *const allowed[] = {"sku", "qty", "unit_price", NULL};
    if (!json_is_array(items) || json_array_size(items) == 0 ||
        json_array_size(items) > ORDER_ITEMS_MAX)
        return bb_fail(e, ERR_INVALID, "items", "items must be an array of 1 to %d items",
                       ORDER_ITEMS_MAX);
    size_t i;
    const json_t *item;
    json_array_foreach(items, i, item)
    {
        struct order_item *it = &out[i];
        enum err rc = json_is_object(item) ? bb_json_only(item, allowed, e)
                                           : bb_fail(e, ERR_INVALID, "", "must be an object");
        if (rc == ERR_OK)
            rc = bb_json_ident(item, "sku", true, ORDER_SKU_MAX, &it->sku, e);
        if (rc == ERR_OK)
            rc = bb_json_int(item, "qty", true, 1, ORDER_QTY_MAX, &it->qty, e);
        if (rc == ERR_OK)
            rc = bb_json_int(item, "unit_price", true, 0, BB_AMOUNT_MAX, &it->unit_price, e);
        for (size_t k = 0; k < i && rc == ERR_OK; k++) {
            if (strcmp(out[k].sku, it->sku) == 0)
                rc = bb_fail(e, ERR_INVALID, "sku", "sku %s is listed twice", it->sku);
        }
        if (rc != ERR_OK) {
            char prefix[32];
            snprintf(prefix, sizeof prefix, "items[%zu].", i);
            bb_error_prefix_field(e, prefix);
            return rc;
        }
    }
    *n = json_array_size(items);
    return ERR_OK;
}

static enum err
currency_member(const json_t *body, const char **out, struct bb_error *e)
{
    enum err rc = bb_json_string(body, "currency", true, 3, out, e);
    if (rc == ERR_OK && !bb_currency_is_valid(*out))
        return bb_fail(e, ERR_INVALID, "currency", "currency must be an ISO 4217 code (EUR)");
    return rc;
}

static enum err
create_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct order_op *op = arg;
    bool created;
    enum err rc = order_create(c, &op->spec, bb_wall_ms(), NULL, &a->body, &created, e);
    a->status = created ? 201 : 200;
    return rc;
}

static void
handle_create(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"checkout_id", "customer_id", "currency", "items", NULL};
    struct bb_error *e = http_req_error(r);
    struct order_op *op = op_new(r, ctx);
    json_t *body;
    op->spec.items = op->items;
    if (http_req_json_only(r, allowed, &body, e) != ERR_OK ||
        bb_json_ident(body, "checkout_id", true, ORDER_ID_MAX, &op->spec.checkout_id, e) !=
            ERR_OK ||
        bb_json_ident(body, "customer_id", true, ORDER_ID_MAX, &op->spec.customer_id, e) !=
            ERR_OK ||
        currency_member(body, &op->spec.currency, e) != ERR_OK ||
        order_items_from_json(json_object_get(body, "items"), op->items, &op->spec.n_items, e) !=
            ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_WRITE, create_work, NULL, op);
}

static enum err
get_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct order_op *op = arg;
    return order_get_json(c, op->order_id, &a->body, e);
}

static void
handle_get(struct http_req *r, void *ctx)
{
    struct order_op *op = op_new(r, ctx);
    if (http_req_param_ident(r, "order_id", ORDER_ID_MAX, &op->order_id, http_req_error(r)) !=
        ERR_OK) {
        http_reply_problem(r, http_req_error(r), NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_READ, get_work, NULL, op);
}

/* GET /orders?checkout_id=: {"orders": [the checkout's order]} or []. */
static enum err
find_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct order_op *op = arg;
    json_t *order = NULL;
    enum err rc = order_find_by_checkout(c, op->checkout_id, &order, e);
    if (rc == ERR_NOT_FOUND) {
        bb_error_clear(e);
        rc = ERR_OK;
    }
    if (rc == ERR_OK)
        a->body = json_pack("{s:o}", "orders", order ? json_pack("[o]", order) : json_array());
    return rc;
}

static void
handle_find(struct http_req *r, void *ctx)
{
    struct bb_error *e = http_req_error(r);
    struct order_op *op = op_new(r, ctx);
    op->checkout_id = http_req_query(r, "checkout_id");
    if (op->checkout_id == NULL || !bb_ident_is_valid(op->checkout_id, ORDER_ID_MAX)) {
        bb_fail(e, ERR_INVALID, "checkout_id", "checkout_id is required: an identifier");
        http_reply_problem(r, e, NULL);
        return;
    }
    op->checkout_id = bb_arena_strdup(http_req_arena(r), op->checkout_id);
    http_req_run_json(r, op->svc->store, STORE_READ, find_work, NULL, op);
}

static enum err
confirm_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct order_op *op = arg;
    return order_confirm(c, op->order_id, op->reason, bb_wall_ms(), &a->body, e);
}

static enum err
cancel_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct order_op *op = arg;
    return order_cancel(c, op->order_id, op->reason, bb_wall_ms(), &a->body, e);
}

/* PUT /orders/{id}/confirm|cancel, with an optional {"reason"}. */
static void
on_move(struct http_req *r, void *ctx, http_json_work_fn *work)
{
    static const char *const allowed[] = {"reason", NULL};
    struct bb_error *e = http_req_error(r);
    struct order_op *op = op_new(r, ctx);
    json_t *body;
    if (http_req_param_ident(r, "order_id", ORDER_ID_MAX, &op->order_id, e) != ERR_OK ||
        http_req_json_optional(r, &body, e) != ERR_OK || bb_json_only(body, allowed, e) != ERR_OK ||
        bb_json_text(body, "reason", false, ORDER_REASON_MAX, &op->reason, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    http_req_run_json(r, op->svc->store, STORE_WRITE, work, NULL, op);
}

static void
handle_confirm(struct http_req *r, void *ctx)
{
    on_move(r, ctx, confirm_work);
}

static void
handle_cancel(struct http_req *r, void *ctx)
{
    on_move(r, ctx, cancel_work);
}

struct order_service *
order_service_create(struct store *s)
{
    struct order_service *svc = xcalloc(1, sizeof *svc);
    svc->store = s;
    return svc;
}

/* The query parameters each route takes (NULL: none; the server refuses
 * any other, see struct http_route). */
static const char *const FIND_QUERY[] = {"checkout_id", NULL}; /* GET /orders */

size_t
order_service_routes(struct order_service *svc, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"POST", "/orders", handle_create, svc, false, NULL},
        {"GET", "/orders", handle_find, svc, false, FIND_QUERY},
        {"GET", "/orders/{order_id}", handle_get, svc, false, NULL},
        {"PUT", "/orders/{order_id}/confirm", handle_confirm, svc, false, NULL},
        {"PUT", "/orders/{order_id}/cancel", handle_cancel, svc, false, NULL},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}

void
order_service_destroy(struct order_service *svc)
{
    free(svc);
}
