/*
 * test_http_route.c: the router (path patterns, parameters, 404 vs 405) and
 * the problem+json document.
 */
#include "testsupport.h"

#include "http/http_int.h"

#include <string.h>

static void
noop(struct http_req *r, void *ctx)
{
    (void)r;
    (void)ctx;
}

static const struct http_route ROUTES[] = {
    {"POST", "/locks/{name}/acquire", noop, NULL, false, NULL},
    {"GET", "/locks/{name}", noop, NULL, false, NULL},
    {"GET", "/locks", noop, NULL, false, NULL},
    {"PUT", "/fenced/{key}", noop, NULL, false, NULL},
    {"GET", "/fenced/{key}", noop, NULL, false, NULL},
};

struct fixture {
    struct http__router rt;
    struct bb_arena arena;
};

static int
setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof *f);
    struct bb_error e;
    assert_ok(http__router_init(&f->rt, ROUTES, BB_ARRAY_LEN(ROUTES), &e), &e);
    bb_arena_init(&f->arena);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    http__router_deinit(&f->rt);
    bb_arena_deinit(&f->arena);
    free(f);
    return 0;
}

static enum http__match
match(struct fixture *f, const char *method, const char *path, const struct http__route **route,
      struct http__param *params, size_t *n, char *allow)
{
    return http__router_match(&f->rt, method, path, &f->arena, route, params, n, allow, 64);
}

static void
path_parameters_are_extracted(void **state)
{
    struct fixture *f = *state;
    const struct http__route *route = NULL;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n;
    char allow[64];
    assert_int_equal(match(f, "POST", "/locks/orders-1/acquire", &route, params, &n, allow),
                     HTTP__MATCHED);
    assert_string_equal(route->pub.pattern, "/locks/{name}/acquire");
    assert_int_equal(n, 1);
    assert_string_equal(params[0].name, "name");
    assert_string_equal(params[0].value, "orders-1");
    assert_int_equal(match(f, "GET", "/locks", &route, params, &n, allow), HTTP__MATCHED);
    assert_int_equal(n, 0);
    assert_int_equal(match(f, "GET", "/locks/", &route, params, &n, allow), HTTP__MATCHED);
}

static void
unknown_paths_are_404_and_wrong_methods_405_with_allow(void **state)
{
    struct fixture *f = *state;
    const struct http__route *route;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n;
    char allow[64];
    assert_int_equal(match(f, "GET", "/nope", &route, params, &n, allow), HTTP__NO_PATH);
    assert_int_equal(match(f, "GET", "/locks/a/b/c", &route, params, &n, allow), HTTP__NO_PATH);
    assert_int_equal(match(f, "GET", "//locks", &route, params, &n, allow), HTTP__NO_PATH);
    assert_int_equal(match(f, "GET", "relative", &route, params, &n, allow), HTTP__NO_PATH);
    assert_int_equal(match(f, "DELETE", "/fenced/k", &route, params, &n, allow), HTTP__NO_METHOD);
    assert_string_equal(allow, "PUT, GET");
}

static void
head_is_served_by_get_routes(void **state)
{
    struct fixture *f = *state;
    const struct http__route *route;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n;
    char allow[64];
    assert_int_equal(match(f, "HEAD", "/locks", &route, params, &n, allow), HTTP__MATCHED);
}

static void
too_many_segments_do_not_overflow(void **state)
{
    struct fixture *f = *state;
    const struct http__route *route;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n;
    char allow[64];
    struct bb_buf path;
    bb_buf_init(&path);
    for (int i = 0; i < 1000; i++)
        bb_buf_puts(&path, "/x");
    assert_int_equal(match(f, "GET", path.data, &route, params, &n, allow), HTTP__NO_PATH);
    bb_buf_deinit(&path);
}

static void
encoded_slash_is_part_of_a_segment(void **state)
{
    struct fixture *f = *state;
    const struct http__route *route = NULL;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n;
    char allow[64];
    /* Split first, decode after: %2F never separates segments. */
    assert_int_equal(match(f, "POST", "/locks/a%2Fb/acquire", &route, params, &n, allow),
                     HTTP__MATCHED);
    assert_string_equal(route->pub.pattern, "/locks/{name}/acquire");
    assert_int_equal(n, 1);
    assert_string_equal(params[0].value, "a/b");
    assert_int_equal(match(f, "GET", "/locks/a%2fb", &route, params, &n, allow), HTTP__MATCHED);
    assert_string_equal(route->pub.pattern, "/locks/{name}");
    assert_string_equal(params[0].value, "a/b");
    /* Decoded first, these would reach POST /locks/zz/acquire and
     * GET /locks/zz. */
    assert_int_equal(match(f, "POST", "/locks/zz%2Facquire", &route, params, &n, allow),
                     HTTP__NO_METHOD);
    assert_string_equal(allow, "GET");
    assert_int_equal(match(f, "GET", "/locks%2Fzz", &route, params, &n, allow), HTTP__NO_PATH);
    assert_int_equal(match(f, "GET", "%2Flocks", &route, params, &n, allow), HTTP__NO_PATH);
}

static void
segments_are_decoded_once_after_the_split(void **state)
{
    struct fixture *f = *state;
    const struct http__route *route = NULL;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n;
    char allow[64];
    /* Any character may be escaped, in a fixed segment too. */
    assert_int_equal(match(f, "POST", "/%6Cocks/o%72ders-1/acquire", &route, params, &n, allow),
                     HTTP__MATCHED);
    assert_string_equal(params[0].value, "orders-1");
    /* Decoded once: %252F is the three characters "%2F". */
    assert_int_equal(match(f, "GET", "/fenced/a%252Fb", &route, params, &n, allow), HTTP__MATCHED);
    assert_string_equal(params[0].value, "a%2Fb");
    /* %00 stays escaped; a '%' without two hex digits stays as it is. */
    assert_int_equal(match(f, "GET", "/fenced/a%00b", &route, params, &n, allow), HTTP__MATCHED);
    assert_string_equal(params[0].value, "a%00b");
    assert_int_equal(match(f, "GET", "/fenced/100%", &route, params, &n, allow), HTTP__MATCHED);
    assert_string_equal(params[0].value, "100%");
    assert_int_equal(match(f, "GET", "/fenced/%zz%4", &route, params, &n, allow), HTTP__MATCHED);
    assert_string_equal(params[0].value, "%zz%4");
}

static void
unescape_decodes_in_place_but_keeps_nul_escaped(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"plain", "plain"}, {"a%20b", "a b"},   {"a%2Fb%2f", "a/b/"},
        {"%41%7e", "A~"},   {"x%00y", "x%00y"}, {"%", "%"},
        {"%4", "%4"},       {"%g1", "%g1"},     {"%e2%82%ac", "\xe2\x82\xac"},
        {"%2525", "%25"},   {"", ""},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        char buf[32];
        bb_strlcpy(buf, cases[i].in, sizeof buf);
        size_t len = http__unescape(buf);
        assert_string_equal(buf, cases[i].out);
        assert_int_equal(len, strlen(cases[i].out));
    }
}

static void
problem_document_names_type_status_and_field(void **state)
{
    (void)state;
    struct bb_error e;
    bb_fail(&e, ERR_INVALID, "ttl_ms", "ttl_ms must be between 10 and 86400000");
    json_t *doc = http_problem_json(&e, "/locks/a/acquire");
    assert_string_equal(json_string_value(json_object_get(doc, "type")),
                        "urn:backbone:problem:invalid_request");
    assert_string_equal(json_string_value(json_object_get(doc, "title")), "Invalid request");
    assert_int_equal(json_integer_value(json_object_get(doc, "status")), 400);
    assert_string_equal(json_string_value(json_object_get(doc, "field")), "ttl_ms");
    assert_string_equal(json_string_value(json_object_get(doc, "instance")), "/locks/a/acquire");
    json_decref(doc);
    /* A detail cut in the middle of a UTF-8 sequence still gives a document. */
    bb_fail(&e, ERR_LOCK_HELD, "", "held by \xc3");
    doc = http_problem_json(&e, NULL);
    assert_int_equal(json_integer_value(json_object_get(doc, "status")), 409);
    assert_non_null(json_object_get(doc, "detail"));
    assert_null(json_object_get(doc, "field"));
    json_decref(doc);
}

/* A route's query list is checked with every request against a fixed-size
 * table: a longer list is a programming error found at start, not later. */
static void
too_long_a_query_list_is_refused(void **state)
{
    (void)state;
    static const char *const q17[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i",
                                      "j", "k", "l", "m", "n", "o", "p", "q", NULL};
    static const char *const q16[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i",
                                      "j", "k", "l", "m", "n", "o", "p", NULL};
    struct http_route route = {"GET", "/things", noop, NULL, false, q16};
    struct http__router rt;
    struct bb_error e;
    assert_ok(http__router_init(&rt, &route, 1, &e), &e);
    assert_ptr_equal(rt.routes[0].pub.query, q16);
    http__router_deinit(&rt);
    route.query = q17;
    assert_int_equal(http__router_init(&rt, &route, 1, &e), ERR_INTERNAL);
    assert_non_null(strstr(e.detail, "GET /things"));
}

/* A bad pattern is a programming error found at start; what was split of
 * it and of the routes before it is freed (the ASan build's leak check). */
static void
bad_route_pattern_is_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"/things//x", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", "things"};
    for (size_t i = 0; i < BB_ARRAY_LEN(bad); i++) {
        struct http_route routes[] = {{"GET", "/things/{id}", noop, NULL, false, NULL},
                                      {"GET", bad[i], noop, NULL, false, NULL}};
        struct http__router rt;
        struct bb_error e;
        assert_int_equal(http__router_init(&rt, routes, 2, &e), ERR_INTERNAL);
        assert_non_null(strstr(e.detail, bad[i]));
        assert_null(rt.routes);
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(path_parameters_are_extracted, setup, teardown),
    cmocka_unit_test_setup_teardown(unknown_paths_are_404_and_wrong_methods_405_with_allow, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(head_is_served_by_get_routes, setup, teardown),
    cmocka_unit_test_setup_teardown(too_many_segments_do_not_overflow, setup, teardown),
    cmocka_unit_test_setup_teardown(encoded_slash_is_part_of_a_segment, setup, teardown),
    cmocka_unit_test_setup_teardown(segments_are_decoded_once_after_the_split, setup, teardown),
    cmocka_unit_test(bad_route_pattern_is_refused),
    cmocka_unit_test(unescape_decodes_in_place_but_keeps_nul_escaped),
    cmocka_unit_test(problem_document_names_type_status_and_field),
    cmocka_unit_test(too_long_a_query_list_is_refused),
};

TEST_MAIN(tests, false)
