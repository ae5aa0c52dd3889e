/*
 * saga_store.c: the sagas table, starting an instance, transitions (each
 * one transaction: compare-and-set on the version, the timeline's new
 * entries, the next job), reading and the stuck retry.
 *
 * A saga's timeline is a column of its row: one JSON object per line per
 * step or compensation run, appended by the update that records it.
 */
#include "saga/saga_int.h"

#include "outbox/outbox.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "sagas and their timelines",
        .sqlite = "CREATE TABLE sagas ("
                  " id TEXT PRIMARY KEY, type TEXT NOT NULL, correlation_id TEXT NOT NULL,"
                  " state TEXT NOT NULL, step INTEGER NOT NULL, version INTEGER NOT NULL,"
                  " data TEXT NOT NULL, retries INTEGER NOT NULL DEFAULT 0,"
                  " next_retry_at_ms INTEGER, reason TEXT, error TEXT, job_id INTEGER,"
                  " created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL,"
                  " UNIQUE (type, correlation_id)) WITHOUT ROWID;"
                  "CREATE INDEX sagas_by_state ON sagas (state, id);"
                  "CREATE TABLE saga_steps ("
                  " id INTEGER PRIMARY KEY AUTOINCREMENT, saga_id TEXT NOT NULL,"
                  " step TEXT NOT NULL, phase TEXT NOT NULL, outcome TEXT NOT NULL,"
                  " attempt INTEGER NOT NULL, error TEXT, started_at_ms INTEGER NOT NULL,"
                  " ended_at_ms INTEGER NOT NULL);"
                  "CREATE INDEX saga_steps_by_saga ON saga_steps (saga_id, id);",
        .pg = "CREATE TABLE sagas ("
              " id TEXT PRIMARY KEY, type TEXT NOT NULL, correlation_id TEXT NOT NULL,"
              " state TEXT NOT NULL, step INTEGER NOT NULL, version BIGINT NOT NULL,"
              " data TEXT NOT NULL, retries INTEGER NOT NULL DEFAULT 0,"
              " next_retry_at_ms BIGINT, reason TEXT, error TEXT, job_id BIGINT,"
              " created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL,"
              " UNIQUE (type, correlation_id));"
              "CREATE INDEX sagas_by_state ON sagas (state, id);"
              "CREATE TABLE saga_steps ("
              " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, saga_id TEXT NOT NULL,"
              " step TEXT NOT NULL, phase TEXT NOT NULL, outcome TEXT NOT NULL,"
              " attempt INTEGER NOT NULL, error TEXT, started_at_ms BIGINT NOT NULL,"
              " ended_at_ms BIGINT NOT NULL);"
              "CREATE INDEX saga_steps_by_saga ON saga_steps (saga_id, id);",
    },
    {
        /* A saga's row changes three or four times within a second of its
         * insert; with room left on its page, PostgreSQL updates it in place
         * (HOT: no new entry in any of its three indexes) instead of moving
         * it. SQLite updates rows in place anyway. */
        .version = 2,
        .name = "sagas leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE sagas SET (fillfactor = 60);",
    },
    {
        /* PostgreSQL: a timeline row goes into one index, its saga's, which
         * the timeline is read by (SQLite keys the table by its id). */
        .version = 3,
        .name = "saga timelines keyed by their saga",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_pkey;"
              "ALTER TABLE saga_steps ADD PRIMARY KEY (saga_id, id);"
              "DROP INDEX saga_steps_by_saga;",
    },
    {
        /* The timeline moves into the saga's row, appended by the update
         * each unit makes anyway: six rows, their index entries and a
         * statement per unit fewer per checkout. A line per entry, in the
         * order they were written. */
        .version = 4,
        .name = "saga timelines in their saga's row",
        .sqlite = "ALTER TABLE sagas ADD COLUMN timeline TEXT NOT NULL DEFAULT '';"
                  "UPDATE sagas SET timeline = (SELECT t FROM (SELECT id,"
                  " group_concat(line, '') OVER (ORDER BY id) AS t FROM (SELECT id,"
                  " json_object('step', step, 'phase', phase, 'outcome', outcome,"
                  " 'attempt', attempt, 'error', error, 'started_at_ms', started_at_ms,"
                  " 'ended_at_ms', ended_at_ms) || char(10) AS line FROM saga_steps"
                  " WHERE saga_id = sagas.id)) ORDER BY id DESC LIMIT 1)"
                  " WHERE id IN (SELECT saga_id FROM saga_steps);"
                  "DROP TABLE saga_steps;",
        .pg = "ALTER TABLE sagas ADD COLUMN timeline TEXT NOT NULL DEFAULT '';"
              "UPDATE sagas s SET timeline = t.lines FROM (SELECT saga_id,"
              " string_agg(json_build_object('step', step, 'phase', phase, 'outcome', outcome,"
              " 'attempt', attempt, 'error', error, 'started_at_ms', started_at_ms,"
              " 'ended_at_ms', ended_at_ms)::text || E'\\n', '' ORDER BY id) AS lines"
              " FROM saga_steps GROUP BY saga_id) t WHERE s.id = t.saga_id;"
              "DROP TABLE saga_steps;",
    },
    {
        /* The timeline makes a row longer at each of its updates: more room. */
        .version = 5,
        .name = "sagas leave more room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE sagas SET (fillfactor = 50);",
    },
    {
        /* The sweep for stranded sagas reads the in-flight ones in id order.
         * Through (state, id), PostgreSQL took a bitmap scan, which reads
         * every entry a saga ever had while RUNNING (dead ones too, until a
         * vacuum) and every heap page they point to: 66,000 entries and
         * 10,000 pages, 30 to 80 ms, every poll period, after a minute of
         * checkouts. An index of the in-flight ones alone is read in order,
         * and that scan marks the dead entries it meets so the next skips
         * them. SQLite leaves no dead entries behind. */
        .version = 6,
        .name = "in-flight sagas by id",
        .sqlite = "SELECT 1;",
        .pg = "CREATE INDEX sagas_in_flight ON sagas (id)"
              " WHERE state IN ('RUNNING', 'COMPENSATING');",
    },
    {
        /* The trace it started on (its starting event's), which a retry by
         * hand carries on, as its steps' jobs do. */
        .version = 7,
        .name = "sagas keep their trace",
        .sqlite = "ALTER TABLE sagas ADD COLUMN traceparent TEXT;",
        .pg = "ALTER TABLE sagas ADD COLUMN traceparent TEXT;",
    },
};

const struct store_migration *
saga_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

static const char *const STATE_NAMES[] = {
    [SAGA_RUNNING] = "RUNNING",     [SAGA_COMPENSATING] = "COMPENSATING",
    [SAGA_COMPLETED] = "COMPLETED", [SAGA_FAILED] = "FAILED",
    [SAGA_STUCK] = "STUCK",
};

const char *
saga_state_name(enum saga_state s)
{
    return (size_t)s < BB_ARRAY_LEN(STATE_NAMES) ? STATE_NAMES[s] : "UNKNOWN";
}

bool
saga_state_from_name(const char *name, enum saga_state *out)
{
    for (size_t i = 0; i < BB_ARRAY_LEN(STATE_NAMES); i++) {
        if (strcmp(name, STATE_NAMES[i]) == 0) {
            *out = (enum saga_state)i;
            return true;
        }
    }
    return false;
}

/* ---- a step's job ------------------------------------------------------------------------ */

/* A step's job: `payload` names the instance and the version it runs.
 * Its own attempts are crashes and database errors, not the step's
 * failures (those are the saga's retries): they retry on the queue's
 * backoff capped at a minute, so a saga whose job keeps failing is dead,
 * and so STUCK for a person to see, within about 20 minutes rather than
 * the queue's hours. */
static struct job_spec
step_spec(const char *payload, int64_t run_at_ms)
{
    return (struct job_spec){.queue = SAGA_QUEUE,
                             .handler = SAGA_HANDLER,
                             .payload = payload,
                             .run_at_ms = run_at_ms,
                             .max_attempts = SAGA_JOB_ATTEMPTS,
                             .backoff_cap_ms = 60000,
                             .max_duration_ms = SAGA_STEP_LEASE_MS};
}

static enum err
enqueue_step(struct store_conn *c, const char *id, int64_t version, int64_t run_at_ms,
             int64_t now_ms, const char *traceparent, int64_t *job_id, struct bb_error *e)
{
    char payload[128];
    snprintf(payload, sizeof payload, "{\"saga_id\":\"%s\",\"version\":%" PRId64 "}", id, version);
    struct job_spec spec = step_spec(payload, run_at_ms);
    spec.traceparent = traceparent;
    bool created;
    return job_submit(c, &spec, now_ms, job_id, &created, e);
}

/* ---- starting ---------------------------------------------------------------------------- */

static struct store_stmt SAGA_INSERT_MANY = {
    .sql_pg = "INSERT INTO sagas (id, type, correlation_id, state, step, version, data,"
              " traceparent, created_at_ms, updated_at_ms) SELECT id, $5, correlation_id,"
              " 'RUNNING', 0, 1, data, traceparent, $6, $6"
              " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
              " AS x(id, correlation_id, data, traceparent)"
              " ON CONFLICT (type, correlation_id) DO NOTHING RETURNING id",
    .sql_sqlite = "INSERT INTO sagas (id, type, correlation_id, state, step, version, data,"
                  " traceparent, created_at_ms, updated_at_ms) SELECT value ->> 'id', $2,"
                  " value ->> 'correlation_id', 'RUNNING', 0, 1, value ->> 'data',"
                  " value ->> 'traceparent', $3, $3 FROM json_each($1) WHERE true"
                  " ON CONFLICT (type, correlation_id) DO NOTHING RETURNING id",
};
static struct store_stmt SAGA_TRACE = {
    .sql = "SELECT traceparent FROM sagas WHERE id = $1",
};
static struct store_stmt SAGA_BY_CORRELATION = {
    .sql = "SELECT id FROM sagas WHERE type = $1 AND correlation_id = $2",
};
/* A batch update by key joins its rows to the table: PostgreSQL takes
 * `unnest` for ten rows and looks each up in the index (so do the other
 * batch updates by key). */
static struct store_stmt SAGA_SET_JOBS = {
    .sql_pg = "UPDATE sagas s SET job_id = x.job_id"
              " FROM unnest($1::text[], $2::bigint[]) AS x(id, job_id) WHERE s.id = x.id",
    .sql_sqlite = "UPDATE sagas SET job_id = x.job_id"
                  " FROM (SELECT value ->> 'id' AS id, value ->> 'job_id' AS job_id"
                  " FROM json_each($1)) AS x WHERE sagas.id = x.id",
};

/* Insert the instances (traceparents: NULL, or an entry may be);
 * created[i] says which were new. */
static enum err
insert_instances(struct store_conn *c, const struct saga_def *def,
                 const char *const *correlation_ids, const json_t *const *data,
                 const char *const *traceparents, size_t n, int64_t now_ms,
                 char (*ids)[SAGA_ID_LEN + 1], bool *created, struct bb_error *e)
{
    struct store_batch w;
    store_batch_init(&w, c, 4);
    for (size_t i = 0; i < n; i++) {
        bb_uuid7_at(now_ms, ids[i]);
        created[i] = false;
        store_batch_row(&w);
        store_batch_text(&w, "id", ids[i]);
        store_batch_text(&w, "correlation_id", correlation_ids[i]);
        store_batch_json(&w, "data", data[i]);
        store_batch_text(&w, "traceparent", traceparents ? traceparents[i] : NULL);
    }
    const struct store_param p[] = {sp_batch(&w), sp_text(def->type), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_INSERT_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&w);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        const char *id = store_col_text(&r, 0);
        for (size_t i = 0; i < n; i++)
            created[i] = created[i] || strcmp(ids[i], id) == 0;
    }
    store_rows_close(&r);
    /* The rest existed: their ids. */
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        if (created[i])
            continue;
        const struct store_param q[] = {sp_text(def->type), sp_text(correlation_ids[i])};
        rc = store_query(c, &SAGA_BY_CORRELATION, q, BB_ARRAY_LEN(q), &r, e);
        if (rc != ERR_OK)
            break;
        if (store_next(&r))
            bb_strlcpy(ids[i], store_col_text(&r, 0), SAGA_ID_LEN + 1);
        store_rows_close(&r);
    }
    return rc;
}

enum err
saga_start_many(struct store_conn *c, const struct saga_def *def,
                const char *const *correlation_ids, const json_t *const *data, size_t n,
                int64_t now_ms, char (*ids)[SAGA_ID_LEN + 1], bool *created, struct bb_error *e)
{
    int64_t *job_ids = xcalloc(n ? n : 1, sizeof *job_ids);
    enum err rc = saga__start_many(c, def, correlation_ids, data, NULL, n, now_ms, NULL, ids,
                                   created, job_ids, e);
    free(job_ids);
    return rc;
}

enum err
saga__start_many(struct store_conn *c, const struct saga_def *def,
                 const char *const *correlation_ids, const json_t *const *data,
                 const char *const *traceparents, size_t n, int64_t now_ms, struct job_pool *pool,
                 char (*ids)[SAGA_ID_LEN + 1], bool *created, int64_t *first_jobs,
                 struct bb_error *e)
{
    memset(first_jobs, 0, n * sizeof *first_jobs);
    enum err rc =
        insert_instances(c, def, correlation_ids, data, traceparents, n, now_ms, ids, created, e);
    if (rc != ERR_OK)
        return rc;
    /* Each new one's first job, then its job id on its row. */
    struct job_spec *specs = xcalloc(n ? n : 1, sizeof *specs);
    char(*payloads)[128] = xcalloc(n ? n : 1, sizeof *payloads);
    size_t *of = xcalloc(n ? n : 1, sizeof *of), k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!created[i])
            continue;
        snprintf(payloads[k], sizeof payloads[k], "{\"saga_id\":\"%s\",\"version\":1}", ids[i]);
        specs[k] = step_spec(payloads[k], 0);
        specs[k].traceparent = traceparents ? traceparents[i] : NULL;
        of[k++] = i;
    }
    int64_t *job_ids = xcalloc(k ? k : 1, sizeof *job_ids);
    bool *made = xcalloc(k ? k : 1, sizeof *made);
    size_t failed_at;
    if (k > 0)
        rc = job_submit_many_here(c, pool, specs, k, now_ms, job_ids, made, &failed_at, e);
    if (rc == ERR_OK && k > 0) {
        struct store_batch w;
        store_batch_init(&w, c, 2);
        for (size_t q = 0; q < k; q++) {
            first_jobs[of[q]] = job_ids[q];
            store_batch_row(&w);
            store_batch_text(&w, "id", ids[of[q]]);
            store_batch_int(&w, "job_id", job_ids[q]);
        }
        const struct store_param p[] = {sp_batch(&w)};
        rc = store_exec_deferred(c, &SAGA_SET_JOBS, p, 1, e);
        store_batch_deinit(&w);
    }
    if (rc == ERR_OK)
        saga__count_started(c, def->type, k);
    free(made);
    free(job_ids);
    free(of);
    free(payloads);
    free(specs);
    return rc;
}

enum err
saga_start(struct store_conn *c, const struct saga_def *def, const char *correlation_id,
           const json_t *data, int64_t now_ms, char id[SAGA_ID_LEN + 1], bool *created,
           struct bb_error *e)
{
    char ids[1][SAGA_ID_LEN + 1];
    enum err rc = saga_start_many(c, def, &correlation_id, &data, 1, now_ms, ids, created, e);
    bb_strlcpy(id, ids[0], SAGA_ID_LEN + 1);
    return rc;
}

/* ---- reading an instance ----------------------------------------------------------------- */

#define SAGA_COLUMNS                                                                   \
    "id, type, correlation_id, state, step, version, data, retries, next_retry_at_ms," \
    " reason, error, job_id, created_at_ms, updated_at_ms"
static struct store_stmt SAGA_GET = {
    .sql = "SELECT " SAGA_COLUMNS " FROM sagas WHERE id = $1",
};

static struct store_stmt SAGA_GET_MANY = {
    .sql_pg = "SELECT " SAGA_COLUMNS " FROM sagas"
              " WHERE id = ANY($1::text[])",
    .sql_sqlite =
        "SELECT " SAGA_COLUMNS " FROM sagas WHERE id IN (SELECT value FROM json_each($1))",
};

static void
instance_from_row(struct store_rows *r, struct saga_instance *out)
{
    memset(out, 0, sizeof *out);
    bb_strlcpy(out->id, store_col_text(r, 0), sizeof out->id);
    bb_strlcpy(out->type, store_col_text(r, 1), sizeof out->type);
    bb_strlcpy(out->correlation_id, store_col_text(r, 2), sizeof out->correlation_id);
    if (!saga_state_from_name(store_col_text(r, 3), &out->state))
        out->state = SAGA_STUCK;
    out->step = (int)store_col_int(r, 4);
    out->version = store_col_int(r, 5);
    out->data = json_loads(store_col_text(r, 6), 0, NULL);
    if (out->data == NULL)
        out->data = json_object();
    out->retries = store_col_int(r, 7);
    if (!store_col_is_null(r, 9))
        bb_strlcpy(out->reason, store_col_text(r, 9), sizeof out->reason);
    out->job_id = store_col_is_null(r, 11) ? 0 : store_col_int(r, 11);
}

enum err
saga__load(struct store_conn *c, const char *id, struct saga_instance *out, bool *found,
           struct bb_error *e)
{
    const struct store_param p[] = {sp_text(id)};
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    *found = store_next(&r);
    if (*found)
        instance_from_row(&r, out);
    store_rows_close(&r);
    return ERR_OK;
}

enum err
saga__load_many(struct store_conn *c, const char *const *ids, size_t n,
                struct saga_instance *const *out, bool *found, struct bb_error *e)
{
    for (size_t i = 0; i < n; i++)
        found[i] = false;
    struct store_batch b;
    store_batch_texts(&b, c, ids, n);
    const struct store_param p[] = {sp_batch(&b)};
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_GET_MANY, p, 1, &r, e);
    store_batch_deinit(&b);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        for (size_t i = 0; i < n; i++) {
            if (!found[i] && strcmp(ids[i], store_col_text(&r, 0)) == 0) {
                instance_from_row(&r, out[i]);
                found[i] = true;
            }
        }
    }
    store_rows_close(&r);
    return ERR_OK;
}

void
saga__instance_deinit(struct saga_instance *in)
{
    json_decref(in->data);
    in->data = NULL;
}

/* ---- transitions ------------------------------------------------------------------------- */

static struct store_stmt SAGA_UPDATE = {
    .sql = "UPDATE sagas SET state = $3, step = $4, version = $5, data = $6, retries = $7,"
           " next_retry_at_ms = $8, reason = $9, error = $10, job_id = $11, updated_at_ms = $12,"
           " timeline = timeline || $13 WHERE id = $1 AND version = $2",
};

/* One timeline entry, a line, as the timeline column holds them. */
static void
timeline_line(struct bb_buf *b, const struct saga_unit_row *r)
{
    bb_buf_puts(b, "{\"step\":");
    bb_buf_json_string(b, r->step);
    bb_buf_puts(b, ",\"phase\":");
    bb_buf_json_string(b, r->phase);
    bb_buf_puts(b, ",\"outcome\":");
    bb_buf_json_string(b, r->outcome);
    bb_buf_printf(b, ",\"attempt\":%" PRId64, r->attempt);
    if (r->error) {
        char error[512]; /* a bb_error's detail */
        bb_utf8_copy(error, sizeof error, r->error);
        bb_buf_puts(b, ",\"error\":");
        bb_buf_json_string(b, error);
    }
    bb_buf_printf(b, ",\"started_at_ms\":%" PRId64 ",\"ended_at_ms\":%" PRId64 "}\n", r->started_ms,
                  r->ended_ms);
}

/* The unit's timeline entries. */
static void
unit_lines(const struct saga_unit *u, struct bb_buf *b)
{
    for (size_t i = 0; i < u->n_rows; i++)
        timeline_line(b, &u->rows[i]);
}

/* The timeline entry of what happened to a saga between its steps (it was
 * found stranded, a person retried it): `outcome` at `step` of `type`. */
static void
event_line(struct bb_buf *b, const char *type, int step, enum saga_state state, const char *outcome,
           int64_t attempt, const char *error, int64_t now_ms)
{
    const struct saga_def *def = saga__def_find(type);
    struct saga_unit_row r = {
        .step = def && step >= 0 && (size_t)step < def->n_steps ? def->steps[step].name : "",
        .phase = state == SAGA_COMPENSATING ? "compensation" : "action",
        .outcome = outcome,
        .attempt = attempt,
        .error = (char *)error,
        .started_ms = now_ms,
        .ended_ms = now_ms,
    };
    timeline_line(b, &r);
}

void
saga__unit_begin(struct saga_unit *u, const struct saga_instance *in)
{
    saga__unit_deinit(u);
    u->from_version = in->version;
}

void
saga__unit_deinit(struct saga_unit *u)
{
    for (size_t i = 0; i < u->n_rows; i++)
        free(u->rows[i].error);
    free(u->end_reason);
    free(u->end_traceparent);
    *u = (struct saga_unit){0};
}

/* The ends the units recorded, through their definition's on_end: one call
 * for the units of one definition. */
static enum err
ends_flush(struct store_conn *c, struct saga_unit *const *units,
           const struct saga_instance *const *now, size_t n, struct bb_error *e)
{
    const char **ids = xcalloc(n, sizeof *ids), **reasons = xcalloc(n, sizeof *reasons);
    const char **traces = xcalloc(n, sizeof *traces);
    enum saga_state *ends = xcalloc(n, sizeof *ends);
    const json_t **data = xcalloc(n, sizeof *data);
    bool *done = xcalloc(n, sizeof *done);
    enum err rc = ERR_OK;
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        const struct saga_def *def = units[i]->ended_def;
        if (def == NULL || done[i])
            continue;
        size_t k = 0;
        for (size_t x = i; x < n; x++) {
            if (units[x]->ended_def != def)
                continue;
            ids[k] = now[x]->id;
            ends[k] = now[x]->state;
            data[k] = now[x]->data;
            reasons[k] = units[x]->end_reason;
            traces[k++] = units[x]->end_traceparent;
            done[x] = true;
        }
        rc = def->on_end(c, ids, ends, data, reasons, traces, k, def->ctx, e);
    }
    free(done);
    free(data);
    free(ends);
    free(traces);
    free(reasons);
    free(ids);
    return rc;
}

enum err
saga__unit_flush(struct store_conn *c, struct saga_unit *u, const struct saga_instance *now,
                 bool *stale, struct bb_error *e)
{
    *stale = false;
    if (u->n_rows == 0)
        return ERR_OK; /* nothing moved */
    const struct saga_unit_row *last = &u->rows[u->n_rows - 1];
    char *data = bb_json_dumps(now->data);
    struct bb_buf lines;
    bb_buf_init(&lines);
    unit_lines(u, &lines);
    const struct store_param p[] = {sp_text(now->id),
                                    sp_int(u->from_version),
                                    sp_text(saga_state_name(now->state)),
                                    sp_int(now->step),
                                    sp_int(now->version),
                                    sp_text(data),
                                    sp_int(now->retries),
                                    u->run_at ? sp_int(u->run_at) : sp_null(),
                                    now->reason[0] ? sp_text(now->reason) : sp_null(),
                                    last->error ? sp_text(last->error) : sp_null(),
                                    now->job_id ? sp_int(now->job_id) : sp_null(),
                                    sp_int(last->ended_ms),
                                    sp_text(lines.data)};
    int64_t changed = 0;
    enum err rc = store_exec(c, &SAGA_UPDATE, p, BB_ARRAY_LEN(p), &changed, e);
    free(data);
    bb_buf_deinit(&lines);
    if (rc == ERR_OK && changed == 0) { /* another run moved it on: this one is stale */
        *stale = true;
        return bb_fail(e, ERR_CONFLICT, "", "saga %s moved on", now->id);
    }
    return rc == ERR_OK ? ends_flush(c, &u, &now, 1, e) : rc;
}

/* The batch forms: the rows as a store batch, one statement each. */
static struct store_stmt SAGA_UPDATE_MANY = {
    .sql_pg = "UPDATE sagas s SET state = x.state, step = x.step, version = x.version,"
              " data = x.data, retries = x.retries, next_retry_at_ms = x.next_retry_at_ms,"
              " reason = x.reason, error = x.error, job_id = x.job_id,"
              " updated_at_ms = x.updated_at_ms, timeline = s.timeline || x.timeline"
              " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int[], $5::bigint[],"
              " $6::text[], $7::int[], $8::bigint[], $9::text[], $10::text[], $11::bigint[],"
              " $12::bigint[], $13::text[]) AS x(id, from_version, state, step, version, data,"
              " retries, next_retry_at_ms, reason, error, job_id, updated_at_ms, timeline)"
              " WHERE s.id = x.id AND s.version = x.from_version",
    .sql_sqlite = "UPDATE sagas SET state = x.state, step = x.step, version = x.version,"
                  " data = x.data, retries = x.retries, next_retry_at_ms = x.next_retry_at_ms,"
                  " reason = x.reason, error = x.error, job_id = x.job_id,"
                  " updated_at_ms = x.updated_at_ms, timeline = sagas.timeline || x.timeline"
                  " FROM (SELECT value ->> 'id' AS id, value ->> 'from_version' AS from_version,"
                  " value ->> 'state' AS state, value ->> 'step' AS step,"
                  " value ->> 'version' AS version, value ->> 'data' AS data,"
                  " value ->> 'retries' AS retries,"
                  " value ->> 'next_retry_at_ms' AS next_retry_at_ms,"
                  " value ->> 'reason' AS reason, value ->> 'error' AS error,"
                  " value ->> 'job_id' AS job_id, value ->> 'updated_at_ms' AS updated_at_ms,"
                  " value ->> 'timeline' AS timeline FROM json_each($1)) AS x"
                  " WHERE sagas.id = x.id AND sagas.version = x.from_version",
};

/* 0 and "" are written as null. */
static void
rows_int_or_null(struct store_batch *w, const char *key, int64_t v)
{
    if (v)
        store_batch_int(w, key, v);
    else
        store_batch_text(w, key, NULL);
}

static void
rows_text_or_null(struct store_batch *w, const char *key, const char *s)
{
    store_batch_text(w, key, s && *s ? s : NULL);
}

enum err
saga__units_flush(struct store_conn *c, struct saga_unit *const *units,
                  const struct saga_instance *const *now, size_t n, bool *stale, struct bb_error *e)
{
    *stale = false;
    struct store_batch moves;
    store_batch_init(&moves, c, 13);
    struct bb_buf lines;
    bb_buf_init(&lines);
    for (size_t i = 0; i < n; i++) {
        const struct saga_unit *u = units[i];
        const struct saga_instance *in = now[i];
        if (u->n_rows == 0)
            continue;
        const struct saga_unit_row *last = &u->rows[u->n_rows - 1];
        store_batch_row(&moves);
        store_batch_text(&moves, "id", in->id);
        store_batch_int(&moves, "from_version", u->from_version);
        store_batch_text(&moves, "state", saga_state_name(in->state));
        store_batch_int(&moves, "step", in->step);
        store_batch_int(&moves, "version", in->version);
        store_batch_json(&moves, "data", in->data);
        store_batch_int(&moves, "retries", in->retries);
        rows_int_or_null(&moves, "next_retry_at_ms", u->run_at);
        rows_text_or_null(&moves, "reason", in->reason);
        rows_text_or_null(&moves, "error", last->error);
        rows_int_or_null(&moves, "job_id", in->job_id);
        store_batch_int(&moves, "updated_at_ms", last->ended_ms);
        bb_buf_reset(&lines);
        unit_lines(u, &lines);
        store_batch_text(&moves, "timeline", lines.data);
    }
    bb_buf_deinit(&lines);
    size_t expected = moves.n_rows;
    enum err rc = ERR_OK;
    if (expected > 0) {
        const struct store_param p[] = {sp_batch(&moves)};
        int64_t changed = 0;
        rc = store_exec(c, &SAGA_UPDATE_MANY, p, 1, &changed, e);
        if (rc == ERR_OK && changed != (int64_t)expected) {
            *stale = true;
            rc = bb_fail(e, ERR_CONFLICT, "", "%zu of %zu sagas moved on",
                         expected - (size_t)changed, expected);
        }
    }
    store_batch_deinit(&moves);
    if (rc == ERR_OK)
        rc = ends_flush(c, units, now, n, e);
    return rc;
}

/* The last step at or before `i` that has a compensation; -1: none. */
static int
compensable_from(const struct saga_def *def, int i)
{
    while (i >= 0 && def->steps[i].compensate == NULL)
        i--;
    return i;
}

static const char *
outcome_name(enum saga_outcome o)
{
    return o == SAGA_STEP_OK ? "ok" : o == SAGA_STEP_RETRY ? "retry" : "failed";
}

enum err
saga__transition(struct store_conn *c, const struct saga_def *def, const struct saga_instance *in,
                 const struct saga_step_result *res, int64_t keep_job, int64_t now_ms,
                 struct saga_unit *u, struct saga_instance *next, struct bb_error *e)
{
    const struct saga_step_def *sd = &def->steps[in->step];
    bool compensating = in->state == SAGA_COMPENSATING;
    enum saga_state next_state = in->state;
    int next_step = in->step;
    int64_t retries = 0, run_at = 0;
    const char *reason = NULL;
    const char *error = res->outcome == SAGA_STEP_OK ? NULL : res->error;
    enum saga_outcome outcome = res->outcome;

    if (outcome == SAGA_STEP_RETRY) {
        struct job_queue q;
        enum err rc = job_queue_get(c, SAGA_QUEUE, &q, e);
        if (rc != ERR_OK)
            return rc;
        if (in->retries + 1 >= q.max_attempts) {
            outcome = SAGA_STEP_FAIL; /* out of attempts: as good as permanent */
        } else {
            retries = in->retries + 1;
            run_at = now_ms + job_backoff_delay_ms(&q.backoff, (int)retries,
                                                   (double)bb_rand_below(1000000) / 1e6);
        }
    }
    if (outcome == SAGA_STEP_OK && !compensating) {
        next_step = in->step + 1;
        if ((size_t)next_step == def->n_steps) {
            next_state = SAGA_COMPLETED;
            next_step = in->step;
        }
    } else if (outcome == SAGA_STEP_OK) {
        next_step = compensable_from(def, in->step - 1);
        if (next_step < 0) {
            next_state = SAGA_FAILED;
            next_step = in->step;
        }
    } else if (outcome == SAGA_STEP_FAIL && !compensating) {
        reason = res->reason[0] ? res->reason : "could not be completed";
        next_state = SAGA_COMPENSATING;
        next_step = compensable_from(def, sd->undo_on_failure ? in->step : in->step - 1);
        if (next_step < 0) {
            next_state = SAGA_FAILED;
            next_step = in->step;
        }
    } else if (outcome == SAGA_STEP_FAIL) {
        next_state = SAGA_STUCK;
    }

    bool ends = next_state == SAGA_COMPLETED || next_state == SAGA_FAILED;
    bool waits = ends || next_state == SAGA_STUCK;
    int64_t job_id = 0;
    enum err rc = ERR_OK;
    if (!waits && run_at == 0 && keep_job != 0)
        job_id = keep_job; /* its runner goes straight on */
    else if (!waits)
        rc = enqueue_step(c, in->id, in->version + 1, run_at, now_ms, res->traceparent, &job_id, e);
    if (rc != ERR_OK)
        return rc;
    BB_ASSERT(u->n_rows < SAGA_UNIT_ROWS);
    struct saga_unit_row *row = &u->rows[u->n_rows++];
    *row = (struct saga_unit_row){.step = sd->name,
                                  .phase = compensating ? "compensation" : "action",
                                  .outcome = outcome_name(outcome), /* out of retries: failed */
                                  .attempt = in->retries + 1,
                                  .error = error ? xstrdup(error) : NULL,
                                  .started_ms = res->started_at_ms,
                                  .ended_ms = now_ms};
    u->run_at = run_at;
    if (ends && def->on_end) { /* called by the flush */
        u->ended_def = def;
        if (next_state == SAGA_FAILED)
            u->end_reason = xstrdup(reason          ? reason
                                    : in->reason[0] ? in->reason
                                                    : "could not be completed");
        if (res->traceparent)
            u->end_traceparent = xstrdup(res->traceparent);
    }
    saga__count_transition(c, def->type, in->state, next_state);
    *next = *in;
    next->state = next_state;
    next->step = next_step;
    next->version = in->version + 1;
    next->data = json_incref((json_t *)(res->data ? res->data : in->data));
    next->retries = retries;
    if (reason)
        bb_strlcpy(next->reason, reason, sizeof next->reason);
    next->job_id = job_id;
    return ERR_OK;
}

/* ---- the stuck retry --------------------------------------------------------------------- */

/* The retry starts afresh: its old error and retry time go, and the
 * timeline says a person retried it. */
static struct store_stmt SAGA_UNSTICK = {
    .sql = "UPDATE sagas SET state = $5, version = version + 1, retries = 0,"
           " job_id = $3, updated_at_ms = $4, error = NULL, next_retry_at_ms = NULL,"
           " timeline = timeline || $6 WHERE id = $1 AND version = $2 AND state = 'STUCK'",
};

enum err
saga_retry(struct store_conn *c, const char *id, int64_t now_ms, json_t **out, struct bb_error *e)
{
    struct saga_instance in;
    bool found;
    enum err rc = saga__load(c, id, &in, &found, e);
    if (rc != ERR_OK)
        return rc;
    if (!found)
        return bb_fail(e, ERR_NOT_FOUND, "saga_id", "no saga %s", id);
    if (in.state != SAGA_STUCK) {
        rc = bb_fail(e, ERR_CONFLICT, "saga_id",
                     "saga %s is %s: only a STUCK saga is retried by hand", id,
                     saga_state_name(in.state));
        saga__instance_deinit(&in);
        return rc;
    }
    /* The retry carries on the saga's trace (a checkout's, say), so that
     * what it does from here on is found with the rest of it; one that
     * started without a trace, on the request's. */
    struct store_rows r;
    const struct store_param t[] = {sp_text(id)};
    rc = store_query(c, &SAGA_TRACE, t, 1, &r, e);
    if (rc != ERR_OK) {
        saga__instance_deinit(&in);
        return rc;
    }
    char *trace =
        store_next(&r) && !store_col_is_null(&r, 0) ? xstrdup(store_col_text(&r, 0)) : NULL;
    store_rows_close(&r);
    int64_t job_id = 0;
    rc = enqueue_step(c, id, in.version + 1, 0, now_ms,
                      trace ? trace : bb_log_context_traceparent(), &job_id, e);
    free(trace);
    /* A saga gets its reason when it fails and turns to compensation; one
     * without was stranded while RUNNING (saga_sweep_stranded) and runs on. */
    enum saga_state resume = in.reason[0] ? SAGA_COMPENSATING : SAGA_RUNNING;
    struct bb_buf line;
    bb_buf_init(&line);
    event_line(&line, in.type, in.step, resume, "retried", in.retries + 1, NULL, now_ms);
    const struct store_param p[] = {sp_text(id),
                                    sp_int(in.version),
                                    sp_int(job_id),
                                    sp_int(now_ms),
                                    sp_text(saga_state_name(resume)),
                                    sp_text(line.data)};
    int64_t changed = 0;
    if (rc == ERR_OK)
        rc = store_exec(c, &SAGA_UNSTICK, p, BB_ARRAY_LEN(p), &changed, e);
    bb_buf_deinit(&line);
    if (rc == ERR_OK && changed == 0)
        rc = bb_fail(e, ERR_RETRY, "", "saga %s changed concurrently", id);
    saga__instance_deinit(&in);
    return rc == ERR_OK ? saga_get_json(c, id, out, e) : rc;
}

/* ---- stranded instances ------------------------------------------------------------------ */

static struct store_stmt SAGA_IN_FLIGHT = {
    .sql = "SELECT id, version, state, type, job_id, step, retries FROM sagas"
           " WHERE state IN ('RUNNING', 'COMPENSATING') AND id > $1 ORDER BY id LIMIT $2",
};
/* Compare-and-set on the version read before the job's state: a saga
 * moved since (its step ended and the next job took over) is left alone. */
static struct store_stmt SAGA_STRAND = {
    .sql = "UPDATE sagas SET state = 'STUCK', version = version + 1, next_retry_at_ms = NULL,"
           " error = $3, job_id = NULL, updated_at_ms = $4, timeline = timeline || $5"
           " WHERE id = $1 AND version = $2 AND state IN ('RUNNING', 'COMPENSATING')",
};

enum err
saga__in_flight(struct store_conn *c, const char *after, int64_t limit, struct saga_in_flight **out,
                size_t *n, struct bb_error *e)
{
    *out = NULL;
    *n = 0;
    const struct store_param p[] = {sp_text(after), sp_int(limit)};
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_IN_FLIGHT, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    struct saga_in_flight *f = xcalloc(limit > 0 ? (size_t)limit : 1, sizeof *f);
    size_t k = 0;
    while (store_next(&r) && k < (size_t)limit) {
        bb_strlcpy(f[k].id, store_col_text(&r, 0), sizeof f[k].id);
        f[k].version = store_col_int(&r, 1);
        bool compensating = strcmp(store_col_text(&r, 2), "COMPENSATING") == 0;
        f[k].state = compensating ? SAGA_COMPENSATING : SAGA_RUNNING;
        bb_strlcpy(f[k].type, store_col_text(&r, 3), sizeof f[k].type);
        f[k].job_id = store_col_is_null(&r, 4) ? 0 : store_col_int(&r, 4);
        f[k].step = (int)store_col_int(&r, 5);
        f[k].retries = store_col_int(&r, 6);
        k++;
    }
    store_rows_close(&r);
    *out = f;
    *n = k;
    return ERR_OK;
}

/* Why `f`'s job no longer drives it, into `why` (NULL: it does). */
static const char *
stranded_why(const struct saga_in_flight *f, bool found, enum job_state st, char *why, size_t size)
{
    if (f->job_id == 0)
        snprintf(why, size, "it has no job");
    else if (!found)
        snprintf(why, size, "its job %" PRId64 " is gone", f->job_id);
    else if (st != JOB_PENDING && st != JOB_RUNNING)
        snprintf(why, size, "its job %" PRId64 " is %s", f->job_id, job_state_name(st));
    else
        return NULL;
    return why;
}

enum err
saga__strand(struct store_conn *c, const struct saga_in_flight *f, size_t n, int64_t now_ms,
             int64_t *stuck, struct bb_error *e)
{
    *stuck = 0;
    int64_t *jobs = xcalloc(n ? n : 1, sizeof *jobs);
    enum job_state *states = xcalloc(n ? n : 1, sizeof *states);
    bool *found = xcalloc(n ? n : 1, sizeof *found);
    for (size_t i = 0; i < n; i++)
        jobs[i] = f[i].job_id;
    enum err rc = job_states_many(c, jobs, n, states, found, e);
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        char why[96], error[256];
        if (stranded_why(&f[i], found[i], states[i], why, sizeof why) == NULL)
            continue;
        snprintf(error, sizeof error, "stranded: %s; POST /sagas/%s/retry drives it again", why,
                 f[i].id);
        struct bb_buf line;
        bb_buf_init(&line);
        event_line(&line, f[i].type, f[i].step, f[i].state, "stuck", f[i].retries + 1, why, now_ms);
        const struct store_param q[] = {sp_text(f[i].id), sp_int(f[i].version), sp_text(error),
                                        sp_int(now_ms), sp_text(line.data)};
        int64_t changed = 0;
        rc = store_exec(c, &SAGA_STRAND, q, BB_ARRAY_LEN(q), &changed, e);
        bb_buf_deinit(&line);
        if (rc == ERR_OK && changed == 1) {
            saga__count_transition(c, f[i].type, f[i].state, SAGA_STUCK);
            log_error("saga.stranded", "saga=%s type=%s state=%s detail=%s", f[i].id, f[i].type,
                      saga_state_name(f[i].state), why);
            (*stuck)++;
        }
    }
    free(found);
    free(states);
    free(jobs);
    return rc;
}

enum err
saga_sweep_stranded(struct store_conn *c, const char *after, int64_t limit, int64_t now_ms,
                    char last[SAGA_ID_LEN + 1], int64_t *stuck, struct bb_error *e)
{
    *stuck = 0;
    last[0] = '\0';
    struct saga_in_flight *f;
    size_t n;
    /* The jobs' states are read after the sagas: a saga whose step ends in
     * between shows its old job finished, but its version moved on. */
    enum err rc = saga__in_flight(c, after, limit, &f, &n, e);
    if (rc == ERR_OK)
        rc = saga__strand(c, f, n, now_ms, stuck, e);
    if (rc == ERR_OK && n > 0 && n == (size_t)limit)
        bb_strlcpy(last, f[n - 1].id, SAGA_ID_LEN + 1);
    free(f);
    return rc;
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static struct store_stmt SAGA_GET_WITH_TIMELINE = {
    .sql = "SELECT " SAGA_COLUMNS ", timeline FROM sagas WHERE id = $1",
};

static json_t *
saga_row_json(struct store_rows *r)
{
    char created[32], updated[32], retry_at[32];
    bb_wall_ms_format(store_col_int(r, 12), created);
    bb_wall_ms_format(store_col_int(r, 13), updated);
    bool has_retry = !store_col_is_null(r, 8);
    if (has_retry)
        bb_wall_ms_format(store_col_int(r, 8), retry_at);
    const struct saga_def *def = saga__def_find(store_col_text(r, 1));
    json_t *steps = json_array();
    for (size_t i = 0; def && i < def->n_steps; i++)
        json_array_append_new(steps, json_string(def->steps[i].name));
    int step = (int)store_col_int(r, 4);
    json_t *data = json_loads(store_col_text(r, 6), 0, NULL);
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:s?, s:i, s:o, s:o, s:I, s:s?, s:s?, s:s?,"
                  " s:s, s:s}",
                  "saga_id", store_col_text(r, 0), "type", store_col_text(r, 1), "correlation_id",
                  store_col_text(r, 2), "state", store_col_text(r, 3), "step",
                  def && (size_t)step < def->n_steps ? def->steps[step].name : NULL, "step_index",
                  step, "steps", steps, "data", data ? data : json_object(), "retries",
                  (json_int_t)store_col_int(r, 7), "next_retry_at", has_retry ? retry_at : NULL,
                  "reason", store_col_is_null(r, 9) ? NULL : store_col_text(r, 9), "error",
                  store_col_is_null(r, 10) ? NULL : store_col_text(r, 10), "created_at", created,
                  "updated_at", updated);
    json_object_set_new(
        o, "job_id", store_col_is_null(r, 11) ? json_null() : json_integer(store_col_int(r, 11)));
    return o;
}

/* The timeline column's lines as GET /sagas/{id} shows them. */
static json_t *
timeline_json(const char *text)
{
    json_t *timeline = json_array();
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        json_t *t = json_loadb(line, len, 0, NULL);
        line += len + (end != NULL);
        if (t == NULL) /* not a line this code wrote: left out */
            continue;
        int64_t started = json_integer_value(json_object_get(t, "started_at_ms"));
        int64_t ended = json_integer_value(json_object_get(t, "ended_at_ms"));
        char started_at[32], ended_at[32];
        bb_wall_ms_format(started, started_at);
        bb_wall_ms_format(ended, ended_at);
        json_object_del(t, "started_at_ms");
        json_object_del(t, "ended_at_ms");
        json_object_set_new(t, "started_at", json_string(started_at));
        json_object_set_new(t, "ended_at", json_string(ended_at));
        json_object_set_new(t, "duration_ms", json_integer(ended - started));
        if (json_object_get(t, "error") == NULL)
            json_object_set_new(t, "error", json_null());
        json_array_append_new(timeline, t);
    }
    return timeline;
}

enum err
saga_get_json(struct store_conn *c, const char *id, json_t **out, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(id)};
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_GET_WITH_TIMELINE, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "saga_id", "no saga %s", id);
    }
    json_t *o = saga_row_json(&r);
    /* timeline comes after SAGA_COLUMNS' 14 */
    json_object_set_new(o, "timeline", timeline_json(store_col_text(&r, 14)));
    store_rows_close(&r);
    *out = o;
    return ERR_OK;
}

static struct store_stmt SAGA_LIST = {
    .sql = "SELECT " SAGA_COLUMNS " FROM sagas WHERE id > $1 AND ($2 = '' OR type = $2)"
           " AND ($3 = '' OR state = $3) AND ($4 = '' OR correlation_id = $4)"
           " ORDER BY id LIMIT $5",
};

enum err
saga_list_json(struct store_conn *c, const struct saga_filter *f, json_t **out, struct bb_error *e)
{
    const struct store_param p[] = {
        sp_text(f->after ? f->after : ""), sp_text(f->type ? f->type : ""),
        sp_text(f->state ? f->state : ""), sp_text(f->correlation_id ? f->correlation_id : ""),
        sp_int(f->limit)};
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_LIST, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *list = json_array();
    char last[SAGA_ID_LEN + 1] = "";
    while (store_next(&r)) {
        bb_strlcpy(last, store_col_text(&r, 0), sizeof last);
        json_array_append_new(list, saga_row_json(&r));
    }
    store_rows_close(&r);
    bool full = (int64_t)json_array_size(list) == f->limit;
    *out = json_pack("{s:o, s:s?}", "sagas", list, "next_after", full ? last : NULL);
    return ERR_OK;
}

static struct store_stmt SAGA_STUCK_COUNT = {
    .sql = "SELECT type, count(*) FROM sagas WHERE state = 'STUCK' GROUP BY type",
};

/*
 * Retention. Ids are UUIDv7, so those created before the cutoff sort
 * before its millisecond prefix ("tttttttt-tttt"): the (state, id) index
 * walks only old instances, one terminal state at a time.
 */
#define PRUNABLE                                                               \
    "SELECT id FROM sagas WHERE state = $4 AND id < $1 AND updated_at_ms < $2" \
    " ORDER BY id LIMIT $3"
static struct store_stmt PRUNE_SAGAS = {.sql = "DELETE FROM sagas WHERE id IN (" PRUNABLE
                                               ") RETURNING type, data"};

/* The deleted instances (rows type, data) handed, type by type, to the
 * definitions that keep something outside their rows. *n: how many went. */
static enum err
pruned(struct store_conn *c, struct store_rows *r, int64_t *n, struct bb_error *e)
{
    struct kept {
        const struct saga_def *def;
        json_t *data;
    } *rows = NULL;
    size_t k = 0, cap = 0;
    *n = 0;
    while (store_next(r)) {
        (*n)++;
        const struct saga_def *def = saga__def_find(store_col_text(r, 0));
        json_t *data = def && def->on_prune ? json_loads(store_col_text(r, 1), 0, NULL) : NULL;
        if (data == NULL)
            continue;
        if (k == cap) {
            cap = cap ? cap * 2 : 64;
            rows = xrealloc(rows, cap * sizeof *rows);
        }
        rows[k++] = (struct kept){def, data};
    }
    store_rows_close(r);
    const json_t **data = xcalloc(k ? k : 1, sizeof *data);
    bool *handed = xcalloc(k ? k : 1, sizeof *handed);
    enum err rc = ERR_OK;
    for (size_t i = 0; i < k && rc == ERR_OK; i++) {
        if (handed[i])
            continue;
        const struct saga_def *def = rows[i].def;
        size_t m = 0;
        for (size_t j = i; j < k; j++) {
            if (rows[j].def == def) {
                data[m++] = rows[j].data;
                handed[j] = true;
            }
        }
        rc = def->on_prune(c, data, m, def->ctx, e);
    }
    for (size_t i = 0; i < k; i++)
        json_decref(rows[i].data);
    free(handed);
    free(rows);
    free(data);
    return rc;
}

enum err
saga_prune_finished(struct store_conn *c, int64_t before_ms, int64_t limit, int64_t *deleted,
                    struct bb_error *e)
{
    *deleted = 0;
    char cutoff[16];
    uint64_t ms = before_ms > 0 ? (uint64_t)before_ms : 0;
    snprintf(cutoff, sizeof cutoff, "%08x-%04x", (unsigned)((ms >> 16) & 0xffffffffu),
             (unsigned)(ms & 0xffffu));
    static const enum saga_state terminal[] = {SAGA_COMPLETED, SAGA_FAILED};
    enum err rc = ERR_OK;
    for (size_t i = 0; i < BB_ARRAY_LEN(terminal) && rc == ERR_OK && *deleted < limit; i++) {
        const struct store_param p[] = {sp_text(cutoff), sp_int(before_ms),
                                        sp_int(limit - *deleted),
                                        sp_text(saga_state_name(terminal[i]))};
        int64_t n = 0;
        struct store_rows r;
        rc = store_query(c, &PRUNE_SAGAS, p, BB_ARRAY_LEN(p), &r, e);
        if (rc == ERR_OK)
            rc = pruned(c, &r, &n, e);
        *deleted += n;
    }
    return rc;
}

enum err
saga_metrics_refresh(struct store_conn *c, struct bb_error *e)
{
    struct store_rows r;
    enum err rc = store_query(c, &SAGA_STUCK_COUNT, NULL, 0, &r, e);
    if (rc != ERR_OK)
        return rc;
    saga__metric_stuck_reset();
    while (store_next(&r))
        saga__metric_stuck(store_col_text(&r, 0), store_col_int(&r, 1));
    store_rows_close(&r);
    return ERR_OK;
}
