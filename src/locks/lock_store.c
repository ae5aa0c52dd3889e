/*
 * lock_store.c: locks and fences in the database.
 *
 * Every change is read-decide-write: read the row (FOR UPDATE on PostgreSQL,
 * which serialises concurrent acquirers of one name; SQLite has a single
 * writer already), decide with lock_state.c, then write with a
 * compare-and-set on `version`. A CAS that matches no row means someone else
 * won a race we could not see; the unit answers ERR_RETRY and the executor
 * runs it again against the new state.
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
                  " version INTEGER NOT NULL"
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
              " version BIGINT NOT NULL);"
              "CREATE TABLE fences ("
              " key TEXT PRIMARY KEY,"
              " token BIGINT NOT NULL,"
              " value TEXT,"
              " updated_at_ms BIGINT NOT NULL);",
    },
};

const struct store_migration *
lock_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

#define LOCK_COLUMNS "owner, token, epoch, expires_at_ms, acquired_at_ms, version"

static struct store_stmt LOCK_SELECT = {
    .sql = "SELECT " LOCK_COLUMNS " FROM locks WHERE name = $1",
    .sql_pg = "SELECT " LOCK_COLUMNS " FROM locks WHERE name = $1 FOR UPDATE",
};
static struct store_stmt LOCK_SELECT_READ = {
    .sql = "SELECT " LOCK_COLUMNS " FROM locks WHERE name = $1",
};
static struct store_stmt LOCK_INSERT = {
    .sql = "INSERT INTO locks (name, owner, token, epoch, expires_at_ms, acquired_at_ms,"
           " updated_at_ms, version) VALUES ($1, $2, 1, 1, $3, $4, $4, 1)"
           " ON CONFLICT (name) DO NOTHING",
};
static struct store_stmt LOCK_UPDATE = {
    .sql = "UPDATE locks SET owner = $2, token = $3, epoch = $4, expires_at_ms = $5,"
           " acquired_at_ms = $6, updated_at_ms = $7, version = version + 1"
           " WHERE name = $1 AND version = $8",
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
static struct store_stmt FENCE_PUT = {
    .sql = "INSERT INTO fences (key, token, value, updated_at_ms) VALUES ($1, $2, $4, $3)"
           " ON CONFLICT (key) DO UPDATE SET token = excluded.token, value = excluded.value,"
           " updated_at_ms = excluded.updated_at_ms"
           " WHERE fences.token <= excluded.token RETURNING token",
};
static struct store_stmt FENCE_GET = {
    .sql = "SELECT token, value FROM fences WHERE key = $1",
};

static enum err
row_read(struct store_conn *c, struct store_stmt *st, const char *name, struct lock_row *row,
         struct bb_error *e)
{
    memset(row, 0, sizeof *row);
    struct store_rows r;
    const struct store_param p[] = {sp_text(name)};
    enum err rc = store_query(c, st, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r)) {
        row->exists = true;
        row->has_owner = !store_col_is_null(&r, 0);
        bb_strlcpy(row->owner, store_col_text(&r, 0), sizeof row->owner);
        row->token = store_col_int(&r, 1);
        row->epoch = store_col_int(&r, 2);
        row->expires_at_ms = store_col_int(&r, 3);
        row->acquired_at_ms = store_col_int(&r, 4);
        row->version = store_col_int(&r, 5);
    }
    store_rows_close(&r);
    return ERR_OK;
}

/* Write the row's new state if nobody changed it since we read `version`. */
static enum err
row_cas(struct store_conn *c, const char *name, const struct lock_row *next, int64_t version,
        int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {
        sp_text(name),
        next->has_owner ? sp_text(next->owner) : sp_null(),
        sp_int(next->token),
        sp_int(next->epoch),
        next->has_owner ? sp_int(next->expires_at_ms) : sp_null(),
        next->has_owner ? sp_int(next->acquired_at_ms) : sp_null(),
        sp_int(now_ms),
        sp_int(version),
    };
    int64_t changed = 0;
    enum err rc = store_exec(c, &LOCK_UPDATE, p, BB_ARRAY_LEN(p), &changed, e);
    if (rc == ERR_OK && changed != 1)
        return bb_fail(e, ERR_RETRY, "", "lock %s changed concurrently", name);
    return rc;
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

enum err
lock_acquire(struct store_conn *c, const char *name, const char *owner, int64_t ttl_ms,
             int64_t now_ms, struct lock_grant *out, enum lock_outcome *how, struct bb_error *e)
{
    struct lock_row row;
    enum err rc = row_read(c, &LOCK_SELECT, name, &row, e);
    if (rc != ERR_OK)
        return rc;
    struct lock_row next = row;
    next.has_owner = true;
    bb_strlcpy(next.owner, owner, sizeof next.owner);
    next.expires_at_ms = now_ms + ttl_ms;
    next.acquired_at_ms = now_ms;
    switch (locks__decide_acquire(&row, owner, now_ms)) {
    case LOCKS__INSERT: {
        const struct store_param p[] = {sp_text(name), sp_text(owner), sp_int(now_ms + ttl_ms),
                                        sp_int(now_ms)};
        int64_t inserted = 0;
        rc = store_exec(c, &LOCK_INSERT, p, BB_ARRAY_LEN(p), &inserted, e);
        if (rc == ERR_OK && inserted != 1)
            return bb_fail(e, ERR_RETRY, "", "lock %s created concurrently", name);
        if (rc != ERR_OK)
            return rc;
        next.token = next.epoch = 1;
        *how = LOCK_GRANTED;
        grant_from_row(name, &next, true, out);
        return ERR_OK;
    }
    case LOCKS__DENY:
        grant_from_row(name, &row, false, out);
        return bb_fail(e, ERR_LOCK_HELD, "", "lock %s is held by another owner", name);
    case LOCKS__REENTER:
        next.acquired_at_ms = row.acquired_at_ms;
        *how = LOCK_REENTERED;
        break;
    case LOCKS__GRANT:
        next.token = row.token + 1;
        *how = LOCK_GRANTED;
        break;
    case LOCKS__TAKEOVER:
        next.token = row.token + 1;
        next.epoch = row.epoch + 1;
        *how = LOCK_TAKEOVER;
        break;
    }
    BB_ASSERT(lock_can_transition(lock_row_state(&row, now_ms), LOCK_HELD));
    rc = row_cas(c, name, &next, row.version, now_ms, e);
    if (rc == ERR_OK)
        grant_from_row(name, &next, true, out);
    return rc;
}

static enum err
refusal(struct bb_error *e, enum err why, const char *name, const struct lock_row *row,
        int64_t token)
{
    switch (why) {
    case ERR_STALE_TOKEN:
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
lock_renew(struct store_conn *c, const char *name, int64_t token, int64_t ttl_ms, int64_t now_ms,
           struct lock_grant *out, struct bb_error *e)
{
    struct lock_row row;
    enum err rc = row_read(c, &LOCK_SELECT, name, &row, e);
    if (rc != ERR_OK)
        return rc;
    enum err verdict = locks__decide_renew(&row, token, now_ms);
    if (verdict != ERR_OK)
        return refusal(e, verdict, name, &row, token);
    struct lock_row next = row;
    next.expires_at_ms = now_ms + ttl_ms;
    rc = row_cas(c, name, &next, row.version, now_ms, e);
    if (rc == ERR_OK)
        grant_from_row(name, &next, true, out);
    return rc;
}

enum err
lock_release(struct store_conn *c, const char *name, int64_t token, int64_t now_ms,
             struct bb_error *e)
{
    struct lock_row row;
    enum err rc = row_read(c, &LOCK_SELECT, name, &row, e);
    if (rc != ERR_OK)
        return rc;
    bool changes;
    enum err verdict = locks__decide_release(&row, token, now_ms, &changes);
    if (verdict != ERR_OK)
        return refusal(e, verdict, name, &row, token);
    if (!changes)
        return ERR_OK; /* released before with this token: idempotent */
    BB_ASSERT(lock_can_transition(lock_row_state(&row, now_ms), LOCK_FREE));
    struct lock_row next = row;
    next.has_owner = false;
    next.owner[0] = '\0';
    rc = row_cas(c, name, &next, row.version, now_ms, e);
    if (rc == ERR_OK)
        rc = store_notify(c, LOCKS__CHANNEL, name, e);
    return rc;
}

enum err
lock_get(struct store_conn *c, const char *name, int64_t now_ms, struct lock_grant *out,
         struct bb_error *e)
{
    struct lock_row row;
    enum err rc = row_read(c, &LOCK_SELECT_READ, name, &row, e);
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
    int64_t highest = 0;
    rc = lock_fenced_get(c, key, NULL, &highest, e);
    if (rc != ERR_OK)
        return rc;
    locks__metric_fence_refused();
    return bb_fail(e, ERR_STALE_TOKEN, "token",
                   "token %lld is older than token %lld already accepted for %s", (long long)token,
                   (long long)highest, key);
}

enum err
lock_fence_check(struct store_conn *c, const char *key, int64_t token, int64_t now_ms,
                 struct bb_error *e)
{
    const struct store_param p[] = {sp_text(key), sp_int(token), sp_int(now_ms)};
    return fence_apply(c, &FENCE_ADVANCE, p, BB_ARRAY_LEN(p), key, token, e);
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
