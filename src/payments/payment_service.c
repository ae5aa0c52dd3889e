/*
 * payment_service.c: authorize, capture, void and refund. Each is three
 * steps: a transaction that checks the request against the ledger and the
 * state table (and records the intent), the PSP call outside any
 * transaction, and a transaction that records the attempt and moves the
 * payment with a compare-and-set, writing its event. The PSP key of a call
 * comes from the request's idempotency key (authorize:KEY, capture:KEY,
 * void:KEY, refund:REFUND_KEY), so a retry asks the PSP the same question,
 * and the mock's seeded draws repeat with the same requests. The
 * transactions of authorize, capture and void run in batches under load
 * (see "batches"); refunds run alone. A caller that writes the ledger in
 * transactions of its own (a saga) prepares the first (payment_prepare)
 * and writes the last (payment_outcomes_record) there: see "outcomes
 * written by the caller" at the end.
 */
#include "payments/payments_int.h"

#include "locks/locks.h"
#include "outbox/outbox.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* The transactions of the operations; the hot ones run in batches. */
enum pay_phase {
    PH_AUTHORIZE_BEGIN,
    PH_AUTHORIZE_END,
    PH_SETTLE_BEGIN, /* capture and void */
    PH_SETTLE_END,
    PH_REFUND_BEGIN,
    PH_REFUND_END,
};

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
    char fingerprint[65]; /* authorize */
    char psp_key[STORE_IDEM_KEY_MAX + 16];
    char refund_id[PAYMENT_ID_LEN + 1];
    bool replay; /* answered before: no PSP call */
    bool asked;  /* the PSP was called by this operation (its answer is fresh) */
    bool fenced; /* the caller raised the fence (payment_prepare): not before the PSP */
    /* Its outcome is written after the one it followed (settle's `after`),
     * in the same transaction and under the same token: that one's fence
     * stands for both. */
    bool fenced_before;
    bool unmoved; /* the outcome found the payment moved by someone else */
    struct payments__psp_answer answer;
    /* The caller's trace (its thread's log context when it asked), which
     * the payment's event carries whichever thread writes it. */
    char traceparent[64];
    json_t *out;
    /* A phase carried by a batch: its verdict, or `alone` (run it alone). */
    enum pay_phase phase;
    enum err rc;
    struct bb_error err;
    bool alone;
};

/* ---- shared steps ---------------------------------------------------------------------- */

static void
fence_key(const char *order_id, char key[160])
{
    snprintf(key, 160, PAYMENT_FENCE_PREFIX "%s", order_id);
}

static enum err
fence(struct store_conn *c, const struct pay_op *op, const char *order_id, struct bb_error *e)
{
    if (op->lock_token <= 0)
        return ERR_OK;
    char key[160];
    fence_key(order_id, key);
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
    enum err rc = op->fenced_before ? ERR_OK : fence(c, op, op->row.order_id, e);
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

/* The caller's trace into op (at its start, on the caller's thread). */
static void
op_traced(struct pay_op *op)
{
    const char *tp = bb_log_context_traceparent();
    bb_strlcpy(op->traceparent, tp ? tp : "", sizeof op->traceparent);
}

/* The payment's event: authorized, failed, captured, voided, refunded. */
static struct outbox_event
payment_event(const char *type, const struct pay_op *op, json_t *data)
{
    const struct payments__row *row = &op->row;
    json_object_set_new(data, "payment_id", json_string(row->id));
    json_object_set_new(data, "order_id", json_string(row->order_id));
    json_object_set_new(data, "currency", json_string(row->currency));
    return (struct outbox_event){.type = type,
                                 .aggregate_type = "payment",
                                 .aggregate_id = row->id,
                                 .data = data,
                                 .traceparent = op->traceparent[0] ? op->traceparent : NULL};
}

static enum err
announce(struct store_conn *c, const char *type, const struct pay_op *op, json_t *data,
         struct bb_error *e)
{
    struct outbox_event ev = payment_event(type, op, data);
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

/* The PSP refused the call: its key is on record for another amount (a
 * capture's, when a capture of the authorization was asked for before with
 * another amount; the ledger learned it if the PSP made it). */
static enum err
psp_refused_amount(const struct pay_op *op, struct bb_error *e)
{
    const struct payments__psp_answer *a = &op->answer;
    return bb_fail(e, ERR_CONFLICT, "amount",
                   "%s of payment %s for %" PRId64 " is refused: the PSP was asked the same for"
                   " %" PRId64 " before%s",
                   op->op, op->row.id, op->amount, a->recorded_amount,
                   a->captured > 0 ? ", and captured that" : "; retry with that amount");
}

/* After a PSP error or timeout: the payment stays as it was. */
static enum err
psp_failed(const struct pay_op *op, struct bb_error *e)
{
    const struct payments__psp_answer *a = &op->answer;
    return bb_fail(e, a->outcome == PSP_TIMEOUT ? ERR_TIMEOUT : ERR_UPSTREAM, "",
                   "%s of payment %s: %s; retry with the same key", op->op, op->row.id, a->reason);
}

static enum err
read_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    return payment_get_json(c, op->row.id, &op->out, e);
}

/* The end of every operation: the payment's JSON into *out (when it
 * exists, whatever the outcome; out NULL: not wanted) and the failure
 * counted. A PSP failure counts once, when the PSP answered it to this
 * operation: a replay of a declined key is the same decline, not another. */
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
        bool psp; /* the PSP's answer: counted only when fresh */
    } reasons[] = {{ERR_PAYMENT_DECLINED, "declined", true},
                   {ERR_UPSTREAM, "psp_error", true},
                   {ERR_TIMEOUT, "timeout", true},
                   {ERR_STALE_TOKEN, "stale_token", false}};
    for (size_t i = 0; i < BB_ARRAY_LEN(reasons); i++) {
        if (reasons[i].rc == rc && (op->asked || !reasons[i].psp))
            payments__metric_failure(reasons[i].reason);
    }
    if (rc == ERR_STALE_TOKEN)
        lock_metric_fence_refused();
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
    op->asked = true;
    payments__metric_attempt(op->op, op->answer.outcome, op->answer.latency_ms);
}

/* What the second transaction does to the payment after the PSP answered. */
struct outcome_plan {
    bool move;
    enum payment_state to;
    const char *reference, *reason;
    int64_t captured;
    const char *event;
    json_t *data; /* the event's (owned) */
};

/* The PSP settled the authorization the other way before: a capture or
 * void whose answer was lost. */
static bool
settled_before(const struct payments__psp_answer *a)
{
    return a->outcome == PSP_DECLINED && (a->captured > 0 || a->voided);
}

/* Authorize and settle (capture, void) only; nothing moves after a PSP
 * error or timeout. */
static struct outcome_plan
plan_outcome(const struct pay_op *op)
{
    const struct payments__psp_answer *a = &op->answer;
    struct outcome_plan pl = {0};
    if (strcmp(op->op, "authorize") == 0) {
        if (a->outcome == PSP_ERROR || a->outcome == PSP_TIMEOUT || a->other_amount)
            return pl;
        bool approved = a->outcome == PSP_APPROVED;
        pl = (struct outcome_plan){.move = true,
                                   .to = approved ? PAYMENT_AUTHORIZED : PAYMENT_FAILED,
                                   .reference = approved ? a->reference : NULL,
                                   .reason = approved ? NULL : a->reason,
                                   .event =
                                       approved ? "payment.authorized.v1" : "payment.failed.v1"};
        pl.data = json_pack("{s:I}", "amount", (json_int_t)op->row.amount);
        json_object_set_new(pl.data, approved ? "psp_reference" : "reason",
                            json_string(approved ? a->reference : a->reason));
        return pl;
    }
    if (a->outcome != PSP_APPROVED && !settled_before(a))
        return pl;
    /* Approved, or the ledger learns the settlement it missed; and the
     * authorization's reference, when its own answer was lost (a void of
     * a PENDING payment). */
    bool capture = settled_before(a) ? a->captured > 0 : strcmp(op->op, "capture") == 0;
    int64_t amount = settled_before(a) ? a->captured : op->amount;
    return (struct outcome_plan){.move = true,
                                 .to = capture ? PAYMENT_CAPTURED : PAYMENT_VOIDED,
                                 .reference = a->authorization[0] ? a->authorization : NULL,
                                 .captured = capture ? amount : 0,
                                 .event = capture ? "payment.captured.v1" : "payment.voided.v1",
                                 .data = capture ? json_pack("{s:I}", "amount", (json_int_t)amount)
                                                 : json_object()};
}

/* The second transaction of authorize, capture and void. */
static enum err
outcome_end(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    op->unmoved = false;
    enum err rc = outcome_begin(c, op, e);
    struct outcome_plan pl = plan_outcome(op);
    if (rc != ERR_OK || !pl.move) {
        json_decref(pl.data);
        return rc;
    }
    bool moved;
    rc = move(c, op, pl.to, pl.reference, pl.reason, pl.captured, &moved, e);
    if (rc == ERR_OK && !moved) {
        json_decref(pl.data);
        /* A concurrent call recorded it (the same answer, or the PSP's
         * refusal of this one that names it): what it says now. Another
         * try would find the same state moved again. */
        op->unmoved = true;
        return payments__row_get(c, op->row.id, &op->row, e);
    }
    if (rc != ERR_OK) {
        json_decref(pl.data);
        return rc;
    }
    op->row.state = pl.to;
    return announce(c, pl.event, op, pl.data, e);
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

/* The end of the first transaction, once the payment's row is read. */
static enum err
authorize_decide(struct pay_op *op, struct bb_error *e)
{
    if (strcmp(op->row.fingerprint, op->fingerprint) != 0)
        return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "idempotency_key",
                       "idempotency_key %s was already used for another payment",
                       op->req->idempotency_key);
    op->replay = op->row.state != PAYMENT_PENDING;
    snprintf(op->psp_key, sizeof op->psp_key, "authorize:%s", op->row.key);
    return ERR_OK;
}

static enum err
authorize_begin(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    const struct payment_request *req = op->req;
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
                                        sp_text(op->fingerprint),
                                        sp_int(req->amount),
                                        sp_text(req->currency),
                                        sp_text(req->card),
                                        sp_int(now)};
        if (rc == ERR_OK)
            rc = store_exec(c, &PAYMENT_INSERT, p, BB_ARRAY_LEN(p), NULL, e);
        if (rc == ERR_OK)
            rc = payments__row_by_key(c, req->idempotency_key, &op->row, &found, e);
    }
    return rc == ERR_OK ? authorize_decide(op, e) : rc;
}

/* The first step of authorize for an intent the caller saw committed: the
 * row as payment_prepare wrote it. */
static enum err
intent_as_written(struct pay_op *op, struct bb_error *e)
{
    const struct payment_request *req = op->req;
    struct payments__row *row = &op->row;
    *row = (struct payments__row){.amount = req->amount, .state = PAYMENT_PENDING};
    bb_strlcpy(row->id, req->intent_id, sizeof row->id);
    bb_strlcpy(row->order_id, req->order_id, sizeof row->order_id);
    bb_strlcpy(row->key, req->idempotency_key, sizeof row->key);
    bb_strlcpy(row->fingerprint, op->fingerprint, sizeof row->fingerprint);
    bb_strlcpy(row->currency, req->currency, sizeof row->currency);
    bb_strlcpy(row->card, req->card ? req->card : "", sizeof row->card);
    return authorize_decide(op, e);
}

static enum err run(struct pay_op *op, enum pay_phase phase, struct bb_error *e);
static struct payment_outcome *outcome_keep(const struct pay_op *op);

/* The end of an operation: its second transaction, or (pending not NULL)
 * the outcome kept for the caller's, the row as that would leave it. */
static enum err
outcome(struct pay_op *op, enum pay_phase phase, struct payment_outcome **pending,
        struct bb_error *e)
{
    if (pending == NULL)
        return run(op, phase, e);
    *pending = outcome_keep(op);
    struct outcome_plan pl = plan_outcome(op);
    json_decref(pl.data);
    if (pl.move)
        op->row.state = pl.to;
    return ERR_OK;
}

static enum err
authorize(struct payments *p, const struct payment_request *req, char id[PAYMENT_ID_LEN + 1],
          struct payment_outcome **pending, json_t **out, struct bb_error *e)
{
    struct pay_op op = {.p = p,
                        .op = "authorize",
                        .req = req,
                        .lock_token = req->lock_token,
                        .amount = req->amount};
    op_traced(&op);
    if (req->amount < 1) { /* the HTTP layer's rule, for callers in process too */
        if (id)
            id[0] = '\0';
        if (out)
            *out = NULL;
        return bb_fail(e, ERR_INVALID, "amount", "amount %" PRId64 " must be at least 1",
                       req->amount);
    }
    request_fingerprint(req, op.fingerprint);
    enum err rc = req->intent_id ? intent_as_written(&op, e) : run(&op, PH_AUTHORIZE_BEGIN, e);
    if (rc == ERR_OK && !op.replay) {
        psp_ask(&op);
        rc = outcome(&op, PH_AUTHORIZE_END, pending, e);
        if (rc == ERR_OK && (op.answer.outcome == PSP_ERROR || op.answer.outcome == PSP_TIMEOUT))
            rc = psp_failed(&op, e);
        else if (rc == ERR_OK && op.answer.other_amount)
            rc = psp_refused_amount(&op, e);
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

enum err
payment_authorize(struct payments *p, const struct payment_request *req,
                  char id[PAYMENT_ID_LEN + 1], json_t **out, struct bb_error *e)
{
    return authorize(p, req, id, NULL, out, e);
}

enum err
payment_authorize_deferred(struct payments *p, const struct payment_request *req,
                           char id[PAYMENT_ID_LEN + 1], struct payment_outcome **pending,
                           struct bb_error *e)
{
    *pending = NULL;
    return authorize(p, req, id, pending, NULL, e);
}

/* ---- capture and void ------------------------------------------------------------------- */

/* The end of the first step of capture and void, once the row is read and
 * fenced: check the table. */
static enum err
settle_decide(struct pay_op *op, struct bb_error *e)
{
    bool capture = strcmp(op->op, "capture") == 0;
    enum payment_state s = op->row.state;
    snprintf(op->psp_key, sizeof op->psp_key, "%s:%s", op->op, op->row.key);
    if (capture) {
        op->replay = s == PAYMENT_CAPTURED || s == PAYMENT_REFUNDED;
        if (op->amount == 0)
            op->amount = op->row.amount;
        /* A repeat is answered as is only when it asks what was done. */
        if (op->replay && op->amount != op->row.captured)
            return bb_fail(e, ERR_CONFLICT, "amount",
                           "payment %s was captured for %" PRId64 ", not %" PRId64, op->row.id,
                           op->row.captured, op->amount);
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

static enum err
settle_begin(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_op *op = arg;
    enum err rc = payments__row_get(c, op->payment_id, &op->row, e);
    if (rc == ERR_OK && !op->fenced)
        rc = fence(c, op, op->row.order_id, e);
    return rc == ERR_OK ? settle_decide(op, e) : rc;
}

/* An outcome kept for the caller to write. */
struct payment_outcome {
    struct pay_op op;
    enum payment_state from; /* the row's state before the outcome */
    bool refusal_counted;    /* its fence refused it: counted once, however often it ran */
};

/* The payment as o leaves it once written. */
static struct payments__row
outcome_row(const struct payment_outcome *o)
{
    struct payments__row row = o->op.row;
    row.state = o->from;
    struct outcome_plan pl = plan_outcome(&o->op);
    json_decref(pl.data);
    if (pl.move) {
        row.state = pl.to;
        row.captured += pl.captured;
    }
    return row;
}

/* after (not NULL): the payment is as that outcome, not written yet, leaves
 * it; it is not read (unless the outcome is another payment's). */
static enum err
settle(struct payments *p, const char *op_name, const char *payment_id, int64_t amount,
       int64_t lock_token, const struct payment_outcome *after, struct payment_outcome **pending,
       json_t **out, struct bb_error *e)
{
    struct pay_op op = {.p = p,
                        .op = op_name,
                        .payment_id = payment_id,
                        .amount = amount,
                        .lock_token = lock_token,
                        .fenced = pending != NULL};
    op_traced(&op);
    if (after && strcmp(after->op.row.id, payment_id) == 0) {
        op.row = outcome_row(after);
        op.fenced_before = after->op.lock_token == lock_token;
    } else {
        after = NULL;
    }
    enum err rc = after ? settle_decide(&op, e) : run(&op, PH_SETTLE_BEGIN, e);
    if (rc == ERR_OK && !op.replay) {
        psp_ask(&op);
        rc = outcome(&op, PH_SETTLE_END, pending, e);
        if (rc == ERR_OK && op.answer.other_amount && !op.answer.voided)
            rc = psp_refused_amount(&op, e);
        else if (rc == ERR_OK && settled_before(&op.answer))
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
    return settle(p, "capture", payment_id, amount, lock_token, NULL, NULL, out, e);
}

enum err
payment_capture_deferred(struct payments *p, const char *payment_id, int64_t amount,
                         int64_t lock_token, const struct payment_outcome *after,
                         struct payment_outcome **pending, struct bb_error *e)
{
    *pending = NULL;
    return settle(p, "capture", payment_id, amount, lock_token, after, pending, NULL, e);
}

enum err
payment_void(struct payments *p, const char *payment_id, int64_t lock_token, json_t **out,
             struct bb_error *e)
{
    return settle(p, "void", payment_id, 0, lock_token, NULL, NULL, out, e);
}

/* ---- refunds ---------------------------------------------------------------------------- */

static struct store_stmt REFUND_BY_KEY = {
    .sql = "SELECT id, payment_id, amount, state FROM payment_refunds WHERE idempotency_key = $1",
};
/* Reserve the amount on the payment first: two refunds cannot both take
 * what remains. The reservation stays until the PSP approves the refund (a
 * refund that failed or timed out is retried with its key, and the PSP may
 * have made it already); only then does it count as refunded. */
static struct store_stmt REFUND_RESERVE = {
    .sql = "UPDATE payments SET refund_pending_amount = refund_pending_amount + $2,"
           " updated_at_ms = $3 WHERE id = $1 AND state = 'CAPTURED'"
           " AND refunded_amount + refund_pending_amount + $2 <= captured_amount",
};
/* A concurrent refund with the same key may have inserted it since the
 * key was looked up: nothing is inserted then (see refund_begin). */
static struct store_stmt REFUND_INSERT = {
    .sql = "INSERT INTO payment_refunds (id, payment_id, idempotency_key, amount, state,"
           " created_at_ms) VALUES ($1, $2, $3, $4, 'pending', $5)"
           " ON CONFLICT (idempotency_key) DO NOTHING",
};
static struct store_stmt REFUND_DONE = {
    .sql = "UPDATE payment_refunds SET state = 'succeeded' WHERE id = $1 AND state = 'pending'",
};
/* The refund approved: its reservation becomes refunded. */
static struct store_stmt REFUND_SETTLE = {
    .sql = "UPDATE payments SET refunded_amount = refunded_amount + $2,"
           " refund_pending_amount = refund_pending_amount - $2, updated_at_ms = $3"
           " WHERE id = $1 AND refund_pending_amount >= $2",
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
        int64_t left = op->row.captured - op->row.refunded - op->row.refund_pending;
        if (op->amount == 0)
            op->amount = left;
        if (op->amount > left || op->amount <= 0)
            return bb_fail(e, ERR_INVALID, "amount",
                           "amount %" PRId64 " is more than the %" PRId64
                           " left to refund (%" PRId64 " is held by refunds still pending)",
                           op->amount, left, op->row.refund_pending);
        int64_t now = bb_wall_ms(), changed = 0;
        bb_uuid7_at(now, op->refund_id);
        const struct store_param p[] = {sp_text(op->row.id), sp_int(op->amount), sp_int(now)};
        rc = store_exec(c, &REFUND_RESERVE, p, BB_ARRAY_LEN(p), &changed, e);
        if (rc == ERR_OK && changed != 1)
            return bb_fail(e, ERR_RETRY, "", "payment %s changed concurrently", op->row.id);
        const struct store_param q[] = {sp_text(op->refund_id), sp_text(op->row.id),
                                        sp_text(op->key), sp_int(op->amount), sp_int(now)};
        if (rc == ERR_OK)
            rc = store_exec(c, &REFUND_INSERT, q, BB_ARRAY_LEN(q), &changed, e);
        /* The key was taken by a refund that committed after the lookup (on
         * PostgreSQL, concurrent transactions do not see each other): run
         * again, rolling the reservation back, and answer as that one. */
        if (rc == ERR_OK && changed != 1)
            return bb_fail(e, ERR_RETRY, "", "refund key %s was used concurrently", op->key);
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
    const struct store_param q[] = {sp_text(op->row.id), sp_int(op->amount), sp_int(bb_wall_ms())};
    rc = store_exec(c, &REFUND_SETTLE, q, BB_ARRAY_LEN(q), &changed, e);
    if (rc == ERR_OK && changed != 1)
        return bb_fail(e, ERR_INTERNAL, "", "refund %s of payment %s had no reservation",
                       op->refund_id, op->row.id);
    if (rc == ERR_OK)
        rc = payments__row_get(c, op->row.id, &op->row, e);
    if (rc == ERR_OK && op->row.refunded == op->row.captured) {
        bool moved;
        rc = move(c, op, PAYMENT_REFUNDED, NULL, NULL, 0, &moved, e);
    }
    if (rc != ERR_OK)
        return rc;
    return announce(c, "payment.refunded.v1", op,
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
    op_traced(&op);
    enum err rc = run(&op, PH_REFUND_BEGIN, e);
    if (rc == ERR_OK && !op.replay) {
        psp_ask(&op);
        rc = run(&op, PH_REFUND_END, e);
        if (rc == ERR_OK && op.answer.other_amount)
            rc = psp_refused_amount(&op, e);
        else if (rc == ERR_OK && op.answer.outcome != PSP_APPROVED)
            rc = psp_failed(&op, e);
    }
    return conclude(&op, rc, out);
}

/* ---- batches -----------------------------------------------------------------------------
 *
 * Operations in the same phase at the same time share a transaction, with
 * one statement per table for all of them (the combiner in payments_create
 * gathers them while earlier batches hold the connections). Members never
 * share an order in a batch (the combiner leaves the second for a later
 * one), so each batch writes a row once; the fences are taken in key order,
 * so batches that overlap wait on one another in one direction. A member
 * that fails writes nothing; one whose row moved under it (or, for capture
 * and void, whose order turns out to be another member's once the rows are
 * read) runs its phase alone afterwards, and so does every member of a
 * batch that fails as a whole.
 */

struct pay_batch {
    struct pay_op **m;
    size_t n;
};

/* A batch of (id, order_id, key, fingerprint, amount, currency, card), then
 * now. */
static struct store_stmt PAYMENT_INSERT_MANY = {
    .sql_pg = "INSERT INTO payments (id, order_id, idempotency_key, fingerprint, amount, currency,"
              " card, state, created_at_ms, updated_at_ms)"
              " SELECT id, order_id, key, fingerprint, amount, currency, card, 'PENDING', $8, $8"
              " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],"
              " $6::text[], $7::text[]) AS x(id, order_id, key, fingerprint, amount, currency,"
              " card) ORDER BY key"
              " ON CONFLICT (idempotency_key) DO NOTHING",
    .sql_sqlite = "INSERT INTO payments (id, order_id, idempotency_key, fingerprint, amount,"
                  " currency, card, state, created_at_ms, updated_at_ms)"
                  " SELECT value ->> 'id', value ->> 'order_id', value ->> 'key',"
                  " value ->> 'fingerprint', value ->> 'amount', value ->> 'currency',"
                  " value ->> 'card', 'PENDING', $2, $2 FROM json_each($1) WHERE true"
                  " ORDER BY value ->> 'key' ON CONFLICT (idempotency_key) DO NOTHING",
};
/* A batch of (id, from_state, to_state, reference, reason, captured), then
 * now. */
static struct store_stmt PAYMENT_MOVE_MANY = {
    .sql_pg = "UPDATE payments p SET state = x.to_state, updated_at_ms = $7,"
              " psp_reference = COALESCE(x.reference, p.psp_reference),"
              " failure_reason = COALESCE(x.reason, p.failure_reason),"
              " captured_amount = p.captured_amount + x.captured"
              " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
              " $6::bigint[]) AS x(id, from_state, to_state, reference, reason, captured)"
              " WHERE p.id = x.id AND p.state = x.from_state RETURNING p.id",
    .sql_sqlite = "UPDATE payments SET state = x.to_state, updated_at_ms = $2,"
                  " psp_reference = COALESCE(x.reference, payments.psp_reference),"
                  " failure_reason = COALESCE(x.reason, payments.failure_reason),"
                  " captured_amount = payments.captured_amount + x.captured"
                  " FROM (SELECT value ->> 'id' AS id, value ->> 'from_state' AS from_state,"
                  " value ->> 'to_state' AS to_state, value ->> 'reference' AS reference,"
                  " value ->> 'reason' AS reason, value ->> 'captured' AS captured"
                  " FROM json_each($1)) AS x"
                  " WHERE payments.id = x.id AND payments.state = x.from_state"
                  " RETURNING payments.id",
};
/* A batch of (payment_id, op, outcome, latency_ms, detail), then now. */
static struct store_stmt ATTEMPT_INSERT_MANY = {
    .sql_pg = "INSERT INTO payment_attempts (payment_id, op, outcome, latency_ms, detail, at_ms)"
              " SELECT payment_id, op, outcome, latency_ms, detail, $6"
              " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])"
              " AS x(payment_id, op, outcome, latency_ms, detail)",
    .sql_sqlite = "INSERT INTO payment_attempts (payment_id, op, outcome, latency_ms, detail,"
                  " at_ms) SELECT value ->> 'payment_id', value ->> 'op', value ->> 'outcome',"
                  " value ->> 'latency_ms', value ->> 'detail', $2 FROM json_each($1)",
};

/* A batch's transaction may run more than once (a conflict retried). */
static void
batch_reset(struct pay_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        b->m[i]->rc = ERR_OK;
        bb_error_clear(&b->m[i]->err);
        b->m[i]->alone = false;
        b->m[i]->unmoved = false;
    }
}

/* Neither failed nor set aside. */
static bool
live(const struct pay_op *op)
{
    return op->rc == ERR_OK && !op->alone;
}

/* Set aside the live members whose row's order an earlier member has
 * (capture and void learn the order only from the rows they read). */
static void
set_aside_same_order(struct pay_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        for (size_t j = 0; j < i && live(b->m[i]); j++)
            if (live(b->m[j]) && strcmp(b->m[j]->row.order_id, b->m[i]->row.order_id) == 0)
                b->m[i]->alone = true;
}

/* Fence the live members that carry a token, by order_ids[i] (NULL: not
 * this one); a member refused fails. */
static enum err
fence_many(struct store_conn *c, struct pay_batch *b, const char *const *order_ids,
           struct bb_error *e)
{
    size_t n = b->n, k = 0;
    char(*keys)[160] = xcalloc(n, sizeof *keys);
    const char **kp = xcalloc(n, sizeof *kp);
    int64_t *tokens = xcalloc(n, sizeof *tokens);
    enum err *verdict = xcalloc(n, sizeof *verdict);
    struct bb_error *errs = xcalloc(n, sizeof *errs);
    size_t *idx = xcalloc(n, sizeof *idx);
    for (size_t i = 0; i < n; i++) {
        if (order_ids[i] == NULL || !live(b->m[i]) || b->m[i]->lock_token <= 0)
            continue;
        fence_key(order_ids[i], keys[k]);
        kp[k] = keys[k];
        tokens[k] = b->m[i]->lock_token;
        idx[k++] = i;
    }
    enum err rc =
        k == 0 ? ERR_OK : lock_fence_check_many(c, kp, tokens, k, bb_wall_ms(), verdict, errs, e);
    for (size_t j = 0; j < k && rc == ERR_OK; j++) {
        b->m[idx[j]]->rc = verdict[j];
        if (verdict[j] != ERR_OK)
            b->m[idx[j]]->err = errs[j];
    }
    free(idx);
    free(errs);
    free(verdict);
    free(tokens);
    free(kp);
    free(keys);
    return rc;
}

/* Read the members' rows by idempotency key (by_key) or payment id. */
static enum err
read_rows(struct store_conn *c, struct pay_batch *b, bool by_key, bool *found, struct bb_error *e)
{
    const char **keys = xcalloc(b->n, sizeof *keys);
    struct payments__row **rows = xcalloc(b->n, sizeof *rows);
    for (size_t i = 0; i < b->n; i++) {
        keys[i] = by_key ? b->m[i]->req->idempotency_key : b->m[i]->payment_id;
        rows[i] = &b->m[i]->row;
    }
    enum err rc = payments__rows_read_many(c, by_key, keys, b->n, rows, found, e);
    free(rows);
    free(keys);
    return rc;
}

/* The intents (PENDING rows) of the live members but those `skip` names,
 * with one statement (a key used already keeps its row); *n how many. */
static enum err
insert_intents(struct store_conn *c, struct pay_batch *b, const bool *skip, size_t *n,
               struct bb_error *e)
{
    struct store_batch fresh;
    store_batch_init(&fresh, c, 7);
    int64_t now = bb_wall_ms();
    for (size_t i = 0; i < b->n; i++) {
        const struct payment_request *req = b->m[i]->req;
        if ((skip && skip[i]) || !live(b->m[i]))
            continue;
        char id[37];
        if (req->intent_id)
            bb_strlcpy(id, req->intent_id, sizeof id);
        else
            bb_uuid7_at(now, id);
        store_batch_row(&fresh);
        store_batch_text(&fresh, "id", id);
        store_batch_text(&fresh, "order_id", req->order_id);
        store_batch_text(&fresh, "key", req->idempotency_key);
        store_batch_text(&fresh, "fingerprint", b->m[i]->fingerprint);
        store_batch_int(&fresh, "amount", req->amount);
        store_batch_text(&fresh, "currency", req->currency);
        store_batch_text(&fresh, "card", req->card);
    }
    *n = fresh.n_rows;
    const struct store_param p[] = {sp_batch(&fresh), sp_int(now)};
    enum err rc =
        *n == 0 ? ERR_OK : store_exec_deferred(c, &PAYMENT_INSERT_MANY, p, BB_ARRAY_LEN(p), e);
    store_batch_deinit(&fresh);
    return rc;
}

static enum err
authorize_begin_many(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_batch *b = arg;
    batch_reset(b);
    bool *found = xcalloc(b->n, sizeof *found);
    const char **orders = xcalloc(b->n, sizeof *orders);
    enum err rc = read_rows(c, b, true, found, e);
    for (size_t i = 0; i < b->n; i++)
        orders[i] = found[i] ? NULL : b->m[i]->req->order_id;
    if (rc == ERR_OK)
        rc = fence_many(c, b, orders, e);
    size_t inserted = 0;
    if (rc == ERR_OK)
        rc = insert_intents(c, b, found, &inserted, e);
    if (rc == ERR_OK && inserted > 0)
        rc = read_rows(c, b, true, found, e);
    for (size_t i = 0; i < b->n && rc == ERR_OK; i++) {
        struct pay_op *op = b->m[i];
        if (live(op) && !found[i])
            op->alone = true; /* not there after the insert: let it try alone */
        else if (live(op))
            op->rc = authorize_decide(op, &op->err);
    }
    free(orders);
    free(found);
    return rc;
}

static enum err
settle_begin_many(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_batch *b = arg;
    batch_reset(b);
    bool *found = xcalloc(b->n, sizeof *found);
    const char **orders = xcalloc(b->n, sizeof *orders);
    enum err rc = read_rows(c, b, false, found, e);
    for (size_t i = 0; i < b->n && rc == ERR_OK; i++)
        if (!found[i])
            b->m[i]->rc = bb_fail(&b->m[i]->err, ERR_NOT_FOUND, "authorization_id", "no payment %s",
                                  b->m[i]->payment_id);
    set_aside_same_order(b);
    for (size_t i = 0; i < b->n; i++)
        orders[i] = b->m[i]->fenced ? NULL : b->m[i]->row.order_id;
    if (rc == ERR_OK)
        rc = fence_many(c, b, orders, e);
    for (size_t i = 0; i < b->n && rc == ERR_OK; i++)
        if (live(b->m[i]))
            b->m[i]->rc = settle_decide(b->m[i], &b->m[i]->err);
    free(orders);
    free(found);
    return rc;
}

/* Which members' rows the move changed: moved[i]. */
static enum err
move_many(struct store_conn *c, struct pay_batch *b, const struct outcome_plan *plans, bool *moved,
          struct bb_error *e)
{
    struct store_batch moves;
    store_batch_init(&moves, c, 6);
    for (size_t i = 0; i < b->n; i++) {
        moved[i] = false;
        const struct pay_op *op = b->m[i];
        if (!live(op) || !plans[i].move)
            continue;
        store_batch_row(&moves);
        store_batch_text(&moves, "id", op->row.id);
        store_batch_text(&moves, "from_state", payment_state_name(op->row.state));
        store_batch_text(&moves, "to_state", payment_state_name(plans[i].to));
        store_batch_text(&moves, "reference", plans[i].reference);
        store_batch_text(&moves, "reason", plans[i].reason);
        store_batch_int(&moves, "captured", plans[i].captured);
    }
    if (moves.n_rows == 0) {
        store_batch_deinit(&moves);
        return ERR_OK;
    }
    const struct store_param p[] = {sp_batch(&moves), sp_int(bb_wall_ms())};
    struct store_rows r;
    enum err rc = store_query(c, &PAYMENT_MOVE_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&moves);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r))
        for (size_t i = 0; i < b->n; i++)
            if (live(b->m[i]) && strcmp(b->m[i]->row.id, store_col_text(&r, 0)) == 0)
                moved[i] = true;
    store_rows_close(&r);
    return ERR_OK;
}

/* Every live member's PSP call, as an attempt. */
static enum err
attempts_many(struct store_conn *c, struct pay_batch *b, struct bb_error *e)
{
    struct store_batch rows;
    store_batch_init(&rows, c, 5);
    for (size_t i = 0; i < b->n; i++) {
        const struct pay_op *op = b->m[i];
        const struct payments__psp_answer *a = &op->answer;
        if (!live(op))
            continue;
        store_batch_row(&rows);
        store_batch_text(&rows, "payment_id", op->row.id);
        store_batch_text(&rows, "op", op->op);
        store_batch_text(&rows, "outcome", payments__psp_outcome_name(a->outcome));
        store_batch_int(&rows, "latency_ms", a->latency_ms);
        store_batch_text(&rows, "detail", a->reason[0] ? a->reason : NULL);
    }
    enum err rc = ERR_OK;
    if (rows.n_rows > 0) {
        const struct store_param p[] = {sp_batch(&rows), sp_int(bb_wall_ms())};
        rc = store_exec_deferred(c, &ATTEMPT_INSERT_MANY, p, BB_ARRAY_LEN(p), e);
    }
    store_batch_deinit(&rows);
    return rc;
}

/* outcome_end for a batch: fence, move, attempts, events. */
static enum err
outcome_end_many(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct pay_batch *b = arg;
    size_t n = b->n;
    batch_reset(b); /* its members' orders are distinct: the combiner's conflicts */
    const char **orders = xcalloc(n, sizeof *orders);
    for (size_t i = 0; i < n; i++)
        orders[i] = b->m[i]->fenced_before ? NULL : b->m[i]->row.order_id;
    enum err rc = fence_many(c, b, orders, e);
    struct outcome_plan *plans = xcalloc(n, sizeof *plans);
    bool *moved = xcalloc(n, sizeof *moved);
    for (size_t i = 0; i < n; i++)
        if (live(b->m[i]))
            plans[i] = plan_outcome(b->m[i]);
    if (rc == ERR_OK)
        rc = move_many(c, b, plans, moved, e);
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        struct pay_op *op = b->m[i];
        if (!live(op) || !plans[i].move || moved[i])
            continue;
        op->unmoved = true;
        if (strcmp(op->op, "authorize") == 0) /* a concurrent retry recorded it */
            rc = payments__row_get(c, op->row.id, &op->row, e);
        else
            op->alone = true; /* changed concurrently: alone, it reads what moved it */
    }
    if (rc == ERR_OK)
        rc = attempts_many(c, b, e);
    struct outbox_event *evs = xcalloc(n, sizeof *evs);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == ERR_OK && live(b->m[i]) && moved[i]) {
            b->m[i]->row.state = plans[i].to;
            evs[k++] = payment_event(plans[i].event, b->m[i], plans[i].data);
        } else {
            json_decref(plans[i].data);
        }
    }
    if (rc == ERR_OK && k > 0)
        rc = outbox_append_many(c, evs, k, bb_wall_ms(), e);
    outbox_events_free(evs, k);
    free(moved);
    free(plans);
    free(orders);
    return rc;
}

struct phase_def {
    store_work_fn *one;  /* one operation's transaction */
    store_work_fn *many; /* a struct pay_batch's; NULL: always alone */
};
static const struct phase_def PHASES[] = {
    [PH_AUTHORIZE_BEGIN] = {authorize_begin, authorize_begin_many},
    [PH_AUTHORIZE_END] = {outcome_end, outcome_end_many},
    [PH_SETTLE_BEGIN] = {settle_begin, settle_begin_many},
    [PH_SETTLE_END] = {outcome_end, outcome_end_many},
    [PH_REFUND_BEGIN] = {refund_begin, NULL},
    [PH_REFUND_END] = {refund_end, NULL},
};

/* Members that share this never ride in one batch. */
static const char *
conflict_key(const struct pay_op *op)
{
    switch (op->phase) {
    case PH_AUTHORIZE_BEGIN:
        return op->req->order_id;
    case PH_SETTLE_BEGIN:
        return op->payment_id;
    default:
        return op->row.order_id;
    }
}

static bool
same_phase(const void *a, const void *b, void *ctx)
{
    (void)ctx;
    return ((const struct pay_op *)a)->phase == ((const struct pay_op *)b)->phase;
}

static bool
same_order(const void *a, const void *b, void *ctx)
{
    (void)ctx;
    return strcmp(conflict_key(a), conflict_key(b)) == 0;
}

/* The combiner's run: one phase for the operations it gathered. */
static void
carry(void **items, size_t n, void *ctx)
{
    struct payments *p = ctx;
    struct pay_op **m = xcalloc(n, sizeof *m);
    for (size_t i = 0; i < n; i++)
        m[i] = items[i];
    const struct phase_def *ph = &PHASES[m[0]->phase];
    if (n == 1) {
        m[0]->rc = store_run(p->store, STORE_WRITE, ph->one, m[0], &m[0]->err);
    } else {
        struct pay_batch b = {.m = m, .n = n};
        struct bb_error e;
        enum err rc = store_run(p->store, STORE_WRITE, ph->many, &b, &e);
        payments__metric_batch("ledger", n, rc == ERR_OK);
        if (rc != ERR_OK) {
            log_debug("payments.batch_failed", "members=%zu detail=%s", n, e.detail);
            for (size_t i = 0; i < n; i++)
                m[i]->alone = true;
        }
    }
    free(m);
}

/* Run a phase's transaction: in a batch when others are at it too, else
 * (or when the batch sets it aside) alone. */
static enum err
run(struct pay_op *op, enum pay_phase phase, struct bb_error *e)
{
    const struct phase_def *ph = &PHASES[phase];
    op->phase = phase;
    op->alone = false;
    if (ph->many && op->p->combiner && bb_combine(op->p->combiner, op) && !op->alone) {
        if (op->rc != ERR_OK)
            *e = op->err;
        return op->rc;
    }
    return store_run(op->p->store, STORE_WRITE, ph->one, op, e);
}

void
payments__batching_start(struct payments *p, size_t batch_max)
{
    if (batch_max <= 1)
        return;
    struct bb_combiner_options o = {.leaders = PAYMENTS__BATCH_LEADERS,
                                    .batch_max = batch_max,
                                    .waiting_max = PAYMENTS__BATCH_WAITING_MAX,
                                    .same = same_phase,
                                    .conflicts = same_order,
                                    .run = carry,
                                    .ctx = p,
                                    .on_waiting = payments__metric_waiting,
                                    .waiting_ctx = (void *)"ledger"};
    p->combiner = bb_combiner_create(&o);
}

/* ---- outcomes written by the caller ------------------------------------------------------ */

static struct payment_outcome *
outcome_keep(const struct pay_op *op)
{
    struct payment_outcome *o = xcalloc(1, sizeof *o);
    o->op = *op;
    o->op.req = NULL; /* the caller's; the outcome needs only the row and the answer */
    o->op.payment_id = NULL;
    o->op.out = NULL;
    o->from = op->row.state;
    return o;
}

enum err
payment_outcomes_record(struct store_conn *c, struct payment_outcome *const *outcomes, size_t n,
                        struct bb_error *e)
{
    if (n == 0)
        return ERR_OK;
    struct pay_op **m = xcalloc(n, sizeof *m);
    for (size_t i = 0; i < n; i++) {
        outcomes[i]->op.row.state = outcomes[i]->from; /* a transaction run again starts over */
        m[i] = &outcomes[i]->op;
    }
    enum err rc;
    if (n == 1)
        rc = outcome_end(c, m[0], e);
    else
        rc = outcome_end_many(c, &(struct pay_batch){.m = m, .n = n}, e);
    for (size_t i = 0; i < n; i++) {
        enum err verdict = n == 1 ? rc : rc == ERR_OK ? m[i]->rc : ERR_OK;
        if (verdict == ERR_STALE_TOKEN && !outcomes[i]->refusal_counted) {
            outcomes[i]->refusal_counted = true;
            lock_metric_fence_refused();
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct pay_op *op = m[i];
        if (op->unmoved || op->alone) {
            rc =
                bb_fail(e, ERR_CONFLICT, "", "payment %s moved while the PSP answered", op->row.id);
            break;
        }
        if (rc == ERR_OK && n > 1 && op->rc != ERR_OK) {
            *e = op->err;
            rc = op->rc;
            break;
        }
    }
    free(m);
    return rc;
}

void
payment_outcome_free(struct payment_outcome *o)
{
    free(o);
}

enum err
payment_prepare(struct store_conn *c, const struct payment_request *reqs, size_t n, bool intents,
                struct bb_error *e)
{
    if (n == 0)
        return ERR_OK;
    struct pay_op *ops = xcalloc(n, sizeof *ops);
    struct pay_op **m = xcalloc(n, sizeof *m);
    const char **orders = xcalloc(n, sizeof *orders);
    for (size_t i = 0; i < n; i++) {
        ops[i] = (struct pay_op){.req = &reqs[i], .lock_token = reqs[i].lock_token};
        /* No intent for an amount authorize refuses (not live). */
        if (reqs[i].amount < 1)
            ops[i].rc = ERR_INVALID;
        request_fingerprint(&reqs[i], ops[i].fingerprint);
        m[i] = &ops[i];
        orders[i] = reqs[i].order_id;
    }
    struct pay_batch b = {.m = m, .n = n};
    /* A request whose fence is newer is refused (not live): its deferred
     * call will be too. */
    enum err rc = fence_many(c, &b, orders, e);
    size_t inserted;
    if (rc == ERR_OK && intents)
        rc = insert_intents(c, &b, NULL, &inserted, e);
    free(orders);
    free(m);
    free(ops);
    return rc;
}
