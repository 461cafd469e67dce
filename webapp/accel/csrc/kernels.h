/* What the kernels of this folder share: row-level pieces that llama_step.c strings together inside one
   parallel region, the float32 e^x of the SiLU and of attention's softmax, and Llama's rotary embedding. */
#ifndef TABWRITE_KERNELS_H
#define TABWRITE_KERNELS_H
#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"

#define GROUP 32 /* inputs per activation scale (and per weight scale in 4 bits) */
#define BLOCK 16 /* outputs a vector holds; weights are laid out and padded per block */

/* Rows of activations in 8 bits, as the packed products read them: levels [rows, in], and per group of 32 inputs
   a scale and the sum of its levels [rows, groups]. */
typedef struct {
    int8_t *levels;
    float *scales;
    int32_t *sums;
} quantized;

/* Room in x for `rows` rows of `in` inputs: 1, or 0 when out of memory. Free it with tabwrite_free_quantized
   either way. */
int tabwrite_quantized_room(quantized *x, int rows, int in);
void tabwrite_free_quantized(quantized *x);

/* Each row of x [rows, in] (bfloat16) in 8 bits, into q (with room for them). */
void tabwrite_quantize_rows(const uint16_t *x, int rows, int in, quantized *q);

/* Outputs 16b..16b+15 of y [rows, out] = x W^T + bias for a 4-bit layer (vnni_linear.c), x as quantized. */
void tabwrite_int4_block(int b, int rows, int in, int out, const quantized *x, const uint8_t *levels,
                         const uint16_t *scales, const uint16_t *zeros, const uint16_t *bias, uint16_t *y);

/* One row of Llama's RMSNorm (rms_norm.c): y = bf16(bf16(x / rms(x)) x weight), width a multiple of 16. */
void tabwrite_rms_norm_row(const uint16_t *x, int width, const uint16_t *weight, float epsilon, uint16_t *y);

/* out [n] = bf16(bf16(silu(gate)) x up) (silu_mul.c), n a multiple of 16, on the calling thread. */
void tabwrite_silu_mul_range(const uint16_t *gate, const uint16_t *up, long n, uint16_t *out);


/* e^x in float32: 2^n times a polynomial on [-ln2/2, ln2/2] (Cephes' coefficients); 0 below -87, inf above 88.7. */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

/* Llama's rotary embedding of one position's `heads` heads of `dim` (rotary.c, decoder_step.c): out = x cos +
   rotate_half(x) sin, each product and the sum rounded to bfloat16 as transformers' tensor operations round them;
   heads `x_head` and `out_head` apart; out may be x. */
static inline void rotate_heads(const uint16_t *x, long x_head, uint16_t *out, long out_head, int heads, int dim,
                                const uint16_t *cos, const uint16_t *sin) {
    int half = dim / 2;
    for (int h = 0; h < heads; h++) {
        const uint16_t *head = x + h * x_head;
        uint16_t *to = out + h * out_head;
        for (int d = 0; d < half; d += 16) {
            __m512 low = load_bf16(head + d), high = load_bf16(head + half + d);
            __m512 new_low = _mm512_add_ps(rounded_to_bf16(_mm512_mul_ps(low, load_bf16(cos + d))),
                                           rounded_to_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), high),
                                                                         load_bf16(sin + d))));
            __m512 new_high = _mm512_add_ps(rounded_to_bf16(_mm512_mul_ps(high, load_bf16(cos + half + d))),
                                            rounded_to_bf16(_mm512_mul_ps(low, load_bf16(sin + half + d))));
            _mm256_storeu_si256((__m256i *)(to + d), (__m256i)_mm512_cvtneps_pbh(new_low));
            _mm256_storeu_si256((__m256i *)(to + half + d), (__m256i)_mm512_cvtneps_pbh(new_high));
        }
    }
}

#endif
