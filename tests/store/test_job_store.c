/*
 * test_job_store.c: jobs in the database, on both engines, with an injected
 * clock: submit, unique keys, claims (priority, pause, concurrency, external),
 * fenced completion, retries with backoff, dead letters, cancellation,
 * rescue of expired leases, transactional enqueue, schedules, retention
 * and concurrent claimers.
 */
#include "testsupport.h"

#include "jobs/jobs.h"
#include "jobs/jobs_int.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const int64_t T0 = 1800000000000;

static int64_t
submit(struct store_conn *c, const char *queue, const char *handler, int64_t priority,
       int64_t run_at, int64_t now)
{
    struct job_spec s = {.queue = queue,
                         .handler = handler,
                         .priority = priority,
                         .run_at_ms = run_at,
                         .payload = "{\"n\":1}"};
    int64_t id;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(c, &s, now, &id, &created, &e), &e);
    assert_true(created);
    return id;
}

static json_t *
get(struct store_conn *c, int64_t id, int64_t now)
{
    json_t *j;
    struct bb_error e;
    assert_ok(job_get_json(c, id, true, now, &j, &e), &e);
    return j;
}

static const char *
state_of(struct store_conn *c, int64_t id, int64_t now)
{
    static char buf[32];
    json_t *j = get(c, id, now);
    bb_strlcpy(buf, json_string_value(json_object_get(j, "state")), sizeof buf);
    json_decref(j);
    return buf;
}

static void
free_leases(struct job_lease *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        job_lease_deinit(&l[i]);
    free(l);
}

static struct job_lease
claim_one(struct store_conn *c, const char *queue, int64_t now)
{
    struct job_lease *l;
    size_t n;
    struct bb_error e;
    assert_ok(job_claim(c, queue, "w1", false, 1, 30000, now, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    struct job_lease one = l[0];
    free(l);
    return one;
}

static double
mid(void)
{
    return 0.5;
}

static enum err
finish(struct store_conn *c, int64_t id, int64_t token, enum job_outcome outcome, int64_t now,
       enum job_state *state)
{
    struct job_finish f = {.id = id,
                           .token = token,
                           .outcome = outcome,

                           .error = "boom \xff bad utf8"};
    struct bb_error e;
    assert_ok(job_finish_batch(c, &f, 1, now, mid, &e), &e);
    if (state)
        *state = f.state;
    return f.rc;
}

static void
submit_and_read_back(void **state)
{
    struct test_conn *f = *state;
    struct job_spec s = {.queue = "default",
                         .handler = "noop",
                         .payload = "{\"a\":[1,2]}",
                         .priority = 5,
                         .max_attempts = 3,
                         .max_duration_ms = 7000,
                         .tags = "[\"x\",\"y\"]",
                         .run_at_ms = T0 + 60000};
    int64_t id;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(f->c, &s, T0, &id, &created, &e), &e);
    assert_true(created && id > 0);
    json_t *j = get(f->c, id, T0);
    assert_int_equal(json_integer_value(json_object_get(j, "job_id")), id);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "pending");
    assert_false(json_is_true(json_object_get(j, "ready")));
    assert_int_equal(json_integer_value(json_object_get(j, "priority")), 5);
    assert_int_equal(json_integer_value(json_object_get(j, "max_attempts")), 3);
    assert_int_equal(json_integer_value(json_object_get(j, "max_duration_seconds")), 7);
    assert_int_equal(
        json_integer_value(json_array_get(json_object_get(json_object_get(j, "payload"), "a"), 1)),
        2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "tags"), 1)), "y");
    assert_int_equal(json_array_size(json_object_get(j, "attempts")), 0);
    json_decref(j);
    struct job_spec bad = {.queue = "nope", .handler = "noop"};
    assert_int_equal(job_submit(f->c, &bad, T0, &id, &created, &e), ERR_NOT_FOUND);
    assert_string_equal(e.field, "queue");
}

static void
unique_key_returns_the_first_job_until_it_finishes(void **state)
{
    struct test_conn *f = *state;
    struct job_spec s = {.handler = "noop", .unique_key = "order-42"};
    int64_t a, b;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(f->c, &s, T0, &a, &created, &e), &e);
    assert_true(created);
    assert_ok(job_submit(f->c, &s, T0, &b, &created, &e), &e);
    assert_false(created);
    assert_int_equal(a, b);
    struct job_lease l = claim_one(f->c, "default", T0);
    assert_ok(job_submit(f->c, &s, T0, &b, &created, &e), &e); /* running: still the same */
    assert_false(created);
    assert_int_equal(finish(f->c, l.id, l.lease_token, JOB_OUTCOME_COMPLETED, T0 + 1, NULL),
                     ERR_OK);
    job_lease_deinit(&l);
    assert_ok(job_submit(f->c, &s, T0 + 2, &b, &created, &e), &e);
    assert_true(created);
    assert_int_not_equal(a, b);
}

static void
claims_take_ready_jobs_by_priority_then_age(void **state)
{
    struct test_conn *f = *state;
    int64_t low = submit(f->c, NULL, "noop", 0, T0 - 300, T0 - 300);
    int64_t high = submit(f->c, NULL, "noop", 10, T0 - 100, T0 - 100);
    int64_t old = submit(f->c, NULL, "noop", 0, T0 - 500, T0 - 500);
    submit(f->c, NULL, "noop", 99, T0 + 1000, T0);   /* not ready yet */
    submit(f->c, NULL, "external:mail", 99, T0, T0); /* for the pull API */
    struct job_lease *l;
    size_t n;
    struct bb_error e;
    assert_ok(job_claim(f->c, "default", "w1", false, 2, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 2);
    /* The two best: priority 10, then the oldest of priority 0. */
    bool got_high = l[0].id == high || l[1].id == high;
    bool got_old = l[0].id == old || l[1].id == old;
    assert_true(got_high && got_old);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(l[i].attempt, 1);
        assert_int_equal(l[i].lease_token, 1);
        assert_int_equal(l[i].lease_expires_at_ms, T0 + 30000);
        assert_string_equal(l[i].handler, "noop");
    }
    free_leases(l, n);
    assert_ok(job_claim(f->c, "default", "w1", false, 10, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(l[0].id, low);
    free_leases(l, n);
    assert_ok(job_claim(f->c, "default", "w1", true, 10, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].handler, "external:mail");
    free_leases(l, n);
}

static void
paused_queues_and_concurrency_limits_hold_claims_back(void **state)
{
    struct test_conn *f = *state;
    struct job_queue q;
    job_queue_defaults(&q, "limited");
    q.concurrency = 2;
    struct bb_error e;
    assert_ok(job_queue_put(f->c, &q, T0, &e), &e);
    for (int i = 0; i < 5; i++)
        submit(f->c, "limited", "noop", 0, T0, T0);
    struct job_lease *l;
    size_t n;
    assert_ok(job_claim(f->c, "limited", "w1", false, 10, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 2);
    struct job_lease keep = l[0];
    job_lease_deinit(&l[1]);
    free(l);
    assert_ok(job_claim(f->c, "limited", "w2", false, 10, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 0);
    free(l);
    assert_int_equal(finish(f->c, keep.id, keep.lease_token, JOB_OUTCOME_COMPLETED, T0, NULL),
                     ERR_OK);
    job_lease_deinit(&keep);
    assert_ok(job_queue_set_paused(f->c, "limited", true, T0, &e), &e);
    assert_ok(job_claim(f->c, "limited", "w2", false, 10, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 0);
    free(l);
    assert_ok(job_queue_set_paused(f->c, "limited", false, T0, &e), &e);
    assert_ok(job_claim(f->c, "limited", "w2", false, 10, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    free_leases(l, n);
    json_t *queues;
    assert_ok(job_queue_list_json(f->c, "limited", T0, &queues, &e), &e);
    json_t *depth = json_object_get(json_array_get(queues, 0), "depth");
    assert_int_equal(json_integer_value(json_object_get(depth, "ready")), 2);
    assert_int_equal(json_integer_value(json_object_get(depth, "running")), 2);
    assert_null(json_object_get(depth, "completed")); /* finished: not depth */
    json_decref(queues);
    assert_int_equal(job_queue_set_paused(f->c, "nope", true, T0, &e), ERR_NOT_FOUND);
}

/* A pull-API worker's lease never outlasts the attempt's max_duration:
 * not at the claim, not by heartbeats, which are refused once it is over. */
static void
a_pull_workers_lease_ends_with_its_max_duration(void **state)
{
    struct test_conn *f = *state;
    struct job_spec s = {.handler = "external", .max_duration_ms = 5000};
    int64_t id, exp;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(f->c, &s, T0, &id, &created, &e), &e);
    struct job_lease *l;
    size_t n;
    assert_ok(job_claim(f->c, "default", "w1", true, 1, 60000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(l[0].lease_expires_at_ms, T0 + 6000); /* max_duration and a second */
    int64_t token = l[0].lease_token;
    free_leases(l, n);
    assert_ok(job_heartbeat(f->c, id, token, 2000, true, T0 + 1000, &exp, &e), &e);
    assert_int_equal(exp, T0 + 3000); /* within it: as asked */
    assert_ok(job_heartbeat(f->c, id, token, 60000, true, T0 + 2000, &exp, &e), &e);
    assert_int_equal(exp, T0 + 6000); /* not past it */
    assert_int_equal(job_heartbeat(f->c, id, token, 60000, true, T0 + 5000, &exp, &e),
                     ERR_STALE_TOKEN);
    assert_non_null(strstr(e.detail, "max_duration"));
    /* The embedded workers' extension before a start is not bounded. */
    assert_ok(job_heartbeat(f->c, id, token, 60000, false, T0 + 5500, &exp, &e), &e);
    assert_int_equal(exp, T0 + 65500);
}

static void
completion_with_a_stale_lease_token_is_refused(void **state)
{
    struct test_conn *f = *state;
    int64_t id = submit(f->c, NULL, "noop", 0, T0, T0);
    struct job_lease first = claim_one(f->c, "default", T0);
    /* The lease runs out: rescued, claimed again with a new token. */
    int64_t rescued;
    struct bb_error e;
    assert_ok(job_rescue_expired(f->c, T0 + 30000, 100, &rescued, &e), &e);
    assert_int_equal(rescued, 1);
    assert_int_equal(test_metric("backbone_job_lease_rescues_total{queue=\"default\","
                                 "kind=\"embedded\"}"),
                     1);
    assert_int_equal(test_metric("backbone_jobs_finished_total{queue=\"default\","
                                 "outcome=\"lease_expired\"}"),
                     1);
    assert_string_equal(state_of(f->c, id, T0 + 30000), "pending");
    struct job_lease second = claim_one(f->c, "default", T0 + 30001);
    assert_int_equal(second.lease_token, first.lease_token + 1);
    assert_int_equal(second.attempt, 2);
    int64_t exp;
    assert_int_equal(job_heartbeat(f->c, id, first.lease_token, 1000, true, T0 + 30002, &exp, &e),
                     ERR_STALE_TOKEN);
    assert_int_equal(finish(f->c, id, first.lease_token, JOB_OUTCOME_COMPLETED, T0 + 30003, NULL),
                     ERR_STALE_TOKEN);
    assert_int_equal(finish(f->c, id, first.lease_token, JOB_OUTCOME_FAILED, T0 + 30003, NULL),
                     ERR_STALE_TOKEN);
    assert_ok(job_heartbeat(f->c, id, second.lease_token, 1000, true, T0 + 30004, &exp, &e), &e);
    assert_int_equal(exp, T0 + 31004);
    enum job_state st;
    assert_int_equal(finish(f->c, id, second.lease_token, JOB_OUTCOME_COMPLETED, T0 + 30005, &st),
                     ERR_OK);
    assert_int_equal(st, JOB_COMPLETED);
    json_t *j = get(f->c, id, T0 + 30005);
    json_t *attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(attempts, 0), "outcome")),
                        "lease_expired");
    assert_string_equal(json_string_value(json_object_get(json_array_get(attempts, 1), "outcome")),
                        "completed");
    json_decref(j);
    job_lease_deinit(&first);
    job_lease_deinit(&second);
}

static void
failures_retry_with_backoff_then_die_with_every_error_kept(void **state)
{
    struct test_conn *f = *state;
    struct job_spec s = {.handler = "noop", .max_attempts = 3};
    int64_t id;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(f->c, &s, T0, &id, &created, &e), &e);
    int64_t now = T0;
    static const int64_t backoff[] = {1000, 4000};
    for (int attempt = 1; attempt <= 3; attempt++) {
        struct job_lease l = claim_one(f->c, "default", now);
        assert_int_equal(l.attempt, attempt);
        enum job_state st;
        now += 5; /* each attempt runs for 5 ms */
        assert_int_equal(finish(f->c, id, l.lease_token, JOB_OUTCOME_FAILED, now, &st), ERR_OK);
        job_lease_deinit(&l);
        if (attempt < 3) {
            assert_int_equal(st, JOB_PENDING);
            json_t *j = get(f->c, id, now);
            int64_t run_at;
            assert_ok(bb_rfc3339_parse(json_string_value(json_object_get(j, "run_at")), &run_at),
                      &e);
            assert_int_equal(run_at, now + backoff[attempt - 1]);
            json_decref(j);
            /* Not claimable before its backoff ends. */
            struct job_lease *none;
            size_t n;
            assert_ok(
                job_claim(f->c, "default", "w1", false, 1, 1000, now + 1, &none, &n, NULL, &e), &e);
            assert_int_equal(n, 0);
            free(none);
            now += backoff[attempt - 1];
        } else {
            assert_int_equal(st, JOB_DEAD);
        }
    }
    json_t *j = get(f->c, id, now);
    json_t *attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *a = json_array_get(attempts, i);
        assert_string_equal(json_string_value(json_object_get(a, "outcome")), "failed");
        assert_string_equal(json_string_value(json_object_get(a, "error")), "boom ? bad utf8");
        assert_int_equal(json_integer_value(json_object_get(a, "duration_ms")), 5);
    }
    assert_string_equal(json_string_value(json_object_get(j, "last_error")), "boom ? bad utf8");
    json_decref(j);
    /* Redrive: pending again, with a fresh set of three attempts. */
    int64_t n;
    const struct job_dead_match all = {.queue = "default"};
    int64_t skipped;
    assert_ok(job_redrive_dead(f->c, &all, now, &n, &skipped, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(skipped, 0);
    struct job_lease l = claim_one(f->c, "default", now);
    assert_int_equal(l.attempt, 4);
    assert_int_equal(l.attempt_limit, 6);
    job_lease_deinit(&l);
}

static int64_t count_attempts(struct store_conn *c, int64_t id);

static void
permanent_failure_dies_at_once_and_purge_removes_it(void **state)
{
    struct test_conn *f = *state;
    int64_t id = submit(f->c, NULL, "noop", 0, T0, T0);
    struct job_lease l = claim_one(f->c, "default", T0);
    enum job_state st;
    assert_int_equal(finish(f->c, id, l.lease_token, JOB_OUTCOME_PERMANENT, T0, &st), ERR_OK);
    assert_int_equal(st, JOB_DEAD);
    job_lease_deinit(&l);
    assert_int_equal(count_attempts(f->c, id), 1);
    int64_t n;
    struct bb_error e;
    const struct job_dead_match all = {0};
    assert_ok(job_purge_dead(f->c, &all, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(count_attempts(f->c, id), 0); /* its history with it */
    json_t *j;
    assert_int_equal(job_get_json(f->c, id, true, T0, &j, &e), ERR_NOT_FOUND);
}

/* A completion writes no attempt row; running the job again keeps that
 * attempt in its history. */
static void
a_completed_job_run_again_keeps_every_attempt(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    int64_t id = submit(f->c, NULL, "noop", 0, T0, T0);
    for (int round = 0; round < 2; round++) {
        struct job_lease l = claim_one(f->c, "default", T0 + 10 * round);
        assert_int_equal(
            finish(f->c, id, l.lease_token, JOB_OUTCOME_COMPLETED, T0 + 10 * round + 3, NULL),
            ERR_OK);
        job_lease_deinit(&l);
        if (round == 0) {
            assert_ok(job_run_now(f->c, id, T0 + 5, &e), &e);
            assert_string_equal(state_of(f->c, id, T0 + 5), "pending");
        }
    }
    json_t *j;
    assert_ok(job_get_json(f->c, id, true, T0 + 20, &j, &e), &e);
    json_t *attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *a = json_array_get(attempts, i);
        assert_int_equal(json_integer_value(json_object_get(a, "attempt")), (int64_t)i + 1);
        assert_string_equal(json_string_value(json_object_get(a, "outcome")), "completed");
        assert_string_equal(json_string_value(json_object_get(a, "worker")), "w1");
        assert_int_equal(json_integer_value(json_object_get(a, "duration_ms")), 3);
    }
    json_decref(j);
}

static void
cancel_revokes_a_running_lease_and_run_now_brings_it_back(void **state)
{
    struct test_conn *f = *state;
    int64_t id = submit(f->c, NULL, "noop", 0, T0, T0);
    struct job_lease l = claim_one(f->c, "default", T0);
    struct bb_error e;
    assert_ok(job_cancel(f->c, id, T0 + 1, &e), &e);
    assert_int_equal(finish(f->c, id, l.lease_token, JOB_OUTCOME_COMPLETED, T0 + 2, NULL),
                     ERR_STALE_TOKEN);
    assert_string_equal(state_of(f->c, id, T0 + 2), "cancelled");
    assert_int_equal(job_cancel(f->c, id, T0 + 3, &e), ERR_CONFLICT);
    assert_non_null(strstr(e.detail, "is cancelled"));
    assert_ok(job_run_now(f->c, id, T0 + 4, &e), &e);
    assert_string_equal(state_of(f->c, id, T0 + 4), "pending");
    int64_t later = submit(f->c, NULL, "noop", 0, T0 + 100000, T0);
    assert_ok(job_run_now(f->c, later, T0 + 5, &e), &e); /* pending: now, not in 100 s */
    json_t *j = get(f->c, later, T0 + 5);
    assert_true(json_is_true(json_object_get(j, "ready")));
    json_decref(j);
    assert_int_equal(job_run_now(f->c, 999999, T0, &e), ERR_NOT_FOUND);
    job_lease_deinit(&l);
}

/* The states of many jobs at once: each id's (a repeat too), and none for
 * an id with no job. */
/*
 * A pull-API worker's name of the longest accepted length, with a
 * three-byte character across byte 127 (where a 128-byte buffer used to cut
 * it, leaving text PostgreSQL refuses): its lease is rescued, and its
 * failure recorded, with the name whole in every attempt; an error longer
 * than is kept is cut between characters.
 */
static void
a_long_multibyte_worker_name_survives_rescue_and_failure(void **state)
{
    struct test_conn *f = *state;
    char worker[JOB_WORKER_MAX + 1] = "";
    for (int i = 0; i < 66; i++)
        strcat(worker, "\xe2\x82\xac"); /* U+20AC: bytes 126-128 are one character */
    strcat(worker, "ab");
    assert_int_equal(strlen(worker), JOB_WORKER_MAX);
    char error[JOB_ERROR_MAX + 200] = "";
    for (int i = 0; i < 700; i++)
        strcat(error, "\xe2\x82\xac"); /* 2,100 bytes: byte 2,000 is inside one */
    int64_t id = submit(f->c, "default", "external", 0, 0, T0);
    struct job_lease *l;
    size_t n;
    struct bb_error e;
    assert_ok(job_claim(f->c, "default", worker, true, 1, 1000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    free_leases(l, n);
    int64_t rescued;
    assert_ok(job_rescue_expired(f->c, T0 + 1000, 1000, &rescued, &e), &e);
    assert_int_equal(rescued, 1);
    assert_ok(job_claim(f->c, "default", worker, true, 1, 1000, T0 + 2000, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    struct job_finish fin = {
        .id = id, .token = l[0].lease_token, .outcome = JOB_OUTCOME_PERMANENT, .error = error};
    free_leases(l, n);
    assert_ok(job_finish_batch(f->c, &fin, 1, T0 + 2500, mid, &e), &e);
    assert_ok(fin.rc, &e);
    json_t *j = get(f->c, id, T0 + 3000);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "dead");
    json_t *attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *a = json_array_get(attempts, i);
        assert_string_equal(json_string_value(json_object_get(a, "outcome")),
                            i == 0 ? "lease_expired" : "failed_permanently");
        assert_string_equal(json_string_value(json_object_get(a, "worker")), worker);
    }
    const char *kept = json_string_value(json_object_get(json_array_get(attempts, 1), "error"));
    assert_non_null(kept);
    assert_int_equal(strlen(kept), 1998); /* 666 whole characters */
    assert_memory_equal(kept, error, 1998);
    json_decref(j);
}

/* The wake-ups (JOBS__CHANNEL) a listener heard: their queue names. */
struct wakeups {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char got[16][JOB_NAME_MAX + 1];
    int n;
};

static void
on_wakeup(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    struct wakeups *w = arg;
    if (payload == NULL)
        return; /* a resync hint */
    pthread_mutex_lock(&w->mu);
    if (w->n < 16)
        bb_strlcpy(w->got[w->n++], payload, sizeof w->got[0]);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Has a wake-up for `queue` come, waiting at most `wait_ms` for one? */
static bool
await_wakeup(struct wakeups *w, const char *queue, int64_t wait_ms)
{
    int64_t deadline = bb_mono_ms() + wait_ms;
    bool heard = false;
    pthread_mutex_lock(&w->mu);
    while (!heard) {
        for (int i = 0; i < w->n && !heard; i++)
            heard = strcmp(w->got[i], queue) == 0;
        int64_t left = deadline - bb_mono_ms();
        if (heard || left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (left < 50 ? left : 50) * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    w->n = 0;
    pthread_mutex_unlock(&w->mu);
    return heard;
}

/*
 * Cancelling a running job of a queue with a concurrency limit frees a
 * slot of that limit: the queue's claimers are woken, as when it ends.
 */
static void
cancelling_a_running_job_of_a_limited_queue_wakes_its_claimers(void **state)
{
    struct test_conn *f = *state;
    struct job_queue q;
    job_queue_defaults(&q, "one");
    q.concurrency = 1;
    struct bb_error e;
    assert_ok(job_queue_put(f->c, &q, T0, &e), &e);
    int64_t running = submit(f->c, "one", "noop", 0, T0, T0);
    struct job_lease l = claim_one(f->c, "one", T0);
    assert_int_equal(l.id, running);
    job_lease_deinit(&l);
    submit(f->c, "one", "noop", 0, T0, T0); /* waits for the slot */
    struct wakeups w = {.n = 0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    assert_ok(store_listen(f->db->store, JOBS__CHANNEL, on_wakeup, &w), &e);
    /* The listener may still be connecting: announce until it hears. */
    bool listening = false;
    for (int i = 0; i < 300 && !listening; i++) {
        assert_ok(store_notify(f->c, JOBS__CHANNEL, "probe", &e), &e);
        listening = await_wakeup(&w, "probe", 100);
    }
    assert_true(listening);
    assert_ok(job_cancel(f->c, running, T0 + 1, &e), &e);
    bool woken = await_wakeup(&w, "one", 10000);
    store_unlisten(f->db->store, on_wakeup, &w);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    assert_true(woken);
}

static void
states_of_many_jobs_are_read_at_once(void **state)
{
    struct test_conn *f = *state;
    int64_t pending = submit(f->c, NULL, "noop", 0, T0, T0);
    int64_t running = submit(f->c, NULL, "noop", 0, T0, T0);
    struct job_lease l = claim_one(f->c, "default", T0);
    assert_int_equal(l.id, pending); /* the older goes first */
    int64_t cancelled = submit(f->c, NULL, "noop", 0, T0, T0);
    struct bb_error e;
    assert_ok(job_cancel(f->c, cancelled, T0, &e), &e);
    const int64_t ids[] = {running, pending, 999999, cancelled, pending};
    enum job_state states[5];
    bool found[5];
    assert_ok(job_states_many(f->c, ids, 5, states, found, &e), &e);
    const bool want_found[] = {true, true, false, true, true};
    const enum job_state want[] = {JOB_PENDING, JOB_RUNNING, 0, JOB_CANCELLED, JOB_RUNNING};
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(found[i], want_found[i]);
        if (found[i])
            assert_int_equal(states[i], want[i]);
    }
    assert_ok(job_states_many(f->c, NULL, 0, states, found, &e), &e);
    job_lease_deinit(&l);
}

static struct store_stmt CREATE_INVOICES = {
    .sql = "CREATE TABLE invoices (id BIGINT PRIMARY KEY, job_id BIGINT NOT NULL)",
};
static struct store_stmt INSERT_INVOICE = {
    .sql = "INSERT INTO invoices (id, job_id) VALUES ($1, $2)",
};
static struct store_stmt INVOICE_JOB = {.sql = "SELECT job_id FROM invoices WHERE id = $1"};

/* A caller's business row (an invoice) and the job that mails it, in the
 * caller's transaction: `job` is enqueued before the invoice is written. */
static enum err
invoice_with_job(struct store_conn *c, int64_t invoice, int64_t *job, struct bb_error *e)
{
    *job = submit(c, NULL, "noop", 0, T0, T0);
    const struct store_param p[] = {sp_int(invoice), sp_int(*job)};
    return store_exec(c, &INSERT_INVOICE, p, 2, NULL, e);
}

static bool
job_exists(struct store_conn *c, int64_t id)
{
    json_t *j;
    struct bb_error e;
    enum err rc = job_get_json(c, id, false, T0, &j, &e);
    assert_true(rc == ERR_OK || rc == ERR_NOT_FOUND);
    if (rc == ERR_OK)
        json_decref(j);
    return rc == ERR_OK;
}

/* The invoice's job id, or 0 when there is no such invoice. */
static int64_t
invoice_job(struct store_conn *c, int64_t invoice)
{
    struct store_rows r;
    struct bb_error e;
    const struct store_param p[] = {sp_int(invoice)};
    assert_ok(store_query(c, &INVOICE_JOB, p, 1, &r, &e), &e);
    int64_t job = store_next(&r) ? store_col_int(&r, 0) : 0;
    store_rows_close(&r);
    return job;
}

static void
enqueue_commits_or_rolls_back_with_the_callers_transaction(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    assert_ok(store_exec(f->c, &CREATE_INVOICES, NULL, 0, NULL, &e), &e);
    /* Rolled back: neither the invoice nor its job. */
    int64_t gone;
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_ok(invoice_with_job(f->c, 1, &gone, &e), &e);
    store_rollback(f->c);
    assert_int_equal(invoice_job(f->c, 1), 0);
    assert_false(job_exists(f->c, gone));
    /* Committed: both, the invoice naming its job. */
    int64_t kept;
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_ok(invoice_with_job(f->c, 1, &kept, &e), &e);
    assert_ok(store_commit(f->c, &e), &e);
    assert_int_equal(invoice_job(f->c, 1), kept);
    assert_true(job_exists(f->c, kept));
    /* The business write fails after the enqueue (invoice 1 exists): the
     * caller rolls back, and the job enqueued before the failure goes too. */
    int64_t orphan;
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_int_equal(invoice_with_job(f->c, 1, &orphan, &e), ERR_CONFLICT);
    store_rollback(f->c);
    assert_false(job_exists(f->c, orphan));
    assert_int_equal(invoice_job(f->c, 1), kept);
}

/* Put schedule `s` at `now`; its next fire time. */
static int64_t
put_schedule(struct store_conn *c, const struct job_schedule *s, int64_t now)
{
    struct job_schedule_put_result put;
    struct bb_error e;
    assert_ok(job_schedule_put(c, s, now, &put, &e), &e);
    return put.next_fire_ms;
}

static void
schedules_fire_once_per_time_and_collapse_missed_fires(void **state)
{
    struct test_conn *f = *state;
    struct job_schedule s = {.interval_ms = 60000};
    bb_strlcpy(s.name, "tick", sizeof s.name);
    s.job = (struct job_spec){.handler = "noop", .payload = "{\"k\":1}"};
    int64_t next;
    struct bb_error e;
    next = put_schedule(f->c, &s, T0);
    assert_int_equal(next, T0 + 60000);
    int64_t n;
    assert_ok(job_schedule_fire_due(f->c, T0 + 59999, &n, &e), &e);
    assert_int_equal(n, 0);
    /* Two processes notice the same fire: one job. */
    assert_ok(job_schedule_fire_due(f->c, T0 + 60000, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_ok(job_schedule_fire_due(f->c, T0 + 60000, &n, &e), &e);
    assert_int_equal(n, 0);
    /* Down for 10 minutes: one job for the latest missed time, not ten. */
    assert_ok(job_schedule_fire_due(f->c, T0 + 660000 + 5, &n, &e), &e);
    assert_int_equal(n, 1);
    json_t *list;
    assert_ok(job_schedule_list_json(f->c, "tick", 3, &list, &e), &e);
    json_t *sch = json_array_get(list, 0);
    json_t *up = json_object_get(sch, "upcoming");
    assert_int_equal(json_array_size(up), 3);
    int64_t t0, t1;
    assert_ok(bb_rfc3339_parse(json_string_value(json_array_get(up, 0)), &t0), &e);
    assert_ok(bb_rfc3339_parse(json_string_value(json_array_get(up, 1)), &t1), &e);
    assert_int_equal(t0, T0 + 720000);
    assert_int_equal(t1 - t0, 60000);
    json_decref(list);
    struct job_filter filter = {.limit = 10};
    json_t *page;
    assert_ok(job_list_json(f->c, &filter, T0 + 700000, &page, &e), &e);
    json_t *jobs = json_object_get(page, "jobs");
    assert_int_equal(json_array_size(jobs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(jobs, 0), "schedule")),
                        "tick");
    assert_int_equal(json_integer_value(
                         json_object_get(json_object_get(json_array_get(jobs, 1), "payload"), "k")),
                     1);
    /* Each fire starts a trace of its own, which its runs carry on. */
    const char *tp0 = json_string_value(json_object_get(json_array_get(jobs, 0), "traceparent"));
    const char *tp1 = json_string_value(json_object_get(json_array_get(jobs, 1), "traceparent"));
    assert_true(bb_traceparent_is_valid(tp0));
    assert_true(bb_traceparent_is_valid(tp1));
    assert_memory_not_equal(tp0 + 3, tp1 + 3, 32);
    json_decref(page);
    assert_ok(job_schedule_set_paused(f->c, "tick", true, T0, &e), &e);
    assert_ok(job_schedule_fire_due(f->c, T0 + 10000000, &n, &e), &e);
    assert_int_equal(n, 0);
    /* A replace changes what it does, and says so; paused it stays. */
    struct job_schedule_put_result put;
    s.interval_ms = 120000;
    assert_ok(job_schedule_put(f->c, &s, T0 + 10000000, &put, &e), &e);
    assert_false(put.created);
    assert_true(put.paused);
    assert_ok(job_schedule_fire_due(f->c, T0 + 20000000, &n, &e), &e);
    assert_int_equal(n, 0);
    assert_ok(job_schedule_list_json(f->c, "tick", 1, &list, &e), &e);
    sch = json_array_get(list, 0);
    assert_true(json_is_true(json_object_get(sch, "paused")));
    assert_int_equal(json_integer_value(json_object_get(sch, "every_ms")), 120000);
    json_decref(list);
    assert_ok(job_schedule_delete(f->c, "tick", &e), &e);
    assert_int_equal(job_schedule_delete(f->c, "tick", &e), ERR_NOT_FOUND);
}

static struct store_stmt FIRES_OF = {
    .sql = "SELECT scheduled_for_ms, run_at_ms FROM jobs WHERE schedule = $1 ORDER BY id",
};

/*
 * A per-second cron schedule (6 fields, seconds first) driven by a clock
 * the test moves: each fire time makes exactly one job, however often it
 * is looked at, and fires missed meanwhile collapse into one job for the
 * latest of them.
 */
static void
per_second_cron_schedules_fire_once_per_time_and_collapse_missed_fires(void **state)
{
    struct test_conn *f = *state;
    struct job_schedule s = {0};
    bb_strlcpy(s.name, "five", sizeof s.name);
    bb_strlcpy(s.cron, "*/5 * * * * *", sizeof s.cron);
    s.job = (struct job_spec){.handler = "noop"};
    int64_t next, n;
    struct bb_error e;
    /* T0 is a whole minute: fires at :00, :05, :10, ... */
    next = put_schedule(f->c, &s, T0 + 1);
    assert_int_equal(next, T0 + 5000);
    /* Ticks of two schedulers (the second on a connection of its own, as
     * another process would be) and the jobs each fires. */
    struct store_conn *other;
    assert_ok(store_conn_open(f->db->store, &other, &e), &e);
    const struct {
        bool other;
        int64_t now, jobs;
    } ticks[] = {
        {false, T0 + 4999, 0},
        {false, T0 + 5000, 1}, /* due */
        {true, T0 + 5000, 0},  /* the other scheduler, same instant */
        {true, T0 + 9999, 0},  /* later, still before the next */
        {true, T0 + 10250, 1}, /* the next, a tick late */
        {false, T0 + 10250, 0},
        /* Down from :10 to 1:00.007: nine fires missed, one job (for 1:00). */
        {false, T0 + 60007, 1},
        {true, T0 + 60007, 0},
        {true, T0 + 64999, 0},
        {false, T0 + 65000, 1},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(ticks); i++) {
        assert_ok(job_schedule_fire_due(ticks[i].other ? other : f->c, ticks[i].now, &n, &e), &e);
        assert_int_equal(n, ticks[i].jobs);
    }
    store_conn_close(other);
    /* One job per fire time, for that time, run at once. */
    const int64_t fired_for[] = {T0 + 5000, T0 + 10000, T0 + 60000, T0 + 65000};
    const int64_t run_at[] = {T0 + 5000, T0 + 10250, T0 + 60007, T0 + 65000};
    struct store_rows r;
    const struct store_param p[] = {sp_text("five")};
    assert_ok(store_query(f->c, &FIRES_OF, p, 1, &r, &e), &e);
    assert_int_equal(r.nrows, BB_ARRAY_LEN(fired_for));
    for (size_t i = 0; store_next(&r); i++) {
        assert_int_equal(store_col_int(&r, 0), fired_for[i]);
        assert_int_equal(store_col_int(&r, 1), run_at[i]);
    }
    store_rows_close(&r);
    json_t *list;
    assert_ok(job_schedule_list_json(f->c, "five", 2, &list, &e), &e);
    json_t *up = json_object_get(json_array_get(list, 0), "upcoming");
    int64_t t0, t1;
    assert_ok(bb_rfc3339_parse(json_string_value(json_array_get(up, 0)), &t0), &e);
    assert_ok(bb_rfc3339_parse(json_string_value(json_array_get(up, 1)), &t1), &e);
    assert_int_equal(t0, T0 + 70000);
    assert_int_equal(t1, T0 + 75000);
    json_decref(list);
}

/* The schedule's next fire, as the store has it. */
static int64_t
next_fire_of(struct store_conn *c, const char *name)
{
    json_t *list;
    struct bb_error e;
    assert_ok(job_schedule_list_json(c, name, 1, &list, &e), &e);
    int64_t t;
    assert_ok(bb_rfc3339_parse(
                  json_string_value(json_object_get(json_array_get(list, 0), "next_fire_at")), &t),
              &e);
    json_decref(list);
    return t;
}

/*
 * Schedules whose next fire is years in the past (a cron one per minute and
 * per second, an interval one) fire once, for their latest time at or
 * before now, and next at their first time after now: a second look at the
 * same instant fires nothing. So does a daily cron time that clocks show
 * twice, looked at while they show that hour for the second time.
 */
static void
schedules_years_behind_fire_once_and_catch_up_at_once(void **state)
{
    struct test_conn *f = *state;
    const int64_t year_ms = 365LL * 86400000;
    const struct {
        const char *name, *cron, *tz;
        int64_t interval_ms, put_at, now, fired_for, next;
    } cases[] = {
        {"minutely", "* * * * *", "UTC", 0, T0 - 3 * year_ms, T0 + 30500, T0, T0 + 60000},
        {"secondly", "* * * * * *", "UTC", 0, T0 - 3 * year_ms, T0 + 2500, T0 + 2000, T0 + 3000},
        {"every7s", NULL, NULL, 7000, T0 - 3 * year_ms, T0,
         T0 - 3 * year_ms + 7000 * (3 * year_ms / 7000),
         T0 - 3 * year_ms + 7000 * (3 * year_ms / 7000 + 1)},
        /* 02:30 in Paris happens twice on 2026-10-25; at 02:10 the second
         * time, the first 02:30 has passed. */
        {"paris", "30 2 * * *", "Europe/Paris", 0, test_ms_at("2026-10-20T12:00:00Z"),
         test_ms_at("2026-10-25T01:10:00Z"), test_ms_at("2026-10-25T00:30:00Z"),
         test_ms_at("2026-10-26T01:30:00Z")},
    };
    for (size_t i = 0; i < BB_ARRAY_LEN(cases); i++) {
        struct job_schedule s = {.interval_ms = cases[i].interval_ms};
        bb_strlcpy(s.name, cases[i].name, sizeof s.name);
        if (cases[i].cron) {
            bb_strlcpy(s.cron, cases[i].cron, sizeof s.cron);
            bb_strlcpy(s.tz, cases[i].tz, sizeof s.tz);
        }
        s.job = (struct job_spec){.handler = "noop"};
        int64_t next, n;
        struct bb_error e;
        next = put_schedule(f->c, &s, cases[i].put_at);
        assert_true(next < cases[i].now);
        assert_ok(job_schedule_fire_due(f->c, cases[i].now, &n, &e), &e);
        assert_int_equal(n, 1);
        assert_int_equal(next_fire_of(f->c, cases[i].name), cases[i].next);
        assert_ok(job_schedule_fire_due(f->c, cases[i].now, &n, &e), &e);
        assert_int_equal(n, 0);
        struct store_rows r;
        const struct store_param p[] = {sp_text(cases[i].name)};
        assert_ok(store_query(f->c, &FIRES_OF, p, 1, &r, &e), &e);
        assert_int_equal(r.nrows, 1);
        assert_true(store_next(&r));
        assert_int_equal(store_col_int(&r, 0), cases[i].fired_for);
        assert_int_equal(store_col_int(&r, 1), cases[i].now);
        store_rows_close(&r);
        assert_ok(job_schedule_delete(f->c, cases[i].name, &e), &e);
    }
}

static void
cron_schedules_use_their_time_zone(void **state)
{
    struct test_conn *f = *state;
    struct job_schedule s = {0};
    bb_strlcpy(s.name, "morning", sizeof s.name);
    bb_strlcpy(s.cron, "0 9 * * *", sizeof s.cron);
    bb_strlcpy(s.tz, "Europe/Paris", sizeof s.tz);
    s.job = (struct job_spec){.handler = "noop"};
    int64_t next, want;
    struct bb_error e;
    assert_ok(bb_rfc3339_parse("2026-11-24T08:00:00Z", &want), &e);
    int64_t now;
    assert_ok(bb_rfc3339_parse("2026-11-23T12:00:00Z", &now), &e);
    next = put_schedule(f->c, &s, now);
    assert_int_equal(next, want);
}

static void
list_pages_and_filters(void **state)
{
    struct test_conn *f = *state;
    int64_t ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = submit(f->c, NULL, "noop", 0, T0, T0);
    struct job_lease l = claim_one(f->c, "default", T0);
    struct job_filter flt = {.limit = 2, .has_state = true, .state = JOB_PENDING};
    json_t *page;
    struct bb_error e;
    assert_ok(job_list_json(f->c, &flt, T0, &page, &e), &e);
    assert_int_equal(json_array_size(json_object_get(page, "jobs")), 2);
    int64_t after = json_integer_value(json_object_get(page, "next_after"));
    json_decref(page);
    flt.after_id = after;
    flt.limit = 10;
    assert_ok(job_list_json(f->c, &flt, T0, &page, &e), &e);
    assert_int_equal(json_array_size(json_object_get(page, "jobs")), 2);
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    flt.state = JOB_RUNNING;
    flt.after_id = 0;
    assert_ok(job_list_json(f->c, &flt, T0, &page, &e), &e);
    json_t *only = json_array_get(json_object_get(page, "jobs"), 0);
    assert_int_equal(json_integer_value(json_object_get(only, "job_id")), l.id);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(only, "lease"), "worker")), "w1");
    json_decref(page);
    job_lease_deinit(&l);
    (void)ids;
}

static int64_t
count_attempts(struct store_conn *c, int64_t id)
{
    static struct store_stmt COUNT = {.sql = "SELECT COUNT(*) FROM job_attempts WHERE job_id = $1"};
    struct store_rows r;
    struct bb_error e;
    const struct store_param p[] = {sp_int(id)};
    assert_ok(store_query(c, &COUNT, p, 1, &r, &e), &e);
    assert_true(store_next(&r));
    int64_t n = store_col_int(&r, 0);
    store_rows_close(&r);
    return n;
}

/* Purging one dead job takes its attempts and nothing else; a job that is
 * not dead, or gone, is not found, and the detail says which. */
static void
purge_one_takes_that_dead_job_only(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    int64_t dead[2];
    for (int i = 0; i < 2; i++) {
        dead[i] = submit(f->c, NULL, "noop", 0, T0, T0);
        struct job_lease l = claim_one(f->c, "default", T0);
        enum job_state st;
        assert_int_equal(finish(f->c, dead[i], l.lease_token, JOB_OUTCOME_FAILED, T0, &st), ERR_OK);
        job_lease_deinit(&l);
        l = claim_one(f->c, "default", T0 + 3600000);
        assert_int_equal(finish(f->c, dead[i], l.lease_token, JOB_OUTCOME_PERMANENT, T0, &st),
                         ERR_OK);
        assert_int_equal(st, JOB_DEAD);
        job_lease_deinit(&l);
    }
    int64_t pending = submit(f->c, NULL, "noop", 0, T0 + 3600000, T0);
    assert_ok(job_purge_dead_one(f->c, dead[0], &e), &e);
    json_t *j;
    assert_int_equal(job_get_json(f->c, dead[0], true, T0, &j, &e), ERR_NOT_FOUND);
    assert_int_equal(job_purge_dead_one(f->c, dead[0], &e), ERR_NOT_FOUND);
    assert_non_null(strstr(e.detail, "no job"));
    assert_int_equal(job_purge_dead_one(f->c, pending, &e), ERR_NOT_FOUND);
    assert_non_null(strstr(e.detail, "is pending"));
    j = get(f->c, dead[1], T0);
    assert_int_equal(json_array_size(json_object_get(j, "attempts")), 2);
    json_decref(j);
    assert_int_equal(count_attempts(f->c, dead[0]), 0); /* its history went with it */
    assert_int_equal(count_attempts(f->c, dead[1]), 2);
}

static void
retention_prunes_old_finished_jobs_and_their_attempts_only(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    /* Finished long ago: completed at its second attempt (old),
     * cancelled (cancelled), dead. */
    int64_t old = submit(f->c, NULL, "noop", 0, T0, T0);
    struct job_lease l = claim_one(f->c, "default", T0);
    assert_int_equal(finish(f->c, old, l.lease_token, JOB_OUTCOME_FAILED, T0, NULL), ERR_OK);
    job_lease_deinit(&l);
    l = claim_one(f->c, "default", T0 + 2000);
    assert_int_equal(finish(f->c, old, l.lease_token, JOB_OUTCOME_COMPLETED, T0 + 2000, NULL),
                     ERR_OK);
    job_lease_deinit(&l);
    int64_t cancelled = submit(f->c, NULL, "noop", 0, T0, T0);
    assert_ok(job_cancel(f->c, cancelled, T0, &e), &e);
    int64_t dead = submit(f->c, NULL, "noop", 0, T0, T0);
    l = claim_one(f->c, "default", T0);
    assert_int_equal(finish(f->c, dead, l.lease_token, JOB_OUTCOME_PERMANENT, T0, NULL), ERR_OK);
    job_lease_deinit(&l);
    /* Finished recently, running, pending. */
    int64_t recent = submit(f->c, NULL, "noop", 0, T0, T0);
    l = claim_one(f->c, "default", T0);
    assert_int_equal(finish(f->c, recent, l.lease_token, JOB_OUTCOME_FAILED, T0, NULL), ERR_OK);
    job_lease_deinit(&l);
    l = claim_one(f->c, "default", T0 + 2000);
    assert_int_equal(finish(f->c, recent, l.lease_token, JOB_OUTCOME_COMPLETED, T0 + 9000, NULL),
                     ERR_OK);
    job_lease_deinit(&l);
    int64_t running = submit(f->c, NULL, "noop", 0, T0, T0);
    l = claim_one(f->c, "default", T0);
    job_lease_deinit(&l);
    int64_t pending = submit(f->c, NULL, "noop", 0, T0, T0);
    assert_int_equal(count_attempts(f->c, old), 1);

    /* Windows of two ids: the sweep takes three steps, then starts over. */
    int64_t cursor = 0, deleted, total = 0, steps = 0;
    do {
        assert_ok(job_prune_finished(f->c, T0 + 5000, 2, &cursor, &deleted, &e), &e);
        total += deleted;
        steps++;
    } while (cursor != 0);
    assert_int_equal(total, 2);
    assert_int_equal(steps, 4);
    /* At a job created since the cutoff the sweep is over, at a glance
     * (a window of two would have moved the cursor on). */
    assert_ok(job_prune_finished(f->c, T0, 2, &cursor, &deleted, &e), &e);
    assert_int_equal(cursor, 0);
    assert_int_equal(deleted, 0);
    json_t *j;
    assert_int_equal(job_get_json(f->c, old, false, T0, &j, &e), ERR_NOT_FOUND);
    assert_int_equal(job_get_json(f->c, cancelled, false, T0, &j, &e), ERR_NOT_FOUND);
    assert_int_equal(count_attempts(f->c, old), 0);
    assert_string_equal(state_of(f->c, dead, T0), "dead");
    assert_string_equal(state_of(f->c, recent, T0), "completed");
    assert_string_equal(state_of(f->c, running, T0), "running");
    assert_string_equal(state_of(f->c, pending, T0), "pending");
    /* A completion writes no row: the job's own row is its last attempt. */
    assert_int_equal(count_attempts(f->c, recent), 1);
    assert_ok(job_get_json(f->c, recent, true, T0, &j, &e), &e);
    json_t *attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 2);
    json_t *last = json_array_get(attempts, 1);
    assert_int_equal(json_integer_value(json_object_get(last, "attempt")), 2);
    assert_string_equal(json_string_value(json_object_get(last, "outcome")), "completed");
    assert_string_equal(json_string_value(json_object_get(last, "worker")), "w1");
    assert_int_equal(json_integer_value(json_object_get(last, "duration_ms")), 7000);
    assert_string_equal(json_string_value(json_object_get(json_array_get(attempts, 0), "outcome")),
                        "failed");
    json_decref(j);
}

static void
many_jobs_insert_in_order_across_queues_and_keys(void **state)
{
    struct test_conn *f = *state;
    struct job_queue q;
    job_queue_defaults(&q, "other");
    struct bb_error e;
    assert_ok(job_queue_put(f->c, &q, T0, &e), &e);
    struct job_spec specs[5] = {
        {.handler = "noop", .payload = "{\"i\":0}"},
        {.queue = "other", .handler = "noop", .payload = "{\"i\":1}", .max_attempts = 2},
        {.handler = "noop", .unique_key = "k", .payload = "{\"i\":2}"},
        {.handler = "noop", .payload = "{\"i\":3}", .priority = 7},
        {.handler = "noop", .unique_key = "k", .payload = "{\"i\":4}"},
    };
    int64_t ids[5];
    bool created[5];
    size_t at;
    assert_ok(job_submit_many(f->c, specs, 5, T0, ids, created, &at, &e), &e);
    assert_true(created[0] && created[1] && created[2] && created[3]);
    assert_false(created[4]); /* same key as [2] */
    assert_int_equal(ids[4], ids[2]);
    assert_true(ids[0] < ids[3]); /* one queue's rows keep their order */
    for (int i = 0; i < 4; i++) {
        json_t *j = get(f->c, ids[i], T0);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "payload"), "i")),
                         i);
        json_decref(j);
    }
    json_t *j = get(f->c, ids[1], T0);
    assert_string_equal(json_string_value(json_object_get(j, "queue")), "other");
    assert_int_equal(json_integer_value(json_object_get(j, "max_attempts")), 2);
    json_decref(j);
    j = get(f->c, ids[3], T0);
    assert_int_equal(json_integer_value(json_object_get(j, "priority")), 7);
    json_decref(j);
    struct job_spec bad[2] = {{.handler = "noop"}, {.queue = "ghost", .handler = "noop"}};
    assert_int_equal(job_submit_many(f->c, bad, 2, T0, ids, created, &at, &e), ERR_NOT_FOUND);
    assert_int_equal(at, 1);
}

static void
a_large_batch_keeps_each_rows_id_and_order(void **state)
{
    struct test_conn *f = *state;
    struct job_queue q;
    job_queue_defaults(&q, "other");
    struct bb_error e;
    assert_ok(job_queue_put(f->c, &q, T0, &e), &e);
    enum { N = 151 }; /* statements of 64, 64, 16, 4 and 2 rows, and one row alone */
    struct job_spec specs[N];
    char payloads[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(payloads[i], sizeof payloads[i], "{\"i\":%d}", i);
        specs[i] = (struct job_spec){.queue = i % 3 ? "default" : "other",
                                     .handler = "noop",
                                     .payload = payloads[i],
                                     .priority = i % 5};
    }
    int64_t ids[N];
    bool created[N];
    size_t at;
    assert_ok(job_submit_many(f->c, specs, N, T0, ids, created, &at, &e), &e);
    for (int i = 0; i < N; i++) {
        assert_true(created[i]);
        assert_true(i == 0 || ids[i] > ids[i - 1]);
        json_t *j = get(f->c, ids[i], T0);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "payload"), "i")),
                         i);
        assert_string_equal(json_string_value(json_object_get(j, "queue")), specs[i].queue);
        assert_int_equal(json_integer_value(json_object_get(j, "priority")), i % 5);
        json_decref(j);
    }
}

/* ---- concurrent claimers ----------------------------------------------------------------- */

enum { CLAIMERS = 6, JOBS = 300 };

struct claim_race {
    struct store *store;
    _Atomic int claimed[JOBS + 1];
    _Atomic int total;
    _Atomic int failures;
    int64_t base_id;
};

struct claim_op {
    struct claim_race *race;
    struct job_lease *leases;
    size_t n;
};

static enum err
claim_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct claim_op *op = arg;
    for (size_t i = 0; i < op->n; i++)
        job_lease_deinit(&op->leases[i]);
    free(op->leases);
    return job_claim(c, "default", "racer", false, 3, 60000, bb_wall_ms(), &op->leases, &op->n,
                     NULL, e);
}

static void *
claimer(void *arg)
{
    struct claim_race *race = arg;
    struct claim_op op = {.race = race};
    for (;;) {
        struct bb_error e;
        if (store_run(race->store, STORE_WRITE, claim_work, &op, &e) != ERR_OK) {
            atomic_fetch_add(&race->failures, 1);
            break;
        }
        if (op.n == 0)
            break;
        for (size_t i = 0; i < op.n; i++) {
            int64_t k = op.leases[i].id - race->base_id;
            if (k >= 0 && k < JOBS)
                atomic_fetch_add(&race->claimed[k], 1);
            atomic_fetch_add(&race->total, 1);
        }
    }
    for (size_t i = 0; i < op.n; i++)
        job_lease_deinit(&op.leases[i]);
    free(op.leases);
    return NULL;
}

static void
concurrent_claimers_never_share_a_job(void **state)
{
    struct test_conn *f = *state;
    struct claim_race race = {.store = f->db->store};
    int64_t now = bb_wall_ms();
    race.base_id = submit(f->c, NULL, "noop", 0, now, now);
    for (int i = 1; i < JOBS; i++)
        assert_int_equal(submit(f->c, NULL, "noop", 0, now, now), race.base_id + i);
    pthread_t t[CLAIMERS];
    for (int i = 0; i < CLAIMERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, claimer, &race), 0);
    for (int i = 0; i < CLAIMERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(race.failures, 0);
    assert_int_equal(race.total, JOBS);
    for (int i = 0; i < JOBS; i++)
        assert_int_equal(race.claimed[i], 1);
}

/* ---- handlers that end their job in their own transaction -------------------------------- */

static struct store_stmt CREATE_OWN = {
    .sql = "CREATE TABLE own_writes (job_id BIGINT, attempt BIGINT)",
};
static struct store_stmt OWN_WRITE = {
    .sql = "INSERT INTO own_writes (job_id, attempt) VALUES ($1, $2)",
};
static struct store_stmt OWN_COUNT = {
    .sql = "SELECT COUNT(*), MIN(attempt) FROM own_writes WHERE job_id = $1",
};

struct own_work {
    struct job_run *run;
    bool roll_back; /* fail after ending the job */
    enum err rc;
};

static enum err
own_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct own_work *w = arg;
    const struct store_param p[] = {sp_int(w->run->job->id), sp_int(w->run->job->attempt)};
    enum err rc = store_exec(c, &OWN_WRITE, p, 2, NULL, e);
    if (rc == ERR_OK)
        rc = job_runs_complete_in(c, &w->run, 1, &w->rc, e);
    if (rc == ERR_OK && w->roll_back)
        return bb_fail(e, ERR_CONFLICT, "", "rolled back after ending its job");
    return rc;
}

/* Its write and its job's end in one transaction; payload {"roll_back":
 * true}: the first attempt's transaction rolls back. */
static enum job_verdict
own_handler(struct job_run *run)
{
    json_t *p = json_loads(run->job->payload, 0, NULL);
    struct own_work w = {.run = run,
                         .roll_back = json_is_true(json_object_get(p, "roll_back")) &&
                                      run->job->attempt == 1};
    json_decref(p);
    struct bb_error e;
    if (store_run(run->store, STORE_WRITE, own_work, &w, &e) != ERR_OK) {
        bb_buf_puts(&run->error, e.detail);
        return JOB_RETRY;
    }
    job_run_recorded(run, w.rc);
    return JOB_DONE;
}

static int64_t
finished_count(const char *outcome)
{
    char series[128];
    snprintf(series, sizeof series,
             "backbone_jobs_finished_total{queue=\"default\",outcome=\"%s\"}", outcome);
    int64_t n = test_metric(series);
    return n < 0 ? 0 : n;
}

static void
a_handler_ends_its_job_in_its_own_transaction_or_not_at_all(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    assert_ok(store_exec(f->c, &CREATE_OWN, NULL, 0, NULL, &e), &e);
    struct job_spec spec = {.queue = "default",
                            .handler = "own",
                            .has_backoff = true,
                            .backoff = {.base_ms = 10, .factor_milli = 1000, .cap_ms = 10}};
    int64_t ids[2];
    bool created;
    for (int i = 0; i < 2; i++) {
        spec.payload = i == 0 ? "{}" : "{\"roll_back\":true}";
        assert_ok(job_submit(f->c, &spec, bb_wall_ms(), &ids[i], &created, &e), &e);
    }
    int64_t completed = finished_count("completed"), failed = finished_count("failed");
    struct job_registry *reg;
    struct job_registry_options ro = {0};
    assert_ok(job_registry_create(&ro, &reg, &e), &e);
    job_registry_add(reg, "own", own_handler, NULL);
    struct job_pool *pool;
    struct job_pool_options po = {.concurrency = 2, .poll_ms = 50};
    assert_ok(job_pool_start(f->db->store, reg, &po, &pool, &e), &e);
    int64_t deadline = bb_mono_ms() + 30000;
    while (bb_mono_ms() < deadline && (strcmp(state_of(f->c, ids[0], bb_wall_ms()), "completed") ||
                                       strcmp(state_of(f->c, ids[1], bb_wall_ms()), "completed")))
        bb_sleep_ms(10);
    job_pool_stop(pool, bb_mono_ms() + 5000);
    job_registry_destroy(reg);
    /* Each ended once, by its handler's transaction: one write each, the
     * attempts as they went (the rolled back one recorded by the worker). */
    const char *outcomes[2][2] = {{"completed", NULL}, {"failed", "completed"}};
    for (int i = 0; i < 2; i++) {
        json_t *j = get(f->c, ids[i], bb_wall_ms());
        assert_string_equal(json_string_value(json_object_get(j, "state")), "completed");
        json_t *attempts = json_object_get(j, "attempts");
        assert_int_equal(json_array_size(attempts), i + 1);
        for (size_t k = 0; k < json_array_size(attempts); k++)
            assert_string_equal(
                json_string_value(json_object_get(json_array_get(attempts, k), "outcome")),
                outcomes[i][k]);
        json_decref(j);
        struct store_rows r;
        const struct store_param p[] = {sp_int(ids[i])};
        assert_ok(store_query(f->c, &OWN_COUNT, p, 1, &r, &e), &e);
        assert_true(store_next(&r));
        assert_int_equal(store_col_int(&r, 0), 1);
        assert_int_equal(store_col_int(&r, 1), i + 1); /* the second's first write rolled back */
        store_rows_close(&r);
    }
    /* The worker counted what the handlers recorded, and recorded nothing twice. */
    assert_int_equal(finished_count("completed") - completed, 2);
    assert_int_equal(finished_count("failed") - failed, 1);
}

static atomic_int g_marks;
static pthread_mutex_t g_gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_gate_cv = PTHREAD_COND_INITIALIZER;
static bool g_gate_open; /* guarded by g_gate_mu */
static int g_blocked;    /* guarded by g_gate_mu */

/* Slow enough that the pool claims no more than it runs (no prefetch). */
static enum job_verdict
mark_handler(struct job_run *run)
{
    (void)run;
    bb_sleep_ms(5);
    atomic_fetch_add(&g_marks, 1);
    return JOB_DONE;
}

/* Holds its runner until the gate opens. */
static enum job_verdict
block_handler(struct job_run *run)
{
    (void)run;
    pthread_mutex_lock(&g_gate_mu);
    g_blocked++;
    pthread_cond_broadcast(&g_gate_cv);
    while (!g_gate_open)
        pthread_cond_wait(&g_gate_cv, &g_gate_mu);
    pthread_mutex_unlock(&g_gate_mu);
    return JOB_DONE;
}

struct here_unit {
    struct job_pool *pool; /* NULL: a plain submit */
    const char *handler;
    bool roll_back;
    int64_t id;
};

static enum err
here_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct here_unit *u = arg;
    struct job_spec spec = {.queue = "default", .handler = u->handler};
    bool created;
    size_t at;
    enum err rc =
        job_submit_many_here(c, u->pool, &spec, 1, bb_wall_ms(), &u->id, &created, &at, e);
    if (rc == ERR_OK && u->roll_back)
        return bb_fail(e, ERR_INVALID, "", "rolled back on purpose");
    return rc;
}

static void
await_marks(int n)
{
    int64_t deadline = bb_mono_ms() + 30000;
    while (atomic_load(&g_marks) < n && bb_mono_ms() < deadline)
        bb_sleep_ms(5);
    assert_int_equal(atomic_load(&g_marks), n);
}

/*
 * A pool of two that polls once a minute, whose first claim found less than
 * it had room for: a job handed to it at commit runs at once, as its first
 * attempt, with no claim; one rolled back leaves no job and keeps no room;
 * and a job announced while the pool is full (of jobs handed over) runs as
 * soon as they end, not at the next poll.
 */
static void
jobs_handed_to_the_pool_at_commit_run_at_once(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    atomic_store(&g_marks, 0);
    g_gate_open = false;
    g_blocked = 0;
    struct here_unit before = {.handler = "mark"};
    assert_ok(store_run(f->db->store, STORE_WRITE, here_work, &before, &e), &e);
    struct job_registry *reg;
    struct job_registry_options ro = {0};
    assert_ok(job_registry_create(&ro, &reg, &e), &e);
    job_registry_add(reg, "mark", mark_handler, NULL);
    job_registry_add(reg, "block", block_handler, NULL);
    struct job_pool *pool;
    struct job_pool_options po = {.concurrency = 2, .poll_ms = 60000};
    assert_ok(job_pool_start(f->db->store, reg, &po, &pool, &e), &e);
    await_marks(1); /* its first claim got one job of the two it could take */

    struct here_unit gone = {.pool = pool, .handler = "mark", .roll_back = true};
    assert_int_equal(store_run(f->db->store, STORE_WRITE, here_work, &gone, &e), ERR_INVALID);
    assert_true(gone.id > 0);
    json_t *none;
    assert_int_equal(job_get_json(f->c, gone.id, false, bb_wall_ms(), &none, &e), ERR_NOT_FOUND);
    struct here_unit first = {.pool = pool, .handler = "mark"};
    assert_ok(store_run(f->db->store, STORE_WRITE, here_work, &first, &e), &e);
    await_marks(2);
    int64_t deadline = bb_mono_ms() + 30000;
    while (strcmp(state_of(f->c, first.id, bb_wall_ms()), "completed") != 0 &&
           bb_mono_ms() < deadline)
        bb_sleep_ms(5);
    json_t *j = get(f->c, first.id, bb_wall_ms());
    assert_string_equal(json_string_value(json_object_get(j, "state")), "completed");
    assert_int_equal(json_integer_value(json_object_get(j, "attempt")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "attempts")), 1);
    json_decref(j);

    struct here_unit blocker = {.pool = pool, .handler = "block"};
    for (int i = 0; i < 2; i++)
        assert_ok(store_run(f->db->store, STORE_WRITE, here_work, &blocker, &e), &e);
    /* Both handed over: the room the rolled-back one took came back. */
    deadline = bb_mono_ms() + 30000;
    pthread_mutex_lock(&g_gate_mu);
    while (g_blocked < 2 && bb_mono_ms() < deadline) {
        pthread_mutex_unlock(&g_gate_mu);
        bb_sleep_ms(5);
        pthread_mutex_lock(&g_gate_mu);
    }
    int blocked = g_blocked;
    pthread_mutex_unlock(&g_gate_mu);
    assert_int_equal(blocked, 2);
    struct here_unit waiting = {.handler = "mark"};
    assert_ok(store_run(f->db->store, STORE_WRITE, here_work, &waiting, &e), &e);
    pthread_mutex_lock(&g_gate_mu);
    g_gate_open = true;
    pthread_cond_broadcast(&g_gate_cv);
    pthread_mutex_unlock(&g_gate_mu);
    await_marks(3);
    job_pool_stop(pool, bb_mono_ms() + 5000);
    job_registry_destroy(reg);
}

/* A job claimed and failed for good with `error`; its id. */
/* ---- a job claimed ahead never runs under a lease that ran out -------------------------- */

struct probe {
    int64_t id;
    int64_t attempt;
    int64_t lease_expires_at_ms;
    int64_t lease_left_ms;    /* at its start */
    int64_t deadline_left_ms; /* at its start */
};
enum { PROBES_MAX = 16 };
static pthread_mutex_t g_probe_mu = PTHREAD_MUTEX_INITIALIZER;
static struct probe g_probes[PROBES_MAX]; /* guarded by g_probe_mu */
static int g_n_probes;                    /* guarded by g_probe_mu */

/* Fast; notes the lease and the deadline each run starts with. */
static enum job_verdict
probe_handler(struct job_run *run)
{
    int64_t wall = bb_wall_ms(), mono = bb_mono_ms();
    pthread_mutex_lock(&g_probe_mu);
    if (g_n_probes < PROBES_MAX)
        g_probes[g_n_probes++] =
            (struct probe){.id = run->job->id,
                           .attempt = run->job->attempt,
                           .lease_expires_at_ms = run->job->lease_expires_at_ms,
                           .lease_left_ms = run->job->lease_expires_at_ms - wall,
                           .deadline_left_ms = run->deadline_mono_ms - mono};
    pthread_mutex_unlock(&g_probe_mu);
    return JOB_DONE;
}

static int
probes_seen(void)
{
    pthread_mutex_lock(&g_probe_mu);
    int n = g_n_probes;
    pthread_mutex_unlock(&g_probe_mu);
    return n;
}

static void
await_probes(int n)
{
    int64_t deadline = bb_mono_ms() + 30000;
    while (probes_seen() < n && bb_mono_ms() < deadline)
        bb_sleep_ms(5);
    assert_int_equal(probes_seen(), n);
}

/* The runs of job `id` the probe saw (the last into *last). */
static int
probes_of(int64_t id, struct probe *last)
{
    int n = 0;
    pthread_mutex_lock(&g_probe_mu);
    for (int i = 0; i < g_n_probes; i++) {
        if (g_probes[i].id == id) {
            *last = g_probes[i];
            n++;
        }
    }
    pthread_mutex_unlock(&g_probe_mu);
    return n;
}

static void
gate_set(bool open)
{
    pthread_mutex_lock(&g_gate_mu);
    g_gate_open = open;
    if (!open)
        g_blocked = 0;
    pthread_cond_broadcast(&g_gate_cv);
    pthread_mutex_unlock(&g_gate_mu);
}

static void
await_blocked(int n)
{
    int64_t deadline = bb_mono_ms() + 30000;
    pthread_mutex_lock(&g_gate_mu);
    while (g_blocked < n && bb_mono_ms() < deadline) {
        pthread_mutex_unlock(&g_gate_mu);
        bb_sleep_ms(5);
        pthread_mutex_lock(&g_gate_mu);
    }
    int blocked = g_blocked;
    pthread_mutex_unlock(&g_gate_mu);
    assert_int_equal(blocked, n);
}

static struct store_stmt LEASE_OF = {
    .sql = "SELECT lease_expires_at_ms, leased_by FROM jobs WHERE id = $1 AND state = 'running'",
};

/* Job `id`'s lease expiry (it must be running, leased to `worker`). */
static int64_t
lease_of(struct store_conn *c, int64_t id, const char *worker)
{
    struct store_rows r;
    struct bb_error e;
    const struct store_param p[] = {sp_int(id)};
    assert_ok(store_query(c, &LEASE_OF, p, 1, &r, &e), &e);
    assert_true(store_next(&r));
    int64_t at = store_col_int(&r, 0);
    assert_string_equal(store_col_text(&r, 1), worker);
    store_rows_close(&r);
    return at;
}

/* Every run started with its deadline inside its lease, with room to spare. */
static void
assert_deadlines_within_leases(void)
{
    pthread_mutex_lock(&g_probe_mu);
    for (int i = 0; i < g_n_probes; i++)
        assert_true(g_probes[i].deadline_left_ms + 400 <= g_probes[i].lease_left_ms);
    pthread_mutex_unlock(&g_probe_mu);
}

struct waiting {
    struct job_registry *reg;
    struct job_pool *pool;
    int64_t late_attempts;           /* late's max_attempts */
    int64_t blocker, late, long_job; /* late: 100 ms max_duration */
    int64_t long_expiry;             /* long_job's lease as claimed */
};

/*
 * A pool of one, prefetching (its first job was fast), claims three jobs at
 * once: `blocker` holds its runner until the gate opens while `late` (a
 * lease of 1.1 s) and `long_job` (6 s) wait behind it in its buffer.
 */
static void
waiting_start(struct test_conn *f, struct waiting *w)
{
    struct bb_error e;
    gate_set(false);
    pthread_mutex_lock(&g_probe_mu);
    g_n_probes = 0;
    pthread_mutex_unlock(&g_probe_mu);
    struct job_registry_options ro = {0};
    assert_ok(job_registry_create(&ro, &w->reg, &e), &e);
    job_registry_add(w->reg, "probe", probe_handler, NULL);
    job_registry_add(w->reg, "block", block_handler, NULL);
    struct job_pool_options po = {.concurrency = 1, .poll_ms = 50, .worker_name = "pool"};
    assert_ok(job_pool_start(f->db->store, w->reg, &po, &w->pool, &e), &e);
    submit(f->c, NULL, "probe", 0, 0, bb_wall_ms());
    await_probes(1);
    struct job_spec specs[3] = {
        {.handler = "block"},
        {.handler = "probe", .max_duration_ms = 100, .max_attempts = w->late_attempts},
        {.handler = "probe", .max_duration_ms = 5000},
    };
    int64_t ids[3];
    bool created[3];
    size_t at;
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_ok(job_submit_many(f->c, specs, 3, bb_wall_ms(), ids, created, &at, &e), &e);
    assert_ok(store_commit(f->c, &e), &e);
    w->blocker = ids[0];
    w->late = ids[1];
    w->long_job = ids[2];
    await_blocked(1);
    /* Claimed together: the other two wait in the pool's buffer. */
    lease_of(f->c, w->late, "pool");
    w->long_expiry = lease_of(f->c, w->long_job, "pool");
}

/* Open the gate; once long_job (behind late) has run, stop the pool. */
static void
waiting_finish(struct waiting *w, int runs)
{
    gate_set(true);
    await_probes(runs);
    job_pool_stop(w->pool, bb_mono_ms() + 5000);
    job_registry_destroy(w->reg);
    struct probe p;
    assert_int_equal(probes_of(w->long_job, &p), 1);
    /* It waited out more than a second of its 6 s lease, which would have
     * left it less than 90% of its 5 s: extended before it started. */
    assert_true(p.lease_expires_at_ms > w->long_expiry);
    assert_deadlines_within_leases();
}

struct rescue_unit {
    int64_t id;
    struct job_lease *leases;
    size_t n;
};

/* The scheduler's rescue and another worker's claim, in one transaction
 * (the pool never sees the job pending). */
static enum err
rescue_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct rescue_unit *u = arg;
    int64_t rescued;
    enum err rc = job_rescue_expired(c, bb_wall_ms(), 10, &rescued, e);
    if (rc != ERR_OK || rescued == 0)
        return rc;
    rc =
        job_claim(c, "default", "other", false, 1, 60000, bb_wall_ms(), &u->leases, &u->n, NULL, e);
    if (rc == ERR_OK && (u->n != 1 || u->leases[0].id != u->id))
        return bb_fail(e, ERR_INTERNAL, "", "claimed something else");
    return rc;
}

/*
 * A job whose lease ran out while it waited in a pool's buffer, rescued
 * and claimed by another worker, is not run by the pool too: the other
 * worker's lease holds, and its completion is accepted.
 */
static void
a_prefetched_job_rescued_while_it_waited_is_not_run_by_its_first_worker(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct waiting w = {.late_attempts = 2}; /* the rescue counts one */
    waiting_start(f, &w);
    struct rescue_unit u = {.id = w.late};
    int64_t deadline = bb_mono_ms() + 30000;
    while (u.n == 0 && bb_mono_ms() < deadline) {
        assert_ok(store_run(f->db->store, STORE_WRITE, rescue_work, &u, &e), &e);
        if (u.n == 0)
            bb_sleep_ms(20); /* its lease (1.1 s) has not run out yet */
    }
    assert_int_equal(u.n, 1);
    waiting_finish(&w, 2); /* the first job and long_job */
    struct probe p;
    assert_int_equal(probes_of(w.late, &p), 0);
    assert_string_equal(state_of(f->c, w.late, bb_wall_ms()), "running");
    lease_of(f->c, w.late, "other");
    enum job_state st;
    assert_int_equal(
        finish(f->c, w.late, u.leases[0].lease_token, JOB_OUTCOME_COMPLETED, bb_wall_ms(), &st),
        ERR_OK);
    assert_int_equal(st, JOB_COMPLETED);
    free_leases(u.leases, u.n);
}

/* The job once it is completed (30 s at most), with its attempts. */
static json_t *
await_completed(struct store_conn *c, int64_t id)
{
    json_t *j = get(c, id, bb_wall_ms());
    int64_t until = bb_mono_ms() + 30000;
    while (strcmp(json_string_value(json_object_get(j, "state")), "completed") != 0 &&
           bb_mono_ms() < until) {
        json_decref(j);
        bb_sleep_ms(10);
        j = get(c, id, bb_wall_ms());
    }
    assert_string_equal(json_string_value(json_object_get(j, "state")), "completed");
    return j;
}

/* Job `id` was handed back once (`why`), then ran and completed: two
 * attempts, the second its only run. */
static void
handed_back_then_completed(struct store_conn *c, int64_t id, const char *why)
{
    struct probe p;
    assert_int_equal(probes_of(id, &p), 1);
    assert_int_equal(p.attempt, 2);
    json_t *j = await_completed(c, id);
    json_t *attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 2);
    const json_t *first = json_array_get(attempts, 0);
    assert_string_equal(json_string_value(json_object_get(first, "outcome")), "interrupted");
    assert_non_null(strstr(json_string_value(json_object_get(first, "error")), why));
    assert_string_equal(json_string_value(json_object_get(json_array_get(attempts, 1), "outcome")),
                        "completed");
    json_decref(j);
}

/*
 * A job whose lease ran out while it waited, not yet rescued, is handed
 * back rather than run: pending again without losing an attempt (it had
 * one), then claimed and run afresh under a new lease.
 */
static void
a_prefetched_job_whose_lease_ran_out_is_handed_back_not_run(void **state)
{
    struct test_conn *f = *state;
    struct waiting w = {.late_attempts = 1}; /* a rescue would kill it */
    waiting_start(f, &w);
    int64_t expiry = lease_of(f->c, w.late, "pool");
    while (bb_wall_ms() <= expiry)
        bb_sleep_ms(20);
    waiting_finish(&w, 3); /* the first job, long_job and late's second attempt */
    handed_back_then_completed(f->c, w.late, "lease ran out");
}

/*
 * A job that waited in the buffer long enough to need its lease extended
 * before it starts, whose extension fails for want of the database, is
 * handed back rather than run on a lease that may not hold: pending again
 * without losing an attempt, then run afresh.
 */
static void
a_prefetched_job_whose_lease_cannot_be_extended_is_handed_back_not_run(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    struct waiting w = {.late_attempts = 2};
    waiting_start(f, &w);
    int64_t expiry = lease_of(f->c, w.late, "pool");
    while (bb_wall_ms() <= expiry) /* long_job has waited past 10% of its 5 s */
        bb_sleep_ms(20);
    static const char series[] = "backbone_faults_injected_total{point=\"jobs.lease_extend\"}";
    int64_t counted = test_metric(series) < 0 ? 0 : test_metric(series);
    assert_ok(bb_faults_arm("jobs.lease_extend=1", 1, &e), &e);
    waiting_finish(&w, 3); /* the first job, late, and long_job's second attempt */
    assert_int_equal(bb_faults_injected("jobs.lease_extend"), 1);
    assert_int_equal(test_metric(series), counted + 1); /* every point counts there */
    bb_faults_disarm();
    handed_back_then_completed(f->c, w.long_job, "could not be extended");
}

static int64_t
dead_with(struct store_conn *c, const char *handler, const char *error)
{
    int64_t id = submit(c, NULL, handler, 0, T0, T0);
    struct job_lease l = claim_one(c, "default", T0);
    assert_int_equal(l.id, id);
    struct job_finish f = {
        .id = id, .token = l.lease_token, .outcome = JOB_OUTCOME_PERMANENT, .error = error};
    struct bb_error e;
    assert_ok(job_finish_batch(c, &f, 1, T0 + id, mid, &e), &e);
    assert_int_equal(f.state, JOB_DEAD);
    job_lease_deinit(&l);
    return id;
}

/* "count:handler:error" of each dead-letter group, largest first. */
static void
groups_are(struct store_conn *c, const char *want)
{
    json_t *out;
    struct bb_error e;
    assert_ok(job_dead_groups_json(c, "default", 100, &out, &e), &e);
    struct bb_buf b;
    bb_buf_init(&b);
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(out, "groups"), i, g)
    {
        bb_buf_printf(&b, "%s%lld:%s:%s", i ? " | " : "",
                      (long long)json_integer_value(json_object_get(g, "count")),
                      json_string_value(json_object_get(g, "handler")),
                      json_string_value(json_object_get(g, "error")));
    }
    assert_string_equal(b.data ? b.data : "", want);
    bb_buf_deinit(&b);
    json_decref(out);
}

static void
dead_letters_group_by_error_and_redrive_or_purge_by_group(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    int64_t a = dead_with(f->c, "noop", "timed out after 30000 ms");
    int64_t b = dead_with(f->c, "noop", "HTTP 503");
    int64_t c = dead_with(f->c, "noop", "timed out after 29871 ms");
    dead_with(f->c, "other", "timed out after 30000 ms");
    groups_are(f->c, "2:noop:timed out after <n> ms | 1:other:timed out after <n> ms"
                     " | 1:noop:HTTP 503");

    json_t *out;
    assert_ok(job_dead_groups_json(f->c, NULL, 1, &out, &e), &e);
    json_t *top = json_array_get(json_object_get(out, "groups"), 0);
    assert_int_equal(json_array_size(json_object_get(out, "groups")), 1);
    assert_int_equal(json_integer_value(json_object_get(top, "sample_job_id")), c);
    assert_string_equal(json_string_value(json_object_get(top, "sample_error")),
                        "timed out after 29871 ms");
    char fp[JOB_FINGERPRINT_LEN + 1];
    bb_strlcpy(fp, json_string_value(json_object_get(top, "fingerprint")), sizeof fp);
    json_decref(out);

    /* The group's jobs, and only them, carry its fingerprint. */
    struct job_filter filter = {.fingerprint = fp, .limit = 10};
    assert_ok(job_list_json(f->c, &filter, T0, &out, &e), &e);
    json_t *jobs = json_object_get(out, "jobs");
    assert_int_equal(json_array_size(jobs), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(jobs, 0), "job_id")), a);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(jobs, 1), "error_fingerprint")), fp);
    json_decref(out);

    int64_t n;
    const struct job_dead_match group = {.queue = "default", .fingerprint = fp};
    int64_t skipped;
    assert_ok(job_redrive_dead(f->c, &group, T0, &n, &skipped, &e), &e);
    assert_int_equal(n, 2);
    assert_int_equal(skipped, 0);
    assert_string_equal(state_of(f->c, a, T0), "pending");
    json_t *j = get(f->c, a, T0);
    assert_null(json_object_get(j, "error_fingerprint")); /* only dead jobs have one */
    json_decref(j);
    groups_are(f->c, "1:other:timed out after <n> ms | 1:noop:HTTP 503");

    char http[JOB_FINGERPRINT_LEN + 1];
    job_error_fingerprint("noop", "HTTP 503", http);
    const struct job_dead_match purge = {.fingerprint = http};
    assert_ok(job_purge_dead(f->c, &purge, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(job_get_json(f->c, b, false, T0, &j, &e), ERR_NOT_FOUND);
    groups_are(f->c, "1:other:timed out after <n> ms");
}

/* Before version 4 dead jobs had no fingerprint: its data step gives them theirs. */
static struct store_stmt UNPRINT = {.sql = "UPDATE jobs SET error_fingerprint = NULL"};

/* A job submitted with `unique_key` (NULL: none), run once and dead. */
static int64_t
dead_job(struct store_conn *c, const char *unique_key, int64_t now)
{
    struct job_spec s = {.handler = "noop", .unique_key = unique_key};
    int64_t id;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(c, &s, now, &id, &created, &e), &e);
    assert_true(created);
    struct job_lease l = claim_one(c, "default", now);
    assert_int_equal(l.id, id);
    assert_int_equal(finish(c, id, l.lease_token, JOB_OUTCOME_PERMANENT, now, NULL), ERR_OK);
    job_lease_deinit(&l);
    return id;
}

/*
 * A dead job whose unique_key a live job holds stays dead: its own retry
 * is refused naming the key and the holder, and a bulk redrive skips it
 * (and, of dead jobs sharing a free key, redrives the newest), redriving
 * the rest and saying how many it skipped.
 */
static void
a_redrive_skips_dead_jobs_whose_unique_key_is_held(void **state)
{
    struct test_conn *f = *state;
    int64_t held = dead_job(f->c, "order-1", T0);
    int64_t older = dead_job(f->c, "order-2", T0);
    int64_t newer = dead_job(f->c, "order-2", T0);
    int64_t plain = dead_job(f->c, NULL, T0);
    struct job_spec s = {.handler = "noop", .unique_key = "order-1", .run_at_ms = T0 + 60000};
    int64_t live;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(f->c, &s, T0, &live, &created, &e), &e);
    assert_true(created);

    assert_int_equal(job_run_now(f->c, held, T0 + 1, &e), ERR_CONFLICT);
    assert_string_equal(e.field, "unique_key");
    char holder[32];
    snprintf(holder, sizeof holder, "job %" PRId64 " ", live);
    assert_non_null(strstr(e.detail, holder));
    assert_string_equal(state_of(f->c, held, T0 + 1), "dead");

    int64_t n, skipped;
    const struct job_dead_match all = {0};
    assert_ok(job_redrive_dead(f->c, &all, T0 + 2, &n, &skipped, &e), &e);
    assert_int_equal(n, 2);
    assert_int_equal(skipped, 2);
    assert_string_equal(state_of(f->c, held, T0 + 2), "dead");
    assert_string_equal(state_of(f->c, older, T0 + 2), "dead");
    assert_string_equal(state_of(f->c, newer, T0 + 2), "pending");
    assert_string_equal(state_of(f->c, plain, T0 + 2), "pending");
    assert_string_equal(state_of(f->c, live, T0 + 2), "pending");
    /* Once the holder has finished, the key is free again. */
    assert_ok(job_cancel(f->c, live, T0 + 3, &e), &e);
    assert_ok(job_run_now(f->c, held, T0 + 4, &e), &e);
    assert_string_equal(state_of(f->c, held, T0 + 4), "pending");
}

static void
dead_letters_from_before_fingerprints_get_theirs_at_upgrade(void **state)
{
    struct test_conn *f = *state;
    struct bb_error e;
    for (int i = 0; i < 600; i++) /* more than one page of the backfill */
        dead_with(f->c, "noop", i % 2 ? "HTTP 503" : "timed out after 30000 ms");
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_ok(store_exec(f->c, &UNPRINT, NULL, 0, NULL, &e), &e);
    groups_are(f->c, "600:noop:HTTP 503"); /* one group: no fingerprint */
    assert_ok(jobs__fingerprint_dead_jobs(f->c, &e), &e);
    assert_ok(store_commit(f->c, &e), &e);
    size_t n;
    const struct store_migration *m = job_migrations(&n);
    assert_ptr_equal(m[3].after, jobs__fingerprint_dead_jobs);
    groups_are(f->c, "300:noop:HTTP 503 | 300:noop:timed out after <n> ms"); /* newest first */
}

/* Claims of `queue` at `now`: how many, and until when the rate held back. */
static size_t
claim_paced(struct store_conn *c, int64_t now, int64_t *until)
{
    struct job_lease *l;
    size_t n;
    struct bb_error e;
    assert_ok(job_claim(c, "paced", "w1", false, 10, 30000, now, &l, &n, until, &e), &e);
    free_leases(l, n);
    return n;
}

static void
a_rate_limit_lets_bursts_of_its_max_then_its_pace(void **state)
{
    struct test_conn *f = *state;
    struct job_queue q;
    job_queue_defaults(&q, "paced");
    q.rate_max = 3;
    q.rate_per_ms = 1000; /* one start every 333.3 ms, three at once at most */
    struct bb_error e;
    assert_ok(job_queue_put(f->c, &q, T0, &e), &e);
    for (int i = 0; i < 12; i++)
        submit(f->c, "paced", "noop", 0, T0, T0);
    int64_t until;
    assert_int_equal(claim_paced(f->c, T0, &until), 3); /* a full bucket */
    assert_int_equal(until, T0 + 334);
    assert_int_equal(claim_paced(f->c, T0 + 100, &until), 0);
    assert_int_equal(until, T0 + 334);
    assert_int_equal(claim_paced(f->c, T0 + 334, &until), 1);
    assert_int_equal(until, T0 + 334 + 333); /* 2 thousandths were left over */
    /* A long pause refills it to its max, no more. */
    assert_int_equal(claim_paced(f->c, T0 + 60000, &until), 3);
    /* The embedded workers' claim of every other queue leaves it alone. */
    struct job_lease *l;
    size_t n;
    assert_ok(jobs__claim_unlimited(f->c, "[]", "w1", 10, T0 + 120000, &l, &n, &e), &e);
    assert_int_equal(n, 0);
    free(l);
    /* Putting the same limit keeps the level; a new one starts full. */
    assert_ok(job_queue_put(f->c, &q, T0 + 60000, &e), &e);
    assert_int_equal(claim_paced(f->c, T0 + 60000, &until), 0);
    q.rate_max = 2;
    assert_ok(job_queue_put(f->c, &q, T0 + 60000, &e), &e);
    assert_int_equal(claim_paced(f->c, T0 + 60000, &until), 2);
    json_t *queues;
    assert_ok(job_queue_list_json(f->c, "paced", T0, &queues, &e), &e);
    json_t *rl = json_object_get(json_array_get(queues, 0), "rate_limit");
    assert_int_equal(json_integer_value(json_object_get(rl, "max")), 2);
    assert_int_equal(json_integer_value(json_object_get(rl, "per_ms")), 1000);
    json_decref(queues);
    /* Removed: the rest go at once. */
    q.rate_max = q.rate_per_ms = 0;
    assert_ok(job_queue_put(f->c, &q, T0 + 60000, &e), &e);
    assert_int_equal(claim_paced(f->c, T0 + 60000, &until), 3);
    assert_int_equal(until, 0);
}

/* A job of queue "keyed" under `key` (NULL: none); its id. */
static int64_t
submit_keyed(struct store_conn *c, const char *key)
{
    struct job_spec s = {
        .queue = "keyed", .handler = "noop", .run_at_ms = T0, .concurrency_key = key};
    int64_t id;
    bool created;
    struct bb_error e;
    assert_ok(job_submit(c, &s, T0, &id, &created, &e), &e);
    return id;
}

/* The queue "keyed": `per_key` running jobs per concurrency key. */
static void
put_keyed_queue(struct store_conn *c, int64_t per_key)
{
    struct job_queue q;
    job_queue_defaults(&q, "keyed");
    q.key_concurrency = per_key;
    struct bb_error e;
    assert_ok(job_queue_put(c, &q, T0, &e), &e);
}

/* A claim of up to 10 jobs of "keyed" (the leases in *out, id order). */
static size_t
claim_keyed(struct store_conn *c, struct job_lease **out)
{
    size_t n;
    struct bb_error e;
    assert_ok(job_claim(c, "keyed", "w1", false, 10, 30000, T0, out, &n, NULL, &e), &e);
    return n;
}

/* A claim of up to 10 jobs of "keyed" at `now`: their ids in order (at
 * most 8) and the first one's lease token, how many, and *until (when a
 * key's next start wakes its jobs). */
static size_t
claim_keyed_at(struct store_conn *c, int64_t now, int64_t ids[8], int64_t *token, int64_t *until)
{
    struct job_lease *l;
    size_t n;
    struct bb_error e;
    assert_ok(job_claim(c, "keyed", "w1", false, 10, 30000, now, &l, &n, until, &e), &e);
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        ids[i] = l[i].id;
    *token = n > 0 ? l[0].lease_token : 0;
    free_leases(l, n);
    return n;
}

static void
a_per_key_rate_parks_a_dry_keys_jobs_and_wakes_them_a_start_at_a_time(void **state)
{
    struct test_conn *f = *state;
    struct job_queue q;
    job_queue_defaults(&q, "keyed");
    q.key_rate_max = 2;
    q.key_rate_per_ms = 1000; /* a start every 500 ms per key, two at once at most */
    struct bb_error e;
    assert_ok(job_queue_put(f->c, &q, T0, &e), &e);
    int64_t a[5];
    for (int i = 0; i < 5; i++)
        a[i] = submit_keyed(f->c, "acme");
    int64_t b1 = submit_keyed(f->c, "bolt"), free1 = submit_keyed(f->c, NULL);
    int64_t got[8], token, until;
    /* acme's bucket lets two go; bolt's and the keyless job are not held. */
    assert_int_equal(claim_keyed_at(f->c, T0, got, &token, &until), 4);
    int64_t first[] = {a[0], a[1], b1, free1};
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], first[i]);
    assert_int_equal(until, T0 + 500); /* acme's next start */
    json_t *j = get(f->c, a[2], T0);
    assert_true(json_is_true(json_object_get(j, "parked")));
    assert_int_equal(test_metric("backbone_job_key_rate_parked_total{queue=\"keyed\"}"), 3);
    json_decref(j);
    /* Before it: nothing; at it: acme's next job, and only it. */
    assert_int_equal(claim_keyed_at(f->c, T0 + 499, got, &token, &until), 0);
    assert_int_equal(until, T0 + 500);
    assert_int_equal(claim_keyed_at(f->c, T0 + 500, got, &token, &until), 1);
    assert_int_equal(got[0], a[2]);
    assert_int_equal(until, T0 + 1000);
    /* After a long pause the bucket holds two, no more. */
    assert_int_equal(claim_keyed_at(f->c, T0 + 60000, got, &token, &until), 2);
    assert_int_equal(got[0], a[3]);
    assert_int_equal(got[1], a[4]);
    assert_int_equal(until, 0); /* nothing left parked */
    /* With a per-key concurrency of 1 too: a key whose job runs waits for
     * it (not parked by its rate), then for its bucket. */
    int64_t c1 = submit_keyed(f->c, "corp"), c2 = submit_keyed(f->c, "corp");
    int64_t c3 = submit_keyed(f->c, "corp");
    q.key_concurrency = 1;
    assert_ok(job_queue_put(f->c, &q, T0 + 60000, &e), &e); /* buckets full again */
    assert_int_equal(claim_keyed_at(f->c, T0 + 60000, got, &token, &until), 1);
    assert_int_equal(got[0], c1);
    assert_int_equal(until, 0); /* the others wait for c1, not for a start */
    assert_int_equal(finish(f->c, c1, token, JOB_OUTCOME_COMPLETED, T0 + 60000, NULL), ERR_OK);
    assert_int_equal(claim_keyed_at(f->c, T0 + 60000, got, &token, &until), 1);
    assert_int_equal(got[0], c2); /* the bucket's second start */
    assert_int_equal(finish(f->c, c2, token, JOB_OUTCOME_COMPLETED, T0 + 60000, NULL), ERR_OK);
    /* c3 has room now, but no start left: parked until the next. */
    assert_int_equal(claim_keyed_at(f->c, T0 + 60000, got, &token, &until), 0);
    assert_int_equal(until, T0 + 60500);
    /* Lifting the limits makes every parked job ready. */
    q.key_rate_max = q.key_rate_per_ms = q.key_concurrency = 0;
    assert_ok(job_queue_put(f->c, &q, T0 + 60000, &e), &e);
    assert_int_equal(claim_keyed_at(f->c, T0 + 60000, got, &token, &until), 1);
    assert_int_equal(got[0], c3);
    assert_int_equal(until, 0);
}

static void
a_per_key_limit_runs_each_keys_jobs_a_few_at_a_time(void **state)
{
    struct test_conn *f = *state;
    put_keyed_queue(f->c, 1);
    struct bb_error e;
    int64_t a1 = submit_keyed(f->c, "acme"), a2 = submit_keyed(f->c, "acme");
    int64_t b1 = submit_keyed(f->c, "bolt");
    int64_t free1 = submit_keyed(f->c, NULL), free2 = submit_keyed(f->c, NULL);
    int64_t a3 = submit_keyed(f->c, "acme"), b2 = submit_keyed(f->c, "bolt");
    (void)a3;
    struct job_lease *l;
    size_t n = claim_keyed(f->c, &l);
    /* One of each key, and every job without one. */
    assert_int_equal(n, 4);
    int64_t want[] = {a1, b1, free1, free2};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(l[i].id, want[i]);
    /* Nothing more while acme and bolt each run one. */
    struct job_lease *none;
    assert_int_equal(claim_keyed(f->c, &none), 0);
    free(none);
    /* acme's finishes: its next one, and only it. */
    assert_int_equal(finish(f->c, a1, l[0].lease_token, JOB_OUTCOME_COMPLETED, T0, NULL), ERR_OK);
    struct job_lease *next;
    assert_int_equal(claim_keyed(f->c, &next), 1);
    assert_int_equal(next[0].id, a2);
    free_leases(next, 1);
    /* Two per key: bolt's second runs beside its first, acme's third beside its second. */
    put_keyed_queue(f->c, 2);
    assert_int_equal(claim_keyed(f->c, &next), 2);
    assert_int_equal(next[0].id, a3);
    assert_int_equal(next[1].id, b2);
    free_leases(next, 2);
    free_leases(l, n);
    json_t *j = get(f->c, b2, T0);
    assert_string_equal(json_string_value(json_object_get(j, "concurrency_key")), "bolt");
    json_decref(j);
    json_t *queues;
    assert_ok(job_queue_list_json(f->c, "keyed", T0, &queues, &e), &e);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(queues, 0), "key_concurrency")), 2);
    json_decref(queues);
}

static bool
is_parked(struct store_conn *c, int64_t id)
{
    json_t *j = get(c, id, T0);
    bool parked = json_is_true(json_object_get(j, "parked"));
    json_decref(j);
    return parked;
}

/* The one job a claim of "keyed" takes; asserts there is exactly one. */
static struct job_lease
claim_keyed_one(struct store_conn *c)
{
    struct job_lease *l;
    assert_int_equal(claim_keyed(c, &l), 1);
    struct job_lease one = l[0];
    free(l);
    return one;
}

/*
 * A key with more ready jobs than a claim looks at (JOB_KEYED_SCAN) holds
 * nobody back: a claim that passes over a full key's jobs sets them aside,
 * and they come back, first first, as the key's running jobs end, however
 * they end. A raised limit hands its new slots to the first of them; a
 * lifted one puts every one back.
 */
static void
a_full_keys_backlog_waits_aside_and_holds_no_other_key_back(void **state)
{
    struct test_conn *f = *state;
    put_keyed_queue(f->c, 1);
    struct bb_error e;
    enum { BACKLOG = JOB_KEYED_SCAN + 200 };
    static int64_t acme[BACKLOG];
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    for (size_t i = 0; i < BACKLOG; i++)
        acme[i] = submit_keyed(f->c, "acme");
    int64_t bolt = submit_keyed(f->c, "bolt");
    assert_ok(store_commit(f->c, &e), &e);

    /* The first claim runs acme's first and sets a window of acme aside;
     * the next reaches past the rest to bolt. */
    struct job_lease a0 = claim_keyed_one(f->c);
    assert_int_equal(a0.id, acme[0]);
    assert_true(is_parked(f->c, acme[1]));
    struct job_lease b = claim_keyed_one(f->c);
    assert_int_equal(b.id, bolt);
    assert_true(is_parked(f->c, acme[BACKLOG - 1]));
    struct job_lease *none;
    assert_int_equal(claim_keyed(f->c, &none), 0);
    free(none);

    /* acme's running job completes: its next, in order. */
    assert_int_equal(finish(f->c, a0.id, a0.lease_token, JOB_OUTCOME_COMPLETED, T0, NULL), ERR_OK);
    struct job_lease a1 = claim_keyed_one(f->c);
    assert_int_equal(a1.id, acme[1]);
    /* ... is cancelled: the one after. */
    assert_ok(job_cancel(f->c, a1.id, T0, &e), &e);
    struct job_lease a2 = claim_keyed_one(f->c);
    assert_int_equal(a2.id, acme[2]);
    /* ... fails, to be retried later: the one after that. */
    struct job_finish fail = {
        .id = a2.id, .token = a2.lease_token, .outcome = JOB_OUTCOME_FAILED, .error = "boom"};
    assert_ok(job_finish_batch(f->c, &fail, 1, T0, mid, &e), &e);
    struct job_lease a3 = claim_keyed_one(f->c);
    assert_int_equal(a3.id, acme[3]);
    assert_false(is_parked(f->c, acme[2])); /* waiting for its retry, not for the key */

    /* Two per key: one more acme job runs beside a3; the rest stay aside. */
    put_keyed_queue(f->c, 2);
    struct job_lease a4 = claim_keyed_one(f->c);
    assert_int_equal(a4.id, acme[4]);
    assert_true(is_parked(f->c, acme[5]) && is_parked(f->c, acme[BACKLOG - 1]));
    /* Back to one: nothing more while a3 and a4 run. */
    put_keyed_queue(f->c, 1);
    struct job_lease *none2;
    assert_int_equal(claim_keyed(f->c, &none2), 0);
    free(none2);
    /* No per-key limit: acme's backlog is ready like any other. */
    put_keyed_queue(f->c, 0);
    struct job_lease *l;
    assert_int_equal(claim_keyed(f->c, &l), 10);
    assert_int_equal(l[0].id, acme[5]);
    free_leases(l, 10);
    job_lease_deinit(&a0);
    job_lease_deinit(&b);
    job_lease_deinit(&a1);
    job_lease_deinit(&a2);
    job_lease_deinit(&a3);
    job_lease_deinit(&a4);
}

/* A job unparked for its key's free slot but cancelled before a claim took
 * it hands the slot to the key's next parked job. */
static void
a_job_unparked_then_cancelled_hands_its_slot_on(void **state)
{
    struct test_conn *f = *state;
    put_keyed_queue(f->c, 1);
    struct bb_error e;
    int64_t a[3];
    for (size_t i = 0; i < 3; i++)
        a[i] = submit_keyed(f->c, "acme");
    struct job_lease run = claim_keyed_one(f->c); /* a[0]; a[1] and a[2] parked */
    assert_int_equal(run.id, a[0]);
    assert_true(is_parked(f->c, a[1]) && is_parked(f->c, a[2]));
    struct job_spec urgent = {.queue = "keyed", .handler = "noop", .run_at_ms = T0, .priority = 9};
    int64_t urgent_id;
    bool created;
    assert_ok(job_submit(f->c, &urgent, T0, &urgent_id, &created, &e), &e);
    assert_int_equal(finish(f->c, run.id, run.lease_token, JOB_OUTCOME_COMPLETED, T0, NULL),
                     ERR_OK);
    /* A claim of one: a[1] is unparked, but the urgent job takes the claim. */
    struct job_lease *l;
    size_t n;
    assert_ok(job_claim(f->c, "keyed", "w1", false, 1, 30000, T0, &l, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(l[0].id, urgent_id);
    free_leases(l, n);
    assert_false(is_parked(f->c, a[1]));
    assert_ok(job_cancel(f->c, a[1], T0, &e), &e);
    struct job_lease next = claim_keyed_one(f->c);
    assert_int_equal(next.id, a[2]);
    job_lease_deinit(&next);
    job_lease_deinit(&run);
}

/*
 * A claim that sets a job aside while its key's running job ends in a
 * transaction the claim cannot see yet (PostgreSQL) leaves that ending's
 * note standing, so the claim after it unparks the job. SQLite serialises
 * the two: there the claim comes after the ending and takes the job.
 */
static void
a_key_freed_while_a_claim_parks_its_jobs_is_seen_by_the_next_claim(void **state)
{
    struct test_conn *f = *state;
    bool pg = store_conn_engine(f->c) == STORE_POSTGRES;
    put_keyed_queue(f->c, 1);
    struct bb_error e;
    int64_t first = submit_keyed(f->c, "acme"), second = submit_keyed(f->c, "acme");
    struct job_lease run = claim_keyed_one(f->c);
    assert_int_equal(run.id, first);

    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_int_equal(finish(f->c, run.id, run.lease_token, JOB_OUTCOME_COMPLETED, T0, NULL),
                     ERR_OK);
    if (!pg)
        assert_ok(store_commit(f->c, &e), &e);
    struct store_conn *other;
    assert_ok(store_conn_open(f->db->store, &other, &e), &e);
    assert_ok(store_begin(other, STORE_WRITE, &e), &e);
    struct job_lease *l;
    size_t n = claim_keyed(other, &l);
    assert_ok(store_commit(other, &e), &e);
    store_conn_close(other);
    if (pg) {
        assert_int_equal(n, 0);
        assert_true(is_parked(f->c, second));
        assert_ok(store_commit(f->c, &e), &e);
        struct job_lease next = claim_keyed_one(f->c);
        assert_int_equal(next.id, second);
        job_lease_deinit(&next);
    } else {
        assert_int_equal(n, 1);
        assert_int_equal(l[0].id, second);
    }
    free_leases(l, n);
    job_lease_deinit(&run);
}

struct keyed_claim {
    struct store *store;
    size_t n;
    enum err rc;
};

static enum err
keyed_claim_work(struct store_conn *c, void *arg, struct bb_error *e)
{
    struct keyed_claim *k = arg;
    struct job_lease *l;
    enum err rc = job_claim(c, "keyed", "w2", false, 10, 30000, T0, &l, &k->n, NULL, e);
    if (rc == ERR_OK)
        free_leases(l, k->n);
    return rc;
}

static void *
keyed_claimer(void *arg)
{
    struct keyed_claim *k = arg;
    struct bb_error e;
    k->rc = store_run(k->store, STORE_WRITE, keyed_claim_work, k, &e);
    return NULL;
}

static struct store_stmt BACKEND_PID = {.sql = "SELECT pg_backend_pid()"};
static struct store_stmt BLOCKED_BY = {
    .sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))",
};

/* Sessions waiting for a lock `pid` holds (PostgreSQL). */
static int64_t
blocked_by(struct store_conn *c, int64_t pid)
{
    int64_t n;
    struct bb_error e;
    const struct store_param p[] = {sp_int(pid)};
    struct store_rows r;
    assert_ok(store_query(c, &BLOCKED_BY, p, 1, &r, &e), &e);
    assert_true(store_next(&r));
    n = store_col_int(&r, 0);
    store_rows_close(&r);
    return n;
}

/*
 * A cancel that commits while a claim of a keyed queue waits for the job's
 * row (PostgreSQL: the claim read the job as pending, then blocked on the
 * cancel's lock) stands: the claim skips the job. SQLite serialises writers,
 * so there the claim simply comes after the cancel.
 */
static void
a_cancel_committed_during_a_keyed_claim_stands(void **state)
{
    struct test_conn *f = *state;
    put_keyed_queue(f->c, 1);
    struct bb_error e;
    int64_t id = submit_keyed(f->c, "acme");
    bool pg = store_conn_engine(f->c) == STORE_POSTGRES;
    struct keyed_claim k = {.store = f->db->store};
    assert_ok(store_begin(f->c, STORE_WRITE, &e), &e);
    assert_ok(job_cancel(f->c, id, T0 + 1, &e), &e);
    pthread_t claimer;
    if (pg) {
        struct store_rows r;
        assert_ok(store_query(f->c, &BACKEND_PID, NULL, 0, &r, &e), &e);
        assert_true(store_next(&r));
        int64_t pid = store_col_int(&r, 0);
        store_rows_close(&r);
        assert_int_equal(pthread_create(&claimer, NULL, keyed_claimer, &k), 0);
        struct store_conn *watch;
        assert_ok(store_conn_open(f->db->store, &watch, &e), &e);
        int64_t deadline = bb_mono_ms() + 30000;
        while (blocked_by(watch, pid) == 0 && bb_mono_ms() < deadline)
            bb_sleep_ms(5);
        assert_int_equal(blocked_by(watch, pid), 1); /* the claim waits for the job's row */
        store_conn_close(watch);
    }
    assert_ok(store_commit(f->c, &e), &e);
    if (pg)
        pthread_join(claimer, NULL);
    else
        keyed_claimer(&k);
    assert_ok(k.rc, &e);
    assert_int_equal(k.n, 0);
    assert_string_equal(state_of(f->c, id, T0 + 2), "cancelled");
}

#define JOB_TEST(name) cmocka_unit_test_setup_teardown(name, test_conn_setup, test_conn_teardown)

static const struct CMUnitTest tests[] = {
    JOB_TEST(submit_and_read_back),
    JOB_TEST(states_of_many_jobs_are_read_at_once),
    JOB_TEST(jobs_handed_to_the_pool_at_commit_run_at_once),
    JOB_TEST(a_prefetched_job_rescued_while_it_waited_is_not_run_by_its_first_worker),
    JOB_TEST(a_prefetched_job_whose_lease_ran_out_is_handed_back_not_run),
    JOB_TEST(a_prefetched_job_whose_lease_cannot_be_extended_is_handed_back_not_run),
    JOB_TEST(unique_key_returns_the_first_job_until_it_finishes),
    JOB_TEST(claims_take_ready_jobs_by_priority_then_age),
    JOB_TEST(paused_queues_and_concurrency_limits_hold_claims_back),
    JOB_TEST(cancelling_a_running_job_of_a_limited_queue_wakes_its_claimers),
    JOB_TEST(a_rate_limit_lets_bursts_of_its_max_then_its_pace),
    JOB_TEST(a_per_key_limit_runs_each_keys_jobs_a_few_at_a_time),
    JOB_TEST(a_per_key_rate_parks_a_dry_keys_jobs_and_wakes_them_a_start_at_a_time),
    JOB_TEST(a_cancel_committed_during_a_keyed_claim_stands),
    JOB_TEST(a_full_keys_backlog_waits_aside_and_holds_no_other_key_back),
    JOB_TEST(a_job_unparked_then_cancelled_hands_its_slot_on),
    JOB_TEST(a_key_freed_while_a_claim_parks_its_jobs_is_seen_by_the_next_claim),
    JOB_TEST(completion_with_a_stale_lease_token_is_refused),
    JOB_TEST(a_pull_workers_lease_ends_with_its_max_duration),
    JOB_TEST(a_long_multibyte_worker_name_survives_rescue_and_failure),
    JOB_TEST(failures_retry_with_backoff_then_die_with_every_error_kept),
    JOB_TEST(permanent_failure_dies_at_once_and_purge_removes_it),
    JOB_TEST(purge_one_takes_that_dead_job_only),
    JOB_TEST(dead_letters_group_by_error_and_redrive_or_purge_by_group),
    JOB_TEST(dead_letters_from_before_fingerprints_get_theirs_at_upgrade),
    JOB_TEST(a_redrive_skips_dead_jobs_whose_unique_key_is_held),
    JOB_TEST(cancel_revokes_a_running_lease_and_run_now_brings_it_back),
    JOB_TEST(enqueue_commits_or_rolls_back_with_the_callers_transaction),
    JOB_TEST(schedules_fire_once_per_time_and_collapse_missed_fires),
    JOB_TEST(per_second_cron_schedules_fire_once_per_time_and_collapse_missed_fires),
    JOB_TEST(schedules_years_behind_fire_once_and_catch_up_at_once),
    JOB_TEST(cron_schedules_use_their_time_zone),
    JOB_TEST(list_pages_and_filters),
    JOB_TEST(retention_prunes_old_finished_jobs_and_their_attempts_only),
    JOB_TEST(a_completed_job_run_again_keeps_every_attempt),
    JOB_TEST(many_jobs_insert_in_order_across_queues_and_keys),
    JOB_TEST(a_large_batch_keeps_each_rows_id_and_order),
    JOB_TEST(concurrent_claimers_never_share_a_job),
    JOB_TEST(a_handler_ends_its_job_in_its_own_transaction_or_not_at_all),
};

TEST_MAIN(tests, true)
