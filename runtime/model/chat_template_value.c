/* The chat-template engine's values as Python sees them (chat_template_internal.h): truth,
 * equality, str(), json.dumps() and code points. */
#include "runtime/model/chat_template_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *ct_string(const char *s, size_t len) {
    return json_stringn_nocheck(s ? s : "", len);
}

bool ct_truthy(const json_t *v) {
    if (!v) return false;
    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_INTEGER:
        return json_integer_value(v) != 0;
    case JSON_REAL:
        return json_real_value(v) != 0;
    case JSON_TRUE:
        return true;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    default:
        return false;
    }
}

bool ct_to_double(const json_t *v, double *x) {
    if (json_is_integer(v))
        *x = (double)json_integer_value(v);
    else if (json_is_real(v))
        *x = json_real_value(v);
    else if (json_is_boolean(v))
        *x = json_is_true(v);
    else
        return false;
    return true;
}

bool ct_equal(const json_t *a, const json_t *b) {
    if (!a || !b) return false;
    double x, y;
    if (ct_to_double(a, &x) && ct_to_double(b, &y)) {
        if (json_is_integer(a) && json_is_integer(b))
            return json_integer_value(a) == json_integer_value(b);
        return x == y;
    }
    if (json_typeof(a) != json_typeof(b)) return false;
    switch (json_typeof(a)) {
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    case JSON_NULL:
        return true;
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b)) return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!ct_equal(json_array_get(a, i), json_array_get(b, i))) return false;
        return true;
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b)) return false;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k,
                            v) if (!ct_equal(v, json_object_get(b, k))) return false;
        return true;
    }
    default:
        return false;
    }
}

size_t ct_utf8_count(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

size_t ct_utf8_offset(const char *s, size_t len, size_t i) {
    size_t k = 0, seen = 0;
    for (; k < len; k++)
        if (((unsigned char)s[k] & 0xc0) != 0x80 && seen++ == i) break;
    return k;
}

bool ct_space_at(const char *s, size_t n, size_t *size) {
    const unsigned char *u = (const unsigned char *)s;
    *size = 1;
    if (n == 0) return false;
    if (u[0] < 0x80)
        return u[0] == ' ' || (u[0] >= '\t' && u[0] <= '\r') || (u[0] >= 0x1c && u[0] <= 0x1f);
    unsigned cp = 0;
    if ((u[0] & 0xe0) == 0xc0 && n >= 2) {
        cp = (unsigned)(u[0] & 0x1f) << 6 | (u[1] & 0x3f);
        *size = 2;
    } else if ((u[0] & 0xf0) == 0xe0 && n >= 3) {
        cp = (unsigned)(u[0] & 0x0f) << 12 | (unsigned)(u[1] & 0x3f) << 6 | (u[2] & 0x3f);
        *size = 3;
    } else {
        return false;
    }
    return cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

bool ct_buf_add(ct_buf_t *b, const char *s, size_t n) {
    if (n > b->limit - b->len) return false;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return false;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

static bool buf_cstr(ct_buf_t *b, const char *s) {
    return ct_buf_add(b, s, strlen(s));
}

void ct_float_repr(double x, char *out, size_t size) {
    if (isnan(x)) {
        snprintf(out, size, "nan");
        return;
    }
    if (isinf(x)) {
        snprintf(out, size, x < 0 ? "-inf" : "inf");
        return;
    }
    char buf[96];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    /* Python: exponent from 1e16 on and below 1e-4, written e+16 / e-05; else digits and ".0" */
    char *e = strchr(buf, 'e');
    if (e) {
        int exp = atoi(e + 1);
        if (exp < 16 && exp >= -4) {
            snprintf(buf, sizeof buf, "%.17f", x);
            for (int p = 0; p <= 17; p++) { /* fewest decimals that round-trip */
                char t[80];
                snprintf(t, sizeof t, "%.*f", p, x);
                if (strtod(t, NULL) == x) {
                    snprintf(buf, sizeof buf, "%s", t);
                    break;
                }
            }
            e = NULL;
        } else {
            char mant[40];
            snprintf(mant, sizeof mant, "%.*s", (int)(e - buf < 32 ? e - buf : 32), buf);
            snprintf(buf, sizeof buf, "%se%c%02d", mant, exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        }
    }
    if (!strchr(buf, 'e') && !strchr(buf, '.') && !strchr(buf, 'n'))
        snprintf(out, size, "%s.0", buf);
    else
        snprintf(out, size, "%s", buf);
}

/* Python's repr of a string: single quotes unless it holds ' and no ". */
static bool buf_repr_string(ct_buf_t *b, const char *s, size_t n) {
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    if (!ct_buf_add(b, &q, 1)) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        const char *out = NULL;
        if (c == '\\')
            out = "\\\\";
        else if (c == '\n')
            out = "\\n";
        else if (c == '\r')
            out = "\\r";
        else if (c == '\t')
            out = "\\t";
        else if (c == (unsigned char)q)
            out = q == '\'' ? "\\'" : "\\\"";
        else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            out = esc;
        }
        if (out ? !buf_cstr(b, out) : !ct_buf_add(b, (const char *)&s[i], 1)) return false;
    }
    return ct_buf_add(b, &q, 1);
}

static bool buf_repr(ct_buf_t *b, const json_t *v) {
    if (json_is_string(v)) return buf_repr_string(b, json_string_value(v), json_string_length(v));
    if (json_is_array(v)) {
        if (!buf_cstr(b, "[")) return false;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i && !buf_cstr(b, ", ")) || !buf_repr(b, json_array_get(v, i))) return false;
        return buf_cstr(b, "]");
    }
    if (json_is_object(v)) {
        if (!buf_cstr(b, "{")) return false;
        const char *k;
        json_t *x;
        bool first = true;
        json_object_foreach((json_t *)v, k, x) {
            if ((!first && !buf_cstr(b, ", ")) || !buf_repr_string(b, k, strlen(k)) ||
                !buf_cstr(b, ": ") || !buf_repr(b, x))
                return false;
            first = false;
        }
        return buf_cstr(b, "}");
    }
    return ct_buf_str(b, v);
}

bool ct_buf_str(ct_buf_t *b, const json_t *v) {
    char num[64];
    if (!v) return true;
    switch (json_typeof(v)) {
    case JSON_STRING:
        return ct_buf_add(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf_cstr(b, num);
    case JSON_REAL:
        ct_float_repr(json_real_value(v), num, sizeof num);
        return buf_cstr(b, num);
    case JSON_TRUE:
        return buf_cstr(b, "True");
    case JSON_FALSE:
        return buf_cstr(b, "False");
    case JSON_NULL:
        return buf_cstr(b, "None");
    default:
        return buf_repr(b, v);
    }
}

static bool json_string_out(ct_buf_t *b, const char *s, size_t n) {
    if (!buf_cstr(b, "\"")) return false;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", c);
            esc = u;
        }
        if (!esc) continue;
        if (!ct_buf_add(b, s + run, i - run) || !buf_cstr(b, esc)) return false;
        run = i + 1;
    }
    return ct_buf_add(b, s + run, n - run) && buf_cstr(b, "\"");
}

static bool newline_indent(ct_buf_t *b, int indent, int level) {
    if (!buf_cstr(b, "\n")) return false;
    for (int i = 0; i < indent * level; i++)
        if (!buf_cstr(b, " ")) return false;
    return true;
}

static int key_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool json_out(ct_buf_t *b, const json_t *v, int indent, bool sort_keys, int level, char *err,
                     size_t err_size) {
    if (level > DSLA_CHAT_TEMPLATE_DEPTH_MAX) {
        snprintf(err, err_size, "tojson: a value nested deeper than %d",
                 DSLA_CHAT_TEMPLATE_DEPTH_MAX);
        return false;
    }
    if (!v) {
        snprintf(err, err_size, "tojson: an undefined value is not JSON serializable");
        return false;
    }
    const char *item_sep = indent >= 0 ? "," : ", ";
    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_out(b, json_string_value(v), json_string_length(v));
    case JSON_TRUE:
        return buf_cstr(b, "true");
    case JSON_FALSE:
        return buf_cstr(b, "false");
    case JSON_NULL:
        return buf_cstr(b, "null");
    case JSON_REAL: {
        char num[64];
        double x = json_real_value(v);
        ct_float_repr(x, num, sizeof num);
        return buf_cstr(b, isnan(x) ? "NaN" : isinf(x) ? (x < 0 ? "-Infinity" : "Infinity") : num);
    }
    case JSON_INTEGER:
        return ct_buf_str(b, v);
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0) return buf_cstr(b, "[]");
        if (!buf_cstr(b, "[")) return false;
        for (size_t i = 0; i < n; i++) {
            if (i && !buf_cstr(b, item_sep)) return false;
            if (indent >= 0 && !newline_indent(b, indent, level + 1)) return false;
            if (!json_out(b, json_array_get(v, i), indent, sort_keys, level + 1, err, err_size))
                return false;
        }
        return (indent < 0 || newline_indent(b, indent, level)) && buf_cstr(b, "]");
    }
    case JSON_OBJECT: {
        size_t n = json_object_size(v), k = 0;
        if (n == 0) return buf_cstr(b, "{}");
        const char **keys = malloc(n * sizeof *keys);
        if (!keys) return false;
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)v, key, x) keys[k++] = key;
        if (sort_keys) qsort(keys, n, sizeof *keys, key_cmp);
        bool ok = buf_cstr(b, "{");
        for (size_t i = 0; ok && i < n; i++) {
            ok = (!i || buf_cstr(b, item_sep)) &&
                 (indent < 0 || newline_indent(b, indent, level + 1)) &&
                 json_string_out(b, keys[i], strlen(keys[i])) && buf_cstr(b, ": ") &&
                 json_out(b, json_object_get(v, keys[i]), indent, sort_keys, level + 1, err,
                          err_size);
        }
        free(keys);
        return ok && (indent < 0 || newline_indent(b, indent, level)) && buf_cstr(b, "}");
    }
    }
    return false;
}

bool ct_buf_json(ct_buf_t *b, const json_t *v, int indent, bool sort_keys, char *err,
                 size_t err_size) {
    return json_out(b, v, indent, sort_keys, 0, err, err_size);
}

const char *ct_memmem(const char *hay, size_t n, const char *needle, size_t k) {
    if (k == 0) return hay;
    for (size_t i = 0; i + k <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

size_t ct_utf8_encode(unsigned cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}
