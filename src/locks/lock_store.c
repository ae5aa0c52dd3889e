/*
 * lock_store.c: locks and fences in the database.
 *
 * Every transition is one conditional write, so that it costs one statement
 * and holds no row lock across round trips:
 *   acquire: an upsert whose DO UPDATE ... WHERE only matches a row that is
 *            free, expired, or held by the same owner; its CASE expressions
 *            are lock_state.c's decision table written in SQL (a test holds
 *            the two to each other on both engines);
 *   renew:   UPDATE ... WHERE token = $token AND the lease is live;
 *   release: UPDATE ... WHERE token = $token AND someone holds it.
 * A release announces itself (a notification that wakes blocking acquires in
 * every process) only while `waiters_until_ms` says someone may be waiting:
 * an acquire that is refused and will wait raises that mark to its own
 * deadline, in the same statement that reads the holder. Releases nobody
 * waits for stay silent, which is most of them.
 * Only when the write matches nothing do we read the row, to say why, using
 * lock_state.c; if the row turns out to allow the transition after all (it
 * changed between the two statements), the unit answers ERR_RETRY and the
 * executor runs it again.
 * So each statement stands on its own, and the HTTP units of renewals,
 * releases, fenced writes and acquires that do not wait let each commit by
 * itself (store_each_statement_commits): on PostgreSQL such a grant or
 * release is one round trip. An acquire that will wait keeps its refused
 * upsert and its mark in one transaction: split, the waiters of a busy lock
 * were served less in turn (p99 of a hand-over 65 -> 175 ms). Callers inside
 * a larger transaction keep it whole.
 */
#include "locks/locks_int.h"

#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "locks and fences",
        .sqlite = "CREATE TABLE locks ("
                  " name TEXT PRIMARY KEY,"
                  " owner TEXT,"
                  " token INTEGER NOT NULL,"
                  " epoch INTEGER NOT NULL,"
                  " expires_at_ms INTEGER,"
                  " acquired_at_ms INTEGER,"
                  " updated_at_ms INTEGER NOT NULL,"
                  " grant_kind INTEGER NOT NULL,"
                  " waiters_until_ms INTEGER NOT NULL DEFAULT 0"
                  ") WITHOUT ROWID;"
                  "CREATE TABLE fences ("
                  " key TEXT PRIMARY KEY,"
                  " token INTEGER NOT NULL,"
                  " value TEXT,"
                  " updated_at_ms INTEGER NOT NULL"
                  ") WITHOUT ROWID;",
        .pg = "CREATE TABLE locks ("
              " name TEXT PRIMARY KEY,"
              " owner TEXT,"
              " token BIGINT NOT NULL,"
              " epoch BIGINT NOT NULL,"
              " expires_at_ms BIGINT,"
              " acquired_at_ms BIGINT,"
              " updated_at_ms BIGINT NOT NULL,"
              " grant_kind INTEGER NOT NULL,"
              " waiters_until_ms BIGINT NOT NULL DEFAULT 0);"
              "CREATE TABLE fences ("
              " key TEXT PRIMARY KEY,"
              " token BIGINT NOT NULL,"
              " value TEXT,"
              " updated_at_ms BIGINT NOT NULL);",
    },
    {
        /* A lock is renewed and released, a fence raised again, within a
         * second or two of their insert: small rows, half a page left for
         * their new versions, so they stay in place (HOT). */
        .version = 2,
        .name = "locks and fences leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE locks SET (fillfactor = 50);"
              "ALTER TABLE fences SET (fillfactor = 50);",
    },
    {
        /* A lock's row stays when it is released (it keeps the token), and
         * the checkout saga takes a lock per order: without an index of the
         * held ones, listing and counting them (GET /locks, the
         * backbone_locks_held gauge) read every lock ever taken. */
        .version = 3,
        .name = "held locks by name",
        .sqlite = "CREATE INDEX locks_held ON locks (name) WHERE owner IS NOT NULL;",
        .pg = "CREATE INDEX locks_held ON locks (name) WHERE owner IS NOT NULL;",
    },
};

const struct store_migration *
lock_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

/* The statement reports the outcome in the enum's own numbering. */
_Static_assert(LOCK_GRANTED == 0 && LOCK_REENTERED == 1 && LOCK_TAKEOVER == 2,
               "grant_kind values are enum lock_outcome");

#define LOCK_COLUMNS "owner, token, epoch, expires_at_ms, acquired_at_ms"

static struct store_stmt LOCK_SELECT = {
    .sql = "SELECT " LOCK_COLUMNS " FROM locks WHERE name = $1",
};
/* $1 name, $2 owner, $3 now, $4 ttl. grant_kind: 0 granted, 1 reentered,
 * 2 takeover (enum lock_outcome). SET expressions see the row as it was. */
/* What an acquire sets on a lock it may take (`now`: the time's parameter). */
#define ACQUIRE_SET(now)                                                               \
    " ON CONFLICT (name) DO UPDATE SET"                                                \
    " owner = excluded.owner,"                                                         \
    " token = CASE WHEN locks.owner = excluded.owner AND locks.expires_at_ms > " now   \
    "   THEN locks.token ELSE locks.token + 1 END,"                                    \
    " epoch = CASE WHEN locks.owner IS NOT NULL AND locks.expires_at_ms <= " now       \
    "   THEN locks.epoch + 1 ELSE locks.epoch END,"                                    \
    " expires_at_ms = excluded.expires_at_ms,"                                         \
    " acquired_at_ms = CASE WHEN locks.owner = excluded.owner"                         \
    "   AND locks.expires_at_ms > " now " THEN locks.acquired_at_ms ELSE " now " END," \
    " updated_at_ms = " now ","                                                        \
    " grant_kind = CASE WHEN locks.owner IS NULL THEN 0"                               \
    "   WHEN locks.owner = excluded.owner AND locks.expires_at_ms > " now " THEN 1"    \
    "   ELSE 2 END"                                                                    \
    " WHERE locks.owner IS NULL OR locks.expires_at_ms <= " now                        \
    "   OR locks.owner = excluded.owner"
static struct store_stmt LOCK_ACQUIRE = {
    .sql = "INSERT INTO locks (name, owner, token, epoch, expires_at_ms, acquired_at_ms,"
           " updated_at_ms, grant_kind) VALUES ($1, $2, 1, 1, $3 + $4, $3, $3, 0)" ACQUIRE_SET(
               "$3") " RETURNING " LOCK_COLUMNS ", grant_kind",
};
/* A batch of (name, owner), then now and ttl; the locks taken in name
 * order. */
static struct store_stmt LOCK_ACQUIRE_MANY = {
    .sql_pg = "INSERT INTO locks (name, owner, token, epoch, expires_at_ms, acquired_at_ms,"
              " updated_at_ms, grant_kind) SELECT name, owner, 1, 1, $3 + $4, $3, $3, 0"
              " FROM unnest($1::text[], $2::text[]) AS x(name, owner)"
              " ORDER BY name" ACQUIRE_SET("$3") " RETURNING name, token",
    .sql_sqlite = "INSERT INTO locks (name, owner, token, epoch, expires_at_ms, acquired_at_ms,"
                  " updated_at_ms, grant_kind) SELECT value ->> 'name', value ->> 'owner', 1, 1,"
                  " $2 + $3, $2, $2, 0 FROM json_each($1) WHERE true"
                  " ORDER BY 1" ACQUIRE_SET("$2") " RETURNING name, token",
};
/* A batch of (name, token), then now. */
static struct store_stmt LOCK_RELEASE_MANY = {
    .sql_pg = "UPDATE locks l SET owner = NULL, expires_at_ms = NULL, acquired_at_ms = NULL,"
              " updated_at_ms = $3 FROM unnest($1::text[], $2::bigint[]) AS x(name, token)"
              " WHERE l.name = x.name AND l.token = x.token AND l.owner IS NOT NULL"
              " RETURNING l.name, l.waiters_until_ms",
    .sql_sqlite = "UPDATE locks SET owner = NULL, expires_at_ms = NULL, acquired_at_ms = NULL,"
                  " updated_at_ms = $2 FROM (SELECT value ->> 'name' AS name,"
                  " value ->> 'token' AS token FROM json_each($1)) AS x"
                  " WHERE locks.name = x.name AND locks.token = x.token"
                  " AND locks.owner IS NOT NULL RETURNING locks.name, locks.waiters_until_ms",
};
/* A batch of (name), then now: the rows of names not held. */
static struct store_stmt LOCK_FORGET_MANY = {
    .sql_pg = "DELETE FROM locks l USING unnest($1::text[]) AS x(name)"
              " WHERE l.name = x.name AND (l.owner IS NULL OR l.expires_at_ms <= $2)",
    .sql_sqlite = "DELETE FROM locks WHERE name IN (SELECT value ->> 'name' FROM json_each($1))"
                  " AND (owner IS NULL OR expires_at_ms <= $2)",
};
/* The same batch: the fences of names that have no lock row (any more). */
static struct store_stmt FENCE_FORGET_MANY = {
    .sql_pg = "DELETE FROM fences f USING unnest($1::text[]) AS x(name) WHERE f.key = x.name"
              " AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.name = f.key)",
    .sql_sqlite = "DELETE FROM fences WHERE key IN (SELECT value ->> 'name' FROM json_each($1))"
                  " AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.name = fences.key)",
};
/* A batch of (name, prefix, owner), then now: a holder named prefix...
 * other than owner lets go. */
static struct store_stmt LOCK_RELEASE_SUPERSEDED_MANY = {
    .sql_pg = "UPDATE locks l SET owner = NULL, expires_at_ms = NULL, acquired_at_ms = NULL,"
              " updated_at_ms = $4 FROM unnest($1::text[], $2::text[], $3::text[])"
              " AS x(name, prefix, owner) WHERE l.name = x.name AND l.owner IS NOT NULL"
              " AND substr(l.owner, 1, length(x.prefix)) = x.prefix AND l.owner <> x.owner"
              " RETURNING l.name, l.waiters_until_ms",
    .sql_sqlite = "UPDATE locks SET owner = NULL, expires_at_ms = NULL, acquired_at_ms = NULL,"
                  " updated_at_ms = $2 FROM (SELECT value ->> 'name' AS name,"
                  " value ->> 'prefix' AS prefix, value ->> 'owner' AS owner"
                  " FROM json_each($1)) AS x WHERE locks.name = x.name"
                  " AND locks.owner IS NOT NULL"
                  " AND substr(locks.owner, 1, length(x.prefix)) = x.prefix"
                  " AND locks.owner <> x.owner RETURNING locks.name, locks.waiters_until_ms",
};
/* $1 name, $2 token, $3 now, $4 ttl */
static struct store_stmt LOCK_RENEW = {
    .sql = "UPDATE locks SET expires_at_ms = $3 + $4, updated_at_ms = $3"
           " WHERE name = $1 AND token = $2 AND owner IS NOT NULL AND expires_at_ms > $3"
           " RETURNING " LOCK_COLUMNS,
};
/* $1 name, $2 token, $3 now */
static struct store_stmt LOCK_RELEASE = {
    .sql = "UPDATE locks SET owner = NULL, expires_at_ms = NULL, acquired_at_ms = NULL,"
           " updated_at_ms = $3 WHERE name = $1 AND token = $2 AND owner IS NOT NULL"
           " RETURNING waiters_until_ms",
};
/* A refused acquire that will wait: note until when, and read the holder;
 * nothing written (and no row) when the mark already covers the deadline,
 * as it does on every retry of a waiting acquire after its first.
 * $1 name, $2 wait deadline (wall ms) */
static struct store_stmt LOCK_MARK_WAITING = {
    .sql = "UPDATE locks SET waiters_until_ms = $2 WHERE name = $1 AND waiters_until_ms < $2"
           " RETURNING " LOCK_COLUMNS,
};
static struct store_stmt LOCK_LIST = {
    .sql = "SELECT name, owner, token, epoch, expires_at_ms, acquired_at_ms FROM locks"
           " WHERE owner IS NOT NULL AND expires_at_ms > $1 AND name > $2"
           " ORDER BY name LIMIT $3",
};
static struct store_stmt LOCK_COUNT = {
    .sql = "SELECT COUNT(*) FROM locks WHERE owner IS NOT NULL AND expires_at_ms > $1",
};
static struct store_stmt FENCE_ADVANCE = {
    .sql = "INSERT INTO fences (key, token, value, updated_at_ms) VALUES ($1, $2, NULL, $3)"
           " ON CONFLICT (key) DO UPDATE SET token = excluded.token,"
           " updated_at_ms = excluded.updated_at_ms"
           " WHERE fences.token <= excluded.token RETURNING token",
};
/* A batch of (key, token), then now. */
static struct store_stmt FENCE_ADVANCE_MANY = {
    .sql_pg = "INSERT INTO fences (key, token, value, updated_at_ms) SELECT key, token, NULL, $3"
              " FROM unnest($1::text[], $2::bigint[]) AS x(key, token) ORDER BY key"
              " ON CONFLICT (key) DO UPDATE SET token = excluded.token,"
              " updated_at_ms = excluded.updated_at_ms"
              " WHERE fences.token <= excluded.token RETURNING key",
    .sql_sqlite = "INSERT INTO fences (key, token, value, updated_at_ms) SELECT value ->> 'key',"
                  " value ->> 'token', NULL, $2 FROM json_each($1) WHERE true ORDER BY 1"
                  " ON CONFLICT (key) DO UPDATE SET token = excluded.token,"
                  " updated_at_ms = excluded.updated_at_ms"
                  " WHERE fences.token <= excluded.token RETURNING key",
};
static struct store_stmt FENCE_PUT = {
    .sql = "INSERT INTO fences (key, token, value, updated_at_ms) VALUES ($1, $2, $4, $3)"
           " ON CONFLICT (key) DO UPDATE SET token = excluded.token, value = excluded.value,"
           " updated_at_ms = excluded.updated_at_ms"
           " WHERE fences.token <= excluded.token RETURNING token",
};
static struct store_stmt FENCE_GET = {
    .sql = "SELECT token, value FROM fences WHERE key = $1",
};

/* The current result row, whose first columns are LOCK_COLUMNS. */
static void
row_from(const struct store_rows *r, struct lock_row *row)
{
    memset(row, 0, sizeof *row);
    row->exists = true;
    row->has_owner = !store_col_is_null(r, 0);
    bb_strlcpy(row->owner, store_col_text(r, 0), sizeof row->owner);
    row->token = store_col_int(r, 1);
    row->epoch = store_col_int(r, 2);
    row->expires_at_ms = store_col_int(r, 3);
    row->acquired_at_ms = store_col_int(r, 4);
}

/* Read the row with `st` ($1 name, and $2 `arg` when the statement takes
 * one); a missing row reads as exists = false. */
static enum err
row_read(struct store_conn *c, struct store_stmt *st, const char *name, int64_t arg,
         struct lock_row *row, struct bb_error *e)
{
    memset(row, 0, sizeof *row);
    struct store_rows r;
    const struct store_param p[] = {sp_text(name), sp_int(arg)};
    enum err rc = store_query(c, st, p, st == &LOCK_SELECT ? 1 : 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r))
        row_from(&r, row);
    store_rows_close(&r);
    return ERR_OK;
}

static void
grant_from_row(const char *name, const struct lock_row *row, bool with_token,
               struct lock_grant *out)
{
    memset(out, 0, sizeof *out);
    bb_strlcpy(out->name, name, sizeof out->name);
    bb_strlcpy(out->owner, row->owner, sizeof out->owner);
    out->token = with_token ? row->token : 0;
    out->epoch = row->epoch;
    out->expires_at_ms = row->expires_at_ms;
    out->acquired_at_ms = row->acquired_at_ms;
}

static enum err
refusal(struct bb_error *e, enum err why, const char *name, const struct lock_row *row,
        int64_t token)
{
    switch (why) {
    case ERR_STALE_TOKEN:
        /* A lock's tokens count its grants from 1: one above the stored
         * token was never handed out (a mistake, or a token of another
         * lock), one below it was and has been superseded. */
        if (token > row->token)
            return bb_fail(e, why, "token", "token %lld was never granted for lock %s",
                           (long long)token, name);
        return bb_fail(e, why, "token",
                       "token %lld is not the current token of lock %s (a newer grant exists)",
                       (long long)token, name);
    case ERR_LOCK_EXPIRED:
        return bb_fail(e, why, "token", "the lease on lock %s ran out; acquire it again", name);
    default:
        return bb_fail(e, ERR_NOT_HELD, "token", "lock %s is not held%s", name,
                       row->exists ? " (released)" : "");
    }
}

enum err
lock_acquire(struct store_conn *c, const char *name, const char *owner, int64_t ttl_ms,
             int64_t now_ms, int64_t wait_until_ms, struct lock_grant *out, enum lock_outcome *how,
             struct bb_error *e)
{
    const struct store_param p[] = {sp_text(name), sp_text(owner), sp_int(now_ms), sp_int(ttl_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &LOCK_ACQUIRE, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    struct lock_row row;
    if (store_next(&r)) {
        row_from(&r, &row);
        *how = (enum lock_outcome)store_col_int(&r, 5);
        store_rows_close(&r);
        grant_from_row(name, &row, true, out);
        return ERR_OK;
    }
    store_rows_close(&r);
    /* Nothing written: someone else holds it. Say who, and if the caller
     * will wait, mark the lock so that its release is announced. */
    rc = ERR_OK;
    row.exists = false;
    if (wait_until_ms > now_ms)
        rc = row_read(c, &LOCK_MARK_WAITING, name, wait_until_ms, &row, e);
    if (rc == ERR_OK && !row.exists)
        rc = row_read(c, &LOCK_SELECT, name, 0, &row, e);
    if (rc != ERR_OK)
        return rc;
    if (locks__decide_acquire(&row, owner, now_ms) != LOCKS__DENY)
        return bb_fail(e, ERR_RETRY, "", "lock %s changed concurrently", name);
    grant_from_row(name, &row, false, out);
    return bb_fail(e, ERR_LOCK_HELD, "", "lock %s is held by another owner", name);
}

enum err
lock_acquire_many(struct store_conn *c, const char *const *names, const char *const *owners,
                  size_t n, int64_t ttl_ms, int64_t now_ms, int64_t *tokens, struct bb_error *e)
{
    struct store_batch rows;
    store_batch_init(&rows, c, 2);
    for (size_t i = 0; i < n; i++) {
        tokens[i] = 0;
        store_batch_row(&rows);
        store_batch_text(&rows, "name", names[i]);
        store_batch_text(&rows, "owner", owners[i]);
    }
    const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms), sp_int(ttl_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &LOCK_ACQUIRE_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&rows);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        const char *name = store_col_text(&r, 0);
        for (size_t i = 0; i < n; i++)
            if (strcmp(names[i], name) == 0)
                tokens[i] = store_col_int(&r, 1);
    }
    store_rows_close(&r);
    return ERR_OK;
}

/* Announce the locks of `r` (name, waiters_until_ms: those a release freed)
 * that someone waits for, after reading every row; closes `r`. */
static enum err
announce_released(struct store_conn *c, struct store_rows *r, int64_t now_ms, int64_t *freed,
                  struct bb_error *e)
{
    json_t *waited = json_array();
    int64_t n = 0;
    for (; store_next(r); n++)
        if (!store_col_is_null(r, 1) && store_col_int(r, 1) > now_ms)
            json_array_append_new(waited, json_string(store_col_text(r, 0)));
    store_rows_close(r);
    if (freed)
        *freed = n;
    enum err rc = ERR_OK;
    size_t i;
    json_t *name;
    json_array_foreach(waited, i, name)
    {
        if (rc == ERR_OK)
            rc = store_notify(c, LOCKS__CHANNEL, json_string_value(name), e);
    }
    json_decref(waited);
    return rc;
}

enum err
lock_release_many(struct store_conn *c, const char *const *names, const int64_t *tokens, size_t n,
                  int64_t now_ms, struct bb_error *e)
{
    struct store_batch rows;
    store_batch_init(&rows, c, 2);
    for (size_t i = 0; i < n; i++) {
        store_batch_row(&rows);
        store_batch_text(&rows, "name", names[i]);
        store_batch_int(&rows, "token", tokens[i]);
    }
    const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &LOCK_RELEASE_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&rows);
    return rc == ERR_OK ? announce_released(c, &r, now_ms, NULL, e) : rc;
}

enum err
lock_forget_many(struct store_conn *c, const char *const *names, size_t n, int64_t now_ms,
                 int64_t *forgotten, struct bb_error *e)
{
    if (forgotten)
        *forgotten = 0;
    if (n == 0)
        return ERR_OK;
    struct store_batch rows;
    store_batch_init(&rows, c, 1);
    for (size_t i = 0; i < n; i++) {
        store_batch_row(&rows);
        store_batch_text(&rows, "name", names[i]);
    }
    const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms)};
    enum err rc = store_exec(c, &LOCK_FORGET_MANY, p, BB_ARRAY_LEN(p), forgotten, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &FENCE_FORGET_MANY, p, 1, NULL, e);
    store_batch_deinit(&rows);
    return rc;
}

enum err
lock_release_superseded_many(struct store_conn *c, const char *const *names,
                             const char *const *prefixes, const char *const *owners, size_t n,
                             int64_t now_ms, int64_t *freed, struct bb_error *e)
{
    struct store_batch rows;
    store_batch_init(&rows, c, 3);
    for (size_t i = 0; i < n; i++) {
        store_batch_row(&rows);
        store_batch_text(&rows, "name", names[i]);
        store_batch_text(&rows, "prefix", prefixes[i]);
        store_batch_text(&rows, "owner", owners[i]);
    }
    const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &LOCK_RELEASE_SUPERSEDED_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&rows);
    return rc == ERR_OK ? announce_released(c, &r, now_ms, freed, e) : rc;
}

enum err
lock_renew(struct store_conn *c, const char *name, int64_t token, int64_t ttl_ms, int64_t now_ms,
           struct lock_grant *out, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(name), sp_int(token), sp_int(now_ms), sp_int(ttl_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &LOCK_RENEW, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    struct lock_row row;
    if (store_next(&r)) {
        row_from(&r, &row);
        store_rows_close(&r);
        grant_from_row(name, &row, true, out);
        return ERR_OK;
    }
    store_rows_close(&r);
    rc = row_read(c, &LOCK_SELECT, name, 0, &row, e);
    if (rc != ERR_OK)
        return rc;
    enum err verdict = locks__decide_renew(&row, token, now_ms);
    if (verdict == ERR_OK)
        return bb_fail(e, ERR_RETRY, "", "lock %s changed concurrently", name);
    return refusal(e, verdict, name, &row, token);
}

enum err
lock_release(struct store_conn *c, const char *name, int64_t token, int64_t now_ms,
             struct bb_error *e)
{
    const struct store_param p[] = {sp_text(name), sp_int(token), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &LOCK_RELEASE, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r)) {
        bool waited_for = store_col_int(&r, 0) > now_ms;
        store_rows_close(&r);
        return waited_for ? store_notify(c, LOCKS__CHANNEL, name, e) : ERR_OK;
    }
    store_rows_close(&r);
    struct lock_row row;
    rc = row_read(c, &LOCK_SELECT, name, 0, &row, e);
    if (rc != ERR_OK)
        return rc;
    bool changes;
    enum err verdict = locks__decide_release(&row, token, now_ms, &changes);
    if (verdict != ERR_OK)
        return refusal(e, verdict, name, &row, token);
    if (changes)
        return bb_fail(e, ERR_RETRY, "", "lock %s changed concurrently", name);
    return ERR_OK; /* released before with this token: idempotent */
}

enum err
lock_get(struct store_conn *c, const char *name, int64_t now_ms, struct lock_grant *out,
         struct bb_error *e)
{
    struct lock_row row;
    enum err rc = row_read(c, &LOCK_SELECT, name, 0, &row, e);
    if (rc != ERR_OK)
        return rc;
    switch (lock_row_state(&row, now_ms)) {
    case LOCK_HELD:
        grant_from_row(name, &row, false, out);
        return ERR_OK;
    case LOCK_EXPIRED:
        return bb_fail(e, ERR_NOT_FOUND, "", "lock %s is not held (its lease ran out)", name);
    case LOCK_FREE:
        break;
    }
    return bb_fail(e, ERR_NOT_FOUND, "", "lock %s is not held (%s)", name,
                   row.exists ? "released" : "never acquired");
}

enum err
lock_list(struct store_conn *c, int64_t now_ms, const char *after, int limit, lock_list_fn *fn,
          void *arg, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(now_ms), sp_text(after ? after : ""), sp_int(limit)};
    enum err rc = store_query(c, &LOCK_LIST, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        struct lock_grant g;
        memset(&g, 0, sizeof g);
        bb_strlcpy(g.name, store_col_text(&r, 0), sizeof g.name);
        bb_strlcpy(g.owner, store_col_text(&r, 1), sizeof g.owner);
        g.epoch = store_col_int(&r, 3);
        g.expires_at_ms = store_col_int(&r, 4);
        g.acquired_at_ms = store_col_int(&r, 5);
        fn(arg, &g);
    }
    store_rows_close(&r);
    return ERR_OK;
}

enum err
lock_count_held(struct store_conn *c, int64_t now_ms, int64_t *out, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(now_ms)};
    enum err rc = store_query(c, &LOCK_COUNT, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    *out = store_next(&r) ? store_col_int(&r, 0) : 0;
    store_rows_close(&r);
    return ERR_OK;
}

/* `token` was refused for `key`: the verdict, naming the highest accepted. */
static enum err
fence_refusal(struct store_conn *c, const char *key, int64_t token, struct bb_error *verdict,
              struct bb_error *e)
{
    int64_t highest = 0;
    enum err rc = lock_fenced_get(c, key, NULL, &highest, e);
    if (rc != ERR_OK)
        return rc;
    bb_fail(verdict, ERR_STALE_TOKEN, "token",
            "token %lld is older than token %lld already accepted for %s", (long long)token,
            (long long)highest, key);
    return ERR_OK;
}

/* Run an advance/put statement; zero rows back means a higher token won. */
static enum err
fence_apply(struct store_conn *c, struct store_stmt *st, const struct store_param *p, size_t n,
            const char *key, int64_t token, struct bb_error *e)
{
    struct store_rows r;
    enum err rc = store_query(c, st, p, n, &r, e);
    if (rc != ERR_OK)
        return rc;
    bool accepted = store_next(&r);
    store_rows_close(&r);
    if (accepted)
        return ERR_OK;
    struct bb_error verdict;
    rc = fence_refusal(c, key, token, &verdict, e);
    if (rc != ERR_OK)
        return rc;
    *e = verdict;
    return ERR_STALE_TOKEN;
}

enum err
lock_fence_check(struct store_conn *c, const char *key, int64_t token, int64_t now_ms,
                 struct bb_error *e)
{
    const struct store_param p[] = {sp_text(key), sp_int(token), sp_int(now_ms)};
    return fence_apply(c, &FENCE_ADVANCE, p, BB_ARRAY_LEN(p), key, token, e);
}

enum err
lock_fence_check_many(struct store_conn *c, const char *const *keys, const int64_t *tokens,
                      size_t n, int64_t now_ms, enum err *rc, struct bb_error *errors,
                      struct bb_error *e)
{
    struct store_batch rows;
    store_batch_init(&rows, c, 2);
    for (size_t i = 0; i < n; i++) {
        rc[i] = ERR_STALE_TOKEN;
        store_batch_row(&rows);
        store_batch_text(&rows, "key", keys[i]);
        store_batch_int(&rows, "token", tokens[i]);
    }
    const struct store_param p[] = {sp_batch(&rows), sp_int(now_ms)};
    struct store_rows r;
    enum err qrc = store_query(c, &FENCE_ADVANCE_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&rows);
    if (qrc != ERR_OK)
        return qrc;
    while (store_next(&r)) {
        const char *key = store_col_text(&r, 0);
        for (size_t i = 0; i < n; i++)
            if (strcmp(keys[i], key) == 0)
                rc[i] = ERR_OK;
    }
    store_rows_close(&r);
    for (size_t i = 0; i < n && qrc == ERR_OK; i++)
        if (rc[i] != ERR_OK)
            qrc = fence_refusal(c, keys[i], tokens[i], &errors[i], e);
    return qrc;
}

enum err
lock_fenced_put(struct store_conn *c, const char *key, int64_t token, const char *value_json,
                int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(key), sp_int(token), sp_int(now_ms),
                                    sp_text(value_json)};
    return fence_apply(c, &FENCE_PUT, p, BB_ARRAY_LEN(p), key, token, e);
}

enum err
lock_fenced_get(struct store_conn *c, const char *key, char **value_json, int64_t *token,
                struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(key)};
    enum err rc = store_query(c, &FENCE_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "", "nothing was ever written to %s", key);
    }
    *token = store_col_int(&r, 0);
    if (value_json)
        *value_json = store_col_is_null(&r, 1) ? NULL : xstrdup(store_col_text(&r, 1));
    store_rows_close(&r);
    return ERR_OK;
}

enum err
lock_metrics_refresh(struct store_conn *c, int64_t now_ms, struct bb_error *e)
{
    int64_t held;
    enum err rc = lock_count_held(c, now_ms, &held, e);
    if (rc == ERR_OK)
        locks__metrics_held(held);
    return rc;
}
