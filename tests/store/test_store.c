/*
 * test_store.c: the store's conformance suite. Every test runs once on
 * SQLite and once on PostgreSQL (BB_TEST_ENGINE), each on a fresh database.
 */
#include "testsupport.h"

#include "metrics/metrics.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct store_stmt CREATE_T = {
    .sql = "CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT, s TEXT)",
};
static struct store_stmt INSERT_T = {.sql = "INSERT INTO t (id, n, s) VALUES ($1, $2, $3)"};
static struct store_stmt SELECT_T = {.sql = "SELECT id, n, s FROM t WHERE id = $1"};
static struct store_stmt COUNT_T = {.sql = "SELECT COUNT(*) FROM t"};
static struct store_stmt UPDATE_T = {.sql = "UPDATE t SET n = n + 1 WHERE id <= $1"};

static struct store_conn *
conn(struct test_db *db)
{
    struct store_conn *c;
    struct bb_error e;
    assert_ok(store_conn_open(db->store, &c, &e), &e);
    return c;
}

static void
create_t(struct test_db *db)
{
    struct store_conn *c = conn(db);
    struct bb_error e;
    assert_ok(store_exec(c, &CREATE_T, NULL, 0, NULL, &e), &e);
    store_conn_close(c);
}

/* The one integer `st` answers. */
static int64_t
query_int(struct store_conn *c, struct store_stmt *st)
{
    struct store_rows r;
    struct bb_error e;
    assert_ok(store_query(c, st, NULL, 0, &r, &e), &e);
    assert_true(store_next(&r));
    int64_t n = store_col_int(&r, 0);
    store_rows_close(&r);
    return n;
}

static int64_t
count_t(struct store_conn *c)
{
    return query_int(c, &COUNT_T);
}

static bool
row_exists(struct store_conn *c, int64_t id)
{
    struct store_rows r;
    struct bb_error e;
    const struct store_param p[] = {sp_int(id)};
    assert_ok(store_query(c, &SELECT_T, p, 1, &r, &e), &e);
    bool found = store_next(&r);
    store_rows_close(&r);
    return found;
}

/* ---- statements and parameters ------------------------------------------------ */

static void
parameters_round_trip_exactly(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    static const struct {
        int64_t id;
        int64_t n;
        const char *s;
    } rows[] = {
        {1, INT64_MAX, "plain"},
        {2, INT64_MIN, "caf\xc3\xa9 \xe2\x9c\x93 \"quotes\" 'single' \\ back"},
        {3, 0, "'); DROP TABLE t; --"},
        {4, -1, NULL},
        {5, 42, ""},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(rows); i++) {
        const struct store_param p[] = {sp_int(rows[i].id), sp_int(rows[i].n), sp_text(rows[i].s)};
        int64_t changes = 0;
        assert_ok(store_exec(c, &INSERT_T, p, 3, &changes, &e), &e);
        assert_int_equal(changes, 1);
    }
    for (size_t i = 0; i < BB_ARRAY_LEN(rows); i++) {
        struct store_rows r;
        const struct store_param p[] = {sp_int(rows[i].id)};
        assert_ok(store_query(c, &SELECT_T, p, 1, &r, &e), &e);
        assert_int_equal(r.ncols, 3);
        assert_true(store_next(&r));
        assert_int_equal(store_col_int(&r, 1), rows[i].n);
        if (rows[i].s == NULL) {
            assert_true(store_col_is_null(&r, 2));
            assert_string_equal(store_col_text(&r, 2), "");
        } else {
            assert_false(store_col_is_null(&r, 2));
            assert_string_equal(store_col_text(&r, 2), rows[i].s);
            assert_int_equal(store_col_len(&r, 2), strlen(rows[i].s));
        }
        assert_false(store_next(&r));
        store_rows_close(&r);
    }
    assert_int_equal(count_t(c), BB_ARRAY_LEN(rows)); /* the table survived row 3 */
    store_conn_close(c);
}

static void
text_parameters_with_length_need_no_terminator(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    const char buf[] = {'a', 'b', 'c', 'X', 'Y'};
    const struct store_param p[] = {sp_int(1), sp_int(0), sp_textn(buf, 3)};
    assert_ok(store_exec(c, &INSERT_T, p, 3, NULL, &e), &e);
    struct store_rows r;
    const struct store_param q[] = {sp_int(1)};
    assert_ok(store_query(c, &SELECT_T, q, 1, &r, &e), &e);
    assert_true(store_next(&r));
    assert_string_equal(store_col_text(&r, 2), "abc");
    store_rows_close(&r);
    store_conn_close(c);
}

static void
exec_reports_rows_changed(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    for (int i = 1; i <= 5; i++) {
        const struct store_param p[] = {sp_int(i), sp_int(0), sp_text("x")};
        assert_ok(store_exec(c, &INSERT_T, p, 3, NULL, &e), &e);
    }
    int64_t changes = 0;
    const struct store_param p[] = {sp_int(3)};
    assert_ok(store_exec(c, &UPDATE_T, p, 1, &changes, &e), &e);
    assert_int_equal(changes, 3);
    store_conn_close(c);
}

static void
unique_violation_is_a_conflict(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    const struct store_param p[] = {sp_int(1), sp_int(0), sp_text("x")};
    assert_ok(store_exec(c, &INSERT_T, p, 3, NULL, &e), &e);
    assert_int_equal(store_exec(c, &INSERT_T, p, 3, NULL, &e), ERR_CONFLICT);
    /* The connection is still usable afterwards. */
    assert_int_equal(count_t(c), 1);
    store_conn_close(c);
}

static void
rollback_discards_and_commit_keeps(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    const struct store_param p1[] = {sp_int(1), sp_int(0), sp_text("x")};
    assert_ok(store_exec(c, &INSERT_T, p1, 3, NULL, &e), &e);
    store_rollback(c);
    assert_int_equal(count_t(c), 0);
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(store_exec(c, &INSERT_T, p1, 3, NULL, &e), &e);
    assert_ok(store_commit(c, &e), &e);
    struct store_conn *other = conn(db);
    assert_int_equal(count_t(other), 1);
    store_conn_close(other);
    store_conn_close(c);
}

/* store_after_commit's record of its calls: +1 committed, -1 rolled back. */
struct after_log {
    int calls[8];
    int n;
};

static void
after_logged(void *arg, bool committed)
{
    struct after_log *l = arg;
    l->calls[l->n++] = committed ? 1 : -1;
}

struct after_unit {
    struct after_log *log;
    enum err rc; /* what the unit returns after registering */
};

static enum err
after_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct after_unit *u = arg;
    store_after_commit(c, after_logged, u->log);
    return u->rc == ERR_OK ? ERR_OK : bb_fail(e, u->rc, "", "the unit fails");
}

static void
after_commit_callbacks_follow_the_transactions_fate(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    struct after_log log = {0};
    /* Committed: called once, with true, by store_commit. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    store_after_commit(c, after_logged, &log);
    assert_int_equal(log.n, 0);
    assert_ok(store_commit(c, &e), &e);
    /* Rolled back: with false. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    store_after_commit(c, after_logged, &log);
    store_rollback(c);
    /* Outside a transaction: at once. */
    store_after_commit(c, after_logged, &log);
    assert_int_equal(log.n, 3);
    assert_int_equal(log.calls[0], 1);
    assert_int_equal(log.calls[1], -1);
    assert_int_equal(log.calls[2], 1);
    store_conn_close(c);
    /* Through the executor: before store_run returns, as the unit ended. */
    struct after_unit ok = {.log = &log, .rc = ERR_OK}, bad = {.log = &log, .rc = ERR_INVALID};
    assert_ok(store_run(db->store, STORE_WRITE, after_work, &ok, &e), &e);
    assert_int_equal(store_run(db->store, STORE_WRITE, after_work, &bad, &e), ERR_INVALID);
    assert_int_equal(log.n, 5);
    assert_int_equal(log.calls[3], 1);
    assert_int_equal(log.calls[4], -1);
}

static struct metrics_def M_TEST_COUNTED = {
    .name = "backbone_test_counted_total",
    .help = "Counted at commit by the store's test.",
    .type = METRICS_COUNTER,
    .labels = {"kind", "how"},
};

/* A count at commit lands once its transaction commits, with its labels
 * (copied), and never for one that rolled back. */
static void
counts_land_at_commit_and_never_after_rollback(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    char kind[8] = "a";
    const char *series = "backbone_test_counted_total{kind=\"a\",how=\"x\"}";
    int64_t before = test_metric(series);
    if (before < 0)
        before = 0;
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    store_count_at_commit(c, &M_TEST_COUNTED, 2, (const char *const[]){kind, "x"});
    bb_strlcpy(kind, "b", sizeof kind); /* the label was copied */
    assert_true(test_metric(series) <= before);
    assert_ok(store_commit(c, &e), &e);
    assert_int_equal(test_metric(series), before + 2);
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    store_count_at_commit(c, &M_TEST_COUNTED, 5, (const char *const[]){"a", "x"});
    store_rollback(c);
    assert_int_equal(test_metric(series), before + 2);
    store_conn_close(c);
}

static void
deferred_insert(struct store_conn *c, int64_t id, const char *text, enum err want)
{
    struct bb_error e;
    const struct store_param p[] = {sp_int(id), sp_int(0), sp_text(text)};
    assert_int_equal(store_exec_deferred(c, &INSERT_T, p, 3, &e), want);
}

/* A batch's rows, in order, with the parameter after it. */
static struct store_stmt BATCH_ROWS = {
    .sql_pg = "SELECT id, n, s, flag::int, j, $6 FROM unnest($1::bigint[], $2::bigint[],"
              " $3::text[], $4::boolean[], $5::text[]) WITH ORDINALITY AS x(id, n, s, flag, j, o)"
              " ORDER BY o",
    .sql_sqlite = "SELECT value ->> 'id', value ->> 'n', value ->> 's', value ->> 'flag',"
                  " value ->> 'j', $2 FROM json_each($1) ORDER BY key",
};
static struct store_stmt BATCH_LIST = {
    .sql_pg = "SELECT x, $2 FROM unnest($1::text[]) WITH ORDINALITY AS u(x, o) ORDER BY o",
    .sql_sqlite = "SELECT value, $2 FROM json_each($1) ORDER BY key",
};

static void
batches_carry_every_value_exactly(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    static const char *const texts[] = {
        "plain",
        "caf\xc3\xa9 \xe2\x9c\x93 \"quotes\" 'single' \\ back\\",
        "{braces}, commas, \"NULL\"",
        "NULL",
        "",
        " spaced \t\n\r ",
        NULL,
    };
    static const int64_t ints[] = {INT64_MAX, INT64_MIN, 0, -1, 42, 7, 1};
    json_t *values[BB_ARRAY_LEN(texts)];
    for (size_t i = 0; i < BB_ARRAY_LEN(texts); i++)
        values[i] = i % 3 == 2 ? NULL
                               : json_pack("{s:s?, s:I, s:[b, n, f]}", "t", texts[i], "n",
                                           (json_int_t)ints[i], "l", i % 2, 0.5);

    struct store_batch b;
    store_batch_init(&b, c, 5);
    for (size_t i = 0; i < BB_ARRAY_LEN(texts); i++) {
        store_batch_row(&b);
        store_batch_int(&b, "id", (int64_t)i);
        store_batch_int(&b, "n", ints[i]);
        store_batch_text(&b, "s", texts[i]);
        store_batch_bool(&b, "flag", i % 2 == 1);
        store_batch_json(&b, "j", values[i]);
    }
    const struct store_param p[] = {sp_batch(&b), sp_text("after")};
    struct store_rows r;
    assert_ok(store_query(c, &BATCH_ROWS, p, 2, &r, &e), &e);
    store_batch_deinit(&b);
    assert_int_equal(r.nrows, BB_ARRAY_LEN(texts));
    for (size_t i = 0; store_next(&r); i++) {
        assert_int_equal(store_col_int(&r, 0), (int64_t)i);
        assert_true(store_col_int(&r, 1) == ints[i]);
        assert_int_equal(store_col_is_null(&r, 2), texts[i] == NULL);
        assert_string_equal(store_col_text(&r, 2), texts[i] ? texts[i] : "");
        assert_int_equal(store_col_int(&r, 3), i % 2);
        if (values[i] == NULL) {
            assert_true(store_col_is_null(&r, 4));
        } else { /* verbatim: the text one row alone would store */
            char *want = bb_json_dumps(values[i]);
            assert_string_equal(store_col_text(&r, 4), want);
            free(want);
        }
        assert_string_equal(store_col_text(&r, 5), "after");
    }
    store_rows_close(&r);

    /* A list, and an empty batch. */
    store_batch_texts(&b, c, texts, BB_ARRAY_LEN(texts) - 1);
    const struct store_param l[] = {sp_batch(&b), sp_int(9)};
    assert_ok(store_query(c, &BATCH_LIST, l, 2, &r, &e), &e);
    store_batch_deinit(&b);
    assert_int_equal(r.nrows, BB_ARRAY_LEN(texts) - 1);
    for (size_t i = 0; store_next(&r); i++) {
        assert_string_equal(store_col_text(&r, 0), texts[i]);
        assert_int_equal(store_col_int(&r, 1), 9);
    }
    store_rows_close(&r);
    store_batch_init(&b, c, 5);
    const struct store_param none[] = {sp_batch(&b), sp_text("after")};
    assert_ok(store_query(c, &BATCH_ROWS, none, 2, &r, &e), &e);
    store_batch_deinit(&b);
    assert_int_equal(r.nrows, 0);
    store_rows_close(&r);
    for (size_t i = 0; i < BB_ARRAY_LEN(texts); i++)
        json_decref(values[i]);
    store_conn_close(c);
}

static void
deferred_writes_commit_roll_back_and_fail_with_their_transaction(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    bool pg = db->engine == STORE_POSTGRES;

    /* Kept: the parameters are the deferred write's own copy. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    deferred_insert(c, 1, "first", ERR_OK); /* prepares INSERT_T: runs at once */
    char text[] = "second";
    deferred_insert(c, 2, text, ERR_OK);
    memcpy(text, "XXXXXX", 6);
    assert_ok(store_commit(c, &e), &e);
    struct store_rows r;
    const struct store_param q[] = {sp_int(2)};
    assert_ok(store_query(c, &SELECT_T, q, 1, &r, &e), &e);
    assert_true(store_next(&r));
    assert_string_equal(store_col_text(&r, 2), "second");
    store_rows_close(&r);

    /* Rolled back: never written. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    deferred_insert(c, 3, "gone", ERR_OK);
    store_rollback(c);
    assert_false(row_exists(c, 3));

    /* A failing deferred write fails its transaction, reported by the next
     * command as the store's error, not as the conflict a caller might
     * handle; nothing of the transaction is written. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    const struct store_param p4[] = {sp_int(4), sp_int(0), sp_text("four")};
    assert_ok(store_exec(c, &INSERT_T, p4, 3, NULL, &e), &e);
    deferred_insert(c, 1, "duplicate", pg ? ERR_OK : ERR_CONFLICT);
    if (pg) {
        assert_int_equal(store_exec(c, &UPDATE_T, q, 1, NULL, &e), ERR_STORE);
        assert_non_null(strstr(e.detail, "deferred write failed"));
    }
    store_rollback(c);
    assert_false(row_exists(c, 4));

    /* The same at COMMIT. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    assert_ok(store_exec(c, &INSERT_T, p4, 3, NULL, &e), &e);
    deferred_insert(c, 1, "duplicate", pg ? ERR_OK : ERR_CONFLICT);
    if (pg)
        assert_int_equal(store_commit(c, &e), ERR_STORE);
    else
        store_rollback(c);
    assert_false(row_exists(c, 4));

    /* More than a transaction holds back at once: sent on their own, in
     * order, all of them kept. */
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    for (int64_t id = 100; id < 200; id++)
        deferred_insert(c, id, "many", ERR_OK);
    assert_ok(store_commit(c, &e), &e);
    assert_int_equal(count_t(c), 102);

    /* Outside a transaction it runs at once. */
    deferred_insert(c, 5, "now", ERR_OK);
    struct store_conn *other = conn(db);
    assert_true(row_exists(other, 5));
    assert_int_equal(count_t(other), 103);
    store_conn_close(other);
    store_conn_close(c);
}

static void
bad_sql_is_a_store_error_not_a_crash(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    struct store_stmt bad = {.sql = "SELEC nonsense"};
    assert_int_equal(store_exec(c, &bad, NULL, 0, NULL, &e), ERR_STORE);
    assert_ok(store_ping(c, &e), &e);
    store_conn_close(c);
}

/* ---- the executor --------------------------------------------------------------- */

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started;
    bool open;
};

static void
gate_init(struct gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->started = g->open = false;
}

static void
gate_set(struct gate *g, bool *flag)
{
    pthread_mutex_lock(&g->mu);
    *flag = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Wait for *flag with a generous deadline (a hang fails instead of blocking CI). */
static void
gate_wait(struct gate *g, bool *flag)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60;
    pthread_mutex_lock(&g->mu);
    while (!*flag) {
        if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) != 0)
            fail_msg("timed out waiting");
    }
    pthread_mutex_unlock(&g->mu);
}

static void
nop_done(void *arg, enum err rc, const struct bb_error *e)
{
    (void)arg;
    (void)rc;
    (void)e;
}

/* A unit that holds the executor until the gate opens. */
static enum err
blocker_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)c;
    (void)e;
    struct gate *g = arg;
    gate_set(g, &g->started);
    gate_wait(g, &g->open);
    return ERR_OK;
}

struct unit {
    int64_t id;
    bool each;       /* store_each_statement_commits first */
    enum err result; /* what the work returns after inserting */
    int retries_left;
    int runs;
    /* filled by done */
    bool done;
    int done_calls;
    enum err rc;
    bool visible_in_done;
    struct test_db *db;
    struct gate *gate;
};

static enum err
unit_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct unit *u = arg;
    u->runs++;
    if (u->each)
        store_each_statement_commits(c);
    const struct store_param p[] = {sp_int(u->id), sp_int(0), sp_text("unit")};
    enum err rc = store_exec(c, &INSERT_T, p, 3, NULL, e);
    if (rc != ERR_OK)
        return rc;
    if (u->retries_left > 0) {
        u->retries_left--;
        return bb_fail(e, ERR_RETRY, "", "try again");
    }
    if (u->result != ERR_OK)
        return bb_fail(e, u->result, "id", "unit %lld refuses", (long long)u->id);
    return ERR_OK;
}

static void
unit_done(void *arg, enum err rc, const struct bb_error *e)
{
    struct unit *u = arg;
    if (rc != ERR_OK)
        assert_non_null(e);
    u->rc = rc;
    u->done_calls++;
    if (rc == ERR_OK) {
        /* Reported only after the commit: another connection already sees it. */
        struct store_conn *c = conn(u->db);
        u->visible_in_done = row_exists(c, u->id);
        store_conn_close(c);
    }
    gate_set(u->gate, &u->done);
}

static double
batch_sum(enum store_engine engine)
{
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    char needle[96];
    snprintf(needle, sizeof needle, "backbone_store_batch_units_sum{engine=\"%s\"} ",
             store_engine_name(engine));
    const char *p = strstr(out.data, needle);
    double v = p ? strtod(p + strlen(needle), NULL) : 0;
    bb_buf_deinit(&out);
    return v;
}

static struct test_db *
single_thread_db(int batch_max, int queue_max)
{
    struct store_options o;
    store_options_defaults(&o, test_engine() == STORE_POSTGRES ? "postgres://" : "sqlite:x");
    o.pool_size = 1;
    o.batch_max = batch_max;
    o.queue_max = queue_max;
    return test_db_create_with(&o);
}

static void
failing_unit_in_a_batch_undoes_only_its_own_changes(void **state)
{
    (void)state;
    struct test_db *db = single_thread_db(16, 1000);
    create_t(db);
    struct gate g;
    gate_init(&g);
    assert_int_equal(store_submit(db->store, STORE_WRITE, blocker_work, nop_done, &g), ERR_OK);
    gate_wait(&g, &g.started);
    double before = batch_sum(test_engine());
    /* The failing one would let each statement commit by itself, were it
     * alone in its transaction: in a batch, its savepoint began it. */
    struct unit units[3] = {
        {.id = 1, .result = ERR_OK},
        {.id = 2, .each = true, .result = ERR_CONFLICT},
        {.id = 3, .result = ERR_OK},
    };
    struct gate done_gates[3];
    for (int i = 0; i < 3; i++) {
        gate_init(&done_gates[i]);
        units[i].db = db;
        units[i].gate = &done_gates[i];
        assert_int_equal(store_submit(db->store, STORE_WRITE, unit_work, unit_done, &units[i]),
                         ERR_OK);
    }
    gate_set(&g, &g.open);
    for (int i = 0; i < 3; i++)
        gate_wait(&done_gates[i], &units[i].done);
    assert_int_equal(units[0].rc, ERR_OK);
    assert_int_equal(units[1].rc, ERR_CONFLICT);
    assert_int_equal(units[2].rc, ERR_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(units[i].done_calls, 1);
    assert_true(units[0].visible_in_done && units[2].visible_in_done);
    /* The three went through one transaction (blocker + 3 units observed). */
    assert_true(batch_sum(test_engine()) - before >= 3);
    struct store_conn *c = conn(db);
    assert_true(row_exists(c, 1));
    assert_false(row_exists(c, 2));
    assert_true(row_exists(c, 3));
    store_conn_close(c);
    test_db_destroy(db);
}

/* A unit whose statements commit each by itself keeps its write when it then
 * fails, on PostgreSQL, where it runs alone in its transaction; on SQLite
 * the failure undoes it as it undoes any unit's (and so it does in a batch:
 * failing_unit_in_a_batch_undoes_only_its_own_changes). */
static void
a_unit_whose_statements_commit_each_keeps_them_when_it_runs_alone(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct bb_error e;
    struct unit alone = {.id = 1, .each = true, .result = ERR_CONFLICT};
    assert_int_equal(store_run(db->store, STORE_WRITE, unit_work, &alone, &e), ERR_CONFLICT);
    struct unit whole = {.id = 2, .result = ERR_CONFLICT};
    assert_int_equal(store_run(db->store, STORE_WRITE, unit_work, &whole, &e), ERR_CONFLICT);
    struct store_conn *c = conn(db);
    assert_int_equal(row_exists(c, 1), test_engine() == STORE_POSTGRES);
    assert_false(row_exists(c, 2));
    store_conn_close(c);
    /* Retried, it runs again from the start: its own write conflicts. */
    struct unit again = {.id = 3, .each = true, .retries_left = 1};
    assert_int_equal(store_run(db->store, STORE_WRITE, unit_work, &again, &e),
                     test_engine() == STORE_POSTGRES ? ERR_CONFLICT : ERR_OK);
    assert_int_equal(again.runs, 2);
}

/* A group's `many`: inserts each unit's row, refusing those whose result
 * says so; fails as a whole when told to (after writing). */
struct group_ctx {
    int calls;
    size_t last_n;
    bool fail_whole;
};

static enum err
group_many(struct store_conn *c, void *const *args, size_t n, enum err *rcs,
           struct bb_error *errors, void *ctx, struct bb_error *e)
{
    struct group_ctx *g = ctx;
    g->calls++;
    g->last_n = n;
    for (size_t i = 0; i < n; i++) {
        struct unit *u = args[i];
        if (u->result != ERR_OK) {
            rcs[i] = bb_fail(&errors[i], u->result, "id", "unit %lld refuses", (long long)u->id);
            continue;
        }
        const struct store_param p[] = {sp_int(u->id), sp_int(0), sp_text("group")};
        enum err rc = store_exec(c, &INSERT_T, p, 3, NULL, e);
        if (rc != ERR_OK)
            return rc;
    }
    return g->fail_whole ? bb_fail(e, ERR_STORE, "", "the whole group fails") : ERR_OK;
}

/* Units of a group queued behind a blocker, among others: one `many` for
 * all of them; then a group whose `many` fails runs each unit alone. */
static void
units_of_a_group_share_one_transaction(void **state)
{
    (void)state;
    struct test_db *db = single_thread_db(1, 1000);
    create_t(db);
    struct group_ctx ctx = {0};
    struct store_group group = {.many = group_many, .ctx = &ctx, .max = 8};
    for (int round = 0; round < 2; round++) {
        ctx.fail_whole = round == 1;
        struct gate g;
        gate_init(&g);
        assert_int_equal(store_submit(db->store, STORE_WRITE, blocker_work, nop_done, &g), ERR_OK);
        gate_wait(&g, &g.started);
        enum { N = 5 };
        struct unit units[N];
        struct gate done_gates[N];
        for (int i = 0; i < N; i++) {
            /* 1, 2 and 4 of the group (3 refuses), 5 a plain unit between */
            units[i] = (struct unit){.id = round * 10 + i + 1,
                                     .result = i == 2 ? ERR_CONFLICT : ERR_OK,
                                     .db = db,
                                     .gate = &done_gates[i]};
            gate_init(&done_gates[i]);
            assert_int_equal(store_submit_grouped(db->store, STORE_WRITE, i == 1 ? NULL : &group,
                                                  unit_work, unit_done, &units[i]),
                             ERR_OK);
        }
        int calls_before = ctx.calls;
        char series[96];
        snprintf(series, sizeof series, "backbone_store_group_fallbacks_total{engine=\"%s\"}",
                 store_engine_name(test_engine()));
        int64_t fallbacks = test_metric(series); /* -1: none yet */
        gate_set(&g, &g.open);
        for (int i = 0; i < N; i++)
            gate_wait(&done_gates[i], &units[i].done);
        assert_int_equal(ctx.calls - calls_before, 1);
        assert_int_equal(ctx.last_n, N - 1);
        int64_t now = test_metric(series);
        assert_int_equal((now < 0 ? 0 : now) - (fallbacks < 0 ? 0 : fallbacks), round);
        struct store_conn *c = conn(db);
        for (int i = 0; i < N; i++) {
            assert_int_equal(units[i].done_calls, 1);
            assert_int_equal(units[i].rc, i == 2 ? ERR_CONFLICT : ERR_OK);
            assert_int_equal(row_exists(c, units[i].id), i != 2);
            /* Its own work ran only when alone: the plain unit, or all of
             * a group that failed as a whole. */
            assert_int_equal(units[i].runs, i == 1 || round == 1 ? 1 : 0);
        }
        store_conn_close(c);
    }
    test_db_destroy(db);
}

static void
transient_conflicts_are_retried_then_succeed(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct gate g;
    gate_init(&g);
    struct unit u = {.id = 7, .retries_left = 2, .db = db, .gate = &g};
    assert_int_equal(store_submit(db->store, STORE_WRITE, unit_work, unit_done, &u), ERR_OK);
    gate_wait(&g, &u.done);
    assert_int_equal(u.rc, ERR_OK);
    assert_int_equal(u.runs, 3);
    assert_int_equal(u.done_calls, 1);
    struct store_conn *c = conn(db);
    assert_int_equal(count_t(c), 1); /* the two failed runs left nothing */
    store_conn_close(c);
}

/* Two units that take two rows in opposite orders, each waiting (on its
 * first run) until the other holds its first row: a real deadlock. */
struct crossing {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    int runs;
};
struct crosser {
    struct test_db *db;
    struct crossing *x;
    int64_t first, second;
    enum err rc;
};

static struct store_stmt UPDATE_ONE = {.sql = "UPDATE t SET n = n + 1 WHERE id = $1"};

static enum err
crossing_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct crosser *w = arg;
    const struct store_param first[] = {sp_int(w->first)}, second[] = {sp_int(w->second)};
    enum err rc = store_exec(c, &UPDATE_ONE, first, 1, NULL, e);
    pthread_mutex_lock(&w->x->mu);
    bool first_run = w->x->runs++ < 2;
    if (first_run && ++w->x->arrived == 2)
        pthread_cond_broadcast(&w->x->cv);
    /* Bounded, so that a store that ran both on one connection fails the
     * test instead of hanging it. */
    for (int64_t until = bb_mono_ms() + 10000;
         first_run && w->x->arrived < 2 && bb_mono_ms() < until;)
        bb_cond_wait_ms(&w->x->cv, &w->x->mu, until - bb_mono_ms());
    pthread_mutex_unlock(&w->x->mu);
    return rc == ERR_OK ? store_exec(c, &UPDATE_ONE, second, 1, NULL, e) : rc;
}

static void *
crosser_main(void *arg)
{
    struct crosser *w = arg;
    struct bb_error e;
    w->rc = store_run(w->db->store, STORE_WRITE, crossing_work, w, &e);
    return NULL;
}

static void
a_real_deadlock_is_retried_and_both_units_commit(void **state)
{
    struct test_db *db = *state;
    if (db->engine != STORE_POSTGRES)
        return; /* SQLite has one writer at a time: no two transactions can cross */
    create_t(db);
    struct store_conn *c = conn(db);
    struct bb_error e;
    for (int64_t id = 1; id <= 2; id++) {
        const struct store_param p[] = {sp_int(id), sp_int(0), sp_text("x")};
        assert_ok(store_exec(c, &INSERT_T, p, 3, NULL, &e), &e);
    }
    int64_t retries = test_metric("backbone_store_conflict_retries_total{engine=\"postgres\"}");
    struct crossing x = {.mu = PTHREAD_MUTEX_INITIALIZER};
    bb_cond_init_mono(&x.cv);
    struct crosser a = {db, &x, 1, 2, ERR_INTERNAL}, b = {db, &x, 2, 1, ERR_INTERNAL};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, crosser_main, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, crosser_main, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    /* PostgreSQL broke the deadlock by failing one; the store ran it again. */
    assert_int_equal(a.rc, ERR_OK);
    assert_int_equal(b.rc, ERR_OK);
    assert_int_equal(x.runs, 3);
    assert_true(test_metric("backbone_store_conflict_retries_total{engine=\"postgres\"}") >
                (retries < 0 ? 0 : retries));
    static struct store_stmt SUM = {.sql = "SELECT SUM(n) FROM t"};
    assert_int_equal(query_int(c, &SUM), 4); /* each unit's two updates, once */
    store_conn_close(c);
    pthread_cond_destroy(&x.cv);
}

struct locked_insert {
    struct test_db *db;
    enum err rc;
};

static enum err
insert_one(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)arg;
    const struct store_param p[] = {sp_int(7), sp_int(0), sp_text("after the lock")};
    return store_exec(c, &INSERT_T, p, 3, NULL, e);
}

static void *
locked_insert_main(void *arg)
{
    struct locked_insert *w = arg;
    struct bb_error e;
    w->rc = store_run(w->db->store, STORE_WRITE, insert_one, NULL, &e);
    return NULL;
}

/* SQLite: another connection to the file (the sqlite3 shell, a backup)
 * holds its write lock past the busy timeout: the unit is retried, not
 * failed, and commits once the lock is let go. */
static void
a_file_another_connection_has_locked_is_retried_until_it_is_free(void **state)
{
    (void)state;
    if (test_engine() != STORE_SQLITE)
        return; /* PostgreSQL's real conflict: a_real_deadlock_is_retried_... */
    struct store_options o;
    store_options_defaults(&o, "sqlite:x");
    o.busy_timeout_ms = 20;
    struct test_db *db = test_db_create_with(&o);
    create_t(db);
    sqlite3 *other;
    assert_int_equal(sqlite3_open(db->url + strlen("sqlite:"), &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    const char *series = "backbone_store_conflict_retries_total{engine=\"sqlite\"}";
    int64_t retries = test_metric(series);
    struct locked_insert w = {db, ERR_INTERNAL};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, locked_insert_main, &w), 0);
    for (int64_t until = bb_mono_ms() + 10000;
         test_metric(series) <= (retries < 0 ? 0 : retries) && bb_mono_ms() < until;)
        bb_sleep_ms(1);
    assert_true(test_metric(series) > (retries < 0 ? 0 : retries)); /* busy, and retried */
    assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    pthread_join(t, NULL);
    assert_int_equal(w.rc, ERR_OK);
    struct store_conn *c = conn(db);
    assert_true(row_exists(c, 7));
    store_conn_close(c);
    sqlite3_close(other);
    test_db_destroy(db);
}

static enum err
failing_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    (void)c;
    (void)arg;
    return bb_fail(e, ERR_NOT_FOUND, "thing", "no thing %d", 42);
}

static void
store_run_returns_the_units_error(void **state)
{
    struct test_db *db = *state;
    struct bb_error e;
    bb_error_clear(&e);
    assert_int_equal(store_run(db->store, STORE_READ, failing_work, NULL, &e), ERR_NOT_FOUND);
    assert_string_equal(e.field, "thing");
    assert_string_equal(e.detail, "no thing 42");
}

static void
full_queue_refuses_new_units(void **state)
{
    (void)state;
    struct test_db *db = single_thread_db(1, 2);
    create_t(db);
    struct gate g;
    gate_init(&g);
    assert_int_equal(store_submit(db->store, STORE_WRITE, blocker_work, nop_done, &g), ERR_OK);
    gate_wait(&g, &g.started);
    struct gate dg[2];
    struct unit u[2] = {{.id = 1}, {.id = 2}};
    for (int i = 0; i < 2; i++) {
        gate_init(&dg[i]);
        u[i].db = db;
        u[i].gate = &dg[i];
        assert_int_equal(store_submit(db->store, STORE_WRITE, unit_work, unit_done, &u[i]), ERR_OK);
    }
    struct unit extra = {.id = 3, .db = db, .gate = &dg[0]};
    assert_int_equal(store_submit(db->store, STORE_WRITE, unit_work, unit_done, &extra),
                     ERR_OVERLOADED);
    gate_set(&g, &g.open);
    for (int i = 0; i < 2; i++)
        gate_wait(&dg[i], &u[i].done);
    assert_int_equal(extra.runs, 0);
    test_db_destroy(db);
}

/* ---- notifications ------------------------------------------------------------------- */

struct inbox {
    struct gate g;
    char got[8][64];
    int n;
    bool arrived;
};

static void
on_note(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct inbox *in = arg;
    if (payload == NULL)
        return; /* a resync hint, not a message */
    pthread_mutex_lock(&in->g.mu);
    if (in->n < 8)
        bb_strlcpy(in->got[in->n++], payload, sizeof in->got[0]);
    in->arrived = true;
    pthread_cond_broadcast(&in->g.cv);
    pthread_mutex_unlock(&in->g.mu);
}

struct note_unit {
    const char *channel;
    const char *payload;
    bool fail;
    bool each; /* store_each_statement_commits first, and write a row */
};

static enum err
notify_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct note_unit *u = arg;
    enum err rc = ERR_OK;
    if (u->each) {
        store_each_statement_commits(c);
        rc = store_exec(c, &UPDATE_T, (const struct store_param[]){sp_int(1)}, 1, NULL, e);
    }
    if (rc == ERR_OK)
        rc = store_notify(c, u->channel, u->payload, e);
    if (rc == ERR_OK && u->fail)
        rc = bb_fail(e, ERR_CONFLICT, "", "changed my mind");
    return rc;
}

/* Send a failing and a succeeding unit's notification, in turn, until one
 * arrives (the LISTEN connection may still be starting); only the second's
 * ever does. */
static void
notify_until_one_arrives(struct test_db *db, const char *channel, bool each)
{
    struct inbox in;
    memset(&in, 0, sizeof in);
    gate_init(&in.g);
    assert_int_equal(store_listen(db->store, channel, on_note, &in), ERR_OK);
    struct bb_error e;
    struct note_unit bad = {channel, "rolled-back", true, each};
    struct note_unit good = {channel, "committed", false, each};
    for (int i = 0; i < 600; i++) {
        assert_int_equal(store_run(db->store, STORE_WRITE, notify_work, &bad, &e), ERR_CONFLICT);
        assert_ok(store_run(db->store, STORE_WRITE, notify_work, &good, &e), &e);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&in.g.mu);
        while (!in.arrived && pthread_cond_timedwait(&in.g.cv, &in.g.mu, &ts) == 0) {
        }
        bool arrived = in.arrived;
        pthread_mutex_unlock(&in.g.mu);
        if (arrived)
            break;
    }
    store_unlisten(db->store, on_note, &in);
    assert_true(in.n >= 1);
    for (int i = 0; i < in.n; i++)
        assert_string_equal(in.got[i], "committed");
}

static void
notifications_arrive_after_commit_and_never_after_rollback(void **state)
{
    (void)state;
    struct test_db *db = single_thread_db(1, 100);
    create_t(db);
    char channel[64];
    snprintf(channel, sizeof channel, "t_note_%d", (int)getpid());
    notify_until_one_arrives(db, channel, false);
    /* From a unit whose statements commit each by itself (on PostgreSQL
     * they go after its write, in a transaction of their own). */
    notify_until_one_arrives(db, channel, true);
    test_db_destroy(db);
}

/* ---- migrations ------------------------------------------------------------------------ */

static struct store_stmt M2_FILL = {.sql = "INSERT INTO m2 (x) VALUES (7)"};
static struct store_stmt M2_COUNT = {.sql = "SELECT COUNT(*) FROM m2"};

/* A data step: runs once, after its step's SQL. */
static enum err
fill_m2(struct store_conn *c, struct bb_error *e)
{
    return store_exec(c, &M2_FILL, NULL, 0, NULL, e);
}

static enum err
refuse(struct store_conn *c, struct bb_error *e)
{
    (void)c;
    return bb_fail(e, ERR_STORE, "db", "the data step failed");
}

static const struct store_migration M[] = {
    {1, "one", "CREATE TABLE m1 (x INTEGER)", "CREATE TABLE m1 (x INTEGER)", NULL},
    {2, "two", "CREATE TABLE m2 (x INTEGER)", "CREATE TABLE m2 (x INTEGER)", fill_m2},
    {3, "broken", "CREATE TABLE m3 (x INTEGER); SELEC oops",
     "CREATE TABLE m3 (x INTEGER); SELEC oops", NULL},
};
static const struct store_migration M_DATA_FAILS[] = {
    {1, "one", "CREATE TABLE d1 (x INTEGER)", "CREATE TABLE d1 (x INTEGER)", refuse},
};

static int64_t
count_m2(struct store_conn *c)
{
    struct store_rows r;
    struct bb_error e;
    assert_ok(store_query(c, &M2_COUNT, NULL, 0, &r, &e), &e);
    assert_true(store_next(&r));
    int64_t n = store_col_int(&r, 0);
    store_rows_close(&r);
    return n;
}

static void
migrations_apply_once(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    int applied = -1;
    assert_ok(store_migrate(c, "demo", M, 2, &applied, &e), &e);
    assert_int_equal(applied, 2);
    assert_ok(store_migrate(c, "demo", M, 2, &applied, &e), &e);
    assert_int_equal(applied, 0);
    struct store_stmt q = {.sql = "SELECT COUNT(*) FROM m1"};
    assert_ok(store_exec(c, &q, NULL, 0, NULL, &e), &e);
    assert_int_equal(count_m2(c), 1);
    store_conn_close(c);
}

static void
failed_migration_leaves_no_trace(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    int applied;
    assert_int_not_equal(store_migrate(c, "demo", M, 3, &applied, &e), ERR_OK);
    /* Steps 1 and 2 stay; step 3's table does not exist; running the two good
     * steps again finds nothing to do. */
    struct store_stmt q = {.sql = "SELECT COUNT(*) FROM m3"};
    assert_int_equal(store_exec(c, &q, NULL, 0, NULL, &e), ERR_STORE);
    assert_ok(store_migrate(c, "demo", M, 2, &applied, &e), &e);
    assert_int_equal(applied, 0);
    /* A failing data step takes its step's SQL back with it. */
    assert_int_equal(store_migrate(c, "data", M_DATA_FAILS, 1, &applied, &e), ERR_STORE);
    assert_non_null(strstr(e.detail, "the data step failed"));
    struct store_stmt d = {.sql = "SELECT COUNT(*) FROM d1"};
    assert_int_equal(store_exec(c, &d, NULL, 0, NULL, &e), ERR_STORE);
    store_conn_close(c);
}

static void
a_newer_schema_is_refused(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    struct bb_error e;
    assert_ok(store_migrate(c, "demo", M, 2, NULL, &e), &e);
    assert_int_equal(store_migrate(c, "demo", M, 1, NULL, &e), ERR_STORE);
    assert_non_null(strstr(e.detail, "newer than this binary"));
    store_conn_close(c);
}

/* ---- opening ------------------------------------------------------------------------------ */

static void
bad_urls_are_refused_clearly(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        enum err code;
    } cases[] = {
        {"", ERR_INVALID},
        {"mysql://x", ERR_INVALID},
        {"sqlite:", ERR_INVALID},
        {"sqlite:/nonexistent-dir/x/y.db", ERR_UNAVAILABLE},
        {"postgres://postgres@127.0.0.1:1/none?connect_timeout=2", ERR_UNAVAILABLE},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        struct store_options o;
        store_options_defaults(&o, cases[i].url);
        struct store *s = NULL;
        struct bb_error e;
        bb_error_clear(&e);
        assert_int_equal(store_open(&o, &s, &e), cases[i].code);
        assert_null(s);
        assert_true(e.detail[0] != '\0');
    }
}

static void
sqlite_file_has_one_owning_process(void **state)
{
    struct test_db *db = *state;
    if (db->engine != STORE_SQLITE)
        return; /* PostgreSQL is shared by design */
    struct store_options o;
    store_options_defaults(&o, db->url);
    o.exclusive = true;
    struct store *first, *second = NULL;
    struct bb_error e;
    assert_ok(store_open(&o, &first, &e), &e);
    assert_int_equal(store_open(&o, &second, &e), ERR_UNAVAILABLE);
    assert_non_null(strstr(e.detail, "in use by another backbone process"));
    store_close(first);
    assert_ok(store_open(&o, &second, &e), &e); /* released with the first */
    store_close(second);
}

/* ---- PostgreSQL plans ---------------------------------------------------------- */

static struct store_stmt CREATE_PLANNED = {
    .sql = "CREATE TABLE planned (id BIGINT PRIMARY KEY, n BIGINT)"
           " WITH (autovacuum_enabled = false)", /* no ANALYZE replans behind the test */
};
static struct store_stmt DROP_PLANNED = {.sql = "DROP TABLE IF EXISTS planned"};
static struct store_stmt GROW_PLANNED = {
    .sql = "INSERT INTO planned (id, n) SELECT g, 0 FROM generate_series(1, $1::bigint) g",
};
/* A batch's update by key, as the services write them. */
static struct store_stmt TOUCH_PLANNED = {
    .sql = "UPDATE planned SET n = n + 1 FROM json_to_recordset($1::json) AS x(id bigint)"
           " WHERE planned.id = x.id",
};
static struct store_stmt ROWS_READ_PLANNED = {
    .sql = "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
           " WHERE relid = 'planned'::regclass",
};

/* Rows of `planned` the update of one of them read. */
static int64_t
touch_planned(struct store_conn *c)
{
    struct bb_error e;
    const struct store_param p[] = {sp_text("[{\"id\":7}]")};
    assert_ok(store_begin(c, STORE_WRITE, &e), &e);
    /* This backend's statistics not yet sent: a count that only grows
     * within a transaction. */
    int64_t before = query_int(c, &ROWS_READ_PLANNED);
    assert_ok(store_exec(c, &TOUCH_PLANNED, p, 1, NULL, &e), &e);
    int64_t read = query_int(c, &ROWS_READ_PLANNED) - before;
    assert_ok(store_commit(c, &e), &e);
    return read;
}

static struct store_conn *
conn_replanning_after(const struct test_db *db, int64_t first_ms, struct store **s)
{
    struct store_options o;
    store_options_defaults(&o, db->url);
    o.pool_size = 1;
    o.replan_first_ms = first_ms;
    struct bb_error e;
    assert_ok(store_open(&o, s, &e), &e);
    struct store_conn *c;
    assert_ok(store_conn_open(*s, &c, &e), &e);
    return c;
}

/*
 * One round on a fresh table: both connections settle on a generic plan
 * while it is empty, then it grows. False when the stale connection's plan
 * did not survive: PostgreSQL drops every cached plan of every backend of
 * a database when a schema is created in it (each test's private schema),
 * so this test runs alone (RUN_SERIAL in tests/CMakeLists.txt), and a
 * round that lost its plan anyway proves nothing.
 */
static bool
planned_round(struct store_conn *c, struct store_conn *stale, struct store_conn *fresh)
{
    struct bb_error e;
    assert_ok(store_exec(c, &DROP_PLANNED, NULL, 0, NULL, &e), &e);
    assert_ok(store_exec(c, &CREATE_PLANNED, NULL, 0, NULL, &e), &e);
    for (int i = 0; i < 8; i++) { /* PostgreSQL settles on a generic plan after 5 */
        touch_planned(stale);
        touch_planned(fresh);
    }
    enum { ROWS = 200000 }; /* big enough that 100 lookups by key beat a scan */
    const struct store_param grow[] = {sp_int(ROWS)};
    assert_ok(store_exec(c, &GROW_PLANNED, grow, 1, NULL, &e), &e);
    /* The plan made on the empty table reads the whole table... */
    if (touch_planned(stale) < ROWS)
        return false;
    /* ... until the connection drops it and plans for the table as it is. */
    int64_t deadline = bb_mono_ms() + 30000;
    int64_t read = touch_planned(fresh);
    while (read >= ROWS && bb_mono_ms() < deadline)
        read = touch_planned(fresh);
    assert_true(read < 10);
    return true;
}

static void
plans_made_on_an_empty_table_do_not_outlive_its_growth(void **state)
{
    struct test_db *db = *state;
    if (db->engine != STORE_POSTGRES)
        return; /* SQLite plans each statement once, by indexes, not by table size */
    struct store_conn *c = conn(db);
    struct store *stale_store, *fresh_store;
    struct store_conn *stale = conn_replanning_after(db, 3600000, &stale_store);
    struct store_conn *fresh = conn_replanning_after(db, 1, &fresh_store);
    bool proved = false;
    for (int round = 0; round < 5 && !proved; round++)
        proved = planned_round(c, stale, fresh);
    assert_true(proved);
    store_conn_close(stale);
    store_conn_close(fresh);
    store_close(stale_store);
    store_close(fresh_store);
    store_conn_close(c);
}

/* ---- durability ----------------------------------------------------------------- */

static struct store_stmt SQLITE_JOURNAL = {.sql = "PRAGMA journal_mode"};
static struct store_stmt SQLITE_SYNC = {.sql = "PRAGMA synchronous"};
static struct store_stmt PG_SYNC = {.sql = "SHOW synchronous_commit"};

/* The one text `st` answers on `c`. */
static void
assert_answers(struct store_conn *c, struct store_stmt *st, const char *want)
{
    struct store_rows r;
    struct bb_error e;
    assert_ok(store_query(c, st, NULL, 0, &r, &e), &e);
    assert_true(store_next(&r));
    assert_string_equal(store_col_text(&r, 0), want);
    store_rows_close(&r);
}

/* Every commit is on disk before the unit hears of it: SQLite in WAL mode
 * with synchronous=FULL; PostgreSQL with synchronous_commit on, even for a
 * session whose settings (here the URL's) turned it off. */
static void
every_commit_is_on_disk_before_it_is_answered(void **state)
{
    struct test_db *db = *state;
    struct store_conn *c = conn(db);
    if (db->engine == STORE_SQLITE) {
        assert_answers(c, &SQLITE_JOURNAL, "wal");
        assert_answers(c, &SQLITE_SYNC, "2"); /* FULL */
        store_conn_close(c);
        return;
    }
    assert_answers(c, &PG_SYNC, "on");
    store_conn_close(c);
    char url[1200];
    snprintf(url, sizeof url, "%s%%20-csynchronous_commit%%3Doff", db->url);
    struct store_options o;
    store_options_defaults(&o, url);
    o.pool_size = 1;
    struct store *s;
    struct bb_error e;
    assert_ok(store_open(&o, &s, &e), &e);
    assert_ok(store_conn_open(s, &c, &e), &e);
    assert_answers(c, &PG_SYNC, "on");
    store_conn_close(c);
    store_close(s);
}

/* ---- fault points (STYLE.md section 9) ------------------------------------------ */

struct fault_unit {
    int64_t id;
    struct after_log *log;
};

/* Insert row `id`, and hear the transaction's fate. */
static enum err
insert_heard(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct fault_unit *u = arg;
    store_after_commit(c, after_logged, u->log);
    const struct store_param p[] = {sp_int(u->id), sp_int(0), sp_text("fault")};
    return store_exec(c, &INSERT_T, p, 3, NULL, e);
}

static void
a_failed_commit_writes_nothing_and_a_lost_answer_hides_a_commit(void **state)
{
    struct test_db *db = *state;
    create_t(db);
    struct bb_error e;
    struct after_log log = {0};
    struct fault_unit u1 = {.id = 1, .log = &log}, u2 = {.id = 2, .log = &log};
    /* The commit fails: nothing written, the unit and its hooks told so. */
    assert_ok(bb_faults_arm("store.commit=1", 1, &e), &e);
    assert_int_equal(store_run(db->store, STORE_WRITE, insert_heard, &u1, &e), ERR_UNAVAILABLE);
    assert_non_null(strstr(e.detail, "injected fault"));
    assert_int_equal(e.code, ERR_UNAVAILABLE); /* what an HTTP answer goes by: 503 */
    assert_int_equal(bb_faults_injected("store.commit"), 1);
    struct store_conn *c = conn(db);
    assert_false(row_exists(c, 1));
    /* The next commit (the fault fired once) goes through. */
    assert_ok(store_run(db->store, STORE_WRITE, insert_heard, &u1, &e), &e);
    assert_true(row_exists(c, 1));
    /* The answer is lost: the row is there, though the unit heard of a
     * failure (as when a connection drops after COMMIT was sent). */
    assert_ok(bb_faults_arm("store.commit_lost=1", 1, &e), &e);
    assert_int_equal(store_run(db->store, STORE_WRITE, insert_heard, &u2, &e), ERR_UNAVAILABLE);
    assert_true(row_exists(c, 2));
    assert_int_equal(count_t(c), 2);
    bb_faults_disarm();
    assert_int_equal(log.n, 3);
    assert_int_equal(log.calls[0], -1);
    assert_int_equal(log.calls[1], 1);
    assert_int_equal(log.calls[2], -1);
    store_conn_close(c);
}

/* A statement failing in a group's shared transaction: the group rolls
 * back and each unit runs alone, so every unit's row is written once. */
static void
a_failed_statement_in_a_group_loses_no_unit(void **state)
{
    (void)state;
    struct test_db *db = single_thread_db(1, 1000);
    create_t(db);
    struct group_ctx ctx = {0};
    struct store_group group = {.many = group_many, .ctx = &ctx, .max = 8};
    struct gate g;
    gate_init(&g);
    assert_int_equal(store_submit(db->store, STORE_WRITE, blocker_work, nop_done, &g), ERR_OK);
    gate_wait(&g, &g.started);
    enum { N = 4 };
    struct unit units[N];
    struct gate done_gates[N];
    for (int i = 0; i < N; i++) {
        units[i] = (struct unit){.id = i + 1, .db = db, .gate = &done_gates[i]};
        gate_init(&done_gates[i]);
        assert_int_equal(
            store_submit_grouped(db->store, STORE_WRITE, &group, unit_work, unit_done, &units[i]),
            ERR_OK);
    }
    struct bb_error e;
    assert_ok(bb_faults_arm("store.statement=2", 1, &e), &e); /* the group's second insert */
    gate_set(&g, &g.open);
    for (int i = 0; i < N; i++)
        gate_wait(&done_gates[i], &units[i].done);
    assert_int_equal(bb_faults_injected("store.statement"), 1);
    bb_faults_disarm();
    assert_int_equal(ctx.calls, 1);
    struct store_conn *c = conn(db);
    for (int i = 0; i < N; i++) {
        assert_int_equal(units[i].rc, ERR_OK);
        assert_int_equal(units[i].runs, 1); /* alone, after the group failed */
        assert_true(row_exists(c, units[i].id));
    }
    assert_int_equal(count_t(c), N);
    store_conn_close(c);
    test_db_destroy(db);
}

#define DB_TEST(name) cmocka_unit_test_setup_teardown(name, test_db_setup, test_db_teardown)

static const struct CMUnitTest tests[] = {
    DB_TEST(parameters_round_trip_exactly),
    DB_TEST(text_parameters_with_length_need_no_terminator),
    DB_TEST(batches_carry_every_value_exactly),
    DB_TEST(exec_reports_rows_changed),
    DB_TEST(unique_violation_is_a_conflict),
    DB_TEST(rollback_discards_and_commit_keeps),
    DB_TEST(deferred_writes_commit_roll_back_and_fail_with_their_transaction),
    DB_TEST(after_commit_callbacks_follow_the_transactions_fate),
    DB_TEST(counts_land_at_commit_and_never_after_rollback),

    DB_TEST(bad_sql_is_a_store_error_not_a_crash),
    cmocka_unit_test(failing_unit_in_a_batch_undoes_only_its_own_changes),
    DB_TEST(a_unit_whose_statements_commit_each_keeps_them_when_it_runs_alone),
    cmocka_unit_test(units_of_a_group_share_one_transaction),
    DB_TEST(transient_conflicts_are_retried_then_succeed),
    DB_TEST(a_real_deadlock_is_retried_and_both_units_commit),
    cmocka_unit_test(a_file_another_connection_has_locked_is_retried_until_it_is_free),
    DB_TEST(store_run_returns_the_units_error),
    cmocka_unit_test(full_queue_refuses_new_units),
    cmocka_unit_test(notifications_arrive_after_commit_and_never_after_rollback),
    DB_TEST(migrations_apply_once),
    DB_TEST(failed_migration_leaves_no_trace),
    DB_TEST(a_newer_schema_is_refused),
    cmocka_unit_test(bad_urls_are_refused_clearly),
    DB_TEST(sqlite_file_has_one_owning_process),
    DB_TEST(plans_made_on_an_empty_table_do_not_outlive_its_growth),
    DB_TEST(every_commit_is_on_disk_before_it_is_answered),
    DB_TEST(a_failed_commit_writes_nothing_and_a_lost_answer_hides_a_commit),
    cmocka_unit_test(a_failed_statement_in_a_group_loses_no_unit),
};

TEST_MAIN(tests, true)
