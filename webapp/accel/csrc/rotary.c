/* Llama's rotary embedding on bfloat16 queries and keys. Built by webapp/accel/native.py; used by fused.py (a prompt's
   queries and keys) and decoder_step.c (a decoding step's).

   transformers' apply_rotary_pos_emb computes x cos + rotate_half(x) sin in five tensor operations (two
   products, a concatenation, a negation, a sum), each a pass over the prompt's queries or keys, each product and
   the sum rounded to bfloat16. This does the same arithmetic with the same roundings in one pass. */
#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

/* out = x rotated, both [batch, heads, positions, dim] with strides (in elements) of their own for the first
   three (`x_strides`, `out_strides`) and dim contiguous, a multiple of 32; cos and sin [batch, positions, dim]
   with strides `cos_strides` for the first two (a batch stride of 0 shares them). Positions are shared by the
   threads. */
void tabwrite_rotary(const uint16_t *x, const int64_t *x_strides, uint16_t *out, const int64_t *out_strides,
                     const uint16_t *cos, const uint16_t *sin, const int64_t *cos_strides, const int64_t *shape,
                     int threads) {
    long batch = shape[0], heads = shape[1], positions = shape[2], dim = shape[3];
#pragma omp parallel for num_threads(threads) schedule(static) if (batch * positions > 16)
    for (long row = 0; row < batch * positions; row++) {
        long b = row / positions, p = row % positions;
        long at = b * cos_strides[0] + p * cos_strides[1];
        rotate_heads(x + b * x_strides[0] + p * x_strides[2], x_strides[1],
                              out + b * out_strides[0] + p * out_strides[2], out_strides[1], heads, dim, cos + at,
                              sin + at);
    }
}
