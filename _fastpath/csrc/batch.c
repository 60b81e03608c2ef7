#include "batch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Slots start on a 64-byte boundary so packets sit at a fixed alignment. */
#define SLOT_ALIGN 64u

int masque_batch_init(masque_batch *b, uint32_t slots, uint32_t slot_size, uint32_t headroom)
{
    memset(b, 0, sizeof(*b));
    if (slots == 0 || slot_size == 0 || slot_size > (1u << 20) || headroom > 65535u)
        return -EINVAL;
    size_t stride = (size_t)headroom + slot_size;
    stride = (stride + SLOT_ALIGN - 1) & ~(size_t)(SLOT_ALIGN - 1);
    size_t lens_bytes = ((size_t)slots * sizeof(uint32_t) + SLOT_ALIGN - 1) & ~(size_t)(SLOT_ALIGN - 1);
    if (stride > UINT32_MAX || (size_t)slots > (SIZE_MAX - lens_bytes) / stride)
        return -EINVAL;
    void *mem = NULL;
    if (posix_memalign(&mem, SLOT_ALIGN, lens_bytes + (size_t)slots * stride) != 0)
        return -ENOMEM;
    memset(mem, 0, lens_bytes);
    b->lens = mem;
    b->arena = (uint8_t *)mem + lens_bytes;
    b->slots = slots;
    b->slot_size = slot_size;
    b->headroom = headroom;
    b->stride = (uint32_t)stride;
    b->count = 0;
    return 0;
}

void masque_batch_free(masque_batch *b)
{
    free(b->lens); /* the start of the single allocation */
    memset(b, 0, sizeof(*b));
}
