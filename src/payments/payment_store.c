/*
 * payment_store.c: the payment tables (and the PSP mock's), the state
 * table, and reading a payment as the API shows it.
 */
#include "payments/payments_int.h"

#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "payments, attempts, refunds, the PSP mock's record",
        .sqlite = "CREATE TABLE payments ("
                  " id TEXT PRIMARY KEY, order_id TEXT NOT NULL,"
                  " idempotency_key TEXT NOT NULL UNIQUE, fingerprint TEXT NOT NULL,"
                  " amount INTEGER NOT NULL, currency TEXT NOT NULL, card TEXT,"
                  " state TEXT NOT NULL, captured_amount INTEGER NOT NULL DEFAULT 0,"
                  " refunded_amount INTEGER NOT NULL DEFAULT 0, psp_reference TEXT,"
                  " failure_reason TEXT, created_at_ms INTEGER NOT NULL,"
                  " updated_at_ms INTEGER NOT NULL,"
                  " CHECK (captured_amount <= amount AND refunded_amount <= captured_amount))"
                  " WITHOUT ROWID;"
                  "CREATE INDEX payments_by_order ON payments (order_id);"
                  "CREATE TABLE payment_attempts ("
                  " id INTEGER PRIMARY KEY AUTOINCREMENT, payment_id TEXT NOT NULL,"
                  " op TEXT NOT NULL, outcome TEXT NOT NULL, latency_ms INTEGER NOT NULL,"
                  " detail TEXT, at_ms INTEGER NOT NULL);"
                  "CREATE INDEX payment_attempts_by_payment ON payment_attempts (payment_id, id);"
                  "CREATE TABLE payment_refunds ("
                  " id TEXT PRIMARY KEY, payment_id TEXT NOT NULL,"
                  " idempotency_key TEXT NOT NULL UNIQUE, amount INTEGER NOT NULL,"
                  " state TEXT NOT NULL, created_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
                  "CREATE INDEX payment_refunds_by_payment ON payment_refunds (payment_id);"
                  "CREATE TABLE psp_charges ("
                  " seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,"
                  " op TEXT NOT NULL, reference TEXT NOT NULL, amount INTEGER NOT NULL,"
                  " currency TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT,"
                  " created_at_ms INTEGER NOT NULL);",
        .pg = "CREATE TABLE payments ("
              " id TEXT PRIMARY KEY, order_id TEXT NOT NULL,"
              " idempotency_key TEXT NOT NULL UNIQUE, fingerprint TEXT NOT NULL,"
              " amount BIGINT NOT NULL, currency TEXT NOT NULL, card TEXT,"
              " state TEXT NOT NULL, captured_amount BIGINT NOT NULL DEFAULT 0,"
              " refunded_amount BIGINT NOT NULL DEFAULT 0, psp_reference TEXT,"
              " failure_reason TEXT, created_at_ms BIGINT NOT NULL,"
              " updated_at_ms BIGINT NOT NULL,"
              " CHECK (captured_amount <= amount AND refunded_amount <= captured_amount));"
              "CREATE INDEX payments_by_order ON payments (order_id);"
              "CREATE TABLE payment_attempts ("
              " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payment_id TEXT NOT NULL,"
              " op TEXT NOT NULL, outcome TEXT NOT NULL, latency_ms BIGINT NOT NULL,"
              " detail TEXT, at_ms BIGINT NOT NULL);"
              "CREATE INDEX payment_attempts_by_payment ON payment_attempts (payment_id, id);"
              "CREATE TABLE payment_refunds ("
              " id TEXT PRIMARY KEY, payment_id TEXT NOT NULL,"
              " idempotency_key TEXT NOT NULL UNIQUE, amount BIGINT NOT NULL,"
              " state TEXT NOT NULL, created_at_ms BIGINT NOT NULL);"
              "CREATE INDEX payment_refunds_by_payment ON payment_refunds (payment_id);"
              "CREATE TABLE psp_charges ("
              " seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
              " op TEXT NOT NULL, reference TEXT NOT NULL, amount BIGINT NOT NULL,"
              " currency TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT,"
              " created_at_ms BIGINT NOT NULL);",
    },
    {
        /* PostgreSQL: an attempt goes into one index, its payment's, which
         * the attempts are read by (SQLite keys the table by its id). */
        .version = 2,
        .name = "payment attempts keyed by their payment",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE payment_attempts DROP CONSTRAINT payment_attempts_pkey;"
              "ALTER TABLE payment_attempts ADD PRIMARY KEY (payment_id, id);"
              "DROP INDEX payment_attempts_by_payment;",
    },
    {
        /* A payment changes twice within a second of its insert (authorized,
         * captured): with room on its page, in place (HOT: no new entry in
         * its three indexes, no row lock logged for the move). */
        .version = 3,
        .name = "payments leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE payments SET (fillfactor = 70);",
    },
    {
        /* refunded_amount counted refunds still being asked for (a PSP
         * error or timeout leaves one pending until retried), so a payment
         * could read REFUNDED with less given back. What is reserved for
         * pending refunds gets its own column; refunded_amount is what the
         * PSP approved, and a payment it does not cover is CAPTURED again. */
        .version = 4,
        .name = "refunds pending reserved apart from refunds made",
        .sqlite = "ALTER TABLE payments ADD COLUMN refund_pending_amount INTEGER NOT NULL"
                  " DEFAULT 0;"
                  "UPDATE payments SET refund_pending_amount = (SELECT COALESCE(SUM(amount), 0)"
                  " FROM payment_refunds WHERE payment_id = payments.id AND state = 'pending');"
                  "UPDATE payments SET refunded_amount = refunded_amount - refund_pending_amount;"
                  "UPDATE payments SET state = 'CAPTURED' WHERE state = 'REFUNDED'"
                  " AND refunded_amount < captured_amount;",
        .pg = "ALTER TABLE payments ADD COLUMN refund_pending_amount BIGINT NOT NULL DEFAULT 0;"
              "UPDATE payments p SET refund_pending_amount = r.pending,"
              " refunded_amount = p.refunded_amount - r.pending"
              " FROM (SELECT payment_id, SUM(amount) AS pending FROM payment_refunds"
              " WHERE state = 'pending' GROUP BY payment_id) r WHERE p.id = r.payment_id;"
              "UPDATE payments SET state = 'CAPTURED' WHERE state = 'REFUNDED'"
              " AND refunded_amount < captured_amount;",
    },
};

const struct store_migration *
payment_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

/* ---- the state table -------------------------------------------------------------------- */

static const char *const STATE_NAMES[] = {
    [PAYMENT_PENDING] = "PENDING", [PAYMENT_AUTHORIZED] = "AUTHORIZED",
    [PAYMENT_FAILED] = "FAILED",   [PAYMENT_CAPTURED] = "CAPTURED",
    [PAYMENT_VOIDED] = "VOIDED",   [PAYMENT_REFUNDED] = "REFUNDED",
};

const char *
payment_state_name(enum payment_state s)
{
    return (size_t)s < BB_ARRAY_LEN(STATE_NAMES) ? STATE_NAMES[s] : "UNKNOWN";
}

enum { N_STATES = BB_ARRAY_LEN(STATE_NAMES) };

static const bool TRANSITIONS[N_STATES][N_STATES] = {
    [PAYMENT_PENDING] =
        {[PAYMENT_AUTHORIZED] = true, [PAYMENT_FAILED] = true, [PAYMENT_VOIDED] = true},
    [PAYMENT_AUTHORIZED] = {[PAYMENT_CAPTURED] = true, [PAYMENT_VOIDED] = true},
    [PAYMENT_CAPTURED] = {[PAYMENT_REFUNDED] = true},
};

bool
payment_can_transition(enum payment_state from, enum payment_state to)
{
    return (size_t)from < N_STATES && (size_t)to < N_STATES && TRANSITIONS[from][to];
}

bool
payments__state_parse(const char *name, enum payment_state *out)
{
    for (size_t i = 0; i < N_STATES; i++) {
        if (strcmp(STATE_NAMES[i], name) == 0) {
            *out = (enum payment_state)i;
            return true;
        }
    }
    return false;
}

/* ---- reading ---------------------------------------------------------------------------- */

#define PAYMENT_COLUMNS                                                                \
    "id, order_id, idempotency_key, fingerprint, amount, currency, card, state,"       \
    " captured_amount, refunded_amount, psp_reference, failure_reason, created_at_ms," \
    " updated_at_ms, refund_pending_amount"
static struct store_stmt PAYMENT_GET = {
    .sql = "SELECT " PAYMENT_COLUMNS " FROM payments WHERE id = $1",
};
static struct store_stmt PAYMENT_BY_KEY = {
    .sql = "SELECT " PAYMENT_COLUMNS " FROM payments WHERE idempotency_key = $1",
};
static struct store_stmt ATTEMPTS_GET = {
    .sql = "SELECT op, outcome, latency_ms, detail, at_ms FROM payment_attempts"
           " WHERE payment_id = $1 ORDER BY id",
};
static struct store_stmt REFUNDS_GET = {
    .sql = "SELECT id, amount, state, created_at_ms FROM payment_refunds WHERE payment_id = $1"
           " ORDER BY created_at_ms, id",
};

/* $1 a list of ids, or of idempotency keys. */
static struct store_stmt PAYMENTS_GET_MANY = {
    .sql_pg = "SELECT " PAYMENT_COLUMNS " FROM payments"
              " WHERE id = ANY($1::text[])",
    .sql_sqlite = "SELECT " PAYMENT_COLUMNS " FROM payments"
                  " WHERE id IN (SELECT value FROM json_each($1))",
};
static struct store_stmt PAYMENTS_BY_KEY_MANY = {
    .sql_pg = "SELECT " PAYMENT_COLUMNS " FROM payments"
              " WHERE idempotency_key = ANY($1::text[])",
    .sql_sqlite = "SELECT " PAYMENT_COLUMNS " FROM payments"
                  " WHERE idempotency_key IN (SELECT value FROM json_each($1))",
};

/* The current result row, PAYMENT_COLUMNS. */
static void
row_from(const struct store_rows *r, struct payments__row *row)
{
    memset(row, 0, sizeof *row);
    bb_strlcpy(row->id, store_col_text(r, 0), sizeof row->id);
    bb_strlcpy(row->order_id, store_col_text(r, 1), sizeof row->order_id);
    bb_strlcpy(row->key, store_col_text(r, 2), sizeof row->key);
    bb_strlcpy(row->fingerprint, store_col_text(r, 3), sizeof row->fingerprint);
    row->amount = store_col_int(r, 4);
    bb_strlcpy(row->currency, store_col_text(r, 5), sizeof row->currency);
    if (!store_col_is_null(r, 6))
        bb_strlcpy(row->card, store_col_text(r, 6), sizeof row->card);
    if (!payments__state_parse(store_col_text(r, 7), &row->state))
        bb_panic(__FILE__, __LINE__, "unknown payment state in the database");
    row->captured = store_col_int(r, 8);
    row->refunded = store_col_int(r, 9);
    row->refund_pending = store_col_int(r, 14);
}

static enum err
row_read(struct store_conn *c, struct store_stmt *st, const char *key, struct payments__row *row,
         bool *found, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(key)};
    enum err rc = store_query(c, st, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    *found = store_next(&r);
    if (*found)
        row_from(&r, row);
    store_rows_close(&r);
    return ERR_OK;
}

enum err
payments__rows_read_many(struct store_conn *c, bool by_key, const char *const *keys, size_t n,
                         struct payments__row **rows, bool *found, struct bb_error *e)
{
    for (size_t i = 0; i < n; i++)
        found[i] = false;
    struct store_batch b;
    store_batch_texts(&b, c, keys, n);
    const struct store_param p[] = {sp_batch(&b)};
    struct store_rows r;
    enum err rc = store_query(c, by_key ? &PAYMENTS_BY_KEY_MANY : &PAYMENTS_GET_MANY, p, 1, &r, e);
    store_batch_deinit(&b);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        const char *k = store_col_text(&r, by_key ? 2 : 0);
        for (size_t i = 0; i < n; i++) {
            if (!found[i] && strcmp(keys[i], k) == 0) {
                row_from(&r, rows[i]);
                found[i] = true;
            }
        }
    }
    store_rows_close(&r);
    return ERR_OK;
}

enum err
payments__row_get(struct store_conn *c, const char *payment_id, struct payments__row *row,
                  struct bb_error *e)
{
    bool found;
    enum err rc = row_read(c, &PAYMENT_GET, payment_id, row, &found, e);
    if (rc == ERR_OK && !found)
        return bb_fail(e, ERR_NOT_FOUND, "authorization_id", "no payment %s", payment_id);
    return rc;
}

enum err
payments__row_by_key(struct store_conn *c, const char *key, struct payments__row *row, bool *found,
                     struct bb_error *e)
{
    return row_read(c, &PAYMENT_BY_KEY, key, row, found, e);
}

enum err
payment_get_json(struct store_conn *c, const char *payment_id, json_t **out, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(payment_id)};
    enum err rc = store_query(c, &PAYMENT_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "authorization_id", "no payment %s", payment_id);
    }
    char created[32], updated[32];
    bb_wall_ms_format(store_col_int(&r, 12), created);
    bb_wall_ms_format(store_col_int(&r, 13), updated);
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:s, s:s, s:I, s:I, s:s?, s:s?, s:s, s:s}", "authorization_id",
                  store_col_text(&r, 0), "order_id", store_col_text(&r, 1), "amount",
                  (json_int_t)store_col_int(&r, 4), "currency", store_col_text(&r, 5), "state",
                  store_col_text(&r, 7), "captured_amount", (json_int_t)store_col_int(&r, 8),
                  "refunded_amount", (json_int_t)store_col_int(&r, 9), "psp_reference",
                  store_col_is_null(&r, 10) ? NULL : store_col_text(&r, 10), "failure_reason",
                  store_col_is_null(&r, 11) ? NULL : store_col_text(&r, 11), "created_at", created,
                  "updated_at", updated);
    json_object_set_new(o, "refund_pending_amount", json_integer(store_col_int(&r, 14)));
    store_rows_close(&r);
    rc = store_query(c, &ATTEMPTS_GET, p, 1, &r, e);
    json_t *attempts = json_array();
    while (rc == ERR_OK && store_next(&r)) {
        char at[32];
        bb_wall_ms_format(store_col_int(&r, 4), at);
        json_array_append_new(
            attempts,
            json_pack("{s:s, s:s, s:I, s:s?, s:s}", "op", store_col_text(&r, 0), "outcome",
                      store_col_text(&r, 1), "latency_ms", (json_int_t)store_col_int(&r, 2),
                      "detail", store_col_is_null(&r, 3) ? NULL : store_col_text(&r, 3), "at", at));
    }
    if (rc == ERR_OK)
        store_rows_close(&r);
    json_object_set_new(o, "attempts", attempts);
    if (rc == ERR_OK)
        rc = store_query(c, &REFUNDS_GET, p, 1, &r, e);
    json_t *refunds = json_array();
    while (rc == ERR_OK && store_next(&r)) {
        char at[32];
        bb_wall_ms_format(store_col_int(&r, 3), at);
        json_array_append_new(refunds,
                              json_pack("{s:s, s:I, s:s, s:s}", "refund_id", store_col_text(&r, 0),
                                        "amount", (json_int_t)store_col_int(&r, 1), "state",
                                        store_col_text(&r, 2), "at", at));
    }
    if (rc == ERR_OK)
        store_rows_close(&r);
    json_object_set_new(o, "refunds", refunds);
    if (rc != ERR_OK) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return ERR_OK;
}
