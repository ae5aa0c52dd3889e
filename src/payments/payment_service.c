/*
 * payment_service.c: authorize, capture, void and refund. Each is three
 * steps: a transaction that checks the request against the ledger and the
 * state table (and records the intent), the PSP call outside any
 * transaction, and a transaction that records the attempt and moves the
 * payment with a compare-and-set, writing its event. The PSP key of a call
 * comes from the request's idempotency key (authorize:KEY, capture:KEY,
 * void:KEY, refund:REFUND_KEY), so a retry asks the PSP the same question,
 * and the mock's seeded draws repeat with the same requests.
 */
#include "payments/payments_int.h"

#include "locks/locks.h"
#include "outbox/outbox.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* One operation in flight: its inputs, and what the first transaction
 * learned. */
struct pay_op {
    struct payments *p;
    const char *op; /* authorize, capture, void, refund */
    const struct payment_request *req;
    const char *payment_id;
    const char *key; /* refund's idempotency key */
    int64_t amount;
    int64_t lock_token;
    struct payments__row row;
    char psp_key[STORE_IDEM_KEY_MAX + 16];
    char refund_id[PAYMENT_ID_LEN + 1];
    bool replay; /* answered before: no PSP call */
    struct payments__psp_answer answer;
    json_t *out;
};

/* ---- shared steps ---------------------------------------------------------------------- */

static enum err
fence(struct store_conn *c, const struct pay_op *op, const char *order_id, struct bb_error *e)
{
    if (op->lock_token <= 0)
        return ERR_OK;
    char key[160];
    snprintf(key, sizeof key, "payment:%s", order_id);
    return lock_fence_check(c, key, op->lock_token, bb_wall_ms(), e);
}

static struct store_stmt ATTEMPT_INSERT = {
    .sql = "INSERT INTO payment_attempts (payment_id, op, outcome, latency_ms, detail, at_ms)"
           " VALUES ($1, $2, $3, $4, $5, $6)",
};
static struct store_stmt PAYMENT_MOVE = {
    .sql = "UPDATE payments SET state = $3, updated_at_ms = $4,"
           " psp_reference = COALESCE($5, psp_reference),"
           " failure_reason = COALESCE($6, failure_reason),"
           " captured_amount = captured_amount + $7 WHERE id = $1 AND state = $2",
};

/* The second transaction of every operation starts here: fenced again (a
 * holder may have lost the lock while the PSP answered), then the PSP call
 * is recorded as an attempt. */
static enum err
outcome_begin(struct store_conn *c, const struct pay_op *op, struct bb_error *e)
{
    enum err rc = fence(c, op, op->row.order_id, e);
    if (rc != ERR_OK)
        return rc;
    const struct payments__psp_answer *a = &op->answer;
    const struct store_param p[] = {sp_text(op->row.id),
                                    sp_text(op->op),
                                    sp_text(payments__psp_outcome_name(a->outcome)),
                                    sp_int(a->latency_ms),
                                    sp_text(a->reason[0] ? a->reason : NULL),
                                    sp_int(bb_wall_ms())};
    return store_exec_deferred(c, &ATTEMPT_INSERT, p, BB_ARRAY_LEN(p), e);
}

/* The payment's event: authorized, failed, captured, voided. */
static enum err
announce(struct store_conn *c, const char *type, const struct payments__row *row, json_t *data,
         struct bb_error *e)
{
    json_object_set_new(data, "payment_id", json_string(row->id));
    json_object_set_new(data, "order_id", json_string(row->order_id));
    json_object_set_new(data, "currency", json_string(row->currency));
    struct outbox_event ev = {
        .type = type, .aggregate_type = "payment", .aggregate_id = row->id, .data = data};
    enum err rc = outbox_append(c, &ev, bb_wall_ms(), e);
    json_decref(data);
    return rc;
}

/* CAS from the state read at the start to `to`; *moved false when someone
 * else moved it first. */
static enum err
move(struct store_conn *c, const struct pay_op *op, enum payment_state to, const char *reference,
     const char *reason, int64_t captured, bool *moved, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(op->row.id),
                                    sp_text(payment_state_name(op->row.state)),
                                    sp_text(payment_state_name(to)),
                                    sp_int(bb_wall_ms()),
                                    sp_text(reference),
                                    sp_text(reason),
                                    sp_int(captured)};
    int64_t changed = 0;
    enum err rc = store_exec(c, &PAYMENT_MOVE, p, BB_ARRAY_LEN(p), &changed, e);
    *moved = changed == 1;
    return rc;
}

/* After a PSP error or timeout: the payment stays as it was. */
static enum err
psp_failed(const struct pay_op *op, struct bb_error *e)
{
    const struct payments__psp_answer *a = &op->answer;
    return bb_fail(e, a->outcome == PSP_TIMEOUT ? ERR_TIMEOUT : ERR_UPSTREAM, "",
                   "%s of payment %s: %s; retry with the same key", op->op, op->row.id, a->reason);
}

/* Run `step` in a write transaction on the store's executor. */
static enum err
run(struct pay_op *op, store_work_fn *step, struct bb_error *e)
{
    return store_run(op->p->store, STORE_WRITE, step, op, e);
}

static enum err
read_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    return payment_get_json(c, op->row.id, &op->out, e);
}

/* The end of every operation: the payment's JSON into *out (when it
 * exists, whatever the outcome; out NULL: not wanted) and the failure
 * counted. */
static enum err
conclude(struct pay_op *op, enum err rc, json_t **out)
{
    op->out = NULL;
    struct bb_error ignored;
    if (out && op->row.id[0] != '\0' &&
        store_run(op->p->store, STORE_READ, read_work, op, &ignored) != ERR_OK) {
        json_decref(op->out);
        op->out = NULL;
    }
    if (out)
        *out = op->out;
    static const struct {
        enum err rc;
        const char *reason;
    } reasons[] = {{ERR_PAYMENT_DECLINED, "declined"},
                   {ERR_UPSTREAM, "psp_error"},
                   {ERR_TIMEOUT, "timeout"},
                   {ERR_STALE_TOKEN, "stale_token"}};
    for (size_t i = 0; i < BB_ARRAY_LEN(reasons); i++) {
        if (reasons[i].rc == rc)
            payments__metric_failure(reasons[i].reason);
    }
    return rc;
}

static void
psp_ask(struct pay_op *op)
{
    struct payments__psp_call call = {.op = op->op,
                                      .key = op->psp_key,
                                      .payment_key = op->row.key,
                                      .amount = op->amount,
                                      .currency = op->row.currency,
                                      .card = op->row.card[0] ? op->row.card : NULL};
    payments__psp_call(op->p->psp, &call, op->p->psp_timeout_ms, &op->answer);
    payments__metric_attempt(op->op, op->answer.outcome, op->answer.latency_ms);
}

/* ---- authorize -------------------------------------------------------------------------- */

static struct store_stmt PAYMENT_INSERT = {
    .sql = "INSERT INTO payments (id, order_id, idempotency_key, fingerprint, amount, currency,"
           " card, state, created_at_ms, updated_at_ms)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8, $8)"
           " ON CONFLICT (idempotency_key) DO NOTHING",
};

static void
request_fingerprint(const struct payment_request *req, char out[65])
{
    char canon[512];
    int n = snprintf(canon, sizeof canon, "%s\n%" PRId64 "\n%s\n%s", req->order_id, req->amount,
                     req->currency, req->card ? req->card : "");
    bb_sha256_hex(canon, (size_t)n < sizeof canon ? (size_t)n : sizeof canon - 1, out);
}

static enum err
authorize_begin(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    const struct payment_request *req = op->req;
    char fingerprint[65];
    request_fingerprint(req, fingerprint);
    bool found;
    enum err rc = payments__row_by_key(c, req->idempotency_key, &op->row, &found, e);
    if (rc == ERR_OK && !found) {
        rc = fence(c, op, req->order_id, e);
        char id[37];
        int64_t now = bb_wall_ms();
        bb_uuid7_at(now, id);
        const struct store_param p[] = {sp_text(id),
                                        sp_text(req->order_id),
                                        sp_text(req->idempotency_key),
                                        sp_text(fingerprint),
                                        sp_int(req->amount),
                                        sp_text(req->currency),
                                        sp_text(req->card),
                                        sp_int(now)};
        if (rc == ERR_OK)
            rc = store_exec(c, &PAYMENT_INSERT, p, BB_ARRAY_LEN(p), NULL, e);
        if (rc == ERR_OK)
            rc = payments__row_by_key(c, req->idempotency_key, &op->row, &found, e);
    }
    if (rc != ERR_OK)
        return rc;
    if (strcmp(op->row.fingerprint, fingerprint) != 0)
        return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "idempotency_key",
                       "idempotency_key %s was already used for another payment",
                       req->idempotency_key);
    op->replay = op->row.state != PAYMENT_PENDING;
    snprintf(op->psp_key, sizeof op->psp_key, "authorize:%s", op->row.key);
    return ERR_OK;
}

static enum err
authorize_end(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    const struct payments__psp_answer *a = &op->answer;
    enum err rc = outcome_begin(c, op, e);
    if (rc != ERR_OK || a->outcome == PSP_ERROR || a->outcome == PSP_TIMEOUT)
        return rc;
    bool approved = a->outcome == PSP_APPROVED, moved;
    enum payment_state to = approved ? PAYMENT_AUTHORIZED : PAYMENT_FAILED;
    rc = move(c, op, to, approved ? a->reference : NULL, approved ? NULL : a->reason, 0, &moved, e);
    if (rc == ERR_OK && !moved) /* a concurrent retry recorded it: what it says now */
        return payments__row_get(c, op->row.id, &op->row, e);
    if (rc != ERR_OK)
        return rc;
    op->row.state = to;
    json_t *data = json_pack("{s:I}", "amount", (json_int_t)op->row.amount);
    if (approved)
        json_object_set_new(data, "psp_reference", json_string(a->reference));
    else
        json_object_set_new(data, "reason", json_string(a->reason));
    return announce(c, approved ? "payment.authorized.v1" : "payment.failed.v1", &op->row, data, e);
}

enum err
payment_authorize(struct payments *p, const struct payment_request *req,
                  char id[PAYMENT_ID_LEN + 1], json_t **out, struct bb_error *e)
{
    struct pay_op op = {.p = p,
                        .op = "authorize",
                        .req = req,
                        .lock_token = req->lock_token,
                        .amount = req->amount};
    enum err rc = run(&op, authorize_begin, e);
    if (rc == ERR_OK && !op.replay) {
        psp_ask(&op);
        rc = run(&op, authorize_end, e);
        if (rc == ERR_OK && (op.answer.outcome == PSP_ERROR || op.answer.outcome == PSP_TIMEOUT))
            rc = psp_failed(&op, e);
    }
    bool fresh = !op.replay;
    if (id)
        bb_strlcpy(id, op.row.id, PAYMENT_ID_LEN + 1);
    if (rc == ERR_OK && op.row.state == PAYMENT_FAILED)
        rc = bb_fail(e, ERR_PAYMENT_DECLINED, "", "payment %s was declined", op.row.id);
    else if (rc == ERR_OK && op.row.state == PAYMENT_VOIDED && fresh)
        rc = bb_fail(e, ERR_CONFLICT, "", "payment %s was voided meanwhile", op.row.id);
    return conclude(&op, rc, out);
}

/* ---- capture and void ------------------------------------------------------------------- */

/* The first step of capture and void: read, fence, check the table. */
static enum err
settle_begin(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    enum err rc = payments__row_get(c, op->payment_id, &op->row, e);
    if (rc == ERR_OK)
        rc = fence(c, op, op->row.order_id, e);
    if (rc != ERR_OK)
        return rc;
    bool capture = strcmp(op->op, "capture") == 0;
    enum payment_state s = op->row.state;
    snprintf(op->psp_key, sizeof op->psp_key, "%s:%s", op->op, op->row.key);
    if (capture) {
        op->replay = s == PAYMENT_CAPTURED || s == PAYMENT_REFUNDED;
        if (op->amount == 0)
            op->amount = op->row.amount;
        if (!op->replay && s == PAYMENT_AUTHORIZED && op->amount > op->row.amount)
            return bb_fail(e, ERR_INVALID, "amount",
                           "amount %" PRId64 " is more than the %" PRId64 " authorized", op->amount,
                           op->row.amount);
        if (!op->replay && s != PAYMENT_AUTHORIZED)
            return bb_fail(e, ERR_CONFLICT, "", "payment %s is %s: it cannot be captured",
                           op->row.id, payment_state_name(s));
    } else {
        op->replay = s == PAYMENT_VOIDED || s == PAYMENT_FAILED; /* nothing is held */
        if (!op->replay && !payment_can_transition(s, PAYMENT_VOIDED))
            return bb_fail(e, ERR_CONFLICT, "", "payment %s is %s: refund it instead of voiding",
                           op->row.id, payment_state_name(s));
    }
    return ERR_OK;
}

/* The PSP settled the authorization the other way before: a capture or
 * void whose answer was lost. */
static bool
settled_before(const struct payments__psp_answer *a)
{
    return a->outcome == PSP_DECLINED && (a->captured > 0 || a->voided);
}

static enum err
settle_end(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    const struct payments__psp_answer *a = &op->answer;
    enum err rc = outcome_begin(c, op, e);
    if (rc != ERR_OK || (a->outcome != PSP_APPROVED && !settled_before(a)))
        return rc;
    /* Approved, or the ledger learns the settlement it missed. */
    bool capture = settled_before(a) ? a->captured > 0 : strcmp(op->op, "capture") == 0, moved;
    int64_t amount = settled_before(a) ? a->captured : op->amount;
    rc = move(c, op, capture ? PAYMENT_CAPTURED : PAYMENT_VOIDED, NULL, NULL, capture ? amount : 0,
              &moved, e);
    if (rc == ERR_OK && !moved)
        return bb_fail(e, ERR_RETRY, "", "payment %s changed concurrently", op->row.id);
    if (rc != ERR_OK)
        return rc;
    op->row.state = capture ? PAYMENT_CAPTURED : PAYMENT_VOIDED;
    return announce(c, capture ? "payment.captured.v1" : "payment.voided.v1", &op->row,
                    capture ? json_pack("{s:I}", "amount", (json_int_t)amount) : json_object(), e);
}

static enum err
settle(struct payments *p, const char *op_name, const char *payment_id, int64_t amount,
       int64_t lock_token, json_t **out, struct bb_error *e)
{
    struct pay_op op = {.p = p,
                        .op = op_name,
                        .payment_id = payment_id,
                        .amount = amount,
                        .lock_token = lock_token};
    enum err rc = run(&op, settle_begin, e);
    if (rc == ERR_OK && !op.replay) {
        psp_ask(&op);
        rc = run(&op, settle_end, e);
        if (rc == ERR_OK && settled_before(&op.answer))
            rc = bb_fail(e, ERR_CONFLICT, "",
                         "payment %s was already %s at the PSP (an answer that was lost)%s",
                         op.row.id, op.answer.voided ? "voided" : "captured",
                         op.answer.voided ? "" : ": refund it instead");
        else if (rc == ERR_OK && op.answer.outcome != PSP_APPROVED)
            rc = psp_failed(&op, e);
    }
    return conclude(&op, rc, out);
}

enum err
payment_capture(struct payments *p, const char *payment_id, int64_t amount, int64_t lock_token,
                json_t **out, struct bb_error *e)
{
    return settle(p, "capture", payment_id, amount, lock_token, out, e);
}

enum err
payment_void(struct payments *p, const char *payment_id, int64_t lock_token, json_t **out,
             struct bb_error *e)
{
    return settle(p, "void", payment_id, 0, lock_token, out, e);
}

/* ---- refunds ---------------------------------------------------------------------------- */

static struct store_stmt REFUND_BY_KEY = {
    .sql = "SELECT id, payment_id, amount, state FROM payment_refunds WHERE idempotency_key = $1",
};
/* Reserve the amount on the payment first: two refunds cannot both take
 * what remains (refunded_amount counts refunds still being asked for). */
static struct store_stmt REFUND_RESERVE = {
    .sql = "UPDATE payments SET refunded_amount = refunded_amount + $2, updated_at_ms = $3"
           " WHERE id = $1 AND state = 'CAPTURED' AND refunded_amount + $2 <= captured_amount",
};
static struct store_stmt REFUND_INSERT = {
    .sql = "INSERT INTO payment_refunds (id, payment_id, idempotency_key, amount, state,"
           " created_at_ms) VALUES ($1, $2, $3, $4, 'pending', $5)",
};
static struct store_stmt REFUND_DONE = {
    .sql = "UPDATE payment_refunds SET state = 'succeeded' WHERE id = $1 AND state = 'pending'",
};

static enum err
refund_begin(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    enum err rc = payments__row_get(c, op->payment_id, &op->row, e);
    if (rc == ERR_OK)
        rc = fence(c, op, op->row.order_id, e);
    struct store_rows r;
    const struct store_param k[] = {sp_text(op->key)};
    if (rc == ERR_OK)
        rc = store_query(c, &REFUND_BY_KEY, k, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r)) { /* asked before */
        bool same = strcmp(store_col_text(&r, 1), op->row.id) == 0 &&
                    (op->amount == 0 || op->amount == store_col_int(&r, 2));
        bb_strlcpy(op->refund_id, store_col_text(&r, 0), sizeof op->refund_id);
        op->amount = store_col_int(&r, 2);
        op->replay = strcmp(store_col_text(&r, 3), "succeeded") == 0;
        store_rows_close(&r);
        if (!same)
            return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "idempotency_key",
                           "idempotency_key %s was already used for another refund", op->key);
    } else {
        store_rows_close(&r);
        if (op->row.state != PAYMENT_CAPTURED)
            return bb_fail(e, ERR_CONFLICT, "", "payment %s is %s: only a capture is refunded",
                           op->row.id, payment_state_name(op->row.state));
        int64_t left = op->row.captured - op->row.refunded;
        if (op->amount == 0)
            op->amount = left;
        if (op->amount > left || op->amount <= 0)
            return bb_fail(e, ERR_INVALID, "amount",
                           "amount %" PRId64 " is more than the %" PRId64 " left to refund",
                           op->amount, left);
        int64_t now = bb_wall_ms(), changed = 0;
        bb_uuid7_at(now, op->refund_id);
        const struct store_param p[] = {sp_text(op->row.id), sp_int(op->amount), sp_int(now)};
        rc = store_exec(c, &REFUND_RESERVE, p, BB_ARRAY_LEN(p), &changed, e);
        if (rc == ERR_OK && changed != 1)
            return bb_fail(e, ERR_RETRY, "", "payment %s changed concurrently", op->row.id);
        const struct store_param q[] = {sp_text(op->refund_id), sp_text(op->row.id),
                                        sp_text(op->key), sp_int(op->amount), sp_int(now)};
        if (rc == ERR_OK)
            rc = store_exec(c, &REFUND_INSERT, q, BB_ARRAY_LEN(q), NULL, e);
    }
    snprintf(op->psp_key, sizeof op->psp_key, "refund:%s", op->key);
    return rc;
}

static enum err
refund_end(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    enum err rc = outcome_begin(c, op, e);
    if (rc != ERR_OK || op->answer.outcome != PSP_APPROVED)
        return rc;
    int64_t changed = 0;
    const struct store_param p[] = {sp_text(op->refund_id)};
    rc = store_exec(c, &REFUND_DONE, p, 1, &changed, e);
    if (rc != ERR_OK || changed == 0) /* a concurrent retry finished it */
        return rc;
    rc = payments__row_get(c, op->row.id, &op->row, e);
    if (rc == ERR_OK && op->row.refunded == op->row.captured) {
        bool moved;
        rc = move(c, op, PAYMENT_REFUNDED, NULL, NULL, 0, &moved, e);
    }
    if (rc != ERR_OK)
        return rc;
    return announce(c, "payment.refunded.v1", &op->row,
                    json_pack("{s:s, s:I, s:I}", "refund_id", op->refund_id, "amount",
                              (json_int_t)op->amount, "refunded_total",
                              (json_int_t)op->row.refunded),
                    e);
}

enum err
payment_refund(struct payments *p, const char *payment_id, int64_t amount, const char *key,
               int64_t lock_token, json_t **out, struct bb_error *e)
{
    struct pay_op op = {.p = p,
                        .op = "refund",
                        .payment_id = payment_id,
                        .amount = amount,
                        .key = key,
                        .lock_token = lock_token};
    enum err rc = run(&op, refund_begin, e);
    if (rc == ERR_OK && !op.replay) {
        psp_ask(&op);
        rc = run(&op, refund_end, e);
        if (rc == ERR_OK && op.answer.outcome != PSP_APPROVED)
            rc = psp_failed(&op, e);
    }
    return conclude(&op, rc, out);
}
