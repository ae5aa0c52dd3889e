/*
 * job_cron.c: cron expressions: parsing, and the next fire time in a time
 * zone.
 *
 * The search walks local calendar fields (year..second) with plain calendar
 * arithmetic, so daylight-saving jumps never disturb it; only a matching
 * candidate is turned into an instant (bb_tz_civil_to_epoch), which tells a
 * time that does not exist (skipped) from one that occurs twice (the first
 * occurrence after `after` fires; the search starts after the local time of
 * `after`, so a repeated hour is not fired again).
 */
#include "jobs/jobs.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct field_spec {
    const char *name;
    int min, max;
    const char *const *names; /* names[i] stands for min + i; NULL: none */
    int n_names;
};

static const char *const MONTH_NAMES[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                          "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
static const char *const DAY_NAMES[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

static const struct field_spec FIELDS[] = {
    {"second", 0, 59, NULL, 0},        {"minute", 0, 59, NULL, 0},
    {"hour", 0, 23, NULL, 0},          {"day of month", 1, 31, NULL, 0},
    {"month", 1, 12, MONTH_NAMES, 12}, {"day of week", 0, 7, DAY_NAMES, 7},
};

static bool
parse_value(const char **p, const struct field_spec *f, int *out)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        int v = 0, nd = 0;
        while (isdigit((unsigned char)*s) && nd < 3) {
            v = v * 10 + (*s++ - '0');
            nd++;
        }
        if (isdigit((unsigned char)*s))
            return false;
        *p = s;
        *out = v;
        return true;
    }
    if (f->names && isalpha((unsigned char)s[0]) && isalpha((unsigned char)s[1]) &&
        isalpha((unsigned char)s[2])) {
        for (int i = 0; i < f->n_names; i++) {
            if (strncasecmp(s, f->names[i], 3) == 0) {
                *p = s + 3;
                *out = f->min + i;
                return true;
            }
        }
    }
    return false;
}

/* One comma-separated field into a bit set. */
static enum err
parse_field(const char *text, const struct field_spec *f, uint64_t *bits, struct bb_error *e)
{
    *bits = 0;
    const char *p = text;
    for (;;) {
        int lo = f->min, hi = f->max, step = 1;
        const char *item = p;
        if (*p == '*') {
            p++;
        } else {
            if (!parse_value(&p, f, &lo))
                goto bad;
            hi = lo;
            if (*p == '-') {
                p++;
                if (!parse_value(&p, f, &hi))
                    goto bad;
            }
        }
        if (*p == '/') {
            p++;
            static const struct field_spec step_spec = {"step", 1, 999, NULL, 0};
            if (!parse_value(&p, &step_spec, &step) || step < 1)
                goto bad;
            if (item[0] != '*' && hi == lo)
                hi = f->max; /* "5/15": from 5 to the end */
        }
        if (lo < f->min || hi > f->max || lo > hi)
            return bb_fail(e, ERR_INVALID, "cron", "cron %s: %.*s is out of range %d-%d", f->name,
                           (int)(p - item), item, f->min, f->max);
        BB_ASSERT(lo >= 0 && hi < 64); /* the field specs' ranges */
        for (int v = lo; v <= hi; v += step)
            *bits |= 1ULL << v;
        if (*p == '\0')
            return ERR_OK;
        if (*p != ',')
            goto bad;
        p++;
    }
bad:
    return bb_fail(e, ERR_INVALID, "cron", "cron %s: cannot read '%.40s'", f->name, text);
}

static const struct {
    const char *name;
    const char *expr;
} MACROS[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

enum err
job_cron_parse(const char *expr, struct job_cron *out, struct bb_error *e)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < BB_ARRAY_LEN(MACROS); i++) {
        if (strcmp(expr, MACROS[i].name) == 0)
            return job_cron_parse(MACROS[i].expr, out, e);
    }
    char copy[256];
    if (bb_strlcpy(copy, expr, sizeof copy) >= sizeof copy)
        return bb_fail(e, ERR_INVALID, "cron", "cron expression is longer than 255 bytes");
    char *fields[7];
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(copy, " \t", &save); tok;
         tok = strtok_r(NULL, " \t", &save)) {
        if (n == 7)
            break;
        fields[n++] = tok;
    }
    if (n != 5 && n != 6)
        return bb_fail(e, ERR_INVALID, "cron",
                       "cron needs 5 fields (minute hour day month weekday) or 6 (seconds "
                       "first), got %d",
                       n);
    int first = n == 5 ? 1 : 0;            /* index into FIELDS of fields[0] */
    uint64_t bits[6] = {1, 0, 0, 0, 0, 0}; /* 5 fields: second 0 */
    for (int i = 0; i < n; i++) {
        enum err rc = parse_field(fields[i], &FIELDS[first + i], &bits[first + i], e);
        if (rc != ERR_OK)
            return rc;
    }
    out->second = bits[0];
    out->minute = bits[1];
    out->hour = (uint32_t)bits[2];
    out->mday = (uint32_t)bits[3];
    out->month = (uint16_t)bits[4];
    uint64_t wday = bits[5];
    if (wday & (1ULL << 7))
        wday = (wday | 1) & 0x7f; /* 7 is Sunday too */
    out->wday = (uint8_t)wday;
    out->mday_star = fields[n - 3][0] == '*';
    out->wday_star = fields[n - 1][0] == '*';
    return ERR_OK;
}

bool
job_tz_is_valid(const char *tz)
{
    return bb_tz_exists(tz);
}

/* ---- calendar arithmetic ----------------------------------------------------------- */

static bool
is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
days_in_month(int y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    BB_ASSERT(m >= 1 && m <= 12);
    return m == 2 && is_leap(y) ? 29 : d[m - 1];
}

/* Days since 1970-01-01 (H. Hinnant's days_from_civil). */
static int64_t
days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int
weekday(const struct bb_civil *c)
{
    int64_t w = (days_from_civil(c->year, c->month, c->day) + 4) % 7; /* 1970-01-01: Thu */
    return (int)(w < 0 ? w + 7 : w);
}

static void
next_day(struct bb_civil *c)
{
    c->hour = c->minute = c->second = 0;
    if (++c->day > days_in_month(c->year, c->month)) {
        c->day = 1;
        if (++c->month > 12) {
            c->month = 1;
            c->year++;
        }
    }
}

static void
next_month(struct bb_civil *c)
{
    c->day = days_in_month(c->year, c->month); /* next_day rolls into the next month */
    next_day(c);
}

static void
next_hour(struct bb_civil *c)
{
    c->minute = c->second = 0;
    if (++c->hour > 23)
        next_day(c);
}

static void
next_minute(struct bb_civil *c)
{
    c->second = 0;
    if (++c->minute > 59)
        next_hour(c);
}

static void
next_second(struct bb_civil *c)
{
    if (++c->second > 59)
        next_minute(c);
}

/* The same steps backwards: each lands on the last second of the unit
 * before. */
static void
prev_day(struct bb_civil *c)
{
    c->hour = 23;
    c->minute = c->second = 59;
    if (--c->day < 1) {
        if (--c->month < 1) {
            c->month = 12;
            c->year--;
        }
        c->day = days_in_month(c->year, c->month);
    }
}

static void
prev_month(struct bb_civil *c)
{
    c->day = 1; /* prev_day rolls into the previous month */
    prev_day(c);
}

static void
prev_hour(struct bb_civil *c)
{
    c->minute = c->second = 59;
    if (--c->hour < 0)
        prev_day(c);
}

static void
prev_minute(struct bb_civil *c)
{
    c->second = 59;
    if (--c->minute < 0)
        prev_hour(c);
}

static void
prev_second(struct bb_civil *c)
{
    if (--c->second < 0)
        prev_minute(c);
}

static bool
day_matches(const struct job_cron *cron, const struct bb_civil *c)
{
    bool md = cron->mday & (1u << c->day);
    bool wd = cron->wday & (1u << weekday(c));
    if (cron->mday_star && cron->wday_star)
        return true;
    if (cron->mday_star)
        return wd;
    if (cron->wday_star)
        return md;
    return md || wd;
}

enum err
job_cron_next(const struct job_cron *cron, const char *tz, int64_t after_ms, int64_t *next_ms,
              struct bb_error *e)
{
    int64_t after_s = after_ms >= 0 ? after_ms / 1000 : (after_ms - 999) / 1000;
    struct bb_civil c;
    bb_tz_epoch_to_civil(tz, after_s, &c);
    int last_year = c.year + 5;
    next_second(&c);
    while (c.year <= last_year) {
        if (!(cron->month & (1u << c.month))) {
            next_month(&c);
        } else if (!day_matches(cron, &c)) {
            next_day(&c);
        } else if (!(cron->hour & (1u << c.hour))) {
            next_hour(&c);
        } else if (!(cron->minute & (1ULL << c.minute))) {
            next_minute(&c);
        } else if (!(cron->second & (1ULL << c.second))) {
            next_second(&c);
        } else {
            int64_t instants[2];
            int n = bb_tz_civil_to_epoch(tz, &c, instants);
            for (int i = 0; i < n; i++) {
                if (instants[i] > after_s) {
                    *next_ms = instants[i] * 1000;
                    return ERR_OK;
                }
            }
            next_second(&c); /* a gap, or already past: keep looking */
        }
    }
    return bb_fail(e, ERR_INVALID, "cron", "the cron expression never fires in the next 5 years");
}

enum err
job_cron_prev(const struct job_cron *cron, const char *tz, int64_t at_ms, int64_t floor_ms,
              int64_t *prev_ms, struct bb_error *e)
{
    int64_t at_s = at_ms >= 0 ? at_ms / 1000 : (at_ms - 999) / 1000;
    int64_t floor_s = floor_ms >= 0 ? (floor_ms + 999) / 1000 : floor_ms / 1000;
    struct bb_civil c, low;
    bb_tz_epoch_to_civil(tz, at_s, &c);
    bb_tz_epoch_to_civil(tz, floor_s, &low);
    /* A year before `floor` (local times shift), and no further back than
     * job_cron_next ever looks ahead. */
    int first_year = low.year - 1 > c.year - 6 ? low.year - 1 : c.year - 6;
    while (c.year >= first_year) {
        if (!(cron->month & (1u << c.month))) {
            prev_month(&c);
        } else if (!day_matches(cron, &c)) {
            prev_day(&c);
        } else if (!(cron->hour & (1u << c.hour))) {
            prev_hour(&c);
        } else if (!(cron->minute & (1ULL << c.minute))) {
            prev_minute(&c);
        } else if (!(cron->second & (1ULL << c.second))) {
            prev_second(&c);
        } else {
            /* A time that occurs twice fires at its first instant, as
             * job_cron_next has it; one in a gap never. */
            int64_t instants[2];
            int n = bb_tz_civil_to_epoch(tz, &c, instants);
            if (n > 0 && instants[0] <= at_s) {
                if (instants[0] < floor_s)
                    break;
                *prev_ms = instants[0] * 1000;
                return ERR_OK;
            }
            prev_second(&c);
        }
    }
    return bb_fail(e, ERR_NOT_FOUND, "cron", "the cron expression did not fire in that time");
}
