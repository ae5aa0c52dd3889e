/*
 * http_server.c: the libmicrohttpd adapter (the one file that includes
 * <microhttpd.h>).
 *
 * libmicrohttpd calls on_uri once per request with its raw target (the
 * request object begins there, see on_uri), then on_request several times
 * per request: once with the headers, once per body chunk, once more when the body is complete, and
 * once again after a suspended request is resumed. We never answer on the first call (libmicrohttpd
 * 0.9.75 would then send Connection: close) except to refuse an oversized body announced with
 * Expect: 100-continue, where closing is the point.
 *
 * Cross-thread protocol for suspended requests: the HTTP thread sets
 * `suspended` and calls MHD_suspend_connection before the handler hands the
 * request to another thread. That thread builds the response, publishes it
 * with a release store on `response`, and calls MHD_resume_connection as its
 * last touch of the request. libmicrohttpd then calls on_request again on the
 * HTTP thread, which queues the response. A suspended connection is never
 * closed by libmicrohttpd, so the request cannot be freed under the replier.
 *
 * Shutdown waits until every request begun has completed (its response sent),
 * not merely answered: libmicrohttpd closes connections on stop, and would
 * cut off a response still queued.
 *
 * Locking: `mu` guards the counters; nothing else is shared between threads
 * except the atomics marked below.
 */
#include "http/http_int.h"

#include "metrics/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Bodies beyond the limit are read and discarded (so the client can read
 * our 413) up to this much; past it the connection is simply closed. */
enum { DISCARD_LIMIT_BYTES = 64 << 20, MAX_EXTRA_HEADERS = 8 };

struct http_server {
    struct MHD_Daemon *daemon;
    struct http__router router;
    struct http_server_options opt;
    char *api_token;
    int port;
    _Atomic bool draining;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_suspended; /* guarded by mu */
    int n_active;    /* requests begun and not yet completed; guarded by mu */
};

struct header {
    char *name;
    char *value;
};

struct http_req {
    struct http_server *srv;
    struct MHD_Connection *conn;
    struct bb_arena arena;
    const char *method;
    const char *path;
    const struct http__route *route;
    struct http__param params[HTTP__MAX_PARAMS];
    size_t n_params;
    struct bb_buf body;
    size_t body_bytes_seen;
    bool body_too_large;
    bool dispatched;
    bool suspended; /* HTTP thread only */
    json_t *json;
    char id[65];
    char traceparent[BB_TRACEPARENT_LEN + 1];
    struct bb_error err;
    int64_t start_ns;
    struct header headers[MAX_EXTRA_HEADERS];
    int n_headers;
    int status;                              /* written before `response` is published */
    _Atomic(struct MHD_Response *) response; /* published by http_reply_raw */
};

static struct metrics_def M_REQUESTS = {
    .name = "http_requests_total",
    .help = "HTTP requests answered, by route pattern, method and status.",
    .type = METRICS_COUNTER,
    .labels = {"route", "method", "status"},
};
static struct metrics_def M_DURATION = {
    .name = "http_request_duration_seconds",
    .help = "Time from the request's headers to its response being queued.",
    .type = METRICS_HISTOGRAM,
    .labels = {"route", "method"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};
static struct metrics_def M_IN_FLIGHT = {
    .name = "backbone_http_requests_suspended",
    .help = "Requests waiting for the database or a lock (suspended, not holding a thread).",
    .type = METRICS_GAUGE,
};

void
http_server_options_defaults(struct http_server_options *o)
{
    o->host = "127.0.0.1";
    o->port = 8080;
    o->threads = 2;
    o->body_limit_bytes = 1 << 20;
    o->idle_timeout_ms = 60000;
    o->max_connections = 4096;
    o->api_token = NULL;
}

/* ---- accessors --------------------------------------------------------------- */

const char *
http_req_method(const struct http_req *r)
{
    return r->method;
}

const char *
http_req_path(const struct http_req *r)
{
    return r->path;
}

const char *
http_req_route(const struct http_req *r)
{
    return r->route ? r->route->pub.pattern : "unmatched";
}

const char *
http_req_param(const struct http_req *r, const char *name)
{
    for (size_t i = 0; i < r->n_params; i++) {
        if (strcmp(r->params[i].name, name) == 0)
            return r->params[i].value;
    }
    return NULL;
}

const char *
http_req_query(struct http_req *r, const char *key)
{
    BB_ASSERT(!r->suspended);
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

/* Why query_only refuses a parameter. */
enum query_fault { QUERY_OK, QUERY_UNKNOWN, QUERY_REPEATED, QUERY_NO_VALUE, QUERY_NO_NAME };

/* What query_only's iterator carries: the allowed keys, the keys
 * seen so far (to find one given twice), and the first offender. */
struct query_check {
    const char *const *allowed;
    const char *seen[HTTP__MAX_QUERY_KEYS];
    size_t n_seen;
    const char *bad;
    enum query_fault fault;
};

static enum MHD_Result
query_key_check(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    struct query_check *q = cls;
    q->bad = key;
    if (key[0] == '\0') {
        /* An empty piece ("?&limit=1") says nothing, as a trailing '&'
         * (which libmicrohttpd drops) says nothing; "?=5" is a value for
         * no parameter at all. */
        if (value == NULL || value[0] == '\0')
            return MHD_YES;
        q->fault = QUERY_NO_NAME;
        return MHD_NO;
    }
    const char *const *a = q->allowed;
    while (*a && strcmp(*a, key) != 0)
        a++;
    if (*a == NULL) {
        q->fault = QUERY_UNKNOWN;
        return MHD_NO;
    }
    /* "?state" without '=' would read as no filter at all. */
    if (value == NULL) {
        q->fault = QUERY_NO_VALUE;
        return MHD_NO;
    }
    for (size_t i = 0; i < q->n_seen; i++) {
        if (q->seen[i] == *a) {
            q->fault = QUERY_REPEATED;
            return MHD_NO;
        }
    }
    q->seen[q->n_seen++] = *a; /* once per allowed key at most: there is room */
    return MHD_YES;
}

/* Refuse a query-string parameter that is not one of `allowed` (NULL-
 * terminated, at most HTTP__MAX_QUERY_KEYS as the router checked at start;
 * NULL for none), one given twice, or one of them without a value:
 * ERR_INVALID naming it. */
static enum err
query_only(struct http_req *r, const char *const *allowed, struct bb_error *e)
{
    BB_ASSERT(!r->suspended);
    static const char *const none[] = {NULL};
    if (allowed == NULL)
        allowed = none;
    struct query_check q = {.allowed = allowed};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, query_key_check, &q);
    switch (q.fault) {
    case QUERY_OK:
        return ERR_OK;
    case QUERY_REPEATED:
        return bb_fail(e, ERR_INVALID, q.bad, "query parameter '%.64s' is given more than once",
                       q.bad);
    case QUERY_NO_VALUE:
        return bb_fail(e, ERR_INVALID, q.bad, "query parameter '%.64s' needs a value (%.64s=...)",
                       q.bad, q.bad);
    case QUERY_NO_NAME:
    case QUERY_UNKNOWN:
        break;
    }
    struct bb_buf names;
    bb_buf_init(&names);
    for (const char *const *a = allowed; *a; a++) {
        if (a != allowed)
            bb_buf_append(&names, ", ", 2);
        bb_buf_append(&names, *a, strlen(*a));
    }
    const char *takes = names.len ? names.data : "none";
    if (q.fault == QUERY_NO_NAME)
        bb_fail(e, ERR_INVALID, "", "a query parameter without a name: %s %s takes %s", r->method,
                http_req_route(r), takes);
    else
        bb_fail(e, ERR_INVALID, q.bad, "unknown query parameter '%.64s': %s %s takes %s", q.bad,
                r->method, http_req_route(r), takes);
    bb_buf_deinit(&names);
    return ERR_INVALID;
}

enum err
http_req_query_int(struct http_req *r, const char *key, int64_t min, int64_t max, int64_t *out,
                   struct bb_error *e)
{
    const char *v = http_req_query(r, key);
    if (v == NULL)
        return ERR_OK;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || n < min || n > max)
        return bb_fail(e, ERR_INVALID, key, "%s must be an integer from %" PRId64 " to %" PRId64,
                       key, min, max);
    *out = n;
    return ERR_OK;
}

const char *
http_req_header(struct http_req *r, const char *name)
{
    BB_ASSERT(!r->suspended);
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *
http_req_id(const struct http_req *r)
{
    return r->id;
}

const char *
http_req_traceparent(const struct http_req *r)
{
    return r->traceparent;
}

struct bb_arena *
http_req_arena(struct http_req *r)
{
    return &r->arena;
}

struct bb_error *
http_req_error(struct http_req *r)
{
    return &r->err;
}

enum err
http_req_json_object(struct http_req *r, json_t **out, struct bb_error *e)
{
    if (r->json == NULL) {
        if (r->body.len == 0)
            return bb_fail(e, ERR_INVALID, "", "request body must be a JSON object");
        /* A raw NUL byte is never valid JSON, and jansson would stop
         * reading at one instead of refusing the rest. */
        const char *nul = memchr(r->body.data, '\0', r->body.len);
        if (nul)
            return bb_fail(e, ERR_MALFORMED, "", "malformed JSON: NUL byte at offset %zu",
                           (size_t)(nul - r->body.data));
        json_error_t jerr;
        /* Any JSON value parses (a scalar is then refused as "not an
         * object"), and \u0000 is data like any other character; duplicate
         * member names are refused, being ambiguous. */
        r->json = json_loadb(r->body.data, r->body.len,
                             JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (r->json == NULL) {
            char field[sizeof e->field];
            if (json_error_code(&jerr) == json_error_numeric_overflow &&
                bb_json_wide_integer_field(r->body.data, r->body.len, (size_t)jerr.position, field,
                                           sizeof field))
                return bb_fail(e, ERR_INVALID, field, "%s must be an integer within 64 bits",
                               field[0] ? field : "the body");
            return bb_fail(e, ERR_MALFORMED, "", "malformed JSON at line %d, column %d: %s",
                           jerr.line, jerr.column, jerr.text);
        }
    }
    if (!json_is_object(r->json))
        return bb_fail(e, ERR_INVALID, "", "request body must be a JSON object");
    *out = r->json;
    return ERR_OK;
}

enum err
http_req_idempotency_key(struct http_req *r, const char **out, struct bb_error *e)
{
    const char *key = http_req_header(r, "Idempotency-Key");
    if (key == NULL)
        return bb_fail(e, ERR_INVALID, "Idempotency-Key", "the Idempotency-Key header is required");
    if (!store_idem_key_is_valid(key))
        return bb_fail(e, ERR_INVALID, "Idempotency-Key",
                       "Idempotency-Key must be 1 to %d visible ASCII characters",
                       STORE_IDEM_KEY_MAX);
    *out = bb_arena_strdup(&r->arena, key);
    return ERR_OK;
}

enum err
http_req_param_ident(struct http_req *r, const char *name, size_t max, const char **out,
                     struct bb_error *e)
{
    const char *v = http_req_param(r, name);
    if (v == NULL || !bb_ident_is_valid(v, max))
        return bb_fail(e, ERR_INVALID, name,
                       "%s must be 1 to %zu characters from A-Z a-z 0-9 . _ : -", name, max);
    *out = v;
    return ERR_OK;
}

enum err
http_req_json_only(struct http_req *r, const char *const *allowed, json_t **out, struct bb_error *e)
{
    enum err rc = http_req_json_object(r, out, e);
    return rc == ERR_OK ? bb_json_only(*out, allowed, e) : rc;
}

enum err
http_req_json_optional(struct http_req *r, json_t **out, struct bb_error *e)
{
    if (r->json == NULL && r->body.len == 0)
        r->json = json_object();
    return http_req_json_object(r, out, e);
}

/* ---- answering ----------------------------------------------------------------------- */

/*
 * TCP keepalive on every connection: a client that vanished without
 * closing (its host gone, the network cut) is found within about
 * KEEPALIVE_IDLE_S + KEEPALIVE_PROBES * KEEPALIVE_INTERVAL_S seconds of
 * silence, after which http_req_client_gone sees the socket's error, so a
 * request suspended on its behalf (a blocking acquire, a long-poll claim)
 * gives up at its next try instead of taking a lock or jobs for no one.
 */
enum { KEEPALIVE_IDLE_S = 15, KEEPALIVE_INTERVAL_S = 5, KEEPALIVE_PROBES = 3 };

static void
on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
              enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)socket_context;
    if (code != MHD_CONNECTION_NOTIFY_STARTED)
        return;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info == NULL)
        return;
    const int on = 1, idle = KEEPALIVE_IDLE_S, interval = KEEPALIVE_INTERVAL_S,
              probes = KEEPALIVE_PROBES;
    if (setsockopt(info->connect_fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0 ||
        setsockopt(info->connect_fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
        setsockopt(info->connect_fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval) != 0 ||
        setsockopt(info->connect_fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes) != 0)
        log_debug("http.keepalive_failed", "errno=%d", errno);
}

bool
http_req_client_gone(const struct http_req *r)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info == NULL)
        return false;
    /* A suspended connection is not read: its peer's FIN (or RST) waits in
     * the socket, which poll reports without taking anything from it. */
    struct pollfd pfd = {.fd = info->connect_fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void
http_req_suspend(struct http_req *r)
{
    BB_ASSERT(!r->suspended && atomic_load(&r->response) == NULL);
    r->suspended = true;
    pthread_mutex_lock(&r->srv->mu);
    r->srv->n_suspended++;
    metrics_set(&M_IN_FLIGHT, r->srv->n_suspended);
    pthread_mutex_unlock(&r->srv->mu);
    MHD_suspend_connection(r->conn);
}

void
http_req_add_header(struct http_req *r, const char *name, const char *value)
{
    BB_ASSERT(r->n_headers < MAX_EXTRA_HEADERS);
    r->headers[r->n_headers].name = bb_arena_strdup(&r->arena, name);
    r->headers[r->n_headers].value = bb_arena_strdup(&r->arena, value);
    r->n_headers++;
}

void
http_reply_raw(struct http_req *r, int status, const char *content_type, char *body, size_t len)
{
    BB_ASSERT(atomic_load(&r->response) == NULL);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, body ? body : (void *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        bb_panic(__FILE__, __LINE__, "cannot create HTTP response");
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    /* The trace the request runs in (W3C Trace Context Level 2): a client
     * that sent none learns the one its request started. */
    MHD_add_response_header(resp, "traceresponse", r->traceparent);
    for (int i = 0; i < r->n_headers; i++)
        MHD_add_response_header(resp, r->headers[i].name, r->headers[i].value);
    if (r->srv->draining)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = status;
    bool resume = r->suspended;
    struct MHD_Connection *conn = r->conn;
    atomic_store_explicit(&r->response, resp, memory_order_release);
    /* From here on `r` may be answered and freed by the HTTP thread. */
    if (resume)
        MHD_resume_connection(conn);
}

void
http_reply_json(struct http_req *r, int status, json_t *body)
{
    char *text = bb_json_dumps(body);
    json_decref(body);
    http_reply_raw(r, status, "application/json", text, strlen(text));
}

void
http_reply_problem(struct http_req *r, const struct bb_error *e, json_t *extra)
{
    json_t *doc = http_problem_json(e, r->path);
    if (extra) {
        json_object_update(doc, extra);
        json_decref(extra);
    }
    int status = bb_err_http_status(e->code == ERR_OK ? ERR_INTERNAL : e->code);
    if (e->code == ERR_UNAUTHORIZED)
        http_req_add_header(r, "WWW-Authenticate", "Bearer");
    char *text = bb_json_dumps(doc);
    json_decref(doc);
    http_reply_raw(r, status, "application/problem+json", text, strlen(text));
}

/* Carries a request through the store executor. Lives in the request's
 * arena, which only the current owner of the request touches. */
struct run_ctx {
    struct http_req *req;
    store_work_fn *work;
    http_store_reply_fn *reply;
    void *arg;
};

static enum err
run_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct run_ctx *rc = arg;
    bb_log_context_set(rc->req->id, rc->req->traceparent);
    enum err result = rc->work(c, rc->arg, e);
    bb_log_context_clear();
    return result;
}

static void
run_done(void *arg, enum err code, const struct bb_error *e)
{
    struct run_ctx *rc = arg;
    bb_log_context_set(rc->req->id, rc->req->traceparent);
    rc->reply(rc->req, rc->arg, code, e);
    bb_log_context_clear();
}

static void
req_submit(struct http_req *r, struct store *s, enum store_txn mode, const struct store_group *g,
           store_work_fn *work, http_store_reply_fn *reply, void *arg)
{
    struct run_ctx *rc = bb_arena_alloc(&r->arena, sizeof *rc);
    *rc = (struct run_ctx){.req = r, .work = work, .reply = reply, .arg = arg};
    if (!r->suspended)
        http_req_suspend(r);
    enum err code = store_submit_grouped(s, mode, g, run_work, run_done, rc);
    if (code != ERR_OK) {
        bb_fail(&r->err, code, "", "%s",
                code == ERR_OVERLOADED ? "too many requests waiting for the database"
                                       : "server is shutting down");
        http_reply_problem(r, &r->err, NULL);
    }
}

void
http_req_run(struct http_req *r, struct store *s, enum store_txn mode, store_work_fn *work,
             http_store_reply_fn *reply, void *arg)
{
    req_submit(r, s, mode, NULL, work, reply, arg);
}

/* http_req_run_json's unit: its work, its argument and its answer. */
struct json_unit {
    http_json_work_fn *work;
    http_json_after_fn *after;
    void *arg;
    struct http_answer answer;
};

static void
answer_clear(struct http_answer *a)
{
    json_decref(a->body);
    json_decref(a->extra);
    *a = (struct http_answer){.status = 200};
}

static enum err
json_unit_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct json_unit *u = arg;
    answer_clear(&u->answer); /* a retried unit starts afresh */
    return u->work(c, u->arg, &u->answer, e);
}

static void
json_unit_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct json_unit *u = arg;
    if (u->after)
        u->after(u->arg, rc, &u->answer);
    if (rc != ERR_OK) {
        json_decref(u->answer.body);
        http_reply_problem(r, e, u->answer.extra);
        return;
    }
    json_decref(u->answer.extra);
    http_reply_json(r, u->answer.status, u->answer.body ? u->answer.body : json_object());
}

void
http_req_run_json(struct http_req *r, struct store *s, enum store_txn mode, http_json_work_fn *work,
                  http_json_after_fn *after, void *arg)
{
    http_req_run_json_grouped(r, s, mode, NULL, work, after, arg);
}

/* The store's `many` for a group of JSON requests: unwraps each unit to
 * its argument and answer. */
static enum err
json_units_many(struct store_conn *c, void *const *units, size_t n, enum err *rcs,
                struct bb_error *errors, void *ctx, struct bb_error *e)
{
    const struct http_json_group *g = ctx;
    void **args = xcalloc(n, sizeof *args);
    struct http_answer **answers = xcalloc(n, sizeof *answers);
    for (size_t i = 0; i < n; i++) {
        const struct run_ctx *rc = units[i];
        struct json_unit *u = rc->arg;
        answer_clear(&u->answer); /* a retried group starts afresh */
        args[i] = u->arg;
        answers[i] = &u->answer;
    }
    enum err rc = g->many(c, (void *const *)args, answers, n, rcs, errors, e);
    free(answers);
    free(args);
    return rc;
}

void
http_json_group_init(struct http_json_group *g, http_json_many_fn *many, size_t max)
{
    *g = (struct http_json_group){.many = many,
                                  .store = {.many = json_units_many, .ctx = g, .max = max}};
}

void
http_req_run_json_grouped(struct http_req *r, struct store *s, enum store_txn mode,
                          const struct http_json_group *g, http_json_work_fn *work,
                          http_json_after_fn *after, void *arg)
{
    struct json_unit *u = bb_arena_alloc(&r->arena, sizeof *u);
    *u = (struct json_unit){.work = work, .after = after, .arg = arg, .answer = {.status = 200}};
    req_submit(r, s, mode, g ? &g->store : NULL, json_unit_work, json_unit_reply, u);
}

static void
reply_error(struct http_req *r, enum err code, const char *field, const char *detail)
{
    bb_fail(&r->err, code, field, "%s", detail);
    http_reply_problem(r, &r->err, NULL);
}

/* ---- request lifecycle ------------------------------------------------------------------- */

static bool
id_is_sane(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= 64 || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return n > 0;
}

/* A request begins: `uri` is its target as sent (the query is cut off). */
static struct http_req *
req_create(struct http_server *srv, struct MHD_Connection *conn, const char *uri)
{
    struct http_req *r = xcalloc(1, sizeof *r);
    pthread_mutex_lock(&srv->mu);
    srv->n_active++;
    pthread_mutex_unlock(&srv->mu);
    r->srv = srv;
    r->conn = conn;
    r->start_ns = bb_mono_ns();
    bb_arena_init(&r->arena);
    bb_buf_init(&r->body);
    size_t path_len = strcspn(uri, "?#");
    char *path = bb_arena_alloc(&r->arena, path_len + 1);
    memcpy(path, uri, path_len);
    path[path_len] = '\0';
    r->path = path;
    return r;
}

/* Its headers are in: method, request id, trace. */
static void
req_begin(struct http_req *r, const char *method)
{
    r->method = bb_arena_strdup(&r->arena, method);
    const char *rid = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && id_is_sane(rid))
        bb_strlcpy(r->id, rid, sizeof r->id);
    else
        bb_uuid7(r->id);
    const char *tp = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "traceparent");
    if (tp && bb_traceparent_is_valid(tp))
        bb_strlcpy(r->traceparent, tp, sizeof r->traceparent);
    else
        bb_traceparent_new(r->traceparent); /* the request starts a trace */
}

static void
req_destroy(struct http_req *r)
{
    json_decref(r->json);
    bb_buf_deinit(&r->body);
    bb_arena_deinit(&r->arena);
    struct MHD_Response *resp = atomic_load(&r->response);
    if (resp)
        MHD_destroy_response(resp);
    free(r);
}

static const char *
method_label(const char *m)
{
    static const char *const known[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"};
    for (size_t i = 0; i < BB_ARRAY_LEN(known); i++) {
        if (strcmp(m, known[i]) == 0)
            return known[i];
    }
    return "other";
}

static void
req_record(struct http_req *r)
{
    double secs = (double)(bb_mono_ns() - r->start_ns) / 1e9;
    char status[8];
    snprintf(status, sizeof status, "%d", r->status);
    const char *route = http_req_route(r);
    const char *method = method_label(r->method);
    metrics_add(&M_REQUESTS, 1, route, method, status);
    metrics_observe(&M_DURATION, secs, route, method);
    if (bb_log_level <= BB_LOG_INFO) {
        /* Paths are user input: log at most 200 bytes, ASCII only. */
        char path[201];
        size_t n = 0;
        for (const char *p = r->path; *p && n < sizeof path - 1; p++)
            path[n++] = (char)((*p >= 0x20 && *p < 0x7f) ? *p : '?');
        path[n] = '\0';
        bb_log_context_set(r->id, r->traceparent);
        log_info("http.request", "method=%s route=%s path=%s status=%d duration_us=%lld", method,
                 route, path, r->status, (long long)(secs * 1e6));
        bb_log_context_clear();
    }
}

/* Constant-time comparison whose timing depends only on the length of
 * `given`. */
static bool
token_equal(const char *given, const char *expected)
{
    size_t g = strlen(given), x = strlen(expected);
    volatile unsigned char diff = (unsigned char)(g != x);
    for (size_t i = 0; i < g; i++)
        diff |= (unsigned char)(given[i] ^ expected[x ? i % x : 0]);
    return diff == 0;
}

static bool
authorized(struct http_req *r)
{
    const char *token = r->srv->api_token;
    if (token == NULL || (r->route && r->route->pub.public_route))
        return true;
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    return token_equal(h + 7, token);
}

/* Bodies are JSON. Besides JSON types we accept no type at all and curl's
 * default for -d (form-urlencoded; we never parse forms), so `curl -d '{..}'`
 * works; anything else is a client confusion worth a 415. */
static bool
content_type_ok(struct http_req *r)
{
    if (r->body.len == 0)
        return true;
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
    return ct == NULL || strstr(ct, "json") != NULL ||
           strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0;
}

/* The body is complete: route, check, and hand to the handler. */
static void
dispatch(struct http_req *r)
{
    struct http_server *srv = r->srv;
    if (srv->draining) {
        reply_error(r, ERR_UNAVAILABLE, "", "server is shutting down");
        return;
    }
    char allow[64];
    enum http__match m = http__router_match(&srv->router, r->method, r->path, &r->arena, &r->route,
                                            r->params, &r->n_params, allow, sizeof allow);
    if (!authorized(r)) {
        reply_error(r, ERR_UNAUTHORIZED, "Authorization", "missing or wrong bearer token");
        return;
    }
    if (r->body_too_large) {
        char detail[96];
        snprintf(detail, sizeof detail, "request body is larger than %lld bytes",
                 (long long)srv->opt.body_limit_bytes);
        reply_error(r, ERR_TOO_LARGE, "", detail);
        return;
    }
    if (m == HTTP__NO_PATH) {
        reply_error(r, ERR_NOT_FOUND, "", "no such route");
        return;
    }
    if (m == HTTP__NO_METHOD) {
        http_req_add_header(r, "Allow", allow);
        char detail[128];
        snprintf(detail, sizeof detail, "%.16s is not allowed here; allowed: %s", r->method, allow);
        reply_error(r, ERR_METHOD, "", detail);
        return;
    }
    if (!content_type_ok(r)) {
        reply_error(r, ERR_MEDIA_TYPE, "Content-Type", "request body must be application/json");
        return;
    }
    /* Before the handler: a parameter the route does not take is a typo,
     * and a write must not go ahead on one. */
    if (query_only(r, r->route->pub.query, &r->err) != ERR_OK) {
        http_reply_problem(r, &r->err, NULL);
        return;
    }
    bb_log_context_set(r->id, r->traceparent);
    r->route->pub.fn(r, r->route->pub.ctx);
    bb_log_context_clear();
}

static enum MHD_Result
queue_response(struct http_req *r)
{
    struct MHD_Response *resp = atomic_load_explicit(&r->response, memory_order_acquire);
    BB_ASSERT(resp != NULL);
    return MHD_queue_response(r->conn, (unsigned)r->status, resp);
}

/* First call: headers only. Refuse a too-large body early if the client is
 * waiting for 100-continue; otherwise only note it and discard the body. */
static void
check_announced_length(struct http_req *r)
{
    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl == NULL)
        return;
    char *end;
    unsigned long long n = strtoull(cl, &end, 10);
    if (*end == '\0' && n > (unsigned long long)r->srv->opt.body_limit_bytes)
        r->body_too_large = true;
}

/* libmicrohttpd's unescaping of the query's names and values (and of the
 * path, whose decoded form we never use: routing works on the raw path). */
static size_t
unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return http__unescape(s);
}

/*
 * Called once per request with its target as the client sent it, before
 * libmicrohttpd decodes anything: the request object begins here, so that
 * it keeps the raw path (routing splits it on '/' before decoding; see
 * http_route.c). What we return is the request's *con_cls, which
 * on_completed frees even when libmicrohttpd refuses the request itself
 * (headers too large, bad chunking) and on_request never sees it.
 */
static void *
on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    return req_create(cls, conn, uri);
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
           const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct http_server *srv = cls;
    struct http_req *r = *con_cls;
    if (r == NULL) {
        /* on_uri always runs first; should it not, the decoded path is
         * all there is. */
        r = req_create(srv, conn, url);
        *con_cls = r;
    }
    if (r->method == NULL) {
        req_begin(r, method);
        check_announced_length(r);
        const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");
        if (r->body_too_large && expect && strcasecmp(expect, "100-continue") == 0) {
            dispatch(r); /* answers 413 (or 401/404 first) */
            return queue_response(r);
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        r->body_bytes_seen += n;
        if (r->body_bytes_seen > DISCARD_LIMIT_BYTES)
            return MHD_NO; /* not worth reading further: drop the connection */
        if (r->body.len + n > (size_t)srv->opt.body_limit_bytes)
            r->body_too_large = true;
        if (r->body_too_large)
            bb_buf_deinit(&r->body);
        else
            bb_buf_append(&r->body, upload_data, n);
        return MHD_YES;
    }
    if (!r->dispatched) {
        r->dispatched = true;
        dispatch(r);
        if (r->suspended)
            return MHD_YES; /* answered later; resumed calls land below */
    } else if (r->suspended) {
        r->suspended = false;
        pthread_mutex_lock(&srv->mu);
        srv->n_suspended--;
        metrics_set(&M_IN_FLIGHT, srv->n_suspended);
        pthread_cond_broadcast(&srv->cv);
        pthread_mutex_unlock(&srv->mu);
    }
    if (atomic_load_explicit(&r->response, memory_order_acquire) == NULL) {
        /* A handler returned without answering or suspending: a bug, but
         * the client still gets an answer. */
        log_error("http.unanswered", "route=%s", http_req_route(r));
        reply_error(r, ERR_INTERNAL, "", "handler did not answer");
    }
    return queue_response(r);
}

static void
on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    struct http_req *r = *con_cls;
    if (r == NULL)
        return;
    struct http_server *srv = r->srv;
    if (atomic_load(&r->response) != NULL)
        req_record(r);
    else
        log_debug("http.aborted", "path=%s code=%d", r->path, (int)toe);
    /* Resumed on a connection its client had closed: libmicrohttpd ends it
     * here without calling the handler again, where it would have stopped
     * counting as suspended. */
    bool suspended = r->suspended;
    req_destroy(r);
    *con_cls = NULL;
    pthread_mutex_lock(&srv->mu);
    if (suspended) {
        srv->n_suspended--;
        metrics_set(&M_IN_FLIGHT, srv->n_suspended);
    }
    srv->n_active--;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

BB_PRINTF(2, 0) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    log_debug("http.mhd", "message=%s", msg);
}

enum err
http_server_start(const struct http_server_options *o, const struct http_route *routes,
                  size_t n_routes, struct http_server **out, struct bb_error *e)
{
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } addr;
    memset(&addr, 0, sizeof addr);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, o->host, &addr.v4.sin_addr) == 1) {
        addr.v4.sin_family = AF_INET;
        addr.v4.sin_port = htons((uint16_t)o->port);
    } else if (inet_pton(AF_INET6, o->host, &addr.v6.sin6_addr) == 1) {
        addr.v6.sin6_family = AF_INET6;
        addr.v6.sin6_port = htons((uint16_t)o->port);
        flags |= MHD_USE_IPv6;
    } else {
        return bb_fail(e, ERR_INVALID, "host", "'%s' is not a numeric IPv4 or IPv6 address",
                       o->host);
    }
    metrics_register(&M_REQUESTS);
    metrics_register(&M_DURATION);
    metrics_register(&M_IN_FLIGHT);

    struct http_server *srv = xcalloc(1, sizeof *srv);
    srv->opt = *o;
    srv->api_token = o->api_token && *o->api_token ? xstrdup(o->api_token) : NULL;
    srv->opt.api_token = srv->api_token;
    pthread_mutex_init(&srv->mu, NULL);
    bb_cond_init_mono(&srv->cv);
    enum err rc = http__router_init(&srv->router, routes, n_routes, e);
    if (rc != ERR_OK)
        goto fail;
    srv->daemon = MHD_start_daemon(
        flags, (uint16_t)o->port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)o->threads,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        srv, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((o->idle_timeout_ms + 999) / 1000),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv,
        MHD_OPTION_END);
    if (srv->daemon == NULL) {
        rc = bb_fail(e, ERR_UNAVAILABLE, "port", "cannot listen on %s:%d (in use?)", o->host,
                     o->port);
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : o->port;
    *out = srv;
    return ERR_OK;
fail:
    http__router_deinit(&srv->router);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    free(srv->api_token);
    free(srv);
    return rc;
}

int
http_server_port(const struct http_server *s)
{
    return s->port;
}

void
http_server_drain(struct http_server *s)
{
    if (s == NULL || s->draining)
        return;
    /* The listen socket stays open until http_server_stop: MHD_quiesce_daemon
     * races with libmicrohttpd's own epoll workers (an open defect in 0.9.75
     * that aborts the process when both remove the listen FD), so new
     * connections are accepted and answered 503 instead. */
    s->draining = true;
}

bool
http_server_stop(struct http_server *s, int64_t timeout_ms)
{
    if (s == NULL)
        return true;
    http_server_drain(s);
    int64_t deadline = bb_mono_ms() + timeout_ms;
    pthread_mutex_lock(&s->mu);
    while (s->n_active > 0 && bb_mono_ms() < deadline)
        bb_cond_wait_ms(&s->cv, &s->mu, deadline - bb_mono_ms());
    int suspended = s->n_suspended, active = s->n_active;
    pthread_mutex_unlock(&s->mu);
    if (suspended > 0) {
        /* Stopping now would violate libmicrohttpd's contract; leak instead. */
        log_error("http.stop_timeout", "suspended=%d", suspended);
        return false;
    }
    if (active > 0)
        log_warn("http.stop_timeout", "unfinished=%d", active);
    MHD_stop_daemon(s->daemon);
    http__router_deinit(&s->router);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->api_token);
    free(s);
    return true;
}
