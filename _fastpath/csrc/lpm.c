#include "lpm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static inline unsigned bit_at(const uint8_t *addr, unsigned i)
{
    return (addr[i >> 3] >> (7 - (i & 7))) & 1u;
}

int masque_lpm_init(masque_lpm *t)
{
    memset(t, 0, sizeof(*t));
    t->cap = 64;
    t->nodes = calloc(t->cap, sizeof(*t->nodes));
    if (t->nodes == NULL)
        return -ENOMEM;
    t->nodes[0].value = -1;
    t->nodes[1].value = -1;
    t->used = 2;
    return 0;
}

void masque_lpm_free(masque_lpm *t)
{
    free(t->nodes);
    memset(t, 0, sizeof(*t));
}

static uint32_t node_new(masque_lpm *t)
{
    uint32_t n;
    if (t->free_head) {
        n = t->free_head;
        t->free_head = t->nodes[n].child[0];
    } else {
        if (t->used == t->cap) {
            if (t->cap > UINT32_MAX / 2)
                return 0;
            masque_lpm_node *grown = realloc(t->nodes, (size_t)t->cap * 2 * sizeof(*grown));
            if (grown == NULL)
                return 0;
            t->nodes = grown;
            t->cap *= 2;
        }
        n = t->used++;
    }
    t->nodes[n].child[0] = t->nodes[n].child[1] = 0;
    t->nodes[n].value = -1;
    return n;
}

static int check_args(int version, unsigned plen)
{
    return (version == 4 && plen <= 32) || (version == 6 && plen <= 128);
}

int masque_lpm_insert(masque_lpm *t, int version, const uint8_t *addr, unsigned plen, int32_t value)
{
    if (!check_args(version, plen) || value < 0)
        return -EINVAL;
    uint32_t n = version == 4 ? 0 : 1;
    for (unsigned i = 0; i < plen; i++) {
        unsigned b = bit_at(addr, i);
        uint32_t next = t->nodes[n].child[b];
        if (next == 0) {
            /* Nodes created here stay on an otherwise empty path only if
             * allocation fails midway; remove() never sees them, lookups
             * pass through them harmlessly. */
            next = node_new(t);
            if (next == 0)
                return -ENOMEM;
            t->nodes[n].child[b] = next;
        }
        n = next;
    }
    if (t->nodes[n].value < 0)
        t->prefixes++;
    t->nodes[n].value = value;
    return 0;
}

int32_t masque_lpm_remove(masque_lpm *t, int version, const uint8_t *addr, unsigned plen)
{
    uint32_t path[129];
    if (!check_args(version, plen))
        return -1;
    uint32_t n = version == 4 ? 0 : 1;
    path[0] = n;
    for (unsigned i = 0; i < plen; i++) {
        n = t->nodes[n].child[bit_at(addr, i)];
        if (n == 0)
            return -1;
        path[i + 1] = n;
    }
    int32_t old = t->nodes[n].value;
    if (old < 0)
        return -1;
    t->nodes[n].value = -1;
    t->prefixes--;
    /* Prune nodes left with no value and no children, leaf upwards. */
    for (unsigned depth = plen; depth > 0; depth--) {
        uint32_t cur = path[depth];
        masque_lpm_node *node = &t->nodes[cur];
        if (node->value >= 0 || node->child[0] || node->child[1])
            break;
        t->nodes[path[depth - 1]].child[bit_at(addr, depth - 1)] = 0;
        node->child[0] = t->free_head;
        t->free_head = cur;
    }
    return old;
}

int32_t masque_lpm_lookup(const masque_lpm *t, int version, const uint8_t *addr)
{
    unsigned width = version == 4 ? 32 : 128;
    uint32_t n = version == 4 ? 0 : 1;
    int32_t best = t->nodes[n].value;
    for (unsigned i = 0; i < width; i++) {
        n = t->nodes[n].child[bit_at(addr, i)];
        if (n == 0)
            break;
        if (t->nodes[n].value >= 0)
            best = t->nodes[n].value;
    }
    return best;
}

void masque_lpm_lookup_batch(const masque_lpm *t, const masque_batch *b, int32_t *out)
{
    for (uint32_t i = 0; i < b->count; i++) {
        const uint8_t *p = masque_batch_packet(b, i);
        uint32_t len = b->lens[i];
        int32_t sid = -1;
        if (len >= 20 && (p[0] >> 4) == 4)
            sid = masque_lpm_lookup(t, 4, p + 16);
        else if (len >= 40 && (p[0] >> 4) == 6)
            sid = masque_lpm_lookup(t, 6, p + 24);
        out[i] = sid;
    }
}
