/*
 * inventory: products and their stock, reservations for an order (all items
 * or none) that expire by themselves, commits that turn a reservation into a
 * sale, releases (the saga's compensation) and adjustments.
 *
 * Never oversell: a product row keeps on_hand and reserved, a CHECK keeps
 * 0 <= reserved <= on_hand, and a reservation takes stock with one
 * conditional UPDATE per item (`... WHERE on_hand - reserved >= qty`), so
 * concurrent buyers cannot both take the last unit on either engine. Items
 * are taken in SKU order, so two reservations never wait on each other.
 *
 * Every state change writes its event to the outbox in the same
 * transaction: inventory.reserved.v1, inventory.released.v1 (released or
 * expired), inventory.committed.v1, inventory.adjusted.v1 (stock added,
 * returns, corrections).
 *
 * The store functions run inside the caller's open transaction and take the
 * wall clock from the caller; JSON they return is the API's representation.
 */
#ifndef BB_INVENTORY_H
#define BB_INVENTORY_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

enum {
    INVENTORY_SKU_MAX = 64,       /* bytes, of A-Z a-z 0-9 . _ : - */
    INVENTORY_NAME_MAX = 200,     /* bytes */
    INVENTORY_ORDER_ID_MAX = 100, /* bytes, of A-Z a-z 0-9 . _ : - */
    INVENTORY_ITEMS_MAX = 100,    /* items in one reservation */
    INVENTORY_QTY_MAX = 1000000,  /* units of one item, one addition */
    INVENTORY_REASON_MAX = 200,   /* bytes */
    INVENTORY_TTL_MIN_MS = 100,   /* reservation lifetimes */
    INVENTORY_TTL_MAX_MS = 604800000,
    INVENTORY_TTL_DEFAULT_MS = 600000, /* 10 minutes */
};
/* Most units a product may hold. */
#define INVENTORY_STOCK_MAX INT64_C(1000000000000)

/* A reservation's lifecycle. */
enum inventory_reservation_state {
    INVENTORY_ACTIVE,    /* holds stock until it expires */
    INVENTORY_COMMITTED, /* sold: the stock left on_hand */
    INVENTORY_RELEASED,  /* given back (compensation) */
    INVENTORY_EXPIRED,   /* its TTL ran out; the stock came back */
};
const char *inventory_state_name(enum inventory_reservation_state s);
/* The lifecycle table. */
bool inventory_can_transition(enum inventory_reservation_state from,
                              enum inventory_reservation_state to);

struct inventory_item {
    const char *sku;
    int64_t qty;
};

/* Create a product with `stock` units. *created false: it existed with the
 * same name and initial stock (answered as is, with its stock now);
 * another name is ERR_CONFLICT naming "sku", another initial stock
 * ERR_CONFLICT naming "stock". */
BB_WUR enum err inventory_product_create(struct store_conn *c, const char *sku, const char *name,
                                         int64_t stock, int64_t now_ms, json_t **out, bool *created,
                                         struct bb_error *e);
/* known[i]: whether skus[i] names a product (one statement for all n). */
BB_WUR enum err inventory_skus_known(struct store_conn *c, const char *const *skus, size_t n,
                                     bool *known, struct bb_error *e);
/* {sku, name, on_hand, reserved, available, created_at, updated_at}. */
BB_WUR enum err inventory_product_get_json(struct store_conn *c, const char *sku, json_t **out,
                                           struct bb_error *e);
/* Add `qty` units, once per idempotency key (a replay answers the first
 * answer; the key with another sku or qty is ERR_IDEMPOTENCY_MISMATCH). */
BB_WUR enum err inventory_stock_add(struct store_conn *c, const char *sku, int64_t qty,
                                    const char *key, int64_t now_ms, json_t **out,
                                    struct bb_error *e);
/* Change on_hand by `delta` (returns +, corrections either way) with a
 * reason, once per key. ERR_INSUFFICIENT_STOCK when it would drop on_hand
 * below what is reserved or below zero, ERR_INVALID when it would raise it
 * past INVENTORY_STOCK_MAX (both naming "delta"); ERR_IDEMPOTENCY_MISMATCH
 * naming "key" (the request's member) for the key with another change. */
BB_WUR enum err inventory_adjust(struct store_conn *c, const char *key, const char *sku,
                                 int64_t delta, const char *reason, int64_t now_ms, json_t **out,
                                 struct bb_error *e);

/*
 * Reserve every item for `order_id` for `ttl_ms`, or nothing. The same
 * order_id again answers the existing reservation (*created false, whatever
 * its state); with other items it is ERR_IDEMPOTENCY_MISMATCH. Items must
 * name distinct SKUs. ERR_INSUFFICIENT_STOCK: *short_items gets
 * [{sku, requested, available}] for every short item (the caller owns it).
 * ERR_NOT_FOUND names the unknown SKU's field (items[i].sku). The
 * reservation's JSON into *out (out NULL: not wanted), here and below.
 */
BB_WUR enum err inventory_reserve(struct store_conn *c, const char *order_id,
                                  const struct inventory_item *items, size_t n, int64_t ttl_ms,
                                  int64_t now_ms, json_t **out, bool *created, json_t **short_items,
                                  struct bb_error *e);
/*
 * inventory_reserve for reqs[0..n-1] (distinct order ids) with a statement
 * per table for all of them, granted in array order: outcomes[i] as
 * inventory_reserve would answer (ERR_OK, ERR_INSUFFICIENT_STOCK,
 * ERR_NOT_FOUND, ERR_IDEMPOTENCY_MISMATCH; errors[i] why). A request that
 * fails writes nothing. The products are locked in SKU order. The return
 * is the store's trouble (roll back).
 */
struct inventory_reservation_req {
    const char *order_id;
    const struct inventory_item *items;
    size_t n_items;
    const char *traceparent; /* its event's (NULL: the thread's log context) */
};
BB_WUR enum err inventory_reserve_many(struct store_conn *c,
                                       const struct inventory_reservation_req *reqs, size_t n,
                                       int64_t ttl_ms, int64_t now_ms, enum err *outcomes,
                                       struct bb_error *errors, struct bb_error *e);
/* {order_id, state, items, expires_at, created_at, updated_at}. */
BB_WUR enum err inventory_reservation_get_json(struct store_conn *c, const char *order_id,
                                               json_t **out, struct bb_error *e);
/* Give an active reservation's stock back. Idempotent: a released or
 * expired one is answered as is. ERR_CONFLICT once committed. */
BB_WUR enum err inventory_release(struct store_conn *c, const char *order_id, int64_t now_ms,
                                  json_t **out, struct bb_error *e);
/* inventory_commit for order_ids[0..n-1] (distinct) with a statement per
 * table for all of them: outcomes[i] as inventory_commit would answer,
 * errors[i] why; one that fails writes nothing; traceparents[i] (the
 * array may be NULL) is its event's. The return is the store's trouble
 * (roll back). */
BB_WUR enum err inventory_commit_many(struct store_conn *c, const char *const *order_ids,
                                      const char *const *traceparents, size_t n, int64_t now_ms,
                                      enum err *outcomes, struct bb_error *errors,
                                      struct bb_error *e);
/* Turn an active reservation into a sale. Idempotent once committed.
 * ERR_RESERVATION_EXPIRED past its TTL (the sweeper gives its stock back),
 * ERR_CONFLICT once released. */
BB_WUR enum err inventory_commit(struct store_conn *c, const char *order_id, int64_t now_ms,
                                 json_t **out, struct bb_error *e);
/* Expire up to `limit` active reservations past their TTL; *n gets how many. */
BB_WUR enum err inventory_expire_due(struct store_conn *c, int64_t now_ms, int64_t limit,
                                     int64_t *n, struct bb_error *e);

const struct store_migration *inventory_migrations(size_t *n);

/* The HTTP service, and its sweeper thread: every `sweep_ms` it expires
 * reservations past their TTL, and once a minute (or once a retention, if
 * shorter) it forgets idempotency keys (stock additions, adjustments) older
 * than `key_retention_ms` (0: never). */
struct inventory_options {
    int64_t sweep_ms;
    int64_t key_retention_ms;
};
struct inventory_service;
BB_WUR enum err inventory_service_create(struct store *s, const struct inventory_options *o,
                                         struct inventory_service **out, struct bb_error *e);
size_t inventory_service_routes(struct inventory_service *svc, struct http_route *out, size_t max);
void inventory_service_destroy(struct inventory_service *svc);

#endif /* BB_INVENTORY_H */
