/*
 * base: the vocabulary every other layer speaks.
 *
 * Errors as values (one append-only table), JSON-lines logging, option tables
 * (flags + BACKBONE_* environment), wall and monotonic clocks, UUIDv7, random
 * numbers and jitter, memory helpers (xmalloc, growable buffers, arenas).
 *
 * JSON is part of the vocabulary: this header is the one place that includes
 * <jansson.h>, so json_t reaches every module through it.
 *
 * Thread-safety: everything here is safe to call from any thread unless a
 * declaration says otherwise.
 */
#ifndef BB_BASE_H
#define BB_BASE_H

#include <jansson.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BB_WUR          __attribute__((warn_unused_result))
#define BB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define BB_NORETURN     __attribute__((noreturn))
#define BB_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Cheap invariant checks that stay on in release builds (Redis's serverAssert). */
#define BB_ASSERT(cond)                                                  \
    do {                                                                 \
        if (!(cond))                                                     \
            bb_panic(__FILE__, __LINE__, "assertion failed: %s", #cond); \
    } while (0)

BB_NORETURN BB_PRINTF(3, 4) void bb_panic(const char *file, int line, const char *fmt, ...);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * The error vocabulary. Append-only: a code's number never changes and is
 * never reused. Columns: name, number, HTTP status, slug (the stable part of
 * the problem+json `type`), title (the problem's human `title`).
 */
#define BB_ERR_TABLE(X)                                                        \
    X(OK, 0, 200, "ok", "OK")                                                  \
    X(INVALID, 1, 400, "invalid_request", "Invalid request")                   \
    X(MALFORMED, 2, 400, "malformed_json", "Malformed JSON")                   \
    X(UNAUTHORIZED, 3, 401, "unauthorized", "Unauthorized")                    \
    X(NOT_FOUND, 4, 404, "not_found", "Not found")                             \
    X(METHOD, 5, 405, "method_not_allowed", "Method not allowed")              \
    X(CONFLICT, 6, 409, "conflict", "Conflict")                                \
    X(LOCK_HELD, 7, 409, "lock_held", "Lock is held")                          \
    X(STALE_TOKEN, 8, 409, "stale_token", "Stale fencing token")               \
    X(LOCK_EXPIRED, 9, 409, "lock_expired", "Lock expired")                    \
    X(NOT_HELD, 10, 409, "lock_not_held", "Lock is not held")                  \
    X(TOO_LARGE, 11, 413, "payload_too_large", "Payload too large")            \
    X(MEDIA_TYPE, 12, 415, "unsupported_media_type", "Unsupported media type") \
    X(OVERLOADED, 13, 503, "overloaded", "Server overloaded")                  \
    X(UNAVAILABLE, 14, 503, "unavailable", "Service unavailable")              \
    X(RETRY, 15, 503, "transient_conflict", "Transient conflict")              \
    X(TIMEOUT, 16, 504, "timeout", "Timed out")                                \
    X(STORE, 17, 500, "store_error", "Database error")                         \
    X(INTERNAL, 18, 500, "internal", "Internal error")                         \
    X(IO, 19, 500, "io_error", "I/O error")                                    \
    X(USAGE, 20, 400, "usage", "Usage error")                                  \
    X(IDEMPOTENCY_MISMATCH, 21, 422, "idempotency_key_reused",                 \
      "Idempotency key reused for another request")                            \
    X(INSUFFICIENT_STOCK, 22, 409, "insufficient_stock", "Insufficient stock") \
    X(PAYMENT_DECLINED, 23, 402, "payment_declined", "Payment declined")       \
    X(UPSTREAM, 24, 502, "upstream_error", "Upstream service failed")          \
    X(RESERVATION_EXPIRED, 25, 409, "reservation_expired", "Reservation expired")

enum err {
#define BB_ERR_ENUM(name, num, status, slug, title) ERR_##name = (num),
    BB_ERR_TABLE(BB_ERR_ENUM)
#undef BB_ERR_ENUM
};

/* Name of the code in the table ("LOCK_HELD"); "UNKNOWN" for a number not in it. */
const char *bb_err_name(enum err code);
/* Stable slug ("lock_held"), used in problem+json `type`. */
const char *bb_err_slug(enum err code);
/* Human title ("Lock is held"). */
const char *bb_err_title(enum err code);
/* HTTP status the code maps to (500 for unknown codes). */
int bb_err_http_status(enum err code);

/*
 * An error a user can act on: the code, the field at fault (may be empty) and
 * a human sentence. Owned by whoever asks for the operation (a request, a CLI
 * command); filled by the function that fails.
 */
struct bb_error {
    enum err code;
    char field[96];
    char detail[512];
};

/* Fill `e` (if non-NULL) and return `code`, so call sites read
 * `return bb_fail(e, ERR_INVALID, "ttl_ms", "must be positive");`. */
BB_PRINTF(4, 5)
enum err bb_fail(struct bb_error *e, enum err code, const char *field, const char *fmt, ...);
#ifdef __clang_analyzer__
/* Tell the static analyzer (clang-tidy) that bb_fail returns its code. */
#define bb_fail(e, code, ...) ((void)(bb_fail)(e, code, __VA_ARGS__), (code))
#endif
void bb_error_clear(struct bb_error *e);

/* ------------------------------------------------------------------------ */
/* Memory                                                                   */
/* ------------------------------------------------------------------------ */

/* Allocation that aborts on out-of-memory; every network-sized input is capped
 * before it reaches these. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* An identifier (queue, SKU, order id...): 1..max of A-Z a-z 0-9 . _ : - */
bool bb_ident_is_valid(const char *s, size_t max);

/* An active ISO 4217 currency code ("EUR"). Amounts are integers in the
 * currency's minor unit, at most BB_AMOUNT_MAX. */
bool bb_currency_is_valid(const char *code);
#define BB_AMOUNT_MAX INT64_C(1000000000000000) /* 10^15 minor units */

/* Copy at most dst_size-1 bytes and NUL-terminate; returns strlen(src) so a
 * caller can detect truncation (BSD strlcpy). */
size_t bb_strlcpy(char *dst, const char *src, size_t dst_size);

/* Growable byte buffer, always NUL-terminated. */
struct bb_buf {
    char *data;
    size_t len;
    size_t cap;
};
void bb_buf_init(struct bb_buf *b);
void bb_buf_deinit(struct bb_buf *b);
void bb_buf_reset(struct bb_buf *b);
void bb_buf_append(struct bb_buf *b, const void *p, size_t n);
void bb_buf_puts(struct bb_buf *b, const char *s);
BB_PRINTF(2, 3) void bb_buf_printf(struct bb_buf *b, const char *fmt, ...);
BB_PRINTF(2, 0) void bb_buf_vprintf(struct bb_buf *b, const char *fmt, va_list ap);
/* Copy `src` as text safe to store and show on one line: each byte of an
 * invalid UTF-8 sequence becomes '?', each control character a space; cut
 * on a character boundary to fit `cap` (> 0) with its NUL. Returns the
 * length written. */
size_t bb_utf8_copy(char *dst, size_t cap, const char *src);
/* Append `s` as a quoted JSON string, escaped as jansson escapes (control
 * characters, " and \); the n form takes `len` bytes (NULs escaped). */
void bb_buf_json_string(struct bb_buf *b, const char *s);
void bb_buf_json_stringn(struct bb_buf *b, const char *s, size_t len);
/* Append `v` as compact JSON text, as bb_json_dumps writes it. */
void bb_buf_json_value(struct bb_buf *b, const json_t *v);
/* Append the decimal digits of `v`. */
void bb_buf_int(struct bb_buf *b, int64_t v);

/* Bump allocator for per-request scratch memory: everything is freed at once
 * by bb_arena_deinit. Not thread-safe; one owner at a time. */
struct bb_arena_chunk;
struct bb_arena {
    struct bb_arena_chunk *head;
};
void bb_arena_init(struct bb_arena *a);
void bb_arena_deinit(struct bb_arena *a);
void *bb_arena_alloc(struct bb_arena *a, size_t n);
char *bb_arena_strdup(struct bb_arena *a, const char *s);
BB_PRINTF(2, 3) char *bb_arena_printf(struct bb_arena *a, const char *fmt, ...);

/* ------------------------------------------------------------------------ */
/* Time                                                                     */
/* ------------------------------------------------------------------------ */

/* The only clocks in the program. Logic takes `now_ms` as an argument so that
 * tests drive time; only edges (HTTP handlers, loops) call these. */
int64_t bb_wall_ms(void); /* CLOCK_REALTIME, ms since the epoch */
int64_t bb_mono_ms(void); /* CLOCK_MONOTONIC, ms */
int64_t bb_mono_ns(void); /* CLOCK_MONOTONIC, ns (latency measurement) */
/* Format wall ms as RFC 3339 UTC with milliseconds ("2026-11-23T10:00:00.123Z");
 * `out` needs 25 bytes. */
void bb_wall_ms_format(int64_t wall_ms, char out[32]);
/* Sleep for `ms` (loops and back-off only; never as synchronisation). */
void bb_sleep_ms(int64_t ms);
/* A condition variable whose timed waits run on CLOCK_MONOTONIC (a step of
 * the wall clock neither stretches nor cuts them). */
void bb_cond_init_mono(pthread_cond_t *cv);
/* Wait on `cv`, `mu` held, for at most `ms` (a wake-up may come early or
 * spuriously: callers re-check what they wait for). */
void bb_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms);

/*
 * Time zones (tzdata). glibc converts local time only through the
 * process-wide TZ, so these switch it under a mutex. bb_tz_init() pins
 * TZ=UTC once, before any thread starts (so that switching never grows the
 * environment under a concurrent getenv); nothing else in the program uses
 * local time (logs and the API use UTC).
 */
struct bb_civil {
    int year, month, day; /* month 1..12, day 1..31 */
    int hour, minute, second;
};
void bb_tz_init(void);
/* Is `tz` a zone name ("UTC", "Europe/Paris") found in the system's tzdata? */
bool bb_tz_exists(const char *tz);
/* The instants (epoch seconds) at which clocks in `tz` show `c`: none in a
 * spring-forward gap, two in a fall-back overlap (earliest first). Returns
 * how many (0..2). */
int bb_tz_civil_to_epoch(const char *tz, const struct bb_civil *c, int64_t out[2]);
/* What clocks in `tz` show at `epoch_s`. */
void bb_tz_epoch_to_civil(const char *tz, int64_t epoch_s, struct bb_civil *out);
/* Parse RFC 3339 ("2026-11-23T10:00:00Z", "...T10:00:00.250+01:00") into
 * epoch ms. */
BB_WUR enum err bb_rfc3339_parse(const char *text, int64_t *out_ms);

/*
 * Parse a duration: an integer followed by a unit (ms, s, m, h, d) or a bare
 * integer meaning milliseconds. "30s" -> 30000. Rejects negative numbers,
 * overflow and trailing garbage.
 */
BB_WUR enum err bb_duration_parse(const char *text, int64_t *out_ms);
/* Parse a size: integer with optional unit (B, KiB, MiB, GiB, or k/m/g). */
BB_WUR enum err bb_size_parse(const char *text, int64_t *out_bytes);

/* ------------------------------------------------------------------------ */
/* Random numbers, jitter, UUIDv7                                           */
/* ------------------------------------------------------------------------ */

/* Uniform 64 random bits from a per-thread generator seeded by getrandom(2). */
uint64_t bb_rand_u64(void);
/* Uniform integer in [0, bound) without modulo bias; bound > 0. */
uint64_t bb_rand_below(uint64_t bound);
/* `base_ms` moved by a uniform random amount within ±fraction of itself,
 * never below 0. fraction in [0, 1]. */
int64_t bb_jitter_ms(int64_t base_ms, double fraction);
/* Fill `out` with cryptographically strong random bytes (getrandom). */
BB_WUR enum err bb_random_bytes(void *out, size_t n);

/* UUIDv7 (RFC 9562): 48-bit ms timestamp then random bits, monotonic within
 * this process (a counter in rand_a breaks ties inside one millisecond).
 * `out` receives the canonical 36-char text plus NUL. */
void bb_uuid7(char out[37]);
/* Same, with an explicit timestamp (tests). */
void bb_uuid7_at(int64_t wall_ms, char out[37]);
bool bb_uuid_is_valid(const char *text);

/* W3C Trace Context: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>". */
enum { BB_TRACEPARENT_LEN = 55 };
/* Version 00, lower-case hex, neither id all zeros (the spec's invalid
 * values); anything else is to be ignored, not carried on. */
bool bb_traceparent_is_valid(const char *text);
/* A new trace (random ids, sampled), for work that starts one: a request
 * that came without a trace, a schedule's fire. */
void bb_traceparent_new(char out[BB_TRACEPARENT_LEN + 1]);

/* A pool of `threads` threads named `name` running tasks from a queue of
 * at most `queue_max`. Submit answers ERR_OVERLOADED when the queue is full
 * and ERR_UNAVAILABLE once stop began; a task accepted always runs. Stop
 * runs what is queued and joins the threads (submit stays safe to call);
 * destroy stops, then frees. */
typedef void bb_task_fn(void *arg);
struct bb_pool;
struct bb_pool *bb_pool_create(const char *name, size_t threads, size_t queue_max);
BB_WUR enum err bb_pool_submit(struct bb_pool *p, bb_task_fn *fn, void *arg);
void bb_pool_stop(struct bb_pool *p);
void bb_pool_destroy(struct bb_pool *p);

/* A thread named `name` that runs fn(arg) at once and then again `every_ms`
 * after each run ends, until stopped. *out is set before the thread starts
 * (fn may read it where the caller keeps it). A long run may end early when
 * bb_ticker_stopping; stop waits for the run in progress, joins the thread
 * and frees (NULL: nothing). */
struct bb_ticker;
BB_WUR enum err bb_ticker_start(const char *name, int64_t every_ms, bb_task_fn *fn, void *arg,
                                struct bb_ticker **out, struct bb_error *e);
bool bb_ticker_stopping(struct bb_ticker *t);
void bb_ticker_stop(struct bb_ticker *t);

/*
 * Combining: callers that hand in work of one kind while earlier batches
 * are in flight wait and are carried together. At most `leaders` batches
 * run at once; a caller that finds a free slot leads: it takes its own item
 * and up to batch_max - 1 waiting items of the same kind (`same`), oldest
 * first, and runs `run` on them, outside the combiner's lock. So an idle
 * system runs each item at once, and a busy one carries many per call.
 * bb_combine returns when `run` has carried the item (its results are in
 * the item), or false at once when `waiting_max` callers already wait (run
 * that item alone). `on_waiting` (may be NULL) hears how many wait, with
 * `waiting_ctx`.
 */
struct bb_combiner_options {
    size_t leaders;     /* batches in flight at once (>= 1) */
    size_t batch_max;   /* items per batch (>= 1) */
    size_t waiting_max; /* callers waiting at once (>= 1) */
    bool (*same)(const void *a, const void *b, void *ctx);
    /* May be NULL. Items that conflict never ride in one batch: a waiting
     * item that conflicts with one already taken keeps its place for a
     * later batch. */
    bool (*conflicts)(const void *a, const void *b, void *ctx);
    void (*run)(void **items, size_t n, void *ctx);
    void *ctx; /* same's and run's */
    void (*on_waiting)(size_t n, void *waiting_ctx);
    void *waiting_ctx;
};
struct bb_combiner;
struct bb_combiner *bb_combiner_create(const struct bb_combiner_options *o);
bool bb_combine(struct bb_combiner *cb, void *item);
/* No caller may be inside bb_combine. NULL is fine. */
void bb_combiner_destroy(struct bb_combiner *cb);
/* sem_wait, again when a signal interrupts it; any other failure aborts. */
void bb_sem_wait(sem_t *s);

/* The value of hex digit `c` (either case), or -1. */
int bb_hex_digit(char c);
/* Lowercase hex SHA-256 of `data`, and HMAC-SHA256 of `data` under `key`. */
void bb_sha256_hex(const void *data, size_t len, char out[65]);
void bb_hmac_sha256_hex(const char *key, const void *data, size_t len, char out[65]);
/* FNV-1a: bb_fnv1a(BB_FNV1A_BASIS, s) hashes s; passing a hash on as `h`
 * hashes what follows it. For tables and draws, not against an adversary. */
#define BB_FNV1A_BASIS 1469598103934665603ULL
#define BB_FNV1A_PRIME 1099511628211ULL
uint64_t bb_fnv1a(uint64_t h, const char *s);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

enum bb_log_level { BB_LOG_DEBUG, BB_LOG_INFO, BB_LOG_WARN, BB_LOG_ERROR, BB_LOG_OFF };

/* The one mutable global besides the metrics registry. */
extern _Atomic int bb_log_level;

BB_WUR enum err bb_log_level_parse(const char *text, enum bb_log_level *out);
const char *bb_log_level_name(enum bb_log_level level);
/* Redirect log output (default stderr). Not thread-safe: call at start-up. */
void bb_log_set_stream(FILE *f);

/*
 * Per-thread context fields added to every line this thread logs: the request
 * id and the W3C traceparent of the work in hand. Strings are copied.
 */
void bb_log_context_set(const char *request_id, const char *traceparent);
void bb_log_context_clear(void);
/* This thread's traceparent (the work in hand's), or NULL. Valid until the
 * context changes. */
const char *bb_log_context_traceparent(void);

/*
 * One structured line: {"ts":..,"level":..,"event":..,<fields>,<context>}.
 * `fields` is a printf format made only of space-separated `key=%spec` pairs
 * (%s %d %u %ld %lu %lld %llu %zu %f %c is not supported); each becomes a JSON
 * member, strings escaped, numbers bare. The compiler checks the arguments.
 */
BB_PRINTF(5, 6)
void bb_log_emit(enum bb_log_level level, const char *file, int line, const char *event,
                 const char *fields, ...);

#define BB_LOG_AT(level, event, ...)                                        \
    do {                                                                    \
        if ((int)(level) >= bb_log_level)                                   \
            bb_log_emit((level), __FILE__, __LINE__, (event), __VA_ARGS__); \
    } while (0)
#define log_debug(event, ...) BB_LOG_AT(BB_LOG_DEBUG, event, __VA_ARGS__)
#define log_info(event, ...)  BB_LOG_AT(BB_LOG_INFO, event, __VA_ARGS__)
#define log_warn(event, ...)  BB_LOG_AT(BB_LOG_WARN, event, __VA_ARGS__)
#define log_error(event, ...) BB_LOG_AT(BB_LOG_ERROR, event, __VA_ARGS__)

/* Rate-limited: at most `per_sec` lines per second from this call site; the
 * line after a quiet spell reports how many were suppressed. */
struct bb_log_limit {
    _Atomic int64_t window_ms;
    _Atomic int count;
    _Atomic int suppressed;
};
bool bb_log_limit_allow(struct bb_log_limit *lim, int per_sec, int64_t now_mono_ms,
                        int *suppressed_out);
#define log_error_limited(per_sec, event, fields, ...)                                      \
    do {                                                                                    \
        static struct bb_log_limit bb__lim_;                                                \
        int bb__sup_ = 0;                                                                   \
        if (bb_log_level <= BB_LOG_ERROR &&                                                 \
            bb_log_limit_allow(&bb__lim_, (per_sec), bb_mono_ms(), &bb__sup_))              \
            bb_log_emit(BB_LOG_ERROR, __FILE__, __LINE__, (event), fields " suppressed=%d", \
                        __VA_ARGS__, bb__sup_);                                             \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Option tables: flags and BACKBONE_* environment variables                */
/* ------------------------------------------------------------------------ */

enum bb_opt_type {
    BB_OPT_STRING,   /* char * (heap; freed by bb_opts_free) */
    BB_OPT_INT,      /* int64_t */
    BB_OPT_DURATION, /* int64_t milliseconds, "30s", "500ms" */
    BB_OPT_SIZE,     /* int64_t bytes, "1MiB" */
    BB_OPT_BOOL,     /* bool; "--flag" alone means true */
};

/*
 * One row of an option table: `--name` on the command line, `BACKBONE_NAME`
 * (upper-cased, '-' -> '_') in the environment when env is enabled. Defaults
 * are written as text and parsed like user input, so `--help` shows them
 * verbatim. min/max bound integers, durations and sizes (inclusive).
 */
struct bb_opt {
    const char *name;
    enum bb_opt_type type;
    size_t offset; /* into the destination struct */
    int64_t min;
    int64_t max;
    const char *def; /* NULL: no default (string NULL / number 0 / false) */
    const char *doc;
    unsigned flags; /* BB_OPT_NO_ENV */
};

/* The option has no BACKBONE_* variable (per-invocation arguments such as a
 * lock's owner, which an environment variable would only leak into). */
#define BB_OPT_NO_ENV 1u

/*
 * Apply defaults, then the environment (if use_env), then argv. Arguments not
 * starting with "--" are positionals, returned in order in `positional`
 * (pointers into argv; at most max_positional; more is a usage error).
 * "--" ends option parsing. Errors name the option: "--ttl: ...".
 */
BB_WUR enum err bb_opts_parse(const struct bb_opt *opts, size_t n_opts, void *dst, int argc,
                              char **argv, bool use_env, const char **positional,
                              size_t max_positional, size_t *n_positional, struct bb_error *e);
/* Free heap strings held by string options in `dst`. */
void bb_opts_free(const struct bb_opt *opts, size_t n_opts, void *dst);
/* Print one line per option with its type, default, bounds and doc. */
void bb_opts_help(FILE *out, const struct bb_opt *opts, size_t n_opts, bool show_env);

/* ------------------------------------------------------------------------ */
/* JSON helpers (jansson)                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Strict readers for request bodies. Each reports the field it rejects.
 * `required` false: a missing member leaves *out untouched and returns ERR_OK.
 * Integers must be JSON integers (not 1.0, not "1"); strings must be
 * non-empty and at most max_len bytes.
 */
BB_WUR enum err bb_json_int(const json_t *obj, const char *key, bool required, int64_t min,
                            int64_t max, int64_t *out, struct bb_error *e);
BB_WUR enum err bb_json_string(const json_t *obj, const char *key, bool required, size_t max_len,
                               const char **out, struct bb_error *e);
/* An identifier (bb_ident_is_valid), and text without control characters. */
BB_WUR enum err bb_json_ident(const json_t *obj, const char *key, bool required, size_t max_len,
                              const char **out, struct bb_error *e);
BB_WUR enum err bb_json_text(const json_t *obj, const char *key, bool required, size_t max_len,
                             const char **out, struct bb_error *e);
/* Put `prefix` ("items[3].") before the failed field ("qty"); an error
 * without a field gets the prefix alone ("items[3]"). */
void bb_error_prefix_field(struct bb_error *e, const char *prefix);
/* jansson refuses an integer beyond int64 as malformed, its error's
 * position `end` just past the literal; this names where the literal is
 * ("items[2].qty", "" for the whole body). False when the text has no
 * literal there or does not parse even without it. */
bool bb_json_wide_integer_field(const char *text, size_t len, size_t end, char *field, size_t cap);
/* Reject members not named in `allowed` (NULL-terminated). */
BB_WUR enum err bb_json_only(const json_t *obj, const char *const *allowed, struct bb_error *e);
/* Serialize compactly into a heap string (free()); the text is jansson's
 * (JSON_COMPACT | JSON_ENCODE_ANY) byte for byte, written without its
 * per-token callbacks and printf. Aborts on OOM. */
char *bb_json_dumps(const json_t *v);

/* ------------------------------------------------------------------------ */
/* Fault points (STYLE.md section 9)                                        */
/* ------------------------------------------------------------------------ */

/*
 * Compiled into test builds (BB_TESTS defines BB_FAULTS): a named point's
 * Nth call, or a share of its calls, reports a failure, so that tests can
 * prove that a commit or a statement failing anywhere loses and doubles
 * nothing. `spec` is a comma-separated list of NAME=SPEC, SPEC being
 *   N     the Nth call fails, once
 *   N+    every call from the Nth on fails
 *   1/K   each call fails with probability 1/K (from `seed`: the same
 *         sequence of calls fails the same way)
 * with an optional xM after it: M failures at most in all. Example:
 * "store.commit=1/20x30,store.statement=7". Arming replaces what was armed
 * and starts every count at 0. In other builds bb_fault is constant false
 * and arming answers ERR_USAGE. The points are listed in docs/testing.md.
 */
#define BB_FAULT_NAME_MAX   31
#define BB_FAULT_POINTS_MAX 8
#ifdef BB_FAULTS
bool bb_fault(const char *point);
#else
static inline bool
bb_fault(const char *point)
{
    (void)point;
    return false;
}
#endif
BB_WUR enum err bb_faults_arm(const char *spec, uint64_t seed, struct bb_error *e);
/* The same, but only the calling thread's calls count and fail: a test
 * fails the transaction it is in (its commit, say) and no other thread's. */
BB_WUR enum err bb_faults_arm_here(const char *spec, uint64_t seed, struct bb_error *e);
void bb_faults_disarm(void);
/* Call fn(point) at each failure injected from now on, at any point (the
 * metric that counts them; NULL: none). Test builds only; a no-op else. */
void bb_faults_on_inject(void (*fn)(const char *point));
/* Failures injected at `point` since it was armed. */
int64_t bb_faults_injected(const char *point);

#endif /* BB_BASE_H */
