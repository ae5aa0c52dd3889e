/*
 * checkout_store.c: the checkouts table; accepting a checkout with its
 * checkout.requested.v1 event in one transaction; reading one back; its
 * end (PENDING -> COMPLETED or FAILED) with its checkout.status.changed.v1
 * event in one transaction.
 */
#include "checkout/checkout_int.h"

#include "inventory/inventory.h"
#include "outbox/outbox.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "checkouts",
        .sqlite = "CREATE TABLE checkouts ("
                  " id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,"
                  " fingerprint TEXT NOT NULL, customer_id TEXT NOT NULL,"
                  " currency TEXT NOT NULL, total_amount INTEGER NOT NULL, body TEXT NOT NULL,"
                  " status TEXT NOT NULL, reason TEXT, order_id TEXT,"
                  " created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL)"
                  " WITHOUT ROWID;",
        .pg = "CREATE TABLE checkouts ("
              " id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,"
              " fingerprint TEXT NOT NULL, customer_id TEXT NOT NULL,"
              " currency TEXT NOT NULL, total_amount BIGINT NOT NULL, body TEXT NOT NULL,"
              " status TEXT NOT NULL, reason TEXT, order_id TEXT,"
              " created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL);",
    },
    {
        .version = 2,
        .name = "fulfilments",
        .sqlite = "CREATE TABLE fulfilments (order_id TEXT PRIMARY KEY, checkout_id TEXT NOT NULL,"
                  " job_id INTEGER NOT NULL, recorded_at_ms INTEGER NOT NULL) WITHOUT ROWID;",
        .pg = "CREATE TABLE fulfilments (order_id TEXT PRIMARY KEY, checkout_id TEXT NOT NULL,"
              " job_id BIGINT NOT NULL, recorded_at_ms BIGINT NOT NULL);",
    },
    {
        /* A checkout's row changes twice within a second of its insert (its
         * order, its end); on a full page each change moved the row to
         * another page (a row lock in the WAL, new entries in both indexes).
         * With room left, PostgreSQL updates it in place (HOT). SQLite
         * updates rows in place anyway. */
        .version = 3,
        .name = "checkouts leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE checkouts SET (fillfactor = 70);",
    },
};

const struct store_migration *
checkout_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

static const char *const STATUS_NAMES[] = {
    [CHECKOUT_PENDING] = "PENDING",
    [CHECKOUT_COMPLETED] = "COMPLETED",
    [CHECKOUT_FAILED] = "FAILED",
};

const char *
checkout_status_name(enum checkout_status s)
{
    return (size_t)s < BB_ARRAY_LEN(STATUS_NAMES) ? STATUS_NAMES[s] : "UNKNOWN";
}

#define CHECKOUT_COLUMNS                                                                    \
    "id, fingerprint, customer_id, currency, total_amount, body, status, reason, order_id," \
    " created_at_ms, updated_at_ms"
/* The new row back (none when the key was taken). */
static struct store_stmt CHECKOUT_INSERT = {
    .sql = "INSERT INTO checkouts (id, idempotency_key, fingerprint, customer_id, currency,"
           " total_amount, body, status, created_at_ms, updated_at_ms)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8, $8)"
           " ON CONFLICT (idempotency_key) DO NOTHING RETURNING " CHECKOUT_COLUMNS,
};
/* With, last, when its confirmed order was handed to fulfilment. */
static struct store_stmt CHECKOUT_GET = {
    .sql = "SELECT " CHECKOUT_COLUMNS ", (SELECT recorded_at_ms FROM fulfilments f"
           " WHERE f.order_id = checkouts.order_id) FROM checkouts WHERE id = $1",
};
static struct store_stmt CHECKOUT_BY_KEY = {
    .sql = "SELECT " CHECKOUT_COLUMNS " FROM checkouts WHERE idempotency_key = $1",
};

/* The checkout's JSON from a row, its body parsed from the row or, when
 * the caller has it in hand, `known`; *fingerprint (if non-NULL) gets its
 * hash. */
static json_t *
checkout_json(struct store_rows *r, const json_t *known, char fingerprint[65])
{
    if (fingerprint)
        bb_strlcpy(fingerprint, store_col_text(r, 1), 65);
    char created[32], updated[32];
    bb_wall_ms_format(store_col_int(r, 9), created);
    bb_wall_ms_format(store_col_int(r, 10), updated);
    json_t *body = known ? json_incref((json_t *)known) : json_loads(store_col_text(r, 5), 0, NULL);
    json_t *o = json_pack(
        "{s:s, s:s, s:s?, s:s?, s:s, s:s, s:I, s:O, s:O, s:s, s:s}", "checkout_id",
        store_col_text(r, 0), "status", store_col_text(r, 6), "reason",
        store_col_is_null(r, 7) ? NULL : store_col_text(r, 7), "order_id",
        store_col_is_null(r, 8) ? NULL : store_col_text(r, 8), "customer_id", store_col_text(r, 2),
        "currency", store_col_text(r, 3), "total_amount", (json_int_t)store_col_int(r, 4), "items",
        json_object_get(body, "items"), "payment", json_object_get(body, "payment"), "created_at",
        created, "updated_at", updated);
    json_decref(body);
    return o;
}

static enum err
checkout_read(struct store_conn *c, struct store_stmt *st, const char *key, json_t **out,
              char fingerprint[65], struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(key)};
    enum err rc = store_query(c, st, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r))
        *out = checkout_json(&r, NULL, fingerprint);
    else
        rc = bb_fail(e, ERR_NOT_FOUND, "checkout_id", "no checkout %s", key);
    store_rows_close(&r);
    return rc;
}

enum err
checkout_get_json(struct store_conn *c, const char *checkout_id, json_t **out, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(checkout_id)};
    enum err rc = store_query(c, &CHECKOUT_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "checkout_id", "no checkout %s", checkout_id);
    }
    *out = checkout_json(&r, NULL, NULL);
    char at[32];
    bool recorded = !store_col_is_null(&r, 11);
    if (recorded)
        bb_wall_ms_format(store_col_int(&r, 11), at);
    store_rows_close(&r);
    json_object_set_new(*out, "fulfilment_recorded_at", recorded ? json_string(at) : json_null());
    return ERR_OK;
}

/* The body as stored and announced: {customer_id, currency, items, payment}. */
static json_t *
request_json(const struct checkout_request *req)
{
    json_t *items = json_array();
    for (size_t i = 0; i < req->n_items; i++)
        json_array_append_new(items, json_pack("{s:s, s:I, s:I}", "sku", req->items[i].sku, "qty",
                                               (json_int_t)req->items[i].qty, "unit_price",
                                               (json_int_t)req->items[i].unit_price));
    json_t *payment = json_object();
    if (req->card)
        json_object_set_new(payment, "card", json_string(req->card));
    return json_pack("{s:s, s:s, s:o, s:o}", "customer_id", req->customer_id, "currency",
                     req->currency, "items", items, "payment", payment);
}

/* A key taken before this request: its checkout, if the same body. */
static enum err
replay(struct store_conn *c, const struct checkout_request *req, json_t **out, struct bb_error *e)
{
    char fingerprint[65];
    enum err rc = checkout_read(c, &CHECKOUT_BY_KEY, req->idempotency_key, out, fingerprint, e);
    if (rc == ERR_OK && strcmp(fingerprint, req->fingerprint) != 0) {
        json_decref(*out);
        *out = NULL;
        return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "Idempotency-Key",
                       "Idempotency-Key %s was already used for a different checkout",
                       req->idempotency_key);
    }
    return rc;
}

/* checkout.requested.v1: the body (request_json's), its id and total. */
static json_t *
requested_data(const json_t *body, const char *id, int64_t total_amount)
{
    json_t *data = json_copy((json_t *)body); /* shallow: the members are shared */
    json_object_set_new(data, "checkout_id", json_string(id));
    json_object_set_new(data, "total_amount", json_integer(total_amount));
    return data;
}

/* ---- SKUs known to name a product ------------------------------------------------------ */

/* An open-addressing set of strings; once it is 3/4 full, SKUs not in it
 * are looked up every time. */
enum { KNOWN_SLOTS = 1 << 16, KNOWN_MAX = KNOWN_SLOTS / 4 * 3 };

struct checkout_skus {
    pthread_mutex_t mu;
    size_t n;                /* guarded by mu */
    char *slot[KNOWN_SLOTS]; /* guarded by mu; NULL: empty */
};

struct checkout_skus *
checkout_skus_create(void)
{
    struct checkout_skus *k = xcalloc(1, sizeof *k);
    pthread_mutex_init(&k->mu, NULL);
    return k;
}

void
checkout_skus_destroy(struct checkout_skus *k)
{
    if (k == NULL)
        return;
    for (size_t i = 0; i < KNOWN_SLOTS; i++)
        free(k->slot[i]);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

/* The slot holding `sku`, or the empty one where it would go (mu held). */
static char **
known_slot(struct checkout_skus *k, const char *sku)
{
    for (size_t i = (size_t)(bb_fnv1a(BB_FNV1A_BASIS, sku) % KNOWN_SLOTS);;
         i = (i + 1) % KNOWN_SLOTS) {
        if (k->slot[i] == NULL || strcmp(k->slot[i], sku) == 0)
            return &k->slot[i];
    }
}

static bool
known_has(struct checkout_skus *k, const char *sku)
{
    pthread_mutex_lock(&k->mu);
    bool has = *known_slot(k, sku) != NULL;
    pthread_mutex_unlock(&k->mu);
    return has;
}

static void
known_add(struct checkout_skus *k, const char *sku)
{
    pthread_mutex_lock(&k->mu);
    char **slot = known_slot(k, sku);
    if (*slot == NULL && k->n < KNOWN_MAX) {
        *slot = xstrdup(sku);
        k->n++;
    }
    pthread_mutex_unlock(&k->mu);
}

/* Every item of reqs[0..n) names a product; rcs[i] (errors[i]) fails a
 * request with an item that does not, naming it (rcs NULL: fail with it).
 * Only SKUs `known` does not have are looked up (in one statement); what
 * the lookup finds, it learns. */
static enum err
skus_check(struct store_conn *c, struct checkout_skus *known_skus,
           const struct checkout_request *const *reqs, size_t n, enum err *rcs,
           struct bb_error *errors, struct bb_error *e)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += reqs[i]->n_items;
    const char **skus = xcalloc(total, sizeof *skus);
    bool *known = xcalloc(total, sizeof *known);
    const char **unseen = xcalloc(total, sizeof *unseen);
    size_t *unseen_at = xcalloc(total, sizeof *unseen_at);
    bool *found = xcalloc(total, sizeof *found);
    size_t k = 0, u = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < reqs[i]->n_items; j++, k++) {
            skus[k] = reqs[i]->items[j].sku;
            known[k] = known_skus && known_has(known_skus, skus[k]);
            if (!known[k]) {
                unseen_at[u] = k;
                unseen[u++] = skus[k];
            }
        }
    }
    enum err rc = u == 0 ? ERR_OK : inventory_skus_known(c, unseen, u, found, e);
    for (size_t x = 0; x < u && rc == ERR_OK; x++) {
        known[unseen_at[x]] = found[x];
        if (found[x] && known_skus)
            known_add(known_skus, unseen[x]);
    }
    free(found);
    free(unseen_at);
    free(unseen);
    k = 0;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        for (size_t j = 0; j < reqs[i]->n_items; j++, k++) {
            if (known[k])
                continue;
            char field[32];
            snprintf(field, sizeof field, "items[%zu].sku", j);
            enum err bad = bb_fail(rcs ? &errors[i] : e, ERR_INVALID, field,
                                   "no product with sku %s is sold here", skus[k]);
            if (rcs == NULL)
                rc = bad;
            else
                rcs[i] = bad;
            k += reqs[i]->n_items - j;
            break;
        }
    }
    free(known);
    free(skus);
    return rc;
}

enum err
checkout_accept(struct store_conn *c, struct checkout_skus *known,
                const struct checkout_request *req, int64_t now_ms, json_t **out, bool *created,
                struct bb_error *e)
{
    *created = false;
    *out = NULL;
    enum err checked = skus_check(c, known, &req, 1, NULL, NULL, e);
    if (checked != ERR_OK)
        return checked;
    char id[37];
    bb_uuid7_at(now_ms, id);
    json_t *body = request_json(req);
    char *text = bb_json_dumps(body);
    const struct store_param p[] = {sp_text(id),
                                    sp_text(req->idempotency_key),
                                    sp_text(req->fingerprint),
                                    sp_text(req->customer_id),
                                    sp_text(req->currency),
                                    sp_int(req->total_amount),
                                    sp_text(text),
                                    sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &CHECKOUT_INSERT, p, BB_ARRAY_LEN(p), &r, e);
    free(text);
    if (rc == ERR_OK && store_next(&r)) {
        *out = checkout_json(&r, body, NULL);
        store_rows_close(&r);
        json_t *data = requested_data(body, id, req->total_amount);
        json_decref(body);
        body = data;
        struct outbox_event ev = {.type = "checkout.requested.v1",
                                  .aggregate_type = "checkout",
                                  .aggregate_id = id,
                                  .data = body,
                                  .for_consumer = true};
        rc = outbox_append(c, &ev, now_ms, e);
        *created = rc == ERR_OK;
        if (rc != ERR_OK) {
            json_decref(*out);
            *out = NULL;
        }
        json_decref(body);
        return rc;
    }
    if (rc == ERR_OK)
        store_rows_close(&r);
    json_decref(body);
    return rc == ERR_OK ? replay(c, req, out, e) : rc;
}

/* A batch of (id, key, fingerprint, customer_id, currency, total_amount,
 * body), then now; keys taken in order, so batches that share one wait in one
 * direction. */
static struct store_stmt CHECKOUT_INSERT_MANY = {
    .sql_pg = "INSERT INTO checkouts (id, idempotency_key, fingerprint, customer_id, currency,"
              " total_amount, body, status, created_at_ms, updated_at_ms)"
              " SELECT id, key, fingerprint, customer_id, currency, total_amount, body,"
              " 'PENDING', $8, $8 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
              " $5::text[], $6::bigint[], $7::text[]) AS x(id, key, fingerprint, customer_id,"
              " currency, total_amount, body) ORDER BY key"
              " ON CONFLICT (idempotency_key) DO NOTHING RETURNING " CHECKOUT_COLUMNS,
    .sql_sqlite = "INSERT INTO checkouts (id, idempotency_key, fingerprint, customer_id,"
                  " currency, total_amount, body, status, created_at_ms, updated_at_ms)"
                  " SELECT value ->> 'id', value ->> 'key', value ->> 'fingerprint',"
                  " value ->> 'customer_id', value ->> 'currency', value ->> 'total_amount',"
                  " value ->> 'body', 'PENDING', $2, $2 FROM json_each($1) WHERE true"
                  " ORDER BY value ->> 'key'"
                  " ON CONFLICT (idempotency_key) DO NOTHING RETURNING " CHECKOUT_COLUMNS,
};

enum err
checkout_accept_many(struct store_conn *c, struct checkout_skus *known,
                     const struct checkout_request *const *reqs, const char *const *traceparents,
                     size_t n, int64_t now_ms, json_t **outs, bool *created, enum err *rcs,
                     struct bb_error *errors, struct bb_error *e)
{
    for (size_t i = 0; i < n; i++) {
        outs[i] = NULL;
        created[i] = false;
        rcs[i] = ERR_OK;
    }
    enum err rc = skus_check(c, known, reqs, n, rcs, errors, e);
    if (rc != ERR_OK)
        return rc;
    char(*ids)[37] = xcalloc(n, sizeof *ids);
    json_t **bodies = xcalloc(n, sizeof *bodies);
    struct store_batch w;
    store_batch_init(&w, c, 7);
    for (size_t i = 0; i < n; i++) {
        if (rcs[i] != ERR_OK) /* refused: nothing of it is written */
            continue;
        bb_uuid7_at(now_ms, ids[i]);
        json_t *body = bodies[i] = request_json(reqs[i]);
        store_batch_row(&w);
        store_batch_text(&w, "id", ids[i]);
        store_batch_text(&w, "key", reqs[i]->idempotency_key);
        store_batch_text(&w, "fingerprint", reqs[i]->fingerprint);
        store_batch_text(&w, "customer_id", reqs[i]->customer_id);
        store_batch_text(&w, "currency", reqs[i]->currency);
        store_batch_int(&w, "total_amount", reqs[i]->total_amount);
        store_batch_json(&w, "body", body);
    }
    const struct store_param p[] = {sp_batch(&w), sp_int(now_ms)};
    struct store_rows r;
    rc = store_query(c, &CHECKOUT_INSERT_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&w);
    while (rc == ERR_OK && store_next(&r)) {
        for (size_t i = 0; i < n; i++) {
            if (rcs[i] == ERR_OK && strcmp(ids[i], store_col_text(&r, 0)) == 0) {
                outs[i] = checkout_json(&r, bodies[i], NULL);
                created[i] = true;
            }
        }
    }
    if (rc == ERR_OK)
        store_rows_close(&r);
    struct outbox_event *evs = xcalloc(n, sizeof *evs);
    size_t k = 0;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        if (rcs[i] != ERR_OK)
            continue;
        if (created[i])
            evs[k++] = (struct outbox_event){
                .type = "checkout.requested.v1",
                .aggregate_type = "checkout",
                .aggregate_id = ids[i],
                .data = requested_data(bodies[i], ids[i], reqs[i]->total_amount),
                .traceparent = traceparents[i],
                .for_consumer = true};
        else /* the key was taken, before or by an earlier request here */
            rcs[i] = replay(c, reqs[i], &outs[i], &errors[i]);
        if (rcs[i] == ERR_IDEMPOTENCY_MISMATCH)
            continue;
        if (rcs[i] != ERR_OK) {
            rc = rcs[i];
            *e = errors[i];
        }
    }
    if (rc == ERR_OK)
        rc = outbox_append_many(c, evs, k, now_ms, e);
    outbox_events_free(evs, k);
    for (size_t i = 0; i < n && rc != ERR_OK; i++) {
        json_decref(outs[i]);
        outs[i] = NULL;
    }
    for (size_t i = 0; i < n; i++)
        json_decref(bodies[i]);
    free(bodies);
    free(ids);
    return rc;
}

static struct store_stmt CHECKOUT_SET_ORDER = {
    .sql = "UPDATE checkouts SET order_id = $2, updated_at_ms = $3 WHERE id = $1",
};
enum err
checkout__set_order(struct store_conn *c, const char *checkout_id, const char *order_id,
                    int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(checkout_id), sp_text(order_id), sp_int(now_ms)};
    return store_exec_deferred(c, &CHECKOUT_SET_ORDER, p, BB_ARRAY_LEN(p), e);
}

static struct store_stmt CHECKOUT_SET_ORDERS = {
    .sql_pg = "UPDATE checkouts c SET order_id = x.order_id, updated_at_ms = $3"
              " FROM unnest($1::text[], $2::text[]) AS x(id, order_id) WHERE c.id = x.id",
    .sql_sqlite = "UPDATE checkouts SET order_id = x.order_id, updated_at_ms = $2"
                  " FROM (SELECT value ->> 'id' AS id, value ->> 'order_id' AS order_id"
                  " FROM json_each($1)) AS x WHERE checkouts.id = x.id",
};

enum err
checkout__set_orders(struct store_conn *c, const char *const *checkout_ids,
                     const char *const *order_ids, size_t n, int64_t now_ms, struct bb_error *e)
{
    struct store_batch w;
    store_batch_init(&w, c, 2);
    for (size_t i = 0; i < n; i++) {
        store_batch_row(&w);
        store_batch_text(&w, "id", checkout_ids[i]);
        store_batch_text(&w, "order_id", order_ids[i]);
    }
    const struct store_param p[] = {sp_batch(&w), sp_int(now_ms)};
    enum err rc = store_exec_deferred(c, &CHECKOUT_SET_ORDERS, p, BB_ARRAY_LEN(p), e);
    store_batch_deinit(&w);
    return rc;
}

/* checkout.status.changed.v1 of checkouts ids[i] that left PENDING for
 * statuses[i], one statement for all. */
static enum err
status_events_append(struct store_conn *c, const char *const *ids, const char *const *order_ids,
                     const enum checkout_status *statuses, const char *const *reasons,
                     const char *const *traceparents, size_t n, int64_t now_ms, struct bb_error *e)
{
    struct outbox_event *evs = xcalloc(n ? n : 1, sizeof *evs);
    for (size_t i = 0; i < n; i++) {
        BB_ASSERT(statuses[i] != CHECKOUT_PENDING);
        bool failed = statuses[i] == CHECKOUT_FAILED;
        json_t *data =
            json_pack("{s:s, s:s?, s:s, s:s, s:s?}", "checkout_id", ids[i], "order_id",
                      order_ids[i], "from", checkout_status_name(CHECKOUT_PENDING), "to",
                      checkout_status_name(statuses[i]), "reason", failed ? reasons[i] : NULL);
        if (data == NULL)
            bb_panic(__FILE__, __LINE__, "out of memory");
        evs[i] = (struct outbox_event){.type = "checkout.status.changed.v1",
                                       .aggregate_type = "checkout",
                                       .aggregate_id = ids[i],
                                       .data = data,
                                       .traceparent = traceparents[i]};
    }
    enum err rc = outbox_append_many(c, evs, n, now_ms, e);
    outbox_events_free(evs, n);
    return rc;
}

/* A batch of (id, status, reason), then now. */
static struct store_stmt CHECKOUT_FINISH_MANY = {
    .sql_pg = "UPDATE checkouts c SET status = x.status, reason = x.reason, updated_at_ms = $4"
              " FROM unnest($1::text[], $2::text[], $3::text[]) AS x(id, status, reason)"
              " WHERE c.id = x.id"
              " AND c.status = 'PENDING'",
    .sql_sqlite = "UPDATE checkouts SET status = x.status, reason = x.reason, updated_at_ms = $2"
                  " FROM (SELECT value ->> 'id' AS id, value ->> 'status' AS status,"
                  " value ->> 'reason' AS reason FROM json_each($1)) AS x"
                  " WHERE checkouts.id = x.id AND checkouts.status = 'PENDING'",
};

/* A failure's reason, as the row and the event say it. */
static const char *
reason_of(enum checkout_status status, const char *reason)
{
    if (status != CHECKOUT_FAILED)
        return NULL;
    return reason ? reason : "the checkout could not be completed";
}

enum err
checkout__finish(struct store_conn *c, const char *const *checkout_ids,
                 const char *const *order_ids, const enum checkout_status *statuses,
                 const char *const *reasons, const char *const *traceparents, size_t n,
                 int64_t now_ms, struct bb_error *e)
{
    const char **why = xcalloc(n ? n : 1, sizeof *why);
    struct store_batch w;
    store_batch_init(&w, c, 3);
    for (size_t i = 0; i < n; i++) {
        why[i] = reason_of(statuses[i], reasons[i]);
        store_batch_row(&w);
        store_batch_text(&w, "id", checkout_ids[i]);
        store_batch_text(&w, "status", checkout_status_name(statuses[i]));
        store_batch_text(&w, "reason", why[i]);
    }
    const struct store_param p[] = {sp_batch(&w), sp_int(now_ms)};
    enum err rc = store_exec_deferred(c, &CHECKOUT_FINISH_MANY, p, BB_ARRAY_LEN(p), e);
    store_batch_deinit(&w);
    if (rc == ERR_OK)
        rc = status_events_append(c, checkout_ids, order_ids, statuses, why, traceparents, n,
                                  now_ms, e);
    free(why);
    return rc;
}

/* Its order back, to name it in the event; no row when it was not PENDING. */
static struct store_stmt CHECKOUT_FAIL_PENDING = {
    .sql = "UPDATE checkouts SET status = 'FAILED', reason = $2, updated_at_ms = $3"
           " WHERE id = $1 AND status = 'PENDING' RETURNING order_id",
};

enum err
checkout__fail_pending(struct store_conn *c, const char *checkout_id, const char *reason,
                       const char *traceparent, int64_t now_ms, bool *failed, struct bb_error *e)
{
    *failed = false;
    enum checkout_status status = CHECKOUT_FAILED;
    const char *why = reason_of(status, reason);
    const struct store_param p[] = {sp_text(checkout_id), sp_text(why), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &CHECKOUT_FAIL_PENDING, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    *failed = store_next(&r);
    char *order_id = *failed && !store_col_is_null(&r, 0) ? xstrdup(store_col_text(&r, 0)) : NULL;
    store_rows_close(&r);
    if (*failed)
        rc = status_events_append(c, &checkout_id, (const char *const *)&order_id, &status, &why,
                                  &traceparent, 1, now_ms, e);
    free(order_id);
    return rc;
}
