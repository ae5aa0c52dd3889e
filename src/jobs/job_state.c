/*
 * job_state.c: the job lifecycle as a table, names, and retry backoff.
 * Pure: no store, no clock.
 */
#include "jobs/jobs.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

static const char *const STATE_NAMES[JOB_STATE_COUNT] = {
    [JOB_PENDING] = "pending",     [JOB_RUNNING] = "running", [JOB_COMPLETED] = "completed",
    [JOB_CANCELLED] = "cancelled", [JOB_DEAD] = "dead",
};

/* TRANSITIONS[from][to]:
 *   pending -> running (claim), cancelled (cancel), pending (run now)
 *   running -> completed, pending (retry, rescue, hand-back), dead (last
 *              attempt failed), cancelled (cancel revokes the lease)
 *   completed, cancelled, dead -> pending (run again / redrive) */
static const bool TRANSITIONS[JOB_STATE_COUNT][JOB_STATE_COUNT] = {
    [JOB_PENDING] = {[JOB_RUNNING] = true, [JOB_CANCELLED] = true, [JOB_PENDING] = true},
    [JOB_RUNNING] =
        {[JOB_COMPLETED] = true, [JOB_PENDING] = true, [JOB_DEAD] = true, [JOB_CANCELLED] = true},
    [JOB_COMPLETED] = {[JOB_PENDING] = true},
    [JOB_CANCELLED] = {[JOB_PENDING] = true},
    [JOB_DEAD] = {[JOB_PENDING] = true},
};

static const char *const OUTCOME_NAMES[] = {
    [JOB_OUTCOME_COMPLETED] = "completed",          [JOB_OUTCOME_FAILED] = "failed",
    [JOB_OUTCOME_PERMANENT] = "failed_permanently", [JOB_OUTCOME_TIMEOUT] = "timeout",
    [JOB_OUTCOME_EXPIRED] = "lease_expired",        [JOB_OUTCOME_INTERRUPTED] = "interrupted",
};

const char *
job_state_name(enum job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT ? STATE_NAMES[s] : "unknown";
}

bool
job_state_parse(const char *text, enum job_state *out)
{
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        if (strcmp(text, STATE_NAMES[i]) == 0) {
            *out = (enum job_state)i;
            return true;
        }
    }
    return false;
}

bool
job_can_transition(enum job_state from, enum job_state to)
{
    if ((unsigned)from >= JOB_STATE_COUNT || (unsigned)to >= JOB_STATE_COUNT)
        return false;
    return TRANSITIONS[from][to];
}

bool
job_is_terminal(enum job_state s)
{
    return s == JOB_COMPLETED || s == JOB_CANCELLED || s == JOB_DEAD;
}

const char *
job_outcome_name(enum job_outcome o)
{
    return (unsigned)o < BB_ARRAY_LEN(OUTCOME_NAMES) ? OUTCOME_NAMES[o] : "unknown";
}

void
job_backoff_defaults(struct job_backoff *b)
{
    /* The checkout sketch's 1 s, 4 s, 16 s, 64 s; capped at an hour. */
    b->base_ms = 1000;
    b->factor_milli = 4000;
    b->cap_ms = 3600000;
    b->jitter_pct = 10;
}

int64_t
job_backoff_delay_ms(const struct job_backoff *b, int retry, double rand01)
{
    if (retry < 1)
        retry = 1;
    double delay = (double)b->base_ms * pow((double)b->factor_milli / 1000.0, retry - 1);
    if (delay > (double)b->cap_ms || !isfinite(delay))
        delay = (double)b->cap_ms;
    double spread = (double)b->jitter_pct / 100.0 * (2.0 * rand01 - 1.0);
    delay *= 1.0 + spread;
    return delay < 0 ? 0 : (int64_t)delay;
}

int64_t
job_rate_level_milli(int64_t max, int64_t per_ms, int64_t milli, int64_t at_ms, int64_t now_ms)
{
    int64_t full = max * 1000;
    int64_t elapsed = now_ms - at_ms;
    if (elapsed < 0)
        elapsed = 0; /* a clock that stepped back refills nothing */
    if (elapsed > per_ms)
        elapsed = per_ms; /* a whole window refills the bucket */
    int64_t level = milli + elapsed * full / per_ms;
    return level > full ? full : level;
}

bool
job_queue_is_limited(const struct job_queue *q)
{
    return q->concurrency > 0 || q->rate_max > 0 || q->key_concurrency > 0 || q->key_rate_max > 0;
}

int64_t
job_rate_wait_ms(int64_t max, int64_t per_ms, int64_t milli)
{
    int64_t missing = milli >= 1000 ? 0 : 1000 - milli;
    return (missing * per_ms + max * 1000 - 1) / (max * 1000); /* rounded up */
}

bool
job_name_is_valid(const char *name)
{
    return bb_ident_is_valid(name, JOB_NAME_MAX);
}

bool
job_handler_is_external(const char *handler)
{
    return strcmp(handler, "external") == 0 || strncmp(handler, "external:", 9) == 0;
}

static bool
is_hex(char c)
{
    return isxdigit((unsigned char)c) != 0;
}

static bool
is_word(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* Length of a UUID (8-4-4-4-12 hex digits) at `s`, or 0. */
static size_t
uuid_at(const char *s)
{
    static const char SHAPE[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    for (size_t i = 0; SHAPE[i]; i++) {
        if (SHAPE[i] == '-' ? s[i] != '-' : !is_hex(s[i]))
            return 0;
    }
    return is_word(s[sizeof SHAPE - 1]) ? 0 : sizeof SHAPE - 1;
}

/* Length of a run of 16 or more hex digits holding a digit, at `s`, or 0. */
static size_t
hex_at(const char *s)
{
    size_t n = 0;
    bool digit = false;
    while (is_hex(s[n])) {
        digit |= isdigit((unsigned char)s[n]) != 0;
        n++;
    }
    return n >= 16 && digit && !is_word(s[n]) ? n : 0;
}

/* Length of the number at `s` to mask, or 0 to keep it (*keep: its
 * digits). A decimal (one dot) is masked, and a run of four digits or
 * more; dotted groups (addresses, versions) mask only their long groups,
 * met one by one (`in_group`: `s` follows a group's dot). */
static size_t
number_at(const char *s, bool in_group, size_t *keep)
{
    size_t n = 0, dots = 0;
    while (isdigit((unsigned char)s[n]) || (s[n] == '.' && isdigit((unsigned char)s[n + 1]))) {
        dots += s[n] == '.';
        n++;
    }
    size_t digits = strspn(s, "0123456789");
    *keep = digits;
    if (dots == 1 && !in_group)
        return n;
    return digits >= 4 ? digits : 0;
}

/* Bytes of the UTF-8 character at `s` (a stray byte counts as one). */
static size_t
utf8_len(const char *s)
{
    unsigned char c = (unsigned char)*s;
    size_t want = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    size_t n = 1;
    while (n < want && ((unsigned char)s[n] & 0xC0) == 0x80)
        n++;
    return n;
}

void
job_error_pattern(const char *error, char *out, size_t cap)
{
    BB_ASSERT(cap > 0);
    size_t o = 0;
    bool space = false;
    const char *s = error ? error : "";
    while (*s) {
        if (isspace((unsigned char)*s)) {
            space = o > 0;
            s++;
            continue;
        }
        const char *piece = s;
        size_t len, skip = 0, keep = 0;
        bool start = s == error || !is_word(s[-1]);
        if (start && (skip = uuid_at(s)) > 0)
            piece = "<uuid>";
        else if (start && (skip = hex_at(s)) > 0)
            piece = "<hex>";
        else if (start && isdigit((unsigned char)*s) &&
                 (skip = number_at(s, s > error && s[-1] == '.', &keep)) > 0)
            piece = "<n>";
        if (skip > 0) {
            len = strlen(piece);
        } else if (keep > 0) {
            len = skip = keep; /* a short number (or one inside a word) stays */
        } else {
            len = skip = utf8_len(s); /* one character, whole */
        }
        if (o + space + len >= cap)
            break;
        if (space)
            out[o++] = ' ';
        space = false;
        memcpy(out + o, piece, len);
        o += len;
        s += skip;
    }
    out[o] = '\0';
}

void
job_error_fingerprint(const char *handler, const char *error, char out[JOB_FINGERPRINT_LEN + 1])
{
    char pattern[JOB_ERROR_PATTERN_MAX + 1];
    job_error_pattern(error, pattern, sizeof pattern);
    struct bb_buf b;
    bb_buf_init(&b);
    bb_buf_printf(&b, "%s\n%s", handler, pattern);
    char hex[65];
    bb_sha256_hex(b.data, b.len, hex);
    bb_buf_deinit(&b);
    bb_strlcpy(out, hex, JOB_FINGERPRINT_LEN + 1);
}

bool
job_fingerprint_is_valid(const char *text)
{
    return text && strlen(text) == JOB_FINGERPRINT_LEN &&
           strspn(text, "0123456789abcdef") == JOB_FINGERPRINT_LEN;
}
