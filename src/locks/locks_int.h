/*
 * locks_int.h: shared inside src/locks only.
 */
#ifndef BB_LOCKS_INT_H
#define BB_LOCKS_INT_H

#include "locks/locks.h"

/* What an acquire should do, given the stored row (pure; lock_state.c). */
enum locks__decision {
    LOCKS__INSERT,   /* no row yet: create it with token 1 */
    LOCKS__GRANT,    /* free: token + 1 */
    LOCKS__REENTER,  /* held by the same owner: extend, same token */
    LOCKS__TAKEOVER, /* expired: token + 1, epoch + 1 */
    LOCKS__DENY,     /* held by someone else */
};

enum locks__decision locks__decide_acquire(const struct lock_row *row, const char *owner,
                                           int64_t now_ms);
/* ERR_OK or the refusal (ERR_STALE_TOKEN, ERR_LOCK_EXPIRED, ERR_NOT_HELD). */
enum err locks__decide_renew(const struct lock_row *row, int64_t token, int64_t now_ms);
/* ERR_OK (*changes: whether the row must be written), ERR_STALE_TOKEN,
 * ERR_NOT_HELD. */
enum err locks__decide_release(const struct lock_row *row, int64_t token, int64_t now_ms,
                               bool *changes);

/* The notification channel that announces releases (payload: lock name). */
#define LOCKS__CHANNEL "bb_lock_released"

/* Waiters (lock_wait.c): blocking acquires parked until the lock may be free. */
struct locks__waiters;
struct locks__op;
struct locks__waiters *locks__waiters_create(struct store *s);
void locks__waiters_destroy(struct locks__waiters *w);
/* The release counter, read by an op before each attempt. */
uint64_t locks__waiters_seq(struct locks__waiters *w);
/* Park `op` until `retry_at_mono_ms` or a release of its lock, but no longer
 * than its deadline; at once if a release was announced since `seen_seq`.
 * Returns false when stopping (the caller answers). */
bool locks__waiters_park(struct locks__waiters *w, struct locks__op *op, int64_t retry_at_mono_ms,
                         uint64_t seen_seq);
/* Answer every parked op (503) and refuse new ones. */
void locks__waiters_stop(struct locks__waiters *w);

/* Implemented by lock_http.c: called by the waiter thread. */
const char *locks__op_name(const struct locks__op *op);
int64_t locks__op_deadline(const struct locks__op *op);
/* Try the acquire again (resubmit to the store). */
void locks__op_retry(struct locks__op *op);
/* Answer 409 (deadline passed) or 503 (stopping) and free the op. */
void locks__op_give_up(struct locks__op *op, enum err why);

/* Metrics shared by the files of the module. */
void locks__metrics_register(void);
void locks__metric_acquired(enum lock_outcome how);
void locks__metric_contention(void);
void locks__metric_renew_failed(enum err why);
void locks__metric_release_failed(enum err why);
void locks__metric_fence_refused(void);
void locks__metric_wait(double seconds, bool granted);
void locks__metric_waiters(int64_t n);
void locks__metrics_held(int64_t n);

#endif /* BB_LOCKS_INT_H */
