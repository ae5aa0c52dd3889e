/*
 * orders: orders created from a checkout (one per checkout, however often
 * it is asked), their items, and a status timeline (every transition with
 * its time and reason). PENDING -> CONFIRMED or PENDING -> CANCELLED; both
 * are idempotent, and neither undoes the other.
 *
 * Every change writes its event in the same transaction: order.created.v1,
 * order.status.changed.v1. The store functions run inside the caller's open
 * transaction and take the wall clock from the caller.
 */
#ifndef BB_ORDERS_H
#define BB_ORDERS_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

enum {
    ORDER_ID_MAX = 100, /* checkout and customer ids too: A-Z a-z 0-9 . _ : - */
    ORDER_SKU_MAX = 64,
    ORDER_ITEMS_MAX = 100,
    ORDER_QTY_MAX = 1000000,
    ORDER_REASON_MAX = 200,
    ORDER_UUID_LEN = 36, /* an order's own id: a UUIDv7 */
};

enum order_status {
    ORDER_PENDING,   /* created; the checkout is still running */
    ORDER_CONFIRMED, /* paid and its stock sold */
    ORDER_CANCELLED, /* given up; compensated */
};
const char *order_status_name(enum order_status s);
/* The lifecycle table. */
bool order_can_transition(enum order_status from, enum order_status to);

struct order_item {
    const char *sku;
    int64_t qty;
    int64_t unit_price; /* minor units */
};

struct order_spec {
    const char *checkout_id;
    const char *customer_id;
    const char *currency;
    const struct order_item *items;
    size_t n_items;
    const char *traceparent; /* its events' (NULL: the thread's log context) */
};

/* Parse items [{sku, qty, unit_price}] (1..ORDER_ITEMS_MAX, distinct SKUs)
 * into `out` (room for ORDER_ITEMS_MAX); errors name items[i].field. The
 * items borrow strings from `items`. */
BB_WUR enum err order_items_from_json(const json_t *items, struct order_item *out, size_t *n,
                                      struct bb_error *e);

/*
 * Create the order of a checkout: its id into `id`, its JSON into *out
 * (either may be NULL: not wanted). Again for the same checkout: the
 * existing order (*created false); with other contents:
 * ERR_IDEMPOTENCY_MISMATCH. ERR_INVALID when the total exceeds BB_AMOUNT_MAX.
 */
BB_WUR enum err order_create(struct store_conn *c, const struct order_spec *spec, int64_t now_ms,
                             char id[ORDER_UUID_LEN + 1], json_t **out, bool *created,
                             struct bb_error *e);
/*
 * order_create for specs[0..n-1] with a statement per table for all of
 * them: ids[i] and outcomes[i] as order_create would answer (ERR_OK,
 * ERR_INVALID, ERR_IDEMPOTENCY_MISMATCH, with errors[i]); a spec that fails
 * writes nothing. The return is the store's trouble (roll back).
 */
BB_WUR enum err order_create_many(struct store_conn *c, const struct order_spec *specs, size_t n,
                                  int64_t now_ms, char (*ids)[ORDER_UUID_LEN + 1],
                                  enum err *outcomes, struct bb_error *errors, struct bb_error *e);
/* {order_id, checkout_id, customer_id, currency, total_amount, status,
 * items, timeline, created_at, updated_at}. */
BB_WUR enum err order_get_json(struct store_conn *c, const char *order_id, json_t **out,
                               struct bb_error *e);
BB_WUR enum err order_find_by_checkout(struct store_conn *c, const char *checkout_id, json_t **out,
                                       struct bb_error *e);
/* order_confirm for order_ids[0..n-1] (distinct) with a statement per
 * table for all of them: outcomes[i] as order_confirm would answer,
 * errors[i] why; one that fails writes nothing; traceparents[i] (the
 * array may be NULL) is its event's. The return is the store's trouble
 * (roll back). */
BB_WUR enum err order_confirm_many(struct store_conn *c, const char *const *order_ids,
                                   const char *const *traceparents, size_t n, const char *reason,
                                   int64_t now_ms, enum err *outcomes, struct bb_error *errors,
                                   struct bb_error *e);
/* PENDING -> CONFIRMED / CANCELLED with a reason; idempotent once there;
 * ERR_CONFLICT from the other final state. The order's JSON into *out
 * (out NULL: not wanted). */
BB_WUR enum err order_confirm(struct store_conn *c, const char *order_id, const char *reason,
                              int64_t now_ms, json_t **out, struct bb_error *e);
BB_WUR enum err order_cancel(struct store_conn *c, const char *order_id, const char *reason,
                             int64_t now_ms, json_t **out, struct bb_error *e);

const struct store_migration *order_migrations(size_t *n);

struct order_service;
struct order_service *order_service_create(struct store *s);
size_t order_service_routes(struct order_service *svc, struct http_route *out, size_t max);
void order_service_destroy(struct order_service *svc);

#endif /* BB_ORDERS_H */
