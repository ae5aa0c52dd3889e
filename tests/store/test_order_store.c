/*
 * test_order_store.c: orders on both engines: one per checkout, the status
 * table with its timeline, and their events.
 */
#include "testsupport.h"

#include "orders/orders.h"
#include "outbox/outbox.h"

#include <stdlib.h>
#include <string.h>

static const int64_t T0 = 1800000000000;

static const struct order_item ITEMS[] = {{"A", 2, 250}, {"B", 1, 1000}};

static struct order_spec
spec(const char *checkout_id)
{
    return (struct order_spec){.checkout_id = checkout_id,
                               .customer_id = "cust-1",
                               .currency = "EUR",
                               .items = ITEMS,
                               .n_items = BB_ARRAY_LEN(ITEMS)};
}

static void
the_status_table_allows_only_real_transitions(void **state)
{
    (void)state;
    assert_true(order_can_transition(ORDER_PENDING, ORDER_CONFIRMED));
    assert_true(order_can_transition(ORDER_PENDING, ORDER_CANCELLED));
    assert_false(order_can_transition(ORDER_CONFIRMED, ORDER_CANCELLED));
    assert_false(order_can_transition(ORDER_CANCELLED, ORDER_CONFIRMED));
    assert_false(order_can_transition(ORDER_CONFIRMED, ORDER_PENDING));
    assert_false(order_can_transition(ORDER_PENDING, ORDER_PENDING));
}

static void
one_order_per_checkout(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    struct order_spec s = spec("chk-1");
    json_t *first, *again;
    bool created;
    assert_ok(order_create(c, &s, T0, NULL, &first, &created, &e), &e);
    assert_true(created);
    assert_int_equal(json_integer_value(json_object_get(first, "total_amount")), 1500);
    assert_string_equal(json_string_value(json_object_get(first, "status")), "PENDING");
    assert_int_equal(json_array_size(json_object_get(first, "items")), 2);
    assert_ok(order_create(c, &s, T0 + 5, NULL, &again, &created, &e), &e);
    assert_false(created);
    assert_true(json_equal(json_object_get(first, "order_id"), json_object_get(again, "order_id")));
    json_decref(again);
    /* Only the id, as the saga asks for it. */
    char id[ORDER_UUID_LEN + 1];
    assert_ok(order_create(c, &s, T0 + 6, id, NULL, &created, &e), &e);
    assert_false(created);
    assert_string_equal(id, json_string_value(json_object_get(first, "order_id")));
    s.customer_id = "cust-2";
    assert_int_equal(order_create(c, &s, T0, NULL, &again, &created, &e), ERR_IDEMPOTENCY_MISMATCH);
    assert_string_equal(e.field, "checkout_id");
    assert_ok(order_find_by_checkout(c, "chk-1", &again, &e), &e);
    assert_true(json_equal(json_object_get(first, "order_id"), json_object_get(again, "order_id")));
    json_decref(again);
    assert_int_equal(order_find_by_checkout(c, "chk-2", &again, &e), ERR_NOT_FOUND);
    const struct order_item huge[] = {{"A", 1000000, BB_AMOUNT_MAX}};
    struct order_spec big = spec("chk-3");
    big.items = huge;
    big.n_items = 1;
    assert_int_equal(order_create(c, &big, T0, NULL, &again, &created, &e), ERR_INVALID);
    json_decref(first);
    store_conn_close(c);
}

/* The batch form: new orders made with their items, timelines and events;
 * one made before answered as before; a bad one fails alone. */
static void
many_orders_at_once(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    json_t *first;
    bool created;
    struct order_spec before = spec("chk-0");
    assert_ok(order_create(c, &before, T0, NULL, &first, &created, &e), &e);
    const struct order_item huge[] = {{"A", 1000000, BB_AMOUNT_MAX}};
    struct order_spec specs[] = {spec("chk-1"), spec("chk-0"), spec("chk-2"), spec("chk-3"),
                                 spec("chk-0")};
    specs[2].items = huge;
    specs[2].n_items = 1;
    specs[4].customer_id = "someone else"; /* chk-0 with other contents */
    specs[4].checkout_id = "chk-0";
    enum { N = BB_ARRAY_LEN(specs) };
    char ids[N][ORDER_UUID_LEN + 1];
    enum err out[N];
    struct bb_error errors[N];
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(order_create_many(c, specs, N, T0 + 1, ids, out, errors, &e), &e);
    assert_ok(store_commit(c, &e), &e);
    assert_int_equal(out[0], ERR_OK);
    assert_int_equal(out[1], ERR_OK);
    assert_string_equal(ids[1], json_string_value(json_object_get(first, "order_id")));
    assert_int_equal(out[2], ERR_INVALID);
    assert_int_equal(out[3], ERR_OK);
    assert_int_equal(out[4], ERR_IDEMPOTENCY_MISMATCH);
    assert_int_equal(order_find_by_checkout(c, "chk-2", &first, &e), ERR_NOT_FOUND);
    json_decref(first);
    for (size_t i = 0; i < N; i += 3) { /* chk-1 and chk-3, made by the batch */
        json_t *o;
        assert_ok(order_get_json(c, ids[i], &o, &e), &e);
        assert_string_equal(json_string_value(json_object_get(o, "checkout_id")),
                            specs[i].checkout_id);
        assert_int_equal(json_integer_value(json_object_get(o, "total_amount")), 1500);
        json_t *items = json_object_get(o, "items");
        assert_int_equal(json_array_size(items), 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(items, 1), "sku")),
                            "B");
        json_t *timeline = json_object_get(o, "timeline");
        assert_int_equal(json_array_size(timeline), 1);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(timeline, 0), "status")), "PENDING");
        json_decref(o);
    }
    /* Confirmed many at once: chk-1's and chk-3's orders move, one
     * confirmed before is answered as before, a cancelled one refused, an
     * unknown one not found. */
    assert_ok(order_cancel(c, ids[1], "changed my mind", T0 + 2, NULL, &e), &e);
    const char *confirm[] = {ids[0], ids[3], ids[1], "nope"};
    enum { NC = BB_ARRAY_LEN(confirm) };
    enum err co[NC];
    struct bb_error ce[NC];
    for (int round = 0; round < 2; round++) {
        assert_ok(store_begin(c, STORE_WRITE, &e), &e);
        assert_ok(order_confirm_many(c, confirm, NULL, NC, "paid", T0 + 3, co, ce, &e), &e);
        assert_ok(store_commit(c, &e), &e);
        assert_int_equal(co[0], ERR_OK);
        assert_int_equal(co[1], ERR_OK);
        assert_int_equal(co[2], ERR_CONFLICT);
        assert_int_equal(co[3], ERR_NOT_FOUND);
    }
    for (size_t i = 0; i < N; i += 3) {
        json_t *o;
        assert_ok(order_get_json(c, ids[i], &o, &e), &e);
        assert_string_equal(json_string_value(json_object_get(o, "status")), "CONFIRMED");
        json_t *timeline = json_object_get(o, "timeline");
        assert_int_equal(json_array_size(timeline), 2);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(timeline, 1), "reason")), "paid");
        json_decref(o);
    }
    struct outbox_filter changed = {.limit = 100, .type = "order.status.changed.v1"};
    json_t *moves = test_outbox_page(c, &changed);
    assert_int_equal(json_array_size(json_object_get(moves, "events")),
                     3); /* 1 cancel, 2 confirms */
    json_decref(moves);
    struct outbox_filter f = {.limit = 100, .type = "order.created.v1"};
    json_t *page = test_outbox_page(c, &f);
    json_t *events = json_object_get(page, "events");
    assert_int_equal(json_array_size(events), 3);
    json_t *last = json_object_get(json_array_get(events, 2), "data");
    assert_string_equal(json_string_value(json_object_get(last, "order_id")), ids[3]);
    assert_int_equal(json_integer_value(json_object_get(last, "total_amount")), 1500);
    json_decref(page);
    store_conn_close(c);
}

static void
confirm_and_cancel_are_idempotent_and_final(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    json_t *a, *b, *o;
    bool created;
    struct order_spec sa = spec("chk-a"), sb = spec("chk-b");
    assert_ok(order_create(c, &sa, T0, NULL, &a, &created, &e), &e);
    assert_ok(order_create(c, &sb, T0, NULL, &b, &created, &e), &e);
    const char *ida = json_string_value(json_object_get(a, "order_id"));
    const char *idb = json_string_value(json_object_get(b, "order_id"));
    for (int i = 0; i < 2; i++) {
        assert_ok(order_confirm(c, ida, NULL, T0 + 10 + i, &o, &e), &e);
        assert_string_equal(json_string_value(json_object_get(o, "status")), "CONFIRMED");
        assert_int_equal(json_array_size(json_object_get(o, "timeline")), 2);
        json_decref(o);
        assert_ok(order_cancel(c, idb, "payment declined", T0 + 10 + i, &o, &e), &e);
        json_t *last = json_array_get(json_object_get(o, "timeline"), 1);
        assert_string_equal(json_string_value(json_object_get(last, "status")), "CANCELLED");
        assert_string_equal(json_string_value(json_object_get(last, "reason")), "payment declined");
        json_decref(o);
    }
    assert_int_equal(order_cancel(c, ida, NULL, T0 + 20, &o, &e), ERR_CONFLICT);
    assert_int_equal(order_confirm(c, idb, NULL, T0 + 20, &o, &e), ERR_CONFLICT);
    assert_int_equal(order_confirm(c, "nope", NULL, T0 + 20, &o, &e), ERR_NOT_FOUND);
    assert_ok(order_confirm(c, ida, NULL, T0 + 30, NULL, &e), &e); /* no JSON wanted */
    /* Events: two created, one change each. */
    struct outbox_filter f = {.limit = 100};
    json_t *page = test_outbox_page(c, &f);
    size_t n = json_array_size(json_object_get(page, "events"));
    json_t *events = json_object_get(page, "events");
    assert_int_equal(n, 4);
    const char *want[] = {"order.created.v1", "order.created.v1", "order.status.changed.v1",
                          "order.status.changed.v1"};
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(events, i), "type")),
                            want[i]);
    json_t *change = json_object_get(json_array_get(events, 3), "data");
    assert_string_equal(json_string_value(json_object_get(change, "from")), "PENDING");
    assert_string_equal(json_string_value(json_object_get(change, "to")), "CANCELLED");
    json_decref(page);
    json_decref(a);
    json_decref(b);
    store_conn_close(c);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_status_table_allows_only_real_transitions),
    cmocka_unit_test_setup_teardown(one_order_per_checkout, test_db_setup, test_db_teardown),
    cmocka_unit_test_setup_teardown(many_orders_at_once, test_db_setup, test_db_teardown),
    cmocka_unit_test_setup_teardown(confirm_and_cancel_are_idempotent_and_final, test_db_setup,
                                    test_db_teardown),
};

TEST_MAIN(tests, true)
