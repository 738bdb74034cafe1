/* The cluster file (actors/cluster_file.h): a full file read back field by field, the example
 * files of deploy/cluster/, and a table of bad files, each refused with the line and the field it
 * names. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/cluster_file.h"

static const char good[] = "version: 1\n"
                           "model: /models/llama\n"
                           "model_name: llama\n"
                           "layers: /var/lib/dsla/layers\n"
                           "state: /var/lib/dsla/state\n"
                           "keys:\n"
                           "  api_key_file: /etc/dsla/api.key\n"
                           "  admin_key_file: /etc/dsla/admin.key\n"
                           "policy: \"threshold max_ratio=0.5\"\n"
                           "nodes:\n"
                           "  - name: head\n"
                           "    host: 10.0.0.1\n"
                           "    actors:\n"
                           "      gateway: {http: \"0.0.0.0:8000\", port: 7070}\n"
                           "      controller: {port: 7071, admin_port: 7072}\n"
                           "      serving: [{name: head0}]\n"
                           "      distiller:\n"
                           "        data: [/data/a.txt, /data/b.txt]\n"
                           "        options: {distill-steps: 200, no-sample-prompts: true}\n"
                           "  - name: gpu-a\n"
                           "    host: 10.0.0.2\n"
                           "    gpus: [0, 1]\n"
                           "    actors:\n"
                           "      serving:\n"
                           "        - name: serving-a1\n"
                           "          port: 7080\n"
                           "          device: cuda\n"
                           "          gpu: 1\n"
                           "          options: {max-running: 64, replica: [x, y]}\n";

static dsla_cluster_t *parse_ok(const char *text) {
    dsla_cluster_t *c = NULL;
    if (dsla_cluster_parse(&c, text, strlen(text), "c.yaml") != DSLA_OK)
        fail_msg("refused: %s", dsla_last_error());
    return c;
}

static void test_good_file(void **state) {
    (void)state;
    dsla_cluster_t *c = parse_ok(good);
    assert_int_equal(c->version, 1);
    assert_string_equal(c->model, "/models/llama");
    assert_string_equal(c->model_name, "llama");
    assert_string_equal(c->layers, "/var/lib/dsla/layers");
    assert_string_equal(c->state, "/var/lib/dsla/state");
    assert_string_equal(c->api_key_file, "/etc/dsla/api.key");
    assert_string_equal(c->admin_key_file, "/etc/dsla/admin.key");
    assert_string_equal(c->policy, "threshold max_ratio=0.5");
    assert_int_equal(c->n_nodes, 2);
    assert_int_equal(c->gateway_node, 0);
    assert_int_equal(c->controller_node, 0);
    const dsla_cluster_node_t *head = dsla_cluster_node(c, "head");
    assert_non_null(head);
    assert_string_equal(head->host, "10.0.0.1");
    assert_int_equal(head->line, 11);
    assert_true(head->gateway.present);
    assert_string_equal(head->gateway.http, "0.0.0.0:8000");
    assert_int_equal(head->gateway.port, 7070);
    assert_int_equal(head->controller.port, 7071);
    assert_int_equal(head->controller.admin_port, 7072);
    assert_true(head->distiller.present);
    assert_string_equal(head->distiller.device, "cpu");
    assert_int_equal(head->distiller.gpu, -1);
    assert_int_equal(head->distiller.n_data, 2);
    assert_string_equal(head->distiller.data[1], "/data/b.txt");
    assert_int_equal(head->distiller.options.count, 2);
    assert_string_equal(head->distiller.options.items[0].name, "distill-steps");
    assert_string_equal(head->distiller.options.items[0].values[0], "200");
    assert_int_equal(head->distiller.options.items[0].line, 19);
    assert_string_equal(head->distiller.options.items[1].values[0], "true");
    const dsla_cluster_node_t *a = dsla_cluster_node(c, "gpu-a");
    assert_non_null(a);
    assert_int_equal(a->n_gpus, 2);
    assert_int_equal(a->n_serving, 1);
    assert_string_equal(a->serving[0].name, "serving-a1");
    assert_int_equal(a->serving[0].port, 7080);
    assert_string_equal(a->serving[0].device, "cuda");
    assert_int_equal(a->serving[0].gpu, 1);
    assert_int_equal(a->serving[0].options.count, 2);
    assert_true(a->serving[0].options.items[1].is_list);
    assert_int_equal(a->serving[0].options.items[1].n_values, 2);
    assert_string_equal(a->serving[0].options.items[1].values[1], "y");
    char admin[128];
    assert_true(dsla_cluster_admin_endpoint(c, admin, sizeof admin));
    assert_string_equal(admin, "tcp://10.0.0.1:7072");
    assert_null(dsla_cluster_node(c, "nope"));
    assert_non_null(strstr(dsla_last_error(), "head, gpu-a"));
    dsla_cluster_destroy(&c);
    assert_null(c);
    dsla_cluster_destroy(&c);
}

/* The smallest cluster: one gateway in front of one remote replica; defaults filled in. */
static void test_minimal_file(void **state) {
    (void)state;
    dsla_cluster_t *c = parse_ok("version: 1\nmodel: m\nnodes:\n"
                                 "  - {name: gw, host: gw.local, actors: {gateway: {port: 1}}}\n"
                                 "  - name: r\n    host: 10.1.1.1\n"
                                 "    actors: {serving: [{name: r0, port: 2, device: cuda}]}\n");
    assert_int_equal(c->controller_node, -1);
    assert_null(c->layers);
    char admin[64];
    assert_false(dsla_cluster_admin_endpoint(c, admin, sizeof admin));
    assert_int_equal(c->nodes[1].serving[0].gpu, 0); /* cuda without gpu: the first */
    assert_null(c->nodes[0].gateway.http);
    dsla_cluster_destroy(&c);
}

/* Every example under deploy/cluster/ reads. */
static void test_examples(void **state) {
    (void)state;
    const char *src = getenv("DSLA_SOURCE");
    if (!src) skip();
    const char *names[] = {"two-node.yaml", "three-node.yaml"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/deploy/cluster/%s", src, names[i]);
        dsla_cluster_t *c = NULL;
        if (dsla_cluster_load(&c, path) != DSLA_OK) fail_msg("%s", dsla_last_error());
        dsla_cluster_destroy(&c);
    }
}

/* A file with one line replaced, and the message it must get: "c.yaml:LINE: FIELD: ...". */
static void test_bad_files(void **state) {
    (void)state;
    const char *base = "version: 1\n"                               /* 1 */
                       "model: /m\n"                                /* 2 */
                       "layers: /l\n"                               /* 3 */
                       "nodes:\n"                                   /* 4 */
                       "  - name: head\n"                           /* 5 */
                       "    host: 10.0.0.1\n"                       /* 6 */
                       "    actors:\n"                              /* 7 */
                       "      gateway: {port: 7070}\n"              /* 8 */
                       "      controller: {port: 7071}\n"           /* 9 */
                       "  - name: r1\n"                             /* 10 */
                       "    host: 10.0.0.2\n"                       /* 11 */
                       "    gpus: [0, 1]\n"                         /* 12 */
                       "    actors:\n"                              /* 13 */
                       "      serving: [{name: s1, port: 7080}]\n"; /* 14 */
    const struct {
        int line;            /* the line replaced (1-based) */
        const char *text;    /* its new text */
        const char *message; /* a part of the error */
    } cases[] = {
        {1, "version: 2", "c.yaml:1: version: 2: this dsla-serve reads version 1"},
        {1, "version: one", "c.yaml:1: version: 'one' is not an integer"},
        {1, "versio: 1", "c.yaml:1: the file: unknown key 'versio'"},
        {2, "model: [a]", "c.yaml:2: model: must be a string, not a list"},
        {2, "model: ''", "c.yaml:2: model: is empty"},
        {3, "model: /again", "c.yaml:3: the file: 'model' is given twice (first on line 2)"},
        {3, "keys: {api_key: x}", "c.yaml:3: keys: unknown key 'api_key'"},
        {5, "  - name: 'he ad'", "c.yaml:5: nodes[0].name: 'he ad': letters, digits"},
        {6, "    host: tcp://x", "c.yaml:6: nodes[0].host: 'tcp://x' is not a host name"},
        {6, "    hots: x", "c.yaml:6: nodes[0]: unknown key 'hots'"},
        {8, "      gateway: {port: 70000}",
         "c.yaml:8: nodes[0].actors.gateway.port: 70000 is outside 1..65535"},
        {8, "      gateway: {port: 7070, http: off}",
         "nodes[0].actors.gateway.http: leave http out"},
        {8, "      gateway: {port: 7071}",
         "c.yaml:9: nodes[0].actors.controller.port: port 7071 is also gateway.port"},
        {8, "      gateway: {prt: 7070}", "c.yaml:8: nodes[0].actors.gateway: unknown key 'prt'"},
        {8, "      gateway: {http: x}", "c.yaml:8: nodes[0].actors.gateway: 'port' is required"},
        {8, "      gateway: {port: 7070, options: {--max-running: 2}}",
         "an option's name without the leading"},
        {8, "      gateway: {port: 7070, options: [a]}",
         "options: must be a mapping of dsla-serve options"},
        {8, "      gateway: {port: 7070, options: {a: {b: c}}}",
         "options.a: must be a string or a list of strings, not a mapping"},
        {8, "      scheduler: {}",
         "c.yaml:8: nodes[0].actors: unknown key 'scheduler' (known: gateway, controller, serving, "
         "distiller)"},
        {3, "state: /s", "c.yaml:1: layers: required with a controller"},
        {8, "      serving: [{name: s0}]", "c.yaml:1: nodes: no node runs the gateway"},
        {9, "      controller: {port: 7071}\n      distiller: {data: x}",
         "c.yaml:10: nodes[0].actors.distiller: the distiller runs beside a serving actor"},
        {9, "      distiller: {data: x}",
         "nodes[0].actors.distiller: the distiller runs on the controller's node"},
        {9, "      controller: {port: 7071, admin_port: 0}", "admin_port: 0 is outside 1..65535"},
        {12, "    gpus: [0, 0]", "c.yaml:12: nodes[1].gpus[1]: GPU 0 is listed twice"},
        {14, "      serving: [{name: s1, port: 1, device: cuda, gpu: 2}]",
         "c.yaml:14: nodes[1].actors.serving[0].gpu: GPU 2 is not among the node's gpus"},
        {14, "      {}", "c.yaml:14: nodes[1].actors: names no actor"},
        {14, "      serving: [{name: s1}]",
         "c.yaml:14: nodes[1].actors.serving[0]: 'port' is required"},
        {14, "      serving: [{name: s1, port: 1, gpu: 0}]", "serving[0].gpu: is for device: cuda"},
        {14, "      serving: [{name: s1, port: 1, device: tpu}]",
         "serving[0].device: 'tpu': cpu or cuda"},
        {14, "      serving: [{name: distiller, port: 1}]", "'distiller' is the distiller's name"},
        {14, "      serving: [{name: s1, port: 1}, {name: s2, port: 2}]", "one per node"},
        {14, "      serving: []", "serving: is an empty list"},
        {14, "      serving: {name: s1}", "serving: must be a list, not a mapping"},
        {14, "      controller: {port: 1}", "a second controller"},
        {14, "      gateway: {port: 1}", "a second gateway"},
        {10, "  - name: head", "c.yaml:10: nodes[1].name: 'head' is also node 0's (line 5)"},
        {14, "      serving: [{name: s1, port: 7080]", "c.yaml:14: not YAML"},
        {14, "      serving: [{name: s1, port: 7080}]\n---\nversion: 1", "a second YAML document"},
        {14, "      serving: [{name: s1, port: 7080, options: {x: \"a\x01\"}}]",
         "control character"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[4096];
        size_t used = 0;
        int line = 1;
        for (const char *p = base; *p;) {
            const char *end = strchr(p, '\n');
            const size_t len = (size_t)(end - p);
            used += (size_t)snprintf(text + used, sizeof text - used, "%.*s\n",
                                     (int)(line == cases[i].line ? strlen(cases[i].text) : len),
                                     line == cases[i].line ? cases[i].text : p);
            p = end + 1;
            line++;
        }
        dsla_cluster_t *c = NULL;
        if (dsla_cluster_parse(&c, text, used, "c.yaml") == DSLA_OK)
            fail_msg("case %zu (line %d: %s) was accepted", i, cases[i].line, cases[i].text);
        if (!strstr(dsla_last_error(), cases[i].message))
            fail_msg("case %zu (line %d: %s): got \"%s\", want \"%s\"", i, cases[i].line,
                     cases[i].text, dsla_last_error(), cases[i].message);
        assert_null(c);
    }
}

static void test_not_a_file(void **state) {
    (void)state;
    dsla_cluster_t *c = NULL;
    assert_int_not_equal(dsla_cluster_load(&c, "/nonexistent/cluster.yaml"), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "/nonexistent/cluster.yaml: cannot open"));
    assert_int_not_equal(dsla_cluster_load(&c, "/tmp"), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "not a regular file"));
    assert_int_not_equal(dsla_cluster_parse(&c, "", 0, "e.yaml"), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "e.yaml:1: the file is empty"));
    assert_int_not_equal(dsla_cluster_parse(&c, "- a\n", 4, "e.yaml"), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "e.yaml:1: the file: must be a mapping"));
    /* an alias to its own anchor: a cycle the walk must not follow forever */
    const char *cyc = "version: 1\nmodel: m\nnodes: &n [*n]\n";
    assert_int_not_equal(dsla_cluster_parse(&c, cyc, strlen(cyc), "e.yaml"), DSLA_OK);
    assert_null(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),  cmocka_unit_test(test_minimal_file),
        cmocka_unit_test(test_examples),   cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_not_a_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
