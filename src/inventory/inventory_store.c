/*
 * inventory_store.c: the inventory's tables, its reservation lifecycle
 * table, and every change, each with its outbox event.
 */
#include "inventory/inventory.h"

#include "outbox/outbox.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "products, reservations, adjustments",
        .sqlite = "CREATE TABLE inventory_products ("
                  " sku TEXT PRIMARY KEY, name TEXT NOT NULL, on_hand INTEGER NOT NULL,"
                  " reserved INTEGER NOT NULL, created_at_ms INTEGER NOT NULL,"
                  " updated_at_ms INTEGER NOT NULL,"
                  " CHECK (reserved >= 0 AND reserved <= on_hand)) WITHOUT ROWID;"
                  "CREATE TABLE inventory_reservations ("
                  " order_id TEXT PRIMARY KEY, state TEXT NOT NULL, items TEXT NOT NULL,"
                  " expires_at_ms INTEGER NOT NULL, created_at_ms INTEGER NOT NULL,"
                  " updated_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
                  "CREATE INDEX inventory_reservations_due ON inventory_reservations"
                  " (expires_at_ms) WHERE state = 'active';"
                  "CREATE TABLE inventory_adjustments ("
                  " id INTEGER PRIMARY KEY AUTOINCREMENT, sku TEXT NOT NULL,"
                  " delta INTEGER NOT NULL, reason TEXT NOT NULL, key TEXT,"
                  " on_hand_after INTEGER NOT NULL, created_at_ms INTEGER NOT NULL);"
                  "CREATE INDEX inventory_adjustments_by_sku ON inventory_adjustments (sku, id);",
        .pg = "CREATE TABLE inventory_products ("
              " sku TEXT PRIMARY KEY, name TEXT NOT NULL, on_hand BIGINT NOT NULL,"
              " reserved BIGINT NOT NULL, created_at_ms BIGINT NOT NULL,"
              " updated_at_ms BIGINT NOT NULL,"
              " CHECK (reserved >= 0 AND reserved <= on_hand));"
              "CREATE TABLE inventory_reservations ("
              " order_id TEXT PRIMARY KEY, state TEXT NOT NULL, items TEXT NOT NULL,"
              " expires_at_ms BIGINT NOT NULL, created_at_ms BIGINT NOT NULL,"
              " updated_at_ms BIGINT NOT NULL);"
              "CREATE INDEX inventory_reservations_due ON inventory_reservations"
              " (expires_at_ms) WHERE state = 'active';"
              "CREATE TABLE inventory_adjustments ("
              " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku TEXT NOT NULL,"
              " delta BIGINT NOT NULL, reason TEXT NOT NULL, key TEXT,"
              " on_hand_after BIGINT NOT NULL, created_at_ms BIGINT NOT NULL);"
              "CREATE INDEX inventory_adjustments_by_sku ON inventory_adjustments (sku, id);",
    },
    {
        /* A reservation is committed or released soon after its insert: with
         * room on its page, the new version stays there (no row lock logged
         * for a move to another page). */
        .version = 2,
        .name = "reservations leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE inventory_reservations SET (fillfactor = 70);",
    },
};

const struct store_migration *
inventory_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

/* ---- the reservation lifecycle ---------------------------------------------------------- */

static const char *const STATE_NAMES[] = {
    [INVENTORY_ACTIVE] = "active",
    [INVENTORY_COMMITTED] = "committed",
    [INVENTORY_RELEASED] = "released",
    [INVENTORY_EXPIRED] = "expired",
};

const char *
inventory_state_name(enum inventory_reservation_state s)
{
    return (size_t)s < BB_ARRAY_LEN(STATE_NAMES) ? STATE_NAMES[s] : "unknown";
}

/* active -> committed | released | expired; the others are final. */
static const bool TRANSITIONS[4][4] = {
    [INVENTORY_ACTIVE] =
        {[INVENTORY_COMMITTED] = true, [INVENTORY_RELEASED] = true, [INVENTORY_EXPIRED] = true},
};

bool
inventory_can_transition(enum inventory_reservation_state from, enum inventory_reservation_state to)
{
    return (size_t)from < 4 && (size_t)to < 4 && TRANSITIONS[from][to];
}

static enum inventory_reservation_state
state_parse(const char *name)
{
    for (size_t i = 0; i < BB_ARRAY_LEN(STATE_NAMES); i++) {
        if (strcmp(STATE_NAMES[i], name) == 0)
            return (enum inventory_reservation_state)i;
    }
    bb_panic(__FILE__, __LINE__, "unknown reservation state '%s' in the database", name);
}

/* ---- products ------------------------------------------------------------------------- */

static struct store_stmt PRODUCT_INSERT = {
    .sql = "INSERT INTO inventory_products (sku, name, on_hand, reserved, created_at_ms,"
           " updated_at_ms) VALUES ($1, $2, $3, 0, $4, $4) ON CONFLICT (sku) DO NOTHING",
};
static struct store_stmt PRODUCT_GET = {
    .sql = "SELECT sku, name, on_hand, reserved, created_at_ms, updated_at_ms"
           " FROM inventory_products WHERE sku = $1",
};
/* on_hand += $2, within bounds: never below reserved, zero or the cap. */
static struct store_stmt PRODUCT_ADD = {
    .sql = "UPDATE inventory_products SET on_hand = on_hand + $2, updated_at_ms = $3"
           " WHERE sku = $1 AND on_hand + $2 >= reserved AND on_hand + $2 <= $4",
};
static struct store_stmt ADJUSTMENT_INSERT = {
    .sql = "INSERT INTO inventory_adjustments (sku, delta, reason, key, on_hand_after,"
           " created_at_ms) SELECT sku, $2, $3, $4, on_hand, $5 FROM inventory_products"
           " WHERE sku = $1",
};

static json_t *
product_json(struct store_rows *r)
{
    char created[32], updated[32];
    bb_wall_ms_format(store_col_int(r, 4), created);
    bb_wall_ms_format(store_col_int(r, 5), updated);
    int64_t on_hand = store_col_int(r, 2), reserved = store_col_int(r, 3);
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s}", "sku", store_col_text(r, 0), "name",
                     store_col_text(r, 1), "on_hand", (json_int_t)on_hand, "reserved",
                     (json_int_t)reserved, "available", (json_int_t)(on_hand - reserved),
                     "created_at", created, "updated_at", updated);
}

enum err
inventory_product_get_json(struct store_conn *c, const char *sku, json_t **out, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(sku)};
    enum err rc = store_query(c, &PRODUCT_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "sku", "no product with sku %s", sku);
    }
    *out = product_json(&r);
    store_rows_close(&r);
    return ERR_OK;
}

static int
text_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static struct store_stmt PRODUCTS_KNOWN = {
    .sql_pg = "SELECT sku FROM inventory_products WHERE sku = ANY($1::text[])",
    .sql_sqlite = "SELECT sku FROM inventory_products"
                  " WHERE sku IN (SELECT value FROM json_each($1))",
};

enum err
inventory_skus_known(struct store_conn *c, const char *const *skus, size_t n, bool *known,
                     struct bb_error *e)
{
    for (size_t i = 0; i < n; i++)
        known[i] = false;
    if (n == 0)
        return ERR_OK;
    struct store_batch list;
    store_batch_texts(&list, c, skus, n);
    const struct store_param p[] = {sp_batch(&list)};
    struct store_rows r;
    enum err rc = store_query(c, &PRODUCTS_KNOWN, p, 1, &r, e);
    store_batch_deinit(&list);
    if (rc != ERR_OK)
        return rc;
    /* The rows by sku, each sku once (so at most n): a batch of checkouts
     * may name thousands. */
    size_t k = 0;
    char **found = xcalloc(n, sizeof *found);
    while (k < n && store_next(&r))
        found[k++] = xstrdup(store_col_text(&r, 0));
    store_rows_close(&r);
    if (k > 0)
        qsort(found, k, sizeof *found, text_cmp);
    for (size_t i = 0; i < n && k > 0; i++)
        known[i] = bsearch(&skus[i], found, k, sizeof *found, text_cmp) != NULL;
    for (size_t i = 0; i < k; i++)
        free(found[i]);
    free(found);
    return ERR_OK;
}

/* Record an on_hand change and announce it. */
static enum err
adjusted(struct store_conn *c, const char *sku, int64_t delta, const char *reason, const char *key,
         int64_t now_ms, json_t **product, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(sku), sp_int(delta), sp_text(reason), sp_text(key),
                                    sp_int(now_ms)};
    enum err rc = store_exec(c, &ADJUSTMENT_INSERT, p, BB_ARRAY_LEN(p), NULL, e);
    if (rc == ERR_OK)
        rc = inventory_product_get_json(c, sku, product, e);
    if (rc != ERR_OK)
        return rc;
    json_t *data =
        json_pack("{s:s, s:I, s:s, s:O, s:s?}", "sku", sku, "delta", (json_int_t)delta, "reason",
                  reason, "on_hand", json_object_get(*product, "on_hand"), "key", key);
    struct outbox_event ev = {.type = "inventory.adjusted.v1",
                              .aggregate_type = "product",
                              .aggregate_id = sku,
                              .data = data};
    rc = outbox_append(c, &ev, now_ms, e);
    json_decref(data);
    if (rc != ERR_OK) {
        json_decref(*product);
        *product = NULL;
    }
    return rc;
}

/* A product's initial stock: its creation's adjustment, the only one made
 * without a key (restocks and adjustments always have one); none for 0. */
static struct store_stmt PRODUCT_INITIAL_STOCK = {
    .sql = "SELECT COALESCE(SUM(delta), 0) FROM inventory_adjustments"
           " WHERE sku = $1 AND key IS NULL",
};

/* The same creation asked again, or another one for a sku that exists. */
static enum err
product_same(struct store_conn *c, const char *sku, const char *name, int64_t stock,
             const json_t *product, struct bb_error *e)
{
    if (strcmp(json_string_value(json_object_get(product, "name")), name) != 0)
        return bb_fail(e, ERR_CONFLICT, "sku", "product %s exists with another name", sku);
    struct store_rows r;
    const struct store_param p[] = {sp_text(sku)};
    enum err rc = store_query(c, &PRODUCT_INITIAL_STOCK, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    int64_t initial = store_next(&r) ? store_col_int(&r, 0) : 0;
    store_rows_close(&r);
    if (initial != stock)
        return bb_fail(e, ERR_CONFLICT, "stock",
                       "product %s exists with an initial stock of %" PRId64 ", not %" PRId64
                       " (add stock with POST /inventory/products/%s/stock)",
                       sku, initial, stock, sku);
    return ERR_OK;
}

enum err
inventory_product_create(struct store_conn *c, const char *sku, const char *name, int64_t stock,
                         int64_t now_ms, json_t **out, bool *created, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(sku), sp_text(name), sp_int(stock), sp_int(now_ms)};
    int64_t inserted = 0;
    enum err rc = store_exec(c, &PRODUCT_INSERT, p, BB_ARRAY_LEN(p), &inserted, e);
    if (rc != ERR_OK)
        return rc;
    *created = inserted == 1;
    if (*created) { /* announced with its name and stock, even none */
        json_t *data =
            json_pack("{s:s, s:s, s:I}", "sku", sku, "name", name, "on_hand", (json_int_t)stock);
        struct outbox_event ev = {.type = "inventory.product.created.v1",
                                  .aggregate_type = "product",
                                  .aggregate_id = sku,
                                  .data = data};
        rc = outbox_append(c, &ev, now_ms, e);
        json_decref(data);
        if (rc != ERR_OK)
            return rc;
    }
    if (*created && stock > 0)
        return adjusted(c, sku, stock, "initial stock", NULL, now_ms, out, e);
    rc = inventory_product_get_json(c, sku, out, e);
    if (rc == ERR_OK && !*created) {
        rc = product_same(c, sku, name, stock, *out, e);
        if (rc != ERR_OK) {
            json_decref(*out);
            *out = NULL;
        }
    }
    return rc;
}

/* Claim an idempotency key; on a replay, *replayed gets the first answer. */
static enum err
idem_claim(struct store_conn *c, const char *scope, const char *key, const char *fingerprint,
           int64_t now_ms, json_t **replayed, struct bb_error *e)
{
    struct store_idem idem;
    *replayed = NULL;
    enum err rc = store_idem_claim(c, scope, key, fingerprint, now_ms, &idem, e);
    if (rc == ERR_OK && idem.replay)
        *replayed = idem.body ? json_loads(idem.body, 0, NULL) : json_object();
    store_idem_deinit(&idem);
    return rc;
}

static enum err
idem_save(struct store_conn *c, const char *scope, const char *key, const json_t *answer,
          struct bb_error *e)
{
    char *body = bb_json_dumps(answer);
    enum err rc = store_idem_save(c, scope, key, 200, body, e);
    free(body);
    return rc;
}

/* A change of stock as its endpoint takes it: the idempotency scope, and
 * the request's names for the key and the amount, which errors name. */
struct stock_change {
    const char *scope;
    const char *key_field;   /* a header (Idempotency-Key) or a body member */
    const char *delta_field; /* qty, delta */
};
static const struct stock_change STOCK_ADD = {"inventory.stock", "Idempotency-Key", "qty"};
static const struct stock_change STOCK_ADJUST = {"inventory.adjust", "key", "delta"};

/* Change on_hand by `delta` under an idempotency key. */
static enum err
change_stock(struct store_conn *c, const struct stock_change *how, const char *key, const char *sku,
             int64_t delta, const char *reason, int64_t now_ms, json_t **out, struct bb_error *e)
{
    const char *scope = how->scope;
    struct bb_buf canon;
    bb_buf_init(&canon);
    bb_buf_printf(&canon, "%s\n%" PRId64 "\n%s", sku, delta, reason);
    char fingerprint[65];
    bb_sha256_hex(canon.data, canon.len, fingerprint);
    bb_buf_deinit(&canon);
    enum err rc = idem_claim(c, scope, key, fingerprint, now_ms, out, e);
    if (rc == ERR_IDEMPOTENCY_MISMATCH) /* store_idem names the header */
        return bb_fail(e, rc, how->key_field, "%s %s was already used for a different request",
                       how->key_field, key);
    if (rc == ERR_INVALID)
        return bb_fail(e, rc, how->key_field, "%s must be 1 to %d visible ASCII characters",
                       how->key_field, STORE_IDEM_KEY_MAX);
    if (rc != ERR_OK || *out != NULL)
        return rc;
    const struct store_param p[] = {sp_text(sku), sp_int(delta), sp_int(now_ms),
                                    sp_int(INVENTORY_STOCK_MAX)};
    int64_t changed = 0;
    rc = store_exec(c, &PRODUCT_ADD, p, BB_ARRAY_LEN(p), &changed, e);
    if (rc != ERR_OK)
        return rc;
    if (changed == 0) {
        json_t *product;
        rc = inventory_product_get_json(c, sku, &product, e);
        if (rc != ERR_OK)
            return rc;
        int64_t on_hand = json_integer_value(json_object_get(product, "on_hand"));
        int64_t reserved = json_integer_value(json_object_get(product, "reserved"));
        json_decref(product);
        if (delta > 0)
            return bb_fail(e, ERR_INVALID, how->delta_field,
                           "%s would hold more than %" PRId64 " units", sku, INVENTORY_STOCK_MAX);
        return bb_fail(e, ERR_INSUFFICIENT_STOCK, "delta",
                       "%s has %" PRId64 " on hand, %" PRId64
                       " of them reserved: cannot remove %" PRId64,
                       sku, on_hand, reserved, -delta);
    }
    rc = adjusted(c, sku, delta, reason, key, now_ms, out, e);
    if (rc == ERR_OK)
        rc = idem_save(c, scope, key, *out, e);
    if (rc != ERR_OK) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}

enum err
inventory_stock_add(struct store_conn *c, const char *sku, int64_t qty, const char *key,
                    int64_t now_ms, json_t **out, struct bb_error *e)
{
    return change_stock(c, &STOCK_ADD, key, sku, qty, "restock", now_ms, out, e);
}

enum err
inventory_adjust(struct store_conn *c, const char *key, const char *sku, int64_t delta,
                 const char *reason, int64_t now_ms, json_t **out, struct bb_error *e)
{
    return change_stock(c, &STOCK_ADJUST, key, sku, delta, reason, now_ms, out, e);
}

/* ---- reservations ---------------------------------------------------------------------- */

static struct store_stmt TAKE = {
    .sql = "UPDATE inventory_products SET reserved = reserved + $2, updated_at_ms = $3"
           " WHERE sku = $1 AND on_hand - reserved >= $2",
};
static struct store_stmt GIVE_BACK = {
    .sql = "UPDATE inventory_products SET reserved = reserved - $2, updated_at_ms = $3"
           " WHERE sku = $1",
};
static struct store_stmt SELL = {
    .sql = "UPDATE inventory_products SET reserved = reserved - $2, on_hand = on_hand - $2,"
           " updated_at_ms = $3 WHERE sku = $1",
};
static struct store_stmt RESERVATION_INSERT = {
    .sql = "INSERT INTO inventory_reservations (order_id, state, items, expires_at_ms,"
           " created_at_ms, updated_at_ms) VALUES ($1, 'active', $2, $3, $4, $4)"
           " ON CONFLICT (order_id) DO NOTHING",
};
static struct store_stmt RESERVATION_GET = {
    .sql = "SELECT order_id, state, items, expires_at_ms, created_at_ms, updated_at_ms"
           " FROM inventory_reservations WHERE order_id = $1",
};
/* The compare-and-set of every transition. */
static struct store_stmt RESERVATION_MOVE = {
    .sql = "UPDATE inventory_reservations SET state = $3, updated_at_ms = $4"
           " WHERE order_id = $1 AND state = $2",
};
static struct store_stmt RESERVATIONS_DUE = {
    .sql = "SELECT order_id FROM inventory_reservations WHERE state = 'active'"
           " AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2",
    .sql_pg = "SELECT order_id FROM inventory_reservations WHERE state = 'active'"
              " AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
};

/* A reservation as read, the API's JSON and what a transition needs. */
struct reservation {
    json_t *json; /* {order_id, state, items, expires_at, created_at, updated_at} */
    enum inventory_reservation_state state;
    int64_t expires_at_ms;
};

static enum err
reservation_read(struct store_conn *c, const char *order_id, struct reservation *res,
                 struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(order_id)};
    enum err rc = store_query(c, &RESERVATION_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "order_id", "no reservation for order %s", order_id);
    }
    char expires[32], created[32], updated[32];
    res->expires_at_ms = store_col_int(&r, 3);
    bb_wall_ms_format(res->expires_at_ms, expires);
    bb_wall_ms_format(store_col_int(&r, 4), created);
    bb_wall_ms_format(store_col_int(&r, 5), updated);
    res->state = state_parse(store_col_text(&r, 1));
    json_t *items = json_loads(store_col_text(&r, 2), 0, NULL);
    res->json =
        json_pack("{s:s, s:s, s:o, s:s, s:s, s:s}", "order_id", store_col_text(&r, 0), "state",
                  inventory_state_name(res->state), "items", items ? items : json_array(),
                  "expires_at", expires, "created_at", created, "updated_at", updated);
    store_rows_close(&r);
    return ERR_OK;
}

enum err
inventory_reservation_get_json(struct store_conn *c, const char *order_id, json_t **out,
                               struct bb_error *e)
{
    struct reservation res;
    enum err rc = reservation_read(c, order_id, &res, e);
    if (rc == ERR_OK)
        *out = res.json;
    return rc;
}

static int
item_cmp(const void *a, const void *b)
{
    return strcmp(((const struct inventory_item *)a)->sku, ((const struct inventory_item *)b)->sku);
}

/* Items sorted by SKU, as stored and compared: [{"sku","qty"}...]. */
static json_t *
items_json(const struct inventory_item *items, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            a, json_pack("{s:s, s:I}", "sku", items[i].sku, "qty", (json_int_t)items[i].qty));
    return a;
}

/* Announce a reservation event with its items. */
static enum err
reservation_event(struct store_conn *c, const char *type, const char *order_id, const json_t *items,
                  const char *reason, int64_t expires_at_ms, int64_t now_ms, struct bb_error *e)
{
    json_t *data = json_pack("{s:s, s:O}", "order_id", order_id, "items", items);
    if (reason)
        json_object_set_new(data, "reason", json_string(reason));
    if (expires_at_ms > 0) {
        char at[32];
        bb_wall_ms_format(expires_at_ms, at);
        json_object_set_new(data, "expires_at", json_string(at));
    }
    struct outbox_event ev = {
        .type = type, .aggregate_type = "reservation", .aggregate_id = order_id, .data = data};
    enum err rc = outbox_append(c, &ev, now_ms, e);
    json_decref(data);
    return rc;
}

/* Take each item's stock; shortages are collected, the rest is up to the
 * transaction (the caller fails it, undoing every take). */
static enum err
take_items(struct store_conn *c, const struct inventory_item *sorted, const size_t *order, size_t n,
           int64_t now_ms, json_t **short_items, struct bb_error *e)
{
    *short_items = NULL;
    for (size_t i = 0; i < n; i++) {
        const struct store_param p[] = {sp_text(sorted[i].sku), sp_int(sorted[i].qty),
                                        sp_int(now_ms)};
        int64_t changed = 0;
        enum err rc = store_exec(c, &TAKE, p, BB_ARRAY_LEN(p), &changed, e);
        if (rc != ERR_OK)
            return rc;
        if (changed == 1)
            continue;
        json_t *product;
        if (inventory_product_get_json(c, sorted[i].sku, &product, e) != ERR_OK) {
            json_decref(*short_items);
            *short_items = NULL;
            char field[32];
            snprintf(field, sizeof field, "items[%zu].sku", order[i]);
            return bb_fail(e, ERR_NOT_FOUND, field, "no product with sku %s", sorted[i].sku);
        }
        if (*short_items == NULL)
            *short_items = json_array();
        json_array_append_new(*short_items,
                              json_pack("{s:s, s:I, s:O}", "sku", sorted[i].sku, "requested",
                                        (json_int_t)sorted[i].qty, "available",
                                        json_object_get(product, "available")));
        json_decref(product);
    }
    if (*short_items == NULL)
        return ERR_OK;
    size_t k = json_array_size(*short_items);
    return bb_fail(e, ERR_INSUFFICIENT_STOCK, "items", "%zu of %zu item%s short of stock", k, n,
                   n == 1 ? " is" : "s are");
}

enum err
inventory_reserve(struct store_conn *c, const char *order_id, const struct inventory_item *items,
                  size_t n, int64_t ttl_ms, int64_t now_ms, json_t **out, bool *created,
                  json_t **short_items, struct bb_error *e)
{
    *short_items = NULL;
    *created = false;
    BB_ASSERT(n > 0 && n <= INVENTORY_ITEMS_MAX);
    struct inventory_item sorted[INVENTORY_ITEMS_MAX];
    size_t order[INVENTORY_ITEMS_MAX];
    memcpy(sorted, items, n * sizeof *items);
    qsort(sorted, n, sizeof *sorted, item_cmp);
    for (size_t i = 0; i < n; i++) { /* where each sorted item was asked */
        for (size_t k = 0; k < n; k++) {
            if (items[k].sku == sorted[i].sku)
                order[i] = k;
        }
    }
    json_t *wanted = items_json(sorted, n);
    /* The stock is taken last: a product's row stays locked from its
     * UPDATE to the commit, so a hot product is held as briefly as can be. */
    char *text = bb_json_dumps(wanted);
    const struct store_param p[] = {sp_text(order_id), sp_text(text), sp_int(now_ms + ttl_ms),
                                    sp_int(now_ms)};
    int64_t inserted = 0;
    enum err rc = store_exec(c, &RESERVATION_INSERT, p, BB_ARRAY_LEN(p), &inserted, e);
    free(text);
    if (rc == ERR_OK && inserted == 0) { /* asked before: the same answer, if the same question */
        struct reservation res;
        rc = reservation_read(c, order_id, &res, e);
        bool same = rc == ERR_OK && json_equal(json_object_get(res.json, "items"), wanted);
        json_decref(wanted);
        if (rc != ERR_OK)
            return rc;
        if (!same) {
            json_decref(res.json);
            return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "items",
                           "order %s already has a reservation for other items", order_id);
        }
        if (out)
            *out = res.json;
        else
            json_decref(res.json);
        return ERR_OK;
    }
    if (rc == ERR_OK)
        rc = reservation_event(c, "inventory.reserved.v1", order_id, wanted, NULL, now_ms + ttl_ms,
                               now_ms, e);
    if (rc == ERR_OK)
        rc = take_items(c, sorted, order, n, now_ms, short_items, e);
    if (rc == ERR_OK && out) {
        char expires[32], created_at[32];
        bb_wall_ms_format(now_ms + ttl_ms, expires);
        bb_wall_ms_format(now_ms, created_at);
        *out = json_pack("{s:s, s:s, s:O, s:s, s:s, s:s}", "order_id", order_id, "state",
                         inventory_state_name(INVENTORY_ACTIVE), "items", wanted, "expires_at",
                         expires, "created_at", created_at, "updated_at", created_at);
    }
    *created = rc == ERR_OK;
    json_decref(wanted);
    return rc;
}

/* ---- reserving for many orders at once ---------------------------------------------------- */

static struct store_stmt RESERVATIONS_OF = {
    .sql_pg = "SELECT order_id, items FROM inventory_reservations"
              " WHERE order_id = ANY($1::text[])",
    .sql_sqlite = "SELECT order_id, items FROM inventory_reservations"
                  " WHERE order_id IN (SELECT value FROM json_each($1))",
};
/* The products, locked in SKU order (so batches never wait on each other
 * in a circle). */
static struct store_stmt STOCK_LOCK = {
    .sql_pg = "SELECT sku, on_hand - reserved FROM inventory_products"
              " WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
    .sql_sqlite = "SELECT sku, on_hand - reserved FROM inventory_products"
                  " WHERE sku IN (SELECT value FROM json_each($1)) ORDER BY sku",
};
static struct store_stmt RESERVATION_INSERT_MANY = {
    .sql_pg = "INSERT INTO inventory_reservations (order_id, state, items, expires_at_ms,"
              " created_at_ms, updated_at_ms) SELECT order_id, 'active', items, $3, $4, $4"
              " FROM unnest($1::text[], $2::text[]) AS x(order_id, items)"
              " ON CONFLICT (order_id) DO NOTHING",
    .sql_sqlite = "INSERT INTO inventory_reservations (order_id, state, items, expires_at_ms,"
                  " created_at_ms, updated_at_ms) SELECT value ->> 'order_id', 'active',"
                  " value ->> 'items', $2, $3, $3 FROM json_each($1) WHERE true"
                  " ON CONFLICT (order_id) DO NOTHING",
};
static struct store_stmt TAKE_MANY = {
    .sql_pg = "UPDATE inventory_products p SET reserved = reserved + x.qty, updated_at_ms = $3"
              " FROM unnest($1::text[], $2::bigint[]) AS x(sku, qty) WHERE p.sku = x.sku",
    .sql_sqlite = "UPDATE inventory_products SET reserved = reserved + x.qty, updated_at_ms = $2"
                  " FROM (SELECT value ->> 'sku' AS sku, value ->> 'qty' AS qty"
                  " FROM json_each($1)) AS x WHERE inventory_products.sku = x.sku",
};

struct stock {
    const char *sku;
    int64_t available; /* after what this batch granted so far */
    int64_t taken;
};

static int
stock_cmp(const void *a, const void *b)
{
    return strcmp(((const struct stock *)a)->sku, ((const struct stock *)b)->sku);
}

/* Requests asked before: the same answer if the same question. *fresh[i]
 * says which were not. */
static enum err
reservations_known(struct store_conn *c, const struct inventory_reservation_req *reqs, size_t n,
                   json_t *const *wanted, enum err *outcomes, struct bb_error *errors, bool *fresh,
                   struct bb_error *e)
{
    struct store_batch ids;
    store_batch_init(&ids, c, 1);
    for (size_t i = 0; i < n; i++) {
        fresh[i] = true;
        store_batch_row(&ids);
        store_batch_text(&ids, NULL, reqs[i].order_id);
    }
    const struct store_param p[] = {sp_batch(&ids)};
    struct store_rows r;
    enum err rc = store_query(c, &RESERVATIONS_OF, p, 1, &r, e);
    store_batch_deinit(&ids);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        const char *order_id = store_col_text(&r, 0);
        json_t *items = json_loads(store_col_text(&r, 1), 0, NULL);
        for (size_t i = 0; i < n; i++) {
            if (!fresh[i] || strcmp(reqs[i].order_id, order_id) != 0)
                continue;
            fresh[i] = false;
            if (!json_equal(items, wanted[i]))
                outcomes[i] =
                    bb_fail(&errors[i], ERR_IDEMPOTENCY_MISMATCH, "items",
                            "order %s already has a reservation for other items", order_id);
        }
        json_decref(items);
    }
    store_rows_close(&r);
    return ERR_OK;
}

/* Lock the products the fresh requests name; *stock gets them by SKU. */
static enum err
stock_lock(struct store_conn *c, const struct inventory_reservation_req *reqs, size_t n,
           const bool *fresh, struct stock **stock, size_t *n_stock, struct bb_error *e)
{
    struct store_batch skus;
    store_batch_init(&skus, c, 1);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; fresh[i] && k < reqs[i].n_items; k++) {
            store_batch_row(&skus);
            store_batch_text(&skus, NULL, reqs[i].items[k].sku);
        }
    }
    *stock = xcalloc(skus.n_rows + 1, sizeof **stock);
    *n_stock = 0;
    const struct store_param p[] = {sp_batch(&skus)};
    struct store_rows r;
    enum err rc = store_query(c, &STOCK_LOCK, p, 1, &r, e);
    store_batch_deinit(&skus);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        (*stock)[*n_stock] = (struct stock){.sku = xstrdup(store_col_text(&r, 0)),
                                            .available = store_col_int(&r, 1)};
        (*n_stock)++;
    }
    store_rows_close(&r);
    return ERR_OK;
}

/* Grant request `req` from `stock`, or say why not (and take nothing). */
static enum err
grant(const struct inventory_reservation_req *req, struct stock *stock, size_t n_stock,
      struct bb_error *e)
{
    struct stock *found[INVENTORY_ITEMS_MAX];
    size_t short_of = 0;
    for (size_t k = 0; k < req->n_items; k++) {
        struct stock key = {.sku = req->items[k].sku};
        found[k] = bsearch(&key, stock, n_stock, sizeof *stock, stock_cmp);
        if (found[k] == NULL) {
            char field[32];
            snprintf(field, sizeof field, "items[%zu].sku", k);
            return bb_fail(e, ERR_NOT_FOUND, field, "no product with sku %s", req->items[k].sku);
        }
        short_of += found[k]->available < req->items[k].qty;
    }
    if (short_of > 0)
        return bb_fail(e, ERR_INSUFFICIENT_STOCK, "items", "%zu of %zu item%s short of stock",
                       short_of, req->n_items, req->n_items == 1 ? " is" : "s are");
    for (size_t k = 0; k < req->n_items; k++) {
        found[k]->available -= req->items[k].qty;
        found[k]->taken += req->items[k].qty;
    }
    return ERR_OK;
}

/* Write the granted reservations, their stock and their events. */
static enum err
reservations_write(struct store_conn *c, const struct inventory_reservation_req *reqs, size_t n,
                   json_t *const *wanted, const bool *granted, const struct stock *stock,
                   size_t n_stock, int64_t ttl_ms, int64_t now_ms, struct bb_error *e)
{
    struct store_batch rows, takes;
    store_batch_init(&rows, c, 2);
    store_batch_init(&takes, c, 2);
    struct outbox_event *evs = xcalloc(n, sizeof *evs);
    size_t n_granted = 0;
    char expires[32];
    bb_wall_ms_format(now_ms + ttl_ms, expires);
    for (size_t i = 0; i < n; i++) {
        if (!granted[i])
            continue;
        store_batch_row(&rows);
        store_batch_text(&rows, "order_id", reqs[i].order_id);
        store_batch_json(&rows, "items", wanted[i]);
        evs[n_granted++] =
            (struct outbox_event){.type = "inventory.reserved.v1",
                                  .aggregate_type = "reservation",
                                  .aggregate_id = reqs[i].order_id,
                                  .data = json_pack("{s:s, s:O, s:s}", "order_id", reqs[i].order_id,
                                                    "items", wanted[i], "expires_at", expires),
                                  .traceparent = reqs[i].traceparent};
    }
    for (size_t s = 0; s < n_stock; s++) {
        if (stock[s].taken > 0) {
            store_batch_row(&takes);
            store_batch_text(&takes, "sku", stock[s].sku);
            store_batch_int(&takes, "qty", stock[s].taken);
        }
    }
    enum err rc = ERR_OK;
    if (n_granted > 0) {
        const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms + ttl_ms), sp_int(now_ms)};
        int64_t inserted = 0;
        rc = store_exec(c, &RESERVATION_INSERT_MANY, p, BB_ARRAY_LEN(p), &inserted, e);
        if (rc == ERR_OK && inserted != (int64_t)n_granted)
            rc = bb_fail(e, ERR_RETRY, "", "reservations were made concurrently");
    }
    if (rc == ERR_OK)
        rc = outbox_append_many(c, evs, n_granted, now_ms, e);
    if (rc == ERR_OK && n_granted > 0) {
        const struct store_param p[] = {sp_batch(&takes), sp_int(now_ms)};
        rc = store_exec_deferred(c, &TAKE_MANY, p, BB_ARRAY_LEN(p), e);
    }
    outbox_events_free(evs, n_granted);
    store_batch_deinit(&rows);
    store_batch_deinit(&takes);
    return rc;
}

enum err
inventory_reserve_many(struct store_conn *c, const struct inventory_reservation_req *reqs, size_t n,
                       int64_t ttl_ms, int64_t now_ms, enum err *outcomes, struct bb_error *errors,
                       struct bb_error *e)
{
    json_t **wanted = xcalloc(n, sizeof *wanted);
    bool *fresh = xcalloc(n, sizeof *fresh), *granted = xcalloc(n, sizeof *granted);
    for (size_t i = 0; i < n; i++) {
        BB_ASSERT(reqs[i].n_items > 0 && reqs[i].n_items <= INVENTORY_ITEMS_MAX);
        struct inventory_item sorted[INVENTORY_ITEMS_MAX];
        memcpy(sorted, reqs[i].items, reqs[i].n_items * sizeof *sorted);
        qsort(sorted, reqs[i].n_items, sizeof *sorted, item_cmp);
        wanted[i] = items_json(sorted, reqs[i].n_items);
        outcomes[i] = ERR_OK;
        bb_error_clear(&errors[i]);
    }
    struct stock *stock = NULL;
    size_t n_stock = 0;
    enum err rc = reservations_known(c, reqs, n, wanted, outcomes, errors, fresh, e);
    if (rc == ERR_OK)
        rc = stock_lock(c, reqs, n, fresh, &stock, &n_stock, e);
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        if (fresh[i])
            outcomes[i] = grant(&reqs[i], stock, n_stock, &errors[i]);
        granted[i] = fresh[i] && outcomes[i] == ERR_OK;
    }
    if (rc == ERR_OK)
        rc = reservations_write(c, reqs, n, wanted, granted, stock, n_stock, ttl_ms, now_ms, e);
    for (size_t s = 0; s < n_stock; s++)
        free((char *)stock[s].sku);
    free(stock);
    for (size_t i = 0; i < n; i++)
        json_decref(wanted[i]);
    free(wanted);
    free(fresh);
    free(granted);
    return rc;
}

/* Move a reservation from `from` to `to` with a compare-and-set, moving its
 * items' stock with `stock` and announcing `event` (with `reason`). */
static enum err
reservation_move(struct store_conn *c, const char *order_id, const struct reservation *res,
                 enum inventory_reservation_state to, struct store_stmt *stock, const char *event,
                 const char *reason, int64_t now_ms, struct bb_error *e)
{
    BB_ASSERT(inventory_can_transition(res->state, to));
    const struct store_param p[] = {sp_text(order_id), sp_text(inventory_state_name(res->state)),
                                    sp_text(inventory_state_name(to)), sp_int(now_ms)};
    int64_t changed = 0;
    enum err rc = store_exec(c, &RESERVATION_MOVE, p, BB_ARRAY_LEN(p), &changed, e);
    if (rc == ERR_OK && changed != 1)
        return bb_fail(e, ERR_RETRY, "", "reservation %s changed concurrently", order_id);
    const json_t *items = json_object_get(res->json, "items");
    size_t i;
    const json_t *item;
    json_array_foreach(items, i, item)
    {
        if (rc != ERR_OK)
            break;
        const struct store_param q[] = {sp_text(json_string_value(json_object_get(item, "sku"))),
                                        sp_int(json_integer_value(json_object_get(item, "qty"))),
                                        sp_int(now_ms)};
        rc = store_exec_deferred(c, stock, q, BB_ARRAY_LEN(q), e);
    }
    if (rc == ERR_OK)
        rc = reservation_event(c, event, order_id, items, reason, 0, now_ms, e);
    return rc;
}

/* ---- committing many reservations at once ------------------------------------------------- */

/* The reservations, locked in order id order. */
static struct store_stmt RESERVATIONS_LOCK = {
    .sql_pg = "SELECT order_id, state, items, expires_at_ms FROM inventory_reservations"
              " WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE",
    .sql_sqlite = "SELECT order_id, state, items, expires_at_ms FROM inventory_reservations"
                  " WHERE order_id IN (SELECT value FROM json_each($1)) ORDER BY order_id",
};
/* Those of RESERVATIONS_LOCK's rows found active, so no state check: with
 * one, PostgreSQL ANDs the active reservations' partial index (every entry
 * since its last vacuum) with the primary key. */
static struct store_stmt RESERVATIONS_COMMIT = {
    .sql_pg = "UPDATE inventory_reservations SET state = 'committed', updated_at_ms = $2"
              " WHERE order_id = ANY($1::text[])",
    .sql_sqlite = "UPDATE inventory_reservations SET state = 'committed', updated_at_ms = $2"
                  " WHERE order_id IN (SELECT value FROM json_each($1)) AND state = 'active'",
};
static struct store_stmt PRODUCTS_LOCK = {
    .sql_pg = "SELECT sku FROM inventory_products"
              " WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
    .sql_sqlite = "SELECT sku FROM inventory_products"
                  " WHERE sku IN (SELECT value FROM json_each($1)) ORDER BY sku",
};
static struct store_stmt SELL_MANY = {
    .sql_pg = "UPDATE inventory_products p SET reserved = reserved - x.qty,"
              " on_hand = on_hand - x.qty, updated_at_ms = $3"
              " FROM unnest($1::text[], $2::bigint[]) AS x(sku, qty) WHERE p.sku = x.sku",
    .sql_sqlite = "UPDATE inventory_products SET reserved = reserved - x.qty,"
                  " on_hand = on_hand - x.qty, updated_at_ms = $2"
                  " FROM (SELECT value ->> 'sku' AS sku, value ->> 'qty' AS qty"
                  " FROM json_each($1)) AS x WHERE inventory_products.sku = x.sku",
};

/* What committing a reservation found in `state` comes to (ERR_OK with
 * *sell: sell it now). */
static enum err
commit_verdict(const char *order_id, enum inventory_reservation_state state, int64_t expires_at_ms,
               int64_t now_ms, bool *sell, struct bb_error *e)
{
    *sell = false;
    if (state == INVENTORY_ACTIVE && now_ms >= expires_at_ms)
        return bb_fail(e, ERR_RESERVATION_EXPIRED, "order_id",
                       "the reservation for order %s expired before its commit", order_id);
    if (state == INVENTORY_ACTIVE) {
        *sell = true;
        return ERR_OK;
    }
    if (state == INVENTORY_COMMITTED)
        return ERR_OK; /* done before */
    if (state == INVENTORY_EXPIRED)
        return bb_fail(e, ERR_RESERVATION_EXPIRED, "order_id",
                       "the reservation for order %s expired", order_id);
    return bb_fail(e, ERR_CONFLICT, "order_id", "the reservation for order %s is %s", order_id,
                   inventory_state_name(state));
}

/* Add a reservation's items to `sold` ({sku: qty}). */
static void
add_items(json_t *sold, const json_t *items)
{
    size_t i;
    const json_t *item;
    json_array_foreach(items, i, item)
    {
        const char *sku = json_string_value(json_object_get(item, "sku"));
        json_int_t qty = json_integer_value(json_object_get(item, "qty"));
        if (sku)
            json_object_set_new(sold, sku,
                                json_integer(json_integer_value(json_object_get(sold, sku)) + qty));
    }
}

/* Sell what `sold` holds, its products locked in SKU order first. */
static enum err
sell_many(struct store_conn *c, const json_t *sold, int64_t now_ms, struct bb_error *e)
{
    struct store_batch skus, rows;
    store_batch_init(&skus, c, 1);
    store_batch_init(&rows, c, 2);
    const char *sku;
    json_t *qty;
    json_object_foreach((json_t *)sold, sku, qty)
    {
        store_batch_row(&skus);
        store_batch_text(&skus, NULL, sku);
        store_batch_row(&rows);
        store_batch_text(&rows, "sku", sku);
        store_batch_int(&rows, "qty", json_integer_value(qty));
    }
    const struct store_param l[] = {sp_batch(&skus)};
    struct store_rows r;
    enum err rc = store_query(c, &PRODUCTS_LOCK, l, 1, &r, e);
    if (rc == ERR_OK) {
        while (store_next(&r))
            ;
        store_rows_close(&r);
        const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms)};
        rc = store_exec_deferred(c, &SELL_MANY, p, BB_ARRAY_LEN(p), e);
    }
    store_batch_deinit(&skus);
    store_batch_deinit(&rows);
    return rc;
}

enum err
inventory_commit_many(struct store_conn *c, const char *const *order_ids,
                      const char *const *traceparents, size_t n, int64_t now_ms, enum err *outcomes,
                      struct bb_error *errors, struct bb_error *e)
{
    json_t *sold = json_object();
    struct store_batch ids, committed;
    store_batch_texts(&ids, c, order_ids, n);
    store_batch_init(&committed, c, 1);
    struct outbox_event *evs = xcalloc(n ? n : 1, sizeof *evs);
    size_t n_evs = 0;
    for (size_t i = 0; i < n; i++)
        outcomes[i] = bb_fail(&errors[i], ERR_NOT_FOUND, "order_id", "no reservation for order %s",
                              order_ids[i]);
    const struct store_param p[] = {sp_batch(&ids)};
    struct store_rows r;
    enum err rc = store_query(c, &RESERVATIONS_LOCK, p, 1, &r, e);
    if (rc == ERR_OK) {
        while (store_next(&r)) {
            const char *order_id = store_col_text(&r, 0);
            size_t i = 0;
            while (i < n && strcmp(order_ids[i], order_id) != 0)
                i++;
            if (i == n || outcomes[i] != ERR_NOT_FOUND)
                continue;
            bool sell;
            bb_error_clear(&errors[i]);
            outcomes[i] = commit_verdict(order_ids[i], state_parse(store_col_text(&r, 1)),
                                         store_col_int(&r, 3), now_ms, &sell, &errors[i]);
            if (!sell)
                continue;
            json_t *items = json_loads(store_col_text(&r, 2), 0, NULL);
            add_items(sold, items);
            store_batch_row(&committed);
            store_batch_text(&committed, NULL, order_ids[i]);
            evs[n_evs++] =
                (struct outbox_event){.type = "inventory.committed.v1",
                                      .aggregate_type = "reservation",
                                      .aggregate_id = order_ids[i],
                                      .data = json_pack("{s:s, s:o}", "order_id", order_ids[i],
                                                        "items", items ? items : json_array()),
                                      .traceparent = traceparents ? traceparents[i] : NULL};
        }
        store_rows_close(&r);
    }
    if (rc == ERR_OK && n_evs > 0) {
        const struct store_param q[] = {sp_batch(&committed), sp_int(now_ms)};
        rc = store_exec_deferred(c, &RESERVATIONS_COMMIT, q, BB_ARRAY_LEN(q), e);
    }
    if (rc == ERR_OK && n_evs > 0)
        rc = sell_many(c, sold, now_ms, e);
    if (rc == ERR_OK)
        rc = outbox_append_many(c, evs, n_evs, now_ms, e);
    outbox_events_free(evs, n_evs);
    store_batch_deinit(&ids);
    store_batch_deinit(&committed);
    json_decref(sold);
    return rc;
}

/* Read, apply `to` if the reservation is active, answer its JSON. */
static enum err
reservation_finish(struct store_conn *c, const char *order_id, enum inventory_reservation_state to,
                   int64_t now_ms, json_t **out, struct bb_error *e)
{
    struct reservation res;
    enum err rc = reservation_read(c, order_id, &res, e);
    if (rc != ERR_OK)
        return rc;
    bool sell = false;
    if (to == INVENTORY_COMMITTED) {
        rc = commit_verdict(order_id, res.state, res.expires_at_ms, now_ms, &sell, e);
        if (sell)
            rc = reservation_move(c, order_id, &res, to, &SELL, "inventory.committed.v1", NULL,
                                  now_ms, e);
    } else if (res.state == INVENTORY_ACTIVE)
        rc = reservation_move(c, order_id, &res, to, &GIVE_BACK, "inventory.released.v1",
                              to == INVENTORY_EXPIRED ? "expired" : "released", now_ms, e);
    else if (res.state == to || (to == INVENTORY_RELEASED && res.state == INVENTORY_EXPIRED))
        rc = ERR_OK; /* done before: answered as is */
    else if (res.state == INVENTORY_EXPIRED)
        rc = bb_fail(e, ERR_RESERVATION_EXPIRED, "order_id", "the reservation for order %s expired",
                     order_id);
    else
        rc = bb_fail(e, ERR_CONFLICT, "order_id", "the reservation for order %s is %s", order_id,
                     inventory_state_name(res.state));
    json_decref(res.json);
    if (rc == ERR_OK && out)
        rc = inventory_reservation_get_json(c, order_id, out, e);
    return rc;
}

enum err
inventory_release(struct store_conn *c, const char *order_id, int64_t now_ms, json_t **out,
                  struct bb_error *e)
{
    return reservation_finish(c, order_id, INVENTORY_RELEASED, now_ms, out, e);
}

enum err
inventory_commit(struct store_conn *c, const char *order_id, int64_t now_ms, json_t **out,
                 struct bb_error *e)
{
    return reservation_finish(c, order_id, INVENTORY_COMMITTED, now_ms, out, e);
}

enum err
inventory_expire_due(struct store_conn *c, int64_t now_ms, int64_t limit, int64_t *n,
                     struct bb_error *e)
{
    *n = 0;
    struct store_rows r;
    const struct store_param p[] = {sp_int(now_ms), sp_int(limit)};
    enum err rc = store_query(c, &RESERVATIONS_DUE, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    size_t count = (size_t)r.nrows, k = 0;
    char **ids = xcalloc(count ? count : 1, sizeof *ids);
    while (store_next(&r))
        ids[k++] = xstrdup(store_col_text(&r, 0));
    store_rows_close(&r);
    for (size_t i = 0; i < k; i++) {
        json_t *res = NULL;
        if (rc == ERR_OK)
            rc = reservation_finish(c, ids[i], INVENTORY_EXPIRED, now_ms, &res, e);
        json_decref(res);
        free(ids[i]);
    }
    free(ids);
    if (rc == ERR_OK)
        *n = (int64_t)k;
    return rc;
}
