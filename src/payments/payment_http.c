/*
 * payment_http.c: the payments' HTTP routes, the PSP mock's admin routes,
 * and the module's metrics. An operation waits on the PSP, so a request is
 * handed to the payments pool ("bb-pay"), whose threads run the operation
 * and answer; neither HTTP nor database threads wait on the PSP.
 */
#include "payments/payments_int.h"

#include "metrics/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { LIST_LIMIT_MAX = 1000, QUEUE_PER_THREAD = 16 };

/* ---- metrics ------------------------------------------------------------------------------ */

static struct metrics_def M_ATTEMPT = {
    .name = "backbone_payment_attempt_latency_seconds",
    .help = "PSP calls, by operation and outcome (approved, declined, error, timeout).",
    .type = METRICS_HISTOGRAM,
    .labels = {"op", "outcome"},
    .buckets = METRICS_LATENCY_BUCKETS,
    .n_buckets = METRICS_LATENCY_BUCKETS_N,
};
static struct metrics_def M_FAILURES = {
    .name = "backbone_payment_failures_total",
    .help = "Payment operations that failed, by reason (declined, psp_error, timeout: "
            "fresh PSP answers only, a replay is not counted again; stale_token).",
    .type = METRICS_COUNTER,
    .labels = {"reason"},
};

static const double BATCH_BUCKETS[] = {1, 2, 4, 8, 16, 32, 64};
static struct metrics_def M_BATCH = {
    .name = "backbone_payment_batch_size",
    .help = "Payment operations (ledger) and PSP mock records (psp) that shared one transaction "
            "(--payment-batch).",
    .type = METRICS_HISTOGRAM,
    .labels = {"what"},
    .buckets = BATCH_BUCKETS,
    .n_buckets = BB_ARRAY_LEN(BATCH_BUCKETS),
};
static struct metrics_def M_WAITING = {
    .name = "backbone_payment_batch_waiting",
    .help = "Payment operations (ledger) and PSP mock records (psp) waiting for a batch to "
            "carry them.",
    .type = METRICS_GAUGE,
    .labels = {"what"},
};
static struct metrics_def M_BATCH_ALONE = {
    .name = "backbone_payment_batch_fallbacks_total",
    .help = "Payment batches that failed as a whole; each member then ran alone.",
    .type = METRICS_COUNTER,
    .labels = {"what"},
};

void
payments__metrics_register(void)
{
    metrics_register(&M_ATTEMPT);
    metrics_register(&M_FAILURES);
    metrics_register(&M_BATCH);
    metrics_register(&M_BATCH_ALONE);
    metrics_register(&M_WAITING);
}

void
payments__metric_waiting(size_t n, void *what)
{
    metrics_set(&M_WAITING, (double)n, (const char *)what);
}

void
payments__metric_batch(const char *what, size_t n, bool ok)
{
    metrics_observe(&M_BATCH, (double)n, what);
    if (!ok)
        metrics_add(&M_BATCH_ALONE, 1, what);
}

void
payments__metric_attempt(const char *op, enum payments__psp_outcome o, int64_t latency_ms)
{
    metrics_observe(&M_ATTEMPT, (double)latency_ms / 1000.0, op, payments__psp_outcome_name(o));
}

void
payments__metric_failure(const char *reason)
{
    metrics_add(&M_FAILURES, 1, reason);
}

/* ---- requests ----------------------------------------------------------------------------- */

struct pay_req {
    struct payments *p;
    struct http_req *req;
    const char *what; /* authorize, capture, void, refund */
    struct payment_request auth;
    const char *payment_id;
    const char *key;
    int64_t amount;
    int64_t lock_token;
};

static struct pay_req *
req_new(struct http_req *r, struct payments *p, const char *what)
{
    struct pay_req *pr = bb_arena_alloc(http_req_arena(r), sizeof *pr);
    memset(pr, 0, sizeof *pr);
    pr->p = p;
    pr->req = r;
    pr->what = what;
    return pr;
}

/* On a pool thread: run the operation, answer. */
static void
pay_task(void *arg)
{
    struct pay_req *pr = arg;
    struct bb_error e;
    bb_error_clear(&e);
    json_t *out = NULL;
    enum err rc;
    bb_log_context_set(http_req_id(pr->req), http_req_traceparent(pr->req));
    if (strcmp(pr->what, "authorize") == 0)
        rc = payment_authorize(pr->p, &pr->auth, NULL, &out, &e);
    else if (strcmp(pr->what, "capture") == 0)
        rc = payment_capture(pr->p, pr->payment_id, pr->amount, pr->lock_token, &out, &e);
    else if (strcmp(pr->what, "void") == 0)
        rc = payment_void(pr->p, pr->payment_id, pr->lock_token, &out, &e);
    else
        rc = payment_refund(pr->p, pr->payment_id, pr->amount, pr->key, pr->lock_token, &out, &e);
    if (rc == ERR_OK) {
        http_reply_json(pr->req, 200, out);
    } else {
        json_t *extra = NULL;
        if (out != NULL)
            extra = json_pack("{s:O, s:O}", "authorization_id",
                              json_object_get(out, "authorization_id"), "state",
                              json_object_get(out, "state"));
        json_decref(out);
        http_reply_problem(pr->req, &e, extra);
    }
    bb_log_context_clear();
}

static void
dispatch(struct pay_req *pr)
{
    http_req_suspend(pr->req);
    enum err rc = bb_pool_submit(pr->p->pool, pay_task, pr);
    if (rc != ERR_OK) {
        struct bb_error *e = http_req_error(pr->req);
        bb_fail(e, rc, "", "%s",
                rc == ERR_OVERLOADED ? "too many payment requests waiting for the PSP"
                                     : "server is shutting down");
        http_reply_problem(pr->req, e, NULL);
    }
}

static enum err
lock_token_member(const json_t *body, int64_t *out, struct bb_error *e)
{
    return bb_json_int(body, "lock_token", false, 1, INT64_MAX, out, e);
}

/* Keys the saga engine derives for its steps ("saga:{id}:{step}"): a
 * client that took one first, with another body, would make that step fail
 * as a reused key. */
#define RESERVED_KEY_PREFIX "saga:"

static enum err
key_member(const json_t *body, const char **out, struct bb_error *e)
{
    enum err rc = bb_json_string(body, "idempotency_key", true, STORE_IDEM_KEY_MAX, out, e);
    if (rc == ERR_OK && !store_idem_key_is_valid(*out))
        return bb_fail(e, ERR_INVALID, "idempotency_key",
                       "idempotency_key must be 1 to %d visible ASCII characters",
                       STORE_IDEM_KEY_MAX);
    if (rc == ERR_OK && strncmp(*out, RESERVED_KEY_PREFIX, strlen(RESERVED_KEY_PREFIX)) == 0)
        return bb_fail(e, ERR_INVALID, "idempotency_key",
                       "idempotency_key may not start with \"" RESERVED_KEY_PREFIX
                       "\": such keys are the checkout saga's own");
    return rc;
}

static void
handle_authorize(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {"order_id",        "amount",     "currency", "card",
                                          "idempotency_key", "lock_token", NULL};
    struct bb_error *e = http_req_error(r);
    struct pay_req *pr = req_new(r, ctx, "authorize");
    struct payment_request *a = &pr->auth;
    json_t *body;
    enum err rc = http_req_json_only(r, allowed, &body, e);
    if (rc == ERR_OK)
        rc = bb_json_ident(body, "order_id", true, PAYMENT_ORDER_ID_MAX, &a->order_id, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "amount", true, 1, BB_AMOUNT_MAX, &a->amount, e);
    if (rc == ERR_OK)
        rc = bb_json_string(body, "currency", true, 3, &a->currency, e);
    if (rc == ERR_OK && !bb_currency_is_valid(a->currency))
        rc = bb_fail(e, ERR_INVALID, "currency", "currency must be an ISO 4217 code (EUR)");
    if (rc == ERR_OK)
        rc = bb_json_text(body, "card", false, PAYMENT_CARD_MAX, &a->card, e);
    if (rc == ERR_OK)
        rc = key_member(body, &a->idempotency_key, e);
    if (rc == ERR_OK)
        rc = lock_token_member(body, &a->lock_token, e);
    if (rc != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    dispatch(pr);
}

/* capture, void, refund: the authorization in the path, a small body. */
static void
on_payment(struct http_req *r, void *ctx, const char *what)
{
    static const char *const allowed[] = {"amount", "idempotency_key", "lock_token", NULL};
    struct bb_error *e = http_req_error(r);
    struct pay_req *pr = req_new(r, ctx, what);
    json_t *body;
    bool refund = strcmp(what, "refund") == 0;
    enum err rc = http_req_param_ident(r, "authorization_id", PAYMENT_ID_LEN, &pr->payment_id, e);
    if (rc == ERR_OK)
        rc = http_req_json_optional(r, &body, e);
    if (rc == ERR_OK)
        rc = bb_json_only(body, allowed, e);
    if (rc == ERR_OK && strcmp(what, "void") != 0)
        rc = bb_json_int(body, "amount", false, 1, BB_AMOUNT_MAX, &pr->amount, e);
    else if (rc == ERR_OK && json_object_get(body, "amount"))
        rc = bb_fail(e, ERR_INVALID, "amount", "a void releases the whole authorization");
    if (rc == ERR_OK && refund)
        rc = key_member(body, &pr->key, e);
    else if (rc == ERR_OK && json_object_get(body, "idempotency_key"))
        rc = bb_fail(e, ERR_INVALID, "idempotency_key",
                     "only refunds take an idempotency_key (a %s is idempotent itself)", what);
    if (rc == ERR_OK)
        rc = lock_token_member(body, &pr->lock_token, e);
    if (rc != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    dispatch(pr);
}

static void
handle_capture(struct http_req *r, void *ctx)
{
    on_payment(r, ctx, "capture");
}

static void
handle_void(struct http_req *r, void *ctx)
{
    on_payment(r, ctx, "void");
}

static void
handle_refund(struct http_req *r, void *ctx)
{
    on_payment(r, ctx, "refund");
}

/* ---- reading ------------------------------------------------------------------------------ */

struct read_op {
    const char *id;
    int64_t after, limit;
};

static enum err
get_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct read_op *op = arg;
    return payment_get_json(c, op->id, &a->body, e);
}

static void
handle_get(struct http_req *r, void *ctx)
{
    struct payments *p = ctx;
    struct read_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    if (http_req_param_ident(r, "authorization_id", PAYMENT_ID_LEN, &op->id, http_req_error(r)) !=
        ERR_OK) {
        http_reply_problem(r, http_req_error(r), NULL);
        return;
    }
    http_req_run_json(r, p->store, STORE_READ, get_work, NULL, op);
}

static struct store_stmt BY_ORDER = {
    .sql = "SELECT id FROM payments WHERE order_id = $1 ORDER BY created_at_ms, id",
};

static enum err
by_order_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct read_op *op = arg;
    struct store_rows r;
    const struct store_param p[] = {sp_text(op->id)};
    enum err rc = store_query(c, &BY_ORDER, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *ids = json_array();
    while (store_next(&r))
        json_array_append_new(ids, json_string(store_col_text(&r, 0)));
    store_rows_close(&r);
    json_t *list = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id)
    {
        json_t *payment;
        rc = payment_get_json(c, json_string_value(id), &payment, e);
        if (rc != ERR_OK)
            break;
        json_array_append_new(list, payment);
    }
    json_decref(ids);
    a->body = json_pack("{s:o}", "payments", list);
    return rc;
}

static void
handle_by_order(struct http_req *r, void *ctx)
{
    struct payments *p = ctx;
    struct bb_error *e = http_req_error(r);
    struct read_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    op->id = http_req_query(r, "order_id");
    if (op->id == NULL || !bb_ident_is_valid(op->id, PAYMENT_ORDER_ID_MAX)) {
        bb_fail(e, ERR_INVALID, "order_id", "order_id is required: an identifier");
        http_reply_problem(r, e, NULL);
        return;
    }
    op->id = bb_arena_strdup(http_req_arena(r), op->id);
    http_req_run_json(r, p->store, STORE_READ, by_order_work, NULL, op);
}

/* ---- the PSP mock's admin routes ---------------------------------------------------------- */

static json_t *
config_json(const struct psp_config *c)
{
    json_t *cards = json_array(), *amounts = json_array();
    for (size_t i = 0; i < c->n_decline_cards; i++)
        json_array_append_new(cards, json_string(c->decline_cards[i]));
    for (size_t i = 0; i < c->n_decline_amounts; i++)
        json_array_append_new(amounts, json_integer(c->decline_amounts[i]));
    return json_pack("{s:I, s:f, s:f, s:f, s:I, s:o, s:o, s:I, s:I, s:s}", "latency_ms",
                     (json_int_t)c->latency_ms, "failure_rate", c->failure_rate, "timeout_rate",
                     c->timeout_rate, "decline_rate", c->decline_rate, "seed", (json_int_t)c->seed,
                     "decline_cards", cards, "decline_amounts", amounts, "fail_next",
                     (json_int_t)c->fail_next, "hang_next", (json_int_t)c->hang_next, "hang_op",
                     c->hang_op);
}

static void
handle_config_get(struct http_req *r, void *ctx)
{
    struct payments *p = ctx;
    struct psp_config c;
    payments__psp_config_get(p->psp, &c);
    http_reply_json(r, 200, config_json(&c));
}

static enum err
rate_member(const json_t *body, const char *key, double *out, struct bb_error *e)
{
    const json_t *v = json_object_get(body, key);
    if (v == NULL)
        return ERR_OK;
    double d = json_number_value(v);
    if (!json_is_number(v) || !(d >= 0 && d <= 1))
        return bb_fail(e, ERR_INVALID, key, "%s must be a number from 0 to 1", key);
    *out = d;
    return ERR_OK;
}

static enum err
decline_members(const json_t *body, struct psp_config *c, struct bb_error *e)
{
    const json_t *cards = json_object_get(body, "decline_cards");
    const json_t *amounts = json_object_get(body, "decline_amounts");
    if (cards && (!json_is_array(cards) || json_array_size(cards) > PSP_DECLINE_LIST_MAX))
        return bb_fail(e, ERR_INVALID, "decline_cards", "decline_cards: at most %d card tokens",
                       PSP_DECLINE_LIST_MAX);
    if (amounts && (!json_is_array(amounts) || json_array_size(amounts) > PSP_DECLINE_LIST_MAX))
        return bb_fail(e, ERR_INVALID, "decline_amounts", "decline_amounts: at most %d amounts",
                       PSP_DECLINE_LIST_MAX);
    size_t i;
    const json_t *v;
    if (cards) {
        c->n_decline_cards = 0;
        json_array_foreach(cards, i, v)
        {
            const char *s = json_string_value(v);
            if (s == NULL || *s == '\0' || strlen(s) > PAYMENT_CARD_MAX)
                return bb_fail(e, ERR_INVALID, "decline_cards",
                               "decline_cards[%zu] must be a card token", i);
            bb_strlcpy(c->decline_cards[c->n_decline_cards++], s, PAYMENT_CARD_MAX + 1);
        }
    }
    if (amounts) {
        c->n_decline_amounts = 0;
        json_array_foreach(amounts, i, v)
        {
            if (!json_is_integer(v) || json_integer_value(v) < 1)
                return bb_fail(e, ERR_INVALID, "decline_amounts",
                               "decline_amounts[%zu] must be a positive integer", i);
            c->decline_amounts[c->n_decline_amounts++] = json_integer_value(v);
        }
    }
    return ERR_OK;
}

/* hang_op: "" (any call), or the one operation hang_next counts. */
static enum err
hang_op_member(const json_t *body, struct psp_config *c, struct bb_error *e)
{
    const json_t *v = json_object_get(body, "hang_op");
    if (v == NULL)
        return ERR_OK;
    static const char *const ops[] = {"", "authorize", "capture", "void", "refund"};
    for (size_t i = 0; json_is_string(v) && i < BB_ARRAY_LEN(ops); i++) {
        if (strcmp(json_string_value(v), ops[i]) == 0) {
            bb_strlcpy(c->hang_op, ops[i], sizeof c->hang_op);
            return ERR_OK;
        }
    }
    return bb_fail(e, ERR_INVALID, "hang_op",
                   "hang_op must be \"\", \"authorize\", \"capture\", \"void\" or \"refund\"");
}

/* PUT /psp/config: change what is given, keep the rest. */
static void
handle_config_put(struct http_req *r, void *ctx)
{
    static const char *const allowed[] = {
        "latency_ms",      "failure_rate", "timeout_rate", "decline_rate", "seed", "decline_cards",
        "decline_amounts", "fail_next",    "hang_next",    "hang_op",      NULL};
    struct payments *p = ctx;
    struct bb_error *e = http_req_error(r);
    struct psp_config c;
    payments__psp_config_get(p->psp, &c);
    json_t *body;
    int64_t seed = (int64_t)c.seed;
    enum err rc = http_req_json_only(r, allowed, &body, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "latency_ms", false, 0, 600000, &c.latency_ms, e);
    if (rc == ERR_OK)
        rc = rate_member(body, "failure_rate", &c.failure_rate, e);
    if (rc == ERR_OK)
        rc = rate_member(body, "timeout_rate", &c.timeout_rate, e);
    if (rc == ERR_OK)
        rc = rate_member(body, "decline_rate", &c.decline_rate, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "seed", false, 0, INT64_MAX, &seed, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "fail_next", false, 0, 1000000, &c.fail_next, e);
    if (rc == ERR_OK)
        rc = bb_json_int(body, "hang_next", false, 0, 1000000, &c.hang_next, e);
    if (rc == ERR_OK)
        rc = decline_members(body, &c, e);
    if (rc == ERR_OK)
        rc = hang_op_member(body, &c, e);
    if (rc == ERR_OK && c.failure_rate + c.timeout_rate > 1)
        rc = bb_fail(e, ERR_INVALID,
                     json_object_get(body, "timeout_rate") ? "timeout_rate" : "failure_rate",
                     "failure_rate and timeout_rate add up to more than 1");
    if (rc != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    c.seed = (uint64_t)seed;
    payments__psp_config_set(p->psp, &c);
    http_reply_json(r, 200, config_json(&c));
}

static enum err
charges_work(struct store_conn *c, void *arg, struct http_answer *a, struct bb_error *e)
{
    struct read_op *op = arg;
    return payments__psp_list_json(c, op->after, op->limit, &a->body, e);
}

static void
handle_charges(struct http_req *r, void *ctx)
{
    struct payments *p = ctx;
    struct bb_error *e = http_req_error(r);
    struct read_op *op = bb_arena_alloc(http_req_arena(r), sizeof *op);
    op->after = 0;
    op->limit = 100;
    if (http_req_query_int(r, "after", 0, INT64_MAX, &op->after, e) != ERR_OK ||
        http_req_query_int(r, "limit", 1, LIST_LIMIT_MAX, &op->limit, e) != ERR_OK) {
        http_reply_problem(r, e, NULL);
        return;
    }
    http_req_run_json(r, p->store, STORE_READ, charges_work, NULL, op);
}

/* ---- the service ------------------------------------------------------------------------- */

enum err
payments_create(struct store *s, const struct payments_options *o, struct payments **out,
                struct bb_error *e)
{
    (void)e;
    payments__metrics_register();
    struct payments *p = xcalloc(1, sizeof *p);
    p->store = s;
    p->psp_timeout_ms = o->psp_timeout_ms > 0 ? o->psp_timeout_ms : 2000;
    size_t batch = o->batch == 0 ? 32 : o->batch > 1 ? (size_t)o->batch : 1;
    p->psp = payments__psp_create(s, &o->psp, batch);
    payments__batching_start(p, batch);
    size_t threads = o->threads > 0 ? (size_t)o->threads : 32;
    p->pool = bb_pool_create("bb-pay", threads, threads * QUEUE_PER_THREAD);
    *out = p;
    return ERR_OK;
}

void
payments_stop(struct payments *p)
{
    if (p != NULL)
        bb_pool_stop(p->pool);
}

void
payments_destroy(struct payments *p)
{
    if (p == NULL)
        return;
    bb_pool_destroy(p->pool);
    bb_combiner_destroy(p->combiner);
    payments__psp_destroy(p->psp);
    free(p);
}

/* The query parameters each route takes (NULL: none; the server refuses
 * any other, see struct http_route). */
static const char *const BY_ORDER_QUERY[] = {"order_id", NULL};      /* GET /payments */
static const char *const CHARGES_QUERY[] = {"after", "limit", NULL}; /* GET /psp/charges */

size_t
payments_routes(struct payments *p, struct http_route *out, size_t max)
{
    const struct http_route routes[] = {
        {"POST", "/payments/authorize", handle_authorize, p, false, NULL},
        {"POST", "/payments/capture/{authorization_id}", handle_capture, p, false, NULL},
        {"POST", "/payments/void/{authorization_id}", handle_void, p, false, NULL},
        {"POST", "/payments/{authorization_id}/refund", handle_refund, p, false, NULL},
        {"GET", "/payments/{authorization_id}", handle_get, p, false, NULL},
        {"GET", "/payments", handle_by_order, p, false, BY_ORDER_QUERY},
        {"GET", "/psp/config", handle_config_get, p, false, NULL},
        {"PUT", "/psp/config", handle_config_put, p, false, NULL},
        {"GET", "/psp/charges", handle_charges, p, false, CHARGES_QUERY},
    };
    BB_ASSERT(BB_ARRAY_LEN(routes) <= max);
    memcpy(out, routes, sizeof routes);
    return BB_ARRAY_LEN(routes);
}
