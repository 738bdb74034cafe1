/* The HTTP front end of the gateway (DESIGN.md section 8, docs/http.md): OpenAI-compatible
 * /v1/completions and /v1/chat/completions (server-sent events when "stream" is true),
 * /v1/models, /health and /metrics (Prometheus text), served by libmicrohttpd.
 *
 * Contract: libmicrohttpd runs one thread per connection; each generation request is a client of
 * the gateway's mailbox (proto/dsla_client.h) over loopback, so the front end shares no state with
 * any actor and blocks only its own connection's thread, waiting on its own socket. Health and
 * metrics ask the gateway for a REPORT the same way. Beyond max_in_flight generation requests at
 * once it answers 429 at once. It knows no engine and no tokenizer: prompts go out as text, text
 * comes back. */
#ifndef DSLA_ACTORS_HTTP_H
#define DSLA_ACTORS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "actors/http_auth.h"
#include "runtime/core/status.h"
#include "runtime/model/tokenizer.h"

/* Generation requests one front end carries at once, waiting in a replica's queue or running (each
 * holds a connection thread), when the config gives none: the gateway's default bound, so that
 * requests queue in the engine instead of being refused here. Separate from the engine's running
 * set: dsla-serve sets it to the gateway's bound, or --http-max-in-flight. */
#define DSLA_HTTP_IN_FLIGHT_MAX (4096 + 2 * 64) /* DSLA_GATEWAY_OUTSTANDING_MAX */
/* A request body larger than this is refused (413): a prompt is at most 1 MiB
 * (DSLA_PROTO_PROMPT_MAX), and JSON escaping can double it. */
#define DSLA_HTTP_BODY_MAX (2u << 20)

/* The longest one request may take to arrive, headers and body, before its connection is closed
 * (slowloris: a client trickling bytes resets any idle timeout and holds a connection thread
 * forever). 2 MiB at 100 kB/s, and any sane client's headers, take far less. */
#define DSLA_HTTP_READ_DEADLINE_MS 30000

typedef struct dsla_http dsla_http_t;

typedef struct {
    const char *address; /* "127.0.0.1:8000", "[::1]:8000", "http://..." accepted; port 0 picks */
    const char *gateway; /* the gateway's mailbox this front end connects to */
    const char *model;   /* the served model's id */
    uint32_t max_in_flight; /* 0: DSLA_HTTP_IN_FLIGHT_MAX */
    uint32_t heartbeat_ms;  /* 0: DSLA_ACTOR_HEARTBEAT_MS, for its clients of the gateway */
    /* borrowed, for /tokenize and /detokenize (NULL: they answer 501); must outlive the front end
     */
    const dsla_tokenizer_t *tokenizer;
    /* API keys every route but /health requires (`Authorization: Bearer KEY`; 401 otherwise);
     * borrowed, must outlive the front end. NULL: none required, which is refused for an address
     * beyond loopback unless allow_insecure. */
    const dsla_http_auth_t *auth;
    bool allow_insecure;
    uint32_t read_deadline_ms; /* 0: DSLA_HTTP_READ_DEADLINE_MS; tests use less */
    /* Origins browsers may call from (http_cors.h; "*": any); none: CORS off. Borrowed. */
    const char *const *cors_origins;
    size_t n_cors_origins;
} dsla_http_config_t;

dsla_status_t dsla_http_create(dsla_http_t **out, const dsla_http_config_t *config);
/* Wakes every request waiting on the gateway (they end UNAVAILABLE), closes every connection,
 * joins the threads. Harmless on NULL. */
void dsla_http_destroy(dsla_http_t **h);
/* The port as bound. */
int dsla_http_port(const dsla_http_t *h);

#endif
