/*
 * test_job_state.c: the job lifecycle table, retry backoff, names, RFC 3339
 * times and cron (parsing, and next fire times across daylight saving).
 */
#include "testsupport.h"

#include "jobs/jobs.h"
#include "jobs/jobs_int.h"

#include <string.h>

/* Queue latency runs from when the job became ready: its run_at, or its
 * submission when that came later (a run_at in the past). */
static void
queue_latency_counts_from_when_the_job_became_ready(void **state)
{
    (void)state;
    static const struct {
        int64_t created, run_at, now;
        double latency_s;
    } cases[] = {
        {10000, 10000, 12500, 2.5}, /* now */
        {10000, 20000, 21000, 1.0}, /* delayed: from its run_at */
        {10000, 1000, 10250, 0.25}, /* run_at long past: from its submission */
        {10000, 0, 10000, 0.0},     /* started at once */
        {10000, 30000, 29000, 0.0}, /* clocks apart: never negative */
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        struct job_lease l = {.created_at_ms = cases[i].created, .run_at_ms = cases[i].run_at};
        assert_float_equal(jobs__queue_latency_s(&l, cases[i].now), cases[i].latency_s, 1e-9);
    }
}

static void
lifecycle_table_allows_only_real_transitions(void **state)
{
    (void)state;
    static const struct {
        enum job_state from, to;
        bool ok;
    } cases[] = {
        {JOB_PENDING, JOB_RUNNING, true},    {JOB_PENDING, JOB_COMPLETED, false},
        {JOB_PENDING, JOB_DEAD, false},      {JOB_PENDING, JOB_CANCELLED, true},
        {JOB_RUNNING, JOB_COMPLETED, true},  {JOB_RUNNING, JOB_PENDING, true},
        {JOB_RUNNING, JOB_DEAD, true},       {JOB_RUNNING, JOB_RUNNING, false},
        {JOB_COMPLETED, JOB_RUNNING, false}, {JOB_COMPLETED, JOB_PENDING, true},
        {JOB_DEAD, JOB_PENDING, true},       {JOB_DEAD, JOB_COMPLETED, false},
        {JOB_CANCELLED, JOB_RUNNING, false}, {JOB_CANCELLED, JOB_PENDING, true},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++)
        assert_int_equal(job_can_transition(cases[i].from, cases[i].to), cases[i].ok);
    for (int s = 0; s < JOB_STATE_COUNT; s++) {
        enum job_state back;
        assert_true(job_state_parse(job_state_name((enum job_state)s), &back));
        assert_int_equal(back, s);
    }
    enum job_state x;
    assert_false(job_state_parse("done", &x));
    assert_true(job_is_terminal(JOB_DEAD) && !job_is_terminal(JOB_RUNNING));
}

static void
default_backoff_is_1_4_16_64_seconds_with_bounded_jitter(void **state)
{
    (void)state;
    struct job_backoff b;
    job_backoff_defaults(&b);
    static const int64_t want[] = {1000, 4000, 16000, 64000};
    for (int retry = 1; retry <= 4; retry++) {
        assert_int_equal(job_backoff_delay_ms(&b, retry, 0.5), want[retry - 1]);
        int64_t lo = job_backoff_delay_ms(&b, retry, 0.0);
        int64_t hi = job_backoff_delay_ms(&b, retry, 0.999999);
        assert_true(lo >= want[retry - 1] * 9 / 10 && lo < want[retry - 1]);
        assert_true(hi > want[retry - 1] && hi <= want[retry - 1] * 11 / 10);
    }
    assert_int_equal(job_backoff_delay_ms(&b, 40, 0.5), b.cap_ms);
    struct job_backoff flat = {
        .base_ms = 250, .factor_milli = 1000, .cap_ms = 1000, .jitter_pct = 0};
    assert_int_equal(job_backoff_delay_ms(&flat, 7, 0.9), 250);
}

static void
names_and_external_handlers(void **state)
{
    (void)state;
    assert_true(job_name_is_valid("emails.send-v2:eu"));
    assert_false(job_name_is_valid(""));
    assert_false(job_name_is_valid("a b"));
    assert_false(job_name_is_valid("a/b"));
    assert_true(job_handler_is_external("external"));
    assert_true(job_handler_is_external("external:send-email"));
    assert_false(job_handler_is_external("externals"));
    assert_false(job_handler_is_external("noop"));
}

static void
rfc3339_times_parse_with_offsets_and_fractions(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(bb_rfc3339_parse("1970-01-01T00:00:00Z", &ms), ERR_OK);
    assert_int_equal(ms, 0);
    assert_int_equal(bb_rfc3339_parse("2026-11-23T10:00:00.250+01:00", &ms), ERR_OK);
    assert_int_equal(ms, 1795424400250);
    assert_int_equal(bb_rfc3339_parse("2024-02-29T23:59:59.9999Z", &ms), ERR_OK);
    static const char *const bad[] = {"2026-11-23",
                                      "2026-11-23T10:00:00",
                                      "2025-02-29T00:00:00Z",
                                      "2026-13-01T00:00:00Z",
                                      "2026-11-23T24:00:00Z",
                                      "2026-11-23T10:00:00Zjunk",
                                      "2026-11-23T10:00:00+1:00"};
    for (size_t i = 0; i < BB_ARRAY_LEN(bad); i++)
        assert_int_equal(bb_rfc3339_parse(bad[i], &ms), ERR_INVALID);
}

static void
assert_next(const char *expr, const char *tz, const char *after, const char *want)
{
    struct job_cron c;
    struct bb_error e;
    assert_ok(job_cron_parse(expr, &c, &e), &e);
    int64_t next;
    assert_ok(job_cron_next(&c, tz, test_ms_at(after), &next, &e), &e);
    if (next != test_ms_at(want)) {
        char got[32];
        bb_wall_ms_format(next, got);
        fail_msg("%s in %s after %s: got %s, want %s", expr, tz, after, got, want);
    }
}

static void
cron_next_fire_times_in_utc(void **state)
{
    (void)state;
    assert_next("*/5 * * * *", "UTC", "2026-11-23T10:02:30Z", "2026-11-23T10:05:00Z");
    assert_next("*/5 * * * *", "UTC", "2026-11-23T10:05:00Z", "2026-11-23T10:10:00Z");
    assert_next("0 9 * * MON-FRI", "UTC", "2026-11-27T10:00:00Z", "2026-11-30T09:00:00Z");
    assert_next("30 4 1,15 * *", "UTC", "2026-11-15T05:00:00Z", "2026-12-01T04:30:00Z");
    assert_next("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z");
    assert_next("*/10 * * * * *", "UTC", "2026-11-23T10:00:05Z", "2026-11-23T10:00:10Z");
    assert_next("@hourly", "UTC", "2026-11-23T10:00:00Z", "2026-11-23T11:00:00Z");
    assert_next("0 12 * JAN,jul SUN", "UTC", "2026-11-23T00:00:00Z", "2027-01-03T12:00:00Z");
    /* Both day fields restricted: either matches (Vixie cron). */
    assert_next("0 0 13 * FRI", "UTC", "2026-11-01T00:00:00Z", "2026-11-06T00:00:00Z");
    assert_next("0 0 * * 7", "UTC", "2026-11-23T00:00:00Z", "2026-11-29T00:00:00Z");
}

static void
cron_honours_time_zones_and_daylight_saving(void **state)
{
    (void)state;
    /* 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer. */
    assert_next("0 9 * * *", "Europe/Paris", "2026-11-23T12:00:00Z", "2026-11-24T08:00:00Z");
    assert_next("0 9 * * *", "Europe/Paris", "2026-07-01T12:00:00Z", "2026-07-02T07:00:00Z");
    /* 2026-03-29 02:30 does not exist in Paris (02:00 -> 03:00): skipped. */
    assert_next("30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", "2026-03-30T00:30:00Z");
    /* 2026-10-25 02:30 happens twice in Paris: fires once, at the first. */
    assert_next("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z");
    assert_next("30 2 * * *", "Europe/Paris", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z");
    assert_next("0 0 * * *", "America/New_York", "2026-11-23T12:00:00Z", "2026-11-24T05:00:00Z");
}

/* The latest fire at or before `at` and not before `floor` (want NULL:
 * none). */
static void
assert_prev(const char *expr, const char *tz, const char *at_time, const char *floor,
            const char *want)
{
    struct job_cron c;
    struct bb_error e;
    assert_ok(job_cron_parse(expr, &c, &e), &e);
    int64_t prev = 0;
    enum err rc = job_cron_prev(&c, tz, test_ms_at(at_time), test_ms_at(floor), &prev, &e);
    if (want == NULL) {
        assert_int_equal(rc, ERR_NOT_FOUND);
        return;
    }
    assert_ok(rc, &e);
    if (prev != test_ms_at(want)) {
        char got[32];
        bb_wall_ms_format(prev, got);
        fail_msg("%s in %s at %s: got %s, want %s", expr, tz, at_time, got, want);
    }
}

static void
cron_prev_fire_times_walk_back_the_calendar(void **state)
{
    (void)state;
    const char *ago = "2000-01-01T00:00:00Z";
    assert_prev("*/5 * * * *", "UTC", "2026-11-23T10:07:30Z", ago, "2026-11-23T10:05:00Z");
    assert_prev("*/5 * * * *", "UTC", "2026-11-23T10:05:00Z", ago, "2026-11-23T10:05:00Z");
    assert_prev("*/5 * * * *", "UTC", "2026-11-23T10:07:30Z", "2026-11-23T10:06:00Z", NULL);
    assert_prev("0 9 * * MON-FRI", "UTC", "2026-11-30T08:00:00Z", ago, "2026-11-27T09:00:00Z");
    assert_prev("0 0 29 2 *", "UTC", "2027-06-01T00:00:00Z", ago, "2024-02-29T00:00:00Z");
    assert_prev("*/10 * * * * *", "UTC", "2026-11-23T10:00:05.500Z", ago, "2026-11-23T10:00:00Z");
    assert_prev("0 0 1 1 *", "UTC", "2026-01-01T00:00:00.999Z", ago, "2026-01-01T00:00:00Z");
    assert_prev("0 12 * JAN,jul SUN", "UTC", "2026-11-23T00:00:00Z", ago, "2026-07-26T12:00:00Z");
    /* 2026-03-29 02:30 does not exist in Paris: the day before's. */
    assert_prev("30 2 * * *", "Europe/Paris", "2026-03-29T12:00:00Z", ago, "2026-03-28T01:30:00Z");
    /* 2026-10-25 02:30 happens twice in Paris: its first instant, once passed;
     * at 02:10 the second time the clock has not reached 02:30 again. */
    assert_prev("30 2 * * *", "Europe/Paris", "2026-10-25T01:40:00Z", ago, "2026-10-25T00:30:00Z");
    assert_prev("30 2 * * *", "Europe/Paris", "2026-10-25T00:40:00Z", ago, "2026-10-25T00:30:00Z");
    assert_prev("30 2 * * *", "Europe/Paris", "2026-10-25T01:10:00Z", ago, "2026-10-24T00:30:00Z");
}

static void
bad_cron_expressions_name_their_fault(void **state)
{
    (void)state;
    static const struct {
        const char *expr;
        const char *needle;
    } cases[] = {
        {"* * * *", "needs 5 fields"},
        {"* * * * * * *", "needs 5 fields"},
        {"61 * * * *", "minute: 61 is out of range 0-59"},
        {"* 24 * * *", "hour"},
        {"* * 0 * *", "day of month"},
        {"* * * 13 *", "month"},
        {"* * * * 8", "day of week"},
        {"*/0 * * * *", "cannot read"},
        {"5-1 * * * *", "out of range"},
        {"a * * * *", "cannot read"},
        {"1,,2 * * * *", "cannot read"},
        {"* * * FOO *", "cannot read"},
        {"@often", "needs 5 fields"},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        struct job_cron c;
        struct bb_error e;
        bb_error_clear(&e);
        assert_int_equal(job_cron_parse(cases[i].expr, &c, &e), ERR_INVALID);
        assert_string_equal(e.field, "cron");
        if (strstr(e.detail, cases[i].needle) == NULL)
            fail_msg("'%s' gave '%s'", cases[i].expr, e.detail);
    }
    struct job_cron c;
    struct bb_error e;
    assert_ok(job_cron_parse("0 0 30 2 *", &c, &e), &e);
    int64_t next;
    assert_int_equal(job_cron_next(&c, "UTC", 0, &next, &e), ERR_INVALID);
    assert_non_null(strstr(e.detail, "never fires"));
}

static void
time_zones_come_from_tzdata(void **state)
{
    (void)state;
    assert_true(job_tz_is_valid("UTC"));
    assert_true(job_tz_is_valid("Europe/Paris"));
    assert_false(job_tz_is_valid("Mars/Olympus_Mons"));
    assert_false(job_tz_is_valid("../../etc/passwd"));
    assert_false(job_tz_is_valid("/etc/localtime"));
    assert_false(job_tz_is_valid(""));
}

static void
error_patterns_mask_what_varies_and_keep_what_explains(void **state)
{
    (void)state;
    static const struct {
        const char *error, *pattern;
    } cases[] = {
        {"POST http://127.0.0.1:41234/hook: HTTP 503", "POST http://127.0.0.1:<n>/hook: HTTP 503"},
        {"timed out after 30000 ms", "timed out after <n> ms"},
        {"took 1.5s, limit 0.25s", "took <n>s, limit <n>s"},
        {"order 01a2096f-157c-73f5-89f8-6e98844dc857 not found", "order <uuid> not found"},
        {"token 9f86d081884c7d659a2feaa0c55ad015 refused", "token <hex> refused"},
        {"exit status 3: sha256 mismatch in v1.2.10", "exit status 3: sha256 mismatch in v1.2.10"},
        {"  spread\n over\t lines  ", "spread over lines"},
        {"", ""},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        char out[JOB_ERROR_PATTERN_MAX + 1];
        job_error_pattern(cases[i].error, out, sizeof out);
        assert_string_equal(out, cases[i].pattern);
    }
    /* Bounded, and never cuts a character in two. */
    char small[5];
    job_error_pattern("caf\xc3\xa9", small, sizeof small);
    assert_string_equal(small, "caf");
    char longer[JOB_ERROR_PATTERN_MAX + 1];
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    job_error_pattern(big, longer, sizeof longer);
    assert_int_equal(strlen(longer), JOB_ERROR_PATTERN_MAX);
}

static void
fingerprints_group_errors_that_differ_only_in_what_varies(void **state)
{
    (void)state;
    char a[JOB_FINGERPRINT_LEN + 1], b[JOB_FINGERPRINT_LEN + 1], c[JOB_FINGERPRINT_LEN + 1],
        d[JOB_FINGERPRINT_LEN + 1];
    job_error_fingerprint("http", "timed out after 30000 ms", a);
    job_error_fingerprint("http", "timed out  after 29871 ms", b);
    job_error_fingerprint("http", "HTTP 503", c);
    job_error_fingerprint("exec", "timed out after 30000 ms", d);
    assert_true(job_fingerprint_is_valid(a));
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d); /* the handler is part of it */
    assert_false(job_fingerprint_is_valid("0123456789ABCDEF"));
    assert_false(job_fingerprint_is_valid("0123456789abcde"));
    assert_false(job_fingerprint_is_valid(NULL));
}

static void
rate_buckets_refill_at_their_pace_up_to_their_max(void **state)
{
    (void)state;
    /* 3 per 1000 ms, empty at t=0. */
    assert_int_equal(job_rate_level_milli(3, 1000, 0, 0, 0), 0);
    assert_int_equal(job_rate_wait_ms(3, 1000, 0), 334);
    assert_int_equal(job_rate_level_milli(3, 1000, 0, 0, 334), 1002);
    assert_int_equal(job_rate_wait_ms(3, 1000, 1002), 0);
    assert_int_equal(job_rate_level_milli(3, 1000, 0, 0, 999999), 3000); /* capped */
    assert_int_equal(job_rate_level_milli(3, 1000, 2500, 0, 100), 2800);
    /* A clock that stepped back refills nothing. */
    assert_int_equal(job_rate_level_milli(3, 1000, 500, 1000, 0), 500);
    assert_int_equal(job_rate_wait_ms(3, 1000, 500), 167);
    /* The largest limits stay exact (no overflow). */
    assert_int_equal(job_rate_level_milli(JOB_RATE_MAX, JOB_RATE_WINDOW_MAX, 0, 0, INT64_MAX / 2),
                     (int64_t)JOB_RATE_MAX * 1000);
    assert_int_equal(job_rate_wait_ms(JOB_RATE_MAX, JOB_RATE_WINDOW_MAX, 0), 87);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(lifecycle_table_allows_only_real_transitions),
    cmocka_unit_test(default_backoff_is_1_4_16_64_seconds_with_bounded_jitter),
    cmocka_unit_test(names_and_external_handlers),
    cmocka_unit_test(rfc3339_times_parse_with_offsets_and_fractions),
    cmocka_unit_test(cron_next_fire_times_in_utc),
    cmocka_unit_test(cron_honours_time_zones_and_daylight_saving),
    cmocka_unit_test(cron_prev_fire_times_walk_back_the_calendar),
    cmocka_unit_test(bad_cron_expressions_name_their_fault),
    cmocka_unit_test(time_zones_come_from_tzdata),
    cmocka_unit_test(rate_buckets_refill_at_their_pace_up_to_their_max),
    cmocka_unit_test(error_patterns_mask_what_varies_and_keep_what_explains),
    cmocka_unit_test(fingerprints_group_errors_that_differ_only_in_what_varies),
    cmocka_unit_test(queue_latency_counts_from_when_the_job_became_ready),
};

TEST_MAIN(tests, false)
