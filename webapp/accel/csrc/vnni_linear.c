/* Linear layers with 4- or 8-bit weights for a few rows at a time, on AVX512-VNNI.

   Built and loaded by webapp/accel/native.py (which says why). Both kernels quantize each row of
   activations to 8 bits per group of 32 inputs (a scale per group, as GGUF's Q8_0 does),
   then multiply bytes by bytes with VPDPBUSD, 64 products an instruction, and apply the
   scales once per group in float32.

   The weights are laid out per block of 16 outputs and group of 32 inputs, so that one
   64-byte vector holds 4 consecutive inputs of each of the 16 outputs: a lane is an
   output, and a group's products add up in its lane with no shuffling. 4 bits: 4 vectors
   of nibbles a group; vector j holds inputs 4j..4j+3 in its low nibbles and 16+4j..16+4j+3
   in its high ones (byte 4 x output + input). 8 bits: 8 vectors a group, vector j holding
   inputs 4j..4j+3, each weight stored plus 128 (the instruction takes one side unsigned).
   Outputs past the last whole block are padded with zero weights and not written. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"
#include "kernels.h"

/* How far ahead of its reading each thread asks for weights. A decoding step reads every weight once,
   from memory rather than cache, so asking ahead hides memory's latency; asking further ahead gained less
   (measured: docs/performance.md, "Thresholds"). */
#define PREFETCH_BYTES 2048
#define ROW_BLOCK 4   /* rows that share one reading of a block's weights (registers: 4 x 3 accumulators) */
#define ROWS_AT_MOST 8  /* in 4-bit layers given many rows, 8 rows share it (measured: docs/performance.md) */

int tabwrite_quantized_room(quantized *x, int rows, int in) {
    x->levels = malloc((size_t)rows * in);
    x->scales = malloc(sizeof(float) * rows * (in / GROUP));
    x->sums = malloc(sizeof(int32_t) * rows * (in / GROUP));
    return x->levels && x->scales && x->sums;
}

void tabwrite_free_quantized(quantized *x) {
    free(x->levels), free(x->scales), free(x->sums);
}

void tabwrite_quantize_rows(const uint16_t *x, int rows, int in, quantized *q) {
    int groups = in / GROUP;
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < groups; g++) {
            const uint16_t *from = x + (size_t)r * in + g * GROUP;
            __m512 low = load_bf16(from), high = load_bf16(from + 16);
            float largest = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
            __m512 scale = _mm512_set1_ps(largest > 0.f ? 127.f / largest : 0.f);
            __m512i low_levels = _mm512_cvtps_epi32(_mm512_mul_ps(low, scale));  /* rounds to nearest even */
            __m512i high_levels = _mm512_cvtps_epi32(_mm512_mul_ps(high, scale));
            int8_t *to = q->levels + (size_t)r * in + g * GROUP;
            _mm_storeu_si128((__m128i *)to, _mm512_cvtsepi32_epi8(low_levels));
            _mm_storeu_si128((__m128i *)(to + 16), _mm512_cvtsepi32_epi8(high_levels));
            q->scales[r * groups + g] = largest / 127.f;
            q->sums[r * groups + g] = _mm512_reduce_add_epi32(_mm512_add_epi32(low_levels, high_levels));
        }
    }
}

/* The bias of a block's outputs (bfloat16), zero past the last output and where there is none. */
static inline __m512 block_bias(const uint16_t *bias, int valid) {
    if (!bias) return _mm512_setzero_ps();
    __mmask16 mask = valid >= BLOCK ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1);
    return bf16_to_float(_mm256_maskz_loadu_epi16(mask, bias));
}

static inline void store_outputs(uint16_t *y, __m512 values, int valid) {
    __m256i halves = (__m256i)_mm512_cvtneps_pbh(values);
    if (valid >= BLOCK)
        _mm256_storeu_si256((__m256i *)y, halves);
    else
        _mm256_mask_storeu_epi16(y, (__mmask16)((1u << valid) - 1), halves);
}

/* The 8 products of a group's 32 inputs with one row, by 4 inputs a vector, in two chains of 4. */
static inline __m512i group_products(const __m512i *w, const int8_t *xq) {
    const int32_t *x = (const int32_t *)xq;
    __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
    even = _mm512_dpbusd_epi32(even, w[0], _mm512_set1_epi32(x[0]));
    odd = _mm512_dpbusd_epi32(odd, w[1], _mm512_set1_epi32(x[1]));
    even = _mm512_dpbusd_epi32(even, w[2], _mm512_set1_epi32(x[2]));
    odd = _mm512_dpbusd_epi32(odd, w[3], _mm512_set1_epi32(x[3]));
    even = _mm512_dpbusd_epi32(even, w[4], _mm512_set1_epi32(x[4]));
    odd = _mm512_dpbusd_epi32(odd, w[5], _mm512_set1_epi32(x[5]));
    even = _mm512_dpbusd_epi32(even, w[6], _mm512_set1_epi32(x[6]));
    odd = _mm512_dpbusd_epi32(odd, w[7], _mm512_set1_epi32(x[7]));
    return _mm512_add_epi32(even, odd);
}

/* Rows r0 .. r0 + count - 1 of one block of 16 outputs, count at most `most` (a constant, once inlined): those rows
   share each reading and unpacking of the block's weights. */
static inline __attribute__((always_inline)) void int4_block_rows(
        const int most, int r0, int count, int groups, int in, const quantized *x, const uint8_t *wb,
        const uint16_t *sb, const uint16_t *zb, __m512 added, uint16_t *y, int valid, int out) {
    const int8_t *xq = x->levels;
    const float *xd = x->scales;
    const int32_t *xs = x->sums;
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 acc[ROWS_AT_MOST];
    for (int k = 0; k < most; k++) acc[k] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        __m512i w[8];
        const char *ahead = (const char *)(wb + (size_t)g * 256) + PREFETCH_BYTES;
        for (int j = 0; j < 4; j++) _mm_prefetch(ahead + 64 * j, _MM_HINT_T0);
        for (int j = 0; j < 4; j++) {
            __m512i packed = _mm512_loadu_si512((const void *)(wb + (size_t)g * 256 + 64 * j));
            w[j] = _mm512_and_si512(packed, nibble);
            w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
        }
        __m512 scale = load_bf16(sb + (size_t)g * BLOCK);
        /* (level - 8) s + z = level s + (z - 8 s): the levels' products, then the sum of the inputs */
        __m512 minimum = _mm512_fmadd_ps(_mm512_set1_ps(-8.f), scale, load_bf16(zb + (size_t)g * BLOCK));
#pragma GCC unroll 8
        for (int k = 0; k < most; k++) {
            if (k >= count) break;
            int row = (r0 + k) * groups + g;
            __m512 products = _mm512_cvtepi32_ps(group_products(w, xq + (size_t)(r0 + k) * in + g * GROUP));
            acc[k] = _mm512_fmadd_ps(products, _mm512_mul_ps(scale, _mm512_set1_ps(xd[row])), acc[k]);
            acc[k] = _mm512_fmadd_ps(minimum, _mm512_set1_ps(xd[row] * (float)xs[row]), acc[k]);
        }
    }
    for (int k = 0; k < count; k++)
        store_outputs(y + (size_t)(r0 + k) * out, _mm512_add_ps(acc[k], added), valid);
}

void tabwrite_int4_block(int b, int rows, int in, int out, const quantized *x, const uint8_t *levels,
                         const uint16_t *scales, const uint16_t *zeros, const uint16_t *bias, uint16_t *y) {
    int groups = in / GROUP, valid = out - b * BLOCK;
    const uint8_t *wb = levels + (size_t)b * groups * 256;
    const uint16_t *sb = scales + (size_t)b * groups * BLOCK, *zb = zeros + (size_t)b * groups * BLOCK;
    __m512 added = block_bias(bias ? bias + b * BLOCK : NULL, valid);
    /* a step's few rows in fours; more in eights: each unpacking of the weights then serves twice the rows, while
       a step's 3 rows ran slower in a block made for 8 */
    int most = rows >= ROWS_AT_MOST ? ROWS_AT_MOST : ROW_BLOCK;
    for (int r0 = 0; r0 < rows; r0 += most) {
        int count = rows - r0 < most ? rows - r0 : most;
        if (most == ROWS_AT_MOST)
            int4_block_rows(ROWS_AT_MOST, r0, count, groups, in, x, wb, sb, zb, added, y + b * BLOCK, valid, out);
        else
            int4_block_rows(ROW_BLOCK, r0, count, groups, in, x, wb, sb, zb, added, y + b * BLOCK, valid, out);
    }
}

/* y [rows, out] = x W^T + bias, W[o, 32g + i] = (level - 8) x scale + zero; scales and zeros [blocks, groups, 16]
   bfloat16, as torch's int4 kernel reads them. Returns 0, or -1 when out of memory. */
int tabwrite_int4_linear(const uint16_t *x, int rows, int in, int out, const uint8_t *levels,
                         const uint16_t *scales, const uint16_t *zeros, const uint16_t *bias, uint16_t *y,
                         int threads) {
    int blocks = (out + BLOCK - 1) / BLOCK;
    quantized q;
    if (!tabwrite_quantized_room(&q, rows, in)) {
        tabwrite_free_quantized(&q);
        return -1;
    }
    tabwrite_quantize_rows(x, rows, in, &q);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < blocks; b++)
        tabwrite_int4_block(b, rows, in, out, &q, levels, scales, zeros, bias, y);
    tabwrite_free_quantized(&q);
    return 0;
}

/* y [rows, out] = x W^T + bias, W[o, i] = (weights[...] - 128) x scales[o]; scales [blocks x 16] float32. */
int tabwrite_int8_linear(const uint16_t *x, int rows, int in, int out, const uint8_t *weights,
                         const float *scales, const uint16_t *bias, uint16_t *y, int threads) {
    int groups = in / GROUP, blocks = (out + BLOCK - 1) / BLOCK;
    quantized q;
    float *shift = malloc(sizeof(float) * rows);
    if (!tabwrite_quantized_room(&q, rows, in) || !shift) {
        tabwrite_free_quantized(&q), free(shift);
        return -1;
    }
    tabwrite_quantize_rows(x, rows, in, &q);
    const int8_t *xq = q.levels;
    const float *xd = q.scales;
    const int32_t *xs = q.sums;
    for (int r = 0; r < rows; r++) {  /* what the stored +128 adds to every output of row r */
        float total = 0.f;
        for (int g = 0; g < groups; g++) total += 128.f * xd[r * groups + g] * (float)xs[r * groups + g];
        shift[r] = total;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < blocks; b++) {
        const uint8_t *wb = weights + (size_t)b * groups * 512;
        __m512 scale = _mm512_loadu_ps(scales + (size_t)b * BLOCK);
        __m512 added = block_bias(bias ? bias + b * BLOCK : NULL, out - b * BLOCK);
        for (int r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            int count = rows - r0 < ROW_BLOCK ? rows - r0 : ROW_BLOCK;
            __m512 acc[ROW_BLOCK];
            for (int k = 0; k < ROW_BLOCK; k++) acc[k] = _mm512_setzero_ps();
            for (int g = 0; g < groups; g++) {
                __m512i w[8];
                const char *ahead = (const char *)(wb + (size_t)g * 512) + PREFETCH_BYTES;
                for (int j = 0; j < 8; j++) _mm_prefetch(ahead + 64 * j, _MM_HINT_T0);
                for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)(wb + (size_t)g * 512 + 64 * j));
#pragma GCC unroll 4
                for (int k = 0; k < ROW_BLOCK; k++) {
                    if (k >= count) break;
                    __m512 products = _mm512_cvtepi32_ps(group_products(w, xq + (size_t)(r0 + k) * in + g * GROUP));
                    acc[k] = _mm512_fmadd_ps(products, _mm512_set1_ps(xd[(r0 + k) * groups + g]), acc[k]);
                }
            }
            for (int k = 0; k < count; k++) {
                __m512 value = _mm512_mul_ps(_mm512_sub_ps(acc[k], _mm512_set1_ps(shift[r0 + k])), scale);
                store_outputs(y + (size_t)(r0 + k) * out + b * BLOCK, _mm512_add_ps(value, added), out - b * BLOCK);
            }
        }
    }
    tabwrite_free_quantized(&q), free(shift);
    return 0;
}
