/*
 * payments: authorizations, captures, voids and refunds through a payment
 * service provider (PSP), with a ledger of payments, every PSP attempt
 * (latency, outcome) and refunds; and the PSP mock Backbone ships with.
 *
 * A PSP call never runs inside a database transaction: an operation is a
 * transaction that records the intent (a PENDING payment), the call, and a
 * transaction that records the outcome with a compare-and-set on the
 * payment's state. The PSP is called with an idempotency key derived from
 * the payment, so a call retried after a timeout or a crash is answered
 * from the PSP's own record and never charges twice; a request retried with
 * the same idempotency key gets the same payment back.
 *
 * State table: PENDING -> AUTHORIZED | FAILED (declined) | VOIDED;
 * AUTHORIZED -> CAPTURED | VOIDED; CAPTURED -> REFUNDED (when approved
 * refunds reach the captured amount; partial refunds keep it CAPTURED, and
 * so do refunds still pending, which only hold their amount). Amounts are
 * integer minor units with an ISO 4217 currency.
 *
 * Fencing: a request may carry a lock token for "payment:{order_id}" (the
 * saga's payment lock); a token older than one already used is refused
 * (ERR_STALE_TOKEN) when the outcome is recorded, and, by payment_capture,
 * _void, _refund and payment_authorize (when it records the intent; a
 * retry of a key it recorded already is not), before the PSP is called
 * too. The deferred operations (the saga's) are fenced before the PSP only
 * by the caller's payment_prepare, in the transaction that took the lock:
 * a holder overtaken after that still asks the PSP, the same question
 * under the same key as its successor (answered the same, never charged
 * twice), but cannot write the answer.
 *
 * Batches: operations that stand at the same transaction at the same time
 * (authorize's intent, capture's or void's, the outcome of any of them)
 * share one, with one statement per table, and so do the PSP mock's
 * records (payments_options.batch); each ends as it would alone.
 *
 * Events, in the transaction of each change: payment.authorized.v1,
 * payment.failed.v1, payment.captured.v1, payment.voided.v1,
 * payment.refunded.v1.
 */
#ifndef BB_PAYMENTS_H
#define BB_PAYMENTS_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

enum {
    PAYMENT_ORDER_ID_MAX = 100,
    PAYMENT_CARD_MAX = 64,
    PAYMENT_ID_LEN = 36, /* a UUIDv7 */
    PSP_DECLINE_LIST_MAX = 16,
};

/* The payment lock and fence of an order: PAYMENT_FENCE_PREFIX "{order_id}".
 * Reserved: the lock API refuses to take or write these names. */
#define PAYMENT_FENCE_PREFIX "payment:"

enum payment_state {
    PAYMENT_PENDING,    /* recorded; the PSP's answer is not known yet */
    PAYMENT_AUTHORIZED, /* funds held */
    PAYMENT_FAILED,     /* declined */
    PAYMENT_CAPTURED,   /* charged (refunds may follow) */
    PAYMENT_VOIDED,     /* the hold was released */
    PAYMENT_REFUNDED,   /* every captured unit went back */
};
const char *payment_state_name(enum payment_state s);
/* The state table. */
bool payment_can_transition(enum payment_state from, enum payment_state to);

/* How the PSP mock behaves; every rate is drawn deterministically from the
 * seed and the call's idempotency key. */
struct psp_config {
    int64_t latency_ms;
    double failure_rate; /* transient errors (retryable) */
    double timeout_rate; /* hangs past the caller's timeout (after processing) */
    double decline_rate; /* authorizations declined */
    uint64_t seed;
    char decline_cards[PSP_DECLINE_LIST_MAX][PAYMENT_CARD_MAX + 1];
    size_t n_decline_cards;
    int64_t decline_amounts[PSP_DECLINE_LIST_MAX];
    size_t n_decline_amounts;
    int64_t fail_next; /* the next N calls fail */
    int64_t hang_next; /* the next N calls hang */
    char hang_op[16];  /* set: hang_next counts only this operation's calls */
};

struct payments_options {
    struct psp_config psp;
    int64_t psp_timeout_ms; /* the caller's timeout on each PSP call */
    int threads;            /* HTTP requests served at once (each waits on the PSP) */
    int batch;              /* operations in the same step sharing a transaction (0: 32; 1: none) */
};

/* An authorization request. */
struct payment_request {
    const char *order_id;
    int64_t amount;
    const char *currency;
    const char *card; /* opaque card token; may be NULL */
    const char *idempotency_key;
    int64_t lock_token; /* > 0: fenced by the lock payment:{order_id} */
    /* payment_prepare: the id its intent gets (NULL: a new UUIDv7).
     * payment_authorize_deferred: the intent payment_prepare recorded with
     * this id, under this lock_token, in a transaction that committed: the
     * authorization starts from it (PENDING) without reading it. */
    const char *intent_id;
};

struct payments;
BB_WUR enum err payments_create(struct store *s, const struct payments_options *o,
                                struct payments **out, struct bb_error *e);
/* Answer the requests in hand and take no more (before HTTP stops). */
void payments_stop(struct payments *p);
void payments_destroy(struct payments *p);
size_t payments_routes(struct payments *p, struct http_route *out, size_t max);

/*
 * The operations, synchronous (they wait on the PSP: call them from a
 * worker thread). Each puts the payment's JSON in *out when it exists, also
 * when failing (caller frees; out NULL: not wanted); authorize also puts
 * its id in `id` (when not NULL; "" when no payment was recorded).
 * Errors: ERR_PAYMENT_DECLINED (now FAILED), ERR_UPSTREAM or ERR_TIMEOUT
 * (the PSP failed or did not answer: retry with the same key),
 * ERR_CONFLICT (the state table forbids it), ERR_IDEMPOTENCY_MISMATCH,
 * ERR_STALE_TOKEN, ERR_NOT_FOUND, ERR_INVALID (an authorization's amount
 * below 1 among others: refused before anything is recorded, naming
 * "amount").
 */
BB_WUR enum err payment_authorize(struct payments *p, const struct payment_request *req,
                                  char id[PAYMENT_ID_LEN + 1], json_t **out, struct bb_error *e);
/* Capture `amount` (0: all) of an authorization; idempotent once captured
 * for the same amount (another is ERR_CONFLICT naming "amount"). */
BB_WUR enum err payment_capture(struct payments *p, const char *payment_id, int64_t amount,
                                int64_t lock_token, json_t **out, struct bb_error *e);
/* Release an authorization (or a pending one); idempotent once voided. */
BB_WUR enum err payment_void(struct payments *p, const char *payment_id, int64_t lock_token,
                             json_t **out, struct bb_error *e);
/* Refund `amount` (0: what remains) of a capture, once per key. */
BB_WUR enum err payment_refund(struct payments *p, const char *payment_id, int64_t amount,
                               const char *key, int64_t lock_token, json_t **out,
                               struct bb_error *e);

/*
 * Authorize and capture for a caller that writes the ledger in
 * transactions of its own, together with its own writes (a saga's units):
 *
 * payment_prepare, in the transaction that takes the payment lock: raise
 * the fence of each request's order to its lock_token (older holders are
 * refused from then on; a request whose fence is newer is left alone) and,
 * with `intents`, record each authorization's intent (PENDING; a key used
 * already keeps its row, and then the intent_id is not that row's; an
 * amount below 1 gets none, its authorization being refused).
 *
 * payment_*_deferred, with no transaction open: the same checks, intent
 * (when not prepared) and PSP call, and the same answer, as if the outcome
 * were written; the fence is not raised again before the PSP (the caller
 * raised it), only when the outcome is written. An authorization given its
 * intent_id does not read the intent: should the ledger not hold that id
 * PENDING any more (the key's row is another, or it moved meanwhile),
 * writing its outcome fails (ERR_NOT_FOUND) or finds what moved it, as a
 * concurrent retry's. *pending is that outcome
 * (NULL when there is nothing to write: a replay, or a request refused
 * before the PSP). Until it is written, the ledger shows the payment as it
 * was, and a retry with the same key asks the PSP again (which answers
 * the same). A capture may follow its authorization's outcome before that
 * is written (`after`, not NULL: the capture starts from the payment as
 * that outcome leaves it, without reading it, and its own outcome must be
 * written after that one, in the same transaction: under the same lock
 * token, that one's fence stands for both and the capture's is not raised
 * again).
 */
BB_WUR enum err payment_prepare(struct store_conn *c, const struct payment_request *reqs, size_t n,
                                bool intents, struct bb_error *e);
struct payment_outcome;
BB_WUR enum err payment_authorize_deferred(struct payments *p, const struct payment_request *req,
                                           char id[PAYMENT_ID_LEN + 1],
                                           struct payment_outcome **pending, struct bb_error *e);
BB_WUR enum err payment_capture_deferred(struct payments *p, const char *payment_id, int64_t amount,
                                         int64_t lock_token, const struct payment_outcome *after,
                                         struct payment_outcome **pending, struct bb_error *e);
/* Write outcomes[0..n-1] (of distinct orders) in the caller's transaction:
 * fenced again, the payments moved, their attempts and events; as often as
 * the transaction runs. ERR_STALE_TOKEN (a lock lost meanwhile) or
 * ERR_CONFLICT (the payment moved meanwhile): nothing can be written, ask
 * again. */
BB_WUR enum err payment_outcomes_record(struct store_conn *c,
                                        struct payment_outcome *const *outcomes, size_t n,
                                        struct bb_error *e);
void payment_outcome_free(struct payment_outcome *o);

/* {authorization_id, order_id, amount, currency, state, captured_amount,
 * refunded_amount, refund_pending_amount, psp_reference, failure_reason,
 * attempts, refunds, created_at, updated_at}, in the caller's transaction. */
BB_WUR enum err payment_get_json(struct store_conn *c, const char *payment_id, json_t **out,
                                 struct bb_error *e);

const struct store_migration *payment_migrations(size_t *n);

#endif /* BB_PAYMENTS_H */
