/* runtime/model/chat_template: the templates of real model families (tests/data/chat_templates,
 * sources in templates.json) render byte-identical to the vectors made by
 * tests/vectors/make_chat_template_vectors.py (transformers' apply_chat_template, or jinja2 as
 * transformers configures it); Jinja's semantics case by case; errors and hostile templates. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/openai.h"
#include "runtime/model/chat_template.h"

#define OUT_MAX (1u << 20)

static char *source_path(const char *relative) {
    const char *root = getenv("DSLA_SOURCE");
    char *p = malloc(4096);
    assert_non_null(p);
    snprintf(p, 4096, "%s/%s", root ? root : ".", relative);
    return p;
}

/* Renders src with vars (JSON text); NULL with the message in err (if given) on failure. */
static char *render(const char *src, const char *vars_json, char *err, size_t err_size) {
    dsla_chat_template_t *t = NULL;
    dsla_status_t st = dsla_chat_template_create(&t, src, strlen(src), "test", "<s>", "</s>");
    char *out = NULL;
    size_t len = 0;
    if (st == DSLA_OK) {
        json_t *vars = json_loads(vars_json ? vars_json : "{}", 0, NULL);
        assert_non_null(vars);
        st = dsla_chat_template_render(t, vars, OUT_MAX, &out, &len);
        json_decref(vars);
        if (st == DSLA_OK) assert_int_equal(strlen(out), len);
    }
    if (st != DSLA_OK && err) snprintf(err, err_size, "%s", dsla_last_error());
    if (st != DSLA_OK) print_message("%s\n", dsla_last_error());
    dsla_chat_template_destroy(&t);
    return out;
}

static void expect(const char *src, const char *vars, const char *want) {
    char *got = render(src, vars, NULL, 0);
    if (!got || strcmp(got, want) != 0)
        print_message("template: %s\nwant: [%s]\ngot:  [%s]\n", src, want, got ? got : "(error)");
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

/* A template, its variables (JSON text, NULL: none) and the text it renders (or, for errors, a
 * piece of the message). */
typedef struct {
    const char *src, *vars, *want;
} case_t;

static void run_cases(const case_t *cases, size_t n) {
    for (size_t i = 0; i < n; i++)
        expect(cases[i].src, cases[i].vars, cases[i].want);
}

static void expect_error(const char *src, const char *vars, const char *needle) {
    char err[1024] = "";
    char *got = render(src, vars, err, sizeof err);
    if (got) print_message("template: %s rendered [%s]; expected an error\n", src, got);
    assert_null(got);
    if (!strstr(err, needle)) print_message("error [%s] lacks [%s]\n", err, needle);
    assert_non_null(strstr(err, needle));
}

static void test_vectors(void **state) {
    (void)state;
    char *path = source_path("tests/data/chat_templates/vectors.json");
    json_t *doc = dsla_test_load_json(path);
    free(path);
    path = source_path("tests/data/chat_templates/templates.json");
    json_t *templates = dsla_test_load_json(path);
    free(path);
    json_t *conversations = json_object_get(doc, "conversations");
    json_t *extra = json_object_get(doc, "extra_variables");
    print_message("vectors by %s\n", json_string_value(json_object_get(doc, "renderer")));
    size_t i, checked = 0, families = 0;
    json_t *tinfo;
    json_array_foreach(templates, i, tinfo) {
        char rel[512];
        snprintf(rel, sizeof rel, "tests/data/chat_templates/%s",
                 json_string_value(json_object_get(tinfo, "file")));
        path = source_path(rel);
        json_t *tokens = json_object_get(tinfo, "tokens");
        dsla_chat_template_t *t = NULL;
        size_t len;
        char *src = dsla_test_read_file(path, &len);
        dsla_status_t st = dsla_chat_template_create(
            &t, src, len, path, json_string_value(json_object_get(tokens, "bos_token")),
            json_string_value(json_object_get(tokens, "eos_token")));
        if (st != DSLA_OK) print_message("%s\n", dsla_last_error());
        assert_int_equal(st, DSLA_OK);
        free(src);
        free(path);
        const char *name = json_string_value(json_object_get(tinfo, "name"));
        size_t k, mine = 0;
        json_t *v;
        json_array_foreach(json_object_get(doc, "vectors"), k, v) {
            if (strcmp(json_string_value(json_object_get(v, "template")), name) != 0) continue;
            const char *conv = json_string_value(json_object_get(v, "conversation"));
            json_t *vars = json_deep_copy(extra);
            json_object_set(vars, "messages", json_object_get(conversations, conv));
            json_object_set(vars, "add_generation_prompt",
                            json_object_get(v, "add_generation_prompt"));
            /* transformers passes tools=None when a conversation has none */
            json_object_set(vars, "tools",
                            strcmp(conv, "tool") == 0 ? json_object_get(doc, "tools")
                                                      : json_null());
            char *out = NULL;
            st = dsla_chat_template_render(t, vars, OUT_MAX, &out, &len);
            json_decref(vars);
            json_t *want = json_object_get(v, "text");
            if (want) {
                if (st != DSLA_OK) print_message("%s %s: %s\n", name, conv, dsla_last_error());
                assert_int_equal(st, DSLA_OK);
                if (len != json_string_length(want) ||
                    memcmp(out, json_string_value(want), len) != 0)
                    print_message("%s %s agp=%d\nwant: [%s]\ngot:  [%s]\n", name, conv,
                                  json_is_true(json_object_get(v, "add_generation_prompt")),
                                  json_string_value(want), out);
                assert_int_equal(len, json_string_length(want));
                assert_memory_equal(out, json_string_value(want), len);
            } else if (strncmp(json_string_value(json_object_get(v, "error")), "TypeError: ", 11) ==
                       0) {
                /* Python's own error (iterating None): an error here too, in our words */
                if (st == DSLA_OK)
                    print_message("%s %s rendered; the reference fails\n", name, conv);
                assert_int_equal(st, DSLA_ERR_INVALID_ARGUMENT);
            } else {
                /* the template's own raise_exception, message for message */
                assert_int_equal(st, DSLA_ERR_INVALID_ARGUMENT);
                char msg[1024];
                snprintf(msg, sizeof msg, "chat template: %s",
                         json_string_value(json_object_get(v, "error")));
                assert_string_equal(dsla_last_error(), msg);
            }
            free(out);
            checked++;
            mine++;
        }
        families += mine > 0;
        dsla_chat_template_destroy(&t);
    }
    print_message("%zu vectors of %zu templates byte-identical\n", checked, families);
    assert_true(checked >= 160 && families >= 11);
    json_decref(doc);
    json_decref(templates);
}

/* The snippets of vectors.json: Jinja's semantics feature by feature, as the reference rendered
 * them (their variables include bos_token and eos_token; the template's are none). */
static void test_snippets(void **state) {
    (void)state;
    char *path = source_path("tests/data/chat_templates/vectors.json");
    json_t *doc = dsla_test_load_json(path);
    free(path);
    json_t *vars = json_object_get(doc, "snippet_variables"), *v;
    size_t i, errors = 0;
    json_array_foreach(json_object_get(doc, "snippets"), i, v) {
        const char *src = json_string_value(json_object_get(v, "src"));
        json_t *want = json_object_get(v, "text");
        dsla_chat_template_t *t = NULL;
        dsla_status_t st = dsla_chat_template_create(&t, src, strlen(src), "snippet", NULL, NULL);
        char *out = NULL;
        size_t len = 0;
        if (st == DSLA_OK) st = dsla_chat_template_render(t, vars, OUT_MAX, &out, &len);
        if (want && (st != DSLA_OK || len != json_string_length(want) ||
                     memcmp(out, json_string_value(want), len) != 0))
            print_message("snippet %zu: %s\nwant: [%s]\ngot:  [%s]\n", i, src,
                          json_string_value(want), st == DSLA_OK ? out : dsla_last_error());
        if (!want && st == DSLA_OK)
            print_message("snippet %zu: %s: rendered, not an error\n", i, src);
        assert_int_equal(st == DSLA_OK, want != NULL);
        if (want) assert_memory_equal(out, json_string_value(want), len);
        errors += !want;
        free(out);
        dsla_chat_template_destroy(&t);
    }
    print_message("%zu snippets as the reference renders them (%zu errors)\n", i, errors);
    assert_true(i >= 80);
    json_decref(doc);
}

/* trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before a block tag
 * (not before {{ }}); - and + marks; one trailing newline of the source dropped */
static const case_t whitespace_cases[] = {
    {"{% if true %}\nyes\n{% endif %}\nend", NULL, "yes\nend"},
    {"  {% if true %}\n    x\n  {% endif %}\n", NULL, "    x\n"},
    {"a  {{- ' b ' -}}  c", NULL, "a b c"},
    {"a\n  {%- if true -%}\n  b\n{%- endif %}", NULL, "ab"},
    {"{# comment #}\nx {#- c -#} y", NULL, "xy"},
    {"  {%+ if true %}x{% endif %}", NULL, "  x"},
    {"{% if true +%}\nx{% endif %}", NULL, "\nx"},
    {"{{ 'a' }}\n{{ 'b' }}\n", NULL, "a\nb"},
    {"x  {{ 'y' }}", NULL, "x  y"},
    {"{{ \"}}\" }}{{ '%}' }}", NULL, "}}%}"},
    {"{% raw %}\nx {{ y }}{% endraw %}\nz", NULL, "\nx {{ y }}z"},
    {"q\n  {%- raw -%}  a  {%- endraw -%}  z", NULL, "qaz"},
    {"  {% raw %}a{% if %}{%+ endraw +%}\nb", NULL, "a{% if %}\nb"},
};

static void test_whitespace(void **state) {
    (void)state;
    run_cases(whitespace_cases, sizeof whitespace_cases / sizeof whitespace_cases[0]);
}

static const case_t expression_cases[] = {
    {"{{ \"%s and %s\" % (1, 'a') }} {{ '%d%%' % 5 }} {{ '<%s>' % 'x' }}", NULL, "1 and a 5% <x>"},
    {"{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}", NULL,
     "7 3 -4 2 3.5 1024"},
    {"{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2] }}", NULL,
     "a1NoneTrue ababab [1, 2]"},
    {"{{ x }}|{{ x is defined }}|{{ y is none }}|{{ not x }}", "{\"y\":null}", "|False|True|True"},
    {"{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}", NULL,
     "True True True True"},
    {"{{ 'yes' if 1 < 2 else 'no' }}{{ 'x' if false }}", NULL, "yes"},
    {"{{ a or 'd' }} {{ a and 'x' }} {{ 0 or '' }}", "{\"a\":\"v\"}", "v x "},
    {"{{ m[1:] }} {{ m[-1] }} {{ m[::-1] }} {{ 'h\xc3\xa9llo'[1:3] }} {{ m[9] }}",
     "{\"m\":[1,2,3]}", "[2, 3] 3 [3, 2, 1] \xc3\xa9l "},
    {"{{ d.k }} {{ d['k'] }} {{ d.z }} {{ d }}", "{\"d\":{\"k\":\"v\"}}", "v v  {'k': 'v'}"},
    {"{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 3 == 3.0 }} {{ true == 1 }}", NULL,
     "1.0 0.30000000000000004 1e+20 True True"},
    {"{{ [1, 'a', none, {'k': [true]}] }}", NULL, "[1, 'a', None, {'k': [True]}]"},
    {"{{ \"it's\" }} {{ ['it\\'s'] }}", NULL, "it's [\"it's\"]"},
};

static void test_expressions(void **state) {
    (void)state;
    run_cases(expression_cases, sizeof expression_cases / sizeof expression_cases[0]);
}

/* loops, loop filters, break/continue; a set inside a loop stays there, a namespace carries
 * across; macros, set blocks, generation blocks, range, the tokens */
static const case_t statement_cases[] = {
    /* Jinja's scoping: each pass of a loop starts from the outer values; a macro is a name */
    {"{% set y = 'outer' %}{% for x in [1, 2] %}{{ y }}{% set y = 'inner' %}{{ y }};{% endfor %}"
     "{{ y }}",
     NULL, "outerinner;outerinner;outer"},
    {"{% for x in [1, 2] %}{% if loop.first %}{% set y = 'first' %}{% endif %}{{ y }};{% endfor %}",
     NULL, "first;;"},
    {"{% macro f() %}{{ y }}{% endmacro %}{% set y = 'top' %}{{ f() }}{% for x in [1] %}"
     "{% set y = 'loop' %}{{ f() }}{% endfor %}{{ f is defined }}",
     "{\"f\":2.5}", "toptopTrue"},
    {"{% for x in m %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
     "{{ loop.length }}{{ loop.revindex }};{% endfor %}",
     "{\"m\":[\"a\",\"b\"]}", "10TrueFalse22;21FalseTrue21;"},
    {"{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", "{\"d\":{\"a\":1,\"b\":2}}",
     "a=1,b=2,"},
    {"{% for x in m if x != 2 %}{{ x }}{{ loop.last }}{% endfor %}", "{\"m\":[1,2,3]}",
     "1False3True"},
    {"{% for x in m %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}"
     "{% endif %}{{ x }}{% endfor %}",
     "{\"m\":[1,2,3,4,5]}", "13"},
    {"{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty"},
    {"{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set n = n + x %}"
     "{% set ns.n = ns.n + x %}{% endfor %}{{ n }} {{ ns.n }}",
     NULL, "0 3"},
    {"{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set s %}in{{ a }}{% endset %}{{ s }}", NULL, "12in1"},
    {"{% macro greet(name, p='Hi') %}{{ p }} {{ name }}{% endmacro %}{{ greet('Ann') }}, "
     "{{ greet('Bo', p='Yo') }}",
     NULL, "Hi Ann, Yo Bo"},
    {"{% generation %}x{% endgeneration %}", NULL, "x"},
    {"{% for x in range(3) %}{{ x }}{% endfor %}{{ range(1, 7, 2) }}", NULL, "012[1, 3, 5]"},
    {"{{ bos_token }}{{ eos_token }}", NULL, "<s></s>"},
    {"{{ bos_token }}", "{\"bos_token\":\"B\"}", "B"},
};

static void test_statements(void **state) {
    (void)state;
    run_cases(statement_cases, sizeof statement_cases / sizeof statement_cases[0]);
}

static const case_t filter_cases[] = {
    {"{% for k, v in {'B': 1, 'a': 2, 'c': 0}|dictsort %}{{ k }}{{ v }}{% endfor %} "
     "{% for k, v in {'b': 1, 'a': 2}|dictsort(by='value', reverse=true) %}{{ k }}{% endfor %}",
     NULL, "a2B1c0 ab"},
    {"{{ [3, 1, 2]|sum }}|{{ [1.5, 2]|sum }}|{{ [1, 2]|sum(start=10) }}|{{ []|sum }}|"
     "{{ ['a', 'B', 'A', 'b', 'c']|unique|list }}|{{ [3, 1, 2]|min }}{{ [3, 1, 2]|max }}"
     "{{ ['b', 'A', 'c']|min }}{{ ['b', 'A', 'C']|max }}",
     NULL, "6|3.5|13|0|['a', 'B', 'c']|13AC"},
    {"{{ \"a\\nb\\n\\nc\"|indent }}|{{ \"a\\nb\"|indent(2, true) }}|{{ \"a\\n\\nb\"|indent(1, "
     "blank=true) }}|{{ \"x\\n\"|indent(first=true) }}",
     NULL, "a\n    b\n\n    c|  a\n  b|a\n \n b|    x\n"},
    {"{{ ' a b '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ s|length }}|{{ m|length }}",
     "{\"s\":\"h\xc3\xa9\",\"m\":[1,2]}", "a b|a|2|2"},
    {"{{ 'Ab'|upper }}{{ 'Ab'|lower }} {{ 'hello world'|title }} {{ 'hELLO'|capitalize }}", NULL,
     "ABab Hello World Hello"},
    {"{{ d|tojson }} {{ d|tojson(indent=2) }}",
     "{\"d\":{\"b\":[1,2.5,null,true],\"a\":\"\xc3\xa9\\\"\\n\"}}",
     "{\"b\": [1, 2.5, null, true], \"a\": \"\xc3\xa9\\\"\\n\"} {\n  \"b\": [\n    1,\n    "
     "2.5,\n    null,\n    true\n  ],\n  \"a\": \"\xc3\xa9\\\"\\n\"\n}"},
    {"{{ d|tojson(sort_keys=true) }} {{ [] | tojson(indent=4) }}", "{\"d\":{\"b\":1,\"a\":2}}",
     "{\"a\": 2, \"b\": 1} []"},
    {"{{ x|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }}", NULL, "d d None"},
    {"{{ m|join(', ') }} {{ m|first }} {{ m|last }} {{ m|reverse|list }} {{ 'ab'|list }}",
     "{\"m\":[\"a\",\"b\"]}", "a, b a b ['b', 'a'] ['a', 'b']"},
    {"{{ m|selectattr('role', 'equalto', 'user')|map(attribute='c')|join }} "
     "{{ m|rejectattr('role', 'eq', 'user')|list|length }} {{ m|map(attribute='role')|list }}",
     "{\"m\":[{\"role\":\"user\",\"c\":\"1\"},{\"role\":\"bot\",\"c\":\"2\"},"
     "{\"role\":\"user\",\"c\":\"3\"}]}",
     "13 1 ['user', 'bot', 'user']"},
    {"{{ [1, 2, 3, 4]|select('odd')|list }} {{ ['a', 'b']|map('upper')|join }}", NULL, "[1, 3] AB"},
    {"{{ 3|string ~ ('1'|int + 1) }} {{ '2.5'|float }} {{ -3|abs }} {{ 'a-b'|replace('-', "
     "'+') }}",
     NULL, "32 2.5 3 a+b"},
    {"{{ d|items|list }} {{ '<a>'|e }}", "{\"d\":{\"k\":1}}", "[['k', 1]] &lt;a&gt;"},
    {"{{ ' x '.strip() }}|{{ 'xyx'.strip('x') }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}", NULL,
     "x|y|x | x"},
    {"{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }}", NULL,
     "['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c']"},
    {"{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith('bc') }} {{ 'abc'.startswith(('x', "
     "'a')) }}",
     NULL, "True True True"},
    {"{{ 'aXbX'.replace('X', '') }} {{ 'abcb'.find('b') }} {{ 'abcb'.count('b') }} "
     "{{ '-'.join(['a', 'b']) }} {{ 'Ab'.upper() }}{{ 'Ab'.lower() }}",
     NULL, "ab 1 2 a-b ABab"},
    {"{{ d.get('k') }} {{ d.get('z', 0) }} {{ d.keys()|list }} {{ d.values()|list }}",
     "{\"d\":{\"k\":1}}", "1 0 ['k'] [1]"},
    {"{{ x is string }}{{ x is mapping }}{{ m is iterable }}{{ 3 is odd }}{{ 4 is even }}"
     "{{ 9 is divisibleby 3 }}{{ x is not none }}{{ n is number }}",
     "{\"x\":\"s\",\"m\":[],\"n\":1.5}", "TrueFalseTrueTrueTrueTrueTrueTrue"},
};

static void test_filters_and_methods(void **state) {
    (void)state;
    run_cases(filter_cases, sizeof filter_cases / sizeof filter_cases[0]);
}

static const case_t error_cases[] = {
    {"{{ raise_exception('Roles must alternate') }}", NULL, "chat template: Roles must alternate"},
    {"{{ x.y }}", NULL, "undefined value has no attribute 'y'"},
    {"{{ 1 + 'a' }}", NULL, "unsupported operand types for +: 'int' and 'str'"},
    {"{{ x|frobnicate }}", NULL, "unknown filter 'frobnicate'"},
    {"{{ x is frob }}", NULL, "unknown test 'frob'"},
    {"{{ [].append(1) }}", NULL, "the sandbox is immutable"},
    {"{% set d = {} %}{% set d.x = 1 %}", NULL, "only a namespace()"},
    {"{{ 1 // 0 }}", NULL, "by zero"},
    /* fuzz_chat_template found this: map(attribute=<undefined>) reached ct_filter with no name */
    {"{{ [{'a': 1}]|map(attribute='a'.c)|first }}", NULL, "map takes an attribute name"},
    {"{{ [1]|map(attribute=2)|list }}", NULL, "map takes an attribute name"},
};

static void test_errors(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof error_cases / sizeof error_cases[0]; i++)
        expect_error(error_cases[i].src, error_cases[i].vars, error_cases[i].want);
    /* syntax errors name the line at load */
    dsla_chat_template_t *t = NULL;
    assert_int_equal(dsla_chat_template_create(&t, "a\n{% if x %}", 12, "f.jinja", NULL, NULL),
                     DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "f.jinja: line 2"));
    print_message("%s\n", dsla_last_error());
    assert_non_null(strstr(dsla_last_error(), "endif"));
    const char *bad[] = {"{{ }}",     "{% for %}",   "{{ 'a' ",  "{% frob %}",
                         "{{ a b }}", "{% endif %}", "{{ (1 }}", "{% raw %}x{% endfor %}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(dsla_chat_template_create(&t, bad[i], strlen(bad[i]), "b", NULL, NULL),
                         DSLA_ERR_FORMAT);
        assert_null(t);
    }
    assert_int_equal(dsla_chat_template_create(&t, "\xff", 1, "b", NULL, NULL), DSLA_ERR_FORMAT);
}

static void test_limits(void **state) {
    (void)state;
    /* runaway loops, strings that double, output past the limit, deep nesting: clear errors */
    expect_error("{% for i in range(2000000) %}{% endfor %}", NULL, "DSLA_CHAT_TEMPLATE_STEPS_MAX");
    expect_error("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(10) %}"
                 "{% endfor %}{% endfor %}{% endfor %}",
                 NULL, "DSLA_CHAT_TEMPLATE_STEPS_MAX");
    expect_error(
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        NULL, "output limit");
    expect_error("{{ 'x' * 100000000000 }}", NULL, "output limit");
    expect_error("{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}", NULL,
                 "output limit");
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL,
                 "DSLA_CHAT_TEMPLATE_DEPTH_MAX");
    char deep[2048] = "";
    for (int i = 0; i < 300; i++)
        strcat(deep, "(");
    dsla_chat_template_t *t = NULL;
    char src[4096];
    snprintf(src, sizeof src, "{{ %s1 }}", deep);
    assert_int_equal(dsla_chat_template_create(&t, src, strlen(src), "deep", NULL, NULL),
                     DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "nesting deeper"));
}

static void test_load(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char path[4096];
    dsla_chat_template_t *t = NULL;
    /* no tokenizer_config.json, or none with a template: no template, no error */
    assert_int_equal(dsla_chat_template_load_dir(&t, dir), DSLA_OK);
    assert_null(t);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    const char *plain = "{\"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"</s>\"}";
    dsla_test_write_file(path, plain, strlen(plain));
    assert_int_equal(dsla_chat_template_load_dir(&t, dir), DSLA_OK);
    assert_null(t);
    /* the list form: "default" */
    const char *list =
        "{\"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"</s>\", "
        "\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
        "{\"name\": \"default\", \"template\": \"{{ bos_token }}D{{ eos_token }}\"}]}";
    dsla_test_write_file(path, list, strlen(list));
    assert_int_equal(dsla_chat_template_load_dir(&t, dir), DSLA_OK);
    assert_non_null(t);
    assert_string_equal(dsla_chat_template_bos_token(t), "<s>");
    char *out;
    size_t len;
    json_t *vars = json_object();
    assert_int_equal(dsla_chat_template_render(t, vars, OUT_MAX, &out, &len), DSLA_OK);
    assert_string_equal(out, "<s>D</s>");
    free(out);
    dsla_chat_template_destroy(&t);
    /* a file, with the directory's tokens */
    char file[4096];
    snprintf(file, sizeof file, "%s/t.jinja", dir);
    dsla_test_write_file(file, "F{{ eos_token }}\n", 17);
    assert_int_equal(dsla_chat_template_load_file(&t, file, dir), DSLA_OK);
    assert_int_equal(dsla_chat_template_render(t, vars, OUT_MAX, &out, &len), DSLA_OK);
    assert_string_equal(out, "F</s>");
    free(out);
    dsla_chat_template_destroy(&t);
    assert_int_equal(dsla_chat_template_render(NULL, vars, OUT_MAX, &out, &len),
                     DSLA_ERR_INVALID_ARGUMENT);
    /* a list without "default", and a missing file, are errors naming the file */
    const char *nodefault = "{\"chat_template\": [{\"name\": \"rag\", \"template\": \"R\"}]}";
    dsla_test_write_file(path, nodefault, strlen(nodefault));
    assert_int_equal(dsla_chat_template_load_dir(&t, dir), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "default"));
    snprintf(file, sizeof file, "%s/missing.jinja", dir);
    assert_int_equal(dsla_chat_template_load_file(&t, file, NULL), DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), "missing.jinja"));
    json_decref(vars);
    dsla_test_rmtree(dir);
    free(dir);
}

/* actors/openai renders chat requests through the template: BOS left to the engine, the
 * template's own refusal a 400 on messages, no plain-template stop string. */
static void test_openai_chat(void **state) {
    (void)state;
    static const char src[] =
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'assistant' and loop.first %}"
        "{{ raise_exception('the first message must not be the assistant') }}{% endif %}"
        "<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}";
    dsla_chat_template_t *t = NULL;
    assert_int_equal(dsla_chat_template_create(&t, src, strlen(src), "t", "<s>", "</s>"), DSLA_OK);
    dsla_openai_chat_template_t chat = {t, true};
    dsla_openai_request_t r;
    dsla_openai_error_t e;
    const char *body = "{\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                       "{\"type\":\"text\",\"text\":\"b\"}]}]}";
    assert_true(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1, &chat,
                                               &r, &e));
    static const char want[] = "<|system|>Be brief.</s><|user|>a\nb</s><|assistant|>";
    assert_int_equal(r.generate.prompt_len, strlen(want));
    assert_memory_equal(r.generate.prompt, want, strlen(want));
    assert_int_equal(r.generate.n_stop, 0);
    dsla_openai_request_free(&r);
    /* the tokenizer does not add BOS: the rendering keeps it; add_generation_prompt false */
    chat.engine_adds_bos = false;
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
           "\"add_generation_prompt\":false}";
    assert_true(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1, &chat,
                                               &r, &e));
    assert_int_equal(r.generate.prompt_len, strlen("<s><|user|>hi</s>"));
    assert_memory_equal(r.generate.prompt, "<s><|user|>hi</s>", r.generate.prompt_len);
    dsla_openai_request_free(&r);
    body = "{\"messages\":[{\"role\":\"assistant\",\"content\":\"hi\"}]}";
    assert_false(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1,
                                                &chat, &r, &e));
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "messages");
    assert_string_equal(e.message, "chat template: the first message must not be the assistant");
    /* chat_template_kwargs: more variables (vLLM's extension), messages not among them */
    static const char src2[] =
        "{{ messages|length }}{% if enable_thinking is false %}no{% endif %}";
    dsla_chat_template_t *t2 = NULL;
    assert_int_equal(dsla_chat_template_create(&t2, src2, strlen(src2), "t2", NULL, NULL), DSLA_OK);
    dsla_openai_chat_template_t chat2 = {t2, true};
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
           "\"chat_template_kwargs\":{\"enable_thinking\":false}}";
    assert_true(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1,
                                               &chat2, &r, &e));
    assert_int_equal(r.generate.prompt_len, 3);
    assert_memory_equal(r.generate.prompt, "1no", 3);
    dsla_openai_request_free(&r);
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
           "\"chat_template_kwargs\":{\"messages\":[]}}";
    assert_false(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1,
                                                &chat2, &r, &e));
    assert_string_equal(e.param, "chat_template_kwargs");
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
           "\"chat_template_kwargs\":{\"x\":1}}";
    assert_false(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1, NULL,
                                                &r, &e));
    assert_string_equal(e.param, "chat_template_kwargs");
    dsla_chat_template_destroy(&t2);
    /* the plain template has no way to leave the generation prompt out */
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
           "\"add_generation_prompt\":false}";
    assert_false(dsla_openai_request_parse_chat(DSLA_OPENAI_CHAT, body, strlen(body), NULL, 1, NULL,
                                                &r, &e));
    assert_string_equal(e.param, "add_generation_prompt");
    dsla_chat_template_destroy(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),    cmocka_unit_test(test_snippets),
        cmocka_unit_test(test_whitespace), cmocka_unit_test(test_expressions),
        cmocka_unit_test(test_statements), cmocka_unit_test(test_filters_and_methods),
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_limits),
        cmocka_unit_test(test_load),       cmocka_unit_test(test_openai_chat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
