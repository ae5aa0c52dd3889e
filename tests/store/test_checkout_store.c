/*
 * test_checkout_store.c: the checkout saga on both engines, with real
 * workers, the PSP mock and the services in process: a checkout's end
 * (PENDING -> COMPLETED or FAILED) writes one checkout.status.changed.v1,
 * with its order and reason, carrying the checkout's own trace (checkouts
 * accepted together end in batches); a checkout whose starting event no
 * saga can start from fails with one, naming no order; and a stray bad
 * starting event for a checkout that has ended writes none.
 */
#include "testsupport.h"

#include "checkout/checkout.h"
#include "inventory/inventory.h"
#include "jobs/jobs.h"
#include "outbox/outbox.h"
#include "payments/payments.h"
#include "saga/saga.h"

#include <stdlib.h>
#include <string.h>

#define STATUS_EVENT  "checkout.status.changed.v1"
#define DECLINED_CARD "tok_stolen"

struct fixture {
    struct test_db *db;
    struct job_registry *registry;
    struct payments *payments;
    struct saga_engine *engine;
    struct checkout_saga *saga;
    struct job_pool *pool;
};

static enum err
product_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    json_t *out = NULL;
    bool created;
    enum err rc = inventory_product_create(c, "MUG-1", "Mug", 10, bb_wall_ms(), &out, &created, e);
    json_decref(out);
    return rc;
}

static int
setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof *f);
    f->db = test_db_create();
    struct bb_error e;
    struct job_registry_options ro = {0};
    assert_ok(job_registry_create(&ro, &f->registry, &e), &e);
    struct payments_options po = {.psp_timeout_ms = 5000};
    bb_strlcpy(po.psp.decline_cards[0], DECLINED_CARD, sizeof po.psp.decline_cards[0]);
    po.psp.n_decline_cards = 1;
    assert_ok(payments_create(f->db->store, &po, &f->payments, &e), &e);
    struct saga_engine_options so = {.poll_ms = 50, .run_starter = true};
    assert_ok(saga_engine_create(f->db->store, f->registry, &so, &f->engine, &e), &e);
    struct checkout_saga_options co = {.payments = f->payments};
    assert_ok(checkout_saga_create(f->engine, f->registry, &co, &f->saga, &e), &e);
    struct job_pool_options jo = {.concurrency = 4, .poll_ms = 50};
    assert_ok(job_pool_start(f->db->store, f->registry, &jo, &f->pool, &e), &e);
    saga_engine_run_here(f->engine, f->pool);
    assert_ok(saga_engine_start(f->engine, &e), &e);
    assert_ok(store_run(f->db->store, STORE_WRITE, product_work, NULL, &e), &e);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    saga_engine_stop(f->engine);
    saga_engine_run_here(f->engine, NULL);
    job_pool_stop(f->pool, bb_mono_ms() + 5000);
    saga_engine_destroy(f->engine);
    checkout_saga_destroy(f->saga);
    payments_stop(f->payments);
    payments_destroy(f->payments);
    job_registry_destroy(f->registry);
    test_db_destroy(f->db);
    free(f);
    return 0;
}

/* One mug for `card` (NULL: none), keyed `key`. */
static struct checkout_request
mug(const char *key, const char *card)
{
    struct checkout_request r = {.idempotency_key = key,
                                 .fingerprint = key,
                                 .customer_id = "cust-1",
                                 .currency = "EUR",
                                 .card = card,
                                 .n_items = 1,
                                 .total_amount = 1200};
    r.items[0] = (struct order_item){.sku = "MUG-1", .qty = 1, .unit_price = 1200};
    return r;
}

/* Checkouts accepted in one transaction, each with its trace; with
 * `spoil`, each one's checkout.requested.v1 is made one no saga starts
 * from, in that transaction. */
struct accept_op {
    const struct checkout_request *const *reqs;
    const char *const *traces;
    size_t n;
    bool spoil;
    char ids[4][40];
};

static struct store_stmt SPOIL = {
    .sql = "UPDATE outbox_events SET data = '{\"spoilt\":true}'"
           " WHERE type = 'checkout.requested.v1' AND aggregate_id = $1",
};

static enum err
accept_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct accept_op *op = arg;
    json_t *outs[4];
    bool created[4];
    enum err rcs[4];
    struct bb_error errors[4];
    enum err rc = checkout_accept_many(c, NULL, op->reqs, op->traces, op->n, bb_wall_ms(), outs,
                                       created, rcs, errors, e);
    for (size_t i = 0; i < op->n && rc == ERR_OK; i++) {
        assert_true(created[i]);
        bb_strlcpy(op->ids[i], json_string_value(json_object_get(outs[i], "checkout_id")),
                   sizeof op->ids[i]);
        json_decref(outs[i]);
        const struct store_param p[] = {sp_text(op->ids[i])};
        if (op->spoil)
            rc = store_exec(c, &SPOIL, p, 1, NULL, e);
    }
    return rc;
}

static void
accepted(struct fixture *f, struct accept_op *op)
{
    BB_ASSERT(op->n <= 4);
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, accept_work, op, &e), &e);
}

struct get_op {
    const char *id;
    json_t *checkout;
};

static enum err
get_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct get_op *op = arg;
    json_decref(op->checkout);
    op->checkout = NULL;
    return checkout_get_json(c, op->id, &op->checkout, e);
}

/* The checkout once it is no longer PENDING (30 s at most). */
static json_t *
settled(struct fixture *f, const char *id)
{
    struct get_op op = {.id = id};
    struct bb_error e;
    for (int64_t deadline = bb_mono_ms() + 30000;; bb_sleep_ms(10)) {
        assert_ok(store_run(f->db->store, STORE_READ, get_work, &op, &e), &e);
        const char *status = json_string_value(json_object_get(op.checkout, "status"));
        if (strcmp(status, "PENDING") != 0)
            return op.checkout;
        if (bb_mono_ms() > deadline)
            fail_msg("checkout %s is still PENDING", id);
    }
}

/* The checkout's status events (a page of GET /outbox's). */
static json_t *
status_events(struct fixture *f, const char *id)
{
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(f->db->store, &c, &e), &e);
    struct outbox_filter filter = {.limit = 100, .type = STATUS_EVENT, .aggregate_id = id};
    json_t *page = test_outbox_page(c, &filter);
    store_conn_close(c);
    json_t *events = json_incref(json_object_get(page, "events"));
    json_decref(page);
    return events;
}

static void
json_text_is(const json_t *o, const char *key, const char *want)
{
    const json_t *v = json_object_get(o, key);
    if (want == NULL) {
        if (!json_is_null(v))
            fail_msg("%s is not null", key);
        return;
    }
    if (!json_is_string(v))
        fail_msg("%s is not a string", key);
    assert_string_equal(json_string_value(v), want);
}

/* `checkout` (settled) has one status event, which says what it came to
 * and carries `trace` (NULL: none). */
static void
one_status_event(struct fixture *f, const json_t *checkout, const char *trace)
{
    const char *id = json_string_value(json_object_get(checkout, "checkout_id"));
    json_t *events = status_events(f, id);
    assert_int_equal(json_array_size(events), 1);
    json_t *ev = json_array_get(events, 0);
    json_text_is(ev, "aggregate_type", "checkout");
    json_text_is(ev, "aggregate_id", id);
    json_text_is(ev, "traceparent", trace);
    json_t *data = json_object_get(ev, "data");
    assert_int_equal(json_object_size(data), 5);
    json_text_is(data, "checkout_id", id);
    json_text_is(data, "order_id", json_string_value(json_object_get(checkout, "order_id")));
    json_text_is(data, "from", "PENDING");
    json_text_is(data, "to", json_string_value(json_object_get(checkout, "status")));
    json_text_is(data, "reason", json_string_value(json_object_get(checkout, "reason")));
    json_decref(events);
}

/* The saga starter has rejected `n` bad starting events since `before`
 * (20 s at most). */
static void
await_rejections(int64_t before, int64_t n)
{
    const char *series = "backbone_saga_bad_start_events_total{type=\"checkout\"}";
    int64_t deadline = bb_mono_ms() + 20000;
    while (test_metric(series) < before + n && bb_mono_ms() < deadline)
        bb_sleep_ms(10);
    assert_int_equal(test_metric(series), before + n);
}

static int64_t
rejections(void)
{
    int64_t n = test_metric("backbone_saga_bad_start_events_total{type=\"checkout\"}");
    return n < 0 ? 0 : n;
}

/* A checkout.requested.v1 no saga starts from, for checkout `arg`. */
static enum err
stray_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    json_t *data = json_pack("{s:b}", "spoilt", 1);
    struct outbox_event ev = {.type = "checkout.requested.v1",
                              .aggregate_type = "checkout",
                              .aggregate_id = arg,
                              .data = data,
                              .for_consumer = true};
    enum err rc = outbox_append(c, &ev, bb_wall_ms(), e);
    json_decref(data);
    return rc;
}

#define TRACE_A "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TRACE_B "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

static void
each_ended_checkout_announces_its_end_once_with_its_own_trace(void **state)
{
    struct fixture *f = *state;
    /* Accepted together, so that their sagas' units share batches: each
     * end must still carry its own checkout's trace (or none). */
    struct checkout_request a = mug("key-a", "tok_visa"), b = mug("key-b", DECLINED_CARD),
                            c = mug("key-c", "tok_visa");
    const struct checkout_request *reqs[] = {&a, &b, &c};
    const char *traces[] = {TRACE_A, TRACE_B, NULL};
    struct accept_op op = {.reqs = reqs, .traces = traces, .n = 3};
    accepted(f, &op);
    json_t *done[3];
    for (size_t i = 0; i < 3; i++)
        done[i] = settled(f, op.ids[i]);
    json_text_is(done[0], "status", "COMPLETED");
    json_text_is(done[1], "status", "FAILED");
    json_text_is(done[1], "reason", "the payment was declined");
    json_text_is(done[2], "status", "COMPLETED");
    for (size_t i = 0; i < 3; i++) {
        assert_true(json_is_string(json_object_get(done[i], "order_id")));
        one_status_event(f, done[i], traces[i]);
    }

    /* A stray starting event for an ended checkout (a bug's, or an older
     * writer's) is rejected without moving it or announcing anything. */
    int64_t before = rejections();
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, stray_work, op.ids[0], &e), &e);
    assert_ok(store_run(f->db->store, STORE_WRITE, stray_work, op.ids[1], &e), &e);
    await_rejections(before, 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *now = settled(f, op.ids[i]);
        json_text_is(now, "status", i == 0 ? "COMPLETED" : "FAILED");
        json_decref(now);
        one_status_event(f, done[i], traces[i]);
    }
    for (size_t i = 0; i < 3; i++)
        json_decref(done[i]);
}

static void
a_checkout_no_saga_starts_for_fails_with_one_event_and_no_order(void **state)
{
    struct fixture *f = *state;
    int64_t before = rejections();
    struct checkout_request a = mug("key-spoilt", "tok_visa");
    const struct checkout_request *reqs[] = {&a};
    const char *traces[] = {TRACE_A};
    struct accept_op op = {.reqs = reqs, .traces = traces, .n = 1, .spoil = true};
    accepted(f, &op);
    json_t *done = settled(f, op.ids[0]);
    json_text_is(done, "status", "FAILED");
    json_text_is(done, "reason", "the checkout could not be processed");
    json_text_is(done, "order_id", NULL);
    await_rejections(before, 1);
    one_status_event(f, done, TRACE_A); /* its trace: the event's */

    /* Rejected again (an event written twice), it stays as it was. */
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, stray_work, op.ids[0], &e), &e);
    await_rejections(before, 2);
    one_status_event(f, done, TRACE_A);
    json_decref(done);
}

/* Accepting [good, unknown sku, good] in one statement, and the unknown
 * one alone: what each got, and how many checkouts there are after. */
struct unknown_op {
    struct checkout_skus *known;
    enum err rcs[3];
    struct bb_error errors[3];
    bool created[3];
    enum err alone;
    struct bb_error alone_error;
    int64_t checkouts;
};

static struct store_stmt COUNT_CHECKOUTS = {.sql = "SELECT COUNT(*) FROM checkouts"};

static enum err
unknown_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct unknown_op *op = arg;
    struct checkout_request good1 = mug("key-good-1", "tok_visa"), bad = mug("key-bad", "tok_visa"),
                            good2 = mug("key-good-2", "tok_visa");
    bad.items[1] = bad.items[0];
    bad.items[1].sku = "NOSUCH";
    bad.n_items = 2;
    const struct checkout_request *reqs[] = {&good1, &bad, &good2};
    const char *traces[] = {NULL, NULL, NULL};
    json_t *outs[3];
    enum err rc = checkout_accept_many(c, op->known, reqs, traces, 3, bb_wall_ms(), outs,
                                       op->created, op->rcs, op->errors, e);
    for (size_t i = 0; i < 3 && rc == ERR_OK; i++)
        json_decref(outs[i]);
    json_t *out = NULL;
    bool created = false;
    if (rc == ERR_OK)
        op->alone =
            checkout_accept(c, op->known, &bad, bb_wall_ms(), &out, &created, &op->alone_error);
    json_decref(out);
    struct store_rows r;
    if (rc == ERR_OK)
        rc = store_query(c, &COUNT_CHECKOUTS, NULL, 0, &r, e);
    if (rc == ERR_OK) {
        op->checkouts = store_next(&r) ? store_col_int(&r, 0) : -1;
        store_rows_close(&r);
    }
    return rc;
}

/* A basket with a sku no product has is refused, naming the item, and
 * writes nothing; the requests beside it in its batch are accepted. */
static void
a_basket_with_an_unknown_sku_is_refused_and_writes_nothing(void **state)
{
    struct fixture *f = *state;
    struct unknown_op op;
    memset(&op, 0, sizeof op);
    op.known = checkout_skus_create(); /* MUG-1 is learnt, NOSUCH never */
    struct bb_error e;
    assert_ok(store_run(f->db->store, STORE_WRITE, unknown_work, &op, &e), &e);
    checkout_skus_destroy(op.known);
    assert_int_equal(op.rcs[0], ERR_OK);
    assert_true(op.created[0]);
    assert_int_equal(op.rcs[2], ERR_OK);
    assert_true(op.created[2]);
    assert_int_equal(op.rcs[1], ERR_INVALID);
    assert_false(op.created[1]);
    assert_string_equal(op.errors[1].field, "items[1].sku");
    assert_int_equal(op.alone, ERR_INVALID);
    assert_string_equal(op.alone_error.field, "items[1].sku");
    assert_int_equal(op.checkouts, 2);
}

/* One checkout of a mug keyed `key`, its SKU checked against `known`. */
struct mug_op {
    struct checkout_skus *known;
    const char *key;
    enum err rc;
    struct bb_error error;
};

static struct store_stmt UNSELL_MUG = {.sql = "DELETE FROM inventory_products WHERE sku = 'MUG-1'"};

static enum err
mug_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct mug_op *op = arg;
    if (op->key == NULL) /* no checkout: take the mug off the shelves (by hand) */
        return store_exec(c, &UNSELL_MUG, NULL, 0, NULL, e);
    struct checkout_request r = mug(op->key, "tok_visa");
    json_t *out = NULL;
    bool created;
    op->rc = checkout_accept(c, op->known, &r, bb_wall_ms(), &out, &created, &op->error);
    json_decref(out);
    return ERR_OK;
}

/* A SKU found once is not looked up again (products are never deleted, so
 * it still names one): a product row removed by hand goes unnoticed by a
 * service that knew it, and is refused by one that did not. */
static void
a_sku_found_once_is_not_looked_up_again(void **state)
{
    struct fixture *f = *state;
    struct checkout_skus *known = checkout_skus_create();
    struct bb_error e;
    struct mug_op first = {.known = known, .key = "key-known-1"};
    assert_ok(store_run(f->db->store, STORE_WRITE, mug_work, &first, &e), &e);
    assert_int_equal(first.rc, ERR_OK);
    struct mug_op unsell = {0};
    assert_ok(store_run(f->db->store, STORE_WRITE, mug_work, &unsell, &e), &e);
    struct mug_op again = {.known = known, .key = "key-known-2"};
    assert_ok(store_run(f->db->store, STORE_WRITE, mug_work, &again, &e), &e);
    assert_int_equal(again.rc, ERR_OK);
    struct mug_op fresh = {.known = NULL, .key = "key-known-3"};
    assert_ok(store_run(f->db->store, STORE_WRITE, mug_work, &fresh, &e), &e);
    assert_int_equal(fresh.rc, ERR_INVALID);
    assert_string_equal(fresh.error.field, "items[0].sku");
    checkout_skus_destroy(known);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(each_ended_checkout_announces_its_end_once_with_its_own_trace,
                                    setup, teardown),
    cmocka_unit_test_setup_teardown(a_checkout_no_saga_starts_for_fails_with_one_event_and_no_order,
                                    setup, teardown),
    cmocka_unit_test_setup_teardown(a_basket_with_an_unknown_sku_is_refused_and_writes_nothing,
                                    setup, teardown),
    cmocka_unit_test_setup_teardown(a_sku_found_once_is_not_looked_up_again, setup, teardown),
};

TEST_MAIN(tests, true)
