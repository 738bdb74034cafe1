/* actors/serving_core: the serving actor's requests driven in-process with a fake send, a fake
 * engine (submits and cancels recorded, batches written by the test) and a virtual clock:
 * streaming and DONE; a refusal carrying the engine's own sentence; a request cancelled mid-stream
 * by its client (and a CANCEL naming another client's request refused); a client vanishing
 * (heartbeats stop) and one that cannot be reached (its sends fail); the LOAD_REPORT from the
 * metrics snapshot and the request ages; prompt sampling of accepted prompts only. A request given
 * up on for its client still ends with an ERROR saying why, in case the client only stalled. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/serving_core.h"
#include "tests/unit/outbox.h"

enum { KEYS_MAX = 64 };

static struct {
    outbox_t out;
    uint64_t submitted[KEYS_MAX];
    int n_submitted;
    uint64_t cancelled[KEYS_MAX];
    int n_cancelled;
    uint64_t now;
    dsla_engine_metrics_t metrics;
} t;

static dsla_status_t fake_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    (void)user;
    return outbox_send(&t.out, dst, type, id, body, len);
}

static uint64_t fake_now(void *user) {
    (void)user;
    return t.now;
}

static dsla_status_t fake_submit(void *user, uint64_t key, dsla_proto_generate_t *g) {
    (void)user;
    assert_true(t.n_submitted < KEYS_MAX);
    t.submitted[t.n_submitted++] = key;
    dsla_proto_generate_free(g);
    return DSLA_OK;
}

static dsla_status_t fake_cancel(void *user, uint64_t key) {
    (void)user;
    assert_true(t.n_cancelled < KEYS_MAX);
    t.cancelled[t.n_cancelled++] = key;
    return DSLA_OK;
}

static void fake_metrics(void *user, dsla_engine_metrics_t *out) {
    (void)user;
    *out = t.metrics;
}

static const dsla_serving_core_ops_t ops = {.send = fake_send,
                                            .now_ms = fake_now,
                                            .submit = fake_submit,
                                            .cancel = fake_cancel,
                                            .metrics = fake_metrics};

static int setup(void **state) {
    (void)state;
    memset(&t, 0, sizeof t);
    t.now = 5000;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    outbox_clear(&t.out);
    return 0;
}

static dsla_serving_core_t *core_new(dsla_serving_sample_t *sample) {
    dsla_serving_core_config_t c = {.num_layers = 5,
                                    .name = "serving7",
                                    .controller = "controller",
                                    .sample = sample,
                                    .distiller = "distiller"};
    dsla_serving_core_t *core = NULL;
    assert_int_equal(dsla_serving_core_create(&core, &c, &ops), DSLA_OK);
    return core;
}

static const int32_t prompt[] = {1, 403, 407, 261};

/* GENERATE id from client; returns the key it went to the engine under. */
static uint64_t generate(dsla_serving_core_t *c, const char *client, uint64_t id) {
    dsla_proto_generate_t g = {
        .prompt_ids = prompt, .n_prompt_ids = 4, .max_tokens = 16, .top_p = 1, .stream = true};
    dsla_proto_buf_t body;
    assert_int_equal(dsla_proto_generate_encode(&g, &body), DSLA_OK);
    int before = t.n_submitted;
    assert_int_equal(dsla_serving_core_on_generate(c, client, id, body.data, body.len), DSLA_OK);
    dsla_proto_buf_free(&body);
    assert_int_equal(t.n_submitted, before + 1);
    return t.submitted[t.n_submitted - 1];
}

/* A batch builder: events appended with their text. */
typedef struct {
    dsla_serving_batch_t b;
    dsla_serving_event_t ev[16];
    char text[1024];
} batch_t;

static void batch_init(batch_t *x) {
    memset(x, 0, sizeof *x);
    x->b.events = x->ev;
    x->b.text = x->text;
}

static void batch_add(batch_t *x, dsla_serving_event_t ev, const char *text, const char *message) {
    ev.text_off = x->b.text_len;
    ev.text_len = text ? strlen(text) : 0;
    if (text) memcpy(x->text + ev.text_off, text, ev.text_len);
    x->b.text_len += ev.text_len;
    ev.message_off = x->b.text_len;
    ev.message_len = message ? strlen(message) : 0;
    if (message) memcpy(x->text + ev.message_off, message, ev.message_len);
    x->b.text_len += ev.message_len;
    x->ev[x->b.n_events++] = ev;
}

static dsla_serving_event_t token_ev(uint64_t key, int32_t token) {
    return (dsla_serving_event_t){.key = key, .token = token};
}

static dsla_serving_event_t end_ev(uint64_t key, dsla_finish_reason_t finish, int completion) {
    return (dsla_serving_event_t){
        .key = key,
        .token = -1,
        .finished = true,
        .finish = finish,
        .usage = {
            .prompt_tokens = 4, .completion_tokens = completion, .preemptions = 1, .plan_id = 3}};
}

static int count_to(const char *dst, uint32_t type) {
    int n = 0;
    for (int i = 0; i < t.out.n; i++)
        n += strcmp(t.out.sent[i].dst, dst) == 0 && t.out.sent[i].type == type;
    return n;
}

static void test_stream_and_done(void **state) {
    (void)state;
    dsla_serving_core_t *c = core_new(NULL);
    uint64_t a = generate(c, "client-a", 7), b = generate(c, "client-b", 7);
    assert_true(a != b);
    batch_t x;
    batch_init(&x);
    batch_add(&x, token_ev(a, 42), "Once", NULL);
    batch_add(&x, token_ev(b, 43), " upon", NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.out.n, 2);
    assert_string_equal(t.out.sent[0].dst, "client-a");
    assert_int_equal(t.out.sent[0].type, DSLA_MSG_TOKEN);
    assert_int_equal(t.out.sent[0].id, 7);
    dsla_proto_token_t *tok = malloc(sizeof *tok);
    assert_int_equal(dsla_proto_token_decode(t.out.sent[0].body, t.out.sent[0].len, tok), DSLA_OK);
    assert_int_equal(tok->token, 42);
    assert_int_equal(tok->text_len, 4);
    assert_memory_equal(tok->text, "Once", 4);
    free(tok);
    batch_init(&x);
    batch_add(&x, end_ev(a, DSLA_FINISH_LENGTH, 16), NULL, NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.out.sent[2].type, DSLA_MSG_DONE);
    dsla_proto_done_t done;
    assert_int_equal(dsla_proto_done_decode(t.out.sent[2].body, t.out.sent[2].len, &done), DSLA_OK);
    assert_int_equal(done.finish, DSLA_PROTO_FINISH_LENGTH);
    assert_int_equal(done.completion_tokens, 16);
    assert_string_equal(done.replica, "serving7"); /* where it was computed */
    assert_int_equal(done.plan_id, 3);
    assert_int_equal(done.preemptions, 1);
    assert_int_equal(dsla_serving_core_requests(c), 1);
    /* events for a key that has ended are dropped */
    batch_init(&x);
    batch_add(&x, token_ev(a, 1), "late", NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.out.n, 3);
    dsla_serving_core_destroy(&c);
}

static void test_refusals(void **state) {
    (void)state;
    dsla_serving_core_t *c = core_new(NULL);
    /* what the core refuses at once: anonymous clients, stream false, malformed bodies */
    assert_int_equal(dsla_serving_core_on_generate(c, "", 1, "x", 1), DSLA_ERR_INVALID_ARGUMENT);
    dsla_proto_generate_t g = {.prompt_ids = prompt, .n_prompt_ids = 4, .max_tokens = 4};
    dsla_proto_buf_t body;
    assert_int_equal(dsla_proto_generate_encode(&g, &body), DSLA_OK);
    assert_int_equal(dsla_serving_core_on_generate(c, "client-a", 1, body.data, body.len),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "stream"));
    dsla_proto_buf_free(&body);
    assert_int_not_equal(dsla_serving_core_on_generate(c, "client-a", 1, "\xc1", 1), DSLA_OK);
    assert_int_equal(t.n_submitted, 0);
    /* what the engine refuses: its sentence reaches the client unchanged */
    uint64_t k = generate(c, "client-a", 9);
    batch_t x;
    batch_init(&x);
    dsla_serving_event_t ev = end_ev(k, DSLA_FINISH_LENGTH, 0);
    ev.status = DSLA_ERR_INVALID_ARGUMENT;
    const char *why = "max_tokens 9000 exceeds the model's context of 512 minus the prompt's 4 "
                      "tokens";
    batch_add(&x, ev, NULL, why);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.out.n, 1);
    assert_int_equal(t.out.sent[0].type, DSLA_MSG_ERROR);
    dsla_proto_error_t err;
    assert_int_equal(dsla_proto_error_decode(t.out.sent[0].body, t.out.sent[0].len, &err), DSLA_OK);
    assert_int_equal(err.code, DSLA_CODE_INVALID_ARGUMENT);
    assert_string_equal(err.message, why);
    assert_int_equal(dsla_serving_core_requests(c), 0);
    dsla_serving_core_destroy(&c);
}

static void send_cancel(dsla_serving_core_t *c, const char *from, uint64_t request,
                        dsla_status_t want) {
    dsla_proto_cancel_t m = {.request = request};
    dsla_proto_buf_t body;
    assert_int_equal(dsla_proto_cancel_encode(&m, &body), DSLA_OK);
    assert_int_equal(dsla_serving_core_on_cancel(c, from, body.data, body.len), want);
    dsla_proto_buf_free(&body);
}

static void test_cancelled_mid_stream(void **state) {
    (void)state;
    dsla_serving_core_t *c = core_new(NULL);
    uint64_t k = generate(c, "client-a", 3);
    batch_t x;
    batch_init(&x);
    batch_add(&x, token_ev(k, 5), "a", NULL);
    dsla_serving_core_on_events(c, &x.b);
    send_cancel(c, "client-b", 3, DSLA_ERR_INVALID_ARGUMENT); /* not its request */
    send_cancel(c, "client-a", 4, DSLA_ERR_INVALID_ARGUMENT); /* no such request */
    assert_int_equal(t.n_cancelled, 0);
    send_cancel(c, "client-a", 3, DSLA_OK);
    assert_int_equal(t.n_cancelled, 1);
    assert_int_equal(t.cancelled[0], k);
    /* the step that was running still streams its token, then the engine's cancelled end */
    batch_init(&x);
    batch_add(&x, token_ev(k, 6), "b", NULL);
    batch_add(&x, end_ev(k, DSLA_FINISH_CANCELLED, 2), NULL, NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(count_to("client-a", DSLA_MSG_TOKEN), 2);
    assert_int_equal(count_to("client-a", DSLA_MSG_DONE), 1);
    dsla_proto_done_t done;
    const sent_t *s = &t.out.sent[t.out.n - 1];
    assert_int_equal(dsla_proto_done_decode(s->body, s->len, &done), DSLA_OK);
    assert_int_equal(done.finish, DSLA_PROTO_FINISH_CANCELLED);
    assert_int_equal(dsla_serving_core_requests(c), 0);
    dsla_serving_core_destroy(&c);
}

static void test_client_vanishing(void **state) {
    (void)state;
    dsla_serving_core_t *c = core_new(NULL);
    uint64_t a1 = generate(c, "client-a", 1), a2 = generate(c, "client-a", 2);
    uint64_t b = generate(c, "client-b", 1);
    dsla_serving_core_on_peer_gone(c, "client-a");
    assert_int_equal(t.n_cancelled, 2);
    assert_true((t.cancelled[0] == a1 && t.cancelled[1] == a2) ||
                (t.cancelled[0] == a2 && t.cancelled[1] == a1));
    dsla_serving_core_on_peer_gone(c, "client-a"); /* once is enough */
    assert_int_equal(t.n_cancelled, 2);
    batch_t x;
    batch_init(&x);
    batch_add(&x, token_ev(a1, 5), "x", NULL);
    batch_add(&x, token_ev(b, 5), "y", NULL);
    batch_add(&x, end_ev(a1, DSLA_FINISH_CANCELLED, 1), NULL, NULL);
    batch_add(&x, end_ev(a2, DSLA_FINISH_CANCELLED, 0), NULL, NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(count_to("client-a", DSLA_MSG_TOKEN) + count_to("client-a", DSLA_MSG_DONE), 0);
    assert_int_equal(count_to("client-b", DSLA_MSG_TOKEN), 1);
    assert_int_equal(dsla_serving_core_requests(c), 1);
    /* a client whose sends fail: cancelled at the first failure, nothing more tried */
    snprintf(t.out.unreachable, sizeof t.out.unreachable, "client-b");
    batch_init(&x);
    batch_add(&x, token_ev(b, 6), "z", NULL);
    batch_add(&x, token_ev(b, 7), "w", NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.n_cancelled, 3);
    assert_int_equal(t.cancelled[2], b);
    batch_init(&x);
    batch_add(&x, end_ev(b, DSLA_FINISH_CANCELLED, 3), NULL, NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.n_cancelled, 3);
    assert_int_equal(dsla_serving_core_requests(c), 0);
    dsla_serving_core_destroy(&c);
}

static void test_load_report(void **state) {
    (void)state;
    dsla_serving_core_t *c = core_new(NULL);
    t.metrics.queue_length = 5;
    t.metrics.running = 3;
    t.metrics.kv_blocks_used = 40;
    t.metrics.kv_blocks_total = 100;
    t.metrics.plan_id = 4;
    dsla_histogram_observe(&t.metrics.ttft, 0.050);
    uint64_t started = generate(c, "client-a", 1);
    t.now += 1000;
    generate(c, "client-a", 2); /* waiting since 6000 */
    batch_t x;
    batch_init(&x);
    batch_add(&x, token_ev(started, 5), "x", NULL);
    dsla_serving_core_on_events(c, &x.b);
    t.now += 2500;
    dsla_serving_core_on_report(c);
    const sent_t *s = &t.out.sent[t.out.n - 1];
    assert_string_equal(s->dst, "controller");
    assert_int_equal(s->type, DSLA_MSG_LOAD_REPORT);
    dsla_proto_load_report_t *r = malloc(sizeof *r);
    assert_int_equal(dsla_proto_load_report_decode(s->body, s->len, r), DSLA_OK);
    assert_int_equal(r->num_layers, 5);
    assert_int_equal(r->queue_length, 5);
    assert_int_equal(r->running, 3);
    assert_int_equal(r->kv_used, 40);
    assert_int_equal(r->oldest_wait_ms, 2500); /* the waiting one, not the started one */
    assert_int_equal(r->plan_id, 4);
    assert_true(r->ttft_p90_ms > 25 && r->ttft_p90_ms <= 52);
    /* the next report's window holds nothing new */
    dsla_serving_core_on_report(c);
    s = &t.out.sent[t.out.n - 1];
    assert_int_equal(dsla_proto_load_report_decode(s->body, s->len, r), DSLA_OK);
    assert_true(r->ttft_p90_ms == 0);
    free(r);
    dsla_serving_core_destroy(&c);
}

static void test_samples_accepted_prompts_only(void **state) {
    (void)state;
    dsla_serving_sample_config_t sc = {.every = 1, .tokens_per_s = 4096, .flush_ms = 100};
    dsla_serving_sample_t *sample = NULL;
    assert_int_equal(dsla_serving_sample_create(&sample, &sc), DSLA_OK);
    dsla_serving_core_t *c = core_new(sample);
    uint64_t ok = generate(c, "client-a", 1), refused = generate(c, "client-a", 2);
    batch_t x;
    batch_init(&x);
    batch_add(&x, token_ev(ok, 5), "x", NULL);
    dsla_serving_event_t ev = end_ev(refused, DSLA_FINISH_LENGTH, 0);
    ev.status = DSLA_ERR_RESOURCE_EXHAUSTED;
    batch_add(&x, ev, NULL, "queue full");
    dsla_serving_core_on_events(c, &x.b);
    dsla_serving_core_on_sample_flush(c);
    assert_int_equal(count_to("distiller", DSLA_MSG_PROMPT_SAMPLES), 1);
    const sent_t *s = &t.out.sent[t.out.n - 1];
    dsla_proto_prompt_samples_t p;
    assert_int_equal(dsla_proto_prompt_samples_decode(s->body, s->len, &p), DSLA_OK);
    assert_int_equal(p.n_prompts, 1);
    assert_int_equal(p.n_ids, 4);
    assert_memory_equal(p.ids, prompt, sizeof prompt);
    dsla_proto_prompt_samples_free(&p);
    dsla_serving_core_on_sample_flush(c); /* nothing new: nothing sent */
    assert_int_equal(count_to("distiller", DSLA_MSG_PROMPT_SAMPLES), 1);
    dsla_serving_core_destroy(&c);
    dsla_serving_sample_destroy(&sample);
}

/* An event with logprobs becomes a TOKEN that carries them (the first frame of the piece only). */
static void test_token_logprobs(void **state) {
    (void)state;
    dsla_serving_core_t *c = core_new(NULL);
    uint64_t a = generate(c, "client-a", 3);
    batch_t x;
    batch_init(&x);
    dsla_serving_event_t ev = token_ev(a, 42);
    ev.has_logprobs = true;
    ev.logprobs = (dsla_token_logprobs_t){
        .logprob = -1.5f, .n_top = 2, .top_ids = {7, 42}, .top_logprobs = {-0.5f, -1.5f}};
    batch_add(&x, ev, "Once", NULL);
    batch_add(&x, token_ev(a, 43), " upon", NULL);
    dsla_serving_core_on_events(c, &x.b);
    assert_int_equal(t.out.n, 2);
    dsla_proto_token_t *tok = malloc(sizeof *tok);
    assert_int_equal(dsla_proto_token_decode(t.out.sent[0].body, t.out.sent[0].len, tok), DSLA_OK);
    assert_true(tok->has_logprobs);
    assert_int_equal(tok->chosen.id, 42);
    assert_true(tok->chosen.logprob == -1.5f);
    assert_int_equal(tok->n_top, 2);
    assert_int_equal(tok->top[0].id, 7);
    assert_true(tok->top[0].logprob == -0.5f);
    assert_int_equal(tok->top[1].id, 42);
    assert_int_equal(dsla_proto_token_decode(t.out.sent[1].body, t.out.sent[1].len, tok), DSLA_OK);
    assert_false(tok->has_logprobs);
    free(tok);
    dsla_serving_core_destroy(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_token_logprobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_and_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_vanishing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_samples_accepted_prompts_only, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
