/*
 * outbox.c: the outbox table, appends, ordered gapless reads, retention,
 * GET /outbox.
 */
#include "outbox/outbox.h"

#include "metrics/metrics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "outbox events",
        .sqlite = "CREATE TABLE outbox_events ("
                  " id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,"
                  " type TEXT NOT NULL, aggregate_type TEXT NOT NULL,"
                  " aggregate_id TEXT NOT NULL, data TEXT NOT NULL, traceparent TEXT,"
                  " created_at_ms INTEGER NOT NULL, published_at_ms INTEGER, claimed_by TEXT,"
                  " claim_expires_at_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0);"
                  "CREATE INDEX outbox_unpublished ON outbox_events (id)"
                  " WHERE published_at_ms IS NULL;"
                  "CREATE INDEX outbox_by_aggregate ON outbox_events (aggregate_id, id);",
        .pg = "CREATE TABLE outbox_events ("
              " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
              " event_id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, aggregate_type TEXT NOT NULL,"
              " aggregate_id TEXT NOT NULL, data TEXT NOT NULL, traceparent TEXT,"
              " created_at_ms BIGINT NOT NULL, published_at_ms BIGINT, claimed_by TEXT,"
              " claim_expires_at_ms BIGINT, attempts INTEGER NOT NULL DEFAULT 0,"
              " txid xid8 NOT NULL DEFAULT pg_current_xact_id());"
              "CREATE INDEX outbox_unpublished ON outbox_events (id)"
              " WHERE published_at_ms IS NULL;"
              "CREATE INDEX outbox_by_aggregate ON outbox_events (aggregate_id, id);",
    },
    {
        /* PostgreSQL: seq is given by the sequencer (outbox_list_json), in
         * commit order; SQLite commits one at a time, so seq is the id. */
        .version = 2,
        .name = "outbox seq",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE outbox_events ADD COLUMN seq BIGINT;"
              "UPDATE outbox_events SET seq = id;"
              "CREATE UNIQUE INDEX outbox_by_seq ON outbox_events (seq);"
              "CREATE INDEX outbox_unsequenced ON outbox_events (id) WHERE seq IS NULL;"
              "DROP INDEX outbox_by_aggregate;"
              "CREATE INDEX outbox_by_aggregate ON outbox_events (aggregate_id, seq);"
              "ALTER TABLE outbox_events DROP COLUMN txid;",
    },
    {
        /* Events for in-process consumers (the saga starter) wait with
         * handled_at_ms NULL; every other event is born handled. Checkouts
         * accepted before this version still get their sagas. */
        .version = 3,
        .name = "outbox consumers",
        .sqlite = "ALTER TABLE outbox_events ADD COLUMN handled_at_ms INTEGER;"
                  "UPDATE outbox_events SET handled_at_ms = created_at_ms"
                  " WHERE type <> 'checkout.requested.v1';"
                  "CREATE INDEX outbox_unhandled ON outbox_events (type, id)"
                  " WHERE handled_at_ms IS NULL;",
        .pg = "ALTER TABLE outbox_events ADD COLUMN handled_at_ms BIGINT;"
              "UPDATE outbox_events SET handled_at_ms = created_at_ms"
              " WHERE type <> 'checkout.requested.v1';"
              "CREATE INDEX outbox_unhandled ON outbox_events (type, id)"
              " WHERE handled_at_ms IS NULL;",
    },
    {
        /* Fewer index entries per event: nothing sets published_at_ms, and
         * on PostgreSQL the seq indexes wait for the sequencer (readers ask
         * for seq > n, which such an index answers). An event is written
         * into three indexes instead of six. */
        .version = 4,
        .name = "outbox indexes only where they are read",
        .sqlite = "DROP INDEX outbox_unpublished;",
        .pg = "DROP INDEX outbox_unpublished;"
              "DROP INDEX outbox_by_seq;"
              "CREATE UNIQUE INDEX outbox_by_seq ON outbox_events (seq) WHERE seq IS NOT NULL;"
              "DROP INDEX outbox_by_aggregate;"
              "CREATE INDEX outbox_by_aggregate ON outbox_events (aggregate_id, seq)"
              " WHERE seq IS NOT NULL;",
    },
    {
        /* No statement looks an event up by its event_id (a UUIDv7, unique
         * by construction; consumers dedupe on it): on PostgreSQL its
         * unique index was an entry per event, and per starter's mark, that
         * nothing read. SQLite keeps its inline constraint (dropping it
         * would rebuild the table). */
        .version = 5,
        .name = "outbox event_id not indexed",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_event_id_key;",
    },
};

const struct store_migration *
outbox_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

static struct store_stmt APPEND = {
    .sql = "INSERT INTO outbox_events (event_id, type, aggregate_type, aggregate_id, data,"
           " traceparent, created_at_ms, handled_at_ms)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 = 1 THEN NULL ELSE $7 END)",
};

enum err
outbox_append(struct store_conn *c, const struct outbox_event *ev, int64_t now_ms,
              struct bb_error *e)
{
    char id[37];
    bb_uuid7_at(now_ms, id);
    char *data = bb_json_dumps(ev->data);
    const char *tp = ev->traceparent ? ev->traceparent : bb_log_context_traceparent();
    const struct store_param p[] = {sp_text(id),
                                    sp_text(ev->type),
                                    sp_text(ev->aggregate_type),
                                    sp_text(ev->aggregate_id),
                                    sp_text(data),
                                    sp_text(tp),
                                    sp_int(now_ms),
                                    sp_int(ev->for_consumer ? 1 : 0)};
    enum err rc = store_exec_deferred(c, &APPEND, p, BB_ARRAY_LEN(p), e);
    free(data);
    return rc;
}

static struct store_stmt APPEND_MANY = {
    .sql_pg = "INSERT INTO outbox_events (event_id, type, aggregate_type, aggregate_id, data,"
              " traceparent, created_at_ms, handled_at_ms)"
              " SELECT event_id, type, aggregate_type, aggregate_id, data, traceparent, $8,"
              " CASE WHEN for_consumer THEN NULL ELSE $8 END"
              " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
              " $6::text[], $7::boolean[]) WITH ORDINALITY AS x(event_id, type, aggregate_type,"
              " aggregate_id, data, traceparent, for_consumer, n) ORDER BY n",
    .sql_sqlite = "INSERT INTO outbox_events (event_id, type, aggregate_type, aggregate_id, data,"
                  " traceparent, created_at_ms, handled_at_ms)"
                  " SELECT value ->> 'event_id', value ->> 'type', value ->> 'aggregate_type',"
                  " value ->> 'aggregate_id', value ->> 'data', value ->> 'traceparent', $2,"
                  " CASE WHEN value ->> 'for_consumer' THEN NULL ELSE $2 END"
                  " FROM json_each($1) ORDER BY key",
};

enum err
outbox_append_many(struct store_conn *c, const struct outbox_event *evs, size_t n, int64_t now_ms,
                   struct bb_error *e)
{
    if (n == 0)
        return ERR_OK;
    struct store_batch w;
    store_batch_init(&w, c, 7);
    for (size_t i = 0; i < n; i++) {
        char id[37];
        bb_uuid7_at(now_ms, id);
        const char *tp = evs[i].traceparent ? evs[i].traceparent : bb_log_context_traceparent();
        store_batch_row(&w);
        store_batch_text(&w, "event_id", id);
        store_batch_text(&w, "type", evs[i].type);
        store_batch_text(&w, "aggregate_type", evs[i].aggregate_type);
        store_batch_text(&w, "aggregate_id", evs[i].aggregate_id);
        store_batch_json(&w, "data", evs[i].data);
        store_batch_text(&w, "traceparent", tp);
        store_batch_bool(&w, "for_consumer", evs[i].for_consumer);
    }
    const struct store_param p[] = {sp_batch(&w), sp_int(now_ms)};
    enum err rc = store_exec_deferred(c, &APPEND_MANY, p, BB_ARRAY_LEN(p), e);
    store_batch_deinit(&w);
    return rc;
}

void
outbox_events_free(struct outbox_event *evs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref((json_t *)evs[i].data);
    free(evs);
}

/*
 * PostgreSQL: ids are taken when events are inserted, not when they commit,
 * so a reader paging by id could pass an id whose transaction commits later.
 * The sequencer gives seqs instead, in id order, to the committed events
 * that have none, one sequencer at a time (the advisory lock, held to the
 * commit): seqs become visible in the order they are given, and an event
 * committed before a read has its seq by the end of it. Ids are taken after
 * the aggregate's row is locked, so one aggregate's events keep the order
 * they happened in.
 */
enum { SEQUENCE_BATCH = 10000 };
static struct store_stmt SEQUENCER_LOCK = {.sql = "SELECT pg_advisory_xact_lock(6726411803893)"};
static struct store_stmt SEQUENCE = {
    .sql = "WITH batch AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM"
           " (SELECT id FROM outbox_events WHERE seq IS NULL ORDER BY id LIMIT $1) t),"
           " base AS (SELECT COALESCE(max(seq), 0) AS b FROM outbox_events)"
           " UPDATE outbox_events o SET seq = base.b + batch.n FROM batch, base"
           " WHERE o.id = batch.id",
};
#define OUTBOX_COLUMNS(seq) \
    seq ", event_id, type, aggregate_type, aggregate_id, data, traceparent, created_at_ms"
static struct store_stmt LIST = {
    .sql_sqlite = "SELECT " OUTBOX_COLUMNS("id") " FROM outbox_events WHERE id > $1"
                                                 " AND ($3 = '' OR type = $3) ORDER BY id LIMIT $2",
    .sql_pg = "SELECT " OUTBOX_COLUMNS("seq") " FROM outbox_events WHERE seq > $1"
                                              " AND ($3 = '' OR type = $3) ORDER BY seq LIMIT $2",
};
static struct store_stmt LIST_AGGREGATE = {
    .sql_sqlite = "SELECT " OUTBOX_COLUMNS(
        "id") " FROM outbox_events WHERE aggregate_id = $4"
              " AND id > $1 AND ($3 = '' OR type = $3) ORDER BY id LIMIT $2",
    .sql_pg = "SELECT " OUTBOX_COLUMNS(
        "seq") " FROM outbox_events WHERE aggregate_id = $4"
               " AND seq > $1 AND ($3 = '' OR type = $3) ORDER BY seq LIMIT $2",
};
/* PostgreSQL: committed events the sequencer left for its next round. */
static struct store_stmt HELD_BACK = {
    .sql = "SELECT count(*) FROM outbox_events WHERE seq IS NULL"
           " AND ($1 = '' OR type = $1) AND ($2 = '' OR aggregate_id = $2)",
};

static json_t *
event_json(struct store_rows *r)
{
    char at[32];
    bb_wall_ms_format(store_col_int(r, 7), at);
    json_t *data = json_loads(store_col_text(r, 5), JSON_DECODE_ANY, NULL);
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer(store_col_int(r, 0)));
    json_object_set_new(o, "event_id", json_string(store_col_text(r, 1)));
    json_object_set_new(o, "type", json_string(store_col_text(r, 2)));
    json_object_set_new(o, "aggregate_type", json_string(store_col_text(r, 3)));
    json_object_set_new(o, "aggregate_id", json_string(store_col_text(r, 4)));
    json_object_set_new(o, "occurred_at", json_string(at));
    json_object_set_new(o, "traceparent",
                        store_col_is_null(r, 6) ? json_null() : json_string(store_col_text(r, 6)));
    json_object_set_new(o, "data", data ? data : json_null());
    return o;
}

enum err
outbox_list_json(struct store_conn *c, const struct outbox_filter *f, json_t **out,
                 struct bb_error *e)
{
    bool pg = store_conn_engine(c) == STORE_POSTGRES;
    const struct store_param p[] = {sp_int(f->after), sp_int(f->limit),
                                    sp_text(f->type ? f->type : ""),
                                    sp_text(f->aggregate_id ? f->aggregate_id : "")};
    const struct store_param batch[] = {sp_int(SEQUENCE_BATCH)};
    enum err rc = ERR_OK;
    if (pg) {
        rc = store_exec(c, &SEQUENCER_LOCK, NULL, 0, NULL, e);
        if (rc == ERR_OK)
            rc = store_exec(c, &SEQUENCE, batch, 1, NULL, e);
        if (rc != ERR_OK)
            return rc;
    }
    struct store_rows r;
    rc = store_query(c, f->aggregate_id ? &LIST_AGGREGATE : &LIST, p, f->aggregate_id ? 4 : 3, &r,
                     e);
    if (rc != ERR_OK)
        return rc;
    json_t *events = json_array();
    int64_t last = 0;
    while (store_next(&r)) {
        last = store_col_int(&r, 0);
        json_array_append_new(events, event_json(&r));
    }
    store_rows_close(&r);
    bool full = (int64_t)json_array_size(events) == f->limit;
    int64_t held_back = 0;
    if (!full && pg) {
        rc = store_query(c, &HELD_BACK, p + 2, 2, &r, e);
        if (rc != ERR_OK) {
            json_decref(events);
            return rc;
        }
        if (store_next(&r))
            held_back = store_col_int(&r, 0);
        store_rows_close(&r);
    }
    json_t *body = json_object();
    json_object_set_new(body, "events", events);
    json_object_set_new(body, "next_after", full ? json_integer(last) : json_null());
    json_object_set_new(body, "held_back", json_integer(held_back));
    *out = body;
    return ERR_OK;
}

/* ---- in-process consumers ------------------------------------------------------------------ */

static struct store_stmt CLAIM = {
    .sql_sqlite = "SELECT id, aggregate_id, data, traceparent FROM outbox_events"
                  " WHERE type = $1 AND handled_at_ms IS NULL AND id > $3 ORDER BY id LIMIT $2",
    .sql_pg = "SELECT id, aggregate_id, data, traceparent FROM outbox_events"
              " WHERE type = $1 AND handled_at_ms IS NULL AND id > $3 ORDER BY id LIMIT $2"
              " FOR UPDATE SKIP LOCKED",
};
static struct store_stmt MARK_HANDLED = {
    .sql_pg = "UPDATE outbox_events SET handled_at_ms = $2"
              " WHERE id = ANY($1::bigint[])",
    .sql_sqlite = "UPDATE outbox_events SET handled_at_ms = $2"
                  " WHERE id IN (SELECT value FROM json_each($1))",
};

enum err
outbox_claim(struct store_conn *c, const char *type, int64_t after_id, int64_t limit,
             struct outbox_claimed **out, size_t *n, struct bb_error *e)
{
    *out = NULL;
    *n = 0;
    const struct store_param p[] = {sp_text(type), sp_int(limit), sp_int(after_id)};
    struct store_rows r;
    enum err rc = store_query(c, &CLAIM, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    size_t rows = r.nrows > 0 ? (size_t)r.nrows : 0;
    struct outbox_claimed *a = rows > 0 ? xcalloc(rows, sizeof *a) : NULL;
    size_t k = 0;
    while (k < rows && store_next(&r)) {
        a[k].id = store_col_int(&r, 0);
        a[k].aggregate_id = xstrdup(store_col_text(&r, 1));
        a[k].data = json_loads(store_col_text(&r, 2), JSON_DECODE_ANY, NULL);
        a[k].traceparent = store_col_is_null(&r, 3) ? NULL : xstrdup(store_col_text(&r, 3));
        k++;
    }
    store_rows_close(&r);
    *out = a;
    *n = k;
    return ERR_OK;
}

enum err
outbox_mark_handled(struct store_conn *c, const int64_t *ids, size_t n, int64_t now_ms,
                    struct bb_error *e)
{
    if (n == 0)
        return ERR_OK;
    struct store_batch a;
    store_batch_ints(&a, c, ids, n);
    const struct store_param p[] = {sp_batch(&a), sp_int(now_ms)};
    enum err rc = store_exec_deferred(c, &MARK_HANDLED, p, BB_ARRAY_LEN(p), e);
    store_batch_deinit(&a);
    return rc;
}

void
outbox_claimed_free(struct outbox_claimed *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].aggregate_id);
        free(a[i].traceparent);
        json_decref(a[i].data);
    }
    free(a);
}

/* ---- retention ---------------------------------------------------------------------------- */

static struct store_stmt PRUNE_WINDOW = {
    .sql = "SELECT max(id), max(created_at_ms) FROM"
           " (SELECT id, created_at_ms FROM outbox_events WHERE id > $1 ORDER BY id LIMIT $2) w",
};
static struct store_stmt PRUNE = {
    .sql_sqlite = "DELETE FROM outbox_events WHERE id > $1 AND id <= $2"
                  " AND handled_at_ms IS NOT NULL AND created_at_ms < $3",
    .sql_pg = "DELETE FROM outbox_events WHERE id > $1 AND id <= $2"
              " AND handled_at_ms IS NOT NULL AND created_at_ms < $3"
              " AND (seq IS NULL OR seq < (SELECT max(seq) FROM outbox_events))",
};

enum err
outbox_prune(struct store_conn *c, int64_t before_ms, int64_t limit, int64_t *cursor,
             int64_t *deleted, struct bb_error *e)
{
    *deleted = 0;
    struct store_rows r;
    const struct store_param w[] = {sp_int(*cursor), sp_int(limit)};
    enum err rc = store_query(c, &PRUNE_WINDOW, w, BB_ARRAY_LEN(w), &r, e);
    if (rc != ERR_OK)
        return rc;
    bool any = store_next(&r) && !store_col_is_null(&r, 0);
    int64_t end = any ? store_col_int(&r, 0) : 0;
    bool young = any && store_col_int(&r, 1) >= before_ms;
    store_rows_close(&r);
    if (!any) {
        *cursor = 0;
        return ERR_OK;
    }
    const struct store_param p[] = {sp_int(*cursor), sp_int(end), sp_int(before_ms)};
    rc = store_exec(c, &PRUNE, p, BB_ARRAY_LEN(p), deleted, e);
    if (rc == ERR_OK)
        *cursor = young ? 0 : end;
    return rc;
}

/* ---- the service: GET /outbox and the pruner ------------------------------------------------ */

enum { PRUNE_LIMIT = 1000, PRUNE_EVERY_MS = 60000 };

static struct metrics_def M_PRUNED = {
    .name = "backbone_outbox_events_pruned_total",
    .help = "Outbox events deleted after the retention period (--outbox-retention).",
    .type = METRICS_COUNTER,
};

struct outbox_service {
    struct store *store;
    struct outbox_options opt;
    struct bb_ticker *pruner; /* NULL: events kept forever */
};

struct prune_op {
    int64_t before_ms;
    int64_t cursor;
    int64_t deleted;
};

static enum err
prune_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct prune_op *op = arg;
    return outbox_prune(c, op->before_ms, PRUNE_LIMIT, &op->cursor, &op->deleted, e);
}

/* One pass from the oldest event to the first young window, a window per
 * transaction. */
static void
prune(void *arg)
{
    struct outbox_service *svc = arg;
    struct prune_op op = {.before_ms = bb_wall_ms() - svc->opt.retention_ms};
    int64_t total = 0;
    do {
        struct bb_error e;
        if (store_run(svc->store, STORE_WRITE, prune_work, &op, &e) != ERR_OK) {
            log_error_limited(1, "outbox.prune_failed", "detail=%s", e.detail);
            break;
        }
        total += op.deleted;
    } while (op.cursor != 0 && !bb_ticker_stopping(svc->pruner));
    if (total > 0) {
        metrics_add(&M_PRUNED, (double)total);
        log_info("outbox.pruned", "events=%lld", (long long)total);
    }
}

struct list_op {
    struct outbox_filter filter;
    json_t *out;
};

static enum err
list_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct list_op *op = arg;
    json_decref(op->out); /* a retried unit starts over */
    op->out = NULL;
    return outbox_list_json(c, &op->filter, &op->out, e);
}

static void
list_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct list_op *op = arg;
    json_t *out = op->out;
    op->out = NULL;
    if (rc != ERR_OK) {
        json_decref(out); /* read, but its commit failed */
        http_reply_problem(r, e, NULL);
    } else {
        http_reply_json(r, 200, out);
    }
}

/* Event types and aggregate ids as query arguments: printable UTF-8
 * (PostgreSQL refuses other bytes in a text parameter), bounded. */
static enum err
query_text(struct http_req *r, const char *key, const char **out, struct bb_error *e)
{
    const char *v = http_req_query(r, key);
    if (v == NULL)
        return ERR_OK;
    size_t n = strlen(v);
    bool ok = n > 0 && n <= 200;
    for (size_t i = 0; i < n && ok; i++)
        ok = (unsigned char)v[i] >= 0x20 && v[i] != 0x7f;
    /* Valid UTF-8 is copied unchanged; in anything else a byte becomes '?'. */
    char copy[201];
    if (ok && (bb_utf8_copy(copy, sizeof copy, v) != n || memcmp(copy, v, n) != 0))
        ok = false;
    if (!ok)
        return bb_fail(e, ERR_INVALID, key, "%s must be 1 to 200 printable UTF-8 characters", key);
    *out = bb_arena_strdup(http_req_arena(r), v);
    return ERR_OK;
}

static void
handle_list(struct http_req *r, void *ctx)
{
    struct outbox_service *svc = ctx;
    struct bb_error *e = http_req_error(r);
    struct list_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->filter.limit = OUTBOX_LIST_DEFAULT;
    if (http_req_query_int(r, "after", 0, INT64_MAX, &op->filter.after, e) != ERR_OK ||
        http_req_query_int(r, "limit", 1, OUTBOX_LIST_MAX, &op->filter.limit, e) != ERR_OK ||
        query_text(r, "type", &op->filter.type, e) != ERR_OK ||
        query_text(r, "aggregate_id", &op->filter.aggregate_id, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    /* PostgreSQL: the sequencer writes. */
    enum store_txn mode = store_engine_of(svc->store) == STORE_POSTGRES ? STORE_WRITE : STORE_READ;
    http_req_run(r, svc->store, mode, list_work, list_reply, op);
}

enum err
outbox_service_create(struct store *s, const struct outbox_options *o, struct outbox_service **out,
                      struct bb_error *e)
{
    metrics_register(&M_PRUNED);
    struct outbox_service *svc = xcalloc(1, sizeof *svc);
    svc->store = s;
    svc->opt = *o;
    /* It looks once a minute, or once a retention if that is shorter. */
    int64_t every = o->retention_ms < PRUNE_EVERY_MS ? o->retention_ms : PRUNE_EVERY_MS;
    if (o->retention_ms > 0 &&
        bb_ticker_start("bb-outbox-prune", every, prune, svc, &svc->pruner, e) != ERR_OK) {
        free(svc);
        return e->code;
    }
    *out = svc;
    return ERR_OK;
}

/* The query parameters each route takes (NULL: none; the server refuses
 * any other, see struct http_route). */
static const char *const LIST_QUERY[] = {"after", "limit", "type", "aggregate_id",
                                         NULL}; /* GET /outbox */

size_t
outbox_service_routes(struct outbox_service *svc, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"GET", "/outbox", handle_list, svc, false, LIST_QUERY},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}

void
outbox_service_destroy(struct outbox_service *svc)
{
    if (svc == NULL)
        return;
    bb_ticker_stop(svc->pruner);
    free(svc);
}
