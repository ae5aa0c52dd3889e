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

/* Metrics shared by the files of the module. */
void locks__metrics_register(void);
void locks__metric_acquired(enum lock_outcome how);
void locks__metric_contention(void);
void locks__metric_renew_failed(enum err why);
void locks__metric_release_failed(enum err why);
void locks__metric_wait(double seconds, bool granted);
void locks__metric_waiters(int64_t n);
void locks__metrics_held(int64_t n);

#endif /* BB_LOCKS_INT_H */
