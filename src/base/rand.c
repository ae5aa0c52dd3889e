/*
 * rand.c: per-thread random numbers (xoshiro256** seeded from getrandom),
 * jitter, and UUIDv7.
 *
 * UUIDv7 monotonicity: a process-wide (mutex-guarded) last timestamp and a
 * 12-bit counter in rand_a (RFC 9562 method 1); when the counter overflows
 * within one millisecond the timestamp is advanced by one.
 */
#include "base/base.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static _Thread_local uint64_t rng_state[4];
static _Thread_local bool rng_seeded;

enum err
bb_random_bytes(void *out, size_t n)
{
    unsigned char *p = out;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0)
            return ERR_IO;
        p += got;
        n -= (size_t)got;
    }
    return ERR_OK;
}

static uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t
bb_rand_u64(void)
{
    if (!rng_seeded) {
        if (bb_random_bytes(rng_state, sizeof rng_state) != ERR_OK)
            bb_panic(__FILE__, __LINE__, "getrandom failed");
        if ((rng_state[0] | rng_state[1] | rng_state[2] | rng_state[3]) == 0)
            rng_state[0] = 1;
        rng_seeded = true;
    }
    uint64_t *s = rng_state;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t
bb_rand_below(uint64_t bound)
{
    BB_ASSERT(bound > 0);
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t r;
    do {
        r = bb_rand_u64();
    } while (r >= limit);
    return r % bound;
}

int64_t
bb_jitter_ms(int64_t base_ms, double fraction)
{
    if (base_ms <= 0 || fraction <= 0)
        return base_ms > 0 ? base_ms : 0;
    if (fraction > 1)
        fraction = 1;
    int64_t span = (int64_t)((double)base_ms * fraction);
    if (span == 0)
        return base_ms;
    int64_t delta = (int64_t)bb_rand_below((uint64_t)(2 * span + 1)) - span;
    int64_t v = base_ms + delta;
    return v < 0 ? 0 : v;
}

static pthread_mutex_t uuid_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t uuid_last_ms;  /* guarded by uuid_mu */
static uint16_t uuid_counter; /* guarded by uuid_mu; 12 bits */

void
bb_uuid7_at(int64_t wall_ms, char out[37])
{
    unsigned char b[16];
    if (bb_random_bytes(b, sizeof b) != ERR_OK)
        bb_panic(__FILE__, __LINE__, "getrandom failed");

    pthread_mutex_lock(&uuid_mu);
    if (wall_ms <= uuid_last_ms) {
        wall_ms = uuid_last_ms;
        if (++uuid_counter > 0xfff) {
            wall_ms++;
            uuid_counter = 0;
        }
    } else {
        /* Start the counter in the lower half so a burst has room to grow. */
        uuid_counter = (uint16_t)(((b[6] << 8) | b[7]) & 0x7ff);
    }
    uuid_last_ms = wall_ms;
    uint16_t counter = uuid_counter;
    pthread_mutex_unlock(&uuid_mu);

    uint64_t ts = (uint64_t)wall_ms;
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ts >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | ((counter >> 8) & 0x0f));
    b[7] = (unsigned char)(counter & 0xff);
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));

    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

void
bb_uuid7(char out[37])
{
    bb_uuid7_at(bb_wall_ms(), out);
}

bool
bb_uuid_is_valid(const char *text)
{
    if (text == NULL || strlen(text) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = text[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

bool
bb_traceparent_is_valid(const char *text)
{
    if (text == NULL || strlen(text) != BB_TRACEPARENT_LEN || text[0] != '0' || text[1] != '0')
        return false;
    bool trace_zero = true, parent_zero = true;
    for (int i = 0; i < BB_TRACEPARENT_LEN; i++) {
        char c = text[i];
        bool dash = i == 2 || i == 35 || i == 52;
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        if (i > 2 && i < 35 && c != '0')
            trace_zero = false;
        if (i > 35 && i < 52 && c != '0')
            parent_zero = false;
    }
    return !trace_zero && !parent_zero;
}

void
bb_traceparent_new(char out[BB_TRACEPARENT_LEN + 1])
{
    uint64_t hi = bb_rand_u64(), lo = bb_rand_u64(), parent = bb_rand_u64();
    /* All zeros is invalid; a 2^-64 draw becomes 1. */
    snprintf(out, BB_TRACEPARENT_LEN + 1, "00-%016" PRIx64 "%016" PRIx64 "-%016" PRIx64 "-01", hi,
             lo | (hi == 0 && lo == 0), parent | (parent == 0));
}
