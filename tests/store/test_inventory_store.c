/*
 * test_inventory_store.c: the inventory on both engines: all-or-none
 * reservations, the same order asked twice, commit/release/expiry along the
 * lifecycle table, stock by idempotency key, adjustments, events, and
 * concurrent buyers who never oversell.
 */
#include "testsupport.h"

#include "inventory/inventory.h"
#include "outbox/outbox.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const int64_t T0 = 1800000000000;

/* Mutations that may fail run in a transaction, as the executor runs them:
 * begin(), then end() commits on success and rolls back otherwise. */
static void
begin(struct store_conn *c)
{
    struct bb_error e;
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
}

static enum err
end(struct store_conn *c, enum err rc)
{
    struct bb_error e;
    if (rc == ERR_OK)
        assert_ok(store_commit(c, &e), &e);
    else
        store_rollback(c);
    return rc;
}

static void
product(struct store_conn *c, const char *sku, int64_t stock)
{
    json_t *p;
    bool created;
    struct bb_error e;
    assert_ok(inventory_product_create(c, sku, sku, stock, T0, &p, &created, &e), &e);
    assert_true(created);
    json_decref(p);
}

/* on_hand, reserved of a product. */
static void
stock_of(struct store_conn *c, const char *sku, int64_t *on_hand, int64_t *reserved)
{
    json_t *p;
    struct bb_error e;
    assert_ok(inventory_product_get_json(c, sku, &p, &e), &e);
    *on_hand = json_integer_value(json_object_get(p, "on_hand"));
    *reserved = json_integer_value(json_object_get(p, "reserved"));
    assert_int_equal(json_integer_value(json_object_get(p, "available")), *on_hand - *reserved);
    json_decref(p);
}

static enum err
reserve(struct store_conn *c, const char *order_id, const struct inventory_item *items, size_t n,
        int64_t ttl_ms, int64_t now, bool *created, json_t **short_items, struct bb_error *e)
{
    json_t *res = NULL;
    json_t *shorts = NULL;
    bool made = false;
    /* Callers that do not ask whether it was created want no JSON either. */
    enum err rc = inventory_reserve(c, order_id, items, n, ttl_ms, now, created ? &res : NULL,
                                    &made, &shorts, e);
    json_decref(res);
    if (created)
        *created = made;
    if (short_items)
        *short_items = shorts;
    else
        json_decref(shorts);
    return rc;
}

static const char *
state_of(struct store_conn *c, const char *order_id)
{
    static char buf[32];
    json_t *r;
    struct bb_error e;
    assert_ok(inventory_reservation_get_json(c, order_id, &r, &e), &e);
    bb_strlcpy(buf, json_string_value(json_object_get(r, "state")), sizeof buf);
    json_decref(r);
    return buf;
}

/* How many events of `type` the outbox holds. */
static int64_t
events(struct store_conn *c, const char *type)
{
    struct outbox_filter f = {.limit = 1000, .type = type};
    json_t *page = test_outbox_page(c, &f);
    int64_t n = (int64_t)json_array_size(json_object_get(page, "events"));
    json_decref(page);
    return n;
}

static void
the_lifecycle_table_allows_only_real_transitions(void **state)
{
    (void)state;
    assert_true(inventory_can_transition(INVENTORY_ACTIVE, INVENTORY_COMMITTED));
    assert_true(inventory_can_transition(INVENTORY_ACTIVE, INVENTORY_RELEASED));
    assert_true(inventory_can_transition(INVENTORY_ACTIVE, INVENTORY_EXPIRED));
    for (int from = INVENTORY_COMMITTED; from <= INVENTORY_EXPIRED; from++)
        for (int to = INVENTORY_ACTIVE; to <= INVENTORY_EXPIRED; to++)
            assert_false(inventory_can_transition(from, to));
    assert_false(inventory_can_transition(INVENTORY_ACTIVE, INVENTORY_ACTIVE));
}

static void
a_reservation_takes_every_item_or_none(void **state)
{
    struct test_conn *f = *state;
    product(f->c, "A", 5);
    product(f->c, "B", 1);
    const struct inventory_item too_much[] = {{"A", 2}, {"B", 3}};
    json_t *shorts;
    struct bb_error e;
    begin(f->c);
    assert_int_equal(end(f->c, reserve(f->c, "o1", too_much, 2, 60000, T0, NULL, &shorts, &e)),
                     ERR_INSUFFICIENT_STOCK);
    assert_int_equal(json_array_size(shorts), 1);
    json_t *s = json_array_get(shorts, 0);
    assert_string_equal(json_string_value(json_object_get(s, "sku")), "B");
    assert_int_equal(json_integer_value(json_object_get(s, "requested")), 3);
    assert_int_equal(json_integer_value(json_object_get(s, "available")), 1);
    json_decref(shorts);
    int64_t on_hand, reserved;
    stock_of(f->c, "A", &on_hand, &reserved);
    assert_int_equal(reserved, 0); /* A was taken, then given back by the rollback */
    const struct inventory_item unknown[] = {{"A", 1}, {"NOPE", 1}};
    begin(f->c);
    assert_int_equal(end(f->c, reserve(f->c, "o1", unknown, 2, 60000, T0, NULL, NULL, &e)),
                     ERR_NOT_FOUND);
    assert_string_equal(e.field, "items[1].sku");
    const struct inventory_item fits[] = {{"B", 1}, {"A", 5}};
    bool created;
    assert_ok(reserve(f->c, "o1", fits, 2, 60000, T0, &created, NULL, &e), &e);
    assert_true(created);
    stock_of(f->c, "A", &on_hand, &reserved);
    assert_int_equal(on_hand, 5);
    assert_int_equal(reserved, 5);
    stock_of(f->c, "B", &on_hand, &reserved);
    assert_int_equal(reserved, 1);
    assert_int_equal(events(f->c, "inventory.reserved.v1"), 1);
}

static void
the_same_order_gets_the_same_reservation(void **state)
{
    struct test_conn *f = *state;
    product(f->c, "A", 5);
    product(f->c, "B", 5);
    const struct inventory_item items[] = {{"A", 2}, {"B", 1}};
    const struct inventory_item reordered[] = {{"B", 1}, {"A", 2}};
    const struct inventory_item other[] = {{"A", 3}};
    bool created;
    struct bb_error e;
    assert_ok(reserve(f->c, "o1", items, 2, 60000, T0, &created, NULL, &e), &e);
    assert_true(created);
    assert_ok(reserve(f->c, "o1", reordered, 2, 60000, T0 + 5, &created, NULL, &e), &e);
    assert_false(created);
    assert_int_equal(reserve(f->c, "o1", other, 1, 60000, T0, &created, NULL, &e),
                     ERR_IDEMPOTENCY_MISMATCH);
    int64_t on_hand, reserved;
    stock_of(f->c, "A", &on_hand, &reserved);
    assert_int_equal(reserved, 2); /* taken once */
    assert_int_equal(events(f->c, "inventory.reserved.v1"), 1);
}

static void
commit_sells_and_release_gives_back_each_once(void **state)
{
    struct test_conn *f = *state;
    product(f->c, "A", 10);
    const struct inventory_item items[] = {{"A", 4}};
    struct bb_error e;
    json_t *r;
    assert_ok(reserve(f->c, "sold", items, 1, 60000, T0, NULL, NULL, &e), &e);
    assert_ok(reserve(f->c, "kept", items, 1, 60000, T0, NULL, NULL, &e), &e);
    for (int i = 0; i < 2; i++) { /* the second time answers as is */
        assert_ok(inventory_commit(f->c, "sold", T0 + 1, &r, &e), &e);
        assert_string_equal(json_string_value(json_object_get(r, "state")), "committed");
        json_decref(r);
        assert_ok(inventory_release(f->c, "kept", T0 + 1, &r, &e), &e);
        assert_string_equal(json_string_value(json_object_get(r, "state")), "released");
        json_decref(r);
    }
    assert_ok(inventory_commit(f->c, "sold", T0 + 1, NULL, &e), &e); /* no JSON wanted */
    int64_t on_hand, reserved;
    stock_of(f->c, "A", &on_hand, &reserved);
    assert_int_equal(on_hand, 6);
    assert_int_equal(reserved, 0);
    assert_int_equal(inventory_release(f->c, "sold", T0 + 2, &r, &e), ERR_CONFLICT);
    assert_int_equal(inventory_commit(f->c, "kept", T0 + 2, &r, &e), ERR_CONFLICT);
    assert_int_equal(inventory_release(f->c, "never", T0 + 2, &r, &e), ERR_NOT_FOUND);
    assert_int_equal(events(f->c, "inventory.committed.v1"), 1);
    assert_int_equal(events(f->c, "inventory.released.v1"), 1);
}

static void
an_expired_reservation_gives_its_stock_back_and_cannot_be_sold(void **state)
{
    struct test_conn *f = *state;
    product(f->c, "A", 3);
    const struct inventory_item two[] = {{"A", 2}}, one[] = {{"A", 1}};
    struct bb_error e;
    json_t *r;
    int64_t n, on_hand, reserved;
    assert_ok(reserve(f->c, "late", two, 1, 1000, T0, NULL, NULL, &e), &e);
    assert_ok(reserve(f->c, "other", one, 1, 60000, T0, NULL, NULL, &e), &e);
    assert_ok(inventory_expire_due(f->c, T0 + 999, 100, &n, &e), &e);
    assert_int_equal(n, 0);
    /* Past its TTL, before the sweeper: refused, nothing sold. */
    begin(f->c);
    assert_int_equal(end(f->c, inventory_commit(f->c, "late", T0 + 1000, &r, &e)),
                     ERR_RESERVATION_EXPIRED);
    assert_string_equal(state_of(f->c, "late"), "active");
    assert_ok(inventory_expire_due(f->c, T0 + 1000, 100, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(state_of(f->c, "late"), "expired");
    assert_string_equal(state_of(f->c, "other"), "active");
    stock_of(f->c, "A", &on_hand, &reserved);
    assert_int_equal(on_hand, 3);
    assert_int_equal(reserved, 1);
    assert_int_equal(inventory_commit(f->c, "late", T0 + 2000, &r, &e), ERR_RESERVATION_EXPIRED);
    assert_ok(inventory_release(f->c, "late", T0 + 2000, &r, &e), &e); /* as is */
    assert_string_equal(json_string_value(json_object_get(r, "state")), "expired");
    json_decref(r);
    assert_ok(inventory_expire_due(f->c, T0 + 2000, 100, &n, &e), &e);
    assert_int_equal(n, 0);
    assert_int_equal(events(f->c, "inventory.released.v1"), 1);
    struct outbox_filter flt = {.limit = 10, .type = "inventory.released.v1"};
    json_t *page = test_outbox_page(f->c, &flt);
    json_t *ev = json_array_get(json_object_get(page, "events"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ev, "data"), "reason")),
                        "expired");
    assert_int_equal(json_array_size(json_object_get(page, "events")), 1);
    json_decref(page);
}

static void
stock_and_adjustments_apply_once_per_key(void **state)
{
    struct test_conn *f = *state;
    product(f->c, "A", 0);
    struct bb_error e;
    json_t *p;
    for (int i = 0; i < 2; i++) {
        assert_ok(inventory_stock_add(f->c, "A", 7, "delivery-1", T0 + i, &p, &e), &e);
        assert_int_equal(json_integer_value(json_object_get(p, "on_hand")), 7);
        json_decref(p);
    }
    begin(f->c);
    assert_int_equal(end(f->c, inventory_stock_add(f->c, "A", 8, "delivery-1", T0, &p, &e)),
                     ERR_IDEMPOTENCY_MISMATCH);
    begin(f->c);
    assert_int_equal(end(f->c, inventory_stock_add(f->c, "NOPE", 1, "delivery-2", T0, &p, &e)),
                     ERR_NOT_FOUND);
    const struct inventory_item items[] = {{"A", 5}};
    assert_ok(reserve(f->c, "o1", items, 1, 60000, T0, NULL, NULL, &e), &e);
    /* Reserved stock cannot be corrected away. */
    begin(f->c);
    assert_int_equal(end(f->c, inventory_adjust(f->c, "count-1", "A", -3, "shrinkage", T0, &p, &e)),
                     ERR_INSUFFICIENT_STOCK);
    for (int i = 0; i < 2; i++) {
        assert_ok(inventory_adjust(f->c, "count-2", "A", -2, "shrinkage", T0, &p, &e), &e);
        assert_int_equal(json_integer_value(json_object_get(p, "on_hand")), 5);
        json_decref(p);
    }
    assert_ok(inventory_adjust(f->c, "return-1", "A", 1, "customer return", T0, &p, &e), &e);
    assert_int_equal(json_integer_value(json_object_get(p, "available")), 1);
    json_decref(p);
    assert_int_equal(events(f->c, "inventory.adjusted.v1"), 3);
    assert_int_equal(events(f->c, "inventory.product.created.v1"), 1); /* with no stock */
}

/* ---- concurrent buyers ---------------------------------------------------------------------- */

enum { BUYERS = 16, TRIES = 10, UNITS = 10 };

struct race {
    struct store *store;
    _Atomic int next;
    _Atomic int granted;
    _Atomic int short_;
    _Atomic int failed;
};

struct buy {
    struct race *race;
    char order_id[32];
};

static enum err
buy_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct buy *b = arg;
    const struct inventory_item items[] = {{"HOT", 1}};
    return reserve(c, b->order_id, items, 1, 60000, bb_wall_ms(), NULL, NULL, e);
}

static void *
buyer(void *arg)
{
    struct race *race = arg;
    for (int i = 0; i < TRIES; i++) {
        struct buy b = {.race = race};
        snprintf(b.order_id, sizeof b.order_id, "order-%d", atomic_fetch_add(&race->next, 1));
        struct bb_error e;
        enum err rc = store_run(race->store, STORE_WRITE, buy_work, &b, &e);
        if (rc == ERR_OK)
            atomic_fetch_add(&race->granted, 1);
        else if (rc == ERR_INSUFFICIENT_STOCK)
            atomic_fetch_add(&race->short_, 1);
        else
            atomic_fetch_add(&race->failed, 1);
    }
    return NULL;
}

static void
concurrent_buyers_never_oversell(void **state)
{
    struct test_conn *f = *state;
    product(f->c, "HOT", UNITS);
    struct race race = {.store = f->db->store};
    pthread_t t[BUYERS];
    for (int i = 0; i < BUYERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, buyer, &race), 0);
    for (int i = 0; i < BUYERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(race.failed, 0);
    assert_int_equal(race.granted, UNITS);
    assert_int_equal(race.short_, BUYERS * TRIES - UNITS);
    int64_t on_hand, reserved;
    stock_of(f->c, "HOT", &on_hand, &reserved);
    assert_int_equal(on_hand, UNITS);
    assert_int_equal(reserved, UNITS);
    assert_int_equal(events(f->c, "inventory.reserved.v1"), UNITS);
}

/* The batch form: granted in array order, each request all or nothing,
 * one that fails writes nothing, one asked before answered as before. */
static void
many_reservations_at_once_grant_in_order_fail_alone_and_commit(void **state)
{
    struct test_conn *f = *state;
    struct store_conn *c = f->c;
    struct bb_error e;
    product(c, "A", 5);
    product(c, "B", 2);
    const struct inventory_item before[] = {{"A", 1}};
    begin(c);
    assert_ok(end(c, reserve(c, "o-0", before, 1, 60000, T0, NULL, NULL, &e)), &e);
    const struct inventory_item i1[] = {{"B", 1}, {"A", 2}}, i2[] = {{"B", 2}}, i3[] = {{"A", 1}},
                                i4[] = {{"A", 1}, {"NOPE", 1}}, i5[] = {{"A", 2}};
    const struct inventory_reservation_req reqs[] = {
        {"o-1", i1, 2, NULL}, /* granted: B 1, A 2 */
        {"o-2", i2, 1, NULL}, /* B: 1 left of 2, short */
        {"o-0", i3, 1, NULL}, /* asked before with these items: as before */
        {"o-3", i4, 2, NULL}, /* an unknown SKU */
        {"o-4", i5, 1, NULL}, /* granted: A 2 (5 - 1 - 2 - 2 = 0 left) */
        {"o-5", i3, 1, NULL}, /* A: none left */
    };
    enum { N = BB_ARRAY_LEN(reqs) };
    enum err out[N];
    struct bb_error errors[N];
    begin(c);
    assert_ok(end(c, inventory_reserve_many(c, reqs, N, 60000, T0 + 1, out, errors, &e)), &e);
    const enum err want[N] = {ERR_OK, ERR_INSUFFICIENT_STOCK, ERR_OK, ERR_NOT_FOUND,
                              ERR_OK, ERR_INSUFFICIENT_STOCK};
    for (size_t i = 0; i < N; i++)
        assert_int_equal(out[i], want[i]);
    assert_string_equal(errors[3].field, "items[1].sku");
    int64_t on_hand, reserved;
    stock_of(c, "A", &on_hand, &reserved);
    assert_int_equal(reserved, 5);
    stock_of(c, "B", &on_hand, &reserved);
    assert_int_equal(reserved, 1);
    assert_string_equal(state_of(c, "o-1"), "active");
    assert_string_equal(state_of(c, "o-4"), "active");
    json_t *r;
    assert_int_equal(inventory_reservation_get_json(c, "o-2", &r, &e), ERR_NOT_FOUND);
    assert_int_equal(inventory_reservation_get_json(c, "o-5", &r, &e), ERR_NOT_FOUND);
    assert_int_equal(events(c, "inventory.reserved.v1"), 3);
    /* Again: the same answers, nothing more taken; other items: a mismatch. */
    const struct inventory_reservation_req again[] = {{"o-1", i1, 2, NULL}, {"o-4", i3, 1, NULL}};
    begin(c);
    assert_ok(end(c, inventory_reserve_many(c, again, 2, 60000, T0 + 2, out, errors, &e)), &e);
    assert_int_equal(out[0], ERR_OK);
    assert_int_equal(out[1], ERR_IDEMPOTENCY_MISMATCH);
    stock_of(c, "A", &on_hand, &reserved);
    assert_int_equal(reserved, 5);
    assert_int_equal(events(c, "inventory.reserved.v1"), 3);
    /* What the batch reserved is released like any reservation. */
    begin(c);
    assert_ok(end(c, inventory_release(c, "o-4", T0 + 3, NULL, &e)), &e);
    stock_of(c, "A", &on_hand, &reserved);
    assert_int_equal(reserved, 3);
    /* And committed many at once: sold once, a released one refused, an
     * unknown one not found, one committed before answered as before. */
    const char *commits[] = {"o-1", "o-4", "o-0", "nope", "o-1"};
    enum { NC = BB_ARRAY_LEN(commits) };
    enum err co[NC];
    struct bb_error ce[NC];
    begin(c);
    assert_ok(end(c, inventory_commit_many(c, commits, NULL, NC - 1, T0 + 4, co, ce, &e)), &e);
    assert_int_equal(co[0], ERR_OK);
    assert_int_equal(co[1], ERR_CONFLICT);
    assert_int_equal(co[2], ERR_OK);
    assert_int_equal(co[3], ERR_NOT_FOUND);
    begin(c);
    assert_ok(end(c, inventory_commit_many(c, commits + NC - 1, NULL, 1, T0 + 5, co, ce, &e)), &e);
    assert_int_equal(co[0], ERR_OK);
    assert_string_equal(state_of(c, "o-1"), "committed");
    assert_string_equal(state_of(c, "o-0"), "committed");
    stock_of(c, "A", &on_hand, &reserved); /* o-1 took 2, o-0 1: sold */
    assert_int_equal(on_hand, 2);
    assert_int_equal(reserved, 0);
    stock_of(c, "B", &on_hand, &reserved);
    assert_int_equal(on_hand, 1);
    assert_int_equal(reserved, 0);
    assert_int_equal(events(c, "inventory.committed.v1"), 2);
    /* An expired one is refused, and keeps its stock reserved until swept. */
    begin(c);
    assert_ok(end(c, reserve(c, "o-6", i3, 1, 10, T0 + 6, NULL, NULL, &e)), &e);
    const char *late[] = {"o-6"};
    begin(c);
    assert_ok(end(c, inventory_commit_many(c, late, NULL, 1, T0 + 100, co, ce, &e)), &e);
    assert_int_equal(co[0], ERR_RESERVATION_EXPIRED);
    assert_string_equal(state_of(c, "o-6"), "active");
}

#define INV_TEST(name) cmocka_unit_test_setup_teardown(name, test_conn_setup, test_conn_teardown)

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_lifecycle_table_allows_only_real_transitions),
    INV_TEST(a_reservation_takes_every_item_or_none),
    INV_TEST(the_same_order_gets_the_same_reservation),
    INV_TEST(commit_sells_and_release_gives_back_each_once),
    INV_TEST(an_expired_reservation_gives_its_stock_back_and_cannot_be_sold),
    INV_TEST(stock_and_adjustments_apply_once_per_key),
    INV_TEST(concurrent_buyers_never_oversell),
    INV_TEST(many_reservations_at_once_grant_in_order_fail_alone_and_commit),
};

TEST_MAIN(tests, true)
