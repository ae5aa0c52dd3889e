/* checkout_int.h: private to src/checkout. */
#ifndef BB_CHECKOUT_INT_H
#define BB_CHECKOUT_INT_H

#include "checkout/checkout.h"

/* The saga's word on a checkout: its order, then how it ended. */
BB_WUR enum err checkout__set_order(struct store_conn *c, const char *checkout_id,
                                    const char *order_id, int64_t now_ms, struct bb_error *e);
/* checkout__set_order for n checkouts with one statement. */
BB_WUR enum err checkout__set_orders(struct store_conn *c, const char *const *checkout_ids,
                                     const char *const *order_ids, size_t n, int64_t now_ms,
                                     struct bb_error *e);
/*
 * Checkouts[i], PENDING, end as statuses[i] (COMPLETED or FAILED; reasons[i]
 * says why one failed), with one statement, and each one's
 * checkout.status.changed.v1 (naming its order order_ids[i], NULL: none
 * yet; with the trace traceparents[i], NULL: the thread's) with another,
 * both deferred. Each must end once: the caller sees to it (a saga ends
 * once, and one saga runs per checkout), as nothing here reads whether a
 * row moved (a round trip); the update leaves alone a checkout that is not
 * PENDING, but its event would still be written.
 */
BB_WUR enum err checkout__finish(struct store_conn *c, const char *const *checkout_ids,
                                 const char *const *order_ids, const enum checkout_status *statuses,
                                 const char *const *reasons, const char *const *traceparents,
                                 size_t n, int64_t now_ms, struct bb_error *e);
/* Checkout `checkout_id` fails for `reason` with its event (trace
 * `traceparent`, NULL: the thread's) if it is still PENDING (*failed);
 * one that is not, or that does not exist, is left alone, with no event. */
BB_WUR enum err checkout__fail_pending(struct store_conn *c, const char *checkout_id,
                                       const char *reason, const char *traceparent, int64_t now_ms,
                                       bool *failed, struct bb_error *e);

#endif /* BB_CHECKOUT_INT_H */
