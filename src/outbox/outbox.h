/*
 * outbox: the transactional outbox. A service appends an event inside the
 * same store transaction as the state change it describes, so the change and
 * its event commit or roll back together; nothing is announced that did not
 * happen, and nothing that happened goes unannounced.
 *
 * Events are kept in order (`seq`, one more per event). GET /outbox pages
 * through them without gaps: on PostgreSQL a reader sees an event only once
 * every transaction that began before it has ended, so a later page never
 * holds a smaller seq than one already read; on SQLite commits are
 * serialised and seq order is commit order. Each event has a UUIDv7
 * `event_id` consumers can dedupe on, its aggregate, time, the traceparent
 * of the request that caused it, and `data` valid against the JSON Schema
 * docs/events/<type>.json. The table also holds the relay's bookkeeping
 * (published_at, claims), for relays that claim batches concurrently.
 */
#ifndef BB_OUTBOX_H
#define BB_OUTBOX_H

#include "base/base.h"
#include "http/http.h"
#include "store/store.h"

/* Notification channel announcing new events; payload: the event type. */
#define OUTBOX_CHANNEL "bb_outbox"

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
};

/* Append `ev` in the caller's open transaction. */
BB_WUR enum err outbox_append(struct store_conn *c, const struct outbox_event *ev, int64_t now_ms,
                              struct bb_error *e);

struct outbox_filter {
    int64_t after; /* seq */
    int64_t limit;
    const char *type;         /* NULL: any */
    const char *aggregate_id; /* NULL: any */
};
/* {"events":[{seq, event_id, type, aggregate_type, aggregate_id,
 * occurred_at, traceparent, data}], "next_after": seq|null}, seq order. */
BB_WUR enum err outbox_list_json(struct store_conn *c, const struct outbox_filter *f, json_t **out,
                                 struct bb_error *e);

const struct store_migration *outbox_migrations(size_t *n);

/* GET /outbox. */
struct outbox_service;
struct outbox_service *outbox_service_create(struct store *s);
size_t outbox_service_routes(struct outbox_service *svc, struct http_route *out, size_t max);
void outbox_service_destroy(struct outbox_service *svc);

#endif /* BB_OUTBOX_H */
