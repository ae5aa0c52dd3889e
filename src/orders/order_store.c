/*
 * order_store.c: orders, their items and timeline, the status table, and
 * each change with its outbox event.
 */
#include "orders/orders.h"

#include "outbox/outbox.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "orders, items, timeline",
        .sqlite = "CREATE TABLE orders ("
                  " id TEXT PRIMARY KEY, checkout_id TEXT NOT NULL UNIQUE,"
                  " customer_id TEXT NOT NULL, currency TEXT NOT NULL,"
                  " total_amount INTEGER NOT NULL, status TEXT NOT NULL,"
                  " fingerprint TEXT NOT NULL, created_at_ms INTEGER NOT NULL,"
                  " updated_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
                  "CREATE TABLE order_items ("
                  " order_id TEXT NOT NULL, line INTEGER NOT NULL, sku TEXT NOT NULL,"
                  " qty INTEGER NOT NULL, unit_price INTEGER NOT NULL,"
                  " PRIMARY KEY (order_id, line)) WITHOUT ROWID;"
                  "CREATE TABLE order_timeline ("
                  " order_id TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,"
                  " reason TEXT NOT NULL, at_ms INTEGER NOT NULL,"
                  " PRIMARY KEY (order_id, seq)) WITHOUT ROWID;",
        .pg = "CREATE TABLE orders ("
              " id TEXT PRIMARY KEY, checkout_id TEXT NOT NULL UNIQUE,"
              " customer_id TEXT NOT NULL, currency TEXT NOT NULL,"
              " total_amount BIGINT NOT NULL, status TEXT NOT NULL,"
              " fingerprint TEXT NOT NULL, created_at_ms BIGINT NOT NULL,"
              " updated_at_ms BIGINT NOT NULL);"
              "CREATE TABLE order_items ("
              " order_id TEXT NOT NULL, line INTEGER NOT NULL, sku TEXT NOT NULL,"
              " qty BIGINT NOT NULL, unit_price BIGINT NOT NULL,"
              " PRIMARY KEY (order_id, line));"
              "CREATE TABLE order_timeline ("
              " order_id TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,"
              " reason TEXT NOT NULL, at_ms BIGINT NOT NULL,"
              " PRIMARY KEY (order_id, seq));",
    },
    {
        /* An order's status changes soon after its insert: with room on its
         * page, in place (HOT). */
        .version = 2,
        .name = "orders leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE orders SET (fillfactor = 70);",
    },
};

const struct store_migration *
order_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

/* ---- the status table ------------------------------------------------------------------- */

static const char *const STATUS_NAMES[] = {
    [ORDER_PENDING] = "PENDING",
    [ORDER_CONFIRMED] = "CONFIRMED",
    [ORDER_CANCELLED] = "CANCELLED",
};

const char *
order_status_name(enum order_status s)
{
    return (size_t)s < BB_ARRAY_LEN(STATUS_NAMES) ? STATUS_NAMES[s] : "UNKNOWN";
}

static const bool TRANSITIONS[3][3] = {
    [ORDER_PENDING] = {[ORDER_CONFIRMED] = true, [ORDER_CANCELLED] = true},
};

bool
order_can_transition(enum order_status from, enum order_status to)
{
    return (size_t)from < 3 && (size_t)to < 3 && TRANSITIONS[from][to];
}

static bool
status_parse(const char *name, enum order_status *out)
{
    for (size_t i = 0; i < BB_ARRAY_LEN(STATUS_NAMES); i++) {
        if (strcmp(STATUS_NAMES[i], name) == 0) {
            *out = (enum order_status)i;
            return true;
        }
    }
    return false;
}

/* ---- statements ------------------------------------------------------------------------- */

static struct store_stmt ORDER_INSERT = {
    .sql = "INSERT INTO orders (id, checkout_id, customer_id, currency, total_amount, status,"
           " fingerprint, created_at_ms, updated_at_ms)"
           " VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $7, $7)"
           " ON CONFLICT (checkout_id) DO NOTHING",
};
static struct store_stmt ITEM_INSERT = {
    .sql = "INSERT INTO order_items (order_id, line, sku, qty, unit_price)"
           " VALUES ($1, $2, $3, $4, $5)",
};
static struct store_stmt TIMELINE_INSERT = {
    .sql = "INSERT INTO order_timeline (order_id, seq, status, reason, at_ms)"
           " SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM order_timeline"
           " WHERE order_id = $1",
};
#define ORDER_COLUMNS                                                                           \
    "id, checkout_id, customer_id, currency, total_amount, status, fingerprint, created_at_ms," \
    " updated_at_ms"
static struct store_stmt ORDER_GET = {.sql = "SELECT " ORDER_COLUMNS " FROM orders WHERE id = $1"};
static struct store_stmt ORDER_BY_CHECKOUT = {
    .sql = "SELECT " ORDER_COLUMNS " FROM orders WHERE checkout_id = $1",
};
static struct store_stmt ITEMS_GET = {
    .sql = "SELECT sku, qty, unit_price FROM order_items WHERE order_id = $1 ORDER BY line",
};
static struct store_stmt TIMELINE_GET = {
    .sql = "SELECT status, reason, at_ms FROM order_timeline WHERE order_id = $1 ORDER BY seq",
};
static struct store_stmt ORDER_MOVE = {
    .sql = "UPDATE orders SET status = $3, updated_at_ms = $4 WHERE id = $1 AND status = $2",
};

/* ---- reading ---------------------------------------------------------------------------- */

/* An order row: its JSON (without items and timeline), status, fingerprint. */
struct order_row {
    json_t *json;
    enum order_status status;
    char fingerprint[65];
};

static enum err
order_read(struct store_conn *c, struct store_stmt *st, const char *key, const char *field,
           struct order_row *row, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(key)};
    enum err rc = store_query(c, st, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, field, "no order with %s %s", field, key);
    }
    if (!status_parse(store_col_text(&r, 5), &row->status))
        bb_panic(__FILE__, __LINE__, "unknown order status in the database");
    bb_strlcpy(row->fingerprint, store_col_text(&r, 6), sizeof row->fingerprint);
    char created[32], updated[32];
    bb_wall_ms_format(store_col_int(&r, 7), created);
    bb_wall_ms_format(store_col_int(&r, 8), updated);
    row->json = json_pack(
        "{s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s}", "order_id", store_col_text(&r, 0),
        "checkout_id", store_col_text(&r, 1), "customer_id", store_col_text(&r, 2), "currency",
        store_col_text(&r, 3), "total_amount", (json_int_t)store_col_int(&r, 4), "status",
        order_status_name(row->status), "created_at", created, "updated_at", updated);
    store_rows_close(&r);
    return ERR_OK;
}

/* Add items and timeline to an order's JSON. */
static enum err
order_complete(struct store_conn *c, json_t *order, struct bb_error *e)
{
    const char *id = json_string_value(json_object_get(order, "order_id"));
    const struct store_param p[] = {sp_text(id)};
    struct store_rows r;
    enum err rc = store_query(c, &ITEMS_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *items = json_array();
    while (store_next(&r))
        json_array_append_new(items, json_pack("{s:s, s:I, s:I}", "sku", store_col_text(&r, 0),
                                               "qty", (json_int_t)store_col_int(&r, 1),
                                               "unit_price", (json_int_t)store_col_int(&r, 2)));
    store_rows_close(&r);
    json_object_set_new(order, "items", items);
    rc = store_query(c, &TIMELINE_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *timeline = json_array();
    while (store_next(&r)) {
        char at[32];
        bb_wall_ms_format(store_col_int(&r, 2), at);
        json_array_append_new(timeline,
                              json_pack("{s:s, s:s, s:s}", "status", store_col_text(&r, 0),
                                        "reason", store_col_text(&r, 1), "at", at));
    }
    store_rows_close(&r);
    json_object_set_new(order, "timeline", timeline);
    return ERR_OK;
}

static enum err
order_answer(struct store_conn *c, struct store_stmt *st, const char *key, const char *field,
             json_t **out, struct bb_error *e)
{
    struct order_row row;
    enum err rc = order_read(c, st, key, field, &row, e);
    if (rc != ERR_OK)
        return rc;
    rc = order_complete(c, row.json, e);
    if (rc != ERR_OK) {
        json_decref(row.json);
        return rc;
    }
    *out = row.json;
    return ERR_OK;
}

enum err
order_get_json(struct store_conn *c, const char *order_id, json_t **out, struct bb_error *e)
{
    return order_answer(c, &ORDER_GET, order_id, "order_id", out, e);
}

enum err
order_find_by_checkout(struct store_conn *c, const char *checkout_id, json_t **out,
                       struct bb_error *e)
{
    return order_answer(c, &ORDER_BY_CHECKOUT, checkout_id, "checkout_id", out, e);
}

/* ---- changes ---------------------------------------------------------------------------- */

static enum err
timeline_add(struct store_conn *c, const char *order_id, enum order_status status,
             const char *reason, int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(order_id), sp_text(order_status_name(status)),
                                    sp_text(reason), sp_int(now_ms)};
    return store_exec_deferred(c, &TIMELINE_INSERT, p, BB_ARRAY_LEN(p), e);
}

static enum err
announce(struct store_conn *c, const char *type, const char *order_id, json_t *data, int64_t now_ms,
         struct bb_error *e)
{
    struct outbox_event ev = {
        .type = type, .aggregate_type = "order", .aggregate_id = order_id, .data = data};
    enum err rc = outbox_append(c, &ev, now_ms, e);
    json_decref(data);
    return rc;
}

/* The request's canonical form, hashed: what "the same order" means. */
static void
spec_fingerprint(const struct order_spec *spec, char out[65])
{
    struct bb_buf b;
    bb_buf_init(&b);
    bb_buf_printf(&b, "%s\n%s\n", spec->customer_id, spec->currency);
    for (size_t i = 0; i < spec->n_items; i++)
        bb_buf_printf(&b, "%s %" PRId64 " %" PRId64 "\n", spec->items[i].sku, spec->items[i].qty,
                      spec->items[i].unit_price);
    bb_sha256_hex(b.data, b.len, out);
    bb_buf_deinit(&b);
}

static struct store_stmt ORDER_INSERT_MANY = {
    .sql_pg = "INSERT INTO orders (id, checkout_id, customer_id, currency, total_amount, status,"
              " fingerprint, created_at_ms, updated_at_ms)"
              " SELECT id, checkout_id, customer_id, currency, total_amount, 'PENDING',"
              " fingerprint, $7, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
              " $5::bigint[], $6::text[]) AS x(id, checkout_id, customer_id, currency,"
              " total_amount, fingerprint) ON CONFLICT (checkout_id) DO NOTHING"
              " RETURNING checkout_id",
    .sql_sqlite = "INSERT INTO orders (id, checkout_id, customer_id, currency, total_amount,"
                  " status, fingerprint, created_at_ms, updated_at_ms)"
                  " SELECT value ->> 'id', value ->> 'checkout_id', value ->> 'customer_id',"
                  " value ->> 'currency', value ->> 'total_amount', 'PENDING',"
                  " value ->> 'fingerprint', $2, $2 FROM json_each($1) WHERE true"
                  " ON CONFLICT (checkout_id) DO NOTHING RETURNING checkout_id",
};
static struct store_stmt ITEM_INSERT_MANY = {
    .sql_pg = "INSERT INTO order_items (order_id, line, sku, qty, unit_price)"
              " SELECT order_id, line, sku, qty, unit_price FROM unnest($1::text[], $2::int[],"
              " $3::text[], $4::bigint[], $5::bigint[]) AS x(order_id, line, sku, qty, unit_price)",
    .sql_sqlite = "INSERT INTO order_items (order_id, line, sku, qty, unit_price)"
                  " SELECT value ->> 'order_id', value ->> 'line', value ->> 'sku',"
                  " value ->> 'qty', value ->> 'unit_price' FROM json_each($1)",
};
/* A new order's first timeline entry. */
static struct store_stmt TIMELINE_FIRST_MANY = {
    .sql_pg = "INSERT INTO order_timeline (order_id, seq, status, reason, at_ms)"
              " SELECT x, 1, 'PENDING', 'created', $2 FROM unnest($1::text[]) AS x",
    .sql_sqlite = "INSERT INTO order_timeline (order_id, seq, status, reason, at_ms)"
                  " SELECT value, 1, 'PENDING', 'created', $2 FROM json_each($1)",
};

/* The total of a spec's items, or ERR_INVALID past BB_AMOUNT_MAX. */
static enum err
spec_total(const struct order_spec *spec, int64_t *total, struct bb_error *e)
{
    *total = 0;
    for (size_t i = 0; i < spec->n_items; i++) {
        const struct order_item *it = &spec->items[i];
        if (it->unit_price > (BB_AMOUNT_MAX - *total) / it->qty)
            return bb_fail(e, ERR_INVALID, "items", "the order's total is over %" PRId64,
                           BB_AMOUNT_MAX);
        *total += it->qty * it->unit_price;
    }
    return ERR_OK;
}

/* order.created.v1's data. */
static json_t *
created_event(const char *id, const struct order_spec *spec, int64_t total)
{
    json_t *items = json_array();
    for (size_t i = 0; i < spec->n_items; i++) {
        const struct order_item *it = &spec->items[i];
        json_array_append_new(items, json_pack("{s:s, s:I, s:I}", "sku", it->sku, "qty",
                                               (json_int_t)it->qty, "unit_price",
                                               (json_int_t)it->unit_price));
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:o}", "order_id", id, "checkout_id",
                     spec->checkout_id, "customer_id", spec->customer_id, "currency",
                     spec->currency, "total_amount", (json_int_t)total, "items", items);
}

enum err
order_create(struct store_conn *c, const struct order_spec *spec, int64_t now_ms,
             char id_out[ORDER_UUID_LEN + 1], json_t **out, bool *created, struct bb_error *e)
{
    *created = false;
    int64_t total;
    enum err rc = spec_total(spec, &total, e);
    if (rc != ERR_OK)
        return rc;
    char id[ORDER_UUID_LEN + 1], fingerprint[65];
    bb_uuid7_at(now_ms, id);
    spec_fingerprint(spec, fingerprint);
    const struct store_param p[] = {sp_text(id),
                                    sp_text(spec->checkout_id),
                                    sp_text(spec->customer_id),
                                    sp_text(spec->currency),
                                    sp_int(total),
                                    sp_text(fingerprint),
                                    sp_int(now_ms)};
    int64_t inserted = 0;
    rc = store_exec(c, &ORDER_INSERT, p, BB_ARRAY_LEN(p), &inserted, e);
    if (rc != ERR_OK)
        return rc;
    if (inserted == 0) { /* this checkout's order exists */
        struct order_row row;
        rc = order_read(c, &ORDER_BY_CHECKOUT, spec->checkout_id, "checkout_id", &row, e);
        if (rc != ERR_OK)
            return rc;
        const char *existing = json_string_value(json_object_get(row.json, "order_id"));
        bool same = strcmp(row.fingerprint, fingerprint) == 0;
        char existing_id[37];
        bb_strlcpy(existing_id, existing, sizeof existing_id);
        json_decref(row.json);
        if (!same)
            return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "checkout_id",
                           "checkout %s already has an order with other contents",
                           spec->checkout_id);
        if (id_out)
            bb_strlcpy(id_out, existing_id, ORDER_UUID_LEN + 1);
        return out ? order_get_json(c, existing_id, out, e) : ERR_OK;
    }
    for (size_t i = 0; i < spec->n_items && rc == ERR_OK; i++) {
        const struct order_item *it = &spec->items[i];
        const struct store_param q[] = {sp_text(id), sp_int((int64_t)i + 1), sp_text(it->sku),
                                        sp_int(it->qty), sp_int(it->unit_price)};
        rc = store_exec_deferred(c, &ITEM_INSERT, q, BB_ARRAY_LEN(q), e);
    }
    if (rc == ERR_OK)
        rc = timeline_add(c, id, ORDER_PENDING, "created", now_ms, e);
    if (rc == ERR_OK)
        rc = announce(c, "order.created.v1", id, created_event(id, spec, total), now_ms, e);
    if (rc == ERR_OK && out)
        rc = order_get_json(c, id, out, e);
    if (rc == ERR_OK && id_out)
        bb_strlcpy(id_out, id, ORDER_UUID_LEN + 1);
    *created = rc == ERR_OK;
    return rc;
}

/* Insert the orders; inserted[i] says which were new. */
static enum err
insert_orders(struct store_conn *c, const struct order_spec *specs, size_t n, int64_t now_ms,
              char (*ids)[ORDER_UUID_LEN + 1], const enum err *outcomes, const int64_t *totals,
              bool *inserted, struct bb_error *e)
{
    struct store_batch orders;
    store_batch_init(&orders, c, 6);
    for (size_t i = 0; i < n; i++) {
        if (outcomes[i] != ERR_OK)
            continue;
        char fingerprint[65];
        spec_fingerprint(&specs[i], fingerprint);
        store_batch_row(&orders);
        store_batch_text(&orders, "id", ids[i]);
        store_batch_text(&orders, "checkout_id", specs[i].checkout_id);
        store_batch_text(&orders, "customer_id", specs[i].customer_id);
        store_batch_text(&orders, "currency", specs[i].currency);
        store_batch_int(&orders, "total_amount", totals[i]);
        store_batch_text(&orders, "fingerprint", fingerprint);
    }
    const struct store_param p[] = {sp_batch(&orders), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &ORDER_INSERT_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&orders);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        const char *checkout_id = store_col_text(&r, 0);
        for (size_t i = 0; i < n; i++)
            if (outcomes[i] == ERR_OK && strcmp(specs[i].checkout_id, checkout_id) == 0)
                inserted[i] = true;
    }
    store_rows_close(&r);
    return ERR_OK;
}

/* The new orders' items, first timeline entries and events. */
static enum err
complete_orders(struct store_conn *c, const struct order_spec *specs, size_t n, int64_t now_ms,
                char (*ids)[ORDER_UUID_LEN + 1], const int64_t *totals, const bool *inserted,
                struct bb_error *e)
{
    struct store_batch items, fresh;
    store_batch_init(&items, c, 5);
    store_batch_init(&fresh, c, 1);
    struct outbox_event *evs = xcalloc(n, sizeof *evs);
    size_t n_evs = 0;
    for (size_t i = 0; i < n; i++) {
        if (!inserted[i])
            continue;
        for (size_t k = 0; k < specs[i].n_items; k++) {
            const struct order_item *it = &specs[i].items[k];
            store_batch_row(&items);
            store_batch_text(&items, "order_id", ids[i]);
            store_batch_int(&items, "line", (int64_t)k + 1);
            store_batch_text(&items, "sku", it->sku);
            store_batch_int(&items, "qty", it->qty);
            store_batch_int(&items, "unit_price", it->unit_price);
        }
        store_batch_row(&fresh);
        store_batch_text(&fresh, NULL, ids[i]);
        evs[n_evs++] = (struct outbox_event){.type = "order.created.v1",
                                             .aggregate_type = "order",
                                             .aggregate_id = ids[i],
                                             .data = created_event(ids[i], &specs[i], totals[i]),
                                             .traceparent = specs[i].traceparent};
    }
    enum err rc = ERR_OK;
    if (n_evs > 0) {
        const struct store_param q[] = {sp_batch(&items)};
        rc = store_exec_deferred(c, &ITEM_INSERT_MANY, q, 1, e);
    }
    if (rc == ERR_OK && n_evs > 0) {
        const struct store_param q[] = {sp_batch(&fresh), sp_int(now_ms)};
        rc = store_exec_deferred(c, &TIMELINE_FIRST_MANY, q, BB_ARRAY_LEN(q), e);
    }
    if (rc == ERR_OK)
        rc = outbox_append_many(c, evs, n_evs, now_ms, e);
    outbox_events_free(evs, n_evs);
    store_batch_deinit(&items);
    store_batch_deinit(&fresh);
    return rc;
}

enum err
order_create_many(struct store_conn *c, const struct order_spec *specs, size_t n, int64_t now_ms,
                  char (*ids)[ORDER_UUID_LEN + 1], enum err *outcomes, struct bb_error *errors,
                  struct bb_error *e)
{
    int64_t *totals = xcalloc(n, sizeof *totals);
    bool *inserted = xcalloc(n, sizeof *inserted);
    for (size_t i = 0; i < n; i++) {
        bb_error_clear(&errors[i]);
        bb_uuid7_at(now_ms, ids[i]);
        outcomes[i] = spec_total(&specs[i], &totals[i], &errors[i]);
    }
    enum err rc = insert_orders(c, specs, n, now_ms, ids, outcomes, totals, inserted, e);
    /* The rest exist already (a run again): the single form answers them. */
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        if (outcomes[i] != ERR_OK || inserted[i])
            continue;
        bool created;
        outcomes[i] = order_create(c, &specs[i], now_ms, ids[i], NULL, &created, &errors[i]);
        if (outcomes[i] != ERR_OK && outcomes[i] != ERR_INVALID &&
            outcomes[i] != ERR_IDEMPOTENCY_MISMATCH) {
            *e = errors[i];
            rc = outcomes[i];
        }
    }
    if (rc == ERR_OK)
        rc = complete_orders(c, specs, n, now_ms, ids, totals, inserted, e);
    free(inserted);
    free(totals);
    return rc;
}

/* PENDING -> `to`, idempotent at `to`. */
static enum err
order_move(struct store_conn *c, const char *order_id, enum order_status to, const char *reason,
           int64_t now_ms, json_t **out, struct bb_error *e)
{
    struct order_row row;
    enum err rc = order_read(c, &ORDER_GET, order_id, "order_id", &row, e);
    if (rc != ERR_OK)
        return rc;
    json_decref(row.json);
    if (row.status != to && !order_can_transition(row.status, to))
        return bb_fail(e, ERR_CONFLICT, "order_id", "order %s is %s: it cannot become %s", order_id,
                       order_status_name(row.status), order_status_name(to));
    if (row.status != to) {
        const struct store_param p[] = {sp_text(order_id), sp_text(order_status_name(row.status)),
                                        sp_text(order_status_name(to)), sp_int(now_ms)};
        int64_t changed = 0;
        rc = store_exec(c, &ORDER_MOVE, p, BB_ARRAY_LEN(p), &changed, e);
        if (rc == ERR_OK && changed != 1)
            return bb_fail(e, ERR_RETRY, "", "order %s changed concurrently", order_id);
        if (rc == ERR_OK)
            rc = timeline_add(c, order_id, to, reason, now_ms, e);
        if (rc == ERR_OK)
            rc = announce(c, "order.status.changed.v1", order_id,
                          json_pack("{s:s, s:s, s:s, s:s}", "order_id", order_id, "from",
                                    order_status_name(row.status), "to", order_status_name(to),
                                    "reason", reason),
                          now_ms, e);
    }
    return rc == ERR_OK && out ? order_get_json(c, order_id, out, e) : rc;
}

/* ---- confirming many orders at once ------------------------------------------------------- */

static struct store_stmt ORDERS_LOCK = {
    .sql_pg = "SELECT id, status FROM orders"
              " WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
    .sql_sqlite = "SELECT id, status FROM orders WHERE id IN (SELECT value FROM json_each($1))"
                  " ORDER BY id",
};
static struct store_stmt ORDERS_CONFIRM = {
    .sql_pg = "UPDATE orders SET status = 'CONFIRMED', updated_at_ms = $2"
              " WHERE id = ANY($1::text[]) AND status = 'PENDING'",
    .sql_sqlite = "UPDATE orders SET status = 'CONFIRMED', updated_at_ms = $2"
                  " WHERE id IN (SELECT value FROM json_each($1)) AND status = 'PENDING'",
};
static struct store_stmt TIMELINE_NEXT_MANY = {
    .sql_pg = "INSERT INTO order_timeline (order_id, seq, status, reason, at_ms)"
              " SELECT x, (SELECT COALESCE(MAX(seq), 0) + 1 FROM order_timeline t"
              " WHERE t.order_id = x), $2, $3, $4 FROM unnest($1::text[]) AS x",
    .sql_sqlite = "INSERT INTO order_timeline (order_id, seq, status, reason, at_ms)"
                  " SELECT value, (SELECT COALESCE(MAX(seq), 0) + 1 FROM order_timeline t"
                  " WHERE t.order_id = value), $2, $3, $4 FROM json_each($1)",
};

enum err
order_confirm_many(struct store_conn *c, const char *const *order_ids,
                   const char *const *traceparents, size_t n, const char *reason, int64_t now_ms,
                   enum err *outcomes, struct bb_error *errors, struct bb_error *e)
{
    reason = reason ? reason : "confirmed";
    struct store_batch ids, moved;
    store_batch_texts(&ids, c, order_ids, n);
    store_batch_init(&moved, c, 1);
    struct outbox_event *evs = xcalloc(n ? n : 1, sizeof *evs);
    size_t n_evs = 0;
    for (size_t i = 0; i < n; i++)
        outcomes[i] = bb_fail(&errors[i], ERR_NOT_FOUND, "order_id", "no order with order_id %s",
                              order_ids[i]);
    const struct store_param p[] = {sp_batch(&ids)};
    struct store_rows r;
    enum err rc = store_query(c, &ORDERS_LOCK, p, 1, &r, e);
    if (rc == ERR_OK) {
        while (store_next(&r)) {
            const char *id = store_col_text(&r, 0);
            size_t i = 0;
            while (i < n && strcmp(order_ids[i], id) != 0)
                i++;
            if (i == n || outcomes[i] != ERR_NOT_FOUND)
                continue;
            bb_error_clear(&errors[i]);
            outcomes[i] = ERR_OK;
            enum order_status st;
            if (!status_parse(store_col_text(&r, 1), &st))
                bb_panic(__FILE__, __LINE__, "unknown order status in the database");
            if (st == ORDER_CONFIRMED)
                continue; /* done before */
            if (!order_can_transition(st, ORDER_CONFIRMED)) {
                outcomes[i] = bb_fail(&errors[i], ERR_CONFLICT, "order_id",
                                      "order %s is %s: it cannot become %s", id,
                                      order_status_name(st), order_status_name(ORDER_CONFIRMED));
                continue;
            }
            store_batch_row(&moved);
            store_batch_text(&moved, NULL, id);
            evs[n_evs++] = (struct outbox_event){
                .type = "order.status.changed.v1",
                .aggregate_type = "order",
                .aggregate_id = order_ids[i],
                .data =
                    json_pack("{s:s, s:s, s:s, s:s}", "order_id", id, "from", order_status_name(st),
                              "to", order_status_name(ORDER_CONFIRMED), "reason", reason),
                .traceparent = traceparents ? traceparents[i] : NULL};
        }
        store_rows_close(&r);
    }
    if (rc == ERR_OK && n_evs > 0) {
        const struct store_param q[] = {sp_batch(&moved), sp_int(now_ms)};
        rc = store_exec_deferred(c, &ORDERS_CONFIRM, q, BB_ARRAY_LEN(q), e);
        const struct store_param tl[] = {sp_batch(&moved),
                                         sp_text(order_status_name(ORDER_CONFIRMED)),
                                         sp_text(reason), sp_int(now_ms)};
        if (rc == ERR_OK)
            rc = store_exec_deferred(c, &TIMELINE_NEXT_MANY, tl, BB_ARRAY_LEN(tl), e);
    }
    if (rc == ERR_OK)
        rc = outbox_append_many(c, evs, n_evs, now_ms, e);
    outbox_events_free(evs, n_evs);
    store_batch_deinit(&ids);
    store_batch_deinit(&moved);
    return rc;
}

enum err
order_confirm(struct store_conn *c, const char *order_id, const char *reason, int64_t now_ms,
              json_t **out, struct bb_error *e)
{
    return order_move(c, order_id, ORDER_CONFIRMED, reason ? reason : "confirmed", now_ms, out, e);
}

enum err
order_cancel(struct store_conn *c, const char *order_id, const char *reason, int64_t now_ms,
             json_t **out, struct bb_error *e)
{
    return order_move(c, order_id, ORDER_CANCELLED, reason ? reason : "cancelled", now_ms, out, e);
}
