/*
 * store_migrate.c: versioned schema migrations, per module.
 *
 * Each module owns its tables and hands its ordered migrations to
 * store_migrate. Every step runs in its own write transaction together with
 * its row in schema_migrations, so a crash leaves a step either fully applied
 * and recorded or not at all. On PostgreSQL a transaction-scoped advisory lock
 * serialises concurrent migrators (several `backbone serve` starting at once);
 * on SQLite BEGIN IMMEDIATE does.
 */
#include "store/store_int.h"

#include <string.h>

static const char *const BOOTSTRAP = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                     " module TEXT NOT NULL,"
                                     " version INTEGER NOT NULL,"
                                     " name TEXT NOT NULL,"
                                     " applied_at_ms BIGINT NOT NULL,"
                                     " PRIMARY KEY (module, version))";

/* Arbitrary constant naming Backbone's migration advisory lock. */
static struct store_stmt MIGRATION_LOCK = {.sql = "SELECT pg_advisory_xact_lock(7283464619)"};
static struct store_stmt CURRENT_VERSION = {
    .sql = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE module = $1"};
static struct store_stmt RECORD = {
    .sql = "INSERT INTO schema_migrations (module, version, name, applied_at_ms)"
           " VALUES ($1, $2, $3, $4)"};

static enum err
current_version(struct store_conn *c, const char *module, int64_t *out, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(module)};
    enum err rc = store_query(c, &CURRENT_VERSION, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    *out = store_next(&r) ? store_col_int(&r, 0) : 0;
    store_rows_close(&r);
    return ERR_OK;
}

/* Open a write transaction holding the migration lock, with the bookkeeping
 * table in place. */
static enum err
begin_locked(struct store_conn *c, struct bb_error *e)
{
    enum err rc = store_begin(c, STORE_WRITE, e);
    if (rc != ERR_OK)
        return rc;
    if (c->ops->engine == STORE_POSTGRES)
        rc = store_exec(c, &MIGRATION_LOCK, NULL, 0, NULL, e);
    if (rc == ERR_OK)
        rc = c->ops->exec_script(c, BOOTSTRAP, e);
    if (rc != ERR_OK)
        store_rollback(c);
    return rc;
}

/* Apply one step if it is the next one; *ran says whether it did. */
static enum err
apply_step(struct store_conn *c, const char *module, const struct store_migration *m, size_t n,
           size_t i, bool *ran, struct bb_error *e)
{
    *ran = false;
    enum err rc = begin_locked(c, e);
    if (rc != ERR_OK)
        return rc;
    int64_t have;
    rc = current_version(c, module, &have, e);
    if (rc == ERR_OK && have > (int64_t)n)
        rc = bb_fail(e, ERR_STORE, "db",
                     "schema of module %s is at version %lld, newer than this binary knows "
                     "(%zu): upgrade backbone",
                     module, (long long)have, n);
    if (rc == ERR_OK && have == m[i].version - 1) {
        const char *sql = c->ops->engine == STORE_POSTGRES ? m[i].pg : m[i].sqlite;
        rc = c->ops->exec_script(c, sql, e);
        if (rc == ERR_OK && m[i].after)
            rc = m[i].after(c, e);
        if (rc == ERR_OK) {
            const struct store_param p[] = {sp_text(module), sp_int(m[i].version),
                                            sp_text(m[i].name), sp_int(bb_wall_ms())};
            rc = store_exec(c, &RECORD, p, 4, NULL, e);
        }
        if (rc != ERR_OK && e)
            log_error("store.migration_failed", "module=%s version=%d name=%s detail=%s", module,
                      m[i].version, m[i].name, e->detail);
        *ran = rc == ERR_OK;
    }
    if (rc != ERR_OK) {
        store_rollback(c);
        return rc;
    }
    return store_commit(c, e);
}

enum err
store_migrate(struct store_conn *c, const char *module, const struct store_migration *m, size_t n,
              int *applied, struct bb_error *e)
{
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        BB_ASSERT(m[i].version == (int)i + 1);
        bool ran;
        enum err rc = apply_step(c, module, m, n, i, &ran, e);
        if (rc != ERR_OK)
            return rc;
        if (ran) {
            count++;
            log_info("store.migrated", "module=%s version=%d name=%s", module, m[i].version,
                     m[i].name);
        }
    }
    if (applied)
        *applied = count;
    return ERR_OK;
}
