/* A decoding step through all of a model's layers in one call, for Llama's layers and GPT-2's. Built by
   webapp/accel/native.py; used by webapp/accel/decoder_step.py, which says why and when.

   Each layer does what transformers' does, with the same roundings to bfloat16: the norm, the attention's
   products (4-bit, vnni_linear.c), Llama's rotary embedding, the new keys and values written into the
   cache, attention over the cache through a mask (attention.c), the output product and the residual; the
   norm, the MLP's products and activation, and the residual. The threads stay in one parallel region for the
   whole step and share each product's blocks of outputs. step.h says how batch rows, requests and the cache's
   columns correspond. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"
#include "kernels.h"
#include "step.h"

/* A layer's int64 fields in the table decoder_step.py writes: a product is 4 (levels, scales, zeros, bias), the
   cache 8 (keys, then values: address, and the strides in elements of a cache row, a head and a position). */
enum {
    LLAMA_INPUT_NORM, LLAMA_POST_NORM, LLAMA_Q = 2, LLAMA_K = 6, LLAMA_V = 10, LLAMA_O = 14, LLAMA_GATE = 18,
    LLAMA_UP = 22, LLAMA_DOWN = 26, LLAMA_CACHE = 30, LLAMA_FIELDS = 38
};
enum {
    GPT2_LN_1, GPT2_LN_1_BIAS, GPT2_LN_2, GPT2_LN_2_BIAS, GPT2_QKV = 4, GPT2_PROJECTION = 8, GPT2_FC = 12,
    GPT2_MLP_PROJECTION = 16, GPT2_CACHE = 20, GPT2_FIELDS = 28
};

typedef struct {
    const uint8_t *levels;
    const uint16_t *scales, *zeros, *bias;
    int in, out;
} packed;

static packed packed_at(const int64_t *fields, int in, int out) {
    packed layer = {(const uint8_t *)fields[0], (const uint16_t *)fields[1], (const uint16_t *)fields[2],
                    (const uint16_t *)fields[3], in, out};
    return layer;
}

/* y_i = x W_i^T for up to three layers of the same input, their blocks of outputs shared by the team's threads. */
static void products(const packed *layers, uint16_t *const *outputs, int count, const quantized *x, int rows) {
    int first[4] = {0};
    for (int i = 0; i < count; i++) first[i + 1] = first[i] + (layers[i].out + BLOCK - 1) / BLOCK;
#pragma omp for schedule(static)
    for (int t = 0; t < first[count]; t++) {
        int i = 0;
        while (t >= first[i + 1]) i++;
        const packed *w = layers + i;
        tabwrite_int4_block(t - first[i], rows, w->in, w->out, x, w->levels, w->scales, w->zeros, w->bias,
                            outputs[i]);
    }
}

/* residual = bf16(residual + added), as `residual + hidden_states` on bfloat16 tensors. */
static void add_into(uint16_t *residual, const uint16_t *added, long n) {
    for (long i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i *)(residual + i),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(load_bf16(residual + i), load_bf16(added + i))));
}

/* nn.LayerNorm of one bfloat16 row: float32 mean and variance, (x - mean) / sqrt(variance + eps) x w + b. */
static void layer_norm_row(const uint16_t *x, int width, const uint16_t *weight, const uint16_t *bias, float epsilon,
                           uint16_t *y) {
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < width; i += 16) sum = _mm512_add_ps(sum, load_bf16(x + i));
    __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)width), squares = _mm512_setzero_ps();
    for (int i = 0; i < width; i += 16) {
        __m512 centred = _mm512_sub_ps(load_bf16(x + i), mean);
        squares = _mm512_fmadd_ps(centred, centred, squares);
    }
    __m512 scale = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(squares) / (float)width + epsilon));
    for (int i = 0; i < width; i += 16) {
        __m512 normed = _mm512_mul_ps(_mm512_sub_ps(load_bf16(x + i), mean), scale);
        _mm256_storeu_si256((__m256i *)(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_fmadd_ps(
                                                    normed, load_bf16(weight + i), load_bf16(bias + i))));
    }
}

/* GPT-2's gelu_new (the tanh form) in place, computed in float32 and rounded to bfloat16 once. */
static void gelu_tanh(uint16_t *x, long n) {
    const __m512 beta = _mm512_set1_ps(0.7978845608028654f), kappa = _mm512_set1_ps(0.044715f);
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f), minus_two = _mm512_set1_ps(-2.f);
    for (long i = 0; i < n; i += 16) {
        __m512 v = load_bf16(x + i);
        __m512 inner = _mm512_mul_ps(beta, _mm512_fmadd_ps(_mm512_mul_ps(kappa, v), _mm512_mul_ps(v, v), v));
        /* tanh(u) = sign(u) (1 - e^-2|u|) / (1 + e^-2|u|): e^x never overflows here */
        __m512 t = exp_ps(_mm512_mul_ps(minus_two, _mm512_abs_ps(inner)));
        __m512 magnitude = _mm512_div_ps(_mm512_sub_ps(one, t), _mm512_add_ps(one, t));
        __m512 tanh = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(magnitude),
            _mm512_and_si512(_mm512_castps_si512(inner), _mm512_set1_epi32((int)0x80000000))));
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, tanh));
        _mm256_storeu_si256((__m256i *)(x + i), (__m256i)_mm512_cvtneps_pbh(y));
    }
}

/* transformers' apply_rotary_pos_emb on one row's heads [heads, dim], in place (kernels.h). */
static void rotate(uint16_t *x, int heads, int dim, const uint16_t *cos, const uint16_t *sin) {
    rotate_heads(x, dim, x, dim, heads, dim, cos, sin);
}

/* The step's keys and values (batch row b's at k + b x stride, heads of `dim` after each other) into their
   requests' rows of the cache, a column per query slot. */
static void write_columns(const step *s, const int64_t *cache, const uint16_t *k, const uint16_t *v, long stride) {
    int queries = s->shape[QUERIES], kv_heads = s->shape[KV_HEADS], dim = s->shape[HEAD_DIM];
    for (int slot = 0; slot < s->shape[REQUESTS] * queries; slot++) {
        long column = s->shape[LENGTH] + slot % queries, r = slot / queries;
        for (int h = 0; h < kv_heads; h++) {
            const uint16_t *from_k = k + s->slots[slot] * stride + h * dim;
            const uint16_t *from_v = v + s->slots[slot] * stride + h * dim;
            uint16_t *to_k = (uint16_t *)cache[0] + r * cache[1] + h * cache[2] + column * cache[3];
            uint16_t *to_v = (uint16_t *)cache[4] + r * cache[5] + h * cache[6] + column * cache[7];
            for (int d = 0; d < dim; d++) to_k[d] = from_k[d], to_v[d] = from_v[d];
        }
    }
}

/* The working memory of a step: a buffer per intermediate, and the quantized input of the next product. */
typedef struct {
    uint16_t *normed, *q, *k, *v, *mixed, *added, *wide, *up;
    float *partials;  /* the attention's parts' results (attention.c) */
    quantized x;
} scratch;

static int scratch_for(scratch *m, const int64_t *shape, int qkv_width, int threads) {
    size_t rows = shape[ROWS], width = shape[HIDDEN], wide = shape[INTERMEDIATE];
    size_t attention = shape[HEADS] * shape[HEAD_DIM], kv = shape[KV_HEADS] * shape[HEAD_DIM];
    size_t widest = wide > attention ? wide : attention;
    widest = widest > width ? widest : width;
    m->normed = malloc(2 * rows * width), m->q = malloc(2 * rows * qkv_width), m->k = malloc(2 * rows * kv);
    m->v = malloc(2 * rows * kv), m->mixed = malloc(2 * rows * attention), m->added = malloc(2 * rows * width);
    m->wide = malloc(2 * rows * wide), m->up = malloc(2 * rows * wide);
    m->partials = tabwrite_attention_partials(shape, threads);
    int room = tabwrite_quantized_room(&m->x, rows, widest);  /* for every product's input */
    return m->normed && m->q && m->k && m->v && m->mixed && m->added && m->wide && m->up && m->partials && room;
}

static void free_scratch(scratch *m) {
    free(m->normed), free(m->q), free(m->k), free(m->v), free(m->mixed), free(m->added), free(m->wide), free(m->up);
    free(m->partials);
    tabwrite_free_quantized(&m->x);
}

/* In the parallel region: each thread's room for attention; *failed set, for every thread, when one ran out. */
static void room_for_attention(attention_room *room, const int64_t *shape, int *failed) {
    int granted = tabwrite_attention_room(room, shape);
#pragma omp atomic update
    *failed |= !granted;
#pragma omp barrier
}

/* In the parallel region: a layer's attention after its products. Llama's rotary embedding on the batch rows'
   queries (q + b x q_stride) and keys where cos is not NULL, the keys and values (k and v + b x kv_stride) written
   into the cache (the layer's 8 fields), attention into out [rows, heads x dim]. */
static void attend(const step *s, const int64_t *cache, uint16_t *q, long q_stride, uint16_t *k, uint16_t *v,
                   long kv_stride, const uint16_t *cos, const uint16_t *sin, const attention_room *room,
                   float *partials, int threads, uint16_t *out) {
    int heads = s->shape[HEADS], kv_heads = s->shape[KV_HEADS], dim = s->shape[HEAD_DIM];
    if (cos) {
#pragma omp for schedule(static)
        for (int b = 0; b < s->shape[ROWS]; b++) {
            rotate(q + b * q_stride, heads, dim, cos + (size_t)b * dim, sin + (size_t)b * dim);
            rotate(k + b * kv_stride, kv_heads, dim, cos + (size_t)b * dim, sin + (size_t)b * dim);
        }
    }
#pragma omp single
    write_columns(s, cache, k, v, kv_stride);
    tabwrite_attention(s, cache, q, q_stride, room, partials, threads, out);
}

/* A layer's norm of one row: RMSNorm (bias unused) or LayerNorm. */
typedef void (*row_norm)(const uint16_t *x, int width, const uint16_t *weight, const uint16_t *bias, float epsilon,
                         uint16_t *y);

static void rms_norm_row(const uint16_t *x, int width, const uint16_t *weight, const uint16_t *bias, float epsilon,
                         uint16_t *y) {
    (void)bias;
    tabwrite_rms_norm_row(x, width, weight, epsilon, y);
}

/* In the parallel region: the rows of hidden, normed into m->normed and quantized for the next products. */
static void norm_rows(row_norm norm, const uint16_t *hidden, const int64_t *shape, const int64_t *weight,
                      const int64_t *bias, float epsilon, scratch *m) {
    int rows = shape[ROWS], width = shape[HIDDEN];
#pragma omp single
    {
        for (int r = 0; r < rows; r++)
            norm(hidden + (size_t)r * width, width, (const uint16_t *)*weight, bias ? (const uint16_t *)*bias : NULL,
                 epsilon, m->normed + (size_t)r * width);
        tabwrite_quantize_rows(m->normed, rows, width, &m->x);
    }
}

/* In the parallel region: hidden += x W^T, the residual of a layer's output product (x quantized by one thread). */
static void add_product(uint16_t *hidden, const uint16_t *x, packed w, scratch *m, int rows) {
#pragma omp single
    tabwrite_quantize_rows(x, rows, w.in, &m->x);
    products(&w, &m->added, 1, &m->x, rows);
#pragma omp single
    add_into(hidden, m->added, (long)rows * w.out);
}

/* hidden [rows, hidden] (bfloat16) through a Llama model's layers, in place; cos and sin [rows, head_dim] are the
   rotary embedding's. head_dim a multiple of 32 up to 128, widths multiples of 32. 0, or -1 when out of memory. */
int tabwrite_llama_step(uint16_t *hidden, const int64_t *shape, const int64_t *table, const uint16_t *cos,
                        const uint16_t *sin, const int64_t *slots, const int64_t *slot_of_row, const uint8_t *visible,
                        float epsilon, float scale, int threads) {
    step s = {shape, slots, slot_of_row, visible, scale};
    int width = shape[HIDDEN], heads = shape[HEADS], kv_heads = shape[KV_HEADS], dim = shape[HEAD_DIM];
    int wide = shape[INTERMEDIATE], rows = shape[ROWS], attention = heads * dim, kv = kv_heads * dim;
    scratch m;
    int failed = !scratch_for(&m, shape, attention, threads);
#pragma omp parallel num_threads(threads) if (!failed)
    {
        attention_room room;
        room_for_attention(&room, shape, &failed);
        for (int n = 0; n < shape[LAYERS] && !failed; n++) {
            const int64_t *layer = table + (size_t)n * LLAMA_FIELDS;
            norm_rows(rms_norm_row, hidden, shape, layer + LLAMA_INPUT_NORM, NULL, epsilon, &m);
            packed qkv[3] = {packed_at(layer + LLAMA_Q, width, attention), packed_at(layer + LLAMA_K, width, kv),
                             packed_at(layer + LLAMA_V, width, kv)};
            uint16_t *qkv_out[3] = {m.q, m.k, m.v};
            products(qkv, qkv_out, 3, &m.x, rows);
            attend(&s, layer + LLAMA_CACHE, m.q, attention, m.k, m.v, kv, cos, sin, &room, m.partials, threads,
                   m.mixed);
            add_product(hidden, m.mixed, packed_at(layer + LLAMA_O, attention, width), &m, rows);
            norm_rows(rms_norm_row, hidden, shape, layer + LLAMA_POST_NORM, NULL, epsilon, &m);
            packed mlp[2] = {packed_at(layer + LLAMA_GATE, width, wide), packed_at(layer + LLAMA_UP, width, wide)};
            uint16_t *mlp_out[2] = {m.wide, m.up};
            products(mlp, mlp_out, 2, &m.x, rows);
#pragma omp single
            tabwrite_silu_mul_range(m.wide, m.up, (long)rows * wide, m.wide);
            add_product(hidden, m.wide, packed_at(layer + LLAMA_DOWN, wide, width), &m, rows);
        }
        tabwrite_free_attention_room(&room);
    }
    free_scratch(&m);
    return failed ? -1 : 0;
}

/* hidden [rows, hidden] (bfloat16, token and position embeddings added) through a GPT-2 model's blocks, in
   place. head_dim a multiple of 32 up to 128, widths multiples of 32. 0, or -1 when out of memory. */
int tabwrite_gpt2_step(uint16_t *hidden, const int64_t *shape, const int64_t *table, const int64_t *slots,
                       const int64_t *slot_of_row, const uint8_t *visible, float epsilon, float scale, int threads) {
    step s = {shape, slots, slot_of_row, visible, scale};
    int width = shape[HIDDEN], heads = shape[HEADS], dim = shape[HEAD_DIM], wide = shape[INTERMEDIATE];
    int rows = shape[ROWS], attention = heads * dim;
    scratch m;
    int failed = !scratch_for(&m, shape, 3 * attention, threads);
#pragma omp parallel num_threads(threads) if (!failed)
    {
        attention_room room;
        room_for_attention(&room, shape, &failed);
        for (int n = 0; n < shape[LAYERS] && !failed; n++) {
            const int64_t *layer = table + (size_t)n * GPT2_FIELDS;
            norm_rows(layer_norm_row, hidden, shape, layer + GPT2_LN_1, layer + GPT2_LN_1_BIAS, epsilon, &m);
            packed qkv = packed_at(layer + GPT2_QKV, width, 3 * attention);  /* q, k and v side by side in a row */
            products(&qkv, &m.q, 1, &m.x, rows);
            attend(&s, layer + GPT2_CACHE, m.q, 3 * attention, m.q + attention, m.q + 2 * attention, 3 * attention,
                   NULL, NULL, &room, m.partials, threads, m.mixed);
            add_product(hidden, m.mixed, packed_at(layer + GPT2_PROJECTION, attention, width), &m, rows);
            norm_rows(layer_norm_row, hidden, shape, layer + GPT2_LN_2, layer + GPT2_LN_2_BIAS, epsilon, &m);
            packed fc = packed_at(layer + GPT2_FC, width, wide);
            products(&fc, &m.wide, 1, &m.x, rows);
#pragma omp single
            gelu_tanh(m.wide, (long)rows * wide);
            add_product(hidden, m.wide, packed_at(layer + GPT2_MLP_PROJECTION, wide, width), &m, rows);
        }
        tabwrite_free_attention_room(&room);
    }
    free_scratch(&m);
    return failed ? -1 : 0;
}

/* ---- A step layer by layer: for batches past the packed products' rows (a class's step), whose products are
   the layers' dense bfloat16 copies (oneDNN, on the matrix units), called by decoder_step.py between these. ---- */

/* Each row of hidden [rows, width] += added (where added is not NULL), then normed = its norm (where weight is
   not NULL): LayerNorm where bias is not NULL, else RMSNorm. The rows are shared by the threads. */
void tabwrite_add_norm(uint16_t *hidden, const uint16_t *added, int rows, int width, const uint16_t *weight,
                       const uint16_t *bias, float epsilon, uint16_t *normed, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        uint16_t *row = hidden + (size_t)r * width;
        if (added) add_into(row, added + (size_t)r * width, width);
        if (weight && bias) layer_norm_row(row, width, weight, bias, epsilon, normed + (size_t)r * width);
        else if (weight) tabwrite_rms_norm_row(row, width, weight, epsilon, normed + (size_t)r * width);
    }
}

/* GPT-2's gelu_new of x [n] in place (n a multiple of 16), shared by the threads. */
void tabwrite_gelu_tanh(uint16_t *x, long n, int threads) {
    const long chunk = 4096;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < n; i += chunk) gelu_tanh(x + i, n - i < chunk ? n - i : chunk);
}

/* One layer's attention, between its products (see attend). 0, or -1 when out of memory. */
int tabwrite_layer_attention(uint16_t *q, long q_stride, uint16_t *k, uint16_t *v, long kv_stride,
                             const int64_t *shape, const int64_t *cache, const uint16_t *cos, const uint16_t *sin,
                             const int64_t *slots, const int64_t *slot_of_row, const uint8_t *visible, float scale,
                             int threads, uint16_t *out) {
    step s = {shape, slots, slot_of_row, visible, scale};
    float *partials = tabwrite_attention_partials(shape, threads);
    int failed = partials == NULL;
#pragma omp parallel num_threads(threads) if (!failed)
    {
        attention_room room;
        room_for_attention(&room, shape, &failed);
        if (!failed) attend(&s, cache, q, q_stride, k, v, kv_stride, cos, sin, &room, partials, threads, out);
        tabwrite_free_attention_room(&room);
    }
    free(partials);
    return failed ? -1 : 0;
}
