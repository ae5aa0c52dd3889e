/*
 * store_pg.c: the PostgreSQL engine (the one file that includes <libpq-fe.h>).
 *
 * Statements are prepared per connection under the name "bb<slot>", with
 * parameter types taken from the first call (int8 for integers, text for
 * strings). Integers travel as decimal text, strings in binary format (their
 * raw bytes with a length), so no string needs a NUL terminator and nothing
 * is ever spliced into SQL text. Results come back in text format.
 */
#include "store/store_int.h"

#include <libpq-fe.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { PG_INT8OID = 20, PG_TEXTOID = 25, PG_MAX_PARAMS = 64 };

struct pg_conn {
    PGconn *pg;
};

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
        bb_strlcpy(err, PQerrorMessage(pg), err_len);
        size_t n = strlen(err);
        while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
            err[--n] = '\0';
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

static enum err
pg_connect(struct store *s, struct store_conn *c, struct bb_error *e)
{
    char err[512];
    PGconn *pg = pg_connect_url(s->url, err, sizeof err);
    if (pg == NULL)
        return bb_fail(e, ERR_UNAVAILABLE, "db", "cannot connect to PostgreSQL: %s", err);
    struct pg_conn *pc = xcalloc(1, sizeof *pc);
    pc->pg = pg;
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
    PQfinish(pc->pg);
    free(pc);
    c->impl = NULL;
}

static enum err
pg_exec_script(struct store_conn *c, const char *sql, struct bb_error *e)
{
    struct pg_conn *pc = c->impl;
    PGresult *res = PQexec(pc->pg, sql);
    ExecStatusType st = PQresultStatus(res);
    enum err rc = ERR_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = pg_error(c, res, "exec", e);
    PQclear(res);
    return rc;
}

/* The prepared-statement marker: any non-NULL pointer will do. */
static char pg_prepared_marker;

static enum err
pg_prepare(struct store_conn *c, struct store_stmt *st, const struct store_param *params, size_t n,
           char *name, size_t name_len, struct bb_error *e)
{
    int slot = store__stmt_slot(st);
    snprintf(name, name_len, "bb%d", slot);
    store__conn_reserve(c, slot);
    if (c->prepared[slot])
        return ERR_OK;
    Oid types[PG_MAX_PARAMS];
    for (size_t i = 0; i < n; i++)
        types[i] = params[i].type == STORE_T_INT    ? PG_INT8OID
                   : params[i].type == STORE_T_TEXT ? PG_TEXTOID
                                                    : 0;
    struct pg_conn *pc = c->impl;
    PGresult *res = PQprepare(pc->pg, name, store__stmt_sql(st, STORE_POSTGRES), (int)n, types);
    enum err rc = ERR_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = pg_error(c, res, "prepare", e);
    PQclear(res);
    if (rc == ERR_OK)
        c->prepared[slot] = &pg_prepared_marker;
    return rc;
}

static enum err
pg_query(struct store_conn *c, struct store_stmt *st, const struct store_param *params, size_t n,
         struct store_rows *out, int64_t *changes, struct bb_error *e)
{
    if (n > PG_MAX_PARAMS)
        return bb_fail(e, ERR_INTERNAL, "", "too many statement parameters (%zu)", n);
    char name[32];
    enum err rc = pg_prepare(c, st, params, n, name, sizeof name, e);
    if (rc != ERR_OK)
        return rc;
    const char *values[PG_MAX_PARAMS];
    int lengths[PG_MAX_PARAMS];
    int formats[PG_MAX_PARAMS];
    char ints[PG_MAX_PARAMS][24];
    for (size_t i = 0; i < n; i++) {
        const struct store_param *p = &params[i];
        lengths[i] = 0;
        formats[i] = 0;
        if (p->type == STORE_T_INT) {
            snprintf(ints[i], sizeof ints[i], "%" PRId64, p->i);
            values[i] = ints[i];
        } else if (p->type == STORE_T_TEXT) {
            if (p->len > INT32_MAX)
                return bb_fail(e, ERR_TOO_LARGE, "", "parameter too large");
            values[i] = p->s;
            lengths[i] = (int)p->len;
            formats[i] = 1; /* binary text: raw bytes, no terminator needed */
        } else {
            values[i] = NULL;
        }
    }
    struct pg_conn *pc = c->impl;
    PGresult *res = PQexecPrepared(pc->pg, name, (int)n, values, lengths, formats, 0);
    ExecStatusType status = PQresultStatus(res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        rc = pg_error(c, res, "query", e);
        PQclear(res);
        return rc;
    }
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

static enum err
pg_notify(struct store_conn *c, const char *channel, const char *payload, struct bb_error *e)
{
    static struct store_stmt notify = {.sql = "SELECT pg_notify($1, $2)"};
    const struct store_param p[] = {sp_text(channel), sp_text(payload)};
    return store_exec(c, &notify, p, 2, NULL, e);
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
    .rows_free = pg_rows_free,
    .col_is_null = pg_col_is_null,
    .col_int = pg_col_int,
    .col_text = pg_col_text,
    .col_len = pg_col_len,
    .notify = pg_notify,
    .is_broken = pg_is_broken,
    /* READ COMMITTED gives each statement its own snapshot either way, so a
     * read needs no BEGIN/COMMIT round trips. */
    .begin_read_sql = NULL,
    .begin_write_sql = "BEGIN",
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
