/* The chat-template engine's tests, filters and methods (chat_template.h, docs/http.md lists
 * them): Jinja's and Python's semantics for the subset chat templates use, transformers' tojson.
 * Every string made is bounded by the render's output limit, every pass over a list counted as
 * steps. */
#include "runtime/model/chat_template_internal.h"

#include <ctype.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wctype.h>

/* ---- tests ---------------------------------------------------------------------------------- */

bool ct_run_test(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                 bool *out) {
    json_t *x = ct_arg(a, 0, NULL, NULL);
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
        if (!ct_is_int(v))
            return ct_fail(c, n, "'%s' tests an integer, not %s", name, ct_type_name(v));
        *out = (ct_int_of(v) % 2 != 0) == (name[0] == 'o');
    } else if (!strcmp(name, "divisibleby")) {
        if (!ct_is_int(v) || !ct_is_int(x) || ct_int_of(x) == 0)
            return ct_fail(c, n, "'divisibleby' takes two integers, the divisor not 0");
        *out = ct_int_of(v) % ct_int_of(x) == 0;
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
        return ct_compare(c, n, op, v, x, out);
    } else {
        return ct_fail(c, n, "unknown test '%s'", name);
    }
    return true;
}

/* ---- filters -------------------------------------------------------------------------------- */

/* str(v) as a new string value. */
static bool to_str(ctx_t *c, const ct_node_t *n, const json_t *v, json_t **out) {
    if (json_is_string(v)) {
        *out = json_incref((json_t *)v);
        return true;
    }
    ct_buf_t b = ct_tmp_buf(c);
    if (!ct_buf_str(&b, v)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
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
    return ct_str_value(c, n, s + a, e - a, out);
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
    ct_buf_t b = ct_tmp_buf(c);
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
        if (!ct_buf_add(&b, enc, ct_utf8_encode((unsigned)m, enc))) return ct_too_long(c, n, &b);
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

static bool replace(ctx_t *c, const ct_node_t *n, const json_t *v, const json_t *old,
                    const json_t *new, long long count, json_t **out) {
    const char *s = json_string_value(v), *o = json_string_value(old);
    size_t len = json_string_length(v), lo = json_string_length(old);
    ct_buf_t b = ct_tmp_buf(c);
    size_t i = 0;
    long long done = 0;
    if (lo == 0) { /* Python inserts new between code points */
        for (; i <= len; done++) {
            if ((count < 0 || done < count) &&
                !ct_buf_add(&b, json_string_value(new), json_string_length(new)))
                return ct_too_long(c, n, &b);
            if (i == len) break;
            size_t e = ct_utf8_offset(s + i, len - i, 1);
            if (!ct_buf_add(&b, s + i, e)) return ct_too_long(c, n, &b);
            i += e;
        }
        return ct_buf_value(c, n, &b, out);
    }
    while (i < len) {
        const char *hit = (count < 0 || done < count) ? ct_memmem(s + i, len - i, o, lo) : NULL;
        size_t upto = hit ? (size_t)(hit - s) : len;
        if (!ct_buf_add(&b, s + i, upto - i)) return ct_too_long(c, n, &b);
        if (!hit) break;
        if (!ct_buf_add(&b, json_string_value(new), json_string_length(new)))
            return ct_too_long(c, n, &b);
        i = upto + lo;
        done++;
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

static bool split(ctx_t *c, const ct_node_t *n, const json_t *v, const json_t *sep,
                  long long maxsplit, json_t **out) {
    const char *s = json_string_value(v);
    size_t len = json_string_length(v), i = 0, size;
    json_t *r = json_array();
    if (!r) return ct_fail(c, n, "out of memory");
    long long done = 0;
    if (sep && json_string_length(sep) == 0) {
        json_decref(r);
        return ct_fail(c, n, "split: empty separator");
    }
    while (i <= len && r) {
        if (!ct_step(c, n, 1)) {
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
    return ct_new_value(c, n, r, out);
}

/* str.join over an iterable (attribute: each item's attribute). */
static bool join(ctx_t *c, const ct_node_t *n, json_t *items, const json_t *sep, const json_t *attr,
                 json_t **out) {
    ct_buf_t b = ct_tmp_buf(c);
    if (json_is_string(items)) {
        *out = json_incref(items);
        return true;
    }
    if (items && !json_is_array(items))
        return ct_fail(c, n, "join takes a list, not %s", ct_type_name(items));
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *x = json_array_get(items, i);
        if (attr) x = json_is_object(x) ? json_object_get(x, json_string_value(attr)) : NULL;
        if ((i && sep && !ct_buf_add(&b, json_string_value(sep), json_string_length(sep))) ||
            !ct_buf_str(&b, x))
            return ct_too_long(c, n, &b);
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

/* An iterable as a list: lists as they are, dict keys, string code points, undefined empty. */
bool ct_as_list(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out) {
    if (json_is_array(v)) {
        *out = json_incref(v);
        return true;
    }
    json_t *r = json_array();
    if (!r) return ct_fail(c, n, "out of memory");
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
        return ct_fail(c, n, "'%s' object is not iterable", ct_type_name(v));
    }
    *out = r;
    return true;
}

static bool items(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out) {
    json_t *r = json_array();
    if (!r) return ct_fail(c, n, "out of memory");
    if (v && !json_is_object(v)) {
        json_decref(r);
        return ct_fail(c, n, "items() of a %s; it takes a dict", ct_type_name(v));
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        json_t *pair = json_pack("[sO]", k, x);
        if (!pair || json_array_append_new(r, pair) != 0) {
            json_decref(r);
            return ct_fail(c, n, "out of memory");
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
    if (!ct_as_list(c, n, v, &list)) return false;
    json_t *r = json_array();
    const json_t *attr = NULL;
    bool ok = r != NULL;
    if (!ok) ct_fail(c, n, "out of memory");
    args_t rest = {0};
    int first = by_attr ? 1 : 0;
    bool map_attr = false; /* map(attribute=...): the attribute, even when it is undefined */
    if (is_map) {
        bool found;
        attr = ct_arg(a, 0, "attribute", &found);
        map_attr = found && a->name[0] && strcmp(a->name[0], "attribute") == 0;
        if (map_attr)
            first = -1;
        else
            attr = NULL;
    } else if (by_attr) {
        attr = ct_arg(a, 0, NULL, NULL);
    }
    if (ok && (by_attr || map_attr) && !json_is_string(attr))
        ok = ct_fail(c, n, "%s takes an attribute name", name);
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
        if (test && !json_is_string(test))
            ok = ct_fail(c, n, "%s takes a test or filter name", name);
        if (ok && is_map && !test) ok = ct_fail(c, n, "map takes a filter name or attribute=");
    }
    for (size_t i = 0; ok && i < json_array_size(list); i++) {
        json_t *item = json_array_get(list, i);
        json_t *x = attr ? attr_path(item, json_string_value(attr)) : item;
        if (is_map) {
            json_t *m = NULL;
            if (!attr)
                ok = ct_filter(c, n, json_string_value(test), x, &rest, &m);
            else {
                bool found;
                json_t *dflt = ct_arg(a, 0, "default", &found);
                m = json_incref(x ? x : found ? dflt : NULL);
            }
            if (ok && json_array_append_new(r, m ? m : json_null()) != 0)
                ok = ct_fail(c, n, "out of memory");
            continue;
        }
        bool hit = ct_truthy(x);
        if (test && !ct_run_test(c, n, json_string_value(test), x, &rest, &hit)) ok = false;
        if (ok && hit == keep && json_array_append(r, item) != 0)
            ok = ct_fail(c, n, "out of memory");
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
    ct_buf_t b = ct_tmp_buf(c);
    const char *s = json_string_value(v);
    for (size_t i = 0; i < json_string_length(v); i++) {
        const char *e = s[i] == '&'    ? "&amp;"
                        : s[i] == '<'  ? "&lt;"
                        : s[i] == '>'  ? "&gt;"
                        : s[i] == '"'  ? "&#34;"
                        : s[i] == '\'' ? "&#39;"
                                       : NULL;
        if (!ct_buf_add(&b, e ? e : s + i, e ? strlen(e) : 1)) return ct_too_long(c, n, &b);
    }
    if (!b.data && !ct_buf_add(&b, "", 0)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

static bool tojson(ctx_t *c, const ct_node_t *n, json_t *v, const args_t *a, json_t **out) {
    long long indent = -1;
    bool found;
    json_t *ascii = ct_arg(a, 0, "ensure_ascii", &found);
    if (found && ct_truthy(ascii))
        return ct_fail(c, n, "tojson: ensure_ascii=True is not supported");
    if (ct_arg(a, 2, "separators", &found), found)
        return ct_fail(c, n, "tojson: separators= is not supported");
    if (!ct_int_arg(c, n, a, 1, "indent", "tojson's indent", -1, &indent)) return false;
    if (indent > 64) return ct_fail(c, n, "tojson: indent %lld is over 64", indent);
    json_t *sort = ct_arg(a, 3, "sort_keys", NULL);
    ct_buf_t b = ct_tmp_buf(c);
    char err[128] = "";
    if (!ct_buf_json(&b, v, (int)indent, ct_truthy(sort), err, sizeof err)) {
        if (err[0]) {
            free(b.data);
            return ct_fail(c, n, "%s", err);
        }
        return ct_too_long(c, n, &b);
    }
    return ct_buf_value(c, n, &b, out);
}

/* Python's a < b for sorting (strings compared case-blind unless case_sensitive, as Jinja's
 * sorting filters do); false with an error for values that have no order. */
static bool less(ctx_t *c, const ct_node_t *n, json_t *a, json_t *b, bool case_sensitive,
                 bool *out) {
    if (case_sensitive || !json_is_string(a) || !json_is_string(b))
        return ct_compare(c, n, CT_OP_LT, a, b, out);
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
            if (!ct_step(c, n, 1) ||
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
    bool cs = ct_truthy(ct_arg(a, 0, "case_sensitive", NULL)), ok = true;
    const json_t *attr = NULL;
    if (!strcmp(name, "dictsort")) {
        if (!json_is_object(v))
            return ct_fail(c, n, "dictsort takes a dict, not %s", ct_type_name(v));
        json_t *by = ct_arg(a, 1, "by", NULL);
        bool by_value = json_is_string(by) && !strcmp(json_string_value(by), "value");
        if (!items(c, n, v, &r)) return false;
        if (!sort_list(c, n, r, NULL, by_value, cs, ct_truthy(ct_arg(a, 2, "reverse", NULL)))) {
            json_decref(r);
            return false;
        }
        *out = r;
        return true;
    }
    if (!ct_as_list(c, n, v, &list)) return false;
    if (!strcmp(name, "sum")) {
        ok = ct_str_arg(c, n, a, 0, "attribute", "sum", &attr);
        json_t *start = ct_arg(a, 1, "start", NULL);
        json_t *total = start ? json_incref(start) : json_integer(0);
        for (size_t i = 0; ok && i < json_array_size(list); i++) {
            json_t *x = json_array_get(list, i), *t = NULL;
            if (attr) x = attr_path(x, json_string_value(attr));
            ok = ct_arith(c, n, CT_OP_ADD, total, x, &t);
            json_decref(total);
            total = t;
        }
        r = ok ? total : (json_decref(total), NULL);
    } else if (!strcmp(name, "unique")) {
        ok = ct_str_arg(c, n, a, 1, "attribute", "unique", &attr);
        r = json_array();
        for (size_t i = 0; ok && r && i < json_array_size(list); i++) {
            json_t *x = json_array_get(list, i);
            json_t *kx = attr ? attr_path(x, json_string_value(attr)) : x;
            bool seen = false;
            for (size_t j = 0; ok && !seen && j < json_array_size(r); j++) {
                json_t *y = json_array_get(r, j);
                json_t *ky = attr ? attr_path(y, json_string_value(attr)) : y;
                bool lt1, lt2;
                ok = ct_step(c, n, 1);
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
        ok = ct_str_arg(c, n, a, 1, "attribute", name, &attr);
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
    json_t *w = ct_arg(a, 0, "width", &found);
    ct_buf_t pad = ct_tmp_buf(c), b = ct_tmp_buf(c);
    if (found && json_is_string(w)) {
        if (!ct_buf_add(&pad, json_string_value(w), json_string_length(w)))
            return ct_too_long(c, n, &pad);
    } else {
        long long k;
        if (!ct_int_arg(c, n, a, 0, "width", "indent", 4, &k)) return false;
        for (long long i = 0; i < k && i < 256; i++)
            if (!ct_buf_add(&pad, " ", 1)) return ct_too_long(c, n, &pad);
    }
    if (!ct_buf_add(&pad, "", 0)) return ct_too_long(c, n, &pad);
    bool first = ct_truthy(ct_arg(a, 1, "first", NULL)),
         blank = ct_truthy(ct_arg(a, 2, "blank", NULL));
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
    if (!ok) return ct_too_long(c, n, &b);
    if (!b.data && !ct_buf_add(&b, "", 0)) return ct_too_long(c, n, &b);
    return ct_buf_value(c, n, &b, out);
}

bool ct_filter(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
               json_t **out) {
    *out = NULL;
    bool found;
    const json_t *s1 = NULL, *s2 = NULL;
    long long k;
    if (!strcmp(name, "tojson")) return tojson(c, n, v, a, out);
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        json_t *dflt = ct_arg(a, 0, "default_value", &found);
        bool boolean = ct_truthy(ct_arg(a, 1, "boolean", NULL));
        json_t *r = (boolean ? ct_truthy(v) : v != NULL) ? v : found ? dflt : NULL;
        if (!r) return ct_str_value(c, n, "", 0, out);
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
        if (len == (size_t)-1)
            return ct_fail(c, n, "object of type '%s' has no len()", ct_type_name(v));
        return ct_new_value(c, n, json_integer((json_int_t)len), out);
    }
    if (!strcmp(name, "items")) return items(c, n, v, out);
    if (!strcmp(name, "list")) {
        if (!ct_as_list(c, n, v, out)) return false;
        if (*out == v) { /* a copy, as Python's list() */
            json_t *copy = json_copy(v);
            json_decref(v);
            return ct_new_value(c, n, copy, out);
        }
        return true;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        json_t *list;
        if (!ct_as_list(c, n, v, &list)) return false;
        size_t len = json_array_size(list);
        *out = len ? json_incref(json_array_get(list, name[0] == 'f' ? 0 : len - 1)) : NULL;
        json_decref(list);
        return true;
    }
    if (!strcmp(name, "reverse")) {
        json_t *list, *r;
        if (!ct_as_list(c, n, v, &list)) return false;
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
        return ct_new_value(c, n, r, out);
    }
    if (!strcmp(name, "join")) {
        if (!ct_str_arg(c, n, a, 0, "d", "join", &s1) ||
            !ct_str_arg(c, n, a, 1, "attribute", "join", &s2))
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
        if (name[0] == 'f') return ct_new_value(c, n, json_real(x), out);
        if (!(x > -9.2e18 && x < 9.2e18)) x = 0;
        return ct_new_value(c, n, json_integer((json_int_t)x), out);
    }
    if (!strcmp(name, "dictsort") || !strcmp(name, "unique") || !strcmp(name, "sum") ||
        !strcmp(name, "min") || !strcmp(name, "max"))
        return list_filter(c, n, name, v, a, out);
    if (!strcmp(name, "abs")) {
        if (json_is_integer(v))
            return ct_new_value(c, n, json_integer(llabs(json_integer_value(v))), out);
        double x;
        if (!ct_to_double(v, &x)) return ct_fail(c, n, "abs of a %s", ct_type_name(v));
        return ct_new_value(c, n, json_real(fabs(x)), out);
    }
    /* the string filters take str(v) */
    json_t *s;
    if (!to_str(c, n, v, &s)) return false;
    bool ok = true;
    if (!strcmp(name, "trim")) {
        ok = ct_str_arg(c, n, a, 0, "chars", "trim", &s1) && strip(c, n, s, s1, true, true, out);
    } else if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
               !strcmp(name, "title")) {
        ok = change_case(c, n, s, name[0] == 'u' ? 'u' : name[0] == 'l' ? 'l' : name[0], out);
    } else if (!strcmp(name, "replace")) {
        ok = ct_str_arg(c, n, a, 0, "old", "replace", &s1) &&
             ct_str_arg(c, n, a, 1, "new", "replace", &s2) &&
             ct_int_arg(c, n, a, 2, "count", "replace", -1, &k);
        if (ok && (!s1 || !s2)) ok = ct_fail(c, n, "replace takes the old and the new string");
        if (ok) ok = replace(c, n, s, s1, s2, k, out);
    } else if (!strcmp(name, "indent")) {
        ok = indent(c, n, s, a, out);
    } else if (!strcmp(name, "e") || !strcmp(name, "escape")) {
        ok = escape_html(c, n, s, out);
    } else {
        ok = ct_fail(c, n, "unknown filter '%s'", name);
    }
    json_decref(s);
    return ok;
}

bool ct_method(ctx_t *c, const ct_node_t *n, json_t *obj, const char *name, const args_t *a,
               json_t **out) {
    const json_t *s1 = NULL, *s2 = NULL;
    long long k;
    *out = NULL;
    if (json_is_object(obj)) {
        if (!strcmp(name, "items")) return items(c, n, obj, out);
        if (!strcmp(name, "keys")) return ct_as_list(c, n, obj, out);
        if (!strcmp(name, "values")) {
            json_t *r = json_array();
            const char *key;
            json_t *x;
            json_object_foreach(obj, key, x) if (r) json_array_append(r, x);
            return ct_new_value(c, n, r, out);
        }
        if (!strcmp(name, "get")) {
            bool found;
            json_t *key = ct_arg(a, 0, NULL, NULL), *dflt = ct_arg(a, 1, NULL, &found);
            json_t *x = json_is_string(key) ? json_object_get(obj, json_string_value(key)) : NULL;
            *out = json_incref(x ? x : found ? dflt : json_null());
            return true;
        }
    }
    if (json_is_string(obj)) {
        if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
            json_t *chars = ct_arg(a, 0, NULL, NULL);
            if (chars && !json_is_null(chars) && !json_is_string(chars))
                return ct_fail(c, n, "%s takes a string", name);
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
            json_t *p = ct_arg(a, 0, NULL, NULL);
            bool hit = false;
            for (size_t i = 0; i < (json_is_array(p) ? json_array_size(p) : 1); i++) {
                json_t *q = json_is_array(p) ? json_array_get(p, i) : p;
                if (!json_is_string(q))
                    return ct_fail(c, n, "%s takes a string or a tuple of them", name);
                size_t lq = json_string_length(q), ls = json_string_length(obj);
                const char *at = json_string_value(obj) + (name[0] == 's' ? 0 : ls - lq);
                hit |= lq <= ls && memcmp(at, json_string_value(q), lq) == 0;
            }
            return ct_new_value(c, n, json_boolean(hit), out);
        }
        if (!strcmp(name, "split")) {
            json_t *sep = ct_arg(a, 0, "sep", NULL);
            if (sep && !json_is_null(sep) && !json_is_string(sep))
                return ct_fail(c, n, "split takes a string");
            return ct_int_arg(c, n, a, 1, "maxsplit", "split", -1, &k) &&
                   split(c, n, obj, json_is_string(sep) ? sep : NULL, k, out);
        }
        if (!strcmp(name, "replace")) {
            if (!ct_str_arg(c, n, a, 0, NULL, "replace", &s1) ||
                !ct_str_arg(c, n, a, 1, NULL, "replace", &s2) ||
                !ct_int_arg(c, n, a, 2, NULL, "replace", -1, &k))
                return false;
            if (!s1 || !s2) return ct_fail(c, n, "replace takes the old and the new string");
            return replace(c, n, obj, s1, s2, k, out);
        }
        if (!strcmp(name, "find") || !strcmp(name, "count")) {
            if (!ct_str_arg(c, n, a, 0, NULL, name, &s1)) return false;
            if (!s1) return ct_fail(c, n, "%s takes a string", name);
            const char *s = json_string_value(obj), *sub = json_string_value(s1);
            size_t len = json_string_length(obj), ls = json_string_length(s1);
            if (name[0] == 'f') {
                const char *hit = ct_memmem(s, len, sub, ls);
                return ct_new_value(
                    c, n, json_integer(hit ? (json_int_t)ct_utf8_count(s, (size_t)(hit - s)) : -1),
                    out);
            }
            long long count = 0;
            for (const char *p = s; ls && (p = ct_memmem(p, len - (size_t)(p - s), sub, ls));
                 p += ls)
                count++;
            return ct_new_value(
                c, n, json_integer(ls ? count : (json_int_t)ct_utf8_count(s, len) + 1), out);
        }
        if (!strcmp(name, "join")) return join(c, n, ct_arg(a, 0, NULL, NULL), obj, NULL, out);
        if (!strcmp(name, "format"))
            return ct_fail(c, n, "str.format is not supported; use ~ or + to join strings");
    }
    if (!obj) return ct_fail(c, n, "calling '%s' on an undefined value", name);
    return ct_fail(c, n, "'%s' has no method '%s' here (the sandbox is immutable)",
                   ct_type_name(obj), name);
}
