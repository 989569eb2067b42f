/* Loops over the rows one batch used: RowAdam's step and the bag model's table gradient.
 *
 * Each does the same float32 arithmetic in the same order as the torch ops it
 * stands for (textpipe/optim.py, RowAdam._step_rows; textpipe/kernels.py,
 * bag_mean_table_grad), so both give the same results bit for bit: build with
 * -ffp-contract=off, so that no multiply and add fuse into one differently rounded
 * instruction. The torch ops make a pass over every used row per op; these make
 * one. Rows passed in must be unique (a coalesced gradient), so they are independent.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The rows a batch uses lie anywhere in tables of tens of megabytes, so each is a
 * cache miss; asking for the rows a few iterations ahead overlaps those misses with
 * the arithmetic (1.5x on the moment update here). */
#define AHEAD 4

static inline void prefetch_row(const float *row, int64_t dim) {
    for (int64_t j = 0; j < dim; j += 16)  /* 16 floats: one 64-byte cache line */
        __builtin_prefetch(row + j, 1, 0);
}

/* torch's square root of a float32 tensor on a CPU: MKL's vmsSqrt, which is not the
 * correctly rounded sqrtf. Called through a pointer kernels.py looks up in torch's
 * own library, with the mode torch passes, so the roots are torch's bit for bit. */
typedef void (*vm_sqrt)(int n, const float *in, float *out, long long mode);

/* Rows per square-root call: small enough that a block's moments and weights stay in
 * the L1 / L2 cache between the passes, large enough that the call costs nothing. */
#define BLOCK 32

/* The floats of scratch row_adam_step needs for rows of `dim` floats. */
int64_t row_adam_scratch(int64_t dim) { return 2 * BLOCK * dim; }

/* RowAdam's step (textpipe/optim.py, RowAdam._step_rows) over the used rows, a block of
 * rows at a time: exp_avg += (g - exp_avg) * (1 - beta1) and
 * exp_avg_sq += (g * g - exp_avg_sq) * (1 - beta2) in the moment tables; the new
 * second moment clamped to sqrt_floor (as clamp_(min=) does: NaN stays NaN) and its
 * square root taken; then param += (exp_avg / (root + eps)) * neg_step_size.
 * `scratch` holds 2 * BLOCK * dim floats. */
void row_adam_step(float *param, float *exp_avg, float *exp_avg_sq, const int64_t *rows, const float *values,
                   int64_t num_rows, int64_t dim, float one_minus_beta1, float one_minus_beta2, float sqrt_floor,
                   float eps, float neg_step_size, vm_sqrt sqrt_fn, long long sqrt_mode, float *scratch) {
    float *new_avg = scratch, *root = scratch + BLOCK * dim;
    for (int64_t first = 0; first < num_rows; first += BLOCK) {
        int64_t count = num_rows - first < BLOCK ? num_rows - first : BLOCK;
        for (int64_t b = 0; b < count; b++) {
            int64_t i = first + b;
            if (i + AHEAD < num_rows) {
                prefetch_row(exp_avg + rows[i + AHEAD] * dim, dim);
                prefetch_row(exp_avg_sq + rows[i + AHEAD] * dim, dim);
            }
            prefetch_row(param + rows[i] * dim, dim);  /* used after the square root */
            float *m = exp_avg + rows[i] * dim, *v = exp_avg_sq + rows[i] * dim;
            const float *g = values + i * dim;
            float *m_out = new_avg + b * dim, *v_out = root + b * dim;
            for (int64_t j = 0; j < dim; j++) {
                m_out[j] = m[j] = m[j] + (g[j] - m[j]) * one_minus_beta1;
                v[j] = v[j] + (g[j] * g[j] - v[j]) * one_minus_beta2;
                v_out[j] = v[j] < sqrt_floor ? sqrt_floor : v[j];
            }
        }
        sqrt_fn((int)(count * dim), root, root, sqrt_mode);
        for (int64_t b = 0; b < count; b++) {
            float *w = param + rows[first + b] * dim;
            const float *m = new_avg + b * dim, *r = root + b * dim;
            for (int64_t j = 0; j < dim; j++)
                w[j] = w[j] + (m[j] / (r[j] + eps)) * neg_step_size;
        }
    }
}

/* torch.optim.AdamW's step (torch 2.3, one tensor at a time, as on a CPU) for a dense
 * parameter of n floats, with torch's roundings: param *= decay; exp_avg.lerp_(grad,
 * 1 - beta1), which its vector loop computes with one fused multiply-add (so does its
 * scalar tail, as compiled); exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad,
 * the last multiply-add fused likewise; then param += (-step_size * exp_avg) /
 * (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps), addcdiv's order. fmaf is the
 * correctly rounded fused multiply-add, so -ffp-contract=off does not touch it.
 * `root` holds n floats. */
void dense_adamw(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n, float decay,
                 float one_minus_beta1, float beta2, float one_minus_beta2, float bias_correction2_sqrt, float eps,
                 float neg_step_size, vm_sqrt sqrt_fn, long long sqrt_mode, float *root) {
    for (int64_t i = 0; i < n; i++) {
        param[i] = param[i] * decay;
        exp_avg[i] = fmaf(one_minus_beta1, grad[i] - exp_avg[i], exp_avg[i]);
        exp_avg_sq[i] = fmaf(one_minus_beta2 * grad[i], grad[i], exp_avg_sq[i] * beta2);
    }
    sqrt_fn((int)n, exp_avg_sq, root, sqrt_mode);
    for (int64_t i = 0; i < n; i++)
        param[i] = param[i] + (neg_step_size * exp_avg[i]) / (root[i] / bias_correction2_sqrt + eps);
}

/* The rows a batch of bags used, each once, in ascending order: the indices of the
 * table gradient of mean-pooled bags, as a coalesced sparse tensor holds them.
 *
 * `seen` is a bitmap of the table's rows and `slot` a table-sized int32 array; the
 * bitmap comes in all zeros and leaves all zeros. Marking each id's bit and reading
 * the set bits in order sorts the rows in one pass over the ids and one over the
 * bitmap's words (num_rows / 64), where a sort of the ids costs N log N. Each used
 * row's position in `rows` goes to slot[row], for bag_rows_sum. Returns how many.
 */
int64_t bag_rows(const int64_t *flat_ids, int64_t num_ids, int64_t num_rows, uint64_t *seen, int32_t *slot, int64_t *rows) {
    for (int64_t k = 0; k < num_ids; k++)
        seen[flat_ids[k] >> 6] |= (uint64_t)1 << (flat_ids[k] & 63);
    int64_t used = 0;
    for (int64_t word = 0; word < (num_rows + 63) / 64; word++) {
        for (uint64_t bits = seen[word]; bits; bits &= bits - 1) {
            int64_t row = word * 64 + __builtin_ctzll(bits);
            slot[row] = (int32_t)used;
            rows[used++] = row;
        }
        seen[word] = 0;
    }
    return used;
}

/* values[slot[id]] += share[bag] for each id of each bag, in the order the ids come:
 * the order torch's stable sort and embedding_bag(mode="sum") add them in, so the
 * sums are the same bit for bit. `values` comes in zeroed; bag b holds lengths[b]
 * consecutive ids of flat_ids. */
void bag_rows_sum(const int64_t *flat_ids, const int64_t *lengths, int64_t num_bags, const float *share, int64_t dim,
                  const int32_t *slot, float *values) {
    int64_t k = 0;
    for (int64_t bag = 0; bag < num_bags; bag++) {
        const float *s = share + bag * dim;
        for (int64_t end = k + lengths[bag]; k < end; k++) {
            float *v = values + (int64_t)slot[flat_ids[k]] * dim;
            for (int64_t j = 0; j < dim; j++)
                v[j] = v[j] + s[j];
        }
    }
}

/* The bag model's ids of each text, one flat list: its words, then the hashed rows of
 * its n-grams (n = 2 .. max_ngram) whose words are all real, left out where `keep`
 * (token dropout; NULL: keep all) is 0. The ids and their order are those of
 * BagOfNgrams.add_ngrams followed by ids[mask] (textpipe/models.py): the hash is
 * code = code * 1000003 + id, wrapping in 64 bits, then vocab_size + code mod
 * buckets taken non-negative. ids, mask: (B, T); keep: (B, width), width counting
 * T words, T - 1 bigrams, ... Returns the number of ids written to flat; lengths
 * gets each text's count. */
int64_t bag_ngram_ids(const int64_t *ids, const uint8_t *mask, int64_t num_texts, int64_t T, const uint8_t *keep,
                      int64_t width, int64_t vocab_size, int64_t buckets, int64_t max_ngram, int64_t *flat, int64_t *lengths) {
    int64_t total = 0;
    for (int64_t b = 0; b < num_texts; b++) {
        const int64_t *row = ids + b * T;
        const uint8_t *real = mask + b * T, *kept = keep ? keep + b * width : 0;
        int64_t start = total, column = 0;
        for (int64_t n = 1; n <= (buckets ? max_ngram : 1) && n <= T; n++) {
            for (int64_t k = 0; k + n <= T; k++, column++) {
                int all_real = 1;
                for (int64_t j = 0; j < n; j++)
                    all_real &= real[k + j];
                if (!all_real || (kept && !kept[column]))
                    continue;
                if (n == 1) {
                    flat[total++] = row[k];
                    continue;
                }
                uint64_t code = (uint64_t)row[k];
                for (int64_t j = 1; j < n; j++)
                    code = code * 1000003u + (uint64_t)row[k + j];
                int64_t bucket = (int64_t)code % buckets;
                flat[total++] = vocab_size + (bucket < 0 ? bucket + buckets : bucket);
            }
        }
        lengths[b] = total - start;
    }
    return total;
}

/* The n distinct ids at a, ascending. */
static void sort_ids(int64_t *a, int64_t n) {
    while (n > 24) {  /* quicksort, median of three, recursing into the smaller side */
        int64_t x = a[0], y = a[n / 2], z = a[n - 1];
        int64_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = 0, j = n - 1;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                int64_t swap = a[i];
                a[i++] = a[j];
                a[j--] = swap;
            }
        }
        if (j + 1 < n - i) {
            sort_ids(a, j + 1);
            a += i;
            n -= i;
        } else {
            sort_ids(a + i, n - i);
            n = j + 1;
        }
    }
    for (int64_t i = 1; i < n; i++) {  /* insertion sort: short runs */
        int64_t v = a[i], j = i;
        for (; j > 0 && a[j - 1] > v; j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

/* Each text's distinct ids, ascending, end to end in `out`, and how many each has in
 * `counts`: what NBLinear.present (textpipe/nb_linear.py) takes from torch.unique over
 * text * width + id, without sorting every key of the batch. `seen` is a bitmap of
 * the ids (all zeros in, all zeros out); a text's distinct ids are sorted on their
 * own (a few dozen, as a rule). Returns the number written. */
int64_t present_ids(const int64_t *flat_ids, const int64_t *lengths, int64_t num_texts, uint64_t *seen,
                    int64_t *out, int64_t *counts) {
    int64_t k = 0, total = 0;
    for (int64_t t = 0; t < num_texts; t++) {
        int64_t start = total;
        for (int64_t end = k + lengths[t]; k < end; k++) {
            int64_t id = flat_ids[k];
            uint64_t bit = (uint64_t)1 << (id & 63);
            if (!(seen[id >> 6] & bit)) {
                seen[id >> 6] |= bit;
                out[total++] = id;
            }
        }
        int64_t n = total - start, *first = out + start;
        sort_ids(first, n);
        for (int64_t i = 0; i < n; i++)
            seen[first[i] >> 6] = 0;
        counts[t] = n;
    }
    return total;
}

/* TextEncoder's memo of whitespace chunks (textpipe/encoder.py), keyed by their UTF-8 bytes:
 * a text's chunks are found and numbered here in one pass over its bytes, where str.split
 * and a dict lookup per chunk cost Python objects. Open addressing, the bytes in one arena. */
typedef struct { uint64_t hash; int64_t start, len, code; } chunk_slot;
typedef struct { chunk_slot *slots; int64_t mask, used; char *arena; int64_t arena_len, arena_cap; } chunk_table;

void *chunk_table_new(void) {
    chunk_table *t = calloc(1, sizeof *t);
    if (t && !(t->slots = calloc(1024, sizeof *t->slots))) {
        free(t);
        return 0;
    }
    if (t)
        t->mask = 1023;
    return t;
}

void chunk_table_free(void *table) {
    chunk_table *t = table;
    if (t) {
        free(t->slots);
        free(t->arena);
        free(t);
    }
}

static uint64_t chunk_hash(const unsigned char *s, int64_t n) {
    uint64_t h = 1469598103934665603u;  /* FNV-1a */
    for (int64_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211u;
    return h ? h : 1;  /* 0 marks an empty slot */
}

static chunk_slot *chunk_find(const chunk_table *t, const unsigned char *s, int64_t n, uint64_t h) {
    for (int64_t i = (int64_t)(h & (uint64_t)t->mask);; i = (i + 1) & t->mask) {
        chunk_slot *slot = t->slots + i;
        if (!slot->hash || (slot->hash == h && slot->len == n && !memcmp(t->arena + slot->start, s, (size_t)n)))
            return slot;
    }
}

static int chunk_grow(chunk_table *t) {
    int64_t size = 2 * (t->mask + 1);
    chunk_slot *old = t->slots, *slots = calloc((size_t)size, sizeof *slots);
    if (!slots)
        return -1;
    for (int64_t i = 0; i <= t->mask; i++)
        if (old[i].hash) {
            int64_t j = (int64_t)(old[i].hash & (uint64_t)(size - 1));
            while (slots[j].hash)
                j = (j + 1) & (size - 1);
            slots[j] = old[i];
        }
    free(old);
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

/* Add n chunks: chunk i is bytes[ends[i - 1] (0 for i = 0) : ends[i]], numbered codes[i].
 * Returns 0, or -1 out of memory. A chunk already there keeps its number. */
int64_t chunk_table_add(void *table, const char *bytes, const int64_t *ends, const int64_t *codes, int64_t n) {
    chunk_table *t = table;
    for (int64_t i = 0, start = 0; i < n; start = ends[i++]) {
        int64_t len = ends[i] - start;
        if (2 * (t->used + 1) > t->mask + 1 && chunk_grow(t))
            return -1;
        if (t->arena_len + len > t->arena_cap) {
            int64_t cap = 2 * (t->arena_cap + len) + 4096;
            char *arena = realloc(t->arena, (size_t)cap);
            if (!arena)
                return -1;
            t->arena = arena;
            t->arena_cap = cap;
        }
        uint64_t h = chunk_hash((const unsigned char *)bytes + start, len);
        chunk_slot *slot = chunk_find(t, (const unsigned char *)bytes + start, len, h);
        if (slot->hash)
            continue;
        memcpy(t->arena + t->arena_len, bytes + start, (size_t)len);
        *slot = (chunk_slot){h, t->arena_len, len, codes[i]};
        t->arena_len += len;
        t->used++;
    }
    return 0;
}

/* Bytes of the whitespace character at s (0: none): the characters str.isspace() calls
 * whitespace, so chunks are str.split()'s. Leading bytes C2, E1, E2, E3 are never
 * continuation bytes, so stepping one byte at a time inside a chunk is safe. */
static int space_at(const unsigned char *s, const unsigned char *end) {
    unsigned char c = s[0];
    if (c < 0x80)
        return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
    if (c == 0xc2 && end - s >= 2)
        return (s[1] == 0x85 || s[1] == 0xa0) ? 2 : 0;
    if (end - s < 3)
        return 0;
    if (c == 0xe1)
        return (s[1] == 0x9a && s[2] == 0x80) ? 3 : 0;
    if (c == 0xe2 && s[1] == 0x80)
        return ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf) ? 3 : 0;
    if (c == 0xe2 && s[1] == 0x81)
        return s[2] == 0x9f ? 3 : 0;
    return (c == 0xe3 && s[1] == 0x80 && s[2] == 0x80) ? 3 : 0;
}

/* The whitespace chunks of texts laid end to end in `bytes` (text i ends at ends[i]; the
 * next starts after it): each chunk's number in the table (-1: not there), its start and
 * length in bytes, and each text's chunk count. Returns the number of chunks. */
int64_t chunk_codes(const void *table, const char *bytes, const int64_t *ends, int64_t num_texts, int64_t *codes,
                    int64_t *starts, int64_t *lens, int64_t *per_text) {
    const chunk_table *t = table;
    const unsigned char *s = (const unsigned char *)bytes;
    int64_t k = 0, pos = 0;
    for (int64_t i = 0; i < num_texts; pos = ends[i++]) {
        const unsigned char *end = s + ends[i];
        int64_t first = k, space;
        while (pos < ends[i]) {
            if ((space = space_at(s + pos, end))) {
                pos += space;
                continue;
            }
            int64_t start = pos;
            while (pos < ends[i] && !space_at(s + pos, end))
                pos++;
            uint64_t h = chunk_hash(s + start, pos - start);
            const chunk_slot *slot = chunk_find(t, s + start, pos - start, h);
            codes[k] = slot->hash ? slot->code : -1;
            starts[k] = start;
            lens[k++] = pos - start;
        }
        per_text[i] = k - first;
    }
    return k;
}

/* ends[i], a position in characters of the UTF-8 text at bytes, becomes the same position in
 * bytes (ascending positions; a character's length read from its first byte). */
void char_to_byte_ends(const char *bytes, int64_t *ends, int64_t n) {
    const unsigned char *s = (const unsigned char *)bytes;
    int64_t at = 0, chars = 0;
    for (int64_t i = 0; i < n; i++) {
        for (; chars < ends[i]; chars++)
            at += s[at] < 0x80 ? 1 : s[at] < 0xe0 ? 2 : s[at] < 0xf0 ? 3 : 4;
        ends[i] = at;
    }
}
