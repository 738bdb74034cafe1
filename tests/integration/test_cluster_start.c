/* dsla-serve --cluster FILE --node NAME and dslactl --cluster FILE on loopback, for machines where
 * tests/integration/cluster_netns.sh cannot make namespaces: a bad file, a bad option in an
 * options: map and a command-line option the file already sets are refused with exit code 2 and
 * the line; a two-node cluster (the head with the gateway, the controller and a replica; a second
 * replica as its own node) starts from one file, dslactl finds the controller and its admin key
 * through the file, a conversion reaches the remote replica (which fetches the layer version from
 * the controller), and HTTP with the file's API key answers. */
#include "tests/testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/integration/ctl_harness.h"

static char out[CTL_OUT_MAX];

/* dsla-serve with args; its exit code, its output in out. */
static int serve(const char *const *args) {
    return ctl_run_bin("dsla-serve", args, out, sizeof out);
}

static void write_text(const char *path, const char *text) {
    dsla_test_write_file(path, text, strlen(text));
}

static void expect_refusal(const char *path, const char *node, const char *extra,
                           const char *needle) {
    const char *args[] = {"--cluster", path, "--node", node, extra, extra ? "x" : NULL, NULL};
    const int rc = serve(args);
    if (rc != 2 || !strstr(out, needle))
        fail_msg("dsla-serve --cluster %s --node %s: exit %d, want 2 with '%s'; got:\n%s", path,
                 node, rc, needle, out);
}

static void test_refusals(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char path[512];
    snprintf(path, sizeof path, "%s/c.yaml", dir);
    write_text(path, "version: 1\n"
                     "model: /nonexistent/model\n"
                     "nodes:\n"
                     "  - name: head\n"
                     "    host: 127.0.0.1\n"
                     "    actors:\n"
                     "      gateway: {port: 7070}\n"
                     "      serving: [{name: s0, options: {max-running: 0}}]\n"
                     "  - name: r1\n"
                     "    host: 127.0.0.1\n"
                     "    actors:\n"
                     "      serving: [{name: s1, port: 7080, options: {endpoint: x}}]\n"
                     "  - name: r2\n"
                     "    host: 127.0.0.1\n"
                     "    actors:\n"
                     "      serving: [{name: s2, port: 7081, options: {max-runing: 4}}]\n");
    expect_refusal(path, "head", NULL,
                   "c.yaml:8: nodes[0].actors.serving[0].options.max-running: refused");
    assert_non_null(strstr(out, "--max-running: 0 is outside the allowed range 1..4096"));
    expect_refusal(path, "r1", NULL,
                   "c.yaml:12: nodes[1].actors.serving[0].options.endpoint: the cluster file "
                   "sets --endpoint");
    expect_refusal(path, "r2", NULL,
                   "c.yaml:16: nodes[2].actors.serving[0].options.max-runing: not a dsla-serve "
                   "option");
    expect_refusal(path, "r3", NULL, "no node is called 'r3' (the file's nodes: head, r1, r2)");
    write_text(path, "version: 1\nmodel: m\nnodes: [\n");
    expect_refusal(path, "head", NULL, "c.yaml:4: not YAML");
    const char *alone[] = {"--cluster", path, NULL};
    assert_int_equal(serve(alone), 2);
    assert_non_null(strstr(out, "--cluster FILE and --node NAME go together"));
    const char *ctl[] = {"--cluster", path, "status", NULL};
    write_text(path, "version: 1\nmodel: m\nnodes:\n"
                     "  - {name: gw, host: h, actors: {gateway: {port: 1}}}\n");
    expect_refusal(path, "gw", "--model", "--model: the cluster file");
    assert_int_equal(ctl_run_bin("dslactl", ctl, out, sizeof out), 2);
    assert_non_null(strstr(out, "no node runs a controller"));
    dsla_test_rmtree(dir);
    free(dir);
}

/* A node without HTTP, started from the cluster file (dsla_test_server_start expects an HTTP line
 * unless its arguments say --serving-only or --http off, which here the file says): returns once
 * it printed its endpoint. */
static pid_t start_node(const char *path, const char *node) {
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/dsla-serve", dsla_test_bin_dir());
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl(bin, bin, "--cluster", path, "--node", node, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[512] = "";
    if (!fgets(line, sizeof line, f) || strncmp(line, "listening on ", 13) != 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("node %s printed '%s', not its endpoint", node, line);
    }
    fclose(f);
    return pid;
}

static void stop_node(pid_t pid) {
    int status = 0;
    kill(pid, SIGTERM);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_two_nodes(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir();
    char layers[512], path[512], api_key[512], admin_key[512], cache[512];
    snprintf(layers, sizeof layers, "%s/layers", dir);
    snprintf(path, sizeof path, "%s/cluster.yaml", dir);
    snprintf(api_key, sizeof api_key, "%s/api.key", dir);
    snprintf(admin_key, sizeof admin_key, "%s/admin.key", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    const char *distill[] = {"distill", "--model", model, "--out",   layers,  "--layers",
                             "1",       "--steps", "0",   "--order", "given", NULL};
    if (ctl_run_bin("dsla", distill, out, sizeof out) != 0) fail_msg("dsla distill:\n%s", out);
    write_text(api_key, "cluster-test-api-key-0123456789\n");
    write_text(admin_key, "cluster-test-admin-key-0123456789\n");
    const int gw = ctl_free_port(), http = ctl_free_port(), ctl_port = ctl_free_port(),
              admin = ctl_free_port(), rep = ctl_free_port();
    char *text = malloc(8192);
    snprintf(text, 8192,
             "version: 1\n"
             "model: %s\n"
             "model_name: stories\n"
             "layers: %s\n"
             "keys: {api_key_file: %s, admin_key_file: %s, allow_insecure: true}\n"
             "policy: \"manual layers=0\"\n"
             "nodes:\n"
             "  - name: head\n"
             "    host: 127.0.0.1\n"
             "    actors:\n"
             "      gateway: {http: \"127.0.0.1:%d\", port: %d}\n"
             "      controller: {port: %d, admin_port: %d}\n"
             "      serving: [{name: serving-head, options: {report-ms: 100}}]\n"
             "  - name: r1\n"
             "    host: 127.0.0.1\n"
             "    actors:\n"
             "      serving:\n"
             "        - {name: serving-r1, port: %d,\n"
             "           options: {layer-cache: %s, report-ms: 100, fetch-chunk: 4096}}\n",
             model, layers, api_key, admin_key, http, gw, ctl_port, admin, rep, cache);
    write_text(path, text);
    free(text);
    const pid_t r1 = start_node(path, "r1");
    const char *head_args[] = {"--cluster", path, "--node", "head", NULL};
    dsla_test_server_t head = dsla_test_server_start(head_args);
    assert_int_equal(head.http_port, http);

    /* dslactl finds the controller and the admin key in the file */
    const char *status[] = {"--cluster", path, "status", NULL};
    const char *want[] = {"replica serving-head alive: plan 1 runs 0 DSLA",
                          "replica serving-r1 alive: plan 1 runs 0 DSLA"};
    for (size_t i = 0; i < 2; i++) {
        int waited = 0;
        while (!(ctl_run_bin("dslactl", status, out, sizeof out) == 0 && strstr(out, want[i])) &&
               waited < CTL_WAIT_MS) {
            ctl_sleep_ms(50);
            waited += 50;
        }
        if (waited >= CTL_WAIT_MS) fail_msg("status never showed '%s':\n%s", want[i], out);
    }
    const char *convert[] = {"--cluster", path, "convert", "1", NULL};
    assert_int_equal(ctl_run_bin("dslactl", convert, out, sizeof out), 0);
    int waited = 0;
    while (!(ctl_run_bin("dslactl", status, out, sizeof out) == 0 &&
             strstr(out, "replica serving-r1 alive: plan 2 runs 1 DSLA")) &&
           waited < CTL_WAIT_MS) {
        ctl_sleep_ms(50);
        waited += 50;
    }
    if (waited >= CTL_WAIT_MS) fail_msg("serving-r1 never converted:\n%s", out);
    assert_null(strstr(out, "transfers: 0 chunks")); /* r1 fetched it from the controller */

    dsla_test_http_reply_t no_key =
        dsla_test_http(http, "POST", "/v1/completions", "{\"prompt\": \"Once\"}");
    assert_int_equal(no_key.status, 401);
    dsla_test_http_reply_free(&no_key);
    for (int i = 0; i < 4; i++) { /* both replicas: the gateway spreads them */
        dsla_test_http_reply_t r = dsla_test_http_with(
            http, "POST", "/v1/completions",
            "Authorization: Bearer cluster-test-api-key-0123456789\r\n",
            "{\"prompt\": \"Once upon a time\", \"max_tokens\": 8, \"model\": \"stories\"}");
        if (r.status != 200) fail_msg("request %d: %d %s", i, r.status, r.body ? r.body : "");
        dsla_test_http_reply_free(&r);
    }
    dsla_test_server_stop(&head);
    stop_node(r1);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_two_nodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
