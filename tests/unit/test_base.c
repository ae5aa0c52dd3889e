/*
 * test_base.c: errors, durations, ids, jitter, options, JSON readers, logs,
 * the combiner.
 */
#include "testsupport.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void
error_table_codes_are_unique_and_mapped(void **state)
{
    (void)state;
    static const enum err codes[] = {
#define CODE(name, num, status, slug, title) ERR_##name,
        BB_ERR_TABLE(CODE)
#undef CODE
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(codes); i++) {
        assert_int_equal(codes[i], i); /* append-only and dense */
        assert_string_not_equal(bb_err_name(codes[i]), "UNKNOWN");
        int status = bb_err_http_status(codes[i]);
        assert_true(status >= 200 && status < 600);
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(bb_err_slug(codes[i]), bb_err_slug(codes[k]));
    }
    assert_string_equal(bb_err_name((enum err)9999), "UNKNOWN");
    assert_int_equal(bb_err_http_status((enum err)9999), 500);
}

static void
fail_fills_the_error_and_returns_the_code(void **state)
{
    (void)state;
    struct bb_error e;
    bb_error_clear(&e);
    assert_int_equal(bb_fail(&e, ERR_INVALID, "ttl_ms", "must be %d or more", 10), ERR_INVALID);
    assert_int_equal(e.code, ERR_INVALID);
    assert_string_equal(e.field, "ttl_ms");
    assert_string_equal(e.detail, "must be 10 or more");
    assert_int_equal(bb_fail(NULL, ERR_IO, NULL, "x"), ERR_IO);
}

/* Texts too long for the error are cut on a character boundary (they end
 * up in JSON, which refuses a broken one). */
static void
fail_cuts_long_texts_between_characters(void **state)
{
    (void)state;
    char euros[1200] = "", field[300] = "";
    for (size_t i = 0; i + 3 < sizeof euros; i += 3)
        strcat(euros, "\xe2\x82\xac"); /* U+20AC, 3 bytes: 512 cuts one */
    for (size_t i = 0; i + 2 < sizeof field; i += 2)
        strcat(field, "\xc3\xa9"); /* U+00E9, 2 bytes: 96 cuts one */
    strcat(field, "x");
    struct bb_error e;
    bb_fail(&e, ERR_INVALID, field, "xy%s", euros);
    json_t *detail = json_string(e.detail), *name = json_string(e.field);
    assert_non_null(detail); /* valid UTF-8 */
    assert_non_null(name);
    assert_true(strlen(e.detail) >= sizeof e.detail - 4);
    assert_true(strlen(e.field) >= sizeof e.field - 3);
    json_decref(detail);
    json_decref(name);
}

static void
duration_parse_accepts_units(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"0", 0},          {"250", 250},   {"250ms", 250},
        {"30s", 30000},    {"5m", 300000}, {"2h", 7200000},
        {"7d", 604800000}, {"1s", 1000},   {"9223372036854775807", INT64_MAX},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        int64_t v = -1;
        assert_int_equal(bb_duration_parse(cases[i].text, &v), ERR_OK);
        assert_int_equal(v, cases[i].ms);
    }
}

static void
duration_parse_rejects_garbage(void **state)
{
    (void)state;
    static const char *const bad[] = {"",
                                      "-1",
                                      "1x",
                                      "1.5s",
                                      "s",
                                      " 1s",
                                      "1s ",
                                      "1 s",
                                      "1sec",
                                      "99999999999999999999",
                                      "9223372036854775807s"};
    for (size_t i = 0; i < BB_ARRAY_LEN(bad); i++) {
        int64_t v;
        assert_int_equal(bb_duration_parse(bad[i], &v), ERR_INVALID);
    }
    int64_t v;
    assert_int_equal(bb_duration_parse(NULL, &v), ERR_INVALID);
}

static void
size_parse_accepts_binary_units(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(bb_size_parse("1MiB", &v), ERR_OK);
    assert_int_equal(v, 1 << 20);
    assert_int_equal(bb_size_parse("512KiB", &v), ERR_OK);
    assert_int_equal(v, 512 * 1024);
    assert_int_equal(bb_size_parse("100", &v), ERR_OK);
    assert_int_equal(v, 100);
    assert_int_equal(bb_size_parse("1MB", &v), ERR_INVALID);
}

static void
uuid7_is_well_formed_and_increasing(void **state)
{
    (void)state;
    char prev[37] = "";
    for (int i = 0; i < 20000; i++) {
        char id[37];
        bb_uuid7(id);
        assert_true(bb_uuid_is_valid(id));
        assert_int_equal(id[14], '7');           /* version */
        assert_non_null(strchr("89ab", id[19])); /* variant 10xx */
        assert_true(strcmp(prev, id) < 0);       /* monotonic in this process */
        memcpy(prev, id, sizeof prev);
    }
}

static void
uuid7_starts_with_its_timestamp(void **state)
{
    (void)state;
    /* Later than anything issued so far, so the monotonic guard leaves it be. */
    int64_t ts = bb_wall_ms() + 1000000000;
    char id[37];
    bb_uuid7_at(ts, id);
    char hex[13];
    snprintf(hex, sizeof hex, "%012llx", (unsigned long long)ts);
    assert_memory_equal(id, hex, 8);
    assert_memory_equal(id + 9, hex + 8, 4);
    assert_false(bb_uuid_is_valid("not-a-uuid"));
    assert_false(bb_uuid_is_valid("0123456789ab-cdef-0123-4567-89abcdef0123"));
}

static void
traceparents_are_new_traces_and_checked_as_the_spec_says(void **state)
{
    (void)state;
    char a[BB_TRACEPARENT_LEN + 1], b[BB_TRACEPARENT_LEN + 1];
    bb_traceparent_new(a);
    bb_traceparent_new(b);
    assert_true(bb_traceparent_is_valid(a));
    assert_true(bb_traceparent_is_valid(b));
    assert_int_equal(strlen(a), BB_TRACEPARENT_LEN);
    assert_memory_equal(a, "00-", 3);
    assert_string_equal(a + 52, "-01");        /* sampled */
    assert_memory_not_equal(a + 3, b + 3, 32); /* a trace id each */
    const char *ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_true(bb_traceparent_is_valid(ok));
    const char *bad[] = {
        NULL,
        "",
        "00-nope",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", /* upper case */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* zero parent */
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* too long */
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(bad); i++)
        assert_false(bb_traceparent_is_valid(bad[i]));
}

static void
jitter_stays_within_its_fraction(void **state)
{
    (void)state;
    bool below = false, above = false;
    for (int i = 0; i < 10000; i++) {
        int64_t v = bb_jitter_ms(1000, 0.25);
        assert_true(v >= 750 && v <= 1250);
        below |= v < 1000;
        above |= v > 1000;
    }
    assert_true(below && above); /* it does move both ways */
    assert_int_equal(bb_jitter_ms(1000, 0), 1000);
    assert_int_equal(bb_jitter_ms(-5, 0.5), 0);
}

static void
rand_below_stays_in_range(void **state)
{
    (void)state;
    int seen[7] = {0};
    for (int i = 0; i < 7000; i++)
        seen[bb_rand_below(7)]++;
    for (int i = 0; i < 7; i++)
        assert_true(seen[i] > 0);
}

struct opts_dst {
    char *name;
    int64_t count;
    int64_t wait_ms;
    int64_t size;
    bool flag;
};

static const struct bb_opt OPTS[] = {
    {"name", BB_OPT_STRING, offsetof(struct opts_dst, name), 0, 0, "anon", "a name", 0},
    {"count", BB_OPT_INT, offsetof(struct opts_dst, count), 1, 10, "3", "a count", 0},
    {"wait", BB_OPT_DURATION, offsetof(struct opts_dst, wait_ms), 0, 60000, "1s", "a wait", 0},
    {"size", BB_OPT_SIZE, offsetof(struct opts_dst, size), 0, 1 << 30, "1KiB", "a size", 0},
    {"flag", BB_OPT_BOOL, offsetof(struct opts_dst, flag), 0, 0, "false", "a flag", BB_OPT_NO_ENV},
};

static enum err
parse(struct opts_dst *d, int argc, char **argv, struct bb_error *e)
{
    memset(d, 0, sizeof *d);
    return bb_opts_parse(OPTS, BB_ARRAY_LEN(OPTS), d, argc, argv, true, NULL, 0, NULL, e);
}

static void
options_apply_defaults_then_env_then_flags(void **state)
{
    (void)state;
    struct opts_dst d;
    struct bb_error e;
    assert_ok(parse(&d, 0, NULL, &e), &e);
    assert_string_equal(d.name, "anon");
    assert_int_equal(d.count, 3);
    assert_int_equal(d.wait_ms, 1000);
    assert_int_equal(d.size, 1024);
    assert_false(d.flag);
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &d);

    setenv("BACKBONE_COUNT", "5", 1);
    setenv("BACKBONE_FLAG", "true", 1); /* NO_ENV: ignored */
    char *argv[] = {(char *)"--wait=30s", (char *)"--name", (char *)"n1", (char *)"--flag"};
    assert_ok(parse(&d, 4, argv, &e), &e);
    assert_int_equal(d.count, 5);
    assert_int_equal(d.wait_ms, 30000);
    assert_string_equal(d.name, "n1");
    assert_true(d.flag);
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &d);

    char *argv2[] = {(char *)"--count", (char *)"7", (char *)"--flag", (char *)"false"};
    assert_ok(parse(&d, 4, argv2, &e), &e);
    assert_int_equal(d.count, 7); /* flags win over the environment */
    assert_false(d.flag);
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &d);
    unsetenv("BACKBONE_COUNT");
    unsetenv("BACKBONE_FLAG");
}

static void
options_reject_bad_values_naming_the_option(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        const char *needle;
    } cases[] = {
        {"--count=11", "--count: 11 is out of range"},
        {"--count=x", "--count: expected integer"},
        {"--wait=5x", "--wait: expected duration"},
        {"--flag=maybe", "--flag: expected true or false"},
        {"--nope=1", "unknown option '--nope'"},
        {"--count", "--count: missing value"},
        {"extra", "unexpected argument 'extra'"},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        struct opts_dst d;
        struct bb_error e;
        bb_error_clear(&e);
        char *argv[] = {(char *)cases[i].arg};
        assert_int_equal(parse(&d, 1, argv, &e), ERR_USAGE);
        if (strstr(e.detail, cases[i].needle) == NULL)
            fail_msg("'%s' gave '%s'", cases[i].arg, e.detail);
        bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &d);
    }
    setenv("BACKBONE_COUNT", "0", 1);
    struct opts_dst d;
    struct bb_error e;
    assert_int_equal(parse(&d, 0, NULL, &e), ERR_USAGE);
    assert_non_null(strstr(e.detail, "BACKBONE_COUNT"));
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &d);
    unsetenv("BACKBONE_COUNT");
}

static void
options_collect_positionals_and_stop_at_double_dash(void **state)
{
    (void)state;
    struct opts_dst d;
    memset(&d, 0, sizeof d);
    struct bb_error e;
    const char *pos[3];
    size_t n = 0;
    char *argv[] = {(char *)"acquire", (char *)"--count", (char *)"2",
                    (char *)"lock-a",  (char *)"--",      (char *)"--count"};
    assert_ok(bb_opts_parse(OPTS, BB_ARRAY_LEN(OPTS), &d, 6, argv, false, pos, 3, &n, &e), &e);
    assert_int_equal(n, 3);
    assert_string_equal(pos[0], "acquire");
    assert_string_equal(pos[1], "lock-a");
    assert_string_equal(pos[2], "--count");
    assert_int_equal(d.count, 2);
    bb_opts_free(OPTS, BB_ARRAY_LEN(OPTS), &d);
}

static void
json_int_accepts_only_integers_in_range(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:i, s:s, s:f, s:b, s:I}", "ok", 5, "str", "5", "real", 5.0, "bool", 1,
                          "big", (json_int_t)INT64_MAX);
    struct bb_error e;
    int64_t v = 0;
    assert_ok(bb_json_int(o, "ok", true, 0, 10, &v, &e), &e);
    assert_int_equal(v, 5);
    assert_int_equal(bb_json_int(o, "ok", true, 6, 10, &v, &e), ERR_INVALID);
    assert_string_equal(e.field, "ok");
    assert_non_null(strstr(e.detail, "between 6 and 10"));
    const char *wrong[] = {"str", "real", "bool"};
    for (size_t i = 0; i < BB_ARRAY_LEN(wrong); i++) {
        assert_int_equal(bb_json_int(o, wrong[i], true, 0, 10, &v, &e), ERR_INVALID);
        assert_string_equal(e.field, wrong[i]);
        assert_non_null(strstr(e.detail, "must be an integer"));
    }
    assert_ok(bb_json_int(o, "big", true, 0, INT64_MAX, &v, &e), &e);
    assert_int_equal(v, INT64_MAX); /* exact: never through a double */
    v = 42;
    assert_ok(bb_json_int(o, "missing", false, 0, 1, &v, &e), &e);
    assert_int_equal(v, 42);
    assert_int_equal(bb_json_int(o, "missing", true, 0, 1, &v, &e), ERR_INVALID);
    assert_non_null(strstr(e.detail, "is required"));
    json_decref(o);
}

static void
json_string_rejects_empty_long_and_nul(void **state)
{
    (void)state;
    json_t *o = json_object();
    json_object_set_new(o, "empty", json_string(""));
    json_object_set_new(o, "long", json_string("abcdef"));
    json_object_set_new(o, "nul", json_stringn("a\0b", 3));
    json_object_set_new(o, "num", json_integer(1));
    struct bb_error e;
    const char *s;
    assert_int_equal(bb_json_string(o, "empty", true, 5, &s, &e), ERR_INVALID);
    assert_int_equal(bb_json_string(o, "long", true, 5, &s, &e), ERR_INVALID);
    assert_non_null(strstr(e.detail, "longer than 5"));
    assert_int_equal(bb_json_string(o, "nul", true, 5, &s, &e), ERR_INVALID);
    assert_int_equal(bb_json_string(o, "num", true, 5, &s, &e), ERR_INVALID);
    assert_ok(bb_json_string(o, "long", true, 6, &s, &e), &e);
    assert_string_equal(s, "abcdef");
    json_decref(o);
}

static void
json_only_names_the_unknown_field(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:i, s:i}", "owner", 1, "tll_ms", 2);
    static const char *const allowed[] = {"owner", "ttl_ms", NULL};
    struct bb_error e;
    assert_int_equal(bb_json_only(o, allowed, &e), ERR_INVALID);
    assert_string_equal(e.field, "tll_ms");
    json_decref(o);
}

static void
json_wide_integer_field_names_the_path_to_it(void **state)
{
    (void)state;
    static const struct {
        const char *text, *field;
    } cases[] = {
        {"{\"ttl_ms\":99999999999999999999}", "ttl_ms"},
        {"{\"a\":1.5e300,\"items\":[{\"qty\":1},{\"qty\":-9223372036854775809}]}", "items[1].qty"},
        {"[1,[2,18446744073709551616]]", "[1][1]"},
        {"123456789012345678901234567890", ""},
        {"{\"a\":{\"b\":[99999999999999999999]},\"c\":99999999999999999999}", "a.b[0]"},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        char field[96] = "x";
        json_error_t jerr;
        assert_null(json_loads(cases[i].text, JSON_DECODE_ANY, &jerr));
        assert_int_equal(json_error_code(&jerr), json_error_numeric_overflow);
        assert_true(bb_json_wide_integer_field(cases[i].text, strlen(cases[i].text),
                                               (size_t)jerr.position, field, sizeof field));
        assert_string_equal(field, cases[i].field);
    }
    /* No literal ends there, or the text is broken elsewhere too. */
    char field[96];
    const char *broken = "{\"n\":99999999999999999999,}";
    size_t past = (size_t)(strchr(broken, ',') - broken);
    assert_false(bb_json_wide_integer_field(broken, strlen(broken), past, field, sizeof field));
    assert_false(bb_json_wide_integer_field(broken, strlen(broken), past + 1, field, sizeof field));
    assert_false(bb_json_wide_integer_field(broken, strlen(broken), 99, field, sizeof field));
    /* A path longer than the buffer is cut, never overrun. */
    char small[8];
    const char *deep = "{\"abcdefghij\":{\"k\":99999999999999999999}}";
    size_t deep_end = (size_t)(strchr(deep, '}') - deep);
    assert_true(bb_json_wide_integer_field(deep, strlen(deep), deep_end, small, sizeof small));
    assert_string_equal(small, "abcdefg");
}

static void
buf_json_string_escapes_controls_and_quotes(void **state)
{
    (void)state;
    struct bb_buf b;
    bb_buf_init(&b);
    bb_buf_json_string(&b, "a\"b\\c\nd\x01");
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\nd\\u0001\"");
    json_t *back = json_loads(b.data, JSON_DECODE_ANY, NULL);
    assert_non_null(back);
    assert_string_equal(json_string_value(back), "a\"b\\c\nd\x01");
    json_decref(back);
    bb_buf_deinit(&b);
}

/* A random JSON value (deterministic from *seed), `depth` levels at most:
 * strings with control characters, quotes, UTF-8 and NULs, keys too. */
static json_t *
random_json(uint64_t *seed, int depth)
{
    static const char *const bits[] = {"a",    "\"", "\\",           "\n",
                                       "\b",   "\f", "\x01",         "\x1f",
                                       "\x7f", "/",  "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                       "key"};
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t r = *seed >> 33;
    switch (depth > 0 ? r % 8 : r % 5) {
    case 0:
        return json_integer((json_int_t)(*seed ^ (r << 7)) >> (r % 64));
    case 1:
        return json_real((double)(int64_t)r / 7.0);
    case 2: {
        char text[64];
        size_t n = 0, parts = r % 6;
        for (size_t i = 0; i < parts; i++) {
            const char *b = bits[(r >> (i * 4)) % BB_ARRAY_LEN(bits)];
            memcpy(text + n, b, strlen(b));
            n += strlen(b);
        }
        if (r % 3 == 0)
            text[n++] = '\0'; /* jansson keeps NULs inside strings */
        return json_stringn(text, n);
    }
    case 3:
        return r % 2 ? json_true() : json_false();
    case 4:
        return json_null();
    case 5:
    case 6: {
        json_t *o = json_object();
        for (size_t i = 0; i < r % 5; i++) {
            char key[16];
            int n = snprintf(key, sizeof key, "%s%zu", bits[(r + i) % BB_ARRAY_LEN(bits)], i);
            json_object_setn_new(o, key, (size_t)n, random_json(seed, depth - 1));
        }
        return o;
    }
    default: {
        json_t *a = json_array();
        for (size_t i = 0; i < r % 5; i++)
            json_array_append_new(a, random_json(seed, depth - 1));
        return a;
    }
    }
}

static bool
has_real(const json_t *v)
{
    if (json_is_real(v))
        return true;
    size_t i;
    const char *key;
    json_t *item;
    if (json_is_array(v)) {
        json_array_foreach(v, i, item)
        {
            if (has_real(item))
                return true;
        }
    }
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, item)
        {
            if (has_real(item))
                return true;
        }
    }
    return false;
}

static void
json_dumps_writes_what_jansson_writes_but_shorter_reals(void **state)
{
    (void)state;
    json_t *fixed =
        json_pack("{s:I, s:I, s:s, s:[], s:{}, s:n, s:b, s:f}", "min", INT64_MIN, "max", INT64_MAX,
                  "s", "\x01\x08\x0c\x1f\"\\/\xe2\x82\xac", "a", "o", "null", "t", 1, "r", 0.1);
    uint64_t seed = 42;
    int exact = 0;
    for (int i = 0; i < 2000; i++) {
        json_t *v = i == 0 ? json_incref(fixed) : random_json(&seed, 4);
        char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        char *got = bb_json_dumps(v);
        assert_non_null(want);
        if (!has_real(v)) {
            /* Byte for byte, but for reals (jansson writes 17 digits). */
            assert_string_equal(got, want);
            exact++;
        } else {
            assert_true(strlen(got) <= strlen(want));
        }
        /* Either way it reads back as the same document. */
        json_t *back = json_loads(got, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(back);
        assert_true(json_equal(back, v));
        json_decref(back);
        free(got);
        free(want);
        json_decref(v);
    }
    assert_true(exact > 100);
    json_decref(fixed);
}

static void
json_reals_are_written_shortest_and_read_back_the_same(void **state)
{
    (void)state;
    static const struct {
        double d;
        const char *text;
    } cases[] = {
        {0.1, "0.1"},
        {1.5, "1.5"},
        {3.0, "3.0"},
        {-2.0, "-2.0"},
        {-0.0, "-0.0"},
        {0.30000000000000004, "0.30000000000000004"},
        {1e20, "1e20"},
        {1e300, "1e300"},
        {1e-7, "1e-7"},
        {123456.789, "123456.789"},
        {1.0 / 3.0, "0.3333333333333333"},
        {5e-324, "5e-324"},
        {1.7976931348623157e308, "1.7976931348623157e308"},
        {9007199254740993.0, "9007199254740992.0"}, /* 2^53 + 1 is no double */
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        json_t *v = json_real(cases[i].d);
        char *text = bb_json_dumps(v);
        assert_string_equal(text, cases[i].text);
        json_t *back = json_loads(text, JSON_DECODE_ANY, NULL);
        assert_true(json_is_real(back));
        assert_memory_equal(&cases[i].d, &(double){json_real_value(back)}, sizeof(double));
        json_decref(back);
        free(text);
        json_decref(v);
    }
}

static void
utf8_copy_replaces_invalid_bytes_and_controls_and_cuts_whole_characters(void **state)
{
    (void)state;
    const char *in = "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80|\xff|\xc0\xaf|\xed\xa0\x80|"
                     "\xe2\x82|\x01\x7f|\n\t";
    const char *want = "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80|?|??|???|??|  |  ";
    char out[64];
    assert_int_equal(bb_utf8_copy(out, sizeof out, in), strlen(want));
    assert_string_equal(out, want);
    json_t *j = json_string(out); /* jansson accepts only valid UTF-8 */
    assert_non_null(j);
    json_decref(j);
    char small[6]; /* "ok \xc3\xa9" needs 5 + NUL; one byte less cuts the é whole */
    assert_int_equal(bb_utf8_copy(small, sizeof small, in), 5);
    assert_int_equal(bb_utf8_copy(small, 5, in), 3);
    assert_string_equal(small, "ok ");
}

static void
digests_match_the_published_test_vectors(void **state)
{
    (void)state;
    char out[65];
    bb_sha256_hex("abc", 3, out); /* FIPS 180-2, appendix B.1 */
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *data = "what do ya want for nothing?"; /* RFC 4231, test case 2 */
    bb_hmac_sha256_hex("Jefe", data, strlen(data), out);
    assert_string_equal(out, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void
hex_digits_read_in_either_case(void **state)
{
    (void)state;
    static const char digits[] = "0123456789abcdef", upper[] = "0123456789ABCDEF";
    for (int i = 0; i < 16; i++) {
        assert_int_equal(bb_hex_digit(digits[i]), i);
        assert_int_equal(bb_hex_digit(upper[i]), i);
    }
    for (const char *c = "gG%/:@` "; *c; c++)
        assert_int_equal(bb_hex_digit(*c), -1);
    assert_int_equal(bb_hex_digit('\0'), -1);
}

static void
log_lines_are_json_with_typed_fields_and_context(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    bb_log_set_stream(f);
    bb_log_level = BB_LOG_INFO;
    bb_log_context_set("req-1", NULL);
    log_info("test.event", "name=%s count=%d big=%lld size=%zu ratio=%f", "a \"q\"", -3,
             (long long)INT64_MAX, (size_t)7, 0.5);
    bb_log_context_clear();
    log_debug("test.hidden", "x=%d", 1); /* below the level: not written */
    bb_log_set_stream(NULL);
    rewind(f);
    char line[1024];
    assert_non_null(fgets(line, sizeof line, f));
    assert_null(fgets(line + strlen(line), (int)(sizeof line - strlen(line)), f));
    fclose(f);
    json_error_t jerr;
    json_t *doc = json_loads(line, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON: %s (%s)", line, jerr.text);
    assert_string_equal(json_string_value(json_object_get(doc, "event")), "test.event");
    assert_string_equal(json_string_value(json_object_get(doc, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(doc, "name")), "a \"q\"");
    assert_int_equal(json_integer_value(json_object_get(doc, "count")), -3);
    assert_int_equal(json_integer_value(json_object_get(doc, "big")), INT64_MAX);
    assert_int_equal(json_integer_value(json_object_get(doc, "size")), 7);
    assert_true(json_number_value(json_object_get(doc, "ratio")) == 0.5);
    assert_string_equal(json_string_value(json_object_get(doc, "request_id")), "req-1");
    json_decref(doc);
}

static void
log_limit_suppresses_and_counts_bursts(void **state)
{
    (void)state;
    struct bb_log_limit lim;
    memset(&lim, 0, sizeof lim);
    int allowed = 0, sup = -1;
    for (int i = 0; i < 50; i++)
        allowed += bb_log_limit_allow(&lim, 5, 10000, &sup);
    assert_int_equal(allowed, 5);
    /* A second later the next line gets through and reports the 45. */
    assert_true(bb_log_limit_allow(&lim, 5, 11000, &sup));
    assert_int_equal(sup, 45);
}

static void
arena_allocations_are_aligned_and_survive_growth(void **state)
{
    (void)state;
    struct bb_arena a;
    bb_arena_init(&a);
    char *first = bb_arena_strdup(&a, "first");
    for (int i = 0; i < 1000; i++) {
        void *p = bb_arena_alloc(&a, (size_t)(i % 97) + 1);
        assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
        memset(p, 0xab, (size_t)(i % 97) + 1);
    }
    char *big = bb_arena_alloc(&a, 100000);
    memset(big, 1, 100000);
    assert_string_equal(first, "first");
    assert_string_equal(bb_arena_printf(&a, "%d-%s", 7, "x"), "7-x");
    bb_arena_deinit(&a);
}

static void
strlcpy_truncates_and_reports_the_source_length(void **state)
{
    (void)state;
    char small[4];
    assert_int_equal(bb_strlcpy(small, "abcdef", sizeof small), 6);
    assert_string_equal(small, "abc");
}

/* ---- the combiner ---- */

struct cb_item {
    int kind;
    int key;      /* items with one key conflict (0: none) */
    int carried;  /* times a batch carried it */
    int batch_no; /* which batch (1 = the first) */
};

struct cb_world {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;      /* the first batch may finish */
    size_t waiting; /* as on_waiting last said */
    int batches;
    bool mixed; /* a batch held two kinds */
    size_t sizes[8];
    struct bb_combiner *cb;
};

static bool
cb_same(const void *a, const void *b, void *ctx)
{
    (void)ctx;
    return ((const struct cb_item *)a)->kind == ((const struct cb_item *)b)->kind;
}

static void
cb_run(void **items, size_t n, void *ctx)
{
    struct cb_world *w = ctx;
    pthread_mutex_lock(&w->mu);
    int no = ++w->batches;
    if (no <= 8)
        w->sizes[no - 1] = n;
    for (size_t i = 0; i < n; i++) {
        struct cb_item *it = items[i];
        it->carried++;
        it->batch_no = no;
        if (it->kind != ((struct cb_item *)items[0])->kind)
            w->mixed = true;
    }
    pthread_cond_broadcast(&w->cv);
    while (no == 1 && !w->open) /* the first batch holds the only slot */
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void
cb_waiting(size_t n, void *ctx)
{
    struct cb_world *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->waiting = n;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static bool
cb_conflicts(const void *a, const void *b, void *ctx)
{
    (void)ctx;
    int x = ((const struct cb_item *)a)->key, y = ((const struct cb_item *)b)->key;
    return x != 0 && x == y;
}

/* One leader at a time: the first batch holds it until w->open. */
static void
cb_world_init(struct cb_world *w, size_t batch_max, size_t waiting_max)
{
    *w = (struct cb_world){.open = false};
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    struct bb_combiner_options o = {.leaders = 1,
                                    .batch_max = batch_max,
                                    .waiting_max = waiting_max,
                                    .same = cb_same,
                                    .conflicts = cb_conflicts,
                                    .run = cb_run,
                                    .ctx = w,
                                    .on_waiting = cb_waiting,
                                    .waiting_ctx = w};
    w->cb = bb_combiner_create(&o);
}

static void
cb_world_deinit(struct cb_world *w)
{
    bb_combiner_destroy(w->cb);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

struct cb_caller {
    struct cb_world *w;
    struct cb_item item;
};

static void *
cb_call(void *arg)
{
    struct cb_caller *c = arg;
    assert_true(bb_combine(c->w->cb, &c->item));
    return NULL;
}

static void
cb_await_batches(struct cb_world *w, int n)
{
    pthread_mutex_lock(&w->mu);
    while (w->batches != n)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* Wait until on_waiting said n. */
static void
cb_await_waiting(struct cb_world *w, size_t n)
{
    pthread_mutex_lock(&w->mu);
    while (w->waiting != n)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void
combiner_carries_waiting_items_of_a_kind_together_each_once(void **state)
{
    (void)state;
    struct cb_world w;
    cb_world_init(&w, 4, 16);
    /* The first caller leads alone and holds the one slot; then five of
     * kind 1 and two of kind 2 queue behind it. */
    enum { N = 8 };
    struct cb_caller calls[N];
    pthread_t t[N];
    for (size_t i = 0; i < N; i++) {
        calls[i] = (struct cb_caller){.w = &w, .item = {.kind = i == 0 ? 0 : i <= 5 ? 1 : 2}};
        assert_int_equal(pthread_create(&t[i], NULL, cb_call, &calls[i]), 0);
        if (i == 0)
            cb_await_batches(&w, 1);
        else
            cb_await_waiting(&w, i); /* in this order: the first in line is known */
    }
    pthread_mutex_lock(&w.mu);
    assert_int_equal(w.batches, 1);
    w.open = true;
    pthread_cond_broadcast(&w.cv);
    pthread_mutex_unlock(&w.mu);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    /* [0], then kind 1 first in line: four (batch_max), then the fifth
     * and kind 2's two in some order. */
    assert_false(w.mixed);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(calls[i].item.carried, 1);
    assert_int_equal(w.batches, 4);
    assert_int_equal(w.sizes[0], 1);
    assert_int_equal(w.sizes[1], 4);
    for (size_t i = 1; i <= 4; i++)
        assert_int_equal(calls[i].item.batch_no, 2);
    assert_int_equal(calls[6].item.batch_no, calls[7].item.batch_no);
    assert_int_not_equal(calls[5].item.batch_no, calls[6].item.batch_no);
    assert_int_equal(w.waiting, 0);
    cb_world_deinit(&w);
}

static void
combiner_leaves_conflicting_items_for_a_later_batch(void **state)
{
    (void)state;
    struct cb_world w;
    cb_world_init(&w, 8, 16);
    /* Behind the first: keys 1, 1, 2, 1 of one kind. */
    enum { N = 5 };
    static const int keys[N] = {0, 1, 1, 2, 1};
    struct cb_caller calls[N];
    pthread_t t[N];
    for (size_t i = 0; i < N; i++) {
        calls[i] = (struct cb_caller){.w = &w, .item = {.kind = 1, .key = keys[i]}};
        assert_int_equal(pthread_create(&t[i], NULL, cb_call, &calls[i]), 0);
        if (i == 0)
            cb_await_batches(&w, 1);
        else
            cb_await_waiting(&w, i);
    }
    pthread_mutex_lock(&w.mu);
    w.open = true;
    pthread_cond_broadcast(&w.cv);
    pthread_mutex_unlock(&w.mu);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    /* [0]; [key 1, key 2]; [key 1]; [key 1]. */
    assert_int_equal(w.batches, 4);
    assert_int_equal(calls[1].item.batch_no, 2);
    assert_int_equal(calls[3].item.batch_no, 2);
    assert_int_equal(calls[2].item.batch_no, 3);
    assert_int_equal(calls[4].item.batch_no, 4);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(calls[i].item.carried, 1);
    cb_world_deinit(&w);
}

static void
combiner_refuses_callers_beyond_waiting_max(void **state)
{
    (void)state;
    struct cb_world w;
    cb_world_init(&w, 2, 1);
    struct cb_caller first = {.w = &w, .item = {.kind = 1}};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cb_call, &first), 0);
    cb_await_batches(&w, 1); /* leading: off the waiting list */
    struct cb_caller second = {.w = &w, .item = {.kind = 1}};
    pthread_t t2;
    assert_int_equal(pthread_create(&t2, NULL, cb_call, &second), 0);
    cb_await_waiting(&w, 1);
    struct cb_item third = {.kind = 1};
    assert_false(bb_combine(w.cb, &third)); /* full: the caller runs it alone */
    assert_int_equal(third.carried, 0);
    pthread_mutex_lock(&w.mu);
    w.open = true;
    pthread_cond_broadcast(&w.cv);
    pthread_mutex_unlock(&w.mu);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(pthread_join(t2, NULL), 0);
    assert_int_equal(first.item.carried + second.item.carried, 2);
    cb_world_deinit(&w);
}

struct ticks {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int runs;
    bool hold; /* the second run keeps going until stop */
    struct bb_ticker *t;
};

static void
count_tick(void *arg)
{
    struct ticks *k = arg;
    pthread_mutex_lock(&k->mu);
    int run = ++k->runs;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    while (run == 2 && k->hold && !bb_ticker_stopping(k->t))
        bb_sleep_ms(1);
}

/* A run, another an interval later; stop ends a run that waits for it,
 * and nothing runs after. */
static void
ticker_runs_again_each_interval_and_stop_ends_the_run_in_progress(void **state)
{
    (void)state;
    struct ticks k = {.hold = true};
    pthread_mutex_init(&k.mu, NULL);
    pthread_cond_init(&k.cv, NULL);
    struct bb_error e;
    assert_ok(bb_ticker_start("bb-test-tick", 10, count_tick, &k, &k.t, &e), &e);
    pthread_mutex_lock(&k.mu);
    while (k.runs < 2)
        pthread_cond_wait(&k.cv, &k.mu);
    pthread_mutex_unlock(&k.mu);
    bb_ticker_stop(k.t); /* returns only once run 2 saw it */
    assert_int_equal(k.runs, 2);
    bb_ticker_stop(NULL);
    pthread_mutex_destroy(&k.mu);
    pthread_cond_destroy(&k.cv);
}

/* ---- fault points ------------------------------------------------------------------- */

/* Which of the first n calls of `point` fail, as a bit string. */
static void
fault_calls(const char *point, int n, char *out)
{
    for (int i = 0; i < n; i++)
        out[i] = bb_fault(point) ? '1' : '0';
    out[n] = '\0';
}

static void
fault_points_fail_the_calls_their_spec_names(void **state)
{
    (void)state;
    struct bb_error e;
    char got[64];
    assert_ok(bb_faults_arm("a=3,b=2+,c=1/1x2", 9, &e), &e);
    fault_calls("a", 6, got);
    assert_string_equal(got, "001000"); /* the 3rd, once */
    fault_calls("b", 5, got);
    assert_string_equal(got, "01111"); /* from the 2nd on */
    fault_calls("c", 4, got);
    assert_string_equal(got, "1100"); /* every call, 2 at most */
    assert_int_equal(bb_faults_injected("c"), 2);
    assert_false(bb_fault("unarmed"));
    /* 1 in 4, from the seed: the same seed fails the same calls. */
    char first[64];
    assert_ok(bb_faults_arm("p=1/4", 7, &e), &e);
    fault_calls("p", 63, first);
    int hits = 0;
    for (int i = 0; i < 63; i++)
        hits += first[i] == '1';
    assert_in_range(hits, 4, 30);
    assert_ok(bb_faults_arm("p=1/4", 7, &e), &e);
    fault_calls("p", 63, got);
    assert_string_equal(got, first);
    assert_ok(bb_faults_arm("p=1/4", 8, &e), &e);
    fault_calls("p", 63, got);
    assert_string_not_equal(got, first);
    bb_faults_disarm();
    assert_false(bb_fault("p"));
    assert_int_equal(bb_faults_injected("p"), 0);
}

static void *
fault_elsewhere(void *arg)
{
    fault_calls("p", 3, arg);
    return NULL;
}

/* Armed here: another thread's calls neither fail nor count. */
static void
fault_points_armed_here_fail_only_this_threads_calls(void **state)
{
    (void)state;
    struct bb_error e;
    char there[8], here[8];
    assert_ok(bb_faults_arm_here("p=2", 1, &e), &e);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fault_elsewhere, there), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    fault_calls("p", 3, here);
    assert_string_equal(there, "000");
    assert_string_equal(here, "010");
    assert_int_equal(bb_faults_injected("p"), 1);
    bb_faults_disarm();
}

static void
fault_specs_that_make_no_sense_are_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"p",
                                      "=3",
                                      "p=",
                                      "p=0",
                                      "p=x",
                                      "p=1/0",
                                      "p=3x0",
                                      "p=3xq",
                                      "p=3++",
                                      "p=-1",
                                      "p=1/2/3",
                                      "p=a/3",
                                      "a=1,b=1,c=1,d=1,e=1,f=1,g=1,h=1,i=1",
                                      "this.point.name.is.far.too.long.to.keep=1"};
    for (size_t i = 0; i < BB_ARRAY_LEN(bad); i++) {
        struct bb_error e;
        bb_error_clear(&e);
        if (bb_faults_arm(bad[i], 1, &e) != ERR_USAGE)
            fail_msg("'%s' was accepted", bad[i]);
        assert_string_equal(e.field, "faults");
    }
}

/* The clocks: wall time is the system's (epoch ms, written as RFC 3339
 * UTC with ms and read back exactly), monotonic time never goes back and
 * its ms and ns agree. */
static void
clocks_read_the_system_and_format_exactly(void **state)
{
    (void)state;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t before = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    int64_t wall = bb_wall_ms();
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t after = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    assert_true(before <= wall && wall <= after);

    int64_t ms = bb_mono_ms(), ns = bb_mono_ns();
    assert_true(ns / 1000000 >= ms);
    int64_t last = ns;
    for (int i = 0; i < 1000; i++) {
        int64_t now = bb_mono_ns();
        assert_true(now >= last);
        last = now;
    }
    assert_true(bb_mono_ms() >= last / 1000000);

    char out[32];
    bb_wall_ms_format(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    bb_wall_ms_format(1795428000123, out); /* 2026-11-23T10:00:00.123Z */
    assert_string_equal(out, "2026-11-23T10:00:00.123Z");
    bb_wall_ms_format(951868799999, out); /* the last ms of a leap day */
    assert_string_equal(out, "2000-02-29T23:59:59.999Z");
    int64_t back;
    bb_wall_ms_format(wall, out);
    assert_int_equal(strlen(out), 24);
    assert_int_equal(bb_rfc3339_parse(out, &back), ERR_OK);
    assert_int_equal(back, wall);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(error_table_codes_are_unique_and_mapped),
    cmocka_unit_test(fail_fills_the_error_and_returns_the_code),
    cmocka_unit_test(fail_cuts_long_texts_between_characters),
    cmocka_unit_test(duration_parse_accepts_units),
    cmocka_unit_test(duration_parse_rejects_garbage),
    cmocka_unit_test(size_parse_accepts_binary_units),
    cmocka_unit_test(clocks_read_the_system_and_format_exactly),
    cmocka_unit_test(uuid7_is_well_formed_and_increasing),
    cmocka_unit_test(uuid7_starts_with_its_timestamp),
    cmocka_unit_test(traceparents_are_new_traces_and_checked_as_the_spec_says),
    cmocka_unit_test(jitter_stays_within_its_fraction),
    cmocka_unit_test(rand_below_stays_in_range),
    cmocka_unit_test(options_apply_defaults_then_env_then_flags),
    cmocka_unit_test(options_reject_bad_values_naming_the_option),
    cmocka_unit_test(options_collect_positionals_and_stop_at_double_dash),
    cmocka_unit_test(json_int_accepts_only_integers_in_range),
    cmocka_unit_test(json_string_rejects_empty_long_and_nul),
    cmocka_unit_test(json_only_names_the_unknown_field),
    cmocka_unit_test(json_wide_integer_field_names_the_path_to_it),
    cmocka_unit_test(buf_json_string_escapes_controls_and_quotes),
    cmocka_unit_test(json_dumps_writes_what_jansson_writes_but_shorter_reals),
    cmocka_unit_test(json_reals_are_written_shortest_and_read_back_the_same),
    cmocka_unit_test(utf8_copy_replaces_invalid_bytes_and_controls_and_cuts_whole_characters),
    cmocka_unit_test(digests_match_the_published_test_vectors),
    cmocka_unit_test(hex_digits_read_in_either_case),
    cmocka_unit_test(log_lines_are_json_with_typed_fields_and_context),
    cmocka_unit_test(log_limit_suppresses_and_counts_bursts),
    cmocka_unit_test(arena_allocations_are_aligned_and_survive_growth),
    cmocka_unit_test(strlcpy_truncates_and_reports_the_source_length),
    cmocka_unit_test(combiner_carries_waiting_items_of_a_kind_together_each_once),
    cmocka_unit_test(combiner_leaves_conflicting_items_for_a_later_batch),
    cmocka_unit_test(combiner_refuses_callers_beyond_waiting_max),
    cmocka_unit_test(ticker_runs_again_each_interval_and_stop_ends_the_run_in_progress),
    cmocka_unit_test(fault_points_fail_the_calls_their_spec_names),
    cmocka_unit_test(fault_points_armed_here_fail_only_this_threads_calls),
    cmocka_unit_test(fault_specs_that_make_no_sense_are_refused),
};

TEST_MAIN(tests, false)
