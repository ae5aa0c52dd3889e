/*
 * fuzz_job_spec.c: a POST /jobs body, as the HTTP layer decodes it, through
 * the job spec decoder (schedule, run_at, delay, cron and time zone with
 * its next fire, interval, backoff, target, payload, tags, limits).
 */
#include "fuzz.h"

#include "base/base.h"
#include "jobs/jobs_int.h"

#include <jansson.h>
#include <stdlib.h>

static struct job_registry *
registry(void)
{
    static struct job_registry *reg;
    if (reg == NULL) {
        static const char *const dirs[] = {"/usr/bin", NULL};
        struct job_registry_options o = {.http_secret = "fuzz", .exec_allow = dirs};
        struct bb_error e;
        if (job_registry_create(&o, &reg, &e) != ERR_OK)
            abort();
    }
    return reg;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *body = fuzz_json(data, size);
    if (body == NULL)
        return 0;
    struct bb_arena arena;
    bb_arena_init(&arena);
    struct job_spec spec;
    struct jobs__recurring rec;
    struct bb_error e;
    /* A fixed now: the same input decodes the same way every run. */
    enum err rc = jobs__spec_from_json(body, registry(), 64 * 1024, 1764979200000, "", &arena,
                                       &spec, &rec, &e);
    if (rc != ERR_OK && e.detail[0] == '\0')
        abort(); /* every refusal says why */
    bb_arena_deinit(&arena);
    json_decref(body);
    return 0;
}
