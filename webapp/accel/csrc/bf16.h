/* bfloat16 and float32, 16 at a time: the conversions every kernel in this folder reads and rounds with. */
#ifndef TABWRITE_BF16_H
#define TABWRITE_BF16_H
#include <immintrin.h>
#include <stdint.h>

/* 16 bfloat16 values as float32: each is the top half of its float's bits */
static inline __m512 bf16_to_float(__m256i halves) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}

static inline __m512 load_bf16(const uint16_t *from) {
    return bf16_to_float(_mm256_loadu_si256((const __m256i *)from));
}

/* float32 values rounded to the nearest bfloat16 (ties to even), kept as float32 */
static inline __m512 rounded_to_bf16(__m512 values) {
    return bf16_to_float((__m256i)_mm512_cvtneps_pbh(values));
}
#endif
