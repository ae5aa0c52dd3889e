/*
 * payments_int.h: shared inside src/payments only.
 */
#ifndef BB_PAYMENTS_INT_H
#define BB_PAYMENTS_INT_H

#include "payments/payments.h"

/* Batches in flight at once, and callers waiting for one, per combiner. */
enum { PAYMENTS__BATCH_LEADERS = 4, PAYMENTS__BATCH_WAITING_MAX = 512 };

/* ---- the PSP mock (payment_psp.c) ------------------------------------------------------- */

enum payments__psp_outcome {
    PSP_APPROVED,
    PSP_DECLINED,
    PSP_ERROR,   /* a transient failure: nothing was done */
    PSP_TIMEOUT, /* no answer in time (the PSP may have acted: ask again) */
};
const char *payments__psp_outcome_name(enum payments__psp_outcome o);

struct payments__psp_call {
    const char *op;          /* authorize, capture, void, refund */
    const char *key;         /* the PSP's idempotency key: same key, same answer */
    const char *payment_key; /* the authorization's own key (capture and void settle it) */
    int64_t amount;
    const char *currency;
    const char *card; /* may be NULL */
};

struct payments__psp_answer {
    enum payments__psp_outcome outcome;
    char reference[40];
    char reason[96];
    int64_t latency_ms;
    /* A capture or void declined because the authorization was settled the
     * other way before (by a call whose answer was lost): how. */
    int64_t captured; /* the amount captured */
    bool voided;
    /* The call's key is on record for another amount: refused (declined),
     * nothing done, as a PSP refuses an idempotency key reused with other
     * parameters; recorded_amount is the amount on record. A capture on
     * record as approved is named as above (captured): the caller learns it. */
    bool other_amount;
    int64_t recorded_amount;
    /* A capture's or void's answer names the authorization it settles (its
     * reference, "" when the PSP approved none), as a PSP's settlement
     * answers name the payment: a ledger that lost the authorization's
     * answer learns it there. */
    char authorization[40];
};

struct payments__psp;
/* batch_max > 1: records of concurrent calls share a transaction. */
struct payments__psp *payments__psp_create(struct store *s, const struct psp_config *c,
                                           size_t batch_max);
void payments__psp_destroy(struct payments__psp *psp);
void payments__psp_config_get(struct payments__psp *psp, struct psp_config *out);
void payments__psp_config_set(struct payments__psp *psp, const struct psp_config *c);
/* One call, waiting out the mock's latency (at most timeout_ms). */
void payments__psp_call(struct payments__psp *psp, const struct payments__psp_call *call,
                        int64_t timeout_ms, struct payments__psp_answer *a);
/* The PSP's own record of what it did: {"charges":[...], "next_after"}. */
enum err payments__psp_list_json(struct store_conn *c, int64_t after, int64_t limit, json_t **out,
                                 struct bb_error *e);

/* ---- the ledger (payment_store.c) ------------------------------------------------------- */

/* A payment row, as the operations need it. */
struct payments__row {
    char id[PAYMENT_ID_LEN + 1];
    char order_id[PAYMENT_ORDER_ID_MAX + 1];
    char key[STORE_IDEM_KEY_MAX + 1]; /* the authorization's idempotency key */
    char fingerprint[65];
    int64_t amount;
    char currency[4];
    char card[PAYMENT_CARD_MAX + 1];
    enum payment_state state;
    int64_t captured;
    int64_t refunded;       /* refunds the PSP approved */
    int64_t refund_pending; /* reserved by refunds still being asked for */
};
bool payments__state_parse(const char *name, enum payment_state *out);
/* ERR_NOT_FOUND naming authorization_id. */
enum err payments__row_get(struct store_conn *c, const char *payment_id, struct payments__row *row,
                           struct bb_error *e);
enum err payments__row_by_key(struct store_conn *c, const char *key, struct payments__row *row,
                              bool *found, struct bb_error *e);
/* The rows of n payments by id, or by idempotency key (by_key): *rows[i]
 * and found[i] for keys[i]. */
enum err payments__rows_read_many(struct store_conn *c, bool by_key, const char *const *keys,
                                  size_t n, struct payments__row **rows, bool *found,
                                  struct bb_error *e);

/* ---- the service (payment_service.c) ----------------------------------------------------- */

struct payments {
    struct store *store;
    struct payments__psp *psp;
    int64_t psp_timeout_ms;
    struct bb_pool *pool;         /* HTTP requests waiting on the PSP */
    struct bb_combiner *combiner; /* batches of operations; NULL: each alone */
};
/* Let up to batch_max operations in the same phase share a transaction
 * (<= 1: never). */
void payments__batching_start(struct payments *p, size_t batch_max);

/* ---- metrics (payment_http.c) ---------------------------------------------------------- */

void payments__metrics_register(void);
void payments__metric_attempt(const char *op, enum payments__psp_outcome o, int64_t latency_ms);
void payments__metric_failure(const char *reason);
/* A batch of n operations' (or PSP records') transaction, and whether it
 * committed (if not, each member ran alone). */
void payments__metric_batch(const char *what, size_t n, bool ok);
/* A combiner's on_waiting: `what` is the label ("ledger", "psp"). */
void payments__metric_waiting(size_t n, void *what);

#endif /* BB_PAYMENTS_INT_H */
