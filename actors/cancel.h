/* CANCEL's handling common to every actor that runs requests for clients (the serving actor, the
 * gateway): decode the body and find the request it names among the sender's, answering the sender
 * with ERROR when the body is malformed or names no running request of that client.
 *
 * Contract: called from a CANCEL handler, on the actor's thread; find is the actor's own lookup
 * by (client routing id, client's request id). It cancels nothing itself. */
#ifndef DSLA_ACTORS_CANCEL_H
#define DSLA_ACTORS_CANCEL_H

#include <stdint.h>

#include "runtime/actor/actor.h"

typedef void *(*dsla_cancel_find_fn)(void *owner, const char *client, uint64_t request);

/* The request msg's CANCEL names, as find returns it; NULL once the sender has been answered. */
void *dsla_cancel_lookup(dsla_actor_t *a, const dsla_actor_msg_t *msg, dsla_cancel_find_fn find,
                         void *owner);

#endif
