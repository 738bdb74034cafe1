/* CANCEL: decode, look up, or answer the sender (cancel.h). */
#include "actors/cancel.h"

#include <stdio.h>

void *dsla_cancel_lookup(dsla_actor_t *a, const dsla_actor_msg_t *msg, dsla_cancel_find_fn find,
                         void *owner) {
    dsla_proto_cancel_t c;
    dsla_status_t st = dsla_proto_cancel_decode(msg->env->body, msg->env->body_len, &c);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return NULL;
    }
    void *found = find(owner, msg->from, c.request);
    if (!found) {
        char why[128];
        snprintf(why, sizeof why, "CANCEL: no running request %llu of this client",
                 (unsigned long long)c.request);
        dsla_actor_reply_error(a, msg, DSLA_CODE_INVALID_ARGUMENT, why);
    }
    return found;
}
