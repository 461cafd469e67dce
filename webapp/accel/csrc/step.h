/* What decoder_step.c and attention.c share: a step's shape and mask, and the attention's working memory. */
#ifndef TABWRITE_STEP_H
#define TABWRITE_STEP_H
#include <stdint.h>

/* The step's shape, as decoder_step.py writes it. TILES is 1 where attention may use the AMX tiles (the CPU has
   them and tabwrite_tiles_ready granted them), else 0. */
enum { HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, ROWS, REQUESTS, QUERIES, LENGTH, LAYERS, TILES, SHAPE_FIELDS };

/* What every layer of a step shares. Batch rows are queries. The cache has a row per request, whose `queries`
   new columns (from `length`) are its options' keys and values: column o of request r is batch row
   slots[r x queries + o], and batch row b is query slot_of_row[b] = r x queries + o, which sees what
   visible[r, o, :] shows of its request's row. */
typedef struct {
    const int64_t *shape, *slots, *slot_of_row;
    const uint8_t *visible;
    float scale;
} step;

/* A thread's working memory for attention (tabwrite_attention_room). */
typedef struct {
    float *scores;
    uint16_t *weights;
    uint8_t *tiles;
} attention_room;

/* The parts' results of a step's attention, shared by the threads: malloc'd, NULL when out of memory. */
float *tabwrite_attention_partials(const int64_t *shape, int threads);
/* A thread's room for a step's attention: 1, or 0 when out of memory (free it either way). */
int tabwrite_attention_room(attention_room *room, const int64_t *shape);
void tabwrite_free_attention_room(attention_room *room);
/* In the parallel region: every request's attention over its cache row (a layer's 8 cache fields). */
void tabwrite_attention(const step *s, const int64_t *cache, const uint16_t *q, long stride, const attention_room *room,
                        float *partials, int threads, uint16_t *out);
#endif
