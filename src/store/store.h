/*
 * store: one small database interface over two engines, SQLite (embedded
 * default, WAL, synchronous=FULL) and PostgreSQL (libpq).
 *
 * Three levels, lowest first:
 *   - connections and statements: store_conn_open, store_query/store_exec
 *     with bound parameters only ($1..$n in the SQL text on both engines);
 *   - transactions: store_begin/commit/rollback on a connection;
 *   - the executor: store_submit hands a unit of work to the store's own
 *     threads, which run it inside a transaction and group the commits of
 *     concurrent units into one (one fsync for many requests). Busy and
 *     serialization conflicts are retried there. Callers are told the outcome
 *     only after the commit is durable.
 * Plus versioned migrations per module, and notifications (PostgreSQL
 * LISTEN/NOTIFY; in-process delivery on SQLite).
 *
 * Thread-safety: a `struct store` may be used from any thread. A
 * `struct store_conn` belongs to one thread at a time.
 */
#ifndef BB_STORE_H
#define BB_STORE_H

#include "base/base.h"

enum store_engine { STORE_SQLITE, STORE_POSTGRES };

struct store;
struct store_conn;

struct store_options {
    const char *url; /* "sqlite:PATH" or "postgres://..." / "postgresql://..." */
    int pool_size;   /* executor threads (PostgreSQL connections, SQLite readers) */
    int batch_max;   /* most units of work grouped into one write transaction */
    int queue_max;   /* pending units before store_submit answers ERR_OVERLOADED */
    int64_t busy_timeout_ms;
    bool exclusive; /* SQLite: refuse to open a file another process owns */
    /* PostgreSQL: a connection drops its cached query plans this long after
     * it opens, then twice as long after that, and so on up to every 10
     * minutes, so that no plan outlives the table sizes it was made for. */
    int64_t replan_first_ms;
};

/* Defaults suited to the engine the URL names. */
void store_options_defaults(struct store_options *o, const char *url);

/*
 * Open the store: checks the URL, connects once (so a bad URL or an
 * unreachable server fails here) and starts the executor threads.
 * Errors: ERR_INVALID (URL), ERR_UNAVAILABLE (cannot connect, or the SQLite
 * file is owned by another process), ERR_STORE.
 */
BB_WUR enum err store_open(const struct store_options *o, struct store **out, struct bb_error *e);
/* Finish queued work, stop the threads, close every connection. NULL is fine. */
void store_close(struct store *s);

enum store_engine store_engine_of(const struct store *s);
const char *store_engine_name(enum store_engine engine);

/* ---- statements ----------------------------------------------------------- */

/*
 * A statement, declared once as a static and prepared lazily on each
 * connection that runs it. `sql` serves both engines unless an engine's own
 * text is given. Parameters are written $1..$n on both engines.
 */
struct store_stmt {
    const char *sql;
    const char *sql_pg;
    const char *sql_sqlite;
    _Atomic int slot; /* private: index of the prepared handle on a connection */
};

enum store_type { STORE_T_NULL, STORE_T_INT, STORE_T_TEXT, STORE_T_BATCH };

struct store_batch;

struct store_param {
    enum store_type type;
    int64_t i;
    const char *s;
    size_t len;
    const struct store_batch *batch;
};

static inline struct store_param
sp_int(int64_t v)
{
    return (struct store_param){.type = STORE_T_INT, .i = v};
}

/* Text parameter; NULL binds SQL NULL. The string is borrowed for the call. */
struct store_param sp_text(const char *s);
struct store_param sp_textn(const char *s, size_t len);

static inline struct store_param
sp_null(void)
{
    return (struct store_param){.type = STORE_T_NULL};
}

/*
 * Result rows, fully read when store_query returns (so no error can surface
 * halfway through iteration). Column values stay valid until
 * store_rows_close.
 */
struct store_rows {
    enum store_engine engine;
    int nrows;
    int ncols;
    int row; /* current row, -1 before the first store_next */
    void *impl;
};

BB_WUR enum err store_query(struct store_conn *c, struct store_stmt *st,
                            const struct store_param *params, size_t n_params,
                            struct store_rows *out, struct bb_error *e);
/* Run a statement that returns no rows; *changes (if non-NULL) gets the
 * number of rows inserted, updated or deleted. */
BB_WUR enum err store_exec(struct store_conn *c, struct store_stmt *st,
                           const struct store_param *params, size_t n_params, int64_t *changes,
                           struct bb_error *e);
/*
 * Run a write the transaction does not branch on: no changes count wanted,
 * and no constraint it can break but by a bug (an event appended, an
 * attempt recorded). PostgreSQL sends it ahead of the transaction's next command
 * (or its COMMIT) instead of waiting a round trip for it; should it fail,
 * that command reports the failure as ERR_STORE (ERR_RETRY for a conflict
 * worth retrying) and the transaction is rolled back. Outside a write
 * transaction, and on SQLite, it runs at once.
 */
BB_WUR enum err store_exec_deferred(struct store_conn *c, struct store_stmt *st,
                                    const struct store_param *params, size_t n_params,
                                    struct bb_error *e);
/*
 * Run `st` once per row of parameters (`params` holds n_rows rows of
 * n_params, row after row), in order, as if by n_rows store_exec calls, but
 * without a round trip each on PostgreSQL (pipelined). If `first_ints` is
 * non-NULL it receives, per row, the first column of the statement's first
 * result row (an INSERT ... RETURNING id), or 0 when it returned none.
 */
BB_WUR enum err store_exec_many(struct store_conn *c, struct store_stmt *st,
                                const struct store_param *params, size_t n_params, size_t n_rows,
                                int64_t *first_ints, struct bb_error *e);
/*
 * A batch statement's rows, bound as one parameter (sp_batch), written
 * straight into the text each engine reads fastest:
 * - PostgreSQL gets one text-format array per column, bound as consecutive
 *   parameters: a batch of three columns at $1 is $1, $2 and $3, and the
 *   statement's next parameter is $4. Its text reads them with
 *   `unnest($1::text[], $2::bigint[], $3::boolean[]) AS x(a, b, c)`: an
 *   array's text costs it a fraction of what the same rows' JSON did,
 *   parsed once by the cast and again by json_to_recordset.
 * - SQLite gets one JSON array of objects keyed by the column names
 *   ([{"a":"x","b":1,"c":true},...]), read with json_each and
 *   `value ->> 'a'`.
 * A batch of one column written with a NULL name is a list: an array on
 * PostgreSQL (`= ANY($1::text[])`), a JSON array of the values on SQLite.
 * Every row writes its columns in the same order. Strings must be UTF-8, as
 * every string that came through jansson or was made here is.
 *
 *     struct store_batch b;
 *     store_batch_init(&b, c, 2);
 *     for (...) {
 *         store_batch_row(&b);
 *         store_batch_text(&b, "id", id);
 *         store_batch_int(&b, "n", n);
 *     }
 *     struct store_param p[] = {sp_batch(&b), sp_int(now)};
 *     rc = store_exec(c, &st, p, 2, NULL, e);
 *     store_batch_deinit(&b);
 */
struct store_batch {
    enum store_engine engine;
    size_t n_cols;
    size_t n_rows;
    size_t col;            /* columns written to the open row */
    bool list;             /* SQLite: a list's values, not objects */
    bool finished;         /* sp_batch closed the texts */
    struct bb_buf json;    /* SQLite */
    struct bb_buf *arrays; /* PostgreSQL: one per column */
};
void store_batch_init(struct store_batch *b, const struct store_conn *c, size_t n_cols);
void store_batch_deinit(struct store_batch *b);
/* Start the next row; the one before must have all its columns. */
void store_batch_row(struct store_batch *b);
void store_batch_text(struct store_batch *b, const char *name, const char *v); /* NULL: null */
void store_batch_int(struct store_batch *b, const char *name, int64_t v);
void store_batch_bool(struct store_batch *b, const char *name, bool v);
/* `v` as compact JSON text (bb_json_dumps); NULL: null. PostgreSQL reads it
 * from a text[] column, SQLite with `value ->> 'name'`: both verbatim. */
void store_batch_json(struct store_batch *b, const char *name, const json_t *v);
/* A list of `n` values: store_batch_init with one column, then a row
 * each. */
void store_batch_ints(struct store_batch *b, const struct store_conn *c, const int64_t *v,
                      size_t n);
void store_batch_texts(struct store_batch *b, const struct store_conn *c, const char *const *v,
                       size_t n);
/* The batch as a parameter (closing its rows: nothing more can be added);
 * it borrows `b` until the call it is passed to returns. Not for
 * store_exec_many. */
struct store_param sp_batch(struct store_batch *b);

bool store_next(struct store_rows *r);
bool store_col_is_null(const struct store_rows *r, int col);
int64_t store_col_int(const struct store_rows *r, int col);
const char *store_col_text(const struct store_rows *r, int col); /* "" for NULL */
size_t store_col_len(const struct store_rows *r, int col);
void store_rows_close(struct store_rows *r);

/* ---- connections and transactions ---------------------------------------- */

BB_WUR enum err store_conn_open(struct store *s, struct store_conn **out, struct bb_error *e);
void store_conn_close(struct store_conn *c);
enum store_engine store_conn_engine(const struct store_conn *c);

enum store_txn { STORE_READ, STORE_WRITE };

/* BEGIN (SQLite: BEGIN IMMEDIATE for writes, so writers queue up front
 * instead of failing at commit). */
BB_WUR enum err store_begin(struct store_conn *c, enum store_txn mode, struct bb_error *e);
BB_WUR enum err store_commit(struct store_conn *c, struct bb_error *e);
void store_rollback(struct store_conn *c);
/* SELECT 1: the database answers. */
BB_WUR enum err store_ping(struct store_conn *c, struct bb_error *e);
/*
 * Called by a unit of work before its first statement: let each statement
 * of the unit commit by itself where that saves a round trip. On PostgreSQL,
 * for a unit alone in its transaction, its statements then run as
 * autocommit statements (each on disk before it answers) and the
 * notifications it queued go out after them, in a transaction of their own:
 * a one-statement write costs one round trip instead of two. Elsewhere
 * (SQLite, whose writes share one commit anyway; a unit batched with others)
 * nothing changes. Only for a unit whose every statement stands on its own:
 * stopped or failed after any statement, it must leave the data correct (a
 * failure no longer undoes the writes before it), and running it again
 * after any of them must be harmless. The store.commit fault point then
 * fails a commit that has nothing left to undo: the unit's answer is lost,
 * as with store.commit_lost.
 */
void store_each_statement_commits(struct store_conn *c);

/* ---- the executor ---------------------------------------------------------- */

/*
 * A unit of work: runs on a store thread inside a transaction and must touch
 * nothing but the database and `arg` (it may run more than once when a
 * conflict forces a retry). Returning anything but ERR_OK rolls back the
 * unit's own changes only. ERR_RETRY asks for a retry.
 */
typedef enum err store_work_fn(struct store_conn *c, void *arg, struct bb_error *e);
/* Called once per submitted unit, on a store thread, after the commit (or
 * the failure) is final. `e` is NULL on success. */
typedef void store_done_fn(void *arg, enum err rc, const struct bb_error *e);

/*
 * Queue `work`. On ERR_OK, `done` will be called exactly once. On failure
 * (ERR_OVERLOADED: the queue is full; ERR_UNAVAILABLE: the store is
 * stopping) `done` is never called.
 */
BB_WUR enum err store_submit(struct store *s, enum store_txn mode, store_work_fn *work,
                             store_done_fn *done, void *arg);
/*
 * Units of one group may share a transaction, on both engines: an executor
 * thread that takes one also takes up to `max` - 1 more of the group that
 * wait in the queue, and runs `many` once for all of their args, with one
 * statement per table. `many` sets rcs[i] (and errors[i]) per unit; a unit
 * it fails must have written nothing. If `many` itself fails, the
 * transaction rolls back and each unit runs alone (its own `work`). A unit
 * taken alone runs its `work`. For work that touches no row another
 * unit of the group may hold (so batches cannot wait on one another).
 * backbone_store_group_fallbacks_total counts the groups that failed.
 */
typedef enum err store_many_fn(struct store_conn *c, void *const *args, size_t n, enum err *rcs,
                               struct bb_error *errors, void *ctx, struct bb_error *e);
struct store_group {
    store_many_fn *many;
    void *ctx;
    size_t max;
};
BB_WUR enum err store_submit_grouped(struct store *s, enum store_txn mode,
                                     const struct store_group *g, store_work_fn *work,
                                     store_done_fn *done, void *arg);
/* store_run for a unit of a group (`many` gets `arg` for it). */
BB_WUR enum err store_run_grouped(struct store *s, enum store_txn mode, const struct store_group *g,
                                  store_work_fn *work, void *arg, struct bb_error *e);

/* Submit and wait for the outcome (CLI, tests, start-up). */
BB_WUR enum err store_run(struct store *s, enum store_txn mode, store_work_fn *work, void *arg,
                          struct bb_error *e);

/* ---- notifications ----------------------------------------------------------- */

/*
 * Queue a notification inside the open transaction; it is delivered to
 * every listener (in every process, on PostgreSQL) after the commit, and
 * dropped if the transaction or the unit rolls back. Outside a transaction
 * it is sent at once. channel: [a-z0-9_], at most 63 bytes; payload at most
 * 7999 bytes.
 */
BB_WUR enum err store_notify(struct store_conn *c, const char *channel, const char *payload,
                             struct bb_error *e);
/*
 * Callback for a channel. `payload` NULL means "notifications may have been
 * missed" (the listener reconnected): recheck everything. Runs on a store
 * thread; keep it short.
 */
typedef void store_listen_fn(void *arg, const char *channel, const char *payload);
BB_WUR enum err store_listen(struct store *s, const char *channel, store_listen_fn *fn, void *arg);
/* Remove every subscription with this fn and arg. Once it returns, fn is
 * not running and will not be called again for them. */
void store_unlisten(struct store *s, store_listen_fn *fn, void *arg);

/*
 * Call fn(arg, true) on this connection's thread once the open transaction
 * has committed (before the unit's caller hears of it), or fn(arg, false)
 * when it or the unit rolls back instead (or the commit fails), exactly
 * once either way. Outside a transaction: fn(arg, true) at once. For work
 * that must follow a commit in this process (a job to run here), not for
 * anything that needs the database.
 */
typedef void store_after_fn(void *arg, bool committed);
void store_after_commit(struct store_conn *c, store_after_fn *fn, void *arg);
/* Add `n` to the series of counter `def` named by `labels` (one per label
 * of `def`, copied) once the open transaction commits, and not at all when
 * it rolls back: what a unit did counts once, however often it ran. */
struct metrics_def;
void store_count_at_commit(struct store_conn *c, struct metrics_def *def, double n,
                           const char *const *labels);

/* ---- migrations ------------------------------------------------------------- */

/* One schema step of a module; versions start at 1 and grow by 1. */
struct store_migration {
    int version;
    const char *name;
    const char *sqlite;
    const char *pg;
    /* A data step run after the SQL, in the same transaction (NULL: none). */
    enum err (*after)(struct store_conn *c, struct bb_error *e);
};

/*
 * Apply the module's migrations not yet applied, each in its own
 * transaction, recorded in `schema_migrations(module, version)`. Safe to run
 * from several processes at once (PostgreSQL: an advisory lock; SQLite:
 * BEGIN IMMEDIATE). `*applied` (if non-NULL) gets how many ran.
 */
BB_WUR enum err store_migrate(struct store_conn *c, const char *module,
                              const struct store_migration *m, size_t n, int *applied,
                              struct bb_error *e);

/* ---- idempotency records --------------------------------------------------- */

/*
 * For APIs that take an Idempotency-Key: the first request with a key does
 * the work and saves its answer; a later one with the same key and the same
 * request (fingerprint: a hash of its canonical form) gets that answer back;
 * the same key with another request is refused. Both calls run inside the
 * caller's transaction, so the work and the answer commit together; a
 * request that failed is not remembered. Scopes keep APIs apart.
 */
enum { STORE_IDEM_KEY_MAX = 255 };
struct store_idem {
    bool replay; /* a saved answer for this same request: send it */
    int status;
    char *body; /* heap; JSON text or NULL */
};
/* Visible ASCII, 1..STORE_IDEM_KEY_MAX bytes. */
bool store_idem_key_is_valid(const char *key);
/* ERR_OK and !out->replay: the key is new and held by this transaction (a
 * concurrent request with it waits, then replays); do the work, then
 * store_idem_save. ERR_OK and out->replay: answer with out->status/body.
 * ERR_IDEMPOTENCY_MISMATCH: the key went with another request. ERR_INVALID:
 * a malformed key (field "Idempotency-Key"). */
BB_WUR enum err store_idem_claim(struct store_conn *c, const char *scope, const char *key,
                                 const char *fingerprint, int64_t now_ms, struct store_idem *out,
                                 struct bb_error *e);
BB_WUR enum err store_idem_save(struct store_conn *c, const char *scope, const char *key,
                                int status, const char *body, struct bb_error *e);
void store_idem_deinit(struct store_idem *i);
/* Forget up to `limit` records older than `before_ms`; *n gets how many. */
BB_WUR enum err store_idem_prune(struct store_conn *c, int64_t before_ms, int64_t limit, int64_t *n,
                                 struct bb_error *e);
const struct store_migration *store_idem_migrations(size_t *n);

#endif /* BB_STORE_H */
