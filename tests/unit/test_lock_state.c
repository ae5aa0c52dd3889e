/*
 * test_lock_state.c: the lock lifecycle table and the pure decisions behind
 * acquire, renew and release, driven by a fake clock (`now`).
 */
#include "testsupport.h"

#include "locks/locks_int.h"

#include <string.h>

static struct lock_row
row(const char *owner, int64_t token, int64_t expires_at)
{
    struct lock_row r;
    memset(&r, 0, sizeof r);
    r.exists = true;
    r.has_owner = owner != NULL;
    if (owner)
        bb_strlcpy(r.owner, owner, sizeof r.owner);
    r.token = token;
    r.epoch = 1;
    r.expires_at_ms = expires_at;
    return r;
}

static void
lifecycle_table_allows_only_real_transitions(void **state)
{
    (void)state;
    static const struct {
        enum lock_state from, to;
        bool ok;
    } cases[] = {
        {LOCK_FREE, LOCK_HELD, true},        {LOCK_FREE, LOCK_FREE, false},
        {LOCK_FREE, LOCK_EXPIRED, false},    {LOCK_HELD, LOCK_HELD, true},
        {LOCK_HELD, LOCK_FREE, true},        {LOCK_HELD, LOCK_EXPIRED, true},
        {LOCK_EXPIRED, LOCK_HELD, true},     {LOCK_EXPIRED, LOCK_FREE, true},
        {LOCK_EXPIRED, LOCK_EXPIRED, false},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++)
        assert_int_equal(lock_can_transition(cases[i].from, cases[i].to), cases[i].ok);
    assert_false(lock_can_transition((enum lock_state)7, LOCK_HELD));
}

static void
state_follows_owner_and_clock(void **state)
{
    (void)state;
    struct lock_row none = {0};
    struct lock_row released = row(NULL, 3, 0);
    struct lock_row held = row("w1", 3, 1000);
    assert_int_equal(lock_row_state(&none, 0), LOCK_FREE);
    assert_int_equal(lock_row_state(&released, 0), LOCK_FREE);
    assert_int_equal(lock_row_state(&held, 999), LOCK_HELD);
    assert_int_equal(lock_row_state(&held, 1000), LOCK_EXPIRED); /* the instant it ends */
}

static void
acquire_decisions_cover_every_state(void **state)
{
    (void)state;
    struct lock_row none = {0};
    struct lock_row released = row(NULL, 3, 0);
    struct lock_row held = row("w1", 3, 1000);
    assert_int_equal(locks__decide_acquire(&none, "w1", 0), LOCKS__INSERT);
    assert_int_equal(locks__decide_acquire(&released, "w2", 0), LOCKS__GRANT);
    assert_int_equal(locks__decide_acquire(&held, "w1", 500), LOCKS__REENTER);
    assert_int_equal(locks__decide_acquire(&held, "w2", 500), LOCKS__DENY);
    assert_int_equal(locks__decide_acquire(&held, "w2", 1000), LOCKS__TAKEOVER);
    /* Its own former owner, after expiry, also gets a fresh grant. */
    assert_int_equal(locks__decide_acquire(&held, "w1", 2000), LOCKS__TAKEOVER);
}

static void
renew_with_stale_token_is_refused(void **state)
{
    (void)state;
    struct lock_row held = row("w1", 3, 1000);
    assert_int_equal(locks__decide_renew(&held, 2, 500), ERR_STALE_TOKEN);
    assert_int_equal(locks__decide_renew(&held, 4, 500), ERR_STALE_TOKEN);
    assert_int_equal(locks__decide_renew(&held, 3, 500), ERR_OK);
}

static void
renew_after_expiry_is_refused_even_with_the_current_token(void **state)
{
    (void)state;
    struct lock_row held = row("w1", 3, 1000);
    assert_int_equal(locks__decide_renew(&held, 3, 1000), ERR_LOCK_EXPIRED);
    struct lock_row released = row(NULL, 3, 0);
    assert_int_equal(locks__decide_renew(&released, 3, 0), ERR_NOT_HELD);
    struct lock_row none = {0};
    assert_int_equal(locks__decide_renew(&none, 1, 0), ERR_NOT_HELD);
}

static void
release_is_idempotent_for_the_current_token_only(void **state)
{
    (void)state;
    bool changes;
    struct lock_row held = row("w1", 3, 1000);
    assert_int_equal(locks__decide_release(&held, 3, 500, &changes), ERR_OK);
    assert_true(changes);
    assert_int_equal(locks__decide_release(&held, 3, 5000, &changes), ERR_OK); /* expired */
    assert_true(changes);
    struct lock_row released = row(NULL, 3, 0);
    assert_int_equal(locks__decide_release(&released, 3, 0, &changes), ERR_OK);
    assert_false(changes);
    assert_int_equal(locks__decide_release(&held, 2, 500, &changes), ERR_STALE_TOKEN);
    struct lock_row none = {0};
    assert_int_equal(locks__decide_release(&none, 1, 0, &changes), ERR_NOT_HELD);
}

static void
lock_names_are_bounded_and_plain(void **state)
{
    (void)state;
    char long_name[LOCK_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name);
    long_name[LOCK_NAME_MAX] = '\0';
    assert_true(lock_name_is_valid(long_name));
    long_name[LOCK_NAME_MAX] = 'a';
    long_name[LOCK_NAME_MAX + 1] = '\0';
    assert_false(lock_name_is_valid(long_name));
    assert_true(lock_name_is_valid("payment:order-42@eu_1.x"));
    static const char *const bad[] = {"", "a/b", "a b", "caf\xc3\xa9", "a\nb", "a%2Fb"};
    for (size_t i = 0; i < BB_ARRAY_LEN(bad); i++)
        assert_false(lock_name_is_valid(bad[i]));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(lifecycle_table_allows_only_real_transitions),
    cmocka_unit_test(state_follows_owner_and_clock),
    cmocka_unit_test(acquire_decisions_cover_every_state),
    cmocka_unit_test(renew_with_stale_token_is_refused),
    cmocka_unit_test(renew_after_expiry_is_refused_even_with_the_current_token),
    cmocka_unit_test(release_is_idempotent_for_the_current_token_only),
    cmocka_unit_test(lock_names_are_bounded_and_plain),
};

TEST_MAIN(tests, false)
