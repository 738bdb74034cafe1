/* proto's REPORT body: a round trip (a replica's load inside), hostile input (every truncation,
 * flipped bytes), unknown keys and states, and refusals of malformed bodies. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "tests/unit/proto_hostile.h"

static dsla_status_t report_decode(const void *b, size_t n, void *o) {
    return dsla_proto_report_decode(b, n, o);
}

static void test_report_round_trip(void **state) {
    (void)state;
    dsla_proto_report_t *r = calloc(1, sizeof *r), *d = calloc(1, sizeof *d);
    *r = (dsla_proto_report_t){.requests = 10,
                               .tokens = UINT64_MAX,
                               .errors = 2,
                               .rerouted = 1,
                               .in_flight = 3,
                               .n_replicas = 2};
    r->replicas[0] = (dsla_proto_replica_report_t){.name = "serving0",
                                                   .endpoint = "inproc://serving0",
                                                   .state = DSLA_PROTO_REPLICA_ALIVE,
                                                   .outstanding = 3,
                                                   .routed = 9,
                                                   .failed = 1};
    r->replicas[1] = (dsla_proto_replica_report_t){.name = "replica1",
                                                   .endpoint = "tcp://127.0.0.1:7072",
                                                   .state = DSLA_PROTO_REPLICA_DEAD,
                                                   .routed = 1,
                                                   .failed = 1};
    /* the first replica's load (its answer to the gateway's STATUS) travels inside */
    dsla_proto_load_report_t *l = &r->replicas[0].load;
    r->replicas[0].has_load = true;
    l->num_layers = 5;
    l->running = 2;
    l->kv_used = 4;
    l->kv_total = 64;
    l->plan_id = 3;
    l->n_dsla = 1;
    l->dsla[0] = (dsla_proto_dsla_layer_t){2, 42};
    l->has_totals = true;
    l->generated_tokens = 99;
    l->hist[DSLA_PROTO_HIST_E2E].counts[10] = 4;
    l->hist[DSLA_PROTO_HIST_E2E].count = 4;
    l->hist[DSLA_PROTO_HIST_E2E].sum = 0.5;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_report_encode(r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_report_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(r, d, sizeof *r);
    assert_hostile_safe(&buf, report_decode, d); /* the load nested as bytes included */
    dsla_proto_buf_free(&buf);
    assert_string_equal(dsla_proto_replica_state_name(DSLA_PROTO_REPLICA_DEAD), "dead");

    r->n_replicas = DSLA_PROTO_REPLICAS_MAX + 1;
    assert_int_equal(dsla_proto_report_encode(r, &buf), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(buf.data);
    free(r);
    free(d);
}

static void test_report_decode_edges(void **state) {
    (void)state;
    dsla_proto_report_t *d = calloc(1, sizeof *d);
    /* {"zz": 1, "replicas": [{"state": "resting", "name": "a"}]}: unknown key ignored, unknown
     * state read as unknown */
    static const char ok[] = "\x82\xa2zz\x01\xa8replicas\x91\x82\xa5state\xa7resting\xa4name\xa1"
                             "a";
    assert_int_equal(dsla_proto_report_decode(ok, sizeof ok - 1, d), DSLA_OK);
    assert_int_equal(d->n_replicas, 1);
    assert_string_equal(d->replicas[0].name, "a");
    assert_int_equal(d->replicas[0].state, DSLA_PROTO_REPLICA_UNKNOWN);
    /* replicas not an array; a replica not a map; a negative counter; not a map at all; a load
     * that is not bytes */
    static const char *const bad[] = {"\x81\xa8replicas\x01", "\x81\xa8replicas\x91\x01",
                                      "\x81\xa8requests\xff", "\x91\x01",
                                      "\x81\xa8replicas\x91\x81\xa4load\x01"};
    static const size_t bad_len[] = {11, 12, 11, 2, 18};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(dsla_proto_report_decode(bad[i], bad_len[i], d), DSLA_ERR_FORMAT);
    free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_round_trip),
        cmocka_unit_test(test_report_decode_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
