/*
 * http_int.h: shared between the server adapter and the router.
 */
#ifndef BB_HTTP_INT_H
#define BB_HTTP_INT_H

#include "http/http.h"

enum { HTTP__MAX_PARAMS = 8, HTTP__MAX_SEGMENTS = 16, HTTP__MAX_QUERY_KEYS = 16 };

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

/*
 * A waiting list without a thread of its own, for tests: nothing happens
 * until http__waitlist_run, which makes one pass at the time it is given
 * (a fake clock). http_waitlist_stop gives its entries up itself, on the
 * caller's thread. Everything else is as for http_waitlist_create.
 */
struct http_waitlist *http__waitlist_create_manual(void (*on_count)(int64_t));
/*
 * Run the callbacks of the entries ready at `now_mono_ms`: woken (even past
 * their deadline: retry), at their retry time (retry), or past their
 * deadline (give_up, ERR_TIMEOUT); every one when stopping (ERR_UNAVAILABLE).
 * Each ready entry runs once; entries parked by the callbacks wait for the
 * next pass. Returns how many ran; *next_mono_ms is the earliest retry or
 * deadline among the entries not ready (now + 60 s when none), before the
 * callbacks ran. Only for a list made by http__waitlist_create_manual.
 */
size_t http__waitlist_run(struct http_waitlist *w, int64_t now_mono_ms, int64_t *next_mono_ms);

#endif /* BB_HTTP_INT_H */
