/*
 * store.c: the engine-neutral half of the store: URLs, opening and closing,
 * statement slots, parameters, rows, transactions and the store's metrics.
 * Engine specifics live behind `struct store__ops` in store_sqlite.c and
 * store_pg.c.
 */
#include "store/store.h"

#include "metrics/metrics.h"
#include "store/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static _Atomic int next_slot = 1;

struct store_param
sp_text(const char *s)
{
    if (s == NULL)
        return sp_null();
    return (struct store_param){.type = STORE_T_TEXT, .s = s, .len = strlen(s)};
}

struct store_param
sp_textn(const char *s, size_t len)
{
    if (s == NULL)
        return sp_null();
    return (struct store_param){.type = STORE_T_TEXT, .s = s, .len = len};
}

/* ---- batches --------------------------------------------------------------------------- */

void
store_batch_init(struct store_batch *b, const struct store_conn *c, size_t n_cols)
{
    BB_ASSERT(n_cols > 0);
    memset(b, 0, sizeof *b);
    b->engine = store_conn_engine(c);
    b->n_cols = n_cols;
    bb_buf_init(&b->json);
    if (b->engine == STORE_POSTGRES) {
        b->arrays = xcalloc(n_cols, sizeof *b->arrays);
        for (size_t i = 0; i < n_cols; i++) {
            bb_buf_init(&b->arrays[i]);
            bb_buf_append(&b->arrays[i], "{", 1);
        }
    } else {
        bb_buf_append(&b->json, "[", 1);
    }
}

void
store_batch_deinit(struct store_batch *b)
{
    bb_buf_deinit(&b->json);
    if (b->arrays) {
        for (size_t i = 0; i < b->n_cols; i++)
            bb_buf_deinit(&b->arrays[i]);
        free(b->arrays);
    }
    memset(b, 0, sizeof *b);
}

void
store_batch_row(struct store_batch *b)
{
    BB_ASSERT(!b->finished && (b->n_rows == 0 || b->col == b->n_cols));
    if (b->engine == STORE_SQLITE && b->n_rows > 0)
        bb_buf_puts(&b->json, b->list ? "," : "},");
    b->n_rows++;
    b->col = 0;
}

/* Where the next column's value goes: its array's separator written
 * (PostgreSQL), or its key (SQLite). */
static struct bb_buf *
batch_column(struct store_batch *b, const char *name)
{
    BB_ASSERT(!b->finished && b->n_rows > 0 && b->col < b->n_cols);
    BB_ASSERT(name != NULL || b->n_cols == 1);
    size_t col = b->col++;
    if (b->engine == STORE_POSTGRES) {
        struct bb_buf *a = &b->arrays[col];
        if (b->n_rows > 1)
            bb_buf_append(a, ",", 1);
        return a;
    }
    if (name == NULL) {
        b->list = true;
        return &b->json;
    }
    bb_buf_append(&b->json, col == 0 ? "{" : ",", 1);
    bb_buf_json_string(&b->json, name);
    bb_buf_append(&b->json, ":", 1);
    return &b->json;
}

/* An array element: quoted, with " and \ escaped (unquoted, an element
 * would be read as NULL or split at a comma or brace). */
static void
array_text(struct bb_buf *a, const char *s, size_t len)
{
    bb_buf_append(a, "\"", 1);
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '"' && s[i] != '\\')
            continue;
        bb_buf_append(a, s + from, i - from);
        bb_buf_append(a, "\\", 1);
        from = i;
    }
    bb_buf_append(a, s + from, len - from);
    bb_buf_append(a, "\"", 1);
}

void
store_batch_text(struct store_batch *b, const char *name, const char *v)
{
    struct bb_buf *out = batch_column(b, name);
    if (v == NULL)
        bb_buf_puts(out, b->engine == STORE_POSTGRES ? "NULL" : "null");
    else if (b->engine == STORE_POSTGRES)
        array_text(out, v, strlen(v));
    else
        bb_buf_json_string(out, v);
}

void
store_batch_int(struct store_batch *b, const char *name, int64_t v)
{
    bb_buf_int(batch_column(b, name), v);
}

void
store_batch_bool(struct store_batch *b, const char *name, bool v)
{
    struct bb_buf *out = batch_column(b, name);
    if (b->engine == STORE_POSTGRES)
        bb_buf_puts(out, v ? "t" : "f");
    else
        bb_buf_puts(out, v ? "true" : "false");
}

void
store_batch_json(struct store_batch *b, const char *name, const json_t *v)
{
    if (b->engine == STORE_SQLITE || v == NULL) {
        struct bb_buf *out = batch_column(b, name);
        if (v == NULL)
            bb_buf_puts(out, b->engine == STORE_POSTGRES ? "NULL" : "null");
        else
            bb_buf_json_value(out, v);
        return;
    }
    struct bb_buf text;
    bb_buf_init(&text);
    bb_buf_json_value(&text, v);
    array_text(batch_column(b, name), text.data, text.len);
    bb_buf_deinit(&text);
}

void
store_batch_ints(struct store_batch *b, const struct store_conn *c, const int64_t *v, size_t n)
{
    store_batch_init(b, c, 1);
    for (size_t i = 0; i < n; i++) {
        store_batch_row(b);
        store_batch_int(b, NULL, v[i]);
    }
}

void
store_batch_texts(struct store_batch *b, const struct store_conn *c, const char *const *v, size_t n)
{
    store_batch_init(b, c, 1);
    for (size_t i = 0; i < n; i++) {
        store_batch_row(b);
        store_batch_text(b, NULL, v[i]);
    }
}

struct store_param
sp_batch(struct store_batch *b)
{
    BB_ASSERT(b->n_rows == 0 || b->col == b->n_cols);
    if (!b->finished) {
        b->finished = true;
        if (b->engine == STORE_POSTGRES) {
            for (size_t i = 0; i < b->n_cols; i++)
                bb_buf_append(&b->arrays[i], "}", 1);
        } else {
            bool objects = b->n_rows > 0 && !b->list;
            bb_buf_puts(&b->json, objects ? "}]" : "]");
        }
    }
    return (struct store_param){.type = STORE_T_BATCH, .batch = b};
}

enum { PARAMS_MAX = 64 };

/* `params` with each batch spread into what its engine binds (see struct
 * store_batch): into `out` (PARAMS_MAX), or `params` itself when there is
 * no batch. */
static const struct store_param *
params_bound(const struct store_conn *c, const struct store_param *params, size_t *n,
             struct store_param *out)
{
    bool any = false;
    for (size_t i = 0; i < *n && !any; i++)
        any = params[i].type == STORE_T_BATCH;
    if (!any)
        return params;
    size_t m = 0;
    for (size_t i = 0; i < *n; i++) {
        const struct store_batch *b = params[i].batch;
        if (params[i].type != STORE_T_BATCH) {
            BB_ASSERT(m < PARAMS_MAX);
            out[m++] = params[i];
            continue;
        }
        BB_ASSERT(b->finished && b->engine == store_conn_engine(c));
        if (b->engine == STORE_SQLITE) {
            BB_ASSERT(m < PARAMS_MAX);
            out[m++] = sp_textn(b->json.data, b->json.len);
            continue;
        }
        for (size_t k = 0; k < b->n_cols; k++) {
            BB_ASSERT(m < PARAMS_MAX);
            out[m++] = sp_textn(b->arrays[k].data, b->arrays[k].len);
        }
    }
    *n = m;
    return out;
}

int
store__stmt_slot(struct store_stmt *st)
{
    int slot = atomic_load(&st->slot);
    if (slot != 0)
        return slot;
    int fresh = atomic_fetch_add(&next_slot, 1);
    int expected = 0;
    if (atomic_compare_exchange_strong(&st->slot, &expected, fresh))
        return fresh;
    return expected; /* another thread assigned it first; `fresh` stays unused */
}

const char *
store__stmt_sql(const struct store_stmt *st, enum store_engine engine)
{
    if (engine == STORE_POSTGRES && st->sql_pg)
        return st->sql_pg;
    if (engine == STORE_SQLITE && st->sql_sqlite)
        return st->sql_sqlite;
    return st->sql;
}

void
store__conn_reserve(struct store_conn *c, int slot)
{
    if ((size_t)slot < c->n_prepared)
        return;
    size_t n = c->n_prepared ? c->n_prepared : 16;
    while (n <= (size_t)slot)
        n *= 2;
    c->prepared = xrealloc(c->prepared, n * sizeof *c->prepared);
    memset(c->prepared + c->n_prepared, 0, (n - c->n_prepared) * sizeof *c->prepared);
    c->n_prepared = n;
}

const char *
store_engine_name(enum store_engine engine)
{
    return engine == STORE_SQLITE ? "sqlite" : "postgres";
}

enum store_engine
store_engine_of(const struct store *s)
{
    return s->ops->engine;
}

void
store_options_defaults(struct store_options *o, const char *url)
{
    bool pg =
        url && (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0);
    o->url = url;
    /* PostgreSQL groups concurrent commits itself, so each thread runs one
     * unit per transaction; SQLite has one writer, which groups. */
    o->pool_size = pg ? 8 : 2;
    o->batch_max = pg ? 1 : 256;
    o->queue_max = 65536;
    o->busy_timeout_ms = 5000;
    o->exclusive = false;
    o->replan_first_ms = 1000;
}

/* Parse the URL into an engine (and, for SQLite, a path). */
static enum err
store_parse_url(struct store *s, const char *url, struct bb_error *e)
{
    if (url == NULL || *url == '\0')
        return bb_fail(e, ERR_INVALID, "db", "database URL is empty");
    if (strncmp(url, "sqlite:", 7) == 0) {
        const char *path = url + 7;
        if (strncmp(path, "//", 2) == 0)
            path += 2;
        if (*path == '\0')
            return bb_fail(e, ERR_INVALID, "db", "sqlite URL needs a path: sqlite:PATH");
        s->ops = &store__sqlite_ops;
        s->sqlite_path = xstrdup(path);
        return ERR_OK;
    }
    if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0) {
        s->ops = &store__pg_ops;
        return ERR_OK;
    }
    return bb_fail(e, ERR_INVALID, "db",
                   "unsupported database URL '%.64s': use sqlite:PATH or postgres://...", url);
}

/* SQLite has one owning process (in-process wake-ups depend on it): hold an
 * exclusive flock on PATH.owner for the store's lifetime. */
static enum err
store_take_ownership(struct store *s, struct bb_error *e)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s.owner", s->sqlite_path) >= sizeof path)
        return bb_fail(e, ERR_INVALID, "db", "sqlite path too long");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return bb_fail(e, ERR_UNAVAILABLE, "db", "cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return bb_fail(e, ERR_UNAVAILABLE, "db",
                       "%s is in use by another backbone process (one process owns a SQLite "
                       "database; reach it over HTTP, or use PostgreSQL for several)",
                       s->sqlite_path);
    }
    s->owner_fd = fd;
    return ERR_OK;
}

enum err
store_open(const struct store_options *o, struct store **out, struct bb_error *e)
{
    struct store *s = xcalloc(1, sizeof *s);
    s->opt = *o;
    s->owner_fd = -1;
    s->listener_wake_fd = -1;
    pthread_mutex_init(&s->subs_mu, NULL);
    enum err rc = store_parse_url(s, o->url, e);
    if (rc != ERR_OK)
        goto fail;
    s->url = xstrdup(o->url);
    s->opt.url = s->url;
    if (s->opt.pool_size < 1)
        s->opt.pool_size = 1;
    if (s->opt.batch_max < 1)
        s->opt.batch_max = 1;
    if (s->opt.queue_max < 1)
        s->opt.queue_max = 1;
    store__metrics_register();
    if (s->ops->engine == STORE_SQLITE && o->exclusive) {
        rc = store_take_ownership(s, e);
        if (rc != ERR_OK)
            goto fail;
    }
    /* One connection up front, so a bad URL fails here with a clear error. */
    struct store_conn *probe;
    rc = store_conn_open(s, &probe, e);
    if (rc != ERR_OK)
        goto fail;
    store_conn_close(probe);
    rc = store__exec_start(s, e);
    if (rc != ERR_OK)
        goto fail;
    *out = s;
    return ERR_OK;
fail:
    store_close(s);
    return rc;
}

void
store_close(struct store *s)
{
    if (s == NULL)
        return;
    store__listener_stop(s);
    store__exec_stop(s);
    free(s->subs);
    pthread_mutex_destroy(&s->subs_mu);
    if (s->owner_fd >= 0)
        close(s->owner_fd);
    free(s->sqlite_path);
    free(s->url);
    free(s);
}

enum err
store__conn_connect(struct store *s, struct store_conn **out, struct bb_error *e)
{
    struct store_conn *c = xcalloc(1, sizeof *c);
    c->store = s;
    c->ops = s->ops;
    enum err rc = s->ops->connect(s, c, e);
    if (rc != ERR_OK) {
        free(c);
        return rc;
    }
    *out = c;
    return ERR_OK;
}

enum err
store_conn_open(struct store *s, struct store_conn **out, struct bb_error *e)
{
    return store__conn_connect(s, out, e);
}

void
store_conn_close(struct store_conn *c)
{
    if (c == NULL)
        return;
    if (c->in_txn)
        store_rollback(c);
    c->ops->disconnect(c); /* frees the prepared handles too */
    store__notes_truncate(c, 0);
    free(c->notes);
    store__afters_run(c, 0, false);
    free(c->afters);
    free(c->prepared);
    free(c);
}

enum store_engine
store_conn_engine(const struct store_conn *c)
{
    return c->ops->engine;
}

/* A statement failing as one the database refused would (fault points). */
static enum err
statement_fault(struct bb_error *e)
{
    return bb_fail(e, ERR_STORE, "", "injected fault: the statement failed");
}

enum err
store_query(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
            size_t n_params, struct store_rows *out, struct bb_error *e)
{
    memset(out, 0, sizeof *out);
    out->engine = c->ops->engine;
    out->row = -1;
    if (bb_fault("store.statement"))
        return statement_fault(e);
    struct store_param bound[PARAMS_MAX];
    params = params_bound(c, params, &n_params, bound);
    return c->ops->query(c, st, params, n_params, out, NULL, e);
}

enum err
store_exec(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
           size_t n_params, int64_t *changes, struct bb_error *e)
{
    if (bb_fault("store.statement"))
        return statement_fault(e);
    int64_t n = 0;
    struct store_param bound[PARAMS_MAX];
    params = params_bound(c, params, &n_params, bound);
    enum err rc = c->ops->query(c, st, params, n_params, NULL, &n, e);
    if (rc == ERR_OK && changes)
        *changes = n;
    return rc;
}

enum err
store_exec_deferred(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
                    size_t n_params, struct bb_error *e)
{
    if (bb_fault("store.statement"))
        return statement_fault(e);
    struct store_param bound[PARAMS_MAX];
    params = params_bound(c, params, &n_params, bound);
    if (c->ops->defer == NULL)
        return c->ops->query(c, st, params, n_params, NULL, NULL, e);
    return c->ops->defer(c, st, params, n_params, e);
}

enum err
store_exec_many(struct store_conn *c, struct store_stmt *st, const struct store_param *params,
                size_t n_params, size_t n_rows, int64_t *first_ints, struct bb_error *e)
{
    if (n_rows == 0)
        return ERR_OK;
    if (bb_fault("store.statement"))
        return statement_fault(e);
    for (size_t i = 0; i < n_params * n_rows; i++)
        BB_ASSERT(params[i].type != STORE_T_BATCH);
    return c->ops->exec_many(c, st, params, n_params, n_rows, first_ints, e);
}

bool
store_next(struct store_rows *r)
{
    if (r->row + 1 >= r->nrows)
        return false;
    r->row++;
    return true;
}

static const struct store__ops *
rows_ops(const struct store_rows *r)
{
    return r->engine == STORE_SQLITE ? &store__sqlite_ops : &store__pg_ops;
}

bool
store_col_is_null(const struct store_rows *r, int col)
{
    BB_ASSERT(r->row >= 0 && r->row < r->nrows && col >= 0 && col < r->ncols);
    return rows_ops(r)->col_is_null(r, col);
}

int64_t
store_col_int(const struct store_rows *r, int col)
{
    BB_ASSERT(r->row >= 0 && r->row < r->nrows && col >= 0 && col < r->ncols);
    return rows_ops(r)->col_int(r, col);
}

const char *
store_col_text(const struct store_rows *r, int col)
{
    BB_ASSERT(r->row >= 0 && r->row < r->nrows && col >= 0 && col < r->ncols);
    return rows_ops(r)->col_text(r, col);
}

size_t
store_col_len(const struct store_rows *r, int col)
{
    BB_ASSERT(r->row >= 0 && r->row < r->nrows && col >= 0 && col < r->ncols);
    return rows_ops(r)->col_len(r, col);
}

void
store_rows_close(struct store_rows *r)
{
    if (r->impl)
        rows_ops(r)->rows_free(r);
    r->impl = NULL;
    r->nrows = 0;
}

enum err
store_begin(struct store_conn *c, enum store_txn mode, struct bb_error *e)
{
    BB_ASSERT(!c->in_txn);
    enum err rc = c->ops->begin(c, mode, e);
    if (rc == ERR_OK)
        c->in_txn = true;
    return rc;
}

enum err
store_commit(struct store_conn *c, struct bb_error *e)
{
    BB_ASSERT(c->in_txn);
    enum err rc;
    if (bb_fault("store.commit")) {
        c->ops->rollback(c);
        rc = bb_fail(e, ERR_STORE, "", "injected fault: the commit failed");
    } else {
        rc = c->ops->commit(c, e);
        /* The commit's answer lost on the way: the caller cannot tell. */
        if (rc == ERR_OK && bb_fault("store.commit_lost"))
            rc = bb_fail(e, ERR_STORE, "", "injected fault: the commit's answer was lost");
    }
    c->in_txn = false;
    store__notes_truncate(c, 0);
    store__afters_run(c, 0, rc == ERR_OK);
    return rc;
}

void
store_each_statement_commits(struct store_conn *c)
{
    BB_ASSERT(c->in_txn);
    if (c->ops->each_statement_commits)
        c->ops->each_statement_commits(c);
}

void
store_rollback(struct store_conn *c)
{
    if (!c->in_txn)
        return;
    c->ops->rollback(c);
    c->in_txn = false;
    store__notes_truncate(c, 0);
    store__afters_run(c, 0, false);
}

enum err
store_ping(struct store_conn *c, struct bb_error *e)
{
    static struct store_stmt ping = {.sql = "SELECT 1"};
    struct store_rows r;
    enum err rc = store_query(c, &ping, NULL, 0, &r, e);
    if (rc != ERR_OK)
        return rc;
    bool ok = store_next(&r) && store_col_int(&r, 0) == 1;
    store_rows_close(&r);
    return ok ? ERR_OK : bb_fail(e, ERR_STORE, "", "SELECT 1 returned no row");
}

static bool
channel_is_valid(const char *channel)
{
    size_t n = strlen(channel);
    if (n == 0 || n > 63)
        return false;
    for (const char *p = channel; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    }
    return true;
}

enum err
store_notify(struct store_conn *c, const char *channel, const char *payload, struct bb_error *e)
{
    BB_ASSERT(channel_is_valid(channel));
    if (strlen(payload) > 7999)
        return bb_fail(e, ERR_INVALID, "", "notification payload longer than 7999 bytes");
    if (!c->in_txn) {
        /* Outside a transaction: a transaction of its own. */
        enum err rc = store_begin(c, STORE_WRITE, e);
        if (rc != ERR_OK)
            return rc;
        rc = store_notify(c, channel, payload, e);
        return rc == ERR_OK ? store_commit(c, e) : rc;
    }
    if (c->n_notes == c->cap_notes) {
        c->cap_notes = c->cap_notes ? c->cap_notes * 2 : 8;
        c->notes = xrealloc(c->notes, c->cap_notes * sizeof *c->notes);
    }
    c->notes[c->n_notes].channel = xstrdup(channel);
    c->notes[c->n_notes].payload = xstrdup(payload);
    c->n_notes++;
    return ERR_OK;
}

void
store__notes_truncate(struct store_conn *c, size_t keep)
{
    while (c->n_notes > keep) {
        c->n_notes--;
        free(c->notes[c->n_notes].channel);
        free(c->notes[c->n_notes].payload);
    }
}

void
store_after_commit(struct store_conn *c, store_after_fn *fn, void *arg)
{
    if (!c->in_txn) {
        fn(arg, true);
        return;
    }
    if (c->n_afters == c->cap_afters) {
        c->cap_afters = c->cap_afters ? c->cap_afters * 2 : 8;
        c->afters = xrealloc(c->afters, c->cap_afters * sizeof *c->afters);
    }
    c->afters[c->n_afters++] = (struct store__after){.fn = fn, .arg = arg};
}

struct count_later {
    struct metrics_def *def;
    double n;
    char *labels[METRICS_MAX_LABELS];
};

static void
count_end(void *arg, bool committed)
{
    struct count_later *x = arg;
    if (committed)
        metrics_series_add(metrics_series_get(x->def, (const char *const *)x->labels), x->n);
    for (size_t i = 0; i < METRICS_MAX_LABELS; i++)
        free(x->labels[i]);
    free(x);
}

void
store_count_at_commit(struct store_conn *c, struct metrics_def *def, double n,
                      const char *const *labels)
{
    struct count_later *x = xcalloc(1, sizeof *x);
    x->def = def;
    x->n = n;
    for (size_t i = 0; i < METRICS_MAX_LABELS && def->labels[i]; i++)
        x->labels[i] = xstrdup(labels[i]);
    store_after_commit(c, count_end, x);
}

void
store__afters_run(struct store_conn *c, size_t keep, bool committed)
{
    /* In the order they were added; a callback may not add more. */
    size_t n = c->n_afters;
    for (size_t i = keep; i < n; i++)
        c->afters[i].fn(c->afters[i].arg, committed);
    c->n_afters = keep;
}

void
store__notes_deliver(struct store_conn *c)
{
    for (size_t i = 0; i < c->n_notes; i++)
        store__dispatch(c->store, c->notes[i].channel, c->notes[i].payload);
}

enum err
store_listen(struct store *s, const char *channel, store_listen_fn *fn, void *arg)
{
    BB_ASSERT(channel_is_valid(channel));
    pthread_mutex_lock(&s->subs_mu);
    s->subs = xrealloc(s->subs, (s->n_subs + 1) * sizeof *s->subs);
    struct store__sub *sub = &s->subs[s->n_subs++];
    bb_strlcpy(sub->channel, channel, sizeof sub->channel);
    sub->fn = fn;
    sub->arg = arg;
    pthread_mutex_unlock(&s->subs_mu);
    s->subs_changed = true;
    if (s->ops->engine == STORE_POSTGRES)
        return store__listener_start(s, NULL);
    return ERR_OK;
}

void
store_unlisten(struct store *s, store_listen_fn *fn, void *arg)
{
    pthread_mutex_lock(&s->subs_mu);
    size_t k = 0;
    for (size_t i = 0; i < s->n_subs; i++) {
        if (s->subs[i].fn != fn || s->subs[i].arg != arg)
            s->subs[k++] = s->subs[i];
    }
    s->n_subs = k;
    pthread_mutex_unlock(&s->subs_mu);
}

void
store__dispatch(struct store *s, const char *channel, const char *payload)
{
    /* A notification lost on its way (PostgreSQL drops them for a listener
     * whose connection broke); the "may have missed" recheck is not. */
    if (payload != NULL && bb_fault("store.notification"))
        return;
    pthread_mutex_lock(&s->subs_mu);
    for (size_t i = 0; i < s->n_subs; i++) {
        if (payload == NULL || strcmp(s->subs[i].channel, channel) == 0)
            s->subs[i].fn(s->subs[i].arg, s->subs[i].channel, payload);
    }
    pthread_mutex_unlock(&s->subs_mu);
}

/* ---- metrics ----------------------------------------------------------------- */

static const double BATCH_BUCKETS[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

static struct metrics_def M_TXN = {
    .name = "backbone_store_transactions_total",
    .help = "Write transactions run by the store executor, by engine and result "
            "(committed, rolled_back).",
    .type = METRICS_COUNTER,
    .labels = {"engine", "result"},
};
static struct metrics_def M_BATCH = {
    .name = "backbone_store_batch_units",
    .help = "Units of work grouped into one write transaction (group commit).",
    .type = METRICS_HISTOGRAM,
    .labels = {"engine"},
    .buckets = BATCH_BUCKETS,
    .n_buckets = BB_ARRAY_LEN(BATCH_BUCKETS),
};
static struct metrics_def M_COMMIT = {
    .name = "backbone_store_transaction_duration_seconds",
    .help = "Time from BEGIN to the end of COMMIT of executor transactions.",
    .type = METRICS_HISTOGRAM,
    .labels = {"engine"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};
static struct metrics_def M_RETRY = {
    .name = "backbone_store_conflict_retries_total",
    .help = "Units of work retried after a busy or serialization conflict.",
    .type = METRICS_COUNTER,
    .labels = {"engine"},
};
static struct metrics_def M_GROUP_ALONE = {
    .name = "backbone_store_group_fallbacks_total",
    .help = "Groups of units whose shared transaction failed as a whole; each unit then ran alone.",
    .type = METRICS_COUNTER,
    .labels = {"engine"},
};
#ifdef BB_FAULTS
static struct metrics_def M_FAULTS = {
    .name = "backbone_faults_injected_total",
    .help = "Failures injected at each fault point (test builds only).",
    .type = METRICS_COUNTER,
    .labels = {"point"},
};

static void
count_fault(const char *point)
{
    metrics_add(&M_FAULTS, 1, point);
}
#endif
static struct metrics_def M_QUEUE = {
    .name = "backbone_store_queue_depth",
    .help = "Units of work waiting for an executor thread.",
    .type = METRICS_GAUGE,
};

void
store__metrics_register(void)
{
    metrics_register(&M_TXN);
    metrics_register(&M_BATCH);
    metrics_register(&M_COMMIT);
    metrics_register(&M_RETRY);
    metrics_register(&M_QUEUE);
    metrics_register(&M_GROUP_ALONE);
#ifdef BB_FAULTS
    metrics_register(&M_FAULTS);
    bb_faults_on_inject(count_fault); /* every point's, the store's and others' */
#endif
}

void
store__metrics_batch(enum store_engine engine, size_t n_units, int64_t commit_ns, bool ok)
{
    const char *eng = store_engine_name(engine);
    metrics_add(&M_TXN, 1, eng, ok ? "committed" : "rolled_back");
    metrics_observe(&M_BATCH, (double)n_units, eng);
    metrics_observe(&M_COMMIT, (double)commit_ns / 1e9, eng);
}

void
store__metrics_retry(enum store_engine engine)
{
    metrics_add(&M_RETRY, 1, store_engine_name(engine));
}

void
store__metrics_group_fallback(enum store_engine engine)
{
    metrics_add(&M_GROUP_ALONE, 1, store_engine_name(engine));
}

void
store__metrics_queue_depth(size_t depth)
{
    metrics_set(&M_QUEUE, (double)depth);
}
