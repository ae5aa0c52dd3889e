/*
 * http: the HTTP server adapter (libmicrohttpd underneath) and a small HTTP
 * client (libcurl underneath).
 *
 * Server: a routing table of `METHOD /path/{param}` patterns; request bodies
 * gathered up to a hard limit (413 beyond it, checked before anything is
 * allocated); JSON bodies parsed strictly; query parameters limited to
 * those each route declares (400 for any other); every error answered as
 * application/problem+json; optional bearer-token auth; one log line and
 * metrics per request (http_requests_total{route,method,status},
 * http_request_duration_seconds{route,method}).
 *
 * A handler answers either before it returns (http_reply_*), or later from
 * any thread: it calls http_req_suspend() first, hands the request to someone
 * (the store executor, a waiter list) and returns; exactly one http_reply_*
 * call answers it afterwards. The HTTP thread is never blocked meanwhile.
 *
 * Lifetime: a `struct http_req` lives until its response has been sent. After
 * calling http_reply_* on a suspended request the caller must not touch it.
 */
#ifndef BB_HTTP_H
#define BB_HTTP_H

#include "base/base.h"
#include "store/store.h"

struct http_server;
struct http_req;

typedef void http_handler_fn(struct http_req *req, void *ctx);

struct http_route {
    const char *method;  /* "GET", "POST", "PUT", "DELETE" */
    const char *pattern; /* "/locks/{name}/acquire"; also the metrics `route` label */
    http_handler_fn *fn;
    void *ctx;
    bool public_route; /* reachable without the API token (liveness probes) */
    /* The query parameters the route takes: a NULL-terminated list (at most
     * 16; http_server_start fails beyond) that outlives the server, or NULL
     * for none. The server refuses any other, one given twice, or one
     * without a value (?state), with a 400 naming it before the handler
     * runs: a typo in a filter (?typ=, ?stat=) is an error, never a request
     * for everything, nor a write done anyway. */
    const char *const *query;
};

struct http_server_options {
    const char *host; /* numeric IPv4 or IPv6 address */
    int port;         /* 0: pick a free port (see http_server_port) */
    int threads;
    int64_t body_limit_bytes;
    int64_t idle_timeout_ms; /* keep-alive connections idle this long are closed */
    int max_connections;
    const char *api_token; /* NULL or "": no auth */
};

void http_server_options_defaults(struct http_server_options *o);

/* Start listening. Routes are copied. Errors: ERR_INVALID (address),
 * ERR_UNAVAILABLE (cannot bind). */
BB_WUR enum err http_server_start(const struct http_server_options *o,
                                  const struct http_route *routes, size_t n_routes,
                                  struct http_server **out, struct bb_error *e);
int http_server_port(const struct http_server *s);
/* Stop serving: every request that arrives from now on, on a new or an open
 * connection, is answered 503 with Connection: close. Requests in flight go on. */
void http_server_drain(struct http_server *s);
/* Wait (up to timeout_ms) for every request in flight to be answered and its
 * answer sent, then close every connection and free the server. False when
 * requests were still suspended at the timeout: the server is left to the
 * exiting process, and so must be everything their handlers may use. NULL
 * is fine (true). */
bool http_server_stop(struct http_server *s, int64_t timeout_ms);

/* ---- reading a request (valid until it is answered) ------------------------- */

const char *http_req_method(const struct http_req *r);
const char *http_req_path(const struct http_req *r);
const char *http_req_route(const struct http_req *r);
/* A `{name}` segment of the matched pattern; NULL if the pattern has none. */
const char *http_req_param(const struct http_req *r, const char *name);
/* A `{name}` segment that must be an identifier (bb_ident_is_valid). */
BB_WUR enum err http_req_param_ident(struct http_req *r, const char *name, size_t max,
                                     const char **out, struct bb_error *e);
/* Query-string argument or header. Only in the handler's synchronous part
 * (before it returns): they read libmicrohttpd's connection. */
const char *http_req_query(struct http_req *r, const char *key);
/* ?key=N as an integer in [min, max]; *out untouched when absent. */
BB_WUR enum err http_req_query_int(struct http_req *r, const char *key, int64_t min, int64_t max,
                                   int64_t *out, struct bb_error *e);
const char *http_req_header(struct http_req *r, const char *name);
/* The Idempotency-Key header, required and valid (a copy in the arena). */
BB_WUR enum err http_req_idempotency_key(struct http_req *r, const char **out, struct bb_error *e);
/* The request id (X-Request-Id if the client sent a sane one, else a UUIDv7)
 * and W3C traceparent (the client's if valid, else a new trace's: never
 * NULL, so that what the request causes can be found together). */
const char *http_req_id(const struct http_req *r);
const char *http_req_traceparent(const struct http_req *r);
/* Scratch memory freed with the request. */
struct bb_arena *http_req_arena(struct http_req *r);
/* An error buffer owned by the request, for handlers to fill. */
struct bb_error *http_req_error(struct http_req *r);

/*
 * The body parsed as a JSON object. ERR_MALFORMED (with line and column) for
 * invalid JSON or invalid UTF-8, ERR_INVALID when it is not an object or is
 * empty. The object belongs to the request.
 */
BB_WUR enum err http_req_json_object(struct http_req *r, json_t **out, struct bb_error *e);
/* The body as an object holding only the `allowed` members. */
BB_WUR enum err http_req_json_only(struct http_req *r, const char *const *allowed, json_t **out,
                                   struct bb_error *e);
/* An object, or an empty body as an empty object (optional bodies). */
BB_WUR enum err http_req_json_optional(struct http_req *r, json_t **out, struct bb_error *e);

/* ---- answering ------------------------------------------------------------------ */

/* Answer later, from any thread. Call before handing the request away. */
void http_req_suspend(struct http_req *r);
/* Has the client of a suspended request closed its connection (hung up)?
 * A waiter checks before it takes something on the client's behalf that
 * the answer would no longer reach (a lock, a job's lease). */
bool http_req_client_gone(const struct http_req *r);

/*
 * Run `work` on the store's executor for this request, then call `reply` (on
 * a store thread) with the outcome; `reply` must answer the request or hand
 * it on. Suspends the request. When the store refuses the unit (queue full,
 * shutting down) the request is answered 503 at once and `reply` is never
 * called. The log context (request id, traceparent) follows the request.
 */
typedef void http_store_reply_fn(struct http_req *r, void *arg, enum err rc,
                                 const struct bb_error *e);
void http_req_run(struct http_req *r, struct store *s, enum store_txn mode, store_work_fn *work,
                  http_store_reply_fn *reply, void *arg);

/*
 * The common case of http_req_run: `work` answers with JSON. It sets
 * a->body (and a->status, 200 unless set) on success; when it fails, the
 * request gets the problem, with a->extra's members (if set) added. Both
 * are stolen. A unit the store retries starts with a fresh answer.
 * `after` (may be NULL) hears the final outcome before the answer is sent,
 * once the transaction has committed or rolled back (to count metrics).
 */
struct http_answer {
    int status;
    json_t *body;
    json_t *extra;
};
typedef enum err http_json_work_fn(struct store_conn *c, void *arg, struct http_answer *a,
                                   struct bb_error *e);
typedef void http_json_after_fn(void *arg, enum err rc, const struct http_answer *a);
void http_req_run_json(struct http_req *r, struct store *s, enum store_txn mode,
                       http_json_work_fn *work, http_json_after_fn *after, void *arg);
/*
 * http_req_run_json for requests that may share a transaction with others
 * of `g` waiting at the same time (store_submit_grouped): g->many does the
 * work of n requests at once, setting answers[i] and rcs[i] (errors[i])
 * per request; a request it fails must have written nothing. When it fails
 * as a whole, or a request is taken alone, `work` answers it alone.
 */
typedef enum err http_json_many_fn(struct store_conn *c, void *const *args,
                                   struct http_answer *const *answers, size_t n, enum err *rcs,
                                   struct bb_error *errors, struct bb_error *e);
struct http_json_group {
    http_json_many_fn *many;
    struct store_group store; /* set by http_json_group_init */
};
void http_json_group_init(struct http_json_group *g, http_json_many_fn *many, size_t max);
void http_req_run_json_grouped(struct http_req *r, struct store *s, enum store_txn mode,
                               const struct http_json_group *g, http_json_work_fn *work,
                               http_json_after_fn *after, void *arg);

/* Add a response header (before the reply). Strings are copied. */
void http_req_add_header(struct http_req *r, const char *name, const char *value);
/* JSON response; steals the reference to `body`. */
void http_reply_json(struct http_req *r, int status, json_t *body);
/* Any body; takes ownership of `body` (malloc'd, may be NULL when len 0). */
void http_reply_raw(struct http_req *r, int status, const char *content_type, char *body,
                    size_t len);
/* application/problem+json from `e`; `extra` (stolen, may be NULL) adds
 * members, such as a lock's holder. */
void http_reply_problem(struct http_req *r, const struct bb_error *e, json_t *extra);
/* The problem document itself (tests, CLI): type, title, status, detail, field. */
json_t *http_problem_json(const struct bb_error *e, const char *instance);

/* ---- waiting without holding a thread --------------------------------------------------- */

/*
 * A list of parked waiters (blocking acquires, long-poll claims) served by
 * one thread. Each entry has a key; waking a key (or all, with NULL) makes
 * its entries retry at once, or only the one that came first
 * (http_waitlist_wake_one). Entries also retry at `retry_at` and give up at
 * their deadline (give_up with ERR_TIMEOUT) or when the list stops
 * (ERR_UNAVAILABLE). Callbacks run on the list's thread.
 */
typedef void http_wait_fn(void *arg);
typedef void http_giveup_fn(void *arg, enum err why);
struct http_waitlist;
/* `on_count` (may be NULL) hears how many entries are parked (a gauge). */
struct http_waitlist *http_waitlist_create(const char *thread_name, void (*on_count)(int64_t));
/* The wake counter of `key`: read it before an attempt, pass it to park
 * with the same key. */
uint64_t http_waitlist_seq(struct http_waitlist *w, const char *key);
/* Park; false when the list is stopping (the caller answers itself). */
bool http_waitlist_park(struct http_waitlist *w, const char *key, int64_t retry_at_mono_ms,
                        int64_t deadline_mono_ms, uint64_t seen_seq, http_wait_fn *retry,
                        http_giveup_fn *give_up, void *arg);
/* Make every entry of `key` (of all keys: NULL) due at once. Returns how
 * many parked entries it made due. */
size_t http_waitlist_wake(struct http_waitlist *w, const char *key);

/*
 * Waiting in line, for what one waiter at a time can have (a lock): a
 * waiter keeps a turn, zeroed before its first park, in its own storage
 * for as long as it waits; the list writes it only while the entry is
 * parked or being taken to run, under its mutex.
 *   order: its place, taken at its first park and kept when it parks again
 *          (a waiter that lost a race for the lock stays first in line);
 *   woken: set when its callback runs, if it runs because of a wake (of its
 *          key, of all keys, or one that came between its http_waitlist_seq
 *          and its park) rather than its retry time. It then holds the
 *          wake: if it ends up neither holding what it waited for nor parked
 *          again (it answers a timeout, its client is gone, the store
 *          failed, it is given up), it must call http_waitlist_pass, or the
 *          other waiters of its key sleep until their retry time.
 */
struct http_wait_turn {
    uint64_t order;
    bool woken;
};
/* http_waitlist_park for a waiter in line; parking clears turn->woken. */
bool http_waitlist_park_in_line(struct http_waitlist *w, const char *key, int64_t retry_at_mono_ms,
                                int64_t deadline_mono_ms, uint64_t seen_seq,
                                struct http_wait_turn *turn, http_wait_fn *retry,
                                http_giveup_fn *give_up, void *arg);
/*
 * Make due the parked entry of `key` that came first (lowest order), and
 * move the key's wake counter as http_waitlist_wake does, so that an entry
 * between its attempt and its park parks due. `key` NULL (notifications may
 * have been lost) wakes every entry. Returns how many parked entries it
 * made due (0 or 1 for a key).
 */
size_t http_waitlist_wake_one(struct http_waitlist *w, const char *key);
/* A waiter leaving without what it waited for: if turn->woken, clears it
 * and wakes the next entry of `key` (http_waitlist_wake_one). Returns how
 * many entries that made due. Call it from the waiter's own flow (the list
 * does not write a turn that is not parked). */
size_t http_waitlist_pass(struct http_waitlist *w, const char *key, struct http_wait_turn *turn);
/* Give every entry up (ERR_UNAVAILABLE) and park no more. */
void http_waitlist_stop(struct http_waitlist *w);
void http_waitlist_destroy(struct http_waitlist *w);

/* ---- client ---------------------------------------------------------------------------- */

struct http_client_response {
    long status;
    struct bb_buf body;
    char content_type[128]; /* the Content-Type header ("" if none; cut if longer) */
};

/* A client that keeps its connection alive between requests. One thread at
 * a time. `token` (may be NULL) adds `Authorization: Bearer`. */
struct http_client;
struct http_client *http_client_create(const char *token, int64_t timeout_ms);
void http_client_destroy(struct http_client *c);
/* Send this header with every request of `c` ("Name", "value"). */
void http_client_add_header(struct http_client *c, const char *name, const char *value);
/* The same, replacing any earlier value of that header (per-request keys). */
void http_client_set_header(struct http_client *c, const char *name, const char *value);
/* Give up a request in flight once stop(arg) turns true (asked about once
 * a second, and as data moves): http_client_do then fails with ERR_IO. */
typedef bool http_client_stop_fn(void *arg);
void http_client_set_stop(struct http_client *c, http_client_stop_fn *stop, void *arg);

/*
 * One request; `body` (JSON text) may be NULL. A connection refused before
 * anything was sent is retried twice (the request never reached a server);
 * nothing else is. On ERR_OK the caller owns resp->body (bb_buf_deinit).
 * Errors: ERR_UNAVAILABLE (cannot connect), ERR_TIMEOUT, ERR_IO (failed, or
 * stopped), ERR_USAGE (bad URL).
 */
BB_WUR enum err http_client_do(struct http_client *c, const char *method, const char *url,
                               const char *body, struct http_client_response *resp,
                               struct bb_error *e);
/* The same with a one-off client. */
BB_WUR enum err http_client_request(const char *method, const char *url, const char *token,
                                    const char *body, int64_t timeout_ms,
                                    struct http_client_response *resp, struct bb_error *e);
/* Percent-encode a path segment into `out`. */
void http_client_escape(const char *segment, struct bb_buf *out);
void http_client_global_init(void);
void http_client_global_cleanup(void);

#endif /* BB_HTTP_H */
