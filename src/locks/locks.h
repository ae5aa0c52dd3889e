/*
 * locks: fenced distributed locks, on a compare-and-set in the store (the
 * seed's Cassandra LWT design).
 *
 * A lock row keeps its name (unless its owner module forgets it, see
 * lock_forget_many); `token` grows by one on every grant
 * (first acquire, acquire after a release, takeover of an expired holder), so
 * fencing tokens strictly increase for a name across every grant, crashes and
 * restarts included. `epoch` starts at 1 and grows by one on each takeover
 * (a grant that displaced a holder whose lease had run out). Renew and
 * release need the current token.
 *
 * Acquire is idempotent per owner: the owner that holds a live lock and
 * acquires it again gets the same token back with its TTL reset (so a client
 * that lost the answer to its acquire can simply retry).
 *
 * Fenced writes let a resource refuse a paused holder (Kleppmann): a write
 * carrying token N for key K is accepted only if N is at least the highest
 * token ever accepted for K. lock_fence_check is that check for other
 * modules, inside their own transaction.
 *
 * The store functions run inside the caller's open transaction (from a store
 * executor unit, usually) and take `now_ms` (wall clock) from the caller.
 */
#ifndef BB_LOCKS_H
#define BB_LOCKS_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

enum {
    LOCK_NAME_MAX = 200,  /* bytes; also fenced keys */
    LOCK_OWNER_MAX = 200, /* bytes */
    LOCK_TTL_MIN_MS = 10,
    LOCK_TTL_MAX_MS = 86400000, /* 24 h */
    LOCK_TTL_DEFAULT_MS = 30000,
    LOCK_WAIT_MAX_MS = 300000, /* 5 min */
};

/* Lock lifecycle. */
enum lock_state {
    LOCK_FREE,    /* never held, or released */
    LOCK_HELD,    /* an owner holds it and its lease has not run out */
    LOCK_EXPIRED, /* an owner held it but the lease ran out; anyone may take over */
};

const char *lock_state_name(enum lock_state s);
/* The lifecycle table: may a lock go from `from` to `to`? */
bool lock_can_transition(enum lock_state from, enum lock_state to);

/* How an acquire was granted. */
enum lock_outcome {
    LOCK_GRANTED,   /* the lock was free */
    LOCK_REENTERED, /* the same owner already held it: TTL reset, same token */
    LOCK_TAKEOVER,  /* the previous holder's lease had run out: epoch + 1 */
};
const char *lock_outcome_name(enum lock_outcome o);

/* The stored state of one lock, as read. */
struct lock_row {
    bool exists;
    bool has_owner;
    char owner[LOCK_OWNER_MAX + 1];
    int64_t token;
    int64_t epoch;
    int64_t expires_at_ms;
    int64_t acquired_at_ms;
};

enum lock_state lock_row_state(const struct lock_row *row, int64_t now_ms);

/* A lock as reported to callers. */
struct lock_grant {
    char name[LOCK_NAME_MAX + 1];
    char owner[LOCK_OWNER_MAX + 1];
    int64_t token;
    int64_t epoch;
    int64_t expires_at_ms;
    int64_t acquired_at_ms;
};

/* Names and fenced keys: 1..200 bytes of A-Z a-z 0-9 . _ : @ - */
bool lock_name_is_valid(const char *name);

/*
 * Acquire `name` for `owner` for ttl_ms. ERR_OK: *out is the grant and *how
 * says how it came about. ERR_LOCK_HELD: another owner holds it; *out
 * describes the holder (token zeroed: a token is its holder's capability).
 * `wait_until_ms` (wall clock; 0 when not waiting): the caller will wait for
 * the lock until then if refused, so its release must be announced; the
 * lock is marked so in the caller's transaction, which must commit for the
 * mark to count.
 */
BB_WUR enum err lock_acquire(struct store_conn *c, const char *name, const char *owner,
                             int64_t ttl_ms, int64_t now_ms, int64_t wait_until_ms,
                             struct lock_grant *out, enum lock_outcome *how, struct bb_error *e);
/* lock_acquire without waiting for names[0..n-1] (distinct), taken in name
 * order with one statement: tokens[i] the grant's token, 0 when another
 * owner holds names[i]. */
BB_WUR enum err lock_acquire_many(struct store_conn *c, const char *const *names,
                                  const char *const *owners, size_t n, int64_t ttl_ms,
                                  int64_t now_ms, int64_t *tokens, struct bb_error *e);
/* lock_release for names[0..n-1] with one statement; a lock whose token
 * is no longer the current one is left as it is. */
BB_WUR enum err lock_release_many(struct store_conn *c, const char *const *names,
                                  const int64_t *tokens, size_t n, int64_t now_ms,
                                  struct bb_error *e);
/*
 * Free names[i] where another run of the caller's work holds it: an owner
 * that starts with prefixes[i] but is not owners[i]. For callers that know
 * no other run of that work goes on (one run of a saga's steps at a time:
 * an earlier run is over, though its process may not know it yet). The
 * grant that follows gets a larger token, which fences that run's writes
 * out; so a retry need not wait out the TTL of a run whose grant committed
 * though its answer was lost. *freed (may be NULL) gets how many were.
 */
BB_WUR enum err lock_release_superseded_many(struct store_conn *c, const char *const *names,
                                             const char *const *prefixes, const char *const *owners,
                                             size_t n, int64_t now_ms, int64_t *freed,
                                             struct bb_error *e);
/*
 * Forget names[0..n-1]: delete their lock rows, unless held, and the fences
 * of those names. A forgotten name's tokens start over at 1, so only for
 * names nothing will take or fence again (the payment lock of an order
 * whose saga ended long ago): kept forever, they would grow the tables by
 * two rows per order. *forgotten (may be NULL): how many lock rows went.
 */
BB_WUR enum err lock_forget_many(struct store_conn *c, const char *const *names, size_t n,
                                 int64_t now_ms, int64_t *forgotten, struct bb_error *e);
/* Extend the lease. ERR_STALE_TOKEN (not the current token), ERR_LOCK_EXPIRED
 * (the lease ran out: acquire again), ERR_NOT_HELD (released or never held). */
BB_WUR enum err lock_renew(struct store_conn *c, const char *name, int64_t token, int64_t ttl_ms,
                           int64_t now_ms, struct lock_grant *out, struct bb_error *e);
/* Release. Releasing again with the same token succeeds (idempotent), as
 * does releasing a lease that ran out but was not taken over.
 * ERR_STALE_TOKEN, ERR_NOT_HELD (never held). */
BB_WUR enum err lock_release(struct store_conn *c, const char *name, int64_t token, int64_t now_ms,
                             struct bb_error *e);
/* The current holder; ERR_NOT_FOUND when free (detail says why). Token
 * zeroed. */
BB_WUR enum err lock_get(struct store_conn *c, const char *name, int64_t now_ms,
                         struct lock_grant *out, struct bb_error *e);

/* Called for each held lock, in name order. */
typedef void lock_list_fn(void *arg, const struct lock_grant *g);
/* Held locks with name > after (NULL: from the start), at most `limit`. */
BB_WUR enum err lock_list(struct store_conn *c, int64_t now_ms, const char *after, int limit,
                          lock_list_fn *fn, void *arg, struct bb_error *e);
BB_WUR enum err lock_count_held(struct store_conn *c, int64_t now_ms, int64_t *out,
                                struct bb_error *e);

/*
 * Fencing, inside the caller's transaction: accept `token` for `key` if it
 * is >= the highest token accepted for `key` so far (and remember it), else
 * ERR_STALE_TOKEN naming the highest. The check every guarded resource uses.
 */
BB_WUR enum err lock_fence_check(struct store_conn *c, const char *key, int64_t token,
                                 int64_t now_ms, struct bb_error *e);
/* lock_fence_check for n distinct keys in one statement, taken in key
 * order: rc[i] and errors[i] are keys[i]'s verdict (ERR_OK or
 * ERR_STALE_TOKEN); a key refused writes nothing. */
BB_WUR enum err lock_fence_check_many(struct store_conn *c, const char *const *keys,
                                      const int64_t *tokens, size_t n, int64_t now_ms, enum err *rc,
                                      struct bb_error *errors, struct bb_error *e);
/* Count a fenced write refused (backbone_fenced_writes_refused_total).
 * The checks above do not count, since a transaction rolled back and run
 * again checks again: each caller counts once, at its final outcome. */
void lock_metric_fence_refused(void);
/* lock_fence_check plus storing `value_json` (JSON text) under `key`. */
BB_WUR enum err lock_fenced_put(struct store_conn *c, const char *key, int64_t token,
                                const char *value_json, int64_t now_ms, struct bb_error *e);
/* The stored value (heap copy, caller frees) and its token; ERR_NOT_FOUND. */
BB_WUR enum err lock_fenced_get(struct store_conn *c, const char *key, char **value_json,
                                int64_t *token, struct bb_error *e);

/* The module's schema. */
const struct store_migration *lock_migrations(size_t *n);

/* ---- the service: HTTP routes, blocking acquires, metrics ---------------------- */

struct lock_service;

/* Registers metrics and subscribes to release notifications. */
BB_WUR enum err lock_service_create(struct store *s, struct lock_service **out, struct bb_error *e);
/* Refuse, over HTTP, to acquire, renew or release locks or to write fences
 * whose names start with `prefix` (a static string): another module owns
 * them (the payment steps' "payment:{order_id}"). Reading them stays open.
 * Up to LOCK_RESERVED_MAX prefixes; call before serving. */
enum { LOCK_RESERVED_MAX = 4 };
void lock_service_reserve(struct lock_service *svc, const char *prefix);
/* Copy the service's routes into `out` (room for `max`, which must be
 * enough); returns how many. */
size_t lock_service_routes(struct lock_service *svc, struct http_route *out, size_t max);
/* Answer every parked blocking acquire with 503 and park no more
 * (shutdown, before the HTTP server stops). */
void lock_service_stop_waiting(struct lock_service *svc);
/* NULL is fine. Call after the HTTP server has stopped. */
void lock_service_destroy(struct lock_service *svc);
/* Refresh gauges that live in the database (held locks). */
BB_WUR enum err lock_metrics_refresh(struct store_conn *c, int64_t now_ms, struct bb_error *e);

#endif /* BB_LOCKS_H */
