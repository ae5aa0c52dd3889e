/*
 * store_int.h: what the store's files share and nothing outside store/ sees.
 *
 * Each engine fills one `struct store__ops` (SQLite's VFS idea: one vtable,
 * many backends). store.c holds the engine-neutral parts (parameters,
 * statement slots, rows, transactions), store_exec.c the executor threads and
 * notification dispatch, store_migrate.c migrations.
 */
#ifndef BB_STORE_INT_H
#define BB_STORE_INT_H

#include "store/store.h"

#include <pthread.h>

struct store__ops {
    enum store_engine engine;
    /* Open c->impl for the store's URL. */
    enum err (*connect)(struct store *s, struct store_conn *c, struct bb_error *e);
    void (*disconnect)(struct store_conn *c);
    /* Run SQL text without parameters (may hold several statements). */
    enum err (*exec_script)(struct store_conn *c, const char *sql, struct bb_error *e);
    /* Run a prepared statement; fill `out` if non-NULL, else report changes. */
    enum err (*query)(struct store_conn *c, struct store_stmt *st, const struct store_param *p,
                      size_t n, struct store_rows *out, int64_t *changes, struct bb_error *e);
    /* store_exec_deferred for this engine; NULL: run at once (query). */
    enum err (*defer)(struct store_conn *c, struct store_stmt *st, const struct store_param *p,
                      size_t n, struct bb_error *e);
    /* store_exec_many for this engine. */
    enum err (*exec_many)(struct store_conn *c, struct store_stmt *st, const struct store_param *p,
                          size_t n_params, size_t n_rows, int64_t *first_ints, struct bb_error *e);
    void (*rows_free)(struct store_rows *r);
    bool (*col_is_null)(const struct store_rows *r, int col);
    int64_t (*col_int)(const struct store_rows *r, int col);
    const char *(*col_text)(const struct store_rows *r, int col);
    size_t (*col_len)(const struct store_rows *r, int col);
    /* Transactions. `commit` also publishes the notifications queued in
     * c->notes: SQLite delivers them in-process after the commit, PostgreSQL
     * sends them with the COMMIT (every process's listener gets them). On
     * failure the transaction is rolled back. */
    enum err (*begin)(struct store_conn *c, enum store_txn mode, struct bb_error *e);
    enum err (*commit)(struct store_conn *c, struct bb_error *e);
    void (*rollback)(struct store_conn *c);
    /* store_each_statement_commits for this engine; NULL: nothing to do. */
    void (*each_statement_commits)(struct store_conn *c);
    /* Connection unusable (server gone): drop and reconnect before reuse. */
    bool (*is_broken)(const struct store_conn *c);
};

extern const struct store__ops store__sqlite_ops;
extern const struct store__ops store__pg_ops;

struct store__note {
    char *channel;
    char *payload;
};

struct store__after {
    store_after_fn *fn;
    void *arg;
};

struct store_conn {
    struct store *store;
    const struct store__ops *ops;
    void *impl;
    void **prepared; /* indexed by store_stmt.slot; engine-owned handles */
    size_t n_prepared;
    bool in_txn;
    /* Notifications raised in the open transaction, published by commit;
     * a unit that rolls back to its savepoint drops its own. */
    struct store__note *notes;
    size_t n_notes;
    size_t cap_notes;
    /* store_after_commit's callbacks, the same way. */
    struct store__after *afters;
    size_t n_afters;
    size_t cap_afters;
};

struct store__sub {
    char channel[64];
    store_listen_fn *fn;
    void *arg;
};

struct store__item;
struct store__queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct store__item *head; /* guarded by mu */
    struct store__item *tail; /* guarded by mu */
    size_t len;               /* guarded by mu */
    bool stopping;            /* guarded by mu */
};

struct store {
    struct store_options opt;
    char *url;
    char *sqlite_path; /* SQLite: the file */
    const struct store__ops *ops;
    int owner_fd; /* SQLite exclusive ownership lock, -1 if none */

    /* Executor. SQLite: `writeq` has one thread, `readq` pool_size threads.
     * PostgreSQL: both names point at one queue served by pool_size threads. */
    struct store__queue queues[2];
    struct store__queue *writeq;
    struct store__queue *readq;
    pthread_t *threads;
    size_t n_threads;

    /* Subscriptions. Lock order: subs_mu before nothing else; callbacks are
     * invoked with subs_mu held so store_unlisten can wait them out. */
    pthread_mutex_t subs_mu;
    struct store__sub *subs; /* guarded by subs_mu */
    size_t n_subs;           /* guarded by subs_mu */
    _Atomic bool subs_changed;

    /* PostgreSQL listener thread (LISTEN/NOTIFY). */
    pthread_t listener;
    bool listener_running;
    int listener_wake_fd; /* eventfd: subscription change or stop */
    _Atomic bool listener_stop;
};

/* Slot of a statement (assigned on first use, process-wide). */
int store__stmt_slot(struct store_stmt *st);
/* The text for this engine. */
const char *store__stmt_sql(const struct store_stmt *st, enum store_engine engine);
/* Make room in c->prepared for `slot`. */
void store__conn_reserve(struct store_conn *c, int slot);

/* Open/close a connection without the public wrappers' bookkeeping. */
enum err store__conn_connect(struct store *s, struct store_conn **out, struct bb_error *e);

/* Deliver a notification to local subscribers of `channel` (payload NULL:
 * to every subscriber, meaning "recheck"). */
void store__dispatch(struct store *s, const char *channel, const char *payload);
/* Drop notes queued after position `keep` (a unit rolled back). */
void store__notes_truncate(struct store_conn *c, size_t keep);
/* Call the store_after_commit callbacks after position `keep`, with
 * `committed`, and drop them. */
void store__afters_run(struct store_conn *c, size_t keep, bool committed);
void store__notes_deliver(struct store_conn *c);

/* Executor and listener lifecycle (store_exec.c). */
enum err store__exec_start(struct store *s, struct bb_error *e);
void store__exec_stop(struct store *s);
enum err store__listener_start(struct store *s, struct bb_error *e);
void store__listener_stop(struct store *s);
/* PostgreSQL listener connection primitives (store_pg.c). */
void *store__pg_listen_connect(struct store *s, struct bb_error *e);
int store__pg_listen_socket(void *conn);
enum err store__pg_listen_channel(void *conn, const char *channel);
/* Read pending notifications; calls store__dispatch for each. ERR_UNAVAILABLE
 * when the connection broke. */
enum err store__pg_listen_consume(struct store *s, void *conn);
void store__pg_listen_close(void *conn);

/* Metrics the store keeps (registered by store_open). */
void store__metrics_register(void);
void store__metrics_batch(enum store_engine engine, size_t n_units, int64_t commit_ns, bool ok);
void store__metrics_retry(enum store_engine engine);
void store__metrics_group_fallback(enum store_engine engine);
void store__metrics_queue_depth(size_t depth);

#endif /* BB_STORE_INT_H */
