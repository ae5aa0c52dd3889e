/*
 * test_payment_store.c: payments through the PSP mock on both engines:
 * idempotent authorizations, declines, timeouts and failures retried
 * without charging twice, the state table for capture and void, refunds,
 * fencing by the payment lock's token, a seed that repeats its answers, and
 * concurrent retries of one request.
 */
#include "testsupport.h"

#include "locks/locks.h"
#include "outbox/outbox.h"
#include "payments/payments.h"

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

static enum err
fence_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    return lock_fence_check(c, "payment:o-f", 9, bb_wall_ms(), e);
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
    assert_int_equal(payment_authorize(f->p, &r, NULL, &out, &e), ERR_STALE_TOKEN);
    json_decref(out);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM psp_charges"), 0);
    r.lock_token = 9;
    assert_ok(payment_authorize(f->p, &r, NULL, &out, &e), &e);
    const char *id = str(out, "authorization_id");
    json_t *cap;
    assert_int_equal(payment_capture(f->p, id, 0, 8, &cap, &e), ERR_STALE_TOKEN);
    json_decref(cap);
    json_decref(out);
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

#define PAY_TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_state_table_allows_only_real_transitions),
    PAY_TEST(an_authorization_happens_once_per_key),
    PAY_TEST(declines_fail_for_good_timeouts_and_errors_retry_without_charging_twice),
    PAY_TEST(capture_and_void_follow_the_state_table),
    PAY_TEST(refunds_never_exceed_the_capture),
    PAY_TEST(a_stale_lock_token_is_refused_before_the_psp),
    cmocka_unit_test(the_same_seed_gives_the_same_answers),
    PAY_TEST(concurrent_retries_of_one_request_make_one_payment_and_one_charge),
};

TEST_MAIN(tests, true)
