#include "gro.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checksum.h"
#include "offload.h"

#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10
#define IPPROTO_TCP_ 6

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void wrle16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline uint16_t fold32(uint32_t s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

int masque_gro_reserve(struct masque_gro *g, uint32_t n)
{
    if (n < 16)
        n = 16;
    if (n <= g->cap)
        return 0;
    uint32_t tsize = 16;
    while (tsize < 2 * n)
        tsize <<= 1;
    int32_t *role = malloc((size_t)n * sizeof(*role));
    int32_t *next = malloc((size_t)n * sizeof(*next));
    struct masque_gro_item *items = malloc((size_t)n * sizeof(*items));
    int32_t *table = malloc((size_t)tsize * sizeof(*table));
    if (!role || !next || !items || !table) {
        free(role);
        free(next);
        free(items);
        free(table);
        return -ENOMEM;
    }
    masque_gro_free(g);
    g->role = role;
    g->next = next;
    g->items = items;
    g->table = table;
    g->table_mask = tsize - 1;
    g->cap = n;
    return 0;
}

void masque_gro_free(struct masque_gro *g)
{
    free(g->role);
    free(g->next);
    free(g->items);
    free(g->table);
    memset(g, 0, sizeof(*g));
}

/* One packet as the planner sees it. */
struct seg {
    const uint8_t *p;
    size_t len;
    size_t l4;      /* TCP header offset */
    size_t hlen;    /* l4 + TCP header length (candidates only) */
    size_t payload; /* (candidates only) */
    uint32_t seq;
    uint32_t hash;
    int version;
};

enum { SEG_OTHER, SEG_FLOW, SEG_CANDIDATE };

static uint32_t flow_hash(const uint8_t *addrs, size_t alen, const uint8_t *ports, int version)
{
    uint32_t h = 0x811c9dc5u ^ (uint32_t)version;
    for (size_t i = 0; i < alen; i += 4) {
        h = (h ^ rd32(addrs + i)) * 0x9e3779b1u;
        h ^= h >> 15;
    }
    h = (h ^ rd32(ports)) * 0x9e3779b1u;
    return h ^ (h >> 16);
}

/* SEG_OTHER: not TCP, or its flow cannot be told cheaply (IPv6 extension
 * headers, IPv4 non-first fragment); SEG_FLOW: a TCP packet of a known flow
 * that cannot be coalesced; SEG_CANDIDATE: may be coalesced. */
static int classify(const uint8_t *p, size_t len, struct seg *s)
{
    s->p = p;
    s->len = len;
    if (len < 20)
        return SEG_OTHER;
    s->version = p[0] >> 4;
    int candidate = 1;
    if (s->version == 4) {
        s->l4 = (size_t)(p[0] & 0x0f) * 4;
        if (s->l4 < 20 || p[9] != IPPROTO_TCP_ || len < s->l4 + 4 || (rd16(p + 6) & 0x1fff) != 0)
            return SEG_OTHER;
        s->hash = flow_hash(p + 12, 8, p + s->l4, 4);
        /* no options, exact length, not a fragment (MF clear, offset 0) */
        if (s->l4 != 20 || rd16(p + 2) != len || (rd16(p + 6) & 0x3fff) != 0)
            candidate = 0;
    } else if (s->version == 6) {
        s->l4 = 40;
        if (p[6] != IPPROTO_TCP_ || len < 44)
            return SEG_OTHER;
        s->hash = flow_hash(p + 8, 32, p + 40, 6);
        if ((size_t)rd16(p + 4) + 40 != len || len > 0xffff)
            candidate = 0;
    } else {
        return SEG_OTHER;
    }
    if (!candidate || len < s->l4 + 20)
        return SEG_FLOW;
    const uint8_t *th = p + s->l4;
    size_t thl = (size_t)(th[12] >> 4) * 4;
    if (thl < 20 || s->l4 + thl > len || (th[12] & 0x0f) != 0)
        return SEG_FLOW;
    if (th[13] != TCP_FLAG_ACK && th[13] != (TCP_FLAG_ACK | TCP_FLAG_PSH))
        return SEG_FLOW;
    s->hlen = s->l4 + thl;
    s->payload = len - s->hlen;
    if (s->payload == 0)
        return SEG_FLOW;
    s->seq = rd32(th + 4);
    return SEG_CANDIDATE;
}

/* The packet's IPv4 header checksum and TCP checksum are both valid. */
static int checksums_valid(const uint8_t *p, size_t len, size_t l4)
{
    uint32_t pseudo;
    if ((p[0] >> 4) == 4) {
        if (masque_csum_partial(p, l4, 0) != 0xffff)
            return 0;
        pseudo = masque_csum_partial(p + 12, 8, 0);
    } else {
        pseudo = masque_csum_partial(p + 8, 32, 0);
    }
    pseudo += IPPROTO_TCP_ + (uint32_t)(len - l4);
    return masque_csum_partial(p + l4, len - l4, pseudo) == 0xffff;
}

static int same_flow(const uint8_t *a, size_t a_l4, const struct seg *s)
{
    if ((a[0] >> 4) != s->version)
        return 0;
    if (s->version == 4) {
        if (memcmp(a + 12, s->p + 12, 8) != 0)
            return 0;
    } else if (memcmp(a + 8, s->p + 8, 32) != 0) {
        return 0;
    }
    return memcmp(a + a_l4, s->p + s->l4, 4) == 0;
}

/* Everything but the sequence number and the lengths agrees (see gro.h). */
static int headers_match(const uint8_t *a, const struct masque_gro_item *it, const struct seg *s)
{
    const uint8_t *b = s->p;
    if (s->hlen != it->hlen)
        return 0;
    if (s->version == 4) {
        /* TOS, DF + reserved bit, TTL (MF and offset are 0 in both) */
        if (a[1] != b[1] || (a[6] >> 5) != (b[6] >> 5) || a[8] != b[8])
            return 0;
    } else {
        /* version, traffic class, flow label; hop limit */
        if (memcmp(a, b, 4) != 0 || a[7] != b[7])
            return 0;
    }
    const uint8_t *ta = a + it->l4, *tb = b + s->l4;
    /* ACK number and data offset; window; urgent pointer and options. Flags:
     * the bucket's are ACK (no PSH, or it would be complete), the segment's
     * ACK or ACK|PSH (checked by classify). */
    return memcmp(ta + 8, tb + 8, 5) == 0 && memcmp(ta + 14, tb + 14, 2) == 0 &&
           memcmp(ta + 18, tb + 18, it->hlen - it->l4 - 18) == 0;
}

static int can_append(const masque_batch *b, const struct masque_gro_item *it, const struct seg *s)
{
    if (it->closed || it->psh || it->nsegs >= MASQUE_GRO_MAX_SEGS)
        return 0;
    if (it->last_payload != it->gso_size || s->payload > it->gso_size)
        return 0; /* only the last segment may be short */
    if (s->seq != it->next_seq || it->total + s->payload > 0xffff)
        return 0;
    return headers_match(masque_batch_packet(b, it->first), it, s);
}

void masque_gro_plan(struct masque_gro *g, const masque_batch *b, const uint8_t *verdicts, int coalesce)
{
    g->nitems = 0;
    if (coalesce)
        memset(g->table, 0xff, ((size_t)g->table_mask + 1) * sizeof(*g->table));
    for (uint32_t i = 0; i < b->count; i++) {
        const uint8_t *p = masque_batch_packet(b, i);
        size_t len = b->lens[i];
        struct seg s = {0};

        g->next[i] = -1;
        if ((verdicts && verdicts[i]) || len == 0) {
            g->role[i] = MASQUE_GRO_SKIP;
            continue;
        }
        g->role[i] = MASQUE_GRO_ALONE;
        if (!coalesce)
            continue;
        int kind = classify(p, len, &s);
        if (kind == SEG_OTHER)
            continue;

        /* The flow's latest bucket, or the empty table slot for it. */
        uint32_t slot = s.hash & g->table_mask;
        struct masque_gro_item *it = NULL;
        while (g->table[slot] >= 0) {
            struct masque_gro_item *cand = &g->items[g->table[slot]];
            if (cand->hash == s.hash && same_flow(masque_batch_packet(b, cand->first), cand->l4, &s)) {
                it = cand;
                break;
            }
            slot = (slot + 1) & g->table_mask;
        }
        if (kind == SEG_FLOW) {
            if (it)
                it->closed = 1; /* later segments must not overtake this packet */
            continue;
        }
        if (it && can_append(b, it, &s)) {
            if (!it->verified) {
                const uint8_t *head = masque_batch_packet(b, it->first);
                it->verified = 1;
                if (!checksums_valid(head, b->lens[it->first], it->l4))
                    it->closed = 1; /* the head goes alone; this one starts anew */
            }
            if (!it->closed) {
                if (!checksums_valid(p, len, s.l4)) {
                    it->closed = 1; /* written alone, after the bucket */
                    continue;
                }
                g->next[it->last] = (int32_t)i;
                g->role[i] = (int32_t)(it - g->items);
                it->last = i;
                it->nsegs++;
                it->total += (uint32_t)s.payload;
                it->next_seq += (uint32_t)s.payload;
                it->last_payload = (uint16_t)s.payload;
                it->psh = (p[s.l4 + 13] & TCP_FLAG_PSH) != 0;
                continue;
            }
        }
        if (it)
            it->closed = 1;
        /* A new bucket headed by this packet; it replaces the flow's entry. */
        struct masque_gro_item *n = &g->items[g->nitems];
        n->first = n->last = i;
        n->nsegs = 1;
        n->total = (uint32_t)len;
        n->next_seq = s.seq + (uint32_t)s.payload;
        n->hash = s.hash;
        n->gso_size = (uint16_t)s.payload;
        n->last_payload = (uint16_t)s.payload;
        n->l4 = (uint8_t)s.l4;
        n->hlen = (uint8_t)s.hlen;
        n->psh = (p[s.l4 + 13] & TCP_FLAG_PSH) != 0;
        n->closed = 0;
        n->verified = 0;
        g->table[slot] = (int32_t)g->nitems;
        g->role[i] = (int32_t)g->nitems;
        g->nitems++;
    }
}

int masque_gro_frame(const struct masque_gro *g, const masque_batch *b, uint32_t index, uint8_t *hdrbuf,
                     struct iovec *iov)
{
    const struct masque_gro_item *it = &g->items[index];
    const uint8_t *head = masque_batch_packet(b, it->first);
    uint8_t *h = hdrbuf + MASQUE_VNET_HDR_LEN;
    size_t l4 = it->l4, hlen = it->hlen;
    uint32_t pseudo;

    memcpy(h, head, hlen);
    if ((head[0] >> 4) == 4) {
        wr16(h + 2, (uint16_t)it->total);
        h[10] = h[11] = 0;
        wr16(h + 10, masque_csum(h, 20, 0));
        pseudo = masque_csum_partial(h + 12, 8, 0);
    } else {
        wr16(h + 4, (uint16_t)(it->total - 40));
        pseudo = masque_csum_partial(h + 8, 32, 0);
    }
    if (it->psh)
        h[l4 + 13] |= TCP_FLAG_PSH;
    /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented */
    wr16(h + l4 + 16, fold32(pseudo + IPPROTO_TCP_ + (it->total - (uint32_t)l4)));

    hdrbuf[0] = MASQUE_VNET_F_NEEDS_CSUM;
    hdrbuf[1] = (head[0] >> 4) == 4 ? MASQUE_VNET_GSO_TCPV4 : MASQUE_VNET_GSO_TCPV6;
    wrle16(hdrbuf + 2, (uint16_t)hlen);
    wrle16(hdrbuf + 4, it->gso_size);
    wrle16(hdrbuf + 6, (uint16_t)l4);
    wrle16(hdrbuf + 8, 16);

    int n = 0;
    iov[n].iov_base = hdrbuf;
    iov[n++].iov_len = MASQUE_VNET_HDR_LEN + hlen;
    for (int32_t i = (int32_t)it->first; i >= 0; i = g->next[i]) {
        iov[n].iov_base = masque_batch_packet(b, (uint32_t)i) + hlen;
        iov[n++].iov_len = b->lens[i] - hlen;
    }
    return n;
}
