/*
 * clock.c: the program's only clocks, and the duration/size parsers that
 * turn "30s" or "1MiB" into numbers.
 */
#include "base/base.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

void
bb_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void
bb_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (ms % 1000) * 1000000;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_cond_timedwait(cv, mu, &ts);
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
        {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
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

/* ---- time zones -------------------------------------------------------------- */

static pthread_mutex_t tz_mu = PTHREAD_MUTEX_INITIALIZER;

void
bb_tz_init(void)
{
    setenv("TZ", "UTC", 1);
    tzset();
}

bool
bb_tz_exists(const char *tz)
{
    size_t n = strlen(tz);
    if (n == 0 || n > 63 || tz[0] == '/' || strstr(tz, "..") != NULL)
        return false;
    for (const char *p = tz; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '/' || *p == '_' || *p == '-' || *p == '+'))
            return false;
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", tz);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Switch the process's TZ (tz_mu held). */
static void
tz_switch(const char *tz)
{
    char value[80];
    snprintf(value, sizeof value, ":%s", tz);
    setenv("TZ", value, 1);
    tzset();
}

static void
tz_restore(void)
{
    setenv("TZ", "UTC", 1);
    tzset();
}

static bool
civil_equals_tm(const struct bb_civil *c, const struct tm *tm)
{
    return tm->tm_year + 1900 == c->year && tm->tm_mon + 1 == c->month && tm->tm_mday == c->day &&
           tm->tm_hour == c->hour && tm->tm_min == c->minute && tm->tm_sec == c->second;
}

int
bb_tz_civil_to_epoch(const char *tz, const struct bb_civil *c, int64_t out[2])
{
    int n = 0;
    pthread_mutex_lock(&tz_mu);
    tz_switch(tz);
    /* Ask for the standard-time and the daylight-time reading; keep those
     * that really show `c` (a gap has neither, an overlap has both). */
    for (int isdst = 0; isdst <= 1; isdst++) {
        struct tm tm = {.tm_year = c->year - 1900,
                        .tm_mon = c->month - 1,
                        .tm_mday = c->day,
                        .tm_hour = c->hour,
                        .tm_min = c->minute,
                        .tm_sec = c->second,
                        .tm_isdst = isdst};
        time_t t = mktime(&tm);
        struct tm back;
        if (t == (time_t)-1 || localtime_r(&t, &back) == NULL || !civil_equals_tm(c, &back))
            continue;
        if (n == 1 && out[0] == (int64_t)t)
            continue;
        out[n++] = (int64_t)t;
    }
    tz_restore();
    pthread_mutex_unlock(&tz_mu);
    if (n == 2 && out[1] < out[0]) {
        int64_t x = out[0];
        out[0] = out[1];
        out[1] = x;
    }
    return n;
}

void
bb_tz_epoch_to_civil(const char *tz, int64_t epoch_s, struct bb_civil *out)
{
    time_t t = (time_t)epoch_s;
    struct tm tm;
    pthread_mutex_lock(&tz_mu);
    tz_switch(tz);
    localtime_r(&t, &tm);
    tz_restore();
    pthread_mutex_unlock(&tz_mu);
    *out = (struct bb_civil){tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                             tm.tm_hour,        tm.tm_min,     tm.tm_sec};
}

/* Read exactly `n` digits. */
static bool
digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char ch = (*p)[i];
        if (ch < '0' || ch > '9')
            return false;
        v = v * 10 + (ch - '0');
    }
    *p += n;
    *out = v;
    return true;
}

enum err
bb_rfc3339_parse(const char *text, int64_t *out_ms)
{
    const char *p = text;
    int y, mo, d, h, mi, s, ms = 0;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' '))
        return ERR_INVALID;
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
        !digits(&p, 2, &s))
        return ERR_INVALID;
    if (*p == '.') {
        p++;
        int scale = 100, nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd++ < 3) {
                ms += (*p - '0') * scale;
                scale /= 10;
            }
            p++;
        }
        if (nd == 0)
            return ERR_INVALID;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59)
            return ERR_INVALID;
        offset_min = sign * (oh * 60 + om);
    } else {
        return ERR_INVALID;
    }
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (*p != '\0' || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
        s > 60)
        return ERR_INVALID;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return ERR_INVALID;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = s == 60 ? 59 : s};
    int64_t secs = (int64_t)timegm(&tm) - (int64_t)offset_min * 60;
    *out_ms = secs * 1000 + ms;
    return ERR_OK;
}
