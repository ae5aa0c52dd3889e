/*
 * job_store.c: jobs, queues, attempts and schedules in the database.
 *
 * Every state change is a compare-and-set on (state, lease_token): a claim
 * moves pending -> running and bumps lease_token; completing, failing,
 * heartbeating and rescuing all require the token they were given, so a
 * worker whose lease was rescued (or revoked by a cancel) changes nothing.
 * On PostgreSQL, claimers skip rows other claimers have locked (FOR UPDATE
 * SKIP LOCKED), so many workers claim concurrently without waiting on each
 * other; SQLite has a single writer.
 *
 * The hot paths are set-based: a claim takes up to N jobs in one statement,
 * and completions of a whole batch are one UPDATE plus one INSERT of their
 * attempt rows, fed a store batch (arrays on PostgreSQL, JSON on SQLite).
 *
 * Indexes are few and mostly partial (ready jobs, running leases, due times,
 * unique keys, schedule fires, dead letters): PostgreSQL adds an entry to
 * every full index on each update of a row, and a job's row is updated at
 * least twice.
 */
#include "jobs/jobs_int.h"

#include "locks/locks.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE_DEFAULTS_SQL                                                                \
    "INSERT INTO job_queues (name, paused, concurrency, max_attempts, backoff_base_ms,"   \
    " backoff_factor_milli, backoff_cap_ms, backoff_jitter_pct, lease_ms, created_at_ms," \
    " updated_at_ms) VALUES ('default', 0, 0, 5, 1000, 4000, 3600000, 10, 60000, 0, 0);"

/* The claims' index: pending jobs, but for those parked (migration 8). */
#define JOBS_READY_INDEX                                                              \
    "CREATE INDEX jobs_ready ON jobs (queue, external, priority DESC, run_at_ms, id)" \
    " WHERE state = 'pending' AND parked = 0;"
#define JOBS_PARKED_INDEX                                                                     \
    "CREATE INDEX jobs_parked ON jobs (queue, concurrency_key, priority DESC, run_at_ms, id)" \
    " WHERE state = 'pending' AND parked = 1;"
static const struct store_migration MIGRATIONS[] = {
    {
        .version = 1,
        .name = "queues, jobs, attempts, schedules",
        .sqlite = "CREATE TABLE job_queues ("
                  " name TEXT PRIMARY KEY, paused INTEGER NOT NULL, concurrency INTEGER NOT NULL,"
                  " max_attempts INTEGER NOT NULL, backoff_base_ms INTEGER NOT NULL,"
                  " backoff_factor_milli INTEGER NOT NULL, backoff_cap_ms INTEGER NOT NULL,"
                  " backoff_jitter_pct INTEGER NOT NULL, lease_ms INTEGER NOT NULL,"
                  " created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL"
                  ") WITHOUT ROWID;" QUEUE_DEFAULTS_SQL "CREATE TABLE jobs ("
                  " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                  " queue TEXT NOT NULL, handler TEXT NOT NULL, external INTEGER NOT NULL,"
                  " state TEXT NOT NULL, priority INTEGER NOT NULL, run_at_ms INTEGER NOT NULL,"
                  " payload TEXT NOT NULL, target TEXT, tags TEXT NOT NULL, unique_key TEXT,"
                  " attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL,"
                  " attempt_limit INTEGER NOT NULL, backoff_base_ms INTEGER NOT NULL,"
                  " backoff_factor_milli INTEGER NOT NULL, backoff_cap_ms INTEGER NOT NULL,"
                  " backoff_jitter_pct INTEGER NOT NULL, max_duration_ms INTEGER NOT NULL,"
                  " lease_token INTEGER NOT NULL, leased_by TEXT, lease_expires_at_ms INTEGER,"
                  " started_at_ms INTEGER, finished_at_ms INTEGER, last_error TEXT,"
                  " schedule TEXT, scheduled_for_ms INTEGER,"
                  " created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL);"
                  "CREATE INDEX jobs_ready ON jobs (queue, external, priority DESC, run_at_ms, id)"
                  " WHERE state = 'pending';"
                  "CREATE INDEX jobs_leases ON jobs (lease_expires_at_ms) WHERE state = 'running';"
                  "CREATE INDEX jobs_due ON jobs (run_at_ms) WHERE state = 'pending';"
                  "CREATE INDEX jobs_dead ON jobs (queue, id) WHERE state = 'dead';"
                  "CREATE UNIQUE INDEX jobs_unique ON jobs (queue, unique_key)"
                  " WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');"
                  "CREATE UNIQUE INDEX jobs_fires ON jobs (schedule, scheduled_for_ms)"
                  " WHERE schedule IS NOT NULL;"
                  "CREATE TABLE job_attempts ("
                  " job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, worker TEXT,"
                  " started_at_ms INTEGER, finished_at_ms INTEGER NOT NULL,"
                  " outcome TEXT NOT NULL, error TEXT, PRIMARY KEY (job_id, attempt)"
                  ") WITHOUT ROWID;"
                  "CREATE TABLE job_schedules ("
                  " name TEXT PRIMARY KEY, cron TEXT, tz TEXT NOT NULL,"
                  " interval_ms INTEGER NOT NULL, spec TEXT NOT NULL, queue TEXT NOT NULL,"
                  " handler TEXT NOT NULL, paused INTEGER NOT NULL,"
                  " next_fire_at_ms INTEGER NOT NULL, last_fire_at_ms INTEGER,"
                  " created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL"
                  ") WITHOUT ROWID;"
                  "CREATE TABLE job_ledger ("
                  " job_id INTEGER PRIMARY KEY, lease_token INTEGER NOT NULL,"
                  " recorded_at_ms INTEGER NOT NULL);",
        .pg = "CREATE TABLE job_queues ("
              " name TEXT PRIMARY KEY, paused INTEGER NOT NULL, concurrency BIGINT NOT NULL,"
              " max_attempts BIGINT NOT NULL, backoff_base_ms BIGINT NOT NULL,"
              " backoff_factor_milli BIGINT NOT NULL, backoff_cap_ms BIGINT NOT NULL,"
              " backoff_jitter_pct BIGINT NOT NULL, lease_ms BIGINT NOT NULL,"
              " created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL);" QUEUE_DEFAULTS_SQL
              "CREATE TABLE jobs ("
              " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
              " queue TEXT NOT NULL, handler TEXT NOT NULL, external INTEGER NOT NULL,"
              " state TEXT NOT NULL, priority BIGINT NOT NULL, run_at_ms BIGINT NOT NULL,"
              " payload TEXT NOT NULL, target TEXT, tags TEXT NOT NULL, unique_key TEXT,"
              " attempt BIGINT NOT NULL, max_attempts BIGINT NOT NULL,"
              " attempt_limit BIGINT NOT NULL, backoff_base_ms BIGINT NOT NULL,"
              " backoff_factor_milli BIGINT NOT NULL, backoff_cap_ms BIGINT NOT NULL,"
              " backoff_jitter_pct BIGINT NOT NULL, max_duration_ms BIGINT NOT NULL,"
              " lease_token BIGINT NOT NULL, leased_by TEXT, lease_expires_at_ms BIGINT,"
              " started_at_ms BIGINT, finished_at_ms BIGINT, last_error TEXT,"
              " schedule TEXT, scheduled_for_ms BIGINT,"
              " created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL);"
              "CREATE INDEX jobs_ready ON jobs (queue, external, priority DESC, run_at_ms, id)"
              " WHERE state = 'pending';"
              "CREATE INDEX jobs_leases ON jobs (lease_expires_at_ms) WHERE state = 'running';"
              "CREATE INDEX jobs_due ON jobs (run_at_ms) WHERE state = 'pending';"
              "CREATE INDEX jobs_dead ON jobs (queue, id) WHERE state = 'dead';"
              "CREATE UNIQUE INDEX jobs_unique ON jobs (queue, unique_key)"
              " WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');"
              "CREATE UNIQUE INDEX jobs_fires ON jobs (schedule, scheduled_for_ms)"
              " WHERE schedule IS NOT NULL;"
              "CREATE TABLE job_attempts ("
              " job_id BIGINT NOT NULL, attempt BIGINT NOT NULL, worker TEXT,"
              " started_at_ms BIGINT, finished_at_ms BIGINT NOT NULL,"
              " outcome TEXT NOT NULL, error TEXT, PRIMARY KEY (job_id, attempt));"
              "CREATE TABLE job_schedules ("
              " name TEXT PRIMARY KEY, cron TEXT, tz TEXT NOT NULL,"
              " interval_ms BIGINT NOT NULL, spec TEXT NOT NULL, queue TEXT NOT NULL,"
              " handler TEXT NOT NULL, paused INTEGER NOT NULL,"
              " next_fire_at_ms BIGINT NOT NULL, last_fire_at_ms BIGINT,"
              " created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL);"
              "CREATE TABLE job_ledger ("
              " job_id BIGINT PRIMARY KEY, lease_token BIGINT NOT NULL,"
              " recorded_at_ms BIGINT NOT NULL);",
    },
    {
        /* A lease is set exactly while a job runs. Keyed on that rather than
         * on the state, the index stays out of every statement that finds a
         * running job by id: PostgreSQL used to AND it with the primary key
         * in a bitmap scan, reading each entry it had, dead versions of every
         * job run since the last vacuum included. */
        .version = 2,
        .name = "jobs_leases keyed on the lease",
        .sqlite = "DROP INDEX jobs_leases;"
                  "CREATE INDEX jobs_leases ON jobs (lease_expires_at_ms)"
                  " WHERE lease_expires_at_ms IS NOT NULL;",
        .pg = "DROP INDEX jobs_leases;"
              "CREATE INDEX jobs_leases ON jobs (lease_expires_at_ms)"
              " WHERE lease_expires_at_ms IS NOT NULL;",
    },
    {
        /* A job is claimed and completed within moments of its insert; its
         * state is in the partial indexes' predicates, so each change is a
         * new version with new index entries, but with room on the page it
         * stays there (no row lock logged for a move to another page).
         * Finished jobs are pruned by the retention. */
        .version = 3,
        .name = "jobs leave room for their updates",
        .sqlite = "SELECT 1;",
        .pg = "ALTER TABLE jobs SET (fillfactor = 50);",
    },
    {
        /* Dead letters group by the fingerprint of their last error. */
        .version = 4,
        .name = "dead letters carry their error's fingerprint",
        .sqlite = "ALTER TABLE jobs ADD COLUMN error_fingerprint TEXT;"
                  "CREATE INDEX jobs_dead_groups ON jobs (queue, error_fingerprint)"
                  " WHERE state = 'dead';",
        .pg = "ALTER TABLE jobs ADD COLUMN error_fingerprint TEXT;"
              "CREATE INDEX jobs_dead_groups ON jobs (queue, error_fingerprint)"
              " WHERE state = 'dead';",
        .after = jobs__fingerprint_dead_jobs,
    },
    {
        .version = 5,
        .name = "jobs carry their submitter's traceparent",
        .sqlite = "ALTER TABLE jobs ADD COLUMN traceparent TEXT;",
        .pg = "ALTER TABLE jobs ADD COLUMN traceparent TEXT;",
    },
    {
        /* The bucket: its level in thousandths of a start, as of rate_at_ms. */
        .version = 6,
        .name = "queues' rate limits",
        .sqlite = "ALTER TABLE job_queues ADD COLUMN rate_max INTEGER NOT NULL DEFAULT 0;"
                  "ALTER TABLE job_queues ADD COLUMN rate_per_ms INTEGER NOT NULL DEFAULT 0;"
                  "ALTER TABLE job_queues ADD COLUMN rate_milli INTEGER NOT NULL DEFAULT 0;"
                  "ALTER TABLE job_queues ADD COLUMN rate_at_ms INTEGER NOT NULL DEFAULT 0;",
        .pg = "ALTER TABLE job_queues ADD COLUMN rate_max BIGINT NOT NULL DEFAULT 0,"
              " ADD COLUMN rate_per_ms BIGINT NOT NULL DEFAULT 0,"
              " ADD COLUMN rate_milli BIGINT NOT NULL DEFAULT 0,"
              " ADD COLUMN rate_at_ms BIGINT NOT NULL DEFAULT 0;",
    },
    {
        /* Running jobs by key, for the claims of queues that limit them. */
        .version = 7,
        .name = "per-key concurrency",
        .sqlite = "ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;"
                  "ALTER TABLE job_queues ADD COLUMN key_concurrency INTEGER NOT NULL DEFAULT 0;"
                  "CREATE INDEX jobs_running_keys ON jobs (queue, concurrency_key)"
                  " WHERE state = 'running' AND concurrency_key IS NOT NULL;",
        .pg = "ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;"
              "ALTER TABLE job_queues ADD COLUMN key_concurrency BIGINT NOT NULL DEFAULT 0;"
              "CREATE INDEX jobs_running_keys ON jobs (queue, concurrency_key)"
              " WHERE state = 'running' AND concurrency_key IS NOT NULL;",
    },
    {
        /* Jobs whose key was full when a claim saw them step out of the
         * ready index (parked) until a job of their key stops running: what
         * ends the run notes the key (note_freed_keys), and the queue's next
         * claim, serialised with the others, takes the note and unparks the
         * key's first job (a raised limit notes each parked key with the
         * slots it gained). Notes are only added by enders and only taken
         * by claims: a claim that parks a job while its key's running job
         * ends leaves the note for the claim after it. */
        .version = 8,
        .name = "jobs of a full concurrency key wait aside",
        .sqlite = "ALTER TABLE jobs ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;"
                  "DROP INDEX jobs_ready;" JOBS_READY_INDEX JOBS_PARKED_INDEX
                  "CREATE TABLE job_keys_freed (id INTEGER PRIMARY KEY,"
                  " queue TEXT NOT NULL, concurrency_key TEXT NOT NULL,"
                  " slots INTEGER NOT NULL DEFAULT 1);"
                  "CREATE INDEX job_keys_freed_queue ON job_keys_freed (queue);",
        .pg = "ALTER TABLE jobs ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;"
              "DROP INDEX jobs_ready;" JOBS_READY_INDEX JOBS_PARKED_INDEX
              "CREATE TABLE job_keys_freed (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
              " queue TEXT NOT NULL, concurrency_key TEXT NOT NULL,"
              " slots BIGINT NOT NULL DEFAULT 1);"
              "CREATE INDEX job_keys_freed_queue ON job_keys_freed (queue);",
    },
    {
        /* Each key's bucket, as the queue's (rate_milli, rate_at_ms); no row:
         * full. A row untouched for a whole window is full again, and goes,
         * unless jobs of the key wait parked for its next start (wake_at_ms,
         * when a claim unparks them; 0: none). No index on at_ms, and room
         * on PostgreSQL's pages: a claim's draw updates its keys' rows in
         * place (HOT). */
        .version = 9,
        .name = "per-key rate limits",
        .sqlite = "ALTER TABLE job_queues ADD COLUMN key_rate_max INTEGER NOT NULL DEFAULT 0;"
                  "ALTER TABLE job_queues ADD COLUMN key_rate_per_ms INTEGER NOT NULL DEFAULT 0;"
                  "CREATE TABLE job_key_rates (queue TEXT NOT NULL, concurrency_key TEXT NOT NULL,"
                  " milli INTEGER NOT NULL, at_ms INTEGER NOT NULL,"
                  " wake_at_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (queue, concurrency_key));"
                  "CREATE INDEX job_key_rates_wake ON job_key_rates (queue, wake_at_ms)"
                  " WHERE wake_at_ms > 0;",
        .pg = "ALTER TABLE job_queues ADD COLUMN key_rate_max BIGINT NOT NULL DEFAULT 0,"
              " ADD COLUMN key_rate_per_ms BIGINT NOT NULL DEFAULT 0;"
              "CREATE TABLE job_key_rates (queue TEXT NOT NULL, concurrency_key TEXT NOT NULL,"
              " milli BIGINT NOT NULL, at_ms BIGINT NOT NULL,"
              " wake_at_ms BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (queue, concurrency_key))"
              " WITH (fillfactor = 70);"
              "CREATE INDEX job_key_rates_wake ON job_key_rates (queue, wake_at_ms)"
              " WHERE wake_at_ms > 0;",
    },
};

static struct store_stmt DEAD_UNPRINTED = {
    .sql = "SELECT id, handler, last_error FROM jobs"
           " WHERE state = 'dead' AND error_fingerprint IS NULL ORDER BY id LIMIT 500",
};
static struct store_stmt SET_FINGERPRINT = {
    .sql = "UPDATE jobs SET error_fingerprint = $2 WHERE id = $1",
};

/* Each page read whole before it is written. */
enum err
jobs__fingerprint_dead_jobs(struct store_conn *c, struct bb_error *e)
{
    enum { PAGE = 500 };
    struct {
        int64_t id;
        char fp[JOB_FINGERPRINT_LEN + 1];
    } page[PAGE];
    for (;;) {
        struct store_rows r;
        enum err rc = store_query(c, &DEAD_UNPRINTED, NULL, 0, &r, e);
        if (rc != ERR_OK)
            return rc;
        size_t n = 0;
        while (n < PAGE && store_next(&r)) {
            page[n].id = store_col_int(&r, 0);
            job_error_fingerprint(store_col_text(&r, 1), store_col_text(&r, 2), page[n].fp);
            n++;
        }
        store_rows_close(&r);
        for (size_t i = 0; i < n; i++) {
            const struct store_param p[] = {sp_int(page[i].id), sp_text(page[i].fp)};
            rc = store_exec(c, &SET_FINGERPRINT, p, 2, NULL, e);
            if (rc != ERR_OK)
                return rc;
        }
        if (n < PAGE)
            return ERR_OK;
    }
}

const struct store_migration *
job_migrations(size_t *n)
{
    *n = BB_ARRAY_LEN(MIGRATIONS);
    return MIGRATIONS;
}

/* A statement's single integer answer (0 when no row). */
static enum err
query_int(struct store_conn *c, struct store_stmt *st, const struct store_param *p, size_t n,
          int64_t *out, bool *found, struct bb_error *e)
{
    struct store_rows r;
    enum err rc = store_query(c, st, p, n, &r, e);
    if (rc != ERR_OK)
        return rc;
    bool got = store_next(&r);
    *out = got ? store_col_int(&r, 0) : 0;
    if (found)
        *found = got;
    store_rows_close(&r);
    return ERR_OK;
}

static json_t *
time_json(const struct store_rows *r, int col)
{
    if (store_col_is_null(r, col))
        return json_null();
    char buf[32];
    bb_wall_ms_format(store_col_int(r, col), buf);
    return json_string(buf);
}

/* Stored JSON text back to a value (null if absent or unreadable). */
static json_t *
stored_json(const struct store_rows *r, int col)
{
    if (store_col_is_null(r, col))
        return json_null();
    json_t *v = json_loadb(store_col_text(r, col), store_col_len(r, col),
                           JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    return v ? v : json_null();
}

static json_t *
text_json(const struct store_rows *r, int col)
{
    if (store_col_is_null(r, col))
        return json_null();
    json_t *v = json_stringn(store_col_text(r, col), store_col_len(r, col));
    return v ? v : json_null();
}

/* ---- queues ---------------------------------------------------------------------- */

#define QUEUE_COLUMNS                                                                        \
    "name, paused, concurrency, max_attempts, backoff_base_ms, backoff_factor_milli,"        \
    " backoff_cap_ms, backoff_jitter_pct, lease_ms, rate_max, rate_per_ms, key_concurrency," \
    " key_rate_max, key_rate_per_ms"

/* A new or changed rate limit starts with a full bucket. */
static struct store_stmt QUEUE_PUT = {
    .sql = "INSERT INTO job_queues (" QUEUE_COLUMNS ", rate_milli, rate_at_ms, created_at_ms,"
           " updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
           " $10 * 1000, $15, $15, $15)"
           " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,"
           " concurrency = excluded.concurrency, max_attempts = excluded.max_attempts,"
           " backoff_base_ms = excluded.backoff_base_ms,"
           " backoff_factor_milli = excluded.backoff_factor_milli,"
           " backoff_cap_ms = excluded.backoff_cap_ms,"
           " backoff_jitter_pct = excluded.backoff_jitter_pct, lease_ms = excluded.lease_ms,"
           " rate_milli = CASE WHEN job_queues.rate_max = excluded.rate_max"
           " AND job_queues.rate_per_ms = excluded.rate_per_ms THEN job_queues.rate_milli"
           " ELSE excluded.rate_milli END,"
           " rate_at_ms = CASE WHEN job_queues.rate_max = excluded.rate_max"
           " AND job_queues.rate_per_ms = excluded.rate_per_ms THEN job_queues.rate_at_ms"
           " ELSE excluded.rate_at_ms END,"
           " rate_max = excluded.rate_max, rate_per_ms = excluded.rate_per_ms,"
           " key_concurrency = excluded.key_concurrency,"
           " key_rate_max = excluded.key_rate_max, key_rate_per_ms = excluded.key_rate_per_ms,"
           " updated_at_ms = excluded.updated_at_ms",
};
/* A queue's per-key limit went up by $2: a note of that many slots for
 * each key with parked jobs (one pass over jobs_parked's keys). */
static struct store_stmt NOTE_RAISED_LIMIT = {
    .sql = "INSERT INTO job_keys_freed (queue, concurrency_key, slots)"
           " SELECT $1, concurrency_key, $2 FROM jobs WHERE queue = $1 AND state = 'pending'"
           " AND parked = 1 GROUP BY concurrency_key",
};
/* A queue's per-key limit went: every parked job is ready again (the
 * claims without one do not look aside), its notes moot. */
static struct store_stmt UNPARK_QUEUE = {
    .sql = "UPDATE jobs SET parked = 0 WHERE queue = $1 AND state = 'pending' AND parked = 1",
};
static struct store_stmt FREED_KEYS_DROP = {
    .sql = "DELETE FROM job_keys_freed WHERE queue = $1",
};
/* A new, changed or lifted per-key rate limit: every key's bucket full. */
static struct store_stmt KEY_RATES_DROP = {
    .sql = "DELETE FROM job_key_rates WHERE queue = $1",
};
/* The rate limit's bucket (its row locked by QUEUE_GET_LOCKED first). */
static struct store_stmt QUEUE_RATE_GET = {
    .sql = "SELECT rate_milli, rate_at_ms FROM job_queues WHERE name = $1",
};
static struct store_stmt QUEUE_RATE_SET = {
    .sql = "UPDATE job_queues SET rate_milli = $2, rate_at_ms = $3 WHERE name = $1",
};
static struct store_stmt QUEUE_GET = {
    .sql = "SELECT " QUEUE_COLUMNS " FROM job_queues WHERE name = $1",
};
/* The claim's view of a queue; PostgreSQL locks the row of a queue with a
 * concurrency limit, so claimers of that queue count running jobs one at a
 * time. */
static struct store_stmt QUEUE_GET_LOCKED = {
    .sql = "SELECT " QUEUE_COLUMNS " FROM job_queues WHERE name = $1",
    .sql_pg = "SELECT " QUEUE_COLUMNS " FROM job_queues WHERE name = $1 FOR UPDATE",
};
static struct store_stmt QUEUE_PAUSE = {
    .sql = "UPDATE job_queues SET paused = $2, updated_at_ms = $3 WHERE name = $1",
};
static struct store_stmt QUEUE_LIST = {
    .sql = "SELECT " QUEUE_COLUMNS " FROM job_queues WHERE ($1 = '' OR name = $1) ORDER BY name",
};
/* Depth counts only the live states, each through its partial index (the
 * running ones through the lease's: a job has a lease exactly while it
 * runs), so its cost follows the backlog, not the finished jobs kept for
 * retention. $2: one queue, or '' for all. */
static struct store_stmt QUEUE_DEPTH = {
    .sql = "SELECT queue, 'pending', COUNT(*), COUNT(*) FILTER (WHERE run_at_ms > $1) FROM jobs"
           " WHERE state = 'pending' AND parked = 0 AND ($2 = '' OR queue = $2) GROUP BY queue"
           " UNION ALL SELECT queue, 'parked', COUNT(*), 0 FROM jobs"
           " WHERE state = 'pending' AND parked = 1 AND ($2 = '' OR queue = $2) GROUP BY queue"
           " UNION ALL SELECT queue, 'running', COUNT(*), 0 FROM jobs WHERE state = 'running'"
           " AND lease_expires_at_ms IS NOT NULL AND ($2 = '' OR queue = $2) GROUP BY queue"
           " UNION ALL SELECT queue, 'dead', COUNT(*), 0 FROM jobs"
           " WHERE state = 'dead' AND ($2 = '' OR queue = $2) GROUP BY queue",
};
static struct store_stmt QUEUE_RUNNING = {
    .sql = "SELECT COUNT(*) FROM jobs WHERE queue = $1 AND state = 'running'"
           " AND lease_expires_at_ms IS NOT NULL",
};

void
job_queue_defaults(struct job_queue *q, const char *name)
{
    memset(q, 0, sizeof *q);
    bb_strlcpy(q->name, name, sizeof q->name);
    q->max_attempts = 5;
    job_backoff_defaults(&q->backoff);
    q->lease_ms = 60000;
}

static void
queue_from_row(const struct store_rows *r, struct job_queue *q)
{
    memset(q, 0, sizeof *q);
    bb_strlcpy(q->name, store_col_text(r, 0), sizeof q->name);
    q->paused = store_col_int(r, 1) != 0;
    q->concurrency = store_col_int(r, 2);
    q->max_attempts = store_col_int(r, 3);
    q->backoff.base_ms = store_col_int(r, 4);
    q->backoff.factor_milli = store_col_int(r, 5);
    q->backoff.cap_ms = store_col_int(r, 6);
    q->backoff.jitter_pct = store_col_int(r, 7);
    q->lease_ms = store_col_int(r, 8);
    q->rate_max = store_col_int(r, 9);
    q->rate_per_ms = store_col_int(r, 10);
    q->key_concurrency = store_col_int(r, 11);
    q->key_rate_max = store_col_int(r, 12);
    q->key_rate_per_ms = store_col_int(r, 13);
}

static enum err
queue_read(struct store_conn *c, struct store_stmt *st, const char *name, struct job_queue *out,
           struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(name)};
    enum err rc = store_query(c, st, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    bool found = store_next(&r);
    if (found)
        queue_from_row(&r, out);
    store_rows_close(&r);
    return found ? ERR_OK : bb_fail(e, ERR_NOT_FOUND, "queue", "no queue named %s", name);
}

enum err
job_queue_put(struct store_conn *c, const struct job_queue *q, int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {
        sp_text(q->name),
        sp_int(q->paused),
        sp_int(q->concurrency),
        sp_int(q->max_attempts),
        sp_int(q->backoff.base_ms),
        sp_int(q->backoff.factor_milli),
        sp_int(q->backoff.cap_ms),
        sp_int(q->backoff.jitter_pct),
        sp_int(q->lease_ms),
        sp_int(q->rate_max),
        sp_int(q->rate_per_ms),
        sp_int(q->key_concurrency),
        sp_int(q->key_rate_max),
        sp_int(q->key_rate_per_ms),
        sp_int(now_ms),
    };
    BB_ASSERT((q->rate_max > 0) == (q->rate_per_ms > 0));
    BB_ASSERT((q->key_rate_max > 0) == (q->key_rate_per_ms > 0));
    struct job_queue was;
    enum err rc = queue_read(c, &QUEUE_GET, q->name, &was, e);
    if (rc == ERR_NOT_FOUND) {
        was = *q;
        rc = ERR_OK;
    }
    if (rc == ERR_OK)
        rc = store_exec(c, &QUEUE_PUT, p, BB_ARRAY_LEN(p), NULL, e);
    const struct store_param name[] = {sp_text(q->name)};
    if (rc == ERR_OK &&
        (was.key_rate_max != q->key_rate_max || was.key_rate_per_ms != q->key_rate_per_ms)) {
        rc = store_exec(c, &KEY_RATES_DROP, name, 1, NULL, e);
        /* Every parked job ready, their wake-ups gone with the buckets:
         * claims park again what a key's room or new rate holds back. */
        if (rc == ERR_OK && was.key_rate_max > 0)
            rc = store_exec(c, &UNPARK_QUEUE, name, 1, NULL, e);
    }
    if (rc != ERR_OK || was.key_concurrency == 0 || was.key_concurrency == q->key_concurrency)
        return rc;
    /* Parked jobs under a raised limit: their keys' next jobs get the new
     * slots at the next claim. (A lowered one parks more as claims go.) */
    if (q->key_concurrency > was.key_concurrency) {
        const struct store_param n[] = {sp_text(q->name),
                                        sp_int(q->key_concurrency - was.key_concurrency)};
        return store_exec(c, &NOTE_RAISED_LIMIT, n, BB_ARRAY_LEN(n), NULL, e);
    }
    if (q->key_concurrency > 0)
        return ERR_OK;
    rc = store_exec(c, &UNPARK_QUEUE, name, 1, NULL, e);
    return rc == ERR_OK ? store_exec(c, &FREED_KEYS_DROP, name, 1, NULL, e) : rc;
}

enum err
job_queue_get(struct store_conn *c, const char *name, struct job_queue *out, struct bb_error *e)
{
    return queue_read(c, &QUEUE_GET, name, out, e);
}

enum err
job_queue_set_paused(struct store_conn *c, const char *name, bool paused, int64_t now_ms,
                     struct bb_error *e)
{
    const struct store_param p[] = {sp_text(name), sp_int(paused), sp_int(now_ms)};
    int64_t changed;
    enum err rc = store_exec(c, &QUEUE_PAUSE, p, BB_ARRAY_LEN(p), &changed, e);
    if (rc == ERR_OK && changed == 0)
        return bb_fail(e, ERR_NOT_FOUND, "queue", "no queue named %s", name);
    if (rc == ERR_OK && !paused)
        rc = store_notify(c, JOBS__CHANNEL, name, e); /* its jobs may run now */
    return rc;
}

static json_t *
backoff_json(const struct job_backoff *b)
{
    return json_pack("{s:I, s:f, s:I, s:I}", "base_ms", (json_int_t)b->base_ms, "factor",
                     (double)b->factor_milli / 1000.0, "cap_ms", (json_int_t)b->cap_ms,
                     "jitter_pct", (json_int_t)b->jitter_pct);
}

static json_t *
queue_json(const struct job_queue *q)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(q->name));
    json_object_set_new(o, "paused", json_boolean(q->paused));
    json_object_set_new(o, "concurrency", json_integer(q->concurrency));
    json_object_set_new(o, "key_concurrency", json_integer(q->key_concurrency));
    json_object_set_new(o, "max_attempts", json_integer(q->max_attempts));
    json_object_set_new(o, "backoff", backoff_json(&q->backoff));
    json_object_set_new(o, "lease_ms", json_integer(q->lease_ms));
    json_object_set_new(o, "rate_limit",
                        q->rate_max > 0 ? json_pack("{s:I, s:I}", "max", (json_int_t)q->rate_max,
                                                    "per_ms", (json_int_t)q->rate_per_ms)
                                        : json_null());
    json_object_set_new(o, "key_rate_limit",
                        q->key_rate_max > 0
                            ? json_pack("{s:I, s:I}", "max", (json_int_t)q->key_rate_max, "per_ms",
                                        (json_int_t)q->key_rate_per_ms)
                            : json_null());
    json_t *depth = json_object();
    static const char *const keys[] = {"ready", "scheduled", "parked", "running", "dead"};
    for (size_t i = 0; i < BB_ARRAY_LEN(keys); i++)
        json_object_set_new(depth, keys[i], json_integer(0));
    json_object_set_new(o, "depth", depth);
    return o;
}

enum err
job_queue_list_json(struct store_conn *c, const char *only, int64_t now_ms, json_t **out,
                    struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(only ? only : "")};
    enum err rc = store_query(c, &QUEUE_LIST, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *queues = json_object(); /* name -> queue, to add depths below */
    json_t *list = json_array();
    while (store_next(&r)) {
        struct job_queue q;
        queue_from_row(&r, &q);
        json_t *qj = queue_json(&q);
        json_object_set(queues, q.name, qj);
        json_array_append_new(list, qj);
    }
    store_rows_close(&r);
    const struct store_param d[] = {sp_int(now_ms), sp_text(only ? only : "")};
    rc = store_query(c, &QUEUE_DEPTH, d, 2, &r, e);
    if (rc == ERR_OK) {
        while (store_next(&r)) {
            json_t *qj = json_object_get(queues, store_col_text(&r, 0));
            if (qj == NULL)
                continue;
            json_t *depth = json_object_get(qj, "depth");
            const char *state = store_col_text(&r, 1);
            int64_t n = store_col_int(&r, 2), later = store_col_int(&r, 3);
            if (strcmp(state, "pending") == 0) {
                json_object_set_new(depth, "ready", json_integer(n - later));
                json_object_set_new(depth, "scheduled", json_integer(later));
            } else {
                json_object_set_new(depth, state, json_integer(n));
            }
        }
        store_rows_close(&r);
    }
    json_decref(queues);
    if (rc != ERR_OK) {
        json_decref(list);
        return rc;
    }
    if (only && json_array_size(list) == 0) {
        json_decref(list);
        return bb_fail(e, ERR_NOT_FOUND, "queue", "no queue named %s", only);
    }
    *out = list;
    return ERR_OK;
}

/* ---- submitting -------------------------------------------------------------------------- */

#define JOB_INSERT_COLUMNS                                                                      \
    "(queue, handler, external, state, priority, run_at_ms, payload, target, tags, unique_key," \
    " attempt, max_attempts, attempt_limit, backoff_base_ms, backoff_factor_milli,"             \
    " backoff_cap_ms, backoff_jitter_pct, max_duration_ms, lease_token, schedule,"              \
    " scheduled_for_ms, created_at_ms, updated_at_ms, traceparent, concurrency_key)"
#define JOB_INSERT_VALUES                                                                      \
    " VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, 0, $10, $10, $11, $12, $13, $14," \
    " $15, 0, $16, $17, $18, $18, $19, $20)"

static struct store_stmt JOB_INSERT = {
    .sql = "INSERT INTO jobs " JOB_INSERT_COLUMNS JOB_INSERT_VALUES " RETURNING id",
};
static struct store_stmt JOB_INSERT_UNIQUE = {
    .sql = "INSERT INTO jobs " JOB_INSERT_COLUMNS JOB_INSERT_VALUES
           " ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL"
           " AND state IN ('pending', 'running') DO NOTHING RETURNING id",
};
static struct store_stmt JOB_INSERT_FIRE = {
    .sql = "INSERT INTO jobs " JOB_INSERT_COLUMNS JOB_INSERT_VALUES
           " ON CONFLICT (schedule, scheduled_for_ms) WHERE schedule IS NOT NULL"
           " DO NOTHING RETURNING id",
};
static struct store_stmt JOB_BY_UNIQUE = {
    .sql = "SELECT id FROM jobs WHERE queue = $1 AND unique_key = $2"
           " AND state IN ('pending', 'running')",
};

enum { INSERT_PARAMS = 20, INSERT_CHUNK = 64, INSERT_CHUNKS = 6 /* 64, 32, ..., 2 rows */ };

/*
 * Batches insert up to INSERT_CHUNK jobs per statement (one multi-row
 * VALUES of 64, 32, 16, 8, 4 or 2 rows), which costs the database far less
 * than a statement per job. Identity values are drawn in VALUES order, so
 * the returned ids, sorted, are the rows' ids in order, whatever order
 * RETURNING lists them in.
 */
static char insert_chunk_sql[INSERT_CHUNKS][256 + INSERT_CHUNK * 160];
static struct store_stmt JOB_INSERT_CHUNK[INSERT_CHUNKS];
static pthread_once_t insert_chunk_once = PTHREAD_ONCE_INIT;

static size_t
chunk_rows(size_t i)
{
    return (size_t)INSERT_CHUNK >> i;
}

static void
insert_chunk_build(void)
{
    for (size_t i = 0; i < INSERT_CHUNKS; i++) {
        struct bb_buf b;
        bb_buf_init(&b);
        bb_buf_puts(&b, "INSERT INTO jobs " JOB_INSERT_COLUMNS " VALUES ");
        for (int r = 0; r < (int)chunk_rows(i); r++) {
            int k = r * INSERT_PARAMS;
            bb_buf_printf(&b,
                          "%s($%d, $%d, $%d, 'pending', $%d, $%d, $%d, $%d, $%d, $%d, 0, $%d, $%d,"
                          " $%d, $%d, $%d, $%d, $%d, 0, $%d, $%d, $%d, $%d, $%d, $%d)",
                          r ? ", " : "", k + 1, k + 2, k + 3, k + 4, k + 5, k + 6, k + 7, k + 8,
                          k + 9, k + 10, k + 10, k + 11, k + 12, k + 13, k + 14, k + 15, k + 16,
                          k + 17, k + 18, k + 18, k + 19, k + 20);
        }
        bb_buf_puts(&b, " RETURNING id");
        BB_ASSERT(b.len < sizeof insert_chunk_sql[i]);
        memcpy(insert_chunk_sql[i], b.data, b.len + 1);
        JOB_INSERT_CHUNK[i].sql = insert_chunk_sql[i];
        bb_buf_deinit(&b);
    }
}

static int
cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Insert n_rows prepared rows (INSERT_PARAMS each); ids[k] gets row k's. */
static enum err
insert_rows(struct store_conn *c, const struct store_param *params, size_t n_rows, int64_t *ids,
            struct bb_error *e)
{
    pthread_once(&insert_chunk_once, insert_chunk_build);
    size_t done = 0;
    enum err rc = ERR_OK;
    for (size_t i = 0; i < INSERT_CHUNKS && rc == ERR_OK;) {
        size_t rows = chunk_rows(i);
        if (n_rows - done < rows) {
            i++;
            continue;
        }
        struct store_rows r;
        rc = store_query(c, &JOB_INSERT_CHUNK[i], params + done * INSERT_PARAMS,
                         rows * INSERT_PARAMS, &r, e);
        if (rc != ERR_OK)
            break;
        size_t k = 0;
        while (store_next(&r) && k < rows)
            ids[done + k++] = store_col_int(&r, 0);
        store_rows_close(&r);
        if (k != rows)
            return bb_fail(e, ERR_STORE, "", "batch insert returned %zu ids for %zu rows", k, rows);
        qsort(ids + done, rows, sizeof *ids, cmp_id);
        done += rows;
    }
    if (rc == ERR_OK && done < n_rows)
        rc = store_exec_many(c, &JOB_INSERT, params + done * INSERT_PARAMS, INSERT_PARAMS,
                             n_rows - done, ids + done, e);
    return rc;
}

/* JOB_INSERT's parameters for `spec` in queue `q`. */
static void
insert_params(const struct job_spec *spec, const struct job_queue *q, int64_t now_ms,
              struct store_param p[INSERT_PARAMS])
{
    struct job_backoff b = spec->has_backoff ? spec->backoff : q->backoff;
    if (spec->backoff_cap_ms > 0 && b.cap_ms > spec->backoff_cap_ms)
        b.cap_ms = spec->backoff_cap_ms;
    int64_t attempts = spec->max_attempts > 0 ? spec->max_attempts : q->max_attempts;
    const struct store_param values[INSERT_PARAMS] = {
        sp_text(q->name),
        sp_text(spec->handler),
        sp_int(job_handler_is_external(spec->handler)),
        sp_int(spec->priority),
        sp_int(spec->run_at_ms > 0 ? spec->run_at_ms : now_ms),
        sp_text(spec->payload ? spec->payload : "{}"),
        sp_text(spec->target),
        sp_text(spec->tags ? spec->tags : "[]"),
        sp_text(spec->unique_key),
        sp_int(attempts),
        sp_int(b.base_ms),
        sp_int(b.factor_milli),
        sp_int(b.cap_ms),
        sp_int(b.jitter_pct),
        sp_int(spec->max_duration_ms > 0 ? spec->max_duration_ms : q->lease_ms),
        sp_text(spec->schedule),
        spec->schedule ? sp_int(spec->scheduled_for_ms) : sp_null(),
        sp_int(now_ms),
        sp_text(spec->traceparent),
        sp_text(spec->concurrency_key),
    };
    memcpy(p, values, sizeof values);
}

/* Jobs submitted to a queue, counted once their transaction commits. */
static void
count_submitted(struct store_conn *c, const char *queue, int64_t n)
{
    store_count_at_commit(c, jobs__metric_submitted_def(), (double)n, (const char *const[]){queue});
}

enum err
job_submit(struct store_conn *c, const struct job_spec *spec, int64_t now_ms, int64_t *id,
           bool *created, struct bb_error *e)
{
    const char *queue = spec->queue ? spec->queue : "default";
    struct job_queue q;
    enum err rc = job_queue_get(c, queue, &q, e);
    if (rc != ERR_OK)
        return rc;
    struct store_param p[INSERT_PARAMS];
    insert_params(spec, &q, now_ms, p);
    struct store_stmt *st = spec->schedule     ? &JOB_INSERT_FIRE
                            : spec->unique_key ? &JOB_INSERT_UNIQUE
                                               : &JOB_INSERT;
    bool inserted;
    rc = query_int(c, st, p, INSERT_PARAMS, id, &inserted, e);
    if (rc != ERR_OK)
        return rc;
    *created = inserted;
    if (!inserted && spec->unique_key) {
        const struct store_param u[] = {sp_text(queue), sp_text(spec->unique_key)};
        bool found;
        rc = query_int(c, &JOB_BY_UNIQUE, u, 2, id, &found, e);
        if (rc == ERR_OK && !found) /* it finished between the two statements */
            return bb_fail(e, ERR_RETRY, "", "unique job changed concurrently");
        return rc;
    }
    if (!inserted)
        return ERR_OK;
    count_submitted(c, q.name, 1);
    /* Workers wake for a job due later too: it sets their next timer. */
    if (!q.paused)
        rc = store_notify(c, JOBS__CHANNEL, queue, e);
    return rc;
}

/* A job handed to a pool at insert: leased to its worker, first attempt. */
static struct store_stmt JOB_INSERT_HERE = {
    .sql = "INSERT INTO jobs (queue, handler, external, state, priority, run_at_ms, payload,"
           " target, tags, unique_key, attempt, max_attempts, attempt_limit, backoff_base_ms,"
           " backoff_factor_milli, backoff_cap_ms, backoff_jitter_pct, max_duration_ms,"
           " lease_token, schedule, scheduled_for_ms, created_at_ms, updated_at_ms, traceparent,"
           " concurrency_key, leased_by, lease_expires_at_ms, started_at_ms)"
           " VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, 1, $10, $10, $11, $12, $13,"
           " $14, $15, 1, $16, $17, $18, $18, $19, $20, $21, $18 + $15 + 1000, $18) RETURNING id",
};
enum { HERE_PARAMS = INSERT_PARAMS + 1 };

/* Jobs inserted for a pool, run there once the transaction commits. */
struct handover {
    struct job_pool *pool;
    struct job_lease *leases;
    size_t n;
};

static void
handover_end(void *arg, bool committed)
{
    struct handover *h = arg;
    if (committed) {
        jobs__pool_adopt(h->pool, h->leases, h->n, h->n);
    } else {
        for (size_t i = 0; i < h->n; i++)
            job_lease_deinit(&h->leases[i]);
        free(h->leases);
        jobs__pool_adopt(h->pool, NULL, 0, h->n);
    }
    free(h);
}

/* The lease JOB_INSERT_HERE gave job `id` of `spec` (its parameters `p`). */
static struct job_lease
handover_lease(int64_t id, const struct job_spec *spec, const struct store_param *p, int64_t now_ms)
{
    int64_t max_duration = p[14].i;
    return (struct job_lease){.id = id,
                              .queue = xstrdup(p[0].s),
                              .handler = xstrdup(spec->handler),
                              .payload = xstrdup(p[5].s),
                              .target = spec->target ? xstrdup(spec->target) : NULL,
                              .attempt = 1,
                              .attempt_limit = p[9].i,
                              .lease_token = 1,
                              .lease_expires_at_ms = now_ms + max_duration + 1000,
                              .max_duration_ms = max_duration,
                              .created_at_ms = now_ms,
                              .run_at_ms = p[4].i,
                              .traceparent = spec->traceparent ? xstrdup(spec->traceparent) : NULL};
}

static enum err
submit_many(struct store_conn *c, struct job_pool *pool, const struct job_spec *specs, size_t n,
            int64_t now_ms, int64_t *ids, bool *created, size_t *failed_at, struct bb_error *e)
{
    struct store_param *params = xcalloc(n ? n : 1, INSERT_PARAMS * sizeof *params);
    struct store_param *here = xcalloc(n ? n : 1, HERE_PARAMS * sizeof *here);
    size_t *rows = xcalloc(n ? n : 1, sizeof *rows);   /* spec index of each plain row */
    size_t *hrows = xcalloc(n ? n : 1, sizeof *hrows); /* and of each handed over */
    int64_t *got = xcalloc(n ? n : 1, sizeof *got);
    /* Each distinct queue's settings, alive for the whole call: the rows'
     * parameters borrow their names. */
    struct job_queue *queues = xcalloc(n ? n : 1, sizeof *queues);
    int64_t *made = xcalloc(n ? n : 1, sizeof *made); /* rows per queue, to count */
    size_t n_queues = 0;
    size_t n_rows = 0, n_here = 0;
    enum err rc = ERR_OK;
    const char *notify_queues[16];
    size_t n_notify = 0;
    bool notify_all = false; /* more queues than notify_queues holds: wake every worker */
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        const struct job_spec *sp = &specs[i];
        *failed_at = i;
        if (sp->unique_key || sp->schedule) { /* may find a job: one by one */
            rc = job_submit(c, sp, now_ms, &ids[i], &created[i], e);
            continue;
        }
        const char *queue = sp->queue ? sp->queue : "default";
        struct job_queue *q = NULL;
        for (size_t k = 0; k < n_queues && q == NULL; k++)
            q = strcmp(queues[k].name, queue) == 0 ? &queues[k] : NULL;
        if (q == NULL) {
            q = &queues[n_queues];
            rc = job_queue_get(c, queue, q, e);
            if (rc != ERR_OK)
                break;
            n_queues++;
        }
        made[q - queues]++;
        const char *worker;
        if (pool && !q->paused && !job_queue_is_limited(q) && sp->run_at_ms <= now_ms &&
            !job_handler_is_external(sp->handler) &&
            jobs__pool_reserve(pool, q->name, 1, &worker) == 1) {
            struct store_param *hp = here + n_here * HERE_PARAMS;
            insert_params(sp, q, now_ms, hp);
            hp[INSERT_PARAMS] = sp_text(worker);
            hrows[n_here++] = i;
            continue;
        }
        insert_params(sp, q, now_ms, params + n_rows * INSERT_PARAMS);
        rows[n_rows++] = i;
        bool ready = !q->paused; /* due now, or it sets the workers' next timer */
        bool known = false;
        for (size_t k = 0; k < n_notify && !known; k++)
            known = strcmp(notify_queues[k], queue) == 0;
        if (ready && !known && n_notify < BB_ARRAY_LEN(notify_queues))
            notify_queues[n_notify++] = q->name;
        else if (ready && !known)
            notify_all = true;
    }
    if (rc == ERR_OK)
        rc = insert_rows(c, params, n_rows, got, e);
    for (size_t k = 0; k < n_rows && rc == ERR_OK; k++) {
        ids[rows[k]] = got[k];
        created[rows[k]] = true;
    }
    if (rc == ERR_OK && n_here > 0)
        rc = store_exec_many(c, &JOB_INSERT_HERE, here, HERE_PARAMS, n_here, got, e);
    if (n_here > 0 && rc != ERR_OK) {
        jobs__pool_adopt(pool, NULL, 0, n_here); /* nothing to hand over */
    } else if (n_here > 0) {
        struct handover *h = xcalloc(1, sizeof *h);
        *h = (struct handover){
            .pool = pool, .leases = xcalloc(n_here, sizeof *h->leases), .n = n_here};
        for (size_t k = 0; k < n_here; k++) {
            ids[hrows[k]] = got[k];
            created[hrows[k]] = true;
            h->leases[k] = handover_lease(got[k], &specs[hrows[k]], here + k * HERE_PARAMS, now_ms);
        }
        store_after_commit(c, handover_end, h);
    }
    if (notify_all && rc == ERR_OK)
        rc = store_notify(c, JOBS__CHANNEL, "", e);
    for (size_t k = 0; k < n_notify && !notify_all && rc == ERR_OK; k++)
        rc = store_notify(c, JOBS__CHANNEL, notify_queues[k], e);
    for (size_t k = 0; k < n_queues && rc == ERR_OK; k++) /* job_submit counted its own */
        count_submitted(c, queues[k].name, made[k]);
    free(made);
    free(params);
    free(here);
    free(rows);
    free(hrows);
    free(got);
    free(queues);
    return rc;
}

enum err
job_submit_many(struct store_conn *c, const struct job_spec *specs, size_t n, int64_t now_ms,
                int64_t *ids, bool *created, size_t *failed_at, struct bb_error *e)
{
    return submit_many(c, NULL, specs, n, now_ms, ids, created, failed_at, e);
}

enum err
job_submit_many_here(struct store_conn *c, struct job_pool *pool, const struct job_spec *specs,
                     size_t n, int64_t now_ms, int64_t *ids, bool *created, size_t *failed_at,
                     struct bb_error *e)
{
    return submit_many(c, pool, specs, n, now_ms, ids, created, failed_at, e);
}

/* ---- reading ------------------------------------------------------------------------------- */

#define JOB_COLUMNS                                                                           \
    "id, queue, handler, state, priority, run_at_ms, payload, target, tags, unique_key,"      \
    " attempt, max_attempts, attempt_limit, max_duration_ms, lease_token, leased_by,"         \
    " lease_expires_at_ms, started_at_ms, finished_at_ms, last_error, schedule,"              \
    " scheduled_for_ms, created_at_ms, updated_at_ms, backoff_base_ms, backoff_factor_milli," \
    " backoff_cap_ms, backoff_jitter_pct, error_fingerprint, traceparent, concurrency_key, parked"

static struct store_stmt JOB_GET = {.sql = "SELECT " JOB_COLUMNS " FROM jobs WHERE id = $1"};
/* A completed job's last attempt is its own row (completions write no
 * attempt row); the rows are the attempts before it. */
static struct store_stmt JOB_ATTEMPTS = {
    .sql = "SELECT attempt, worker, started_at_ms, finished_at_ms, outcome, error"
           " FROM job_attempts WHERE job_id = $1"
           " UNION ALL SELECT attempt, leased_by, started_at_ms, finished_at_ms, 'completed', NULL"
           " FROM jobs j WHERE id = $1 AND state = 'completed' AND NOT EXISTS"
           " (SELECT 1 FROM job_attempts a WHERE a.job_id = j.id AND a.attempt = j.attempt)"
           " ORDER BY 1",
};
/* One statement per filter combination, so each can use its index. */
static struct store_stmt JOB_LIST_ALL = {
    .sql = "SELECT " JOB_COLUMNS " FROM jobs WHERE id > $1 ORDER BY id LIMIT $2",
};
static struct store_stmt JOB_LIST_QUEUE = {
    .sql = "SELECT " JOB_COLUMNS " FROM jobs WHERE queue = $3 AND id > $1 ORDER BY id LIMIT $2",
};
static struct store_stmt JOB_LIST_STATE = {
    .sql = "SELECT " JOB_COLUMNS " FROM jobs WHERE state = $3 AND id > $1 ORDER BY id LIMIT $2",
};
static struct store_stmt JOB_LIST_BOTH = {
    .sql = "SELECT " JOB_COLUMNS " FROM jobs WHERE state = $3 AND queue = $4 AND id > $1"
           " ORDER BY id LIMIT $2",
};
static struct store_stmt JOB_LIST_DEAD_GROUP = {
    .sql = "SELECT " JOB_COLUMNS " FROM jobs WHERE state = 'dead' AND error_fingerprint = $3"
           " AND ($4 = '' OR queue = $4) AND id > $1 ORDER BY id LIMIT $2",
};

static json_t *
job_row_json(const struct store_rows *r, int64_t now_ms)
{
    json_t *o = json_object();
    const char *state = store_col_text(r, 3);
    json_object_set_new(o, "job_id", json_integer(store_col_int(r, 0)));
    json_object_set_new(o, "queue", text_json(r, 1));
    json_object_set_new(o, "handler", text_json(r, 2));
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(
        o, "ready", json_boolean(strcmp(state, "pending") == 0 && store_col_int(r, 5) <= now_ms));
    json_object_set_new(o, "priority", json_integer(store_col_int(r, 4)));
    json_object_set_new(o, "run_at", time_json(r, 5));
    json_object_set_new(o, "payload", stored_json(r, 6));
    if (!store_col_is_null(r, 7))
        json_object_set_new(o, "target", stored_json(r, 7));
    json_object_set_new(o, "tags", stored_json(r, 8));
    json_object_set_new(o, "unique_key", text_json(r, 9));
    json_object_set_new(o, "attempt", json_integer(store_col_int(r, 10)));
    json_object_set_new(o, "max_attempts", json_integer(store_col_int(r, 11)));
    json_object_set_new(o, "attempt_limit", json_integer(store_col_int(r, 12)));
    json_object_set_new(o, "max_duration_seconds",
                        json_integer((store_col_int(r, 13) + 999) / 1000));
    if (strcmp(state, "running") == 0) {
        json_t *lease = json_object();
        json_object_set_new(lease, "worker", text_json(r, 15));
        json_object_set_new(lease, "expires_at", time_json(r, 16));
        json_object_set_new(o, "lease", lease);
    }
    json_object_set_new(o, "started_at", time_json(r, 17));
    json_object_set_new(o, "finished_at", time_json(r, 18));
    json_object_set_new(o, "last_error", text_json(r, 19));
    if (strcmp(state, "dead") == 0)
        json_object_set_new(o, "error_fingerprint", text_json(r, 28));
    json_object_set_new(o, "schedule", text_json(r, 20));
    json_object_set_new(o, "traceparent", text_json(r, 29));
    json_object_set_new(o, "concurrency_key", text_json(r, 30));
    if (strcmp(state, "pending") == 0)
        json_object_set_new(o, "parked", json_boolean(store_col_int(r, 31) != 0));
    json_object_set_new(o, "created_at", time_json(r, 22));
    json_object_set_new(o, "updated_at", time_json(r, 23));
    struct job_backoff b = {store_col_int(r, 24), store_col_int(r, 25), store_col_int(r, 26),
                            store_col_int(r, 27)};
    json_object_set_new(o, "backoff", backoff_json(&b));
    return o;
}

static enum err
attempts_json(struct store_conn *c, int64_t id, json_t **out, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(id)};
    enum err rc = store_query(c, &JOB_ATTEMPTS, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *list = json_array();
    while (store_next(&r)) {
        json_t *a = json_object();
        json_object_set_new(a, "attempt", json_integer(store_col_int(&r, 0)));
        json_object_set_new(a, "worker", text_json(&r, 1));
        json_object_set_new(a, "started_at", time_json(&r, 2));
        json_object_set_new(a, "finished_at", time_json(&r, 3));
        json_object_set_new(a, "outcome", text_json(&r, 4));
        json_object_set_new(a, "error", text_json(&r, 5));
        json_object_set_new(a, "duration_ms",
                            store_col_is_null(&r, 2)
                                ? json_null()
                                : json_integer(store_col_int(&r, 3) - store_col_int(&r, 2)));
        json_array_append_new(list, a);
    }
    store_rows_close(&r);
    *out = list;
    return ERR_OK;
}

enum err
job_get_json(struct store_conn *c, int64_t id, bool with_attempts, int64_t now_ms, json_t **out,
             struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(id)};
    enum err rc = store_query(c, &JOB_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "job_id", "no job %" PRId64, id);
    }
    json_t *job = job_row_json(&r, now_ms);
    store_rows_close(&r);
    if (with_attempts) {
        json_t *attempts;
        rc = attempts_json(c, id, &attempts, e);
        if (rc != ERR_OK) {
            json_decref(job);
            return rc;
        }
        json_object_set_new(job, "attempts", attempts);
    }
    *out = job;
    return ERR_OK;
}

enum err
job_list_json(struct store_conn *c, const struct job_filter *f, int64_t now_ms, json_t **out,
              struct bb_error *e)
{
    struct store_rows r;
    struct store_param p[4] = {sp_int(f->after_id), sp_int(f->limit)};
    struct store_stmt *st = &JOB_LIST_ALL;
    size_t n = 2;
    if (f->has_state)
        p[n++] = sp_text(job_state_name(f->state));
    if (f->queue)
        p[n++] = sp_text(f->queue);
    if (f->fingerprint) {
        p[2] = sp_text(f->fingerprint);
        p[3] = sp_text(f->queue ? f->queue : "");
        n = 4;
        st = &JOB_LIST_DEAD_GROUP;
    } else if (f->has_state && f->queue)
        st = &JOB_LIST_BOTH;
    else if (f->has_state)
        st = &JOB_LIST_STATE;
    else if (f->queue)
        st = &JOB_LIST_QUEUE;
    enum err rc = store_query(c, st, p, n, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *jobs = json_array();
    int64_t last = 0;
    while (store_next(&r)) {
        json_array_append_new(jobs, job_row_json(&r, now_ms));
        last = store_col_int(&r, 0);
    }
    store_rows_close(&r);
    json_t *page = json_object();
    json_object_set_new(page, "jobs", jobs);
    json_object_set_new(page, "next_after",
                        (int64_t)json_array_size(jobs) == f->limit ? json_integer(last)
                                                                   : json_null());
    *out = page;
    return ERR_OK;
}

static struct store_stmt JOB_STATES_MANY = {
    .sql_pg = "SELECT id, state FROM jobs WHERE id = ANY($1::bigint[])",
    .sql_sqlite = "SELECT id, state FROM jobs WHERE id IN (SELECT value FROM json_each($1))",
};

enum err
job_states_many(struct store_conn *c, const int64_t *ids, size_t n, enum job_state *states,
                bool *found, struct bb_error *e)
{
    for (size_t i = 0; i < n; i++)
        found[i] = false;
    if (n == 0)
        return ERR_OK;
    struct store_batch b;
    store_batch_ints(&b, c, ids, n);
    const struct store_param p[] = {sp_batch(&b)};
    struct store_rows r;
    enum err rc = store_query(c, &JOB_STATES_MANY, p, 1, &r, e);
    store_batch_deinit(&b);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r)) {
        int64_t id = store_col_int(&r, 0);
        enum job_state st;
        if (!job_state_parse(store_col_text(&r, 1), &st))
            continue; /* not a state this code writes: as good as gone */
        for (size_t i = 0; i < n; i++) {
            if (ids[i] == id) {
                states[i] = st;
                found[i] = true;
            }
        }
    }
    store_rows_close(&r);
    return ERR_OK;
}

/* ---- notes of keys with a free slot (migration 8) ---------------------------------------- */

/* A batch of (queue, key): jobs of those keys stopped running, or were
 * cancelled before they ran (a job unparked for a slot, then cancelled,
 * would leave the slot unused). Only a queue with a per-key limit parks
 * jobs, so only its notes are kept. */
static struct store_stmt NOTES_INSERT_MANY = {
    .sql_sqlite = "INSERT INTO job_keys_freed (queue, concurrency_key)"
                  " SELECT json_extract(value, '$.queue'), json_extract(value, '$.key')"
                  " FROM json_each($1) WHERE EXISTS (SELECT 1 FROM job_queues q"
                  " WHERE q.name = json_extract(value, '$.queue') AND q.key_concurrency > 0)",
    .sql_pg = "INSERT INTO job_keys_freed (queue, concurrency_key) SELECT x.queue, x.key"
              " FROM unnest($1::text[], $2::text[]) AS x(queue, key)"
              " JOIN job_queues q ON q.name = x.queue AND q.key_concurrency > 0",
};

/* Add (queue, key) to `notes` when the job had a key (not NULL). */
static void
note_key(struct store_batch *notes, const char *queue, const char *key)
{
    if (key == NULL)
        return;
    store_batch_row(notes);
    store_batch_text(notes, "queue", queue);
    store_batch_text(notes, "key", key);
}

static const char *
text_or_null(const struct store_rows *r, int col)
{
    return store_col_is_null(r, col) ? NULL : store_col_text(r, col);
}

static enum err
note_freed_keys(struct store_conn *c, struct store_batch *notes, struct bb_error *e)
{
    if (notes->n_rows == 0)
        return ERR_OK;
    const struct store_param p[] = {sp_batch(notes)};
    return store_exec_deferred(c, &NOTES_INSERT_MANY, p, 1, e);
}

/* ---- changing jobs by hand ------------------------------------------------------------------ */

static struct store_stmt JOB_STATE = {.sql = "SELECT state, queue FROM jobs WHERE id = $1"};
/* Before a cancel: was the job running where a limit counted it? Locked
 * on PostgreSQL, so the answer holds until the cancel. */
static struct store_stmt JOB_CANCEL_READ = {
    .sql = "SELECT j.state, COALESCE(q.concurrency, 0) FROM jobs j"
           " LEFT JOIN job_queues q ON q.name = j.queue WHERE j.id = $1",
    .sql_pg = "SELECT j.state, COALESCE(q.concurrency, 0) FROM jobs j"
              " LEFT JOIN job_queues q ON q.name = j.queue WHERE j.id = $1 FOR UPDATE OF j",
};
static struct store_stmt JOB_CANCEL = {
    .sql = "UPDATE jobs SET state = 'cancelled', lease_token = lease_token + 1, parked = 0,"
           " lease_expires_at_ms = NULL, finished_at_ms = $2, updated_at_ms = $2"
           " WHERE id = $1 AND state IN ('pending', 'running') RETURNING queue, concurrency_key",
};
static struct store_stmt JOB_RUN_PENDING_NOW = {
    .sql = "UPDATE jobs SET run_at_ms = $2, updated_at_ms = $2 WHERE id = $1 AND state = 'pending'",
};
/* Before a completed job runs again: its last attempt as a row. */
static struct store_stmt JOB_KEEP_COMPLETED_ATTEMPT = {
    .sql = "INSERT INTO job_attempts (job_id, attempt, worker, started_at_ms, finished_at_ms,"
           " outcome, error) SELECT id, attempt, leased_by, started_at_ms, finished_at_ms,"
           " 'completed', NULL FROM jobs WHERE id = $1 AND state = 'completed'"
           " ON CONFLICT DO NOTHING",
};
/* A finished job again: a fresh set of attempts after those it used. */
static struct store_stmt JOB_REENQUEUE = {
    .sql = "UPDATE jobs SET state = 'pending', run_at_ms = $2, attempt_limit = attempt +"
           " max_attempts, finished_at_ms = NULL, lease_expires_at_ms = NULL,"
           " error_fingerprint = NULL, updated_at_ms = $2"
           " WHERE id = $1 AND state IN ('completed', 'cancelled', 'dead')",
};
/* The dead letters of a queue ('': all) and fingerprint ('': all). */
#define DEAD_MATCH                               \
    "state = 'dead' AND ($1 = '' OR queue = $1)" \
    " AND ($2 = '' OR error_fingerprint = $2)"
/* The live job holding finished job $1's unique key: it cannot be queued
 * again while one does (jobs_unique). */
static struct store_stmt JOB_UNIQUE_HOLDER = {
    .sql = "SELECT l.id, l.state, j.unique_key, j.queue FROM jobs j JOIN jobs l"
           " ON l.queue = j.queue AND l.unique_key = j.unique_key"
           " AND l.state IN ('pending', 'running')"
           " WHERE j.id = $1 AND j.state IN ('completed', 'cancelled', 'dead')",
};
/* The dead letters that may be queued again: those without a unique key,
 * and of those sharing one the newest, unless a live job holds it. */
static struct store_stmt JOB_REDRIVE_DEAD = {
    .sql = "UPDATE jobs SET state = 'pending', run_at_ms = $3, attempt_limit = attempt +"
           " max_attempts, finished_at_ms = NULL, error_fingerprint = NULL, updated_at_ms = $3"
           " WHERE id IN (SELECT d.id FROM (SELECT id, queue, unique_key, row_number()"
           " OVER (PARTITION BY queue, unique_key ORDER BY id DESC) AS nth FROM jobs"
           " WHERE " DEAD_MATCH ") d WHERE d.unique_key IS NULL"
           " OR (d.nth = 1 AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.queue = d.queue"
           " AND l.unique_key = d.unique_key AND l.state IN ('pending', 'running'))))",
};
/* After the redrive: the dead letters it left for their unique key. */
static struct store_stmt JOB_DEAD_KEYED_COUNT = {
    .sql = "SELECT COUNT(*) FROM jobs WHERE " DEAD_MATCH " AND unique_key IS NOT NULL",
};
/* PostgreSQL: the jobs first, then the attempts of those very jobs, so
 * that a job redriven between a read of the dead letters and their delete
 * keeps its history. SQLite's writer holds the whole database: the
 * attempts, then the jobs. */
static struct store_stmt JOB_PURGE_DEAD_PG = {
    .sql = "WITH gone AS (DELETE FROM jobs WHERE " DEAD_MATCH " RETURNING id),"
           " attempts AS (DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM gone))"
           " SELECT COUNT(*) FROM gone",
};
static struct store_stmt JOB_PURGE_DEAD = {
    .sql = "DELETE FROM jobs WHERE " DEAD_MATCH,
};
static struct store_stmt JOB_PURGE_DEAD_ATTEMPTS = {
    .sql = "DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM jobs WHERE " DEAD_MATCH ")",
};

/* The job's state, for an error that says why a change did not apply. */
static enum err
state_conflict(struct store_conn *c, int64_t id, const char *what, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(id)};
    enum err rc = store_query(c, &JOB_STATE, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "job_id", "no job %" PRId64, id);
    }
    rc = bb_fail(e, ERR_CONFLICT, "job_id", "job %" PRId64 " is %s: cannot %s it", id,
                 store_col_text(&r, 0), what);
    store_rows_close(&r);
    return rc;
}

enum err
job_cancel(struct store_conn *c, int64_t id, int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_int(id), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &JOB_CANCEL_READ, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    bool running = store_next(&r) && strcmp(store_col_text(&r, 0), "running") == 0;
    bool held_a_slot = running && store_col_int(&r, 1) > 0;
    store_rows_close(&r);
    rc = store_query(c, &JOB_CANCEL, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return state_conflict(c, id, "cancel", e);
    }
    struct store_batch notes;
    store_batch_init(&notes, c, 2);
    char queue[JOB_NAME_MAX + 1];
    bb_strlcpy(queue, store_col_text(&r, 0), sizeof queue);
    note_key(&notes, queue, text_or_null(&r, 1));
    store_rows_close(&r);
    rc = note_freed_keys(c, &notes, e);
    /* A slot of the queue's limit, or of its key's, may have come free:
     * wake the queue's claimers. */
    if (rc == ERR_OK && (held_a_slot || notes.n_rows > 0))
        rc = store_notify(c, JOBS__CHANNEL, queue, e);
    store_batch_deinit(&notes);
    if (rc == ERR_OK && running) { /* stop it where it runs */
        char idtext[24];
        snprintf(idtext, sizeof idtext, "%" PRId64, id);
        rc = store_notify(c, JOBS__CANCEL_CHANNEL, idtext, e);
    }
    return rc;
}

/* ERR_CONFLICT naming the live job that holds finished job `id`'s unique
 * key, if one does. */
static enum err
unique_key_held(struct store_conn *c, int64_t id, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(id)};
    enum err rc = store_query(c, &JOB_UNIQUE_HOLDER, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r))
        rc = bb_fail(e, ERR_CONFLICT, "unique_key",
                     "job %" PRId64 " (%s) holds unique_key '%s' in queue %s: job %" PRId64
                     " can run again once it has finished",
                     store_col_int(&r, 0), store_col_text(&r, 1), store_col_text(&r, 2),
                     store_col_text(&r, 3), id);
    store_rows_close(&r);
    return rc;
}

enum err
job_run_now(struct store_conn *c, int64_t id, int64_t now_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_int(id), sp_int(now_ms)};
    int64_t changed;
    enum err rc = store_exec(c, &JOB_RUN_PENDING_NOW, p, 2, &changed, e);
    if (rc == ERR_OK && changed == 0)
        rc = unique_key_held(c, id, e);
    if (rc == ERR_OK && changed == 0)
        rc = store_exec(c, &JOB_KEEP_COMPLETED_ATTEMPT, p, 1, NULL, e);
    if (rc == ERR_OK && changed == 0)
        rc = store_exec(c, &JOB_REENQUEUE, p, 2, &changed, e);
    if (rc == ERR_OK && changed == 0)
        return state_conflict(c, id, "run", e);
    if (rc != ERR_OK)
        return rc;
    struct store_rows r;
    const struct store_param q[] = {sp_int(id)};
    rc = store_query(c, &JOB_STATE, q, 1, &r, e);
    if (rc == ERR_OK && store_next(&r))
        rc = store_notify(c, JOBS__CHANNEL, store_col_text(&r, 1), e);
    if (rc == ERR_OK)
        store_rows_close(&r);
    return rc;
}

enum err
job_redrive_dead(struct store_conn *c, const struct job_dead_match *m, int64_t now_ms, int64_t *n,
                 int64_t *skipped, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(m->queue ? m->queue : ""),
                                    sp_text(m->fingerprint ? m->fingerprint : ""), sp_int(now_ms)};
    enum err rc = store_exec(c, &JOB_REDRIVE_DEAD, p, 3, n, e);
    if (rc == ERR_OK)
        rc = query_int(c, &JOB_DEAD_KEYED_COUNT, p, 2, skipped, NULL, e);
    if (rc == ERR_OK && *n > 0)
        rc = store_notify(c, JOBS__CHANNEL, m->queue ? m->queue : "", e);
    return rc;
}

enum err
job_purge_dead(struct store_conn *c, const struct job_dead_match *m, int64_t *n, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(m->queue ? m->queue : ""),
                                    sp_text(m->fingerprint ? m->fingerprint : "")};
    if (store_conn_engine(c) == STORE_POSTGRES) {
        struct store_rows r;
        enum err rc = store_query(c, &JOB_PURGE_DEAD_PG, p, 2, &r, e);
        if (rc != ERR_OK)
            return rc;
        *n = store_next(&r) ? store_col_int(&r, 0) : 0;
        store_rows_close(&r);
        return ERR_OK;
    }
    enum err rc = store_exec(c, &JOB_PURGE_DEAD_ATTEMPTS, p, 2, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &JOB_PURGE_DEAD, p, 2, n, e);
    return rc;
}

/* The job first: on PostgreSQL its row stays locked until commit, so a
 * redrive racing with the purge cannot keep the job and lose its history. */
static struct store_stmt JOB_PURGE_ONE = {
    .sql = "DELETE FROM jobs WHERE id = $1 AND state = 'dead'",
};
static struct store_stmt JOB_PURGE_ONE_ATTEMPTS = {
    .sql = "DELETE FROM job_attempts WHERE job_id = $1",
};

enum err
job_purge_dead_one(struct store_conn *c, int64_t id, struct bb_error *e)
{
    const struct store_param p[] = {sp_int(id)};
    int64_t n = 0;
    enum err rc = store_exec(c, &JOB_PURGE_ONE, p, 1, &n, e);
    if (rc != ERR_OK)
        return rc;
    if (n == 1)
        return store_exec(c, &JOB_PURGE_ONE_ATTEMPTS, p, 1, NULL, e);
    /* Say why: gone (purged before, or never was), or not dead. */
    struct store_rows r;
    rc = store_query(c, &JOB_STATE, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r))
        rc = bb_fail(e, ERR_NOT_FOUND, "job_id",
                     "no job %" PRId64 " (purged already, pruned, or never submitted)", id);
    else
        rc = bb_fail(e, ERR_NOT_FOUND, "job_id",
                     "job %" PRId64 " is not in the dead-letter queue (it is %s)", id,
                     store_col_text(&r, 0));
    store_rows_close(&r);
    return rc;
}

static struct store_stmt DEAD_GROUPS = {
    .sql = "SELECT queue, error_fingerprint, COUNT(*), MIN(finished_at_ms), MAX(finished_at_ms),"
           " MAX(id) FROM jobs WHERE state = 'dead' AND ($1 = '' OR queue = $1)"
           " GROUP BY queue, error_fingerprint ORDER BY 3 DESC, 5 DESC, 1, 2 LIMIT $2",
};
static struct store_stmt DEAD_SAMPLE = {
    .sql = "SELECT handler, last_error FROM jobs WHERE id = $1",
};

enum err
job_dead_groups_json(struct store_conn *c, const char *queue, int64_t limit, json_t **out,
                     struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(queue ? queue : ""), sp_int(limit)};
    enum err rc = store_query(c, &DEAD_GROUPS, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *groups = json_array();
    while (store_next(&r)) {
        json_t *g = json_object();
        json_object_set_new(g, "queue", text_json(&r, 0));
        json_object_set_new(g, "fingerprint", text_json(&r, 1));
        json_object_set_new(g, "count", json_integer(store_col_int(&r, 2)));
        json_object_set_new(g, "first_dead_at", time_json(&r, 3));
        json_object_set_new(g, "last_dead_at", time_json(&r, 4));
        json_object_set_new(g, "sample_job_id", json_integer(store_col_int(&r, 5)));
        json_array_append_new(groups, g);
    }
    store_rows_close(&r);
    /* Each group's newest job tells its handler and error (a second pass:
     * one statement open at a time). */
    size_t i;
    json_t *g;
    json_array_foreach(groups, i, g)
    {
        const struct store_param q[] = {
            sp_int(json_integer_value(json_object_get(g, "sample_job_id")))};
        rc = store_query(c, &DEAD_SAMPLE, q, 1, &r, e);
        if (rc != ERR_OK) {
            json_decref(groups);
            return rc;
        }
        if (store_next(&r)) {
            char pattern[JOB_ERROR_PATTERN_MAX + 1];
            job_error_pattern(store_col_text(&r, 1), pattern, sizeof pattern);
            json_object_set_new(g, "handler", text_json(&r, 0));
            json_object_set_new(g, "error", json_string(pattern));
            json_object_set_new(g, "sample_error", text_json(&r, 1));
        }
        store_rows_close(&r);
    }
    *out = json_pack("{s:o}", "groups", groups);
    return ERR_OK;
}

/* ---- leases -------------------------------------------------------------------------------------
 */

#define LEASE_COLUMNS                                                           \
    "id, queue, handler, payload, target, attempt, attempt_limit, lease_token," \
    " lease_expires_at_ms, max_duration_ms, created_at_ms, run_at_ms, traceparent"

/* $1 queue, $2 external, $3 now, $4 max, $5 worker, $6 lease_ms */
static struct store_stmt JOB_CLAIM = {
    .sql = "UPDATE jobs SET state = 'running', attempt = attempt + 1,"
           " lease_token = lease_token + 1, leased_by = $5, lease_expires_at_ms = $3 +"
           " CASE WHEN $6 > 0 AND $6 < max_duration_ms THEN $6 ELSE max_duration_ms + 1000 END,"
           " started_at_ms = $3, updated_at_ms = $3"
           " WHERE id IN (SELECT id FROM jobs WHERE queue = $1 AND state = 'pending'"
           " AND parked = 0 AND external = $2 AND run_at_ms <= $3"
           " ORDER BY priority DESC, run_at_ms, id LIMIT $4)"
           " RETURNING " LEASE_COLUMNS,
    .sql_pg = "UPDATE jobs SET state = 'running', attempt = attempt + 1,"
              " lease_token = lease_token + 1, leased_by = $5, lease_expires_at_ms = $3 +"
              " CASE WHEN $6 > 0 AND $6 < max_duration_ms THEN $6 ELSE max_duration_ms + 1000 END,"
              " started_at_ms = $3, updated_at_ms = $3"
              " WHERE id IN (SELECT id FROM jobs WHERE queue = $1 AND state = 'pending'"
              " AND parked = 0 AND external = $2 AND run_at_ms <= $3"
              " ORDER BY priority DESC, run_at_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED)"
              " RETURNING " LEASE_COLUMNS,
};
/*
 * The claim of a queue with a per-key limit ($7 running jobs per
 * concurrency_key), its claimers serialised by the queue's row lock: among
 * the first $8 ready jobs, those whose key has room, counting the running
 * ones (through jobs_running_keys) and those ahead of it in this claim.
 * The queue's lock does not hold off a cancel (or any other change to a
 * job), and the window function rules out FOR UPDATE in the subquery: so
 * the outer WHERE checks the state again. On PostgreSQL a row changed by a
 * transaction that commits while this one waits for it is checked afresh
 * against the outer WHERE only (not the subquery, whose answer stands): a
 * job cancelled meanwhile is skipped, not made running again.
 */
static struct store_stmt JOB_CLAIM_KEYED = {
    .sql = "UPDATE jobs SET state = 'running', attempt = attempt + 1,"
           " lease_token = lease_token + 1, leased_by = $5, lease_expires_at_ms = $3 +"
           " CASE WHEN $6 > 0 AND $6 < max_duration_ms THEN $6 ELSE max_duration_ms + 1000 END,"
           " started_at_ms = $3, updated_at_ms = $3"
           " WHERE state = 'pending' AND id IN (SELECT c.id FROM (SELECT w.id, w.priority, "
           "w.run_at_ms,"
           " w.concurrency_key, ROW_NUMBER() OVER (PARTITION BY w.concurrency_key"
           " ORDER BY w.priority DESC, w.run_at_ms, w.id) AS ahead"
           " FROM (SELECT id, priority, run_at_ms, concurrency_key FROM jobs"
           " WHERE queue = $1 AND state = 'pending' AND parked = 0 AND external = $2"
           " AND run_at_ms <= $3 ORDER BY priority DESC, run_at_ms, id LIMIT $8) w) c"
           " WHERE c.concurrency_key IS NULL OR c.ahead + (SELECT COUNT(*) FROM jobs r"
           " WHERE r.queue = $1 AND r.state = 'running' AND r.concurrency_key = c.concurrency_key)"
           " <= $7 ORDER BY c.priority DESC, c.run_at_ms, c.id LIMIT $4)"
           " RETURNING " LEASE_COLUMNS,
};
/*
 * The notes of the queue's keys whose jobs stopped running (or were
 * cancelled) since its last claim, taken, and as many of each key's first
 * parked jobs as its notes have slots (at most $2, the per-key limit) back
 * in the ready index; the claim parks again those it finds still held back.
 * PostgreSQL does it in one statement; SQLite takes the notes, then
 * unparks key by key (its LIMIT cannot follow a joined row).
 */
static struct store_stmt UNPARK_FREED_PG = {
    .sql = "WITH taken AS (DELETE FROM job_keys_freed WHERE queue = $1"
           " RETURNING concurrency_key, slots) UPDATE jobs SET parked = 0 WHERE id IN"
           " (SELECT j.id FROM (SELECT concurrency_key AS k, SUM(slots)::bigint AS n FROM taken"
           " GROUP BY concurrency_key) ks"
           " CROSS JOIN LATERAL (SELECT id FROM jobs WHERE queue = $1 AND state = 'pending'"
           " AND parked = 1 AND concurrency_key = ks.k ORDER BY priority DESC, run_at_ms, id"
           " LIMIT LEAST($2, ks.n)) j)",
};
static struct store_stmt FREED_KEYS_TAKE = {
    .sql = "DELETE FROM job_keys_freed WHERE queue = $1 RETURNING concurrency_key, slots",
};
static struct store_stmt UNPARK_KEY = {
    .sql = "UPDATE jobs SET parked = 0 WHERE id IN (SELECT id FROM jobs WHERE queue = $1"
           " AND state = 'pending' AND parked = 1 AND concurrency_key = $2"
           " ORDER BY priority DESC, run_at_ms, id LIMIT $3)",
};
/* Aside: among the first $5 ready jobs, those whose key runs $4 already. */
static struct store_stmt PARK_FULL_KEYS = {
    .sql = "UPDATE jobs SET parked = 1 WHERE state = 'pending' AND id IN (SELECT w.id FROM"
           " (SELECT id, concurrency_key FROM jobs WHERE queue = $1 AND state = 'pending'"
           " AND parked = 0 AND external = $2 AND run_at_ms <= $3"
           " ORDER BY priority DESC, run_at_ms, id LIMIT $5) w"
           " WHERE w.concurrency_key IS NOT NULL AND (SELECT COUNT(*) FROM jobs r"
           " WHERE r.queue = $1 AND r.state = 'running' AND r.concurrency_key = w.concurrency_key)"
           " >= $4)",
};
/*
 * A queue with a per-key rate limit claims in C (claim_key_rated), over
 * the ready jobs a keyed claim looks at, its claimers serialised by the
 * queue's row lock: the keys whose wake-up is due first, then the
 * candidates, their keys' buckets and running jobs, the claim of those
 * chosen, the parking of those whose key has no start left, and the
 * buckets drawn from.
 */
static struct store_stmt KEY_RATES_DUE = {
    .sql = "SELECT concurrency_key, milli, at_ms FROM job_key_rates WHERE queue = $1"
           " AND wake_at_ms > 0 AND wake_at_ms <= $2",
};
static struct store_stmt KEY_PARKED_LEFT = {
    .sql = "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'pending'"
           " AND parked = 1 AND concurrency_key = $2 LIMIT 1) x",
};
static struct store_stmt KEY_RATE_WAKE_SET = {
    .sql = "UPDATE job_key_rates SET wake_at_ms = $3 WHERE queue = $1 AND concurrency_key = $2",
};
static struct store_stmt KEY_RATES_NEXT_WAKE = {
    .sql = "SELECT COALESCE(MIN(wake_at_ms), 0) FROM job_key_rates WHERE queue = $1"
           " AND wake_at_ms > 0",
};
static struct store_stmt KEYED_CANDIDATES = {
    .sql = "SELECT id, concurrency_key FROM jobs WHERE queue = $1 AND state = 'pending'"
           " AND parked = 0 AND external = $2 AND run_at_ms <= $3"
           " ORDER BY priority DESC, run_at_ms, id LIMIT $4",
};
static struct store_stmt KEY_RATES_GET = {
    .sql_pg = "SELECT r.concurrency_key, r.milli, r.at_ms, r.wake_at_ms"
              " FROM unnest($1::text[]) AS k(key) JOIN job_key_rates r"
              " ON r.queue = $2 AND r.concurrency_key = k.key",
    .sql_sqlite = "SELECT concurrency_key, milli, at_ms, wake_at_ms FROM job_key_rates"
                  " WHERE queue = $2 AND concurrency_key IN (SELECT value FROM json_each($1))",
};
static struct store_stmt KEYS_RUNNING = {
    .sql_pg = "SELECT j.concurrency_key, COUNT(*) FROM unnest($1::text[]) AS k(key) JOIN jobs j"
              " ON j.queue = $2 AND j.state = 'running' AND j.concurrency_key = k.key"
              " GROUP BY j.concurrency_key",
    .sql_sqlite = "SELECT concurrency_key, COUNT(*) FROM jobs WHERE queue = $2"
                  " AND state = 'running' AND concurrency_key IN (SELECT value FROM json_each($1))"
                  " GROUP BY concurrency_key",
};
/* $1 the ids, $2 now, $3 worker, $4 lease_ms (as JOB_CLAIM's). */
static struct store_stmt CLAIM_IDS = {
    .sql_pg = "UPDATE jobs SET state = 'running', attempt = attempt + 1,"
              " lease_token = lease_token + 1, leased_by = $3, lease_expires_at_ms = $2 +"
              " CASE WHEN $4 > 0 AND $4 < max_duration_ms THEN $4 ELSE max_duration_ms + 1000 END,"
              " started_at_ms = $2, updated_at_ms = $2"
              " WHERE state = 'pending' AND id = ANY($1::bigint[]) RETURNING " LEASE_COLUMNS,
    .sql_sqlite = "UPDATE jobs SET state = 'running', attempt = attempt + 1,"
                  " lease_token = lease_token + 1, leased_by = $3, lease_expires_at_ms = $2 +"
                  " CASE WHEN $4 > 0 AND $4 < max_duration_ms THEN $4"
                  " ELSE max_duration_ms + 1000 END, started_at_ms = $2, updated_at_ms = $2"
                  " WHERE state = 'pending' AND id IN (SELECT value FROM json_each($1))"
                  " RETURNING " LEASE_COLUMNS,
};
static struct store_stmt PARK_IDS = {
    .sql_pg = "UPDATE jobs SET parked = 1 WHERE state = 'pending' AND id = ANY($1::bigint[])",
    .sql_sqlite = "UPDATE jobs SET parked = 1 WHERE state = 'pending'"
                  " AND id IN (SELECT value FROM json_each($1))",
};
/* (key, milli, at, wake) rows, then the queue. */
static struct store_stmt KEY_RATES_PUT = {
    .sql_pg =
        "INSERT INTO job_key_rates (queue, concurrency_key, milli, at_ms, wake_at_ms)"
        " SELECT $5, k, m, a, w FROM unnest($1::text[], $2::bigint[], $3::bigint[],"
        " $4::bigint[]) AS x(k, m, a, w) ON CONFLICT (queue, concurrency_key) DO UPDATE"
        " SET milli = excluded.milli, at_ms = excluded.at_ms, wake_at_ms = excluded.wake_at_ms",
    .sql_sqlite = "INSERT INTO job_key_rates (queue, concurrency_key, milli, at_ms, wake_at_ms)"
                  " SELECT $2, value ->> 'k', value ->> 'm', value ->> 'a', value ->> 'w'"
                  " FROM json_each($1) WHERE true ON CONFLICT (queue, concurrency_key) DO UPDATE"
                  " SET milli = excluded.milli, at_ms = excluded.at_ms,"
                  " wake_at_ms = excluded.wake_at_ms",
};
/* Buckets untouched for a whole window with no jobs waiting on them: full
 * again, as no row says. */
enum { KEY_RATES_PRUNE_EVERY = 32 };
static struct store_stmt KEY_RATES_PRUNE = {
    .sql = "DELETE FROM job_key_rates WHERE queue = $1 AND at_ms < $2 AND wake_at_ms = 0",
};

/* $1 id, $2 token, $3 now, $4 the lease asked for, $5 1: bounded by the
 * attempt's max_duration from its start (a second's grace, as claims give) */
static struct store_stmt JOB_HEARTBEAT = {
    .sql = "UPDATE jobs SET lease_expires_at_ms = CASE WHEN $5 = 1"
           " AND started_at_ms + max_duration_ms + 1000 < $4"
           " THEN started_at_ms + max_duration_ms + 1000 ELSE $4 END, updated_at_ms = $3"
           " WHERE id = $1 AND lease_token = $2 AND state = 'running'"
           " AND lease_expires_at_ms > $3 AND ($5 = 0 OR started_at_ms + max_duration_ms > $3)"
           " RETURNING lease_expires_at_ms",
};

static struct store_stmt JOB_LEASE_HELD = {
    .sql = "SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'",
};

enum err
job_lease_held(struct store_conn *c, int64_t id, int64_t token, bool *held, struct bb_error *e)
{
    const struct store_param p[] = {sp_int(id), sp_int(token)};
    struct store_rows r;
    enum err rc = store_query(c, &JOB_LEASE_HELD, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    *held = store_next(&r);
    store_rows_close(&r);
    return ERR_OK;
}

void
job_lease_deinit(struct job_lease *l)
{
    free(l->queue);
    free(l->handler);
    free(l->payload);
    free(l->target);
    free(l->traceparent);
    memset(l, 0, sizeof *l);
}

static int
lease_order(const void *a, const void *b)
{
    const struct job_lease *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* The claimed rows (LEASE_COLUMNS) into a heap array; closes `r`. */
static void
leases_from(struct store_rows *r, struct job_lease **leases, size_t *n)
{
    if (r->nrows > 0) {
        *leases = xcalloc((size_t)r->nrows, sizeof **leases);
        while (store_next(r)) {
            struct job_lease *l = &(*leases)[(*n)++];
            l->id = store_col_int(r, 0);
            l->queue = xstrdup(store_col_text(r, 1));
            l->handler = xstrdup(store_col_text(r, 2));
            l->payload = xstrdup(store_col_text(r, 3));
            l->target = store_col_is_null(r, 4) ? NULL : xstrdup(store_col_text(r, 4));
            l->attempt = store_col_int(r, 5);
            l->attempt_limit = store_col_int(r, 6);
            l->lease_token = store_col_int(r, 7);
            l->lease_expires_at_ms = store_col_int(r, 8);
            l->max_duration_ms = store_col_int(r, 9);
            l->created_at_ms = store_col_int(r, 10);
            l->run_at_ms = store_col_int(r, 11);
            l->traceparent = store_col_is_null(r, 12) ? NULL : xstrdup(store_col_text(r, 12));
        }
        qsort(*leases, *n, sizeof **leases, lease_order);
    }
    store_rows_close(r);
}

/* The level at `now_ms`, in thousandths of a start, of a bucket of `max`
 * per `per_ms` whose row holds (milli, at_ms) at columns col, col + 1, and
 * the time to record with what a claim takes from it: now, or the time of
 * the claim before when that one's clock read later (claimers serialised
 * on the queue's row may each have read the time before waiting their
 * turn; the refill between the two is not counted twice). */
static void
bucket_level(int64_t max, int64_t per_ms, const struct store_rows *r, int col, int64_t now_ms,
             int64_t *milli, int64_t *at_ms)
{
    int64_t at = store_col_int(r, col + 1);
    *milli = job_rate_level_milli(max, per_ms, store_col_int(r, col), at, now_ms);
    *at_ms = at > now_ms ? at : now_ms;
}

/* Queue `q`'s rate bucket now (bucket_level). */
static enum err
rate_level(struct store_conn *c, const struct job_queue *q, int64_t now_ms, int64_t *milli,
           int64_t *at_ms, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(q->name)};
    enum err rc = store_query(c, &QUEUE_RATE_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return bb_fail(e, ERR_NOT_FOUND, "queue", "no queue named %s", q->name);
    }
    bucket_level(q->rate_max, q->rate_per_ms, &r, 0, now_ms, milli, at_ms);
    store_rows_close(&r);
    return ERR_OK;
}

/*
 * The keys whose parked jobs' wake-up is due: as many of each key's first
 * parked jobs as its bucket has starts go back among the ready ones (the
 * claim draws on the bucket as it takes them), and the key's next wake-up
 * is when the start after those comes, unless none is left parked.
 */
static enum err
wake_rate_parked(struct store_conn *c, const struct job_queue *q, int64_t now_ms,
                 struct bb_error *e)
{
    const struct store_param p[] = {sp_text(q->name), sp_int(now_ms)};
    struct store_rows r;
    enum err rc = store_query(c, &KEY_RATES_DUE, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    size_t n = 0;
    char **keys = xcalloc(r.nrows ? (size_t)r.nrows : 1, sizeof *keys);
    int64_t *levels = xcalloc(r.nrows ? (size_t)r.nrows : 1, sizeof *levels);
    while (store_next(&r)) {
        int64_t at;
        keys[n] = xstrdup(store_col_text(&r, 0));
        bucket_level(q->key_rate_max, q->key_rate_per_ms, &r, 1, now_ms, &levels[n++], &at);
    }
    store_rows_close(&r);
    for (size_t i = 0; i < n; i++) {
        int64_t starts = levels[i] / 1000, woken = 0, left = 1;
        const struct store_param u[] = {sp_text(q->name), sp_text(keys[i]), sp_int(starts)};
        if (rc == ERR_OK && starts > 0)
            rc = store_exec(c, &UNPARK_KEY, u, BB_ARRAY_LEN(u), &woken, e);
        if (rc == ERR_OK && starts > 0)
            rc = woken < starts ? ERR_OK : query_int(c, &KEY_PARKED_LEFT, u, 2, &left, NULL, e);
        int64_t wake = woken < starts || left == 0
                           ? 0 /* none left parked */
                           : now_ms + job_rate_wait_ms(q->key_rate_max, q->key_rate_per_ms,
                                                       levels[i] - starts * 1000);
        const struct store_param w[] = {sp_text(q->name), sp_text(keys[i]), sp_int(wake)};
        if (rc == ERR_OK)
            rc = store_exec(c, &KEY_RATE_WAKE_SET, w, BB_ARRAY_LEN(w), NULL, e);
        free(keys[i]);
    }
    free(levels);
    free(keys);
    return rc;
}

/* A key among a keyed claim's candidates. */
struct claim_key {
    char *name;
    int64_t milli;   /* its bucket now, in thousandths of a start */
    int64_t at_ms;   /* the time to record with what this claim draws */
    int64_t wake_ms; /* when its parked jobs are to be woken (0: none parked) */
    int64_t running; /* its running jobs (per-key concurrency) */
    int64_t taken;   /* by this claim */
    int64_t parked;  /* by this claim */
};

/* The candidates' keys' buckets and (per-key concurrency) running jobs. */
static enum err
claim_keys_read(struct store_conn *c, const struct job_queue *q, json_t *map,
                struct claim_key *keys, size_t n_keys, int64_t now_ms, struct bb_error *e)
{
    const char **names = xcalloc(n_keys, sizeof *names);
    for (size_t k = 0; k < n_keys; k++) {
        names[k] = keys[k].name;
        keys[k].milli = q->key_rate_max * 1000; /* no row: full */
        keys[k].at_ms = now_ms;
    }
    struct store_batch list;
    store_batch_texts(&list, c, names, n_keys);
    free(names);
    const struct store_param p[] = {sp_batch(&list), sp_text(q->name)};
    struct store_rows r;
    enum err rc = store_query(c, &KEY_RATES_GET, p, BB_ARRAY_LEN(p), &r, e);
    if (rc == ERR_OK) {
        while (store_next(&r)) {
            struct claim_key *k =
                &keys[json_integer_value(json_object_get(map, store_col_text(&r, 0)))];
            bucket_level(q->key_rate_max, q->key_rate_per_ms, &r, 1, now_ms, &k->milli, &k->at_ms);
            k->wake_ms = store_col_int(&r, 3);
        }
        store_rows_close(&r);
    }
    if (rc == ERR_OK && q->key_concurrency > 0) {
        rc = store_query(c, &KEYS_RUNNING, p, BB_ARRAY_LEN(p), &r, e);
        if (rc == ERR_OK) {
            while (store_next(&r))
                keys[json_integer_value(json_object_get(map, store_col_text(&r, 0)))].running =
                    store_col_int(&r, 1);
            store_rows_close(&r);
        }
    }
    store_batch_deinit(&list);
    return rc;
}

/* After the choice: the jobs parked, and the buckets drawn from or waited
 * on (and those full again with nothing parked dropped). */
static enum err
claim_keys_write(struct store_conn *c, const struct job_queue *q, const struct claim_key *keys,
                 size_t n_keys, const int64_t *parked, size_t n_parked, int64_t now_ms,
                 struct bb_error *e)
{
    enum err rc = ERR_OK;
    if (n_parked > 0) {
        struct store_batch list;
        store_batch_ints(&list, c, parked, n_parked);
        const struct store_param p[] = {sp_batch(&list)};
        rc = store_exec(c, &PARK_IDS, p, 1, NULL, e);
        store_batch_deinit(&list);
        if (rc == ERR_OK)
            store_count_at_commit(c, jobs__metric_key_rate_parked_def(), (double)n_parked,
                                  (const char *const[]){q->name});
    }
    struct store_batch b;
    store_batch_init(&b, c, 4);
    for (size_t k = 0; k < n_keys; k++) {
        if (keys[k].taken == 0 && keys[k].parked == 0)
            continue;
        store_batch_row(&b);
        store_batch_text(&b, "k", keys[k].name);
        store_batch_int(&b, "m", keys[k].milli);
        store_batch_int(&b, "a", keys[k].at_ms);
        store_batch_int(&b, "w", keys[k].wake_ms);
    }
    if (rc == ERR_OK && b.n_rows > 0) {
        const struct store_param p[] = {sp_batch(&b), sp_text(q->name)};
        rc = store_exec(c, &KEY_RATES_PUT, p, BB_ARRAY_LEN(p), NULL, e);
        /* One claim in KEY_RATES_PRUNE_EVERY that writes buckets drops the
         * full ones, which keeps the table to about the keys of a window. */
        const struct store_param w[] = {sp_text(q->name), sp_int(now_ms - q->key_rate_per_ms)};
        if (rc == ERR_OK && bb_rand_below(KEY_RATES_PRUNE_EVERY) == 0)
            rc = store_exec(c, &KEY_RATES_PRUNE, w, BB_ARRAY_LEN(w), NULL, e);
    }
    store_batch_deinit(&b);
    return rc;
}

/* A keyed claim's decision over its window of candidates. */
struct key_choice {
    size_t n_cand, n_keys, n_chosen, n_parked;
    struct claim_key *keys;
    int64_t *chosen, *parked;
};

static void
key_choice_free(struct key_choice *ch)
{
    for (size_t k = 0; k < ch->n_keys; k++)
        free(ch->keys[k].name);
    free(ch->keys);
    free(ch->chosen);
    free(ch->parked);
    memset(ch, 0, sizeof *ch);
}

/*
 * Over the first `window` ready jobs, in claim order: a keyless job is
 * taken; a keyed one is taken while its key has room (running jobs) and a
 * start in its bucket; a key out of room is passed over (left to
 * PARK_FULL_KEYS); a key out of starts has its candidates parked until its
 * next start (the key's wake-up).
 */
static enum err
key_choose(struct store_conn *c, const struct job_queue *q, bool external, int64_t max,
           int64_t window, int64_t now_ms, struct key_choice *ch, struct bb_error *e)
{
    memset(ch, 0, sizeof *ch);
    const struct store_param p[] = {sp_text(q->name), sp_int(external), sp_int(now_ms),
                                    sp_int(window)};
    struct store_rows r;
    enum err rc = store_query(c, &KEYED_CANDIDATES, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    size_t room = r.nrows ? (size_t)r.nrows : 1;
    int64_t *ids = xcalloc(room, sizeof *ids);
    int64_t *key_of = xcalloc(room, sizeof *key_of);
    ch->keys = xcalloc(room, sizeof *ch->keys);
    ch->chosen = xcalloc(room, sizeof *ch->chosen);
    ch->parked = xcalloc(room, sizeof *ch->parked);
    json_t *map = json_object(); /* key -> its index in keys */
    while (store_next(&r)) {
        ids[ch->n_cand] = store_col_int(&r, 0);
        key_of[ch->n_cand] = -1;
        if (!store_col_is_null(&r, 1)) {
            const char *name = store_col_text(&r, 1);
            json_t *at = json_object_get(map, name);
            if (at == NULL) {
                at = json_integer((json_int_t)ch->n_keys);
                json_object_set_new_nocheck(map, name, at);
                ch->keys[ch->n_keys++].name = xstrdup(name);
            }
            key_of[ch->n_cand] = json_integer_value(at);
        }
        ch->n_cand++;
    }
    store_rows_close(&r);
    if (ch->n_keys > 0)
        rc = claim_keys_read(c, q, map, ch->keys, ch->n_keys, now_ms, e);
    for (size_t i = 0; rc == ERR_OK && i < ch->n_cand && (int64_t)ch->n_chosen < max; i++) {
        struct claim_key *k = key_of[i] < 0 ? NULL : &ch->keys[key_of[i]];
        if (k && q->key_concurrency > 0 && k->running + k->taken >= q->key_concurrency)
            continue;
        if (k && k->milli < 1000) {
            int64_t wake = now_ms + job_rate_wait_ms(q->key_rate_max, q->key_rate_per_ms, k->milli);
            if (k->wake_ms == 0 || wake < k->wake_ms)
                k->wake_ms = wake;
            k->parked++;
            ch->parked[ch->n_parked++] = ids[i];
            continue;
        }
        if (k) {
            k->milli -= 1000;
            k->taken++;
        }
        ch->chosen[ch->n_chosen++] = ids[i];
    }
    json_decref(map);
    free(key_of);
    free(ids);
    return rc;
}

/*
 * The claim of a queue with a per-key rate limit (and maybe a per-key
 * concurrency limit), decided in C, once the keys whose wake-up is due
 * have their parked jobs back: over a window a few times what it wants,
 * and over the first JOB_KEYED_SCAN ready jobs when that leaves it short.
 * *next_ms (0: none, or the claim got all it wanted) is the queue's next
 * wake-up.
 */
static enum err
claim_key_rated(struct store_conn *c, const struct job_queue *q, bool external, int64_t max,
                const char *worker, int64_t lease_ms, int64_t now_ms, struct job_lease **leases,
                size_t *n, int64_t *next_ms, struct bb_error *e)
{
    *next_ms = 0;
    enum err rc = wake_rate_parked(c, q, now_ms, e);
    int64_t window = max * 8 < 64 ? 64 : max * 8;
    struct key_choice ch = {0};
    while (rc == ERR_OK) {
        window = window < JOB_KEYED_SCAN ? window : JOB_KEYED_SCAN;
        rc = key_choose(c, q, external, max, window, now_ms, &ch, e);
        if (rc != ERR_OK || (int64_t)ch.n_chosen >= max || (int64_t)ch.n_cand < window ||
            window == JOB_KEYED_SCAN)
            break;
        key_choice_free(&ch); /* short, with more to look at: all of them */
        window = JOB_KEYED_SCAN;
    }
    if (rc == ERR_OK && ch.n_chosen > 0) {
        struct store_batch list;
        store_batch_ints(&list, c, ch.chosen, ch.n_chosen);
        const struct store_param cp[] = {sp_batch(&list), sp_int(now_ms), sp_text(worker),
                                         sp_int(lease_ms)};
        struct store_rows r;
        rc = store_query(c, &CLAIM_IDS, cp, BB_ARRAY_LEN(cp), &r, e);
        store_batch_deinit(&list);
        if (rc == ERR_OK)
            leases_from(&r, leases, n);
    }
    if (rc == ERR_OK)
        rc = claim_keys_write(c, q, ch.keys, ch.n_keys, ch.parked, ch.n_parked, now_ms, e);
    const struct store_param np[] = {sp_text(q->name)};
    if (rc == ERR_OK && (int64_t)*n < max) /* short: when to look again */
        rc = query_int(c, &KEY_RATES_NEXT_WAKE, np, 1, next_ms, NULL, e);
    key_choice_free(&ch);
    return rc;
}

/* Take the queue's notes and unpark their keys' first parked jobs: one
 * statement on PostgreSQL (UNPARK_FREED_PG), the notes then key by key on
 * SQLite. */
static enum err
unpark_freed_keys(struct store_conn *c, const char *queue, int64_t per_key, struct bb_error *e)
{
    if (store_conn_engine(c) == STORE_POSTGRES) {
        const struct store_param p[] = {sp_text(queue), sp_int(per_key)};
        return store_exec(c, &UNPARK_FREED_PG, p, BB_ARRAY_LEN(p), NULL, e);
    }
    const struct store_param p[] = {sp_text(queue)};
    struct store_rows r;
    enum err rc = store_query(c, &FREED_KEYS_TAKE, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *notes = json_object(); /* key -> its notes */
    while (store_next(&r)) {
        const char *key = store_col_text(&r, 0);
        json_int_t had = json_integer_value(json_object_get(notes, key));
        json_object_set_new_nocheck(notes, key, json_integer(had + store_col_int(&r, 1)));
    }
    store_rows_close(&r);
    const char *key;
    json_t *count;
    json_object_foreach(notes, key, count)
    {
        int64_t n = json_integer_value(count);
        const struct store_param u[] = {sp_text(queue), sp_text(key),
                                        sp_int(n < per_key ? n : per_key)};
        rc = store_exec(c, &UNPARK_KEY, u, BB_ARRAY_LEN(u), NULL, e);
        if (rc != ERR_OK)
            break;
    }
    json_decref(notes);
    return rc;
}

enum err
job_claim(struct store_conn *c, const char *queue, const char *worker, bool external, int64_t max,
          int64_t lease_ms, int64_t now_ms, struct job_lease **leases, size_t *n,
          int64_t *throttled_until_ms, struct bb_error *e)
{
    *leases = NULL;
    *n = 0;
    int64_t milli = 0, at = now_ms, key_wake = 0;
    bool paced = false; /* the rate limit, not the backlog, bounds this claim */
    if (throttled_until_ms)
        *throttled_until_ms = 0;
    struct job_queue q;
    enum err rc = queue_read(c, &QUEUE_GET, queue, &q, e);
    if (rc != ERR_OK || q.paused || max <= 0)
        return rc;
    if (job_queue_is_limited(&q)) {
        /* Serialise this queue's claimers, to count running jobs exactly
         * and take from the bucket one at a time. */
        rc = queue_read(c, &QUEUE_GET_LOCKED, queue, &q, e);
        if (rc != ERR_OK)
            return rc;
    }
    if (q.concurrency > 0) {
        int64_t running = 0;
        const struct store_param p[] = {sp_text(queue)};
        rc = query_int(c, &QUEUE_RUNNING, p, 1, &running, NULL, e);
        if (rc != ERR_OK)
            return rc;
        if (running >= q.concurrency)
            return ERR_OK;
        if (max > q.concurrency - running)
            max = q.concurrency - running;
    }
    if (q.rate_max > 0) {
        rc = rate_level(c, &q, now_ms, &milli, &at, e);
        if (rc != ERR_OK)
            return rc;
        paced = milli / 1000 < max;
        max = paced ? milli / 1000 : max;
    }
    if (max > 0 && q.key_concurrency > 0)
        rc = unpark_freed_keys(c, queue, q.key_concurrency, e);
    if (rc == ERR_OK && max > 0) {
        const struct store_param p[] = {
            sp_text(queue),
            sp_int(external),
            sp_int(now_ms),
            sp_int(max),
            sp_text(worker),
            sp_int(lease_ms),
            sp_int(q.key_concurrency),
            sp_int(JOB_KEYED_SCAN),
        };
        struct store_rows r;
        if (q.key_rate_max > 0) {
            rc = claim_key_rated(c, &q, external, max, worker, lease_ms, now_ms, leases, n,
                                 &key_wake, e);
        } else {
            rc = q.key_concurrency > 0 ? store_query(c, &JOB_CLAIM_KEYED, p, BB_ARRAY_LEN(p), &r, e)
                                       : store_query(c, &JOB_CLAIM, p, 6, &r, e);
            if (rc == ERR_OK)
                leases_from(&r, leases, n);
        }
        if (rc != ERR_OK)
            goto out;
        /* Short of what it wanted: what it passed over waits aside, so the
         * next claim's window reaches past a full key's backlog. */
        if (q.key_concurrency > 0 && (int64_t)*n < max) {
            const struct store_param w[] = {sp_text(queue), sp_int(external), sp_int(now_ms),
                                            sp_int(q.key_concurrency), sp_int(JOB_KEYED_SCAN)};
            rc = store_exec(c, &PARK_FULL_KEYS, w, BB_ARRAY_LEN(w), NULL, e);
        }
    }
    /* Held back by the rate (every start it allowed taken): when it lets
     * the next one go; or by a key's, when the first parked key's may. */
    if (paced && (int64_t)*n == max && throttled_until_ms)
        *throttled_until_ms =
            now_ms + job_rate_wait_ms(q.rate_max, q.rate_per_ms, milli - (int64_t)*n * 1000);
    if (key_wake > 0 && (int64_t)*n < max && throttled_until_ms &&
        (*throttled_until_ms == 0 || key_wake < *throttled_until_ms))
        *throttled_until_ms = key_wake;
    if (q.rate_max > 0 && *n > 0) {
        /* Nothing claimed takes nothing: the level follows from the time. */
        const struct store_param w[] = {sp_text(queue), sp_int(milli - (int64_t)*n * 1000),
                                        sp_int(at)};
        rc = store_exec(c, &QUEUE_RATE_SET, w, BB_ARRAY_LEN(w), NULL, e);
    }
out:
    if (rc != ERR_OK) {
        for (size_t i = 0; i < *n; i++)
            job_lease_deinit(&(*leases)[i]);
        free(*leases);
        *leases = NULL;
        *n = 0;
    }
    return rc;
}

enum err
job_heartbeat(struct store_conn *c, int64_t id, int64_t token, int64_t lease_ms, bool bounded,
              int64_t now_ms, int64_t *expires_at_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_int(id), sp_int(token), sp_int(now_ms),
                                    sp_int(now_ms + lease_ms), sp_int(bounded)};
    struct store_rows r;
    enum err rc = store_query(c, &JOB_HEARTBEAT, p, BB_ARRAY_LEN(p), &r, e);
    if (rc != ERR_OK)
        return rc;
    bool held = store_next(&r);
    if (held)
        *expires_at_ms = store_col_int(&r, 0);
    store_rows_close(&r);
    if (!held)
        return bb_fail(e, ERR_STALE_TOKEN, "token",
                       "lease token %" PRId64 " no longer holds job %" PRId64
                       " (it ran out, reached its max_duration, was rescued, finished or was"
                       " cancelled)",
                       token, id);
    return ERR_OK;
}

/* ---- finishing attempts ---------------------------------------------------------------------- */

/* Completions, many at once: a batch of (id, token), then now. */
static struct store_stmt JOB_COMPLETE_MANY = {
    .sql_sqlite = "UPDATE jobs SET state = 'completed', finished_at_ms = $2,"
                  " lease_expires_at_ms = NULL, last_error = NULL, updated_at_ms = $2"
                  " WHERE state = 'running' AND (id, lease_token) IN"
                  " (SELECT json_extract(value, '$.id'), json_extract(value, '$.token')"
                  " FROM json_each($1)) RETURNING id, queue, started_at_ms, concurrency_key",
    .sql_pg = "UPDATE jobs SET state = 'completed', finished_at_ms = $3,"
              " lease_expires_at_ms = NULL, last_error = NULL, updated_at_ms = $3"
              " FROM unnest($1::bigint[], $2::bigint[]) AS x(id, token)"
              " WHERE jobs.state = 'running' AND jobs.id = x.id AND jobs.lease_token = x.token"
              " RETURNING jobs.id, jobs.queue, jobs.started_at_ms, jobs.concurrency_key",
};
/* Attempt rows, many at once: a batch of (id, attempt, started, finished,
 * outcome, worker, error). */
static struct store_stmt ATTEMPTS_INSERT_MANY = {
    .sql_sqlite = "INSERT INTO job_attempts (job_id, attempt, worker, started_at_ms,"
                  " finished_at_ms, outcome, error) SELECT json_extract(value, '$.id'),"
                  " json_extract(value, '$.attempt'), json_extract(value, '$.worker'),"
                  " json_extract(value, '$.started'), json_extract(value, '$.finished'),"
                  " json_extract(value, '$.outcome'), json_extract(value, '$.error')"
                  " FROM json_each($1) WHERE true ON CONFLICT DO NOTHING",
    .sql_pg = "INSERT INTO job_attempts (job_id, attempt, worker, started_at_ms,"
              " finished_at_ms, outcome, error) SELECT id, attempt, worker, started, finished,"
              " outcome, error FROM unnest($1::bigint[], $2::bigint[], $3::bigint[],"
              " $4::bigint[], $5::text[], $6::text[], $7::text[])"
              " AS x(id, attempt, started, finished, outcome, worker, error)"
              " ON CONFLICT DO NOTHING",
};
/* One failure: read what the retry decision needs, under the token. */
static struct store_stmt JOB_FAIL_READ = {
    .sql = "SELECT attempt, attempt_limit, backoff_base_ms, backoff_factor_milli,"
           " backoff_cap_ms, backoff_jitter_pct, leased_by, started_at_ms, handler, queue,"
           " concurrency_key FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'",
};
static struct store_stmt JOB_FAIL_WRITE = {
    .sql =
        "UPDATE jobs SET state = $3, run_at_ms = $4, last_error = $5, lease_expires_at_ms = NULL,"
        " finished_at_ms = CASE WHEN $3 = 'dead' THEN $6 ELSE NULL END, updated_at_ms = $6,"
        " attempt_limit = attempt_limit + $7, error_fingerprint = $8"
        " WHERE id = $1 AND lease_token = $2 AND state = 'running'",
};

/* Append one attempt record to the batch for ATTEMPTS_INSERT_MANY;
 * `worker` and `started_at_ms` come from the job's row. */
static void
attempt_row(struct store_batch *rows, const struct job_finish *f, int64_t attempt,
            const char *worker, int64_t started_at_ms, int64_t now_ms)
{
    store_batch_row(rows);
    store_batch_int(rows, "id", f->id);
    store_batch_int(rows, "attempt", attempt);
    store_batch_int(rows, "started", started_at_ms);
    store_batch_int(rows, "finished", now_ms);
    store_batch_text(rows, "outcome", job_outcome_name(f->outcome));
    store_batch_text(rows, "worker", worker);
    char text[JOB_ERROR_MAX + 1];
    if (f->error)
        bb_utf8_copy(text, sizeof text, f->error);
    store_batch_text(rows, "error", f->error ? text : NULL);
}

/* Completions write no attempt row: the completed job's row describes its
 * last attempt (JOB_ATTEMPTS). */
static enum err
complete_many(struct store_conn *c, struct job_finish *items, size_t n, int64_t now_ms,
              struct store_batch *notes, struct bb_error *e)
{
    struct store_batch keys;
    store_batch_init(&keys, c, 2);
    for (size_t i = 0; i < n; i++) {
        if (items[i].outcome == JOB_OUTCOME_COMPLETED) {
            store_batch_row(&keys);
            store_batch_int(&keys, "id", items[i].id);
            store_batch_int(&keys, "token", items[i].token);
        }
    }
    if (keys.n_rows == 0) {
        store_batch_deinit(&keys);
        return ERR_OK;
    }
    struct store_rows r;
    const struct store_param p[] = {sp_batch(&keys), sp_int(now_ms)};
    enum err rc = store_query(c, &JOB_COMPLETE_MANY, p, 2, &r, e);
    store_batch_deinit(&keys);
    if (rc != ERR_OK)
        return rc;
    /* Items not in the answer had a stale token. ids are few per batch: a
     * linear match is fine. */
    while (store_next(&r)) {
        int64_t id = store_col_int(&r, 0);
        for (size_t i = 0; i < n; i++) {
            if (items[i].id == id && items[i].outcome == JOB_OUTCOME_COMPLETED &&
                items[i].rc == ERR_STALE_TOKEN) {
                items[i].rc = ERR_OK;
                items[i].state = JOB_COMPLETED;
                bb_strlcpy(items[i].queue, store_col_text(&r, 1), sizeof items[i].queue);
                items[i].started_at_ms = store_col_int(&r, 2);
                note_key(notes, items[i].queue, text_or_null(&r, 3));
                break;
            }
        }
    }
    store_rows_close(&r);
    return ERR_OK;
}

static enum err
fail_one(struct store_conn *c, struct job_finish *f, int64_t now_ms, double (*rand01)(void),
         struct store_batch *attempts, struct store_batch *notes, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(f->id), sp_int(f->token)};
    enum err rc = store_query(c, &JOB_FAIL_READ, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return ERR_OK; /* stale: f->rc stays ERR_STALE_TOKEN */
    }
    int64_t attempt = store_col_int(&r, 0);
    int64_t limit = store_col_int(&r, 1);
    struct job_backoff b = {store_col_int(&r, 2), store_col_int(&r, 3), store_col_int(&r, 4),
                            store_col_int(&r, 5)};
    /* Whole, as the claim stored it (JOB_WORKER_MAX); cut, if ever, on a
     * character boundary: PostgreSQL refuses text that is not UTF-8. */
    char worker[JOB_WORKER_MAX + 1];
    bb_utf8_copy(worker, sizeof worker, store_col_text(&r, 6));
    int64_t started = store_col_int(&r, 7);
    char handler[JOB_NAME_MAX + 1];
    bb_strlcpy(handler, store_col_text(&r, 8), sizeof handler);
    char queue[JOB_NAME_MAX + 1];
    bb_strlcpy(queue, store_col_text(&r, 9), sizeof queue);
    bool keyed = !store_col_is_null(&r, 10);
    char key[JOB_CONCURRENCY_KEY_MAX + 1];
    bb_strlcpy(key, keyed ? store_col_text(&r, 10) : "", sizeof key);
    store_rows_close(&r);
    /* An interrupted attempt (its worker stopped) does not count. */
    bool interrupted = f->outcome == JOB_OUTCOME_INTERRUPTED;
    bool dead = f->outcome == JOB_OUTCOME_PERMANENT || (attempt >= limit && !interrupted);
    int64_t run_at = now_ms;
    /* A lost lease already made the job wait a whole lease: retry at once. */
    if (!dead && f->outcome != JOB_OUTCOME_EXPIRED && !interrupted)
        run_at += job_backoff_delay_ms(
            &b, (int)attempt, rand01 ? rand01() : (double)bb_rand_below(1000000) / 1000000.0);
    char cut[JOB_ERROR_MAX + 1];
    bb_utf8_copy(cut, sizeof cut, f->error ? f->error : job_outcome_name(f->outcome));
    char fp[JOB_FINGERPRINT_LEN + 1];
    if (dead)
        job_error_fingerprint(handler, cut, fp);
    const struct store_param w[] = {
        sp_int(f->id),
        sp_int(f->token),
        sp_text(dead ? "dead" : "pending"),
        sp_int(run_at),
        sp_text(cut),
        sp_int(now_ms),
        sp_int(interrupted),
        dead ? sp_text(fp) : sp_null(),
    };
    int64_t changed;
    rc = store_exec(c, &JOB_FAIL_WRITE, w, BB_ARRAY_LEN(w), &changed, e);
    if (rc != ERR_OK || changed == 0)
        return rc;
    f->rc = ERR_OK;
    f->state = dead ? JOB_DEAD : JOB_PENDING;
    memcpy(f->queue, queue, sizeof f->queue);
    f->started_at_ms = started;
    attempt_row(attempts, f, attempt, worker, started, now_ms);
    note_key(notes, queue, keyed ? key : NULL);
    /* A retry: workers set their next timer by it. */
    return dead ? ERR_OK : store_notify(c, JOBS__CHANNEL, "", e);
}

enum err
job_finish_batch(struct store_conn *c, struct job_finish *items, size_t n, int64_t now_ms,
                 double (*rand01)(void), struct bb_error *e)
{
    for (size_t i = 0; i < n; i++)
        items[i].rc = ERR_STALE_TOKEN; /* until the database says otherwise */
    struct store_batch attempts, notes;
    store_batch_init(&attempts, c, 7);
    store_batch_init(&notes, c, 2);
    enum err rc = complete_many(c, items, n, now_ms, &notes, e);
    for (size_t i = 0; i < n && rc == ERR_OK; i++) {
        if (items[i].outcome != JOB_OUTCOME_COMPLETED)
            rc = fail_one(c, &items[i], now_ms, rand01, &attempts, &notes, e);
    }
    if (rc == ERR_OK && attempts.n_rows > 0) {
        const struct store_param p[] = {sp_batch(&attempts)};
        rc = store_exec_deferred(c, &ATTEMPTS_INSERT_MANY, p, 1, e);
    }
    if (rc == ERR_OK)
        rc = note_freed_keys(c, &notes, e);
    store_batch_deinit(&attempts);
    store_batch_deinit(&notes);
    return rc;
}

enum err
job_runs_complete_in(struct store_conn *c, struct job_run *const *runs, size_t n, enum err *rcs,
                     struct bb_error *e)
{
    struct job_finish *items = xcalloc(n ? n : 1, sizeof *items);
    for (size_t i = 0; i < n; i++)
        items[i] = (struct job_finish){.id = runs[i]->job->id,
                                       .token = runs[i]->job->lease_token,
                                       .outcome = JOB_OUTCOME_COMPLETED};
    enum err rc = job_finish_batch(c, items, n, bb_wall_ms(), NULL, e);
    for (size_t i = 0; i < n; i++)
        rcs[i] = rc == ERR_OK ? items[i].rc : rc;
    free(items);
    return rc;
}

/* A refused report's job, and the attempt its last claim began. */
static struct store_stmt JOB_REPORT_FATE = {
    .sql = "SELECT j.state, j.lease_token, j.attempt, j.updated_at_ms, a.outcome, a.error,"
           " a.finished_at_ms FROM jobs j LEFT JOIN job_attempts a"
           " ON a.job_id = j.id AND a.attempt = j.attempt WHERE j.id = $1",
};

/* The refusal of `f`, its detail saying what became of its lease. */
BB_PRINTF(3, 4)
static enum err
stale(struct bb_error *e, const struct job_finish *f, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return bb_fail(e, ERR_STALE_TOKEN, "token",
                   "lease token %" PRId64 " no longer holds job %" PRId64 ": %s", f->token, f->id,
                   why);
}

/* Is the attempt row (outcome, error) the record of report `f`? */
static bool
attempt_is_report(const struct store_rows *r, const struct job_finish *f)
{
    if (store_col_is_null(r, 4) || strcmp(store_col_text(r, 4), job_outcome_name(f->outcome)) != 0)
        return false;
    char cut[JOB_ERROR_MAX + 1];
    bb_utf8_copy(cut, sizeof cut, f->error ? f->error : job_outcome_name(f->outcome));
    return !store_col_is_null(r, 5) && strcmp(store_col_text(r, 5), cut) == 0;
}

static struct store_stmt JOB_ATTEMPT_OUTCOME = {
    .sql = "SELECT outcome FROM job_attempts WHERE job_id = $1 AND attempt = $2",
};

/* `f`'s lease was attempt `attempt`, and the job has been claimed again
 * since: say how that attempt ended. */
static enum err
claimed_since(struct store_conn *c, const struct job_finish *f, int64_t attempt, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(f->id), sp_int(attempt)};
    enum err rc = store_query(c, &JOB_ATTEMPT_OUTCOME, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r))
        rc = stale(e, f, "the job has been claimed again since");
    else if (strcmp(store_col_text(&r, 0), job_outcome_name(JOB_OUTCOME_EXPIRED)) == 0)
        rc = stale(e, f, "its lease ran out, the job was rescued and has been claimed again");
    else
        rc = stale(e, f, "its attempt ended (%s) and the job has been claimed again",
                   store_col_text(&r, 0));
    store_rows_close(&r);
    return rc;
}

enum err
job_finish_replay(struct store_conn *c, struct job_finish *f, struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(f->id)};
    enum err rc = store_query(c, &JOB_REPORT_FATE, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (!store_next(&r)) {
        store_rows_close(&r);
        return stale(e, f, "there is no such job (purged, pruned, or never submitted)");
    }
    /* Read it all first: one statement open at a time. */
    enum job_state state = JOB_PENDING;
    bool known = job_state_parse(store_col_text(&r, 0), &state);
    int64_t token = store_col_int(&r, 1), attempt = store_col_int(&r, 2);
    bool ended = !store_col_is_null(&r, 4); /* the last claim's attempt has its row */
    char outcome[32];
    bb_strlcpy(outcome, ended ? store_col_text(&r, 4) : "", sizeof outcome);
    bool same_report = attempt_is_report(&r, f);
    /* Nothing changed the job after the attempt's row was written. */
    bool untouched = ended && store_col_int(&r, 3) == store_col_int(&r, 6);
    store_rows_close(&r);
    bool completed = f->outcome == JOB_OUTCOME_COMPLETED;
    if (!known)
        rc = stale(e, f, "the job is in an unknown state");
    else if (token < f->token)
        rc = stale(e, f, "no claim of the job was ever given that token");
    else if (token == f->token + 1 && state == JOB_CANCELLED) /* no claim since this one */
        rc = ended ? stale(e, f, "its attempt ended (%s), and the job was cancelled after", outcome)
                   : stale(e, f, "the job was cancelled while this lease held it");
    else if (token == f->token + 1 && state == JOB_RUNNING) /* one claim since, this one */
        rc = claimed_since(c, f, attempt - 1, e);
    else if (token > f->token)
        rc = stale(e, f, "the job has been claimed again, or cancelled, since (it is %s)",
                   job_state_name(state));
    else if (state == JOB_COMPLETED) /* this very lease completed it */
        rc = completed ? ERR_OK : stale(e, f, "this lease already completed the job");
    else if (state == JOB_RUNNING || !ended) /* the same token, no record: only a race */
        rc = stale(e, f, "the job changed while the report was recorded (it is %s)",
                   job_state_name(state));
    else if (strcmp(outcome, job_outcome_name(JOB_OUTCOME_EXPIRED)) == 0)
        rc = stale(e, f, "its lease ran out and the job was rescued (it is %s)",
                   job_state_name(state));
    else if (strcmp(outcome, job_outcome_name(JOB_OUTCOME_COMPLETED)) == 0)
        rc = stale(e, f, "this lease completed the job, and it has been queued again since");
    else if (completed)
        rc = stale(e, f, "this lease already reported the attempt %s", outcome);
    else if (!same_report)
        rc = stale(e, f, "this lease already reported the attempt %s, with another error", outcome);
    else if (!untouched)
        rc = stale(e, f, "this failure was recorded, and the job has been changed since (it is %s)",
                   job_state_name(state));
    else /* this very report, the job as it left it */
        rc = ERR_OK;
    if (rc == ERR_OK)
        f->state = state;
    return rc;
}

static struct store_stmt JOB_EXPIRED = {
    .sql = "SELECT id, lease_token, queue, external, started_at_ms FROM jobs"
           " WHERE state = 'running' AND lease_expires_at_ms <= $1"
           " ORDER BY lease_expires_at_ms LIMIT $2",
    .sql_pg = "SELECT id, lease_token, queue, external, started_at_ms FROM jobs"
              " WHERE state = 'running' AND lease_expires_at_ms <= $1"
              " ORDER BY lease_expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
};

static double
half(void)
{
    return 0.5;
}

enum err
job_rescue_expired(struct store_conn *c, int64_t now_ms, int64_t limit, int64_t *n,
                   struct bb_error *e)
{
    *n = 0;
    struct store_rows r;
    const struct store_param p[] = {sp_int(now_ms), sp_int(limit)};
    enum err rc = store_query(c, &JOB_EXPIRED, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    size_t rows = (size_t)(r.nrows ? r.nrows : 1);
    struct job_finish *items = xcalloc(rows, sizeof *items);
    struct {
        char queue[JOB_NAME_MAX + 1];
        bool external;
        int64_t started_at_ms;
    } *whose = xcalloc(rows, sizeof *whose);
    size_t k = 0;
    while (store_next(&r)) {
        bb_strlcpy(whose[k].queue, store_col_text(&r, 2), sizeof whose[k].queue);
        whose[k].external = store_col_int(&r, 3) != 0;
        whose[k].started_at_ms = store_col_is_null(&r, 4) ? now_ms : store_col_int(&r, 4);
        items[k++] = (struct job_finish){.id = store_col_int(&r, 0),
                                         .token = store_col_int(&r, 1),
                                         .outcome = JOB_OUTCOME_EXPIRED,
                                         .error = "lease expired before the attempt finished"};
    }
    store_rows_close(&r);
    if (k > 0)
        rc = job_finish_batch(c, items, k, now_ms, half, e);
    for (size_t i = 0; i < k && rc == ERR_OK; i++) {
        if (items[i].rc != ERR_OK)
            continue;
        (*n)++;
        store_count_at_commit(
            c, jobs__metric_rescued_def(), 1,
            (const char *const[]){whose[i].queue, whose[i].external ? "external" : "embedded"});
        /* The attempt ended here: it lasted until its lease ran out. */
        jobs__metric_finished_at_commit(c, whose[i].queue, JOB_OUTCOME_EXPIRED,
                                        (double)(now_ms - whose[i].started_at_ms) / 1000.0);
    }
    free(whose);
    free(items);
    if (rc == ERR_OK && *n > 0)
        rc = store_notify(c, JOBS__CHANNEL, "", e);
    return rc;
}

static struct store_stmt PRUNE_FRONT = {
    .sql = "SELECT created_at_ms FROM jobs WHERE id > $1 ORDER BY id LIMIT 1",
};
static struct store_stmt PRUNE_WINDOW = {
    .sql = "SELECT max(id) FROM (SELECT id FROM jobs WHERE id > $1 ORDER BY id LIMIT $2) w",
};
#define PRUNABLE                                                                             \
    "SELECT id FROM jobs WHERE id > $1 AND id <= $2 AND state IN ('completed', 'cancelled')" \
    " AND finished_at_ms < $3"
static struct store_stmt PRUNE_ATTEMPTS = {
    .sql = "DELETE FROM job_attempts WHERE job_id IN (" PRUNABLE ")",
};
static struct store_stmt PRUNE_JOBS = {.sql = "DELETE FROM jobs WHERE id IN (" PRUNABLE ")"};

enum err
job_prune_finished(struct store_conn *c, int64_t before_ms, int64_t limit, int64_t *cursor,
                   int64_t *deleted, struct bb_error *e)
{
    *deleted = 0;
    /* A look at the first job ahead, one index entry and its row, before a
     * window's worth: a sweep that has caught up pays only that. */
    struct store_rows r;
    const struct store_param w[] = {sp_int(*cursor), sp_int(limit)};
    enum err rc = store_query(c, &PRUNE_FRONT, w, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    bool old = store_next(&r) && store_col_int(&r, 0) < before_ms;
    store_rows_close(&r);
    if (!old) { /* past the last job, or at the young ones: start over */
        *cursor = 0;
        return ERR_OK;
    }
    rc = store_query(c, &PRUNE_WINDOW, w, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    int64_t end = store_next(&r) && !store_col_is_null(&r, 0) ? store_col_int(&r, 0) : 0;
    store_rows_close(&r);
    if (end == 0) {
        *cursor = 0;
        return ERR_OK;
    }
    const struct store_param p[] = {sp_int(*cursor), sp_int(end), sp_int(before_ms)};
    rc = store_exec(c, &PRUNE_ATTEMPTS, p, 3, NULL, e);
    if (rc == ERR_OK)
        rc = store_exec(c, &PRUNE_JOBS, p, 3, deleted, e);
    if (rc == ERR_OK)
        *cursor = end;
    return rc;
}

/* ---- schedules
 * ----------------------------------------------------------------------------------- */

static struct store_stmt SCHEDULE_PUT = {
    .sql = "INSERT INTO job_schedules (name, cron, tz, interval_ms, spec, queue, handler, paused,"
           " next_fire_at_ms, created_at_ms, updated_at_ms)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
           " ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, tz = excluded.tz,"
           " interval_ms = excluded.interval_ms, spec = excluded.spec, queue = excluded.queue,"
           " handler = excluded.handler,"
           " next_fire_at_ms = excluded.next_fire_at_ms, updated_at_ms = excluded.updated_at_ms",
};
/* Before a put: is it a replace, and is the schedule paused? Locked on
 * PostgreSQL, so a pause cannot slip in between. */
static struct store_stmt SCHEDULE_PAUSED = {
    .sql = "SELECT paused FROM job_schedules WHERE name = $1",
    .sql_pg = "SELECT paused FROM job_schedules WHERE name = $1 FOR UPDATE",
};
static struct store_stmt SCHEDULE_DELETE = {.sql = "DELETE FROM job_schedules WHERE name = $1"};
static struct store_stmt SCHEDULE_PAUSE = {
    .sql = "UPDATE job_schedules SET paused = $2, updated_at_ms = $3 WHERE name = $1",
};
#define SCHEDULE_COLUMNS                                                          \
    "name, cron, tz, interval_ms, spec, queue, handler, paused, next_fire_at_ms," \
    " last_fire_at_ms, created_at_ms"
static struct store_stmt SCHEDULE_LIST = {
    .sql = "SELECT " SCHEDULE_COLUMNS " FROM job_schedules WHERE ($1 = '' OR name = $1)"
           " ORDER BY name",
};
static struct store_stmt SCHEDULE_DUE = {
    .sql = "SELECT " SCHEDULE_COLUMNS " FROM job_schedules WHERE paused = 0"
           " AND next_fire_at_ms <= $1 ORDER BY next_fire_at_ms LIMIT 100",
    .sql_pg = "SELECT " SCHEDULE_COLUMNS " FROM job_schedules WHERE paused = 0"
              " AND next_fire_at_ms <= $1 ORDER BY next_fire_at_ms LIMIT 100"
              " FOR UPDATE SKIP LOCKED",
};
/* Advance only if nobody else fired this time already. */
static struct store_stmt SCHEDULE_ADVANCE = {
    .sql = "UPDATE job_schedules SET next_fire_at_ms = $3, last_fire_at_ms = $2,"
           " updated_at_ms = $4 WHERE name = $1 AND next_fire_at_ms = $2",
};

/* The next fire strictly after `after_ms`. */
static enum err
schedule_next(const char *cron, const char *tz, int64_t interval_ms, int64_t after_ms,
              int64_t *next, struct bb_error *e)
{
    if (interval_ms > 0) {
        *next = after_ms + interval_ms;
        return ERR_OK;
    }
    struct job_cron parsed;
    enum err rc = job_cron_parse(cron, &parsed, e);
    if (rc == ERR_OK)
        rc = job_cron_next(&parsed, tz, after_ms, next, e);
    return rc;
}

/*
 * A due schedule (due_ms <= now_ms) fires once, however many of its fire
 * times have passed: *fire gets the latest at or before now (due_ms at
 * least), *next the first after now. Both computed, not stepped through,
 * so a schedule stopped for years costs what one stopped for a minute.
 */
static enum err
schedule_catch_up(const char *cron, const char *tz, int64_t interval_ms, int64_t due_ms,
                  int64_t now_ms, int64_t *fire, int64_t *next, struct bb_error *e)
{
    if (interval_ms > 0) {
        *fire = due_ms + (now_ms - due_ms) / interval_ms * interval_ms;
        *next = *fire + interval_ms;
        return ERR_OK;
    }
    struct job_cron parsed;
    enum err rc = job_cron_parse(cron, &parsed, e);
    if (rc != ERR_OK)
        return rc;
    rc = job_cron_prev(&parsed, tz, now_ms, due_ms, fire, e);
    if (rc == ERR_NOT_FOUND) { /* no cron time since due_ms (tzdata changed?): due_ms it is */
        *fire = due_ms;
        rc = ERR_OK;
    }
    /* Past fires after *fire exist only in an hour that occurs twice (see
     * job_cron_prev): at most one per second of it. */
    for (int guard = 0; rc == ERR_OK; guard++) {
        rc = job_cron_next(&parsed, tz, *fire, next, e);
        if (rc != ERR_OK || *next > now_ms)
            break;
        if (guard == 7200)
            return job_cron_next(&parsed, tz, now_ms, next, e);
        *fire = *next;
    }
    return rc;
}

/* The job part of a schedule, stored as JSON so each fire rebuilds it. */
static json_t *
spec_json(const struct job_spec *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "queue", json_string(s->queue ? s->queue : "default"));
    json_object_set_new(o, "handler", json_string(s->handler));
    /* JSON_ALLOW_NUL, as the request's body was parsed: a payload with
     * \u0000 in a string is kept, not replaced by {} (nor tags dropped). */
    json_t *payload =
        json_loads(s->payload ? s->payload : "{}", JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    json_object_set_new(o, "payload", payload ? payload : json_object());
    if (s->target)
        json_object_set_new(o, "target",
                            json_loads(s->target, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL));
    json_object_set_new(o, "priority", json_integer(s->priority));
    json_object_set_new(o, "max_attempts", json_integer(s->max_attempts));
    json_object_set_new(o, "max_duration_ms", json_integer(s->max_duration_ms));
    if (s->unique_key)
        json_object_set_new(o, "unique_key", json_string(s->unique_key));
    if (s->concurrency_key)
        json_object_set_new(o, "concurrency_key", json_string(s->concurrency_key));
    if (s->tags)
        json_object_set_new(o, "tags", json_loads(s->tags, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL));
    if (s->has_backoff)
        json_object_set_new(o, "backoff",
                            json_pack("{s:I, s:I, s:I, s:I}", "base_ms",
                                      (json_int_t)s->backoff.base_ms, "factor_milli",
                                      (json_int_t)s->backoff.factor_milli, "cap_ms",
                                      (json_int_t)s->backoff.cap_ms, "jitter_pct",
                                      (json_int_t)s->backoff.jitter_pct));
    return o;
}

enum err
job_schedule_put(struct store_conn *c, const struct job_schedule *s, int64_t now_ms,
                 struct job_schedule_put_result *out, struct bb_error *e)
{
    struct job_queue q;
    enum err rc = job_queue_get(c, s->job.queue ? s->job.queue : "default", &q, e);
    if (rc != ERR_OK)
        return rc;
    struct store_rows r;
    const struct store_param n[] = {sp_text(s->name)};
    if ((rc = store_query(c, &SCHEDULE_PAUSED, n, 1, &r, e)) != ERR_OK)
        return rc;
    out->created = !store_next(&r);
    /* A replace changes what the schedule does, not whether an operator
     * paused it: the row keeps its paused flag. */
    out->paused = out->created ? s->paused : store_col_int(&r, 0) != 0;
    store_rows_close(&r);
    const char *tz = s->tz[0] ? s->tz : "UTC";
    rc = schedule_next(s->cron, tz, s->interval_ms, now_ms, &out->next_fire_ms, e);
    if (rc != ERR_OK)
        return rc;
    json_t *spec = spec_json(&s->job);
    char *text = bb_json_dumps(spec);
    json_decref(spec);
    const struct store_param p[] = {
        sp_text(s->name),
        s->interval_ms > 0 ? sp_null() : sp_text(s->cron),
        sp_text(tz),
        sp_int(s->interval_ms),
        sp_text(text),
        sp_text(q.name),
        sp_text(s->job.handler),
        sp_int(s->paused),
        sp_int(out->next_fire_ms),
        sp_int(now_ms),
    };
    rc = store_exec(c, &SCHEDULE_PUT, p, BB_ARRAY_LEN(p), NULL, e);
    free(text);
    return rc;
}

enum err
job_schedule_delete(struct store_conn *c, const char *name, struct bb_error *e)
{
    const struct store_param p[] = {sp_text(name)};
    int64_t changed;
    enum err rc = store_exec(c, &SCHEDULE_DELETE, p, 1, &changed, e);
    if (rc == ERR_OK && changed == 0)
        return bb_fail(e, ERR_NOT_FOUND, "name", "no schedule named %s", name);
    return rc;
}

enum err
job_schedule_set_paused(struct store_conn *c, const char *name, bool paused, int64_t now_ms,
                        struct bb_error *e)
{
    const struct store_param p[] = {sp_text(name), sp_int(paused), sp_int(now_ms)};
    int64_t changed;
    enum err rc = store_exec(c, &SCHEDULE_PAUSE, p, BB_ARRAY_LEN(p), &changed, e);
    if (rc == ERR_OK && changed == 0)
        return bb_fail(e, ERR_NOT_FOUND, "name", "no schedule named %s", name);
    return rc;
}

enum err
job_schedule_list_json(struct store_conn *c, const char *only, int upcoming, json_t **out,
                       struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_text(only ? only : "")};
    enum err rc = store_query(c, &SCHEDULE_LIST, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *list = json_array();
    while (store_next(&r)) {
        json_t *o = json_object();
        const char *cron = text_or_null(&r, 1);
        const char *tz = store_col_text(&r, 2);
        int64_t interval = store_col_int(&r, 3);
        json_object_set_new(o, "name", text_json(&r, 0));
        json_object_set_new(o, "cron", text_json(&r, 1));
        json_object_set_new(o, "timezone", text_json(&r, 2));
        json_object_set_new(o, "every_ms", interval ? json_integer(interval) : json_null());
        json_object_set_new(o, "job", stored_json(&r, 4));
        json_object_set_new(o, "paused", json_boolean(store_col_int(&r, 7) != 0));
        json_object_set_new(o, "next_fire_at", time_json(&r, 8));
        json_object_set_new(o, "last_fire_at", time_json(&r, 9));
        json_object_set_new(o, "created_at", time_json(&r, 10));
        json_t *next = json_array();
        int64_t t = store_col_int(&r, 8);
        for (int i = 0; i < upcoming; i++) {
            char buf[32];
            bb_wall_ms_format(t, buf);
            json_array_append_new(next, json_string(buf));
            struct bb_error ignored;
            if (schedule_next(cron, tz, interval, t, &t, &ignored) != ERR_OK)
                break;
        }
        json_object_set_new(o, "upcoming", next);
        json_array_append_new(list, o);
    }
    store_rows_close(&r);
    if (only && json_array_size(list) == 0) {
        json_decref(list);
        return bb_fail(e, ERR_NOT_FOUND, "name", "no schedule named %s", only);
    }
    *out = list;
    return ERR_OK;
}

/* Rebuild the job spec a schedule stores (strings borrowed from `spec`). */
static void
spec_from_json(const json_t *spec, struct job_spec *s, char **payload, char **target, char **tags)
{
    memset(s, 0, sizeof *s);
    s->queue = json_string_value(json_object_get(spec, "queue"));
    s->handler = json_string_value(json_object_get(spec, "handler"));
    *payload = bb_json_dumps(json_object_get(spec, "payload"));
    s->payload = *payload;
    const json_t *t = json_object_get(spec, "target");
    *target = t && !json_is_null(t) ? bb_json_dumps(t) : NULL;
    s->target = *target;
    const json_t *tg = json_object_get(spec, "tags");
    *tags = tg && !json_is_null(tg) ? bb_json_dumps(tg) : NULL;
    s->tags = *tags;
    s->priority = json_integer_value(json_object_get(spec, "priority"));
    s->max_attempts = json_integer_value(json_object_get(spec, "max_attempts"));
    s->max_duration_ms = json_integer_value(json_object_get(spec, "max_duration_ms"));
    s->unique_key = json_string_value(json_object_get(spec, "unique_key"));
    s->concurrency_key = json_string_value(json_object_get(spec, "concurrency_key"));
    const json_t *b = json_object_get(spec, "backoff");
    if (json_is_object(b)) {
        s->has_backoff = true;
        s->backoff.base_ms = json_integer_value(json_object_get(b, "base_ms"));
        s->backoff.factor_milli = json_integer_value(json_object_get(b, "factor_milli"));
        s->backoff.cap_ms = json_integer_value(json_object_get(b, "cap_ms"));
        s->backoff.jitter_pct = json_integer_value(json_object_get(b, "jitter_pct"));
    }
}

/* Fire one due schedule row: advance it (compare-and-set), then submit. */
static enum err
fire_one(struct store_conn *c, const struct store_rows *r, int64_t now_ms, int64_t *n,
         struct bb_error *e)
{
    const char *name = store_col_text(r, 0);
    const char *cron = text_or_null(r, 1);
    const char *tz = store_col_text(r, 2);
    int64_t interval = store_col_int(r, 3);
    int64_t due = store_col_int(r, 8);
    int64_t fire, next;
    enum err rc = schedule_catch_up(cron, tz, interval, due, now_ms, &fire, &next, e);
    if (rc != ERR_OK)
        return rc;
    const struct store_param p[] = {sp_text(name), sp_int(due), sp_int(next), sp_int(now_ms)};
    int64_t changed;
    rc = store_exec(c, &SCHEDULE_ADVANCE, p, BB_ARRAY_LEN(p), &changed, e);
    if (rc != ERR_OK || changed == 0)
        return rc; /* another process fired it */
    json_t *spec_doc = json_loadb(store_col_text(r, 4), store_col_len(r, 4), JSON_ALLOW_NUL, NULL);
    if (spec_doc == NULL)
        return bb_fail(e, ERR_STORE, "", "schedule %s has an unreadable job", name);
    struct job_spec s;
    char *payload, *target, *tags;
    spec_from_json(spec_doc, &s, &payload, &target, &tags);
    s.schedule = name;
    s.scheduled_for_ms = fire;
    s.run_at_ms = now_ms;
    char trace[BB_TRACEPARENT_LEN + 1];
    bb_traceparent_new(trace); /* each fire starts a trace of its own */
    s.traceparent = trace;
    int64_t id;
    bool created = false;
    if (s.unique_key) {
        /* A fire is skipped while the previous fire's job is still pending
         * or running under the same key. */
        const struct store_param u[] = {sp_text(s.queue), sp_text(s.unique_key)};
        bool busy;
        rc = query_int(c, &JOB_BY_UNIQUE, u, 2, &id, &busy, e);
        if (rc == ERR_OK && busy) {
            s.handler = NULL; /* skip */
        } else {
            s.unique_key = NULL; /* checked here; the insert keys on the fire */
        }
    }
    if (rc == ERR_OK && s.handler)
        rc = job_submit(c, &s, now_ms, &id, &created, e);
    if (rc == ERR_OK && created)
        (*n)++;
    json_decref(spec_doc);
    free(payload);
    free(target);
    free(tags);
    return rc;
}

enum err
job_schedule_fire_due(struct store_conn *c, int64_t now_ms, int64_t *n, struct bb_error *e)
{
    *n = 0;
    struct store_rows r;
    const struct store_param p[] = {sp_int(now_ms)};
    enum err rc = store_query(c, &SCHEDULE_DUE, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    while (rc == ERR_OK && store_next(&r))
        rc = fire_one(c, &r, now_ms, n, e);
    store_rows_close(&r);
    return rc;
}

/* ---- for the workers
 * -------------------------------------------------------------------------------- */

static struct store_stmt LIMITED_QUEUES = {
    .sql = "SELECT name FROM job_queues WHERE paused = 0"
           " AND (concurrency > 0 OR rate_max > 0 OR key_concurrency > 0 OR key_rate_max > 0)"
           " ORDER BY name",
};
#define CLAIM_SET                                                                              \
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1," \
    " leased_by = $3, lease_expires_at_ms = $1 + max_duration_ms + 1000, started_at_ms = $1,"  \
    " updated_at_ms = $1"
/*
 * The embedded workers' claim over every queue that is not paused and has no
 * concurrency limit ($4: a JSON array of queue names to stay within; [] for
 * all): each queue's best ready jobs through its own index, then the best of
 * those overall (priority, then age). A paused queue's backlog is never
 * scanned. $1 now, $2 max, $3 worker.
 */
static struct store_stmt CLAIM_UNLIMITED = {
    .sql_pg = CLAIM_SET " WHERE id IN (SELECT j.id FROM job_queues q CROSS JOIN LATERAL"
                        " (SELECT id, priority, run_at_ms FROM jobs WHERE queue = q.name"
                        " AND state = 'pending' AND parked = 0 AND external = 0 AND run_at_ms <= $1"
                        " ORDER BY priority DESC, run_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED) j"
                        " WHERE q.paused = 0 AND q.concurrency = 0 AND q.rate_max = 0"
                        " AND q.key_concurrency = 0 AND q.key_rate_max = 0"
                        " AND (json_array_length($4::json)"
                        " = 0 OR q.name IN (SELECT json_array_elements_text($4::json)))"
                        " ORDER BY j.priority DESC, j.run_at_ms, j.id LIMIT $2)"
                        " RETURNING " LEASE_COLUMNS,
    .sql_sqlite = CLAIM_SET " WHERE id IN (SELECT j.id FROM job_queues q JOIN jobs j ON j.id IN"
                            " (SELECT id FROM jobs WHERE queue = q.name AND state = 'pending'"
                            " AND parked = 0 AND external = 0 AND run_at_ms <= $1"
                            " ORDER BY priority DESC, run_at_ms, id LIMIT $2)"
                            " WHERE q.paused = 0 AND q.concurrency = 0 AND q.rate_max = 0"
                            " AND q.key_concurrency = 0 AND q.key_rate_max = 0"
                            " AND (json_array_length($4)"
                            " = 0 OR q.name IN (SELECT value FROM json_each($4)))"
                            " ORDER BY j.priority DESC, j.run_at_ms, j.id LIMIT $2)"
                            " RETURNING " LEASE_COLUMNS,
};
static struct store_stmt NEXT_DUE = {
    .sql = "SELECT MIN(run_at_ms) FROM jobs WHERE state = 'pending' AND run_at_ms > $1",
};

enum err
jobs__limited_queues(struct store_conn *c, char ***names, size_t *n, struct bb_error *e)
{
    struct store_rows r;
    enum err rc = store_query(c, &LIMITED_QUEUES, NULL, 0, &r, e);
    if (rc != ERR_OK)
        return rc;
    *n = 0;
    *names = xcalloc((size_t)(r.nrows ? r.nrows : 1), sizeof **names);
    while (store_next(&r))
        (*names)[(*n)++] = xstrdup(store_col_text(&r, 0));
    store_rows_close(&r);
    return ERR_OK;
}

void
jobs__free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

enum err
jobs__claim_unlimited(struct store_conn *c, const char *queues_json, const char *worker,
                      int64_t max, int64_t now_ms, struct job_lease **leases, size_t *n,
                      struct bb_error *e)
{
    *leases = NULL;
    *n = 0;
    const struct store_param p[] = {sp_int(now_ms), sp_int(max), sp_text(worker),
                                    sp_text(queues_json ? queues_json : "[]")};
    struct store_rows r;
    enum err rc = store_query(c, &CLAIM_UNLIMITED, p, BB_ARRAY_LEN(p), &r, e);
    if (rc == ERR_OK)
        leases_from(&r, leases, n);
    return rc;
}

enum err
jobs__next_due(struct store_conn *c, int64_t now_ms, int64_t *next_ms, struct bb_error *e)
{
    const struct store_param p[] = {sp_int(now_ms)};
    return query_int(c, &NEXT_DUE, p, 1, next_ms, NULL, e);
}

/* ---- metrics from the database
 * --------------------------------------------------------------------- */

enum err
job_metrics_refresh(struct store_conn *c, int64_t now_ms, struct bb_error *e)
{
    json_t *queues;
    enum err rc = job_queue_list_json(c, NULL, now_ms, &queues, e);
    if (rc != ERR_OK)
        return rc;
    size_t i;
    json_t *q;
    json_array_foreach(queues, i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        const char *state;
        json_t *count;
        json_object_foreach(json_object_get(q, "depth"), state, count)
            jobs__metric_depth(name, state, json_integer_value(count));
    }
    json_decref(queues);
    json_t *dead;
    rc = job_dead_groups_json(c, NULL, JOBS__DEAD_GROUPS_SHOWN, &dead, e);
    if (rc != ERR_OK)
        return rc;
    jobs__metric_dead_groups(json_object_get(dead, "groups"));
    json_decref(dead);
    return ERR_OK;
}
