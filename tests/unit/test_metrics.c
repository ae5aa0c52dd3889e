/*
 * test_metrics.c: registry and Prometheus exposition.
 */
#include "testsupport.h"

#include "metrics/metrics.h"

#include <string.h>

static void
assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("expected to find\n%s\nin\n%s", needle, haystack);
}

static struct metrics_def COUNTER = {
    .name = "test_things_total",
    .help = "Things.",
    .type = METRICS_COUNTER,
    .labels = {"kind", "result"},
};

static void
counters_render_one_line_per_label_set(void **state)
{
    (void)state;
    metrics_add(&COUNTER, 1, "a", "ok");
    metrics_add(&COUNTER, 2, "a", "ok");
    metrics_add(&COUNTER, 1, "b", "fail");
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    assert_contains(out.data,
                    "# HELP test_things_total Things.\n# TYPE test_things_total counter\n");
    assert_contains(out.data, "test_things_total{kind=\"a\",result=\"ok\"} 3\n");
    assert_contains(out.data, "test_things_total{kind=\"b\",result=\"fail\"} 1\n");
    bb_buf_deinit(&out);
    metrics_shutdown();
}

static struct metrics_def GAUGE = {
    .name = "test_level",
    .help = "A level.",
    .type = METRICS_GAUGE,
};

static void
unlabelled_gauge_shows_zero_from_registration(void **state)
{
    (void)state;
    metrics_register(&GAUGE);
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    assert_contains(out.data, "test_level 0\n");
    metrics_set(&GAUGE, 2.5);
    bb_buf_reset(&out);
    metrics_render(&out);
    assert_contains(out.data, "test_level 2.5\n");
    bb_buf_deinit(&out);
    metrics_shutdown();
}

static const double BUCKETS[] = {0.1, 1};
static struct metrics_def HIST = {
    .name = "test_seconds",
    .help = "Durations.",
    .type = METRICS_HISTOGRAM,
    .labels = {"op"},
    .buckets = BUCKETS,
    .n_buckets = 2,
};

static void
histograms_are_cumulative_with_sum_and_count(void **state)
{
    (void)state;
    metrics_observe(&HIST, 0.05, "x");
    metrics_observe(&HIST, 0.5, "x");
    metrics_observe(&HIST, 5, "x");
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    assert_contains(out.data, "test_seconds_bucket{op=\"x\",le=\"0.1\"} 1\n");
    assert_contains(out.data, "test_seconds_bucket{op=\"x\",le=\"1\"} 2\n");
    assert_contains(out.data, "test_seconds_bucket{op=\"x\",le=\"+Inf\"} 3\n");
    assert_contains(out.data, "test_seconds_sum{op=\"x\"} 5.55\n");
    assert_contains(out.data, "test_seconds_count{op=\"x\"} 3\n");
    bb_buf_deinit(&out);
    metrics_shutdown();
}

static void
label_values_are_escaped(void **state)
{
    (void)state;
    metrics_add(&COUNTER, 1, "a\"b\\c\nd", "ok");
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    assert_contains(out.data, "kind=\"a\\\"b\\\\c\\nd\"");
    bb_buf_deinit(&out);
    metrics_shutdown();
}

static void
series_beyond_the_cap_land_in_overflow(void **state)
{
    (void)state;
    char kind[32];
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(kind, sizeof kind, "k%d", i);
        metrics_add(&COUNTER, 1, kind, "ok");
    }
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    assert_contains(out.data, "test_things_total{kind=\"overflow\",result=\"overflow\"} 10\n");
    bb_buf_deinit(&out);
    metrics_shutdown();
}

static struct metrics_def COMING_AND_GOING = {
    .name = "test_groups",
    .help = "Groups now.",
    .type = METRICS_GAUGE,
    .labels = {"group"},
    .omit_zero = true,
};

static void
gauges_may_leave_out_their_series_at_zero(void **state)
{
    (void)state;
    metrics_set(&COMING_AND_GOING, 3, "a");
    metrics_set(&COMING_AND_GOING, 0, "b");
    struct bb_buf out;
    bb_buf_init(&out);
    metrics_render(&out);
    assert_contains(out.data, "# TYPE test_groups gauge\ntest_groups{group=\"a\"} 3\n");
    assert_null(strstr(out.data, "group=\"b\""));
    metrics_set(&COMING_AND_GOING, 0, "a");
    bb_buf_reset(&out);
    metrics_render(&out);
    assert_null(strstr(out.data, "test_groups{"));
    bb_buf_deinit(&out);
    metrics_shutdown();
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(counters_render_one_line_per_label_set),
    cmocka_unit_test(unlabelled_gauge_shows_zero_from_registration),
    cmocka_unit_test(histograms_are_cumulative_with_sum_and_count),
    cmocka_unit_test(label_values_are_escaped),
    cmocka_unit_test(series_beyond_the_cap_land_in_overflow),
    cmocka_unit_test(gauges_may_leave_out_their_series_at_zero),
};

TEST_MAIN(tests, false)
