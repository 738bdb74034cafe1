/* The chat-template evaluator (chat_template.h): walks the syntax tree with Jinja2's semantics in
 * transformers' sandbox (immutable values but namespace() objects; undefined names print as
 * nothing; attributes and items of undefined are errors; each loop pass and macro call its own
 * scope): expressions, operators, calls, statements. The tests, filters and methods are
 * chat_template_filters.c. Every string it makes is bounded by the output limit, every loop and
 * call counted against DSLA_CHAT_TEMPLATE_STEPS_MAX. */
#include "runtime/model/chat_template_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool ct_fail(ctx_t *c, const ct_node_t *n, const char *fmt, ...) {
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

const char *ct_type_name(const json_t *v) {
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

bool ct_step(ctx_t *c, const ct_node_t *n, long long k) {
    c->steps += k;
    if (c->steps <= DSLA_CHAT_TEMPLATE_STEPS_MAX) return true;
    return ct_fail(c, n,
                   "the template ran past %d loop iterations and calls "
                   "(DSLA_CHAT_TEMPLATE_STEPS_MAX)",
                   DSLA_CHAT_TEMPLATE_STEPS_MAX);
}

/* A temporary buffer bounded like the output. */
ct_buf_t ct_tmp_buf(const ctx_t *c) {
    return (ct_buf_t){.limit = c->max_str};
}

bool ct_too_long(ctx_t *c, const ct_node_t *n, ct_buf_t *b) {
    free(b->data);
    b->data = NULL;
    return ct_fail(c, n, "a string longer than the output limit of %zu bytes", c->max_str);
}

/* The buffer as a string value (taking its memory); *out NULL on no memory. */
bool ct_buf_value(ctx_t *c, const ct_node_t *n, ct_buf_t *b, json_t **out) {
    *out = ct_string(b->data ? b->data : "", b->len);
    free(b->data);
    b->data = NULL;
    return *out ? true : ct_fail(c, n, "out of memory");
}

bool ct_str_value(ctx_t *c, const ct_node_t *n, const char *s, size_t len, json_t **out) {
    if (len > c->max_str)
        return ct_fail(c, n, "a string longer than the output limit of %zu bytes", c->max_str);
    *out = ct_string(s, len);
    return *out ? true : ct_fail(c, n, "out of memory");
}

bool ct_new_value(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out) {
    *out = v;
    return v ? true : ct_fail(c, n, "out of memory");
}

/* ---- scopes --------------------------------------------------------------------------------- */

static bool push_scope(ctx_t *c, const ct_node_t *n) {
    if (c->n_scopes == c->cap_scopes) {
        int cap = c->cap_scopes ? 2 * c->cap_scopes : 8;
        json_t **s = realloc(c->scopes, (size_t)cap * sizeof *s);
        if (!s) return ct_fail(c, n, "out of memory");
        c->scopes = s;
        c->cap_scopes = cap;
    }
    if (!(c->scopes[c->n_scopes] = json_object())) return ct_fail(c, n, "out of memory");
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
        return ct_fail(c, n, "out of memory");
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
    if (n->n_kids - first > CT_ARGS_MAX)
        return ct_fail(c, n, "more than %d arguments", CT_ARGS_MAX);
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
json_t *ct_arg(const args_t *a, int pos, const char *name, bool *found) {
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

bool ct_str_arg(ctx_t *c, const ct_node_t *n, const args_t *a, int pos, const char *name,
                const char *what, const json_t **out) {
    bool found;
    json_t *v = ct_arg(a, pos, name, &found);
    if (found && !json_is_string(v))
        return ct_fail(c, n, "%s takes a string, not %s", what, ct_type_name(v));
    *out = found ? v : NULL;
    return true;
}

bool ct_int_arg(ctx_t *c, const ct_node_t *n, const args_t *a, int pos, const char *name,
                const char *what, long long dflt, long long *out) {
    bool found;
    json_t *v = ct_arg(a, pos, name, &found);
    *out = dflt;
    if (!found || json_is_null(v)) return true;
    if (!json_is_integer(v))
        return ct_fail(c, n, "%s takes an integer, not %s", what, ct_type_name(v));
    *out = json_integer_value(v);
    return true;
}

/* Python's slice indices (PySlice_AdjustIndices): the positions start, start+step, ... */
static bool slice_indices(ctx_t *c, const ct_node_t *n, const json_t *const parts[3], long long len,
                          long long *start, long long *stop, long long *stepv, long long *count) {
    for (int i = 0; i < 3; i++)
        if (parts[i] && !json_is_null(parts[i]) && !json_is_integer(parts[i]))
            return ct_fail(c, n, "slice indices must be integers or none, not %s",
                           ct_type_name(parts[i]));
    long long st = parts[2] && json_is_integer(parts[2]) ? json_integer_value(parts[2]) : 1;
    if (st == 0) return ct_fail(c, n, "slice step cannot be zero");
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
        return ct_new_value(c, n, r, out);
    }
    if (json_is_string(base)) {
        const char *s = json_string_value(base);
        size_t len = json_string_length(base), cps = ct_utf8_count(s, len);
        if (!slice_indices(c, n, parts, (long long)cps, &start, &stop, &st, &k)) return false;
        if (st == 1) {
            size_t a = ct_utf8_offset(s, len, (size_t)start);
            size_t b = ct_utf8_offset(s, len, (size_t)(start + k));
            return ct_str_value(c, n, s + a, b - a, out);
        }
        ct_buf_t b = ct_tmp_buf(c);
        for (long long i = 0, p = start; i < k; i++, p += st) {
            size_t a = ct_utf8_offset(s, len, (size_t)p), e = ct_utf8_offset(s, len, (size_t)p + 1);
            if (!ct_buf_add(&b, s + a, e - a)) return ct_too_long(c, n, &b);
        }
        return ct_buf_value(c, n, &b, out);
    }
    if (!base) return ct_fail(c, n, "slicing an undefined value");
    return ct_fail(c, n, "a %s cannot be sliced", ct_type_name(base));
}

/* base[key] as Jinja's sandbox reads it: missing items are undefined, undefined bases an error. */
static bool do_index(ctx_t *c, const ct_node_t *n, json_t *base, json_t *key, json_t **out) {
    *out = NULL;
    if (!base) return ct_fail(c, n, "an undefined value has no item or attribute");
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
        return ct_str_value(c, n, s + a, e - a, out);
    }
    return true;
}

/* ---- operators ------------------------------------------------------------------------------ */

bool ct_is_int(const json_t *v) {
    return json_is_integer(v) || json_is_boolean(v);
}

long long ct_int_of(const json_t *v) {
    return json_is_integer(v) ? json_integer_value(v) : json_is_true(v);
}

static bool repeat(ctx_t *c, const ct_node_t *n, const json_t *s, long long times, json_t **out) {
    ct_buf_t b = ct_tmp_buf(c);
    size_t len = json_string_length(s);
    if (times > 0 && len > 0 && (unsigned long long)times > c->max_str / len)
        return ct_fail(c, n, "a string longer than the output limit of %zu bytes", c->max_str);
    for (long long i = 0; i < times; i++)
        if (!ct_buf_add(&b, json_string_value(s), len)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

/* Python's "fmt" % args for %s, %d, %i and %% (args a list for several). */
static bool format_percent(ctx_t *c, const ct_node_t *n, const json_t *fmt, json_t *args,
                           json_t **out) {
    const char *f = json_string_value(fmt);
    size_t len = json_string_length(fmt), used = 0;
    size_t n_args = json_is_array(args) ? json_array_size(args) : 1;
    ct_buf_t b = ct_tmp_buf(c);
    for (size_t i = 0; i < len; i++) {
        if (f[i] != '%') {
            if (!ct_buf_add(&b, f + i, 1)) return ct_too_long(c, n, &b);
            continue;
        }
        char spec = i + 1 < len ? f[++i] : 0;
        if (spec == '%') {
            if (!ct_buf_add(&b, "%", 1)) return ct_too_long(c, n, &b);
            continue;
        }
        if (spec != 's' && spec != 'd' && spec != 'i') {
            free(b.data);
            return ct_fail(c, n,
                           "%%-formatting: only %%s, %%d, %%i and %%%% are supported, not '%%%c'",
                           spec ? spec : ' ');
        }
        if (used >= n_args) {
            free(b.data);
            return ct_fail(c, n, "%%-formatting: not enough arguments for the format string");
        }
        json_t *x = json_is_array(args) ? json_array_get(args, used) : args;
        used++;
        double d;
        if (spec != 's' && !json_is_integer(x)) {
            if (!ct_to_double(x, &d) || !(d > -9.2e18 && d < 9.2e18)) {
                free(b.data);
                return ct_fail(c, n, "%%-formatting: %%%c needs a number, not %s", spec,
                               ct_type_name(x));
            }
            x = json_integer((json_int_t)d);
            bool ok = ct_buf_str(&b, x);
            json_decref(x);
            if (!ok) return ct_too_long(c, n, &b);
        } else if (!ct_buf_str(&b, x)) {
            return ct_too_long(c, n, &b);
        }
    }
    if (used < n_args) {
        free(b.data);
        return ct_fail(c, n, "%%-formatting: not all arguments converted");
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

bool ct_arith(ctx_t *c, const ct_node_t *n, int op, json_t *a, json_t *b, json_t **out) {
    static const char *const names[] = {"", "+", "-", "*", "/", "//", "%", "**"};
    if (!a || !b) return ct_fail(c, n, "an undefined value in '%s'", names[op]);
    if (op == CT_OP_ADD && json_is_string(a) && json_is_string(b)) {
        ct_buf_t buf = ct_tmp_buf(c);
        if (!ct_buf_add(&buf, json_string_value(a), json_string_length(a)) ||
            !ct_buf_add(&buf, json_string_value(b), json_string_length(b)))
            return ct_too_long(c, n, &buf);
        return ct_buf_value(c, n, &buf, out);
    }
    if (op == CT_OP_ADD && json_is_array(a) && json_is_array(b)) {
        if (!ct_step(c, n, (long long)json_array_size(b))) return false;
        json_t *r = json_copy(a);
        if (r && json_array_extend(r, b) != 0) {
            json_decref(r);
            r = NULL;
        }
        return ct_new_value(c, n, r, out);
    }
    if (op == CT_OP_MOD && json_is_string(a)) return format_percent(c, n, a, b, out);
    if (op == CT_OP_MUL && (json_is_string(a) || json_is_string(b)) &&
        (ct_is_int(a) || ct_is_int(b)))
        return repeat(c, n, json_is_string(a) ? a : b, ct_int_of(json_is_string(a) ? b : a), out);
    double x, y;
    if (!ct_to_double(a, &x) || !ct_to_double(b, &y))
        return ct_fail(c, n, "unsupported operand types for %s: '%s' and '%s'", names[op],
                       ct_type_name(a), ct_type_name(b));
    if (ct_is_int(a) && ct_is_int(b) && op != CT_OP_DIV) {
        long long i = ct_int_of(a), j = ct_int_of(b), r = 0;
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
            if (j == 0) return ct_fail(c, n, "integer division or modulo by zero");
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
        if (overflow) return ct_fail(c, n, "an integer overflow in '%s'", names[op]);
        if (!(op == CT_OP_POW && j < 0)) return ct_new_value(c, n, json_integer(r), out);
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
        if (y == 0) return ct_fail(c, n, "division by zero");
        r = op == CT_OP_DIV ? x / y : op == CT_OP_FLOORDIV ? floor(x / y) : x - y * floor(x / y);
        break;
    case CT_OP_POW:
        r = pow(x, y);
        break;
    }
    return ct_new_value(c, n, json_real(r), out);
}

bool ct_compare(ctx_t *c, const ct_node_t *n, int op, json_t *a, json_t *b, bool *out) {
    if (op == CT_OP_EQ || op == CT_OP_NE) {
        *out = ct_equal(a, b) == (op == CT_OP_EQ);
        return true;
    }
    if (op == CT_OP_IN || op == CT_OP_NOT_IN) {
        bool in = false;
        if (json_is_string(b)) {
            if (!json_is_string(a))
                return ct_fail(c, n, "'in <string>' requires a string on the left, not %s",
                               ct_type_name(a));
            size_t la = json_string_length(a), lb = json_string_length(b);
            in = la == 0 ||
                 (la <= lb && ct_memmem(json_string_value(b), lb, json_string_value(a), la));
        } else if (json_is_array(b)) {
            for (size_t i = 0; !in && i < json_array_size(b); i++)
                in = ct_equal(a, json_array_get(b, i));
        } else if (json_is_object(b)) {
            in = json_is_string(a) && json_object_get(b, json_string_value(a)) != NULL;
        } else if (b) {
            return ct_fail(c, n, "a %s is not a container for 'in'", ct_type_name(b));
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
        return ct_fail(c, n, "'%s' and '%s' cannot be ordered", ct_type_name(a), ct_type_name(b));
    }
    *out = op == CT_OP_LT   ? cmp < 0
           : op == CT_OP_LE ? cmp <= 0
           : op == CT_OP_GT ? cmp > 0
                            : cmp >= 0;
    return true;
}

/* ---- calls ---------------------------------------------------------------------------------- */

static bool call_macro(ctx_t *c, const ct_node_t *n, const ct_node_t *m, const args_t *a,
                       json_t **out) {
    if (!ct_step(c, n, 1)) return false;
    if (c->depth >= DSLA_CHAT_TEMPLATE_DEPTH_MAX)
        return ct_fail(c, n, "macro calls nested deeper than %d (DSLA_CHAT_TEMPLATE_DEPTH_MAX)",
                       DSLA_CHAT_TEMPLATE_DEPTH_MAX);
    int positional = 0;
    for (int i = 0; i < a->n; i++)
        positional += !a->name[i];
    if (positional > m->n_names)
        return ct_fail(c, n, "macro '%s' takes %d arguments, %d given", m->str, m->n_names,
                       positional);
    int saved_floor = c->floor;
    if (!push_scope(c, n)) return false;
    c->floor = c->n_scopes - 1;
    c->depth++;
    bool ok = true;
    for (int i = 0; ok && i < m->n_names; i++) {
        bool found;
        json_t *v = ct_arg(a, i, m->names[i], &found);
        if (!found && m->kids[i + 1]) {
            json_t *d = NULL;
            ok = eval(c, m->kids[i + 1], &d);
            if (ok) ok = assign(c, n, m->names[i], d);
            json_decref(d);
            continue;
        }
        if (found) ok = assign(c, n, m->names[i], v);
    }
    ct_buf_t b = ct_tmp_buf(c), *saved_out = c->out;
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
    return ct_buf_value(c, n, &b, out);
}

static bool call_builtin(ctx_t *c, const ct_node_t *n, const char *name, const args_t *a,
                         json_t **out) {
    if (!strcmp(name, "raise_exception")) {
        json_t *msg = ct_arg(a, 0, "message", NULL);
        ct_buf_t b = ct_tmp_buf(c);
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
                    return ct_fail(c, n, "%s() takes name=value arguments", name);
                }
            } else {
                ok = json_object_set(ns, a->name[i], a->v[i] ? a->v[i] : json_null()) == 0;
            }
        }
        if (ok && name[0] == 'n') ok = json_array_append(c->namespaces, ns) == 0;
        if (!ok) {
            json_decref(ns);
            return ct_fail(c, n, "out of memory");
        }
        *out = ns;
        return true;
    }
    if (!strcmp(name, "range")) {
        long long lo = 0, hi, st = 1;
        for (int i = 0; i < a->n; i++)
            if (!json_is_integer(a->v[i])) return ct_fail(c, n, "range takes integers");
        if (a->n == 1)
            hi = json_integer_value(a->v[0]);
        else if (a->n == 2 || a->n == 3) {
            lo = json_integer_value(a->v[0]);
            hi = json_integer_value(a->v[1]);
            if (a->n == 3) st = json_integer_value(a->v[2]);
        } else
            return ct_fail(c, n, "range takes 1 to 3 integers");
        if (st == 0) return ct_fail(c, n, "range step cannot be zero");
        double count = st > 0 ? ceil(((double)hi - lo) / st) : ceil(((double)lo - hi) / -st);
        if (count < 0) count = 0;
        if (!ct_step(c, n, (long long)fmin(count, 1e18))) return false;
        json_t *r = json_array();
        for (long long i = 0, v = lo; r && i < (long long)count; i++, v += st)
            json_array_append_new(r, json_integer(v));
        return ct_new_value(c, n, r, out);
    }
    if (!strcmp(name, "strftime_now")) {
        json_t *fmt = ct_arg(a, 0, NULL, NULL);
        if (!json_is_string(fmt)) return ct_fail(c, n, "strftime_now takes a format string");
        time_t now = time(NULL);
        struct tm tm;
        char buf[256];
        localtime_r(&now, &tm);
        size_t len = strftime(buf, sizeof buf, json_string_value(fmt), &tm);
        return ct_str_value(c, n, buf, len, out);
    }
    return ct_fail(c, n, "'%s' is not callable", name);
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
        ok = ct_method(c, n, obj, callee->str, &a, out);
    } else if (callee->kind == CT_NAME) {
        json_t *v = lookup(c, callee->str);
        const ct_node_t *m = find_macro(c, v);
        ok = m   ? call_macro(c, n, m, &a, out)
             : v ? ct_fail(c, n, "'%s' is a %s, not callable", callee->str, ct_type_name(v))
                 : call_builtin(c, n, callee->str, &a, out);
    } else {
        ok = ct_fail(c, n, "only macros, functions and methods can be called");
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
        if (json_array_append_new(r, v ? v : json_null()) != 0)
            return ct_fail(c, n, "out of memory");
    }
    return true;
}

static bool eval(ctx_t *c, const ct_node_t *n, json_t **out) {
    *out = NULL;
    json_t *a = NULL, *b = NULL;
    bool ok = true, t;
    switch (n->kind) {
    case CT_STR:
        return ct_str_value(c, n, n->str, n->len, out);
    case CT_INT:
        return ct_new_value(c, n, json_integer(n->i), out);
    case CT_FLOAT:
        return ct_new_value(c, n, json_real(n->f), out);
    case CT_BOOL:
        return ct_new_value(c, n, json_boolean(n->i), out);
    case CT_NONE:
        return ct_new_value(c, n, json_null(), out);
    case CT_NAME: {
        json_t *v = lookup(c, n->str);
        if (v) {
            *out = json_incref(v);
            return true;
        }
        bool known = false;
        for (size_t i = 0; !known && i < sizeof builtins / sizeof builtins[0]; i++)
            known = strcmp(builtins[i], n->str) == 0;
        if (known) return ct_str_value(c, n, n->str, strlen(n->str), out); /* defined, callable */
        return true;
    }
    case CT_LIST:
    case CT_TUPLE: {
        json_t *r = json_array();
        if (!r) return ct_fail(c, n, "out of memory");
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
            if (ok && !json_is_string(a)) ok = ct_fail(c, n, "dict keys must be strings here");
            if (ok && json_object_set(r, json_string_value(a), b ? b : json_null()) != 0)
                ok = ct_fail(c, n, "out of memory");
            json_decref(a);
            json_decref(b);
            a = b = NULL;
        }
        if (!ok) {
            json_decref(r);
            return false;
        }
        return ct_new_value(c, n, r, out);
    }
    case CT_ATTR:
        if (!eval(c, n->kids[0], &a)) return false;
        if (!a) {
            ok = ct_fail(c, n, "an undefined value has no attribute '%s'", n->str);
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
            ok = ct_filter(c, n, n->str, a, &args, out);
        } else {
            ok = ct_run_test(c, n, n->str, a, &args, &t);
            if (ok) ok = ct_new_value(c, n, json_boolean(t != (n->i != 0)), out);
        }
        args_free(&args);
        break;
    }
    case CT_UNARY:
        if (!eval(c, n->kids[0], &a)) return false;
        if (n->op == '!') {
            ok = ct_new_value(c, n, json_boolean(!ct_truthy(a)), out);
        } else if (json_is_integer(a) || json_is_boolean(a)) {
            long long i = ct_int_of(a);
            if (n->op == '-' && i == INT64_MIN)
                ok = ct_fail(c, n, "an integer overflow in '-'");
            else
                ok = ct_new_value(c, n, json_integer(n->op == '-' ? -i : i), out);
        } else if (json_is_real(a)) {
            ok = ct_new_value(
                c, n, json_real(n->op == '-' ? -json_real_value(a) : json_real_value(a)), out);
        } else {
            ok = ct_fail(c, n, "bad operand type for unary %c: '%s'", n->op, ct_type_name(a));
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
            ct_buf_t buf = ct_tmp_buf(c);
            ok = ct_buf_str(&buf, a) && ct_buf_str(&buf, b) && ct_buf_add(&buf, "", 0)
                     ? ct_buf_value(c, n, &buf, out)
                     : ct_too_long(c, n, &buf);
        } else if (n->op >= CT_OP_EQ) {
            ok = ct_compare(c, n, n->op, a, b, &t) && ct_new_value(c, n, json_boolean(t), out);
        } else {
            ok = ct_arith(c, n, n->op, a, b, out);
        }
        break;
    default:
        ok = ct_fail(c, n, "a statement where an expression belongs");
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
        return ct_fail(c, n, "cannot unpack a %s into %d names", ct_type_name(item), n_names);
    for (int i = 0; i < n_names; i++)
        if (!assign(c, n, names[i], json_array_get(item, (size_t)i))) return false;
    return true;
}

static bool render_for(ctx_t *c, const ct_node_t *n) {
    json_t *it = NULL, *list = NULL, *kept = NULL;
    if (!eval(c, n->kids[0], &it)) return false;
    bool ok = ct_as_list(c, n, it, &list);
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
            ok = ct_step(c, n, 1) && bind_targets(c, n, n->names, n->n_names, item) &&
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
        ok = ct_step(c, n, 1) && (loop || ct_fail(c, n, "out of memory")) &&
             assign(c, n, "loop", loop) &&
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
        ct_buf_t b = ct_tmp_buf(c), *saved = c->out;
        c->out = &b;
        bool ok = render(c, n->kids[1]);
        c->out = saved;
        if (!ok) {
            free(b.data);
            return false;
        }
        if (!ct_buf_value(c, n, &b, &v)) return false;
    } else if (!eval(c, n->kids[1], &v)) {
        return false;
    }
    bool ok;
    if (target->kind == CT_NAME) {
        ok = assign(c, n, target->str, v);
    } else if (target->kind == CT_ATTR) {
        json_t *ns = target->kids[0]->kind == CT_NAME ? lookup(c, target->kids[0]->str) : NULL;
        if (!is_namespace(c, ns))
            ok = ct_fail(
                c, n, "only a namespace() takes attribute assignments (the sandbox is immutable)");
        else
            ok = json_object_set(ns, target->str, v ? v : json_null()) == 0 ||
                 ct_fail(c, n, "out of memory");
    } else {
        char *names[CT_ARGS_MAX];
        int k = 0;
        ok = true;
        for (int i = 0; ok && i < target->n_kids; i++) {
            if (target->kids[i]->kind != CT_NAME || k == CT_ARGS_MAX)
                ok = ct_fail(c, n, "set unpacks into names");
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
            return ct_fail(c, n, "the rendering passes the output limit of %zu bytes",
                           c->out->limit);
        return true;
    case CT_OUTPUT: {
        json_t *v;
        if (!eval(c, n->kids[0], &v)) return false;
        bool ok = ct_buf_str(c->out, v);
        json_decref(v);
        if (!ok)
            return ct_fail(c, n, "the rendering passes the output limit of %zu bytes",
                           c->out->limit);
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
        if (!marker) return ct_fail(c, n, "out of memory");
        c->macros[c->n_macros] = n;
        c->macro_markers[c->n_macros++] = marker;
        return assign(c, n, n->str, marker);
    }
    default:
        return ct_fail(c, n, "an expression where a statement belongs");
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
