#include "offload.h"

#include <errno.h>
#include <string.h>

#include "checksum.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_CWR 0x80

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

static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint16_t rdle16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

void masque_vnet_hdr_decode(const uint8_t *p, struct masque_vnet_hdr *h)
{
    h->flags = p[0];
    h->gso_type = p[1];
    h->hdr_len = rdle16(p + 2);
    h->gso_size = rdle16(p + 4);
    h->csum_start = rdle16(p + 6);
    h->csum_offset = rdle16(p + 8);
}

int masque_vnet_complete_csum(uint8_t *pkt, size_t len, const struct masque_vnet_hdr *h)
{
    size_t start = h->csum_start;
    size_t at = start + h->csum_offset;

    if (start >= len || at + 2 > len)
        return -EINVAL;
    uint16_t c = masque_csum(pkt + start, len - start, 0);
    if (c == 0 && h->csum_offset == 6) /* UDP: 0 means "no checksum" */
        c = 0xffff;
    wr16(pkt + at, c);
    return 0;
}

int masque_gso_plan_init(struct masque_gso_plan *p, const uint8_t *in, size_t len,
                         const struct masque_vnet_hdr *h, size_t mtu)
{
    if (len < 20)
        return -EINVAL;
    int version = in[0] >> 4;
    int gso = h->gso_type & ~MASQUE_VNET_GSO_ECN;
    int tcp;

    if ((gso == MASQUE_VNET_GSO_TCPV4 && version == 4) || (gso == MASQUE_VNET_GSO_TCPV6 && version == 6))
        tcp = 1;
    else if (gso == MASQUE_VNET_GSO_UDP_L4 && (version == 4 || version == 6))
        tcp = 0;
    else
        return -EPROTONOSUPPORT;

    /* Transport header offset: csum_start (covers IPv4 options and IPv6
     * extension headers); checked against the IP header. */
    size_t l4 = h->csum_start;
    uint8_t proto = tcp ? 6 : 17;
    size_t ihl = 40;
    if (version == 4) {
        ihl = (size_t)(in[0] & 0x0f) * 4;
        if (ihl < 20 || l4 != ihl || in[9] != proto)
            return -EINVAL;
    } else if (l4 < 40 || (l4 == 40 && in[6] != proto)) {
        return -EINVAL;
    }

    size_t hlen;
    if (tcp) {
        if (len < l4 + 20)
            return -EINVAL;
        size_t thl = (size_t)(in[l4 + 12] >> 4) * 4;
        if (thl < 20)
            return -EINVAL;
        hlen = l4 + thl;
    } else {
        hlen = l4 + 8;
    }
    if (len < hlen || hlen > 0xffff)
        return -EINVAL;

    size_t seg = h->gso_size;
    if (seg == 0)
        return -EINVAL;
    if (tcp && mtu > hlen && seg > mtu - hlen)
        seg = mtu - hlen;

    size_t payload = len - hlen;
    if (hlen + (payload < seg ? payload : seg) > 0xffff)
        return -ENOSPC;
    p->len = len;
    p->hlen = hlen;
    p->l4 = l4;
    p->ihl = ihl;
    p->seg = seg;
    p->payload = payload;
    p->csum_at = l4 + (tcp ? 16 : 6);
    p->addr_sum = version == 4 ? masque_csum_partial(in + 12, 8, 0) : masque_csum_partial(in + 8, 32, 0);
    p->ip_id = version == 4 ? rd16(in + 4) : 0;
    p->seq = tcp ? rd32(in + l4 + 4) : 0;
    p->flags = tcp ? in[l4 + 13] : 0;
    p->version = (uint8_t)version;
    p->tcp = (uint8_t)tcp;
    p->proto = proto;
    p->nsegs = payload == 0 ? 1 : (int)((payload + seg - 1) / seg);
    return p->nsegs;
}

size_t masque_gso_plan_emit(const struct masque_gso_plan *p, const uint8_t *in, int k, uint8_t *out)
{
    size_t hlen = p->hlen, l4 = p->l4;
    size_t done = (size_t)k * p->seg;
    size_t dl = p->payload - done < p->seg ? p->payload - done : p->seg;
    size_t total = hlen + dl;

    memcpy(out, in, hlen);
    memcpy(out + hlen, in + hlen + done, dl);
    if (p->version == 4) {
        wr16(out + 2, (uint16_t)total);
        wr16(out + 4, (uint16_t)(p->ip_id + k));
        out[10] = out[11] = 0;
        wr16(out + 10, masque_csum(out, p->ihl, 0));
    } else {
        wr16(out + 4, (uint16_t)(total - 40));
    }
    if (p->tcp) {
        uint8_t f = p->flags;
        wr32(out + l4 + 4, p->seq + (uint32_t)done);
        if (done + dl < p->payload)
            f &= (uint8_t)~(TCP_FLAG_FIN | TCP_FLAG_PSH);
        if (k > 0)
            f &= (uint8_t)~TCP_FLAG_CWR;
        out[l4 + 13] = f;
    } else {
        wr16(out + l4 + 4, (uint16_t)(total - l4));
    }
    out[p->csum_at] = out[p->csum_at + 1] = 0;
    uint32_t pseudo = p->addr_sum + p->proto + (uint32_t)(total - l4);
    uint16_t c = masque_csum(out + l4, total - l4, pseudo);
    if (!p->tcp && c == 0)
        c = 0xffff;
    wr16(out + p->csum_at, c);
    return total;
}

int masque_gso_split(const uint8_t *in, size_t len, const struct masque_vnet_hdr *h, size_t mtu,
                     uint8_t *out, size_t out_cap, uint16_t *seg_len, int max_segs)
{
    struct masque_gso_plan p;
    int n = masque_gso_plan_init(&p, in, len, h, mtu);
    size_t off = 0;

    if (n < 0)
        return n;
    if (n > max_segs)
        return -ENOSPC;
    for (int k = 0; k < n; k++) {
        size_t total = masque_gso_plan_seg_len(&p, k);
        if (off + total > out_cap)
            return -ENOSPC;
        masque_gso_plan_emit(&p, in, k, out + off);
        seg_len[k] = (uint16_t)total;
        off += total;
    }
    return n;
}
