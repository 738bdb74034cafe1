/* llama2.c v0 checkpoint -> Hugging Face layout (see import_llama2c.h). */
#include "runtime/model/import_llama2c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "runtime/core/tensor.h"
#include "runtime/model/config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/tokenizer.h"

/* Limits far above any llama2.c model (Llama-2 70B has dim 8192, hidden 28672, 80 layers, vocab
 * 32000) but small enough that every size product below fits in 64 bits without overflow checks. */
enum {
    L2C_HEADER_INTS = 7,
    L2C_MAX_DIM = 1 << 16,
    L2C_MAX_LAYERS = 1 << 10,
    L2C_MAX_VOCAB = 1 << 22,
    L2C_MAX_SEQ_LEN = 1 << 22,
    L2C_NAME_MAX = 96,
    L2C_PATH_MAX = 4096,
};

/* llama2.c's later export versions start with this magic where v0 has dim. */
#define L2C_V1_MAGIC 0x616b3432u

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    int head_size;
    int shared_classifier;
} l2c_header_t;

/* One output tensor: where its rows come from in the checkpoint and whether q/k rows need
 * reordering. */
typedef struct {
    char name[L2C_NAME_MAX];
    int ndim;
    int64_t shape[2];
    const float *src;
    int permute_heads; /* 0: copy as is; else number of heads whose RoPE pairs are de-interleaved */
} l2c_tensor_t;

static dsla_status_t l2c_parse_header(const char *path, const int32_t raw[L2C_HEADER_INTS],
                                      l2c_header_t *h) {
    if ((uint32_t)raw[0] == L2C_V1_MAGIC)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: llama2.c checkpoint version 1 or later (magic \"ak42\"); only the "
                          "legacy v0 format is imported: re-export it with export.py --version 0",
                          path);
    h->dim = raw[0];
    h->hidden_dim = raw[1];
    h->n_layers = raw[2];
    h->n_heads = raw[3];
    h->n_kv_heads = raw[4];
    h->shared_classifier = raw[5] > 0;
    /* -INT32_MIN overflows; it is out of range anyway, so map it to 0 and let the check refuse it.
     */
    h->vocab_size = raw[5] == INT32_MIN ? 0 : abs(raw[5]);
    h->seq_len = raw[6];

    const struct {
        const char *field;
        int value, max;
    } limits[] = {
        {"dim", h->dim, L2C_MAX_DIM},
        {"hidden_dim", h->hidden_dim, L2C_MAX_DIM * 4},
        {"n_layers", h->n_layers, L2C_MAX_LAYERS},
        {"n_heads", h->n_heads, L2C_MAX_DIM},
        {"n_kv_heads", h->n_kv_heads, L2C_MAX_DIM},
        {"vocab_size", h->vocab_size, L2C_MAX_VOCAB},
        {"seq_len", h->seq_len, L2C_MAX_SEQ_LEN},
    };
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        if (limits[i].value <= 0 || limits[i].value > limits[i].max)
            return dsla_error(DSLA_ERR_FORMAT,
                              "%s: llama2.c header field %s is %d; it must be in 1..%d (is this a "
                              "llama2.c v0 checkpoint?)",
                              path, limits[i].field, limits[i].value, limits[i].max);
    }
    if (h->dim % h->n_heads != 0)
        return dsla_error(DSLA_ERR_FORMAT, "%s: n_heads %d does not divide dim %d", path,
                          h->n_heads, h->dim);
    if (h->n_heads % h->n_kv_heads != 0)
        return dsla_error(DSLA_ERR_FORMAT, "%s: n_kv_heads %d does not divide n_heads %d", path,
                          h->n_kv_heads, h->n_heads);
    h->head_size = h->dim / h->n_heads;
    /* RoPE rotates pairs of dimensions, so an odd head size cannot come from a working model. */
    if (h->head_size % 2 != 0)
        return dsla_error(DSLA_ERR_FORMAT, "%s: head size %d (dim %d / n_heads %d) is odd", path,
                          h->head_size, h->dim, h->n_heads);
    return DSLA_OK;
}

/* Number of floats after the header, in file order, including the unused RoPE tables. */
static uint64_t l2c_weight_floats(const l2c_header_t *h, int with_classifier) {
    const uint64_t d = (uint64_t)h->dim, hd = (uint64_t)h->hidden_dim, L = (uint64_t)h->n_layers;
    const uint64_t kv = (uint64_t)h->n_kv_heads * (uint64_t)h->head_size;
    const uint64_t v = (uint64_t)h->vocab_size;
    uint64_t n = v * d;                                 /* token_embedding_table */
    n += L * d;                                         /* rms_att_weight */
    n += L * d * d + 2 * L * kv * d;                    /* wq, wk, wv */
    n += L * d * d;                                     /* wo */
    n += L * d;                                         /* rms_ffn_weight */
    n += 3 * L * hd * d;                                /* w1, w2, w3 */
    n += d;                                             /* rms_final_weight */
    n += (uint64_t)h->seq_len * (uint64_t)h->head_size; /* freq_cis_real + freq_cis_imag */
    if (with_classifier) n += v * d;                    /* wcls */
    return n;
}

static void l2c_set(l2c_tensor_t *t, const char *name, int ndim, int64_t rows, int64_t cols,
                    const float *src, int permute_heads) {
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->src = src;
    t->permute_heads = permute_heads;
}

/* Lists the HF tensors with pointers into the mapped weights (which the size check made safe).
 * Returns the count; out must hold 2 + 9 * n_layers + 1 entries. */
static size_t l2c_list_tensors(const l2c_header_t *h, const float *w, l2c_tensor_t *out) {
    const int64_t d = h->dim, hd = h->hidden_dim, L = h->n_layers, v = h->vocab_size;
    const int64_t kv = (int64_t)h->n_kv_heads * h->head_size;
    const float *embed = w;
    const float *rms_att = embed + v * d;
    const float *wq = rms_att + L * d;
    const float *wk = wq + L * d * d;
    const float *wv = wk + L * kv * d;
    const float *wo = wv + L * kv * d;
    const float *rms_ffn = wo + L * d * d;
    const float *w1 = rms_ffn + L * d;
    const float *w2 = w1 + L * hd * d;
    const float *w3 = w2 + L * d * hd;
    const float *rms_final = w3 + L * hd * d;
    const float *wcls = rms_final + d + (int64_t)h->seq_len * h->head_size;

    size_t n = 0;
    char name[L2C_NAME_MAX];
    l2c_set(&out[n++], "model.embed_tokens.weight", 2, v, d, embed, 0);
    for (int64_t l = 0; l < L; l++) {
#define L2C_LAYER(suffix, ndim, rows, cols, src, heads)                                            \
    do {                                                                                           \
        snprintf(name, sizeof name, "model.layers.%d.%s", (int)l, suffix);                         \
        l2c_set(&out[n++], name, ndim, rows, cols, src, heads);                                    \
    } while (0)
        L2C_LAYER("input_layernorm.weight", 1, d, 0, rms_att + l * d, 0);
        L2C_LAYER("self_attn.q_proj.weight", 2, d, d, wq + l * d * d, h->n_heads);
        L2C_LAYER("self_attn.k_proj.weight", 2, kv, d, wk + l * kv * d, h->n_kv_heads);
        L2C_LAYER("self_attn.v_proj.weight", 2, kv, d, wv + l * kv * d, 0);
        L2C_LAYER("self_attn.o_proj.weight", 2, d, d, wo + l * d * d, 0);
        L2C_LAYER("post_attention_layernorm.weight", 1, d, 0, rms_ffn + l * d, 0);
        L2C_LAYER("mlp.gate_proj.weight", 2, hd, d, w1 + l * hd * d, 0);
        L2C_LAYER("mlp.down_proj.weight", 2, d, hd, w2 + l * d * hd, 0);
        L2C_LAYER("mlp.up_proj.weight", 2, hd, d, w3 + l * hd * d, 0);
#undef L2C_LAYER
    }
    l2c_set(&out[n++], "model.norm.weight", 1, d, 0, rms_final, 0);
    /* A tied head has no tensor of its own: transformers' save_pretrained drops lm_head.weight. */
    if (!h->shared_classifier) l2c_set(&out[n++], "lm_head.weight", 2, v, d, wcls, 0);
    return n;
}

/* llama2.c stores each head's rows as interleaved RoPE pairs (x0, x1), (x2, x3), ...; HF rotates
 * the first half of a head against the second. Row 2i+j of a head moves to row j*(head/2)+i,
 * exactly the `permute` of transformers' convert_llama_weights_to_hf.py. */
static void l2c_permute_rows(const float *src, float *dst, int64_t rows, int64_t cols, int heads) {
    const int64_t head = rows / heads, half = head / 2;
    for (int64_t hh = 0; hh < heads; hh++)
        for (int64_t i = 0; i < half; i++)
            for (int64_t j = 0; j < 2; j++)
                memcpy(dst + (hh * head + j * half + i) * cols,
                       src + (hh * head + 2 * i + j) * cols, (size_t)cols * sizeof(float));
}

static int l2c_compare_names(const void *a, const void *b) {
    return strcmp(((const l2c_tensor_t *)a)->name, ((const l2c_tensor_t *)b)->name);
}

static dsla_status_t l2c_write_safetensors(const l2c_header_t *h, const float *weights,
                                           const char *path) {
    size_t cap = 2 + 9 * (size_t)h->n_layers + 1;
    l2c_tensor_t *tensors = calloc(cap, sizeof *tensors);
    const size_t q_floats = (size_t)h->dim * (size_t)h->dim; /* the largest permuted matrix */
    float *scratch = malloc(q_floats * sizeof(float));
    dsla_st_writer_t *w = NULL;
    dsla_status_t s = DSLA_OK;
    if (!tensors || !scratch) {
        s = dsla_error_oom("%s: %zu tensors", path, cap);
        goto done;
    }
    size_t n = l2c_list_tensors(h, weights, tensors);
    /* save_pretrained (safetensors) orders tensors by name; matching it keeps the files comparable
     * byte for byte with a transformers export. */
    qsort(tensors, n, sizeof *tensors, l2c_compare_names);

    s = dsla_st_writer_create(&w);
    if (s != DSLA_OK) goto done;
    s = dsla_st_writer_set_metadata(w, "format", "pt");
    for (size_t i = 0; i < n && s == DSLA_OK; i++) {
        const l2c_tensor_t *t = &tensors[i];
        const float *data = t->src;
        if (t->permute_heads) {
            l2c_permute_rows(t->src, scratch, t->shape[0], t->shape[1], t->permute_heads);
            data = scratch;
        }
        s = dsla_st_writer_add(w, t->name, DSLA_DTYPE_F32, t->ndim, t->shape, data);
    }
    if (s == DSLA_OK) s = dsla_st_writer_save(w, path);
done:
    dsla_st_writer_destroy(&w);
    free(scratch);
    free(tensors);
    return s;
}

static dsla_status_t l2c_write_config(const l2c_header_t *h, const char *path) {
    dsla_model_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden_size = h->dim;
    cfg.num_layers = h->n_layers;
    cfg.num_heads = h->n_heads;
    cfg.num_kv_heads = h->n_kv_heads;
    cfg.head_dim = h->head_size;
    cfg.intermediate_size = h->hidden_dim;
    cfg.vocab_size = h->vocab_size;
    cfg.max_position_embeddings = h->seq_len;
    /* run.c hard-codes these: eps 1e-5 in rmsnorm, theta 10000 in its RoPE, BOS 1 and EOS 2 in the
     * sentencepiece vocabulary llama2.c trains. */
    cfg.rms_norm_eps = 1e-5f;
    cfg.rope_theta = 10000.0f;
    cfg.rope_type = DSLA_ROPE_DEFAULT;
    cfg.bos_token_id = 1;
    cfg.eos_token_ids[0] = 2;
    cfg.num_eos_token_ids = 1;
    cfg.tie_word_embeddings = h->shared_classifier;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "float32");
    return dsla_config_save(&cfg, path);
}

/* Written through a temporary file and rename so that a reader never sees half a file. */
static dsla_status_t l2c_write_json(json_t *root, const char *path) {
    char tmp[L2C_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    if (json_dump_file(root, tmp, JSON_INDENT(2)) != 0)
        return dsla_error(DSLA_ERR_IO, "%s: cannot write", tmp);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return dsla_error(DSLA_ERR_IO, "%s: cannot rename from %s: %s", path, tmp, strerror(e));
    }
    return DSLA_OK;
}

/* The special-token names are transformers' LlamaTokenizer ones, not llama2.c's "\n<s>\n" pieces,
 * which are a decoding convenience of run.c. */
static dsla_status_t l2c_write_tokenizer_config(const l2c_header_t *h, const char *path) {
    json_t *root = json_pack("{s:s, s:s, s:s, s:b, s:i, s:s}", "bos_token", "<s>", "eos_token",
                             "</s>", "unk_token", "<unk>", "add_bos_token", 1, "model_max_length",
                             (json_int_t)h->seq_len, "tokenizer_class", "LlamaTokenizerFast");
    if (!root) return dsla_error_oom("%s: building JSON", path);
    dsla_status_t s = l2c_write_json(root, path);
    json_decref(root);
    return s;
}

/* mkdir -p: creating intermediate directories spares callers a second step. */
static dsla_status_t l2c_make_dirs(const char *dir) {
    char buf[L2C_PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "output directory path too long: %s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return dsla_error(DSLA_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return dsla_error(DSLA_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return dsla_error(DSLA_ERR_IO, "%s: exists and is not a directory", buf);
    return DSLA_OK;
}

static dsla_status_t l2c_join(char *out, const char *dir, const char *file) {
    if (snprintf(out, L2C_PATH_MAX, "%s/%s", dir, file) >= L2C_PATH_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "output path too long: %s/%s", dir, file);
    return DSLA_OK;
}

/* Maps the checkpoint read-only and checks it completely: header and exact size. */
static dsla_status_t l2c_map(const char *path, l2c_header_t *h, void **base, size_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return dsla_error(errno == ENOENT ? DSLA_ERR_NOT_FOUND : DSLA_ERR_IO, "%s: cannot open: %s",
                          path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return dsla_error(DSLA_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    const uint64_t actual = (uint64_t)st.st_size;
    const uint64_t header_bytes = L2C_HEADER_INTS * sizeof(int32_t);
    if (actual < header_bytes) {
        close(fd);
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: %llu bytes is shorter than the %llu-byte llama2.c header", path,
                          (unsigned long long)actual, (unsigned long long)header_bytes);
    }
    void *p = mmap(NULL, (size_t)actual, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return dsla_error(DSLA_ERR_IO, "%s: cannot mmap: %s", path, strerror(e));

    int32_t raw[L2C_HEADER_INTS];
    memcpy(raw, p, sizeof raw);
    dsla_status_t s = l2c_parse_header(path, raw, h);
    if (s == DSLA_OK) {
        const uint64_t expected = header_bytes + l2c_weight_floats(h, !h->shared_classifier) * 4;
        if (actual != expected)
            s = dsla_error(
                DSLA_ERR_FORMAT,
                "%s: size %llu bytes, but the header (dim %d, hidden_dim %d, n_layers %d, "
                "n_heads %d, n_kv_heads %d, vocab_size %d (%s), seq_len %d) implies %llu "
                "bytes: %s",
                path, (unsigned long long)actual, h->dim, h->hidden_dim, h->n_layers, h->n_heads,
                h->n_kv_heads, h->vocab_size,
                h->shared_classifier ? "shared classifier" : "untied classifier", h->seq_len,
                (unsigned long long)expected,
                actual < expected ? "the file is truncated" : "trailing bytes follow");
    }
    if (s != DSLA_OK) {
        munmap(p, (size_t)actual);
        return s;
    }
    *base = p;
    *size = (size_t)actual;
    return DSLA_OK;
}

dsla_status_t dsla_import_llama2c(const char *ckpt_path, const char *tokenizer_path,
                                  const char *outdir) {
    if (!ckpt_path || !tokenizer_path || !outdir)
        return dsla_error(
            DSLA_ERR_INVALID_ARGUMENT,
            "import llama2.c: checkpoint, tokenizer and output directory are required");
    l2c_header_t h = {0}; /* set by l2c_map; zeroed because GCC cannot see that at -O2 */
    void *base = NULL;
    size_t size = 0;
    DSLA_TRY(l2c_map(ckpt_path, &h, &base, &size));

    /* Everything that can be refused is checked before the first file is written. */
    dsla_tokenizer_t *tok = NULL;
    char path[L2C_PATH_MAX];
    dsla_status_t s = dsla_tokenizer_load(&tok, tokenizer_path);
    if (s == DSLA_OK && dsla_tokenizer_vocab_size(tok) != h.vocab_size)
        s = dsla_error(DSLA_ERR_FORMAT, "%s: %d tokens, but checkpoint %s has vocab_size %d",
                       tokenizer_path, dsla_tokenizer_vocab_size(tok), ckpt_path, h.vocab_size);
    if (s == DSLA_OK) s = l2c_make_dirs(outdir);

    const float *weights = (const float *)((const char *)base + L2C_HEADER_INTS * sizeof(int32_t));
    if (s == DSLA_OK) s = l2c_join(path, outdir, "model.safetensors");
    if (s == DSLA_OK) s = l2c_write_safetensors(&h, weights, path);
    if (s == DSLA_OK) s = l2c_join(path, outdir, "config.json");
    if (s == DSLA_OK) s = l2c_write_config(&h, path);
    if (s == DSLA_OK) s = l2c_join(path, outdir, "tokenizer.json");
    if (s == DSLA_OK) s = dsla_tokenizer_save_json(tok, path);
    if (s == DSLA_OK) s = l2c_join(path, outdir, "tokenizer_config.json");
    if (s == DSLA_OK) s = l2c_write_tokenizer_config(&h, path);
    if (s != DSLA_OK)
        s = dsla_error_wrap(s, "importing llama2.c checkpoint %s into %s: ", ckpt_path, outdir);

    dsla_tokenizer_destroy(&tok);
    munmap(base, size);
    return s;
}
