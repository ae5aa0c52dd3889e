/*
 * test_payment_store.c: payments through the PSP mock on both engines:
 * idempotent authorizations, declines, timeouts and failures retried
 * without charging twice, the state table for capture and void, refunds,
 * fencing by the payment lock's token, a seed that repeats its answers,
 * concurrent retries of one request, operations that share a batch
 * ending as they would alone (the ledger's and the PSP mock's records), and
 * outcomes written in the caller's transactions.
 */
#include "testsupport.h"

#include "locks/locks.h"
#include "outbox/outbox.h"
#include "payments/payments.h"
#include "payments/payments_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct fixture {
    struct test_db *db;
    struct payments *p;
};

static int
setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof *f);
    f->db = test_db_create();
    struct payments_options o = {.psp_timeout_ms = 200, .threads = 2, .psp = {.seed = 7}};
    struct bb_error e;
    assert_ok(payments_create(f->db->store, &o, &f->p, &e), &e);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    payments_destroy(f->p);
    test_db_destroy(f->db);
    free(f);
    return 0;
}

static struct payment_request
request(const char *order_id, const char *key)
{
    return (struct payment_request){
        .order_id = order_id, .amount = 1500, .currency = "EUR", .idempotency_key = key};
}

/* Run a SQL count on the test database. */
static int64_t
count(struct fixture *f, const char *sql)
{
    struct store_stmt st = {.sql = sql};
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(f->db->store, &c, &e), &e);
    struct store_rows r;
    assert_ok(store_query(c, &st, NULL, 0, &r, &e), &e);
    assert_true(store_next(&r));
    int64_t n = store_col_int(&r, 0);
    store_rows_close(&r);
    store_conn_close(c);
    return n;
}

static const char *
str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void
the_state_table_allows_only_real_transitions(void **state)
{
    (void)state;
    assert_true(payment_can_transition(PAYMENT_PENDING, PAYMENT_AUTHORIZED));
    assert_true(payment_can_transition(PAYMENT_PENDING, PAYMENT_FAILED));
    assert_true(payment_can_transition(PAYMENT_AUTHORIZED, PAYMENT_CAPTURED));
    assert_true(payment_can_transition(PAYMENT_AUTHORIZED, PAYMENT_VOIDED));
    assert_true(payment_can_transition(PAYMENT_CAPTURED, PAYMENT_REFUNDED));
    assert_false(payment_can_transition(PAYMENT_VOIDED, PAYMENT_CAPTURED));
    assert_false(payment_can_transition(PAYMENT_CAPTURED, PAYMENT_VOIDED));
    assert_false(payment_can_transition(PAYMENT_FAILED, PAYMENT_AUTHORIZED));
    assert_false(payment_can_transition(PAYMENT_REFUNDED, PAYMENT_CAPTURED));
}

static void
an_authorization_happens_once_per_key(void **state)
{
    struct fixture *f = *state;
    struct payment_request req = request("o-1", "pay-o-1");
    json_t *a, *b;
    struct bb_error e;
    assert_ok(payment_authorize(f->p, &req, NULL, &a, &e), &e);
    assert_string_equal(str(a, "state"), "AUTHORIZED");
    assert_ok(payment_authorize(f->p, &req, NULL, &b, &e), &e);
    assert_string_equal(str(a, "authorization_id"), str(b, "authorization_id"));
    json_decref(b);
    char id[PAYMENT_ID_LEN + 1]; /* the id alone, as the saga asks for it */
    assert_ok(payment_authorize(f->p, &req, id, NULL, &e), &e);
    assert_string_equal(id, str(a, "authorization_id"));
    req.amount = 1600;
    assert_int_equal(payment_authorize(f->p, &req, NULL, &b, &e), ERR_IDEMPOTENCY_MISMATCH);
    json_decref(b);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments"), 1);
    json_decref(a);
}

static void
declines_fail_for_good_timeouts_and_errors_retry_without_charging_twice(void **state)
{
    struct fixture *f = *state;
    struct psp_config c = {.seed = 7, .n_decline_cards = 1, .hang_next = 1, .fail_next = 1};
    bb_strlcpy(c.decline_cards[0], "tok_stolen", sizeof c.decline_cards[0]);
    json_t *out;
    struct bb_error e;
    payments_destroy(f->p); /* (PUT /psp/config is the HTTP tests' part) */
    struct payments_options o = {.psp_timeout_ms = 200, .threads = 2, .psp = c};
    assert_ok(payments_create(f->db->store, &o, &f->p, &e), &e);
    struct payment_request hang = request("o-hang", "pay-hang");
    assert_int_equal(payment_authorize(f->p, &hang, NULL, &out, &e), ERR_TIMEOUT);
    assert_string_equal(str(out, "state"), "PENDING");
    json_decref(out);
    assert_int_equal(payment_authorize(f->p, &hang, NULL, &out, &e), ERR_UPSTREAM); /* fail_next */
    assert_string_equal(str(out, "state"), "PENDING");
    json_decref(out);
    assert_ok(payment_authorize(f->p, &hang, NULL, &out, &e), &e); /* the PSP remembers the key */
    assert_string_equal(str(out, "state"), "AUTHORIZED");
    assert_int_equal(json_array_size(json_object_get(out, "attempts")), 3);
    json_decref(out);
    struct payment_request stolen = request("o-stolen", "pay-stolen");
    stolen.card = "tok_stolen";
    assert_int_equal(payment_authorize(f->p, &stolen, NULL, &out, &e), ERR_PAYMENT_DECLINED);
    assert_string_equal(str(out, "state"), "FAILED");
    assert_string_equal(str(out, "failure_reason"), "card declined");
    json_decref(out);
    assert_int_equal(payment_authorize(f->p, &stolen, NULL, &out, &e), ERR_PAYMENT_DECLINED);
    json_decref(out);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 2);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 4);
}

static void
capture_and_void_follow_the_state_table(void **state)
{
    struct fixture *f = *state;
    struct payment_request ra = request("o-a", "pay-a"), rb = request("o-b", "pay-b");
    json_t *a, *b, *out;
    struct bb_error e;
    assert_ok(payment_authorize(f->p, &ra, NULL, &a, &e), &e);
    assert_ok(payment_authorize(f->p, &rb, NULL, &b, &e), &e);
    const char *ida = str(a, "authorization_id"), *idb = str(b, "authorization_id");
    assert_int_equal(payment_capture(f->p, ida, 2000, 0, &out, &e), ERR_INVALID);
    json_decref(out);
    for (int i = 0; i < 2; i++) { /* the second time answers as is */
        assert_ok(payment_capture(f->p, ida, 0, 0, &out, &e), &e);
        assert_string_equal(str(out, "state"), "CAPTURED");
        assert_int_equal(json_integer_value(json_object_get(out, "captured_amount")), 1500);
        json_decref(out);
        assert_ok(payment_void(f->p, idb, 0, &out, &e), &e);
        assert_string_equal(str(out, "state"), "VOIDED");
        json_decref(out);
    }
    assert_int_equal(payment_void(f->p, ida, 0, &out, &e), ERR_CONFLICT);
    json_decref(out);
    assert_int_equal(payment_capture(f->p, idb, 0, 0, &out, &e), ERR_CONFLICT);
    json_decref(out);
    assert_int_equal(payment_capture(f->p, "01a2094a-e669-7642-8835-c1338601e08b", 0, 0, &out, &e),
                     ERR_NOT_FOUND);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges WHERE op <> 'authorize'"), 2);
    json_decref(a);
    json_decref(b);
}

static void
refunds_never_exceed_the_capture(void **state)
{
    struct fixture *f = *state;
    struct payment_request r = request("o-r", "pay-r");
    json_t *a, *out;
    struct bb_error e;
    assert_ok(payment_authorize(f->p, &r, NULL, &a, &e), &e);
    const char *id = str(a, "authorization_id");
    assert_int_equal(payment_refund(f->p, id, 100, "ref-0", 0, &out, &e), ERR_CONFLICT);
    json_decref(out);
    assert_ok(payment_capture(f->p, id, 0, 0, &out, &e), &e);
    json_decref(out);
    for (int i = 0; i < 2; i++) {
        assert_ok(payment_refund(f->p, id, 500, "ref-1", 0, &out, &e), &e);
        assert_int_equal(json_integer_value(json_object_get(out, "refunded_amount")), 500);
        json_decref(out);
    }
    assert_int_equal(payment_refund(f->p, id, 600, "ref-1", 0, &out, &e), ERR_IDEMPOTENCY_MISMATCH);
    json_decref(out);
    assert_int_equal(payment_refund(f->p, id, 1001, "ref-2", 0, &out, &e), ERR_INVALID);
    json_decref(out);
    assert_ok(payment_refund(f->p, id, 0, "ref-3", 0, &out, &e), &e); /* the rest */
    assert_string_equal(str(out, "state"), "REFUNDED");
    assert_int_equal(json_integer_value(json_object_get(out, "refunded_amount")), 1500);
    assert_int_equal(json_array_size(json_object_get(out, "refunds")), 2);
    json_decref(out);
    assert_int_equal(payment_refund(f->p, id, 1, "ref-4", 0, &out, &e), ERR_CONFLICT);
    json_decref(out);
    json_decref(a);
}

/* Before version 4 refunded_amount also counted refunds still pending: the
 * migration moves those into refund_pending_amount, and a payment that read
 * REFUNDED only by counting them is CAPTURED again. */
static struct store_stmt LEGACY_DOWN = {
    .sql = "ALTER TABLE payments DROP COLUMN refund_pending_amount"};
static struct store_stmt LEGACY_FORGET = {
    .sql = "DELETE FROM schema_migrations WHERE module = 'payments' AND version >= 4"};
static struct store_stmt LEGACY_PAYMENT = {
    .sql = "INSERT INTO payments (id, order_id, idempotency_key, fingerprint, amount, currency,"
           " state, captured_amount, refunded_amount, created_at_ms, updated_at_ms)"
           " VALUES ($1, $1, $1, 'f', 1500, 'EUR', $2, 1500, $3, 1, 1)"};
static struct store_stmt LEGACY_REFUND = {
    .sql = "INSERT INTO payment_refunds (id, payment_id, idempotency_key, amount, state,"
           " created_at_ms) VALUES ($1, $2, $1, $3, $4, 1)"};

static enum err
legacy_refunds_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    enum err rc = store_exec(c, &LEGACY_DOWN, NULL, 0, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &LEGACY_FORGET, NULL, 0, NULL, e);
    /* p-full: 500 made and 1000 pending (read REFUNDED); p-part: 200 made
     * and 300 pending; p-none: no refunds. */
    static const struct {
        const char *id, *state;
        int64_t refunded;
    } pays[] = {
        {"p-full", "REFUNDED", 1500}, {"p-part", "CAPTURED", 500}, {"p-none", "CAPTURED", 0}};
    static const struct {
        const char *id, *payment_id, *state;
        int64_t amount;
    } refunds[] = {{"r-1", "p-full", "succeeded", 500},
                   {"r-2", "p-full", "pending", 1000},
                   {"r-3", "p-part", "succeeded", 200},
                   {"r-4", "p-part", "pending", 100},
                   {"r-5", "p-part", "pending", 200}};
    for (size_t i = 0; i < BB_ARRAY_LEN(pays) && rc == ERR_OK; i++) {
        const struct store_param p[] = {sp_text(pays[i].id), sp_text(pays[i].state),
                                        sp_int(pays[i].refunded)};
        rc = store_exec(c, &LEGACY_PAYMENT, p, BB_ARRAY_LEN(p), NULL, e);
    }
    for (size_t i = 0; i < BB_ARRAY_LEN(refunds) && rc == ERR_OK; i++) {
        const struct store_param p[] = {sp_text(refunds[i].id), sp_text(refunds[i].payment_id),
                                        sp_int(refunds[i].amount), sp_text(refunds[i].state)};
        rc = store_exec(c, &LEGACY_REFUND, p, BB_ARRAY_LEN(p), NULL, e);
    }
    return rc;
}

static void
pending_refunds_counted_as_refunded_move_apart(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, legacy_refunds_work, NULL, &e), &e);
    struct store_conn *c;
    assert_ok(store_conn_open(f->db->store, &c, &e), &e);
    size_t n;
    const struct store_migration *m = payment_migrations(&n);
    int applied = 0;
    assert_ok(store_migrate(c, "payments", m, n, &applied, &e), &e);
    store_conn_close(c);
    assert_int_equal(applied, (int)n - 3);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE id = 'p-full'"
                              " AND state = 'CAPTURED' AND refunded_amount = 500"
                              " AND refund_pending_amount = 1000"),
                     1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE id = 'p-part'"
                              " AND state = 'CAPTURED' AND refunded_amount = 200"
                              " AND refund_pending_amount = 300"),
                     1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE id = 'p-none'"
                              " AND state = 'CAPTURED' AND refunded_amount = 0"
                              " AND refund_pending_amount = 0"),
                     1);
    /* The pending refund, retried with its key, ends what it reserved. */
    json_t *out;
    assert_ok(payment_refund(f->p, "p-full", 0, "r-2", 0, &out, &e), &e);
    assert_string_equal(str(out, "state"), "REFUNDED");
    assert_int_equal(json_integer_value(json_object_get(out, "refunded_amount")), 1500);
    assert_int_equal(json_integer_value(json_object_get(out, "refund_pending_amount")), 0);
    json_decref(out);
}

static enum err
fence_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    return lock_fence_check(c, "payment:o-f", 9, bb_wall_ms(), e);
}

/* backbone_fenced_writes_refused_total (0 before its first count). */
static int64_t
fence_refusals(void)
{
    int64_t n = test_metric("backbone_fenced_writes_refused_total");
    return n < 0 ? 0 : n;
}

static void
a_stale_lock_token_is_refused_before_the_psp(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, fence_work, NULL, &e), &e);
    struct payment_request r = request("o-f", "pay-f");
    r.lock_token = 8; /* a holder older than token 9 */
    json_t *out;
    int64_t refused = fence_refusals();
    assert_int_equal(payment_authorize(f->p, &r, NULL, &out, &e), ERR_STALE_TOKEN);
    assert_int_equal(fence_refusals(), refused + 1);
    json_decref(out);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 0);
    r.lock_token = 9;
    assert_ok(payment_authorize(f->p, &r, NULL, &out, &e), &e);
    const char *id = str(out, "authorization_id");
    json_t *cap;
    assert_int_equal(payment_capture(f->p, id, 0, 8, &cap, &e), ERR_STALE_TOKEN);
    assert_int_equal(fence_refusals(), refused + 2);
    json_decref(cap);
    json_decref(out);
}

/* Outcomes written in a transaction of the test's (in one call, or one
 * call each `in_turn`), which may raise the fence of order `fenced` (o-d1
 * if NULL) to `fence` first, or roll back after writing. */
struct record_op {
    struct payment_outcome *o[2];
    size_t n;
    bool in_turn;
    int64_t fence;
    const char *fenced;
    bool roll_back;
};

static enum err
record_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct record_op *op = arg;
    enum err rc = ERR_OK;
    char key[64];
    snprintf(key, sizeof key, "payment:%s", op->fenced ? op->fenced : "o-d1");
    if (op->fence > 0)
        rc = lock_fence_check(c, key, op->fence, bb_wall_ms(), e);
    for (size_t i = 0; rc == ERR_OK && i < op->n && op->in_turn; i++)
        rc = payment_outcomes_record(c, &op->o[i], 1, e);
    if (rc == ERR_OK && op->n > 0 && !op->in_turn)
        rc = payment_outcomes_record(c, op->o, op->n, e);
    return rc == ERR_OK && op->roll_back ? bb_fail(e, ERR_INVALID, "", "rolled back") : rc;
}

struct prepare_op {
    struct payment_request *req;
    bool intents;
};

static enum err
prepare_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct prepare_op *op = arg;
    return payment_prepare(c, op->req, 1, op->intents, e);
}

static void
prepare(struct fixture *f, struct payment_request *req, bool intents)
{
    struct prepare_op op = {.req = req, .intents = intents};
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, prepare_work, &op, &e), &e);
}

static enum err
record(struct fixture *f, struct record_op op)
{
    struct bb_error e;
    return store_run(f->db->store, STORE_WRITE, record_work, &op, &e);
}

/* The deferred operations are fenced before the PSP by payment_prepare
 * only (payments.h): a holder overtaken after it asks the PSP the same
 * question as its successor, but its answer is refused; nothing is charged
 * twice and the successor's answer is the one written. */
static void
a_holder_overtaken_after_prepare_asks_the_psp_but_cannot_write(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    char given[PAYMENT_ID_LEN + 1], id[PAYMENT_ID_LEN + 1];
    bb_uuid7_at(bb_wall_ms(), given);
    struct payment_request r = request("o-d1", "pay-d1");
    r.lock_token = 5;
    r.intent_id = given;
    prepare(f, &r, true);
    assert_int_equal(record(f, (struct record_op){.fence = 6}), ERR_OK); /* overtaken */
    struct payment_outcome *stale, *fresh;
    assert_ok(payment_authorize_deferred(f->p, &r, id, &stale, &e), &e);
    assert_non_null(stale);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 1);
    int64_t refused = fence_refusals();
    assert_int_equal(record(f, (struct record_op){.o = {stale}, .n = 1}), ERR_STALE_TOKEN);
    /* A caller's transaction run again (a batch's, then alone) writes the
     * same outcome again: one refused write, counted once. */
    assert_int_equal(record(f, (struct record_op){.o = {stale}, .n = 1}), ERR_STALE_TOKEN);
    assert_int_equal(fence_refusals(), refused + 1);
    payment_outcome_free(stale);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 0);
    /* Not deferred, its capture is refused before the PSP. */
    json_t *out;
    assert_int_equal(payment_capture(f->p, given, 0, 5, &out, &e), ERR_STALE_TOKEN);
    json_decref(out);
    /* The successor: prepared under its token, the same PSP answer, written. */
    r.lock_token = 6;
    prepare(f, &r, true);
    assert_ok(payment_authorize_deferred(f->p, &r, id, &fresh, &e), &e);
    assert_int_equal(record(f, (struct record_op){.o = {fresh}, .n = 1}), ERR_OK);
    payment_outcome_free(fresh);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 1);
}

/* amount >= 1 is the HTTP API's rule, and the ledger's own for callers in
 * process (the saga): nothing recorded, the PSP never asked. */
static void
an_authorization_below_one_unit_is_refused(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    char id[PAYMENT_ID_LEN + 1] = "x";
    json_t *sentinel = json_object(); /* *out must be reset, not freed */
    json_t *out = sentinel;
    struct payment_request r = request("o-z", "pay-z");
    r.amount = 0;
    assert_int_equal(payment_authorize(f->p, &r, id, &out, &e), ERR_INVALID);
    assert_string_equal(e.field, "amount");
    assert_string_equal(id, "");
    assert_null(out);
    json_decref(sentinel);
    r.amount = -5;
    assert_int_equal(payment_authorize(f->p, &r, NULL, NULL, &e), ERR_INVALID);
    char given[PAYMENT_ID_LEN + 1];
    bb_uuid7_at(bb_wall_ms(), given);
    r = request("o-z2", "pay-z2");
    r.amount = 0;
    r.lock_token = 3;
    prepare(f, &r, true); /* no intent */
    r.intent_id = given;
    struct payment_outcome *pending = (struct payment_outcome *)&r; /* must be reset */
    assert_int_equal(payment_authorize_deferred(f->p, &r, id, &pending, &e), ERR_INVALID);
    assert_string_equal(e.field, "amount");
    assert_null(pending);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments"), 0);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 0);
}

/* Authorize orders a and b (lock token 1) deferred, and write both
 * outcomes in one call of `op`'s. */
static enum err
record_two(struct fixture *f, const char *a, const char *b, struct record_op op)
{
    char ka[32], kb[32];
    snprintf(ka, sizeof ka, "pay-%s", a);
    snprintf(kb, sizeof kb, "pay-%s", b);
    struct payment_request ra = request(a, ka), rb = request(b, kb);
    ra.lock_token = rb.lock_token = 1;
    struct bb_error e;
    assert_ok(payment_authorize_deferred(f->p, &ra, NULL, &op.o[0], &e), &e);
    assert_ok(payment_authorize_deferred(f->p, &rb, NULL, &op.o[1], &e), &e);
    op.n = 2;
    enum err rc = record(f, op);
    payment_outcome_free(op.o[0]);
    payment_outcome_free(op.o[1]);
    return rc;
}

static void
outcomes_written_by_the_caller_land_with_its_transaction(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    struct payment_request r = request("o-d1", "pay-d1");
    r.lock_token = 5;
    /* The intent, prepared with the lock (twice: one payment). */
    prepare(f, &r, true);
    prepare(f, &r, true);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    char id[PAYMENT_ID_LEN + 1];
    struct payment_outcome *first, *again, *capture;
    assert_ok(payment_authorize_deferred(f->p, &r, id, &first, &e), &e);
    assert_non_null(first);
    assert_true(id[0] != '\0');
    /* Until written, the ledger shows the intent only. */
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 0);
    /* Not written when the caller's transaction rolls back, nor under a
     * newer holder's fence. */
    assert_int_equal(record(f, (struct record_op){.o = {first}, .n = 1, .roll_back = true}),
                     ERR_INVALID);
    assert_int_equal(record(f, (struct record_op){.o = {first}, .n = 1, .fence = 6}),
                     ERR_STALE_TOKEN);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 0);
    /* Asked again meanwhile: the PSP answers the same without charging
     * twice; once that is written, the first can no longer be. */
    assert_ok(payment_authorize_deferred(f->p, &r, id, &again, &e), &e);
    assert_non_null(again);
    assert_int_equal(record(f, (struct record_op){.o = {again}, .n = 1}), ERR_OK);
    assert_int_equal(record(f, (struct record_op){.o = {first}, .n = 1}), ERR_CONFLICT);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 1);
    assert_int_equal(
        count(f, "SELECT COUNT(*) FROM outbox_events WHERE type = 'payment.authorized.v1'"), 1);
    payment_outcome_free(first);
    payment_outcome_free(again);
    /* A replay has nothing to write. */
    assert_ok(payment_authorize_deferred(f->p, &r, id, &again, &e), &e);
    assert_null(again);
    /* Capture: the fence is not raised again before the PSP, so a holder
     * overtaken meanwhile asks the PSP (the same question as its
     * successor), but cannot write the answer; its successor can. */
    assert_int_equal(record(f, (struct record_op){.fence = 6}), ERR_OK);
    assert_ok(payment_capture_deferred(f->p, id, 0, 5, NULL, &capture, &e), &e);
    assert_int_equal(record(f, (struct record_op){.o = {capture}, .n = 1}), ERR_STALE_TOKEN);
    payment_outcome_free(capture);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"), 1);
    assert_ok(payment_capture_deferred(f->p, id, 0, 6, NULL, &capture, &e), &e);
    assert_int_equal(record(f, (struct record_op){.o = {capture}, .n = 1}), ERR_OK);
    payment_outcome_free(capture);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'CAPTURED'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges WHERE op = 'capture'"), 1);
    /* A holder older than the fence prepares nothing. */
    struct payment_request old = request("o-d1", "pay-d1-old");
    old.lock_token = 4;
    prepare(f, &old, true);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments"), 1);
    /* Two authorizations written in one call. */
    assert_int_equal(record_two(f, "o-d2", "o-d3", (struct record_op){0}), ERR_OK);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"), 2);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 4);
    /* Two in one call, one of them overtaken: neither is written. */
    assert_int_equal(
        record_two(f, "o-d4", "o-d5", (struct record_op){.fence = 2, .fenced = "o-d5"}),
        ERR_STALE_TOKEN);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 2);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 4);
}

/* count() of `before` 'value' `after` (values are the test's own). */
static int64_t
count_where(struct fixture *f, const char *before, const char *value, const char *after)
{
    char sql[256];
    snprintf(sql, sizeof sql, "%s'%s'%s", before, value, after);
    return count(f, sql);
}

/* An authorization given the id its intent was prepared with starts from
 * that intent without reading it. Given an id the ledger does not hold
 * (the key's row has another), its outcome cannot be written and nothing
 * is; asked again without it, it finds the key's row, and the PSP answers
 * as before (one charge). */
static void
an_authorization_starts_from_the_intent_it_was_given(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    char given[PAYMENT_ID_LEN + 1], wrong[PAYMENT_ID_LEN + 1], id[PAYMENT_ID_LEN + 1];
    bb_uuid7_at(bb_wall_ms(), given);
    bb_uuid7_at(bb_wall_ms(), wrong);
    struct payment_request r = request("o-d1", "pay-d1");
    r.lock_token = 5;
    r.intent_id = given;
    prepare(f, &r, true);
    assert_int_equal(
        count_where(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING' AND id = ", given,
                    ""),
        1);
    struct payment_outcome *authorized;
    assert_ok(payment_authorize_deferred(f->p, &r, id, &authorized, &e), &e);
    assert_string_equal(id, given);
    assert_int_equal(record(f, (struct record_op){.o = {authorized}, .n = 1}), ERR_OK);
    payment_outcome_free(authorized);
    assert_int_equal(
        count_where(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED' AND id = ", given,
                    ""),
        1);
    struct payment_request s = request("o-d2", "pay-d2");
    s.lock_token = 5;
    prepare(f, &s, true); /* an intent of its own id */
    s.intent_id = wrong;
    assert_ok(payment_authorize_deferred(f->p, &s, id, &authorized, &e), &e);
    assert_string_equal(id, wrong);
    assert_int_not_equal(record(f, (struct record_op){.o = {authorized}, .n = 1}), ERR_OK);
    payment_outcome_free(authorized);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts"), 1);
    assert_int_equal(count_where(f, "SELECT COUNT(*) FROM payments WHERE id = ", wrong, ""), 0);
    s.intent_id = NULL;
    assert_ok(payment_authorize_deferred(f->p, &s, id, &authorized, &e), &e);
    assert_string_not_equal(id, wrong);
    assert_int_equal(record(f, (struct record_op){.o = {authorized}, .n = 1}), ERR_OK);
    payment_outcome_free(authorized);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"), 2);
    assert_int_equal(
        count_where(f, "SELECT COUNT(*) FROM psp_charges WHERE key = ", "authorize:pay-d2", ""), 1);
}

/* A capture that follows its authorization's outcome before that is
 * written: it reads nothing, and both outcomes are written in one
 * transaction, in order (or neither). Another payment's outcome is no
 * ground for it: the capture reads its own payment. */
static void
a_capture_follows_an_authorization_not_yet_written(void **state)
{
    struct fixture *f = *state;
    struct bb_error e;
    struct payment_request r = request("o-d1", "pay-d1");
    r.lock_token = 5;
    prepare(f, &r, true);
    char id[PAYMENT_ID_LEN + 1];
    struct payment_outcome *authorized, *captured;
    assert_ok(payment_authorize_deferred(f->p, &r, id, &authorized, &e), &e);
    assert_ok(payment_capture_deferred(f->p, id, 0, 5, authorized, &captured, &e), &e);
    assert_non_null(captured);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges WHERE op = 'capture'"), 1);
    struct record_op both = {.o = {authorized, captured}, .n = 2, .in_turn = true};
    both.fence = 6; /* a newer holder: the authorization's fence refuses both */
    assert_int_equal(record(f, both), ERR_STALE_TOKEN);
    both.fence = 0;
    both.roll_back = true;
    assert_int_equal(record(f, both), ERR_INVALID);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'PENDING'"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM outbox_events"), 0);
    both.roll_back = false;
    assert_int_equal(record(f, both), ERR_OK);
    payment_outcome_free(authorized);
    payment_outcome_free(captured);
    assert_int_equal(
        count(f,
              "SELECT COUNT(*) FROM payments WHERE state = 'CAPTURED' AND captured_amount = 1500"),
        1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM outbox_events WHERE type IN"
                              " ('payment.authorized.v1', 'payment.captured.v1')"),
                     2);
    /* An outcome of another payment: this one is read, and is captured. */
    struct payment_request other = request("o-d2", "pay-d2");
    assert_ok(payment_authorize_deferred(f->p, &other, NULL, &authorized, &e), &e);
    assert_int_equal(payment_capture_deferred(f->p, id, 0, 5, authorized, &captured, &e), ERR_OK);
    assert_null(captured); /* a replay: nothing to write */
    payment_outcome_free(authorized);
}

/* Authorize k0..k19 on a fresh database with a PSP seeded `seed` that
 * declines half; the outcomes as a string of a (approved) and d. */
static void
outcomes_with_seed(uint64_t seed, char out[21])
{
    struct test_db *db = test_db_create();
    struct payments_options o = {
        .psp_timeout_ms = 200, .threads = 2, .psp = {.seed = seed, .decline_rate = 0.5}};
    struct payments *p;
    struct bb_error e;
    assert_ok(payments_create(db->store, &o, &p, &e), &e);
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        struct payment_request r = request(key, key);
        json_t *res;
        enum err rc = payment_authorize(p, &r, NULL, &res, &e);
        json_decref(res);
        out[i] = rc == ERR_OK ? 'a' : rc == ERR_PAYMENT_DECLINED ? 'd' : '?';
    }
    out[20] = '\0';
    payments_destroy(p);
    test_db_destroy(db);
}

static void
the_same_seed_gives_the_same_answers(void **state)
{
    (void)state;
    char first[21], again[21], other[21];
    outcomes_with_seed(42, first);
    outcomes_with_seed(42, again);
    outcomes_with_seed(43, other);
    assert_string_equal(first, again);
    assert_null(strchr(first, '?'));
    assert_non_null(strchr(first, 'a')); /* both occur at a rate of 0.5 */
    assert_non_null(strchr(first, 'd'));
    assert_string_not_equal(first, other); /* equal by chance: 1 in 2^20 */
}

/* Authorize k0..k9 on a fresh database with a PSP seeded `seed` that fails
 * 40% of its calls and hangs on 30% (after doing the work), each retried
 * with its key until approved: each key's tries, as '0' + n, into `tries`. */
static void
retries_with_seed(uint64_t seed, char tries[11])
{
    struct test_db *db = test_db_create();
    struct payments_options o = {.psp_timeout_ms = 20,
                                 .threads = 2,
                                 .psp = {.seed = seed, .failure_rate = 0.4, .timeout_rate = 0.3}};
    struct payments *p;
    struct bb_error e;
    assert_ok(payments_create(db->store, &o, &p, &e), &e);
    for (int i = 0; i < 10; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        struct payment_request r = request(key, key);
        enum err rc = ERR_UNAVAILABLE;
        int n = 0;
        while (rc != ERR_OK && n < 20) {
            json_t *res;
            rc = payment_authorize(p, &r, NULL, &res, &e);
            json_decref(res);
            n++;
            assert_true(rc == ERR_OK || rc == ERR_UPSTREAM || rc == ERR_TIMEOUT);
        }
        assert_int_equal(rc, ERR_OK); /* 20 failures in a row: 0.7^20, 1 in 1,250 */
        tries[i] = (char)('0' + n);
    }
    tries[10] = '\0';
    struct fixture f = {.db = db};
    assert_int_equal(count(&f, "SELECT COUNT(*) FROM psp_charges"), 10); /* once each */
    assert_int_equal(count(&f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"), 10);
    payments_destroy(p);
    test_db_destroy(db);
}

/* A failure or a hang is transient, as a real PSP's: the same call again
 * draws anew, and the seed still repeats the whole sequence. */
static void
a_psp_that_fails_lets_the_same_call_through_later(void **state)
{
    (void)state;
    char first[11], again[11];
    retries_with_seed(5, first);
    retries_with_seed(5, again);
    assert_string_equal(first, again);
    assert_true(strspn(first, "1") < strlen(first)); /* some key needed a retry */
}

/* ---- concurrent retries -------------------------------------------------------------------- */

struct retry {
    struct payments *p;
    int ok;
    char id[64];
};

static void *
retrier(void *arg)
{
    struct retry *r = arg;
    struct payment_request req = request("o-c", "pay-c");
    json_t *out;
    struct bb_error e;
    r->ok = payment_authorize(r->p, &req, NULL, &out, &e) == ERR_OK;
    if (out)
        bb_strlcpy(r->id, str(out, "authorization_id"), sizeof r->id);
    json_decref(out);
    return NULL;
}

static void
concurrent_retries_of_one_request_make_one_payment_and_one_charge(void **state)
{
    struct fixture *f = *state;
    enum { N = 8 };
    struct retry r[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        r[i] = (struct retry){.p = f->p};
        assert_int_equal(pthread_create(&t[i], NULL, retrier, &r[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) {
        assert_true(r[i].ok);
        assert_string_equal(r[i].id, r[0].id);
    }
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 1);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM outbox_events"
                              " WHERE type = 'payment.authorized.v1'"),
                     1);
}

/* ---- batches ------------------------------------------------------------------------------ */

/* A write unit that holds the store's only executor thread until opened:
 * operations queue up behind it, and their phases gather in batches. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool inside, open;
};

static enum err
gate_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)c;
    (void)e;
    struct gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->inside = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return ERR_OK;
}

static void
gate_done(void *arg, enum err rc, const struct bb_error *e)
{
    (void)arg;
    (void)rc;
    (void)e;
}

static void
gate_close(struct fixture *f, struct gate *g)
{
    *g = (struct gate){.open = false};
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    assert_int_equal(store_submit(f->db->store, STORE_WRITE, gate_work, gate_done, g), ERR_OK);
    pthread_mutex_lock(&g->mu);
    while (!g->inside)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void
gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Wait until `n` ledger operations wait for a batch (four lead meanwhile). */
static void
await_waiting(int64_t n)
{
    int64_t deadline = bb_mono_ms() + 60000;
    while (test_metric("backbone_payment_batch_waiting{what=\"ledger\"}") != n) {
        if (bb_mono_ms() > deadline)
            fail_msg("%lld operations never waited for a batch", (long long)n);
        bb_sleep_ms(1);
    }
}

/* Ledger batches of more than four operations so far. */
static int64_t
big_batches(void)
{
    return test_metric("backbone_payment_batch_size_count{what=\"ledger\"}") -
           test_metric("backbone_payment_batch_size_bucket{what=\"ledger\",le=\"4\"}");
}

struct wave_op {
    struct payments *p;
    const char *what; /* authorize, capture, void */
    struct payment_request req;
    char order[32], key[32];
    const char *payment_id;
    int64_t token;
    enum err rc;
    char id[PAYMENT_ID_LEN + 1];
};

static void *
wave_run(void *arg)
{
    struct wave_op *w = arg;
    struct bb_error e;
    if (strcmp(w->what, "authorize") == 0)
        w->rc = payment_authorize(w->p, &w->req, w->id, NULL, &e);
    else if (strcmp(w->what, "capture") == 0)
        w->rc = payment_capture(w->p, w->payment_id, 0, w->token, NULL, &e);
    else
        w->rc = payment_void(w->p, w->payment_id, w->token, NULL, &e);
    return NULL;
}

/* Run the operations at once behind the gate: four lead alone, the rest
 * wait and ride together. */
static void
wave(struct fixture *f, struct wave_op *ops, size_t n)
{
    struct gate g;
    gate_close(f, &g);
    int64_t before = big_batches();
    pthread_t *t = xcalloc(n, sizeof *t);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(pthread_create(&t[i], NULL, wave_run, &ops[i]), 0);
    await_waiting((int64_t)n - 4);
    gate_open(&g);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    free(t);
    assert_true(big_batches() > before);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
}

static void
authorize_alone(struct fixture *f, const char *order, const char *key, int64_t amount,
                int64_t token, char id[PAYMENT_ID_LEN + 1])
{
    struct payment_request r = request(order, key);
    r.amount = amount;
    r.lock_token = token;
    struct bb_error e;
    assert_ok(payment_authorize(f->p, &r, id, NULL, &e), &e);
}

/*
 * Five of each case (so at least one of each rides in the batch, whichever
 * four lead alone): authorizations that are new, declined, fenced off by a
 * newer token, reusing a key for another amount, repeating an earlier one,
 * and pairs sent twice at once; then captures, voids, stale captures and
 * captures of declined payments. Each ends as it would alone.
 */
static void
operations_in_a_batch_end_as_they_would_alone(void **state)
{
    struct fixture *f = *state;
    enum { K = 5, N1 = 7 * K, N2 = 4 * K };
    char earlier[K][PAYMENT_ID_LEN + 1], id[PAYMENT_ID_LEN + 1];
    for (int i = 0; i < K; i++) {
        char order[32], key[32];
        snprintf(order, sizeof order, "o-stale-%d", i);
        snprintf(key, sizeof key, "k-stale-first-%d", i);
        authorize_alone(f, order, key, 1500, 10, id); /* the fence stands at 10 */
        snprintf(order, sizeof order, "o-again-%d", i);
        snprintf(key, sizeof key, "k-again-%d", i);
        authorize_alone(f, order, key, 1500, 0, earlier[i]);
    }
    struct wave_op ops[N1];
    for (int i = 0; i < N1; i++) {
        struct wave_op *w = &ops[i];
        int c = i / K, k = i % K;
        static const char *const cases[] = {"new",   "declined", "stale", "mismatch",
                                            "again", "twice",    "twice"};
        *w = (struct wave_op){.p = f->p, .what = "authorize"};
        snprintf(w->order, sizeof w->order, "o-%s-%d", cases[c], k);
        snprintf(w->key, sizeof w->key, "k-%s-%d", cases[c], k);
        w->req = request(w->order, w->key);
        if (c == 1)
            w->req.card = "card-declined";
        if (c == 2)
            w->req.lock_token = 5;
        if (c == 3) { /* the key of an earlier payment, another amount */
            snprintf(w->key, sizeof w->key, "k-again-%d", k);
            w->req.amount = 99;
        }
        if (c == 4)
            snprintf(w->order, sizeof w->order, "o-again-%d", k);
    }
    int64_t charges = count(f, "SELECT COUNT(*) FROM psp_charges");
    wave(f, ops, N1);
    for (int k = 0; k < K; k++) {
        assert_int_equal(ops[0 * K + k].rc, ERR_OK);
        assert_int_equal(ops[1 * K + k].rc, ERR_PAYMENT_DECLINED);
        assert_int_equal(ops[2 * K + k].rc, ERR_STALE_TOKEN);
        assert_int_equal(count_where(f, "SELECT COUNT(*) FROM payments WHERE order_id = ",
                                     ops[2 * K + k].order, ""),
                         1); /* the first payment only */
        assert_int_equal(ops[3 * K + k].rc, ERR_IDEMPOTENCY_MISMATCH);
        assert_int_equal(ops[4 * K + k].rc, ERR_OK);
        assert_string_equal(ops[4 * K + k].id, earlier[k]);
        assert_int_equal(ops[5 * K + k].rc, ERR_OK);
        assert_int_equal(ops[6 * K + k].rc, ERR_OK);
        assert_string_equal(ops[5 * K + k].id, ops[6 * K + k].id);
    }
    /* New: 5 approved, 5 declined, 5 sent twice; nothing else asked the PSP. */
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges") - charges, 3 * K);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'AUTHORIZED'"
                              " AND (order_id LIKE 'o-new-%' OR order_id LIKE 'o-twice-%')"),
                     2 * K);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payments WHERE state = 'FAILED'"), K);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM outbox_events"
                              " WHERE type = 'payment.authorized.v1'"),
                     4 * K); /* 2 earlier, 2 now, K each */
    assert_int_equal(
        count(f, "SELECT COUNT(*) FROM outbox_events WHERE type = 'payment.failed.v1'"), K);
    /* One attempt per call: a pair sent twice may both have found it pending. */
    assert_int_equal(count(f, "SELECT COUNT(*) FROM payment_attempts a JOIN payments p"
                              " ON p.id = a.payment_id WHERE p.order_id LIKE 'o-new-%'"
                              " OR p.order_id LIKE 'o-declined-%'"),
                     2 * K);
    int64_t twice = count(f, "SELECT COUNT(*) FROM payment_attempts a JOIN payments p"
                             " ON p.id = a.payment_id WHERE p.order_id LIKE 'o-twice-%'");
    assert_in_range(twice, K, 2 * K);

    /* Settlements: captures, voids, stale captures, captures of declines. */
    struct wave_op settle[N2];
    for (int i = 0; i < N2; i++) {
        struct wave_op *w = &settle[i];
        int c = i / K, k = i % K;
        static const char *const whats[] = {"capture", "void", "capture", "capture"};
        const struct wave_op *from = c == 0   ? &ops[k]
                                     : c == 1 ? &ops[5 * K + k]
                                     : c == 2 ? &ops[2 * K + k]
                                              : &ops[1 * K + k];
        *w = (struct wave_op){.p = f->p, .what = whats[c], .token = c == 2 ? 5 : 0};
        w->payment_id = from->id;
        if (c == 2) { /* the first payment of the fenced order */
            w->payment_id = NULL;
            char key[32];
            snprintf(key, sizeof key, "k-stale-first-%d", k);
            struct payment_request r = request(from->order, key);
            authorize_alone(f, from->order, key, r.amount, 10, w->id);
            w->payment_id = w->id;
        }
    }
    wave(f, settle, N2);
    for (int k = 0; k < K; k++) {
        assert_int_equal(settle[0 * K + k].rc, ERR_OK);
        assert_int_equal(settle[1 * K + k].rc, ERR_OK);
        assert_int_equal(settle[2 * K + k].rc, ERR_STALE_TOKEN);
        assert_int_equal(settle[3 * K + k].rc, ERR_CONFLICT);
        assert_int_equal(
            count_where(f, "SELECT COUNT(*) FROM payments WHERE id = ", settle[k].payment_id,
                        " AND state = 'CAPTURED' AND captured_amount = 1500"),
            1);
        assert_int_equal(count_where(f, "SELECT COUNT(*) FROM payments WHERE id = ",
                                     settle[K + k].payment_id, " AND state = 'VOIDED'"),
                         1);
        assert_int_equal(count_where(f, "SELECT COUNT(*) FROM payments WHERE id = ",
                                     settle[2 * K + k].payment_id, " AND state = 'AUTHORIZED'"),
                         1);
    }
    assert_int_equal(count(f, "SELECT COUNT(*) FROM outbox_events"
                              " WHERE type = 'payment.captured.v1'"),
                     K);
    assert_int_equal(
        count(f, "SELECT COUNT(*) FROM outbox_events WHERE type = 'payment.voided.v1'"), K);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges WHERE op IN ('capture', 'void')"),
                     2 * K);
}

/* Run one statement of the test's own on the test database. */
static void
exec_sql(struct fixture *f, struct store_stmt *st)
{
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(f->db->store, &c, &e), &e);
    assert_ok(store_exec(c, st, NULL, 0, NULL, &e), &e);
    store_conn_close(c);
}

/* Make the database refuse every row inserted into `table` whose `column`
 * is LIKE `pattern` (a trigger; the names are the test's own). */
static void
poison(struct fixture *f, const char *table, const char *column, const char *pattern)
{
    char fn_pg[512], trigger_pg[256], trigger_sqlite[512];
    snprintf(fn_pg, sizeof fn_pg,
             "CREATE FUNCTION poison_%s() RETURNS trigger LANGUAGE plpgsql AS $$"
             " BEGIN IF NEW.%s LIKE '%s' THEN RAISE EXCEPTION 'poisoned';"
             " END IF; RETURN NEW; END $$",
             table, column, pattern);
    snprintf(trigger_pg, sizeof trigger_pg,
             "CREATE TRIGGER poison_%s BEFORE INSERT ON %s FOR EACH ROW"
             " EXECUTE FUNCTION poison_%s()",
             table, table, table);
    snprintf(trigger_sqlite, sizeof trigger_sqlite,
             "CREATE TRIGGER poison_%s BEFORE INSERT ON %s WHEN NEW.%s LIKE '%s'"
             " BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
             table, table, column, pattern);
    struct store_stmt fn = {.sql_pg = fn_pg, .sql_sqlite = "SELECT 1"};
    struct store_stmt trigger = {.sql_pg = trigger_pg, .sql_sqlite = trigger_sqlite};
    exec_sql(f, &fn);
    exec_sql(f, &trigger);
}

/*
 * A ledger batch that fails as a whole (here: the database refuses the
 * payment of any order named o-poison-*) rolls back, and each of its
 * members runs alone: the others are authorized once each, the poisoned
 * ones fail without a charge. Five are poisoned, so at least one waits
 * with the others for a batch (at most four lead alone).
 */
static void
a_ledger_batch_that_fails_as_a_whole_runs_each_member_alone(void **state)
{
    struct fixture *f = *state;
    poison(f, "payments", "order_id", "o-poison-%");
    enum { POISONED = 5, N = 16 };
    struct wave_op ops[N];
    for (int i = 0; i < N; i++) {
        struct wave_op *w = &ops[i];
        *w = (struct wave_op){.p = f->p, .what = "authorize"};
        snprintf(w->order, sizeof w->order, "o-%s-%d", i < POISONED ? "poison" : "fine", i);
        snprintf(w->key, sizeof w->key, "k-%d", i);
        w->req = request(w->order, w->key);
    }
    int64_t fallbacks = test_metric("backbone_payment_batch_fallbacks_total{what=\"ledger\"}");
    wave(f, ops, N);
    assert_true(test_metric("backbone_payment_batch_fallbacks_total{what=\"ledger\"}") >
                (fallbacks < 0 ? 0 : fallbacks));
    for (int i = 0; i < N; i++) {
        int64_t payments =
            count_where(f, "SELECT COUNT(*) FROM payments WHERE order_id = ", ops[i].order, "");
        int64_t charges = count_where(
            f, "SELECT COUNT(*) FROM psp_charges WHERE key = 'authorize:' || ", ops[i].key, "");
        if (i < POISONED) {
            assert_int_not_equal(ops[i].rc, ERR_OK);
            assert_int_equal(payments, 0);
            assert_int_equal(charges, 0);
        } else {
            assert_int_equal(ops[i].rc, ERR_OK);
            assert_int_equal(count_where(f, "SELECT COUNT(*) FROM payments WHERE order_id = ",
                                         ops[i].order, " AND state = 'AUTHORIZED'"),
                             1);
            assert_int_equal(payments, 1);
            assert_int_equal(charges, 1);
        }
    }
}

struct psp_op {
    struct payments__psp *psp;
    struct payments__psp_call call;
    char key[32];
    struct payments__psp_answer answer;
};

static void *
psp_op_run(void *arg)
{
    struct psp_op *o = arg;
    payments__psp_call(o->psp, &o->call, 5000, &o->answer);
    return NULL;
}

/*
 * The PSP mock's own records, the same way: a batch the database refuses as
 * a whole (a trigger refuses the charges of keys with "poison" in them)
 * rolls back, and each call is recorded alone. The others are approved and
 * recorded once each; a poisoned one answers a transient error (its PSP
 * failed) with nothing recorded, so a retry cannot find a charge that was
 * never made. Five are poisoned, so at least one waits for a batch.
 */
static void
a_psp_batch_that_fails_as_a_whole_records_each_call_alone(void **state)
{
    struct fixture *f = *state;
    poison(f, "psp_charges", "key", "%poison%");
    struct psp_config cfg = {.seed = 7};
    struct payments__psp *psp = payments__psp_create(f->db->store, &cfg, 32);
    enum { POISONED = 5, N = 16 };
    struct psp_op ops[N];
    for (int i = 0; i < N; i++) {
        struct psp_op *o = &ops[i];
        *o = (struct psp_op){.psp = psp};
        snprintf(o->key, sizeof o->key, "authorize:%s-%d", i < POISONED ? "poison" : "fine", i);
        o->call = (struct payments__psp_call){
            .op = "authorize", .key = o->key, .amount = 1500, .currency = "EUR"};
    }
    int64_t fallbacks = test_metric("backbone_payment_batch_fallbacks_total{what=\"psp\"}");
    struct gate g;
    gate_close(f, &g);
    pthread_t t[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_create(&t[i], NULL, psp_op_run, &ops[i]), 0);
    int64_t deadline = bb_mono_ms() + 60000;
    while (test_metric("backbone_payment_batch_waiting{what=\"psp\"}") != N - 4) {
        if (bb_mono_ms() > deadline)
            fail_msg("%d calls never waited for a batch", N - 4);
        bb_sleep_ms(1);
    }
    gate_open(&g);
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_true(test_metric("backbone_payment_batch_fallbacks_total{what=\"psp\"}") >
                (fallbacks < 0 ? 0 : fallbacks));
    for (int i = 0; i < N; i++) {
        int64_t charges =
            count_where(f, "SELECT COUNT(*) FROM psp_charges WHERE key = ", ops[i].key, "");
        assert_int_equal(ops[i].answer.outcome, i < POISONED ? PSP_ERROR : PSP_APPROVED);
        assert_int_equal(charges, i < POISONED ? 0 : 1);
    }
    payments__psp_destroy(psp);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
}

static int
setup_one_thread(void **state)
{
    struct fixture *f = xcalloc(1, sizeof *f);
    struct store_options so;
    store_options_defaults(&so, test_engine() == STORE_POSTGRES ? "postgres://" : "sqlite:x");
    so.pool_size = 1; /* the gate holds every writer */
    f->db = test_db_create_with(&so);
    struct payments_options o = {.psp_timeout_ms = 5000, .threads = 2, .psp = {.seed = 7}};
    bb_strlcpy(o.psp.decline_cards[0], "card-declined", sizeof o.psp.decline_cards[0]);
    o.psp.n_decline_cards = 1;
    struct bb_error e;
    assert_ok(payments_create(f->db->store, &o, &f->p, &e), &e);
    *state = f;
    return 0;
}

#define PAY_TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_state_table_allows_only_real_transitions),
    PAY_TEST(an_authorization_happens_once_per_key),
    PAY_TEST(declines_fail_for_good_timeouts_and_errors_retry_without_charging_twice),
    PAY_TEST(capture_and_void_follow_the_state_table),
    PAY_TEST(refunds_never_exceed_the_capture),
    PAY_TEST(pending_refunds_counted_as_refunded_move_apart),
    PAY_TEST(a_stale_lock_token_is_refused_before_the_psp),
    PAY_TEST(outcomes_written_by_the_caller_land_with_its_transaction),
    PAY_TEST(an_authorization_starts_from_the_intent_it_was_given),
    PAY_TEST(an_authorization_below_one_unit_is_refused),
    PAY_TEST(a_holder_overtaken_after_prepare_asks_the_psp_but_cannot_write),
    PAY_TEST(a_capture_follows_an_authorization_not_yet_written),
    cmocka_unit_test(the_same_seed_gives_the_same_answers),
    cmocka_unit_test(a_psp_that_fails_lets_the_same_call_through_later),
    PAY_TEST(concurrent_retries_of_one_request_make_one_payment_and_one_charge),
    cmocka_unit_test_setup_teardown(operations_in_a_batch_end_as_they_would_alone, setup_one_thread,
                                    teardown),
    cmocka_unit_test_setup_teardown(a_ledger_batch_that_fails_as_a_whole_runs_each_member_alone,
                                    setup_one_thread, teardown),
    cmocka_unit_test_setup_teardown(a_psp_batch_that_fails_as_a_whole_records_each_call_alone,
                                    setup_one_thread, teardown),
};

TEST_MAIN(tests, true)
