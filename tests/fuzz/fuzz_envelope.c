/* libFuzzer target: one ZeroMQ frame as an actor receives it. The envelope is decoded, then its
 * body with the decoder of its type, then every body decoder is tried on the raw bytes too (a
 * hostile peer may send any body under any type). Nothing may crash, leak or read out of bounds
 * (ASan+UBSan); a decode either succeeds or fails with a message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "proto/proto.h"

/* One wrapper per body type: decode into a fresh struct, then free what it allocated. */
#define DSLA_FUZZ_BODY(name, type, free_fn)                                                        \
    static void fuzz_##name(const void *b, size_t n) {                                             \
        type *out = calloc(1, sizeof *out);                                                        \
        if (!out) return;                                                                          \
        (void)dsla_proto_##name##_decode(b, n, out);                                               \
        free_fn;                                                                                   \
        free(out);                                                                                 \
    }
DSLA_FUZZ_BODY(ping, dsla_proto_ping_t, (void)0)
DSLA_FUZZ_BODY(error, dsla_proto_error_t, (void)0)
DSLA_FUZZ_BODY(generate, dsla_proto_generate_t, dsla_proto_generate_free(out))
DSLA_FUZZ_BODY(token, dsla_proto_token_t, (void)0)
DSLA_FUZZ_BODY(done, dsla_proto_done_t, (void)0)
DSLA_FUZZ_BODY(cancel, dsla_proto_cancel_t, (void)0)
DSLA_FUZZ_BODY(report, dsla_proto_report_t, (void)0)
DSLA_FUZZ_BODY(load_report, dsla_proto_load_report_t, (void)0)
DSLA_FUZZ_BODY(set_plan, dsla_proto_set_plan_t, dsla_proto_set_plan_free(out))
DSLA_FUZZ_BODY(plan_reply, dsla_proto_plan_reply_t, (void)0)
DSLA_FUZZ_BODY(admin, dsla_proto_admin_t, (void)0)
DSLA_FUZZ_BODY(admin_reply, dsla_proto_admin_reply_t, dsla_proto_admin_reply_free(out))
DSLA_FUZZ_BODY(layer_ready, dsla_proto_layer_ready_t, (void)0)
DSLA_FUZZ_BODY(distill_progress, dsla_proto_distill_progress_t, (void)0)
DSLA_FUZZ_BODY(prompt_samples, dsla_proto_prompt_samples_t, dsla_proto_prompt_samples_free(out))
DSLA_FUZZ_BODY(layer_fetch, dsla_proto_layer_fetch_t, (void)0)
DSLA_FUZZ_BODY(layer_chunk, dsla_proto_layer_chunk_t, (void)0)
DSLA_FUZZ_BODY(bcast, dsla_proto_bcast_t, (void)0)
DSLA_FUZZ_BODY(bcast_reply, dsla_proto_bcast_reply_t, (void)0)

static void (*const bodies[])(const void *, size_t) = {fuzz_ping,           fuzz_error,
                                                       fuzz_generate,       fuzz_token,
                                                       fuzz_done,           fuzz_cancel,
                                                       fuzz_report,         fuzz_load_report,
                                                       fuzz_set_plan,       fuzz_plan_reply,
                                                       fuzz_admin,          fuzz_admin_reply,
                                                       fuzz_layer_ready,    fuzz_distill_progress,
                                                       fuzz_prompt_samples, fuzz_layer_fetch,
                                                       fuzz_layer_chunk,    fuzz_bcast,
                                                       fuzz_bcast_reply};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dsla_proto_envelope_t env;
    if (dsla_proto_envelope_decode(data, size, &env) == DSLA_OK)
        for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
            bodies[i](env.body, env.body_len);
    /* the first byte picks a decoder for the raw rest: bodies without an envelope */
    if (size > 0) bodies[data[0] % (sizeof bodies / sizeof bodies[0])](data + 1, size - 1);
    return 0;
}
