/* The fake send of the actors' state-machine tests (serving_core, serving_plan, gateway_core):
 * records every message a state machine sends, in order, or fails for one unreachable peer, so that
 * a test reads what was sent instead of running sockets. Header-only, like serve_harness.h. */
#ifndef DSLA_TESTS_UNIT_OUTBOX_H
#define DSLA_TESTS_UNIT_OUTBOX_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testutil.h"

enum { OUTBOX_MAX = 256 };

typedef struct {
    char dst[64];
    uint32_t type;
    uint64_t id;
    void *body;
    size_t len;
} sent_t;

typedef struct {
    sent_t sent[OUTBOX_MAX];
    int n;
    char unreachable[64]; /* sends to this peer fail with RESOURCE_EXHAUSTED */
} outbox_t;

static inline dsla_status_t outbox_send(outbox_t *o, const char *dst, uint32_t type, uint64_t id,
                                        const void *body, size_t len) {
    if (o->unreachable[0] && strcmp(dst, o->unreachable) == 0)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "%s: its queue is full", dst);
    assert_true(o->n < OUTBOX_MAX);
    sent_t *s = &o->sent[o->n++];
    snprintf(s->dst, sizeof s->dst, "%s", dst);
    s->type = type;
    s->id = id;
    s->body = malloc(len + 1);
    if (len) memcpy(s->body, body, len); /* an empty body may be NULL (STATUS) */
    s->len = len;
    return DSLA_OK;
}

/* Frees what was recorded and empties the outbox (unreachable stays). */
static inline void outbox_clear(outbox_t *o) {
    for (int i = 0; i < o->n; i++)
        free(o->sent[i].body);
    o->n = 0;
}

#endif
