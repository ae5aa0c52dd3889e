/*
 * fuzz_cron.c: a cron expression, then a newline and a time zone: parse it
 * and, if it parses, find its next fire after a fixed instant, and its
 * latest fire within a year before that next one.
 */
#include "fuzz.h"

#include "base/base.h"
#include "jobs/jobs.h"

#include <stdlib.h>
#include <string.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    char *tz = strchr(text, '\n');
    if (tz != NULL)
        *tz++ = '\0';
    struct job_cron cron;
    struct bb_error e;
    if (job_cron_parse(text, &cron, &e) == ERR_OK) {
        const char *zone = tz != NULL && job_tz_is_valid(tz) ? tz : "UTC";
        const int64_t at = 1764979200000, year = INT64_C(366) * 86400000;
        int64_t next = 0, prev = 0;
        if (job_cron_next(&cron, zone, at, &next, &e) == ERR_OK) {
            if (next <= at)
                abort(); /* the next fire is after the instant asked about */
            /* Walking back from it finds a fire in the window, never after it. */
            enum err rc = job_cron_prev(&cron, zone, next, next - year, &prev, &e);
            if (rc == ERR_OK ? prev > next || prev < next - year : rc != ERR_NOT_FOUND)
                abort();
        }
    } else if (e.detail[0] == '\0' || strcmp(e.field, "cron") != 0) {
        abort(); /* a refusal names the field and says why */
    }
    free(text);
    return 0;
}
