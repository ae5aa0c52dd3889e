/*
 * testsupport.h: what the C test suites share: a cmocka main that runs one
 * named test (so each is its own CTest test), and a fresh database per test on
 * the engine named by BB_TEST_ENGINE (a SQLite file in a temporary directory,
 * or a private schema in the PostgreSQL at BACKBONE_TEST_PG_URL).
 */
#ifndef BB_TESTSUPPORT_H
#define BB_TESTSUPPORT_H

#include "base/base.h"
#include "store/store.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* main() for a test binary: `prog [test-name]`. Returns 77 (skipped) when
 * the suite needs PostgreSQL and none is configured, unless
 * BACKBONE_TEST_REQUIRE_PG=1, which makes that a failure. */
int test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n, bool needs_db);
#define TEST_MAIN(tests, needs_db)                                          \
    int main(int argc, char **argv)                                         \
    {                                                                       \
        return test_main(argc, argv, tests, BB_ARRAY_LEN(tests), needs_db); \
    }

struct test_db {
    enum store_engine engine;
    char url[1024];
    char dir[256];   /* SQLite: temporary directory */
    char schema[64]; /* PostgreSQL: private schema */
    struct store *store;
};

/* The engine of this run (BB_TEST_ENGINE=sqlite|pg). */
enum store_engine test_engine(void);
/* A fresh, empty database, its store open and every module migrated. */
struct test_db *test_db_create(void);
/* Same, with explicit store options (url filled in by the helper). */
struct test_db *test_db_create_with(const struct store_options *o);
void test_db_destroy(struct test_db *db);

/* One page of GET /outbox's body as a reader on `c` gets it (in a write
 * transaction, as the outbox's sequencer wants on PostgreSQL). */
struct outbox_filter;
json_t *test_outbox_page(struct store_conn *c, const struct outbox_filter *f);

/* A test_db with one connection open on it, and its cmocka setup/teardown
 * (suites that work on a connection). */
struct test_conn {
    struct test_db *db;
    struct store_conn *c;
};
int test_conn_setup(void **state);
int test_conn_teardown(void **state);

/* cmocka setup/teardown that put a test_db in *state. */
int test_db_setup(void **state);
int test_db_teardown(void **state);

/* What a metric series says now, named as /metrics writes it
 * ("backbone_x" or "backbone_x{label=\"v\"}"); -1 when it is not there. */
int64_t test_metric(const char *series);
/* The same as a double (a histogram's _sum); -1 when it is not there. */
double test_metric_value(const char *series);

/* An RFC 3339 time in epoch ms, asserted to parse. */
int64_t test_ms_at(const char *rfc3339);

/* Assert rc == ERR_OK, printing the error's detail otherwise. */
#define assert_ok(rc, e)                                                        \
    do {                                                                        \
        enum err assert_rc_ = (rc);                                             \
        if (assert_rc_ != ERR_OK)                                               \
            fail_msg("%s: %s (%s)", #rc, bb_err_name(assert_rc_), (e)->detail); \
    } while (0)

#endif /* BB_TESTSUPPORT_H */
