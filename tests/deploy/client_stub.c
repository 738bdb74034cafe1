/* A program built only from the bundle (deploy/bundle.sh): its headers, its libdsla_client.a and
 * its ZeroMQ and msgpack, through its pkg-config file. tests/deploy/chroot.sh compiles it outside
 * the chroot and runs it inside, against the bundled dsla-serve, to show that the client stub a
 * user gets in the tarball links and talks. Prints the completion; exit 0 when it ends OK with
 * tokens. usage: client_stub ENDPOINT PROMPT */
#include <stdio.h>
#include <string.h>

#include "proto/dsla_client.h"

static int print_piece(void *user, int32_t token, const char *text, size_t len) {
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: client_stub ENDPOINT PROMPT\n");
        return 2;
    }
    dsla_client_t *client = NULL;
    if (dsla_client_connect(&client, argv[1], NULL) != DSLA_OK) {
        fprintf(stderr, "client_stub: cannot connect to %s\n", argv[1]);
        return 1;
    }
    dsla_proto_generate_t request = {.prompt = argv[2],
                                     .prompt_len = strlen(argv[2]),
                                     .max_tokens = 16,
                                     .temperature = 0.0f,
                                     .top_p = 1.0f,
                                     .repetition_penalty = 1.0f,
                                     .stream = true};
    dsla_client_result_t result;
    dsla_proto_code_t code =
        dsla_client_generate(client, &request, print_piece, NULL, 60000, &result);
    dsla_client_close(&client);
    printf("\n");
    if (code != DSLA_CODE_OK || result.completion_tokens == 0) {
        fprintf(stderr, "client_stub: code %d, %u tokens: %s\n", (int)code,
                result.completion_tokens, result.message);
        return 1;
    }
    fprintf(stderr, "client_stub: %u prompt tokens, %u completion tokens\n", result.prompt_tokens,
            result.completion_tokens);
    return 0;
}
