/*
 * payment_psp.c: the PSP mock. It behaves like a payment provider reached
 * over a network: it takes time (latency_ms), sometimes fails (failure
 * rate, fail_next), sometimes does the work but never answers in time
 * (timeout rate, hang_next), and declines some authorizations (decline
 * rate, listed cards and amounts). Draws are deterministic: a hash of the
 * seed, the operation and its idempotency key, and for failures and hangs
 * also of how often this process has been called with that key, so that a
 * transient failure passes when the call is repeated, as a real PSP's
 * would (a decline does not: it is the same for the key every time).
 *
 * Like a real PSP it keeps its own record (psp_charges), keyed by the
 * caller's idempotency key: a call repeated with a key it has seen gets the
 * recorded answer and does nothing twice; repeated with another amount, it
 * is refused (declined, naming the amount on record) and does nothing.
 * That record is what the reconciliation checks count charges against. An authorization is settled
 * once: a void after an approved capture is declined (the money was taken:
 * refund it), and so is a capture after an approved void; the answer says
 * which, so the caller's ledger can learn what a lost answer hid.
 *
 * Locking: `mu` guards `cfg` (changed at run time through PUT /psp/config)
 * and `calls`.
 */
#include "payments/payments_int.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { PSP_CALL_SLOTS = 1 << 14 };

struct payments__psp {
    struct store *store;
    pthread_mutex_t mu;
    struct psp_config cfg; /* guarded by mu */
    /* Calls seen by a hash of their key (keys that share a slot share a
     * count: still deterministic for the same calls); guarded by mu. */
    uint32_t calls[PSP_CALL_SLOTS];
    struct bb_combiner *combiner; /* records in batches; NULL: each alone */
};

static const char *const OUTCOMES[] = {
    [PSP_APPROVED] = "approved",
    [PSP_DECLINED] = "declined",
    [PSP_ERROR] = "error",
    [PSP_TIMEOUT] = "timeout",
};

const char *
payments__psp_outcome_name(enum payments__psp_outcome o)
{
    return (size_t)o < BB_ARRAY_LEN(OUTCOMES) ? OUTCOMES[o] : "unknown";
}

static bool record_same(const void *a, const void *b, void *ctx);
static bool record_conflict(const void *x, const void *y, void *ctx);
static void record_carry(void **items, size_t n, void *ctx);

struct payments__psp *
payments__psp_create(struct store *s, const struct psp_config *c, size_t batch_max)
{
    struct payments__psp *psp = xcalloc(1, sizeof *psp);
    psp->store = s;
    pthread_mutex_init(&psp->mu, NULL);
    psp->cfg = *c;
    if (batch_max > 1) {
        struct bb_combiner_options o = {.leaders = PAYMENTS__BATCH_LEADERS,
                                        .batch_max = batch_max,
                                        .waiting_max = PAYMENTS__BATCH_WAITING_MAX,
                                        .same = record_same,
                                        .conflicts = record_conflict,
                                        .run = record_carry,
                                        .ctx = psp,
                                        .on_waiting = payments__metric_waiting,
                                        .waiting_ctx = (void *)"psp"};
        psp->combiner = bb_combiner_create(&o);
    }
    return psp;
}

void
payments__psp_destroy(struct payments__psp *psp)
{
    if (psp == NULL)
        return;
    bb_combiner_destroy(psp->combiner);
    pthread_mutex_destroy(&psp->mu);
    free(psp);
}

void
payments__psp_config_get(struct payments__psp *psp, struct psp_config *out)
{
    pthread_mutex_lock(&psp->mu);
    *out = psp->cfg;
    pthread_mutex_unlock(&psp->mu);
}

void
payments__psp_config_set(struct payments__psp *psp, const struct psp_config *c)
{
    pthread_mutex_lock(&psp->mu);
    psp->cfg = *c;
    pthread_mutex_unlock(&psp->mu);
}

/* A uniform draw in [0, 1) from the seed, a salt, the key and the how
 * manieth call with it this is (FNV-1a, then a splitmix64 finaliser). */
static double
draw(uint64_t seed, const char *salt, const char *key, uint64_t nth)
{
    uint64_t h = bb_fnv1a(bb_fnv1a(BB_FNV1A_BASIS ^ seed, salt), key);
    h = (h ^ nth) * BB_FNV1A_PRIME;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return (double)(h >> 11) / (double)(1ull << 53);
}

/* What the PSP decides for a call it has not seen, and whether it fails or
 * hangs first. */
static void
decide(struct payments__psp *psp, const struct payments__psp_call *call, bool *fail, bool *hang,
       int64_t *latency_ms, struct payments__psp_answer *a)
{
    pthread_mutex_lock(&psp->mu);
    struct psp_config *c = &psp->cfg;
    *latency_ms = c->latency_ms;
    *hang = *fail = false;
    if (c->hang_next > 0 && (c->hang_op[0] == '\0' || strcmp(c->hang_op, call->op) == 0)) {
        c->hang_next--;
        *hang = true;
    } else if (c->fail_next > 0) {
        c->fail_next--;
        *fail = true;
    } else {
        uint32_t *seen = &psp->calls[bb_fnv1a(BB_FNV1A_BASIS, call->key) % PSP_CALL_SLOTS];
        double r = draw(c->seed, call->op, call->key, (*seen)++);
        *hang = r < c->timeout_rate;
        *fail = !*hang && r < c->timeout_rate + c->failure_rate;
    }
    a->outcome = PSP_APPROVED;
    bool authorize = strcmp(call->op, "authorize") == 0;
    for (size_t i = 0; authorize && i < c->n_decline_cards && call->card; i++) {
        if (strcmp(c->decline_cards[i], call->card) == 0) {
            a->outcome = PSP_DECLINED;
            bb_strlcpy(a->reason, "card declined", sizeof a->reason);
        }
    }
    for (size_t i = 0; authorize && i < c->n_decline_amounts; i++) {
        if (c->decline_amounts[i] == call->amount) {
            a->outcome = PSP_DECLINED;
            bb_strlcpy(a->reason, "amount declined", sizeof a->reason);
        }
    }
    if (authorize && a->outcome == PSP_APPROVED &&
        draw(c->seed, "decline", call->key, 0) < c->decline_rate) {
        a->outcome = PSP_DECLINED;
        bb_strlcpy(a->reason, "insufficient funds", sizeof a->reason);
    }
    pthread_mutex_unlock(&psp->mu);
}

/* psp_charges is created with the payment tables (payment_store.c). */
static struct store_stmt CHARGE_RECORD = {
    .sql = "INSERT INTO psp_charges (key, op, reference, amount, currency, outcome, reason,"
           " created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
           " ON CONFLICT (key) DO NOTHING",
};
static struct store_stmt CHARGE_GET = {
    .sql = "SELECT reference, outcome, reason, amount FROM psp_charges WHERE key = $1",
};
/* One settlement of an authorization at a time (SQLite has one writer). */
static struct store_stmt SETTLE_LOCK = {
    .sql_pg = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7261))",
    .sql_sqlite = "SELECT $1",
};
static struct store_stmt SETTLED = {
    .sql = "SELECT op, amount, reference FROM psp_charges WHERE key IN ($1, $2, $3)"
           " AND outcome = 'approved'",
};

/* $1 the keys, in any order: their locks are taken in key order. */
static struct store_stmt SETTLE_LOCK_MANY = {
    .sql_pg = "SELECT pg_advisory_xact_lock(hashtextextended(k, 7261))"
              " FROM (SELECT k FROM unnest($1::text[]) AS k ORDER BY 1) s",
    .sql_sqlite = "SELECT $1",
};
static struct store_stmt SETTLED_MANY = {
    .sql_pg = "SELECT key, op, amount, reference FROM psp_charges"
              " WHERE key = ANY($1::text[]) AND outcome = 'approved'",
    .sql_sqlite = "SELECT key, op, amount, reference FROM psp_charges"
                  " WHERE key IN (SELECT value FROM json_each($1)) AND outcome = 'approved'",
};
/* A batch of (key, op, reference, amount, currency, outcome, reason), then
 * now. */
static struct store_stmt CHARGE_RECORD_MANY = {
    .sql_pg = "INSERT INTO psp_charges (key, op, reference, amount, currency, outcome, reason,"
              " created_at_ms) SELECT key, op, reference, amount, currency, outcome, reason, $8"
              " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],"
              " $6::text[], $7::text[]) AS x(key, op, reference, amount, currency, outcome,"
              " reason)"
              " ON CONFLICT (key) DO NOTHING RETURNING key",
    .sql_sqlite = "INSERT INTO psp_charges (key, op, reference, amount, currency, outcome, reason,"
                  " created_at_ms) SELECT value ->> 'key', value ->> 'op', value ->> 'reference',"
                  " value ->> 'amount', value ->> 'currency', value ->> 'outcome',"
                  " value ->> 'reason', $2 FROM json_each($1) WHERE true"
                  " ON CONFLICT (key) DO NOTHING RETURNING key",
};
static struct store_stmt CHARGE_GET_MANY = {
    .sql_pg = "SELECT key, reference, outcome, reason, amount FROM psp_charges"
              " WHERE key = ANY($1::text[])",
    .sql_sqlite = "SELECT key, reference, outcome, reason, amount FROM psp_charges"
                  " WHERE key IN (SELECT value FROM json_each($1))",
};

struct record_unit {
    const struct payments__psp_call *call;
    struct payments__psp_answer *a;
    struct payments__psp_answer decided; /* before the record was consulted */
    int64_t now_ms;
    enum err rc;
    bool alone; /* its batch failed as a whole: record it alone */
};

static bool
is_settlement(const struct payments__psp_call *call)
{
    return call->payment_key != NULL &&
           (strcmp(call->op, "capture") == 0 || strcmp(call->op, "void") == 0);
}

enum { SETTLEMENT_KEY_MAX = STORE_IDEM_KEY_MAX + 16 };

/* The keys under which the authorization itself, its capture and its void
 * are recorded. */
enum { SETTLEMENT_KEYS = 3 };
static void
settlement_keys(const struct payments__psp_call *call,
                char keys[SETTLEMENT_KEYS][SETTLEMENT_KEY_MAX])
{
    snprintf(keys[0], SETTLEMENT_KEY_MAX, "capture:%s", call->payment_key);
    snprintf(keys[1], SETTLEMENT_KEY_MAX, "void:%s", call->payment_key);
    snprintf(keys[2], SETTLEMENT_KEY_MAX, "authorize:%s", call->payment_key);
}

/* An approved call (op, amount, reference) about the call's authorization
 * is on record: the authorization (named in the answer), or a settlement:
 * a capture declines after a void, a void after a capture. */
static void
settled_as(const struct payments__psp_call *call, struct payments__psp_answer *a, const char *op,
           int64_t amount, const char *reference)
{
    if (strcmp(op, "authorize") == 0) {
        bb_strlcpy(a->authorization, reference, sizeof a->authorization);
        return;
    }
    bool capture = strcmp(call->op, "capture") == 0;
    if (!capture && strcmp(op, "capture") == 0)
        a->captured = amount;
    if (capture && strcmp(op, "void") == 0)
        a->voided = true;
    if (a->captured > 0 || a->voided) {
        a->outcome = PSP_DECLINED;
        bb_strlcpy(a->reason,
                   a->voided ? "the authorization was voided" : "the authorization was captured",
                   sizeof a->reason);
    }
}

/* A capture or void of an authorization settled the other way is declined. */
static enum err
settle_check(struct store_conn *c, const struct payments__psp_call *call,
             struct payments__psp_answer *a, struct bb_error *e)
{
    if (!is_settlement(call))
        return ERR_OK;
    char keys[SETTLEMENT_KEYS][SETTLEMENT_KEY_MAX];
    settlement_keys(call, keys);
    const struct store_param p[] = {sp_text(keys[0]), sp_text(keys[1]), sp_text(keys[2])};
    enum err rc = store_exec(c, &SETTLE_LOCK, p, 1, NULL, e);
    struct store_rows r;
    if (rc == ERR_OK)
        rc = store_query(c, &SETTLED, p, SETTLEMENT_KEYS, &r, e);
    if (rc != ERR_OK)
        return rc;
    while (store_next(&r))
        settled_as(call, a, store_col_text(&r, 0), store_col_int(&r, 1), store_col_text(&r, 2));
    store_rows_close(&r);
    return ERR_OK;
}

/* The answer recorded for the call's key before (columns reference,
 * outcome, reason, amount from `col`); a call with another amount than the
 * recorded one is refused instead: replaying the answer would let the
 * caller book an amount the PSP never charged. */
static void
recorded_answer(const struct store_rows *r, int col, const struct payments__psp_call *call,
                struct payments__psp_answer *a)
{
    bb_strlcpy(a->reference, store_col_text(r, col), sizeof a->reference);
    a->outcome = strcmp(store_col_text(r, col + 1), "declined") == 0 ? PSP_DECLINED : PSP_APPROVED;
    if (a->outcome == PSP_APPROVED) { /* it was recorded before any settlement */
        a->captured = 0;
        a->voided = false;
    }
    bb_strlcpy(a->reason, store_col_is_null(r, col + 2) ? "" : store_col_text(r, col + 2),
               sizeof a->reason);
    int64_t amount = store_col_int(r, col + 3);
    if (amount == call->amount)
        return;
    /* A capture made under this key settled the authorization: say so, as
     * a void after it would learn it. */
    if (a->outcome == PSP_APPROVED && strcmp(call->op, "capture") == 0)
        a->captured = amount;
    a->outcome = PSP_DECLINED;
    a->other_amount = true;
    a->recorded_amount = amount;
    snprintf(a->reason, sizeof a->reason, "the key was used for amount %" PRId64, amount);
}

/* Record the decision, or read the one recorded for this key before. */
static enum err
record_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct record_unit *u = arg;
    const struct payments__psp_call *call = u->call;
    struct payments__psp_answer *a = u->a;
    *a = u->decided; /* this transaction may be a retry */
    enum err rc = settle_check(c, call, a, e);
    if (rc != ERR_OK)
        return rc;
    const struct store_param p[] = {sp_text(call->key),
                                    sp_text(call->op),
                                    sp_text(a->reference),
                                    sp_int(call->amount),
                                    sp_text(call->currency),
                                    sp_text(payments__psp_outcome_name(a->outcome)),
                                    sp_text(a->reason[0] ? a->reason : NULL),
                                    sp_int(u->now_ms)};
    int64_t inserted = 0;
    rc = store_exec(c, &CHARGE_RECORD, p, BB_ARRAY_LEN(p), &inserted, e);
    if (rc != ERR_OK || inserted == 1)
        return rc;
    struct store_rows r;
    rc = store_query(c, &CHARGE_GET, p, 1, &r, e);
    if (rc != ERR_OK)
        return rc;
    if (store_next(&r))
        recorded_answer(&r, 0, call, a);
    store_rows_close(&r);
    return ERR_OK;
}

struct record_batch {
    struct record_unit **m;
    size_t n;
};

/* The member whose key (or, with `settled`, one of whose settlement keys)
 * is `key`; NULL if none. */
static struct record_unit *
member_of(const struct record_batch *b, const char *key, bool settled)
{
    for (size_t i = 0; i < b->n; i++) {
        const struct payments__psp_call *call = b->m[i]->call;
        if (!settled && strcmp(call->key, key) == 0)
            return b->m[i];
        if (settled && is_settlement(call)) {
            char keys[SETTLEMENT_KEYS][SETTLEMENT_KEY_MAX];
            settlement_keys(call, keys);
            for (size_t k = 0; k < SETTLEMENT_KEYS; k++)
                if (strcmp(keys[k], key) == 0)
                    return b->m[i];
        }
    }
    return NULL;
}

static enum err
query_keys(struct store_conn *c, struct store_stmt *st, const char *const *keys, size_t n,
           struct store_rows *r, struct bb_error *e)
{
    struct store_batch b;
    store_batch_texts(&b, c, keys, n);
    const struct store_param p[] = {sp_batch(&b)};
    enum err rc = store_query(c, st, p, 1, r, e);
    store_batch_deinit(&b);
    return rc;
}

/* record_work for a batch of calls that concern distinct payments. */
static enum err
record_many(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct record_batch *b = arg;
    /* Per settlement: its keys (settlement_keys), the first (captured) the lock's. */
    char(*settle)[SETTLEMENT_KEYS][SETTLEMENT_KEY_MAX] = xcalloc(b->n, sizeof *settle);
    const char **keys = xcalloc(SETTLEMENT_KEYS * b->n, sizeof *keys);
    size_t n_settle = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct record_unit *u = b->m[i];
        *u->a = u->decided;
        if (is_settlement(u->call))
            settlement_keys(u->call, settle[n_settle++]);
    }
    struct store_rows r;
    enum err rc = ERR_OK;
    if (n_settle > 0) {
        for (size_t k = 0; k < n_settle; k++)
            keys[k] = settle[k][0];
        rc = query_keys(c, &SETTLE_LOCK_MANY, keys, n_settle, &r, e);
        if (rc == ERR_OK) {
            store_rows_close(&r);
            for (size_t k = 0; k < SETTLEMENT_KEYS * n_settle; k++)
                keys[k] = settle[k / SETTLEMENT_KEYS][k % SETTLEMENT_KEYS];
            rc = query_keys(c, &SETTLED_MANY, keys, SETTLEMENT_KEYS * n_settle, &r, e);
        }
        while (rc == ERR_OK && store_next(&r)) {
            struct record_unit *u = member_of(b, store_col_text(&r, 0), true);
            if (u)
                settled_as(u->call, u->a, store_col_text(&r, 1), store_col_int(&r, 2),
                           store_col_text(&r, 3));
        }
        if (rc == ERR_OK)
            store_rows_close(&r);
    }
    struct store_batch charges;
    store_batch_init(&charges, c, 7);
    for (size_t i = 0; i < b->n; i++) {
        const struct payments__psp_call *call = b->m[i]->call;
        const struct payments__psp_answer *a = b->m[i]->a;
        store_batch_row(&charges);
        store_batch_text(&charges, "key", call->key);
        store_batch_text(&charges, "op", call->op);
        store_batch_text(&charges, "reference", a->reference);
        store_batch_int(&charges, "amount", call->amount);
        store_batch_text(&charges, "currency", call->currency);
        store_batch_text(&charges, "outcome", payments__psp_outcome_name(a->outcome));
        store_batch_text(&charges, "reason", a->reason[0] ? a->reason : NULL);
    }
    const struct store_param p[] = {sp_batch(&charges), sp_int(b->m[0]->now_ms)};
    if (rc == ERR_OK)
        rc = store_query(c, &CHARGE_RECORD_MANY, p, BB_ARRAY_LEN(p), &r, e);
    store_batch_deinit(&charges);
    /* Keys recorded before answer as then: read them back. */
    bool *fresh = xcalloc(b->n, sizeof *fresh);
    while (rc == ERR_OK && store_next(&r)) {
        for (size_t i = 0; i < b->n; i++) {
            if (!fresh[i] && strcmp(b->m[i]->call->key, store_col_text(&r, 0)) == 0) {
                fresh[i] = true;
                break;
            }
        }
    }
    if (rc == ERR_OK)
        store_rows_close(&r);
    size_t n_before = 0;
    for (size_t i = 0; i < b->n; i++)
        if (!fresh[i])
            keys[n_before++] = b->m[i]->call->key;
    if (rc == ERR_OK && n_before > 0) {
        rc = query_keys(c, &CHARGE_GET_MANY, keys, n_before, &r, e);
        while (rc == ERR_OK && store_next(&r)) {
            struct record_unit *u = member_of(b, store_col_text(&r, 0), false);
            if (u)
                recorded_answer(&r, 1, u->call, u->a);
        }
        if (rc == ERR_OK)
            store_rows_close(&r);
    }
    free(fresh);
    free(keys);
    free(settle);
    return rc;
}

/* Every record is of one kind. */
static bool
record_same(const void *a, const void *b, void *ctx)
{
    (void)a;
    (void)b;
    (void)ctx;
    return true;
}

/* Two calls about one payment: never in one batch. */
static bool
record_conflict(const void *x, const void *y, void *ctx)
{
    (void)ctx;
    const struct payments__psp_call *a = ((const struct record_unit *)x)->call;
    const struct payments__psp_call *b = ((const struct record_unit *)y)->call;
    return strcmp(a->key, b->key) == 0 ||
           (a->payment_key && b->payment_key && strcmp(a->payment_key, b->payment_key) == 0);
}

/* The combiner's run: record the calls it gathered. */
static void
record_carry(void **items, size_t n, void *ctx)
{
    struct payments__psp *psp = ctx;
    struct record_unit **m = xcalloc(n, sizeof *m);
    for (size_t i = 0; i < n; i++)
        m[i] = items[i];
    struct bb_error e;
    if (n == 1) {
        m[0]->rc = store_run(psp->store, STORE_WRITE, record_work, m[0], &e);
    } else {
        struct record_batch b = {.m = m, .n = n};
        enum err rc = store_run(psp->store, STORE_WRITE, record_many, &b, &e);
        payments__metric_batch("psp", n, rc == ERR_OK);
        for (size_t i = 0; i < n; i++) {
            m[i]->rc = rc;
            m[i]->alone = rc != ERR_OK;
        }
    }
    free(m);
}

/* Record the call's decision (in a batch when others are at it too). */
static enum err
record(struct payments__psp *psp, struct record_unit *u)
{
    struct bb_error e;
    if (psp->combiner && bb_combine(psp->combiner, u) && !u->alone)
        return u->rc;
    return store_run(psp->store, STORE_WRITE, record_work, u, &e);
}

void
payments__psp_call(struct payments__psp *psp, const struct payments__psp_call *call,
                   int64_t timeout_ms, struct payments__psp_answer *a)
{
    memset(a, 0, sizeof *a);
    int64_t t0 = bb_mono_ms();
    bool fail, hang;
    int64_t latency;
    decide(psp, call, &fail, &hang, &latency, a);
    char digest[65];
    bb_sha256_hex(call->key, strlen(call->key), digest);
    snprintf(a->reference, sizeof a->reference, "psp_%.24s", digest);
    if (latency >= timeout_ms)
        hang = true;
    if (!fail) {
        struct record_unit u = {.call = call, .a = a, .decided = *a, .now_ms = bb_wall_ms()};
        if (record(psp, &u) != ERR_OK)
            fail = true; /* the PSP's own database failed: a transient error */
    }
    bb_sleep_ms(hang ? timeout_ms : latency);
    if (hang || fail) { /* whatever it decided, the caller does not hear it */
        a->captured = 0;
        a->voided = false;
        a->other_amount = false;
        a->recorded_amount = 0;
    }
    if (hang) {
        a->outcome = PSP_TIMEOUT;
        snprintf(a->reason, sizeof a->reason, "no answer from the PSP within %" PRId64 " ms",
                 timeout_ms);
    } else if (fail) {
        a->outcome = PSP_ERROR;
        bb_strlcpy(a->reason, "the PSP failed (try again)", sizeof a->reason);
    }
    a->latency_ms = bb_mono_ms() - t0;
}

static struct store_stmt CHARGES_LIST = {
    .sql = "SELECT seq, key, op, reference, amount, currency, outcome, reason, created_at_ms"
           " FROM psp_charges WHERE seq > $1 ORDER BY seq LIMIT $2",
};

enum err
payments__psp_list_json(struct store_conn *c, int64_t after, int64_t limit, json_t **out,
                        struct bb_error *e)
{
    struct store_rows r;
    const struct store_param p[] = {sp_int(after), sp_int(limit)};
    enum err rc = store_query(c, &CHARGES_LIST, p, 2, &r, e);
    if (rc != ERR_OK)
        return rc;
    json_t *list = json_array();
    int64_t last = 0;
    while (store_next(&r)) {
        char at[32];
        last = store_col_int(&r, 0);
        bb_wall_ms_format(store_col_int(&r, 8), at);
        json_array_append_new(
            list,
            json_pack("{s:I, s:s, s:s, s:s, s:I, s:s, s:s, s:s?, s:s}", "seq", (json_int_t)last,
                      "key", store_col_text(&r, 1), "op", store_col_text(&r, 2), "reference",
                      store_col_text(&r, 3), "amount", (json_int_t)store_col_int(&r, 4), "currency",
                      store_col_text(&r, 5), "outcome", store_col_text(&r, 6), "reason",
                      store_col_is_null(&r, 7) ? NULL : store_col_text(&r, 7), "at", at));
    }
    store_rows_close(&r);
    bool full = (int64_t)json_array_size(list) == limit;
    *out = json_pack("{s:o, s:o}", "charges", list, "next_after",
                     full ? json_integer(last) : json_null());
    return ERR_OK;
}
