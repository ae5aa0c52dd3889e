/*
 * checkout_saga.c: the checkout saga, started by checkout.requested.v1:
 *
 *   create order -> reserve inventory -> authorize payment -> capture payment
 *   -> commit reservation -> confirm order (and enqueue its fulfilment)
 *
 * compensated by cancel order, release reservation (or give sold stock
 * back), void or refund payment. Database steps run in the saga's
 * transition transaction, so they and the saga's move commit together;
 * payment steps call the PSP outside any transaction, with the step's key
 * (a retry never charges twice) and the fencing token of the lock
 * payment:{order_id}, taken per run (in the transaction that makes the step
 * next, given back in the one that records it), so a run that lost its job
 * lease is refused by the payments ledger. The ledger's fence and an
 * authorization's intent (with the id the saga's data keeps for it) are
 * written with the lock, and the PSP's answers in the transaction that
 * records the step (saga_record): a payment step reads the ledger only
 * when it had to take the lock itself.
 */
#include "checkout/checkout_int.h"

#include "inventory/inventory.h"
#include "locks/locks.h"
#include "payments/payments.h"
#include "saga/saga.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct checkout_saga {
    struct checkout_saga_options opt;
    struct saga_def def;
};

static const char *
data_text(const struct saga_step_run *run, const char *key)
{
    return json_string_value(json_object_get(run->data, key));
}

/* Transient trouble: try again; if it lasts, the customer reads `reason`. */
static enum saga_outcome
retry(struct saga_step_run *run, const char *reason)
{
    bb_strlcpy(run->reason, reason, sizeof run->reason);
    return SAGA_STEP_RETRY;
}

static enum saga_outcome
fail(struct saga_step_run *run, const char *reason)
{
    bb_strlcpy(run->reason, reason, sizeof run->reason);
    return SAGA_STEP_FAIL;
}

/* ---- order ---------------------------------------------------------------------------------- */

static enum saga_outcome
create_order(struct saga_step_run *run, struct bb_error *e)
{
    struct order_item items[ORDER_ITEMS_MAX];
    size_t n;
    if (order_items_from_json(json_object_get(run->data, "items"), items, &n, e) != ERR_OK)
        return fail(run, "the basket is not valid");
    struct order_spec spec = {.checkout_id = data_text(run, "checkout_id"),
                              .customer_id = data_text(run, "customer_id"),
                              .currency = data_text(run, "currency"),
                              .items = items,
                              .n_items = n};
    char id[ORDER_UUID_LEN + 1];
    bool created;
    int64_t now = bb_wall_ms();
    enum err rc = order_create(run->c, &spec, now, id, NULL, &created, e);
    if (rc == ERR_OK) {
        json_object_set_new(run->data, "order_id", json_string(id));
        rc = checkout__set_order(run->c, spec.checkout_id, id, now, e);
    }
    if (rc == ERR_IDEMPOTENCY_MISMATCH || rc == ERR_INVALID)
        return fail(run, "the order could not be created");
    return rc == ERR_OK ? SAGA_STEP_OK : retry(run, "the order could not be created");
}

/* create_order for a batch of sagas. */
static enum err
create_orders(struct saga_step_run **runs, size_t n, enum saga_outcome *out,
              struct bb_error *errors, struct bb_error *e)
{
    struct order_item(*items)[ORDER_ITEMS_MAX] = xcalloc(n, sizeof *items);
    struct order_spec *specs = xcalloc(n, sizeof *specs);
    char(*ids)[ORDER_UUID_LEN + 1] = xcalloc(n, sizeof *ids);
    enum err *oc = xcalloc(n, sizeof *oc);
    struct bb_error *errs = xcalloc(n, sizeof *errs);
    size_t *idx = xcalloc(n, sizeof *idx), m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        out[i] = SAGA_STEP_OK;
        if (order_items_from_json(json_object_get(runs[i]->data, "items"), items[m], &k,
                                  &errors[i]) != ERR_OK) {
            out[i] = fail(runs[i], "the basket is not valid");
            continue;
        }
        specs[m] = (struct order_spec){.checkout_id = data_text(runs[i], "checkout_id"),
                                       .customer_id = data_text(runs[i], "customer_id"),
                                       .currency = data_text(runs[i], "currency"),
                                       .items = items[m],
                                       .n_items = k,
                                       .traceparent = runs[i]->traceparent};
        idx[m++] = i;
    }
    int64_t now = bb_wall_ms();
    enum err rc = order_create_many(runs[0]->c, specs, m, now, ids, oc, errs, e);
    const char **checkouts = xcalloc(m + 1, sizeof *checkouts);
    const char **orders = xcalloc(m + 1, sizeof *orders);
    size_t made = 0;
    for (size_t k = 0; k < m && rc == ERR_OK; k++) {
        size_t i = idx[k];
        if (oc[k] != ERR_OK) {
            errors[i] = errs[k];
            out[i] = fail(runs[i], "the order could not be created");
            continue;
        }
        json_object_set_new(runs[i]->data, "order_id", json_string(ids[k]));
        checkouts[made] = specs[k].checkout_id;
        orders[made++] = ids[k];
    }
    if (rc == ERR_OK && made > 0)
        rc = checkout__set_orders(runs[0]->c, checkouts, orders, made, now, e);
    free(checkouts);
    free(orders);
    free(idx);
    free(errs);
    free(oc);
    free(ids);
    free(specs);
    free(items);
    return rc;
}

static enum saga_outcome
cancel_order(struct saga_step_run *run, struct bb_error *e)
{
    const char *order_id = data_text(run, "order_id");
    if (order_id == NULL)
        return SAGA_STEP_OK;
    enum err rc = order_cancel(run->c, order_id,
                               run->failure && *run->failure ? run->failure : "checkout failed",
                               bb_wall_ms(), NULL, e);
    return rc == ERR_OK || rc == ERR_NOT_FOUND ? SAGA_STEP_OK : SAGA_STEP_RETRY;
}

/* The fulfilment job of an order confirmed in this transaction. No unique
 * key: the confirmation commits once per saga (its move is a
 * compare-and-set; a unit whose commit answer was lost reads the saga back
 * and goes on from what committed, so it is not confirmed twice), and the
 * job records an order once. A unique key would not say more: it holds
 * only while its job is pending or running. The scenarios' reconciliation
 * counts these jobs against the checkouts (scripts/scenarios/lib.sh). */
static struct job_spec
fulfilment_job(char payload[256], const char *order_id, const struct saga_step_run *run)
{
    snprintf(payload, 256, "{\"order_id\":\"%s\",\"checkout_id\":\"%s\"}", order_id,
             data_text(run, "checkout_id"));
    return (struct job_spec){.queue = "default",
                             .handler = CHECKOUT_FULFILMENT_HANDLER,
                             .payload = payload,
                             .traceparent = run->traceparent};
}

static enum saga_outcome
confirm_order(struct saga_step_run *run, struct bb_error *e)
{
    const char *order_id = data_text(run, "order_id");
    int64_t now = bb_wall_ms();
    enum err rc = order_confirm(run->c, order_id, "paid", now, NULL, e);
    if (rc == ERR_CONFLICT)
        return fail(run, "the order was cancelled");
    if (rc != ERR_OK)
        return retry(run, "the order could not be confirmed");
    /* Fulfilment follows, in the same transaction. */
    char payload[256];
    struct job_spec spec = fulfilment_job(payload, order_id, run);
    int64_t job_id;
    bool created;
    size_t failed_at;
    rc = job_submit_many_here(run->c, run->pool, &spec, 1, now, &job_id, &created, &failed_at, e);
    return rc == ERR_OK ? SAGA_STEP_OK : retry(run, "the order could not be confirmed");
}

/* confirm_order for a batch of sagas, their fulfilment jobs in one insert. */
static enum err
confirm_orders(struct saga_step_run **runs, size_t n, enum saga_outcome *out,
               struct bb_error *errors, struct bb_error *e)
{
    const char **ids = xcalloc(n, sizeof *ids), **traces = xcalloc(n, sizeof *traces);
    enum err *oc = xcalloc(n, sizeof *oc);
    for (size_t i = 0; i < n; i++) {
        ids[i] = data_text(runs[i], "order_id");
        traces[i] = runs[i]->traceparent;
    }
    int64_t now = bb_wall_ms();
    enum err rc = order_confirm_many(runs[0]->c, ids, traces, n, "paid", now, oc, errors, e);
    free(traces);
    struct job_spec *jobs = xcalloc(n, sizeof *jobs);
    char(*payloads)[256] = xcalloc(n, sizeof *payloads);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        out[i] = SAGA_STEP_OK;
        if (oc[i] == ERR_CONFLICT)
            out[i] = fail(runs[i], "the order was cancelled");
        else if (oc[i] != ERR_OK)
            out[i] = retry(runs[i], "the order could not be confirmed");
        else
            jobs[k++] = fulfilment_job(payloads[i], ids[i], runs[i]);
    }
    int64_t *job_ids = xcalloc(k + 1, sizeof *job_ids);
    bool *created = xcalloc(k + 1, sizeof *created);
    size_t failed_at;
    if (rc == ERR_OK && k > 0)
        rc = job_submit_many_here(runs[0]->c, runs[0]->pool, jobs, k, now, job_ids, created,
                                  &failed_at, e);
    free(created);
    free(job_ids);
    free(payloads);
    free(jobs);
    free(oc);
    free(ids);
    return rc;
}

/* ---- inventory ---------------------------------------------------------------------------- */

/* The basket's SKUs and quantities. */
static size_t
basket(const struct saga_step_run *run, struct inventory_item *out)
{
    json_t *items = json_object_get(run->data, "items");
    size_t i, n = 0;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        if (n == INVENTORY_ITEMS_MAX)
            break;
        out[n].sku = json_string_value(json_object_get(it, "sku"));
        out[n].qty = json_integer_value(json_object_get(it, "qty"));
        n++;
    }
    return n;
}

/* What a reservation's verdict means for its saga, alone or batched: a
 * shortage, an unknown product or another basket under the order's id fail
 * for good; anything else (the database) is retried. */
static enum saga_outcome
reserve_outcome(struct saga_step_run *run, enum err rc)
{
    switch (rc) {
    case ERR_OK:
        return SAGA_STEP_OK;
    case ERR_INSUFFICIENT_STOCK:
        return fail(run, "out of stock");
    case ERR_NOT_FOUND:
        return fail(run, "a product in the basket is not sold here");
    case ERR_IDEMPOTENCY_MISMATCH:
        return fail(run, "the stock could not be reserved");
    default:
        return retry(run, "the stock could not be reserved");
    }
}

static enum saga_outcome
reserve_inventory(struct saga_step_run *run, struct bb_error *e)
{
    const struct checkout_saga *cs = run->ctx;
    struct inventory_item items[INVENTORY_ITEMS_MAX];
    size_t n = basket(run, items);
    json_t *short_items = NULL;
    bool created;
    enum err rc =
        inventory_reserve(run->c, data_text(run, "order_id"), items, n, cs->opt.reservation_ttl_ms,
                          bb_wall_ms(), NULL, &created, &short_items, e);
    json_decref(short_items);
    return reserve_outcome(run, rc);
}

/* reserve_inventory for a batch of sagas. */
static enum err
reserve_inventories(struct saga_step_run **runs, size_t n, enum saga_outcome *out,
                    struct bb_error *errors, struct bb_error *e)
{
    const struct checkout_saga *cs = runs[0]->ctx;
    struct inventory_item(*items)[INVENTORY_ITEMS_MAX] = xcalloc(n, sizeof *items);
    struct inventory_reservation_req *reqs = xcalloc(n, sizeof *reqs);
    enum err *oc = xcalloc(n, sizeof *oc);
    for (size_t i = 0; i < n; i++)
        reqs[i] = (struct inventory_reservation_req){.order_id = data_text(runs[i], "order_id"),
                                                     .items = items[i],
                                                     .n_items = basket(runs[i], items[i]),
                                                     .traceparent = runs[i]->traceparent};
    enum err rc = inventory_reserve_many(runs[0]->c, reqs, n, cs->opt.reservation_ttl_ms,
                                         bb_wall_ms(), oc, errors, e);
    for (size_t i = 0; i < n; i++)
        out[i] = reserve_outcome(runs[i], oc[i]);
    free(oc);
    free(reqs);
    free(items);
    return rc;
}

/* Give the stock back: release the reservation, or, once it was sold,
 * return the units with an adjustment per item. */
static enum saga_outcome
release_inventory(struct saga_step_run *run, struct bb_error *e)
{
    const char *order_id = data_text(run, "order_id");
    json_t *res = NULL;
    int64_t now = bb_wall_ms();
    enum err rc = inventory_release(run->c, order_id, now, NULL, e);
    if (rc == ERR_OK || rc == ERR_NOT_FOUND)
        return SAGA_STEP_OK;
    if (rc != ERR_CONFLICT)
        return SAGA_STEP_RETRY;
    struct inventory_item items[INVENTORY_ITEMS_MAX];
    size_t n = basket(run, items);
    for (size_t i = 0; i < n; i++) {
        char key[256];
        snprintf(key, sizeof key, "%s:%s", run->key, items[i].sku);
        rc = inventory_adjust(run->c, key, items[i].sku, items[i].qty, "checkout compensated", now,
                              &res, e);
        json_decref(res);
        res = NULL;
        if (rc != ERR_OK)
            return SAGA_STEP_RETRY;
    }
    return SAGA_STEP_OK;
}

/* What committing a reservation that answered `rc` comes to. */
static enum saga_outcome
commit_outcome(struct saga_step_run *run, enum err rc)
{
    if (rc == ERR_RESERVATION_EXPIRED)
        return fail(run, "the reservation expired before the payment completed");
    if (rc == ERR_CONFLICT || rc == ERR_NOT_FOUND)
        return fail(run, "the reserved stock was released");
    return rc == ERR_OK ? SAGA_STEP_OK : retry(run, "the stock could not be committed");
}

static enum saga_outcome
commit_reservation(struct saga_step_run *run, struct bb_error *e)
{
    return commit_outcome(
        run, inventory_commit(run->c, data_text(run, "order_id"), bb_wall_ms(), NULL, e));
}

/* commit_reservation for a batch of sagas. */
static enum err
commit_reservations(struct saga_step_run **runs, size_t n, enum saga_outcome *out,
                    struct bb_error *errors, struct bb_error *e)
{
    const char **ids = xcalloc(n, sizeof *ids), **traces = xcalloc(n, sizeof *traces);
    enum err *oc = xcalloc(n, sizeof *oc);
    for (size_t i = 0; i < n; i++) {
        ids[i] = data_text(runs[i], "order_id");
        traces[i] = runs[i]->traceparent;
    }
    enum err rc = inventory_commit_many(runs[0]->c, ids, traces, n, bb_wall_ms(), oc, errors, e);
    free(traces);
    for (size_t i = 0; i < n; i++)
        out[i] = commit_outcome(runs[i], oc[i]);
    free(oc);
    free(ids);
    return rc;
}

/* ---- payment ------------------------------------------------------------------------------- */

/* payment:{order_id}, owned by this run of the step: the owner names the
 * job and its lease (saga:{id}:{job}:{lease}; a saga's retries and a
 * person's retry are new jobs whose leases count from 1 again), so a later
 * run is another owner with a larger token. */
static void
payment_lock_names(const struct saga_step_run *run, char name[128], char owner[128])
{
    snprintf(name, 128, PAYMENT_FENCE_PREFIX "%s", data_text(run, "order_id"));
    snprintf(owner, 128, "saga:%s:%" PRId64 ":%" PRId64, run->saga_id, run->job_id,
             run->lease_token);
}

/* Refused: an earlier run of this saga may hold the lock, one whose grant
 * committed though its transaction's answer was lost (so it retried), or
 * one that was rescued. That run is over (a saga runs one step at a time,
 * and a run that is not the saga's current one does nothing); the lock is
 * freed for this one instead of waiting out its TTL, and the larger token
 * this run gets fences the earlier one out. *freed: how many of the n
 * (refused) locks were. */
static enum err
free_superseded_payment_locks(struct saga_step_run *const *runs, size_t n, int64_t *freed,
                              struct bb_error *e)
{
    char(*names)[128] = xcalloc(n, sizeof *names);
    char(*owners)[128] = xcalloc(n, sizeof *owners);
    char(*prefixes)[128] = xcalloc(n, sizeof *prefixes);
    const char **np = xcalloc(n, sizeof *np), **op = xcalloc(n, sizeof *op),
               **pp = xcalloc(n, sizeof *pp);
    for (size_t i = 0; i < n; i++) {
        payment_lock_names(runs[i], names[i], owners[i]);
        snprintf(prefixes[i], 128, "saga:%s:", runs[i]->saga_id);
        np[i] = names[i];
        op[i] = owners[i];
        pp[i] = prefixes[i];
    }
    enum err rc = lock_release_superseded_many(runs[0]->c, np, pp, op, n, bb_wall_ms(), freed, e);
    free(pp);
    free(op);
    free(np);
    free(prefixes);
    free(owners);
    free(names);
    return rc;
}

/* Take again the locks lock_acquire_many refused (tokens[i] == 0; `nr` of
 * the n) that an earlier run of their saga held: freed, they are this
 * run's, with a larger token. */
static enum err
retake_refused_payment_locks(struct saga_step_run **runs, const char *const *np,
                             const char *const *op, size_t n, size_t nr, int64_t *tokens,
                             struct bb_error *e)
{
    const struct checkout_saga *cs = runs[0]->ctx;
    struct saga_step_run **refused = xcalloc(nr, sizeof *refused);
    const char **rnp = xcalloc(nr, sizeof *rnp), **rop = xcalloc(nr, sizeof *rop);
    int64_t *rtokens = xcalloc(nr, sizeof *rtokens);
    for (size_t i = 0, k = 0; i < n; i++) {
        if (tokens[i] == 0) {
            refused[k] = runs[i];
            rnp[k] = np[i];
            rop[k++] = op[i];
        }
    }
    int64_t freed = 0;
    enum err rc = free_superseded_payment_locks(refused, nr, &freed, e);
    if (rc == ERR_OK && freed > 0)
        rc = lock_acquire_many(runs[0]->c, rnp, rop, nr, cs->opt.payment_lock_ttl_ms, bb_wall_ms(),
                               rtokens, e);
    for (size_t i = 0, k = 0; rc == ERR_OK && freed > 0 && i < n; i++)
        if (tokens[i] == 0)
            tokens[i] = rtokens[k++];
    free(rtokens);
    free(rop);
    free(rnp);
    free(refused);
    return rc;
}

/* The authorization the step asks for, fenced by `token`. */
static struct payment_request
authorization(const struct saga_step_run *run, int64_t token)
{
    return (struct payment_request){
        .order_id = data_text(run, "order_id"),
        .amount = json_integer_value(json_object_get(run->data, "total_amount")),
        .currency = data_text(run, "currency"),
        .card = data_text(run, "card"),
        .idempotency_key = run->key,
        .lock_token = token,
    };
}

/* With the lock taken (tokens[i] > 0), in its transaction: the ledger's
 * fence raised to its token, and an authorization's intent recorded, with
 * the id the saga's data keeps for it (chosen the first time; the engine's
 * hold writes the data with the unit), so that the step need not read it
 * before it asks the PSP. A token the previous step held (the lock
 * renewed) was fenced for that one already. */
static enum err
prepare_payments(struct saga_step_run **runs, const int64_t *tokens, size_t n, struct bb_error *e)
{
    struct payment_request *reqs = xcalloc(n, sizeof *reqs);
    bool intents = strcmp(runs[0]->step, "authorize_payment") == 0 && !runs[0]->compensating;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] <= 0 || tokens[i] == runs[i]->held)
            continue;
        reqs[k] = authorization(runs[i], tokens[i]);
        if (intents && data_text(runs[i], "authorization_id") == NULL) {
            char id[PAYMENT_ID_LEN + 1];
            bb_uuid7_at(bb_wall_ms(), id);
            json_object_set_new(runs[i]->data, "authorization_id", json_string(id));
        }
        reqs[k++].intent_id = intents ? data_text(runs[i], "authorization_id") : NULL;
    }
    enum err rc = payment_prepare(runs[0]->c, reqs, k, intents, e);
    free(reqs);
    return rc;
}

/* The engine's hold: in the transaction that makes a payment step next. */
static enum err
hold_payment_lock(struct saga_step_run *run, int64_t *token, struct bb_error *e)
{
    const struct checkout_saga *cs = run->ctx;
    char name[128], owner[128];
    payment_lock_names(run, name, owner);
    struct lock_grant grant;
    enum lock_outcome how;
    enum err rc = lock_acquire(run->c, name, owner, cs->opt.payment_lock_ttl_ms, bb_wall_ms(), 0,
                               &grant, &how, e);
    if (rc == ERR_LOCK_HELD) {
        struct bb_error held = *e;
        int64_t freed = 0;
        rc = free_superseded_payment_locks(&run, 1, &freed, e);
        if (rc == ERR_OK && freed == 1)
            rc = lock_acquire(run->c, name, owner, cs->opt.payment_lock_ttl_ms, bb_wall_ms(), 0,
                              &grant, &how, e);
        else if (rc == ERR_OK) {
            rc = ERR_LOCK_HELD;
            *e = held;
        }
    }
    *token = rc == ERR_OK ? grant.token : 0;
    return rc == ERR_OK ? prepare_payments(&run, token, 1, e) : rc;
}

/* ...and its unhold, in the transaction that records the step. */
static void
unhold_payment_lock(struct saga_step_run *run, int64_t token)
{
    char name[128], owner[128];
    payment_lock_names(run, name, owner);
    struct bb_error e;
    if (lock_release(run->c, name, token, bb_wall_ms(), &e) != ERR_OK)
        log_debug("checkout.unlock_failed", "lock=%s detail=%s", name, e.detail);
}

/* The same for the sagas of a batched unit: one statement. */
static enum err
hold_payment_locks(struct saga_step_run **runs, size_t n, int64_t *tokens, struct bb_error *e)
{
    const struct checkout_saga *cs = runs[0]->ctx;
    char(*names)[128] = xcalloc(n, sizeof *names);
    char(*owners)[128] = xcalloc(n, sizeof *owners);
    const char **np = xcalloc(n, sizeof *np), **op = xcalloc(n, sizeof *op);
    for (size_t i = 0; i < n; i++) {
        payment_lock_names(runs[i], names[i], owners[i]);
        np[i] = names[i];
        op[i] = owners[i];
    }
    enum err rc = lock_acquire_many(runs[0]->c, np, op, n, cs->opt.payment_lock_ttl_ms,
                                    bb_wall_ms(), tokens, e);
    size_t refused = 0;
    for (size_t i = 0; rc == ERR_OK && i < n; i++)
        refused += tokens[i] == 0;
    if (refused > 0)
        rc = retake_refused_payment_locks(runs, np, op, n, refused, tokens, e);
    if (rc == ERR_OK)
        rc = prepare_payments(runs, tokens, n, e);
    free(op);
    free(np);
    free(owners);
    free(names);
    return rc;
}

static void
unhold_payment_locks(struct saga_step_run **runs, const int64_t *tokens, size_t n)
{
    char(*names)[128] = xcalloc(n, sizeof *names);
    char owner[128];
    const char **np = xcalloc(n, sizeof *np);
    for (size_t i = 0; i < n; i++) {
        payment_lock_names(runs[i], names[i], owner);
        np[i] = names[i];
    }
    struct bb_error e;
    if (lock_release_many(runs[0]->c, np, tokens, n, bb_wall_ms(), &e) != ERR_OK)
        log_debug("checkout.unlock_failed", "locks=%zu detail=%s", n, e.detail);
    free(np);
    free(names);
}

static enum err
lock_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct saga_step_run *run = arg;
    int64_t token = 0; /* run->held stays 0 until then: prepare_payments reads it */
    run->c = c;
    enum err rc = hold_payment_lock(run, &token, e);
    run->c = NULL;
    run->held = rc == ERR_OK ? token : 0;
    return rc;
}

/* The lock's token for this run: held since the step became next, or
 * taken now (a rescued run). */
static enum err
payment_lock(struct saga_step_run *run, struct bb_error *e)
{
    return run->held != 0 ? ERR_OK : store_run(run->store, STORE_WRITE, lock_work, run, e);
}

static enum saga_outcome
payment_trouble(struct saga_step_run *run, enum err rc)
{
    switch (rc) {
    case ERR_PAYMENT_DECLINED:
        return fail(run, "the payment was declined");
    case ERR_UPSTREAM:
    case ERR_TIMEOUT:
    case ERR_STALE_TOKEN:
    case ERR_LOCK_HELD:
    case ERR_RETRY:
    case ERR_STORE:
    case ERR_UNAVAILABLE:
    case ERR_OVERLOADED:
        return retry(run, "the payment service is unavailable");
    default:
        return fail(run, "the payment could not be taken");
    }
}

static enum err
record_payments(struct store_conn *c, void *const *args, size_t n, struct bb_error *e)
{
    struct payment_outcome **o = xcalloc(n, sizeof *o);
    for (size_t i = 0; i < n; i++)
        o[i] = args[i];
    enum err rc = payment_outcomes_record(c, o, n, e);
    free(o);
    return rc;
}

static void
drop_payment(void *arg)
{
    payment_outcome_free(arg);
}

/* The PSP's answer goes into the ledger with the saga's record of it. */
static void
record_with_step(struct saga_step_run *run, struct payment_outcome *pending)
{
    if (pending)
        run->record =
            (struct saga_record){.fn = record_payments, .arg = pending, .drop = drop_payment};
}

static enum saga_outcome
authorize_payment(struct saga_step_run *run, struct bb_error *e)
{
    const struct checkout_saga *cs = run->ctx;
    /* Held already: taken by the unit that made this step next, which
     * wrote the intent and its id in the data. */
    bool prepared = run->held != 0;
    enum err rc = payment_lock(run, e);
    if (rc != ERR_OK)
        return payment_trouble(run, rc);
    struct payment_request req = authorization(run, run->held);
    if (prepared)
        req.intent_id = data_text(run, "authorization_id");
    char id[PAYMENT_ID_LEN + 1];
    struct payment_outcome *pending;
    rc = payment_authorize_deferred(cs->opt.payments, &req, id, &pending, e);
    record_with_step(run, pending);
    if (id[0]) /* also when it failed: the compensation voids what may be pending */
        json_object_set_new(run->data, "authorization_id", json_string(id));
    return rc == ERR_OK ? SAGA_STEP_OK : payment_trouble(run, rc);
}

static enum saga_outcome
capture_payment(struct saga_step_run *run, struct bb_error *e)
{
    const struct checkout_saga *cs = run->ctx;
    enum err rc = payment_lock(run, e);
    if (rc != ERR_OK)
        return payment_trouble(run, rc);
    /* Run at once after the authorization: its outcome, not written yet. */
    const struct payment_outcome *authorized =
        run->before && run->before->fn == record_payments ? run->before->arg : NULL;
    struct payment_outcome *pending;
    rc = payment_capture_deferred(cs->opt.payments, data_text(run, "authorization_id"), 0,
                                  run->held, authorized, &pending, e);
    record_with_step(run, pending);
    return rc == ERR_OK ? SAGA_STEP_OK : payment_trouble(run, rc);
}

struct payment_read {
    const char *id;
    json_t *payment;
};

static enum err
payment_read_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct payment_read *pr = arg;
    json_decref(pr->payment);
    pr->payment = NULL;
    return payment_get_json(c, pr->id, &pr->payment, e);
}

/* The payment's state in the ledger; ERR_NOT_FOUND if it never got there. */
static enum err
payment_state_of(struct saga_step_run *run, const char *id, enum payment_state *out,
                 struct bb_error *e)
{
    struct payment_read pr = {.id = id};
    enum err rc = store_run(run->store, STORE_READ, payment_read_work, &pr, e);
    if (rc != ERR_OK) {
        json_decref(pr.payment);
        return rc;
    }
    enum payment_state st = PAYMENT_PENDING;
    const char *state = json_string_value(json_object_get(pr.payment, "state"));
    for (int s = PAYMENT_PENDING; s <= PAYMENT_REFUNDED; s++)
        if (state && strcmp(state, payment_state_name((enum payment_state)s)) == 0)
            st = (enum payment_state)s;
    json_decref(pr.payment);
    *out = st;
    return ERR_OK;
}

/* Undo the payment, whatever became of it: void what is pending or
 * authorized, refund what was captured, leave the rest. A void the PSP
 * declines because it had captured the payment (a capture whose answer
 * was lost) teaches the ledger so, and the capture is refunded. */
static enum saga_outcome
undo_payment(struct saga_step_run *run, struct bb_error *e)
{
    const struct checkout_saga *cs = run->ctx;
    const char *id = data_text(run, "authorization_id");
    if (id == NULL)
        return SAGA_STEP_OK; /* never reached the ledger */
    enum err rc = ERR_CONFLICT;
    for (int round = 0; round < 2 && rc == ERR_CONFLICT; round++) {
        enum payment_state st;
        rc = payment_state_of(run, id, &st, e);
        if (rc == ERR_NOT_FOUND)
            return SAGA_STEP_OK;
        if (rc != ERR_OK)
            return SAGA_STEP_RETRY;
        if (st == PAYMENT_FAILED || st == PAYMENT_VOIDED || st == PAYMENT_REFUNDED)
            return SAGA_STEP_OK;
        rc = payment_lock(run, e);
        if (rc != ERR_OK)
            return SAGA_STEP_RETRY;
        if (st == PAYMENT_CAPTURED)
            rc = payment_refund(cs->opt.payments, id, 0, run->key, run->held, NULL, e);
        else
            rc = payment_void(cs->opt.payments, id, run->held, NULL, e);
    }
    return rc == ERR_OK ? SAGA_STEP_OK : SAGA_STEP_RETRY;
}

/* ---- the definition ------------------------------------------------------------------------ */

static const struct saga_step_def STEPS[] = {
    {.name = "create_order",
     .action = create_order,
     .compensate = cancel_order,
     .in_txn = true,
     .action_batch = create_orders},
    {.name = "reserve_inventory",
     .action = reserve_inventory,
     .compensate = release_inventory,
     .in_txn = true,
     .action_batch = reserve_inventories},
    {.name = "authorize_payment",
     .action = authorize_payment,
     .compensate = undo_payment,
     .undo_on_failure = true,
     .hold = hold_payment_lock,
     .unhold = unhold_payment_lock,
     .hold_batch = hold_payment_locks,
     .unhold_batch = unhold_payment_locks},
    {.name = "capture_payment",
     .action = capture_payment,
     .compensate = undo_payment,
     .undo_on_failure = true,
     .at_once = true,
     .hold = hold_payment_lock,
     .unhold = unhold_payment_lock,
     .hold_batch = hold_payment_locks,
     .unhold_batch = unhold_payment_locks},
    {.name = "commit_reservation",
     .action = commit_reservation,
     .in_txn = true,
     .action_batch = commit_reservations},
    {.name = "confirm_order",
     .action = confirm_order,
     .in_txn = true,
     .action_batch = confirm_orders},
};

static enum err
from_event(const json_t *event, const char *checkout_id, json_t **data, void *ctx,
           struct bb_error *e)
{
    (void)ctx;
    json_t *items = json_object_get(event, "items");
    const char *customer = json_string_value(json_object_get(event, "customer_id"));
    const char *currency = json_string_value(json_object_get(event, "currency"));
    json_t *total = json_object_get(event, "total_amount");
    if (!json_is_array(items) || customer == NULL || currency == NULL || !json_is_integer(total))
        return bb_fail(e, ERR_INVALID, "", "checkout %s: the event lacks its basket", checkout_id);
    const char *card =
        json_string_value(json_object_get(json_object_get(event, "payment"), "card"));
    *data = json_pack("{s:s, s:s, s:s, s:O, s:O, s:s?}", "checkout_id", checkout_id, "customer_id",
                      customer, "currency", currency, "total_amount", total, "items", items, "card",
                      card);
    return *data ? ERR_OK : bb_fail(e, ERR_INVALID, "", "checkout %s: bad event", checkout_id);
}

/* Sagas deleted after the retention: their orders' payment locks and
 * fences go with them (no run of those sagas takes them again). */
static enum err
on_prune(struct store_conn *c, const json_t *const *data, size_t n, void *ctx, struct bb_error *e)
{
    (void)ctx;
    char(*names)[128] = xcalloc(n ? n : 1, sizeof *names);
    const char **np = xcalloc(n ? n : 1, sizeof *np);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *order = json_string_value(json_object_get(data[i], "order_id"));
        if (order == NULL) /* ended before it made its order */
            continue;
        snprintf(names[k], sizeof names[k], PAYMENT_FENCE_PREFIX "%s", order);
        np[k] = names[k];
        k++;
    }
    enum err rc = lock_forget_many(c, np, k, bb_wall_ms(), NULL, e);
    free(np);
    free(names);
    return rc;
}

/* No saga can run for it (its event is not what this code writes: a bug,
 * or a newer writer): the checkout fails now rather than stay PENDING.
 * Rare, so it reads whether the checkout moved (a checkout that is not
 * PENDING, or that is not there, gets no event); a saga's end cannot tell
 * without a round trip, and need not (on_end). */
static enum err
on_reject(struct store_conn *c, const char *checkout_id, const char *why, const char *traceparent,
          void *ctx, struct bb_error *e)
{
    (void)why;
    (void)ctx;
    bool failed;
    return checkout__fail_pending(c, checkout_id, "the checkout could not be processed",
                                  traceparent, bb_wall_ms(), &failed, e);
}

/*
 * The checkouts of ended sagas end with them, each with its
 * checkout.status.changed.v1 carrying its own saga's trace, in the
 * transaction that ends them: one statement for the rows, one for the
 * events, however many ended. Each checkout gets one event: its saga ends
 * once (the engine's compare-and-set on its version; COMPLETED and FAILED
 * are never left, a STUCK saga that is retried has not ended), only one
 * saga runs per checkout (one per type and correlation id, started from
 * the checkout's one checkout.requested.v1, which is marked handled as it
 * starts it), and a checkout whose event is rejected gets no saga.
 */
static enum err
on_end(struct store_conn *c, const char *const *saga_ids, const enum saga_state *ends,
       const json_t *const *data, const char *const *reasons, const char *const *traceparents,
       size_t n, void *ctx, struct bb_error *e)
{
    (void)saga_ids;
    (void)ctx;
    const char **checkouts = xcalloc(n, sizeof *checkouts);
    const char **orders = xcalloc(n, sizeof *orders);
    const char **why = xcalloc(n, sizeof *why);
    const char **traces = xcalloc(n, sizeof *traces);
    enum checkout_status *statuses = xcalloc(n, sizeof *statuses);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *checkout = json_string_value(json_object_get(data[i], "checkout_id"));
        if (checkout == NULL) /* not data from_event made: no checkout to end */
            continue;
        checkouts[k] = checkout;
        /* NULL when it ended before it made its order */
        orders[k] = json_string_value(json_object_get(data[i], "order_id"));
        why[k] = reasons[i];
        traces[k] = traceparents[i];
        statuses[k++] = ends[i] == SAGA_COMPLETED ? CHECKOUT_COMPLETED : CHECKOUT_FAILED;
    }
    enum err rc =
        k > 0 ? checkout__finish(c, checkouts, orders, statuses, why, traces, k, bb_wall_ms(), e)
              : ERR_OK;
    free(statuses);
    free(traces);
    free(why);
    free(orders);
    free(checkouts);
    return rc;
}

/* ---- fulfilment -------------------------------------------------------------------------- */

static struct store_stmt FULFILMENT_INSERT = {
    .sql = "INSERT INTO fulfilments (order_id, checkout_id, job_id, recorded_at_ms)"
           " VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
};
/* A batch of (order_id, checkout_id, job_id), then now. */
static struct store_stmt FULFILMENT_INSERT_MANY = {
    .sql_pg =
        "INSERT INTO fulfilments (order_id, checkout_id, job_id, recorded_at_ms)"
        " SELECT order_id, checkout_id, job_id, $4"
        " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(order_id, checkout_id, job_id)"
        " ON CONFLICT (order_id) DO NOTHING",
    .sql_sqlite = "INSERT INTO fulfilments (order_id, checkout_id, job_id, recorded_at_ms)"
                  " SELECT value ->> 'order_id', value ->> 'checkout_id', value ->> 'job_id', $2"
                  " FROM json_each($1) WHERE true ON CONFLICT (order_id) DO NOTHING",
};

struct fulfil_op {
    const char *order_id;
    const char *checkout_id;
    struct job_run *run; /* ended with the record (job_runs_complete_in) */
    enum err end_rc;
};

static enum err
fulfil_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct fulfil_op *op = arg;
    const struct store_param p[] = {sp_text(op->order_id), sp_text(op->checkout_id),
                                    sp_int(op->run->job->id), sp_int(bb_wall_ms())};
    enum err rc = store_exec_deferred(c, &FULFILMENT_INSERT, p, BB_ARRAY_LEN(p), e);
    return rc == ERR_OK ? job_runs_complete_in(c, &op->run, 1, &op->end_rc, e) : rc;
}

/* The fulfilments recorded at the same time, in one statement, and their
 * jobs ended with them. An order recorded twice (a job run again) is
 * recorded once either way. */
static enum err
fulfil_many(struct store_conn *c, void *const *ops, size_t n, enum err *rcs,
            struct bb_error *errors, void *ctx, struct bb_error *e)
{
    (void)rcs;
    (void)errors;
    (void)ctx;
    struct store_batch rows;
    store_batch_init(&rows, c, 3);
    struct job_run **runs = xcalloc(n, sizeof *runs);
    enum err *ends = xcalloc(n, sizeof *ends);
    for (size_t i = 0; i < n; i++) {
        const struct fulfil_op *op = ops[i];
        runs[i] = op->run;
        store_batch_row(&rows);
        store_batch_text(&rows, "order_id", op->order_id);
        store_batch_text(&rows, "checkout_id", op->checkout_id);
        store_batch_int(&rows, "job_id", op->run->job->id);
    }
    const struct store_param p[] = {sp_batch(&rows), sp_int(bb_wall_ms())};
    enum err rc = store_exec_deferred(c, &FULFILMENT_INSERT_MANY, p, BB_ARRAY_LEN(p), e);
    store_batch_deinit(&rows);
    if (rc == ERR_OK)
        rc = job_runs_complete_in(c, runs, n, ends, e);
    for (size_t i = 0; i < n && rc == ERR_OK; i++)
        ((struct fulfil_op *)ops[i])->end_rc = ends[i];
    free(ends);
    free(runs);
    return rc;
}

static const struct store_group FULFILMENTS = {.many = fulfil_many, .max = 64};

/* Records the order for shipping (a later wave ships it), once. */
static enum job_verdict
fulfil(struct job_run *run)
{
    json_t *p = json_loads(run->job->payload, 0, NULL);
    struct fulfil_op op = {.order_id = json_string_value(json_object_get(p, "order_id")),
                           .checkout_id = json_string_value(json_object_get(p, "checkout_id")),
                           .run = run};
    enum job_verdict v = JOB_DONE;
    struct bb_error e;
    if (op.order_id == NULL || op.checkout_id == NULL) {
        bb_buf_puts(&run->error, "payload needs order_id and checkout_id");
        v = JOB_FAIL_PERMANENTLY;
    } else if (store_run_grouped(run->store, STORE_WRITE, &FULFILMENTS, fulfil_work, &op, &e) !=
               ERR_OK) {
        bb_buf_puts(&run->error, e.detail);
        v = JOB_RETRY;
    } else {
        job_run_recorded(run, op.end_rc);
    }
    json_decref(p);
    return v;
}

enum err
checkout_saga_create(struct saga_engine *eng, struct job_registry *r,
                     const struct checkout_saga_options *o, struct checkout_saga **out,
                     struct bb_error *e)
{
    (void)e;
    struct checkout_saga *cs = xcalloc(1, sizeof *cs);
    cs->opt = *o;
    if (cs->opt.reservation_ttl_ms <= 0)
        cs->opt.reservation_ttl_ms = 600000;
    if (cs->opt.payment_lock_ttl_ms <= 0)
        cs->opt.payment_lock_ttl_ms = 30000;
    cs->def = (struct saga_def){.type = "checkout",
                                .steps = STEPS,
                                .n_steps = BB_ARRAY_LEN(STEPS),
                                .start_event = "checkout.requested.v1",
                                .from_event = from_event,
                                .on_reject = on_reject,
                                .on_end = on_end,
                                .on_prune = on_prune,
                                .ctx = cs};
    saga_engine_add(eng, &cs->def);
    if (r)
        job_registry_add(r, CHECKOUT_FULFILMENT_HANDLER, fulfil, cs);
    *out = cs;
    return ERR_OK;
}

void
checkout_saga_destroy(struct checkout_saga *cs)
{
    free(cs);
}
