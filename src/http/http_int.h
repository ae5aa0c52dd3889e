/*
 * http_int.h: shared between the server adapter and the router.
 */
#ifndef BB_HTTP_INT_H
#define BB_HTTP_INT_H

#include "http/http.h"

enum { HTTP__MAX_PARAMS = 8, HTTP__MAX_SEGMENTS = 16 };

struct http__param {
    const char *name;
    const char *value;
};

struct http__route {
    struct http_route pub;
    size_t n_segments;
    char *segments[HTTP__MAX_SEGMENTS]; /* "{x}" segments are parameters */
};

struct http__router {
    struct http__route *routes;
    size_t n_routes;
};

enum http__match {
    HTTP__MATCHED,
    HTTP__NO_PATH,   /* 404 */
    HTTP__NO_METHOD, /* 405; `allow` lists the methods that would match */
};

enum err http__router_init(struct http__router *rt, const struct http_route *routes, size_t n,
                           struct bb_error *e);
void http__router_deinit(struct http__router *rt);
/*
 * Percent-decode `s` in place (%XX; a '%' without two hex digits stays as it
 * is), but for %00, which stays escaped: decoded, its NUL would end the C
 * string early ("?queue=fz%00x" would read "fz"); escaped, it is refused
 * like any other character no name allows. Returns the new length.
 */
size_t http__unescape(char *s);
/*
 * Match method + path. `path` is the raw (still percent-encoded) path of the
 * request: it is split on '/' first, and each segment decoded after
 * (http__unescape), so an encoded slash never separates segments. On
 * HTTP__MATCHED, *route is set and params (decoded values copied into
 * `arena`) are filled. HEAD matches GET routes.
 */
enum http__match http__router_match(const struct http__router *rt, const char *method,
                                    const char *path, struct bb_arena *arena,
                                    const struct http__route **route,
                                    struct http__param params[HTTP__MAX_PARAMS], size_t *n_params,
                                    char *allow, size_t allow_len);

#endif /* BB_HTTP_INT_H */
