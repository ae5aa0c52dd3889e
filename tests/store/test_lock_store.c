/*
 * test_lock_store.c: locks and fences in the database, on both engines, with
 * an injected clock (`now`), plus mutual exclusion under real concurrency
 * through the store executor.
 */
#include "testsupport.h"

#include "locks/locks_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const int64_t T0 = 1700000000000; /* fake wall clock, ms */

static struct lock_grant
acquire_ok(struct store_conn *c, const char *name, const char *owner, int64_t ttl, int64_t now,
           enum lock_outcome expect)
{
    struct lock_grant g;
    enum lock_outcome how;
    struct bb_error e;
    assert_ok(lock_acquire(c, name, owner, ttl, now, 0, &g, &how, &e), &e);
    assert_int_equal(how, expect);
    assert_string_equal(g.owner, owner);
    assert_int_equal(g.expires_at_ms, now + ttl);
    return g;
}

static void
tokens_strictly_increase_across_grants_and_takeovers(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant g1 = acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    assert_int_equal(g1.token, 1);
    assert_int_equal(g1.epoch, 1);
    assert_ok(lock_release(f->c, "L", g1.token, T0 + 10, &e), &e);
    struct lock_grant g2 = acquire_ok(f->c, "L", "w2", 1000, T0 + 20, LOCK_GRANTED);
    assert_int_equal(g2.token, 2);
    assert_int_equal(g2.epoch, 1);
    /* w2 vanishes; at its expiry instant w3 takes over: epoch and token move. */
    struct lock_grant g3 = acquire_ok(f->c, "L", "w3", 1000, T0 + 1020, LOCK_TAKEOVER);
    assert_int_equal(g3.token, 3);
    assert_int_equal(g3.epoch, 2);
    /* Its former owner coming back after expiry also gets a new token. */
    struct lock_grant g4 = acquire_ok(f->c, "L", "w3", 1000, T0 + 5000, LOCK_TAKEOVER);
    assert_int_equal(g4.token, 4);
    assert_int_equal(g4.epoch, 3);
}

static void
reacquire_by_the_holder_keeps_its_token_and_extends(void **state)
{
    struct test_conn *f = *state;
    struct lock_grant g1 = acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    struct lock_grant g2 = acquire_ok(f->c, "L", "w1", 5000, T0 + 500, LOCK_REENTERED);
    assert_int_equal(g2.token, g1.token);
    assert_int_equal(g2.epoch, g1.epoch);
    assert_int_equal(g2.acquired_at_ms, T0);
}

static void
acquire_while_held_names_the_holder_but_not_its_token(void **state)
{
    struct test_conn *f = *state;
    acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    struct lock_grant g;
    enum lock_outcome how;
    struct bb_error e;
    assert_int_equal(lock_acquire(f->c, "L", "w2", 1000, T0 + 999, 0, &g, &how, &e), ERR_LOCK_HELD);
    assert_string_equal(g.owner, "w1");
    assert_int_equal(g.expires_at_ms, T0 + 1000);
    assert_int_equal(g.token, 0);
}

static void
renew_extends_and_refuses_stale_or_expired_tokens(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant g = acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    struct lock_grant r;
    assert_ok(lock_renew(f->c, "L", g.token, 3000, T0 + 900, &r, &e), &e);
    assert_int_equal(r.expires_at_ms, T0 + 3900);
    assert_int_equal(r.token, g.token);
    assert_int_equal(lock_renew(f->c, "L", g.token + 1, 3000, T0 + 1000, &r, &e), ERR_STALE_TOKEN);
    assert_string_equal(e.field, "token");
    assert_int_equal(lock_renew(f->c, "L", g.token, 3000, T0 + 3900, &r, &e), ERR_LOCK_EXPIRED);
    assert_int_equal(lock_renew(f->c, "never", 1, 3000, T0, &r, &e), ERR_NOT_HELD);
    /* After a takeover the old holder is told its token is stale. */
    acquire_ok(f->c, "L", "w2", 1000, T0 + 4000, LOCK_TAKEOVER);
    assert_int_equal(lock_renew(f->c, "L", g.token, 3000, T0 + 4001, &r, &e), ERR_STALE_TOKEN);
    assert_int_equal(lock_release(f->c, "L", g.token, T0 + 4001, &e), ERR_STALE_TOKEN);
}

static void
a_token_above_the_current_one_was_never_granted(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant g = acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    struct lock_grant r;
    /* Above the current token: no grant of this lock ever carried it. */
    assert_int_equal(lock_renew(f->c, "L", g.token + 1, 3000, T0 + 1, &r, &e), ERR_STALE_TOKEN);
    assert_string_equal(e.field, "token");
    assert_non_null(strstr(e.detail, "was never granted for lock L"));
    assert_null(strstr(e.detail, "newer grant"));
    assert_int_equal(lock_release(f->c, "L", g.token + 5, T0 + 1, &e), ERR_STALE_TOKEN);
    assert_non_null(strstr(e.detail, "was never granted for lock L"));
    /* Released, the lock keeps its token: still never granted. */
    assert_ok(lock_release(f->c, "L", g.token, T0 + 2, &e), &e);
    assert_int_equal(lock_release(f->c, "L", g.token + 1, T0 + 3, &e), ERR_STALE_TOKEN);
    assert_non_null(strstr(e.detail, "was never granted for lock L"));
    /* Below it, after a new grant: superseded, which is what a newer grant
     * means. */
    struct lock_grant g2 = acquire_ok(f->c, "L", "w2", 1000, T0 + 4, LOCK_GRANTED);
    assert_true(g2.token > g.token);
    assert_int_equal(lock_renew(f->c, "L", g.token, 3000, T0 + 5, &r, &e), ERR_STALE_TOKEN);
    assert_non_null(strstr(e.detail, "a newer grant exists"));
    assert_int_equal(lock_release(f->c, "L", g.token, T0 + 5, &e), ERR_STALE_TOKEN);
    assert_non_null(strstr(e.detail, "a newer grant exists"));
}

static void
release_is_idempotent_and_frees_the_lock(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant g = acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    assert_ok(lock_release(f->c, "L", g.token, T0 + 1, &e), &e);
    assert_ok(lock_release(f->c, "L", g.token, T0 + 2, &e), &e);
    struct lock_grant got;
    assert_int_equal(lock_get(f->c, "L", T0 + 3, &got, &e), ERR_NOT_FOUND);
    assert_non_null(strstr(e.detail, "released"));
    assert_int_equal(lock_get(f->c, "other", T0 + 3, &got, &e), ERR_NOT_FOUND);
    assert_non_null(strstr(e.detail, "never acquired"));
    assert_int_equal(lock_release(f->c, "other", 1, T0, &e), ERR_NOT_HELD);
}

static void
get_reports_a_held_lock_and_forgets_an_expired_one(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    acquire_ok(f->c, "L", "w1", 1000, T0, LOCK_GRANTED);
    struct lock_grant got;
    assert_ok(lock_get(f->c, "L", T0 + 999, &got, &e), &e);
    assert_string_equal(got.owner, "w1");
    assert_int_equal(got.token, 0);
    assert_int_equal(lock_get(f->c, "L", T0 + 1000, &got, &e), ERR_NOT_FOUND);
    assert_non_null(strstr(e.detail, "ran out"));
}

struct names {
    char list[8][LOCK_NAME_MAX + 1];
    int n;
};

static void
collect(void *arg, const struct lock_grant *g)
{
    struct names *n = arg;
    bb_strlcpy(n->list[n->n++], g->name, sizeof n->list[0]);
}

static void
list_shows_held_locks_in_name_order_with_paging(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    acquire_ok(f->c, "c", "w", 1000, T0, LOCK_GRANTED);
    acquire_ok(f->c, "a", "w", 1000, T0, LOCK_GRANTED);
    acquire_ok(f->c, "b", "w", 10, T0, LOCK_GRANTED); /* expired by T0 + 10 */
    struct lock_grant d = acquire_ok(f->c, "d", "w", 1000, T0, LOCK_GRANTED);
    assert_ok(lock_release(f->c, "d", d.token, T0, &e), &e);
    acquire_ok(f->c, "e", "w", 1000, T0, LOCK_GRANTED);
    struct names page = {0};
    assert_ok(lock_list(f->c, T0 + 10, NULL, 2, collect, &page, &e), &e);
    assert_int_equal(page.n, 2);
    assert_string_equal(page.list[0], "a");
    assert_string_equal(page.list[1], "c");
    struct names rest = {0};
    assert_ok(lock_list(f->c, T0 + 10, "c", 2, collect, &rest, &e), &e);
    assert_int_equal(rest.n, 1);
    assert_string_equal(rest.list[0], "e");
    int64_t held;
    assert_ok(lock_count_held(f->c, T0 + 10, &held, &e), &e);
    assert_int_equal(held, 3);
}

static void
fence_accepts_equal_or_newer_tokens_and_refuses_older(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    assert_ok(lock_fenced_put(f->c, "k", 5, "{\"v\":1}", T0, &e), &e);
    assert_ok(lock_fenced_put(f->c, "k", 5, "{\"v\":2}", T0, &e), &e);
    assert_int_equal(lock_fenced_put(f->c, "k", 4, "{\"v\":3}", T0, &e), ERR_STALE_TOKEN);
    assert_non_null(strstr(e.detail, "older than token 5"));
    char *value;
    int64_t token;
    assert_ok(lock_fenced_get(f->c, "k", &value, &token, &e), &e);
    assert_string_equal(value, "{\"v\":2}");
    assert_int_equal(token, 5);
    free(value);
    /* The bare check other modules use keeps the stored value. */
    assert_ok(lock_fence_check(f->c, "k", 9, T0, &e), &e);
    assert_int_equal(lock_fence_check(f->c, "k", 8, T0, &e), ERR_STALE_TOKEN);
    assert_ok(lock_fenced_get(f->c, "k", &value, &token, &e), &e);
    assert_string_equal(value, "{\"v\":2}");
    assert_int_equal(token, 9);
    free(value);
    assert_ok(lock_fence_check(f->c, "fresh", 1, T0, &e), &e);
    assert_ok(lock_fenced_get(f->c, "fresh", &value, &token, &e), &e);
    assert_null(value);
    assert_int_equal(lock_fenced_get(f->c, "none", &value, &token, &e), ERR_NOT_FOUND);
}

/* ---- the SQL against the decision table -------------------------------------------------- */

static struct lock_row
read_row(struct store_conn *c, const char *name)
{
    static struct store_stmt select = {
        .sql = "SELECT owner, token, epoch, expires_at_ms FROM locks WHERE name = $1"};
    struct lock_row row;
    memset(&row, 0, sizeof row);
    struct store_rows r;
    struct bb_error e;
    const struct store_param p[] = {sp_text(name)};
    assert_ok(store_query(c, &select, p, 1, &r, &e), &e);
    if (store_next(&r)) {
        row.exists = true;
        row.has_owner = !store_col_is_null(&r, 0);
        bb_strlcpy(row.owner, store_col_text(&r, 0), sizeof row.owner);
        row.token = store_col_int(&r, 1);
        row.epoch = store_col_int(&r, 2);
        row.expires_at_ms = store_col_int(&r, 3);
    }
    store_rows_close(&r);
    return row;
}

static void
acquire_statement_agrees_with_the_decision_table(void **state)
{
    struct test_conn *f = *state;
    /* Each scenario leaves lock `name` in some state by T0 + 500, then w1
     * acquires at T0 + 500. */
    static const struct {
        const char *name;
        const char *setup_owner; /* NULL: never held */
        int64_t setup_ttl;
        bool release;
    } scenarios[] = {
        {"never", NULL, 0, false},          {"released", "w2", 1000, true},
        {"held-by-me", "w1", 1000, false},  {"held-by-other", "w2", 1000, false},
        {"expired-mine", "w1", 100, false}, {"expired-other", "w2", 100, false},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(scenarios); i++) {
        struct bb_error e;
        const char *name = scenarios[i].name;
        if (scenarios[i].setup_owner) {
            struct lock_grant g;
            enum lock_outcome how;
            assert_ok(lock_acquire(f->c, name, scenarios[i].setup_owner, scenarios[i].setup_ttl, T0,
                                   0, &g, &how, &e),
                      &e);
            if (scenarios[i].release)
                assert_ok(lock_release(f->c, name, g.token, T0, &e), &e);
        }
        int64_t now = T0 + 500;
        struct lock_row before = read_row(f->c, name);
        enum locks__decision want = locks__decide_acquire(&before, "w1", now);
        struct lock_grant g;
        enum lock_outcome how;
        enum err rc = lock_acquire(f->c, name, "w1", 1000, now, 0, &g, &how, &e);
        struct lock_row after = read_row(f->c, name);
        switch (want) {
        case LOCKS__INSERT:
        case LOCKS__GRANT:
            assert_int_equal(rc, ERR_OK);
            assert_int_equal(how, LOCK_GRANTED);
            assert_int_equal(g.token, before.token + 1);
            assert_int_equal(g.epoch, before.exists ? before.epoch : 1);
            break;
        case LOCKS__REENTER:
            assert_int_equal(rc, ERR_OK);
            assert_int_equal(how, LOCK_REENTERED);
            assert_int_equal(g.token, before.token);
            assert_int_equal(g.epoch, before.epoch);
            break;
        case LOCKS__TAKEOVER:
            assert_int_equal(rc, ERR_OK);
            assert_int_equal(how, LOCK_TAKEOVER);
            assert_int_equal(g.token, before.token + 1);
            assert_int_equal(g.epoch, before.epoch + 1);
            break;
        case LOCKS__DENY:
            assert_int_equal(rc, ERR_LOCK_HELD);
            assert_memory_equal(&after, &before, sizeof after); /* nothing written */
            continue;
        }
        assert_string_equal(after.owner, "w1");
        assert_int_equal(after.token, g.token);
        assert_int_equal(after.expires_at_ms, now + 1000);
    }
}

/* ---- mutual exclusion under real concurrency ------------------------------------------ */

enum { THREADS = 6, ROUNDS = 40 };

struct race {
    struct store *store;
    _Atomic int holders; /* how many think they hold the lock right now */
    _Atomic int overlaps;
    _Atomic int failures; /* cmocka's asserts may not run on these threads */
    pthread_mutex_t mu;
    int64_t tokens[THREADS * ROUNDS];
    int n_tokens;
};

struct race_op {
    struct race *race;
    char owner[16];
    struct lock_grant grant;
    enum lock_outcome how;
};

static enum err
race_acquire(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct race_op *op = arg;
    return lock_acquire(c, "hot", op->owner, 60000, bb_wall_ms(), 0, &op->grant, &op->how, e);
}

static enum err
race_release(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct race_op *op = arg;
    return lock_release(c, "hot", op->grant.token, bb_wall_ms(), e);
}

static void *
racer(void *arg)
{
    struct race_op *op = arg;
    struct race *r = op->race;
    for (int round = 0; round < ROUNDS; round++) {
        struct bb_error e;
        enum err rc;
        while ((rc = store_run(r->store, STORE_WRITE, race_acquire, op, &e)) == ERR_LOCK_HELD) {
        }
        if (rc != ERR_OK) {
            fprintf(stderr, "acquire: %s\n", e.detail);
            atomic_fetch_add(&r->failures, 1);
            return NULL;
        }
        if (atomic_fetch_add(&r->holders, 1) != 0)
            atomic_fetch_add(&r->overlaps, 1);
        pthread_mutex_lock(&r->mu);
        r->tokens[r->n_tokens++] = op->grant.token;
        pthread_mutex_unlock(&r->mu);
        atomic_fetch_sub(&r->holders, 1);
        if (store_run(r->store, STORE_WRITE, race_release, op, &e) != ERR_OK) {
            fprintf(stderr, "release: %s\n", e.detail);
            atomic_fetch_add(&r->failures, 1);
            return NULL;
        }
    }
    return NULL;
}

static void
concurrent_acquirers_never_overlap_and_tokens_follow_grants(void **state)
{
    struct test_conn *f = *state;
    struct race r = {.store = f->db->store};
    pthread_mutex_init(&r.mu, NULL);
    pthread_t threads[THREADS];
    struct race_op ops[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&ops[i], 0, sizeof ops[i]);
        ops[i].race = &r;
        snprintf(ops[i].owner, sizeof ops[i].owner, "t%d", i);
        assert_int_equal(pthread_create(&threads[i], NULL, racer, &ops[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(r.failures, 0);
    assert_int_equal(r.overlaps, 0);
    assert_int_equal(r.n_tokens, THREADS * ROUNDS);
    /* Tokens are recorded in grant order inside the critical section: with no
     * expiry, every grant is exactly the previous token plus one. */
    for (int i = 0; i < r.n_tokens; i++)
        assert_int_equal(r.tokens[i], i + 1);
}

/* The batch forms: each lock as lock_acquire and lock_release would have
 * it, one statement for all. */
static void
many_locks_at_once_follow_the_single_rules(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant held = acquire_ok(f->c, "B", "other", 5000, T0, LOCK_GRANTED);
    struct lock_grant old = acquire_ok(f->c, "C", "gone", 1000, T0, LOCK_GRANTED);
    const char *names[] = {"D", "B", "A", "C"};
    const char *owners[] = {"w1", "w2", "w3", "w4"};
    int64_t tokens[4];
    /* A fresh, one held by another (refused), a fresh, a takeover. */
    assert_ok(lock_acquire_many(f->c, names, owners, 4, 500, T0 + 1000, tokens, &e), &e);
    assert_int_equal(tokens[0], 1);
    assert_int_equal(tokens[1], 0);
    assert_int_equal(tokens[2], 1);
    assert_int_equal(tokens[3], old.token + 1);
    struct lock_grant g;
    assert_ok(lock_get(f->c, "B", T0 + 10, &g, &e), &e);
    assert_string_equal(g.owner, "other");
    assert_ok(lock_get(f->c, "C", T0 + 1010, &g, &e), &e);
    assert_string_equal(g.owner, "w4");
    assert_int_equal(g.epoch, old.epoch + 1);
    /* Again by the same owners: re-entered, the same tokens. */
    int64_t again[4];
    assert_ok(lock_acquire_many(f->c, names, owners, 4, 500, T0 + 1100, again, &e), &e);
    assert_int_equal(again[0], tokens[0]);
    assert_int_equal(again[3], tokens[3]);
    /* Released: the current tokens free theirs; B's holder keeps it (a
     * token that is not B's current one), and C with a stale token stays. */
    const int64_t give[] = {tokens[0], held.token + 7, tokens[2], old.token};
    assert_ok(lock_release_many(f->c, names, give, 4, T0 + 1200, &e), &e);
    assert_int_equal(lock_get(f->c, "D", T0 + 1200, &g, &e), ERR_NOT_FOUND);
    assert_int_equal(lock_get(f->c, "A", T0 + 1200, &g, &e), ERR_NOT_FOUND);
    assert_ok(lock_get(f->c, "B", T0 + 1200, &g, &e), &e);
    assert_string_equal(g.owner, "other");
    assert_ok(lock_get(f->c, "C", T0 + 1200, &g, &e), &e);
    assert_string_equal(g.owner, "w4");
    /* A later grant of a released name still gets a larger token. */
    struct lock_grant next = acquire_ok(f->c, "D", "w5", 1000, T0 + 1300, LOCK_GRANTED);
    assert_int_equal(next.token, tokens[0] + 1);
}

static void
a_lock_another_run_of_the_same_work_holds_is_freed_for_a_larger_token(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant earlier = acquire_ok(f->c, "P1", "saga:s1:3", 30000, T0, LOCK_GRANTED);
    acquire_ok(f->c, "P2", "saga:s2:1", 30000, T0, LOCK_GRANTED);
    acquire_ok(f->c, "P3", "saga:s3:1", 30000, T0, LOCK_GRANTED);
    /* P1: another run of saga s1 holds it: freed. P2: held by this very
     * run: kept. P3: another saga's: kept. P4: never held. */
    const char *names[] = {"P1", "P2", "P3", "P4"};
    const char *prefixes[] = {"saga:s1:", "saga:s2:", "saga:s9:", "saga:s4:"};
    const char *owners[] = {"saga:s1:1", "saga:s2:1", "saga:s9:1", "saga:s4:1"};
    int64_t freed = -1;
    assert_ok(lock_release_superseded_many(f->c, names, prefixes, owners, 4, T0 + 100, &freed, &e),
              &e);
    assert_int_equal(freed, 1);
    struct lock_grant g;
    assert_int_equal(lock_get(f->c, "P1", T0 + 100, &g, &e), ERR_NOT_FOUND);
    assert_ok(lock_get(f->c, "P2", T0 + 100, &g, &e), &e);
    assert_string_equal(g.owner, "saga:s2:1");
    assert_ok(lock_get(f->c, "P3", T0 + 100, &g, &e), &e);
    assert_string_equal(g.owner, "saga:s3:1");
    /* The run that follows gets a larger token, which fences the earlier
     * run's writes out. */
    struct lock_grant next = acquire_ok(f->c, "P1", "saga:s1:1", 30000, T0 + 200, LOCK_GRANTED);
    assert_true(next.token > earlier.token);
    assert_ok(lock_fence_check(f->c, "P1", next.token, T0 + 200, &e), &e);
    assert_int_equal(lock_fence_check(f->c, "P1", earlier.token, T0 + 300, &e), ERR_STALE_TOKEN);
}

#define LOCK_TEST(name) cmocka_unit_test_setup_teardown(name, test_conn_setup, test_conn_teardown)

/* Forgotten: a free lock's row and fence go; a held one's stay. */
static void
forgotten_names_lose_their_rows_and_fences_unless_held(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct lock_grant held = acquire_ok(f->c, "F1", "a", 30000, T0, LOCK_GRANTED);
    struct lock_grant free_ = acquire_ok(f->c, "F2", "a", 30000, T0, LOCK_GRANTED);
    assert_ok(lock_release(f->c, "F2", free_.token, T0 + 1, &e), &e);
    assert_ok(lock_fence_check(f->c, "F1", held.token, T0 + 2, &e), &e);
    assert_ok(lock_fence_check(f->c, "F2", free_.token, T0 + 2, &e), &e);
    const char *names[] = {"F1", "F2", "F9"};
    int64_t forgotten = -1;
    assert_ok(lock_forget_many(f->c, names, 3, T0 + 3, &forgotten, &e), &e);
    assert_int_equal(forgotten, 1);
    struct lock_grant g;
    assert_ok(lock_get(f->c, "F1", T0 + 3, &g, &e), &e);
    char *value;
    int64_t token;
    assert_ok(lock_fenced_get(f->c, "F1", &value, &token, &e), &e);
    free(value);
    assert_int_equal(lock_fenced_get(f->c, "F2", &value, &token, &e), ERR_NOT_FOUND);
    /* Its tokens start over: a name is forgotten only when nothing takes it again. */
    assert_int_equal(acquire_ok(f->c, "F2", "b", 30000, T0 + 4, LOCK_GRANTED).token, 1);
    assert_ok(lock_forget_many(f->c, NULL, 0, T0 + 5, &forgotten, &e), &e);
    assert_int_equal(forgotten, 0);
}

static const struct CMUnitTest tests[] = {
    LOCK_TEST(tokens_strictly_increase_across_grants_and_takeovers),
    LOCK_TEST(reacquire_by_the_holder_keeps_its_token_and_extends),
    LOCK_TEST(acquire_while_held_names_the_holder_but_not_its_token),
    LOCK_TEST(renew_extends_and_refuses_stale_or_expired_tokens),
    LOCK_TEST(a_token_above_the_current_one_was_never_granted),
    LOCK_TEST(release_is_idempotent_and_frees_the_lock),
    LOCK_TEST(get_reports_a_held_lock_and_forgets_an_expired_one),
    LOCK_TEST(list_shows_held_locks_in_name_order_with_paging),
    LOCK_TEST(fence_accepts_equal_or_newer_tokens_and_refuses_older),
    LOCK_TEST(acquire_statement_agrees_with_the_decision_table),
    LOCK_TEST(concurrent_acquirers_never_overlap_and_tokens_follow_grants),
    LOCK_TEST(many_locks_at_once_follow_the_single_rules),
    LOCK_TEST(a_lock_another_run_of_the_same_work_holds_is_freed_for_a_larger_token),
    LOCK_TEST(forgotten_names_lose_their_rows_and_fences_unless_held),
};

TEST_MAIN(tests, true)
