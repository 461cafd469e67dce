/* Llama's RMSNorm on bfloat16 rows in one pass. Built and loaded by webapp/accel/native.py; used by webapp/accel/fused.py.

   transformers computes it as: h = float32(x); h = h * rsqrt(mean(h^2) + eps); y = weight * bfloat16(h),
   the last product rounded to bfloat16. This does the same arithmetic in the same order, except that
   the sum of squares adds 16 lanes at a time (its last bit can differ: 3 outputs in a million came
   out one bfloat16 step apart). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

void tabwrite_rms_norm_row(const uint16_t *x, int width, const uint16_t *weight, float epsilon, uint16_t *y) {
    __m512 squares = _mm512_setzero_ps();
    for (int i = 0; i < width; i += 16) {
        __m512 value = load_bf16(x + i);
        squares = _mm512_fmadd_ps(value, value, squares);
    }
    __m512 scale = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(squares) / (float)width + epsilon));
    for (int i = 0; i < width; i += 16) {
        __m512 normed = rounded_to_bf16(_mm512_mul_ps(load_bf16(x + i), scale));
        _mm256_storeu_si256((__m256i *)(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(normed, load_bf16(weight + i))));
    }
}

/* y [rows, width] = RMSNorm(x) x weight; width a multiple of 16. A few rows (a decoding step) stay on one thread. */
void tabwrite_rms_norm(const uint16_t *x, long rows, int width, const uint16_t *weight, float epsilon, uint16_t *y,
                       int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows > 16)
    for (long r = 0; r < rows; r++)
        tabwrite_rms_norm_row(x + r * width, width, weight, epsilon, y + r * width);
}
