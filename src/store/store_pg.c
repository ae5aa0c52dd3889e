/*
 * store_pg.c: the PostgreSQL engine (the one file that includes <libpq-fe.h>).
 *
 * Statements are prepared per connection under the name "bb<slot>", with
 * parameter types taken from the first call (int8 for integers, text for
 * strings). Integers travel as decimal text, strings in binary format (their
 * raw bytes with a length), so no string needs a NUL terminator and nothing
 * is ever spliced into SQL text. Results come back in text format.
 *
 * Round trips are what a transaction costs here, so the engine saves them
 * with libpq's pipeline mode: BEGIN is sent together with the transaction's
 * first statement (and its PREPARE, on first use), and the notifications a
 * transaction raised are sent together with its COMMIT. A deferred write
 * (store_exec_deferred) waits, with its parameters copied, to be sent ahead
 * of the transaction's next command. A read runs as autocommit statements
 * (READ COMMITTED gives each its own snapshot anyway), and so does a write
 * whose unit said that each of its statements stands on its own
 * (store_each_statement_commits): one round trip, no BEGIN or COMMIT.
 */
#include "store/store_int.h"

#include <libpq-fe.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { PG_INT8OID = 20, PG_TEXTOID = 25, PG_MAX_PARAMS = 65535 /* the protocol's limit */ };

/* A deferred write: a prepared statement's name and its own copy of the
 * parameters (decimal or raw bytes in `blob`). */
struct pg_deferred {
    char name[16];
    int n;
    char *blob;
    const char **values;
    int *lengths;
    int *formats;
};

/* Deferred writes a transaction may hold before they are sent on their own
 * (a bound on how far the pipeline writes ahead of its reads). */
enum { PG_MAX_DEFERRED = 64 };

enum { PG_REPLAN_MAX_MS = 600000 };

struct pg_conn {
    PGconn *pg;
    bool begin_pending; /* a write transaction began; BEGIN goes with the next command */
    bool txn_open;      /* BEGIN was sent */
    struct pg_deferred deferred[PG_MAX_DEFERRED];
    int n_deferred;
    int64_t replan_at_ms;    /* when cached plans are dropped next */
    int64_t replan_every_ms; /* doubles each time, up to PG_REPLAN_MAX_MS */
};

/* One command of a pipeline. */
struct pg_cmd {
    const char *sql;          /* PQsendQueryParams text, or the PREPARE text */
    const char *prepare_name; /* set: PQsendPrepare(prepare_name, sql) */
    const char *exec_name;    /* set: PQsendQueryPrepared(exec_name) */
    int n;
    const Oid *types;
    const char *const *values;
    const int *lengths;
    const int *formats;
};

/* Server notices ("relation ... already exists, skipping") go to the log
 * at debug level, not to stderr. */
static void
pg_notice(void *arg, const char *message)
{
    (void)arg;
    char text[512];
    bb_strlcpy(text, message, sizeof text);
    size_t n = strlen(text);
    while (n > 0 && text[n - 1] == '\n')
        text[--n] = '\0';
    log_debug("store.pg_notice", "message=%s", text);
}

/* libpq's message, without its trailing newline. */
static void
pg_message(const char *msg, char *err, size_t err_len)
{
    bb_strlcpy(err, msg, err_len);
    size_t n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
        err[--n] = '\0';
}

static PGconn *
pg_connect_url(const char *url, char *err, size_t err_len)
{
    const char *const keys[] = {"dbname", "application_name", "connect_timeout", NULL};
    const char *const values[] = {url, "backbone", "5", NULL};
    PGconn *pg = PQconnectdbParams(keys, values, 1);
    if (pg == NULL) {
        bb_strlcpy(err, "out of memory", err_len);
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        pg_message(PQerrorMessage(pg), err, err_len);
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, pg_notice, NULL);
    /* Every answer Backbone gives relies on its commit being on disk: a
     * session that a role's, database's or URL's setting left without
     * synchronous_commit gets it back (a stronger setting is kept). */
    PGresult *res = PQexec(pg, "SELECT set_config('synchronous_commit', 'on', false) "
                               "WHERE current_setting('synchronous_commit') = 'off'");
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        pg_message(PQresultErrorMessage(res), err, err_len);
    else if (PQntuples(res) > 0)
        log_warn("store.pg_synchronous_commit", "detail=%s",
                 "synchronous_commit was off for this connection: set on");
    PQclear(res);
    if (!ok) {
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

/* Map a failed result to our vocabulary by SQLSTATE class. */
static enum err
pg_error(struct store_conn *c, const PGresult *res, const char *what, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(pc->pg);
    if (state == NULL)
        state = "";
    char clean[300];
    bb_strlcpy(clean, msg ? msg : "", sizeof clean);
    for (char *p = clean; *p; p++)
        if (*p == '\n')
            *p = ' ';
    if (PQstatus(pc->pg) != CONNECTION_OK || strncmp(state, "08", 2) == 0 ||
        strncmp(state, "57P", 3) == 0) {
        log_error_limited(10, "store.pg_connection_lost", "what=%s message=%s", what, clean);
        return bb_fail(e, ERR_UNAVAILABLE, "", "database connection lost");
    }
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0)
        return bb_fail(e, ERR_RETRY, "", "transient database conflict (%s)", state);
    if (strcmp(state, "23505") == 0)
        return bb_fail(e, ERR_CONFLICT, "", "unique constraint: %s", clean);
    log_error_limited(10, "store.pg_error", "what=%s sqlstate=%s message=%s", what, state, clean);
    return bb_fail(e, ERR_STORE, "", "database error %s", state);
}

static void
pg_deferred_clear(struct pg_conn *pc)
{
    for (int i = 0; i < pc->n_deferred; i++) {
        struct pg_deferred *d = &pc->deferred[i];
        free(d->blob);
        free((void *)d->values);
        free(d->lengths);
        free(d->formats);
    }
    pc->n_deferred = 0;
}

static enum err
pg_connect(struct store *s, struct store_conn *c, struct bb_error *e)
{
    char err[512];
    PGconn *pg = pg_connect_url(s->url, err, sizeof err);
    if (pg == NULL)
        return bb_fail(e, ERR_UNAVAILABLE, "db", "cannot connect to PostgreSQL: %s", err);
    struct pg_conn *pc = xcalloc(1, sizeof *pc);
    pc->pg = pg;
    pc->replan_every_ms = s->opt.replan_first_ms > 0 ? s->opt.replan_first_ms : 1;
    pc->replan_at_ms = bb_mono_ms() + pc->replan_every_ms;
    c->impl = pc;
    return ERR_OK;
}

static void
pg_disconnect(struct store_conn *c)
{
    struct pg_conn *pc = c->impl;
    if (pc == NULL)
        return;
    /* Prepared statements die with the session; only our markers remain. */
    for (size_t i = 0; i < c->n_prepared; i++)
        c->prepared[i] = NULL;
    pg_deferred_clear(pc);
    PQfinish(pc->pg);
    free(pc);
    c->impl = NULL;
}

/*
 * Send `cmds` as one pipeline and read every result. With `results` (room
 * for n), each command's result is handed back (the caller PQclear's them);
 * on failure none is. The first failure is reported; commands after it were
 * skipped by the server. *failed_at gets how many succeeded.
 */
static enum err
pg_pipeline(struct store_conn *c, const struct pg_cmd *cmds, int n, PGresult **results,
            int *failed_at, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    PGconn *pg = pc->pg;
    int failed = 0; /* how many commands succeeded before the first failure */
    if (results)
        memset(results, 0, (size_t)n * sizeof *results);
    if (failed_at)
        *failed_at = 0;
    if (PQenterPipelineMode(pg) != 1)
        return pg_error(c, NULL, "pipeline", e);
    bool sent = true;
    for (int i = 0; i < n && sent; i++) {
        const struct pg_cmd *k = &cmds[i];
        if (k->prepare_name)
            sent = PQsendPrepare(pg, k->prepare_name, k->sql, k->n, k->types) == 1;
        else if (k->exec_name)
            sent = PQsendQueryPrepared(pg, k->exec_name, k->n, k->values, k->lengths, k->formats,
                                       0) == 1;
        else
            sent = PQsendQueryParams(pg, k->sql, k->n, k->types, k->values, k->lengths, k->formats,
                                     0) == 1;
    }
    if (!sent || PQpipelineSync(pg) != 1) {
        enum err rc = pg_error(c, NULL, "pipeline send", e);
        (void)PQexitPipelineMode(pg);
        return rc;
    }
    enum err rc = ERR_OK;
    for (int i = 0; i < n; i++) {
        PGresult *res = PQgetResult(pg);
        if (res == NULL) { /* the connection broke: no more results will come */
            rc = pg_error(c, NULL, "pipeline", e);
            break;
        }
        ExecStatusType st = PQresultStatus(res);
        if (rc == ERR_OK && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
            rc =
                pg_error(c, res, st == PGRES_PIPELINE_ABORTED ? "pipeline aborted" : "pipeline", e);
        if (rc == ERR_OK)
            failed = i + 1;
        if (results && rc == ERR_OK)
            results[i] = res;
        else
            PQclear(res);
        PQclear(PQgetResult(pg)); /* the NULL that ends each command's results */
    }
    /* Drain up to the sync point; a broken connection ends it early. */
    for (;;) {
        PGresult *res = PQgetResult(pg);
        if (res == NULL && PQstatus(pg) != CONNECTION_OK)
            break;
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_PIPELINE_SYNC || res == NULL)
            break;
    }
    (void)PQexitPipelineMode(pg);
    if (rc == ERR_OK && PQstatus(pg) != CONNECTION_OK)
        rc = pg_error(c, NULL, "pipeline", e);
    if (rc != ERR_OK && results) {
        for (int i = 0; i < n; i++) {
            PQclear(results[i]);
            results[i] = NULL;
        }
    }
    if (failed_at)
        *failed_at = failed;
    return rc;
}

/* The commands every pipeline of a write transaction starts with: the BEGIN
 * it still owes and its deferred writes. Returns how many went to `cmds`. */
static int
pg_cmds_head(const struct pg_conn *pc, struct pg_cmd *cmds)
{
    int k = 0;
    if (pc->begin_pending)
        cmds[k++] = (struct pg_cmd){.sql = "BEGIN"};
    for (int i = 0; i < pc->n_deferred; i++) {
        const struct pg_deferred *d = &pc->deferred[i];
        cmds[k++] = (struct pg_cmd){.exec_name = d->name,
                                    .n = d->n,
                                    .values = d->values,
                                    .lengths = d->lengths,
                                    .formats = d->formats};
    }
    return k;
}

/*
 * After a pipeline that began with `head` commands from pg_cmds_head and
 * ran `done` commands before failing with `rc` (or succeeding): the
 * transaction is open once BEGIN went, and the deferred writes are spent. A
 * deferred write's failure is reported as the store's own, so that no caller
 * takes it for its statement's (a unique violation it would handle).
 */
static enum err
pg_head_done(struct pg_conn *pc, int head, int done, enum err rc, struct bb_error *e)
{
    if (pc->begin_pending && PQtransactionStatus(pc->pg) != PQTRANS_IDLE) {
        pc->begin_pending = false;
        pc->txn_open = true;
    }
    pg_deferred_clear(pc);
    if (rc == ERR_OK || rc == ERR_RETRY || rc == ERR_UNAVAILABLE || done >= head)
        return rc;
    char why[sizeof e->detail] = "";
    if (e)
        bb_strlcpy(why, e->detail, sizeof why);
    return bb_fail(e, ERR_STORE, "", "a deferred write failed: %s", why);
}

/* Send the BEGIN and deferred writes a transaction owes, on their own. */
static enum err
pg_flush_head(struct store_conn *c, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    if (pc->n_deferred == 0)
        return ERR_OK;
    struct pg_cmd cmds[PG_MAX_DEFERRED + 1];
    int head = pg_cmds_head(pc, cmds);
    int done = 0;
    enum err rc = pg_pipeline(c, cmds, head, NULL, &done, e);
    return pg_head_done(pc, head, done, rc, e);
}

static enum err
pg_exec_script(struct store_conn *c, const char *sql, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    enum err rc = pg_flush_head(c, e);
    if (rc != ERR_OK)
        return rc;
    /* The simple protocol takes several statements at once: the pending
     * BEGIN rides along with the first script of the transaction. */
    struct bb_buf text;
    bb_buf_init(&text);
    if (pc->begin_pending)
        bb_buf_puts(&text, "BEGIN;");
    bb_buf_puts(&text, sql);
    PGresult *res = PQexec(pc->pg, text.data);
    bb_buf_deinit(&text);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = pg_error(c, res, "exec", e);
    PQclear(res);
    if (pc->begin_pending && PQtransactionStatus(pc->pg) != PQTRANS_IDLE) {
        pc->begin_pending = false;
        pc->txn_open = true;
    }
    return rc;
}

/* The prepared-statement marker: any non-NULL pointer will do. */
static char pg_prepared_marker;

/* Executions' parameters as libpq wants them: `total` slots, row after row. */
struct pg_args {
    Oid *types;
    const char **values;
    int *lengths;
    int *formats;
    char (*ints)[24];
};

static void
pg_args_init(struct pg_args *a, size_t total)
{
    size_t n = total ? total : 1;
    a->types = xcalloc(n, sizeof *a->types);
    a->values = xcalloc(n, sizeof *a->values);
    a->lengths = xcalloc(n, sizeof *a->lengths);
    a->formats = xcalloc(n, sizeof *a->formats);
    a->ints = xcalloc(n, sizeof *a->ints);
}

static void
pg_args_deinit(struct pg_args *a)
{
    free(a->types);
    free(a->values);
    free(a->lengths);
    free(a->formats);
    free(a->ints);
}

/* Fill slots [at, at + n) from `params`. */
static enum err
pg_args_fill(struct pg_args *a, size_t at, const struct store_param *params, size_t n,
             struct bb_error *e)
{
    if (n > PG_MAX_PARAMS)
        return bb_fail(e, ERR_INTERNAL, "", "too many statement parameters (%zu)", n);
    for (size_t j = 0; j < n; j++) {
        const struct store_param *p = &params[j];
        size_t i = at + j;
        a->lengths[i] = 0;
        a->formats[i] = 0;
        a->types[i] = 0;
        a->values[i] = NULL;
        if (p->type == STORE_T_INT) {
            snprintf(a->ints[i], sizeof a->ints[i], "%" PRId64, p->i);
            a->values[i] = a->ints[i];
            a->types[i] = PG_INT8OID;
        } else if (p->type == STORE_T_TEXT) {
            if (p->len > INT32_MAX)
                return bb_fail(e, ERR_TOO_LARGE, "", "parameter too large");
            a->values[i] = p->s;
            a->lengths[i] = (int)p->len;
            a->formats[i] = 1; /* binary text: raw bytes, no terminator needed */
            a->types[i] = PG_TEXTOID;
        }
    }
    return ERR_OK;
}

/*
 * Pipeline [BEGIN if pending] [deferred writes] [PREPARE on first use] and the executions of
 * `st` for `rows` rows of parameters; results of the executions go to
 * `results` (rows entries), the caller PQclear's them.
 */
static enum err
pg_run(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
       size_t n_params, size_t rows, PGresult **results, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    int slot = store__stmt_slot(st);
    char name[32];
    snprintf(name, sizeof name, "bb%d", slot);
    store__conn_reserve(c, slot);
    size_t n_cmds = rows + 2 + (size_t)pc->n_deferred;
    struct pg_cmd *cmds = xcalloc(n_cmds, sizeof *cmds);
    struct pg_args args;
    pg_args_init(&args, rows * n_params);
    PGresult **all = xcalloc(n_cmds, sizeof *all);
    int head = pg_cmds_head(pc, cmds);
    int k = head;
    enum err rc = pg_args_fill(&args, 0, params, n_params, e);
    bool preparing = c->prepared[slot] == NULL;
    if (rc == ERR_OK && preparing) /* parameter types come from the first row */
        cmds[k++] = (struct pg_cmd){.sql = store__stmt_sql(st, STORE_POSTGRES),
                                    .prepare_name = name,
                                    .n = (int)n_params,
                                    .types = args.types};
    int first_exec = k;
    for (size_t r = 0; r < rows && rc == ERR_OK; r++) {
        size_t at = r * n_params;
        if (r > 0)
            rc = pg_args_fill(&args, at, params + at, n_params, e);
        cmds[k++] = (struct pg_cmd){.exec_name = name,
                                    .n = (int)n_params,
                                    .values = args.values + at,
                                    .lengths = args.lengths + at,
                                    .formats = args.formats + at};
    }
    int done = 0;
    if (rc == ERR_OK) {
        rc = pg_pipeline(c, cmds, k, all, &done, e);
        rc = pg_head_done(pc, head, done, rc, e);
    }
    /* Prepared statements outlive transactions: remember a PREPARE that
     * succeeded even if a statement after it failed. */
    if (preparing && done > first_exec - 1)
        c->prepared[slot] = &pg_prepared_marker;
    for (int i = 0; i < k; i++) {
        if (i >= first_exec && rc == ERR_OK)
            results[i - first_exec] = all[i];
        else
            PQclear(all[i]);
    }
    free(all);
    pg_args_deinit(&args);
    free(cmds);
    return rc;
}

static enum err
pg_query(struct store_conn *c, struct store_stmt *st, const struct store_param *params, size_t n,
         struct store_rows *out, int64_t *changes, struct bb_error *e)
{
    PGresult *res = NULL;
    enum err rc = pg_run(c, st, params, n, 1, &res, e);
    if (rc != ERR_OK)
        return rc;
    if (changes) {
        const char *t = PQcmdTuples(res);
        *changes = *t ? strtoll(t, NULL, 10) : 0;
    }
    if (out) {
        out->impl = res;
        out->nrows = PQntuples(res);
        out->ncols = PQnfields(res);
    } else {
        PQclear(res);
    }
    return ERR_OK;
}

/*
 * Keep the write for the transaction's next command: its parameters are
 * copied, as the caller's buffers may be gone by then. A statement not yet
 * prepared on this connection runs at once (its PREPARE needs a round trip
 * of its own to be remembered), as does a write outside a transaction.
 */
static enum err
pg_defer(struct store_conn *c, struct store_stmt *st, const struct store_param *params, size_t n,
         struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    int slot = store__stmt_slot(st);
    store__conn_reserve(c, slot);
    if ((!pc->begin_pending && !pc->txn_open) || c->prepared[slot] == NULL)
        return pg_query(c, st, params, n, NULL, NULL, e);
    if (n > PG_MAX_PARAMS)
        return bb_fail(e, ERR_INTERNAL, "", "too many statement parameters (%zu)", n);
    if (pc->n_deferred == PG_MAX_DEFERRED) {
        enum err rc = pg_flush_head(c, e);
        if (rc != ERR_OK)
            return rc;
    }
    size_t size = 0;
    for (size_t j = 0; j < n; j++) {
        if (params[j].type == STORE_T_TEXT && params[j].len > INT32_MAX)
            return bb_fail(e, ERR_TOO_LARGE, "", "parameter too large");
        size += params[j].type == STORE_T_TEXT ? params[j].len + 1 : 24;
    }
    struct pg_deferred *d = &pc->deferred[pc->n_deferred++];
    snprintf(d->name, sizeof d->name, "bb%d", slot);
    d->n = (int)n;
    d->blob = xmalloc(size ? size : 1);
    d->values = xcalloc(n ? n : 1, sizeof *d->values);
    d->lengths = xcalloc(n ? n : 1, sizeof *d->lengths);
    d->formats = xcalloc(n ? n : 1, sizeof *d->formats);
    char *at = d->blob;
    for (size_t j = 0; j < n; j++) {
        const struct store_param *p = &params[j];
        if (p->type == STORE_T_INT) {
            int len = snprintf(at, 24, "%" PRId64, p->i);
            d->values[j] = at;
            at += len + 1;
        } else if (p->type == STORE_T_TEXT) {
            if (p->len > 0)
                memcpy(at, p->s, p->len);
            at[p->len] = '\0';
            d->values[j] = at;
            d->lengths[j] = (int)p->len;
            d->formats[j] = 1; /* as pg_args_fill: raw bytes */
            at += p->len + 1;
        }
    }
    return ERR_OK;
}

/* Chunks bound how far the pipeline writes ahead of its reads: with a
 * blocking connection both sides could otherwise stall on full buffers. */
enum { EXEC_MANY_CHUNK = 256 };

static enum err
pg_exec_many(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
             size_t n_params, size_t n_rows, int64_t *first_ints, struct bb_error *e)
{
    PGresult **res = xcalloc(EXEC_MANY_CHUNK, sizeof *res);
    enum err rc = ERR_OK;
    for (size_t at = 0; at < n_rows && rc == ERR_OK; at += EXEC_MANY_CHUNK) {
        size_t rows = n_rows - at < EXEC_MANY_CHUNK ? n_rows - at : EXEC_MANY_CHUNK;
        rc = pg_run(c, st, params + at * n_params, n_params, rows, res, e);
        for (size_t r = 0; r < rows && rc == ERR_OK; r++) {
            if (first_ints)
                first_ints[at + r] = PQntuples(res[r]) > 0 && PQnfields(res[r]) > 0
                                         ? strtoll(PQgetvalue(res[r], 0, 0), NULL, 10)
                                         : 0;
            PQclear(res[r]);
        }
    }
    free(res);
    return rc;
}

static void
pg_rows_free(struct store_rows *r)
{
    PQclear(r->impl);
}

static bool
pg_col_is_null(const struct store_rows *r, int col)
{
    return PQgetisnull(r->impl, r->row, col) != 0;
}

static int64_t
pg_col_int(const struct store_rows *r, int col)
{
    return strtoll(PQgetvalue(r->impl, r->row, col), NULL, 10);
}

static const char *
pg_col_text(const struct store_rows *r, int col)
{
    return PQgetvalue(r->impl, r->row, col);
}

static size_t
pg_col_len(const struct store_rows *r, int col)
{
    return (size_t)PQgetlength(r->impl, r->row, col);
}

/*
 * PostgreSQL keeps the generic plan it made for a prepared statement until
 * something invalidates it (an ANALYZE of a table it reads, by autovacuum
 * at the earliest a minute later). A plan made while a table was nearly
 * empty scans it whole, and keeps doing so as the table grows: a batch's
 * update by key joined by hash to a sequential scan of the jobs, thousands
 * of rows, for a dozen. So the connection drops its cached plans (not its
 * prepared statements) 1 s after it opens, then 2 s, 4 s, ... later, then
 * every 10 minutes: each plan is rebuilt on tables at most about twice the
 * size they had when it was made (store_options.replan_first_ms), at a
 * cost of a few re-plans per statement now and then. A failure is not one: the next command reports
 * a broken connection.
 */
static void
pg_replan_when_due(struct pg_conn *pc)
{
    int64_t now = bb_mono_ms();
    if (now < pc->replan_at_ms || PQtransactionStatus(pc->pg) != PQTRANS_IDLE)
        return;
    PQclear(PQexec(pc->pg, "DISCARD PLANS"));
    pc->replan_every_ms =
        pc->replan_every_ms < PG_REPLAN_MAX_MS / 2 ? pc->replan_every_ms * 2 : PG_REPLAN_MAX_MS;
    pc->replan_at_ms = now + pc->replan_every_ms;
}

static enum err
pg_begin(struct store_conn *c, enum store_txn mode, struct bb_error *e)
{
    (void)e;
    struct pg_conn *pc = c->impl;
    pg_replan_when_due(pc);
    /* Reads: autocommit statements. Writes: BEGIN goes with the first
     * command, saving a round trip. */
    pc->begin_pending = mode == STORE_WRITE;
    pc->txn_open = false;
    return ERR_OK;
}

/* COMMIT, preceded in the same round trip by the transaction's
 * notifications (delivered by PostgreSQL to every listener at commit). */
static enum err
pg_commit(struct store_conn *c, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    if (!pc->txn_open && c->n_notes == 0 && pc->n_deferred == 0) {
        pc->begin_pending = false; /* nothing was sent: nothing to commit */
        return ERR_OK;
    }
    size_t n = c->n_notes + 2 + (size_t)pc->n_deferred;
    struct pg_cmd *cmds = xcalloc(n, sizeof *cmds);
    const char **values = xcalloc(2 * (c->n_notes ? c->n_notes : 1), sizeof *values);
    pc->begin_pending = !pc->txn_open;
    int head = pg_cmds_head(pc, cmds);
    int k = head;
    for (size_t i = 0; i < c->n_notes; i++) {
        values[2 * i] = c->notes[i].channel;
        values[2 * i + 1] = c->notes[i].payload;
        cmds[k++] =
            (struct pg_cmd){.sql = "SELECT pg_notify($1, $2)", .n = 2, .values = &values[2 * i]};
    }
    cmds[k++] = (struct pg_cmd){.sql = "COMMIT"};
    int done = 0;
    enum err rc = pg_pipeline(c, cmds, k, NULL, &done, e);
    rc = pg_head_done(pc, head, done, rc, e);
    free(cmds);
    free((void *)values);
    if (rc != ERR_OK && PQtransactionStatus(pc->pg) != PQTRANS_IDLE) {
        PGresult *res = PQexec(pc->pg, "ROLLBACK");
        PQclear(res);
    }
    pc->begin_pending = pc->txn_open = false;
    return rc;
}

/* Autocommit from here, if the transaction has sent nothing and owes
 * nothing yet (a unit batched with others finds its savepoint's BEGIN sent). */
static void
pg_each_statement_commits(struct store_conn *c)
{
    struct pg_conn *pc = c->impl;
    if (!pc->txn_open && pc->n_deferred == 0 && c->n_notes == 0)
        pc->begin_pending = false;
}

static void
pg_rollback(struct store_conn *c)
{
    struct pg_conn *pc = c->impl;
    if (pc->txn_open || PQtransactionStatus(pc->pg) != PQTRANS_IDLE) {
        /* A failed ROLLBACK means the connection is gone; the server drops
         * the transaction with it. */
        PGresult *res = PQexec(pc->pg, "ROLLBACK");
        PQclear(res);
    }
    pg_deferred_clear(pc); /* never sent: nothing to undo */
    pc->begin_pending = pc->txn_open = false;
}

static bool
pg_is_broken(const struct store_conn *c)
{
    const struct pg_conn *pc = c->impl;
    return pc == NULL || PQstatus(pc->pg) != CONNECTION_OK;
}

const struct store__ops store__pg_ops = {
    .engine = STORE_POSTGRES,
    .connect = pg_connect,
    .disconnect = pg_disconnect,
    .exec_script = pg_exec_script,
    .query = pg_query,
    .defer = pg_defer,
    .exec_many = pg_exec_many,
    .rows_free = pg_rows_free,
    .col_is_null = pg_col_is_null,
    .col_int = pg_col_int,
    .col_text = pg_col_text,
    .col_len = pg_col_len,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .each_statement_commits = pg_each_statement_commits,
    .is_broken = pg_is_broken,
};

/* ---- the listener connection ---------------------------------------------- */

void *
store__pg_listen_connect(struct store *s, struct bb_error *e)
{
    char err[512];
    PGconn *pg = pg_connect_url(s->url, err, sizeof err);
    if (pg == NULL) {
        bb_fail(e, ERR_UNAVAILABLE, "db", "listener cannot connect: %s", err);
        return NULL;
    }
    return pg;
}

int
store__pg_listen_socket(void *conn)
{
    return PQsocket(conn);
}

enum err
store__pg_listen_channel(void *conn, const char *channel)
{
    /* Channel names are [a-z0-9_] (checked by store_listen): safe to quote. */
    char sql[96];
    snprintf(sql, sizeof sql, "LISTEN \"%s\"", channel);
    PGresult *res = PQexec(conn, sql);
    enum err rc = PQresultStatus(res) == PGRES_COMMAND_OK ? ERR_OK : ERR_UNAVAILABLE;
    PQclear(res);
    return rc;
}

enum err
store__pg_listen_consume(struct store *s, void *conn)
{
    if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK)
        return ERR_UNAVAILABLE;
    PGnotify *n;
    while ((n = PQnotifies(conn)) != NULL) {
        store__dispatch(s, n->relname, n->extra ? n->extra : "");
        PQfreemem(n);
    }
    return ERR_OK;
}

void
store__pg_listen_close(void *conn)
{
    PQfinish(conn);
}
