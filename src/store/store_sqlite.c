/*
 * store_sqlite.c: the SQLite engine (the one file that includes <sqlite3.h>).
 *
 * Each connection opens the file in WAL mode with synchronous=FULL, so a
 * commit that returned survives power loss. Statements are prepared once per
 * connection (SQLITE_PREPARE_PERSISTENT) and `$N` parameters are mapped to
 * SQLite's parameter indexes at prepare time. Results are copied out
 * completely before store_query returns, so the statement is reset at once
 * and no error can appear in the middle of an iteration.
 */
#include "store/store_int.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

struct sq_conn {
    sqlite3 *db;
};

/* A prepared statement plus the index of each $N parameter. */
struct sq_stmt {
    sqlite3_stmt *stmt;
    int n_map;
    int map[]; /* map[k-1] = SQLite index of $k, 0 if $k is unused */
};

struct sq_cell {
    bool is_null;
    int64_t i;
    const char *text;
    size_t len;
};

struct sq_rows {
    struct bb_arena arena;
    struct sq_cell *cells; /* nrows * ncols */
    int cap_rows;
};

static enum err
sq_error(struct store_conn *c, int rc, const char *what, struct bb_error *e)
{
    struct sq_conn *sc = c->impl;
    int primary = rc & 0xff;
    const char *msg = sc && sc->db ? sqlite3_errmsg(sc->db) : sqlite3_errstr(rc);
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        return bb_fail(e, ERR_RETRY, "", "database is busy");
    if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return bb_fail(e, ERR_CONFLICT, "", "unique constraint: %s", msg);
    log_error_limited(10, "store.sqlite_error", "what=%s code=%d message=%s", what, rc, msg);
    if (primary == SQLITE_FULL || primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN)
        return bb_fail(e, ERR_UNAVAILABLE, "", "database file unavailable: %s", msg);
    return bb_fail(e, ERR_STORE, "", "database error: %s", msg);
}

static enum err
sq_exec_script(struct store_conn *c, const char *sql, struct bb_error *e)
{
    struct sq_conn *sc = c->impl;
    int rc = sqlite3_exec(sc->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? ERR_OK : sq_error(c, rc, "exec", e);
}

static enum err
sq_connect(struct store *s, struct store_conn *c, struct bb_error *e)
{
    struct sq_conn *sc = xcalloc(1, sizeof *sc);
    c->impl = sc;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(s->sqlite_path, &sc->db, flags, NULL);
    if (rc != SQLITE_OK) {
        enum err r = bb_fail(e, ERR_UNAVAILABLE, "db", "cannot open sqlite database %s: %s",
                             s->sqlite_path, sc->db ? sqlite3_errmsg(sc->db) : sqlite3_errstr(rc));
        sqlite3_close_v2(sc->db);
        free(sc);
        c->impl = NULL;
        return r;
    }
    sqlite3_busy_timeout(sc->db, (int)s->opt.busy_timeout_ms);
    sqlite3_extended_result_codes(sc->db, 1);
    /* WAL + FULL: readers never block the writer, and every commit is synced
     * before it returns. */
    enum err r = sq_exec_script(c,
                                "PRAGMA journal_mode=WAL;"
                                "PRAGMA synchronous=FULL;"
                                "PRAGMA foreign_keys=ON;"
                                "PRAGMA temp_store=MEMORY;",
                                e);
    if (r != ERR_OK) {
        sqlite3_close_v2(sc->db);
        free(sc);
        c->impl = NULL;
    }
    return r;
}

static void
sq_disconnect(struct store_conn *c)
{
    struct sq_conn *sc = c->impl;
    if (sc == NULL)
        return;
    for (size_t i = 0; i < c->n_prepared; i++) {
        struct sq_stmt *p = c->prepared[i];
        if (p) {
            sqlite3_finalize(p->stmt);
            free(p);
            c->prepared[i] = NULL;
        }
    }
    sqlite3_close_v2(sc->db);
    free(sc);
    c->impl = NULL;
}

static enum err
sq_prepare(struct store_conn *c, struct store_stmt *st, struct sq_stmt **out, struct bb_error *e)
{
    int slot = store__stmt_slot(st);
    store__conn_reserve(c, slot);
    if (c->prepared[slot]) {
        *out = c->prepared[slot];
        return ERR_OK;
    }
    struct sq_conn *sc = c->impl;
    sqlite3_stmt *stmt;
    const char *sql = store__stmt_sql(st, STORE_SQLITE);
    int rc = sqlite3_prepare_v3(sc->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
    if (rc != SQLITE_OK)
        return sq_error(c, rc, "prepare", e);
    int count = sqlite3_bind_parameter_count(stmt);
    struct sq_stmt *p = xcalloc(1, sizeof *p + (size_t)count * sizeof(int));
    p->stmt = stmt;
    p->n_map = count;
    for (int idx = 1; idx <= count; idx++) {
        const char *name = sqlite3_bind_parameter_name(stmt, idx);
        char *end = NULL;
        long k = name && name[0] == '$' ? strtol(name + 1, &end, 10) : 0;
        if (k < 1 || k > count || end == NULL || *end != '\0') {
            sqlite3_finalize(stmt);
            free(p);
            return bb_fail(e, ERR_INTERNAL, "", "statement parameters must be $1..$n: %.80s", sql);
        }
        p->map[k - 1] = idx;
    }
    c->prepared[slot] = p;
    *out = p;
    return ERR_OK;
}

static enum err
sq_bind(struct store_conn *c, struct sq_stmt *p, const struct store_param *params, size_t n,
        struct bb_error *e)
{
    if ((size_t)p->n_map > n)
        return bb_fail(e, ERR_INTERNAL, "", "statement wants %d parameters, got %zu", p->n_map, n);
    for (int k = 0; k < p->n_map; k++) {
        int idx = p->map[k];
        const struct store_param *v = &params[k];
        int rc;
        if (v->type == STORE_T_INT)
            rc = sqlite3_bind_int64(p->stmt, idx, v->i);
        else if (v->type == STORE_T_TEXT)
            rc = sqlite3_bind_text64(p->stmt, idx, v->s, v->len, SQLITE_STATIC, SQLITE_UTF8);
        else
            rc = sqlite3_bind_null(p->stmt, idx);
        if (rc != SQLITE_OK)
            return sq_error(c, rc, "bind", e);
    }
    return ERR_OK;
}

/* Copy the current row of `stmt` into `rows`. */
static void
sq_copy_row(struct sq_rows *rows, struct store_rows *out, sqlite3_stmt *stmt)
{
    if (out->nrows == rows->cap_rows) {
        rows->cap_rows = rows->cap_rows ? rows->cap_rows * 2 : 4;
        rows->cells = xrealloc(rows->cells,
                               (size_t)rows->cap_rows * (size_t)out->ncols * sizeof *rows->cells);
    }
    struct sq_cell *row = &rows->cells[(size_t)out->nrows * (size_t)out->ncols];
    for (int col = 0; col < out->ncols; col++) {
        struct sq_cell *cell = &row[col];
        memset(cell, 0, sizeof *cell);
        switch (sqlite3_column_type(stmt, col)) {
        case SQLITE_NULL:
            cell->is_null = true;
            cell->text = "";
            break;
        case SQLITE_INTEGER:
            cell->i = sqlite3_column_int64(stmt, col);
            cell->text = bb_arena_printf(&rows->arena, "%lld", (long long)cell->i);
            cell->len = strlen(cell->text);
            break;
        default: {
            const unsigned char *t = sqlite3_column_text(stmt, col);
            size_t len = (size_t)sqlite3_column_bytes(stmt, col);
            char *copy = bb_arena_alloc(&rows->arena, len + 1);
            if (len)
                memcpy(copy, t, len);
            copy[len] = '\0';
            cell->text = copy;
            cell->len = len;
            cell->i = strtoll(copy, NULL, 10);
        }
        }
    }
    out->nrows++;
}

static enum err
sq_query(struct store_conn *c, struct store_stmt *st, const struct store_param *params, size_t n,
         struct store_rows *out, int64_t *changes, struct bb_error *e)
{
    struct sq_stmt *p = NULL;
    enum err rc = sq_prepare(c, st, &p, e);
    if (rc != ERR_OK)
        return rc;
    rc = sq_bind(c, p, params, n, e);
    struct sq_rows *rows = NULL;
    if (rc == ERR_OK && out) {
        rows = xcalloc(1, sizeof *rows);
        bb_arena_init(&rows->arena);
        out->ncols = sqlite3_column_count(p->stmt);
        out->impl = rows;
    }
    while (rc == ERR_OK) {
        int s = sqlite3_step(p->stmt);
        if (s == SQLITE_DONE)
            break;
        if (s != SQLITE_ROW) {
            rc = sq_error(c, s, "step", e);
            break;
        }
        if (rows)
            sq_copy_row(rows, out, p->stmt);
    }
    if (rc == ERR_OK && changes)
        *changes = sqlite3_changes64(((struct sq_conn *)c->impl)->db);
    sqlite3_reset(p->stmt);
    sqlite3_clear_bindings(p->stmt);
    if (rc != ERR_OK && out)
        store_rows_close(out);
    return rc;
}

/* In-process statements cost no round trip: bind, step, reset, per row. */
static enum err
sq_exec_many(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
             size_t n_params, size_t n_rows, int64_t *first_ints, struct bb_error *e)
{
    struct sq_stmt *p = NULL;
    enum err rc = sq_prepare(c, st, &p, e);
    for (size_t row = 0; row < n_rows && rc == ERR_OK; row++) {
        rc = sq_bind(c, p, params + row * n_params, n_params, e);
        if (first_ints)
            first_ints[row] = 0;
        bool first = true;
        while (rc == ERR_OK) {
            int step = sqlite3_step(p->stmt);
            if (step == SQLITE_DONE)
                break;
            if (step != SQLITE_ROW) {
                rc = sq_error(c, step, "step", e);
                break;
            }
            if (first && first_ints)
                first_ints[row] = sqlite3_column_int64(p->stmt, 0);
            first = false;
        }
        sqlite3_reset(p->stmt);
        sqlite3_clear_bindings(p->stmt);
    }
    return rc;
}

static void
sq_rows_free(struct store_rows *r)
{
    struct sq_rows *rows = r->impl;
    bb_arena_deinit(&rows->arena);
    free(rows->cells);
    free(rows);
}

static const struct sq_cell *
sq_cell(const struct store_rows *r, int col)
{
    const struct sq_rows *rows = r->impl;
    return &rows->cells[(size_t)r->row * (size_t)r->ncols + (size_t)col];
}

static bool
sq_col_is_null(const struct store_rows *r, int col)
{
    return sq_cell(r, col)->is_null;
}

static int64_t
sq_col_int(const struct store_rows *r, int col)
{
    return sq_cell(r, col)->i;
}

static const char *
sq_col_text(const struct store_rows *r, int col)
{
    return sq_cell(r, col)->text;
}

static size_t
sq_col_len(const struct store_rows *r, int col)
{
    return sq_cell(r, col)->len;
}

/* BEGIN IMMEDIATE for writes: a writer queues for the lock up front instead
 * of failing at commit. */
static enum err
sq_begin(struct store_conn *c, enum store_txn mode, struct bb_error *e)
{
    return sq_exec_script(c, mode == STORE_WRITE ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED", e);
}

static enum err
sq_commit(struct store_conn *c, struct bb_error *e)
{
    enum err rc = sq_exec_script(c, "COMMIT", e);
    if (rc != ERR_OK) {
        struct bb_error ignored;
        (void)sq_exec_script(c, "ROLLBACK", &ignored);
        return rc;
    }
    store__notes_deliver(c); /* one process owns the file: local delivery is all */
    return ERR_OK;
}

static void
sq_rollback(struct store_conn *c)
{
    struct bb_error ignored;
    /* A failed ROLLBACK means SQLite already rolled back (or the handle is
     * gone): nothing is left to undo either way. */
    (void)sq_exec_script(c, "ROLLBACK", &ignored);
}

static bool
sq_is_broken(const struct store_conn *c)
{
    return c->impl == NULL;
}

const struct store__ops store__sqlite_ops = {
    .engine = STORE_SQLITE,
    .connect = sq_connect,
    .disconnect = sq_disconnect,
    .exec_script = sq_exec_script,
    .query = sq_query,
    .exec_many = sq_exec_many,
    .rows_free = sq_rows_free,
    .col_is_null = sq_col_is_null,
    .col_int = sq_col_int,
    .col_text = sq_col_text,
    .col_len = sq_col_len,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .is_broken = sq_is_broken,
};
