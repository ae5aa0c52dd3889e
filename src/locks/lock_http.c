/*
 * lock_http.c: the lock service: HTTP routes, request validation, blocking
 * acquires (with lock_wait.c) and the module's metrics.
 *
 * Every handler validates synchronously on the HTTP thread, then runs one
 * unit of work on the store executor (http_req_run) and answers from the
 * store thread once the unit has committed. A `struct locks__op` carries the
 * request's inputs and outputs; it lives in the request's arena and dies with
 * the request.
 *
 * A blocking acquire that finds its lock held is parked on a wait list
 * (http_waitlist) without holding a thread, and retried when a release of
 * its lock is announced (a store notification: in-process on SQLite,
 * LISTEN/NOTIFY from any process on PostgreSQL; payload NULL after a
 * listener reconnect wakes everyone), when the holder's lease runs out, and
 * at least every RECHECK_MS as a backstop against a lost notification.
 *
 * A release wakes one waiter of its lock, the one waiting longest
 * (http_waitlist_wake_one): it is the only one that could take it, and
 * waking all would cost each of them a transaction to learn that. The
 * woken waiter holds the wake (op->turn.woken) and hands it on
 * (acquire_leave) if it leaves without the lock: its wait ran out, its
 * client hung up, the store failed, the list stopped. One that finds the
 * lock taken again parks again in its place: the holder's release will be
 * announced, as its attempt raised the lock's waiter mark. On PostgreSQL
 * every process hears a release and wakes one waiter of its own.
 */
#include "locks/locks_int.h"

#include "metrics/metrics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { LIST_LIMIT_DEFAULT = 100, LIST_LIMIT_MAX = 1000, RECHECK_MS = 1000 };

struct lock_service {
    struct store *store;
    struct http_waitlist *waiters;
    const char *reserved[LOCK_RESERVED_MAX]; /* name prefixes other modules own */
    size_t n_reserved;
};

struct locks__op {
    struct lock_service *svc;
    struct http_req *req;
    const char *name; /* lock name or fenced key */
    const char *owner;
    const char *value_json;
    const char *after;
    int64_t ttl_ms;
    int64_t token;
    int limit;
    int64_t started_mono_ms;
    int64_t deadline_mono_ms;
    uint64_t seen_seq;
    struct http_wait_turn turn; /* place in line, and whether a wake is ours */
    bool parked_before;
    /* results */
    struct lock_grant grant; /* the grant, or the holder when refused */
    enum lock_outcome how;
    bool held; /* refused: someone else holds it */
    struct bb_error held_error;
    json_t *list;
    char *value_out;
};

/* ---- metrics ------------------------------------------------------------------- */

static const double WAIT_BUCKETS[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};

static struct metrics_def M_ACQUIRED = {
    .name = "backbone_lock_acquisitions_total",
    .help = "Locks granted, by outcome (granted, reentered, takeover).",
    .type = METRICS_COUNTER,
    .labels = {"outcome"},
};
static struct metrics_def M_CONTENTIONS = {
    .name = "backbone_lock_contentions_total",
    .help = "Acquire requests that found the lock held by another owner (once per request).",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_TAKEOVERS = {
    .name = "backbone_lock_takeovers_total",
    .help = "Grants that displaced a holder whose lease had run out.",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_RENEW_FAILED = {
    .name = "backbone_lock_renew_failures_total",
    .help = "Renewals refused, by reason (stale_token, lock_expired, lock_not_held).",
    .type = METRICS_COUNTER,
    .labels = {"reason"},
};
static struct metrics_def M_RELEASE_FAILED = {
    .name = "backbone_lock_release_failures_total",
    .help = "Releases refused, by reason (stale_token, lock_not_held).",
    .type = METRICS_COUNTER,
    .labels = {"reason"},
};
static struct metrics_def M_FENCE_REFUSED = {
    .name = "backbone_fenced_writes_refused_total",
    .help = "Fenced writes refused because a newer token had been accepted (zombie holders).",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_ABANDONED = {
    .name = "backbone_lock_grants_abandoned_total",
    .help = "Grants released at once because their client had hung up before hearing of them.",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_HELD = {
    .name = "backbone_locks_held",
    .help = "Locks currently held (leases not yet run out), across all processes.",
    .type = METRICS_GAUGE,
};
static struct metrics_def M_WAITERS = {
    .name = "backbone_lock_waiters",
    .help = "Blocking acquires parked in this process, waiting for a lock.",
    .type = METRICS_GAUGE,
};
static struct metrics_def M_WOKEN = {
    .name = "backbone_lock_waiters_woken_total",
    .help = "Parked blocking acquires woken by a release of their lock: one per release heard by "
            "this process (and one more each time a woken waiter leaves without the lock), "
            "every waiter after a lost notification.",
    .type = METRICS_COUNTER,
};
static struct metrics_def M_WAIT = {
    .name = "backbone_lock_wait_seconds",
    .help = "Time blocking acquires waited, by result (granted, timeout).",
    .type = METRICS_HISTOGRAM,
    .labels = {"result"},
    .buckets = WAIT_BUCKETS,
    .n_buckets = BB_ARRAY_LEN(WAIT_BUCKETS),
};

void
locks__metrics_register(void)
{
    struct metrics_def *all[] = {&M_ACQUIRED,       &M_CONTENTIONS,   &M_TAKEOVERS, &M_RENEW_FAILED,
                                 &M_RELEASE_FAILED, &M_FENCE_REFUSED, &M_HELD,      &M_WAITERS,
                                 &M_WOKEN,          &M_WAIT,          &M_ABANDONED};
    for (size_t i = 0; i < BB_ARRAY_LEN(all); i++)
        metrics_register(all[i]);
}

void
locks__metric_acquired(enum lock_outcome how)
{
    metrics_add(&M_ACQUIRED, 1, lock_outcome_name(how));
    if (how == LOCK_TAKEOVER)
        metrics_add(&M_TAKEOVERS, 1);
}

void
locks__metric_contention(void)
{
    metrics_add(&M_CONTENTIONS, 1);
}

void
locks__metric_renew_failed(enum err why)
{
    metrics_add(&M_RENEW_FAILED, 1, bb_err_slug(why));
}

void
locks__metric_release_failed(enum err why)
{
    metrics_add(&M_RELEASE_FAILED, 1, bb_err_slug(why));
}

void
lock_metric_fence_refused(void)
{
    metrics_add(&M_FENCE_REFUSED, 1);
}

void
locks__metric_wait(double seconds, bool granted)
{
    metrics_observe(&M_WAIT, seconds, granted ? "granted" : "timeout");
}

static void
metric_woken(size_t n)
{
    if (n > 0)
        metrics_add(&M_WOKEN, (double)n);
}

void
locks__metric_waiters(int64_t n)
{
    metrics_set(&M_WAITERS, (double)n);
}

void
locks__metrics_held(int64_t n)
{
    metrics_set(&M_HELD, (double)n);
}

/* ---- JSON ------------------------------------------------------------------------- */

static json_t *
grant_json(const struct lock_grant *g, bool with_token, int64_t now_wall_ms)
{
    char expires[32], acquired[32];
    bb_wall_ms_format(g->expires_at_ms, expires);
    bb_wall_ms_format(g->acquired_at_ms, acquired);
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(g->name));
    json_object_set_new(o, "owner", json_string(g->owner));
    if (with_token)
        json_object_set_new(o, "token", json_integer(g->token));
    json_object_set_new(o, "epoch", json_integer(g->epoch));
    json_object_set_new(o, "expires_at", json_string(expires));
    json_object_set_new(
        o, "expires_in_ms",
        json_integer(g->expires_at_ms > now_wall_ms ? g->expires_at_ms - now_wall_ms : 0));
    json_object_set_new(o, "acquired_at", json_string(acquired));
    return o;
}

/* The holder named in a 409 (never its token). */
static json_t *
holder_json(const struct lock_grant *g)
{
    char expires[32];
    bb_wall_ms_format(g->expires_at_ms, expires);
    json_t *o = json_object();
    json_object_set_new(o, "holder", json_string(g->owner));
    json_object_set_new(o, "expires_at", json_string(expires));
    return o;
}

/* ---- request parsing ----------------------------------------------------------------- */

static struct locks__op *
op_new(struct http_req *r, struct lock_service *svc)
{
    struct locks__op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    memset(op, 0, sizeof *op);
    op->svc = svc;
    op->req = r;
    return op;
}

/* The {name} or {key} segment, validated. */
static enum err
path_name(struct http_req *r, const char *param, const char **out, struct bb_error *e)
{
    const char *v = http_req_param(r, param);
    if (v == NULL || !lock_name_is_valid(v))
        return bb_fail(e, ERR_INVALID, param,
                       "%s must be 1 to %d characters from A-Z a-z 0-9 . _ : @ -", param,
                       LOCK_NAME_MAX);
    *out = v;
    return ERR_OK;
}

static enum err
owner_check(const char *owner, struct bb_error *e)
{
    for (const unsigned char *p = (const unsigned char *)owner; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return bb_fail(e, ERR_INVALID, "owner", "owner must not contain control characters");
    }
    return ERR_OK;
}

/* Parse the body against `allowed`, and the path name. */
static enum err
op_body(struct http_req *r, const char *param, const char *const *allowed, struct locks__op *op,
        json_t **body, struct bb_error *e)
{
    enum err rc = path_name(r, param, &op->name, e);
    for (size_t i = 0; rc == ERR_OK && i < op->svc->n_reserved; i++) {
        const char *prefix = op->svc->reserved[i];
        if (strncmp(op->name, prefix, strlen(prefix)) == 0)
            rc = bb_fail(e, ERR_INVALID, param,
                         "%s: names starting with %s are reserved for Backbone", param, prefix);
    }
    if (rc == ERR_OK)
        rc = http_req_json_object(r, body, e);
    if (rc == ERR_OK)
        rc = bb_json_only(*body, allowed, e);
    return rc;
}

static void
reply_failure(struct http_req *r, struct bb_error *e)
{
    http_reply_problem(r, e, NULL);
}

/* ---- acquire ------------------------------------------------------------------------------ */

static enum err
acquire_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    int64_t now = bb_wall_ms();
    int64_t wait_left = op->deadline_mono_ms - bb_mono_ms();
    if (wait_left <= 0) /* see lock_store.c */
        store_each_statement_commits(c);
    enum err rc = lock_acquire(c, op->name, op->owner, op->ttl_ms, now,
                               wait_left > 0 ? now + wait_left : 0, &op->grant, &op->how, e);
    op->held = rc == ERR_LOCK_HELD;
    if (!op->held)
        return rc;
    /* Refused, but the unit commits: a waiting acquire marked the lock so
     * that its release is announced. The reply reads op->held. */
    op->held_error = *e;
    bb_error_clear(e);
    return ERR_OK;
}

static void acquire_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e);
static enum err release_work(struct store_conn *c, void *arg, struct bb_error *e);

static void
abandon_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    if (rc == ERR_OK)
        metrics_add(&M_ABANDONED, 1);
    else
        log_warn("locks.abandon_failed", "lock=%s token=%" PRId64 " detail=%s", op->name, op->token,
                 e->detail);
    struct bb_error gone;
    bb_fail(&gone, ERR_UNAVAILABLE, "",
            "the client hung up before it heard of its grant of lock %s", op->name);
    http_reply_problem(r, &gone, NULL);
}

/* A grant whose client hung up while it was being made: nobody would
 * release it, and the lock would stay taken until its lease ran out. */
static void
acquire_abandon(struct locks__op *op)
{
    op->token = op->grant.token;
    http_req_run(op->req, op->svc->store, STORE_WRITE, release_work, abandon_reply, op);
}

/* The waiter leaves without the lock: a release that woke it wakes the next
 * waiter instead. */
static void
acquire_leave(struct locks__op *op)
{
    metric_woken(http_waitlist_pass(op->svc->waiters, op->name, &op->turn));
}

static void
acquire_submit(struct locks__op *op)
{
    op->seen_seq = http_waitlist_seq(op->svc->waiters, op->name);
    http_req_run(op->req, op->svc->store, STORE_WRITE, acquire_work, acquire_reply, op);
}

static void
acquire_retry(void *arg)
{
    struct locks__op *op = arg;
    if (http_req_client_gone(op->req)) {
        /* Nobody would hear of a grant, and the lock would stay taken
         * until its lease ran out: give up instead. */
        acquire_leave(op);
        locks__metric_wait((double)(bb_mono_ms() - op->started_mono_ms) / 1000.0, false);
        struct bb_error e;
        bb_fail(&e, ERR_UNAVAILABLE, "", "the client hung up while waiting for lock %s", op->name);
        http_reply_problem(op->req, &e, NULL);
        return;
    }
    acquire_submit(op);
}

static void
acquire_give_up(void *arg, enum err why)
{
    struct locks__op *op = arg;
    struct bb_error e;
    acquire_leave(op);
    if (why == ERR_TIMEOUT) {
        locks__metric_wait((double)(bb_mono_ms() - op->started_mono_ms) / 1000.0, false);
        bb_fail(&e, ERR_LOCK_HELD, "", "lock %s is still held after waiting %lld ms", op->name,
                (long long)(bb_mono_ms() - op->started_mono_ms));
        http_reply_problem(op->req, &e, holder_json(&op->grant));
        return;
    }
    bb_fail(&e, ERR_UNAVAILABLE, "", "server is shutting down");
    http_reply_problem(op->req, &e, NULL);
}

static void
acquire_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    if (rc == ERR_OK && op->held) {
        rc = ERR_LOCK_HELD;
        e = &op->held_error;
    }
    int64_t now_mono = bb_mono_ms();
    double waited = (double)(now_mono - op->started_mono_ms) / 1000.0;
    if (rc == ERR_OK) {
        locks__metric_acquired(op->how);
        if (op->parked_before)
            locks__metric_wait(waited, true);
        /* (A re-entry leaves alone what its owner held before.) */
        if (op->how != LOCK_REENTERED && http_req_client_gone(r)) {
            acquire_abandon(op);
            return;
        }
        json_t *body = grant_json(&op->grant, true, bb_wall_ms());
        json_object_set_new(body, "outcome", json_string(lock_outcome_name(op->how)));
        http_reply_json(r, 200, body);
        return;
    }
    if (rc != ERR_LOCK_HELD) {
        acquire_leave(op);
        http_reply_problem(r, e, NULL);
        return;
    }
    if (!op->parked_before) /* once per request, however often a waiter retries */
        locks__metric_contention();
    if (now_mono < op->deadline_mono_ms) {
        /* Retry when the holder's lease runs out, or sooner on a release. */
        int64_t lease_left = op->grant.expires_at_ms - bb_wall_ms();
        int64_t retry_at = now_mono + (lease_left > 0 ? lease_left : 0) + 1;
        if (retry_at > now_mono + RECHECK_MS)
            retry_at = now_mono + RECHECK_MS;
        op->parked_before = true;
        if (http_waitlist_park_in_line(op->svc->waiters, op->name, retry_at, op->deadline_mono_ms,
                                       op->seen_seq, &op->turn, acquire_retry, acquire_give_up, op))
            return;
        acquire_give_up(op, ERR_UNAVAILABLE);
        return;
    }
    acquire_leave(op);
    if (op->parked_before)
        locks__metric_wait(waited, false);
    http_reply_problem(r, e, holder_json(&op->grant));
}

static void
handle_acquire(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"owner", "ttl_ms", "wait_ms", NULL};
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    json_t *body;
    int64_t wait_ms = 0;
    op->ttl_ms = LOCK_TTL_DEFAULT_MS;
    if (op_body(r, "name", allowed, op, &body, e) != ERR_OK ||
        bb_json_string(body, "owner", true, LOCK_OWNER_MAX, &op->owner, e) != ERR_OK ||
        owner_check(op->owner, e) != ERR_OK ||
        bb_json_int(body, "ttl_ms", false, LOCK_TTL_MIN_MS, LOCK_TTL_MAX_MS, &op->ttl_ms, e) !=
            ERR_OK ||
        bb_json_int(body, "wait_ms", false, 0, LOCK_WAIT_MAX_MS, &wait_ms, e) != ERR_OK) {
        reply_failure(r, e);
        return;
    }
    op->started_mono_ms = bb_mono_ms();
    op->deadline_mono_ms = op->started_mono_ms + wait_ms;
    acquire_submit(op);
}

/* ---- renew and release --------------------------------------------------------------------- */

static enum err
renew_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    store_each_statement_commits(c);
    return lock_renew(c, op->name, op->token, op->ttl_ms, bb_wall_ms(), &op->grant, e);
}

static void
renew_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    if (rc != ERR_OK) {
        if (rc == ERR_STALE_TOKEN || rc == ERR_LOCK_EXPIRED || rc == ERR_NOT_HELD)
            locks__metric_renew_failed(rc);
        http_reply_problem(r, e, NULL);
        return;
    }
    http_reply_json(r, 200, grant_json(&op->grant, true, bb_wall_ms()));
}

static void
handle_renew(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"token", "ttl_ms", NULL};
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    json_t *body;
    op->ttl_ms = LOCK_TTL_DEFAULT_MS;
    if (op_body(r, "name", allowed, op, &body, e) != ERR_OK ||
        bb_json_int(body, "token", true, 1, INT64_MAX, &op->token, e) != ERR_OK ||
        bb_json_int(body, "ttl_ms", false, LOCK_TTL_MIN_MS, LOCK_TTL_MAX_MS, &op->ttl_ms, e) !=
            ERR_OK) {
        reply_failure(r, e);
        return;
    }
    http_req_run(r, op->svc->store, STORE_WRITE, renew_work, renew_reply, op);
}

static enum err
release_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    store_each_statement_commits(c);
    return lock_release(c, op->name, op->token, bb_wall_ms(), e);
}

static void
release_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    if (rc != ERR_OK) {
        if (rc == ERR_STALE_TOKEN || rc == ERR_NOT_HELD)
            locks__metric_release_failed(rc);
        http_reply_problem(r, e, NULL);
        return;
    }
    json_t *body = json_object();
    json_object_set_new(body, "name", json_string(op->name));
    json_object_set_new(body, "token", json_integer(op->token));
    json_object_set_new(body, "released", json_true());
    http_reply_json(r, 200, body);
}

static void
handle_release(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"token", NULL};
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    json_t *body;
    if (op_body(r, "name", allowed, op, &body, e) != ERR_OK ||
        bb_json_int(body, "token", true, 1, INT64_MAX, &op->token, e) != ERR_OK) {
        reply_failure(r, e);
        return;
    }
    http_req_run(r, op->svc->store, STORE_WRITE, release_work, release_reply, op);
}

/* ---- reads ------------------------------------------------------------------------------------
 */

static enum err
get_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    return lock_get(c, op->name, bb_wall_ms(), &op->grant, e);
}

static void
get_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    if (rc != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    json_t *body = grant_json(&op->grant, false, bb_wall_ms());
    json_object_set_new(body, "state", json_string(lock_state_name(LOCK_HELD)));
    http_reply_json(r, 200, body);
}

static void
handle_get(struct http_req *r, void *ctx)
{
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    if (path_name(r, "name", &op->name, e) != ERR_OK) {
        reply_failure(r, e);
        return;
    }
    http_req_run(r, op->svc->store, STORE_READ, get_work, get_reply, op);
}

struct list_acc {
    json_t *array;
    int64_t now_ms;
};

static void
list_one(void *arg, const struct lock_grant *g)
{
    struct list_acc *acc = arg;
    json_array_append_new(acc->array, grant_json(g, false, acc->now_ms));
}

static enum err
list_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    json_decref(op->list); /* a retried unit starts over */
    struct list_acc acc = {.array = json_array(), .now_ms = bb_wall_ms()};
    op->list = acc.array;
    return lock_list(c, acc.now_ms, op->after, op->limit, list_one, &acc, e);
}

static void
list_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    json_t *list = op->list;
    op->list = NULL;
    if (rc != ERR_OK) {
        json_decref(list);
        http_reply_problem(r, e, NULL);
        return;
    }
    size_t n = json_array_size(list);
    json_t *body = json_object();
    json_t *next = json_null();
    if (n == (size_t)op->limit)
        next = json_incref(json_object_get(json_array_get(list, n - 1), "name"));
    json_object_set_new(body, "locks", list);
    json_object_set_new(body, "next_after", next);
    http_reply_json(r, 200, body);
}

static void
handle_list(struct http_req *r, void *ctx)
{
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    int64_t limit = LIST_LIMIT_DEFAULT;
    if (http_req_query_int(r, "limit", 1, LIST_LIMIT_MAX, &limit, e) != ERR_OK) {
        reply_failure(r, e);
        return;
    }
    op->limit = (int)limit;
    const char *after = http_req_query(r, "after");
    if (after) {
        if (!lock_name_is_valid(after)) {
            bb_fail(e, ERR_INVALID, "after", "after must be a lock name");
            reply_failure(r, e);
            return;
        }
        op->after = bb_arena_strdup(http_req_arena(r), after);
    }
    http_req_run(r, op->svc->store, STORE_READ, list_work, list_reply, op);
}

/* ---- fenced writes ----------------------------------------------------------------------------
 */

static enum err
fenced_put_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    store_each_statement_commits(c);
    return lock_fenced_put(c, op->name, op->token, op->value_json, bb_wall_ms(), e);
}

static void
fenced_put_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    if (rc != ERR_OK) {
        if (rc == ERR_STALE_TOKEN)
            lock_metric_fence_refused();
        http_reply_problem(r, e, NULL);
        return;
    }
    json_t *body = json_object();
    json_object_set_new(body, "key", json_string(op->name));
    json_object_set_new(body, "token", json_integer(op->token));
    json_object_set_new(body, "accepted", json_true());
    http_reply_json(r, 200, body);
}

static void
handle_fenced_put(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"token", "value", NULL};
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    json_t *body;
    if (op_body(r, "key", allowed, op, &body, e) != ERR_OK ||
        bb_json_int(body, "token", true, 1, INT64_MAX, &op->token, e) != ERR_OK) {
        reply_failure(r, e);
        return;
    }
    json_t *value = json_object_get(body, "value");
    if (value == NULL) {
        bb_fail(e, ERR_INVALID, "value", "value is required (any JSON value)");
        reply_failure(r, e);
        return;
    }
    char *text = bb_json_dumps(value);
    op->value_json = bb_arena_strdup(http_req_arena(r), text);
    free(text);
    http_req_run(r, op->svc->store, STORE_WRITE, fenced_put_work, fenced_put_reply, op);
}

static enum err
fenced_get_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct locks__op *op = arg;
    free(op->value_out);
    op->value_out = NULL;
    return lock_fenced_get(c, op->name, &op->value_out, &op->token, e);
}

static void
fenced_get_reply(struct http_req *r, void *arg, enum err rc, const struct bb_error *e)
{
    struct locks__op *op = arg;
    char *text = op->value_out;
    op->value_out = NULL;
    if (rc != ERR_OK) {
        free(text);
        http_reply_problem(r, e, NULL);
        return;
    }
    /* As the value was taken (JSON_ALLOW_NUL): a string with \u0000 in it
     * reads back, instead of as null. */
    json_t *value = text ? json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : json_null();
    free(text);
    json_t *body = json_object();
    json_object_set_new(body, "key", json_string(op->name));
    json_object_set_new(body, "token", json_integer(op->token));
    json_object_set_new(body, "value", value ? value : json_null());
    http_reply_json(r, 200, body);
}

static void
handle_fenced_get(struct http_req *r, void *ctx)
{
    struct bb_error *e = http_req_error(r);
    struct locks__op *op = op_new(r, ctx);
    if (path_name(r, "key", &op->name, e) != ERR_OK) {
        reply_failure(r, e);
        return;
    }
    http_req_run(r, op->svc->store, STORE_READ, fenced_get_work, fenced_get_reply, op);
}

/* ---- the service ------------------------------------------------------------------------------
 */

/* A release was announced (payload: the lock): wake the waiter of it that
 * came first. Notifications may have been lost (payload NULL): wake every
 * waiter. */
static void
on_release(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct lock_service *svc = arg;
    metric_woken(http_waitlist_wake_one(svc->waiters, payload));
}

enum err
lock_service_create(struct store *s, struct lock_service **out, struct bb_error *e)
{
    locks__metrics_register();
    struct lock_service *svc = xcalloc(1, sizeof *svc);
    svc->store = s;
    svc->waiters = http_waitlist_create("bb-lock-wait", locks__metric_waiters);
    enum err rc = store_listen(s, LOCKS__CHANNEL, on_release, svc);
    if (rc != ERR_OK) {
        lock_service_destroy(svc);
        return bb_fail(e, rc, "", "cannot listen for lock releases");
    }
    *out = svc;
    return ERR_OK;
}

void
lock_service_reserve(struct lock_service *svc, const char *prefix)
{
    BB_ASSERT(svc->n_reserved < LOCK_RESERVED_MAX);
    svc->reserved[svc->n_reserved++] = prefix;
}

/* The query parameters each route takes (NULL: none; the server refuses
 * any other, see struct http_route). */
static const char *const LIST_QUERY[] = {"limit", "after", NULL}; /* GET /locks */

size_t
lock_service_routes(struct lock_service *svc, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"POST", "/locks/{name}/acquire", handle_acquire, svc, false, NULL},
        {"POST", "/locks/{name}/renew", handle_renew, svc, false, NULL},
        {"POST", "/locks/{name}/release", handle_release, svc, false, NULL},
        {"GET", "/locks/{name}", handle_get, svc, false, NULL},
        {"GET", "/locks", handle_list, svc, false, LIST_QUERY},
        {"PUT", "/fenced/{key}", handle_fenced_put, svc, false, NULL},
        {"GET", "/fenced/{key}", handle_fenced_get, svc, false, NULL},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}

void
lock_service_stop_waiting(struct lock_service *svc)
{
    if (svc)
        http_waitlist_stop(svc->waiters);
}

void
lock_service_destroy(struct lock_service *svc)
{
    if (svc == NULL)
        return;
    store_unlisten(svc->store, on_release, svc);
    http_waitlist_destroy(svc->waiters);
    free(svc);
}
