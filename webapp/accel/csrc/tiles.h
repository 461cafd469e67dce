/* What attention.c and prompt_attention.c share for the AMX tiles and AVX-512: the tiles' shape, values paired for
   the tiles, and the order that pairing leaves a product's dimensions in. */
#ifndef TABWRITE_TILES_H
#define TABWRITE_TILES_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* Eight tiles of 16 rows of 64 bytes, the one shape used here: keys (16 keys x 32 dimensions), queries paired
   (16 pairs of dimensions x 16 query heads), weights paired (16 query heads x 16 pairs of keys), values paired
   (16 pairs of keys x 16 dimensions) and float32 results (16 x 16), and for a prompt's queries, 16 queries x 32
   dimensions, keys paired (16 pairs of dimensions x 16 keys) and weights (16 queries x 32 keys). */
static inline void configure_tiles(void) {
    struct __attribute__((packed)) {
        uint8_t palette, start_row, reserved[14];
        uint16_t bytes_per_row[16];
        uint8_t rows[16];
    } config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) config.bytes_per_row[t] = 64, config.rows[t] = 16;
    _tile_loadconfig(&config);
}

/* Values of keys j .. j + 31 (zeros from `end`), dimensions d .. d + 31, paired for the tiles: in `paired`, the
   first tile's rows (16 pairs of keys, dimensions 8L .. 8L + 3 of lane L) then the second's (8L + 4 .. 8L + 7). */
static inline void pair_values(const uint16_t *values, long stride, int j, int end, int d, uint32_t *paired) {
    for (int p = 0; p < 16; p++) {
        int k = j + 2 * p;
        __m512i first = k < end ? _mm512_loadu_si512((const void *)(values + k * stride + d)) : _mm512_setzero_si512();
        __m512i second = k + 1 < end ? _mm512_loadu_si512((const void *)(values + (k + 1) * stride + d))
                                     : _mm512_setzero_si512();
        _mm512_storeu_si512((void *)(paired + 16 * p), _mm512_unpacklo_epi16(first, second));
        _mm512_storeu_si512((void *)(paired + 256 + 16 * p), _mm512_unpackhi_epi16(first, second));
    }
}

/* Tiles 0 .. 3 hold a block of queries' (or query heads') weighted sums of the values, 64 dimensions: d .. d + 31
   in tiles 0 and 1, d + 32 .. d + 63 in 2 and 3 (in the order of store_in_order). */
static inline void clear_sums(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* The sums += the weights of 32 keys (rows `stride` bytes apart: 16 queries x 16 pairs of keys) x their values
   paired (pair_values: 256 uint32 a tile, dimensions d .. d + 31 then, where `both`, d + 32 .. d + 63). */
static inline void add_to_sums(const void *weights, long stride, const uint32_t *paired, int both) {
    _tile_loadd(4, weights, stride);
    _tile_loadd(5, paired, 64);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(5, paired + 256, 64);
    _tile_dpbf16ps(1, 4, 5);
    if (both) {
        _tile_loadd(5, paired + 512, 64);
        _tile_dpbf16ps(2, 4, 5);
        _tile_loadd(5, paired + 768, 64);
        _tile_dpbf16ps(3, 4, 5);
    }
}

/* The sums into results [4][16][16] float32, a tile after another. */
static inline void store_sums(float *results) {
    _tile_stored(0, results, 64);
    _tile_stored(1, results + 256, 64);
    _tile_stored(2, results + 512, 64);
    _tile_stored(3, results + 768, 64);
}

/* The interleaving of two values' bfloat16 (unpacklo/hi_epi16) puts dimensions 8L .. 8L + 3 of each 32 in the
   first vector's 128-bit lane L and 8L + 4 .. 8L + 7 in the second's: their sums back in order, 32 floats. */
static inline void store_in_order(float *natural, __m512 first, __m512 second) {
    const __m512i low = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i high = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    _mm512_storeu_ps(natural, _mm512_permutex2var_ps(first, low, second));
    _mm512_storeu_ps(natural + 16, _mm512_permutex2var_ps(first, high, second));
}

#endif
