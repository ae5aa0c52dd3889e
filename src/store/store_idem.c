/*
 * store_idem.c: idempotency records, for every API that takes an
 * Idempotency-Key (stock additions, adjustments, checkouts, payments).
 *
 * A record is claimed inside the caller's transaction, before the work: the
 * INSERT ... ON CONFLICT DO NOTHING makes a concurrent request with the same
 * key wait for this transaction (PostgreSQL: the row is locked until it
 * ends; SQLite: one writer) and then find the record. The answer is saved in
 * the same transaction, so the work and its remembered answer commit or roll
 * back together: a request that failed is not remembered and may be retried.
 */
#include "store/store_int.h"

#include <stdlib.h>
#include <string.h>

static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "idempotency keys",
        .sqlite = "CREATE TABLE idempotency_keys ("
                  " scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,"
                  " status INTEGER NOT NULL, body TEXT, created_at_ms INTEGER NOT NULL,"
                  " PRIMARY KEY (scope, key)) WITHOUT ROWID;"
                  "CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at_ms);",
        .pg = "CREATE TABLE idempotency_keys ("
              " scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,"
              " status INTEGER NOT NULL, body TEXT, created_at_ms BIGINT NOT NULL,"
              " PRIMARY KEY (scope, key));"
              "CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at_ms);",
    },
};

const struct store_migration *
store_idem_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

bool
store_idem_key_is_valid(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > STORE_IDEM_KEY_MAX)
        return false;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if (*p < 0x21 || *p > 0x7e) /* visible ASCII, as HTTP header values */
            return false;
    }
    return true;
}

static struct store_stmt IDEM_CLAIM = {
    .sql = "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at_ms)"
           " VALUES ($1, $2, $3, 0, NULL, $4) ON CONFLICT (scope, key) DO NOTHING",
};
static struct store_stmt IDEM_READ = {
    .sql = "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2",
};
static struct store_stmt IDEM_SAVE = {
    .sql = "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2",
};
static struct store_stmt IDEM_PRUNE = {
    .sql = "DELETE FROM idempotency_keys WHERE (scope, key) IN (SELECT scope, key"
           " FROM idempotency_keys WHERE created_at_ms < $1 ORDER BY created_at_ms LIMIT $2)",
};

enum err
store_idem_claim(struct store_conn *c, const char *scope, const char *key, const char *fingerprint,
                 int64_t now_ms, struct store_idem *out, struct bb_error *e)
{
    memset(out, 0, sizeof *out);
    if (!store_idem_key_is_valid(key))
        return bb_fail(e, ERR_INVALID, "Idempotency-Key",
                       "Idempotency-Key must be 1 to %d visible ASCII characters",
                       STORE_IDEM_KEY_MAX);
    const struct store_param p[] = {sp_text(scope), sp_text(key), sp_text(fingerprint),
                                    sp_int(now_ms)};
    int64_t claimed = 0;
    enum err rc = store_exec(c, &IDEM_CLAIM, p, BB_ARRAY_LEN(p), &claimed, e);
    if (rc != ERR_OK || claimed == 1)
        return rc;
    struct store_rows r;
    rc = store_query(c, &IDEM_READ, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) { /* pruned between the two statements */
        store_rows_close(&r);
        return bb_fail(e, ERR_RETRY, "", "idempotency record changed concurrently");
    }
    bool same = strcmp(store_col_text(&r, 0), fingerprint) == 0;
    out->status = (int)store_col_int(&r, 1);
    out->body = store_col_is_null(&r, 2) ? NULL : xstrdup(store_col_text(&r, 2));
    store_rows_close(&r);
    if (!same) {
        store_idem_deinit(out);
        return bb_fail(e, ERR_IDEMPOTENCY_MISMATCH, "Idempotency-Key",
                       "Idempotency-Key %s was already used for a different request", key);
    }
    out->replay = true;
    return ERR_OK;
}

enum err
store_idem_save(struct store_conn *c, const char *scope, const char *key, int status,
                const char *body, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(scope), sp_text(key), sp_int(status), sp_text(body)};
    return store_exec(c, &IDEM_SAVE, p, BB_ARRAY_LEN(p), NULL, e);
}

void
store_idem_deinit(struct store_idem *i)
{
    free(i->body);
    i->body = NULL;
}

enum err
store_idem_prune(struct store_conn *c, int64_t before_ms, int64_t limit, int64_t *n,
                 struct bb_error *e)
{
    const struct store_param p[] = {sp_int(before_ms), sp_int(limit)};
    return store_exec(c, &IDEM_PRUNE, p, BB_ARRAY_LEN(p), n, e);
}
