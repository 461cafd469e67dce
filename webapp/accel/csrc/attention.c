/* Attention for the decoding step (decoder_step.c): each request's query heads over its cache row, through the
   step's mask, with the roundings of PyTorch's attention on bfloat16.

   A key head's attention is a task, cut into parts along the cache row when a step has too few tasks for its
   threads; each part leaves its largest score, its sum of weights and its weighted sum of the values, and
   `combine` sums the parts. A part runs on the AMX tiles where the CPU has them (16 keys' scores for up to 16
   query heads in two instructions, the weighted sum of 32 values in one per 16 dimensions) and on AVX-512
   otherwise. On AVX-512 the scores' dot products, at the vdpbf16ps unit's pace, are much of a long cache row's
   attention; on the tiles they are a few instructions per 16 keys. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bf16.h"
#include "kernels.h"
#include "step.h"
#include "tiles.h"

long tabwrite_tile_parts;  /* parts of attention computed on the tiles so far (tests read it) */

enum { KEYS_AT_ONCE = 16, MOST_DIM = 128, PART_COLUMNS = 128, LANES = 16, TILES_FROM = 4, TILE_ROOM = 16 * 1024 };

/* The 16 sums of 16 vectors' lanes, in order: a transposing tree of adds, 45 instructions where 16 horizontal
   sums would take about 130. */
static inline __m512 sums_of(__m512 *v) {
    __m512 pairs[8], quads[4], halves[2];
    for (int i = 0; i < 8; i++)  /* per 128-bit lane: v[2i] and v[2i+1] interleaved, half their sums */
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)  /* per 128-bit lane: the lane's sums of v[4i] .. v[4i+3] */
        quads[i] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(pairs[2 * i]), _mm512_castps_pd(pairs[2 * i + 1]))),
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(pairs[2 * i]), _mm512_castps_pd(pairs[2 * i + 1]))));
    for (int i = 0; i < 2; i++)  /* lanes 0 and 1 added, 2 and 3 added, of two quads */
        halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                                  _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                         _mm512_shuffle_f32x4(halves[0], halves[1], 0xDD));
}

/* scale x q.k for keys j0 .. j0 + count - 1 (count <= 16), -inf where `seen` hides a key or past count. */
static inline __attribute__((always_inline)) __m512 scores_of(const uint16_t *query, const uint16_t *keys,
                                                              long key_stride, int j0, int count, int dim,
                                                              const uint8_t *seen, float scale) {
    __m512 partial[16];
    for (int k = 0; k < 16; k++) {
        __m512 dot = _mm512_setzero_ps();
        if (k < count) {
            const uint16_t *key = keys + (j0 + k) * key_stride;
            for (int d = 0; d < dim; d += 32)
                dot = _mm512_dpbf16_ps(dot, (__m512bh)_mm512_loadu_si512((const void *)(query + d)),
                                       (__m512bh)_mm512_loadu_si512((const void *)(key + d)));
        }
        partial[k] = dot;
    }
    __mmask16 within = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1);
    __mmask16 shown = _mm_mask_cmpneq_epi8_mask(within, _mm_maskz_loadu_epi8(within, seen + j0), _mm_setzero_si128());
    return _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), shown, sums_of(partial), _mm512_set1_ps(scale));
}


/* Request r's query heads that read key head h (grouped-query attention: `repeats` a batch row): their queries
   (batch row b's heads at q + b x stride), the visible rows they see through and, where `result` is not NULL,
   their outputs in out [rows, heads x dim], in one order that every part of the attention and `combine` agree
   on. How many. */
static int queries_of(const step *s, int r, int h, const uint16_t *q, long stride, uint16_t *out,
                      const uint16_t **query, const uint8_t **seen, uint16_t **result) {
    int heads = s->shape[HEADS], repeats = heads / s->shape[KV_HEADS], queries = s->shape[QUERIES];
    int dim = s->shape[HEAD_DIM], columns = s->shape[LENGTH] + queries, count = 0;
    for (int b = 0; b < s->shape[ROWS]; b++) {
        if (s->slot_of_row[b] / queries != r) continue;  /* another request's query */
        for (int head = h * repeats; head < (h + 1) * repeats; head++, count++) {
            query[count] = q + b * stride + head * dim;
            seen[count] = s->visible + s->slot_of_row[b] * columns;
            if (result) result[count] = out + ((size_t)b * heads + head) * dim;
        }
    }
    return count;
}

/* Request r's keys (part 0) or values (part 4) on key head h, from a layer's 8 cache fields. */
static inline const uint16_t *cache_row(const int64_t *cache, int part, int r, int h) {
    return (const uint16_t *)cache[part] + r * cache[part + 1] + h * cache[part + 2];
}

/* The most query heads a request has for a key head. */
static int query_heads(const int64_t *shape) { return shape[QUERIES] * (shape[HEADS] / shape[KV_HEADS]); }

/* How many parts of its columns a key head's attention is cut into: enough for every thread to have two tasks
   when a step has few (one request of the embedded model has three key heads for two threads), each at least
   PART_COLUMNS long. */
static int parts_of(const int64_t *shape, int tasks, int threads) {
    int parts = (2 * threads + tasks - 1) / tasks, most = (shape[LENGTH] + shape[QUERIES]) / PART_COLUMNS;
    return parts < most ? parts : most > 1 ? most : 1;
}

/* A part's columns: [*begin, *end), cut at multiples of 16. */
static void part_columns(const int64_t *shape, int parts, int part, int *begin, int *end) {
    int columns = shape[LENGTH] + shape[QUERIES], size = ((columns + parts - 1) / parts + 15) / 16 * 16;
    *begin = part * size < columns ? part * size : columns;
    *end = *begin + size < columns ? *begin + size : columns;
}

/* The length of a query head's rows of scores and weights for a part of `columns` columns: a multiple of 32, with
   room for the last chunk's 16 scores written at once. */
static inline int row_room_for(int columns) { return (columns + 47) / 32 * 32; }

/* What a part of the attention leaves for `combine`, per query head: its largest score, the sum of e^(score -
   largest) over its columns, and those weights' sum of the values, dim floats. */
enum { LARGEST, TOTAL, SUMS };

/* Part of the attention of request r's query heads on key head h: columns [begin, end) of its cache row (see
   queries_of), scores in float32, keys hidden where a query's visible row says so. Each query head's
   partial result (above) goes to partial + i x (SUMS + dim). `scores` and `weights` have room for the query heads'
   rows of row_room_for(end - begin). As PyTorch's attention does on bfloat16, the weights e^(score - largest) are
   summed in float32 and rounded to bfloat16 for the product with the values (in float32, two values a
   vdpbf16ps). The keys and values are read once, 16 at a time, for all the query heads; `dim` is a constant
   where this is inlined, so that its loops unroll. */
static inline __attribute__((always_inline)) void attend_part_avx_with(const step *s, int r, int h, int begin, int end,
                                                                   const int64_t *cache, const uint16_t *q,
                                                                   long stride, float *scores, uint16_t *weights,
                                                                   float *partial, int dim) {
    int queries = query_heads(s->shape), width = row_room_for(end - begin);
    const uint16_t *keys = cache_row(cache, 0, r, h), *values = cache_row(cache, 4, r, h);
    const uint16_t *query[queries];
    const uint8_t *seen[queries];
    int count = queries_of(s, r, h, q, stride, NULL, query, seen, NULL);
    if (!count) return;
    /* scores, 16 keys at a time for every query head */
    __m512 top[queries];
    for (int i = 0; i < count; i++) top[i] = _mm512_set1_ps(-INFINITY);
    for (int j = begin; j < end; j += KEYS_AT_ONCE) {
        int chunk = end - j < KEYS_AT_ONCE ? end - j : KEYS_AT_ONCE;
        for (int k = 0; k < chunk; k += 4)  /* the next chunk's keys, while these are at work */
            _mm_prefetch((const char *)(keys + (j + KEYS_AT_ONCE + k) * cache[3]), _MM_HINT_T0);
        for (int i = 0; i < count; i++) {
            __m512 x = scores_of(query[i], keys, cache[3], j, chunk, dim, seen[i], s->scale);
            _mm512_storeu_ps(scores + (size_t)i * width + j - begin, x);
            top[i] = _mm512_max_ps(top[i], x);
        }
    }
    /* the weights e^(score - largest) in bfloat16, 0 where hidden and after the last column */
    for (int i = 0; i < count; i++) {
        const float *row = scores + (size_t)i * width;
        uint16_t *weight = weights + (size_t)i * width;
        float largest = _mm512_reduce_max_ps(top[i]), total = 0.f;
        for (int j = 0; j < end - begin; j += 16) {
            __m512 x = _mm512_loadu_ps(row + j);  /* -inf where hidden or past the end */
            __mmask16 shown = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
            __m512 e = _mm512_maskz_mov_ps(shown, exp_ps(_mm512_sub_ps(x, _mm512_set1_ps(largest))));
            _mm256_storeu_si256((__m256i *)(weight + j), (__m256i)_mm512_cvtneps_pbh(e));
            total += _mm512_reduce_add_ps(e);
        }
        partial[(size_t)i * (SUMS + dim) + LARGEST] = largest;
        partial[(size_t)i * (SUMS + dim) + TOTAL] = total;
    }
    /* the weighted sums of the values: each pair of values interleaved once, for every query head; a sum's
       vectors hold its dimensions in the order of the interleaving (see store_in_order) */
    int blocks = dim / 32;
    __m512 sums[queries][MOST_DIM / 16];
    __m512i pairs[KEYS_AT_ONCE / 2][MOST_DIM / 16];
    for (int i = 0; i < count; i++)
        for (int d = 0; d < 2 * blocks; d++) sums[i][d] = _mm512_setzero_ps();
    for (int j = begin; j < end; j += KEYS_AT_ONCE) {
        int chunk = end - j < KEYS_AT_ONCE ? end - j : KEYS_AT_ONCE;
        for (int k = 0; k < chunk; k += 2) {
            const uint16_t *value = values + (j + k) * cache[7];
            _mm_prefetch((const char *)(value + KEYS_AT_ONCE * cache[7]), _MM_HINT_T0);
            _mm_prefetch((const char *)(value + (KEYS_AT_ONCE + 1) * cache[7]), _MM_HINT_T0);
            for (int d = 0; d < blocks; d++) {
                __m512i first = _mm512_loadu_si512((const void *)(value + 32 * d));
                __m512i second = k + 1 < chunk ? _mm512_loadu_si512((const void *)(value + cache[7] + 32 * d))
                                               : _mm512_setzero_si512();
                pairs[k / 2][2 * d] = _mm512_unpacklo_epi16(first, second);
                pairs[k / 2][2 * d + 1] = _mm512_unpackhi_epi16(first, second);
            }
        }
        for (int i = 0; i < count; i++) {
            const uint32_t *weight = (const uint32_t *)(weights + (size_t)i * width + j - begin);
            for (int k = 0; k < (chunk + 1) / 2; k++) {
                __m512bh both = (__m512bh)_mm512_set1_epi32((int)weight[k]);
                for (int d = 0; d < 2 * blocks; d++)
                    sums[i][d] = _mm512_dpbf16_ps(sums[i][d], both, (__m512bh)pairs[k][d]);
            }
        }
    }
    for (int i = 0; i < count; i++)
        for (int d = 0; d < blocks; d++)
            store_in_order(partial + (size_t)i * (SUMS + dim) + SUMS + 32 * d, sums[i][2 * d], sums[i][2 * d + 1]);
}

/* A part of the attention for request r's key head h on AVX-512 (see attend_part_avx_with). */
static void attend_part_avx(const step *s, int r, int h, int begin, int end, const int64_t *cache, const uint16_t *q,
                        long stride, float *scores, uint16_t *weights, float *partial) {
    switch (s->shape[HEAD_DIM]) {  /* the usual sizes with their loops unrolled */
        case 64: attend_part_avx_with(s, r, h, begin, end, cache, q, stride, scores, weights, partial, 64); break;
        case 128: attend_part_avx_with(s, r, h, begin, end, cache, q, stride, scores, weights, partial, 128); break;
        default: attend_part_avx_with(s, r, h, begin, end, cache, q, stride, scores, weights, partial, s->shape[HEAD_DIM]);
    }
}

/* ---- on the AMX tiles ---------------------------------------------------------------------------------- */

/* Asks Linux for the AMX tile data (once a process; PyTorch's oneDNN asks too): 1 when granted. */
int tabwrite_tiles_ready(void) {
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}


/* keys x query heads scores of 16 keys from `keys` (rows `stride` bytes apart), the queries' tiles in 2 .. 5
   (one per 32 dimensions), into scores [16][16] float32. */
static inline void tile_scores(const uint16_t *keys, long stride, int blocks, float *scores) {
    _tile_zero(0);
    _tile_loadd(1, keys, stride);
    _tile_dpbf16ps(0, 1, 2);
    if (blocks > 1) {
        _tile_loadd(1, keys + 32, stride);
        _tile_dpbf16ps(0, 1, 3);
    }
    if (blocks > 2) {
        _tile_loadd(1, keys + 64, stride);
        _tile_dpbf16ps(0, 1, 4);
    }
    if (blocks > 3) {
        _tile_loadd(1, keys + 96, stride);
        _tile_dpbf16ps(0, 1, 5);
    }
    _tile_stored(0, scores, 64);
}

/* A part of request r's attention on key head h (attend_part_avx says what), its up to 16 query heads the
   tiles' columns: the scores as keys x query heads, so that the softmax's largest scores and sums are 16 query
   heads a vector. */
static void attend_part_tiles(const step *s, int r, int h, int begin, int end, const int64_t *cache,
                              const uint16_t *q, long stride, const attention_room *room, float *partial) {
    int dim = s->shape[HEAD_DIM], blocks = dim / 32, columns = end - begin, queries = query_heads(s->shape);
    const uint16_t *keys = cache_row(cache, 0, r, h), *values = cache_row(cache, 4, r, h);
    const uint16_t *query[queries];
    const uint8_t *seen[queries];
    int count = queries_of(s, r, h, q, stride, NULL, query, seen, NULL);
    if (!count) return;
    float *scores = room->scores;  /* [row_room_for(columns)][16]: a key's scores for each query head */
    uint32_t *weights = (uint32_t *)room->weights;  /* per 32 keys a tile: [16 query heads][16 pairs of keys] */
    uint32_t *paired_queries = (uint32_t *)room->tiles, *paired_values = paired_queries + 4 * 256;
    uint16_t *last_keys = (uint16_t *)(paired_values + 4 * 256);
    float *results = (float *)(last_keys + 16 * MOST_DIM);
    configure_tiles();
    /* the queries, pairs of dimensions by query head: tile rows of 16 pairs, a tile per 32 dimensions */
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < 16; t++)
            for (int i = 0; i < LANES; i++)
                paired_queries[256 * b + 16 * t + i] = i < count ? ((const uint32_t *)query[i])[16 * b + t] : 0;
    _tile_loadd(2, paired_queries, 64);  /* tile numbers are constants in the instruction */
    if (blocks > 1) _tile_loadd(3, paired_queries + 256, 64);
    if (blocks > 2) _tile_loadd(4, paired_queries + 512, 64);
    if (blocks > 3) _tile_loadd(5, paired_queries + 768, 64);
    /* the scores, 16 keys at a time (the last few copied out with zeros after them, as a tile reads 16 rows) */
    int lines = dim / 32;  /* 64-byte lines a key or value */
    for (int j = begin; j < end; j += KEYS_AT_ONCE) {
        const uint16_t *from = keys + j * cache[3];
        long from_stride = 2 * cache[3];
        /* memory, not the tiles, sets the pace: the next keys, and these keys' values for below */
        for (int k = j + KEYS_AT_ONCE; k < j + 2 * KEYS_AT_ONCE && k < end; k++)
            for (int line = 0; line < lines; line++) _mm_prefetch((const char *)(keys + k * cache[3] + 32 * line), _MM_HINT_T0);
        for (int k = j; k < j + KEYS_AT_ONCE && k < end; k++)
            for (int line = 0; line < lines; line++) _mm_prefetch((const char *)(values + k * cache[7] + 32 * line), _MM_HINT_T1);
        if (end - j < KEYS_AT_ONCE) {
            memset(last_keys, 0, sizeof(uint16_t) * 16 * dim);
            for (int k = 0; k < end - j; k++) memcpy(last_keys + k * dim, from + k * cache[3], sizeof(uint16_t) * dim);
            from = last_keys, from_stride = 2 * dim;
        }
        tile_scores(from, from_stride, blocks, scores + (size_t)(j - begin) * LANES);
    }
    /* scaled, -inf where a query head's visible row hides a key; each query head's largest */
    __m512 largest = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(s->scale);
    for (int j = begin; j < end; j += KEYS_AT_ONCE) {
        int chunk = end - j < KEYS_AT_ONCE ? end - j : KEYS_AT_ONCE, all_seen = 1;
        __mmask16 within = chunk >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << chunk) - 1);
        for (int i = 0; i < count && all_seen; i++)
            all_seen = _mm_mask_cmpneq_epi8_mask(within, _mm_maskz_loadu_epi8(within, seen[i] + j), _mm_setzero_si128())
                       == within;
        for (int k = 0; k < chunk; k++) {
            float *row = scores + (size_t)(j - begin + k) * LANES;
            __m512 x = _mm512_mul_ps(_mm512_loadu_ps(row), scale);
            if (!all_seen) {  /* the columns of options and of other requests' padding: a few chunks a step */
                __mmask16 hidden = 0;
                for (int i = 0; i < count; i++) hidden |= (__mmask16)(!seen[i][j + k] << i);
                x = _mm512_mask_mov_ps(x, hidden, _mm512_set1_ps(-INFINITY));
            }
            _mm512_storeu_ps(row, x);
            largest = _mm512_max_ps(largest, x);
        }
    }
    /* the weights e^(score - largest), summed in float32 and paired in bfloat16 into the weights' tiles (0 where
       hidden and after the last key) */
    __m512 total = _mm512_setzero_ps();
    const __m512i row_of_head = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                   _mm512_set1_epi32(16));
    int pairs = (columns + 31) / 32 * 16;
    for (int p = 0; p < pairs; p++) {
        __m512 e[2];
        for (int half = 0; half < 2; half++) {
            int k = 2 * p + half;
            e[half] = _mm512_setzero_ps();
            if (k < columns) {
                __m512 x = _mm512_loadu_ps(scores + (size_t)k * LANES);
                __mmask16 shown = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
                e[half] = _mm512_maskz_mov_ps(shown, exp_ps(_mm512_sub_ps(x, largest)));
            }
        }
        total = _mm512_add_ps(total, _mm512_add_ps(e[0], e[1]));
        __m512i both = _mm512_or_si512(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e[0])),
                                       _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e[1])), 16));
        _mm512_i32scatter_epi32(weights + 256 * (p / 16) + p % 16, row_of_head, both, 4);
    }
    /* the weighted sums of the values, 32 dimensions at a time (tiles 0 and 1: see store_in_order) */
    float largest_of[LANES], total_of[LANES];
    _mm512_storeu_ps(largest_of, largest);
    _mm512_storeu_ps(total_of, total);
    for (int i = 0; i < count; i++) {
        partial[(size_t)i * (SUMS + dim) + LARGEST] = largest_of[i];
        partial[(size_t)i * (SUMS + dim) + TOTAL] = total_of[i];
    }
    for (int d = 0; d < dim; d += 64) {  /* 64 dimensions in tiles 0 .. 3, 32 in 0 and 1 */
        int both = dim - d >= 64;
        clear_sums();
        for (int j = begin; j < end; j += 32) {
            pair_values(values, cache[7], j, end, d, paired_values);
            if (both) pair_values(values, cache[7], j, end, d + 32, paired_values + 512);
            add_to_sums(weights + 256 * ((j - begin) / 32), 64, paired_values, both);
        }
        store_sums(results);
        for (int i = 0; i < count; i++)
            for (int half = 0; half <= both; half++)
                store_in_order(partial + (size_t)i * (SUMS + dim) + SUMS + d + 32 * half,
                               _mm512_loadu_ps(results + 512 * half + 16 * i),
                               _mm512_loadu_ps(results + 512 * half + 256 + 16 * i));
    }
    _tile_release();
}

/* Request r's attention on key head h from its parts' results (partials, one after the other): each query
   head's softmax-weighted sum of the values, rounded to bfloat16 into its output. A query head that sees
   nothing gets zeros. */
static void combine(const step *s, int r, int h, int parts, const float *partials, const uint16_t *q, long stride,
                    uint16_t *out) {
    int queries = query_heads(s->shape), dim = s->shape[HEAD_DIM];
    const uint16_t *query[queries];
    const uint8_t *seen[queries];
    uint16_t *result[queries];
    int count = queries_of(s, r, h, q, stride, out, query, seen, result);
    size_t part_size = (size_t)queries * (SUMS + dim);
    for (int i = 0; i < count; i++) {
        const float *first = partials + (size_t)i * (SUMS + dim);
        float largest = -INFINITY, total = 0.f;
        for (int p = 0; p < parts; p++)
            largest = fmaxf(largest, first[p * part_size + LARGEST]);
        __m512 sum[MOST_DIM / 16];
        for (int d = 0; d < dim / 16; d++) sum[d] = _mm512_setzero_ps();
        for (int p = 0; p < parts && largest > -INFINITY; p++) {
            const float *own = first + p * part_size;
            if (own[LARGEST] == -INFINITY) continue;  /* this part hides every column from this query */
            float rescale = expf(own[LARGEST] - largest);
            total += rescale * own[TOTAL];
            for (int d = 0; d < dim / 16; d++)
                sum[d] = _mm512_fmadd_ps(_mm512_set1_ps(rescale), _mm512_loadu_ps(own + SUMS + 16 * d), sum[d]);
        }
        __m512 inverse = _mm512_set1_ps(total > 0.f ? 1.f / total : 0.f);
        for (int d = 0; d < dim / 16; d++)
            _mm256_storeu_si256((__m256i *)(result[i] + 16 * d), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(sum[d], inverse)));
    }
}

/* A part of request r's attention on key head h: on the tiles where the step may use them and its query heads
   fill enough of their 16 columns (TILES_FROM), else on AVX-512. A tile product costs the same however few of its
   columns are used: with 3 query heads a key head (the embedded model's one option, GPT-2's three) the tiles gained
   nothing, with more they were faster (measured: docs/performance.md, "Thresholds"). */
static void attend_part(const step *s, int r, int h, int begin, int end, const int64_t *cache, const uint16_t *q,
                        long stride, const attention_room *room, float *partial) {
    if (s->shape[TILES] && query_heads(s->shape) >= TILES_FROM && query_heads(s->shape) <= LANES) {
        attend_part_tiles(s, r, h, begin, end, cache, q, stride, room, partial);
        __atomic_add_fetch(&tabwrite_tile_parts, 1, __ATOMIC_RELAXED);
    } else
        attend_part_avx(s, r, h, begin, end, cache, q, stride, room->scores, room->weights, partial);
}

void tabwrite_attention(const step *s, const int64_t *cache, const uint16_t *q, long stride, const attention_room *room,
                        float *partials, int threads, uint16_t *out) {
    int kv_heads = s->shape[KV_HEADS], tasks = s->shape[REQUESTS] * kv_heads, parts = parts_of(s->shape, tasks, threads);
    size_t part_size = (size_t)query_heads(s->shape) * (SUMS + s->shape[HEAD_DIM]);
#pragma omp for schedule(dynamic)
    for (int task = 0; task < tasks * parts; task++) {
        int begin, end, head_task = task / parts;
        part_columns(s->shape, parts, task % parts, &begin, &end);
        attend_part(s, head_task / kv_heads, head_task % kv_heads, begin, end, cache, q, stride, room,
                    partials + task * part_size);
    }
#pragma omp for schedule(static)
    for (int task = 0; task < tasks; task++)
        combine(s, task / kv_heads, task % kv_heads, parts, partials + (size_t)task * parts * part_size, q, stride, out);
}

float *tabwrite_attention_partials(const int64_t *shape, int threads) {
    size_t tasks = shape[REQUESTS] * shape[KV_HEADS];
    return malloc(sizeof(float) * tasks * parts_of(shape, tasks, threads) * query_heads(shape) * (SUMS + shape[HEAD_DIM]));
}

int tabwrite_attention_room(attention_room *room, const int64_t *shape) {
    /* rows of scores and weights: a query head's each on AVX-512, a key's (16 query heads) each on the tiles */
    size_t rows = query_heads(shape) > LANES ? query_heads(shape) : LANES;
    size_t length = rows * row_room_for(shape[LENGTH] + shape[QUERIES]);
    size_t bytes = (sizeof(float) * length + sizeof(uint16_t) * length + TILE_ROOM + 63) / 64 * 64;
    room->scores = aligned_alloc(64, bytes);
    room->weights = room->scores ? (uint16_t *)(room->scores + length) : NULL;
    room->tiles = room->scores ? (uint8_t *)(room->weights + length) : NULL;
    return room->scores != NULL;
}

void tabwrite_free_attention_room(attention_room *room) { free(room->scores); }
