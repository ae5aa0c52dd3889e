/*
 * test_http_wait.c: the waiting list that parks blocking lock acquires and
 * long-poll claims. Most tests drive a list without a thread through
 * http__waitlist_run at fake times; the last ones check the thread itself.
 */
#include "testsupport.h"

#include "http/http_int.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

enum { T0 = 1000000 };
/* The retry time and deadline of waiters in line: reached only by the
 * tests that run the list at FAR (and under the 60 s a pass looks ahead). */
#define FAR (T0 + 50000)

/* What happened to one parked entry. Guarded by `mu` (the threaded tests
 * read it from the test thread while the list's thread writes it). */
struct entry {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int retries;
    int give_ups;
    enum err why;
    /* When set, the retry parks the entry again (as a waiter still refused
     * does) with these times. */
    struct http_waitlist *repark_on;
    const char *key;
    int64_t retry_at, deadline;
    /* A waiter in line (http_waitlist_park_in_line), as lock acquires are. */
    bool in_line;
    struct http_wait_turn turn;
};

static void
entry_init(struct entry *e)
{
    memset(e, 0, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    bb_cond_init_mono(&e->cv);
}

static void
entry_deinit(struct entry *e)
{
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
}

static void on_give_up(void *arg, enum err why);

static void
on_retry(void *arg)
{
    struct entry *e = arg;
    pthread_mutex_lock(&e->mu);
    e->retries++;
    struct http_waitlist *w = e->repark_on;
    e->repark_on = NULL;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (w && e->in_line) {
        uint64_t seq = http_waitlist_seq(w, e->key);
        assert_true(http_waitlist_park_in_line(w, e->key, e->retry_at, e->deadline, seq, &e->turn,
                                               on_retry, on_give_up, e));
    } else if (w) {
        uint64_t seq = http_waitlist_seq(w, e->key);
        assert_true(
            http_waitlist_park(w, e->key, e->retry_at, e->deadline, seq, on_retry, on_give_up, e));
    }
}

static void
on_give_up(void *arg, enum err why)
{
    struct entry *e = arg;
    pthread_mutex_lock(&e->mu);
    e->give_ups++;
    e->why = why;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* The gauge the list reports to (a plain function: no context). */
static int64_t parked_gauge = -1;

static void
on_count(int64_t n)
{
    parked_gauge = n;
}

/* Park `e` under `key`, having read the key's wake counter just now. */
static void
park_now(struct http_waitlist *w, const char *key, int64_t retry_at, int64_t deadline,
         struct entry *e)
{
    uint64_t seq = http_waitlist_seq(w, key);
    assert_true(http_waitlist_park(w, key, retry_at, deadline, seq, on_retry, on_give_up, e));
}

/* The same for a waiter in line. */
static void
park_in_line_now(struct http_waitlist *w, const char *key, int64_t retry_at, int64_t deadline,
                 struct entry *e)
{
    e->in_line = true;
    uint64_t seq = http_waitlist_seq(w, key);
    assert_true(http_waitlist_park_in_line(w, key, retry_at, deadline, seq, &e->turn, on_retry,
                                           on_give_up, e));
}

static size_t
run_at(struct http_waitlist *w, int64_t now, int64_t *next)
{
    int64_t ignored;
    return http__waitlist_run(w, now, next ? next : &ignored);
}

/* A key that shares `key`'s wake counter (same_bucket) or does not, found
 * through the public counters: waking it moves `key`'s. */
static void
key_sharing(struct http_waitlist *w, const char *key, bool same_bucket, char out[32])
{
    for (int i = 0; i < 100000; i++) {
        snprintf(out, 32, "other-%d", i);
        uint64_t before = http_waitlist_seq(w, key);
        http_waitlist_wake(w, out);
        if ((http_waitlist_seq(w, key) != before) == same_bucket)
            return;
    }
    fail_msg("no key %s %s's bucket", same_bucket ? "shares" : "avoids", key);
}

static void
an_entry_waits_until_its_retry_time(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(on_count);
    struct entry e;
    entry_init(&e);
    park_now(w, "L", T0 + 100, T0 + 1000, &e);
    assert_int_equal(parked_gauge, 1);
    int64_t next;
    assert_int_equal(run_at(w, T0 + 99, &next), 0);
    assert_int_equal(next, T0 + 100);
    assert_int_equal(e.retries, 0);
    assert_int_equal(run_at(w, T0 + 100, &next), 1);
    assert_int_equal(e.retries, 1);
    assert_int_equal(e.give_ups, 0);
    assert_int_equal(parked_gauge, 0);
    /* Retried once: the entry left the list. */
    assert_int_equal(run_at(w, T0 + 5000, &next), 0);
    assert_int_equal(next, T0 + 5000 + 60000);
    assert_int_equal(e.retries, 1);
    http_waitlist_destroy(w);
    entry_deinit(&e);
}

static void
a_wake_between_attempt_and_park_is_not_lost(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(NULL);
    struct entry e;
    entry_init(&e);
    /* The waiter reads the counter, makes its attempt (refused), and the
     * holder releases (wake) before the waiter parks: nobody is parked to
     * hear that wake, so the park itself must see it. */
    uint64_t seq = http_waitlist_seq(w, "L");
    http_waitlist_wake(w, "L");
    assert_true(http_waitlist_park(w, "L", T0 + 5000, T0 + 10000, seq, on_retry, on_give_up, &e));
    assert_int_equal(run_at(w, T0, NULL), 1);
    assert_int_equal(e.retries, 1);
    assert_int_equal(e.give_ups, 0);
    /* Without a wake in between, the same park waits. */
    struct entry quiet;
    entry_init(&quiet);
    park_now(w, "L", T0 + 5000, T0 + 10000, &quiet);
    int64_t next;
    assert_int_equal(run_at(w, T0, &next), 0);
    assert_int_equal(next, T0 + 5000);
    http_waitlist_destroy(w);
    entry_deinit(&e);
    entry_deinit(&quiet);
}

static void
a_wake_makes_only_entries_of_its_key_due(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(NULL);
    char shared[32];
    key_sharing(w, "A", true, shared);
    struct entry a, b, s;
    entry_init(&a);
    entry_init(&b);
    entry_init(&s);
    park_now(w, "A", T0 + 5000, T0 + 10000, &a);
    park_now(w, "B", T0 + 5000, T0 + 10000, &b);
    park_now(w, shared, T0 + 5000, T0 + 10000, &s);
    /* Parked entries are matched by key, not by bucket: waking a key that
     * shares A's counter wakes that key's entry only. */
    http_waitlist_wake(w, shared);
    assert_int_equal(run_at(w, T0, NULL), 1);
    assert_int_equal(s.retries, 1);
    assert_int_equal(a.retries + b.retries, 0);
    http_waitlist_wake(w, "A");
    assert_int_equal(run_at(w, T0, NULL), 1);
    assert_int_equal(a.retries, 1);
    assert_int_equal(b.retries, 0);
    /* NULL wakes every key. */
    http_waitlist_wake(w, NULL);
    assert_int_equal(run_at(w, T0, NULL), 1);
    assert_int_equal(b.retries, 1);
    http_waitlist_destroy(w);
    entry_deinit(&a);
    entry_deinit(&b);
    entry_deinit(&s);
}

static void
a_wake_of_a_key_sharing_the_bucket_before_parking_retries_early(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(NULL);
    char shared[32], apart[32];
    key_sharing(w, "A", true, shared);
    key_sharing(w, "A", false, apart);
    struct entry early, waits;
    entry_init(&early);
    entry_init(&waits);
    /* Between A's attempt and its park, a key sharing A's counter is woken:
     * the list cannot tell it from a wake of A, so A retries at once (early,
     * never late). */
    uint64_t seq = http_waitlist_seq(w, "A");
    http_waitlist_wake(w, shared);
    assert_true(
        http_waitlist_park(w, "A", T0 + 5000, T0 + 10000, seq, on_retry, on_give_up, &early));
    assert_int_equal(run_at(w, T0, NULL), 1);
    assert_int_equal(early.retries, 1);
    /* A wake of a key with a counter of its own leaves A waiting. */
    seq = http_waitlist_seq(w, "A");
    http_waitlist_wake(w, apart);
    assert_true(
        http_waitlist_park(w, "A", T0 + 5000, T0 + 10000, seq, on_retry, on_give_up, &waits));
    int64_t next;
    assert_int_equal(run_at(w, T0, &next), 0);
    assert_int_equal(next, T0 + 5000);
    assert_int_equal(waits.retries, 0);
    http_waitlist_destroy(w);
    entry_deinit(&early);
    entry_deinit(&waits);
}

static void
the_deadline_gives_up_unless_the_entry_was_woken(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(NULL);
    struct entry late, woken;
    entry_init(&late);
    entry_init(&woken);
    /* Its retry time is past its deadline: the deadline comes first. */
    park_now(w, "L", T0 + 500, T0 + 300, &late);
    int64_t next;
    assert_int_equal(run_at(w, T0 + 299, &next), 0);
    assert_int_equal(next, T0 + 300);
    assert_int_equal(run_at(w, T0 + 300, NULL), 1);
    assert_int_equal(late.give_ups, 1);
    assert_int_equal(late.why, ERR_TIMEOUT);
    assert_int_equal(late.retries, 0);
    /* Woken, an entry gets its attempt even when the pass comes after its
     * deadline: what woke it may be what it waited for. */
    park_now(w, "M", T0 + 500, T0 + 300, &woken);
    http_waitlist_wake(w, "M");
    assert_int_equal(run_at(w, T0 + 400, NULL), 1);
    assert_int_equal(woken.retries, 1);
    assert_int_equal(woken.give_ups, 0);
    http_waitlist_destroy(w);
    entry_deinit(&late);
    entry_deinit(&woken);
}

static void
a_retry_that_parks_again_waits_for_the_next_pass(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(on_count);
    struct entry e;
    entry_init(&e);
    e.repark_on = w;
    e.key = "L";
    e.retry_at = T0 + 200;
    e.deadline = T0 + 1000;
    park_now(w, "L", T0 + 100, T0 + 1000, &e);
    int64_t next;
    assert_int_equal(run_at(w, T0 + 100, &next), 1);
    assert_int_equal(e.retries, 1);
    assert_int_equal(parked_gauge, 1); /* parked again by its retry */
    assert_int_equal(run_at(w, T0 + 100, &next), 0);
    assert_int_equal(next, T0 + 200);
    assert_int_equal(run_at(w, T0 + 200, &next), 1);
    assert_int_equal(e.retries, 2);
    assert_int_equal(parked_gauge, 0);
    http_waitlist_destroy(w);
    entry_deinit(&e);
}

static void
stop_gives_every_entry_up_and_parks_no_more(void **state)
{
    (void)state;
    struct http_waitlist *w = http__waitlist_create_manual(on_count);
    struct entry a, b, c;
    entry_init(&a);
    entry_init(&b);
    entry_init(&c);
    park_now(w, "A", T0 + 5000, T0 + 10000, &a);
    park_now(w, "B", T0 + 5000, T0 + 10000, &b);
    http_waitlist_wake(w, "B"); /* due or not, stopping gives it up */
    http_waitlist_stop(w);
    assert_int_equal(a.give_ups, 1);
    assert_int_equal(a.why, ERR_UNAVAILABLE);
    assert_int_equal(b.give_ups, 1);
    assert_int_equal(b.why, ERR_UNAVAILABLE);
    assert_int_equal(a.retries + b.retries, 0);
    assert_int_equal(parked_gauge, 0);
    uint64_t seq = http_waitlist_seq(w, "C");
    assert_false(http_waitlist_park(w, "C", T0, T0, seq, on_retry, on_give_up, &c));
    http_waitlist_wake(w, NULL);
    http_waitlist_stop(w); /* again: nothing more happens */
    assert_int_equal(c.retries + c.give_ups, 0);
    assert_int_equal(a.give_ups + b.give_ups, 2);
    http_waitlist_destroy(w);
    entry_deinit(&a);
    entry_deinit(&b);
    entry_deinit(&c);
}

/* ---- waking one waiter in line ------------------------------------------------------------- */

/* Three waiters of A parked in this order, one of B, with their retry
 * time and deadline at FAR. */
struct line {
    struct http_waitlist *w;
    struct entry a[3], b;
};

static void
line_setup(struct line *l)
{
    l->w = http__waitlist_create_manual(on_count);
    for (size_t i = 0; i < 3; i++) {
        entry_init(&l->a[i]);
        park_in_line_now(l->w, "A", FAR, FAR, &l->a[i]);
    }
    entry_init(&l->b);
    park_in_line_now(l->w, "B", FAR, FAR, &l->b);
    assert_int_equal(parked_gauge, 4);
}

static void
line_teardown(struct line *l)
{
    http_waitlist_destroy(l->w);
    for (size_t i = 0; i < 3; i++)
        entry_deinit(&l->a[i]);
    entry_deinit(&l->b);
}

static void
wake_one_runs_the_oldest_of_its_key(void **state)
{
    (void)state;
    struct line l;
    line_setup(&l);
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(l.a[0].retries, 1);
    assert_true(l.a[0].turn.woken);
    assert_int_equal(l.a[1].retries + l.a[2].retries + l.b.retries, 0);
    assert_int_equal(parked_gauge, 3);
    /* Two releases before the list runs: the first waiter's one attempt,
     * made after both, answers both (only one can take the lock). */
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(l.a[1].retries, 1);
    assert_int_equal(l.a[2].retries + l.b.retries, 0);
    assert_int_equal(http_waitlist_wake_one(l.w, "B"), 1);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(l.b.retries, 1);
    assert_int_equal(l.a[2].retries, 0);
    line_teardown(&l);
}

static void
a_woken_waiter_that_leaves_passes_the_wake_on(void **state)
{
    (void)state;
    struct line l;
    line_setup(&l);
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(l.a[0].retries, 1);
    /* a[0] leaves without the lock (timed out, client gone, store failed):
     * the wake goes to the next in line, once. */
    assert_int_equal(http_waitlist_pass(l.w, "A", &l.a[0].turn), 1);
    assert_false(l.a[0].turn.woken);
    assert_int_equal(http_waitlist_pass(l.w, "A", &l.a[0].turn), 0);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(l.a[1].retries, 1);
    assert_int_equal(l.a[2].retries + l.b.retries, 0);
    /* a[1] takes the lock (no pass): a[2] waits on. */
    int64_t next;
    assert_int_equal(run_at(l.w, T0, &next), 0);
    assert_int_equal(next, FAR);
    /* Run by its retry time, not a wake, a waiter that leaves has no wake
     * to pass on. */
    assert_int_equal(run_at(l.w, FAR, NULL), 2);
    assert_false(l.a[2].turn.woken);
    assert_int_equal(l.a[2].give_ups, 1);
    assert_int_equal(http_waitlist_pass(l.w, "A", &l.a[2].turn), 0);
    line_teardown(&l);
}

static void
a_woken_waiter_that_parks_again_keeps_its_place(void **state)
{
    (void)state;
    struct line l;
    line_setup(&l);
    /* a[0] finds the lock taken again (by an acquire that did not wait)
     * and parks again: the next release is still its. */
    l.a[0].repark_on = l.w;
    l.a[0].key = "A";
    l.a[0].retry_at = FAR;
    l.a[0].deadline = FAR;
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(parked_gauge, 4);
    assert_false(l.a[0].turn.woken); /* parking again spent the wake */
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(l.a[0].retries, 2);
    assert_int_equal(l.a[1].retries + l.a[2].retries, 0);
    line_teardown(&l);
}

static void
a_wake_one_before_parking_makes_it_due(void **state)
{
    (void)state;
    struct line l;
    line_setup(&l);
    struct entry late, alone;
    entry_init(&late);
    entry_init(&alone);
    /* `late` made its attempt; the release comes before it parks. The
     * wake goes to a[0], the first parked, and `late` parks due, holding
     * a wake too: it may be older than a[0], or a[0] may leave. */
    uint64_t seq = http_waitlist_seq(l.w, "A");
    assert_int_equal(http_waitlist_wake_one(l.w, "A"), 1);
    late.in_line = true;
    assert_true(http_waitlist_park_in_line(l.w, "A", FAR, FAR, seq, &late.turn, on_retry,
                                           on_give_up, &late));
    assert_int_equal(run_at(l.w, T0, NULL), 2);
    assert_int_equal(l.a[0].retries, 1);
    assert_int_equal(late.retries, 1);
    assert_true(late.turn.woken);
    assert_int_equal(l.a[1].retries + l.a[2].retries, 0);
    /* The only waiter of C, between its attempt and its park: nobody is
     * parked to hear the release, so its park must. */
    seq = http_waitlist_seq(l.w, "C");
    assert_int_equal(http_waitlist_wake_one(l.w, "C"), 0);
    alone.in_line = true;
    assert_true(http_waitlist_park_in_line(l.w, "C", FAR, FAR, seq, &alone.turn, on_retry,
                                           on_give_up, &alone));
    assert_int_equal(run_at(l.w, T0, NULL), 1);
    assert_int_equal(alone.retries, 1);
    assert_true(alone.turn.woken);
    line_teardown(&l);
    entry_deinit(&late);
    entry_deinit(&alone);
}

static void
wake_one_of_null_runs_every_waiter(void **state)
{
    (void)state;
    struct line l;
    line_setup(&l);
    /* After a listener reconnect, releases may have gone unheard. */
    assert_int_equal(http_waitlist_wake_one(l.w, NULL), 4);
    assert_int_equal(run_at(l.w, T0, NULL), 4);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(l.a[i].retries, 1);
        assert_true(l.a[i].turn.woken);
    }
    assert_int_equal(l.b.retries, 1);
    line_teardown(&l);
}

static void
wake_of_a_key_still_runs_all_its_entries(void **state)
{
    (void)state;
    struct line l;
    line_setup(&l);
    /* What long-poll claims use: a submit of many jobs serves many. */
    assert_int_equal(http_waitlist_wake(l.w, "A"), 3);
    assert_int_equal(run_at(l.w, T0, NULL), 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(l.a[i].retries, 1);
    assert_int_equal(l.b.retries, 0);
    line_teardown(&l);
}

/* ---- the list's own thread ------------------------------------------------------------- */

/* Wait (30 s at most, a safety net) until `e` has had `n` callbacks. */
static bool
await_callbacks(struct entry *e, int n)
{
    int64_t deadline = bb_mono_ms() + 30000;
    pthread_mutex_lock(&e->mu);
    while (e->retries + e->give_ups < n && bb_mono_ms() < deadline)
        bb_cond_wait_ms(&e->cv, &e->mu, deadline - bb_mono_ms());
    bool done = e->retries + e->give_ups >= n;
    pthread_mutex_unlock(&e->mu);
    return done;
}

static void
the_thread_retries_a_woken_entry_and_gives_up_on_stop(void **state)
{
    (void)state;
    struct http_waitlist *w = http_waitlist_create("test-wait", NULL);
    struct entry woken, parked;
    entry_init(&woken);
    entry_init(&parked);
    /* Retry and deadline an hour away: only the wake can move it. */
    int64_t hour = bb_mono_ms() + 3600 * 1000;
    park_now(w, "L", hour, hour, &woken);
    park_now(w, "M", hour, hour, &parked);
    http_waitlist_wake(w, "L");
    assert_true(await_callbacks(&woken, 1));
    pthread_mutex_lock(&woken.mu);
    assert_int_equal(woken.retries, 1);
    pthread_mutex_unlock(&woken.mu);
    /* Stop returns once the thread has given the rest up. */
    http_waitlist_stop(w);
    pthread_mutex_lock(&parked.mu);
    assert_int_equal(parked.give_ups, 1);
    assert_int_equal(parked.why, ERR_UNAVAILABLE);
    assert_int_equal(parked.retries, 0);
    pthread_mutex_unlock(&parked.mu);
    http_waitlist_destroy(w);
    entry_deinit(&woken);
    entry_deinit(&parked);
}

static void
the_thread_gives_up_at_the_deadline(void **state)
{
    (void)state;
    struct http_waitlist *w = http_waitlist_create("test-wait", NULL);
    struct entry e;
    entry_init(&e);
    int64_t now = bb_mono_ms();
    park_now(w, "L", now + 3600 * 1000, now + 20, &e);
    assert_true(await_callbacks(&e, 1));
    pthread_mutex_lock(&e.mu);
    assert_int_equal(e.give_ups, 1);
    assert_int_equal(e.why, ERR_TIMEOUT);
    pthread_mutex_unlock(&e.mu);
    http_waitlist_destroy(w);
    entry_deinit(&e);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(an_entry_waits_until_its_retry_time),
    cmocka_unit_test(a_wake_between_attempt_and_park_is_not_lost),
    cmocka_unit_test(a_wake_makes_only_entries_of_its_key_due),
    cmocka_unit_test(a_wake_of_a_key_sharing_the_bucket_before_parking_retries_early),
    cmocka_unit_test(the_deadline_gives_up_unless_the_entry_was_woken),
    cmocka_unit_test(a_retry_that_parks_again_waits_for_the_next_pass),
    cmocka_unit_test(stop_gives_every_entry_up_and_parks_no_more),
    cmocka_unit_test(wake_one_runs_the_oldest_of_its_key),
    cmocka_unit_test(a_woken_waiter_that_leaves_passes_the_wake_on),
    cmocka_unit_test(a_woken_waiter_that_parks_again_keeps_its_place),
    cmocka_unit_test(a_wake_one_before_parking_makes_it_due),
    cmocka_unit_test(wake_one_of_null_runs_every_waiter),
    cmocka_unit_test(wake_of_a_key_still_runs_all_its_entries),
    cmocka_unit_test(the_thread_retries_a_woken_entry_and_gives_up_on_stop),
    cmocka_unit_test(the_thread_gives_up_at_the_deadline),
};

TEST_MAIN(tests, false)
