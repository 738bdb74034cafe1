#include "stop_strings.h"

#include <stdlib.h>
#include <string.h>

struct dsla_stop_matcher {
    char **stops;
    size_t *stop_lens;
    int n_stops;
    char *buf; /* held-back text, then (after a feed) the text being emitted */
    size_t len, cap;
    size_t emitted; /* bytes of buf already handed out by the previous call */
    bool stopped;
};

dsla_status_t dsla_stop_matcher_create(dsla_stop_matcher_t **out, const char *const *stops,
                                       int n_stops) {
    *out = NULL;
    for (int i = 0; i < n_stops; i++)
        if (!stops[i] || !stops[i][0])
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "stop string %d is empty", i);
    dsla_stop_matcher_t *m = calloc(1, sizeof *m);
    if (!m) return dsla_error_oom("stop strings");
    m->stops = calloc((size_t)n_stops + 1, sizeof *m->stops);
    m->stop_lens = calloc((size_t)n_stops + 1, sizeof *m->stop_lens);
    if (!m->stops || !m->stop_lens) goto oom;
    for (int i = 0; i < n_stops; i++) {
        m->stops[i] = strdup(stops[i]);
        if (!m->stops[i]) goto oom;
        m->stop_lens[i] = strlen(stops[i]);
        m->n_stops = i + 1;
    }
    *out = m;
    return DSLA_OK;
oom:
    dsla_stop_matcher_destroy(&m);
    return dsla_error_oom("stop strings");
}

void dsla_stop_matcher_destroy(dsla_stop_matcher_t **m) {
    if (!m || !*m) return;
    for (int i = 0; i < (*m)->n_stops; i++)
        free((*m)->stops[i]);
    free((*m)->stops);
    free((*m)->stop_lens);
    free((*m)->buf);
    free(*m);
    *m = NULL;
}

/* Length of the longest suffix of buf[0..len) that is a proper prefix of some stop string. */
static size_t held_suffix(const dsla_stop_matcher_t *m) {
    size_t best = 0;
    for (int i = 0; i < m->n_stops; i++) {
        size_t max = m->stop_lens[i] - 1;
        if (max > m->len) max = m->len;
        for (size_t k = max; k > best; k--)
            if (memcmp(m->buf + m->len - k, m->stops[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

static void drop_emitted(dsla_stop_matcher_t *m) {
    if (m->emitted == 0) return;
    memmove(m->buf, m->buf + m->emitted, m->len - m->emitted);
    m->len -= m->emitted;
    m->emitted = 0;
}

bool dsla_stop_matcher_feed(dsla_stop_matcher_t *m, const char *text, size_t len, const char **emit,
                            size_t *emit_len) {
    *emit = "";
    *emit_len = 0;
    if (m->stopped) return true;
    drop_emitted(m);
    if (m->len + len + 1 > m->cap) {
        size_t cap = (m->len + len + 1) * 2;
        char *grown = realloc(m->buf, cap);
        if (!grown) abort(); /* a few bytes of text: nothing sensible to do without memory */
        m->buf = grown;
        m->cap = cap;
    }
    /* Search only where a match could newly end: it must overlap the new text. */
    size_t old_len = m->len;
    memcpy(m->buf + m->len, text, len);
    m->len += len;
    m->buf[m->len] = '\0';
    size_t first_end = m->len + 1;
    for (int i = 0; i < m->n_stops; i++) {
        size_t sl = m->stop_lens[i];
        size_t start = old_len >= sl ? old_len - sl + 1 : 0;
        for (size_t pos = start; pos + sl <= m->len; pos++)
            if (memcmp(m->buf + pos, m->stops[i], sl) == 0) {
                if (pos < first_end) first_end = pos;
                break;
            }
    }
    if (first_end <= m->len) {
        m->stopped = true;
        *emit = m->buf;
        *emit_len = first_end;
        m->emitted = m->len;
        return true;
    }
    size_t keep = held_suffix(m);
    *emit = m->buf;
    *emit_len = m->len - keep;
    m->emitted = m->len - keep;
    return false;
}

void dsla_stop_matcher_finish(dsla_stop_matcher_t *m, const char **emit, size_t *emit_len) {
    *emit = "";
    *emit_len = 0;
    if (m->stopped) return;
    drop_emitted(m);
    *emit = m->buf ? m->buf : "";
    *emit_len = m->len;
    m->emitted = m->len;
}
