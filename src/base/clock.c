/*
 * clock.c: the program's only clocks, and the duration/size parsers that
 * turn "30s" or "1MiB" into numbers.
 */
#include "base/base.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>

int64_t
bb_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
bb_mono_ms(void)
{
    return bb_mono_ns() / 1000000;
}

int64_t
bb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void
bb_wall_ms_format(int64_t wall_ms, char out[32])
{
    time_t secs = (time_t)(wall_ms / 1000);
    int ms = (int)(wall_ms % 1000);
    if (ms < 0) {
        ms += 1000;
        secs -= 1;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", ms);
}

void
bb_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Parse a non-negative integer prefix; *end points after it. */
static enum err
parse_count(const char *text, int64_t *out, const char **end)
{
    if (*text < '0' || *text > '9')
        return ERR_INVALID;
    int64_t v = 0;
    const char *p = text;
    for (; *p >= '0' && *p <= '9'; p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10)
            return ERR_INVALID;
        v = v * 10 + d;
    }
    *out = v;
    *end = p;
    return ERR_OK;
}

struct unit {
    const char *suffix;
    int64_t factor;
};

static enum err
parse_with_units(const char *text, const struct unit *units, size_t n_units, int64_t *out)
{
    int64_t v;
    const char *rest;
    if (text == NULL || parse_count(text, &v, &rest) != ERR_OK)
        return ERR_INVALID;
    for (size_t i = 0; i < n_units; i++) {
        if (strcmp(rest, units[i].suffix) == 0) {
            if (v > INT64_MAX / units[i].factor)
                return ERR_INVALID;
            *out = v * units[i].factor;
            return ERR_OK;
        }
    }
    return ERR_INVALID;
}

enum err
bb_duration_parse(const char *text, int64_t *out_ms)
{
    static const struct unit units[] = {
        {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000},
    };
    return parse_with_units(text, units, BB_ARRAY_LEN(units), out_ms);
}

enum err
bb_size_parse(const char *text, int64_t *out_bytes)
{
    static const struct unit units[] = {
        {"", 1},        {"B", 1},         {"k", 1024},    {"KiB", 1024},
        {"m", 1 << 20}, {"MiB", 1 << 20}, {"g", 1 << 30}, {"GiB", 1 << 30},
    };
    return parse_with_units(text, units, BB_ARRAY_LEN(units), out_bytes);
}
