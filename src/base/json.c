/*
 * json.c: strict readers for JSON request bodies. Each failure names the
 * member at fault, so the HTTP layer can put it in problem+json's `field`.
 */
#include "base/base.h"

#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

enum err
bb_json_int(const json_t *obj, const char *key, bool required, int64_t min, int64_t max,
            int64_t *out, struct bb_error *e)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        if (required)
            return bb_fail(e, ERR_INVALID, key, "%s is required", key);
        return ERR_OK;
    }
    if (!json_is_integer(v))
        return bb_fail(e, ERR_INVALID, key, "%s must be an integer", key);
    json_int_t n = json_integer_value(v);
    if (n < min || n > max)
        return bb_fail(e, ERR_INVALID, key, "%s must be between %" PRId64 " and %" PRId64, key, min,
                       max);
    *out = n;
    return ERR_OK;
}

enum err
bb_json_string(const json_t *obj, const char *key, bool required, size_t max_len, const char **out,
               struct bb_error *e)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        if (required)
            return bb_fail(e, ERR_INVALID, key, "%s is required", key);
        return ERR_OK;
    }
    if (!json_is_string(v))
        return bb_fail(e, ERR_INVALID, key, "%s must be a string", key);
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    if (len == 0)
        return bb_fail(e, ERR_INVALID, key, "%s must not be empty", key);
    if (len > max_len)
        return bb_fail(e, ERR_INVALID, key, "%s is longer than %zu bytes", key, max_len);
    if (memchr(s, '\0', len) != NULL)
        return bb_fail(e, ERR_INVALID, key, "%s must not contain NUL characters", key);
    *out = s;
    return ERR_OK;
}

enum err
bb_json_ident(const json_t *obj, const char *key, bool required, size_t max_len, const char **out,
              struct bb_error *e)
{
    const char *v = NULL;
    enum err rc = bb_json_string(obj, key, required, max_len, &v, e);
    if (rc != ERR_OK || v == NULL)
        return rc;
    if (!bb_ident_is_valid(v, max_len))
        return bb_fail(e, ERR_INVALID, key,
                       "%s must be 1 to %zu characters from A-Z a-z 0-9 . _ : -", key, max_len);
    *out = v;
    return ERR_OK;
}

enum err
bb_json_text(const json_t *obj, const char *key, bool required, size_t max_len, const char **out,
             struct bb_error *e)
{
    const char *v = NULL;
    enum err rc = bb_json_string(obj, key, required, max_len, &v, e);
    if (rc != ERR_OK || v == NULL)
        return rc;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return bb_fail(e, ERR_INVALID, key, "%s must not contain control characters", key);
    }
    *out = v;
    return ERR_OK;
}

/* What stands in for the wide literal: a string no request means. */
static const char WIDE_MARK_JSON[] = "\"\\u0000wide integer\\u0000\"";
static const char WIDE_MARK[] = "\0wide integer\0";

/* Where a path of `at` bytes ends after snprintf wrote n more (truncated
 * at the buffer's end). */
static size_t
path_end(int n, size_t at, size_t cap)
{
    if (n < 0 || (size_t)n >= cap - at)
        return cap - 1;
    return at + (size_t)n;
}

/* Depth-first: `path` holds the way down to v, `at` its length. */
static bool
find_wide_mark(const json_t *v, char *path, size_t cap, size_t at)
{
    if (json_is_string(v))
        return json_string_length(v) == sizeof WIDE_MARK - 1 &&
               memcmp(json_string_value(v), WIDE_MARK, sizeof WIDE_MARK - 1) == 0;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            int n = snprintf(path + at, cap - at, "[%zu]", i);
            if (find_wide_mark(json_array_get(v, i), path, cap, path_end(n, at, cap)))
                return true;
        }
    } else if (json_is_object(v)) {
        const char *key;
        const json_t *member;
        json_object_foreach((json_t *)v, key, member)
        {
            int n = snprintf(path + at, cap - at, "%s%s", at > 0 ? "." : "", key);
            if (find_wide_mark(member, path, cap, path_end(n, at, cap)))
                return true;
        }
    }
    path[at] = '\0';
    return false;
}

bool
bb_json_wide_integer_field(const char *text, size_t len, size_t end, char *field, size_t cap)
{
    if (cap == 0 || end > len)
        return false;
    field[0] = '\0';
    size_t start = end;
    while (start > 0 &&
           (text[start - 1] == '-' || (text[start - 1] >= '0' && text[start - 1] <= '9')))
        start--;
    if (start == end)
        return false;
    /* The text again with a marker string where the literal was; later
     * wide literals decode as reals. */
    struct bb_buf b;
    bb_buf_init(&b);
    bb_buf_append(&b, text, start);
    bb_buf_append(&b, WIDE_MARK_JSON, sizeof WIDE_MARK_JSON - 1);
    bb_buf_append(&b, text + end, len - end);
    json_t *doc =
        json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
    bb_buf_deinit(&b);
    if (doc == NULL)
        return false;
    bool found = find_wide_mark(doc, field, cap, 0);
    json_decref(doc);
    return found;
}

void
bb_error_prefix_field(struct bb_error *e, const char *prefix)
{
    char field[sizeof e->field];
    size_t n = strlen(prefix);
    if (e->field[0] == '\0' && n > 0 && prefix[n - 1] == '.')
        snprintf(field, sizeof field, "%.*s", (int)(n - 1), prefix);
    else
        snprintf(field, sizeof field, "%s%s", prefix, e->field);
    bb_strlcpy(e->field, field, sizeof e->field);
}

enum err
bb_json_only(const json_t *obj, const char *const *allowed, struct bb_error *e)
{
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)obj, key, value)
    {
        (void)value;
        bool known = false;
        for (const char *const *a = allowed; *a; a++) {
            if (strcmp(*a, key) == 0) {
                known = true;
                break;
            }
        }
        if (!known)
            return bb_fail(e, ERR_INVALID, key, "unknown field '%s'", key);
    }
    return ERR_OK;
}

void
bb_buf_int(struct bb_buf *b, int64_t v)
{
    char digits[24], *p = digits + sizeof digits;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    if (v < 0)
        *--p = '-';
    bb_buf_append(b, p, (size_t)(digits + sizeof digits - p));
}

/*
 * A double in the shortest form that reads back as the same double: 0.1 as
 * "0.1", not jansson's 17 digits ("0.10000000000000001"). The fewest
 * significant digits that round-trip, found by trying 1, 2, ... 17 (17
 * always does): a value sent as a short decimal is found in a few tries,
 * and reals are rare in this API. The form keeps a '.' or an exponent so
 * that it reads back as a real, and writes exponents without '+' or
 * leading zeros ("1e20", "1e-7"), as jansson does. Only finite values reach
 * here (jansson refuses the others). The program never calls setlocale,
 * so the decimal point is '.'.
 */
static void
buf_real(struct bb_buf *b, double d)
{
    char text[40];
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(text, sizeof text, "%.*g", precision, d);
        if (strtod(text, NULL) == d)
            break;
    }
    char out[48];
    size_t n = 0;
    bool real_form = false;
    for (const char *p = text; *p; p++) {
        out[n++] = *p;
        if (*p == '.')
            real_form = true;
        if (*p == 'e') {
            real_form = true;
            p++;
            if (*p == '-')
                out[n++] = *p++;
            else if (*p == '+')
                p++;
            while (*p == '0' && p[1] != '\0')
                p++;
            p--; /* the loop's p++ lands on the first digit kept */
        }
    }
    if (!real_form) {
        out[n++] = '.';
        out[n++] = '0';
    }
    bb_buf_append(b, out, n);
}

enum { JSON_WRITE_DEPTH_MAX = 4096 }; /* jansson parses at most 2048 deep */

static void
json_write(struct bb_buf *b, const json_t *v, int depth)
{
    if (depth > JSON_WRITE_DEPTH_MAX)
        bb_panic(__FILE__, __LINE__, "JSON nested too deep to write");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        bb_buf_append(b, "{", 1);
        bool first = true;
        for (void *it = json_object_iter((json_t *)v); it;
             it = json_object_iter_next((json_t *)v, it)) {
            if (!first)
                bb_buf_append(b, ",", 1);
            first = false;
            bb_buf_json_stringn(b, json_object_iter_key(it), json_object_iter_key_len(it));
            bb_buf_append(b, ":", 1);
            json_write(b, json_object_iter_value(it), depth + 1);
        }
        bb_buf_append(b, "}", 1);
        break;
    }
    case JSON_ARRAY: {
        bb_buf_append(b, "[", 1);
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item)
        {
            if (i > 0)
                bb_buf_append(b, ",", 1);
            json_write(b, item, depth + 1);
        }
        bb_buf_append(b, "]", 1);
        break;
    }
    case JSON_STRING:
        bb_buf_json_stringn(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        bb_buf_int(b, json_integer_value(v));
        break;
    case JSON_REAL:
        buf_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        bb_buf_append(b, "true", 4);
        break;
    case JSON_FALSE:
        bb_buf_append(b, "false", 5);
        break;
    case JSON_NULL:
        bb_buf_append(b, "null", 4);
        break;
    }
}

void
bb_buf_json_value(struct bb_buf *b, const json_t *v)
{
    json_write(b, v, 0);
}

char *
bb_json_dumps(const json_t *v)
{
    struct bb_buf b;
    bb_buf_init(&b);
    json_write(&b, v, 0);
    char *text = b.data ? b.data : xcalloc(1, 1);
    b.data = NULL;
    bb_buf_deinit(&b);
    return text;
}
