/* Chat templates through a real dsla-serve: --chat-template FILE and a model directory's own
 * tokenizer_config.json chat_template are what /v1/chat/completions renders (its usage counts the
 * rendering's tokens, BOS once), a template's raise_exception is a 400 naming its message, and a
 * template with a syntax error stops start-up naming the file and line. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/model/chat_template.h"
#include "runtime/model/tokenizer.h"
#include "tests/serverutil.h"

static const char tmpl_src[] =
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'system' and not loop.first %}"
    "{{ raise_exception('A system message must come first.') }}{% endif %}"
    "[{{ m.role|upper }}] {{ m.content|trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]{% endif %}";

static const char chat[] = "{\"messages\":[{\"role\":\"system\",\"content\":\" Tell stories. \"},"
                           "{\"role\":\"user\",\"content\":\"A story about a cat\"}],"
                           "\"max_tokens\":3,\"temperature\":0}";

static dsla_test_server_t start(const char *model, const char *template_file) {
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "127.0.0.1:0",
                          template_file ? "--chat-template" : NULL,
                          template_file,
                          NULL};
    dsla_test_server_t s = dsla_test_server_start(args);
    assert_true(s.http_port > 0);
    dsla_test_http_wait_healthy(s.http_port);
    return s;
}

/* usage.prompt_tokens of a chat request (200 expected). */
static long long prompt_tokens(int port, const char *body) {
    dsla_test_http_reply_t r = dsla_test_http(port, "POST", "/v1/chat/completions", body);
    if (r.status != 200) print_message("%d %s\n", r.status, r.body);
    assert_int_equal(r.status, 200);
    json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
    assert_non_null(j);
    long long n = json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    json_decref(j);
    dsla_test_http_reply_free(&r);
    return n;
}

/* The tokens transformers would give: the rendering, tokenized without special tokens, after the
 * BOS the engine prepends (the template's own leading bos_token is that one). */
static long long expected_tokens(const char *model, const char *bos, const char *eos) {
    dsla_chat_template_t *t = NULL;
    assert_int_equal(dsla_chat_template_create(&t, tmpl_src, strlen(tmpl_src), "t", bos, eos),
                     DSLA_OK);
    json_t *body = json_loads(chat, 0, NULL), *vars = json_object();
    json_object_set(vars, "messages", json_object_get(body, "messages"));
    json_object_set_new(vars, "add_generation_prompt", json_true());
    char *text;
    size_t len;
    assert_int_equal(dsla_chat_template_render(t, vars, 1 << 20, &text, &len), DSLA_OK);
    assert_true(strncmp(text, "<s>[SYSTEM] Tell stories.\n[USER] A story", 40) == 0);
    dsla_tokenizer_t *tok = NULL;
    assert_int_equal(dsla_tokenizer_load_dir(&tok, model), DSLA_OK);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(dsla_tokenizer_encode(tok, text + strlen(bos), len - strlen(bos),
                                           dsla_tokenizer_add_bos_default(tok), &ids, &n),
                     DSLA_OK);
    assert_int_equal(ids[0], dsla_tokenizer_bos_id(tok));
    free(ids);
    free(text);
    dsla_tokenizer_destroy(&tok);
    json_decref(vars);
    json_decref(body);
    dsla_chat_template_destroy(&t);
    return (long long)n;
}

static void link_into(const char *model, const char *dir, const char *name) {
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/%s", model, name);
    snprintf(to, sizeof to, "%s/%s", dir, name);
    assert_int_equal(symlink(from, to), 0);
}

static void test_template_file_and_model_dir(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir();
    char file[4096];
    snprintf(file, sizeof file, "%s/chat.jinja", dir);
    dsla_test_write_file(file, tmpl_src, strlen(tmpl_src));
    const long long want = expected_tokens(model, "<s>", "</s>");

    /* the plain template's count differs, so the count says which one rendered */
    dsla_test_server_t plain = start(model, NULL);
    const long long plain_tokens = prompt_tokens(plain.http_port, chat);
    dsla_test_server_stop(&plain);
    assert_true(plain_tokens != want);

    dsla_test_server_t srv = start(model, file);
    assert_int_equal(prompt_tokens(srv.http_port, chat), want);
    /* the template's own refusal, its message carried to the client */
    const char *bad = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
                      "{\"role\":\"system\",\"content\":\"late\"}],\"max_tokens\":1}";
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", "/v1/chat/completions", bad);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "chat template: A system message must come first."));
    assert_non_null(strstr(r.body, "\"param\":\"messages\""));
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);

    /* a model directory whose tokenizer_config.json carries the template (the list form) */
    char mdir[2048], cfg[4096];
    snprintf(mdir, sizeof mdir, "%s/model", dir);
    assert_int_equal(mkdir(mdir, 0755), 0);
    link_into(model, mdir, "config.json");
    link_into(model, mdir, "model.safetensors");
    link_into(model, mdir, "tokenizer.json");
    json_t *c =
        json_pack("{s:s, s:s, s:b, s:[{s:s, s:s}, {s:s, s:s}]}", "bos_token", "<s>", "eos_token",
                  "</s>", "add_bos_token", 1, "chat_template", "name", "tool_use", "template",
                  "{{ raise_exception('wrong one') }}", "name", "default", "template", tmpl_src);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", mdir);
    assert_int_equal(json_dump_file(c, cfg, 0), 0);
    json_decref(c);
    srv = start(mdir, NULL);
    assert_int_equal(prompt_tokens(srv.http_port, chat), want);
    dsla_test_server_stop(&srv);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

static void test_bad_template_stops_start(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir();
    char file[4096], cmd[16384];
    snprintf(file, sizeof file, "%s/bad.jinja", dir);
    dsla_test_write_file(file, "ok\n{% for m in messages %}\n", 27);
    snprintf(cmd, sizeof cmd,
             "'%s/dsla-serve' --model '%s' --endpoint 'tcp://127.0.0.1:*' --http 127.0.0.1:0 "
             "--chat-template '%s' 2>&1",
             dsla_test_bin_dir(), model, file);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int rc = pclose(p);
    print_message("%s", out);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) != 0); /* 1; a sanitizer build may say more */
    assert_non_null(strstr(out, "bad.jinja: line 2"));
    assert_non_null(strstr(out, "endfor"));
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template_file_and_model_dir),
        cmocka_unit_test(test_bad_template_stops_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
