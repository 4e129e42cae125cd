/* Hashed n-gram features of documents, and linear scores over them, for the fast quality classifier.
 *
 * lmforge.quality.features documents the features; this file computes exactly what its pure-Python
 * twin (`features.py: _py_features`) computes, only about two orders of magnitude faster: it reads
 * the str's code points in place (no UTF-8 copy), keeps one growing buffer per call, and scores a
 * document without ever building its sparse row.
 *
 * Character classes come from a table the caller builds from lmforge.lang and unicodedata (one byte
 * per code point below the table's length): the low three bits are the class, bit 3 marks a mark
 * that ends a sentence.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { SPACE = 0, NEWLINE = 1, WORD = 2, CJK = 3, PUNCT = 4 };
#define TERMINAL 8
#define N_STATS 8

static const uint64_t FNV_OFFSET = 1469598103934665603ULL, FNV_PRIME = 1099511628211ULL;
static const uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL;

static inline uint64_t mix(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27; x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

typedef struct { uint32_t index; float value; } Feature;

typedef struct {
    Feature *feats; Py_ssize_t n_feats, cap_feats;
    int32_t *slots; Py_ssize_t cap_slots; /* open addressing: slot + 1 -> position in feats (0: empty) */
    uint64_t *tokens; Py_ssize_t n_tokens, cap_tokens;
    uint64_t *lines; Py_ssize_t n_lines, cap_lines;
} Buffers;

static int grow(void **ptr, Py_ssize_t *cap, Py_ssize_t need, size_t size) {
    if (need <= *cap) return 0;
    Py_ssize_t cap2 = *cap ? *cap : 256;
    while (cap2 < need) cap2 *= 2;
    void *p = realloc(*ptr, (size_t)cap2 * size);
    if (!p) { PyErr_NoMemory(); return -1; }
    *ptr = p; *cap = cap2;
    return 0;
}

static void free_buffers(Buffers *b) { free(b->feats); free(b->slots); free(b->tokens); free(b->lines); }

static int push_token(Buffers *b, uint64_t h) {
    if (grow((void **)&b->tokens, &b->cap_tokens, b->n_tokens + 1, sizeof(uint64_t))) return -1;
    b->tokens[b->n_tokens++] = h;
    return 0;
}

/* Room for `n` distinct features, the hash table emptied (its size returned; -1 on failure): a
 * document's features are merged as they come, without sorting. */
static Py_ssize_t reset_table(Buffers *b, Py_ssize_t n) {
    Py_ssize_t need = 16;
    while (need < 2 * n) need *= 2;
    if (need > b->cap_slots) {
        free(b->slots);
        b->slots = malloc((size_t)need * sizeof(int32_t));
        if (!b->slots) { b->cap_slots = 0; PyErr_NoMemory(); return -1; }
        b->cap_slots = need;
    }
    memset(b->slots, 0, (size_t)need * sizeof(int32_t));
    b->n_feats = 0;
    return grow((void **)&b->feats, &b->cap_feats, n, sizeof(Feature)) ? -1 : need;
}

/* feats[slot] += value, a new entry when the slot is new (the table has room: see reset_table) */
static void add_feat(Buffers *b, uint32_t index, float value, Py_ssize_t table_size) {
    size_t mask = (size_t)table_size - 1, at = (size_t)(index * 2654435761u) & mask;
    while (b->slots[at]) {
        Feature *f = &b->feats[b->slots[at] - 1];
        if (f->index == index) { f->value += value; return; }
        at = (at + 1) & mask;
    }
    b->feats[b->n_feats].index = index; b->feats[b->n_feats].value = value;
    b->slots[at] = (int32_t)(++b->n_feats);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static inline Py_UCS4 fold(Py_UCS4 c) {
    if (c >= 0xFF01 && c <= 0xFF5E) c -= 0xFEE0; /* full-width ASCII */
    if (c >= 'A' && c <= 'Z') c += 32;
    if (c >= '1' && c <= '9') c = '0';
    return c;
}

static inline int bin_of(double x, double scale, int top) {
    int v = (int)floor(x * scale);
    return v < 0 ? 0 : (v > top ? top : v);
}

static inline int log2_bin(double x) { return bin_of(log2(x + 1.0), 1.0, 24); }

/* The features of one document into b->feats, each slot once, in the order first seen. */
static int doc_features(PyObject *text, const unsigned char *table, Py_ssize_t table_len, int bits, int ngrams,
                        Py_ssize_t max_chars, Buffers *b) {
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n > max_chars) n = max_chars;
    const uint32_t mask = (uint32_t)((1ULL << bits) - 1);
    b->n_feats = b->n_tokens = b->n_lines = 0;

    uint64_t word = FNV_OFFSET, line = FNV_OFFSET;
    int in_word = 0, last_newline = 1;
    Py_ssize_t chars = 0, punct = 0, digits = 0, line_chars = 0, lines = 0, terminal_lines = 0, short_lines = 0;
    int last_class = SPACE;
    for (Py_ssize_t i = 0; i <= n; i++) {
        Py_UCS4 c = i < n ? PyUnicode_READ(kind, data, i) : '\n';
        int klass = c < (Py_UCS4)table_len ? table[c] : WORD;
        int cls = klass & 7;
        if (cls != WORD && in_word) { if (push_token(b, word)) return -1; in_word = 0; }
        if (cls == NEWLINE) {
            if (line_chars) {
                lines++;
                terminal_lines += (last_class & TERMINAL) != 0;
                short_lines += line_chars < 30;
                if (grow((void **)&b->lines, &b->cap_lines, b->n_lines + 1, sizeof(uint64_t))) return -1;
                b->lines[b->n_lines++] = line;
            }
            if (!last_newline && i < n && push_token(b, mix(GOLDEN ^ 10))) return -1;
            last_newline = 1; line = FNV_OFFSET; line_chars = 0;
            continue;
        }
        if (cls == SPACE) continue;
        Py_UCS4 f = fold(c);
        chars++; line_chars++; last_class = klass; last_newline = 0;
        line = (line ^ f) * FNV_PRIME;
        punct += cls == PUNCT;
        digits += f == '0';
        if (cls == WORD) {
            if (!in_word) { word = FNV_OFFSET; in_word = 1; }
            word = (word ^ f) * FNV_PRIME;
        } else if (push_token(b, mix((FNV_OFFSET ^ f) * FNV_PRIME))) { /* a CJK character or a mark: a token of its own */
            return -1;
        }
    }

    /* n-grams: counts, then log1p and L2-normalised; then the shape features */
    Py_ssize_t most = b->n_tokens * ngrams + N_STATS;
    Py_ssize_t table_size = reset_table(b, most);
    if (table_size < 0) return -1;
    for (Py_ssize_t t = 0; t < b->n_tokens; t++) {
        uint64_t h = mix(b->tokens[t]);
        add_feat(b, (uint32_t)(h & mask), 1.0f, table_size);
        for (int k = 1; k < ngrams && t + k < b->n_tokens; k++) {
            h = mix(h * GOLDEN + b->tokens[t + k] + (uint64_t)k);
            add_feat(b, (uint32_t)(h & mask), 1.0f, table_size);
        }
    }
    double norm = 0.0;
    for (Py_ssize_t r = 0; r < b->n_feats; r++) {
        double v = log1p((double)b->feats[r].value);
        b->feats[r].value = (float)v;
        norm += v * v;
    }
    norm = norm > 0 ? sqrt(norm) : 1.0;
    for (Py_ssize_t r = 0; r < b->n_feats; r++) b->feats[r].value = (float)(b->feats[r].value / norm);

    /* the shape of the text: length, lines, repeated lines, sentence ends, marks, digits (value 1 each) */
    Py_ssize_t dup = 0;
    if (b->n_lines > 1) {
        qsort(b->lines, (size_t)b->n_lines, sizeof(uint64_t), cmp_u64);
        for (Py_ssize_t r = 1; r < b->n_lines; r++) dup += b->lines[r] == b->lines[r - 1];
    }
    double nl = lines ? (double)lines : 1.0, nc = chars ? (double)chars : 1.0;
    int stats[N_STATS] = {
        log2_bin((double)chars), log2_bin((double)lines), log2_bin((double)chars / nl),
        bin_of((double)dup / nl, 10, 10), bin_of((double)terminal_lines / nl, 10, 10),
        bin_of((double)short_lines / nl, 10, 10), bin_of((double)punct / nc, 40, 12), bin_of((double)digits / nc, 40, 12),
    };
    for (int s = 0; s < N_STATS; s++) {
        uint64_t h = mix(GOLDEN * (uint64_t)(s + 1) + (uint64_t)stats[s] + 0x5157ULL);
        add_feat(b, (uint32_t)(h & mask), 1.0f, table_size);
    }
    return 0;
}

static int parse_common(PyObject *texts, Py_buffer *table, int bits, int ngrams, Py_ssize_t max_chars) {
    if (!PyList_Check(texts)) { PyErr_SetString(PyExc_TypeError, "texts must be a list of str"); return -1; }
    if (bits < 1 || bits > 30) { PyErr_SetString(PyExc_ValueError, "bits must lie in 1..30"); return -1; }
    if (ngrams < 1 || ngrams > 5) { PyErr_SetString(PyExc_ValueError, "ngrams must lie in 1..5"); return -1; }
    if (max_chars < 1) { PyErr_SetString(PyExc_ValueError, "max_chars must be positive"); return -1; }
    (void)table;
    return 0;
}

/* featurize(texts, table, bits, ngrams, max_chars) -> (indptr int64 bytes, indices int32 bytes, values float32 bytes) */
static PyObject *featurize(PyObject *self, PyObject *args) {
    PyObject *texts; Py_buffer table; int bits, ngrams; Py_ssize_t max_chars;
    if (!PyArg_ParseTuple(args, "O!y*iin", &PyList_Type, &texts, &table, &bits, &ngrams, &max_chars)) return NULL;
    if (parse_common(texts, &table, bits, ngrams, max_chars)) { PyBuffer_Release(&table); return NULL; }
    Py_ssize_t docs = PyList_GET_SIZE(texts);
    Buffers b = {0};
    int64_t *indptr = malloc((size_t)(docs + 1) * sizeof(int64_t));
    int32_t *indices = NULL; float *values = NULL; Py_ssize_t used = 0, cap = 0, cap_v = 0;
    PyObject *result = NULL;
    if (!indptr) { PyErr_NoMemory(); goto done; }
    indptr[0] = 0;
    for (Py_ssize_t d = 0; d < docs; d++) {
        PyObject *text = PyList_GET_ITEM(texts, d);
        if (!PyUnicode_Check(text)) { PyErr_SetString(PyExc_TypeError, "texts must be a list of str"); goto done; }
        if (doc_features(text, table.buf, table.len, bits, ngrams, max_chars, &b)) goto done;
        if (grow((void **)&indices, &cap, used + b.n_feats, sizeof(int32_t))) goto done;
        if (grow((void **)&values, &cap_v, used + b.n_feats, sizeof(float))) goto done;
        for (Py_ssize_t r = 0; r < b.n_feats; r++) { indices[used + r] = (int32_t)b.feats[r].index; values[used + r] = b.feats[r].value; }
        used += b.n_feats;
        indptr[d + 1] = used;
    }
    result = Py_BuildValue("(y#y#y#)", (const char *)indptr, (Py_ssize_t)((docs + 1) * sizeof(int64_t)),
                           (const char *)(indices ? (void *)indices : (void *)""), (Py_ssize_t)(used * sizeof(int32_t)),
                           (const char *)(values ? (void *)values : (void *)""), (Py_ssize_t)(used * sizeof(float)));
done:
    free(indptr); free(indices); free(values); free_buffers(&b);
    PyBuffer_Release(&table);
    return result;
}

/* score(texts, table, bits, ngrams, max_chars, weight float32 (K, 2**bits), bias float32 (K,)) -> float32 bytes (N, K) */
static PyObject *score(PyObject *self, PyObject *args) {
    PyObject *texts; Py_buffer table, weight, bias; int bits, ngrams; Py_ssize_t max_chars;
    if (!PyArg_ParseTuple(args, "O!y*iiny*y*", &PyList_Type, &texts, &table, &bits, &ngrams, &max_chars, &weight, &bias))
        return NULL;
    PyObject *result = NULL; float *out = NULL; Buffers b = {0};
    if (parse_common(texts, &table, bits, ngrams, max_chars)) goto done;
    Py_ssize_t dim = (Py_ssize_t)1 << bits, k = bias.len / (Py_ssize_t)sizeof(float);
    if (k < 1 || weight.len != k * dim * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "weight must hold len(bias) rows of 2**bits float32 values");
        goto done;
    }
    Py_ssize_t docs = PyList_GET_SIZE(texts);
    out = malloc((size_t)(docs * k + 1) * sizeof(float));
    if (!out) { PyErr_NoMemory(); goto done; }
    const float *wt = weight.buf, *bs = bias.buf;
    for (Py_ssize_t d = 0; d < docs; d++) {
        PyObject *text = PyList_GET_ITEM(texts, d);
        if (!PyUnicode_Check(text)) { PyErr_SetString(PyExc_TypeError, "texts must be a list of str"); goto done; }
        if (doc_features(text, table.buf, table.len, bits, ngrams, max_chars, &b)) goto done;
        for (Py_ssize_t j = 0; j < k; j++) {
            const float *row = wt + j * dim;
            double s = bs[j];
            for (Py_ssize_t r = 0; r < b.n_feats; r++) s += (double)row[b.feats[r].index] * b.feats[r].value;
            out[d * k + j] = (float)s;
        }
    }
    result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)(docs * k * sizeof(float)));
done:
    free(out); free_buffers(&b);
    PyBuffer_Release(&table); PyBuffer_Release(&weight); PyBuffer_Release(&bias);
    return result;
}

static PyMethodDef methods[] = {
    {"featurize", featurize, METH_VARARGS, "Sparse rows (indptr, indices, values) of hashed features."},
    {"score", score, METH_VARARGS, "Linear scores (N, K) over hashed features, without building the rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_features", NULL, -1, methods};

PyMODINIT_FUNC PyInit__features(void) { return PyModule_Create(&module); }
