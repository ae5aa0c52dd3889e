/*
 * outbox: the transactional outbox. A service appends an event inside the
 * same store transaction as the state change it describes, so the change and
 * its event commit or roll back together; nothing is announced that did not
 * happen, and nothing that happened goes unannounced.
 *
 * Events are kept in order (`seq`, one more per event). GET /outbox pages
 * through them without gaps: a later page never holds a smaller seq than
 * one already read. On SQLite commits are serialised and seq is the row id.
 * On PostgreSQL ids are taken before commit, in no commit order, so a
 * sequencer gives seqs to committed events, one sequencer at a time, when
 * the outbox is read. Each event has a UUIDv7
 * `event_id` consumers can dedupe on, its aggregate, time, the traceparent
 * of the request that caused it, and `data` valid against the JSON Schema
 * docs/events/<type>.json. The table also holds the relay's bookkeeping
 * (published_at, claims), for relays that claim batches concurrently.
 *
 * Appending announces nothing: a NOTIFY inside the business transaction
 * would serialise its commit with every other notifying commit on
 * PostgreSQL (measured: a quarter of checkout throughput). Consumers poll,
 * or are woken after the commit.
 */
#ifndef BB_OUTBOX_H
#define BB_OUTBOX_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

enum {
    OUTBOX_LIST_DEFAULT = 100,
    OUTBOX_LIST_MAX = 1000,
};

struct outbox_event {
    const char *type;           /* "order.created.v1" */
    const char *aggregate_type; /* "order" */
    const char *aggregate_id;
    const json_t *data;      /* the event's body */
    const char *traceparent; /* NULL: the current thread's (the request's) */
    bool for_consumer;       /* an in-process consumer claims it (outbox_claim) */
};

/* Append `ev` in the caller's open transaction. */
BB_WUR enum err outbox_append(struct store_conn *c, const struct outbox_event *ev, int64_t now_ms,
                              struct bb_error *e);
/* Append evs[0..n-1], in that order, with one statement. */
BB_WUR enum err outbox_append_many(struct store_conn *c, const struct outbox_event *evs, size_t n,
                                   int64_t now_ms, struct bb_error *e);
/* Release events built for outbox_append_many: each one's data (a
 * reference the builder owns) and the array (from xcalloc). */
void outbox_events_free(struct outbox_event *evs, size_t n);

struct outbox_filter {
    int64_t after; /* seq */
    int64_t limit;
    const char *type;         /* NULL: any */
    const char *aggregate_id; /* NULL: any */
};
/* {"events":[{seq, event_id, type, aggregate_type, aggregate_id,
 * occurred_at, traceparent, data}], "next_after": seq|null, "held_back": n},
 * seq order. On PostgreSQL, call it in a STORE_WRITE transaction: it first
 * gives seqs to committed events that have none (up to 10,000 a call);
 * held_back, on a last page, counts those left for the next call (0 on
 * SQLite). Every event committed before the call is listed once it is 0. */
BB_WUR enum err outbox_list_json(struct store_conn *c, const struct outbox_filter *f, json_t **out,
                                 struct bb_error *e);

/* An event claimed by an in-process consumer. */
struct outbox_claimed {
    int64_t id;
    char *aggregate_id;
    json_t *data;
    char *traceparent; /* the writer's, or NULL */
};
/*
 * Claim up to `limit` events of `type` appended for_consumer and not yet
 * handled, with ids above `after_id`, oldest first, in the caller's write
 * transaction; on PostgreSQL rows other claimers hold are skipped (FOR
 * UPDATE SKIP LOCKED). The consumer does its work and outbox_mark_handled
 * in the same transaction.
 *
 * after_id 0 reads from the start. A consumer working through a backlog
 * passes the last id it claimed, so that each claim does not walk again
 * past the events it handled before (on PostgreSQL their index entries
 * stay until no snapshot can see them, and under load every claim would
 * read them all); what it passes over (an event committed late with a
 * lower id) it finds when it next reads from the start.
 */
BB_WUR enum err outbox_claim(struct store_conn *c, const char *type, int64_t after_id,
                             int64_t limit, struct outbox_claimed **out, size_t *n,
                             struct bb_error *e);
/* Mark claimed events ids[0..n-1] handled, with one statement. */
BB_WUR enum err outbox_mark_handled(struct store_conn *c, const int64_t *ids, size_t n,
                                    int64_t now_ms, struct bb_error *e);
void outbox_claimed_free(struct outbox_claimed *a, size_t n);

/*
 * Retention: delete the events created before `before_ms` that no
 * in-process consumer still waits for, among the `limit` ids after *cursor,
 * in the caller's write transaction; *deleted says how many. *cursor moves
 * to the window's last id, or back to 0 when the window reached events
 * created since `before_ms` (ids follow time, so the rest are younger) or
 * the end. Ids and seqs are never given twice: SQLite's ids are
 * AUTOINCREMENT, and on PostgreSQL the event with the highest seq stays, as
 * the sequencer counts on from it. Safe in any number of processes at once.
 */
BB_WUR enum err outbox_prune(struct store_conn *c, int64_t before_ms, int64_t limit,
                             int64_t *cursor, int64_t *deleted, struct bb_error *e);

const struct store_migration *outbox_migrations(size_t *n);

struct outbox_options {
    int64_t retention_ms; /* events kept this long, then deleted; 0: forever */
};

/* GET /outbox, and with a retention the pruner thread ("bb-outbox-prune"). */
struct outbox_service;
BB_WUR enum err outbox_service_create(struct store *s, const struct outbox_options *o,
                                      struct outbox_service **out, struct bb_error *e);
size_t outbox_service_routes(struct outbox_service *svc, struct http_route *out, size_t max);
void outbox_service_destroy(struct outbox_service *svc);

#endif /* BB_OUTBOX_H */
