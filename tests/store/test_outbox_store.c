/*
 * test_outbox_store.c: the outbox and idempotency records on both engines:
 * events commit or vanish with their transaction, pages follow seq with
 * filters, a reader never sees a gap (PostgreSQL: an event waits for older
 * transactions), and a key's answer is saved once and replayed.
 */
#include "testsupport.h"

#include "outbox/outbox.h"

#include <stdlib.h>
#include <string.h>

static const int64_t T0 = 1800000000000;

static void
append(struct store_conn *c, const char *type, const char *aggregate, int n)
{
    json_t *data = json_pack("{s:i}", "n", n);
    struct outbox_event ev = {.type = type,
                              .aggregate_type = "thing",
                              .aggregate_id = aggregate,
                              .data = data,
                              .traceparent =
                                  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
    struct bb_error e;
    assert_ok(outbox_append(c, &ev, T0 + n, &e), &e);
    json_decref(data);
}

/* The page a reader gets once it holds `want` events (10 s at most: other
 * test processes' transactions share the PostgreSQL cluster). */
static json_t *
page_of(struct store_conn *c, const struct outbox_filter *f, size_t want)
{
    json_t *page = NULL;
    struct bb_error e;
    for (int64_t deadline = bb_mono_ms() + 10000;; bb_sleep_ms(10)) {
        json_decref(page);
        assert_ok(outbox_list_json(c, f, &page, &e), &e);
        if (json_array_size(json_object_get(page, "events")) >= want || bb_mono_ms() > deadline)
            return page;
    }
}

static int64_t
seq_at(const json_t *page, size_t i)
{
    return json_integer_value(
        json_object_get(json_array_get(json_object_get(page, "events"), i), "seq"));
}

static void
events_commit_or_vanish_with_their_transaction(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    append(c, "thing.made.v1", "gone", 1);
    store_rollback(c);
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    append(c, "thing.made.v1", "kept", 2);
    assert_ok(store_commit(c, &e), &e);
    struct outbox_filter f = {.limit = 10};
    json_t *page = page_of(c, &f, 1);
    json_t *events = json_object_get(page, "events");
    assert_int_equal(json_array_size(events), 1);
    json_t *ev = json_array_get(events, 0);
    assert_string_equal(json_string_value(json_object_get(ev, "aggregate_id")), "kept");
    assert_true(bb_uuid_is_valid(json_string_value(json_object_get(ev, "event_id"))));
    assert_string_equal(json_string_value(json_object_get(ev, "traceparent")),
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "data"), "n")), 2);
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    store_conn_close(c);
}

static void
pages_follow_seq_with_filters(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    for (int i = 0; i < 5; i++)
        append(c, i % 2 ? "thing.changed.v1" : "thing.made.v1", i < 3 ? "x" : "y", i);
    struct outbox_filter f = {.limit = 2};
    json_t *page = page_of(c, &f, 2);
    assert_true(seq_at(page, 0) < seq_at(page, 1));
    f.after = json_integer_value(json_object_get(page, "next_after"));
    assert_int_equal(f.after, seq_at(page, 1));
    json_decref(page);
    page = page_of(c, &f, 2);
    assert_true(seq_at(page, 0) > f.after);
    json_decref(page);
    struct outbox_filter made = {.limit = 10, .type = "thing.made.v1"};
    page = page_of(c, &made, 3);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 3);
    json_decref(page);
    struct outbox_filter of_y = {.limit = 10, .aggregate_id = "y"};
    page = page_of(c, &of_y, 2);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 2);
    json_decref(page);
    store_conn_close(c);
}

static void
a_reader_never_sees_a_gap(void **state)
{
    struct test_db *db = *state;
    struct store_conn *older, *newer, *reader;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &older, &e), &e);
    assert_ok(store_conn_open(db->store, &newer, &e), &e);
    assert_ok(store_conn_open(db->store, &reader, &e), &e);
    struct outbox_filter f = {.limit = 10};
    if (db->engine == STORE_POSTGRES) {
        /* An older transaction holds seq 1 while a newer one commits seq 2:
         * a reader sees neither, so it cannot move past 1 and miss it. */
        assert_ok(store_begin(older, STORE_WRITE, &e), &e);
        append(older, "thing.made.v1", "slow", 1);
        append(newer, "thing.made.v1", "fast", 2);
        json_t *page;
        assert_ok(outbox_list_json(reader, &f, &page, &e), &e);
        assert_int_equal(json_array_size(json_object_get(page, "events")), 0);
        json_decref(page);
        assert_ok(store_commit(older, &e), &e);
    } else { /* one writer: commit order is seq order */
        append(older, "thing.made.v1", "slow", 1);
        append(newer, "thing.made.v1", "fast", 2);
    }
    json_t *page = page_of(reader, &f, 2);
    json_t *events = json_object_get(page, "events");
    assert_int_equal(json_array_size(events), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(events, 0), "aggregate_id")), "slow");
    assert_true(seq_at(page, 0) < seq_at(page, 1));
    json_decref(page);
    store_conn_close(older);
    store_conn_close(newer);
    store_conn_close(reader);
}

static void
an_idempotency_key_answers_once_and_refuses_other_requests(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    struct store_idem idem;
    /* A failed request is not remembered. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(store_idem_claim(c, "test", "k1", "fp-a", T0, &idem, &e), &e);
    assert_false(idem.replay);
    store_rollback(c);
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(store_idem_claim(c, "test", "k1", "fp-b", T0, &idem, &e), &e);
    assert_false(idem.replay);
    assert_ok(store_idem_save(c, "test", "k1", 201, "{\"id\":7}", &e), &e);
    assert_ok(store_commit(c, &e), &e);
    assert_ok(store_idem_claim(c, "test", "k1", "fp-b", T0 + 1, &idem, &e), &e);
    assert_true(idem.replay);
    assert_int_equal(idem.status, 201);
    assert_string_equal(idem.body, "{\"id\":7}");
    store_idem_deinit(&idem);
    assert_int_equal(store_idem_claim(c, "test", "k1", "fp-c", T0 + 1, &idem, &e),
                     ERR_IDEMPOTENCY_MISMATCH);
    assert_string_equal(e.field, "Idempotency-Key");
    /* Scopes are apart; keys must be visible ASCII. */
    assert_ok(store_idem_claim(c, "other", "k1", "fp-c", T0, &idem, &e), &e);
    assert_false(idem.replay);
    assert_int_equal(store_idem_claim(c, "test", "bad key", "fp", T0, &idem, &e), ERR_INVALID);
    int64_t n;
    assert_ok(store_idem_prune(c, T0 + 1, 100, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_ok(store_idem_claim(c, "test", "k1", "fp-d", T0 + 2, &idem, &e), &e);
    assert_false(idem.replay);
    store_conn_close(c);
}

#define DB_TEST(name) cmocka_unit_test_setup_teardown(name, test_db_setup, test_db_teardown)

static const struct CMUnitTest tests[] = {
    DB_TEST(events_commit_or_vanish_with_their_transaction),
    DB_TEST(pages_follow_seq_with_filters),
    DB_TEST(a_reader_never_sees_a_gap),
    DB_TEST(an_idempotency_key_answers_once_and_refuses_other_requests),
};

TEST_MAIN(tests, true)
