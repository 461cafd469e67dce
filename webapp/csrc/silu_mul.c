/* Llama's MLP activation, silu(gate) x up, on bfloat16 in one pass. Built by webapp/native.py; used by fused.py.

   transformers computes F.silu(gate) (in float32: x / (1 + e^-x), rounded to bfloat16), then multiplies by up
   and rounds again: two passes over the widest activations of the model. This does the same arithmetic in one;
   its e^x is a polynomial within about 2e-7 of PyTorch's, so a result now and then lands one bfloat16 step
   apart. */
#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"

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

/* out [n] = bf16(bf16(silu(gate)) x up), n a multiple of 16. Many values (a prompt) are shared by the threads. */
void tabwrite_silu_mul(const uint16_t *gate, const uint16_t *up, long n, uint16_t *out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 65536)
    for (long i = 0; i < n; i += 16) {
        __m512 x = load_bf16(gate + i);
        __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm256_storeu_si256((__m256i *)(out + i),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(rounded_to_bf16(silu), load_bf16(up + i))));
    }
}
