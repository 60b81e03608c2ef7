/* A reusable arena of packet slots, each with fixed headroom in front.
 *
 * One allocation holds every slot: slot i starts at arena + i * stride, its
 * packet at arena + i * stride + headroom. The headroom lets a stage write
 * framing (QUIC/HTTP Datagram headers) in front of a packet without copying
 * it, as wireguard-go's `offset` does. Python fills or reads a batch, then
 * hands the whole batch to C in one call. */
#ifndef MASQUE_BATCH_H
#define MASQUE_BATCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct masque_batch {
    uint8_t *arena;     /* slots * stride bytes */
    uint32_t *lens;     /* packet length of each slot */
    uint32_t slots;     /* capacity in packets */
    uint32_t slot_size; /* largest packet a slot holds */
    uint32_t headroom;  /* bytes reserved in front of each packet */
    uint32_t stride;    /* headroom + slot_size */
    uint32_t count;     /* slots in use: 0 .. count-1 */
} masque_batch;

/* Allocate the arena (one allocation for lengths and slots). 0 or -1 (ENOMEM/EINVAL). */
int masque_batch_init(masque_batch *b, uint32_t slots, uint32_t slot_size, uint32_t headroom);
void masque_batch_free(masque_batch *b);

static inline uint8_t *masque_batch_packet(const masque_batch *b, uint32_t i)
{
    return b->arena + (size_t)i * b->stride + b->headroom;
}

#endif
