/*
 * fuzz_api.c: every route that takes a body, a query string or a path
 * parameter, sent to the real server. On first use the harness starts
 * `backbone serve` (cli_serve) in a thread of this process, on a fresh
 * SQLite database in a temporary directory, with no embedded workers (no
 * job ever runs, so no handler calls out) and a well-behaved PSP mock; it
 * creates a few objects (a lock, jobs pending, running and dead, a
 * schedule, a product, a reservation, an order, a payment, a checkout and
 * its saga) whose names fill path parameters. At exit it stops the server
 * with SIGTERM, as a terminal would, and removes the directory.
 *
 * An input is:
 *   byte 0   the route (ROUTES[b % N])
 *   byte 1   its path parameter: < 64 one of the objects above, < 128 an
 *            object made for this input (fresh_object), else a bad one
 *            (empty, long, %-escapes, unknown)
 *   byte 2   bits 0-2 the Idempotency-Key header (none, a few keys, bad
 *            ones); bit 3: an empty body is sent as no body at all; bit 4:
 *            the path parameter is the input's, not byte 1's (below)
 *   the rest the body, or the query string of a GET (up to a NUL byte:
 *            the client sends C strings); with bit 4, what comes before
 *            its first newline is the path parameter (bytes a URL cannot
 *            hold escaped, '%' kept)
 * BB_FUZZ_VERBOSE=1 in the environment prints each request and its answer;
 * BB_FUZZ_API_DB=URL runs the server on that database instead (an empty
 * one: PostgreSQL's store code is fuzzed so).
 *
 * What must hold for every input (abort() otherwise, so libFuzzer keeps it):
 * - the server answers, never with a 5xx: one client sending one request
 *   at a time cannot overload it, the PSP mock is kept from failing
 *   (psp_reset), and the waits that could end in a timeout are bounded
 *   (fits_in_time), so no 502, 503 or 504 is legitimate here;
 * - a 4xx is application/problem+json with string type
 *   (urn:backbone:problem:...), title and detail and an integer status
 *   equal to the HTTP status, as tests/e2e's problem() checks;
 * - an answer that says it is JSON parses;
 * - a path parameter that cannot be a name (param_is_possible) is not
 *   accepted (a 2xx would mean the request reached another route);
 * - a request idempotent on a key, sent twice, is answered the same
 *   (check_replay);
 * - a fenced write that was accepted, or a job submitted, reads back as
 *   written (check_fenced_read, check_job_read).
 */
#include "fuzz.h"

#include "base/base.h"
#include "cli/cli.h"
#include "http/http.h"
#include "locks/locks.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Longer than any answer takes, shorter than libFuzzer's -timeout=10. */
#define CLIENT_TIMEOUT_MS 8000
/* A blocking acquire or a long-poll claim may wait this long (see fits_in_time). */
#define WAIT_MAX_MS 1000

/* Which objects fill a route's {param}. */
enum param {
    P_NONE,
    P_LOCK,
    P_FENCED,
    P_JOB,
    P_QUEUE,
    P_SCHEDULE,
    P_DLQ,
    P_SKU,
    P_RESERVATION,
    P_ORDER,
    P_PAYMENT,
    P_SAGA,
    P_CHECKOUT,
    P_COUNT
};

enum rest { BODY, QUERY };

enum route_flag {
    WAITS = 1,  /* takes wait_ms (see fits_in_time) */
    REPLAYS = 2 /* idempotent on a key: sent twice, answered the same */
};

struct route {
    const char *method;
    const char *before; /* the path up to the parameter, or all of it */
    enum param param;
    const char *after; /* the path after the parameter */
    enum rest rest;
    unsigned flags; /* enum route_flag */
};

/* Every POST, PUT and DELETE, and every GET with a query string or a path
 * parameter, of the route tables (src/MODULE/MODULE_http.c, saga_engine.c,
 * outbox.c: grep `_routes(`). Appending keeps the corpus's meaning. */
static const struct route ROUTES[] = {
    /* locks */
    {"POST", "/locks/", P_LOCK, "/acquire", BODY, WAITS},
    {"POST", "/locks/", P_LOCK, "/renew", BODY, 0},
    {"POST", "/locks/", P_LOCK, "/release", BODY, 0},
    {"GET", "/locks/", P_LOCK, "", QUERY, 0},
    {"GET", "/locks", P_NONE, "", QUERY, 0},
    {"PUT", "/fenced/", P_FENCED, "", BODY, 0},
    {"GET", "/fenced/", P_FENCED, "", QUERY, 0},
    /* jobs */
    {"POST", "/jobs", P_NONE, "", BODY, 0},
    {"POST", "/jobs/batch", P_NONE, "", BODY, 0},
    {"GET", "/jobs", P_NONE, "", QUERY, 0},
    {"GET", "/jobs/", P_JOB, "", QUERY, 0},
    {"GET", "/jobs/", P_JOB, "/history", QUERY, 0},
    {"POST", "/jobs/", P_JOB, "/run", BODY, 0},
    {"POST", "/jobs/", P_JOB, "/retry", BODY, 0},
    {"POST", "/jobs/", P_JOB, "/cancel", BODY, 0},
    {"POST", "/jobs/", P_JOB, "/heartbeat", BODY, 0},
    {"POST", "/jobs/", P_JOB, "/complete", BODY, 0},
    {"POST", "/jobs/", P_JOB, "/fail", BODY, 0},
    {"GET", "/queues", P_NONE, "", QUERY, 0},
    {"GET", "/queues/", P_QUEUE, "", QUERY, 0},
    {"PUT", "/queues/", P_QUEUE, "", BODY, 0},
    {"POST", "/queues/", P_QUEUE, "/pause", BODY, 0},
    {"POST", "/queues/", P_QUEUE, "/resume", BODY, 0},
    {"POST", "/queues/", P_QUEUE, "/claim", BODY, WAITS},
    {"GET", "/schedules", P_NONE, "", QUERY, 0},
    {"POST", "/schedules", P_NONE, "", BODY, 0},
    {"GET", "/schedules/", P_SCHEDULE, "", QUERY, 0},
    {"POST", "/schedules/", P_SCHEDULE, "/pause", BODY, 0},
    {"POST", "/schedules/", P_SCHEDULE, "/resume", BODY, 0},
    {"DELETE", "/schedules/", P_SCHEDULE, "", BODY, 0},
    {"GET", "/dlq", P_NONE, "", QUERY, 0},
    {"GET", "/dlq/groups", P_NONE, "", QUERY, 0},
    {"GET", "/dlq/", P_DLQ, "", QUERY, 0},
    {"POST", "/dlq/", P_DLQ, "/redrive", BODY, 0},
    {"POST", "/dlq/redrive", P_NONE, "", QUERY, 0},
    {"DELETE", "/dlq", P_NONE, "", QUERY, 0},
    /* outbox */
    {"GET", "/outbox", P_NONE, "", QUERY, 0},
    /* inventory */
    {"POST", "/inventory/products", P_NONE, "", BODY, 0},
    {"GET", "/inventory/products/", P_SKU, "", QUERY, 0},
    {"POST", "/inventory/products/", P_SKU, "/stock", BODY, REPLAYS},
    {"GET", "/inventory/products/", P_SKU, "/availability", QUERY, 0},
    {"POST", "/inventory/reservations", P_NONE, "", BODY, 0},
    {"GET", "/inventory/reservations/", P_RESERVATION, "", QUERY, 0},
    {"DELETE", "/inventory/reservations/", P_RESERVATION, "", BODY, 0},
    {"POST", "/inventory/reservations/", P_RESERVATION, "/commit", BODY, 0},
    {"POST", "/inventory/adjust", P_NONE, "", BODY, REPLAYS},
    /* orders */
    {"POST", "/orders", P_NONE, "", BODY, 0},
    {"GET", "/orders", P_NONE, "", QUERY, 0},
    {"GET", "/orders/", P_ORDER, "", QUERY, 0},
    {"PUT", "/orders/", P_ORDER, "/confirm", BODY, 0},
    {"PUT", "/orders/", P_ORDER, "/cancel", BODY, 0},
    /* payments */
    {"POST", "/payments/authorize", P_NONE, "", BODY, REPLAYS},
    {"POST", "/payments/capture/", P_PAYMENT, "", BODY, 0},
    {"POST", "/payments/void/", P_PAYMENT, "", BODY, 0},
    {"POST", "/payments/", P_PAYMENT, "/refund", BODY, REPLAYS},
    {"GET", "/payments/", P_PAYMENT, "", QUERY, 0},
    {"GET", "/payments", P_NONE, "", QUERY, 0},
    {"PUT", "/psp/config", P_NONE, "", BODY, 0},
    {"GET", "/psp/charges", P_NONE, "", QUERY, 0},
    /* sagas */
    {"GET", "/sagas", P_NONE, "", QUERY, 0},
    {"GET", "/sagas/", P_SAGA, "", QUERY, 0},
    {"POST", "/sagas/", P_SAGA, "/retry", BODY, 0},
    /* checkout */
    {"POST", "/checkout", P_NONE, "", BODY, REPLAYS},
    {"GET", "/checkout/", P_CHECKOUT, "", QUERY, 0},
};

/* Path parameters no object has: the router and the identifier checks.
 * `impossible` ones are no name at all (a NUL, a space, bytes outside
 * every identifier's alphabet, or far too long): a success for
 * one means the request was taken for another route or another name. */
struct bad_param {
    const char *text; /* NULL: LONG_PARAM, HUGE_PARAM */
    bool impossible;
};
static const struct bad_param BAD_PARAMS[] = {
    {"nope", false},
    {"", false}, /* "/jobs/" is "/jobs": a trailing slash is tolerated */
    {"%2e%2e", false},
    {"a%2Fb", false}, /* "a/b": another path (see param_is_possible) */
    {"%00", true},
    {"x%00", true},
    {"%ZZ", true},
    {"%C3%28", true},
    {"%F0%9F%92%A9", true},
    {"a%20b", true},
    {"-1", false},
    {"0", false},
    {"18446744073709551616", false},
    {"01a24b23-63f9-7799-9036-29f6f38237a8", false},
    {NULL, false}, /* LONG_PARAM: 300 characters */
    {NULL, true},  /* HUGE_PARAM: 5000 */
};
#define N_BAD_PARAMS BB_ARRAY_LEN(BAD_PARAMS)

/* Idempotency-Key headers, by bits 0-2 of byte 2 (NULL: none). */
static const char *const KEYS[] = {NULL,    NULL,        NULL,       "fz-k1",
                                   "fz-k2", "has space", "\xc3\xa9", NULL /* LONG_PARAM */};

#define MAX_VALUES 4
struct harness {
    pthread_t server;
    atomic_bool server_done;
    int server_code;
    char dir[64];
    char port[16];
    char base[64];
    char *argv[32];
    int argc;
    struct http_client *plain;
    struct http_client *keyed;
    char *values[P_COUNT][MAX_VALUES]; /* the objects' names, by param */
    size_t n_values[P_COUNT];
    char long_param[301];
    char huge_param[5001];
    bool quiet;     /* setup() keeps refusals to itself (fresh objects) */
    unsigned fresh; /* objects made for inputs so far (their names' suffix) */
};
static struct harness H;

/* ---- the server ------------------------------------------------------------------------ */

static void *
serve_thread(void *arg)
{
    (void)arg;
    H.server_code = cli_serve(H.argc, H.argv);
    atomic_store(&H.server_done, true);
    return NULL;
}

/* A port nobody listens on now (the kernel's pick for port 0). */
static int
free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("fuzz_api: free port");
        abort();
    }
    close(fd);
    return ntohs(a.sin_port);
}

static void
remove_dir(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *ent;
    while (d != NULL && (ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
            continue;
        char child[512];
        snprintf(child, sizeof child, "%s/%s", path, ent->d_name);
        unlink(child);
    }
    if (d != NULL)
        closedir(d);
    rmdir(path);
}

static void
harness_stop(void)
{
    pthread_kill(H.server, SIGTERM);
    pthread_join(H.server, NULL);
    http_client_destroy(H.plain);
    http_client_destroy(H.keyed);
    for (int p = 0; p < P_COUNT; p++)
        for (size_t i = 0; i < H.n_values[p]; i++)
            free(H.values[p][i]);
    http_client_global_cleanup();
    remove_dir(H.dir);
}

static void
add_arg(const char *a)
{
    BB_ASSERT((size_t)H.argc < BB_ARRAY_LEN(H.argv) - 1);
    H.argv[H.argc++] = (char *)a;
}

static void
server_start(void)
{
    static char db[512];
    snprintf(H.dir, sizeof H.dir, "/tmp/bb-fuzz-api-XXXXXX");
    if (mkdtemp(H.dir) == NULL) {
        perror("fuzz_api: mkdtemp");
        abort();
    }
    /* BB_FUZZ_API_DB: another database (an empty PostgreSQL one, say). */
    const char *other = getenv("BB_FUZZ_API_DB");
    snprintf(db, sizeof db, "%s", other ? other : "");
    if (other == NULL)
        snprintf(db, sizeof db, "sqlite:%s/api.db", H.dir);
    snprintf(H.port, sizeof H.port, "%d", free_port());
    snprintf(H.base, sizeof H.base, "http://127.0.0.1:%s", H.port);
    const char *args[] = {"--db",
                          db,
                          "--host",
                          "127.0.0.1",
                          "--port",
                          H.port,
                          "--workers",
                          "0",
                          "--log-level",
                          "error",
                          "--api-token",
                          "",
                          "--psp-latency-ms",
                          "0",
                          "--psp-failure-rate",
                          "0",
                          "--psp-timeout-rate",
                          "0",
                          "--psp-decline-rate",
                          "0",
                          "--shutdown-timeout",
                          "5s"};
    for (size_t i = 0; i < BB_ARRAY_LEN(args); i++)
        add_arg(args[i]);
    if (pthread_create(&H.server, NULL, serve_thread, NULL) != 0)
        abort();
    /* Ready when /healthz answers 200; cli_serve returning means it failed. */
    char url[128];
    snprintf(url, sizeof url, "%s/healthz", H.base);
    for (int i = 0;; i++) {
        struct http_client_response resp;
        struct bb_error e;
        if (http_client_do(H.plain, "GET", url, NULL, &resp, &e) == ERR_OK) {
            long status = resp.status;
            bb_buf_deinit(&resp.body);
            if (status == 200)
                return;
        }
        if (atomic_load(&H.server_done) || i == 300) {
            fprintf(stderr, "fuzz_api: the server did not start (exit %d)\n", H.server_code);
            abort();
        }
        bb_sleep_ms(50);
    }
}

/* ---- the objects whose names fill path parameters ------------------------------------- */

/* Send one request; the parsed answer when its status is 2xx, else NULL. */
static json_t *
setup(const char *method, const char *path, const char *body, const char *key)
{
    struct http_client *c = H.plain;
    if (key != NULL) {
        c = H.keyed;
        http_client_set_header(c, "Idempotency-Key", key);
    }
    char url[512];
    snprintf(url, sizeof url, "%s%s", H.base, path);
    struct http_client_response resp;
    struct bb_error e;
    if (http_client_do(c, method, url, body, &resp, &e) != ERR_OK) {
        fprintf(stderr, "fuzz_api: setup %s %s: %s\n", method, path, e.detail);
        abort();
    }
    json_t *doc = NULL;
    if (resp.status / 100 == 2)
        doc = json_loadb(resp.body.data ? resp.body.data : "", resp.body.len, 0, NULL);
    else if (!H.quiet)
        fprintf(stderr, "fuzz_api: setup %s %s: %ld %.*s\n", method, path, resp.status,
                (int)resp.body.len, resp.body.data ? resp.body.data : "");
    bb_buf_deinit(&resp.body);
    return doc;
}

/* Member `member` of `doc` as text (a string or an integer; heap), or NULL. */
static char *
member_text(const json_t *doc, const char *member)
{
    const json_t *v = doc ? json_object_get(doc, member) : NULL;
    char text[64];
    if (json_is_string(v))
        return xstrdup(json_string_value(v));
    if (!json_is_integer(v))
        return NULL;
    snprintf(text, sizeof text, "%lld", (long long)json_integer_value(v));
    return xstrdup(text);
}

/* Record doc[member] (a string or an integer) as a value of `p`. */
static void
keep(enum param p, const json_t *doc, const char *member)
{
    char *text = member_text(doc, member);
    if (text == NULL) {
        fprintf(stderr, "fuzz_api: setup: no %s in the answer\n", member);
        abort();
    }
    BB_ASSERT(H.n_values[p] < MAX_VALUES);
    H.values[p][H.n_values[p]++] = text;
}

static void
keep_name(enum param p, const char *name)
{
    BB_ASSERT(H.n_values[p] < MAX_VALUES);
    H.values[p][H.n_values[p]++] = xstrdup(name);
}

/* The first job of a claim's answer. */
static const json_t *
claimed(const json_t *doc)
{
    return json_array_get(json_object_get(doc, "jobs"), 0);
}

static void
fixtures_create(void)
{
    json_t *d;
    json_decref(
        setup("POST", "/locks/fz-lock/acquire", "{\"owner\":\"fuzz\",\"ttl_ms\":86400000}", NULL));
    keep_name(P_LOCK, "fz-lock");
    keep_name(P_LOCK, "fz-free");
    keep_name(P_FENCED, "fz-key");
    /* Jobs of an external handler (no worker here runs them): one pending,
     * one running under a lease, one dead. */
    json_decref(setup("PUT", "/queues/fz", "{\"max_attempts\":2}", NULL));
    json_decref(setup("PUT", "/queues/fz-fresh", "{\"max_attempts\":2}", NULL));
    keep_name(P_QUEUE, "fz");
    keep_name(P_QUEUE, "default");
    const char *job = "{\"queue\":\"fz\",\"handler\":\"external:fz\"}";
    json_decref(setup("POST", "/jobs", job, NULL));
    json_decref(setup("POST", "/jobs", job, NULL));
    d = setup("POST", "/queues/fz/claim", "{\"worker\":\"fz\",\"max\":2}", NULL);
    keep(P_JOB, claimed(d), "job_id");
    char path[128], body[512];
    snprintf(path, sizeof path, "/jobs/%s/fail", H.values[P_JOB][0]);
    snprintf(body, sizeof body, "{\"token\":%lld,\"error\":\"fz\",\"retry\":false}",
             (long long)json_integer_value(json_object_get(claimed(d), "lease_token")));
    json_decref(setup("POST", path, body, NULL));
    keep(P_DLQ, claimed(d), "job_id");
    keep(P_JOB, json_array_get(json_object_get(d, "jobs"), 1), "job_id");
    json_decref(d);
    d = setup("POST", "/jobs", job, NULL);
    keep(P_JOB, d, "job_id");
    json_decref(d);
    json_decref(setup("POST", "/schedules",
                      "{\"name\":\"fz-sched\",\"every_ms\":3600000,\"handler\":\"external:fz\","
                      "\"queue\":\"fz\"}",
                      NULL));
    keep_name(P_SCHEDULE, "fz-sched");
    json_decref(setup("POST", "/inventory/products",
                      "{\"sku\":\"FZ-1\",\"name\":\"fz\",\"stock\":1000000}", NULL));
    keep_name(P_SKU, "FZ-1");
    json_decref(setup("POST", "/inventory/reservations",
                      "{\"order_id\":\"fz-order\",\"items\":[{\"sku\":\"FZ-1\",\"qty\":1}]}",
                      NULL));
    keep_name(P_RESERVATION, "fz-order");
    const char *items = "[{\"sku\":\"FZ-1\",\"qty\":1,\"unit_price\":100}]";
    snprintf(body, sizeof body,
             "{\"checkout_id\":\"fz-co\",\"customer_id\":\"fz\",\"currency\":\"EUR\",\"items\":%s}",
             items);
    d = setup("POST", "/orders", body, NULL);
    keep(P_ORDER, d, "order_id");
    json_decref(d);
    d = setup("POST", "/payments/authorize",
              "{\"order_id\":\"fz-order\",\"amount\":100,\"currency\":\"EUR\","
              "\"idempotency_key\":\"fz-pay\"}",
              NULL);
    keep(P_PAYMENT, d, "authorization_id");
    json_decref(d);
    snprintf(body, sizeof body,
             "{\"customer_id\":\"fz\",\"currency\":\"EUR\",\"items\":%s,"
             "\"payment\":{\"method\":\"card\",\"card\":\"tok_visa\"}}",
             items);
    d = setup("POST", "/checkout", body, "fz-checkout");
    keep(P_CHECKOUT, d, "checkout_id");
    json_decref(d);
    /* The checkout's saga, which the saga starter creates soon after. */
    for (int i = 0;; i++) {
        d = setup("GET", "/sagas?limit=1", NULL, NULL);
        const json_t *saga = json_array_get(json_object_get(d, "sagas"), 0);
        if (saga != NULL || i == 200) {
            keep(P_SAGA, saga, "saga_id");
            json_decref(d);
            break;
        }
        json_decref(d);
        bb_sleep_ms(50);
    }
}

/* PUT /psp/config can make the PSP mock slow, fail or hang: put it back
 * after each such input, so that a 5xx from the payments is never the
 * mock's doing. */
static void
psp_reset(void)
{
    json_t *d = setup("PUT", "/psp/config",
                      "{\"latency_ms\":0,\"failure_rate\":0,\"timeout_rate\":0,"
                      "\"decline_rate\":0,\"fail_next\":0,\"hang_next\":0,\"hang_op\":\"\","
                      "\"decline_cards\":[],\"decline_amounts\":[]}",
                      NULL);
    if (d == NULL)
        abort();
    json_decref(d);
}

static void
harness_init(void)
{
    bb_tz_init();
    http_client_global_init();
    memset(H.long_param, 'a', sizeof H.long_param - 1);
    memset(H.huge_param, 'b', sizeof H.huge_param - 1);
    H.plain = http_client_create(NULL, CLIENT_TIMEOUT_MS);
    H.keyed = http_client_create(NULL, CLIENT_TIMEOUT_MS);
    server_start();
    atexit(harness_stop);
    fixtures_create();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    harness_init();
    return 0;
}

/* ---- one input ------------------------------------------------------------------------- */

/* A job of queue fz-fresh: claimed (running under lease token 1 of its
 * attempt) unless `pending`, failed for good when `dead`. Its id (heap),
 * or NULL. It goes first (priority 1000); jobs of earlier inputs that are
 * ready again may share that, so the claim takes a few and finds it. */
static char *
fresh_job(bool pending, bool dead)
{
    json_t *d =
        setup("POST", "/jobs",
              "{\"queue\":\"fz-fresh\",\"handler\":\"external:fz\",\"priority\":1000}", NULL);
    char *id = member_text(d, "job_id");
    json_decref(d);
    if (id == NULL || pending)
        return id;
    d = setup("POST", "/queues/fz-fresh/claim", "{\"worker\":\"fz\",\"max\":10}", NULL);
    const json_t *job = NULL;
    for (size_t i = 0; i < json_array_size(json_object_get(d, "jobs")); i++) {
        const json_t *j = json_array_get(json_object_get(d, "jobs"), i);
        if (json_integer_value(json_object_get(j, "job_id")) == strtoll(id, NULL, 10))
            job = j;
    }
    char path[64], body[128];
    if (job != NULL && dead) {
        snprintf(path, sizeof path, "/jobs/%s/fail", id);
        snprintf(body, sizeof body, "{\"token\":%lld,\"error\":\"fz\",\"retry\":false}",
                 (long long)json_integer_value(json_object_get(job, "lease_token")));
        json_decref(setup("POST", path, body, NULL));
    }
    json_decref(d);
    if (job == NULL) {
        free(id);
        id = NULL;
    }
    return id;
}

/* A new object for one input, so that its request meets an object in a
 * known state however earlier inputs left the fixtures: `b` picks a
 * variant where there are two. Its name (heap), or NULL when making it
 * failed (an earlier input may have paused fz-fresh, say). */
static char *
fresh_object(enum param p, uint8_t b)
{
    char name[32], body[512], path[128];
    snprintf(name, sizeof name, "fz-%u", ++H.fresh);
    const char *items = "[{\"sku\":\"FZ-1\",\"qty\":1,\"unit_price\":100}]";
    char *out = NULL;
    json_t *d = NULL;
    H.quiet = true;
    switch (p) {
    case P_LOCK:
        snprintf(path, sizeof path, "/locks/%s/acquire", name);
        d = setup("POST", path, "{\"owner\":\"fuzz\",\"ttl_ms\":60000}", NULL);
        out = member_text(d, "name");
        break;
    case P_FENCED: /* a key no write has fenced yet */
        out = xstrdup(name);
        break;
    case P_JOB:
        out = fresh_job(b & 1, false);
        break;
    case P_DLQ:
        out = fresh_job(false, true);
        break;
    case P_QUEUE:
        snprintf(path, sizeof path, "/queues/%s", name);
        d = setup("PUT", path, "{}", NULL);
        out = member_text(d, "name");
        break;
    case P_SCHEDULE:
        snprintf(body, sizeof body,
                 "{\"name\":\"%s\",\"every_ms\":3600000,\"handler\":\"external:fz\","
                 "\"queue\":\"fz-fresh\"}",
                 name);
        d = setup("POST", "/schedules", body, NULL);
        out = member_text(d, "schedule");
        break;
    case P_SKU:
    case P_RESERVATION:
        snprintf(body, sizeof body, "{\"sku\":\"%s\",\"name\":\"fz\",\"stock\":100}", name);
        d = setup("POST", "/inventory/products", body, NULL);
        out = member_text(d, "sku");
        if (out != NULL && p == P_RESERVATION) {
            json_decref(d);
            snprintf(body, sizeof body,
                     "{\"order_id\":\"%s\",\"items\":[{\"sku\":\"%s\",\"qty\":2}]}", name, name);
            free(out);
            d = setup("POST", "/inventory/reservations", body, NULL);
            out = member_text(d, "order_id");
        }
        break;
    case P_ORDER:
        snprintf(body, sizeof body,
                 "{\"checkout_id\":\"%s\",\"customer_id\":\"fz\",\"currency\":\"EUR\","
                 "\"items\":%s}",
                 name, items);
        d = setup("POST", "/orders", body, NULL);
        out = member_text(d, "order_id");
        break;
    case P_PAYMENT: /* authorized, or captured when b is odd */
        snprintf(body, sizeof body,
                 "{\"order_id\":\"%s\",\"amount\":1000,\"currency\":\"EUR\","
                 "\"idempotency_key\":\"%s\"}",
                 name, name);
        d = setup("POST", "/payments/authorize", body, NULL);
        out = member_text(d, "authorization_id");
        if (out != NULL && (b & 1)) {
            snprintf(path, sizeof path, "/payments/capture/%s", out);
            json_decref(setup("POST", path, "{}", NULL));
        }
        break;
    case P_CHECKOUT:
        snprintf(body, sizeof body,
                 "{\"customer_id\":\"fz\",\"currency\":\"EUR\",\"items\":%s,"
                 "\"payment\":{\"method\":\"card\",\"card\":\"tok_visa\"}}",
                 items);
        d = setup("POST", "/checkout", body, name);
        out = member_text(d, "checkout_id");
        break;
    case P_SAGA: /* sagas start from checkouts, soon after: the fixture's */
    case P_NONE:
    case P_COUNT:
        break;
    }
    H.quiet = false;
    json_decref(d);
    return out;
}

static const char *
param_value(enum param p, uint8_t b, bool *impossible, char **fresh)
{
    *impossible = false;
    *fresh = NULL;
    if (b >= 64 && b < 128)
        *fresh = fresh_object(p, b);
    if (*fresh != NULL)
        return *fresh;
    if (b < 128 && H.n_values[p] > 0)
        return H.values[p][b % H.n_values[p]];
    const struct bad_param *bad = &BAD_PARAMS[b % N_BAD_PARAMS];
    *impossible = bad->impossible;
    if (bad->text != NULL)
        return bad->text;
    return bad == &BAD_PARAMS[N_BAD_PARAMS - 2] ? H.long_param : H.huge_param;
}

/* Text as a URL carries it: bytes a URL cannot hold, and those of `also`,
 * are escaped; '%' is not, so malformed escapes reach the server. */
static void
append_escaped(struct bb_buf *url, const char *text, size_t len, const char *also)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)text;
         p < (const unsigned char *)text + len; p++) {
        if (((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             strchr("-._~!$&'()*+,;=:@/?%", *p) != NULL) &&
            strchr(also, *p) == NULL) {
            bb_buf_append(url, p, 1);
        } else {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            bb_buf_append(url, esc, 3);
        }
    }
}

/* Could the server take this path parameter (as sent, escaped) for a
 * name? Every route's parameter is an identifier (A-Z a-z 0-9 . _ : @ -,
 * at most 255) once unescaped as the server does (%00 stays escaped), a
 * job's a number. Empty is possible: "/jobs/" is "/jobs". So is anything
 * with a slash, escaped or not: libmicrohttpd unescapes the path before
 * it is routed, so "/jobs/1%2Fhistory" is "/jobs/1/history", another
 * route, as for most servers. And so are "." and "..", which the client
 * resolves before it sends the path (RFC 3986 5.2.4): "/dlq/./redrive"
 * is "/dlq/redrive". */
static bool
param_is_possible(enum param p, const char *sent)
{
    if (strcmp(sent, ".") == 0 || strcmp(sent, "..") == 0)
        return true;
    size_t n = 0;
    bool digits = true;
    for (const char *c = sent; *c != '\0'; c++, n++) {
        int hi = c[0] == '%' ? bb_hex_digit(c[1]) : -1;
        int lo = hi >= 0 ? bb_hex_digit(c[2]) : -1;
        char ch = *c;
        if (lo >= 0 && (hi | lo) != 0) {
            ch = (char)(hi * 16 + lo);
            c += 2;
        }
        if (ch == '/')
            return true;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch != '\0' && strchr("._:@-", ch) != NULL)))
            return false;
        digits = digits && ch >= '0' && ch <= '9';
    }
    return n <= 255 && (digits || (p != P_JOB && p != P_DLQ));
}

/* A blocking acquire or a claim waits up to wait_ms (at most 5 min, 1 min),
 * legitimately; such inputs are not sent when they would wait longer than
 * WAIT_MAX_MS (bounds beyond the maxima are still tried: they are refused
 * at once). */
static bool
fits_in_time(const struct route *rt, const char *body)
{
    if (!(rt->flags & WAITS) || body == NULL)
        return true;
    json_t *doc = json_loads(body, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    const json_t *wait = json_object_get(doc, "wait_ms");
    double ms = json_is_number(wait) ? json_number_value(wait) : 0;
    json_decref(doc);
    /* job_http.c's CLAIM_WAIT_MAX_MS is 60 s */
    double max = strcmp(rt->after, "/acquire") == 0 ? LOCK_WAIT_MAX_MS : 60000;
    return !(ms > WAIT_MAX_MS && ms <= max);
}

static void
report(const char *what, const char *method, const char *url, const char *body,
       const struct http_client_response *resp)
{
    fprintf(stderr, "fuzz_api: %s\n  %s %s\n  body: %s\n  answer: %ld %s %.*s\n", what, method, url,
            body ? body : "(none)", resp ? resp->status : 0L, resp ? resp->content_type : "",
            resp ? (int)resp->body.len : 0, resp && resp->body.data ? resp->body.data : "");
}

static void
violation(const char *what, const char *method, const char *url, const char *body,
          const struct http_client_response *resp)
{
    report(what, method, url, body, resp);
    abort();
}

static bool
nonempty_string(const json_t *doc, const char *member)
{
    const json_t *v = json_object_get(doc, member);
    return json_is_string(v) && json_string_length(v) > 0;
}

static void
check_answer(const char *method, const char *url, const char *body,
             const struct http_client_response *resp)
{
    long status = resp->status;
    const char *type = resp->content_type;
    if (status < 200 || status >= 500)
        violation("a status that is neither a success nor a client error", method, url, body, resp);
    json_t *doc = NULL;
    bool is_json = strncmp(type, "application/json", 16) == 0 ||
                   strncmp(type, "application/problem+json", 24) == 0;
    if (is_json) {
        json_error_t jerr;
        /* \u0000 is data: a payload sent with one is answered with it. */
        doc = json_loadb(resp->body.data ? resp->body.data : "", resp->body.len,
                         JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (doc == NULL)
            violation("an answer that says JSON and is not", method, url, body, resp);
    }
    if (status >= 400) {
        const json_t *type_member = json_object_get(doc, "type");
        if (strncmp(type, "application/problem+json", 24) != 0 || !json_is_object(doc) ||
            !json_is_string(type_member) ||
            strncmp(json_string_value(type_member), "urn:backbone:problem:", 21) != 0 ||
            !nonempty_string(doc, "title") || !nonempty_string(doc, "detail") ||
            !json_is_integer(json_object_get(doc, "status")) ||
            json_integer_value(json_object_get(doc, "status")) != status)
            violation("a client error that is not a problem document", method, url, body, resp);
    }
    json_decref(doc);
}

/* A request idempotent on a key (Idempotency-Key, or idempotency_key or
 * key in the body: stock added, adjustments, checkouts, authorizations,
 * refunds) sent again at once is answered as the first time, byte for
 * byte: its stored answer, or the same refusal. */
static void
check_replay(struct http_client *c, const char *method, const char *url, const char *body,
             const struct http_client_response *first)
{
    struct http_client_response again;
    struct bb_error e;
    if (http_client_do(c, method, url, body, &again, &e) != ERR_OK)
        violation("no answer to a repeated request", method, url, body, NULL);
    if (again.status != first->status || strcmp(again.content_type, first->content_type) != 0 ||
        again.body.len != first->body.len ||
        (again.body.len > 0 && memcmp(again.body.data, first->body.data, again.body.len) != 0)) {
        report("the first answer to a request idempotent on a key", method, url, body, first);
        violation("is not the answer to the same request repeated", method, url, body, &again);
    }
    bb_buf_deinit(&again.body);
}

/* A fenced write that was accepted reads back as written: GET
 * /fenced/{key} answers the body's value (parsed as the server parses
 * bodies; json_equal compares numbers by value and type). */
static void
check_fenced_read(const char *url, const char *body, const struct http_client_response *put)
{
    json_t *answer = json_loadb(put->body.data ? put->body.data : "", put->body.len, 0, NULL);
    bool accepted = json_is_true(json_object_get(answer, "accepted"));
    json_decref(answer);
    json_t *sent = json_loads(body ? body : "",
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    struct http_client_response got;
    struct bb_error e;
    if (accepted && json_object_get(sent, "value") != NULL) {
        if (http_client_do(H.plain, "GET", url, NULL, &got, &e) != ERR_OK)
            violation("no answer to reading a fenced value", "GET", url, NULL, NULL);
        json_t *doc = json_loadb(got.body.data ? got.body.data : "", got.body.len,
                                 JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (got.status != 200 ||
            !json_equal(json_object_get(doc, "value"), json_object_get(sent, "value"))) {
            report("a fenced value accepted", "PUT", url, body, put);
            violation("does not read back as written", "GET", url, NULL, &got);
        }
        json_decref(doc);
        bb_buf_deinit(&got.body);
    }
    json_decref(sent);
}

/* A job submitted reads back with the payload and tags it was given (an
 * object or array payload: a string one is JSON text, parsed first). A
 * unique_key may have named an older job: not checked then. */
static void
check_job_read(const char *body, const struct http_client_response *post)
{
    json_t *answer = json_loadb(post->body.data ? post->body.data : "", post->body.len, 0, NULL);
    json_t *sent = json_loads(body ? body : "",
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    const json_t *payload = json_object_get(sent, "payload");
    const json_t *tags = json_object_get(sent, "tags");
    const json_t *id = json_object_get(answer, "job_id");
    if (json_is_integer(id) && json_object_get(sent, "unique_key") == NULL &&
        (json_is_object(payload) || json_is_array(payload) || json_is_array(tags))) {
        char url[128];
        snprintf(url, sizeof url, "%s/jobs/%lld", H.base, (long long)json_integer_value(id));
        struct http_client_response got;
        struct bb_error e;
        if (http_client_do(H.plain, "GET", url, NULL, &got, &e) != ERR_OK)
            violation("no answer to reading a job", "GET", url, NULL, NULL);
        json_t *doc =
            json_loadb(got.body.data ? got.body.data : "", got.body.len, JSON_ALLOW_NUL, NULL);
        bool same = got.status == 200;
        if (json_is_object(payload) || json_is_array(payload))
            same = same && json_equal(json_object_get(doc, "payload"), payload);
        if (json_is_array(tags))
            same = same && json_equal(json_object_get(doc, "tags"), tags);
        if (!same) {
            report("a job submitted", "POST", "/jobs", body, post);
            violation("does not read back with its payload and tags", "GET", url, NULL, &got);
        }
        json_decref(doc);
        bb_buf_deinit(&got.body);
    }
    json_decref(sent);
    json_decref(answer);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (H.plain == NULL) /* driver.c does not call LLVMFuzzerInitialize */
        harness_init();
    if (size < 3)
        return 0;
    const struct route *rt = &ROUTES[data[0] % BB_ARRAY_LEN(ROUTES)];
    const char *key = KEYS[data[2] & 7];
    if ((data[2] & 7) == 7)
        key = H.long_param;
    bool empty_is_none = (data[2] & 8) != 0;
    char *rest = fuzz_text(data + 3, size - 3);
    const char *text = rest; /* the body or the query */

    struct bb_buf url;
    bb_buf_init(&url);
    bb_buf_printf(&url, "%s%s", H.base, rt->before);
    bool possible = true;
    char *fresh = NULL;
    if (rt->param != P_NONE && (data[2] & 16) != 0) {
        const char *nl = strchr(rest, '\n');
        size_t len = nl ? (size_t)(nl - rest) : strlen(rest);
        size_t at = url.len;
        append_escaped(&url, rest, len, "/?#");
        bb_buf_append(&url, "", 1);
        possible = param_is_possible(rt->param, url.data + at);
        url.len--;
        text = nl ? nl + 1 : rest + len;
    } else if (rt->param != P_NONE) {
        bool impossible;
        bb_buf_printf(&url, "%s", param_value(rt->param, data[1], &impossible, &fresh));
        possible = !impossible;
    }
    bb_buf_printf(&url, "%s", rt->after);
    const char *body = NULL;
    if (rt->rest == QUERY && text[0] != '\0') {
        bb_buf_append(&url, "?", 1);
        append_escaped(&url, text, strlen(text), "");
    } else if (rt->rest == BODY && !(text[0] == '\0' && empty_is_none)) {
        body = text;
    }
    bb_buf_append(&url, "", 1); /* NUL-terminates */
    if (fits_in_time(rt, body)) {
        struct http_client *c = H.plain;
        if (key != NULL) {
            c = H.keyed;
            http_client_set_header(c, "Idempotency-Key", key);
        }
        struct http_client_response resp;
        struct bb_error e;
        if (http_client_do(c, rt->method, url.data, body, &resp, &e) != ERR_OK) {
            fprintf(stderr, "fuzz_api: no answer: %s\n", e.detail);
            violation("no answer", rt->method, url.data, body, NULL);
        }
        if (getenv("BB_FUZZ_VERBOSE") != NULL) /* to see what a corpus file does */
            fprintf(stderr, "%s %s -> %ld %.*s\n", rt->method, url.data, resp.status,
                    (int)(resp.body.len < 200 ? resp.body.len : 200),
                    resp.body.data ? resp.body.data : "");
        check_answer(rt->method, url.data, body, &resp);
        if (!possible && resp.status / 100 == 2)
            violation("a path parameter that names nothing was accepted", rt->method, url.data,
                      body, &resp);
        if (rt->flags & REPLAYS)
            check_replay(c, rt->method, url.data, body, &resp);
        if (rt->param == P_FENCED && strcmp(rt->method, "PUT") == 0 && resp.status == 200)
            check_fenced_read(url.data, body, &resp);
        if (strcmp(rt->before, "/jobs") == 0 && strcmp(rt->method, "POST") == 0 &&
            resp.status == 201)
            check_job_read(body, &resp);
        bb_buf_deinit(&resp.body);
        if (strcmp(rt->before, "/psp/config") == 0)
            psp_reset();
    }
    bb_buf_deinit(&url);
    free(fresh);
    free(rest);
    return 0;
}
