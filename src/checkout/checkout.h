/*
 * checkout: the edge of the checkout flow. POST /checkout validates a
 * basket, writes the checkout and its checkout.requested.v1 event in one
 * transaction and answers 202 at once; the checkout saga (checkout_saga.c,
 * on src/saga) starts from that event and drives it to COMPLETED or FAILED,
 * announced by checkout.status.changed.v1 in the transaction that ends it.
 *
 * Idempotency: a checkout is keyed by its Idempotency-Key. The same key
 * with the same body answers the same checkout (however many times, however
 * concurrently: the key is unique in the table, and a second insert waits
 * for the first); the same key with another body is refused (422).
 */
#ifndef BB_CHECKOUT_H
#define BB_CHECKOUT_H

#include "base/base.h"
#include "http/http.h"
#include "jobs/jobs.h"
#include "orders/orders.h"
#include "payments/payments.h"
#include "saga/saga.h"
#include "store/store.h"

/* The built-in job handler that records a confirmed order for shipping. */
#define CHECKOUT_FULFILMENT_HANDLER "fulfilment"

enum checkout_status {
    CHECKOUT_PENDING,   /* accepted; the saga is running */
    CHECKOUT_COMPLETED, /* the order is confirmed */
    CHECKOUT_FAILED,    /* given up, compensated; `reason` says why */
};
const char *checkout_status_name(enum checkout_status s);

/* A validated checkout request. */
struct checkout_request {
    const char *idempotency_key;
    const char *fingerprint; /* SHA-256 hex of the canonical body */
    const char *customer_id;
    const char *currency;
    const char *card; /* the card token the PSP charges */
    struct order_item items[ORDER_ITEMS_MAX];
    size_t n_items;
    int64_t total_amount;
};

/* SKUs seen to name a product, so that they need not be looked up again:
 * products are never deleted, so a SKU once known stays known. One per
 * service (and database); thread-safe. */
struct checkout_skus;
struct checkout_skus *checkout_skus_create(void);
void checkout_skus_destroy(struct checkout_skus *k);

/* Accept a checkout (or answer the key's checkout): *out gets
 * {checkout_id, status, ...}; *created says whether this call made it.
 * ERR_IDEMPOTENCY_MISMATCH when the key went with another body;
 * ERR_INVALID naming items[i].sku when an item names no product (looked
 * up unless `known` has it; known may be NULL). */
BB_WUR enum err checkout_accept(struct store_conn *c, struct checkout_skus *known,
                                const struct checkout_request *req, int64_t now_ms, json_t **out,
                                bool *created, struct bb_error *e);
/* checkout_accept for n requests at once, one statement per table:
 * outs[i], created[i] and rcs[i] (errors[i]) for reqs[i]; traceparents[i]
 * (may be NULL) marks its event. */
BB_WUR enum err checkout_accept_many(struct store_conn *c, struct checkout_skus *known,
                                     const struct checkout_request *const *reqs,
                                     const char *const *traceparents, size_t n, int64_t now_ms,
                                     json_t **outs, bool *created, enum err *rcs,
                                     struct bb_error *errors, struct bb_error *e);
/* {checkout_id, status, reason, order_id, customer_id, currency,
 * total_amount, items, payment, created_at, updated_at}. */
BB_WUR enum err checkout_get_json(struct store_conn *c, const char *checkout_id, json_t **out,
                                  struct bb_error *e);

const struct store_migration *checkout_migrations(size_t *n);

/*
 * The checkout saga (see checkout_saga.c): registers its definition with
 * the engine and the "fulfilment" handler in `r`. Its payment steps call
 * `payments` in process.
 */
struct checkout_saga_options {
    struct payments *payments;
    int64_t reservation_ttl_ms;  /* default 10 min */
    int64_t payment_lock_ttl_ms; /* payment:{order_id}, default 30 s */
};
struct checkout_saga;
BB_WUR enum err checkout_saga_create(struct saga_engine *eng, struct job_registry *r,
                                     const struct checkout_saga_options *o,
                                     struct checkout_saga **out, struct bb_error *e);
void checkout_saga_destroy(struct checkout_saga *cs);

struct checkout_service;
/* POST /checkout, GET /checkout/{id}; each accepted checkout wakes the saga
 * starters through `a` (may be NULL). */
struct checkout_service *checkout_service_create(struct store *s, struct saga_announcer *a);
size_t checkout_service_routes(struct checkout_service *svc, struct http_route *out, size_t max);
void checkout_service_destroy(struct checkout_service *svc);

#endif /* BB_CHECKOUT_H */
