/*
 * http_route.c: the routing table. Patterns are split into segments once;
 * a request path is split the same way and compared segment by segment.
 * Tables are small (tens of routes), so a linear scan is the fastest thing.
 *
 * A request path arrives as the client sent it (still percent-encoded): it
 * is split on its own '/' first and each segment decoded after, so "%2F"
 * is a character of a segment, never a separator ("/locks/a%2Fb" names the
 * lock "a/b", which the lock module then refuses as a name). Decoding the
 * whole path first would let "/locks/zz%2Facquire" reach POST
 * /locks/{name}/acquire, past a proxy that filters on paths.
 */
#include "http/http_int.h"

#include <stdlib.h>
#include <string.h>

size_t
http__unescape(char *s)
{
    char *out = s;
    for (const char *p = s; *p != '\0'; p++) {
        int hi = p[0] == '%' ? bb_hex_digit(p[1]) : -1;
        int lo = hi >= 0 ? bb_hex_digit(p[2]) : -1;
        if (lo >= 0 && (hi | lo) != 0) {
            *out++ = (char)(hi * 16 + lo);
            p += 2;
        } else {
            *out++ = *p;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

/* -1, after freeing the n segments split_path made with xmalloc. */
static int
split_failed(struct bb_arena *arena, char **out, int n)
{
    for (int i = 0; !arena && i < n; i++)
        free(out[i]);
    return -1;
}

/* Split "/a/b/c" into segments (copies into `arena`, or xmalloc when NULL),
 * each percent-decoded after the split when `decode` is set. Returns the
 * count, or -1 (nothing left allocated) when there are too many or a
 * segment is empty (a trailing slash is tolerated). */
static int
split_path(const char *path, struct bb_arena *arena, bool decode, char **out)
{
    if (path[0] != '/')
        return -1;
    int n = 0;
    const char *p = path + 1;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0)
            return slash && slash[1] == '\0' ? n : split_failed(arena, out, n);
        if (n == HTTP__MAX_SEGMENTS)
            return split_failed(arena, out, n);
        char *seg = arena ? bb_arena_alloc(arena, len + 1) : xmalloc(len + 1);
        memcpy(seg, p, len);
        seg[len] = '\0';
        if (decode)
            http__unescape(seg);
        out[n++] = seg;
        if (!slash)
            break;
        p = slash + 1;
    }
    return n;
}

static bool
is_param(const char *segment)
{
    size_t n = strlen(segment);
    return n > 2 && segment[0] == '{' && segment[n - 1] == '}';
}

enum err
http__router_init(struct http__router *rt, const struct http_route *routes, size_t n,
                  struct bb_error *e)
{
    rt->routes = xcalloc(n ? n : 1, sizeof *rt->routes);
    rt->n_routes = 0;
    for (size_t i = 0; i < n; i++) {
        struct http__route *r = &rt->routes[i];
        r->pub = routes[i];
        int count = split_path(routes[i].pattern, NULL, false, r->segments);
        if (count < 0) {
            http__router_deinit(rt);
            return bb_fail(e, ERR_INTERNAL, "", "bad route pattern %s", routes[i].pattern);
        }
        r->n_segments = (size_t)count;
        rt->n_routes++;
        size_t n_query = 0;
        while (routes[i].query && routes[i].query[n_query])
            n_query++;
        if (n_query > HTTP__MAX_QUERY_KEYS) {
            http__router_deinit(rt);
            return bb_fail(e, ERR_INTERNAL, "", "route %s %s takes more than %d query parameters",
                           routes[i].method, routes[i].pattern, HTTP__MAX_QUERY_KEYS);
        }
    }
    return ERR_OK;
}

void
http__router_deinit(struct http__router *rt)
{
    for (size_t i = 0; i < rt->n_routes; i++) {
        for (size_t k = 0; k < rt->routes[i].n_segments; k++)
            free(rt->routes[i].segments[k]);
    }
    free(rt->routes);
    rt->routes = NULL;
    rt->n_routes = 0;
}

static bool
path_matches(const struct http__route *r, char **segs, size_t n)
{
    if (r->n_segments != n)
        return false;
    for (size_t k = 0; k < n; k++) {
        if (!is_param(r->segments[k]) && strcmp(r->segments[k], segs[k]) != 0)
            return false;
    }
    return true;
}

enum http__match
http__router_match(const struct http__router *rt, const char *method, const char *path,
                   struct bb_arena *arena, const struct http__route **route,
                   struct http__param params[HTTP__MAX_PARAMS], size_t *n_params, char *allow,
                   size_t allow_len)
{
    char *segs[HTTP__MAX_SEGMENTS];
    int n = split_path(path, arena, true, segs);
    *n_params = 0;
    allow[0] = '\0';
    if (n < 0)
        return HTTP__NO_PATH;
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
    bool path_seen = false;
    for (size_t i = 0; i < rt->n_routes; i++) {
        const struct http__route *r = &rt->routes[i];
        if (!path_matches(r, segs, (size_t)n))
            continue;
        path_seen = true;
        if (strcmp(r->pub.method, want) != 0) {
            if (strstr(allow, r->pub.method) == NULL) {
                size_t used = strlen(allow);
                snprintf(allow + used, allow_len - used, "%s%s", used ? ", " : "", r->pub.method);
            }
            continue;
        }
        for (size_t k = 0; k < r->n_segments && *n_params < HTTP__MAX_PARAMS; k++) {
            if (is_param(r->segments[k])) {
                size_t len = strlen(r->segments[k]) - 2;
                char *name = bb_arena_alloc(arena, len + 1);
                memcpy(name, r->segments[k] + 1, len);
                name[len] = '\0';
                params[*n_params].name = name;
                params[*n_params].value = segs[k];
                (*n_params)++;
            }
        }
        *route = r;
        return HTTP__MATCHED;
    }
    return path_seen ? HTTP__NO_METHOD : HTTP__NO_PATH;
}
