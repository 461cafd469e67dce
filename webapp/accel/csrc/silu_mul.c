/* Llama's MLP activation, silu(gate) x up, on bfloat16 in one pass. Built by webapp/accel/native.py; used by fused.py.

   transformers computes F.silu(gate) (in float32: x / (1 + e^-x), rounded to bfloat16), then multiplies by up
   and rounds again: two passes over the widest activations of the model. This does the same arithmetic in one;
   its e^x is a polynomial within about 2e-7 of PyTorch's, so a result now and then lands one bfloat16 step
   apart. */
#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

void tabwrite_silu_mul_range(const uint16_t *gate, const uint16_t *up, long n, uint16_t *out) {
    for (long i = 0; i < n; i += 16) {
        __m512 x = load_bf16(gate + i);
        __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm256_storeu_si256((__m256i *)(out + i),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(rounded_to_bf16(silu), load_bf16(up + i))));
    }
}

/* out [n] = bf16(bf16(silu(gate)) x up), n a multiple of 16. Many values (a prompt) are shared by the threads. */
void tabwrite_silu_mul(const uint16_t *gate, const uint16_t *up, long n, uint16_t *out, int threads) {
    const long chunk = 4096;
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 65536)
    for (long i = 0; i < n; i += chunk)
        tabwrite_silu_mul_range(gate + i, up + i, n - i < chunk ? n - i : chunk, out + i);
}
