/*
 * test_outbox_store.c: the outbox and idempotency records on both engines:
 * events commit or vanish with their transaction, pages follow seq with
 * filters, a reader never sees a gap (PostgreSQL: seqs follow commits, given
 * by the sequencer), a key's answer is saved once and replayed, and an
 * in-process consumer's claims go on from where the last one ended, and
 * retention deletes old events without giving a seq twice.
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
    json_t *page = test_outbox_page(c, &f);
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
    json_t *page = test_outbox_page(c, &f);
    assert_true(seq_at(page, 0) < seq_at(page, 1));
    f.after = json_integer_value(json_object_get(page, "next_after"));
    assert_int_equal(f.after, seq_at(page, 1));
    json_decref(page);
    page = test_outbox_page(c, &f);
    assert_true(seq_at(page, 0) > f.after);
    json_decref(page);
    struct outbox_filter made = {.limit = 10, .type = "thing.made.v1"};
    page = test_outbox_page(c, &made);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 3);
    json_decref(page);
    struct outbox_filter of_y = {.limit = 10, .aggregate_id = "y"};
    page = test_outbox_page(c, &of_y);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 2);
    json_decref(page);
    store_conn_close(c);
}

static const char *
aggregate_at(const json_t *page, size_t i)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(page, "events"), i), "aggregate_id"));
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
        /* An older transaction takes an id while a newer one takes the next
         * and commits first: seqs follow the commits, so a reader that has
         * read the newer event still gets the older one after it. */
        assert_ok(store_begin(older, STORE_WRITE, &e), &e);
        append(older, "thing.made.v1", "slow", 1);
        append(newer, "thing.made.v1", "fast", 2);
        json_t *page = test_outbox_page(reader, &f);
        assert_int_equal(json_array_size(json_object_get(page, "events")), 1);
        assert_string_equal(aggregate_at(page, 0), "fast");
        f.after = seq_at(page, 0);
        json_decref(page);
        assert_ok(store_commit(older, &e), &e);
    } else { /* one writer: commit order is seq order */
        append(newer, "thing.made.v1", "fast", 2);
        json_t *page = test_outbox_page(reader, &f);
        f.after = seq_at(page, 0);
        json_decref(page);
        append(older, "thing.made.v1", "slow", 1);
    }
    json_t *page = test_outbox_page(reader, &f);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 1);
    assert_string_equal(aggregate_at(page, 0), "slow");
    assert_int_equal(seq_at(page, 0), f.after + 1);
    assert_int_equal(json_integer_value(json_object_get(page, "held_back")), 0);
    json_decref(page);
    store_conn_close(older);
    store_conn_close(newer);
    store_conn_close(reader);
}

/* PostgreSQL's sequencer gives 10,000 seqs a read and says what it left. */
static void
a_read_says_how_many_events_wait_for_their_seq(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    for (int i = 0; i < 10005; i++)
        append(c, "thing.made.v1", "many", i);
    assert_ok(store_commit(c, &e), &e);
    struct outbox_filter f = {.after = 9995, .limit = 1000};
    json_t *page = test_outbox_page(c, &f);
    bool pg = db->engine == STORE_POSTGRES;
    assert_int_equal(json_array_size(json_object_get(page, "events")), pg ? 5 : 10);
    assert_int_equal(json_integer_value(json_object_get(page, "held_back")), pg ? 5 : 0);
    json_decref(page);
    page = test_outbox_page(c, &f);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 10);
    assert_int_equal(seq_at(page, 9), 10005);
    assert_int_equal(json_integer_value(json_object_get(page, "held_back")), 0);
    json_decref(page);
    store_conn_close(c);
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

/* An event for an in-process consumer, committed at once (c outside a
 * transaction) or in the caller's open one. */
static void
append_for_consumer(struct store_conn *c, const char *aggregate)
{
    json_t *data = json_object();
    struct outbox_event ev = {.type = "thing.asked.v1",
                              .aggregate_type = "thing",
                              .aggregate_id = aggregate,
                              .data = data,
                              .for_consumer = true};
    struct bb_error e;
    assert_ok(outbox_append(c, &ev, T0, &e), &e);
    json_decref(data);
}

/* Claim (and mark handled) what follows `after`; the aggregate ids, joined. */
static void
claim_mark(struct store_conn *c, int64_t after, int64_t limit, char *got, size_t cap, int64_t *last)
{
    struct bb_error e;
    struct outbox_claimed *ev;
    size_t n;
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(outbox_claim(c, "thing.asked.v1", after, limit, &ev, &n, &e), &e);
    int64_t ids[16];
    got[0] = '\0';
    for (size_t i = 0; i < n && i < 16; i++) {
        ids[i] = ev[i].id;
        strncat(got, ev[i].aggregate_id, cap - strlen(got) - 1);
    }
    assert_ok(outbox_mark_handled(c, ids, n, T0, &e), &e);
    assert_ok(store_commit(c, &e), &e);
    if (n > 0)
        *last = ev[n - 1].id;
    outbox_claimed_free(ev, n);
}

/* A consumer goes on from the last event it claimed; what commits late
 * with a lower id waits for its next read from the start. */
static void
a_claim_goes_on_from_where_the_last_one_ended(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c, *late;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    assert_ok(store_conn_open(db->store, &late, &e), &e);
    bool pg = store_conn_engine(c) == STORE_POSTGRES;
    if (pg) { /* an id taken now, committed after the others */
        assert_ok(store_begin(late, STORE_WRITE, &e), &e);
        append_for_consumer(late, "x");
    }
    const char *names[] = {"a", "b", "c", "d", "e"};
    for (size_t i = 0; i < 5; i++)
        append_for_consumer(c, names[i]);
    char got[32];
    int64_t last = 0;
    claim_mark(c, 0, 2, got, sizeof got, &last);
    assert_string_equal(got, "ab");
    claim_mark(c, last, 2, got, sizeof got, &last);
    assert_string_equal(got, "cd");
    if (pg)
        assert_ok(store_commit(late, &e), &e);
    claim_mark(c, last, 16, got, sizeof got, &last);
    assert_string_equal(got, "e");
    claim_mark(c, last, 16, got, sizeof got, &last);
    assert_string_equal(got, "");
    claim_mark(c, 0, 16, got, sizeof got, &last);
    assert_string_equal(got, pg ? "x" : "");
    store_conn_close(late);
    store_conn_close(c);
}

/* The aggregate ids of every event, in seq order, joined. */
static void
aggregates(struct store_conn *c, char *out, size_t cap)
{
    struct outbox_filter f = {.limit = 100};
    json_t *page = test_outbox_page(c, &f);
    out[0] = '\0';
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(page, "events"), i, ev)
    {
        strncat(out, json_string_value(json_object_get(ev, "aggregate_id")), cap - strlen(out) - 1);
    }
    json_decref(page);
}

/* Prune, two ids a window, until the cursor is back at the start. */
static int64_t
prune_all(struct store_conn *c, int64_t before_ms)
{
    struct bb_error e;
    int64_t cursor = 0, total = 0, windows = 0;
    do {
        int64_t n;
        assert_ok(store_begin(c, STORE_WRITE, &e), &e);
        assert_ok(outbox_prune(c, before_ms, 2, &cursor, &n, &e), &e);
        assert_ok(store_commit(c, &e), &e);
        total += n;
        assert_true(++windows < 100);
    } while (cursor != 0);
    return total;
}

/* Retention deletes old events a window at a time and keeps the young
 * ones, those a consumer still waits for and (PostgreSQL) the one with the
 * highest seq; what is appended afterwards still reads after every seq
 * read before. */
static void
retention_keeps_the_young_the_waiting_and_the_order(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    bool pg = store_conn_engine(c) == STORE_POSTGRES;
    append_for_consumer(c, "w"); /* at T0, not handled */
    const char *old[] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++)
        append(c, "thing.made.v1", old[i], i); /* at T0 + i */
    struct outbox_filter f = {.limit = 100};
    json_t *page = test_outbox_page(c, &f); /* PostgreSQL: gives them seqs */
    int64_t last = seq_at(page, 5);
    json_decref(page);
    append(c, "thing.made.v1", "y", 1000); /* young */
    char got[32];
    assert_int_equal(prune_all(c, T0 + 500), pg ? 4 : 5);
    aggregates(c, got, sizeof got);
    assert_string_equal(got, pg ? "wey" : "wy");
    f.after = last;
    page = test_outbox_page(c, &f);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 1);
    assert_true(seq_at(page, 0) > last);
    json_decref(page);
    /* Once handled, the waiting event goes too (and on PostgreSQL "e",
     * no longer the highest seq). */
    int64_t claimed = 0;
    claim_mark(c, 0, 16, got, sizeof got, &claimed);
    assert_string_equal(got, "w");
    assert_int_equal(prune_all(c, T0 + 500), pg ? 2 : 1);
    aggregates(c, got, sizeof got);
    assert_string_equal(got, "y");
    store_conn_close(c);
}

#define DB_TEST(name) cmocka_unit_test_setup_teardown(name, test_db_setup, test_db_teardown)

static const struct CMUnitTest tests[] = {
    DB_TEST(events_commit_or_vanish_with_their_transaction),
    DB_TEST(pages_follow_seq_with_filters),
    DB_TEST(a_reader_never_sees_a_gap),
    DB_TEST(a_read_says_how_many_events_wait_for_their_seq),
    DB_TEST(an_idempotency_key_answers_once_and_refuses_other_requests),
    DB_TEST(a_claim_goes_on_from_where_the_last_one_ended),
    DB_TEST(retention_keeps_the_young_the_waiting_and_the_order),
};

TEST_MAIN(tests, true)
