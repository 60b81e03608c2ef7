/* Longest-prefix match from destination address to session id.
 *
 * One binary trie per IP version over a pool of nodes (indices, not
 * pointers; freed nodes go to a free list). Costs, W = 32 or 128:
 *   lookup   O(W)  - one node per address bit, at most W + 1 visits
 *   insert   O(W)  - creates at most `prefix length` nodes
 *   remove   O(W)  - clears the value and prunes nodes left empty
 *   memory   O(P * W) nodes of 12 bytes for P prefixes (worst case)
 * Lookups never allocate. A table is not thread-safe; the relay owns one
 * per worker and updates it from the control plane between batches. */
#ifndef MASQUE_LPM_H
#define MASQUE_LPM_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

typedef struct masque_lpm_node {
    uint32_t child[2]; /* node index, 0 = none (node 0 is never a child) */
    int32_t value;     /* session id, -1 = no prefix ends here */
} masque_lpm_node;

typedef struct masque_lpm {
    masque_lpm_node *nodes; /* nodes[0] = IPv4 root, nodes[1] = IPv6 root */
    uint32_t cap;
    uint32_t used;      /* high-water mark of nodes */
    uint32_t free_head; /* free list threaded through child[0], 0 = empty */
    uint32_t prefixes;  /* prefixes stored */
} masque_lpm;

int masque_lpm_init(masque_lpm *t);
void masque_lpm_free(masque_lpm *t);
/* Store addr/plen -> value (value >= 0), replacing an equal prefix.
 * version 4 (addr 4 bytes) or 6 (16). 0, -EINVAL or -ENOMEM. */
int masque_lpm_insert(masque_lpm *t, int version, const uint8_t *addr, unsigned plen, int32_t value);
/* Remove exactly addr/plen; the old value, or -1 if absent. */
int32_t masque_lpm_remove(masque_lpm *t, int version, const uint8_t *addr, unsigned plen);
/* The value of the longest prefix covering addr, -1 if none. */
int32_t masque_lpm_lookup(const masque_lpm *t, int version, const uint8_t *addr);
/* For packets 0..count-1 of a batch: the destination's session id (-1 when
 * none, or when the packet is too short to hold an IPv4/IPv6 destination). */
void masque_lpm_lookup_batch(const masque_lpm *t, const masque_batch *b, int32_t *out);

#endif
