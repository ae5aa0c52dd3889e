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
/* Checkouts[i] still PENDING end as statuses[i] (reasons[i]: NULL or why
 * it failed), with one statement. */
BB_WUR enum err checkout__finish(struct store_conn *c, const char *const *checkout_ids,
                                 const enum checkout_status *statuses, const char *const *reasons,
                                 size_t n, int64_t now_ms, struct bb_error *e);

#endif /* BB_CHECKOUT_INT_H */
