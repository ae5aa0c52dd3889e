/*
 * testsupport.c: fresh databases per test, the one-test-per-process
 * cmocka main, and reading a metric.
 */
#include "testsupport.h"

#include "cli/cli.h"
#include "metrics/metrics.h"
#include "outbox/outbox.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *
pg_url(void)
{
    const char *u = getenv("BACKBONE_TEST_PG_URL");
    return u && *u ? u : NULL;
}

enum store_engine
test_engine(void)
{
    const char *e = getenv("BB_TEST_ENGINE");
    return e && strcmp(e, "pg") == 0 ? STORE_POSTGRES : STORE_SQLITE;
}

int
test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n, bool needs_db)
{
    if (needs_db && test_engine() == STORE_POSTGRES && pg_url() == NULL) {
        const char *req = getenv("BACKBONE_TEST_REQUIRE_PG");
        fprintf(stderr, "BACKBONE_TEST_PG_URL is not set: no PostgreSQL to test against\n");
        return req && strcmp(req, "1") == 0 ? 1 : 77;
    }
    bb_log_level = BB_LOG_WARN;
    bb_tz_init();
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return _cmocka_run_group_tests(argv[0], tests, n, NULL, NULL);
}

/* Run a statement built from trusted test text (schema names). */
static enum err
run_sql(struct store *s, const char *sql, struct bb_error *e)
{
    struct store_conn *c;
    enum err rc = store_conn_open(s, &c, e);
    if (rc != ERR_OK)
        return rc;
    struct store_stmt st = {.sql = sql};
    rc = store_exec(c, &st, NULL, 0, NULL, e);
    store_conn_close(c);
    return rc;
}

struct test_db *
test_db_create_with(const struct store_options *o)
{
    static int counter;
    struct test_db *db = xcalloc(1, sizeof *db);
    struct bb_error e;
    bb_error_clear(&e);
    db->engine = test_engine();
    if (db->engine == STORE_SQLITE) {
        snprintf(db->dir, sizeof db->dir, "/tmp/bbtest.XXXXXX");
        if (mkdtemp(db->dir) == NULL)
            fail_msg("mkdtemp failed");
        snprintf(db->url, sizeof db->url, "sqlite:%s/test.db", db->dir);
    } else {
        snprintf(db->schema, sizeof db->schema, "t_%d_%d_%lld", (int)getpid(), counter++,
                 (long long)(bb_wall_ms() % 100000));
        struct store_options po;
        store_options_defaults(&po, pg_url());
        po.pool_size = 1;
        struct store *admin;
        assert_ok(store_open(&po, &admin, &e), &e);
        char sql[128];
        snprintf(sql, sizeof sql, "CREATE SCHEMA %s", db->schema);
        assert_ok(run_sql(admin, sql, &e), &e);
        store_close(admin);
        snprintf(db->url, sizeof db->url, "%s%coptions=-csearch_path%%3D%s", pg_url(),
                 strchr(pg_url(), '?') ? '&' : '?', db->schema);
    }
    struct store_options so = *o;
    so.url = db->url;
    assert_ok(store_open(&so, &db->store, &e), &e);
    assert_ok(backbone_migrate_all(db->store, &e), &e);
    return db;
}

struct test_db *
test_db_create(void)
{
    struct store_options o;
    store_options_defaults(&o, test_engine() == STORE_POSTGRES ? "postgres://" : "sqlite:x");
    return test_db_create_with(&o);
}

void
test_db_destroy(struct test_db *db)
{
    if (db == NULL)
        return;
    store_close(db->store);
    if (db->engine == STORE_SQLITE) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", db->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", db->dir);
    } else {
        struct store_options po;
        store_options_defaults(&po, pg_url());
        po.pool_size = 1;
        struct store *admin;
        struct bb_error e;
        if (store_open(&po, &admin, &e) == ERR_OK) {
            char sql[128];
            snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", db->schema);
            if (run_sql(admin, sql, &e) != ERR_OK)
                fprintf(stderr, "could not drop %s: %s\n", db->schema, e.detail);
            store_close(admin);
        }
    }
    free(db);
}

int
test_db_setup(void **state)
{
    *state = test_db_create();
    return 0;
}

int
test_db_teardown(void **state)
{
    test_db_destroy(*state);
    return 0;
}

json_t *
test_outbox_page(struct store_conn *c, const struct outbox_filter *f)
{
    struct bb_error e;
    json_t *page = NULL;
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(outbox_list_json(c, f, &page, &e), &e);
    assert_ok(store_commit(c, &e), &e);
    return page;
}

int
test_conn_setup(void **state)
{
    struct test_conn *f = xcalloc(1, sizeof *f);
    f->db = test_db_create();
    struct bb_error e;
    assert_ok(store_conn_open(f->db->store, &f->c, &e), &e);
    *state = f;
    return 0;
}

int
test_conn_teardown(void **state)
{
    struct test_conn *f = *state;
    store_conn_close(f->c);
    test_db_destroy(f->db);
    free(f);
    return 0;
}

double
test_metric_value(const char *series)
{
    struct bb_buf b;
    bb_buf_init(&b);
    metrics_render(&b);
    char key[256];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *line = strstr(b.data, key);
    double v = line ? strtod(line + strlen(key), NULL) : -1;
    bb_buf_deinit(&b);
    return v;
}

int64_t
test_metric(const char *series)
{
    return (int64_t)test_metric_value(series); /* counts are exact in a double to 2^53 */
}

int64_t
test_ms_at(const char *rfc3339)
{
    int64_t ms;
    assert_int_equal(bb_rfc3339_parse(rfc3339, &ms), ERR_OK);
    return ms;
}
