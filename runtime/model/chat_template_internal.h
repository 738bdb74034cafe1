/* The chat-template engine's insides, shared by its parser (chat_template_parse.c), evaluator
 * (chat_template_eval.c) and value helpers (chat_template_value.c); nothing outside
 * runtime/model/chat_template*.c includes this. Values are Jansson values (string, integer, real,
 * true/false, null, array, object) plus "undefined", which is a NULL json_t pointer; the syntax
 * tree holds literals as C data, so that concurrent renders share no reference counts. */
#ifndef DSLA_MODEL_CHAT_TEMPLATE_INTERNAL_H
#define DSLA_MODEL_CHAT_TEMPLATE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "runtime/model/chat_template.h"

typedef enum {
    /* expressions */
    CT_STR,    /* str, len */
    CT_INT,    /* i */
    CT_FLOAT,  /* f */
    CT_BOOL,   /* i */
    CT_NONE,   /* */
    CT_NAME,   /* str */
    CT_LIST,   /* kids: items */
    CT_TUPLE,  /* kids: items */
    CT_DICT,   /* kids: key, value, key, value, ... */
    CT_ATTR,   /* kids[0] . str */
    CT_INDEX,  /* kids[0] [ kids[1] ] */
    CT_SLICE,  /* kids[0] [ kids[1] : kids[2] : kids[3] ] (NULL kids: absent) */
    CT_CALL,   /* kids[0] ( kids[1..] ); names: keyword names (NULL: positional) */
    CT_FILTER, /* kids[0] | str ( kids[1..] ) */
    CT_TEST,   /* kids[0] is [not: i] str ( kids[1..] ) */
    CT_UNARY,  /* op kids[0] ('-', '+', '!' for not) */
    CT_BINARY, /* kids[0] op kids[1] */
    CT_AND,    /* kids[0] and kids[1] */
    CT_OR,     /* kids[0] or kids[1] */
    CT_COND,   /* kids[1] if kids[0] else kids[2] (kids[2] NULL: undefined) */
    /* statements */
    CT_BODY,      /* kids: statements in order */
    CT_TEXT,      /* str, len */
    CT_OUTPUT,    /* {{ kids[0] }} */
    CT_IF,        /* kids: cond, body, cond, body, ..., [else body] (odd count: else) */
    CT_FOR,       /* names: targets; kids[0] iterable, kids[1] filter (or NULL), kids[2] body,
                     kids[3] else body (or NULL) */
    CT_SET,       /* kids[0] target (CT_NAME, CT_ATTR or CT_TUPLE of names), kids[1] value */
    CT_SET_BLOCK, /* kids[0] target name, kids[1] body */
    CT_BREAK,
    CT_CONTINUE,
    CT_MACRO, /* str name; names: parameters; kids[0] body, kids[1..]: defaults (NULL: none) */
} ct_kind_t;

/* binary operators */
enum {
    CT_OP_ADD = 1,
    CT_OP_SUB,
    CT_OP_MUL,
    CT_OP_DIV,
    CT_OP_FLOORDIV,
    CT_OP_MOD,
    CT_OP_POW,
    CT_OP_CONCAT,
    CT_OP_EQ,
    CT_OP_NE,
    CT_OP_LT,
    CT_OP_LE,
    CT_OP_GT,
    CT_OP_GE,
    CT_OP_IN,
    CT_OP_NOT_IN,
};

typedef struct ct_node ct_node_t;
struct ct_node {
    ct_kind_t kind;
    int line;
    int op;
    long long i;
    double f;
    char *str;
    size_t len;
    ct_node_t **kids;
    int n_kids;
    char **names; /* CT_CALL: [n_kids - 1] keyword names; CT_FOR/CT_MACRO: targets/parameters */
    int n_names;
};

struct dsla_chat_template {
    ct_node_t *root;
    char *name; /* where it came from, for messages */
    char *bos_token, *eos_token;
};

/* Parses source (UTF-8, len bytes) with transformers' settings (trim_blocks, lstrip_blocks, no
 * trailing newline kept). NULL with err filled (line and what) on a syntax error or a limit. */
ct_node_t *ct_parse(const char *source, size_t len, char *err, size_t err_size);
void ct_node_free(ct_node_t *n);

/* ---- values (chat_template_value.c) ---- */

/* A string of len bytes (not checked as UTF-8: every producer keeps it valid). */
json_t *ct_string(const char *s, size_t len);
/* Python's truth value (undefined is false). */
bool ct_truthy(const json_t *v);
/* A number's (or a boolean's) value as a double; false for anything else. */
bool ct_to_double(const json_t *v, double *x);
/* Python's == (1 == 1.0 == True; undefined equals nothing). */
bool ct_equal(const json_t *a, const json_t *b);
/* Code points of a UTF-8 string; ct_utf8_offset: the byte offset of code point i. */
size_t ct_utf8_count(const char *s, size_t len);
size_t ct_utf8_offset(const char *s, size_t len, size_t i);
/* The first k bytes of needle in hay's n bytes, or NULL (memmem without _GNU_SOURCE). */
const char *ct_memmem(const char *hay, size_t n, const char *needle, size_t k);
/* Writes code point cp as UTF-8 (1 to 4 bytes) into out; the byte count. */
size_t ct_utf8_encode(unsigned cp, char *out);
/* Python's whitespace (str.strip()). Reads one code point at s (n bytes left) into *size. */
bool ct_space_at(const char *s, size_t n, size_t *size);

/* A growing byte buffer that refuses to pass limit bytes. */
typedef struct {
    char *data;
    size_t len, cap, limit;
} ct_buf_t;
bool ct_buf_add(ct_buf_t *b, const char *s, size_t n); /* false: limit or no memory */
/* str(v) as Python prints it: strings as they are, None, True, 1.5, ['a', 1], {'k': 'v'};
 * undefined prints nothing. */
bool ct_buf_str(ct_buf_t *b, const json_t *v);
/* json.dumps(v, ensure_ascii=False, indent=indent (negative: None), sort_keys=sort_keys). False
 * with a message in err for a value JSON cannot hold (undefined). */
bool ct_buf_json(ct_buf_t *b, const json_t *v, int indent, bool sort_keys, char *err,
                 size_t err_size);
/* Python's repr of a float (shortest round-trip, "1.0", "inf"). */
void ct_float_repr(double x, char *out, size_t size);

/* ---- rendering (chat_template_eval.c, chat_template_filters.c) ---- */

#define CT_ARGS_MAX 16

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
    json_t *v[CT_ARGS_MAX];
    const char *name[CT_ARGS_MAX]; /* NULL: positional */
} args_t;

/* Records the render's error (the first one) with the node's line; false. */
bool ct_fail(ctx_t *c, const ct_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Python's name of v's type ("str", "dict", "undefined"). */
const char *ct_type_name(const json_t *v);
/* Counts k steps against DSLA_CHAT_TEMPLATE_STEPS_MAX. */
bool ct_step(ctx_t *c, const ct_node_t *n, long long k);
/* A buffer bounded like the output; ct_too_long frees it and fails naming the limit;
 * ct_buf_value makes it a string value, taking its memory. */
ct_buf_t ct_tmp_buf(const ctx_t *c);
bool ct_too_long(ctx_t *c, const ct_node_t *n, ct_buf_t *b);
bool ct_buf_value(ctx_t *c, const ct_node_t *n, ct_buf_t *b, json_t **out);
bool ct_str_value(ctx_t *c, const ct_node_t *n, const char *s, size_t len, json_t **out);
/* *out = v, failing "out of memory" when v is NULL. */
bool ct_new_value(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out);
/* Positional argument pos, or keyword name (NULL: none); *found (if given) says whether given.
 * ct_str_arg and ct_int_arg check its type (what names the callee in the message). */
json_t *ct_arg(const args_t *a, int pos, const char *name, bool *found);
bool ct_str_arg(ctx_t *c, const ct_node_t *n, const args_t *a, int pos, const char *name,
                const char *what, const json_t **out);
bool ct_int_arg(ctx_t *c, const ct_node_t *n, const args_t *a, int pos, const char *name,
                const char *what, long long dflt, long long *out);
/* Python's integers (booleans count as 0 and 1). */
bool ct_is_int(const json_t *v);
long long ct_int_of(const json_t *v);
/* a op b for CT_OP_ADD..CT_OP_POW, and a op b for CT_OP_EQ..CT_OP_NOT_IN. */
bool ct_arith(ctx_t *c, const ct_node_t *n, int op, json_t *a, json_t *b, json_t **out);
bool ct_compare(ctx_t *c, const ct_node_t *n, int op, json_t *a, json_t *b, bool *out);

/* ---- tests, filters and methods (chat_template_filters.c) ---- */

bool ct_run_test(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
                 bool *out);
bool ct_filter(ctx_t *c, const ct_node_t *n, const char *name, json_t *v, const args_t *a,
               json_t **out);
bool ct_method(ctx_t *c, const ct_node_t *n, json_t *obj, const char *name, const args_t *a,
               json_t **out);
/* An iterable as a list: a list as it is (a new reference), a dict's keys, a string's code
 * points, undefined as empty; anything else an error. */
bool ct_as_list(ctx_t *c, const ct_node_t *n, json_t *v, json_t **out);

#endif
