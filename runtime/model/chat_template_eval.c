/* The chat-template evaluator (chat_template.h): walks the syntax tree with Jinja2's semantics in
 * transformers' sandbox (immutable values but namespace() objects; undefined names print as
 * nothing; attributes and items of undefined are errors), its filters, tests and the string and
 * dict methods templates call. Every string it makes is bounded by the output limit, every loop
 * and call counted against DSLA_CHAT_TEMPLATE_STEPS_MAX. */
#include "runtime/model/chat_template_internal.h"

#include <ctype.h>
#include <locale.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

#define ARGS_MAX 16

typedef struct {
    const dsla_chat_template_t *t;
    ct_buf_t *out;
    json_t **scopes;
    int n_scopes, cap_scopes, floor; /* lookups walk scopes[n-1..floor], then scopes[0] */
    json_t *namespaces; /* the objects namespace() made: the only ones set may change */
    /* the macros defined so far; each is a variable whose value is its marker, an empty object no
     * one else holds, so that a macro shadows and is shadowed like any name */
    const ct_node_t **macros;
    json_t **macro_markers;
    int n_macros;
    long long steps;
    int depth;
    size_t max_str;
    int flow; /* FLOW_* after break or continue */
    bool failed;
    char err[DSLA_ERROR_MESSAGE_MAX];
} ctx_t;

enum { FLOW_NONE, FLOW_BREAK, FLOW_CONTINUE };

typedef struct {
    int n;
    json_t *v[ARGS_MAX];
    const char *name[ARGS_MAX]; /* NULL: positional */
} args_t;

static bool fail(ctx_t *c, const ct_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(ctx_t *c, const ct_node_t *n, const char *fmt, ...) {
    if (c->failed) return false;
    c->failed = true;
    int k =
        snprintf(c->err, sizeof c->err, "chat template %s line %d: ", c->t->name, n ? n->line : 0);
    va_list ap;
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < sizeof c->err)
        vsnprintf(c->err + k, sizeof c->err - (size_t)k, fmt, ap);
    va_end(ap);
    return false;
}

static const char *type_name(const json_t *v) {
    if (!v) return "undefined";
    switch (json_typeof(v)) {
    case JSON_STRING:
        return "str";
    case JSON_INTEGER:
        return "int";
    case JSON_REAL:
        return "float";
    case JSON_TRUE:
    case JSON_FALSE:
        return "bool";
    case JSON_NULL:
        return "NoneType";
    case JSON_ARRAY:
        return "list";
    case JSON_OBJECT:
        return "dict";
    }
    return "?";
}

static bool step(ctx_t *c, const ct_node_t *n, long long k) {
    c->steps += k;
    if (c->steps <= DSLA_CHAT_TEMPLATE_STEPS_MAX) return true;
    return fail(c, n,
                "the template ran past %d loop iterations and calls "
                "(DSLA_CHAT_TEMPLATE_STEPS_MAX)",
                DSLA_CHAT_TEMPLATE_STEPS_MAX);
}

/* A temporary buffer bounded like the output. */
static ct_buf_t tmp_buf(const ctx_t *c) {
    return (ct_buf_t){.limit = c->max_str};
}

static bool too_long(ctx_t *c, const ct_node_t *n, ct_buf_t *b) {
    free(b->data);
    b->data = NULL;
    return fail(c, n, "a string longer than the output limit of %zu bytes", c->max_str);
}

/* The buffer as a string value (taking its memory); *out NULL on no memory. */
static bool buf_value(ctx_t *c, const ct_node_t *n, ct_buf_t *b, json_t **out) {
    *out = ct_string(b->data ? b->data : "", b->len);
    free(b->data);
    b->data = NULL;
    return *out ? true : fail(c, n, "out of memory");
}

static bool str_value(ctx_t *c, const ct_node_t *n, const char *s, size_t len, json_t **out) {
    if (len > c->max_str)
        return fail(c, n, "a string longer than the output limit of %zu bytes", c->max_str);
    *out = ct_string(s, len);
    return *out ? true : fail(c, n, "out of memory");
}

static bool new_value(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out) {
    *out = v;
    return v ? true : fail(c, n, "out of memory");
}

/* ---- scopes --------------------------------------------------------------------------------- */

static bool push_scope(ctx_t *c, const ct_node_t *n) {
    if (c->n_scopes == c->cap_scopes) {
        int cap = c->cap_scopes ? 2 * c->cap_scopes : 8;
        json_t **s = realloc(c->scopes, (size_t)cap * sizeof *s);
        if (!s) return fail(c, n, "out of memory");
        c->scopes = s;
        c->cap_scopes = cap;
    }
    if (!(c->scopes[c->n_scopes] = json_object())) return fail(c, n, "out of memory");
    c->n_scopes++;
    return true;
}

static void pop_scope(ctx_t *c) {
    json_decref(c->scopes[--c->n_scopes]);
}

static json_t *lookup(const ctx_t *c, const char *name) {
    for (int i = c->n_scopes - 1; i >= c->floor; i--) {
        json_t *v = json_object_get(c->scopes[i], name);
        if (v) return v;
    }
    return c->floor > 0 ? json_object_get(c->scopes[0], name) : NULL;
}

static bool assign(ctx_t *c, const ct_node_t *n, const char *name, json_t *v) {
    if (json_object_set(c->scopes[c->n_scopes - 1], name, v ? v : json_null()) != 0)
        return fail(c, n, "out of memory");
    return true;
}

static const ct_node_t *find_macro(const ctx_t *c, const json_t *v) {
    for (int i = c->n_macros - 1; v && i >= 0; i--)
        if (c->macro_markers[i] == v) return c->macros[i];
    return NULL;
}

static bool is_namespace(const ctx_t *c, const json_t *v) {
    for (size_t i = 0; i < json_array_size(c->namespaces); i++)
        if (json_array_get(c->namespaces, i) == v) return true;
    return false;
}

static const char *const builtins[] = {"raise_exception", "namespace", "range", "strftime_now",
                                       "dict"};

/* ---- evaluation ----------------------------------------------------------------------------- */

static bool eval(ctx_t *c, const ct_node_t *n, json_t **out);
static bool render(ctx_t *c, const ct_node_t *n);

static void args_free(args_t *a) {
    for (int i = 0; i < a->n; i++)
        json_decref(a->v[i]);
    a->n = 0;
}

/* kids[first..] of n as arguments (names beside kids[1..]). */
static bool eval_args(ctx_t *c, const ct_node_t *n, int first, args_t *a) {
    a->n = 0;
    if (n->n_kids - first > ARGS_MAX) return fail(c, n, "more than %d arguments", ARGS_MAX);
    for (int i = first; i < n->n_kids; i++) {
        a->name[a->n] = i - 1 < n->n_names ? n->names[i - 1] : NULL;
        if (!eval(c, n->kids[i], &a->v[a->n])) {
            args_free(a);
            return false;
        }
        a->n++;
    }
    return true;
}

/* Positional argument pos, or the keyword name; *found says whether it was given. */
static json_t *arg(const args_t *a, int pos, const char *name, bool *found) {
    int k = 0;
    for (int i = 0; i < a->n; i++) {
        if (!a->name[i] && k++ == pos) {
            if (found) *found = true;
            return a->v[i];
        }
        if (a->name[i] && name && strcmp(a->name[i], name) == 0) {
            if (found) *found = true;
            return a->v[i];
        }
    }
    if (found) *found = false;
    return NULL;
}

static bool str_arg(ctx_t *c, const ct_node_t *n, const args_t *a, int pos, const char *name,
                    const char *what, const json_t **out) {
    bool found;
    json_t *v = arg(a, pos, name, &found);
    if (found && !json_is_string(v))
        return fail(c, n, "%s takes a string, not %s", what, type_name(v));
    *out = found ? v : NULL;
    return true;
}

static bool int_arg(ctx_t *c, const ct_node_t *n, const args_t *a, int pos, const char *name,
                    const char *what, long long dflt, long long *out) {
    bool found;
    json_t *v = arg(a, pos, name, &found);
    *out = dflt;
    if (!found || json_is_null(v)) return true;
    if (!json_is_integer(v)) return fail(c, n, "%s takes an integer, not %s", what, type_name(v));
    *out = json_integer_value(v);
    return true;
}

/* Python's slice indices (PySlice_AdjustIndices): the positions start, start+step, ... */
static bool slice_indices(ctx_t *c, const ct_node_t *n, const json_t *const parts[3], long long len,
                          long long *start, long long *stop, long long *stepv, long long *count) {
    for (int i = 0; i < 3; i++)
        if (parts[i] && !json_is_null(parts[i]) && !json_is_integer(parts[i]))
            return fail(c, n, "slice indices must be integers or none, not %s",
                        type_name(parts[i]));
    long long st = parts[2] && json_is_integer(parts[2]) ? json_integer_value(parts[2]) : 1;
    if (st == 0) return fail(c, n, "slice step cannot be zero");
    bool has[2] = {parts[0] && json_is_integer(parts[0]), parts[1] && json_is_integer(parts[1])};
    long long v[2] = {has[0] ? json_integer_value(parts[0]) : 0,
                      has[1] ? json_integer_value(parts[1]) : 0};
    long long lo = st < 0 ? -1 : 0, hi = st < 0 ? len - 1 : len;
    for (int i = 0; i < 2; i++) {
        if (!has[i]) {
            v[i] = (i == 0) == (st > 0) ? lo : hi;
            if (i == 0)
                v[i] = st > 0 ? 0 : len - 1;
            else
                v[i] = st > 0 ? len : -1;
            continue;
        }
        if (v[i] < 0) v[i] += len;
        if (v[i] < lo) v[i] = lo;
        if (v[i] > hi) v[i] = hi;
    }
    *start = v[0];
    *stop = v[1];
    *stepv = st;
    long long k = 0;
    if (st > 0 && v[1] > v[0]) k = (v[1] - v[0] - 1) / st + 1;
    if (st < 0 && v[1] < v[0]) k = (v[0] - v[1] - 1) / (-st) + 1;
    *count = k;
    return true;
}

static bool do_slice(ctx_t *c, const ct_node_t *n, json_t *base, const json_t *const parts[3],
                     json_t **out) {
    long long start, stop, st, k;
    if (json_is_array(base)) {
        if (!slice_indices(c, n, parts, (long long)json_array_size(base), &start, &stop, &st, &k))
            return false;
        json_t *r = json_array();
        for (long long i = 0, p = start; r && i < k; i++, p += st)
            if (json_array_append(r, json_array_get(base, (size_t)p)) != 0) {
                json_decref(r);
                r = NULL;
            }
        return new_value(c, n, r, out);
    }
    if (json_is_string(base)) {
        const char *s = json_string_value(base);
        size_t len = json_string_length(base), cps = ct_utf8_count(s, len);
        if (!slice_indices(c, n, parts, (long long)cps, &start, &stop, &st, &k)) return false;
        if (st == 1) {
            size_t a = ct_utf8_offset(s, len, (size_t)start);
            size_t b = ct_utf8_offset(s, len, (size_t)(start + k));
            return str_value(c, n, s + a, b - a, out);
        }
        ct_buf_t b = tmp_buf(c);
        for (long long i = 0, p = start; i < k; i++, p += st) {
            size_t a = ct_utf8_offset(s, len, (size_t)p), e = ct_utf8_offset(s, len, (size_t)p + 1);
            if (!ct_buf_add(&b, s + a, e - a)) return too_long(c, n, &b);
        }
        return buf_value(c, n, &b, out);
    }
    if (!base) return fail(c, n, "slicing an undefined value");
    return fail(c, n, "a %s cannot be sliced", type_name(base));
}

/* base[key] as Jinja's sandbox reads it: missing items are undefined, undefined bases an error. */
static bool do_index(ctx_t *c, const ct_node_t *n, json_t *base, json_t *key, json_t **out) {
    *out = NULL;
    if (!base) return fail(c, n, "an undefined value has no item or attribute");
    if (json_is_object(base)) {
        if (json_is_string(key)) *out = json_incref(json_object_get(base, json_string_value(key)));
        return true;
    }
    if ((json_is_array(base) || json_is_string(base)) && json_is_integer(key)) {
        long long i = json_integer_value(key);
        if (json_is_array(base)) {
            long long len = (long long)json_array_size(base);
            if (i < 0) i += len;
            if (i >= 0 && i < len) *out = json_incref(json_array_get(base, (size_t)i));
            return true;
        }
        const char *s = json_string_value(base);
        size_t len = json_string_length(base);
        long long cps = (long long)ct_utf8_count(s, len);
        if (i < 0) i += cps;
        if (i < 0 || i >= cps) return true;
        size_t a = ct_utf8_offset(s, len, (size_t)i), e = ct_utf8_offset(s, len, (size_t)i + 1);
        return str_value(c, n, s + a, e - a, out);
    }
    return true;
}

/* ---- operators ------------------------------------------------------------------------------ */

static bool is_int(const json_t *v) {
    return json_is_integer(v) || json_is_boolean(v);
}

static long long int_of(const json_t *v) {
    return json_is_integer(v) ? json_integer_value(v) : json_is_true(v);
}

static bool repeat(ctx_t *c, const ct_node_t *n, const json_t *s, long long times, json_t **out) {
    ct_buf_t b = tmp_buf(c);
    size_t len = json_string_length(s);
    if (times > 0 && len > 0 && (unsigned long long)times > c->max_str / len)
        return fail(c, n, "a string longer than the output limit of %zu bytes", c->max_str);
    for (long long i = 0; i < times; i++)
        if (!ct_buf_add(&b, json_string_value(s), len)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

/* Python's "fmt" % args for %s, %d, %i and %% (args a list for several). */
static bool format_percent(ctx_t *c, const ct_node_t *n, const json_t *fmt, json_t *args,
                           json_t **out) {
    const char *f = json_string_value(fmt);
    size_t len = json_string_length(fmt), used = 0;
    size_t n_args = json_is_array(args) ? json_array_size(args) : 1;
    ct_buf_t b = tmp_buf(c);
    for (size_t i = 0; i < len; i++) {
        if (f[i] != '%') {
            if (!ct_buf_add(&b, f + i, 1)) return too_long(c, n, &b);
            continue;
        }
        char spec = i + 1 < len ? f[++i] : 0;
        if (spec == '%') {
            if (!ct_buf_add(&b, "%", 1)) return too_long(c, n, &b);
            continue;
        }
        if (spec != 's' && spec != 'd' && spec != 'i') {
            free(b.data);
            return fail(c, n,
                        "%%-formatting: only %%s, %%d, %%i and %%%% are supported, not '%%%c'",
                        spec ? spec : ' ');
        }
        if (used >= n_args) {
            free(b.data);
            return fail(c, n, "%%-formatting: not enough arguments for the format string");
        }
        json_t *x = json_is_array(args) ? json_array_get(args, used) : args;
        used++;
        double d;
        if (spec != 's' && !json_is_integer(x)) {
            if (!ct_to_double(x, &d) || !(d > -9.2e18 && d < 9.2e18)) {
                free(b.data);
                return fail(c, n, "%%-formatting: %%%c needs a number, not %s", spec, type_name(x));
            }
            x = json_integer((json_int_t)d);
            bool ok = ct_buf_str(&b, x);
            json_decref(x);
            if (!ok) return too_long(c, n, &b);
        } else if (!ct_buf_str(&b, x)) {
            return too_long(c, n, &b);
        }
    }
    if (used < n_args) {
        free(b.data);
        return fail(c, n, "%%-formatting: not all arguments converted");
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

static bool arith(ctx_t *c, const ct_node_t *n, int op, json_t *a, json_t *b, json_t **out) {
    static const char *const names[] = {"", "+", "-", "*", "/", "//", "%", "**"};
    if (!a || !b) return fail(c, n, "an undefined value in '%s'", names[op]);
    if (op == CT_OP_ADD && json_is_string(a) && json_is_string(b)) {
        ct_buf_t buf = tmp_buf(c);
        if (!ct_buf_add(&buf, json_string_value(a), json_string_length(a)) ||
            !ct_buf_add(&buf, json_string_value(b), json_string_length(b)))
            return too_long(c, n, &buf);
        return buf_value(c, n, &buf, out);
    }
    if (op == CT_OP_ADD && json_is_array(a) && json_is_array(b)) {
        if (!step(c, n, (long long)json_array_size(b))) return false;
        json_t *r = json_copy(a);
        if (r && json_array_extend(r, b) != 0) {
            json_decref(r);
            r = NULL;
        }
        return new_value(c, n, r, out);
    }
    if (op == CT_OP_MOD && json_is_string(a)) return format_percent(c, n, a, b, out);
    if (op == CT_OP_MUL && (json_is_string(a) || json_is_string(b)) && (is_int(a) || is_int(b)))
        return repeat(c, n, json_is_string(a) ? a : b, int_of(json_is_string(a) ? b : a), out);
    double x, y;
    if (!ct_to_double(a, &x) || !ct_to_double(b, &y))
        return fail(c, n, "unsupported operand types for %s: '%s' and '%s'", names[op],
                    type_name(a), type_name(b));
    if (is_int(a) && is_int(b) && op != CT_OP_DIV) {
        long long i = int_of(a), j = int_of(b), r = 0;
        bool overflow = false;
        switch (op) {
        case CT_OP_ADD:
            overflow = __builtin_add_overflow(i, j, &r);
            break;
        case CT_OP_SUB:
            overflow = __builtin_sub_overflow(i, j, &r);
            break;
        case CT_OP_MUL:
            overflow = __builtin_mul_overflow(i, j, &r);
            break;
        case CT_OP_FLOORDIV:
        case CT_OP_MOD:
            if (j == 0) return fail(c, n, "integer division or modulo by zero");
            if (i == INT64_MIN && j == -1) {
                overflow = true;
                break;
            }
            r = op == CT_OP_MOD ? i % j : i / j;
            if (op == CT_OP_MOD && r != 0 && ((r < 0) != (j < 0))) r += j;
            if (op == CT_OP_FLOORDIV && (i % j != 0) && ((i < 0) != (j < 0))) r--;
            break;
        case CT_OP_POW:
            if (j < 0) break; /* a float, below */
            r = 1;
            for (long long k = 0; k < j && !overflow; k++)
                overflow = __builtin_mul_overflow(r, i, &r);
            break;
        }
        if (overflow) return fail(c, n, "an integer overflow in '%s'", names[op]);
        if (!(op == CT_OP_POW && j < 0)) return new_value(c, n, json_integer(r), out);
    }
    double r = 0;
    switch (op) {
    case CT_OP_ADD:
        r = x + y;
        break;
    case CT_OP_SUB:
        r = x - y;
        break;
    case CT_OP_MUL:
        r = x * y;
        break;
    case CT_OP_DIV:
    case CT_OP_FLOORDIV:
    case CT_OP_MOD:
        if (y == 0) return fail(c, n, "division by zero");
        r = op == CT_OP_DIV ? x / y : op == CT_OP_FLOORDIV ? floor(x / y) : x - y * floor(x / y);
        break;
    case CT_OP_POW:
        r = pow(x, y);
        break;
    }
    return new_value(c, n, json_real(r), out);
}

static bool compare(ctx_t *c, const ct_node_t *n, int op, json_t *a, json_t *b, bool *out) {
    if (op == CT_OP_EQ || op == CT_OP_NE) {
        *out = ct_equal(a, b) == (op == CT_OP_EQ);
        return true;
    }
    if (op == CT_OP_IN || op == CT_OP_NOT_IN) {
        bool in = false;
        if (json_is_string(b)) {
            if (!json_is_string(a))
                return fail(c, n, "'in <string>' requires a string on the left, not %s",
                            type_name(a));
            size_t la = json_string_length(a), lb = json_string_length(b);
            in = la == 0 ||
                 (la <= lb && ct_memmem(json_string_value(b), lb, json_string_value(a), la));
        } else if (json_is_array(b)) {
            for (size_t i = 0; !in && i < json_array_size(b); i++)
                in = ct_equal(a, json_array_get(b, i));
        } else if (json_is_object(b)) {
            in = json_is_string(a) && json_object_get(b, json_string_value(a)) != NULL;
        } else if (b) {
            return fail(c, n, "a %s is not a container for 'in'", type_name(b));
        }
        *out = in == (op == CT_OP_IN);
        return true;
    }
    int cmp;
    double x, y;
    if (json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        cmp = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
        if (cmp == 0) cmp = la < lb ? -1 : la > lb;
    } else if (ct_to_double(a, &x) && ct_to_double(b, &y)) {
        cmp = x < y ? -1 : x > y;
    } else {
        return fail(c, n, "'%s' and '%s' cannot be ordered", type_name(a), type_name(b));
    }
    *out = op == CT_OP_LT   ? cmp < 0
           : op == CT_OP_LE ? cmp <= 0
           : op == CT_OP_GT ? cmp > 0
                            : cmp >= 0;
    return true;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static bool run_test(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                     bool *out) {
    json_t *x = arg(a, 0, NULL, NULL);
    if (!strcmp(name, "defined"))
        *out = v != NULL;
    else if (!strcmp(name, "undefined"))
        *out = v == NULL;
    else if (!strcmp(name, "none"))
        *out = json_is_null(v);
    else if (!strcmp(name, "string"))
        *out = json_is_string(v);
    else if (!strcmp(name, "number"))
        *out = json_is_number(v) || json_is_boolean(v);
    else if (!strcmp(name, "integer"))
        *out = json_is_integer(v);
    else if (!strcmp(name, "float"))
        *out = json_is_real(v);
    else if (!strcmp(name, "boolean"))
        *out = json_is_boolean(v);
    else if (!strcmp(name, "true"))
        *out = json_is_true(v);
    else if (!strcmp(name, "false"))
        *out = json_is_false(v);
    else if (!strcmp(name, "mapping"))
        *out = json_is_object(v);
    else if (!strcmp(name, "iterable"))
        *out = !v || json_is_string(v) || json_is_array(v) || json_is_object(v);
    else if (!strcmp(name, "sequence"))
        *out = json_is_string(v) || json_is_array(v) || json_is_object(v);
    else if (!strcmp(name, "callable"))
        *out = false;
    else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        *out = json_is_string(v);
        for (size_t i = 0; *out && i < json_string_length(v); i++) {
            char ch = json_string_value(v)[i];
            if (name[0] == 'l' ? isupper((unsigned char)ch) : islower((unsigned char)ch))
                *out = false;
        }
    } else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!is_int(v)) return fail(c, n, "'%s' tests an integer, not %s", name, type_name(v));
        *out = (int_of(v) % 2 != 0) == (name[0] == 'o');
    } else if (!strcmp(name, "divisibleby")) {
        if (!is_int(v) || !is_int(x) || int_of(x) == 0)
            return fail(c, n, "'divisibleby' takes two integers, the divisor not 0");
        *out = int_of(v) % int_of(x) == 0;
    } else if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) {
        *out = ct_equal(v, x);
    } else if (!strcmp(name, "ne") || !strcmp(name, "!=")) {
        *out = !ct_equal(v, x);
    } else if (!strcmp(name, "sameas")) {
        *out = v && x && (json_is_null(v) || json_is_boolean(v)) ? json_equal(v, x) : v == x;
    } else if (!strcmp(name, "lt") || !strcmp(name, "le") || !strcmp(name, "gt") ||
               !strcmp(name, "ge") || !strcmp(name, "in")) {
        int op = !strcmp(name, "lt")   ? CT_OP_LT
                 : !strcmp(name, "le") ? CT_OP_LE
                 : !strcmp(name, "gt") ? CT_OP_GT
                 : !strcmp(name, "ge") ? CT_OP_GE
                                       : CT_OP_IN;
        return compare(c, n, op, v, x, out);
    } else {
        return fail(c, n, "unknown test '%s'", name);
    }
    return true;
}

/* ---- filters -------------------------------------------------------------------------------- */

static bool filter(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                   json_t **out);

/* str(v) as a new string value. */
static bool to_str(ctx_t *c, const ct_node_t *n, const json_t *v, json_t **out) {
    if (json_is_string(v)) {
        *out = json_incref((json_t *)v);
        return true;
    }
    ct_buf_t b = tmp_buf(c);
    if (!ct_buf_str(&b, v)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

/* Strips code points found in chars (NULL: Python's whitespace) from the left and/or right. */
static bool strip(ctx_t *c, const ct_node_t *n, const json_t *v, const json_t *chars, bool left,
                  bool right, json_t **out) {
    const char *s = json_string_value(v);
    size_t a = 0, e = json_string_length(v), size;
    const char *set = chars ? json_string_value(chars) : NULL;
    size_t set_len = chars ? json_string_length(chars) : 0;
#define CT_STRIP_HIT(p, len)                                                                       \
    (set ? ((size = 1, ((unsigned char)(p)[0] >= 0xc0)                                             \
                           ? (size = ((unsigned char)(p)[0] >= 0xf0   ? 4                          \
                                      : (unsigned char)(p)[0] >= 0xe0 ? 3                          \
                                                                      : 2))                        \
                           : 0),                                                                   \
            size <= (len) && ct_memmem(set, set_len, (p), size) != NULL)                           \
         : ct_space_at((p), (len), &size))
    while (left && a < e && CT_STRIP_HIT(s + a, e - a))
        a += size;
    while (right && e > a) {
        size_t b = e - 1;
        while (b > a && ((unsigned char)s[b] & 0xc0) == 0x80)
            b--;
        if (!CT_STRIP_HIT(s + b, e - b)) break;
        e = b;
    }
#undef CT_STRIP_HIT
    return str_value(c, n, s + a, e - a, out);
}

static locale_t utf8_locale_loc;

static void utf8_locale_init(void) {
    utf8_locale_loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

/* The C.UTF-8 locale for towupper/towlower beyond ASCII (glibc has it built in); NULL: ASCII. */
static locale_t utf8_locale(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, utf8_locale_init);
    return utf8_locale_loc;
}

static int decode_cp(const unsigned char *s, size_t n, size_t *size) {
    *size = 1;
    if (s[0] < 0x80) return s[0];
    int len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2;
    if ((size_t)len > n) return s[0];
    int cp = s[0] & (0x3f >> (len - 1));
    for (int i = 1; i < len; i++)
        cp = cp << 6 | (s[i] & 0x3f);
    *size = (size_t)len;
    return cp;
}

/* upper, lower, capitalize (first upper, the rest lower) and title (a letter after a non-letter
 * upper, other letters lower), code point by code point (Python's special cases such as "ß" ->
 * "SS" are not made). */
static bool change_case(ctx_t *c, const ct_node_t *n, const json_t *v, char mode, json_t **out) {
    const unsigned char *s = (const unsigned char *)json_string_value(v);
    size_t len = json_string_length(v), size;
    locale_t loc = utf8_locale();
    ct_buf_t b = tmp_buf(c);
    bool word_start = true;
    for (size_t i = 0; i < len; i += size) {
        int cp = decode_cp(s + i, len - i, &size);
        bool alpha = loc ? iswalpha_l((wint_t)cp, loc) != 0 : isalpha(cp) != 0;
        bool up = mode == 'u' || (mode == 'c' && i == 0) || (mode == 't' && word_start);
        if (mode == 't') word_start = !alpha;
        int m = up ? (loc ? (int)towupper_l((wint_t)cp, loc) : (cp < 0x80 ? toupper(cp) : cp))
                   : (loc ? (int)towlower_l((wint_t)cp, loc) : (cp < 0x80 ? tolower(cp) : cp));
        if (mode == 't' && !alpha) m = cp;
        char enc[4];
        if (!ct_buf_add(&b, enc, ct_utf8_encode((unsigned)m, enc))) return too_long(c, n, &b);
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

static bool replace(ctx_t *c, const ct_node_t *n, const json_t *v, const json_t *old,
                    const json_t *new, long long count, json_t **out) {
    const char *s = json_string_value(v), *o = json_string_value(old);
    size_t len = json_string_length(v), lo = json_string_length(old);
    ct_buf_t b = tmp_buf(c);
    size_t i = 0;
    long long done = 0;
    if (lo == 0) { /* Python inserts new between code points */
        for (; i <= len; done++) {
            if ((count < 0 || done < count) &&
                !ct_buf_add(&b, json_string_value(new), json_string_length(new)))
                return too_long(c, n, &b);
            if (i == len) break;
            size_t e = ct_utf8_offset(s + i, len - i, 1);
            if (!ct_buf_add(&b, s + i, e)) return too_long(c, n, &b);
            i += e;
        }
        return buf_value(c, n, &b, out);
    }
    while (i < len) {
        const char *hit = (count < 0 || done < count) ? ct_memmem(s + i, len - i, o, lo) : NULL;
        size_t upto = hit ? (size_t)(hit - s) : len;
        if (!ct_buf_add(&b, s + i, upto - i)) return too_long(c, n, &b);
        if (!hit) break;
        if (!ct_buf_add(&b, json_string_value(new), json_string_length(new)))
            return too_long(c, n, &b);
        i = upto + lo;
        done++;
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

static bool split(ctx_t *c, const ct_node_t *n, const json_t *v, const json_t *sep,
                  long long maxsplit, json_t **out) {
    const char *s = json_string_value(v);
    size_t len = json_string_length(v), i = 0, size;
    json_t *r = json_array();
    if (!r) return fail(c, n, "out of memory");
    long long done = 0;
    if (sep && json_string_length(sep) == 0) {
        json_decref(r);
        return fail(c, n, "split: empty separator");
    }
    while (i <= len && r) {
        if (!step(c, n, 1)) {
            json_decref(r);
            return false;
        }
        size_t a = i, e;
        if (!sep) {
            while (a < len && ct_space_at(s + a, len - a, &size))
                a += size;
            if (a >= len) break;
            e = a;
            if (maxsplit >= 0 && done >= maxsplit) {
                e = len;
                while (e > a) { /* Python keeps the rest but strips its trailing whitespace */
                    size_t b = e - 1;
                    while (b > a && ((unsigned char)s[b] & 0xc0) == 0x80)
                        b--;
                    if (!ct_space_at(s + b, e - b, &size)) break;
                    e = b;
                }
            } else {
                while (e < len && !ct_space_at(s + e, len - e, &size))
                    e += ct_utf8_offset(s + e, len - e, 1);
            }
            i = e;
        } else {
            const char *hit =
                maxsplit >= 0 && done >= maxsplit
                    ? NULL
                    : ct_memmem(s + a, len - a, json_string_value(sep), json_string_length(sep));
            e = hit ? (size_t)(hit - s) : len;
            i = hit ? e + json_string_length(sep) : len + 1;
        }
        json_t *piece = ct_string(s + a, e - a);
        if (!piece || json_array_append_new(r, piece) != 0) {
            json_decref(r);
            r = NULL;
        }
        done++;
    }
    return new_value(c, n, r, out);
}

/* str.join over an iterable (attribute: each item's attribute). */
static bool join(ctx_t *c, const ct_node_t *n, json_t *items, const json_t *sep, const json_t *attr,
                 json_t **out) {
    ct_buf_t b = tmp_buf(c);
    if (json_is_string(items)) {
        *out = json_incref(items);
        return true;
    }
    if (items && !json_is_array(items))
        return fail(c, n, "join takes a list, not %s", type_name(items));
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *x = json_array_get(items, i);
        if (attr) x = json_is_object(x) ? json_object_get(x, json_string_value(attr)) : NULL;
        if ((i && sep && !ct_buf_add(&b, json_string_value(sep), json_string_length(sep))) ||
            !ct_buf_str(&b, x))
            return too_long(c, n, &b);
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

/* An iterable as a list: lists as they are, dict keys, string code points, undefined empty. */
static bool as_list(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out) {
    if (json_is_array(v)) {
        *out = json_incref(v);
        return true;
    }
    json_t *r = json_array();
    if (!r) return fail(c, n, "out of memory");
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) if (json_array_append_new(r, json_string(k)) != 0) break;
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);
        for (size_t i = 0; i < len;) {
            size_t e = ct_utf8_offset(s + i, len - i, 1);
            json_array_append_new(r, ct_string(s + i, e));
            i += e;
        }
    } else if (v) {
        json_decref(r);
        return fail(c, n, "'%s' object is not iterable", type_name(v));
    }
    *out = r;
    return true;
}

static bool items(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out) {
    json_t *r = json_array();
    if (!r) return fail(c, n, "out of memory");
    if (v && !json_is_object(v)) {
        json_decref(r);
        return fail(c, n, "items() of a %s; it takes a dict", type_name(v));
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        json_t *pair = json_pack("[sO]", k, x);
        if (!pair || json_array_append_new(r, pair) != 0) {
            json_decref(r);
            return fail(c, n, "out of memory");
        }
    }
    *out = r;
    return true;
}

/* item.attr, with dots for nested attributes ("function.name"). */
static json_t *attr_path(json_t *item, const char *path) {
    char key[256];
    while (item && *path) {
        const char *dot = strchr(path, '.');
        size_t len = dot ? (size_t)(dot - path) : strlen(path);
        if (len >= sizeof key) return NULL;
        memcpy(key, path, len);
        key[len] = '\0';
        if (json_is_object(item))
            item = json_object_get(item, key);
        else if (json_is_array(item) && isdigit((unsigned char)key[0]))
            item = json_array_get(item, (size_t)strtoul(key, NULL, 10));
        else
            item = NULL;
        path += len + (dot != NULL);
    }
    return item;
}

/* select/reject/selectattr/rejectattr/map over a list. */
static bool select_items(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                         json_t **out) {
    bool by_attr = strstr(name, "attr") != NULL, keep = name[0] == 's', is_map = name[0] == 'm';
    json_t *list;
    if (!as_list(c, n, v, &list)) return false;
    json_t *r = json_array();
    const json_t *attr = NULL;
    bool ok = r != NULL;
    if (!ok) fail(c, n, "out of memory");
    args_t rest = {0};
    int first = by_attr ? 1 : 0;
    if (is_map) {
        bool found;
        attr = arg(a, 0, "attribute", &found);
        if (found && a->name[0] && strcmp(a->name[0], "attribute") == 0)
            first = -1;
        else
            attr = NULL;
    } else if (by_attr) {
        attr = arg(a, 0, NULL, NULL);
    }
    if (ok && (by_attr || (is_map && attr)) && !json_is_string(attr))
        ok = fail(c, n, "%s takes an attribute name", name);
    const json_t *test = NULL;
    if (ok && first >= 0) {
        int k = 0;
        for (int i = 0; i < a->n; i++) /* the test or filter name, then its arguments */
            if (!a->name[i] && k++ >= first) {
                if (!test) {
                    test = a->v[i];
                    continue;
                }
                rest.name[rest.n] = NULL;
                rest.v[rest.n++] = a->v[i];
            }
        if (test && !json_is_string(test)) ok = fail(c, n, "%s takes a test or filter name", name);
        if (ok && is_map && !test) ok = fail(c, n, "map takes a filter name or attribute=");
    }
    for (size_t i = 0; ok && i < json_array_size(list); i++) {
        json_t *item = json_array_get(list, i);
        json_t *x = attr ? attr_path(item, json_string_value(attr)) : item;
        if (is_map) {
            json_t *m = NULL;
            if (!attr)
                ok = filter(c, n, json_string_value(test), x, &rest, &m);
            else {
                bool found;
                json_t *dflt = arg(a, 0, "default", &found);
                m = json_incref(x ? x : found ? dflt : NULL);
            }
            if (ok && json_array_append_new(r, m ? m : json_null()) != 0)
                ok = fail(c, n, "out of memory");
            continue;
        }
        bool hit = ct_truthy(x);
        if (test && !run_test(c, n, json_string_value(test), x, &rest, &hit)) ok = false;
        if (ok && hit == keep && json_array_append(r, item) != 0) ok = fail(c, n, "out of memory");
    }
    json_decref(list);
    if (!ok) {
        json_decref(r);
        return false;
    }
    *out = r;
    return true;
}

static bool escape_html(ctx_t *c, const ct_node_t *n, const json_t *v, json_t **out) {
    ct_buf_t b = tmp_buf(c);
    const char *s = json_string_value(v);
    for (size_t i = 0; i < json_string_length(v); i++) {
        const char *e = s[i] == '&'    ? "&amp;"
                        : s[i] == '<'  ? "&lt;"
                        : s[i] == '>'  ? "&gt;"
                        : s[i] == '"'  ? "&#34;"
                        : s[i] == '\'' ? "&#39;"
                                       : NULL;
        if (!ct_buf_add(&b, e ? e : s + i, e ? strlen(e) : 1)) return too_long(c, n, &b);
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

static bool tojson(ctx_t *c, const ct_node_t *n, json_t *v, const args_t *a, json_t **out) {
    long long indent = -1;
    bool found;
    json_t *ascii = arg(a, 0, "ensure_ascii", &found);
    if (found && ct_truthy(ascii)) return fail(c, n, "tojson: ensure_ascii=True is not supported");
    if (arg(a, 2, "separators", &found), found)
        return fail(c, n, "tojson: separators= is not supported");
    if (!int_arg(c, n, a, 1, "indent", "tojson's indent", -1, &indent)) return false;
    if (indent > 64) return fail(c, n, "tojson: indent %lld is over 64", indent);
    json_t *sort = arg(a, 3, "sort_keys", NULL);
    ct_buf_t b = tmp_buf(c);
    char err[128] = "";
    if (!ct_buf_json(&b, v, (int)indent, ct_truthy(sort), err, sizeof err)) {
        if (err[0]) {
            free(b.data);
            return fail(c, n, "%s", err);
        }
        return too_long(c, n, &b);
    }
    return buf_value(c, n, &b, out);
}

/* Python's a < b for sorting (strings compared case-blind unless case_sensitive, as Jinja's
 * sorting filters do); false with an error for values that have no order. */
static bool less(ctx_t *c, const ct_node_t *n, json_t *a, json_t *b, bool case_sensitive,
                 bool *out) {
    if (case_sensitive || !json_is_string(a) || !json_is_string(b))
        return compare(c, n, CT_OP_LT, a, b, out);
    const char *x = json_string_value(a), *y = json_string_value(b);
    size_t lx = json_string_length(a), ly = json_string_length(b), i = 0;
    for (; i < lx && i < ly; i++) {
        int p = tolower((unsigned char)x[i]), q = tolower((unsigned char)y[i]);
        if (p != q) {
            *out = p < q;
            return true;
        }
    }
    *out = lx - i < ly - i;
    return true;
}

/* A stable insertion sort of list's items by key(item) (attribute path, or the item itself;
 * for dictsort pairs, key_index 0 or 1), each comparison a step. */
static bool sort_list(ctx_t *c, const ct_node_t *n, json_t *list, const char *attr, int key_index,
                      bool case_sensitive, bool reverse) {
    size_t len = json_array_size(list);
    for (size_t i = 1; i < len; i++) {
        json_t *item = json_incref(json_array_get(list, i));
        json_t *ki = key_index >= 0 ? json_array_get(item, (size_t)key_index)
                     : attr         ? attr_path(item, attr)
                                    : item;
        size_t j = i;
        while (j > 0) {
            json_t *prev = json_array_get(list, j - 1);
            json_t *kp = key_index >= 0 ? json_array_get(prev, (size_t)key_index)
                         : attr         ? attr_path(prev, attr)
                                        : prev;
            bool lt;
            if (!step(c, n, 1) ||
                !less(c, n, reverse ? kp : ki, reverse ? ki : kp, case_sensitive, &lt)) {
                json_decref(item);
                return false;
            }
            if (!lt) break;
            json_array_set(list, j, prev);
            j--;
        }
        json_array_set_new(list, j, item);
    }
    return true;
}

/* dictsort, unique, sum, min, max: Jinja's list filters over an iterable. */
static bool list_filter(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                        json_t **out) {
    json_t *list = NULL, *r = NULL;
    bool cs = ct_truthy(arg(a, 0, "case_sensitive", NULL)), ok = true;
    const json_t *attr = NULL;
    if (!strcmp(name, "dictsort")) {
        if (!json_is_object(v)) return fail(c, n, "dictsort takes a dict, not %s", type_name(v));
        json_t *by = arg(a, 1, "by", NULL);
        bool by_value = json_is_string(by) && !strcmp(json_string_value(by), "value");
        if (!items(c, n, v, &r)) return false;
        if (!sort_list(c, n, r, NULL, by_value, cs, ct_truthy(arg(a, 2, "reverse", NULL)))) {
            json_decref(r);
            return false;
        }
        *out = r;
        return true;
    }
    if (!as_list(c, n, v, &list)) return false;
    if (!strcmp(name, "sum")) {
        ok = str_arg(c, n, a, 0, "attribute", "sum", &attr);
        json_t *start = arg(a, 1, "start", NULL);
        json_t *total = start ? json_incref(start) : json_integer(0);
        for (size_t i = 0; ok && i < json_array_size(list); i++) {
            json_t *x = json_array_get(list, i), *t = NULL;
            if (attr) x = attr_path(x, json_string_value(attr));
            ok = arith(c, n, CT_OP_ADD, total, x, &t);
            json_decref(total);
            total = t;
        }
        r = ok ? total : (json_decref(total), NULL);
    } else if (!strcmp(name, "unique")) {
        ok = str_arg(c, n, a, 1, "attribute", "unique", &attr);
        r = json_array();
        for (size_t i = 0; ok && r && i < json_array_size(list); i++) {
            json_t *x = json_array_get(list, i);
            json_t *kx = attr ? attr_path(x, json_string_value(attr)) : x;
            bool seen = false;
            for (size_t j = 0; ok && !seen && j < json_array_size(r); j++) {
                json_t *y = json_array_get(r, j);
                json_t *ky = attr ? attr_path(y, json_string_value(attr)) : y;
                bool lt1, lt2;
                ok = step(c, n, 1);
                if (ok && !cs && json_is_string(kx) && json_is_string(ky)) {
                    ok = less(c, n, kx, ky, false, &lt1) && less(c, n, ky, kx, false, &lt2);
                    seen = ok && !lt1 && !lt2;
                } else {
                    seen = ct_equal(kx, ky);
                }
            }
            if (ok && !seen) json_array_append(r, x);
        }
    } else { /* min, max */
        ok = str_arg(c, n, a, 1, "attribute", name, &attr);
        json_t *best = NULL;
        for (size_t i = 0; ok && i < json_array_size(list); i++) {
            json_t *x = json_array_get(list, i);
            bool lt = false;
            if (best)
                ok = less(c, n, attr ? attr_path(x, json_string_value(attr)) : x,
                          attr ? attr_path(best, json_string_value(attr)) : best, cs, &lt);
            if (ok && name[1] == 'a' && best) /* max: x > best */
                ok = less(c, n, attr ? attr_path(best, json_string_value(attr)) : best,
                          attr ? attr_path(x, json_string_value(attr)) : x, cs, &lt);
            if (ok && (!best || lt)) best = x;
        }
        r = json_incref(best);
    }
    json_decref(list);
    if (!ok) {
        json_decref(r);
        return false;
    }
    *out = r;
    return true;
}

/* indent(width=4, first=False, blank=False): Jinja's, lines split at "\n" only (Python's
 * splitlines also splits at \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029). */
static bool indent(ctx_t *c, const ct_node_t *n, const json_t *v, const args_t *a, json_t **out) {
    bool found;
    json_t *w = arg(a, 0, "width", &found);
    ct_buf_t pad = tmp_buf(c), b = tmp_buf(c);
    if (found && json_is_string(w)) {
        if (!ct_buf_add(&pad, json_string_value(w), json_string_length(w)))
            return too_long(c, n, &pad);
    } else {
        long long k;
        if (!int_arg(c, n, a, 0, "width", "indent", 4, &k)) return false;
        for (long long i = 0; i < k && i < 256; i++)
            if (!ct_buf_add(&pad, " ", 1)) return too_long(c, n, &pad);
    }
    if (!ct_buf_add(&pad, "", 0)) return too_long(c, n, &pad);
    bool first = ct_truthy(arg(a, 1, "first", NULL)), blank = ct_truthy(arg(a, 2, "blank", NULL));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v), i = 0;
    bool ok = !first || ct_buf_add(&b, pad.data, pad.len);
    for (bool line0 = true; ok; line0 = false) { /* the pieces between newlines, the last too */
        const char *nl = memchr(s + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - s) : len;
        if (!line0)
            ok = ct_buf_add(&b, "\n", 1) &&
                 ((!blank && e == i) || ct_buf_add(&b, pad.data, pad.len));
        if (ok) ok = ct_buf_add(&b, s + i, e - i);
        if (!nl) break;
        i = e + 1;
    }
    free(pad.data);
    if (!ok) return too_long(c, n, &b);
    if (!b.data && !ct_buf_add(&b, "", 0)) return too_long(c, n, &b);
    return buf_value(c, n, &b, out);
}

static bool filter(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                   json_t **out) {
    *out = NULL;
    bool found;
    const json_t *s1 = NULL, *s2 = NULL;
    long long k;
    if (!strcmp(name, "tojson")) return tojson(c, n, v, a, out);
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        json_t *dflt = arg(a, 0, "default_value", &found);
        bool boolean = ct_truthy(arg(a, 1, "boolean", NULL));
        json_t *r = (boolean ? ct_truthy(v) : v != NULL) ? v : found ? dflt : NULL;
        if (!r) return str_value(c, n, "", 0, out);
        *out = json_incref(r);
        return true;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        size_t len = !v ? 0
                     : json_is_string(v)
                         ? ct_utf8_count(json_string_value(v), json_string_length(v))
                     : json_is_array(v)  ? json_array_size(v)
                     : json_is_object(v) ? json_object_size(v)
                                         : (size_t)-1;
        if (len == (size_t)-1) return fail(c, n, "object of type '%s' has no len()", type_name(v));
        return new_value(c, n, json_integer((json_int_t)len), out);
    }
    if (!strcmp(name, "items")) return items(c, n, v, out);
    if (!strcmp(name, "list")) {
        if (!as_list(c, n, v, out)) return false;
        if (*out == v) { /* a copy, as Python's list() */
            json_t *copy = json_copy(v);
            json_decref(v);
            return new_value(c, n, copy, out);
        }
        return true;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        json_t *list;
        if (!as_list(c, n, v, &list)) return false;
        size_t len = json_array_size(list);
        *out = len ? json_incref(json_array_get(list, name[0] == 'f' ? 0 : len - 1)) : NULL;
        json_decref(list);
        return true;
    }
    if (!strcmp(name, "reverse")) {
        json_t *list, *r;
        if (!as_list(c, n, v, &list)) return false;
        r = json_array();
        for (size_t i = json_array_size(list); r && i > 0; i--)
            json_array_append(r, json_array_get(list, i - 1));
        json_decref(list);
        if (r && json_is_string(v)) {
            json_t *sep = json_string("");
            bool ok = join(c, n, r, sep, NULL, out);
            json_decref(sep);
            json_decref(r);
            return ok;
        }
        return new_value(c, n, r, out);
    }
    if (!strcmp(name, "join")) {
        if (!str_arg(c, n, a, 0, "d", "join", &s1) ||
            !str_arg(c, n, a, 1, "attribute", "join", &s2))
            return false;
        return join(c, n, v, s1, s2, out);
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") ||
        !strcmp(name, "rejectattr") || !strcmp(name, "map"))
        return select_items(c, n, name, v, a, out);
    if (!strcmp(name, "string")) return to_str(c, n, v, out);
    if (!strcmp(name, "safe")) {
        *out = json_incref(v);
        return true;
    }
    if (!strcmp(name, "int") || !strcmp(name, "float")) {
        double x = 0;
        if (json_is_string(v)) {
            char *end;
            char buf[64];
            snprintf(buf, sizeof buf, "%s", json_string_value(v));
            x = strtod(buf, &end);
            while (isspace((unsigned char)*end))
                end++;
            if (*end || end == buf) x = 0;
        } else {
            ct_to_double(v, &x);
        }
        if (name[0] == 'f') return new_value(c, n, json_real(x), out);
        if (!(x > -9.2e18 && x < 9.2e18)) x = 0;
        return new_value(c, n, json_integer((json_int_t)x), out);
    }
    if (!strcmp(name, "dictsort") || !strcmp(name, "unique") || !strcmp(name, "sum") ||
        !strcmp(name, "min") || !strcmp(name, "max"))
        return list_filter(c, n, name, v, a, out);
    if (!strcmp(name, "abs")) {
        if (json_is_integer(v))
            return new_value(c, n, json_integer(llabs(json_integer_value(v))), out);
        double x;
        if (!ct_to_double(v, &x)) return fail(c, n, "abs of a %s", type_name(v));
        return new_value(c, n, json_real(fabs(x)), out);
    }
    /* the string filters take str(v) */
    json_t *s;
    if (!to_str(c, n, v, &s)) return false;
    bool ok = true;
    if (!strcmp(name, "trim")) {
        ok = str_arg(c, n, a, 0, "chars", "trim", &s1) && strip(c, n, s, s1, true, true, out);
    } else if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
               !strcmp(name, "title")) {
        ok = change_case(c, n, s, name[0] == 'u' ? 'u' : name[0] == 'l' ? 'l' : name[0], out);
    } else if (!strcmp(name, "replace")) {
        ok = str_arg(c, n, a, 0, "old", "replace", &s1) &&
             str_arg(c, n, a, 1, "new", "replace", &s2) &&
             int_arg(c, n, a, 2, "count", "replace", -1, &k);
        if (ok && (!s1 || !s2)) ok = fail(c, n, "replace takes the old and the new string");
        if (ok) ok = replace(c, n, s, s1, s2, k, out);
    } else if (!strcmp(name, "indent")) {
        ok = indent(c, n, s, a, out);
    } else if (!strcmp(name, "e") || !strcmp(name, "escape")) {
        ok = escape_html(c, n, s, out);
    } else {
        ok = fail(c, n, "unknown filter '%s'", name);
    }
    json_decref(s);
    return ok;
}

/* ---- calls ---------------------------------------------------------------------------------- */

static bool method(ctx_t *c, const ct_node_t *n, json_t *obj, const char *name, const args_t *a,
                   json_t **out) {
    const json_t *s1 = NULL, *s2 = NULL;
    long long k;
    *out = NULL;
    if (json_is_object(obj)) {
        if (!strcmp(name, "items")) return items(c, n, obj, out);
        if (!strcmp(name, "keys")) return as_list(c, n, obj, out);
        if (!strcmp(name, "values")) {
            json_t *r = json_array();
            const char *key;
            json_t *x;
            json_object_foreach(obj, key, x) if (r) json_array_append(r, x);
            return new_value(c, n, r, out);
        }
        if (!strcmp(name, "get")) {
            bool found;
            json_t *key = arg(a, 0, NULL, NULL), *dflt = arg(a, 1, NULL, &found);
            json_t *x = json_is_string(key) ? json_object_get(obj, json_string_value(key)) : NULL;
            *out = json_incref(x ? x : found ? dflt : json_null());
            return true;
        }
    }
    if (json_is_string(obj)) {
        if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
            json_t *chars = arg(a, 0, NULL, NULL);
            if (chars && !json_is_null(chars) && !json_is_string(chars))
                return fail(c, n, "%s takes a string", name);
            return strip(c, n, obj, json_is_string(chars) ? chars : NULL, name[0] != 'r',
                         name[0] != 'l', out);
        }
        if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
            !strcmp(name, "title"))
            return change_case(c, n, obj,
                               name[0] == 'u'   ? 'u'
                               : name[0] == 'l' ? 'l'
                                                : name[0],
                               out);
        if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
            json_t *p = arg(a, 0, NULL, NULL);
            bool hit = false;
            for (size_t i = 0; i < (json_is_array(p) ? json_array_size(p) : 1); i++) {
                json_t *q = json_is_array(p) ? json_array_get(p, i) : p;
                if (!json_is_string(q))
                    return fail(c, n, "%s takes a string or a tuple of them", name);
                size_t lq = json_string_length(q), ls = json_string_length(obj);
                const char *at = json_string_value(obj) + (name[0] == 's' ? 0 : ls - lq);
                hit |= lq <= ls && memcmp(at, json_string_value(q), lq) == 0;
            }
            return new_value(c, n, json_boolean(hit), out);
        }
        if (!strcmp(name, "split")) {
            json_t *sep = arg(a, 0, "sep", NULL);
            if (sep && !json_is_null(sep) && !json_is_string(sep))
                return fail(c, n, "split takes a string");
            return int_arg(c, n, a, 1, "maxsplit", "split", -1, &k) &&
                   split(c, n, obj, json_is_string(sep) ? sep : NULL, k, out);
        }
        if (!strcmp(name, "replace")) {
            if (!str_arg(c, n, a, 0, NULL, "replace", &s1) ||
                !str_arg(c, n, a, 1, NULL, "replace", &s2) ||
                !int_arg(c, n, a, 2, NULL, "replace", -1, &k))
                return false;
            if (!s1 || !s2) return fail(c, n, "replace takes the old and the new string");
            return replace(c, n, obj, s1, s2, k, out);
        }
        if (!strcmp(name, "find") || !strcmp(name, "count")) {
            if (!str_arg(c, n, a, 0, NULL, name, &s1)) return false;
            if (!s1) return fail(c, n, "%s takes a string", name);
            const char *s = json_string_value(obj), *sub = json_string_value(s1);
            size_t len = json_string_length(obj), ls = json_string_length(s1);
            if (name[0] == 'f') {
                const char *hit = ct_memmem(s, len, sub, ls);
                return new_value(
                    c, n, json_integer(hit ? (json_int_t)ct_utf8_count(s, (size_t)(hit - s)) : -1),
                    out);
            }
            long long count = 0;
            for (const char *p = s; ls && (p = ct_memmem(p, len - (size_t)(p - s), sub, ls));
                 p += ls)
                count++;
            return new_value(c, n, json_integer(ls ? count : (json_int_t)ct_utf8_count(s, len) + 1),
                             out);
        }
        if (!strcmp(name, "join")) return join(c, n, arg(a, 0, NULL, NULL), obj, NULL, out);
        if (!strcmp(name, "format"))
            return fail(c, n, "str.format is not supported; use ~ or + to join strings");
    }
    if (!obj) return fail(c, n, "calling '%s' on an undefined value", name);
    return fail(c, n, "'%s' has no method '%s' here (the sandbox is immutable)", type_name(obj),
                name);
}

static bool call_macro(ctx_t *c, const ct_node_t *n, const ct_node_t *m, const args_t *a,
                       json_t **out) {
    if (!step(c, n, 1)) return false;
    if (c->depth >= DSLA_CHAT_TEMPLATE_DEPTH_MAX)
        return fail(c, n, "macro calls nested deeper than %d (DSLA_CHAT_TEMPLATE_DEPTH_MAX)",
                    DSLA_CHAT_TEMPLATE_DEPTH_MAX);
    int positional = 0;
    for (int i = 0; i < a->n; i++)
        positional += !a->name[i];
    if (positional > m->n_names)
        return fail(c, n, "macro '%s' takes %d arguments, %d given", m->str, m->n_names,
                    positional);
    int saved_floor = c->floor;
    if (!push_scope(c, n)) return false;
    c->floor = c->n_scopes - 1;
    c->depth++;
    bool ok = true;
    for (int i = 0; ok && i < m->n_names; i++) {
        bool found;
        json_t *v = arg(a, i, m->names[i], &found);
        if (!found && m->kids[i + 1]) {
            json_t *d = NULL;
            ok = eval(c, m->kids[i + 1], &d);
            if (ok) ok = assign(c, n, m->names[i], d);
            json_decref(d);
            continue;
        }
        if (found) ok = assign(c, n, m->names[i], v);
    }
    ct_buf_t b = tmp_buf(c), *saved_out = c->out;
    c->out = &b;
    if (ok) ok = render(c, m->kids[0]);
    c->out = saved_out;
    c->depth--;
    pop_scope(c);
    c->floor = saved_floor;
    if (!ok) {
        free(b.data);
        return false;
    }
    return buf_value(c, n, &b, out);
}

static bool call_builtin(ctx_t *c, const ct_node_t *n, const char *name, const args_t *a,
                         json_t **out) {
    if (!strcmp(name, "raise_exception")) {
        json_t *msg = arg(a, 0, "message", NULL);
        ct_buf_t b = tmp_buf(c);
        b.limit = 512;
        ct_buf_str(&b, msg);
        c->failed = true;
        snprintf(c->err, sizeof c->err, "chat template: %s", b.data ? b.data : "");
        free(b.data);
        return false;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        json_t *ns = json_object();
        bool ok = ns != NULL;
        for (int i = 0; ok && i < a->n; i++) {
            if (!a->name[i]) {
                if (json_is_object(a->v[i]))
                    ok = json_object_update(ns, a->v[i]) == 0;
                else {
                    json_decref(ns);
                    return fail(c, n, "%s() takes name=value arguments", name);
                }
            } else {
                ok = json_object_set(ns, a->name[i], a->v[i] ? a->v[i] : json_null()) == 0;
            }
        }
        if (ok && name[0] == 'n') ok = json_array_append(c->namespaces, ns) == 0;
        if (!ok) {
            json_decref(ns);
            return fail(c, n, "out of memory");
        }
        *out = ns;
        return true;
    }
    if (!strcmp(name, "range")) {
        long long lo = 0, hi, st = 1;
        for (int i = 0; i < a->n; i++)
            if (!json_is_integer(a->v[i])) return fail(c, n, "range takes integers");
        if (a->n == 1)
            hi = json_integer_value(a->v[0]);
        else if (a->n == 2 || a->n == 3) {
            lo = json_integer_value(a->v[0]);
            hi = json_integer_value(a->v[1]);
            if (a->n == 3) st = json_integer_value(a->v[2]);
        } else
            return fail(c, n, "range takes 1 to 3 integers");
        if (st == 0) return fail(c, n, "range step cannot be zero");
        double count = st > 0 ? ceil(((double)hi - lo) / st) : ceil(((double)lo - hi) / -st);
        if (count < 0) count = 0;
        if (!step(c, n, (long long)fmin(count, 1e18))) return false;
        json_t *r = json_array();
        for (long long i = 0, v = lo; r && i < (long long)count; i++, v += st)
            json_array_append_new(r, json_integer(v));
        return new_value(c, n, r, out);
    }
    if (!strcmp(name, "strftime_now")) {
        json_t *fmt = arg(a, 0, NULL, NULL);
        if (!json_is_string(fmt)) return fail(c, n, "strftime_now takes a format string");
        time_t now = time(NULL);
        struct tm tm;
        char buf[256];
        localtime_r(&now, &tm);
        size_t len = strftime(buf, sizeof buf, json_string_value(fmt), &tm);
        return str_value(c, n, buf, len, out);
    }
    return fail(c, n, "'%s' is not callable", name);
}

static bool eval_call(ctx_t *c, const ct_node_t *n, json_t **out) {
    const ct_node_t *callee = n->kids[0];
    json_t *obj = NULL;
    if (callee->kind == CT_ATTR && !eval(c, callee->kids[0], &obj)) return false;
    args_t a;
    if (!eval_args(c, n, 1, &a)) {
        json_decref(obj);
        return false;
    }
    bool ok;
    if (callee->kind == CT_ATTR) {
        ok = method(c, n, obj, callee->str, &a, out);
    } else if (callee->kind == CT_NAME) {
        json_t *v = lookup(c, callee->str);
        const ct_node_t *m = find_macro(c, v);
        ok = m   ? call_macro(c, n, m, &a, out)
             : v ? fail(c, n, "'%s' is a %s, not callable", callee->str, type_name(v))
                 : call_builtin(c, n, callee->str, &a, out);
    } else {
        ok = fail(c, n, "only macros, functions and methods can be called");
    }
    json_decref(obj);
    args_free(&a);
    return ok;
}

/* ---- expressions ---------------------------------------------------------------------------- */

static bool eval_kids_into(ctx_t *c, const ct_node_t *n, json_t *r) {
    for (int i = 0; i < n->n_kids; i++) {
        json_t *v;
        if (!eval(c, n->kids[i], &v)) return false;
        if (json_array_append_new(r, v ? v : json_null()) != 0) return fail(c, n, "out of memory");
    }
    return true;
}

static bool eval(ctx_t *c, const ct_node_t *n, json_t **out) {
    *out = NULL;
    json_t *a = NULL, *b = NULL;
    bool ok = true, t;
    switch (n->kind) {
    case CT_STR:
        return str_value(c, n, n->str, n->len, out);
    case CT_INT:
        return new_value(c, n, json_integer(n->i), out);
    case CT_FLOAT:
        return new_value(c, n, json_real(n->f), out);
    case CT_BOOL:
        return new_value(c, n, json_boolean(n->i), out);
    case CT_NONE:
        return new_value(c, n, json_null(), out);
    case CT_NAME: {
        json_t *v = lookup(c, n->str);
        if (v) {
            *out = json_incref(v);
            return true;
        }
        bool known = false;
        for (size_t i = 0; !known && i < sizeof builtins / sizeof builtins[0]; i++)
            known = strcmp(builtins[i], n->str) == 0;
        if (known) return str_value(c, n, n->str, strlen(n->str), out); /* defined, callable */
        return true;
    }
    case CT_LIST:
    case CT_TUPLE: {
        json_t *r = json_array();
        if (!r) return fail(c, n, "out of memory");
        if (!eval_kids_into(c, n, r)) {
            json_decref(r);
            return false;
        }
        *out = r;
        return true;
    }
    case CT_DICT: {
        json_t *r = json_object();
        for (int i = 0; r && ok && i + 1 < n->n_kids; i += 2) {
            ok = eval(c, n->kids[i], &a) && eval(c, n->kids[i + 1], &b);
            if (ok && !json_is_string(a)) ok = fail(c, n, "dict keys must be strings here");
            if (ok && json_object_set(r, json_string_value(a), b ? b : json_null()) != 0)
                ok = fail(c, n, "out of memory");
            json_decref(a);
            json_decref(b);
            a = b = NULL;
        }
        if (!ok) {
            json_decref(r);
            return false;
        }
        return new_value(c, n, r, out);
    }
    case CT_ATTR:
        if (!eval(c, n->kids[0], &a)) return false;
        if (!a) {
            ok = fail(c, n, "an undefined value has no attribute '%s'", n->str);
        } else if (json_is_object(a)) {
            *out = json_incref(json_object_get(a, n->str));
        }
        json_decref(a);
        return ok;
    case CT_INDEX:
        ok = eval(c, n->kids[0], &a) && eval(c, n->kids[1], &b) && do_index(c, n, a, b, out);
        break;
    case CT_SLICE: {
        json_t *parts[3] = {NULL, NULL, NULL};
        ok = eval(c, n->kids[0], &a);
        for (int i = 0; ok && i < 3; i++)
            ok = !n->kids[i + 1] || eval(c, n->kids[i + 1], &parts[i]);
        if (ok) ok = do_slice(c, n, a, (const json_t *const *)parts, out);
        for (int i = 0; i < 3; i++)
            json_decref(parts[i]);
        break;
    }
    case CT_CALL:
        return eval_call(c, n, out);
    case CT_FILTER:
    case CT_TEST: {
        args_t args;
        if (!eval(c, n->kids[0], &a)) return false;
        if (!eval_args(c, n, 1, &args)) {
            json_decref(a);
            return false;
        }
        if (n->kind == CT_FILTER) {
            ok = filter(c, n, n->str, a, &args, out);
        } else {
            ok = run_test(c, n, n->str, a, &args, &t);
            if (ok) ok = new_value(c, n, json_boolean(t != (n->i != 0)), out);
        }
        args_free(&args);
        break;
    }
    case CT_UNARY:
        if (!eval(c, n->kids[0], &a)) return false;
        if (n->op == '!') {
            ok = new_value(c, n, json_boolean(!ct_truthy(a)), out);
        } else if (json_is_integer(a) || json_is_boolean(a)) {
            long long i = int_of(a);
            if (n->op == '-' && i == INT64_MIN)
                ok = fail(c, n, "an integer overflow in '-'");
            else
                ok = new_value(c, n, json_integer(n->op == '-' ? -i : i), out);
        } else if (json_is_real(a)) {
            ok = new_value(c, n, json_real(n->op == '-' ? -json_real_value(a) : json_real_value(a)),
                           out);
        } else {
            ok = fail(c, n, "bad operand type for unary %c: '%s'", n->op, type_name(a));
        }
        break;
    case CT_AND:
    case CT_OR:
        if (!eval(c, n->kids[0], &a)) return false;
        if (ct_truthy(a) == (n->kind == CT_OR)) {
            *out = a;
            return true;
        }
        json_decref(a);
        return eval(c, n->kids[1], out);
    case CT_COND:
        if (!eval(c, n->kids[0], &a)) return false;
        t = ct_truthy(a);
        json_decref(a);
        if (t) return eval(c, n->kids[1], out);
        return !n->kids[2] || eval(c, n->kids[2], out);
    case CT_BINARY:
        if (!eval(c, n->kids[0], &a) || !eval(c, n->kids[1], &b)) {
            ok = false;
        } else if (n->op == CT_OP_CONCAT) {
            ct_buf_t buf = tmp_buf(c);
            ok = ct_buf_str(&buf, a) && ct_buf_str(&buf, b) && ct_buf_add(&buf, "", 0)
                     ? buf_value(c, n, &buf, out)
                     : too_long(c, n, &buf);
        } else if (n->op >= CT_OP_EQ) {
            ok = compare(c, n, n->op, a, b, &t) && new_value(c, n, json_boolean(t), out);
        } else {
            ok = arith(c, n, n->op, a, b, out);
        }
        break;
    default:
        ok = fail(c, n, "a statement where an expression belongs");
    }
    json_decref(a);
    json_decref(b);
    if (!ok) {
        json_decref(*out);
        *out = NULL;
    }
    return ok;
}

/* ---- statements ----------------------------------------------------------------------------- */

static bool bind_targets(ctx_t *c, const ct_node_t *n, char *const *names, int n_names,
                         json_t *item) {
    if (n_names == 1) return assign(c, n, names[0], item);
    if (!json_is_array(item) || json_array_size(item) != (size_t)n_names)
        return fail(c, n, "cannot unpack a %s into %d names", type_name(item), n_names);
    for (int i = 0; i < n_names; i++)
        if (!assign(c, n, names[i], json_array_get(item, (size_t)i))) return false;
    return true;
}

static bool render_for(ctx_t *c, const ct_node_t *n) {
    json_t *it = NULL, *list = NULL, *kept = NULL;
    if (!eval(c, n->kids[0], &it)) return false;
    bool ok = as_list(c, n, it, &list);
    json_decref(it);
    if (!ok) return false;
    if (!push_scope(c, n)) {
        json_decref(list);
        return false;
    }
    if (n->kids[1]) { /* the loop's filter runs first: loop.length counts what passes */
        kept = json_array();
        ok = kept != NULL;
        for (size_t i = 0; ok && i < json_array_size(list); i++) {
            json_t *item = json_array_get(list, i), *cond = NULL;
            json_object_clear(c->scopes[c->n_scopes - 1]);
            ok = step(c, n, 1) && bind_targets(c, n, n->names, n->n_names, item) &&
                 eval(c, n->kids[1], &cond);
            if (ok && ct_truthy(cond)) ok = json_array_append(kept, item) == 0;
            json_decref(cond);
        }
        json_decref(list);
        list = kept;
    }
    size_t len = json_array_size(list);
    for (size_t i = 0; ok && i < len; i++) {
        /* each pass starts afresh: what a pass sets is gone in the next, as in Jinja */
        json_object_clear(c->scopes[c->n_scopes - 1]);
        json_t *loop =
            json_pack("{sI sI sI sI sb sb sI sI sI}", "index", (json_int_t)i + 1, "index0",
                      (json_int_t)i, "revindex", (json_int_t)(len - i), "revindex0",
                      (json_int_t)(len - i - 1), "first", i == 0, "last", i + 1 == len, "length",
                      (json_int_t)len, "depth", (json_int_t)1, "depth0", (json_int_t)0);
        if (loop && i > 0) json_object_set(loop, "previtem", json_array_get(list, i - 1));
        if (loop && i + 1 < len) json_object_set(loop, "nextitem", json_array_get(list, i + 1));
        ok = step(c, n, 1) && (loop || fail(c, n, "out of memory")) && assign(c, n, "loop", loop) &&
             bind_targets(c, n, n->names, n->n_names, json_array_get(list, i)) &&
             render(c, n->kids[2]);
        json_decref(loop);
        if (c->flow == FLOW_BREAK) {
            c->flow = FLOW_NONE;
            break;
        }
        c->flow = FLOW_NONE;
    }
    json_object_clear(c->scopes[c->n_scopes - 1]);
    if (ok && len == 0 && n->kids[3]) ok = render(c, n->kids[3]);
    pop_scope(c);
    json_decref(list);
    return ok;
}

static bool render_set(ctx_t *c, const ct_node_t *n) {
    const ct_node_t *target = n->kids[0];
    json_t *v = NULL;
    if (n->kind == CT_SET_BLOCK) {
        ct_buf_t b = tmp_buf(c), *saved = c->out;
        c->out = &b;
        bool ok = render(c, n->kids[1]);
        c->out = saved;
        if (!ok) {
            free(b.data);
            return false;
        }
        if (!buf_value(c, n, &b, &v)) return false;
    } else if (!eval(c, n->kids[1], &v)) {
        return false;
    }
    bool ok;
    if (target->kind == CT_NAME) {
        ok = assign(c, n, target->str, v);
    } else if (target->kind == CT_ATTR) {
        json_t *ns = target->kids[0]->kind == CT_NAME ? lookup(c, target->kids[0]->str) : NULL;
        if (!is_namespace(c, ns))
            ok = fail(c, n,
                      "only a namespace() takes attribute assignments (the sandbox is immutable)");
        else
            ok = json_object_set(ns, target->str, v ? v : json_null()) == 0 ||
                 fail(c, n, "out of memory");
    } else {
        char *names[ARGS_MAX];
        int k = 0;
        ok = true;
        for (int i = 0; ok && i < target->n_kids; i++) {
            if (target->kids[i]->kind != CT_NAME || k == ARGS_MAX)
                ok = fail(c, n, "set unpacks into names");
            else
                names[k++] = target->kids[i]->str;
        }
        if (ok) ok = bind_targets(c, n, names, k, v);
    }
    json_decref(v);
    return ok;
}

static bool render(ctx_t *c, const ct_node_t *n) {
    switch (n->kind) {
    case CT_BODY:
        for (int i = 0; i < n->n_kids; i++) {
            if (!render(c, n->kids[i])) return false;
            if (c->flow != FLOW_NONE) return true;
        }
        return true;
    case CT_TEXT:
        if (!ct_buf_add(c->out, n->str, n->len))
            return fail(c, n, "the rendering passes the output limit of %zu bytes", c->out->limit);
        return true;
    case CT_OUTPUT: {
        json_t *v;
        if (!eval(c, n->kids[0], &v)) return false;
        bool ok = ct_buf_str(c->out, v);
        json_decref(v);
        if (!ok)
            return fail(c, n, "the rendering passes the output limit of %zu bytes", c->out->limit);
        return true;
    }
    case CT_IF:
        for (int i = 0; i + 1 < n->n_kids; i += 2) {
            json_t *v;
            if (!eval(c, n->kids[i], &v)) return false;
            bool t = ct_truthy(v);
            json_decref(v);
            if (t) return render(c, n->kids[i + 1]);
        }
        return n->n_kids % 2 == 0 || render(c, n->kids[n->n_kids - 1]);
    case CT_FOR:
        return render_for(c, n);
    case CT_SET:
    case CT_SET_BLOCK:
        return render_set(c, n);
    case CT_BREAK:
        c->flow = FLOW_BREAK;
        return true;
    case CT_CONTINUE:
        c->flow = FLOW_CONTINUE;
        return true;
    case CT_MACRO: {
        const ct_node_t **m = realloc(c->macros, (size_t)(c->n_macros + 1) * sizeof *m);
        if (m) c->macros = m;
        json_t **mk = m ? realloc(c->macro_markers, (size_t)(c->n_macros + 1) * sizeof *mk) : NULL;
        if (mk) c->macro_markers = mk;
        json_t *marker = mk ? json_object() : NULL;
        if (!marker) return fail(c, n, "out of memory");
        c->macros[c->n_macros] = n;
        c->macro_markers[c->n_macros++] = marker;
        return assign(c, n, n->str, marker);
    }
    default:
        return fail(c, n, "an expression where a statement belongs");
    }
}

dsla_status_t dsla_chat_template_render(const dsla_chat_template_t *t, const json_t *vars,
                                        size_t max_output, char **out, size_t *len) {
    if (!t || !out || !len || (vars && !json_is_object(vars)))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "chat template: render needs an object of variables");
    *out = NULL;
    *len = 0;
    ct_buf_t buf = {.limit = max_output};
    ctx_t c = {.t = t, .out = &buf, .max_str = max_output};
    c.namespaces = json_array();
    bool ok = c.namespaces && push_scope(&c, NULL);
    if (ok) {
        json_t *root = c.scopes[0];
        if (t->bos_token) json_object_set_new(root, "bos_token", json_string(t->bos_token));
        if (t->eos_token) json_object_set_new(root, "eos_token", json_string(t->eos_token));
        if (vars) json_object_update(root, (json_t *)vars);
        ok = render(&c, t->root) && ct_buf_add(&buf, "", 0);
    }
    while (c.n_scopes > 0)
        pop_scope(&c);
    free(c.scopes);
    for (int i = 0; i < c.n_macros; i++)
        json_decref(c.macro_markers[i]);
    free(c.macros);
    free(c.macro_markers);
    json_decref(c.namespaces);
    if (!ok) {
        free(buf.data);
        if (!c.failed) return dsla_error_oom("chat template %s: rendering", t->name);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s", c.err);
    }
    *out = buf.data;
    *len = buf.len;
    return DSLA_OK;
}
