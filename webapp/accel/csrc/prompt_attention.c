/* Attention while reading prompts (webapp/accel/prompt_attention.py says when): softmax(scale q k^T) v for every query
   of a batch of prompts, causal or through a mask, on the AMX tiles.

   PyTorch's attention on the CPU is a large share of reading a prompt, and runs far below the tiles' speed. On the
   tiles, 16 queries' scores against 16 keys are one product per 32 dimensions, and their weights' sum of 32 values
   one product per 16 dimensions. The keys and values are paired for the tiles once per key head and read from there
   by every query block; the scores of a block of 16 queries are kept whole (a row per query), so that the softmax
   needs no rescaling and its weights go to the tiles in bfloat16, summed in float32, as PyTorch's attention on
   bfloat16 does. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"
#include "tiles.h"

/* The call's shape, as prompt_attention.py writes it. MASK_BATCH: the mask's batch, 1 when every prompt shares
   it (0: no mask). */
enum { BATCH, HEADS, KV_HEADS, QUERIES, KEYS, DIM, CAUSAL, MASK_BATCH, PROMPT_FIELDS };
enum { ROWS_AT_ONCE = 16, MOST_DIM = 128 };

/* One call: the tensors (strides in elements: batch, head, position for q, k and v; batch, query, key for the
   mask) and the keys and values of every (prompt, key head) paired for the tiles. */
typedef struct {
    const uint16_t *q, *k, *v;
    const int64_t *q_strides, *k_strides, *v_strides, *shape, *mask_strides;
    const uint8_t *mask;
    float scale;
    uint16_t *out;
    uint32_t *paired_keys, *paired_values;
    size_t keys_room, values_room;  /* uint32 of each per (prompt, key head) */
} prompt;

static inline int rounded_up(int n, int to) { return (n + to - 1) / to * to; }

/* Prompt b's keys on key head h as the tiles read them: per 16 keys and 32 dimensions a tile of 16 rows (pairs
   of dimensions) of 16 keys; and its values per 32 keys and 32 dimensions two tiles (pair_values). */
static void pair_for_tiles(const prompt *p, int b, int h) {
    int keys = p->shape[KEYS], dim = p->shape[DIM], blocks = dim / 32;
    const uint16_t *k = p->k + b * p->k_strides[0] + h * p->k_strides[1];
    const uint16_t *v = p->v + b * p->v_strides[0] + h * p->v_strides[1];
    uint32_t *paired_keys = p->paired_keys + (b * p->shape[KV_HEADS] + h) * p->keys_room;
    uint32_t *paired_values = p->paired_values + (b * p->shape[KV_HEADS] + h) * p->values_room;
    for (int j = 0; j < rounded_up(keys, 16); j++) {
        const uint32_t *key = (const uint32_t *)(k + j * p->k_strides[2]);
        uint32_t *tile = paired_keys + (size_t)(j / 16) * blocks * 256 + j % 16;
        for (int t = 0; t < dim / 2; t++)  /* dimensions 2t and 2t + 1: block t / 16, row t % 16 */
            tile[(t / 16) * 256 + (t % 16) * 16] = j < keys ? key[t] : 0;
    }
    for (int j = 0; j < keys; j += 32)
        for (int d = 0; d < blocks; d++)
            pair_values(v, p->v_strides[2], j, keys, 32 * d, paired_values + ((size_t)(j / 32) * blocks + d) * 512);
}

/* Whether query i of prompt b sees keys j .. j + 15: a mask of 16 bits, none from `limit` on. */
static inline __mmask16 seen_by(const prompt *p, int b, int i, int j, int limit) {
    __mmask16 within = limit - j >= 16 ? (__mmask16)0xFFFF : limit > j ? (__mmask16)((1u << (limit - j)) - 1) : 0;
    if (p->shape[CAUSAL]) {  /* query i sees keys 0 .. i (transformers' causal mask, upper left) */
        int last = i - j;
        within &= last >= 15 ? (__mmask16)0xFFFF : last >= 0 ? (__mmask16)((1u << (last + 1)) - 1) : 0;
    }
    if (p->mask) {
        const uint8_t *row = p->mask + (p->shape[MASK_BATCH] > 1 ? b : 0) * p->mask_strides[0] +
                             (size_t)i * p->mask_strides[1] + j;
        within = _mm_mask_cmpneq_epi8_mask(within, _mm_maskz_loadu_epi8(within, row), _mm_setzero_si128());
    }
    return within;
}

/* Queries first .. first + 15 of prompt b on head `head`, into `out`. `room` holds the rows' scores (float32)
   and weights (bfloat16), `width` long each, and 16 KB for a last block's queries and the tiles' results. */
static void attend_block(const prompt *p, int b, int head, int first, float *room, int width) {
    int dim = p->shape[DIM], blocks = dim / 32, h = head / (p->shape[HEADS] / p->shape[KV_HEADS]);
    int rows = p->shape[QUERIES] - first < ROWS_AT_ONCE ? p->shape[QUERIES] - first : ROWS_AT_ONCE;
    int limit = p->shape[CAUSAL] && first + rows < p->shape[KEYS] ? first + rows : p->shape[KEYS];
    float *scores = room;
    uint16_t *weights = (uint16_t *)(scores + (size_t)ROWS_AT_ONCE * width);
    uint16_t *last_queries = weights + (size_t)ROWS_AT_ONCE * width;
    float *results = (float *)(last_queries + ROWS_AT_ONCE * MOST_DIM), totals[ROWS_AT_ONCE];
    const uint32_t *paired_keys = p->paired_keys + (b * p->shape[KV_HEADS] + h) * p->keys_room;
    const uint32_t *paired_values = p->paired_values + (b * p->shape[KV_HEADS] + h) * p->values_room;
    const uint16_t *queries = p->q + b * p->q_strides[0] + head * p->q_strides[1] + first * p->q_strides[2];
    long stride = 2 * p->q_strides[2];
    if (rows < ROWS_AT_ONCE) {  /* a tile reads 16 rows: the last few queries copied out, zeros after them */
        memset(last_queries, 0, sizeof(uint16_t) * ROWS_AT_ONCE * dim);
        for (int r = 0; r < rows; r++) memcpy(last_queries + r * dim, queries + r * p->q_strides[2], 2 * dim);
        queries = last_queries, stride = 2 * dim;
    }
    configure_tiles();
    _tile_loadd(2, queries, stride);  /* tile numbers are constants in the instruction */
    if (blocks > 1) _tile_loadd(3, queries + 32, stride);
    if (blocks > 2) _tile_loadd(4, queries + 64, stride);
    if (blocks > 3) _tile_loadd(5, queries + 96, stride);
    /* the scores, 16 keys at a time: a row per query */
    for (int j = 0; j < limit; j += 16) {
        const uint32_t *tile = paired_keys + (size_t)(j / 16) * blocks * 256;
        _tile_zero(0);
        _tile_loadd(1, tile, 64);
        _tile_dpbf16ps(0, 2, 1);
        if (blocks > 1) {
            _tile_loadd(1, tile + 256, 64);
            _tile_dpbf16ps(0, 3, 1);
        }
        if (blocks > 2) {
            _tile_loadd(1, tile + 512, 64);
            _tile_dpbf16ps(0, 4, 1);
        }
        if (blocks > 3) {
            _tile_loadd(1, tile + 768, 64);
            _tile_dpbf16ps(0, 5, 1);
        }
        _tile_stored(0, scores + j, 4 * width);
    }
    /* each row's softmax weights in bfloat16 (0 where hidden, and after the last key to a whole 32) */
    int columns = rounded_up(limit, 32);
    for (int r = 0; r < ROWS_AT_ONCE; r++) {
        float *row = scores + (size_t)r * width;
        uint16_t *weight = weights + (size_t)r * width;
        __m512 largest = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();
        for (int j = 0; j < limit && r < rows; j += 16) {
            __m512 x = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), seen_by(p, b, first + r, j, limit),
                                          _mm512_loadu_ps(row + j), _mm512_set1_ps(p->scale));
            _mm512_storeu_ps(row + j, x);
            largest = _mm512_max_ps(largest, x);
        }
        __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(largest));
        for (int j = 0; j < columns; j += 16) {
            __m512 e = _mm512_setzero_ps();
            if (j < limit && r < rows) {
                __m512 x = _mm512_loadu_ps(row + j);
                __mmask16 shown = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
                e = _mm512_maskz_mov_ps(shown, exp_ps(_mm512_sub_ps(x, top)));
            }
            total = _mm512_add_ps(total, e);
            _mm256_storeu_si256((__m256i *)(weight + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        totals[r] = _mm512_reduce_add_ps(total);
    }
    /* the weights' sums of the values, 64 dimensions at a time in tiles 0 .. 3 (32 in 0 and 1) */
    for (int d = 0; d < dim; d += 64) {
        int both = dim - d >= 64;
        clear_sums();
        for (int j = 0; j < columns; j += 32)
            add_to_sums(weights + j, 2 * width, paired_values + ((size_t)(j / 32) * blocks + d / 32) * 512, both);
        store_sums(results);
        for (int r = 0; r < rows; r++) {
            float natural[64];
            __m512 inverse = _mm512_set1_ps(totals[r] > 0.f ? 1.f / totals[r] : 0.f);  /* sees nothing: zeros */
            uint16_t *out = p->out + (((size_t)b * p->shape[QUERIES] + first + r) * p->shape[HEADS] + head) * dim + d;
            for (int half = 0; half <= both; half++) {
                store_in_order(natural + 32 * half, _mm512_loadu_ps(results + 512 * half + 16 * r),
                               _mm512_loadu_ps(results + 512 * half + 256 + 16 * r));
                for (int e = 0; e < 32; e += 16)
                    _mm256_storeu_si256((__m256i *)(out + 32 * half + e), (__m256i)_mm512_cvtneps_pbh(
                                            _mm512_mul_ps(_mm512_loadu_ps(natural + 32 * half + e), inverse)));
            }
        }
    }
}

/* out [batch, queries, heads, dim] (bfloat16, contiguous) = softmax(scale q k^T) v for q [batch, heads, queries,
   dim], k and v [batch, kv heads, keys, dim] (bfloat16, strided, dimensions contiguous; grouped-query attention
   where kv heads < heads), causal and/or through a bool mask [mask batch, queries, keys] (NULL: none). dim a
   multiple of 32 up to 128. The AMX tiles must have been granted (tabwrite_tiles_ready). 0, or -1 when out of
   memory. */
int tabwrite_prompt_attention(const uint16_t *q, const int64_t *q_strides, const uint16_t *k, const int64_t *k_strides,
                              const uint16_t *v, const int64_t *v_strides, const uint8_t *mask,
                              const int64_t *mask_strides, const int64_t *shape, float scale, uint16_t *out,
                              int threads) {
    int keys = shape[KEYS], dim = shape[DIM], heads_of_prompts = shape[BATCH] * shape[KV_HEADS];
    prompt p = {q, k, v, q_strides, k_strides, v_strides, shape, mask_strides, mask, scale, out, NULL, NULL,
                (size_t)rounded_up(keys, 16) * dim / 2, (size_t)rounded_up(keys, 32) * dim / 2};
    p.paired_keys = malloc(sizeof(uint32_t) * p.keys_room * heads_of_prompts);
    p.paired_values = malloc(sizeof(uint32_t) * p.values_room * heads_of_prompts);
    int failed = !p.paired_keys || !p.paired_values, width = rounded_up(keys, 32) + 16;
    int blocks = (shape[QUERIES] + ROWS_AT_ONCE - 1) / ROWS_AT_ONCE, tasks = shape[BATCH] * shape[HEADS] * blocks;
#pragma omp parallel num_threads(threads) if (!failed)
    {
        float *room = malloc(sizeof(float) * ROWS_AT_ONCE * width + sizeof(uint16_t) * ROWS_AT_ONCE * width +
                             16 * 1024);
#pragma omp atomic update
        failed |= !room;
#pragma omp for schedule(static)
        for (int task = 0; task < heads_of_prompts; task++)
            pair_for_tiles(&p, task / shape[KV_HEADS], task % shape[KV_HEADS]);
        if (!failed) {
#pragma omp for schedule(dynamic)
            for (int task = 0; task < tasks; task++)
                attend_block(&p, task / (shape[HEADS] * blocks), task / blocks % shape[HEADS],
                             task % blocks * ROWS_AT_ONCE, room, width);
            _tile_release();
        }
        free(room);
    }
    free(p.paired_keys), free(p.paired_values);
    return failed ? -1 : 0;
}
