/* Byte-level BPE encoding that gives the same ids as Hugging Face `tokenizers`, only faster.
 *
 * Why it exists: encoding a corpus to token shards spends almost all its time inside
 * `Tokenizer.encode_batch`, and most of that is not the BPE itself but what `tokenizers` builds
 * around it for every token (token strings, offsets, masks, per-word caches keyed by strings).
 * Shard encoding needs only the ids, so this module computes just those.
 *
 * It covers two pre-tokenizer regexes. GPT-2's (the layout lmforge trains, optionally with every
 * decimal digit \p{Nd} split off first):
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * and the one Llama 3 and Qwen2/2.5/3 put in a Split pre-tokenizer (Qwen's has \p{N} alone):
 *     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 *     \s*[\r\n]+|\s+(?!\S)|\s+
 * Each regex match's UTF-8 bytes are the initial symbols, and merges are applied exactly as
 * `tokenizers`' Word::merge_all does: a min-heap on (rank, position) with stale entries skipped,
 * so even odd merge lists give the same result. With `ignore_merges` (Llama 3), a match that is
 * a whole vocabulary entry is that entry, as tokenizers' BPE looks it up before merging.
 * `lmforge.tokenize.fast` checks a tokenizer.json matches one of these layouts before using it
 * (and does NFC and the split at added tokens in Python), and tests compare the ids with
 * `tokenizers` on every code point and on the built-in corpora.
 *
 * Character classes come from a table the Python side builds with `unicodedata` (one byte per
 * code point below 0x40000; everything above is neither letter, number nor space in current
 * Unicode). A document holding a lone surrogate is handed back for the caller to encode the slow
 * way, because `tokenizers` refuses such strings and the caller has its own rule for them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CLS_OTHER 0
#define CLS_LETTER 1  /* \p{L} */
#define CLS_NUMBER 2  /* \p{N} but not \p{Nd} */
#define CLS_DIGIT 3   /* \p{Nd} */
#define CLS_SPACE 4   /* Oniguruma's \s: 9-13, 0x85, Zs, Zl, Zp */
#define TABLE_SIZE 0x40000

typedef struct {
    uint64_t key; /* left id << 32 | right id; EMPTY_KEY when the slot is free */
    uint32_t rank;
    uint32_t new_id;
} MergeSlot;

#define EMPTY_KEY UINT64_MAX

typedef struct {
    uint64_t order; /* rank << 32 | position: the smallest pops first, as in tokenizers */
    uint32_t new_id;
} HeapItem;

/* Growable scratch arrays, reused across pieces and calls. */
typedef struct {
    uint8_t *bytes;
    uint32_t *ids;
    int32_t *prev, *next;
    uint8_t *alive;
    HeapItem *heap;
    Py_ssize_t cap, heap_cap;
} Scratch;

typedef struct {
    uint32_t *data;
    Py_ssize_t len, cap;
} IdBuffer;

/* A whole vocabulary entry, for `ignore_merges`: its bytes are blob[start, start + len). */
typedef struct {
    uint64_t hash; /* 0 when the slot is free */
    uint32_t start, len, id;
} WordSlot;

#define PATTERN_GPT2 0
#define PATTERN_LLAMA3 1 /* max_digits 3 for Llama 3, 1 for Qwen2 */

typedef struct {
    PyObject_HEAD
    uint8_t classes[TABLE_SIZE];
    uint32_t byte_ids[256];
    MergeSlot *slots;
    uint64_t mask;
    int split_digits;
    int pattern;
    int max_digits;
    uint8_t *word_blob;
    WordSlot *words; /* NULL unless ignore_merges */
    uint64_t word_mask;
    Scratch scratch;
} Encoder;

static inline uint64_t slot_hash(uint64_t key) { return key * 0x9E3779B97F4A7C15ULL; }

static inline const MergeSlot *find_merge(const Encoder *enc, uint32_t left, uint32_t right) {
    uint64_t key = ((uint64_t)left << 32) | right;
    uint64_t i = (slot_hash(key) >> 20) & enc->mask;
    for (;;) {
        const MergeSlot *slot = &enc->slots[i];
        if (slot->key == key) return slot;
        if (slot->key == EMPTY_KEY) return NULL;
        i = (i + 1) & enc->mask;
    }
}

/* A later duplicate pair replaces an earlier one, as collecting into a HashMap does in tokenizers. */
static void put_merge(Encoder *enc, uint32_t left, uint32_t right, uint32_t rank, uint32_t new_id) {
    uint64_t key = ((uint64_t)left << 32) | right;
    uint64_t i = (slot_hash(key) >> 20) & enc->mask;
    while (enc->slots[i].key != EMPTY_KEY && enc->slots[i].key != key) i = (i + 1) & enc->mask;
    enc->slots[i].key = key;
    enc->slots[i].rank = rank;
    enc->slots[i].new_id = new_id;
}

/* FNV-1a, then a multiply-xorshift so the low bits used as the slot index are well mixed; never 0. */
static uint64_t bytes_hash(const uint8_t *b, Py_ssize_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    h ^= h >> 31;
    h *= 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
    return h ? h : 1;
}

/* The id of the vocabulary entry whose bytes are b[0, n), or -1. */
static int64_t find_word(const Encoder *enc, const uint8_t *b, Py_ssize_t n) {
    uint64_t h = bytes_hash(b, n);
    for (uint64_t i = h & enc->word_mask;; i = (i + 1) & enc->word_mask) {
        const WordSlot *w = &enc->words[i];
        if (w->hash == 0) return -1;
        if (w->hash == h && w->len == n && memcmp(enc->word_blob + w->start, b, n) == 0) return w->id;
    }
}

static int scratch_reserve(Scratch *s, Py_ssize_t n) {
    if (n <= s->cap) return 0;
    Py_ssize_t cap = s->cap ? s->cap : 256;
    while (cap < n) cap *= 2;
    uint8_t *bytes = realloc(s->bytes, cap);
    if (bytes) s->bytes = bytes;
    uint32_t *ids = realloc(s->ids, cap * sizeof(uint32_t));
    if (ids) s->ids = ids;
    int32_t *prev = realloc(s->prev, cap * sizeof(int32_t));
    if (prev) s->prev = prev;
    int32_t *next = realloc(s->next, cap * sizeof(int32_t));
    if (next) s->next = next;
    uint8_t *alive = realloc(s->alive, cap);
    if (alive) s->alive = alive;
    if (!bytes || !ids || !prev || !next || !alive) return -1;
    s->cap = cap;
    return 0;
}

static void scratch_free(Scratch *s) {
    free(s->bytes);
    free(s->ids);
    free(s->prev);
    free(s->next);
    free(s->alive);
    free(s->heap);
    memset(s, 0, sizeof(*s));
}

/* After a huge piece (a 10 MB line), give the memory back instead of holding it for the process's life. */
static void scratch_trim(Scratch *s) {
    if (s->cap > (1 << 20) || s->heap_cap > (1 << 20)) scratch_free(s);
}

static int heap_push(Scratch *s, Py_ssize_t *size, uint64_t order, uint32_t new_id) {
    if (*size == s->heap_cap) {
        Py_ssize_t cap = s->heap_cap ? s->heap_cap * 2 : 256;
        HeapItem *heap = realloc(s->heap, cap * sizeof(HeapItem));
        if (!heap) return -1;
        s->heap = heap;
        s->heap_cap = cap;
    }
    HeapItem *h = s->heap;
    Py_ssize_t i = (*size)++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (h[parent].order <= order) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i].order = order;
    h[i].new_id = new_id;
    return 0;
}

static HeapItem heap_pop(Scratch *s, Py_ssize_t *size) {
    HeapItem *h = s->heap;
    HeapItem top = h[0];
    HeapItem last = h[--(*size)];
    Py_ssize_t i = 0, n = *size;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && h[child + 1].order < h[child].order) child++;
        if (last.order <= h[child].order) break;
        h[i] = h[child];
        i = child;
    }
    if (n > 0) h[i] = last;
    return top;
}

static int ids_append(IdBuffer *buf, uint32_t id) {
    if (buf->len == buf->cap) {
        Py_ssize_t cap = buf->cap ? buf->cap * 2 : 4096;
        uint32_t *data = realloc(buf->data, cap * sizeof(uint32_t));
        if (!data) return -1;
        buf->data = data;
        buf->cap = cap;
    }
    buf->data[buf->len++] = id;
    return 0;
}

static inline int char_class(const Encoder *enc, Py_UCS4 c) {
    return c < TABLE_SIZE ? enc->classes[c] : CLS_OTHER;
}

static inline int is_number(int cls) { return cls == CLS_NUMBER || cls == CLS_DIGIT; }

/* Length of GPT-2's regex match at text[p] within [p, end); always at least 1. */
static Py_ssize_t match_gpt2(const Encoder *enc, int kind, const void *data, Py_ssize_t p, Py_ssize_t end) {
    Py_UCS4 c = PyUnicode_READ(kind, data, p);
    if (c == '\'' && p + 1 < end) {
        Py_UCS4 c1 = PyUnicode_READ(kind, data, p + 1);
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
        if (p + 2 < end) {
            Py_UCS4 c2 = PyUnicode_READ(kind, data, p + 2);
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
        }
    }
    /* ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: the optional space binds to the run after it. */
    Py_ssize_t q = (c == ' ' && p + 1 < end) ? p + 1 : p;
    int cls = char_class(enc, PyUnicode_READ(kind, data, q));
    if (cls != CLS_SPACE) {
        Py_ssize_t r = q + 1;
        if (cls == CLS_LETTER) {
            while (r < end && char_class(enc, PyUnicode_READ(kind, data, r)) == CLS_LETTER) r++;
        } else if (is_number(cls)) {
            while (r < end && is_number(char_class(enc, PyUnicode_READ(kind, data, r)))) r++;
        } else {
            while (r < end && char_class(enc, PyUnicode_READ(kind, data, r)) == CLS_OTHER) r++;
        }
        return r - p;
    }
    /* `\s+(?!\S)|\s+`: a run of spaces leaves its last one to the word that follows it. */
    Py_ssize_t r = p + 1;
    while (r < end && char_class(enc, PyUnicode_READ(kind, data, r)) == CLS_SPACE) r++;
    if (r == end || r - p == 1) return r - p;
    return r - p - 1;
}

static inline int is_newline(Py_UCS4 c) { return c == '\r' || c == '\n'; }

/* What Oniguruma's case-insensitive match compares for the contraction letters: ASCII letters in
 * either case, and U+017F (long s), whose case folding is 's'. */
static inline Py_UCS4 fold(Py_UCS4 c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    return c == 0x17F ? 's' : c;
}

#define CLASS_AT(i) char_class(enc, PyUnicode_READ(kind, data, (i)))

/* Length of the Llama 3 / Qwen2 regex match at text[p] within [p, end); always at least 1.
 * The alternatives are tried in order, each taking the longest run it can, as Oniguruma does. */
static Py_ssize_t match_llama3(const Encoder *enc, int kind, const void *data, Py_ssize_t p, Py_ssize_t end) {
    Py_UCS4 c = PyUnicode_READ(kind, data, p);
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (c == '\'' && p + 1 < end) {
        Py_UCS4 c1 = fold(PyUnicode_READ(kind, data, p + 1));
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
        if (p + 2 < end) {
            Py_UCS4 c2 = fold(PyUnicode_READ(kind, data, p + 2));
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
        }
    }
    int cls = char_class(enc, c);
    Py_ssize_t r;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ : one character that is no letter, number or newline may lead a word */
    Py_ssize_t q = p;
    if (cls != CLS_LETTER && !is_number(cls) && !is_newline(c) && p + 1 < end && CLASS_AT(p + 1) == CLS_LETTER) q = p + 1;
    if (CLASS_AT(q) == CLS_LETTER) {
        for (r = q + 1; r < end && CLASS_AT(r) == CLS_LETTER; r++) {}
        return r - p;
    }
    /* \p{N}{1,3} (Llama 3) or \p{N} (Qwen2) */
    if (is_number(cls)) {
        for (r = p + 1; r < end && r - p < enc->max_digits && is_number(CLASS_AT(r)); r++) {}
        return r - p;
    }
    /* ` ?[^\s\p{L}\p{N}]+[\r\n]*` */
    q = (c == ' ' && p + 1 < end) ? p + 1 : p;
    if (CLASS_AT(q) == CLS_OTHER) {
        for (r = q + 1; r < end && CLASS_AT(r) == CLS_OTHER; r++) {}
        while (r < end && is_newline(PyUnicode_READ(kind, data, r))) r++;
        return r - p;
    }
    /* Only white space is left. `\s*[\r\n]+`: the run up to its last newline, if it has one. */
    Py_ssize_t last_newline = -1;
    for (r = p; r < end && CLASS_AT(r) == CLS_SPACE; r++) {
        if (is_newline(PyUnicode_READ(kind, data, r))) last_newline = r;
    }
    if (last_newline >= 0) return last_newline + 1 - p;
    /* `\s+(?!\S)|\s+`: a run of spaces leaves its last one to what follows it. */
    if (r == end || r - p == 1) return r - p;
    return r - p - 1;
}

static Py_ssize_t utf8_encode(Py_UCS4 c, uint8_t *out) {
    if (c < 0x80) {
        out[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = 0xC0 | (c >> 6);
        out[1] = 0x80 | (c & 0x3F);
        return 2;
    }
    if (c < 0x10000) {
        out[0] = 0xE0 | (c >> 12);
        out[1] = 0x80 | ((c >> 6) & 0x3F);
        out[2] = 0x80 | (c & 0x3F);
        return 3;
    }
    out[0] = 0xF0 | (c >> 18);
    out[1] = 0x80 | ((c >> 12) & 0x3F);
    out[2] = 0x80 | ((c >> 6) & 0x3F);
    out[3] = 0x80 | (c & 0x3F);
    return 4;
}

static int push_pair(Encoder *enc, Py_ssize_t *heap_size, Py_ssize_t pos, uint32_t left, uint32_t right) {
    const MergeSlot *m = find_merge(enc, left, right);
    if (!m) return 0;
    return heap_push(&enc->scratch, heap_size, ((uint64_t)m->rank << 32) | (uint64_t)pos, m->new_id);
}

/* BPE over the UTF-8 bytes of text[start, end), appending the resulting ids to `out`. */
static int encode_piece(Encoder *enc, int kind, const void *data, Py_ssize_t start, Py_ssize_t end, IdBuffer *out) {
    Scratch *s = &enc->scratch;
    if (scratch_reserve(s, 4 * (end - start)) < 0) return -1;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = start; i < end; i++) n += utf8_encode(PyUnicode_READ(kind, data, i), s->bytes + n);
    if (n == 1) return ids_append(out, enc->byte_ids[s->bytes[0]]);
    if (enc->words) {
        int64_t whole = find_word(enc, s->bytes, n);
        if (whole >= 0) return ids_append(out, (uint32_t)whole);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        s->ids[i] = enc->byte_ids[s->bytes[i]];
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = (i + 1 < n) ? (int32_t)i + 1 : -1;
        s->alive[i] = 1;
    }
    Py_ssize_t heap_size = 0;
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        if (push_pair(enc, &heap_size, i, s->ids[i], s->ids[i + 1]) < 0) return -1;
    }
    while (heap_size > 0) {
        HeapItem top = heap_pop(s, &heap_size);
        Py_ssize_t pos = (Py_ssize_t)(top.order & 0xFFFFFFFFu);
        if (!s->alive[pos] || s->next[pos] < 0) continue;
        Py_ssize_t right = s->next[pos];
        const MergeSlot *m = find_merge(enc, s->ids[pos], s->ids[right]);
        if (!m || m->new_id != top.new_id) continue; /* stale: a neighbour changed since the push */
        s->ids[pos] = top.new_id;
        s->alive[right] = 0;
        s->next[pos] = s->next[right];
        if (s->next[pos] >= 0) s->prev[s->next[pos]] = (int32_t)pos;
        if (s->prev[pos] >= 0 && push_pair(enc, &heap_size, s->prev[pos], s->ids[s->prev[pos]], s->ids[pos]) < 0)
            return -1;
        if (s->next[pos] >= 0 && push_pair(enc, &heap_size, pos, s->ids[pos], s->ids[s->next[pos]]) < 0) return -1;
    }
    for (Py_ssize_t i = 0; i >= 0; i = s->next[i]) {
        if (ids_append(out, s->ids[i]) < 0) return -1;
    }
    return 0;
}

static int encode_span(Encoder *enc, int kind, const void *data, Py_ssize_t start, Py_ssize_t end, IdBuffer *out) {
    for (Py_ssize_t p = start; p < end;) {
        Py_ssize_t len = enc->pattern == PATTERN_GPT2 ? match_gpt2(enc, kind, data, p, end)
                                                      : match_llama3(enc, kind, data, p, end);
        if (encode_piece(enc, kind, data, p, p + len, out) < 0) return -1;
        p += len;
    }
    return 0;
}

/* 1: encoded; 0: holds a lone surrogate (left to the caller); -1: out of memory (exception set). */
static int encode_text(Encoder *enc, PyObject *text, IdBuffer *out) {
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (kind != PyUnicode_1BYTE_KIND) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c >= 0xD800 && c <= 0xDFFF) return 0;
        }
    }
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (enc->split_digits && char_class(enc, PyUnicode_READ(kind, data, i)) == CLS_DIGIT) {
            if (encode_span(enc, kind, data, start, i, out) < 0) goto nomem;
            if (encode_piece(enc, kind, data, i, i + 1, out) < 0) goto nomem;
            start = i + 1;
        }
    }
    if (encode_span(enc, kind, data, start, n, out) < 0) goto nomem;
    return 1;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* A document is a str, or a tuple of str pieces and int ids: the pieces are encoded on their own
 * (tokenizers pre-tokenizes the text between added tokens separately) and the ids copied. */
static int encode_doc(Encoder *enc, PyObject *doc, Py_ssize_t d, IdBuffer *out) {
    if (PyUnicode_Check(doc)) return encode_text(enc, doc, out);
    if (!PyTuple_Check(doc)) {
        PyErr_Format(PyExc_TypeError, "texts[%zd] is %.100s, not str (or a tuple of str and int)", d,
                     Py_TYPE(doc)->tp_name);
        return -1;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(doc); k++) {
        PyObject *item = PyTuple_GET_ITEM(doc, k);
        if (PyUnicode_Check(item)) {
            int status = encode_text(enc, item, out);
            if (status <= 0) return status;
        } else if (PyLong_Check(item)) {
            unsigned long long id = PyLong_AsUnsignedLongLong(item);
            if (PyErr_Occurred() || id > UINT32_MAX) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "texts[%zd][%zd] is not a token id in [0, 2**32)", d, k);
                return -1;
            }
            if (ids_append(out, (uint32_t)id) < 0) {
                PyErr_NoMemory();
                return -1;
            }
        } else {
            PyErr_Format(PyExc_TypeError, "texts[%zd][%zd] is %.100s, not str or int", d, k, Py_TYPE(item)->tp_name);
            return -1;
        }
    }
    return 1;
}

static PyObject *Encoder_encode_batch(Encoder *enc, PyObject *args) {
    PyObject *texts;
    long long eos;
    if (!PyArg_ParseTuple(args, "OL", &texts, &eos)) return NULL;
    if (!enc->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder was not initialised");
        return NULL;
    }
    if (eos < 0 || eos > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "eos must be a token id in [0, 2**32) (got %lld)", eos);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(texts, "texts must be a sequence of str");
    if (!seq) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    IdBuffer out = {NULL, 0, 0};
    PyObject *lengths = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(int64_t));
    PyObject *skipped = PyList_New(0);
    PyObject *result = NULL;
    if (!lengths || !skipped) goto done;
    int64_t *len_out = (int64_t *)PyBytes_AS_STRING(lengths);
    for (Py_ssize_t d = 0; d < count; d++) {
        Py_ssize_t before = out.len;
        int status = encode_doc(enc, PySequence_Fast_GET_ITEM(seq, d), d, &out);
        if (status < 0) goto done;
        if (status == 0) {
            out.len = before;
            len_out[d] = 0;
            PyObject *index = PyLong_FromSsize_t(d);
            if (!index || PyList_Append(skipped, index) < 0) {
                Py_XDECREF(index);
                goto done;
            }
            Py_DECREF(index);
            continue;
        }
        if (ids_append(&out, (uint32_t)eos) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        len_out[d] = out.len - before;
    }
    PyObject *ids = PyBytes_FromStringAndSize((const char *)out.data, out.len * (Py_ssize_t)sizeof(uint32_t));
    if (ids) result = Py_BuildValue("(NOO)", ids, lengths, skipped);
done:
    scratch_trim(&enc->scratch);
    free(out.data);
    Py_XDECREF(lengths);
    Py_XDECREF(skipped);
    Py_DECREF(seq);
    return result;
}

/* Where the pre-tokenizer regex cuts `text` (the end of each match; the digit split aside), so tests can
 * compare the pieces themselves with tokenizers', which ids alone show only where a merge spans a cut. */
static PyObject *Encoder_split(Encoder *enc, PyObject *args) {
    PyObject *text;
    if (!PyArg_ParseTuple(args, "U", &text)) return NULL;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    PyObject *ends = PyList_New(0);
    for (Py_ssize_t p = 0; ends && p < n;) {
        p += enc->pattern == PATTERN_GPT2 ? match_gpt2(enc, kind, data, p, n) : match_llama3(enc, kind, data, p, n);
        PyObject *end = PyLong_FromSsize_t(p);
        if (!end || PyList_Append(ends, end) < 0) Py_CLEAR(ends);
        Py_XDECREF(end);
    }
    return ends;
}

/* The vocabulary for `ignore_merges`: entry i is blob[ends[i-1], ends[i]) with id ids[i]. */
static int load_words(Encoder *enc, const Py_buffer *blob, const Py_buffer *ends, const Py_buffer *ids) {
    Py_ssize_t n = ends->len / (Py_ssize_t)sizeof(uint32_t);
    if (ends->len % sizeof(uint32_t) || ids->len != ends->len) {
        PyErr_SetString(PyExc_ValueError, "word_ends and word_ids must hold one uint32 per vocabulary entry");
        return -1;
    }
    const uint32_t *end_at = ends->buf, *id_of = ids->buf;
    if (n && end_at[n - 1] != blob->len) {
        PyErr_SetString(PyExc_ValueError, "the last of word_ends must be the length of words");
        return -1;
    }
    uint64_t size = 16;
    while (size < 2 * (uint64_t)n) size *= 2;
    enc->word_blob = malloc(blob->len ? blob->len : 1);
    enc->words = calloc(size, sizeof(WordSlot));
    if (!enc->word_blob || !enc->words) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(enc->word_blob, blob->buf, blob->len);
    enc->word_mask = size - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t start = i ? end_at[i - 1] : 0;
        if (end_at[i] < start || end_at[i] > blob->len) {
            PyErr_SetString(PyExc_ValueError, "word_ends must not decrease");
            return -1;
        }
        uint32_t len = end_at[i] - start;
        if (find_word(enc, enc->word_blob + start, len) >= 0) continue; /* a duplicate: the first one stays */
        uint64_t h = bytes_hash(enc->word_blob + start, len), k = h & enc->word_mask;
        while (enc->words[k].hash) k = (k + 1) & enc->word_mask;
        enc->words[k] = (WordSlot){h, start, len, id_of[i]};
    }
    return 0;
}

static void free_tables(Encoder *enc) {
    free(enc->slots);
    free(enc->words);
    free(enc->word_blob);
    enc->slots = NULL;
    enc->words = NULL;
    enc->word_blob = NULL;
}

static int Encoder_init(Encoder *enc, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"classes", "byte_ids", "merges", "split_digits", "pattern", "max_digits",
                            "words", "word_ends", "word_ids", NULL};
    Py_buffer classes, byte_ids, merges, words = {0}, word_ends = {0}, word_ids = {0};
    int split_digits, max_digits = 0;
    const char *pattern = "gpt2";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*y*p|siy*y*y*", names, &classes, &byte_ids, &merges,
                                     &split_digits, &pattern, &max_digits, &words, &word_ends, &word_ids))
        return -1;
    int rc = -1;
    free_tables(enc);
    if (classes.len != TABLE_SIZE) {
        PyErr_Format(PyExc_ValueError, "classes must hold %d bytes (got %zd)", TABLE_SIZE, classes.len);
        goto done;
    }
    if (byte_ids.len != 256 * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "byte_ids must hold 256 uint32 ids");
        goto done;
    }
    if (merges.len % (3 * sizeof(uint32_t)) != 0) {
        PyErr_SetString(PyExc_ValueError, "merges must hold (left, right, new id) uint32 triples");
        goto done;
    }
    if (strcmp(pattern, "gpt2") == 0) {
        enc->pattern = PATTERN_GPT2;
    } else if (strcmp(pattern, "llama3") == 0 && max_digits >= 1) {
        enc->pattern = PATTERN_LLAMA3;
    } else {
        PyErr_Format(PyExc_ValueError, "pattern must be 'gpt2' or 'llama3' with max_digits >= 1 (got %.50s, %d)",
                     pattern, max_digits);
        goto done;
    }
    enc->max_digits = max_digits;
    memcpy(enc->classes, classes.buf, TABLE_SIZE);
    memcpy(enc->byte_ids, byte_ids.buf, sizeof(enc->byte_ids));
    enc->split_digits = split_digits;
    if (word_ends.buf && load_words(enc, &words, &word_ends, &word_ids) < 0) goto done;
    Py_ssize_t n = merges.len / (3 * sizeof(uint32_t));
    uint64_t size = 16;
    while (size < 2 * (uint64_t)n) size *= 2;
    enc->slots = malloc(size * sizeof(MergeSlot));
    if (!enc->slots) {
        PyErr_NoMemory();
        goto done;
    }
    for (uint64_t i = 0; i < size; i++) enc->slots[i].key = EMPTY_KEY;
    enc->mask = size - 1;
    const uint32_t *triples = merges.buf;
    for (Py_ssize_t r = 0; r < n; r++) put_merge(enc, triples[3 * r], triples[3 * r + 1], (uint32_t)r, triples[3 * r + 2]);
    rc = 0;
done:
    if (rc < 0) free_tables(enc);
    PyBuffer_Release(&classes);
    PyBuffer_Release(&byte_ids);
    PyBuffer_Release(&merges);
    if (words.buf) PyBuffer_Release(&words);
    if (word_ends.buf) PyBuffer_Release(&word_ends);
    if (word_ids.buf) PyBuffer_Release(&word_ids);
    return rc;
}

static void Encoder_dealloc(Encoder *enc) {
    free_tables(enc);
    scratch_free(&enc->scratch);
    Py_TYPE(enc)->tp_free((PyObject *)enc);
}

static PyMethodDef Encoder_methods[] = {
    {"encode_batch", (PyCFunction)Encoder_encode_batch, METH_VARARGS,
     "encode_batch(texts, eos) -> (ids: bytes of uint32, lengths: bytes of int64, skipped: list[int])\n\n"
     "Each document (a str, or a tuple of str pieces and int ids) gives its ids followed by `eos`, all\n"
     "concatenated; lengths count the EOS. Documents listed\n"
     "in `skipped` (lone surrogates) contribute nothing and have length 0."},
    {"split", (PyCFunction)Encoder_split, METH_VARARGS,
     "split(text) -> list[int]: the end of each pre-tokenizer regex match in text (the digit split aside)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lmforge.tokenize._fastbpe.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(classes, byte_ids, merges, split_digits, pattern='gpt2', max_digits=0, words=b'', "
              "word_ends=b'', word_ids=b''): byte-level BPE ids equal to tokenizers'",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

/* Whether `text` holds a code point whose bit is set in `bits` (bit c % 8 of byte c / 8). Python's
 * re takes ~50 ns a character for the same question; the NFC step asks it of every document. */
static PyObject *any_flagged(PyObject *self, PyObject *args) {
    PyObject *text;
    Py_buffer bits;
    if (!PyArg_ParseTuple(args, "Uy*", &text, &bits)) return NULL;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    const uint8_t *b = bits.buf;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), limit = bits.len * 8;
    int found = 0;
    for (Py_ssize_t i = 0; i < n && !found; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        found = (Py_ssize_t)c < limit && (b[c >> 3] >> (c & 7)) & 1;
    }
    PyBuffer_Release(&bits);
    return PyBool_FromLong(found);
}

static PyMethodDef module_methods[] = {
    {"any_flagged", any_flagged, METH_VARARGS,
     "any_flagged(text, bits) -> bool: whether a code point of text has its bit set in bits"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastbpe", "Byte-level BPE encoding equal to Hugging Face tokenizers' ids.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fastbpe(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "TABLE_SIZE", TABLE_SIZE);
    return m;
}
