/* The chat-template parser (chat_template.h): source -> pieces of text and tags with Jinja's
 * whitespace rules as transformers configures them, then tags -> a syntax tree by recursive
 * descent with Jinja's operator precedence. */
#include "runtime/model/chat_template_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pieces: text and tags ------------------------------------------------------------------ */

typedef enum { P_TEXT, P_VAR, P_BLOCK } piece_kind_t;

typedef struct {
    piece_kind_t kind;
    const char *s; /* text, or the tag's inside without its delimiters and -/+ marks */
    size_t len;
    int line;
} piece_t;

typedef struct {
    const char *src;
    size_t len;
    piece_t *pieces;
    int n_pieces, cap_pieces, at;
    /* the tag's tokens */
    const char *p, *end;
    int line;
    int depth;
    char *err;
    size_t err_size;
    bool failed;
} parser_t;

static void fail(parser_t *ps, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(parser_t *ps, int line, const char *fmt, ...) {
    if (ps->failed) return;
    ps->failed = true;
    int n = snprintf(ps->err, ps->err_size, "line %d: ", line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < ps->err_size)
        vsnprintf(ps->err + n, ps->err_size - (size_t)n, fmt, ap);
    va_end(ap);
}

static bool add_piece(parser_t *ps, piece_kind_t kind, const char *s, size_t len, int line) {
    if (ps->n_pieces == ps->cap_pieces) {
        int cap = ps->cap_pieces ? 2 * ps->cap_pieces : 64;
        piece_t *p = realloc(ps->pieces, (size_t)cap * sizeof *p);
        if (!p) {
            fail(ps, line, "out of memory");
            return false;
        }
        ps->pieces = p;
        ps->cap_pieces = cap;
    }
    ps->pieces[ps->n_pieces++] = (piece_t){kind, s, len, line};
    return true;
}

static int count_lines(const char *s, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == '\n';
    return k;
}

/* Whether [s, e) is word, surrounded by whitespace only. */
static bool is_word(const char *s, const char *e, const char *word) {
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    return (size_t)(e - s) == strlen(word) && memcmp(s, word, (size_t)(e - s)) == 0;
}

/* {% raw %}...{% endraw %} from tag (the raw tag) to body (just after it): the body is text as it
 * stands, bar - marks (raw's trailing one strips its start, endraw's leading one its end); *close
 * and *rmark are endraw's closing "%}" and its trailing mark, *line runs on. */
static bool raw_block(parser_t *ps, int *line, const char *tag, const char *body, const char *end,
                      char raw_rmark, const char **close, char *rmark) {
    for (const char *p = body; p + 1 < end; p++) {
        if (p[0] != '{' || p[1] != '%') continue;
        const char *q = p + 2, *inner = q;
        bool strip = q < end && *q == '-';
        if (q < end && (*q == '-' || *q == '+')) inner = ++q;
        while (q + 1 < end && !(q[0] == '%' && q[1] == '}'))
            q++;
        if (q + 1 >= end) break;
        const char *inner_end = q;
        char mark = q > inner && (q[-1] == '-' || q[-1] == '+') ? q[-1] : 0;
        if (mark) inner_end--;
        if (!is_word(inner, inner_end, "endraw")) continue;
        const char *t0 = body, *t1 = p;
        if (raw_rmark == '-')
            while (t0 < t1 && isspace((unsigned char)*t0))
                t0++;
        if (strip)
            while (t1 > t0 && isspace((unsigned char)t1[-1]))
                t1--;
        int text_line = *line + count_lines(tag, (size_t)(t0 - tag));
        if (t1 > t0 && !add_piece(ps, P_TEXT, t0, (size_t)(t1 - t0), text_line)) return false;
        *line += count_lines(tag, (size_t)(q + 2 - tag));
        *close = q;
        *rmark = mark;
        return true;
    }
    fail(ps, *line, "a raw block without its endraw");
    return false;
}

/* Splits the source into pieces, applying -/+ marks, trim_blocks (one newline after a block or
 * comment tag goes) and lstrip_blocks (spaces and tabs from a line's start to a block or comment
 * tag go). */
static bool split_pieces(parser_t *ps) {
    const char *s = ps->src, *end = ps->src + ps->len;
    if (end > s && end[-1] == '\n') end--; /* keep_trailing_newline=False */
    int line = 1;
    bool line_starting = true, strip_next = false, trim_next = false;
    const char *text = s;
    while (text <= end) {
        const char *tag = text;
        while (tag + 1 < end &&
               !(tag[0] == '{' && (tag[1] == '{' || tag[1] == '%' || tag[1] == '#')))
            tag++;
        if (tag + 1 >= end) tag = end;
        const char *t0 = text, *t1 = tag;
        if (strip_next)
            while (t0 < t1 && isspace((unsigned char)*t0))
                t0++;
        else if (trim_next && t0 < t1 && *t0 == '\n')
            t0++;
        if (tag < end) {
            char open = tag[1];
            char mark = tag + 2 < end ? tag[2] : 0;
            if (mark == '-') {
                while (t1 > t0 && isspace((unsigned char)t1[-1]))
                    t1--;
            } else if (open != '{' && mark != '+') {
                const char *q = t1;
                while (q > t0 && (q[-1] == ' ' || q[-1] == '\t'))
                    q--;
                bool at_line_start = q > t0 ? q[-1] == '\n' : (q == text && line_starting);
                if (q == t0 && t0 > text) at_line_start = t0[-1] == '\n';
                if (at_line_start) t1 = q;
            }
        }
        int text_line = line + count_lines(text, (size_t)(t0 - text));
        if (t1 > t0 && !add_piece(ps, P_TEXT, t0, (size_t)(t1 - t0), text_line)) return false;
        line += count_lines(text, (size_t)(tag - text));
        if (tag >= end) break;
        char open = tag[1];
        const char *close = open == '{' ? "}}" : open == '%' ? "%}" : "#}";
        const char *inner = tag + 2;
        if (inner < end && (*inner == '-' || *inner == '+')) inner++;
        const char *c = inner;
        while (c + 1 < end && !(c[0] == close[0] && c[1] == close[1])) {
            if (open != '#' && (*c == '\'' || *c == '"')) { /* "}}" inside a string literal */
                const char *q = c + 1;
                while (q < end && *q != *c)
                    q += *q == '\\' && q + 1 < end ? 2 : 1;
                if (q < end) c = q;
            }
            c++;
        }
        if (c + 1 >= end) {
            fail(ps, line, "'%c%c' has no closing '%s'", '{', open, close);
            return false;
        }
        const char *inner_end = c;
        char rmark = c > inner && (c[-1] == '-' || c[-1] == '+') ? c[-1] : 0;
        if (rmark) inner_end--;
        if (open == '%' && is_word(inner, inner_end, "raw")) {
            if (!raw_block(ps, &line, tag, c + 2, end, rmark, &c, &rmark)) return false;
            text = c + 2;
        } else {
            if (open != '#' && !add_piece(ps, open == '{' ? P_VAR : P_BLOCK, inner,
                                          (size_t)(inner_end - inner), line))
                return false;
            line += count_lines(tag, (size_t)(c + 2 - tag));
            text = c + 2;
        }
        strip_next = rmark == '-';
        trim_next = open != '{' && rmark != '+';
        /* whether the next text starts a line: the newline this tag's end consumed */
        if (strip_next) {
            const char *q = text;
            while (q < end && isspace((unsigned char)*q))
                q++;
            line_starting = q > text && q[-1] == '\n';
        } else {
            line_starting = trim_next && text < end && *text == '\n';
        }
    }
    return true;
}

/* ---- tokens inside a tag -------------------------------------------------------------------- */

typedef enum { T_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP } tok_kind_t;

typedef struct {
    tok_kind_t kind;
    const char *s;
    size_t len;
} tok_t;

static tok_t peek_at(parser_t *ps, const char **after) {
    const char *p = ps->p;
    while (p < ps->end && isspace((unsigned char)*p))
        p++;
    tok_t t = {T_END, p, 0};
    if (p >= ps->end) {
        *after = p;
        return t;
    }
    if (isalpha((unsigned char)*p) || *p == '_') {
        const char *q = p;
        while (q < ps->end && (isalnum((unsigned char)*q) || *q == '_'))
            q++;
        t = (tok_t){T_NAME, p, (size_t)(q - p)};
    } else if (isdigit((unsigned char)*p)) {
        const char *q = p;
        while (q < ps->end && (isdigit((unsigned char)*q) || *q == '_'))
            q++;
        t.kind = T_INT;
        if (q + 1 < ps->end && *q == '.' && isdigit((unsigned char)q[1])) {
            q++;
            while (q < ps->end && isdigit((unsigned char)*q))
                q++;
            t.kind = T_FLOAT;
        }
        if (q < ps->end && (*q == 'e' || *q == 'E')) {
            const char *r = q + 1;
            if (r < ps->end && (*r == '+' || *r == '-')) r++;
            if (r < ps->end && isdigit((unsigned char)*r)) {
                while (r < ps->end && isdigit((unsigned char)*r))
                    r++;
                q = r;
                t.kind = T_FLOAT;
            }
        }
        t.s = p;
        t.len = (size_t)(q - p);
    } else if (*p == '\'' || *p == '"') {
        const char *q = p + 1;
        while (q < ps->end && *q != *p)
            q += *q == '\\' && q + 1 < ps->end ? 2 : 1;
        t = (tok_t){T_STRING, p, (size_t)(q < ps->end ? q + 1 - p : q - p)};
    } else {
        static const char *const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                          "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                          "]",  "{",  "}",  ",",  ".",  ":",  "|"};
        t = (tok_t){T_OP, p, 1};
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
            if (strncmp(p, ops[i], strlen(ops[i])) == 0 && p + strlen(ops[i]) <= ps->end) {
                t.len = strlen(ops[i]);
                break;
            }
    }
    *after = t.s + t.len;
    return t;
}

static tok_t peek(parser_t *ps) {
    const char *after;
    return peek_at(ps, &after);
}

static tok_t next(parser_t *ps) {
    const char *after;
    tok_t t = peek_at(ps, &after);
    ps->p = after;
    return t;
}

static bool tok_is(tok_t t, tok_kind_t kind, const char *s) {
    return t.kind == kind && t.len == strlen(s) && memcmp(t.s, s, t.len) == 0;
}

static bool is_op(parser_t *ps, const char *s) {
    return tok_is(peek(ps), T_OP, s);
}
static bool is_name(parser_t *ps, const char *s) {
    return tok_is(peek(ps), T_NAME, s);
}

static bool accept_op(parser_t *ps, const char *s) {
    if (!is_op(ps, s)) return false;
    next(ps);
    return true;
}
static bool accept_name(parser_t *ps, const char *s) {
    if (!is_name(ps, s)) return false;
    next(ps);
    return true;
}

static bool expect_op(parser_t *ps, const char *s) {
    if (accept_op(ps, s)) return true;
    tok_t t = peek(ps);
    fail(ps, ps->line, "expected '%s', found '%.*s'", s, t.len ? (int)(t.len > 40 ? 40 : t.len) : 6,
         t.len ? t.s : "the end");
    return false;
}

/* ---- nodes ---------------------------------------------------------------------------------- */

static ct_node_t *node_new(parser_t *ps, ct_kind_t kind) {
    ct_node_t *n = calloc(1, sizeof *n);
    if (!n) {
        fail(ps, ps->line, "out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = ps->line;
    return n;
}

void ct_node_free(ct_node_t *n) {
    if (!n) return;
    for (int i = 0; i < n->n_kids; i++)
        ct_node_free(n->kids[i]);
    for (int i = 0; i < n->n_names; i++)
        free(n->names[i]);
    free(n->kids);
    free(n->names);
    free(n->str);
    free(n);
}

static bool add_kid(parser_t *ps, ct_node_t *n, ct_node_t *kid) {
    ct_node_t **k = realloc(n->kids, (size_t)(n->n_kids + 1) * sizeof *k);
    if (!k) {
        ct_node_free(kid);
        fail(ps, ps->line, "out of memory");
        return false;
    }
    n->kids = k;
    n->kids[n->n_kids++] = kid;
    return true;
}

static bool add_name(parser_t *ps, ct_node_t *n, const char *s, size_t len) {
    char **k = realloc(n->names, (size_t)(n->n_names + 1) * sizeof *k);
    char *copy = k ? strndup(s ? s : "", s ? len : 0) : NULL;
    if (k) n->names = k;
    if (!copy) {
        fail(ps, ps->line, "out of memory");
        return false;
    }
    n->names[n->n_names++] = s ? copy : (free(copy), NULL);
    return true;
}

/* A node of kind with kids a (and b): NULL (freeing them) when either is NULL. */
static ct_node_t *node2(parser_t *ps, ct_kind_t kind, int op, ct_node_t *a, ct_node_t *b) {
    ct_node_t *n = a && b ? node_new(ps, kind) : NULL;
    if (!n) {
        ct_node_free(a);
        ct_node_free(b);
        return NULL;
    }
    n->op = op;
    n->kids = malloc(2 * sizeof *n->kids);
    if (!n->kids) {
        ct_node_free(a);
        ct_node_free(b);
        free(n);
        fail(ps, ps->line, "out of memory");
        return NULL;
    }
    n->kids[0] = a;
    n->kids[1] = b;
    n->n_kids = 2;
    return n;
}

static ct_node_t *node1(parser_t *ps, ct_kind_t kind, ct_node_t *a) {
    ct_node_t *n = a ? node_new(ps, kind) : NULL;
    if (!n || !add_kid(ps, n, a)) {
        if (!n) ct_node_free(a);
        ct_node_free(n);
        return NULL;
    }
    return n;
}

/* A string literal's value, Python's escapes decoded. */
static bool string_value(parser_t *ps, tok_t t, ct_node_t *n) {
    if (t.len < 2 || t.s[t.len - 1] != t.s[0]) {
        fail(ps, ps->line, "a string literal has no closing quote");
        return false;
    }
    char *out = malloc(t.len + 1 + n->len);
    if (!out) {
        fail(ps, ps->line, "out of memory");
        return false;
    }
    size_t k = 0;
    if (n->str) memcpy(out, n->str, n->len), k = n->len;
    for (size_t i = 1; i + 1 < t.len; i++) {
        char c = t.s[i];
        if (c != '\\' || i + 2 >= t.len) {
            out[k++] = c;
            continue;
        }
        c = t.s[++i];
        switch (c) {
        case 'n':
            out[k++] = '\n';
            break;
        case 't':
            out[k++] = '\t';
            break;
        case 'r':
            out[k++] = '\r';
            break;
        case '0':
            out[k++] = '\0';
            break;
        case '\\':
        case '\'':
        case '"':
            out[k++] = c;
            break;
        case 'u':
        case 'x': {
            size_t digits = c == 'u' ? 4 : 2;
            unsigned cp = 0;
            size_t j = 0;
            for (; j < digits && i + 1 + j + 1 < t.len && isxdigit((unsigned char)t.s[i + 1 + j]);
                 j++) {
                char h = t.s[i + 1 + j];
                cp = cp * 16 + (unsigned)(isdigit((unsigned char)h)
                                              ? h - '0'
                                              : (tolower((unsigned char)h) - 'a' + 10));
            }
            if (j < digits || (cp >= 0xd800 && cp < 0xe000)) {
                out[k++] = '\\';
                out[k++] = c;
                break;
            }
            i += digits;
            k += ct_utf8_encode(cp, out + k);
            break;
        }
        default:
            out[k++] = '\\';
            out[k++] = c;
        }
    }
    free(n->str);
    n->str = out;
    n->len = k;
    out[k] = '\0';
    return true;
}

static ct_node_t *parse_expr(parser_t *ps);
static ct_node_t *parse_or(parser_t *ps);
static ct_node_t *parse_unary(parser_t *ps, bool with_filter);

static bool enter(parser_t *ps) {
    if (++ps->depth > DSLA_CHAT_TEMPLATE_DEPTH_MAX) {
        fail(ps, ps->line, "nesting deeper than %d", DSLA_CHAT_TEMPLATE_DEPTH_MAX);
        return false;
    }
    return true;
}

/* Arguments of a call, filter or test up to ')': positional, then name=value. */
static bool parse_args(parser_t *ps, ct_node_t *n) {
    if (accept_op(ps, ")")) return true;
    do {
        if (is_op(ps, ")")) break;
        const char *save = ps->p;
        tok_t t = next(ps);
        const char *kw = NULL;
        size_t kw_len = 0;
        if (t.kind == T_NAME && is_op(ps, "=")) {
            next(ps);
            kw = t.s;
            kw_len = t.len;
        } else {
            ps->p = save;
        }
        ct_node_t *v = parse_expr(ps);
        if (!v || !add_kid(ps, n, v)) return false;
        /* names run beside kids[1..] */
        while (n->n_names < n->n_kids - 2)
            if (!add_name(ps, n, NULL, 0)) return false;
        if (!add_name(ps, n, kw, kw_len)) return false;
    } while (accept_op(ps, ","));
    return expect_op(ps, ")");
}

static ct_node_t *parse_primary(parser_t *ps) {
    tok_t t = next(ps);
    ct_node_t *n = NULL;
    if (t.kind == T_STRING) {
        n = node_new(ps, CT_STR);
        if (n && !string_value(ps, t, n)) goto fail;
        while (n && peek(ps).kind == T_STRING) /* adjacent literals join */
            if (!string_value(ps, next(ps), n)) goto fail;
        return n;
    }
    if (t.kind == T_INT || t.kind == T_FLOAT) {
        char buf[64];
        size_t k = 0;
        for (size_t i = 0; i < t.len && k + 1 < sizeof buf; i++)
            if (t.s[i] != '_') buf[k++] = t.s[i];
        buf[k] = '\0';
        n = node_new(ps, t.kind == T_INT ? CT_INT : CT_FLOAT);
        if (!n) return NULL;
        errno = 0;
        if (t.kind == T_INT)
            n->i = strtoll(buf, NULL, 10);
        else
            n->f = strtod(buf, NULL);
        if (errno == ERANGE && t.kind == T_INT) {
            fail(ps, ps->line, "the integer %s is out of range", buf);
            ct_node_free(n);
            return NULL;
        }
        return n;
    }
    if (t.kind == T_NAME) {
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True") || tok_is(t, T_NAME, "false") ||
            tok_is(t, T_NAME, "False")) {
            n = node_new(ps, CT_BOOL);
            if (n) n->i = t.s[0] == 't' || t.s[0] == 'T';
            return n;
        }
        if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) return node_new(ps, CT_NONE);
        n = node_new(ps, CT_NAME);
        if (n && !(n->str = strndup(t.s, t.len))) goto oom;
        return n;
    }
    if (tok_is(t, T_OP, "(")) {
        if (accept_op(ps, ")")) return node_new(ps, CT_TUPLE);
        ct_node_t *e = parse_expr(ps);
        if (!e) return NULL;
        if (accept_op(ps, ")")) return e;
        n = node_new(ps, CT_TUPLE);
        if (!n || !add_kid(ps, n, e)) {
            if (!n) ct_node_free(e);
            goto fail;
        }
        while (accept_op(ps, ",")) {
            if (is_op(ps, ")")) break;
            ct_node_t *k = parse_expr(ps);
            if (!k || !add_kid(ps, n, k)) goto fail;
        }
        if (!expect_op(ps, ")")) goto fail;
        return n;
    }
    if (tok_is(t, T_OP, "[") || tok_is(t, T_OP, "{")) {
        bool dict = t.s[0] == '{';
        const char *close = dict ? "}" : "]";
        n = node_new(ps, dict ? CT_DICT : CT_LIST);
        if (!n) return NULL;
        while (!accept_op(ps, close)) {
            ct_node_t *k = parse_expr(ps);
            if (!k || !add_kid(ps, n, k)) goto fail;
            if (dict) {
                if (!expect_op(ps, ":")) goto fail;
                ct_node_t *v = parse_expr(ps);
                if (!v || !add_kid(ps, n, v)) goto fail;
            }
            if (!accept_op(ps, ",")) {
                if (!expect_op(ps, close)) goto fail;
                break;
            }
        }
        return n;
    }
    fail(ps, ps->line, "unexpected '%.*s' in an expression", t.len ? (int)t.len : 6,
         t.len ? t.s : "the end");
    return NULL;
oom:
    fail(ps, ps->line, "out of memory");
fail:
    ct_node_free(n);
    return NULL;
}

/* x.name, x[i], x[a:b:c], x(args) */
static ct_node_t *parse_postfix(parser_t *ps, ct_node_t *n) {
    while (n) {
        if (accept_op(ps, ".")) {
            tok_t t = next(ps);
            if (t.kind == T_INT) { /* x.0 is x[0] */
                ct_node_t *i = node_new(ps, CT_INT);
                if (i) i->i = strtoll(t.s, NULL, 10);
                n = node2(ps, CT_INDEX, 0, n, i);
                continue;
            }
            if (t.kind != T_NAME) {
                fail(ps, ps->line, "expected a name after '.'");
                ct_node_free(n);
                return NULL;
            }
            ct_node_t *a = node1(ps, CT_ATTR, n);
            if (a && !(a->str = strndup(t.s, t.len))) {
                ct_node_free(a);
                fail(ps, ps->line, "out of memory");
                return NULL;
            }
            n = a;
        } else if (accept_op(ps, "[")) {
            ct_node_t *parts[3] = {NULL, NULL, NULL};
            int k = 0;
            bool slice = false;
            for (;;) {
                if (!is_op(ps, ":") && !is_op(ps, "]")) {
                    parts[k] = parse_expr(ps);
                    if (!parts[k]) break;
                }
                if (k < 2 && accept_op(ps, ":")) {
                    slice = true;
                    k++;
                    continue;
                }
                break;
            }
            if (ps->failed || !expect_op(ps, "]") || (!slice && !parts[0])) {
                if (!ps->failed) fail(ps, ps->line, "empty subscript");
                for (int i = 0; i < 3; i++)
                    ct_node_free(parts[i]);
                ct_node_free(n);
                return NULL;
            }
            if (!slice) {
                n = node2(ps, CT_INDEX, 0, n, parts[0]);
                continue;
            }
            ct_node_t *s = node1(ps, CT_SLICE, n);
            for (int i = 0; i < 3 && s; i++)
                if (!add_kid(ps, s, parts[i])) {
                    for (int j = i + 1; j < 3; j++)
                        ct_node_free(parts[j]);
                    ct_node_free(s);
                    return NULL;
                }
            n = s;
        } else if (accept_op(ps, "(")) {
            ct_node_t *c = node1(ps, CT_CALL, n);
            if (!c || !parse_args(ps, c)) {
                ct_node_free(c);
                return NULL;
            }
            n = c;
        } else {
            break;
        }
    }
    return n;
}

static bool starts_expression(tok_t t) {
    static const char *const words[] = {"and", "or", "not", "if", "else", "in", "is"};
    if (t.kind == T_NAME) {
        for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
            if (tok_is(t, T_NAME, words[i])) return false;
        return true;
    }
    return t.kind == T_STRING || t.kind == T_INT || t.kind == T_FLOAT || tok_is(t, T_OP, "(") ||
           tok_is(t, T_OP, "[") || tok_is(t, T_OP, "{") || tok_is(t, T_OP, "-");
}

/* | filter(args), is [not] test(args) or test arg */
static ct_node_t *parse_filters(parser_t *ps, ct_node_t *n) {
    while (n) {
        bool filter = accept_op(ps, "|");
        if (!filter && !accept_name(ps, "is")) break;
        bool negated = !filter && accept_name(ps, "not");
        tok_t t = next(ps);
        if (t.kind != T_NAME) {
            fail(ps, ps->line, "expected a %s name", filter ? "filter" : "test");
            ct_node_free(n);
            return NULL;
        }
        ct_node_t *f = node1(ps, filter ? CT_FILTER : CT_TEST, n);
        if (!f || !(f->str = strndup(t.s, t.len))) {
            if (f) fail(ps, ps->line, "out of memory");
            ct_node_free(f);
            return NULL;
        }
        f->i = negated;
        if (accept_op(ps, "(")) {
            if (!parse_args(ps, f)) {
                ct_node_free(f);
                return NULL;
            }
        } else if (!filter && starts_expression(peek(ps)) && !is_op(ps, "-")) {
            ct_node_t *arg = parse_unary(ps, false);
            if (!arg || !add_kid(ps, f, arg) || !add_name(ps, f, NULL, 0)) {
                ct_node_free(f);
                return NULL;
            }
        }
        n = f;
    }
    return n;
}

static ct_node_t *parse_unary(parser_t *ps, bool with_filter) {
    if (!enter(ps)) return NULL;
    ct_node_t *n;
    if (is_op(ps, "-") || is_op(ps, "+")) {
        int op = next(ps).s[0];
        n = node1(ps, CT_UNARY, parse_unary(ps, false));
        if (n) n->op = op;
    } else {
        n = parse_primary(ps);
    }
    n = parse_postfix(ps, n);
    if (with_filter) n = parse_filters(ps, n);
    ps->depth--;
    return n;
}

static ct_node_t *parse_pow(parser_t *ps) {
    ct_node_t *n = parse_unary(ps, true);
    while (n && accept_op(ps, "**"))
        n = node2(ps, CT_BINARY, CT_OP_POW, n, parse_unary(ps, true));
    return n;
}

static ct_node_t *parse_math2(parser_t *ps) {
    ct_node_t *n = parse_pow(ps);
    for (;;) {
        int op = is_op(ps, "*")    ? CT_OP_MUL
                 : is_op(ps, "/")  ? CT_OP_DIV
                 : is_op(ps, "//") ? CT_OP_FLOORDIV
                 : is_op(ps, "%")  ? CT_OP_MOD
                                   : 0;
        if (!n || !op) return n;
        next(ps);
        n = node2(ps, CT_BINARY, op, n, parse_pow(ps));
    }
}

static ct_node_t *parse_concat(parser_t *ps) {
    ct_node_t *n = parse_math2(ps);
    while (n && accept_op(ps, "~"))
        n = node2(ps, CT_BINARY, CT_OP_CONCAT, n, parse_math2(ps));
    return n;
}

static ct_node_t *parse_math1(parser_t *ps) {
    ct_node_t *n = parse_concat(ps);
    for (;;) {
        int op = is_op(ps, "+") ? CT_OP_ADD : is_op(ps, "-") ? CT_OP_SUB : 0;
        if (!n || !op) return n;
        next(ps);
        n = node2(ps, CT_BINARY, op, n, parse_concat(ps));
    }
}

static ct_node_t *parse_compare(parser_t *ps) {
    ct_node_t *n = parse_math1(ps);
    for (;;) {
        int op = is_op(ps, "==")     ? CT_OP_EQ
                 : is_op(ps, "!=")   ? CT_OP_NE
                 : is_op(ps, "<")    ? CT_OP_LT
                 : is_op(ps, "<=")   ? CT_OP_LE
                 : is_op(ps, ">")    ? CT_OP_GT
                 : is_op(ps, ">=")   ? CT_OP_GE
                 : is_name(ps, "in") ? CT_OP_IN
                                     : 0;
        if (!op && is_name(ps, "not")) {
            const char *save = ps->p;
            next(ps);
            if (is_name(ps, "in"))
                op = CT_OP_NOT_IN;
            else
                ps->p = save;
        }
        if (!n || !op) return n;
        next(ps);
        n = node2(ps, CT_BINARY, op, n, parse_math1(ps));
    }
}

static ct_node_t *parse_not(parser_t *ps) {
    if (accept_name(ps, "not")) {
        if (!enter(ps)) return NULL;
        ct_node_t *n = node1(ps, CT_UNARY, parse_not(ps));
        if (n) n->op = '!';
        ps->depth--;
        return n;
    }
    return parse_compare(ps);
}

static ct_node_t *parse_and(parser_t *ps) {
    ct_node_t *n = parse_not(ps);
    while (n && accept_name(ps, "and"))
        n = node2(ps, CT_AND, 0, n, parse_not(ps));
    return n;
}

static ct_node_t *parse_or(parser_t *ps) {
    ct_node_t *n = parse_and(ps);
    while (n && accept_name(ps, "or"))
        n = node2(ps, CT_OR, 0, n, parse_and(ps));
    return n;
}

/* a if cond else b */
static ct_node_t *parse_expr(parser_t *ps) {
    if (!enter(ps)) return NULL;
    ct_node_t *n = parse_or(ps);
    while (n && accept_name(ps, "if")) {
        ct_node_t *c = node2(ps, CT_COND, 0, parse_or(ps), n);
        if (c && accept_name(ps, "else")) {
            ct_node_t *e = parse_expr(ps);
            if (!e || !add_kid(ps, c, e)) {
                ct_node_free(c);
                c = NULL;
            }
        } else if (c && !add_kid(ps, c, NULL)) {
            c = NULL;
        }
        n = c;
    }
    ps->depth--;
    return n;
}

/* An expression, or a tuple of them without parentheses ({% set a = 1, 2 %}). */
static ct_node_t *parse_tuple_expr(parser_t *ps) {
    ct_node_t *n = parse_expr(ps);
    if (!n || !is_op(ps, ",")) return n;
    ct_node_t *t = node1(ps, CT_TUPLE, n);
    while (t && accept_op(ps, ",")) {
        ct_node_t *k = parse_expr(ps);
        if (!k || !add_kid(ps, t, k)) {
            ct_node_free(t);
            return NULL;
        }
    }
    return t;
}

/* ---- statements ----------------------------------------------------------------------------- */

static void begin_tag(parser_t *ps, const piece_t *p) {
    ps->p = p->s;
    ps->end = p->s + p->len;
    ps->line = p->line;
}

static bool tag_done(parser_t *ps) {
    tok_t t = peek(ps);
    if (t.kind == T_END) return true;
    fail(ps, ps->line, "unexpected '%.*s' at the end of a tag", (int)(t.len > 40 ? 40 : t.len),
         t.s);
    return false;
}

/* The keyword a block tag starts with ("" for none). */
static tok_t tag_keyword(parser_t *ps, const piece_t *p) {
    begin_tag(ps, p);
    return peek(ps);
}

static ct_node_t *parse_body(parser_t *ps, const char *const *ends, tok_t *found);

static bool parse_names(parser_t *ps, ct_node_t *n) {
    do {
        tok_t t = next(ps);
        if (t.kind != T_NAME) {
            fail(ps, ps->line, "expected a name");
            return false;
        }
        if (!add_name(ps, n, t.s, t.len)) return false;
    } while (accept_op(ps, ","));
    return true;
}

static ct_node_t *parse_if(parser_t *ps) {
    ct_node_t *n = node_new(ps, CT_IF);
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    bool in_else = false;
    while (n) {
        if (!in_else) {
            ct_node_t *c = parse_expr(ps);
            if (!c || !add_kid(ps, n, c) || !tag_done(ps)) break;
        }
        tok_t end;
        ct_node_t *body = parse_body(ps, in_else ? ends + 2 : ends, &end);
        if (!body || !add_kid(ps, n, body)) break;
        next(ps);
        if (tok_is(end, T_NAME, "endif")) {
            if (!tag_done(ps)) break;
            return n;
        }
        in_else = tok_is(end, T_NAME, "else");
        if (in_else && !tag_done(ps)) break;
    }
    ct_node_free(n);
    return NULL;
}

static ct_node_t *parse_for(parser_t *ps) {
    ct_node_t *n = node_new(ps, CT_FOR);
    if (!n || !parse_names(ps, n)) goto fail;
    if (!accept_name(ps, "in")) {
        fail(ps, ps->line, "expected 'in' in a for tag");
        goto fail;
    }
    ct_node_t *it = parse_or(ps);
    if (!it || !add_kid(ps, n, it)) goto fail;
    ct_node_t *cond = NULL;
    if (accept_name(ps, "if") && !(cond = parse_expr(ps))) goto fail;
    if (!add_kid(ps, n, cond)) goto fail;
    if (accept_name(ps, "recursive")) {
        fail(ps, ps->line, "recursive for loops are not supported");
        goto fail;
    }
    if (!tag_done(ps)) goto fail;
    static const char *const ends[] = {"else", "endfor", NULL};
    tok_t end;
    ct_node_t *body = parse_body(ps, ends, &end);
    if (!body || !add_kid(ps, n, body)) goto fail;
    next(ps);
    ct_node_t *else_body = NULL;
    if (tok_is(end, T_NAME, "else")) {
        if (!tag_done(ps) || !(else_body = parse_body(ps, ends + 1, &end))) goto fail;
        next(ps);
    }
    if (!add_kid(ps, n, else_body) || !tag_done(ps)) goto fail;
    return n;
fail:
    ct_node_free(n);
    return NULL;
}

static ct_node_t *parse_set(parser_t *ps) {
    ct_node_t *target = parse_primary(ps);
    if (target && target->kind == CT_NAME && accept_op(ps, ".")) {
        tok_t t = next(ps);
        ct_node_t *a = node1(ps, CT_ATTR, target);
        if (!a || t.kind != T_NAME || !(a->str = strndup(t.s, t.len))) {
            if (a) fail(ps, ps->line, "expected an attribute name in a set tag");
            ct_node_free(a);
            return NULL;
        }
        target = a;
    } else if (target && target->kind == CT_NAME && is_op(ps, ",")) {
        ct_node_t *t = node1(ps, CT_TUPLE, target);
        while (t && accept_op(ps, ",")) {
            ct_node_t *k = parse_primary(ps);
            if (!k || !add_kid(ps, t, k)) {
                ct_node_free(t);
                return NULL;
            }
        }
        target = t;
    }
    if (!target) return NULL;
    if (target->kind != CT_NAME && target->kind != CT_ATTR && target->kind != CT_TUPLE) {
        fail(ps, ps->line, "a set tag assigns to a name, a name.attribute or names");
        ct_node_free(target);
        return NULL;
    }
    if (!accept_op(ps, "=")) {
        if (target->kind != CT_NAME) {
            fail(ps, ps->line, "a set block assigns to one name");
            ct_node_free(target);
            return NULL;
        }
        static const char *const ends[] = {"endset", NULL};
        tok_t end;
        ct_node_t *body = tag_done(ps) ? parse_body(ps, ends, &end) : NULL;
        if (body) next(ps);
        ct_node_t *n = node2(ps, CT_SET_BLOCK, 0, target, body);
        if (n && !tag_done(ps)) {
            ct_node_free(n);
            return NULL;
        }
        return n;
    }
    ct_node_t *n = node2(ps, CT_SET, 0, target, parse_tuple_expr(ps));
    if (n && !tag_done(ps)) {
        ct_node_free(n);
        return NULL;
    }
    return n;
}

static ct_node_t *parse_macro(parser_t *ps) {
    tok_t t = next(ps);
    ct_node_t *n = node_new(ps, CT_MACRO);
    if (!n) return NULL;
    if (t.kind != T_NAME || !(n->str = strndup(t.s, t.len))) {
        fail(ps, ps->line, "expected a macro name");
        goto fail;
    }
    if (!add_kid(ps, n, NULL) || !expect_op(ps, "(")) goto fail;
    while (!accept_op(ps, ")")) {
        tok_t p = next(ps);
        if (p.kind != T_NAME || !add_name(ps, n, p.s, p.len)) {
            fail(ps, ps->line, "expected a parameter name");
            goto fail;
        }
        ct_node_t *def = NULL;
        if (accept_op(ps, "=") && !(def = parse_expr(ps))) goto fail;
        if (!add_kid(ps, n, def)) goto fail;
        if (!accept_op(ps, ",") && !expect_op(ps, ")")) goto fail;
        if (ps->p[-1] == ')') break;
    }
    if (!tag_done(ps)) goto fail;
    static const char *const ends[] = {"endmacro", NULL};
    tok_t end;
    ct_node_t *body = parse_body(ps, ends, &end);
    if (!body) goto fail;
    n->kids[0] = body;
    next(ps);
    if (!tag_done(ps)) goto fail;
    return n;
fail:
    ct_node_free(n);
    return NULL;
}

/* Statements up to a block tag whose keyword is in ends (NULL: the source's end); *found is that
 * keyword, the parser left just before it. */
static ct_node_t *parse_body(parser_t *ps, const char *const *ends, tok_t *found) {
    if (!enter(ps)) return NULL;
    ct_node_t *body = node_new(ps, CT_BODY);
    while (body && !ps->failed) {
        if (ps->at >= ps->n_pieces) {
            if (!ends) break;
            int last = 0;
            while (ends[last + 1])
                last++;
            fail(ps, ps->n_pieces ? ps->pieces[ps->n_pieces - 1].line : 1,
                 "the template ends inside a block: '%s' expected", ends[last]);
            break;
        }
        const piece_t *p = &ps->pieces[ps->at++];
        ct_node_t *n = NULL;
        if (p->kind == P_TEXT) {
            ps->line = p->line;
            n = node_new(ps, CT_TEXT);
            if (n && !(n->str = malloc(p->len + 1))) {
                fail(ps, p->line, "out of memory");
                ct_node_free(n);
                n = NULL;
            } else if (n) {
                memcpy(n->str, p->s, p->len);
                n->str[p->len] = '\0';
                n->len = p->len;
            }
        } else if (p->kind == P_VAR) {
            begin_tag(ps, p);
            n = node1(ps, CT_OUTPUT, parse_tuple_expr(ps));
            if (n && !tag_done(ps)) {
                ct_node_free(n);
                n = NULL;
            }
        } else {
            tok_t kw = tag_keyword(ps, p);
            for (int i = 0; ends && ends[i]; i++)
                if (tok_is(kw, T_NAME, ends[i])) {
                    *found = kw;
                    ps->depth--;
                    return body;
                }
            next(ps);
            if (tok_is(kw, T_NAME, "if")) {
                n = parse_if(ps);
            } else if (tok_is(kw, T_NAME, "for")) {
                n = parse_for(ps);
            } else if (tok_is(kw, T_NAME, "set")) {
                n = parse_set(ps);
            } else if (tok_is(kw, T_NAME, "macro")) {
                n = parse_macro(ps);
            } else if (tok_is(kw, T_NAME, "break") || tok_is(kw, T_NAME, "continue")) {
                n = tag_done(ps) ? node_new(ps, kw.s[0] == 'b' ? CT_BREAK : CT_CONTINUE) : NULL;
            } else if (tok_is(kw, T_NAME, "generation")) {
                /* transformers' AssistantTracker marks the assistant's text; it renders as is */
                static const char *const gen_ends[] = {"endgeneration", NULL};
                tok_t end;
                n = tag_done(ps) ? parse_body(ps, gen_ends, &end) : NULL;
                if (n) next(ps);
                if (n && !tag_done(ps)) {
                    ct_node_free(n);
                    n = NULL;
                }
            } else {
                fail(ps, p->line, "unknown or unexpected tag '%.*s'",
                     (int)(kw.len > 40 ? 40 : kw.len), kw.s);
            }
        }
        if (!n || !add_kid(ps, body, n)) break;
    }
    ps->depth--;
    if (ps->failed || !body) {
        ct_node_free(body);
        return NULL;
    }
    return body;
}

ct_node_t *ct_parse(const char *source, size_t len, char *err, size_t err_size) {
    parser_t ps = {.src = source, .len = len, .err = err, .err_size = err_size};
    ct_node_t *root = NULL;
    if (split_pieces(&ps)) {
        tok_t none;
        root = parse_body(&ps, NULL, &none);
    }
    free(ps.pieces);
    return root;
}
