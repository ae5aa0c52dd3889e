/*
 * lock_state.c: the lock lifecycle as tables and pure decisions. Nothing here
 * touches the store or a clock; lock_store.c applies the decisions with a
 * compare-and-set, and tests drive these with any `now_ms` they like.
 */
#include "locks/locks_int.h"

#include <string.h>

static const char *const STATE_NAMES[] = {
    [LOCK_FREE] = "free",
    [LOCK_HELD] = "held",
    [LOCK_EXPIRED] = "expired",
};

static const char *const OUTCOME_NAMES[] = {
    [LOCK_GRANTED] = "granted",
    [LOCK_REENTERED] = "reentered",
    [LOCK_TAKEOVER] = "takeover",
};

/* TRANSITIONS[from][to]: acquire (free -> held), renew or re-acquire
 * (held -> held), release (held -> free, expired -> free), lease running out
 * (held -> expired), takeover (expired -> held). */
static const bool TRANSITIONS[3][3] = {
    [LOCK_FREE] = {[LOCK_HELD] = true},
    [LOCK_HELD] = {[LOCK_HELD] = true, [LOCK_FREE] = true, [LOCK_EXPIRED] = true},
    [LOCK_EXPIRED] = {[LOCK_HELD] = true, [LOCK_FREE] = true},
};

const char *
lock_state_name(enum lock_state s)
{
    return (unsigned)s < BB_ARRAY_LEN(STATE_NAMES) ? STATE_NAMES[s] : "unknown";
}

const char *
lock_outcome_name(enum lock_outcome o)
{
    return (unsigned)o < BB_ARRAY_LEN(OUTCOME_NAMES) ? OUTCOME_NAMES[o] : "unknown";
}

bool
lock_can_transition(enum lock_state from, enum lock_state to)
{
    if ((unsigned)from > LOCK_EXPIRED || (unsigned)to > LOCK_EXPIRED)
        return false;
    return TRANSITIONS[from][to];
}

enum lock_state
lock_row_state(const struct lock_row *row, int64_t now_ms)
{
    if (!row->exists || !row->has_owner)
        return LOCK_FREE;
    return row->expires_at_ms > now_ms ? LOCK_HELD : LOCK_EXPIRED;
}

bool
lock_name_is_valid(const char *name)
{
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (n >= LOCK_NAME_MAX)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '@' || c == '-'))
            return false;
    }
    return n > 0;
}

enum locks__decision
locks__decide_acquire(const struct lock_row *row, const char *owner, int64_t now_ms)
{
    if (!row->exists)
        return LOCKS__INSERT;
    enum lock_state state = lock_row_state(row, now_ms);
    enum locks__decision d = LOCKS__DENY;
    switch (state) {
    case LOCK_FREE:
        d = LOCKS__GRANT;
        break;
    case LOCK_HELD:
        d = strcmp(row->owner, owner) == 0 ? LOCKS__REENTER : LOCKS__DENY;
        break;
    case LOCK_EXPIRED:
        /* Even its own former owner gets a new token: the old one may
         * already have been refused somewhere, and a fresh lease is a fresh
         * grant. */
        d = LOCKS__TAKEOVER;
        break;
    }
    BB_ASSERT(d == LOCKS__DENY || lock_can_transition(state, LOCK_HELD));
    return d;
}

enum err
locks__decide_renew(const struct lock_row *row, int64_t token, int64_t now_ms)
{
    if (!row->exists)
        return ERR_NOT_HELD;
    if (token != row->token)
        return ERR_STALE_TOKEN;
    switch (lock_row_state(row, now_ms)) {
    case LOCK_HELD:
        return ERR_OK;
    case LOCK_EXPIRED:
        return ERR_LOCK_EXPIRED;
    case LOCK_FREE:
        return ERR_NOT_HELD;
    }
    return ERR_NOT_HELD;
}

enum err
locks__decide_release(const struct lock_row *row, int64_t token, int64_t now_ms, bool *changes)
{
    /* Held or expired, the current token may release it. */
    *changes = false;
    if (!row->exists)
        return ERR_NOT_HELD;
    if (token != row->token)
        return ERR_STALE_TOKEN;
    *changes = row->has_owner;
    BB_ASSERT(!*changes || lock_can_transition(lock_row_state(row, now_ms), LOCK_FREE));
    return ERR_OK;
}
